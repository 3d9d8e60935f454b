// `npm run bench:cpu-kernels`: the CPU kernels that read q8_0, q4_K, q5_K and q6_K blocks directly
// (packages/runtime/src/cpu), against TensorFlow.js's wasm float32 matmul of the same shape.
// Per tinyllama matrix shape: ms per matvec (1 token) and GB/s of weights streamed, and ms per
// token for a batch (prefill-like). Blocks are synthetic (fixed scales, random integers): the
// kernels' speed does not depend on the values, and quantizing 11.5M weights in JS takes long.
import { parseArgs } from 'node:util'
import { cpus } from 'node:os'
import * as tf from '@tensorflow/tfjs-core'
import { initBackend, quantMatrix, QUANT_BLOCK, setKernelThreads, kernelThreads, kernelsBuild } from '@plexus/runtime'
import type { QuantMatrixFormat } from '@plexus/runtime'
import { median } from './lib/bench-common.ts'

const { values: a } = parseArgs({
  options: {
    shapes: { type: 'string', default: '2048x5632,5632x2048,2048x2048' },
    threads: { type: 'string', default: '1,2' },
    batch: { type: 'string', default: '32' },
    reps: { type: 'string', default: '40' },
    formats: { type: 'string', default: 'q8_0,q4_k,q5_k,q6_k' },
    'json-only': { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false }
  }
})
if (a.help === true) {
  process.stdout.write(`usage: npm run bench:cpu-kernels -- [--shapes 2048x5632,...] [--threads 1,2] [--batch 32] [--reps 40]
       [--formats q8_0,q4_k,q5_k,q6_k] [--json-only]

Shapes are rows×cols of W (y = x·Wᵀ: 2048x5632 is tinyllama's down projection, 5632x2048 gate or
up, 2048x2048 q or o). Each figure is the median of --reps runs after a warm-up.\n`)
  process.exit(0)
}
const log = (s: string): void => { if (a['json-only'] !== true) process.stderr.write(s + '\n') }
const reps = Number(a.reps)
const batch = Number(a.batch)
const shapes = a.shapes!.split(',').map(s => s.split('x').map(Number) as [number, number])
const threadCounts = a.threads!.split(',').map(Number)
const formats = a.formats!.split(',') as QuantMatrixFormat[]

/**
 * Median wall ms of one run, and the mean CPU ms (all threads) of one run: on a shared machine the
 * CPU time is the steadier figure of a single thread's speed, the wall time the one that counts.
 */
function time (fn: () => void): { wall: number, cpu: number } {
  fn(); fn()
  const ts: number[] = []
  const c0 = process.cpuUsage()
  for (let i = 0; i < reps; i++) { const t0 = performance.now(); fn(); ts.push(performance.now() - t0) }
  const c = process.cpuUsage(c0)
  return { wall: median(ts), cpu: (c.user + c.system) / 1000 / reps }
}

/** Valid blocks of `format` with random integers and small fixed scales. */
function syntheticBlocks (format: QuantMatrixFormat, rows: number, cols: number): Uint8Array {
  const { values, bytes } = QUANT_BLOCK[format]
  const n = rows * cols / values
  const b = new Uint8Array(n * bytes)
  for (let i = 0; i < b.length; i++) b[i] = (Math.random() * 256) | 0
  for (let i = 0; i < n; i++) {
    const o = i * bytes
    const d = o + (format === 'q6_k' ? 208 : 0)
    b[d] = 0x00; b[d + 1] = 0x20 // d = 2^-7 as f16
    if (format === 'q4_k' || format === 'q5_k') { b[o + 2] = 0x00; b[o + 3] = 0x1c } // dmin = 2^-8
  }
  return b
}

interface Row { kernel: string, threads: number, rows: number, cols: number, weight_bytes: number, matvec_ms: number, matvec_cpu_ms: number, gb_s: number, gb_per_cpu_s: number, batch: number, batch_ms_per_token: number }
const results: Row[] = []
function row (kernel: string, threads: number, rows: number, cols: number, bytes: number, mv: { wall: number, cpu: number }, b: { wall: number }): Row {
  return {
    kernel, threads, rows, cols, weight_bytes: bytes, matvec_ms: mv.wall, matvec_cpu_ms: mv.cpu, gb_s: bytes / mv.wall / 1e6,
    gb_per_cpu_s: bytes / mv.cpu / 1e6, batch, batch_ms_per_token: b.wall / batch
  }
}

await initBackend('wasm')
for (const [rows, cols] of shapes) {
  const x1 = Float32Array.from({ length: cols }, () => Math.random() * 2 - 1)
  const xb = Float32Array.from({ length: batch * cols }, () => Math.random() * 2 - 1)
  {
    // tfjs's fastest layout: W pre-transposed to [cols, rows] (see compute-notes)
    const wt = tf.randomNormal([cols, rows], 0, 0.02, 'float32')
    const run = (x: Float32Array, t: number) => (): void => { tf.tidy(() => tf.matMul(tf.tensor2d(x, [t, cols]), wt).dataSync()) }
    results.push(row('tfjs-wasm f32', 1, rows, cols, rows * cols * 4, time(run(x1, 1)), time(run(xb, batch))))
    wt.dispose()
  }
  for (const format of formats) {
    const m = quantMatrix(format, rows, cols, syntheticBlocks(format, rows, cols))
    for (const threads of threadCounts) {
      setKernelThreads(threads)
      results.push(row(format, kernelThreads(), rows, cols, m.bytes, time(() => m.forward(x1, 1)), time(() => m.forward(xb, batch))))
    }
    m.dispose()
  }
  log(`done ${rows}x${cols}`)
}
setKernelThreads(1)

const machine = `${cpus().length}× ${cpus()[0]?.model ?? 'CPU'}, Node ${process.version}, kernels ${kernelsBuild ?? '?'}`
if (a['json-only'] !== true) {
  const f32 = new Map(results.filter(r => r.kernel === 'tfjs-wasm f32').map(r => [`${r.rows}x${r.cols}`, r]))
  log(`\n${machine}\n`)
  log('| W (rows×cols) | kernel | threads | weights MB | matvec ms | GB/s | CPU ms | GB per CPU-s | vs tfjs f32 (wall) | batch ' + batch + ': ms/token |')
  log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |')
  for (const r of results) {
    const base = f32.get(`${r.rows}x${r.cols}`)!
    log(`| ${r.rows}×${r.cols} | ${r.kernel} | ${r.threads} | ${(r.weight_bytes / 1e6).toFixed(1)} | ${r.matvec_ms.toFixed(3)} | ${r.gb_s.toFixed(1)} | ${r.matvec_cpu_ms.toFixed(3)} | ${r.gb_per_cpu_s.toFixed(1)} | ${(base.matvec_ms / r.matvec_ms).toFixed(2)}× | ${r.batch_ms_per_token.toFixed(3)} |`)
  }
}
process.stdout.write(JSON.stringify({ machine, results }) + '\n')
process.exit(0)
