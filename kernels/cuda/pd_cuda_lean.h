/*
 * pd_cuda_lean.h -- how a "lean" decode launch cuts its work: one wave of thread blocks, each
 * taking an equal, contiguous run of KV tiles across (sequence, KV head) boundaries.
 *
 * The work is n_pairs pairs (sequence, KV head, chunk of the query-head group), each of
 * tiles_per_pair tiles of `tile` positions (the longest context of the batch, rounded up; a
 * shorter sequence's tiles past its end are empty), laid out pair after pair: n_tiles tiles in
 * all. Block b of n_blocks takes tiles [b * n_tiles / n_blocks, (b + 1) * n_tiles / n_blocks)
 * (floor division; n_blocks <= n_tiles, so no block is empty). A block walks its run one pair at
 * a time (a segment: the run's part inside one pair) and writes each segment's softmax partial to
 * the workspace under (pair, part), part = b - the block that holds the pair's first tile. So a
 * pair has one partial per block its tiles touch, at most max_parts; the block that holds a
 * pair's last tile marks the pair's remaining parts empty, so that merge_seq can take a fixed
 * max_parts slots per pair.
 *
 * Everything is decided from host scalars (the batch's longest context, the device's resident
 * block count), so a decode step stays capturable in a CUDA graph. Shared by the kernel
 * (pd_cuda_attention.cu) and its host-side plan, and tested on the CPU (test_cuda_lean.c).
 */
#ifndef PD_CUDA_LEAN_H
#define PD_CUDA_LEAN_H

#include <stdint.h>

#ifdef __CUDACC__
#define PD_LEAN_FN static __host__ __device__ __forceinline__
#else
#define PD_LEAN_FN static inline
#endif

/* 32-bit throughout, for the kernel's registers: pd_lean_make refuses a plan whose
 * n_tiles * n_blocks does not fit in an int32_t, so no product below overflows. */
typedef struct pd_lean_plan {
  int32_t n_pairs, tiles_per_pair, n_tiles; /* n_tiles = n_pairs * tiles_per_pair */
  int32_t n_blocks;                         /* 1 <= n_blocks <= n_tiles */
  int32_t max_parts;                        /* partials a pair can have, at most */
} pd_lean_plan;

/* The plan for n_pairs pairs of tiles_per_pair tiles on a device that keeps `resident` thread
 * blocks of the kernel at once, each block taking at least min_tiles tiles where there are that
 * many. Returns 0, or -1 (plan untouched) for sizes out of range (the caller then runs the
 * usual split grid). */
PD_LEAN_FN int pd_lean_make(int64_t n_pairs, int64_t tiles_per_pair, int resident, int min_tiles,
                            pd_lean_plan *plan) {
  if (n_pairs < 1 || tiles_per_pair < 1 || resident < 1 || min_tiles < 1 ||
      n_pairs > INT32_MAX / tiles_per_pair)
    return -1;
  const int64_t n_tiles = n_pairs * tiles_per_pair;
  int64_t blocks = n_tiles / min_tiles;
  if (blocks > resident) blocks = resident;
  if (blocks < 1) blocks = 1;
  if (n_tiles > INT32_MAX / blocks) return -1;
  plan->n_pairs = (int32_t)n_pairs, plan->tiles_per_pair = (int32_t)tiles_per_pair;
  plan->n_tiles = (int32_t)n_tiles, plan->n_blocks = (int32_t)blocks;
  /* every run has at least `shortest` tiles, so the starts of runs inside a pair's tiles are at
   * least that far apart: its tiles_per_pair tiles meet at most
   * ceil((tiles_per_pair - 1) / shortest) + 1 runs */
  const int64_t shortest = n_tiles / blocks;
  int64_t parts = (tiles_per_pair - 1 + shortest - 1) / shortest + 1;
  if (parts > blocks) parts = blocks;
  plan->max_parts = (int32_t)parts;
  return 0;
}

/* The first tile of block b's run (b = n_blocks: n_tiles, the end of the last run). */
PD_LEAN_FN int32_t pd_lean_block_start(const pd_lean_plan *plan, int32_t b) {
  return b * plan->n_tiles / plan->n_blocks;
}

/* The block whose run holds tile t: the largest b with b * n_tiles / n_blocks <= t. */
PD_LEAN_FN int32_t pd_lean_block_of(const pd_lean_plan *plan, int32_t t) {
  return ((t + 1) * plan->n_blocks - 1) / plan->n_tiles;
}

/* One segment of block b's run (which ends before tile run_end), from its tile t: the pair, the tiles [t, *seg_end) of it (pair
 * tiles counted from 0 through *first and *last: [*first, *last)), the partial's part index, and
 * whether this segment holds the pair's last tile (its block marks the later parts empty). */
typedef struct pd_lean_segment {
  int32_t pair, seg_end;
  int32_t first, last; /* the segment's tiles within the pair */
  int32_t part;
  int32_t ends_pair;
} pd_lean_segment;

PD_LEAN_FN void pd_lean_segment_at(const pd_lean_plan *plan, int32_t b, int32_t run_end, int32_t t,
                                   pd_lean_segment *s) {
  const int32_t tp = plan->tiles_per_pair;
  s->pair = t / tp;
  const int32_t pair_begin = s->pair * tp, pair_end = pair_begin + tp;
  s->seg_end = run_end < pair_end ? run_end : pair_end;
  s->first = t - pair_begin, s->last = s->seg_end - pair_begin;
  s->part = b - pd_lean_block_of(plan, pair_begin);
  s->ends_pair = s->seg_end == pair_end;
}

#endif
