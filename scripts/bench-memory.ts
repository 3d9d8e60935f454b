// `npm run bench:memory`: the resident memory of a real `plexus-node join` process serving a span
// in q4_k, q8_0 and bf16, against what the weights should cost: RSS ≤ 1.15 × the span's bytes in
// that format + the KV cache in use + 200 MiB (issue 12). A benchmark, not a test: it prints the
// figures and a pass/fail per row.
import { parseArgs } from 'node:util'
import { spawn } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { parseModelConfig, blockTensorShapes, quantTypeFor, isQuantFormat, seededRandom } from '@plexus/runtime'
import type { ModelConfig } from '@plexus/runtime'
import { makeModel, SHAPES } from './lib/model-maker.ts'
import type { ShapeName } from './lib/model-maker.ts'
import { startNode, untilDiscoverable, CLIENT_BIN } from './lib/local-swarm.ts'
import type { NodeProcess } from './lib/local-swarm.ts'
import { benchTempDir, onExit } from './lib/bench-common.ts'

const HELP = `usage: npm run bench:memory -- [options]

  --shape NAME          model shape (default tinyllama; ${Object.keys(SHAPES).join(', ')})
  --layers N            blocks in the model, all served by the node (default 2: --quantize q4_k runs at ~2 µs a weight here)
  --model DIR           an existing bf16 model directory instead of making one
  --formats LIST        what the node serves: q4_k, q8_0, bf16 (default q4_k,q8_0,bf16); bf16 is the
                        checkpoint as stored, the others --quantize it at load
  --sessions N          client sessions, run at the same time (default 3)
  --prompt-tokens N     prompt length per session (default 64)
  --tokens N            tokens each session generates (default 16)
  --cache-mb N          the node's KV-cache budget (default 1024)
  --backend NAME        the node's backend (default auto)
  --node-arg ARG        one more argument for plexus-node join (repeatable), e.g. --node-arg=--no-offer-head
  --json-only           print only the JSON line

Makes a random bf16 model of the shape in a temporary directory (removed after), starts a bootstrap
peer and, per format, one node serving every block; reads /proc/PID/status after load and while
the sessions run. The limit per row: 1.15 × span bytes + KV-cache bytes reserved + 200 MiB.`

const { values: a } = parseArgs({
  options: {
    shape: { type: 'string', default: 'tinyllama' },
    layers: { type: 'string', default: '2' },
    model: { type: 'string' },
    formats: { type: 'string', default: 'q4_k,q8_0,bf16' },
    sessions: { type: 'string', default: '3' },
    'prompt-tokens': { type: 'string', default: '64' },
    tokens: { type: 'string', default: '16' },
    'cache-mb': { type: 'string', default: '1024' },
    backend: { type: 'string', default: 'auto' },
    'node-arg': { type: 'string', multiple: true, default: [] },
    'json-only': { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false }
  }
})
if (a.help === true) { process.stdout.write(HELP + '\n'); process.exit(0) }
const fail = (msg: string): never => { process.stderr.write(`bench:memory: ${msg}\n`); process.exit(2) }
const int = (k: string, v: string | undefined): number => {
  const n = Number(v)
  if (!Number.isInteger(n) || n <= 0) fail(`--${k} must be a positive integer`)
  return n
}
const layers = int('layers', a.layers)
const sessions = int('sessions', a.sessions)
const promptLen = int('prompt-tokens', a['prompt-tokens'])
const genLen = int('tokens', a.tokens)
const cacheMb = int('cache-mb', a['cache-mb'])
const formats = a.formats!.split(',')
for (const f of formats) if (f !== 'bf16' && !isQuantFormat(f)) fail(`--formats takes q4_k, q8_0 and bf16 (got ${JSON.stringify(f)})`)
if (a.model == null && !(a.shape! in SHAPES)) fail(`unknown shape ${JSON.stringify(a.shape)}`)
const log = (s: string): void => { if (a['json-only'] !== true) process.stderr.write(s + '\n') }
const MiB = 2 ** 20

/** Bytes of blocks [0, layers) when the linear weights are `format` (norms stay bf16, as stored). */
function spanBytes (cfg: ModelConfig, format: string): number {
  let n = 0
  for (let b = 0; b < cfg.numLayers; b++) {
    for (const shape of blockTensorShapes(cfg, b).values()) {
      const v = shape.reduce((x, y) => x * y, 1)
      const q = shape.length === 2 && isQuantFormat(format) ? quantTypeFor(format, shape[1]) : undefined
      n += q === 'Q4_K' ? v / 256 * 144 : q === 'Q8_0' ? v / 32 * 34 : 2 * v
    }
  }
  return n
}

