import { lpStream } from '@libp2p/utils'
import type { Stream, Connection, Logger } from '@libp2p/interface'
import { VERIFY_PROTOCOL, VerifyError, decodeVerifyMessage, encodeVerifyMessage } from '@plexus/protocol'
import type { VerifyMessage, VerifyErrorCode } from '@plexus/protocol'
import type { Verifier } from './verifier.ts'
import { errorReply } from './handler-errors.ts'

export { VERIFY_PROTOCOL }

export interface VerifyHandlerComponents {
  verifier: Verifier
  log: Logger
}

export interface VerifyHandlerInit {
  /** A check carries a hop's steps since the last one; a recheck a whole fraud report. */
  maxFrameBytes?: number
  idleTimeoutMs?: number
  onError?: (code: VerifyErrorCode, message: string) => void
}

/**
 * `/plexus/verify/1.0.0`: a client sends `check`s of one or more hops (each a verify session that
 * lives as long as the stream) and reads a `verdict` per check; anyone may send a `recheck` of a
 * fraud report, or ask for a report by digest (`get-report`). A malformed request gets an `error` frame naming the problem and the stream
 * closes; the verifier goes on serving every other stream.
 */
export function createVerifyHandler (components: VerifyHandlerComponents, init: VerifyHandlerInit = {}) {
  const { verifier, log } = components
  const maxFrame = init.maxFrameBytes ?? 96 << 20
  const idleMs = init.idleTimeoutMs ?? 5 * 60_000
  return async function handleVerify (stream: Stream, connection: Connection): Promise<void> {
    const io = lpStream(stream, { maxDataLength: maxFrame, maxBufferSize: maxFrame + 16 })
    const owned = new Set<string>()
    const send = async (m: VerifyMessage): Promise<void> => { await io.write(encodeVerifyMessage(m), { signal: AbortSignal.timeout(30_000) }) }
    const peer = connection.remotePeer.toString()
    const idleAbort = new AbortController()
    const idle = setTimeout(() => { idleAbort.abort(new DOMException(`no message for ${idleMs} ms`, 'TimeoutError')) }, idleMs)
    try {
      while (true) {
        let frame: Uint8Array
        try {
          idle.refresh()
          frame = (await io.read({ signal: idleAbort.signal })).subarray()
        } catch (err: any) {
          if (err.name === 'InvalidDataLengthError' || err.name === 'InvalidDataLengthLengthError') throw new VerifyError('bad-frame', `frame too large (limit ${maxFrame} bytes)`)
          if (err.name === 'TimeoutError') throw new VerifyError('bad-request', `no message for ${idleMs / 1000} s: closing the stream`)
          log('verify stream from %s ended: %s', peer, err.message)
          return
        }
        const msg = decodeVerifyMessage(frame)
        switch (msg.type) {
          case 'check': {
            if (!owned.has(msg.verifyId) && verifier.has(msg.verifyId)) throw new VerifyError('bad-request', `verify session ${msg.verifyId} belongs to another stream`)
            owned.add(msg.verifyId)
            const verdict = await verifier.check(msg)
            if (!verdict.ok) owned.delete(msg.verifyId)
            await send(verdict)
            break
          }
          case 'recheck':
            await send(await verifier.recheck(msg.report))
            break
          case 'get-report': {
            // the evidence behind a reputation record, for a client to re-check before believing it
            const report = verifier.reports.get(msg.digest)
            await send({ type: 'report', digest: msg.digest, found: report != null, ...(report != null ? { report } : {}) })
            break
          }
          case 'close':
            if (owned.delete(msg.verifyId)) await verifier.close(msg.verifyId)
            break
          default:
            throw new VerifyError('bad-request', `a client may not send ${msg.type} messages`)
        }
      }
    } catch (err: any) {
      const { code, message } = errorReply<VerifyErrorCode>(err, (e): e is VerifyError => e instanceof VerifyError)
      init.onError?.(code, message)
      log('verify stream from %s: %s: %s', peer, code, message)
      try { await send({ type: 'error', code, message }) } catch {}
    } finally {
      clearTimeout(idle)
      for (const id of owned) await verifier.close(id)
      try { await stream.close({ signal: AbortSignal.timeout(2000) }) } catch { stream.abort(new Error('verify stream closed')) }
    }
  }
}
