import type { ModelConfig } from './config.ts'
import { rawFloat32 } from './checkpoint.ts'
import type { RawTensor } from './checkpoint.ts'
import type { ModelSource } from './model-source.ts'
import { headTensorShapes } from './config.ts'
import { tensorsDigest } from './model-id.ts'
import { activeBackend } from './backend.ts'
import { headWeights, inThreadHeadKernel, workerHeadKernel } from './head-kernel.ts'
import type { HeadKernel } from './head-kernel.ts'
import { activeGpu } from './webgpu/device.ts'
import { gpuHeadKernel } from './webgpu/head.ts'
import type { GpuHeadTail } from './webgpu/head.ts'

/** Rows one LM-head call gathers from several requests at most (a larger request runs alone). */
const MAX_LOGIT_ROWS = 64

interface QueuedLogits { x: Float32Array, rows: number, resolve: (logits: Float32Array) => void, reject: (err: Error) => void }

/**
 * The client's own pieces of the model: token embeddings, the final norm and the LM head.
 * Embedding rows are looked up in plain memory (one row per token needs no kernel); the LM
 * head runs in this thread's backend or, with `thread`, in a worker thread of its own.
 */
export class ModelHead {
  readonly config: ModelConfig
  private readonly embeddings: EmbeddingRows
  private readonly kernel: HeadKernel

  private constructor (config: ModelConfig, embeddings: EmbeddingRows, kernel: HeadKernel) {
    this.config = config
    this.embeddings = embeddings
    this.kernel = kernel
  }

  /**
   * `headDigest` (from the model manifest) makes the load verify the weights are the ones the
   * model id names. `thread`: run the LM head in a worker thread (clients driving a swarm).
   */
  static async load (ckpt: ModelSource, opts: { headDigest?: string, thread?: boolean } = {}): Promise<ModelHead> {
    const raws = await ckpt.readHeadRaw()
    if (opts.headDigest != null) {
      const got = await tensorsDigest(raws)
      if (got !== opts.headDigest) throw new Error(`the embeddings/LM head do not match the model id (digest ${got.slice(0, 12)}, manifest says ${opts.headDigest.slice(0, 12)})`)
    }
    // The embeddings stay as stored in host memory, a row widened per token; the LM head goes to
    // the GPU or the CPU kernels' memory as stored (f16, q8_0, …; a copy: a tied head is both).
    const cfg = ckpt.config
    const by = checkedHead(cfg, raws)
    const emb = ownBytes(by.get('model.embed_tokens.weight')!)
    const rows = new EmbeddingRows(emb, cfg.hiddenSize)
    const weights = headWeights(cfg, rawFloat32(by.get('model.norm.weight')!), cfg.tieWordEmbeddings ? emb : by.get('lm_head.weight')!)
    const gpu = activeBackend() === 'webgpu' ? activeGpu() : undefined
    // A GPU head leaves the main thread free already (it only waits for the GPU): no worker.
    if (gpu != null) return new ModelHead(cfg, rows, gpuHeadKernel(gpu, weights))
    if (opts.thread === true) return new ModelHead(cfg, rows, await workerHeadKernel(weights))
    return new ModelHead(cfg, rows, inThreadHeadKernel(weights))
  }

