// `npm run bench:swarm [-- --model DIR]`: the same model and prompt through a 3-process loopback
// swarm and in one process (--local), in the same run: decode tokens/s ratio and per-hop overhead.
import { parseArgs } from 'node:util'
import { peerIdFromString } from '@libp2p/peer-id'
import { initBackend, generate, seededRandom, readModelConfig } from '@plexus/runtime'
import type { WireDType } from '@plexus/protocol'
import { connectSwarm, openSwarm, openLocal } from '@plexus/client'
import { SwarmSession } from '@plexus/client'
import { benchModel, thirds, median, decodeStepTimer } from './lib/bench-common.ts'
import { startSwarm } from './lib/local-swarm.ts'

const { values: a } = parseArgs({
  options: {
    model: { type: 'string' },
    shape: { type: 'string', default: 'small' },
    'prompt-tokens': { type: 'string', default: '32' },
    tokens: { type: 'string', default: '48' },
    'wire-dtype': { type: 'string', default: 'f32' },
    'json-only': { type: 'boolean', default: false },
    modes: { type: 'string', default: 'relay,forward' },
    rounds: { type: 'string', default: '3' },
    netem: { type: 'string', default: '0' },
    help: { type: 'boolean', short: 'h', default: false }
  }
})
if (a.help === true) {
  process.stdout.write(`usage: npm run bench:swarm -- [--model DIR | --shape small|tinyllama] [--prompt-tokens N] [--tokens N] [--wire-dtype f32|f16|bf16] [--modes relay,forward] [--netem MS] [--rounds N] [--json-only]

Starts a bootstrap peer and 3 plexus-node processes (a third of the blocks each) on 127.0.0.1,
generates greedily through them and in one process, and prints both speeds and the per-hop overhead.
--modes: client-relayed routes (relay: every hop answers the client) and/or forwarded routes
(forward: servers push activations to the next server), measured in alternating rounds.
--netem MS: every process (servers, bootstrap, this client) delays each byte it sends by MS, as if
its peers were MS away one way (PLEXUS_LINK_DELAY_MS; loopback has ~none; tc netem needs a kernel
module this stands in for). The local run is unaffected.
Without --model, a random-weight model of --shape is made once in the system temp folder.\n`)
  process.exit(0)
}
const log = (s: string): void => { if (a['json-only'] !== true) process.stderr.write(s + '\n') }
const dir = await benchModel(a.model, a.shape!, log)
const netemMs = Number(a.netem)
if (!Number.isFinite(netemMs) || netemMs < 0) throw new Error(`--netem: a number of milliseconds >= 0, not ${a.netem}`)
// read when each node is made: the servers inherit it, and so does this process' client node
if (netemMs > 0) process.env.PLEXUS_LINK_DELAY_MS = String(netemMs)
const promptLen = Number(a['prompt-tokens'])
const genLen = Number(a.tokens)
const cfg = await readModelConfig(dir)
const L = cfg.numLayers
const spans = thirds(L)
const rand = seededRandom(7)
const prompt = Array.from({ length: promptLen }, () => 3 + Math.floor(rand() * (cfg.vocabSize - 3)))

const backend = await initBackend()
// Local first, alone on the machine.
log(`local: ${L} blocks in one process (${backend})…`)
const local = await openLocal(dir)
await generate(local.head, await local.session(promptLen + 4), prompt, { maxTokens: 4 })
const single = await generate(local.head, await local.session(promptLen + genLen), prompt, { maxTokens: genLen })
await local.close()

