import * as tf from '@tensorflow/tfjs-core'
import type { ModelConfig } from './config.ts'
import type { ModelSource } from './model-source.ts'
import { readBlockChecked } from './quant/quantized-source.ts'
import { collectGarbage } from './memory.ts'
import { loadBlockWeights, disposeBlockWeights, blockForward, blockWeightBytes } from './block.ts'
import type { BlockWeights, LayerCache, StepContext, StepSegment } from './block.ts'
import { inverseFrequencies, rotaryTables } from './rope.ts'
import { activeBackend } from './backend.ts'
import { activeGpu } from './webgpu/device.ts'
import { GpuSpanEngine } from './webgpu/span-engine.ts'
import type { GpuKVStore } from './webgpu/kv-store.ts'
import type { GpuHeadTail } from './webgpu/head.ts'
import { CpuSpanEngine, cpuEngineAccepts } from './cpu/span-engine.ts'
import type { CpuKVStore } from './cpu/kv-store.ts'
import { PlexusError } from './errors.ts'

/** A span asked for what it cannot do (positions past its cache, a cache of another backend). */
export class SpanError extends PlexusError {
  constructor (message: string) { super('span', message); this.name = 'SpanError' }
}

/**
 * One session's keys and values for every block of a span: tfjs tensors, GPU buffers (`gpu`)
 * when the span runs on the webgpu backend, or wasm memory (`cpu`) on the CPU engine.
 */
export class KVCache {
  readonly maxLength: number
  readonly layers: LayerCache[]
  readonly gpu?: GpuKVStore
  readonly cpu?: CpuKVStore
  /** Positions `[0, length)` are cached. */
  length = 0

  /** Absolute index of the first block this cache covers. */
  readonly firstBlock: number

  constructor (firstBlock: number, blocks: number, maxLength: number, gpu?: GpuKVStore, cpu?: CpuKVStore) {
    this.firstBlock = firstBlock
    this.maxLength = maxLength
    this.layers = Array.from({ length: blocks }, () => ({}))
    this.gpu = gpu
    this.cpu = cpu
  }

  /** Blocks covered. */
  get blocks (): number { return this.layers.length }

  /** Drops positions `[length, …)`: rolls the session back, e.g. after a rejected draft or a replay. */
  truncate (length: number): void {
    if (!Number.isInteger(length) || length < 0 || length > this.length) {
      throw new SpanError(`cannot truncate the cache to ${length}: it holds ${this.length} positions`)
    }
    if (length === this.length) return
    if (this.gpu != null || this.cpu != null) { this.length = length; return }
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
    if (this.gpu != null) return this.gpu.bytes()
    if (this.cpu != null) return this.cpu.bytes()
    let n = 0
    for (const l of this.layers) n += ((l.k?.size ?? 0) + (l.v?.size ?? 0)) * 4
    return n
  }

  dispose (): void {
    this.truncate(0)
    this.gpu?.dispose()
    this.cpu?.dispose()
  }
}

/**
 * Whether a span runs tfjs's block forward (block.ts) rather than the CPU engine: float32 weights
 * (`kernelFormat` false) on the `tensorflow` backend, or every span under PLEXUS_BLOCK_ENGINE=tfjs
 * (=kernels: never).
 */
export function usesTfjsBlocks (kernelFormat: boolean): boolean {
  const force = process.env.PLEXUS_BLOCK_ENGINE
  return force === 'tfjs' || (force !== 'kernels' && activeBackend() === 'tensorflow' && !kernelFormat)
}

/** One session's step within a batch. */
export interface SpanStep {
  hidden: Float32Array
  tokens: number
  cache: KVCache
  positions?: ArrayLike<number>
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
  /** Set when the blocks live on the GPU (webgpu backend); `blocks` is empty then. */
  private readonly gpu?: GpuSpanEngine
  /** Set when the blocks run on the CPU engine (weights in a kernel format); `blocks` is empty then. */
  private readonly cpu?: CpuSpanEngine
  private readonly invFreq: Float64Array

