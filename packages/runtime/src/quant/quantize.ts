import { f32ToF16Bits, f16BitsToF32 } from '../dtype.ts'

// llama.cpp's reference quantizers (ggml-quants.c: quantize_row_q8_0_ref, quantize_row_q4_K_ref and
// quantize_row_q5_K_ref with make_qkx2_quants, quantize_row_q6_K_ref with make_qx_quants, and
// nearest_int), step by step. ggml computes in float32 without fused multiply-add (its ggml-base
// is built for baseline x86-64), so every float the C code keeps is rounded here with Math.fround:
// for +, −, ×, ÷ and sqrt of float32 operands, rounding the double result to float32 gives the
// correctly rounded float32 result, as C gets it. Comparisons follow
// the C expressions exactly (MAX/MIN with NaN, `if (!d)`), so even odd inputs give ggml's bytes.

const f = Math.fround

/** Values per q8_0 block: an f16 scale then 32 int8s. */
export const QK8_0 = 32
export const Q8_0_BLOCK_BYTES = 2 + QK8_0
/** Values per K-quant super-block. */
export const QK_K = 256
/** block_q4_K: d, dmin (f16), scales[12] (6-bit scale and min per 32 values), qs[128]. */
export const Q4_K_BLOCK_BYTES = 144
/** block_q5_K: d, dmin (f16), scales[12], qh[32] (fifth bits), qs[128]. */
export const Q5_K_BLOCK_BYTES = 176
/** block_q6_K: ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] (int8 per 16 values), d (f16). */
export const Q6_K_BLOCK_BYTES = 210

/** A row that is not whole blocks of the format. */
export class QuantizeError extends RangeError {
  constructor (message: string) { super(message); this.name = 'QuantizeError' }
}

function wholeBlocks (what: string, n: number, block: number): number {
  if (n % block !== 0) throw new QuantizeError(`${what}: ${n} values are not whole blocks of ${block}`)
  return n / block
}

/**
 * quantize_row_q8_0_ref: per block of 32, d = amax / 127 (stored as f16) and q = roundf(x · (1/d))
 * with halves away from zero. `x` may hold many rows when each row is whole blocks.
 */
export function quantizeQ8_0 (x: Float32Array): Uint8Array {
  const blocks = wholeBlocks('q8_0', x.length, QK8_0)
  const out = new Uint8Array(blocks * Q8_0_BLOCK_BYTES)
  const q = new Int8Array(out.buffer)
  for (let b = 0; b < blocks; b++) {
    const src = b * QK8_0
    let amax = 0
    for (let j = 0; j < QK8_0; j++) { const a = Math.abs(x[src + j]); amax = amax > a ? amax : a }
    const d = f(amax / 127)
    const id = d !== 0 ? f(1 / d) : 0
    const h = f32ToF16Bits(d)
    const dst = b * Q8_0_BLOCK_BYTES
    out[dst] = h & 0xff
    out[dst + 1] = h >>> 8
    for (let j = 0; j < QK8_0; j++) {
      const v = f(x[src + j] * id)
      // roundf, then C's float → int8 conversion (NaN and ±inf land on 0 either way)
      q[dst + 2 + j] = v < 0 ? -Math.round(-v) : Math.round(v)
    }
  }
  return out
}

const f32 = new Float32Array(1)
const i32 = new Int32Array(f32.buffer)

/** ggml's nearest_int: round half to even through the float bits of `v + 1.5·2^23`. */
function nearestInt (v: number): number {
  f32[0] = v + 12582912
  return (i32[0] & 0x007fffff) - 0x00400000
}

/** make_qkx2_quants' second result (`*the_min`). */
let theMin = 0

/**
 * make_qkx2_quants: levels L[0..n) in [0, nmax] and (scale, min) minimising the weighted error
 * of scale·L − min against x, searched over nstep+1 candidate scales. Returns the scale.
 */
