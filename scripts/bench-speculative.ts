// `npm run bench:speculative [-- --model DIR]`: greedy decoding through a 3-process loopback swarm,
// plain and speculative (prompt-lookup, the same model as draft, its first 2 blocks as draft):
// tokens/s, ms per token, acceptance rate and target steps, with an optional simulated link delay.
import { parseArgs } from 'node:util'
import { setTimeout as sleep } from 'node:timers/promises'
import { initBackend, generate, seededRandom, readModelConfig, DraftModel, PromptLookupDrafter } from '@plexus/runtime'
import type { Drafter, GenerateResult, SessionPipeline } from '@plexus/runtime'
import { connectSwarm, openSwarm, stopNode } from '@plexus/client'
import type { SwarmSession } from '@plexus/client'
import { benchModel, thirds, median } from './lib/bench-common.ts'
import { startSwarm } from './lib/local-swarm.ts'

const { values: a } = parseArgs({
  options: {
    model: { type: 'string' },
    shape: { type: 'string', default: 'small' },
    'prompt-tokens': { type: 'string', default: '32' },
    tokens: { type: 'string', default: '48' },
    speculate: { type: 'string', default: '4' },
    draft: { type: 'string', default: 'prompt-lookup,same,blocks:2' },
    'link-ms': { type: 'string', default: '0' },
    topology: { type: 'string', default: 'forwarded' },
    forward: { type: 'boolean', default: true },
    netem: { type: 'string', default: '0' },
    repeat: { type: 'string', default: '3' },
    'json-only': { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false }
  },
  allowNegative: true
})
if (a.help === true) {
  process.stdout.write(`usage: npm run bench:speculative -- [--model DIR | --shape small|tinyllama] [--prompt-tokens N] [--tokens N]
       [--speculate K[,K…]] [--draft prompt-lookup,same,blocks:N] [--no-forward] [--netem MS | --link-ms MS] [--topology forwarded|direct] [--repeat N] [--json-only]

Starts a bootstrap peer and 3 plexus-node processes (a third of the blocks each) on 127.0.0.1 and
generates greedily through them: plainly, then speculatively with each draft (prompt-lookup; same:
the whole model on this machine, which accepts every draft and so bounds the gain; blocks:N: its
first N blocks and head) at each k. --netem MS: every process (servers, bootstrap, this client)
delays each byte it sends by MS (PLEXUS_LINK_DELAY_MS, as bench:swarm --netem). --link-ms MS
instead sleeps at the client per step: (hops + 1) links when servers forward to each other
(forwarded), 2 per hop when every hop answers the client (direct). A rollback costs no link of its
own (it rides on the next step). --no-forward: every hop answers the client (default: the servers
forward each step to the next server).
Every configuration runs once per round, --repeat rounds (3) interleaved; figures are medians, and
"vs plain" is the median of each round's ratio.\n`)
  process.exit(0)
}
const log = (s: string): void => { if (a['json-only'] !== true) process.stderr.write(s + '\n') }
const dir = await benchModel(a.model, a.shape!, log)
const promptLen = Number(a['prompt-tokens'])
const genLen = Number(a.tokens)
const ks = a.speculate!.split(',').map(Number)
const drafts = a.draft!.split(',')
const linkMs = Number(a['link-ms'])
const netemMs = Number(a.netem)
if (!Number.isFinite(netemMs) || netemMs < 0) throw new Error(`--netem: a number of milliseconds >= 0, not ${a.netem}`)
if (netemMs > 0 && linkMs > 0) throw new Error('--netem and --link-ms: one delay or the other')
// before any node starts: the servers inherit it, and this process's node reads it
if (netemMs > 0) process.env.PLEXUS_LINK_DELAY_MS = String(netemMs)
const repeats = Number(a.repeat)
const topology = a.topology === 'direct' ? 'direct' : 'forwarded'
const cfg = await readModelConfig(dir)
const spans = thirds(cfg.numLayers)
const rand = seededRandom(7)
const prompt = Array.from({ length: promptLen }, () => 3 + Math.floor(rand() * (cfg.vocabSize - 3)))
const backend = await initBackend()

