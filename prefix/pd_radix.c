/*
 * pd_radix.c -- the prefix tree; the design is in pd_radix.h.
 *
 * Helpers are grouped: node allocation, LRU lists, key lookup with verification, then the
 * public operations. Every state change goes through lru_update(), which puts a node in the one
 * list it belongs to (its tier's LRU, the pinned list, or none), so membership can't drift.
 */
#include "pd_radix.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_blockkey.h"
#include "pd_err.h"
#include "pd_fault.h"

#define NIL PD_NODE_NIL

static int is_real_tier(uint8_t tier) {
  return tier < PD_TIERS;
}
static uint32_t B(const pd_radix *t) {
  return t->cfg.block_tokens;
}
static int32_t *toks(const pd_radix *t, uint32_t id) {
  return t->tokens + (size_t)id * t->cfg.block_tokens;
}

static pd_key128 masked(const pd_radix *t, pd_key128 k) {
  if (t->cfg.key_mask_bits && t->cfg.key_mask_bits < 64) {
    k.lo &= (1ull << t->cfg.key_mask_bits) - 1;
    k.hi = 0;
  }
  return k;
}

static pd_key128 child_key(const pd_radix *t, pd_key128 parent, const int32_t *tokens, uint32_t n) {
  return masked(t, pd_blockkey_next(parent, tokens, n));
}

/* ---- node allocation ------------------------------------------------------------------------- */

static int grow_nodes(pd_radix *t) {
  uint32_t ncap = t->cap_nodes ? t->cap_nodes * 2 : 1024;
  if (pd_fault_hit(PD_FAULT_ALLOC)) return PD_ENOMEM;
  pd_node *n = realloc(t->nodes, (size_t)ncap * sizeof *n);
  if (!n) return PD_ENOMEM;
  t->nodes = n;
  int32_t *tk = realloc(t->tokens, (size_t)ncap * B(t) * sizeof *tk);
  if (!tk) return PD_ENOMEM; /* nodes grew; harmless, cap_nodes unchanged */
  t->tokens = tk;
  for (uint32_t i = ncap; i-- > t->cap_nodes;) {
    t->nodes[i].flags = 0;
    t->nodes[i].next_sibling = t->free_head;
    t->free_head = i;
  }
  t->cap_nodes = ncap;
  return PD_OK;
}

static int new_node(pd_radix *t, uint32_t *id) {
  if (t->free_head == NIL) {
    int rc = grow_nodes(t);
    if (rc) return rc;
  }
  uint32_t i = t->free_head;
  t->free_head = t->nodes[i].next_sibling;
  memset(&t->nodes[i], 0, sizeof t->nodes[i]);
  pd_node *n = &t->nodes[i];
  n->parent = n->first_child = n->next_sibling = n->lru_prev = n->lru_next = NIL;
  n->flags = PD_NODE_USED;
  t->n_used++;
  *id = i;
  return PD_OK;
}

static void free_node(pd_radix *t, uint32_t id) {
  t->nodes[id].flags = 0;
  t->nodes[id].next_sibling = t->free_head;
  t->free_head = id;
  t->n_used--;
}

/* ---- lists ----------------------------------------------------------------------------------- */

static uint32_t *list_head(pd_radix *t, pd_node *n) {
  return (n->flags & PD_NODE_IN_PINNED) ? &t->pinned_head : &t->lru_head[n->tier];
}

static void list_unlink(pd_radix *t, uint32_t id) {
  pd_node *n = &t->nodes[id];
  if (!(n->flags & (PD_NODE_IN_LRU | PD_NODE_IN_PINNED))) return;
  uint32_t *head = list_head(t, n);
  uint32_t *tail = (n->flags & PD_NODE_IN_LRU) ? &t->lru_tail[n->tier] : NULL;
  if (n->lru_prev != NIL)
    t->nodes[n->lru_prev].lru_next = n->lru_next;
  else
    *head = n->lru_next;
  if (n->lru_next != NIL)
    t->nodes[n->lru_next].lru_prev = n->lru_prev;
  else if (tail)
    *tail = n->lru_prev;
  n->lru_prev = n->lru_next = NIL;
  n->flags &= (uint8_t) ~(PD_NODE_IN_LRU | PD_NODE_IN_PINNED);
}

static void list_push_head(pd_radix *t, uint32_t id, int pinned) {
  pd_node *n = &t->nodes[id];
  n->flags |= pinned ? PD_NODE_IN_PINNED : PD_NODE_IN_LRU;
  uint32_t *head = list_head(t, n);
  n->lru_prev = NIL;
  n->lru_next = *head;
  if (*head != NIL)
    t->nodes[*head].lru_prev = id;
  else if (!pinned)
    t->lru_tail[n->tier] = id;
  *head = id;
}

/* Puts the node in the one list it belongs to, at the head (most recent). */
static void lru_update(pd_radix *t, uint32_t id) {
  list_unlink(t, id);
  pd_node *n = &t->nodes[id];
  if (!is_real_tier(n->tier) || n->refcount > 0) return;
  list_push_head(t, id, n->pin_count > 0);
}

/* ---- lookup ---------------------------------------------------------------------------------- */

static int same_tokens(const pd_radix *t, uint32_t id, const int32_t *tokens, uint32_t n) {
  return t->nodes[id].n_tokens == n && memcmp(toks(t, id), tokens, 4u * n) == 0;
}

static int matchable(const pd_node *n) {
  return is_real_tier(n->tier);
}

/* The matchable child of parent holding exactly tokens (n): through the map, verified; then, if
 * the map has no verified candidate (a collision or a detached twin kept it out), by scanning
 * the children. */
