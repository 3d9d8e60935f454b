import type { AttachMessage } from '@plexus/protocol'
import type { SessionStream } from './session-context.ts'

/** `attach`: the previous hop of a forwarded route feeds the session over this stream. */
export async function handleAttach (s: SessionStream, msg: AttachMessage): Promise<void> {
  s.routes.attach(msg.sessionId, s.peer)
  s.fed.add(msg.sessionId)
  await s.send({ type: 'attached', sessionId: msg.sessionId })
}
