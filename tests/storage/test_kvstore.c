/*
 * test_kvstore.c -- the disk tier (LMDB index, payloads in blocks.dat): round trips,
 * persistence, checksums of payloads and tokens, foreign fingerprints, a real full budget with
 * eviction and reuse of the freed pages across a restart, index entries that name bad pages, a
 * format-1 store read in place, injected faults (ENOSPC, EIO, MAP_FULL) looped over the N-th
 * failure, and a kill -9 crash loop in which every committed block must survive and verify.
 */
#include <check.h>
#include <fcntl.h>
#include <lmdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include "pd_check.h"
#include "pd_err.h"
#include "pd_fault.h"
#include "pd_kvstore.h"

#define BT      16
#define PAYLOAD 4096

static char dir[256];

static void make_dir(void) {
  snprintf(dir, sizeof dir, "/tmp/pd_kvstore_test.XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void remove_dir(void) {
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  ck_assert_int_eq(system(cmd), 0);
}

static pd_kvstore *open_store(uint8_t fp_byte, uint64_t map_bytes,
                              enum pd_kvstore_foreign foreign) {
  pd_kvstore_config cfg = {.dir = dir, .map_bytes = map_bytes, .foreign = foreign};
  memset(cfg.fingerprint, fp_byte, 16);
  pd_kvstore *s = NULL;
  char err[200] = "";
  int rc = pd_kvstore_open(&cfg, &s, err, sizeof err);
  ck_assert_msg(rc == 0, "open: %s (%s)", pd_strerror(rc), err);
  return s;
}

/* Block i with a payload of n_bytes: key (i + 1, (i + 1) * 7), tokens i*16.., payload bytes
 * derived from i. */
static void fill_block_of(uint64_t i, pd_kvstore_block *b, int32_t *tokens, uint8_t *payload,
                          uint32_t n_bytes) {
  for (int t = 0; t < BT; t++) tokens[t] = (int32_t)(i * BT + (uint64_t)t);
  for (uint32_t p = 0; p < n_bytes; p++) payload[p] = (uint8_t)(i * 31 + (uint64_t)p * 7);
  *b = (pd_kvstore_block){.key = {i + 1, (i + 1) * 7},
                          .parent = {i, i * 7},
                          .namespace_id = 3,
                          .block_tokens = BT,
                          .dtype = 1,
                          .tokens = tokens,
                          .n_tokens = BT,
                          .payload = payload,
                          .payload_bytes = n_bytes};
}

static void fill_block(uint64_t i, pd_kvstore_block *b, int32_t *tokens, uint8_t *payload) {
  fill_block_of(i, b, tokens, payload, PAYLOAD);
}

static int put_range(pd_kvstore *s, uint64_t first, uint64_t n) {
  pd_kvstore_block *b = calloc(n, sizeof *b);
  int32_t *tok = calloc(n * BT, sizeof *tok);
  uint8_t *pay = calloc(n, PAYLOAD);
  for (uint64_t i = 0; i < n; i++) fill_block(first + i, &b[i], tok + i * BT, pay + i * PAYLOAD);
  int rc = pd_kvstore_put_batch(s, b, n);
  free(b), free(tok), free(pay);
  return rc;
}

/* Returns 0 if block i is present and exact, PD_ENOTFOUND if absent, else the error. */
static int check_block(pd_kvstore *s, uint64_t i) {
  int32_t want_tok[BT], got_tok[BT];
  uint8_t want_pay[PAYLOAD], got_pay[PAYLOAD];
  pd_kvstore_block b;
  fill_block(i, &b, want_tok, want_pay);
  pd_kvstore_hdr h;
  int rc = pd_kvstore_get(s, b.key, &h, got_tok, BT, got_pay, PAYLOAD);
  if (rc) return rc;
  ck_assert_int_eq(h.n_tokens, BT);
  ck_assert_int_eq(h.payload_bytes, PAYLOAD);
  ck_assert_int_eq(h.namespace_id, 3);
  ck_assert(h.parent.lo == i && h.parent.hi == i * 7);
  ck_assert_mem_eq(got_tok, want_tok, sizeof want_tok);
  ck_assert_mem_eq(got_pay, want_pay, sizeof want_pay);
  return 0;
}

/* The store's LMDB environment opened directly, behind the store's back (it must be closed). */
typedef struct raw_env {
  MDB_env *env;
  MDB_txn *txn;
  MDB_dbi blocks, meta;
} raw_env;

static void raw_open(raw_env *r) {
  ck_assert_int_eq(mdb_env_create(&r->env), 0);
  ck_assert_int_eq(mdb_env_set_maxdbs(r->env, 4), 0);
  ck_assert_int_eq(mdb_env_set_mapsize(r->env, 64 << 20), 0);
  ck_assert_int_eq(mdb_env_open(r->env, dir, 0, 0600), 0);
  ck_assert_int_eq(mdb_txn_begin(r->env, NULL, 0, &r->txn), 0);
  ck_assert_int_eq(mdb_dbi_open(r->txn, "blocks", 0, &r->blocks), 0);
  ck_assert_int_eq(mdb_dbi_open(r->txn, "meta", 0, &r->meta), 0);
}

static void raw_close(raw_env *r) {
  ck_assert_int_eq(mdb_txn_commit(r->txn), 0);
  mdb_env_close(r->env);
}

/* Block i's key as stored: (i + 1, (i + 1) * 7), little-endian. */
static void key_bytes(uint64_t i, uint8_t kbuf[16]) {
  for (int b = 0; b < 8; b++) {
    kbuf[b] = (uint8_t)((i + 1) >> (8 * b));
    kbuf[8 + b] = (uint8_t)(((i + 1) * 7) >> (8 * b));
  }
}

/* Block i's index entry, decoded; *val receives a copy of the value (caller frees). */
static pd_kvstore_hdr raw_entry(raw_env *r, uint64_t i, uint8_t **val, size_t *len) {
  uint8_t kbuf[16];
  key_bytes(i, kbuf);
  MDB_val k = {16, kbuf}, v;
  ck_assert_int_eq(mdb_get(r->txn, r->blocks, &k, &v), 0);
  pd_kvstore_hdr h;
  ck_assert_int_eq(pd_kvstore_hdr_decode(v.mv_data, v.mv_size, &h), 0);
  if (val) {
    *val = malloc(v.mv_size);
    memcpy(*val, v.mv_data, v.mv_size);
    *len = v.mv_size;
  }
  return h;
}

static void raw_put(raw_env *r, uint64_t i, const void *val, size_t len) {
  uint8_t kbuf[16];
  key_bytes(i, kbuf);
  MDB_val k = {16, kbuf}, v = {len, (void *)val};
  ck_assert_int_eq(mdb_put(r->txn, r->blocks, &k, &v, 0), 0);
}

/* Flips one byte of blocks.dat. */
static void flip_file_byte(uint64_t offset) {
  char path[300];
  snprintf(path, sizeof path, "%s/blocks.dat", dir);
  int fd = open(path, O_RDWR);
  ck_assert_int_ge(fd, 0);
  uint8_t b;
  ck_assert_int_eq(pread(fd, &b, 1, (off_t)offset), 1);
  b ^= 0x40;
  ck_assert_int_eq(pwrite(fd, &b, 1, (off_t)offset), 1);
  close(fd);
}

static off_t file_size(const char *name) {
  char path[300];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  struct stat st;
  ck_assert_int_eq(stat(path, &st), 0);
  return st.st_size;
}

START_TEST(roundtrip_and_restart) {
  make_dir();
  pd_kvstore *s = open_store(0xab, 64 << 20, PD_KVSTORE_FOREIGN_KEEP);
  ck_assert_int_eq(put_range(s, 0, 100), 0);
  for (uint64_t i = 0; i < 100; i++) ck_assert_int_eq(check_block(s, i), 0);
  ck_assert_int_eq(check_block(s, 100), PD_ENOTFOUND);
  ck_assert_int_eq(pd_kvstore_meta_put(s, "tenant/a", "hello", 5), 0);
  pd_kvstore_close(s);

  s = open_store(0xab, 64 << 20, PD_KVSTORE_FOREIGN_KEEP);
  for (uint64_t i = 0; i < 100; i++) ck_assert_int_eq(check_block(s, i), 0);
  char buf[16];
  size_t len = 0;
  ck_assert_int_eq(pd_kvstore_meta_get(s, "tenant/a", buf, sizeof buf, &len), 0);
  ck_assert_uint_eq(len, 5);
  ck_assert_mem_eq(buf, "hello", 5);
  uint64_t n = 0, used = 0, map = 0;
  ck_assert_int_eq(pd_kvstore_usage(s, &n, &used, &map), 0);
  ck_assert_uint_eq(n, 100);
  ck_assert_uint_ge(used, 100 * PAYLOAD);
  pd_key128 del[3] = {{1, 7}, {2, 14}, {999, 999}};
  size_t n_del = 0;
  ck_assert_int_eq(pd_kvstore_delete_batch(s, del, 3, &n_del), 0);
  ck_assert_uint_eq(n_del, 2);
  ck_assert_int_eq(check_block(s, 0), PD_ENOTFOUND);
  ck_assert_int_eq(check_block(s, 2), 0);
  pd_kvstore_close(s);
  remove_dir();
}
END_TEST

static int count_cb(void *arg, pd_key128 key, const pd_kvstore_hdr *h, const int32_t *tokens) {
  uint64_t i = key.lo - 1;
  ck_assert(h->parent.lo == i);
  ck_assert_int_eq(tokens[0], (int32_t)(i * BT));
  (*(uint64_t *)arg)++;
  return 0;
}

START_TEST(scan_and_foreign_fingerprints) {
  make_dir();
  pd_kvstore *s = open_store(0x01, 64 << 20, PD_KVSTORE_FOREIGN_KEEP);
  ck_assert_int_eq(put_range(s, 0, 50), 0);
  pd_kvstore_close(s);

  /* Another model: the blocks are invisible, kept aside, then purged on request. */
  s = open_store(0x02, 64 << 20, PD_KVSTORE_FOREIGN_KEEP);
  ck_assert_int_eq(check_block(s, 0), PD_ENOTFOUND);
  uint64_t n = 0;
  ck_assert_int_eq(pd_kvstore_scan(s, count_cb, &n, NULL, NULL), 0);
  ck_assert_uint_eq(n, 0);
  pd_kvstore_counters c;
  pd_kvstore_get_counters(s, &c);
  ck_assert_uint_eq(c.foreign_skipped, 50);
  pd_kvstore_close(s);

  s = open_store(0x01, 64 << 20, PD_KVSTORE_FOREIGN_KEEP);
  n = 0;
  ck_assert_int_eq(pd_kvstore_scan(s, count_cb, &n, NULL, NULL), 0);
  ck_assert_uint_eq(n, 50);
  pd_kvstore_close(s);

  s = open_store(0x02, 64 << 20, PD_KVSTORE_FOREIGN_PURGE);
  pd_kvstore_get_counters(s, &c);
  ck_assert_uint_eq(c.foreign_purged, 50);
  pd_kvstore_close(s);
  s = open_store(0x01, 64 << 20, PD_KVSTORE_FOREIGN_KEEP);
  ck_assert_int_eq(check_block(s, 0), PD_ENOTFOUND);
  pd_kvstore_close(s);
  remove_dir();
}
END_TEST

/* A fresh directory holding a closed store of blocks 0 .. n_blocks - 1. */
static void make_store(uint8_t fp_byte, uint64_t n_blocks) {
  make_dir();
  pd_kvstore *s = open_store(fp_byte, 64 << 20, PD_KVSTORE_FOREIGN_KEEP);
  ck_assert_int_eq(put_range(s, 0, n_blocks), 0);
  pd_kvstore_close(s);
}

/* Rewrites block i's index entry to name another page of blocks.dat. */
static void raw_set_page(raw_env *r, uint64_t i, uint32_t page) {
  uint8_t *val;
  size_t len;
  pd_kvstore_hdr h = raw_entry(r, i, &val, &len);
  h.payload_page = page;
  pd_kvstore_hdr_encode(&h, val);
  raw_put(r, i, val, len);
  free(val);
}

/* Flips bits (mask) of the byte from_end bytes before the end of block i's index value. */
static void raw_flip(raw_env *r, uint64_t i, size_t from_end, uint8_t mask) {
  uint8_t *val;
  size_t len;
  raw_entry(r, i, &val, &len);
  val[len - from_end] ^= mask;
  raw_put(r, i, val, len);
  free(val);
}

START_TEST(corrupt_payload_is_never_served) {
  make_store(0x05, 5);

  /* Behind the store's back: flip a payload byte of block 2 in blocks.dat, and a token byte of
   * block 3 in its index entry. */
  raw_env r;
  raw_open(&r);
  pd_kvstore_hdr h2 = raw_entry(&r, 2, NULL, NULL);
  ck_assert_uint_eq(h2.version, 2);
  raw_flip(&r, 3, 1, 0x01); /* its last token */
  raw_close(&r);
  flip_file_byte((uint64_t)h2.payload_page * 4096 + 100);

  pd_kvstore *s = open_store(0x05, 64 << 20, PD_KVSTORE_FOREIGN_KEEP);
  uint64_t n0, used0, n1, used1;
  ck_assert_int_eq(pd_kvstore_usage(s, &n0, &used0, NULL), 0);
  ck_assert_int_eq(check_block(s, 1), 0);
  ck_assert_int_eq(check_block(s, 2), PD_ECORRUPT);
  ck_assert_int_eq(check_block(s, 2), PD_ENOTFOUND); /* deleted on detection */
  ck_assert_int_eq(check_block(s, 3), PD_ECORRUPT);
  pd_kvstore_counters c;
  pd_kvstore_get_counters(s, &c);
  ck_assert_uint_eq(c.checksum_failures, 2);
  ck_assert_int_eq(check_block(s, 4), 0);
  /* the two bad blocks gave their pages back */
  ck_assert_int_eq(pd_kvstore_usage(s, &n1, &used1, NULL), 0);
  ck_assert_uint_eq(n0 - n1, 2);
  ck_assert_uint_ge(used0 - used1, 2 * PAYLOAD);
  pd_kvstore_close(s);
  remove_dir();
}
END_TEST

/* One batch read: blocks in shuffled order, into aligned and unaligned buffers, with a missing
 * key, a corrupt payload and a buffer too small among them: each gets its own answer, the
 * others their bytes. */
START_TEST(a_batch_read_answers_each_block) {
  make_store(0x0e, 12);
  raw_env r;
  raw_open(&r);
  pd_kvstore_hdr h5 = raw_entry(&r, 5, NULL, NULL);
  raw_close(&r);
  flip_file_byte((uint64_t)h5.payload_page * 4096 + 7);
  pd_kvstore *s = open_store(0x0e, 64 << 20, PD_KVSTORE_FOREIGN_KEEP);
  const uint64_t order[10] = {9, 3, 5, 0, 40, 1, 11, 7, 2, 8}; /* 40: never stored */
  pd_kvstore_read reads[10];
  int32_t tok[10][BT];
  uint8_t *bufs = NULL;
  ck_assert_int_eq(posix_memalign((void **)&bufs, 4096, 10 * (PAYLOAD + 4096)), 0);
  for (int i = 0; i < 10; i++)
    reads[i] = (pd_kvstore_read){.key = {order[i] + 1, (order[i] + 1) * 7},
                                 .tokens = tok[i],
                                 .max_tokens = BT,
                                 .payload = bufs + (size_t)i * (PAYLOAD + 4096) + (i % 2) * 3,
                                 .payload_cap = order[i] == 7 ? PAYLOAD - 1 : PAYLOAD};
  ck_assert_int_eq(pd_kvstore_get_batch(s, reads, 10), 0);
  for (int i = 0; i < 10; i++) {
    uint64_t b = order[i];
    int want = b == 40 ? PD_ENOTFOUND : b == 5 ? PD_ECORRUPT : b == 7 ? PD_EFULL : PD_OK;
    ck_assert_msg(reads[i].rc == want, "block %lu: rc %d, want %d", (unsigned long)b, reads[i].rc,
                  want);
    if (want != PD_OK) continue;
    int32_t want_tok[BT];
    uint8_t want_pay[PAYLOAD];
    pd_kvstore_block blk;
    fill_block(b, &blk, want_tok, want_pay);
    ck_assert_mem_eq(reads[i].tokens, want_tok, sizeof want_tok);
    ck_assert_mem_eq(reads[i].payload, want_pay, PAYLOAD);
    ck_assert(reads[i].hdr.parent.lo == b);
  }
  pd_kvstore_counters c;
  pd_kvstore_get_counters(s, &c);
  ck_assert_uint_eq(c.checksum_failures, 1);
  ck_assert_uint_eq(c.hits, 7);
  free(bufs);
  pd_kvstore_close(s);
  remove_dir();
}
END_TEST

START_TEST(bad_extents_are_dropped_at_open) {
  make_store(0x06, 6);
  /* block 3 names block 2's page; block 5 a page far past the end of the file */
  raw_env r;
  raw_open(&r);
  raw_set_page(&r, 3, raw_entry(&r, 2, NULL, NULL).payload_page);
  raw_set_page(&r, 5, 1u << 30);
  raw_close(&r);

  pd_kvstore *s = open_store(0x06, 64 << 20, PD_KVSTORE_FOREIGN_KEEP);
  pd_kvstore_counters c;
  pd_kvstore_get_counters(s, &c);
  ck_assert_uint_eq(c.bad_extents, 2);
  ck_assert_int_eq(check_block(s, 2), 0); /* the first to name the page keeps it */
  ck_assert_int_eq(check_block(s, 3), PD_ENOTFOUND);
  ck_assert_int_eq(check_block(s, 5), PD_ENOTFOUND);
  for (uint64_t i = 0; i < 5; i++)
    if (i != 3) ck_assert_int_eq(check_block(s, i), 0);
  /* block 2's page was not freed by dropping block 3: new blocks do not overwrite it */
  ck_assert_int_eq(put_range(s, 100, 20), 0);
  ck_assert_int_eq(check_block(s, 2), 0);
  pd_kvstore_close(s);
  remove_dir();
}
END_TEST

/* A format-1 entry for block i: header, tokens and payload in the value. */
static size_t v1_value(uint64_t i, uint8_t fp_byte, uint8_t **out) {
  int32_t tok[BT];
  uint8_t pay[PAYLOAD];
  pd_kvstore_block b;
  fill_block(i, &b, tok, pay);
  size_t len = PD_KVSTORE_HDR_BYTES + 4 * BT + PAYLOAD;
  uint8_t *v = malloc(len);
  memcpy(v + PD_KVSTORE_HDR_BYTES, tok, 4 * BT); /* little-endian host */
  memcpy(v + PD_KVSTORE_HDR_BYTES + 4 * BT, pay, PAYLOAD);
  pd_kvstore_hdr h = {.version = 1,
                      .dtype = 1,
                      .block_tokens = BT,
                      .n_tokens = BT,
                      .payload_bytes = PAYLOAD,
                      .parent = b.parent,
                      .checksum = XXH3_64bits(v + PD_KVSTORE_HDR_BYTES, 4 * BT + PAYLOAD),
                      .namespace_id = 3};
  memset(h.fingerprint, fp_byte, 16);
  pd_kvstore_hdr_encode(&h, v);
  *out = v;
  return len;
}

START_TEST(format1_store_is_read_in_place) {
  make_dir();
  pd_kvstore *s = open_store(0x0a, 64 << 20, PD_KVSTORE_FOREIGN_KEEP);
  pd_kvstore_close(s);
  /* what a format-1 build left: the format in meta, payloads inside the values */
  raw_env r;
  raw_open(&r);
  uint8_t fmt[4] = {1, 0, 0, 0};
  MDB_val fk = {6, "format"}, fv = {4, fmt};
  ck_assert_int_eq(mdb_put(r.txn, r.meta, &fk, &fv, 0), 0);
  for (uint64_t i = 0; i < 10; i++) {
    uint8_t *v;
    size_t len = v1_value(i, 0x0a, &v);
    raw_put(&r, i, v, len);
    free(v);
  }
  raw_close(&r);

  s = open_store(0x0a, 64 << 20, PD_KVSTORE_FOREIGN_KEEP);
  for (uint64_t i = 0; i < 10; i++) ck_assert_int_eq(check_block(s, i), 0);
  ck_assert_int_eq(put_range(s, 10, 10), 0);
  ck_assert_int_eq(put_range(s, 0, 2), 0); /* rewritten in format 2 */
  pd_key128 del[2] = {{5, 35}, {6, 42}};
  size_t n_del = 0;
  ck_assert_int_eq(pd_kvstore_delete_batch(s, del, 2, &n_del), 0);
  ck_assert_uint_eq(n_del, 2);
  uint8_t got[4];
  size_t len = 0;
  ck_assert_int_eq(pd_kvstore_meta_get(s, "format", got, sizeof got, &len), 0);
  ck_assert_uint_eq(got[0], PD_KVSTORE_FORMAT);
  pd_kvstore_close(s);

  raw_open(&r);
  ck_assert_uint_eq(raw_entry(&r, 0, NULL, NULL).version, 2);
  ck_assert_uint_eq(raw_entry(&r, 3, NULL, NULL).version, 1);
  /* a flipped byte in a format-1 payload is caught as before */
  raw_flip(&r, 7, 100, 0x40);
  raw_close(&r);
  s = open_store(0x0a, 64 << 20, PD_KVSTORE_FOREIGN_KEEP);
  for (uint64_t i = 0; i < 20; i++) {
    int want = (i == 4 || i == 5) ? PD_ENOTFOUND : i == 7 ? PD_ECORRUPT : 0;
    ck_assert_msg(check_block(s, i) == want, "block %lu", (unsigned long)i);
  }
  pd_kvstore_close(s);

  /* a store from a newer format is refused whole, with the reason */
  raw_open(&r);
  fmt[0] = PD_KVSTORE_FORMAT + 1;
  ck_assert_int_eq(mdb_put(r.txn, r.meta, &fk, &fv, 0), 0);
  raw_close(&r);
  pd_kvstore_config cfg = {.dir = dir, .map_bytes = 64 << 20};
  memset(cfg.fingerprint, 0x0a, 16);
  char err[200] = "";
  ck_assert_int_eq(pd_kvstore_open(&cfg, &s, err, sizeof err), PD_EUNSUPPORTED);
  ck_assert_msg(strstr(err, "format 3") != NULL, "err: %s", err);
  remove_dir();
}
END_TEST

START_TEST(real_map_full_then_evict_and_retry) {
  make_dir();
  pd_kvstore *s = open_store(0x07, 1 << 20, PD_KVSTORE_FOREIGN_KEEP); /* a 1 MiB budget */
  uint64_t written = 0;
  int rc;
  while ((rc = put_range(s, written, 8)) == 0) written += 8;
  ck_assert_int_eq(rc, PD_EFULL);
  ck_assert_uint_gt(written, 0);
  for (uint64_t i = 0; i < written; i++) ck_assert_int_eq(check_block(s, i), 0);
  /* the budget holds for both files together */
  ck_assert_int_le(file_size("blocks.dat") + file_size("data.mdb"), 1 << 20);
  uint64_t used, budget;
  ck_assert_int_eq(pd_kvstore_usage(s, NULL, &used, &budget), 0);
  ck_assert_uint_le(used, budget);
  ck_assert_uint_eq(budget, 1 << 20);
  /* The caller's answer to PD_EFULL: evict its disk LRU, then retry. */
  pd_key128 old[64];
  for (int i = 0; i < 64; i++) old[i] = (pd_key128){(uint64_t)i + 1, ((uint64_t)i + 1) * 7};
  ck_assert_int_eq(pd_kvstore_delete_batch(s, old, 64, NULL), 0);
  off_t before = file_size("blocks.dat");
  ck_assert_int_eq(put_range(s, written, 8), 0);
  ck_assert_int_eq(check_block(s, written + 7), 0);
  ck_assert_int_eq(file_size("blocks.dat"), before); /* freed pages reused, no growth */
  pd_kvstore_counters c;
  pd_kvstore_get_counters(s, &c);
  ck_assert_uint_ge(c.map_full, 1);
  pd_kvstore_close(s);

  /* After a restart the free pages are known again from the index: new blocks fill them and
   * every old block still verifies (no live page was handed out twice). */
  s = open_store(0x07, 1 << 20, PD_KVSTORE_FOREIGN_KEEP);
  uint64_t more = written + 8;
  while ((rc = put_range(s, more, 8)) == 0) more += 8;
  ck_assert_int_eq(rc, PD_EFULL);
  ck_assert_uint_ge(more - (written + 8), 48); /* the 64 evicted, less a partial batch */
  for (uint64_t i = 64; i < more; i++) ck_assert_int_eq(check_block(s, i), 0);
  ck_assert_uint_gt(more, 101);
  /* rewriting a key gives its old pages back: with one block's room, rewrite another 20 times */
  pd_key128 live = {65, 65 * 7}; /* block 64 */
  size_t n_del = 0;
  ck_assert_int_eq(pd_kvstore_delete_batch(s, &live, 1, &n_del), 0);
  ck_assert_uint_eq(n_del, 1);
  uint64_t used_before, used_after;
  pd_kvstore_usage(s, NULL, &used_before, NULL);
  for (int round = 0; round < 20; round++) ck_assert_int_eq(put_range(s, 100, 1), 0);
  pd_kvstore_usage(s, NULL, &used_after, NULL);
  ck_assert_uint_le(used_after, used_before + 4096);
  ck_assert_int_eq(check_block(s, 100), 0);
  pd_kvstore_close(s);
  remove_dir();
}
END_TEST

START_TEST(a_lowered_budget_is_honoured) {
  make_dir();
  pd_kvstore *s = open_store(0x0d, 8 << 20, PD_KVSTORE_FOREIGN_KEEP);
  uint64_t n = 0;
  while (put_range(s, n, 16) == 0) n += 16;
  ck_assert_uint_gt(n, 1000);
  pd_kvstore_close(s);
  ck_assert_int_gt(file_size("blocks.dat"), 6 << 20);

  /* a quarter of the budget: everything stays readable, nothing new fits */
  s = open_store(0x0d, 2 << 20, PD_KVSTORE_FOREIGN_KEEP);
  for (uint64_t i = 0; i < n; i += 97) ck_assert_int_eq(check_block(s, i), 0);
  ck_assert_int_eq(put_range(s, n, 1), PD_EFULL);
  /* the disk LRU makes room: evict all but the first 100 */
  pd_key128 *keys = calloc(n, sizeof *keys);
  for (uint64_t i = 100; i < n; i++) keys[i - 100] = (pd_key128){i + 1, (i + 1) * 7};
  ck_assert_int_eq(pd_kvstore_delete_batch(s, keys, n - 100, NULL), 0);
  free(keys);
  pd_kvstore_close(s);

  /* reopened: the free end of blocks.dat is given back, and new blocks stay inside the budget */
  s = open_store(0x0d, 2 << 20, PD_KVSTORE_FOREIGN_KEEP);
  ck_assert_int_le(file_size("blocks.dat"), 2 << 20);
  uint64_t m = n;
  while (put_range(s, m, 16) == 0) m += 16;
  ck_assert_uint_gt(m - n, 200);
  /* the index's pages in use count, not data.mdb's size: LMDB never shrinks its file */
  uint64_t used;
  ck_assert_int_eq(pd_kvstore_usage(s, NULL, &used, NULL), 0);
  ck_assert_uint_le(used, 2 << 20);
  ck_assert_int_le(file_size("blocks.dat"), 2 << 20);
  for (uint64_t i = 0; i < 100; i++) ck_assert_int_eq(check_block(s, i), 0);
  for (uint64_t i = n; i < m; i++) ck_assert_int_eq(check_block(s, i), 0);
  pd_kvstore_close(s);
  remove_dir();
}
END_TEST

/* A reader on its own thread, while the main thread deletes and rewrites 1 MiB blocks in a full
 * store, so a freed page is handed out again at once and reads meet pages being rewritten. */
#define RACE_BYTES (1u << 20)

typedef struct race_reader {
  pd_kvstore *s;
  uint64_t n_blocks;
  volatile int stop;
  uint64_t reads, hits, misses, wrong, errors;
} race_reader;

static void *race_read_loop(void *arg) {
  race_reader *rr = arg;
  int32_t want_tok[BT], got_tok[BT];
  uint8_t *want = malloc(RACE_BYTES), *got;
  if (posix_memalign((void **)&got, 4096, RACE_BYTES)) abort();
  uint64_t x = 88172645463325252ull;
  while (!rr->stop) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    uint64_t i = x % rr->n_blocks;
    pd_kvstore_block b;
    fill_block_of(i, &b, want_tok, want, RACE_BYTES);
    pd_kvstore_hdr h;
    int rc = pd_kvstore_get(rr->s, b.key, &h, got_tok, BT, got, RACE_BYTES);
    rr->reads++;
    if (rc == PD_OK &&
        (memcmp(got_tok, want_tok, sizeof want_tok) != 0 || memcmp(got, want, RACE_BYTES) != 0))
      rr->wrong++;
    else if (rc == PD_OK)
      rr->hits++;
    else if (rc == PD_ENOTFOUND)
      rr->misses++;
    else
      rr->errors++;
  }
  free(want);
  free(got);
  return NULL;
}

