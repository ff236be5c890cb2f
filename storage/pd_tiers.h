/*
 * pd_tiers.h -- the tier manager: moves KV blocks between the device pool (tier 0), host RAM
 * (tier 1) and the disk store (tier 2, pd_kvstore), and rebuilds the disk tier's index at start.
 *
 * DESIGN
 *
 * The radix tree (prefix/pd_radix.h) says where each block is; this module moves the bytes.
 * The engine thread owns the tree and calls everything here except the worker, so the tree needs
 * no lock. Bytes move on ONE storage worker thread, in FIFO order, in batches: every transfer the
 * engine asks for during one scheduler step joins that step's batch of its kind (one memcpy run,
 * one store write batch, one read batch, one delete transaction), and pd_tiers_flush hands
 * the batches to the worker. The worker reports completions back by message (a done list under
 * a mutex, plus the engine's wake callback); the engine applies them in pd_tiers_poll.
 *
 * The tree is updated at once, the bytes later. A block demoted from tier 0 to tier 1 is in tier
 * 1 as soon as the engine asks; its old device slot stays allocated (PD_EVICT_KEEP_SLOTS) until
 * the copy out of it completes, and a reference (pd_radix_hold) keeps the node from being moved
 * colder again or dropped meanwhile. A restore moves the node into tier 0 at once
 * (pd_radix_move keeps the colder slot until the copy is done) and counts the node pending;
 * the sequence that restores it -- and any other that matches it -- waits until
 * pd_tiers_pending(node) is 0. Because one worker runs transfers in order, a transfer that
 * depends on an earlier one (restore right after demotion, write right after a copy) always sees
 * its bytes in place.
 *
 * Room: pd_tiers_make_room(tier, n) frees n slots of a tier by demoting its least recently used
 * frontier blocks one tier colder, after first making room there for all of them (so the
 * frontier rule holds: a node is never colder than its descendants). The coldest tier present
 * drops its victims (their disk records are deleted).
 *
 * The disk tier holds a block when it was demoted there, or as a write-through copy of a hot
 * block that is worth keeping across a restart: the write filter decides (always; on the second
 * use, i.e. the first hit; or only warmed and pinned blocks). A block with a disk copy is
 * demoted from host to disk without I/O, and a restored block keeps its disk copy. Dropping a
 * node deletes its record. On PD_ENOSPC or PD_EIO the disk tier is disabled (logged, reported in
 * the stats), blocks that were on their way there are dropped, and serving goes on from RAM. On
 * PD_EFULL (the disk store's budget is full) the disk LRU is evicted and the batch retried.
 *
 * Restore or recompute: pd_tiers_plan_restore compares the measured transfer rate of each tier
 * (bytes/s, a moving average over completed batches) with the engine's measured prefill rate
 * (tokens/s) and restores only the run of cold blocks that comes back faster than it would be
 * computed.
 *
 * A read verifies the stored tokens against the node's tokens (and the store verifies the
 * payload checksum); a block that fails is marked bad: the sequences waiting on it compute it
 * instead, and it is dropped from the tree as soon as nobody holds it.
 *
 * Restart: pd_tiers_rebuild scans the store and rebuilds the disk tier of the tree, namespace by
 * namespace from each root key, block by block below the parent keys the records carry. Records
 * whose chain does not lead to a known namespace (a deleted tenant) are deleted.
 *
 * Threads: every function is for the engine thread, except that the worker calls cfg.wake.
 */
#ifndef PD_TIERS_H
#define PD_TIERS_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "pd_devpool.h"
#include "pd_kvstore.h"
#include "pd_radix.h"

/* When a block is written to the disk tier. */
enum pd_write_filter {
  PD_WRITE_SECOND_USE = 0, /* on its first hit (its second use), when warmed or pinned */
  PD_WRITE_ALWAYS = 1,     /* every block, as soon as it is in the tree */
  PD_WRITE_PINNED = 2,     /* only warmed or pinned blocks (others are dropped, not demoted) */
};

