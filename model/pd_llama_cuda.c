/*
 * pd_llama_cuda.c -- the Llama forward pass on the GPU; see pd_llama_cuda.h.
 *
 * One call: validate the batch on the host (the same checks as pd_llama_forward, plus block ids
 * >= 0), write its description into the pinned staging buffer (layout in pd_llama_cuda.h), then
 * enqueue on the context's stream: one host-to-device copy of the staging buffer, the embedding
 * gather, the layers, the final norm and output GEMM for the rows that want logits, and the
 * argmax with its small device-to-host copy when tokens are asked. That sequence (enqueue_step)
 * is exactly what a CUDA graph captures for a decode shape; the logits copy to the caller's
 * (pageable) buffer stays outside the graph. The call ends with a stream synchronisation, so the
 * staging buffer is free again when it returns.
 *
 * Sizes that can grow after init: the block-table stride (a sequence longer than the model's
 * training context) and pd_cuda_attn's workspace (its plan depends on the batch). Both are
 * checked every call and regrown (after a synchronisation, dropping the graphs, which point at
 * the old buffers).
 *
 * Decode-sized steps can run each RMSNorm inside the GEMV after it, the QKV split and RoPE
 * inside the QKV GEMV and SwiGLU inside the gate|up GEMV (fused_gemv; norm_qkv_rope and
 * norm_gemm_swiglu below); larger steps, and f32 weights, always take the separate kernels and
 * cuBLAS.
 *
 * Speed work left: the same fusion for cuBLAS-sized steps (RMSNorm into the f16 conversion), the
 * QKV split and RoPE into the attention kernels; a persistent decode kernel; overlap of the
 * logits copy with the next step.
 */
#include "pd_llama_cuda.h"

#include <cuda_runtime_api.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_cuda_attention.h"
#include "pd_cuda_batch.h"
#include "pd_cuda_launch.h"
#include "pd_cuda_ops.h"
#include "pd_cuda_err.h"
#include "pd_err.h"

#define CTX_BUCKET_MIN 256 /* decode max_ctx buckets: powers of two from here */
#define SHARED_BUCKET  16  /* decode shared_blocks above this round down to a multiple of it */

/* ---- errors and allocation ---------------------------------------------------------------- */

static int dev_alloc(void **p, size_t bytes, const char *what, char *err, size_t errlen) {
  *p = NULL;
  cudaError_t e = cudaMalloc(p, bytes ? bytes : 1);
  if (e == cudaSuccess) return PD_OK;
  *p = NULL;
  cudaGetLastError();
  return pd_errf(err, errlen, pd_cuda_rc(e),
                 "cuda: cannot allocate %zu bytes of device memory for %s: %s", bytes, what,
                 cudaGetErrorString(e));
}

static int host_alloc(void **p, size_t bytes, const char *what, char *err, size_t errlen) {
  *p = NULL;
  cudaError_t e = cudaHostAlloc(p, bytes ? bytes : 1, cudaHostAllocDefault);
  if (e == cudaSuccess) return PD_OK;
  *p = NULL;
  cudaGetLastError();
  return pd_errf(err, errlen, pd_cuda_rc(e),
                 "cuda: cannot allocate %zu bytes of pinned host memory for %s: %s", bytes, what,
                 cudaGetErrorString(e));
}

static void dev_free(void *p) {
  if (p) cudaFree(p);
}

/* ---- graphs --------------------------------------------------------------------------------- */

static void graph_destroy(pd_llama_cuda_graph *g) {
  if (g->exec) cudaGraphExecDestroy((cudaGraphExec_t)g->exec);
  memset(g, 0, sizeof *g);
}

void pd_llama_cuda_drop_graphs(pd_llama_cuda *c) {
  for (int i = 0; i < PD_LLAMA_CUDA_MAX_GRAPHS; i++) graph_destroy(&c->graphs[i]);
}

/* The entry for this shape, or NULL. */
static pd_llama_cuda_graph *graph_find(pd_llama_cuda *c, const pd_llama_cuda_graph *key) {
  for (int i = 0; i < PD_LLAMA_CUDA_MAX_GRAPHS; i++) {
    pd_llama_cuda_graph *g = &c->graphs[i];
    if (g->last_use && g->pool == key->pool && g->n_seqs == key->n_seqs &&
        g->max_blocks == key->max_blocks && g->shared_blocks == key->shared_blocks &&
        g->n_want == key->n_want && g->greedy == key->greedy && g->fused == key->fused &&
        g->pdl == key->pdl && g->cluster == key->cluster && g->lean == key->lean)
      return g;
  }
  return NULL;
}

/* A free entry, or the least recently used one, emptied. */
static pd_llama_cuda_graph *graph_slot(pd_llama_cuda *c) {
  pd_llama_cuda_graph *lru = &c->graphs[0];
  for (int i = 0; i < PD_LLAMA_CUDA_MAX_GRAPHS; i++) {
    if (!c->graphs[i].last_use) return &c->graphs[i];
    if (c->graphs[i].last_use < lru->last_use) lru = &c->graphs[i];
  }
  graph_destroy(lru);
  return lru;
}

/* ---- sizes that may grow -------------------------------------------------------------------- */

static size_t stage_elems(const pd_llama_cuda *c, int cap_blocks) {
  return 4 * (size_t)c->max_seqs + 3 * (size_t)c->max_tokens +
         (size_t)c->max_seqs * (size_t)cap_blocks;
}

/* A batch description with bounds only (no arrays), for sizing. */
static pd_cuda_batch bounds(int n_seqs, int n_rows, int max_blocks, int max_new, int max_ctx,
                            int shared_blocks) {
  return (pd_cuda_batch){.n_seqs = n_seqs,
                         .n_rows = n_rows,
                         .max_blocks = max_blocks,
                         .max_new = max_new,
                         .max_ctx = max_ctx,
                         .shared_blocks = shared_blocks};
}

