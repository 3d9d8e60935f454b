// Keeps the swarm view current: this process's counters sampled every second (tokens/s), the
// swarm looked at again every few seconds while someone watches, recent routes from the caller.
import type { PlexusNode } from '../node.ts'
import type { AnnouncementPayload } from '../announcement.ts'
import { SwarmLook } from './swarm-look.ts'
import type { LocalView, ModelView, RouteView, DashboardView } from './view.ts'

/** What the process reports about itself each second. */
export interface LocalCounters {
  /** Monotonic count of tokens computed (node) or generated (gateway). */
  tokensTotal: number
  sessions: number
  serving?: LocalView['serving']
}

export interface DashboardSource {
  role: LocalView['role']
  version: string
  /** The swarm to look at (absent: a gateway over a local model). */
  node?: PlexusNode
  counters: () => LocalCounters | Promise<LocalCounters>
  routes?: () => RouteView[]
  /** This peer's own announcements (a serving node). */
  own?: () => Promise<AnnouncementPayload[]>
  /** How often the swarm is looked at again while a page is open, ms. Default 5000. */
  swarmRefreshMs?: number
}

const SAMPLE_MS = 1000
const HISTORY = 60
/** tokens/s is averaged over this many seconds: steps arrive in bursts. */
const RATE_WINDOW = 3

export class DashboardHub {
  private readonly source: DashboardSource
  private readonly look?: SwarmLook
  private readonly totals: Array<{ at: number, total: number }> = []
  private readonly history: number[] = []
  private counters: LocalCounters = { tokensTotal: 0, sessions: 0 }
  private models: ModelView[] = []
  private swarmAt = 0
  private swarmError?: string
  private refreshing?: Promise<void>
  private readonly timer: NodeJS.Timeout
  private readonly listeners = new Set<(view: DashboardView) => void>()

  constructor (source: DashboardSource) {
    this.source = source
    if (source.node != null) this.look = new SwarmLook(source.node, { own: source.own })
    this.timer = setInterval(() => { void this.tick() }, SAMPLE_MS)
    this.timer.unref()
    void this.tick()
  }

  /** Calls `fn` with a fresh view every second until the returned function is called. */
  subscribe (fn: (view: DashboardView) => void): () => void {
    this.listeners.add(fn)
    this.want()
    fn(this.view())
    return () => { this.listeners.delete(fn) }
  }

  get watchers (): number { return this.listeners.size }

  /** The view now; starts a look at the swarm if the last one is stale. */
  async current (): Promise<DashboardView> {
    this.want()
    if (this.swarmAt === 0) await this.refreshing
    return this.view()
  }

  view (): DashboardView {
    const node = this.source.node
    return {
      at: Date.now(),
      local: {
        role: this.source.role,
        peerId: node?.peerId.toString(),
        version: this.source.version,
        tokensPerSecond: this.history[this.history.length - 1] ?? 0,
        history: [...this.history],
        tokensTotal: this.counters.tokensTotal,
        sessions: this.counters.sessions,
        peers: node?.getConnections().length ?? 0,
        serving: this.counters.serving
      },
      models: this.models,
      swarmAt: this.swarmAt,
      ...(this.swarmError != null ? { swarmError: this.swarmError } : {}),
      routes: this.source.routes?.() ?? []
    }
  }

  private want (): void {
    const every = this.source.swarmRefreshMs ?? 5000
    if (this.look == null || this.refreshing != null || Date.now() - this.swarmAt < every) return
    this.refreshing = this.look.models().then(models => {
      this.models = models
      this.swarmError = undefined
    }, (err: Error) => {
      this.swarmError = err.message
    }).finally(() => {
      this.swarmAt = Date.now()
      this.refreshing = undefined
    })
  }

  private async tick (): Promise<void> {
    try {
      this.counters = await this.source.counters()
    } catch {
      return
    }
    const now = Date.now()
    this.totals.push({ at: now, total: this.counters.tokensTotal })
    while (this.totals.length > RATE_WINDOW + 1) this.totals.shift()
    const first = this.totals[0]
    const rate = now > first.at ? (this.counters.tokensTotal - first.total) / ((now - first.at) / 1000) : 0
    this.history.push(Math.max(0, Math.round(rate * 10) / 10))
    while (this.history.length > HISTORY) this.history.shift()
    // the swarm is looked at only while a page watches (or asked within the last refresh)
    if (this.listeners.size > 0) this.want()
    if (this.listeners.size === 0) return
    const view = this.view()
    for (const fn of this.listeners) {
      try { fn(view) } catch {}
    }
  }

  close (): void {
    clearInterval(this.timer)
    this.listeners.clear()
  }
}
