/* test_speculate.c -- prompt-lookup drafts (the longest n-gram, the most recent occurrence, a
 * loop drafted as its period, the search window), the acceptance record, the step cost fit and
 * the draft length choice. The engine's use of them is tested end to end in
 * tests/daemon/test_speculate.py. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "pd_check.h"
#include "pd_speculate.h"

START_TEST(no_match_no_draft) {
  int32_t t[] = {1, 2, 3, 4, 5, 6, 7}, d[8];
  ck_assert_int_eq(pd_spec_draft(t, 7, 8, d), 0);
  ck_assert_int_eq(pd_spec_draft(t, 0, 8, d), 0);
  ck_assert_int_eq(pd_spec_draft(t, 2, 8, d), 0);
  /* the last token alone occurred before: a 1-gram is not enough */
  int32_t u[] = {9, 5, 1, 2, 3, 5};
  ck_assert_int_eq(pd_spec_draft(u, 6, 4, d), 0);
  int32_t v[] = {4, 5, 6, 4, 5}; /* a 2-gram is */
  ck_assert_int_eq(pd_spec_draft(v, 5, 0, d), 0);
  ck_assert_int_eq(pd_spec_draft(v, 5, 2, d), 2);
  ck_assert_int_eq(d[0], 6);
  ck_assert_int_eq(d[1], 4);
}
END_TEST

START_TEST(what_followed_is_drafted) {
  /* "10 11 12 13 14 15 ... 10 11 12": 13 14 15 followed */
  int32_t t[] = {10, 11, 12, 13, 14, 15, 16, 17, 99, 98, 10, 11, 12}, d[4];
  ck_assert_int_eq(pd_spec_draft(t, 13, 4, d), 4);
  int32_t want[] = {13, 14, 15, 16};
  ck_assert_mem_eq(d, want, sizeof want);
}
END_TEST

START_TEST(longest_ngram_wins_then_most_recent) {
  /* "1 2 3" then 50; later "7 2 3" then 60; the end "1 2 3": the 3-gram's 50 beats the more
   * recent 2-gram's 60 */
  int32_t t[] = {1, 2, 3, 50, 51, 7, 2, 3, 60, 61, 1, 2, 3}, d[2];
  ck_assert_int_eq(pd_spec_draft(t, 13, 2, d), 2);
  ck_assert_int_eq(d[0], 50);
  ck_assert_int_eq(d[1], 51);
  /* two equal 2-gram matches: the most recent */
  int32_t u[] = {8, 2, 3, 40, 9, 2, 3, 41, 6, 2, 3}, e[1];
  ck_assert_int_eq(pd_spec_draft(u, 11, 1, e), 1);
  ck_assert_int_eq(e[0], 41);
}
END_TEST

START_TEST(a_loop_drafts_its_period) {
  int32_t t[] = {5, 1, 2, 3, 1, 2, 3, 1, 2}, d[7];
  ck_assert_int_eq(pd_spec_draft(t, 9, 7, d), 7);
  int32_t want[] = {3, 1, 2, 3, 1, 2, 3};
  ck_assert_mem_eq(d, want, sizeof want);
  int32_t r[] = {4, 4, 4}, e[5]; /* one token repeated: a period of 1 */
  ck_assert_int_eq(pd_spec_draft(r, 3, 5, e), 5);
  for (int i = 0; i < 5; i++) ck_assert_int_eq(e[i], 4);
}
END_TEST

START_TEST(draft_is_capped) {
  int32_t t[64], d[PD_SPEC_DRAFT_MAX + 8];
  for (int i = 0; i < 64; i++) t[i] = i % 32;
  memset(d, 0x7f, sizeof d);
  ck_assert_int_eq(pd_spec_draft(t, 64, PD_SPEC_DRAFT_MAX + 8, d), PD_SPEC_DRAFT_MAX);
  ck_assert_int_eq(d[PD_SPEC_DRAFT_MAX], 0x7f7f7f7f); /* nothing written past the cap */
  ck_assert_int_eq(d[0], 0);
}
END_TEST

START_TEST(search_stays_in_its_window) {
  uint32_t n = PD_SPEC_WINDOW + 100;
  int32_t *t = malloc(n * sizeof *t), d[2];
  ck_assert_ptr_nonnull(t);
  for (uint32_t i = 0; i < n; i++) t[i] = 1000 + (int32_t)i; /* all different */
  t[10] = 7, t[11] = 8, t[12] = 9;                           /* before the window */
  t[n - 2] = 7, t[n - 1] = 8;
  ck_assert_int_eq(pd_spec_draft(t, n, 2, d), 0);
  t[n - 60] = 7, t[n - 59] = 8, t[n - 58] = 42; /* inside it */
  ck_assert_int_eq(pd_spec_draft(t, n, 2, d), 2);
  ck_assert_int_eq(d[0], 42);
  free(t);
}
END_TEST

