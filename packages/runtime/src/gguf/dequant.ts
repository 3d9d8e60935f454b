import { toFloat32 } from '../safetensors.ts'
import { f16BitsToF32 } from '../dtype.ts'
import { ggmlTypeByName } from './types.ts'
import type { DequantizableType } from './types.ts'

// Each function follows ggml-quants.c's dequantize_row_* step by step. ggml computes in float32
// without fused multiply-add (llama.cpp's ggml-base is built for baseline x86-64), so every
// intermediate that C keeps as a float is rounded with Math.fround; the final float32 store
// rounds the last operation. Products of a 16-bit float and a small integer are exact in both.

const f16At = (b: Uint8Array, o: number): number => f16BitsToF32(b[o] | (b[o + 1] << 8))

function q8_0 (b: Uint8Array, y: Float32Array, nb: number): void {
  for (let i = 0; i < nb; i++) {
    const o = i * 34
    const d = f16At(b, o)
    for (let j = 0; j < 32; j++) y[i * 32 + j] = ((b[o + 2 + j] << 24) >> 24) * d
  }
}

function q4_0 (b: Uint8Array, y: Float32Array, nb: number): void {
  for (let i = 0; i < nb; i++) {
    const o = i * 18
    const d = f16At(b, o)
    for (let j = 0; j < 16; j++) {
      const q = b[o + 2 + j]
      y[i * 32 + j] = ((q & 0x0f) - 8) * d
      y[i * 32 + j + 16] = ((q >> 4) - 8) * d
    }
  }
}

// block_q4_1: d, m (f16), qs[16] = 20 bytes per 32 elements; x·d + m rounds the product first.
function q4_1 (b: Uint8Array, y: Float32Array, nb: number): void {
  for (let i = 0; i < nb; i++) {
    const o = i * 20
    const d = f16At(b, o)
    const m = f16At(b, o + 2)
    for (let j = 0; j < 16; j++) {
      const q = b[o + 4 + j]
      y[i * 32 + j] = Math.fround((q & 0x0f) * d) + m
      y[i * 32 + j + 16] = Math.fround((q >> 4) * d) + m
    }
  }
}

/** The fifth bits of q5_0/q5_1: a little-endian u32 at `o`, bit j for element j. */
const u32At = (b: Uint8Array, o: number): number => (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)) >>> 0

// block_q5_0: d (f16), qh (u32), qs[16] = 22 bytes per 32 elements.
function q5_0 (b: Uint8Array, y: Float32Array, nb: number): void {
  for (let i = 0; i < nb; i++) {
    const o = i * 22
    const d = f16At(b, o)
    const qh = u32At(b, o + 2)
    for (let j = 0; j < 16; j++) {
      const q = b[o + 6 + j]
      const h0 = ((qh >>> j) << 4) & 0x10
      const h1 = (qh >>> (j + 12)) & 0x10
      y[i * 32 + j] = (((q & 0x0f) | h0) - 16) * d
      y[i * 32 + j + 16] = (((q >> 4) | h1) - 16) * d
    }
  }
}

// block_q5_1: d, m (f16), qh (u32), qs[16] = 24 bytes per 32 elements.
function q5_1 (b: Uint8Array, y: Float32Array, nb: number): void {
  for (let i = 0; i < nb; i++) {
    const o = i * 24
    const d = f16At(b, o)
    const m = f16At(b, o + 2)
    const qh = u32At(b, o + 4)
    for (let j = 0; j < 16; j++) {
      const q = b[o + 8 + j]
      const h0 = ((qh >>> j) << 4) & 0x10
      const h1 = (qh >>> (j + 12)) & 0x10
      y[i * 32 + j] = Math.fround(((q & 0x0f) | h0) * d) + m
      y[i * 32 + j + 16] = Math.fround(((q >> 4) | h1) * d) + m
    }
  }
}

/** ggml's get_scale_min_k4: the j-th 6-bit scale and min packed in 12 bytes at `o`. */
function scaleMin (b: Uint8Array, o: number, j: number): [number, number] {
  if (j < 4) return [b[o + j] & 63, b[o + j + 4] & 63]
  return [(b[o + j + 4] & 0xf) | ((b[o + j - 4] >> 6) << 4), (b[o + j + 4] >> 4) | ((b[o + j] >> 6) << 4)]
}

// block_q4_K: d, dmin (f16), scales[12], qs[128] = 144 bytes per 256 elements.
function q4_K (b: Uint8Array, y: Float32Array, nb: number): void {
  for (let i = 0; i < nb; i++) {
    const o = i * 144
    const d = f16At(b, o)
    const min = f16At(b, o + 2)
    let q = o + 16
    let k = i * 256
    for (let j = 0, is = 0; j < 256; j += 64, is += 2) {
      const [sc1, m1s] = scaleMin(b, o + 4, is)
      const d1 = Math.fround(d * sc1); const m1 = Math.fround(min * m1s)
      const [sc2, m2s] = scaleMin(b, o + 4, is + 1)
      const d2 = Math.fround(d * sc2); const m2 = Math.fround(min * m2s)
      for (let l = 0; l < 32; l++) y[k++] = d1 * (b[q + l] & 0xf) - m1
      for (let l = 0; l < 32; l++) y[k++] = d2 * (b[q + l] >> 4) - m2
      q += 32
    }
  }
}

