/*
 * fuzz_radix.c -- libFuzzer target: the prefix tree (prefix/pd_radix.h) driven by operations
 * decoded from the input, with every invariant checked after every operation.
 *
 * DESIGN
 *
 * The harness plays a well-behaved caller (the engine): it keeps the references it was given in
 * "sequences" (node ids in path order, as a running sequence holds them), gives back slots the
 * tree did not take, and places or drops what it evicted, so any failure is the tree's. The input
 * is read as bytes; reading past the end gives zeros and stops the loop.
 *
 *   header  byte 0: block size B = 1, 2, 4 or 8 (bits 0-1) and the key mask (bits 2-3: none, or
 *           2, 5, 10 key bits, so that blocks collide and verification must reject candidates);
 *           bytes 1-3: capacities of tiers 0, 1, 2 (small: eviction is frequent; tier 1 may be
 *           absent). Three tenants, each with a private namespace, and a shared namespace granted
 *           to the first two.
 *   ops     one byte picks the operation, the next bytes its arguments: match (with peek and
 *           continuation before it: a continuation is read-only, and the prompt with it is a
 *           path a peek matches to its end), insert, extend (below a held full block or a
 *           root), release (the last k nodes of a sequence: leaf first), evict, place (a
 *           detached node or any node, into a tier), drop, pin (until a time or forever),
 *           unpin, expire pins, advance the clock, set a tenant's limit, grant or revoke the
 *           shared namespace, walk the prefix listing; and the tier manager's calls: evict
 *           keeping the victims' slots (pd_radix_evict_ex), move handing back the old slot
 *           (pd_radix_move) -- the harness gives those slots back within the operation -- and
 *           a hold on one node (pd_radix_hold / pd_radix_unhold), as a transfer in flight
 *           takes it.
 *   prompts a family (4 base sequences sharing 3 blocks, 1.5 blocks or nothing with the first),
 *           a length up to 6 blocks and a bit, and one optionally changed token.
 *
 * Checked after every operation: pd_radix_check; each node's refcount equals the references the
 * harness holds on it; the detached nodes (tier NONE) are exactly those the harness evicted and
 * has not placed or dropped. Checked per operation: return codes are among those documented;
 * a match covers the same tokens as the peek just before it, and the path it returns spells the
 * prompt (pd_radix_path_tokens); evicted nodes are detached and their slots free; drop reports no
 * more than its capacity. At the end, every reference is released, every pin taken back and every
 * namespace's subtrees dropped: then no slot of any tier is in use, no tenant is charged, only the
 * roots remain and the key map is empty -- every slot is accounted for.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_err.h"
#include "pd_radix.h"

#define FUZZ_CHECK(cond)                                                                           \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "fuzz_radix: check failed: %s (line %d)\n", #cond, __LINE__);                \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

/* Like FUZZ_CHECK for a return code: says which code came back. */
#define FUZZ_CHECK_RC(what, rc, cond)                                                              \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "fuzz_radix: %s returned %d (%s) (line %d)\n", what, rc, pd_strerror(rc),    \
              __LINE__);                                                                           \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

#define MAX_SEQS      8
#define MAX_SEQ_NODES 64
#define MAX_BLOCKS    8 /* blocks of the longest prompt: 6 full + 1 partial, rounded up */
#define MAX_DETACHED  4096
#define N_TENANTS     3

typedef struct reader {
  const uint8_t *p;
  size_t n, pos;
} reader;

static uint8_t next(reader *r) {
  return r->pos < r->n ? r->p[r->pos++] : (r->pos++, 0);
}
static int more(const reader *r) {
  return r->pos < r->n;
}

typedef struct sequence {
  uint32_t nodes[MAX_SEQ_NODES];
  uint32_t n;
  int hold; /* a transfer's hold on one node (pd_radix_hold / pd_radix_unhold) */
} sequence;

