/*
 * pd_kvstore.c -- the disk tier: LMDB index, payloads in pd_blockfile. See pd_kvstore.h for the
 * format and the contract.
 *
 * Why LMDB for the index: a copy-on-write B+tree in one memory-mapped file gives atomic
 * multi-block commits (a spill of many blocks is one transaction), crash safety without a log to
 * replay, and readers that never block the writer. Why not for the payloads: LMDB copies each
 * value into dirty pages and leaves the rest to the kernel's writeback, which held spills to
 * 12-20% of the disk's sequential rate; payloads go to blocks.dat with O_DIRECT instead, and the
 * index entry that names them is committed after they are written.
 *
 * Every LMDB or errno code is translated to a pd_status by lmdb_status() below. Fault injection
 * (common/pd_fault.h) stands in for a full disk, an I/O error and a full map at the points where
 * they would surface: before a commit.
 */
#include "pd_kvstore.h"

#include <errno.h>
#include <limits.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>

#include "pd_blockfile.h"
#include "pd_err.h"
#include "pd_fault.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "checksums hash tokens as held in memory");

struct pd_kvstore {
  MDB_env *env;
  MDB_dbi blocks; /* key (16 B) -> header ‖ tokens (‖ payload in format 1) */
  MDB_dbi meta;   /* name -> bytes */
  pd_blockfile *file;
  uint64_t budget_bytes;
  enum pd_kvstore_durability durability;
  uint8_t fingerprint[16];
  pd_kvstore_counters counters;
};

static int lmdb_status(int rc) {
  switch (rc) {
  case MDB_SUCCESS: return PD_OK;
  case MDB_NOTFOUND: return PD_ENOTFOUND;
  case MDB_MAP_FULL: return PD_EFULL;
  case MDB_CORRUPTED:
  case MDB_PAGE_NOTFOUND:
  case MDB_INVALID: return PD_ECORRUPT;
  case MDB_VERSION_MISMATCH: return PD_EUNSUPPORTED;
  case MDB_READERS_FULL:
  case MDB_TXN_FULL:
  case MDB_DBS_FULL: return PD_EFULL;
  case MDB_BAD_VALSIZE: return PD_EINVAL;
  default: return rc > 0 ? pd_err_from_errno(rc) : PD_EIO;
  }
}

/* ---- header ------------------------------------------------------------------------------- */

static void put_u16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8);
}
static void put_u32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint16_t get_u16(const uint8_t *p) {
  return (uint16_t)(p[0] | (p[1] << 8));
}
static uint32_t get_u32(const uint8_t *p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}
static uint64_t get_u64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}
static void put_key(uint8_t *p, pd_key128 k) {
  put_u64(p, k.lo), put_u64(p + 8, k.hi);
}
static pd_key128 get_key(const uint8_t *p) {
  return (pd_key128){get_u64(p), get_u64(p + 8)};
}

void pd_kvstore_hdr_encode(const pd_kvstore_hdr *h, uint8_t out[PD_KVSTORE_HDR_BYTES]) {
  memset(out, 0, PD_KVSTORE_HDR_BYTES);
  put_u32(out + 0, PD_KVSTORE_MAGIC);
  put_u16(out + 4, h->version ? h->version : PD_KVSTORE_FORMAT);
  out[6] = h->dtype;
  out[7] = h->flags;
  put_u16(out + 8, h->block_tokens);
  put_u16(out + 10, h->n_tokens);
  put_u32(out + 12, h->payload_bytes);
  memcpy(out + 16, h->fingerprint, 16);
  put_key(out + 32, h->parent);
  put_u64(out + 48, h->checksum);
  put_u32(out + 56, h->namespace_id);
  put_u32(out + 60, h->payload_page);
}

int pd_kvstore_hdr_decode(const uint8_t *val, size_t value_len, pd_kvstore_hdr *h) {
  if (value_len < PD_KVSTORE_HDR_BYTES) return PD_ECORRUPT;
  if (get_u32(val) != PD_KVSTORE_MAGIC) return PD_ECORRUPT;
  h->version = get_u16(val + 4);
  if (h->version != 1 && h->version != 2) return PD_EUNSUPPORTED;
  h->dtype = val[6];
  h->flags = val[7];
  h->block_tokens = get_u16(val + 8);
  h->n_tokens = get_u16(val + 10);
  h->payload_bytes = get_u32(val + 12);
  memcpy(h->fingerprint, val + 16, 16);
  h->parent = get_key(val + 32);
  h->checksum = get_u64(val + 48);
  h->namespace_id = get_u32(val + 56);
  h->payload_page = get_u32(val + 60);
  if (h->block_tokens == 0 || h->n_tokens == 0 || h->n_tokens > h->block_tokens) return PD_ECORRUPT;
  uint64_t want = (uint64_t)PD_KVSTORE_HDR_BYTES + 4ull * h->n_tokens +
                  (h->version == 1 ? h->payload_bytes : 0);
  if (want != value_len) return PD_ECORRUPT;
  return PD_OK;
}

