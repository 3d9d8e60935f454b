import { encodeVerifyMessage } from '@plexus/protocol'
import type { VerifyMessage } from '@plexus/protocol'
import type { Channel } from '@plexus/p2p'
import type { Verifier } from '../verifier.ts'

/** What one verify stream's message handlers share. */
export interface VerifyStream {
  readonly verifier: Verifier
  /** Verify sessions this stream's checks opened (closed with it). */
  readonly owned: Set<string>
  send: (m: VerifyMessage) => Promise<void>
}

export function verifyStream (verifier: Verifier, channel: Channel): VerifyStream {
  return { verifier, owned: new Set(), send: async (m) => { await channel.write(encodeVerifyMessage(m)) } }
}