async function procStatus (pid: number): Promise<{ rss: number, hwm: number }> {
  const s = await readFile(`/proc/${pid}/status`, 'utf8')
  const kb = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(s)?.[1] ?? NaN) * 1024
  return { rss: kb('VmRSS'), hwm: kb('VmHWM') }
}

/** KV-cache bytes the node's sessions have reserved now (its Prometheus gauge). */
async function kvReserved (port: number): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()
  return Number(/^plexus_node_cache_reserved_bytes\s+(\S+)/m.exec(text)?.[1] ?? NaN)
}

/** One `plexus-client generate` through the swarm; resolves with its JSON result. */
async function clientSession (bootstrap: string, model: string, format: string, seed: number, cfg: ModelConfig): Promise<Record<string, any>> {
  const rand = seededRandom(seed)
  const ids = Array.from({ length: promptLen }, () => 3 + Math.floor(rand() * (cfg.vocabSize - 3)))
  const args = [CLIENT_BIN, 'generate', '--bootstrap', bootstrap, '--model', model, '--token-ids', ids.join(','), '--max-tokens', String(genLen), '--json',
    ...(format !== 'bf16' ? ['--quantize', format] : [])]
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] })
  const kill = onExit(() => child.kill('SIGKILL'))
  let out = ''
  let err = ''
  child.stdout.on('data', (d: Buffer) => { out += d.toString() })
  child.stderr.on('data', (d: Buffer) => { err += d.toString() })
  const code = await new Promise<number | null>(resolve => child.once('exit', c => resolve(c)))
  kill()
  if (code !== 0) throw new Error(`plexus-client generate exited ${code}:\n${err.split('\n').slice(-20).join('\n')}`)
  return JSON.parse(out.trim().split('\n').at(-1) ?? '{}')
}

interface Row {
  format: string
  span_blocks: number
  span_bytes: number
  kv_reserved_bytes: number
  rss_after_load_bytes: number
  limit_after_load_bytes: number
  pass_after_load: boolean
  rss_with_sessions_bytes: number
  limit_with_sessions_bytes: number
  pass_with_sessions: boolean
  rss_after_sessions_bytes: number
  peak_rss_bytes: number
  rss_over_span_bytes: number
  tokens_generated: number
}

const temp = await benchTempDir('plexus-bench-memory-')
let bootstrap: NodeProcess | undefined
const rows: Row[] = []
let cfg: ModelConfig
let overhead = NaN
let modelDir: string
try {
  modelDir = a.model ?? join(temp.dir, 'model')
  if (a.model == null) {
    log(`making a ${a.shape} model (${layers} layers, bf16) in ${modelDir}…`)
    await makeModel({ shape: a.shape as ShapeName, layers, dtype: 'bf16', out: modelDir, seed: 5 })
  }
  cfg = parseModelConfig(JSON.parse(await readFile(join(modelDir, 'config.json'), 'utf8')), join(modelDir, 'config.json'))
  const L = cfg.numLayers

  bootstrap = await startNode({ name: 'bootstrap', args: ['bootstrap'] })
  const stopBootstrap = onExit(() => bootstrap?.child.kill('SIGKILL'))
  const addr = bootstrap.addrs[0]

  // What a node costs without weights to speak of (the tiny shape: 3 blocks of hidden 64, 0.3 MiB),
  // to read the rows against: the limit's 200 MiB is meant for this.
  const tinyDir = join(temp.dir, 'tiny')
  await makeModel({ shape: 'tiny', dtype: 'bf16', out: tinyDir, seed: 5 })
  const bare = await startNode({ name: 'node-tiny', timeoutMs: 300_000, args: ['join', '--bootstrap', addr, '--model', tinyDir, '--blocks', '0:3', '--backend', a.backend!, '--rebalance-interval', '0'] })
  const killBare = onExit(() => bare.child.kill('SIGKILL'))
  try {
    await new Promise(resolve => setTimeout(resolve, 2000))
    overhead = (await procStatus(bare.child.pid!)).rss
    log(`a node serving the tiny model: RSS ${(overhead / MiB).toFixed(0)} MiB`)
  } finally {
    await bare.stop()
    killBare()
  }
  for (const format of formats) {
    log(`${format}: starting a node serving blocks 0–${L - 1}…`)
    const node = await startNode({
      name: `node-${format}`,
      timeoutMs: 600_000,
      args: ['join', '--bootstrap', addr, '--model', modelDir, '--blocks', `0:${L}`, '--metrics-port', '0', '--cache-mb', String(cacheMb),
        '--backend', a.backend!, '--rebalance-interval', '0', ...(format !== 'bf16' ? ['--quantize', format] : []), ...a['node-arg']!]
    })
    const killNode = onExit(() => node.child.kill('SIGKILL'))
    try {
      const pid = node.child.pid!
      const port = node.ready.metricsPort as number
      await new Promise(resolve => setTimeout(resolve, 2000)) // let load-time garbage be collected
      const afterLoad = await procStatus(pid)
      await untilDiscoverable(addr, [node])
      // Sample while the sessions run: the largest RSS and the KV reserved at the largest reservation.
      let maxRss = 0
      let maxKv = 0
      let sampling = true
      const sampler = (async () => {
        while (sampling) {
          try {
            const [st, kv] = await Promise.all([procStatus(pid), kvReserved(port)])
            maxRss = Math.max(maxRss, st.rss)
            if (kv > maxKv) maxKv = kv
          } catch {}
          await new Promise(resolve => setTimeout(resolve, 100))
        }
      })()
      let generated = 0
      try {
        const results = await Promise.all(Array.from({ length: sessions }, async (_, i) => await clientSession(addr, modelDir, format, 100 + i, cfg)))
        generated = results.reduce((n, r) => n + (r.token_ids?.length ?? 0), 0)
      } finally {
        sampling = false
        await sampler
      }
      const after = await procStatus(pid)
      const span = spanBytes(cfg, format)
      const limitLoad = 1.15 * span + 200 * MiB
      const limitSessions = 1.15 * span + maxKv + 200 * MiB
      const withSessions = Math.max(maxRss, after.rss)
      rows.push({
        format,
        span_blocks: L,
        span_bytes: span,
        kv_reserved_bytes: maxKv,
        rss_after_load_bytes: afterLoad.rss,
        limit_after_load_bytes: limitLoad,
        pass_after_load: afterLoad.rss <= limitLoad,
        rss_with_sessions_bytes: withSessions,
        limit_with_sessions_bytes: limitSessions,
        pass_with_sessions: withSessions <= limitSessions,
        rss_after_sessions_bytes: after.rss,
        peak_rss_bytes: after.hwm,
        rss_over_span_bytes: withSessions / span,
        tokens_generated: generated
      })
      log(`  RSS after load ${(afterLoad.rss / MiB).toFixed(0)} MiB, with sessions ${(withSessions / MiB).toFixed(0)} MiB, KV reserved ${(maxKv / MiB).toFixed(0)} MiB, span ${(span / MiB).toFixed(0)} MiB`)
    } finally {
      await node.stop()
      killNode()
    }
  }
  await bootstrap.stop()
  stopBootstrap()
} finally {
  await bootstrap?.stop()
  await temp.remove()
}

