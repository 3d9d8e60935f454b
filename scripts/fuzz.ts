// A seeded fuzzer of a real swarm: a bootstrap peer, one plexus-node server (and a verifier) and a
// `plexus-client serve` gateway, each its own process. From an in-process libp2p peer it opens a
// stream on every protocol each node registers and sends valid frames with mutated fields, bit
// flips, truncations, length-prefix lies, wrong version bytes, random JSON bodies, random bytes
// and valid frames out of order; it POSTs random and mutated JSON to every gateway route. A
// stream must end within its deadline once the fuzzer has sent all it will; a route must answer
// 2xx, 4xx or 503. Afterwards every process must be alive, /health ok, an honest generation the
// same text as before, and each process's RSS within its baseline plus a bound. Prints what it
// tried, per protocol and route; exits 1 on any crash, stuck stream, 5xx or breach.
//
//   npm run fuzz -- [--seed N] [--count 10000] [--time SECONDS] [--target node|gateway|all]
//                   [--local] [--no-verifier] [--concurrency 6] [--deadline SECONDS]
//                   [--rss-bound MiB] [--verbose] [--json]
import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { parseArgs } from 'node:util'
import { peerIdFromString } from '@libp2p/peer-id'
import type { PeerId } from '@libp2p/interface'
import type { PlexusNode } from '@plexus/p2p'
import { connectSwarm, stopNode } from '@plexus/client'
import { startSwarm, CLIENT_BIN } from './lib/local-swarm.ts'
import type { LocalSwarm, NodeProcess } from './lib/local-swarm.ts'
import { makeModel } from './lib/model-maker.ts'
import { prng, streamInput, httpInput } from './lib/fuzz-inputs.ts'
import type { Target } from './lib/fuzz-inputs.ts'
import * as run from './lib/fuzz-run.ts'
const { streamOnce, httpOnce, Tally } = run

const { values: a } = parseArgs({
  options: {
    seed: { type: 'string', default: '1' },
    count: { type: 'string', default: '10000' },
    time: { type: 'string', default: '1800' },
    target: { type: 'string', default: 'all' },
    local: { type: 'boolean', default: false },
    'no-verifier': { type: 'boolean', default: false },
    concurrency: { type: 'string', default: '6' },
    deadline: { type: 'string', default: '20' },
    'rss-bound': { type: 'string', default: '128' },
    verbose: { type: 'boolean', default: false },
    json: { type: 'boolean', default: false }
  }
})
const SEED = Number(a.seed)
const COUNT = Number(a.count)
const TIME_MS = Number(a.time) * 1000
const DEADLINE_MS = Number(a.deadline) * 1000
const RSS_BOUND = Number(a['rss-bound'])
const CONCURRENCY = Number(a.concurrency)
if (!['node', 'gateway', 'all'].includes(a.target!)) throw new Error('--target is node, gateway or all')
const NODES = a.target !== 'gateway'
const GATEWAY = a.target !== 'node'
/** Of every 10 inputs with --target all, this many go to the gateway (HTTP requests cost more). */
const GATEWAY_SHARE = 3

const log = (s: string): void => { process.stderr.write(s + '\n') }
const rssMiB = (pid: number): number => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? NaN) / 1024
const alive = (c: ChildProcess): boolean => c.exitCode == null && c.signalCode == null

interface Gateway { child: ChildProcess, port: number, model: string, stderr: () => string }

async function startGateway (model: string, swarm: LocalSwarm | undefined): Promise<Gateway> {
  const source = swarm != null ? ['--bootstrap', swarm.bootstrapAddr] : ['--local']
  const child = spawn(process.execPath, [CLIENT_BIN, 'serve', ...source, '--model', model, '--port', '0', '--json'], { stdio: ['ignore', 'pipe', 'pipe'] })
  let err = ''
  child.stderr!.on('data', (d: Buffer) => { err = (err + d.toString()).slice(-(1 << 16)) })
  const ready = await new Promise<any>((resolve, reject) => {
    createInterface({ input: child.stdout! }).on('line', (l) => { try { const ev = JSON.parse(l); if (ev.event === 'ready') resolve(ev) } catch {} })
    child.once('exit', (code) => { reject(new Error(`serve exited (${code}):\n${err}`)) })
  })
  return { child, port: Number(new URL(ready.url).port), model: ready.model, stderr: () => err }
}

