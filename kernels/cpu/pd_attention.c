/*
 * pd_attention.c -- paged KV store and causal attention over it, CPU; see pd_attention.h.
 *
 * Attention: a task is (sequence, chunk of up to 16 query rows, kv head, segment of 256 key
 * positions). It converts the segment's K and V rows to f32 once, for every query head of the
 * GQA group and every row of the chunk (a block's run of rows at a time, the next blocks' rows
 * prefetched meanwhile: the blocks lie anywhere in the pool, so without it every block would
 * start with a wait on memory), and leaves per (row, head, segment) the segment's max
 * score, its sum of exponentials and its unnormalized output; a second pass folds each row's
 * segments in position order (flash-decoding: a long context is spread over all threads even at
 * batch 1). Segments that several sequences hold in the same blocks and see in full (a shared
 * system prompt) are converted once per call for all their rows: cascade attention, on the CPU.
 * With AVX2 a row's scores are computed 8 key positions at a time (8 dot products
 * reduced together), exponentiated 8 lanes at a time, and its output accumulated in registers;
 * with AVX-512, 16 at a time (segment_row_512), the output in two chains of 512-bit registers.
 * For every query row the sequence of floating-point operations depends only on the row (its
 * position, q and the keys it sees), never on the chunk, the batch or the thread: the result is
 * bit-identical whether the prefix's keys were written in this call or came from the cache, and
 * whether the row is decoded alone or prefilled with others.
 */
#include "pd_attention.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "pd_err.h"
#include "pd_matmul.h"
#if defined(__F16C__) || defined(__AVX2__)
#include <immintrin.h>
#endif

/* Rows of one block: 2 * n_layers * n_kv_heads * B. */
static size_t block_rows(const pd_kv_layout *L) {
  return 2u * (size_t)L->n_layers * (size_t)L->n_kv_heads * (size_t)L->block_tokens;
}

size_t pd_kv_block_bytes(const pd_kv_layout *L) {
  size_t rows = block_rows(L), bytes = rows * (size_t)L->head_dim * pd_dtype_size(L->dtype);
  return L->dtype == PD_DTYPE_FP8_E4M3 ? bytes + rows * sizeof(float) : bytes;
}

size_t pd_kv_scale_offset(const pd_kv_layout *L, int layer, int kv, int kv_head, int row) {
  size_t row_index = pd_kv_elem_offset(L, layer, kv, kv_head, row) / (size_t)L->head_dim;
  return block_rows(L) * (size_t)L->head_dim + row_index * sizeof(float);
}

float pd_kv_fp8_row_scale(float amax) {
  if (!(amax >= 1e-30f) || isinf(amax)) return 1.0f;
  return amax / 448.0f;
}

/* fp8 e4m3 -> f32 for every byte value (exact), filled once. */
static float fp8_table[256];
static pthread_once_t fp8_table_once = PTHREAD_ONCE_INIT;

static void fp8_table_fill(void) {
  for (int v = 0; v < 256; v++) fp8_table[v] = pd_fp8e4m3_to_f32((uint8_t)v);
}

/* One fp8 row: head_dim values of x to dst, its scale to *scale_dst. */
static void store_fp8_row(uint8_t *dst, uint8_t *scale_dst, const float *x, int hd) {
  float amax = 0.0f;
  for (int d = 0; d < hd; d++)
    if (fabsf(x[d]) > amax) amax = fabsf(x[d]);
  float s = pd_kv_fp8_row_scale(amax);
  /* a NaN is converted as it is: a division may not keep its sign (a GPU returns the canonical
   * NaN), and the store keeps the sign on every backend */
  for (int d = 0; d < hd; d++) dst[d] = pd_f32_to_fp8e4m3(isnan(x[d]) ? x[d] : x[d] / s);
  memcpy(scale_dst, &s, sizeof s);
}

size_t pd_kv_elem_offset(const pd_kv_layout *L, int layer, int kv, int kv_head, int row) {
  size_t per_head = (size_t)L->block_tokens * (size_t)L->head_dim;
  return (((size_t)layer * 2 + (size_t)kv) * (size_t)L->n_kv_heads + (size_t)kv_head) * per_head +
         (size_t)row * (size_t)L->head_dim;
}

static int seq_ok(const pd_kv_layout *L, const pd_attn_seq *s) {
  if (s->n_past < 0 || s->n_new < 0 || s->row < 0 || !s->block_table) return 0;
  int64_t need = ((int64_t)s->n_past + s->n_new + L->block_tokens - 1) / L->block_tokens;
  return need <= s->n_blocks;
}

