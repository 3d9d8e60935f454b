import { generateKeyPair } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'
import { createPlexusNode, dialBootstrap, keepBootstrapped, loadOrCreateKey } from '@plexus/p2p'
import type { PlexusNode } from '@plexus/p2p'
import { freemem } from 'node:os'
import { initBackend, openModel, loadManifest, shortId, withQuantization, PLEXUS_VERSION } from '@plexus/runtime'
import type { BackendName, QuantFormat } from '@plexus/runtime'
import { SwarmMember } from './swarm-member.ts'
import { describeThroughput } from './throughput.ts'
import { VerifierNode } from './verifier-node.ts'
import type { FaultInjection } from './backend.ts'
import { NodeMetrics } from './metrics.ts'
import type { NodeHealth } from './metrics.ts'
import { nodeBackends } from './server.ts'

interface CommonArgs {
  listen: string[]
  announce?: string[]
  key?: string
  webrtc: boolean
  json: boolean
}
export type BootstrapArgs = CommonArgs
export interface JoinArgs extends CommonArgs {
  bootstrap: string[]
  model: string
  /** Quantize the blocks' linear weights at load (a model id of its own). */
  quantize?: QuantFormat
  blocks?: string
  backend: BackendName | 'auto'
  maxSessions: number
  cacheMb: number
  kvCache: 'f32' | 'f16'
  offerHead?: boolean
  memory?: number
  rebalanceInterval: number
  balanceFactor: number
  remeasure?: boolean
  metricsPort?: number
  metricsHost: string
  faultPerturb?: string
  faultSkip?: number
  verify?: boolean
  tolerance?: number
}

/** `--fault-perturb P,SCALE` / `--fault-skip P` → the backend's fault injection (testing only). */
export function parseFaults (args: Pick<JoinArgs, 'faultPerturb' | 'faultSkip'>): FaultInjection | undefined {
  const faults: FaultInjection = {}
  if (args.faultPerturb != null) {
    const [p, scale] = args.faultPerturb.split(',').map(Number)
    if (!(p >= 0 && p <= 1) || !(scale > 0)) throw new UsageError(`--fault-perturb ${args.faultPerturb}: expected PROBABILITY,SCALE with 0 ≤ PROBABILITY ≤ 1 and SCALE > 0`)
    faults.perturb = { probability: p, scale }
  }
  if (args.faultSkip != null) {
    if (!(args.faultSkip >= 0 && args.faultSkip <= 1)) throw new UsageError(`--fault-skip ${args.faultSkip}: expected a probability in [0, 1]`)
    faults.skip = { probability: args.faultSkip }
  }
  return faults.perturb != null || faults.skip != null ? faults : undefined
}

export class UsageError extends Error {
  constructor (message: string) { super(message); this.name = 'UsageError' }
}

/** Human lines by default; `--json`: one JSON object per event (what tests and tools parse). */
function emitter (json: boolean) {
  return (event: string, human: string, data: Record<string, unknown> = {}): void => {
    process.stdout.write(json ? JSON.stringify({ event, ...data }) + '\n' : human + '\n')
  }
}

async function key (path?: string): Promise<PrivateKey> {
  return path != null ? await loadOrCreateKey(path) : await generateKeyPair('Ed25519')
}

/** Stops cleanly on SIGINT/SIGTERM (a second signal exits at once). */
function onShutdown (stop: () => Promise<void>): void {
  // Diagnosing memory: under `node --expose-gc`, SIGUSR2 runs a full garbage collection.
  const gc = (globalThis as { gc?: () => void }).gc
  if (gc != null) process.on('SIGUSR2', () => { gc() })
  let stopping = false
  const handler = (sig: string): void => {
    if (stopping) process.exit(1)
    stopping = true
    process.stderr.write(`plexus-node: ${sig}: stopping…\n`)
    stop().then(() => process.exit(0), (err) => { process.stderr.write(`plexus-node: ${err.message}\n`); process.exit(1) })
  }
  process.on('SIGINT', () => handler('SIGINT'))
  process.on('SIGTERM', () => handler('SIGTERM'))
}

function fullAddrs (node: PlexusNode): string[] {
  return node.getMultiaddrs().map(a => a.toString())
}

export async function runBootstrap (args: BootstrapArgs): Promise<void> {
  const emit = emitter(args.json)
  const node = await createPlexusNode({ privateKey: await key(args.key), listen: args.listen, announce: args.announce, dhtMode: 'server', webrtc: args.webrtc })
  const addrs = fullAddrs(node)
  emit('ready', `bootstrap peer ${node.peerId} listening; join with:\n${addrs.map(a => `  plexus-node join --bootstrap ${a} --model DIR`).join('\n')}`, { peerId: node.peerId.toString(), addrs })
  onShutdown(async () => { await node.stop() })
}

