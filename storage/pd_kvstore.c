/*
 * pd_kvstore.c -- the LMDB disk tier. See pd_kvstore.h for the format and the contract.
 *
 * Why LMDB: a copy-on-write B+tree in one memory-mapped file gives atomic multi-block commits
 * (a spill of many blocks is one transaction), crash safety without a log to replay, readers that
 * never block the writer, and zero-copy reads. The price is a fixed map size, which is exactly
 * the disk tier's byte budget; MDB_MAP_FULL is how the budget is enforced.
 *
 * Every LMDB or errno code is translated to a pd_status by lmdb_status() below. Fault injection
 * (common/pd_fault.h) stands in for a full disk, an I/O error and a full map at the points where
 * they would surface: before a commit.
 */
#include "pd_kvstore.h"

#include <errno.h>
#include <lmdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <xxhash.h>

#include "pd_err.h"
#include "pd_fault.h"

struct pd_kvstore {
  MDB_env *env;
  MDB_dbi blocks; /* key (16 B) -> header ‖ tokens ‖ payload */
  MDB_dbi meta;   /* name -> bytes */
  uint8_t fingerprint[16];
  pd_kvstore_counters counters;
};

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
  if (!err || errlen == 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

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
  put_u16(out + 4, PD_KVSTORE_FORMAT);
  out[6] = h->dtype;
  out[7] = h->flags;
  put_u16(out + 8, h->block_tokens);
  put_u16(out + 10, h->n_tokens);
  put_u32(out + 12, h->payload_bytes);
  memcpy(out + 16, h->fingerprint, 16);
  put_key(out + 32, h->parent);
  put_u64(out + 48, h->checksum);
  put_u32(out + 56, h->namespace_id);
}

int pd_kvstore_hdr_decode(const uint8_t *val, size_t value_len, pd_kvstore_hdr *h) {
  if (value_len < PD_KVSTORE_HDR_BYTES) return PD_ECORRUPT;
  if (get_u32(val) != PD_KVSTORE_MAGIC) return PD_ECORRUPT;
  if (get_u16(val + 4) != PD_KVSTORE_FORMAT) return PD_EUNSUPPORTED;
  h->dtype = val[6];
  h->flags = val[7];
  h->block_tokens = get_u16(val + 8);
  h->n_tokens = get_u16(val + 10);
  h->payload_bytes = get_u32(val + 12);
  memcpy(h->fingerprint, val + 16, 16);
  h->parent = get_key(val + 32);
  h->checksum = get_u64(val + 48);
  h->namespace_id = get_u32(val + 56);
  if (h->block_tokens == 0 || h->n_tokens == 0 || h->n_tokens > h->block_tokens) return PD_ECORRUPT;
  uint64_t want = (uint64_t)PD_KVSTORE_HDR_BYTES + 4ull * h->n_tokens + h->payload_bytes;
  if (want != value_len) return PD_ECORRUPT;
  return PD_OK;
}

/* XXH3-64 over tokens ‖ payload, as stored (tokens little-endian int32). */
static uint64_t body_checksum(const uint8_t *body, size_t len) {
  return XXH3_64bits(body, len);
}

/* ---- open / close ------------------------------------------------------------------------- */

static int purge_foreign(pd_kvstore *s, char *err, size_t errlen);

int pd_kvstore_open(const pd_kvstore_config *cfg, pd_kvstore **out, char *err, size_t errlen) {
  *out = NULL;
  if (!cfg || !cfg->dir || cfg->map_bytes < (1u << 20)) {
    set_err(err, errlen, "kvstore: need a directory and a map size of at least 1 MiB");
    return PD_EINVAL;
  }
  if (mkdir(cfg->dir, 0700) != 0 && errno != EEXIST) {
    int e = errno;
    set_err(err, errlen, "kvstore: cannot create %s: %s", cfg->dir, strerror(e));
    return pd_err_from_errno(e);
  }
  pd_kvstore *s = calloc(1, sizeof *s);
  if (!s) return PD_ENOMEM;
  memcpy(s->fingerprint, cfg->fingerprint, 16);
  int rc = mdb_env_create(&s->env);
  if (rc) goto fail_lmdb;
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
  /* The format version lives in meta; a store from a newer format is refused whole. */
  MDB_val k = {6, "format"}, v;
  rc = mdb_get(txn, s->meta, &k, &v);
  if (rc == MDB_NOTFOUND) {
    uint8_t fmt[4];
    put_u32(fmt, PD_KVSTORE_FORMAT);
    MDB_val nv = {4, fmt};
    rc = mdb_put(txn, s->meta, &k, &nv, 0);
  } else if (rc == 0 && (v.mv_size != 4 || get_u32(v.mv_data) != PD_KVSTORE_FORMAT)) {
    mdb_txn_abort(txn);
    set_err(err, errlen, "kvstore: %s holds store format %u, this build reads format %u", cfg->dir,
            v.mv_size == 4 ? get_u32(v.mv_data) : 0, PD_KVSTORE_FORMAT);
    pd_kvstore_close(s);
    return PD_EUNSUPPORTED;
  }
  if (rc == 0) {
    MDB_val fk = {11, "fingerprint"}, fv = {16, s->fingerprint};
    rc = mdb_put(txn, s->meta, &fk, &fv, 0);
  }
  if (rc || (rc = mdb_txn_commit(txn))) {
    if (rc) mdb_txn_abort(txn);
    goto fail_lmdb;
  }
  if (cfg->foreign == PD_KVSTORE_FOREIGN_PURGE) {
    int prc = purge_foreign(s, err, errlen);
    if (prc) {
      pd_kvstore_close(s);
      return prc;
    }
  }
  *out = s;
  return PD_OK;

fail_lmdb:
  set_err(err, errlen, "kvstore: %s: %s", cfg->dir, mdb_strerror(rc));
  pd_kvstore_close(s);
  return lmdb_status(rc);
}