/* A first guess at pd_cuda_attn's workspace for any batch within the capacities: the largest
 * of a few extreme shapes. (Each call still checks its own batch and grows the workspace.) */
static size_t attn_ws_guess(const pd_llama_cuda *c, int cap_blocks) {
  const int B = c->kv.block_tokens, H = c->model->n_heads, MT = c->max_tokens;
  int64_t ctx64 = (int64_t)cap_blocks * B;
  const int ctx = ctx64 > INT32_MAX ? INT32_MAX : (int)ctx64;
  const int ns = c->max_seqs < MT ? c->max_seqs : MT;
  /* one long prefill; a long prefill beside ns - 1 decode steps; ns equal chunks; ns decode
   * steps; the same sharing all but one block */
  const pd_cuda_batch v[5] = {
      bounds(1, MT, cap_blocks, MT, ctx, 0),
      bounds(ns, MT, cap_blocks, MT - ns + 1, ctx, 0),
      bounds(ns, ns * (MT / ns), cap_blocks, MT / ns, ctx, 0),
      bounds(ns, ns, cap_blocks, 1, ctx, 0),
      bounds(ns, ns, cap_blocks, 1, ctx, cap_blocks - 1),
  };
  size_t best = 0;
  for (int i = 0; i < 5; i++) {
    if (v[i].max_new < 1 || v[i].max_new > v[i].max_ctx) continue;
    size_t b = pd_cuda_attn_batch_workspace_bytes(&c->kv, H, &v[i]);
    if (b > best) best = b;
  }
  return best;
}

/* Makes the staging buffers hold block tables of stride cap_blocks (reallocating, after a
 * synchronisation, if they are smaller) and the workspace at least ws_bytes. */
static int ensure_room(pd_llama_cuda *c, int cap_blocks, size_t ws_bytes) {
  int grow_stage = cap_blocks > c->cap_blocks, grow_ws = ws_bytes > c->attn_ws_bytes;
  if (!grow_stage && !grow_ws) return PD_OK;
  if (c->stream) {
    cudaError_t e = cudaStreamSynchronize((cudaStream_t)c->stream);
    if (e != cudaSuccess) return pd_cuda_fail(e, c->err, sizeof c->err, "synchronising to regrow");
  }
  pd_llama_cuda_drop_graphs(c);
  int rc;
  if (grow_stage) {
    if (c->cap_blocks && cap_blocks < 2 * c->cap_blocks && c->cap_blocks <= INT_MAX / 2)
      cap_blocks = 2 * c->cap_blocks;
    if (c->stage_host) cudaFreeHost(c->stage_host);
    dev_free(c->stage_dev);
    c->stage_host = NULL, c->stage_dev = NULL, c->cap_blocks = 0;
    size_t bytes = stage_elems(c, cap_blocks) * sizeof(int32_t);
    if ((rc = host_alloc((void **)&c->stage_host, bytes, "the batch staging buffer", c->err,
                         sizeof c->err)) ||
        (rc = dev_alloc((void **)&c->stage_dev, bytes, "the batch arrays", c->err, sizeof c->err)))
      return rc;
    c->cap_blocks = cap_blocks;
    size_t guess = attn_ws_guess(c, cap_blocks);
    if (guess > ws_bytes) ws_bytes = guess;
    grow_ws = ws_bytes > c->attn_ws_bytes;
  }
  if (grow_ws) {
    dev_free(c->attn_ws);
    c->attn_ws = NULL, c->attn_ws_bytes = 0;
    if ((rc = dev_alloc(&c->attn_ws, ws_bytes, "the attention workspace", c->err, sizeof c->err)))
      return rc;
    c->attn_ws_bytes = ws_bytes;
  }
  return PD_OK;
}

/* ---- init / free ---------------------------------------------------------------------------- */

void pd_llama_cuda_free(pd_llama_cuda *c) {
  if (c->stream) cudaStreamSynchronize((cudaStream_t)c->stream);
  pd_llama_cuda_drop_graphs(c);
  if (c->layers) {
    for (int l = 0; l < c->model->n_layers; l++) {
      pd_llama_cuda_layer *L = &c->layers[l];
      dev_free(L->attn_norm), dev_free(L->ffn_norm), dev_free(L->bqkv);
      pd_cuda_weight_free(&L->wqkv), pd_cuda_weight_free(&L->wo);
      pd_cuda_weight_free(&L->w_gu), pd_cuda_weight_free(&L->w_down);
    }
    free(c->layers);
  }
  dev_free(c->out_norm), dev_free(c->rope_freqs);
  if (!c->output_is_embd) pd_cuda_weight_free(&c->output);
  pd_cuda_weight_free(&c->embd);
  dev_free(c->x), dev_free(c->xn), dev_free(c->qkv), dev_free(c->q), dev_free(c->k);
  dev_free(c->v), dev_free(c->att), dev_free(c->gu), dev_free(c->ffn), dev_free(c->last);
  dev_free(c->logits), dev_free(c->ids), dev_free(c->attn_ws), dev_free(c->stage_dev);
  if (c->stage_host) cudaFreeHost(c->stage_host);
  if (c->ids_host) cudaFreeHost(c->ids_host);
  pd_cuda_gemm_free(&c->gemm);
  if (c->stream) cudaStreamDestroy((cudaStream_t)c->stream);
  memset(c, 0, sizeof *c);
}

/* A device copy of an f32 vector of n elements from the model (NULL data: *out = NULL). */
static int upload_vec(float **out, const pd_weight *w, int64_t n, const char *what, char *err,
                      size_t errlen) {
  *out = NULL;
  if (!w->data) return PD_OK;
  if (w->type != PD_GGML_F32 || w->in_dim != n)
    return pd_errf(err, errlen, PD_EINVAL, "cuda model: %s is not an f32 vector of %lld", what,
                   (long long)n);
  int rc = dev_alloc((void **)out, (size_t)n * sizeof(float), what, err, errlen);
  if (rc) return rc;
  cudaError_t e = cudaMemcpy(*out, w->data, (size_t)n * sizeof(float), cudaMemcpyHostToDevice);
  return e == cudaSuccess ? PD_OK : pd_cuda_fail(e, err, errlen, "uploading a vector");
}

