// Speculative decoding gives plain decoding's greedy tokens, locally and through a swarm, and
// leaves no rejected draft in any KV cache: continuing the session gives the plain run's logits.
import assert from 'node:assert/strict'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { initBackend, LocalModel, generate, DraftModel, PromptLookupDrafter, SpeculativeError, argmax } from '@plexus/runtime'
import type { Drafter, SessionPipeline, TokenConstraint, ModelHead } from '@plexus/runtime'
import { startSwarm } from '../scripts/lib/local-swarm.ts'
import type { LocalSwarm } from '../scripts/lib/local-swarm.ts'
import { connectSwarm, openSwarm, stopNode } from '@plexus/client'
import type { SwarmSession } from '@plexus/client'
import { FIXTURE_NAMES, fixtureDir, golden, maxAbsDiff, runCli, CLIENT_BIN } from './support/fixtures.ts'

type DraftKind = 'prompt-lookup' | 'same' | 'blocks:1'

/** `threads`: the draft model in worker threads (as the CLI has it); off, in this thread (faster to load). */
async function drafterFor (kind: DraftKind, name: string, maxLength: number, vocabSize: number, threads = false): Promise<{ drafter: Drafter, dispose: () => Promise<void> }> {
  if (kind === 'prompt-lookup') return { drafter: new PromptLookupDrafter(), dispose: async () => {} }
  const dm = await DraftModel.load(fixtureDir(name), { blocks: kind === 'same' ? undefined : 1, threads })
  const drafter = await dm.drafter(maxLength, vocabSize)
  return { drafter, dispose: async () => { await drafter.close(); await dm.dispose() } }
}

/** Feeds `tokens` one step each and returns each step's logits: a session's state, made visible. */
async function continueWith (head: ModelHead, s: SessionPipeline, tokens: number[]): Promise<Float32Array[]> {
  const rows: Float32Array[] = []
  for (const t of tokens) rows.push(await head.logits(await s.forward(head.embed([t]), 1), 1))
  return rows
}

