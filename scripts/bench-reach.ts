// `npm run bench:reach [-- --delay-ms 20]` (root): per-token decode latency through a direct, a
// hole-punched and a relayed hop, in Linux network namespaces (test/reachability.test.ts's topology).
import { parseArgs } from 'node:util'
import { createInterface } from 'node:readline'
import type { ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { rmSync } from 'node:fs'
import { readModelConfig, seededRandom } from '@plexus/runtime'
import { NetnsTopology, netnsUnavailable } from '../test/support/netns.ts'
import type { DelayMethod } from '../test/support/netns.ts'
import { benchModel, median, onExit } from './lib/bench-common.ts'
import { NODE_BIN } from './lib/local-swarm.ts'

const { values: a } = parseArgs({
  options: {
    model: { type: 'string' },
    shape: { type: 'string', default: 'tiny' },
    'prompt-tokens': { type: 'string', default: '16' },
    tokens: { type: 'string', default: '32' },
    rounds: { type: 'string', default: '3' },
    'delay-ms': { type: 'string', default: '0' },
    routes: { type: 'string', default: 'direct,hole-punched,relayed' },
    'json-only': { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false }
  }
})
if (a.help === true) {
  process.stdout.write(`usage: npm run bench:reach -- [--model DIR | --shape tiny|small] [--prompt-tokens N] [--tokens N] [--rounds N] [--delay-ms N] [--routes direct,hole-punched,relayed] [--json-only]

Needs root (network namespaces, veth pairs, iptables, tc). Builds a public network with a bootstrap
peer (the relay) and a STUN server, a public server host, two homes behind NAT (home 1
endpoint-independent, home 2 symmetric) and a client in a third home. For each route it starts one
server holding every block, in turn on the public network (direct), in home 1 (hole-punched over
WebRTC) and in home 2 (relayed), generates greedily from the client for --rounds rounds, and prints
the median decode step (ms/token) with the connection kind each hop's stream was seen on.
--delay-ms delays what every home router sends out of its uplink (one way) by N ms: tc netem
where the kernel has sch_netem, otherwise a userspace delay link (scripts/lib/delay-link.c,
compiled with cc on first use); the output says which. Without --model, a random-weight model of --shape is made
once in the system temp folder. Everything it makes is removed on exit and on Ctrl-C.\n`)
  process.exit(0)
}
const why = netnsUnavailable()
if (why != null) { process.stderr.write(`bench:reach cannot run here: ${why}\n`); process.exit(1) }
const log = (s: string): void => { if (a['json-only'] !== true) process.stderr.write(s + '\n') }
const routes = a.routes!.split(',').map(r => r.trim()).filter(r => r !== '')
const where: Record<string, string> = { direct: 'srv', 'hole-punched': 'h1m', relayed: 'h2m' }
for (const r of routes) if (where[r] == null) throw new Error(`--routes: direct, hole-punched or relayed, not ${r}`)
const delayMs = Number(a['delay-ms'])
const dir = await benchModel(a.model, a.shape!, log)
const cfg = await readModelConfig(dir)
const rand = seededRandom(7)
const prompt = Array.from({ length: Number(a['prompt-tokens']) }, () => 3 + Math.floor(rand() * (cfg.vocabSize - 3)))
const PROBE = fileURLToPath(new URL('./lib/reach-probe.ts', import.meta.url))
const STUN_SERVER = fileURLToPath(new URL('../test/support/stun-server.ts', import.meta.url))

/** Starts `plexus-node ARGS --json` in a namespace; resolves on its ready event. */
async function startIn (topo: NetnsTopology, ns: string, args: string[], timeoutMs = 90_000): Promise<{ child: ChildProcess, ready: Record<string, any>, stderr: () => string }> {
  const child = topo.spawn(ns, process.execPath, [NODE_BIN, ...args, '--json'])
  let err = ''
  child.stderr!.on('data', (d: Buffer) => { err = (err + d.toString()).slice(-20_000) })
  const ready = await new Promise<Record<string, any>>((resolve, reject) => {
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`${ns}: not ready within ${timeoutMs / 1000} s:\n${err}`)) }, timeoutMs)
    createInterface({ input: child.stdout! }).on('line', line => {
      try { const ev = JSON.parse(line); if (ev.event === 'ready') { clearTimeout(timer); resolve(ev) } } catch {}
    })
    child.once('exit', code => { clearTimeout(timer); reject(new Error(`${ns}: exited (${code}) before it was ready:\n${err}`)) })
  })
  return { child, ready, stderr: () => err }
}

