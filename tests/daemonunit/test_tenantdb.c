/* test_tenantdb.c -- the tenant registry on a real file: keys authenticate and are stored only
 * as digests, everything survives a reopen, a failed write changes nothing, and a malformed
 * file is refused with its line number. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pd_check.h"
#include "pd_err.h"
#include "pd_tenantdb.h"

static char dir[64], path[128];

static void setup(void) {
  snprintf(dir, sizeof dir, "/tmp/pd_tenantdb_XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(dir));
  snprintf(path, sizeof path, "%s/tenants", dir);
}

static void teardown(void) {
  char tmp[160];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  unlink(tmp);
  unlink(path);
  chmod(dir, 0700);
  rmdir(dir);
}

static char *slurp(const char *p) {
  FILE *f = fopen(p, "r");
  ck_assert_ptr_nonnull(f);
  static char buf[8192];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  buf[n] = 0;
  fclose(f);
  return buf;
}

START_TEST(create_authenticate_reopen) {
  pd_tenantdb db;
  char err[256], ka[PD_API_KEY_LEN + 1], kb[PD_API_KEY_LEN + 1];
  ck_assert_int_eq(pd_tenantdb_open(&db, path, err, sizeof err), 0);
  pd_tenant_limits lim = {{10, 20, 30}, 4, 512, 12000, 60};
  ck_assert_int_eq(pd_tenantdb_create(&db, "alpha", &lim, ka), 0);
  ck_assert_int_eq(pd_tenantdb_create(&db, "beta", NULL, kb), 0);
  ck_assert_int_eq(pd_tenantdb_create(&db, "alpha", NULL, kb), PD_EEXIST);
  ck_assert_int_eq(pd_tenantdb_create(&db, "no spaces", NULL, kb), PD_EINVAL);
  ck_assert_int_eq(pd_tenantdb_create(&db, "", NULL, kb), PD_EINVAL);
  ck_assert_uint_eq(strlen(ka), PD_API_KEY_LEN);
  ck_assert_str_ne(ka, kb);
  ck_assert_str_eq(pd_tenantdb_authenticate(&db, ka)->name, "alpha");
  ck_assert_str_eq(pd_tenantdb_authenticate(&db, kb)->name, "beta");
  ck_assert_ptr_null(pd_tenantdb_authenticate(&db, "pfx-000"));
  int created;
  ck_assert_int_eq(pd_tenantdb_grant(&db, "alpha", "team", &created), 0);
  ck_assert_int_eq(created, 1);
  ck_assert_int_eq(pd_tenantdb_grant(&db, "beta", "team", &created), 0);
  ck_assert_int_eq(created, 0);
  ck_assert_int_eq(pd_tenantdb_grant(&db, "nobody", "team", &created), PD_ENOTFOUND);
  uint8_t salt[16];
  memcpy(salt, pd_tenantdb_find(&db, "alpha")->salt, 16);
  /* the file holds digests, never keys */
  const char *text = slurp(path);
  ck_assert_ptr_null(strstr(text, ka));
  ck_assert_ptr_null(strstr(text, ka + 4));
  /* a tenant without rate limits keeps the record's first form (10 fields: older daemons read
   * it); one with them has 12 */
  const char *line_b = strstr(text, "tenant beta ");
  ck_assert_ptr_nonnull(line_b);
  int fields = 0;
  for (const char *p = line_b; *p && *p != '\n'; p++)
    if (*p != ' ' && (p == line_b || p[-1] == ' ')) fields++;
  ck_assert_int_eq(fields, 10);
  ck_assert_ptr_nonnull(strstr(text, " 4 512 12000 60\n"));
  pd_tenantdb_close(&db);
  ck_assert_int_eq(pd_tenantdb_open(&db, path, err, sizeof err), 0);
  ck_assert_uint_eq(db.n_recs, 2);
  const pd_tenant_rec *a = pd_tenantdb_authenticate(&db, ka);
  ck_assert_ptr_nonnull(a);
  ck_assert_mem_eq(a->salt, salt, 16);
  ck_assert_uint_eq(a->limits.max_blocks[2], 30);
  ck_assert_uint_eq(a->limits.max_context, 512);
  ck_assert_uint_eq(a->limits.tokens_per_minute, 12000);
  ck_assert_uint_eq(a->limits.requests_per_minute, 60);
  ck_assert_uint_eq(pd_tenantdb_find(&db, "beta")->limits.tokens_per_minute, 0);
  ck_assert_uint_eq(a->n_grants, 1);
  ck_assert_ptr_nonnull(pd_tenantdb_find_shared(&db, "team"));
  /* rotation: the old key stops working at once */
  char k2[PD_API_KEY_LEN + 1];
  ck_assert_int_eq(pd_tenantdb_rotate(&db, "alpha", k2), 0);
  ck_assert_ptr_null(pd_tenantdb_authenticate(&db, ka));
  ck_assert_str_eq(pd_tenantdb_authenticate(&db, k2)->name, "alpha");
  ck_assert_int_eq(pd_tenantdb_revoke(&db, "alpha", "team"), 0);
  ck_assert_int_eq(pd_tenantdb_revoke(&db, "alpha", "team"), PD_ENOTFOUND);
  ck_assert_int_eq(pd_tenantdb_delete(&db, "beta"), 0);
  ck_assert_ptr_null(pd_tenantdb_authenticate(&db, kb));
  pd_tenantdb_close(&db);
  ck_assert_int_eq(pd_tenantdb_open(&db, path, err, sizeof err), 0);
  ck_assert_uint_eq(db.n_recs, 1);
  ck_assert_uint_eq(db.recs[0].n_grants, 0);
  pd_tenantdb_close(&db);
}
END_TEST

