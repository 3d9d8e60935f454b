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
    const work = req.op === 'forward' ? enqueueStep(span, req) : handle(span, req)
    void work.then(
      (reply) => {
        const transfer = reply.hidden != null ? [reply.hidden.buffer as ArrayBuffer] : []
        port.postMessage(reply, transfer)
      },
      (err: any) => port.postMessage({ id: req.id, ok: false, name: err.name ?? 'Error', message: err.message } satisfies SpanWorkerReply))
  })
  port.postMessage({ ready: true } satisfies SpanWorkerReply)
}

type Reply = { id: number, ok: true, hidden?: Float32Array, length?: number, bytes?: number }
type ForwardRequest = Extract<SpanWorkerRequest, { op: 'forward' }>
interface QueuedStep { req: ForwardRequest, resolve: (r: Reply) => void, reject: (e: Error) => void }

/** Most rows one batched call takes (a prefill of many tokens runs alone when it exceeds it). */
const MAX_BATCH_ROWS = 256
const queue: QueuedStep[] = []
let draining = false

/**
 * Steps of different sessions that arrive while the span is busy run together as one batched
 * call when the span is free again: no waiting is added, and concurrent decoding reads the
 * weights once per batch instead of once per session.
 */
function enqueueStep (span: Span, req: ForwardRequest): Promise<Reply> {
  return new Promise((resolve, reject) => {
    queue.push({ req, resolve, reject })
    if (!draining) { draining = true; setImmediate(() => { void drain(span) }) }
  })
}

async function drain (span: Span): Promise<void> {
  while (queue.length > 0) {
    const batch: QueuedStep[] = []
    const sessions = new Set<number>()
    let rows = 0
    // FIFO; a session's second step waits for the next batch, a cache on other blocks too
    for (let i = 0; i < queue.length;) {
      const q = queue[i]
      const cache = caches.get(q.req.session)
      const first = batch.length > 0 ? caches.get(batch[0].req.session) : undefined
      const fits = batch.length === 0 || (rows + q.req.tokens <= MAX_BATCH_ROWS && !sessions.has(q.req.session) &&
        cache != null && first != null && cache.firstBlock === first.firstBlock && cache.layers.length === first.layers.length)
      if (fits) { batch.push(q); sessions.add(q.req.session); rows += q.req.tokens; queue.splice(i, 1) } else i++
    }
    await runBatch(span, batch)
    // let newly arrived messages join the next batch
    await new Promise(resolve => setImmediate(resolve))
  }
  draining = false
}

/**
 * Queued decode steps of several sessions run as one call: the weights are read once for all
 * rows. Measured on wasm (small, 4 blocks): 4 sessions 1.9×, 8–16 sessions 1.7× the throughput
 * of separate calls, results bitwise equal.
 */
async function runBatch (span: Span, batch: QueuedStep[]): Promise<void> {
  if (batch.length > 1) {
    try {
      const outs = await span.forwardBatch(batch.map(({ req }) => ({ hidden: req.hidden, tokens: req.tokens, cache: cacheOf(req.session), positions: req.positions })))
      batch.forEach(({ req, resolve }, i) => { const c = cacheOf(req.session); resolve({ id: req.id, ok: true, hidden: outs[i], length: c.length, bytes: c.bytes() }) })
      return
    } catch {
      // one bad step must not fail the others: run them one by one, each with its own answer
    }
  }
  for (const q of batch) await handle(span, q.req).then(q.resolve, q.reject)
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