static uint32_t find_child(const pd_radix *t, uint32_t parent, pd_key128 key, const int32_t *tokens,
                           uint32_t n, uint64_t *collisions) {
  uint64_t cur = 0;
  uint32_t id;
  while (pd_keymap_next(&t->map, key.lo, &cur, &id)) {
    const pd_node *c = &t->nodes[id];
    if (pd_key_eq(c->key, key) && c->parent == parent && same_tokens(t, id, tokens, n)) {
      if (matchable(c)) return id;
    } else if (collisions) {
      (*collisions)++;
    }
  }
  if (t->nodes[parent].n_unmapped == 0) return NIL;
  for (uint32_t c = t->nodes[parent].first_child; c != NIL; c = t->nodes[c].next_sibling)
    if (!(t->nodes[c].flags & PD_NODE_IN_MAP) && matchable(&t->nodes[c]) &&
        same_tokens(t, c, tokens, n))
      return c;
  return NIL;
}

static uint32_t lcp(const int32_t *a, uint32_t na, const int32_t *b, uint32_t nb) {
  uint32_t m = na < nb ? na : nb, i = 0;
  while (i < m && a[i] == b[i]) i++;
  return i;
}

static int ns_root(const pd_radix *t, uint32_t tenant, uint32_t ns, uint32_t *root) {
  if (!pd_tenants_may_use(&t->tenants, tenant, ns)) return PD_EPERM;
  if (ns >= t->cap_ns_root || t->ns_root[ns] == NIL) return PD_ENOTFOUND;
  *root = t->ns_root[ns];
  return PD_OK;
}

/* Creates the namespace's root node on first use. */
static int ensure_root(pd_radix *t, uint32_t tenant, uint32_t ns, uint32_t *root) {
  int rc = ns_root(t, tenant, ns, root);
  if (rc != PD_ENOTFOUND) return rc;
  if (ns >= t->cap_ns_root) {
    uint32_t ncap = t->cap_ns_root ? t->cap_ns_root : 16;
    while (ncap <= ns) ncap *= 2;
    uint32_t *n = pd_fault_hit(PD_FAULT_ALLOC) ? NULL : realloc(t->ns_root, ncap * sizeof *n);
    if (!n) return PD_ENOMEM;
    for (uint32_t i = t->cap_ns_root; i < ncap; i++) n[i] = NIL;
    t->ns_root = n;
    t->cap_ns_root = ncap;
  }
  uint32_t id;
  if ((rc = new_node(t, &id))) return rc;
  pd_node *r = &t->nodes[id];
  r->key = masked(t, pd_tenants_ns(&t->tenants, ns)->root_key);
  r->tier = PD_TIER_ROOT;
  r->ns = ns;
  r->tenant = (uint16_t)tenant;
  t->ns_root[ns] = id;
  *root = id;
  return PD_OK;
}

/* ---- life ------------------------------------------------------------------------------------ */

int pd_radix_init(pd_radix *t, const pd_radix_config *cfg) {
  memset(t, 0, sizeof *t);
  uint32_t b = cfg->block_tokens;
  if (b == 0 || b > 256 || (b & (b - 1))) return PD_EINVAL;
  t->cfg = *cfg;
  t->free_head = NIL;
  t->pinned_head = NIL;
  for (int i = 0; i < PD_TIERS; i++) t->lru_head[i] = t->lru_tail[i] = NIL;
  int rc = pd_tenants_init(&t->tenants, cfg->fingerprint);
  if (!rc) rc = pd_keymap_init(&t->map, 1024);
  for (int i = 0; i < PD_TIERS && !rc; i++)
    rc = pd_blockpool_init(&t->pool[i], cfg->tier_capacity[i]);
  if (rc) pd_radix_free(t);
  return rc;
}

void pd_radix_free(pd_radix *t) {
  free(t->nodes);
  free(t->tokens);
  free(t->ns_root);
  pd_keymap_free(&t->map);
  for (int i = 0; i < PD_TIERS; i++) pd_blockpool_free(&t->pool[i]);
  pd_tenants_free(&t->tenants);
  memset(t, 0, sizeof *t);
}

/* ---- slots ----------------------------------------------------------------------------------- */

int pd_radix_alloc_slot(pd_radix *t, int tier, uint32_t *slot) {
  if (tier < 0 || tier >= PD_TIERS) return PD_EINVAL;
  return pd_blockpool_alloc(&t->pool[tier], slot);
}

int pd_radix_free_slot(pd_radix *t, int tier, uint32_t slot) {
  if (tier < 0 || tier >= PD_TIERS) return PD_EINVAL;
  return pd_blockpool_release(&t->pool[tier], slot);
}

/* ---- match ----------------------------------------------------------------------------------- */

/* The partial-tail scan looks at this many children at most (the most recently inserted come
 * first): a node may have thousands of children, and a token-granular tail is an optimisation
 * (a shorter match is a miss of a few tokens, never a wrong one). */
#define PARTIAL_SCAN_LIMIT 32
/* Full blocks are looked up this many at a time: all keys first (hashing needs no memory), then
 * every map slot and node is prefetched, then the chain is verified. The lookups' cache misses
 * overlap instead of queueing one behind the other. */
#define WALK_BATCH 16

/* The map's first candidate for key, or NIL (collisions are handled by find_child). */
static uint32_t first_candidate(const pd_radix *t, pd_key128 key) {
  uint64_t cur = 0;
  uint32_t id;
  return pd_keymap_next(&t->map, key.lo, &cur, &id) ? id : NIL;
}

/* The walk shared by match and peek: fills path (capacity cap) and returns the token count;
 * *cow says whether the last node is shared only partially (or is a partial tail). */