START_TEST(failed_write_changes_nothing) {
  if (geteuid() == 0) { /* root writes into a read-only directory: use a path that cannot be */
    pd_tenantdb db;
    char err[256], k[PD_API_KEY_LEN + 1];
    ck_assert_int_eq(pd_tenantdb_open(&db, "/proc/pd_no_such_dir/tenants", err, sizeof err), 0);
    ck_assert_int_eq(pd_tenantdb_create(&db, "alpha", NULL, k), PD_EIO);
    ck_assert_uint_eq(db.n_recs, 0);
    pd_tenantdb_close(&db);
    return;
  }
  pd_tenantdb db;
  char err[256], k[PD_API_KEY_LEN + 1];
  ck_assert_int_eq(pd_tenantdb_open(&db, path, err, sizeof err), 0);
  ck_assert_int_eq(pd_tenantdb_create(&db, "alpha", NULL, k), 0);
  chmod(dir, 0500);
  ck_assert_int_eq(pd_tenantdb_create(&db, "beta", NULL, k), PD_EIO);
  ck_assert_uint_eq(db.n_recs, 1);
  ck_assert_int_eq(pd_tenantdb_delete(&db, "alpha"), PD_EIO);
  ck_assert_ptr_nonnull(pd_tenantdb_find(&db, "alpha"));
  chmod(dir, 0700);
  pd_tenantdb_close(&db);
}
END_TEST

START_TEST(malformed_file_is_refused) {
  FILE *f = fopen(path, "w");
  fputs("prefixd-tenants 1\nshared team 00112233445566778899aabbccddeeff\ngrant ghost team\n", f);
  fclose(f);
  pd_tenantdb db;
  char err[256];
  ck_assert_int_eq(pd_tenantdb_open(&db, path, err, sizeof err), PD_ECORRUPT);
  ck_assert_ptr_nonnull(strstr(err, "line 3"));
  f = fopen(path, "w");
  fputs("something else\n", f);
  fclose(f);
  ck_assert_int_eq(pd_tenantdb_open(&db, path, err, sizeof err), PD_ECORRUPT);
  ck_assert_ptr_nonnull(strstr(err, "line 1"));
}
END_TEST

int main(void) {
  Suite *s = suite_create("tenantdb");
  TCase *tc = tcase_create("core");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, create_authenticate_reopen);
  tcase_add_test(tc, failed_write_changes_nothing);
  tcase_add_test(tc, malformed_file_is_refused);
  suite_add_tcase(s, tc);
  return pd_check_run(s, 1);
}