/* Stacks the model weights ws[0..n) (same in_dim) into one device weight. */
static int upload_stacked(pd_cuda_weight *dst, const pd_weight *const *ws, int n, int64_t in_dim,
                          enum pd_dtype dt, const char *name, char *err, size_t errlen) {
  int64_t rows = 0;
  for (int i = 0; i < n; i++) {
    if (ws[i]->in_dim != in_dim || ws[i]->out_dim <= 0)
      return pd_errf(err, errlen, PD_EINVAL, "cuda model: %s part %d has in_dim %lld, not %lld",
                     name, i, (long long)ws[i]->in_dim, (long long)in_dim);
    rows += ws[i]->out_dim;
  }
  int rc = pd_cuda_weight_alloc(dst, in_dim, rows, dt, name, err, errlen);
  int64_t row = 0;
  for (int i = 0; i < n && !rc; row += ws[i]->out_dim, i++)
    rc = pd_cuda_weight_upload(dst, row, ws[i]->data, ws[i]->type, ws[i]->out_dim, err, errlen);
  return rc;
}

static int upload_weights(pd_llama_cuda *c, char *err, size_t errlen) {
  const pd_model *m = c->model;
  const int64_t d = m->d_model, qd = (int64_t)m->n_heads * m->head_dim;
  const int64_t kvd = (int64_t)m->n_kv_heads * m->head_dim, f = m->ffn_dim;
  const enum pd_dtype dt = c->mode == PD_CUDA_WEIGHTS_F16 ? PD_DTYPE_F16 : PD_DTYPE_F32;
  c->layers = calloc((size_t)m->n_layers, sizeof *c->layers);
  if (!c->layers) return pd_errf(err, errlen, PD_ENOMEM, "cuda model: out of host memory");
  int rc = PD_OK;
  char name[64];
  for (int l = 0; l < m->n_layers && !rc; l++) {
    const pd_layer_weights *W = &m->layers[l];
    pd_llama_cuda_layer *L = &c->layers[l];
    snprintf(name, sizeof name, "blk.%d.attn_norm", l);
    if ((rc = upload_vec(&L->attn_norm, &W->attn_norm, d, name, err, errlen))) break;
    snprintf(name, sizeof name, "blk.%d.ffn_norm", l);
    if ((rc = upload_vec(&L->ffn_norm, &W->ffn_norm, d, name, err, errlen))) break;
    if (!L->attn_norm || !L->ffn_norm) {
      rc = pd_errf(err, errlen, PD_EINVAL, "cuda model: layer %d lacks a norm", l);
      break;
    }
    if (W->bq.data || W->bk.data || W->bv.data) { /* qwen2: all three (pd_model checks) */
      if (!W->bq.data || !W->bk.data || !W->bv.data) {
        rc = pd_errf(err, errlen, PD_EINVAL, "cuda model: layer %d has only some q/k/v biases", l);
        break;
      }
      float *parts[3] = {NULL, NULL, NULL};
      snprintf(name, sizeof name, "blk.%d.attn_qkv.bias", l);
      if ((rc = dev_alloc((void **)&L->bqkv, (size_t)(qd + 2 * kvd) * sizeof(float), name, err,
                          errlen)))
        break;
      parts[0] = L->bqkv, parts[1] = L->bqkv + qd, parts[2] = L->bqkv + qd + kvd;
      const pd_weight *bw[3] = {&W->bq, &W->bk, &W->bv};
      const int64_t bn[3] = {qd, kvd, kvd};
      for (int i = 0; i < 3 && !rc; i++) {
        if (bw[i]->type != PD_GGML_F32 || bw[i]->in_dim != bn[i]) {
          rc = pd_errf(err, errlen, PD_EINVAL, "cuda model: layer %d bias %d is not f32 of %lld", l,
                       i, (long long)bn[i]);
          break;
        }
        cudaError_t e = cudaMemcpy(parts[i], bw[i]->data, (size_t)bn[i] * sizeof(float),
                                   cudaMemcpyHostToDevice);
        if (e != cudaSuccess) rc = pd_cuda_fail(e, err, errlen, "uploading a bias");
      }
      if (rc) break;
    }
    const pd_weight *qkv[3] = {&W->wq, &W->wk, &W->wv};
    const pd_weight *gu[2] = {&W->w_gate, &W->w_up};
    const pd_weight *wo[1] = {&W->wo}, *wd[1] = {&W->w_down};
    if (W->wq.out_dim != qd || W->wk.out_dim != kvd || W->wv.out_dim != kvd || W->wo.out_dim != d ||
        W->w_gate.out_dim != f || W->w_up.out_dim != f || W->w_down.out_dim != d) {
      rc = pd_errf(err, errlen, PD_EINVAL, "cuda model: layer %d has unexpected weight shapes", l);
      break;
    }
    snprintf(name, sizeof name, "blk.%d.attn_qkv", l);
    if ((rc = upload_stacked(&L->wqkv, qkv, 3, d, dt, name, err, errlen))) break;
    snprintf(name, sizeof name, "blk.%d.attn_output", l);
    if ((rc = upload_stacked(&L->wo, wo, 1, qd, dt, name, err, errlen))) break;
    snprintf(name, sizeof name, "blk.%d.ffn_gate_up", l);
    if ((rc = upload_stacked(&L->w_gu, gu, 2, d, dt, name, err, errlen))) break;
    snprintf(name, sizeof name, "blk.%d.ffn_down", l);
    if ((rc = upload_stacked(&L->w_down, wd, 1, f, dt, name, err, errlen))) break;
  }
  if (rc) return rc;
  if ((rc = upload_vec(&c->out_norm, &m->out_norm, d, "output_norm", err, errlen))) return rc;
  if (!c->out_norm) return pd_errf(err, errlen, PD_EINVAL, "cuda model: output_norm is missing");
  const pd_weight *emb[1] = {&m->tok_embd}, *out[1] = {&m->output};
  if ((rc = upload_stacked(&c->embd, emb, 1, d, dt, "token_embd", err, errlen))) return rc;
  if (m->tied_output || m->output.data == m->tok_embd.data) {
    c->output = c->embd;
    c->output_is_embd = 1;
    return PD_OK;
  }
  return upload_stacked(&c->output, out, 1, d, dt, "output", err, errlen);
}

