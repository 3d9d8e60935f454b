// `npm run bench:gpu -- --shape tinyllama`: Plexus on the GPU (WebGPU by default) against
// llama.cpp's Vulkan build on the same weights, in the same run: prefill and decode tok/s, the
// weight bandwidth decode reaches beside what a streaming kernel measures on the device, and batched decode
// of 1/4/8/16 sessions through one span. Table on stderr, one JSON line on stdout.
import { parseArgs } from 'node:util'
import { mkdir, mkdtemp, rename, rm, stat, writeFile } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import { rmSync } from 'node:fs'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import {
  initBackend, LocalModel, Checkpoint, Span, generate, seededRandom, blockBytes, blockTensorShapes, headTensorShapes,
  openModel, activeGpu, gpuSubmissionTimes, gpuKernelTimes, WASM_HEAP_BUDGET
} from '@plexus/runtime'
import type { BackendName, ModelConfig, KVCache, GpuSubmissionTimes } from '@plexus/runtime'
import { makeModel, SHAPES } from './lib/model-maker.ts'
import type { ShapeName } from './lib/model-maker.ts'
import { writeGguf } from './lib/gguf.ts'
import type { GgufDType } from './lib/gguf.ts'
import { runLlamaCpp, llamaCppVulkan } from './lib/llama-baseline.ts'
import { gpuCopyBandwidth, gpuReadBandwidth, hostCopyBandwidth } from './lib/bandwidth.ts'

/** Shapes the bench makes itself: the model maker's, plus an 8B-wide cut that fits a quick run. */
const BENCH_SHAPES: Record<string, { shape: ShapeName, layers?: number, vocab?: number, what: string }> = {
  ...Object.fromEntries(Object.keys(SHAPES).map(k => [k, { shape: k as ShapeName, what: k }])),
  'llama3-8b-4l': { shape: 'llama3-8b', layers: 4, vocab: 32000, what: 'Llama 3.1 8B width, 4 layers, 32k vocab' }
}

const HELP = `usage: npm run bench:gpu -- (--model DIR | --shape NAME) [options]

  --model DIR           Hugging Face model directory
  --shape NAME          make a random f16 model of this shape in a temporary directory (deleted after):
                        ${Object.entries(BENCH_SHAPES).map(([k, s]) => `${k}${s.what !== k ? ` (${s.what})` : ''}`).join(', ')}
  --backend NAME        webgpu | tensorflow | wasm | cpu | auto (default webgpu)
  --prompt-tokens N     prompt length (default 128)
  --tokens N            tokens to decode (default 256)
  --batch LIST          sessions per batched decode step (default 1,4,8,16)
  --batch-steps N       timed steps per batch size (default 32)
  --batch-context N     tokens in each session's cache before the timed steps (default 64)
  --formats LIST        GGUF weight types both engines run, each from the same file (default f16,q8_0;
                        also f32, q4_k)
  --llama WHICH         vulkan (default) | cpu | none: the llama.cpp baseline's build
  --threads N           llama.cpp CPU threads (default: all cores)
  --work DIR            keep the made model and the GGUFs in DIR and reuse them when there (default: a
                        temporary directory, deleted after)
  --prepare-only        make the model and the GGUFs in --work, then stop (no device needed)
  --json-only           print only the JSON line`