static int put_big(pd_kvstore *s, uint64_t i, uint8_t *buf) {
  int32_t tok[BT];
  pd_kvstore_block b;
  fill_block_of(i, &b, tok, buf, RACE_BYTES);
  return pd_kvstore_put_batch(s, &b, 1);
}

START_TEST(reads_racing_page_reuse_are_never_corrupt) {
  make_dir();
  pd_kvstore_config cfg = {.dir = dir, .map_bytes = 48 << 20, .durability = PD_KVSTORE_NOSYNC};
  memset(cfg.fingerprint, 0x0b, 16);
  pd_kvstore *s = NULL;
  ck_assert_int_eq(pd_kvstore_open(&cfg, &s, NULL, 0), 0);
  uint8_t *buf;
  ck_assert_int_eq(posix_memalign((void **)&buf, 4096, RACE_BYTES), 0);
  uint64_t n = 0;
  while (put_big(s, n, buf) == 0) n++;
  ck_assert_uint_gt(n, 20);
  /* one block's room: every rewrite below takes the pages the delete before it gave back */
  pd_key128 gone = {1, 7};
  ck_assert_int_eq(pd_kvstore_delete_batch(s, &gone, 1, NULL), 0);
  uint64_t missing = 0;
  race_reader rr = {.s = s, .n_blocks = n};
  pthread_t th;
  ck_assert_int_eq(pthread_create(&th, NULL, race_read_loop, &rr), 0);
  uint64_t x = 0x9e3779b97f4a7c15ull;
  for (int round = 0; round < 1500; round++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    uint64_t j = x % n;
    if (j == missing) continue;
    pd_key128 k = {j + 1, (j + 1) * 7};
    ck_assert_int_eq(pd_kvstore_delete_batch(s, &k, 1, NULL), 0);
    ck_assert_int_eq(put_big(s, missing, buf), 0);
    missing = j;
  }
  rr.stop = 1;
  pthread_join(th, NULL);
  pd_kvstore_counters c;
  pd_kvstore_get_counters(s, &c);
  fprintf(stderr, "race: %lu reads, %lu hits, %lu misses, %lu read races\n",
          (unsigned long)rr.reads, (unsigned long)rr.hits, (unsigned long)rr.misses,
          (unsigned long)c.read_races);
  ck_assert_uint_gt(rr.hits, 0);
  ck_assert_uint_eq(rr.wrong, 0);  /* never another block's bytes */
  ck_assert_uint_eq(rr.errors, 0); /* never PD_ECORRUPT */
  ck_assert_uint_eq(c.checksum_failures, 0);
  /* and every block but the one missing is intact */
  int32_t want_tok[BT], got_tok[BT];
  uint8_t *want = malloc(RACE_BYTES);
  for (uint64_t i = 0; i < n; i++) {
    pd_kvstore_block b;
    fill_block_of(i, &b, want_tok, want, RACE_BYTES);
    pd_kvstore_hdr h;
    int rc = pd_kvstore_get(s, b.key, &h, got_tok, BT, buf, RACE_BYTES);
    ck_assert_int_eq(rc, i == missing ? PD_ENOTFOUND : 0);
    if (rc == 0) ck_assert_mem_eq(buf, want, RACE_BYTES);
  }
  free(want);
  free(buf);
  pd_kvstore_close(s);
  remove_dir();
}
END_TEST

