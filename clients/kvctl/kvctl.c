/*
 * kvctl -- the operator's view of prefixd's cache: list, look up, warm, pin, unpin and evict
 * cached prefixes, read the stats, and manage tenants. A thin layer over the C client
 * (clients/c); see `kvctl --help`.
 *
 * Exit codes: 0 done; 1 the server refused (one line: the gRPC status and its message);
 * 2 bad usage; 3 the daemon could not be reached.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pd_client.h"
#include "pd_err.h"

static const char *const status_names[] = {
    "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
    "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
    "DATA_LOSS", "UNAUTHENTICATED"};

static void usage(FILE *f) {
  fprintf(f, "usage: kvctl [-a ADDRESS] [-k API_KEY] COMMAND [ARGS]\n"
             "  -a, --address A   HOST:PORT or unix:/path (PREFIXD_ADDRESS; default "
             "127.0.0.1:7878)\n"
             "  -k, --key K       API key, tenant's or admin's (PREFIXD_API_KEY)\n"
             "commands:\n"
             "  health                         is the daemon serving\n"
             "  stats                          tiers, tenants, hit rate, queue, tokens/s\n"
             "  ls [--tenant T] [--limit N]    cached prefixes (admin: --tenant, or all)\n"
             "  lookup TEXT [--namespace NS]   how much of TEXT is cached\n"
             "  warm TEXT [--pin-ttl S] [--namespace NS]   prefill and cache TEXT\n"
             "  pin ID [--ttl S]               keep a prefix (0 or no --ttl: until unpinned)\n"
             "  unpin ID\n"
             "  evict ID | --tenant T | --all  [--tier device|host|disk]\n"
             "  tenants list | create NAME | delete NAME | rotate NAME\n"
             "  tenants grant TENANT NS | revoke TENANT NS\n"
             "exit codes: 0 done, 1 refused by the server, 2 usage, 3 daemon unreachable\n");
}

static int fail_call(pd_client *c, int rc) {
  if (rc == PD_CLIENT_ESTATUS) {
    int st = pd_client_status(c);
    fprintf(stderr, "kvctl: %s: %s\n", st >= 0 && st <= 16 ? status_names[st] : "ERROR",
            pd_client_message(c));
    return 1;
  }
  fprintf(stderr, "kvctl: %s%s%s\n", pd_strerror(rc), pd_client_message(c)[0] ? ": " : "",
          pd_client_message(c));
  return 3;
}

static Prefixd__V1__Prompt *text_prompt(Prefixd__V1__Prompt *p, const char *text) {
  prefixd__v1__prompt__init(p);
  p->kind_case = PREFIXD__V1__PROMPT__KIND_TEXT;
  p->text = (char *)text;
  return p;
}

static void print_time(int64_t unix_ms) {
  time_t t = (time_t)(unix_ms / 1000);
  struct tm tm;
  char buf[32];
  gmtime_r(&t, &tm);
  strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  fputs(buf, stdout);
}

/* Options after the command: --name VALUE pairs and flags; positional arguments stay. */
typedef struct opts {
  const char *tenant, *ns, *tier;
  long ttl, limit, pin_ttl;
  int all;
  const char *pos[4];
  int n_pos;
} opts;

static int parse_opts(int argc, char **argv, opts *o) {
  memset(o, 0, sizeof *o);
  o->limit = 1000;
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--all")) {
      o->all = 1;
    } else if (!strncmp(a, "--", 2)) {
      if (!v) {
        fprintf(stderr, "kvctl: %s needs a value\n", a);
        return -1;
      }
      char *end;
      if (!strcmp(a, "--tenant"))
        o->tenant = v;
      else if (!strcmp(a, "--namespace"))
        o->ns = v;
      else if (!strcmp(a, "--tier"))
        o->tier = v;
      else if (!strcmp(a, "--ttl") || !strcmp(a, "--limit") || !strcmp(a, "--pin-ttl")) {
        long x = strtol(v, &end, 10);
        if (*end || x < 0) {
          fprintf(stderr, "kvctl: %s expects a number >= 0, got '%s'\n", a, v);
          return -1;
        }
        *(!strcmp(a, "--ttl") ? &o->ttl : !strcmp(a, "--limit") ? &o->limit : &o->pin_ttl) = x;
      } else {
        fprintf(stderr, "kvctl: unknown option %s\n", a);
        return -1;
      }
      i++;
    } else if (o->n_pos < 4) {
      o->pos[o->n_pos++] = a;
    } else {
      fprintf(stderr, "kvctl: too many arguments\n");
      return -1;
    }
  }
  return 0;
}

