// WGSL for one transformer block, generated per model shape: dimensions are constants in the
// source, so one compiled pipeline serves every block of a span. Per-step values (rows in the
// batch, one session's rows, position and cache capacity) come from a `Step` uniform slot.

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
  rows: u32,   // rows in the whole batch
  row0: u32,   // this session's first row
  tokens: u32, // this session's rows
  pos0: u32,   // position of this session's first row
  cap: u32,    // positions this session's cache buffer holds
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
}

/** The bindings and helpers every linear kernel shares; `weights`: binding 1's declaration, if not the `w4` loader. */
export function linearBindings (s: LinearShape, weights = weightLoader(s.format, 1)): string {
  return `${STEP}
@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
${weights}
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> step: Step;
${s.bias ? '@group(0) @binding(4) var<storage, read> bias: array<f32>;' : ''}
const K4 = ${u(s.k / 4)};
const N = ${u(s.n)};
const N0 = ${u(s.n0)};
const YS = ${u(s.yStride)};
fn store (r: u32, n: u32, v: f32) {
  let i = r * YS + N0 + n;
  y[i] = ${s.accumulate ? 'y[i] + ' : ''}(v${s.bias ? ' + bias[n]' : ''});
}`
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
  return `${linearBindings(s)}
var<workgroup> part: array<f32, ${W * R}>;

@compute @workgroup_size(${W})
fn main (@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let n = wg.x + wg.y * nwg.x;
  if (n >= N) { return; }
  for (var r0 = 0u; r0 < step.rows; r0 += ${u(R)}) {
    var acc = array<f32, ${R}>();
    for (var k = t; k < K4; k += ${u(W)}) {
      let wv = w4(n * K4 + k);
      for (var r = 0u; r < ${u(R)}; r++) {
        if (r0 + r < step.rows) { acc[r] += dot(wv, x[(r0 + r) * K4 + k]); }
      }
    }
    // only the rows this pass holds are reduced (a lone decode row: one)
    let nr = min(${u(R)}, step.rows - r0);
    for (var r = 0u; r < nr; r++) { part[r * ${u(W)} + t] = acc[r]; }
    workgroupBarrier();
    for (var h = ${u(W / 2)}; h > 0u; h >>= 1u) {
      if (t < h) {
        for (var r = 0u; r < nr; r++) { part[r * ${u(W)} + t] += part[r * ${u(W)} + t + h]; }
      }
      workgroupBarrier();
    }
    if (t < nr) { store(r0 + t, n, part[t * ${u(W)}]); }
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

export interface AttentionShape {
  numHeads: number
  numKvHeads: number
  headDim: number
  /** Precision of the cached keys and values (f16: two per u32, half the memory). */
  kv?: 'f32' | 'f16'
}

/**
 * WGSL: one chunk's step of the online softmax, for a workgroup of `w` threads that each hold one
 * key's score `s` (key `j`, valid below `keys`): the chunk's max and sum through `red`, each key's
 * weight into `p`, and the running max `m` and sum `l` brought up to date; `rescale` is what the
 * values summed so far must be multiplied by.
 */
export function softmaxChunk (w: number): string {
  return `    red[t] = s;
    workgroupBarrier();
    for (var k = ${u(w / 2)}; k > 0u; k >>= 1u) {
      if (t < k) { red[t] = max(red[t], red[t + k]); }
      workgroupBarrier();
    }
    let mNew = max(m, red[0]);
    workgroupBarrier();
    let e = select(0.0, exp(s - mNew), j < keys);
    p[t] = e;
    red[t] = e;
    workgroupBarrier();
    for (var k = ${u(w / 2)}; k > 0u; k >>= 1u) {
      if (t < k) { red[t] += red[t + k]; }
      workgroupBarrier();
    }
    let rescale = exp(m - mNew);
    l = l * rescale + red[0];
    m = mNew;
`
}

/** WGSL: an attention workgroup's query head, row, keys it sees, kv head, and rotary row. */
export const ATTENTION_ROW = `  let h = wg.x;
  let row = step.row0 + wg.y;
  let keys = step.pos0 + wg.y + 1u;
  let kvh = h / G;
  let r = row * 2u * D;
`

export const qkvConsts = (a: AttentionShape): string => `
const D = ${u(a.headDim)};
const HALF = ${u(a.headDim / 2)};
const KVD = ${u(a.numKvHeads * a.headDim)};
const QD = ${u(a.numHeads * a.headDim)};
const QKV = ${u((a.numHeads + 2 * a.numKvHeads) * a.headDim)};
const G = ${u(a.numHeads / a.numKvHeads)};`

/**
 * The cache buffer and its accessors, by element index (keys `[cap, KVD]`, then values):
 * `kv2(e)` reads elements e, e+1 (e even); `kv1(e)` one element; `put2(e, v)` writes two.
 */
function cacheAccess (a: AttentionShape, access: 'read' | 'read_write'): string {
  if (a.kv === 'f16') {
    return `@group(0) @binding(2) var<storage, ${access}> cache: array<u32>;
fn kv2 (e: u32) -> vec2<f32> { return unpack2x16float(cache[e / 2u]); }
fn kv1 (e: u32) -> f32 { return kv2(e & ~1u)[e % 2u]; }
${access === 'read_write' ? 'fn put2 (e: u32, v: vec2<f32>) { cache[e / 2u] = pack2x16float(v); }' : ''}`
  }
  return `@group(0) @binding(2) var<storage, ${access}> cache: array<f32>;
fn kv2 (e: u32) -> vec2<f32> { return vec2<f32>(cache[e], cache[e + 1u]); }
fn kv1 (e: u32) -> f32 { return cache[e]; }
${access === 'read_write' ? 'fn put2 (e: u32, v: vec2<f32>) { cache[e] = v.x; cache[e + 1u] = v.y; }' : ''}`
}

/**
 * One session's new keys (rotated) and values into its cache at positions pos0…; `rot` holds
 * each row's cos then signed sin `[rows, 2·D]`.
 */
export function kvAppendKernel (a: AttentionShape): string {
  return `${STEP}
@group(0) @binding(0) var<storage, read> qkv: array<f32>;
@group(0) @binding(1) var<storage, read> rot: array<f32>;
${cacheAccess(a, 'read_write')}
@group(0) @binding(3) var<uniform> step: Step;
${qkvConsts(a)}

@compute @workgroup_size(64)
fn main (@builtin(global_invocation_id) gid: vec3<u32>) {
  // one invocation per (row, kv head, i = 2j < D/2): dims i, i+1 rotate with i+D/2, i+1+D/2,
  // so each writes whole pairs (one u32 each when the cache is f16)
  let i = 2u * (gid.x % (HALF / 2u));
  let kvh = (gid.x / (HALF / 2u)) % ${u(a.numKvHeads)};
  let t = gid.x / ((HALF / 2u) * ${u(a.numKvHeads)});
  if (t >= step.tokens) { return; }
  let row = step.row0 + t;
  let src = row * QKV + QD + kvh * D;
  let k1 = vec2<f32>(qkv[src + i], qkv[src + i + 1u]);
  let k2 = vec2<f32>(qkv[src + i + HALF], qkv[src + i + HALF + 1u]);
  let r = row * 2u * D;
  let c1 = vec2<f32>(rot[r + i], rot[r + i + 1u]);
  let s1 = vec2<f32>(rot[r + D + i], rot[r + D + i + 1u]);
  let c2 = vec2<f32>(rot[r + i + HALF], rot[r + i + HALF + 1u]);
  let s2 = vec2<f32>(rot[r + D + i + HALF], rot[r + D + i + HALF + 1u]);
  let dst = (step.pos0 + t) * KVD + kvh * D;
  put2(dst + i, k1 * c1 + k2 * s1);
  put2(dst + i + HALF, k2 * c2 + k1 * s2);
  let vdst = step.cap * KVD + dst;
  put2(vdst + i, vec2<f32>(qkv[src + KVD + i], qkv[src + KVD + i + 1u]));
  put2(vdst + i + HALF, vec2<f32>(qkv[src + KVD + i + HALF], qkv[src + KVD + i + HALF + 1u]));
}`
}

/**
 * The first attention kernel, which software Vulkan runs (kernel-choice.ts): one workgroup of 64
 * threads per (query head, row), keys in chunks of 64 with a running max and sum.
 */
export function legacyAttentionKernel (a: AttentionShape): string {
  const perThread = Math.ceil(a.headDim / 64)
  return `${STEP}
@group(0) @binding(0) var<storage, read> qkv: array<f32>;
@group(0) @binding(1) var<storage, read> rot: array<f32>;
${cacheAccess(a, 'read')}
@group(0) @binding(3) var<storage, read_write> att: array<f32>;
@group(0) @binding(4) var<uniform> step: Step;
${qkvConsts(a)}
const SCALE = ${(1 / Math.sqrt(a.headDim)).toExponential()};
var<workgroup> q: array<f32, ${a.headDim}>;
var<workgroup> p: array<f32, 64>;
var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn main (@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) t: u32) {
${ATTENTION_ROW}  for (var i = t; i < D; i += 64u) {
    let j = select(i - HALF, i + HALF, i < HALF);
    let base = row * QKV + h * D;
    q[i] = (qkv[base + i] * rot[r + i] + qkv[base + j] * rot[r + D + i]) * SCALE;
  }
  workgroupBarrier();
  var m = -1e30;
  var l = 0.0;
  var acc = array<f32, ${perThread}>();
  for (var c0 = 0u; c0 < keys; c0 += 64u) {
    let j = c0 + t;
    var s = -1e30;
    if (j < keys) {
      s = 0.0;
      let kb = j * KVD + kvh * D;
      for (var i = 0u; i < D; i += 2u) { let k = kv2(kb + i); s += q[i] * k.x + q[i + 1u] * k.y; }
    }
${softmaxChunk(64)}    let n = min(64u, keys - c0);
    for (var a = 0u; a < ${u(perThread)}; a++) {
      let d = t + a * 64u;
      if (d < D) {
        var sum = acc[a] * rescale;
        let vb = step.cap * KVD + c0 * KVD + kvh * D + d;
        for (var jj = 0u; jj < n; jj++) { sum += p[jj] * kv1(vb + jj * KVD); }
        acc[a] = sum;
      }
    }
    workgroupBarrier();
  }
  for (var a = 0u; a < ${u(perThread)}; a++) {
    let d = t + a * 64u;
    if (d < D) { att[row * QD + h * D + d] = acc[a] / l; }
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

@compute @workgroup_size(256)
fn main (@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let i = (wg.x + wg.y * nwg.x) * 256u + t;
  if (i >= step.rows * F) { return; }
  let r = i / F;
  let c = i % F;
  let g = gu[r * 2u * F + c];
  act[i] = g * (1.0 / (1.0 + exp(-g))) * gu[r * 2u * F + F + c];
}`
}
