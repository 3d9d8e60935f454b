// `npm run bench:quantize`: how fast weights are quantized at load (`--quantize q8_0|q4_k`) and by
// the GGUF writer: llama.cpp's reference algorithms, q4_K in C on the kernel threads
// (packages/runtime/src/cpu/quantize.c) against its one-thread JavaScript port, q8_0 in
// JavaScript. Million values per second and the time an 8B model's blocks (6.98 G weights) would take.
import { parseArgs } from 'node:util'
import { cpus } from 'node:os'
import { quantizeQ8_0, quantizeQ4_K, quantizeQ4_KScalar, setKernelThreads, kernelThreads, kernelsBuild } from '@plexus/runtime'
import { median } from './lib/bench-common.ts'

const { values: a } = parseArgs({
  options: {
    values: { type: 'string', default: String(2048 * 5632) },
    threads: { type: 'string', default: `1,${cpus().length}` },
    reps: { type: 'string', default: '3' },
    'json-only': { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false }
  }
})
if (a.help === true) {
  process.stdout.write(`usage: npm run bench:quantize -- [--values N] [--threads 1,2] [--reps 3] [--json-only]

Quantizes N random gaussian values (default: one tinyllama MLP matrix, 11.5 M) --reps times per
quantizer; each figure is the median.\n`)
  process.exit(0)
}
const n = Math.ceil(Number(a.values) / 256) * 256
const reps = Number(a.reps)
const log = (s: string): void => { if (a['json-only'] !== true) process.stderr.write(s + '\n') }
// the blocks' matrices of Llama 3.1 8B: 32 × (q, o 4096² + k, v 4096·1024 + gate, up, down 4096·14336)
const WEIGHTS_8B = 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336)

const x = new Float32Array(n)
for (let i = 0; i < n; i += 2) {
  const r = Math.sqrt(-2 * Math.log(1 - Math.random())) * 0.02; const t = 2 * Math.PI * Math.random()
  x[i] = r * Math.cos(t); x[i + 1] = r * Math.sin(t)
}

interface Row { quantizer: string, threads: number, values: number, ms: number, m_values_per_s: number, minutes_8b: number }
const results: Row[] = []
function measure (quantizer: string, threads: number, fn: () => Uint8Array): void {
  const ts: number[] = []
  for (let i = 0; i < reps; i++) { const t0 = performance.now(); fn(); ts.push(performance.now() - t0) }
  const ms = median(ts)
  results.push({ quantizer, threads, values: n, ms, m_values_per_s: n / ms / 1e3, minutes_8b: WEIGHTS_8B / (n / ms) / 60e3 })
  log(`${quantizer}, ${threads} thread(s): ${(n / ms / 1e3).toFixed(2)} M values/s`)
}

measure('q8_0 (JavaScript)', 1, () => quantizeQ8_0(x))
measure('q4_K (JavaScript)', 1, () => quantizeQ4_KScalar(x))
const threads0 = kernelThreads()
for (const t of a.threads!.split(',').map(Number)) {
  setKernelThreads(t)
  measure('q4_K (wasm, kernel threads)', t, () => quantizeQ4_K(x))
}
setKernelThreads(threads0)

const machine = `${cpus().length}× ${cpus()[0]?.model ?? 'CPU'}, Node ${process.version}, kernels ${kernelsBuild ?? '?'}`
if (a['json-only'] !== true) {
  log(`\n${machine}, ${n} values\n`)
  log('| quantizer | threads | M values/s | an 8B model\'s blocks |')
  log('| --- | --- | --- | --- |')
  for (const r of results) log(`| ${r.quantizer} | ${r.threads} | ${r.m_values_per_s.toFixed(2)} | ${r.minutes_8b.toFixed(1)} min |`)
}
process.stdout.write(JSON.stringify({ machine, weights_8b: WEIGHTS_8B, results }) + '\n')
process.exit(0)