START_TEST(acceptance_record) {
  pd_spec_seq s, c;
  pd_spec_seq_init(&s, 0.5);
  pd_spec_seq_init(&c, 0.8);
  ck_assert(fabs(pd_spec_seq_rate(&s) - 0.5) < 1e-12);
  ck_assert(fabs(pd_spec_seq_rate(&c) - 0.8) < 1e-12);
  /* an all-rejecting record relaxes back towards its own prior */
  for (int i = 0; i < 60; i++) pd_spec_seq_note(&c, 4, 0);
  ck_assert(pd_spec_seq_rate(&c) < 0.1);
  for (int i = 0; i < 1000; i++) pd_spec_seq_skip(&c);
  ck_assert(pd_spec_seq_rate(&c) > 0.75 && pd_spec_seq_rate(&c) <= 0.8 + 1e-9);
  for (int i = 0; i < 20; i++) pd_spec_seq_note(&s, 8, 8);
  ck_assert(pd_spec_seq_rate(&s) > 0.95);
  for (int i = 0; i < 60; i++) pd_spec_seq_note(&s, 4, 0);
  double low = pd_spec_seq_rate(&s);
  ck_assert(low < 0.1);
  /* skipped drafts relax it towards the prior, never past it */
  for (int i = 0; i < 500; i++) pd_spec_seq_skip(&s);
  ck_assert(pd_spec_seq_rate(&s) > low);
  ck_assert(pd_spec_seq_rate(&s) <= 0.5 + 1e-9);
  ck_assert(pd_spec_seq_rate(&s) > 0.45);
}
END_TEST

START_TEST(cost_fit) {
  pd_spec_cost c;
  pd_spec_cost_init(&c);
  double dflt = pd_spec_cost_row_ratio(&c);
  for (int i = 0; i < 50; i++) pd_spec_cost_note(&c, 1, 0.004);
  ck_assert(pd_spec_cost_row_ratio(&c) == dflt); /* one size only: nothing to fit */
  /* t = 3 ms + 1 ms per row */
  for (int i = 0; i < 200; i++) pd_spec_cost_note(&c, 1 + i % 9, 0.003 + 0.001 * (1 + i % 9));
  ck_assert(fabs(pd_spec_cost_row_ratio(&c) - 1.0 / 3.0) < 1e-3);
  pd_spec_cost_note(&c, 0, 1.0); /* ignored */
  pd_spec_cost_note(&c, 4, NAN);
  ck_assert(fabs(pd_spec_cost_row_ratio(&c) - 1.0 / 3.0) < 1e-3);
  /* rows that cost nothing, or everything */
  pd_spec_cost_init(&c);
  for (int i = 0; i < 100; i++) pd_spec_cost_note(&c, 1 + i % 4, 0.01);
  ck_assert(pd_spec_cost_row_ratio(&c) <= 0.01 + 1e-12);
  pd_spec_cost_init(&c);
  for (int i = 0; i < 100; i++) pd_spec_cost_note(&c, 1 + i % 4, 0.01 * (1 + i % 4));
  ck_assert(pd_spec_cost_row_ratio(&c) >= 1.5 - 1e-12);
}
END_TEST

START_TEST(choice) {
  ck_assert(fabs(pd_spec_expected(0.5, 0) - 1.0) < 1e-12);
  ck_assert(fabs(pd_spec_expected(0.5, 2) - 1.75) < 1e-12);
  ck_assert(fabs(pd_spec_expected(1.0, 8) - 9.0) < 1e-12);
  /* one sequence, rows a third of the fixed cost each */
  const double r = 1.0 / 3.0, t1 = 1.0 + r;
  ck_assert_int_eq(pd_spec_choose(0.0, 8, 1.0, t1, r), 0);
  ck_assert_int_eq(pd_spec_choose(0.2, 8, 1.0, t1, r), 0);
  ck_assert_int_eq(pd_spec_choose(1.0, 8, 1.0, t1, r), 8);
  int mid = pd_spec_choose(0.8, 8, 1.0, t1, r);
  ck_assert(mid > 0 && mid < 8);
  /* the best k by brute force */
  double best = 1.0 / t1;
  int best_k = 0;
  for (int k = 1; k <= 8; k++) {
    double v = pd_spec_expected(0.8, k) / (t1 + r * k);
    if (v > best) best = v, best_k = k;
  }
  ck_assert_int_eq(mid, best_k);
  /* in a batch of 32 the same draft is worth less */
  const double t32 = 1.0 + 32 * r;
  ck_assert_int_lt(pd_spec_choose(0.8, 8, 32.0, t32, r), mid);
  /* cheap rows (a GPU-like ratio): even a poor draft pays */
  ck_assert_int_gt(pd_spec_choose(0.3, 8, 1.0, 1.01, 0.01), 0);
  ck_assert_int_eq(pd_spec_choose(0.9, 0, 1.0, t1, r), 0);
}
END_TEST

int main(void) {
  Suite *s = suite_create("speculate");
  TCase *tc = tcase_create("speculate");
  tcase_add_test(tc, no_match_no_draft);
  tcase_add_test(tc, what_followed_is_drafted);
  tcase_add_test(tc, longest_ngram_wins_then_most_recent);
  tcase_add_test(tc, a_loop_drafts_its_period);
  tcase_add_test(tc, draft_is_capped);
  tcase_add_test(tc, search_stays_in_its_window);
  tcase_add_test(tc, acceptance_record);
  tcase_add_test(tc, cost_fit);
  tcase_add_test(tc, choice);
  suite_add_tcase(s, tc);
  return pd_check_run(s, 1);
}
