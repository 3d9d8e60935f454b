// WGSL for one transformer block, generated per model shape: dimensions are constants in the
// source, so one compiled pipeline serves every block of a span. Per-step values (rows in the
// batch, the block's place in the step) come from a `Step` uniform slot; what varies by row
// (position, page table) from a storage buffer (attention.ts).

import { weightLoader } from './formats.ts'
import type { WeightFormat } from './formats.ts'
export type { WeightFormat } from './formats.ts'

/** Rows the matrix-vector kernel handles per pass over the weights; larger batches loop. */
export const MATVEC_ROWS = 8
/** Above this many rows a step's projections run as a tiled GEMM instead of matrix-vector. */
export const GEMM_MIN_ROWS = 33
/** Bytes between two `Step` uniform slots (WebGPU's dynamic-offset alignment). */
export const STEP_SLOT = 256

/** A grid of `groups` workgroups, in two dimensions past WebGPU's 65535 per dimension. */
export function grid (groups: number): [number, number] {
  return [Math.min(groups, 65535), Math.ceil(groups / 65535)]
}

export const STEP = /* wgsl */`
struct Step {
  rows: u32,  // rows in the whole batch
  block: u32, // the block's index among the step's blocks (its sessions' page tables)
}`

const u = (n: number): string => `${n >>> 0}u`

/** Threads per workgroup for a reduction over `n` items: a power of two in [32, max], no more than the work needs. */
function workgroupFor (n: number, max = 256): number {
  let w = 32
  while (w < max && w < n) w *= 2
  return w
}

/**
 * Threads per output of the one-output-per-workgroup kernel. 64 keeps every GPU busy with few
 * reduction steps; 256 made software Vulkan (lavapipe, the CI's GPU) 4× slower, and 128 or 256
 * gained nothing on an H200.
 */
const MATVEC_THREADS = 64

/** out = x / rms(x) · weight, one workgroup per row. */
export function rmsNormKernel (hidden: number, eps: number): string {
  const W = workgroupFor(hidden / 4)
  return `${STEP}
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> step: Step;
const H = ${u(hidden)};
var<workgroup> part: array<f32, ${W}>;

@compute @workgroup_size(${W})
fn main (@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let row = wg.x;
  if (row >= step.rows) { return; }
  var ss = 0.0;
  for (var i = t; i < H; i += ${u(W)}) { let v = x[row * H + i]; ss += v * v; }
  part[t] = ss;
  workgroupBarrier();
  for (var s = ${u(W / 2)}; s > 0u; s >>= 1u) {
    if (t < s) { part[t] += part[t + s]; }
    workgroupBarrier();
  }
  let scale = inverseSqrt(part[0] / f32(H) + ${eps.toExponential()});
  for (var i = t; i < H; i += ${u(W)}) { out[row * H + i] = x[row * H + i] * scale * weight[i]; }
}`
}

export interface LinearShape {
  format: WeightFormat
  /** Input width (a multiple of 4). */
  k: number
  /** Output rows of this weight chunk. */
  n: number
  /** Where the chunk's outputs start in a row of `y`, and `y`'s row length. */
  n0: number
  yStride: number
  bias: boolean
  /** y += x·Wᵀ (a residual connection) instead of y = x·Wᵀ. */
  accumulate: boolean
  /**
   * The rows are a gate projection then an up projection (n/2 each), and y = silu(gate)·up: the
   * SwiGLU MLP's first half in one kernel (decode kernels only).
   */
  gated?: boolean
  /**
   * x is the residual stream, normalized here (RMSNorm with this epsilon and the weights bound
   * after the bias) before the product: the norm in the projection's kernel (decode kernels only).
   */
  norm?: number
}

/** WGSL: silu(g)·u, as the separate SwiGLU kernel computes it. */
export const SWIGLU = 'fn swiglu (g: f32, u: f32) -> f32 { return g * (1.0 / (1.0 + exp(-g))) * u; }'

