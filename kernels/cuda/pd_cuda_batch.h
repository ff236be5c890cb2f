/*
 * pd_cuda_batch.h -- how a batch of sequences is described to the CUDA attention kernels, and
 * the KV-pool operations the forward pass and the tier manager call on the GPU.
 *
 * A batch mixes sequences: prefill chunks (n_new > 1) and decode steps (n_new == 1), exactly as
 * pd_attn_seq does on the CPU (kernels/cpu/pd_attention.h), but in device arrays so that a step's
 * launches need no host round trip and can be captured in a CUDA graph. Query, key, value and
 * output rows of all sequences are stacked: sequence s owns rows row_start[s] ..
 * row_start[s] + n_new[s] - 1, and row r belongs to sequence row_seq[r].
 *
 * The KV pool is device memory in the block layout of the CPU reference,
 * [layer][K|V][kv_head][token_in_block][head_dim] in elements of the layout's dtype.
 *
 * All pointers in pd_cuda_batch, q, k, v, out and pool are device pointers; the scalar bounds
 * are host values that the caller guarantees (they size grids and workspaces). stream is a
 * cudaStream_t (NULL: the default stream); every call only enqueues work. Errors come back as
 * PD_EINVAL (a shape the kernels do not support, with the reason in err) or PD_EDEVICE /
 * PD_ENOMEM (with CUDA's message in err).
 */
#ifndef PD_CUDA_BATCH_H
#define PD_CUDA_BATCH_H

#include <stddef.h>
#include <stdint.h>

#include "pd_attention.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pd_cuda_batch {
  int32_t n_seqs;              /* sequences in the batch */
  int32_t n_rows;              /* query rows: the sum of n_new */
  int32_t max_blocks;          /* row stride of block_tables */
  int32_t max_new;             /* max over sequences of n_new (1: a pure decode batch) */
  int32_t max_ctx;             /* max over sequences of n_past + n_new */
  int32_t shared_blocks;       /* leading block-table entries equal in every sequence's table
                                * and fully below every sequence's n_past (0: none); the
                                * cascade kernel reads them once for the whole batch */
  const int32_t *block_tables; /* device (n_seqs, max_blocks) block ids into the pool */
  const int32_t *n_past;       /* device (n_seqs) tokens already in the pool before this batch */
  const int32_t *n_new;        /* device (n_seqs) new rows */
  const int32_t *row_start;    /* device (n_seqs) first row of each sequence */
  const int32_t *row_seq;      /* device (n_rows) the sequence each row belongs to */
} pd_cuda_batch;

/*
 * Stores the new rows' K and V of one layer into their blocks: row r of sequence s goes to
 * position n_past[s] + (r - row_start[s]), converted from f32 to the pool's dtype with round to
 * nearest even (bit-identical to pd_kv_store).
 *   k, v: (n_rows, n_kv_heads, head_dim) f32
 */
int pd_cuda_kv_store(const pd_kv_layout *L, void *pool, int layer, const pd_cuda_batch *b,
                     const float *k, const float *v, void *stream, char *err, size_t errlen);

/* Workspace bytes pd_cuda_attn needs for a batch with these bounds. */
size_t pd_cuda_attn_batch_workspace_bytes(const pd_kv_layout *L, int n_heads,
                                          const pd_cuda_batch *b);

/* The thread blocks the lean decode launch of this batch has (its decode rows, under the current
 * switch), or 0 where the batch decodes the usual way (switch off, no decode rows, bad sizes,
 * more than 4,096 sequences or 2^30 tiles of 32 positions, or no device to ask for its resident
 * block count). */
int pd_cuda_attn_decode_lean_blocks(const pd_kv_layout *L, int n_heads, const pd_cuda_batch *b);

/*
 * Causal attention of every row over its sequence's paged KV, one layer (the GPU twin of
 * pd_attn_paged). Row i of sequence s sits at position n_past[s] + i and attends to positions
 * 0 .. n_past[s] + i. Picks the kernel: decode (max_new == 1), cascade (decode with
 * shared_blocks > 0), or prefill.
 *   q, out: (n_rows, n_heads, head_dim) f32; every row of the batch is written
 * pool dtype f32, f16, bf16 or fp8-e4m3; head_dim 64 or 128; n_heads a multiple of n_kv_heads.
 */
int pd_cuda_attn(const pd_kv_layout *L, const void *pool, int layer, int n_heads, const float *q,
                 float *out, const pd_cuda_batch *b, float scale, void *workspace,
                 size_t workspace_bytes, void *stream, char *err, size_t errlen);

/*
 * Copies whole blocks inside the pool: block dst[i] becomes a copy of block src[i]
 * (copy-on-write of a shared partial block). src and dst are host arrays of n block ids; a dst
 * never appears as a src in the same call.
 */
int pd_cuda_block_copy(void *pool, size_t block_bytes, const int32_t *src, const int32_t *dst,
                       int n, void *stream, char *err, size_t errlen);

/* Sets n blocks (host array of ids) to zero bytes. */
int pd_cuda_block_zero(void *pool, size_t block_bytes, const int32_t *ids, int n, void *stream,
                       char *err, size_t errlen);

/*
 * Batched transfers between the pool and a host array of block-sized slots (pinned, from
 * cudaHostAlloc, for full speed; pageable works, slower). ids, host_ids: host arrays of n ids;
 * host slot j is at (char *)host + j * block_bytes.
 * to_host: host slot host_ids[i] = pool block ids[i]; from_host: the reverse.
 */
int pd_cuda_blocks_to_host(const void *pool, size_t block_bytes, const int32_t *ids, int n,
                           void *host, const int32_t *host_ids, void *stream, char *err,
                           size_t errlen);
int pd_cuda_blocks_from_host(void *pool, size_t block_bytes, const int32_t *ids, int n,
                             const void *host, const int32_t *host_ids, void *stream, char *err,
                             size_t errlen);

#ifdef __cplusplus
}
#endif

#endif /* PD_CUDA_BATCH_H */
