/*
 * test_cuda_lean.c -- the work partition of the lean decode kernel (kernels/cuda/pd_cuda_lean.h),
 * checked on the CPU: the same header functions the kernel runs, walked block by block as
 * decode_lean walks them. No GPU needed, so it runs wherever the CUDA backend is built.
 *
 * For every plan of a sweep of sizes it checks that:
 *   - the blocks' runs cover the tiles exactly once, in order, none empty, no more blocks than
 *     resident, each run at least min_tiles long where there are that many tiles;
 *   - each segment lies in one pair, and the (pair, part) slots the segments write are distinct
 *     and below max_parts, numbered 0, 1, ... in tile order inside each pair;
 *   - exactly one segment of each pair "ends" it, the one holding the pair's last tile, and its
 *     part is the pair's highest: so the parts it marks empty are exactly the unwritten ones;
 *   - max_parts is reached by some pair where the bound is tight (it is not a loose guess).
 * And that plans whose products would overflow 32 bits are refused.
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

/* Walks every block of the plan as decode_lean does; returns the highest part count of a pair. */
static int walk_plan(const pd_lean_plan *p, int resident, int min_tiles) {
  const int n = p->n_tiles, np = p->n_pairs, mp = p->max_parts;
  REQUIRE(p->n_blocks >= 1);
  REQUIRE(p->n_blocks <= resident);
  REQUIRE(p->n_blocks <= n);
  REQUIRE(pd_lean_block_start(p, 0) == 0);
  REQUIRE(pd_lean_block_start(p, p->n_blocks) == n);
  uint8_t *covered = calloc((size_t)n, 1);
  uint8_t *written = calloc((size_t)np * mp, 1);
  int *parts = calloc((size_t)np, sizeof(int)), *ends = calloc((size_t)np, sizeof(int));
  int *end_part = calloc((size_t)np, sizeof(int));
  REQUIRE(covered && written && parts && ends && end_part);
  for (int b = 0; b < p->n_blocks; b++) {
    const int lo = pd_lean_block_start(p, b), hi = pd_lean_block_start(p, b + 1);
    REQUIRE(hi > lo);
    if (n >= min_tiles) REQUIRE(hi - lo >= min_tiles);
    int prev_pair = -1;
    for (int t = lo; t < hi;) {
      pd_lean_segment s;
      pd_lean_segment_at(p, b, hi, t, &s);
      REQUIRE(s.seg_end > t);
      REQUIRE(s.seg_end <= hi);
      REQUIRE(s.pair > prev_pair);
      prev_pair = s.pair;
      /* the segment is tiles [first, last) of its pair */
      REQUIRE(s.pair * p->tiles_per_pair + s.first == t);
      REQUIRE(s.pair * p->tiles_per_pair + s.last == s.seg_end);
      REQUIRE(s.last <= p->tiles_per_pair);
      for (int k = t; k < s.seg_end; k++) {
        if (covered[k]) ck_abort_msg("tile %d covered twice", k);
        covered[k] = 1;
      }
      REQUIRE(s.part >= 0);
      REQUIRE(s.part < mp);
      REQUIRE(written[(size_t)s.pair * mp + s.part] == 0);
      written[(size_t)s.pair * mp + s.part] = 1;
      /* parts are numbered in tile order: the next one of the pair */
      REQUIRE(s.part == parts[s.pair]);
      parts[s.pair]++;
      if (s.first == 0) REQUIRE(s.part == 0);
      REQUIRE(s.ends_pair == (s.last == p->tiles_per_pair));
      if (s.ends_pair) ends[s.pair]++, end_part[s.pair] = s.part;
      t = s.seg_end;
    }
  }
  int most = 0;
  for (int k = 0; k < n; k++)
    if (!covered[k]) ck_abort_msg("tile %d not covered", k);
  for (int q = 0; q < np; q++) {
    REQUIRE(ends[q] == 1);
    REQUIRE(end_part[q] == parts[q] - 1); /* the parts after it are the unwritten ones */
    if (parts[q] > most) most = parts[q];
  }
  free(covered), free(written), free(parts), free(ends), free(end_part);
  return most;
}

