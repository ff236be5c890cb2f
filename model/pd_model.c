/*
 * pd_model.c -- loading a Llama-family GGUF; see pd_model.h.
 *
 * The fingerprint that salts every prefix-cache key is XXH3-128 over every tensor's name, shape
 * and type, the first 64 bytes of its data, and the vocabulary: it changes with any change of
 * architecture, vocabulary, quantization, shape or weights that a different file would carry,
 * and costs no pass over the weights.
 */
#include "pd_model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include "pd_err.h"
#include "pd_quant.h"

static int get_hp(const pd_gguf *g, const char *arch, const char *name, uint32_t *out, int required,
                  char *err, size_t errlen) {
  char key[128];
  snprintf(key, sizeof key, "%s.%s", arch, name);
  int rc = pd_gguf_get_u32(g, key, out);
  if (rc == PD_ENOTFOUND && !required) return PD_OK;
  if (rc)
    return pd_errf(err, errlen, PD_ECORRUPT, "model: %s is %s", key,
                   rc == PD_ENOTFOUND ? "missing" : "not a count");
  return PD_OK;
}

static int want_tensor(const pd_gguf *g, const char *name, int64_t in_dim, int64_t out_dim,
                       int quantized_ok, int optional, pd_weight *w, char *err, size_t errlen) {
  const pd_gguf_tensor *t = pd_gguf_tensor_by_name(g, name);
  memset(w, 0, sizeof *w);
  if (!t)
    return optional ? PD_OK
                    : pd_errf(err, errlen, PD_ECORRUPT, "model: tensor %s is missing", name);
  uint64_t want1 = out_dim > 1 ? (uint64_t)out_dim : 1;
  if (t->ne[0] != (uint64_t)in_dim || t->ne[1] != want1 || t->ne[2] != 1 || t->ne[3] != 1)
    return pd_errf(err, errlen, PD_ECORRUPT,
                   "model: tensor %s has shape [%llu, %llu], expected [%lld, %lld]", name,
                   (unsigned long long)t->ne[0], (unsigned long long)t->ne[1], (long long)in_dim,
                   (long long)want1);
  if (!quantized_ok && t->type != PD_GGML_F32)
    return pd_errf(err, errlen, PD_EUNSUPPORTED, "model: tensor %s must be f32, not %s", name,
                   pd_ggml_type_name(t->type));
  w->data = t->data;
  w->type = t->type;
  w->in_dim = in_dim;
  w->out_dim = out_dim;
  return PD_OK;
}

void pd_model_free(pd_model *m) {
  if (!m) return;
  pd_gguf_close(m->gguf);
  free(m->layers);
  free(m);
}

