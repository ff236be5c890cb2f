/*
 * kvctl_tenant.c -- `tenant add|ls|rm|limits|rotate-key|grant|revoke` (alias `tenants`, and
 * the older verbs list, create, delete, rotate): the Admin service, so every one of them
 * needs the admin key.
 *
 * Design notes. API keys are printed alone on stdout (KEY=$(kvctl tenant add acme) works);
 * on a terminal a reminder that the key is shown once goes to stderr. SetLimits replaces all of
 * a tenant's limits at once, so `tenant limits NAME --max-concurrent 8` first reads the
 * current limits (ListTenants) and changes only what was given; without flags it shows them.
 * `tenant rm` is destructive (the key stops working, the cached blocks go) and asks first on a
 * terminal, like evict.
 */
#include <stdlib.h>
#include <string.h>

#include "kvctl.h"

const char kv_help_tenant[] =
    "usage: kvctl tenant COMMAND [ARGS]      (alias: kvctl tenants; needs the admin key)\n"
    "\n"
    "  add NAME [LIMITS]         create a tenant; prints its API key, shown only this once\n"
    "  ls                        tenants, their limits and granted namespaces\n"
    "  rm NAME                   delete a tenant: its key stops working, its blocks are evicted\n"
    "  limits NAME [LIMITS]      show a tenant's limits, or change the ones given\n"
    "  rotate-key NAME           a new API key; the old one stops working at once\n"
    "  grant NAME NAMESPACE      let the tenant use a shared namespace (created on first grant)\n"
    "  revoke NAME NAMESPACE     take it back\n"
    "\n"
    "LIMITS (a number, or 0 or \"unlimited\"):\n"
    "  --max-device-blocks N  --max-host-blocks N  --max-disk-blocks N\n"
    "  --max-concurrent N (requests at once)  --max-context N (tokens per request)\n"
    "  --tokens-per-minute N (computed: uncached prompt + generated; cached tokens are free)\n"
    "  --requests-per-minute N (Generate and Warm)\n"
    "\n"
    "Older names still work: list, create, delete, rotate. `kvctl help tenants` explains\n"
    "tenants and namespaces; `kvctl tenant COMMAND --help` each command. --json on every one.\n";

static const char help_add[] =
    "usage: kvctl tenant add NAME [--max-device-blocks N] [--max-host-blocks N]\n"
    "                            [--max-disk-blocks N] [--max-concurrent N] [--max-context N]\n"
    "                            [--tokens-per-minute N] [--requests-per-minute N]\n"
    "\n"
    "Creates a tenant and prints its API key, alone on stdout; the daemon keeps only its hash,\n"
    "so this is the only time it is shown. Names are 1 to 63 of A-Z a-z 0-9 . _ -.\n"
    "Limits: 0 or \"unlimited\" (the default) means no limit.\n"
    "\n"
    "  --json   {\"name\", \"api_key\", \"tenant\": TENANT} (kvctl help json)\n";

static const char help_ls[] = "usage: kvctl tenant ls [--json]\n"
                              "\n"
                              "The tenants: name, creation time, limits, granted namespaces.\n"
                              "\n"
                              "  --json   {\"tenants\": [TENANT]} (kvctl help json)\n";

static const char help_rm[] =
    "usage: kvctl tenant rm NAME [--yes] [--json]\n"
    "\n"
    "Deletes a tenant: its API key stops working and its cached blocks are evicted from every\n"
    "tier. Asks first on a terminal unless --yes.\n"
    "\n"
    "  --json   {\"name\", \"deleted\": true}\n";

static const char help_limits[] =
    "usage: kvctl tenant limits NAME [--max-device-blocks N] [--max-host-blocks N]\n"
    "                               [--max-disk-blocks N] [--max-concurrent N] [--max-context N]\n"
    "                               [--tokens-per-minute N] [--requests-per-minute N]\n"
    "\n"
    "Without flags, shows the tenant's limits. With flags, changes those and keeps the others.\n"
    "0 or \"unlimited\" removes a limit.\n"
    "\n"
    "  --json   {\"name\", \"limits\": LIMITS} (kvctl help json)\n";

