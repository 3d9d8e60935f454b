import { randomBytes } from 'node:crypto'
import type { ComponentLogger, Connection, Logger, Startable } from '@libp2p/interface'
import { PlexusError } from '@plexus/runtime'

// Liveness pings on every connection, so a frozen peer (SIGSTOP'd, hung, unplugged) is dropped
// in seconds rather than at TCP's pace. libp2p's own connection monitor fails a ping when its
// timer fires, and a timer fires before the input that waited behind a blocked event loop is
// read: a node busy for a second (loading a model, a long step on the main thread, a starved
// CPU) dropped every connection it had, healthy peers included. Here a ping fails only for
// the peer's silence: at the deadline pending input is read first, and the time this process
// itself did not run (measured by a ticking clock) does not count against the peer. The dialer is
// the watcher: a client needs to notice a hung server at once, while a server has no reason to
// cut off a client whose machine paused for a few seconds (its sessions have idle deadlines),
// so connections a peer dialed to us are given much longer.

export const DEFAULT_LIVENESS_INTERVAL_MS = 1000
export const DEFAULT_LIVENESS_TIMEOUT_MS = 3000
export const DEFAULT_INBOUND_LIVENESS_TIMEOUT_MS = 20_000
const PING_PROTOCOL = '/ipfs/ping/1.0.0'
const PING_BYTES = 32
/** Beats between two pings of a connection a peer dialed to us. */
const INBOUND_EVERY = 5
const TICK_MS = 100
/** Lateness of a tick that is only a busy loop, not a stall. */
const TICK_SLACK_MS = 20
/** However long this process stalls, a ping fails after this many timeouts of wall time. */
const MAX_WINDOW_FACTOR = 10

export interface PeerLivenessInit {
  /** Time between two pings of a connection we dialed. Default 1 s (a frozen peer goes within 4 s). */
  intervalMs?: number
  /** A peer we dialed that is silent this long (while this process ran) is dropped. Default 3 s. */
  timeoutMs?: number
  /** The same for a peer that dialed us. Default 20 s. */
  inboundTimeoutMs?: number
}

export interface PeerLivenessComponents {
  connectionManager: { getConnections: () => Connection[] }
  logger: ComponentLogger
}

/** The peer answered no ping within the deadline: its connection is aborted with this. */
export class PeerSilentError extends PlexusError {
  constructor (message: string) {
    super('peer-silent', message, { httpStatus: 503 })
    this.name = 'PeerSilentError'
  }
}

export class PeerLiveness implements Startable {
  private readonly components: PeerLivenessComponents
  private readonly intervalMs: number
  private readonly timeoutMs: number
  private readonly inboundTimeoutMs: number
  private readonly log: Logger
  private timer?: ReturnType<typeof setInterval>
  /** Connections with a ping in flight (one at a time each). */
  private readonly inFlight = new Set<string>()
  private beats = 0
  private readonly clock = clock

  constructor (components: PeerLivenessComponents, init: PeerLivenessInit = {}) {
    this.components = components
    this.intervalMs = init.intervalMs ?? DEFAULT_LIVENESS_INTERVAL_MS
    this.timeoutMs = init.timeoutMs ?? DEFAULT_LIVENESS_TIMEOUT_MS
    this.inboundTimeoutMs = init.inboundTimeoutMs ?? DEFAULT_INBOUND_LIVENESS_TIMEOUT_MS
    this.log = components.logger.forComponent('plexus:liveness')
  }

  readonly [Symbol.toStringTag] = 'plexus/peer-liveness'

  start (): void {
    this.clock.acquire()
    this.timer = setInterval(() => { this.beat() }, this.intervalMs)
    this.timer.unref()
  }

  stop (): void {
    clearInterval(this.timer)
    this.clock.release()
  }

  private beat (): void {
    // a connection a peer dialed to us has 20 s: pinging it every few beats is plenty
    const inbound = this.beats++ % INBOUND_EVERY === 0
    for (const conn of this.components.connectionManager.getConnections()) {
      if (conn.status !== 'open' || this.inFlight.has(conn.id) || (conn.direction === 'inbound' && !inbound)) continue
      this.inFlight.add(conn.id)
      void this.check(conn).finally(() => { this.inFlight.delete(conn.id) })
    }
  }

