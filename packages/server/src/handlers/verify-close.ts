import type { VerifyCloseMessage } from '@plexus/protocol'
import type { VerifyStream } from './verify-context.ts'

/** `close`: ends one verify session of this stream; no answer. */
export async function handleVerifyClose (s: VerifyStream, msg: VerifyCloseMessage): Promise<void> {
  if (s.owned.delete(msg.verifyId)) await s.verifier.close(msg.verifyId)
}
