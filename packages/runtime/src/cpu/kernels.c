// Plexus CPU kernels: matrix products that read ggml's q8_0, q4_K, q5_K and q6_K blocks, and bf16 and f16
// weights, as stored.
// Built to wasm32 with SIMD128 by scripts/build-kernels.sh; loaded by arena.ts, called by
// wasm-matrix.ts and threads.ts.
//
// Activations are quantized per block first, every dot product within a block is an integer one,
// and only block scales are floats.
//  - q8_0: activations are quantized to int16 (32 per block, an f32 scale amax/32767), weights
//    are widened as they are read, and i32x4.dot_i16x8_s (x86 pmaddwd) multiplies and adds pairs:
//    exact for any int8 weight. llama.cpp quantizes them to int8 (q8_0) instead; the dot_i16x8
//    sequence read int8 activations widened to int16 anyway, so 16 bits cost no instruction and
//    leave only the weights' error (KL against float32 0.48× llama.cpp's; docs/benchmarks.md).
//  - the k-quants take llama.cpp's q8_K activations (256 int8 with an f32 scale and sums of each
//    16): their kernels multiply bytes (below), where 16-bit activations would double the work.
//  - q4_K: the 4-bit weights are 0..15, so with relaxed SIMD i16x8.relaxed_dot_i8x16_i7x16_s (x86
//    pmaddubsw: unsigned × signed bytes, pairs added) gives exact int16 sums, which
//    i32x4.dot_i16x8_s multiplies by the sub-block's scale: llama.cpp's AVX2 sequence. Built
//    without relaxed SIMD (kernels.wasm, for engines that lack it), products are widened first.
//  - q5_K, q6_K: the same, with 5- and 6-bit unsigned weights (q6_K's stored q + 32: the 32 comes
//    off once per block through the activations' sums of 16).
//
// No static data and no stack: every pointer comes from JS (the same module instance may run in
// several threads over one shared memory, each with its own stack pointer global).

#include <stdint.h>
#include <wasm_simd128.h>

#define QK8_0 32
#define Q8_0_BYTES 34
#define QK_K 256
#define Q4_K_BYTES 144
#define Q5_K_BYTES 176
#define Q6_K_BYTES 210

typedef uint32_t u32;

// rows of row_bytes each in ~64 KiB (at least one)
#define CHUNK_ROWS(row_bytes) ((row_bytes) >= 65536 ? 1 : 65536 / (row_bytes))

static inline u32 load_u32(const uint8_t *p) { u32 v; __builtin_memcpy(&v, p, 4); return v; }
static inline uint16_t load_u16(const uint8_t *p) { uint16_t v; __builtin_memcpy(&v, p, 2); return v; }

static inline float hsum_f32(v128_t v) {
  return wasm_f32x4_extract_lane(v, 0) + wasm_f32x4_extract_lane(v, 1) +
         wasm_f32x4_extract_lane(v, 2) + wasm_f32x4_extract_lane(v, 3);
}

static inline int hsum_i32(v128_t v) {
  v = wasm_i32x4_add(v, wasm_i32x4_shuffle(v, v, 2, 3, 0, 1));
  return wasm_i32x4_extract_lane(wasm_i32x4_add(v, wasm_i32x4_shuffle(v, v, 1, 0, 3, 2)), 0);
}

static inline float amax32(const float *x) {
  v128_t m = wasm_f32x4_splat(0);
  for (int j = 0; j < 32; j += 4) m = wasm_f32x4_max(m, wasm_f32x4_abs(wasm_v128_load(x + j)));
  float a = wasm_f32x4_extract_lane(m, 0), b = wasm_f32x4_extract_lane(m, 1);
  float c = wasm_f32x4_extract_lane(m, 2), d = wasm_f32x4_extract_lane(m, 3);
  a = a > b ? a : b; c = c > d ? c : d;
  return a > c ? a : c;
}