/* XXH3-64 over tokens ‖ payload, tokens as stored (little-endian int32). */
static uint64_t body_checksum(const uint8_t *tokens, size_t n_tokens, const void *payload,
                              size_t payload_bytes) {
  XXH3_state_t st;
  XXH3_64bits_reset(&st);
  XXH3_64bits_update(&st, tokens, 4 * n_tokens);
  XXH3_64bits_update(&st, payload, payload_bytes);
  return XXH3_64bits_digest(&st);
}

/* The checksum of what a read brought back: its tokens (hashed as held in memory, which on this
 * little-endian build is as stored) and its payload. */
static uint64_t read_checksum(const pd_kvstore_read *r, const pd_kvstore_hdr *h) {
  return body_checksum((const uint8_t *)r->tokens, h->n_tokens, r->payload, h->payload_bytes);
}

/* The pages of blocks.dat a format-2 header names (0 for format 1 and empty payloads). */
static uint64_t extent_pages(const pd_kvstore_hdr *h) {
  return h->version == 2 ? pd_blockfile_pages(h->payload_bytes) : 0;
}

/* ---- open / close ------------------------------------------------------------------------- */

static int check_index(pd_kvstore *s, int purge_foreign, char *err, size_t errlen);
static uint64_t file_limit_pages(pd_kvstore *s);

int pd_kvstore_open(const pd_kvstore_config *cfg, pd_kvstore **out, char *err, size_t errlen) {
  *out = NULL;
  if (!cfg || !cfg->dir || cfg->map_bytes < (1u << 20))
    return pd_errf(err, errlen, PD_EINVAL,
                   "kvstore: need a directory and a budget of at least 1 MiB");
  if (cfg->map_bytes / PD_BLOCKFILE_PAGE > UINT32_MAX)
    return pd_errf(err, errlen, PD_EINVAL, "kvstore: a budget above 16 TiB is not supported");
  if (mkdir(cfg->dir, 0700) != 0 && errno != EEXIST) {
    int e = errno;
    return pd_errf(err, errlen, pd_err_from_errno(e), "kvstore: cannot create %s: %s", cfg->dir,
                   strerror(e));
  }
  pd_kvstore *s = calloc(1, sizeof *s);
  if (!s) return PD_ENOMEM;
  memcpy(s->fingerprint, cfg->fingerprint, 16);
  s->budget_bytes = cfg->map_bytes;
  s->durability = cfg->durability;
  int rc = mdb_env_create(&s->env);
  if (rc) goto fail_lmdb;
  /* the map is address space, not disk: the budget is enforced on both files together below */
  if ((rc = mdb_env_set_maxdbs(s->env, 4)) || (rc = mdb_env_set_maxreaders(s->env, 126)) ||
      (rc = mdb_env_set_mapsize(s->env, (size_t)cfg->map_bytes)))
    goto fail_lmdb;
  unsigned flags = MDB_NOTLS;
  if (cfg->durability == PD_KVSTORE_FAST) flags |= MDB_NOMETASYNC;
  if (cfg->durability == PD_KVSTORE_NOSYNC) flags |= MDB_NOSYNC;
  if ((rc = mdb_env_open(s->env, cfg->dir, flags, 0600))) goto fail_lmdb;
  int dead = 0;
  mdb_reader_check(s->env, &dead);
  s->counters.stale_readers += (uint64_t)dead;

  MDB_txn *txn;
  if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn))) goto fail_lmdb;
  if ((rc = mdb_dbi_open(txn, "blocks", MDB_CREATE, &s->blocks)) ||
      (rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &s->meta))) {
    mdb_txn_abort(txn);
    goto fail_lmdb;
  }
  /* The format version lives in meta: format 1 is upgraded in place (its values stay readable),
   * a store from a newer format is refused whole. */
  MDB_val k = {6, "format"}, v;
  rc = mdb_get(txn, s->meta, &k, &v);
  if (rc == 0 && (v.mv_size != 4 || get_u32(v.mv_data) > PD_KVSTORE_FORMAT)) {
    uint32_t found = v.mv_size == 4 ? get_u32(v.mv_data) : 0;
    mdb_txn_abort(txn);
    pd_kvstore_close(s);
    return pd_errf(err, errlen, PD_EUNSUPPORTED,
                   "kvstore: %s holds store format %u, this build reads formats 1 to %u", cfg->dir,
                   found, PD_KVSTORE_FORMAT);
  }
  if (rc == 0 || rc == MDB_NOTFOUND) {
    uint8_t fmt[4];
    put_u32(fmt, PD_KVSTORE_FORMAT);
    MDB_val nv = {4, fmt};
    rc = mdb_put(txn, s->meta, &k, &nv, 0);
  }
  if (rc == 0) {
    MDB_val fk = {11, "fingerprint"}, fv = {16, s->fingerprint};
    rc = mdb_put(txn, s->meta, &fk, &fv, 0);
  }
  if (rc || (rc = mdb_txn_commit(txn))) {
    if (rc) mdb_txn_abort(txn);
    goto fail_lmdb;
  }
  char path[4096];
  if (snprintf(path, sizeof path, "%s/blocks.dat", cfg->dir) >= (int)sizeof path) {
    pd_kvstore_close(s);
    return pd_errf(err, errlen, PD_EINVAL, "kvstore: directory name too long");
  }
  if ((rc = pd_blockfile_open(path, 1, &s->file, err, errlen)) ||
      (rc = check_index(s, cfg->foreign == PD_KVSTORE_FOREIGN_PURGE, err, errlen))) {
    pd_kvstore_close(s);
    return rc;
  }
  s->counters.direct_io = (uint64_t)pd_blockfile_direct(s->file);
  /* a budget lowered since the last run: give the free end of blocks.dat back (the blocks above
   * the new limit stay readable; their pages are not reused) */
  pd_blockfile_trim(s->file, file_limit_pages(s));
  *out = s;
  return PD_OK;

