// Plexus CPU block operations: everything of a transformer block but its matrix products
// (kernels.c), over float32 rows in the arena's memory, so that a step runs its whole span
// without leaving wasm between operations (cpu/span-engine.ts calls them in order).
// Built with kernels.c into one module (scripts/build-kernels.sh); the same rules hold: no
// static data, no stack (threads share the module), -ffp-contract=off (the same bits everywhere).
//
// Each operation is the float32 arithmetic of the tfjs block forward (block.ts) in the same order
// of products per element: norms scale then weigh, rotary adds x·cos to swap(x)·sin, attention
// scales q before its dot products. Sums differ in order (SIMD lanes), not in kind.

#include <stdint.h>
#include <wasm_simd128.h>

typedef uint32_t u32;
#define F4(x) wasm_f32x4_splat(x)

static inline float lanes_sum(v128_t v) {
  return wasm_f32x4_extract_lane(v, 0) + wasm_f32x4_extract_lane(v, 1) +
         wasm_f32x4_extract_lane(v, 2) + wasm_f32x4_extract_lane(v, 3);
}

// e^x for four lanes, Cephes' expf: x = n·ln2 + r, e^r by a degree-6 polynomial, 2^n through the
// exponent bits. Relative error ~2e-7; the input is clamped so that 2^n stays a normal float.
static inline v128_t exp4(v128_t x) {
  x = wasm_f32x4_min(wasm_f32x4_max(x, F4(-87.3365f)), F4(88.3762626647949f));
  const v128_t n = wasm_f32x4_floor(wasm_f32x4_add(wasm_f32x4_mul(x, F4(1.44269504088896341f)), F4(0.5f)));
  x = wasm_f32x4_sub(x, wasm_f32x4_mul(n, F4(0.693359375f)));
  x = wasm_f32x4_sub(x, wasm_f32x4_mul(n, F4(-2.12194440e-4f)));
  const v128_t z = wasm_f32x4_mul(x, x);
  v128_t p = F4(1.9875691500e-4f);
  p = wasm_f32x4_add(wasm_f32x4_mul(p, x), F4(1.3981999507e-3f));
  p = wasm_f32x4_add(wasm_f32x4_mul(p, x), F4(8.3334519073e-3f));
  p = wasm_f32x4_add(wasm_f32x4_mul(p, x), F4(4.1665795894e-2f));
  p = wasm_f32x4_add(wasm_f32x4_mul(p, x), F4(1.6666665459e-1f));
  p = wasm_f32x4_add(wasm_f32x4_mul(p, x), F4(5.0000001201e-1f));
  p = wasm_f32x4_add(wasm_f32x4_add(wasm_f32x4_mul(p, z), x), F4(1.0f));
  const v128_t e = wasm_i32x4_shl(wasm_i32x4_add(wasm_i32x4_trunc_sat_f32x4(n), wasm_i32x4_splat(127)), 23);
  return wasm_f32x4_mul(p, e);
}

static inline float exp1(float x) { return wasm_f32x4_extract_lane(exp4(F4(x)), 0); }

// y = x / √(mean(x²) + eps) · w for `rows` rows of n (n a multiple of 4). y may be x. The squares
// are summed in float64, as ggml does: a sum over thousands of values keeps its low bits.
void rms_norm(const float *x, const float *w, float *y, int n, int rows, float eps) {
  for (int r = 0; r < rows; r++, x += n, y += n) {
    v128_t lo = wasm_f64x2_splat(0), hi = wasm_f64x2_splat(0);
    for (int i = 0; i < n; i += 4) {
      const v128_t v = wasm_v128_load(x + i), sq = wasm_f32x4_mul(v, v);
      lo = wasm_f64x2_add(lo, wasm_f64x2_promote_low_f32x4(sq));
      hi = wasm_f64x2_add(hi, wasm_f64x2_promote_low_f32x4(wasm_i32x4_shuffle(sq, sq, 2, 3, 0, 1)));
    }
    const v128_t s = wasm_f64x2_add(lo, hi);
    const double sum = wasm_f64x2_extract_lane(s, 0) + wasm_f64x2_extract_lane(s, 1);
    const float scale = 1.0f / __builtin_sqrtf((float)(sum / n) + eps);
    for (int i = 0; i < n; i += 4) {
      wasm_v128_store(y + i, wasm_f32x4_mul(wasm_f32x4_mul(wasm_v128_load(x + i), F4(scale)), wasm_v128_load(w + i)));
    }
  }
}

