import { openModel } from './model-source.ts'
import type { ModelSource } from './model-source.ts'
import { withQuantization } from './quant/quantized-source.ts'
import type { QuantFormat } from './quant/quantized-source.ts'
import { ModelHead } from './head.ts'
import { loadSpanRunners } from './local.ts'
import type { SpanRunner, SpanSession } from './runner.ts'
import type { TokenDistribution } from './sampling.ts'
import { PlexusError } from './errors.ts'

/** A draft token and, when drafting samples, the distribution it was drawn from. */
export interface DraftChoice {
  id: number
  /** Absent: the drafter proposed this token outright (a point mass, as prompt lookup does). */
  q?: TokenDistribution
}

/** Picks a draft token from a drafter's logits row; `index`: its place among this round's drafts. */
export type DraftChooser = (logits: Float32Array, index: number) => DraftChoice

/**
 * Proposes tokens the target model may accept, cheaply: the target checks them all in one
 * multi-token step. A drafter keeps whatever state it likes between calls and rolls it back
 * itself: every call gives the whole context (prompt + output so far), which may have dropped
 * drafts the previous call proposed.
 */
export interface Drafter {
  readonly kind: string
  /** Up to `k` tokens to follow `context` (fewer, even none, when it has no good guess). */
  draft (context: readonly number[], k: number, choose: DraftChooser): Promise<DraftChoice[]>
  close (): Promise<void>
}

export class SpeculativeError extends PlexusError {
  declare readonly code: 'bad-speculate' | 'draft-vocabulary' | 'draft-blocks' | 'no-rollback' | 'verified-trust'
  constructor (code: SpeculativeError['code'], message: string) {
    super(code, message, { httpStatus: 400 })
    this.name = 'SpeculativeError'
  }
}

/**
 * Prompt-lookup drafting (no model): finds the most recent earlier occurrence of the context's
 * last n tokens (n from `maxNgram` down to `minNgram`) and proposes the tokens that followed it.
 * Pays off on text that repeats its input: code edits, quotes, extraction, summaries.
 */
export class PromptLookupDrafter implements Drafter {
  readonly kind = 'prompt-lookup'
  private readonly maxNgram: number
  private readonly minNgram: number

  constructor (opts: { maxNgram?: number, minNgram?: number } = {}) {
    this.maxNgram = opts.maxNgram ?? 3
    this.minNgram = opts.minNgram ?? 1
  }

  async draft (context: readonly number[], k: number): Promise<DraftChoice[]> {
    const L = context.length
    for (let n = Math.min(this.maxNgram, L - 1); n >= this.minNgram; n--) {
      // latest match first: the nearest repetition is the likeliest to continue
      for (let s = L - n - 1; s >= 0; s--) {
        let j = 0
        while (j < n && context[s + j] === context[L - n + j]) j++
        if (j < n) continue
        const from = s + n
        const out: DraftChoice[] = []
        for (let i = from; i < Math.min(L, from + k); i++) out.push({ id: context[i] })
        if (out.length > 0) return out
      }
    }
    return []
  }

  async close (): Promise<void> {}
}

/**
 * Blocks of a model on this machine with an LM head: a draft model. `blocks` keeps only the
 * first N blocks (the model's own early exit: its final norm and head after block N).
 */
export class DraftModel {
  readonly source: ModelSource
  readonly head: ModelHead
  private readonly spans: SpanRunner[]

  private constructor (source: ModelSource, head: ModelHead, spans: SpanRunner[]) {
    this.source = source
    this.head = head
    this.spans = spans
  }

  get vocabSize (): number { return this.source.config.vocabSize }
  get blocks (): number { return this.spans[this.spans.length - 1].end }

  /**
   * `threads` (default on): blocks and head in worker threads, so that drafting never stalls this
   * thread's networking (a swarm client's pings and streams) for the length of a step.
   */
  static async load (path: string, opts: { blocks?: number, quantize?: QuantFormat, threads?: boolean } = {}): Promise<DraftModel> {
    const src = withQuantization(await openModel(path), opts.quantize)
    try {
      const L = src.config.numLayers
      const blocks = opts.blocks ?? L
      if (!Number.isInteger(blocks) || blocks < 1 || blocks > L) throw new SpeculativeError('draft-blocks', `draft blocks ${opts.blocks}: the draft model has ${L} blocks; give 1..${L}`)
      const threads = opts.threads !== false
      const spans = await loadSpanRunners(src, 0, blocks, { placement: threads ? 'workers' : 'in-process' })
      try {
        return new DraftModel(src, await ModelHead.load(src, { thread: threads }), spans)
      } catch (err) {
        for (const s of spans) await s.dispose()
        throw err
      }
    } catch (err) {
      await src.close()
      throw err
    }
  }

  /** A drafter with a session of its own (a KV cache of up to `maxLength` positions). */
  async drafter (maxLength: number, targetVocabSize?: number): Promise<Drafter> {
    if (targetVocabSize != null && targetVocabSize !== this.vocabSize) {
      throw new SpeculativeError('draft-vocabulary', `the draft model's vocabulary has ${this.vocabSize} tokens, the target's ${targetVocabSize}: a draft model must share the target's tokenizer`)
    }
    const sessions: SpanSession[] = []
    try {
      for (const s of this.spans) sessions.push(await s.open(maxLength))
    } catch (err) {
      for (const s of sessions) await s.close()
      throw err
    }
    return new ModelDrafter(this.head, sessions, this.blocks < this.source.config.numLayers ? `blocks:${this.blocks}` : 'model')
  }

  async dispose (): Promise<void> {
    for (const s of this.spans) await s.dispose()
    await this.head.dispose()
    await this.source.close()
  }
}

/** Drafts with a small model: one step per draft token on its own KV cache. */
class ModelDrafter implements Drafter {
  readonly kind: string
  private readonly head: ModelHead
  private readonly sessions: SpanSession[]
  /** Tokens the draft cache holds, in order. */
  private readonly fed: number[] = []

  constructor (head: ModelHead, sessions: SpanSession[], kind: string) {
    this.head = head
    this.sessions = sessions
    this.kind = kind
  }

  private async step (ids: number[]): Promise<Float32Array> {
    let h = this.head.embed(ids)
    for (const s of this.sessions) h = await s.forward(h, ids.length)
    this.fed.push(...ids)
    return await this.head.logits(h, ids.length)
  }

  async draft (context: readonly number[], k: number, choose: DraftChooser): Promise<DraftChoice[]> {
    if (k < 1 || context.length === 0) return []
    // keep what the cache shares with the context (drafts the target accepted stay), but at
    // least the last context token is fed again: its row predicts the first draft
    let common = 0
    const limit = Math.min(this.fed.length, context.length - 1)
    while (common < limit && this.fed[common] === context[common]) common++
    if (common < this.fed.length) {
      for (const s of this.sessions) await s.truncate(common)
      this.fed.length = common
    }
    let row = await this.step(context.slice(common))
    const out: DraftChoice[] = []
    for (let i = 0; ; i++) {
      const c = choose(row, i)
      out.push(c)
      if (out.length === k) return out
      row = await this.step([c.id])
    }
  }

  async close (): Promise<void> {
    for (const s of this.sessions) await s.close()
  }
}
