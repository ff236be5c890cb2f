/*
 * pd_matmul.c -- see pd_matmul.h.
 *
 * EXACT: each thread dequantizes a tile of 16 weight rows into a private buffer (shape
 * (16, in_dim)) and dots it with every x row, so a weight row is decoded once per call whatever
 * n_rows is, and the tile stays in cache while the x rows stream past. FAST tiles the same way. FAST: x is first quantized to q8 blocks (one pass, (n_rows, in_dim / 32) blocks of
 * 32 int8 + f32 scale + f32 scaled sum); then each (weight row, x row) dot runs block by block
 * in integer arithmetic, scaled to f32 per block and accumulated in 8 float lanes, reduced in a
 * fixed order at the end.
 */
#include "pd_matmul.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

#include "pd_dtype.h"
#include "pd_err.h"
#include "pd_quant.h"

float pd_dot_f32(const float *a, const float *b, int64_t n) {
  int64_t i = 0;
#ifdef __AVX2__
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(),
         s3 = _mm256_setzero_ps();
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
    s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
  }
  for (; i + 8 <= n; i += 8)
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  __m256 s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
  float sum = _mm_cvtss_f32(h);
#else
  float sum = 0;
#endif
  for (; i < n; i++) sum += a[i] * b[i];
  return sum;
}

/* ---- EXACT ------------------------------------------------------------------------------- */

/* Weight rows are taken W_TILE at a time: the tile stays in cache while every x row passes. */
#define W_TILE 16

static int matmul_exact(const void *w, enum pd_ggml_type wt, int64_t in_dim, int64_t out_dim,
                        const float *x, float *y, int64_t n_rows) {
  size_t row_bytes = pd_ggml_row_bytes(wt, in_dim);
  int failed = 0;
#pragma omp parallel
  {
    float *wrow = wt == PD_GGML_F32
                      ? NULL
                      : malloc((size_t)(W_TILE * in_dim) * sizeof *wrow); // (W_TILE, in_dim)
    if (wt != PD_GGML_F32 && !wrow) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp for schedule(static)
    for (int64_t o = 0; o < out_dim; o++) {
      if (failed) continue;
      const uint8_t *src = (const uint8_t *)w + (size_t)o * row_bytes;
      const float *wr = (const float *)src;
      if (wrow) {
        pd_dequant_row(wt, src, wrow, in_dim);
        wr = wrow;
      }
      for (int64_t r = 0; r < n_rows; r++)
        y[r * out_dim + o] = pd_dot_f32(wr, x + r * in_dim, in_dim);
    }
    free(wrow);
  }
  return failed ? PD_ENOMEM : PD_OK;
}

/* ---- FAST -------------------------------------------------------------------------------- */

typedef struct q8_block {
  float d; /* scale */
  float s; /* d * sum(q): for weight formats with an offset (Q4_1) or a bias (Q4_0) */
  int8_t q[32];
} q8_block;

static void quantize_x(const float *x, q8_block *out, int64_t n_blocks) {
  for (int64_t b = 0; b < n_blocks; b++, x += 32) {
#ifdef __AVX2__
    /* the same arithmetic as the scalar loop below: |x| max, d = amax / 127, round to nearest
     * even (cvtps uses the current rounding mode, as lrintf does) */
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 v[4], m = _mm256_setzero_ps();
    for (int j = 0; j < 4; j++) {
      v[j] = _mm256_loadu_ps(x + 8 * j);
      m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[j]));
    }
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
    float amax = _mm_cvtss_f32(h);
    float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
    __m256 vid = _mm256_set1_ps(id);
    __m256i q[4], total = _mm256_setzero_si256();
    for (int j = 0; j < 4; j++) {
      q[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], vid));
      total = _mm256_add_epi32(total, q[j]);
    }
    /* pack 32 int32 to 32 int8 in order */
    __m256i p01 = _mm256_packs_epi32(q[0], q[1]), p23 = _mm256_packs_epi32(q[2], q[3]);
    __m256i p = _mm256_packs_epi16(p01, p23);
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)out[b].q, p);
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4e));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xb1));
    out[b].d = d;
    out[b].s = d * (float)_mm_cvtsi128_si32(t);
#else
    float amax = 0;
    for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
    float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
    int sum = 0;
    for (int j = 0; j < 32; j++) {
      int v = (int)lrintf(x[j] * id);
      out[b].q[j] = (int8_t)v;
      sum += v;
    }
    out[b].d = d;
    out[b].s = d * (float)sum;
#endif
  }
}

/* f16 scale -> float: one instruction with F16C, exact like the software conversion. */
static inline float rdh(const uint8_t *p) {
#ifdef __F16C__
  return _cvtsh_ss((uint16_t)(p[0] | (p[1] << 8)));
#else
  return pd_f16_to_f32((uint16_t)(p[0] | (p[1] << 8)));
#endif
}

#ifdef __AVX2__
static inline __m256i unpack_nibbles(const uint8_t *qs) { /* 16 bytes -> 32 values 0..15 */
  __m128i v = _mm_loadu_si128((const __m128i *)qs);
  __m128i lo = _mm_and_si128(v, _mm_set1_epi8(0xF));
  __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), _mm_set1_epi8(0xF));
  return _mm256_set_m128i(hi, lo);
}

