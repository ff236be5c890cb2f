/*
 * pd_tiers.c -- the tier manager. See pd_tiers.h for the design; this file holds the batches,
 * the worker, demotion and restore, write-through, and the rebuild at start.
 *
 * A batch (tier_op) is one kind of transfer for many blocks. The engine thread fills at most one
 * open batch per kind during a step; pd_tiers_flush queues them for the worker in the order
 * COPY, READ, DELETE, WRITE, so that within a step a write of a block that was just restored
 * reads the restored bytes, and a delete of a key never overtakes a write of the same key made
 * later. Across steps the single worker keeps FIFO order.
 *
 * Per-node state lives in arrays indexed by the tree's node id (grown with the tree): the pending
 * transfer count, and the bits ON_DISK (a record of this block is in the store), KEEP (warmed or
 * pinned), WRITING (a write of it is queued) and BAD (a restore failed: recompute it).
 * pd_tiers_drop is the only way nodes leave the tree while the manager lives, so the state of a
 * node id is cleared before the id can be reused.
 */
#include "pd_tiers.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pd_blockfile.h"
#include "pd_err.h"
#include "pd_fault.h"
#include "pd_log.h"

/* the kinds batched per step, then OP_META: one named value for the store's "meta" database,
 * queued on its own (pd_tiers_put_meta) */
enum { OP_COPY, OP_READ, OP_DELETE, OP_WRITE, OP_KINDS, OP_META = OP_KINDS };

enum {
  ST_ON_DISK = 0x1,
  ST_KEEP = 0x2,
  ST_WRITING = 0x4,
  ST_BAD = 0x8,
};

#define NIL PD_NODE_NIL

typedef struct tier_item {
  uint32_t node;      /* NIL for a delete of a record whose node is gone */
  uint32_t free_slot; /* given back to free_tier when the item completes */
  int8_t free_tier;   /* -1: nothing to give back */
  int8_t hold;        /* a tree reference on node is held for this item */
  int8_t from_tier;   /* for the counters and rates */
  int8_t demotion;    /* a write that moved the node to the disk tier (no hotter copy) */
  int8_t restore;     /* bytes on their way into the node's slot: it counts as pending */
  int32_t dev_slot;   /* the device-pool block read or written (-1: none) */
  int32_t host_slot;  /* the host-tier slot read or written (-1: none) */
  pd_key128 key, parent;
  uint32_t ns;
  uint32_t tok_off; /* the block's tokens: op->tokens + tok_off */
  uint16_t n_tokens;
  int rc;
} tier_item;

typedef struct tier_op {
  int kind;
  tier_item *items; /* (cap) */
  uint32_t n, cap;
  int32_t *tokens; /* (cap_tok) */
  uint32_t n_tok, cap_tok;
  int rc;
  int retries;
  double seconds;
  uint64_t bytes;
  char meta_name[32]; /* OP_META: the name, and the value (meta_len bytes, owned) */
  uint8_t *meta_value;
  size_t meta_len;
  struct tier_op *next;
} tier_op;

struct pd_tiers {
  pd_tiers_config cfg;
  pd_radix *tree;
  uint32_t caps[PD_TIERS];
  uint8_t *host;  /* (caps[1], block_bytes), from pd_devpool_host_alloc */
  uint8_t *stage; /* (cap_stage, block_bytes) the worker's staging for a GPU pool's disk I/O */
  uint32_t cap_stage;
  int32_t *stage_ids; /* (cap_stage) 0, 1, 2, ...: staging slots in order */
  pd_kvstore *store;
  int disk_disabled;
  char disk_reason[160];
  uint64_t n_records; /* records in the store, as the engine has asked for them */
  /* per node (cap_state) */
  uint8_t *state;
  uint16_t *pending;
  uint32_t cap_state;
  uint32_t *bad; /* (cap_bad) nodes to drop once unreferenced */
  uint32_t n_bad, cap_bad;
  tier_op *open[OP_KINDS];
  uint32_t in_flight;
  uint32_t freeing[PD_TIERS]; /* slots kept by transfers in flight, free once they land */
  pd_tiers_counters counters;
  double prefill_tps;
  uint64_t now;        /* the engine's clock at the last poll (ms) */
  pd_evicted *scratch; /* (cap_scratch) for drops */
  uint32_t cap_scratch;
  int depth; /* make_room recursion guard */
  /* shared with the worker, under mu */
  pthread_t worker;
  int worker_started;
  pthread_mutex_t mu;
  pthread_cond_t cv, idle_cv;
  tier_op *queue_head, *queue_tail, *done_head, *done_tail;
  int stop, busy;
  atomic_int has_done;
  pd_kvstore_counters store_counters;
  uint64_t store_blocks, store_used, store_map;
};

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t record_bytes(const pd_tiers_config *cfg) {
  /* the payload in whole 4 KiB pages of blocks.dat, and the index entry (key, header, tokens, a
   * leaf node's header) counted twice: LMDB's leaf pages are not full, and it copies on write */
  uint64_t payload = pd_blockfile_pages(cfg->block_bytes) * PD_BLOCKFILE_PAGE;
  uint64_t entry = 16 + PD_KVSTORE_HDR_BYTES + 4ull * cfg->block_tokens + 16;
  return payload + 2 * entry;
}

void pd_tiers_capacity(const pd_tiers_config *cfg, uint32_t caps[PD_TIERS]) {
  uint64_t host = cfg->block_bytes ? cfg->host_bytes / cfg->block_bytes : 0;
  caps[1] = host > UINT32_MAX / 2 ? UINT32_MAX / 2 : (uint32_t)host;
  uint64_t disk = 0;
  if (cfg->disk_dir && cfg->disk_bytes >= (4u << 20))
    disk = (cfg->disk_bytes - (128u << 10)) / record_bytes(cfg); /* less the index's headroom */
  caps[2] = disk > UINT32_MAX / 2 ? UINT32_MAX / 2 : (uint32_t)disk;
}

uint64_t pd_tiers_slot_bytes(const pd_tiers *t, int tier) {
  return tier == 2 ? record_bytes(&t->cfg) : t->cfg.block_bytes;
}

/* ---- per-node state ------------------------------------------------------------------------ */

static int ensure_state(pd_tiers *t, uint32_t node) {
  if (node < t->cap_state) return PD_OK;
  if (pd_fault_hit(PD_FAULT_ALLOC)) return PD_ENOMEM;
  uint32_t ncap = t->cap_state ? t->cap_state : 1024;
  while (ncap <= node) ncap *= 2;
  uint8_t *s = realloc(t->state, ncap);
  if (!s) return PD_ENOMEM;
  t->state = s;
  uint16_t *p = realloc(t->pending, (size_t)ncap * sizeof *p);
  if (!p) return PD_ENOMEM;
  t->pending = p;
  memset(t->state + t->cap_state, 0, ncap - t->cap_state);
  memset(t->pending + t->cap_state, 0, (size_t)(ncap - t->cap_state) * sizeof *p);
  t->cap_state = ncap;
  return PD_OK;
}

static uint8_t state_of(const pd_tiers *t, uint32_t node) {
  return node < t->cap_state ? t->state[node] : 0;
}

uint32_t pd_tiers_pending(const pd_tiers *t, uint32_t node) {
  return node < t->cap_state ? t->pending[node] : 0;
}

int pd_tiers_is_bad(const pd_tiers *t, uint32_t node) {
  return (state_of(t, node) & ST_BAD) != 0;
}

