export const BUSY_BAN_MS = 2_000

/**
 * Peers that failed recently, banned with exponential backoff: a flaky server is retried
 * later rather than never, and a dead one stops costing a timeout per route.
 */
export class BanList {
  private readonly until = new Map<string, number>()
  private readonly strikes = new Map<string, number>()
  /** Peers whose current ban is only for being full. */
  private readonly busy = new Set<string>()
  private readonly baseMs: number
  private readonly maxMs: number
  private readonly now: () => number

  constructor (init: { baseMs?: number, maxMs?: number, now?: () => number } = {}) {
    this.baseMs = init.baseMs ?? 15_000
    this.maxMs = init.maxMs ?? 10 * 60_000
    this.now = init.now ?? Date.now
  }

  /** Peers caught lying (a confirmed fraud report): never used again by this client. */
  private readonly frauds = new Set<string>()

  /**
   * `busy` bans briefly without a strike: the server is healthy, just full. `fraud` bans for
   * good: a server that returned wrong outputs is not to be trusted again.
   */
  fail (peer: string, kind: 'failure' | 'busy' | 'fraud' = 'failure'): void {
    if (kind === 'fraud') { this.frauds.add(peer); this.busy.delete(peer); return }
    if (kind === 'busy') {
      this.until.set(peer, Math.max(this.until.get(peer) ?? 0, this.now() + BUSY_BAN_MS))
      this.busy.add(peer)
      return
    }
    this.busy.delete(peer)
    const n = (this.strikes.get(peer) ?? 0) + 1
    this.strikes.set(peer, n)
    this.until.set(peer, this.now() + Math.min(this.maxMs, this.baseMs * 2 ** (n - 1)))
  }

  succeed (peer: string): void { this.strikes.delete(peer) }

  isBanned (peer: string): boolean { return this.frauds.has(peer) || (this.until.get(peer) ?? 0) > this.now() }

  /** Caught lying, for good. */
  isFraud (peer: string): boolean { return this.frauds.has(peer) }

  /** Banned now, but only because it was full (it may have room again soon). */
  isBusy (peer: string): boolean { return this.isBanned(peer) && this.busy.has(peer) }
}
