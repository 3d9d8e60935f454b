import { halfTable } from '../dtype.ts'
import { QK8_0, Q8_0_BLOCK_BYTES, QK_K, Q4_K_BLOCK_BYTES, Q5_K_BLOCK_BYTES, Q6_K_BLOCK_BYTES } from '../quant/quantize.ts'

// Scalar JS versions of the CPU kernels' arithmetic: activations are quantized per block (int16
// for q8_0 weights, llama.cpp's q8_K for the k-quants) and multiplied with the weights' integers;
// only the block scales are floats. The wasm kernels compute the same integers; tests use these
// to build their references.

const f = Math.fround

/** Activations quantized per block: int16 for q8_0 weights, ggml's q8_K (int8) for the k-quants. */
export interface QuantizedActivations {
  /** the integers, one per input value */
  q: Int16Array | Int8Array
  /** one float32 scale per block */
  d: Float32Array
  /** q8_K only: sums of each 16 values' q (ggml's bsums) */
  bsums?: Int32Array
}

const f32 = new Float32Array(1)
const i32 = new Int32Array(f32.buffer)
/** ggml's nearest_int: round half to even through the float bits of `v + 1.5·2^23`. */
function nearestInt (v: number): number {
  f32[0] = v + 12582912
  return (i32[0] & 0x007fffff) - 0x00400000
}

/** The kernels' quantize_i16, for q8_0 weights: d = amax/32767, q = round-half-even(x · 32767/amax). */
export function quantizeActI16 (x: Float32Array): QuantizedActivations {
  const nb = x.length / QK8_0
  const q = new Int16Array(x.length)
  const d = new Float32Array(nb)
  for (let b = 0; b < nb; b++) {
    let amax = 0
    for (let j = 0; j < QK8_0; j++) amax = Math.max(amax, Math.abs(x[b * QK8_0 + j]))
    d[b] = f(amax / 32767)
    const id = amax !== 0 ? f(32767 / amax) : 0
    for (let j = 0; j < QK8_0; j++) q[b * QK8_0 + j] = nearestInt(f(x[b * QK8_0 + j] * id))
  }
  return { q, d }
}

/** quantize_row_q8_K_ref: the signed value of largest magnitude maps to −127; d = 1/iscale in f32. */
export function quantizeActQ8_K (x: Float32Array): QuantizedActivations {
  const nb = x.length / QK_K
  const q = new Int8Array(x.length)
  const d = new Float32Array(nb)
  const bsums = new Int32Array(nb * 16)
  for (let b = 0; b < nb; b++) {
    const o = b * QK_K
    let amax = 0; let max = 0
    for (let j = 0; j < QK_K; j++) { const a = Math.abs(x[o + j]); if (a > amax) { amax = a; max = x[o + j] } }
    if (amax === 0) continue
    const iscale = f(-127 / max)
    for (let j = 0; j < QK_K; j++) q[o + j] = Math.min(127, nearestInt(f(iscale * x[o + j])))
    for (let j = 0; j < 16; j++) {
      let s = 0
      for (let i = 0; i < 16; i++) s += q[o + 16 * j + i]
      bsums[b * 16 + j] = s
    }
    d[b] = f(1 / iscale)
  }
  return { q, d, bsums }
}

/** The activations as the kernels see them: q · d per value. */
export function dequantizeActivations (a: QuantizedActivations, block: number): Float32Array {
  const out = new Float32Array(a.q.length)
  for (let i = 0; i < out.length; i++) out[i] = a.q[i] * a.d[Math.floor(i / block)]
  return out
}

/** One row of bf16 or f16 weights (at value `wo`) · one token's float32 activations (at `xo`), as the kernel sums it. */
export function dot16 (format: 'bf16' | 'f16', w: Uint8Array, wo: number, x: Float32Array, xo: number, cols: number): number {
  const bits = new Uint16Array(w.buffer, w.byteOffset, w.byteLength / 2)
  const u = new Uint32Array(1)
  const wf = new Float32Array(u.buffer)
  const half = halfTable()
  // lane l of the kernel's two accumulators sums columns ≡ l and ≡ l + 4 (mod 8), then both add
  const lanes = new Float32Array(8)
  for (let c = 0; c < cols; c++) {
    u[0] = bits[wo + c] << 16
    const wv = format === 'bf16' ? wf[0] : half[bits[wo + c]]
    lanes[c % 8] = f(lanes[c % 8] + f(wv * x[xo + c]))
  }
  const v = [0, 1, 2, 3].map(l => f(lanes[l] + lanes[l + 4]))
  return f(f(f(v[0] + v[1]) + v[2]) + v[3])
}

