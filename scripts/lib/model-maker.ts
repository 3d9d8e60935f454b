import { mkdir, readdir, rm, writeFile } from 'node:fs/promises'
import { availableParallelism } from 'node:os'
import { join } from 'node:path'
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads'
import { parseModelConfig, blockTensorShapes, headTensorShapes } from '@plexus/runtime'
import type { ModelConfig } from '@plexus/runtime'
import { DTYPE_BYTES } from '@plexus/runtime'
import type { DType } from '@plexus/runtime'
import { writeSafetensors } from '@plexus/runtime'
import type { TensorToWrite } from '@plexus/runtime'
import { writeTokenizer } from './make-tokenizer.ts'
import { CHAT_TEMPLATE_NAMES } from './chat-templates.ts'
import type { ChatTemplateName } from './chat-templates.ts'
import { writeGguf } from './gguf.ts'
import type { GgufDType } from './gguf.ts'
import { Checkpoint } from '@plexus/runtime'
import { loadManifest, MANIFEST_FILE } from '@plexus/runtime'

export interface ModelShape {
  hiddenSize: number
  numLayers: number
  numHeads: number
  numKvHeads: number
  intermediateSize: number
  vocabSize: number
  /** Defaults: 10000, no scaling, 2048 positions. */
  ropeTheta?: number
  ropeScaling?: { factor: number, lowFreqFactor: number, highFreqFactor: number, originalMaxPositions: number }
  maxPositions?: number
}

export const SHAPES = {
  tiny: { hiddenSize: 64, numLayers: 3, numHeads: 4, numKvHeads: 2, intermediateSize: 192, vocabSize: 512 },
  small: { hiddenSize: 768, numLayers: 12, numHeads: 12, numKvHeads: 4, intermediateSize: 2048, vocabSize: 32000 },
  tinyllama: { hiddenSize: 2048, numLayers: 22, numHeads: 32, numKvHeads: 4, intermediateSize: 5632, vocabSize: 32000 },
  // Llama 3.1 8B's shape, rope and context (cut it with `layers` and `vocab` for benchmarks).
  'llama3-8b': {
    hiddenSize: 4096,
    numLayers: 32,
    numHeads: 32,
    numKvHeads: 8,
    intermediateSize: 14336,
    vocabSize: 128256,
    ropeTheta: 500000,
    ropeScaling: { factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192 },
    maxPositions: 131072
  }
} as const satisfies Record<string, ModelShape>

export type ShapeName = keyof typeof SHAPES
export type WeightDType = 'f32' | 'bf16' | 'f16'

export interface MakeModelOptions {
  /** A named shape, or explicit dimensions. */
  shape: ShapeName | ModelShape
  out: string
  dtype?: WeightDType
  seed?: number
  /** 1 (default) writes `model.safetensors`; K > 1 writes K shards plus the index. */
  shards?: number
  arch?: 'llama' | 'qwen2'
  /** Tie the LM head to the embeddings (no `lm_head.weight`). */
  tie?: boolean
  /** Overrides the shape's layer count. */
  layers?: number
  /** Overrides the shape's vocabulary size (embeddings, LM head and tokenizer). */
  vocab?: number
  /** Also write `model.gguf` for llama.cpp (f16 when the weights are f16, else f32 unless given). */
  gguf?: boolean | { dtype: GgufDType }
  /** The model's name in its manifest (default: the shape's name). */
  name?: string
  /** Worker threads generating weights (default: available cores); results do not depend on it. */
  workers?: number
  /** The chat template family, with its special tokens and end-of-turn EOS (default chatml: a minimal template without tools). */
  chatTemplate?: ChatTemplateName
}

const ST_DTYPE: Record<WeightDType, DType> = { f32: 'F32', bf16: 'BF16', f16: 'F16' }
const TORCH_DTYPE: Record<WeightDType, string> = { f32: 'float32', bf16: 'bfloat16', f16: 'float16' }

/** Random values are drawn in fixed chunks, each with its own seed, so any number of workers gives the same bytes. */
const CHUNK = 1 << 20
/** Tensors smaller than this are generated on the main thread (worker start-up would cost more). */
const WORKER_MIN = 1 << 22

