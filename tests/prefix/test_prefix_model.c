/*
 * test_prefix_model.c -- a randomized model-based test of the radix tree.
 *
 * A seeded stream of operations drives the tree the way the engine and the tier manager will:
 * requests (match, restore the matched path to tier 0, insert the whole prompt, hold or release
 * the references), lookups, pins with TTLs, unpins, evictions with demotion down the tiers,
 * drops of whole prefixes, tenant limit changes and the passing of time. A reference model
 * mirrors the tree as a flat list of (node, parent, namespace, tokens, tier) entries and answers
 * every lookup by linear scans, with no hashing; after every operation the tree's invariants are
 * checked (pd_radix_check) and every 16 operations a batch of lookups must agree exactly with
 * the reference. References held by "running" requests must never lose their blocks.
 *
 * PD_MODEL_OPS sets the number of operations (default 120000); PD_MODEL_SEED the seed.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_check.h"
#include "pd_err.h"
#include "pd_radix.h"

#define BT     4
#define MAXTOK 48
#define NT     3

typedef struct ref_entry {
  int live;
  uint32_t node, parent; /* tree node ids; parent PD_NODE_NIL for a namespace's first block */
  uint32_t ns;
  uint32_t n_tokens;    /* tokens of this block */
  int32_t path[MAXTOK]; /* tokens from the root through this block */
  uint32_t path_len;
  uint8_t tier; /* 0..2 or PD_TIER_NONE */
} ref_entry;

static ref_entry *ref;
static uint32_t n_ref, cap_ref;
static uint32_t *free_entries, n_free_entries; /* dead entries to reuse */
static int32_t *ref_of_node;                   /* node id -> entry index, -1 */
static uint32_t cap_map;

static uint64_t rng_state;
static uint32_t rnd(uint32_t n) {
  rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
  return (uint32_t)(rng_state % n);
}

static ref_entry *entry_of(uint32_t node) {
  if (node >= cap_map || ref_of_node[node] < 0) return NULL;
  return &ref[ref_of_node[node]];
}

static void ref_set(uint32_t node, uint32_t parent, uint32_t ns, const int32_t *path,
                    uint32_t path_len, uint32_t n_tokens, uint8_t tier) {
  while (node >= cap_map) {
    uint32_t ncap = cap_map ? cap_map * 2 : 1024;
    ref_of_node = realloc(ref_of_node, ncap * sizeof *ref_of_node);
    for (uint32_t i = cap_map; i < ncap; i++) ref_of_node[i] = -1;
    cap_map = ncap;
  }
  ref_entry *e = entry_of(node);
  if (!e) {
    uint32_t idx;
    if (n_free_entries) {
      idx = free_entries[--n_free_entries];
    } else {
      if (n_ref == cap_ref) {
        cap_ref = cap_ref ? cap_ref * 2 : 1024;
        ref = realloc(ref, cap_ref * sizeof *ref);
        free_entries = realloc(free_entries, cap_ref * sizeof *free_entries);
      }
      idx = n_ref++;
    }
    ref_of_node[node] = (int32_t)idx;
    e = &ref[idx];
  }
  e->live = 1, e->node = node, e->parent = parent, e->ns = ns, e->n_tokens = n_tokens;
  memcpy(e->path, path, 4 * path_len);
  e->path_len = path_len;
  e->tier = tier;
}

static void ref_remove_subtree(uint32_t node) {
  /* First find every entry under node (walking parent links), then remove them all. */
  uint8_t *doomed = calloc(n_ref + 1, 1);
  for (uint32_t i = 0; i < n_ref; i++) {
    if (!ref[i].live) continue;
    for (uint32_t a = ref[i].node; a != PD_NODE_NIL;) {
      if (a == node) {
        doomed[i] = 1;
        break;
      }
      ref_entry *p = entry_of(a);
      a = p ? p->parent : PD_NODE_NIL;
    }
  }
  for (uint32_t i = 0; i < n_ref; i++)
    if (doomed[i]) {
      ref[i].live = 0;
      ref_of_node[ref[i].node] = -1;
      free_entries[n_free_entries++] = i;
    }
  free(doomed);
}

