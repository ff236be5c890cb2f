/*
 * pd_llama_cuda.h -- the forward pass of a Llama-family model on the GPU, over a paged KV pool
 * in device memory: the twin of pd_llama.h.
 *
 * Same batches, same math, same KV block layout as pd_llama_forward: a batch mixes prefill
 * chunks and decode steps (pd_llama_seq), the new tokens' K and V go into their blocks, and the
 * last new row of every sequence that asks gets logits. Weights are dequantized at init and held
 * on the device as f32 ("exact": reproduces the CPU's greedy tokens) or f16 ("fast"); the
 * matmuls are cuBLAS GEMMs (kernels/cuda/pd_cuda_gemm.h), attention and the KV store are
 * pd_cuda_attn / pd_cuda_kv_store (kernels/cuda/pd_cuda_batch.h), the rest pd_cuda_ops.h.
 *
 * Per layer, with R rows (Hq = n_heads * head_dim, Hkv = n_kv_heads * head_dim, f = ffn_dim):
 *   xn (R, d) = rmsnorm(x) * attn_norm                       f32 or f16 (the weights' dtype)
 *   qkv (R, Hq + 2 Hkv) = xn . Wqkv^T                         wq, wk, wv stacked at load
 *   q, k, v = split(qkv + bias), RoPE on q and k at each row's position
 *   K, V -> the sequence's blocks; att (R, Hq) = causal paged attention
 *   x += att . Wo^T                                           (beta = 1: accumulated)
 *   xn = rmsnorm(x) * ffn_norm; gu (R, 2f) = xn . Wgu^T       w_gate, w_up stacked at load
 *   x += (silu(gate) * up) . Wdown^T
 * then for the rows that want logits: rmsnorm(x) * out_norm . Wout^T, and optionally the argmax
 * on the device (greedy sampling without copying the logits back). With fused_gemv, a step of at
 * most PD_CUDA_GEMV_MAX_ROWS rows computes "rmsnorm, QKV GEMV, split + RoPE" and "rmsnorm,
 * gate|up GEMV, SwiGLU" in one launch each (pd_cuda_ops.h), with the same bits.
 *
 * Decode steps as CUDA graphs: a batch of decode steps only (every n_new == 1) is launched with
 * bounds rounded up to a bucket (max_ctx to a power of two >= 256, the block-table stride to
 * max_ctx / block_tokens, shared_blocks down to a multiple of 16 above 16), so the same shapes
 * recur step after step. The first time a shape (n_seqs, bucket, shared_blocks, pool, rows
 * wanting logits, greedy or not) is seen the step runs eagerly; the second time it is captured
 * into a graph and launched; afterwards the graph is replayed. Graphs and eager runs enqueue the
 * same kernels with the same arguments. If a capture fails (a callee that cannot be captured),
 * graphs are turned off for the context and the reason kept in graph_err. use_graphs = 0 turns
 * them off by hand. With programmatic dependent launch on (pd_cuda_launch.h: pd_cuda_set_pdl or
 * PD_CUDA_PDL=1, Hopper and later) each kernel of a step is launched while the one before it
 * finishes, eager or in a graph (a graph is keyed on the switch too); the results are the same
 * bits.
 *
 * Ownership: the context owns every device buffer, the stream, the cuBLAS handle and the graphs;
 * the model is borrowed (it must outlive the context); the KV pool belongs to the caller
 * (pd_llama_cuda_pool_alloc makes one). One thread at a time per context. Every call runs on the
 * CUDA device that was current at init.
 */
#ifndef PD_LLAMA_CUDA_H
#define PD_LLAMA_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "pd_attention.h"
#include "pd_cuda_gemm.h"
#include "pd_cuda_weight.h"
#include "pd_llama.h"
#include "pd_model.h"

enum pd_cuda_weight_mode {
  PD_CUDA_WEIGHTS_F32 = 0, /* exact: f32 weights, f32 activations, pedantic f32 GEMMs */
  PD_CUDA_WEIGHTS_F16 = 1  /* fast: f16 weights and GEMM inputs, f32 accumulation */
};

