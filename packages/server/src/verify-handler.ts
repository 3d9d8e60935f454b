import type { Stream, Connection, Logger } from '@libp2p/interface'
import { VerifyError, verifyCodec } from '@plexus/protocol'
import { PROTOCOLS, VERIFY_PROTOCOL, serveChannel } from '@plexus/p2p'
import type { ByteBudget } from '@plexus/p2p'
import type { CheckMessage, GetReportMessage, RecheckMessage, VerifyCloseMessage, VerifyErrorCode, VerifyMessage } from '@plexus/protocol'
import type { Verifier } from './verifier.ts'
import { VerifierPeerLimits } from './verifier-peer-limits.ts'
import type { VerifierPeerLimitsInit } from './verifier-peer-limits.ts'
import { verifyStream } from './handlers/verify-context.ts'
import type { VerifyStream } from './handlers/verify-context.ts'
import { handleCheck } from './handlers/verify-check.ts'
import { handleRecheck } from './handlers/verify-recheck.ts'
import { handleGetReport } from './handlers/verify-get-report.ts'
import { handleVerifyClose } from './handlers/verify-close.ts'

export { VERIFY_PROTOCOL }

export interface VerifyHandlerComponents {
  verifier: Verifier
  log: Logger
  /** The node's buffered-bytes budget (node.services.plexus.budget): every frame read is charged to it. */
  budget?: ByteBudget
}

export interface VerifyHandlerInit extends VerifierPeerLimitsInit {
  /** A check carries a hop's steps since the last one; a recheck a whole fraud report. */
  maxFrameBytes?: number
  idleTimeoutMs?: number
  writeTimeoutMs?: number
  onError?: (code: VerifyErrorCode, message: string) => void
}

/** One handler per message a client may send. */
const HANDLERS: { [T in VerifyMessage['type']]?: (s: VerifyStream, msg: any) => Promise<void> } = {
  check: async (s, m: CheckMessage) => { await handleCheck(s, m) },
  recheck: async (s, m: RecheckMessage) => { await handleRecheck(s, m) },
  'get-report': async (s, m: GetReportMessage) => { await handleGetReport(s, m) },
  close: async (s, m: VerifyCloseMessage) => { await handleVerifyClose(s, m) }
}

/**
 * `/plexus/verify/1.0.0`: a client sends `check`s of one or more hops (each a verify session that
 * lives as long as the stream) and reads a `verdict` per check; anyone may send a `recheck` of a
 * fraud report, or ask for a report by digest (`get-report`). A malformed request gets an `error`
 * frame naming the problem and the stream closes; the verifier goes on serving every other stream.
 */
export function createVerifyHandler (components: VerifyHandlerComponents, init: VerifyHandlerInit = {}) {
  const { verifier, log } = components
  const defaults = PROTOCOLS.verify.server
  // one count per peer across all its streams
  const peerLimits = new VerifierPeerLimits(init)
  return async function handleVerify (stream: Stream, connection: Connection): Promise<void> {
    let s: VerifyStream | undefined
    const peer = connection.remotePeer.toString()
    await serveChannel(stream, peer, {
      name: 'verify',
      codec: verifyCodec,
      log,
      budget: components.budget,
      limits: {
        maxFrameBytes: init.maxFrameBytes ?? defaults.maxFrameBytes,
        idleMs: init.idleTimeoutMs ?? defaults.idleMs,
        writeMs: init.writeTimeoutMs ?? defaults.writeMs
      },
      dispatch: async (msg, channel) => {
        s ??= verifyStream(verifier, channel, peer, peerLimits)
        const handler = HANDLERS[msg.type]
        if (handler == null) throw new VerifyError('bad-request', `a client may not send ${msg.type} messages`)
        await handler(s, msg)
      },
      onRefused: ({ code, message }) => { init.onError?.(code, message) },
      cleanup: async () => { for (const id of s?.owned ?? []) await verifier.close(id) }
    })
  }
}
