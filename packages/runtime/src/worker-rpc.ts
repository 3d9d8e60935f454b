// Calls from one thread into a worker thread, and their answers: the span workers, the LM-head
// worker and the chat-template renderer all speak this. Each call has an id and a pending promise;
// errors cross with their name, message and code; buffers are transferred, not copied; and a
// worker that dies or is terminated fails every call still waiting on it.
import type { MessagePort, TransferListItem, Worker } from 'node:worker_threads'
import { PlexusError, postedError } from './errors.ts'
import type { PostedError } from './errors.ts'

/** A worker's methods: each takes one (structured-clonable) argument and answers one value. */
export type WorkerApi<A> = { [K in keyof A]: (params: any) => unknown }
type Params<F> = F extends (params: infer P) => unknown ? P : never
type Answer<F> = F extends (params: any) => infer R ? Awaited<R> : never

/** The worker's side of an API: a value may come wrapped in `transfer` to move its buffers. */
export type Handlers<A extends WorkerApi<A>> = {
  [K in keyof A]: (params: Params<A[K]>) => Answer<A[K]> | Transfer<Answer<A[K]>> | Promise<Answer<A[K]> | Transfer<Answer<A[K]>>>
}

/** A value whose buffers move to the other thread instead of being copied (the sender loses them). */
export class Transfer<T> {
  readonly value: T
  readonly list: TransferListItem[]
  constructor (value: T, list: TransferListItem[]) { this.value = value; this.list = list }
}

export function transfer<T> (value: T, list: TransferListItem[]): Transfer<T> {
  return new Transfer(value, list)
}

/** `x` if it is all of its buffer, else a copy that is: transferring a view would move (and detach) the whole buffer. */
export function ownBuffer (x: Float32Array): Float32Array {
  return x.byteOffset === 0 && x.byteLength === x.buffer.byteLength ? x : x.slice()
}

type Call = { id: number, method: string, params: unknown }
type Message<E> =
  | { kind: 'ready' }
  /** Its setup threw: no call will be answered. */
  | { kind: 'failed', error: PostedError }
  /** Something to tell before it is ready (a load's progress). */
  | { kind: 'event', event: E }
  | { kind: 'answer', id: number, value: unknown }
  | { kind: 'error', id: number, error: PostedError }

/** The error as posted: a PlexusError again (its code and status kept), else an Error; either with its name. */
export function revivedError (posted: PostedError): Error {
  const { name, message, code, httpStatus } = posted
  const err = code != null ? new PlexusError(code, message, { httpStatus }) : new Error(message)
  err.name = name
  return err
}

export interface WorkerRpcOptions<E> {
  /** Names the worker in its errors: "span worker [0, 4)". */
  label: string
  /** Rebuilds the errors of these names as their own classes (others: `revivedError`). */
  errors?: Record<string, (w: PostedError) => Error>
  /** Told what the worker reports while it sets up. */
  onEvent?: (event: E) => void
  /** Keep the process alive only while calls are pending (an idle LM head must not hold a finished CLI). */
  unrefWhenIdle?: boolean
}

interface Pending { resolve: (value: any) => void, reject: (err: Error) => void }

/** The calling side: one per worker. */
export class WorkerRpc<A extends WorkerApi<A>, E = never> {
  /** Resolves once the worker is set up; rejects with its setup's error or its death. */
  readonly ready: Promise<void>
  private readonly worker: Worker
  private readonly opts: WorkerRpcOptions<E>
  private readonly pending = new Map<number, Pending>()
  private nextId = 1
  private started = false
  private failed?: Error
  private notReady!: (err: Error) => void

  constructor (worker: Worker, opts: WorkerRpcOptions<E>) {
    this.worker = worker
    this.opts = opts
    this.ready = new Promise<void>((resolve, reject) => {
      this.notReady = reject
      worker.on('message', (m: Message<E>) => {
        switch (m.kind) {
          case 'ready': this.started = true; resolve(); this.idle(); break
          case 'failed': this.fail(this.revive(m.error)); break
          case 'event': opts.onEvent?.(m.event); break
          case 'answer': this.settle(m.id)?.resolve(m.value); break
          case 'error': this.settle(m.id)?.reject(this.revive(m.error)); break
        }
      })
    })
    // nobody may be waiting for it (calls queue up meanwhile): a setup failure then fails the calls
    this.ready.catch(() => {})
    worker.on('error', (err) => { this.fail(err) })
    worker.on('exit', (code) => { this.fail(new Error(`${opts.label} exited with code ${code}${this.started ? '' : ' while loading'}`)) })
  }