fail_lmdb:
  pd_kvstore_close(s);
  return pd_errf(err, errlen, lmdb_status(rc), "kvstore: %s: %s", cfg->dir, mdb_strerror(rc));
}

void pd_kvstore_close(pd_kvstore *s) {
  if (!s) return;
  if (s->env) mdb_env_close(s->env);
  pd_blockfile_close(s->file);
  free(s);
}

/* Keys to delete, gathered by a read pass and deleted after it. */
typedef struct key_list {
  pd_key128 *keys;
  size_t n, cap;
} key_list;

static int key_list_add(key_list *l, pd_key128 k) {
  if (l->n == l->cap) {
    size_t ncap = l->cap ? 2 * l->cap : 256;
    pd_key128 *nk = realloc(l->keys, ncap * sizeof *nk);
    if (!nk) return PD_ENOMEM;
    l->keys = nk;
    l->cap = ncap;
  }
  l->keys[l->n++] = k;
  return PD_OK;
}

static int delete_keys(pd_kvstore *s, const pd_key128 *keys, size_t n, int release,
                       size_t *n_deleted);

/* Deletes every entry whose key is not 16 bytes (no writer of ours made it). */
static int delete_odd_keys(pd_kvstore *s) {
  MDB_txn *txn;
  MDB_cursor *cur;
  int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
  if (rc) return lmdb_status(rc);
  if ((rc = mdb_cursor_open(txn, s->blocks, &cur))) {
    mdb_txn_abort(txn);
    return lmdb_status(rc);
  }
  MDB_val k, v;
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
       rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT))
    if (k.mv_size != 16 && (rc = mdb_cursor_del(cur, 0))) break;
  mdb_cursor_close(cur);
  if (rc != MDB_NOTFOUND) {
    mdb_txn_abort(txn);
    return lmdb_status(rc);
  }
  return lmdb_status(mdb_txn_commit(txn));
}

/* The pass at open: claims the block-file pages every index entry names (the free-page map is
 * not stored), and deletes the entries that cannot be served: an unreadable header, pages
 * outside the file or named twice (only a crash of the disk itself leaves those), and, when
 * asked, blocks of another fingerprint. */