/** Runs a command in a namespace to its end, killed after `timeoutMs`. */
async function runIn (topo: NetnsTopology, ns: string, args: string[], timeoutMs: number): Promise<{ code: number | null, stdout: string, stderr: string }> {
  const child = topo.spawn(ns, process.execPath, args)
  let stdout = ''
  let stderr = ''
  child.stdout!.on('data', (d: Buffer) => { stdout += d.toString() })
  child.stderr!.on('data', (d: Buffer) => { stderr = (stderr + d.toString()).slice(-20_000) })
  const timer = setTimeout(() => { stderr += `\n(killed after ${timeoutMs / 1000} s)`; child.kill('SIGKILL') }, timeoutMs)
  const code = await new Promise<number | null>(resolve => child.once('exit', resolve))
  clearTimeout(timer)
  return { code, stdout, stderr }
}

async function stop (child: ChildProcess): Promise<void> {
  if (child.exitCode != null || child.signalCode != null) return
  const gone = new Promise(resolve => child.once('exit', resolve))
  child.kill('SIGTERM')
  const t = setTimeout(() => child.kill('SIGKILL'), 5000)
  await gone
  clearTimeout(t)
}

const topo = new NetnsTopology('pb')
const keyFile = `/tmp/${topo.prefix}-bootstrap.key`
const removeKey = onExit(() => rmSync(keyFile, { force: true }))
interface RouteResult { route: string, server: string, reachable: string, hop_kinds: string[], hop_addrs: string[], verified: boolean, ms_per_token: number, compute_ms_per_token: number, network_ms_per_token: number, steps: number, rounds: number, tokens_identical: boolean, error?: string }
const results: RouteResult[] = []
let delayMethod: DelayMethod | undefined
try {
  topo.addSwitch('net')
  topo.addHost('pub', 'net', '7.7.7.1/24')
  topo.addHost('srv', 'net', '7.7.7.2/24')
  for (const [h, wan, lan, nat] of [['h1', '7.7.7.11', '192.168.1', 'cone'], ['h2', '7.7.7.12', '192.168.2', 'symmetric'], ['h3', '7.7.7.13', '192.168.3', 'cone']] as const) {
    topo.addSwitch(h)
    topo.addRouter(`${h}r`, { switch: 'net', cidr: `${wan}/24` }, { switch: h, cidr: `${lan}.1/24` }, nat)
    topo.addHost(`${h}m`, h, `${lan}.2/24`, `${lan}.1`)
    // delay() throws when it cannot delay: a run never reports an undelayed link as delayed
    if (delayMs > 0) delayMethod = topo.delay(`${h}r`, 'wan', delayMs)
  }
  if (delayMethod != null) log(`${delayMs} ms one way on every home's uplink (${delayMethod === 'netem' ? 'tc netem' : 'userspace delay link: this kernel has no sch_netem'})`)
  const stun = 'stun:7.7.7.1:3478'
  topo.spawn('pub', process.execPath, [STUN_SERVER, '7.7.7.1', '3478'])
  const boot = await startIn(topo, 'pub', ['bootstrap', '--key', keyFile])
  const bootstrap = boot.ready.addrs[0]
  let reference: string | undefined
  for (const route of routes) {
    log(`${route}: one server holding blocks 0:${cfg.numLayers} in ${where[route]}…`)
    const s = await startIn(topo, where[route], ['join', '--bootstrap', bootstrap, '--model', dir, '--blocks', `0:${cfg.numLayers}`, '--stun', stun])
    try {
      const r = await runIn(topo, 'h3m', [PROBE, bootstrap, stun, dir, prompt.join(','), a.tokens!, a.rounds!], 240_000)
      const out = JSON.parse(r.stdout.trim().split('\n').at(-1) ?? '{}')
      if (out.error != null || out.rounds == null) throw new Error(`${out.error ?? 'no result'}\n${r.stderr.slice(-3000)}`)
      const rounds = out.rounds as Array<{ stepMs: number[], computeMs: number[], tokens: number[] }>
      const hop = (out.hops as Array<{ peer: string, kinds: string[], addrs: string[] }>)[0]
      const tokens = JSON.stringify(rounds[0].tokens)
      reference ??= tokens
      const ms = median(rounds.flatMap(x => x.stepMs))
      const compute = median(rounds.flatMap(x => x.computeMs))
      results.push({
        route, server: where[route], reachable: s.ready.reachable, hop_kinds: hop?.kinds ?? [], hop_addrs: hop?.addrs ?? [],
        // the label holds only if the one hop is on that server and its stream ran on that kind of connection
        verified: out.hops.length === 1 && hop.peer === s.ready.peerId && hop.kinds.length === 1 && hop.kinds[0] === route,
        ms_per_token: ms, compute_ms_per_token: compute, network_ms_per_token: ms - compute,
        steps: rounds.reduce((n, x) => n + x.stepMs.length, 0), rounds: rounds.length,
        tokens_identical: rounds.every(x => JSON.stringify(x.tokens) === reference)
      })
    } catch (err) {
      log(`${route}: failed: ${(err as Error).message}\n--- server:\n${s.stderr().slice(-2000)}`)
      results.push({ route, server: where[route], reachable: s.ready.reachable, hop_kinds: [], hop_addrs: [], verified: false, ms_per_token: NaN, compute_ms_per_token: NaN, network_ms_per_token: NaN, steps: 0, rounds: 0, tokens_identical: false, error: (err as Error).message.split('\n')[0] })
    } finally {
      await stop(s.child)
    }
  }
} finally {
  await topo.destroy()
  removeKey()
}