export function parseBlocks (spec: string | undefined, numLayers: number): [number, number] | undefined {
  if (spec == null) return undefined
  const [a, b] = spec.split(':').map(Number)
  if (!(a >= 0 && b > a && b <= numLayers)) throw new UsageError(`--blocks ${spec}: need 0 ≤ start < end ≤ ${numLayers} (this model has ${numLayers} blocks)`)
  return [a, b]
}

export async function runJoin (args: JoinArgs): Promise<void> {
  const emit = emitter(args.json)
  const backendName = await initBackend(args.backend)
  const ckpt = withQuantization(await openModel(args.model), args.quantize)
  const cfg = ckpt.config
  const blocks = parseBlocks(args.blocks, cfg.numLayers)
  const manifest = await loadManifest(ckpt)
  const privateKey = await key(args.key)
  const node = await createPlexusNode({ privateKey, listen: args.listen, announce: args.announce, dhtMode: 'server', webrtc: args.webrtc })
  try {
    const r = await dialBootstrap(node, args.bootstrap)
    for (const f of r.failed) process.stderr.write(`plexus-node: warning: ${f.error}\n`)
    keepBootstrapped(node, args.bootstrap)
  } catch (err) {
    await node.stop()
    throw err
  }
  const addrs = fullAddrs(node)
  if (args.verify === true) {
    const [start, end] = blocks ?? [0, cfg.numLayers]
    const verifier = await VerifierNode.start({ node, privateKey, checkpoint: ckpt, manifest }, { start, end, tolerance: args.tolerance, maxSessions: args.maxSessions })
    emit('ready', `verifying blocks ${start}–${end - 1} of ${manifest.name} (${shortId(manifest.id)}) on ${backendName}\npeer ${node.peerId}\n${addrs.map(a => '  ' + a).join('\n')}`,
      { peerId: node.peerId.toString(), addrs, role: 'verifier', modelId: manifest.id, modelName: manifest.name, numBlocks: cfg.numLayers, start, end, backend: backendName, tolerance: verifier.verifier.tolerance })
    onShutdown(async () => {
      await verifier.stop()
      await node.stop()
      await ckpt.close()
    })
    return
  }
  const metrics = new NodeMetrics({ backends: () => nodeBackends(node) })
  let member: SwarmMember | undefined
  const health = async (): Promise<NodeHealth> => {
    const base = { version: PLEXUS_VERSION, peerId: node.peerId.toString(), peers: node.getConnections().length }
    return member == null ? { status: 'starting', ...base } : { ...await member.health(), ...base }
  }
  const metricsServer = args.metricsPort != null ? await metrics.listen(args.metricsPort, args.metricsHost, { health }) : undefined
  const faults = parseFaults(args)
  if (faults != null) process.stderr.write('plexus-node: WARNING: fault injection is on: this node deliberately returns wrong activations (testing only)\n')
  member = new SwarmMember({ node, privateKey, checkpoint: ckpt, manifest }, {
    metrics,
    faults,
    backend: backendName,
    blocks,
    // default: most of the memory free now (weights and caches must fit in RAM)
    memoryBytes: args.memory != null ? args.memory * 2 ** 20 : Math.floor(freemem() * 0.7),
    cacheBudgetBytes: args.cacheMb * 2 ** 20,
    kvCache: args.kvCache,
    maxSessions: args.maxSessions,
    offersHead: args.offerHead,
    rebalanceMs: args.rebalanceInterval * 1000,
    balanceFactor: args.balanceFactor,
    remeasure: args.remeasure,
    onServing: (event, span) => {
      const what = `blocks ${span.start}–${span.end - 1} of ${manifest.name} (${shortId(manifest.id)}) on ${backendName} at ${span.throughput.tokensPerSecond.toFixed(1)} tokens/s per block, ${describeThroughput(span.throughput)}`
      emit(event, event === 'ready' ? `serving ${what}\npeer ${node.peerId}\n${addrs.map(a => '  ' + a).join('\n')}` : `moved: now serving ${what}`,
        { peerId: node.peerId.toString(), addrs, modelId: manifest.id, modelName: manifest.name, numBlocks: cfg.numLayers, start: span.start, end: span.end, throughput: span.throughput.tokensPerSecond, throughputMeasuredAt: new Date(span.throughput.measuredAt).toISOString(), throughputCached: span.throughput.cached, backend: backendName, metricsPort: metricsServer?.port })
    }
  })
  try {
    await member.start()
  } catch (err) {
    await member.stop()
    await node.stop()
    throw err
  }
  onShutdown(async () => {
    await member.stop()
    await metricsServer?.close()
    await node.stop()
    await ckpt.close()
  })
}
