/*
 * pd_kvstore.h -- the disk tier: an LMDB index of KV blocks, their payloads in a block file.
 *
 * A directory holds an LMDB environment (data.mdb, lock.mdb) and blocks.dat (pd_blockfile: the
 * payloads, written with O_DIRECT). LMDB has two databases:
 *
 *   "blocks"  key   the 16-byte block key (it already covers the tenant's namespace, the model
 *                   fingerprint, the cache dtype and the block size, see prefix/)
 *             value [pd_kvstore_hdr][int32 tokens (n_tokens)]            (format 2)
 *                   [pd_kvstore_hdr][int32 tokens (n_tokens)][payload]   (format 1, read only)
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
 *    56  u32 namespace id        60 u32 payload page: where in blocks.dat the payload starts, in
 *                                       4 KiB pages (format 2; 0 in format 1)
 *
 * The parent key lets the daemon rebuild the radix tree from the store alone after a restart.
 * The checksum is verified on every read: a block that fails it is deleted, counted, and reported
 * as PD_ECORRUPT (a miss for the caller), never served.
 *
 * Format 1 kept payloads inside LMDB values. A store written in format 1 opens as is: its blocks
 * are read where they are, new blocks go to blocks.dat, and the old ones leave as they are
 * evicted. A 32-bit page number bounds the block file at 16 TiB.
 *
 * Writes: a batch's payloads go to blocks.dat first (one pwritev per run of adjacent pages), then
 * the index entries that name them are committed in one LMDB transaction. The free-page map of
 * blocks.dat is rebuilt from the index at open, so a crash between the two steps leaves only
 * unnamed pages, which are free.
 *
 * Durability: PD_KVSTORE_DURABLE fdatasyncs the payloads and syncs every commit, so a batch that
 * returned is on disk; PD_KVSTORE_FAST fdatasyncs the payloads before the commit and commits with
 * MDB_NOMETASYNC (power loss may lose the last transactions, never corrupts); PD_KVSTORE_NOSYNC
 * syncs nothing (a crash of the process loses nothing, since O_DIRECT writes and LMDB's pages are
 * already in the kernel; power loss may lose recent batches, and an index entry whose payload
 * did not reach the disk fails its checksum and is dropped).
 *
 * The byte budget (map_bytes) covers both files: blocks.dat grows only while it and the index
 * together fit. Full (PD_EFULL) means no room for a batch: the caller evicts its disk LRU and
 * retries.
 *
 * Errors from LMDB and errno are translated here: MDB_MAP_FULL -> PD_EFULL, ENOSPC -> PD_ENOSPC,
 * EIO -> PD_EIO, MDB_CORRUPTED / bad header -> PD_ECORRUPT. After PD_ENOSPC or PD_EIO the caller
 * should disable the disk tier.
 *
 * Threads: one pd_kvstore may be used from one thread at a time for writes and deletes (the
 * storage worker); reads may come from any thread (LMDB read transactions, MDB_NOTLS, pread).
 */
#ifndef PD_KVSTORE_H
#define PD_KVSTORE_H

#include <stddef.h>
#include <stdint.h>

#include "pd_key.h"

#define PD_KVSTORE_MAGIC     0x564b4450u /* "PDKV" little-endian */
#define PD_KVSTORE_FORMAT    2           /* written; format 1 is still read */
#define PD_KVSTORE_HDR_BYTES 64

enum pd_kvstore_durability { PD_KVSTORE_DURABLE = 0, PD_KVSTORE_FAST = 1, PD_KVSTORE_NOSYNC = 2 };

/* What to do with blocks written under another model fingerprint or format version. */
enum pd_kvstore_foreign { PD_KVSTORE_FOREIGN_KEEP = 0, PD_KVSTORE_FOREIGN_PURGE = 1 };

/* The decoded header of one stored block. */
typedef struct pd_kvstore_hdr {
  uint16_t version; /* 1 or 2; 0 when encoding means PD_KVSTORE_FORMAT */
  uint8_t dtype;
  uint8_t flags;
  uint16_t block_tokens;
  uint16_t n_tokens;
  uint32_t payload_bytes;
  uint8_t fingerprint[16];
  pd_key128 parent;
  uint64_t checksum;
  uint32_t namespace_id;
  uint32_t payload_page; /* format 2: the payload's first page in blocks.dat */
} pd_kvstore_hdr;

typedef struct pd_kvstore_config {
  const char *dir;    /* an existing or creatable directory */
  uint64_t map_bytes; /* the disk tier's byte budget: index and block file together */
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
  uint64_t read_races;        /* reads that met their block being replaced or deleted, or its
                               * pages reused, while they read (a miss, or a good second read) */
  uint64_t bad_extents;       /* index entries dropped at open: pages outside or shared */
  uint64_t direct_io;         /* 1 when blocks.dat is written with O_DIRECT */
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
 * buffers; hdr receives the header. Verifies the checksum and the fingerprint. A page-aligned
 * payload buffer is filled with O_DIRECT reads; any other through the page cache.
 * Returns 0, PD_ENOTFOUND (also when the block was replaced or deleted while it was read),
 * PD_ECORRUPT (the block was deleted), PD_EFULL if a buffer is too small, PD_EIO. */
int pd_kvstore_get(pd_kvstore *s, pd_key128 key, pd_kvstore_hdr *hdr, int32_t *tokens,
                   size_t max_tokens, void *payload, size_t payload_cap);

/* One block to read with pd_kvstore_get_batch: key in; tokens (capacity max_tokens) and payload
 * (capacity payload_cap) are caller buffers, borrowed for the call; hdr and rc out. */
typedef struct pd_kvstore_read {
  pd_key128 key;
  int32_t *tokens;
  size_t max_tokens;
  void *payload;
  size_t payload_cap;
  pd_kvstore_hdr hdr;
  int rc; /* what pd_kvstore_get would return for this block */
} pd_kvstore_read;

/* Reads n blocks as pd_kvstore_get would, one index transaction for all, and the payloads that
 * lie together in blocks.dat with one read each run (blocks spilled together are restored
 * together). Returns 0 (see each rc) or PD_ENOMEM / an LMDB error (no rc is set). */
int pd_kvstore_get_batch(pd_kvstore *s, pd_kvstore_read *reads, size_t n);

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

/* Blocks stored, bytes in use (the index's pages in use plus the block file's pages in use), and
 * the budget. */
int pd_kvstore_usage(pd_kvstore *s, uint64_t *n_blocks, uint64_t *used_bytes, uint64_t *map_bytes);

void pd_kvstore_get_counters(const pd_kvstore *s, pd_kvstore_counters *out);

/* Encodes / decodes a header (exposed for tests and fuzzing). decode checks magic, version,
 * lengths against value_len (format 1: header, tokens and payload; format 2: header and tokens);
 * returns 0 or PD_ECORRUPT / PD_EUNSUPPORTED. */
void pd_kvstore_hdr_encode(const pd_kvstore_hdr *h, uint8_t out[PD_KVSTORE_HDR_BYTES]);
int pd_kvstore_hdr_decode(const uint8_t *val, size_t value_len, pd_kvstore_hdr *h);

#endif /* PD_KVSTORE_H */
