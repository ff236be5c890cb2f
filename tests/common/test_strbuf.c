/* test_strbuf.c -- pd_strbuf: pieces of every size appended (past several doublings), printf's
 * output whatever its length, the NUL kept, and an empty buffer. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_check.h"
#include "pd_strbuf.h"

START_TEST(pieces_and_printf) {
  pd_strbuf b = {0};
  char want[8192];
  size_t n = 0;
  for (int i = 0; i < 300; i++) {
    char piece[40];
    int k = snprintf(piece, sizeof piece, "%d:", i);
    if (i % 3 == 0) {
      pd_strbuf_printf(&b, "%d:", i);
    } else if (i % 3 == 1) {
      pd_strbuf_puts(&b, piece);
    } else {
      pd_strbuf_put(&b, piece, (size_t)k);
    }
    memcpy(want + n, piece, (size_t)k);
    n += (size_t)k;
  }
  want[n] = 0;
  char big[1000];
  memset(big, 'x', sizeof big - 1);
  big[sizeof big - 1] = 0;
  pd_strbuf_printf(&b, "[%s]", big); /* longer than the room left */
  ck_assert(!b.oom);
  ck_assert_uint_eq(b.n, n + 1001);
  ck_assert_uint_eq(strlen(b.p), b.n);
  ck_assert(!memcmp(b.p, want, n));
  ck_assert(b.p[n] == '[' && b.p[n + 1000] == ']');
  free(b.p);
  pd_strbuf e = {0};
  pd_strbuf_puts(&e, "");
  ck_assert_ptr_nonnull(e.p);
  ck_assert_str_eq(e.p, "");
  free(e.p);
}
END_TEST

int main(void) {
  Suite *s = suite_create("strbuf");
  TCase *tc = tcase_create("strbuf");
  tcase_add_test(tc, pieces_and_printf);
  suite_add_tcase(s, tc);
  return pd_check_run(s, 1);
}