function makeQkx2Quants (n: number, nmax: number, x: Float32Array, xo: number, weights: Float32Array, L: Uint8Array, lo: number,
  Laux: Uint8Array, rmin: number, rdelta: number, nstep: number, useMad: boolean): number {
  let min = x[xo]
  let max = x[xo]
  let sumW = weights[0]
  let sumX = f(sumW * x[xo])
  for (let i = 1; i < n; i++) {
    const xi = x[xo + i]
    if (xi < min) min = xi
    if (xi > max) max = xi
    const w = weights[i]
    sumW = f(sumW + w)
    sumX = f(sumX + f(w * xi))
  }
  if (min > 0) min = 0
  if (max === min) {
    for (let i = 0; i < n; i++) L[lo + i] = 0
    theMin = -min
    return 0
  }
  let iscale = f(nmax / f(max - min))
  let scale = f(1 / iscale)
  let bestError = 0
  for (let i = 0; i < n; i++) {
    const l = nearestInt(f(iscale * f(x[xo + i] - min)))
    const li = Math.max(0, Math.min(nmax, l))
    L[lo + i] = li
    let diff = f(f(f(scale * li) + min) - x[xo + i])
    diff = useMad ? Math.abs(diff) : f(diff * diff)
    bestError = f(bestError + f(weights[i] * diff))
  }
  if (nstep < 1) { theMin = -min; return scale }
  for (let is = 0; is <= nstep; is++) {
    // `min` moves to the best fit found so far, and the candidate scales with it (as in ggml)
    iscale = f(f(f(rmin + f(rdelta * is)) + nmax) / f(max - min))
    let sumL = 0; let sumL2 = 0; let sumXL = 0
    for (let i = 0; i < n; i++) {
      const l = Math.max(0, Math.min(nmax, nearestInt(f(iscale * f(x[xo + i] - min)))))
      Laux[i] = l
      const wl = f(weights[i] * l)
      sumL = f(sumL + wl)
      sumL2 = f(sumL2 + f(wl * l))
      sumXL = f(sumXL + f(wl * x[xo + i]))
    }
    const D = f(f(sumW * sumL2) - f(sumL * sumL))
    if (D > 0) {
      let thisScale = f(f(f(sumW * sumXL) - f(sumX * sumL)) / D)
      let thisMin = f(f(f(sumL2 * sumX) - f(sumL * sumXL)) / D)
      if (thisMin > 0) {
        thisMin = 0
        thisScale = f(sumXL / sumL2)
      }
      let curError = 0
      for (let i = 0; i < n; i++) {
        let diff = f(f(f(thisScale * Laux[i]) + thisMin) - x[xo + i])
        diff = useMad ? Math.abs(diff) : f(diff * diff)
        curError = f(curError + f(weights[i] * diff))
      }
      if (curError < bestError) {
        for (let i = 0; i < n; i++) L[lo + i] = Laux[i]
        bestError = curError
        scale = thisScale
        min = thisMin
      }
    }
  }
  theMin = -min
  return scale
}

/** ggml's get_scale_min_k4 into `sm`: the j-th 6-bit scale and min of the 12 bytes at `o`. */
function scaleMin (b: Uint8Array, o: number, j: number, sm: number[]): void {
  if (j < 4) { sm[0] = b[o + j] & 63; sm[1] = b[o + j + 4] & 63; return }
  sm[0] = (b[o + j + 4] & 0xf) | ((b[o + j - 4] >> 6) << 4)
  sm[1] = (b[o + j + 4] >> 4) | ((b[o + j] >> 6) << 4)
}

/**
 * quantize_row_q4_K_ref: per super-block of 256, eight sub-blocks of 32 get a scale and a min from
 * make_qkx2_quants (weights av_x + |x|), both quantized to 6 bits against the largest (f16 d, dmin),
 * then each value is re-rounded to 4 bits against its sub-block's quantized scale and min. On one
 * JavaScript thread: `quantizeQ4_K` (cpu/quantize-blocks.ts) gives the same bytes on every core.
 */
export function quantizeQ4_KScalar (x: Float32Array): Uint8Array { return quantizeQ45_K(x, false) }

/**
 * quantize_row_q5_K_ref: q4_K's algorithm with 5-bit values (make_qkx2_quants over 0..31, its
 * search from rmin −0.5 in 15 steps), the fifth bits packed apart in qh[32].
 */
export function quantizeQ5_K (x: Float32Array): Uint8Array { return quantizeQ45_K(x, true) }

