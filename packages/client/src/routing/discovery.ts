import { peerIdFromString } from '@libp2p/peer-id'
import type { PeerId } from '@libp2p/interface'
import { discoverServers, discoverVerifiers, findServers, fetchInfo, dhtPeerCount } from '@plexus/p2p'
import type { PlexusNode, AnnouncementPayload } from '@plexus/p2p'
import { PlexusError } from '@plexus/runtime'
import type { ServerCandidate } from './route.ts'
import type { CandidateSource } from '../inference/swarm-session.ts'
import type { VerifierSource, VerifierCandidate } from '../inference/auditor.ts'
import { ObservedThroughput } from './observed-throughput.ts'
import type { StepTiming } from './observed-throughput.ts'

export interface DiscoveryInit {
  modelId: string
  numBlocks: number
  /** Deadline for one DHT lookup round. */
  lookupTimeoutMs?: number
  /** Deadline for asking one server what it serves. */
  infoTimeoutMs?: number
  /** Reuse a lookup for this long unless a refresh is asked for. */
  cacheMs?: number
}

/** A verified announcement plus what this client measured about its server. */
export interface ServerInfo extends ServerCandidate {
  announcement: AnnouncementPayload
}

/** The live servers of a model (`discoverServers`), cached briefly, as routing candidates. */
export class SwarmDiscovery implements CandidateSource {
  private readonly node: PlexusNode
  private readonly init: DiscoveryInit
  private cached?: { at: number, servers: ServerInfo[] }
  private readonly peers = new Map<string, PeerId>()

  constructor (components: { node: PlexusNode }, init: DiscoveryInit) {
    this.node = components.node
    this.init = init
  }

  target (peer: string): unknown {
    return this.peers.get(peer) ?? peerIdFromString(peer)
  }

  addrs (peer: string): string[] {
    return this.cached?.servers.find(s => s.peer === peer)?.announcement.addrs ?? []
  }

  /** What this client measured of the servers' decode steps. */
  readonly observed = new ObservedThroughput()

  /** The servers, with the throughput routing should assume (measured, or announced and capped). */
  async candidates (opts: { refresh?: boolean } = {}): Promise<ServerCandidate[]> {
    const servers = await this.servers(opts)
    const throughput = this.observed.effective(servers)
    return servers.map((s, i) => ({ ...s, throughput: throughput[i] }))
  }

  /** The hops of one decode step (one token), as timed by the session. */
  observeStep (timings: StepTiming[]): void {
    for (const t of timings) {
      const rtt = this.cached?.servers.find(s => s.peer === t.peer)?.rttMs ?? 0
      this.observed.observe(t, rtt)
    }
  }

  async servers (opts: { refresh?: boolean } = {}): Promise<ServerInfo[]> {
    const ttl = this.init.cacheMs ?? 30_000
    if (opts.refresh !== true && this.cached != null && Date.now() - this.cached.at < ttl) return this.cached.servers
    // Sessions opening together share one lookup: many parallel DHT queries from one node
    // overrun the peers' stream limits and come back empty.
    this.inflight ??= this.lookup().finally(() => { this.inflight = undefined })
    return await this.inflight
  }

  private inflight?: Promise<ServerInfo[]>

  private async lookup (): Promise<ServerInfo[]> {
    await connectedToSwarm(this.node)
    const found = await discoverServers(this.node, {
      modelId: this.init.modelId, numBlocks: this.init.numBlocks, lookupTimeoutMs: this.init.lookupTimeoutMs, infoTimeoutMs: this.init.infoTimeoutMs
    })
    const servers = found.map(({ peerId, peer, announcement: a, rttMs }) => {
      this.peers.set(peer, peerId)
      return { peer, start: a.start, end: a.end, throughput: a.throughput, rttMs, announcement: a }
    })
    this.cached = { at: Date.now(), servers }
    return servers
  }
}