START_TEST(injected_faults_lose_nothing) {
  const enum pd_fault_site sites[] = {PD_FAULT_DISK_FULL, PD_FAULT_DISK_IO, PD_FAULT_MAP_FULL};
  const int codes[] = {PD_ENOSPC, PD_EIO, PD_EFULL};
  for (int si = 0; si < 3; si++) {
    make_dir();
    pd_kvstore *s = open_store(0x09, 64 << 20, PD_KVSTORE_FOREIGN_KEEP);
    ck_assert_int_eq(put_range(s, 0, 10), 0);
    /* Fail the N-th write for N = 1..4: each failed batch leaves no trace, earlier ones stay. */
    uint64_t next = 10;
    for (long nth = 1; nth <= 4; nth++) {
      pd_fault_arm(sites[si], nth, 0);
      for (long attempt = 1; attempt <= nth; attempt++) {
        int rc = put_range(s, next, 5);
        if (attempt == nth) {
          ck_assert_int_eq(rc, codes[si]);
          for (uint64_t i = next; i < next + 5; i++)
            ck_assert_int_eq(check_block(s, i), PD_ENOTFOUND);
        } else {
          ck_assert_int_eq(rc, 0);
          next += 5;
        }
      }
      pd_fault_disarm_all();
    }
    for (uint64_t i = 0; i < next; i++) ck_assert_int_eq(check_block(s, i), 0);
    pd_kvstore_close(s);
    remove_dir();
  }
}
END_TEST

