import { forwardInChunks, collectStepGarbage } from '@plexus/runtime'
import type { SpanRunner, SpanSession, ModelConfig } from '@plexus/runtime'
import { ProtocolError } from '@plexus/protocol'

export interface BlockBackendComponents {
  runner: SpanRunner
  config: ModelConfig
}

/** What one peer, one session and one step may make a node spend (docs/security.md). */
export interface SessionBudgets {
  /** Sessions one peer may hold open at once (default 16). */
  maxSessionsPerPeer?: number
  /** Share of the KV-cache budget one peer's sessions may reserve together (default 0.5). */
  maxPeerCacheShare?: number
  /** Tokens one step may carry (default 4096, and never more than the model's context). */
  maxStepTokens?: number
  /** A step runs as chunks of at most this many tokens, so its memory is linear in its tokens (default 256). */
  maxChunkTokens?: number
  /** Sessions with no step for this long are closed and their memory freed (default 5 min). */
  idleTimeoutMs?: number
  /** Sessions are closed this long after they opened, however busy (default 1 h). */
  maxLifetimeMs?: number
}

export interface BlockBackendInit extends SessionBudgets {
  modelId: string
  /** Most concurrent sessions. */
  maxSessions?: number
  /** KV-cache bytes all sessions together may reserve (keys + values at max length). */
  cacheBudgetBytes?: number
  /** Bytes per cached key or value: 4 (float32, the default) or 2 (an f16 cache on a GPU). */
  kvBytesPerValue?: number
  /** Deliberate faults, for testing verification; off unless set (see docs/operations.md). */
  faults?: FaultInjection
}

/**
 * A dishonest or lazy server, simulated: with probability `perturb.probability` per step, add
 * Gaussian noise of `perturb.scale` × the output's RMS; with `skip.probability`, return the input
 * as if the blocks had not been run (the cache still advances, so the session stays usable).
 */
export interface FaultInjection {
  perturb?: { probability: number, scale: number }
  skip?: { probability: number }
  random?: () => number
}

export function applyFaults (f: FaultInjection, input: Float32Array, output: Float32Array): Float32Array {
  const random = f.random ?? Math.random
  if (f.skip != null && random() < f.skip.probability) return input.slice()
  if (f.perturb != null && random() < f.perturb.probability) {
    let ss = 0
    for (let i = 0; i < output.length; i++) ss += output[i] * output[i]
    const sigma = f.perturb.scale * Math.sqrt(ss / output.length)
    const out = output.slice()
    for (let i = 0; i < out.length; i++) {
      // Box–Muller
      out[i] += sigma * Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random())
    }
    return out
  }
  return output
}

interface ServerSession {
  id: string
  start: number
  end: number
  maxLength: number
  reservedBytes: number
  span: SpanSession
  /** The peer that opened it (undefined: opened in-process, not counted per peer). */
  peer?: string
  opened: number
  /** Time of the last step: only steps keep a session alive (not truncates, not open streams). */
  lastUsed: number
  busy: boolean
}

/** Remembered closed ids, so a late step gets "closed" rather than "unknown". */
const CLOSED_MEMORY = 4096

/**
 * The blocks a node serves and the sessions on them: admission against a KV-cache budget,
 * step validation, idle expiry. Protocol handlers call it; it never touches the network.
 */
export class BlockBackend {
  readonly modelId: string
  readonly start: number
  readonly end: number
  readonly config: ModelConfig
  private readonly runner: SpanRunner
  private readonly sessions = new Map<string, ServerSession>()
  /** Closed ids and why they closed. */
  private readonly closed = new Map<string, string>()
  private readonly maxSessions: number
  private readonly cacheBudget: number
  private readonly kvBytesPerValue: number
  private readonly idleTimeoutMs: number
  private readonly maxLifetimeMs: number
  private readonly maxSessionsPerPeer: number
  private readonly peerCacheBudget: number
  /** Most tokens one step may carry (the session protocol sizes its frames by it). */
  readonly maxStepTokens: number
  private readonly maxChunkTokens: number
  private readonly faults?: FaultInjection
  private reserved = 0
  private inFlight = 0
  private draining = false
  private readonly sweeper: NodeJS.Timeout

  constructor (components: BlockBackendComponents, init: BlockBackendInit) {
    this.runner = components.runner
    this.config = components.config
    this.modelId = init.modelId
    this.start = this.runner.start
    this.end = this.runner.end
    this.maxSessions = init.maxSessions ?? 64
    this.cacheBudget = init.cacheBudgetBytes ?? 2 * 2 ** 30
    this.kvBytesPerValue = init.kvBytesPerValue ?? 4
    this.idleTimeoutMs = init.idleTimeoutMs ?? 5 * 60_000
    this.maxLifetimeMs = init.maxLifetimeMs ?? 60 * 60_000
    this.maxSessionsPerPeer = init.maxSessionsPerPeer ?? 16
    this.peerCacheBudget = Math.floor(this.cacheBudget * (init.maxPeerCacheShare ?? 0.5))
    this.maxStepTokens = Math.min(init.maxStepTokens ?? 4096, this.config.maxPositions)
    this.maxChunkTokens = init.maxChunkTokens ?? 256
    this.faults = init.faults
    const sweep = Math.max(50, Math.min(10_000, this.idleTimeoutMs / 2, this.maxLifetimeMs / 2))
    this.sweeper = setInterval(() => { void this.expireIdle() }, sweep).unref()
  }

