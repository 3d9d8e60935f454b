import { fetchInfo } from '@plexus/p2p'
import type { PlexusNode } from '@plexus/p2p'

/** Whether a peer is a server of a model's blocks: what a verifier asks before it checks (or tallies) that peer. */
export interface ServerDirectory {
  announces (peer: string, modelId: string, start: number, end: number): Promise<boolean>
}

export interface AnnouncedServersInit {
  /** Deadline of asking one peer what it serves. Default 3 s. */
  infoTimeoutMs?: number
  /** How long an answer is reused: yes (default 60 s), no (default 10 s). */
  positiveTtlMs?: number
  negativeTtlMs?: number
  /** Peers remembered at once (default 4,096); lookups at once (default 8, more wait). */
  maxPeers?: number
  maxLookups?: number
}

interface Entry { at: number, spans: Array<{ modelId: string, start: number, end: number }> | undefined }

/**
 * Asks a peer for its signed announcements (the info protocol) and remembers the spans it
 * serves. A check can name any peer id as its "server": commitments signed by a throwaway key
 * would otherwise cost the verifier compute and make it publish reputation about made-up ids.
 * Bounded: answers are cached per peer (LRU, `maxPeers`), and lookups run `maxLookups` at once.
 */
export class AnnouncedServers implements ServerDirectory {
  private readonly node: PlexusNode
  private readonly init: AnnouncedServersInit
  private readonly cache = new Map<string, Entry>()
  private readonly inflight = new Map<string, Promise<Entry>>()
  private running = 0
  private readonly waiting: Array<() => void> = []

  constructor (node: PlexusNode, init: AnnouncedServersInit = {}) {
    this.node = node
    this.init = init
  }

  async announces (peer: string, modelId: string, start: number, end: number): Promise<boolean> {
    const entry = await this.lookup(peer)
    return entry.spans?.some(s => s.modelId === modelId && s.start <= start && s.end >= end) === true
  }

  private async lookup (peer: string): Promise<Entry> {
    const hit = this.cache.get(peer)
    if (hit != null && Date.now() - hit.at < (hit.spans != null ? this.init.positiveTtlMs ?? 60_000 : this.init.negativeTtlMs ?? 10_000)) return hit
    let p = this.inflight.get(peer)
    if (p == null) {
      p = this.ask(peer).finally(() => { this.inflight.delete(peer) })
      this.inflight.set(peer, p)
    }
    return await p
  }

  private async ask (peer: string): Promise<Entry> {
    if (this.running >= (this.init.maxLookups ?? 8)) await new Promise<void>(resolve => { this.waiting.push(resolve) })
    this.running++
    let spans: Entry['spans']
    try {
      const records = await fetchInfo(this.node, peer, { timeoutMs: this.init.infoTimeoutMs ?? 3000 })
      spans = records.filter(r => r.role !== 'verifier').map(r => ({ modelId: r.modelId, start: r.start, end: r.end }))
      if (spans.length === 0) spans = undefined
    } catch {
      spans = undefined
    } finally {
      this.running--
      this.waiting.shift()?.()
    }
    const entry = { at: Date.now(), spans }
    this.cache.delete(peer)
    this.cache.set(peer, entry)
    while (this.cache.size > (this.init.maxPeers ?? 4096)) this.cache.delete(this.cache.keys().next().value!)
    return entry
  }
}
