import { stat } from 'node:fs/promises'
import { createPlexusNode, dialBootstrap, keepBootstrapped, componentLog } from '@plexus/p2p'
import type { PlexusNode } from '@plexus/p2p'
import { LocalModel, ModelHead, loadManifest, openModel, shortId, withQuantization, parseTrust, TrustError } from '@plexus/runtime'
import type { ModelConfig, ModelHead as Head, SessionPipeline, TextTokenizer, ModelManifest, QuantFormat, ProgressListener, TrustLevel } from '@plexus/runtime'
import type { WireDType } from '@plexus/protocol'
import { SwarmDiscovery, SwarmVerifiers } from './routing/discovery.ts'
import { ReputationView } from './routing/reputation.ts'
import { Auditor } from './inference/auditor.ts'
import type { AuditEvent } from './inference/auditor.ts'
import { BanList } from './routing/ban-list.ts'
import { SwarmSession } from './inference/swarm-session.ts'
import type { Hop } from './routing/route.ts'
import { resolveModel, ModelFetchError } from './model-fetch.ts'

const log = componentLog('client', 'model')

export interface SessionOptions {
  trust?: TrustLevel
}

/** What generation needs, wherever the blocks run. */
export interface OpenModel {
  config: ModelConfig
  head: Head
  tokenizer?: TextTokenizer
  tokenizerConfig?: Record<string, unknown>
  manifest?: ModelManifest
  /** A fresh inference session; `trust: 'verified'` spot-checks it (swarms only). */
  session (maxLength: number, opts?: SessionOptions): Promise<SessionPipeline & { route?: Hop[] }>
  close (): Promise<void>
}

/** Every block in this process; `path`: a model directory or a .gguf file. */
export async function openLocal (path: string, opts: { quantize?: QuantFormat, onProgress?: ProgressListener } = {}): Promise<OpenModel> {
  const model = await LocalModel.load(path, { quantize: opts.quantize, onProgress: opts.onProgress })
  let tokenizer: TextTokenizer | undefined
  let tokenizerConfig: Record<string, unknown> | undefined
  try {
    tokenizer = await model.checkpoint.tokenizer()
    tokenizerConfig = await model.checkpoint.tokenizerConfig()
  } catch (err) {
    await model.dispose()
    throw err
  }
  return {
    config: model.config,
    head: model.head,
    tokenizer,
    tokenizerConfig,
    session: async (n, opts) => {
      if ((opts?.trust ?? 'fast') !== 'fast') throw new TrustError('trust-unsupported', `trust level ${opts?.trust} checks the servers of a swarm; a local model (--local) runs every block here: use fast`)
      return await model.session(n)
    },
    close: async () => { await model.dispose() }
  }
}

/** A client-mode libp2p node joined to the swarm through the bootstrap peers. */
export async function connectSwarm (bootstrap: string[]): Promise<PlexusNode> {
  const { generateKeyPair } = await import('@libp2p/crypto/keys')
  const node = await createPlexusNode({ privateKey: await generateKeyPair('Ed25519'), listen: [], dhtMode: 'client' })
  try {
    await dialBootstrap(node, bootstrap)
    keepBootstrapped(node, bootstrap)
  } catch (err) {
    await node.stop()
    throw err
  }
  return node
}

/**
 * Stops a node within `timeoutMs`, holding the event loop open meanwhile: libp2p's stop may wait
 * on work that holds no handle, and a CLI with nothing else pending then exits mid-stop (code 13,
 * "unsettled top-level await"; seen in ~1 of 10 runs).
 */
export async function stopNode (node: PlexusNode, timeoutMs = 10_000): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined
  try {
    await Promise.race([node.stop(), new Promise<void>(resolve => { timer = setTimeout(resolve, timeoutMs) })])
  } finally {
    clearTimeout(timer)
  }
}

/**
 * `model` itself when it is a directory or a (GGUF) file; otherwise a model name, id or id prefix whose client
 * parts are fetched from the swarm's peers (verified, cached in `cacheDir`).
 */
export async function swarmModelDir (node: PlexusNode, model: string, init: { cacheDir?: string, onProgress?: ProgressListener } = {}): Promise<string> {
  const st = await stat(model).catch(() => undefined)
  if (st?.isDirectory() === true || st?.isFile() === true) return model
  if (st != null) throw new ModelFetchError(`--model ${model}: not a directory or file (give a model directory, a .gguf file, a name or an id)`)
  if (/^(~|\.{1,2})?[/\\]/.test(model) || model === '.' || model === '..' || /\.gguf$/i.test(model)) throw new ModelFetchError(`--model ${model}: no such file or directory`)
  return await resolveModel(node, model, init)
}