  /** Bytes of keys and values one session of `maxLength` positions on `blocks` blocks can grow to. */
  cacheBytes (blocks: number, maxLength: number): number {
    return 2 * this.kvBytesPerValue * blocks * maxLength * this.config.numKvHeads * this.config.headDim
  }

  get sessionCount (): number { return this.sessions.size }
  get freeSessions (): number { return Math.max(0, this.maxSessions - this.sessions.size) }
  get reservedBytes (): number { return this.reserved }
  /** The open sessions and their blocks (for the dashboard). */
  openSessions (): Array<{ id: string, start: number, end: number }> {
    return [...this.sessions.values()].map(s => ({ id: s.id, start: s.start, end: s.end }))
  }

  /** Sessions and reserved KV bytes of one peer. */
  peerUsage (peer: string): { sessions: number, bytes: number } {
    let sessions = 0
    let bytes = 0
    for (const s of this.sessions.values()) if (s.peer === peer) { sessions++; bytes += s.reservedBytes }
    return { sessions, bytes }
  }

  async open (id: string, modelId: string, start: number, end: number, maxLength: number, peer?: string): Promise<ServerSession> {
    if (modelId !== this.modelId) throw new ProtocolError('not-served', `model ${modelId.slice(0, 12)} is not served here (this node serves ${this.modelId.slice(0, 12)})`)
    if (start < this.start || end > this.end || start >= end) {
      throw new ProtocolError('not-served', `blocks [${start}, ${end}) are not served here (this node serves [${this.start}, ${this.end}))`)
    }
    if (maxLength > this.config.maxPositions) throw new ProtocolError('too-long', `max length ${maxLength} exceeds the model's context of ${this.config.maxPositions}`)
    if (this.draining) throw new ProtocolError('busy', 'busy: this node is shutting down')
    if (this.sessions.has(id) || this.closed.has(id)) throw new ProtocolError('bad-request', `session ${id} already exists`)
    const bytes = this.cacheBytes(end - start, maxLength)
    if (this.sessions.size >= this.maxSessions) throw new ProtocolError('busy', `busy: ${this.sessions.size} sessions open (limit ${this.maxSessions})`)
    if (peer != null) {
      // `busy`, so an honest client tries another server; the message names the per-peer limit
      const used = this.peerUsage(peer)
      if (used.sessions >= this.maxSessionsPerPeer) throw new ProtocolError('busy', `busy: per-peer session limit: this peer holds ${used.sessions} sessions here (limit ${this.maxSessionsPerPeer})`)
      if (used.bytes + bytes > this.peerCacheBudget) {
        throw new ProtocolError('busy', `busy: per-peer KV limit: a session of ${maxLength} positions needs ${mib(bytes)}; this peer holds ${mib(used.bytes)} of its ${mib(this.peerCacheBudget)}`)
      }
    }
    if (this.reserved + bytes > this.cacheBudget) {
      throw new ProtocolError('busy', `busy: a session of ${maxLength} positions needs ${mib(bytes)} of KV cache, ${mib(this.cacheBudget - this.reserved)} free`)
    }
    this.reserved += bytes
    try {
      const span = await this.runner.open(maxLength, start, end)
      const now = Date.now()
      const s: ServerSession = { id, start, end, maxLength, reservedBytes: bytes, span, peer, opened: now, lastUsed: now, busy: false }
      this.sessions.set(id, s)
      return s
    } catch (err) {
      this.reserved -= bytes
      throw err
    }
  }

  has (id: string): boolean { return this.sessions.has(id) }
  /** Blocks `[start, end)` session `id` runs on. */
  sessionSpan (id: string): [number, number] { const s = this.get(id); return [s.start, s.end] }
  wasClosed (id: string): boolean { return this.closed.has(id) }

  get (id: string): ServerSession {
    const s = this.sessions.get(id)
    if (s != null) return s
    if (this.closed.has(id)) throw new ProtocolError('closed-session', `session ${id} is closed (${this.closed.get(id)!})`)
    throw new ProtocolError('unknown-session', `unknown session ${id}`)
  }