static const char help_rotate[] =
    "usage: kvctl tenant rotate-key NAME [--json]\n"
    "\n"
    "Gives the tenant a new API key and prints it, alone on stdout; the old key stops working\n"
    "at once.\n"
    "\n"
    "  --json   {\"name\", \"api_key\"}\n";

static const char help_grant[] =
    "usage: kvctl tenant grant NAME NAMESPACE [--json]\n"
    "       kvctl tenant revoke NAME NAMESPACE [--json]\n"
    "\n"
    "Grants a shared namespace to a tenant (created on the first grant), or takes it back.\n"
    "Tenants granted the same namespace share its cached prefixes when their requests name it\n"
    "(warm, lookup, gen --namespace NS).\n"
    "\n"
    "  --json   {\"tenant\", \"namespace\", \"granted\": true|false}\n";

/* ---- limits ---------------------------------------------------------------------------------- */

/* The LIMITS flags: strings until parsed, NULL when not given. */
typedef struct limit_flags {
  const char *device, *host, *disk, *concurrent, *context, *tokens_pm, *requests_pm;
} limit_flags;

#define LIMIT_OPTS(f)                                                                              \
  {"max-device-blocks", 0, KV_OPT_STRING, &(f).device, NULL},                                      \
      {"max-host-blocks", 0, KV_OPT_STRING, &(f).host, NULL},                                      \
      {"max-disk-blocks", 0, KV_OPT_STRING, &(f).disk, NULL},                                      \
      {"max-concurrent", 0, KV_OPT_STRING, &(f).concurrent, NULL},                                 \
      {"max-context", 0, KV_OPT_STRING, &(f).context, NULL},                                       \
      {"tokens-per-minute", 0, KV_OPT_STRING, &(f).tokens_pm, NULL}, {                             \
    "requests-per-minute", 0, KV_OPT_STRING, &(f).requests_pm, NULL                                \
  }

static int any_limit(const limit_flags *f) {
  return f->device || f->host || f->disk || f->concurrent || f->context || f->tokens_pm ||
         f->requests_pm;
}

/* Applies the given flags to l. 0, or KV_EXIT_USAGE after reporting. */
static int apply_limits(const kv_ctx *ctx, const limit_flags *f, Prefixd__V1__TenantLimits *l) {
  struct {
    const char *flag, *value;
    uint64_t max;
    uint64_t *dest64;
    uint32_t *dest32;
  } items[] = {
      {"--max-device-blocks", f->device, UINT64_MAX / 2, &l->max_blocks->device, NULL},
      {"--max-host-blocks", f->host, UINT64_MAX / 2, &l->max_blocks->host, NULL},
      {"--max-disk-blocks", f->disk, UINT64_MAX / 2, &l->max_blocks->disk, NULL},
      {"--max-concurrent", f->concurrent, UINT32_MAX, NULL, &l->max_concurrent_requests},
      {"--max-context", f->context, UINT32_MAX, NULL, &l->max_context_tokens},
      {"--tokens-per-minute", f->tokens_pm, UINT32_MAX, NULL, &l->max_tokens_per_minute},
      {"--requests-per-minute", f->requests_pm, UINT32_MAX, NULL, &l->max_requests_per_minute},
  };
  for (size_t i = 0; i < sizeof items / sizeof *items; i++) {
    if (!items[i].value) continue;
    uint64_t v = 0;
    if (strcmp(items[i].value, "unlimited") && kv_parse_uint(items[i].value, items[i].max, &v))
      return kv_usage(ctx, "%s expects a number or 'unlimited', got '%s'", items[i].flag,
                      items[i].value);
    if (items[i].dest64)
      *items[i].dest64 = v;
    else
      *items[i].dest32 = (uint32_t)v;
  }
  return 0;
}

