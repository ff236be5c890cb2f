/*
 * pd_tenantdb.c -- see pd_tenantdb.h.
 */
#include "pd_tenantdb.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "pd_err.h"
#include "pd_sha256.h"

int pd_tenantdb_valid_name(const char *name) {
  size_t n = strlen(name);
  if (n == 0 || n > 63) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = name[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
          c == '_' || c == '-'))
      return 0;
  }
  return 1;
}

int pd_random_bytes(void *buf, size_t n) {
  uint8_t *p = buf;
  while (n > 0) {
    ssize_t got = getrandom(p, n, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      return PD_ESYS;
    }
    p += got, n -= (size_t)got;
  }
  return PD_OK;
}

static void to_hex(const uint8_t *b, size_t n, char *out) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[b[i] >> 4];
    out[2 * i + 1] = digits[b[i] & 15];
  }
  out[2 * n] = 0;
}

static int from_hex(const char *s, uint8_t *b, size_t n) {
  if (strlen(s) != 2 * n) return PD_EINVAL;
  for (size_t i = 0; i < 2 * n; i++) {
    char c = s[i];
    int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (v < 0) return PD_EINVAL;
    if (i % 2 == 0)
      b[i / 2] = (uint8_t)(v << 4);
    else
      b[i / 2] |= (uint8_t)v;
  }
  return PD_OK;
}

static int64_t unix_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int new_key(char key[PD_API_KEY_LEN + 1], uint8_t digest[32]) {
  uint8_t raw[24];
  int rc = pd_random_bytes(raw, sizeof raw);
  if (rc) return rc;
  memcpy(key, "pfx-", 4);
  to_hex(raw, sizeof raw, key + 4);
  pd_sha256_digest(key, PD_API_KEY_LEN, digest);
  return PD_OK;
}

/* ---- records --------------------------------------------------------------------------------- */

static pd_tenant_rec *add_rec(pd_tenantdb *db) {
  if (db->n_recs == db->cap_recs) {
    uint32_t ncap = db->cap_recs ? 2 * db->cap_recs : 8;
    pd_tenant_rec *r = realloc(db->recs, ncap * sizeof *r);
    if (!r) return NULL;
    db->recs = r;
    db->cap_recs = ncap;
  }
  pd_tenant_rec *r = &db->recs[db->n_recs++];
  memset(r, 0, sizeof *r);
  return r;
}

static pd_shared_ns *add_shared(pd_tenantdb *db) {
  if (db->n_shared == db->cap_shared) {
    uint32_t ncap = db->cap_shared ? 2 * db->cap_shared : 8;
    pd_shared_ns *s = realloc(db->shared, ncap * sizeof *s);
    if (!s) return NULL;
    db->shared = s;
    db->cap_shared = ncap;
  }
  pd_shared_ns *s = &db->shared[db->n_shared++];
  memset(s, 0, sizeof *s);
  return s;
}

static int add_grant(pd_tenant_rec *r, const char *ns) {
  for (uint32_t i = 0; i < r->n_grants; i++)
    if (!strcmp(r->grants[i], ns)) return PD_EEXIST;
  char(*g)[64] = realloc(r->grants, (r->n_grants + 1) * sizeof *g);
  if (!g) return PD_ENOMEM;
  r->grants = g;
  snprintf(r->grants[r->n_grants++], 64, "%s", ns);
  return PD_OK;
}

pd_tenant_rec *pd_tenantdb_find(const pd_tenantdb *db, const char *name) {
  for (uint32_t i = 0; i < db->n_recs; i++)
    if (!strcmp(db->recs[i].name, name)) return &db->recs[i];
  return NULL;
}

const pd_shared_ns *pd_tenantdb_find_shared(const pd_tenantdb *db, const char *name) {
  for (uint32_t i = 0; i < db->n_shared; i++)
    if (!strcmp(db->shared[i].name, name)) return &db->shared[i];
  return NULL;
}

pd_tenant_rec *pd_tenantdb_authenticate(const pd_tenantdb *db, const char *key) {
  uint8_t d[32];
  pd_sha256_digest(key, strlen(key), d);
  pd_tenant_rec *found = NULL;
  for (uint32_t i = 0; i < db->n_recs; i++) {
    uint8_t diff = 0;
    for (int j = 0; j < 32; j++) diff |= (uint8_t)(d[j] ^ db->recs[i].key_sha256[j]);
    if (diff == 0) found = &db->recs[i]; /* no early exit: every record is compared */
  }
  return found;
}

/* ---- file ------------------------------------------------------------------------------------ */

