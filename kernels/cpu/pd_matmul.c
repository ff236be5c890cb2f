/*
 * pd_matmul.c -- see pd_matmul.h.
 *
 * EXACT: each thread dequantizes a tile of 16 weight rows into a private buffer (shape
 * (16, in_dim)) and dots it with every x row, so a weight row is decoded once per call whatever
 * n_rows is, and the tile stays in cache while the x rows stream past.
 *
 * FAST: x is first quantized to q8 blocks (one pass; blocks of 32 int8 + f32 scale + f32 scaled
 * sum, interleaved by groups of 4 rows). Threads take tiles of 16 weight rows; within a tile a
 * micro-kernel computes one weight row against the rows of one group at once, so each weight
 * block is unpacked once per group: about twice the throughput of one dot at a time from 3
 * rows on (prefill, batched decode). Each (weight row, x row) result is still its own sequence of
 * operations: block by block in integer arithmetic, scaled to f32 per block, accumulated in 8
 * float lanes, reduced in a fixed order at the end, whatever group it falls in. With AVX-512 the
 * micro-kernels do two rows of a group in one 512-bit register, each half what the 256-bit code
 * does for its row, so a result's bits do not depend on the ISA of the tile either. pd_matmul_n
 * numbers the tiles of several weights one after another, so q, k and v (or gate and up) share
 * one quantized x and one parallel region.
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

#if defined(__x86_64__) && defined(__AVX2__)
#include <unistd.h>

/* A binary built for AVX2 (-march=native or x86-64-v3) would die of SIGILL in its first matmul on
 * an older CPU. This runs before main, is compiled for the x86-64 baseline whatever the flags,
 * and stops the program with one line instead. It lives here because every program that runs
 * the model links this file. */
__attribute__((constructor, target("arch=x86-64"))) static void require_avx2(void) {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return;
  static const char msg[] = "prefixd: this build needs a CPU with AVX2 and FMA (x86-64-v3); "
                            "rebuild on this machine (cmake -DPREFIXD_NATIVE=ON)\n";
  ssize_t n = write(2, msg, sizeof msg - 1);
  (void)n;
  _exit(1);
}
#endif

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

/* Activations are quantized into groups of X_GROUP rows, block-interleaved so that a micro-tile
 * finds the scales of its rows side by side: group g, block b holds rows 4 g .. 4 g + 3. */
#define X_GROUP 4

typedef struct q8_group {
  float d[X_GROUP]; /* per row: scale */
  /* per row: d * sum(q), for weight formats with an offset (Q4_1) or a bias (Q4_0) */
  float s[X_GROUP];
  int8_t q[X_GROUP][32];
} q8_group;

/* One row of 32 n_blocks values to lane `lane` of the groups at out (stride one group per block). */
static void quantize_x(const float *x, q8_group *out, int lane, int64_t n_blocks) {
  for (int64_t b = 0; b < n_blocks; b++, x += 32) {
    float d;
    int sum;
    int8_t *q = out[b].q[lane];
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
    d = amax / 127.0f;
    float id = d ? 1.0f / d : 0.0f;
    __m256 vid = _mm256_set1_ps(id);
    __m256i qi[4], total = _mm256_setzero_si256();
    for (int j = 0; j < 4; j++) {
      qi[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], vid));
      total = _mm256_add_epi32(total, qi[j]);
    }
    /* pack 32 int32 to 32 int8 in order */
    __m256i p01 = _mm256_packs_epi32(qi[0], qi[1]), p23 = _mm256_packs_epi32(qi[2], qi[3]);
    __m256i p = _mm256_packs_epi16(p01, p23);
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)q, p);
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4e));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xb1));
    sum = _mm_cvtsi128_si32(t);
#else
    float amax = 0;
    for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
    d = amax / 127.0f;
    float id = d ? 1.0f / d : 0.0f;
    sum = 0;
    for (int j = 0; j < 32; j++) {
      int v = (int)lrintf(x[j] * id);
      q[j] = (int8_t)v;
      sum += v;
    }
#endif
    out[b].d[lane] = d;
    out[b].s[lane] = d * (float)sum;
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

