// One look at the swarm for the dashboard: every server the DHT knows, what each announces, a
// ping to each, and what verifiers published about them. Bounded: at most MAX_SERVERS peers
// asked, every request under a deadline, pings and reputation cached.
import type { PeerId } from '@libp2p/interface'
import { findServers, findVerifiers } from '../announce.ts'
import { fetchInfo } from '../info.ts'
import { getReputation } from '../reputation.ts'
import type { AnnouncementPayload } from '../announcement.ts'
import type { PlexusNode } from '../node.ts'
import type { ModelView, ServerView } from './view.ts'

/** Peers asked per look; a bigger swarm shows its first MAX_SERVERS servers. */
export const MAX_SERVERS = 128
/** What one view holds at most, whatever peers announce: models, servers in all, blocks of a model. */
const MAX_MODELS = 32
const MAX_ENTRIES = 512
const MAX_BLOCKS = 1024
/** Verifiers asked per model for reputation records. */
const MAX_VERIFIERS = 8
const PING_TTL_MS = 10_000
const PING_TIMEOUT_MS = 2000
const REPUTATION_TTL_MS = 60_000
const MISSING_REPUTATION_TTL_MS = 10_000
const LOOKUP_TIMEOUT_MS = 5000
const INFO_TIMEOUT_MS = 3000

export interface SwarmLookInit {
  /** This peer's own announcements (a node serving blocks), shown whatever the DHT says. */
  own?: () => Promise<AnnouncementPayload[]>
}

export class SwarmLook {
  private readonly node: PlexusNode
  private readonly init: SwarmLookInit
  private readonly pings = new Map<string, { at: number, ms?: number }>()
  private readonly reputations = new Map<string, { at: number, value?: ServerView['reputation'] }>()

  constructor (node: PlexusNode, init: SwarmLookInit = {}) {
    this.node = node
    this.init = init
  }

  async models (): Promise<ModelView[]> {
    const self = this.node.peerId.toString()
    const peers = (await findServers(this.node, { timeoutMs: LOOKUP_TIMEOUT_MS })).filter(p => p.toString() !== self).slice(0, MAX_SERVERS)
    const remote = await Promise.all(peers.map(async p => await this.ask(p)))
    const own = (await this.init.own?.().catch(() => [])) ?? []
    const all = [...own.map(a => ({ a, peerId: undefined })), ...remote.flat()].filter(({ a }) => a.numBlocks <= MAX_BLOCKS).slice(0, MAX_ENTRIES)
    const models = new Map<string, ModelView>()
    const pending: Array<Promise<void>> = []
    for (const { a, peerId } of all) {
      let m = models.get(a.modelId)
      if (m == null) {
        if (models.size >= MAX_MODELS) continue
        m = { id: a.modelId, name: a.modelName, numBlocks: a.numBlocks, coverage: new Array<number>(a.numBlocks).fill(0), servers: [], verifiers: 0 }
        models.set(a.modelId, m)
      }
      if (a.role === 'verifier' || a.numBlocks !== m.numBlocks) continue
      const s: ServerView = {
        peer: a.peer,
        start: a.start,
        end: a.end,
        backend: a.backend,
        format: a.format,
        throughput: a.throughput,
        sessions: a.capacity.sessions - a.capacity.freeSessions,
        maxSessions: a.capacity.sessions,
        version: a.version,
        offersHead: a.offersHead,
        self: a.peer === self,
        latencyMs: a.peer === self ? 0 : undefined
      }
      m.servers.push(s)
      for (let b = a.start; b < Math.min(a.end, m.numBlocks); b++) m.coverage[b]++
      if (peerId != null) pending.push(this.ping(peerId).then(ms => { s.latencyMs = ms }))
    }
    for (const m of models.values()) {
      m.servers.sort((x, y) => x.start - y.start || x.end - y.end || (x.peer < y.peer ? -1 : 1))
      pending.push(this.addReputation(m))
    }
    await Promise.all(pending)
    // a model only verifiers announce has no servers to show
    return [...models.values()].filter(m => m.servers.length > 0).sort((x, y) => x.name.localeCompare(y.name) || (x.id < y.id ? -1 : 1))
  }

  private async ask (peerId: PeerId): Promise<Array<{ a: AnnouncementPayload, peerId: PeerId }>> {
    try {
      const records = await fetchInfo(this.node, peerId, { signal: AbortSignal.timeout(INFO_TIMEOUT_MS) })
      return records.map(a => ({ a, peerId }))
    } catch {
      return []
    }
  }

  /** Round trip of a libp2p ping, cached for a while; undefined when the peer does not answer. */
  private async ping (peerId: PeerId): Promise<number | undefined> {
    const key = peerId.toString()
    const hit = this.pings.get(key)
    if (hit != null && Date.now() - hit.at < PING_TTL_MS) return hit.ms
    let ms: number | undefined
    try {
      ms = await this.node.services.ping.ping(peerId, { signal: AbortSignal.timeout(PING_TIMEOUT_MS) })
    } catch {}
    this.pings.set(key, { at: Date.now(), ms })
    prune(this.pings, MAX_SERVERS * 2)
    return ms
  }

  /** Sums what the model's verifiers published about each of its servers. */
  private async addReputation (m: ModelView): Promise<void> {
    let verifiers: PeerId[] = []
    try {
      verifiers = (await findVerifiers(this.node, m.id, { timeoutMs: LOOKUP_TIMEOUT_MS })).slice(0, MAX_VERIFIERS)
    } catch {}
    m.verifiers = verifiers.length
    if (verifiers.length === 0) return
    await Promise.all(m.servers.map(async s => {
      const key = `${m.id}/${s.peer}`
      const hit = this.reputations.get(key)
      // a record found is kept a minute; none found is asked for again sooner (it may be on its way)
      if (hit != null && Date.now() - hit.at < (hit.value != null ? REPUTATION_TTL_MS : MISSING_REPUTATION_TTL_MS)) { s.reputation = hit.value; return }
      const records = await Promise.all(verifiers.filter(v => v.toString() !== s.peer).map(async v => {
        try { return await getReputation(this.node, s.peer, v, { timeoutMs: LOOKUP_TIMEOUT_MS }) } catch { return undefined }
      }))
      const mine = records.filter(r => r != null && r.modelId === m.id)
      const value = mine.length === 0
        ? undefined
        : { passed: mine.reduce((n, r) => n + r!.passed, 0), failed: mine.reduce((n, r) => n + r!.failed, 0), verifiers: mine.length }
      this.reputations.set(key, { at: Date.now(), value })
      prune(this.reputations, MAX_SERVERS * 4)
      s.reputation = value
    }))
  }
}

/** Drops the oldest entries of a cache past `max`. */
function prune<V> (map: Map<string, V>, max: number): void {
  for (const k of map.keys()) {
    if (map.size <= max) return
    map.delete(k)
  }
}