static int check_index(pd_kvstore *s, int purge_foreign, char *err, size_t errlen) {
  key_list doomed = {0};
  MDB_txn *txn;
  MDB_cursor *cur;
  int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
  if (rc) return pd_errf(err, errlen, lmdb_status(rc), "kvstore: %s", mdb_strerror(rc));
  if ((rc = mdb_cursor_open(txn, s->blocks, &cur))) {
    mdb_txn_abort(txn);
    return pd_errf(err, errlen, lmdb_status(rc), "kvstore: %s", mdb_strerror(rc));
  }
  MDB_val k, v;
  int st = PD_OK;
  size_t odd_keys = 0;
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0 && st == PD_OK;
       rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    pd_kvstore_hdr h;
    int ok = k.mv_size == 16 && pd_kvstore_hdr_decode(v.mv_data, v.mv_size, &h) == 0;
    int foreign = ok && memcmp(h.fingerprint, s->fingerprint, 16) != 0;
    if (ok && !(foreign && purge_foreign) && extent_pages(&h) &&
        pd_blockfile_claim(s->file, h.payload_page, extent_pages(&h)) != PD_OK) {
      s->counters.bad_extents++;
      ok = 0;
    }
    if (k.mv_size != 16) {
      odd_keys++;
    } else if (!ok || (foreign && purge_foreign)) {
      st = key_list_add(&doomed, get_key(k.mv_data));
      if (foreign && purge_foreign) s->counters.foreign_purged++;
    }
  }
  mdb_cursor_close(cur);
  mdb_txn_abort(txn);
  if (st == PD_OK && rc != MDB_NOTFOUND) st = lmdb_status(rc);
  /* none of these claimed pages: deleting them must not free pages another entry holds */
  for (size_t i = 0; st == PD_OK && i < doomed.n; i += 4096) {
    size_t n = doomed.n - i < 4096 ? doomed.n - i : 4096;
    st = delete_keys(s, doomed.keys + i, n, 0, NULL);
  }
  if (st == PD_OK && odd_keys) st = delete_odd_keys(s);
  free(doomed.keys);
  if (st) return pd_errf(err, errlen, st, "kvstore: checking the index: %s", pd_strerror(st));
  return PD_OK;
}

/* Counters the read path bumps: reads may run on several threads (the writer's counters are its
 * own). */
#define COUNT(s, field, n) __atomic_fetch_add(&(s)->counters.field, (uint64_t)(n), __ATOMIC_RELAXED)

/* ---- blocks ------------------------------------------------------------------------------- */

static int injected_write_fault(pd_kvstore *s) {
  if (pd_fault_hit(PD_FAULT_MAP_FULL)) {
    s->counters.map_full++;
    return PD_EFULL;
  }
  if (pd_fault_hit(PD_FAULT_DISK_FULL)) return PD_ENOSPC;
  if (pd_fault_hit(PD_FAULT_DISK_IO)) return PD_EIO;
  return PD_OK;
}

/* The index's pages in use, in bytes: the tree pages and overflow pages of the two databases and
 * of LMDB's main one, and the two meta pages. Pages LMDB freed are not counted: it reuses them
 * before it grows its file (which never shrinks). *n_blocks (may be NULL): entries in "blocks".
 * One read transaction. */
static int index_stat(pd_kvstore *s, uint64_t *bytes, uint64_t *n_blocks) {
  MDB_stat st;
  MDB_txn *txn;
  int rc = mdb_env_stat(s->env, &st);
  if (rc || (rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn))) return lmdb_status(rc);
  uint64_t pages = 2 + st.ms_branch_pages + st.ms_leaf_pages + st.ms_overflow_pages;
  MDB_dbi dbis[2] = {s->meta, s->blocks}; /* blocks last: st holds its entries after the loop */
  for (int i = 0; i < 2 && rc == 0; i++)
    if ((rc = mdb_stat(txn, dbis[i], &st)) == 0)
      pages += st.ms_branch_pages + st.ms_leaf_pages + st.ms_overflow_pages;
  mdb_txn_abort(txn);
  if (rc) return lmdb_status(rc);
  *bytes = pages * st.ms_psize;
  if (n_blocks) *n_blocks = st.ms_entries;
  return PD_OK;
}

/* Pages blocks.dat may grow to: the budget less the index and room for the index to grow until
 * the next check (an eighth of it plus 64 KiB; the block file grows in sixteenths of its limit
 * at most, so the index grows little between two checks). */
static uint64_t file_limit_pages(pd_kvstore *s) {
  uint64_t in_use = 0;
  index_stat(s, &in_use, NULL); /* on an LMDB error: as if empty (the budget is then the file's) */
  uint64_t reserved = in_use + in_use / 8 + (64u << 10);
  return reserved >= s->budget_bytes ? 0 : (s->budget_bytes - reserved) / PD_BLOCKFILE_PAGE;
}