  private constructor (config: ModelConfig, start: number, end: number, blocks: BlockWeights[], engines: { gpu?: GpuSpanEngine, cpu?: CpuSpanEngine }) {
    this.config = config
    this.start = start
    this.end = end
    this.blocks = blocks
    this.gpu = engines.gpu
    this.cpu = engines.cpu
    this.invFreq = inverseFrequencies(config)
  }

  /** Which block forward runs this span. */
  get engine (): 'webgpu' | 'cpu-kernels' | 'tfjs' { return this.gpu != null ? 'webgpu' : this.cpu != null ? 'cpu-kernels' : 'tfjs' }

  /**
   * Reads only the tensors of blocks `[start, end)` (and only the shards holding them), into the
   * GPU when the webgpu backend is active. `blockDigests` (the model manifest's, indexed by absolute block) makes the load verify that
   * these weights are the ones the model id names.
   */
  static async load (ckpt: ModelSource, start: number, end: number, opts: { blockDigests?: string[], kvCache?: 'f32' | 'f16', onBlockLoaded?: (block: number) => void } = {}): Promise<Span> {
    const span = await Span.loadBlocks(ckpt, start, end, opts)
    // after loadBlocks returned and a turn of the event loop, so that nothing still holds the
    // last block's raw tensors
    await new Promise(resolve => setImmediate(resolve))
    collectGarbage()
    return span
  }

  private static async loadBlocks (ckpt: ModelSource, start: number, end: number, opts: { blockDigests?: string[], kvCache?: 'f32' | 'f16', onBlockLoaded?: (block: number) => void } = {}): Promise<Span> {
    const L = ckpt.config.numLayers
    if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end > L || start >= end) {
      throw new SpanError(`invalid span [${start}, ${end}) for a model of ${L} blocks`)
    }
    const blocks: BlockWeights[] = []
    const gpu = activeBackend() === 'webgpu' ? activeGpu() : undefined
    const engine = gpu != null ? new GpuSpanEngine(gpu, ckpt.config, inverseFrequencies(ckpt.config), { kv: opts.kvCache }) : undefined
    let cpu: CpuSpanEngine | undefined
    try {
      for (let b = start; b < end; b++) {
        const raws = await readBlockChecked(ckpt, b, opts.blockDigests?.[b])
        // The CPU engine runs every span on the wasm and cpu backends (float32 weights too: 1.8×
        // tfjs-wasm's decode on `small`, without XNNPACK's packed second copy), and on the
        // tensorflow backend (tfjs-node, multi-threaded) the spans stored in a kernel format;
        // decided by the span's first block. PLEXUS_BLOCK_ENGINE=tfjs or =kernels forces one.
        if (engine == null && b === start && !usesTfjsBlocks(cpuEngineAccepts(raws))) {
          cpu = new CpuSpanEngine(ckpt.config, inverseFrequencies(ckpt.config))
        }
        if (engine != null) await engine.addBlock(b, raws)
        else if (cpu != null) cpu.addBlock(b, raws)
        else blocks.push(loadBlockWeights(ckpt.config, b, raws))
        opts.onBlockLoaded?.(b)
      }
    } catch (err) {
      blocks.forEach(disposeBlockWeights)
      engine?.dispose()
      cpu?.dispose()
      throw err
    }
    const span = new Span(ckpt.config, start, end, blocks, { gpu: engine, cpu })
    try {
      await span.warmUp()
    } catch (err) {
      span.dispose()
      throw err
    }
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

  /**
   * Bytes the blocks' weights hold on a CPU backend: float32 tensors at 4 per value (wasm's packed
   * copies not counted), Q8_0/Q4_K weights as their blocks. Undefined on the GPU.
   */
  get weightBytes (): number | undefined {
    if (this.cpu != null) return this.cpu.weightBytes
    return this.gpu != null ? undefined : this.blocks.reduce((n, w) => n + blockWeightBytes(w), 0)
  }

