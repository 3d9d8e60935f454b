import { availableParallelism } from 'node:os'
import { getLlama, LlamaLogLevel } from 'node-llama-cpp'
import type { Llama, Token } from 'node-llama-cpp'
import { fileExists } from '../../packages/runtime/src/safetensors.ts'

export interface LlamaCppRun {
  tokenIds: number[]
  /** Prompt tokens over the time to the first generated token (prefill + one sampling). */
  prefillTokensPerSecond: number
  /** Generated tokens after the first, over the time they took. */
  decodeTokensPerSecond: number
}

let llamaPromise: Promise<Llama> | undefined

/** One llama.cpp instance per process: loading the native addon again would only cost time. */
async function llamaInstance (): Promise<Llama> {
  llamaPromise ??= getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error, maxThreads: 0 })
  llamaPromise.catch(() => { llamaPromise = undefined })
  return await llamaPromise
}

/**
 * Greedy generation with llama.cpp (CPU, node-llama-cpp's prebuilt binary) from raw token ids:
 * the baseline Plexus is compared with. Generation does not stop at end-of-sequence tokens.
 */
export async function runLlamaCpp (ggufPath: string, promptIds: number[], maxTokens: number, opts: { threads?: number } = {}): Promise<LlamaCppRun> {
  if (promptIds.length === 0) throw new Error('runLlamaCpp: the prompt is empty')
  if (!Number.isInteger(maxTokens) || maxTokens < 1) throw new Error(`runLlamaCpp: maxTokens must be a positive integer (got ${maxTokens})`)
  if (!(await fileExists(ggufPath))) throw new Error(`runLlamaCpp: ${ggufPath}: no such file`)
  const threads = opts.threads ?? availableParallelism()
  const llama = await llamaInstance()
  const model = await llama.loadModel({ modelPath: ggufPath, gpuLayers: 0 })
  try {
    const contextSize = promptIds.length + maxTokens
    const context = await model.createContext({
      contextSize,
      batchSize: contextSize,
      threads: { ideal: threads, min: threads },
      sequences: 1
    })
    try {
      const seq = context.getSequence()
      const tokenIds: number[] = []
      const start = performance.now()
      let first = start
      for await (const t of seq.evaluate(promptIds as Token[], { temperature: 0 })) {
        if (tokenIds.length === 0) first = performance.now()
        tokenIds.push(t)
        if (tokenIds.length >= maxTokens) break
      }
      const end = performance.now()
      return {
        tokenIds,
        prefillTokensPerSecond: promptIds.length / ((first - start) / 1000),
        decodeTokensPerSecond: tokenIds.length > 1 ? (tokenIds.length - 1) / ((end - first) / 1000) : NaN
      }
    } finally {
      await context.dispose()
    }
  } finally {
    await model.dispose()
  }
}
