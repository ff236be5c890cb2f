/*
 * test_prefix.c -- unit tests of the prefix cache core: keys, map, pool, tenants and the radix
 * tree's rules (match, dedup, copy-on-write, collisions, refcounts, pins, frontier eviction,
 * tenant isolation and limits, introspection). Every test ends with pd_radix_check.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "pd_check.h"
#include "pd_blockkey.h"
#include "pd_blockpool.h"
#include "pd_err.h"
#include "pd_keymap.h"
#include "pd_radix.h"

#define BT 16

static void check_ok(const pd_radix *t) {
  char err[256] = "";
  int rc = pd_radix_check(t, err, sizeof err);
  ck_assert_msg(rc == 0, "invariant: %s", err);
}

static void init_tree(pd_radix *t, uint32_t cap0, uint32_t cap1, uint32_t cap2, uint32_t mask) {
  pd_radix_config cfg = {
      .block_tokens = BT, .tier_capacity = {cap0, cap1, cap2}, .key_mask_bits = mask};
  memset(cfg.fingerprint, 0x42, 16);
  ck_assert_int_eq(pd_radix_init(t, &cfg), 0);
}

static uint32_t add_tenant(pd_radix *t, const char *name) {
  uint8_t salt[16];
  for (int i = 0; i < 16; i++) salt[i] = (uint8_t)(name[0] * 7 + i);
  uint32_t id;
  ck_assert_int_eq(pd_tenants_add(pd_radix_tenants(t), name, salt, &id), 0);
  return id;
}

static uint32_t private_ns(pd_radix *t, uint32_t tenant) {
  return pd_tenants_get(pd_radix_tenants(t), tenant)->private_ns;
}

/* Inserts tokens into tier (allocating slots) and releases the references. Returns blocks. */
static uint32_t insert(pd_radix *t, uint32_t tenant, uint32_t ns, const int32_t *tok, uint32_t n,
                       int tier, uint64_t now, int expect_rc) {
  uint32_t nb = (n + BT - 1) / BT;
  uint32_t *slots = calloc(nb + 1, 4);
  pd_insert_result *res = calloc(nb + 1, sizeof *res);
  for (uint32_t i = 0; i < nb; i++) ck_assert_int_eq(pd_radix_alloc_slot(t, tier, &slots[i]), 0);
  uint32_t done = 0;
  ck_assert_int_eq(pd_radix_insert(t, tenant, ns, tok, n, slots, tier, now, res, &done), expect_rc);
  uint32_t ids[256];
  for (uint32_t i = 0; i < done; i++) ids[i] = res[i].node;
  pd_radix_release(t, ids, done);
  free(slots);
  free(res);
  check_ok(t);
  return done;
}

static uint32_t match(pd_radix *t, uint32_t tenant, uint32_t ns, const int32_t *tok, uint32_t n,
                      uint64_t now, pd_match *m) {
  uint32_t nodes[256];
  ck_assert_int_eq(pd_radix_match(t, tenant, ns, tok, n, now, nodes, 256, m), 0);
  pd_radix_release(t, nodes, m->n_nodes);
  check_ok(t);
  return m->n_tokens;
}

static void seq(int32_t *out, uint32_t n, int32_t start) {
  for (uint32_t i = 0; i < n; i++) out[i] = start + (int32_t)i;
}

