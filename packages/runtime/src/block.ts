import * as tf from '@tensorflow/tfjs-core'
import type { ModelConfig } from './config.ts'
import { rawFloat32 } from './checkpoint.ts'
import type { RawTensor } from './checkpoint.ts'
import { concatRows, quantMatrixFormat } from './cpu/quant-matrix.ts'
import type { QuantMatrix, QuantMatrixFormat } from './cpu/quant-matrix.ts'
import { collectStepGarbage } from './memory.ts'

/**
 * Part of a linear projection: a float32 weight transposed to `[in, out]` for tfjs matmuls (5×
 * faster than `transposeB` on wasm), or Q8_0/Q4_K rows that the CPU kernels read as stored.
 */
export type LinearPart = tf.Tensor2D | QuantMatrix

/**
 * A linear projection `[in] → [Σ out]`: its parts' outputs side by side. The q/k/v and gate/up
 * weights are fused into one part each when they share a storage, so a step runs 4 projections
 * per block instead of 7; a mixed file (Q4_K q/k, Q6_K v) keeps one part per storage.
 */
export type Linear = LinearPart[]

/** One transformer block's weights. */
export interface BlockWeights {
  inputNorm: tf.Tensor1D
  qkv: Linear
  qkvBias?: tf.Tensor1D
  out: Linear
  postNorm: tf.Tensor1D
  gateUp: Linear
  down: Linear
}

/** One session's rows within a (possibly batched) step. */
export interface StepSegment {
  tokens: number
  /** Additive causal mask `[group·tokens, keys]`; absent for a single-token step. */
  mask?: tf.Tensor
}

/**
 * Per-step tensors shared by every block of a forward pass. Rows of several sessions may be
 * stacked (batched decode): the projections and MLP run once over all rows, attention per segment.
 */
export interface StepContext {
  /** Rows in all segments. */
  tokens: number
  /** `[tokens, 1, headDim]`, each row at its own session's position */
  cos: tf.Tensor
  sin: tf.Tensor
  segments: StepSegment[]
}

/** Keys and values of one block for one session: `[kvHeads, length, headDim]`. */
export interface LayerCache { k?: tf.Tensor3D, v?: tf.Tensor3D }

/** Writes `src` (`[rows, cols]`, row-major) transposed into columns `[offset, offset+rows)` of `dst` (`[cols, dstCols]`). */
export function transposeInto (src: Float32Array, rows: number, cols: number, dst: Float32Array, dstCols: number, offset: number): void {
  const T = 64
  for (let r0 = 0; r0 < rows; r0 += T) {
    const r1 = Math.min(rows, r0 + T)
    for (let c0 = 0; c0 < cols; c0 += T) {
      const c1 = Math.min(cols, c0 + T)
      for (let r = r0; r < r1; r++) {
        const s = r * cols
        for (let c = c0; c < c1; c++) dst[c * dstCols + offset + r] = src[s + c]
      }
    }
  }
}

/** Concatenates `[out_i, in]` weights transposed into one `[in, Σ out_i]` tensor. */
function fusedTransposed (parts: RawTensor[]): tf.Tensor2D {
  const cols = parts[0].shape[1]
  const total = parts.reduce((n, p) => n + p.shape[0], 0)
  const dst = new Float32Array(cols * total)
  let offset = 0
  for (const p of parts) {
    transposeInto(rawFloat32(p), p.shape[0], cols, dst, total, offset)
    offset += p.shape[0]
  }
  return tf.tensor2d(dst, [cols, total])
}

/**
 * Consecutive weights in one kernel format become one quantized part (their blocks, nothing
 * else: no float32 copy is made); the others are widened to one fused float32 part.
 */
function loadLinear (parts: RawTensor[]): Linear {
  return formatRuns(parts).map(({ format, parts: run }) => {
    if (format == null) return fusedTransposed(run)
    return concatRows(run.map(p => ({ format, rows: p.shape[0], cols: p.shape[1], blocks: p.bytes })))
  })
}

