// Sampled speculative decoding keeps the target's distribution: a chi-square test of the first two
// tokens over many seeds against the exact joint probabilities, with a drafter that often
// disagrees, and a check (computed, not assumed) that the test would catch a wrong correction step.
import assert from 'node:assert/strict'
import { initBackend, LocalModel, generate, DraftModel, Sampler, argmax } from '@plexus/runtime'
import type { SamplingOptions } from '@plexus/runtime'
import { fixtureDir, golden } from '../../../test/support/fixtures.ts'
import { denseProbabilities } from '../src/sampling.ts'

/** Upper α-quantile of the chi-square distribution (Wilson–Hilferty; z for α = 0.001). */
function chiSquareCritical (dof: number, z = 3.09): number {
  const a = 2 / (9 * dof)
  return dof * (1 - a + z * Math.sqrt(a)) ** 3
}

describe('speculative sampling', function () {
  this.timeout(300_000)
  const name = 'tiny-llama'
  const g = golden(name)
  let m: LocalModel
  let dm: DraftModel
  before(async () => {
    await initBackend('wasm')
    m = await LocalModel.load(fixtureDir(name))
    dm = await DraftModel.load(fixtureDir(name), { blocks: 1, threads: false })
  })
  after(async () => { await dm?.dispose(); await m?.dispose() })

  it('with the target itself as the draft, every draft is accepted and the run is the plain sampled run of its seed', async () => {
    const same = await DraftModel.load(fixtureDir(name), { threads: false })
    const drafter = await same.drafter(64, m.config.vocabSize)
    try {
      for (const seed of [1, 2, 3, 4, 5]) {
        const opts = { maxTokens: 24, temperature: 0.8, topP: 0.95, seed }
        const plain = await generate(m.head, await m.session(64), g.prompt_ids, opts)
        const spec = await generate(m.head, await m.session(64), g.prompt_ids, { ...opts, speculative: { drafter, k: 4 } })
        assert.deepEqual(spec.tokenIds, plain.tokenIds, `seed ${seed}`)
        assert.equal(spec.speculation!.accepted, spec.speculation!.drafted)
        assert.ok(spec.speculation!.targetSteps <= 7, `${spec.speculation!.targetSteps} target steps for 23 tokens`)
      }
    } finally { await drafter.close(); await same.dispose() }
  })

  it('the first two tokens follow the target\'s joint distribution (chi-square, 1500 seeds, a 1-block draft)', async () => {
    const sampling: SamplingOptions = { temperature: 1.5, topK: 4 }
    const sampler = new Sampler(sampling)
    const V = m.config.vocabSize
    // exact: p(x0) from the prompt, p(x1 | x0) and the draft's q(x1 | x0) for every candidate x0
    const s = await m.session(64)
    const p0 = denseProbabilities(sampler.distribution(await m.head.logits(await s.forward(m.head.embed(g.prompt_ids), g.prompt_ids.length), g.prompt_ids.length)), V)
    const first = [...p0.keys()].filter(i => p0[i] > 0)
    const p1 = new Map<number, Float64Array>()
    const q1 = new Map<number, Float64Array>()
    const drafter = await dm.drafter(64, V)
    for (const x0 of first) {
      await s.truncate!(g.prompt_ids.length)
      p1.set(x0, denseProbabilities(sampler.distribution(await m.head.logits(await s.forward(m.head.embed([x0]), 1), 1)), V))
      let row: Float32Array | undefined
      await drafter.draft([...g.prompt_ids, x0], 1, (r) => { row = r.slice(); return { id: argmax(r) } })
      q1.set(x0, denseProbabilities(sampler.distribution(row!), V))
    }
    await s.close()

    const N = 1500
    const counts = new Map<string, number>()
    let drafted = 0
    let accepted = 0
    const target = await m.session(64)
    for (let seed = 1; seed <= N; seed++) {
      await target.truncate!(0)
      const r = await generate(m.head, target, g.prompt_ids, { ...sampling, seed, maxTokens: 3, speculative: { drafter, k: 1, adaptive: false } })
      const key = `${r.tokenIds[0]},${r.tokenIds[1]}`
      counts.set(key, (counts.get(key) ?? 0) + 1)
      drafted += r.speculation!.drafted
      accepted += r.speculation!.accepted
    }
    await target.close()
    await drafter.close()
    const rate = accepted / drafted
    assert.ok(rate > 0.1 && rate < 0.9, `acceptance ${rate}: the drafter must disagree often for the correction step to matter`)

    // cells: every (x0, x1) the target can give, those expecting < 5 pooled into one
    type Law = (x0: number, x1: number) => number
    const exact: Law = (x0, x1) => p0[x0] * p1.get(x0)![x1]
    // two wrong correction steps: keep every draft (output ~ q), or resample from p on rejection
    const keepDraft: Law = (x0, x1) => p0[x0] * q1.get(x0)![x1]
    const resampleP: Law = (x0, x1) => {
      const p = p1.get(x0)!
      const q = q1.get(x0)!
      let overlap = 0
      for (let i = 0; i < V; i++) overlap += Math.min(p[i], q[i])
      return p0[x0] * (Math.min(p[x1], q[x1]) + (1 - overlap) * p[x1])
    }
    const cells: Array<[number, number]> = []
    for (const x0 of first) for (let x1 = 0; x1 < V; x1++) if (exact(x0, x1) > 0) cells.push([x0, x1])
    const big = cells.filter(([a, b]) => N * exact(a, b) >= 5)
    const small = cells.filter(([a, b]) => N * exact(a, b) < 5)
    const binned = (law: Law, observed?: Map<string, number>): { e: number[], o: number[] } => {
      const e = big.map(([a, b]) => N * law(a, b))
      const o = big.map(([a, b]) => observed?.get(`${a},${b}`) ?? 0)
      if (small.length > 0) {
        e.push(N * small.reduce((n, [a, b]) => n + law(a, b), 0))
        o.push(small.reduce((n, [a, b]) => n + (observed?.get(`${a},${b}`) ?? 0), 0))
      }
      return { e, o }
    }
    const { e, o } = binned(exact, counts)
    let observedTotal = 0
    for (const n of counts.values()) observedTotal += n
    assert.equal(o.reduce((x, y) => x + y, 0), observedTotal, 'every sample is a pair the target can give (top-k of its rows)')
    const dof = e.length - 1
    const critical = chiSquareCritical(dof)
    const chi2 = e.reduce((n, ei, i) => n + (o[i] - ei) ** 2 / ei, 0)
    assert.ok(chi2 < critical, `chi-square ${chi2.toFixed(1)} ≥ ${critical.toFixed(1)} (${dof} degrees of freedom): not the target's distribution`)
    // power: a wrong step's expected statistic (dof + noncentrality) lies far above the bound
    for (const [label, law] of [['keep every draft', keepDraft], ['resample from p', resampleP]] as const) {
      const w = binned(law).e
      const lambda = e.reduce((n, ei, i) => n + (w[i] - ei) ** 2 / ei, 0)
      const sd = Math.sqrt(2 * (dof + 2 * lambda))
      console.log(`      ${label}: expected statistic ${(dof + lambda).toFixed(1)} ± ${sd.toFixed(1)}; observed ${chi2.toFixed(1)}, bound ${critical.toFixed(1)}, acceptance ${rate.toFixed(2)}`)
      assert.ok(dof + lambda - 4 * sd > critical, `${label}: expected statistic ${(dof + lambda).toFixed(1)} ± ${sd.toFixed(1)} is not clear of ${critical.toFixed(1)}: the test would lack power`)
    }
  })
})
