import type { PrivateKey, Logger } from '@libp2p/interface'
import { Announcer, serveInfo, signAnnouncement } from '@plexus/p2p'
import type { PlexusNode } from '@plexus/p2p'
import { Checkpoint, storedSource, PLEXUS_VERSION } from '@plexus/runtime'
import type { ModelSource, ModelManifest } from '@plexus/runtime'
import { createSessionHandler, SESSION_PROTOCOL } from './session-handler.ts'
import { serveModelFiles } from './model-files-handler.ts'
import { BackendSet } from './backend.ts'
import type { BlockBackend } from './backend.ts'

export interface PlexusServerComponents {
  node: PlexusNode
  privateKey: PrivateKey
  backend: BlockBackend
  manifest: ModelManifest
  /** Where the client parts are served from when `offersHead` (without it, the head is not offered). */
  checkpoint?: ModelSource
}

export interface PlexusServerInit {
  /** Tokens/s per block for one session's decode step, measured at start-up. */
  throughput: number
  /** What computes the blocks (announced so that clients and dashboards can tell). */
  backend?: string
  /** How the blocks' weights are held (announced: clients list it with the model). */
  format?: string
  /** Announcements are valid this long and re-signed before they lapse. */
  announcementTtlMs?: number
  /** How often the DHT provider records are refreshed. */
  announceRefreshMs?: number
  /** This node can hand out the model's client parts (embeddings, head, tokenizer). */
  offersHead?: boolean
  maxInboundStreams?: number
  /** Push activations to the next server when a client's route asks (default); false: refuse, the client relays. */
  forwarding?: boolean
}

/**
 * A node serving blocks `[start, end)` of one model: the session protocol, signed announcements
 * on the info protocol, and provider records in the DHT so clients find it.
 */
export class PlexusServer {
  private readonly c: PlexusServerComponents
  private readonly init: PlexusServerInit
  private readonly log: Logger
  private readonly announcer: Announcer
  private draining = false
  private servesHead = false
  private stopModelFiles?: () => Promise<void>
  private stopInfo?: () => Promise<void>

  constructor (components: PlexusServerComponents, init: PlexusServerInit) {
    this.c = components
    this.init = init
    this.log = components.node.logger.forComponent('plexus:server')
    const { backend } = components
    this.announcer = new Announcer({ node: components.node }, {
      modelId: backend.modelId, start: backend.start, end: backend.end, refreshMs: init.announceRefreshMs
    })
  }

  /** The signed announcement clients verify before routing through this node. */
  async announcement (): Promise<Uint8Array> {
    const { backend, manifest, node } = this.c
    const ttl = this.init.announcementTtlMs ?? 60_000
    return await signAnnouncement(this.c.privateKey, {
      modelId: backend.modelId,
      modelName: manifest.name,
      start: backend.start,
      end: backend.end,
      numBlocks: backend.config.numLayers,
      throughput: this.init.throughput,
      ...(this.init.backend != null ? { backend: this.init.backend } : {}),
      ...(this.init.format != null ? { format: this.init.format } : {}),
      addrs: node.getMultiaddrs().map(a => a.toString()),
      offersHead: this.servesHead,
      capacity: { sessions: backend.sessionCount + backend.freeSessions, freeSessions: backend.isDraining ? 0 : backend.freeSessions },
      version: PLEXUS_VERSION
    }, { ttlMs: ttl })
  }

  async start (): Promise<void> {
    const { node, backend } = this.c
    // one session handler per node, shared by every span it serves (two while it moves)
    const services = node.services.plexus
    let set = services.sessions
    if (set == null) {
      set = new BackendSet()
      services.sessions = set
      // steps and errors count into the node's metrics, if it keeps any (node-services.ts)
      await node.handle(SESSION_PROTOCOL, createSessionHandler({ backends: set, log: this.log, privateKey: this.c.privateKey, dialer: this.init.forwarding === false ? undefined : node, peerId: node.peerId.toString(), budget: services.budget }, {
        onStep: (info) => { services.metrics?.step(info) },
        onError: (code) => { services.metrics?.error(code) }
      }), {
        maxInboundStreams: this.init.maxInboundStreams ?? 1024
      })
    }
    set.add(backend)
    if (this.init.offersHead === true) {
      try {
        if (this.c.checkpoint == null) throw new Error('no checkpoint to serve the client parts from')
        // a quantized load keeps the head as stored: its files are the stored model's
        const files = storedSource(this.c.checkpoint)
        // the protocol ships safetensors head tensors: GGUF clients open the same file themselves
        if (!(files instanceof Checkpoint)) throw new Error(`the client parts of a ${files.format} model are not served (clients use the same file: --model FILE)`)
        this.stopModelFiles = await serveModelFiles({ node, checkpoint: files, manifest: this.c.manifest })
        this.servesHead = true
      } catch (err) {
        // still serve the blocks; just do not claim the head
        this.log.error('not offering the client parts: %s', (err as Error).message)
      }
    }
    this.stopInfo = await serveInfo(node, async () => this.draining ? [] : [await this.announcement()])
    // Ready means findable: wait for the first round of provider records (it never throws).
    const round = await this.announcer.start()
    if (round.unreached > 0) this.log('%d of %d announcements reached no peer yet; retrying in the background', round.unreached, round.unreached + round.provided)
    this.log('serving blocks [%d, %d) of %s', backend.start, backend.end, backend.modelId)
  }

  /**
   * Drains: stops announcing and admitting sessions, lets steps in flight finish (up to
   * `deadlineMs`), then closes every session (their clients re-route) and frees the blocks.
   */
  async stop (deadlineMs = 10_000): Promise<void> {
    this.draining = true
    await this.announcer.stop()
    await this.c.backend.drain(deadlineMs)
    const services = this.c.node.services.plexus
    const set = services.sessions
    set?.delete(this.c.backend)
    if (set != null && set.all().length === 0) {
      services.sessions = undefined
      await this.c.node.unhandle(SESSION_PROTOCOL)
    }
    await this.stopModelFiles?.()
    // a server that moves its blocks starts a new one first: the old source must not stay behind
    await this.stopInfo?.()
    await this.c.backend.dispose()
  }
}
