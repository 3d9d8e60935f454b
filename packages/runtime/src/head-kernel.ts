import * as tf from '@tensorflow/tfjs-core'
import { Worker } from 'node:worker_threads'
import type { ModelConfig } from './config.ts'
import { transposeInto, rmsNorm } from './block.ts'
import type { BackendName } from './backend.ts'
import { WorkerRpc, ownBuffer } from './worker-rpc.ts'

/** The LM head's kernel: final norm, then `[rows, hidden] · [hidden, vocab]`. */
export interface HeadKernel {
  /** Logits `[rows, vocab]` for hidden states `[rows, hidden]`; `x` is the kernel's from then on (it may move to another thread). */
  logits (x: Float32Array, rows: number): Promise<Float32Array>
  dispose (): Promise<void>
}

/** What a head kernel is built from: the final norm and the LM head as stored, `[vocab, hidden]`. */
export interface HeadWeights {
  hiddenSize: number
  vocabSize: number
  rmsNormEps: number
  norm: Float32Array
  lmHead: Float32Array
}

export function headWeights (cfg: ModelConfig, norm: Float32Array, lmHead: Float32Array): HeadWeights {
  return { hiddenSize: cfg.hiddenSize, vocabSize: cfg.vocabSize, rmsNormEps: cfg.rmsNormEps, norm, lmHead }
}

/** The LM head in this thread's backend, kept transposed `[hidden, vocab]`. */
export function inThreadHeadKernel (w: HeadWeights): HeadKernel {
  const H = w.hiddenSize
  const V = w.vocabSize
  // the closure below keeps only this, not `w`: its untransposed LM head would stay alive with it
  const eps = w.rmsNormEps
  const t = new Float32Array(H * V)
  transposeInto(w.lmHead, V, H, t, V, 0)
  const norm = tf.tensor1d(w.norm)
  const lmHead = tf.tensor2d(t, [H, V])
  return {
    logits: async (x, rows) => {
      const out = tf.tidy(() => tf.matMul(rmsNorm(tf.tensor2d(x, [rows, H]), norm, eps), lmHead))
      try {
        return (await out.data()) as Float32Array
      } finally {
        out.dispose()
      }
    },
    dispose: async () => { norm.dispose(); lmHead.dispose() }
  }
}

/** What the LM-head worker (head-worker.ts) answers. */
export interface HeadWorkerApi {
  logits (p: { x: Float32Array, rows: number }): Float32Array
}

/**
 * The LM head in a worker thread with its own backend. A client or gateway driving many sessions
 * relays every hop's activations on its main thread; a 20 ms LM-head call there holds all of
 * them up. In a worker the head computes while the main thread keeps the routes moving.
 */
export async function workerHeadKernel (w: HeadWeights, backend?: BackendName): Promise<HeadKernel> {
  const worker = new Worker(new URL('./head-worker.ts', import.meta.url), { workerData: { weights: w, backend } })
  // An idle head must not keep a finished CLI alive; pending calls hold the process meanwhile.
  const rpc = await WorkerRpc.start<HeadWorkerApi>(worker, { label: 'LM head worker', unrefWhenIdle: true })
  return {
    logits: async (x, rows) => {
      // x's buffer moves to the worker when x is all of it (ModelHead builds one per call)
      const own = ownBuffer(x)
      return await rpc.call('logits', { x: own, rows }, [own.buffer as ArrayBuffer])
    },
    dispose: async () => { await rpc.terminate() }
  }
}