static uint32_t walk(const pd_radix *t, uint32_t root, const int32_t *tokens, uint32_t n,
                     uint32_t *path, uint32_t cap, uint32_t *n_path, int *cow,
                     uint64_t *collisions) {
  uint32_t cur = root, pos = 0, np = 0;
  *cow = 0;
  int full_done = 0;
  while (!full_done) {
    uint32_t n_full = (n - pos) / B(t);
    if (n_full > WALK_BATCH) n_full = WALK_BATCH;
    if (n_full > cap - np) n_full = cap - np;
    if (n_full == 0) break;
    pd_key128 keys[WALK_BATCH];
    uint32_t cand[WALK_BATCH];
    pd_key128 k = t->nodes[cur].key;
    for (uint32_t i = 0; i < n_full; i++) {
      k = child_key(t, k, tokens + pos + i * B(t), B(t));
      keys[i] = k;
      __builtin_prefetch(&t->map.slots[k.lo & t->map.mask]);
    }
    for (uint32_t i = 0; i < n_full; i++) {
      cand[i] = first_candidate(t, keys[i]);
      if (cand[i] != NIL) {
        __builtin_prefetch(&t->nodes[cand[i]]);
        __builtin_prefetch(toks(t, cand[i]));
      }
    }
    for (uint32_t i = 0; i < n_full; i++) {
      const int32_t *bt = tokens + pos;
      uint32_t c = cand[i];
      if (c == NIL || !pd_key_eq(t->nodes[c].key, keys[i]) || t->nodes[c].parent != cur ||
          !same_tokens(t, c, bt, B(t)) || !matchable(&t->nodes[c]))
        c = find_child(t, cur, keys[i], bt, B(t), collisions);
      if (c == NIL) {
        full_done = 1;
        break;
      }
      path[np++] = c;
      cur = c;
      pos += B(t);
    }
  }
  /* Token-granular tail: the child sharing the longest common prefix with the rest. */
  uint32_t rem = n - pos < B(t) ? n - pos : B(t);
  if (rem > 0 && np < cap) {
    uint32_t best = NIL, best_len = 0, seen = 0;
    for (uint32_t c = t->nodes[cur].first_child; c != NIL && seen < PARTIAL_SCAN_LIMIT;
         c = t->nodes[c].next_sibling, seen++) {
      if (!matchable(&t->nodes[c])) continue;
      uint32_t l = lcp(toks(t, c), t->nodes[c].n_tokens, tokens + pos, rem);
      if (l > best_len) best = c, best_len = l;
    }
    if (best != NIL) {
      path[np++] = best;
      pos += best_len;
      *cow = 1; /* shared and not ours to append into */
    }
  }
  *n_path = np;
  return pos;
}

int pd_radix_match(pd_radix *t, uint32_t tenant, uint32_t ns, const int32_t *tokens, uint32_t n,
                   uint64_t now, uint32_t *nodes, uint32_t cap, pd_match *out) {
  memset(out, 0, sizeof *out);
  out->cow = -1;
  if (n > 0 && !tokens) return PD_EINVAL;
  uint32_t root;
  int rc = ns_root(t, tenant, ns, &root);
  t->stats.matches++;
  t->stats.query_tokens += n;
  if (rc == PD_ENOTFOUND) return PD_OK; /* nothing cached in this namespace yet */
  if (rc) return rc;
  int cow;
  uint32_t np;
  out->n_tokens = walk(t, root, tokens, n, nodes, cap, &np, &cow, &t->stats.collisions);
  out->n_nodes = np;
  out->cow = cow ? (int32_t)np - 1 : -1;
  t->stats.hit_tokens += out->n_tokens;
  for (uint32_t i = 0; i < np; i++) {
    pd_node *nd = &t->nodes[nodes[i]];
    uint32_t used = (i + 1 == np) ? out->n_tokens - i * B(t) : nd->n_tokens;
    t->stats.hit_tokens_by_tier[nd->tier] += used;
    nd->refcount++;
    nd->hits++;
    nd->last_use = now;
    list_unlink(t, nodes[i]);
  }
  return PD_OK;
}

int pd_radix_peek(const pd_radix *t, uint32_t tenant, uint32_t ns, const int32_t *tokens,
                  uint32_t n, uint32_t *n_tokens, uint32_t by_tier[PD_TIERS]) {
  *n_tokens = 0;
  if (by_tier) memset(by_tier, 0, PD_TIERS * sizeof *by_tier);
  uint32_t root;
  int rc = ns_root(t, tenant, ns, &root);
  if (rc == PD_ENOTFOUND) return PD_OK;
  if (rc) return rc;
  uint32_t cap = n / B(t) + 1, np;
  uint32_t stack_path[64];
  uint32_t *path = cap <= 64 ? stack_path : malloc(cap * sizeof *path);
  if (!path) return PD_ENOMEM;
  int cow;
  *n_tokens = walk(t, root, tokens, n, path, cap, &np, &cow, NULL);
  for (uint32_t i = 0; i < np && by_tier; i++) {
    uint32_t used = (i + 1 == np) ? *n_tokens - i * B(t) : t->nodes[path[i]].n_tokens;
    by_tier[t->nodes[path[i]].tier] += used;
  }
  if (path != stack_path) free(path);
  return PD_OK;
}

/* The full block below parent that a match of id's tokens reaches: id itself, or a mapped twin of
 * it (NIL when neither is matchable). */
static uint32_t reached_block(const pd_radix *t, uint32_t parent, uint32_t id) {
  return find_child(t, parent, child_key(t, t->nodes[parent].key, toks(t, id), B(t)), toks(t, id),
                    B(t), NULL);
}

