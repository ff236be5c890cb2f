/*
 * pd_tenantdb.h -- the daemon's tenant registry: names, API key digests, private-namespace
 * salts, limits and namespace grants, persisted in one file so tenants survive a restart.
 *
 * Keys: an API key is "pfx-" and 48 hex digits (192 random bits from getrandom). Only its
 * SHA-256 is kept, in memory and on disk; the key itself is returned once, at creation or
 * rotation. Authentication hashes the presented key and compares digests in constant time.
 *
 * Salts: each tenant's private namespace is salted with 16 random bytes drawn at creation and
 * kept here, so a restarted daemon derives the same root keys (and finds the same cached blocks
 * on disk) while no request can ever name or guess another tenant's salt. Shared namespaces
 * (created by the first grant) have their own salts.
 *
 * File: a text file, one record per line, replaced atomically (written to "<path>.tmp", fsync'd,
 * renamed), so a crash leaves the old or the new registry, never half of one:
 *
 *     prefixd-tenants 1
 *     tenant NAME SALT_HEX KEY_SHA256_HEX CREATED_MS MAX_DEV MAX_HOST MAX_DISK MAX_CONC MAX_CTX
 *            [TOKENS_PER_MIN REQUESTS_PER_MIN]
 *     shared NAME SALT_HEX
 *     grant TENANT NAMESPACE
 *
 * The two rate limits are written only when one is set, so a registry without them stays readable
 * by a daemon that predates them.
 *
 * Names: 1 to 63 characters of [A-Za-z0-9._-]. Threads: none; the engine thread owns it.
 */
#ifndef PD_TENANTDB_H
#define PD_TENANTDB_H

#include <stddef.h>
#include <stdint.h>

#define PD_API_KEY_LEN 52 /* "pfx-" + 48 hex */

typedef struct pd_tenant_limits {
  uint64_t max_blocks[3]; /* per tier; 0 = unlimited */
  uint32_t max_concurrent;
  uint32_t max_context;
  uint32_t tokens_per_minute;   /* computed tokens (uncached prompt + generated); 0 = no limit */
  uint32_t requests_per_minute; /* Generate and Warm requests; 0 = no limit */
} pd_tenant_limits;

typedef struct pd_tenant_rec {
  char name[64];
  uint8_t salt[16];
  uint8_t key_sha256[32];
  int64_t created_ms; /* unix ms */
  pd_tenant_limits limits;
  char (*grants)[64]; /* (n_grants) shared namespace names */
  uint32_t n_grants;
} pd_tenant_rec;

typedef struct pd_shared_ns {
  char name[64];
  uint8_t salt[16];
} pd_shared_ns;

typedef struct pd_tenantdb {
  char *path;          /* NULL: in memory only */
  pd_tenant_rec *recs; /* (n_recs) */
  uint32_t n_recs, cap_recs;
  pd_shared_ns *shared; /* (n_shared) */
  uint32_t n_shared, cap_shared;
} pd_tenantdb;

/* 1 if name is a valid tenant or namespace name. */
int pd_tenantdb_valid_name(const char *name);
/* Fills buf with n random bytes (getrandom). */
int pd_random_bytes(void *buf, size_t n);

/* Opens path (NULL: memory only); a missing file is an empty registry. PD_ECORRUPT (with a line
 * number in err) for a malformed file. */
int pd_tenantdb_open(pd_tenantdb *db, const char *path, char *err, size_t errlen);
void pd_tenantdb_close(pd_tenantdb *db);

/* Writes the file (atomically). Every mutator below calls it, and undoes its change in memory
 * if the write fails. */
int pd_tenantdb_save(pd_tenantdb *db);

/* Creates a tenant; key gets its API key (PD_API_KEY_LEN + 1 bytes). PD_EEXIST, PD_EINVAL. */
int pd_tenantdb_create(pd_tenantdb *db, const char *name, const pd_tenant_limits *limits,
                       char key[PD_API_KEY_LEN + 1]);
int pd_tenantdb_delete(pd_tenantdb *db, const char *name);
int pd_tenantdb_set_limits(pd_tenantdb *db, const char *name, const pd_tenant_limits *limits);
int pd_tenantdb_rotate(pd_tenantdb *db, const char *name, char key[PD_API_KEY_LEN + 1]);
/* Grants the shared namespace ns (created, with a fresh salt, if new). *created set to 1 then. */
int pd_tenantdb_grant(pd_tenantdb *db, const char *tenant, const char *ns, int *created);
int pd_tenantdb_revoke(pd_tenantdb *db, const char *tenant, const char *ns);

/* Borrowed; NULL if absent. Valid until the next mutation. */
pd_tenant_rec *pd_tenantdb_find(const pd_tenantdb *db, const char *name);
const pd_shared_ns *pd_tenantdb_find_shared(const pd_tenantdb *db, const char *name);
/* The tenant whose key this is, or NULL. Compares every digest in constant time. */
pd_tenant_rec *pd_tenantdb_authenticate(const pd_tenantdb *db, const char *key);

#endif /* PD_TENANTDB_H */
