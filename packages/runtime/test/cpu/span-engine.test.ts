// The CPU engine (cpu/span-engine.ts): spans whose weights are in a kernel format run every
// operation of a step in wasm. It must compute what the tfjs block forward computes, give the
// same bits however a step is batched, split or rolled back, and keep its caches where it says.
import assert from 'node:assert/strict'
import { initBackend } from '../../src/backend.ts'
import { Checkpoint } from '../../src/checkpoint.ts'
import { Span, KVCache } from '../../src/span.ts'
import { Arena } from '../../src/cpu/arena.ts'
import { CpuKVStore } from '../../src/cpu/kv-store.ts'
import { kernelThreads, setKernelThreads } from '../../src/cpu/threads.ts'
import { withQuantization } from '../../src/quant/quantized-source.ts'
import { hiddenStates } from '../support/hidden-states.ts'
import type { ModelSource } from '../../src/model-source.ts'
import { fixtureDir } from '../../../../test/support/fixtures.ts'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { openModel } from '../../src/model-source.ts'
import { blockBytes } from '../../src/local.ts'
import { writeGguf } from '../../../../scripts/lib/gguf.ts'

const CASES: Array<{ name: string, fixture: string, quantize?: 'q8_0' | 'q4_k', f16?: true }> = [
  { name: 'q8_0 llama', fixture: 'tiny-llama', quantize: 'q8_0' },
  { name: 'bf16 qwen2 (q/k/v bias)', fixture: 'tiny-qwen2-tied-bf16' },
  { name: 'f16 GGUF of llama', fixture: 'tiny-llama', f16: true }
]


async function loadTfjs (ckpt: ModelSource, start: number, end: number): Promise<Span> {
  process.env.PLEXUS_BLOCK_ENGINE = 'tfjs'
  try { return await Span.load(ckpt, start, end) } finally { delete process.env.PLEXUS_BLOCK_ENGINE }
}

/** Runs `steps` (row counts) of one session's hidden states through `span`, the outputs concatenated. */
async function run (span: Span, cache: KVCache, x: Float32Array, steps: number[]): Promise<Float32Array> {
  const H = span.config.hiddenSize
  const out = new Float32Array(x.length)
  let row = 0
  for (const n of steps) {
    out.set(await span.forward(x.subarray(row * H, (row + n) * H), n, cache), row * H)
    row += n
  }
  return out
}

/** The largest and the RMS difference, each over the reference's largest and RMS value. */
function difference (a: Float32Array, b: Float32Array): { max: number, rms: number } {
  let max = 0; let scale = 0; let d2 = 0; let b2 = 0
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i])
    max = Math.max(max, d); scale = Math.max(scale, Math.abs(b[i])); d2 += d * d; b2 += b[i] * b[i]
  }
  return { max: max / scale, rms: Math.sqrt(d2 / b2) }
}

