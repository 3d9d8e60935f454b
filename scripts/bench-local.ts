// `npm run bench:local -- --model DIR`: single-machine prefill/decode speed of Plexus's runtime
// against llama.cpp (node-llama-cpp) on the same weights, in the same run. With `--quantize`:
// the accuracy of quantized weights (KL divergence and top-1 agreement against float32), Plexus
// and llama.cpp reading the same quantized GGUF file.
import { parseArgs } from 'node:util'
import { access, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { initBackend, LocalModel, generate, blockBytes, seededRandom, isQuantFormat, openModel } from '@plexus/runtime'
import type { BackendName, QuantFormat } from '@plexus/runtime'
import { writeGguf } from './lib/gguf.ts'
import { runLlamaCpp, llamaCppLogits } from './lib/llama-baseline.ts'
import { benchModel, benchTempDir } from './lib/bench-common.ts'

const HELP = `usage: npm run bench:local -- --model DIR | --shape NAME [options]

  --model DIR           Hugging Face model directory (make one: npm run make-model -- --shape small --out DIR)
  --shape NAME          instead of --model: a float32 random model of this shape (small, tinyllama …),
                        made once in the temp folder and reused by later runs
  --layers N            with --shape: only the first N blocks (keeps tinyllama's run times sane)
  --quantize LIST       accuracy instead of speed: q8_0, q4_k or both (q8_0,q4_k); mean KL divergence
                        and top-1 agreement of the logits against float32 over --positions teacher-forced
                        positions, Plexus and llama.cpp each on the same quantized GGUF file
  --positions N         with --quantize: length of the fixed token sequence (default 256)
  --seed N              the random prompt's (and --quantize's token sequence's) seed (default 42)
  --format F            speed of one weight format: f32 (default, the model as stored), q8_0 or q4_k
                        (the blocks' matrices quantized into a GGUF file both engines read)
  --prompt-tokens N     prompt length (default 64)
  --tokens N            tokens to generate (default 64)
  --backend NAME        tensorflow | wasm | cpu | auto (default auto)
  --threads N           llama.cpp threads (default 2)
  --bandwidth GBPS      memory bandwidth for the ceiling (default 28, measured on this machine)
  --no-llama            skip the llama.cpp baseline
  --json-only           print only the JSON line`

const { values: a } = parseArgs({
  options: {
    model: { type: 'string' },
    shape: { type: 'string' },
    layers: { type: 'string' },
    quantize: { type: 'string' },
    format: { type: 'string', default: 'f32' },
    positions: { type: 'string', default: '256' },
    seed: { type: 'string', default: '42' },
    'prompt-tokens': { type: 'string', default: '64' },
    tokens: { type: 'string', default: '64' },
    backend: { type: 'string', default: 'auto' },
    threads: { type: 'string', default: '2' },
    bandwidth: { type: 'string', default: '28' },
    'no-llama': { type: 'boolean', default: false },
    'json-only': { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false }
  }
})
if (a.help === true || (a.model == null) === (a.shape == null)) {
  process.stdout.write(HELP + '\n')
  process.exit(a.help === true ? 0 : 2)
}
const num = (k: string, v: string | undefined): number => {
  const n = Number(v)
  if (!Number.isFinite(n) || n <= 0) { process.stderr.write(`bench:local: --${k} must be a positive number\n`); process.exit(2) }
  return n
}
const promptLen = num('prompt-tokens', a['prompt-tokens'])
const genLen = num('tokens', a.tokens)
const log = (s: string): void => { if (a['json-only'] !== true) process.stderr.write(s + '\n') }
const layers = a.layers != null ? num('layers', a.layers) : undefined
if (layers != null && a.shape == null) { process.stderr.write('bench:local: --layers goes with --shape (a --model is used as it is)\n'); process.exit(2) }
const modelDir = await benchModel(a.model, a.shape ?? '', log, layers)
// Everything this run writes (GGUF copies) goes here and is removed at the end, on errors and on Ctrl-C too.
const temp = await benchTempDir('plexus-bench-local-')
try {
  if (a.quantize != null) await accuracy(a.quantize.split(','))
  else await speed()
} finally {
  await temp.remove()
}

async function speed (): Promise<void> {
  const backend = await initBackend(a.backend as BackendName | 'auto')
  const format = a.format!
  if (format !== 'f32' && !isQuantFormat(format)) { process.stderr.write(`bench:local: --format takes f32, q8_0 or q4_k (got ${JSON.stringify(format)})\n`); process.exit(2) }
  // quantized: one GGUF file, read by both engines (blocks quantized, embeddings and output float32)
  let gguf: string | undefined
  if (format !== 'f32') {
    gguf = join(temp.dir, `model-${format}.gguf`)
    log(`writing ${gguf} (${format})…`)
    await writeGguf(modelDir, gguf, { dtype: format, quantizeHead: false })
  }
  const model = await LocalModel.load(gguf ?? modelDir)
  const cfg = model.config
  const rand = seededRandom(num('seed', a.seed))
  const prompt = Array.from({ length: promptLen }, () => 3 + Math.floor(rand() * (cfg.vocabSize - 3)))

  // One warm-up generation, then the measured one.
  log(`plexus (${backend}, ${format}): ${cfg.numLayers} blocks, hidden ${cfg.hiddenSize}, ${model.spans.length} span(s)`)
  const warm = await model.session(promptLen + 4)
  await generate(model.head, warm, prompt, { maxTokens: 4 })
  await warm.close()
  const session = await model.session(promptLen + genLen)
  const ours = await generate(model.head, session, prompt, { maxTokens: genLen })
  await session.close()
  await model.dispose()
  const peakRssMiB = process.resourceUsage().maxRSS / 1024

  // a quantized block streams its bits per weight (q8_0 8.5, q4_K 4.5) instead of 32
  const bits = format === 'q8_0' ? 8.5 : format === 'q4_k' ? 4.5 : 32
  const weightBytesPerToken = cfg.numLayers * blockBytes(cfg) * bits / 32 + 4 * cfg.vocabSize * cfg.hiddenSize
  const ceiling = (num('bandwidth', a.bandwidth) * 1e9) / weightBytesPerToken

  let llama: { prefill: number, decode: number, sameTokens: number } | undefined
  if (a['no-llama'] !== true) {
    const r = await runLlamaCpp(gguf ?? await f32Gguf(), prompt, genLen, { threads: num('threads', a.threads) })
    let same = 0
    while (same < r.tokenIds.length && r.tokenIds[same] === ours.tokenIds[same]) same++
    llama = { prefill: r.prefillTokensPerSecond, decode: r.decodeTokensPerSecond, sameTokens: same }
  }

  const result = {
    model: modelDir,
    backend,
    format,
    shape: { hidden: cfg.hiddenSize, layers: cfg.numLayers, heads: cfg.numHeads, kvHeads: cfg.numKvHeads, ffn: cfg.intermediateSize, vocab: cfg.vocabSize },
    prompt_tokens: promptLen,
    seed: num('seed', a.seed),
    generated_tokens: ours.tokenIds.length,
    plexus: { prefill_tokens_per_second: ours.prefillTokensPerSecond, decode_tokens_per_second: ours.tokensPerSecond, peak_rss_mib: peakRssMiB },
    weight_bytes_per_token: weightBytesPerToken,
    bandwidth_ceiling_tokens_per_second: ceiling,
    llama_cpp: llama != null ? { prefill_tokens_per_second: llama.prefill, decode_tokens_per_second: llama.decode, greedy_tokens_equal_to_plexus: llama.sameTokens } : null,
    decode_ratio_vs_llama_cpp: llama != null ? ours.tokensPerSecond / llama.decode : null,
    prefill_ratio_vs_llama_cpp: llama != null ? ours.prefillTokensPerSecond / llama.prefill : null
  }

  if (a['json-only'] !== true) {
    const f = (n: number | undefined | null): string => n == null ? '—' : n.toFixed(1)
    const rows: string[][] = [
      ['', 'prefill tok/s', 'decode tok/s', 'peak RSS MiB'],
      [`plexus (${backend})`, f(ours.prefillTokensPerSecond), f(ours.tokensPerSecond), f(peakRssMiB)],
      ['llama.cpp (node-llama-cpp)', f(llama?.prefill), f(llama?.decode), ''],
      ['ratio plexus / llama.cpp', result.prefill_ratio_vs_llama_cpp?.toFixed(2) ?? '—', result.decode_ratio_vs_llama_cpp?.toFixed(2) ?? '—', ''],
      ['bandwidth ceiling', '', f(ceiling), '']
    ]
    const w = rows[0].map((_, i) => Math.max(...rows.map(r => r[i].length)))
    for (const r of rows) process.stdout.write('| ' + r.map((c, i) => c.padEnd(w[i])).join(' | ') + ' |\n')
    process.stdout.write(`weights streamed per token: ${(weightBytesPerToken / 2 ** 20).toFixed(0)} MiB; greedy tokens equal to llama.cpp: ${llama?.sameTokens ?? '—'}/${ours.tokenIds.length}\n`)
  }
  process.stdout.write(JSON.stringify(result) + '\n')
}

/** The model's float32 GGUF for llama.cpp: its own `model.gguf` when it has one, else a temporary copy. */
async function f32Gguf (): Promise<string> {
  const own = join(modelDir, 'model.gguf')
  try { await access(own); return own } catch {}
  const gguf = join(temp.dir, 'model-f32.gguf')
  log(`writing ${gguf} (float32, same weights) for llama.cpp…`)
  await writeGguf(modelDir, gguf, { dtype: 'f32' })
  return gguf
}

interface Divergence {
  /** Mean over positions of KL(reference ‖ test), in nats. */
  mean_kl: number
  max_kl: number
  /** Share of positions whose most likely token is the reference's. */
  top1_agreement: number
}

/** KL divergence and top-1 agreement of `test` against `ref` (both `[n, V]` logits), in float64. */
function divergence (ref: Float32Array, test: Float32Array, n: number, V: number): Divergence {
  let sum = 0
  let max = 0
  let agree = 0
  const lp = new Float64Array(V)
  const lq = new Float64Array(V)
  const logSoftmax = (x: Float32Array, o: number, out: Float64Array): number => {
    let m = -Infinity
    let arg = 0
    for (let j = 0; j < V; j++) if (x[o + j] > m) { m = x[o + j]; arg = j }
    let z = 0
    for (let j = 0; j < V; j++) z += Math.exp(x[o + j] - m)
    const lz = m + Math.log(z)
    for (let j = 0; j < V; j++) out[j] = x[o + j] - lz
    return arg
  }
  for (let i = 0; i < n; i++) {
    const ra = logSoftmax(ref, i * V, lp)
    const ta = logSoftmax(test, i * V, lq)
    let kl = 0
    for (let j = 0; j < V; j++) { const p = Math.exp(lp[j]); if (p > 0) kl += p * (lp[j] - lq[j]) }
    if (!Number.isFinite(kl)) throw new Error(`position ${i}: KL divergence is ${kl} (logits not finite?)`)
    sum += kl
    if (kl > max) max = kl
    if (ra === ta) agree++
  }
  return { mean_kl: sum / n, max_kl: max, top1_agreement: agree / n }
}

/** Plexus's logits `[ids.length, vocab]` for every position of `ids`, one teacher-forced forward pass. */
async function plexusLogits (path: string, ids: number[]): Promise<Float32Array> {
  const m = await LocalModel.load(path)
  try {
    const s = await m.session(ids.length)
    try {
      const hidden = await s.forward(m.head.embed(ids), ids.length)
      return (await m.head.logits(hidden, ids.length, ids.length)).slice()
    } finally {
      await s.close()
    }
  } finally {
    await m.dispose()
  }
}

async function accuracy (formats: string[]): Promise<void> {
  for (const f of formats) if (!isQuantFormat(f)) { process.stderr.write(`bench:local: --quantize takes q8_0, q4_k or both, comma-separated (got ${JSON.stringify(f)})\n`); process.exit(2) }
  const backend = await initBackend(a.backend as BackendName | 'auto')
  const threads = num('threads', a.threads)
  const n = num('positions', a.positions)
  const t0 = performance.now()
  const secs = (): string => ((performance.now() - t0) / 1000).toFixed(0) + ' s'

  // The float32 references: Plexus on the model as stored, llama.cpp on its float32 GGUF.
  const src = await openModel(modelDir)
  const cfg = src.config
  await src.close()
  const V = cfg.vocabSize
  const rand = seededRandom(num('seed', a.seed))
  // One fixed sequence through every engine and format; no BOS, the ids go in as they are.
  const ids = Array.from({ length: n }, () => 3 + Math.floor(rand() * (V - 3)))
  log(`accuracy (${backend}): ${cfg.numLayers} blocks, hidden ${cfg.hiddenSize}, ${n} positions, formats ${formats.join(', ')}`)
  const plexusF32 = await plexusLogits(modelDir, ids)
  log(`  plexus f32 logits (${secs()})`)
  const llamaF32 = await llamaCppLogits(await f32Gguf(), ids, { threads })
  if (llamaF32.vocab !== V) throw new Error(`llama.cpp reports ${llamaF32.vocab} logits per position, the model has ${V}`)
  log(`  llama.cpp f32 logits (${secs()})`)
  const floor = divergence(plexusF32, llamaF32.logits, n, V)

  const rows: Array<{ format: QuantFormat, gguf_bytes: number, plexus: Divergence, llama_cpp: Divergence, llama_cpp_vs_plexus_f32: Divergence, kl_ratio: number, plexus_error_not_larger: boolean }> = []
  for (const format of formats as QuantFormat[]) {
    // The blocks' matrices quantized, embeddings and output kept float32, as `--quantize` does.
    const gguf = join(temp.dir, `model-${format}.gguf`)
    await writeGguf(modelDir, gguf, { dtype: format, quantizeHead: false })
    const { size } = await stat(gguf)
    log(`  wrote ${format} GGUF, ${(size / 2 ** 20).toFixed(0)} MiB (${secs()})`)
    const ours = await plexusLogits(gguf, ids)
    log(`  plexus ${format} logits (${secs()})`)
    const theirs = await llamaCppLogits(gguf, ids, { threads })
    log(`  llama.cpp ${format} logits (${secs()})`)
    await rm(gguf, { force: true })
    const plexus = divergence(plexusF32, ours, n, V)
    const llama = divergence(llamaF32.logits, theirs.logits, n, V)
    rows.push({
      format,
      gguf_bytes: size,
      plexus,
      llama_cpp: llama,
      llama_cpp_vs_plexus_f32: divergence(plexusF32, theirs.logits, n, V),
      kl_ratio: plexus.mean_kl / llama.mean_kl,
      plexus_error_not_larger: plexus.mean_kl <= llama.mean_kl
    })
  }

  const result = {
    mode: 'accuracy',
    model: modelDir,
    backend,
    shape: { hidden: cfg.hiddenSize, layers: cfg.numLayers, heads: cfg.numHeads, kvHeads: cfg.numKvHeads, ffn: cfg.intermediateSize, vocab: V },
    positions: n,
    seed: num('seed', a.seed),
    llama_cpp_threads: threads,
    reference: 'each engine against its own float32 logits on the same weights (Plexus: the model as stored; llama.cpp: its float32 GGUF); the GGUF keeps embeddings and output float32',
    f32_llama_cpp_vs_plexus: floor,
    formats: rows,
    seconds: (performance.now() - t0) / 1000
  }
  if (a['json-only'] !== true) {
    const e = (x: number): string => x.toExponential(2)
    const pct = (x: number): string => (100 * x).toFixed(1) + '%'
    const table: string[][] = [
      ['format', 'Plexus mean KL', 'llama.cpp mean KL', 'KL ratio Plexus / llama.cpp', 'Plexus top-1', 'llama.cpp top-1', 'Plexus max KL', 'llama.cpp max KL', 'llama.cpp vs Plexus f32 KL'],
      ...rows.map(r => [r.format, e(r.plexus.mean_kl), e(r.llama_cpp.mean_kl), r.kl_ratio.toFixed(3) + (r.plexus_error_not_larger ? ' (ok)' : ' (LARGER)'),
        pct(r.plexus.top1_agreement), pct(r.llama_cpp.top1_agreement), e(r.plexus.max_kl), e(r.llama_cpp.max_kl), e(r.llama_cpp_vs_plexus_f32.mean_kl)]),
      ['f32 (llama.cpp vs Plexus)', '', e(floor.mean_kl), '', '', pct(floor.top1_agreement), '', e(floor.max_kl), '']
    ]
    const w = table[0].map((_, i) => Math.max(...table.map(r => r[i].length)))
    for (const r of table) process.stdout.write('| ' + r.map((c, i) => c.padEnd(w[i])).join(' | ') + ' |\n')
    process.stdout.write(`${cfg.numLayers} blocks, hidden ${cfg.hiddenSize}, ${n} teacher-forced positions; KL(f32 ‖ quantized) in nats, each engine against its own f32 logits\n`)
  }
  process.stdout.write(JSON.stringify(result) + '\n')
}