static inline __m256 dot_u8s8(__m256i u, __m256i s) { /* 32 u8 x s8 -> 8 i32 as float */
  __m256i p16 = _mm256_maddubs_epi16(u, s);
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}

static inline float hsum8(__m256 s) {
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
  return _mm_cvtss_f32(h);
}
#endif

/* One weight row (nb blocks) against one quantized x row. */
static float dot_q(enum pd_ggml_type wt, const uint8_t *w, const q8_block *xb, int64_t nb) {
#ifdef __AVX2__
  __m256 acc = _mm256_setzero_ps();
  float extra = 0;
  switch (wt) {
  case PD_GGML_Q4_1:
    for (int64_t b = 0; b < nb; b++, w += 20) {
      __m256i wq = unpack_nibbles(w + 4);
      __m256i xq = _mm256_loadu_si256((const __m256i *)xb[b].q);
      acc = _mm256_fmadd_ps(_mm256_set1_ps(rdh(w) * xb[b].d), dot_u8s8(wq, xq), acc);
      extra += rdh(w + 2) * xb[b].s;
    }
    break;
  case PD_GGML_Q4_0:
    for (int64_t b = 0; b < nb; b++, w += 18) {
      __m256i wq = unpack_nibbles(w + 2);
      __m256i xq = _mm256_loadu_si256((const __m256i *)xb[b].q);
      float dw = rdh(w);
      acc = _mm256_fmadd_ps(_mm256_set1_ps(dw * xb[b].d), dot_u8s8(wq, xq), acc);
      extra -= 8.0f * dw * xb[b].s;
    }
    break;
  default: /* PD_GGML_Q8_0 */
    for (int64_t b = 0; b < nb; b++, w += 34) {
      __m256i wq = _mm256_loadu_si256((const __m256i *)(w + 2));
      __m256i xq = _mm256_loadu_si256((const __m256i *)xb[b].q);
      __m256i aw = _mm256_sign_epi8(wq, wq), sx = _mm256_sign_epi8(xq, wq);
      acc = _mm256_fmadd_ps(_mm256_set1_ps(rdh(w) * xb[b].d), dot_u8s8(aw, sx), acc);
    }
    break;
  }
  return hsum8(acc) + extra;
#else
  float sum = 0;
  for (int64_t b = 0; b < nb; b++) {
    int isum = 0;
    if (wt == PD_GGML_Q8_0) {
      for (int j = 0; j < 32; j++) isum += (int8_t)w[2 + j] * xb[b].q[j];
      sum += rdh(w) * xb[b].d * (float)isum;
      w += 34;
    } else {
      int off = wt == PD_GGML_Q4_1 ? 4 : 2;
      for (int j = 0; j < 16; j++)
        isum += (w[off + j] & 0xF) * xb[b].q[j] + (w[off + j] >> 4) * xb[b].q[j + 16];
      sum += rdh(w) * xb[b].d * (float)isum;
      sum += wt == PD_GGML_Q4_1 ? rdh(w + 2) * xb[b].s : -8.0f * rdh(w) * xb[b].s;
      w += wt == PD_GGML_Q4_1 ? 20 : 18;
    }
  }
  return sum;
#endif
}

static int matmul_fast(const void *w, enum pd_ggml_type wt, int64_t in_dim, int64_t out_dim,
                       const float *x, float *y, int64_t n_rows) {
  int64_t nb = in_dim / 32;
  q8_block *xq = malloc((size_t)(n_rows * nb) * sizeof *xq); /* (n_rows, nb) */
  if (!xq) return PD_ENOMEM;
  size_t row_bytes = pd_ggml_row_bytes(wt, in_dim);
  /* one parallel region for both passes: a single fork/join per matmul */
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < n_rows; r++) quantize_x(x + r * in_dim, xq + r * nb, nb);
#pragma omp for schedule(static)
    for (int64_t o0 = 0; o0 < out_dim; o0 += W_TILE) {
      int64_t n_o = out_dim - o0 < W_TILE ? out_dim - o0 : W_TILE;
      for (int64_t r = 0; r < n_rows; r++)
        for (int64_t j = 0; j < n_o; j++)
          y[r * out_dim + o0 + j] =
              dot_q(wt, (const uint8_t *)w + (size_t)(o0 + j) * row_bytes, xq + r * nb, nb);
    }
  }
  free(xq);
  return PD_OK;
}

int pd_matmul(const void *w, enum pd_ggml_type wt, int64_t in_dim, int64_t out_dim, const float *x,
              float *y, int64_t n_rows, enum pd_matmul_mode mode) {
  if (!w || !x || !y || in_dim <= 0 || out_dim <= 0 || n_rows < 0) return PD_EINVAL;
  if (!pd_ggml_row_bytes(wt, in_dim)) return PD_EINVAL;
  if (n_rows == 0) return PD_OK;
  if (mode == PD_MATMUL_FAST && (wt == PD_GGML_Q4_1 || wt == PD_GGML_Q4_0 || wt == PD_GGML_Q8_0))
    return matmul_fast(w, wt, in_dim, out_dim, x, y, n_rows);
  return matmul_exact(w, wt, in_dim, out_dim, x, y, n_rows);
}