/* The reference answer: tokens of prompt cached in ns, by linear scans. */
static uint32_t ref_lookup(uint32_t ns, const int32_t *tok, uint32_t n) {
  uint32_t cur = PD_NODE_NIL, pos = 0;
  for (;;) {
    uint32_t rem = n - pos < BT ? n - pos : BT;
    if (rem == 0) return pos;
    int advanced = 0;
    if (rem == BT)
      for (uint32_t i = 0; i < n_ref && !advanced; i++) {
        ref_entry *e = &ref[i];
        if (e->live && e->tier < PD_TIERS && e->ns == ns && e->parent == cur && e->n_tokens == BT &&
            !memcmp(e->path + pos, tok + pos, 4 * BT))
          cur = e->node, pos += BT, advanced = 1;
      }
    if (advanced) continue;
    uint32_t best = 0;
    for (uint32_t i = 0; i < n_ref; i++) {
      ref_entry *e = &ref[i];
      if (!e->live || e->tier >= PD_TIERS || e->ns != ns || e->parent != cur) continue;
      uint32_t l = 0;
      while (l < e->n_tokens && l < rem && e->path[pos + l] == tok[pos + l]) l++;
      if (l > best) best = l;
    }
    return pos + best;
  }
}

static pd_radix tree;
static uint32_t ns_of[NT + 1], tenant_of_ns[NT + 1];
static uint64_t now_ms;

typedef struct held {
  uint32_t nodes[MAXTOK];
  uint32_t n;
  int32_t tok[MAXTOK];
  uint32_t n_tok;
} held;
static held holds[8];
static uint32_t n_holds;

static void check_tree(void) {
  char err[256];
  int rc = pd_radix_check(&tree, err, sizeof err);
  ck_assert_msg(rc == 0, "invariant after %llu ms: %s", (unsigned long long)now_ms, err);
}

/* Demotes up to want victims of tier one tier down, the way the tier manager does: evict a batch
 * (children before parents), make room for all of it in the next tier first (cascading), then
 * place the batch parents first; what finds no room, and the coldest tier's victims, is dropped
 * with its subtree. */
static void make_room(int tier, uint32_t want, int32_t tenant) {
  pd_evicted ev[64];
  uint32_t n_ev, slots[64], n_slots = 0;
  if (want > 64) want = 64;
  ck_assert_int_eq(pd_radix_evict(&tree, tier, tenant, want, now_ms, ev, &n_ev), 0);
  for (uint32_t i = 0; i < n_ev; i++) entry_of(ev[i].node)->tier = PD_TIER_NONE;
  if (tier + 1 < PD_TIERS && n_ev) {
    const pd_blockpool *next = &tree.pool[tier + 1];
    if (next->n_free < n_ev) make_room(tier + 1, n_ev - next->n_free, -1);
    while (n_slots < n_ev && pd_radix_alloc_slot(&tree, tier + 1, &slots[n_slots]) == 0) n_slots++;
  }
  for (uint32_t i = n_ev; i-- > 0;) {    /* parents were evicted after their children */
    if (!entry_of(ev[i].node)) continue; /* dropped with its parent's subtree */
    if (n_slots) {
      ck_assert_int_eq(pd_radix_place(&tree, ev[i].node, tier + 1, slots[--n_slots]), 0);
      entry_of(ev[i].node)->tier = (uint8_t)(tier + 1);
      continue;
    }
    pd_evicted dropped[256];
    uint32_t n_drop;
    ck_assert_int_eq(pd_radix_drop(&tree, ev[i].node, dropped, 256, &n_drop), 0);
    ref_remove_subtree(ev[i].node);
  }
  while (n_slots) ck_assert_int_eq(pd_radix_free_slot(&tree, tier + 1, slots[--n_slots]), 0);
}