typedef struct harness {
  pd_radix tree;
  uint32_t B;
  uint64_t now;
  uint32_t tenant[N_TENANTS];
  uint32_t shared_ns;
  sequence seqs[MAX_SEQS];
  uint32_t n_seqs;
  uint32_t detached[MAX_DETACHED];
  uint32_t n_detached;
  uint32_t *expected_refs; /* scratch for check_all: (cap_nodes) */
  uint32_t cap_expected;
} harness;

/* ---- prompts ------------------------------------------------------------------------------- */

static uint32_t shared_len(const harness *h, int family) {
  switch (family) {
  case 0: return UINT32_MAX;
  case 1: return 3 * h->B;
  case 2: return h->B + h->B / 2;
  default: return 0;
  }
}

/* Reads a prompt into tok (capacity 6 * 8 + 8) and returns its length. */
static uint32_t read_prompt(harness *h, reader *r, int32_t *tok) {
  uint8_t a = next(r), b = next(r);
  int family = a & 3;
  uint32_t len = (uint32_t)(a >> 2) % (6 * h->B + 2);
  for (uint32_t i = 0; i < len; i++)
    tok[i] = i < shared_len(h, family) ? (int32_t)i : 1000 * family + (int32_t)i;
  if ((b & 0x80) && len) tok[b % len] = 7777;
  return len;
}

static uint32_t pick_ns(harness *h, uint32_t tenant_idx, uint8_t sel) {
  pd_tenants *ts = pd_radix_tenants(&h->tree);
  switch (sel & 3) {
  case 1: return h->shared_ns;
  case 2: /* someone else's private namespace: PD_EPERM */
    return pd_tenants_get(ts, h->tenant[(tenant_idx + 1) % N_TENANTS])->private_ns;
  default: return pd_tenants_get(ts, h->tenant[tenant_idx])->private_ns;
  }
}

/* ---- the harness's own bookkeeping ------------------------------------------------------- */

static sequence *new_sequence(harness *h) {
  if (h->n_seqs == MAX_SEQS) return NULL;
  sequence *s = &h->seqs[h->n_seqs++];
  s->n = 0;
  s->hold = 0;
  return s;
}

static void release_tail(harness *h, uint32_t seq_idx, uint32_t k) {
  sequence *s = &h->seqs[seq_idx];
  if (k > s->n) k = s->n;
  if (s->hold)
    for (uint32_t i = s->n - k; i < s->n; i++) pd_radix_unhold(&h->tree, s->nodes[i]);
  else
    pd_radix_release(&h->tree, s->nodes + s->n - k, k);
  s->n -= k;
  if (s->n == 0) h->seqs[seq_idx] = h->seqs[--h->n_seqs];
}

static void forget_dropped(harness *h) {
  uint32_t o = 0;
  for (uint32_t i = 0; i < h->n_detached; i++) {
    const pd_node *nd = pd_radix_node(&h->tree, h->detached[i]);
    if ((nd->flags & PD_NODE_USED) && nd->tier == PD_TIER_NONE) h->detached[o++] = h->detached[i];
  }
  h->n_detached = o;
}

static void forget_detached(harness *h, uint32_t node) {
  for (uint32_t i = 0; i < h->n_detached; i++)
    if (h->detached[i] == node) {
      h->detached[i] = h->detached[--h->n_detached];
      return;
    }
}

/* A used, non-root node chosen by b, or PD_NODE_NIL if there is none. */
static uint32_t pick_node(const harness *h, uint8_t b) {
  const pd_radix *t = &h->tree;
  if (!t->cap_nodes) return PD_NODE_NIL;
  uint32_t start = (uint32_t)b * 2654435761u % t->cap_nodes;
  for (uint32_t k = 0; k < t->cap_nodes; k++) {
    uint32_t id = (start + k) % t->cap_nodes;
    const pd_node *nd = pd_radix_node(t, id);
    if ((nd->flags & PD_NODE_USED) && nd->tier != PD_TIER_ROOT) return id;
  }
  return PD_NODE_NIL;
}

