// A swarm of real plexus-node processes on 127.0.0.1: for `npm start`, the tests and the benchmarks.
import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { createPlexusNode, dialBootstrap, discoverServers, discoverVerifiers } from '@plexus/p2p'

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
export const NODE_BIN = join(ROOT, 'packages/server/bin/plexus-node.js')
export const CLIENT_BIN = join(ROOT, 'packages/client/bin/plexus-client.js')

/** Where nodes started here listen unless their args say otherwise: loopback, any free port (plexus-node's own default is every interface). */
export const LOOPBACK = ['--listen', '/ip4/127.0.0.1/tcp/0']

export interface NodeProcess {
  name: string
  child: ChildProcess
  peerId: string
  addrs: string[]
  /** The `ready` event the node printed. */
  ready: Record<string, any>
  /** Everything it wrote to stderr (for failure reports). */
  stderr: () => string
  /** SIGTERM, then SIGKILL after `graceMs`; resolves when the process is gone. */
  stop: (graceMs?: number) => Promise<void>
}

export interface StartNodeOptions {
  name: string
  args: string[]
  timeoutMs?: number
  env?: NodeJS.ProcessEnv
  /** The plexus-node bin to run (default: the repository's). */
  bin?: string
}

/** Starts `plexus-node <args> --json` and resolves once it printed its `ready` event. */
export async function startNode (opts: StartNodeOptions): Promise<NodeProcess> {
  const args = opts.args.includes('--listen') || !['bootstrap', 'join'].includes(opts.args[0]) ? opts.args : [...opts.args, ...LOOPBACK]
  const child = spawn(process.execPath, [opts.bin ?? NODE_BIN, ...args, '--json'], { stdio: ['ignore', 'pipe', 'pipe'], env: opts.env ?? process.env })
  let err = ''
  child.stderr!.on('data', (d: Buffer) => { err += d.toString(); if (err.length > 1 << 20) err = err.slice(-(1 << 19)) })
  const exited = new Promise<void>(resolve => child.once('exit', () => resolve()))
  const stop = async (graceMs = 5000): Promise<void> => {
    if (child.exitCode != null || child.signalCode != null) return
    child.kill('SIGTERM')
    const t = setTimeout(() => child.kill('SIGKILL'), graceMs)
    await exited
    clearTimeout(t)
  }
  const ready = await new Promise<Record<string, any>>((resolve, reject) => {
    const timer = setTimeout(() => { void stop(0); reject(new Error(`${opts.name} not ready within ${(opts.timeoutMs ?? 120_000) / 1000} s:\n${err}`)) }, opts.timeoutMs ?? 120_000)
    const lines = createInterface({ input: child.stdout! })
    lines.on('line', (line) => {
      let ev: any
      try { ev = JSON.parse(line) } catch { return }
      if (ev.event === 'ready') { clearTimeout(timer); resolve(ev) }
    })
    child.once('exit', (code, sig) => { clearTimeout(timer); reject(new Error(`${opts.name} exited (${code ?? sig}) before it was ready:\n${err}`)) })
  })
  return { name: opts.name, child, peerId: ready.peerId, addrs: ready.addrs, ready, stderr: () => err, stop }
}

export interface LocalSwarm {
  bootstrap: NodeProcess
  nodes: NodeProcess[]
  bootstrapAddr: string
  /** Starts one more server (e.g. a spare holder) joined to this swarm. */
  add: (name: string, model: string, blocks?: string, extra?: string[]) => Promise<NodeProcess>
  stop: () => Promise<void>
}

/**
 * Waits (bounded) until a fresh client can discover every given server of its model, as a user
 * joining now would: "ready" means a server announced itself, not that every lookup path has it.
 */
export async function untilDiscoverable (bootstrapAddr: string, servers: NodeProcess[], timeoutMs = 30_000): Promise<void> {
  if (servers.length === 0) return
  const probe = await createPlexusNode({ privateKey: await generateKeyPair('Ed25519'), listen: [], dhtMode: 'client' })
  try {
    // generous: nodes starting together on a loaded machine answer a dial slowly
    await dialBootstrap(probe, [bootstrapAddr], { timeoutMs: 20_000 })
    const until = Date.now() + timeoutMs
    const byModel = new Map<string, NodeProcess[]>()
    // servers and verifiers are found through different keys
    for (const s of servers) byModel.set(`${s.ready.role ?? 'server'} ${s.ready.modelId}`, [...(byModel.get(`${s.ready.role ?? 'server'} ${s.ready.modelId}`) ?? []), s])
    for (const [key, list] of byModel) {
      const [role, modelId] = key.split(' ')
      const discover = role === 'verifier' ? discoverVerifiers : discoverServers
      for (;;) {
        const found = new Set((await discover(probe, { modelId, numBlocks: list[0].ready.numBlocks ?? 0, lookupTimeoutMs: 5000 })).map(d => d.peer))
        if (list.every(s => found.has(s.peerId))) break
        if (Date.now() > until) {
          const missing = list.filter(s => !found.has(s.peerId))
          throw new Error(`servers not discoverable after ${timeoutMs / 1000} s: ${missing.map(s => s.name).join(', ')} (found ${found.size}; probe has ${probe.getConnections().length} connections)\n` +
            missing.map(s => `--- ${s.name} stderr:\n${s.stderr().split('\n').slice(-25).join('\n')}`).join('\n'))
        }
        await new Promise(resolve => setTimeout(resolve, 300))
      }
    }
  } finally {
    await probe.stop()
  }
}

/** A bootstrap peer plus one server per span (`blocks` like ['0:4', '4:8', '8:12']), all started in parallel. */
export async function startSwarm (model: string, blocks: string[], extra: string[] = []): Promise<LocalSwarm> {
  const bootstrap = await startNode({ name: 'bootstrap', args: ['bootstrap'] })
  const bootstrapAddr = bootstrap.addrs[0]
  const nodes: NodeProcess[] = []
  const join = async (name: string, m: string, b?: string, x: string[] = extra): Promise<NodeProcess> => {
    const n = await startNode({ name, args: ['join', '--bootstrap', bootstrapAddr, '--model', m, ...(b != null ? ['--blocks', b] : []), ...x] })
    nodes.push(n)
    return n
  }
  const add = async (name: string, m: string, b?: string, x: string[] = extra): Promise<NodeProcess> => {
    const n = await join(name, m, b, x)
    await untilDiscoverable(bootstrapAddr, [n])
    return n
  }
  const stop = async (): Promise<void> => { await Promise.all([...nodes, bootstrap].map(async n => { await n.stop() })) }
  try {
    await Promise.all(blocks.map(async (b, i) => await join(`node${i}[${b}]`, model, b)))
    await untilDiscoverable(bootstrapAddr, nodes)
  } catch (err) {
    await stop()
    throw err
  }
  return { bootstrap, nodes, bootstrapAddr, add, stop }
}
