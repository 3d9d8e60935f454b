import { ProtocolError } from '@plexus/protocol'
import type { OpenMessage } from '@plexus/protocol'
import { Forwarder } from '../forwarder.ts'
import type { BlockBackend } from '../backend.ts'
import type { SessionStream } from './session-context.ts'

/**
 * How long a server tries to reach its next hop. Well within the client's wait for `opened`
 * (10 s), so a next hop this server cannot reach (behind a symmetric NAT: WebRTC gives up after
 * seconds) is answered `next-hop` in time for the client to relay the route itself.
 */
const FORWARD_DIAL_MS = 5000

/** `open`: a session on the span serving its blocks; a forwarded route dials its next hop first. */
export async function handleOpen (s: SessionStream, msg: OpenMessage): Promise<void> {
  const { backends } = s.components
  if (s.owned.has(msg.sessionId) || s.routes.has(msg.sessionId) || backends.all().some(b => b.has(msg.sessionId) || b.wasClosed(msg.sessionId))) {
    throw new ProtocolError('bad-request', `session ${msg.sessionId} already exists`)
  }
  const backend = backends.pick(msg.modelId, msg.start, msg.end)
  await backend.open(msg.sessionId, msg.modelId, msg.start, msg.end, msg.maxLength, s.peer)
  s.owned.set(msg.sessionId, backend)
  await route(s, msg, backend)
  await s.send({ type: 'opened', sessionId: msg.sessionId, start: msg.start, end: msg.end, length: 0 })
}

/** An open naming hops: checks them, and dials the next one before answering. */
async function route (s: SessionStream, msg: OpenMessage, backend: BlockBackend): Promise<void> {
  if (msg.next == null && msg.prev == null) return
  const { dialer, peerId } = s.components
  let next: Forwarder | undefined
  if (msg.next != null) {
    // next-hop: the client relays this route itself instead (it is not this server's fault)
    if (dialer == null) throw new ProtocolError('next-hop', 'this server does not forward to a next hop (--no-forwarding)')
    if (msg.next.peer === peerId) throw new ProtocolError('bad-request', 'a route cannot forward a server to itself')
    next = await Forwarder.open(dialer, msg.next, { signal: AbortSignal.timeout(FORWARD_DIAL_MS), maxFrameBytes: s.frameLimit() })
  }
  s.routes.add(msg.sessionId, {
    backend,
    prev: msg.prev,
    next,
    returnOutputs: msg.returnOutputs === true,
    attached: false,
    toClient: s.send,
    touch: () => { s.channel.touch() },
    fail: async (code, message) => {
      try { await s.send({ type: 'error', code, message }) } catch {}
      s.channel.abort(new Error(message))
    }
  })
}