void pd_kvstore_close(pd_kvstore *s) {
  if (!s) return;
  if (s->env) mdb_env_close(s->env);
  free(s);
}

/* Deletes every block whose header is unreadable or of another fingerprint, in batches. */
static int purge_foreign(pd_kvstore *s, char *err, size_t errlen) {
  for (;;) {
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc) goto fail;
    MDB_cursor *cur;
    if ((rc = mdb_cursor_open(txn, s->blocks, &cur))) {
      mdb_txn_abort(txn);
      goto fail;
    }
    MDB_val k, v;
    size_t deleted = 0;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0 && deleted < 4096;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
      pd_kvstore_hdr h;
      if (k.mv_size == 16 && pd_kvstore_hdr_decode(v.mv_data, v.mv_size, &h) == 0 &&
          memcmp(h.fingerprint, s->fingerprint, 16) == 0)
        continue;
      if ((rc = mdb_cursor_del(cur, 0))) break;
      deleted++;
    }
    mdb_cursor_close(cur);
    if (rc != 0 && rc != MDB_NOTFOUND) {
      mdb_txn_abort(txn);
      goto fail;
    }
    if ((rc = mdb_txn_commit(txn))) goto fail;
    s->counters.foreign_purged += deleted;
    if (deleted < 4096) return PD_OK;
    continue;
  fail:
    set_err(err, errlen, "kvstore: purging foreign blocks: %s", mdb_strerror(rc));
    return lmdb_status(rc);
  }
}

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

int pd_kvstore_put_batch(pd_kvstore *s, const pd_kvstore_block *blocks, size_t n) {
  for (size_t i = 0; i < n; i++) {
    const pd_kvstore_block *b = &blocks[i];
    if (b->n_tokens == 0 || b->n_tokens > b->block_tokens || !b->tokens ||
        (b->payload_bytes && !b->payload))
      return PD_EINVAL;
  }
  MDB_txn *txn;
  int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
  if (rc) return lmdb_status(rc);
  uint64_t bytes = 0;
  for (size_t i = 0; i < n; i++) {
    const pd_kvstore_block *b = &blocks[i];
    size_t body = 4u * b->n_tokens + b->payload_bytes;
    uint8_t kbuf[16];
    put_key(kbuf, b->key);
    MDB_val k = {16, kbuf}, v = {PD_KVSTORE_HDR_BYTES + body, NULL};
    /* MDB_RESERVE: LMDB hands us the value's space in the map; we write it once, in place. */
    if ((rc = mdb_put(txn, s->blocks, &k, &v, MDB_RESERVE))) break;
    uint8_t *dst = v.mv_data, *bdst = dst + PD_KVSTORE_HDR_BYTES;
    for (uint16_t t = 0; t < b->n_tokens; t++) put_u32(bdst + 4 * t, (uint32_t)b->tokens[t]);
    if (b->payload_bytes) memcpy(bdst + 4u * b->n_tokens, b->payload, b->payload_bytes);
    pd_kvstore_hdr h = {.dtype = b->dtype,
                        .flags = b->flags,
                        .block_tokens = b->block_tokens,
                        .n_tokens = b->n_tokens,
                        .payload_bytes = b->payload_bytes,
                        .parent = b->parent,
                        .checksum = body_checksum(bdst, body),
                        .namespace_id = b->namespace_id};
    memcpy(h.fingerprint, s->fingerprint, 16);
    pd_kvstore_hdr_encode(&h, dst);
    bytes += body;
  }
  int injected = rc == 0 ? injected_write_fault(s) : PD_OK;
  if (rc != 0 || injected != PD_OK) {
    mdb_txn_abort(txn);
    if (rc == MDB_MAP_FULL) s->counters.map_full++;
    return rc ? lmdb_status(rc) : injected;
  }
  if ((rc = mdb_txn_commit(txn))) {
    if (rc == MDB_MAP_FULL) s->counters.map_full++;
    return lmdb_status(rc);
  }
  s->counters.puts += n;
  s->counters.put_bytes += bytes;
  return PD_OK;
}

