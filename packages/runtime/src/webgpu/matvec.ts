// The decode projection y = x·Wᵀ for a few rows, streaming W once at the memory's pace.
//
// A workgroup of 256 threads computes 8 outputs: 32 lanes per weight row, each lane reading whole
// chunks of the row (16–32 contiguous bytes and their scales: 8–16 f16 weights, a q8_0 block's 32
// int8, a 64-weight group of a q4_K super-block), dequantizing in registers and dotting them with
// every batch row. The lanes' partial sums are then added by a butterfly of subgroup shuffles (or
// through workgroup memory where subgroups are narrower than 32 or missing). The order of every
// sum is fixed by the shape alone, so a row gives the same bits alone or in a batch.
import { linearBindings, legacyMatvecKernel, rowScales, grid, MATVEC_ROWS } from './kernels.ts'
import type { LinearShape } from './kernels.ts'
import type { WeightFormat } from './formats.ts'
import type { GpuKernels } from './kernel-choice.ts'

/**
 * Lanes per weight row, rows per workgroup, and chunks a lane loads before it uses any: 32 × 8 × 1
 * by default; PLEXUS_GPU_MATVEC_SHAPE=LxR or LxRxU (e.g. 64x4, 16x16, 32x8x2) sets others for
 * measurements. Read when a layer is bound.
 */
function matvecShape (): { lanes: number, rows: number, unroll: number } {
  const v = process.env.PLEXUS_GPU_MATVEC_SHAPE
  if (v == null || v === '') return { lanes: 32, rows: 8, unroll: 1 }
  const m = /^(\d+)x(\d+)(?:x(\d+))?$/.exec(v)
  const lanes = Number(m?.[1]); const rows = Number(m?.[2]); const unroll = Number(m?.[3] ?? 1)
  if (m == null || ![4, 8, 16, 32, 64, 128].includes(lanes) || !(rows >= 2) || rows % 2 !== 0 || lanes * rows > 256 || ![1, 2, 4].includes(unroll)) {
    throw new Error(`PLEXUS_GPU_MATVEC_SHAPE must be LxR or LxRxU with L a power of two from 4 to 128, R even (gate and up rows pair up), L·R ≤ 256 and U 1, 2 or 4 (got ${JSON.stringify(v)})`)
  }
  return { lanes, rows, unroll }
}

