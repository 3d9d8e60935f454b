// The runtime against an independent float64 reference: every fixture, both portable backends.
import assert from 'node:assert/strict'
import { initBackend, Checkpoint, Span, ModelHead, LocalModel, generate } from '@plexus/runtime'
import { FIXTURE_NAMES, fixtureDir, golden, maxAbsDiff, runCli, CLIENT_BIN } from '../../../test/support/fixtures.ts'
import { skipWebgpu } from './support/gpu.ts'

for (const backend of ['wasm', 'cpu', 'webgpu'] as const) {
  describe(`golden fixtures on the ${backend} backend`, function () {
    before(async function () {
      if (backend === 'webgpu' && skipWebgpu) { console.warn('    WebGPU golden tests SKIPPED: PLEXUS_SKIP_WEBGPU=1'); this.skip() }
      await initBackend(backend)
    })

    for (const name of FIXTURE_NAMES) {
      describe(name, () => {
        const g = golden(name)
        const T = g.prompt_ids.length

        it('reproduces greedy_new_ids exactly through the CLI (KV cache)', async () => {
          const r = await runCli(CLIENT_BIN, ['generate', '--local', '--model', fixtureDir(name), '--token-ids', g.prompt_ids.join(','),
            '--max-tokens', String(g.greedy_new_ids.length), '--ignore-eos', '--backend', backend, '--json'])
          assert.equal(r.code, 0, r.stderr)
          const out = JSON.parse(r.stdout)
          assert.deepEqual(out.token_ids, g.greedy_new_ids)
          assert.equal(out.backend, backend)
          assert.ok(out.tokens_per_second > 0 && out.prefill_tokens_per_second > 0)
        })

        it('matches last_prompt_logits within 2e-4', async () => {
          const m = await LocalModel.load(fixtureDir(name))
          try {
            const s = await m.session()
            const h = await s.forward(m.head.embed(g.prompt_ids), T)
            const logits = await m.head.logits(h, T)
            assert.ok(maxAbsDiff(logits, g.last_prompt_logits) < 2e-4)
            await s.close()
          } finally { await m.dispose() }
        })

        it('matches hidden_at_block_boundaries for every single block within 1e-3', async () => {
          const ckpt = await Checkpoint.open(fixtureDir(name))
          const hs = g.hidden_at_block_boundaries.h
          try {
            const head = await ModelHead.load(ckpt)
            assert.ok(maxAbsDiff(head.embed(g.prompt_ids), hs[0].flat()) < 1e-6)
            head.dispose()
            for (let b = 0; b < ckpt.config.numLayers; b++) {
              const span = await Span.load(ckpt, b, b + 1)
              const out = await span.forward(Float32Array.from(hs[b].flat()), T, span.newCache(64))
              const d = maxAbsDiff(out, hs[b + 1].flat())
              assert.ok(d < 1e-3, `block ${b}: max abs diff ${d}`)
              span.dispose()
            }
          } finally { await ckpt.close() }
        })
      })
    }
  })
}

/** The enclosing suite runs on the webgpu backend with `name` set to `value` (put back after). */
function onWebgpuWith (name: string, value: string): void {
  let saved: string | undefined
  before(async function () {
    if (skipWebgpu) { console.warn('    WebGPU golden tests SKIPPED: PLEXUS_SKIP_WEBGPU=1'); this.skip() }
    this.timeout(600_000)
    await initBackend('webgpu')
    saved = process.env[name]
    process.env[name] = value
  })
  after(() => {
    if (saved == null) delete process.env[name]
    else process.env[name] = saved
  })
}

