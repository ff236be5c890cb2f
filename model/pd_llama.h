/*
 * pd_llama.h -- the forward pass of a Llama-family model over paged KV blocks, CPU.
 *
 * One call runs a batch that mixes sequences: prefill chunks (many new tokens) and decode steps
 * (one new token) alike. Each sequence brings its new tokens, how many tokens of it are already
 * in the KV pool (n_past), and its block table. The pass writes the new tokens' K and V into
 * their blocks (pd_kv_store) and returns logits for the last new tokens of every sequence that
 * asks (the last one for a decode step; several to verify speculated tokens in one pass). Rows
 * never influence each other except through the KV they read, and every kernel is
 * batch-invariant (pd_matmul.h, pd_attention.h), so a sequence computes the same logits whether
 * its prefix's KV came from the cache or from this very batch.
 *
 * The context owns scratch buffers for up to max_tokens rows per call; the KV pool belongs to
 * the caller (the engine's device tier, or a plain array in the CLI).
 */
#ifndef PD_LLAMA_H
#define PD_LLAMA_H

#include <stdint.h>

#include "kernels.h"
#include "pd_model.h"

typedef struct pd_llama_seq {
  const int32_t *tokens; /* (n_new) borrowed */
  int32_t n_new;
  int32_t n_past;
  const int32_t *block_table; /* (n_blocks) borrowed; covers n_past + n_new tokens */
  int32_t n_blocks;
  int want_logits; /* logits of the last want_logits new tokens wanted (0..n_new; 1: the last) */
} pd_llama_seq;

typedef struct pd_llama {
  const pd_model *model;
  pd_kv_layout kv;
  enum pd_matmul_mode mode;
  int max_tokens;
  /* scratch, (max_tokens, ...) each */
  float *x, *xn, *q, *k, *v, *att, *ffn_gate, *ffn_up, *tmp;
  float *last; /* (max_tokens, d_model) final hidden rows that want logits */
  int max_seqs;
} pd_llama;

/* Sizes the scratch for max_tokens rows and max_seqs sequences per call. The KV layout uses the
 * model's dims, block_tokens and cache dtype. Returns 0 or PD_ENOMEM / PD_EINVAL. */
int pd_llama_init(pd_llama *ctx, const pd_model *m, int block_tokens, enum pd_dtype cache_dtype,
                  enum pd_matmul_mode mode, int max_tokens, int max_seqs);
void pd_llama_free(pd_llama *ctx);

/*
 * Runs one batch. pool: the KV blocks (pd_kv_block_bytes(&ctx->kv) bytes each). logits:
 * (sum of the seqs' want_logits, n_vocab): the seqs in order, each one's rows in position order.
 * Returns 0, PD_EINVAL (too many rows or sequences, a token id out of range, a short block table,
 * more logits than new tokens) or PD_ENOMEM.
 */
int pd_llama_forward(pd_llama *ctx, void *pool, const pd_llama_seq *seqs, int n_seqs,
                     float *logits);

#endif /* PD_LLAMA_H */