const result = {
  model: dir,
  shape: { hidden: cfg.hiddenSize, layers: cfg.numLayers, vocab: cfg.vocabSize },
  prompt_tokens: prompt.length,
  generated_tokens: Number(a.tokens),
  delay_ms_requested: delayMs,
  delay_ms_applied: delayMethod != null ? delayMs : 0,
  delay_method: delayMethod ?? null,
  routes: results
}
if (a['json-only'] !== true) {
  const f = (n: number): string => Number.isFinite(n) ? n.toFixed(2) : '—'
  if (delayMethod != null) process.stdout.write(`delay: ${delayMs} ms one way on each home's uplink egress, by ${delayMethod === 'netem' ? 'tc netem' : 'the userspace delay link (no sch_netem)'}\n`)
  process.stdout.write(`\n| route (1 hop, blocks 0:${cfg.numLayers}) | server in | connection seen | ms / token (decode) | server compute | rest (network, framing) |\n| --- | --- | --- | --- | --- | --- |\n`)
  for (const r of results) {
    process.stdout.write(`| ${r.route} | ${r.server} (reachable ${r.reachable}) | ${r.hop_kinds.join(', ') || r.error || '?'}${r.verified ? '' : ' (label NOT verified)'} | ${f(r.ms_per_token)} | ${f(r.compute_ms_per_token)} | ${f(r.network_ms_per_token)} |\n`)
  }
  process.stdout.write(`tokens identical across routes and rounds: ${results.every(r => r.tokens_identical) ? 'yes' : 'NO'}\n`)
}
process.stdout.write(JSON.stringify(result) + '\n')
// WebRTC threads or stray handles must not keep the benchmark alive once it has printed
process.exit(results.every(r => r.error == null) ? 0 : 1)
