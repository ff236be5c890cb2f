/*
 * pd_radix.h -- the prefix tree of KV blocks.
 *
 * DESIGN
 *
 * Every node is one KV block: up to B tokens (B a power of two) and the slot that holds their KV
 * in one tier. A node's key is the chained hash of all tokens from its namespace's root to it
 * (pd_blockkey.h), so the path to a node is implied by its key, and a full block can be found by
 * key alone: matching a prompt is one hash and one map probe per block, not a walk that compares
 * tokens level by level. The map only proposes; every candidate is verified (same parent, same
 * length, same tokens) before it counts, so a hash collision -- which the test build provokes by
 * masking keys to a few bits -- costs a miss, never a wrong block.
 *
 * Full blocks are reached through the map; the last step of a match is token-granular: among the
 * children of the last full block matched, the one with the longest common prefix with the rest
 * of the prompt is taken, partially. The sequence then shares that block's first tokens but may
 * not write into it (it is shared): the match names it as the copy-on-write block, and the caller
 * copies it before appending. The same holds for a partial tail matched to its end.
 *
 * Each namespace has a root node (no tokens, no slot, never evicted); its key is k_0.
 *
 * Tiers: 0 (device), 1 (host), 2 (disk). Invariant (the frontier rule): a node is never in a
 * colder tier than any of its descendants, i.e. parent.tier <= child.tier along every path. So a
 * match finds hot blocks first and a cold suffix after them, and only a node all of whose
 * children are strictly colder may leave its tier.
 *
 * Refcounts and pins: match and insert take a reference on every node they return; the caller
 * gives them back with pd_radix_release. A node with a reference or an unexpired pin is never
 * evicted, moved or dropped. Pins cover whole paths (pinning a prefix pins its ancestors), so a
 * pinned prefix never loses a block.
 *
 * LRU: each tier keeps a list of its nodes that are neither referenced nor pinned, most recently
 * used at the head. References are given back leaf first, so a parent is always more recent than
 * its children and eviction from the tail meets leaves first. A candidate that still has a child
 * in its own tier is skipped (not on the frontier).
 *
 * Eviction gives the slot back to the tier's pool and reports the node, which becomes detached
 * (tier PD_TIER_NONE: present but not matchable). The caller then places it in a colder tier
 * (pd_radix_place: a demotion) or drops it with its subtree (pd_radix_drop). The bytes of an
 * evicted slot stay valid until the caller's next allocation from that tier.
 *
 * Threads: none. The engine thread owns the tree.
 *
 * MEMORY
 *
 * Nodes live in one array indexed by a uint32 id (88 bytes each), their tokens in a parallel
 * array of B int32 per node, the map in 16-byte slots at most 7/8 full: about 110 bytes of index
 * per cached block plus 4 * B bytes of tokens.
 */
#ifndef PD_RADIX_H
#define PD_RADIX_H

#include <stddef.h>
#include <stdint.h>

#include "pd_blockpool.h"
#include "pd_key.h"
#include "pd_keymap.h"
#include "pd_tenant.h"

#define PD_TIER_NONE   0xfe /* detached: evicted, waiting to be placed or dropped */
#define PD_TIER_ROOT   0xff /* a namespace's root node */
#define PD_NODE_NIL    UINT32_MAX
#define PD_PIN_FOREVER UINT64_MAX

typedef struct pd_node {
  pd_key128 key;         /* chained key of the path to this block */
  uint64_t last_use;     /* caller's monotonic ms at the last match or insert */
  uint64_t pin_until;    /* meaningful while pin_count > 0; PD_PIN_FOREVER = no expiry */
  uint32_t parent;       /* node id; PD_NODE_NIL for a root */
  uint32_t first_child;  /* children form a singly linked list through next_sibling */
  uint32_t next_sibling; /* also links the free list */
  uint32_t lru_prev;     /* in the tier's LRU or the pinned list, else both PD_NODE_NIL */
  uint32_t lru_next;
  uint32_t slot;       /* in the pool of `tier` */
  uint32_t refcount;   /* references held by running sequences */
  uint32_t hits;       /* matches that used this block */
  uint32_t ns;         /* namespace id */
  uint16_t tenant;     /* the tenant charged for this block */
  uint16_t n_tokens;   /* 0 for a root, B for a full block, fewer for a partial tail */
  uint16_t pin_count;  /* pins covering this node: its own and its descendants' */
  uint16_t own_pins;   /* pins taken on this node itself (what unpin may give back) */
  uint16_t n_unmapped; /* children left out of the map (key collisions): scanned by lookups */
  uint16_t holds;      /* of refcount: single-node references of transfers (pd_radix_hold) */
  uint8_t tier;        /* 0..2, PD_TIER_NONE, or PD_TIER_ROOT */
  uint8_t flags;       /* PD_NODE_* below */
} pd_node;