static int cmd_stats(pd_client *c) {
  Prefixd__V1__StatsRequest req = PREFIXD__V1__STATS_REQUEST__INIT;
  Prefixd__V1__StatsResponse *r;
  int rc = pd_client_stats(c, &req, &r);
  if (rc) return fail_call(c, rc);
  printf("model: %s\nbackend: %s\nuptime: %.0f s\n", r->model, r->backend, r->uptime_seconds);
  printf("requests: %llu, queue depth: %u, %.1f tokens/s (last minute)\n",
         (unsigned long long)r->requests, r->queue_depth, r->tokens_per_second);
  printf("hit rate: %llu of %llu prompt tokens (%.1f%%), %llu bytes of KV per token\n",
         (unsigned long long)r->hit_tokens, (unsigned long long)r->query_tokens,
         r->query_tokens ? 100.0 * (double)r->hit_tokens / (double)r->query_tokens : 0.0,
         (unsigned long long)r->kv_bytes_per_token);
  static const char *const tiers[] = {"?", "device", "host", "disk"};
  for (size_t i = 0; i < r->n_tiers; i++) {
    const Prefixd__V1__TierStats *t = r->tiers[i];
    if (t->disabled)
      printf("tier %-6s  off (%s)\n", tiers[t->tier & 3], t->disabled_reason);
    else
      printf("tier %-6s  %llu / %llu blocks  %.1f / %.1f MiB\n", tiers[t->tier & 3],
             (unsigned long long)t->blocks_used, (unsigned long long)t->blocks_capacity,
             (double)t->bytes_used / 1048576.0, (double)t->bytes_capacity / 1048576.0);
  }
  for (size_t i = 0; i < r->n_tenants; i++) {
    const Prefixd__V1__TenantStats *t = r->tenants[i];
    printf("tenant %-16s %llu requests, %llu/%llu tokens hit, blocks device %llu host %llu "
           "disk %llu\n",
           t->tenant, (unsigned long long)t->requests, (unsigned long long)t->hit_tokens,
           (unsigned long long)t->query_tokens, (unsigned long long)t->blocks->device,
           (unsigned long long)t->blocks->host, (unsigned long long)t->blocks->disk);
  }
  protobuf_c_message_free_unpacked(&r->base, NULL);
  return 0;
}

static int cmd_ls(pd_client *c, const opts *o) {
  Prefixd__V1__ListPrefixesRequest req = PREFIXD__V1__LIST_PREFIXES_REQUEST__INIT;
  req.tenant = (char *)(o->tenant ? o->tenant : "");
  req.page_size = 200;
  char token[32] = "";
  long shown = 0;
  printf("%-32s %-12s %7s %6s %6s %6s %6s %-6s %s\n", "ID", "TENANT", "TOKENS", "DEV", "HOST",
         "DISK", "HITS", "PINNED", "PREVIEW");
  do {
    req.page_token = token;
    Prefixd__V1__ListPrefixesResponse *r;
    int rc = pd_client_list_prefixes(c, &req, &r);
    if (rc) return fail_call(c, rc);
    for (size_t i = 0; i < r->n_prefixes && shown < o->limit; i++, shown++) {
      const Prefixd__V1__Prefix *p = r->prefixes[i];
      char preview[64];
      size_t k = 0;
      for (const char *s = p->preview; *s && k + 1 < sizeof preview; s++)
        preview[k++] = *s == '\n' || *s == '\t' ? ' ' : *s;
      preview[k] = 0;
      printf("%-32s %-12s %7u %6llu %6llu %6llu %6llu %-6s %s\n", p->id, p->tenant, p->token_count,
             (unsigned long long)p->blocks->device, (unsigned long long)p->blocks->host,
             (unsigned long long)p->blocks->disk, (unsigned long long)p->hits,
             p->pinned ? "yes" : "no", preview);
    }
    snprintf(token, sizeof token, "%s", r->next_page_token);
    protobuf_c_message_free_unpacked(&r->base, NULL);
  } while (token[0] && shown < o->limit);
  return 0;
}