START_TEST(keys_are_stable_and_chained) {
  uint8_t fp[16];
  memset(fp, 1, 16);
  pd_key128 r = pd_blockkey_root("ns", 2, fp);
  int32_t tok[16];
  seq(tok, 16, 100);
  pd_key128 k1 = pd_blockkey_next(r, tok, 16);
  pd_key128 k1b = pd_blockkey_next(r, tok, 16);
  ck_assert(pd_key_eq(k1, k1b));
  /* Pinned values, computed independently with python-xxhash (xxh3_128 over the same bytes):
   * a change of the scheme invalidates every disk tier, so it must be on purpose. */
  char hex[33];
  pd_key_hex(r, hex);
  ck_assert_str_eq(hex, "34aeb304a2ff3df66034ec2b6b7ae748");
  pd_key_hex(k1, hex);
  ck_assert_str_eq(hex, "2fa4c955d3531c6edafc46b3ec5f1c29");
  pd_key128 parsed;
  ck_assert_int_eq(pd_key_parse(hex, &parsed), 0);
  ck_assert(pd_key_eq(parsed, k1));
  ck_assert_int_eq(pd_key_parse("zz", &parsed), -1);
  tok[15]++;
  ck_assert(!pd_key_eq(pd_blockkey_next(r, tok, 16), k1));
  ck_assert(!pd_key_eq(pd_blockkey_next(r, tok, 15), pd_blockkey_next(r, tok, 16)));
  fp[0] = 2;
  ck_assert(!pd_key_eq(pd_blockkey_root("ns", 2, fp), r));
}
END_TEST

START_TEST(keymap_insert_remove_many) {
  pd_keymap m;
  ck_assert_int_eq(pd_keymap_init(&m, 4), 0);
  for (uint32_t i = 0; i < 5000; i++)
    ck_assert_int_eq(pd_keymap_insert(&m, i * 0x9e3779b97f4a7c15ull % 977, i), 0);
  for (uint32_t i = 0; i < 5000; i += 2)
    ck_assert_int_eq(pd_keymap_remove(&m, i * 0x9e3779b97f4a7c15ull % 977, i), 0);
  ck_assert_int_eq(pd_keymap_remove(&m, 0, 0), PD_ENOTFOUND);
  for (uint32_t i = 1; i < 5000; i += 2) {
    uint64_t cur = 0;
    uint32_t node;
    int found = 0;
    while (pd_keymap_next(&m, i * 0x9e3779b97f4a7c15ull % 977, &cur, &node))
      if (node == i) found = 1;
    ck_assert_msg(found, "lost %u", i);
  }
  ck_assert_uint_eq(m.count, 2500);
  pd_keymap_free(&m);
}
END_TEST

START_TEST(blockpool_alloc_free_double_free) {
  pd_blockpool p;
  ck_assert_int_eq(pd_blockpool_init(&p, 3), 0);
  uint32_t a, b, c, d;
  ck_assert_int_eq(pd_blockpool_alloc(&p, &a), 0);
  ck_assert_int_eq(pd_blockpool_alloc(&p, &b), 0);
  ck_assert_int_eq(pd_blockpool_alloc(&p, &c), 0);
  ck_assert_uint_eq(a, 0);
  ck_assert_int_eq(pd_blockpool_alloc(&p, &d), PD_EFULL);
  ck_assert_int_eq(pd_blockpool_release(&p, b), 0);
  ck_assert_int_eq(pd_blockpool_release(&p, b), PD_EINVAL);
  ck_assert_int_eq(pd_blockpool_release(&p, 7), PD_EINVAL);
  ck_assert_uint_eq(pd_blockpool_used(&p), 2);
  ck_assert_int_eq(pd_blockpool_alloc(&p, &d), 0);
  ck_assert_uint_eq(d, b);
  pd_blockpool_free(&p);
}
END_TEST