  /** Hidden states `[ids.length, hidden]` for token ids. */
  embed (ids: ArrayLike<number>): Float32Array {
    const H = this.config.hiddenSize
    const out = new Float32Array(ids.length * H)
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]
      if (!Number.isInteger(id) || id < 0 || id >= this.config.vocabSize) {
        throw new RangeError(`token id ${id} is outside the vocabulary (0..${this.config.vocabSize - 1})`)
      }
      out.set(this.embeddings.row(id), i * H)
    }
    return out
  }

  /**
   * Logits `[rows, vocab]` for the last `rows` of hidden states `[tokens, hidden]`. Requests made
   * in the same turn of the event loop (concurrent sessions of one client or gateway) run as one
   * call, reading the LM head once for all of them; results are bitwise those of separate calls.
   */
  logits (hidden: Float32Array, tokens: number, rows = 1): Promise<Float32Array> {
    const H = this.config.hiddenSize
    if (hidden.length !== tokens * H) return Promise.reject(new RangeError(`hidden states have ${hidden.length} values, expected ${tokens}×${H}`))
    rows = Math.min(rows, tokens)
    return new Promise((resolve, reject) => {
      this.queued.push({ x: hidden.subarray((tokens - rows) * H), rows, resolve, reject })
      if (!this.flushing) { this.flushing = true; setImmediate(() => { void this.flush() }) }
    })
  }

  /**
   * A GPU head: `use` records it into another submission on this thread's device (a span's step,
   * Span.forwardLogits), the head held meanwhile. Undefined for CPU heads.
   */
  async withGpuTail<T> (use: (tail: GpuHeadTail) => Promise<T>): Promise<T | undefined> {
    return this.kernel.tail == null ? undefined : await this.kernel.tail(use)
  }

  private readonly queued: QueuedLogits[] = []
  private flushing = false

  private async flush (): Promise<void> {
    while (this.queued.length > 0) {
      let n = 0
      let rows = 0
      while (n < this.queued.length && (n === 0 || rows + this.queued[n].rows <= MAX_LOGIT_ROWS)) rows += this.queued[n++].rows
      const batch = this.queued.splice(0, n)
      try {
        const H = this.config.hiddenSize
        const V = this.config.vocabSize
        const x = new Float32Array(rows * H)
        let o = 0
        for (const q of batch) { x.set(q.x, o); o += q.x.length }
        const data = await this.kernel.logits(x, rows)
        if (batch.length === 1) batch[0].resolve(data)
        else {
          o = 0
          for (const q of batch) { q.resolve(data.slice(o, o + q.rows * V)); o += q.rows * V }
        }
      } catch (err: any) {
        for (const q of batch) q.reject(err)
      }
    }
    this.flushing = false
  }

  async dispose (): Promise<void> {
    await this.kernel.dispose()
  }
}

/** The head's tensors by name, each present with the config's shape. */
function checkedHead (cfg: ModelConfig, raws: RawTensor[]): Map<string, RawTensor> {
  const by = new Map(raws.map(r => [r.name, r]))
  for (const [name, shape] of headTensorShapes(cfg)) {
    const r = by.get(name)
    if (r == null) throw new Error(`model head: tensor ${name} missing`)
    if (r.shape.join() !== shape.join()) throw new Error(`model head: tensor ${name} has shape ${JSON.stringify(r.shape)}, expected ${JSON.stringify(shape)}`)
  }
  return by
}

/** A tensor with bytes of its own (a raw read may be a view of a larger buffer, which would stay alive with it). */
function ownBytes (r: RawTensor): RawTensor {
  return r.bytes.byteOffset === 0 && r.bytes.byteLength === r.bytes.buffer.byteLength ? r : { ...r, bytes: r.bytes.slice() }
}

/** Embedding rows as stored (float or ggml blocks); a row is widened to float32 when looked up. */
class EmbeddingRows {
  private readonly raw: RawTensor
  private readonly rowBytes: number
  private readonly hidden: number

  constructor (raw: RawTensor, hidden: number) {
    this.raw = raw
    this.hidden = hidden
    this.rowBytes = raw.bytes.byteLength / raw.shape[0]
  }

  row (id: number): Float32Array {
    const bytes = this.raw.bytes.subarray(id * this.rowBytes, (id + 1) * this.rowBytes)
    // F32 rows are views; others are widened (a quantized row is whole blocks)
    return this.raw.dtype === 'F32' ? new Float32Array(bytes.buffer, bytes.byteOffset, this.hidden) : rawFloat32({ dtype: this.raw.dtype, shape: [this.hidden], bytes: bytes.byteOffset % 4 === 0 ? bytes : bytes.slice() })
  }
}
