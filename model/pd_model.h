/*
 * pd_model.h -- a Llama-family model loaded from GGUF: hyperparameters and weight views.
 *
 * Weights are not copied: each pd_weight points into the GGUF mapping with its type and shape,
 * and the kernels read the quantized blocks in place. The model keeps the pd_gguf open and owns
 * it. Supported architectures: `llama` (and the Llama-shaped `mistral`), and `qwen2` (QKV bias,
 * NEOX rope). Every tensor's presence, shape and type is checked at load; anything unsupported
 * is refused with a message that names it.
 */
#ifndef PD_MODEL_H
#define PD_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "pd_ggml.h"
#include "pd_gguf.h"

typedef struct pd_weight {
  const void *data; /* into the mapping */
  enum pd_ggml_type type;
  int64_t in_dim, out_dim; /* a 2-D weight: out_dim rows of in_dim; a vector: out_dim = 1 */
} pd_weight;

typedef struct pd_layer_weights {
  pd_weight attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_up, w_down;
  pd_weight bq, bk, bv; /* qwen2 only; data NULL otherwise */
} pd_layer_weights;

typedef struct pd_model {
  pd_gguf *gguf;
  char arch[32];
  int n_layers, d_model, n_heads, n_kv_heads, head_dim, ffn_dim, n_vocab, n_ctx_train, rot_dim;
  float rms_eps, rope_theta;
  int rope_neox;
  const float *rope_freqs; /* (rot_dim / 2) frequency divisors (rope_freqs.weight), or NULL */
  int tied_output;
  pd_weight tok_embd, out_norm, output; /* output == tok_embd when tied */
  pd_layer_weights *layers;             /* (n_layers) */
  uint8_t fingerprint[16];              /* XXH3-128 over the header and tensor infos */
} pd_model;

/* Loads path. On success *out is owned by the caller (pd_model_free). err gets one line. */
int pd_model_load(const char *path, pd_model **out, char *err, size_t errlen);
void pd_model_free(pd_model *m);

/* A one-line description: arch, layers, dims, heads, vocab, weight types. Writes into buf. */
void pd_model_describe(const pd_model *m, char *buf, size_t len);

#endif /* PD_MODEL_H */