/** The Hugging Face `config.json` for a shape. */
export function modelConfigJson (shape: ModelShape, opts: { arch?: 'llama' | 'qwen2', tie?: boolean, dtype?: WeightDType } = {}): Record<string, unknown> {
  const common = {
    bos_token_id: 1,
    eos_token_id: 2,
    hidden_act: 'silu',
    hidden_size: shape.hiddenSize,
    initializer_range: 0.02,
    intermediate_size: shape.intermediateSize,
    max_position_embeddings: shape.maxPositions ?? 2048,
    num_attention_heads: shape.numHeads,
    num_hidden_layers: shape.numLayers,
    num_key_value_heads: shape.numKvHeads,
    rms_norm_eps: 1e-5,
    rope_theta: shape.ropeTheta ?? 10000,
    ...(shape.ropeScaling != null
      ? {
          rope_scaling: {
            factor: shape.ropeScaling.factor,
            low_freq_factor: shape.ropeScaling.lowFreqFactor,
            high_freq_factor: shape.ropeScaling.highFreqFactor,
            original_max_position_embeddings: shape.ropeScaling.originalMaxPositions,
            rope_type: 'llama3'
          }
        }
      : {}),
    tie_word_embeddings: opts.tie === true,
    torch_dtype: TORCH_DTYPE[opts.dtype ?? 'f32'],
    use_cache: true,
    vocab_size: shape.vocabSize
  }
  if (opts.arch === 'qwen2') {
    return {
      architectures: ['Qwen2ForCausalLM'],
      model_type: 'qwen2',
      max_window_layers: shape.numLayers,
      sliding_window: 2048,
      use_sliding_window: false,
      ...common
    }
  }
  return { architectures: ['LlamaForCausalLM'], model_type: 'llama', attention_bias: false, mlp_bias: false, ...common }
}

/** Tensor names in Hugging Face state-dict order (embeddings, blocks, final norm, head). */
export function tensorList (cfg: ModelConfig): { name: string, shape: number[] }[] {
  const head = headTensorShapes(cfg)
  const out: { name: string, shape: number[] }[] = []
  const push = (name: string, shape: number[] | undefined): void => { if (shape != null) out.push({ name, shape }) }
  push('model.embed_tokens.weight', head.get('model.embed_tokens.weight'))
  for (let b = 0; b < cfg.numLayers; b++) {
    for (const [name, shape] of blockTensorShapes(cfg, b)) push(name, shape)
  }
  push('model.norm.weight', head.get('model.norm.weight'))
  push('lm_head.weight', head.get('lm_head.weight'))
  return out
}

/** How a tensor is initialised: normal(mean, std). */
export function initFor (name: string, shape: number[]): { mean: number, std: number } {
  if (name.endsWith('embed_tokens.weight')) return { mean: 0, std: 1 }
  if (name.endsWith('norm.weight')) return { mean: 1, std: 0.05 }
  if (name.endsWith('.bias')) return { mean: 0, std: 0.1 }
  // Wide enough that logits are peaked and greedy decoding keeps changing token.
  return { mean: 0, std: 2 / Math.sqrt(shape[1]) }
}

