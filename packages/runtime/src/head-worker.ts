// Worker thread entry: the LM head with its own TensorFlow.js backend (see workerHeadKernel).
import { parentPort, workerData } from 'node:worker_threads'
import { initBackend } from './backend.ts'
import { inThreadHeadKernel } from './head-kernel.ts'
import type { HeadWeights, HeadWorkerApi } from './head-kernel.ts'
import { serveCalls, transfer, ownBuffer } from './worker-rpc.ts'

const { weights, backend } = workerData as { weights: HeadWeights, backend?: string }

void serveCalls<HeadWorkerApi>(parentPort!, async () => {
  await initBackend(backend as any)
  const kernel = inThreadHeadKernel(weights)
  // Pack the LM head for the backend now, not during the first token.
  await kernel.logits(new Float32Array(weights.hiddenSize), 1)
  // The weights now live in the backend; drop the copies sent here.
  weights.lmHead = new Float32Array(0)
  // One call at a time, in order: the main thread already gathers concurrent rows into one.
  let chain: Promise<unknown> = Promise.resolve()
  return {
    logits: async ({ x, rows }) => {
      const step = chain.then(async () => await kernel.logits(x, rows))
      chain = step.catch(() => {})
      const logits = ownBuffer(await step)
      return transfer(logits, [logits.buffer as ArrayBuffer])
    }
  }
})
