import { Worker } from 'node:worker_threads'
import type { SpanRunner, SpanSession } from './runner.ts'
import type { SpanWorkerInit, SpanWorkerRequest, SpanWorkerReply } from './span-worker.ts'
import { SpanError } from './span.ts'

type Pending = { resolve: (r: any) => void, reject: (e: Error) => void }
type Request = SpanWorkerRequest extends infer R ? R extends { id: number } ? Omit<R, 'id'> : never : never

/** Errors keep their name across the thread boundary so callers can tell bad input from a crash. */
function revive (name: string, message: string): Error {
  const err = name === 'SpanError' ? new SpanError(message) : new Error(message)
  err.name = name
  return err
}

/**
 * A span served by a worker thread: its own backend and heap (wasm allows < 4 GiB per
 * instance, so a 1B-parameter float32 model needs two), and a main thread left free for I/O.
 */
export class WorkerSpanRunner implements SpanRunner {
  readonly start: number
  readonly end: number
  private readonly worker: Worker
  private readonly pending = new Map<number, Pending>()
  private nextId = 1
  private nextSession = 1
  private failure?: Error

  private constructor (init: SpanWorkerInit, worker: Worker) {
    this.start = init.start
    this.end = init.end
    this.worker = worker
    worker.on('message', (m: SpanWorkerReply) => {
      if (!('id' in m)) return
      const p = this.pending.get(m.id)
      if (p == null) return
      this.pending.delete(m.id)
      if (m.ok) p.resolve(m)
      else p.reject(revive(m.name, m.message))
    })
    const fail = (err: Error): void => {
      this.failure = err
      for (const p of this.pending.values()) p.reject(err)
      this.pending.clear()
    }
    worker.on('error', fail)
    worker.on('exit', (code) => fail(new Error(`span worker [${this.start}, ${this.end}) exited with code ${code}`)))
  }

  /** `onBlockLoaded`: told as each block is in (progress). */
  static async load (init: SpanWorkerInit, onBlockLoaded?: (block: number) => void): Promise<WorkerSpanRunner> {
    const worker = new Worker(new URL('./span-worker.ts', import.meta.url), { workerData: init })
    let loading: ((m: SpanWorkerReply) => void) | undefined
    const ready = await new Promise<SpanWorkerReply>((resolve, reject) => {
      loading = (m) => { if ('loaded' in m) onBlockLoaded?.(m.loaded); else resolve(m) }
      worker.on('message', loading)
      worker.once('error', reject)
      worker.once('exit', (code) => reject(new Error(`span worker exited with code ${code} while loading`)))
    })
    worker.off('message', loading!)
    if ('ready' in ready && !ready.ready) {
      await worker.terminate()
      throw revive(ready.name, ready.message)
    }
    return new WorkerSpanRunner(init, worker)
  }

  private call (req: Request, transfer: ArrayBuffer[] = []): Promise<any> {
    if (this.failure != null) return Promise.reject(this.failure)
    const id = this.nextId++
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject })
      this.worker.postMessage({ ...req, id }, transfer)
    })
  }

  async open (maxLength: number, start?: number, end?: number): Promise<SpanSession> {
    const session = this.nextSession++
    await this.call({ op: 'open', session, maxLength, start, end })
    let length = 0
    let bytes = 0
    return {
      get length () { return length },
      get bytes () { return bytes },
      forward: async (hidden, tokens, positions) => {
        // Copy: the caller keeps its array; the copy's buffer moves to the worker.
        const copy = hidden.slice()
        const r = await this.call({ op: 'forward', session, hidden: copy, tokens, positions: positions != null ? Array.from(positions) : undefined }, [copy.buffer])
        length = r.length
        bytes = r.bytes
        return r.hidden
      },
      truncate: async (n) => {
        const r = await this.call({ op: 'truncate', session, length: n })
        length = r.length
        bytes = r.bytes
      },
      close: async () => { await this.call({ op: 'close', session }) }
    }
  }

  async dispose (): Promise<void> {
    await this.worker.terminate()
  }
}
