// Every WGSL kernel of the block forward against a float64 reference, on odd shapes.
import assert from 'node:assert/strict'
import { toFloat32, f32ToF16, f32ToBf16 } from '@plexus/runtime'
import type { DType } from '@plexus/runtime'
import { rmsNormKernel, gemmKernel, swigluKernel, GEMM_MIN_ROWS } from '../../src/webgpu/kernels.ts'
import type { LinearShape } from '../../src/webgpu/kernels.ts'
import { matvecPlan, matvecGroups } from '../../src/webgpu/matvec.ts'
import { GpuMatvecLayer } from '../../src/webgpu/matvec-layer.ts'
import type { GpuKernels } from '../../src/webgpu/kernel-choice.ts'
import type { WeightFormat } from '../../src/webgpu/kernels.ts'
import { gpuFormat, gpuBytes, gpuChunk, rowBytes } from '../../src/webgpu/formats.ts'
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

  // Block formats: random ggml blocks (valid scales), laid out for the GPU, against their exact
  // dequantization. K 1056: 33 q8_0 blocks a row, one more than the fast kernel's 32 lanes and 264
  // vec4s for the legacy kernel's 64 threads. The rows go in two chunks of their own layout (q8_0:
  // the scales after each chunk's int8, at an offset set by its row count; odd block counts pad).
  for (const [type, K] of [['Q8_0', 1056], ['Q4_K', 512]] as const) {
    for (const [rows, reduce] of cases([1, 9, GEMM_MIN_ROWS + 7])) {
      it(`linear ${type}, ${rows} rows, in two chunks (${what(rows, reduce)})`, async function () {
        // lavapipe compiles each chunk's fast q8_0 kernel in ~25 s on an idle 2-core machine
        this.timeout(300_000)
        const N = 37
        const blockElems = type === 'Q8_0' ? 32 : 256
        const { bytes, want } = blocksOf(type, N * K / blockElems, rng(21))
        const format = gpuFormat(type)
        const encoded = gpuBytes(format, { dtype: type, shape: [N, K], bytes })
        const x = randoms(rows * K, 22)
        const y = new Float64Array(rows * N)
        for (const [n0, n1] of [[0, 21], [21, N]]) {
          const data = gpuChunk(format, K, encoded.subarray(n0 * rowBytes(format, K), n1 * rowBytes(format, K)))
          const shape = { format, k: K, n: n1 - n0, n0, yStride: N, bias: false, accumulate: false }
          const args = [{ data: x, binding: 'read' as const }, { data, binding: 'read' as const }, { size: rows * N, binding: 'rw' as const }, 'step' as const]
          const { code, groups } = linearKernel(shape, rows, reduce)
          // each chunk writes only its own columns of y (the rest stay zero)
          const [part] = await runKernel(gpu, code, args, [[rows]], groups)
          for (let i = 0; i < y.length; i++) y[i] += part[i]
        }
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

  // The decode kernels' fusions: the RMSNorm of the input rows (with a bias, whose binding comes
  // first), and gate/up + SwiGLU (19 outputs, not a whole number of workgroups; the gate rows then
  // the up rows of one buffer), each alone and both. K 100 runs the legacy kernel only.
  const rms = (x: Float32Array, K: number, g: Float32Array): Float64Array => {
    const h = new Float64Array(x.length)
    for (let r = 0; r < x.length / K; r++) {
      let ss = 0
      for (let k = 0; k < K; k++) ss += x[r * K + k] ** 2
      for (let k = 0; k < K; k++) h[r * K + k] = x[r * K + k] / Math.sqrt(ss / K + 1e-5) * g[k]
    }
    return h
  }
  const checkFused = async (format: WeightFormat, K: number, rows: number, reduce: GpuKernels, gated: boolean, norm: boolean): Promise<void> => {
    const F = 19
    const N = gated ? 2 * F : F
    const x = randoms(rows * K, 31).map(v => v * 4)
    const g = randoms(K, 33)
    const bias = randoms(N, 34)
    const { data, dtype } = stored(randoms(N * K, 32).map(v => v * 3), format)
    const wq = toFloat32(data, dtype)
    const shape = { format, k: K, n: N, n0: 0, yStride: F, bias: !gated, accumulate: false, gated, norm: norm ? 1e-5 : undefined }
    const plan = matvecPlan(shape, reduce, gpu.subgroups)
    const args = [{ data: x, binding: 'read' as const }, { data, binding: 'read' as const }, { size: rows * F, binding: 'rw' as const }, 'step' as const, ...(gated ? [] : [{ data: bias, binding: 'read' as const }]), ...(norm ? [{ data: g, binding: 'read' as const }] : [])]
    const [y] = await runKernel(gpu, plan.code, args, [[rows]], matvecGroups(F, plan.rowsPerGroup))
    const h = norm ? rms(x, K, g) : x
    const dot = (r: number, n: number): number => { let s = 0; for (let k = 0; k < K; k++) s += h[r * K + k] * wq[n * K + k]; return s }
    const ref = new Float64Array(rows * F)
    for (let r = 0; r < rows; r++) {
      for (let i = 0; i < F; i++) {
        const a = dot(r, i)
        ref[r * F + i] = gated ? a / (1 + Math.exp(-a)) * dot(r, F + i) : a + bias[i]
      }
    }
    assert.ok(relErr(y, ref) < 1e-5, `${relErr(y, ref)}`)
  }
  const fusion = (gated: boolean, norm: boolean): string => [norm && 'norm', gated ? 'gate/up + SwiGLU' : 'linear with bias'].filter(Boolean).join(' + ')
  for (const [format, K] of [['f16', 112], ['f32', 100]] as const) {
    for (const [rows, reduce] of cases([1, 9])) {
      if (K === 100 && reduce !== 'legacy') continue
      for (const [gated, norm] of [[false, true], [true, false], [true, true]]) {
        it(`${fusion(gated, norm)}, ${format}, K ${K}, ${rows} rows (${what(rows, reduce)})`, async () => {
          await checkFused(format, K, rows, reduce, gated, norm)
        })
      }
    }
  }

  // Other shapes of the fast kernel (PLEXUS_GPU_MATVEC_SHAPE: lanes × slots × chunks a lane loads
  // at once × weight rows a slot): two and four rows a slot (gate and up rows then meet in one
  // lane), 8 lanes (within lavapipe's subgroups: the shuffle butterfly runs here too). K 112 (7
  // chunks, fewer than the lanes) with the norm and gate/up + SwiGLU; K 128 f32 plain, against
  // float64 and alone = in a batch. Lavapipe compiles these kernels slowly (~30 s each): two each.
  for (const shape of ['32x8x1x2', '8x4x2x4']) {
    it(`matvec shaped ${shape}: norm + gate/up + SwiGLU on 1 and 9 rows; a plain projection, batched = alone`, async () => {
      const saved = process.env.PLEXUS_GPU_MATVEC_SHAPE
      process.env.PLEXUS_GPU_MATVEC_SHAPE = shape
      try {
        for (const rows of [1, 9]) await checkFused('f16', 112, rows, 'fast', true, true)
        const N = 13; const K = 128
        const w = randoms(N * K, 9)
        const x = randoms(5 * K, 10)
        const { code, groups } = linearKernel({ format: 'f32', k: K, n: N, n0: 0, yStride: N, bias: false, accumulate: false }, 1, 'fast')
        const run = async (xs: Float32Array, rows: number): Promise<Float32Array> =>
          (await runKernel(gpu, code, [{ data: xs, binding: 'read' }, { data: w, binding: 'read' }, { size: rows * N, binding: 'rw' }, 'step'], [[rows]], groups))[0]
        const all = await run(x, 5)
        const ref = new Float64Array(5 * N)
        for (let r = 0; r < 5; r++) for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) ref[r * N + n] += x[r * K + k] * w[n * K + k]
        assert.ok(relErr(all, ref) < 1e-5, `${relErr(all, ref)}`)
        for (let r = 0; r < 5; r++) assert.deepEqual(Array.from(all.subarray(r * N, (r + 1) * N)), Array.from((await run(x.slice(r * K, (r + 1) * K), 1)).subarray(0, N)))
      } finally {
        if (saved == null) delete process.env.PLEXUS_GPU_MATVEC_SHAPE; else process.env.PLEXUS_GPU_MATVEC_SHAPE = saved
      }
    })
  }

  it('GpuMatvecLayer (bench:matvec) runs the kernel it is told to over any of its weight copies, and times it', async () => {
    const N = 24; const K = 64; const rows = 3
    const w = randoms(N * K, 41)
    const x = randoms(rows * K, 42)
    const layer = new GpuMatvecLayer(gpu, { weight: { dtype: 'F32', shape: [N, K], bytes: new Uint8Array(w.buffer) }, copies: 3, maxRows: 4 })
    try {
      const ref = new Float64Array(rows * N)
      for (let r = 0; r < rows; r++) for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) ref[r * N + n] += x[r * K + k] * w[n * K + k]
      for (const variant of ['legacy', '16x2x1x2']) {
        layer.use(variant)
        assert.ok(relErr(await layer.run(x, rows), ref) < 1e-5, variant)
        assert.ok(await layer.time(rows, 5) > 0)
        // the timed dispatches wrote the same outputs from every copy
        assert.ok(relErr(await layer.run(x, rows), ref) < 1e-5, variant)
      }
      assert.equal(layer.bytes, N * K * 4)
      assert.throws(() => layer.use('3x8'), /PLEXUS_GPU_MATVEC_SHAPE/)
    } finally { layer.destroy() }
  })

  it('PLEXUS_GPU_MATVEC_SHAPE that the kernel cannot take is refused, naming the variable', () => {
    const shape = { format: 'f16' as const, k: 112, n: 8, n0: 0, yStride: 8, bias: false, accumulate: false }
    const saved = process.env.PLEXUS_GPU_MATVEC_SHAPE
    try {
      for (const bad of ['32', '3x8', '32x8x3', '32x3x1x1', '32x6x1x1', '128x4', '32x8x1x8', '32x1x1x1']) {
        process.env.PLEXUS_GPU_MATVEC_SHAPE = bad
        assert.throws(() => matvecPlan(shape, 'fast', false), /PLEXUS_GPU_MATVEC_SHAPE/, bad)
      }
    } finally {
      if (saved == null) delete process.env.PLEXUS_GPU_MATVEC_SHAPE; else process.env.PLEXUS_GPU_MATVEC_SHAPE = saved
    }
  })

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
