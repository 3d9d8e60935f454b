// `npm run bench:load [-- --model DIR]`: aggregate decode tokens/s of 1, 4, 8 and 16 concurrent
// clients on a 3-node loopback swarm, and how long clients take to recover from a killed server.
import { parseArgs } from 'node:util'
import { initBackend, generate, seededRandom, readModelConfig } from '@plexus/runtime'
import { connectSwarm, openSwarm } from '@plexus/client'
import type { OpenModel } from '@plexus/client'
import type { SwarmSession } from '@plexus/client'
import { benchModel, thirds, median } from './lib/bench-common.ts'
import { startSwarm } from './lib/local-swarm.ts'

const { values: a } = parseArgs({
  options: {
    model: { type: 'string' },
    shape: { type: 'string', default: 'small' },
    clients: { type: 'string', default: '1,4,8,16' },
    tokens: { type: 'string', default: '64' },
    'prompt-tokens': { type: 'string', default: '16' },
    'kill-runs': { type: 'string', default: '3' },
    'json-only': { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false }
  }
})
if (a.help === true) {
  process.stdout.write(`usage: npm run bench:load -- [--model DIR | --shape small] [--clients 1,4,8,16] [--tokens N] [--kill-runs N] [--json-only]

A bootstrap peer and 3 plexus-node processes (a third of the blocks each) plus a spare holder of
the middle third, on 127.0.0.1. Concurrent greedy generations measure aggregate decode tokens/s;
then a server in the clients' routes is killed (-9) mid-generation, --kill-runs times, to measure
the time to recover and the slowdown during recovery.\n`)
  process.exit(0)
}
const log = (s: string): void => { if (a['json-only'] !== true) process.stderr.write(s + '\n') }
const dir = await benchModel(a.model, a.shape!, log)
const cfg = await readModelConfig(dir)
const L = cfg.numLayers
const spans = thirds(L)
const [middleStart, middleEnd] = spans[1].split(':').map(Number)
const genLen = Number(a.tokens)
const promptLen = Number(a['prompt-tokens'])
const prompts = (n: number): number[][] => {
  const r = seededRandom(n)
  return Array.from({ length: n }, () => Array.from({ length: promptLen }, () => 3 + Math.floor(r() * (cfg.vocabSize - 3))))
}

await initBackend()
log(`swarm: bootstrap + ${spans.join(' ')} + spare ${spans[1]}…`)
const swarm = await startSwarm(dir, spans)
const result: any = { model: dir, spans, prompt_tokens: promptLen, generated_tokens: genLen, concurrency: [], recovery: [] }
try {
  const node = await connectSwarm([swarm.bootstrapAddr])
  const model: OpenModel = await openSwarm(node, { dir })

  /** n clients generating at once; decode tokens/s over the phase where all decode. */
  const run = async (n: number, onToken?: (client: number, i: number, t: number, sessions: SwarmSession[]) => void | Promise<void>): Promise<{ tokens: number, seconds: number, perClient: number[] }> => {
    const ps = prompts(n)
    const sessions = await Promise.all(ps.map(async () => await model.session(promptLen + genLen)))
    const t0 = performance.now()
    const rs = await Promise.all(ps.map(async (p, c) => {
      let i = 0
      return await generate(model.head, sessions[c], p, { maxTokens: genLen, onToken: async () => { await onToken?.(c, i++, performance.now(), sessions as SwarmSession[]) } })
    }))
    const seconds = (performance.now() - t0) / 1000
    await Promise.all(sessions.map(async s => { await s.close() }))
    return { tokens: rs.reduce((x, r) => x + r.tokenIds.length, 0), seconds, perClient: rs.map(r => r.tokensPerSecond) }
  }

  await run(1) // warm-up
  for (const n of a.clients!.split(',').map(Number)) {
    const r = await run(n)
    const aggregate = r.tokens / r.seconds
    result.concurrency.push({ clients: n, aggregate_tokens_per_second: aggregate, median_client_decode_tokens_per_second: median(r.perClient) })
    log(`${n} client(s): ${aggregate.toFixed(1)} tok/s in all`)
  }
  const single = result.concurrency.find((c: any) => c.clients === 1)?.aggregate_tokens_per_second
  for (const c of result.concurrency) c.speedup_vs_one_client = single != null ? c.aggregate_tokens_per_second / single : null

  // Recovery: 4 clients; kill the middle server of client 0's route after 8 tokens.
  for (let k = 0; k < Number(a['kill-runs']); k++) {
    await swarm.add(`spare${k}[${spans[1]}]`, dir, spans[1])
    const stamps: number[][] = [[], [], [], []]
    let killedAt = 0
    const r = await run(4, async (c, i, t, sessions) => {
      stamps[c].push(t)
      if (c === 0 && i === 7 && killedAt === 0) {
        const victimPeer = sessions[0].route.find(h => h.start < middleEnd && h.end > middleStart)?.peer
        const victim = swarm.nodes.find(x => x.peerId === victimPeer)!
        victim.child.kill('SIGKILL')
        killedAt = performance.now()
        swarm.nodes.splice(swarm.nodes.indexOf(victim), 1)
      }
    })
    // recovery time per client: the longest gap between tokens after the kill
    const gaps = stamps.map(s => Math.max(0, ...s.slice(1).map((t, i) => t > killedAt ? t - Math.max(s[i], killedAt) : 0)))
    const normal = median(stamps.flatMap(s => s.slice(1, 8).map((t, i) => t - s[i])))
    result.recovery.push({ run: k, recovery_ms: Math.max(...gaps), per_client_gap_ms: gaps, normal_step_ms: normal, slowdown: Math.max(...gaps) / normal, aggregate_tokens_per_second: r.tokens / r.seconds })
    log(`kill run ${k}: recovered in ${Math.max(...gaps).toFixed(0)} ms (a normal step: ${normal.toFixed(0)} ms)`)
  }
  await model.close()
  await node.stop()
} finally {
  await swarm.stop()
}
const rec = result.recovery.map((r: any) => r.recovery_ms)
result.recovery_ms = rec.length > 0 ? { median: median(rec), max: Math.max(...rec) } : null
result.slowdown_during_recovery = rec.length > 0 ? median(result.recovery.map((r: any) => r.slowdown)) : null

if (a['json-only'] !== true) {
  process.stdout.write('| clients | aggregate decode tok/s | per-client tok/s (median) | vs 1 client |\n|---|---|---|---|\n')
  for (const c of result.concurrency) process.stdout.write(`| ${c.clients} | ${c.aggregate_tokens_per_second.toFixed(1)} | ${c.median_client_decode_tokens_per_second.toFixed(1)} | ${c.speedup_vs_one_client?.toFixed(2) ?? '—'}× |\n`)
  if (rec.length > 0) process.stdout.write(`recovery from a killed server: median ${result.recovery_ms.median.toFixed(0)} ms, max ${result.recovery_ms.max.toFixed(0)} ms; the stalled step took ${result.slowdown_during_recovery.toFixed(1)}× a normal step\n`)
}
process.stdout.write(JSON.stringify(result) + '\n')
