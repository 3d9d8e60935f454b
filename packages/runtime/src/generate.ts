import type { ModelHead } from './head.ts'
import { Sampler } from './sampling.ts'
import type { SamplingOptions } from './sampling.ts'
import { generateSpeculative } from './speculative.ts'
import { generationResult, GeneratedTokens } from './generate-result.ts'
import type { SpeculativeOptions, SpeculationStats } from './speculative.ts'

/**
 * Every block of a model, bound to one inference session: in-process spans, worker threads or
 * a route of remote servers. Each call continues the session at its current length.
 */
export interface SessionPipeline {
  forward (hidden: Float32Array, tokens: number): Promise<Float32Array>
  /**
   * `forward`, then `head.logits` of its last row, as one call: where the pipeline can run the LM
   * head in its own last step (a local webgpu model: one GPU submission a token instead of two).
   */
  forwardLogits? (head: ModelHead, hidden: Float32Array, tokens: number): Promise<Float32Array>
  close (): Promise<void>
  /** Keeps only the first `length` positions (speculative decoding drops rejected drafts). */
  truncate? (length: number): Promise<void>
  /**
   * For a pipeline whose outputs stay provisional until it has checked them: called after every
   * step and once more, `final`, before generation ends. Says how many positions' outputs are
   * confirmed (tokens sampled from them may be delivered), or that the pipeline went back to
   * its first `rewoundTo` positions, all confirmed: generation resumes from there. Absent:
   * every output is final as it comes.
   */
  confirm? (final: boolean): Promise<Confirmation>
}

export type Confirmation = { confirmed: number } | { rewoundTo: number }

/** Restricts which tokens may come next (a grammar, say): applied to every row sampled from. */
export interface TokenConstraint {
  /** Sets the logits of the tokens that may not come next to -Infinity. */
  mask (logits: Float32Array): void | Promise<void>
  /** The token chosen. */
  accept (id: number): void
  /** Back to the state after the first `count` accepted tokens (the pipeline went back: `confirm`). */
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
  /**
   * Called with each new token id as soon as it is chosen (once confirmed, with a pipeline that
   * confirms later), and the logits row it was sampled from, after the constraint's mask: the
   * caller's logprobs. The row is shared with the result's `logits`: read it, do not change it.
   */
  onToken?: (id: number, logits: Float32Array) => void | Promise<void>
  /** Keep each step's logits in the result; off by default. */
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
  const out = new GeneratedTokens(P, opts)
  const ended = (): boolean => out.length > 0 && (eos.has(out.last!) || constraint?.done() === true)
  /** Positions the pipeline holds. */
  let held = 0
  /** Positions whose outputs are confirmed: all of them unless the pipeline confirms later. */
  let confirmed = pipeline.confirm == null ? Infinity : 0
  /** Hands over the tokens now confirmed; false when the pipeline went back (resume from there). */
  const settle = async (final: boolean): Promise<boolean> => {
    if (pipeline.confirm == null) return true
    const c = await pipeline.confirm(final)
    if ('rewoundTo' in c) {
      held = confirmed = c.rewoundTo
      // keep what the confirmed positions decided: the token sampled from the last one too
      out.truncate(held >= P ? held - P + 1 : 0)
      sampler.rewind(out.length)
      constraint?.rewind(out.length)
      return false
    }
    confirmed = c.confirmed
    await out.deliver(confirmed)
    return true
  }

  const t0 = performance.now()
  let t1 = 0
  let t2 = 0
  for (;;) {
    opts.signal?.throwIfAborted()
    const done = out.length > 0 ? out.length >= opts.maxTokens || ended() : opts.maxTokens === 0 && held === P
    if (done) {
      if (!await settle(true)) continue
      break
    }
    // the prompt (or, after going back into it, the rest of it), else the last token
    const tokens = out.length === 0 ? promptIds.slice(held) : [out.last!]
    // the logits in the pipeline's own step where it can, and where every output is final at once
    const fused = pipeline.forwardLogits != null && pipeline.confirm == null && opts.maxTokens > 0
      ? await pipeline.forwardLogits(head, head.embed(tokens), tokens.length)
      : undefined
    const hidden = fused == null ? await pipeline.forward(head.embed(tokens), tokens.length) : undefined
    held += tokens.length
    if (t1 === 0) t1 = t2 = performance.now()
    else t2 = performance.now()
    if (!await settle(false)) continue
    if (opts.maxTokens === 0) continue
    const row = fused ?? await head.logits(hidden!, tokens.length)
    if (constraint != null) await constraint.mask(row)
    const id = sampler.sample(row)
    constraint?.accept(id)
    out.push(id, row)
    // streamed as soon as the output it came from is confirmed (at once without checks)
    await out.deliver(confirmed)
  }
  await out.deliver(Infinity)
  return generationResult(out.ids, ended(), P, { t0, t1, t2 }, out.logits())
}

/** Consecutive tensors (a hop's steps, say) as one. */
export function concatFloat32 (parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0))
  let o = 0
  for (const p of parts) { out.set(p, o); o += p.length }
  return out
}