static void check_all(harness *h) {
  char err[256] = "";
  if (pd_radix_check(&h->tree, err, sizeof err) != PD_OK) {
    fprintf(stderr, "fuzz_radix: invariant broken: %s\n", err);
    abort();
  }
  const pd_radix *t = &h->tree;
  if (!t->cap_nodes) return; /* no node yet */
  if (h->cap_expected < t->cap_nodes) {
    free(h->expected_refs);
    h->expected_refs = malloc(t->cap_nodes * sizeof *h->expected_refs);
    FUZZ_CHECK(h->expected_refs != NULL);
    h->cap_expected = t->cap_nodes;
  }
  memset(h->expected_refs, 0, t->cap_nodes * sizeof *h->expected_refs);
  for (uint32_t s = 0; s < h->n_seqs; s++)
    for (uint32_t i = 0; i < h->seqs[s].n; i++) h->expected_refs[h->seqs[s].nodes[i]]++;
  uint32_t n_none = 0;
  for (uint32_t id = 0; id < t->cap_nodes; id++) {
    const pd_node *nd = pd_radix_node(t, id);
    if (!(nd->flags & PD_NODE_USED)) {
      FUZZ_CHECK(h->expected_refs[id] == 0);
      continue;
    }
    if (nd->refcount != h->expected_refs[id]) {
      fprintf(stderr, "fuzz_radix: node %u has %u references, the caller holds %u\n", id,
              nd->refcount, h->expected_refs[id]);
      abort();
    }
    if (nd->tier == PD_TIER_NONE) n_none++;
  }
  FUZZ_CHECK(n_none == h->n_detached);
  for (uint32_t i = 0; i < h->n_detached; i++)
    FUZZ_CHECK(pd_radix_node(t, h->detached[i])->tier == PD_TIER_NONE);
}

/* ---- operations ---------------------------------------------------------------------------- */

static void op_match(harness *h, reader *r) {
  uint8_t who = next(r), flags = next(r);
  uint32_t ti = who % N_TENANTS, ns = pick_ns(h, ti, who >> 2);
  int32_t tok[64];
  uint32_t n = read_prompt(h, r, tok);
  /* what follows the prompt in the tree (read-only: no counter moves) */
  int32_t ext[64 + 64];
  uint32_t n_cont = UINT32_MAX;
  const pd_radix_stats before = h->tree.stats;
  int crc = pd_radix_continuation(&h->tree, h->tenant[ti], ns, tok, n, ext + n, 64, &n_cont);
  FUZZ_CHECK(!memcmp(&before, &h->tree.stats, sizeof before) && n_cont <= 64);
  uint32_t peeked = 0, by_tier[PD_TIERS];
  int prc = pd_radix_peek(&h->tree, h->tenant[ti], ns, tok, n, &peeked, by_tier);
  FUZZ_CHECK(prc == PD_OK || prc == PD_EPERM);
  FUZZ_CHECK(crc == prc);
  if (!prc && peeked < n) FUZZ_CHECK(n_cont == 0); /* a context not cached to its end */
  if (!prc && n_cont) { /* the prompt and its continuation are a cached path */
    uint32_t ext_peeked = 0;
    memcpy(ext, tok, n * sizeof *tok);
    FUZZ_CHECK(pd_radix_peek(&h->tree, h->tenant[ti], ns, ext, n + n_cont, &ext_peeked, NULL) ==
               PD_OK);
    FUZZ_CHECK(ext_peeked == n + n_cont);
  }
  uint32_t nodes[MAX_BLOCKS];
  pd_match m;
  int rc = pd_radix_match(&h->tree, h->tenant[ti], ns, tok, n, h->now, nodes, MAX_BLOCKS, &m);
  FUZZ_CHECK(rc == prc);
  if (rc) return;
  FUZZ_CHECK(m.n_tokens == peeked && m.n_tokens <= n);
  FUZZ_CHECK(by_tier[0] + by_tier[1] + by_tier[2] == peeked);
  FUZZ_CHECK(m.n_nodes <= n / h->B + 1);
  FUZZ_CHECK(m.cow == -1 || m.cow == (int32_t)m.n_nodes - 1);
  if (m.n_nodes) {
    /* the path spells the prompt: full blocks entirely, the last node up to n_tokens */
    int32_t path[64 + 256];
    uint32_t plen;
    uint32_t last = nodes[m.n_nodes - 1];
    FUZZ_CHECK(pd_radix_path_tokens(&h->tree, last, path, 64 + 256, &plen) == PD_OK);
    FUZZ_CHECK(plen >= m.n_tokens);
    FUZZ_CHECK(!memcmp(path, tok, 4u * m.n_tokens));
    for (uint32_t i = 0; i + 1 < m.n_nodes; i++)
      FUZZ_CHECK(pd_radix_node(&h->tree, nodes[i])->n_tokens == h->B);
  }
  sequence *s = (flags & 1) && m.n_nodes ? new_sequence(h) : NULL;
  if (s) {
    memcpy(s->nodes, nodes, m.n_nodes * sizeof *nodes);
    s->n = m.n_nodes;
  } else {
    pd_radix_release(&h->tree, nodes, m.n_nodes);
  }
}