// 16 floats · s, rounded half to even, to 16 int8 (values are within ±127 by construction).
static inline v128_t round16(const float *x, v128_t s) {
  v128_t a = wasm_i32x4_trunc_sat_f32x4(wasm_f32x4_nearest(wasm_f32x4_mul(wasm_v128_load(x), s)));
  v128_t b = wasm_i32x4_trunc_sat_f32x4(wasm_f32x4_nearest(wasm_f32x4_mul(wasm_v128_load(x + 4), s)));
  v128_t c = wasm_i32x4_trunc_sat_f32x4(wasm_f32x4_nearest(wasm_f32x4_mul(wasm_v128_load(x + 8), s)));
  v128_t d = wasm_i32x4_trunc_sat_f32x4(wasm_f32x4_nearest(wasm_f32x4_mul(wasm_v128_load(x + 12), s)));
  return wasm_i8x16_narrow_i16x8(wasm_i16x8_narrow_i32x4(a, b), wasm_i16x8_narrow_i32x4(c, d));
}

// Activations for q8_0 weights: n values (whole blocks of 32) → q[n] int16 and d[n/32], with
// d = amax/32767 and q = round-half-even(x · 32767/amax), so |q| ≤ 32767 and a block's pair sums
// (≤ 2·128·32767 per dot lane, four dots added) stay far inside int32.
void quantize_i16(const float *x, int16_t *q, float *d, int n) {
  for (int b = 0; b < n / QK8_0; b++, x += QK8_0, q += QK8_0) {
    const float amax = amax32(x);
    d[b] = amax / 32767.0f;
    const v128_t id = wasm_f32x4_splat(amax != 0.0f ? 32767.0f / amax : 0.0f);
    for (int j = 0; j < QK8_0; j += 8) {
      const v128_t a = wasm_i32x4_trunc_sat_f32x4(wasm_f32x4_nearest(wasm_f32x4_mul(wasm_v128_load(x + j), id)));
      const v128_t c = wasm_i32x4_trunc_sat_f32x4(wasm_f32x4_nearest(wasm_f32x4_mul(wasm_v128_load(x + j + 4), id)));
      wasm_v128_store(q + j, wasm_i16x8_narrow_i32x4(a, c));
    }
  }
}

// quantize_row_q8_K_ref: the value of largest magnitude (first one) maps to −127, d = 1/iscale.
// Also bs[16 per block]: the sum of each 16 q (ggml's bsums), which the k-quants' mins (q4_K,
// q5_K: pairs of them) and q6_K's offset of 32 multiply.
void quantize_q8_K(const float *x, int8_t *q, float *d, int16_t *bs, int n) {
  for (int b = 0; b < n / QK_K; b++, x += QK_K, q += QK_K, bs += 16) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < QK_K; j += 32) { float a = amax32(x + j); amax = a > amax ? a : amax; }
    for (int j = 0; j < QK_K; j++) if (__builtin_fabsf(x[j]) == amax) { max = x[j]; break; }
    if (amax == 0.0f) {
      d[b] = 0.0f;
      for (int j = 0; j < QK_K; j += 16) wasm_v128_store(q + j, wasm_i8x16_splat(0));
      for (int j = 0; j < 16; j++) bs[j] = 0;
      continue;
    }
    const float iscale = -127.0f / max;
    const v128_t s = wasm_f32x4_splat(iscale);
    for (int j = 0; j < QK_K; j += 16) wasm_v128_store(q + j, round16(x + j, s));
    for (int j = 0; j < 16; j++) {
      v128_t t = wasm_i32x4_extadd_pairwise_i16x8(wasm_i16x8_extadd_pairwise_i8x16(wasm_v128_load(q + 16 * j)));
      bs[j] = (int16_t)hsum_i32(t);
    }
    d[b] = 1.0f / iscale;
  }
}