static int cmd_lookup(pd_client *c, const opts *o) {
  if (o->n_pos != 1) return -1;
  Prefixd__V1__Prompt p;
  Prefixd__V1__LookupRequest req = PREFIXD__V1__LOOKUP_REQUEST__INIT;
  req.prompt = text_prompt(&p, o->pos[0]);
  req.namespace_ = (char *)(o->ns ? o->ns : "");
  Prefixd__V1__LookupResponse *r;
  int rc = pd_client_lookup(c, &req, &r);
  if (rc) return fail_call(c, rc);
  printf("%u of %u tokens cached (device %llu, host %llu, disk %llu)\n", r->cached_tokens,
         r->prompt_tokens, (unsigned long long)r->cached_tokens_by_tier->device,
         (unsigned long long)r->cached_tokens_by_tier->host,
         (unsigned long long)r->cached_tokens_by_tier->disk);
  protobuf_c_message_free_unpacked(&r->base, NULL);
  return 0;
}

static int cmd_warm(pd_client *c, const opts *o) {
  if (o->n_pos != 1) return -1;
  Prefixd__V1__Prompt p;
  Prefixd__V1__CacheOptions cache = PREFIXD__V1__CACHE_OPTIONS__INIT;
  cache.namespace_ = (char *)(o->ns ? o->ns : "");
  cache.pin_ttl_seconds = (uint32_t)o->pin_ttl;
  Prefixd__V1__WarmRequest req = PREFIXD__V1__WARM_REQUEST__INIT;
  req.prompt = text_prompt(&p, o->pos[0]);
  req.cache = &cache;
  Prefixd__V1__WarmResponse *r;
  int rc = pd_client_warm(c, &req, &r);
  if (rc) return fail_call(c, rc);
  printf("%s  %u tokens: %u were cached, %u computed\n", r->prefix_id, r->prompt_tokens,
         r->cached_tokens, r->computed_tokens);
  protobuf_c_message_free_unpacked(&r->base, NULL);
  return 0;
}

static int cmd_pin(pd_client *c, const opts *o, int pin) {
  if (o->n_pos != 1) return -1;
  int rc;
  if (pin) {
    Prefixd__V1__PinRequest req = PREFIXD__V1__PIN_REQUEST__INIT;
    req.prefix_id = (char *)o->pos[0];
    req.ttl_seconds = (uint32_t)o->ttl;
    Prefixd__V1__PinResponse *r;
    if ((rc = pd_client_pin(c, &req, &r))) return fail_call(c, rc);
    protobuf_c_message_free_unpacked(&r->base, NULL);
  } else {
    Prefixd__V1__UnpinRequest req = PREFIXD__V1__UNPIN_REQUEST__INIT;
    req.prefix_id = (char *)o->pos[0];
    Prefixd__V1__UnpinResponse *r;
    if ((rc = pd_client_unpin(c, &req, &r))) return fail_call(c, rc);
    protobuf_c_message_free_unpacked(&r->base, NULL);
  }
  printf("%s %s\n", pin ? "pinned" : "unpinned", o->pos[0]);
  return 0;
}