#define PD_NODE_USED      0x01 /* not on the free list */
#define PD_NODE_IN_MAP    0x02 /* indexed in the key map */
#define PD_NODE_IN_LRU    0x04 /* in its tier's LRU list */
#define PD_NODE_IN_PINNED 0x08

typedef struct pd_radix_config {
  uint32_t block_tokens;            /* B: a power of two, 1..256 */
  uint8_t fingerprint[16];          /* model fingerprint, salts every namespace's root key */
  uint32_t tier_capacity[PD_TIERS]; /* blocks per tier (0 = the tier is absent) */
  uint32_t key_mask_bits;           /* test hook: nonzero keeps only that many low key bits, so
                                    that many blocks collide; 0 in production */
} pd_radix_config;

typedef struct pd_radix_stats {
  uint64_t query_tokens; /* tokens asked for by matches */
  uint64_t hit_tokens;   /* of those, found cached */
  uint64_t hit_tokens_by_tier[PD_TIERS];
  uint64_t matches, inserts, blocks_inserted, blocks_deduped, evictions, drops;
  uint64_t collisions; /* map candidates rejected by verification */
} pd_radix_stats;

typedef struct pd_radix {
  pd_radix_config cfg;
  pd_node *nodes;  /* (cap_nodes) */
  int32_t *tokens; /* (cap_nodes, B) */
  uint32_t cap_nodes, n_used, free_head;
  uint32_t *ns_root; /* (cap_ns_root) root node id per namespace id, PD_NODE_NIL if none */
  uint32_t cap_ns_root;
  pd_keymap map;
  pd_blockpool pool[PD_TIERS];
  uint32_t lru_head[PD_TIERS], lru_tail[PD_TIERS];
  uint32_t pinned_head; /* unreferenced pinned nodes, for expiry */
  pd_tenants tenants;
  pd_radix_stats stats;
} pd_radix;

/* ---- life ------------------------------------------------------------------------------------ */

int pd_radix_init(pd_radix *t, const pd_radix_config *cfg);
void pd_radix_free(pd_radix *t);

/* The tenant table (owned by the tree; borrowed pointer). */
static inline pd_tenants *pd_radix_tenants(pd_radix *t) {
  return &t->tenants;
}

/* ---- slots ----------------------------------------------------------------------------------- */

/* Allocates a slot in tier for a block the caller is about to fill. PD_EFULL: evict, retry. */
int pd_radix_alloc_slot(pd_radix *t, int tier, uint32_t *slot);
/* Gives back a slot the caller allocated but did not hand to the tree. */
int pd_radix_free_slot(pd_radix *t, int tier, uint32_t slot);

/* ---- match ----------------------------------------------------------------------------------- */

typedef struct pd_match {
  uint32_t n_nodes;  /* nodes written to the caller's array, in path order */
  uint32_t n_tokens; /* prompt tokens covered: n_full_blocks * B + the partial part */
  int32_t cow;       /* index (in the array) of the block the sequence must copy before it
                        appends, or -1 */
} pd_match;

/*
 * Longest cached prefix of tokens (n) in namespace ns, for tenant. Takes a reference on every
 * node written to nodes (capacity cap, at least n / B + 1). Updates hits, last use and the hit
 * counters. Nodes may be in any tier; the caller restores cold ones (pd_radix_place, in path
 * order) before it reads them. Returns 0, PD_EPERM if the tenant may not use ns, PD_EINVAL.
 */
int pd_radix_match(pd_radix *t, uint32_t tenant, uint32_t ns, const int32_t *tokens, uint32_t n,
                   uint64_t now, uint32_t *nodes, uint32_t cap, pd_match *out);

/* Counts the cached prefix like pd_radix_match (per tier) without taking references or
 * touching LRU, hits or counters: for Lookup. by_tier may be NULL. */
int pd_radix_peek(const pd_radix *t, uint32_t tenant, uint32_t ns, const int32_t *tokens,
                  uint32_t n, uint32_t *n_tokens, uint32_t by_tier[PD_TIERS]);