/** What an honest OpenAI-style client gets (greedy): the same text before and after the fuzzing. */
async function honest (gw: Gateway): Promise<string> {
  const r = await fetch(`http://127.0.0.1:${gw.port}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: gw.model, prompt: 'The swarm', max_tokens: 8, temperature: 0 }), signal: AbortSignal.timeout(120_000) })
  const body: any = await r.json()
  if (r.status !== 200) throw new Error(`honest request: ${r.status} ${JSON.stringify(body)}`)
  return body.choices[0].text
}

/** An initialized MCP session's id (the fuzzer's tool calls name it). */
async function mcpSession (gw: Gateway): Promise<string> {
  const r = await fetch(`http://127.0.0.1:${gw.port}/mcp`, { method: 'POST', headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: JSON.stringify({ jsonrpc: '2.0', id: 0, method: 'initialize', params: { protocolVersion: '2025-03-26', capabilities: {}, clientInfo: { name: 'fuzz', version: '0' } } }) })
  await r.text()
  const id = r.headers.get('mcp-session-id')
  if (r.status !== 200 || id == null) throw new Error(`MCP initialize: ${r.status}`)
  await fetch(`http://127.0.0.1:${gw.port}/mcp`, { method: 'POST', headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', 'mcp-session-id': id }, body: JSON.stringify({ jsonrpc: '2.0', method: 'notifications/initialized' }) }).then(async x => await x.text())
  return id
}

interface Peer { name: string, proc: NodeProcess, id: PeerId, protocols: string[] }

async function main (): Promise<number> {
  const started = Date.now()
  const dir = await mkdtemp(join(tmpdir(), 'plexus-fuzz-'))
  const model = join(dir, 'tiny')
  let swarm: LocalSwarm | undefined
  let gw: Gateway | undefined
  let client: PlexusNode | undefined
  const failures: string[] = []
  try {
    // 256 positions: a mutated max_tokens cannot make one generation long
    await makeModel({ shape: { hiddenSize: 64, numLayers: 3, numHeads: 4, numKvHeads: 2, intermediateSize: 192, vocabSize: 512, maxPositions: 256 }, out: model, seed: 7, name: 'fuzz-tiny' })
    const peers: Peer[] = []
    if (NODES || !a.local) {
      swarm = await startSwarm(model, ['0:3'])
      const procs = [swarm.nodes[0]]
      if (NODES && !a['no-verifier']) procs.push(await swarm.add('verifier', model, undefined, ['--verify']))
      for (const p of procs) peers.push({ name: p.name.replace(/^node0/, 'server'), proc: p, id: peerIdFromString(p.peerId), protocols: [] })
    }
    if (GATEWAY || peers.length > 0) gw = await startGateway(model, a.local ? undefined : swarm)
    const server = swarm?.nodes[0]
    const target: Target = { modelId: server?.ready.modelId ?? '0'.repeat(64), numBlocks: 3, hidden: 64, serverPeer: server?.peerId ?? '' }
    const reference = await honest(gw!)
    const mcp = GATEWAY ? await mcpSession(gw!) : undefined
    const watched: Array<[string, ChildProcess]> = [...(swarm != null ? [['bootstrap', swarm.bootstrap.child] as [string, ChildProcess]] : []), ...peers.map(p => [p.name, p.proc.child] as [string, ChildProcess]), ['gateway', gw!.child]]
    const connectionsClosed = new Map<string, number>()
    const inFlight = new Map<number, string>()
    const closedWhile: string[] = []
    const baseline = new Map(watched.map(([n, c]) => [n, rssMiB(c.pid!)]))

    if (NODES) {
      client = await connectSwarm([swarm!.bootstrapAddr])
      // connections the nodes closed under the fuzzer (a new one is dialed for the next stream)
      client.addEventListener('connection:close', (e) => { const p = peers.find(x => x.id.equals(e.detail.remotePeer)); if (p != null) { connectionsClosed.set(p.name, (connectionsClosed.get(p.name) ?? 0) + 1); if (closedWhile.length < 10) closedWhile.push(`${p.name} while in flight: ${[...inFlight.values()].join('; ')}`) } })
      for (const p of peers) {
        await client.dial(p.id)
        // what identify says the node registered: every one of them is fuzzed
        for (let i = 0; i < 50 && p.protocols.length === 0; i++) {
          p.protocols = (await client.peerStore.get(p.id)).protocols.slice().sort()
          if (p.protocols.length === 0) await new Promise(resolve => setTimeout(resolve, 100))
        }
        log(`${p.name} registers: ${p.protocols.join(' ')}`)
      }
    }
    const pairs = peers.flatMap(p => p.protocols.map(proto => ({ p, proto })))
    const streams = new Tally()
    const routes = new Tally()
    let next = 0
    let stoppedByTime = false
    const fuzzStart = Date.now()
    const worker = async (): Promise<void> => {
      for (;;) {
        const i = next++
        if (i >= COUNT) return
        if (Date.now() - fuzzStart > TIME_MS) { stoppedByTime = true; return }
        const r = prng((Math.imul(SEED, 0x9E3779B1) + i) >>> 0)
        const toGateway = !NODES || (GATEWAY && i % 10 < GATEWAY_SHARE)
        try {
          if (toGateway) {
            const input = httpInput(r, gw!.model, mcp)
            const o = await httpOnce(gw!.port, input, DEADLINE_MS * 3)
            routes.add(`${input.method} ${input.path.startsWith('/v1/models/') ? '/v1/models/:model' : input.path}`, input.mutation, String(o.status))
            if (!o.ok) failures.push(`#${i} ${input.method} ${input.path} (${input.mutation}) → ${o.status}: ${input.body?.slice(0, 300)}`)
            if (a.verbose) log(`#${i} ${input.method} ${input.path} ${input.mutation} ${input.body?.length ?? 0} B → ${o.status}`)
          } else {
            const { p, proto } = pairs[i % pairs.length]
            const { mutation, data } = streamInput(r, proto, target)
            inFlight.set(i, `#${i} ${p.name} ${proto} ${mutation}`)
            const o = await streamOnce(client!, p.id, proto, data, DEADLINE_MS).finally(() => inFlight.delete(i))
            streams.add(`${p.name} ${proto}`, mutation, o)
            if (o === 'stuck') failures.push(`#${i} ${p.name} ${proto} (${mutation}, ${data.length} B) stuck: no end within ${DEADLINE_MS / 1000} s: ${run.lastStuck}`)
            if (a.verbose) log(`#${i} ${p.name} ${proto} ${mutation} ${data.length} B → ${o}`)
          }
        } catch (err) {
          failures.push(`#${i}: the fuzzer failed: ${(err as Error).stack}`)
        }
        if ((i + 1) % 500 === 0) log(`${i + 1} inputs, ${((Date.now() - fuzzStart) / 1000).toFixed(0)} s`)
      }
    }
    await Promise.all(Array.from({ length: CONCURRENCY }, worker))
    const fuzzMs = Date.now() - fuzzStart

    // afterwards: alive, healthy, the same text, memory within bounds
    await new Promise(resolve => setTimeout(resolve, 1000))
    for (const [n, c] of watched) if (!alive(c)) failures.push(`crash: ${n} exited (${c.exitCode ?? c.signalCode})`)
    const health = await fetch(`http://127.0.0.1:${gw!.port}/health`, { signal: AbortSignal.timeout(30_000) }).then(r => r.status).catch(e => String(e))
    if (health !== 200) failures.push(`/health answered ${health}`)
    const after = await honest(gw!).catch(e => `failed: ${(e as Error).message}`)
    if (after !== reference) failures.push(`honest generation changed: ${JSON.stringify(reference)} → ${JSON.stringify(after)}`)
    const rss = watched.map(([n, c]) => {
      const now = alive(c) ? rssMiB(c.pid!) : NaN
      const base = baseline.get(n)!
      if (!(now <= base + RSS_BOUND)) failures.push(`${n} RSS ${now.toFixed(0)} MiB over its baseline ${base.toFixed(0)} + ${RSS_BOUND} MiB`)
      return { process: n, baselineMiB: Math.round(base), afterMiB: Math.round(now) }
    })

    const stuck = streams.count(o => o === 'stuck')
    const http5xx = routes.count(o => !(/^[24]\d\d$/.test(o) || o === '503'))
    const crashes = failures.filter(f => f.startsWith('crash')).length
    const summary = {
      seed: SEED, target: a.target, inputs: streams.total() + routes.total(), streamInputs: streams.total(), httpInputs: routes.total(),
      fuzzSeconds: Math.round(fuzzMs / 100) / 10, totalSeconds: Math.round((Date.now() - started) / 100) / 10, stoppedByTime,
      crashes, stuck, httpFailures: http5xx, health, sameText: after === reference, rss, rssBoundMiB: RSS_BOUND, connectionsClosed: Object.fromEntries(connectionsClosed),
      streams: streams.json(), routes: routes.json(), failures: failures.slice(0, 50)
    }
    log('')
    if (streams.total() > 0) log(streams.table(`streams (seed ${SEED}): outcome = <reply: error code | reply | none>/<closed | reset>, refused = no stream, stuck = no end within ${DEADLINE_MS / 1000} s`))
    if (routes.total() > 0) log(routes.table('gateway routes: outcome = HTTP status (stuck = no answer, conn-error = dropped)'))
    log(`\n${summary.inputs} inputs in ${summary.fuzzSeconds} s${stoppedByTime ? ' (stopped by --time)' : ''}: ${crashes} crashes, ${stuck} stuck streams, ${http5xx} failed HTTP requests; /health ${health}; honest text ${after === reference ? 'unchanged' : 'CHANGED'}`)
    if (connectionsClosed.size > 0) log(`  libp2p connections to the nodes closed during the run (and dialed again): ${[...connectionsClosed].map(([n, c]) => `${n} ${c}`).join(', ')}`)
    for (const c of closedWhile) log(`    ${c}`)
    for (const x of rss) log(`  RSS ${x.process}: ${x.baselineMiB} → ${x.afterMiB} MiB (bound +${RSS_BOUND})`)
    for (const f of failures.slice(0, 50)) log(`FAIL ${f}`)
    if (failures.length > 0) for (const [n, c] of [...peers.map(p => [p.name, p.proc.stderr()]), ['gateway', gw!.stderr()]]) log(`--- ${n} stderr (tail):\n${c.split('\n').slice(-20).join('\n')}`)
    if (a.json) process.stdout.write(JSON.stringify(summary) + '\n')
    return failures.length === 0 ? 0 : 1
  } finally {
    if (client != null) await stopNode(client)
    if (gw != null && alive(gw.child)) { const exited = new Promise(resolve => gw!.child.once('exit', resolve)); gw.child.kill('SIGTERM'); await exited }
    await swarm?.stop()
    await rm(dir, { recursive: true, force: true })
  }
}

process.exitCode = await main()