typedef struct pd_llama_cuda_layer {
  float *attn_norm, *ffn_norm; /* device (d) f32 */
  float *bqkv;                 /* device (Hq + 2 Hkv) f32 [bq | bk | bv]; NULL without biases */
  pd_cuda_weight wqkv;         /* (Hq + 2 Hkv, d): rows of wq, then wk, then wv */
  pd_cuda_weight wo;           /* (d, Hq) */
  pd_cuda_weight w_gu;         /* (2 f, d): rows of w_gate, then w_up */
  pd_cuda_weight w_down;       /* (d, f) */
} pd_llama_cuda_layer;

/* One decode shape seen, and its graph once captured. */
typedef struct pd_llama_cuda_graph {
  const void *pool;
  int32_t n_seqs, max_blocks, shared_blocks, n_want, greedy, fused;
  int32_t pdl;       /* pd_cuda_pdl() at capture: the graph's kernel edges are programmatic */
  int32_t cluster;   /* pd_cuda_attn_decode_cluster() at capture: decode merges in clusters */
  int32_t lean;      /* pd_cuda_attn_decode_lean() at capture: decode runs as one lean wave */
  void *exec;        /* cudaGraphExec_t; NULL: seen once, not captured yet */
  uint64_t last_use; /* for least-recently-used replacement */
} pd_llama_cuda_graph;

#define PD_LLAMA_CUDA_MAX_GRAPHS 64

typedef struct pd_llama_cuda {
  const pd_model *model; /* borrowed */
  pd_kv_layout kv;
  enum pd_cuda_weight_mode mode;
  enum pd_dtype act; /* dtype of the GEMM inputs xn, ffn, last: f32 (exact) or f16 (fast) */
  int device;        /* the CUDA device of every buffer */
  int max_tokens, max_seqs;
  int64_t pool_blocks; /* caller-set: if > 0, a block id >= pool_blocks is refused (PD_EINVAL) */
  int use_graphs;      /* 1 (default): capture and replay decode steps; 0: always eager */
  /* 1: steps of at most PD_CUDA_GEMV_MAX_ROWS rows on f16 weights run each RMSNorm inside the
   * GEMV after it, the QKV split and RoPE inside the QKV GEMV, and SwiGLU inside the gate|up GEMV
   * (pd_cuda_norm_gemv_f16, pd_cuda_norm_gemv_qkv_rope_f16): four launches fewer a layer (seven
   * instead of eleven), the same bits. 0: separate kernels. Default at init: 1 when PD_CUDA_FUSED_GEMV
   * is set (pd_cuda_env_flag), else 0 (it waits for its first GPU run); may change between calls. */
  int fused_gemv;
  char err[256];                           /* the last error's message */
  char graph_err[256];                     /* why graphs were turned off, if they were */
  int graphs_off;                          /* a capture failed: graphs stay off for this context */
  uint64_t n_eager, n_captures, n_replays; /* steps run each way (for tests and benchmarks) */
  uint64_t n_fused_gemv;  /* fused norm GEMV launches enqueued (captures count once; for tests) */
  int last_shared_blocks; /* the shared_blocks the last batch was given (for tests) */

  void *stream; /* cudaStream_t, owned, non-blocking */
  pd_cuda_gemm gemm;
  pd_llama_cuda_layer *layers; /* host (n_layers) */
  float *out_norm;             /* device (d) f32 */
  float *rope_freqs;           /* device (rot_dim / 2) f32, from the host's powf as pd_rope */
  pd_cuda_weight embd;         /* (n_vocab, d) of the weights' dtype */
  pd_cuda_weight output;       /* (n_vocab, d); the same memory as embd when tied */
  int output_is_embd;

  /* device scratch, for up to max_tokens rows (R) and max_seqs sequences (S) */
  float *x;      /* (R, d) f32: the residual stream */
  void *xn;      /* (R, d) act: normed rows, GEMM input */
  float *qkv;    /* (R, Hq + 2 Hkv) f32 */
  float *q;      /* (R, Hq) f32, rotated */
  float *k, *v;  /* (R, Hkv) f32, rotated k */
  float *att;    /* (R, Hq) f32: attention output */
  float *gu;     /* (R, 2 f) f32: [gate | up] per row */
  void *ffn;     /* (R, f) act: silu(gate) * up */
  void *last;    /* (S, d) act: normed rows that want logits */
  float *logits; /* (S, n_vocab) f32 */
  int32_t *ids;  /* (S) int32: argmax of each logits row */
  void *attn_ws; /* attn_ws_bytes: pd_cuda_attn's workspace */
  size_t attn_ws_bytes;

  /* the batch description, staged in pinned host memory and copied with one cudaMemcpyAsync:
   * per batch (n sequences, R rows, table stride T), int32 elements at
   *   [0, n) n_past | [n, 2n) n_new | [2n, 3n) row_start | [3n, 4n) rows wanting logits |
   *   [4n, 4n+R) tokens | [4n+R, 4n+2R) positions | [4n+2R, 4n+3R) row_seq |
   *   [4n+3R, 4n+3R+nT) block tables (n, T)
   * capacity: 4 S + 3 R + S * cap_blocks elements */
  int32_t *stage_host; /* pinned (cudaHostAlloc) */
  int32_t *stage_dev;  /* device, same size */
  int cap_blocks;      /* block-table stride the staging and the workspace are sized for */
  int32_t *ids_host;   /* pinned (S): argmax results */

  pd_llama_cuda_graph graphs[PD_LLAMA_CUDA_MAX_GRAPHS];
  uint64_t clock;
} pd_llama_cuda;

