// llama.cpp's quantize_row_q4_K_ref (ggml-quants.c, with make_qkx2_quants and nearest_int) in C,
// for `--quantize q4_k` and the GGUF writer: the same float32 operations in the same order (no
// fused multiply-add: -ffp-contract=off), so the same bytes as llama.cpp's and as the JavaScript
// port in quant/quantize.ts (tests compare all three). Each call quantizes super-blocks b0..b1, so
// that the kernel threads (threads.ts) share a tensor's blocks.
//
// As in kernels.c: no static data and no stack. The arrays llama.cpp keeps on its stack live in
// `work` (QUANTIZE_WORK bytes per thread, given by the caller).

#include <stdint.h>

#define QK_K 256
#define Q4_K_BYTES 144

typedef uint32_t u32;

static inline float bits_f32(u32 w) { union { u32 u; float f; } v = { w }; return v.f; }
static inline u32 f32_bits(float f) { union { float f; u32 u; } v = { f }; return v.u; }

// ggml's nearest_int: round half to even through the float bits of v + 1.5·2^23.
static inline int nearest_int(float v) { return (int)(f32_bits(v + 12582912.f) & 0x007fffff) - 0x00400000; }

static inline int clamp(int l, int hi) { return l < 0 ? 0 : l > hi ? hi : l; }

// ggml's portable fp32 → fp16 (round to nearest even), as its baseline x86-64 build converts.
static inline uint16_t f32_to_f16(float f) {
  float base = (__builtin_fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;
  const u32 w = f32_bits(f), shl1_w = w + w, sign = w & 0x80000000u;
  u32 bias = shl1_w & 0xFF000000u;
  if (bias < 0x71000000u) bias = 0x71000000u;
  base = bits_f32((bias >> 1) + 0x07800000u) + base;
  const u32 bits = f32_bits(base);
  const u32 nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
  return (uint16_t)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

// make_qkx2_quants over one sub-block of 32 (levels 0..nmax into L, candidates in Laux): the
// (scale, min) that minimise the weighted squared error of scale·L − min against x, searched
// over nstep + 1 candidate scales. Returns the scale; −min goes to *the_min.
static inline __attribute__((always_inline)) float
make_qkx2_quants(int nmax, const float *x, const float *weights, uint8_t *L, float *the_min, uint8_t *Laux,
                 float rmin, float rdelta, int nstep) {
  const int n = 32;
  float min = x[0], max = x[0];
  float sum_w = weights[0], sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    const float w = weights[i];
    sum_w += w;
    sum_x += w * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    *the_min = -min;
    return 0.f;
  }
  float iscale = nmax / (max - min);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    L[i] = (uint8_t)clamp(nearest_int(iscale * (x[i] - min)), nmax);
    const float diff = scale * L[i] + min - x[i];
    best_error += weights[i] * (diff * diff);
  }
  for (int is = 0; is <= nstep; ++is) {
    // min moves to the best fit found so far, and the candidate scales with it (as in ggml)
    iscale = (rmin + rdelta * is + nmax) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      const int l = clamp(nearest_int(iscale * (x[i] - min)), nmax);
      Laux[i] = (uint8_t)l;
      const float wl = weights[i] * l;
      sum_l += wl;
      sum_l2 += wl * l;
      sum_xl += wl * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float cur_error = 0;
      for (int i = 0; i < n; ++i) {
        const float diff = this_scale * Laux[i] + this_min - x[i];
        cur_error += weights[i] * (diff * diff);
      }
      if (cur_error < best_error) {
        for (int i = 0; i < n; ++i) L[i] = Laux[i];
        best_error = cur_error;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  *the_min = -min;
  return scale;
}

// Super-blocks b0 ≤ b < b1 of x (256 floats each) into y (144 bytes each): per sub-block of 32 a
// scale and a min from make_qkx2_quants (weights av_x + |x|), both quantized to 6 bits against
// the largest (f16 d, dmin), then each value re-rounded to 4 bits against its sub-block's
// quantized scale and min. half: f16 bits → f32 (the arena's table).
// work: L[256], Laux[32] (bytes), then weights[32], scales[8], mins[8] (floats) = 480 bytes.
void quantize_q4_K(const float *x, uint8_t *y, int b0, int b1, const float *half, uint8_t *work) {
  uint8_t *L = work, *Laux = work + 256;
  float *weights = (float *)(work + 288), *scales = weights + 32, *mins = scales + 8;
  for (int b = b0; b < b1; b++) {
    const float *xb = x + (u32)b * QK_K;
    uint8_t *yb = y + (u32)b * Q4_K_BYTES, *sc = yb + 4, *qs = yb + 16;
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; ++j) {
      const float *xs = xb + 32 * j;
      float sum_x2 = 0;
      for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
      const float av_x = __builtin_sqrtf(sum_x2 / 32);
      for (int l = 0; l < 32; ++l) weights[l] = av_x + __builtin_fabsf(xs[l]);
      scales[j] = make_qkx2_quants(15, xs, weights, L + 32 * j, &mins[j], Laux, -1.f, 0.1f, 20);
      if (scales[j] > max_scale) max_scale = scales[j];
      if (mins[j] > max_min) max_min = mins[j];
    }
    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    for (int j = 0; j < 12; ++j) sc[j] = 0;
    for (int j = 0; j < 8; ++j) {
      // nearest_int's int lands in a uint8_t, then MIN(63, ·)
      uint8_t ls = (uint8_t)nearest_int(inv_scale * scales[j]);
      uint8_t lm = (uint8_t)nearest_int(inv_min * mins[j]);
      ls = ls < 63 ? ls : 63;
      lm = lm < 63 ? lm : 63;
      if (j < 4) {
        sc[j] = ls;
        sc[j + 4] = lm;
      } else {
        sc[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
        sc[j - 4] |= (uint8_t)((ls >> 4) << 6);
        sc[j] |= (uint8_t)((lm >> 4) << 6);
      }
    }
    const uint16_t dh = f32_to_f16(max_scale / 63.f), dmh = f32_to_f16(max_min / 63.f);
    yb[0] = (uint8_t)dh; yb[1] = (uint8_t)(dh >> 8);
    yb[2] = (uint8_t)dmh; yb[3] = (uint8_t)(dmh >> 8);
    for (int j = 0; j < 8; ++j) {
      // get_scale_min_k4
      const int s = j < 4 ? (sc[j] & 63) : ((sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4));
      const int m = j < 4 ? (sc[j + 4] & 63) : ((sc[j + 4] >> 4) | ((sc[j] >> 6) << 4));
      const float d = half[dh] * s;
      if (!d) continue; // keeps make_qkx2_quants' levels, as ggml does
      const float dm = half[dmh] * m;
      for (int i = 0; i < 32; ++i) L[32 * j + i] = (uint8_t)clamp(nearest_int((xb[32 * j + i] + dm) / d), 15);
    }
    // value l of sub-block 2k in the low nibble of qs[32k + l], of 2k+1 in the high one
    for (int j = 0; j < QK_K; j += 64, qs += 32)
      for (int l = 0; l < 32; ++l) qs[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
  }
}
