// The decode projection y = x·Wᵀ for a few rows, streaming W once at the memory's pace.
//
// A workgroup of 256 threads computes 8 outputs: 32 lanes per weight row, each lane reading whole
// chunks of the row (16–32 contiguous bytes and their scales: 8–16 f16 weights, a q8_0 block's 32
// int8, a 64-weight group of a q4_K super-block), dequantizing in registers and dotting them with
// every batch row (a slot of lanes may read several weight rows, loading each piece of x once for
// all of them). The lanes' partial sums are then added by a butterfly of subgroup shuffles (or
// through workgroup memory where subgroups are narrower than 32 or missing). The order of every
// sum is fixed by the shape alone, so a row gives the same bits alone or in a batch.
import { linearBindings, legacyMatvecKernel, rowScales, grid, MATVEC_ROWS } from './kernels.ts'
import type { LinearShape } from './kernels.ts'
import type { WeightFormat } from './formats.ts'
import type { GpuKernels } from './kernel-choice.ts'

/**
 * The kernel's shape: lanes per weight row (L), slots per workgroup (S: L·S threads), chunks a lane
 * loads before it uses any (U), and weight rows a slot reads (M: each chunk of x is loaded once for
 * M rows). 32 × 8 × 1 × 1 by default; PLEXUS_GPU_MATVEC_SHAPE=LxS[xU[xM]] (e.g. 64x4, 32x8x2,
 * 32x8x1x2) sets others for measurements. Read when a layer is bound.
 */
export interface MatvecShape { lanes: number, slots: number, unroll: number, rowsPerSlot: number }

const pow2 = (n: number): boolean => Number.isInteger(n) && n >= 1 && (n & (n - 1)) === 0

export function matvecShape (): MatvecShape {
  const v = process.env.PLEXUS_GPU_MATVEC_SHAPE
  if (v == null || v === '') return { lanes: 32, slots: 8, unroll: 1, rowsPerSlot: 1 }
  const m = /^(\d+)x(\d+)(?:x(\d+)(?:x(\d+))?)?$/.exec(v)
  const lanes = Number(m?.[1]); const slots = Number(m?.[2]); const unroll = Number(m?.[3] ?? 1); const rowsPerSlot = Number(m?.[4] ?? 1)
  if (m == null || ![4, 8, 16, 32, 64, 128].includes(lanes) || !pow2(slots) || lanes * slots > 256 || ![1, 2, 4].includes(unroll) ||
      ![1, 2, 4].includes(rowsPerSlot) || (slots * rowsPerSlot) % 2 !== 0) {
    throw new Error(`PLEXUS_GPU_MATVEC_SHAPE must be LxS, LxSxU or LxSxUxM with L a power of two from 4 to 128, S a power of two (the reductions halve), L·S ≤ 256, U and M 1, 2 or 4, and S·M even (gate and up rows pair up) (got ${JSON.stringify(v)})`)
  }
  return { lanes, slots, unroll, rowsPerSlot }
}

/**
 * A weight row read in chunks: weights per chunk, vec4s per chunk, and the WGSL that loads one;
 * `scaled`: the chunk comes as integers and `chunkScale(n, c)` gives its one scale, which
 * multiplies the chunk's dot product instead of every weight.
 */
interface Chunking { weights: number, vec4s: number, code: string, scaled?: boolean }

const u = (n: number): string => `${n >>> 0}u`

/**
 * `chunk(n, c)`: weights [c·W, (c+1)·W) of row n as f32 vec4s, in a buffer of `rows` rows of `k`
 * weights; undefined where rows are not whole chunks.
 */
