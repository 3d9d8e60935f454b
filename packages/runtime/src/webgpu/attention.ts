// Causal grouped-query attention against the paged KV cache, for every row of a step in one
// dispatch per block, which also stores the step's keys and values.
//
// Each block keeps its sessions' keys and values in one buffer of pages (kv-store.ts): a page
// holds KV_PAGE positions, keys `[KV_PAGE, KVD]` then values. A step's rows find their session's
// pages through the `paging` words: per row its position, where its session's page tables start,
// how many pages each holds and the session's first row in the step; then, per block of the step
// (`step.block`), the page ids in position order.
//
// Keys and values of positions before the step come from the cache; those of the step's own rows
// are computed from the q/k/v projection (k rotated, both rounded as the cache holds them), so no
// workgroup waits for another's writes: the workgroups of each kv head's first query head write
// their row's key and value for later steps, into positions no workgroup of this step reads.
//
// The fast kernel: one workgroup of 256 threads per (query head, row). Keys go in chunks of 256,
// one key per thread: its score is q·k over 16-byte reads of the cached key; the chunk's max and
// sum update a running max and sum (online softmax), so no score matrix is stored and memory does
// not grow with the square of the tokens. Values are then summed by (4 dims, every G2-th key) per
// thread, 16 bytes a read, and the G2 partial sums of each 4 dims are added in a fixed order at
// the end. The legacy kernel (64 threads, 64 keys a chunk) is what software Vulkan compiles fast.
import { STEP } from './kernels.ts'
import { KV_PAGE } from './kv-store.ts'

export interface AttentionShape {
  numHeads: number
  numKvHeads: number
  headDim: number
  /** Precision of the cached keys and values (f16: two per u32, half the memory). */
  kv?: 'f32' | 'f16'
}

const W = 256

const u = (n: number): string => `${n >>> 0}u`

const qkvConsts = (a: AttentionShape): string => `
const D = ${u(a.headDim)};
const HALF = ${u(a.headDim / 2)};
const KVD = ${u(a.numKvHeads * a.headDim)};
const QD = ${u(a.numHeads * a.headDim)};
const QKV = ${u((a.numHeads + 2 * a.numKvHeads) * a.headDim)};
const G = ${u(a.numHeads / a.numKvHeads)};`

/**
 * WGSL: the `paging` words at `binding`, the cache's page arithmetic (in elements), and the step's
 * own keys and values computed from `qkv` and `rot` as the cache holds them (`stored`).
 */
const pages = (a: AttentionShape, binding: number): string => `
@group(0) @binding(${binding}) var<storage, read> paging: array<u32>;
const PAGE = ${u(KV_PAGE)};
// a page: keys [PAGE, KVD], then values
const VALUES = PAGE * KVD;
// a row's position, the start of its session's page table for this block, its session's first row
fn rowPos (row: u32) -> u32 { return paging[4u * row]; }
fn rowTable (row: u32) -> u32 { return paging[4u * row + 1u] + step.block * paging[4u * row + 2u]; }
fn rowFirst (row: u32) -> u32 { return paging[4u * row + 3u]; }
// the first element of position j's key (its value is VALUES further)
fn keyAt (table: u32, j: u32) -> u32 { return paging[table + j / PAGE] * 2u * VALUES + (j % PAGE) * KVD; }
// as the cache holds it (f16: quantizeToF16, then packing is exact whatever its rounding; a
// compiler may fold unpack2x16float(pack2x16float(v)) into v, and lavapipe does)
${a.kv === 'f16' ? 'fn stored (v: vec4<f32>) -> vec4<f32> { return quantizeToF16(v); }' : 'fn stored (v: vec4<f32>) -> vec4<f32> { return v; }'}
// dims i…i+3 of a row's key for kv head kvh, rotated (rotate-half)
fn newKey (row: u32, kvh: u32, i: u32) -> vec4<f32> {
  let src = row * QKV + QD + kvh * D;
  let r = row * 2u * D;
  var v: vec4<f32>;
  for (var c = 0u; c < 4u; c++) {
    let d = i + c;
    let o = select(d - HALF, d + HALF, d < HALF);
    v[c] = qkv[src + d] * rot[r + d] + qkv[src + o] * rot[r + D + d];
  }
  return stored(v);
}
fn newValue (row: u32, kvh: u32, i: u32) -> vec4<f32> {
  let src = row * QKV + QD + KVD + kvh * D + i;
  return stored(vec4<f32>(qkv[src], qkv[src + 1u], qkv[src + 2u], qkv[src + 3u]));
}`

/**
 * The cache buffer, by element index (e a multiple of 4): `kv4(e)` reads elements e…e+3, as one
 * 16-byte word where `words` is 4 (else one or two words); `put4(e, v)` writes them.
 */
