// Tokenizing costs about a millisecond per KiB of text (a long context's prompt: seconds; some
// crafted text grows faster than linearly): on the event loop it would stall every other request.
// Long texts are encoded in worker threads that build the same tokenizer from its tokenizer.json,
// one call per worker at a time, behind a bounded queue and within a time budget; short texts stay
// inline, where encoding them costs less than the hop. A worker over budget or dead is replaced.
import { availableParallelism } from 'node:os'
import { Worker } from 'node:worker_threads'
import { PlexusError } from './errors.ts'
import type { TextTokenizer, TokenizerSource } from './tokenizer.ts'
import { WorkerRpc } from './worker-rpc.ts'

export type TokenizerErrorCode = 'tokenizer-busy' | 'tokenizer-timeout' | 'tokenizer-failed'

// busy: retry later; timeout: this text costs more than one call may take; failed: ours
const HTTP_STATUS: Record<TokenizerErrorCode, number> = { 'tokenizer-busy': 503, 'tokenizer-timeout': 400, 'tokenizer-failed': 500 }

/** Text that was not tokenized: the queue is full, the call ran past its budget, or the worker failed. */
export class TokenizerError extends PlexusError {
  declare readonly code: TokenizerErrorCode
  constructor (code: TokenizerErrorCode, message: string, opts: { cause?: unknown } = {}) {
    super(code, message, { httpStatus: HTTP_STATUS[code], cause: opts.cause })
    this.name = 'TokenizerError'
  }
}

/** What the tokenizer worker (tokenizer-worker.ts) answers. */
export interface TokenizerWorkerApi {
  /** Builds tokenizer `key` from its source; forgets `drop` first. */
  load (req: { key: number, source: TokenizerSource, drop?: number }): void
  encode (req: { key: number, text: string, addSpecialTokens: boolean }): Uint32Array
}

export interface TokenizerPoolOptions {
  /** Worker threads. Default: 1, or 2 with 4 cores or more. */
  workers?: number
  /** Calls waiting or running at once; more are refused with `tokenizer-busy`. Default 64. */
  maxQueued?: number
  /** UTF-8 bytes of text waiting or running at once; more are refused with `tokenizer-busy` (one call alone is always taken). Default 16 MiB. */
  maxQueuedBytes?: number
  /** Budget of one call once a worker starts it; past it the worker is replaced and the call fails with `tokenizer-timeout`. Default 10 s. */
  timeoutMs?: number
  /** Texts shorter than this (UTF-16 code units) are encoded on the calling thread. Default INLINE_CHARS. */
  inlineChars?: number
  /** Told of each worker started (a replacement too). */
  onSpawn?: (worker: Worker) => void
}

export interface EncodeOptions { addSpecialTokens?: boolean }
export interface EncodeLimits {
  /** Aborting drops a call still queued; one already running is answered with the reason and its result dropped. */
  signal?: AbortSignal
  /** This call's budget instead of the pool's. */
  timeoutMs?: number
}

/**
 * Below this the text is encoded inline: 2 Ki characters take 1.5–2 ms here. The hop itself costs
 * only 0.1–0.5 ms, but a call to a worker waits behind the long texts already queued there.
 */
export const INLINE_CHARS = 2048
export const DEFAULT_TIMEOUT_MS = 10_000
export const DEFAULT_MAX_QUEUED = 64
export const DEFAULT_MAX_QUEUED_BYTES = 16 << 20
// loading a large vocabulary takes a while, and happens once per worker and tokenizer
const LOAD_TIMEOUT_MS = 60_000
// tokenizers kept built in one worker (a gateway serving several models)
const MAX_LOADED = 4

interface Job {
  tok: TextTokenizer
  text: string
  bytes: number
  addSpecialTokens: boolean
  timeoutMs: number
  /** Answers the caller once (an abort may come first). */
  settle: (err: unknown, ids?: number[]) => void
}