static int cmd_evict(pd_client *c, const opts *o) {
  Prefixd__V1__EvictRequest req = PREFIXD__V1__EVICT_REQUEST__INIT;
  int targets = (o->n_pos == 1) + !!o->tenant + o->all;
  if (targets != 1 || o->n_pos > 1) {
    fprintf(stderr, "kvctl: evict takes exactly one of ID, --tenant T, --all\n");
    return 2;
  }
  if (o->n_pos == 1) {
    req.target_case = PREFIXD__V1__EVICT_REQUEST__TARGET_PREFIX_ID;
    req.prefix_id = (char *)o->pos[0];
  } else if (o->tenant) {
    req.target_case = PREFIXD__V1__EVICT_REQUEST__TARGET_TENANT;
    req.tenant = (char *)o->tenant;
  } else {
    req.target_case = PREFIXD__V1__EVICT_REQUEST__TARGET_ALL;
    req.all = 1;
  }
  if (o->tier) {
    if (!strcmp(o->tier, "device"))
      req.tier = PREFIXD__V1__TIER__TIER_DEVICE;
    else if (!strcmp(o->tier, "host"))
      req.tier = PREFIXD__V1__TIER__TIER_HOST;
    else if (!strcmp(o->tier, "disk"))
      req.tier = PREFIXD__V1__TIER__TIER_DISK;
    else {
      fprintf(stderr, "kvctl: --tier must be device, host or disk\n");
      return 2;
    }
  }
  Prefixd__V1__EvictResponse *r;
  int rc = pd_client_evict(c, &req, &r);
  if (rc) return fail_call(c, rc);
  printf("evicted blocks: device %llu, host %llu, disk %llu\n",
         (unsigned long long)r->blocks_evicted->device, (unsigned long long)r->blocks_evicted->host,
         (unsigned long long)r->blocks_evicted->disk);
  protobuf_c_message_free_unpacked(&r->base, NULL);
  return 0;
}

static int cmd_tenants(pd_client *c, const opts *o) {
  const char *sub = o->n_pos > 0 ? o->pos[0] : "";
  int rc;
  if (!strcmp(sub, "list") && o->n_pos == 1) {
    Prefixd__V1__ListTenantsRequest req = PREFIXD__V1__LIST_TENANTS_REQUEST__INIT;
    Prefixd__V1__ListTenantsResponse *r;
    if ((rc = pd_client_list_tenants(c, &req, &r))) return fail_call(c, rc);
    for (size_t i = 0; i < r->n_tenants; i++) {
      const Prefixd__V1__Tenant *t = r->tenants[i];
      printf("%-20s created ", t->name);
      print_time(t->created_unix_ms);
      printf("  max_concurrent %u  max_context %u  namespaces", t->limits->max_concurrent_requests,
             t->limits->max_context_tokens);
      for (size_t g = 0; g < t->n_granted_namespaces; g++) printf(" %s", t->granted_namespaces[g]);
      printf("\n");
    }
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return 0;
  }
  if (!strcmp(sub, "create") && o->n_pos == 2) {
    Prefixd__V1__CreateTenantRequest req = PREFIXD__V1__CREATE_TENANT_REQUEST__INIT;
    req.name = (char *)o->pos[1];
    Prefixd__V1__CreateTenantResponse *r;
    if ((rc = pd_client_create_tenant(c, &req, &r))) return fail_call(c, rc);
    printf("%s\n", r->api_key); /* the only time the key is shown */
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return 0;
  }
  if (!strcmp(sub, "rotate") && o->n_pos == 2) {
    Prefixd__V1__RotateKeyRequest req = PREFIXD__V1__ROTATE_KEY_REQUEST__INIT;
    req.name = (char *)o->pos[1];
    Prefixd__V1__RotateKeyResponse *r;
    if ((rc = pd_client_rotate_key(c, &req, &r))) return fail_call(c, rc);
    printf("%s\n", r->api_key);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return 0;
  }
  if (!strcmp(sub, "delete") && o->n_pos == 2) {
    Prefixd__V1__DeleteTenantRequest req = PREFIXD__V1__DELETE_TENANT_REQUEST__INIT;
    req.name = (char *)o->pos[1];
    Prefixd__V1__DeleteTenantResponse *r;
    if ((rc = pd_client_delete_tenant(c, &req, &r))) return fail_call(c, rc);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    printf("deleted %s\n", o->pos[1]);
    return 0;
  }
  if ((!strcmp(sub, "grant") || !strcmp(sub, "revoke")) && o->n_pos == 3) {
    if (sub[0] == 'g') {
      Prefixd__V1__GrantNamespaceRequest req = PREFIXD__V1__GRANT_NAMESPACE_REQUEST__INIT;
      req.tenant = (char *)o->pos[1];
      req.namespace_ = (char *)o->pos[2];
      Prefixd__V1__GrantNamespaceResponse *r;
      if ((rc = pd_client_grant_namespace(c, &req, &r))) return fail_call(c, rc);
      protobuf_c_message_free_unpacked(&r->base, NULL);
    } else {
      Prefixd__V1__RevokeNamespaceRequest req = PREFIXD__V1__REVOKE_NAMESPACE_REQUEST__INIT;
      req.tenant = (char *)o->pos[1];
      req.namespace_ = (char *)o->pos[2];
      Prefixd__V1__RevokeNamespaceResponse *r;
      if ((rc = pd_client_revoke_namespace(c, &req, &r))) return fail_call(c, rc);
      protobuf_c_message_free_unpacked(&r->base, NULL);
    }
    printf("%s %s %s\n", sub[0] == 'g' ? "granted" : "revoked", o->pos[2], o->pos[1]);
    return 0;
  }
  fprintf(stderr, "kvctl: tenants list | create NAME | delete NAME | rotate NAME | grant T NS | "
                  "revoke T NS\n");
  return 2;
}

