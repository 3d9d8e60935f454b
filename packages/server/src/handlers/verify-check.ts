import { VerifyError } from '@plexus/protocol'
import type { CheckMessage } from '@plexus/protocol'
import type { VerifyStream } from './verify-context.ts'

/** `check`: recomputes a hop's committed steps; a verify session lives as long as its stream. */
export async function handleCheck (s: VerifyStream, msg: CheckMessage): Promise<void> {
  if (!s.owned.has(msg.verifyId) && s.verifier.has(msg.verifyId)) throw new VerifyError('bad-request', `verify session ${msg.verifyId} belongs to another stream`)
  // counted before the session is taken: a refused check leaves nothing behind
  const verdict = await s.limits.run('check', s.peer, async () => {
    s.owned.add(msg.verifyId)
    return await s.verifier.check(msg)
  })
  if (!verdict.ok) s.owned.delete(msg.verifyId)
  await s.send(verdict)
}
