// llama.cpp's reference quantizers (Q8_0, Q4_K, Q5_K, Q6_K) re-implemented in packages/runtime/src/quant
// (and Q4_K's in C on the kernel threads, src/cpu/quantize.c): bytes equal to llama.cpp's own
// quantize_row_*_ref on the same rows, and dequantize(quantize(x)) within each format's error bound.
import assert from 'node:assert/strict'
import { quantizeQ8_0, quantizeQ4_K, quantizeQ5_K, quantizeQ6_K, dequantize, setKernelThreads, kernelThreads } from '@plexus/runtime'
import { requireLlamaCpp } from '../../../../test/support/gguf.ts'
import { llamaCppQuantizer } from '../../../../test/support/ggml-quant.ts'
import type { LlamaCppQuantizer } from '../../../../test/support/ggml-quant.ts'
import { rng } from '../../../../test/support/gguf-blocks.ts'
import { Q8_0_BLOCK_BYTES, Q4_K_BLOCK_BYTES, Q5_K_BLOCK_BYTES, Q6_K_BLOCK_BYTES, QK_K, quantizeQ4_KScalar } from '../../src/quant/quantize.ts'

const ROW = 4 * QK_K

/** Named rows of ROW values: the shapes of data that take each branch of the quantizers. */
function testRows (seed: number): Array<[string, Float32Array]> {
  const r = rng(seed)
  const gauss = (): number => Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r())
  const row = (fn: (i: number) => number): Float32Array => Float32Array.from({ length: ROW }, (_, i) => fn(i))
  const bf16 = (x: Float32Array): Float32Array => { const u = new Uint32Array(x.buffer); for (let i = 0; i < u.length; i++) u[i] &= 0xffff0000; return x }
  const rows: Array<[string, Float32Array]> = []
  for (const scale of [1e-4, 0.02, 1, 300]) rows.push([`gaussian ×${scale}`, row(() => gauss() * scale)])
  for (let k = 0; k < 6; k++) rows.push([`gaussian, bf16-rounded #${k}`, bf16(row(() => gauss() * 0.05))])
  rows.push(['uniform [0, 1) (all ≥ 0: min clamps to 0)', row(() => r())])
  rows.push(['uniform (−1, 0] (all ≤ 0)', row(() => -r())])
  rows.push(['uniform (−3, 5)', row(() => r() * 8 - 3)])
  rows.push(['zeros', row(() => 0)])
  rows.push(['negative zeros', row(() => -0)])
  rows.push(['half zeros (every other 32 and every other 256)', row(i => ((i >> 5) & 1) === 0 || ((i >> 8) & 1) === 0 ? 0 : gauss())])
  rows.push(['sparse (90% zeros)', row(() => r() < 0.9 ? 0 : gauss())])
  rows.push(['all equal 0.37', row(() => 0.37)])
  rows.push(['all equal −2.5', row(() => -2.5)])
  rows.push(['equal within each block of 32', row(i => Math.fround(((i >> 5) % 7) - 3.2))])
  rows.push(['one large outlier per 256', row(i => (i % QK_K) === 77 ? 1000 : gauss() * 0.01)])
  rows.push(['large negative outliers', row(i => (i % 97) === 5 ? -500 * r() : gauss())])
  rows.push(['one sub-block far larger than the rest', row(i => ((i >> 5) & 7) === 3 ? gauss() * 1e3 : gauss() * 1e-2)])
  rows.push(['tiny (1e-30)', row(() => gauss() * 1e-30)])
  rows.push(['subnormal', row(() => gauss() * 1e-40)])
  rows.push(['huge (f16 scale overflows)', row(() => gauss() * 1e7)])
  rows.push(['halves after scaling (ties)', row(i => (i % 32) === 0 ? 127 : (i % 64) - 31.5)])
  rows.push(['integers 0..15 (exact grid)', row(i => i % 16)])
  rows.push(['integers −8..7', row(i => (i % 16) - 8)])
  rows.push(['step per sub-block', row(i => ((i >> 5) & 7) + (i & 31) / 31)])
  return rows
}

function firstDiff (a: Uint8Array, b: Uint8Array): number {
  for (let i = 0; i < Math.max(a.length, b.length); i++) if (a[i] !== b[i]) return i
  return -1
}