/* What an index entry names in blocks.dat: 0 pages if none. */
static void stored_extent(const MDB_val *v, uint64_t *page, uint64_t *n_pages) {
  pd_kvstore_hdr h;
  *page = *n_pages = 0;
  if (pd_kvstore_hdr_decode(v->mv_data, v->mv_size, &h) == 0 && extent_pages(&h))
    *page = h.payload_page, *n_pages = extent_pages(&h);
}

int pd_kvstore_put_batch(pd_kvstore *s, const pd_kvstore_block *blocks, size_t n) {
  for (size_t i = 0; i < n; i++) {
    const pd_kvstore_block *b = &blocks[i];
    if (b->n_tokens == 0 || b->n_tokens > b->block_tokens || !b->tokens ||
        (b->payload_bytes && !b->payload))
      return PD_EINVAL;
  }
  if (n == 0) return PD_OK;
  /* extents[i]: where block i's payload goes; old[i]: the pages its key named before */
  pd_blockfile_extent *extents = calloc(n, sizeof *extents);
  uint64_t *old = calloc(2 * n, sizeof *old);
  if (!extents || !old) {
    free(extents);
    free(old);
    return PD_ENOMEM;
  }
  /* 1. place and write the payloads */
  int rc = PD_OK;
  size_t placed = 0;
  uint64_t limit = file_limit_pages(s);
  for (; placed < n && rc == PD_OK; placed++) {
    const pd_kvstore_block *b = &blocks[placed];
    extents[placed] = (pd_blockfile_extent){0, b->payload, b->payload_bytes};
    if (b->payload_bytes)
      rc = pd_blockfile_alloc(s->file, pd_blockfile_pages(b->payload_bytes), limit,
                              &extents[placed].page);
    if (rc) break;
  }
  if (rc == PD_EFULL) s->counters.map_full++;
  if (rc == PD_OK) rc = pd_blockfile_write(s->file, extents, n);
  if (rc == PD_OK && s->durability != PD_KVSTORE_NOSYNC) rc = pd_blockfile_sync(s->file);
  if (rc == PD_OK) rc = injected_write_fault(s);
  /* 2. commit the index entries that name them */
  MDB_txn *txn = NULL;
  int mrc = 0;
  if (rc == PD_OK && (mrc = mdb_txn_begin(s->env, NULL, 0, &txn))) txn = NULL;
  uint64_t bytes = 0;
  for (size_t i = 0; rc == PD_OK && mrc == 0 && i < n; i++) {
    const pd_kvstore_block *b = &blocks[i];
    uint8_t kbuf[16];
    put_key(kbuf, b->key);
    MDB_val k = {16, kbuf}, v;
    if ((mrc = mdb_get(txn, s->blocks, &k, &v)) == 0)
      stored_extent(&v, &old[2 * i], &old[2 * i + 1]);
    else if (mrc != MDB_NOTFOUND)
      break;
    v = (MDB_val){PD_KVSTORE_HDR_BYTES + 4u * b->n_tokens, NULL};
    /* MDB_RESERVE: LMDB hands us the value's space in the map; we write it once, in place. */
    if ((mrc = mdb_put(txn, s->blocks, &k, &v, MDB_RESERVE))) break;
    uint8_t *dst = v.mv_data, *tdst = dst + PD_KVSTORE_HDR_BYTES;
    for (uint16_t t = 0; t < b->n_tokens; t++) put_u32(tdst + 4 * t, (uint32_t)b->tokens[t]);
    pd_kvstore_hdr h = {.version = PD_KVSTORE_FORMAT,
                        .dtype = b->dtype,
                        .flags = b->flags,
                        .block_tokens = b->block_tokens,
                        .n_tokens = b->n_tokens,
                        .payload_bytes = b->payload_bytes,
                        .parent = b->parent,
                        .checksum = body_checksum(tdst, b->n_tokens, b->payload, b->payload_bytes),
                        .namespace_id = b->namespace_id,
                        .payload_page = (uint32_t)extents[i].page};
    memcpy(h.fingerprint, s->fingerprint, 16);
    pd_kvstore_hdr_encode(&h, dst);
    bytes += 4u * b->n_tokens + b->payload_bytes;
  }
  if (txn) {
    if (mrc == 0)
      mrc = mdb_txn_commit(txn); /* frees txn, also when it fails */
    else
      mdb_txn_abort(txn);
    if (mrc == MDB_MAP_FULL) s->counters.map_full++;
  }
  if (mrc) rc = lmdb_status(mrc);
  /* 3. give back the pages nobody names: the new ones on failure, the replaced ones on success */
  for (size_t i = 0; i < placed; i++) {
    if (rc != PD_OK && blocks[i].payload_bytes)
      pd_blockfile_release(s->file, extents[i].page, pd_blockfile_pages(blocks[i].payload_bytes));
    if (rc == PD_OK && old[2 * i + 1]) pd_blockfile_release(s->file, old[2 * i], old[2 * i + 1]);
  }
  free(extents);
  free(old);
  if (rc) return rc;
  s->counters.puts += n;
  s->counters.put_bytes += bytes;
  return PD_OK;
}