  /** A session cache for blocks `[start, end)` of this span (all of it by default). */
  newCache (maxLength: number, start = this.start, end = this.end): KVCache {
    if (!Number.isInteger(maxLength) || maxLength <= 0 || maxLength > this.config.maxPositions) {
      throw new SpanError(`max length ${maxLength} must be within 1..${this.config.maxPositions}`)
    }
    if (!Number.isInteger(start) || !Number.isInteger(end) || start < this.start || end > this.end || start >= end) {
      throw new SpanError(`blocks [${start}, ${end}) are not within the served span [${this.start}, ${this.end})`)
    }
    return new KVCache(start, end - start, maxLength, this.gpu?.newStore(start - this.start, end - start, maxLength), this.cpu?.newStore(start - this.start, end - start, maxLength))
  }

  /**
   * Runs hidden states `[tokens, hidden]` (row-major) through the span. Positions continue the
   * cache: `[cache.length, cache.length + tokens)`; passing them is a check, not a choice.
   */
  async forward (hidden: Float32Array, tokens: number, cache: KVCache, positions?: ArrayLike<number>): Promise<Float32Array> {
    return (await this.forwardBatch([{ hidden, tokens, cache, positions }]))[0]
  }

  /**
   * Several sessions' steps as one call: the weights are read once for all their rows, which is
   * what makes concurrent decoding cheap. Every cache must cover the same blocks. Results are
   * bitwise those of separate calls.
   */
  async forwardBatch (steps: SpanStep[]): Promise<Float32Array[]> {
    if (steps.length === 0) return []
    const { from, blocks } = this.check(steps)
    if (this.gpu != null) return await this.forwardGpu(steps, from, blocks)
    if (this.cpu != null) return this.forwardCpu(steps, from, blocks)
    const H = this.config.hiddenSize
    const rows = steps.reduce((n, s) => n + s.tokens, 0)
    const input = new Float32Array(rows * H)
    let o = 0
    for (const s of steps) { input.set(s.hidden, o); o += s.hidden.length }
    const out = tf.tidy(() => {
      const ctx = this.stepContext(steps)
      let x = tf.tensor2d(input, [rows, H])
      for (let i = 0; i < blocks; i++) {
        const next = blockForward(this.config, this.blocks[from + i], x, ctx, steps.map(s => s.cache.layers[i]))
        // now, not at the scope's end: a block's input is dead once its output exists
        x.dispose()
        x = next
      }
      return x
    })
    for (const s of steps) s.cache.length += s.tokens
    let data: Float32Array
    try {
      data = (await out.data()) as Float32Array
    } finally {
      out.dispose()
    }
    return this.perStep(data, steps)
  }

  /**
   * One session's step, then the LM head on its last output row in the same GPU submission (a
   * webgpu span with the GPU head of the same device): the logits `[vocab]` that `head.logits`
   * would give for `forward`'s output, one submission and readback fewer per token.
   */
  async forwardLogits (hidden: Float32Array, tokens: number, cache: KVCache, tail: GpuHeadTail): Promise<Float32Array> {
    const { from, blocks } = this.check([{ hidden, tokens, cache }])
    if (this.gpu == null || cache.gpu == null) throw new SpanError('only a webgpu span runs the LM head in its step')
    const logits = await this.gpu.forward([{ hidden, tokens, store: cache.gpu, length: cache.length }], from, blocks, tail)
    cache.length += tokens
    return logits
  }