static void mark_bad(pd_tiers *t, uint32_t node) {
  if (ensure_state(t, node) || (t->state[node] & ST_BAD)) return;
  if (t->n_bad == t->cap_bad) {
    uint32_t ncap = t->cap_bad ? t->cap_bad * 2 : 64;
    uint32_t *b = realloc(t->bad, ncap * sizeof *b);
    if (!b) return; /* it stays in the tree, unmarked: a later read fails again */
    t->bad = b;
    t->cap_bad = ncap;
  }
  t->state[node] |= ST_BAD;
  t->bad[t->n_bad++] = node;
}

/* A host-tier slot's bytes (device-pool blocks are reached through t->cfg.device only). */
static void *host_ptr(pd_tiers *t, uint32_t slot) {
  return t->host + (size_t)slot * t->cfg.block_bytes;
}

/* Engine thread, when no batch could be made: one block between the pool and the host tier,
 * at once. A failed copy (a GPU fault) marks the node bad: its bytes are not served. */
static void move_now(pd_tiers *t, uint32_t node, uint32_t dev_slot, uint32_t host_slot,
                     int to_host) {
  int32_t d = (int32_t)dev_slot, h = (int32_t)host_slot;
  int rc = to_host ? pd_devpool_download(t->cfg.device, &d, 1, t->host, &h)
                   : pd_devpool_upload(t->cfg.device, &d, 1, t->host, &h);
  if (rc) mark_bad(t, node);
}

void *pd_tiers_host_block(pd_tiers *t, uint32_t slot) {
  return host_ptr(t, slot);
}

static int disk_on(const pd_tiers *t) {
  return t->store && !t->disk_disabled && t->caps[2] > 0;
}

int pd_tiers_disk_enabled(const pd_tiers *t, const char **reason) {
  if (reason) *reason = t->disk_disabled ? t->disk_reason : "";
  return disk_on(t);
}

static void disable_disk(pd_tiers *t, int rc) {
  if (t->disk_disabled) return;
  t->disk_disabled = 1;
  snprintf(t->disk_reason, sizeof t->disk_reason, "%s; serving from RAM tiers only",
           pd_strerror(rc));
  pd_log(PD_LOG_ERROR, "disk tier disabled", "reason=\"%s\" dir=%s", pd_strerror(rc),
         t->cfg.disk_dir ? t->cfg.disk_dir : "");
}

/* ---- batches ------------------------------------------------------------------------------- */

static void op_free(tier_op *op) {
  if (!op) return;
  free(op->meta_value);
  free(op->items);
  free(op->tokens);
  free(op);
}

/* Appends an item to this step's batch of kind; tokens (n_tokens) are copied with it. Returns
 * the item (valid until the next add) or NULL when out of memory. */
static tier_item *add_item(pd_tiers *t, int kind, const int32_t *tokens, uint16_t n_tokens) {
  if (pd_fault_hit(PD_FAULT_ALLOC)) return NULL;
  tier_op *op = t->open[kind];
  if (!op) {
    op = calloc(1, sizeof *op);
    if (!op) return NULL;
    op->kind = kind;
    t->open[kind] = op;
  }
  if (op->n == op->cap) {
    uint32_t ncap = op->cap ? op->cap * 2 : 16;
    tier_item *it = realloc(op->items, ncap * sizeof *it);
    if (!it) return NULL;
    op->items = it;
    op->cap = ncap;
  }
  if (op->n_tok + n_tokens > op->cap_tok) {
    uint32_t ncap = op->cap_tok ? op->cap_tok : 256;
    while (ncap < op->n_tok + n_tokens) ncap *= 2;
    int32_t *tk = realloc(op->tokens, ncap * sizeof *tk);
    if (!tk) return NULL;
    op->tokens = tk;
    op->cap_tok = ncap;
  }
  tier_item *it = &op->items[op->n++];
  memset(it, 0, sizeof *it);
  it->node = NIL;
  it->free_tier = -1;
  it->from_tier = -1;
  it->dev_slot = it->host_slot = -1;
  it->tok_off = op->n_tok;
  it->n_tokens = n_tokens;
  if (n_tokens) memcpy(op->tokens + op->n_tok, tokens, 4u * n_tokens);
  op->n_tok += n_tokens;
  t->in_flight++;
  return it;
}

/* Holds node for an item: a tree reference, and for a restore (bytes on their way into the
 * node's slot) a pending count that readers wait for. */
static void hold_node(pd_tiers *t, tier_item *it, uint32_t node, int restore) {
  it->node = node;
  it->restore = (int8_t)restore;
  if (restore && ensure_state(t, node) == PD_OK) t->pending[node]++;
  it->hold = pd_radix_hold(t->tree, node) == PD_OK;
}

static const int32_t *node_tokens(const pd_tiers *t, uint32_t node) {
  return t->tree->tokens + (size_t)node * t->tree->cfg.block_tokens;
}

static void queue_delete(pd_tiers *t, pd_key128 key) {
  tier_item *it = add_item(t, OP_DELETE, NULL, 0);
  if (!it) return;
  it->key = key;
  if (t->n_records) t->n_records--;
}

/* Queues a write of node's block (in tier 0 or 1, or just placed in tier 2 with its bytes still
 * in from_slot of from_tier). */
static int queue_write(pd_tiers *t, uint32_t node, int from_tier, uint32_t from_slot,
                       int demotion) {
  if (ensure_state(t, node)) return PD_ENOMEM; /* before anything is queued */
  const pd_node *nd = pd_radix_node(t->tree, node);
  tier_item *it = add_item(t, OP_WRITE, node_tokens(t, node), nd->n_tokens);
  if (!it) return PD_ENOMEM;
  nd = pd_radix_node(t->tree, node);
  it->key = nd->key;
  it->parent = pd_radix_node(t->tree, nd->parent)->key;
  it->ns = nd->ns;
  if (from_tier == 0)
    it->dev_slot = (int32_t)from_slot;
  else
    it->host_slot = (int32_t)from_slot;
  it->from_tier = (int8_t)from_tier;
  it->demotion = (int8_t)demotion;
  hold_node(t, it, node, 0);
  t->state[node] |= ST_WRITING;
  t->n_records++;
  return PD_OK;
}

static void queue_op(pd_tiers *t, tier_op *op) {
  pthread_mutex_lock(&t->mu);
  op->next = NULL;
  if (t->queue_tail)
    t->queue_tail->next = op;
  else
    t->queue_head = op;
  t->queue_tail = op;
  pthread_cond_signal(&t->cv);
  pthread_mutex_unlock(&t->mu);
}

void pd_tiers_flush(pd_tiers *t) {
  for (int k = 0; k < OP_KINDS; k++) {
    tier_op *op = t->open[k];
    t->open[k] = NULL;
    if (!op) continue;
    if (op->n == 0) {
      op_free(op);
      continue;
    }
    queue_op(t, op);
  }
}

int pd_tiers_put_meta(pd_tiers *t, const char *name, uint8_t *value, size_t len) {
  if (!t->store || t->disk_disabled) {
    free(value);
    return PD_ENOTFOUND;
  }
  tier_op *op = strlen(name) < sizeof op->meta_name ? calloc(1, sizeof *op) : NULL;
  if (!op) {
    free(value);
    return PD_ENOMEM;
  }
  op->kind = OP_META;
  strcpy(op->meta_name, name);
  op->meta_value = value;
  op->meta_len = len;
  pd_tiers_flush(t); /* this step's transfers go first */
  t->in_flight++;
  queue_op(t, op);
  return PD_OK;
}

int pd_tiers_get_meta(pd_tiers *t, const char *name, void *buf, size_t cap, size_t *len) {
  if (!t->store) return PD_ENOTFOUND;
  return pd_kvstore_meta_get(t->store, name, buf, cap, len);
}

uint32_t pd_tiers_in_flight(const pd_tiers *t) {
  return t->in_flight;
}

/* ---- the worker ---------------------------------------------------------------------------- */