typedef struct pd_tiers_config {
  size_t block_bytes;      /* one block's KV bytes */
  uint32_t block_tokens;   /* B */
  uint8_t dtype;           /* the cache dtype, stored in each disk record */
  uint8_t fingerprint[16]; /* the model fingerprint */
  pd_devpool *device;      /* tier 0's memory (host or GPU), borrowed */
  uint64_t host_bytes;     /* tier 1's budget; 0 = no host tier */
  const char *disk_dir;    /* tier 2's directory (pd_kvstore); NULL = no disk tier */
  uint64_t disk_bytes;     /* tier 2's budget: index and payloads */
  enum pd_kvstore_durability durability;
  enum pd_kvstore_foreign foreign;
  enum pd_write_filter write_filter;
  void (*wake)(void *arg); /* called by the worker when completions are ready */
  void *wake_arg;
} pd_tiers_config;

typedef struct pd_tiers_counters {
  uint64_t demoted[PD_TIERS];  /* blocks moved into tier t from a hotter one */
  uint64_t restored[PD_TIERS]; /* blocks brought back from tier t to tier 0 */
  uint64_t dropped[PD_TIERS];  /* blocks removed from the tree out of tier t */
  uint64_t spill_bytes, restore_bytes;
  uint64_t disk_writes, disk_write_bytes, disk_reads, disk_deletes;
  uint64_t write_filtered; /* demotions to disk the write filter turned into drops */
  uint64_t write_through;  /* hot blocks copied to disk (warmed, pinned, second use) */
  uint64_t read_failures;  /* restores whose block was missing or corrupt (recomputed) */
  uint64_t map_full_retries;
  uint64_t restore_chosen, recompute_chosen; /* cold runs restored / left to recompute */
  uint64_t batches;
  uint64_t meta_writes;                         /* pd_tiers_put_meta values stored */
  double disk_write_seconds, disk_read_seconds; /* time the worker spent in the store */
  double rate_bps[PD_TIERS]; /* measured transfer rate into tier 0 from tier t (bytes/s) */
} pd_tiers_counters;

typedef struct pd_tiers pd_tiers;

/* Blocks each tier can hold under cfg (tier 0 is the caller's: left as is). For the tree's
 * tier_capacity before pd_radix_init. */
void pd_tiers_capacity(const pd_tiers_config *cfg, uint32_t caps[PD_TIERS]);

/* Opens the host tier and the disk store. tree (owned by the caller, outliving the manager) must
 * have been made with the capacities of pd_tiers_capacity. *out is the caller's
 * (pd_tiers_close). err gets one line. The worker starts here. */
int pd_tiers_open(const pd_tiers_config *cfg, pd_radix *tree, pd_tiers **out, char *err,
                  size_t errlen);
/* Waits for every transfer to finish, applies the completions, stops the worker, closes the
 * store and frees the host tier. */
void pd_tiers_close(pd_tiers *t);

/* Rebuilds the disk tier of the tree from the store (after the tenants are registered). progress
 * (may be NULL) is called every 65,536 records. *n_blocks gets the blocks indexed. */
int pd_tiers_rebuild(pd_tiers *t, void (*progress)(void *arg, uint64_t n_done), void *arg,
                     uint64_t *n_blocks);

/* Frees n slots of tier (demoting or dropping its LRU frontier blocks). Returns PD_OK if n slots
 * are free afterwards or will be once the transfers in flight land (pd_tiers_sync waits for
 * them), PD_EFULL otherwise (the rest is referenced or pinned). */
int pd_tiers_make_room(pd_tiers *t, int tier, uint32_t n, uint64_t now);

/* Moves the blocks of tenant (-1: everyone's) out of tier: one tier colder where there is one
 * (and room), else out of the tree. Referenced and pinned blocks stay. counts[tier] gets what
 * left. For Evict by tier. */
int pd_tiers_evict(pd_tiers *t, int tier, int32_t tenant, uint64_t now, uint64_t counts[PD_TIERS]);

/* A slot of tier for a block about to be written: when none is free, demotes batch blocks (so
 * that spills are large transfers) and, if their slots are still in flight, waits for the
 * storage worker. PD_EFULL when everything left is referenced or pinned. */
int pd_tiers_alloc_slot(pd_tiers *t, int tier, uint32_t batch, uint64_t now, uint32_t *slot);

/* How many of a matched path's cold blocks to restore: nodes (n, path order) from the first one
 * not in tier 0. Returns the count of leading nodes worth restoring (host ones, then disk ones). */