/** Consecutive weights in one kernel format (undefined: in none), so that each run fuses into one matrix. */
export function formatRuns (parts: RawTensor[]): Array<{ format?: QuantMatrixFormat, parts: RawTensor[] }> {
  const runs: Array<{ format?: QuantMatrixFormat, parts: RawTensor[] }> = []
  for (const p of parts) {
    const format = quantMatrixFormat(p.dtype)
    const last = runs.at(-1)
    if (last != null && last.format === format) last.parts.push(p)
    else runs.push({ format, parts: [p] })
  }
  return runs
}

/** Block `block`'s tensors by their name within the block; a missing one is an error naming it. */
export function blockTensors (block: number, raws: RawTensor[]): (name: string) => RawTensor {
  const by = new Map(raws.map(r => [r.name.slice(`model.layers.${block}.`.length), r]))
  return name => {
    const r = by.get(name)
    if (r == null) throw new Error(`block ${block}: tensor ${name} missing`)
    return r
  }
}

/** Qwen2's q, k and v biases side by side, as the fused projection's output. */
export function qkvBias (get: (name: string) => RawTensor): Float32Array {
  const b = ['q', 'k', 'v'].map(x => rawFloat32(get(`self_attn.${x}_proj.bias`)))
  const all = new Float32Array(b.reduce((n, a) => n + a.length, 0))
  let o = 0
  for (const a of b) { all.set(a, o); o += a.length }
  return all
}

export function loadBlockWeights (cfg: ModelConfig, block: number, raws: RawTensor[]): BlockWeights {
  const get = blockTensors(block, raws)
  const vec = (n: string): tf.Tensor1D => tf.tensor1d(rawFloat32(get(n)))
  const w: BlockWeights = { inputNorm: vec('input_layernorm.weight'), postNorm: vec('post_attention_layernorm.weight'), qkv: [], out: [], gateUp: [], down: [] }
  try {
    w.qkv = loadLinear([get('self_attn.q_proj.weight'), get('self_attn.k_proj.weight'), get('self_attn.v_proj.weight')])
    w.out = loadLinear([get('self_attn.o_proj.weight')])
    w.gateUp = loadLinear([get('mlp.gate_proj.weight'), get('mlp.up_proj.weight')])
    w.down = loadLinear([get('mlp.down_proj.weight')])
    if (cfg.qkvBias) w.qkvBias = tf.tensor1d(qkvBias(get))
  } catch (err) {
    disposeBlockWeights(w)
    throw err
  }
  return w
}

function linears (w: BlockWeights): LinearPart[] {
  return [...w.qkv, ...w.out, ...w.gateUp, ...w.down]
}

/** Frees the tensors and the quantized blocks (a QuantMatrix's memory is not tfjs's). */
export function disposeBlockWeights (w: BlockWeights): void {
  for (const t of [w.inputNorm, w.postNorm, w.qkvBias]) t?.dispose()
  for (const p of linears(w)) p.dispose()
}

/** Bytes the block's weights hold: float32 tensors at 4 per value, quantized parts as their blocks. */
export function blockWeightBytes (w: BlockWeights): number {
  let n = 0
  for (const t of [w.inputNorm, w.postNorm, w.qkvBias]) n += (t?.size ?? 0) * 4
  for (const p of linears(w)) n += p instanceof tf.Tensor ? p.size * 4 : p.bytes
  return n
}

/**
 * `x · W` for rows `x` `[tokens, in]`. Quantized parts run on the CPU kernels, which read the
 * activations from host memory (they quantize them per block, as llama.cpp does).
 */
function project (x: tf.Tensor2D, w: Linear): tf.Tensor2D {
  let host: Float32Array | undefined
  const outs = w.map(p => {
    if (p instanceof tf.Tensor) return tf.matMul(x, p) as tf.Tensor2D
    host ??= x.dataSync() as Float32Array
    return tf.tensor2d(p.forward(host, x.shape[0]), [x.shape[0], p.rows])
  })
  return outs.length === 1 ? outs[0] : tf.concat2d(outs, 1)
}