const { values: a } = parseArgs({
  options: {
    model: { type: 'string' },
    shape: { type: 'string' },
    backend: { type: 'string', default: 'webgpu' },
    'prompt-tokens': { type: 'string', default: '128' },
    tokens: { type: 'string', default: '256' },
    batch: { type: 'string', default: '1,4,8,16' },
    'batch-steps': { type: 'string', default: '32' },
    'batch-context': { type: 'string', default: '64' },
    llama: { type: 'string', default: 'vulkan' },
    formats: { type: 'string', default: 'f16,q8_0' },
    threads: { type: 'string' },
    work: { type: 'string' },
    'prepare-only': { type: 'boolean', default: false },
    'json-only': { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false }
  }
})
const usage = (msg: string): never => { process.stderr.write(`bench:gpu: ${msg}\n`); process.exit(2) }
if (a.help === true) { process.stdout.write(HELP + '\n'); process.exit(0) }
if ((a.model == null) === (a.shape == null)) { process.stderr.write(HELP + '\n'); usage('give exactly one of --model and --shape') }
if (a['prepare-only'] === true && a.work == null) usage('--prepare-only needs --work DIR')
if (a.shape != null && BENCH_SHAPES[a.shape] == null) usage(`unknown --shape ${JSON.stringify(a.shape)} (known: ${Object.keys(BENCH_SHAPES).join(', ')})`)
const int = (k: string, v: string | undefined): number => {
  const n = Number(v)
  if (!Number.isInteger(n) || n <= 0) usage(`--${k} must be a positive integer (got ${JSON.stringify(v)})`)
  return n
}
const promptLen = int('prompt-tokens', a['prompt-tokens'])
const genLen = int('tokens', a.tokens)
const batchSizes = (a.batch ?? '').split(',').map(s => int('batch', s.trim()))
const batchSteps = int('batch-steps', a['batch-steps'])
const batchContext = int('batch-context', a['batch-context'])
const threads = a.threads != null ? int('threads', a.threads) : undefined
if (!['vulkan', 'cpu', 'none'].includes(a.llama ?? '')) usage(`--llama must be vulkan, cpu or none (got ${JSON.stringify(a.llama)})`)
const formats = (a.formats ?? '').split(',').map(s => s.trim()).filter(s => s !== '') as GgufDType[]
if (formats.length === 0) usage('--formats is empty')
for (const d of formats) if (!['f32', 'f16', 'q8_0', 'q4_k'].includes(d)) usage(`--formats: unknown GGUF type ${JSON.stringify(d)} (f32, f16, q8_0, q4_k)`)
const log = (s: string): void => { if (a['json-only'] !== true) process.stderr.write(s + '\n') }
const sec = (ms: number): string => `${(ms / 1000).toFixed(1)} s`

// Temporary files (the made model, GGUFs) go even when a timeout kills the run.
const temps = new Set<string>()
const cleanUp = (): void => { for (const p of temps) { try { rmSync(p, { recursive: true, force: true }) } catch {} } temps.clear() }
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => { cleanUp(); process.exit(130) })