/* Allocates n slots in tier; on PD_EFULL gives back what it took and returns 0. */
static int alloc_slots(harness *h, int tier, uint32_t n, uint32_t *slots) {
  for (uint32_t i = 0; i < n; i++) {
    int rc = pd_radix_alloc_slot(&h->tree, tier, &slots[i]);
    if (rc) {
      FUZZ_CHECK(rc == PD_EFULL);
      for (uint32_t j = 0; j < i; j++)
        FUZZ_CHECK(pd_radix_free_slot(&h->tree, tier, slots[j]) == 0);
      return 0;
    }
  }
  return 1;
}

static void keep_results(harness *h, sequence *s, const pd_insert_result *res, uint32_t n_done,
                         int keep) {
  uint32_t ids[MAX_BLOCKS];
  for (uint32_t i = 0; i < n_done; i++) ids[i] = res[i].node;
  if (keep && s && s->n + n_done <= MAX_SEQ_NODES) {
    memcpy(s->nodes + s->n, ids, n_done * sizeof *ids);
    s->n += n_done;
    return;
  }
  pd_radix_release(&h->tree, ids, n_done);
}

static void op_insert(harness *h, reader *r) {
  uint8_t who = next(r), flags = next(r);
  uint32_t ti = who % N_TENANTS, ns = pick_ns(h, ti, who >> 2);
  int tier = flags % 3;
  int32_t tok[64];
  uint32_t n = read_prompt(h, r, tok);
  uint32_t nb = (n + h->B - 1) / h->B, slots[MAX_BLOCKS], n_done = 0;
  if (!alloc_slots(h, tier, nb, slots)) return;
  pd_insert_result res[MAX_BLOCKS];
  int rc = pd_radix_insert(&h->tree, h->tenant[ti], ns, tok, n, slots, tier, h->now, res, &n_done);
  FUZZ_CHECK_RC("insert", rc,
                rc == PD_OK || rc == PD_ELIMIT || rc == PD_EINVAL || rc == PD_EPERM ||
                    rc == PD_EBUSY);
  FUZZ_CHECK(n_done <= nb && (rc != PD_OK || n_done == nb));
  for (uint32_t i = 0; i < n_done; i++) {
    const pd_node *nd = pd_radix_node(&h->tree, res[i].node);
    FUZZ_CHECK((nd->flags & PD_NODE_USED) && nd->refcount > 0);
  }
  keep_results(h, n_done && (flags & 8) ? new_sequence(h) : NULL, res, n_done, 1);
}