/** The bindings and helpers every linear kernel shares; `weights`: binding 1's declaration, if not the `w4` loader. */
export function linearBindings (s: LinearShape, weights = weightLoader(s.format, 1)): string {
  return `${STEP}
@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
${weights}
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> step: Step;
${s.bias ? '@group(0) @binding(4) var<storage, read> bias: array<f32>;' : ''}
${s.norm != null ? `@group(0) @binding(${s.bias ? 5 : 4}) var<storage, read> normWeight: array<vec4<f32>>;\nconst EPS = ${s.norm.toExponential()};` : ''}
const K4 = ${u(s.k / 4)};
const N = ${u(s.n)};
// outputs a row: N, or N/2 where gate and up rows make one
const OUTS = ${u(s.gated === true ? s.n / 2 : s.n)};${s.gated === true ? `
${SWIGLU}` : ''}
const N0 = ${u(s.n0)};
const YS = ${u(s.yStride)};
fn store (r: u32, n: u32, v: f32) {
  let i = r * YS + N0 + n;
  y[i] = ${s.accumulate ? 'y[i] + ' : ''}(v${s.bias ? ' + bias[n]' : ''});
}`
}

/**
 * WGSL for a normalizing kernel of `w` threads (`t`), at the top of its loop over batch rows
 * r0…r0+nr: `scale[r]`, row r0 + r's 1/rms, reduced through `part` (`w`·MATVEC_ROWS floats).
 * `shuffle` (the kernel has `sg`, its subgroup size): where subgroups hold 32 lanes, each 32
 * threads' sum comes from a butterfly of shuffles and the w/32 sums are added in order, two
 * barriers instead of a tree's log2(w) + 2.
 */
export function rowScales (w: number, shuffle = false): string {
  const squares = (r: string): string => `var ss = 0.0;
      for (var k = t; k < K4; k += ${u(w)}) { let v = x[(r0 + ${r}) * K4 + k]; ss += dot(v, v); }`
  const tree = `    for (var r = 0u; r < nr; r++) {
      ${squares('r')}
      part[r * ${u(w)} + t] = ss;
    }
    workgroupBarrier();
    for (var h = ${u(w / 2)}; h > 0u; h >>= 1u) {
      if (t < h) { for (var r = 0u; r < nr; r++) { part[r * ${u(w)} + t] += part[r * ${u(w)} + t + h]; } }
      workgroupBarrier();
    }
    for (var r = 0u; r < nr; r++) { scale[r] = inverseSqrt(part[r * ${u(w)}] / f32(K4 * 4u) + EPS); }
    workgroupBarrier();
`
  const declare = `    var scale = array<f32, ${MATVEC_ROWS}>();
`
  if (!shuffle || w % 32 !== 0) return declare + tree
  return `${declare}    if (sg >= 32u) {
      for (var r = 0u; r < nr; r++) {
        ${squares('r')}
        for (var o = 16u; o > 0u; o >>= 1u) { ss += subgroupShuffleXor(ss, o); }
        if (t % 32u == 0u) { part[r * ${u(w)} + t / 32u] = ss; }
      }
      workgroupBarrier();
      for (var r = 0u; r < nr; r++) {
        var ss = 0.0;
        for (var g = 0u; g < ${u(w / 32)}; g++) { ss += part[r * ${u(w)} + g]; }
        scale[r] = inverseSqrt(ss / f32(K4 * 4u) + EPS);
      }
      workgroupBarrier();
    } else {
${tree.replace(/^/gm, '  ')}    }
`
}

/**
 * y = x·Wᵀ for a few rows (decode) where rows are not whole chunks of matvec.ts's kernel: one
 * workgroup per output, its threads striding the input so that neighbours read neighbouring
 * weights; each row's sum is reduced in the same order whatever the batch, so batched steps equal
 * separate ones bit for bit.
 */
