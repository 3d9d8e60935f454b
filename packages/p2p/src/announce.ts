import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { sha256 } from 'multiformats/hashes/sha2'
import { dhtPeerCount } from './node.ts'
import type { PlexusNode } from './node.ts'
import type { Logger, PeerId } from '@libp2p/interface'

/**
 * Discovery through DHT provider records: a server provides one CID per block it holds plus the
 * swarm-wide "models" CID; a client looks up block CIDs to find every holder of a block.
 * Provider records carry no metadata and no freshness, so a client must ask each candidate
 * for its signed announcement (info.ts) before routing through it.
 *
 * findProviders stops once it has found k providers (k = kBucketSize of the *asking* node,
 * default 20): in a swarm where more than 20 servers hold a block, create the client node
 * with a larger `kBucketSize` (e.g. 256) to see all of them.
 */

const enc = new TextEncoder()
const MODEL_ID = /^[0-9a-f]{64}$/

/** CIDv1(raw, sha256("plexus/<modelId>/<block>")): the provider key of one block of one model. */
export async function blockCid (modelId: string, block: number): Promise<CID> {
  if (!MODEL_ID.test(modelId)) throw new Error(`bad model id "${modelId}": expected 64 lowercase hex digits`)
  if (!Number.isSafeInteger(block) || block < 0) throw new Error(`bad block index ${block}`)
  return CID.createV1(raw.code, await sha256.digest(enc.encode(`plexus/${modelId}/${block}`)))
}

/** CIDv1(raw, sha256("plexus/models")): provided by every server, whatever it serves. */
export async function modelsCid (): Promise<CID> {
  return CID.createV1(raw.code, await sha256.digest(enc.encode('plexus/models')))
}

/** CIDv1(raw, sha256("plexus/verifiers/<modelId>")): provided by the verifiers of a model. */
export async function verifiersCid (modelId: string): Promise<CID> {
  if (!MODEL_ID.test(modelId)) throw new Error(`bad model id "${modelId}": expected 64 lowercase hex digits`)
  return CID.createV1(raw.code, await sha256.digest(enc.encode(`plexus/verifiers/${modelId}`)))
}

/** Resolves once the routing table holds `minPeers` peers; rejects when `signal` fires. */
export async function waitForDhtPeers (node: PlexusNode, opts: { minPeers?: number, signal: AbortSignal }): Promise<void> {
  const min = opts.minPeers ?? 1
  while (dhtPeerCount(node) < min) {
    opts.signal.throwIfAborted()
    await sleep(50, opts.signal)
  }
}

export interface AnnouncerComponents {
  node: PlexusNode
}

export interface AnnouncerInit {
  modelId: string
  /** Served blocks are [start, end). */
  start: number
  end: number
  /** How often to provide again; must stay below the node's providerValidityMs. Default 60 s. */
  refreshMs?: number
  /** Deadline of one provide. Default 30 s. */
  provideTimeoutMs?: number
  /** Provides run in parallel up to this many. Default 8. */
  concurrency?: number
  /**
   * 'server' (default) provides every block's key and the models key; 'verifier' only the
   * model's verifiers key, so that clients never route sessions through it.
   */
  role?: 'server' | 'verifier'
}

export interface AnnounceRound {
  /**
   * CIDs sent to at least one other peer (in a node's first successful round: and seen
   * stored there by a lookup).
   */
  provided: number
  /** CIDs that reached no peer (no DHT peers yet, timeouts, errors). */
  unreached: number
  ms: number
}

/** Longest pause between rounds while some records reach no peer. */
const MAX_RETRY_MS = 4000

/** Keeps provider records for a span of blocks (and the models CID) alive in the DHT. */
export class Announcer {
  private readonly node: PlexusNode
  private readonly init: Required<Omit<AnnouncerInit, 'role'>> & Pick<AnnouncerInit, 'role'>
  private readonly log: Logger
  private cids: CID[] = []
  private controller?: AbortController
  private timer?: ReturnType<typeof setTimeout>
  private running?: Promise<AnnounceRound>
  private retryMs = 1000
  private confirmed = false

