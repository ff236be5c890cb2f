/* pd_tenant.c -- see pd_tenant.h. Tables are small (tenants, not requests), so lookups by name
 * are linear. */
#include "pd_tenant.h"

#include <stdlib.h>
#include <string.h>

#include "pd_blockkey.h"
#include "pd_err.h"
#include "pd_fault.h"

static void *grow_array(void *arr, uint32_t *cap, size_t elem) {
  uint32_t ncap = *cap ? *cap * 2 : 8;
  void *n = pd_fault_hit(PD_FAULT_ALLOC) ? NULL : realloc(arr, ncap * elem);
  if (n) {
    memset((char *)n + *cap * elem, 0, (ncap - *cap) * elem);
    *cap = ncap;
  }
  return n;
}

int pd_tenants_init(pd_tenants *t, const uint8_t fingerprint[16]) {
  memset(t, 0, sizeof *t);
  memcpy(t->fingerprint, fingerprint, 16);
  return PD_OK;
}

void pd_tenants_free(pd_tenants *t) {
  for (uint32_t i = 0; i < t->n_tenants; i++) free(t->tenants[i].granted);
  free(t->tenants);
  free(t->ns);
  memset(t, 0, sizeof *t);
}

static int valid_name(const char *name) {
  size_t n = strlen(name);
  if (n == 0 || n >= 64) return 0;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)name[i] < 0x21 || (unsigned char)name[i] > 0x7e) return 0;
  return 1;
}

static int add_ns(pd_tenants *t, const char *name, const uint8_t salt[16], int32_t owner,
                  uint32_t *ns_id) {
  if (t->n_ns == t->cap_ns) {
    pd_namespace *n = grow_array(t->ns, &t->cap_ns, sizeof *n);
    if (!n) return PD_ENOMEM;
    t->ns = n;
  }
  pd_namespace *ns = &t->ns[t->n_ns];
  memset(ns, 0, sizeof *ns);
  strcpy(ns->name, name);
  memcpy(ns->salt, salt, 16);
  ns->root_key = pd_blockkey_root(salt, 16, t->fingerprint);
  ns->owner = owner;
  ns->active = 1;
  *ns_id = t->n_ns++;
  return PD_OK;
}

int pd_tenants_find(const pd_tenants *t, const char *name, uint32_t *tenant_id) {
  for (uint32_t i = 0; i < t->n_tenants; i++)
    if (t->tenants[i].active && !strcmp(t->tenants[i].name, name)) {
      *tenant_id = i;
      return PD_OK;
    }
  return PD_ENOTFOUND;
}

int pd_tenants_find_ns(const pd_tenants *t, const char *name, uint32_t *ns_id) {
  for (uint32_t i = 0; i < t->n_ns; i++)
    if (t->ns[i].active && t->ns[i].owner == PD_NS_SHARED && !strcmp(t->ns[i].name, name)) {
      *ns_id = i;
      return PD_OK;
    }
  return PD_ENOTFOUND;
}

int pd_tenants_add(pd_tenants *t, const char *name, const uint8_t salt[16], uint32_t *tenant_id) {
  uint32_t dummy;
  if (!valid_name(name)) return PD_EINVAL;
  if (pd_tenants_find(t, name, &dummy) == 0) return PD_EEXIST;
  if (t->n_tenants == t->cap_tenants) {
    pd_tenant *n = grow_array(t->tenants, &t->cap_tenants, sizeof *n);
    if (!n) return PD_ENOMEM;
    t->tenants = n;
  }
  uint32_t ns_id;
  int rc = add_ns(t, name, salt, (int32_t)t->n_tenants, &ns_id);
  if (rc) return rc;
  pd_tenant *tn = &t->tenants[t->n_tenants];
  memset(tn, 0, sizeof *tn);
  strcpy(tn->name, name);
  tn->private_ns = ns_id;
  tn->active = 1;
  *tenant_id = t->n_tenants++;
  return PD_OK;
}

pd_tenant *pd_tenants_get(const pd_tenants *t, uint32_t tenant_id) {
  if (tenant_id >= t->n_tenants || !t->tenants[tenant_id].active) return NULL;
  return &t->tenants[tenant_id];
}

const pd_namespace *pd_tenants_ns(const pd_tenants *t, uint32_t ns_id) {
  if (ns_id >= t->n_ns || !t->ns[ns_id].active) return NULL;
  return &t->ns[ns_id];
}

int pd_tenants_remove(pd_tenants *t, uint32_t tenant_id) {
  pd_tenant *tn = pd_tenants_get(t, tenant_id);
  if (!tn) return PD_ENOTFOUND;
  for (int i = 0; i < PD_TIERS; i++)
    if (tn->used[i]) return PD_EBUSY;
  t->ns[tn->private_ns].active = 0;
  free(tn->granted);
  tn->granted = NULL;
  tn->n_granted = tn->cap_granted = 0;
  tn->active = 0;
  return PD_OK;
}

int pd_tenants_add_shared(pd_tenants *t, const char *name, const uint8_t salt[16],
                          uint32_t *ns_id) {
  uint32_t dummy;
  if (!valid_name(name)) return PD_EINVAL;
  if (pd_tenants_find_ns(t, name, &dummy) == 0) return PD_EEXIST;
  return add_ns(t, name, salt, PD_NS_SHARED, ns_id);
}

int pd_tenants_grant(pd_tenants *t, uint32_t tenant_id, uint32_t ns_id) {
  pd_tenant *tn = pd_tenants_get(t, tenant_id);
  const pd_namespace *ns = pd_tenants_ns(t, ns_id);
  if (!tn || !ns) return PD_ENOTFOUND;
  if (ns->owner != PD_NS_SHARED) return PD_EPERM; /* private namespaces are never shared */
  for (uint32_t i = 0; i < tn->n_granted; i++)
    if (tn->granted[i] == ns_id) return PD_OK;
  if (tn->n_granted == tn->cap_granted) {
    uint32_t *n = grow_array(tn->granted, &tn->cap_granted, sizeof *n);
    if (!n) return PD_ENOMEM;
    tn->granted = n;
  }
  tn->granted[tn->n_granted++] = ns_id;
  return PD_OK;
}

int pd_tenants_revoke(pd_tenants *t, uint32_t tenant_id, uint32_t ns_id) {
  pd_tenant *tn = pd_tenants_get(t, tenant_id);
  if (!tn) return PD_ENOTFOUND;
  for (uint32_t i = 0; i < tn->n_granted; i++)
    if (tn->granted[i] == ns_id) {
      tn->granted[i] = tn->granted[--tn->n_granted];
      return PD_OK;
    }
  return PD_ENOTFOUND;
}

int pd_tenants_may_use(const pd_tenants *t, uint32_t tenant_id, uint32_t ns_id) {
  const pd_tenant *tn = pd_tenants_get(t, tenant_id);
  const pd_namespace *ns = pd_tenants_ns(t, ns_id);
  if (!tn || !ns) return 0;
  if (ns->owner == (int32_t)tenant_id) return 1;
  if (ns->owner != PD_NS_SHARED) return 0;
  for (uint32_t i = 0; i < tn->n_granted; i++)
    if (tn->granted[i] == ns_id) return 1;
  return 0;
}

int pd_tenants_set_limit(pd_tenants *t, uint32_t tenant_id, int tier, uint64_t blocks) {
  pd_tenant *tn = pd_tenants_get(t, tenant_id);
  if (!tn) return PD_ENOTFOUND;
  if (tier < 0 || tier >= PD_TIERS) return PD_EINVAL;
  tn->limit[tier] = blocks;
  return PD_OK;
}