int pd_kv_store(const pd_kv_layout *L, void *pool, const pd_attn_seq *s, int layer, const float *k,
                const float *v) {
  if (!seq_ok(L, s) || layer < 0 || layer >= L->n_layers) return PD_EINVAL;
  size_t bb = pd_kv_block_bytes(L), es = pd_dtype_size(L->dtype);
  int hd = L->head_dim, nkv = L->n_kv_heads;
  for (int j = 0; j < s->n_new; j++) {
    int p = s->n_past + j;
    uint8_t *block = (uint8_t *)pool + (size_t)s->block_table[p / L->block_tokens] * bb;
    int r = p % L->block_tokens;
    const float *kr = k + ((size_t)s->row + (size_t)j) * (size_t)(nkv * hd);
    const float *vr = v + ((size_t)s->row + (size_t)j) * (size_t)(nkv * hd);
    for (int h = 0; h < nkv; h++) {
      void *kd = block + pd_kv_elem_offset(L, layer, 0, h, r) * es;
      void *vd = block + pd_kv_elem_offset(L, layer, 1, h, r) * es;
      if (L->dtype == PD_DTYPE_F32) {
        memcpy(kd, kr + h * hd, (size_t)hd * 4);
        memcpy(vd, vr + h * hd, (size_t)hd * 4);
      } else if (L->dtype == PD_DTYPE_FP8_E4M3) {
        store_fp8_row(kd, block + pd_kv_scale_offset(L, layer, 0, h, r), kr + h * hd, hd);
        store_fp8_row(vd, block + pd_kv_scale_offset(L, layer, 1, h, r), vr + h * hd, hd);
      } else {
        for (int d = 0; d < hd; d++) {
          pd_dtype_store(L->dtype, kd, (size_t)d, kr[h * hd + d]);
          pd_dtype_store(L->dtype, vd, (size_t)d, vr[h * hd + d]);
        }
      }
    }
  }
  return PD_OK;
}

#if defined(__AVX2__) && defined(__F16C__)
/* 16 e4m3 bytes (in 16-bit lanes) to the f16 bits of their values times 2^-8, as the CUDA
 * kernels do (pd_cuda_convert.h): the e4m3 bits moved into an f16 are the value times 2^-8,
 * exactly (0x7f / 0xff made an f16 NaN); times s * 2^8 is fp8_table[v] * s, bit for bit: both
 * are exact scalings by powers of two. */
static inline __m256i e4m3_f16_bits(__m256i b) {
  const __m256i m7f = _mm256_set1_epi16(0x7f), m80 = _mm256_set1_epi16(0x80);
  const __m256i mag = _mm256_and_si256(b, m7f);
  const __m256i h = _mm256_blendv_epi8(_mm256_slli_epi16(mag, 7), _mm256_set1_epi16(0x7e00),
                                       _mm256_cmpeq_epi16(mag, m7f));
  return _mm256_or_si256(h, _mm256_slli_epi16(_mm256_and_si256(b, m80), 8));
}
#endif

/* Converts rows [r0, r0 + n) of K (kv = 0) or V (kv = 1) of one kv head of one block to f32
 * (dst, shape (n, head_dim)). Those rows are contiguous in the block, and so are their fp8
 * scales, so a span is converted in one pass: per element, the value is the one a row at a time
 * would give, bit for bit. */
static void convert_rows(const pd_kv_layout *L, const uint8_t *block, int layer, int kv,
                         int kv_head, int r0, int n, float *dst) {
  const size_t off = pd_kv_elem_offset(L, layer, kv, kv_head, r0), hd = (size_t)L->head_dim;
  const size_t count = (size_t)n * hd;
  if (L->dtype == PD_DTYPE_F32) {
    memcpy(dst, (const float *)block + off, count * sizeof *dst);
    return;
  }
  const uint8_t *src = block + off * pd_dtype_size(L->dtype);
  if (L->dtype == PD_DTYPE_FP8_E4M3) {
    const uint8_t *scales = block + pd_kv_scale_offset(L, layer, kv, kv_head, r0);
    for (int r = 0; r < n; r++, src += hd, dst += hd) {
      float s;
      memcpy(&s, scales + (size_t)r * sizeof s, sizeof s);
      size_t d = 0;
#if defined(__AVX2__) && defined(__F16C__)
      const __m256 unscale = _mm256_set1_ps(s * 256.0f);
      for (; d + 16 <= hd; d += 16) { /* 16 at a time */
        const __m256i h =
            e4m3_f16_bits(_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(src + d))));
#ifdef __AVX512F__
        _mm512_storeu_ps(dst + d, _mm512_mul_ps(_mm512_cvtph_ps(h), _mm512_set1_ps(s * 256.0f)));
#else
        _mm256_storeu_ps(dst + d,
                         _mm256_mul_ps(_mm256_cvtph_ps(_mm256_castsi256_si128(h)), unscale));
        _mm256_storeu_ps(dst + d + 8,
                         _mm256_mul_ps(_mm256_cvtph_ps(_mm256_extracti128_si256(h, 1)), unscale));
#endif
      }
      for (; d + 8 <= hd; d += 8) { /* 8: the low half of the 16-lane steps */
        const __m256i h = e4m3_f16_bits(
            _mm256_zextsi128_si256(_mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(src + d)))));
        _mm256_storeu_ps(dst + d,
                         _mm256_mul_ps(_mm256_cvtph_ps(_mm256_castsi256_si128(h)), unscale));
      }
#endif
      for (; d < hd; d++) dst[d] = fp8_table[src[d]] * s;
    }
    return;
  }
  size_t i = 0;
