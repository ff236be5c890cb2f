/*
 * test_cuda_lean.c -- the work partition of the lean decode kernel (kernels/cuda/pd_cuda_lean.h),
 * checked on the CPU: the same header functions the kernel runs, walked block by block as
 * decode_lean walks them, over per-sequence tile counts as the kernel computes them (random
 * lengths, sequences without tiles, equal lengths). No GPU needed, so it runs wherever the CUDA
 * backend is built.
 *
 * For every batch of a sweep it checks that:
 *   - the runs of the blocks that have one cover the tiles exactly once, in order, none empty,
 *     each at least min_tiles long where there are that many tiles, no more blocks than launched;
 *   - each segment lies in one pair of a sequence that has tiles, and the (pair, part) slots the
 *     segments write are distinct and below the host's bound pd_lean_max_parts (computed from
 *     the longest pair alone, as the host must), numbered 0, 1, ... in tile order in each pair;
 *   - exactly one segment "ends" each pair, the one holding its last tile, with the pair's
 *     highest part: so the parts it marks empty are exactly the unwritten ones;
 *   - with runs of at least 4 tiles the bound stays within the legacy entry point's workspace.
 * And that the bound is reached where a pair starts 3 tiles into a run of exactly min_tiles, and
 * that the block search holds up to the largest launch the host allows.
 */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_check.h"
#include "pd_cuda_lean.h"

