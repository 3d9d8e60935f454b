import { generateKeyPair } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'
import { bootstrapOrDefault, bootstrapRecords, createPlexusNode, dialBootstrap, keepBootstrapped, loadOrCreateKey, networkOptions, runSwarmKey, configureLogging, createLog, progressReporter, progressStyle, reachability, settledReachability, portMapped, quantizeFormat } from '@plexus/p2p'
import type { PlexusNode, Log } from '@plexus/p2p'
import { freemem } from 'node:os'
import { initBackend, openModel, loadManifest, shortId, withQuantization, PLEXUS_VERSION, UsageError } from '@plexus/runtime'
import { SwarmMember } from './swarm-member.ts'
import { describeThroughput } from './throughput.ts'
import { VerifierNode } from './verifier-node.ts'
import type { FaultInjection } from './backend.ts'
import { NodeMetrics } from './metrics.ts'
import type { NodeHealth } from './metrics.ts'
import { readyLine } from './ready-line.ts'
import { startNodeDashboard } from './node-dashboard.ts'
import type { NodeArgs, BootstrapArgs, JoinArgs } from './cli-options.ts'

export type { BootstrapArgs, JoinArgs } from './cli-options.ts'

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

/** `--json`: one JSON object per event on stdout (what tests and tools parse); else the log's line. */
function emitter (json: boolean, log: Log) {
  return (event: string, human: string, data: Record<string, unknown> = {}): void => {
    if (json) process.stdout.write(JSON.stringify({ event, ...data }) + '\n')
    else log.event(event, human, data)
  }
}

/** The node's log, as --log-level and --log-format say. */
function nodeLog (args: NodeArgs): Log {
  configureLogging({ prefix: 'plexus-node: ', ...(args.logLevel != null ? { level: args.logLevel } : {}), ...(args.logFormat != null ? { format: args.logFormat } : {}) })
  return createLog('node')
}

async function key (path?: string): Promise<PrivateKey> {
  return path != null ? await loadOrCreateKey(path) : await generateKeyPair('Ed25519')
}

/** Stops cleanly on SIGINT/SIGTERM (a second signal exits at once). */
function onShutdown (log: Log, stop: () => Promise<void>): void {
  // Diagnosing memory: under `node --expose-gc`, SIGUSR2 runs a full garbage collection.
  const gc = (globalThis as { gc?: () => void }).gc
  if (gc != null) process.on('SIGUSR2', () => { gc() })
  let stopping = false
  const handler = (sig: string): void => {
    if (stopping) process.exit(1)
    stopping = true
    log.info(`${sig}: stopping…`)
    stop().then(() => process.exit(0), (err) => { log.error(err.message); process.exit(1) })
  }
  process.on('SIGINT', () => handler('SIGINT'))
  process.on('SIGTERM', () => handler('SIGTERM'))
}

function fullAddrs (node: PlexusNode): string[] {
  return node.getMultiaddrs().map(a => a.toString())
}

/** The ready event's `mapped`: the addresses the router forwards (UPnP), when it does. */
function mappedField (node: PlexusNode): { mapped?: string[] } {
  const mapped = portMapped(node)
  return mapped.length > 0 ? { mapped } : {}
}

export { runSwarmKey }

export async function runBootstrap (args: BootstrapArgs): Promise<void> {
  const log = nodeLog(args)
  const emit = emitter(args.json, log)
  const node = await createPlexusNode({ privateKey: await key(args.key), ...await networkOptions(args, 'bootstrap'), dhtMode: 'server', maxBufferedBytes: bufferedBytes(args) })
  const addrs = fullAddrs(node)
  const records = args.dnsaddr != null ? bootstrapRecords(args.dnsaddr, addrs) : undefined
  const dashboard = args.dashboardPort != null ? await startNodeDashboard({ node, port: args.dashboardPort, host: args.dashboardHost ?? '127.0.0.1' }) : undefined
  emit('ready', `bootstrap peer ${node.peerId} listening; join with:\n${addrs.map(a => `  plexus-node join --bootstrap ${a} --model DIR`).join('\n')}${records != null ? `\n${records.text}` : ''}`,
    { peerId: node.peerId.toString(), addrs, role: 'bootstrap', reachable: reachability(node), ...(records != null ? { dnsaddr: records.records } : {}), ...(dashboard != null ? { dashboardPort: dashboard.port } : {}) })
  onShutdown(log, async () => { await dashboard?.close(); await node.stop() })
}

/** --max-buffered-mb in bytes; a usage error unless positive. */
function bufferedBytes (args: { maxBufferedMb: number }): number {
  if (!(args.maxBufferedMb > 0)) throw new UsageError(`--max-buffered-mb ${args.maxBufferedMb}: expected a positive number of MiB`)
  return Math.floor(args.maxBufferedMb * 2 ** 20)
}

export function parseBlocks (spec: string | undefined, numLayers: number): [number, number] | undefined {
  if (spec == null) return undefined
  const [a, b] = spec.split(':').map(Number)
  if (!(a >= 0 && b > a && b <= numLayers)) throw new UsageError(`--blocks ${spec}: need 0 ≤ start < end ≤ ${numLayers} (this model has ${numLayers} blocks)`)
  return [a, b]
}