/* After a read that failed its checksum (or met the end of blocks.dat): decides between a race
 * and corruption, holding the write transaction, so that no writer changes the index meanwhile.
 *  - The entry changed or went away since it was read (another thread deleted the block and the
 *    writer reused its pages, or replaced it): the read raced with that change. PD_ENOTFOUND.
 *  - It is unchanged: its pages are still its own and nobody may write them now, so the payload
 *    is read once more. A good second read is returned (PD_OK, r's buffers filled): the first
 *    read met pages on their way from one owner to the next and back (delete, reuse, delete,
 *    rewrite). Otherwise the block is corrupt: deleted, PD_ECORRUPT.
 * seen == NULL: the header did not decode; corrupt if it still does not. */
static int recheck(pd_kvstore *s, pd_kvstore_read *r, const pd_kvstore_hdr *seen) {
  uint8_t kbuf[16];
  put_key(kbuf, r->key);
  MDB_txn *txn;
  if (mdb_txn_begin(s->env, NULL, 0, &txn)) return PD_ECORRUPT;
  MDB_val k = {16, kbuf}, v;
  pd_kvstore_hdr now;
  int found = mdb_get(txn, s->blocks, &k, &v) == 0;
  int decodes = found && pd_kvstore_hdr_decode(v.mv_data, v.mv_size, &now) == 0;
  int same = seen ? decodes && now.checksum == seen->checksum && now.version == seen->version &&
                        now.payload_page == seen->payload_page
                  : found && !decodes;
  if (!same) {
    mdb_txn_abort(txn);
    COUNT(s, read_races, 1);
    return PD_ENOTFOUND;
  }
  if (seen && seen->version == 2 &&
      pd_blockfile_read(s->file, seen->payload_page, r->payload, seen->payload_bytes) == PD_OK &&
      read_checksum(r, seen) == seen->checksum) {
    mdb_txn_abort(txn);
    COUNT(s, read_races, 1);
    return PD_OK;
  }
  if (mdb_del(txn, s->blocks, &k, NULL) != 0)
    mdb_txn_abort(txn);
  else if (mdb_txn_commit(txn) == 0 && seen && extent_pages(seen))
    pd_blockfile_release(s->file, seen->payload_page, extent_pages(seen));
  COUNT(s, checksum_failures, 1);
  return PD_ECORRUPT;
}

int pd_kvstore_get_batch(pd_kvstore *s, pd_kvstore_read *reads, size_t n) {
  if (n == 0) return PD_OK;
  /* reqs[i]: block i's payload in blocks.dat (n_bytes 0: nothing to read there) */
  pd_blockfile_read_req *reqs = calloc(n, sizeof *reqs);
  if (!reqs) return PD_ENOMEM;
  MDB_txn *txn;
  int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
  if (rc) {
    free(reqs);
    return lmdb_status(rc);
  }
  for (size_t i = 0; i < n; i++) {
    pd_kvstore_read *r = &reads[i];
    COUNT(s, gets, 1);
    if (pd_fault_hit(PD_FAULT_DISK_IO)) {
      r->rc = PD_EIO;
      continue;
    }
    uint8_t kbuf[16];
    put_key(kbuf, r->key);
    MDB_val k = {16, kbuf}, v;
    if ((rc = mdb_get(txn, s->blocks, &k, &v))) {
      r->rc = lmdb_status(rc);
      continue;
    }
    r->rc = pd_kvstore_hdr_decode(v.mv_data, v.mv_size, &r->hdr);
    const pd_kvstore_hdr *h = &r->hdr;
    const uint8_t *tok = (const uint8_t *)v.mv_data + PD_KVSTORE_HDR_BYTES;
    if (r->rc == 0 && memcmp(h->fingerprint, s->fingerprint, 16) != 0) r->rc = PD_ENOTFOUND;
    if (r->rc == 0 && (h->n_tokens > r->max_tokens || h->payload_bytes > r->payload_cap))
      r->rc = PD_EFULL;
    if (r->rc == PD_ECORRUPT) r->hdr.version = 0; /* a header that does not decode */
    if (r->rc) continue;
    for (uint16_t t = 0; t < h->n_tokens; t++) r->tokens[t] = (int32_t)get_u32(tok + 4 * t);
    if (h->version == 1)
      memcpy(r->payload, tok + 4u * h->n_tokens, h->payload_bytes);
    else
      reqs[i] = (pd_blockfile_read_req){h->payload_page, r->payload, h->payload_bytes, PD_OK};
  }
  mdb_txn_abort(txn); /* the index entries are copied out: payloads are read without a txn */
  rc = pd_blockfile_read_many(s->file, reqs, n);
  for (size_t i = 0; i < n; i++) {
    pd_kvstore_read *r = &reads[i];
    if (rc == PD_OK && r->rc == PD_OK)
      r->rc = reqs[i].rc;
    else if (rc != PD_OK && r->rc == PD_OK && reqs[i].n_bytes)
      r->rc = rc;
    const pd_kvstore_hdr *h = &r->hdr;
    if ((r->rc == PD_OK || r->rc == PD_ECORRUPT) && (r->rc || read_checksum(r, h) != h->checksum))
      r->rc = recheck(s, r, h->version ? h : NULL);
    if (r->rc == PD_ENOTFOUND) {
      COUNT(s, misses, 1);
    } else if (r->rc == PD_OK) {
      COUNT(s, hits, 1);
      COUNT(s, get_bytes, 4u * h->n_tokens + h->payload_bytes);
    }
  }
  free(reqs);
  return PD_OK;
}