// block_q5_K: d, dmin (f16), scales[12], qh[32], qs[128] = 176 bytes per 256 elements.
function q5_K (b: Uint8Array, y: Float32Array, nb: number): void {
  for (let i = 0; i < nb; i++) {
    const o = i * 176
    const d = f16At(b, o)
    const min = f16At(b, o + 2)
    const qh = o + 16
    let ql = o + 48
    let k = i * 256
    let u1 = 1; let u2 = 2
    for (let j = 0, is = 0; j < 256; j += 64, is += 2) {
      const [sc1, m1s] = scaleMin(b, o + 4, is)
      const d1 = Math.fround(d * sc1); const m1 = Math.fround(min * m1s)
      const [sc2, m2s] = scaleMin(b, o + 4, is + 1)
      const d2 = Math.fround(d * sc2); const m2 = Math.fround(min * m2s)
      for (let l = 0; l < 32; l++) y[k++] = d1 * ((b[ql + l] & 0xf) + ((b[qh + l] & u1) !== 0 ? 16 : 0)) - m1
      for (let l = 0; l < 32; l++) y[k++] = d2 * ((b[ql + l] >> 4) + ((b[qh + l] & u2) !== 0 ? 16 : 0)) - m2
      ql += 32
      u1 <<= 2; u2 <<= 2
    }
  }
}

// block_q6_K: ql[128], qh[64], scales[16] (int8), d (f16) = 210 bytes per 256 elements.
function q6_K (b: Uint8Array, y: Float32Array, nb: number): void {
  for (let i = 0; i < nb; i++) {
    const o = i * 210
    const d = f16At(b, o + 208)
    let ql = o; let qh = o + 128; let sc = o + 192
    let k = i * 256
    for (let n = 0; n < 256; n += 128) {
      for (let l = 0; l < 32; l++) {
        const is = l >> 4
        const q1 = ((b[ql + l] & 0xf) | (((b[qh + l] >> 0) & 3) << 4)) - 32
        const q2 = ((b[ql + l + 32] & 0xf) | (((b[qh + l] >> 2) & 3) << 4)) - 32
        const q3 = ((b[ql + l] >> 4) | (((b[qh + l] >> 4) & 3) << 4)) - 32
        const q4 = ((b[ql + l + 32] >> 4) | (((b[qh + l] >> 6) & 3) << 4)) - 32
        // C evaluates d * sc[is] * q as (d * sc) * q, each product rounded to float.
        y[k + l] = Math.fround(d * ((b[sc + is] << 24) >> 24)) * q1
        y[k + l + 32] = Math.fround(d * ((b[sc + is + 2] << 24) >> 24)) * q2
        y[k + l + 64] = Math.fround(d * ((b[sc + is + 4] << 24) >> 24)) * q3
        y[k + l + 96] = Math.fround(d * ((b[sc + is + 6] << 24) >> 24)) * q4
      }
      k += 128; ql += 64; qh += 32; sc += 8
    }
  }
}

const BLOCKED: Record<string, (b: Uint8Array, y: Float32Array, nb: number) => void> = { Q8_0: q8_0, Q4_0: q4_0, Q4_1: q4_1, Q5_0: q5_0, Q5_1: q5_1, Q4_K: q4_K, Q5_K: q5_K, Q6_K: q6_K }

/**
 * `n` elements stored as `type` → float32, as llama.cpp's to_float for that type computes them.
 * With `reuse`, F32 data may be returned as a view of `bytes` instead of a copy.
 */
export function dequantize (type: DequantizableType, bytes: Uint8Array, n: number, opts: { reuse?: boolean } = {}): Float32Array {
  const t = ggmlTypeByName(type)
  if (n % t.blockSize !== 0) throw new RangeError(`dequantize ${type}: ${n} elements is not a whole number of ${t.blockSize}-element blocks`)
  const need = n / t.blockSize * t.typeSize
  if (bytes.length !== need) throw new RangeError(`dequantize ${type}: ${n} elements need ${need} bytes, got ${bytes.length}`)
  if (type === 'F32' || type === 'F16' || type === 'BF16') {
    // toFloat32 views F32 in place when aligned; a copy keeps the result independent of `bytes`.
    const aligned = bytes.byteOffset % 4 === 0 ? bytes : bytes.slice()
    const out = toFloat32(aligned, type)
    return out.buffer === bytes.buffer && opts.reuse !== true ? out.slice() : out
  }
  const out = new Float32Array(n)
  BLOCKED[type](bytes, out, n / t.blockSize)
  return out
}
