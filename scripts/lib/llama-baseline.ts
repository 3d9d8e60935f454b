import { availableParallelism } from 'node:os'
import { getLlama, LlamaLogLevel } from 'node-llama-cpp'
import type { Llama, Token } from 'node-llama-cpp'
import { fileExists } from '@plexus/runtime'

export interface LlamaCppRun {
  tokenIds: number[]
  /** Prompt tokens over the time to the first generated token (prefill + one sampling). */
  prefillTokensPerSecond: number
  /** Generated tokens after the first, over the time they took. */
  decodeTokensPerSecond: number
}

export interface LlamaCppOptions {
  threads?: number
  /** `vulkan`: node-llama-cpp's prebuilt Vulkan build (@node-llama-cpp/linux-x64-vulkan), every layer on the GPU. Default: CPU. */
  gpu?: 'vulkan'
}

const llamaPromises = new Map<string, Promise<Llama>>()

/** One llama.cpp instance per process and build: loading the native addon again would only cost time. */
async function llamaInstance (gpu: 'vulkan' | false): Promise<Llama> {
  const key = String(gpu)
  let p = llamaPromises.get(key)
  if (p == null) {
    // build: 'never' — a missing or unusable prebuilt binary is an error, never a compile from source.
    p = getLlama({ gpu, build: 'never', logLevel: LlamaLogLevel.error, maxThreads: 0 })
    llamaPromises.set(key, p)
    p.catch(() => llamaPromises.delete(key))
  }
  return await p
}

/**
 * The Vulkan build's devices, or why it cannot run here (no Vulkan loader, no device, the
 * prebuilt binary missing): callers print the reason and go on without the baseline.
 */
export async function llamaCppVulkan (): Promise<{ ok: true, devices: string[] } | { ok: false, reason: string }> {
  try {
    const llama = await llamaInstance('vulkan')
    if (llama.gpu !== 'vulkan') return { ok: false, reason: `node-llama-cpp loaded its ${String(llama.gpu)} build, not vulkan` }
    return { ok: true, devices: await llama.getGpuDeviceNames() }
  } catch (err: any) {
    return { ok: false, reason: String(err?.message ?? err).split('\n')[0] }
  }
}

/**
 * Greedy generation with llama.cpp (node-llama-cpp's prebuilt binary; CPU unless `gpu` says
 * otherwise) from raw token ids: the baseline Plexus is compared with. Generation does not stop at
 * end-of-sequence tokens.
 */
export async function runLlamaCpp (ggufPath: string, promptIds: number[], maxTokens: number, opts: LlamaCppOptions = {}): Promise<LlamaCppRun> {
  if (promptIds.length === 0) throw new Error('runLlamaCpp: the prompt is empty')
  if (!Number.isInteger(maxTokens) || maxTokens < 1) throw new Error(`runLlamaCpp: maxTokens must be a positive integer (got ${maxTokens})`)
  if (!(await fileExists(ggufPath))) throw new Error(`runLlamaCpp: ${ggufPath}: no such file`)
  const threads = opts.threads ?? availableParallelism()
  const llama = await llamaInstance(opts.gpu ?? false)
  const model = await llama.loadModel({ modelPath: ggufPath, gpuLayers: opts.gpu != null ? 'max' : 0 })
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
      // yieldEogToken: an end-of-generation token is yielded like any other and generation goes on
      for await (const t of seq.evaluate(promptIds as Token[], { temperature: 0, yieldEogToken: true })) {
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

/** llama.cpp's tokenization of `text` with the file's own vocabulary (no BOS, special tokens as text). */
export async function llamaCppTokenize (ggufPath: string, texts: string[]): Promise<number[][]> {
  const llama = await llamaInstance(false)
  const model = await llama.loadModel({ modelPath: ggufPath, gpuLayers: 0 })
  try {
    return texts.map(t => Array.from(model.tokenize(t, false), Number))
  } finally {
    await model.dispose()
  }
}

/**
 * llama.cpp's raw logits `[ids.length, vocab]` for every position of `ids`, teacher-forced (one
 * sequence, evaluated in one batch): row i is the distribution of the token after ids[0..i].
 */
export async function llamaCppLogits (ggufPath: string, ids: number[], opts: { threads?: number } = {}): Promise<{ logits: Float32Array, vocab: number }> {
  if (ids.length === 0) throw new Error('llamaCppLogits: no tokens')
  if (!(await fileExists(ggufPath))) throw new Error(`llamaCppLogits: ${ggufPath}: no such file`)
  const threads = opts.threads ?? availableParallelism()
  const llama = await llamaInstance(false)
  const model = await llama.loadModel({ modelPath: ggufPath, gpuLayers: 0 })
  try {
    // Room beyond the sequence: a context filled by the last token gets shifted first, which changed
    // that position's logits (measured: KL 4 nats against Plexus at the last of 256 positions).
    const context = await model.createContext({ contextSize: ids.length + 16, batchSize: ids.length, threads: { ideal: threads, min: threads }, sequences: 1 })
    try {
      const out = await context.getSequence().controlledEvaluate(ids.map(t => [t as Token, { generateNext: { logits: true } }]))
      const V = out[0]?.next.logits?.size ?? 0
      const logits = new Float32Array(ids.length * V).fill(Number.NaN)
      for (let i = 0; i < ids.length; i++) {
        const m = out[i]?.next.logits
        if (m == null || m.size !== V) throw new Error(`llamaCppLogits: position ${i}: ${m?.size ?? 'no'} logits, expected ${V}`)
        for (const [t, v] of m) logits[i * V + t] = v
      }
      return { logits, vocab: V }
    } finally {
      await context.dispose()
    }
  } finally {
    await model.dispose()
  }
}