static void json_limits(kv_json *j, const Prefixd__V1__TenantLimits *l) {
  kv_json_object(j, "limits");
  kv_json_object(j, "max_blocks");
  const Prefixd__V1__TierCounts *b = l ? l->max_blocks : NULL;
  kv_json_uint(j, "device", b ? b->device : 0);
  kv_json_uint(j, "host", b ? b->host : 0);
  kv_json_uint(j, "disk", b ? b->disk : 0);
  kv_json_end(j);
  kv_json_uint(j, "max_concurrent_requests", l ? l->max_concurrent_requests : 0);
  kv_json_uint(j, "max_context_tokens", l ? l->max_context_tokens : 0);
  kv_json_uint(j, "max_tokens_per_minute", l ? l->max_tokens_per_minute : 0);
  kv_json_uint(j, "max_requests_per_minute", l ? l->max_requests_per_minute : 0);
  kv_json_end(j);
}

static void json_tenant(kv_json *j, const char *key, const Prefixd__V1__Tenant *t) {
  kv_json_object(j, key);
  kv_json_string(j, "name", t->name);
  kv_json_int(j, "created_unix_ms", t->created_unix_ms);
  json_limits(j, t->limits);
  kv_json_array(j, "granted_namespaces");
  for (size_t g = 0; g < t->n_granted_namespaces; g++)
    kv_json_string(j, NULL, t->granted_namespaces[g]);
  kv_json_end(j);
  kv_json_end(j);
}

static char *limit_text(char *buf, size_t cap, uint64_t v) {
  if (v)
    kv_fmt_count(buf, cap, v);
  else
    snprintf(buf, cap, "-");
  return buf;
}

static void print_limits(const char *name, const Prefixd__V1__TenantLimits *l) {
  char a[32], b[32], c[32], d[32], e[32], tpm[32], rpm[32], safe[256];
  const Prefixd__V1__TierCounts *m = l ? l->max_blocks : NULL;
  kv_one_line(name, 0, safe, sizeof safe);
  printf("%s: max blocks device %s, host %s, disk %s; max concurrent requests %s; max context "
         "tokens %s; per minute %s tokens, %s requests  (- = unlimited)\n",
         safe, limit_text(a, sizeof a, m ? m->device : 0), limit_text(b, sizeof b, m ? m->host : 0),
         limit_text(c, sizeof c, m ? m->disk : 0),
         limit_text(d, sizeof d, l ? l->max_concurrent_requests : 0),
         limit_text(e, sizeof e, l ? l->max_context_tokens : 0),
         limit_text(tpm, sizeof tpm, l ? l->max_tokens_per_minute : 0),
         limit_text(rpm, sizeof rpm, l ? l->max_requests_per_minute : 0));
}

/* ---- the subcommands ------------------------------------------------------------------------- */

static void print_key(const kv_ctx *ctx, const char *name, const char *key) {
  printf("%s\n", key);
  if (ctx->stdout_tty) {
    char safe[256];
    kv_one_line(name, 0, safe, sizeof safe);
    fprintf(stderr, "(the API key of %s: it is shown only this once)\n", safe);
  }
}

static int tenant_add(kv_ctx *ctx, int argc, char **argv) {
  limit_flags f = {0};
  const kv_opt opts[] = {LIMIT_OPTS(f), {0}};
  const char *pos[1];
  int n_pos, rc = kv_parse(ctx, help_add, argc, argv, opts, pos, 1, &n_pos);
  if (rc) return rc == KV_PARSE_HELP ? KV_EXIT_OK : rc;
  if (n_pos != 1) return kv_usage(ctx, "give the new tenant's name");
  Prefixd__V1__TierCounts max_blocks = PREFIXD__V1__TIER_COUNTS__INIT;
  Prefixd__V1__TenantLimits limits = PREFIXD__V1__TENANT_LIMITS__INIT;
  limits.max_blocks = &max_blocks;
  if ((rc = apply_limits(ctx, &f, &limits))) return rc;
  pd_client *c;
  if ((rc = kv_connect(ctx, &c))) return rc;
  Prefixd__V1__CreateTenantRequest req = PREFIXD__V1__CREATE_TENANT_REQUEST__INIT;
  req.name = (char *)pos[0];
  req.limits = &limits;
  Prefixd__V1__CreateTenantResponse *r;
  if ((rc = pd_client_create_tenant(c, &req, &r))) return kv_call_failed(ctx, rc);
  if (ctx->json) {
    kv_json j;
    kv_json_init(&j, stdout, 1);
    kv_json_object(&j, NULL);
    kv_json_string(&j, "name", r->tenant ? r->tenant->name : pos[0]);
    kv_json_string(&j, "api_key", r->api_key);
    if (r->tenant)
      json_tenant(&j, "tenant", r->tenant);
    else
      kv_json_null(&j, "tenant");
    kv_json_end(&j);
  } else {
    print_key(ctx, pos[0], r->api_key);
  }
  protobuf_c_message_free_unpacked(&r->base, NULL);
  return KV_EXIT_OK;
}