  constructor (components: AnnouncerComponents, init: AnnouncerInit) {
    const { modelId, start, end } = init
    if (!MODEL_ID.test(modelId)) throw new Error(`bad model id "${modelId}": expected 64 lowercase hex digits`)
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || start >= end) throw new Error(`bad block span [${start}, ${end})`)
    this.node = components.node
    this.init = {
      modelId,
      start,
      end,
      refreshMs: init.refreshMs ?? 60_000,
      provideTimeoutMs: init.provideTimeoutMs ?? 30_000,
      concurrency: init.concurrency ?? 8,
      role: init.role
    }
    this.log = this.node.logger.forComponent('plexus:announce')
  }

  get isRunning (): boolean { return this.controller != null }

  /**
   * Starts providing; resolves with the first round's outcome and never rejects (failures are
   * logged and retried), so it is safe not to await it.
   */
  start (): Promise<AnnounceRound> {
    if (this.running != null) return this.running
    this.controller = new AbortController()
    this.running = this.prepare()
      .then(async () => await this.round())
      .catch(err => {
        this.log.error('announcing failed: %e', err)
        return { provided: 0, unreached: this.cids.length, ms: 0 }
      })
    return this.running
  }

  /** Stops refreshing and withdraws the local provider records (remote copies age out). */
  async stop (): Promise<void> {
    const { controller, running } = this
    if (controller == null) return
    this.controller = undefined
    this.running = undefined
    controller.abort(new Error('announcer stopped'))
    clearTimeout(this.timer)
    await running
    const cids = this.cids
    this.cids = []
    // a CID another Announcer of this node still provides keeps its record (services.ts)
    const counts = this.node.services.plexus.provided
    for (const cid of cids) {
      const key = cid.toString()
      const n = (counts.get(key) ?? 1) - 1
      if (n > 0) { counts.set(key, n); continue }
      counts.delete(key)
      try {
        await this.node.services.dht.cancelReprovide(cid)
      } catch (err) {
        this.log.error('cancelReprovide %c failed: %e', cid, err)
      }
    }
  }

  private async prepare (): Promise<void> {
    const cids = this.init.role === 'verifier' ? [await verifiersCid(this.init.modelId)] : [await modelsCid()]
    if (this.init.role !== 'verifier') for (let b = this.init.start; b < this.init.end; b++) cids.push(await blockCid(this.init.modelId, b))
    this.cids = cids
    const counts = this.node.services.plexus.provided
    for (const cid of cids) counts.set(cid.toString(), (counts.get(cid.toString()) ?? 0) + 1)
  }

  /** One pass over every CID; schedules the next. Never throws. */
  private async round (): Promise<AnnounceRound> {
    const signal = this.controller?.signal
    const t0 = Date.now()
    const result: AnnounceRound = { provided: 0, unreached: 0, ms: 0 }
    if (signal == null || signal.aborted) return result
    if (this.node.status !== 'started') {
      this.log.error('node stopped before the announcer; no longer providing')
      return result
    }
    if (dhtPeerCount(this.node) === 0 && this.node.getConnections().length > 0) {
      // joining: connected, but the DHT adds a peer only after identify and a ping (~0.1-0.5 s);
      // waiting here makes "start() resolved" mean "findable" for a node that just bootstrapped
      await waitForDhtPeers(this.node, { signal: AbortSignal.any([signal, AbortSignal.timeout(this.init.provideTimeoutMs)]) }).catch(() => {})
      if (signal.aborted) return result
    }
    if (dhtPeerCount(this.node) === 0) {
      // nobody to store records with: a provide would only wait out its deadline
      result.unreached = this.cids.length
    } else {
      // ADD_PROVIDER is fire-and-forget: "sent" is not yet "stored". Until one round has been
      // seen stored, look each record up again, so that start() resolving means findable.
      const confirm = !this.confirmed
      await this.eachCid(signal, async cid => {
        const sent = await this.provide(cid, signal) > 0
        if (sent && (!confirm || await this.findable(cid, signal))) result.provided++
        else result.unreached++
      })
      if (confirm && result.unreached === 0 && !signal.aborted) this.confirmed = true
    }
    result.ms = Date.now() - t0
    if (signal.aborted) return result

    let next = this.init.refreshMs
    if (result.unreached > 0) {
      this.log('%d of %d provider records reached no peer (%d DHT peers, %d connections); retrying in %d ms',
        result.unreached, this.cids.length, dhtPeerCount(this.node), this.node.getConnections().length, this.retryMs)
      next = Math.min(this.retryMs, next)
      // a node nobody can find serves nobody: keep retrying often (a failed round costs little)
      this.retryMs = Math.min(this.retryMs * 2, MAX_RETRY_MS, this.init.refreshMs)
    } else {
      this.log('provided blocks [%d, %d) of %s in %d ms', this.init.start, this.init.end, this.init.modelId, result.ms)
      this.retryMs = 1000
    }
    this.timer = setTimeout(() => { this.running = this.round() }, next)
    this.timer.unref?.()
    return result
  }

  private async eachCid (signal: AbortSignal, fn: (cid: CID) => Promise<void>): Promise<void> {
    const queue = [...this.cids]
    await Promise.all(Array.from({ length: Math.min(this.init.concurrency, queue.length) }, async () => {
      for (let cid = queue.shift(); cid != null && !signal.aborted; cid = queue.shift()) await fn(cid)
    }))
  }

  /** True once another peer answers a lookup of `cid` with us among the providers. */
  private async findable (cid: CID, stop: AbortSignal): Promise<boolean> {
    const self = this.node.peerId
    const signal = AbortSignal.any([stop, AbortSignal.timeout(Math.min(this.init.provideTimeoutMs, 10_000))])
    while (!signal.aborted) {
      try {
        for await (const e of this.node.services.dht.findProviders(cid, { signal })) {
          // PROVIDER events are de-duplicated against our local record, raw responses are not
          if (e.name === 'PEER_RESPONSE' && !e.from.equals(self) && e.providers.some(p => p.id.equals(self))) return true
        }
      } catch {}
      await sleep(50, signal)
    }
    this.log('provider record for %c was sent but is not findable yet', cid)
    return false
  }

  /** Provides one CID; returns to how many peers the record was sent. */
  private async provide (cid: CID, stop: AbortSignal): Promise<number> {
    const signal = AbortSignal.any([stop, AbortSignal.timeout(this.init.provideTimeoutMs)])
    let stored = 0
    try {
      for await (const e of this.node.services.dht.provide(cid, { signal })) {
        if (e.name === 'PEER_RESPONSE' && e.messageName === 'ADD_PROVIDER') stored++
      }
    } catch (err) {
      if (!stop.aborted) this.log.error('provide %c failed after reaching %d peers: %e', cid, stored, err)
    }
    return stored
  }
}

