import type { PrivateKey, Logger } from '@libp2p/interface'
import { Announcer, serveInfo, signAnnouncement, signReputation, putReputation } from '@plexus/p2p'
import type { PlexusNode } from '@plexus/p2p'
import { chainRunners, loadSpanRunners, PLEXUS_VERSION } from '@plexus/runtime'
import type { ModelSource, ModelManifest, SpanRunner, ProgressListener } from '@plexus/runtime'
import { Verifier } from './verifier.ts'
import type { Tally } from './verifier.ts'
import { createVerifyHandler, VERIFY_PROTOCOL } from './verify-handler.ts'
import { AnnouncedServers } from './announced-servers.ts'

export interface VerifierNodeComponents {
  node: PlexusNode
  privateKey: PrivateKey
  checkpoint: ModelSource
  manifest: ModelManifest
}

export interface VerifierNodeInit {
  start: number
  end: number
  tolerance?: number
  maxSessions?: number
  /** Tokens/s per block it re-computes at (announced, like a server's throughput). */
  throughput?: number
  /** Reputation records are re-published at most this often per server. Default 2 s. */
  publishDelayMs?: number
  /**
   * Records of servers caught failing are published again this often (default 10 min): a DHT
   * peer that restarted, or was fed a replayed older record, gets the newest one back.
   */
  republishMs?: number
  /** Re-checks of fraud reports computed at once (default 2). */
  maxRechecks?: number
  /** Checks and re-checks one peer may have in progress at once (default 4 and 1; busy beyond). */
  maxChecksPerPeer?: number
  maxRechecksPerPeer?: number
  onVerdict?: (server: string, tally: Tally) => void
  /** Told how far loading the blocks is. */
  onProgress?: ProgressListener
}


/**
 * A verifier peer: loads blocks like a server but serves no sessions. Clients send it steps of
 * their hops (/plexus/verify/1.0.0); it re-computes them, signs fraud reports on a mismatch and
 * publishes per-server reputation records in the DHT. Found through the model's verifiers key.
 */
export class VerifierNode {
  readonly verifier: Verifier
  private readonly c: VerifierNodeComponents
  private readonly init: VerifierNodeInit
  private readonly log: Logger
  private readonly announcer: Announcer
  private readonly runner: SpanRunner
  /** Sequence of the last record signed: its issue time in ms, strictly increasing. */
  private lastSeq = 0
  private readonly published = new Set<string>()
  private readonly pending = new Map<string, ReturnType<typeof setTimeout>>()
  private republisher?: NodeJS.Timeout
  private stopped = false
  private stopInfo?: () => Promise<void>

  private constructor (components: VerifierNodeComponents, init: VerifierNodeInit, runner: SpanRunner) {
    this.c = components
    this.init = init
    this.runner = runner
    this.log = components.node.logger.forComponent('plexus:verifier')
    this.verifier = new Verifier({ runner, config: components.checkpoint.config, privateKey: components.privateKey, log: this.log }, {
      modelId: components.manifest.id,
      tolerance: init.tolerance,
      maxSessions: init.maxSessions,
      maxRechecks: init.maxRechecks,
      servers: new AnnouncedServers(components.node),
      onTally: (server, tally) => { init.onVerdict?.(server, tally); this.schedulePublish(server, tally) }
    })
    this.announcer = new Announcer({ node: components.node }, { modelId: components.manifest.id, start: init.start, end: init.end, role: 'verifier' })
  }

  static async start (components: VerifierNodeComponents, init: VerifierNodeInit): Promise<VerifierNode> {
    // worker threads: a long re-computation must not stall this thread's networking
    const runner = chainRunners(await loadSpanRunners(components.checkpoint, init.start, init.end, { placement: 'workers', blockDigests: components.manifest.blockDigests, onProgress: init.onProgress, modelName: components.manifest.name }))
    const v = new VerifierNode(components, init, runner)
    const { node } = components
    await node.handle(VERIFY_PROTOCOL, createVerifyHandler({ verifier: v.verifier, log: v.log, budget: node.services.plexus.budget }, { maxChecksPerPeer: init.maxChecksPerPeer, maxRechecksPerPeer: init.maxRechecksPerPeer }), { maxInboundStreams: 1024 })
    v.stopInfo = await serveInfo(node, async () => v.stopped ? [] : [await v.announcement()])
    await v.announcer.start()
    v.republisher = setInterval(() => { v.republish() }, init.republishMs ?? 10 * 60_000)
    v.republisher.unref()
    v.log('verifying blocks [%d, %d) of %s', init.start, init.end, components.manifest.id)
    return v
  }

  async announcement (): Promise<Uint8Array> {
    const { manifest, node, checkpoint } = this.c
    const max = this.init.maxSessions ?? 64
    return await signAnnouncement(this.c.privateKey, {
      modelId: manifest.id,
      modelName: manifest.name,
      start: this.init.start,
      end: this.init.end,
      numBlocks: checkpoint.config.numLayers,
      throughput: this.init.throughput ?? 0,
      addrs: node.getMultiaddrs().map(a => a.toString()),
      offersHead: false,
      capacity: { sessions: max, freeSessions: Math.max(0, max - this.verifier.sessionCount) },
      version: PLEXUS_VERSION,
      role: 'verifier'
    }, { ttlMs: 60_000 })
  }

  /** Signs and stores this verifier's tally of `server` in the DHT (coalescing bursts). */
  private schedulePublish (server: string, tally: Tally): void {
    if (this.stopped || this.pending.has(server)) return
    const urgent = tally.failed > 0 && tally.reports.length > 0 && !this.published.has(server)
    const t = setTimeout(() => {
      this.pending.delete(server)
      void this.publish(server)
    }, urgent ? 0 : this.init.publishDelayMs ?? 2000)
    t.unref?.()
    this.pending.set(server, t)
  }

  /** The records of every server this verifier caught failing, again (bounded by the verifier's tallies). */
  private republish (): void {
    if (this.stopped) return
    for (const [server, tally] of this.verifier.allTallies()) if (tally.failed > 0) this.schedulePublish(server, tally)
  }

  async publish (server: string): Promise<number> {
    const tally = this.verifier.tally(server)
    // seq is the issue time: DHT peers refuse a record older than the one they hold, and a
    // restarted verifier (which kept no counter) still publishes newer ones
    const seq = this.lastSeq = Math.max(Date.now(), this.lastSeq + 1)
    this.published.add(server)
    if (this.published.size > 4096) this.published.delete(this.published.values().next().value!)
    try {
      const record = await signReputation(this.c.privateKey, { subject: server, modelId: this.c.manifest.id, passed: tally.passed, failed: tally.failed, reports: tally.reports.slice(-64), seq }, { now: seq })
      const stored = await putReputation(this.c.node, record, { signal: AbortSignal.timeout(30_000) })
      this.log('reputation of %s (%d passed, %d failed) stored on %d peers', server, tally.passed, tally.failed, stored)
      return stored
    } catch (err: any) {
      this.log.error('publishing the reputation of %s failed: %s', server, err.message)
      return 0
    }
  }

  async stop (): Promise<void> {
    this.stopped = true
    clearInterval(this.republisher)
    for (const t of this.pending.values()) clearTimeout(t)
    this.pending.clear()
    await this.announcer.stop()
    await this.c.node.unhandle(VERIFY_PROTOCOL)
    await this.stopInfo?.()
    await this.verifier.dispose()
    await this.runner.dispose()
  }
}