/* The child writes batches of 4 blocks forever, reporting each committed batch's first index
 * on a pipe; the parent kills it with SIGKILL at a random moment. */
static void crash_child(int wfd, uint8_t durability) {
  pd_kvstore_config cfg = {.dir = dir, .map_bytes = 256 << 20, .durability = durability};
  memset(cfg.fingerprint, 0x0c, 16);
  pd_kvstore *s;
  if (pd_kvstore_open(&cfg, &s, NULL, 0)) _exit(2);
  for (uint64_t i = 0;; i += 4) {
    if (put_range(s, i % 20000, 4) != 0) _exit(3);
    uint64_t done = i;
    if (write(wfd, &done, sizeof done) != sizeof done) _exit(4);
    if (i % 20000 == 19996) { /* wrap: delete the oldest, as eviction would */
      pd_key128 keys[4];
      for (int j = 0; j < 4; j++) keys[j] = (pd_key128){(uint64_t)j + 1, ((uint64_t)j + 1) * 7};
      pd_kvstore_delete_batch(s, keys, 4, NULL);
    }
  }
}

static int verify_cb(void *arg, pd_key128 key, const pd_kvstore_hdr *h, const int32_t *tokens) {
  (void)h, (void)tokens;
  pd_kvstore *s = arg;
  ck_assert_int_eq(check_block(s, key.lo - 1), 0); /* every stored block verifies */
  return 0;
}

