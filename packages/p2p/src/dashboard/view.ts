// The swarm as the dashboard shows it: one JSON "swarm view" that nodes and gateways both build.

/** One server of one model, as its signed announcement says and as this peer measured it. */
export interface ServerView {
  peer: string
  start: number
  end: number
  backend?: string
  format?: string
  /** Announced tokens/s per block. */
  throughput: number
  /** libp2p ping round trip from this peer, ms (undefined: not answered). */
  latencyMs?: number
  sessions: number
  maxSessions: number
  version: string
  offersHead: boolean
  /** This peer itself. */
  self: boolean
  /** Spot checks verifiers published about it (absent: no verifier record found). */
  reputation?: { passed: number, failed: number, verifiers: number }
}

export interface ModelView {
  id: string
  name: string
  numBlocks: number
  /** Servers per block. */
  coverage: number[]
  /** Sorted by first block. */
  servers: ServerView[]
  verifiers: number
}

/** One hop of a route: blocks [start, end) on `peer`. */
export interface HopView { peer: string, start: number, end: number }

export interface RouteView {
  /** ms since the epoch the generation started. */
  at: number
  model: string
  hops: HopView[]
  open: boolean
}

/** What this process is doing now. */
export interface LocalView {
  role: 'node' | 'gateway'
  peerId?: string
  version: string
  /** Tokens computed (node) or generated (gateway) per second, over the last few seconds. */
  tokensPerSecond: number
  /** One figure per second, oldest first (at most a minute). */
  history: number[]
  tokensTotal: number
  sessions: number
  peers: number
  serving?: { model: string, start: number, end: number }
}

export interface DashboardView {
  at: number
  local: LocalView
  models: ModelView[]
  /** ms since the epoch of the last look at the DHT (0: none yet). */
  swarmAt: number
  /** Why the last look failed, if it did. */
  swarmError?: string
  routes: RouteView[]
}
