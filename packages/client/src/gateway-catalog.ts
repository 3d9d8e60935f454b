// The models `serve` and `mcp` answer for: one local model, or every model a swarm serves, each
// opened (client parts fetched, verified, cached; head loaded) on the first request naming it.
import { basename, resolve } from 'node:path'
import { shortId } from '@plexus/runtime'
import type { QuantFormat, ProgressListener, TrustLevel } from '@plexus/runtime'
import type { WireDType } from '@plexus/protocol'
import { RouteLog, componentLog } from '@plexus/p2p'
import type { PlexusNode } from '@plexus/p2p'
import { ApiError, singleModel } from '@plexus/gateway'
import type { CatalogEntry, ModelCatalog, OpenedModel } from '@plexus/gateway'
import { openLocal, openSwarm, connectSwarm, swarmModelDir, stopNode } from './model-source.ts'
import type { OpenModel } from './model-source.ts'
import { listModels } from './routing/discovery.ts'
import type { ModelListing } from './routing/discovery.ts'
import { resolveModel } from './model-fetch.ts'

const log = componentLog('client', 'catalog')

export interface CatalogArgs {
  local: boolean
  bootstrap?: string[]
  /** Local: the model directory or .gguf file. Swarm: the model opened at start (optional). */
  model?: string
  cacheDir?: string
  quantize?: QuantFormat
  wireDtype?: WireDType
  /** Servers push activations to the next server (--forward). */
  forward?: boolean
  trust?: TrustLevel
  checkRate?: number
  trustVerifier?: string[]
  /** Most swarm models open at once (each holds its embeddings and LM head). Default 4. */
  maxModels?: number
  /** Told how far loading, hashing and fetching models is. */
  onProgress?: ProgressListener
}

/** What `swarm_status` and /health report. */
export interface SwarmStatus {
  mode: 'local' | 'swarm'
  /** Peers this client is connected to. */
  peers: number
  models: CatalogEntry[]
}

export interface GatewayCatalog {
  catalog: ModelCatalog
  /** The model named at start, if any (requests may still name others). */
  defaultName?: string
  status (): Promise<SwarmStatus>
  close (): Promise<void>
  /** The swarm's node (absent for a local model), for the dashboard. */
  node?: PlexusNode
  /** Routes of the latest generations through the swarm, for the dashboard. */
  routes?: RouteLog
}

/** How long a swarm listing is reused before the DHT is asked again. */
const LISTING_TTL_MS = 10_000
const ID_PREFIX = /^[0-9a-f]{8,64}$/

export async function openGatewayCatalog (args: CatalogArgs): Promise<GatewayCatalog> {
  if (args.local) {
    if (args.model == null) throw new TypeError('a local gateway needs a model directory or .gguf file')
    const model = await openLocal(args.model, { quantize: args.quantize, onProgress: args.onProgress })
    // A local directory has no manifest: its folder name names the model.
    const name = model.manifest?.name ?? basename(resolve(args.model))
    const catalog = singleModel(model, name, [args.model])
    return {
      catalog,
      defaultName: name,
      status: async () => ({ mode: 'local', peers: 0, models: await catalog.list() }),
      close: async () => { await model.close() }
    }
  }
  if (args.bootstrap == null || args.bootstrap.length === 0) throw new TypeError('a swarm gateway needs bootstrap peers')
  const node = await connectSwarm(args.bootstrap)
  const swarm = new SwarmCatalog(node, args)
  try {
    const first = args.model != null ? await swarm.openNamed(args.model) : undefined
    return {
      catalog: swarm,
      defaultName: first?.name,
      node,
      routes: swarm.routes,
      status: async () => ({ mode: 'swarm', peers: node.getConnections().length, models: await swarm.list() }),
      close: async () => { await swarm.close(); await stopNode(node) }
    }
  } catch (err) {
    await swarm.close()
    await stopNode(node)
    throw err
  }
}

interface Open { name: string, id: string, model: OpenModel, aliases: Set<string> }

/** Every model the swarm's servers announce; opened on first use, at most `maxModels` at once. */
class SwarmCatalog implements ModelCatalog {
  readonly #node: PlexusNode
  readonly #args: CatalogArgs
  readonly #open = new Map<string, Open>()
  readonly #opening = new Map<string, Promise<Open>>()
  #listing?: { at: number, models: ModelListing[] }
  readonly routes = new RouteLog()

  constructor (node: PlexusNode, args: CatalogArgs) {
    this.#node = node
    this.#args = args
  }

