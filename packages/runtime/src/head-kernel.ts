import { Worker } from 'node:worker_threads'
import type { ModelConfig } from './config.ts'
import { WorkerRpc, ownBuffer } from './worker-rpc.ts'
import { cpuHead } from './cpu/head.ts'
import type { CpuHeadWeights } from './cpu/head.ts'
import type { GpuHeadTail } from './webgpu/head.ts'

/** The LM head's kernel: final norm, then `[rows, hidden] · [hidden, vocab]`. */
export interface HeadKernel {
  /** Logits `[rows, vocab]` for hidden states `[rows, hidden]`; `x` is the kernel's from then on (it may move to another thread). */
  logits (x: Float32Array, rows: number): Promise<Float32Array>
  /**
   * GPU heads only: `use` gets the head to record into another submission on the same device (a
   * span's step, so a local decode token is one submission), the head held until it settles.
   */
  tail?: <T>(use: (tail: GpuHeadTail) => Promise<T>) => Promise<T>
  dispose (): Promise<void>
}

/** What a head kernel is built from: the final norm and the LM head as stored, `[vocab, hidden]`. */
export type HeadWeights = CpuHeadWeights

export function headWeights (cfg: ModelConfig, norm: Float32Array, lmHead: HeadWeights['lmHead']): HeadWeights {
  return { hiddenSize: cfg.hiddenSize, vocabSize: cfg.vocabSize, rmsNormEps: cfg.rmsNormEps, norm, lmHead }
}

/**
 * The LM head on this thread's CPU kernels (cpu/head.ts), its weights as stored: a matvec split
 * across cores, where tfjs-wasm's ran on one (10 of a 21 ms token on `small`).
 */
export function inThreadHeadKernel (w: HeadWeights): HeadKernel {
  const head = cpuHead(w)
  return {
    logits: async (x, rows) => head.logits(x, rows),
    dispose: async () => { head.dispose() }
  }
}

/** What the LM-head worker (head-worker.ts) answers. */
export interface HeadWorkerApi {
  logits (p: { x: Float32Array, rows: number }): Float32Array
}

/**
 * The LM head in a worker thread of its own. A client or gateway driving many sessions
 * relays every hop's activations on its main thread; a 20 ms LM-head call there holds all of
 * them up. In a worker the head computes while the main thread keeps the routes moving.
 */
export async function workerHeadKernel (w: HeadWeights): Promise<HeadKernel> {
  const worker = new Worker(new URL('./head-worker.ts', import.meta.url), { workerData: { weights: w } })
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
