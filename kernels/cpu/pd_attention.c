/*
 * pd_attention.c -- paged KV store and causal attention over it, CPU; see pd_attention.h.
 *
 * One (row, head) task computes the scores of its query against every visible key into a
 * private buffer (shape (n_ctx)), takes their maximum, exponentiates and sums in position order,
 * then accumulates the values in position order. Nothing in that sequence depends on the batch,
 * so the result is bit-identical whether the prefix's keys were written in this call or came
 * from the cache. Tasks run in parallel (OpenMP) over (row, head).
 */
#include "pd_attention.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "pd_err.h"
#include "pd_matmul.h"

size_t pd_kv_block_bytes(const pd_kv_layout *L) {
  return 2u * (size_t)L->n_layers * (size_t)L->n_kv_heads * (size_t)L->block_tokens *
         (size_t)L->head_dim * pd_dtype_size(L->dtype);
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
  for (int d = 0; d < L->head_dim; d++) tmp[d] = pd_dtype_load(L->dtype, src, (size_t)d);
  return tmp;
}

int pd_attn_paged(const pd_kv_layout *L, const void *pool, int layer, int n_heads, const float *q,
                  float *out, const pd_attn_seq *seqs, int n_seqs, float scale) {
  if (n_heads <= 0 || L->n_kv_heads <= 0 || n_heads % L->n_kv_heads || layer < 0 ||
      layer >= L->n_layers)
    return PD_EINVAL;
  int64_t n_tasks = 0, max_ctx = 0;
  for (int s = 0; s < n_seqs; s++) {
    if (!seq_ok(L, &seqs[s])) return PD_EINVAL;
    n_tasks += (int64_t)seqs[s].n_new * n_heads;
    if (seqs[s].n_past + seqs[s].n_new > max_ctx) max_ctx = seqs[s].n_past + seqs[s].n_new;
  }
  int hd = L->head_dim, group = n_heads / L->n_kv_heads;
  size_t bb = pd_kv_block_bytes(L);
  int failed = 0;
#pragma omp parallel
  {
    float *scores = malloc((size_t)(max_ctx ? max_ctx : 1) * sizeof *scores); // (n_ctx)
    float *tmp = malloc((size_t)hd * sizeof *tmp);                            // (head_dim)
    float *acc = malloc((size_t)hd * sizeof *acc);                            // (head_dim)
    if (!scores || !tmp || !acc) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp for schedule(dynamic, 4)
    for (int64_t task = 0; task < n_tasks; task++) {
      if (failed) continue;
      /* task -> (sequence, row, head) */
      int s = 0;
      int64_t t = task;
      while (t >= (int64_t)seqs[s].n_new * n_heads) t -= (int64_t)seqs[s++].n_new * n_heads;
      const pd_attn_seq *sq = &seqs[s];
      int i = (int)(t / n_heads), h = (int)(t % n_heads), kvh = h / group;
      int n_ctx = sq->n_past + i + 1;
      size_t row = (size_t)sq->row + (size_t)i;
      const float *qr = q + (row * (size_t)n_heads + (size_t)h) * (size_t)hd;
      float mx = -INFINITY;
      for (int p = 0; p < n_ctx; p++) {
        const uint8_t *blk =
            (const uint8_t *)pool + (size_t)sq->block_table[p / L->block_tokens] * bb;
        const float *kr = load_row(L, blk, layer, 0, kvh, p % L->block_tokens, tmp);
        scores[p] = pd_dot_f32(qr, kr, hd) * scale;
        if (scores[p] > mx) mx = scores[p];
      }
      float sum = 0;
      for (int p = 0; p < n_ctx; p++) {
        scores[p] = expf(scores[p] - mx);
        sum += scores[p];
      }
      memset(acc, 0, (size_t)hd * sizeof *acc);
      for (int p = 0; p < n_ctx; p++) {
        const uint8_t *blk =
            (const uint8_t *)pool + (size_t)sq->block_table[p / L->block_tokens] * bb;
        const float *vr = load_row(L, blk, layer, 1, kvh, p % L->block_tokens, tmp);
        float wgt = scores[p];
        for (int d = 0; d < hd; d++) acc[d] += wgt * vr[d];
      }
      float inv = 1.0f / sum;
      float *o = out + (row * (size_t)n_heads + (size_t)h) * (size_t)hd;
      for (int d = 0; d < hd; d++) o[d] = acc[d] * inv;
    }
    free(scores);
    free(tmp);
    free(acc);
  }
  return failed ? PD_ENOMEM : PD_OK;
}