static inline int load_u32(const uint8_t *p) { /* 4 bytes as an int, little-endian */
  int32_t v;
  memcpy(&v, p, sizeof v);
  return v;
}

/* 32 u8 x s8 -> 8 sums of 4 products, as float. With VNNI one instruction; without, the
 * 16-bit sums of pairs first: the same integers, since a pair sum here is at most 2 * 128 * 127 <
 * 32767 (u is a weight's magnitude, at most 128; s an activation, at most 127 in magnitude). */
static inline __m256 dot_u8s8(__m256i u, __m256i s) {
#if defined(__AVXVNNI__)
  return _mm256_cvtepi32_ps(_mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s));
#elif defined(__AVX512VNNI__) && defined(__AVX512VL__) /* the same instruction, EVEX-encoded */
  return _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s));
#else
  __m256i p16 = _mm256_maddubs_epi16(u, s);
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
#endif
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) &&                      \
    defined(__AVX512VNNI__)
/* With AVX-512 the 32-element formats' tile does two activation rows in one 512-bit register:
 * row r's 32 bytes in the low half, row r + 1's in the high half (they are adjacent in a
 * q8_group), against the weight block in both halves. Each half does what the 256-bit code does
 * for its row (the same integer sums in the same lanes, the same float scale, multiply and fma),
 * so every result keeps its bits. */
#define TILE_512 1

/* dot_u8s8 for two rows at once: u (the weights, in both halves) by s (two rows' bytes). */
static inline __m512 dot_u8s8_pair(__m512i u, __m512i s) {
  return _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), u, s));
}

/* Lanes 0-7 pick element r, lanes 8-15 element r + 1 (of a q8_group's per-row scales). */
static inline __m512i pair_lanes(int r) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi32(r)), _mm256_set1_epi32(r + 1),
                            1);
}
#else
#define TILE_512 0
#endif

static inline float hsum8(__m256 s) {
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
  return _mm_cvtss_f32(h);
}

/* 32 bits -> 32 bytes: byte j is 0x10 where bit j of bits is set, else 0 (the fifth bit of
 * Q5_0 and Q5_1). Each byte picks the byte of bits that holds its bit, then tests that bit. */
static inline __m256i fifth_bits(uint32_t bits) {
  const __m256i pick = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2,
                                        2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  const __m256i bit = _mm256_set1_epi64x(0x8040201008040201LL);
  __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), pick);
  v = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
  return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

/* The bytes of the 32 bytes at p: the low nibbles (hi = 0) or the high ones (hi = 1). */
static inline __m256i nibbles32(const uint8_t *p, int hi) {
  __m256i v = _mm256_loadu_si256((const __m256i *)p);
  if (hi) v = _mm256_srli_epi16(v, 4);
  return _mm256_and_si256(v, _mm256_set1_epi8(0xF));
}

/* Bits shift .. shift + width - 1 of each of the 32 bytes at p (shift + width <= 8). */
static inline __m256i bits32(const uint8_t *p, int shift, int width) {
  __m256i v = _mm256_srli_epi16(_mm256_loadu_si256((const __m256i *)p), shift);
  return _mm256_and_si256(v, _mm256_set1_epi8((char)((1 << width) - 1)));
}

/* The IQ4_NL levels (signed bytes) of the 32 nibbles in the 16 bytes at qs, in Q4_0's order. */
static inline __m256i iq4nl_levels(const uint8_t *qs) {
  const __m256i levels =
      _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)pd_iq4nl_values));
  return _mm256_shuffle_epi8(levels, unpack_nibbles(qs));
}

/* A tile's results: y[r * y_stride] = the 8 lanes of row r summed, plus lane r of ext (the
 * offset terms), for r < RX. */
static inline __attribute__((always_inline)) void rows_out(int RX, const __m256 *acc, __m128 ext,
                                                           float *y, int64_t y_stride) {
  float e[4];
  _mm_storeu_ps(e, ext);
#pragma GCC unroll 4
  for (int r = 0; r < RX; r++) y[r * y_stride] = hsum8(acc[r]) + e[r];
}

#if TILE_512
/* The rows done in pairs back to one accumulator a row: row 2 i from lanes 0-7 of acc2[i], row
 * 2 i + 1 from lanes 8-15. */
