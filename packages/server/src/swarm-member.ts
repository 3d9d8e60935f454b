import type { PrivateKey, Logger } from '@libp2p/interface'
import { discoverServers, verifyAnnouncement } from '@plexus/p2p'
import type { PlexusNode, AnnouncementPayload } from '@plexus/p2p'
import { loadSpanRunners, chainRunners, weightFormat } from '@plexus/runtime'
import type { ModelSource, ModelManifest, BackendName, ProgressListener } from '@plexus/runtime'
import { BlockBackend } from './backend.ts'
import type { FaultInjection, SessionBudgets } from './backend.ts'
import { PlexusServer } from './server.ts'
import { cachedThroughput } from './throughput.ts'
import type { Throughput } from './throughput.ts'
import { chooseStart, planMove, blocksThatFit, blockBytesOf, capThroughputs } from './block-selection.ts'
import type { ServedSpan } from './block-selection.ts'

export interface SwarmMemberComponents {
  node: PlexusNode
  privateKey: PrivateKey
  checkpoint: ModelSource
  manifest: ModelManifest
}

export interface SwarmMemberInit {
  backend: BackendName
  /** Fixed blocks `[start, end)`; absent: chosen (and re-chosen) from the swarm's needs. */
  blocks?: [number, number]
  /** Bytes for weights and KV cache together (the cache budget comes off it). */
  memoryBytes: number
  cacheBudgetBytes: number
  /** Precision of the sessions' KV caches on a GPU (f16: twice the sessions in the same budget). */
  kvCache?: 'f32' | 'f16'
  maxSessions: number
  /** Per-peer, per-step and per-session limits (docs/security.md). */
  budgets?: SessionBudgets
  offersHead?: boolean
  /** Push activations to the next server of a forwarded route (default true). */
  forwarding?: boolean
  /** How often to consider moving, ms (0: never). */
  rebalanceMs?: number
  /** Move only if the swarm's bottleneck throughput rises by this factor. */
  balanceFactor?: number
  /** Random wait before choosing, so nodes started together see each other's choices. */
  joinJitterMs?: number
  cacheDir?: string
  /** Measure the throughput even when a cached figure exists. */
  remeasure?: boolean
  faults?: FaultInjection
  onServing?: (event: 'ready' | 'moved', span: { start: number, end: number, throughput: Throughput }) => void
  /** Told how far loading a span's blocks is. */
  onProgress?: ProgressListener
}

/**
 * A node's membership in a swarm: which blocks it serves, serving them, and moving when the
 * swarm would be faster with them elsewhere (without ever leaving a block uncovered).
 */
export interface MemberHealth {
  status: 'ok' | 'starting' | 'degraded'
  model: { id: string, name: string, numBlocks: number }
  serving: { start: number, end: number } | null
  /** Servers per block of the model, this node included. */
  coverage: number[]
  unserved: number[]
}

/** How long one look at the swarm answers /health. */
const HEALTH_TTL_MS = 3000

export class SwarmMember {
  private readonly c: SwarmMemberComponents
  private readonly init: SwarmMemberInit
  private readonly log: Logger
  private server?: PlexusServer
  private span?: ServedSpan
  private timer?: NodeJS.Timeout
  private moving = false
  private stopped = false

  constructor (components: SwarmMemberComponents, init: SwarmMemberInit) {
    this.c = components
    this.init = init
    this.log = components.node.logger.forComponent('plexus:member')
  }

  get serving (): ServedSpan | undefined { return this.span }

  /** What this node announces now (none before it serves). */
  async announcements (): Promise<AnnouncementPayload[]> {
    const server = this.server
    return server != null ? [verifyAnnouncement(await server.announcement())] : []
  }

  /** How the blocks' weights are held (read at start). */
  private format?: string
  /** What one block of the model takes in this node's memory (set at start) */
  private blockBytes = Infinity

  /** How the blocks' weights are held (f32, bf16, q8_0, ...; known once started). */
  get weightFormat (): string | undefined { return this.format }

  /** Blocks this machine can hold within its memory budget, each at its real bytes (bytesPerBlock). */
  capacity (): number {
    const cfg = this.c.checkpoint.config
    return blocksThatFit(this.init.memoryBytes - this.init.cacheBudgetBytes, this.blockBytes, cfg.numLayers)
  }

  /**
   * This node's span and the swarm's coverage of its model (servers per block, this node
   * included): degraded while some block has no server, starting before the span is served.
   */
  async health (): Promise<MemberHealth> {
    // a probe every few seconds must not cost a DHT lookup and a dial per server each time
    if (this.healthCache != null && Date.now() - this.healthCache.at < HEALTH_TTL_MS) return await this.healthCache.report
    const report = this.checkHealth()
    this.healthCache = { at: Date.now(), report }
    report.catch(() => { this.healthCache = undefined })
    return await report
  }

  private healthCache?: { at: number, report: Promise<MemberHealth> }

  private async checkHealth (): Promise<MemberHealth> {
    const L = this.c.checkpoint.config.numLayers
    const coverage = new Array<number>(L).fill(0)
    const spans = [...await this.swarmView(), ...(this.span != null ? [this.span] : [])]
    for (const s of spans) for (let b = Math.max(0, s.start); b < Math.min(L, s.end); b++) coverage[b]++
    const unserved = coverage.flatMap((n, b) => n === 0 ? [b] : [])
    return {
      status: this.span == null ? 'starting' : unserved.length > 0 ? 'degraded' : 'ok',
      model: { id: this.c.manifest.id, name: this.c.manifest.name, numBlocks: L },
      serving: this.span != null ? { start: this.span.start, end: this.span.end } : null,
      coverage,
      unserved
    }
  }