async function main (): Promise<void> {
  let work = a.work as string | undefined
  if (work == null) {
    work = await mkdtemp(join(tmpdir(), `plexus-bench-gpu-${a.shape ?? 'model'}-`))
    temps.add(work)
  } else await mkdir(work, { recursive: true })
  let dir = a.model as string
  let made: { shape: string, seconds: number } | undefined
  if (a.shape != null) {
    const s = BENCH_SHAPES[a.shape]
    dir = join(work, 'model')
    // A model is complete once its marker is written; anything else there is a run cut short.
    if (existsSync(join(dir, '.made'))) log(`${a.shape}: reusing the model in ${dir}`)
    else {
      await rm(dir, { recursive: true, force: true })
      log(`making ${a.shape} (${s.what}, f16, random weights) in ${dir}…`)
      const t0 = performance.now()
      await makeModel({ shape: s.shape, out: dir, dtype: 'f16', layers: s.layers, vocab: s.vocab, name: a.shape })
      await writeFile(join(dir, '.made'), '')
      made = { shape: a.shape, seconds: (performance.now() - t0) / 1000 }
      log(`  made in ${sec(performance.now() - t0)}`)
    }
  }
  if (a['prepare-only'] === true) {
    for (const format of formats) await ggufOf(dir, work, format)
    process.stdout.write(JSON.stringify({ bench: 'gpu', prepared: work, formats }) + '\n')
    return
  }

  const backend = await initBackend(a.backend as BackendName | 'auto')
  const gpu = backend === 'webgpu' ? activeGpu() : undefined
  if (backend === 'webgpu' && gpu == null) throw new Error('bench:gpu: backend webgpu is active but no GPU device is open')
  const device = gpu != null
    ? { kind: 'webgpu', ...gpu.adapterInfo, software: gpu.software }
    : { kind: 'host', description: `${backend} backend on the CPU` }
  log(`backend ${backend}: ${gpu != null ? `${gpu.adapterInfo.vendor} ${gpu.adapterInfo.device || gpu.adapterInfo.architecture} (${gpu.adapterInfo.description})${gpu.software ? ', software adapter' : ''}` : device.description}`)

  // The ceiling decode is measured against: what a kernel streams (on the CPU backends, a memcpy).
  const copy = gpu != null ? await gpuCopyBandwidth(gpu.device, gpu.software) : hostCopyBandwidth()
  log(`measured ${gpu != null ? 'copyBufferToBuffer' : 'host memcpy'}: ${(copy.bytesPerSecond / 1e9).toFixed(1)} GB/s (${(copy.bytes / 2 ** 20).toFixed(0)} MiB × ${copy.passes}, read + write)`)
  const bw = gpu != null ? await gpuReadBandwidth(gpu.device, gpu.software) : copy
  if (gpu != null) log(`measured a streaming-read kernel: ${(bw.bytesPerSecond / 1e9).toFixed(1)} GB/s (${(bw.bytes / 2 ** 20).toFixed(0)} MiB × ${bw.passes}): the decode ceiling`)

  const ckpt = await Checkpoint.open(dir)
  const cfg = ckpt.config
  await ckpt.close()
  const rand = seededRandom(42)
  const prompt = Array.from({ length: promptLen }, () => 3 + Math.floor(rand() * (cfg.vocabSize - 3)))
  log(`model: ${cfg.numLayers} blocks, hidden ${cfg.hiddenSize}, heads ${cfg.numHeads}/${cfg.numKvHeads}, FFN ${cfg.intermediateSize}, vocab ${cfg.vocabSize}`)

  const llama = a.llama === 'none' ? undefined : await llamaCppBuild()
  const runs: FormatRun[] = []
  for (const format of formats) runs.push(await benchFormat(dir, work, cfg, format, prompt, backend, bw.bytesPerSecond, llama))

  const result = {
    bench: 'gpu',
    model: a.shape != null ? `shape:${a.shape}` : a.model,
    made_model_seconds: made?.seconds ?? null,
    backend,
    device,
    shape: { hidden: cfg.hiddenSize, layers: cfg.numLayers, heads: cfg.numHeads, kvHeads: cfg.numKvHeads, ffn: cfg.intermediateSize, vocab: cfg.vocabSize },
    prompt_tokens: promptLen,
    decoded_tokens: genLen,
    device_copy_bandwidth_gbps: copy.bytesPerSecond / 1e9,
    device_read_bandwidth_gbps: gpu != null ? bw.bytesPerSecond / 1e9 : null,
    llama_cpp: llama ?? { skipped: true },
    formats: runs
  }

  if (a['json-only'] !== true) {
    // Three significant digits below 10 (small models and software adapters give small figures).
    const f = (n: number | null | undefined, d = 1): string => n == null || !Number.isFinite(n) ? '—' : Math.abs(n) < 10 && d === 1 ? n.toPrecision(3) : n.toFixed(d)
    const pct = (gbps: number): string => f(100 * gbps * 1e9 / bw.bytesPerSecond)
    const rows: string[][] = [['', 'prefill tok/s', 'decode tok/s', 'weights GB/s', `% of ${gpu != null ? 'read' : 'copy'} BW`, 'decode vs llama.cpp', 'same greedy tokens']]
    for (const r of runs) {
      rows.push([`plexus (${backend}) ${r.format}`, f(r.plexus.prefill_tokens_per_second), f(r.plexus.decode_tokens_per_second), f(r.plexus.decode_weight_gbps), pct(r.plexus.decode_weight_gbps), r.decode_vs_llama_cpp != null ? `${f(r.decode_vs_llama_cpp, 2)}×` : '', ''])
      const l = r.llama_cpp
      if (l == null) continue
      if ('error' in l) rows.push([`llama.cpp ${llama?.build ?? ''} ${r.format}`, 'failed', '', '', '', '', ''])
      else rows.push([`llama.cpp ${llama?.build ?? ''} ${r.format}`, f(l.prefill_tokens_per_second), f(l.decode_tokens_per_second), f(l.decode_weight_gbps), pct(l.decode_weight_gbps), '', `${l.greedy_tokens_equal_to_plexus}/${genLen}`])
    }
    if (llama == null || !llama.available) rows.push(['llama.cpp', llama == null ? 'skipped' : 'unavailable', '', '', '', '', ''])
    table(rows)
    log(`${gpu != null ? 'read' : 'copy'} bandwidth ${f(bw.bytesPerSecond / 1e9)} GB/s; decode ceiling at that bandwidth: ${runs.map(r => `${r.format} ${f(r.bandwidth_ceiling_tokens_per_second)} tok/s`).join(', ')}`)
    log('')
    const brows: string[][] = [['sessions', ...runs.map(r => `${r.format} tok/s`), ...runs.map(r => `${r.format} vs 1`), ...runs.map(r => `${r.format} ms/step`)]]
    for (const [i, B] of batchSizes.entries()) {
      const at = (r: FormatRun): BatchRun | undefined => r.batched_decode.runs[i]
      brows.push([String(B), ...runs.map(r => f(at(r)?.tokens_per_second)), ...runs.map(r => `${f(at(r)?.ratio_vs_one, 2)}×`), ...runs.map(r => f(at(r)?.ms_per_step, 2))])
    }
    table(brows)
    log(`batched: decode steps of every block through Span.forwardBatch (no LM head), ${batchSteps} steps after ${batchContext} cached tokens`)
    if (llama != null && !llama.available) log(`llama.cpp: ${llama.reason}`)
  }
  process.stdout.write(JSON.stringify(result) + '\n')
}

