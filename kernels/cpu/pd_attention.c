/*
 * pd_attention.c -- paged KV store and causal attention over it, CPU; see pd_attention.h.
 *
 * A task is (sequence, chunk of up to 32 query rows, head). It walks the visible positions in
 * order, converting each key row once and dotting it with every row of the chunk that sees it;
 * then each row's scores are exponentiated and summed in position order; then the value rows
 * are walked in order and accumulated into each row. For every query row the sequence of
 * floating-point operations is therefore the same whatever the chunk, the batch or the thread:
 * the result is bit-identical whether the prefix's keys were written in this call or came from
 * the cache, and whether the row is decoded alone or prefilled with others. Tasks run in
 * parallel (OpenMP).
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
  for (int d = 0; d < hd; d++) dst[d] = pd_f32_to_fp8e4m3(x[d] / s);
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

/* Loads head_dim elements of one K or V row as f32 (shape (head_dim)). */
static const float *load_row(const pd_kv_layout *L, const uint8_t *block, int layer, int kv,
                             int kv_head, int r, float *tmp) {
  size_t off = pd_kv_elem_offset(L, layer, kv, kv_head, r);
  if (L->dtype == PD_DTYPE_F32) return (const float *)block + off;
  const uint8_t *src = block + off * pd_dtype_size(L->dtype);
  int d = 0;
  if (L->dtype == PD_DTYPE_FP8_E4M3) {
    float s;
    memcpy(&s, block + pd_kv_scale_offset(L, layer, kv, kv_head, r), sizeof s);
#if defined(__AVX2__) && defined(__F16C__)
    /* as the CUDA kernels do (pd_cuda_convert.h): the e4m3 bits moved into an f16 are the value
     * times 2^-8, exactly (0x7f / 0xff made an f16 NaN); times s * 2^8 is fp8_table[v] * s, bit
     * for bit: both are exact scalings by powers of two */
    const __m256 unscale = _mm256_set1_ps(s * 256.0f);
    const __m128i m7f = _mm_set1_epi16(0x7f), m80 = _mm_set1_epi16(0x80),
                  nan16 = _mm_set1_epi16(0x7e00);
    for (; d + 8 <= L->head_dim; d += 8) {
      __m128i b = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(src + d)));
      __m128i mag = _mm_and_si128(b, m7f);
      __m128i h = _mm_blendv_epi8(_mm_slli_epi16(mag, 7), nan16, _mm_cmpeq_epi16(mag, m7f));
      h = _mm_or_si128(h, _mm_slli_epi16(_mm_and_si128(b, m80), 8));
      _mm256_storeu_ps(tmp + d, _mm256_mul_ps(_mm256_cvtph_ps(h), unscale));
    }
#endif
    for (; d < L->head_dim; d++) tmp[d] = fp8_table[src[d]] * s;
    return tmp;
  }
#ifdef __F16C__
  if (L->dtype == PD_DTYPE_F16)
    for (; d + 8 <= L->head_dim; d += 8)
      _mm256_storeu_ps(tmp + d, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + 2 * d))));
#endif
#ifdef __AVX2__
  if (L->dtype == PD_DTYPE_BF16) /* bf16 is the top half of an f32 */
    for (; d + 8 <= L->head_dim; d += 8) {
      __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + 2 * d)));
      _mm256_storeu_ps(tmp + d, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
    }
#endif
  for (; d < L->head_dim; d++) tmp[d] = pd_dtype_load(L->dtype, src, (size_t)d);
  return tmp;
}

/* Rows of one sequence are processed in chunks of this many, so that each key and value row is
 * converted once per chunk rather than once per query row. */
#define ROW_CHUNK 32

