/*
 * pd_llama.c -- the Llama forward pass; see pd_llama.h.
 *
 * Per layer, for all rows of the batch at once (shapes with R = rows in the batch):
 *   xn (R, d)    = rmsnorm(x) * attn_norm
 *   q  (R, H*hd) = xn . Wq^T   k, v (R, Hkv*hd) = xn . Wk^T, xn . Wv^T   (+ bias for qwen2)
 *   rope(q, k) at each row's position; store k, v into the sequence's blocks
 *   att (R, H*hd) = causal attention of q over the sequence's paged KV
 *   x += att . Wo^T
 *   xn = rmsnorm(x) * ffn_norm;  x += (silu(xn . Wg^T) * (xn . Wu^T)) . Wd^T
 * then the rows that want logits: rmsnorm(x) * out_norm . Wout^T.
 * q, k, v (and gate, up) are one pd_matmul_n call: the activations are quantized once. The
 * row-wise steps split rows across the threads when the batch has PAR_ROWS rows or more.
 */
#include "pd_llama.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "pd_err.h"

void pd_llama_free(pd_llama *c) {
  free(c->x), free(c->xn), free(c->q), free(c->k), free(c->v), free(c->att);
  free(c->ffn_gate), free(c->ffn_up), free(c->tmp), free(c->last);
  memset(c, 0, sizeof *c);
}

int pd_llama_init(pd_llama *c, const pd_model *m, int block_tokens, enum pd_dtype cache_dtype,
                  enum pd_matmul_mode mode, int max_tokens, int max_seqs) {
  memset(c, 0, sizeof *c);
  if (max_tokens <= 0 || max_seqs <= 0 || block_tokens <= 0) return PD_EINVAL;
  c->model = m;
  c->kv = (pd_kv_layout){m->n_layers, m->n_kv_heads, m->head_dim, block_tokens, cache_dtype};
  c->mode = mode;
  c->max_tokens = max_tokens;
  c->max_seqs = max_seqs;
  size_t R = (size_t)max_tokens, d = (size_t)m->d_model, qd = (size_t)m->n_heads * m->head_dim;
  size_t kvd = (size_t)m->n_kv_heads * m->head_dim, f = (size_t)m->ffn_dim;
  c->x = malloc(R * d * 4);
  c->xn = malloc(R * d * 4);
  c->q = malloc(R * qd * 4);
  c->k = malloc(R * kvd * 4);
  c->v = malloc(R * kvd * 4);
  c->att = malloc(R * qd * 4);
  c->ffn_gate = malloc(R * f * 4);
  c->ffn_up = malloc(R * f * 4);
  c->tmp = malloc(R * d * 4);
  c->last = malloc(R * d * 4);
  if (!c->x || !c->xn || !c->q || !c->k || !c->v || !c->att || !c->ffn_gate || !c->ffn_up ||
      !c->tmp || !c->last) {
    pd_llama_free(c);
    return PD_ENOMEM;
  }
  return PD_OK;
}

/* The row-wise steps (norms, RoPE, SwiGLU, residuals) split rows across threads from this many
 * rows on; below it a fork/join costs more than the work. Each row's arithmetic is the same
 * either way. */
#define PAR_ROWS 4

static void add_bias(float *y, const pd_weight *b, int64_t rows, int64_t dim) {
  if (!b->data) return;
  const float *bias = b->data;
  for (int64_t r = 0; r < rows; r++) pd_add(y + r * dim, bias, dim);
}