function cacheAccess (a: AttentionShape, words: 1 | 4): string {
  if (a.kv === 'f16') {
    if (words === 4) {
      return `@group(0) @binding(2) var<storage, read_write> cache: array<vec2<u32>>;
fn kv4 (e: u32) -> vec4<f32> { let w = cache[e / 4u]; return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)); }
fn put4 (e: u32, v: vec4<f32>) { cache[e / 4u] = vec2<u32>(pack2x16float(v.xy), pack2x16float(v.zw)); }`
    }
    return `@group(0) @binding(2) var<storage, read_write> cache: array<u32>;
fn kv4 (e: u32) -> vec4<f32> { return vec4<f32>(unpack2x16float(cache[e / 2u]), unpack2x16float(cache[e / 2u + 1u])); }
fn put4 (e: u32, v: vec4<f32>) { cache[e / 2u] = pack2x16float(v.xy); cache[e / 2u + 1u] = pack2x16float(v.zw); }`
  }
  if (words === 4) {
    return `@group(0) @binding(2) var<storage, read_write> cache: array<vec4<f32>>;
fn kv4 (e: u32) -> vec4<f32> { return cache[e / 4u]; }
fn put4 (e: u32, v: vec4<f32>) { cache[e / 4u] = v; }`
  }
  return `@group(0) @binding(2) var<storage, read_write> cache: array<f32>;
fn kv4 (e: u32) -> vec4<f32> { return vec4<f32>(cache[e], cache[e + 1u], cache[e + 2u], cache[e + 3u]); }
fn put4 (e: u32, v: vec4<f32>) { cache[e] = v.x; cache[e + 1u] = v.y; cache[e + 2u] = v.z; cache[e + 3u] = v.w; }`
}

/**
 * WGSL: one chunk's step of the online softmax, for a workgroup of `w` threads that each hold one
 * key's score `s` (key `j`, valid below `keys`): the chunk's max and sum through `red`, each key's
 * weight into `p`, and the running max `m` and sum `l` brought up to date; `rescale` is what the
 * values summed so far must be multiplied by.
 */
