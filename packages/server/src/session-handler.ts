import { lpStream } from '@libp2p/utils'
import type { Stream, Connection, Logger } from '@libp2p/interface'
import { SESSION_PROTOCOL, ProtocolError, decodeMessage, encodeMessage } from '@plexus/protocol'
import type { SessionMessage, ErrorCode } from '@plexus/protocol'
import type { BlockBackend } from './backend.ts'

export { SESSION_PROTOCOL }

export interface SessionHandlerComponents {
  backend: BlockBackend
  log: Logger
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
  const { backend, log } = components
  const maxFrame = init.maxFrameBytes ?? 64 << 20
  const idleMs = init.idleTimeoutMs ?? 5 * 60_000

  return async function handleSession (stream: Stream, connection: Connection): Promise<void> {
    const io = lpStream(stream, { maxDataLength: maxFrame, maxBufferSize: maxFrame + 16 })
    const owned = new Set<string>()
    const send = async (m: SessionMessage): Promise<void> => { await io.write(encodeMessage(m), { signal: AbortSignal.timeout(30_000) }) }
    const peer = connection.remotePeer.toString()
    try {
      while (true) {
        let frame: Uint8Array
        try {
          frame = (await io.read({ signal: AbortSignal.timeout(idleMs) })).subarray()
        } catch (err: any) {
          if (err.name === 'InvalidDataLengthError' || err.name === 'InvalidDataLengthLengthError') throw new ProtocolError('bad-frame', `frame too large (limit ${maxFrame} bytes)`)
          if (err.name === 'TimeoutError') throw new ProtocolError('bad-request', `no message for ${idleMs / 1000} s: closing the stream`)
          // The client went away (clean end, reset or truncated frame): nothing to answer.
          log('session stream from %s ended: %s', peer, err.message)
          return
        }
        const msg = decodeMessage(frame, { hiddenSize: backend.config.hiddenSize, requireFinite: true })
        switch (msg.type) {
          case 'open': {
            await backend.open(msg.sessionId, msg.modelId, msg.start, msg.end, msg.maxLength)
            owned.add(msg.sessionId)
            await send({ type: 'opened', sessionId: msg.sessionId, start: msg.start, end: msg.end, length: 0 })
            break
          }
          case 'step': {
            if (!owned.has(msg.sessionId)) backend.get(msg.sessionId) // unknown/closed → its own error
            if (!owned.has(msg.sessionId)) throw new ProtocolError('bad-request', `session ${msg.sessionId} belongs to another stream`)
            const t0 = performance.now()
            const out = await backend.step(msg.sessionId, msg.position, msg.tokens, msg.data)
            const computeMs = performance.now() - t0
            init.onStep?.({ tokens: msg.tokens, computeMs })
            await send({ type: 'result', sessionId: msg.sessionId, step: msg.step, position: msg.position, tokens: msg.tokens, hidden: msg.hidden, dtype: msg.dtype, computeMs, data: out })
            break
          }
          case 'truncate': {
            if (!owned.has(msg.sessionId)) backend.get(msg.sessionId)
            const length = await backend.truncate(msg.sessionId, msg.length)
            await send({ type: 'truncated', sessionId: msg.sessionId, length })
            break
          }
          case 'close':
            if (!owned.has(msg.sessionId)) backend.get(msg.sessionId)
            owned.delete(msg.sessionId)
            await backend.close(msg.sessionId)
            break
          default:
            throw new ProtocolError('bad-request', `a client may not send ${msg.type} messages`)
        }
      }
    } catch (err: any) {
      const code: ErrorCode = err instanceof ProtocolError ? err.code : (err.name === 'SpanError' ? 'bad-request' : 'internal')
      const message = err instanceof ProtocolError || err.name === 'SpanError' ? err.message : `internal error: ${err.message}`
      init.onError?.(code, message)
      log('session stream from %s: %s: %s', peer, code, message)
      try { await send({ type: 'error', code, message }) } catch {}
    } finally {
      for (const id of owned) await backend.close(id)
      try { await stream.close({ signal: AbortSignal.timeout(2000) }) } catch { stream.abort(new Error('session stream closed')) }
    }
  }
}
