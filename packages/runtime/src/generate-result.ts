import type { GenerateOptions, GenerateResult } from './generate.ts'

/** Times of a generation (performance.now()): start, prefill done, last token. */
export interface GenerationTimes { t0: number, t1: number, t2: number }

/** The result of a generation from its tokens and times; speeds count decode steps after the first token. */
export function generationResult (tokenIds: number[], stopped: boolean, promptTokens: number, t: GenerationTimes, logits?: Float32Array[]): GenerateResult {
  const prefillSeconds = (t.t1 - t.t0) / 1000
  const decodeSeconds = (t.t2 - t.t1) / 1000
  const decodeSteps = Math.max(0, tokenIds.length - 1)
  return {
    tokenIds,
    finishReason: stopped ? 'stop' : 'length',
    promptTokens,
    prefillSeconds,
    decodeSeconds,
    prefillTokensPerSecond: promptTokens / prefillSeconds,
    tokensPerSecond: decodeSteps > 0 ? decodeSteps / decodeSeconds : 0,
    logits
  }
}

/**
 * The tokens a generation chose, the logits rows they were sampled from, and how many of them the
 * caller has been handed (`onToken`). Token i was sampled from the output at position P + i − 1:
 * it is handed over once positions [0, P + i) are confirmed, at once unless the pipeline confirms
 * its outputs later.
 */
export class GeneratedTokens {
  readonly ids: number[] = []
  /** Rows of tokens not handed over yet, and all of them with `keepLogits`. */
  private readonly rows: Array<Float32Array | undefined> = []
  private delivered = 0
  private readonly promptTokens: number
  private readonly opts: Pick<GenerateOptions, 'onToken' | 'keepLogits'>

  constructor (promptTokens: number, opts: Pick<GenerateOptions, 'onToken' | 'keepLogits'>) {
    this.promptTokens = promptTokens
    this.opts = opts
  }

  get length (): number { return this.ids.length }
  get last (): number | undefined { return this.ids[this.ids.length - 1] }

  push (id: number, row: Float32Array): void {
    this.ids.push(id)
    this.rows.push(row)
  }

  /** Hands the caller each token whose source output lies below position `confirmed`, in order. */
  async deliver (confirmed: number): Promise<void> {
    while (this.delivered < this.ids.length && this.promptTokens + this.delivered <= confirmed) {
      const i = this.delivered++
      const row = this.rows[i]!
      if (this.opts.keepLogits !== true) this.rows[i] = undefined
      await this.opts.onToken?.(this.ids[i], row)
    }
  }

  /** Keeps the first `count` tokens (a pipeline went back: the others came from outputs it dropped). */
  truncate (count: number): void {
    this.ids.length = Math.min(this.ids.length, count)
    this.rows.length = this.ids.length
    this.delivered = Math.min(this.delivered, this.ids.length)
  }

  /** Every token's row, with `keepLogits`. */
  logits (): Float32Array[] | undefined {
    return this.opts.keepLogits === true ? this.rows as Float32Array[] : undefined
  }
}
