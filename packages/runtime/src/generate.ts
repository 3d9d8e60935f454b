import type { ModelHead } from './head.ts'
import { Sampler } from './sampling.ts'
import type { SamplingOptions } from './sampling.ts'

/**
 * Every block of a model, bound to one inference session: in-process spans, worker threads or
 * a route of remote servers. Each call continues the session at its current length.
 */
export interface SessionPipeline {
  forward (hidden: Float32Array, tokens: number): Promise<Float32Array>
  close (): Promise<void>
}

export interface GenerateOptions extends SamplingOptions {
  maxTokens: number
  /** Token ids that end generation (included in the output); empty = never stop early. */
  eosTokenIds?: number[]
  /** Called with each new token id as soon as it is chosen. */
  onToken?: (id: number) => void | Promise<void>
  /** Keep each step's logits (for logprobs); off by default. */
  keepLogits?: boolean
  signal?: AbortSignal
}

export interface GenerateResult {
  tokenIds: number[]
  finishReason: 'stop' | 'length'
  promptTokens: number
  prefillSeconds: number
  decodeSeconds: number
  /** Prompt tokens per second of the prefill step. */
  prefillTokensPerSecond: number
  /** Generated tokens per second after the first (each needs one decode step). */
  tokensPerSecond: number
  logits?: Float32Array[]
}

/** Prefill the prompt, then decode token by token: the per-token path of Plexus. */
export async function generate (head: ModelHead, pipeline: SessionPipeline, promptIds: number[], opts: GenerateOptions): Promise<GenerateResult> {
  if (promptIds.length === 0) throw new RangeError('the prompt is empty: give at least one token')
  if (!Number.isInteger(opts.maxTokens) || opts.maxTokens < 0) throw new RangeError(`max tokens must be a non-negative integer (got ${opts.maxTokens})`)
  const maxPositions = head.config.maxPositions
  if (promptIds.length + opts.maxTokens > maxPositions) {
    throw new RangeError(`prompt (${promptIds.length}) + max tokens (${opts.maxTokens}) exceed the model's context of ${maxPositions}`)
  }
  const sampler = new Sampler(opts)
  const eos = new Set(opts.eosTokenIds ?? [])
  const out: number[] = []
  const logits: Float32Array[] = []
  let finishReason: 'stop' | 'length' = 'length'

  const t0 = performance.now()
  let hidden = await pipeline.forward(head.embed(promptIds), promptIds.length)
  let row = await head.logits(hidden, promptIds.length)
  const t1 = performance.now()
  let t2 = t1
  while (out.length < opts.maxTokens) {
    opts.signal?.throwIfAborted()
    if (opts.keepLogits === true) logits.push(row)
    const id = sampler.sample(row)
    out.push(id)
    await opts.onToken?.(id)
    if (eos.has(id)) { finishReason = 'stop'; break }
    if (out.length === opts.maxTokens) break
    hidden = await pipeline.forward(head.embed([id]), 1)
    row = await head.logits(hidden, 1)
    t2 = performance.now()
  }
  const prefillSeconds = (t1 - t0) / 1000
  const decodeSeconds = (t2 - t1) / 1000
  const decodeSteps = Math.max(0, out.length - 1)
  return {
    tokenIds: out,
    finishReason,
    promptTokens: promptIds.length,
    prefillSeconds,
    decodeSeconds,
    prefillTokensPerSecond: promptIds.length / prefillSeconds,
    tokensPerSecond: decodeSteps > 0 ? decodeSteps / decodeSeconds : 0,
    logits: opts.keepLogits === true ? logits : undefined
  }
}
