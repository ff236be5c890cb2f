/*
 * pd_cuda_lean.h -- how a "lean" decode launch cuts its work: one wave of thread blocks, each
 * taking an equal, contiguous run of KV tiles across (sequence, KV head) boundaries.
 *
 * The work is, per sequence s, pairs_per_seq pairs (KV head, chunk of the query-head group) of
 * tiles[s] tiles of DEC_TILE positions each (the sequence's context past the shared prefix,
 * rounded up; 0 for a sequence that is not decoding). They are laid out sequence after
 * sequence, pair after pair: sequence s's tiles start at seq_first[s], the exclusive prefix sum
 * of pairs_per_seq * tiles[], and n_tiles = seq_first[n_seqs]. The kernel computes seq_first
 * from the real context lengths on the device, so the runs are balanced over the batch's real
 * tiles whatever bound the host planned with (the model rounds max_ctx up to a power of two so
 * that a decode graph can be replayed).
 *
 * n_blocks = min(launched, n_tiles / min_tiles) (at least 1): block b takes tiles
 * [b * n_tiles / n_blocks, (b + 1) * n_tiles / n_blocks) (floor division), so every run has at
 * least min_tiles tiles where there are that many; the blocks past n_blocks have nothing to do.
 * A block walks its run one segment at a time (the run's part inside one pair) and writes each
 * segment's softmax partial to the workspace under (pair, part), part = b - the block that holds
 * the pair's first tile. The block that holds a pair's last tile marks the pair's parts after
 * its own empty, so that merge_seq can take a fixed max_parts slots per pair: a pair of at most
 * T tiles meets at most ceil((T - 1) / min_tiles) + 1 runs (pd_lean_max_parts).
 *
 * Shared by the kernel (pd_cuda_attention.cu) and its host-side plan, and tested on the CPU
 * (tests/cuda/test_cuda_lean.c). Products of a tile index and a block count are 64-bit;
 * everything else fits in 32 bits because the host keeps n_tiles below PD_LEAN_MAX_TILES.
 */
#ifndef PD_CUDA_LEAN_H
#define PD_CUDA_LEAN_H

#include <stdint.h>

#ifdef __CUDACC__
#define PD_LEAN_FN static __host__ __device__ __forceinline__
#else
#define PD_LEAN_FN static inline
#endif

#define PD_LEAN_MAX_TILES (INT32_MAX / 2) /* the most tiles a lean launch may have in all */

/* The slots per pair a launch needs when no pair has more than max_tiles_per_pair tiles, with
 * runs of at least min_tiles tiles and at most `launched` blocks. */
PD_LEAN_FN int32_t pd_lean_max_parts(int64_t max_tiles_per_pair, int32_t min_tiles,
                                     int32_t launched) {
  if (max_tiles_per_pair < 1) return 1;
  const int64_t parts = (max_tiles_per_pair - 1 + min_tiles - 1) / min_tiles + 1;
  return (int32_t)(parts < launched ? parts : launched);
}

/* The blocks that take a run (the others of the launch exit): at least one, at most launched. */
PD_LEAN_FN int32_t pd_lean_blocks(int32_t n_tiles, int32_t min_tiles, int32_t launched) {
  const int32_t by_size = n_tiles / min_tiles;
  const int32_t b = by_size < launched ? by_size : launched;
  return b > 1 ? b : 1;
}

/* The first tile of block b's run (b = n_blocks: n_tiles, the end of the last run). */
PD_LEAN_FN int32_t pd_lean_block_start(int32_t n_tiles, int32_t n_blocks, int32_t b) {
  return (int32_t)((int64_t)b * n_tiles / n_blocks);
}

/* The block whose run holds tile t: the largest b with b * n_tiles / n_blocks <= t. */
PD_LEAN_FN int32_t pd_lean_block_of(int32_t n_tiles, int32_t n_blocks, int32_t t) {
  return (int32_t)((((int64_t)t + 1) * n_blocks - 1) / n_tiles);
}

/* One segment of a block's run: its sequence, the pair within the sequence (0 ..
 * pairs_per_seq - 1), its tiles [first, last) within the pair, the end of the segment as a tile
 * index, the partial's part index, and whether it holds the pair's last tile. */
typedef struct pd_lean_segment {
  int32_t seq, pair_in_seq;
  int32_t first, last;
  int32_t seg_end;
  int32_t part;
  int32_t ends_pair;
} pd_lean_segment;

/* The segment of block b's run (which ends before tile run_end) from its tile t < run_end.
 * seq_first: n_seqs + 1 entries, the exclusive prefix sums described at the top. */
PD_LEAN_FN void pd_lean_segment_at(const int32_t *seq_first, int32_t n_seqs, int32_t pairs_per_seq,
                                   int32_t n_blocks, int32_t b, int32_t run_end, int32_t t,
                                   pd_lean_segment *s) {
  /* the sequence: the largest index with seq_first[index] <= t (sequences without tiles have
   * an empty range and are passed over) */
  int32_t lo = 0, hi = n_seqs; /* seq_first[lo] <= t < seq_first[hi] */
  while (hi - lo > 1) {
    const int32_t mid = (lo + hi) / 2;
    if (seq_first[mid] <= t)
      lo = mid;
    else
      hi = mid;
  }
  const int32_t n_tiles = seq_first[n_seqs];
  const int32_t tiles = (seq_first[lo + 1] - seq_first[lo]) / pairs_per_seq;
  s->seq = lo;
  s->pair_in_seq = (t - seq_first[lo]) / tiles;
  const int32_t pair_begin = seq_first[lo] + s->pair_in_seq * tiles, pair_end = pair_begin + tiles;
  s->seg_end = run_end < pair_end ? run_end : pair_end;
  s->first = t - pair_begin, s->last = s->seg_end - pair_begin;
  s->part = b - pd_lean_block_of(n_tiles, n_blocks, pair_begin);
  s->ends_pair = s->seg_end == pair_end;
}

#endif
