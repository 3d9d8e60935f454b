// Worker thread entry: the LM head on this thread's CPU kernels (see workerHeadKernel).
import { parentPort, workerData } from 'node:worker_threads'
import { cpuHead } from './cpu/head.ts'
import type { HeadWeights, HeadWorkerApi } from './head-kernel.ts'
import { serveCalls, transfer, ownBuffer } from './worker-rpc.ts'

const { weights } = workerData as { weights: HeadWeights }

void serveCalls<HeadWorkerApi>(parentPort!, async () => {
  const head = cpuHead(weights)
  // The weights now live in the kernels' memory; drop the copy sent here.
  weights.lmHead = { ...weights.lmHead, bytes: new Uint8Array(0) }
  // Calls run one at a time, in order (the kernel is synchronous); the main thread already
  // gathers concurrent rows into one.
  return {
    logits: ({ x, rows }) => {
      const logits = ownBuffer(head.logits(x, rows))
      return transfer(logits, [logits.buffer as ArrayBuffer])
    }
  }
})
