import type { Stream } from '@libp2p/interface'
import { PlexusError, SpanError } from '@plexus/runtime'
import { MAX_ERROR_MESSAGE } from './protocols.ts'
import type { ChannelLimits } from './protocols.ts'
import type { ByteBudget } from './byte-budget.ts'

// One framed channel for every Plexus protocol: [varint length][payload] frames on a libp2p
// stream, with the same guards everywhere. The length is checked against the protocol's limit
// as soon as its prefix ends, before any of the body is buffered; a quiet stream is closed
// after the idle deadline; a write that cannot drain in time aborts the stream.

/** Longest varint prefix read before giving up (a prefix of 0xff bytes would never end). */
export const MAX_VARINT_BYTES = 8
/** Bytes a peer may send past the frame being read before they are charged to the node's budget too. */
const AHEAD_SLACK = 64 << 10

export type ChannelErrorCode = 'frame-too-large' | 'bad-prefix' | 'truncated' | 'ended' | 'idle-timeout' | 'write-timeout' | 'buffer-overflow' | 'busy'

/** The peer broke the framing, went quiet, or could not keep up (a peer's fault: 502 at a gateway). */
export class ChannelError extends PlexusError {
  declare readonly code: ChannelErrorCode
  constructor (code: ChannelErrorCode, message: string) {
    // busy: the node's buffered-bytes budget is spent, not the peer's fault
    super(code, message, { httpStatus: code === 'busy' ? 503 : 502 })
    this.name = 'ChannelError'
  }
}

/** The one error reply shape of every protocol: a code and a bounded message. */
export interface ErrorReply<C extends string = string> { code: C, message: string }

/**
 * What a handler answers for an error it caught: a refusal of the protocol's own kind (`isOwn`)
 * or a span's refusal (bad positions, lengths) keeps its code and message; a channel error gets
 * the protocol's code for it (`channelCode`); anything else is an internal error, still named.
 */
export function errorReply<C extends string> (err: any, isOwn: (e: unknown) => e is Error & { code: C }, channelCode: (e: ChannelError) => C | 'bad-request' = () => 'bad-request'): ErrorReply<C | 'bad-request' | 'internal' | 'busy'> {
  const reply: ErrorReply<C | 'bad-request' | 'internal' | 'busy'> = isOwn(err)
    ? { code: err.code, message: err.message }
    : err instanceof ChannelError
      ? { code: err.code === 'busy' ? 'busy' : channelCode(err), message: err.message }
      : err instanceof SpanError
        ? { code: 'bad-request', message: err.message }
        : { code: 'internal', message: `internal error: ${err?.message ?? String(err)}` }
  return { code: reply.code, message: boundMessage(reply.message) }
}

/** The error reply of the JSON protocols (model files, info): `{"error": message, "code": code}`. */
export function jsonErrorFrame ({ code, message }: ErrorReply): Uint8Array {
  return new TextEncoder().encode(JSON.stringify({ error: message, code }))
}

export function boundMessage (message: string): string {
  return message.length > MAX_ERROR_MESSAGE ? message.slice(0, MAX_ERROR_MESSAGE - 1) + '…' : message
}

/** Bytes of the varint prefix of a frame of `n` bytes. */
export function varintBytes (n: number): number {
  let k = 1
  while (n >= 128) { n = Math.floor(n / 128); k++ }
  return k
}

export function encodeVarint (n: number): Uint8Array {
  const out = new Uint8Array(varintBytes(n))
  for (let i = 0; n >= 0x80; i++) { out[i] = (n % 0x80) | 0x80; n = Math.floor(n / 0x80) }
  out[out.length - 1] = n
  return out
}

