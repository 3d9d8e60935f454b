import * as tf from '@tensorflow/tfjs-core'
import { Worker } from 'node:worker_threads'
import type { ModelConfig } from './config.ts'
import { transposeInto, rmsNorm } from './block.ts'
import type { BackendName } from './backend.ts'

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

export type HeadWorkerRequest = { id: number, x: Float32Array, rows: number }
export type HeadWorkerReply =
  | { id: number, ok: true, logits: Float32Array }
  | { id: number, ok: false, message: string }
  | { ready: true } | { ready: false, message: string }

/**
 * The LM head in a worker thread with its own backend. A client or gateway driving many sessions
 * relays every hop's activations on its main thread; a 20 ms LM-head call there holds all of
 * them up. In a worker the head computes while the main thread keeps the routes moving.
 */
export async function workerHeadKernel (w: HeadWeights, backend?: BackendName): Promise<HeadKernel> {
  const worker = new Worker(new URL('./head-worker.ts', import.meta.url), { workerData: { weights: w, backend } })
  const pending = new Map<number, { resolve: (l: Float32Array) => void, reject: (e: Error) => void }>()
  let failure: Error | undefined
  await new Promise<void>((resolve, reject) => {
    worker.once('message', (m: HeadWorkerReply) => {
      if ('ready' in m && m.ready) resolve()
      else reject(new Error(`LM head worker: ${'message' in m ? m.message : 'did not start'}`))
    })
    worker.once('error', reject)
    worker.once('exit', (code) => reject(new Error(`LM head worker exited with code ${code} while loading`)))
  }).catch(async (err) => { await worker.terminate(); throw err })
  const fail = (err: Error): void => {
    failure ??= err
    for (const p of pending.values()) p.reject(err)
    pending.clear()
  }
  worker.on('message', (m: HeadWorkerReply) => {
    if (!('id' in m)) return
    const p = pending.get(m.id)
    if (p == null) return
    pending.delete(m.id)
    if (m.ok) p.resolve(m.logits)
    else p.reject(new Error(m.message))
  })
  worker.on('error', fail)
  worker.on('exit', (code) => fail(new Error(`LM head worker exited with code ${code}`)))
  // An idle head must not keep a finished CLI alive; pending calls hold the process meanwhile.
  worker.unref()
  let nextId = 1
  return {
    logits: async (x, rows) => {
      if (failure != null) throw failure
      const id = nextId++
      // x's buffer moves to the worker when x is all of it (ModelHead builds one per call)
      const own = x.byteOffset === 0 && x.byteLength === x.buffer.byteLength ? x : x.slice()
      return await new Promise<Float32Array>((resolve, reject) => {
        pending.set(id, { resolve, reject })
        worker.ref()
        worker.postMessage({ id, x: own, rows } satisfies HeadWorkerRequest, [own.buffer as ArrayBuffer])
      }).finally(() => { if (pending.size === 0) worker.unref() })
    },
    dispose: async () => { await worker.terminate() }
  }
}