log(`swarm: bootstrap + 3 processes serving ${spans.join(' ')}…`)
const swarm = await startSwarm(dir, spans)
let result
try {
  const node = await connectSwarm([swarm.bootstrapAddr])
  const modes = a.modes!.split(',').map(m => m.trim()).filter(m => m !== '')
  for (const m of modes) if (m !== 'relay' && m !== 'forward') throw new Error(`--modes: relay or forward, not ${m}`)
  const models = new Map(await Promise.all(modes.map(async m => [m, await openSwarm(node, { dir, dtype: a['wire-dtype'] as WireDType, forward: m === 'forward' })] as const)))
  /** One generation: the median decode step (wall, and wall minus every hop's compute) and the per-hop timings. */
  const runMode = async (mode: string): Promise<{ tokens: number[], tokensPerSecond: number, prefillTokensPerSecond: number, stepMs: number[], overheadMs: number[], clientMs: number[], beyondLinksMs: number[], perHop: Array<{ wall: number[], compute: number[] }>, route: Array<{ peer: string, start: number, end: number }> }> => {
    const model = models.get(mode)!
    const warm = await model.session(promptLen + 4)
    await generate(model.head, warm, prompt, { maxTokens: 4 })
    await warm.close()
    const session = await model.session(promptLen + genLen) as SwarmSession
    const perHop: Array<{ wall: number[], compute: number[] }> = session.route.map(() => ({ wall: [], compute: [] }))
    const timer = decodeStepTimer(() => session.lastStepTimings())
    // the route's own time per step; the rest of a token is the client's (embedding, head, sampling)
    const routeMs: number[] = []
    const forward = session.forward.bind(session)
    session.forward = async (h, t) => { const t0 = performance.now(); try { return await forward(h, t) } finally { routeMs.push(performance.now() - t0) } }
    const r = await generate(model.head, session, prompt, { maxTokens: genLen, onToken: timer.onToken })
    for (const s of timer.steps) s.hops.forEach((h, i) => { perHop[i]?.wall.push(h.wallMs); perHop[i]?.compute.push(h.computeMs) })
    const stepMs = timer.steps.map(s => s.ms)
    const overheadMs = timer.steps.map(s => s.ms - s.hops.reduce((n, h) => n + h.computeMs, 0))
    // decode step i ran in forward call i + 1 (call 0: the prefill)
    const clientMs = timer.steps.map((s, i) => s.ms - routeMs[i + 1])
    const transfers = mode === 'forward' ? session.route.length + 1 : 2 * session.route.length
    const beyondLinksMs = timer.steps.map((s, i) => (routeMs[i + 1] - s.hops.reduce((n, h) => n + h.computeMs, 0) - transfers * netemMs) / session.route.length)
    const route = session.route
    await session.close()
    return { tokens: r.tokenIds, tokensPerSecond: r.tokensPerSecond, prefillTokensPerSecond: r.prefillTokensPerSecond, stepMs, overheadMs, clientMs, beyondLinksMs, perHop, route }
  }
  const runs = new Map<string, Array<Awaited<ReturnType<typeof runMode>>>>(modes.map(m => [m, []]))
  for (let round = 0; round < Number(a.rounds); round++) {
    for (const m of round % 2 === 0 ? modes : [...modes].reverse()) {
      log(`round ${round + 1}: ${m}…`)
      runs.get(m)!.push(await runMode(m))
    }
  }
  const viaSwarm = runs.get(modes[0])![0]
  const route = viaSwarm.route
  const perHop = viaSwarm.perHop
  // The transport's floor on this machine: a bare libp2p round trip to each hop's server.
  const rtts: number[] = []
  for (const h of route) {
    const peer = peerIdFromString(h.peer)
    // timed here: ping() answers in whole milliseconds
    for (let i = 0, tries = 0; i < 20; tries++) {
      const t0 = performance.now()
      try {
        await node.services.ping.ping(peer, { signal: AbortSignal.timeout(10_000) })
      } catch (err) {
        // the connection monitor's own ping may hold the one ping stream (likelier with --netem)
        if (tries > 100) throw err
        await new Promise(resolve => setTimeout(resolve, 25))
        continue
      }
      rtts.push(performance.now() - t0)
      i++
    }
  }
  for (const m of models.values()) await m.close()
  await node.stop()
  const hops = route.map((h, i) => ({
    peer: h.peer, start: h.start, end: h.end,
    median_wall_ms: median(perHop[i].wall), median_compute_ms: median(perHop[i].compute),
    median_overhead_ms: median(perHop[i].wall.map((w, j) => w - perHop[i].compute[j]))
  }))
  result = {
    model: dir,
    backend,
    wire_dtype: a['wire-dtype'],
    shape: { hidden: cfg.hiddenSize, layers: L, vocab: cfg.vocabSize },
    prompt_tokens: promptLen,
    generated_tokens: genLen,
    spans,
    netem_ms: netemMs,
    local: { decode_tokens_per_second: single.tokensPerSecond, prefill_tokens_per_second: single.prefillTokensPerSecond },
    swarm: { mode: modes[0], decode_tokens_per_second: viaSwarm.tokensPerSecond, prefill_tokens_per_second: viaSwarm.prefillTokensPerSecond },
    // per mode, over every round: the median decode step's wall time and what is left of it after the servers' compute
    modes: Object.fromEntries([...runs].map(([m, rs]) => [m, {
      rounds: rs.length,
      ms_per_token: median(rs.flatMap(r => r.stepMs)),
      overhead_ms_per_token: median(rs.flatMap(r => r.overheadMs)),
      overhead_ms_per_hop: median(rs.flatMap(r => r.overheadMs)) / route.length,
      // the client's own part of a token (embedding, LM head, sampling), off the route
      client_ms_per_token: median(rs.flatMap(r => r.clientMs)),
      // per hop: the route's time less the servers' compute and every transfer's added delay
      beyond_links_ms_per_hop: median(rs.flatMap(r => r.beyondLinksMs)),
      decode_tokens_per_second: median(rs.map(r => r.tokensPerSecond)),
      tokens_identical: rs.every(r => JSON.stringify(r.tokens) === JSON.stringify(single.tokenIds))
    }])),
    decode_ratio_swarm_vs_local: viaSwarm.tokensPerSecond / single.tokensPerSecond,
    tokens_identical: [...runs.values()].every(rs => rs.every(r => JSON.stringify(r.tokens) === JSON.stringify(single.tokenIds))),
    hops,
    per_hop_overhead_ms: median(hops.map(h => h.median_overhead_ms)),
    bare_round_trip_ms: median(rtts),
    // what the ratio could be if each hop cost one bare round trip over the local compute
    ratio_ceiling_one_round_trip_per_hop: (1000 / single.tokensPerSecond) / (1000 / single.tokensPerSecond + route.length * median(rtts))
  }
} finally {
  await swarm.stop()
}