function table (rows: string[][]): void {
  const w = rows[0].map((_, i) => Math.max(...rows.map(r => (r[i] ?? '').length)))
  for (const r of rows) log('| ' + r.map((c, i) => (c ?? '').padEnd(w[i])).join(' | ') + ' |')
}

// ---- one weight format: the same GGUF through Plexus and llama.cpp ------------------------------

interface FormatRun {
  format: GgufDType
  gguf_bytes: number
  weight_bytes_per_token: number
  bandwidth_ceiling_tokens_per_second: number
  plexus: { load_seconds: number, prefill_tokens_per_second: number, decode_tokens_per_second: number, decode_weight_gbps: number, decode_share_of_bandwidth: number, submissions: SubmissionMeans, kernel_ms_per_step: Record<string, number> | null }
  batched_decode: { blocks: number, steps: number, context: number, runs: BatchRun[] }
  llama_cpp: LlamaRun | null
  decode_vs_llama_cpp: number | null
}

/** The model as a GGUF of `format` in `work`: reused when an earlier run wrote it whole. */
async function ggufOf (dir: string, work: string, format: GgufDType): Promise<string> {
  const gguf = join(work, `${format}.gguf`)
  if (existsSync(gguf)) { log(`${format}: reusing ${gguf}`); return gguf }
  const t0 = performance.now()
  // The head quantized too, as llama-quantize writes a whole-model q8_0 / q4_K file.
  await writeGguf(dir, gguf + '.part', { dtype: format, quantizeHead: true })
  await rename(gguf + '.part', gguf)
  log(`${format}: wrote a ${((await stat(gguf)).size / 2 ** 30).toFixed(2)} GiB GGUF in ${sec(performance.now() - t0)}`)
  return gguf
}