// T tokens (t0..t0+T-1) of one row: the weights are loaded and widened once for all T tokens.
// always_inline with a constant T lets clang keep acc[] in registers (no wasm stack).
static inline __attribute__((always_inline)) void
row_q8_0(const uint8_t *row, int nb, const int16_t *x, int cols, const float *dx, float *y, int rows, const float *half, const int T) {
  v128_t acc[4];
  _Pragma("clang loop unroll(full)") for (int k = 0; k < T; k++) acc[k] = wasm_f32x4_splat(0);
  for (int b = 0; b < nb; b++, x += QK8_0) {
    const uint8_t *blk = row + b * Q8_0_BYTES;
    const v128_t w0 = wasm_v128_load(blk + 2), w1 = wasm_v128_load(blk + 18);
    const v128_t wa = wasm_i16x8_extend_low_i8x16(w0), wb = wasm_i16x8_extend_high_i8x16(w0);
    const v128_t wc = wasm_i16x8_extend_low_i8x16(w1), wd = wasm_i16x8_extend_high_i8x16(w1);
    const float dw = half[load_u16(blk)];
    _Pragma("clang loop unroll(full)") for (int k = 0; k < T; k++) {
      const int16_t *xk = x + k * cols;
      // Σ w·x over the block: i32x4.dot_i16x8_s multiplies and adds pairs (x86 pmaddwd)
      const v128_t s = wasm_i32x4_add(
          wasm_i32x4_add(wasm_i32x4_dot_i16x8(wa, wasm_v128_load(xk)), wasm_i32x4_dot_i16x8(wb, wasm_v128_load(xk + 8))),
          wasm_i32x4_add(wasm_i32x4_dot_i16x8(wc, wasm_v128_load(xk + 16)), wasm_i32x4_dot_i16x8(wd, wasm_v128_load(xk + 24))));
      acc[k] = wasm_f32x4_add(acc[k], wasm_f32x4_mul(wasm_f32x4_convert_i32x4(s), wasm_f32x4_splat(dw * dx[k * nb + b])));
    }
  }
  _Pragma("clang loop unroll(full)") for (int k = 0; k < T; k++) y[(uint32_t)k * rows] = hsum_f32(acc[k]);
}

// y[t·rows + r] = Σ_b d_w[r,b]·d_x[t,b] · Σ_i q_w[r,b,i]·q_x[t,b,i], for rows r0 ≤ r < r1.
void matmul_q8_0(const uint8_t *w, int rows, int cols, const int16_t *xq, const float *xd, int tokens,
                 float *y, int r0, int r1, const float *half) {
  const int nb = cols / QK8_0;
  // Chunks of rows (~64 KiB, they stay in L2) outside, tiles of 4 tokens inside them, rows of the
  // chunk innermost: each weight comes from memory once, and a tile's activations stay in L1.
  const int chunk = CHUNK_ROWS(nb * Q8_0_BYTES);
  for (int rc = r0; rc < r1; rc += chunk) {
    const int re = rc + chunk < r1 ? rc + chunk : r1;
    int t = 0;
    for (; t + 4 <= tokens; t += 4)
      for (int r = rc; r < re; r++)
        row_q8_0(w + (uint32_t)r * nb * Q8_0_BYTES, nb, xq + (uint32_t)t * cols, cols, xd + t * nb, y + (uint32_t)t * rows + r, rows, half, 4);
    for (; t < tokens; t++)
      for (int r = rc; r < re; r++)
        row_q8_0(w + (uint32_t)r * nb * Q8_0_BYTES, nb, xq + (uint32_t)t * cols, cols, xd + t * nb, y + (uint32_t)t * rows + r, rows, half, 1);
  }
}

// Σ over pairs of 16 unsigned weights (0..63: q4_K's nibbles, q5_K's 5 bits, q6_K's 6 bits) ·
// int8 activations, as eight int16 lanes (|·| ≤ 2·63·127).
static inline v128_t dot16_u(v128_t w, v128_t x) {
#ifdef __wasm_relaxed_simd__
  return wasm_i16x8_relaxed_dot_i8x16_i7x16(x, w);
#else
  return wasm_i16x8_add(wasm_i16x8_extmul_low_i8x16(w, x), wasm_i16x8_extmul_high_i8x16(w, x));
#endif
}

// Each byte of h shifted so that its bit `from` lands on bit `to` (the caller masks the rest).
static inline v128_t move_bits(v128_t h, const int from, const int to) {
  return from <= to ? wasm_i8x16_shl(h, to - from) : wasm_u8x16_shr(h, from - to);
}

// Bit `bit` of each byte of h moved to bit 4 (value 16): q5_K's fifth bit.
static inline v128_t bit_to_16(v128_t h, const int bit) { return wasm_v128_and(move_bits(h, bit, 4), wasm_i8x16_splat(0x10)); }

// Σ_j min_j·(Σ of sub-block j's 32 activations) from ggml's per-16 bsums: each min counts twice.
static inline int sum_mins(v128_t mins, const int16_t *bs) {
  const v128_t m0 = wasm_i16x8_shuffle(mins, mins, 0, 0, 1, 1, 2, 2, 3, 3);
  const v128_t m1 = wasm_i16x8_shuffle(mins, mins, 4, 4, 5, 5, 6, 6, 7, 7);
  return hsum_i32(wasm_i32x4_add(wasm_i32x4_dot_i16x8(m0, wasm_v128_load(bs)), wasm_i32x4_dot_i16x8(m1, wasm_v128_load(bs + 8))));
}