static int list_tenants(kv_ctx *ctx, Prefixd__V1__ListTenantsResponse **out) {
  pd_client *c;
  int rc = kv_connect(ctx, &c);
  if (rc) return rc;
  Prefixd__V1__ListTenantsRequest req = PREFIXD__V1__LIST_TENANTS_REQUEST__INIT;
  if ((rc = pd_client_list_tenants(c, &req, out))) return kv_call_failed(ctx, rc);
  return 0;
}

static int tenant_ls(kv_ctx *ctx, int argc, char **argv) {
  const char *pos[1];
  int n_pos, rc = kv_parse(ctx, help_ls, argc, argv, NULL, pos, 0, &n_pos);
  if (rc) return rc == KV_PARSE_HELP ? KV_EXIT_OK : rc;
  Prefixd__V1__ListTenantsResponse *r;
  if ((rc = list_tenants(ctx, &r))) return rc;
  if (ctx->json) {
    kv_json j;
    kv_json_init(&j, stdout, 1);
    kv_json_object(&j, NULL);
    kv_json_array(&j, "tenants");
    for (size_t i = 0; i < r->n_tenants; i++) json_tenant(&j, NULL, r->tenants[i]);
    kv_json_end(&j);
    kv_json_end(&j);
  } else if (r->n_tenants == 0) {
    printf("no tenants (without tenants and an admin key, prefixd serves one, \"default\")\n");
  } else {
    static const char *const headers[] = {"NAME",     "CREATED",    "MAX DEVICE", "MAX HOST",
                                          "MAX DISK", "CONCURRENT", "CONTEXT",    "TOKENS/MIN",
                                          "REQS/MIN", "NAMESPACES"};
    kv_table *t = kv_table_new(headers, 10);
    if (!t) {
      protobuf_c_message_free_unpacked(&r->base, NULL);
      kv_error("out of memory");
      return KV_EXIT_ERROR;
    }
    for (int col = 2; col < 9; col++) kv_table_align_right(t, col);
    kv_table_flex(t, 9, 10);
    for (size_t i = 0; i < r->n_tenants; i++) {
      const Prefixd__V1__Tenant *tn = r->tenants[i];
      const Prefixd__V1__TenantLimits *l = tn->limits;
      const Prefixd__V1__TierCounts *m = l ? l->max_blocks : NULL;
      char when[40], a[32], b[32], c[32], d[32], e[32], tpm[32], rpm[32], grants[1024] = "";
      kv_table_add(t, KV_CYAN, "%s", tn->name);
      kv_fmt_time(when, sizeof when, tn->created_unix_ms);
      kv_table_add(t, KV_PLAIN, "%.16s", when); /* to the minute */
      kv_table_add(t, KV_PLAIN, "%s", limit_text(a, sizeof a, m ? m->device : 0));
      kv_table_add(t, KV_PLAIN, "%s", limit_text(b, sizeof b, m ? m->host : 0));
      kv_table_add(t, KV_PLAIN, "%s", limit_text(c, sizeof c, m ? m->disk : 0));
      kv_table_add(t, KV_PLAIN, "%s", limit_text(d, sizeof d, l ? l->max_concurrent_requests : 0));
      kv_table_add(t, KV_PLAIN, "%s", limit_text(e, sizeof e, l ? l->max_context_tokens : 0));
      kv_table_add(t, KV_PLAIN, "%s",
                   limit_text(tpm, sizeof tpm, l ? l->max_tokens_per_minute : 0));
      kv_table_add(t, KV_PLAIN, "%s",
                   limit_text(rpm, sizeof rpm, l ? l->max_requests_per_minute : 0));
      for (size_t g = 0; g < tn->n_granted_namespaces; g++) {
        strncat(grants, g ? ", " : "", sizeof grants - strlen(grants) - 1);
        strncat(grants, tn->granted_namespaces[g], sizeof grants - strlen(grants) - 1);
      }
      kv_table_add(t, KV_PLAIN, "%s", grants[0] ? grants : "-");
    }
    kv_table_print(t, stdout, kv_terminal_width());
    kv_table_free(t);
  }
  protobuf_c_message_free_unpacked(&r->base, NULL);
  return KV_EXIT_OK;
}