#ifdef __AVX512F__
  if (L->dtype == PD_DTYPE_F16)
    for (; i + 16 <= count; i += 16)
      _mm512_storeu_ps(dst + i,
                       _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + 2 * i))));
  if (L->dtype == PD_DTYPE_BF16)
    for (; i + 16 <= count; i += 16) {
      __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(src + 2 * i)));
      _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
    }
#endif
#ifdef __F16C__
  if (L->dtype == PD_DTYPE_F16)
    for (; i + 8 <= count; i += 8)
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + 2 * i))));
#endif
#ifdef __AVX2__
  if (L->dtype == PD_DTYPE_BF16) /* bf16 is the top half of an f32 */
    for (; i + 8 <= count; i += 8) {
      __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + 2 * i)));
      _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
    }
#endif
  for (; i < count; i++) dst[i] = pd_dtype_load(L->dtype, src, i);
}

/* ---- attention ---------------------------------------------------------------------------- */

/* The split of the work (see the top of the file): segments of SEG_LEN key positions aligned
 * to absolute positions, chunks of ROW_CHUNK query rows. */
#define SEG_LEN       256
#define ROW_CHUNK     16
#define POS_GROUP     8  /* scores are computed and summed 8 positions at a time (AVX2) */
#define POS_GROUP_512 16 /* ... and 16 with AVX-512 */
#ifdef __AVX512F__
#define PAD_POS POS_GROUP_512 /* a segment's converted rows are padded to this many */
#else
#define PAD_POS POS_GROUP
#endif
/* Blocks of K or V rows requested ahead of the one being converted (pd_attn_set_prefetch_blocks).
 * 4 (8 KiB of f16 rows at head_dim 64) decode after 1,024 tokens 1.35x faster than none on a
 * 2-core EPYC VM; bench/results/cpu_attention.md. */
#define PREFETCH_DEFAULT 4
#define PREFETCH_MAX     16
static int prefetch_ahead = PREFETCH_DEFAULT;

int pd_attn_arith_variant(void) {
#if defined(__AVX512F__)
  return 1;
#elif defined(__AVX2__)
  return 0;
#else
  return 2;
#endif
}

int pd_attn_set_prefetch_blocks(int n) {
  const int previous = prefetch_ahead;
  prefetch_ahead = n < 0 ? PREFETCH_DEFAULT : n > PREFETCH_MAX ? PREFETCH_MAX : n;
  return previous;
}

/* Converts rows [p0, p1) of K (kv = 0) or V (kv = 1) of one kv head to f32 rows of dst (shape
 * (p1 - p0 rounded up to PAD_POS, head_dim)), a block's span of rows at a time, with the spans
 * of the next prefetch_ahead blocks requested meanwhile (the blocks lie anywhere in the pool, so
 * the hardware's stream prefetcher does not see them coming); the rows past p1 are zero. */
static void load_rows(const pd_kv_layout *L, const void *pool, const pd_attn_seq *sq, int layer,
                      int kv, int kvh, int p0, int p1, float *dst) {
  const size_t bb = pd_kv_block_bytes(L), hd = (size_t)L->head_dim, es = pd_dtype_size(L->dtype);
  /* one block's rows of this (layer, kv, kv head): span bytes from off */
  const size_t off = pd_kv_elem_offset(L, layer, kv, kvh, 0) * es, span = L->block_tokens * hd * es;
  const int B = L->block_tokens, b_end = (p1 - 1) / B + 1, ahead_n = prefetch_ahead;
  for (int p = p0; p < p1;) {
    const int b = p / B, r0 = p % B, n = B - r0 < p1 - p ? B - r0 : p1 - p;
    /* blocks b + 1 .. b + ahead_n, all of them each time: asking again for lines already on
     * their way costs little, and measured faster than asking once for block b + ahead_n (the
     * loop is written here, not in a helper: GCC removes a call whose only effect is a
     * prefetch) */
    for (int ahead = b + 1; ahead < b_end && ahead <= b + ahead_n; ahead++) {
      const uint8_t *rows = (const uint8_t *)pool + (size_t)sq->block_table[ahead] * bb + off;
      for (size_t c = 0; c < span; c += 64) __builtin_prefetch(rows + c);
    }
    const uint8_t *blk = (const uint8_t *)pool + (size_t)sq->block_table[b] * bb;
    convert_rows(L, blk, layer, kv, kvh, r0, n, dst + (size_t)(p - p0) * hd);
    p += n;
  }
  const int padded = (p1 - p0 + PAD_POS - 1) / PAD_POS * PAD_POS;
  memset(dst + (size_t)(p1 - p0) * hd, 0, (size_t)(padded - (p1 - p0)) * hd * sizeof *dst);
}

#ifdef __AVX2__
/* Scores of one query row against 8 consecutive key rows (k, shape (8, hd)), hd a multiple of 8:
 * lane j of the result is dot(q, k_j), each dot summed per lane over hd / 8 vectors and then
 * pairwise ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)). */