// T tokens (t0..t0+T-1) of one q4_K (Q5 = 0) or q5_K (Q5 = 1) row: the two formats differ only by
// q5_K's fifth bits (qh[32] before qs); weights and scales are unpacked once for all T tokens.
static inline __attribute__((always_inline)) void
row_q45_K(const uint8_t *row, int nb, const int8_t *x, int cols, const float *xd, const int16_t *xbs,
          float *y, int rows, const float *half, const int T, const int Q5) {
  const int bytes = Q5 ? Q5_K_BYTES : Q4_K_BYTES, qs = Q5 ? 48 : 16;
  const v128_t m4 = wasm_i8x16_splat(0x0f);
  float acc[4];
  _Pragma("clang loop unroll(full)") for (int k = 0; k < T; k++) acc[k] = 0.0f;
  for (int b = 0; b < nb; b++, x += QK_K) {
    const uint8_t *blk = row + b * bytes;
    // the twelve scale bytes → eight 6-bit scales (bytes of sc0, sc1) and eight mins (of mn0,
    // mn1), unpacked as llama.cpp does (utmp with kmask1..3)
    const u32 u0 = load_u32(blk + 4), u1 = load_u32(blk + 8), u2 = load_u32(blk + 12);
    const u32 sc0 = u0 & 0x3f3f3f3fu, sc1 = (u2 & 0x0f0f0f0fu) | (((u0 >> 6) & 0x03030303u) << 4);
    const u32 mn0 = u1 & 0x3f3f3f3fu, mn1 = ((u2 >> 4) & 0x0f0f0f0fu) | (((u1 >> 6) & 0x03030303u) << 4);
    const v128_t mins = wasm_u16x8_extend_low_u8x16(wasm_i32x4_make(mn0, mn1, 0, 0));
    // q5_K: bit 2j of qh[l] is the fifth bit of value l of sub-block 2j, bit 2j+1 of sub-block 2j+1
    const v128_t h0 = Q5 ? wasm_v128_load(blk + 16) : wasm_i8x16_splat(0);
    const v128_t h1 = Q5 ? wasm_v128_load(blk + 32) : wasm_i8x16_splat(0);
    v128_t sumi[4];
    _Pragma("clang loop unroll(full)") for (int k = 0; k < T; k++) sumi[k] = wasm_i32x4_splat(0);
    // each 32 bytes hold sub-block 2j in their low nibbles and 2j+1 in their high nibbles
    _Pragma("clang loop unroll(full)") for (int j = 0; j < 4; j++) {
      const v128_t a = wasm_v128_load(blk + qs + 32 * j), c = wasm_v128_load(blk + qs + 16 + 32 * j);
      v128_t la = wasm_v128_and(a, m4), lc = wasm_v128_and(c, m4);
      v128_t ha = wasm_u8x16_shr(a, 4), hc = wasm_u8x16_shr(c, 4);
      if (Q5) {
        la = wasm_v128_or(la, bit_to_16(h0, 2 * j)); lc = wasm_v128_or(lc, bit_to_16(h1, 2 * j));
        ha = wasm_v128_or(ha, bit_to_16(h0, 2 * j + 1)); hc = wasm_v128_or(hc, bit_to_16(h1, 2 * j + 1));
      }
      const v128_t slo = wasm_i16x8_splat(((j < 2 ? sc0 : sc1) >> (16 * (j & 1))) & 0xff);
      const v128_t shi = wasm_i16x8_splat(((j < 2 ? sc0 : sc1) >> (16 * (j & 1) + 8)) & 0xff);
      _Pragma("clang loop unroll(full)") for (int k = 0; k < T; k++) {
        const int8_t *xj = x + k * cols + 64 * j;
        // |lo|, |hi| ≤ 4·31·127 per lane; the dot multiplies by the 6-bit scale and adds pairs
        const v128_t lo = wasm_i16x8_add(dot16_u(la, wasm_v128_load(xj)), dot16_u(lc, wasm_v128_load(xj + 16)));
        const v128_t hi = wasm_i16x8_add(dot16_u(ha, wasm_v128_load(xj + 32)), dot16_u(hc, wasm_v128_load(xj + 48)));
        sumi[k] = wasm_i32x4_add(sumi[k], wasm_i32x4_add(wasm_i32x4_dot_i16x8(lo, slo), wasm_i32x4_dot_i16x8(hi, shi)));
      }
    }
    // integer sums to scalars first: how the lanes split them differs between the two builds'
    // dot16_u, their totals do not, so both builds round the same floats
    const float d = half[load_u16(blk)], dmin = half[load_u16(blk + 2)];
    _Pragma("clang loop unroll(full)") for (int k = 0; k < T; k++) {
      const float dy = xd[k * nb + b];
      const int summ = sum_mins(mins, xbs + 16 * (k * nb + b));
      acc[k] += (d * dy) * (float)hsum_i32(sumi[k]) - (dmin * dy) * (float)summ;
    }
  }
  _Pragma("clang loop unroll(full)") for (int k = 0; k < T; k++) y[(uint32_t)k * rows] = acc[k];
}