static void op_extend(harness *h, reader *r) {
  uint8_t who = next(r), flags = next(r), which = next(r);
  uint32_t ti = who % N_TENANTS;
  int tier = flags % 3;
  sequence *s = NULL;
  uint32_t parent;
  if ((flags & 4) && h->n_seqs && !h->seqs[which % h->n_seqs].hold) {
    s = &h->seqs[which % h->n_seqs]; /* a sequence's path (a transfer's hold is no anchor) */
    parent = s->nodes[s->n - 1];
  } else {
    int rc = pd_radix_root(&h->tree, h->tenant[ti], pick_ns(h, ti, who >> 2), &parent);
    FUZZ_CHECK(rc == PD_OK || rc == PD_EPERM);
    if (rc) return;
  }
  /* the caller's contract: a root or a full block it holds a reference on */
  const pd_node *p = pd_radix_node(&h->tree, parent);
  if (p->tier != PD_TIER_ROOT && p->n_tokens != h->B) return;
  int32_t tok[64];
  uint32_t n = read_prompt(h, r, tok);
  uint32_t nb = (n + h->B - 1) / h->B, slots[MAX_BLOCKS], n_done = 0;
  if (!alloc_slots(h, tier, nb, slots)) return;
  pd_insert_result res[MAX_BLOCKS];
  int rc =
      pd_radix_extend(&h->tree, h->tenant[ti], parent, tok, n, slots, tier, h->now, res, &n_done);
  FUZZ_CHECK_RC("extend", rc,
                rc == PD_OK || rc == PD_ELIMIT || rc == PD_EINVAL || rc == PD_EPERM ||
                    rc == PD_EBUSY);
  FUZZ_CHECK(n_done <= nb && (rc != PD_OK || n_done == nb));
  for (uint32_t i = n_done; i < nb; i++) /* on failure the rest stay the caller's */
    FUZZ_CHECK(pd_radix_free_slot(&h->tree, tier, slots[i]) == PD_OK);
  if (!s && n_done && (flags & 8)) s = new_sequence(h);
  keep_results(h, s, res, n_done, s != NULL);
}

static void op_release(harness *h, reader *r) {
  uint8_t which = next(r), k = next(r);
  if (!h->n_seqs) return;
  release_tail(h, which % h->n_seqs, k % 4 == 0 ? MAX_SEQ_NODES : k % 4);
}

static void op_evict(harness *h, reader *r) {
  uint8_t a = next(r), b = next(r);
  int tier = a % 3;
  int32_t tenant = (a >> 2) % 4 == 3 ? -1 : (int32_t)h->tenant[(a >> 2) % 4];
  uint32_t want = 1 + b % 8;
  pd_evicted out[8];
  uint32_t n_out = 0;
  FUZZ_CHECK(pd_radix_evict(&h->tree, tier, tenant, want, h->now, out, &n_out) == PD_OK);
  FUZZ_CHECK(n_out <= want);
  for (uint32_t i = 0; i < n_out; i++) {
    const pd_node *nd = pd_radix_node(&h->tree, out[i].node);
    FUZZ_CHECK(nd->tier == PD_TIER_NONE && nd->refcount == 0 && nd->pin_count == 0);
    FUZZ_CHECK(out[i].tier == tier && (tenant < 0 || out[i].tenant == (uint32_t)tenant));
    FUZZ_CHECK(!pd_blockpool_is_allocated(&h->tree.pool[tier], out[i].slot));
    FUZZ_CHECK(h->n_detached < MAX_DETACHED);
    h->detached[h->n_detached++] = out[i].node;
  }
}

static uint32_t pick_target(harness *h, uint8_t b) {
  if ((b & 1) && h->n_detached) return h->detached[(b >> 1) % h->n_detached];
  return pick_node(h, b >> 1);
}

static void op_place(harness *h, reader *r) {
  uint8_t a = next(r), b = next(r);
  uint32_t node = pick_target(h, a);
  int tier = b % 3;
  if (node == PD_NODE_NIL) return;
  uint32_t slot;
  if (pd_radix_alloc_slot(&h->tree, tier, &slot) != PD_OK) return;
  int rc = pd_radix_place(&h->tree, node, tier, slot);
  FUZZ_CHECK(rc == PD_OK || rc == PD_EINVAL || rc == PD_EBUSY);
  if (rc) {
    FUZZ_CHECK(pd_radix_free_slot(&h->tree, tier, slot) == PD_OK);
    return;
  }
  FUZZ_CHECK(pd_radix_node(&h->tree, node)->tier == tier);
  forget_detached(h, node);
}