  private async swarmView (): Promise<ServedSpan[]> {
    const servers = await discoverServers(this.c.node, {
      modelId: this.c.manifest.id, numBlocks: this.c.checkpoint.config.numLayers, exclude: new Set([this.c.node.peerId.toString()])
    })
    // others' figures are their own word: capped (block-selection.ts)
    return capThroughputs(servers.map(s => ({ peer: s.peer, start: s.announcement.start, end: s.announcement.end, throughput: s.announcement.throughput })), this.span?.throughput)
  }

  async start (): Promise<void> {
    this.format = await weightFormat(this.c.checkpoint)
    this.blockBytes = await blockBytesOf(this.c.checkpoint, this.init.backend, this.format)
    let start: number
    let end: number
    if (this.init.blocks != null) {
      [start, end] = this.init.blocks
    } else {
      const n = this.capacity()
      await new Promise(resolve => setTimeout(resolve, Math.random() * (this.init.joinJitterMs ?? 2000)))
      start = chooseStart(await this.swarmView(), this.c.checkpoint.config.numLayers, n)
      end = start + n
    }
    await this.serve(start, end, 'ready')
    const every = this.init.rebalanceMs ?? 0
    if (this.init.blocks == null && every > 0) {
      this.timer = setInterval(() => { void this.rebalance() }, every)
      this.timer.unref()
    }
  }

  private async serve (start: number, end: number, event: 'ready' | 'moved'): Promise<void> {
    const { checkpoint: ckpt, manifest } = this.c
    const cfg = ckpt.config
    // Always in worker threads: a long prefill must not stall this thread's networking (pings).
    const runner = chainRunners(await loadSpanRunners(ckpt, start, end, { placement: 'workers', blockDigests: manifest.blockDigests, kvCache: this.init.kvCache, onProgress: this.init.onProgress, modelName: manifest.name }))
    const backend = new BlockBackend({ runner, config: cfg }, {
      ...this.init.budgets,
      modelId: manifest.id, maxSessions: this.init.maxSessions, cacheBudgetBytes: this.init.cacheBudgetBytes, faults: this.init.faults,
      // an f16 cache exists only on the GPU; elsewhere the caches stay float32
      kvBytesPerValue: this.init.kvCache === 'f16' && this.init.backend === 'webgpu' ? 2 : 4
    })
    const measured = await cachedThroughput(runner, cfg.hiddenSize, { modelId: manifest.id, backend: this.init.backend, cacheDir: this.init.cacheDir, remeasure: this.init.remeasure })
    const throughput = measured.tokensPerSecond
    const server = new PlexusServer({ node: this.c.node, privateKey: this.c.privateKey, backend, manifest, checkpoint: ckpt }, {
      throughput, backend: this.init.backend, format: this.format, offersHead: this.init.offersHead ?? (ckpt.format === 'safetensors' && (start === 0 || end === cfg.numLayers)), forwarding: this.init.forwarding,
      // session streams per connection (so per peer): each session's own, and as many feeds
      // from a previous hop forwarding its clients' sessions, never more than maxSessions each
      maxInboundStreams: 2 * this.init.maxSessions + 16
    })
    await server.start()
    this.server = server
    this.span = { peer: this.c.node.peerId.toString(), start, end, throughput }
    this.init.onServing?.(event, { start, end, throughput: measured })
  }

  /** One look at the swarm; moves when it pays and is safe. */
  async rebalance (): Promise<boolean> {
    if (this.moving || this.stopped || this.span == null) return false
    this.moving = true
    try {
      const L = this.c.checkpoint.config.numLayers
      const factor = this.init.balanceFactor ?? 1.2
      const others = await this.swarmView()
      const me = this.span
      // Nodes that would gain by moving decide alike from the same view: only the first of them
      // (by peer id) moves this round, so two holders of a block never both leave it at once.
      const all = [...others, me]
      const rank = (k: 'improve' | 'enable'): number => k === 'improve' ? 0 : 1
      const movers = all.flatMap(s => { const p = planMove(all, s, L, factor, () => 0); return p != null ? [{ peer: s.peer, kind: p.kind }] : [] })
        .sort((a, b) => rank(a.kind) - rank(b.kind) || (a.peer < b.peer ? -1 : 1))
      if (movers[0]?.peer !== me.peer) return false
      const plan = planMove(all, me, L, factor)
      if (plan == null || this.stopped) return false
      // Views lag: look once more, right before leaving, that the plan is still safe.
      const again = planMove([...await this.swarmView(), me], me, L, factor, () => 0)
      if (again == null || this.stopped) return false
      this.log('moving from [%d, %d) to [%d, %d): bottleneck %f → %f tokens/s', this.span.start, this.span.end, plan.start, plan.end, plan.bottleneckBefore, plan.bottleneckAfter)
      // Make before break: the new span is loaded and findable before the old one drains, so a
      // block kept across a slide (of which we may be the only holder) is never uncovered. The
      // price is memory for both spans while the new one loads.
      const old = this.server
      await this.serve(plan.start, plan.end, 'moved')
      await old?.stop(5000)
      return true
    } catch (err: any) {
      this.log.error('rebalancing failed: %s', err.message)
      return false
    } finally {
      this.moving = false
    }
  }

  async stop (): Promise<void> {
    this.stopped = true
    clearInterval(this.timer)
    while (this.moving) await new Promise(resolve => setTimeout(resolve, 50))
    await this.server?.stop()
  }
}