if (a['json-only'] !== true) {
  const f = (n: number): string => n.toFixed(1)
  const rows = [
    ['', 'decode tok/s', 'prefill tok/s'],
    // the first mode's first round
    ['local (1 process)', f(result.local.decode_tokens_per_second), f(result.local.prefill_tokens_per_second)],
    [`swarm (3 processes, ${result.wire_dtype} wire)`, f(result.swarm.decode_tokens_per_second), f(result.swarm.prefill_tokens_per_second)],
    ['ratio swarm / local', result.decode_ratio_swarm_vs_local.toFixed(2), '']
  ]
  const w = rows[0].map((_, i) => Math.max(...rows.map(r => r[i].length)))
  for (const r of rows) process.stdout.write('| ' + r.map((c, i) => c.padEnd(w[i])).join(' | ') + ' |\n')
  process.stdout.write(`\n${result.netem_ms > 0 ? `netem: ${result.netem_ms} ms one way on every link (PLEXUS_LINK_DELAY_MS)` : 'netem: none (loopback)'}\n`)
  process.stdout.write('\n| route mode | ms / token (decode) | of which not compute | per hop | client\'s own ms | per hop beyond links and compute | decode tok/s |\n| --- | --- | --- | --- | --- | --- | --- |\n')
  for (const [m, r] of Object.entries(result.modes)) process.stdout.write(`| ${m === 'forward' ? 'forwarded (server → server)' : 'client-relayed'} | ${r.ms_per_token.toFixed(2)} | ${r.overhead_ms_per_token.toFixed(2)} | ${r.overhead_ms_per_hop.toFixed(2)} | ${r.client_ms_per_token.toFixed(2)} | ${r.beyond_links_ms_per_hop.toFixed(2)} | ${r.decode_tokens_per_second.toFixed(1)} |\n`)
  for (const h of result.hops) process.stdout.write(`hop [${h.start},${h.end}): wall ${h.median_wall_ms.toFixed(2)} ms, server compute ${h.median_compute_ms.toFixed(2)} ms, overhead ${h.median_overhead_ms.toFixed(2)} ms per step\n`)
  process.stdout.write(`bare round trip (libp2p ping, a fresh stream each) ${result.bare_round_trip_ms.toFixed(2)} ms: with one per hop and nothing else, the ratio could at best be ${result.ratio_ceiling_one_round_trip_per_hop.toFixed(2)}\n`)
  process.stdout.write(`tokens identical: ${result.tokens_identical ? 'yes' : 'NO'}\n`)
}
process.stdout.write(JSON.stringify(result) + '\n')