export function legacyMatvecKernel (s: LinearShape): string {
  const R = MATVEC_ROWS
  const W = workgroupFor(s.k / 4, MATVEC_THREADS)
  // gated: the up row's sums beside the gate row's, in the second half of `part`
  const G = s.gated === true
  const normed = s.norm != null
  const sc = normed ? ' * sc' : ''
  const both = (code: (a: string, p: string) => string): string => G ? `${code('acc', '0u')} ${code('acu', `${u(W * R)}`)}` : code('acc', '0u')
  return `${linearBindings(s)}
var<workgroup> part: array<f32, ${W * R * (G ? 2 : 1)}>;

@compute @workgroup_size(${W})
fn main (@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let n = wg.x + wg.y * nwg.x;
  if (n >= OUTS) { return; }
  for (var r0 = 0u; r0 < step.rows; r0 += ${u(R)}) {
    let nr = min(${u(R)}, step.rows - r0);
${normed ? rowScales(W) : ''}    var acc = array<f32, ${R}>();
${G ? `    var acu = array<f32, ${R}>();\n` : ''}    for (var k = t; k < K4; k += ${u(W)}) {
      // normalizing: the norm's weights times W's here, the row's 1/rms at the end
      let wv = w4(n * K4 + k)${normed ? ' * normWeight[k]' : ''};
      ${G ? `let wu = w4((n + OUTS) * K4 + k)${normed ? ' * normWeight[k]' : ''};` : ''}
      for (var r = 0u; r < ${u(R)}; r++) {
        if (r0 + r < step.rows) {
          let xv = x[(r0 + r) * K4 + k];
          acc[r] += dot(wv, xv);
          ${G ? 'acu[r] += dot(wu, xv);' : ''}
        }
      }
    }
    // only the rows this pass holds are reduced (a lone decode row: one)
    for (var r = 0u; r < nr; r++) { ${both((a, p) => `part[${p} + r * ${u(W)} + t] = ${a}[r];`)} }
    workgroupBarrier();
    for (var h = ${u(W / 2)}; h > 0u; h >>= 1u) {
      if (t < h) {
        for (var r = 0u; r < nr; r++) { ${both((_, p) => `part[${p} + r * ${u(W)} + t] += part[${p} + r * ${u(W)} + t + h];`)} }
      }
      workgroupBarrier();
    }
${normed ? '    let sc = scale[min(t, nr - 1u)];\n' : ''}    if (t < nr) { store(r0 + t, n, ${G ? `swiglu(part[t * ${u(W)}]${sc}, part[${u(W * R)} + t * ${u(W)}]${sc})` : `part[t * ${u(W)}]${sc}`}); }
    workgroupBarrier();
  }
}`
}

/** y = x·Wᵀ for many rows (prefill): 64×64 output tiles, 4×4 per thread, 16-wide slices of k in workgroup memory. */
export function gemmKernel (s: LinearShape): string {
  return `${linearBindings(s)}
var<workgroup> xs: array<vec4<f32>, 256>;
var<workgroup> ws: array<vec4<f32>, 256>;

@compute @workgroup_size(256)
fn main (@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let n0 = wg.x * 64u;
  let m0 = wg.y * 64u;
  let tx = t % 16u;
  let ty = t / 16u;
  let lr = t / 4u;
  let lk = t % 4u;
  var acc: array<vec4<f32>, 4>;
  for (var k0 = 0u; k0 < K4; k0 += 4u) {
    let kk = k0 + lk;
    let m = m0 + lr;
    let nn = n0 + lr;
    xs[t] = select(vec4<f32>(0.0), x[m * K4 + kk], m < step.rows && kk < K4);
    ws[t] = select(vec4<f32>(0.0), w4(nn * K4 + kk), nn < N && kk < K4);
    workgroupBarrier();
    for (var q = 0u; q < 4u; q++) {
      let w0 = ws[(tx * 4u) * 4u + q];
      let w1 = ws[(tx * 4u + 1u) * 4u + q];
      let w2 = ws[(tx * 4u + 2u) * 4u + q];
      let w3 = ws[(tx * 4u + 3u) * 4u + q];
      for (var i = 0u; i < 4u; i++) {
        let xv = xs[(ty * 4u + i) * 4u + q];
        acc[i] += vec4<f32>(dot(xv, w0), dot(xv, w1), dot(xv, w2), dot(xv, w3));
      }
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < 4u; i++) {
    let m = m0 + ty * 4u + i;
    for (var j = 0u; j < 4u; j++) {
      let n = n0 + tx * 4u + j;
      if (m < step.rows && n < N) { store(m, n, acc[i][j]); }
    }
  }
}`
}

/** act = silu(gate) · up, from the fused `[rows, 2F]` gate/up projection. */
export function swigluKernel (ffn: number): string {
  return `${STEP}
@group(0) @binding(0) var<storage, read> gu: array<f32>;
@group(0) @binding(1) var<storage, read_write> act: array<f32>;
@group(0) @binding(2) var<uniform> step: Step;
const F = ${u(ffn)};
${SWIGLU}

@compute @workgroup_size(256)
fn main (@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let i = (wg.x + wg.y * nwg.x) * 256u + t;
  if (i >= step.rows * F) { return; }
  let r = i / F;
  let c = i % F;
  act[i] = swiglu(gu[r * 2u * F + c], gu[r * 2u * F + F + c]);
}`
}