export interface ChannelInit extends ChannelLimits {
  /** Unread bytes held before the stream is aborted (a peer sending ahead). Default: one frame and 64 KiB. */
  maxBufferBytes?: number
  /**
   * Looks at a frame's first bytes before its body is read (e.g. a step's token count against
   * the model's limit): returns how many leading bytes it needs to decide (0: done), or throws
   * to refuse the frame. Never asked for more than the frame holds.
   */
  inspect?: (declared: number, head: Uint8Array) => number
  /**
   * Serving side: the node's buffered-bytes budget and the peer its frames are charged to. A
   * frame's declared length is reserved at its prefix (refused `busy` when it cannot be) and
   * given back at the next read, once the frame was handled, or when the channel lets go.
   */
  budget?: { of: ByteBudget, peer: string }
}

type Limit = number | (() => number)

/** A framed stream: `read()` and `write()` one frame at a time, both under deadlines. */
export class Channel {
  readonly stream: Stream
  private readonly init: Omit<ChannelInit, 'maxFrameBytes'>
  private readonly limit: () => number
  private chunks: Uint8Array[] = []
  private buffered = 0
  private ended = false
  private failure?: Error
  private wake?: () => void
  private readonly idle?: ReturnType<typeof setTimeout>
  private reading?: (err: Error) => void
  private detached = false
  /** Gives back the budget the last frame reserved. */
  private held?: () => void
  /** Body bytes of the frame being read (reserved), and the charge for bytes sent past it. */
  private expecting = 0
  private ahead?: { bytes: number, release: () => void }

  /** `maxFrameBytes` may be a function: a handler serving several models asks its set each time. */
  constructor (stream: Stream, init: Omit<ChannelInit, 'maxFrameBytes'> & { maxFrameBytes: Limit }) {
    this.stream = stream
    const limit = init.maxFrameBytes
    this.limit = typeof limit === 'function' ? limit : () => limit
    this.init = init
    const idleMs = init.idleMs
    // one timer, re-armed per read (a fresh one per read piles up); it fails only a read in progress
    if (idleMs != null) {
      this.idle = setTimeout(() => { this.reading?.(new ChannelError('idle-timeout', `no message for ${idleMs / 1000} s: closing the stream`)) }, idleMs)
      this.idle.unref()
    }
    stream.addEventListener('message', this.onMessage)
    stream.addEventListener('remoteCloseWrite', this.onEnd)
    stream.addEventListener('close', this.onClose)
    if (stream.remoteWriteStatus !== 'writable') this.ended = true
  }

  private readonly onMessage = (evt: any): void => {
    if (this.failure != null) return
    const d = evt.data
    const bytes: Uint8Array = d instanceof Uint8Array ? d : d.subarray()
    this.chunks.push(bytes)
    this.buffered += bytes.byteLength
    const max = this.init.maxBufferBytes ?? this.limit() + (64 << 10)
    if (this.buffered > max) {
      this.failure = new ChannelError('buffer-overflow', `peer sent ${this.buffered} bytes ahead of the reader (limit ${max})`)
      this.chunks = []
      this.buffered = 0
      queueMicrotask(() => { this.stream.abort(this.failure!) })
    } else this.chargeAhead()
    this.wake?.()
  }

  /** A frame queued behind one being handled holds memory too: what is past the slack is charged. */
  private chargeAhead (): void {
    const budget = this.init.budget
    const over = this.buffered - this.expecting - AHEAD_SLACK
    if (budget == null || over <= (this.ahead?.bytes ?? 0)) return
    this.dropAhead()
    const reserved = budget.of.reserve(budget.peer, over)
    if (typeof reserved === 'function') { this.ahead = { bytes: over, release: reserved }; return }
    this.failure = new ChannelError('busy', reserved.message)
    this.chunks = []
    this.buffered = 0
    queueMicrotask(() => { this.stream.abort(this.failure!) })
  }

  private dropAhead (): void {
    this.ahead?.release()
    this.ahead = undefined
  }

  private readonly onEnd = (): void => { this.ended = true; this.wake?.() }
  private readonly onClose = (evt: any): void => {
    this.ended = true
    if (evt.error != null) this.failure ??= evt.error
    this.wake?.()
  }