START_TEST(runs_cover_every_tile_once_and_parts_fit) {
  const int residents[] = {1, 2, 3, 7, 64, 132, 264, 396, 528, 1056};
  const int min_tiles[] = {1, 4};
  long plans = 0, tight = 0;
  for (int np = 1; np <= 70; np += (np < 8 ? 1 : 9))
    for (int tp = 1; tp <= 130; tp += (tp < 6 ? 1 : 17))
      for (size_t r = 0; r < sizeof residents / sizeof *residents; r++)
        for (int m = 0; m < 2; m++) {
          pd_lean_plan p;
          ck_assert_int_eq(pd_lean_make(np, tp, residents[r], min_tiles[m], &p), 0);
          ck_assert_int_eq(p.n_tiles, np * tp);
          const int most = walk_plan(&p, residents[r], min_tiles[m]);
          /* what the legacy entry point's workspace holds: ceil(ctx / 128) + 1 parts a pair,
           * for contexts up to tp * 32 positions (runs of at least 4 tiles) */
          if (min_tiles[m] == 4) ck_assert_int_le(p.max_parts, (tp + 3) / 4 + 1);
          ck_assert_int_le(most, p.max_parts);
          plans++, tight += most == p.max_parts;
        }
  /* the default model's decode shape on an H100: 64 sequences x 3 KV heads, 2,048 positions,
   * 4 blocks an SM on 132 SMs: 528 runs of 23-24 tiles, at most 4 partials a pair */
  pd_lean_plan p;
  ck_assert_int_eq(pd_lean_make(192, 64, 528, 4, &p), 0);
  ck_assert_int_eq(p.n_blocks, 528);
  ck_assert_int_eq(p.max_parts, 4);
  walk_plan(&p, 528, 4);
  /* one short sequence: no run below 4 tiles (128 positions), so few blocks */
  ck_assert_int_eq(pd_lean_make(3, 10, 528, 4, &p), 0);
  ck_assert_int_eq(p.n_blocks, 7);
  walk_plan(&p, 528, 4);
  printf("%ld plans walked; max_parts reached in %ld\n", plans, tight);
  ck_assert_int_gt(tight * 2, plans); /* the bound is met in most plans, not just safe */
}
END_TEST

START_TEST(plans_out_of_range_are_refused) {
  pd_lean_plan p;
  memset(&p, 0x5a, sizeof p);
  const pd_lean_plan before = p;
  ck_assert_int_eq(pd_lean_make(0, 4, 528, 4, &p), -1);
  ck_assert_int_eq(pd_lean_make(4, 0, 528, 4, &p), -1);
  ck_assert_int_eq(pd_lean_make(4, 4, 0, 4, &p), -1);
  ck_assert_int_eq(pd_lean_make(4, 4, 528, 0, &p), -1);
  ck_assert_int_eq(pd_lean_make(INT32_MAX, 2, 528, 4, &p), -1); /* n_tiles over 32 bits */
  ck_assert_int_eq(pd_lean_make(1 << 20, 64, 528, 4, &p), -1);  /* n_tiles * n_blocks over */
  ck_assert(!memcmp(&p, &before, sizeof p));
  /* the largest that fits: its products stay below 2^31 */
  ck_assert_int_eq(pd_lean_make(1 << 12, 64, 528, 4, &p), 0);
  ck_assert_int_le((int64_t)p.n_tiles * p.n_blocks, INT32_MAX);
  ck_assert_int_eq(pd_lean_block_of(&p, p.n_tiles - 1), p.n_blocks - 1);
}
END_TEST

int main(void) {
  Suite *s = suite_create("cuda_lean");
  TCase *tc = tcase_create("plan");
  tcase_add_test(tc, runs_cover_every_tile_once_and_parts_fit);
  tcase_add_test(tc, plans_out_of_range_are_refused);
  suite_add_tcase(s, tc);
  return pd_check_run(s, 1);
}
