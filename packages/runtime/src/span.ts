import * as tf from '@tensorflow/tfjs-core'
import type { ModelConfig } from './config.ts'
import type { Checkpoint } from './checkpoint.ts'
import { loadBlockWeights, disposeBlockWeights, blockForward } from './block.ts'
import type { BlockWeights, LayerCache, StepContext } from './block.ts'
import { inverseFrequencies, rotaryTables } from './rope.ts'
import { tensorsDigest } from './model-id.ts'

export class SpanError extends Error {
  constructor (message: string) { super(message); this.name = 'SpanError' }
}

/** One session's keys and values for every block of a span. */
export class KVCache {
  readonly maxLength: number
  readonly layers: LayerCache[]
  /** Positions `[0, length)` are cached. */
  length = 0

  /** Absolute index of the first block this cache covers. */
  readonly firstBlock: number

  constructor (firstBlock: number, blocks: number, maxLength: number) {
    this.firstBlock = firstBlock
    this.maxLength = maxLength
    this.layers = Array.from({ length: blocks }, () => ({}))
  }

  /** Drops positions `[length, …)`: rolls the session back, e.g. after a rejected draft or a replay. */
  truncate (length: number): void {
    if (!Number.isInteger(length) || length < 0 || length > this.length) {
      throw new SpanError(`cannot truncate the cache to ${length}: it holds ${this.length} positions`)
    }
    if (length === this.length) return
    for (const l of this.layers) {
      if (l.k == null || l.v == null) continue
      if (length === 0) {
        l.k.dispose(); l.v.dispose(); l.k = undefined; l.v = undefined
        continue
      }
      const [h, , d] = l.k.shape
      const k = tf.slice(l.k, [0, 0, 0], [h, length, d])
      const v = tf.slice(l.v, [0, 0, 0], [h, length, d])
      l.k.dispose(); l.v.dispose()
      l.k = k; l.v = v
    }
    this.length = length
  }

  /** Bytes held (float32 keys and values). */
  bytes (): number {
    let n = 0
    for (const l of this.layers) n += ((l.k?.size ?? 0) + (l.v?.size ?? 0)) * 4
    return n
  }

  dispose (): void { this.truncate(0) }
}

/**
 * Contiguous transformer blocks `[start, end)` of a model, resident in this process's backend.
 * The unit a server serves and a client chains.
 */
export class Span {
  readonly config: ModelConfig
  readonly start: number
  readonly end: number
  private readonly blocks: BlockWeights[]
  private readonly invFreq: Float64Array

  private constructor (config: ModelConfig, start: number, end: number, blocks: BlockWeights[]) {
    this.config = config
    this.start = start
    this.end = end
    this.blocks = blocks
    this.invFreq = inverseFrequencies(config)
  }