/** A step's wall time at the client without the simulated delay, by its number of positions. */
type StepTimes = Map<number, number[]>

/** The session as seen over links of `linkMs` each way (added at the client, before each call). */
function overLinks (s: SwarmSession, hops: number, times: StepTimes): SessionPipeline & { steps: number, truncates: number } {
  const stepMs = linkMs * (topology === 'forwarded' ? hops + 1 : 2 * hops)
  const w = {
    steps: 0,
    truncates: 0,
    forward: async (h: Float32Array, tokens: number) => {
      w.steps++
      if (stepMs > 0) await sleep(stepMs)
      const t0 = performance.now()
      const out = await s.forward(h, tokens)
      times.set(tokens, [...(times.get(tokens) ?? []), performance.now() - t0])
      return out
    },
    // no round trip: the next step carries the rewind
    truncate: async (length: number) => { w.truncates++; await s.truncate(length) },
    close: async () => { await s.close() }
  }
  return w
}

/** `d` with the time its draft() calls took, per draft token proposed. */
function timed (d: Drafter, perToken: number[]): Drafter {
  return {
    kind: d.kind,
    draft: async (context, k, choose) => {
      const t0 = performance.now()
      const out = await d.draft(context, k, choose)
      if (out.length > 0) perToken.push((performance.now() - t0) / out.length)
      return out
    },
    close: async () => { await d.close() }
  }
}

interface Row {
  mode: string, draft?: string, k?: number, tokens_per_second: number, ms_per_token: number, acceptance_rate?: number, target_steps: number, truncates: number,
  speedup_vs_plain?: number, tokens_identical?: boolean, draft_ms_per_token?: number, step_ms_1?: number, step_ms_k1?: number
}
const rows: Row[] = []

log(`swarm: bootstrap + 3 processes serving ${spans.join(' ')} (${backend})…`)
const swarm = await startSwarm(dir, spans)
const models = new Map<string, DraftModel>()
try {
  const node = await connectSwarm([swarm.bootstrapAddr])
  const model = await openSwarm(node, { dir, forward: a.forward === true })
  const run = async (times: StepTimes, drafter?: Drafter, k?: number): Promise<{ r: GenerateResult, steps: number, truncates: number }> => {
    const s = await model.session(promptLen + genLen) as SwarmSession
    const w = overLinks(s, s.route.length, times)
    try {
      const r = await generate(model.head, w, prompt, { maxTokens: genLen, speculative: drafter != null ? { drafter, k: k! } : undefined })
      return { r, steps: w.steps - 1, truncates: w.truncates }
    } finally { await w.close() }
  }
  for (const d of drafts) {
    if (d === 'prompt-lookup') continue
    models.set(d, await DraftModel.load(dir, { blocks: d === 'same' ? undefined : Number(d.replace(/^blocks:/, '')) }))
  }
  // warm-up: connections, the servers' first steps, the draft models' first steps
  await run(new Map())
  for (const [, dm] of models) await run(new Map(), await dm.drafter(promptLen + genLen, cfg.vocabSize), 4)
  // every configuration once per round, rounds interleaved: a busy machine's drift hits all alike
  const configs: Array<{ draft?: string, k?: number }> = [{}, ...drafts.flatMap(d => ks.map(k => ({ draft: d, k })))]
  type Sample = { tps: number, acceptance: number, steps: number, truncates: number, identical: boolean, draftMs: number[], times: StepTimes }
  const samples: Sample[][] = configs.map(() => [])
  let plainIds: number[] | undefined
  for (let round = 0; round < repeats; round++) {
    for (const [i, c] of configs.entries()) {
      log(`round ${round + 1}/${repeats}: ${c.draft == null ? 'plain' : `speculative, ${c.draft} draft, k=${c.k}`}…`)
      const draftMs: number[] = []
      const times: StepTimes = new Map()
      const dm = c.draft != null ? models.get(c.draft) : undefined
      const drafter = c.draft == null ? undefined : timed(dm != null ? await dm.drafter(promptLen + genLen, cfg.vocabSize) : new PromptLookupDrafter(), draftMs)
      try {
        const { r, steps, truncates } = await run(times, drafter, c.k)
        plainIds ??= r.tokenIds
        samples[i].push({ tps: r.tokensPerSecond, acceptance: r.speculation?.acceptanceRate ?? 0, steps, truncates, identical: JSON.stringify(r.tokenIds) === JSON.stringify(plainIds), draftMs, times })
      } finally { await drafter?.close() }
    }
  }
  for (const [i, c] of configs.entries()) {
    const ss = samples[i]
    const tps = median(ss.map(x => x.tps))
    const stepMs = (n: number): number | undefined => { const t = ss.flatMap(x => x.times.get(n) ?? []); return t.length > 0 ? median(t) : undefined }
    rows.push({
      mode: c.draft == null ? 'plain' : 'speculative', draft: c.draft, k: c.k, tokens_per_second: tps, ms_per_token: 1000 / tps,
      acceptance_rate: c.draft != null ? median(ss.map(x => x.acceptance)) : undefined, target_steps: median(ss.map(x => x.steps)), truncates: median(ss.map(x => x.truncates)),
      // the ratio within each round, then its median: the drift between rounds cancels
      speedup_vs_plain: c.draft != null ? median(ss.map((x, r) => x.tps / samples[0][r].tps)) : undefined,
      tokens_identical: c.draft != null ? ss.every(x => x.identical) : undefined,
      draft_ms_per_token: c.draft != null && ss.some(x => x.draftMs.length > 0) ? median(ss.flatMap(x => x.draftMs)) : undefined,
      step_ms_1: stepMs(1), step_ms_k1: c.k != null ? stepMs(c.k + 1) : undefined
    })
  }
  await model.close()
  await stopNode(node)
} catch (err) {
  // what the servers said: a failed step is often explained there
  for (const n of swarm.nodes) process.stderr.write(`--- ${n.name}:\n${n.stderr().slice(-2000)}\n`)
  throw err
} finally {
  for (const [, dm] of models) await dm.dispose()
  await swarm.stop()
}