int pd_radix_continuation(const pd_radix *t, uint32_t tenant, uint32_t ns, const int32_t *tokens,
                          uint32_t n, int32_t *out, uint32_t cap, uint32_t *n_out) {
  *n_out = 0;
  if (cap == 0) return PD_OK;
  uint32_t root;
  int rc = ns_root(t, tenant, ns, &root);
  if (rc == PD_ENOTFOUND) return PD_OK;
  if (rc) return rc;
  uint32_t path_cap = n / B(t) + 1, np = 0;
  uint32_t stack_path[64];
  uint32_t *path = path_cap <= 64 ? stack_path : malloc(path_cap * sizeof *path);
  if (!path) return PD_ENOMEM;
  int cow;
  uint32_t got = walk(t, root, tokens, n, path, path_cap, &np, &cow, NULL);
  uint32_t node = np ? path[np - 1] : root, off = np ? got - (np - 1) * B(t) : 0;
  uint32_t parent = np >= 2 ? path[np - 2] : root;
  if (path != stack_path) free(path);
  if (got < n) return PD_OK; /* this context was never seen to its end */
  if (np && t->nodes[node].n_tokens == B(t)) {
    /* the walk's partial last step may end in an unmapped twin of a mapped full block; what
     * follows is below the twin a match of the whole block would reach */
    uint32_t canon = reached_block(t, parent, node);
    if (canon != NIL) node = canon;
  }
  while (*n_out < cap) {
    const pd_node *nd = &t->nodes[node];
    if (off < nd->n_tokens) {
      uint32_t take = nd->n_tokens - off < cap - *n_out ? nd->n_tokens - off : cap - *n_out;
      memcpy(out + *n_out, toks(t, node) + off, take * sizeof *out);
      *n_out += take;
      off += take;
      continue;
    }
    if (nd->n_tokens < B(t) && nd->tier != PD_TIER_ROOT) break; /* a partial tail ends a path */
    /* a child a match would reach: a full block is the one its key finds (an unmapped twin of a
     * mapped block is not), a partial tail any matchable one */
    uint32_t next = NIL, seen = 0;
    for (uint32_t c = nd->first_child; c != NIL && seen < PARTIAL_SCAN_LIMIT;
         c = t->nodes[c].next_sibling, seen++) {
      const pd_node *cn = &t->nodes[c];
      if (!matchable(cn) || (next != NIL && cn->last_use <= t->nodes[next].last_use)) continue;
      if (cn->n_tokens == B(t) && reached_block(t, node, c) != c) continue;
      next = c;
    }
    if (next == NIL) break;
    node = next, off = 0;
  }
  return PD_OK;
}

void pd_radix_release(pd_radix *t, const uint32_t *nodes, uint32_t n) {
  for (uint32_t i = n; i-- > 0;) {
    pd_node *nd = &t->nodes[nodes[i]];
    assert(nd->refcount > 0);
    if (nd->refcount == 0) continue;
    if (--nd->refcount == 0) lru_update(t, nodes[i]);
  }
}

/* ---- insert ---------------------------------------------------------------------------------- */

static void link_child(pd_radix *t, uint32_t parent, uint32_t child) {
  t->nodes[child].parent = parent;
  t->nodes[child].next_sibling = t->nodes[parent].first_child;
  t->nodes[parent].first_child = child;
}

static void unlink_child(pd_radix *t, uint32_t child) {
  uint32_t p = t->nodes[child].parent;
  uint32_t *link = &t->nodes[p].first_child;
  while (*link != child) link = &t->nodes[*link].next_sibling;
  *link = t->nodes[child].next_sibling;
  t->nodes[child].next_sibling = NIL;
}

static void charge(pd_radix *t, uint32_t tenant, int tier, int64_t delta) {
  pd_tenant *tn = pd_tenants_get(&t->tenants, tenant);
  if (tn && is_real_tier((uint8_t)tier))
    tn->used[tier] = (uint64_t)((int64_t)tn->used[tier] + delta);
}

static int over_limit(const pd_radix *t, uint32_t tenant, int tier) {
  const pd_tenant *tn = pd_tenants_get(&t->tenants, tenant);
  return tn && tn->limit[tier] && tn->used[tier] + 1 > tn->limit[tier];
}

static uint8_t node_tier_for_order(const pd_node *n) {
  return n->tier == PD_TIER_ROOT ? 0 : n->tier; /* a root is hotter than everything */
}

/* Inserts blocks below cur; stops at the first failure. *n_done gets the blocks inserted; the
 * slots from *n_done on remain the caller's. */