/*
 * Uploads the model's weights (dequantized; norms and biases f32), allocates the scratch for
 * max_tokens rows and max_seqs sequences per call, the stream and the cuBLAS handle. The KV
 * layout is the model's dims with block_tokens (a power of two) and cache_dtype (f32, f16,
 * bf16). head_dim must be 64 or 128 (what pd_cuda_attn supports). Returns 0; PD_EINVAL (with the
 * reason in err); PD_ENOMEM (the message names the bytes asked); PD_EDEVICE (no device, or a
 * CUDA / cuBLAS failure). On failure everything allocated is freed.
 */
int pd_llama_cuda_init(pd_llama_cuda *ctx, const pd_model *m, int block_tokens,
                       enum pd_dtype cache_dtype, enum pd_cuda_weight_mode mode, int max_tokens,
                       int max_seqs, char *err, size_t errlen);
void pd_llama_cuda_free(pd_llama_cuda *ctx);

/*
 * Runs one batch, the GPU twin of pd_llama_forward. pool: device memory holding the KV blocks
 * (pd_kv_block_bytes(&ctx->kv) bytes each). logits: host (number of seqs with want_logits,
 * n_vocab) f32, in the order of those seqs (NULL: not copied). Synchronous: when it returns the
 * KV is stored and the logits are in place. Returns 0, PD_EINVAL (too many rows or sequences, a
 * token id out of range, a short block table, a negative block id or one >= pool_blocks,
 * want_logits other than 0 or 1: the rows to verify speculated tokens are the CPU's for now),
 * PD_ENOMEM, PD_EDEVICE; ctx->err holds the message.
 */
int pd_llama_cuda_forward(pd_llama_cuda *ctx, void *pool, const pd_llama_seq *seqs, int n_seqs,
                          float *logits);

/*
 * The same, with greedy sampling on the device: tokens (host, one per seq with want_logits, in
 * their order) = the argmax of each logits row, lowest id on ties, as pd_sampler's temperature 0.
 * Either output may be NULL; with both, both are written.
 */
int pd_llama_cuda_forward_ex(pd_llama_cuda *ctx, void *pool, const pd_llama_seq *seqs, int n_seqs,
                             float *logits, int32_t *tokens);

/* Pinned host memory for outputs the GPU writes (the logits: copied by DMA, not through the
 * driver's staging buffer). *p is the caller's until pd_llama_cuda_host_free. PD_ENOMEM names the
 * bytes asked. */
int pd_llama_cuda_host_alloc(size_t bytes, void **p, char *err, size_t errlen);
void pd_llama_cuda_host_free(void *p);

/* Destroys every captured graph (they are rebuilt as shapes recur). */
void pd_llama_cuda_drop_graphs(pd_llama_cuda *ctx);

/* A zeroed KV pool of n_blocks blocks of ctx's layout, on ctx's device. *pool is owned by the
 * caller (pd_llama_cuda_pool_free). PD_ENOMEM names the bytes asked. */
int pd_llama_cuda_pool_alloc(const pd_llama_cuda *ctx, int64_t n_blocks, void **pool, char *err,
                             size_t errlen);
void pd_llama_cuda_pool_free(void *pool);

#endif /* PD_LLAMA_CUDA_H */
