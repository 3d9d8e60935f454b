// How each stored weight type is laid out in GPU memory and read back as f32 inside the kernels.
import type { WeightDType } from '../checkpoint.ts'
import { rawFloat32 } from '../checkpoint.ts'

/** A weight matrix's layout on the GPU. */
export type WeightFormat = 'f32' | 'f16' | 'bf16' | 'q8_0' | 'q4_k'

/** Stored types the kernels read directly; any other block type is widened to f32 at upload. */
const NATIVE: Partial<Record<WeightDType, WeightFormat>> = { F32: 'f32', F16: 'f16', BF16: 'bf16', Q8_0: 'q8_0', Q4_K: 'q4_k' }

export function gpuFormat (dtype: WeightDType): WeightFormat { return NATIVE[dtype] ?? 'f32' }

/** Elements per block and GPU bytes per block (q8_0: 32 int8 and an f16 scale, kept apart, see gpuChunk). */
const BLOCK: Record<WeightFormat, [number, number]> = { f32: [1, 4], f16: [2, 4], bf16: [2, 4], q8_0: [32, 34], q4_k: [256, 144] }

/** Bytes one row of `k` weights takes on the GPU (a q8_0 buffer adds under 16 bytes of padding). */
export function rowBytes (format: WeightFormat, k: number): number {
  const [elems, bytes] = BLOCK[format]
  if (k % elems !== 0) throw new Error(`rows of ${k} weights are not whole ${format} blocks of ${elems}`)
  return k / elems * bytes
}

/**
 * A tensor's rows encoded for `format`, rowBytes(format, k) bytes each: as stored, or widened to
 * f32 where the kernels do not read the stored type. q8_0 rows stay ggml blocks (34 bytes: f16
 * scale, 32 int8) until gpuChunk lays out the buffer that holds them.
 */
export function gpuBytes (format: WeightFormat, t: { dtype: WeightDType, shape: number[], bytes: Uint8Array }): Uint8Array {
  if (gpuFormat(t.dtype) !== format) throw new Error(`a ${t.dtype} tensor cannot be laid out as ${format}`)
  if (format === 'f32' && t.dtype !== 'F32') return new Uint8Array(rawFloat32(t).buffer)
  return t.bytes
}

/**
 * One GPU buffer's bytes from whole rows of `k` weights in gpuBytes's encoding. Only q8_0 changes:
 * first every block's 32 int8 (row-major, so a block is two 16-byte words the kernels read at
 * once), then every block's f16 scale in the same order, padded to 16 bytes. The scales' offset
 * depends on the buffer's rows, so each chunk of a layer is laid out on its own.
 */
export function gpuChunk (format: WeightFormat, k: number, rows: Uint8Array): Uint8Array {
  if (format !== 'q8_0') return rows
  const blocks = rows.byteLength / 34
  if (!Number.isInteger(blocks) || blocks % (k / 32) !== 0) throw new Error(`${rows.byteLength} bytes are not whole q8_0 rows of ${k} weights`)
  const quants = blocks * 32
  const out = new Uint8Array(quants + Math.ceil(blocks * 2 / 16) * 16)
  for (let b = 0; b < blocks; b++) {
    out.set(rows.subarray(b * 34 + 2, b * 34 + 34), b * 32)
    out[quants + 2 * b] = rows[b * 34]
    out[quants + 2 * b + 1] = rows[b * 34 + 1]
  }
  return out
}

/**
 * WGSL: the weights binding and `w4(i)`, the i-th group of 4 consecutive weights (row-major) as f32.
 * `q8Scales`: the u32 word where a q8_0 buffer's scales start (after its n·k/4 words of int8), as
 * a WGSL expression; by default from the N and K4 that linearBindings declares beside the loader.
 */
export function weightLoader (format: WeightFormat, binding: number, q8Scales = 'N * K4'): string {
  switch (format) {
    case 'f32':
      return `@group(0) @binding(${binding}) var<storage, read> w: array<vec4<f32>>;
fn w4 (i: u32) -> vec4<f32> { return w[i]; }`
    case 'f16':
      // no shader-f16 needed: two halves per u32, widened by a core builtin
      return `@group(0) @binding(${binding}) var<storage, read> w: array<vec2<u32>>;
fn w4 (i: u32) -> vec4<f32> { let p = w[i]; return vec4<f32>(unpack2x16float(p.x), unpack2x16float(p.y)); }`
    case 'bf16':
      // bf16 is the top half of an f32
      return `@group(0) @binding(${binding}) var<storage, read> w: array<vec2<u32>>;
fn w4 (i: u32) -> vec4<f32> {
  let p = w[i];
  return vec4<f32>(bitcast<f32>(p.x << 16u), bitcast<f32>(p.x & 0xffff0000u), bitcast<f32>(p.y << 16u), bitcast<f32>(p.y & 0xffff0000u));
}`
    case 'q8_0':
      // word i holds 4 int8 of block i/8, whose f16 scale is half (i/8)%2 of scale word i/16;
      // y = q·d as ggml computes it
      return `@group(0) @binding(${binding}) var<storage, read> w: array<u32>;
fn w4 (i: u32) -> vec4<f32> {
  let d = unpack2x16float(w[(${q8Scales}) + i / 16u] >> (16u * ((i / 8u) % 2u))).x;
  let q = bitcast<i32>(w[i]);
  return vec4<f32>(f32(extractBits(q, 0u, 8u)), f32(extractBits(q, 8u, 8u)), f32(extractBits(q, 16u, 8u)), f32(extractBits(q, 24u, 8u))) * d;
}`
    case 'q4_k':
      // ggml's block_q4_K as stored (36 words per 256 weights): f16 d and dmin, 12 bytes of 6-bit
      // scales and mins for 8 sub-blocks of 32, then 128 bytes of nibbles: each 64 weights are the
      // low nibbles of 32 bytes, then their high nibbles. y = d·sc·q − dmin·m (dequantize_row_q4_K).
      return `@group(0) @binding(${binding}) var<storage, read> w: array<u32>;
fn scaleByte (base: u32, k: u32) -> u32 { return (w[base + 1u + k / 4u] >> (8u * (k % 4u))) & 0xffu; }
fn w4 (i: u32) -> vec4<f32> {
  let e = i * 4u;
  let base = (e / 256u) * 36u;
  let within = e % 256u;
  let j = within / 64u;
  let hi = (within / 32u) % 2u;
  let s = 2u * j + hi;
  var sc: u32;
  var m: u32;
  if (s < 4u) {
    sc = scaleByte(base, s) & 63u;
    m = scaleByte(base, s + 4u) & 63u;
  } else {
    sc = (scaleByte(base, s + 4u) & 0xfu) | ((scaleByte(base, s - 4u) >> 6u) << 4u);
    m = (scaleByte(base, s + 4u) >> 4u) | ((scaleByte(base, s) >> 6u) << 4u);
  }
  let dm = unpack2x16float(w[base]);
  let d1 = dm.x * f32(sc);
  let m1 = dm.y * f32(m);
  let q = (w[base + 4u + (32u * j + within % 32u) / 4u] >> (4u * hi)) & 0x0f0f0f0fu;
  return vec4<f32>(f32(q & 0xffu), f32((q >> 8u) & 0xffu), f32((q >> 16u) & 0xffu), f32(q >> 24u)) * d1 - vec4<f32>(m1);
}`
  }
}
