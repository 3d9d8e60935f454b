import type { RecheckMessage } from '@plexus/protocol'
import type { VerifyStream } from './verify-context.ts'

/** `recheck`: anyone may ask for a fraud report to be recomputed (a new computation takes one of the peer's turns). */
export async function handleRecheck (s: VerifyStream, msg: RecheckMessage): Promise<void> {
  await s.send(await s.verifier.recheck(msg.report, () => s.limits.enter('recheck', s.peer)))
}