static int parse_line(pd_tenantdb *db, char *line) {
  char *f[12];
  int n = 0;
  for (char *save = NULL, *tok = strtok_r(line, " \n", &save); tok && n < 12;
       tok = strtok_r(NULL, " \n", &save))
    f[n++] = tok;
  if (n == 0) return PD_OK;
  if (!strcmp(f[0], "tenant") && (n == 10 || n == 12)) {
    if (!pd_tenantdb_valid_name(f[1]) || pd_tenantdb_find(db, f[1])) return PD_ECORRUPT;
    pd_tenant_rec *r = add_rec(db);
    if (!r) return PD_ENOMEM;
    snprintf(r->name, sizeof r->name, "%s", f[1]);
    if (from_hex(f[2], r->salt, 16) || from_hex(f[3], r->key_sha256, 32)) {
      db->n_recs--;
      return PD_ECORRUPT;
    }
    r->created_ms = strtoll(f[4], NULL, 10);
    for (int t = 0; t < 3; t++) r->limits.max_blocks[t] = strtoull(f[5 + t], NULL, 10);
    r->limits.max_concurrent = (uint32_t)strtoul(f[8], NULL, 10);
    r->limits.max_context = (uint32_t)strtoul(f[9], NULL, 10);
    if (n == 12) {
      r->limits.tokens_per_minute = (uint32_t)strtoul(f[10], NULL, 10);
      r->limits.requests_per_minute = (uint32_t)strtoul(f[11], NULL, 10);
    }
    return PD_OK;
  }
  if (!strcmp(f[0], "shared") && n == 3) {
    if (!pd_tenantdb_valid_name(f[1]) || pd_tenantdb_find_shared(db, f[1])) return PD_ECORRUPT;
    pd_shared_ns *s = add_shared(db);
    if (!s) return PD_ENOMEM;
    snprintf(s->name, sizeof s->name, "%s", f[1]);
    if (from_hex(f[2], s->salt, 16)) {
      db->n_shared--;
      return PD_ECORRUPT;
    }
    return PD_OK;
  }
  if (!strcmp(f[0], "grant") && n == 3) {
    pd_tenant_rec *r = pd_tenantdb_find(db, f[1]);
    if (!r || !pd_tenantdb_find_shared(db, f[2])) return PD_ECORRUPT;
    return add_grant(r, f[2]) == PD_ENOMEM ? PD_ENOMEM : PD_OK;
  }
  return PD_ECORRUPT;
}

int pd_tenantdb_open(pd_tenantdb *db, const char *path, char *err, size_t errlen) {
  memset(db, 0, sizeof *db);
  if (!path) return PD_OK;
  db->path = strdup(path);
  if (!db->path) return PD_ENOMEM;
  FILE *f = fopen(path, "r");
  if (!f) {
    if (errno == ENOENT) return PD_OK;
    snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
    pd_tenantdb_close(db);
    return PD_EIO;
  }
  char line[1024];
  int lineno = 0, rc = PD_OK;
  while (fgets(line, sizeof line, f)) {
    lineno++;
    if (lineno == 1) {
      if (strcmp(line, "prefixd-tenants 1\n")) {
        rc = PD_ECORRUPT;
        break;
      }
      continue;
    }
    if ((rc = parse_line(db, line))) break;
  }
  fclose(f);
  if (rc) {
    snprintf(err, errlen, "%s line %d: %s", path, lineno,
             rc == PD_ENOMEM ? "out of memory" : "malformed record");
    pd_tenantdb_close(db);
  }
  return rc;
}

void pd_tenantdb_close(pd_tenantdb *db) {
  for (uint32_t i = 0; i < db->n_recs; i++) free(db->recs[i].grants);
  free(db->recs);
  free(db->shared);
  free(db->path);
  memset(db, 0, sizeof *db);
}

int pd_tenantdb_save(pd_tenantdb *db) {
  if (!db->path) return PD_OK;
  size_t n = strlen(db->path) + 5;
  char *tmp = malloc(n);
  if (!tmp) return PD_ENOMEM;
  snprintf(tmp, n, "%s.tmp", db->path);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  FILE *f = fd < 0 ? NULL : fdopen(fd, "w");
  if (!f) {
    int no_memory = errno == ENOMEM; /* fdopen allocates the FILE */
    if (fd >= 0) close(fd), unlink(tmp);
    free(tmp);
    return no_memory ? PD_ENOMEM : PD_EIO;
  }
  fprintf(f, "prefixd-tenants 1\n");
  for (uint32_t i = 0; i < db->n_recs; i++) {
    const pd_tenant_rec *r = &db->recs[i];
    char salt[33], key[65];
    to_hex(r->salt, 16, salt);
    to_hex(r->key_sha256, 32, key);
    fprintf(f, "tenant %s %s %s %lld %llu %llu %llu %u %u", r->name, salt, key,
            (long long)r->created_ms, (unsigned long long)r->limits.max_blocks[0],
            (unsigned long long)r->limits.max_blocks[1],
            (unsigned long long)r->limits.max_blocks[2], r->limits.max_concurrent,
            r->limits.max_context);
    if (r->limits.tokens_per_minute || r->limits.requests_per_minute)
      fprintf(f, " %u %u", r->limits.tokens_per_minute, r->limits.requests_per_minute);
    fputc('\n', f);
  }
  for (uint32_t i = 0; i < db->n_shared; i++) {
    char salt[33];
    to_hex(db->shared[i].salt, 16, salt);
    fprintf(f, "shared %s %s\n", db->shared[i].name, salt);
  }
  for (uint32_t i = 0; i < db->n_recs; i++)
    for (uint32_t g = 0; g < db->recs[i].n_grants; g++)
      fprintf(f, "grant %s %s\n", db->recs[i].name, db->recs[i].grants[g]);
  int rc = fflush(f) || fsync(fileno(f)) ? PD_EIO : PD_OK;
  if (fclose(f)) rc = PD_EIO;
  if (!rc && rename(tmp, db->path)) rc = PD_EIO;
  if (rc) unlink(tmp);
  free(tmp);
  return rc;
}

