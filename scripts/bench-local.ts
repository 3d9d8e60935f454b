// `npm run bench:local -- --model DIR`: single-machine prefill/decode speed of Plexus's runtime
// against llama.cpp (node-llama-cpp) on the same weights, in the same run.
import { parseArgs } from 'node:util'
import { access } from 'node:fs/promises'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { initBackend, LocalModel, generate, blockBytes, seededRandom } from '@plexus/runtime'
import type { BackendName } from '@plexus/runtime'
import { writeGguf } from './lib/gguf.ts'
import { runLlamaCpp } from './lib/llama-baseline.ts'

const HELP = `usage: npm run bench:local -- --model DIR [options]

  --model DIR           Hugging Face model directory (make one: npm run make-model -- --shape small --out DIR)
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
if (a.help === true || a.model == null) {
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

const backend = await initBackend(a.backend as BackendName | 'auto')
const model = await LocalModel.load(a.model)
const cfg = model.config
const rand = seededRandom(42)
const prompt = Array.from({ length: promptLen }, () => 3 + Math.floor(rand() * (cfg.vocabSize - 3)))

// One warm-up generation, then the measured one.
log(`plexus (${backend}): ${cfg.numLayers} blocks, hidden ${cfg.hiddenSize}, ${model.spans.length} span(s)`)
const warm = await model.session(promptLen + 4)
await generate(model.head, warm, prompt, { maxTokens: 4 })
await warm.close()
const session = await model.session(promptLen + genLen)
const ours = await generate(model.head, session, prompt, { maxTokens: genLen })
await session.close()
await model.dispose()
const peakRssMiB = process.resourceUsage().maxRSS / 1024

const weightBytesPerToken = cfg.numLayers * blockBytes(cfg) + 4 * cfg.vocabSize * cfg.hiddenSize
const ceiling = (num('bandwidth', a.bandwidth) * 1e9) / weightBytesPerToken

let llama: { prefill: number, decode: number, sameTokens: number } | undefined
if (a['no-llama'] !== true) {
  let gguf = join(a.model, 'model.gguf')
  try { await access(gguf) } catch {
    gguf = join(tmpdir(), `plexus-bench-${process.pid}.gguf`)
    log(`writing ${gguf} (float32, same weights) for llama.cpp…`)
    await writeGguf(a.model, gguf, { dtype: 'f32' })
  }
  const r = await runLlamaCpp(gguf, prompt, genLen, { threads: num('threads', a.threads) })
  let same = 0
  while (same < r.tokenIds.length && r.tokenIds[same] === ours.tokenIds[same]) same++
  llama = { prefill: r.prefillTokensPerSecond, decode: r.decodeTokensPerSecond, sameTokens: same }
}

const result = {
  model: a.model,
  backend,
  shape: { hidden: cfg.hiddenSize, layers: cfg.numLayers, heads: cfg.numHeads, kvHeads: cfg.numKvHeads, ffn: cfg.intermediateSize, vocab: cfg.vocabSize },
  prompt_tokens: promptLen,
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
