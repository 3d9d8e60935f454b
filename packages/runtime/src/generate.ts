import type { ModelHead } from './head.ts'
import { Sampler } from './sampling.ts'
import type { SamplingOptions } from './sampling.ts'
import { generateSpeculative } from './speculative.ts'
import { generationResult } from './generate-result.ts'
import type { SpeculativeOptions, SpeculationStats } from './speculative.ts'

/**
 * Every block of a model, bound to one inference session: in-process spans, worker threads or
 * a route of remote servers. Each call continues the session at its current length.
 */
export interface SessionPipeline {
  forward (hidden: Float32Array, tokens: number): Promise<Float32Array>
  close (): Promise<void>
  /** Keeps only the first `length` positions (speculative decoding drops rejected drafts). */
  truncate? (length: number): Promise<void>
  /**
   * Verification (optional), called after every step and once more, `final`, before generation
   * ends: how many positions' outputs are confirmed (tokens sampled from them may be delivered),
   * or that a check failed and the pipeline now holds only the first `rollbackTo` positions,
   * all confirmed: generation resumes from there.
   */
  audit? (final: boolean): Promise<AuditResult>
}

export type AuditResult = { verified: number } | { rollbackTo: number }

/** Restricts which tokens may come next (a grammar, say): applied to every row sampled from. */
export interface TokenConstraint {
  /** Sets the logits of the tokens that may not come next to -Infinity. */
  mask (logits: Float32Array): void | Promise<void>
  /** The token chosen. */
  accept (id: number): void
  /** Back to the state after the first `count` accepted tokens (a verified session rolled back). */
  rewind (count: number): void
  /** Nothing more may follow: generation ends with finish reason stop. */
  done (): boolean
  /** Frees what it holds (a grammar matcher); called by its owner once generation is over. */
  dispose? (): void
}

export interface GenerateOptions extends SamplingOptions {
  maxTokens: number
  /** Token ids that end generation (included in the output); empty = never stop early. */
  eosTokenIds?: number[]
  /** Called with each new token id as soon as it is chosen. */
  onToken?: (id: number) => void | Promise<void>
  /** Keep each step's logits (for logprobs); off by default. */
  keepLogits?: boolean
  /** Masks each row before sampling (structured output, forced tool calls). */
  constraint?: TokenConstraint
  signal?: AbortSignal
  /** Draft tokens and check them in one multi-token step (speculative.ts); same output. */
  speculative?: SpeculativeOptions
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
  /** With `speculative`: drafts proposed and accepted. */
  speculation?: SpeculationStats
}

/** Prefill the prompt, then decode token by token: the per-token path of Plexus. */
export async function generate (head: ModelHead, pipeline: SessionPipeline, promptIds: number[], opts: GenerateOptions): Promise<GenerateResult> {
  if (opts.speculative != null) return await generateSpeculative(head, pipeline, promptIds, { ...opts, speculative: opts.speculative })
  if (promptIds.length === 0) throw new RangeError('the prompt is empty: give at least one token')
  if (!Number.isInteger(opts.maxTokens) || opts.maxTokens < 0) throw new RangeError(`max tokens must be a non-negative integer (got ${opts.maxTokens})`)
  const maxPositions = head.config.maxPositions
  if (promptIds.length + opts.maxTokens > maxPositions) {
    throw new RangeError(`prompt (${promptIds.length}) + max tokens (${opts.maxTokens}) exceed the model's context of ${maxPositions}`)
  }
  const P = promptIds.length
  const sampler = new Sampler(opts)
  const eos = new Set(opts.eosTokenIds ?? [])
  const constraint = opts.constraint
  const ended = (): boolean => out.length > 0 && (eos.has(out[out.length - 1]) || constraint?.done() === true)
  const out: number[] = []
  const logits: Float32Array[] = []
  // With verification, a token is delivered once the output it was sampled from is confirmed:
  // token i (at position P + i) needs positions [0, P + i) confirmed.
  let delivered = 0
  const deliver = async (upTo: number): Promise<void> => {
    while (delivered < out.length && P + delivered <= upTo) {
      const id = out[delivered++]
      await opts.onToken?.(id)
    }
  }
  /** Positions the pipeline holds. */
  let held = 0
  /** After a failed check: keep what the confirmed positions decided, resume after it. */
  const rollback = (to: number): void => {
    held = to
    const keep = to >= P ? to - P + 1 : 0
    out.length = Math.min(out.length, keep)
    logits.length = Math.min(logits.length, keep)
    sampler.rewind(out.length)
    opts.constraint?.rewind(out.length)
  }
  /** Positions whose outputs are confirmed (all, without verification). */
  let confirmed = pipeline.audit == null ? Infinity : 0
  const audited = async (final: boolean): Promise<boolean> => {
    if (pipeline.audit == null) return true
    const r = await pipeline.audit(final)
    if ('rollbackTo' in r) { rollback(r.rollbackTo); confirmed = r.rollbackTo; return false }
    confirmed = r.verified
    await deliver(confirmed)
    return true
  }

  const t0 = performance.now()
  let t1 = 0
  let t2 = 0
  for (;;) {
    opts.signal?.throwIfAborted()
    const last = out[out.length - 1]
    const done = out.length > 0 ? out.length >= opts.maxTokens || ended() : opts.maxTokens === 0 && held === P
    if (done) {
      if (!await audited(true)) continue
      break
    }
    // the prompt (or, after a rollback into it, the rest of it), else the last token
    const tokens = out.length === 0 ? promptIds.slice(held) : [last]
    const hidden = await pipeline.forward(head.embed(tokens), tokens.length)
    held += tokens.length
    if (t1 === 0) t1 = t2 = performance.now()
    else t2 = performance.now()
    if (!await audited(false)) continue
    if (opts.maxTokens === 0) continue
    const row = await head.logits(hidden, tokens.length)
    if (constraint != null) await constraint.mask(row)
    if (opts.keepLogits === true) logits.push(row)
    const id = sampler.sample(row)
    constraint?.accept(id)
    out.push(id)
    // streamed as soon as the output it came from is confirmed (at once without verification)
    await deliver(confirmed)
  }
  await deliver(Infinity)
  return generationResult(out, ended(), P, { t0, t1, t2 }, opts.keepLogits === true ? logits : undefined)
}

/** Consecutive tensors (a hop's steps, say) as one. */
export function concatFloat32 (parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0))
  let o = 0
  for (const p of parts) { out.set(p, o); o += p.length }
  return out
}
