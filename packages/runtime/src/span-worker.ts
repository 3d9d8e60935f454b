// Worker thread entry: one span with its own TensorFlow.js backend (and its own wasm heap, which
// is capped near 4 GiB per instance), driven by messages from WorkerSpanRunner.
import { parentPort, workerData } from 'node:worker_threads'
import { initBackend } from './backend.ts'
import { Checkpoint } from './checkpoint.ts'
import { Span } from './span.ts'
import type { KVCache } from './span.ts'

export interface SpanWorkerInit { dir: string, start: number, end: number, backend?: string, blockDigests?: string[] }
export type SpanWorkerRequest =
  | { id: number, op: 'open', session: number, maxLength: number, start?: number, end?: number }
  | { id: number, op: 'forward', session: number, hidden: Float32Array, tokens: number, positions?: number[] }
  | { id: number, op: 'truncate', session: number, length: number }
  | { id: number, op: 'close', session: number }
export type SpanWorkerReply =
  | { id: number, ok: true, hidden?: Float32Array, length?: number, bytes?: number }
  | { id: number, ok: false, name: string, message: string }
  | { ready: true } | { ready: false, name: string, message: string }

const port = parentPort!
const init = workerData as SpanWorkerInit
const caches = new Map<number, KVCache>()

async function main (): Promise<void> {
  let span: Span
  try {
    await initBackend(init.backend as any)
    const ckpt = await Checkpoint.open(init.dir)
    span = await Span.load(ckpt, init.start, init.end, { blockDigests: init.blockDigests })
    await ckpt.close()
  } catch (err: any) {
    port.postMessage({ ready: false, name: err.name, message: err.message } satisfies SpanWorkerReply)
    return
  }
  port.on('message', (req: SpanWorkerRequest) => {
    void handle(span, req).then(
      (reply) => {
        const transfer = reply.hidden != null ? [reply.hidden.buffer as ArrayBuffer] : []
        port.postMessage(reply, transfer)
      },
      (err: any) => port.postMessage({ id: req.id, ok: false, name: err.name ?? 'Error', message: err.message } satisfies SpanWorkerReply))
  })
  port.postMessage({ ready: true } satisfies SpanWorkerReply)
}

function cacheOf (session: number): KVCache {
  const c = caches.get(session)
  if (c == null) throw new Error(`unknown session ${session}`)
  return c
}

async function handle (span: Span, req: SpanWorkerRequest): Promise<{ id: number, ok: true, hidden?: Float32Array, length?: number, bytes?: number }> {
  switch (req.op) {
    case 'open':
      caches.set(req.session, span.newCache(req.maxLength, req.start, req.end))
      return { id: req.id, ok: true }
    case 'forward': {
      const cache = cacheOf(req.session)
      let hidden = await span.forward(req.hidden, req.tokens, cache, req.positions)
      // Transfer needs a buffer of its own, not a view into a larger one.
      if (hidden.byteOffset !== 0 || hidden.byteLength !== hidden.buffer.byteLength) hidden = hidden.slice()
      return { id: req.id, ok: true, hidden, length: cache.length, bytes: cache.bytes() }
    }
    case 'truncate': {
      const cache = cacheOf(req.session)
      cache.truncate(req.length)
      return { id: req.id, ok: true, length: cache.length, bytes: cache.bytes() }
    }
    case 'close':
      caches.get(req.session)?.dispose()
      caches.delete(req.session)
      return { id: req.id, ok: true }
  }
}

void main()