/** One row of q8_0 weights (at byte `wo`) · one token's int16 activations (block offset `xb`). */
export function dotQ8_0 (w: Uint8Array, wo: number, a: QuantizedActivations, xb: number, nb: number): number {
  const half = halfTable()
  const wq = new Int8Array(w.buffer, w.byteOffset, w.byteLength)
  let sum = 0
  for (let b = 0; b < nb; b++) {
    const o = wo + b * Q8_0_BLOCK_BYTES
    let sumi = 0
    for (let j = 0; j < QK8_0; j++) sumi += wq[o + 2 + j] * a.q[(xb + b) * QK8_0 + j]
    sum += f(half[w[o] | (w[o + 1] << 8)] * a.d[xb + b]) * sumi
  }
  return sum
}

/** ggml's get_scale_min_k4: the j-th 6-bit scale and min of a q4_K block's 12 scale bytes at `o`. */
export function scaleMinK4 (b: Uint8Array, o: number, j: number): [number, number] {
  if (j < 4) return [b[o + j] & 63, b[o + j + 4] & 63]
  return [(b[o + j + 4] & 0xf) | ((b[o + j - 4] >> 6) << 4), (b[o + j + 4] >> 4) | ((b[o + j] >> 6) << 4)]
}

/**
 * One row of q4_K weights · one token's q8_K activations (super-block offset `xb`), as
 * ggml_vec_dot_q4_K_q8_K: d·dy·Σ scale_j·(q4·q8)_j − dmin·dy·Σ min_j·(bsums of sub-block j).
 */
export function dotQ4_K (w: Uint8Array, wo: number, a: QuantizedActivations, xb: number, nb: number): number {
  return dotQ45_K(w, wo, a, xb, nb, false)
}

/**
 * One row of q5_K weights · one token's q8_K activations, as ggml_vec_dot_q5_K_q8_K: q4_K's sum
 * with a fifth bit per weight (bit j of qh[l] for value l of sub-block j).
 */
export function dotQ5_K (w: Uint8Array, wo: number, a: QuantizedActivations, xb: number, nb: number): number {
  return dotQ45_K(w, wo, a, xb, nb, true)
}

/**
 * q4_K and q5_K (the same block but for q5_K's 32 bytes of fifth bits before the nibbles), float
 * for float the kernels' arithmetic: integer sums per super-block, then float32 scales and one
 * float32 sum.
 */
function dotQ45_K (w: Uint8Array, wo: number, a: QuantizedActivations, xb: number, nb: number, fifth: boolean): number {
  const half = halfTable()
  const blockBytes = fifth ? Q5_K_BLOCK_BYTES : Q4_K_BLOCK_BYTES
  let acc = 0
  for (let b = 0; b < nb; b++) {
    const o = wo + b * blockBytes
    const x = (xb + b) * QK_K
    let sumi = 0; let summ = 0
    for (let j = 0; j < 8; j++) {
      const [sc, m] = scaleMinK4(w, o + 4, j)
      // sub-block j: low nibbles of bytes 32·(j>>1).. for even j, high nibbles for odd j
      const qs = o + (fifth ? 48 : 16) + 32 * (j >> 1)
      let dot = 0
      for (let l = 0; l < 32; l++) {
        const low = (j & 1) === 0 ? w[qs + l] & 0xf : w[qs + l] >> 4
        dot += (fifth ? low | (((w[o + 16 + l] >> j) & 1) << 4) : low) * a.q[x + 32 * j + l]
      }
      sumi += sc * dot
      summ += m * (a.bsums![(xb + b) * 16 + 2 * j] + a.bsums![(xb + b) * 16 + 2 * j + 1])
    }
    const dy = a.d[xb + b]
    acc = f(acc + f(f(f(half[w[o] | (w[o + 1] << 8)] * dy) * f(sumi)) - f(f(half[w[o + 2] | (w[o + 3] << 8)] * dy) * f(summ))))
  }
  return acc
}

/**
 * One row of q6_K weights · one token's q8_K activations, as ggml_vec_dot_q6_K_q8_K:
 * d·dy·Σ_g scale_g·Σ (q − 32)·x over each 16 values g. Float for float the kernel's arithmetic.
 */
export function dotQ6_K (w: Uint8Array, wo: number, a: QuantizedActivations, xb: number, nb: number): number {
  const half = halfTable()
  let acc = 0
  for (let b = 0; b < nb; b++) {
    const o = wo + b * Q6_K_BLOCK_BYTES
    const x = (xb + b) * QK_K
    let sumi = 0
    for (let e = 0; e < QK_K; e++) {
      // value e is in half h, quarter g of it, position l: ql[64h + 32(g & 1) + l]'s low (g < 2) or
      // high nibble, bits 2g, 2g+1 of qh[32h + l]
      const h = e >> 7; const g = (e >> 5) & 3; const l = e & 31
      const ql = w[o + 64 * h + 32 * (g & 1) + l]
      const q = ((g < 2 ? ql & 0xf : ql >> 4) | (((w[o + 128 + 32 * h + l] >> (2 * g)) & 3) << 4)) - 32
      sumi += ((w[o + 192 + (e >> 4)] << 24) >> 24) * q * a.q[x + e]
    }
    acc = f(acc + f(f(half[w[o + 208] | (w[o + 209] << 8)] * a.d[xb + b]) * f(sumi)))
  }
  return acc
}