START_TEST(match_full_partial_and_cow) {
  pd_radix t;
  init_tree(&t, 64, 0, 0, 0);
  uint32_t a = add_tenant(&t, "a"), ns = private_ns(&t, a);
  int32_t tok[64];
  seq(tok, 64, 1);
  ck_assert_uint_eq(insert(&t, a, ns, tok, 40, 0, 1, 0), 3); /* 16 + 16 + 8 (partial) */
  pd_match m;
  ck_assert_uint_eq(match(&t, a, ns, tok, 64, 2, &m), 40);
  ck_assert_uint_eq(m.n_nodes, 3);
  ck_assert_int_eq(m.cow, 2); /* the partial tail is shared: copy before appending */
  ck_assert_uint_eq(match(&t, a, ns, tok, 32, 3, &m), 32);
  ck_assert_int_eq(m.cow, -1);
  /* Token-granular: diverging inside the second block matches up to the divergence. */
  int32_t other[64];
  memcpy(other, tok, sizeof other);
  other[20] = 9999;
  ck_assert_uint_eq(match(&t, a, ns, other, 64, 4, &m), 20);
  ck_assert_uint_eq(m.n_nodes, 2);
  ck_assert_int_eq(m.cow, 1);
  other[0] = 9999;
  ck_assert_uint_eq(match(&t, a, ns, other, 64, 5, &m), 0);
  ck_assert_uint_eq(t.stats.query_tokens, 64 + 32 + 64 + 64);
  ck_assert_uint_eq(t.stats.hit_tokens, 40 + 32 + 20);
  pd_radix_free(&t);
}
END_TEST

START_TEST(insert_dedups_identical_blocks) {
  pd_radix t;
  init_tree(&t, 64, 0, 0, 0);
  uint32_t a = add_tenant(&t, "a"), ns = private_ns(&t, a);
  int32_t tok[64];
  seq(tok, 64, 1);
  insert(&t, a, ns, tok, 48, 0, 1, 0);
  ck_assert_uint_eq(pd_radix_tier_used(&t, 0), 3);
  insert(&t, a, ns, tok, 64, 0, 2, 0); /* 3 shared + 1 new */
  ck_assert_uint_eq(pd_radix_tier_used(&t, 0), 4);
  ck_assert_uint_eq(t.stats.blocks_deduped, 3);
  tok[40] = -5; /* a sibling branch from block 2 on */
  insert(&t, a, ns, tok, 64, 0, 3, 0);
  ck_assert_uint_eq(pd_radix_tier_used(&t, 0), 6);
  pd_radix_free(&t);
}
END_TEST

START_TEST(collision_costs_a_miss_never_a_wrong_block) {
  pd_radix t;
  init_tree(&t, 4096, 0, 0, 3); /* keys masked to 3 bits: nearly every block collides */
  uint32_t a = add_tenant(&t, "a"), ns = private_ns(&t, a);
  int32_t tok[2][64];
  for (int s = 0; s < 200; s++) {
    seq(tok[0], 64, s * 1000);
    insert(&t, a, ns, tok[0], 64, 0, (uint64_t)s, 0);
  }
  ck_assert_uint_gt(t.stats.collisions, 0);
  for (int s = 0; s < 200; s++) {
    seq(tok[0], 64, s * 1000);
    pd_match m;
    uint32_t nodes[8];
    ck_assert_int_eq(pd_radix_match(&t, a, ns, tok[0], 64, 1000, nodes, 8, &m), 0);
    ck_assert_uint_eq(m.n_tokens, 64);
    /* Every matched node holds exactly the prompt's tokens. */
    int32_t path[64];
    uint32_t np;
    ck_assert_int_eq(pd_radix_path_tokens(&t, nodes[m.n_nodes - 1], path, 64, &np), 0);
    ck_assert_uint_eq(np, 64);
    ck_assert_mem_eq(path, tok[0], sizeof path);
    pd_radix_release(&t, nodes, m.n_nodes);
    /* A prompt never inserted gets no tokens it does not share. */
    seq(tok[1], 64, s * 1000 + 500);
    ck_assert_int_eq(pd_radix_match(&t, a, ns, tok[1], 64, 1000, nodes, 8, &m), 0);
    ck_assert_uint_eq(m.n_tokens, 0);
    pd_radix_release(&t, nodes, m.n_nodes);
  }
  check_ok(&t);
  pd_radix_free(&t);
}
END_TEST