/* Worker: room for n staging blocks (grown, never shrunk). */
static int ensure_stage(pd_tiers *t, uint32_t n) {
  if (n <= t->cap_stage) return PD_OK;
  uint8_t *stage = pd_devpool_host_alloc(t->cfg.device, (size_t)n * t->cfg.block_bytes);
  int32_t *ids = malloc((size_t)n * sizeof *ids);
  if (!stage || !ids) {
    pd_devpool_host_free(t->cfg.device, stage);
    free(ids);
    return PD_ENOMEM;
  }
  pd_devpool_host_free(t->cfg.device, t->stage);
  free(t->stage_ids);
  t->stage = stage;
  t->stage_ids = ids;
  t->cap_stage = n;
  for (uint32_t i = 0; i < n; i++) ids[i] = (int32_t)i;
  return PD_OK;
}

/* Worker: the copies between the pool and the host tier, batched by direction. */
static void run_copies(pd_tiers *t, tier_op *op) {
  int32_t *dev = malloc(2 * (size_t)op->n * sizeof *dev);
  if (!dev) {
    op->rc = PD_ENOMEM;
    return;
  }
  int32_t *host = dev + op->n;
  for (int to_host = 1; to_host >= 0; to_host--) {
    uint32_t n = 0;
    for (uint32_t i = 0; i < op->n; i++)
      if ((op->items[i].from_tier == 0) == to_host)
        dev[n] = op->items[i].dev_slot, host[n] = op->items[i].host_slot, n++;
    if (!n) continue;
    int rc = to_host ? pd_devpool_download(t->cfg.device, dev, n, t->host, host)
                     : pd_devpool_upload(t->cfg.device, dev, n, t->host, host);
    for (uint32_t i = 0; i < op->n; i++)
      if ((op->items[i].from_tier == 0) == to_host) op->items[i].rc = rc;
    if (rc && !op->rc) op->rc = rc;
    if (!rc) op->bytes += (uint64_t)n * t->cfg.block_bytes;
  }
  free(dev);
}

/* Worker: writes items [first, first + n) of a write batch in one transaction. Blocks in a GPU
 * pool are downloaded into the staging buffer first; others are read where they are. */
static int write_records(pd_tiers *t, tier_op *op, pd_kvstore_block *b, uint32_t first,
                         uint32_t n) {
  size_t bb = t->cfg.block_bytes;
  const pd_devpool *dev = t->cfg.device;
  int staged = dev->kind != PD_DEVPOOL_CPU;
  int32_t *dev_slots = NULL; /* the n_stage blocks go to staging slots 0 .. n_stage - 1 */
  uint32_t n_stage = 0;
  if (staged && (ensure_stage(t, n) || !(dev_slots = malloc((size_t)n * sizeof *dev_slots))))
    return PD_ENOMEM;
  for (uint32_t i = first; i < first + n; i++) {
    const tier_item *it = &op->items[i];
    const void *payload;
    if (it->dev_slot < 0) {
      payload = host_ptr(t, (uint32_t)it->host_slot);
    } else if (!staged) {
      payload = pd_devpool_block(dev, (uint32_t)it->dev_slot);
    } else {
      payload = t->stage + (size_t)n_stage * bb;
      dev_slots[n_stage++] = it->dev_slot;
    }
    b[i] = (pd_kvstore_block){.key = it->key,
                              .parent = it->parent,
                              .namespace_id = it->ns,
                              .block_tokens = (uint16_t)t->cfg.block_tokens,
                              .dtype = t->cfg.dtype,
                              .tokens = op->tokens + it->tok_off,
                              .n_tokens = it->n_tokens,
                              .payload = payload,
                              .payload_bytes = (uint32_t)bb};
  }
  int rc = n_stage ? pd_devpool_download(t->cfg.device, dev_slots, n_stage, t->stage, t->stage_ids)
                   : PD_OK;
  free(dev_slots);
  return rc ? rc : pd_kvstore_put_batch(t->store, b + first, n);
}

/* Worker: reads a batch of records into their device-pool blocks (through the staging buffer
 * for a GPU pool). */
static void read_records(pd_tiers *t, tier_op *op) {
  size_t bb = t->cfg.block_bytes;
  const pd_devpool *dev = t->cfg.device;
  int staged = dev->kind != PD_DEVPOOL_CPU;
  int32_t *dev_slots = NULL, *stage_slots = NULL;
  size_t bt = t->cfg.block_tokens;
  /* reads[i] and tokens[i * bt]: item i's read and the tokens stored with it */
  pd_kvstore_read *reads = calloc(op->n, sizeof *reads);
  int32_t *tokens = malloc((size_t)op->n * bt * sizeof *tokens);
  if (!reads || !tokens ||
      (staged &&
       (ensure_stage(t, op->n) || !(dev_slots = malloc(2 * (size_t)op->n * sizeof *dev_slots))))) {
    op->rc = PD_ENOMEM;
    for (uint32_t i = 0; i < op->n; i++) op->items[i].rc = PD_ENOMEM;
    free(reads);
    free(tokens);
    return;
  }
  if (staged) stage_slots = dev_slots + op->n;
  for (uint32_t i = 0; i < op->n; i++) {
    tier_item *it = &op->items[i];
    void *dst = staged ? t->stage + (size_t)i * bb : pd_devpool_block(dev, (uint32_t)it->dev_slot);
    reads[i] = (pd_kvstore_read){.key = it->key,
                                 .tokens = tokens + i * bt,
                                 .max_tokens = bt,
                                 .payload = dst,
                                 .payload_cap = bb};
  }
  int brc = pd_kvstore_get_batch(t->store, reads, op->n);
  uint32_t n_up = 0;
  for (uint32_t i = 0; i < op->n; i++) {
    tier_item *it = &op->items[i];
    const pd_kvstore_hdr *h = &reads[i].hdr;
    it->rc = brc ? brc : reads[i].rc;
    if (it->rc == PD_OK &&
        (h->n_tokens != it->n_tokens || h->payload_bytes != bb ||
         memcmp(reads[i].tokens, op->tokens + it->tok_off, 4u * it->n_tokens) != 0))
      it->rc = PD_ECORRUPT; /* another block under this key: never served */
    if (it->rc == PD_OK && staged)
      dev_slots[n_up] = it->dev_slot, stage_slots[n_up] = (int32_t)i, n_up++;
    if (it->rc == PD_OK) op->bytes += bb;
  }
  int urc = n_up ? pd_devpool_upload(t->cfg.device, dev_slots, n_up, t->stage, stage_slots) : 0;
  if (urc != PD_OK)
    for (uint32_t i = 0; i < op->n; i++)
      if (op->items[i].rc == PD_OK) op->items[i].rc = urc;
  free(dev_slots);
  free(reads);
  free(tokens);
}

static void run_op(pd_tiers *t, tier_op *op) {
  double t0 = now_s();
  size_t bb = t->cfg.block_bytes;
  op->rc = PD_OK;
  op->bytes = 0;
  switch (op->kind) {
  case OP_COPY: run_copies(t, op); break;
  case OP_WRITE: {
    pd_kvstore_block *b = calloc(op->n, sizeof *b);
    if (!b) {
      op->rc = PD_ENOMEM;
      for (uint32_t i = 0; i < op->n; i++) op->items[i].rc = PD_ENOMEM;
      break;
    }
    op->bytes = (uint64_t)op->n * bb;
    /* one store batch per 256 MiB: it bounds the staging buffer of a GPU pool, and each batch
     * costs one fdatasync of blocks.dat and one index commit */
    uint32_t per_txn = (uint32_t)((256u << 20) / bb);
    if (per_txn < 1) per_txn = 1;
    for (uint32_t i = 0; i < op->n; i += per_txn) {
      uint32_t n = op->n - i < per_txn ? op->n - i : per_txn;
      int rc = op->rc == PD_OK ? write_records(t, op, b, i, n) : op->rc;
      for (uint32_t j = i; j < i + n; j++) op->items[j].rc = rc;
      if (rc != PD_OK && op->rc == PD_OK) op->rc = rc;
    }
    free(b);
    break;
  }
  case OP_READ: read_records(t, op); break;
  case OP_DELETE: {
    pd_key128 *keys = malloc((size_t)op->n * sizeof *keys);
    if (!keys) {
      op->rc = PD_ENOMEM;
      break;
    }
    for (uint32_t i = 0; i < op->n; i++) keys[i] = op->items[i].key;
    op->rc = pd_kvstore_delete_batch(t->store, keys, op->n, NULL);
    free(keys);
    break;
  }
  case OP_META: op->rc = pd_kvstore_meta_put(t->store, op->meta_name, op->meta_value, op->meta_len);
  }
  op->seconds = now_s() - t0;
}

