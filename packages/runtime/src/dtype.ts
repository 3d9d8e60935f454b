// The 16-bit float formats and float32, both ways: checkpoints (F16, BF16), ggml block scales,
// activations on the wire (f16, bf16) and the CPU kernels' scale table all convert through here.
// Conversions are bit-exact: round to nearest even, subnormals kept, ±inf kept, NaN stays NaN.
import { endianness } from 'node:os'

// The array conversions read float32s as their bits through a Uint32Array view.
if (endianness() !== 'LE') throw new Error('dtype: big-endian hosts are not supported (safetensors, ggml and the wire are little-endian)')

let f16Table: Float32Array | undefined
/** IEEE binary16 bits → float32, exact for every input (ggml's GGML_FP16_TO_FP32 too). */
export function halfTable (): Float32Array {
  if (f16Table != null) return f16Table
  const t = new Float32Array(65536)
  for (let h = 0; h < 65536; h++) {
    const s = (h & 0x8000) !== 0 ? -1 : 1
    const e = (h >> 10) & 0x1f
    const m = h & 0x3ff
    t[h] = e === 0 ? s * m * 2 ** -24 : e === 31 ? (m === 0 ? s * Infinity : NaN) : s * (1 + m / 1024) * 2 ** (e - 15)
  }
  f16Table = t
  return t
}

/** One IEEE half (its bits) as a number. */
export function f16BitsToF32 (h: number): number {
  return halfTable()[h]
}

/** IEEE half bits → float32 values. */
export function f16ToF32 (src: Uint16Array, out = new Float32Array(src.length)): Float32Array {
  const t = halfTable()
  for (let i = 0; i < src.length; i++) out[i] = t[src[i]]
  return out
}

/** bfloat16 bits → float32 values: bfloat16 is the top half of a float32. */
export function bf16ToF32 (src: Uint16Array, out = new Float32Array(src.length)): Float32Array {
  const bits = new Uint32Array(out.buffer, out.byteOffset, out.length)
  for (let i = 0; i < src.length; i++) bits[i] = src[i] << 16
  return out
}

const f32 = new Float32Array(1)
const u32 = new Uint32Array(f32.buffer)

/** float32 → bfloat16 bits, rounding to nearest even; NaN stays NaN (quiet), ±inf stays ±inf. */
export function f32ToBf16Bits (x: number): number {
  f32[0] = x
  return bitsToBf16(u32[0])
}

/** float32 → IEEE half bits, rounding to nearest even, with subnormals, ±inf and NaN. */
export function f32ToF16Bits (x: number): number {
  f32[0] = x
  return bitsToF16(u32[0])
}

function bitsToBf16 (b: number): number {
  if ((b & 0x7fffffff) > 0x7f800000) return ((b >>> 16) | 0x40) & 0xffff
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff
}

function bitsToF16 (b: number): number {
  const sign = (b >>> 16) & 0x8000
  const x = b & 0x7fffffff
  if (x >= 0x7f800000) {
    // Keep a NaN's top payload bits but force it quiet so it cannot turn into infinity.
    return x === 0x7f800000 ? sign | 0x7c00 : sign | 0x7e00 | ((x >>> 13) & 0x3ff)
  }
  if (x >= 0x477ff000) return sign | 0x7c00 // ≥ 65520 rounds past the largest half (65504)
  if (x >= 0x38800000) {
    // Normal half: rebias the exponent (127 → 15) after rounding the dropped 13 bits.
    return sign | (((x + 0xfff + ((x >>> 13) & 1)) >>> 13) - (112 << 10))
  }
  if (x < 0x33000000) return sign // ≤ 2^-25 (a tie with 0) rounds to zero
  // Subnormal half: the value in units of 2^-24 is the 24-bit significand shifted right.
  const e = x >>> 23
  const m = (x & 0x7fffff) | 0x800000
  const shift = 126 - e
  let r = m >>> shift
  const rem = m & ((1 << shift) - 1)
  const half = 1 << (shift - 1)
  if (rem > half || (rem === half && (r & 1) === 1)) r++
  return sign | r
}

/** Converts a float32 array to bf16 bits (a NaN's bits are read as they are, payload included). */
export function f32ToBf16 (src: Float32Array, out = new Uint16Array(src.length)): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length)
  for (let i = 0; i < bits.length; i++) out[i] = bitsToBf16(bits[i])
  return out
}

/** Converts a float32 array to IEEE half bits (a NaN's bits are read as they are, payload included). */
export function f32ToF16 (src: Float32Array, out = new Uint16Array(src.length)): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length)
  for (let i = 0; i < bits.length; i++) out[i] = bitsToF16(bits[i])
  return out
}