int pd_kvstore_get(pd_kvstore *s, pd_key128 key, pd_kvstore_hdr *hdr, int32_t *tokens,
                   size_t max_tokens, void *payload, size_t payload_cap) {
  pd_kvstore_read r = {.key = key,
                       .tokens = tokens,
                       .max_tokens = max_tokens,
                       .payload = payload,
                       .payload_cap = payload_cap};
  int rc = pd_kvstore_get_batch(s, &r, 1);
  *hdr = r.hdr;
  return rc ? rc : r.rc;
}

static int delete_keys(pd_kvstore *s, const pd_key128 *keys, size_t n, int release,
                       size_t *n_deleted) {
  uint64_t *freed = release ? malloc(2 * n * sizeof *freed + 1) : NULL;
  if (release && !freed) return PD_ENOMEM;
  MDB_txn *txn;
  int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
  if (rc) {
    free(freed);
    return lmdb_status(rc);
  }
  size_t done = 0;
  for (size_t i = 0; i < n; i++) {
    uint8_t kbuf[16];
    put_key(kbuf, keys[i]);
    MDB_val k = {16, kbuf}, v;
    rc = mdb_get(txn, s->blocks, &k, &v);
    if (rc == 0 && freed) stored_extent(&v, &freed[2 * done], &freed[2 * done + 1]);
    if (rc == 0) rc = mdb_del(txn, s->blocks, &k, NULL);
    if (rc == 0)
      done++;
    else if (rc != MDB_NOTFOUND)
      break;
    rc = 0;
  }
  if (rc)
    mdb_txn_abort(txn);
  else
    rc = mdb_txn_commit(txn);
  if (rc) {
    free(freed);
    return lmdb_status(rc);
  }
  for (size_t i = 0; freed && i < done; i++)
    if (freed[2 * i + 1]) pd_blockfile_release(s->file, freed[2 * i], freed[2 * i + 1]);
  free(freed);
  if (n_deleted) *n_deleted = done;
  return PD_OK;
}

int pd_kvstore_delete_batch(pd_kvstore *s, const pd_key128 *keys, size_t n, size_t *n_deleted) {
  size_t done = 0;
  int rc = delete_keys(s, keys, n, 1, &done);
  if (rc) return rc;
  s->counters.deletes += done;
  if (n_deleted) *n_deleted = done;
  /* LMDB reuses a page freed by transaction N only from transaction N + 2 on (N + 1 may still
   * see it through the previous meta page). One more small commit makes the index space just
   * freed usable by the caller's retry after PD_EFULL. */
  if (done > 0) {
    uint8_t epoch[8];
    put_u64(epoch, s->counters.deletes);
    return pd_kvstore_meta_put(s, "delete_epoch", epoch, sizeof epoch);
  }
  return PD_OK;
}