// x[r] += y[r] for `rows` rows of n with strides (the residual stream, a bias when ys is 0).
void add_rows(float *x, int xs, const float *y, int ys, int n, int rows) {
  for (int r = 0; r < rows; r++, x += xs, y += ys) {
    int i = 0;
    for (; i + 4 <= n; i += 4) wasm_v128_store(x + i, wasm_f32x4_add(wasm_v128_load(x + i), wasm_v128_load(y + i)));
    for (; i < n; i++) x[i] = x[i] + y[i];
  }
}

// n values of each row of src (stride ss) to dst (stride ds): a part's columns of a linear.
void copy_rows(const float *src, int ss, float *dst, int ds, int n, int rows) {
  for (int r = 0; r < rows; r++, src += ss, dst += ds) __builtin_memcpy(dst, src, (u32)n * 4);
}

// Rotate-half rotary embedding, in place, of `heads` heads of d at the start of each row (stride
// xs): x·cos + swap_halves(x)·sin, with cos and signed sin tables [rows, d] (rope.ts).
void rope(float *x, int xs, int heads, int d, int rows, const float *cos, const float *sin) {
  const int half = d / 2;
  for (int r = 0; r < rows; r++, x += xs, cos += d, sin += d) {
    for (int h = 0; h < heads; h++) {
      float *v = x + h * d;
      int i = 0;
      for (; i + 4 <= half; i += 4) {
        const v128_t a = wasm_v128_load(v + i), b = wasm_v128_load(v + half + i);
        wasm_v128_store(v + i, wasm_f32x4_add(wasm_f32x4_mul(a, wasm_v128_load(cos + i)), wasm_f32x4_mul(b, wasm_v128_load(sin + i))));
        wasm_v128_store(v + half + i, wasm_f32x4_add(wasm_f32x4_mul(b, wasm_v128_load(cos + half + i)), wasm_f32x4_mul(a, wasm_v128_load(sin + half + i))));
      }
      for (; i < half; i++) {
        const float a = v[i], b = v[half + i];
        v[i] = a * cos[i] + b * sin[i];
        v[half + i] = b * cos[half + i] + a * sin[half + i];
      }
    }
  }
}

// The keys (or values) of `rows` rows (kv_heads heads of d each, row stride xs) into a cache laid
// out [kv_heads][cap][d], at positions pos, pos+1, …
void kv_store(const float *x, int xs, int rows, int kv_heads, int d, float *cache, int cap, int pos) {
  for (int r = 0; r < rows; r++, x += xs)
    for (int h = 0; h < kv_heads; h++) __builtin_memcpy(cache + ((u32)h * cap + pos + r) * d, x + h * d, (u32)d * 4);
}

// Grouped-query attention of one session's rows, heads h0 ≤ h < h1 (threads split the heads): row
// t (position first + t) of q (stride qs) attends keys 0..first+t of kv head ⌊h / (heads /
// kv_heads)⌋; out (stride os) gets d values per head per row. work: room for d + first + rows
// floats. scale: 1/√d as a float32 (q is scaled first).
void attention(const float *q, int qs, int rows, int first, int heads, int kv_heads, int d,
               const float *kc, const float *vc, int cap, float scale, float *out, int os, float *work, int h0, int h1) {
  const int group = heads / kv_heads;
  float *qh = work, *s = work + d;
  for (int t = 0; t < rows; t++) {
    const int keys = first + t + 1;
    for (int h = h0; h < h1; h++) {
      const float *k = kc + (u32)(h / group) * cap * d;
      const float *v = vc + (u32)(h / group) * cap * d;
      for (int i = 0; i < d; i += 4) wasm_v128_store(qh + i, wasm_f32x4_mul(wasm_v128_load(q + (u32)t * qs + h * d + i), F4(scale)));
      float max = -3.0e38f;
      for (int j = 0; j < keys; j++, k += d) {
        v128_t acc = F4(0);
        for (int i = 0; i < d; i += 4) acc = wasm_f32x4_add(acc, wasm_f32x4_mul(wasm_v128_load(qh + i), wasm_v128_load(k + i)));
        const float sj = lanes_sum(acc);
        s[j] = sj;
        max = sj > max ? sj : max;
      }
      // the softmax's sum in float64 (as ggml's): thousands of keys keep its low bits
      double sum = 0.0;
      int j = 0;
      for (; j + 4 <= keys; j += 4) {
        const v128_t e = exp4(wasm_f32x4_sub(wasm_v128_load(s + j), F4(max)));
        wasm_v128_store(s + j, e);
        sum += (double)s[j] + (double)s[j + 1] + (double)s[j + 2] + (double)s[j + 3];
      }
      for (; j < keys; j++) { s[j] = exp1(s[j] - max); sum += (double)s[j]; }
      const float inv = (float)(1.0 / sum);
      float *o = out + (u32)t * os + h * d;
      for (int i = 0; i < d; i += 4) wasm_v128_store(o + i, F4(0));
      for (j = 0; j < keys; j++, v += d) {
        const v128_t p = F4(s[j] * inv);
        for (int i = 0; i < d; i += 4) wasm_v128_store(o + i, wasm_f32x4_add(wasm_v128_load(o + i), wasm_f32x4_mul(p, wasm_v128_load(v + i))));
      }
    }
  }
}

