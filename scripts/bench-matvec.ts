/// <reference types="@webgpu/types" />
// `npm run bench:matvec`: the decode projections alone, one kernel at a time, for every shape of
// the matrix-vector kernel (PLEXUS_GPU_MATVEC_SHAPE) and the first kernels: GB/s of weights each
// streams, and its share of what a plain streaming kernel reads on the same device. The layers are
// a model's (q/k/v with the norm, o, gate/up with the norm and SwiGLU, down, the LM head) in f16
// and q8_0, for 1 and 8 rows; each weight is cycled through enough copies that the GPU's L2 cache
// holds none of them between two reads, as in a real step. Every kernel is first checked against
// a float64 product of the same weights, so a fast wrong kernel cannot win. Table to stderr, one
// JSON line to stdout.
import { parseArgs } from 'node:util'
import { initBackend, activeGpu, GpuMatvecLayer, f32ToF16, quantizeQ8_0, dequantize } from '@plexus/runtime'
import { gpuReadBandwidth } from './lib/bandwidth.ts'
import { SHAPES } from './lib/model-maker.ts'

const HELP = `usage: npm run bench:matvec -- [options]
  --shapes LIST     model shapes whose layers to run (default tinyllama,llama3-8b; "small" for a quick check)
  --formats LIST    f16,q8_0 (default both)
  --rows LIST       batch rows (default 1,8)
  --variants LIST   kernel shapes: "default", "legacy" or LxS[xU[xM]] (default default,32x8x2,32x8x1x2,32x4x1x4,64x4,16x16,legacy)
  --ms N            GPU time to spend per measurement (default 30)
  --software        run on a software adapter (lavapipe: for checking the script, not for figures)`

interface Layer { name: string, k: number, n: number, gated?: boolean, norm?: boolean }

function layersOf (shape: string): Layer[] {
  const s = (SHAPES as Record<string, { hiddenSize: number, numHeads: number, numKvHeads: number, intermediateSize: number, vocabSize: number }>)[shape]
  if (s == null) throw new Error(`unknown shape ${shape} (known: ${Object.keys(SHAPES).join(', ')})`)
  const H = s.hiddenSize
  const d = H / s.numHeads
  return [
    { name: 'norm + q/k/v', k: H, n: (s.numHeads + 2 * s.numKvHeads) * d, norm: true },
    { name: 'o', k: s.numHeads * d, n: H },
    { name: 'norm + gate/up + SwiGLU', k: H, n: 2 * s.intermediateSize, gated: true, norm: true },
    { name: 'down', k: s.intermediateSize, n: H },
    { name: 'LM head', k: H, n: Math.min(s.vocabSize, 32000), norm: true }
  ]
}

/** A seeded uniform in [-1, 1). */
function randoms (n: number, seed: number): Float32Array {
  let x = seed >>> 0
  const out = new Float32Array(n)
  for (let i = 0; i < n; i++) { x = (Math.imul(x, 1664525) + 1013904223) >>> 0; out[i] = x / 2 ** 31 - 1 }
  return out
}

/** `[n, k]` weights as a checkpoint stores them, and the values a kernel must use for them. */
function weights (format: 'f16' | 'q8_0', n: number, k: number, seed: number): { bytes: Uint8Array, exact: Float32Array } {
  const w = randoms(n * k, seed).map(v => v * 0.05)
  const bytes = format === 'f16' ? new Uint8Array(f32ToF16(w).buffer) : quantizeQ8_0(w)
  return { bytes, exact: dequantize(format === 'f16' ? 'F16' : 'Q8_0', bytes, w.length) }
}

/** The float64 product a kernel is checked against: y = (norm?)x · Wᵀ, or silu(gate)·up. */
function reference (layer: Layer, exact: Float32Array, x: Float32Array, g: Float32Array, rows: number): Float64Array {
  const { k, n } = layer
  const outs = layer.gated === true ? n / 2 : n
  const y = new Float64Array(rows * outs)
  for (let r = 0; r < rows; r++) {
    let scale = 1
    if (layer.norm === true) {
      let ss = 0
      for (let i = 0; i < k; i++) ss += x[r * k + i] ** 2
      scale = 1 / Math.sqrt(ss / k + 1e-5)
    }
    const dot = (row: number): number => {
      let s = 0
      for (let i = 0; i < k; i++) s += x[r * k + i] * (layer.norm === true ? scale * g[i] : 1) * exact[row * k + i]
      return s
    }
    for (let o = 0; o < outs; o++) {
      if (layer.gated === true) { const a = dot(o); y[r * outs + o] = a / (1 + Math.exp(-a)) * dot(o + outs) } else y[r * outs + o] = dot(o)
    }
  }
  return y
}