START_TEST(references_and_pins_block_eviction) {
  pd_radix t;
  init_tree(&t, 8, 0, 0, 0);
  uint32_t a = add_tenant(&t, "a"), ns = private_ns(&t, a);
  int32_t tok[64];
  seq(tok, 64, 1);
  insert(&t, a, ns, tok, 64, 0, 1, 0); /* 4 blocks */
  uint32_t nodes[8];
  pd_match m;
  ck_assert_int_eq(pd_radix_match(&t, a, ns, tok, 64, 2, nodes, 8, &m), 0);
  pd_evicted ev[8];
  uint32_t n_ev;
  ck_assert_int_eq(pd_radix_evict(&t, 0, -1, 8, 3, ev, &n_ev), 0);
  ck_assert_uint_eq(n_ev, 0); /* all referenced */
  pd_radix_release(&t, nodes, m.n_nodes);
  ck_assert_int_eq(pd_radix_pin(&t, nodes[1], 100), 0); /* pins blocks 0 and 1 until t=100 */
  check_ok(&t);
  ck_assert_int_eq(pd_radix_evict(&t, 0, -1, 8, 50, ev, &n_ev), 0);
  ck_assert_uint_eq(n_ev, 2); /* blocks 3 then 2: leaves first */
  ck_assert_uint_eq(ev[0].node, nodes[3]);
  ck_assert_uint_eq(ev[1].node, nodes[2]);
  uint32_t n_drop;
  pd_evicted dropped[8];
  ck_assert_int_eq(pd_radix_drop(&t, nodes[2], dropped, 8, &n_drop), 0);
  ck_assert_uint_eq(n_drop, 0); /* detached nodes hold no slot */
  check_ok(&t);
  ck_assert_int_eq(pd_radix_evict(&t, 0, -1, 8, 99, ev, &n_ev), 0);
  ck_assert_uint_eq(n_ev, 0); /* pinned */
  ck_assert_int_eq(pd_radix_evict(&t, 0, -1, 8, 100, ev, &n_ev), 0);
  ck_assert_uint_eq(n_ev, 2); /* the pin expired */
  check_ok(&t);
  pd_radix_free(&t);
}
END_TEST

START_TEST(frontier_demote_restore_and_drop) {
  pd_radix t;
  init_tree(&t, 8, 8, 8, 0);
  uint32_t a = add_tenant(&t, "a"), ns = private_ns(&t, a);
  int32_t tok[48];
  seq(tok, 48, 1);
  insert(&t, a, ns, tok, 48, 0, 1, 0);
  pd_evicted ev[8];
  uint32_t n_ev;
  /* Demote everything to host, one victim at a time: leaves go first. */
  for (int i = 0; i < 3; i++) {
    ck_assert_int_eq(pd_radix_evict(&t, 0, -1, 1, 2, ev, &n_ev), 0);
    ck_assert_uint_eq(n_ev, 1);
    uint32_t slot;
    ck_assert_int_eq(pd_radix_alloc_slot(&t, 1, &slot), 0);
    ck_assert_int_eq(pd_radix_place(&t, ev[0].node, 1, slot), 0);
    check_ok(&t);
  }
  ck_assert_uint_eq(pd_radix_tier_used(&t, 0), 0);
  ck_assert_uint_eq(pd_radix_tier_used(&t, 1), 3);
  pd_match m;
  uint32_t by_tier[PD_TIERS], n_cached;
  ck_assert_int_eq(pd_radix_peek(&t, a, ns, tok, 48, &n_cached, by_tier), 0);
  ck_assert_uint_eq(n_cached, 48);
  ck_assert_uint_eq(by_tier[1], 48);
  /* Restore in path order; restoring a child before its parent breaks the rule and is refused. */
  uint32_t nodes[8];
  ck_assert_int_eq(pd_radix_match(&t, a, ns, tok, 48, 3, nodes, 8, &m), 0);
  uint32_t slot;
  ck_assert_int_eq(pd_radix_alloc_slot(&t, 0, &slot), 0);
  ck_assert_int_eq(pd_radix_place(&t, nodes[1], 0, slot), PD_EINVAL);
  for (uint32_t i = 0; i < m.n_nodes; i++) {
    if (i) ck_assert_int_eq(pd_radix_alloc_slot(&t, 0, &slot), 0);
    ck_assert_int_eq(pd_radix_place(&t, nodes[i], 0, slot), 0);
  }
  check_ok(&t);
  /* A referenced node may not move colder. */
  ck_assert_int_eq(pd_radix_alloc_slot(&t, 2, &slot), 0);
  ck_assert_int_eq(pd_radix_place(&t, nodes[2], 2, slot), PD_EBUSY);
  pd_radix_release(&t, nodes, m.n_nodes);
  /* Dropping the first block drops the whole path and reports each slot. */
  pd_evicted dropped[8];
  uint32_t n_drop;
  ck_assert_int_eq(pd_radix_drop(&t, nodes[0], dropped, 1, &n_drop), PD_EFULL);
  ck_assert_int_eq(pd_radix_drop(&t, nodes[0], dropped, 8, &n_drop), 0);
  ck_assert_uint_eq(n_drop, 3);
  ck_assert_int_eq(pd_radix_free_slot(&t, 2, slot), 0);
  check_ok(&t);
  ck_assert_uint_eq(pd_radix_tier_used(&t, 0), 0);
  pd_radix_free(&t);
}
END_TEST