static int insert_below(pd_radix *t, uint32_t tenant, uint32_t ns, uint32_t cur,
                        const int32_t *tokens, uint32_t n, const uint32_t *slots, int tier,
                        uint64_t now, int busy_stops, pd_insert_result *results, uint32_t *n_done) {
  uint32_t n_blocks = (n + B(t) - 1) / B(t), i = 0;
  int rc = PD_OK;
  t->stats.inserts++;
  for (; i < n_blocks; i++) {
    const int32_t *bt = tokens + (size_t)i * B(t);
    uint32_t len = n - i * B(t) < B(t) ? n - i * B(t) : B(t);
    pd_node *parent = &t->nodes[cur];
    if (parent->tier == PD_TIER_NONE || node_tier_for_order(parent) > tier ||
        (parent->tier != PD_TIER_ROOT && parent->n_tokens != B(t))) {
      rc = PD_EINVAL; /* the parent must be restored first, and full */
      break;
    }
    pd_key128 k = child_key(t, parent->key, bt, len);
    uint32_t c = find_child(t, cur, k, bt, len, &t->stats.collisions);
    if (c != NIL) {
      pd_node *nd = &t->nodes[c];
      /* A colder copy nobody is using: the caller's fresh slot makes it hot. (One in use may be
       * on its way back through a restore; it keeps its own slot.) */
      if (nd->tier > tier && nd->refcount == 0) {
        list_unlink(t, c);
        pd_blockpool_release(&t->pool[nd->tier], nd->slot);
        charge(t, nd->tenant, nd->tier, -1);
        nd->tier = (uint8_t)tier;
        nd->slot = slots[i];
        charge(t, nd->tenant, tier, +1);
        results[i] = (pd_insert_result){c, 1};
      } else if (nd->tier > tier && busy_stops) {
        /* A colder copy in use (a transfer holds it): the caller keeps its hotter block
         * private for now; it may insert it again once the transfer is done. */
        rc = PD_EBUSY;
        break;
      } else {
        pd_blockpool_release(&t->pool[tier], slots[i]);
        t->stats.blocks_deduped++;
        results[i] = (pd_insert_result){c, 0};
      }
      nd->refcount++;
      nd->last_use = now;
      list_unlink(t, c);
      cur = c;
      continue;
    }
    if (over_limit(t, tenant, tier)) {
      rc = PD_ELIMIT;
      break;
    }
    uint32_t id;
    if ((rc = new_node(t, &id))) break;
    pd_node *nd = &t->nodes[id];
    nd->key = k;
    nd->tier = (uint8_t)tier;
    nd->slot = slots[i];
    nd->ns = ns;
    nd->tenant = (uint16_t)tenant;
    nd->n_tokens = (uint16_t)len;
    nd->refcount = 1;
    nd->last_use = now;
    memcpy(toks(t, id), bt, 4u * len);
    /* A key already in the map under another node is a collision: index only the first. */
    uint64_t cursor = 0;
    uint32_t other;
    int taken = 0;
    while (pd_keymap_next(&t->map, k.lo, &cursor, &other))
      if (pd_key_eq(t->nodes[other].key, k)) taken = 1;
    if (!taken) {
      if ((rc = pd_keymap_insert(&t->map, k.lo, id))) {
        free_node(t, id);
        break;
      }
      nd->flags |= PD_NODE_IN_MAP;
    }
    link_child(t, cur, id);
    if (!(nd->flags & PD_NODE_IN_MAP)) t->nodes[cur].n_unmapped++;
    charge(t, tenant, tier, +1);
    t->stats.blocks_inserted++;
    results[i] = (pd_insert_result){id, 1};
    cur = id;
  }
  *n_done = i;
  return rc;
}

int pd_radix_insert(pd_radix *t, uint32_t tenant, uint32_t ns, const int32_t *tokens, uint32_t n,
                    const uint32_t *slots, int tier, uint64_t now, pd_insert_result *results,
                    uint32_t *n_done) {
  *n_done = 0;
  uint32_t n_blocks = (n + B(t) - 1) / B(t);
  int rc = PD_EINVAL;
  uint32_t root;
  if (tier >= 0 && tier < PD_TIERS && (n == 0 || (tokens && slots)) &&
      !(rc = ensure_root(t, tenant, ns, &root)))
    rc = insert_below(t, tenant, ns, root, tokens, n, slots, tier, now, 0, results, n_done);
  for (uint32_t j = *n_done; j < n_blocks && slots && tier >= 0 && tier < PD_TIERS; j++)
    pd_blockpool_release(&t->pool[tier], slots[j]);
  return rc;
}

int pd_radix_root(pd_radix *t, uint32_t tenant, uint32_t ns, uint32_t *root) {
  return ensure_root(t, tenant, ns, root);
}

int pd_radix_extend(pd_radix *t, uint32_t tenant, uint32_t parent, const int32_t *tokens,
                    uint32_t n, const uint32_t *slots, int tier, uint64_t now,
                    pd_insert_result *results, uint32_t *n_done) {
  *n_done = 0;
  if (tier < 0 || tier >= PD_TIERS || parent >= t->cap_nodes ||
      !(t->nodes[parent].flags & PD_NODE_USED) || (n > 0 && (!tokens || !slots)))
    return PD_EINVAL;
  uint32_t ns = t->nodes[parent].ns;
  if (!pd_tenants_may_use(&t->tenants, tenant, ns)) return PD_EPERM;
  return insert_below(t, tenant, ns, parent, tokens, n, slots, tier, now, 1, results, n_done);
}

/* ---- eviction and moves ---------------------------------------------------------------------- */

static int has_child_at_or_above(const pd_radix *t, uint32_t id, int tier) {
  for (uint32_t c = t->nodes[id].first_child; c != NIL; c = t->nodes[c].next_sibling)
    if (is_real_tier(t->nodes[c].tier) && t->nodes[c].tier <= tier) return 1;
  return 0;
}

/* Removes every pin in id's subtree (all of them expired with id: a node's pin_until is the
 * latest of the pins covering it). */
static void clear_subtree_pins(pd_radix *t, uint32_t id) {
  t->nodes[id].pin_count = t->nodes[id].own_pins = 0;
  lru_update(t, id);
  for (uint32_t c = t->nodes[id].first_child; c != NIL; c = t->nodes[c].next_sibling)
    if (t->nodes[c].pin_count) clear_subtree_pins(t, c);
}

uint32_t pd_radix_expire_pins(pd_radix *t, uint64_t now) {
  uint32_t n = 0;
  for (uint32_t id = t->pinned_head; id != NIL;) {
    pd_node *nd = &t->nodes[id];
    if (nd->pin_until == PD_PIN_FOREVER || nd->pin_until > now) {
      id = nd->lru_next;
      continue;
    }
    /* The pins covering this node also cover its ancestors: take them back there. */
    for (uint32_t a = nd->parent; t->nodes[a].tier != PD_TIER_ROOT; a = t->nodes[a].parent) {
      t->nodes[a].pin_count -= nd->pin_count;
      if (t->nodes[a].pin_count == 0) lru_update(t, a);
    }
    clear_subtree_pins(t, id);
    n++;
    id = t->pinned_head; /* the list changed under us */
  }
  return n;
}