  async #models (refresh = false): Promise<ModelListing[]> {
    if (refresh || this.#listing == null || Date.now() - this.#listing.at > LISTING_TTL_MS) {
      this.#listing = { at: Date.now(), models: await listModels(this.#node, { timeoutMs: 5000 }) }
    }
    return this.#listing.models
  }

  async list (): Promise<CatalogEntry[]> {
    const listed = await this.#models()
    const entries: CatalogEntry[] = listed.map(m => ({
      name: m.name,
      id: m.modelId,
      complete: m.coverage.every(c => c > 0),
      numBlocks: m.numBlocks,
      coverage: m.coverage,
      servers: m.servers,
      formats: m.formats,
      backends: m.backends,
      contextLength: this.#open.get(m.modelId)?.model.config.maxPositions,
      loaded: this.#open.has(m.modelId)
    }))
    // an open model whose servers all left is still named (its requests will say why they fail)
    for (const o of this.#open.values()) {
      if (!listed.some(m => m.modelId === o.id)) {
        entries.push({ name: o.name, id: o.id, complete: false, numBlocks: o.model.config.numLayers, contextLength: o.model.config.maxPositions, loaded: true })
      }
    }
    return entries
  }

  async names (): Promise<string[]> {
    return [...new Set((await this.list()).map(e => e.name))]
  }

  async open (requested: string): Promise<OpenedModel | undefined> {
    const hit = this.#find(requested)
    if (hit != null) return { name: hit.name, model: hit.model }
    const wanted = requested.trim().toLowerCase()
    let matches = (await this.#models()).filter(m => m.name === requested || (ID_PREFIX.test(wanted) && m.modelId.startsWith(wanted)))
    if (matches.length === 0) matches = (await this.#models(true)).filter(m => m.name === requested || (ID_PREFIX.test(wanted) && m.modelId.startsWith(wanted)))
    if (matches.length === 0) return undefined
    if (matches.length > 1) {
      throw new ApiError(400, `"${requested}" names ${matches.length} models in this swarm: ${matches.map(m => `${m.name} (${shortId(m.modelId)})`).join(', ')}; name one by its id`, { param: 'model', code: 'model_ambiguous' })
    }
    const o = await this.#openId(matches[0].modelId, matches[0].name)
    o.aliases.add(requested)
    return { name: o.name, model: o.model }
  }

  /** The model named at start: a directory, file, name or id, as `serve --model` always took. */
  async openNamed (model: string): Promise<Open> {
    const dir = await swarmModelDir(this.#node, model, { cacheDir: this.#args.cacheDir, onProgress: this.#args.onProgress })
    const o = await this.#load(dir, this.#args.quantize)
    o.aliases.add(model)
    return o
  }

  #find (requested: string): Open | undefined {
    const lower = requested.trim().toLowerCase()
    for (const o of this.#open.values()) {
      if (o.name === requested || o.aliases.has(requested) || o.id === lower || (ID_PREFIX.test(lower) && o.id.startsWith(lower))) return o
    }
    return undefined
  }

  async #openId (id: string, name: string): Promise<Open> {
    const open = this.#open.get(id)
    if (open != null) return open
    let p = this.#opening.get(id)
    if (p == null) {
      if (this.#open.size + this.#opening.size >= (this.#args.maxModels ?? 4)) {
        throw new ApiError(503, `this gateway already holds ${this.#open.size} models open (--max-models ${this.#args.maxModels ?? 4}); cannot open ${name} too`, { param: 'model', code: 'too_many_models' })
      }
      log.info(`opening ${name} (${shortId(id)}) for its first request`)
      // an announced id already names the weights as served (a quantized model's id is derived)
      p = resolveModel(this.#node, id, { cacheDir: this.#args.cacheDir, onProgress: this.#args.onProgress }).then(async dir => await this.#load(dir))
      this.#opening.set(id, p)
      p.finally(() => this.#opening.delete(id)).catch(() => {})
    }
    return await p
  }

  async #load (dir: string, quantize?: QuantFormat): Promise<Open> {
    const a = this.#args
    const model = await openSwarm(this.#node, { dir, quantize, dtype: a.wireDtype, forward: a.forward, onProgress: a.onProgress, trust: a.trust, checkRate: a.checkRate, trustedVerifiers: a.trustVerifier })
    const id = model.manifest!.id
    const existing = this.#open.get(id)
    if (existing != null) { await model.close(); return existing }
    const o: Open = { name: model.manifest!.name, id, model: this.#recordingRoutes(model), aliases: new Set() }
    this.#open.set(id, o)
    return o
  }

  /** `model`, its sessions' routes kept in `routes` (read when shown: a repair changes them). */
  #recordingRoutes (model: OpenModel): OpenModel {
    const open = model.session.bind(model)
    const name = model.manifest!.name
    model.session = async (maxLength, opts) => {
      const session = await open(maxLength, opts)
      const done = this.routes.add(name, () => session.route ?? [])
      const close = session.close.bind(session)
      session.close = async () => { try { await close() } finally { done() } }
      return session
    }
    return model
  }

  async close (): Promise<void> {
    await Promise.allSettled([...this.#opening.values()])
    for (const o of this.#open.values()) await o.model.close().catch(() => {})
    this.#open.clear()
  }
}