/*
 * What the tree holds after tokens (n) in namespace ns: when the whole of tokens is cached there
 * (to a block boundary or into a block), the tokens that follow it -- the rest of that block,
 * then down the most recently used child, block after block -- up to cap of them into out, their
 * count into *n_out (0 when tokens is not cached to its end, or nothing follows). Read-only, like
 * pd_radix_peek: speculative decoding's drafts from earlier answers to the same context. Returns
 * 0, PD_EPERM if the tenant may not use ns, PD_ENOMEM.
 */
int pd_radix_continuation(const pd_radix *t, uint32_t tenant, uint32_t ns, const int32_t *tokens,
                          uint32_t n, int32_t *out, uint32_t cap, uint32_t *n_out);

/* Gives back references, leaf first (pass the array in path order). */
void pd_radix_release(pd_radix *t, const uint32_t *nodes, uint32_t n);

/* ---- insert ---------------------------------------------------------------------------------- */

typedef struct pd_insert_result {
  uint32_t node;   /* the node now holding this block (referenced: release it later) */
  uint8_t adopted; /* 1: the caller's slot is now the node's; 0: an identical block existed
                      and the caller's slot was given back to the pool */
} pd_insert_result;

/*
 * Inserts the blocks of tokens (n, cut into ceil(n / B) blocks, the last possibly partial) for
 * tenant in ns. slots[i] (allocated with pd_radix_alloc_slot in tier) holds block i's KV; the
 * tree takes ownership of every slot passed (adopting or freeing it). Identical blocks are
 * deduplicated. A block that exists in a colder tier, unreferenced, is promoted into the
 * caller's slot; one that exists colder and referenced is returned as it is (adopted 0).
 * Stops at the tenant's limit in tier: PD_ELIMIT, with *n_done blocks inserted (their results
 * valid and referenced) and the remaining slots freed. The parent of the first new block must
 * not be colder than tier (restore it first): PD_EINVAL. PD_EPERM for a namespace the tenant may
 * not use.
 */
int pd_radix_insert(pd_radix *t, uint32_t tenant, uint32_t ns, const int32_t *tokens, uint32_t n,
                    const uint32_t *slots, int tier, uint64_t now, pd_insert_result *results,
                    uint32_t *n_done);

/* The root node of namespace ns (created on first use), for pd_radix_extend. PD_EPERM if the
 * tenant may not use ns. Roots are never evicted: no reference is needed. */
int pd_radix_root(pd_radix *t, uint32_t tenant, uint32_t ns, uint32_t *root);

/*
 * Like pd_radix_insert, but below parent (a namespace root, or a full block the caller holds a
 * reference on), in parent's namespace: for a sequence that matched a prefix and now adds the
 * blocks it computed after it. The difference in ownership: on failure, the slots from *n_done
 * on stay the caller's (a running sequence keeps reading them). Same return codes, and one
 * difference in deduplication: a block that exists in a colder tier and is referenced (a transfer
 * holds it) stops the extend there with PD_EBUSY, because the caller's table must name a block
 * in the caller's tier.
 */
int pd_radix_extend(pd_radix *t, uint32_t tenant, uint32_t parent, const int32_t *tokens,
                    uint32_t n, const uint32_t *slots, int tier, uint64_t now,
                    pd_insert_result *results, uint32_t *n_done);

/* ---- eviction and tier moves ----------------------------------------------------------------- */

typedef struct pd_evicted {
  uint32_t node;
  pd_key128 key;
  uint32_t slot; /* the slot given back (its bytes valid until the next alloc in that tier) */
  uint8_t tier;  /* the tier it left */
  uint16_t tenant;
} pd_evicted;

/*
 * Evicts up to want least recently used frontier nodes from tier (only those charged to
 * tenant when tenant >= 0), detaching them. Expired pins are released first.
 * Writes the victims to out and their count to *n_out (less than want if no more may go).
 * Children come before their parents in out: place victims in a colder tier in reverse order.
 */
int pd_radix_evict(pd_radix *t, int tier, int32_t tenant, uint32_t want, uint64_t now,
                   pd_evicted *out, uint32_t *n_out);

#define PD_EVICT_KEEP_SLOTS                                                                        \
  0x1u /* the victims' slots stay allocated, now the caller's: a
                                   * transfer still reads them; give each back with
                                   * pd_radix_free_slot when it is done */
/* pd_radix_evict with flags (PD_EVICT_*). */
int pd_radix_evict_ex(pd_radix *t, int tier, int32_t tenant, uint32_t want, uint64_t now,
                      unsigned flags, pd_evicted *out, uint32_t *n_out);