int pd_radix_evict(pd_radix *t, int tier, int32_t tenant, uint32_t want, uint64_t now,
                   pd_evicted *out, uint32_t *n_out) {
  return pd_radix_evict_ex(t, tier, tenant, want, now, 0, out, n_out);
}

int pd_radix_evict_ex(pd_radix *t, int tier, int32_t tenant, uint32_t want, uint64_t now,
                      unsigned flags, pd_evicted *out, uint32_t *n_out) {
  *n_out = 0;
  if (tier < 0 || tier >= PD_TIERS) return PD_EINVAL;
  pd_radix_expire_pins(t, now);
  /* Normally one pass from the tail suffices (parents are more recent than their children);
   * a parent that only became a frontier node during the pass (its last hot child left) is
   * taken by the next pass. */
  for (;;) {
    uint32_t before = *n_out;
    for (uint32_t id = t->lru_tail[tier]; id != NIL && *n_out < want;) {
      pd_node *nd = &t->nodes[id];
      uint32_t prev = nd->lru_prev;
      if ((tenant < 0 || nd->tenant == (uint32_t)tenant) && !has_child_at_or_above(t, id, tier)) {
        list_unlink(t, id);
        if (!(flags & PD_EVICT_KEEP_SLOTS)) pd_blockpool_release(&t->pool[tier], nd->slot);
        charge(t, nd->tenant, tier, -1);
        out[(*n_out)++] = (pd_evicted){id, nd->key, nd->slot, (uint8_t)tier, nd->tenant};
        nd->tier = PD_TIER_NONE;
        t->stats.evictions++;
      }
      id = prev;
    }
    if (*n_out == want || *n_out == before) break;
  }
  return PD_OK;
}

int pd_radix_place(pd_radix *t, uint32_t node, int tier, uint32_t slot) {
  return pd_radix_move(t, node, tier, slot, NULL, NULL);
}

int pd_radix_move(pd_radix *t, uint32_t node, int tier, uint32_t slot, int *old_tier,
                  uint32_t *old_slot) {
  if (old_tier) *old_tier = -1;
  if (node >= t->cap_nodes || tier < 0 || tier >= PD_TIERS) return PD_EINVAL;
  pd_node *nd = &t->nodes[node];
  if (!(nd->flags & PD_NODE_USED) || nd->tier == PD_TIER_ROOT) return PD_EINVAL;
  /* A detached parent is in transit to a colder tier (or will be dropped with this subtree):
   * only moving colder is allowed beneath it. */
  const pd_node *p = &t->nodes[nd->parent];
  if (p->tier == PD_TIER_NONE ? (is_real_tier(nd->tier) && tier <= nd->tier)
                              : node_tier_for_order(p) > tier)
    return PD_EINVAL;
  for (uint32_t c = nd->first_child; c != NIL; c = t->nodes[c].next_sibling)
    if (is_real_tier(t->nodes[c].tier) && t->nodes[c].tier < tier) return PD_EINVAL;
  if (is_real_tier(nd->tier) && tier > nd->tier && (nd->refcount || nd->pin_count)) return PD_EBUSY;
  list_unlink(t, node);
  if (is_real_tier(nd->tier)) {
    if (old_tier && old_slot) {
      *old_tier = nd->tier;
      *old_slot = nd->slot;
    } else {
      pd_blockpool_release(&t->pool[nd->tier], nd->slot);
    }
    charge(t, nd->tenant, nd->tier, -1);
  }
  nd->tier = (uint8_t)tier;
  nd->slot = slot;
  charge(t, nd->tenant, tier, +1);
  lru_update(t, node);
  return PD_OK;
}

/* Checks that no node of the subtree is referenced or pinned, and counts slot holders. */
static int subtree_droppable(const pd_radix *t, uint32_t id, uint32_t *n_slots) {
  const pd_node *nd = &t->nodes[id];
  if (nd->refcount || nd->pin_count) return 0;
  if (is_real_tier(nd->tier)) (*n_slots)++;
  for (uint32_t c = nd->first_child; c != NIL; c = t->nodes[c].next_sibling)
    if (!subtree_droppable(t, c, n_slots)) return 0;
  return 1;
}

static void drop_subtree(pd_radix *t, uint32_t id, pd_evicted *out, uint32_t *n_out) {
  pd_node *nd = &t->nodes[id];
  while (nd->first_child != NIL) {
    uint32_t c = nd->first_child;
    nd->first_child = t->nodes[c].next_sibling;
    drop_subtree(t, c, out, n_out);
  }
  list_unlink(t, id);
  if (is_real_tier(nd->tier)) {
    pd_blockpool_release(&t->pool[nd->tier], nd->slot);
    charge(t, nd->tenant, nd->tier, -1);
    out[(*n_out)++] = (pd_evicted){id, nd->key, nd->slot, nd->tier, nd->tenant};
  }
  if (nd->flags & PD_NODE_IN_MAP)
    pd_keymap_remove(&t->map, nd->key.lo, id);
  else
    t->nodes[nd->parent].n_unmapped--;
  t->stats.drops++;
  free_node(t, id);
}

int pd_radix_drop(pd_radix *t, uint32_t node, pd_evicted *out, uint32_t cap, uint32_t *n_out) {
  *n_out = 0;
  if (node >= t->cap_nodes || !(t->nodes[node].flags & PD_NODE_USED) ||
      t->nodes[node].tier == PD_TIER_ROOT)
    return PD_EINVAL;
  uint32_t n_slots = 0;
  if (!subtree_droppable(t, node, &n_slots)) return PD_EBUSY;
  if (n_slots > cap) return PD_EFULL;
  unlink_child(t, node);
  drop_subtree(t, node, out, n_out);
  return PD_OK;
}

