// The CPU kernels that read q8_0, q4_K, q5_K and q6_K blocks directly (packages/runtime/src/cpu):
// their output equals the product of the dequantized weights and the quantized activations (int16
// for q8_0, llama.cpp's q8_K for the k-quants), stays close to the float32 product, and bad shapes
// are refused; q4_K, q5_K and q6_K equal their scalar definitions (reference.ts) bit for bit. bf16
// weights: the product of the widened weights and the float32 activations.
import assert from 'node:assert/strict'
import { execFileSync, spawnSync } from 'node:child_process'
import { quantMatrix, quantizeQ8_0, quantizeQ4_K, quantizeQ5_K, quantizeQ6_K, rawFloat32, QuantMatrixError, setKernelThreads, kernelThreads } from '@plexus/runtime'
import type { QuantMatrixFormat } from '@plexus/runtime'
import { quantizeActI16, quantizeActQ8_K, dequantizeActivations } from '../../src/cpu/reference.ts'
import { concatRows, ScalarQuantMatrix } from '../../src/cpu/quant-matrix.ts'
import { f32ToF16Bits, halfTable } from '../../src/dtype.ts'

/** Deterministic normal-ish values (xorshift, sum of uniforms). */
function randn (n: number, seed: number, scale = 1): Float32Array {
  let s = seed >>> 0 || 1
  const u = (): number => { s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0; return s / 4294967296 }
  const out = new Float32Array(n)
  for (let i = 0; i < n; i++) out[i] = (u() + u() + u() + u() - 2) * scale
  return out
}

const kernelThreads0 = kernelThreads()
type BlockFormat = Exclude<QuantMatrixFormat, 'bf16' | 'f16' | 'f32'>
const DTYPE = { q8_0: 'Q8_0', q4_k: 'Q4_K', q5_k: 'Q5_K', q6_k: 'Q6_K' } as const
const QUANTIZE = { q8_0: quantizeQ8_0, q4_k: quantizeQ4_K, q5_k: quantizeQ5_K, q6_k: quantizeQ6_K }
const quantize = (format: BlockFormat, w: Float32Array): Uint8Array => QUANTIZE[format](w)
const BLOCK = { q8_0: 32, q4_k: 256, q5_k: 256, q6_k: 256 }
const FORMATS = ['q8_0', 'q4_k', 'q5_k', 'q6_k'] as const
/** Formats whose kernels are defined float for float by reference.ts (bitwise equal): all but q8_0. */
const BITWISE: ReadonlySet<BlockFormat> = new Set(['q4_k', 'q5_k', 'q6_k'])

interface Case { w: Float32Array, blocks: Uint8Array, x: Float32Array, rows: number, cols: number, tokens: number }

function makeCase (format: BlockFormat, rows: number, cols: number, tokens: number, seed: number): Case {
  const w = randn(rows * cols, seed, 0.05)
  const x = randn(tokens * cols, seed + 1)
  // an outlier and a token of zeros exercise the activation scales' extremes
  x[3] = 40
  if (tokens > 1) x.fill(0, cols, 2 * cols)
  return { w, blocks: quantize(format, w), x, rows, cols, tokens }
}

/** float64 Σ_c W_deq[r][c] · x_deq[t][c], and Σ |terms| (the scale of float32 rounding errors). */
function reference (format: BlockFormat, c: Case): { y: Float64Array, mag: Float64Array } {
  const wd = rawFloat32({ dtype: DTYPE[format], bytes: c.blocks, shape: [c.rows, c.cols] })
  const xd = dequantizeActivations(format === 'q8_0' ? quantizeActI16(c.x) : quantizeActQ8_K(c.x), BLOCK[format])
  const y = new Float64Array(c.tokens * c.rows)
  const mag = new Float64Array(c.tokens * c.rows)
  for (let t = 0; t < c.tokens; t++) {
    for (let r = 0; r < c.rows; r++) {
      let s = 0; let m = 0
      for (let k = 0; k < c.cols; k++) { const p = wd[r * c.cols + k] * xd[t * c.cols + k]; s += p; m += Math.abs(p) }
      y[t * c.rows + r] = s; mag[t * c.rows + r] = m
    }
  }
  return { y, mag }
}

/** ‖a − b‖ / ‖b‖ against the plain float32 weights and activations. */
function relErrorVsF32 (c: Case, y: Float32Array): number {
  let num = 0; let den = 0
  for (let t = 0; t < c.tokens; t++) {
    for (let r = 0; r < c.rows; r++) {
      let s = 0
      for (let k = 0; k < c.cols; k++) s += c.w[r * c.cols + k] * c.x[t * c.cols + k]
      num += (y[t * c.rows + r] - s) ** 2; den += s * s
    }
  }
  return Math.sqrt(num / den)
}

