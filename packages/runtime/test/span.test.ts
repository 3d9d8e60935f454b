// Spans compose exactly, and the KV cache changes nothing but speed.
import assert from 'node:assert/strict'
import { initBackend, Checkpoint, Span, ModelHead, SpanError } from '@plexus/runtime'
import { FIXTURE_NAMES, fixtureDir, golden, maxAbsDiff } from '../../../test/support/fixtures.ts'
import { skipWebgpu } from './support/gpu.ts'
import { WorkerSpanRunner } from '../src/worker-span.ts'

for (const backend of ['wasm', 'webgpu'] as const) describe(`spans of blocks (${backend})`, function () {
  before(async function () {
    if (backend === 'webgpu' && skipWebgpu) { console.warn('    WebGPU span tests SKIPPED: PLEXUS_SKIP_WEBGPU=1'); this.skip() }
    await initBackend(backend)
  })

  for (const name of FIXTURE_NAMES) {
    describe(name, () => {
      const g = golden(name)
      const T = g.prompt_ids.length
      let ckpt: Checkpoint
      let head: ModelHead
      before(async () => { ckpt = await Checkpoint.open(fixtureDir(name)); head = await ModelHead.load(ckpt) })
      after(async () => { head.dispose(); await ckpt.close() })

      it('[0, a) then [a, L) gives the same floats as [0, L), for every a', async () => {
        const L = ckpt.config.numLayers
        const x = head.embed(g.prompt_ids)
        const whole = await Span.load(ckpt, 0, L)
        const ref = await whole.forward(x, T, whole.newCache(64))
        // and a decode step after the prefill, through the caches
        const wc = whole.newCache(64)
        await whole.forward(x, T, wc)
        const refStep = await whole.forward(head.embed([5]), 1, wc)
        whole.dispose()
        for (let a = 1; a < L; a++) {
          const s1 = await Span.load(ckpt, 0, a)
          const s2 = await Span.load(ckpt, a, L)
          const c1 = s1.newCache(64)
          const c2 = s2.newCache(64)
          const out = await s2.forward(await s1.forward(x, T, c1), T, c2)
          assert.deepEqual(out, ref, `split at ${a}`)
          const step = await s2.forward(await s1.forward(head.embed([5]), 1, c1), 1, c2)
          assert.deepEqual(step, refStep, `decode step, split at ${a}`)
          s1.dispose(); s2.dispose()
        }
      })

      it('incremental decode matches a full forward of the whole sequence at every step within 1e-4', async () => {
        const L = ckpt.config.numLayers
        const span = await Span.load(ckpt, 0, L)
        const seq = [...g.prompt_ids, ...g.greedy_new_ids.slice(0, 8)]
        const cache = span.newCache(64)
        await span.forward(head.embed(seq.slice(0, T)), T, cache)
        for (let n = T + 1; n <= seq.length; n++) {
          const inc = await head.logits(await span.forward(head.embed([seq[n - 1]]), 1, cache, [n - 1]), 1)
          const full = await head.logits(await span.forward(head.embed(seq.slice(0, n)), n, span.newCache(64)), n)
          const d = maxAbsDiff(inc, full)
          assert.ok(d < 1e-4, `step ${n}: max abs diff ${d}`)
        }
        span.dispose()
      })

      it('rolls back the cache: truncate then replay gives the same output', async () => {
        const span = await Span.load(ckpt, 0, ckpt.config.numLayers)
        const cache = span.newCache(64)
        await span.forward(head.embed(g.prompt_ids), T, cache)
        const a = await span.forward(head.embed([7]), 1, cache)
        await span.forward(head.embed([9, 11]), 2, cache)
        cache.truncate(T)
        assert.equal(cache.length, T)
        const b = await span.forward(head.embed([7]), 1, cache)
        assert.deepEqual(b, a)
        cache.dispose()
        assert.equal(cache.bytes(), 0)
        span.dispose()
      })
    })
  }

  describe('batched steps', () => {
    it('several sessions in one call give bitwise the results of separate calls', async () => {
      const ckpt = await Checkpoint.open(fixtureDir('tiny-qwen2-tied-bf16'))
      const head = await ModelHead.load(ckpt)
      const span = await Span.load(ckpt, 1, 4)
      const prompts = [[1, 5, 9], [1, 7], [1, 2, 3, 4, 5, 6], [1]]
      const solo = prompts.map(() => span.newCache(32))
      const batched = prompts.map(() => span.newCache(32))
      for (let i = 0; i < prompts.length; i++) {
        await span.forward(head.embed(prompts[i]), prompts[i].length, solo[i])
        await span.forward(head.embed(prompts[i]), prompts[i].length, batched[i])
      }
      for (let step = 0; step < 5; step++) {
        const ids = prompts.map((_, i) => 10 + step * 7 + i)
        const want = []
        for (let i = 0; i < prompts.length; i++) want.push(await span.forward(head.embed([ids[i]]), 1, solo[i]))
        const got = await span.forwardBatch(prompts.map((_, i) => ({ hidden: head.embed([ids[i]]), tokens: 1, cache: batched[i] })))
        assert.deepEqual(got, want, `step ${step}`)
      }
      // a prefill batched with decode steps too
      const fresh = span.newCache(32)
      const mixed = await span.forwardBatch([
        { hidden: head.embed([1, 2, 3]), tokens: 3, cache: fresh },
        { hidden: head.embed([99]), tokens: 1, cache: batched[0] }
      ])
      assert.deepEqual(mixed[0], await span.forward(head.embed([1, 2, 3]), 3, span.newCache(32)))
      assert.deepEqual(mixed[1], await span.forward(head.embed([99]), 1, solo[0]))
      await assert.rejects(span.forwardBatch([{ hidden: head.embed([1]), tokens: 1, cache: fresh }, { hidden: head.embed([1]), tokens: 1, cache: fresh }]), /two steps of one session/)
      span.dispose(); head.dispose(); await ckpt.close()
    })
    if (backend === 'wasm') it('a span worker batches concurrent sessions, and a session its cohort left keeps stepping', async () => {
      const dir = fixtureDir('tiny-qwen2-tied-bf16')
      const ckpt = await Checkpoint.open(dir)
      const head = await ModelHead.load(ckpt)
      const span = await Span.load(ckpt, 1, 4)
      const runner = await WorkerSpanRunner.load({ path: dir, start: 1, end: 4, backend: 'wasm' })
      try {
        const prompts = [[1, 5, 9], [1, 7], [1, 2, 3, 4, 5, 6], [1]]
        const solo = prompts.map(() => span.newCache(32))
        const sessions = await Promise.all(prompts.map(async () => await runner.open(32)))
        for (let i = 0; i < prompts.length; i++) {
          const want = await span.forward(head.embed(prompts[i]), prompts[i].length, solo[i])
          assert.deepEqual(await sessions[i].forward(head.embed(prompts[i]), prompts[i].length), want)
        }
        // the four step together (they form one cohort the worker waits for)…
        for (let step = 0; step < 4; step++) {
          const ids = prompts.map((_, i) => 10 + step * 7 + i)
          const want = []
          for (let i = 0; i < prompts.length; i++) want.push(await span.forward(head.embed([ids[i]]), 1, solo[i]))
          assert.deepEqual(await Promise.all(sessions.map(async (s, i) => await s.forward(head.embed([ids[i]]), 1))), want, `step ${step}`)
        }
        // …then the others stop stepping (still open): session 0 goes on alone, with the right outputs
        for (let step = 0; step < 4; step++) {
          const want = await span.forward(head.embed([40 + step]), 1, solo[0])
          assert.deepEqual(await sessions[0].forward(head.embed([40 + step]), 1), want, `alone, step ${step}`)
        }
        for (const s of sessions.slice(1)) await s.close()
        assert.deepEqual(await sessions[0].forward(head.embed([60]), 1), await span.forward(head.embed([60]), 1, solo[0]))
        assert.equal(sessions[0].length, prompts[0].length + 9)
      } finally {
        await runner.dispose(); span.dispose(); await head.dispose(); await ckpt.close()
      }
    })
  })

  if (backend === 'wasm') describe('batched LM head', () => {
    for (const [headBackend, thread] of [['wasm', false], ['cpu', false], ['wasm', true], ['cpu', true], ['webgpu', false]] as const) {
      it(`concurrent logits requests give bitwise the results of separate calls (${headBackend}${thread ? ', in a worker thread' : ''})`, async function () {
        if (headBackend === 'webgpu' && skipWebgpu) this.skip()
        await initBackend(headBackend)
        const ckpt = await Checkpoint.open(fixtureDir('tiny-llama'))
        // the reference: separate calls in this thread
        const local = await ModelHead.load(ckpt)
        const head = thread ? await ModelHead.load(ckpt, { thread }) : local
        try {
          const rows = [[3], [7, 1, 2], [9, 4], [11]].map(ids => ({ h: head.embed(ids), n: ids.length }))
          const want = []
          for (const r of rows) want.push(await local.logits(r.h, r.n))
          const wantTwo = await local.logits(rows[1].h, rows[1].n, 2)
          const got = await Promise.all([...rows.map(async r => await head.logits(r.h, r.n)), head.logits(rows[1].h, rows[1].n, 2)])
          assert.deepEqual(got, [...want, wantTwo])
          assert.equal(wantTwo.length, 2 * ckpt.config.vocabSize)
          // a bad request among good ones fails alone
          const mixed = await Promise.allSettled([head.logits(rows[0].h, rows[0].n), head.logits(new Float32Array(5), 1), head.logits(rows[3].h, rows[3].n)])
          assert.deepEqual(mixed.map(m => m.status), ['fulfilled', 'rejected', 'fulfilled'])
          assert.match(String((mixed[1] as PromiseRejectedResult).reason), /hidden states have 5 values, expected 1×64/)
          assert.deepEqual((mixed[2] as PromiseFulfilledResult<Float32Array>).value, want[3])
        } finally {
          await head.dispose(); await local.dispose(); await ckpt.close(); await initBackend('wasm')
        }
      })
    }
  })

  if (backend === 'wasm') describe('bad input', () => {
    let ckpt: Checkpoint
    let span: Span
    before(async () => { ckpt = await Checkpoint.open(fixtureDir('tiny-llama')); span = await Span.load(ckpt, 0, 2) })
    after(async () => { span.dispose(); await ckpt.close() })
    const H = 64

    it('rejects hidden states of the wrong size', async () => {
      await assert.rejects(span.forward(new Float32Array(H * 2 - 1), 2, span.newCache(8)), /hidden states have 127 values, expected 2×64/)
    })
    it('rejects positions that do not continue the cache', async () => {
      const c = span.newCache(8)
      await span.forward(new Float32Array(H), 1, c)
      await assert.rejects(span.forward(new Float32Array(H), 1, c, [0]), /positions must continue the session's cache: expected 1 at index 0, got 0/)
    })
    it('rejects a step past the max length', async () => {
      const c = span.newCache(2)
      await assert.rejects(span.forward(new Float32Array(H * 3), 3, c), /session length 3 exceeds its max length 2/)
    })
    it('rejects invalid spans', async () => {
      await assert.rejects(Span.load(ckpt, 2, 2), SpanError)
      await assert.rejects(Span.load(ckpt, 0, 4), /invalid span \[0, 4\) for a model of 3 blocks/)
    })
    it('rejects a truncation longer than the cache', () => {
      assert.throws(() => span.newCache(8).truncate(3), /cannot truncate the cache to 3: it holds 0 positions/)
    })
  })
})