describe('speculative decoding', function () {
  this.timeout(300_000)
  before(async () => { await initBackend('wasm') })

  for (const name of FIXTURE_NAMES) {
    describe(`${name} (golden fixture, one process)`, () => {
      const g = golden(name)
      let m: LocalModel
      before(async () => { m = await LocalModel.load(fixtureDir(name)) })
      after(async () => { await m?.dispose() })

      for (const kind of ['prompt-lookup', 'same', 'blocks:1'] as const) {
        it(`greedy with a ${kind} draft gives greedy_new_ids exactly`, async () => {
          const { drafter, dispose } = await drafterFor(kind, name, 64, m.config.vocabSize)
          const s = await m.session(64)
          try {
            const r = await generate(m.head, s, g.prompt_ids, { maxTokens: g.greedy_new_ids.length, speculative: { drafter, k: 4 } })
            assert.deepEqual(r.tokenIds, g.greedy_new_ids)
            const st = r.speculation!
            assert.equal(st.drafter, kind === 'same' ? 'model' : kind)
            if (kind === 'same') {
              // every draft accepted: ≤ 1 + ⌈31 / 5⌉ steps (k grows to 4, plus a bonus token each)
              assert.equal(st.accepted, st.drafted)
              assert.ok(st.targetSteps <= 8, `${st.targetSteps} target steps for 31 tokens`)
            }
            if (kind === 'blocks:1') assert.ok(st.drafted > st.accepted, 'a 1-block draft is rejected at times')
            assert.equal(st.targetSteps, st.rounds)
          } finally { await s.close(); await dispose() }
        })
      }

      it('rejected drafts leave no trace: continuing the session gives the plain session\'s logits', async () => {
        const n = 20
        const { drafter, dispose } = await drafterFor('blocks:1', name, 64, m.config.vocabSize)
        const spec = await m.session(64)
        const plain = await m.session(64)
        try {
          const r = await generate(m.head, spec, g.prompt_ids, { maxTokens: n, speculative: { drafter, k: 4 } })
          assert.ok(r.speculation!.drafted > r.speculation!.accepted, 'some drafts were rejected')
          await generate(m.head, plain, g.prompt_ids, { maxTokens: n })
          const next = g.greedy_new_ids.slice(n - 1)
          const a = await continueWith(m.head, spec, next)
          const b = await continueWith(m.head, plain, next)
          for (let i = 0; i < next.length - 1; i++) {
            assert.equal(argmax(a[i]), next[i + 1])
            assert.ok(maxAbsDiff(a[i], b[i]) < 1e-4, `step ${i}: ${maxAbsDiff(a[i], b[i])}`)
          }
        } finally { await spec.close(); await plain.close(); await dispose() }
      })
    })
  }

  describe('with a token constraint', () => {
    const name = 'tiny-llama'
    const g = golden(name)
    it('masks the target\'s rows and the drafts it checks: the constrained greedy tokens', async () => {
      const m = await LocalModel.load(fixtureDir(name))
      // even ids only, and the run stops after the first id below 100
      const evenOnly = (): TokenConstraint & { seen: number[] } => {
        const seen: number[] = []
        return {
          seen,
          mask: (row) => { for (let i = 1; i < row.length; i += 2) row[i] = -Infinity },
          accept: (id) => { seen.push(id) },
          rewind: (count) => { seen.length = count },
          done: () => seen.length > 0 && seen[seen.length - 1] < 100
        }
      }
      const { drafter, dispose } = await drafterFor('same', name, 64, m.config.vocabSize)
      try {
        const plainRun = await generate(m.head, await m.session(64), g.prompt_ids, { maxTokens: 24, constraint: evenOnly() })
        const c = evenOnly()
        const specRun = await generate(m.head, await m.session(64), g.prompt_ids, { maxTokens: 24, constraint: c, speculative: { drafter, k: 4 } })
        assert.deepEqual(specRun.tokenIds, plainRun.tokenIds)
        assert.deepEqual(c.seen, plainRun.tokenIds)
        assert.equal(specRun.finishReason, plainRun.finishReason)
        assert.ok(specRun.tokenIds.every(id => id % 2 === 0))
        // an unconstrained draft (odd ids too) is rejected where the target may not follow it
        assert.ok(specRun.speculation!.drafted > specRun.speculation!.accepted)
      } finally { await dispose(); await m.dispose() }
    })
  })

  describe('refusals', () => {
    it('a draft model of another vocabulary, a bad k, a session without rollback: named errors', async () => {
      const dm = await DraftModel.load(fixtureDir('tiny-llama'), { blocks: 1, threads: false })
      const m = await LocalModel.load(fixtureDir('tiny-llama'))
      try {
        await assert.rejects(dm.drafter(64, 1000), (e: any) => e instanceof SpeculativeError && e.code === 'draft-vocabulary')
        await assert.rejects(DraftModel.load(fixtureDir('tiny-llama'), { blocks: 4, threads: false }), (e: any) => e instanceof SpeculativeError && e.code === 'draft-blocks')
        const s = await m.session(64)
        const drafter = new PromptLookupDrafter()
        await assert.rejects(generate(m.head, s, [1, 2, 3], { maxTokens: 4, speculative: { drafter, k: 0 } }), (e: any) => e.code === 'bad-speculate')
        const noTruncate: SessionPipeline = { forward: s.forward, close: s.close }
        await assert.rejects(generate(m.head, noTruncate, [1, 2, 3], { maxTokens: 4, speculative: { drafter, k: 2 } }), (e: any) => e.code === 'no-rollback')
        const audited: SessionPipeline = { ...s, confirm: async () => ({ confirmed: 0 }) }
        await assert.rejects(generate(m.head, audited, [1, 2, 3], { maxTokens: 4, speculative: { drafter, k: 2 } }), (e: any) => e.code === 'verified-trust')
        await s.close()
      } finally { await dm.dispose(); await m.dispose() }
    })

    it('the CLI refuses --speculate with --trust verified, a k out of range, and drafting flags without --speculate', async () => {
      const base = ['generate', '--local', '--model', fixtureDir('tiny-llama'), '--token-ids', '1,2,3', '--max-tokens', '2']
      for (const [extra, msg] of [
        [['--speculate', '0'], /--speculate must be an integer in 1\.\.16/],
        [['--draft-model', fixtureDir('tiny-llama')], /give --speculate k too/],
        [['--speculate', '2', '--trust', 'verified'], /spot checks cannot follow/]
      ] as const) {
        const r = await runCli(CLIENT_BIN, [...base, ...extra])
        assert.equal(r.code, 2, r.stderr)
        assert.match(r.stderr, msg)
      }
    })
  })

  it('takes speculate, draft-model and draft-blocks from a config file', async () => {
    const g = golden('tiny-llama')
    const dir = await mkdtemp(join(tmpdir(), 'plexus-spec-'))
    try {
      const config = join(dir, 'client.yaml')
      await writeFile(config, `speculate: 3\ndraft-model: ${JSON.stringify(fixtureDir('tiny-llama'))}\ndraft-blocks: 2\n`)
      const r = await runCli(CLIENT_BIN, ['generate', '--config', config, '--local', '--model', fixtureDir('tiny-llama'), '--token-ids', g.prompt_ids.join(','),
        '--max-tokens', String(g.greedy_new_ids.length), '--ignore-eos', '--json'])
      assert.equal(r.code, 0, r.stderr)
      const out = JSON.parse(r.stdout)
      assert.deepEqual(out.token_ids, g.greedy_new_ids)
      assert.equal(out.speculation.k, 3)
      assert.equal(out.speculation.drafter, 'blocks:2')
    } finally { await rm(dir, { recursive: true, force: true }) }
  })

  describe('through a 3-node swarm (tiny-llama split 0:1 1:2 2:3)', () => {
    const name = 'tiny-llama'
    const g = golden(name)
    let swarm: LocalSwarm
    before(async () => { swarm = await startSwarm(fixtureDir(name), ['0:1', '1:2', '2:3']) })
    after(async () => { await swarm?.stop() })

    for (const [label, flags] of [
      ['prompt-lookup', ['--draft', 'prompt-lookup']],
      ['a 1-block draft model', ['--draft-model', fixtureDir(name), '--draft-blocks', '1']]
    ] as const) {
      it(`plexus-client generate --speculate 4 with ${label} gives greedy_new_ids`, async () => {
        const r = await runCli(CLIENT_BIN, ['generate', '--bootstrap', swarm.bootstrapAddr, '--model', fixtureDir(name), '--token-ids', g.prompt_ids.join(','),
          '--max-tokens', String(g.greedy_new_ids.length), '--ignore-eos', '--json', '--speculate', '4', ...flags])
        assert.equal(r.code, 0, r.stderr)
        const out = JSON.parse(r.stdout)
        assert.deepEqual(out.token_ids, g.greedy_new_ids)
        assert.equal(out.route.length, 3)
        assert.equal(out.speculation.k, 4)
        assert.ok(out.speculation.target_steps <= g.greedy_new_ids.length - 1)
        if (label !== 'prompt-lookup') assert.ok(out.speculation.drafted > out.speculation.accepted, `drafts were rejected: ${JSON.stringify(out.speculation)}`)
      })
    }

    for (const forward of [false, true]) {
      it(`rejections roll every server back${forward ? ' (servers forwarding to each other)' : ''}: the session continues as a plain one`, async () => {
        const node = await connectSwarm([swarm.bootstrapAddr])
        const model = await openSwarm(node, { dir: fixtureDir(name), forward })
        const { drafter, dispose } = await drafterFor('blocks:1', name, 64, model.config.vocabSize, true)
        const n = 16
        try {
          const s = await model.session(64)
          const r = await generate(model.head, s, g.prompt_ids, { maxTokens: n, speculative: { drafter, k: 4 } })
          assert.deepEqual(r.tokenIds, g.greedy_new_ids.slice(0, n))
          assert.ok(r.speculation!.drafted > r.speculation!.accepted, 'some drafts were rejected')
          // the servers hold exactly the positions a plain run leaves: prompt + all but the last token
          assert.equal((s as SwarmSession).length, g.prompt_ids.length + n - 1)
          // each hop checks the step's position against its cache: a stale position fails the step
          const next = g.greedy_new_ids.slice(n - 1)
          const rows = await continueWith(model.head, s, next)
          for (let i = 0; i < next.length - 1; i++) assert.equal(argmax(rows[i]), next[i + 1], `token ${n + i}`)
          await s.close()
        } finally {
          await dispose()
          await model.close()
          await stopNode(node)
        }
      })
    }
  })
})