const result = {
  shape: a.model != null ? a.model : a.shape,
  model: { hidden: cfg.hiddenSize, layers: cfg.numLayers, heads: cfg.numHeads, kvHeads: cfg.numKvHeads, ffn: cfg.intermediateSize, vocab: cfg.vocabSize, stored: 'bf16' },
  backend: a.backend,
  node_args: a['node-arg'],
  sessions,
  prompt_tokens: promptLen,
  tokens_per_session: genLen,
  cache_mb: cacheMb,
  limit: '1.15 × span bytes + KV-cache bytes reserved + 200 MiB',
  node_without_weights_rss_bytes: overhead,
  rows
}
if (a['json-only'] !== true) {
  const m = (b: number): string => (b / MiB).toFixed(0)
  const ok = (p: boolean): string => p ? 'pass' : 'FAIL'
  const table: string[][] = [
    ['format', 'span MiB', 'KV reserved MiB', 'RSS after load MiB', 'limit MiB', '', 'RSS with sessions MiB', 'limit MiB', '', 'RSS / span', 'peak RSS MiB'],
    ...rows.map(r => [r.format, m(r.span_bytes), m(r.kv_reserved_bytes), m(r.rss_after_load_bytes), m(r.limit_after_load_bytes), ok(r.pass_after_load),
      m(r.rss_with_sessions_bytes), m(r.limit_with_sessions_bytes), ok(r.pass_with_sessions), r.rss_over_span_bytes.toFixed(2) + '×', m(r.peak_rss_bytes)])
  ]
  const w = table[0].map((_, i) => Math.max(...table.map(r => r[i].length)))
  for (const r of table) process.stdout.write('| ' + r.map((c, i) => c.padEnd(w[i])).join(' | ') + ' |\n')
  process.stdout.write(`${cfg.numLayers} blocks of ${a.shape} (hidden ${cfg.hiddenSize}), ${sessions} sessions of ${promptLen} + ${genLen} tokens; limit = 1.15 × span + KV reserved + 200 MiB\n`)
  process.stdout.write(`a node serving the tiny model (0.3 MiB of weights), after load: ${m(overhead)} MiB\n`)
}
process.stdout.write(JSON.stringify(result) + '\n')
