/*
 * pd_kvstore.h -- the disk tier: KV blocks in an LMDB environment.
 *
 * One LMDB environment (a directory with data.mdb and lock.mdb) holds two databases:
 *
 *   "blocks"  key   the 16-byte block key (it already covers the tenant's namespace, the model
 *                   fingerprint, the cache dtype and the block size, see prefix/)
 *             value [pd_kvstore_hdr][int32 tokens (n_tokens)][KV payload (payload_bytes)]
 *   "meta"    key   a short ASCII name ("format", "fingerprint", "tenant/<name>", ...)
 *             value opaque bytes owned by the caller's module
 *
 * The value header, little-endian, 64 bytes:
 *
 *     0  u32 magic 'PDKV'         4 u16 format version     6 u8 dtype      7 u8 flags
 *     8  u16 block_tokens        10 u16 n_tokens          12 u32 payload_bytes
 *    16  u8[16] model fingerprint
 *    32  u8[16] parent key (the previous block's key, or the root key k_0 for a first block)
 *    48  u64 XXH3-64 of tokens ‖ payload
 *    56  u32 namespace id         60 u32 reserved (0)
 *
 * The parent key lets the daemon rebuild the radix tree from the store alone after a restart.
 * The checksum is verified on every read: a block that fails it is deleted, counted, and reported
 * as PD_ECORRUPT (a miss for the caller), never served.
 *
 * Durability: LMDB commits are atomic and the file is never corrupted by a crash (copy-on-write
 * B+tree, two meta pages). PD_KVSTORE_DURABLE syncs on every commit, so a commit that returned is
 * on disk; PD_KVSTORE_FAST (MDB_NOMETASYNC) may lose the last transactions on power loss but never
 * corrupts; PD_KVSTORE_NOSYNC (MDB_NOSYNC) leaves flushing to the OS (a crash of the process loses
 * nothing, since the pages are in the page cache; power loss may lose recent commits).
 *
 * Errors from LMDB and errno are translated here: MDB_MAP_FULL -> PD_EFULL (the caller evicts its
 * disk LRU and retries), ENOSPC -> PD_ENOSPC, EIO -> PD_EIO, MDB_CORRUPTED / bad header ->
 * PD_ECORRUPT. After PD_ENOSPC or PD_EIO the caller should disable the disk tier.
 *
 * Threads: one pd_kvstore may be used from one thread at a time for writes (the storage worker);
 * reads may come from any thread (LMDB read transactions, MDB_NOTLS).
 */
#ifndef PD_KVSTORE_H
#define PD_KVSTORE_H

#include <stddef.h>
#include <stdint.h>

#include "pd_key.h"

#define PD_KVSTORE_MAGIC     0x564b4450u /* "PDKV" little-endian */
#define PD_KVSTORE_FORMAT    1
#define PD_KVSTORE_HDR_BYTES 64

enum pd_kvstore_durability { PD_KVSTORE_DURABLE = 0, PD_KVSTORE_FAST = 1, PD_KVSTORE_NOSYNC = 2 };

/* What to do with blocks written under another model fingerprint or format version. */
enum pd_kvstore_foreign { PD_KVSTORE_FOREIGN_KEEP = 0, PD_KVSTORE_FOREIGN_PURGE = 1 };

/* The decoded header of one stored block. */
typedef struct pd_kvstore_hdr {
  uint8_t dtype;
  uint8_t flags;
  uint16_t block_tokens;
  uint16_t n_tokens;
  uint32_t payload_bytes;
  uint8_t fingerprint[16];
  pd_key128 parent;
  uint64_t checksum;
  uint32_t namespace_id;
} pd_kvstore_hdr;

typedef struct pd_kvstore_config {
  const char *dir;    /* an existing or creatable directory */
  uint64_t map_bytes; /* the map size: the disk tier's byte budget (rounded up to pages) */
  enum pd_kvstore_durability durability;
  enum pd_kvstore_foreign foreign; /* at open: keep or purge blocks of another fingerprint */
  uint8_t fingerprint[16];         /* this model's fingerprint */
} pd_kvstore_config;

typedef struct pd_kvstore_counters {
  uint64_t puts, put_bytes, gets, get_bytes, hits, misses, deletes;
  uint64_t checksum_failures; /* blocks found corrupt, deleted, never served */
  uint64_t foreign_skipped;   /* blocks of another fingerprint/format seen by a scan */
  uint64_t foreign_purged;    /* of those, deleted at open (PD_KVSTORE_FOREIGN_PURGE) */
  uint64_t map_full;          /* commits refused with MDB_MAP_FULL */
  uint64_t stale_readers;     /* reader slots cleared by mdb_reader_check */
} pd_kvstore_counters;

