import type { TruncateMessage } from '@plexus/protocol'
import type { SessionStream } from './session-context.ts'

/** `truncate`: drops cached positions from `length` on (a rejected speculative draft). */
export async function handleTruncate (s: SessionStream, msg: TruncateMessage): Promise<void> {
  const length = await s.own(msg.sessionId).truncate(msg.sessionId, msg.length)
  await s.send({ type: 'truncated', sessionId: msg.sessionId, length })
}