int pd_kvstore_scan(pd_kvstore *s, pd_kvstore_scan_fn fn, void *arg,
                    void (*progress)(void *arg, uint64_t n_done), void *progress_arg) {
  MDB_txn *txn;
  int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
  if (rc) return lmdb_status(rc);
  MDB_cursor *cur;
  if ((rc = mdb_cursor_open(txn, s->blocks, &cur))) {
    mdb_txn_abort(txn);
    return lmdb_status(rc);
  }
  int32_t tokens[65536 / 4];
  uint64_t n_done = 0;
  int ret = PD_OK;
  MDB_val k, v;
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
       rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    pd_kvstore_hdr h;
    if (k.mv_size != 16 || pd_kvstore_hdr_decode(v.mv_data, v.mv_size, &h) != 0 ||
        memcmp(h.fingerprint, s->fingerprint, 16) != 0) {
      s->counters.foreign_skipped++;
      continue;
    }
    const uint8_t *body = (const uint8_t *)v.mv_data + PD_KVSTORE_HDR_BYTES;
    for (uint16_t t = 0; t < h.n_tokens; t++) tokens[t] = (int32_t)get_u32(body + 4 * t);
    if ((ret = fn(arg, get_key(k.mv_data), &h, tokens)) != 0) break;
    if (progress && (++n_done & 0xffff) == 0) progress(progress_arg, n_done);
  }
  mdb_cursor_close(cur);
  mdb_txn_abort(txn);
  if (ret) return ret;
  return rc == MDB_NOTFOUND ? PD_OK : lmdb_status(rc);
}

/* ---- meta --------------------------------------------------------------------------------- */

int pd_kvstore_meta_put(pd_kvstore *s, const char *name, const void *val, size_t len) {
  int injected = injected_write_fault(s);
  if (injected != PD_OK) return injected;
  MDB_txn *txn;
  int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
  if (rc) return lmdb_status(rc);
  MDB_val k = {strlen(name), (void *)name}, v = {len, (void *)val};
  if ((rc = mdb_put(txn, s->meta, &k, &v, 0))) {
    mdb_txn_abort(txn);
    return lmdb_status(rc);
  }
  return lmdb_status(mdb_txn_commit(txn));
}

int pd_kvstore_meta_get(pd_kvstore *s, const char *name, void *buf, size_t cap, size_t *len) {
  MDB_txn *txn;
  int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
  if (rc) return lmdb_status(rc);
  MDB_val k = {strlen(name), (void *)name}, v;
  rc = mdb_get(txn, s->meta, &k, &v);
  int st = lmdb_status(rc);
  if (rc == 0) {
    *len = v.mv_size;
    if (v.mv_size > cap)
      st = PD_EFULL;
    else
      memcpy(buf, v.mv_data, v.mv_size);
  }
  mdb_txn_abort(txn);
  return st;
}

int pd_kvstore_meta_delete(pd_kvstore *s, const char *name) {
  MDB_txn *txn;
  int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
  if (rc) return lmdb_status(rc);
  MDB_val k = {strlen(name), (void *)name};
  if ((rc = mdb_del(txn, s->meta, &k, NULL))) {
    mdb_txn_abort(txn);
    return lmdb_status(rc);
  }
  return lmdb_status(mdb_txn_commit(txn));
}

/* ---- housekeeping ------------------------------------------------------------------------- */

int pd_kvstore_reader_check(pd_kvstore *s, int *n_cleared) {
  int dead = 0;
  int rc = mdb_reader_check(s->env, &dead);
  s->counters.stale_readers += (uint64_t)dead;
  if (n_cleared) *n_cleared = dead;
  return lmdb_status(rc);
}

int pd_kvstore_usage(pd_kvstore *s, uint64_t *n_blocks, uint64_t *used_bytes, uint64_t *map_bytes) {
  uint64_t index_used = 0, blocks = 0, file_used = 0;
  int rc = index_stat(s, &index_used, &blocks);
  if (rc) return rc;
  pd_blockfile_usage(s->file, &file_used, NULL);
  if (n_blocks) *n_blocks = blocks;
  if (used_bytes) *used_bytes = index_used + file_used * PD_BLOCKFILE_PAGE;
  if (map_bytes) *map_bytes = s->budget_bytes;
  return PD_OK;
}

void pd_kvstore_get_counters(const pd_kvstore *s, pd_kvstore_counters *out) {
  /* every field is a uint64_t; read each atomically, as the read path bumps them (COUNT) */
  _Static_assert(sizeof *out % sizeof(uint64_t) == 0, "counters are uint64_t fields");
  const uint64_t *src = (const uint64_t *)&s->counters;
  uint64_t *dst = (uint64_t *)out;
  for (size_t i = 0; i < sizeof *out / sizeof(uint64_t); i++)
    dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
}