/* pd_radix_evict_ex keeping the victims' slots, as the tier manager does while it copies them
 * out: the slots stay allocated (the caller's now) until given back, here at once. */
static void op_evict_keep(harness *h, reader *r) {
  uint8_t a = next(r), b = next(r);
  int tier = a % 3;
  uint32_t want = 1 + b % 8;
  pd_evicted out[8];
  uint32_t n_out = 0;
  FUZZ_CHECK(pd_radix_evict_ex(&h->tree, tier, -1, want, h->now, PD_EVICT_KEEP_SLOTS, out,
                               &n_out) == PD_OK);
  FUZZ_CHECK(n_out <= want);
  for (uint32_t i = 0; i < n_out; i++) {
    FUZZ_CHECK(pd_radix_node(&h->tree, out[i].node)->tier == PD_TIER_NONE);
    FUZZ_CHECK(pd_blockpool_is_allocated(&h->tree.pool[tier], out[i].slot));
    FUZZ_CHECK(h->n_detached < MAX_DETACHED);
    h->detached[h->n_detached++] = out[i].node;
  }
  for (uint32_t i = 0; i < n_out; i++)
    FUZZ_CHECK(pd_radix_free_slot(&h->tree, tier, out[i].slot) == PD_OK);
}

/* pd_radix_move: like place, but the old slot comes back to the caller (a restore still reads
 * it); given back at once. */
static void op_move(harness *h, reader *r) {
  uint8_t a = next(r), b = next(r);
  uint32_t node = pick_target(h, a);
  int tier = b % 3;
  if (node == PD_NODE_NIL) return;
  uint32_t slot, old_slot = 0;
  int old_tier = -2;
  if (pd_radix_alloc_slot(&h->tree, tier, &slot) != PD_OK) return;
  uint8_t was = pd_radix_node(&h->tree, node)->tier;
  int rc = pd_radix_move(&h->tree, node, tier, slot, &old_tier, &old_slot);
  FUZZ_CHECK_RC("move", rc, rc == PD_OK || rc == PD_EINVAL || rc == PD_EBUSY);
  if (rc) {
    FUZZ_CHECK(pd_radix_free_slot(&h->tree, tier, slot) == PD_OK);
    return;
  }
  FUZZ_CHECK(pd_radix_node(&h->tree, node)->tier == tier);
  FUZZ_CHECK(old_tier == (was < PD_TIERS ? (int)was : -1));
  if (old_tier >= 0) {
    FUZZ_CHECK(pd_blockpool_is_allocated(&h->tree.pool[old_tier], old_slot));
    FUZZ_CHECK(pd_radix_free_slot(&h->tree, old_tier, old_slot) == PD_OK);
  }
  forget_detached(h, node);
}

/* pd_radix_hold on one node, as the tier manager holds a block in transit. */
static void op_hold_path(harness *h, reader *r) {
  uint32_t node = pick_node(h, next(r));
  if (node == PD_NODE_NIL || h->n_seqs == MAX_SEQS) return;
  int rc = pd_radix_hold(&h->tree, node);
  FUZZ_CHECK_RC("hold", rc, rc == PD_OK || rc == PD_EINVAL);
  if (rc) { /* a detached block: not holdable */
    FUZZ_CHECK(pd_radix_node(&h->tree, node)->tier == PD_TIER_NONE);
    return;
  }
  sequence *s = new_sequence(h);
  s->hold = 1;
  s->nodes[s->n++] = node;
}

static void op_drop(harness *h, reader *r) {
  uint8_t a = next(r), b = next(r);
  uint32_t node = pick_target(h, a);
  if (node == PD_NODE_NIL) return;
  uint32_t cap = b % 2 ? 1 + b % 4 : 4096;
  pd_evicted *out = malloc(cap * sizeof *out);
  FUZZ_CHECK(out != NULL);
  uint32_t n_out = 0;
  int rc = pd_radix_drop(&h->tree, node, out, cap, &n_out);
  FUZZ_CHECK(rc == PD_OK || rc == PD_EBUSY || rc == PD_EFULL);
  FUZZ_CHECK(n_out <= cap && (rc == PD_OK || n_out == 0));
  if (rc == PD_OK) {
    FUZZ_CHECK(!(pd_radix_node(&h->tree, node)->flags & PD_NODE_USED));
    for (uint32_t i = 0; i < n_out; i++)
      FUZZ_CHECK(!pd_blockpool_is_allocated(&h->tree.pool[out[i].tier], out[i].slot));
    forget_dropped(h);
  }
  free(out);
}

