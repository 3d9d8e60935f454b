// Routes of the last generations, for the dashboard: a route is read when shown, so a session
// repaired mid-generation shows its new hops.
import type { HopView, RouteView } from './view.ts'

const DEFAULT_KEEP = 20

interface Entry { at: number, model: string, hops: () => HopView[], open: boolean }

export class RouteLog {
  private readonly entries: Entry[] = []
  private readonly keep: number

  constructor (keep = DEFAULT_KEEP) { this.keep = keep }

  /** Records a generation's route; call the returned function when its session closes. */
  add (model: string, hops: () => HopView[]): () => void {
    const e: Entry = { at: Date.now(), model, hops, open: true }
    this.entries.push(e)
    while (this.entries.length > this.keep) this.entries.shift()
    return () => {
      // the last hops, kept after the session's own objects are gone
      const last = e.hops().map(h => ({ peer: h.peer, start: h.start, end: h.end }))
      e.hops = () => last
      e.open = false
    }
  }

  /** Newest first. */
  list (): RouteView[] {
    return this.entries.map(e => ({ at: e.at, model: e.model, hops: safe(e.hops), open: e.open })).reverse()
  }
}

function safe (hops: () => HopView[]): HopView[] {
  try { return hops().map(h => ({ peer: h.peer, start: h.start, end: h.end })) } catch { return [] }
}
