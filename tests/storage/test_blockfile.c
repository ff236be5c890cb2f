/*
 * test_blockfile.c -- the disk tier's payload file on a real file: page allocation (next-fit,
 * growth up to the limit, reuse of freed runs, claims), and writes and reads of every shape the
 * writer has a path for (page-aligned whole pages straight from the caller, anything else through
 * the bounce buffer, pieces larger than the bounce buffer, more adjacent extents than one
 * pwritev takes, partial last pages), with O_DIRECT and through the page cache.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "pd_blockfile.h"
#include "pd_check.h"
#include "pd_err.h"

static char dir[256], path[300];

static void make_dir(void) {
  snprintf(dir, sizeof dir, "/tmp/pd_blockfile_test.XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(dir));
  snprintf(path, sizeof path, "%s/blocks.dat", dir);
}

static void remove_dir(void) {
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  ck_assert_int_eq(system(cmd), 0);
}

static pd_blockfile *open_file(int direct) {
  pd_blockfile *f = NULL;
  char err[200] = "";
  int rc = pd_blockfile_open(path, direct, &f, err, sizeof err);
  ck_assert_msg(rc == 0, "open: %s (%s)", pd_strerror(rc), err);
  return f;
}

START_TEST(allocation_grows_reuses_and_stops_at_the_limit) {
  make_dir();
  pd_blockfile *f = open_file(1);
  uint64_t a, b, c, used, pages;
  ck_assert_int_eq(pd_blockfile_alloc(f, 0, 100, &a), PD_EINVAL);
  ck_assert_int_eq(pd_blockfile_alloc(f, 3, 100, &a), 0);
  ck_assert_int_eq(pd_blockfile_alloc(f, 2, 100, &b), 0);
  ck_assert_uint_eq(a, 0);
  ck_assert_uint_eq(b, 3); /* adjacent: a batch's extents go out in one write */
  pd_blockfile_usage(f, &used, &pages);
  ck_assert_uint_eq(used, 5);
  ck_assert_uint_eq(pages, 6); /* grown by a sixteenth of the limit */
  struct stat st;
  ck_assert_int_eq(stat(path, &st), 0);
  ck_assert_int_eq(st.st_size, 6 * PD_BLOCKFILE_PAGE);

  /* fill to the limit: 95 pages are left */
  uint64_t got = 0;
  while (pd_blockfile_alloc(f, 5, 100, &c) == 0) got += 5;
  ck_assert_uint_eq(got, 95);
  ck_assert_int_eq(pd_blockfile_alloc(f, 1, 100, &c), PD_EFULL);
  pd_blockfile_usage(f, NULL, &pages);
  ck_assert_uint_eq(pages, 100);
  /* a freed run in the middle is found again; a larger request still does not fit */
  pd_blockfile_release(f, 40, 5);
  ck_assert_int_eq(pd_blockfile_alloc(f, 6, 100, &c), PD_EFULL);
  ck_assert_int_eq(pd_blockfile_alloc(f, 5, 100, &c), 0);
  ck_assert_uint_eq(c, 40);
  /* a higher limit lets the file grow; the free tail is used first */
  pd_blockfile_release(f, 97, 3);
  ck_assert_int_eq(pd_blockfile_alloc(f, 10, 1000, &c), 0);
  ck_assert_uint_eq(c, 97);
  pd_blockfile_usage(f, &used, &pages);
  ck_assert_uint_eq(used, 107);
  ck_assert_uint_eq(pages, 100 + 62);
  /* claims: in use, or past the file, are refused and mark nothing */
  ck_assert_int_eq(pd_blockfile_claim(f, 0, 1), PD_EEXIST);
  ck_assert_int_eq(pd_blockfile_claim(f, 161, 2), PD_ERANGE);
  ck_assert_int_eq(pd_blockfile_claim(f, 150, 4), 0);
  ck_assert_int_eq(pd_blockfile_claim(f, 148, 3), PD_EEXIST);
  pd_blockfile_usage(f, &used, NULL);
  ck_assert_uint_eq(used, 111);
  /* a lower limit than the file (a lowered budget): nothing is placed at or above it */
  pd_blockfile_release(f, 0, 3);
  pd_blockfile_release(f, 150, 4);
  ck_assert_int_eq(pd_blockfile_alloc(f, 4, 107, &c), PD_EFULL);
  ck_assert_int_eq(pd_blockfile_alloc(f, 3, 107, &c), 0);
  ck_assert_uint_eq(c, 0);
  pd_blockfile_release(f, 0, 3);
  /* trimming keeps the pages in use: 150..153 are free now, the last used page is 106 */
  ck_assert_int_eq(pd_blockfile_trim(f, 120), 0);
  pd_blockfile_usage(f, &used, &pages);
  ck_assert_uint_eq(pages, 120);
  ck_assert_int_eq(pd_blockfile_trim(f, 10), 0);
  pd_blockfile_usage(f, NULL, &pages);
  ck_assert_uint_eq(pages, 107);
  ck_assert_int_eq(stat(path, &st), 0);
  ck_assert_int_eq(st.st_size, 107 * PD_BLOCKFILE_PAGE);
  ck_assert_int_eq(pd_blockfile_alloc(f, 100, 207, &c), 0); /* grows again */
  ck_assert_uint_eq(c, 107);
  pd_blockfile_close(f);

  /* reopened: the file keeps its size, the map starts empty (the owner's index fills it) */
  f = open_file(1);
  pd_blockfile_usage(f, &used, &pages);
  ck_assert_uint_eq(used, 0);
  ck_assert_uint_eq(pages, 207);
  ck_assert_int_eq(pd_blockfile_claim(f, 0, 207), 0);
  ck_assert_int_eq(pd_blockfile_alloc(f, 1, 207, &c), PD_EFULL);
  pd_blockfile_close(f);
  remove_dir();
}
END_TEST