static inline __attribute__((always_inline)) void unpair_rows(int RX, const __m512 *acc2,
                                                              __m256 *acc) {
#pragma GCC unroll 2
  for (int r = 0; r + 2 <= RX; r += 2) {
    acc[r] = _mm512_castps512_ps256(acc2[r / 2]);
    acc[r + 1] = _mm512_extractf32x8_ps(acc2[r / 2], 1);
  }
}
#endif

/* One block of a 32-element format at p: the weights' integers as unsigned bytes (wq; signed
 * formats as |w|, their signed values in wsign, else 0), the f16 scale (and offset) as floats
 * (dm: lane 0 the scale, lane 1 the offset for Q4_1 and Q5_1), and the offset or bias term of
 * each of the group's rows added to ext (lane r: row r). Returns 1 for the signed formats. */
static inline __attribute__((always_inline)) int q_block(enum pd_ggml_type WT, const uint8_t *p,
                                                         const q8_group *xb, __m256i *wq_out,
                                                         __m256i *wsign_out, __m128 *dm_out,
                                                         __m128 *ext) {
  __m256i wq, wsign = _mm256_setzero_si256();
  __m128 dm;
  if (WT == PD_GGML_Q4_1 || WT == PD_GGML_Q5_1) {
    dm = _mm_cvtph_ps(_mm_cvtsi32_si128(load_u32(p)));
    if (WT == PD_GGML_Q4_1)
      wq = unpack_nibbles(p + 4);
    else
      wq = _mm256_or_si256(unpack_nibbles(p + 8), fifth_bits((uint32_t)load_u32(p + 4)));
    *ext = _mm_add_ps(*ext, _mm_mul_ps(_mm_shuffle_ps(dm, dm, 0x55), _mm_loadu_ps(xb->s)));
  } else if (WT == PD_GGML_Q4_0 || WT == PD_GGML_Q5_0) { /* w = d (q - 8) or d (q - 16) */
    dm = _mm_cvtph_ps(_mm_cvtsi32_si128(p[0] | p[1] << 8));
    if (WT == PD_GGML_Q4_0)
      wq = unpack_nibbles(p + 2);
    else
      wq = _mm256_or_si256(unpack_nibbles(p + 6), fifth_bits((uint32_t)load_u32(p + 2)));
    const __m128 dz = _mm_mul_ss(_mm_set_ss(WT == PD_GGML_Q4_0 ? 8.0f : 16.0f), dm);
    *ext = _mm_sub_ps(*ext, _mm_mul_ps(_mm_shuffle_ps(dz, dz, 0), _mm_loadu_ps(xb->s)));
  } else if (WT == PD_GGML_IQ4_NL) { /* the levels looked up by nibble, 16 at a time */
    dm = _mm_cvtph_ps(_mm_cvtsi32_si128(p[0] | p[1] << 8));
    wsign = iq4nl_levels(p + 2);
    wq = _mm256_sign_epi8(wsign, wsign);
  } else { /* Q8_0 */
    dm = _mm_cvtph_ps(_mm_cvtsi32_si128(p[0] | p[1] << 8));
    wsign = _mm256_loadu_si256((const __m256i *)(p + 2));
    wq = _mm256_sign_epi8(wsign, wsign);
  }
  *wq_out = wq, *wsign_out = wsign, *dm_out = dm;
  return WT == PD_GGML_Q8_0 || WT == PD_GGML_IQ4_NL;
}

/* The micro-tile for the formats of 32-element blocks: y[r] for one weight row w and the RX rows
 * of one activation group, over nb blocks. Each weight block is unpacked once for all RX rows;
 * every row has its own accumulator and the same operations in the same order whatever RX is
 * (scale = dw * dx rounded once, one fma per block; the offset term on lane r of a 4-wide
 * vector; one horizontal sum at the end), so a result never depends on the group it was computed
 * in. Always inlined with constant WT and RX: the loops unroll and the accumulators stay in
 * registers. (Tiles of 2 or 4 weight rows were measured too: faster on a weight matrix that sits
 * in cache, 6-20% slower in the model, whose weights stream from memory.) Signed weights (Q8_0,
 * IQ4_NL) go in as |w| with their signs moved onto x, since the integer dot multiplies unsigned
 * by signed bytes. */
