// Servers announce their own throughput, and nothing stops one from announcing 1e9 tokens/s to
// draw every route through itself. Routing therefore uses what this client measured of each
// server (wall time of its decode steps, less the round trip), and caps the figures of servers
// it has not measured yet.

export interface StepTiming { peer: string, start: number, end: number, wallMs: number }

/** Peers whose measurements are kept (the least recently measured is forgotten first). */
const MAX_PEERS = 4096
/** Weight of a new step in the running average. */
const ALPHA = 0.3

export class ObservedThroughput {
  private readonly measured = new Map<string, number>()

  /** Tokens/s per block this client measured of `peer` (undefined before its first decode step). */
  of (peer: string): number | undefined { return this.measured.get(peer) }

  /** One decode step (one token) through `peer`'s blocks took `wallMs`, of which `rttMs` was the network. */
  observe (t: StepTiming, rttMs: number): void {
    const blocks = t.end - t.start
    if (!(blocks > 0) || !(t.wallMs > 0)) return
    const seconds = Math.max((t.wallMs - rttMs) / 1000, 1e-4)
    const now = blocks / seconds
    const before = this.measured.get(t.peer)
    this.measured.delete(t.peer)
    this.measured.set(t.peer, before == null ? now : before + ALPHA * (now - before))
    while (this.measured.size > MAX_PEERS) this.measured.delete(this.measured.keys().next().value!)
  }

  /**
   * What routing should assume of each server: its measured throughput, else its announced
   * one capped at the larger of the median announced figure and the best measured one (a
   * stranger's claim weighs no more than the swarm's typical server or the fastest seen).
   */
  effective (servers: Array<{ peer: string, throughput: number }>): number[] {
    const announced = servers.map(s => s.throughput).filter(t => Number.isFinite(t) && t > 0).sort((a, b) => a - b)
    const median = announced.length > 0 ? announced[Math.floor((announced.length - 1) / 2)] : 0
    const best = Math.max(0, ...[...this.measured.values()])
    const ceiling = Math.max(median, best)
    return servers.map(s => this.measured.get(s.peer) ?? Math.min(Number.isFinite(s.throughput) ? s.throughput : 0, ceiling))
  }
}