function chunking (format: WeightFormat, k: number, rows: number): Chunking | undefined {
  switch (format) {
    case 'f32':
      if (k % 8 !== 0) return undefined
      return {
        weights: 8,
        vec4s: 2,
        code: `@group(0) @binding(1) var<storage, read> w: array<vec4<f32>>;
fn chunk (n: u32, c: u32) -> array<vec4<f32>, 2> {
  let b = n * ${u(k / 4)} + c * 2u;
  return array<vec4<f32>, 2>(w[b], w[b + 1u]);
}`
      }
    case 'f16':
    case 'bf16': {
      if (k % 8 !== 0) return undefined
      // 16 weights (32 bytes) where rows allow, else 8; two weights per u32
      const wide = k % 16 === 0
      const half = (p: string): string => format === 'f16'
        ? `vec4<f32>(unpack2x16float(${p}.x), unpack2x16float(${p}.y)), vec4<f32>(unpack2x16float(${p}.z), unpack2x16float(${p}.w))`
        : `bf4(${p}.x, ${p}.y), bf4(${p}.z, ${p}.w)`
      return {
        weights: wide ? 16 : 8,
        vec4s: wide ? 4 : 2,
        code: `@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
${format === 'bf16' ? '// bf16 is the top half of an f32\nfn bf4 (a: u32, b: u32) -> vec4<f32> { return vec4<f32>(bitcast<f32>(a << 16u), bitcast<f32>(a & 0xffff0000u), bitcast<f32>(b << 16u), bitcast<f32>(b & 0xffff0000u)); }' : ''}
fn chunk (n: u32, c: u32) -> array<vec4<f32>, ${wide ? 4 : 2}> {
  let b = n * ${u(k / 8)} + c * ${wide ? '2u' : '1u'};
  let p = w[b];
${wide ? `  let q = w[b + 1u];
  return array<vec4<f32>, 4>(${half('p')}, ${half('q')});` : `  return array<vec4<f32>, 2>(${half('p')});`}
}`
      }
    }
    case 'q8_0':
      // one block: its 32 int8 as two 16-byte words, its f16 scale from the scales after the
      // buffer's rows·k int8 (formats.ts, gpuChunk); y = d·Σ q·x (ggml: Σ (q·d)·x)
      return {
        weights: 32,
        vec4s: 8,
        scaled: true,
        code: `@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
const SCALES = ${u(rows * k / 4)};
fn word (i: u32) -> u32 { return w[i / 4u][i % 4u]; }
// four int8 sign-extended by shifting each to the top and back
fn i8x4 (q: u32) -> vec4<f32> { return vec4<f32>((vec4<i32>(bitcast<i32>(q)) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u)); }
fn chunkScale (n: u32, c: u32) -> f32 {
  let b = n * ${u(k / 32)} + c;
  return unpack2x16float(word(SCALES + b / 2u) >> (16u * (b % 2u))).x;
}
fn chunk (n: u32, c: u32) -> array<vec4<f32>, 8> {
  let b = n * ${u(k / 32)} + c;
  let lo = w[2u * b];
  let hi = w[2u * b + 1u];
  return array<vec4<f32>, 8>(i8x4(lo.x), i8x4(lo.y), i8x4(lo.z), i8x4(lo.w), i8x4(hi.x), i8x4(hi.y), i8x4(hi.z), i8x4(hi.w));
}`
      }
    case 'q4_k':
      // 64 weights of a 256-weight super-block (36 words: f16 d and dmin, 12 bytes of 6-bit scales
      // and mins, 128 bytes of nibbles): 32 bytes whose low nibbles are sub-block 2j and high
      // nibbles sub-block 2j + 1. y = d·sc·q − dmin·m (dequantize_row_q4_K).
      return {
        weights: 64,
        vec4s: 16,
        code: `@group(0) @binding(1) var<storage, read> w: array<u32>;
fn scaleByte (base: u32, k: u32) -> u32 { return (w[base + 1u + k / 4u] >> (8u * (k % 4u))) & 0xffu; }
fn scaleMin (base: u32, s: u32) -> vec2<f32> {
  if (s < 4u) { return vec2<f32>(f32(scaleByte(base, s) & 63u), f32(scaleByte(base, s + 4u) & 63u)); }
  return vec2<f32>(f32((scaleByte(base, s + 4u) & 0xfu) | ((scaleByte(base, s - 4u) >> 6u) << 4u)),
                   f32((scaleByte(base, s + 4u) >> 4u) | ((scaleByte(base, s) >> 6u) << 4u)));
}
fn chunk (n: u32, c: u32) -> array<vec4<f32>, 16> {
  let base = (n * ${u(k / 256)} + c / 4u) * 36u;
  let j = c % 4u;
  let dm = unpack2x16float(w[base]);
  let lo = scaleMin(base, 2u * j);
  let hi = scaleMin(base, 2u * j + 1u);
  let d1 = dm.x * lo.x; let m1 = dm.y * lo.y;
  let d2 = dm.x * hi.x; let m2 = dm.y * hi.y;
  var out: array<vec4<f32>, 16>;
  for (var i = 0u; i < 8u; i++) {
    let q = w[base + 4u + 8u * j + i];
    let l = q & 0x0f0f0f0fu;
    let h = (q >> 4u) & 0x0f0f0f0fu;
    out[i] = vec4<f32>(f32(l & 0xffu), f32((l >> 8u) & 0xffu), f32((l >> 16u) & 0xffu), f32(l >> 24u)) * d1 - vec4<f32>(m1);
    out[8u + i] = vec4<f32>(f32(h & 0xffu), f32((h >> 8u) & 0xffu), f32((h >> 16u) & 0xffu), f32(h >> 24u)) * d2 - vec4<f32>(m2);
  }
  return out;
}`
      }
  }
}

