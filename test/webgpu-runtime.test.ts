// The GPU engine inside the runtime and the swarm: caches that grow, roll back, and a route
// through a webgpu node and wasm nodes that gives the tokens one machine gives.
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { initBackend, Checkpoint, Span, ModelHead, LocalModel, generate, gpuSubmissionTimes, openModel, withQuantization } from '@plexus/runtime'
import { makeModel } from '../scripts/lib/model-maker.ts'
import { startSwarm } from '../scripts/lib/local-swarm.ts'
import { fixtureDir, golden, maxAbsDiff, runCli, CLIENT_BIN } from './support/fixtures.ts'
import { dequantized } from './support/dequantized.ts'

// the same opt-out as the runtime's kernel tests (packages/runtime/test/support/gpu.ts)
const skipWebgpu = process.env.PLEXUS_SKIP_WEBGPU === '1'

describe('webgpu backend in the runtime and the swarm', function () {
  this.timeout(300_000)
  before(function () {
    if (skipWebgpu) { console.warn('    WebGPU runtime tests SKIPPED: PLEXUS_SKIP_WEBGPU=1'); this.skip() }
  })
  after(async () => { await initBackend('wasm') })

  it('a session cache takes pages as it grows, rolls back, and gives its pages back, matching wasm', async () => {
    const ckpt = await Checkpoint.open(fixtureDir('tiny-qwen2-tied-bf16'))
    try {
      const ids = Array.from({ length: 200 }, (_, i) => 1 + (i * 37) % 500)
      const run = async (backend: 'wasm' | 'webgpu'): Promise<{ prefill: Float32Array, steps: Float32Array[], replay: Float32Array, bytes: number[], again: Float32Array }> => {
        await initBackend(backend)
        const head = await ModelHead.load(ckpt)
        const span = await Span.load(ckpt, 0, ckpt.config.numLayers)
        const cache = span.newCache(300)
        const bytes = [cache.bytes()]
        const prefill = await span.forward(head.embed(ids), ids.length, cache)
        bytes.push(cache.bytes())
        const steps: Float32Array[] = []
        for (let i = 0; i < 60; i++) steps.push(await span.forward(head.embed([7 + i]), 1, cache))
        bytes.push(cache.bytes())
        cache.truncate(230)
        const replay = await span.forward(head.embed([7 + 30]), 1, cache)
        cache.dispose()
        // the span's pages were all given back (GPU: its page buffers went); a new session starts afresh
        const again = await span.forward(head.embed(ids), ids.length, span.newCache(300))
        span.dispose(); await head.dispose()
        return { prefill, steps, replay, bytes, again }
      }
      const gpu = await run('webgpu')
      const cpu = await run('wasm')
      assert.ok(maxAbsDiff(gpu.prefill, cpu.prefill) < 1e-3)
      gpu.steps.forEach((s, i) => assert.ok(maxAbsDiff(s, cpu.steps[i]) < 1e-3, `step ${i}`))
      assert.deepEqual(gpu.replay, gpu.steps[30], 'after truncating to 230, position 230 is computed as before')
      assert.deepEqual(gpu.again, gpu.prefill)
      // pages of 32 positions as they come: none before the first step, 7 after the 200-token
      // prefill, 9 after 60 more (float32 keys and values)
      const perPosition = 2 * 4 * ckpt.config.numLayers * ckpt.config.numKvHeads * ckpt.config.headDim
      assert.deepEqual(gpu.bytes, [0, 224, 288].map(n => n * perPosition))
    } finally { await ckpt.close() }
  })

  it('a local model runs the LM head in the step\'s submission: one a token, logits bitwise those of the head called apart', async () => {
    await initBackend('webgpu')
    const g = golden('tiny-llama')
    const m = await LocalModel.load(fixtureDir('tiny-llama'))
    try {
      const fused = await m.session()
      const apart = await m.session()
      assert.ok(fused.forwardLogits != null)
      // the prompt (a GEMM step, its last row to the head), then decode steps, then the head
      // called apart in between (its scratch regrown: the fused step must rebind, not reuse)
      let ids: number[] = g.prompt_ids
      for (let i = 0; i < 6; i++) {
        const a: Float32Array = await fused.forwardLogits!(m.head, m.head.embed(ids), ids.length)
        const b = await m.head.logits(await apart.forward(m.head.embed(ids), ids.length), ids.length)
        assert.deepEqual(a, b, `step ${i}`)
        if (i === 3) await m.head.logits(m.head.embed([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]), 17, 17)
        ids = [g.greedy_new_ids[i]]
      }
      await fused.close(); await apart.close()
      // generate takes that path: one submission per token, none of the head alone
      const s = await m.session()
      gpuSubmissionTimes(true)
      const r = await generate(m.head, s, g.prompt_ids, { maxTokens: g.greedy_new_ids.length })
      const times = gpuSubmissionTimes(true)
      await s.close()
      assert.deepEqual(r.tokenIds, g.greedy_new_ids)
      assert.equal(times['a step']?.submissions, g.greedy_new_ids.length)
      assert.equal(times['the LM head'], undefined)
    } finally { await m.dispose() }
  })

  it('an f16 KV cache holds half the bytes and gives logits within 0.5% of the f32 cache\'s, and the same greedy tokens', async () => {
    const name = 'tiny-llama3-sharded-bf16'
    const g = golden(name)
    const ckpt = await Checkpoint.open(fixtureDir(name))
    await initBackend('webgpu')
    const head = await ModelHead.load(ckpt)
    try {
      const decode = async (kvCache: 'f32' | 'f16'): Promise<{ logits: Float32Array[], ids: number[], bytes: number }> => {
        const span = await Span.load(ckpt, 0, ckpt.config.numLayers, { kvCache })
        const cache = span.newCache(64)
        let x = head.embed(g.prompt_ids)
        let n = g.prompt_ids.length
        const logits: Float32Array[] = []
        const ids: number[] = []
        for (let i = 0; i < g.greedy_new_ids.length; i++) {
          const l = await head.logits(await span.forward(x, n, cache), n)
          logits.push(l)
          let best = 0
          for (let v = 1; v < l.length; v++) if (l[v] > l[best]) best = v
          ids.push(best)
          x = head.embed([best]); n = 1
        }
        const bytes = cache.bytes()
        cache.dispose(); span.dispose()
        return { logits, ids, bytes }
      }
      const f32 = await decode('f32')
      const f16 = await decode('f16')
      assert.deepEqual(f32.ids, g.greedy_new_ids)
      assert.deepEqual(f16.ids, g.greedy_new_ids)
      assert.equal(f16.bytes * 2, f32.bytes)
      f16.logits.forEach((l, i) => {
        const scale = Math.max(...f32.logits[i].map(Math.abs))
        assert.ok(maxAbsDiff(l, f32.logits[i]) < 5e-3 * scale, `step ${i}: ${maxAbsDiff(l, f32.logits[i])} of ${scale}`)
      })
    } finally { await head.dispose(); await ckpt.close() }
  })

  it('q8_0 and q4_k blocks computed from their blocks on the GPU equal the dequantized weights on wasm (rows of whole q4_k super-blocks)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'plexus-gpu-quant-'))
    try {
      // rows of 256 and 512: whole q4_k super-blocks; small enough to quantize quickly
      await makeModel({ shape: { hiddenSize: 256, numLayers: 2, numHeads: 4, numKvHeads: 2, intermediateSize: 512, vocabSize: 1000 }, dtype: 'bf16', out: join(dir, 'm'), seed: 5 })
      for (const q of ['q8_0', 'q4_k'] as const) {
        const src = withQuantization(await openModel(join(dir, 'm')), q)
        const ids = [1, 450, 496, 173, 170, 299]
        // the GPU multiplies float32 activations by the dequantized blocks; on wasm the CPU kernels
        // would round the activations per block (16 bits for q8_0, 8 for q4_k): the reference reads
        // them as float32
        const ref = dequantized(withQuantization(await openModel(join(dir, 'm')), q))
        const run = async (backend: 'wasm' | 'webgpu'): Promise<Float32Array[]> => {
          await initBackend(backend)
          const span = await Span.load(backend === 'wasm' ? ref : src, 0, 2)
          const head = await ModelHead.load(src)
          const cache = span.newCache(32)
          const outs = [await span.forward(head.embed(ids), ids.length, cache)]
          for (const id of [7, 8, 9]) outs.push(await span.forward(head.embed([id]), 1, cache))
          span.dispose(); await head.dispose()
          return outs
        }
        const gpu = await run('webgpu')
        const cpu = await run('wasm')
        gpu.forEach((o, i) => {
          const scale = Math.max(...cpu[i].map(Math.abs))
          assert.ok(maxAbsDiff(o, cpu[i]) < 1e-4 * scale, `${q} step ${i}: ${maxAbsDiff(o, cpu[i])} of ${scale}`)
        })
        await src.close()
        await ref.close()
      }
    } finally { await rm(dir, { recursive: true, force: true }) }
  })

  it('a swarm of one webgpu node (f16 KV cache) and two wasm nodes gives the golden tokens', async () => {
    const name = 'tiny-llama'
    const g = golden(name)
    const swarm = await startSwarm(fixtureDir(name), [])
    try {
      const nodes = await Promise.all([
        swarm.add('gpu', fixtureDir(name), '0:1', ['--backend', 'webgpu', '--kv-cache', 'f16']),
        swarm.add('wasm-1', fixtureDir(name), '1:2', ['--backend', 'wasm']),
        swarm.add('wasm-2', fixtureDir(name), '2:3', ['--backend', 'wasm'])
      ])
      assert.deepEqual(nodes.map(n => n.ready.backend), ['webgpu', 'wasm', 'wasm'])
      const r = await runCli(CLIENT_BIN, ['generate', '--bootstrap', swarm.bootstrapAddr, '--model', fixtureDir(name), '--token-ids', g.prompt_ids.join(','),
        '--max-tokens', String(g.greedy_new_ids.length), '--ignore-eos', '--json', '--backend', 'wasm'])
      assert.equal(r.code, 0, r.stderr)
      const out = JSON.parse(r.stdout)
      assert.deepEqual(out.token_ids, g.greedy_new_ids)
      assert.deepEqual(out.route.map((h: any) => `${h.start}:${h.end}`), ['0:1', '1:2', '2:3'])
      assert.equal(out.route[0].peer, nodes[0].ready.peerId)
      const models = await runCli(CLIENT_BIN, ['models', '--bootstrap', swarm.bootstrapAddr, '--json'])
      assert.equal(models.code, 0, models.stderr)
      const listed = JSON.parse(models.stdout).models.find((m: any) => m.modelId === nodes[0].ready.modelId)
      assert.deepEqual([...listed.backends].sort(), ['wasm', 'webgpu'])
      assert.deepEqual(listed.formats, ['f32'])
    } finally { await swarm.stop() }
  })
})