int pd_llama_cuda_init(pd_llama_cuda *c, const pd_model *m, int block_tokens,
                       enum pd_dtype cache_dtype, enum pd_cuda_weight_mode mode, int max_tokens,
                       int max_seqs, char *err, size_t errlen) {
  memset(c, 0, sizeof *c);
  if (!m || max_tokens <= 0 || max_seqs <= 0 || max_seqs > 65535 || block_tokens <= 0 ||
      (block_tokens & (block_tokens - 1)) ||
      (mode != PD_CUDA_WEIGHTS_F32 && mode != PD_CUDA_WEIGHTS_F16))
    return pd_errf(err, errlen, PD_EINVAL,
                   "cuda model: bad arguments (max_tokens %d, max_seqs %d (1..65535), block_tokens "
                   "%d (a power of two), mode %d)",
                   max_tokens, max_seqs, block_tokens, (int)mode);
  if (cache_dtype != PD_DTYPE_F32 && cache_dtype != PD_DTYPE_F16 && cache_dtype != PD_DTYPE_BF16 &&
      cache_dtype != PD_DTYPE_FP8_E4M3)
    return pd_errf(err, errlen, PD_EINVAL,
                   "cuda model: KV cache dtype %s unsupported (f32, f16, bf16, fp8-e4m3)",
                   pd_dtype_name(cache_dtype));
  if (m->head_dim != 64 && m->head_dim != 128)
    return pd_errf(err, errlen, PD_EINVAL,
                   "cuda model: head_dim %d unsupported (the CUDA attention has 64 and 128)",
                   m->head_dim);
  pd_kv_layout kv = {m->n_layers, m->n_kv_heads, m->head_dim, block_tokens, cache_dtype};
  if (pd_kv_block_bytes(&kv) % 16)
    return pd_errf(
        err, errlen, PD_EINVAL,
        "cuda model: a KV block of %zu bytes is not a multiple of 16 (the attention reads "
        "16-byte pieces): use more block tokens",
        pd_kv_block_bytes(&kv));
  if (m->n_kv_heads <= 0 || m->n_heads % m->n_kv_heads || m->rot_dim % 2 ||
      m->rot_dim > m->head_dim)
    return pd_errf(err, errlen, PD_EINVAL, "cuda model: inconsistent heads or rope dims");
  if (pd_cuda_device_count() == 0)
    return pd_errf(err, errlen, PD_EDEVICE, "cuda model: no CUDA device");
  c->model = m;
  c->kv = (pd_kv_layout){m->n_layers, m->n_kv_heads, m->head_dim, block_tokens, cache_dtype};
  c->mode = mode;
  c->act = mode == PD_CUDA_WEIGHTS_F16 ? PD_DTYPE_F16 : PD_DTYPE_F32;
  c->max_tokens = max_tokens;
  c->max_seqs = max_seqs;
  c->use_graphs = 1;
  c->fused_gemv = pd_cuda_env_flag("PD_CUDA_FUSED_GEMV");
  int rc;
  cudaError_t e = cudaGetDevice(&c->device);
  cudaStream_t st = NULL;
  if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
  if (e != cudaSuccess) {
    rc = pd_cuda_fail(e, err, errlen, "creating the stream");
    memset(c, 0, sizeof *c);
    return rc;
  }
  c->stream = st;

  /* scratch first, so that an impossible max_tokens fails before the weights' upload */
  const size_t R = (size_t)max_tokens, S = (size_t)max_seqs, d = (size_t)m->d_model;
  const size_t qd = (size_t)m->n_heads * m->head_dim, kvd = (size_t)m->n_kv_heads * m->head_dim;
  const size_t f = (size_t)m->ffn_dim, V = (size_t)m->n_vocab, as = pd_dtype_size(c->act);
  struct {
    void **p;
    size_t bytes;
    const char *what;
  } bufs[] = {
      {(void **)&c->x, R * d * 4, "the residual stream (max_tokens, d_model) f32"},
      {&c->xn, R * d * as, "the normed rows (max_tokens, d_model)"},
      {(void **)&c->qkv, R * (qd + 2 * kvd) * 4, "the QKV projection (max_tokens, q+k+v) f32"},
      {(void **)&c->q, R * qd * 4, "the queries (max_tokens, n_heads * head_dim) f32"},
      {(void **)&c->k, R * kvd * 4, "the keys (max_tokens, n_kv_heads * head_dim) f32"},
      {(void **)&c->v, R * kvd * 4, "the values (max_tokens, n_kv_heads * head_dim) f32"},
      {(void **)&c->att, R * qd * 4, "the attention output (max_tokens, n_heads * head_dim) f32"},
      {(void **)&c->gu, R * 2 * f * 4, "the gate|up projection (max_tokens, 2 ffn_dim) f32"},
      {&c->ffn, R * f * as, "the SwiGLU output (max_tokens, ffn_dim)"},
      {&c->last, S * d * as, "the final rows (max_seqs, d_model)"},
      {(void **)&c->logits, S * V * 4, "the logits (max_seqs, n_vocab) f32"},
      {(void **)&c->ids, S * 4, "the sampled ids (max_seqs) int32"},
  };
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
    if ((rc = dev_alloc(bufs[i].p, bufs[i].bytes, bufs[i].what, err, errlen))) goto fail;
  if ((rc = host_alloc((void **)&c->ids_host, S * 4, "the sampled ids", err, errlen))) goto fail;
  {
    size_t widest = d > qd ? d : qd;
    if (f > widest) widest = f;
    int64_t x16 = c->act == PD_DTYPE_F16 ? (int64_t)(R * widest) : 0;
    if ((rc = pd_cuda_gemm_init(&c->gemm, c->stream, x16, err, errlen))) goto fail;
  }
  {
    /* block tables sized for the training context (rounded to the decode bucket); longer
     * sequences regrow it */
    int64_t ctx = CTX_BUCKET_MIN;
    while (ctx < m->n_ctx_train || ctx < block_tokens) ctx *= 2;
    if ((rc = ensure_room(c, (int)(ctx / block_tokens), 0))) {
      snprintf(err, errlen, "%s", c->err);
      goto fail;
    }
  }
  {
    /* RoPE frequencies from the C library's powf, the expression of pd_rope (pd_ops.c), divided
     * by the model's frequency factors as pd_rope divides them, so the GPU's angles are the
     * CPU's bit for bit */
    int half = m->rot_dim / 2;
    float freqs[4096];
    if (half > 4096) {
      rc = pd_errf(err, errlen, PD_EINVAL, "cuda model: rot_dim %d too large", m->rot_dim);
      goto fail;
    }
    for (int i = 0; i < half; i++) {
      freqs[i] = powf(m->rope_theta, -2.0f * (float)i / (float)m->rot_dim);
      if (m->rope_freqs) freqs[i] /= m->rope_freqs[i];
    }
    if ((rc = dev_alloc((void **)&c->rope_freqs, (size_t)(half ? half : 1) * sizeof(float),
                        "the RoPE frequencies", err, errlen)))
      goto fail;
    if (half && (e = cudaMemcpy(c->rope_freqs, freqs, (size_t)half * sizeof(float),
                                cudaMemcpyHostToDevice)) != cudaSuccess) {
      rc = pd_cuda_fail(e, err, errlen, "uploading the RoPE frequencies");
      goto fail;
    }
  }
  if ((rc = upload_weights(c, err, errlen))) goto fail;
  /* the uploads above ran on the legacy default stream, which the forward stream (non-blocking)
   * does not wait for: finished here, before the first forward pass reads them */
  if ((e = cudaDeviceSynchronize()) != cudaSuccess) {
    rc = pd_cuda_fail(e, err, errlen, "uploading the model");
    goto fail;
  }
  return PD_OK;
fail:
  pd_llama_cuda_free(c);
  return rc;
}