interface Slot { rpc?: WorkerRpc<TokenizerWorkerApi>, busy: boolean, loaded: number[] }

const keys = new WeakMap<TextTokenizer, number>()
let nextKey = 1
const keyOf = (tok: TextTokenizer): number => {
  let k = keys.get(tok)
  if (k == null) { k = nextKey++; keys.set(tok, k) }
  return k
}

export class TokenizerPool {
  readonly maxQueued: number
  readonly maxQueuedBytes: number
  readonly timeoutMs: number
  readonly inlineChars: number
  readonly #onSpawn?: (worker: Worker) => void
  readonly #slots: Slot[]
  readonly #queue: Job[] = []
  #pending = 0
  #pendingBytes = 0
  #closed = false

  constructor (opts: TokenizerPoolOptions = {}) {
    const workers = opts.workers ?? (availableParallelism() >= 4 ? 2 : 1)
    if (!Number.isInteger(workers) || workers < 1) throw new RangeError(`workers must be a positive integer (got ${workers})`)
    this.maxQueued = opts.maxQueued ?? DEFAULT_MAX_QUEUED
    this.maxQueuedBytes = opts.maxQueuedBytes ?? DEFAULT_MAX_QUEUED_BYTES
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS
    this.inlineChars = opts.inlineChars ?? INLINE_CHARS
    this.#onSpawn = opts.onSpawn
    this.#slots = Array.from({ length: workers }, () => ({ busy: false, loaded: [] }))
  }

