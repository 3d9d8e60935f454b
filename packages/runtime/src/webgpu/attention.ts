// Causal grouped-query attention of one session's rows against its cache on the GPU.
//
// One workgroup of 256 threads per (query head, row). Keys go in chunks of 256, one key per
// thread: its score is q·k over 16-byte reads of the cached key; the chunk's max and sum update a
// running max and sum (online softmax), so no score matrix is stored and memory does not grow
// with the square of the tokens. Values are then summed by (4 dims, every G2-th key) per thread,
// 16 bytes a read, and the G2 partial sums of each 4 dims are added in a fixed order at the end.
import { STEP, ATTENTION_ROW, qkvConsts, legacyAttentionKernel, softmaxChunk } from './kernels.ts'
import type { AttentionShape } from './kernels.ts'

const W = 256

const u = (n: number): string => `${n >>> 0}u`

/** The cache as 16-byte words: `kv4(e)` reads elements e…e+3 (e a multiple of 4). */
function cacheWords (a: AttentionShape): string {
  if (a.kv === 'f16') {
    return `@group(0) @binding(2) var<storage, read> cache: array<vec2<u32>>;
fn kv4 (e: u32) -> vec4<f32> { let w = cache[e / 4u]; return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)); }`
  }
  return `@group(0) @binding(2) var<storage, read> cache: array<vec4<f32>>;
fn kv4 (e: u32) -> vec4<f32> { return cache[e / 4u]; }`
}

/** `legacy`: the first kernel (one workgroup of 64 threads, 64 keys a chunk), which software Vulkan compiles fast. */
export function attentionKernel (a: AttentionShape, legacy = false): string {
  if (legacy) return legacyAttentionKernel(a)
  const D4 = a.headDim / 4
  if (!Number.isInteger(D4) || D4 > W) throw new Error(`the GPU attention kernel needs head_dim a multiple of 4 and at most ${4 * W} (got ${a.headDim})`)
  const G2 = Math.floor(W / D4)
  return `${STEP}
@group(0) @binding(0) var<storage, read> qkv: array<f32>;
@group(0) @binding(1) var<storage, read> rot: array<f32>;
${cacheWords(a)}
@group(0) @binding(3) var<storage, read_write> att: array<f32>;
@group(0) @binding(4) var<uniform> step: Step;
${qkvConsts(a)}
const SCALE = ${(1 / Math.sqrt(a.headDim)).toExponential()};
const D4 = ${u(D4)};
const G2 = ${u(G2)};
var<workgroup> q: array<vec4<f32>, ${D4}>;
var<workgroup> p: array<f32, ${W}>;
var<workgroup> red: array<f32, ${W}>;
var<workgroup> part: array<vec4<f32>, ${W}>;

@compute @workgroup_size(${W})
fn main (@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) t: u32) {
${ATTENTION_ROW}  let base = row * QKV + h * D;
  // q, rotated (rotate-half) and scaled, four dims a thread
  if (t < D4) {
    var v: vec4<f32>;
    for (var c = 0u; c < 4u; c++) {
      let i = 4u * t + c;
      let j = select(i - HALF, i + HALF, i < HALF);
      v[c] = (qkv[base + i] * rot[r + i] + qkv[base + j] * rot[r + D + i]) * SCALE;
    }
    q[t] = v;
  }
  workgroupBarrier();
  var m = -1e30;
  var l = 0.0;
  // this thread's share of the output: dims 4·dq…4·dq+3 over keys g, g + G2, …
  let dq = t % D4;
  let g = t / D4;
  var acc = vec4<f32>(0.0);
  for (var c0 = 0u; c0 < keys; c0 += ${u(W)}) {
    let j = c0 + t;
    var s = -1e30;
    if (j < keys) {
      s = 0.0;
      let kb = j * KVD + kvh * D;
      for (var i = 0u; i < D4; i++) { s += dot(q[i], kv4(kb + 4u * i)); }
    }
${softmaxChunk(W)}    if (g < G2) {
      let n = min(${u(W)}, keys - c0);
      let vb = step.cap * KVD + c0 * KVD + kvh * D + 4u * dq;
      var sum = acc * rescale;
      for (var jj = g; jj < n; jj += G2) { sum += p[jj] * kv4(vb + jj * KVD); }
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
