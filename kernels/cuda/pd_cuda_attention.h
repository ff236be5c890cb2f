/*
 * pd_cuda_attention.h -- paged decode attention on the GPU, callable from C.
 *
 * The KV pool lives in device memory in the same block layout as on the CPU
 * ([layer][K|V][kv_head][token_in_block][head_dim], see kernels/cpu/pd_attention.h); this file
 * supports f32, f16, bf16 and fp8-e4m3 caches and head_dim 64 or 128. Each sequence contributes one query
 * row (a decode step) that attends to its first ctx_len tokens. The batched interface the
 * forward pass uses (prefill, decode, cascade, KV store, block moves) is pd_cuda_batch.h; both
 * are implemented in pd_cuda_attention.cu and pd_cuda_blocks.cu.
 *
 * All pointers are device pointers; stream is a cudaStream_t (NULL: the default stream). The call
 * only enqueues work: results are ready when the stream is. CUDA errors are translated to
 * PD_EDEVICE (or PD_ENOMEM) with the CUDA message in err.
 *
 * The kernel is checked against pd_attn_paged (the CPU reference) by tests/cuda/.
 */
#ifndef PD_CUDA_ATTENTION_H
#define PD_CUDA_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

#include "pd_attention.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable CUDA devices (0 when there is no driver or no device). Never fails. */
int pd_cuda_device_count(void);

/* Why pd_cuda_device_count finds none: the CUDA runtime's message ("CUDA driver version is
 * insufficient for CUDA runtime version", ...), or "no device". A static string. */
const char *pd_cuda_no_device_reason(void);

/* Workspace bytes pd_cuda_attn_decode needs for this shape. */
size_t pd_cuda_attn_workspace_bytes(int n_seqs, int n_heads, int head_dim, int max_ctx);

/*
 * out (n_seqs, n_heads, head_dim) f32 = softmax(q k^T * scale) v for each sequence's one query
 *   q:            (n_seqs, n_heads, head_dim) f32
 *   block_tables: (n_seqs, max_blocks) int32 block ids into pool
 *   ctx_lens:     (n_seqs) int32, 1 .. max_blocks * block_tokens
 *   workspace:    pd_cuda_attn_workspace_bytes(...) bytes
 * max_ctx bounds every ctx_len (it sizes the split of long contexts across thread blocks).
 * Returns 0, PD_EINVAL (unsupported dtype or head_dim, bad sizes), PD_EDEVICE.
 */
int pd_cuda_attn_decode(const pd_kv_layout *L, const void *pool, int layer, int n_heads,
                        const float *q, float *out, const int32_t *block_tables, int max_blocks,
                        const int32_t *ctx_lens, int n_seqs, int max_ctx, float scale,
                        void *workspace, void *stream, char *err, size_t errlen);

/*
 * Which kernel pd_cuda_attn uses for prefill and for a cascade's shared prefix (process-wide):
 * 1 (the default) tensor cores (tf32 mma, operands split in two for f32 accuracy), 0 the f32 SIMT
 * kernel. PD_CUDA_ATTN_SIMT=1 in the environment makes 0 the default. For the tests and the bench.
 */
void pd_cuda_attn_set_tensor_cores(int on);

/*
 * The same choice with a third kernel: PD_CUDA_TILE_TF32 (the default), PD_CUDA_TILE_SIMT, or
 * PD_CUDA_TILE_F16: one f16 mma per product (Q and P rounded to f16, sums in f32), K and V tiles
 * copied from the pool by cp.async in two stages. F16 applies to f16 pools (others use TF32); its
 * results differ from the CPU's by the rounding of Q and P (tests/cuda/test_cuda_attention.c
 * states the tolerance). PD_CUDA_ATTN_F16=1 in the environment makes it the default. Not yet the
 * default: it has not been timed on a GPU (bench/results/cuda_attention.md).
 */