/* ---- pools ---------------------------------------------------------------------------------- */

int pd_llama_cuda_host_alloc(size_t bytes, void **p, char *err, size_t errlen) {
  return host_alloc(p, bytes, "the logits", err, errlen);
}

void pd_llama_cuda_host_free(void *p) {
  if (p) cudaFreeHost(p);
}

int pd_llama_cuda_pool_alloc(const pd_llama_cuda *c, int64_t n_blocks, void **pool, char *err,
                             size_t errlen) {
  *pool = NULL;
  size_t bb = pd_kv_block_bytes(&c->kv);
  if (n_blocks <= 0 || !bb || (uint64_t)n_blocks > SIZE_MAX / bb)
    return pd_errf(err, errlen, PD_EINVAL, "cuda pool: %lld blocks of %zu bytes",
                   (long long)n_blocks, bb);
  cudaError_t e = cudaSetDevice(c->device);
  if (e != cudaSuccess) return pd_cuda_fail(e, err, errlen, "cudaSetDevice");
  char what[96];
  snprintf(what, sizeof what, "a KV pool of %lld blocks", (long long)n_blocks);
  int rc = dev_alloc(pool, (size_t)n_blocks * bb, what, err, errlen);
  if (rc) return rc;
  e = cudaMemsetAsync(*pool, 0, (size_t)n_blocks * bb, (cudaStream_t)c->stream);
  if (e == cudaSuccess) e = cudaStreamSynchronize((cudaStream_t)c->stream);
  if (e != cudaSuccess) {
    cudaFree(*pool);
    *pool = NULL;
    return pd_cuda_fail(e, err, errlen, "zeroing the KV pool");
  }
  return PD_OK;
}

void pd_llama_cuda_pool_free(void *pool) {
  if (pool) cudaFree(pool);
}

/* ---- the step ------------------------------------------------------------------------------- */

/* Where the batch arrays sit in the staging buffer (int32 elements). */
typedef struct stage_off {
  size_t n_past, n_new, row_start, want, tok, pos, row_seq, tables, total;
} stage_off;

static stage_off stage_layout(int n, int R, int T) {
  stage_off o;
  o.n_past = 0, o.n_new = (size_t)n, o.row_start = 2 * (size_t)n, o.want = 3 * (size_t)n;
  o.tok = 4 * (size_t)n, o.pos = o.tok + (size_t)R, o.row_seq = o.pos + (size_t)R;
  o.tables = o.row_seq + (size_t)R, o.total = o.tables + (size_t)n * (size_t)T;
  return o;
}

/* Whether the RMSNorm before w (and what follows it) run inside one GEMV launch this step:
 * asked for, a decode-sized step on f16 weights, and the normed rows fit in shared memory. */
static int fuse_norm(const pd_llama_cuda *c, const pd_cuda_weight *w, int rows) {
  return c->fused_gemv && w->dtype == PD_DTYPE_F16 && !((uintptr_t)w->data & 15) &&
         pd_cuda_norm_gemv_ok(rows, w->in_dim, c->act);
}