/** The decode kernel for a layer, and how many outputs each of its workgroups computes. */
export interface MatvecPlan { code: string, rowsPerGroup: number }

/**
 * `kernels`: the set the device runs (kernel-choice.ts); `subgroups`: the device has the WGSL
 * subgroups feature (then `fast` sums through shuffles where subgroups hold 32 lanes).
 */
export function matvecPlan (s: LinearShape, kernels: GpuKernels, subgroups: boolean): MatvecPlan {
  const ch = kernels === 'legacy' ? undefined : chunking(s.format, s.k, s.n)
  if (ch == null) return { code: legacyMatvecKernel(s), rowsPerGroup: 1 }
  const R = MATVEC_ROWS
  const { lanes: L, slots: S, unroll: U, rowsPerSlot: M } = matvecShape()
  const THREADS = L * S
  const shuffle = subgroups && kernels === 'fast'
  const CH = s.k / ch.weights
  const G = s.gated === true
  // gated, one row a slot: the first half of the slots read gate rows, the second half the up rows
  // of the same outputs, which meet in workgroup memory; two or more rows a slot: a slot's first
  // half of rows are gate rows and the rest their up rows, which meet in the slot's lane 0
  const acrossSlots = G && M === 1
  const P = G && M > 1 ? M / 2 : M // outputs a slot
  const PER_GROUP = acrossSlots ? S / 2 : S * P
  const ms = Array.from({ length: M }, (_, m) => m)
  const ps = Array.from({ length: P }, (_, p) => p)
  const us = Array.from({ length: U }, (_, i) => i)
  // the slot's outputs and the weight rows it reads (clamped to the buffer: dead rows read row N−1)
  const rows = acrossSlots
    ? `  let out0 = base + slot % ${u(PER_GROUP)};
  let row0 = min(select(out0, out0 + OUTS, slot >= ${u(PER_GROUP)}), N - 1u);
`
    : ps.map(p => `  let out${p} = base + slot * ${u(P)} + ${u(p)};\n`).join('') +
      ms.map(m => `  let row${m} = min(${m < P ? `out${m}` : `out${m - P} + OUTS`}, N - 1u);\n`).join('')
  const normed = s.norm != null
  const sc = normed ? ' * scale[r]' : ''
  // a lane's U chunks of each of its M rows are all loaded (clamped to the row) before the first is
  // used, so more bytes are in flight; each is then used in the order a single chunk would be
  const loads = us.flatMap(i => ms.map(m => `      var w${i}_${m} = chunk(row${m}, min(c0 + ${u(i * L)} + lane, CH - 1u));\n${ch.scaled === true
    ? `      let d${i}_${m} = chunkScale(row${m}, min(c0 + ${u(i * L)} + lane, CH - 1u));\n`
    : ''}`)).join('')
  const uses = us.map(i => `      {
        let c = c0 + ${u(i * L)} + lane;
        if (c < CH) {
${normed ? `          // the norm's weights times W's as a chunk is read, the row's 1/rms at the end
          for (var j = 0u; j < NV; j++) { let g = normWeight[c * NV + j];${ms.map(m => ` w${i}_${m}[j] *= g;`).join('')} }
` : ''}          for (var r = 0u; r < ${u(R)}; r++) {
            if (r < nr) {
              let xb = (r0 + r) * K4 + c * NV;
             ${ms.map(m => ` var s${m} = 0.0;`).join('')}
              for (var j = 0u; j < NV; j++) { let xv = x[xb + j];${ms.map(m => ` s${m} += dot(w${i}_${m}[j], xv);`).join('')} }
             ${ms.map(m => ` acc[${u(m * R)} + r] += s${m}${ch.scaled === true ? ` * d${i}_${m}` : ''};`).join('')}
            }
          }
        }
      }
`).join('')
  // a row's sums into its lane 0: a butterfly of shuffles where its lanes share a subgroup, else a
  // tree through workgroup memory; only the rows this pass holds (a lone decode row: one)
  const butterfly = ms.map(m => `      for (var r = 0u; r < nr; r++) {
        var v = acc[${u(m * R)} + r];
        for (var o = ${u(L / 2)}; o > 0u; o >>= 1u) { v += subgroupShuffleXor(v, o); }
        sums[${u(m * R)} + r] = v;
      }
`).join('')
  const tree = ms.map(m => `      for (var r = 0u; r < nr; r++) { part[r * ${u(THREADS)} + t] = acc[${u(m * R)} + r]; }
      workgroupBarrier();
      for (var h = ${u(L / 2)}; h > 0u; h >>= 1u) {
        if (lane < h) { for (var r = 0u; r < nr; r++) { part[r * ${u(THREADS)} + t] += part[r * ${u(THREADS)} + t + h]; } }
        workgroupBarrier();
      }
      for (var r = 0u; r < nr; r++) { sums[${u(m * R)} + r] = part[r * ${u(THREADS)} + t]; }
      workgroupBarrier();
`).join('')
  const stores = acrossSlots
    ? `    if (lane == 0u) { for (var r = 0u; r < nr; r++) { pair[slot * ${u(R)} + r] = sums[r]; } }
    workgroupBarrier();
    if (lane == 0u && out0 < OUTS && slot < ${u(PER_GROUP)}) {
      for (var r = 0u; r < nr; r++) { store(r0 + r, out0, swiglu(pair[slot * ${u(R)} + r]${sc}, pair[(slot + ${u(PER_GROUP)}) * ${u(R)} + r]${sc})); }
    }
    workgroupBarrier();
`
    : `    if (lane == 0u) {
${ps.map(p => `      if (out${p} < OUTS) { for (var r = 0u; r < nr; r++) { store(r0 + r, out${p}, ${G
      ? `swiglu(sums[${u(p * R)} + r]${sc}, sums[${u((P + p) * R)} + r]${sc})`
      : `sums[${u(p * R)} + r]${sc}`}); } }
`).join('')}    }
`
  return {
    rowsPerGroup: PER_GROUP,
    code: `${shuffle ? 'enable subgroups;\n' : ''}${linearBindings(s, ch.code)}
const CH = ${u(CH)};
const NV = ${u(ch.vec4s)};
var<workgroup> part: array<f32, ${THREADS * R}>;
${acrossSlots ? `var<workgroup> pair: array<f32, ${S * R}>;` : ''}

@compute @workgroup_size(${THREADS})
fn main (@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) t: u32${shuffle ? ', @builtin(subgroup_size) sg: u32' : ''}) {
  let lane = t % ${u(L)};
  let slot = t / ${u(L)};
  let base = (wg.x + wg.y * nwg.x) * ${u(PER_GROUP)};
${rows}  for (var r0 = 0u; r0 < step.rows; r0 += ${u(R)}) {
    let nr = min(${u(R)}, step.rows - r0);
${normed ? rowScales(THREADS, shuffle) : ''}    var acc = array<f32, ${M * R}>();
    for (var c0 = 0u; c0 < CH; c0 += ${u(L * U)}) {
${loads}${uses}    }
    var sums = array<f32, ${M * R}>();
${shuffle ? `    if (sg >= ${u(L)}) {
${butterfly}    } else {
${tree}    }
` : tree}${stores}  }
}`
  }
}

/** Workgroups for `n` outputs. */
export function matvecGroups (n: number, rowsPerGroup: number): [number, number] {
  return grid(Math.ceil(n / rowsPerGroup))
}