async function benchFormat (dir: string, work: string, cfg: ModelConfig, format: GgufDType, prompt: number[], backend: BackendName, ceilingBps: number, llama: LlamaBuild | undefined): Promise<FormatRun> {
  const gguf = await ggufOf(dir, work, format)
  try {
    const ggufBytes = (await stat(gguf)).size
    const perToken = ggufWeightBytes(cfg, format)
    log(`${format}: ${(perToken / 1e9).toFixed(2)} GB of weights read per decode token`)
    let t0: number

    // Prefill and decode through the whole model (the LM head included, in each step's own GPU
    // submission), after a warm-up generation.
    // Progress lines say which step a timeout cut short.
    log(`plexus ${format}: loading…`)
    t0 = performance.now()
    const model = await LocalModel.load(gguf)
    const loadSeconds = (performance.now() - t0) / 1000
    let ours
    let submissions: SubmissionMeans = {}
    // GPU ms per step by kernel (PLEXUS_GPU_PROFILE=1 only)
    let kernels: Record<string, number> = {}
    try {
      log(`plexus ${format}: loaded in ${loadSeconds.toFixed(1)} s; warm-up…`)
      t0 = performance.now()
      const warm = await model.session(promptLen + 4)
      await generate(model.head, warm, prompt, { maxTokens: 4 })
      await warm.close()
      log(`plexus ${format}: warm-up in ${sec(performance.now() - t0)}; ${promptLen} + ${genLen} tokens…`)
      const session = await model.session(promptLen + genLen)
      gpuSubmissionTimes(true)
      gpuKernelTimes(true)
      ours = await generate(model.head, session, prompt, { maxTokens: genLen })
      submissions = perSubmission(gpuSubmissionTimes(true))
      const steps = submissions['a step']?.submissions ?? 1
      kernels = Object.fromEntries(Object.entries(gpuKernelTimes(true)).map(([k, v]) => [k, v.ms / steps]))
      await session.close()
    } finally {
      await model.dispose()
    }
    const gbps = perToken * ours.tokensPerSecond / 1e9
    log(`plexus ${format}: prefill ${ours.prefillTokensPerSecond.toFixed(1)} tok/s, decode ${ours.tokensPerSecond.toFixed(1)} tok/s = ${gbps.toFixed(1)} GB/s of weights (${(100 * gbps * 1e9 / ceilingBps).toFixed(1)} % of the measured bandwidth ceiling)`)
    for (const [what, t] of Object.entries(submissions)) log(`  ${what}: ${t.submissions} submissions, ${t.record_ms.toFixed(3)} ms recording + ${t.wait_ms.toFixed(3)} ms waiting for the GPU and readback each`)
    if (Object.keys(kernels).length > 0) log(`  GPU ms per step, kernel by kernel (one timed pass each): ${Object.entries(kernels).map(([k, ms]) => `${k} ${ms.toFixed(3)}`).join(', ')}`)

    const batched = await batchedDecode(gguf, cfg, backend)
    const l = llama?.available === true ? await llamaRun(gguf, format, llama.build, cfg, prompt, ours.tokenIds) : null
    return {
      format,
      gguf_bytes: ggufBytes,
      weight_bytes_per_token: perToken,
      bandwidth_ceiling_tokens_per_second: ceilingBps / perToken,
      plexus: {
        load_seconds: loadSeconds,
        prefill_tokens_per_second: ours.prefillTokensPerSecond,
        decode_tokens_per_second: ours.tokensPerSecond,
        decode_weight_gbps: gbps,
        decode_share_of_bandwidth: gbps * 1e9 / ceilingBps,
        // mean per submission over the timed generation (the prefill's one included)
        submissions,
        kernel_ms_per_step: Object.keys(kernels).length > 0 ? kernels : null
      },
      batched_decode: batched,
      llama_cpp: l,
      decode_vs_llama_cpp: l != null && !('error' in l) ? ours.tokensPerSecond / l.decode_tokens_per_second : null
    }
  } finally {
    // a temporary work directory goes format by format (tinyllama's GGUFs are 3.4 GB together)
    if (a.work == null) await rm(gguf, { force: true })
  }
}