function softmaxChunk (w: number): string {
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

/** The bindings both attention kernels share: qkv, rot, cache, att, step, paging. */
function attentionBindings (a: AttentionShape, words: 1 | 4): string {
  return `${STEP}
@group(0) @binding(0) var<storage, read> qkv: array<f32>;
@group(0) @binding(1) var<storage, read> rot: array<f32>;
${cacheAccess(a, words)}
@group(0) @binding(3) var<storage, read_write> att: array<f32>;
@group(0) @binding(4) var<uniform> step: Step;
${qkvConsts(a)}
${pages(a, 5)}
const D4 = ${u(a.headDim / 4)};
const SCALE = ${(1 / Math.sqrt(a.headDim)).toExponential()};`
}

/**
 * WGSL, the start of both kernels (`w` threads): the workgroup's query head and row, the keys the
 * row sees, its kv head and page table; the session's first row and position in this step; q,
 * rotated and scaled, into `q`; the row's own key and value into `kn` and `vn` (a decode row's
 * only new position, which every thread of a chunk would otherwise compute) and, by the first
 * query head of each kv head, into the cache for later steps.
 */
const attentionStart = (w: number): string => `  let h = wg.x;
  let row = wg.y;
  let keys = rowPos(row) + 1u;
  let kvh = h / G;
  let table = rowTable(row);
  let first = rowFirst(row);
  let start = keys - 1u - (row - first);
  let base = row * QKV + h * D;
  let r = row * 2u * D;
  for (var i4 = t; i4 < D4; i4 += ${u(w)}) {
    var v: vec4<f32>;
    for (var c = 0u; c < 4u; c++) {
      let i = 4u * i4 + c;
      let o = select(i - HALF, i + HALF, i < HALF);
      v[c] = (qkv[base + i] * rot[r + i] + qkv[base + o] * rot[r + D + i]) * SCALE;
    }
    q[i4] = v;
    // the row's own key and value: read by every thread below, stored by one query head
    let kq = newKey(row, kvh, 4u * i4);
    let vq = newValue(row, kvh, 4u * i4);
    kn[i4] = kq;
    vn[i4] = vq;
    if (h % G == 0u) {
      let at = keyAt(table, keys - 1u) + kvh * D + 4u * i4;
      put4(at, kq);
      put4(at + VALUES, vq);
    }
  }
  workgroupBarrier();
  var m = -1e30;
  var l = 0.0;
`

/** WGSL: `s` += q·key of position `j`: the row's own, another row's of the step (computed), or the cache's. */
const score = `      if (j == keys - 1u) {
        for (var i = 0u; i < D4; i++) { s += dot(q[i], kn[i]); }
      } else if (j >= start) {
        for (var i = 0u; i < D4; i++) { s += dot(q[i], newKey(first + j - start, kvh, 4u * i)); }
      } else {
        let kb = keyAt(table, j) + kvh * D;
        for (var i = 0u; i < D4; i++) { s += dot(q[i], kv4(kb + 4u * i)); }
      }
`

/** WGSL: `sum` += p[jj] · the value of position c0 + jj, dims i…i+3. */
const addValue = (i: string): string => `let jp = c0 + jj;
        if (jp == keys - 1u) { sum += p[jj] * vn[${i} / 4u]; } else if (jp >= start) { sum += p[jj] * newValue(first + jp - start, kvh, ${i}); } else { sum += p[jj] * kv4(keyAt(table, jp) + VALUES + kvh * D + ${i}); }`

/** Workgroups of either attention kernel: one per (query head, row). */
export function attentionGroups (a: AttentionShape, rows: number): [number, number] {
  return [a.numHeads, rows]
}

/** `legacy`: the first kernel, which software Vulkan compiles fast. */
export function attentionKernel (a: AttentionShape, legacy = false): string {
  const D4 = a.headDim / 4
  if (!Number.isInteger(D4) || D4 > W) throw new Error(`the GPU attention kernel needs head_dim a multiple of 4 and at most ${4 * W} (got ${a.headDim})`)
  if (legacy) return legacyAttentionKernel(a)
  const G2 = Math.floor(W / D4)
  return `${attentionBindings(a, 4)}
const G2 = ${u(G2)};
var<workgroup> q: array<vec4<f32>, ${D4}>;
var<workgroup> kn: array<vec4<f32>, ${D4}>;
var<workgroup> vn: array<vec4<f32>, ${D4}>;
var<workgroup> p: array<f32, ${W}>;
var<workgroup> red: array<f32, ${W}>;
var<workgroup> part: array<vec4<f32>, ${W}>;

@compute @workgroup_size(${W})
fn main (@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) t: u32) {
${attentionStart(W)}  // this thread's share of the output: dims 4·dq…4·dq+3 over keys g, g + G2, …
  let dq = t % D4;
  let g = t / D4;
  var acc = vec4<f32>(0.0);
  for (var c0 = 0u; c0 < keys; c0 += ${u(W)}) {
    let j = c0 + t;
    var s = -1e30;
    if (j < keys) {
      s = 0.0;
${score}    }
${softmaxChunk(W)}    if (g < G2) {
      let n = min(${u(W)}, keys - c0);
      var sum = acc * rescale;
      for (var jj = g; jj < n; jj += G2) {
        ${addValue('4u * dq')}
      }
      acc = sum;
    }
    workgroupBarrier();
  }
  part[t] = acc;
  workgroupBarrier();
  if (t < D4) {
    var o = vec4<f32>(0.0);
    for (var gg = 0u; gg < G2; gg++) { o += part[gg * D4 + t]; }
    o /= l;
    let a = row * QD + h * D + 4u * t;
    att[a] = o.x; att[a + 1u] = o.y; att[a + 2u] = o.z; att[a + 3u] = o.w;
  }
}`
}

/** The first attention kernel: one workgroup of 64 threads per (query head, row), keys in chunks of 64. */
function legacyAttentionKernel (a: AttentionShape): string {
  const perThread = Math.ceil(a.headDim / 4 / 64)
  return `${attentionBindings(a, 1)}
var<workgroup> q: array<vec4<f32>, ${a.headDim / 4}>;
var<workgroup> kn: array<vec4<f32>, ${a.headDim / 4}>;
var<workgroup> vn: array<vec4<f32>, ${a.headDim / 4}>;
var<workgroup> p: array<f32, 64>;
var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn main (@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) t: u32) {
${attentionStart(64)}  var acc = array<vec4<f32>, ${perThread}>();
  for (var c0 = 0u; c0 < keys; c0 += 64u) {
    let j = c0 + t;
    var s = -1e30;
    if (j < keys) {
      s = 0.0;
${score}    }
${softmaxChunk(64)}    let n = min(64u, keys - c0);
    for (var a = 0u; a < ${u(perThread)}; a++) {
      let d4 = t + a * 64u;
      if (d4 < D4) {
        var sum = acc[a] * rescale;
        for (var jj = 0u; jj < n; jj++) {
          ${addValue('4u * d4')}
        }
        acc[a] = sum;
      }
    }
    workgroupBarrier();
  }
  for (var a = 0u; a < ${u(perThread)}; a++) {
    let d4 = t + a * 64u;
    if (d4 < D4) {
      let o = acc[a] / l;
      let i = row * QD + h * D + 4u * d4;
      att[i] = o.x; att[i + 1u] = o.y; att[i + 2u] = o.z; att[i + 3u] = o.w;
    }
  }
}`
}

/**
 * The step's `paging` words: per row its position, the start of its session's page tables, the
 * pages each holds and the session's first row; then each session's tables, one per block of the
 * step, in position order.
 * `pages(s, b)`: session s's page ids in the step's block b.
 */
export function stepPaging (sessions: Array<{ tokens: number, length: number, pages: (block: number) => number[] }>, rows: number, blocks: number): Uint32Array {
  let words = 4 * rows
  for (const s of sessions) words += blocks * s.pages(0).length
  const paging = new Uint32Array(words)
  let row = 0
  let table = 4 * rows
  for (const s of sessions) {
    const pitch = s.pages(0).length
    const first = row
    for (let t = 0; t < s.tokens; t++, row++) paging.set([s.length + t, table, pitch, first], 4 * row)
    for (let b = 0; b < blocks; b++, table += pitch) paging.set(s.pages(b), table)
  }
  return paging
}