export function rmsNorm (x: tf.Tensor, weight: tf.Tensor, eps: number): tf.Tensor {
  return tf.tidy(() => {
    const sq = tf.square(x)
    const meanSquare = tf.mean(sq, -1, true)
    sq.dispose()
    const scaled = tf.mul(x, tf.rsqrt(tf.add(meanSquare, eps)))
    const y = tf.mul(scaled, weight)
    scaled.dispose()
    return y
  })
}

/** Rotate-half rotary embedding of `[tokens, heads, headDim]`. */
function rotary (x: tf.Tensor, ctx: StepContext, headDim: number): tf.Tensor {
  const half = headDim / 2
  const [t, h] = x.shape
  const hi = tf.slice(x, [0, 0, half], [t, h, half])
  const lo = tf.slice(x, [0, 0, 0], [t, h, half])
  const swapped = tf.concat([hi, lo], 2)
  hi.dispose(); lo.dispose()
  const a = tf.mul(x, ctx.cos)
  const b = tf.mul(swapped, ctx.sin)
  swapped.dispose()
  const y = tf.add(a, b)
  a.dispose(); b.dispose()
  return y
}

/**
 * One block on hidden states `[tokens, hidden]` (the rows of `ctx.segments`, one session each),
 * appending each segment's keys and values to its cache. Must run inside `tf.tidy`; the new cache
 * tensors are kept, the old ones disposed. Batched rows give bitwise the same results as one at a time.
 *
 * Intermediates are freed as soon as they are used, and the MLP runs in row chunks: tfjs's wasm
 * heap never shrinks, so the most a step holds at once stays resident for the node's lifetime
 * (a whole-step scope held every intermediate of every block: +45 MiB for a 64-token prefill on
 * two tinyllama blocks). The same operations on the same rows: results are unchanged.
 */
export function blockForward (cfg: ModelConfig, w: BlockWeights, x: tf.Tensor2D, ctx: StepContext, caches: LayerCache[]): tf.Tensor2D {
  const x1 = tf.tidy(() => attentionHalf(cfg, w, x, ctx, caches))
  collectStepGarbage()
  const N = ctx.tokens
  const chunk = mlpChunkRows(cfg)
  if (N <= chunk) {
    const y = tf.tidy(() => mlpRows(cfg, w, x1))
    x1.dispose()
    collectStepGarbage()
    return y
  }
  const parts: tf.Tensor2D[] = []
  for (let r = 0; r < N; r += chunk) {
    const n = Math.min(chunk, N - r)
    parts.push(tf.tidy(() => mlpRows(cfg, w, tf.slice(x1, [r, 0], [n, cfg.hiddenSize]))))
    collectStepGarbage()
  }
  x1.dispose()
  const y = tf.concat2d(parts, 0)
  for (const p of parts) p.dispose()
  return y
}

/** Bytes of gate/up intermediates (4 × FFN floats a row) the MLP holds at once; tests lower it. */
export const mlpChunking = { bytes: 4 * 2 ** 20 }

/** Rows of the MLP at once: a power of two within `mlpChunking.bytes`, at least 16. */
export function mlpChunkRows (cfg: ModelConfig): number {
  return Math.max(16, 2 ** Math.floor(Math.log2(mlpChunking.bytes / (16 * cfg.intermediateSize))))
}