static void random_prompt(int32_t *tok, uint32_t *n) {
  *n = 1 + rnd(MAXTOK);
  uint32_t alphabet = 2 + rnd(3);
  for (uint32_t i = 0; i < *n; i++) tok[i] = (int32_t)rnd(alphabet);
}

static void op_request(void) {
  uint32_t which = rnd(NT + 1), ns = ns_of[which], tenant = tenant_of_ns[which];
  if (which == NT) tenant = rnd(2); /* the shared namespace: tenants 0 and 1 are granted it */
  int32_t tok[MAXTOK];
  uint32_t n;
  random_prompt(tok, &n);
  uint32_t nodes[MAXTOK];
  pd_match m;
  ck_assert_int_eq(pd_radix_match(&tree, tenant, ns, tok, n, now_ms, nodes, MAXTOK, &m), 0);
  ck_assert_uint_eq(m.n_tokens, ref_lookup(ns, tok, n));
  if (m.n_nodes) { /* never a wrong block: the path holds exactly the prompt's tokens */
    int32_t path[MAXTOK];
    uint32_t np;
    ck_assert_int_eq(pd_radix_path_tokens(&tree, nodes[m.n_nodes - 1], path, MAXTOK, &np), 0);
    ck_assert_uint_ge(np, m.n_tokens);
    ck_assert_mem_eq(path, tok, 4 * m.n_tokens);
  }
  /* Restore the full blocks of the matched path to tier 0, in path order. */
  uint32_t restored = 0;
  for (uint32_t i = 0; i < m.n_nodes && (int32_t)i != m.cow; i++, restored++) {
    const pd_node *nd = pd_radix_node(&tree, nodes[i]);
    if (nd->tier == 0) continue;
    uint32_t slot;
    if (pd_radix_alloc_slot(&tree, 0, &slot) == PD_EFULL) {
      make_room(0, 2, -1);
      if (pd_radix_alloc_slot(&tree, 0, &slot) == PD_EFULL) break;
    }
    ck_assert_int_eq(pd_radix_place(&tree, nodes[i], 0, slot), 0);
    entry_of(nodes[i])->tier = 0;
  }
  /* Insert the prompt (only if its matched full blocks are all hot). */
  uint32_t full = m.cow >= 0 ? (uint32_t)m.cow : m.n_nodes;
  if (restored == full) {
    uint32_t nb = (n + BT - 1) / BT, slots[MAXTOK], got = 0;
    for (; got < nb; got++)
      if (pd_radix_alloc_slot(&tree, 0, &slots[got]) == PD_EFULL) {
        make_room(0, nb - got, -1);
        if (pd_radix_alloc_slot(&tree, 0, &slots[got]) == PD_EFULL) break;
      }
    uint32_t n_ins = got * BT < n ? got * BT : n, done = 0;
    pd_insert_result res[MAXTOK];
    int rc = pd_radix_insert(&tree, tenant, ns, tok, n_ins, slots, 0, now_ms, res, &done);
    ck_assert_msg(rc == 0 || rc == PD_ELIMIT, "insert: %s", pd_strerror(rc));
    uint32_t parent = PD_NODE_NIL;
    for (uint32_t i = 0; i < done; i++) {
      uint32_t len = n_ins - i * BT < BT ? n_ins - i * BT : BT;
      ref_set(res[i].node, parent, ns, tok, i * BT + len, len, 0);
      parent = res[i].node;
    }
    uint32_t ids[MAXTOK];
    for (uint32_t i = 0; i < done; i++) ids[i] = res[i].node;
    pd_radix_release(&tree, ids, done);
  }
  /* Hold the match like a running sequence, or give it back now. */
  if (n_holds < 8 && rnd(3) == 0) {
    held *h = &holds[n_holds++];
    memcpy(h->nodes, nodes, 4 * m.n_nodes);
    h->n = m.n_nodes;
    memcpy(h->tok, tok, 4 * m.n_tokens);
    h->n_tok = m.n_tokens;
  } else {
    pd_radix_release(&tree, nodes, m.n_nodes);
  }
}