START_TEST(tenants_are_isolated_and_limited) {
  pd_radix t;
  init_tree(&t, 64, 0, 0, 0);
  uint32_t a = add_tenant(&t, "alice"), b = add_tenant(&t, "bob");
  uint32_t na = private_ns(&t, a), nb = private_ns(&t, b);
  int32_t tok[64];
  seq(tok, 64, 7);
  insert(&t, a, na, tok, 64, 0, 1, 0);
  pd_match m;
  ck_assert_uint_eq(match(&t, a, na, tok, 64, 2, &m), 64);
  ck_assert_uint_eq(match(&t, b, nb, tok, 64, 2, &m), 0); /* same prompt, other tenant: miss */
  uint32_t nodes[8];
  ck_assert_int_eq(pd_radix_match(&t, b, na, tok, 64, 2, nodes, 8, &m), PD_EPERM);
  uint32_t slot, done;
  pd_insert_result res[1];
  ck_assert_int_eq(pd_radix_alloc_slot(&t, 0, &slot), 0);
  ck_assert_int_eq(pd_radix_insert(&t, b, na, tok, 16, &slot, 0, 3, res, &done), PD_EPERM);
  check_ok(&t);
  /* A shared namespace works only once granted. */
  uint8_t salt[16] = {9};
  uint32_t shared;
  ck_assert_int_eq(pd_tenants_add_shared(pd_radix_tenants(&t), "public", salt, &shared), 0);
  ck_assert_int_eq(pd_radix_match(&t, a, shared, tok, 64, 2, nodes, 8, &m), PD_EPERM);
  ck_assert_int_eq(pd_tenants_grant(pd_radix_tenants(&t), a, shared), 0);
  ck_assert_int_eq(pd_tenants_grant(pd_radix_tenants(&t), b, shared), 0);
  ck_assert_int_eq(pd_tenants_grant(pd_radix_tenants(&t), b, na), PD_EPERM);
  insert(&t, a, shared, tok, 32, 0, 4, 0);
  ck_assert_uint_eq(match(&t, b, shared, tok, 64, 5, &m), 32);
  ck_assert_int_eq(pd_tenants_revoke(pd_radix_tenants(&t), b, shared), 0);
  ck_assert_int_eq(pd_radix_match(&t, b, shared, tok, 64, 2, nodes, 8, &m), PD_EPERM);
  /* Limits: bob may hold 2 device blocks; his own LRU blocks go first, alice's never. */
  ck_assert_int_eq(pd_tenants_set_limit(pd_radix_tenants(&t), b, 0, 2), 0);
  int32_t bt[64];
  seq(bt, 64, 5000);
  ck_assert_uint_eq(insert(&t, b, nb, bt, 64, 0, 6, PD_ELIMIT), 2);
  pd_evicted ev[8];
  uint32_t n_ev;
  ck_assert_int_eq(pd_radix_evict(&t, 0, (int32_t)b, 8, 7, ev, &n_ev), 0);
  ck_assert_uint_eq(n_ev, 2);
  for (uint32_t i = 0; i < n_ev; i++) ck_assert_uint_eq(ev[i].tenant, b);
  for (uint32_t i = 0; i < n_ev; i++) {
    uint32_t nd;
    ck_assert_int_eq(pd_radix_drop(&t, ev[i].node, ev + 4, 4, &nd), 0);
  }
  ck_assert_uint_eq(match(&t, a, na, tok, 64, 8, &m), 64);
  ck_assert_uint_eq(pd_tenants_get(pd_radix_tenants(&t), b)->used[0], 0);
  pd_radix_free(&t);
}
END_TEST

