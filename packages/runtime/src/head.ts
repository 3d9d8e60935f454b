import type { ModelConfig } from './config.ts'
import { rawFloat32 } from './checkpoint.ts'
import type { RawTensor } from './checkpoint.ts'
import type { ModelSource } from './model-source.ts'
import { headTensorShapes } from './config.ts'
import { tensorsDigest } from './model-id.ts'
import { activeBackend } from './backend.ts'
import { headWeights, inThreadHeadKernel, workerHeadKernel } from './head-kernel.ts'
import type { HeadKernel, HeadWeights } from './head-kernel.ts'
import { activeGpu } from './webgpu/device.ts'
import { gpuHeadKernel } from './webgpu/head.ts'

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
  private readonly embeddings: Float32Array
  private readonly kernel: HeadKernel

  private constructor (config: ModelConfig, embeddings: Float32Array, kernel: HeadKernel) {
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
    const { embeddings, weights } = splitHead(ckpt.config, raws)
    const gpu = activeBackend() === 'webgpu' ? activeGpu() : undefined
    // a GPU head leaves the main thread free already: it only waits for the GPU
    if (gpu != null) return new ModelHead(ckpt.config, embeddings, gpuHeadKernel(gpu, weights))
    if (opts.thread === true) return new ModelHead(ckpt.config, embeddings, await workerHeadKernel(weights, activeBackend()))
    const head = new ModelHead(ckpt.config, embeddings, inThreadHeadKernel(weights))
    // Pack the LM head for the backend now, not during the first token.
    await head.logits(new Float32Array(ckpt.config.hiddenSize), 1)
    return head
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
      out.set(this.embeddings.subarray(id * H, (id + 1) * H), i * H)
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

/** Checks the head's tensors; the embeddings (copied: the raw buffer may be a view of a larger read) and the LM head's weights. */
function splitHead (cfg: ModelConfig, raws: RawTensor[]): { embeddings: Float32Array, weights: HeadWeights } {
  const shapes = headTensorShapes(cfg)
  const by = new Map(raws.map(r => [r.name, r]))
  for (const [name, shape] of shapes) {
    const r = by.get(name)
    if (r == null) throw new Error(`model head: tensor ${name} missing`)
    if (r.shape.join() !== shape.join()) throw new Error(`model head: tensor ${name} has shape ${JSON.stringify(r.shape)}, expected ${JSON.stringify(shape)}`)
  }
  const f32 = (n: string): Float32Array => { const r = by.get(n)!; return rawFloat32(r) }
  const embeddings = f32('model.embed_tokens.weight').slice()
  const lmHead = cfg.tieWordEmbeddings ? embeddings : f32('lm_head.weight')
  return { embeddings, weights: headWeights(cfg, f32('model.norm.weight'), lmHead) }
}