static void op_release_hold(void) {
  if (!n_holds) return;
  uint32_t i = rnd(n_holds);
  held *h = &holds[i];
  /* While held, its blocks stayed matchable and unchanged. */
  if (h->n) {
    int32_t path[MAXTOK];
    uint32_t np;
    ck_assert_int_eq(pd_radix_path_tokens(&tree, h->nodes[h->n - 1], path, MAXTOK, &np), 0);
    ck_assert_mem_eq(path, h->tok, 4 * h->n_tok);
    for (uint32_t j = 0; j < h->n; j++)
      ck_assert_uint_lt(pd_radix_node(&tree, h->nodes[j])->tier, PD_TIERS);
  }
  pd_radix_release(&tree, h->nodes, h->n);
  holds[i] = holds[--n_holds];
}

static int random_live_node(uint32_t *node) {
  if (!n_ref) return 0;
  for (int tries = 0; tries < 8; tries++) {
    ref_entry *e = &ref[rnd(n_ref)];
    if (e->live) return *node = e->node, 1;
  }
  return 0;
}

static uint32_t pinned[64], n_pinned; /* nodes holding a pin of their own (may repeat) */

static void op_pin(void) {
  uint32_t node;
  if (n_pinned == 64 || !random_live_node(&node)) return;
  if (pd_radix_node(&tree, node)->tier >= PD_TIERS) return;
  uint64_t until = rnd(8) == 0 ? PD_PIN_FOREVER : now_ms + 1 + rnd(200);
  ck_assert_int_eq(pd_radix_pin(&tree, node, until), 0);
  pinned[n_pinned++] = node;
}

static void op_unpin(void) {
  if (!n_pinned) return;
  uint32_t i = rnd(n_pinned), node = pinned[i];
  pinned[i] = pinned[--n_pinned];
  int rc = pd_radix_unpin(&tree, node);
  ck_assert(rc == 0 || rc == PD_EINVAL); /* EINVAL: the pin expired, or the node was dropped */
}

static void op_drop(void) {
  uint32_t node;
  if (!random_live_node(&node)) return;
  pd_evicted out[256];
  uint32_t n;
  int rc = pd_radix_drop(&tree, node, out, 256, &n);
  ck_assert(rc == 0 || rc == PD_EBUSY);
  if (rc == 0) ref_remove_subtree(node);
}

static void op_lookups(void) {
  for (int i = 0; i < 4; i++) {
    uint32_t which = rnd(NT), ns = ns_of[which];
    int32_t tok[MAXTOK];
    uint32_t n, got, by_tier[PD_TIERS];
    random_prompt(tok, &n);
    ck_assert_int_eq(pd_radix_peek(&tree, tenant_of_ns[which], ns, tok, n, &got, by_tier), 0);
    ck_assert_uint_eq(got, ref_lookup(ns, tok, n));
    ck_assert_uint_eq(by_tier[0] + by_tier[1] + by_tier[2], got);
  }
}

