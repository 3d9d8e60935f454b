// Worker thread entry: the LM head with its own TensorFlow.js backend (see workerHeadKernel).
import { parentPort, workerData } from 'node:worker_threads'
import { initBackend } from './backend.ts'
import { inThreadHeadKernel } from './head-kernel.ts'
import type { HeadKernel, HeadWeights, HeadWorkerRequest, HeadWorkerReply } from './head-kernel.ts'

const port = parentPort!
const { weights, backend } = workerData as { weights: HeadWeights, backend?: string }

async function main (): Promise<void> {
  let kernel: HeadKernel
  try {
    await initBackend(backend as any)
    kernel = inThreadHeadKernel(weights)
    // Pack the LM head for the backend now, not during the first token.
    await kernel.logits(new Float32Array(weights.hiddenSize), 1)
  } catch (err: any) {
    port.postMessage({ ready: false, message: err.message } satisfies HeadWorkerReply)
    return
  }
  // The weights now live in the backend; drop the copies sent here.
  weights.lmHead = new Float32Array(0)
  // One request at a time, in order: the main thread already gathers concurrent rows into one.
  let chain = Promise.resolve()
  port.on('message', (req: HeadWorkerRequest) => {
    chain = chain.then(async () => {
      try {
        const logits = await kernel.logits(req.x, req.rows)
        const own = logits.byteOffset === 0 && logits.byteLength === logits.buffer.byteLength ? logits : logits.slice()
        port.postMessage({ id: req.id, ok: true, logits: own } satisfies HeadWorkerReply, [own.buffer as ArrayBuffer])
      } catch (err: any) {
        port.postMessage({ id: req.id, ok: false, message: err.message } satisfies HeadWorkerReply)
      }
    })
  })
  port.postMessage({ ready: true } satisfies HeadWorkerReply)
}

void main()