  /** Keeps the stream from idling out while its work arrives elsewhere (a forwarded route). */
  touch (): void { this.idle?.refresh() }

  /**
   * The next frame, or null when the peer closed its side cleanly between frames. Throws a
   * ChannelError on a framing violation or the idle deadline, the stream's error on a reset.
   */
  async read (signal?: AbortSignal): Promise<Uint8Array | null> {
    if (this.detached) throw new Error('the channel no longer reads its stream')
    // the previous frame has been handled by now
    this.release()
    this.idle?.refresh()
    const stop = new Promise<never>((_resolve, reject) => { this.reading = reject })
    stop.catch(() => {})
    const onAbort = (): void => { this.reading?.(signal!.reason) }
    signal?.addEventListener('abort', onAbort, { once: true })
    try {
      signal?.throwIfAborted()
      return await this.readFrame(stop)
    } finally {
      this.reading = undefined
      signal?.removeEventListener('abort', onAbort)
    }
  }

  private async readFrame (stop: Promise<never>): Promise<Uint8Array | null> {
    const max = this.limit()
    let declared = 0
    let scale = 1
    let n = 0
    while (true) {
      if (!await this.fill(n + 1, stop)) {
        if (n === 0) return null
        throw new ChannelError('truncated', 'truncated frame: the stream ended inside a length prefix')
      }
      const b = this.byteAt(n++)
      declared += (b & 0x7f) * scale
      if (b < 0x80) break
      scale *= 128
      if (n >= MAX_VARINT_BYTES) throw new ChannelError('bad-prefix', `frame length prefix runs past ${MAX_VARINT_BYTES} bytes (frames are at most ${max} bytes)`)
    }
    // refused here, before a byte of the body is waited for or kept
    if (declared > max) throw new ChannelError('frame-too-large', `frame of ${declared} bytes is too large (limit ${max} bytes)`)
    if (n > varintBytes(max)) throw new ChannelError('bad-prefix', `frame length prefix of ${n} bytes is too long (frames are at most ${max} bytes: ${varintBytes(max)} bytes of prefix)`)
    const budget = this.init.budget
    if (budget != null && declared > 0) {
      // the frame's own reservation covers what was charged as sent ahead
      this.dropAhead()
      const reserved = budget.of.reserve(budget.peer, declared)
      if (typeof reserved !== 'function') throw new ChannelError('busy', reserved.message)
      this.held = reserved
      this.expecting = declared
      this.chargeAhead()
    }
    this.consume(n)
    const inspect = this.init.inspect
    if (inspect != null) {
      const have = (): number => Math.min(this.buffered, declared)
      let want: number
      // only ever the few bytes it asks for (a header): the body is still unread
      while ((want = Math.min(inspect(declared, this.peek(have())), declared)) > have()) {
        if (!await this.fill(want, stop)) break
      }
    }
    if (!await this.fill(declared, stop)) {
      throw new ChannelError('truncated', `truncated frame: the stream ended inside a frame of ${declared} bytes (after ${this.buffered}/${declared} bytes)`)
    }
    const frame = this.take(declared)
    this.expecting = 0
    this.chargeAhead()
    return frame
  }

  /** Waits until `n` bytes are buffered (true) or the stream ended short of them (false). */
  private async fill (n: number, stop: Promise<never>): Promise<boolean> {
    while (this.buffered < n) {
      if (this.failure != null) throw this.failure
      if (this.ended) return false
      await Promise.race([new Promise<void>(resolve => { this.wake = resolve }), stop])
      this.wake = undefined
    }
    return true
  }

  private byteAt (i: number): number {
    for (const c of this.chunks) {
      if (i < c.byteLength) return c[i]
      i -= c.byteLength
    }
    throw new RangeError('read past the buffer')
  }