static void *worker_main(void *arg) {
  pd_tiers *t = arg;
  double last_check = now_s();
  pthread_mutex_lock(&t->mu);
  for (;;) {
    while (!t->stop && !t->queue_head) {
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      ts.tv_sec += 10;
      pthread_cond_timedwait(&t->cv, &t->mu, &ts);
      if (t->store && now_s() - last_check > 60) { /* readers left by dead processes */
        pthread_mutex_unlock(&t->mu);
        int n = 0;
        pd_kvstore_reader_check(t->store, &n);
        last_check = now_s();
        pthread_mutex_lock(&t->mu);
      }
    }
    if (!t->queue_head) break; /* stop, and nothing left */
    tier_op *op = t->queue_head;
    t->queue_head = op->next;
    if (!t->queue_head) t->queue_tail = NULL;
    t->busy = 1;
    pthread_mutex_unlock(&t->mu);
    run_op(t, op);
    pd_kvstore_counters c;
    uint64_t blocks = 0, used = 0, map = 0;
    if (t->store) {
      pd_kvstore_get_counters(t->store, &c);
      pd_kvstore_usage(t->store, &blocks, &used, &map);
    }
    pthread_mutex_lock(&t->mu);
    if (t->store) {
      t->store_counters = c;
      t->store_blocks = blocks;
      t->store_used = used;
      t->store_map = map;
    }
    op->next = NULL;
    if (t->done_tail)
      t->done_tail->next = op;
    else
      t->done_head = op;
    t->done_tail = op;
    t->busy = 0;
    atomic_store(&t->has_done, 1);
    pthread_cond_broadcast(&t->idle_cv);
    pthread_mutex_unlock(&t->mu);
    if (t->cfg.wake) t->cfg.wake(t->cfg.wake_arg);
    pthread_mutex_lock(&t->mu);
  }
  pthread_mutex_unlock(&t->mu);
  return NULL;
}

int pd_tiers_has_completions(pd_tiers *t) {
  return atomic_load(&t->has_done);
}

/* ---- dropping ------------------------------------------------------------------------------ */

/* 1 if nothing in node's subtree is referenced or pinned (pd_radix_drop's condition). */
static int subtree_free(const pd_tiers *t, uint32_t node) {
  const pd_node *nd = pd_radix_node(t->tree, node);
  if (nd->refcount || nd->pin_count) return 0;
  for (uint32_t c = nd->first_child; c != NIL; c = pd_radix_node(t->tree, c)->next_sibling)
    if (!subtree_free(t, c)) return 0;
  return 1;
}

/* pd_radix_drop reports only nodes that held a slot; a detached node dropped with its subtree
 * may have had a record. Walks the subtree first to catch those. */
static void forget_detached_records(pd_tiers *t, uint32_t node) {
  const pd_node *nd = pd_radix_node(t->tree, node);
  if (nd->tier == PD_TIER_NONE) {
    if (state_of(t, node) & ST_ON_DISK) queue_delete(t, nd->key);
    if (node < t->cap_state) t->state[node] = 0;
  }
  for (uint32_t c = nd->first_child; c != NIL; c = pd_radix_node(t->tree, c)->next_sibling)
    forget_detached_records(t, c);
}

int pd_tiers_drop(pd_tiers *t, uint32_t node, uint64_t counts[PD_TIERS]) {
  if (node >= t->tree->cap_nodes || !(pd_radix_node(t->tree, node)->flags & PD_NODE_USED))
    return PD_EINVAL;
  if (!subtree_free(t, node)) return PD_EBUSY;
  forget_detached_records(t, node);
  for (;;) {
    uint32_t n = 0;
    int rc = pd_radix_drop(t->tree, node, t->scratch, t->cap_scratch, &n);
    if (rc == PD_EFULL) {
      uint32_t ncap = t->cap_scratch ? t->cap_scratch * 4 : 256;
      pd_evicted *s = realloc(t->scratch, ncap * sizeof *s);
      if (!s) return PD_ENOMEM;
      t->scratch = s;
      t->cap_scratch = ncap;
      continue;
    }
    if (rc) return rc;
    for (uint32_t i = 0; i < n; i++) {
      const pd_evicted *ev = &t->scratch[i];
      if (ev->tier < PD_TIERS) {
        t->counters.dropped[ev->tier]++;
        if (counts) counts[ev->tier]++;
      }
    }
    /* every node of the subtree is gone (also detached ones, which the tree does not report):
     * forget their records. The ids are free now but not reused before we return. */
    for (uint32_t i = 0; i < n; i++) {
      uint32_t id = t->scratch[i].node;
      if (state_of(t, id) & ST_ON_DISK) queue_delete(t, t->scratch[i].key);
      if (id < t->cap_state) t->state[id] = 0;
    }
    return PD_OK;
  }
}

int pd_tiers_forget_disk_copy(pd_tiers *t, uint32_t node) {
  uint8_t st = state_of(t, node);
  const pd_node *nd = pd_radix_node(t->tree, node);
  if (!(st & ST_ON_DISK) || (st & ST_WRITING) || nd->tier >= 2 || pd_tiers_pending(t, node))
    return 0;
  queue_delete(t, nd->key);
  t->state[node] &= (uint8_t)~ST_ON_DISK;
  return 1;
}

/* ---- demotion ------------------------------------------------------------------------------ */

static int next_tier(const pd_tiers *t, int tier) {
  for (int n = tier + 1; n < PD_TIERS; n++)
    if (t->caps[n] > 0 && (n < 2 || disk_on(t))) return n;
  return -1;
}

/* Whether a block leaving the host tier goes to disk (or is dropped). */
static int worth_disk(const pd_tiers *t, uint32_t node) {
  uint8_t st = state_of(t, node);
  const pd_node *nd = pd_radix_node(t->tree, node);
  if (st & (ST_ON_DISK | ST_KEEP)) return 1;
  if (nd->first_child != NIL) return 1; /* its colder children need it */
  switch (t->cfg.write_filter) {
  case PD_WRITE_ALWAYS: return 1;
  case PD_WRITE_SECOND_USE: return nd->hits >= 1;
  case PD_WRITE_PINNED: return 0;
  }
  return 0;
}

/* Slots of tier in use, not counting those that transfers in flight will give back. */
static uint32_t used_after_transfers(const pd_tiers *t, int tier) {
  uint32_t used = pd_radix_tier_used(t->tree, tier);
  return used > t->freeing[tier] ? used - t->freeing[tier] : 0;
}

/* Free room in tier once the transfers in flight land: pool slots, or for the disk tier,
 * records. */
static uint32_t free_room(const pd_tiers *t, int tier) {
  if (tier == 2) {
    uint64_t used = pd_radix_tier_used(t->tree, 2);
    if (t->n_records > used) used = t->n_records;
    return used >= t->caps[2] ? 0 : (uint32_t)(t->caps[2] - used);
  }
  return t->caps[tier] - used_after_transfers(t, tier);
}