static inline __m256 dot8(const float *q, const float *k, int hd) {
  __m256 a[8];
#pragma GCC unroll 8
  for (int j = 0; j < 8; j++) a[j] = _mm256_setzero_ps();
  for (int c = 0; c < hd; c += 8) {
    const __m256 qc = _mm256_loadu_ps(q + c);
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++) a[j] = _mm256_fmadd_ps(qc, _mm256_loadu_ps(k + j * hd + c), a[j]);
  }
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

/* The 8 lanes summed ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)). */
static inline float hsum8_pairwise(__m256 v) {
  float x[8];
  _mm256_storeu_ps(x, v);
  return ((x[0] + x[1]) + (x[2] + x[3])) + ((x[4] + x[5]) + (x[6] + x[7]));
}

/* exp's constants (Cephes' expf), for the 8- and 16-lane versions alike: ln 2 in two parts, and
 * the degree-6 polynomial's coefficients */
#define EXP_LOG2E  1.44269504088896341f
#define EXP_LN2_HI 0.693359375f
#define EXP_LN2_LO (-2.12194440e-4f)
#define EXP_P0     1.9875691500e-4f
#define EXP_P1     1.3981999507e-3f
#define EXP_P2     8.3334519073e-3f
#define EXP_P3     4.1665795894e-2f
#define EXP_P4     1.6666665459e-1f
#define EXP_P5     5.0000001201e-1f

/* exp(x) for x <= 0, 8 lanes: 2^n * p(r), r = x - n ln 2, |r| <= ln 2 / 2, Cephes' degree-6
 * polynomial (within 2 ulp of expf); 0 below -87 and for -inf. exp(0) is exactly 1. */
static inline __m256 exp8_nonpos(__m256 x) {
  const __m256 live = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_GE_OQ);
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(EXP_LOG2E)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2_HI), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2_LO), r);
  __m256 p = _mm256_set1_ps(EXP_P0);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P1));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P2));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P3));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P4));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P5));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), live);
}
#endif

#ifdef __AVX512F__
/* Lanes 0-7: the sums of x's lane pairs (2i, 2i + 1); lanes 8-15: y's. */
static inline __m512 pairsum16(__m512 x, __m512 y) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  return _mm512_add_ps(_mm512_permutex2var_ps(x, even, y), _mm512_permutex2var_ps(x, odd, y));
}

/* Scores of one query row against 16 consecutive key rows (k, shape (16, hd)), hd a multiple of
 * 16: lane j of the result is dot(q, k_j), summed per lane over hd / 16 vectors and then over
 * its 16 lanes pairwise (((l0 + l1) + (l2 + l3)) + ...), four levels of pairsum16 for all 16 rows
 * at once (level n leaves 16 >> n partial sums of each row, the rows in order). */
static inline __m512 dot16(const float *q, const float *k, int hd) {
  __m512 a[16];
#pragma GCC unroll 16
  for (int j = 0; j < 16; j++) a[j] = _mm512_setzero_ps();
  for (int c = 0; c < hd; c += 16) {
    const __m512 qc = _mm512_loadu_ps(q + c);
#pragma GCC unroll 16
    for (int j = 0; j < 16; j++) a[j] = _mm512_fmadd_ps(qc, _mm512_loadu_ps(k + j * hd + c), a[j]);
  }
#pragma GCC unroll 8
  for (int j = 0; j < 8; j++) a[j] = pairsum16(a[2 * j], a[2 * j + 1]);
#pragma GCC unroll 4
  for (int j = 0; j < 4; j++) a[j] = pairsum16(a[2 * j], a[2 * j + 1]);
  a[0] = pairsum16(a[0], a[1]), a[1] = pairsum16(a[2], a[3]);
  return pairsum16(a[0], a[1]);
}

/* exp8_nonpos on 16 lanes: the same steps, so each lane gets the same value. */
static inline __m512 exp16_nonpos(__m512 x) {
  const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_GE_OQ);
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(EXP_LOG2E)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_HI), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_LO), r);
  __m512 p = _mm512_set1_ps(EXP_P0);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P1));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P2));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P3));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P4));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P5));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  const __m512i e =
      _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_maskz_mov_ps(live, _mm512_mul_ps(p, _mm512_castsi512_ps(e)));
}

/* segment_row with AVX-512, hd a multiple of 16: scores 16 positions at a time, their max and
 * softmax weights 16 lanes at a time (the sum pairwise over the lanes at the end), and acc
 * accumulated in registers, even and odd positions apart (two dependency chains per vector of
 * acc) and added at the end. The operations depend only on the row's q, its keys and n_vis. */