int main(int argc, char **argv) {
  const char *address = getenv("PREFIXD_ADDRESS") ? getenv("PREFIXD_ADDRESS") : "127.0.0.1:7878";
  const char *key = getenv("PREFIXD_API_KEY");
  static const struct option lopts[] = {{"address", required_argument, 0, 'a'},
                                        {"key", required_argument, 0, 'k'},
                                        {"help", no_argument, 0, 'h'},
                                        {0, 0, 0, 0}};
  int ch;
  while ((ch = getopt_long(argc, argv, "+a:k:h", lopts, NULL)) != -1) {
    switch (ch) {
    case 'a': address = optarg; break;
    case 'k': key = optarg; break;
    case 'h': usage(stdout); return 0;
    default: usage(stderr); return 2;
    }
  }
  if (optind >= argc) {
    usage(stderr);
    return 2;
  }
  const char *cmd = argv[optind];
  opts o;
  if (parse_opts(argc - optind - 1, argv + optind + 1, &o)) return 2;
  static const char *const known[] = {"health", "stats", "ls",    "lookup", "warm",
                                      "pin",    "unpin", "evict", "tenants"};
  int ok = 0;
  for (size_t i = 0; i < sizeof known / sizeof *known; i++) ok |= !strcmp(cmd, known[i]);
  if (!ok) {
    fprintf(stderr, "kvctl: unknown command '%s' (see kvctl --help)\n", cmd);
    return 2;
  }
  pd_client *c;
  int rc = pd_client_connect(address, key && key[0] ? key : NULL, &c);
  if (rc) {
    fprintf(stderr, "kvctl: cannot reach prefixd at %s: %s\n", address, pd_strerror(rc));
    return rc == PD_EINVAL ? 2 : 3;
  }
  pd_client_set_timeout_ms(c, 600000);
  int out;
  if (!strcmp(cmd, "health")) {
    Prefixd__V1__HealthRequest req = PREFIXD__V1__HEALTH_REQUEST__INIT;
    Prefixd__V1__HealthResponse *r;
    if ((rc = pd_client_health(c, &req, &r))) {
      out = fail_call(c, rc);
    } else {
      int serving = r->status == PREFIXD__V1__HEALTH_RESPONSE__STATUS__STATUS_SERVING;
      printf("%s\n", serving ? "serving" : "not serving");
      out = serving ? 0 : 1;
      protobuf_c_message_free_unpacked(&r->base, NULL);
    }
  } else if (!strcmp(cmd, "stats")) {
    out = cmd_stats(c);
  } else if (!strcmp(cmd, "ls")) {
    out = cmd_ls(c, &o);
  } else if (!strcmp(cmd, "lookup")) {
    out = cmd_lookup(c, &o);
  } else if (!strcmp(cmd, "warm")) {
    out = cmd_warm(c, &o);
  } else if (!strcmp(cmd, "pin") || !strcmp(cmd, "unpin")) {
    out = cmd_pin(c, &o, cmd[0] == 'p');
  } else if (!strcmp(cmd, "evict")) {
    out = cmd_evict(c, &o);
  } else {
    out = cmd_tenants(c, &o);
  }
  if (out < 0) {
    fprintf(stderr, "kvctl: %s: wrong arguments (see kvctl --help)\n", cmd);
    out = 2;
  }
  pd_client_close(c);
  return out;
}