/** Writes a complete random-weight Hugging Face model directory (plus tokenizer, optionally GGUF). */
export async function makeModel (opts: MakeModelOptions): Promise<void> {
  const base: ModelShape = typeof opts.shape === 'string' ? SHAPES[opts.shape] : opts.shape
  if (base == null) throw new Error(`unknown shape ${JSON.stringify(opts.shape)} (known: ${Object.keys(SHAPES).join(', ')})`)
  for (const [k, v] of [['layers', opts.layers], ['vocab', opts.vocab]] as const) {
    if (v != null && (!Number.isInteger(v) || v < 1)) throw new Error(`${k} must be a positive integer (got ${v})`)
  }
  const shape: ModelShape = { ...base, numLayers: opts.layers ?? base.numLayers, vocabSize: opts.vocab ?? base.vocabSize }
  const dtype = opts.dtype ?? 'f32'
  if (!(dtype in ST_DTYPE)) throw new Error(`unknown dtype ${JSON.stringify(dtype)} (use f32, bf16 or f16)`)
  const seed = opts.seed ?? 0
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) throw new Error(`seed must be an integer in 0..4294967295 (got ${seed})`)
  const arch = opts.arch ?? 'llama'
  if (arch !== 'llama' && arch !== 'qwen2') throw new Error(`unknown arch ${JSON.stringify(arch)} (use llama or qwen2)`)

  const workers = opts.workers ?? Math.max(1, availableParallelism())
  if (!Number.isInteger(workers) || workers < 1) throw new Error(`workers must be a positive integer (got ${workers})`)

  const configJson = modelConfigJson(shape, { arch, tie: opts.tie, dtype })
  const cfg = parseModelConfig(configJson, 'generated config')
  const tensors = tensorList(cfg)
  const shards = opts.shards ?? 1
  if (!Number.isInteger(shards) || shards < 1 || shards > tensors.length) {
    throw new Error(`shards must be an integer in 1..${tensors.length} for this model (got ${shards})`)
  }

  await mkdir(opts.out, { recursive: true })
  await removeOldWeights(opts.out)
  const chatTemplate = opts.chatTemplate ?? 'chatml'
  if (!CHAT_TEMPLATE_NAMES.includes(chatTemplate)) throw new Error(`unknown chat template ${JSON.stringify(chatTemplate)} (use ${CHAT_TEMPLATE_NAMES.join(', ')})`)
  const ids = await writeTokenizer(opts.out, { vocabSize: shape.vocabSize, chatTemplate })
  // The family's BOS and end-of-turn tokens, as its checkpoints name them (chatml: 1 and 2, as before).
  const eos = ids.eosTokenIds.length === 1 ? ids.eosTokenIds[0] : ids.eosTokenIds
  await writeJson(join(opts.out, 'config.json'), { ...configJson, bos_token_id: ids.bosTokenId, eos_token_id: eos })
  await writeJson(join(opts.out, 'generation_config.json'), { bos_token_id: ids.bosTokenId, eos_token_id: eos, do_sample: false })

  const stDtype = ST_DTYPE[dtype]
  const totalElems = tensors.reduce((a, t) => a + numel(t.shape), 0)
  const pool = totalElems >= WORKER_MIN ? new NormalPool(workers) : undefined
  try {
    const toWrite = (t: { name: string, shape: number[] }): TensorToWrite => ({
      name: t.name,
      dtype: stDtype,
      shape: t.shape,
      data: async () => await randomTensor(t.name, t.shape, seed, pool)
    })
    const meta = { format: 'pt' }
    if (shards === 1) {
      await writeSafetensors(join(opts.out, 'model.safetensors'), sortedByName(tensors).map(toWrite), meta)
    } else {
      const groups = splitShards(tensors, shards)
      const weightMap: Record<string, string> = {}
      for (let i = 0; i < groups.length; i++) {
        const file = shardName(i + 1, groups.length)
        for (const t of groups[i]) weightMap[t.name] = file
        await writeSafetensors(join(opts.out, file), sortedByName(groups[i]).map(toWrite), meta)
      }
      const sortedMap = Object.fromEntries(Object.keys(weightMap).sort().map(k => [k, weightMap[k]]))
      const totalSize = totalElems * DTYPE_BYTES[stDtype]
      await writeJson(join(opts.out, 'model.safetensors.index.json'), { metadata: { total_size: totalSize }, weight_map: sortedMap })
    }
  } finally {
    await pool?.close()
  }

  // The model id (config + per-block digests), so servers need not hash the whole model again.
  const ckpt = await Checkpoint.open(opts.out)
  try { await loadManifest(ckpt, { name: opts.name ?? (typeof opts.shape === 'string' ? opts.shape : 'custom') }) } finally { await ckpt.close() }

  if (opts.gguf != null && opts.gguf !== false) {
    const ggufDtype = typeof opts.gguf === 'object' ? opts.gguf.dtype : (dtype === 'f16' ? 'f16' : 'f32')
    await writeGguf(opts.out, join(opts.out, 'model.gguf'), { dtype: ggufDtype })
  }
}