  /** A worker's RPC once it is set up; one that fails to set up is terminated. */
  static async start<A extends WorkerApi<A>, E = never> (worker: Worker, opts: WorkerRpcOptions<E>): Promise<WorkerRpc<A, E>> {
    const rpc = new WorkerRpc<A, E>(worker, opts)
    try {
      await rpc.ready
    } catch (err) {
      await worker.terminate()
      throw err
    }
    return rpc
  }

  /** Why the worker can take no more calls (it died, failed to set up or was terminated). */
  get failure (): Error | undefined { return this.failed }

  call<K extends keyof A & string> (method: K, params: Params<A[K]>, transferList: TransferListItem[] = []): Promise<Answer<A[K]>> {
    if (this.failed != null) return Promise.reject(this.failed)
    const id = this.nextId++
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject })
      if (this.opts.unrefWhenIdle === true) this.worker.ref()
      try {
        this.worker.postMessage({ id, method, params } satisfies Call, transferList)
      } catch (err) {
        // not clonable, say: nothing was sent
        this.settle(id)
        reject(err)
      }
    })
  }

  /**
   * `call` within a budget: past `ms` the worker (perhaps stuck in the call) is terminated and the
   * call fails with `overBudget()`, as does every later one (`failure`): the caller starts another.
   */
  async callWithin<K extends keyof A & string> (method: K, params: Params<A[K]>, ms: number, overBudget: () => Error): Promise<Answer<A[K]>> {
    let timer: ReturnType<typeof setTimeout> | undefined
    const late = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => {
        const err = overBudget()
        this.fail(err)
        void this.worker.terminate()
        reject(err)
      }, ms)
    })
    try {
      return await Promise.race([this.call(method, params), late])
    } finally {
      clearTimeout(timer)
    }
  }

  /** Stops the worker; calls still waiting are rejected. */
  async terminate (): Promise<void> {
    this.fail(new Error(`${this.opts.label} was terminated`))
    await this.worker.terminate()
  }

  private settle (id: number): Pending | undefined {
    const p = this.pending.get(id)
    this.pending.delete(id)
    this.idle()
    return p
  }

  private idle (): void {
    if (this.opts.unrefWhenIdle === true && this.started && this.pending.size === 0) this.worker.unref()
  }

  /** The first failure wins: a worker terminated for a reason is not then said to have exited. */
  private fail (err: Error): void {
    this.failed ??= err
    this.notReady(this.failed)
    for (const p of this.pending.values()) p.reject(this.failed)
    this.pending.clear()
  }

  private revive (w: PostedError): Error {
    const own = this.opts.errors != null && Object.hasOwn(this.opts.errors, w.name) ? this.opts.errors[w.name] : undefined
    return own?.(w) ?? revivedError(w)
  }
}

/**
 * The worker's side, on its `parentPort`: `setup` runs first (loading weights, say; `report` tells
 * the caller's `onEvent`), then its handlers answer calls, several at once if they await. A setup
 * that throws is reported to the caller, whose `ready` rejects with that error.
 */
export async function serveCalls<A extends WorkerApi<A>, E = never> (port: MessagePort, setup: (report: (event: E) => void) => Handlers<A> | Promise<Handlers<A>>): Promise<void> {
  const post = (m: Message<E>, list?: TransferListItem[]): void => { port.postMessage(m, list) }
  let handlers: Handlers<A>
  try {
    handlers = await setup(event => { post({ kind: 'event', event }) })
  } catch (err) {
    post({ kind: 'failed', error: postedError(err) })
    return
  }
  port.on('message', (c: Call) => {
    const run = async (): Promise<void> => {
      const handler = Object.hasOwn(handlers, c.method) ? (handlers as Record<string, (params: unknown) => unknown>)[c.method] : undefined
      if (handler == null) throw new Error(`no method ${JSON.stringify(c.method)}`)
      const v = await handler(c.params)
      if (v instanceof Transfer) post({ kind: 'answer', id: c.id, value: v.value }, v.list)
      else post({ kind: 'answer', id: c.id, value: v })
    }
    // a handler's error, or an answer that cannot be cloned
    run().catch((err) => { post({ kind: 'error', id: c.id, error: postedError(err) }) })
  })
  post({ kind: 'ready' })
}