/* Byte j of extent i. */
static uint8_t pattern(size_t i, size_t j) {
  return (uint8_t)(i * 131 + j * 7 + (j >> 12));
}

static void roundtrip(int direct) {
  make_dir();
  pd_blockfile *f = open_file(direct);
  if (direct) ck_assert_int_eq(pd_blockfile_direct(f), 1); /* /tmp takes O_DIRECT here */
  /* sizes that take every path: tiny, one byte short of / over a page, whole pages, the default
   * model's f16 and fp8 blocks, a piece larger than the bounce buffer; then 1,500 page-sized
   * adjacent extents (more than one pwritev takes) */
  const size_t sizes[] = {1, 4095, 4096, 4097, 368640, 195840, (17u << 20) + 123, 8192};
  enum { N_SHAPED = 8, N_SMALL = 1500, N = N_SHAPED + N_SMALL };
  pd_blockfile_extent *ext = calloc(N, sizeof *ext);
  uint8_t **bufs = calloc(N, sizeof *bufs);
  for (size_t i = 0; i < N; i++) {
    size_t n = i < N_SHAPED ? sizes[i] : PD_BLOCKFILE_PAGE;
    /* even extents start page-aligned, odd ones one byte past */
    uint8_t *base;
    ck_assert_int_eq(posix_memalign((void **)&base, PD_BLOCKFILE_PAGE, n + 1), 0);
    bufs[i] = base;
    uint8_t *src = base + (i % 2);
    for (size_t j = 0; j < n; j++) src[j] = pattern(i, j);
    ext[i].src = src;
    ext[i].n_bytes = n;
    uint64_t hole;
    if (i == 4) /* a page nobody writes: the batch is two runs of adjacent extents */
      ck_assert_int_eq(pd_blockfile_alloc(f, 1, 1u << 20, &hole), 0);
    ck_assert_int_eq(pd_blockfile_alloc(f, pd_blockfile_pages(n), 1u << 20, &ext[i].page), 0);
  }
  ck_assert_int_eq(pd_blockfile_write(f, ext, N), 0);
  ck_assert_int_eq(pd_blockfile_sync(f), 0);
  /* an extent past the end of the file is refused */
  pd_blockfile_extent far = {1u << 30, bufs[0], 1};
  ck_assert_int_eq(pd_blockfile_write(f, &far, 1), PD_EINVAL);
  pd_blockfile_close(f);

  f = open_file(direct);
  for (size_t i = 0; i < N; i++) {
    size_t n = ext[i].n_bytes;
    for (int aligned = 0; aligned < 2; aligned++) {
      uint8_t *base;
      ck_assert_int_eq(posix_memalign((void **)&base, PD_BLOCKFILE_PAGE, n + 1), 0);
      uint8_t *dst = base + (aligned ? 0 : 1);
      memset(dst, 0xee, n);
      ck_assert_int_eq(pd_blockfile_read(f, ext[i].page, dst, n), 0);
      for (size_t j = 0; j < n; j++)
        if (dst[j] != pattern(i, j))
          ck_abort_msg("extent %zu (%zu bytes, %s buffer): byte %zu is %u, want %u", i, n,
                       aligned ? "aligned" : "unaligned", j, dst[j], pattern(i, j));
      free(base);
    }
  }
  /* the padding after a partial page reads back as zeros */
  uint8_t *page;
  ck_assert_int_eq(posix_memalign((void **)&page, PD_BLOCKFILE_PAGE, PD_BLOCKFILE_PAGE), 0);
  ck_assert_int_eq(pd_blockfile_read(f, ext[0].page, page, PD_BLOCKFILE_PAGE), 0);
  ck_assert_uint_eq(page[0], pattern(0, 0));
  for (size_t j = 1; j < PD_BLOCKFILE_PAGE; j++) ck_assert_uint_eq(page[j], 0);
  /* reading past the end of the file: the index named bytes the file does not have */
  uint64_t pages;
  pd_blockfile_usage(f, NULL, &pages);
  ck_assert_int_eq(pd_blockfile_read(f, pages, page, 10), PD_ECORRUPT);
  free(page);
  pd_blockfile_close(f);
  for (size_t i = 0; i < N; i++) free(bufs[i]);
  free(bufs);
  free(ext);
  remove_dir();
}