START_TEST(introspection_lists_prefixes) {
  pd_radix t;
  init_tree(&t, 64, 0, 0, 0);
  uint32_t a = add_tenant(&t, "a"), b = add_tenant(&t, "b");
  int32_t tok[64];
  seq(tok, 64, 1);
  insert(&t, a, private_ns(&t, a), tok, 40, 0, 1, 0);
  tok[35] = -1;
  insert(&t, a, private_ns(&t, a), tok, 64, 0, 2, 0);
  insert(&t, b, private_ns(&t, b), tok, 16, 0, 3, 0);
  uint32_t cursor = 0, count_a = 0, count_all = 0;
  pd_prefix_info info;
  pd_key128 shared_id = {0, 0};
  int n_children = 0;
  while (pd_radix_next_prefix(&t, &cursor, (int32_t)a, &info)) {
    count_a++;
    /* the two prompts, and the 32 tokens they share (where their paths part) */
    ck_assert(info.n_tokens == 32 || info.n_tokens == 40 || info.n_tokens == 64);
    uint32_t found;
    ck_assert_int_eq(pd_radix_find(&t, info.id, &found), 0);
    ck_assert_uint_eq(found, info.node);
    if (info.n_tokens == 32) {
      ck_assert_int_eq(info.has_parent, 0); /* its first block is not a prefix of its own */
      shared_id = info.id;
    }
  }
  cursor = 0;
  while (pd_radix_next_prefix(&t, &cursor, (int32_t)a, &info))
    if (info.n_tokens != 32) {
      ck_assert_int_eq(info.has_parent, 1); /* both prompts continue the shared 32 tokens */
      ck_assert(pd_key_eq(info.parent_id, shared_id));
      n_children++;
    }
  ck_assert_int_eq(n_children, 2);
  cursor = 0;
  while (pd_radix_next_prefix(&t, &cursor, -1, &info)) count_all++;
  ck_assert_uint_eq(count_a, 3);
  ck_assert_uint_eq(count_all, 4);
  /* A pin on an inner node makes it a prefix of its own. */
  pd_match m;
  uint32_t nodes[8];
  ck_assert_int_eq(pd_radix_match(&t, a, private_ns(&t, a), tok, 16, 4, nodes, 8, &m), 0);
  ck_assert_int_eq(pd_radix_pin(&t, nodes[0], PD_PIN_FOREVER), 0);
  pd_radix_release(&t, nodes, m.n_nodes);
  cursor = 0, count_a = 0;
  while (pd_radix_next_prefix(&t, &cursor, (int32_t)a, &info)) {
    count_a++;
    /* the pinned first block is now the parent of the shared 32 tokens */
    if (info.n_tokens == 16) ck_assert_int_eq(info.has_parent, 0);
    if (info.n_tokens == 32) ck_assert_int_eq(info.has_parent, 1);
  }
  ck_assert_uint_eq(count_a, 4);
  ck_assert_int_eq(pd_radix_unpin(&t, nodes[0]), 0);
  ck_assert_int_eq(pd_radix_unpin(&t, nodes[0]), PD_EINVAL);
  check_ok(&t);
  pd_radix_free(&t);
}
END_TEST

