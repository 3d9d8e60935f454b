// `npm run bench:verify`: how well spot checks catch a cheating server (detection probability and
// steps to detection against check rate and cheat rate), and what `verified` costs in tokens/s
// against `fast`. Real plexus-node processes on 127.0.0.1; the cheater uses the hidden fault flag.
import { parseArgs } from 'node:util'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { access } from 'node:fs/promises'
import { initBackend, generate, seededRandom, readModelConfig } from '@plexus/runtime'
import type { SessionPipeline } from '@plexus/runtime'
import { connectSwarm, openSwarm, openLocal } from '@plexus/client'
import { SwarmDiscovery, SwarmVerifiers } from '@plexus/client'
import { BanList } from '@plexus/client'
import { SwarmSession } from '@plexus/client'
import type { CandidateSource } from '@plexus/client'
import { Auditor } from '@plexus/client'
import type { AuditEvent } from '@plexus/client'
import { benchModel, thirds, median } from './lib/bench-common.ts'
import { startSwarm } from './lib/local-swarm.ts'
import type { NodeProcess } from './lib/local-swarm.ts'
import { makeModel } from './lib/model-maker.ts'

const { values: a } = parseArgs({
  options: {
    model: { type: 'string' },
    shape: { type: 'string', default: 'small' },
    'check-rates': { type: 'string', default: '0.1,0.25,1' },
    'cheat-rates': { type: 'string', default: '0.02,0.1,0.5' },
    sessions: { type: 'string', default: '40' },
    tokens: { type: 'string', default: '16' },
    'speed-sessions': { type: 'string', default: '8' },
    'speed-tokens': { type: 'string', default: '48' },
    'skip-speed': { type: 'boolean', default: false },
    'json-only': { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false }
  }
})
if (a.help === true) {
  process.stdout.write(`usage: npm run bench:verify -- [--check-rates 0.1,0.25,1] [--cheat-rates 0.02,0.1,0.5] [--sessions N] [--tokens N]
                        [--model DIR | --shape small] [--speed-sessions N] [--speed-tokens N] [--skip-speed] [--json-only]

Detection: a 6-block model on a bootstrap, two honest servers, one verifier and a cheater holding
blocks 0–2 that perturbs each step's output with probability CHEAT (by 5% of its RMS). Clients
run --sessions greedy generations per (check rate, cheat rate), each with a fresh ban list and
routed through the cheater first; detection probability is per session, steps to detection count
the steps the cheater served until it was caught (across sessions).
Speed: the same prompts through a 3-server swarm of the --shape model plus one verifier, with
trust fast and verified, interleaved; decode tokens/s over all sessions.\n`)
  process.exit(0)
}
const log = (s: string): void => { if (a['json-only'] !== true) process.stderr.write(s + '\n') }
const checkRates = a['check-rates']!.split(',').map(Number)
const cheatRates = a['cheat-rates']!.split(',').map(Number)
const sessions = Number(a.sessions)
const tokens = Number(a.tokens)
const result: any = { detection: [], speed: undefined }

await initBackend()
await detection()
if (a['skip-speed'] !== true) await speed()

if (a['json-only'] !== true) {
  process.stdout.write('\n| check rate | cheat rate | sessions | caught (per session) | steps to detection (median) | wrong outputs delivered |\n|---|---|---|---|---|---|\n')
  for (const d of result.detection) {
    process.stdout.write(`| ${d.check_rate} | ${d.cheat_rate} | ${d.sessions} | ${(d.detection_probability * 100).toFixed(0)}% (model ${(d.model_probability * 100).toFixed(0)}%) | ${d.steps_to_detection_median ?? `> ${d.cheater_steps}`} | ${d.wrong_delivered} |\n`)
  }
  if (result.speed != null) {
    process.stdout.write('\n| trust | check rate | decode tok/s | vs fast |\n|---|---|---|---|\n')
    for (const s of result.speed.modes) process.stdout.write(`| ${s.trust} | ${s.check_rate ?? '—'} | ${s.decode_tokens_per_second.toFixed(2)} | ${s.vs_fast.toFixed(2)}× |\n`)
  }
}
process.stdout.write(JSON.stringify(result) + '\n')
process.exit(0)

