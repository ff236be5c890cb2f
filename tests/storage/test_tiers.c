/*
 * test_tiers.c -- the tier manager on a real radix tree, a real LMDB store and a device pool in
 * host memory: demotion cascades device -> host -> disk with the frontier rule intact, restores
 * bring back exactly the bytes that left, the disk tier is rebuilt after a reopen, a corrupted
 * record is never served, restore-or-recompute follows the measured rates, and fault loops
 * (allocation failure, ENOSPC, EIO, MDB_MAP_FULL on the N-th hit) end in a clean error or a miss,
 * never a crash, a leak or a wrong byte.
 *
 * Every block's payload is a pattern computed from its tokens, so a block read back anywhere can
 * be checked without keeping a copy.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pd_check.h"
#include "pd_err.h"
#include "pd_fault.h"
#include "pd_radix.h"
#include "pd_tiers.h"

#define BT          16
#define BLOCK_BYTES 2048
#define DEVICE      8 /* blocks */
#define HOST        8
#define PROMPTS     6
#define BLOCKS      4 /* per prompt */

static char dir[256];

/* Set in the child of kill_9_during_spills. Check records even a passing assertion (its location)
 * in a message file the parent reads after the test; a SIGKILL in the middle of such a record
 * leaves it torn and the parent's read misaligned ("Bad message type"). So the child's helpers
 * never call Check: a failed expectation prints one line and exits with code 4, which the parent
 * reads from waitpid. */
static int in_killed_child;

#define EXPECT(cond, ...)                                                                          \
  do {                                                                                             \
    if (!in_killed_child) {                                                                        \
      ck_assert_msg(cond, __VA_ARGS__);                                                            \
    } else if (!(cond)) {                                                                          \
      fprintf(stderr, __VA_ARGS__);                                                                \
      fputc('\n', stderr);                                                                         \
      _exit(4);                                                                                    \
    }                                                                                              \
  } while (0)

typedef struct fixture {
  pd_radix tree;
  pd_tiers *tiers;
  pd_devpool pool; /* a CPU pool: its base is host memory */
  uint8_t *device; /* pool.base: (DEVICE, BLOCK_BYTES) */
  uint32_t tenant, ns;
} fixture;