/** Per kind of submission ('a step', 'the LM head'): how many, and mean ms recording and waiting. */
type SubmissionMeans = Record<string, { submissions: number, record_ms: number, wait_ms: number }>

/** Mean milliseconds per submission, from the runtime's totals (empty on the CPU backends). */
function perSubmission (t: Record<string, GpuSubmissionTimes>): SubmissionMeans {
  return Object.fromEntries(Object.entries(t).map(([k, v]) => [k, { submissions: v.submissions, record_ms: v.recordMs / v.submissions, wait_ms: v.waitMs / v.submissions }]))
}

// ---- the device ---------------------------------------------------------------------------

// ---- what one decode token reads ------------------------------------------------------------

/**
 * Bytes one decode token reads from a GGUF of the model as gguf.ts writes it for this bench: every
 * block tensor, the final norm and the LM head (the embeddings when tied; a lookup reads one row).
 * Vectors are f32; a matrix whose rows are not whole blocks of its format falls back q4_k → q8_0 → f16.
 */
function ggufWeightBytes (cfg: ModelConfig, dtype: GgufDType): number {
  let n = 0
  const count = (shape: number[]): void => {
    const v = shape.reduce((x, y) => x * y, 1)
    const cols = shape[shape.length - 1]
    if (shape.length < 2 || dtype === 'f32') n += 4 * v
    else if (dtype === 'q4_k' && cols % 256 === 0) n += v / 256 * 144
    else if ((dtype === 'q8_0' || dtype === 'q4_k') && cols % 32 === 0) n += v / 32 * 34
    else n += 2 * v
  }
  for (let b = 0; b < cfg.numLayers; b++) for (const s of blockTensorShapes(cfg, b).values()) count(s)
  const head = headTensorShapes(cfg)
  count(head.get('model.norm.weight') as number[])
  count((head.get('lm_head.weight') ?? head.get('model.embed_tokens.weight')) as number[])
  return n
}

// ---- batched decode ---------------------------------------------------------------------------

interface BatchRun { sessions: number, tokens_per_second: number, ratio_vs_one: number, ms_per_step: number, record_ms: number | null, wait_ms: number | null }

/**
 * Decode steps of several sessions as one Span.forwardBatch call (what a server does with
 * concurrent sessions). The span holds every block on the GPU; a CPU backend gets as many blocks as
 * one wasm heap holds, since only the ratio between batch sizes is the point there.
 */
async function batchedDecode (path: string, cfg: ModelConfig, backend: BackendName): Promise<{ blocks: number, steps: number, context: number, runs: BatchRun[] }> {
  const blocks = backend === 'webgpu' ? cfg.numLayers : Math.max(1, Math.min(cfg.numLayers, Math.floor(WASM_HEAP_BUDGET / blockBytes(cfg))))
  const ckpt = await openModel(path)
  const runs: BatchRun[] = []
  let span: Span | undefined
  try {
    log(`batched decode: loading blocks [0, ${blocks})…`)
    span = await Span.load(ckpt, 0, blocks)
    const H = cfg.hiddenSize
    const rand = seededRandom(7)
    const rows = (n: number): Float32Array => Float32Array.from({ length: n * H }, () => 2 * rand() - 1)
    const maxB = Math.max(...batchSizes)
    const prefixes = Array.from({ length: maxB }, () => rows(batchContext))
    const steps = Array.from({ length: maxB }, () => rows(1))
    for (const B of batchSizes) {
      const caches: KVCache[] = Array.from({ length: B }, () => (span as Span).newCache(batchContext + batchSteps + 6))
      try {
        await span.forwardBatch(caches.map((cache, i) => ({ hidden: prefixes[i], tokens: batchContext, cache })))
        // warm-up steps (with one, an H200 timed a single session's steps at 4.8 ms against its generation's 1.6)
        for (let s = 0; s < 4; s++) await span.forwardBatch(caches.map((cache, i) => ({ hidden: steps[i], tokens: 1, cache })))
        gpuSubmissionTimes(true)
        const t0 = performance.now()
        for (let s = 0; s < batchSteps; s++) await span.forwardBatch(caches.map((cache, i) => ({ hidden: steps[i], tokens: 1, cache })))
        const seconds = (performance.now() - t0) / 1000
        const t = perSubmission(gpuSubmissionTimes(true))['a step']
        runs.push({ sessions: B, tokens_per_second: B * batchSteps / seconds, ratio_vs_one: NaN, ms_per_step: 1000 * seconds / batchSteps, record_ms: t?.record_ms ?? null, wait_ms: t?.wait_ms ?? null })
        log(`batched decode: ${B} session(s): ${(B * batchSteps / seconds).toFixed(1)} tok/s${t != null ? ` (a step: ${t.record_ms.toFixed(3)} ms recording + ${t.wait_ms.toFixed(3)} ms waiting)` : ''}`)
      } finally {
        for (const c of caches) c.dispose()
      }
    }
  } finally {
    span?.dispose()
    await ckpt.close()
  }
  const one = runs.find(r => r.sessions === 1)?.tokens_per_second
  for (const r of runs) r.ratio_vs_one = one != null ? r.tokens_per_second / one : NaN
  return { blocks, steps: batchSteps, context: batchContext, runs }
}