  private peek (n: number): Uint8Array {
    if (this.chunks.length > 0 && this.chunks[0].byteLength >= n) return this.chunks[0].subarray(0, n)
    const out = new Uint8Array(n)
    let at = 0
    for (const c of this.chunks) {
      if (at >= n) break
      const part = c.subarray(0, n - at)
      out.set(part, at)
      at += part.byteLength
    }
    return out
  }

  private take (n: number): Uint8Array {
    const out = this.peek(n)
    this.consume(n)
    return out
  }

  private consume (n: number): void {
    this.buffered -= n
    while (n > 0) {
      const c = this.chunks[0]
      if (c.byteLength <= n) { this.chunks.shift(); n -= c.byteLength } else { this.chunks[0] = c.subarray(n); n = 0 }
    }
  }

  /** Sends one frame (its parts concatenated); waits for the stream to drain, at most `writeMs`. */
  async write (payload: Uint8Array | Uint8Array[], signal?: AbortSignal): Promise<void> {
    const parts = Array.isArray(payload) ? payload : [payload]
    const length = parts.reduce((s, p) => s + p.byteLength, 0)
    for (const part of [encodeVarint(length), ...parts]) {
      if (part.byteLength === 0) continue
      if (!this.stream.send(part)) await this.drained(signal)
    }
  }

  /** Writes a frame and reads the answer; the peer ending its side instead is an error. */
  async request (payload: Uint8Array | Uint8Array[], signal?: AbortSignal): Promise<Uint8Array> {
    await this.write(payload, signal)
    const answer = await this.read(signal)
    if (answer == null) throw new ChannelError('ended', 'the peer closed the stream without answering')
    return answer
  }

  /** Several frames in one go (a header and its data). */
  async writeV (frames: Uint8Array[], signal?: AbortSignal): Promise<void> {
    for (const f of frames) await this.write(f, signal)
  }

  private async drained (signal?: AbortSignal): Promise<void> {
    const stream = this.stream
    let cleanup = (): void => {}
    try {
      await new Promise<void>((resolve, reject) => {
        const onDrain = (): void => { resolve() }
        const onClose = (evt: any): void => { reject(evt.error ?? new Error('the stream closed while a frame was being written')) }
        const onAbort = (): void => { reject(signal!.reason) }
        const writeMs = this.init.writeMs
        const timer = writeMs == null
          ? undefined
          : setTimeout(() => {
            const err = new ChannelError('write-timeout', `the peer read nothing for ${writeMs / 1000} s: aborting the stream`)
            stream.abort(err)
            reject(err)
          }, writeMs)
        stream.addEventListener('drain', onDrain, { once: true })
        stream.addEventListener('close', onClose, { once: true })
        signal?.addEventListener('abort', onAbort, { once: true })
        cleanup = () => {
          clearTimeout(timer)
          stream.removeEventListener('drain', onDrain)
          stream.removeEventListener('close', onClose)
          signal?.removeEventListener('abort', onAbort)
        }
      })
    } finally { cleanup() }
  }

  /** Stops reading: what the peer still sends is left to the stream (which resets past its own buffer). */
  detach (): void {
    if (this.detached) return
    this.detached = true
    clearTimeout(this.idle)
    this.reading?.(new ChannelError('ended', 'the channel was closed'))
    this.stream.removeEventListener('message', this.onMessage)
    this.stream.removeEventListener('remoteCloseWrite', this.onEnd)
    this.stream.removeEventListener('close', this.onClose)
    this.chunks = []
    this.buffered = 0
    this.release()
    this.dropAhead()
  }

  private release (): void {
    this.held?.()
    this.held = undefined
  }

  /** Half-closes our side after what is queued went out; aborts if that cannot happen in time. */
  async close (): Promise<void> {
    this.detach()
    try { await this.stream.close({ signal: AbortSignal.timeout(Math.min(this.init.writeMs ?? 2000, 2000)) }) } catch (err) { this.stream.abort(err as Error) }
  }

  abort (err: Error): void {
    this.detach()
    this.stream.abort(err)
  }
}