static int tenant_rm(kv_ctx *ctx, int argc, char **argv) {
  const char *pos[1];
  int n_pos, rc = kv_parse(ctx, help_rm, argc, argv, NULL, pos, 1, &n_pos);
  if (rc) return rc == KV_PARSE_HELP ? KV_EXIT_OK : rc;
  if (n_pos != 1) return kv_usage(ctx, "which tenant? give its name");
  char safe[128], question[256];
  kv_one_line(pos[0], 64, safe, sizeof safe);
  snprintf(question, sizeof question,
           "delete tenant %s? its API key stops working and its cached blocks are evicted", safe);
  if (!kv_confirm(ctx, question)) {
    kv_error("tenant rm: not confirmed, nothing deleted");
    return KV_EXIT_ERROR;
  }
  pd_client *c;
  if ((rc = kv_connect(ctx, &c))) return rc;
  Prefixd__V1__DeleteTenantRequest req = PREFIXD__V1__DELETE_TENANT_REQUEST__INIT;
  req.name = (char *)pos[0];
  Prefixd__V1__DeleteTenantResponse *r;
  if ((rc = pd_client_delete_tenant(c, &req, &r))) return kv_call_failed(ctx, rc);
  protobuf_c_message_free_unpacked(&r->base, NULL);
  if (ctx->json) {
    kv_json j;
    kv_json_init(&j, stdout, 1);
    kv_json_object(&j, NULL);
    kv_json_string(&j, "name", pos[0]);
    kv_json_bool(&j, "deleted", 1);
    kv_json_end(&j);
  } else {
    printf("deleted tenant %s\n", safe);
  }
  return KV_EXIT_OK;
}

