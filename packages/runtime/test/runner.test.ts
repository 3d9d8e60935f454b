// A long step run in chunks (forwardInChunks: what a server does with a prefill) gives the whole
// step's floats, and its memory grows linearly with its tokens where the whole step's grows with
// tokens² (its attention scores). Peak tensor memory is tfjs' own count (tf.profile), so other
// work in this process does not blur it.
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import * as tf from '@tensorflow/tfjs-core'
import { initBackend, Checkpoint, Span, ModelHead, forwardInChunks, seededRandom } from '@plexus/runtime'
import { makeModel } from '../../../scripts/lib/model-maker.ts'
import { fixtureDir, golden, maxAbsDiff } from '../../../test/support/fixtures.ts'
import { cacheSession } from '../src/runner.ts'

describe('chunked prefill (wasm)', function () {
  this.timeout(300_000)
  before(async () => { await initBackend('wasm') })

  it('chunks of 1, 2, 5 and 7 tokens give the whole step\'s output within 1e-4 (the incremental-decode tolerance) and the golden hidden states (tiny-llama)', async () => {
    const g = golden('tiny-llama')
    const ckpt = await Checkpoint.open(fixtureDir('tiny-llama'))
    const head = await ModelHead.load(ckpt)
    const L = ckpt.config.numLayers
    const span = await Span.load(ckpt, 0, L)
    try {
      const T = g.prompt_ids.length
      const x = head.embed(g.prompt_ids)
      const whole = await span.forward(x, T, span.newCache(64))
      const want = Float32Array.from(g.hidden_at_block_boundaries.h[L].flat())
      assert.ok(maxAbsDiff(whole, want) < 1e-4, 'whole step vs golden')
      for (const chunk of [1, 2, 5, 7]) {
        const session = cacheSession(span, span.newCache(64))
        const out = await forwardInChunks(session, x, T, chunk)
        assert.equal(session.length, T)
        const d = maxAbsDiff(out, whole)
        assert.ok(d < 1e-4, `chunks of ${chunk}: max abs diff ${d} from the whole step`)
        assert.ok(maxAbsDiff(out, want) < 1e-4, `chunks of ${chunk} vs golden`)
        // and the cache it left decodes the next token as the whole step's cache does
        const wc = cacheSession(span, span.newCache(64))
        await wc.forward(x, T)
        assert.ok(maxAbsDiff(await session.forward(head.embed([5]), 1), await wc.forward(head.embed([5]), 1)) < 1e-4, `decode after chunks of ${chunk}`)
        await session.close(); await wc.close()
      }
    } finally { span.dispose(); head.dispose(); await ckpt.close() }
  })

  it('a 2,048-token step: chunked peak memory is linear in its tokens, whole is quadratic', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'plexus-chunked-'))
    try {
      // narrow and many heads: the T × T scores dominate the whole step's memory
      await makeModel({ shape: { hiddenSize: 64, numLayers: 1, numHeads: 8, numKvHeads: 8, intermediateSize: 128, vocabSize: 512, maxPositions: 4096 }, out: dir, seed: 5, name: 'chunky', workers: 1 })
      const ckpt = await Checkpoint.open(dir)
      // tfjs's block forward, whose attention holds a step's T × T scores (tf.profile sees its
      // tensors); the CPU engine's holds one row of scores at a time whatever the step
      process.env.PLEXUS_BLOCK_ENGINE = 'tfjs'
      const span = await Span.load(ckpt, 0, 1).finally(() => { delete process.env.PLEXUS_BLOCK_ENGINE })
      assert.equal(span.engine, 'tfjs')
      const H = ckpt.config.hiddenSize
      const rand = seededRandom(3)
      const input = Float32Array.from({ length: 2048 * H }, () => rand() * 2 - 1)
      const peak = async (tokens: number, chunk: number): Promise<{ bytes: number, out: Float32Array }> => {
        const session = cacheSession(span, span.newCache(2048))
        let out: Float32Array = new Float32Array(0)
        const info = await tf.profile(async () => { out = await forwardInChunks(session, input.subarray(0, tokens * H), tokens, chunk) })
        await session.close()
        return { bytes: info.peakBytes, out }
      }
      try {
        const c512 = await peak(512, 128)
        const c2048 = await peak(2048, 128)
        const w512 = await peak(512, 2048)
        const w2048 = await peak(2048, 2048)
        const mb = (n: number): string => `${(n / 2 ** 20).toFixed(1)} MiB`
        console.log(`      peak tensor memory, 512 → 2,048 tokens: chunks of 128 ${mb(c512.bytes)} → ${mb(c2048.bytes)}; whole ${mb(w512.bytes)} → ${mb(w2048.bytes)}`)
        // 4× the tokens: linear is ≈ 4× (the bound allows 5×), quadratic ≈ 16×
        assert.ok(c2048.bytes <= 5 * c512.bytes, `chunked: ${mb(c2048.bytes)} for 2,048 tokens vs ${mb(c512.bytes)} for 512`)
        assert.ok(w2048.bytes >= 8 * w512.bytes, `whole: ${mb(w2048.bytes)} vs ${mb(w512.bytes)} (the test must see the quadratic growth it guards against)`)
        assert.ok(c2048.bytes * 4 < w2048.bytes, 'chunked uses under a quarter of the whole step\'s peak at 2,048 tokens')
        const d = maxAbsDiff(c2048.out, w2048.out)
        assert.ok(d < 1e-4, `chunked vs whole at 2,048 tokens: max abs diff ${d}`)
      } finally { span.dispose(); await ckpt.close() }
    } finally { await rm(dir, { recursive: true, force: true }) }
  })
})