export interface SwarmModelInit {
  /** A local model directory or .gguf file holding the client's parts (embeddings, head, tokenizer). */
  dir: string
  /** The swarm's nodes quantize the blocks as this (the model id is derived from it). */
  quantize?: QuantFormat
  dtype?: WireDType
  /** Told how far hashing the client parts is, when their manifest must be computed. */
  onProgress?: ProgressListener
  /** Trust level of sessions that do not ask for one. Default fast. */
  trust?: TrustLevel
  /** With `verified`: the fraction of hops whose every step a verifier re-computes. Default 0.1. */
  checkRate?: number
  /** With `verified`: steps between checks (the last step is always checked). Default 8. */
  checkEvery?: number
  /** Verifiers whose fraud reports and reputation records are believed on their own. */
  trustedVerifiers?: string[]
  onAudit?: (e: AuditEvent) => void
  /** Servers push activations to the next server instead of back through this client (relayed where they cannot). Default true. */
  forward?: boolean
}

/** The model's blocks through the swarm; the client's own parts from `dir`. */
export async function openSwarm (node: PlexusNode, init: SwarmModelInit): Promise<OpenModel> {
  const ckpt = withQuantization(await openModel(init.dir), init.quantize)
  let head: ModelHead | undefined
  try {
    const manifest = await loadManifest(ckpt, { onProgress: init.onProgress })
    // in a worker thread: a client driving many sessions relays their activations on this one
    head = await ModelHead.load(ckpt, { headDigest: manifest.headDigest, thread: true })
    const cfg = ckpt.config
    const discovery = new SwarmDiscovery({ node }, { modelId: manifest.id, numBlocks: cfg.numLayers })
    const bans = new BanList()
    const verifiers = new SwarmVerifiers({ node }, { modelId: manifest.id, numBlocks: cfg.numLayers })
    const trusted = new Set(init.trustedVerifiers ?? [])
    const reputation = new ReputationView({ node, verifiers }, { modelId: manifest.id, trusted })
    log.info(`model ${manifest.name} (${shortId(manifest.id)}), ${cfg.numLayers} blocks`)
    return {
      config: cfg,
      head,
      manifest,
      tokenizer: await ckpt.tokenizer(),
      tokenizerConfig: await ckpt.tokenizerConfig(),
      session: async (maxLength, opts) => {
        const trust = parseTrust(opts?.trust ?? init.trust, 'trust level')
        if (trust === 'verified' && (init.checkRate ?? 0.1) > 0 && (await verifiers.verifiers()).length === 0 && (await verifiers.verifiers({ refresh: true })).length === 0) {
          throw new TrustError('trust-unavailable', `no verifier peers for ${manifest.name} (${shortId(manifest.id)}) in this swarm: verified needs at least one (plexus-node join --verify); use fast to go without checks`)
        }
        const auditor = trust === 'verified'
          ? new Auditor({ dialer: node, verifiers, bans }, {
            modelId: manifest.id, modelName: manifest.name, hiddenSize: cfg.hiddenSize, maxLength, checkRate: init.checkRate ?? 0.1, checkEvery: init.checkEvery, trustedVerifiers: trusted, onEvent: init.onAudit
          })
          : undefined
        const session = await SwarmSession.open({
          dialer: node,
          source: discovery,
          bans,
          auditor,
          // reputation costs DHT lookups: only sessions that asked for checks pay for it
          distrusted: auditor != null ? async (peers) => await reputation.distrusted(peers) : undefined
        }, {
          modelId: manifest.id, modelName: manifest.name, numBlocks: cfg.numLayers, hiddenSize: cfg.hiddenSize, maxLength, dtype: init.dtype, forward: init.forward
        })
        // routing weighs servers by what this client measured of their decode steps
        const forward = session.forward.bind(session)
        session.forward = async (hidden, tokens) => {
          const out = await forward(hidden, tokens)
          if (tokens === 1) discovery.observeStep(session.lastStepTimings())
          return out
        }
        return session
      },
      close: async () => { await head?.dispose(); await ckpt.close() }
    }
  } catch (err) {
    await head?.dispose()
    await ckpt.close()
    throw err
  }
}