// T tokens of one q6_K row. A half-block (128 values) is ql[64] (low 4 bits) and qh[32] (high 2
// bits): value l, l+32, l+64, l+96 of the half take ql[l]'s low, ql[l+32]'s low, ql[l]'s high and
// ql[l+32]'s high nibble, and bits 0-1, 2-3, 4-5, 6-7 of qh[l]. Each 16 values have an int8 scale.
// The weights are read as stored (q + 32, 0..63, unsigned like q4_K's nibbles) and the offset is
// taken off once per block: Σ sc·(q − 32)·x = Σ sc·q·x − 32·Σ_g sc_g·bsum_g.
static inline __attribute__((always_inline)) void
row_q6_K(const uint8_t *row, int nb, const int8_t *x, int cols, const float *xd, const int16_t *xbs,
         float *y, int rows, const float *half, const int T) {
  const v128_t m4 = wasm_i8x16_splat(0x0f), m30 = wasm_i8x16_splat(0x30);
  float acc[4];
  _Pragma("clang loop unroll(full)") for (int k = 0; k < T; k++) acc[k] = 0.0f;
  for (int b = 0; b < nb; b++, x += QK_K) {
    const uint8_t *blk = row + b * Q6_K_BYTES;
    const int8_t *sc = (const int8_t *)(blk + 192);
    v128_t sumi[4];
    _Pragma("clang loop unroll(full)") for (int k = 0; k < T; k++) sumi[k] = wasm_i32x4_splat(0);
    _Pragma("clang loop unroll(full)") for (int j = 0; j < 2; j++) {
      const uint8_t *ql = blk + 64 * j;
      const v128_t h0 = wasm_v128_load(blk + 128 + 32 * j), h1 = wasm_v128_load(blk + 144 + 32 * j);
      // groups 2p and 2p+1 of the half (values 32p..32p+31): ql[32(p & 1)..]'s low (p < 2) or high
      // nibbles, bits 2p, 2p+1 of qh; a pair at a time keeps few vectors live across the tokens
      _Pragma("clang loop unroll(full)") for (int p = 0; p < 4; p++) {
        const v128_t la = wasm_v128_load(ql + 32 * (p & 1)), lb = wasm_v128_load(ql + 32 * (p & 1) + 16);
        const v128_t qa = wasm_v128_or(p < 2 ? wasm_v128_and(la, m4) : wasm_u8x16_shr(la, 4), wasm_v128_and(move_bits(h0, 2 * p, 4), m30));
        const v128_t qb = wasm_v128_or(p < 2 ? wasm_v128_and(lb, m4) : wasm_u8x16_shr(lb, 4), wasm_v128_and(move_bits(h1, 2 * p, 4), m30));
        const v128_t sa = wasm_i16x8_splat(sc[8 * j + 2 * p]), sb = wasm_i16x8_splat(sc[8 * j + 2 * p + 1]);
        _Pragma("clang loop unroll(full)") for (int k = 0; k < T; k++) {
          const int8_t *xp = x + k * cols + 128 * j + 32 * p;
          // each group: pairs of q·x (≤ 2·63·127) times its scale (int8), pairs added in int32
          sumi[k] = wasm_i32x4_add(sumi[k], wasm_i32x4_add(wasm_i32x4_dot_i16x8(dot16_u(qa, wasm_v128_load(xp)), sa),
                                                           wasm_i32x4_dot_i16x8(dot16_u(qb, wasm_v128_load(xp + 16)), sb)));
        }
      }
    }
    const v128_t scl = wasm_i16x8_extend_low_i8x16(wasm_v128_load(sc)), sch = wasm_i16x8_extend_high_i8x16(wasm_v128_load(sc));
    const float d = half[load_u16(blk + 208)];
    _Pragma("clang loop unroll(full)") for (int k = 0; k < T; k++) {
      const int16_t *bs = xbs + 16 * (k * nb + b);
      const int off = hsum_i32(wasm_i32x4_add(wasm_i32x4_dot_i16x8(scl, wasm_v128_load(bs)), wasm_i32x4_dot_i16x8(sch, wasm_v128_load(bs + 8))));
      acc[k] += (d * xd[k * nb + b]) * (float)(hsum_i32(sumi[k]) - 32 * off);
    }
  }
  _Pragma("clang loop unroll(full)") for (int k = 0; k < T; k++) y[(uint32_t)k * rows] = acc[k];
}