export interface FindOptions {
  signal?: AbortSignal
  /** Deadline of each lookup; what was found by then is kept. Default 10 s. */
  perBlockTimeoutMs?: number
}

/**
 * Every provider of each block, looked up in parallel. A block whose lookup times out keeps
 * the holders found so far (possibly none); aborting `signal` rejects.
 */
export async function findBlockHolders (node: PlexusNode, modelId: string, blocks: number[], opts: FindOptions = {}): Promise<Map<number, PeerId[]>> {
  const unique = [...new Set(blocks)]
  const found = await Promise.all(unique.map(async b => await findProviders(node, await blockCid(modelId, b), opts)))
  opts.signal?.throwIfAborted()
  return new Map(unique.map((b, i) => [b, found[i]]))
}

/** Verifiers of a model (via its verifiers CID); ask each for its info to learn its blocks. */
export async function findVerifiers (node: PlexusNode, modelId: string, opts: Omit<FindOptions, 'perBlockTimeoutMs'> & { timeoutMs?: number } = {}): Promise<PeerId[]> {
  const holders = await findProviders(node, await verifiersCid(modelId), { ...opts, perBlockTimeoutMs: opts.timeoutMs ?? 10_000 })
  opts.signal?.throwIfAborted()
  return holders
}

/** Servers of any model (via the models CID); ask each for its info to learn what it serves. */
export async function findServers (node: PlexusNode, opts: Omit<FindOptions, 'perBlockTimeoutMs'> & { timeoutMs?: number } = {}): Promise<PeerId[]> {
  const holders = await findProviders(node, await modelsCid(), { ...opts, perBlockTimeoutMs: opts.timeoutMs ?? 10_000 })
  opts.signal?.throwIfAborted()
  return holders
}

async function findProviders (node: PlexusNode, cid: CID, opts: FindOptions): Promise<PeerId[]> {
  const log = node.logger.forComponent('plexus:announce')
  const deadline = AbortSignal.timeout(opts.perBlockTimeoutMs ?? 10_000)
  const signal = opts.signal != null ? AbortSignal.any([opts.signal, deadline]) : deadline
  const peers = new Map<string, PeerId>()
  try {
    for await (const e of node.services.dht.findProviders(cid, { signal })) {
      if (e.name !== 'PROVIDER') continue
      for (const p of e.providers) {
        if (peers.has(p.id.toString())) continue
        peers.set(p.id.toString(), p.id)
        // the DHT does not keep the addresses it was told; keep them so the peer can be dialled
        if (p.multiaddrs.length > 0 && !p.id.equals(node.peerId)) {
          await node.peerStore.merge(p.id, { multiaddrs: p.multiaddrs }).catch(err => log.error('peer store: %e', err))
        }
      }
    }
  } catch (err) {
    if (opts.signal?.aborted === true) throw err
    if (!deadline.aborted) log.error('findProviders %c failed: %e', cid, err)
    else log('findProviders %c timed out with %d providers', cid, peers.size)
  }
  return [...peers.values()]
}

async function sleep (ms: number, signal: AbortSignal): Promise<void> {
  await new Promise<void>(resolve => {
    const t = setTimeout(done, ms)
    signal.addEventListener('abort', done, { once: true })
    function done (): void { clearTimeout(t); signal.removeEventListener('abort', done); resolve() }
  })
}