static int tenant_limits(kv_ctx *ctx, int argc, char **argv) {
  limit_flags f = {0};
  const kv_opt opts[] = {LIMIT_OPTS(f), {0}};
  const char *pos[1];
  int n_pos, rc = kv_parse(ctx, help_limits, argc, argv, opts, pos, 1, &n_pos);
  if (rc) return rc == KV_PARSE_HELP ? KV_EXIT_OK : rc;
  if (n_pos != 1) return kv_usage(ctx, "which tenant? give its name");
  Prefixd__V1__ListTenantsResponse *r;
  if ((rc = list_tenants(ctx, &r))) return rc;
  const Prefixd__V1__Tenant *tn = NULL;
  for (size_t i = 0; i < r->n_tenants && !tn; i++)
    if (!strcmp(r->tenants[i]->name, pos[0])) tn = r->tenants[i];
  if (!tn) {
    protobuf_c_message_free_unpacked(&r->base, NULL);
    kv_error("NOT_FOUND: no tenant '%s'", pos[0]);
    return KV_EXIT_ERROR;
  }
  /* the current limits, changed where a flag says so */
  Prefixd__V1__TierCounts max_blocks = PREFIXD__V1__TIER_COUNTS__INIT;
  Prefixd__V1__TenantLimits limits = PREFIXD__V1__TENANT_LIMITS__INIT;
  if (tn->limits) {
    if (tn->limits->max_blocks) max_blocks = *tn->limits->max_blocks;
    limits.max_concurrent_requests = tn->limits->max_concurrent_requests;
    limits.max_context_tokens = tn->limits->max_context_tokens;
    limits.max_tokens_per_minute = tn->limits->max_tokens_per_minute;
    limits.max_requests_per_minute = tn->limits->max_requests_per_minute;
  }
  limits.max_blocks = &max_blocks;
  protobuf_c_message_free_unpacked(&r->base, NULL);
  if ((rc = apply_limits(ctx, &f, &limits))) return rc;
  if (any_limit(&f)) {
    pd_client *c;
    if ((rc = kv_connect(ctx, &c))) return rc;
    Prefixd__V1__SetLimitsRequest req = PREFIXD__V1__SET_LIMITS_REQUEST__INIT;
    req.name = (char *)pos[0];
    req.limits = &limits;
    Prefixd__V1__SetLimitsResponse *sr;
    if ((rc = pd_client_set_limits(c, &req, &sr))) return kv_call_failed(ctx, rc);
    protobuf_c_message_free_unpacked(&sr->base, NULL);
  }
  if (ctx->json) {
    kv_json j;
    kv_json_init(&j, stdout, 1);
    kv_json_object(&j, NULL);
    kv_json_string(&j, "name", pos[0]);
    json_limits(&j, &limits);
    kv_json_end(&j);
  } else {
    print_limits(pos[0], &limits);
  }
  return KV_EXIT_OK;
}

static int tenant_rotate(kv_ctx *ctx, int argc, char **argv) {
  const char *pos[1];
  int n_pos, rc = kv_parse(ctx, help_rotate, argc, argv, NULL, pos, 1, &n_pos);
  if (rc) return rc == KV_PARSE_HELP ? KV_EXIT_OK : rc;
  if (n_pos != 1) return kv_usage(ctx, "which tenant? give its name");
  pd_client *c;
  if ((rc = kv_connect(ctx, &c))) return rc;
  Prefixd__V1__RotateKeyRequest req = PREFIXD__V1__ROTATE_KEY_REQUEST__INIT;
  req.name = (char *)pos[0];
  Prefixd__V1__RotateKeyResponse *r;
  if ((rc = pd_client_rotate_key(c, &req, &r))) return kv_call_failed(ctx, rc);
  if (ctx->json) {
    kv_json j;
    kv_json_init(&j, stdout, 1);
    kv_json_object(&j, NULL);
    kv_json_string(&j, "name", pos[0]);
    kv_json_string(&j, "api_key", r->api_key);
    kv_json_end(&j);
  } else {
    print_key(ctx, pos[0], r->api_key);
  }
  protobuf_c_message_free_unpacked(&r->base, NULL);
  return KV_EXIT_OK;
}