START_TEST(write_read_roundtrip_direct) {
  roundtrip(1);
}
END_TEST

START_TEST(write_read_roundtrip_page_cache) {
  roundtrip(0);
}
END_TEST

/* On a 1 MiB tmpfs, where no growth step of the limit fits: the file still grows by what each
 * allocation needs until the file system is full, then says ENOSPC. Needs root and mount rights;
 * says so and passes without them. */
START_TEST(a_nearly_full_file_system_is_used_to_the_end) {
  make_dir();
  char cmd[400];
  snprintf(cmd, sizeof cmd, "mount -t tmpfs -o size=1m tmpfs %s 2>/dev/null", dir);
  if (system(cmd) != 0) {
    fprintf(stderr, "a_nearly_full_file_system_is_used_to_the_end: cannot mount a tmpfs here "
                    "(needs root and mount rights): not run\n");
    remove_dir();
    return;
  }
  pd_blockfile *f = open_file(1);
  uint64_t page, got = 0;
  int rc;
  while ((rc = pd_blockfile_alloc(f, 1, 1u << 20, &page)) == 0) got++;
  ck_assert_int_eq(rc, PD_ENOSPC);
  ck_assert_uint_ge(got, 250); /* of the 256 pages of 1 MiB */
  uint8_t *buf;
  ck_assert_int_eq(posix_memalign((void **)&buf, PD_BLOCKFILE_PAGE, PD_BLOCKFILE_PAGE), 0);
  memset(buf, 0x5a, PD_BLOCKFILE_PAGE);
  pd_blockfile_extent last = {page, buf, PD_BLOCKFILE_PAGE};
  ck_assert_int_eq(pd_blockfile_write(f, &last, 1), 0); /* the last page is really there */
  free(buf);
  pd_blockfile_close(f);
  snprintf(cmd, sizeof cmd, "umount %s", dir);
  ck_assert_int_eq(system(cmd), 0);
  remove_dir();
}
END_TEST

START_TEST(a_missing_directory_is_a_clear_error) {
  pd_blockfile *f = (pd_blockfile *)1;
  char err[200] = "";
  int rc = pd_blockfile_open("/nonexistent-prefixd/blocks.dat", 1, &f, err, sizeof err);
  ck_assert_int_eq(rc, PD_ENOTFOUND);
  ck_assert_ptr_null(f);
  ck_assert_msg(strstr(err, "/nonexistent-prefixd/blocks.dat") != NULL, "err: %s", err);
}
END_TEST

int main(void) {
  Suite *s = suite_create("blockfile");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, allocation_grows_reuses_and_stops_at_the_limit);
  tcase_add_test(tc, write_read_roundtrip_direct);
  tcase_add_test(tc, write_read_roundtrip_page_cache);
  tcase_add_test(tc, a_nearly_full_file_system_is_used_to_the_end);
  tcase_add_test(tc, a_missing_directory_is_a_clear_error);
  suite_add_tcase(s, tc);
  return pd_check_run(s, 1);
}