static void segment_row_512(const float *q, const float *k, const float *v, int n_vis, int hd,
                            float scale, float *sc, float *acc, float *m_out, float *l_out) {
  const int n_grp = (n_vis + POS_GROUP_512 - 1) / POS_GROUP_512;
  const __m512 vscale = _mm512_set1_ps(scale);
  __m512 vmax = _mm512_set1_ps(-INFINITY);
  for (int g = 0; g < n_grp; g++) {
    __m512 s = _mm512_mul_ps(dot16(q, k + (size_t)g * POS_GROUP_512 * hd, hd), vscale);
    const int left = n_vis - g * POS_GROUP_512;
    if (left < POS_GROUP_512) /* the lanes past n_vis are not this row's */
      s = _mm512_mask_blend_ps((__mmask16)((1u << left) - 1u), _mm512_set1_ps(-INFINITY), s);
    _mm512_storeu_ps(sc + g * POS_GROUP_512, s);
    vmax = _mm512_max_ps(vmax, s);
  }
  const float m = _mm512_reduce_max_ps(vmax); /* a max: the same whatever the order */
  const __m512 vm = _mm512_set1_ps(m);
  __m512 vsum = _mm512_setzero_ps();
  for (int g = 0; g < n_grp; g++) {
    const __m512 p = exp16_nonpos(_mm512_sub_ps(_mm512_loadu_ps(sc + g * POS_GROUP_512), vm));
    _mm512_storeu_ps(sc + g * POS_GROUP_512, p);
    vsum = _mm512_add_ps(vsum, p);
  }
  /* the 16 lanes pairwise: four pairsum16 levels on (vsum, 0) leave the sum in lane 0 */
  const __m512 zero = _mm512_setzero_ps();
  __m512 t = pairsum16(vsum, zero);
  t = pairsum16(t, zero), t = pairsum16(t, zero), t = pairsum16(t, zero);
  const float l = _mm512_cvtss_f32(t);
  for (int d0 = 0; d0 < hd; d0 += 128) { /* up to 8 vectors of acc, two chains each */
    const int nv = hd - d0 >= 128 ? 8 : (hd - d0) / 16;
    __m512 even[8], odd[8];
    for (int j = 0; j < 8; j++) even[j] = odd[j] = _mm512_setzero_ps();
    int p = 0;
    for (; p + 2 <= n_vis; p += 2) {
      const __m512 w0 = _mm512_set1_ps(sc[p]), w1 = _mm512_set1_ps(sc[p + 1]);
      const float *v0 = v + (size_t)p * hd + d0, *v1 = v0 + hd;
      for (int j = 0; j < nv; j++) {
        even[j] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(v0 + 16 * j), even[j]);
        odd[j] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(v1 + 16 * j), odd[j]);
      }
    }
    if (p < n_vis) {
      const __m512 w0 = _mm512_set1_ps(sc[p]);
      const float *v0 = v + (size_t)p * hd + d0;
      for (int j = 0; j < nv; j++)
        even[j] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(v0 + 16 * j), even[j]);
    }
    for (int j = 0; j < nv; j++)
      _mm512_storeu_ps(acc + d0 + 16 * j, _mm512_add_ps(even[j], odd[j]));
  }
  *m_out = m, *l_out = l;
}
#endif

/* One (row, head, segment): scores of q against the segment's first n_vis key rows (k, shape
 * (n_vis rounded up to 8, hd)), their softmax weights, and acc (hd) = sum of weight * v row. Writes
 * m, l, and acc; sc is scratch (SEG_LEN). The operations depend only on the row's q, the key
 * rows it sees and n_vis: never on the other rows of the task. */
static void segment_row(const float *q, const float *k, const float *v, int n_vis, int hd,
                        float scale, float *sc, float *acc, float *m_out, float *l_out) {
  float m = -INFINITY, l = 0.0f;
#ifdef __AVX512F__
  if (hd % 16 == 0) {
    segment_row_512(q, k, v, n_vis, hd, scale, sc, acc, m_out, l_out);
    return;
  }
#endif
#ifdef __AVX2__
  if (hd % 8 == 0) {
    const int n_grp = (n_vis + POS_GROUP - 1) / POS_GROUP;
    const __m256 vscale = _mm256_set1_ps(scale);
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    for (int g = 0; g < n_grp; g++) {
      __m256 s = _mm256_mul_ps(dot8(q, k + (size_t)g * POS_GROUP * hd, hd), vscale);
      if ((g + 1) * POS_GROUP > n_vis) { /* the lanes past n_vis are not this row's */
        const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        const __m256 seen =
            _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n_vis - g * POS_GROUP), lane));
        s = _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), s, seen);
      }
      _mm256_storeu_ps(sc + g * POS_GROUP, s);
      vmax = _mm256_max_ps(vmax, s);
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, vmax);
    for (int j = 0; j < 8; j++) m = fmaxf(m, lanes[j]);
    const __m256 vm = _mm256_set1_ps(m);
    __m256 vsum = _mm256_setzero_ps();
    for (int g = 0; g < n_grp; g++) {
      const __m256 p = exp8_nonpos(_mm256_sub_ps(_mm256_loadu_ps(sc + g * POS_GROUP), vm));
      _mm256_storeu_ps(sc + g * POS_GROUP, p);
      vsum = _mm256_add_ps(vsum, p);
    }
    l = hsum8_pairwise(vsum);
    for (int d0 = 0; d0 < hd; d0 += 64) { /* 8 vectors of acc in registers across the positions */
      const int nv = hd - d0 >= 64 ? 8 : (hd - d0) / 8;
      __m256 o[8];
      for (int j = 0; j < 8; j++) o[j] = _mm256_setzero_ps();
      for (int p = 0; p < n_vis; p++) {
        const __m256 w = _mm256_broadcast_ss(sc + p);
        const float *vr = v + (size_t)p * hd + d0;
        if (nv == 8)
          for (int j = 0; j < 8; j++) o[j] = _mm256_fmadd_ps(w, _mm256_loadu_ps(vr + 8 * j), o[j]);
        else
          for (int j = 0; j < nv; j++) o[j] = _mm256_fmadd_ps(w, _mm256_loadu_ps(vr + 8 * j), o[j]);
      }
      for (int j = 0; j < nv; j++) _mm256_storeu_ps(acc + d0 + 8 * j, o[j]);
    }
    *m_out = m, *l_out = l;
    return;
  }
