import type { CloseMessage } from '@plexus/protocol'
import type { SessionStream } from './session-context.ts'

/** `close`: frees the session's cache (and its forward stream); no answer. */
export async function handleClose (s: SessionStream, msg: CloseMessage): Promise<void> {
  const backend = s.own(msg.sessionId)
  s.owned.delete(msg.sessionId)
  await s.routes.remove(msg.sessionId)
  await backend.close(msg.sessionId)
}