static inline __attribute__((always_inline)) void q_tile(enum pd_ggml_type WT, int RX,
                                                         const uint8_t *w, const q8_group *xg,
                                                         int64_t nb, float *y, int64_t y_stride) {
  const int64_t bs = (int64_t)pd_ggml_block_bytes(WT);
  __m256 acc[X_GROUP];
  __m128 ext = _mm_setzero_ps();
#pragma GCC unroll 4
  for (int r = 0; r < RX; r++) acc[r] = _mm256_setzero_ps();
#if TILE_512
  __m512 acc2[X_GROUP / 2]; /* rows 2 i (lanes 0-7) and 2 i + 1 (lanes 8-15) */
  acc2[0] = acc2[1] = _mm512_setzero_ps();
#endif
  for (int64_t b = 0; b < nb; b++) {
    const q8_group *xb = xg + b;
    const uint8_t *p = w + (size_t)(b * bs);
    __m256i wq, wsign;
    __m128 dm; /* lane 0: the block's scale; lane 1: its offset (Q4_1, Q5_1) */
    const int signed_w = q_block(WT, p, xb, &wq, &wsign, &dm, &ext);
    const __m256 dw = _mm256_broadcastss_ps(dm);
    int r0 = 0; /* the rows done in pairs */
#if TILE_512
    if (RX >= 2) {
      const __m512i wq2 = _mm512_broadcast_i64x4(wq);
      const __mmask64 neg = _mm512_movepi8_mask(_mm512_broadcast_i64x4(wsign));
      const __m512 dw2 = _mm512_broadcastss_ps(dm),
                   dx = _mm512_castps128_ps512(_mm_loadu_ps(xb->d));
#pragma GCC unroll 2
      for (; r0 + 2 <= RX; r0 += 2) {
        __m512i xq = _mm512_loadu_si512((const void *)xb->q[r0]); /* rows r0, r0 + 1 */
        if (signed_w) xq = _mm512_mask_sub_epi8(xq, neg, _mm512_setzero_si512(), xq);
        const __m512 scale = _mm512_mul_ps(dw2, _mm512_permutexvar_ps(pair_lanes(r0), dx));
        acc2[r0 / 2] = _mm512_fmadd_ps(scale, dot_u8s8_pair(wq2, xq), acc2[r0 / 2]);
      }
    }
#endif
#pragma GCC unroll 4
    for (int r = r0; r < RX; r++) {
      __m256i xq = _mm256_loadu_si256((const __m256i *)xb->q[r]);
      if (signed_w) xq = _mm256_sign_epi8(xq, wsign);
      const __m256 scale = _mm256_mul_ps(dw, _mm256_broadcast_ss(&xb->d[r]));
      acc[r] = _mm256_fmadd_ps(scale, dot_u8s8(wq, xq), acc[r]);
    }
  }
#if TILE_512
  unpair_rows(RX, acc2, acc);
#endif
  rows_out(RX, acc, ext, y, y_stride);
}

/* The micro-tile for the K formats and IQ4_XS (256-element super-blocks, whose sub-blocks of 32
 * or 16 have their own integer scales). Per activation block of 32 (8 per super-block): the
 * weights' integers as unsigned bytes u (signed ones, Q3_K, Q6_K and IQ4_XS's levels, as |w| with
 * the sign moved onto x), the sub-block scales as 16-bit lanes (one scale for each half of 16), so that
 * madd(maddubs(u, x), scales) is the exact integer sum of scale * q * x over the block; then one
 * fma by d * dx. The mins (Q2_K, Q4_K, Q5_K) are subtracted as dmin * m * sum(x): per block of 32
 * from the activations' scaled sums (Q4_K, Q5_K), per 16 as a second integer sum (Q2_K). The same
 * per-row invariance as q_tile. */