typedef struct pd_kvstore pd_kvstore;

/* Opens (creating if needed) the store in cfg->dir. Runs mdb_reader_check, checks the format
 * version in "meta", and applies cfg->foreign. On success *out is owned by the caller (free with
 * pd_kvstore_close). On failure writes one line into err. */
int pd_kvstore_open(const pd_kvstore_config *cfg, pd_kvstore **out, char *err, size_t errlen);
void pd_kvstore_close(pd_kvstore *s);

/* One block to write. All pointers are borrowed for the duration of the call. */
typedef struct pd_kvstore_block {
  pd_key128 key;
  pd_key128 parent;
  uint32_t namespace_id;
  uint16_t block_tokens;
  uint8_t dtype;
  uint8_t flags;
  const int32_t *tokens; /* (n_tokens) */
  uint16_t n_tokens;
  const void *payload; /* (payload_bytes) the block's KV bytes */
  uint32_t payload_bytes;
} pd_kvstore_block;

/* Writes n blocks in ONE transaction (all or nothing). Existing keys are overwritten.
 * Returns 0, PD_EFULL (map full: nothing was written), PD_ENOSPC, PD_EIO, PD_EINVAL. */
int pd_kvstore_put_batch(pd_kvstore *s, const pd_kvstore_block *blocks, size_t n);

/* Reads one block. tokens (capacity max_tokens) and payload (capacity payload_cap) are caller
 * buffers; hdr receives the header. Verifies the checksum and the fingerprint.
 * Returns 0, PD_ENOTFOUND, PD_ECORRUPT (the block was deleted), PD_EFULL if a buffer is too small,
 * PD_EIO. */
int pd_kvstore_get(pd_kvstore *s, pd_key128 key, pd_kvstore_hdr *hdr, int32_t *tokens,
                   size_t max_tokens, void *payload, size_t payload_cap);

/* Deletes n keys in one transaction; missing keys are not an error. *n_deleted may be NULL. */
int pd_kvstore_delete_batch(pd_kvstore *s, const pd_key128 *keys, size_t n, size_t *n_deleted);

/* Calls fn for every valid block of this fingerprint, in key order, with its header and tokens
 * (borrowed: valid during the callback only). Blocks that fail their header check are counted
 * and skipped. fn returns 0 to go on, nonzero to stop (returned as is). progress, if not NULL, is
 * called every 65,536 blocks with the count so far. Used to rebuild the index at start. */
typedef int (*pd_kvstore_scan_fn)(void *arg, pd_key128 key, const pd_kvstore_hdr *hdr,
                                  const int32_t *tokens);
int pd_kvstore_scan(pd_kvstore *s, pd_kvstore_scan_fn fn, void *arg,
                    void (*progress)(void *arg, uint64_t n_done), void *progress_arg);

/* The "meta" database. get copies into buf (capacity cap) and sets *len; PD_EFULL if too small. */
int pd_kvstore_meta_put(pd_kvstore *s, const char *name, const void *val, size_t len);
int pd_kvstore_meta_get(pd_kvstore *s, const char *name, void *buf, size_t cap, size_t *len);
int pd_kvstore_meta_delete(pd_kvstore *s, const char *name);

/* Clears reader slots left by dead processes; run at open and periodically. */
int pd_kvstore_reader_check(pd_kvstore *s, int *n_cleared);

/* Blocks stored, bytes used by the map (pages in use * page size), and the map size. */
int pd_kvstore_usage(pd_kvstore *s, uint64_t *n_blocks, uint64_t *used_bytes, uint64_t *map_bytes);

void pd_kvstore_get_counters(const pd_kvstore *s, pd_kvstore_counters *out);

/* Encodes / decodes a header (exposed for tests and fuzzing). decode checks magic, version,
 * lengths against value_len; returns 0 or PD_ECORRUPT / PD_EUNSUPPORTED. */
void pd_kvstore_hdr_encode(const pd_kvstore_hdr *h, uint8_t out[PD_KVSTORE_HDR_BYTES]);
int pd_kvstore_hdr_decode(const uint8_t *val, size_t value_len, pd_kvstore_hdr *h);

#endif /* PD_KVSTORE_H */