START_TEST(kill9_loses_nothing_committed) {
  int rounds = getenv("PD_CRASH_ROUNDS") ? atoi(getenv("PD_CRASH_ROUNDS")) : 25;
  srand(1234);
  make_dir();
  for (int r = 0; r < rounds; r++) {
    int fds[2];
    ck_assert_int_eq(pipe(fds), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
      close(fds[0]);
      crash_child(fds[1], (uint8_t)(r % 3));
    }
    close(fds[1]);
    usleep(2000 + (useconds_t)(rand() % 40000));
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    ck_assert(WIFSIGNALED(status));
    uint64_t last = 0, v;
    int any = 0;
    while (read(fds[0], &v, sizeof v) == sizeof v) last = v, any = 1;
    close(fds[0]);
    /* A process crash (not a power loss) keeps every commit in every durability mode. */
    pd_kvstore *s = open_store(0x0c, 256 << 20, PD_KVSTORE_FOREIGN_KEEP);
    if (any && last < 19996)
      for (uint64_t i = last; i < last + 4; i++) ck_assert_int_eq(check_block(s, i), 0);
    ck_assert_int_eq(pd_kvstore_scan(s, verify_cb, s, NULL, NULL), 0);
    pd_kvstore_counters c;
    pd_kvstore_get_counters(s, &c);
    ck_assert_uint_eq(c.checksum_failures, 0);
    pd_kvstore_close(s);
  }
  remove_dir();
}
END_TEST

