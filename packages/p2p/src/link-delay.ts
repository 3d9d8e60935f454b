// A benchmark tool, not a feature: a fixed one-way delay on every byte a node sends, so a
// loopback swarm behaves like one whose peers are MS apart (`bench:swarm --netem MS`) on
// machines without tc netem. Enabled only by the PLEXUS_LINK_DELAY_MS environment variable.
import { AbstractMultiaddrConnection } from '@libp2p/utils'
import type { AbortOptions, ConnectionProtector, MessageStream, MultiaddrConnection } from '@libp2p/interface'
import type { Uint8ArrayList } from 'uint8arraylist'

/** The environment variable that turns the delay on (milliseconds, one way; every process of the swarm sets it). */
export const LINK_DELAY_ENV = 'PLEXUS_LINK_DELAY_MS'

/**
 * Bytes in flight on the delayed link at most before the writer is told to wait: like a TCP
 * window, it caps throughput at this over the delay (8 MiB / 20 ms = 400 MiB/s), far above
 * what a step's activations need.
 */
const MAX_IN_FLIGHT = 8 << 20

/** The delay PLEXUS_LINK_DELAY_MS asks for, or 0 when unset; a bad value is an error, not silently no delay. */
export function linkDelayFromEnv (env: NodeJS.ProcessEnv = process.env): number {
  const raw = env[LINK_DELAY_ENV]
  if (raw == null || raw.trim() === '') return 0
  const ms = Number(raw)
  if (!Number.isFinite(ms) || ms < 0) throw new Error(`${LINK_DELAY_ENV} must be a number of milliseconds >= 0, not ${JSON.stringify(raw)}`)
  return ms
}

/**
 * The connection-protector option of a node's libp2p config, with the delay of
 * PLEXUS_LINK_DELAY_MS added when it is set: it wraps the raw connection first, so a swarm
 * key's protector (if any) runs over the delayed link, handshake included.
 */
export function withLinkDelay<T extends { connectionProtector?: () => ConnectionProtector }> (options: T, env: NodeJS.ProcessEnv = process.env): T {
  const ms = linkDelayFromEnv(env)
  if (ms === 0) return options
  const inner = options.connectionProtector
  return { ...options, connectionProtector: linkDelayProtector(ms, inner) }
}

/** A protector that delays every chunk sent by `delayMs`, then hands the connection to `inner` (if any). */
export function linkDelayProtector (delayMs: number, inner?: () => ConnectionProtector): () => ConnectionProtector {
  return () => {
    const next = inner?.()
    return {
      [Symbol.toStringTag]: '@plexus/link-delay',
      async protect (connection: MessageStream, options?: AbortOptions): Promise<MessageStream> {
        const delayed = new DelayedConnection(connection as MultiaddrConnection, delayMs)
        return next != null ? await next.protect(delayed, options) : delayed
      }
    }
  }
}

/**
 * Sends through `inner` what is written to it `delayMs` later, in order: a FIFO of (due time,
 * chunk) drained by one timer, so the event loop never waits. The writer is told to wait while
 * MAX_IN_FLIGHT bytes are queued or `inner` itself is full; received bytes pass straight through
 * (the other side delays its own sends).
 */
class DelayedConnection extends AbstractMultiaddrConnection {
  private readonly inner: MultiaddrConnection
  private readonly delayMs: number
  private readonly queue: Array<{ due: number, bytes: Uint8Array }> = []
  private queuedBytes = 0
  private timer?: ReturnType<typeof setTimeout>
  /** `inner.send` returned false: wait for its 'drain'. */
  private innerFull = false
  /** We returned canSendMore: false and owe the writer a 'drain'. */
  private owedDrain = false
  /** sendClose waiting for the queue to empty. */
  private emptied: Array<() => void> = []

  constructor (inner: MultiaddrConnection, delayMs: number) {
    super({ log: inner.log.newScope('link-delay'), remoteAddr: inner.remoteAddr, direction: inner.direction })
    this.inner = inner
    this.delayMs = delayMs
    inner.addEventListener('message', (evt) => {
      const data = evt.data
      if (data instanceof Uint8Array) this.onData(data)
      else for (const buf of data) this.onData(buf)
    })
    inner.addEventListener('drain', () => { this.innerFull = false; this.flush() })
    inner.addEventListener('close', (evt) => {
      this.drop()
      if (evt.error != null) {
        if (evt.local) this.abort(evt.error)
        else this.onRemoteReset()
      } else {
        this.onTransportClosed()
      }
    })
  }

  sendData (data: Uint8ArrayList): { sentBytes: number, canSendMore: boolean } {
    const bytes = data.subarray()
    this.queue.push({ due: performance.now() + this.delayMs, bytes })
    this.queuedBytes += bytes.byteLength
    if (this.timer == null && !this.innerFull) this.schedule()
    const canSendMore = this.queuedBytes < MAX_IN_FLIGHT && !this.innerFull
    if (!canSendMore) this.owedDrain = true
    return { sentBytes: bytes.byteLength, canSendMore }
  }

  /** Hands `inner` every chunk that is due, then sets the timer for the next one. */
  private flush (): void {
    this.timer = undefined
    const now = performance.now()
    while (this.queue.length > 0 && !this.innerFull && this.queue[0].due <= now) {
      const { bytes } = this.queue.shift()!
      this.queuedBytes -= bytes.byteLength
      try {
        if (!this.inner.send(bytes)) this.innerFull = true
      } catch (err) {
        this.drop()
        this.abort(err as Error)
        return
      }
    }
    if (this.queue.length === 0) this.wake()
    if (this.owedDrain && !this.innerFull && this.queuedBytes < MAX_IN_FLIGHT) {
      this.owedDrain = false
      this.onMuxerDrain()
    }
    if (!this.innerFull) this.schedule()
  }

  private schedule (): void {
    if (this.timer != null || this.queue.length === 0) return
    this.timer = setTimeout(() => { this.flush() }, Math.max(0, this.queue[0].due - performance.now()))
  }

  /** Forgets what is queued (the connection is gone or reset). */
  private drop (): void {
    if (this.timer != null) clearTimeout(this.timer)
    this.timer = undefined
    this.queue.length = 0
    this.queuedBytes = 0
    this.wake()
  }

  private wake (): void {
    for (const resolve of this.emptied.splice(0)) resolve()
  }

  async sendClose (options?: AbortOptions): Promise<void> {
    // the bytes still on the "wire" arrive before the close does
    if (this.queue.length > 0) await new Promise<void>(resolve => this.emptied.push(resolve))
    await this.inner.close(options)
  }

  sendReset (err: Error): void {
    this.drop()
    this.inner.abort(err)
  }

  sendPause (): void { this.inner.pause() }
  sendResume (): void { this.inner.resume() }
}