// The kernels a GPU runs (software Vulkan keeps the simpler ones by default: they compile in
// milliseconds there, these in seconds), through whole models on the CI's software adapter.
describe('golden fixtures on the webgpu backend with the fast kernels', function () {
  onWebgpuWith('PLEXUS_GPU_KERNELS', 'fast')

  for (const name of ['tiny-llama', 'tiny-qwen2-tied-bf16']) {
    it(`${name}: greedy_new_ids exactly and last_prompt_logits within 2e-4`, async function () {
      this.timeout(600_000)
      const g = golden(name)
      const m = await LocalModel.load(fixtureDir(name))
      try {
        const s = await m.session()
        const T = g.prompt_ids.length
        const logits = await m.head.logits(await s.forward(m.head.embed(g.prompt_ids), T), T)
        assert.ok(maxAbsDiff(logits, g.last_prompt_logits) < 2e-4)
        await s.close()
        const s2 = await m.session()
        const r = await generate(m.head, s2, g.prompt_ids, { maxTokens: g.greedy_new_ids.length })
        await s2.close()
        assert.deepEqual(r.tokenIds, g.greedy_new_ids)
      } finally { await m.dispose() }
    })
  }
})

// Decode's norms as kernels of their own (the setting that measures what fusing them gains).
describe('golden fixtures on the webgpu backend with decode norms as kernels of their own', function () {
  onWebgpuWith('PLEXUS_GPU_FUSED_NORMS', '0')

  it('tiny-llama: greedy_new_ids exactly (PLEXUS_GPU_FUSED_NORMS=0)', async function () {
    const g = golden('tiny-llama')
    const m = await LocalModel.load(fixtureDir('tiny-llama'))
    try {
      const s = await m.session()
      const r = await generate(m.head, s, g.prompt_ids, { maxTokens: g.greedy_new_ids.length })
      await s.close()
      assert.deepEqual(r.tokenIds, g.greedy_new_ids)
    } finally { await m.dispose() }
  })

  it('a value other than 0 or 1 is refused, naming the variable', async () => {
    process.env.PLEXUS_GPU_FUSED_NORMS = 'no'
    try {
      await assert.rejects(LocalModel.load(fixtureDir('tiny-llama')), /PLEXUS_GPU_FUSED_NORMS must be 0 or 1/)
    } finally { process.env.PLEXUS_GPU_FUSED_NORMS = '0' }
  })
})

describe('Dawn options through PLEXUS_GPU_DAWN_FLAGS', function () {
  before(function () { if (skipWebgpu) { console.warn('    WebGPU golden tests SKIPPED: PLEXUS_SKIP_WEBGPU=1'); this.skip() } })

  it('generate --local --backend webgpu gives the golden tokens with Dawn options set; a malformed option is named, an unknown adapter lists the others', async () => {
    const g = golden('tiny-llama')
    const args = ['generate', '--local', '--model', fixtureDir('tiny-llama'), '--token-ids', g.prompt_ids.join(','),
      '--max-tokens', String(g.greedy_new_ids.length), '--ignore-eos', '--backend', 'webgpu', '--json']
    const ok = await runCli(CLIENT_BIN, args, { env: { ...process.env, PLEXUS_GPU_DAWN_FLAGS: 'enable-dawn-features=disable_robustness; backend=vulkan' } })
    assert.equal(ok.code, 0, ok.stderr)
    assert.deepEqual(JSON.parse(ok.stdout).token_ids, g.greedy_new_ids)
    const bad = await runCli(CLIENT_BIN, args, { env: { ...process.env, PLEXUS_GPU_DAWN_FLAGS: 'disable_robustness' } })
    assert.notEqual(bad.code, 0)
    assert.match(bad.stderr, /PLEXUS_GPU_DAWN_FLAGS takes key=value options of Dawn separated by ";" \(got "disable_robustness"\)/)
    // an adapter Dawn does not have: the error lists those it has
    const none = await runCli(CLIENT_BIN, args, { env: { ...process.env, PLEXUS_GPU_DAWN_FLAGS: 'adapter=No Such GPU' } })
    assert.notEqual(none.code, 0)
    assert.match(none.stderr, /WebGPU could not start: .*Available adapters: \* backend: '\w+', name: '/)
  })
})