START_TEST(random_operations_against_reference) {
  long ops = getenv("PD_MODEL_OPS") ? atol(getenv("PD_MODEL_OPS")) : 120000;
  rng_state =
      getenv("PD_MODEL_SEED") ? strtoull(getenv("PD_MODEL_SEED"), NULL, 10) : 88172645463325252ull;
  pd_radix_config cfg = {.block_tokens = BT,
                         .tier_capacity = {48, 48, 96},
                         .key_mask_bits = (uint32_t)_i * 5}; /* loop 0: full keys; 1: 5 bits */
  memset(cfg.fingerprint, 7, 16);
  ck_assert_int_eq(pd_radix_init(&tree, &cfg), 0);
  n_ref = 0;
  n_free_entries = 0;
  n_holds = 0;
  n_pinned = 0;
  for (uint32_t i = 0; i < cap_map; i++) ref_of_node[i] = -1;
  pd_tenants *tn = pd_radix_tenants(&tree);
  for (uint32_t i = 0; i < NT; i++) {
    uint8_t salt[16] = {(uint8_t)i};
    char name[8];
    snprintf(name, sizeof name, "t%u", i);
    ck_assert_int_eq(pd_tenants_add(tn, name, salt, &tenant_of_ns[i]), 0);
    ns_of[i] = pd_tenants_get(tn, tenant_of_ns[i])->private_ns;
  }
  uint8_t salt[16] = {99};
  ck_assert_int_eq(pd_tenants_add_shared(tn, "shared", salt, &ns_of[NT]), 0);
  ck_assert_int_eq(pd_tenants_grant(tn, 0, ns_of[NT]), 0);
  ck_assert_int_eq(pd_tenants_grant(tn, 1, ns_of[NT]), 0);
  for (long op = 0; op < ops; op++) {
    uint32_t r = rnd(100);
    if (r < 45)
      op_request();
    else if (r < 60)
      op_release_hold();
    else if (r < 66)
      op_pin();
    else if (r < 72)
      op_unpin();
    else if (r < 80)
      make_room((int)rnd(PD_TIERS), 1 + rnd(6), rnd(2) ? -1 : (int32_t)rnd(NT));
    else if (r < 84)
      op_drop();
    else if (r < 86)
      pd_tenants_set_limit(tn, rnd(NT), 0, rnd(2) ? 0 : 8 + rnd(24));
    else
      now_ms += rnd(20);
    check_tree();
    if (op % 16 == 0) op_lookups();
  }
  while (n_holds) op_release_hold();
  /* Unpin and drop everything: every slot returns to its pool. */
  for (uint32_t i = 0; i < n_ref; i++)
    while (ref[i].live && pd_radix_node(&tree, ref[i].node)->own_pins)
      ck_assert_int_eq(pd_radix_unpin(&tree, ref[i].node), 0);
  for (uint32_t i = 0; i < n_ref; i++)
    if (ref[i].live) ck_assert_uint_eq(pd_radix_node(&tree, ref[i].node)->pin_count, 0);
  for (uint32_t i = 0; i < n_ref; i++) {
    if (!ref[i].live || ref[i].parent != PD_NODE_NIL) continue;
    pd_evicted out[256];
    uint32_t n;
    ck_assert_int_eq(pd_radix_drop(&tree, ref[i].node, out, 256, &n), 0);
    ref_remove_subtree(ref[i].node);
  }
  check_tree();
  for (int t = 0; t < PD_TIERS; t++) ck_assert_uint_eq(pd_radix_tier_used(&tree, t), 0);
  for (uint32_t i = 0; i < NT; i++)
    for (int t = 0; t < PD_TIERS; t++) ck_assert_uint_eq(pd_tenants_get(tn, i)->used[t], 0);
  fprintf(stderr,
          "model test (mask %u): %ld ops, %llu blocks inserted, %llu deduped, %llu evicted, %llu "
          "collisions\n",
          cfg.key_mask_bits, ops, (unsigned long long)tree.stats.blocks_inserted,
          (unsigned long long)tree.stats.blocks_deduped, (unsigned long long)tree.stats.evictions,
          (unsigned long long)tree.stats.collisions);
  pd_radix_free(&tree);
}
END_TEST

int main(void) {
  Suite *s = suite_create("prefix_model");
  TCase *tc = tcase_create("model");
  tcase_set_timeout(tc, 600);
  tcase_add_loop_test(tc, random_operations_against_reference, 0, 2);
  suite_add_tcase(s, tc);
  int rc = pd_check_run(s, 1);
  free(ref);
  free(ref_of_node);
  free(free_entries);
  return rc;
}