/* Deletes one key in its own transaction (after a checksum failure). */
static void delete_one(pd_kvstore *s, const uint8_t kbuf[16]) {
  MDB_txn *txn;
  if (mdb_txn_begin(s->env, NULL, 0, &txn)) return;
  MDB_val k = {16, (void *)kbuf};
  if (mdb_del(txn, s->blocks, &k, NULL) == 0)
    mdb_txn_commit(txn);
  else
    mdb_txn_abort(txn);
}

int pd_kvstore_get(pd_kvstore *s, pd_key128 key, pd_kvstore_hdr *hdr, int32_t *tokens,
                   size_t max_tokens, void *payload, size_t payload_cap) {
  s->counters.gets++;
  if (pd_fault_hit(PD_FAULT_DISK_IO)) return PD_EIO;
  MDB_txn *txn;
  int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
  if (rc) return lmdb_status(rc);
  uint8_t kbuf[16];
  put_key(kbuf, key);
  MDB_val k = {16, kbuf}, v;
  rc = mdb_get(txn, s->blocks, &k, &v);
  if (rc) {
    mdb_txn_abort(txn);
    if (rc == MDB_NOTFOUND) s->counters.misses++;
    return lmdb_status(rc);
  }
  int st = pd_kvstore_hdr_decode(v.mv_data, v.mv_size, hdr);
  const uint8_t *body = (const uint8_t *)v.mv_data + PD_KVSTORE_HDR_BYTES;
  size_t body_len = v.mv_size - PD_KVSTORE_HDR_BYTES;
  if (st == 0 && memcmp(hdr->fingerprint, s->fingerprint, 16) != 0) st = PD_ENOTFOUND;
  if (st == 0 && body_checksum(body, body_len) != hdr->checksum) st = PD_ECORRUPT;
  if (st == 0 && (hdr->n_tokens > max_tokens || hdr->payload_bytes > payload_cap)) st = PD_EFULL;
  if (st == 0) {
    for (uint16_t t = 0; t < hdr->n_tokens; t++) tokens[t] = (int32_t)get_u32(body + 4 * t);
    memcpy(payload, body + 4u * hdr->n_tokens, hdr->payload_bytes);
  }
  mdb_txn_abort(txn);
  if (st == PD_ECORRUPT) {
    s->counters.checksum_failures++;
    delete_one(s, kbuf);
  } else if (st == PD_ENOTFOUND) {
    s->counters.misses++;
  } else if (st == 0) {
    s->counters.hits++;
    s->counters.get_bytes += body_len;
  }
  return st;
}

int pd_kvstore_delete_batch(pd_kvstore *s, const pd_key128 *keys, size_t n, size_t *n_deleted) {
  MDB_txn *txn;
  int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
  if (rc) return lmdb_status(rc);
  size_t done = 0;
  for (size_t i = 0; i < n; i++) {
    uint8_t kbuf[16];
    put_key(kbuf, keys[i]);
    MDB_val k = {16, kbuf};
    rc = mdb_del(txn, s->blocks, &k, NULL);
    if (rc == 0)
      done++;
    else if (rc != MDB_NOTFOUND)
      break;
    rc = 0;
  }
  if (rc) {
    mdb_txn_abort(txn);
    return lmdb_status(rc);
  }
  if ((rc = mdb_txn_commit(txn))) return lmdb_status(rc);
  s->counters.deletes += done;
  if (n_deleted) *n_deleted = done;
  /* LMDB reuses a page freed by transaction N only from transaction N + 2 on (N + 1 may still
   * see it through the previous meta page). One more small commit makes the space just freed
   * usable by the caller's retry after PD_EFULL. */
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
  MDB_envinfo info;
  MDB_stat st;
  int rc = mdb_env_info(s->env, &info);
  if (!rc) rc = mdb_env_stat(s->env, &st);
  if (rc) return lmdb_status(rc);
  MDB_txn *txn;
  if ((rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn))) return lmdb_status(rc);
  MDB_stat bst;
  rc = mdb_stat(txn, s->blocks, &bst);
  mdb_txn_abort(txn);
  if (rc) return lmdb_status(rc);
  if (n_blocks) *n_blocks = bst.ms_entries;
  if (used_bytes) *used_bytes = (uint64_t)(info.me_last_pgno + 1) * st.ms_psize;
  if (map_bytes) *map_bytes = info.me_mapsize;
  return PD_OK;
}

void pd_kvstore_get_counters(const pd_kvstore *s, pd_kvstore_counters *out) {
  *out = s->counters;
}