/* y (R, w->out_dim) f32 = (rmsnorm(x) * norm_w) . W^T: one launch when fuse_norm allows it,
 * else the RMSNorm into c->xn and the GEMM; the same bits either way for a GEMV-sized step. */
static int norm_gemm(pd_llama_cuda *c, const pd_cuda_weight *w, const float *norm_w, int R,
                     float *y) {
  const float eps = c->model->rms_eps;
  char *err = c->err;
  const size_t el = sizeof c->err;
  if (fuse_norm(c, w, R)) {
    c->n_fused_gemv++;
    return pd_cuda_norm_gemv_f16(w->data, c->x, NULL, norm_w, eps, c->act, 0, y, R, w->in_dim,
                                 w->out_dim, c->stream, err, el);
  }
  int rc =
      pd_cuda_rmsnorm(c->xn, c->act, c->x, NULL, norm_w, R, w->in_dim, eps, c->stream, err, el);
  return rc ? rc : pd_cuda_gemm_run(&c->gemm, w, c->xn, c->act, y, R, 0.0f, err, el);
}

/* q, k, v = split(rmsnorm(x) * attn_norm . Wqkv^T + bias), RoPE on q and k at pos: one launch
 * when fuse_norm allows it, else the RMSNorm, the GEMM into c->qkv and the split/RoPE kernel. */
static int norm_qkv_rope(pd_llama_cuda *c, const pd_llama_cuda_layer *L, int R,
                         const int32_t *pos) {
  const pd_model *m = c->model;
  char *err = c->err;
  const size_t el = sizeof c->err;
  if (fuse_norm(c, &L->wqkv, R)) {
    c->n_fused_gemv++;
    return pd_cuda_norm_gemv_qkv_rope_f16(
        L->wqkv.data, c->x, L->attn_norm, m->rms_eps, c->act, c->q, c->k, c->v, L->bqkv, R,
        L->wqkv.in_dim, m->n_heads, m->n_kv_heads, m->head_dim, m->rot_dim, pos, c->rope_freqs,
        m->rope_theta, m->rope_neox, c->stream, err, el);
  }
  int rc = norm_gemm(c, &L->wqkv, L->attn_norm, R, c->qkv);
  return rc ? rc
            : pd_cuda_qkv_rope(c->q, c->k, c->v, c->qkv, L->bqkv, R, m->n_heads, m->n_kv_heads,
                               m->head_dim, m->rot_dim, pos, c->rope_freqs, m->rope_theta,
                               m->rope_neox, c->stream, err, el);
}

/* ffn (R, f) act = silu(gate) * up, where [gate | up] = (rmsnorm(x) * norm_w) . Wgu^T; one launch
 * when fuse_norm allows it, else the RMSNorm, the GEMM into c->gu and the SwiGLU. */
static int norm_gemm_swiglu(pd_llama_cuda *c, const pd_cuda_weight *w_gu, const float *norm_w,
                            int R) {
  const int64_t f = w_gu->out_dim / 2;
  char *err = c->err;
  const size_t el = sizeof c->err;
  if (fuse_norm(c, w_gu, R)) {
    c->n_fused_gemv++;
    return pd_cuda_norm_gemv_f16(w_gu->data, c->x, NULL, norm_w, c->model->rms_eps, c->act, 1,
                                 c->ffn, R, w_gu->in_dim, f, c->stream, err, el);
  }
  int rc = norm_gemm(c, w_gu, norm_w, R, c->gu);
  return rc ? rc
            : pd_cuda_swiglu(c->ffn, c->act, c->gu, c->gu + f, R, f, 2 * f, c->stream, err, el);
}

/*
 * Enqueues one step on c->stream, from the staging copy to the sampled ids (capturable: only
 * asynchronous calls on the one stream). b: the batch (device arrays inside stage_dev).
 */
static int enqueue_step(pd_llama_cuda *c, void *pool, const pd_cuda_batch *b, const stage_off *o,
                        int n_want, int greedy) {
  const pd_model *m = c->model;
  const int R = b->n_rows, d = m->d_model, H = m->n_heads;
  const int hd = m->head_dim, V = m->n_vocab;
  const float scale = 1.0f / sqrtf((float)hd);
  void *s = c->stream;
  char *err = c->err;
  const size_t el = sizeof c->err;
  const int32_t *tok = c->stage_dev + o->tok, *pos = c->stage_dev + o->pos;
  const int32_t *want = c->stage_dev + o->want;
  cudaError_t e = cudaMemcpyAsync(c->stage_dev, c->stage_host, o->total * sizeof(int32_t),
                                  cudaMemcpyHostToDevice, (cudaStream_t)s);
  if (e != cudaSuccess) return pd_cuda_fail(e, err, el, "copying the batch to the device");
  int rc = pd_cuda_embed(c->x, c->embd.data, c->embd.dtype, tok, R, d, V, s, err, el);
  for (int l = 0; l < m->n_layers && !rc; l++) {
    const pd_llama_cuda_layer *L = &c->layers[l];
    if ((rc = norm_qkv_rope(c, L, R, pos)) ||
        (rc = pd_cuda_kv_store(&c->kv, pool, l, b, c->k, c->v, s, err, el)) ||
        (rc = pd_cuda_attn(&c->kv, pool, l, H, c->q, c->att, b, scale, c->attn_ws, c->attn_ws_bytes,
                           s, err, el)) ||
        /* x += att . Wo^T */
        (rc = pd_cuda_gemm_run(&c->gemm, &L->wo, c->att, PD_DTYPE_F32, c->x, R, 1.0f, err, el)) ||
        (rc = norm_gemm_swiglu(c, &L->w_gu, L->ffn_norm, R)) ||
        /* x += ffn . Wdown^T */
        (rc = pd_cuda_gemm_run(&c->gemm, &L->w_down, c->ffn, c->act, c->x, R, 1.0f, err, el)))
      break;
  }
  if (rc || !n_want) return rc;
  if ((rc = pd_cuda_rmsnorm(c->last, c->act, c->x, want, c->out_norm, n_want, d, m->rms_eps, s, err,
                            el)) ||
      (rc = pd_cuda_gemm_run(&c->gemm, &c->output, c->last, c->act, c->logits, n_want, 0.0f, err,
                             el)))
    return rc;
  if (!greedy) return PD_OK;
  if ((rc = pd_cuda_argmax(c->ids, c->logits, n_want, V, s, err, el))) return rc;
  e = cudaMemcpyAsync(c->ids_host, c->ids, (size_t)n_want * sizeof(int32_t), cudaMemcpyDeviceToHost,
                      (cudaStream_t)s);
  return e == cudaSuccess ? PD_OK : pd_cuda_fail(e, err, el, "copying the sampled ids");
}