/* Puts a victim back where it was, with its kept slot (the disk tier's slots are bookkeeping
 * only: a new one will do). */
static void put_back(pd_tiers *t, const pd_evicted *ev) {
  uint32_t slot;
  if (ev->tier < 2) {
    if (pd_radix_place(t->tree, ev->node, ev->tier, ev->slot) == PD_OK) return;
    pd_radix_free_slot(t->tree, ev->tier, ev->slot);
  } else if (pd_radix_alloc_slot(t->tree, 2, &slot) == PD_OK) {
    if (pd_radix_place(t->tree, ev->node, 2, slot) == PD_OK) return;
    pd_radix_free_slot(t->tree, 2, slot);
  }
  /* its parent moved colder meanwhile: it may only follow, or go */
  if (pd_tiers_drop(t, ev->node, NULL) == PD_OK) {
    t->counters.dropped[ev->tier]++;
    return;
  }
  pd_log(PD_LOG_ERROR, "tier manager: a victim could be neither moved nor kept", "node=%u",
         ev->node);
}

/* Places one victim (detached, its old slot kept in ev->slot) one tier colder; or drops it when
 * there is no colder tier or the write filter says it is not worth the disk; or, when the colder
 * tier has no room yet (its own spills are in flight), puts it back: nothing is lost for want of
 * a free slot. */
static void settle_victim(pd_tiers *t, const pd_evicted *ev, int next, uint64_t counts[PD_TIERS]) {
  uint32_t node = ev->node, slot;
  int from = ev->tier;
  const pd_node *cur = pd_radix_node(t->tree, node);
  if (!(cur->flags & PD_NODE_USED) || cur->tier != PD_TIER_NONE) {
    /* it went with a parent victim dropped before it */
    if (from < 2) pd_radix_free_slot(t->tree, from, ev->slot);
    return;
  }
  if (next == 2 && !worth_disk(t, node)) {
    t->counters.write_filtered++;
    next = -1;
  }
  if (next >= 0) {
    int on_disk = (state_of(t, node) & ST_ON_DISK) != 0;
    if ((next == 2 && !on_disk && free_room(t, 2) == 0) ||
        pd_radix_alloc_slot(t->tree, next, &slot) != PD_OK) {
      put_back(t, ev);
      return;
    }
    if (pd_radix_place(t->tree, node, next, slot) != PD_OK) {
      pd_radix_free_slot(t->tree, next, slot);
      put_back(t, ev);
      return;
    }
    t->counters.demoted[next]++;
    if (counts) counts[from]++;
    if (next == 2 && on_disk) { /* a record exists already: no I/O */
      pd_radix_free_slot(t->tree, from, ev->slot);
      return;
    }
    tier_item *it = NULL;
    if (next == 1) {
      it = add_item(t, OP_COPY, NULL, 0);
      if (it) { /* from the device pool (the only tier above the host one) */
        it->dev_slot = (int32_t)ev->slot;
        it->host_slot = (int32_t)slot;
        it->from_tier = (int8_t)from;
        hold_node(t, it, node, 0);
      }
    } else if (queue_write(t, node, from, ev->slot, 1) == PD_OK) {
      it = &t->open[OP_WRITE]->items[t->open[OP_WRITE]->n - 1];
    }
    if (!it) { /* out of memory for the batch */
      if (next == 1) move_now(t, node, ev->slot, slot, 1);
      pd_radix_free_slot(t->tree, from, ev->slot);
      if (next == 2) mark_bad(t, node); /* in the disk tier without a record */
      return;
    }
    it->free_tier = (int8_t)from; /* the old slot is read by the transfer: kept till it lands */
    it->free_slot = ev->slot;
    t->freeing[from]++;
    t->counters.spill_bytes += t->cfg.block_bytes;
    return;
  }
  /* dropped (a detached node holds no slot: the kept one is given back after) */
  if (pd_tiers_drop(t, node, NULL) == PD_OK) {
    if (from < 2) pd_radix_free_slot(t->tree, from, ev->slot);
    t->counters.dropped[from]++;
    if (counts) counts[from]++;
    return;
  }
  put_back(t, ev); /* something below it is held */
}

/* Demotes (or drops) up to want LRU frontier blocks of tier charged to tenant (-1: anyone). */
static uint32_t demote(pd_tiers *t, int tier, int32_t tenant, uint32_t want, uint64_t now,
                       uint64_t counts[PD_TIERS]) {
  int next = next_tier(t, tier);
  if (next >= 0 && t->depth < PD_TIERS) {
    uint32_t room = free_room(t, next);
    if (room < want) {
      t->depth++;
      pd_tiers_make_room(t, next, want - room, now);
      t->depth--;
    }
  }
  uint32_t done = 0;
  pd_evicted ev[64];
  while (done < want) {
    uint32_t n = 0, ask = want - done < 64 ? want - done : 64;
    if (next >= 0) { /* no more victims than the colder tier can take now */
      uint32_t now_free = t->tree->pool[next].n_free;
      if (next == 2 && free_room(t, 2) < now_free) now_free = free_room(t, 2);
      if (now_free < ask) ask = now_free;
      if (ask == 0) break; /* its room is on its way: pd_tiers_sync, then again */
    }
    uint32_t used_before = used_after_transfers(t, tier);
    /* tier 0/1 slots are kept until their bytes are copied; disk slots are only bookkeeping */
    pd_radix_evict_ex(t->tree, tier, tenant, ask, now, tier < 2 ? PD_EVICT_KEEP_SLOTS : 0, ev, &n);
    if (n == 0) break;
    for (uint32_t i = n; i-- > 0;) settle_victim(t, &ev[i], next, counts); /* parents first */
    uint32_t used_after = used_after_transfers(t, tier);
    if (used_after >= used_before) break; /* everything went back: nothing more may leave */
    done += used_before - used_after;
  }
  return done;
}

int pd_tiers_make_room(pd_tiers *t, int tier, uint32_t n, uint64_t now) {
  if (tier < 0 || tier >= PD_TIERS || t->caps[tier] == 0) return PD_EFULL;
  uint32_t room = free_room(t, tier);
  if (room >= n) return PD_OK;
  demote(t, tier, -1, n - room, now, NULL);
  return free_room(t, tier) >= n ? PD_OK : PD_EFULL;
}

/* ---- eviction on request ------------------------------------------------------------------- */

int pd_tiers_evict(pd_tiers *t, int tier, int32_t tenant, uint64_t now, uint64_t counts[PD_TIERS]) {
  for (;;) {
    uint32_t before = used_after_transfers(t, tier);
    uint32_t n = demote(t, tier, tenant, 256, now, counts);
    if (n == 0 || used_after_transfers(t, tier) >= before) break;
  }
  return PD_OK;
}

/* ---- write-through ------------------------------------------------------------------------- */

static void write_through(pd_tiers *t, uint32_t node) {
  if (!disk_on(t) || ensure_state(t, node)) return;
  const pd_node *nd = pd_radix_node(t->tree, node);
  if ((t->state[node] & (ST_ON_DISK | ST_WRITING | ST_BAD)) || nd->tier > 1) return;
  if (pd_tiers_pending(t, node)) return; /* its bytes are on their way: next time */
  if (free_room(t, 2) == 0 && pd_tiers_make_room(t, 2, 1, t->now) != PD_OK) return;
  nd = pd_radix_node(t->tree, node);
  if (queue_write(t, node, nd->tier, nd->slot, 0) == PD_OK) t->counters.write_through++;
}