#endif
  for (int p = 0; p < n_vis; p++) {
    sc[p] = pd_dot_f32(q, k + (size_t)p * hd, hd) * scale;
    m = fmaxf(m, sc[p]);
  }
  for (int p = 0; p < n_vis; p++) {
    sc[p] = expf(sc[p] - m);
    l += sc[p];
  }
  memset(acc, 0, (size_t)hd * sizeof *acc);
  for (int p = 0; p < n_vis; p++)
    for (int d = 0; d < hd; d++) acc[d] += sc[p] * v[(size_t)p * hd + d];
  *m_out = m, *l_out = l;
}

/* Key segments a sequence's last row reaches. */
static int seq_segments(const pd_attn_seq *s) {
  return (s->n_past + s->n_new + SEG_LEN - 1) / SEG_LEN;
}

/* ---- the plan: which rows each task computes against which segment ------------------------ */

/* Rows [i0, i0 + nr) of sequence s. */
typedef struct attn_piece {
  int32_t s, i0, nr;
} attn_piece;

/* Pieces [piece0, piece0 + n_pieces) against segment g of kv head kvh; every piece's sequence
 * holds the same blocks there, so the segment's K and V are converted once for all of them. */
typedef struct attn_task {
  int32_t piece0, n_pieces, g, kvh;
} attn_task;

/* A segment that every row of sequence s sees in full (it ends at or before n_past), named by
 * the blocks that hold it: sequences whose entries compare equal share its keys. */
typedef struct shared_seg {
  const int32_t *ids; /* the sequence's block table from the segment's first block */
  int32_t n_ids, g, s;
} shared_seg;

/* Orders by segment, then blocks (same g: same n_ids): 0 when x and y share their keys. */
static int cmp_keys(const shared_seg *x, const shared_seg *y) {
  if (x->g != y->g) return x->g < y->g ? -1 : 1;
  return memcmp(x->ids, y->ids, sizeof(int32_t) * (size_t)x->n_ids);
}

/* cmp_keys, then sequence: a total order, so the plan does not depend on qsort's. */
static int cmp_shared_seg(const void *a, const void *b) {
  const shared_seg *x = a, *y = b;
  int c = cmp_keys(x, y);
  return c ? c : (x->s > y->s) - (x->s < y->s);
}

/* Rows a task over a shared segment takes at most: 64 decode rows of as many sequences, or four
 * prefill chunks. */
#define SHARED_TASK_ROWS 64

typedef struct attn_plan {
  attn_piece *pieces;
  attn_task *tasks;
  int64_t n_pieces, n_tasks;
} attn_plan;

static void plan_free(attn_plan *p) {
  free(p->pieces), free(p->tasks);
}

/* Appends one task per kv head over pieces [piece0, piece0 + n). */
static void add_tasks(attn_plan *p, int n_kv, int64_t piece0, int64_t n, int g) {
  for (int kvh = 0; kvh < n_kv; kvh++)
    p->tasks[p->n_tasks++] = (attn_task){(int32_t)piece0, (int32_t)n, g, kvh};
}

/* Splits the work of a call into tasks. A segment that several sequences hold in the same
 * blocks and see in full (a shared system prompt) is one task per kv head for up to
 * SHARED_TASK_ROWS of their rows together (cascade attention on the CPU: the keys are converted
 * once, and stay in cache while every row passes); every other (sequence, chunk of ROW_CHUNK
 * rows, segment) is a task per kv head of its own. Shared tasks come first: they are the largest,
 * and the dynamic schedule then evens out the rest. */