START_TEST(header_decode_rejects_garbage) {
  uint8_t buf[PD_KVSTORE_HDR_BYTES + 64 + 8];
  pd_kvstore_hdr h = {.block_tokens = 16, .n_tokens = 16, .payload_bytes = 8, .payload_page = 77};
  pd_kvstore_hdr_encode(&h, buf);
  pd_kvstore_hdr out;
  /* format 2: header and tokens; the payload is elsewhere */
  ck_assert_int_eq(pd_kvstore_hdr_decode(buf, PD_KVSTORE_HDR_BYTES + 64, &out), 0);
  ck_assert_uint_eq(out.version, 2);
  ck_assert_uint_eq(out.payload_page, 77);
  ck_assert_int_eq(pd_kvstore_hdr_decode(buf, sizeof buf, &out), PD_ECORRUPT);
  /* format 1: the payload follows the tokens */
  h.version = 1;
  pd_kvstore_hdr_encode(&h, buf);
  ck_assert_int_eq(pd_kvstore_hdr_decode(buf, sizeof buf, &out), 0);
  ck_assert_uint_eq(out.version, 1);
  ck_assert_int_eq(pd_kvstore_hdr_decode(buf, sizeof buf - 1, &out), PD_ECORRUPT);
  ck_assert_int_eq(pd_kvstore_hdr_decode(buf, 10, &out), PD_ECORRUPT);
  buf[0] ^= 1;
  ck_assert_int_eq(pd_kvstore_hdr_decode(buf, sizeof buf, &out), PD_ECORRUPT);
  buf[0] ^= 1;
  buf[4] = 9; /* a future format */
  ck_assert_int_eq(pd_kvstore_hdr_decode(buf, sizeof buf, &out), PD_EUNSUPPORTED);
  buf[4] = 1;
  buf[10] = 17; /* more tokens than the block holds */
  ck_assert_int_eq(pd_kvstore_hdr_decode(buf, sizeof buf, &out), PD_ECORRUPT);
}
END_TEST

int main(void) {
  Suite *s = suite_create("kvstore");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, roundtrip_and_restart);
  tcase_add_test(tc, scan_and_foreign_fingerprints);
  tcase_add_test(tc, corrupt_payload_is_never_served);
  tcase_add_test(tc, a_batch_read_answers_each_block);
  tcase_add_test(tc, bad_extents_are_dropped_at_open);
  tcase_add_test(tc, format1_store_is_read_in_place);
  tcase_add_test(tc, a_lowered_budget_is_honoured);
  tcase_add_test(tc, reads_racing_page_reuse_are_never_corrupt);
  tcase_add_test(tc, real_map_full_then_evict_and_retry);
  tcase_add_test(tc, injected_faults_lose_nothing);
  tcase_add_test(tc, kill9_loses_nothing_committed);
  tcase_add_test(tc, header_decode_rejects_garbage);
  suite_add_tcase(s, tc);
  int rc = pd_check_run(s, 1);
  return rc;
}
