import type { GetReportMessage } from '@plexus/protocol'
import type { VerifyStream } from './verify-context.ts'

/** `get-report`: the evidence behind a reputation record, for a client to re-check before believing it. */
export async function handleGetReport (s: VerifyStream, msg: GetReportMessage): Promise<void> {
  const report = s.verifier.reports.get(msg.digest)
  await s.send({ type: 'report', digest: msg.digest, found: report != null, ...(report != null ? { report } : {}) })
}