/* Puts node (detached, or in another tier) into tier with slot (allocated by the caller;
 * ownership passes to the tree). The old slot, if any, is given back. Keeps the frontier rule:
 * PD_EINVAL if the parent is colder than tier or a child hotter. Beneath a detached parent (in
 * transit itself) only a detached node or a move colder is allowed. PD_EBUSY if referenced or
 * pinned while moving colder. */
int pd_radix_place(pd_radix *t, uint32_t node, int tier, uint32_t slot);

/* pd_radix_place, except that the node's old slot (if it was in a tier) is not given back but
 * handed to the caller in *old_tier / *old_slot (*old_tier = -1 if it had none): a transfer is
 * still reading it. Give it back with pd_radix_free_slot. */
int pd_radix_move(pd_radix *t, uint32_t node, int tier, uint32_t slot, int *old_tier,
                  uint32_t *old_slot);

/* Takes a reference on node (in a tier) alone, not on its path as a match does: it is neither
 * evicted, moved colder nor dropped until pd_radix_unhold gives it back. For transfers in
 * flight (a block being copied or written needs only itself kept in place). */
int pd_radix_hold(pd_radix *t, uint32_t node);
void pd_radix_unhold(pd_radix *t, uint32_t node);

/* Removes node and its whole subtree (none may be referenced or pinned: PD_EBUSY). Writes every
 * removed node that held a slot to out (capacity cap; PD_EFULL if too small, nothing removed). */
int pd_radix_drop(pd_radix *t, uint32_t node, pd_evicted *out, uint32_t cap, uint32_t *n_out);

/* ---- pins ------------------------------------------------------------------------------------ */

/* Pins node and all its ancestors until `until` (PD_PIN_FOREVER: no expiry). */
int pd_radix_pin(pd_radix *t, uint32_t node, uint64_t until);
/* Takes back one pin taken on node (and so from its ancestors). PD_EINVAL if node holds no pin
 * of its own. */
int pd_radix_unpin(pd_radix *t, uint32_t node);
/* Releases the pins that expired at now. Returns how many nodes were unpinned. */
uint32_t pd_radix_expire_pins(pd_radix *t, uint64_t now);

/* ---- introspection --------------------------------------------------------------------------- */

typedef struct pd_prefix_info {
  uint32_t node; /* the prefix's last block */
  pd_key128 id;  /* its key: the stable prefix id */
  uint32_t tenant;
  uint32_t ns;
  uint32_t n_tokens; /* tokens from the root */
  uint32_t n_blocks;
  uint32_t blocks_by_tier[PD_TIERS];
  uint32_t blocks_detached;
  uint32_t hits;
  uint64_t last_use;
  int pinned;
  uint64_t pin_until;
  int has_parent;      /* 1: an ancestor is a prefix itself (pd_radix_next_prefix lists it) */
  pd_key128 parent_id; /* the nearest such ancestor's key, when has_parent */
} pd_prefix_info;

/* Iterates over prefixes: every leaf, every node with an own pin, and every node where paths
 * part (two children or more: a shared prefix). Each names its nearest ancestor that is a prefix
 * too (has_parent, parent_id), so the listed prefixes form a tree. Start with *cursor = 0.
 * tenant < 0: all tenants. Returns 1 and fills info, or 0 at the end. */
int pd_radix_next_prefix(const pd_radix *t, uint32_t *cursor, int32_t tenant, pd_prefix_info *info);
int pd_radix_prefix_info(const pd_radix *t, uint32_t node, pd_prefix_info *info);
/* Finds the node whose key is id. Returns 0 or PD_ENOTFOUND. */
int pd_radix_find(const pd_radix *t, pd_key128 id, uint32_t *node);
/* Copies the tokens from the root to node into out (capacity cap); *n gets the full count. */
int pd_radix_path_tokens(const pd_radix *t, uint32_t node, int32_t *out, uint32_t cap, uint32_t *n);

static inline const pd_node *pd_radix_node(const pd_radix *t, uint32_t id) {
  return &t->nodes[id];
}
static inline uint32_t pd_radix_tier_used(const pd_radix *t, int tier) {
  return pd_blockpool_used(&t->pool[tier]);
}

/* Bytes of index memory (nodes, tokens, map, pools). */
size_t pd_radix_index_bytes(const pd_radix *t);

/* Checks every invariant (frontier rule, LRU membership, pool and tenant accounting, map
 * membership, tree links). Returns 0 or PD_ECORRUPT with a reason in err. For tests. */
int pd_radix_check(const pd_radix *t, char *err, size_t errlen);

#endif /* PD_RADIX_H */