START_TEST(extend_below_a_matched_prefix) {
  /* A sequence matched 2 blocks, computed 2 more: extend inserts them below its anchor, and on
   * a quota the remaining slots stay the caller's (not freed), unlike insert. */
  pd_radix t;
  init_tree(&t, 64, 0, 0, 0);
  uint32_t a = add_tenant(&t, "a"), ns = private_ns(&t, a);
  int32_t tok[128];
  seq(tok, 128, 1);
  insert(&t, a, ns, tok, 2 * BT, 0, 1, 0);
  uint32_t nodes[8];
  pd_match m;
  ck_assert_int_eq(pd_radix_match(&t, a, ns, tok, 4 * BT, 2, nodes, 8, &m), 0);
  ck_assert_uint_eq(m.n_nodes, 2);
  uint32_t slots[2];
  for (int i = 0; i < 2; i++) ck_assert_int_eq(pd_radix_alloc_slot(&t, 0, &slots[i]), 0);
  pd_insert_result res[2];
  uint32_t done = 0;
  ck_assert_int_eq(pd_radix_extend(&t, a, nodes[1], tok + 2 * BT, 2 * BT, slots, 0, 3, res, &done),
                   0);
  ck_assert_uint_eq(done, 2);
  ck_assert_uint_eq(pd_radix_node(&t, res[0].node)->parent, nodes[1]);
  ck_assert_uint_eq(pd_radix_node(&t, res[1].node)->slot, slots[1]);
  uint32_t path[4] = {nodes[0], nodes[1], res[0].node, res[1].node};
  pd_radix_release(&t, path, 4);
  ck_assert_uint_eq(match(&t, a, ns, tok, 4 * BT, 4, &m), 4 * BT);
  /* below a partial block: refused */
  insert(&t, a, ns, tok, 4 * BT + 3, 0, 5, 0);
  ck_assert_int_eq(pd_radix_match(&t, a, ns, tok, 4 * BT + 3, 6, nodes, 8, &m), 0);
  uint32_t slot;
  ck_assert_int_eq(pd_radix_alloc_slot(&t, 0, &slot), 0);
  ck_assert_int_eq(pd_radix_extend(&t, a, nodes[4], tok, 1, &slot, 0, 7, res, &done), PD_EINVAL);
  pd_radix_release(&t, nodes, m.n_nodes);
  /* a quota: the slot not inserted stays allocated, the caller frees it */
  ck_assert_int_eq(pd_tenants_set_limit(pd_radix_tenants(&t), a, 0,
                                        pd_tenants_get(pd_radix_tenants(&t), a)->used[0]),
                   0);
  uint32_t root;
  ck_assert_int_eq(pd_radix_root(&t, a, ns, &root), 0);
  int32_t other[BT];
  seq(other, BT, 500);
  uint32_t used = pd_radix_tier_used(&t, 0);
  ck_assert_int_eq(pd_radix_extend(&t, a, root, other, BT, &slot, 0, 8, res, &done), PD_ELIMIT);
  ck_assert_uint_eq(done, 0);
  ck_assert_uint_eq(pd_radix_tier_used(&t, 0), used);
  ck_assert_int_eq(pd_radix_free_slot(&t, 0, slot), 0);
  /* another tenant may not extend a's tree */
  uint32_t b = add_tenant(&t, "b");
  ck_assert_int_eq(pd_radix_extend(&t, b, root, other, BT, &slot, 0, 9, res, &done), PD_EPERM);
  check_ok(&t);
  pd_radix_free(&t);
}
END_TEST