  private async check (conn: Connection): Promise<void> {
    const stop = new AbortController()
    const exchange = this.ping(conn, stop.signal)
    const timeoutMs = conn.direction === 'inbound' ? this.inboundTimeoutMs : this.timeoutMs
    if (await this.answeredWithin(exchange, timeoutMs)) return
    const err = new PeerSilentError(`peer ${conn.remotePeer.toString()} answered no ping for ${timeoutMs / 1000} s`)
    stop.abort(err)
    this.log('%s: dropping the connection', err.message)
    conn.abort(err)
  }

  /** One ping: true once answered (or the peer refused the protocol: it is alive); false on a failure that says nothing of liveness. */
  private async ping (conn: Connection, signal: AbortSignal): Promise<boolean> {
    let stream
    try {
      const t0 = Date.now()
      stream = await conn.newStream(PING_PROTOCOL, { signal, runOnLimitedConnection: true })
      const sent = randomBytes(PING_BYTES)
      const echo = new Promise<void>((resolve, reject) => {
        let got = 0
        stream!.addEventListener('message', (evt: any) => { got += evt.data.byteLength; if (got >= PING_BYTES) resolve() })
        stream!.addEventListener('close', (evt: any) => { if (got < PING_BYTES) reject(evt.error ?? new Error('the ping stream closed')) }, { once: true })
        signal.addEventListener('abort', () => { reject(signal.reason) }, { once: true })
      })
      // a failure before it is awaited (send throwing on a closing stream) is the catch's below
      echo.catch(() => {})
      stream.send(sent)
      await echo
      conn.rtt = Date.now() - t0
      await stream.close({ signal }).catch(() => {})
      return true
    } catch (err: any) {
      stream?.abort(err)
      // the peer answered the negotiation: alive
      if (err.name === 'UnsupportedProtocolError') return true
      // a stream limit, a connection closing: not evidence of silence; the next beat tries again
      this.log('ping of %p failed: %s', conn.remotePeer, err.message)
      return true
    }
  }

  /** Whether `exchange` settles within `timeoutMs`, counting only time this process ran. */
  private async answeredWithin (exchange: Promise<boolean>, timeoutMs: number): Promise<boolean> {
    let settled = false
    void exchange.then(() => { settled = true })
    const t0 = performance.now()
    const stalled0 = this.clock.stalledMs()
    let wait = timeoutMs
    while (performance.now() - t0 < timeoutMs * MAX_WINDOW_FACTOR) {
      let timer: ReturnType<typeof setTimeout> | undefined
      await Promise.race([exchange, new Promise<void>(resolve => { timer = setTimeout(resolve, wait) })])
      clearTimeout(timer)
      if (settled) return true
      // input that arrived while this loop was busy is read in this turn's poll phase
      await new Promise<void>(resolve => setImmediate(resolve))
      if (settled) return true
      const silent = performance.now() - t0 - (this.clock.stalledMs() - stalled0)
      if (silent >= timeoutMs) return false
      wait = timeoutMs - silent
    }
    return false
  }
}

/**
 * How long this thread's event loop did not run: a tick every 100 ms, and whatever a tick
 * came late by is time this process stalled (the tick in progress counted too).
 */
class LoopClock {
  private last = performance.now()
  private stalled = 0
  private users = 0
  private timer?: ReturnType<typeof setInterval>

  acquire (): void {
    if (this.users++ > 0) return
    this.last = performance.now()
    this.timer = setInterval(() => { this.stalled = this.stalledMs(); this.last = performance.now() }, TICK_MS)
    this.timer.unref()
  }

  release (): void {
    if (--this.users > 0) return
    clearInterval(this.timer)
  }

  stalledMs (): number {
    return this.stalled + Math.max(0, performance.now() - this.last - TICK_MS - TICK_SLACK_MS)
  }
}

/** One clock per thread, shared by its nodes. */
const clock = new LoopClock()

/** A libp2p service factory: `services: { liveness: peerLiveness() }`. */
export function peerLiveness (init: PeerLivenessInit = {}): (components: PeerLivenessComponents) => PeerLiveness {
  return (components) => new PeerLiveness(components, init)
}
