/*
 * pd_tenant.h -- tenants, their namespaces, grants and per-tier block limits.
 *
 * A namespace is the salt of a family of block keys: its root key k_0 = XXH3-128(salt ‖ model
 * fingerprint) starts every chain in it (prefix/pd_blockkey.h). Two prompts share KV only if they
 * are keyed in the same namespace, so isolation is by construction: a tenant's private namespace
 * has a random salt that never leaves the server, and a request names at most a shared namespace
 * that the admin granted to its tenant -- it can never supply a salt or another tenant's id.
 *
 * Every tenant has exactly one private namespace, created with it. Shared namespaces are owned by
 * no tenant; a tenant may use one only after pd_tenants_grant. Block accounting is per tenant and
 * per tier: the tenant that inserted a block is charged for it. A limit of 0 means unlimited.
 *
 * Ids are small integers, stable while the object lives; removed ids are not reused until the
 * table is rebuilt, so a stale id refers to nothing rather than to a newcomer.
 */
#ifndef PD_TENANT_H
#define PD_TENANT_H

#include <stddef.h>
#include <stdint.h>

#include "pd_key.h"

#define PD_TIERS     3 /* 0 device, 1 host, 2 disk */
#define PD_NS_SHARED (-1)

typedef struct pd_namespace {
  char name[64];
  uint8_t salt[16];
  pd_key128 root_key;
  int32_t owner; /* tenant id for a private namespace, PD_NS_SHARED for a shared one */
  int active;
} pd_namespace;

typedef struct pd_tenant {
  char name[64];
  uint32_t private_ns;
  uint32_t *granted; /* (n_granted) shared namespace ids */
  uint32_t n_granted, cap_granted;
  uint64_t used[PD_TIERS];  /* blocks charged to this tenant per tier */
  uint64_t limit[PD_TIERS]; /* 0 = unlimited */
  int active;
} pd_tenant;

typedef struct pd_tenants {
  uint8_t fingerprint[16];
  pd_tenant *tenants; /* (n_tenants) indexed by tenant id */
  uint32_t n_tenants, cap_tenants;
  pd_namespace *ns; /* (n_ns) indexed by namespace id */
  uint32_t n_ns, cap_ns;
} pd_tenants;

int pd_tenants_init(pd_tenants *t, const uint8_t fingerprint[16]);
void pd_tenants_free(pd_tenants *t);

/* Adds a tenant with a private namespace salted by salt (the caller draws it at random and
 * persists it). Returns 0 and the id, PD_EEXIST for a taken name, PD_EINVAL for a bad name. */
int pd_tenants_add(pd_tenants *t, const char *name, const uint8_t salt[16], uint32_t *tenant_id);
/* Marks a tenant removed (its blocks must be dropped by the caller first: used[] must be 0). */
int pd_tenants_remove(pd_tenants *t, uint32_t tenant_id);
int pd_tenants_find(const pd_tenants *t, const char *name, uint32_t *tenant_id);

int pd_tenants_add_shared(pd_tenants *t, const char *name, const uint8_t salt[16], uint32_t *ns_id);
int pd_tenants_find_ns(const pd_tenants *t, const char *name, uint32_t *ns_id);
int pd_tenants_grant(pd_tenants *t, uint32_t tenant_id, uint32_t ns_id);
int pd_tenants_revoke(pd_tenants *t, uint32_t tenant_id, uint32_t ns_id);

/* 1 if tenant_id may read and write namespace ns_id (its own private one or a granted one). */
int pd_tenants_may_use(const pd_tenants *t, uint32_t tenant_id, uint32_t ns_id);

int pd_tenants_set_limit(pd_tenants *t, uint32_t tenant_id, int tier, uint64_t blocks);

/* Borrowed pointers, valid until the next add; NULL for an unknown or removed id. */
pd_tenant *pd_tenants_get(const pd_tenants *t, uint32_t tenant_id);
const pd_namespace *pd_tenants_ns(const pd_tenants *t, uint32_t ns_id);

#endif /* PD_TENANT_H */