uint32_t pd_tiers_plan_restore(pd_tiers *t, const uint32_t *nodes, uint32_t n);

/* Starts restoring node (referenced by the caller, its parent already in tier 0) into tier 0:
 * allocates a device slot (making room), moves the node, queues the copy or read. *device_slot
 * gets the node's new slot. PD_EFULL if tier 0 has no room. */
int pd_tiers_restore(pd_tiers *t, uint32_t node, uint64_t now, uint32_t *device_slot);

/* Transfers in flight that touch node (0: its bytes are where the tree says). */
uint32_t pd_tiers_pending(const pd_tiers *t, uint32_t node);
/* 1 if node's bytes could not be restored: recompute it; it is dropped once unreferenced. */
int pd_tiers_is_bad(const pd_tiers *t, uint32_t node);

/* A block was used (matched): under the second-use filter, writes it through to disk. */
void pd_tiers_note_use(pd_tiers *t, uint32_t node);
/* Marks node and its ancestors as worth keeping (warmed or pinned) and writes them through. */
void pd_tiers_keep(pd_tiers *t, uint32_t node);
/* A block entered the tree (under the always filter: writes it through). */
void pd_tiers_note_insert(pd_tiers *t, uint32_t node);

/* Drops node's subtree from the tree and deletes their disk records. counts[tier] (may be NULL)
 * gets the blocks that went, per tier. PD_EBUSY if something in it is referenced or pinned. */
int pd_tiers_drop(pd_tiers *t, uint32_t node, uint64_t counts[PD_TIERS]);
/* Removes tier's copy of node's block without dropping what is hotter: for tier 2, the disk
 * record of a node that lives in a hotter tier. 1 if something went. */
int pd_tiers_forget_disk_copy(pd_tiers *t, uint32_t node);

/* The engine's measured prefill rate, for plan_restore. */
void pd_tiers_note_prefill(pd_tiers *t, uint64_t tokens, double seconds);

/* Hands this step's batches to the worker, waits for every transfer and applies them: for
 * operations that must see the tree at rest (Evict), and shutdown. */
void pd_tiers_sync(pd_tiers *t);

/* Hands this step's batches to the worker. */
void pd_tiers_flush(pd_tiers *t);
/* Applies the completions the worker reported (frees held slots, releases references, marks
 * disk copies and failures, drops bad blocks nobody holds). Returns how many items completed. */
uint32_t pd_tiers_poll(pd_tiers *t, uint64_t now);
/* 1 if the worker has completions that pd_tiers_poll has not applied. Any thread. */
int pd_tiers_has_completions(pd_tiers *t);
/* Stores value (len bytes; ownership passes to the manager, which frees it) under name (under 32
 * characters) in the store's "meta" database, on the worker, after this step's transfers.
 * PD_ENOTFOUND without an enabled disk tier (value is freed). A failure is logged when the
 * worker reports it. */
int pd_tiers_put_meta(pd_tiers *t, const char *name, uint8_t *value, size_t len);
/* Reads a "meta" value (see pd_kvstore_meta_get); PD_ENOTFOUND without a disk tier. */
int pd_tiers_get_meta(pd_tiers *t, const char *name, void *buf, size_t cap, size_t *len);

/* Transfers asked for and not yet landed (open batches included). */
uint32_t pd_tiers_in_flight(const pd_tiers *t);

/* Pointer to a tier-1 slot's bytes (valid while the manager lives). */
void *pd_tiers_host_block(pd_tiers *t, uint32_t slot);

void pd_tiers_get_counters(pd_tiers *t, pd_tiers_counters *out);
/* The disk store's counters and usage; 0 or PD_ENOTFOUND without a disk tier. */
int pd_tiers_disk_stats(pd_tiers *t, pd_kvstore_counters *c, uint64_t *n_records,
                        uint64_t *used_bytes, uint64_t *map_bytes);
/* 1 if the disk tier is present and enabled. reason gets why it was disabled. */
int pd_tiers_disk_enabled(const pd_tiers *t, const char **reason);
/* Bytes of one tier's slot as stored (tier 2: the record's size on disk, page-rounded). */
uint64_t pd_tiers_slot_bytes(const pd_tiers *t, int tier);

#endif /* PD_TIERS_H */
