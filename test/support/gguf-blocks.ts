// ggml blocks with chosen contents, packed as ggml-common.h lays them out, and the values
// ggml-quants.c's dequantize_row_* defines for them (computed from the chosen numbers, not
// by decoding the bytes).
import { seededRandom, toFloat32 } from '@plexus/runtime'

export const rng = (seed: number): () => number => seededRandom(seed)

/** The llama.cpp function that widens or dequantizes each format. */
export const LLAMA_CPP_SYMBOL: Record<string, string> = {
  F16: 'ggml_fp16_to_fp32_row',
  BF16: 'ggml_bf16_to_fp32_row',
  Q8_0: 'dequantize_row_q8_0',
  Q4_0: 'dequantize_row_q4_0',
  Q4_1: 'dequantize_row_q4_1',
  Q5_0: 'dequantize_row_q5_0',
  Q5_1: 'dequantize_row_q5_1',
  Q4_K: 'dequantize_row_q4_K',
  Q5_K: 'dequantize_row_q5_K',
  Q6_K: 'dequantize_row_q6_K'
}

// Scales worth testing: ordinary, negative, the smallest subnormal, the largest normal, zero.
const SCALES = [0x3c00, 0x2e66, 0xb800, 0x0001, 0x03ff, 0x7bff, 0x1234, 0x0000, 0x5a5a]

export function halfBits (h: number): number {
  return toFloat32(new Uint8Array(Uint16Array.of(h).buffer), 'F16')[0]
}

const f = Math.fround
const int = (r: () => number, lo: number, hi: number): number => lo + Math.floor(r() * (hi - lo + 1))

/** ggml's inverse of get_scale_min_k4: eight 6-bit scales and mins into 12 bytes. */
function packScales (b: Uint8Array, o: number, sc: number[], mn: number[]): void {
  for (let j = 0; j < 8; j++) {
    if (j < 4) {
      b[o + j] = sc[j]
      b[o + j + 4] = mn[j]
    } else {
      b[o + j + 4] = (sc[j] & 0xf) | ((mn[j] & 0xf) << 4)
      b[o + j - 4] |= (sc[j] >> 4) << 6
      b[o + j] |= (mn[j] >> 4) << 6
    }
  }
}

const putHalf = (b: Uint8Array, o: number, h: number): void => { b[o] = h & 0xff; b[o + 1] = h >> 8 }

export function blocksOf (type: 'Q8_0' | 'Q4_0' | 'Q4_K' | 'Q5_K' | 'Q6_K', nBlocks: number, r: () => number): { bytes: Uint8Array, n: number, want: Float32Array } {
  const size = { Q8_0: [32, 34], Q4_0: [32, 18], Q4_K: [256, 144], Q5_K: [256, 176], Q6_K: [256, 210] }[type]
  const n = nBlocks * size[0]
  const bytes = new Uint8Array(nBlocks * size[1])
  const want = new Float32Array(n)
  for (let i = 0; i < nBlocks; i++) {
    const o = i * size[1]
    const y = i * size[0]
    const dh = SCALES[(i * 3 + int(r, 0, 8)) % SCALES.length]
    const d = halfBits(dh)
    if (type === 'Q8_0') {
      putHalf(bytes, o, dh)
      for (let j = 0; j < 32; j++) {
        const q = j === 0 ? -128 : j === 1 ? 127 : int(r, -128, 127)
        bytes[o + 2 + j] = q & 0xff
        want[y + j] = f(q * d)
      }
    } else if (type === 'Q4_0') {
      putHalf(bytes, o, dh)
      const q = Array.from({ length: 32 }, (_, j) => j < 16 ? j : int(r, 0, 15))
      for (let j = 0; j < 16; j++) bytes[o + 2 + j] = q[j] | (q[j + 16] << 4)
      for (let j = 0; j < 32; j++) want[y + j] = f((q[j] - 8) * d)
    } else if (type === 'Q4_K' || type === 'Q5_K') {
      const mh = SCALES[int(r, 0, SCALES.length - 1)]
      const dmin = halfBits(mh)
      putHalf(bytes, o, dh)
      putHalf(bytes, o + 2, mh)
      const sc = Array.from({ length: 8 }, (_, j) => j === 0 ? 63 : int(r, 0, 63))
      const mn = Array.from({ length: 8 }, (_, j) => j === 7 ? 63 : int(r, 0, 63))
      packScales(bytes, o + 4, sc, mn)
      const bitsQ = type === 'Q4_K' ? 4 : 5
      const q = Array.from({ length: 256 }, () => int(r, 0, (1 << bitsQ) - 1))
      const qs = o + (type === 'Q4_K' ? 16 : 48)
      for (let k = 0; k < 4; k++) {
        for (let l = 0; l < 32; l++) {
          const lo = q[64 * k + l]; const hi = q[64 * k + 32 + l]
          bytes[qs + 32 * k + l] = (lo & 0xf) | ((hi & 0xf) << 4)
          if (type === 'Q5_K') bytes[o + 16 + l] |= ((lo >> 4) << (2 * k)) | ((hi >> 4) << (2 * k + 1))
        }
      }
      for (let e = 0; e < 256; e++) want[y + e] = f(f(d * sc[e >> 5]) * q[e] - f(dmin * mn[e >> 5]))
    } else {
      putHalf(bytes, o + 208, dh)
      const sc = Array.from({ length: 16 }, (_, j) => j === 0 ? -128 : j === 1 ? 127 : int(r, -128, 127))
      sc.forEach((s, j) => { bytes[o + 192 + j] = s & 0xff })
      const q = Array.from({ length: 256 }, (_, e) => e < 64 ? e : int(r, 0, 63))
      for (let h = 0; h < 2; h++) {
        const e0 = 128 * h
        for (let l = 0; l < 32; l++) {
          const [q1, q2, q3, q4] = [q[e0 + l], q[e0 + l + 32], q[e0 + l + 64], q[e0 + l + 96]]
          bytes[o + 64 * h + l] = (q1 & 0xf) | ((q3 & 0xf) << 4)
          bytes[o + 64 * h + l + 32] = (q2 & 0xf) | ((q4 & 0xf) << 4)
          bytes[o + 128 + 32 * h + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6)
        }
      }
      for (let e = 0; e < 256; e++) want[y + e] = f(f(d * sc[e >> 4]) * (q[e] - 32))
    }
  }
  return { bytes, n, want }
}

/** Makes every f16 scale (and f16/bf16 value) in random bytes finite. */
export function finiteHalf (type: string, b: Uint8Array): void {
  const fix = (o: number): void => { if (((b[o + 1] >> 2) & 0x1f) === 0x1f) b[o + 1] &= ~0x40 }
  const fixBf = (o: number): void => { if ((b[o + 1] & 0x7f) === 0x7f && (b[o] & 0x80) !== 0) b[o + 1] &= ~0x40 }
  const at: Record<string, [number, number[]]> = { F16: [2, [0]], Q8_0: [34, [0]], Q4_0: [18, [0]], Q4_1: [20, [0, 2]], Q5_0: [22, [0]], Q5_1: [24, [0, 2]], Q4_K: [144, [0, 2]], Q5_K: [176, [0, 2]], Q6_K: [210, [208]] }
  if (type === 'BF16') { for (let o = 0; o < b.length; o += 2) fixBf(o); return }
  const [stride, offs] = at[type]
  for (let o = 0; o < b.length; o += stride) for (const k of offs) fix(o + k)
}