static const uint8_t salt[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

static void make_dir(void) {
  snprintf(dir, sizeof dir, "/tmp/pd_tiers_test.XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void remove_dir(void) {
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  ck_assert_int_eq(system(cmd), 0);
}

static void prompt_tokens(int p, int32_t *tok) { /* (BLOCKS * BT) */
  for (int i = 0; i < BLOCKS * BT; i++) tok[i] = 1000 * (p + 1) + i;
}

/* The payload of the block ending at tokens[end - 1]: a pattern of the block's tokens. */
static void pattern(const int32_t *block_tokens, uint8_t *out) {
  uint32_t h = 2166136261u;
  for (int i = 0; i < BT; i++) h = (h ^ (uint32_t)block_tokens[i]) * 16777619u;
  for (int i = 0; i < BLOCK_BYTES; i++) {
    h = h * 1103515245u + 12345u;
    out[i] = (uint8_t)(h >> 16);
  }
}

static int open_fixture(fixture *f, enum pd_write_filter filter, uint64_t disk_bytes) {
  memset(f, 0, sizeof *f);
  char perr[160];
  EXPECT(pd_devpool_create(&f->pool, PD_DEVPOOL_CPU, DEVICE, BLOCK_BYTES, perr, sizeof perr) == 0,
         "devpool: %s", perr);
  f->device = f->pool.base;
  pd_tiers_config tc = {.block_bytes = BLOCK_BYTES,
                        .block_tokens = BT,
                        .dtype = 1,
                        .device = &f->pool,
                        .host_bytes = HOST * BLOCK_BYTES,
                        .disk_dir = disk_bytes ? dir : NULL,
                        .disk_bytes = disk_bytes,
                        .durability = PD_KVSTORE_NOSYNC,
                        .write_filter = filter};
  memset(tc.fingerprint, 0x5a, 16);
  pd_radix_config rc = {.block_tokens = BT};
  memcpy(rc.fingerprint, tc.fingerprint, 16);
  pd_tiers_capacity(&tc, rc.tier_capacity);
  rc.tier_capacity[0] = DEVICE;
  EXPECT(pd_radix_init(&f->tree, &rc) == 0, "radix init");
  EXPECT(pd_tenants_add(&f->tree.tenants, "t", salt, &f->tenant) == 0, "tenant add");
  f->ns = pd_tenants_get(&f->tree.tenants, f->tenant)->private_ns;
  char err[256] = "";
  int r = pd_tiers_open(&tc, &f->tree, &f->tiers, err, sizeof err);
  EXPECT(r == 0, "open: %s (%s)", pd_strerror(r), err);
  uint64_t n = 0;
  return pd_tiers_rebuild(f->tiers, NULL, NULL, &n) == 0 ? (int)n : -1;
}

static void close_fixture(fixture *f) {
  pd_tiers_close(f->tiers);
  char err[256] = "";
  ck_assert_msg(pd_radix_check(&f->tree, err, sizeof err) == 0, "tree: %s", err);
  pd_radix_free(&f->tree);
  pd_devpool_destroy(&f->pool);
}

static void check_tree(fixture *f) {
  char err[256] = "";
  EXPECT(pd_radix_check(&f->tree, err, sizeof err) == 0, "tree: %s", err);
}

/* A device slot, making room (and waiting for spills in flight) as the engine does. */
static int device_slot(fixture *f, uint32_t *slot) {
  return pd_tiers_alloc_slot(f->tiers, 0, 2, 1, slot);
}

/* Computes prompt p's blocks "on the device" and inserts them. Returns blocks inserted. */
static uint32_t insert_prompt(fixture *f, int p) {
  int32_t tok[BLOCKS * BT];
  prompt_tokens(p, tok);
  uint32_t slots[BLOCKS], got = 0;
  for (; got < BLOCKS; got++) {
    if (device_slot(f, &slots[got])) break;
    pattern(tok + got * BT, f->device + (size_t)slots[got] * BLOCK_BYTES);
  }
  pd_insert_result res[BLOCKS];
  uint32_t done = 0;
  pd_radix_insert(&f->tree, f->tenant, f->ns, tok, got * BT, slots, 0, 1, res, &done);
  for (uint32_t i = 0; i < done; i++) pd_tiers_note_insert(f->tiers, res[i].node);
  for (uint32_t i = done; i-- > 0;) pd_radix_release(&f->tree, &res[i].node, 1);
  pd_tiers_flush(f->tiers);
  return done;
}

/* Matches prompt p, restores what is cold, waits, and checks every byte. Returns the blocks
 * found (0..BLOCKS); a wrong byte fails the test. */
static uint32_t verify_prompt(fixture *f, int p) {
  int32_t tok[BLOCKS * BT];
  prompt_tokens(p, tok);
  uint32_t nodes[BLOCKS + 1];
  pd_match m;
  EXPECT(pd_radix_match(&f->tree, f->tenant, f->ns, tok, BLOCKS * BT, 2, nodes, BLOCKS + 1, &m) ==
             0,
         "prompt %d: match failed", p);
  uint32_t usable = 0, slots[BLOCKS];
  for (; usable < m.n_nodes; usable++) {
    const pd_node *nd = pd_radix_node(&f->tree, nodes[usable]);
    if (pd_tiers_is_bad(f->tiers, nodes[usable])) break;
    if (nd->tier == 0) {
      slots[usable] = nd->slot;
      continue;
    }
    if (pd_tiers_restore(f->tiers, nodes[usable], 2, &slots[usable]) != PD_OK) break;
  }
  pd_tiers_sync(f->tiers);
  uint32_t good = 0;
  for (uint32_t i = 0; i < usable && !pd_tiers_is_bad(f->tiers, nodes[i]); i++, good++) {
    EXPECT(pd_tiers_pending(f->tiers, nodes[i]) == 0, "prompt %d block %u: still pending", p, i);
    EXPECT(pd_radix_node(&f->tree, nodes[i])->tier == 0, "prompt %d block %u: not on device", p, i);
    uint8_t want[BLOCK_BYTES];
    pattern(tok + i * BT, want);
    EXPECT(memcmp(want, f->device + (size_t)slots[i] * BLOCK_BYTES, BLOCK_BYTES) == 0,
           "prompt %d block %u: wrong bytes after restore", p, i);
  }
  pd_radix_release(&f->tree, nodes, m.n_nodes);
  pd_tiers_poll(f->tiers, 2); /* drops what turned out bad */
  check_tree(f);
  return good;
}

START_TEST(cascade_and_restore) {
  make_dir();
  fixture f;
  ck_assert_int_eq(open_fixture(&f, PD_WRITE_ALWAYS, 64u << 20), 0);
  for (int p = 0; p < PROMPTS; p++) ck_assert_uint_eq(insert_prompt(&f, p), BLOCKS);
  pd_tiers_sync(f.tiers);
  check_tree(&f);
  ck_assert_uint_le(pd_radix_tier_used(&f.tree, 0), DEVICE);
  ck_assert_uint_le(pd_radix_tier_used(&f.tree, 1), HOST);
  ck_assert_uint_gt(pd_radix_tier_used(&f.tree, 2), 0);
  pd_tiers_counters c;
  pd_tiers_get_counters(f.tiers, &c);
  ck_assert_uint_gt(c.demoted[1], 0);
  ck_assert_uint_gt(c.demoted[2], 0);
  ck_assert_uint_eq(c.dropped[0] + c.dropped[1] + c.dropped[2], 0);
  /* every prompt comes back whole, from wherever it went (newest first: the host tier's, then
   * the disk tier's), twice over */
  for (int round = 0; round < 2; round++)
    for (int p = PROMPTS; p-- > 0;) ck_assert_uint_eq(verify_prompt(&f, p), BLOCKS);
  pd_tiers_get_counters(f.tiers, &c);
  ck_assert_uint_gt(c.restored[1], 0);
  ck_assert_uint_gt(c.restored[2], 0);
  ck_assert_uint_eq(c.read_failures, 0);
  close_fixture(&f);
  remove_dir();
}
END_TEST

START_TEST(no_disk_tier_drops_what_host_cannot_hold) {
  fixture f;
  ck_assert_int_eq(open_fixture(&f, PD_WRITE_ALWAYS, 0), 0);
  for (int p = 0; p < PROMPTS; p++) ck_assert_uint_eq(insert_prompt(&f, p), BLOCKS);
  pd_tiers_sync(f.tiers);
  pd_tiers_counters c;
  pd_tiers_get_counters(f.tiers, &c);
  ck_assert_uint_gt(c.dropped[1], 0);
  ck_assert_uint_eq(pd_radix_tier_used(&f.tree, 2), 0);
  uint32_t found = 0;
  for (int p = 0; p < PROMPTS; p++) found += verify_prompt(&f, p);
  ck_assert_uint_le(found, DEVICE + HOST);
  ck_assert_uint_gt(found, 0);
  close_fixture(&f);
}
END_TEST

START_TEST(rebuild_after_reopen) {
  make_dir();
  fixture f;
  ck_assert_int_eq(open_fixture(&f, PD_WRITE_ALWAYS, 64u << 20), 0);
  for (int p = 0; p < 3; p++) insert_prompt(&f, p);
  pd_tiers_sync(f.tiers);
  close_fixture(&f);
  /* a new process: the tree is empty, the store is not */
  ck_assert_int_eq(open_fixture(&f, PD_WRITE_ALWAYS, 64u << 20), 3 * BLOCKS);
  check_tree(&f);
  ck_assert_uint_eq(pd_radix_tier_used(&f.tree, 2), 3 * BLOCKS);
  for (int p = 0; p < 3; p++) ck_assert_uint_eq(verify_prompt(&f, p), BLOCKS);
  ck_assert_uint_eq(verify_prompt(&f, 4), 0); /* never inserted */
  close_fixture(&f);
  remove_dir();
}
END_TEST

/* Flips one byte of the first stored payload of prompt 0's first block in data.mdb. */
static int corrupt_on_disk(void) {
  int32_t tok[BLOCKS * BT];
  prompt_tokens(0, tok);
  uint8_t want[BLOCK_BYTES];
  pattern(tok, want);
  char path[300];
  snprintf(path, sizeof path, "%s/blocks.dat", dir); /* the disk tier's payloads */
  FILE *fp = fopen(path, "r+b");
  if (!fp) return -1;
  fseek(fp, 0, SEEK_END);
  long size = ftell(fp);
  uint8_t *buf = malloc((size_t)size);
  fseek(fp, 0, SEEK_SET);
  int found = -1;
  if (fread(buf, 1, (size_t)size, fp) == (size_t)size) {
    for (long i = 0; i + BLOCK_BYTES <= size; i++)
      if (buf[i] == want[0] && memcmp(buf + i, want, BLOCK_BYTES) == 0) {
        fseek(fp, i + 100, SEEK_SET);
        uint8_t b = buf[i + 100] ^ 0xff;
        fwrite(&b, 1, 1, fp);
        found = 0;
        break;
      }
  }
  free(buf);
  fclose(fp);
  return found;
}

START_TEST(corrupt_record_is_a_miss_never_served) {
  make_dir();
  fixture f;
  ck_assert_int_eq(open_fixture(&f, PD_WRITE_ALWAYS, 64u << 20), 0);
  insert_prompt(&f, 0);
  pd_tiers_sync(f.tiers);
  close_fixture(&f);
  ck_assert_int_eq(corrupt_on_disk(), 0);
  ck_assert_int_eq(open_fixture(&f, PD_WRITE_ALWAYS, 64u << 20), BLOCKS);
  ck_assert_uint_eq(verify_prompt(&f, 0), 0); /* the first block is bad: nothing after it */
  pd_tiers_counters c;
  pd_tiers_get_counters(f.tiers, &c);
  ck_assert_uint_eq(c.read_failures, 1);
  pd_kvstore_counters kc;
  ck_assert_int_eq(pd_tiers_disk_stats(f.tiers, &kc, NULL, NULL, NULL), 0);
  ck_assert_uint_eq(kc.checksum_failures, 1);
  /* the bad block (and what hung below it) left the tree; the prompt can be computed again */
  ck_assert_uint_eq(insert_prompt(&f, 0), BLOCKS);
  ck_assert_uint_eq(verify_prompt(&f, 0), BLOCKS);
  close_fixture(&f);
  remove_dir();
}
END_TEST

START_TEST(restore_or_recompute_follows_rates) {
  make_dir();
  fixture f;
  ck_assert_int_eq(open_fixture(&f, PD_WRITE_ALWAYS, 64u << 20), 0);
  for (int p = 0; p < PROMPTS; p++) insert_prompt(&f, p);
  pd_tiers_sync(f.tiers);
  /* prompt 0 went to the disk tier: find its path */
  int32_t tok[BLOCKS * BT];
  prompt_tokens(0, tok);
  uint32_t nodes[BLOCKS + 1];
  pd_match m;
  ck_assert_int_eq(
      pd_radix_match(&f.tree, f.tenant, f.ns, tok, BLOCKS * BT, 3, nodes, BLOCKS + 1, &m), 0);
  ck_assert_uint_eq(m.n_nodes, BLOCKS);
  ck_assert_int_eq(pd_radix_node(&f.tree, nodes[0])->tier, 2);
  pd_tiers_note_prefill(f.tiers, 1000, 10.0); /* 100 tokens/s: a CPU, restoring wins */
  ck_assert_uint_eq(pd_tiers_plan_restore(f.tiers, nodes, BLOCKS), BLOCKS);
  for (int i = 0; i < 50; i++) /* 1e9 tokens/s: computing 16 tokens costs nothing */
    pd_tiers_note_prefill(f.tiers, 1000000000, 1.0);
  ck_assert_uint_eq(pd_tiers_plan_restore(f.tiers, nodes, BLOCKS), 0);
  pd_tiers_counters c;
  pd_tiers_get_counters(f.tiers, &c);
  ck_assert_uint_eq(c.restore_chosen, 1);
  ck_assert_uint_eq(c.recompute_chosen, 1);
  pd_radix_release(&f.tree, nodes, m.n_nodes);
  close_fixture(&f);
  remove_dir();
}
END_TEST

/* Runs the cascade with site failing on its n-th hit. Returns 1 if the fault fired. Whatever
 * happened, the tree is consistent and nothing read back is wrong. */
static int faulty_run(enum pd_fault_site site, long n) {
  make_dir();
  fixture f;
  ck_assert_int_eq(open_fixture(&f, PD_WRITE_ALWAYS, 64u << 20), 0);
  pd_fault_arm(site, n, 0);
  for (int p = 0; p < PROMPTS; p++) insert_prompt(&f, p);
  pd_tiers_sync(f.tiers);
  check_tree(&f);
  for (int p = 0; p < PROMPTS; p++) verify_prompt(&f, p); /* found or not: never wrong */
  int fired = pd_fault_fired(site) > 0;
  pd_fault_disarm_all();
  const char *reason = "";
  pd_tiers_counters c;
  pd_tiers_get_counters(f.tiers, &c);
  if (fired && (site == PD_FAULT_DISK_FULL || site == PD_FAULT_DISK_IO))
    ck_assert_msg(!pd_tiers_disk_enabled(f.tiers, &reason), "disk stays enabled after a fault");
  if (fired && site == PD_FAULT_MAP_FULL) {
    ck_assert(pd_tiers_disk_enabled(f.tiers, &reason));
    ck_assert_uint_ge(c.map_full_retries, 1);
  }
  /* after the fault the store still opens and serves what it holds */
  close_fixture(&f);
  int blocks = open_fixture(&f, PD_WRITE_ALWAYS, 64u << 20);
  ck_assert_int_ge(blocks, 0);
  for (int p = 0; p < PROMPTS; p++) verify_prompt(&f, p);
  close_fixture(&f);
  remove_dir();
  return fired;
}

static void fault_loop(enum pd_fault_site site) {
  long n = 1;
  while (faulty_run(site, n) && n < 400) n++;
  fprintf(stderr, "fault loop on site %d: the fault fired in %ld runs\n", (int)site, n - 1);
  ck_assert_msg(n > 1, "the fault never fired");
  ck_assert_int_lt(n, 400);
}

START_TEST(fault_loop_enospc) {
  fault_loop(PD_FAULT_DISK_FULL);
}
END_TEST

START_TEST(fault_loop_eio) {
  fault_loop(PD_FAULT_DISK_IO);
}
END_TEST

START_TEST(fault_loop_map_full) {
  fault_loop(PD_FAULT_MAP_FULL);
}
END_TEST

START_TEST(fault_loop_alloc) {
  fault_loop(PD_FAULT_ALLOC);
}
END_TEST

/* A child spills under load (every block written to disk, the device and host tiers
 * overflowing) and is killed with SIGKILL at a random moment, 20 times over one store. After each
 * kill the store reopens, the disk tier is rebuilt, and every block that comes back is exact. */
START_TEST(kill_9_during_spills) {
  make_dir();
  srand(12345);
  uint32_t restored_total = 0;
  for (int round = 0; round < 20; round++) {
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
      in_killed_child = 1;
      fixture f;
      if (open_fixture(&f, PD_WRITE_ALWAYS, 64u << 20) < 0) _exit(3);
      for (int i = 0;; i++) { /* until killed */
        insert_prompt(&f, i % PROMPTS);
        if (i % 3 == 0) pd_tiers_sync(f.tiers);
        verify_prompt(&f, (i * 7) % PROMPTS);
      }
    }
    usleep((useconds_t)(2000 + rand() % 40000));
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    ck_assert_msg(WIFSIGNALED(status),
                  "the child exited with %d before the kill (3: open, 4: an expectation)",
                  WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    fixture f;
    ck_assert_int_ge(open_fixture(&f, PD_WRITE_ALWAYS, 64u << 20), 0);
    check_tree(&f);
    for (int p = 0; p < PROMPTS; p++) restored_total += verify_prompt(&f, p);
    pd_kvstore_counters kc;
    ck_assert_int_eq(pd_tiers_disk_stats(f.tiers, &kc, NULL, NULL, NULL), 0);
    ck_assert_uint_eq(kc.checksum_failures, 0);
    close_fixture(&f);
  }
  fprintf(stderr, "kill -9 loop: %u blocks restored and verified over 20 kills\n", restored_total);
  ck_assert_uint_gt(restored_total, 0);
  remove_dir();
}
END_TEST

int main(void) {
  Suite *s = suite_create("tiers");
  TCase *tc = tcase_create("tiers");
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, cascade_and_restore);
  tcase_add_test(tc, no_disk_tier_drops_what_host_cannot_hold);
  tcase_add_test(tc, rebuild_after_reopen);
  tcase_add_test(tc, corrupt_record_is_a_miss_never_served);
  tcase_add_test(tc, restore_or_recompute_follows_rates);
  tcase_add_test(tc, fault_loop_enospc);
  tcase_add_test(tc, fault_loop_eio);
  tcase_add_test(tc, fault_loop_map_full);
  tcase_add_test(tc, fault_loop_alloc);
  tcase_add_test(tc, kill_9_during_spills);
  suite_add_tcase(s, tc);
  return pd_check_run(s, 1);
}