int pd_radix_hold(pd_radix *t, uint32_t node) {
  if (node >= t->cap_nodes || !(t->nodes[node].flags & PD_NODE_USED) ||
      !is_real_tier(t->nodes[node].tier))
    return PD_EINVAL;
  if (t->nodes[node].holds == UINT16_MAX) return PD_ELIMIT;
  t->nodes[node].refcount++;
  t->nodes[node].holds++;
  list_unlink(t, node);
  return PD_OK;
}

void pd_radix_unhold(pd_radix *t, uint32_t node) {
  pd_node *nd = &t->nodes[node];
  assert(nd->holds > 0 && nd->refcount >= nd->holds);
  if (nd->holds == 0 || nd->refcount == 0) return;
  nd->holds--;
  if (--nd->refcount == 0) lru_update(t, node);
}

/* ---- pins ------------------------------------------------------------------------------------ */

int pd_radix_pin(pd_radix *t, uint32_t node, uint64_t until) {
  if (node >= t->cap_nodes || !(t->nodes[node].flags & PD_NODE_USED) ||
      t->nodes[node].tier == PD_TIER_ROOT)
    return PD_EINVAL;
  for (uint32_t id = node; t->nodes[id].tier != PD_TIER_ROOT; id = t->nodes[id].parent)
    if (t->nodes[id].pin_count == UINT16_MAX) return PD_ELIMIT;
  t->nodes[node].own_pins++;
  for (uint32_t id = node; t->nodes[id].tier != PD_TIER_ROOT; id = t->nodes[id].parent) {
    pd_node *nd = &t->nodes[id];
    if (nd->pin_count == 0 || until > nd->pin_until) nd->pin_until = until;
    nd->pin_count++;
    lru_update(t, id);
  }
  return PD_OK;
}

int pd_radix_unpin(pd_radix *t, uint32_t node) {
  if (node >= t->cap_nodes || !(t->nodes[node].flags & PD_NODE_USED)) return PD_EINVAL;
  if (t->nodes[node].own_pins == 0) return PD_EINVAL;
  t->nodes[node].own_pins--;
  for (uint32_t id = node; id != NIL && t->nodes[id].tier != PD_TIER_ROOT;
       id = t->nodes[id].parent) {
    pd_node *nd = &t->nodes[id];
    if (nd->pin_count) nd->pin_count--;
    lru_update(t, id);
  }
  return PD_OK;
}

/* ---- introspection --------------------------------------------------------------------------- */

/* A prefix ends at a leaf, at a pin, and where paths part: the last block several prompts share
 * (a system prompt that many sessions continue) is a prefix of its own, with its own hits. */
static int is_prefix_end(const pd_radix *t, uint32_t id) {
  uint32_t c = t->nodes[id].first_child;
  return c == NIL || t->nodes[id].own_pins > 0 || t->nodes[c].next_sibling != NIL;
}

int pd_radix_prefix_info(const pd_radix *t, uint32_t node, pd_prefix_info *info) {
  if (node >= t->cap_nodes || !(t->nodes[node].flags & PD_NODE_USED) ||
      t->nodes[node].tier == PD_TIER_ROOT)
    return PD_EINVAL;
  memset(info, 0, sizeof *info);
  const pd_node *nd = &t->nodes[node];
  info->node = node;
  info->id = nd->key;
  info->tenant = nd->tenant;
  info->ns = nd->ns;
  info->hits = nd->hits;
  info->last_use = nd->last_use;
  info->pinned = nd->pin_count > 0;
  info->pin_until = nd->pin_until;
  for (uint32_t id = node; t->nodes[id].tier != PD_TIER_ROOT; id = t->nodes[id].parent) {
    const pd_node *p = &t->nodes[id];
    if (id != node && !info->has_parent && is_prefix_end(t, id)) {
      info->has_parent = 1;
      info->parent_id = p->key;
    }
    info->n_tokens += p->n_tokens;
    info->n_blocks++;
    if (is_real_tier(p->tier))
      info->blocks_by_tier[p->tier]++;
    else
      info->blocks_detached++;
  }
  return PD_OK;
}

int pd_radix_next_prefix(const pd_radix *t, uint32_t *cursor, int32_t tenant,
                         pd_prefix_info *info) {
  for (uint32_t id = *cursor; id < t->cap_nodes; id++) {
    const pd_node *nd = &t->nodes[id];
    if (!(nd->flags & PD_NODE_USED) || nd->tier == PD_TIER_ROOT) continue;
    if (tenant >= 0 && nd->tenant != (uint32_t)tenant) continue;
    if (!is_prefix_end(t, id)) continue;
    *cursor = id + 1;
    return pd_radix_prefix_info(t, id, info) == 0;
  }
  *cursor = t->cap_nodes;
  return 0;
}

int pd_radix_find(const pd_radix *t, pd_key128 id, uint32_t *node) {
  uint64_t cur = 0;
  uint32_t n;
  while (pd_keymap_next(&t->map, id.lo, &cur, &n))
    if (pd_key_eq(t->nodes[n].key, id) && t->nodes[n].tier != PD_TIER_ROOT) {
      *node = n;
      return PD_OK;
    }
  return PD_ENOTFOUND;
}

int pd_radix_path_tokens(const pd_radix *t, uint32_t node, int32_t *out, uint32_t cap,
                         uint32_t *n) {
  pd_prefix_info info;
  int rc = pd_radix_prefix_info(t, node, &info);
  if (rc) return rc;
  *n = info.n_tokens;
  if (info.n_tokens > cap) return PD_EFULL;
  uint32_t end = info.n_tokens;
  for (uint32_t id = node; t->nodes[id].tier != PD_TIER_ROOT; id = t->nodes[id].parent) {
    end -= t->nodes[id].n_tokens;
    memcpy(out + end, toks(t, id), 4u * t->nodes[id].n_tokens);
  }
  return PD_OK;
}