static inline __attribute__((always_inline)) void k_tile(enum pd_ggml_type WT, int RX,
                                                         const uint8_t *w, const q8_group *xg,
                                                         int64_t nb, float *y, int64_t y_stride) {
  const int64_t bs = (int64_t)pd_ggml_block_bytes(WT);
  const __m256i ones = _mm256_set1_epi8(1);
  __m256 acc[X_GROUP];
  __m128 ext = _mm_setzero_ps();
#pragma GCC unroll 4
  for (int r = 0; r < RX; r++) acc[r] = _mm256_setzero_ps();
#if TILE_512
  __m512 acc2[X_GROUP / 2]; /* rows 2 i (lanes 0-7) and 2 i + 1 (lanes 8-15) */
  acc2[0] = acc2[1] = _mm512_setzero_ps();
#endif
  for (int64_t sb = 0; sb < nb / 8; sb++) {
    const uint8_t *p = w + (size_t)(sb * bs);
    float d, dmin = 0;
    uint8_t sc8[8], m8[8]; /* Q4_K, Q5_K: per 32 */
    int8_t sc3[16];        /* Q3_K: per 16 */
    if (WT == PD_GGML_Q4_K || WT == PD_GGML_Q5_K) {
      d = rdh(p), dmin = rdh(p + 2);
      for (int j = 0; j < 8; j++) pd_q4k_scale_min(j, p + 4, &sc8[j], &m8[j]);
    } else if (WT == PD_GGML_Q6_K) {
      d = rdh(p + 208);
    } else if (WT == PD_GGML_Q3_K) {
      d = rdh(p + 108);
      pd_q3k_scales(p + 96, sc3);
    } else if (WT == PD_GGML_IQ4_XS) {
      d = rdh(p);
    } else { /* Q2_K */
      d = rdh(p + 80), dmin = rdh(p + 82);
    }
#pragma GCC unroll 8
    for (int k = 0; k < 8; k++) {
      const q8_group *xb = xg + sb * 8 + k;
      const int half = k / 4, kk = k % 4; /* the 16-scale formats work in halves of 128 */
      __m256i u, wsign = _mm256_setzero_si256(), scales, mins = _mm256_setzero_si256();
      const int signed_w = WT == PD_GGML_Q6_K || WT == PD_GGML_Q3_K || WT == PD_GGML_IQ4_XS;
      if (WT == PD_GGML_Q4_K || WT == PD_GGML_Q5_K) {
        u = nibbles32(p + (WT == PD_GGML_Q5_K ? 48 : 16) + 32 * (k / 2), k % 2);
        if (WT == PD_GGML_Q5_K) u = _mm256_or_si256(u, _mm256_slli_epi16(bits32(p + 16, k, 1), 4));
        scales = _mm256_set1_epi16(sc8[k]);
      } else if (WT == PD_GGML_Q6_K) {
        __m256i q = _mm256_or_si256(nibbles32(p + 64 * half + 32 * (kk % 2), kk / 2),
                                    _mm256_slli_epi16(bits32(p + 128 + 32 * half, 2 * kk, 2), 4));
        wsign = _mm256_sub_epi8(q, _mm256_set1_epi8(32));
        const int8_t *sc = (const int8_t *)(p + 192) + 8 * half + 2 * kk;
        scales = _mm256_set_m128i(_mm_set1_epi16(sc[1]), _mm_set1_epi16(sc[0]));
      } else if (WT == PD_GGML_Q3_K) {
        __m256i q = _mm256_or_si256(bits32(p + 32 + 32 * half, 2 * kk, 2),
                                    _mm256_slli_epi16(bits32(p, 4 * half + kk, 1), 2));
        wsign = _mm256_sub_epi8(q, _mm256_set1_epi8(4));
        const int8_t *sc = sc3 + 8 * half + 2 * kk;
        scales = _mm256_set_m128i(_mm_set1_epi16(sc[1]), _mm_set1_epi16(sc[0]));
      } else if (WT == PD_GGML_IQ4_XS) { /* IQ4_NL's levels, one 6-bit scale per 32 */
        wsign = iq4nl_levels(p + 8 + 16 * k);
        scales = _mm256_set1_epi16((short)pd_iq4xs_scale(p, k));
      } else { /* Q2_K */
        u = bits32(p + 16 + 32 * half, 2 * kk, 2);
        const uint8_t *sm = p + 8 * half + 2 * kk;
        scales = _mm256_set_m128i(_mm_set1_epi16(sm[1] & 0xF), _mm_set1_epi16(sm[0] & 0xF));
        mins = _mm256_set_m128i(_mm_set1_epi16(sm[1] >> 4), _mm_set1_epi16(sm[0] >> 4));
      }
      if (signed_w) u = _mm256_sign_epi8(wsign, wsign);
      if (WT == PD_GGML_Q4_K || WT == PD_GGML_Q5_K) {
        const float dm = dmin * (float)m8[k];
        ext = _mm_sub_ps(ext, _mm_mul_ps(_mm_set1_ps(dm), _mm_loadu_ps(xb->s)));
      }
      int r0 = 0; /* the rows done in pairs */
#if TILE_512
      if (RX >= 2) {
        const __m512i u2 = _mm512_broadcast_i64x4(u), scales2 = _mm512_broadcast_i64x4(scales);
        const __m512i mins2 = _mm512_broadcast_i64x4(mins);
        const __mmask64 neg = _mm512_movepi8_mask(_mm512_broadcast_i64x4(wsign));
        const __m512 dx4 = _mm512_castps128_ps512(_mm_loadu_ps(xb->d));
#pragma GCC unroll 2
        for (; r0 + 2 <= RX; r0 += 2) {
          __m512i xq = _mm512_loadu_si512((const void *)xb->q[r0]); /* rows r0, r0 + 1 */
          const __m512 dx = _mm512_permutexvar_ps(pair_lanes(r0), dx4);
          __m512 *a = &acc2[r0 / 2];
          if (WT == PD_GGML_Q2_K) {
            const __m512i msum =
                _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_set1_epi8(1), xq), mins2);
            *a = _mm512_fnmadd_ps(_mm512_mul_ps(_mm512_set1_ps(dmin), dx), _mm512_cvtepi32_ps(msum),
                                  *a);
          }
          if (signed_w) xq = _mm512_mask_sub_epi8(xq, neg, _mm512_setzero_si512(), xq);
          const __m512i isum = _mm512_madd_epi16(_mm512_maddubs_epi16(u2, xq), scales2);
          *a = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(d), dx), _mm512_cvtepi32_ps(isum), *a);
        }
      }
