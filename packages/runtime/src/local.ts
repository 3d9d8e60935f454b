import { openModel } from './model-source.ts'
import type { ModelSource } from './model-source.ts'
import { withQuantization, quantizationOf, weightFormat, bytesPerWeight } from './quant/quantized-source.ts'
import type { QuantFormat } from './quant/quantized-source.ts'
import { QUANT_BLOCK } from './cpu/quant-matrix.ts'
import { ModelHead } from './head.ts'
import { Span, usesTfjsBlocks } from './span.ts'
import { inProcessRunner, through } from './runner.ts'
import type { SpanRunner, SpanSession } from './runner.ts'
import { WorkerSpanRunner } from './worker-span.ts'
import { activeBackend } from './backend.ts'
import { collectGarbage } from './memory.ts'
import type { SessionPipeline } from './generate.ts'
import type { ModelConfig } from './config.ts'
import { ProgressMeter, storedPartBytes } from './progress.ts'
import type { ProgressListener } from './progress.ts'

/** Formats whose blocks the CPU backends keep as stored (every other format is widened to float32). */
export const CPU_QUANT_FORMATS: readonly string[] = Object.keys(QUANT_BLOCK).filter(f => f !== 'f32')

/**
 * Bytes one block's weights occupy in a CPU backend when its linear weights are stored as
 * `format` (weightFormat's names): q8_0, q4_k, q5_k, q6_k and bf16 blocks as stored (the
 * formats of `QUANT_BLOCK`), anything else as float32.
 */
export function blockBytes (cfg: ModelConfig, format = 'f32'): number {
  const H = cfg.hiddenSize
  const q = cfg.numHeads * cfg.headDim
  const kv = cfg.numKvHeads * cfg.headDim
  const linear = H * (q + 2 * kv) + q * H + 3 * H * cfg.intermediateSize
  const perWeight = CPU_QUANT_FORMATS.includes(format) ? bytesPerWeight(format) : 4
  return linear * perWeight + 4 * (2 * H + (cfg.qkvBias ? q + 2 * kv : 0))
}

/**
 * float32 weight bytes one tfjs-wasm instance holds comfortably: its heap is capped just under 4
 * GiB, and XNNPACK keeps a packed copy of every weight matrix beside the tensor (2× in all). Only
 * tfjs's block forward keeps weights there (PLEXUS_BLOCK_ENGINE=tfjs); the CPU engine opens
 * another 4 GiB memory when one is full.
 */
export const WASM_HEAP_BUDGET = 1.5 * 2 ** 30

/** Cut points splitting the blocks into the fewest even groups of at most `budget` bytes each. */
export function cutsForBudget (cfg: ModelConfig, budget: number, format = 'f32'): number[] {
  const L = cfg.numLayers
  const perGroup = Math.max(1, Math.floor(budget / blockBytes(cfg, format)))
  const groups = Math.ceil(L / perGroup)
  return Array.from({ length: groups - 1 }, (_, i) => Math.round(((i + 1) * L) / groups))
}

export interface LocalModelOptions {
  /** Split points between spans, e.g. `[4, 8]` → `[0,4) [4,8) [8,L)`; results are identical either way. */
  cuts?: number[]
  /** `auto`: worker threads only when tfjs's block forward on wasm would hold more than one heap holds. */
  placement?: 'auto' | 'in-process' | 'workers'
  /** Quantize the blocks' linear weights at load (LocalModel.load; a source passed in carries its own). */
  quantize?: QuantFormat
  /** Precision of the KV cache on the GPU (webgpu backend; the CPU backends keep float32). */
  kvCache?: 'f32' | 'f16'
  /** Told how far loading the blocks is (task `load`, bytes as stored). */
  onProgress?: ProgressListener
  /** The model's name in progress events (default: the source's). */
  modelName?: string
}

export interface SpanRunnersOptions extends LocalModelOptions {
  /** Verify the weights against the model manifest's digests while loading. */
  blockDigests?: string[]
  /** Bytes the caller keeps in this thread's backend besides the spans (e.g. the LM head). */
  reservedBytes?: number
}

/**
 * Loads blocks `[start, end)` as one or more runners: in this thread, or in worker threads (each
 * with its own backend heap) when the weights would not fit one wasm heap, or when asked.
 */
