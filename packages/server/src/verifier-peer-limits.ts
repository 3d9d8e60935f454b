import { VerifyError } from '@plexus/protocol'

// A verifier's work per remote peer: checks and re-checks cost compute and memory, so one peer
// (with many streams) may have only a few in progress at once; the rest are refused busy.

export const DEFAULT_MAX_CHECKS_PER_PEER = 4
export const DEFAULT_MAX_RECHECKS_PER_PEER = 1

export type VerifierWork = 'check' | 'recheck'

export interface VerifierPeerLimitsInit {
  /** Checks one peer may have in progress at once (all its streams). Default 4. */
  maxChecksPerPeer?: number
  /** Re-checks one peer may have in progress at once. Default 1. */
  maxRechecksPerPeer?: number
}

export class VerifierPeerLimits {
  private readonly max: Record<VerifierWork, number>
  private readonly running: Record<VerifierWork, Map<string, number>> = { check: new Map(), recheck: new Map() }

  constructor (init: VerifierPeerLimitsInit = {}) {
    this.max = { check: init.maxChecksPerPeer ?? DEFAULT_MAX_CHECKS_PER_PEER, recheck: init.maxRechecksPerPeer ?? DEFAULT_MAX_RECHECKS_PER_PEER }
    for (const [work, n] of Object.entries(this.max)) {
      if (!(Number.isInteger(n) && n >= 1)) throw new RangeError(`${work}s per peer: ${n} (expected an integer ≥ 1)`)
    }
  }

  /** In progress now for `peer`. */
  count (work: VerifierWork, peer: string): number { return this.running[work].get(peer) ?? 0 }

  /** Takes a slot for `peer` (busy when it has none left); returns the function that frees it (once). */
  enter (work: VerifierWork, peer: string): () => void {
    const map = this.running[work]
    const n = map.get(peer) ?? 0
    if (n >= this.max[work]) {
      throw new VerifyError('busy', `busy: peer ${peer} already has ${n} ${work}s in progress here (the per-peer ${work} limit is ${this.max[work]})`)
    }
    map.set(peer, n + 1)
    let done = false
    return () => {
      if (done) return
      done = true
      const left = (map.get(peer) ?? 1) - 1
      if (left > 0) map.set(peer, left); else map.delete(peer)
    }
  }

  /** Runs `fn` in a slot of `peer`'s. */
  async run<T> (work: VerifierWork, peer: string, fn: () => Promise<T>): Promise<T> {
    const leave = this.enter(work, peer)
    try { return await fn() } finally { leave() }
  }
}