/** `x` + attention of its rows over their sessions' caches (which it extends). */
function attentionHalf (cfg: ModelConfig, w: BlockWeights, x: tf.Tensor2D, ctx: StepContext, caches: LayerCache[]): tf.Tensor2D {
  const N = ctx.tokens
  const d = cfg.headDim
  const nKv = cfg.numKvHeads
  const qDim = cfg.numHeads * d
  const kvDim = nKv * d

  const qkv = tf.tidy(() => {
    const t = project(rmsNorm(x, w.inputNorm, cfg.rmsNormEps) as tf.Tensor2D, w.qkv)
    return w.qkvBias != null ? tf.add(t, w.qkvBias) : t
  })
  const [q, k, v] = tf.tidy(() => [
    rotary(tf.reshape(tf.slice(qkv, [0, 0], [N, qDim]), [N, cfg.numHeads, d]), ctx, d),
    rotary(tf.reshape(tf.slice(qkv, [0, qDim], [N, kvDim]), [N, nKv, d]), ctx, d),
    tf.reshape(tf.slice(qkv, [0, qDim + kvDim], [N, kvDim]), [N, nKv, d])
  ])
  qkv.dispose()

  let merged: tf.Tensor
  if (ctx.segments.length === 1) {
    merged = tf.tidy(() => attention(cfg, q, k, v, ctx.segments[0], caches[0]))
  } else {
    const parts: tf.Tensor[] = []
    let row = 0
    ctx.segments.forEach((seg, i) => {
      const T = seg.tokens
      const r = row
      parts.push(tf.tidy(() => attention(cfg, tf.slice(q, [r, 0, 0], [T, cfg.numHeads, d]), tf.slice(k, [r, 0, 0], [T, nKv, d]), tf.slice(v, [r, 0, 0], [T, nKv, d]), seg, caches[i])))
      row += T
    })
    merged = tf.concat(parts, 0)
    for (const p of parts) p.dispose()
  }
  q.dispose(); k.dispose(); v.dispose()
  const o = project(merged as tf.Tensor2D, w.out)
  merged.dispose()
  return tf.add(x, o)
}

/** `x` + the MLP of its rows, each intermediate freed once used. */
function mlpRows (cfg: ModelConfig, w: BlockWeights, x: tf.Tensor2D): tf.Tensor2D {
  const n = x.shape[0]
  const F = cfg.intermediateSize
  const gu = tf.tidy(() => project(rmsNorm(x, w.postNorm, cfg.rmsNormEps) as tf.Tensor2D, w.gateUp))
  const gate = tf.slice(gu, [0, 0], [n, F])
  const up = tf.slice(gu, [0, F], [n, F])
  gu.dispose()
  const sig = tf.sigmoid(gate)
  const silu = tf.mul(gate, sig)
  sig.dispose(); gate.dispose()
  const act = tf.mul(silu, up)
  silu.dispose(); up.dispose()
  const down = project(act as tf.Tensor2D, w.down)
  act.dispose()
  return tf.add(x, down)
}

/** Grouped-query attention of one session's rows against its cache (which it extends). */
function attention (cfg: ModelConfig, q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, seg: StepSegment, cache: LayerCache): tf.Tensor {
  const T = seg.tokens
  const d = cfg.headDim
  const nKv = cfg.numKvHeads
  const g = cfg.numHeads / nKv
  // q head i uses kv head ⌊i/g⌋: group the g query heads of each kv head as extra rows.
  const qg = tf.tidy(() => tf.reshape(tf.transpose(tf.reshape(tf.mul(q, 1 / Math.sqrt(d)), [T, nKv, g, d]), [1, 2, 0, 3]), [nKv, g * T, d]))
  const kNew = tf.transpose(k, [1, 0, 2]) as tf.Tensor3D
  const vNew = tf.transpose(v, [1, 0, 2]) as tf.Tensor3D
  const keys = cache.k == null ? kNew : tf.concat([cache.k, kNew], 1)
  const values = cache.v == null ? vNew : tf.concat([cache.v, vNew], 1)
  cache.k?.dispose()
  cache.v?.dispose()
  cache.k = tf.keep(keys)
  cache.v = tf.keep(values)

  // each [heads, rows, keys] intermediate freed once the next exists (they grow with rows × keys)
  let scores = tf.matMul(qg, keys, false, true)
  qg.dispose()
  if (seg.mask != null) { const masked = tf.add(scores, seg.mask); scores.dispose(); scores = masked }
  const probs = tf.softmax(scores)
  scores.dispose()
  const attn = tf.matMul(probs, values)
  probs.dispose()
  return tf.reshape(tf.transpose(tf.reshape(attn, [nKv, g, T, d]), [2, 0, 1, 3]), [T, cfg.numHeads * d])
}