async function main (): Promise<void> {
  const { values: a } = parseArgs({
    options: {
      shapes: { type: 'string', default: 'tinyllama,llama3-8b' },
      formats: { type: 'string', default: 'f16,q8_0' },
      rows: { type: 'string', default: '1,8' },
      variants: { type: 'string', default: 'default,32x8x2,32x8x1x2,32x4x1x4,64x4,16x16,legacy' },
      ms: { type: 'string', default: '30' },
      software: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false }
    }
  })
  if (a.help) { console.error(HELP); return }
  const list = (s: string): string[] => s.split(',').map(v => v.trim()).filter(v => v !== '')
  const formats = list(a.formats) as Array<'f16' | 'q8_0'>
  for (const f of formats) if (f !== 'f16' && f !== 'q8_0') throw new Error(`--formats: f16 or q8_0 (got ${f})`)
  const rowsList = list(a.rows).map(Number)
  const variants = list(a.variants)
  const budgetMs = Number(a.ms)
  await initBackend('webgpu')
  const gpu = activeGpu()!
  if (gpu.software && !a.software) throw new Error(`${gpu.adapterInfo.description} is a software adapter: its figures say nothing about a GPU (--software to run anyway)`)
  const { device } = gpu
  const log = (s: string): void => { process.stderr.write(s + '\n') }
  log(`device: ${gpu.adapterInfo.vendor} ${gpu.adapterInfo.device || gpu.adapterInfo.description}${gpu.software ? ' (software)' : ''}; subgroups ${gpu.subgroups}`)
  const ceiling = await gpuReadBandwidth(device, gpu.software)
  log(`streaming-read kernel: ${(ceiling.bytesPerSecond / 1e9).toFixed(1)} GB/s`)
  // L2 caches are tens of MB: every measurement cycles through at least this many weight bytes
  const cycleBytes = gpu.software ? 8 * 2 ** 20 : 256 * 2 ** 20
  const maxRows = Math.max(...rowsList)
  const results: Array<Record<string, unknown>> = []

  for (const shape of list(a.shapes)) {
    for (const layer of layersOf(shape)) {
      for (const format of formats) {
        const { bytes, exact } = weights(format, layer.n, layer.k, 7)
        const perCopy = format === 'f16' ? 2 * layer.n * layer.k : layer.n * layer.k / 32 * 34
        const xv = randoms(maxRows * layer.k, 11)
        const gv = randoms(layer.k, 13).map(v => 1 + 0.2 * v)
        const gpuLayer = new GpuMatvecLayer(gpu, {
          weight: { dtype: format === 'f16' ? 'F16' : 'Q8_0', shape: [layer.n, layer.k], bytes },
          gated: layer.gated,
          norm: layer.norm === true ? gv : undefined,
          copies: Math.max(2, Math.ceil(cycleBytes / perCopy)),
          maxRows
        })
        try {
          for (const rows of rowsList) {
            const want = reference(layer, exact, xv, gv, rows)
            const gbps: Record<string, number> = {}
            for (const variant of variants) {
              gpuLayer.use(variant)
              // checked first: a kernel that computes something else is an error, not a figure
              const got = await gpuLayer.run(xv, rows)
              let err = 0; let scale = 0
              for (let i = 0; i < want.length; i++) { err = Math.max(err, Math.abs(got[i] - want[i])); scale = Math.max(scale, Math.abs(want[i])) }
              if (!(err <= 1e-4 * scale)) throw new Error(`${shape} ${layer.name} ${format} ${rows} rows, ${variant}: off by ${err} of ${scale}`)
              // then timed: enough dispatches for ~budget ms, best of three
              const probe = 8
              const once = await gpuLayer.time(rows, probe) / probe
              const n = Math.max(probe, Math.min(5000, Math.ceil(budgetMs / Math.max(0.001, once))))
              let best = Infinity
              for (let t = 0; t < 3; t++) best = Math.min(best, await gpuLayer.time(rows, n) / n)
              gbps[variant] = gpuLayer.bytes / (best / 1000) / 1e9
            }
            results.push({ shape, layer: layer.name, format, k: layer.k, n: layer.n, rows, weight_bytes: gpuLayer.bytes, gbps })
            log(`${shape} ${layer.name} ${format} ×${rows}: ${variants.map(v => `${v} ${gbps[v].toPrecision(3)}`).join(', ')} GB/s`)
          }
        } finally {
          gpuLayer.destroy()
        }
      }
    }
  }

  // the table: GB/s per variant, the best of the row marked, and its share of the streaming kernel
  const ceil = ceiling.bytesPerSecond / 1e9
  const fmt = (v: number): string => v >= 100 ? v.toFixed(0) : v.toPrecision(3)
  log(`\nGB/s of weights (share of the streaming kernel's ${ceil.toFixed(0)} GB/s for the best):`)
  log(['shape', 'layer', 'format', 'rows', ...variants, 'best'].join(' | '))
  for (const r of results) {
    const g = r.gbps as Record<string, number>
    const best = variants.reduce((b, v) => g[v] > g[b] ? v : b, variants[0])
    log([r.shape, r.layer, r.format, r.rows, ...variants.map(v => fmt(g[v])), `${best} (${(100 * g[best] / ceil).toFixed(0)} %)`].join(' | '))
  }
  console.log(JSON.stringify({ device: gpu.adapterInfo, software: gpu.software, read_gbps: ceil, variants, results }))
}

main().then(() => process.exit(0), (err) => { console.error(err?.stack ?? err); process.exit(1) })