async function detectionModel (): Promise<string> {
  const dir = join(tmpdir(), 'plexus-bench-verify-tiny6')
  try { await access(join(dir, 'plexus-manifest.json')) } catch { await makeModel({ shape: 'tiny', layers: 6, out: dir, seed: 41, name: 'tiny6' }) }
  return dir
}

async function detection (): Promise<void> {
  const dir = await detectionModel()
  const cfg = await readModelConfig(dir)
  const rand = seededRandom(3)
  const prompts = Array.from({ length: 8 }, (_, i) => Array.from({ length: 4 + i }, () => 3 + Math.floor(rand() * 500)))
  const local = await openLocal(dir)
  const references = []
  for (const p of prompts) references.push((await generate(local.head, await local.session(p.length + tokens), p, { maxTokens: tokens })).tokenIds)
  await local.close()
  log('detection swarm: bootstrap, honest [0:3] and [3:6], a verifier, a cheater on [0:3]…')
  const swarm = await startSwarm(dir, [])
  try {
    const [spare] = await Promise.all([swarm.add('honest[0:3]', dir, '0:3'), swarm.add('honest[3:6]', dir, '3:6'), swarm.add('verifier', dir, undefined, ['--verify'])])
    const node = await connectSwarm([swarm.bootstrapAddr])
    const head = await openSwarm(node, { dir })
    const modelId = spare.ready.modelId
    const discovery = new SwarmDiscovery({ node }, { modelId, numBlocks: cfg.numLayers })
    const verifiers = new SwarmVerifiers({ node }, { modelId, numBlocks: cfg.numLayers })
    for (const cheat of cheatRates) {
      const cheater: NodeProcess = await swarm.add(`cheater(${cheat})`, dir, '0:3', ['--fault-perturb', `${cheat},0.05`])
      await discovery.candidates({ refresh: true })
      for (const rate of checkRates) {
        let caught = 0
        let wrong = 0
        let served = 0
        let sinceCatch = 0
        const toDetection: number[] = []
        for (let s = 0; s < sessions; s++) {
          const i = s % prompts.length
          const bans = new BanList()
          // the cheater is the route for blocks 0–2 until this client bans it; then the honest spare
          const source: CandidateSource = {
            candidates: async (o) => (await discovery.candidates(o)).filter(c => c.peer !== spare.peerId || bans.isBanned(cheater.peerId)),
            target: p => discovery.target(p)
          }
          const events: AuditEvent[] = []
          let steps = 0
          let stepsAtCatch = -1
          const auditor = new Auditor({ dialer: node, verifiers, bans }, {
            modelId, modelName: 'tiny6', hiddenSize: cfg.hiddenSize, maxLength: prompts[i].length + tokens, checkRate: rate, checkEvery: 4,
            onEvent: e => { events.push(e); if (e.kind === 'fraud' && stepsAtCatch < 0) stepsAtCatch = steps }
          })
          const session = await SwarmSession.open({ dialer: node, source, bans, auditor }, { modelId, modelName: 'tiny6', numBlocks: cfg.numLayers, hiddenSize: cfg.hiddenSize, maxLength: prompts[i].length + tokens })
          if (session.route[0].peer !== cheater.peerId) throw new Error('the session did not start on the cheater')
          // count the steps the cheater serves until it is caught
          const counted: SessionPipeline = {
            forward: async (h, n) => { const out = await session.forward(h, n); if (stepsAtCatch < 0) steps++; return out },
            confirm: async (final) => await session.confirm(final),
            close: async () => { await session.close() }
          }
          try {
            const r = await generate(head.head, counted, prompts[i], { maxTokens: tokens })
            if (r.tokenIds.join() !== references[i].join()) wrong++
          } finally { await counted.close() }
          if (stepsAtCatch >= 0) {
            caught++
            toDetection.push(sinceCatch + stepsAtCatch)
            served += stepsAtCatch
            sinceCatch = 0
          } else {
            served += steps
            sinceCatch += steps
          }
        }
        // a session is caught when its cheater hop is checked and at least one of its steps cheated
        const stepsPerSession = tokens
        const model = rate * (1 - (1 - cheat) ** stepsPerSession)
        const d = {
          check_rate: rate,
          cheat_rate: cheat,
          sessions,
          detection_probability: caught / sessions,
          model_probability: model,
          steps_to_detection_median: toDetection.length > 0 ? median(toDetection) : null,
          cheater_steps: served,
          wrong_delivered: wrong
        }
        result.detection.push(d)
        log(`check ${rate}, cheat ${cheat}: caught in ${caught}/${sessions} sessions, steps to detection ${JSON.stringify(toDetection)}, ${wrong} wrong outputs delivered`)
      }
      await cheater.stop()
      await discovery.candidates({ refresh: true })
    }
    await head.close()
    await node.stop()
  } finally {
    await swarm.stop()
  }
}

