import { lpStream } from '@libp2p/utils'
import type { Stream, Connection, Logger, PrivateKey } from '@libp2p/interface'
import { SESSION_PROTOCOL, ProtocolError, decodeMessage, encodeMessage } from '@plexus/protocol'
import type { SessionMessage, ErrorCode, OpenMessage } from '@plexus/protocol'
import type { BackendSet, BlockBackend } from './backend.ts'
import { errorReply } from './handler-errors.ts'
import { Forwarder } from './forwarder.ts'
import type { ForwardDialer } from './forwarder.ts'
import { RouteTable, replyStep, feedCheck } from './routed-sessions.ts'

export { SESSION_PROTOCOL }

export interface SessionHandlerComponents {
  /** The spans this node serves; each session is opened on the one serving its blocks. */
  backends: BackendSet
  log: Logger
  /** Signs a commitment to every step result (evidence for clients and verifiers). */
  privateKey?: PrivateKey
  /** Dials the next hop of forwarded routes (without it, an open naming a next hop is refused). */
  dialer?: ForwardDialer
  /** This node's peer id (a route may not forward a node to itself). */
  peerId?: string
}

export interface SessionHandlerInit {
  /** Largest frame accepted (a prefill of many tokens is one frame). */
  maxFrameBytes?: number
  /** A stream with no message for this long is closed (its sessions freed). */
  idleTimeoutMs?: number
  /** Observers (metrics, tests). */
  onStep?: (info: { tokens: number, computeMs: number }) => void
  onError?: (code: ErrorCode, message: string) => void
}

/**
 * `/plexus/session/1.0.0`: one long-lived stream per session. The client opens a session on a
 * span, then sends steps of hidden states and reads results, one step in flight at a time.
 * Any malformed or unserviceable request gets an `error` frame naming the problem; the stream
 * is then closed and its sessions freed. Other sessions are never affected.
 */