/* Check's ck_assert records every passing check (a write each): far too slow for these loops. */
#define REQUIRE(cond)                                                                              \
  do {                                                                                             \
    if (!(cond)) ck_abort_msg("%s:%d: %s", __FILE__, __LINE__, #cond);                             \
  } while (0)

static uint64_t rng = 99;
static int irand(int n) {
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  return (int)(rng % (uint64_t)n);
}

/* Walks every block of a launch of `launched` blocks over sequences with tiles[s] tiles per pair
 * and pps pairs each; returns the highest part count of a pair (0 when there are no tiles). */
static int walk(const int32_t *tiles, int n_seqs, int pps, int launched, int min_tiles) {
  int32_t *seq_first = malloc(sizeof(int32_t) * (size_t)(n_seqs + 1));
  int32_t longest = 0;
  seq_first[0] = 0;
  for (int s = 0; s < n_seqs; s++) {
    seq_first[s + 1] = seq_first[s] + pps * tiles[s];
    if (tiles[s] > longest) longest = tiles[s];
  }
  const int32_t n = seq_first[n_seqs];
  if (n == 0) {
    free(seq_first);
    return 0;
  }
  const int32_t nb = pd_lean_blocks(n, min_tiles, launched);
  const int32_t mp = pd_lean_max_parts(longest, min_tiles, launched);
  REQUIRE(nb >= 1 && nb <= launched && nb <= n);
  REQUIRE(pd_lean_block_start(n, nb, 0) == 0 && pd_lean_block_start(n, nb, nb) == n);
  const int n_pairs = n_seqs * pps;
  uint8_t *covered = calloc((size_t)n, 1), *written = calloc((size_t)n_pairs * mp, 1);
  int *parts = calloc((size_t)n_pairs, sizeof(int)), *ends = calloc((size_t)n_pairs, sizeof(int));
  int *end_part = calloc((size_t)n_pairs, sizeof(int));
  REQUIRE(covered && written && parts && ends && end_part);
  for (int b = 0; b < nb; b++) {
    const int lo = pd_lean_block_start(n, nb, b), hi = pd_lean_block_start(n, nb, b + 1);
    REQUIRE(hi > lo);
    if (n >= min_tiles) REQUIRE(hi - lo >= min_tiles);
    int prev = -1;
    for (int t = lo; t < hi;) {
      pd_lean_segment s;
      pd_lean_segment_at(seq_first, n_seqs, pps, nb, b, hi, t, &s);
      REQUIRE(s.seq >= 0 && s.seq < n_seqs && tiles[s.seq] > 0);
      REQUIRE(s.pair_in_seq >= 0 && s.pair_in_seq < pps);
      const int pair = s.seq * pps + s.pair_in_seq;
      REQUIRE(pair > prev);
      prev = pair;
      const int32_t pair_begin = seq_first[s.seq] + s.pair_in_seq * tiles[s.seq];
      REQUIRE(s.seg_end > t && s.seg_end <= hi);
      REQUIRE(pair_begin + s.first == t && pair_begin + s.last == s.seg_end);
      REQUIRE(s.last <= tiles[s.seq]);
      for (int k = t; k < s.seg_end; k++) {
        REQUIRE(!covered[k]);
        covered[k] = 1;
      }
      REQUIRE(s.part >= 0 && s.part < mp);
      REQUIRE(!written[(size_t)pair * mp + s.part]);
      written[(size_t)pair * mp + s.part] = 1;
      REQUIRE(s.part == parts[pair]); /* numbered in tile order */
      parts[pair]++;
      if (s.first == 0) REQUIRE(s.part == 0);
      REQUIRE(s.ends_pair == (s.last == tiles[s.seq]));
      if (s.ends_pair) ends[pair]++, end_part[pair] = s.part;
      t = s.seg_end;
    }
  }
  int most = 0;
  for (int k = 0; k < n; k++) REQUIRE(covered[k]);
  for (int q = 0; q < n_pairs; q++) {
    if (!tiles[q / pps]) {
      REQUIRE(parts[q] == 0);
      continue;
    }
    REQUIRE(ends[q] == 1);
    REQUIRE(end_part[q] == parts[q] - 1); /* the parts after it are the unwritten ones */
    if (parts[q] > most) most = parts[q];
  }
  /* the legacy entry point's workspace: ceil(ctx / 128) + 1 parts for contexts up to
   * longest * 32 positions */
  if (min_tiles == 4) REQUIRE(mp <= (longest + 3) / 4 + 1);
  free(seq_first), free(covered), free(written), free(parts), free(ends), free(end_part);
  return most;
}

START_TEST(runs_cover_every_tile_once_and_parts_fit) {
  const int launched[] = {1, 2, 3, 7, 64, 132, 264, 528, 1056};
  const int pps_list[] = {1, 2, 3, 8, 16};
  int32_t tiles[80];
  long batches = 0;
  for (int kind = 0; kind < 3; kind++)
    for (int n_seqs = 1; n_seqs <= 80; n_seqs += (n_seqs < 8 ? 1 : 9))
      for (size_t pi = 0; pi < sizeof pps_list / sizeof *pps_list; pi++)
        for (size_t li = 0; li < sizeof launched / sizeof *launched; li++)
          for (int min_tiles = 1; min_tiles <= 4; min_tiles += 3) {
            /* kind 0: equal lengths; 1: random, some sequences not decoding (0 tiles); 2: short */
            const int len = 1 + irand(130);
            for (int s = 0; s < n_seqs; s++)
              tiles[s] = kind == 0   ? len
                         : kind == 1 ? (irand(4) ? 1 + irand(130) : 0)
                                     : 1 + irand(6);
            const int most = walk(tiles, n_seqs, pps_list[pi], launched[li], min_tiles);
            if (kind != 1) ck_assert_int_gt(most, 0);
            batches++;
          }
  printf("%ld batches walked\n", batches);
  /* the default model's decode shape on an H100: 64 sequences x 3 KV heads of 64 tiles (2,048
   * positions), 528 blocks: 23-24 tiles a run, 4 parts a pair at most; the host's bound for a
   * 2,048-position context is 17 */
  for (int s = 0; s < 64; s++) tiles[s] = 64;
  ck_assert_int_eq(walk(tiles, 64, 3, 528, 4), 4);
  ck_assert_int_eq(pd_lean_max_parts(64, 4, 528), 17);
  ck_assert_int_eq(pd_lean_blocks(64 * 3 * 64, 4, 528), 528);
  /* the bound is reached: runs of exactly 4 tiles, a 66-tile pair starting 3 tiles into one */
  int32_t tight[3] = {3, 66, 3};
  ck_assert_int_eq(walk(tight, 3, 1, 528, 4), pd_lean_max_parts(66, 4, 528));
  ck_assert_int_eq(pd_lean_max_parts(66, 4, 528), 18);
  /* few blocks: the bound is the launch */
  ck_assert_int_eq(pd_lean_max_parts(1000, 4, 7), 7);
  ck_assert_int_eq(pd_lean_max_parts(1, 4, 528), 1);
  /* nothing to do: no tiles, no segment */
  int32_t none[4] = {0, 0, 0, 0};
  ck_assert_int_eq(walk(none, 4, 3, 528, 4), 0);
}
END_TEST

/* The largest launches the host allows (PD_LEAN_MAX_TILES tiles): a tile index times a block
 * count passes 2^31, so the block search must divide in 64 bits before it narrows. */
START_TEST(block_search_holds_at_the_tile_limit) {
  const int32_t launched[3] = {528, 1056, 65535};
  for (int li = 0; li < 3; li++) {
    const int32_t n = PD_LEAN_MAX_TILES, nb = pd_lean_blocks(n, 4, launched[li]);
    ck_assert_int_eq(nb, launched[li]);
    ck_assert_int_eq(pd_lean_block_start(n, nb, nb), n);
    ck_assert_int_eq(pd_lean_block_of(n, nb, n - 1), nb - 1);
    ck_assert_int_eq(pd_lean_block_of(n, nb, 0), 0);
    for (int i = 0; i < 100000; i++) {
      const int32_t t =
          (int32_t)(((uint64_t)irand(1 << 30) << 1 | (uint64_t)irand(2)) % (uint64_t)n);
      const int32_t b = pd_lean_block_of(n, nb, t);
      REQUIRE(b >= 0 && b < nb);
      REQUIRE(pd_lean_block_start(n, nb, b) <= t && t < pd_lean_block_start(n, nb, b + 1));
    }
  }
  /* 4,096 sequences x 8 pairs of 128 tiles, 528 blocks: the segments' parts stay in the bound */
  static int32_t seq_first[4097];
  seq_first[0] = 0;
  for (int s = 0; s < 4096; s++) seq_first[s + 1] = seq_first[s] + 8 * 128;
  const int32_t n = seq_first[4096], nb = pd_lean_blocks(n, 4, 528);
  const int32_t mp = pd_lean_max_parts(128, 4, 528);
  for (int b = 0; b < nb; b++) {
    const int32_t hi = pd_lean_block_start(n, nb, b + 1);
    for (int32_t t = pd_lean_block_start(n, nb, b); t < hi;) {
      pd_lean_segment s;
      pd_lean_segment_at(seq_first, 4096, 8, nb, b, hi, t, &s);
      REQUIRE(s.part >= 0 && s.part < mp);
      t = s.seg_end;
    }
  }
}
END_TEST

int main(void) {
  Suite *s = suite_create("cuda_lean");
  TCase *tc = tcase_create("plan");
  tcase_add_test(tc, runs_cover_every_tile_once_and_parts_fit);
  tcase_add_test(tc, block_search_holds_at_the_tile_limit);
  suite_add_tcase(s, tc);
  return pd_check_run(s, 1);
}