static int plan_tasks(const pd_kv_layout *L, const pd_attn_seq *seqs, int n_seqs, attn_plan *p) {
  memset(p, 0, sizeof *p);
  const int B = L->block_tokens, n_kv = L->n_kv_heads;
  /* per sequence, 1 where a full segment is in a shared task: at seg_flag0[s] + g */
  int64_t *seg_flag0 = malloc(sizeof(int64_t) * (size_t)(n_seqs + 1));
  if (!seg_flag0) return PD_ENOMEM;
  /* pieces: every chunk's own, plus at most one copy per (chunk, full segment) in shared tasks;
   * tasks: at most one per (chunk, segment, kv head) */
  int64_t max_pieces = 0, max_tasks = 0;
  seg_flag0[0] = 0;
  for (int s = 0; s < n_seqs; s++) {
    const int chunks = (seqs[s].n_new + ROW_CHUNK - 1) / ROW_CHUNK, full = seqs[s].n_past / SEG_LEN;
    seg_flag0[s + 1] = seg_flag0[s] + full;
    max_pieces += (int64_t)chunks * (1 + full);
    max_tasks += (int64_t)chunks * seq_segments(&seqs[s]) * n_kv;
  }
  const int64_t n_flags = seg_flag0[n_seqs];
  shared_seg *segs = malloc(sizeof *segs * (size_t)(n_flags > 0 ? n_flags : 1));
  char *shared = calloc((size_t)(n_flags > 0 ? n_flags : 1), 1);
  p->pieces = malloc(sizeof *p->pieces * (size_t)(max_pieces > 0 ? max_pieces : 1));
  p->tasks = malloc(sizeof *p->tasks * (size_t)(max_tasks > 0 ? max_tasks : 1));
  if (!segs || !shared || !p->pieces || !p->tasks) {
    free(segs), free(seg_flag0), free(shared), plan_free(p);
    return PD_ENOMEM;
  }
  /* the shared segments: sort the full ones by (g, blocks); runs of two or more share */
  int64_t n_full = 0;
  for (int s = 0; s < n_seqs; s++)
    for (int g = 0; g < seqs[s].n_past / SEG_LEN && seqs[s].n_new > 0; g++) {
      const int first = g * SEG_LEN / B, last = ((g + 1) * SEG_LEN - 1) / B;
      segs[n_full++] = (shared_seg){seqs[s].block_table + first, last - first + 1, g, s};
    }
  qsort(segs, (size_t)n_full, sizeof *segs, cmp_shared_seg);
  for (int64_t a = 0, b; a < n_full; a = b) {
    for (b = a + 1; b < n_full && cmp_keys(&segs[a], &segs[b]) == 0; b++) {
    }
    if (b - a < 2) continue;
    /* pieces: every chunk of every member, in tasks of at most SHARED_TASK_ROWS rows */
    int64_t piece0 = p->n_pieces, rows = 0;
    for (int64_t m = a; m < b; m++) {
      const pd_attn_seq *sq = &seqs[segs[m].s];
      shared[seg_flag0[segs[m].s] + segs[m].g] = 1;
      for (int i0 = 0; i0 < sq->n_new; i0 += ROW_CHUNK) {
        const int nr = sq->n_new - i0 < ROW_CHUNK ? sq->n_new - i0 : ROW_CHUNK;
        if (rows + nr > SHARED_TASK_ROWS && p->n_pieces > piece0) {
          add_tasks(p, n_kv, piece0, p->n_pieces - piece0, segs[a].g);
          piece0 = p->n_pieces, rows = 0;
        }
        p->pieces[p->n_pieces++] = (attn_piece){segs[m].s, i0, nr};
        rows += nr;
      }
    }
    if (p->n_pieces > piece0) add_tasks(p, n_kv, piece0, p->n_pieces - piece0, segs[a].g);
  }
  /* the rest: each chunk against each segment its rows reach, unless shared above */
  for (int s = 0; s < n_seqs; s++) {
    const pd_attn_seq *sq = &seqs[s];
    for (int i0 = 0; i0 < sq->n_new; i0 += ROW_CHUNK) {
      const int nr = sq->n_new - i0 < ROW_CHUNK ? sq->n_new - i0 : ROW_CHUNK;
      const int64_t piece = p->n_pieces++;
      p->pieces[piece] = (attn_piece){s, i0, nr};
      const int ctx_end = sq->n_past + i0 + nr;
      for (int g = 0; g * SEG_LEN < ctx_end; g++) {
        if (g < sq->n_past / SEG_LEN && shared[seg_flag0[s] + g]) continue;
        add_tasks(p, n_kv, piece, 1, g);
      }
    }
  }
  free(segs), free(seg_flag0), free(shared);
  return PD_OK;
}