/* Captures enqueue_step into an executable graph. Returns 0 with *exec set; PD_EDEVICE when the
 * capture itself failed (the context then turns graphs off); or enqueue_step's error. */
static int capture_step(pd_llama_cuda *c, void *pool, const pd_cuda_batch *b, const stage_off *o,
                        int n_want, int greedy, cudaGraphExec_t *exec) {
  cudaStream_t s = (cudaStream_t)c->stream;
  *exec = NULL;
  cudaError_t e = cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
  if (e != cudaSuccess) return pd_cuda_fail(e, c->err, sizeof c->err, "cudaStreamBeginCapture");
  int rc = enqueue_step(c, pool, b, o, n_want, greedy);
  cudaGraph_t g = NULL;
  cudaError_t e_end = cudaStreamEndCapture(s, &g);
  if (!rc && e_end == cudaSuccess) {
    e = cudaGraphInstantiate(exec, g, 0);
    cudaGraphDestroy(g);
    if (e == cudaSuccess) return PD_OK;
    *exec = NULL;
    return pd_cuda_fail(e, c->err, sizeof c->err, "cudaGraphInstantiate");
  }
  if (g) cudaGraphDestroy(g);
  if (e_end != cudaSuccess) {
    /* the capture was invalidated: keep the first message (the callee that broke it) */
    if (!rc) pd_cuda_fail(e_end, c->err, sizeof c->err, "cudaStreamEndCapture");
    cudaGetLastError();
    return PD_EDEVICE;
  }
  return rc; /* a real error of a callee, which the eager run will report again */
}