export function shardName (i: number, k: number): string {
  const pad = (n: number): string => String(n).padStart(5, '0')
  return `model-${pad(i)}-of-${pad(k)}.safetensors`
}

/** Splits tensors (kept in model order) into k non-empty runs of roughly equal bytes. */
export function splitShards<T extends { shape: number[] }> (tensors: T[], k: number): T[][] {
  const total = tensors.reduce((a, t) => a + numel(t.shape), 0)
  const groups: T[][] = Array.from({ length: k }, () => [])
  let acc = 0
  let g = 0
  for (let i = 0; i < tensors.length; i++) {
    const left = tensors.length - i
    // Move on once this shard has its share, but never leave a later shard empty.
    if (groups[g].length > 0 && g < k - 1 && (acc >= (g + 1) * total / k || left <= k - 1 - g)) g++
    groups[g].push(tensors[i])
    acc += numel(tensors[i].shape)
  }
  return groups
}

async function removeOldWeights (dir: string): Promise<void> {
  // A stale index or shard from an earlier run would be read instead of (or mixed with) the new weights.
  for (const f of await readdir(dir)) {
    if (/^model(-\d{5}-of-\d{5})?\.safetensors$/.test(f) || f === 'model.safetensors.index.json' || f === 'model.gguf' || f === MANIFEST_FILE) {
      await rm(join(dir, f))
    }
  }
}

function sortedByName<T extends { name: string }> (ts: T[]): T[] {
  return [...ts].sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0)
}

async function writeJson (path: string, value: unknown): Promise<void> {
  await writeFile(path, JSON.stringify(value, null, 2) + '\n')
}

function numel (shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1)
}

// ---- deterministic normals -------------------------------------------------------------

function fnv1a (s: string): number {
  let h = 0x811c9dc5
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193)
  return h >>> 0
}

function mix32 (x: number): number {
  x = Math.imul(x ^ (x >>> 16), 0x7feb352d)
  x = Math.imul(x ^ (x >>> 15), 0x846ca68b)
  return (x ^ (x >>> 16)) >>> 0
}

/** Seed of one chunk of one tensor: independent of sharding, dtype and worker count. */
export function chunkSeed (seed: number, name: string, chunk: number): number {
  return mix32(mix32(seed ^ 0x5bd1e995) ^ fnv1a(name) ^ mix32(chunk + 0x9e3779b9))
}

// cos/sin of 2π·k/1024; the remaining angle (< 2π/1024) goes through short Taylor series, exact to
// double rounding and about twice as fast as Math.cos + Math.sin.
const TRIG_BITS = 10
const COS_T = new Float64Array(1 << TRIG_BITS)
const SIN_T = new Float64Array(1 << TRIG_BITS)
for (let k = 0; k < COS_T.length; k++) { COS_T[k] = Math.cos(2 * Math.PI * k / COS_T.length); SIN_T[k] = Math.sin(2 * Math.PI * k / COS_T.length) }