void pd_tiers_note_use(pd_tiers *t, uint32_t node) {
  if (t->cfg.write_filter == PD_WRITE_SECOND_USE || t->cfg.write_filter == PD_WRITE_ALWAYS)
    write_through(t, node);
}

void pd_tiers_note_insert(pd_tiers *t, uint32_t node) {
  if (t->cfg.write_filter == PD_WRITE_ALWAYS) write_through(t, node);
}

void pd_tiers_keep(pd_tiers *t, uint32_t node) {
  /* ancestors first, so parents' records are written (and rebuilt) before children's */
  uint32_t path[4096];
  uint32_t n = 0;
  for (uint32_t id = node; pd_radix_node(t->tree, id)->tier != PD_TIER_ROOT && n < 4096;
       id = pd_radix_node(t->tree, id)->parent)
    path[n++] = id;
  while (n-- > 0) {
    if (ensure_state(t, path[n])) return;
    t->state[path[n]] |= ST_KEEP;
    write_through(t, path[n]);
  }
}

/* ---- restore ------------------------------------------------------------------------------- */

void pd_tiers_note_prefill(pd_tiers *t, uint64_t tokens, double seconds) {
  if (tokens < 8 || seconds <= 0) return;
  double tps = (double)tokens / seconds;
  t->prefill_tps = t->prefill_tps > 0 ? 0.8 * t->prefill_tps + 0.2 * tps : tps;
}

/* Seconds to bring n blocks back from tier (one batch: a fixed hand-off cost, then bytes). */
static double restore_cost(const pd_tiers *t, int tier, uint32_t n) {
  double rate = t->counters.rate_bps[tier];
  if (rate <= 0) rate = tier == 1 ? 4e9 : 5e8; /* until measured */
  return 200e-6 + (double)n * (double)t->cfg.block_bytes / rate;
}

uint32_t pd_tiers_plan_restore(pd_tiers *t, const uint32_t *nodes, uint32_t n) {
  uint32_t n_host = 0, n_disk = 0;
  while (n_host < n && pd_radix_node(t->tree, nodes[n_host])->tier == 1 &&
         !pd_tiers_is_bad(t, nodes[n_host]))
    n_host++;
  while (n_host + n_disk < n && pd_radix_node(t->tree, nodes[n_host + n_disk])->tier == 2 &&
         !pd_tiers_is_bad(t, nodes[n_host + n_disk]) && disk_on(t))
    n_disk++;
  if (n_host + n_disk == 0) return 0;
  double tps = t->prefill_tps > 0 ? t->prefill_tps : 100.0;
  double per_block = (double)t->cfg.block_tokens / tps;
  uint32_t take = 0;
  if (n_host && restore_cost(t, 1, n_host) < per_block * n_host) take = n_host;
  if (take == n_host && n_disk && restore_cost(t, 2, n_disk) < per_block * n_disk) take += n_disk;
  if (take)
    t->counters.restore_chosen++;
  else
    t->counters.recompute_chosen++;
  return take;
}

int pd_tiers_alloc_slot(pd_tiers *t, int tier, uint32_t batch, uint64_t now, uint32_t *slot) {
  for (int tries = 0; tries < 3; tries++) {
    if (pd_radix_alloc_slot(t->tree, tier, slot) == PD_OK) return PD_OK;
    pd_tiers_make_room(t, tier, batch ? batch : 1, now);
    if (pd_radix_alloc_slot(t->tree, tier, slot) == PD_OK) return PD_OK;
    /* the room is on its way (spills in flight), or blocks held by transfers (writes to disk)
     * may go once those land */
    if (t->in_flight == 0) return PD_EFULL;
    pd_tiers_sync(t);
  }
  return PD_EFULL;
}

int pd_tiers_restore(pd_tiers *t, uint32_t node, uint64_t now, uint32_t *device_slot) {
  const pd_node *nd = pd_radix_node(t->tree, node);
  int from = nd->tier;
  if (from != 1 && from != 2) return PD_EINVAL;
  if (from == 2 && !disk_on(t)) return PD_EUNSUPPORTED;
  if (ensure_state(t, node)) return PD_ENOMEM; /* its pending count must exist */
  uint32_t slot;
  if (pd_tiers_alloc_slot(t, 0, 1, now, &slot) != PD_OK) return PD_EFULL;
  if (pd_radix_node(t->tree, node)->tier != from) { /* cannot happen to a held node */
    pd_radix_free_slot(t->tree, 0, slot);
    return PD_EBUSY;
  }
  int old_tier;
  uint32_t old_slot;
  int rc = pd_radix_move(t->tree, node, 0, slot, &old_tier, &old_slot);
  if (rc) {
    pd_radix_free_slot(t->tree, 0, slot);
    return rc;
  }
  nd = pd_radix_node(t->tree, node);
  tier_item *it = add_item(t, from == 1 ? OP_COPY : OP_READ,
                           from == 2 ? node_tokens(t, node) : NULL, from == 2 ? nd->n_tokens : 0);
  if (!it) { /* no batch: do it here */
    if (from == 1) {
      move_now(t, node, slot, old_slot, 0);
      pd_radix_free_slot(t->tree, 1, old_slot);
    } else {
      pd_radix_free_slot(t->tree, 2, old_slot);
      mark_bad(t, node);
    }
    *device_slot = slot;
    return PD_OK;
  }
  it->dev_slot = (int32_t)slot;
  it->from_tier = (int8_t)from;
  it->key = nd->key;
  if (from == 1) {
    it->host_slot = (int32_t)old_slot;
    it->free_tier = 1;
    it->free_slot = old_slot;
    t->freeing[1]++;
  } else {
    pd_radix_free_slot(t->tree, 2, old_slot); /* the record stays: the node keeps its copy */
  }
  hold_node(t, it, node, 1);
  t->counters.restored[from]++;
  t->counters.restore_bytes += t->cfg.block_bytes;
  *device_slot = slot;
  return PD_OK;
}

/* ---- completions --------------------------------------------------------------------------- */

static void finish_item(pd_tiers *t, tier_item *it) {
  if (it->free_tier >= 0) {
    pd_radix_free_slot(t->tree, it->free_tier, it->free_slot);
    if (t->freeing[it->free_tier]) t->freeing[it->free_tier]--;
  }
  if (it->node != NIL) {
    if (it->restore && it->node < t->cap_state && t->pending[it->node]) t->pending[it->node]--;
    if (it->hold) pd_radix_unhold(t->tree, it->node);
  }
  if (t->in_flight) t->in_flight--;
}

static void note_rate(pd_tiers *t, int tier, const tier_op *op) {
  if (tier < 1 || tier >= PD_TIERS || op->bytes < (1u << 16) || op->seconds <= 0) return;
  double r = (double)op->bytes / op->seconds;
  double *avg = &t->counters.rate_bps[tier];
  *avg = *avg > 0 ? 0.7 * *avg + 0.3 * r : r;
}