static void op_pin(harness *h, reader *r) {
  uint8_t a = next(r), b = next(r);
  uint32_t node = pick_target(h, a);
  if (node == PD_NODE_NIL) return;
  uint64_t until = b == 0xff ? PD_PIN_FOREVER : h->now + b;
  int rc = pd_radix_pin(&h->tree, node, until);
  FUZZ_CHECK(rc == PD_OK || rc == PD_ELIMIT);
}

static void op_unpin(harness *h, reader *r) {
  uint32_t node = pick_target(h, next(r));
  if (node == PD_NODE_NIL) return;
  int had = pd_radix_node(&h->tree, node)->own_pins > 0;
  int rc = pd_radix_unpin(&h->tree, node);
  FUZZ_CHECK(had ? rc == PD_OK : rc == PD_EINVAL);
}

static void op_expire(harness *h, reader *r) {
  h->now += next(r);
  pd_radix_expire_pins(&h->tree, h->now);
}

static void op_limit(harness *h, reader *r) {
  uint8_t a = next(r), b = next(r);
  FUZZ_CHECK(pd_tenants_set_limit(pd_radix_tenants(&h->tree), h->tenant[a % N_TENANTS],
                                  (a >> 2) % 3, b % 8) == PD_OK);
}

static void op_grant(harness *h, reader *r) {
  uint8_t a = next(r);
  pd_tenants *ts = pd_radix_tenants(&h->tree);
  uint32_t tenant = h->tenant[a % N_TENANTS];
  int rc = (a & 4) ? pd_tenants_grant(ts, tenant, h->shared_ns)
                   : pd_tenants_revoke(ts, tenant, h->shared_ns);
  (void)rc; /* granting twice or revoking what was never granted may be refused */
}

static void op_list(harness *h, reader *r) {
  uint8_t a = next(r);
  int32_t tenant = a % 4 == 3 ? -1 : (int32_t)h->tenant[a % 4];
  uint32_t cursor = 0, seen = 0;
  pd_prefix_info info;
  while (pd_radix_next_prefix(&h->tree, &cursor, tenant, &info)) {
    FUZZ_CHECK(tenant < 0 || info.tenant == (uint32_t)tenant);
    FUZZ_CHECK(info.n_blocks >= 1);
    FUZZ_CHECK(info.blocks_by_tier[0] + info.blocks_by_tier[1] + info.blocks_by_tier[2] +
                   info.blocks_detached ==
               info.n_blocks);
    uint32_t found;
    if (pd_radix_find(&h->tree, info.id, &found) == PD_OK)
      FUZZ_CHECK(pd_key_eq(pd_radix_node(&h->tree, found)->key, info.id));
    FUZZ_CHECK(++seen <= h->tree.n_used);
  }
}

/* ---- driver -------------------------------------------------------------------------------- */

