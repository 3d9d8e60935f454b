import { PlexusError } from '@plexus/runtime'

/** A server as routing sees it: what it serves and how fast it is expected to be. */
export interface ServerCandidate {
  peer: string
  start: number
  end: number
  /** Announced tokens/s per block for one session's decode step (higher is faster). */
  throughput: number
  /** Measured round-trip time to the server, ms (network cost of one hop). */
  rttMs: number
}

/** One hop of a route: blocks `[start, end)` on `peer`. */
export interface Hop { peer: string, start: number, end: number }

export interface Route {
  hops: Hop[]
}

/** No server (left) holds some blocks: a swarm condition, worth a retry (503). */
export class NoRouteError extends PlexusError {
  readonly missing: Array<[number, number]>
  constructor (message: string, missing: Array<[number, number]>) {
    super('no-route', message, { httpStatus: 503 })
    this.name = 'NoRouteError'
    this.missing = missing
  }
}

/** Block ranges `[a, b)` within `[from, to)` that no candidate serves. */
export function uncovered (candidates: ServerCandidate[], from: number, to: number): Array<[number, number]> {
  const covered = new Array<boolean>(to - from).fill(false)
  for (const c of candidates) for (let b = Math.max(c.start, from); b < Math.min(c.end, to); b++) covered[b - from] = true
  const gaps: Array<[number, number]> = []
  for (let b = from; b < to; b++) {
    if (covered[b - from]) continue
    if (gaps.length > 0 && gaps[gaps.length - 1][1] === b) gaps[gaps.length - 1][1] = b + 1
    else gaps.push([b, b + 1])
  }
  return gaps
}

export function describeBlocks ([a, b]: [number, number]): string {
  return b - a === 1 ? `block ${a}` : `blocks ${a}–${b - 1}`
}

/** Expected seconds one hop adds to a step: its round trip plus its compute. */
export function hopCost (c: ServerCandidate, blocks: number): number {
  return c.rttMs / 1000 + blocks / Math.max(c.throughput, 1e-6)
}

/**
 * The route through `[from, to)` with the least expected step latency: Dijkstra over block
 * boundaries, where a server serving `[s, e)` offers an edge `a → b` for every `s ≤ a < b ≤ e`
 * (so overlapping spans can hand over anywhere). Like Petals' `min_latency` routing, but a hop
 * may also end early when a faster server takes over.
 */
export function findRoute (candidates: ServerCandidate[], from: number, to: number, modelName = 'the model'): Route {
  const gaps = uncovered(candidates, from, to)
  if (gaps.length > 0) {
    throw new NoRouteError(`no peer serves ${gaps.map(describeBlocks).join(', ')} of ${modelName}`, gaps)
  }
  const n = to - from + 1
  const dist = new Array<number>(n).fill(Infinity)
  const prev = new Array<{ at: number, c: ServerCandidate } | undefined>(n)
  const done = new Array<boolean>(n).fill(false)
  dist[0] = 0
  // n is at most a few hundred boundaries: a linear scan for the minimum is fine.
  for (;;) {
    let u = -1
    for (let i = 0; i < n; i++) if (!done[i] && dist[i] < Infinity && (u < 0 || dist[i] < dist[u])) u = i
    if (u < 0 || u === n - 1) break
    done[u] = true
    const a = from + u
    for (const c of candidates) {
      if (c.start > a || c.end <= a) continue
      for (let b = a + 1; b <= Math.min(c.end, to); b++) {
        const d = dist[u] + hopCost(c, b - a)
        if (d < dist[b - from]) { dist[b - from] = d; prev[b - from] = { at: u, c } }
      }
    }
  }
  const hops: Hop[] = []
  for (let v = n - 1; v > 0;) {
    const p = prev[v]!
    hops.unshift({ peer: p.c.peer, start: from + p.at, end: from + v })
    v = p.at
  }
  return { hops }
}