int pd_model_load(const char *path, pd_model **out, char *err, size_t errlen) {
  *out = NULL;
  pd_model *m = calloc(1, sizeof *m);
  if (!m) return pd_errf(err, errlen, PD_ENOMEM, "model: out of memory");
  int rc = pd_gguf_open(path, &m->gguf, err, errlen);
  if (rc) {
    free(m);
    return rc;
  }
  const pd_gguf *g = m->gguf;
  pd_str arch;
  if ((rc = pd_gguf_get_str(g, "general.architecture", &arch))) {
    rc = pd_errf(err, errlen, PD_ECORRUPT, "model: general.architecture is missing");
    goto fail;
  }
  if (arch.len >= sizeof m->arch) arch.len = sizeof m->arch - 1;
  memcpy(m->arch, arch.ptr, arch.len);
  int is_qwen2 = !strcmp(m->arch, "qwen2");
  if (strcmp(m->arch, "llama") && strcmp(m->arch, "mistral") && !is_qwen2) {
    rc = pd_errf(err, errlen, PD_EUNSUPPORTED,
                 "model: architecture '%s' is not supported (llama, mistral and qwen2 are)",
                 m->arch);
    goto fail;
  }
  uint32_t n_layers, d, n_heads, n_kv = 0, ffn, ctx = 0, rot = 0;
  if ((rc = get_hp(g, m->arch, "block_count", &n_layers, 1, err, errlen)) ||
      (rc = get_hp(g, m->arch, "embedding_length", &d, 1, err, errlen)) ||
      (rc = get_hp(g, m->arch, "attention.head_count", &n_heads, 1, err, errlen)) ||
      (rc = get_hp(g, m->arch, "attention.head_count_kv", &n_kv, 0, err, errlen)) ||
      (rc = get_hp(g, m->arch, "feed_forward_length", &ffn, 1, err, errlen)) ||
      (rc = get_hp(g, m->arch, "context_length", &ctx, 0, err, errlen)) ||
      (rc = get_hp(g, m->arch, "rope.dimension_count", &rot, 0, err, errlen)))
    goto fail;
  if (!n_kv) n_kv = n_heads;
  if (!n_layers || n_layers > 1024 || !d || d > 65536 || !n_heads || d % n_heads ||
      n_heads % n_kv || !ffn || ffn > 1 << 20) {
    rc = pd_errf(err, errlen, PD_ECORRUPT,
                 "model: inconsistent hyperparameters (layers %u, d %u, heads %u/%u, ffn %u)",
                 n_layers, d, n_heads, n_kv, ffn);
    goto fail;
  }
  m->n_layers = (int)n_layers, m->d_model = (int)d, m->n_heads = (int)n_heads;
  m->n_kv_heads = (int)n_kv, m->head_dim = (int)(d / n_heads), m->ffn_dim = (int)ffn;
  m->n_ctx_train = ctx ? (int)ctx : 2048;
  m->rot_dim = rot ? (int)rot : m->head_dim;
  if (m->rot_dim > m->head_dim || m->rot_dim % 2) {
    rc = pd_errf(err, errlen, PD_ECORRUPT, "model: rope.dimension_count %d is invalid", m->rot_dim);
    goto fail;
  }
  char key[128];
  snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", m->arch);
  if (pd_gguf_get_f32(g, key, &m->rms_eps)) m->rms_eps = 1e-5f;
  snprintf(key, sizeof key, "%s.rope.freq_base", m->arch);
  if (pd_gguf_get_f32(g, key, &m->rope_theta)) m->rope_theta = 10000.0f;
  m->rope_neox = is_qwen2;

  const pd_gguf_tensor *emb = pd_gguf_tensor_by_name(g, "token_embd.weight");
  if (!emb) {
    rc = pd_errf(err, errlen, PD_ECORRUPT, "model: tensor token_embd.weight is missing");
    goto fail;
  }
  m->n_vocab = (int)emb->ne[1];
  int hd = m->head_dim;
  if ((rc = want_tensor(g, "token_embd.weight", d, m->n_vocab, 1, 0, &m->tok_embd, err, errlen)) ||
      (rc = want_tensor(g, "output_norm.weight", d, 1, 0, 0, &m->out_norm, err, errlen)) ||
      (rc = want_tensor(g, "output.weight", d, m->n_vocab, 1, 1, &m->output, err, errlen)))
    goto fail;
  pd_weight freqs;
  if ((rc = want_tensor(g, "rope_freqs.weight", m->rot_dim / 2, 1, 0, 1, &freqs, err, errlen)))
    goto fail;
  m->rope_freqs = freqs.data;
  m->tied_output = m->output.data == NULL;
  if (m->tied_output) m->output = m->tok_embd;
  m->layers = calloc(n_layers, sizeof *m->layers);
  if (!m->layers) {
    rc = pd_errf(err, errlen, PD_ENOMEM, "model: out of memory");
    goto fail;
  }
  for (int l = 0; l < m->n_layers; l++) {
    pd_layer_weights *L = &m->layers[l];
    char n[96];
#define T(field, name, in, out_, q, opt)                                                           \
  snprintf(n, sizeof n, "blk.%d." name, l);                                                        \
  if ((rc = want_tensor(g, n, in, out_, q, opt, &L->field, err, errlen))) goto fail;
    T(attn_norm, "attn_norm.weight", d, 1, 0, 0)
    T(wq, "attn_q.weight", d, n_heads * hd, 1, 0)
    T(wk, "attn_k.weight", d, n_kv * hd, 1, 0)
    T(wv, "attn_v.weight", d, n_kv * hd, 1, 0)
    T(wo, "attn_output.weight", n_heads * hd, d, 1, 0)
    T(ffn_norm, "ffn_norm.weight", d, 1, 0, 0)
    T(w_gate, "ffn_gate.weight", d, ffn, 1, 0)
    T(w_up, "ffn_up.weight", d, ffn, 1, 0)
    T(w_down, "ffn_down.weight", ffn, d, 1, 0)
    T(bq, "attn_q.bias", n_heads * hd, 1, 0, !is_qwen2)
    T(bk, "attn_k.bias", n_kv * hd, 1, 0, !is_qwen2)
    T(bv, "attn_v.bias", n_kv * hd, 1, 0, !is_qwen2)
#undef T
  }
  /* Fingerprint: see the comment at the top of this file. */
  XXH3_state_t *st = XXH3_createState();
  if (!st) {
    rc = pd_errf(err, errlen, PD_ENOMEM, "model: out of memory");
    goto fail;
  }
  XXH3_128bits_reset(st);
  for (uint64_t i = 0; i < pd_gguf_n_tensors(g); i++) {
    const pd_gguf_tensor *t = pd_gguf_tensor_at(g, i);
    XXH3_128bits_update(st, t->name.ptr, t->name.len);
    XXH3_128bits_update(st, t->ne, sizeof t->ne);
    uint32_t ty = (uint32_t)t->type;
    XXH3_128bits_update(st, &ty, sizeof ty);
    /* a sample of the weights: the first 64 bytes of each tensor */
    XXH3_128bits_update(st, t->data, t->nbytes < 64 ? t->nbytes : 64);
  }
  const pd_str *toks;
  uint64_t n_toks;
  if (pd_gguf_get_str_arr(g, "tokenizer.ggml.tokens", &toks, &n_toks) == 0)
    for (uint64_t i = 0; i < n_toks; i++) XXH3_128bits_update(st, toks[i].ptr, toks[i].len);
  XXH128_hash_t h = XXH3_128bits_digest(st);
  XXH3_freeState(st);
  memcpy(m->fingerprint, &h.low64, 8);
  memcpy(m->fingerprint + 8, &h.high64, 8);
  *out = m;
  return PD_OK;
fail:
  pd_model_free(m);
  return rc;
}