  /** `rewind`: positions from `position` on are dropped first (a truncate riding on the step). */
  async step (id: string, position: number, tokens: number, hidden: Float32Array, rewind = false): Promise<Float32Array> {
    const s = this.get(id)
    if (s.busy) throw new ProtocolError('bad-request', `session ${id} already has a step in flight`)
    if (position !== s.span.length && !(rewind && position < s.span.length)) throw new ProtocolError('bad-request', `position ${position} does not continue session ${id}, which holds ${s.span.length} positions`)
    if (tokens > this.maxStepTokens) throw new ProtocolError('too-long', `step of ${tokens} tokens exceeds the limit of ${this.maxStepTokens} tokens per step`)
    if (position + tokens > s.maxLength) throw new ProtocolError('too-long', `positions up to ${position + tokens} exceed the session's max length ${s.maxLength}`)
    if (Date.now() - s.opened > this.maxLifetimeMs) {
      await this.close(id, `it reached its lifetime of ${this.maxLifetimeMs / 1000} s`)
      this.get(id)
    }
    s.busy = true
    this.inFlight++
    try {
      if (position < s.span.length) await s.span.truncate(position)
      const out = await forwardInChunks(s.span, hidden, tokens, this.maxChunkTokens)
      return this.faults == null ? out : applyFaults(this.faults, hidden, out)
    } finally {
      s.busy = false
      this.inFlight--
      s.lastUsed = Date.now()
      // the step's frames and copies of its hidden states are dead now: don't let them pile up
      collectStepGarbage()
    }
  }

  async truncate (id: string, length: number): Promise<number> {
    const s = this.get(id)
    if (length > s.span.length) throw new ProtocolError('bad-request', `cannot truncate session ${id} to ${length}: it holds ${s.span.length} positions`)
    // no lastUsed refresh: a client sending only truncates must not keep a cache alive
    await s.span.truncate(length)
    return s.span.length
  }

  async close (id: string, why = 'closed by its client'): Promise<void> {
    const s = this.sessions.get(id)
    if (s == null) return
    this.sessions.delete(id)
    this.closed.set(id, why)
    if (this.closed.size > CLOSED_MEMORY) this.closed.delete(this.closed.values().next().value!)
    this.reserved -= s.reservedBytes
    await s.span.close()
  }

  async expireIdle (now = Date.now()): Promise<number> {
    let n = 0
    for (const s of [...this.sessions.values()]) {
      if (s.busy) continue
      if (now - s.opened > this.maxLifetimeMs) { await this.close(s.id, `it reached its lifetime of ${this.maxLifetimeMs / 1000} s`); n++ } else if (now - s.lastUsed > this.idleTimeoutMs) { await this.close(s.id, `no step for ${this.idleTimeoutMs / 1000} s`); n++ }
    }
    return n
  }

  /** Bytes of KV cache actually held now. */
  cacheBytesInUse (): number {
    let n = 0
    for (const s of this.sessions.values()) n += s.span.bytes
    return n
  }

  get stepsInFlight (): number { return this.inFlight }
  get isDraining (): boolean { return this.draining }

  /**
   * Stops admitting sessions and waits (up to `deadlineMs`) for steps already running to finish,
   * so no client loses a step's work; their next steps go elsewhere (route repair).
   */
  async drain (deadlineMs: number): Promise<void> {
    this.draining = true
    const until = Date.now() + deadlineMs
    while (this.inFlight > 0 && Date.now() < until) await new Promise(resolve => setTimeout(resolve, 20))
  }

  async dispose (): Promise<void> {
    clearInterval(this.sweeper)
    for (const id of [...this.sessions.keys()]) await this.close(id)
    await this.runner.dispose()
  }
}

function mib (n: number): string { return `${(n / 2 ** 20).toFixed(1)} MiB` }

/**
 * The backends one node runs (one per span it serves; two while it moves to a new span). The
 * session handler opens each session on the backend that serves the requested blocks.
 */
export class BackendSet {
  private readonly backends = new Set<BlockBackend>()

  static of (...backends: BlockBackend[]): BackendSet {
    const s = new BackendSet()
    for (const b of backends) s.add(b)
    return s
  }

  add (b: BlockBackend): void { this.backends.add(b) }
  delete (b: BlockBackend): void { this.backends.delete(b) }
  all (): BlockBackend[] { return [...this.backends] }

  /** The backend for a new session on `[start, end)` of `modelId`; a clear refusal otherwise. */
  pick (modelId: string, start: number, end: number): BlockBackend {
    const same = this.all().filter(b => b.modelId === modelId)
    if (same.length === 0) {
      const served = this.all().map(b => b.modelId.slice(0, 12)).join(', ') || 'nothing'
      throw new ProtocolError('not-served', `model ${modelId.slice(0, 12)} is not served here (this node serves ${served})`)
    }
    const fits = same.filter(b => b.start <= start && end <= b.end && start < end)
    if (fits.length === 0) {
      throw new ProtocolError('not-served', `blocks [${start}, ${end}) are not served here (this node serves ${same.map(b => `[${b.start}, ${b.end})`).join(', ')})`)
    }
    return fits.find(b => !b.isDraining) ?? fits[0]
  }

  /** The backend holding session `id`, or the unknown/closed error. */
  holder (id: string): BlockBackend {
    const all = this.all()
    for (const b of all) if (b.has(id)) return b
    for (const b of all) if (b.wasClosed(id)) b.get(id) // throws closed-session, saying why
    throw new ProtocolError('unknown-session', `unknown session ${id}`)
  }
}