/** Fills `out` with normal(mean, std) values: sfc32 uniforms through Box–Muller. */
export function fillNormal (out: Float32Array, seed: number, mean: number, std: number): void {
  let a = seed >>> 0
  let b = mix32(seed + 1)
  let c = mix32(seed + 2)
  let d = 1
  let t = 0
  for (let i = 0; i < 12; i++) { t = (a + b | 0) + d | 0; d = d + 1 | 0; a = b ^ (b >>> 9); b = c + (c << 3) | 0; c = (c << 21 | c >>> 11) + t | 0 }
  const INV = 1 / 4294967296
  const LOW_SCALE = 2 * Math.PI * INV
  const LOW_MASK = (1 << (32 - TRIG_BITS)) - 1
  for (let i = 0; i < out.length; i += 2) {
    t = (a + b | 0) + d | 0; d = d + 1 | 0; a = b ^ (b >>> 9); b = c + (c << 3) | 0; c = (c << 21 | c >>> 11) + t | 0
    const u1 = ((t >>> 0) + 0.5) * INV // (0, 1): log never sees 0
    t = (a + b | 0) + d | 0; d = d + 1 | 0; a = b ^ (b >>> 9); b = c + (c << 3) | 0; c = (c << 21 | c >>> 11) + t | 0
    const r = Math.sqrt(-2 * Math.log(u1)) * std
    // θ = 2π·t/2^32 split into a table angle (top bits) and a small remainder x.
    const k = t >>> (32 - TRIG_BITS)
    const x = (t & LOW_MASK) * LOW_SCALE
    const x2 = x * x
    const cx = 1 - x2 * (0.5 - x2 * (1 / 24 - x2 / 720))
    const sx = x * (1 - x2 * (1 / 6 - x2 * (1 / 120 - x2 / 5040)))
    const ck = COS_T[k]
    const sk = SIN_T[k]
    out[i] = mean + r * (ck * cx - sk * sx)
    if (i + 1 < out.length) out[i + 1] = mean + r * (sk * cx + ck * sx)
  }
}

/** The random values of one named tensor, generated chunk by chunk (in workers when given a pool). */
export async function randomTensor (name: string, shape: number[], seed: number, pool?: NormalPool): Promise<Float32Array> {
  const { mean, std } = initFor(name, shape)
  const n = numel(shape)
  if (pool == null || n < WORKER_MIN) {
    const out = new Float32Array(n)
    for (let c = 0; c * CHUNK < n; c++) fillNormal(out.subarray(c * CHUNK, Math.min(n, (c + 1) * CHUNK)), chunkSeed(seed, name, c), mean, std)
    return out
  }
  const sab = new SharedArrayBuffer(n * 4)
  const jobs: Promise<void>[] = []
  for (let c = 0; c * CHUNK < n; c++) {
    jobs.push(pool.run({ sab, start: c * CHUNK, length: Math.min(CHUNK, n - c * CHUNK), seed: chunkSeed(seed, name, c), mean, std }))
  }
  await Promise.all(jobs)
  return new Float32Array(sab)
}

interface FillJob { sab: SharedArrayBuffer, start: number, length: number, seed: number, mean: number, std: number }

/** Worker threads that run `fillNormal` on slices of shared buffers. */
export class NormalPool {
  private readonly workers: Worker[] = []
  private readonly idle: Worker[] = []
  private readonly queue: { job: FillJob, done: () => void, fail: (e: Error) => void }[] = []
  private readonly pending = new Map<Worker, { done: () => void, fail: (e: Error) => void }>()

  constructor (size: number) {
    for (let i = 0; i < size; i++) {
      const w = new Worker(new URL(import.meta.url), { workerData: { plexusNormalWorker: true } })
      w.on('message', () => { const p = this.pending.get(w); this.pending.delete(w); this.idle.push(w); this.pump(); p?.done() })
      w.on('error', (err) => this.failAll(err))
      this.workers.push(w)
      this.idle.push(w)
    }
  }

  async run (job: FillJob): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.queue.push({ job, done: resolve, fail: reject })
      this.pump()
    })
  }

  private pump (): void {
    while (this.idle.length > 0 && this.queue.length > 0) {
      const w = this.idle.pop() as Worker
      const item = this.queue.shift() as (typeof this.queue)[number]
      this.pending.set(w, { done: item.done, fail: item.fail })
      w.postMessage(item.job)
    }
  }

  private failAll (err: Error): void {
    // A dead worker would leave its job (and everything queued behind it) waiting forever.
    for (const p of this.pending.values()) p.fail(err)
    for (const q of this.queue) q.fail(err)
    this.pending.clear()
    this.queue.length = 0
  }

  async close (): Promise<void> {
    await Promise.all(this.workers.map(async w => await w.terminate()))
  }
}

if (!isMainThread && workerData?.plexusNormalWorker === true && parentPort != null) {
  const port = parentPort
  port.on('message', (job: FillJob) => {
    fillNormal(new Float32Array(job.sab, job.start * 4, job.length), job.seed, job.mean, job.std)
    port.postMessage(0)
  })
}