size_t pd_radix_index_bytes(const pd_radix *t) {
  size_t b = (size_t)t->cap_nodes * (sizeof(pd_node) + 4u * B(t)) + pd_keymap_bytes(&t->map);
  for (int i = 0; i < PD_TIERS; i++) b += (size_t)t->pool[i].capacity * 4 + t->pool[i].capacity / 8;
  return b;
}

/* ---- invariants ------------------------------------------------------------------------------ */

int pd_radix_check(const pd_radix *t, char *err, size_t errlen) {
  uint64_t per_tier[PD_TIERS] = {0}, used = 0, in_map = 0;
  uint64_t *per_tenant = calloc((size_t)t->tenants.n_tenants * PD_TIERS + 1, sizeof *per_tenant);
  if (!per_tenant) return PD_ENOMEM;
  int rc = PD_OK;
  for (uint32_t id = 0; id < t->cap_nodes && !rc; id++) {
    const pd_node *nd = &t->nodes[id];
    if (!(nd->flags & PD_NODE_USED)) continue;
    used++;
    if (nd->flags & PD_NODE_IN_MAP) in_map++;
    if (nd->tier == PD_TIER_ROOT) continue;
    const pd_node *p = &t->nodes[nd->parent];
    if (nd->parent >= t->cap_nodes || !(p->flags & PD_NODE_USED)) {
      rc = pd_errf(err, errlen, PD_ECORRUPT, "node %u: bad parent", id);
      break;
    }
    if (is_real_tier(nd->tier)) {
      per_tier[nd->tier]++;
      per_tenant[(size_t)nd->tenant * PD_TIERS + nd->tier]++;
      if (!pd_blockpool_is_allocated(&t->pool[nd->tier], nd->slot))
        rc = pd_errf(err, errlen, PD_ECORRUPT, "node %u: slot %u of tier %u not allocated", id,
                     nd->slot, nd->tier);
      if (p->tier != PD_TIER_ROOT && p->tier != PD_TIER_NONE && p->tier > nd->tier)
        rc = pd_errf(err, errlen, PD_ECORRUPT, "node %u in tier %u under parent %u in tier %u", id,
                     nd->tier, nd->parent, p->tier);
    }
    int want_lru = is_real_tier(nd->tier) && nd->refcount == 0 && nd->pin_count == 0;
    int want_pinned = is_real_tier(nd->tier) && nd->refcount == 0 && nd->pin_count > 0;
    if (!!(nd->flags & PD_NODE_IN_LRU) != want_lru ||
        !!(nd->flags & PD_NODE_IN_PINNED) != want_pinned)
      rc = pd_errf(err, errlen, PD_ECORRUPT,
                   "node %u: list membership wrong (flags %x ref %u pins %u tier %u)", id,
                   nd->flags, nd->refcount, nd->pin_count, nd->tier);
    int found = 0;
    uint32_t unmapped = 0;
    for (uint32_t c = p->first_child; c != NIL; c = t->nodes[c].next_sibling) {
      if (c == id) found = 1;
      if (!(t->nodes[c].flags & PD_NODE_IN_MAP)) unmapped++;
    }
    if (unmapped != p->n_unmapped)
      rc = pd_errf(err, errlen, PD_ECORRUPT, "node %u: %u unmapped children, counted %u",
                   nd->parent, p->n_unmapped, unmapped);
    if (!found)
      rc = pd_errf(err, errlen, PD_ECORRUPT, "node %u not among its parent's children", id);
    if (nd->pin_count && p->tier != PD_TIER_ROOT && p->pin_count == 0)
      rc = pd_errf(err, errlen, PD_ECORRUPT, "node %u pinned but its parent is not", id);
    if (nd->own_pins > nd->pin_count)
      rc = pd_errf(err, errlen, PD_ECORRUPT, "node %u: own pins exceed pins", id);
    /* a sequence references whole paths; a transfer's hold is on one node */
    if (nd->refcount > nd->holds && p->tier != PD_TIER_ROOT && p->refcount <= p->holds)
      rc = pd_errf(err, errlen, PD_ECORRUPT, "node %u referenced but its parent is not", id);
    if (nd->holds > nd->refcount)
      rc = pd_errf(err, errlen, PD_ECORRUPT, "node %u: holds exceed references", id);
  }
  for (int i = 0; i < PD_TIERS && !rc; i++)
    if (per_tier[i] != pd_blockpool_used(&t->pool[i]))
      rc = pd_errf(err, errlen, PD_ECORRUPT, "tier %d: %llu nodes but %u slots in use", i,
                   (unsigned long long)per_tier[i], pd_blockpool_used(&t->pool[i]));
  for (uint32_t tn = 0; tn < t->tenants.n_tenants && !rc; tn++)
    for (int i = 0; i < PD_TIERS; i++)
      if (t->tenants.tenants[tn].used[i] != per_tenant[(size_t)tn * PD_TIERS + i])
        rc = pd_errf(err, errlen, PD_ECORRUPT, "tenant %u tier %d: charged %llu, holds %llu", tn, i,
                     (unsigned long long)t->tenants.tenants[tn].used[i],
                     (unsigned long long)per_tenant[(size_t)tn * PD_TIERS + i]);
  if (!rc && used != t->n_used)
    rc = pd_errf(err, errlen, PD_ECORRUPT, "n_used %u, counted %llu", t->n_used,
                 (unsigned long long)used);
  if (!rc && in_map != t->map.count)
    rc = pd_errf(err, errlen, PD_ECORRUPT, "map holds %llu, nodes say %llu",
                 (unsigned long long)t->map.count, (unsigned long long)in_map);
  free(per_tenant);
  return rc;
}