/* "q4_1" when every matmul weight of the layers has one type; else each type with its count of
 * tensors, most common first: "q5_0 x166, q4_k x16, q6_k x14, q8_0 x14". */
static void describe_layer_types(const pd_model *m, char *buf, size_t len) {
  int count[PD_GGML_N_TYPES] = {0}, n_types = 0;
  for (int l = 0; l < m->n_layers; l++) {
    const pd_layer_weights *L = &m->layers[l];
    const pd_weight *ws[7] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
    for (int i = 0; i < 7; i++)
      for (int t = 0; t < PD_GGML_N_TYPES; t++)
        if (ws[i]->type == pd_ggml_types[t]) n_types += !count[t]++;
  }
  size_t n = 0;
  buf[0] = 0;
  for (int listed = 0; listed < n_types && n < len; listed++) {
    int best = -1;
    for (int t = 0; t < PD_GGML_N_TYPES; t++)
      if (count[t] && (best < 0 || count[t] > count[best])) best = t;
    const char *name = pd_ggml_type_name(pd_ggml_types[best]);
    int w = n_types == 1
                ? snprintf(buf, len, "%s (attention, ffn)", name)
                : snprintf(buf + n, len - n, "%s%s x%d", listed ? ", " : "", name, count[best]);
    n += w > 0 ? (size_t)w : 0;
    count[best] = 0;
  }
}

void pd_model_describe(const pd_model *m, char *buf, size_t len) {
  char types[256];
  describe_layer_types(m, types, sizeof types);
  snprintf(buf, len,
           "%s: %d layers, d_model %d, %d heads (%d kv, head_dim %d), ffn %d, vocab %d, "
           "context %d, rope theta %g%s; weights %s, embeddings %s%s, norms %s",
           m->arch, m->n_layers, m->d_model, m->n_heads, m->n_kv_heads, m->head_dim, m->ffn_dim,
           m->n_vocab, m->n_ctx_train, (double)m->rope_theta, m->rope_neox ? " (neox)" : "", types,
           pd_ggml_type_name(m->tok_embd.type), m->tied_output ? " (tied output)" : "",
           pd_ggml_type_name(m->layers[0].attn_norm.type));
}