  /** Calls and UTF-8 bytes waiting or running in the workers now. */
  get load (): { calls: number, bytes: number } { return { calls: this.#pending, bytes: this.#pendingBytes } }

  /**
   * `tok.encode(text, opts)`, the same ids, off the calling thread when the text is long. Throws
   * TokenizerError: `tokenizer-busy` when the queue is full, `tokenizer-timeout` past the budget,
   * `tokenizer-failed` when the worker fails; or the signal's reason once aborted.
   */
  async encode (tok: TextTokenizer, text: string, opts: EncodeOptions = {}, limits: EncodeLimits = {}): Promise<number[]> {
    const addSpecialTokens = opts.addSpecialTokens ?? true
    // a tokenizer that cannot be rebuilt elsewhere (no tokenizer.json) encodes here
    if (text.length < this.inlineChars || tok.source == null) return tok.encode(text, { addSpecialTokens })
    const { signal } = limits
    signal?.throwIfAborted()
    if (this.#closed) throw new TokenizerError('tokenizer-failed', 'the tokenizer pool is closed')
    const bytes = Buffer.byteLength(text)
    if (this.#pending > 0 && (this.#pending >= this.maxQueued || this.#pendingBytes + bytes > this.maxQueuedBytes)) {
      throw new TokenizerError('tokenizer-busy', `the tokenizer is busy: ${this.#pending} prompts (${this.#pendingBytes} bytes) are already being tokenized, at most ${this.maxQueued} (${this.maxQueuedBytes} bytes); retry later`)
    }
    return await new Promise<number[]>((resolve, reject) => {
      let settled = false
      const onAbort = (): void => {
        const at = this.#queue.indexOf(job)
        if (at >= 0) { this.#queue.splice(at, 1); this.#release(job) }
        job.settle(signal!.reason)
      }
      const job: Job = {
        tok,
        text,
        bytes,
        addSpecialTokens,
        timeoutMs: limits.timeoutMs ?? this.timeoutMs,
        settle: (err, ids) => {
          if (settled) return
          settled = true
          signal?.removeEventListener('abort', onAbort)
          if (ids != null) resolve(ids)
          else reject(err)
        }
      }
      signal?.addEventListener('abort', onAbort, { once: true })
      this.#pending++
      this.#pendingBytes += bytes
      this.#queue.push(job)
      this.#pump()
    })
  }

  /** Stops the workers; calls still queued or running fail with `tokenizer-failed`. */
  async close (): Promise<void> {
    this.#closed = true
    const closed = new TokenizerError('tokenizer-failed', 'the tokenizer pool was closed')
    for (const job of this.#queue.splice(0)) { this.#release(job); job.settle(closed) }
    await Promise.all(this.#slots.map(async s => {
      const rpc = s.rpc
      s.rpc = undefined
      await rpc?.terminate()
    }))
  }

  #release (job: Job): void {
    this.#pending--
    this.#pendingBytes -= job.bytes
  }

  #pump (): void {
    for (const slot of this.#slots) {
      if (slot.busy) continue
      const job = this.#queue.shift()
      if (job == null) return
      slot.busy = true
      void this.#run(slot, job).finally(() => {
        slot.busy = false
        this.#release(job)
        this.#pump()
      })
    }
  }

  #spawn (slot: Slot): WorkerRpc<TokenizerWorkerApi> {
    const w = new Worker(new URL('./tokenizer-worker.ts', import.meta.url))
    slot.loaded = []
    this.#onSpawn?.(w)
    // held only while a call is in flight: an idle worker keeps no process alive
    return new WorkerRpc<TokenizerWorkerApi>(w, {
      label: 'the tokenizer worker',
      errors: { TokenizerError: e => new TokenizerError(e.code as TokenizerErrorCode, e.message) },
      unrefWhenIdle: true
    })
  }

  /** Builds the job's tokenizer in this worker unless it already has it. */
  async #ensureLoaded (slot: Slot, rpc: WorkerRpc<TokenizerWorkerApi>, tok: TextTokenizer): Promise<number> {
    const key = keyOf(tok)
    const at = slot.loaded.indexOf(key)
    if (at >= 0) {
      slot.loaded.splice(at, 1)
      slot.loaded.push(key)
      return key
    }
    const drop = slot.loaded.length >= MAX_LOADED ? slot.loaded.shift() : undefined
    const source = tok.source!()
    await rpc.callWithin('load', { key, source, drop }, LOAD_TIMEOUT_MS,
      () => new TokenizerError('tokenizer-timeout', `the tokenizer worker did not load ${source.what} within ${LOAD_TIMEOUT_MS} ms`))
    slot.loaded.push(key)
    return key
  }

  async #run (slot: Slot, job: Job): Promise<void> {
    if (this.#closed) { job.settle(new TokenizerError('tokenizer-failed', 'the tokenizer pool was closed')); return }
    // a worker that died while idle is replaced here, before its next call
    if (slot.rpc?.failure != null) slot.rpc = undefined
    const rpc = slot.rpc ??= this.#spawn(slot)
    try {
      const key = await this.#ensureLoaded(slot, rpc, job.tok)
      const ids = await rpc.callWithin('encode', { key, text: job.text, addSpecialTokens: job.addSpecialTokens }, job.timeoutMs,
        () => new TokenizerError('tokenizer-timeout', `the prompt (${job.bytes} bytes) was not tokenized within ${job.timeoutMs} ms; send a shorter prompt`))
      job.settle(undefined, Array.from(ids))
    } catch (err) {
      const e = err instanceof TokenizerError ? err : new TokenizerError('tokenizer-failed', `the tokenizer worker failed: ${(err as Error).message}`, { cause: err })
      // a worker past its budget (terminated) or dead is dropped: the next call starts a fresh one
      if (rpc.failure != null && slot.rpc === rpc) slot.rpc = undefined
      job.settle(e)
    }
  }
}

let shared: TokenizerPool | undefined

/** TokenizerPool.encode on a pool of this process, with its defaults. */
export async function encodeOffThread (tok: TextTokenizer, text: string, opts: EncodeOptions = {}, limits: EncodeLimits = {}): Promise<number[]> {
  shared ??= new TokenizerPool()
  return await shared.encode(tok, text, opts, limits)
}