export interface ModelListing {
  modelId: string
  name: string
  numBlocks: number
  /** Servers per block. */
  coverage: number[]
  servers: number
  offersHead: boolean
  /** How its servers hold the weights (f32, bf16, q8_0 …), and what computes them (webgpu, wasm …). */
  formats: string[]
  backends: string[]
}

/** Every model the reachable servers announce, with how many servers hold each block. */
export async function listModels (node: PlexusNode, opts: { timeoutMs?: number } = {}): Promise<ModelListing[]> {
  const peers = await findServers(node, { timeoutMs: opts.timeoutMs ?? 10_000 })
  const records = (await Promise.all(peers.map(async p => {
    try { return await fetchInfo(node, p, { signal: AbortSignal.timeout(5000) }) } catch { return [] }
  }))).flat()
  const models = new Map<string, ModelListing>()
  for (const a of records) {
    let m = models.get(a.modelId)
    if (m == null) {
      m = { modelId: a.modelId, name: a.modelName, numBlocks: a.numBlocks, coverage: new Array(a.numBlocks).fill(0), servers: 0, offersHead: false, formats: [], backends: [] }
      models.set(a.modelId, m)
    }
    if (a.format != null && !m.formats.includes(a.format)) m.formats.push(a.format)
    if (a.backend != null && !m.backends.includes(a.backend)) m.backends.push(a.backend)
    m.servers++
    m.offersHead ||= a.offersHead
    for (let b = a.start; b < Math.min(a.end, m.numBlocks); b++) m.coverage[b]++
  }
  return [...models.values()].sort((x, y) => x.name.localeCompare(y.name))
}

/** A client that cannot reach the swarm at all (rather than a swarm where nobody serves a block). */
export class SwarmUnreachableError extends PlexusError {
  constructor (message: string) { super('swarm-unreachable', message, { httpStatus: 503 }); this.name = 'SwarmUnreachableError' }
}

/**
 * Waits (≤ `timeoutMs`) for a DHT peer: a node that lost its connections re-dials its bootstrap
 * peers by itself. Without one every lookup would come back empty and read as "nobody serves
 * these blocks"; say what is really wrong instead.
 */
export async function connectedToSwarm (node: PlexusNode, timeoutMs = 5000): Promise<void> {
  const until = Date.now() + timeoutMs
  while (!(dhtPeerCount(node) > 0 && node.getConnections().length > 0)) {
    if (Date.now() > until) throw new SwarmUnreachableError(`not connected to the swarm: no DHT peer reachable for ${timeoutMs / 1000} s (are the bootstrap peers up and reachable?)`)
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}

/** The live verifiers of a model (`discoverVerifiers`), cached briefly. */
export class SwarmVerifiers implements VerifierSource {
  private readonly node: PlexusNode
  private readonly init: DiscoveryInit
  private cached?: { at: number, verifiers: VerifierCandidate[] }
  private inflight?: Promise<VerifierCandidate[]>
  private readonly peers = new Map<string, PeerId>()

  constructor (components: { node: PlexusNode }, init: DiscoveryInit) {
    this.node = components.node
    this.init = init
  }

  target (peer: string): unknown { return this.peers.get(peer) ?? peerIdFromString(peer) }

  async verifiers (opts: { refresh?: boolean } = {}): Promise<VerifierCandidate[]> {
    const ttl = this.init.cacheMs ?? 30_000
    if (opts.refresh !== true && this.cached != null && Date.now() - this.cached.at < ttl) return this.cached.verifiers
    this.inflight ??= connectedToSwarm(this.node).then(async () => await discoverVerifiers(this.node, { modelId: this.init.modelId, numBlocks: this.init.numBlocks, lookupTimeoutMs: this.init.lookupTimeoutMs, infoTimeoutMs: this.init.infoTimeoutMs }))
      .then(found => {
        const verifiers = found.map(({ peerId, peer, announcement: a }) => { this.peers.set(peer, peerId); return { peer, start: a.start, end: a.end } })
        this.cached = { at: Date.now(), verifiers }
        return verifiers
      })
      .finally(() => { this.inflight = undefined })
    return await this.inflight
  }
}