async function speed (): Promise<void> {
  const dir = await benchModel(a.model, a.shape!, log)
  const cfg = await readModelConfig(dir)
  const spans = thirds(cfg.numLayers)
  const n = Number(a['speed-sessions'])
  const genLen = Number(a['speed-tokens'])
  log(`speed swarm: bootstrap + ${spans.join(' ')} + a verifier of every block…`)
  const swarm = await startSwarm(dir, spans)
  try {
    await swarm.add('verifier', dir, undefined, ['--verify'])
    const node = await connectSwarm([swarm.bootstrapAddr])
    const modes = [{ trust: 'fast' as const }, { trust: 'verified' as const, checkRate: 0.1 }, { trust: 'verified' as const, checkRate: 1 }]
    const models = await Promise.all(modes.map(async m => await openSwarm(node, { dir, trust: m.trust, checkRate: m.checkRate ?? 0 })))
    const rand = seededRandom(11)
    const prompts = Array.from({ length: n }, () => Array.from({ length: 16 }, () => 3 + Math.floor(rand() * (cfg.vocabSize - 3))))
    const totals = modes.map(() => ({ tokens: 0, seconds: 0, per: [] as number[] }))
    // warm-up: first steps pay for connections and caches
    for (const m of models) { const s = await m.session(32); await generate(m.head, s, prompts[0], { maxTokens: 4 }); await s.close() }
    for (let i = 0; i < n; i++) {
      for (const [k, m] of models.entries()) {
        const s = await m.session(prompts[i].length + genLen)
        try {
          const r = await generate(m.head, s, prompts[i], { maxTokens: genLen })
          totals[k].tokens += r.tokenIds.length - 1
          totals[k].seconds += r.decodeSeconds
          totals[k].per.push(r.tokensPerSecond)
        } finally { await s.close() }
      }
      log(`speed round ${i + 1}/${n}: ${totals.map((t, k) => `${modes[k].trust}${modes[k].checkRate != null ? `@${modes[k].checkRate}` : ''} ${t.per[t.per.length - 1].toFixed(1)}`).join(', ')} tok/s`)
    }
    const fast = totals[0].tokens / totals[0].seconds
    result.speed = {
      model: dir,
      spans,
      sessions: n,
      generated_tokens: genLen,
      modes: modes.map((m, k) => ({ trust: m.trust, check_rate: m.checkRate ?? null, decode_tokens_per_second: totals[k].tokens / totals[k].seconds, median_session_tokens_per_second: median(totals[k].per), vs_fast: (totals[k].tokens / totals[k].seconds) / fast }))
    }
    for (const m of models) await m.close()
    await node.stop()
  } finally {
    await swarm.stop()
  }
}