#endif
#pragma GCC unroll 4
      for (int r = r0; r < RX; r++) {
        __m256i xq = _mm256_loadu_si256((const __m256i *)xb->q[r]);
        const __m256 dx = _mm256_broadcast_ss(&xb->d[r]);
        if (WT == PD_GGML_Q2_K) { /* minus dmin * dx * sum over the halves of m * x */
          const __m256i msum = _mm256_madd_epi16(_mm256_maddubs_epi16(ones, xq), mins);
          acc[r] = _mm256_fnmadd_ps(_mm256_mul_ps(_mm256_set1_ps(dmin), dx),
                                    _mm256_cvtepi32_ps(msum), acc[r]);
        }
        if (signed_w) xq = _mm256_sign_epi8(xq, wsign);
        const __m256i isum = _mm256_madd_epi16(_mm256_maddubs_epi16(u, xq), scales);
        acc[r] =
            _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(d), dx), _mm256_cvtepi32_ps(isum), acc[r]);
      }
    }
  }
#if TILE_512
  unpair_rows(RX, acc2, acc);
#endif
  rows_out(RX, acc, ext, y, y_stride);
}

typedef void (*q_tile_fn)(const uint8_t *w, const q8_group *xg, int64_t nb, float *y,
                          int64_t y_stride);

/* clang-format off */
#define TILE_FN(KERNEL, NAME, WT, RX)                                                              \
  static void NAME##_##RX(const uint8_t *w, const q8_group *xg, int64_t nb, float *y,              \
                          int64_t y_stride) {                                                      \
    KERNEL(WT, RX, w, xg, nb, y, y_stride);                                                        \
  }