// The quantization error of the whole product (weights and activations, with the outlier above),
// measured 0.0026–0.0073 for q8_0 (the weights' alone: its activations are 16-bit), 0.04–0.12 for q4_k and
// q5_k (q8_K's one scale per 256 activations, set by the outlier, dominates) and 0.02–0.064 for
// q6_k on these cases; the bounds leave ~1.6× room.
const F32_TOLERANCE = { q8_0: 0.012, q4_k: 0.2, q5_k: 0.2, q6_k: 0.1 }
const SHAPES: Record<BlockFormat, Array<[number, number]>> = {
  // rows not a multiple of 4 (the SIMD width), one block per row, many blocks per row
  q8_0: [[7, 32], [13, 96], [65, 2048]],
  q4_k: [[5, 256], [19, 512], [37, 2048]],
  q5_k: [[5, 256], [19, 512], [37, 2048]],
  q6_k: [[5, 256], [19, 512], [37, 2048]]
}

describe('CPU quantized kernels', function () {
  for (const format of FORMATS) {
    describe(format, function () {
      for (const [rows, cols] of SHAPES[format]) {
        for (const tokens of [1, 3, 33]) {
          it(`[${rows}, ${cols}] × ${tokens} tokens equals llama.cpp's arithmetic`, function () {
            const c = makeCase(format, rows, cols, tokens, rows * 1000 + cols + tokens)
            const m = quantMatrix(format, rows, cols, c.blocks)
            assert.equal(m.bytes, c.blocks.byteLength)
            const y = m.forward(c.x, tokens)
            assert.equal(y.length, tokens * rows)
            const ref = reference(format, c)
            for (let i = 0; i < y.length; i++) {
              // float32 sums of exact integer block dots: a few ulps of the terms' magnitude
              const tol = 4e-6 * ref.mag[i] + 1e-12
              assert.ok(Math.abs(y[i] - ref.y[i]) <= tol, `y[${i}] = ${y[i]}, reference ${ref.y[i]} (tolerance ${tol})`)
            }
            if (tokens > 1) for (let r = 0; r < rows; r++) assert.equal(y[rows + r], 0, 'a token of zeros gives zeros')
            if (BITWISE.has(format)) assert.deepEqual(y, new ScalarQuantMatrix(format, rows, cols, [{ format, rows, cols, blocks: c.blocks }]).forward(c.x, tokens))
            const err = relErrorVsF32(c, y)
            assert.ok(err < F32_TOLERANCE[format], `relative error ${err} vs the float32 product`)
            m.dispose()
          })
        }
      }

      it('the wasm kernels give the scalar kernels\' results', function () {
        const c = makeCase(format, 9, 1024, 5, 77)
        const m = quantMatrix(format, 9, 1024, c.blocks)
        const s = new ScalarQuantMatrix(format, 9, 1024, [{ format, rows: 9, cols: 1024, blocks: c.blocks }])
        const a = m.forward(c.x, 5); const b = s.forward(c.x, 5)
        const ref = reference(format, c)
        for (let i = 0; i < a.length; i++) assert.ok(Math.abs(a[i] - b[i]) <= 4e-6 * ref.mag[i], `${a[i]} vs ${b[i]}`)
        m.dispose()
      })

      if (format === 'q8_0') {
        it('rounds activations to 16 bits: the product is the dequantized weights times the float32 activations', function () {
          // int8 activations (llama.cpp's q8_0) round each value to within 1/254 of its block's
          // largest, 16 bits to within 1/65534: measured 3.4e-5 and 3.6e-5 here
          for (const [rows, cols, tokens] of [[13, 96, 3], [65, 2048, 5]]) {
            const c = makeCase(format, rows, cols, tokens, 4242 + cols)
            const m = quantMatrix(format, rows, cols, c.blocks)
            const y = m.forward(c.x, tokens)
            const wd = rawFloat32({ dtype: 'Q8_0', bytes: c.blocks, shape: [rows, cols] })
            let num = 0; let den = 0
            for (let t = 0; t < tokens; t++) {
              for (let r = 0; r < rows; r++) {
                let s = 0
                for (let k = 0; k < cols; k++) s += wd[r * cols + k] * c.x[t * cols + k]
                num += (y[t * rows + r] - s) ** 2; den += s * s
              }
            }
            const err = Math.sqrt(num / den)
            assert.ok(err < 1e-4, `[${rows}, ${cols}]: relative error ${err} against the dequantized weights × float32 activations`)
            m.dispose()
          }
        })
      }

      it('a batch gives bitwise the results of its tokens one at a time', function () {
        // 4-token tiles and single tokens sum the same products in the same order
        const c = makeCase(format, 70, 1024, 7, 31)
        const m = quantMatrix(format, 70, 1024, c.blocks)
        const all = m.forward(c.x, 7)
        for (let t = 0; t < 7; t++) assert.deepEqual(m.forward(c.x.subarray(t * 1024, (t + 1) * 1024), 1), all.subarray(t * 70, (t + 1) * 70), `token ${t}`)
        m.dispose()
      })

      it('concatRows stacks matrices (fused projections)', function () {
        const cols = 512
        const parts = [3, 8, 5].map((rows, i) => ({ format, rows, cols, blocks: makeCase(format, rows, cols, 1, 500 + i).blocks }))
        const fused = concatRows(parts)
        assert.equal(fused.rows, 16)
        assert.equal(fused.bytes, parts.reduce((n, p) => n + p.blocks.byteLength, 0))
        const x = randn(2 * cols, 9)
        const y = fused.forward(x, 2)
        let r0 = 0
        for (const p of parts) {
          const yp = quantMatrix(format, p.rows, cols, p.blocks).forward(x, 2)
          for (let t = 0; t < 2; t++) {
            assert.deepEqual(y.subarray(t * 16 + r0, t * 16 + r0 + p.rows), yp.subarray(t * p.rows, (t + 1) * p.rows))
          }
          r0 += p.rows
        }
      })
    })
  }

  for (const format of ['bf16', 'f16'] as const) describe(format, function () {
    /**
     * Weights rounded to the nearest bf16 (f16: with every 7th one tiny, an f16 subnormal) and
     * their float32 values.
     */
    function bf16Case (rows: number, cols: number, tokens: number, seed: number): { bits: Uint8Array, w: Float32Array, x: Float32Array } {
      const w = randn(rows * cols, seed, 0.05)
      const u = new Uint32Array(w.buffer)
      const bits = new Uint16Array(rows * cols)
      const half = halfTable()
      for (let i = 0; i < u.length; i++) {
        if (format === 'f16') {
          bits[i] = f32ToF16Bits(i % 7 === 0 ? w[i] * 1e-3 : w[i])
          w[i] = half[bits[i]]
          continue
        }
        bits[i] = (u[i] + 0x7fff + ((u[i] >>> 16) & 1)) >>> 16
        u[i] = bits[i] << 16
      }
      return { bits: new Uint8Array(bits.buffer), w, x: randn(tokens * cols, seed + 1) }
    }

    for (const [rows, cols] of [[7, 8], [13, 96], [65, 2048]]) {
      for (const tokens of [1, 3, 33]) {
        it(`[${rows}, ${cols}] × ${tokens} tokens equals the float32 product of the widened weights, and the scalar kernel bitwise`, function () {
          const c = bf16Case(rows, cols, tokens, rows * 1000 + cols + tokens)
          const m = quantMatrix(format, rows, cols, c.bits)
          assert.equal(m.bytes, 2 * rows * cols)
          const y = m.forward(c.x, tokens)
          for (let t = 0; t < tokens; t++) {
            for (let r = 0; r < rows; r++) {
              let s = 0; let mag = 0
              for (let k = 0; k < cols; k++) { const p = c.w[r * cols + k] * c.x[t * cols + k]; s += p; mag += Math.abs(p) }
              const i = t * rows + r
              assert.ok(Math.abs(y[i] - s) <= 4e-6 * mag + 1e-12, `y[${i}] = ${y[i]}, float64 reference ${s}`)
            }
          }
          assert.deepEqual(y, new ScalarQuantMatrix(format, rows, cols, [{ format, rows, cols, blocks: c.bits }]).forward(c.x, tokens))
          m.dispose()
        })
      }
    }

    it('a batch gives bitwise the results of its tokens one at a time, on any number of threads', function () {
      const c = bf16Case(301, 1024, 7, 31)
      const m = quantMatrix(format, 301, 1024, c.bits)
      setKernelThreads(1)
      const all = m.forward(c.x, 7)
      for (const n of [1, 2, 3]) {
        setKernelThreads(n)
        assert.deepEqual(m.forward(c.x, 7), all, `${n} threads`)
        for (let t = 0; t < 7; t++) assert.deepEqual(m.forward(c.x.subarray(t * 1024, (t + 1) * 1024), 1), all.subarray(t * 301, (t + 1) * 301), `token ${t}`)
      }
      setKernelThreads(kernelThreads0)
      m.dispose()
    })

    it('refuses rows that are not whole eights', function () {
      assert.throws(() => quantMatrix(format, 2, 12, new Uint8Array(48)), /row of 12 values is not whole blocks of 8/)
    })
  })

  it('splitting rows across threads gives the same results', function () {
    for (const format of FORMATS) {
      const rows = 301; const cols = 2048; const tokens = 3
      const c = makeCase(format, rows, cols, tokens, 4242)
      const m = quantMatrix(format, rows, cols, c.blocks)
      setKernelThreads(1)
      const one = m.forward(c.x, tokens)
      for (const n of [2, 3]) {
        setKernelThreads(n)
        assert.deepEqual(m.forward(c.x, tokens), one, `${format}, ${n} threads`)
        assert.deepEqual(m.forward(c.x.subarray(0, cols), 1), one.subarray(0, rows), `${format}, ${n} threads, 1 token`)
      }
      setKernelThreads(kernelThreads0)
      m.dispose()
    }
  })

  it('the plain SIMD128 build gives the relaxed-SIMD build\'s bits', function () {
    // each build computes the same integers and sums the same floats in the same order
    const script = `
      import { quantMatrix, quantizeQ8_0, quantizeQ4_K, quantizeQ5_K, quantizeQ6_K, kernelsBuild } from '@plexus/runtime'
      const x = new Float32Array(3 * 512).map((_, i) => Math.sin(i * 0.37) * (1 + i % 7))
      const w = new Float32Array(45 * 512).map((_, i) => Math.cos(i * 0.11) * 0.05)
      const out = { build: '', y: [] }
      for (const [f, q] of [['q8_0', quantizeQ8_0], ['q4_k', quantizeQ4_K], ['q5_k', quantizeQ5_K], ['q6_k', quantizeQ6_K]]) out.y.push(Array.from(quantMatrix(f, 45, 512, q(w)).forward(x, 3)))
      out.build = kernelsBuild
      process.stdout.write(JSON.stringify(out))`
    const run = (env: Record<string, string>): { build: string, y: number[][] } => JSON.parse(execFileSync(process.execPath,
      ['--input-type=module', '-e', script], { env: { ...process.env, ...env }, cwd: process.cwd(), encoding: 'utf8' }))
    const plain = run({ PLEXUS_CPU_KERNELS: 'simd128' })
    const relaxed = run({})
    assert.equal(plain.build, 'simd128')
    assert.equal(relaxed.build, 'relaxed-simd', 'this Node has relaxed SIMD (Node 24 does)')
    assert.deepEqual(plain.y, relaxed.y)
  })

  it('runs on one thread, saying so, when the kernel threads cannot start (the same bytes)', function () {
    this.timeout(120_000)
    // --import reaches the workers too; this one throws there only, so no kernel thread starts and
    // the pool's first job waits out its 30 s deadline
    const failInWorkers = "data:text/javascript,import{isMainThread}from'node:worker_threads';if(!isMainThread)throw new Error('no threads here')"
    const script = `
      import { quantizeQ4_K, quantizeQ4_KScalar, setKernelThreads } from '@plexus/runtime'
      setKernelThreads(2)
      const x = Float32Array.from({ length: 64 * 256 }, (_, i) => Math.sin(i))
      process.stdout.write(JSON.stringify({ same: Buffer.from(quantizeQ4_K(x)).equals(Buffer.from(quantizeQ4_KScalar(x))) }))`
    const r = spawnSync(process.execPath, ['--import', failInWorkers, '--input-type=module', '-e', script], { cwd: process.cwd(), encoding: 'utf8', timeout: 100_000 })
    assert.equal(r.status, 0, r.stderr)
    assert.deepEqual(JSON.parse(r.stdout), { same: true })
    assert.match(r.stderr, /plexus: the CPU kernel threads did not start within 30 s; the kernels run on one thread/)
  })

  it('refuses bad sizes with clear errors', function () {
    const q8 = quantizeQ8_0(randn(4 * 64, 1))
    assert.throws(() => quantMatrix('q8_0', 4, 48, q8), /row of 48 values is not whole blocks of 32/)
    assert.throws(() => quantMatrix('q4_k', 1, 64, q8), /row of 64 values is not whole blocks of 256/)
    assert.throws(() => quantMatrix('q6_k', 1, 64, q8), /row of 64 values is not whole blocks of 256/)
    assert.throws(() => quantMatrix('q5_k', 2, 256, q8), /expected 352 bytes of blocks, got 272/)
    assert.throws(() => quantMatrix('q8_0', 4, 64, q8.subarray(1)), /expected 272 bytes of blocks, got 271/)
    assert.throws(() => quantMatrix('q8_0', 0, 64, q8), QuantMatrixError)
    assert.throws(() => quantMatrix('q2_k' as QuantMatrixFormat, 4, 64, q8), /unknown quantized format q2_k/)
    assert.throws(() => concatRows([{ format: 'q8_0', rows: 4, cols: 64, blocks: q8 }, { format: 'q8_0', rows: 8, cols: 32, blocks: q8 }]),
      /format and cols must match/)
    const m = quantMatrix('q8_0', 4, 64, q8)
    assert.throws(() => m.forward(new Float32Array(100), 2), /input of 100 values is not 2 tokens of 64/)
    m.dispose()
    assert.throws(() => m.forward(new Float32Array(64), 1), /used after dispose/)
  })
})