const result = {
  model: dir, backend, shape: { hidden: cfg.hiddenSize, layers: cfg.numLayers, vocab: cfg.vocabSize }, spans,
  prompt_tokens: promptLen, generated_tokens: genLen, repeats, forwarded: a.forward === true, netem_ms: netemMs, link_ms: linkMs, topology: linkMs > 0 ? topology : netemMs > 0 ? 'netem' : 'loopback', runs: rows
}
if (a['json-only'] !== true) {
  const f = (n: number | undefined, d = 1): string => n == null ? '' : n.toFixed(d)
  const table = [
    ['mode', 'draft', 'k', 'tok/s', 'ms/token', 'accepted', 'target steps', 'truncates', 'vs plain', 'draft ms/token', 'step ms (1 / k+1)', 'same tokens'],
    ...rows.map(r => [r.mode, r.draft ?? '', r.k != null ? String(r.k) : '', f(r.tokens_per_second), f(r.ms_per_token), r.acceptance_rate != null ? `${(100 * r.acceptance_rate).toFixed(0)}%` : '',
      String(r.target_steps), String(r.truncates), r.speedup_vs_plain != null ? `${r.speedup_vs_plain.toFixed(2)}×` : '', f(r.draft_ms_per_token),
      `${f(r.step_ms_1)}${r.step_ms_k1 != null ? ` / ${f(r.step_ms_k1)}` : ''}`, r.tokens_identical == null ? '' : r.tokens_identical ? 'yes' : 'NO'])
  ]
  const w = table[0].map((_, i) => Math.max(...table.map(r => r[i].length)))
  for (const r of table) process.stdout.write('| ' + r.map((c, i) => c.padEnd(w[i])).join(' | ') + ' |\n')
  process.stdout.write(`${genLen} tokens after a ${promptLen}-token prompt; ${linkMs > 0 ? `${linkMs} ms per link (simulated, ${topology})` : netemMs > 0 ? `${netemMs} ms one way on every link (PLEXUS_LINK_DELAY_MS)` : 'loopback, no added delay'}; ${a.forward === true ? 'forwarded' : 'client-relayed'} routes\n`)
}
process.stdout.write(JSON.stringify(result) + '\n')