  /** Reads only the tensors of blocks `[start, end)` (and only the shards holding them). */
  /**
   * `blockDigests` (the model manifest's, indexed by absolute block) makes the load verify that
   * these weights are the ones the model id names.
   */
  static async load (ckpt: Checkpoint, start: number, end: number, opts: { blockDigests?: string[] } = {}): Promise<Span> {
    const L = ckpt.config.numLayers
    if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end > L || start >= end) {
      throw new SpanError(`invalid span [${start}, ${end}) for a model of ${L} blocks`)
    }
    const blocks: BlockWeights[] = []
    try {
      for (let b = start; b < end; b++) {
        const raws = await ckpt.readBlockRaw(b)
        const want = opts.blockDigests?.[b]
        const got = want != null ? await tensorsDigest(raws) : undefined
        if (got != null && got !== want) {
          throw new SpanError(`block ${b}'s weights do not match the model id (digest ${got.slice(0, 12)}, manifest says ${want!.slice(0, 12)})`)
        }
        blocks.push(loadBlockWeights(ckpt.config, b, raws))
      }
    } catch (err) {
      blocks.forEach(disposeBlockWeights)
      throw err
    }
    const span = new Span(ckpt.config, start, end, blocks)
    await span.warmUp()
    return span
  }

  /**
   * One throwaway step: the wasm backend packs each weight matrix for XNNPACK on first use
   * (doubling its memory), so do it at load rather than in the first session's first token.
   */
  private async warmUp (): Promise<void> {
    const cache = this.newCache(1)
    try { await this.forward(new Float32Array(this.config.hiddenSize), 1, cache) } finally { cache.dispose() }
  }

  get size (): number { return this.end - this.start }

  /** A session cache for blocks `[start, end)` of this span (all of it by default). */
  newCache (maxLength: number, start = this.start, end = this.end): KVCache {
    if (!Number.isInteger(maxLength) || maxLength <= 0 || maxLength > this.config.maxPositions) {
      throw new SpanError(`max length ${maxLength} must be within 1..${this.config.maxPositions}`)
    }
    if (!Number.isInteger(start) || !Number.isInteger(end) || start < this.start || end > this.end || start >= end) {
      throw new SpanError(`blocks [${start}, ${end}) are not within the served span [${this.start}, ${this.end})`)
    }
    return new KVCache(start, end - start, maxLength)
  }

  /**
   * Runs hidden states `[tokens, hidden]` (row-major) through the span. Positions continue the
   * cache: `[cache.length, cache.length + tokens)`; passing them is a check, not a choice.
   */
  async forward (hidden: Float32Array, tokens: number, cache: KVCache, positions?: ArrayLike<number>): Promise<Float32Array> {
    const H = this.config.hiddenSize
    if (!Number.isInteger(tokens) || tokens <= 0) throw new SpanError(`tokens must be a positive integer (got ${tokens})`)
    if (hidden.length !== tokens * H) throw new SpanError(`hidden states have ${hidden.length} values, expected ${tokens}×${H}`)
    const from = cache.firstBlock - this.start
    if (from < 0 || from + cache.layers.length > this.size) throw new SpanError('cache belongs to another span')
    const first = cache.length
    if (positions != null) {
      if (positions.length !== tokens) throw new SpanError(`${positions.length} positions for ${tokens} tokens`)
      for (let t = 0; t < tokens; t++) {
        if (positions[t] !== first + t) throw new SpanError(`positions must continue the session's cache: expected ${first + t} at index ${t}, got ${positions[t]}`)
      }
    }
    if (first + tokens > cache.maxLength) throw new SpanError(`session length ${first + tokens} exceeds its max length ${cache.maxLength}`)

    const out = tf.tidy(() => {
      const ctx = this.stepContext(first, tokens)
      let x = tf.tensor2d(hidden, [tokens, H])
      for (let i = 0; i < cache.layers.length; i++) x = blockForward(this.config, this.blocks[from + i], x, ctx, cache.layers[i])
      return x
    })
    cache.length = first + tokens
    try {
      return (await out.data()) as Float32Array
    } finally {
      out.dispose()
    }
  }

  private stepContext (first: number, tokens: number): StepContext {
    const d = this.config.headDim
    const pos = Array.from({ length: tokens }, (_, t) => first + t)
    const { cos, sin } = rotaryTables(this.invFreq, pos)
    const ctx: StepContext = { tokens, cos: tf.tensor3d(cos, [tokens, 1, d]), sin: tf.tensor3d(sin, [tokens, 1, d]) }
    if (tokens > 1) {
      const g = this.config.numHeads / this.config.numKvHeads
      const keys = first + tokens
      const m = new Float32Array(g * tokens * keys)
      for (let r = 0; r < g * tokens; r++) {
        const t = r % tokens
        for (let s = first + t + 1; s < keys; s++) m[r * keys + s] = -1e30
      }
      ctx.mask = tf.tensor2d(m, [g * tokens, keys])
    }
    return ctx
  }

  dispose (): void {
    this.blocks.forEach(disposeBlockWeights)
    this.blocks.length = 0
  }
}