// Rows r0 ≤ r < r1 of y = x · Wᵀ for a k-quant W (KIND 4, 5, 6: q4_K, q5_K, q6_K) and q8_K x:
// chunks of rows outside, tiles of 4 tokens inside, rows of the chunk innermost (as matmul_q8_0).
static inline __attribute__((always_inline)) void
matmul_K(const uint8_t *w, int rows, int cols, const int8_t *xq, const float *xd, const int16_t *xbs,
         int tokens, float *y, int r0, int r1, const float *half, const int KIND) {
  const int nb = cols / QK_K;
  const int bytes = KIND == 4 ? Q4_K_BYTES : KIND == 5 ? Q5_K_BYTES : Q6_K_BYTES;
  const int chunk = CHUNK_ROWS(nb * bytes);
  for (int rc = r0; rc < r1; rc += chunk) {
    const int re = rc + chunk < r1 ? rc + chunk : r1;
    int t = 0;
    // rows rc ≤ r < re for tokens t..t+T-1
#define ROWS_K(T) \
    for (int r = rc; r < re; r++) { \
      const uint8_t *wr = w + (uint32_t)r * nb * bytes; \
      const int8_t *xt = xq + (uint32_t)t * cols; \
      float *yt = y + (uint32_t)t * rows + r; \
      if (KIND == 6) row_q6_K(wr, nb, xt, cols, xd + t * nb, xbs + 16 * t * nb, yt, rows, half, T); \
      else row_q45_K(wr, nb, xt, cols, xd + t * nb, xbs + 16 * t * nb, yt, rows, half, T, KIND == 5); \
    }
    for (; t + 4 <= tokens; t += 4) { ROWS_K(4) }
    for (; t < tokens; t++) { ROWS_K(1) }
#undef ROWS_K
  }
}

// As ggml_vec_dot_q4_K_q8_K: per super-block d·dy·Σ_j scale_j·(q4·q8)_j − dmin·dy·Σ_j min_j·bsum_j.
void matmul_q4_K(const uint8_t *w, int rows, int cols, const int8_t *xq, const float *xd, const int16_t *xbs,
                 int tokens, float *y, int r0, int r1, const float *half) {
  matmul_K(w, rows, cols, xq, xd, xbs, tokens, y, r0, r1, half, 4);
}

// As ggml_vec_dot_q5_K_q8_K: q4_K's sum with 5-bit weights (0..31).
void matmul_q5_K(const uint8_t *w, int rows, int cols, const int8_t *xq, const float *xd, const int16_t *xbs,
                 int tokens, float *y, int r0, int r1, const float *half) {
  matmul_K(w, rows, cols, xq, xd, xbs, tokens, y, r0, r1, half, 5);
}

// As ggml_vec_dot_q6_K_q8_K: per super-block d·dy·Σ_g scale_g·((q6 − 32)·q8)_g.
void matmul_q6_K(const uint8_t *w, int rows, int cols, const int8_t *xq, const float *xd, const int16_t *xbs,
                 int tokens, float *y, int r0, int r1, const float *half) {
  matmul_K(w, rows, cols, xq, xd, xbs, tokens, y, r0, r1, half, 6);
}