int pd_llama_forward(pd_llama *c, void *pool, const pd_llama_seq *seqs, int n_seqs, float *logits) {
  const pd_model *m = c->model;
  int d = m->d_model, H = m->n_heads, Hkv = m->n_kv_heads, hd = m->head_dim, f = m->ffn_dim;
  int qd = H * hd, kvd = Hkv * hd;
  if (n_seqs <= 0 || n_seqs > c->max_seqs) return PD_EINVAL;
  /* rows and their positions */
  int R = 0, n_want = 0;
  pd_attn_seq *as = malloc((size_t)n_seqs * sizeof *as);
  int32_t *pos = malloc((size_t)c->max_tokens * sizeof *pos); /* (R) */
  if (!as || !pos) {
    free(as), free(pos);
    return PD_ENOMEM;
  }
  int rc = PD_OK;
  for (int s = 0; s < n_seqs && !rc; s++) {
    const pd_llama_seq *sq = &seqs[s];
    if (sq->n_new <= 0 || sq->n_past < 0 || R + sq->n_new > c->max_tokens || sq->want_logits < 0 ||
        sq->want_logits > sq->n_new)
      rc = PD_EINVAL;
    as[s] = (pd_attn_seq){sq->block_table, sq->n_blocks, sq->n_past, sq->n_new, R};
    for (int i = 0; i < sq->n_new && !rc; i++) {
      int32_t tok = sq->tokens[i];
      if (tok < 0 || tok >= m->n_vocab) {
        rc = PD_EINVAL;
        break;
      }
      pos[R + i] = sq->n_past + i;
      /* embedding row */
      size_t rb = pd_ggml_row_bytes(m->tok_embd.type, d);
      pd_dequant_row(m->tok_embd.type, (const uint8_t *)m->tok_embd.data + (size_t)tok * rb,
                     c->x + (size_t)(R + i) * d, d);
    }
    if (!rc && (int64_t)sq->n_blocks * c->kv.block_tokens < (int64_t)sq->n_past + sq->n_new)
      rc = PD_EINVAL;
    R += sq->n_new;
    n_want += sq->want_logits;
  }
  float scale = 1.0f / sqrtf((float)hd);
  for (int l = 0; l < m->n_layers && !rc; l++) {
    const pd_layer_weights *L = &m->layers[l];
#pragma omp parallel for schedule(static) if (R >= PAR_ROWS)
    for (int r = 0; r < R; r++)
      pd_rmsnorm(c->xn + (size_t)r * d, c->x + (size_t)r * d, L->attn_norm.data, d, m->rms_eps);
    const pd_matmul_out qkv[3] = {{L->wq.data, L->wq.type, qd, c->q},
                                  {L->wk.data, L->wk.type, kvd, c->k},
                                  {L->wv.data, L->wv.type, kvd, c->v}};
    if ((rc = pd_matmul_n(qkv, 3, d, c->xn, R, c->mode))) break;
    add_bias(c->q, &L->bq, R, qd);
    add_bias(c->k, &L->bk, R, kvd);
    add_bias(c->v, &L->bv, R, kvd);
#pragma omp parallel for schedule(static) if (R >= PAR_ROWS)
    for (int r = 0; r < R; r++) {
      pd_rope(c->q + (size_t)r * qd, H, hd, m->rot_dim, pos[r], m->rope_theta, m->rope_neox,
              m->rope_freqs);
      pd_rope(c->k + (size_t)r * kvd, Hkv, hd, m->rot_dim, pos[r], m->rope_theta, m->rope_neox,
              m->rope_freqs);
    }
    for (int s = 0; s < n_seqs && !rc; s++) rc = pd_kv_store(&c->kv, pool, &as[s], l, c->k, c->v);
    if (rc || (rc = pd_attn_paged(&c->kv, pool, l, H, c->q, c->att, as, n_seqs, scale))) break;
    if ((rc = pd_matmul(L->wo.data, L->wo.type, qd, d, c->att, c->tmp, R, c->mode))) break;
#pragma omp parallel for schedule(static) if (R >= PAR_ROWS)
    for (int r = 0; r < R; r++) {
      pd_add(c->x + (size_t)r * d, c->tmp + (size_t)r * d, d);
      pd_rmsnorm(c->xn + (size_t)r * d, c->x + (size_t)r * d, L->ffn_norm.data, d, m->rms_eps);
    }
    const pd_matmul_out gate_up[2] = {{L->w_gate.data, L->w_gate.type, f, c->ffn_gate},
                                      {L->w_up.data, L->w_up.type, f, c->ffn_up}};
    if ((rc = pd_matmul_n(gate_up, 2, d, c->xn, R, c->mode))) break;
#pragma omp parallel for schedule(static) if (R >= PAR_ROWS)
    for (int r = 0; r < R; r++)
      pd_swiglu(c->ffn_gate + (size_t)r * f, c->ffn_up + (size_t)r * f, f);
    if ((rc = pd_matmul(L->w_down.data, L->w_down.type, f, d, c->ffn_gate, c->tmp, R, c->mode)))
      break;
#pragma omp parallel for schedule(static) if (R >= PAR_ROWS)
    for (int r = 0; r < R; r++) pd_add(c->x + (size_t)r * d, c->tmp + (size_t)r * d, d);
  }
  if (!rc && n_want) {
    int w = 0;
    for (int s = 0; s < n_seqs; s++)
      for (int r = as[s].row + as[s].n_new - seqs[s].want_logits; r < as[s].row + as[s].n_new; r++)
        pd_rmsnorm(c->last + (size_t)w++ * d, c->x + (size_t)r * d, m->out_norm.data, d,
                   m->rms_eps);
    rc = pd_matmul(m->output.data, m->output.type, d, m->n_vocab, c->last, logits, n_want, c->mode);
  }
  free(as);
  free(pos);
  return rc;
}
