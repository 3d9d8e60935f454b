// Every WGSL kernel of the block forward against a float64 reference, on odd shapes.
import assert from 'node:assert/strict'
import { toFloat32, f32ToF16, f32ToBf16 } from '@plexus/runtime'
import type { DType } from '@plexus/runtime'
import { rmsNormKernel, gemmKernel, kvAppendKernel, swigluKernel, GEMM_MIN_ROWS } from '../../src/webgpu/kernels.ts'
import { attentionKernel } from '../../src/webgpu/attention.ts'
import type { LinearShape } from '../../src/webgpu/kernels.ts'
import { matvecPlan, matvecGroups } from '../../src/webgpu/matvec.ts'
import type { GpuKernels } from '../../src/webgpu/kernel-choice.ts'
import type { WeightFormat } from '../../src/webgpu/kernels.ts'
import { gpuFormat, gpuBytes } from '../../src/webgpu/formats.ts'
import { testGpu, skipWebgpu, runKernel, randoms, relErr } from '../support/gpu.ts'
import { blocksOf, rng } from '../../../../test/support/gguf-blocks.ts'
import type { GpuContext } from '../../src/webgpu/device.ts'

describe('WebGPU kernels against float64 references', function () {
  let gpu: GpuContext
  before(async function () {
    if (skipWebgpu) { console.warn('    WebGPU kernel tests SKIPPED: PLEXUS_SKIP_WEBGPU=1'); this.skip() }
    gpu = await testGpu()
  })

  it('rmsNorm on rows wider than a workgroup and narrower', async () => {
    for (const H of [36, 300]) {
      const rows = 3
      const x = randoms(rows * H, H)
      const w = randoms(H, 7)
      const [out] = await runKernel(gpu, rmsNormKernel(H, 1e-5), [{ data: x, binding: 'read' }, { data: w, binding: 'read' }, { size: rows * H, binding: 'rw' }, 'step'], [[rows]], [rows])
      const ref = new Float64Array(rows * H)
      for (let r = 0; r < rows; r++) {
        let ss = 0
        for (let i = 0; i < H; i++) ss += x[r * H + i] ** 2
        const s = 1 / Math.sqrt(ss / H + 1e-5)
        for (let i = 0; i < H; i++) ref[r * H + i] = x[r * H + i] * s * w[i]
      }
      assert.ok(relErr(out, ref) < 1e-5, `H=${H}: ${relErr(out, ref)}`)
    }
  })

  const stored = (w: Float32Array, format: WeightFormat): { data: Uint8Array, dtype: DType } => {
    if (format === 'f32') return { data: new Uint8Array(w.buffer), dtype: 'F32' }
    const bits = format === 'f16' ? f32ToF16(w) : f32ToBf16(w)
    return { data: new Uint8Array(bits.buffer), dtype: format === 'f16' ? 'F16' : 'BF16' }
  }

  // The kernel and grid for `rows` rows: the GEMM, or the decode kernel reducing through subgroup
  // shuffles (where the device has them) or workgroup memory.
  const linearKernel = (shape: LinearShape, rows: number, kernels: GpuKernels): { code: string, groups: [number, number] } => {
    if (rows >= GEMM_MIN_ROWS) return { code: gemmKernel(shape), groups: [Math.ceil(shape.n / 64), Math.ceil(rows / 64)] }
    const plan = matvecPlan(shape, kernels, gpu.subgroups)
    return { code: plan.code, groups: matvecGroups(shape.n, plan.rowsPerGroup) }
  }
  // every kernel set for matrix-vector rows (fast: subgroup sums where the device has them)
  const cases = (rowsList: number[]): Array<[number, GpuKernels]> =>
    rowsList.flatMap(rows => rows >= GEMM_MIN_ROWS ? [[rows, 'fast']] : [[rows, 'fast'], [rows, 'fast-shared'], [rows, 'legacy']])
  const what = (rows: number, kernels: string): string => rows >= GEMM_MIN_ROWS ? 'GEMM' : `matvec, ${kernels} kernels`

  // K = 100: rows that are not whole chunks (the one-output-per-workgroup kernel); 104: 8-weight
  // chunks; 112: 16-weight chunks of 16-bit weights.
  for (const format of ['f32', 'f16', 'bf16'] as const) {
    for (const K of [100, 104, 112]) for (const [rows, reduce] of cases([1, 3, 9, GEMM_MIN_ROWS + 7])) {
      // the GEMM once (K 100); K 100 has no chunked kernel, so its matvec is the legacy one
      if (rows >= GEMM_MIN_ROWS ? K !== 100 : (K === 100 && reduce !== 'legacy')) continue
      it(`linear ${format}, K ${K}, ${rows} rows, with bias and residual (${what(rows, reduce)})`, async () => {
        const N = 37
        const x = randoms(rows * K, 1)
        const wf = randoms(N * K, 2)
        const { data, dtype } = stored(wf, format)
        const wq = toFloat32(data, dtype) // the weights as the kernel sees them
        const bias = randoms(N, 3)
        const yStride = N + 5
        const y0 = randoms(rows * yStride, 4)
        const shape = { format, k: K, n: N, n0: 2, yStride, bias: true, accumulate: true }
        const args = [{ data: x, binding: 'read' as const }, { data, binding: 'read' as const }, { data: y0, binding: 'rw' as const }, 'step' as const, { data: bias, binding: 'read' as const }]
        const { code, groups } = linearKernel(shape, rows, reduce)
        const [y] = await runKernel(gpu, code, args, [[rows]], groups)
        const ref = Float64Array.from(y0)
        for (let r = 0; r < rows; r++) {
          for (let n = 0; n < N; n++) {
            let s = bias[n]
            for (let k = 0; k < K; k++) s += x[r * K + k] * wq[n * K + k]
            ref[r * yStride + 2 + n] += s
          }
        }
        assert.ok(relErr(y, ref) < 1e-5, `${relErr(y, ref)}`)
      })
    }
  }

  // Block formats: random ggml blocks (valid scales), laid out for the GPU, against their exact dequantization.
  for (const [type, K] of [['Q8_0', 96], ['Q4_K', 512]] as const) {
    for (const [rows, reduce] of cases([1, 9, GEMM_MIN_ROWS + 7])) {
      it(`linear ${type}, ${rows} rows (${what(rows, reduce)})`, async () => {
        const N = 37
        const blockElems = type === 'Q8_0' ? 32 : 256
        const { bytes, want } = blocksOf(type, N * K / blockElems, rng(21))
        const format = gpuFormat(type)
        const data = gpuBytes(format, { dtype: type, shape: [N, K], bytes })
        const x = randoms(rows * K, 22)
        const shape = { format, k: K, n: N, n0: 0, yStride: N, bias: false, accumulate: false }
        const args = [{ data: x, binding: 'read' as const }, { data, binding: 'read' as const }, { size: rows * N, binding: 'rw' as const }, 'step' as const]
        const { code, groups } = linearKernel(shape, rows, reduce)
        const [y] = await runKernel(gpu, code, args, [[rows]], groups)
        const ref = new Float64Array(rows * N)
        for (let r = 0; r < rows; r++) {
          for (let n = 0; n < N; n++) {
            let s = 0
            for (let k = 0; k < K; k++) s += x[r * K + k] * want[n * K + k]
            ref[r * N + n] = s
          }
        }
        assert.ok(relErr(y, ref) < 1e-5, `${relErr(y, ref)}`)
      })
    }
  }

  for (const [K, reduce] of [[60, 'legacy'], [64, 'legacy'], [64, 'fast-shared'], [64, 'fast']] as const) {
    it(`matvec gives each row bitwise the same result alone or in a batch (K ${K}, ${reduce} kernels)`, async () => {
      const N = 10
      const w = randoms(N * K, 9)
      const x = randoms(5 * K, 10)
      const shape = { format: 'f32' as const, k: K, n: N, n0: 0, yStride: N, bias: false, accumulate: false }
      const { code, groups } = linearKernel(shape, 1, reduce)
      const run = async (xs: Float32Array, rows: number): Promise<Float32Array> =>
        (await runKernel(gpu, code, [{ data: xs, binding: 'read' }, { data: w, binding: 'read' }, { size: rows * N, binding: 'rw' }, 'step'], [[rows]], groups))[0]
      const all = await run(x, 5)
      for (let r = 0; r < 5; r++) assert.deepEqual(Array.from(all.subarray(r * N, (r + 1) * N)), Array.from((await run(x.slice(r * K, (r + 1) * K), 1)).subarray(0, N)))
    })
  }

  // Reference attention: rotate q and k (rotate-half, HF), causal softmax over positions 0..pos.
  // cap 600: keys past the kernel's first chunk of 256 (the running max and sum carry over)
  for (const [heads, kvHeads, D, kv, cap] of [[4, 4, 64, 'f32', 80], [8, 2, 128, 'f32', 80], [8, 1, 64, 'f32', 80], [8, 2, 128, 'f16', 80], [6, 3, 64, 'f16', 80], [4, 2, 80, 'f32', 80], [8, 2, 128, 'f32', 600], [4, 1, 64, 'f16', 600]] as const) {
    it(`kv append + attention: ${heads}/${kvHeads} heads, head_dim ${D}, ${kv} cache, ${cap - 10} keys before, past a rolled-back cache`, async () => {
      const shape = { numHeads: heads, numKvHeads: kvHeads, headDim: D, kv }
      const QD = heads * D; const KVD = kvHeads * D; const QKV = QD + 2 * KVD
      const pos0 = cap - 10; const T = 3; const rows = T + 2; const row0 = 1
      const qkv = randoms(rows * QKV, 11)
      // cache: positions < pos0 hold keys/values already; positions ≥ pos0 hold garbage from a rolled-back draft
      const cacheF32 = randoms(2 * cap * KVD, 12)
      const cache = kv === 'f16' ? new Uint32Array(f32ToF16(cacheF32).buffer) : cacheF32
      const asF32 = (c: Float32Array): Float32Array => kv === 'f16' ? toFloat32(new Uint8Array(c.buffer, 0, 2 * cap * KVD * 2), 'F16') : c
      const rot = new Float32Array(rows * 2 * D)
      const angle = (p: number, i: number): number => p / Math.pow(10000, (2 * (i % (D / 2))) / D)
      for (let t = 0; t < T; t++) {
        for (let i = 0; i < D; i++) {
          rot[(row0 + t) * 2 * D + i] = Math.cos(angle(pos0 + t, i))
          rot[(row0 + t) * 2 * D + D + i] = (i < D / 2 ? -1 : 1) * Math.sin(angle(pos0 + t, i))
        }
      }
      const slot = [rows, row0, T, pos0, cap]
      const [cacheRaw] = await runKernel(gpu, kvAppendKernel(shape), [{ data: qkv, binding: 'read' }, { data: rot, binding: 'read' }, { data: cache, binding: 'rw' }, 'step'], [[rows], slot], [Math.ceil(T * kvHeads * D / 4 / 64)], 1)
      const cacheOut = asF32(cacheRaw)
      const rotate = (v: ArrayLike<number>, o: number, t: number): number[] => Array.from({ length: D }, (_, i) => {
        const j = i < D / 2 ? i + D / 2 : i - D / 2
        return v[o + i] * rot[(row0 + t) * 2 * D + i] + v[o + j] * rot[(row0 + t) * 2 * D + D + i]
      })
      const refCache = Float64Array.from(asF32(kv === 'f16' ? new Float32Array(cache.buffer) : cacheF32))
      for (let t = 0; t < T; t++) {
        for (let h = 0; h < kvHeads; h++) {
          const src = (row0 + t) * QKV + QD + h * D
          const k = rotate(qkv, src, t)
          for (let i = 0; i < D; i++) {
            refCache[(pos0 + t) * KVD + h * D + i] = k[i]
            refCache[cap * KVD + (pos0 + t) * KVD + h * D + i] = qkv[src + KVD + i]
          }
        }
      }
      assert.ok(relErr(cacheOut, refCache) < (kv === 'f16' ? 1e-3 : 1e-6), `append: ${relErr(cacheOut, refCache)}`)
      // attention reads the cache as the GPU wrote it (f16: rounded); the reference reads the same values
      for (let i = 0; i < refCache.length; i++) refCache[i] = cacheOut[i]

      const attention = new Map<boolean, Float32Array>()
      for (const legacy of [false, true]) {
        const [att] = await runKernel(gpu, attentionKernel(shape, legacy), [{ data: qkv, binding: 'read' }, { data: rot, binding: 'read' }, { data: cacheRaw, binding: 'read' }, { size: rows * QD, binding: 'rw' }, 'step'], [[rows], slot], [heads, T], 1)
        attention.set(legacy, att)
      }
      const ref = new Float64Array(rows * QD)
      for (let t = 0; t < T; t++) {
        for (let h = 0; h < heads; h++) {
          const q = rotate(qkv, (row0 + t) * QKV + h * D, t)
          const kvh = Math.floor(h / (heads / kvHeads))
          const keys = pos0 + t + 1
          const s = Array.from({ length: keys }, (_, j) => {
            let d = 0
            for (let i = 0; i < D; i++) d += q[i] * refCache[j * KVD + kvh * D + i]
            return d / Math.sqrt(D)
          })
          const m = Math.max(...s)
          const e = s.map(v => Math.exp(v - m))
          const z = e.reduce((a, b) => a + b, 0)
          for (let i = 0; i < D; i++) {
            let o = 0
            for (let j = 0; j < keys; j++) o += e[j] / z * refCache[cap * KVD + j * KVD + kvh * D + i]
            ref[(row0 + t) * QD + h * D + i] = o
          }
        }
      }
      for (const [legacy, att] of attention) {
        const e = relErr(att.subarray(row0 * QD, (row0 + T) * QD), ref.subarray(row0 * QD, (row0 + T) * QD))
        assert.ok(e < 1e-5, `${legacy ? 'legacy' : 'fast'} kernel: ${e}`)
      }
    })
  }

  it('swiglu', async () => {
    const F = 300; const rows = 3
    const gu = randoms(rows * 2 * F, 13).map(v => v * 6)
    const [act] = await runKernel(gpu, swigluKernel(F), [{ data: gu, binding: 'read' }, { size: rows * F, binding: 'rw' }, 'step'], [[rows]], [Math.ceil(rows * F / 256)])
    const ref = new Float64Array(rows * F)
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < F; c++) {
        const g = gu[r * 2 * F + c]
        ref[r * F + c] = g / (1 + Math.exp(-g)) * gu[r * 2 * F + F + c]
      }
    }
    assert.ok(relErr(act, ref) < 1e-5)
  })
})