export function createSessionHandler (components: SessionHandlerComponents, init: SessionHandlerInit = {}) {
  const { backends, log } = components
  const maxFrame = init.maxFrameBytes ?? 64 << 20
  const idleMs = init.idleTimeoutMs ?? 5 * 60_000

  const maxPrefix = varintBytes(maxFrame)
  const routes = new RouteTable()

  return async function handleSession (stream: Stream, connection: Connection): Promise<void> {
    // Bytes of the next frame (its length prefix included) have arrived; its announced length.
    let inFrame = false
    let announced = -1
    let prefixBytes = 0
    const io = lpStream(stream, {
      maxDataLength: maxFrame,
      maxBufferSize: maxFrame + 16,
      // lpStream's own decoder asks for more bytes for as long as every byte has its high bit
      // set, buffering a prefix that never ends: give up after the longest varint there is.
      lengthDecoder: (buf) => {
        inFrame = true
        announced = -1
        prefixBytes = buf.byteLength
        let value = 0
        let scale = 1
        for (let i = 0; i < buf.byteLength; i++) {
          const b = buf.get(i)
          value += (b & 0x7f) * scale
          if (b < 0x80) { announced = value; return value }
          scale *= 128
        }
        if (buf.byteLength >= MAX_VARINT_BYTES) throw new ProtocolError('bad-frame', `frame length prefix runs past ${MAX_VARINT_BYTES} bytes (frames are at most ${maxFrame} bytes)`)
        throw new RangeError('the length prefix continues')
      }
    })
    const idleAbort = new AbortController()
    const idle = setTimeout(() => { idleAbort.abort(new DOMException(`no message for ${idleMs} ms`, 'TimeoutError')) }, idleMs)
    const owned = new Map<string, BlockBackend>()
    /** Forwarded sessions this stream feeds (it attached to them as their previous hop). */
    const fed = new Set<string>()
    /** Only the stream that opened a session may step, truncate or close it. */
    const own = (id: string): BlockBackend => {
      const b = owned.get(id)
      if (b != null) return b
      backends.holder(id) // unknown/closed → its own error
      throw new ProtocolError('bad-request', `session ${id} belongs to another stream`)
    }
    const send = async (m: SessionMessage): Promise<void> => { await io.write(encodeMessage(m), { signal: AbortSignal.timeout(30_000) }) }
    const peer = connection.remotePeer.toString()
    /** An open naming hops: checks them, and dials the next one before answering. */
    const route = async (msg: OpenMessage, backend: BlockBackend): Promise<void> => {
      if (msg.next == null && msg.prev == null) return
      let next: Forwarder | undefined
      if (msg.next != null) {
        if (components.dialer == null) throw new ProtocolError('bad-request', 'this server does not forward to a next hop')
        if (msg.next.peer === components.peerId) throw new ProtocolError('bad-request', 'a route cannot forward a server to itself')
        next = await Forwarder.open(components.dialer, msg.next, { signal: AbortSignal.timeout(10_000), maxFrameBytes: maxFrame })
      }
      routes.add(msg.sessionId, {
        backend,
        prev: msg.prev,
        next,
        returnOutputs: msg.returnOutputs === true,
        attached: false,
        toClient: send,
        touch: () => { idle.refresh() },
        fail: async (code, message) => {
          try { await send({ type: 'error', code, message }) } catch {}
          stream.abort(new Error(message))
        }
      })
    }
    try {
      while (true) {
        let frame: Uint8Array
        try {
          // one idle timer per stream, re-armed per message (a fresh timer per read piles up)
          idle.refresh()
          frame = (await io.read({ signal: idleAbort.signal })).subarray()
          inFrame = false
        } catch (err: any) {
          if (err instanceof ProtocolError) throw err
          if (err.name === 'InvalidDataLengthError' || err.name === 'InvalidDataLengthLengthError') {
            throw new ProtocolError('bad-frame', announced > maxFrame
              ? `frame of ${announced} bytes is too large (limit ${maxFrame} bytes)`
              : `frame length prefix of ${prefixBytes} bytes is too long (frames are at most ${maxFrame} bytes: ${maxPrefix} bytes of prefix)`)
          }
          if (err.name === 'TimeoutError') throw new ProtocolError('bad-request', `no message for ${idleMs / 1000} s: closing the stream`)
          // The client closed its side inside a frame: it can still read why.
          if (err.name === 'UnexpectedEOFError' && inFrame) {
            throw new ProtocolError('bad-frame', `truncated frame: the stream ended inside ${announced < 0 ? 'a length prefix' : `a frame of ${announced} bytes`} (${err.message})`)
          }
          // The client went away (clean end or reset): nothing to answer.
          log('session stream from %s ended: %s', peer, err.message)
          return
        }
        const msg = decodeMessage(frame, { requireFinite: true })
        switch (msg.type) {
          case 'open': {
            if (owned.has(msg.sessionId) || routes.has(msg.sessionId) || backends.all().some(b => b.has(msg.sessionId) || b.wasClosed(msg.sessionId))) {
              throw new ProtocolError('bad-request', `session ${msg.sessionId} already exists`)
            }
            const backend = backends.pick(msg.modelId, msg.start, msg.end)
            await backend.open(msg.sessionId, msg.modelId, msg.start, msg.end, msg.maxLength, peer)
            owned.set(msg.sessionId, backend)
            await route(msg, backend)
            await send({ type: 'opened', sessionId: msg.sessionId, start: msg.start, end: msg.end, length: 0 })
            break
          }
          case 'attach': {
            routes.attach(msg.sessionId, peer)
            fed.add(msg.sessionId)
            await send({ type: 'attached', sessionId: msg.sessionId })
            break
          }
          case 'step': {
            const routed = routes.get(msg.sessionId)
            feedCheck(routed, fed.has(msg.sessionId), msg.sessionId)
            const backend = fed.has(msg.sessionId) ? (routed?.backend ?? closedFeed(msg.sessionId)) : own(msg.sessionId)
            if (msg.hidden !== backend.config.hiddenSize) {
              throw new ProtocolError('bad-tensor', `hidden size ${msg.hidden} does not match the model's ${backend.config.hiddenSize}`)
            }
            const t0 = performance.now()
            const out = await backend.step(msg.sessionId, msg.position, msg.tokens, msg.data)
            const computeMs = performance.now() - t0
            init.onStep?.({ tokens: msg.tokens, computeMs })
            await replyStep({ privateKey: components.privateKey, send }, backend, routed, msg, out, computeMs)
            break
          }
          case 'truncate': {
            const length = await own(msg.sessionId).truncate(msg.sessionId, msg.length)
            await send({ type: 'truncated', sessionId: msg.sessionId, length })
            break
          }
          case 'close': {
            const backend = own(msg.sessionId)
            owned.delete(msg.sessionId)
            await routes.remove(msg.sessionId)
            await backend.close(msg.sessionId)
            break
          }
          default:
            throw new ProtocolError('bad-request', `a client may not send ${msg.type} messages`)
        }
      }
    } catch (err: any) {
      const { code, message } = errorReply<ErrorCode>(err, (e): e is ProtocolError => e instanceof ProtocolError)
      init.onError?.(code, message)
      log('session stream from %s: %s: %s', peer, code, message)
      try { await send({ type: 'error', code, message }) } catch {}
      // a broken feed breaks its sessions: their clients hear it from this server
      for (const id of fed) await routes.get(id)?.fail(code, `from the previous hop's stream: ${message}`)
    } finally {
      clearTimeout(idle)
      for (const [id, backend] of owned) { await routes.remove(id); await backend.close(id) }
      try { await stream.close({ signal: AbortSignal.timeout(2000) }) } catch { stream.abort(new Error('session stream closed')) }
    }
  }
}

function closedFeed (id: string): never { throw new ProtocolError('closed-session', `session ${id} was closed by its client`) }
/** Longest varint lpStream decodes. */
const MAX_VARINT_BYTES = 8

/** Bytes of the varint length prefix of a frame of `n` bytes. */
function varintBytes (n: number): number {
  let k = 1
  while (n >= 128) { n = Math.floor(n / 128); k++ }
  return k
}