describe('CPU engine: a span\'s step in wasm kernels', function () {
  this.timeout(120_000)
  before(async () => { await initBackend('wasm') })

  for (const c of CASES) {
    describe(c.name, () => {
      let ckpt: ModelSource
      let span: Span
      let dir: string | undefined
      before(async () => {
        if (c.f16 === true) {
          dir = await mkdtemp(join(tmpdir(), 'plexus-engine-'))
          await writeGguf(fixtureDir(c.fixture), join(dir, 'model.gguf'), { dtype: 'f16' })
          ckpt = await openModel(join(dir, 'model.gguf'))
        } else ckpt = withQuantization(await Checkpoint.open(fixtureDir(c.fixture)), c.quantize)
        span = await Span.load(ckpt, 0, ckpt.config.numLayers)
      })
      after(async () => {
        span?.dispose(); await ckpt?.close()
        if (dir != null) await rm(dir, { recursive: true, force: true })
      })

      it('holds its weights as stored', () => {
        const cfg = ckpt.config
        const perWeight = c.quantize === 'q8_0' ? 34 / 32 : 2
        const linear = cfg.numLayers * blockBytes(cfg) / 4
        // the seven matrices at their stored bytes per weight, plus the norms (and bias) as float32
        assert.ok(Math.abs(span.weightBytes! / (linear * perWeight) - 1) < 0.02, `${span.weightBytes} bytes held for ${linear} weights`)
      })

      it('runs on the CPU engine and computes what the tfjs block forward computes', async () => {
        assert.equal(span.engine, 'cpu-kernels')
        const tfjs = await loadTfjs(ckpt, 0, ckpt.config.numLayers)
        try {
          assert.equal(tfjs.engine, 'tfjs')
          const x = hiddenStates(24, ckpt.config.hiddenSize)
          const steps = [19, 1, 1, 3]
          const a = span.newCache(64)
          const b = tfjs.newCache(64)
          const ours = await run(span, a, x, steps)
          const theirs = await run(tfjs, b, x, steps)
          const d = difference(ours, theirs)
          // The same products in another order of sums: float32 rounding, not a different result
          // (bf16, measured: 3.6e-6 of the largest output). q8_0's kernel rounds each block of
          // activations to 16 bits, where a last-bit difference moves a value by 1/65534 of its
          // block's largest (measured: 1.1e-4; with llama.cpp's 8 bits it was 1.1% RMS); a wrong
          // operation moves the output by about its whole RMS.
          assert.ok(d.max <= (c.quantize == null ? 2e-5 : 5e-4), `max |Δ| ${d.max} of the largest output`)
          assert.equal(a.length, 24)
          a.dispose(); b.dispose()
        } finally {
          tfjs.dispose()
        }
      })

      it('gives the same bits batched, split into spans, step by step or rolled back', async () => {
        const H = ckpt.config.hiddenSize
        const L = ckpt.config.numLayers
        const x = hiddenStates(12, H, 3)
        const y = hiddenStates(5, H, 4)
        const alone = await run(span, span.newCache(32), x, [12])
        const stepwise = await run(span, span.newCache(32), x, [7, 1, 4])
        assert.deepEqual(stepwise, alone, 'a prefill and its steps one by one')

        // two sessions in one batch: each gets what it gets alone
        const c1 = span.newCache(32)
        const c2 = span.newCache(32)
        await span.forward(x.subarray(0, 7 * H), 7, c1)
        const [b1, b2] = await span.forwardBatch([{ hidden: x.subarray(7 * H), tokens: 5, cache: c1 }, { hidden: y, tokens: 5, cache: c2 }])
        assert.deepEqual(b1, alone.subarray(7 * H))
        assert.deepEqual(b2, await run(span, span.newCache(32), y, [5]))

        // rolled back by 3 and stepped again
        c1.truncate(9)
        assert.deepEqual(await span.forward(x.subarray(9 * H), 3, c1), alone.subarray(9 * H))

        // blocks [0, k) then [k, L) in two spans
        const k = Math.floor(L / 2)
        const first = await Span.load(ckpt, 0, k)
        const second = await Span.load(ckpt, k, L)
        try {
          const mid = await first.forward(x, 12, first.newCache(32))
          assert.deepEqual(await second.forward(mid, 12, second.newCache(32)), alone)
          // and a cache of part of a span
          assert.deepEqual(await span.forward(mid, 12, span.newCache(32, k, L)), alone)
        } finally {
          first.dispose(); second.dispose()
        }
      })

      it('grows a session\'s cache past its first 128 positions without changing a bit', async () => {
        const H = ckpt.config.hiddenSize
        const x = hiddenStates(150, H, 5)
        const cache = span.newCache(200)
        const small = cache.bytes()
        const stepwise = await run(span, cache, x, [100, 20, 10, 1, 1, 18])
        assert.ok(cache.bytes() > small, `the cache grew (${small} → ${cache.bytes()} bytes)`)
        assert.deepEqual(stepwise, await run(span, span.newCache(200), x, [150]))
        cache.dispose()
        assert.equal(cache.bytes(), 0)
      })

      it('gives the same bits on any number of kernel threads (products split by rows, attention by heads)', async () => {
        const H = ckpt.config.hiddenSize
        const x = hiddenStates(150, H, 8)
        const before = kernelThreads()
        try {
          setKernelThreads(1)
          const one = await run(span, span.newCache(160), x, [140, 1, 9])
          for (const n of [2, 3]) {
            setKernelThreads(n)
            assert.deepEqual(await run(span, span.newCache(160), x, [140, 1, 9]), one, `${n} threads`)
          }
        } finally { setKernelThreads(before) }
      })

      it('attends against a cache in another wasm memory as against one beside its block', async () => {
        const H = ckpt.config.hiddenSize
        const L = ckpt.config.numLayers
        const x = hiddenStates(10, H, 6)
        const elsewhere = new Arena(1000)
        const store = new CpuKVStore(Array.from({ length: L }, () => elsewhere), ckpt.config.numKvHeads, ckpt.config.headDim, 32)
        assert.ok(store.regions.every(r => r.arena === elsewhere))
        const far = new KVCache(0, L, 32, undefined, store)
        assert.deepEqual(await run(span, far, x, [6, 1, 3]), await run(span, span.newCache(32), x, [6, 1, 3]))
        far.dispose()
      })
    })
  }
})