/* pd_radix_continuation: what follows a context cached to its end, read-only. */
START_TEST(continuation_of_a_cached_context) {
  pd_radix t;
  init_tree(&t, 64, 0, 0, 0);
  uint32_t a = add_tenant(&t, "a"), b = add_tenant(&t, "b"), ns = private_ns(&t, a);
  int32_t tok[64], out[64];
  seq(tok, 64, 1);
  ck_assert_uint_eq(insert(&t, a, ns, tok, 40, 0, 1, 0), 3); /* 16 + 16 + 8 (partial) */
  pd_radix_stats before = t.stats;
  uint32_t n = 99;
  /* into a block: the rest of it, then the next block, then the partial tail's 8 */
  ck_assert_int_eq(pd_radix_continuation(&t, a, ns, tok, 10, out, 64, &n), 0);
  ck_assert_uint_eq(n, 30);
  ck_assert_mem_eq(out, tok + 10, 30 * sizeof *out);
  /* at a block boundary; capped */
  ck_assert_int_eq(pd_radix_continuation(&t, a, ns, tok, 16, out, 5, &n), 0);
  ck_assert_uint_eq(n, 5);
  ck_assert_mem_eq(out, tok + 16, 5 * sizeof *out);
  /* the empty context: the whole path; the end of the path: nothing */
  ck_assert_int_eq(pd_radix_continuation(&t, a, ns, tok, 0, out, 64, &n), 0);
  ck_assert_uint_eq(n, 40);
  ck_assert_int_eq(pd_radix_continuation(&t, a, ns, tok, 40, out, 64, &n), 0);
  ck_assert_uint_eq(n, 0);
  /* a context that diverges, or runs past what is cached: nothing */
  int32_t other[64];
  memcpy(other, tok, sizeof other);
  other[20] = 9999;
  ck_assert_int_eq(pd_radix_continuation(&t, a, ns, other, 24, out, 64, &n), 0);
  ck_assert_uint_eq(n, 0);
  ck_assert_int_eq(pd_radix_continuation(&t, a, ns, tok, 48, out, 64, &n), 0);
  ck_assert_uint_eq(n, 0);
  ck_assert_mem_eq(&t.stats, &before, sizeof before);
  /* two continuations of the first block: the most recently used one */
  other[0] = tok[0];
  for (int i = 16; i < 32; i++) other[i] = 5000 + i;
  ck_assert_uint_eq(insert(&t, a, ns, other, 32, 0, 7, 0), 2); /* the first deduplicated */
  before = t.stats;
  ck_assert_int_eq(pd_radix_continuation(&t, a, ns, tok, 16, out, 16, &n), 0);
  ck_assert_uint_eq(n, 16);
  ck_assert_mem_eq(out, other + 16, 16 * sizeof *out);
  /* read-only: no hit or match counted */
  ck_assert_mem_eq(&t.stats, &before, sizeof before);
  /* tenants: another's namespace is refused; b's own has nothing */
  ck_assert_int_eq(pd_radix_continuation(&t, b, ns, tok, 16, out, 16, &n), PD_EPERM);
  ck_assert_uint_eq(n, 0);
  ck_assert_int_eq(pd_radix_continuation(&t, b, private_ns(&t, b), tok, 16, out, 16, &n), 0);
  ck_assert_uint_eq(n, 0);
  check_ok(&t);
  pd_radix_free(&t);
}
END_TEST

int main(void) {
  Suite *s = suite_create("prefix");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, keys_are_stable_and_chained);
  tcase_add_test(tc, keymap_insert_remove_many);
  tcase_add_test(tc, blockpool_alloc_free_double_free);
  tcase_add_test(tc, match_full_partial_and_cow);
  tcase_add_test(tc, insert_dedups_identical_blocks);
  tcase_add_test(tc, collision_costs_a_miss_never_a_wrong_block);
  tcase_add_test(tc, references_and_pins_block_eviction);
  tcase_add_test(tc, frontier_demote_restore_and_drop);
  tcase_add_test(tc, tenants_are_isolated_and_limited);
  tcase_add_test(tc, introspection_lists_prefixes);
  tcase_add_test(tc, extend_below_a_matched_prefix);
  tcase_add_test(tc, continuation_of_a_cached_context);
  suite_add_tcase(s, tc);
  int rc = pd_check_run(s, 1);
  return rc;
}