// Four f16 values (in the low halves of u32 lanes) as float32, exactly: the exponent and mantissa
// moved to float32's places make a float 2^-112 times the value (subnormals included), so one
// product by 2^112 rescales it; exponent 31 (inf, NaN) becomes float32's 255.
static inline v128_t f16_to_f32x4(v128_t h) {
  const v128_t em = wasm_i32x4_shl(wasm_v128_and(h, wasm_i32x4_splat(0x7fff)), 13);
  const v128_t sign = wasm_i32x4_shl(wasm_v128_and(h, wasm_i32x4_splat(0x8000)), 16);
  const v128_t scaled = wasm_f32x4_mul(em, wasm_f32x4_splat(0x1.0p+112f));
  const v128_t special = wasm_i32x4_ge(em, wasm_i32x4_splat(0x0F800000));
  return wasm_v128_or(wasm_v128_bitselect(wasm_v128_or(em, wasm_i32x4_splat(0x70000000)), scaled, special), sign);
}

// T tokens of one bf16 (or, with f16 set, f16) row. A bf16 value is the top half of a float32, so
// widening is a shift; an f16 one widens exactly too. The products are float32 as the widened
// tfjs path computes them. Two accumulators per token (the row's low and high four lanes of each
// eight) keep two add chains in flight.
static inline __attribute__((always_inline)) void
row_bf16(const uint16_t *row, const float *x, int cols, float *y, int rows, const int T, const int f16) {
  v128_t lo[4], hi[4];
  _Pragma("clang loop unroll(full)") for (int k = 0; k < T; k++) { lo[k] = wasm_f32x4_splat(0); hi[k] = wasm_f32x4_splat(0); }
  for (int c = 0; c < cols; c += 8) {
    const v128_t w = wasm_v128_load(row + c);
    const v128_t wl = f16 ? f16_to_f32x4(wasm_u32x4_extend_low_u16x8(w)) : wasm_i32x4_shl(wasm_u32x4_extend_low_u16x8(w), 16);
    const v128_t wh = f16 ? f16_to_f32x4(wasm_u32x4_extend_high_u16x8(w)) : wasm_i32x4_shl(wasm_u32x4_extend_high_u16x8(w), 16);
    _Pragma("clang loop unroll(full)") for (int k = 0; k < T; k++) {
      const float *xk = x + (uint32_t)k * cols + c;
      lo[k] = wasm_f32x4_add(lo[k], wasm_f32x4_mul(wl, wasm_v128_load(xk)));
      hi[k] = wasm_f32x4_add(hi[k], wasm_f32x4_mul(wh, wasm_v128_load(xk + 4)));
    }
  }
  _Pragma("clang loop unroll(full)") for (int k = 0; k < T; k++) y[(uint32_t)k * rows] = hsum_f32(wasm_f32x4_add(lo[k], hi[k]));
}

static inline __attribute__((always_inline)) void
matmul_16(const uint16_t *w, int rows, int cols, const float *x, int tokens, float *y, int r0, int r1, const int f16) {
  const int chunk = CHUNK_ROWS(cols * 2);
  for (int rc = r0; rc < r1; rc += chunk) {
    const int re = rc + chunk < r1 ? rc + chunk : r1;
    int t = 0;
    for (; t + 4 <= tokens; t += 4)
      for (int r = rc; r < re; r++)
        row_bf16(w + (uint32_t)r * cols, x + (uint32_t)t * cols, cols, y + (uint32_t)t * rows + r, rows, 4, f16);
    for (; t < tokens; t++)
      for (int r = rc; r < re; r++)
        row_bf16(w + (uint32_t)r * cols, x + (uint32_t)t * cols, cols, y + (uint32_t)t * rows + r, rows, 1, f16);
  }
}

// Rows r0 ≤ r < r1 of y = x · Wᵀ for bf16 (f16) W [rows, cols] (cols a multiple of 8) and float32 x.
void matmul_bf16(const uint16_t *w, int rows, int cols, const float *x, int tokens, float *y, int r0, int r1) {
  matmul_16(w, rows, cols, x, tokens, y, r0, r1, 0);
}
void matmul_f16(const uint16_t *w, int rows, int cols, const float *x, int tokens, float *y, int r0, int r1) {
  matmul_16(w, rows, cols, x, tokens, y, r0, r1, 1);
}