static int forward(pd_llama_cuda *c, void *pool, const pd_llama_seq *seqs, int n_seqs,
                   float *logits, int32_t *tokens) {
  c->err[0] = 0;
  if (!c->model || !c->stream) return pd_errf(c->err, sizeof c->err, PD_EINVAL, "not initialised");
  const pd_model *m = c->model;
  const int B = c->kv.block_tokens, V = m->n_vocab;
  if (!pool || !seqs || n_seqs <= 0 || n_seqs > c->max_seqs)
    return pd_errf(c->err, sizeof c->err, PD_EINVAL, "bad batch: %d sequences (1..%d), pool %p",
                   n_seqs, c->max_seqs, pool);
  /* validate, and find the bounds */
  int64_t R = 0, max_ctx = 0;
  int n_want = 0, max_new = 0, max_need = 0;
  for (int s = 0; s < n_seqs; s++) {
    const pd_llama_seq *sq = &seqs[s];
    if (sq->n_new <= 0 || sq->n_past < 0 || !sq->tokens || !sq->block_table ||
        R + sq->n_new > c->max_tokens || (int64_t)sq->n_past + sq->n_new > INT32_MAX / 2)
      return pd_errf(c->err, sizeof c->err, PD_EINVAL,
                     "seq %d: n_new %d, n_past %d, or the batch exceeds %d rows", s, sq->n_new,
                     sq->n_past, c->max_tokens);
    if (sq->want_logits < 0 || sq->want_logits > 1) /* speculation's verify rows: CPU only */
      return pd_errf(c->err, sizeof c->err, PD_EINVAL,
                     "seq %d: want_logits %d (the GPU returns the last row's logits only)", s,
                     sq->want_logits);
    int64_t end = (int64_t)sq->n_past + sq->n_new, need = (end + B - 1) / B;
    if (need > sq->n_blocks)
      return pd_errf(c->err, sizeof c->err, PD_EINVAL, "seq %d: %d blocks cannot hold %lld tokens",
                     s, sq->n_blocks, (long long)end);
    for (int i = 0; i < sq->n_new; i++)
      if (sq->tokens[i] < 0 || sq->tokens[i] >= V)
        return pd_errf(c->err, sizeof c->err, PD_EINVAL, "seq %d: token %d outside the vocabulary",
                       s, sq->tokens[i]);
    for (int64_t j = 0; j < need; j++)
      if (sq->block_table[j] < 0 || (c->pool_blocks > 0 && sq->block_table[j] >= c->pool_blocks))
        return pd_errf(c->err, sizeof c->err, PD_EINVAL, "seq %d: block id %d outside the pool", s,
                       sq->block_table[j]);
    R += sq->n_new;
    if (end > max_ctx) max_ctx = end;
    if (need > max_need) max_need = (int)need;
    if (sq->n_new > max_new) max_new = sq->n_new;
    n_want += sq->want_logits ? 1 : 0;
  }
  cudaError_t e = cudaSetDevice(c->device);
  if (e != cudaSuccess) return pd_cuda_fail(e, c->err, sizeof c->err, "cudaSetDevice");
  /* table stride T and the max_ctx bound: exact for prefill, bucketed for decode */
  const int decode = max_new == 1;
  int T = max_need, ctx_bound = (int)max_ctx;
  if (decode) {
    int64_t bucket = CTX_BUCKET_MIN;
    while (bucket < max_ctx || bucket < B) bucket *= 2;
    if (bucket <= (int64_t)1 << 30) T = (int)(bucket / B), ctx_bound = (int)bucket;
  }
  int rc = ensure_room(c, T, 0);
  if (rc) return rc;
  /* leading blocks shared by every sequence and below every n_past (decode batches of 2+) */
  int shared = 0;
  if (decode && n_seqs >= 2) {
    int lim = INT_MAX;
    for (int s = 0; s < n_seqs; s++)
      if (seqs[s].n_past / B < lim) lim = seqs[s].n_past / B;
    for (; shared < lim; shared++) {
      int same = 1;
      for (int s = 1; s < n_seqs && same; s++)
        same = seqs[s].block_table[shared] == seqs[0].block_table[shared];
      if (!same) break;
    }
    if (shared > SHARED_BUCKET) shared -= shared % SHARED_BUCKET;
  }
  c->last_shared_blocks = shared;
  /* the staging buffer */
  const stage_off o = stage_layout(n_seqs, (int)R, T);
  int32_t *h = c->stage_host;
  for (int s = 0, r = 0, w = 0; s < n_seqs; s++) {
    const pd_llama_seq *sq = &seqs[s];
    h[o.n_past + s] = sq->n_past;
    h[o.n_new + s] = sq->n_new;
    h[o.row_start + s] = r;
    for (int i = 0; i < sq->n_new; i++) {
      h[o.tok + r + i] = sq->tokens[i];
      h[o.pos + r + i] = sq->n_past + i;
      h[o.row_seq + r + i] = s;
    }
    int need = (sq->n_past + sq->n_new + B - 1) / B;
    int32_t *tab = h + o.tables + (size_t)s * T;
    for (int j = 0; j < T; j++) tab[j] = j < need ? sq->block_table[j] : 0; /* 0: padding */
    if (sq->want_logits) h[o.want + w++] = r + sq->n_new - 1;
    r += sq->n_new;
    if (s == n_seqs - 1)
      for (; w < n_seqs; w++) h[o.want + w] = 0; /* unused */
  }
  pd_cuda_batch b = {n_seqs,
                     (int32_t)R,
                     T,
                     max_new,
                     ctx_bound,
                     shared,
                     c->stage_dev + o.tables,
                     c->stage_dev + o.n_past,
                     c->stage_dev + o.n_new,
                     c->stage_dev + o.row_start,
                     c->stage_dev + o.row_seq};
  size_t ws = pd_cuda_attn_batch_workspace_bytes(&c->kv, m->n_heads, &b);
  if ((rc = ensure_room(c, T, ws))) return rc;
  const int greedy = tokens != NULL;
  cudaStream_t st = (cudaStream_t)c->stream;

  /* run: replay, capture, or eager */
  int done = 0;
  if (decode && c->use_graphs && !c->graphs_off) {
    pd_llama_cuda_graph key = {pool,
                               n_seqs,
                               T,
                               shared,
                               n_want,
                               greedy,
                               c->fused_gemv != 0,
                               pd_cuda_pdl(),
                               pd_cuda_attn_decode_cluster(),
                               pd_cuda_attn_decode_lean(),
                               NULL,
                               0};
    pd_llama_cuda_graph *g = graph_find(c, &key);
    c->clock++;
    if (!g) { /* first sight: remember the shape, run eagerly */
      g = graph_slot(c);
      *g = key;
      g->last_use = c->clock;
    } else {
      g->last_use = c->clock;
      if (!g->exec) {
        cudaGraphExec_t exec;
        rc = capture_step(c, pool, &b, &o, n_want, greedy, &exec);
        if (!rc) {
          g->exec = exec;
          c->n_captures++;
        } else if (rc == PD_EDEVICE) {
          snprintf(c->graph_err, sizeof c->graph_err, "%s", c->err);
          c->graphs_off = 1;
          pd_llama_cuda_drop_graphs(c);
          g = NULL;
        } else {
          g = NULL; /* the eager run below reports the callee's error */
        }
        rc = PD_OK;
        c->err[0] = 0;
      } else {
        c->n_replays++;
      }
      if (g && g->exec) {
        e = cudaGraphLaunch((cudaGraphExec_t)g->exec, st);
        if (e != cudaSuccess) return pd_cuda_fail(e, c->err, sizeof c->err, "cudaGraphLaunch");
        done = 1;
      }
    }
  }
  if (!done) {
    c->n_eager++;
    rc = enqueue_step(c, pool, &b, &o, n_want, greedy);
    if (rc) {
      cudaStreamSynchronize(st); /* let what was enqueued finish before the caller moves on */
      return rc;
    }
  }
  if (logits && n_want) {
    e = cudaMemcpyAsync(logits, c->logits, (size_t)n_want * (size_t)V * sizeof(float),
                        cudaMemcpyDeviceToHost, st);
    if (e != cudaSuccess) {
      cudaStreamSynchronize(st);
      return pd_cuda_fail(e, c->err, sizeof c->err, "copying the logits");
    }
  }
  e = cudaStreamSynchronize(st);
  if (e != cudaSuccess) return pd_cuda_fail(e, c->err, sizeof c->err, "running the step");
  if (greedy && n_want) memcpy(tokens, c->ids_host, (size_t)n_want * sizeof(int32_t));
  return PD_OK;
}

int pd_llama_cuda_forward(pd_llama_cuda *c, void *pool, const pd_llama_seq *seqs, int n_seqs,
                          float *logits) {
  return forward(c, pool, seqs, n_seqs, logits, NULL);
}

int pd_llama_cuda_forward_ex(pd_llama_cuda *c, void *pool, const pd_llama_seq *seqs, int n_seqs,
                             float *logits, int32_t *tokens) {
  return forward(c, pool, seqs, n_seqs, logits, tokens);
}
