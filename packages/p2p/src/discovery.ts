import type { PeerId } from '@libp2p/interface'
import { findBlockHolders, findServers, findVerifiers, verifiersCid } from './announce.ts'
import { fetchInfo } from './info.ts'
import type { AnnouncementPayload } from './announcement.ts'
import type { PlexusNode } from './node.ts'

export interface DiscoverOptions {
  modelId: string
  numBlocks: number
  /** Deadline of each DHT lookup. Default 10 s. */
  lookupTimeoutMs?: number
  /** Deadline for asking one server what it serves. Default 5 s. */
  infoTimeoutMs?: number
  /** Peers not to ask (e.g. ourselves). */
  exclude?: Set<string>
}

/** A live server of a model: its verified announcement and the round trip of asking for it. */
export interface DiscoveredServer {
  peerId: PeerId
  peer: string
  announcement: AnnouncementPayload
  rttMs: number
}

/**
 * The live servers of a model: provider records of every block (DHT), then each candidate's
 * signed announcement over the info protocol. A peer that is gone fails that request and drops
 * out at once, whatever stale provider records say. Used by clients (routing) and by servers
 * (choosing and rebalancing their blocks).
 */
export async function discoverServers (node: PlexusNode, opts: DiscoverOptions): Promise<DiscoveredServer[]> {
  const blocks = Array.from({ length: opts.numBlocks }, (_, i) => i)
  const holders = await findBlockHolders(node, opts.modelId, blocks, { perBlockTimeoutMs: opts.lookupTimeoutMs ?? 10_000 })
  const unique = new Map<string, PeerId>()
  for (const list of holders.values()) for (const p of list) if (opts.exclude?.has(p.toString()) !== true) unique.set(p.toString(), p)
  // A block's provider records may not have reached the peers this lookup asked yet (a server
  // that just started): every server also provides the models key, so ask that too then.
  if ([...holders.values()].some(list => list.length === 0)) {
    try {
      for (const p of await findServers(node, { timeoutMs: opts.lookupTimeoutMs ?? 10_000 })) {
        if (opts.exclude?.has(p.toString()) !== true) unique.set(p.toString(), p)
      }
    } catch {}
  }
  return (await askEach(node, [...unique.values()], opts)).filter(d => d.announcement.role !== 'verifier')
}

/** The live verifiers of a model, with the blocks each re-computes. */
export async function discoverVerifiers (node: PlexusNode, opts: DiscoverOptions): Promise<DiscoveredServer[]> {
  const peers = (await findVerifiers(node, opts.modelId, { timeoutMs: opts.lookupTimeoutMs ?? 10_000 })).filter(p => opts.exclude?.has(p.toString()) !== true)
  return (await askEach(node, peers, opts)).filter(d => d.announcement.role === 'verifier')
}

/** Each peer's signed announcements of this model; a peer that does not answer drops out. */
async function askEach (node: PlexusNode, peers: PeerId[], opts: DiscoverOptions): Promise<DiscoveredServer[]> {
  const found = await Promise.all(peers.map(async (peerId): Promise<DiscoveredServer[]> => {
    try {
      const t0 = performance.now()
      const records = await fetchInfo(node, peerId, { signal: AbortSignal.timeout(opts.infoTimeoutMs ?? 5000) })
      const rttMs = performance.now() - t0
      return records
        .filter(a => a.modelId === opts.modelId && a.numBlocks === opts.numBlocks)
        .map(announcement => ({ peerId, peer: peerId.toString(), announcement, rttMs }))
    } catch {
      return []
    }
  }))
  return found.flat()
}

export { verifiersCid }
