import { Worker } from 'node:worker_threads'
import type { SpanRunner, SpanSession } from './runner.ts'
import type { SpanWorkerInit, SpanWorkerApi } from './span-worker.ts'
import { SpanError } from './span.ts'
import { WorkerRpc } from './worker-rpc.ts'

/**
 * A span served by a worker thread: its own backend and heap (wasm allows < 4 GiB per
 * instance, so a 1B-parameter float32 model needs two), and a main thread left free for I/O.
 */
export class WorkerSpanRunner implements SpanRunner {
  readonly start: number
  readonly end: number
  private readonly rpc: WorkerRpc<SpanWorkerApi, number>
  private nextSession = 1

  private constructor (init: SpanWorkerInit, rpc: WorkerRpc<SpanWorkerApi, number>) {
    this.start = init.start
    this.end = init.end
    this.rpc = rpc
  }

  /** `onBlockLoaded`: told as each block is in (progress). */
  static async load (init: SpanWorkerInit, onBlockLoaded?: (block: number) => void): Promise<WorkerSpanRunner> {
    const worker = new Worker(new URL('./span-worker.ts', import.meta.url), { workerData: init })
    // a SpanError stays one across the thread boundary: callers tell bad input from a crash
    const rpc = await WorkerRpc.start<SpanWorkerApi, number>(worker, {
      label: `span worker [${init.start}, ${init.end})`,
      errors: { SpanError: e => new SpanError(e.message) },
      onEvent: onBlockLoaded
    })
    return new WorkerSpanRunner(init, rpc)
  }

  async open (maxLength: number, start?: number, end?: number): Promise<SpanSession> {
    const session = this.nextSession++
    await this.rpc.call('open', { session, maxLength, start, end })
    let length = 0
    let bytes = 0
    return {
      get length () { return length },
      get bytes () { return bytes },
      forward: async (hidden, tokens, positions) => {
        // Copy: the caller keeps its array; the copy's buffer moves to the worker.
        const copy = hidden.slice()
        const r = await this.rpc.call('forward', { session, hidden: copy, tokens, positions: positions != null ? Array.from(positions) : undefined }, [copy.buffer])
        length = r.length
        bytes = r.bytes
        return r.hidden
      },
      truncate: async (n) => {
        const r = await this.rpc.call('truncate', { session, length: n })
        length = r.length
        bytes = r.bytes
      },
      close: async () => { await this.rpc.call('close', { session }) }
    }
  }

  async dispose (): Promise<void> {
    await this.rpc.terminate()
  }
}