/** A weight row read in chunks: weights per chunk, vec4s per chunk, and the WGSL that loads one. */
interface Chunking { weights: number, vec4s: number, code: string }

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
      // buffer's rows·k int8 (formats.ts, gpuChunk); y = q·d as ggml computes it
      return {
        weights: 32,
        vec4s: 8,
        code: `@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
const SCALES = ${u(rows * k / 4)};
fn word (i: u32) -> u32 { return w[i / 4u][i % 4u]; }
// four int8 sign-extended by shifting each to the top and back
fn i8x4 (q: u32) -> vec4<f32> { return vec4<f32>((vec4<i32>(bitcast<i32>(q)) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u)); }
fn chunk (n: u32, c: u32) -> array<vec4<f32>, 8> {
  let b = n * ${u(k / 32)} + c;
  let d = unpack2x16float(word(SCALES + b / 2u) >> (16u * (b % 2u))).x;
  let lo = w[2u * b];
  let hi = w[2u * b + 1u];
  return array<vec4<f32>, 8>(i8x4(lo.x) * d, i8x4(lo.y) * d, i8x4(lo.z) * d, i8x4(lo.w) * d,
                             i8x4(hi.x) * d, i8x4(hi.y) * d, i8x4(hi.z) * d, i8x4(hi.w) * d);
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
  const { lanes: LANES, rows: ROWS_PER_GROUP, unroll: UNROLL } = matvecShape()
  const THREADS = LANES * ROWS_PER_GROUP
  const shuffle = subgroups && kernels === 'fast'
  const CH = s.k / ch.weights
  // gated: the first half of a workgroup's weight rows are gate rows, the second half the up rows
  // of the same outputs, which meet in workgroup memory
  const G = s.gated === true
  const normed = s.norm != null
  const PER_GROUP = G ? ROWS_PER_GROUP / 2 : ROWS_PER_GROUP
  // normalizing: the norm's weights times W's as a chunk is read, the row's 1/rms at the end
  const norming = '        for (var j = 0u; j < NV; j++) { wv[j] *= normWeight[c * NV + j]; }\n'
  const sc = normed ? ' * scale[r]' : ''
  // a lane's UNROLL chunks are all loaded (clamped to the row) before the first is used, so more
  // bytes are in flight; each is then used in the order a single chunk would be
  const chunks = Array.from({ length: UNROLL }, (_, i) => i)
  const loads = chunks.map(i => `      var wv${i} = chunk(row, min(c0 + ${u(i * LANES)} + lane, CH - 1u));\n`).join('')
  const uses = chunks.map(i => `      {
        let c = c0 + ${u(i * LANES)} + lane;
        if (c < CH) {
          var wv = wv${i};
${normed ? norming : ''}          for (var r = 0u; r < ${u(R)}; r++) {
            if (r < nr) {
              let xb = (r0 + r) * K4 + c * NV;
              var s = 0.0;
              for (var j = 0u; j < NV; j++) { s += dot(wv[j], x[xb + j]); }
              acc[r] += s;
            }
          }
        }
      }
`).join('')
  const tree = `      for (var r = 0u; r < ${u(R)}; r++) { part[r * ${u(THREADS)} + t] = acc[r]; }
      workgroupBarrier();
      for (var h = ${u(LANES / 2)}; h > 0u; h >>= 1u) {
        if (lane < h) { for (var r = 0u; r < ${u(R)}; r++) { part[r * ${u(THREADS)} + t] += part[r * ${u(THREADS)} + t + h]; } }
        workgroupBarrier();
      }
      for (var r = 0u; r < ${u(R)}; r++) { sums[r] = part[r * ${u(THREADS)} + t]; }
      workgroupBarrier();
`
  return {
    rowsPerGroup: PER_GROUP,
    code: `${shuffle ? 'enable subgroups;\n' : ''}${linearBindings(s, ch.code)}
const CH = ${u(CH)};
const NV = ${u(ch.vec4s)};
var<workgroup> part: array<f32, ${THREADS * R}>;
${G ? `var<workgroup> pair: array<f32, ${ROWS_PER_GROUP * R}>;` : ''}

@compute @workgroup_size(${THREADS})
fn main (@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) t: u32${shuffle ? ', @builtin(subgroup_size) sg: u32' : ''}) {
  let lane = t % ${u(LANES)};
  let slot = t / ${u(LANES)};
  // this workgroup's output of this slot, and the weight row the slot reads
  let out = (wg.x + wg.y * nwg.x) * ${u(PER_GROUP)} + slot % ${u(PER_GROUP)};
  let live = out < OUTS;
  let row = min(${G ? `select(out, out + OUTS, slot >= ${u(PER_GROUP)})` : 'out'}, N - 1u);
  for (var r0 = 0u; r0 < step.rows; r0 += ${u(R)}) {
    let nr = min(${u(R)}, step.rows - r0);
${normed ? rowScales(THREADS) : ''}    var acc = array<f32, ${R}>();
    for (var c0 = 0u; c0 < CH; c0 += ${u(LANES * UNROLL)}) {
${loads}${uses}    }
    // the row's sums, in its lane 0
    var sums = array<f32, ${R}>();
${shuffle ? `    if (sg >= ${u(LANES)}) {
      // a row's lanes sit in one subgroup: a butterfly leaves the row's sum in every lane
      for (var r = 0u; r < ${u(R)}; r++) {
        var v = acc[r];
        for (var o = ${u(LANES / 2)}; o > 0u; o >>= 1u) { v += subgroupShuffleXor(v, o); }
        sums[r] = v;
      }
    } else {
${tree}    }
` : tree}${G
  ? `    if (lane == 0u) { for (var r = 0u; r < ${u(R)}; r++) { pair[slot * ${u(R)} + r] = sums[r]; } }
    workgroupBarrier();
    if (lane == 0u && live && slot < ${u(PER_GROUP)}) {
      for (var r = 0u; r < nr; r++) { store(r0 + r, out, swiglu(pair[slot * ${u(R)} + r]${sc}, pair[(slot + ${u(PER_GROUP)}) * ${u(R)} + r]${sc})); }
    }
    workgroupBarrier();
`
  : `    if (lane == 0u && live) { for (var r = 0u; r < nr; r++) { store(r0 + r, out, sums[r]${sc}); } }
`}  }
}`
  }
}

/** Workgroups for `n` outputs. */
export function matvecGroups (n: number, rowsPerGroup: number): [number, number] {
  return grid(Math.ceil(n / rowsPerGroup))
}