static void apply_op(pd_tiers *t, tier_op *op, uint64_t now) {
  t->counters.batches++;
  switch (op->kind) {
  case OP_COPY:
    note_rate(t, 1, op);
    for (uint32_t i = 0; i < op->n; i++) {
      if (op->items[i].rc != PD_OK) mark_bad(t, op->items[i].node); /* never served */
      finish_item(t, &op->items[i]);
    }
    break;
  case OP_READ:
    t->counters.disk_read_seconds += op->seconds;
    note_rate(t, 2, op);
    for (uint32_t i = 0; i < op->n; i++) {
      tier_item *it = &op->items[i];
      t->counters.disk_reads++;
      if (it->rc != PD_OK) {
        t->counters.read_failures++;
        if (it->node < t->cap_state) t->state[it->node] &= (uint8_t)~ST_ON_DISK;
        mark_bad(t, it->node);
        if (it->rc == PD_EIO) disable_disk(t, it->rc);
      }
      finish_item(t, it);
    }
    break;
  case OP_WRITE:
    t->counters.disk_write_seconds += op->seconds;
    if (op->rc == PD_EFULL && op->retries < 2 && !t->disk_disabled) {
      /* the map is full: evict the disk LRU for as many blocks, then try again */
      t->counters.map_full_retries++;
      t->depth++;
      demote(t, 2, -1, op->n * 2, now, NULL);
      t->depth--;
      pd_tiers_flush(t); /* the deletes go first */
      op->retries++;
      queue_op(t, op);
      return; /* op is queued again: not freed */
    }
    if (op->rc == PD_ENOSPC || op->rc == PD_EIO) disable_disk(t, op->rc);
    for (uint32_t i = 0; i < op->n; i++) {
      tier_item *it = &op->items[i];
      if (it->node < t->cap_state) {
        t->state[it->node] &= (uint8_t)~ST_WRITING;
        if (it->rc == PD_OK) t->state[it->node] |= ST_ON_DISK;
      }
      if (it->rc == PD_OK) {
        t->counters.disk_writes++;
        t->counters.disk_write_bytes += t->cfg.block_bytes;
      } else {
        if (t->n_records) t->n_records--;
        if (it->demotion) mark_bad(t, it->node); /* in the disk tier without a record */
      }
      finish_item(t, it);
    }
    break;
  case OP_DELETE:
    t->counters.disk_deletes += op->n;
    for (uint32_t i = 0; i < op->n; i++) finish_item(t, &op->items[i]);
    break;
  case OP_META:
    if (t->in_flight) t->in_flight--;
    if (op->rc == PD_ENOSPC || op->rc == PD_EIO) disable_disk(t, op->rc);
    if (op->rc == PD_OK) t->counters.meta_writes++;
    if (op->rc)
      pd_log(PD_LOG_WARN, "cannot store metadata", "name=%s error=\"%s\"", op->meta_name,
             pd_strerror(op->rc));
    break;
  }
  op_free(op);
}

static void unpin_subtree(pd_tiers *t, uint32_t node) {
  for (uint32_t c = pd_radix_node(t->tree, node)->first_child; c != NIL;
       c = pd_radix_node(t->tree, c)->next_sibling)
    unpin_subtree(t, c);
  while (pd_radix_node(t->tree, node)->own_pins > 0 && pd_radix_unpin(t->tree, node) == PD_OK) {
  }
}

/* Drops bad blocks that nobody holds (their pins go: a pin cannot keep a block we can't read). */
static void drop_bad(pd_tiers *t) {
  uint32_t kept = 0;
  for (uint32_t i = 0; i < t->n_bad; i++) {
    uint32_t node = t->bad[i];
    if (!(state_of(t, node) & ST_BAD)) continue; /* already gone */
    unpin_subtree(t, node);
    const pd_node *nd = pd_radix_node(t->tree, node);
    if (nd->refcount || pd_tiers_pending(t, node) || pd_tiers_drop(t, node, NULL) != PD_OK)
      t->bad[kept++] = node;
  }
  t->n_bad = kept;
}

uint32_t pd_tiers_poll(pd_tiers *t, uint64_t now) {
  t->now = now;
  if (!atomic_load(&t->has_done) && t->n_bad == 0) return 0;
  pthread_mutex_lock(&t->mu);
  tier_op *done = t->done_head;
  t->done_head = t->done_tail = NULL;
  atomic_store(&t->has_done, 0);
  pthread_mutex_unlock(&t->mu);
  uint32_t n = 0;
  for (tier_op *op = done, *next; op; op = next) {
    next = op->next;
    n += op->n;
    apply_op(t, op, now);
  }
  if (t->n_bad) drop_bad(t);
  return n;
}

/* ---- life ---------------------------------------------------------------------------------- */

int pd_tiers_open(const pd_tiers_config *cfg, pd_radix *tree, pd_tiers **out, char *err,
                  size_t errlen) {
  pd_tiers *t = calloc(1, sizeof *t);
  if (!t) return PD_ENOMEM;
  t->cfg = *cfg;
  t->tree = tree;
  for (int i = 0; i < PD_TIERS; i++) t->caps[i] = tree->cfg.tier_capacity[i];
  int rc = PD_OK;
  if (t->caps[1]) {
    t->host = pd_devpool_host_alloc(cfg->device, (size_t)t->caps[1] * cfg->block_bytes);
    if (!t->host) {
      snprintf(err, errlen, "out of memory for a host tier of %u blocks", t->caps[1]);
      rc = PD_ENOMEM;
      goto fail;
    }
  }
  if (t->caps[2]) {
    pd_kvstore_config kc = {.dir = cfg->disk_dir,
                            .map_bytes = cfg->disk_bytes,
                            .durability = cfg->durability,
                            .foreign = cfg->foreign};
    memcpy(kc.fingerprint, cfg->fingerprint, 16);
    if ((rc = pd_kvstore_open(&kc, &t->store, err, errlen))) goto fail;
    /* what pd_tiers_disk_stats reports until the worker's first batch refreshes it */
    pd_kvstore_get_counters(t->store, &t->store_counters);
    pd_kvstore_usage(t->store, &t->store_blocks, &t->store_used, &t->store_map);
  }
  pthread_mutex_init(&t->mu, NULL);
  pthread_cond_init(&t->cv, NULL);
  pthread_cond_init(&t->idle_cv, NULL);
  if (pthread_create(&t->worker, NULL, worker_main, t)) {
    snprintf(err, errlen, "cannot start the storage worker");
    rc = PD_ESYS;
    goto fail;
  }
  t->worker_started = 1;
  *out = t;
  return PD_OK;
fail:
  if (t->store) pd_kvstore_close(t->store);
  pd_devpool_host_free(t->cfg.device, t->host);
  pd_devpool_host_free(t->cfg.device, t->stage);
  free(t->stage_ids);
  free(t);
  return rc;
}

void pd_tiers_sync(pd_tiers *t) {
  /* finish what is queued, applying completions as they come (a retried write may queue more) */
  for (int round = 0; round < 100000; round++) {
    pd_tiers_flush(t);
    pd_tiers_poll(t, t->now);
    pthread_mutex_lock(&t->mu);
    int idle = !t->queue_head && !t->busy && !t->done_head;
    if (!idle) {
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      ts.tv_nsec += 10 * 1000 * 1000;
      if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
      pthread_cond_timedwait(&t->idle_cv, &t->mu, &ts);
    }
    pthread_mutex_unlock(&t->mu);
    if (idle && !t->open[0] && !t->open[1] && !t->open[2] && !t->open[3]) break;
  }
}

void pd_tiers_close(pd_tiers *t) {
  if (!t) return;
  pd_tiers_sync(t); /* writes are committed before the store closes */
  if (t->worker_started) {
    pthread_mutex_lock(&t->mu);
    t->stop = 1;
    pthread_cond_signal(&t->cv);
    pthread_mutex_unlock(&t->mu);
    pthread_join(t->worker, NULL);
  }
  for (tier_op *op = t->done_head, *next; op; op = next) {
    next = op->next;
    op_free(op);
  }
  for (int k = 0; k < OP_KINDS; k++) op_free(t->open[k]);
  pthread_mutex_destroy(&t->mu);
  pthread_cond_destroy(&t->cv);
  pthread_cond_destroy(&t->idle_cv);
  if (t->store) pd_kvstore_close(t->store);
  pd_devpool_host_free(t->cfg.device, t->host);
  pd_devpool_host_free(t->cfg.device, t->stage);
  free(t->stage_ids);
  free(t->state);
  free(t->pending);
  free(t->bad);
  free(t->scratch);
  free(t);
}