export async function runJoin (args: JoinArgs): Promise<void> {
  const log = nodeLog(args)
  const emit = emitter(args.json, log)
  const onProgress = progressReporter({ log, style: progressStyle({ json: args.json }) })
  const bootstrap = bootstrapOrDefault(args.bootstrap)
  const backendName = await initBackend(args.backend, { note: (m) => { log.info(m) } })
  const ckpt = withQuantization(await openModel(args.model), quantizeFormat(args.quantize))
  const cfg = ckpt.config
  const blocks = parseBlocks(args.blocks, cfg.numLayers)
  const manifest = await loadManifest(ckpt, { onProgress })
  const privateKey = await key(args.key)
  const node = await createPlexusNode({ privateKey, ...await networkOptions(args, 'join'), dhtMode: 'server', maxBufferedBytes: bufferedBytes(args) })
  try {
    const r = await dialBootstrap(node, bootstrap)
    for (const f of r.failed) log.warn(f.error)
    keepBootstrapped(node, bootstrap)
  } catch (err) {
    await node.stop()
    throw err
  }
  // behind NAT: the relay reservation first (≤ 10 s), so the ready line lists the addresses peers use
  await settledReachability(node)
  const addrs = fullAddrs(node)
  if (args.verify === true) {
    const [start, end] = blocks ?? [0, cfg.numLayers]
    const verifier = await VerifierNode.start({ node, privateKey, checkpoint: ckpt, manifest }, { start, end, tolerance: args.tolerance, maxSessions: args.maxSessions, maxRechecks: args.maxRechecks, maxChecksPerPeer: args.maxChecksPerPeer, maxRechecksPerPeer: args.maxRechecksPerPeer, onProgress })
    const ready = { peerId: node.peerId.toString(), addrs, role: 'verifier' as const, modelId: manifest.id, modelName: manifest.name, numBlocks: cfg.numLayers, start, end, backend: backendName, reachable: reachability(node), ...mappedField(node) }
    emit('ready', readyLine(ready), { ...ready, tolerance: verifier.verifier.tolerance })
    onShutdown(log, async () => {
      await verifier.stop()
      await node.stop()
      await ckpt.close()
    })
    return
  }
  // the node's counters: its servers count into them, its dashboard reads them (node-services.ts)
  const metrics = new NodeMetrics({ backends: () => node.services.plexus.sessions })
  node.services.plexus.metrics = metrics
  let member: SwarmMember | undefined
  const health = async (): Promise<NodeHealth> => {
    const base = { version: PLEXUS_VERSION, peerId: node.peerId.toString(), peers: node.getConnections().length }
    return member == null ? { status: 'starting', ...base } : { ...await member.health(), ...base }
  }
  const metricsServer = args.metricsPort != null ? await metrics.listen(args.metricsPort, args.metricsHost, { health }) : undefined
  const dashboard = args.dashboardPort != null
    ? await startNodeDashboard({ node, member: () => member, modelName: manifest.name, port: args.dashboardPort, host: args.dashboardHost })
    : undefined
  const faults = parseFaults(args)
  if (faults != null) log.warn('fault injection is on: this node deliberately returns wrong activations (testing only)')
  member = new SwarmMember({ node, privateKey, checkpoint: ckpt, manifest }, {
    faults,
    backend: backendName,
    blocks,
    // default: most of the memory free now (weights and caches must fit in RAM)
    memoryBytes: args.memory != null ? args.memory * 2 ** 20 : Math.floor(freemem() * 0.7),
    cacheBudgetBytes: args.cacheMb * 2 ** 20,
    kvCache: args.kvCache,
    maxSessions: args.maxSessions,
    budgets: {
      maxSessionsPerPeer: args.maxSessionsPerPeer,
      maxPeerCacheShare: args.maxKvSharePerPeer,
      maxStepTokens: args.maxStepTokens,
      maxChunkTokens: args.maxChunkTokens,
      idleTimeoutMs: args.sessionIdleTimeout * 1000,
      maxLifetimeMs: args.maxSessionLifetime * 1000
    },
    offersHead: args.offerHead,
    forwarding: args.forwarding,
    rebalanceMs: args.rebalanceInterval * 1000,
    balanceFactor: args.balanceFactor,
    remeasure: args.remeasure,
    onProgress,
    onServing: (event, span) => {
      const what = `blocks ${span.start}–${span.end - 1} of ${manifest.name} (${shortId(manifest.id)}) on ${backendName} at ${span.throughput.tokensPerSecond.toFixed(1)} tokens/s per block, ${describeThroughput(span.throughput)}`
      const urls: Record<string, string> = {}
      if (metricsServer != null) urls.metrics = `http://${args.metricsHost}:${metricsServer.port}/metrics`
      if (dashboard != null) urls.dashboard = dashboard.url
      const ready = { peerId: node.peerId.toString(), role: 'server' as const, backend: backendName, modelId: manifest.id, modelName: manifest.name, numBlocks: cfg.numLayers, start: span.start, end: span.end, format: member?.weightFormat, throughput: span.throughput, addrs: fullAddrs(node), reachable: reachability(node), ...mappedField(node), urls }
      emit(event, event === 'ready' ? readyLine(ready) : `moved: now serving ${what}`,
        { ...ready, throughput: span.throughput.tokensPerSecond, throughputMeasuredAt: new Date(span.throughput.measuredAt).toISOString(), throughputCached: span.throughput.cached, metricsPort: metricsServer?.port, dashboardPort: dashboard?.port })
    }
  })
  try {
    await member.start()
  } catch (err) {
    await member.stop()
    await dashboard?.close()
    await node.stop()
    throw err
  }
  onShutdown(log, async () => {
    await member.stop()
    await metricsServer?.close()
    await dashboard?.close()
    await node.stop()
    await ckpt.close()
  })
}