function quantizeQ45_K (x: Float32Array, five: boolean): Uint8Array {
  const bytes = five ? Q5_K_BLOCK_BYTES : Q4_K_BLOCK_BYTES
  const nmax = five ? 31 : 15
  const blocks = wholeBlocks(five ? 'q5_K' : 'q4_K', x.length, QK_K)
  const out = new Uint8Array(blocks * bytes)
  const L = new Uint8Array(QK_K)
  const Laux = new Uint8Array(32)
  const weights = new Float32Array(32)
  const scales = new Float32Array(QK_K / 32)
  const mins = new Float32Array(QK_K / 32)
  const sm = [0, 0]
  const rdelta = f(0.1)
  for (let i = 0; i < blocks; i++) {
    const xo = i * QK_K
    const o = i * bytes
    let maxScale = 0
    let maxMin = 0
    for (let j = 0; j < QK_K / 32; j++) {
      const s = xo + 32 * j
      let sumX2 = 0
      for (let l = 0; l < 32; l++) sumX2 = f(sumX2 + f(x[s + l] * x[s + l]))
      const avX = f(Math.sqrt(f(sumX2 / 32)))
      for (let l = 0; l < 32; l++) weights[l] = avX + Math.abs(x[s + l])
      scales[j] = five
        ? makeQkx2Quants(32, 31, x, s, weights, L, 32 * j, Laux, -0.5, rdelta, 15, false)
        : makeQkx2Quants(32, 15, x, s, weights, L, 32 * j, Laux, -1, rdelta, 20, false)
      mins[j] = theMin
      if (scales[j] > maxScale) maxScale = scales[j]
      if (mins[j] > maxMin) maxMin = mins[j]
    }
    const invScale = maxScale > 0 ? f(63 / maxScale) : 0
    const invMin = maxMin > 0 ? f(63 / maxMin) : 0
    const sc = o + 4
    for (let j = 0; j < QK_K / 32; j++) {
      // nearest_int's int lands in a uint8_t, then MIN(63, ·)
      const ls = Math.min(63, nearestInt(f(invScale * scales[j])) & 0xff)
      const lm = Math.min(63, nearestInt(f(invMin * mins[j])) & 0xff)
      if (j < 4) {
        out[sc + j] = ls
        out[sc + j + 4] = lm
      } else {
        out[sc + j + 4] = (ls & 0xf) | ((lm & 0xf) << 4)
        out[sc + j - 4] |= (ls >> 4) << 6
        out[sc + j] |= (lm >> 4) << 6
      }
    }
    const dBits = f32ToF16Bits(f(maxScale / 63))
    const dminBits = f32ToF16Bits(f(maxMin / 63))
    out[o] = dBits & 0xff; out[o + 1] = dBits >>> 8
    out[o + 2] = dminBits & 0xff; out[o + 3] = dminBits >>> 8
    const dAll = f16BitsToF32(dBits)
    const dminAll = f16BitsToF32(dminBits)
    for (let j = 0; j < QK_K / 32; j++) {
      scaleMin(out, sc, j, sm)
      const d = f(dAll * sm[0])
      if (d === 0) continue // keeps make_qkx2_quants' levels, as ggml does
      const dm = f(dminAll * sm[1])
      for (let ii = 0; ii < 32; ii++) {
        const l = nearestInt(f(f(x[xo + 32 * j + ii] + dm) / d))
        L[32 * j + ii] = Math.max(0, Math.min(nmax, l))
      }
    }
    // value l of sub-block 2k in the low nibble of qs[32k + l], of 2k+1 in the high one; q5_K's
    // fifth bits in bits 2k, 2k+1 of qh[l]
    const q = o + (five ? 48 : 16)
    for (let j = 0, k = 0; j < QK_K; j += 64, k++) {
      for (let l = 0; l < 32; l++) {
        const l1 = L[j + l]; const l2 = L[j + l + 32]
        out[q + 32 * k + l] = (l1 & 0xf) | ((l2 & 0xf) << 4)
        if (five) out[o + 16 + l] |= ((l1 >> 4) << (2 * k)) | ((l2 >> 4) << (2 * k + 1))
      }
    }
  }
  return out
}

/** ggml's GROUP_MAX_EPS: groups whose largest magnitude is below it quantize to zeros. */
const GROUP_MAX_EPS = f(1e-15)

/**
 * make_qx_quants with rmse_type 1 (weights x²) and no importance: signed levels L − nmax in
 * [−nmax, nmax) for n values at xo, into L at lo, and the scale that minimises the weighted
 * error, searched over iscales −(nmax + 0.1·is)/max for is in −9..9.
 */