void pd_tiers_get_counters(pd_tiers *t, pd_tiers_counters *out) {
  *out = t->counters;
}

int pd_tiers_disk_stats(pd_tiers *t, pd_kvstore_counters *c, uint64_t *n_records,
                        uint64_t *used_bytes, uint64_t *map_bytes) {
  if (!t->store) return PD_ENOTFOUND;
  pthread_mutex_lock(&t->mu);
  if (c) *c = t->store_counters;
  if (n_records) *n_records = t->store_blocks;
  if (used_bytes) *used_bytes = t->store_used;
  if (map_bytes) *map_bytes = t->store_map;
  pthread_mutex_unlock(&t->mu);
  return PD_OK;
}

/* ---- rebuild ------------------------------------------------------------------------------- */

typedef struct stored_block {
  pd_key128 key, parent;
  uint16_t n_tokens;
  uint8_t used;
  int32_t *tokens; /* into the rebuild's token array: (n_tokens) */
} stored_block;

typedef struct rebuild_ctx {
  stored_block *recs; /* (cap) */
  size_t n, cap;
  int32_t *tokens; /* (cap_tok) */
  size_t n_tok, cap_tok;
  uint32_t block_tokens;
  int oom;
} rebuild_ctx;

static int collect(void *arg, pd_key128 key, const pd_kvstore_hdr *h, const int32_t *tokens) {
  rebuild_ctx *c = arg;
  if (h->block_tokens != c->block_tokens || h->n_tokens == 0 || h->n_tokens > c->block_tokens)
    return 0; /* another block size: not ours to index */
  if (c->n == c->cap) {
    size_t ncap = c->cap ? c->cap * 2 : 1024;
    stored_block *r = realloc(c->recs, ncap * sizeof *r);
    if (!r) return c->oom = 1, PD_ENOMEM;
    c->recs = r;
    c->cap = ncap;
  }
  if (c->n_tok + h->n_tokens > c->cap_tok) {
    size_t ncap = c->cap_tok ? c->cap_tok * 2 : 16384;
    while (ncap < c->n_tok + h->n_tokens) ncap *= 2;
    int32_t *tk = realloc(c->tokens, ncap * sizeof *tk);
    if (!tk) return c->oom = 1, PD_ENOMEM;
    c->tokens = tk;
    c->cap_tok = ncap;
  }
  memcpy(c->tokens + c->n_tok, tokens, 4u * h->n_tokens);
  c->recs[c->n++] = (stored_block){key, h->parent, h->n_tokens, 0, (int32_t *)(uintptr_t)c->n_tok};
  c->n_tok += h->n_tokens;
  return 0;
}

static int key_cmp(pd_key128 a, pd_key128 b) {
  if (a.hi != b.hi) return a.hi < b.hi ? -1 : 1;
  if (a.lo != b.lo) return a.lo < b.lo ? -1 : 1;
  return 0;
}

static int by_parent(const void *a, const void *b) {
  return key_cmp(((const stored_block *)a)->parent, ((const stored_block *)b)->parent);
}

/* The first record whose parent is key (or n). */
static size_t first_child_rec(const stored_block *recs, size_t n, pd_key128 key) {
  size_t lo = 0, hi = n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (key_cmp(recs[mid].parent, key) < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/* A tenant that may write namespace ns: its owner, or one granted it; -1 if none. */
static int64_t ns_user(const pd_tenants *tn, uint32_t ns) {
  const pd_namespace *n = pd_tenants_ns(tn, ns);
  if (!n || !n->active) return -1;
  if (n->owner != PD_NS_SHARED) return n->owner;
  for (uint32_t i = 0; i < tn->n_tenants; i++)
    if (pd_tenants_get(tn, i) && pd_tenants_may_use(tn, i, ns)) return i;
  return -1;
}

int pd_tiers_rebuild(pd_tiers *t, void (*progress)(void *arg, uint64_t n_done), void *arg,
                     uint64_t *n_blocks) {
  *n_blocks = 0;
  if (!t->store) return PD_OK;
  rebuild_ctx c = {.block_tokens = t->tree->cfg.block_tokens};
  int rc = pd_kvstore_scan(t->store, collect, &c, progress, arg);
  if (rc && !c.oom) goto out;
  if (c.oom) {
    rc = PD_ENOMEM;
    goto out;
  }
  for (size_t i = 0; i < c.n; i++) c.recs[i].tokens = c.tokens + (uintptr_t)c.recs[i].tokens;
  if (c.n) qsort(c.recs, c.n, sizeof *c.recs, by_parent);
  /* breadth first from every namespace's root: (node, key) pairs to expand */
  uint32_t *queue = malloc((c.n + 1) * sizeof *queue);
  uint32_t *order = malloc((c.n + 1) * sizeof *order); /* nodes, parents first */
  if (!queue || !order) {
    free(queue);
    free(order);
    rc = PD_ENOMEM;
    goto out;
  }
  size_t n_order = 0;
  const pd_tenants *tn = pd_radix_tenants(t->tree);
  for (uint32_t ns = 0; ns < tn->n_ns; ns++) {
    int64_t user = ns_user(tn, ns);
    if (user < 0) continue;
    uint32_t root;
    if (pd_radix_root(t->tree, (uint32_t)user, ns, &root)) continue;
    size_t q_head = 0, q_tail = 0;
    queue[q_tail++] = root;
    while (q_head < q_tail) {
      uint32_t parent = queue[q_head++];
      pd_key128 pkey = pd_radix_node(t->tree, parent)->key;
      for (size_t i = first_child_rec(c.recs, c.n, pkey);
           i < c.n && key_cmp(c.recs[i].parent, pkey) == 0; i++) {
        stored_block *r = &c.recs[i];
        if (r->used || free_room(t, 2) == 0) continue;
        uint32_t slot, n_done = 0;
        if (pd_radix_alloc_slot(t->tree, 2, &slot)) continue;
        pd_insert_result res;
        rc = pd_radix_extend(t->tree, (uint32_t)user, parent, r->tokens, r->n_tokens, &slot, 2, 0,
                             &res, &n_done);
        if (n_done != 1) {
          pd_radix_free_slot(t->tree, 2, slot);
          continue;
        }
        if (!pd_key_eq(pd_radix_node(t->tree, res.node)->key, r->key) || !res.adopted) {
          pd_radix_release(t->tree, &res.node, 1); /* a record under a wrong key: not used */
          if (res.adopted) pd_tiers_drop(t, res.node, NULL);
          continue;
        }
        r->used = 1;
        if (ensure_state(t, res.node) == PD_OK) t->state[res.node] |= ST_ON_DISK;
        t->n_records++;
        order[n_order++] = res.node;
        if (r->n_tokens == t->tree->cfg.block_tokens) queue[q_tail++] = res.node;
      }
    }
  }
  rc = PD_OK;
  /* references back, children first, so parents end up more recent in the LRU */
  while (n_order-- > 0) pd_radix_release(t->tree, &order[n_order], 1);
  free(queue);
  free(order);
  /* records nothing leads to (a deleted tenant, a lost parent, past the budget) */
  size_t n_orphans = 0;
  for (size_t i = 0; i < c.n; i++)
    if (!c.recs[i].used) {
      tier_item *it = add_item(t, OP_DELETE, NULL, 0);
      if (it) it->key = c.recs[i].key;
      n_orphans++;
    }
  if (n_orphans)
    pd_log(PD_LOG_WARN,
           "disk tier: deleting records not indexed (no namespace leads to them, or past the "
           "budget)",
           "records=%zu", n_orphans);
  pd_tiers_flush(t);
  *n_blocks = t->n_records;
out:
  free(c.recs);
  free(c.tokens);
  return rc;
}