static void setup(harness *h, reader *r) {
  memset(h, 0, sizeof *h);
  uint8_t b0 = next(r);
  static const uint32_t mask_bits[4] = {0, 2, 5, 10};
  pd_radix_config cfg = {.block_tokens = 1u << (b0 & 3), .key_mask_bits = mask_bits[(b0 >> 2) & 3]};
  memset(cfg.fingerprint, 0x5a, sizeof cfg.fingerprint);
  cfg.tier_capacity[0] = 1 + next(r) % 32;
  cfg.tier_capacity[1] = next(r) % 32;
  cfg.tier_capacity[2] = 1 + next(r) % 64;
  FUZZ_CHECK(pd_radix_init(&h->tree, &cfg) == PD_OK);
  h->B = cfg.block_tokens;
  h->now = 1;
  pd_tenants *ts = pd_radix_tenants(&h->tree);
  static const char *const names[N_TENANTS] = {"alice", "bob", "carol"};
  for (int i = 0; i < N_TENANTS; i++) {
    uint8_t salt[16];
    memset(salt, 17 * (i + 1), sizeof salt);
    FUZZ_CHECK(pd_tenants_add(ts, names[i], salt, &h->tenant[i]) == PD_OK);
  }
  uint8_t salt[16];
  memset(salt, 0x77, sizeof salt);
  FUZZ_CHECK(pd_tenants_add_shared(ts, "public", salt, &h->shared_ns) == PD_OK);
  FUZZ_CHECK(pd_tenants_grant(ts, h->tenant[0], h->shared_ns) == PD_OK);
  FUZZ_CHECK(pd_tenants_grant(ts, h->tenant[1], h->shared_ns) == PD_OK);
}

/* Gives everything back and checks that every slot and every charge is gone. */
static void teardown(harness *h) {
  while (h->n_seqs) release_tail(h, 0, MAX_SEQ_NODES);
  check_all(h);
  pd_radix *t = &h->tree;
  for (uint32_t id = 0; id < t->cap_nodes; id++)
    while ((t->nodes[id].flags & PD_NODE_USED) && t->nodes[id].own_pins)
      FUZZ_CHECK(pd_radix_unpin(t, id) == PD_OK);
  uint32_t roots = 0;
  for (uint32_t id = 0; id < t->cap_nodes; id++) {
    const pd_node *nd = &t->nodes[id];
    if (!(nd->flags & PD_NODE_USED)) continue;
    FUZZ_CHECK(nd->pin_count == 0 && nd->refcount == 0);
    if (nd->tier != PD_TIER_ROOT) continue;
    roots++;
    uint32_t cap = t->n_used + 1;
    pd_evicted *out = malloc(cap * sizeof *out);
    FUZZ_CHECK(out != NULL);
    while (t->nodes[id].first_child != PD_NODE_NIL) {
      uint32_t n_out;
      FUZZ_CHECK(pd_radix_drop(t, t->nodes[id].first_child, out, cap, &n_out) == PD_OK);
    }
    free(out);
  }
  forget_dropped(h);
  FUZZ_CHECK(h->n_detached == 0);
  check_all(h);
  for (int tier = 0; tier < PD_TIERS; tier++) FUZZ_CHECK(pd_radix_tier_used(t, tier) == 0);
  FUZZ_CHECK(t->n_used == roots);
  FUZZ_CHECK(t->map.count == 0);
  for (uint32_t i = 0; i < t->tenants.n_tenants; i++)
    for (int tier = 0; tier < PD_TIERS; tier++) FUZZ_CHECK(t->tenants.tenants[i].used[tier] == 0);
  free(h->expected_refs);
  pd_radix_free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  reader r = {data, size, 0};
  static harness h;
  setup(&h, &r);
  check_all(&h);
  while (more(&r)) {
    switch (next(&r) % 17) {
    case 0:
    case 1: op_match(&h, &r); break;
    case 2:
    case 3: op_insert(&h, &r); break;
    case 4: op_extend(&h, &r); break;
    case 5: op_release(&h, &r); break;
    case 6: op_evict(&h, &r); break;
    case 7: op_place(&h, &r); break;
    case 8: op_drop(&h, &r); break;
    case 9: op_pin(&h, &r); break;
    case 10: op_unpin(&h, &r); break;
    case 11: op_expire(&h, &r); break;
    case 12: next(&r) & 1 ? op_limit(&h, &r) : op_grant(&h, &r); break;
    case 13: op_list(&h, &r); break;
    case 14: op_evict_keep(&h, &r); break;
    case 15: op_move(&h, &r); break;
    default: op_hold_path(&h, &r); break;
    }
    check_all(&h);
  }
  teardown(&h);
  return 0;
}