  /** The blocks a batch's caches cover (the same for all), after checking every step. */
  private check (steps: SpanStep[]): { from: number, blocks: number } {
    const H = this.config.hiddenSize
    const firstBlock = steps[0].cache.firstBlock
    const blocks = steps[0].cache.blocks
    const from = firstBlock - this.start
    if (from < 0 || from + blocks > this.size) throw new SpanError('cache belongs to another span')
    const seen = new Set<KVCache>()
    for (const { hidden, tokens, cache, positions } of steps) {
      if (!Number.isInteger(tokens) || tokens <= 0) throw new SpanError(`tokens must be a positive integer (got ${tokens})`)
      if (hidden.length !== tokens * H) throw new SpanError(`hidden states have ${hidden.length} values, expected ${tokens}×${H}`)
      if (cache.firstBlock !== firstBlock || cache.blocks !== blocks) throw new SpanError('a batch must cover the same blocks for every session')
      if (seen.has(cache)) throw new SpanError('a batch holds two steps of one session')
      seen.add(cache)
      const first = cache.length
      if (positions != null) {
        if (positions.length !== tokens) throw new SpanError(`${positions.length} positions for ${tokens} tokens`)
        for (let t = 0; t < tokens; t++) {
          if (positions[t] !== first + t) throw new SpanError(`positions must continue the session's cache: expected ${first + t} at index ${t}, got ${positions[t]}`)
        }
      }
      if (first + tokens > cache.maxLength) throw new SpanError(`session length ${first + tokens} exceeds its max length ${cache.maxLength}`)
    }
    return { from, blocks }
  }

  private async forwardGpu (steps: SpanStep[], from: number, blocks: number): Promise<Float32Array[]> {
    for (const s of steps) if (s.cache.gpu == null) throw new SpanError('cache belongs to another backend')
    const data = await this.gpu!.forward(steps.map(s => ({ hidden: s.hidden, tokens: s.tokens, store: s.cache.gpu!, length: s.cache.length })), from, blocks)
    for (const s of steps) s.cache.length += s.tokens
    return this.perStep(data, steps)
  }

  private forwardCpu (steps: SpanStep[], from: number, blocks: number): Float32Array[] {
    for (const s of steps) if (s.cache.cpu == null) throw new SpanError('cache belongs to another backend')
    const data = this.cpu!.forward(steps.map(s => ({ hidden: s.hidden, tokens: s.tokens, store: s.cache.cpu!, length: s.cache.length })), from, blocks)
    for (const s of steps) s.cache.length += s.tokens
    return this.perStep(data, steps)
  }

  /** A batch's stacked output rows, split back into each step's. */
  private perStep (data: Float32Array, steps: SpanStep[]): Float32Array[] {
    if (steps.length === 1) return [data]
    const H = this.config.hiddenSize
    const results: Float32Array[] = []
    let o = 0
    for (const s of steps) { results.push(data.slice(o, o + s.tokens * H)); o += s.tokens * H }
    return results
  }

  private stepContext (steps: SpanStep[]): StepContext {
    const d = this.config.headDim
    const g = this.config.numHeads / this.config.numKvHeads
    const pos: number[] = []
    const segments: StepSegment[] = []
    for (const { tokens, cache } of steps) {
      const first = cache.length
      for (let t = 0; t < tokens; t++) pos.push(first + t)
      const seg: StepSegment = { tokens }
      if (tokens > 1) {
        const keys = first + tokens
        const m = new Float32Array(g * tokens * keys)
        for (let r = 0; r < g * tokens; r++) {
          const t = r % tokens
          for (let s = first + t + 1; s < keys; s++) m[r * keys + s] = -1e30
        }
        seg.mask = tf.tensor2d(m, [g * tokens, keys])
      }
      segments.push(seg)
    }
    const { cos, sin } = rotaryTables(this.invFreq, pos)
    return { tokens: pos.length, cos: tf.tensor3d(cos, [pos.length, 1, d]), sin: tf.tensor3d(sin, [pos.length, 1, d]), segments }
  }

  dispose (): void {
    this.blocks.forEach(disposeBlockWeights)
    this.blocks.length = 0
    this.gpu?.dispose()
    this.cpu?.dispose()
  }
}