export async function loadSpanRunners (ckpt: ModelSource, start: number, end: number, opts: SpanRunnersOptions = {}): Promise<SpanRunner[]> {
  const cfg = ckpt.config
  let placement = opts.placement ?? 'auto'
  let cuts = opts.cuts
  // Only tfjs's block forward on wasm (PLEXUS_BLOCK_ENGINE=tfjs) keeps weights in a tfjs heap of
  // < 4 GiB, and its quantized blocks not even there; the CPU engine opens memories of its own,
  // so its spans are never split for size
  const tfjsHeap = activeBackend() === 'wasm' && usesTfjsBlocks(false)
  const format = tfjsHeap ? await weightFormat(ckpt) : 'f32'
  const bytes = (end - start) * blockBytes(cfg, format) + (opts.reservedBytes ?? 0)
  if (placement === 'auto') placement = tfjsHeap && bytes > WASM_HEAP_BUDGET ? 'workers' : 'in-process'
  if (placement === 'workers' && cuts == null && tfjsHeap) cuts = cutsForBudget({ ...cfg, numLayers: end - start }, WASM_HEAP_BUDGET, format).map(c => c + start)
  const bounds = [start, ...(cuts ?? []), end]
  const runners: SpanRunner[] = []
  const sizes = opts.onProgress != null ? await Promise.all(Array.from({ length: end - start }, async (_, i) => await storedPartBytes(ckpt, start + i))) : []
  const meter = new ProgressMeter(opts.onProgress, { task: 'load', model: opts.modelName ?? ckpt.name, blocks: [start, end], total: sizes.reduce((a, b) => a + b, 0) })
  const onBlockLoaded = (b: number): void => { meter.add(sizes[b - start] ?? 0) }
  try {
    for (let i = 0; i + 1 < bounds.length; i++) {
      runners.push(placement === 'workers'
        ? await WorkerSpanRunner.load({ path: ckpt.path, quantize: quantizationOf(ckpt), start: bounds[i], end: bounds[i + 1], backend: activeBackend(), blockDigests: opts.blockDigests, kvCache: opts.kvCache }, onBlockLoaded)
        : inProcessRunner(await Span.load(ckpt, bounds[i], bounds[i + 1], { blockDigests: opts.blockDigests, kvCache: opts.kvCache, onBlockLoaded })))
    }
    meter.finish()
    // this thread's share of the load (manifest, messages, workers' start) is garbage now too
    if (placement === 'workers') collectGarbage()
    return runners
  } catch (err) {
    for (const r of runners) await r.dispose()
    throw err
  }
}

/** A whole model on this machine: the head in this thread plus spans covering every block. */
export class LocalModel {
  readonly checkpoint: ModelSource
  readonly head: ModelHead
  readonly spans: SpanRunner[]

  private constructor (checkpoint: ModelSource, head: ModelHead, spans: SpanRunner[]) {
    this.checkpoint = checkpoint
    this.head = head
    this.spans = spans
  }

  get config (): ModelConfig { return this.checkpoint.config }

  /** `path`: a model directory or a .gguf file. */
  static async load (path: string, opts: LocalModelOptions = {}): Promise<LocalModel> {
    const ckpt = withQuantization(await openModel(path), opts.quantize)
    const cfg = ckpt.config
    try {
      const spans = await loadSpanRunners(ckpt, 0, cfg.numLayers, { ...opts, reservedBytes: 4 * cfg.vocabSize * cfg.hiddenSize })
      try {
        return new LocalModel(ckpt, await ModelHead.load(ckpt), spans)
      } catch (err) {
        for (const s of spans) await s.dispose()
        throw err
      }
    } catch (err) {
      await ckpt.close()
      throw err
    }
  }

  async session (maxLength = this.config.maxPositions): Promise<SessionPipeline> {
    const sessions: SpanSession[] = []
    for (const s of this.spans) sessions.push(await s.open(maxLength))
    const before = sessions.slice(0, -1)
    const last = sessions[sessions.length - 1]
    return {
      forward: async (hidden, tokens) => await through(sessions, hidden, tokens),
      // a webgpu span last and a GPU head: the LM head in the step's submission
      forwardLogits: last.forwardLogits == null ? undefined : async (head, hidden, tokens) => {
        const h = await through(before, hidden, tokens)
        return await head.withGpuTail(async tail => await last.forwardLogits!(h, tokens, tail)) ??
          await head.logits(await last.forward(h, tokens), tokens)
      },
      truncate: async (length) => { for (const s of sessions) await s.truncate(length) },
      close: async () => { for (const s of sessions) await s.close() }
    }
  }

  async dispose (): Promise<void> {
    for (const s of this.spans) await s.dispose()
    await this.head.dispose()
    await this.checkpoint.close()
  }
}