function makeQxQuants (n: number, nmax: number, x: Float32Array, xo: number, L: Uint8Array, lo: number): number {
  let max = 0; let amax = 0
  for (let i = 0; i < n; i++) { const ax = Math.abs(x[xo + i]); if (ax > amax) { amax = ax; max = x[xo + i] } }
  if (amax < GROUP_MAX_EPS) { L.fill(0, lo, lo + n); return 0 }
  const level = (iscale: number, i: number): number => Math.max(-nmax, Math.min(nmax - 1, nearestInt(f(iscale * x[xo + i]))))
  let iscale = f(-nmax / max)
  let sumlx = 0; let suml2 = 0
  for (let i = 0; i < n; i++) {
    const l = level(iscale, i)
    L[lo + i] = l + nmax
    const w = f(x[xo + i] * x[xo + i])
    sumlx = f(sumlx + f(f(w * x[xo + i]) * l))
    suml2 = f(suml2 + f(f(w * l) * l))
  }
  let scale = suml2 !== 0 ? f(sumlx / suml2) : 0
  let best = f(scale * sumlx)
  for (let is = -9; is <= 9; is++) {
    if (is === 0) continue
    iscale = f(-f(nmax + f(f(0.1) * is)) / max)
    sumlx = 0; suml2 = 0
    for (let i = 0; i < n; i++) {
      const l = level(iscale, i)
      const w = f(x[xo + i] * x[xo + i])
      sumlx = f(sumlx + f(f(w * x[xo + i]) * l))
      suml2 = f(suml2 + f(f(w * l) * l))
    }
    if (suml2 > 0 && f(sumlx * sumlx) > f(best * suml2)) {
      for (let i = 0; i < n; i++) L[lo + i] = nmax + level(iscale, i)
      scale = f(sumlx / suml2); best = f(scale * sumlx)
    }
  }
  return scale
}

/**
 * quantize_row_q6_K_ref: per super-block of 256, sixteen groups of 16 get a scale from
 * make_qx_quants (levels −32..31), quantized to int8 against the largest in magnitude (f16 d), then
 * each value is re-rounded to 6 bits against its group's quantized scale and stored as q + 32.
 */
export function quantizeQ6_K (x: Float32Array): Uint8Array {
  const blocks = wholeBlocks('q6_K', x.length, QK_K)
  const out = new Uint8Array(blocks * Q6_K_BLOCK_BYTES)
  const L = new Uint8Array(QK_K)
  const scales = new Float32Array(QK_K / 16)
  for (let i = 0; i < blocks; i++) {
    const xo = i * QK_K
    const o = i * Q6_K_BLOCK_BYTES
    let maxScale = 0; let maxAbsScale = 0
    for (let ib = 0; ib < QK_K / 16; ib++) {
      scales[ib] = makeQxQuants(16, 32, x, xo + 16 * ib, L, 16 * ib)
      const a = Math.abs(scales[ib])
      if (a > maxAbsScale) { maxAbsScale = a; maxScale = scales[ib] }
    }
    if (maxAbsScale < GROUP_MAX_EPS) continue // all zeros, d = +0
    const iscale = f(-128 / maxScale)
    const dBits = f32ToF16Bits(f(1 / iscale))
    out[o + 208] = dBits & 0xff; out[o + 209] = dBits >>> 8
    for (let ib = 0; ib < QK_K / 16; ib++) out[o + 192 + ib] = Math.min(127, nearestInt(f(iscale * scales[ib]))) & 0xff
    const dAll = f16BitsToF32(dBits)
    for (let j = 0; j < QK_K / 16; j++) {
      const d = f(dAll * ((out[o + 192 + j] << 24) >> 24))
      if (d === 0) continue
      for (let ii = 0; ii < 16; ii++) L[16 * j + ii] = Math.max(-32, Math.min(31, nearestInt(f(x[xo + 16 * j + ii] / d)))) + 32
    }
    // value l, l+32, l+64, l+96 of each half: low nibbles of ql[l], ql[l+32], high nibbles of the
    // same, and two bits each of qh[l]
    for (let h = 0; h < 2; h++) {
      const e = 128 * h
      for (let l = 0; l < 32; l++) {
        const [q1, q2, q3, q4] = [L[e + l], L[e + l + 32], L[e + l + 64], L[e + l + 96]]
        out[o + 64 * h + l] = (q1 & 0xf) | ((q3 & 0xf) << 4)
        out[o + 64 * h + l + 32] = (q2 & 0xf) | ((q4 & 0xf) << 4)
        out[o + 128 + 32 * h + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6)
      }
    }
  }
  return out
}