describe('quantizers (llama.cpp reference algorithms)', function () {
  this.timeout(120_000)

  describe('bit for bit against llama.cpp\'s own functions (node-llama-cpp\'s libggml-base)', function () {
    let q: LlamaCppQuantizer | undefined
    before(async function () {
      await requireLlamaCpp(this)
      q = await llamaCppQuantizer()
    })
    after(async () => { await q?.dispose() })

    const cases = [
      { name: 'Q8_0', symbol: 'quantize_row_q8_0_ref', fn: quantizeQ8_0, blockValues: 32, blockBytes: Q8_0_BLOCK_BYTES },
      { name: 'Q4_K', symbol: 'quantize_row_q4_K_ref', fn: quantizeQ4_K, blockValues: QK_K, blockBytes: Q4_K_BLOCK_BYTES },
      { name: 'Q4_K (one JavaScript thread)', symbol: 'quantize_row_q4_K_ref', fn: quantizeQ4_KScalar, blockValues: QK_K, blockBytes: Q4_K_BLOCK_BYTES },
      { name: 'Q5_K', symbol: 'quantize_row_q5_K_ref', fn: quantizeQ5_K, blockValues: QK_K, blockBytes: Q5_K_BLOCK_BYTES },
      { name: 'Q6_K', symbol: 'quantize_row_q6_K_ref', fn: quantizeQ6_K, blockValues: QK_K, blockBytes: Q6_K_BLOCK_BYTES }
    ]
    for (const c of cases) {
      it(`${c.name}: ${c.symbol} on ${testRows(1).length} kinds of rows × 4 seeds`, async () => {
        for (const seed of [1, 2, 3, 4]) {
          const rows = testRows(seed)
          const x = new Float32Array(rows.length * ROW)
          rows.forEach(([, v], i) => x.set(v, i * ROW))
          const bytesPerRow = ROW / c.blockValues * c.blockBytes
          const want = await q!.quantize(c.symbol, x, rows.length * bytesPerRow)
          const got = c.fn(x)
          assert.equal(got.length, want.length)
          const at = firstDiff(got, want)
          if (at >= 0) {
            const r = Math.floor(at / bytesPerRow)
            const block = Math.floor((at % bytesPerRow) / c.blockBytes)
            assert.fail(`seed ${seed}, row "${rows[r][0]}", block ${block}, byte ${at % bytesPerRow % c.blockBytes}: got ${got[at]}, llama.cpp ${want[at]}`)
          }
        }
      })
    }
  })

  describe('Q4_K on the kernel threads', () => {
    const threads0 = kernelThreads()
    after(() => setKernelThreads(threads0))

    it('gives the one-thread JavaScript bytes on 1, 2 and 3 threads, across staging chunks (2^18 values)', () => {
      // 1.25 Mi values: five chunks, the last partial; 4885 super-blocks, not a multiple of 4 or 3
      const r = rng(77)
      const x = Float32Array.from({ length: 4885 * QK_K }, (_, i) => (r() - 0.5) * ((i % 1001) === 0 ? 40 : 1))
      const want = quantizeQ4_KScalar(x)
      for (const n of [1, 2, 3]) {
        setKernelThreads(n)
        const got = quantizeQ4_K(x)
        assert.equal(firstDiff(got, want), -1, `${n} threads`)
      }
    })

    it('refuses values that are not whole super-blocks, and gives nothing for nothing', () => {
      assert.throws(() => quantizeQ4_K(new Float32Array(300)), /q4_K: 300 values are not whole blocks of 256/)
      assert.equal(quantizeQ4_K(new Float32Array(0)).length, 0)
    })
  })

  describe('dequantize(quantize(x)) error', () => {
    const finiteRows = testRows(9).filter(([name]) => !name.startsWith('huge'))
    it('Q8_0: each value within half a step (amax/254) plus the f16 rounding of the scale', () => {
      for (const [name, x] of finiteRows) {
        const y = dequantize('Q8_0', quantizeQ8_0(x), x.length)
        for (let b = 0; b < x.length; b += 32) {
          let amax = 0
          for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[b + j]))
          // d's f16 rounding (relative 2^-11, or 2^-24 absolute below f16's normal range) times |q| ≤ 127
          const bound = amax / 254 * (1 + 1e-6) + 127 * Math.max(amax / 127 * 2 ** -11, 2 ** -25)
          for (let j = 0; j < 32; j++) {
            const err = Math.abs(y[b + j] - x[b + j])
            if (!(err <= bound)) assert.fail(`${name}: value ${b + j}: ${x[b + j]} → ${y[b + j]} (error ${err} > ${bound})`)
          }
        }
      }
    })

    it('Q8_0: zeros come back exactly, and values that are 127 × an f16 as well', () => {
      for (const x of [new Float32Array(64), Float32Array.from({ length: 64 }, (_, i) => (i % 3 - 1) * 127 * 0.125)]) {
        assert.deepEqual([...dequantize('Q8_0', quantizeQ8_0(x), 64)], [...x])
      }
    })

    it('Q4_K: values within one 4-bit step of their super-block, and RMS error ≈ 4-bit on gaussian rows', () => {
      for (const [name, x] of finiteRows) {
        const y = dequantize('Q4_K', quantizeQ4_K(x), x.length)
        for (let b = 0; b < x.length; b += QK_K) {
          let lo = 0; let hi = 0
          for (let j = 0; j < QK_K; j++) { lo = Math.min(lo, x[b + j]); hi = Math.max(hi, x[b + j]) }
          // the widest sub-block's step is ≤ (hi − lo)/15; scales and mins are 6-bit (and f16) approximations.
          // Below f16's normal range (d = max scale / 63 < 2^-14) the scales flush towards zero: there
          // the values only must not grow.
          const bound = (hi - lo) / 15 / 63 >= 2 ** -14 ? (hi - lo) / 15 * 1.1 : Math.max(hi, -lo)
          for (let j = 0; j < QK_K; j++) {
            const err = Math.abs(y[b + j] - x[b + j])
            if (!(err <= bound)) assert.fail(`${name}: value ${b + j}: ${x[b + j]} → ${y[b + j]} (error ${err} > ${bound})`)
          }
        }
        if (name.startsWith('gaussian ×')) {
          let se = 0; let sx = 0
          for (let i = 0; i < x.length; i++) { se += (y[i] - x[i]) ** 2; sx += x[i] ** 2 }
          const rel = Math.sqrt(se / sx)
          assert.ok(rel < 0.12, `${name}: relative RMS error ${rel.toFixed(4)} (4 bits per value should give ≈ 0.09)`)
        }
      }
    })

    it('Q4_K: zeros come back exactly', () => {
      const x = new Float32Array(QK_K)
      assert.deepEqual([...dequantize('Q4_K', quantizeQ4_K(x), QK_K)], [...x])
    })

    for (const [name, fn, bits, bound] of [['Q5_K', quantizeQ5_K, 5, 0.06], ['Q6_K', quantizeQ6_K, 6, 0.03]] as const) {
      it(`${name}: RMS error ≈ ${bits}-bit on gaussian rows, zeros come back as zeros`, () => {
        // not ×1e-4: there q6_K's one f16 scale per 256 values (≈ max/4096) is an f16 subnormal
        for (const [rowName, x] of finiteRows.filter(([n]) => n.startsWith('gaussian ×') && n !== 'gaussian ×0.0001')) {
          const y = dequantize(name, fn(x), x.length)
          let se = 0; let sx = 0
          for (let i = 0; i < x.length; i++) { se += (y[i] - x[i]) ** 2; sx += x[i] ** 2 }
          const rel = Math.sqrt(se / sx)
          // measured 0.036 (Q5_K) and 0.017–0.018 (Q6_K): each bit halves the error
          if (process.env.LOG_RMS != null) console.log(`RMS ${name} ${rowName} ${rel.toFixed(4)}`)
          assert.ok(rel < bound, `${rowName}: relative RMS error ${rel.toFixed(4)}`)
        }
        // (as −0 for Q6_K: a zero block stores q = 0, read as (0 − 32) · 0)
        assert.ok(dequantize(name, fn(new Float32Array(QK_K)), QK_K).every(v => v === 0))
      })
    }

    it('refuses rows that are not whole blocks', () => {
      assert.throws(() => quantizeQ8_0(new Float32Array(33)), /q8_0: 33 values are not whole blocks of 32/)
      assert.throws(() => quantizeQ4_K(new Float32Array(255)), /q4_K: 255 values are not whole blocks of 256/)
      assert.throws(() => quantizeQ5_K(new Float32Array(255)), /q5_K: 255 values are not whole blocks of 256/)
      assert.throws(() => quantizeQ6_K(new Float32Array(255)), /q6_K: 255 values are not whole blocks of 256/)
    })
  })
})