enum { PD_CUDA_TILE_SIMT = 0, PD_CUDA_TILE_TF32 = 1, PD_CUDA_TILE_F16 = 2 };
void pd_cuda_attn_set_tile_kernel(int kind);
/* The tile kernel in use: the last one set, else the environment's choice, else TF32. */
int pd_cuda_attn_tile_kernel(void);
/* A PD_CUDA_TILE_* kind's name for reports ("tf32 x2", "f16", "SIMT f32"); a static string. */
const char *pd_cuda_attn_tile_kernel_name(int kind);

/*
 * Tuning knobs for the benches (process-wide; the defaults are what the daemon should run).
 * pd_cuda_attn_set_cascade_split: the fewest shared-prefix positions one cascade thread block
 *   walks (default 128, below 64 means the default); larger values mean fewer, longer splits and
 *   a smaller workspace, so size the workspace after setting it.
 * pd_cuda_attn_set_prefill_order: 1 (default) hands the causal prefill tiles out longest first,
 *   0 in launch order (first rows first). The results are the same either way.
 */
void pd_cuda_attn_set_cascade_split(int min_tokens);
void pd_cuda_attn_set_prefill_order(int longest_first);

/*
 * Decode's merge in a thread-block cluster (process-wide; opt-in until a GPU has timed it): when a
 * decode launch has at most 8 splits, they run as one cluster per (sequence, KV head) and block 0
 * of it merges the splits through distributed shared memory and writes the output, instead of a
 * second kernel (merge_seq) reading them back from the workspace. Needs pd_cuda_sm90_code()
 * (pd_cuda_launch.h). pd_cuda_attn_set_decode_cluster, or PD_CUDA_DECODE_CLUSTER=1; the getter
 * says whether it applies now (0 for good after the runtime refused a cluster launch: that launch
 * and the later ones take the plain kernel and merge_seq).
 */
void pd_cuda_attn_set_decode_cluster(int on);
int pd_cuda_attn_decode_cluster(void);

/*
 * "Lean" decode (process-wide; opt-in until a GPU has timed it): instead of a grid of
 * (splits, KV heads, sequences), one wave of thread blocks -- as many as the device keeps
 * resident -- each taking an equal, contiguous run of the batch's real 32-position KV tiles
 * (counted on the device from the sequences' lengths) across (sequence, KV head) boundaries
 * (pd_cuda_lean.h), so that no second, partly empty wave and no per-split prologue is paid for
 * short contexts; merge_seq combines the partials as before. Takes
 * precedence over the cluster merge. The workspace size follows it
 * (pd_cuda_attn_batch_workspace_bytes), so set it before sizing. pd_cuda_attn_set_decode_lean,
 * or PD_CUDA_DECODE_LEAN=1; pd_cuda_attn_decode_lean_blocks (pd_cuda_batch.h) says whether and
 * how a batch runs it.
 */
void pd_cuda_attn_set_decode_lean(int on);
int pd_cuda_attn_decode_lean(void);

/* Whether the environment variable name turns a switch on: set, not empty and not "0". The rule
 * of every PD_CUDA_* switch (PD_CUDA_ATTN_SIMT, PD_CUDA_ATTN_F16, PD_CUDA_FUSED_GEMV). */
int pd_cuda_env_flag(const char *name);

/*
 * How pd_cuda_blocks_to_host / pd_cuda_blocks_from_host move scattered blocks (process-wide; for
 * the bench and the tests, the default AUTO is what the daemon should use). See pd_cuda_blocks.cu.
 */
enum {
  PD_CUDA_XFER_AUTO = 0,   /* BATCH where it applies, else MEMCPY */
  PD_CUDA_XFER_MEMCPY = 1, /* one cudaMemcpyAsync per run of consecutive ids */
  PD_CUDA_XFER_BATCH = 2,  /* one cudaMemcpyBatchAsync over the runs (not on the NULL stream) */
  PD_CUDA_XFER_KERNEL = 3  /* zero-copy kernel over pinned host memory (else MEMCPY) */
};
void pd_cuda_blocks_set_xfer_mode(int mode);

#ifdef __cplusplus
}
#endif

#endif /* PD_CUDA_ATTENTION_H */
