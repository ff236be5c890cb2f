/*
 * pd_attention.h -- paged KV storage and attention over it (CPU reference).
 *
 * The KV cache is a pool of fixed-size blocks. Block b starts at (char *)pool + b * block_bytes.
 * One block holds B consecutive tokens' K and V for every layer, contiguous, in this layout:
 *
 *     [layer][K|V][kv_head][token_in_block][head_dim]     elements of L->dtype
 *
 * An fp8-e4m3 block adds one f32 scale per row after the elements (the rows in the same order):
 *
 *     [layer][K|V][kv_head][token_in_block]               f32 scales, from pd_kv_scale_offset
 *
 * Row x (head_dim values) is stored as s = max|x| / 448 and e = fp8(x / s), and read back as
 * e * s: every row uses the whole fp8 range, so no calibration is needed, and the scales cost
 * 4 / head_dim bytes per element (a head_dim 64 fp8 block is 53% of an f16 one). A row whose
 * max is 0, under 1e-30 or not finite has s = 1.
 *
 * So a block moves between tiers as one extent. A sequence reaches its tokens through a block
 * table: token at position p lives in block block_table[p / B], row p % B.
 *
 * Attention is causal: query row i of a sequence sits at position n_past + i and attends to
 * positions 0 .. n_past + i. The caller stores the new tokens' K and V (pd_kv_store) before it
 * asks for attention, so a prefill chunk attends to the cached prefix and to itself.
 *
 * Determinism contract (the cache depends on it): each query row's result is computed in the
 * same order whatever the batch holds, so a row whose prefix came from the cache equals, bit for
 * bit, the row computed with the prefix in the same batch. Parallelism is over (row, head) and
 * over fixed segments of 256 key positions (aligned to absolute positions, so a row's split
 * depends on its position only), whose partial softmax results are folded in position order.
 * Sequences that hold a segment in the same blocks share its conversion, not its arithmetic: a
 * row computes the same operations on the same values either way.
 *
 * These functions are the reference for the CUDA kernels (kernels/cuda/), which are tested
 * against them on random inputs.
 */
#ifndef PD_ATTENTION_H
#define PD_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

#include "pd_dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pd_kv_layout {
  int32_t n_layers;
  int32_t n_kv_heads;
  int32_t head_dim;
  int32_t block_tokens; /* B, a power of two */
  enum pd_dtype dtype;  /* element type of K and V in the pool */
} pd_kv_layout;

/* Bytes of one block: R * head_dim * sizeof(dtype), R = 2 * n_layers * n_kv_heads * B rows, plus
 * R * 4 bytes of row scales for fp8-e4m3. */
size_t pd_kv_block_bytes(const pd_kv_layout *L);

/* Byte offset, within one fp8-e4m3 block, of the f32 scale of K (kv = 0) or V (kv = 1) of
 * (layer, kv_head, row). */
size_t pd_kv_scale_offset(const pd_kv_layout *L, int layer, int kv, int kv_head, int row);

/* The scale pd_kv_store gives an fp8 row whose largest magnitude is amax (NaN ignored). */
float pd_kv_fp8_row_scale(float amax);

/* Element offset, within one block, of K (kv = 0) or V (kv = 1) of (layer, kv_head, row). */
size_t pd_kv_elem_offset(const pd_kv_layout *L, int layer, int kv, int kv_head, int row);

/* One sequence's part of a batch. */
typedef struct pd_attn_seq {
  const int32_t *block_table; /* (n_blocks) block ids in the pool; borrowed for the call */
  int32_t n_blocks;           /* covers at least n_past + n_new tokens */
  int32_t n_past;             /* tokens already in the cache before this batch */
  int32_t n_new;              /* query rows of this sequence in the batch */
  int32_t row;                /* index of its first row in q / out / k / v */
} pd_attn_seq;

/*
 * Stores the new rows' K and V of one layer into the sequence's blocks, converting f32 to the
 * pool's dtype (round to nearest even; fp8 rows scaled as above).
 *   k, v: (n_rows_total, n_kv_heads, head_dim) f32; rows s->row .. s->row + s->n_new - 1 are used.
 * Returns 0, or PD_EINVAL if the block table is too short.
 */
int pd_kv_store(const pd_kv_layout *L, void *pool, const pd_attn_seq *s, int layer, const float *k,
                const float *v);

/*
 * Causal attention of every row of every sequence over its paged KV, one layer.
 *   q:   (n_rows_total, n_heads, head_dim) f32
 *   out: (n_rows_total, n_heads, head_dim) f32, written for every row the seqs cover
 * n_heads must be a multiple of L->n_kv_heads (GQA: head h reads kv_head h / (n_heads / n_kv)).
 * scale is usually 1 / sqrt(head_dim). Softmax in f32 with the running-max trick.
 * Returns 0, or PD_EINVAL on inconsistent arguments.
 */
int pd_attn_paged(const pd_kv_layout *L, const void *pool, int layer, int n_heads, const float *q,
                  float *out, const pd_attn_seq *seqs, int n_seqs, float scale);

/*
 * Which arithmetic this build's pd_attn_paged does, for the cache's fingerprint (a cached block
 * must be bit for bit what this build would compute): 0 for the AVX2 build, 1 for the AVX-512
 * one (16 lanes: its sums run in another order), 2 for the portable loops. pd_matmul's results
 * do not depend on the build's ISA.
 */
int pd_attn_arith_variant(void);

/*
 * How many blocks ahead pd_attn_paged asks the memory system for the K and V rows it is about to
 * convert (the blocks of a sequence lie anywhere in the pool, so the hardware prefetcher does not
 * see them coming). n < 0 restores the default (4); at most 16; 0 turns it off. Returns the
 * previous value. A process-wide setting for benchmarks and tuning: not to be changed while
 * another thread is inside pd_attn_paged. It never changes a result, only its speed.
 */
int pd_attn_set_prefetch_blocks(int n);

#ifdef __cplusplus
}
#endif

#endif /* PD_ATTENTION_H */
