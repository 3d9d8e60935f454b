import { encodeVerifyMessage } from '@plexus/protocol'
import type { VerifyMessage } from '@plexus/protocol'
import type { Channel } from '@plexus/p2p'
import type { Verifier } from '../verifier.ts'
import type { VerifierPeerLimits } from '../verifier-peer-limits.ts'

/** What one verify stream's message handlers share. */
export interface VerifyStream {
  readonly verifier: Verifier
  /** The remote peer, and what it may have in progress across all its streams. */
  readonly peer: string
  readonly limits: VerifierPeerLimits
  /** Verify sessions this stream's checks opened (closed with it). */
  readonly owned: Set<string>
  send: (m: VerifyMessage) => Promise<void>
}

export function verifyStream (verifier: Verifier, channel: Channel, peer: string, limits: VerifierPeerLimits): VerifyStream {
  return { verifier, peer, limits, owned: new Set(), send: async (m) => { await channel.write(encodeVerifyMessage(m)) } }
}