int pd_attn_paged(const pd_kv_layout *L, const void *pool, int layer, int n_heads, const float *q,
                  float *out, const pd_attn_seq *seqs, int n_seqs, float scale) {
  if (n_heads <= 0 || L->n_kv_heads <= 0 || n_heads % L->n_kv_heads || layer < 0 ||
      layer >= L->n_layers)
    return PD_EINVAL;
  int64_t n_tasks = 0, max_ctx = 0;
  for (int s = 0; s < n_seqs; s++) {
    if (!seq_ok(L, &seqs[s])) return PD_EINVAL;
    n_tasks += (int64_t)((seqs[s].n_new + ROW_CHUNK - 1) / ROW_CHUNK) * n_heads;
    if (seqs[s].n_past + seqs[s].n_new > max_ctx) max_ctx = seqs[s].n_past + seqs[s].n_new;
  }
  int hd = L->head_dim, group = n_heads / L->n_kv_heads;
  size_t bb = pd_kv_block_bytes(L);
  int failed = 0;
  if (L->dtype == PD_DTYPE_FP8_E4M3) pthread_once(&fp8_table_once, fp8_table_fill);
#pragma omp parallel
  {
    float *scores = malloc((size_t)ROW_CHUNK * (size_t)(max_ctx ? max_ctx : 1) * sizeof *scores);
    /* scores: (ROW_CHUNK, n_ctx); tmp: (head_dim); acc: (ROW_CHUNK, head_dim) */
    float *tmp = malloc((size_t)hd * sizeof *tmp);
    float *acc = malloc((size_t)ROW_CHUNK * (size_t)hd * sizeof *acc);
    if (!scores || !tmp || !acc) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < n_tasks; task++) {
      if (failed) continue;
      /* task -> (sequence, row chunk, head) */
      int s = 0;
      int64_t t = task;
      for (;;) {
        int64_t here = (int64_t)((seqs[s].n_new + ROW_CHUNK - 1) / ROW_CHUNK) * n_heads;
        if (t < here) break;
        t -= here;
        s++;
      }
      const pd_attn_seq *sq = &seqs[s];
      int i0 = (int)(t / n_heads) * ROW_CHUNK, h = (int)(t % n_heads), kvh = h / group;
      int nr = sq->n_new - i0 < ROW_CHUNK ? sq->n_new - i0 : ROW_CHUNK;
      int ctx_end = sq->n_past + i0 + nr; /* keys visible to the chunk's last row */
      const float *qr[ROW_CHUNK];
      float mx[ROW_CHUNK];
      for (int i = 0; i < nr; i++) {
        qr[i] =
            q + (((size_t)sq->row + (size_t)(i0 + i)) * (size_t)n_heads + (size_t)h) * (size_t)hd;
        mx[i] = -INFINITY;
      }
      /* scores, position by position; row i sees positions 0 .. n_past + i0 + i */
      for (int p = 0; p < ctx_end; p++) {
        const uint8_t *blk =
            (const uint8_t *)pool + (size_t)sq->block_table[p / L->block_tokens] * bb;
        const float *kr = load_row(L, blk, layer, 0, kvh, p % L->block_tokens, tmp);
        int first = p - sq->n_past - i0; /* the first row that sees p */
        for (int i = first > 0 ? first : 0; i < nr; i++) {
          float sc = pd_dot_f32(qr[i], kr, hd) * scale;
          scores[(size_t)i * (size_t)max_ctx + (size_t)p] = sc;
          if (sc > mx[i]) mx[i] = sc;
        }
      }
      float sum[ROW_CHUNK];
      for (int i = 0; i < nr; i++) {
        float *sr = scores + (size_t)i * (size_t)max_ctx;
        int n_ctx = sq->n_past + i0 + i + 1;
        sum[i] = 0;
        for (int p = 0; p < n_ctx; p++) {
          sr[p] = expf(sr[p] - mx[i]);
          sum[i] += sr[p];
        }
      }
      memset(acc, 0, (size_t)nr * (size_t)hd * sizeof *acc);
      for (int p = 0; p < ctx_end; p++) {
        const uint8_t *blk =
            (const uint8_t *)pool + (size_t)sq->block_table[p / L->block_tokens] * bb;
        const float *vr = load_row(L, blk, layer, 1, kvh, p % L->block_tokens, tmp);
        int first = p - sq->n_past - i0;
        for (int i = first > 0 ? first : 0; i < nr; i++) {
          float wgt = scores[(size_t)i * (size_t)max_ctx + (size_t)p];
          float *a = acc + (size_t)i * (size_t)hd;
          for (int d = 0; d < hd; d++) a[d] += wgt * vr[d];
        }
      }
      for (int i = 0; i < nr; i++) {
        float inv = 1.0f / sum[i];
        float *o =
            out + (((size_t)sq->row + (size_t)(i0 + i)) * (size_t)n_heads + (size_t)h) * (size_t)hd;
        for (int d = 0; d < hd; d++) o[d] = acc[(size_t)i * (size_t)hd + (size_t)d] * inv;
      }
    }
    free(scores);
    free(tmp);
    free(acc);
  }
  return failed ? PD_ENOMEM : PD_OK;
}