static int tenant_grant(kv_ctx *ctx, int argc, char **argv, int grant) {
  const char *pos[2];
  int n_pos, rc = kv_parse(ctx, help_grant, argc, argv, NULL, pos, 2, &n_pos);
  if (rc) return rc == KV_PARSE_HELP ? KV_EXIT_OK : rc;
  if (n_pos != 2) return kv_usage(ctx, "give the tenant's name and the namespace");
  pd_client *c;
  if ((rc = kv_connect(ctx, &c))) return rc;
  if (grant) {
    Prefixd__V1__GrantNamespaceRequest req = PREFIXD__V1__GRANT_NAMESPACE_REQUEST__INIT;
    req.tenant = (char *)pos[0];
    req.namespace_ = (char *)pos[1];
    Prefixd__V1__GrantNamespaceResponse *r;
    if ((rc = pd_client_grant_namespace(c, &req, &r))) return kv_call_failed(ctx, rc);
    protobuf_c_message_free_unpacked(&r->base, NULL);
  } else {
    Prefixd__V1__RevokeNamespaceRequest req = PREFIXD__V1__REVOKE_NAMESPACE_REQUEST__INIT;
    req.tenant = (char *)pos[0];
    req.namespace_ = (char *)pos[1];
    Prefixd__V1__RevokeNamespaceResponse *r;
    if ((rc = pd_client_revoke_namespace(c, &req, &r))) return kv_call_failed(ctx, rc);
    protobuf_c_message_free_unpacked(&r->base, NULL);
  }
  if (ctx->json) {
    kv_json j;
    kv_json_init(&j, stdout, 1);
    kv_json_object(&j, NULL);
    kv_json_string(&j, "tenant", pos[0]);
    kv_json_string(&j, "namespace", pos[1]);
    kv_json_bool(&j, "granted", grant);
    kv_json_end(&j);
  } else {
    char t[128], ns[128];
    kv_one_line(pos[0], 64, t, sizeof t);
    kv_one_line(pos[1], 64, ns, sizeof ns);
    printf(grant ? "granted namespace %s to %s\n" : "revoked namespace %s from %s\n", ns, t);
  }
  return KV_EXIT_OK;
}

int kv_cmd_tenant(kv_ctx *ctx, int argc, char **argv) {
  /* `kvctl tenant --help`, or global options before the subcommand */
  int first = 0;
  while (first < argc && argv[first][0] == '-') {
    const char *a = argv[first];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      fputs(kv_help_tenant, stdout);
      return KV_EXIT_OK;
    }
    int takes_value = !strcmp(a, "--addr") || !strcmp(a, "--address") || !strcmp(a, "-a") ||
                      !strcmp(a, "--key") || !strcmp(a, "-k") || !strcmp(a, "--timeout") ||
                      !strcmp(a, "--tls-ca") || !strcmp(a, "--tls-client-cert") ||
                      !strcmp(a, "--tls-client-key");
    first += takes_value ? 2 : 1;
  }
  if (first >= argc) {
    kv_error("tenant: which one? add, ls, rm, limits, rotate-key, grant or revoke (see kvctl "
             "tenant --help)");
    return KV_EXIT_USAGE;
  }
  const char *sub = argv[first];
  static const struct {
    const char *name, *alias, *label;
  } subs[] = {{"add", "create", "tenant add"},
              {"ls", "list", "tenant ls"},
              {"rm", "delete", "tenant rm"},
              {"limits", NULL, "tenant limits"},
              {"rotate-key", "rotate", "tenant rotate-key"},
              {"grant", NULL, "tenant grant"},
              {"revoke", NULL, "tenant revoke"}};
  int which = -1;
  for (int i = 0; i < (int)(sizeof subs / sizeof *subs); i++)
    if (!strcmp(sub, subs[i].name) || (subs[i].alias && !strcmp(sub, subs[i].alias))) which = i;
  if (which < 0) {
    kv_error("tenant: unknown command '%s' (see kvctl tenant --help)", sub);
    return KV_EXIT_USAGE;
  }
  ctx->command = subs[which].label;
  /* the options before the subcommand, then its own arguments */
  char **args = malloc((size_t)(argc + 1) * sizeof *args);
  if (!args) {
    kv_error("out of memory");
    return KV_EXIT_ERROR;
  }
  int n = 0;
  for (int i = 0; i < first; i++) args[n++] = argv[i];
  for (int i = first + 1; i < argc; i++) args[n++] = argv[i];
  args[n] = NULL;
  int rc;
  switch (which) {
  case 0: rc = tenant_add(ctx, n, args); break;
  case 1: rc = tenant_ls(ctx, n, args); break;
  case 2: rc = tenant_rm(ctx, n, args); break;
  case 3: rc = tenant_limits(ctx, n, args); break;
  case 4: rc = tenant_rotate(ctx, n, args); break;
  default: rc = tenant_grant(ctx, n, args, which == 5); break;
  }
  free(args);
  return rc;
}
