// Trust levels: how much a client checks the servers of a swarm. One list and one parser for the
// CLIs' --trust and the gateway's X-Plexus-Trust header.
import { PlexusError } from './errors.ts'

/** `fast`: no checks; `verified`: spot checks with rollback; `attested`: hardware attestation (not yet). */
export type TrustLevel = 'fast' | 'verified' | 'attested'
export const TRUST_LEVELS: readonly TrustLevel[] = ['fast', 'verified', 'attested']
/** The levels this build can honour. */
export type SupportedTrust = Exclude<TrustLevel, 'attested'>

/**
 * `trust-level`: not a trust level (400); `trust-unsupported`: a level this client cannot honour
 * at all (501); `trust-unavailable`: the swarm cannot honour it now, e.g. no verifier (503).
 */
export type TrustErrorCode = 'trust-level' | 'trust-unsupported' | 'trust-unavailable'
const STATUS: Record<TrustErrorCode, number> = { 'trust-level': 400, 'trust-unsupported': 501, 'trust-unavailable': 503 }

export class TrustError extends PlexusError {
  declare readonly code: TrustErrorCode
  constructor (code: TrustErrorCode, message: string) { super(code, message, { httpStatus: STATUS[code] }); this.name = 'TrustError' }
}

/** A trust level from a flag or header (`where` names it in the message), refusing the ones this build cannot honour. */
export function parseTrust (raw: string | undefined, where = '--trust'): SupportedTrust {
  const t = (raw ?? 'fast').trim().toLowerCase()
  if (t === 'fast' || t === 'verified') return t
  if (t === 'attested') {
    throw new TrustError('trust-unsupported', `${where} attested is not supported yet: it needs hardware attestation of the servers (TEE quotes), which Plexus does not implement; use verified (spot checks) or fast`)
  }
  throw new TrustError('trust-level', `${where} must be fast, verified or attested (got ${JSON.stringify(raw)})`)
}