/* NAME[rx - 1]: the kernel for WT with rx activation rows */
#define TILE_FNS(KERNEL, NAME, WT)                                                                 \
  TILE_FN(KERNEL, NAME, WT, 1)                                                                     \
  TILE_FN(KERNEL, NAME, WT, 2)                                                                     \
  TILE_FN(KERNEL, NAME, WT, 3)                                                                     \
  TILE_FN(KERNEL, NAME, WT, 4)                                                                     \
  static const q_tile_fn NAME[X_GROUP] = {NAME##_1, NAME##_2, NAME##_3, NAME##_4};
/* clang-format on */
TILE_FNS(q_tile, tile_q4_0, PD_GGML_Q4_0)
TILE_FNS(q_tile, tile_q4_1, PD_GGML_Q4_1)
TILE_FNS(q_tile, tile_q5_0, PD_GGML_Q5_0)
TILE_FNS(q_tile, tile_q5_1, PD_GGML_Q5_1)
TILE_FNS(q_tile, tile_q8_0, PD_GGML_Q8_0)
TILE_FNS(q_tile, tile_iq4_nl, PD_GGML_IQ4_NL)
TILE_FNS(k_tile, tile_q2_k, PD_GGML_Q2_K)
TILE_FNS(k_tile, tile_q3_k, PD_GGML_Q3_K)
TILE_FNS(k_tile, tile_q4_k, PD_GGML_Q4_K)
TILE_FNS(k_tile, tile_q5_k, PD_GGML_Q5_K)
TILE_FNS(k_tile, tile_q6_k, PD_GGML_Q6_K)
TILE_FNS(k_tile, tile_iq4_xs, PD_GGML_IQ4_XS)

/* The micro-tiles of a fast type (rx - 1 indexes them), or NULL. */
static const q_tile_fn *tiles_of(enum pd_ggml_type wt) {
  switch (wt) {
  case PD_GGML_Q4_0: return tile_q4_0;
  case PD_GGML_Q4_1: return tile_q4_1;
  case PD_GGML_Q5_0: return tile_q5_0;
  case PD_GGML_Q5_1: return tile_q5_1;
  case PD_GGML_Q8_0: return tile_q8_0;
  case PD_GGML_IQ4_NL: return tile_iq4_nl;
  case PD_GGML_Q2_K: return tile_q2_k;
  case PD_GGML_Q3_K: return tile_q3_k;
  case PD_GGML_Q4_K: return tile_q4_k;
  case PD_GGML_Q5_K: return tile_q5_k;
  case PD_GGML_Q6_K: return tile_q6_k;
  case PD_GGML_IQ4_XS: return tile_iq4_xs;
  default: return NULL;
  }
}

int pd_matmul_is_fast(enum pd_ggml_type wt) {
  return tiles_of(wt) != NULL;
}

/* Weight rows 0 .. n_o - 1 of w against activation group xg (rx rows). */
static void q_rows(enum pd_ggml_type wt, const uint8_t *w, size_t rb, int64_t n_o,
                   const q8_group *xg, int rx, int64_t nb, float *y, int64_t y_stride) {
  const q_tile_fn tile = tiles_of(wt)[rx - 1];
  /* (Two weight rows a tile for one activation row, in the two halves of a 512-bit register,
   * measured 35% slower in decode than one at a time: the weights stream from memory.) */
  for (int64_t j = 0; j < n_o; j++) tile(w + (size_t)j * rb, xg, nb, y + j, y_stride);
}
#else
/* Portable: one (weight row, activation row) pair at a time, the same formula. */
static void q_rows(enum pd_ggml_type wt, const uint8_t *w, size_t rb, int64_t n_o,
                   const q8_group *xg, int rx, int64_t nb, float *y, int64_t y_stride) {
  const size_t bs = pd_ggml_block_bytes(wt);
  for (int r = 0; r < rx; r++)
    for (int64_t j = 0; j < n_o; j++) {
      const uint8_t *wr = w + (size_t)j * rb;
      float sum = 0;
      for (int64_t b = 0; b < nb; b++, wr += bs) {
        const int8_t *xq = xg[b].q[r];
        int isum = 0;
        if (wt == PD_GGML_Q8_0) {
          for (int k = 0; k < 32; k++) isum += (int8_t)wr[2 + k] * xq[k];
          sum += rdh(wr) * xg[b].d[r] * (float)isum;
        } else {
          int off = wt == PD_GGML_Q4_1 ? 4 : 2;
          for (int k = 0; k < 16; k++)
            isum += (wr[off + k] & 0xF) * xq[k] + (wr[off + k] >> 4) * xq[k + 16];
          sum += rdh(wr) * xg[b].d[r] * (float)isum;
          sum += wt == PD_GGML_Q4_1 ? rdh(wr + 2) * xg[b].s[r] : -8.0f * rdh(wr) * xg[b].s[r];
        }
      }
      y[r * y_stride + j] = sum;
    }
}

/* Without AVX2 the fast path covers only these; the other formats run the exact one. */
int pd_matmul_is_fast(enum pd_ggml_type wt) {
  return wt == PD_GGML_Q4_1 || wt == PD_GGML_Q4_0 || wt == PD_GGML_Q8_0;
}
#endif

/* Every weight of outs is of a fast type. */
static int matmul_fast(const pd_matmul_out *outs, int n_outs, int64_t in_dim, const float *x,
                       int64_t n_rows) {
  const int64_t nb = in_dim / 32, n_groups = (n_rows + X_GROUP - 1) / X_GROUP;
  /* xq: (n_groups, nb) groups of X_GROUP rows; the unused lanes of the last group are zero */
  q8_group *xq = calloc((size_t)(n_groups * nb), sizeof *xq);
  if (!xq) return PD_ENOMEM;
  /* the tiles of W_TILE weight rows of all weights, numbered weight after weight */
  int64_t n_tiles = 0;
  for (int i = 0; i < n_outs; i++) n_tiles += (outs[i].out_dim + W_TILE - 1) / W_TILE;
    /* one parallel region for both passes: a single fork/join for all weights. A tile stays in
   * cache while every activation group passes. */
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < n_rows; r++)
      quantize_x(x + r * in_dim, xq + (r / X_GROUP) * nb, (int)(r % X_GROUP), nb);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < n_tiles; t++) {
      int i = 0;
      int64_t o0 = t * W_TILE;
      while (o0 >= outs[i].out_dim) o0 -= (outs[i].out_dim + W_TILE - 1) / W_TILE * W_TILE, i++;
      const pd_matmul_out *out = &outs[i];
      const size_t rb = pd_ggml_row_bytes(out->wt, in_dim);
      const int64_t n_o = out->out_dim - o0 < W_TILE ? out->out_dim - o0 : W_TILE;
      for (int64_t g = 0; g < n_groups; g++) {
        const int rx = n_rows - g * X_GROUP < X_GROUP ? (int)(n_rows - g * X_GROUP) : X_GROUP;
        q_rows(out->wt, (const uint8_t *)out->w + (size_t)o0 * rb, rb, n_o, xq + g * nb, rx, nb,
               out->y + g * X_GROUP * out->out_dim + o0, out->out_dim);
      }
    }
  }
  free(xq);
  return PD_OK;
}