/* ---- mutations ------------------------------------------------------------------------------- */

int pd_tenantdb_create(pd_tenantdb *db, const char *name, const pd_tenant_limits *limits,
                       char key[PD_API_KEY_LEN + 1]) {
  if (!pd_tenantdb_valid_name(name)) return PD_EINVAL;
  if (pd_tenantdb_find(db, name)) return PD_EEXIST;
  uint8_t salt[16], digest[32];
  int rc = pd_random_bytes(salt, sizeof salt);
  if (rc || (rc = new_key(key, digest))) return rc;
  pd_tenant_rec *r = add_rec(db);
  if (!r) return PD_ENOMEM;
  snprintf(r->name, sizeof r->name, "%s", name);
  memcpy(r->salt, salt, 16);
  memcpy(r->key_sha256, digest, 32);
  r->created_ms = unix_ms();
  if (limits) r->limits = *limits;
  if ((rc = pd_tenantdb_save(db))) db->n_recs--;
  return rc;
}

int pd_tenantdb_delete(pd_tenantdb *db, const char *name) {
  pd_tenant_rec *r = pd_tenantdb_find(db, name);
  if (!r) return PD_ENOTFOUND;
  pd_tenant_rec saved = *r;
  uint32_t at = (uint32_t)(r - db->recs);
  memmove(r, r + 1, (db->n_recs - at - 1) * sizeof *r);
  db->n_recs--;
  int rc = pd_tenantdb_save(db);
  if (rc) { /* put it back where it was */
    memmove(&db->recs[at + 1], &db->recs[at], (db->n_recs - at) * sizeof *r);
    db->recs[at] = saved;
    db->n_recs++;
    return rc;
  }
  free(saved.grants);
  return PD_OK;
}

int pd_tenantdb_set_limits(pd_tenantdb *db, const char *name, const pd_tenant_limits *limits) {
  pd_tenant_rec *r = pd_tenantdb_find(db, name);
  if (!r) return PD_ENOTFOUND;
  pd_tenant_limits old = r->limits;
  r->limits = *limits;
  int rc = pd_tenantdb_save(db);
  if (rc) r->limits = old;
  return rc;
}

int pd_tenantdb_rotate(pd_tenantdb *db, const char *name, char key[PD_API_KEY_LEN + 1]) {
  pd_tenant_rec *r = pd_tenantdb_find(db, name);
  if (!r) return PD_ENOTFOUND;
  uint8_t digest[32], old[32];
  int rc = new_key(key, digest);
  if (rc) return rc;
  memcpy(old, r->key_sha256, 32);
  memcpy(r->key_sha256, digest, 32);
  if ((rc = pd_tenantdb_save(db))) memcpy(r->key_sha256, old, 32);
  return rc;
}

int pd_tenantdb_grant(pd_tenantdb *db, const char *tenant, const char *ns, int *created) {
  *created = 0;
  pd_tenant_rec *r = pd_tenantdb_find(db, tenant);
  if (!r) return PD_ENOTFOUND;
  if (!pd_tenantdb_valid_name(ns)) return PD_EINVAL;
  if (!pd_tenantdb_find_shared(db, ns)) {
    pd_shared_ns *s = add_shared(db);
    if (!s) return PD_ENOMEM;
    snprintf(s->name, sizeof s->name, "%s", ns);
    int rc = pd_random_bytes(s->salt, 16);
    if (rc) {
      db->n_shared--;
      return rc;
    }
    *created = 1;
  }
  int rc = add_grant(r, ns);
  if (rc == PD_EEXIST) return PD_OK; /* granting twice is granting */
  if (!rc && (rc = pd_tenantdb_save(db))) r->n_grants--;
  if (rc && *created) {
    db->n_shared--;
    *created = 0;
  }
  return rc;
}

int pd_tenantdb_revoke(pd_tenantdb *db, const char *tenant, const char *ns) {
  pd_tenant_rec *r = pd_tenantdb_find(db, tenant);
  if (!r) return PD_ENOTFOUND;
  for (uint32_t i = 0; i < r->n_grants; i++)
    if (!strcmp(r->grants[i], ns)) {
      char saved[64];
      memcpy(saved, r->grants[i], 64);
      memmove(r->grants[i], r->grants[i + 1], (r->n_grants - i - 1) * 64);
      r->n_grants--;
      int rc = pd_tenantdb_save(db);
      if (rc) { /* restore (order does not matter) */
        memcpy(r->grants[r->n_grants++], saved, 64);
      }
      return rc;
    }
  return PD_ENOTFOUND;
}