int pd_attn_paged(const pd_kv_layout *L, const void *pool, int layer, int n_heads, const float *q,
                  float *out, const pd_attn_seq *seqs, int n_seqs, float scale) {
  if (n_heads <= 0 || L->n_kv_heads <= 0 || n_heads % L->n_kv_heads || layer < 0 ||
      layer >= L->n_layers || n_seqs < 0)
    return PD_EINVAL;
  const int hd = L->head_dim, group = n_heads / L->n_kv_heads;
  for (int s = 0; s < n_seqs; s++)
    if (!seq_ok(L, &seqs[s])) return PD_EINVAL;
  /* per sequence: its first workspace slot; slot (s, i, h, g) = slot0[s] + (i * n_heads + h) *
   * seq_segments + g, each slot hd + 2 floats (acc, m, l) */
  int64_t *slot0 = malloc(sizeof(int64_t) * (size_t)(n_seqs + 1));
  attn_plan plan;
  if (!slot0 || plan_tasks(L, seqs, n_seqs, &plan)) {
    free(slot0);
    return PD_ENOMEM;
  }
  slot0[0] = 0;
  for (int s = 0; s < n_seqs; s++)
    slot0[s + 1] = slot0[s] + (int64_t)seqs[s].n_new * n_heads * seq_segments(&seqs[s]);
  const int64_t n_tasks = plan.n_tasks, slot_floats = hd + 2;
  float *ws =
      malloc(sizeof(float) * (size_t)(slot0[n_seqs] > 0 ? slot0[n_seqs] : 1) * (size_t)slot_floats);
  int failed = !ws;
  /* (row, head) pairs in sequence order, for the fold */
  int64_t *rh0 = malloc(sizeof(int64_t) * (size_t)(n_seqs + 1));
  if (rh0) {
    rh0[0] = 0;
    for (int s = 0; s < n_seqs; s++) rh0[s + 1] = rh0[s] + (int64_t)seqs[s].n_new * n_heads;
  } else {
    failed = 1;
  }
  const int64_t n_row_heads = rh0 ? rh0[n_seqs] : 0;
  if (L->dtype == PD_DTYPE_FP8_E4M3) pthread_once(&fp8_table_once, fp8_table_fill);
#pragma omp parallel if (!failed)
  {
    /* kt, vt: (SEG_LEN, hd) f32 rows of the segment; sc: (SEG_LEN) */
    float *kt = malloc(sizeof(float) * SEG_LEN * (size_t)hd);
    float *vt = malloc(sizeof(float) * SEG_LEN * (size_t)hd);
    float *sc = malloc(sizeof(float) * SEG_LEN);
    if (!kt || !vt || !sc) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < n_tasks; task++) {
      if (failed) continue;
      const attn_task *t = &plan.tasks[task];
      const attn_piece *pieces = plan.pieces + t->piece0;
      const int g = t->g, kvh = t->kvh, p0 = g * SEG_LEN;
      int ctx_end = 0; /* the furthest position a row of the task sees, plus one */
      for (int j = 0; j < t->n_pieces; j++) {
        const pd_attn_seq *sq = &seqs[pieces[j].s];
        const int e = sq->n_past + pieces[j].i0 + pieces[j].nr;
        ctx_end = e > ctx_end ? e : ctx_end;
      }
      const int p1 = ctx_end < p0 + SEG_LEN ? ctx_end : p0 + SEG_LEN;
      /* the pieces' sequences hold the same blocks over [p0, p1): the first one's are read */
      load_rows(L, pool, &seqs[pieces[0].s], layer, 0, kvh, p0, p1, kt);
      load_rows(L, pool, &seqs[pieces[0].s], layer, 1, kvh, p0, p1, vt);
      for (int j = 0; j < t->n_pieces; j++) {
        const int s = pieces[j].s, i0 = pieces[j].i0, nr = pieces[j].nr;
        const pd_attn_seq *sq = &seqs[s];
        const int nseg = seq_segments(sq);
        for (int i = 0; i < nr; i++) {
          const int row_end = sq->n_past + i0 + i + 1; /* row i sees positions < row_end */
          if (row_end <= p0) continue;
          const int n_vis = (row_end < p1 ? row_end : p1) - p0;
          for (int hh = 0; hh < group; hh++) {
            const int h = kvh * group + hh;
            const float *qr =
                q +
                (((size_t)sq->row + (size_t)(i0 + i)) * (size_t)n_heads + (size_t)h) * (size_t)hd;
            float *slot = ws + (size_t)(slot0[s] + ((int64_t)(i0 + i) * n_heads + h) * nseg + g) *
                                   (size_t)slot_floats;
            segment_row(qr, kt, vt, n_vis, hd, scale, sc, slot, slot + hd, slot + hd + 1);
          }
        }
      }
    }
    free(kt), free(vt), free(sc);
    /* (the loop's end is a barrier) fold the segments of every (row, head) in order */
#pragma omp for schedule(static)
    for (int64_t rh = 0; rh < n_row_heads; rh++) {
      if (failed) continue;
      int s = 0;
      while (rh >= rh0[s + 1]) s++;
      const int64_t x = rh - rh0[s];
      const pd_attn_seq *sq = &seqs[s];
      const int i = (int)(x / n_heads), h = (int)(x % n_heads), nseg = seq_segments(sq);
      const int row_end = sq->n_past + i + 1, n_used = (row_end + SEG_LEN - 1) / SEG_LEN;
      const float *slots = ws + (size_t)(slot0[s] + x * nseg) * (size_t)slot_floats;
      float mx = -INFINITY;
      for (int g = 0; g < n_used; g++) mx = fmaxf(mx, slots[(size_t)g * slot_floats + hd]);
      float *o = out + (((size_t)sq->row + (size_t)i) * (size_t)n_heads + (size_t)h) * (size_t)hd;
      float sum = 0.0f;
      for (int d = 0; d < hd; d++) o[d] = 0.0f;
      for (int g = 0; g < n_used; g++) {
        const float *sl = slots + (size_t)g * slot_floats;
        const float f = expf(sl[hd] - mx);
        sum += sl[hd + 1] * f;
        for (int d = 0; d < hd; d++) o[d] += sl[d] * f;
      }
      const float inv = 1.0f / sum;
      for (int d = 0; d < hd; d++) o[d] *= inv;
    }
  }
  free(ws), free(slot0), free(rh0);
  plan_free(&plan);
  return failed ? PD_ENOMEM : PD_OK;
}