int pd_matmul_n(const pd_matmul_out *outs, int n_outs, int64_t in_dim, const float *x,
                int64_t n_rows, enum pd_matmul_mode mode) {
  if (!outs || n_outs <= 0 || !x || in_dim <= 0 || n_rows < 0) return PD_EINVAL;
  int all_fast = mode == PD_MATMUL_FAST;
  for (int i = 0; i < n_outs; i++) {
    const pd_matmul_out *o = &outs[i];
    if (!o->w || !o->y || o->out_dim <= 0 || !pd_ggml_row_bytes(o->wt, in_dim)) return PD_EINVAL;
    all_fast &= pd_matmul_is_fast(o->wt);
  }
  if (n_rows == 0) return PD_OK;
  if (all_fast) return matmul_fast(outs, n_outs, in_dim, x, n_rows);
  for (int i = 0, rc; i < n_outs; i++) {
    const pd_matmul_out *o = &outs[i];
    if (mode == PD_MATMUL_FAST && pd_matmul_is_fast(o->wt))
      rc = matmul_fast(o, 1, in_dim, x, n_rows);
    else
      rc = matmul_exact(o->w, o->wt, in_dim, o->out_dim, x, o->y, n_rows);
    if (rc) return rc;
  }
  return PD_OK;
}

int pd_matmul(const void *w, enum pd_ggml_type wt, int64_t in_dim, int64_t out_dim, const float *x,
              float *y, int64_t n_rows, enum pd_matmul_mode mode) {
  const pd_matmul_out out = {w, wt, out_dim, y};
  return pd_matmul_n(&out, 1, in_dim, x, n_rows, mode);
}