// act = silu(gate) · up for rows [gate | up] of 2·f values (f a multiple of 4):
// silu(g) = g · 1/(1 + e^−g), as tfjs's sigmoid then two products.
void swiglu(const float *gu, float *act, int f, int rows) {
  for (int r = 0; r < rows; r++, gu += 2 * f, act += f) {
    for (int i = 0; i < f; i += 4) {
      const v128_t g = wasm_v128_load(gu + i);
      const v128_t sig = wasm_f32x4_div(F4(1.0f), wasm_f32x4_add(F4(1.0f), exp4(wasm_f32x4_neg(g))));
      wasm_v128_store(act + i, wasm_f32x4_mul(wasm_f32x4_mul(g, sig), wasm_v128_load(gu + f + i)));
    }
  }
}

// Rows r0 ≤ r < r1 of y = x · Wᵀ for float32 W [rows, cols] (cols a multiple of 4): weights that
// have no block format (an LM head stored as float32, a GGUF's Q4_0 widened), tokens at a time.
void matmul_f32(const float *w, int rows, int cols, const float *x, int tokens, float *y, int r0, int r1) {
  for (int r = r0; r < r1; r++) {
    const float *row = w + (u32)r * cols;
    int t = 0;
    for (; t + 2 <= tokens; t += 2) {
      const float *x0 = x + (u32)t * cols, *x1 = x0 + cols;
      v128_t a0 = F4(0), a1 = F4(0), b0 = F4(0), b1 = F4(0);
      int c = 0;
      for (; c + 8 <= cols; c += 8) {
        const v128_t w0 = wasm_v128_load(row + c), w1 = wasm_v128_load(row + c + 4);
        a0 = wasm_f32x4_add(a0, wasm_f32x4_mul(w0, wasm_v128_load(x0 + c)));
        a1 = wasm_f32x4_add(a1, wasm_f32x4_mul(w1, wasm_v128_load(x0 + c + 4)));
        b0 = wasm_f32x4_add(b0, wasm_f32x4_mul(w0, wasm_v128_load(x1 + c)));
        b1 = wasm_f32x4_add(b1, wasm_f32x4_mul(w1, wasm_v128_load(x1 + c + 4)));
      }
      for (; c < cols; c += 4) {
        const v128_t w0 = wasm_v128_load(row + c);
        a0 = wasm_f32x4_add(a0, wasm_f32x4_mul(w0, wasm_v128_load(x0 + c)));
        b0 = wasm_f32x4_add(b0, wasm_f32x4_mul(w0, wasm_v128_load(x1 + c)));
      }
      y[(u32)t * rows + r] = lanes_sum(wasm_f32x4_add(a0, a1));
      y[(u32)(t + 1) * rows + r] = lanes_sum(wasm_f32x4_add(b0, b1));
    }
    for (; t < tokens; t++) {
      const float *x0 = x + (u32)t * cols;
      v128_t a0 = F4(0), a1 = F4(0);
      int c = 0;
      for (; c + 8 <= cols; c += 8) {
        a0 = wasm_f32x4_add(a0, wasm_f32x4_mul(wasm_v128_load(row + c), wasm_v128_load(x0 + c)));
        a1 = wasm_f32x4_add(a1, wasm_f32x4_mul(wasm_v128_load(row + c + 4), wasm_v128_load(x0 + c + 4)));
      }
      for (; c < cols; c += 4) a0 = wasm_f32x4_add(a0, wasm_f32x4_mul(wasm_v128_load(row + c), wasm_v128_load(x0 + c)));
      y[(u32)t * rows + r] = lanes_sum(wasm_f32x4_add(a0, a1));
    }
  }
}