// ---- llama.cpp ------------------------------------------------------------------------------

type LlamaRun =
  | { prefill_tokens_per_second: number, decode_tokens_per_second: number, decode_weight_gbps: number, greedy_tokens_equal_to_plexus: number }
  | { error: string }
type LlamaBuild = { build: string, available: false, reason: string } | { build: string, available: true, devices: string[], on_gpu: boolean }

/** Which llama.cpp build runs, and on which devices; or why none can. */
async function llamaCppBuild (): Promise<LlamaBuild> {
  const build = a.llama as 'vulkan' | 'cpu'
  if (build !== 'vulkan') return { build, available: true, devices: [], on_gpu: false }
  const v = await llamaCppVulkan()
  if (!v.ok) {
    const reason = `Vulkan llama.cpp unavailable (${v.reason}): no llama.cpp baseline in this run`
    log(`llama.cpp: ${reason}`)
    return { build, available: false, reason }
  }
  // ggml's Vulkan backend skips CPU-type devices (lavapipe): then its layers run on the CPU.
  log(v.devices.length > 0
    ? `llama.cpp Vulkan devices: ${v.devices.join(', ')}`
    : 'llama.cpp Vulkan build found no GPU device: its figures below are llama.cpp on the CPU')
  return { build, available: true, devices: v.devices, on_gpu: v.devices.length > 0 }
}

async function llamaRun (gguf: string, format: GgufDType, build: string, cfg: ModelConfig, prompt: number[], ourTokens: number[]): Promise<LlamaRun> {
  try {
    const t0 = performance.now()
    const r = await runLlamaCpp(gguf, prompt, genLen, { gpu: build === 'vulkan' ? 'vulkan' : undefined, threads })
    let same = 0
    while (same < r.tokenIds.length && r.tokenIds[same] === ourTokens[same]) same++
    log(`llama.cpp ${build} ${format}: prefill ${r.prefillTokensPerSecond.toFixed(1)} tok/s, decode ${r.decodeTokensPerSecond.toFixed(1)} tok/s (${sec(performance.now() - t0)} with loading); greedy tokens equal to Plexus: ${same}/${ourTokens.length}`)
    return {
      prefill_tokens_per_second: r.prefillTokensPerSecond,
      decode_tokens_per_second: r.decodeTokensPerSecond,
      decode_weight_gbps: ggufWeightBytes(cfg, format) * r.decodeTokensPerSecond / 1e9,
      greedy_tokens_equal_to_plexus: same
    }
  } catch (err: any) {
    const msg = String(err?.message ?? err).split('\n')[0]
    log(`llama.cpp ${build} ${format}: failed: ${msg}`)
    return { error: msg }
  }
}

// Last, so every module-level constant above is initialised before main() runs.
try {
  await main()
} finally {
  cleanUp()
}
