/*
 * kvctl_stats.c -- `health`, `status` and `stats [--watch]`: what the daemon reports about
 * itself through Health and Stats.
 *
 * Design: status is the glance (is it serving, which model, how full is each tier, how often
 * prompts hit); stats is everything Stats carries, including the tier manager's counters and
 * the KV size per token with its formula. The formula's factors are not fields of Stats: they
 * are read back from the model description string (pd_model_describe's "N layers", "(K kv,
 * head_dim D)") and the dtype size is what remains of kv_bytes_per_token; the block size is
 * the device tier's bytes per block over kv_bytes_per_token (an fp8 cache adds a 4-byte scale per
 * row of head_dim values, which is recognized). When the description does not
 * parse, the formula is shown symbolically and its JSON is null. `--watch` redraws one frame
 * per interval until SIGINT or --count frames; with --json each frame is one compact line.
 */
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvctl.h"

/* ---- SIGINT for --watch ---------------------------------------------------------------------- */

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig) {
  (void)sig;
  interrupted = 1;
}

/* Sleeps up to seconds, returning early on SIGINT. */
static void sleep_interruptible(uint32_t seconds) {
  struct timespec left = {(time_t)seconds, 0};
  while (!interrupted && nanosleep(&left, &left) != 0) {
  }
}

/* ---- shared pieces --------------------------------------------------------------------------- */

static int fetch_stats(kv_ctx *ctx, Prefixd__V1__StatsResponse **out) {
  pd_client *c;
  int rc = kv_connect(ctx, &c);
  if (rc) return rc;
  Prefixd__V1__StatsRequest req = PREFIXD__V1__STATS_REQUEST__INIT;
  rc = pd_client_stats(c, &req, out);
  return rc ? kv_call_failed(ctx, rc) : 0;
}

static double hit_rate(uint64_t hit, uint64_t query) {
  return query ? (double)hit / (double)query : 0.0;
}

static void json_hit_rate(kv_json *j, uint64_t hit, uint64_t query) {
  if (query)
    kv_json_number(j, "hit_rate", hit_rate(hit, query));
  else
    kv_json_null(j, "hit_rate");
}

static void json_tier_counts(kv_json *j, const char *key, const Prefixd__V1__TierCounts *tc) {
  kv_json_object(j, key);
  kv_json_uint(j, "device", tc ? tc->device : 0);
  kv_json_uint(j, "host", tc ? tc->host : 0);
  kv_json_uint(j, "disk", tc ? tc->disk : 0);
  kv_json_end(j);
}

static void json_tiers(kv_json *j, const Prefixd__V1__StatsResponse *r) {
  kv_json_array(j, "tiers");
  for (size_t i = 0; i < r->n_tiers; i++) {
    const Prefixd__V1__TierStats *t = r->tiers[i];
    kv_json_object(j, NULL);
    kv_json_string(j, "tier", kv_tier_name(t->tier));
    kv_json_uint(j, "blocks_used", t->blocks_used);
    kv_json_uint(j, "blocks_capacity", t->blocks_capacity);
    kv_json_uint(j, "bytes_used", t->bytes_used);
    kv_json_uint(j, "bytes_capacity", t->bytes_capacity);
    kv_json_bool(j, "disabled", t->disabled);
    kv_json_string(j, "disabled_reason", t->disabled_reason);
    kv_json_end(j);
  }
  kv_json_end(j);
}

static void json_counters(kv_json *j, const Prefixd__V1__StatsResponse *r) {
  kv_json_string(j, "model", r->model);
  kv_json_string(j, "backend", r->backend);
  kv_json_number(j, "uptime_seconds", r->uptime_seconds);
  kv_json_uint(j, "requests", r->requests);
  kv_json_uint(j, "queue_depth", r->queue_depth);
  kv_json_uint(j, "running", r->running);
  kv_json_uint(j, "preemptions", r->preemptions);
  kv_json_uint(j, "recomputed_tokens", r->recomputed_tokens);
  kv_json_uint(j, "generated_tokens", r->generated_tokens);
  kv_json_uint(j, "spec_draft_tokens", r->spec_draft_tokens);
  kv_json_uint(j, "spec_accepted_tokens", r->spec_accepted_tokens);
  kv_json_uint(j, "spec_cache_accepted_tokens", r->spec_cache_accepted_tokens);
  kv_json_number(j, "tokens_per_second", r->tokens_per_second);
  kv_json_uint(j, "hit_tokens", r->hit_tokens);
  kv_json_uint(j, "query_tokens", r->query_tokens);
  json_hit_rate(j, r->hit_tokens, r->query_tokens);
}

/* The tiers as a table: used / capacity in blocks and bytes. */
static int print_tiers(const Prefixd__V1__StatsResponse *r, int width) {
  static const char *const headers[] = {"TIER", "BLOCKS", "BYTES", "USE"};
  kv_table *t = kv_table_new(headers, 4);
  if (!t) return -1;
  kv_table_align_right(t, 3);
  for (size_t i = 0; i < r->n_tiers; i++) {
    const Prefixd__V1__TierStats *ts = r->tiers[i];
    char used[32], cap[32], bused[32], bcap[32], pct[16];
    kv_table_add(t, KV_CYAN, "%s", kv_tier_name(ts->tier));
    kv_table_add(t, KV_PLAIN, "%s / %s", kv_fmt_count(used, sizeof used, ts->blocks_used),
                 kv_fmt_count(cap, sizeof cap, ts->blocks_capacity));
    if (ts->disabled && ts->blocks_capacity == 0) {
      kv_table_add(t, KV_DIM, "off: %s", ts->disabled_reason);
      kv_table_add(t, KV_DIM, "-");
      continue;
    }
    if (ts->disabled)
      kv_table_add(t, KV_RED, "off: %s", ts->disabled_reason);
    else
      kv_table_add(t, KV_PLAIN, "%s / %s", kv_fmt_bytes(bused, sizeof bused, ts->bytes_used),
                   kv_fmt_bytes(bcap, sizeof bcap, ts->bytes_capacity));
    kv_table_add(t, KV_PLAIN, "%s",
                 kv_fmt_percent(pct, sizeof pct, ts->blocks_used, ts->blocks_capacity));
  }
  int rc = kv_table_print(t, stdout, width);
  kv_table_free(t);
  return rc;
}

/* A "label  value" line, the label bold and padded. Text from the daemon in the value must
 * have been through kv_one_line. */
static void field(const char *label, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void field(const char *label, const char *fmt, ...) {
  printf("%s%-10s%s ", kv_style_on(KV_BOLD), label, kv_style_off(KV_BOLD));
  va_list ap;
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  printf("\n");
}

/* ---- health ---------------------------------------------------------------------------------- */

const char kv_help_health[] =
    "usage: kvctl health [--json]\n"
    "\n"
    "Asks the daemon whether it is serving. Prints \"serving\" and exits 0, or prints \"not\n"
    "serving\" (starting, draining or failed) and exits 1. Needs no API key.\n"
    "\n"
    "  --json   {\"serving\": true, \"status\": \"serving\"}\n";

static int fetch_health(kv_ctx *ctx, int *serving) {
  pd_client *c;
  int rc = kv_connect(ctx, &c);
  if (rc) return rc;
  Prefixd__V1__HealthRequest req = PREFIXD__V1__HEALTH_REQUEST__INIT;
  Prefixd__V1__HealthResponse *r;
  if ((rc = pd_client_health(c, &req, &r))) return kv_call_failed(ctx, rc);
  *serving = r->status == PREFIXD__V1__HEALTH_RESPONSE__STATUS__STATUS_SERVING;
  protobuf_c_message_free_unpacked(&r->base, NULL);
  return 0;
}

int kv_cmd_health(kv_ctx *ctx, int argc, char **argv) {
  const char *pos[1];
  int n_pos, rc = kv_parse(ctx, kv_help_health, argc, argv, NULL, pos, 0, &n_pos);
  if (rc) return rc == KV_PARSE_HELP ? KV_EXIT_OK : rc;
  int serving = 0;
  if ((rc = fetch_health(ctx, &serving))) return rc;
  if (ctx->json) {
    kv_json j;
    kv_json_init(&j, stdout, 1);
    kv_json_object(&j, NULL);
    kv_json_bool(&j, "serving", serving);
    kv_json_string(&j, "status", serving ? "serving" : "not_serving");
    kv_json_end(&j);
  } else {
    kv_style s = serving ? KV_GREEN : KV_RED;
    printf("%s%s%s\n", kv_style_on(s), serving ? "serving" : "not serving", kv_style_off(s));
  }
  return serving ? KV_EXIT_OK : KV_EXIT_ERROR;
}

/* ---- status ---------------------------------------------------------------------------------- */

const char kv_help_status[] =
    "usage: kvctl status [--json]\n"
    "\n"
    "The daemon at a glance: whether it is serving and where, the model and backend, uptime,\n"
    "requests and queue, the prompt-token hit rate, and each tier's used and total capacity in\n"
    "blocks and bytes. `kvctl stats` has every counter.\n"
    "\n"
    "  --json   {address, serving, model, backend, uptime_seconds, requests, queue_depth,\n"
    "            running, preemptions, recomputed_tokens, generated_tokens, spec_draft_tokens,\n"
    "            spec_accepted_tokens, spec_cache_accepted_tokens, tokens_per_second,\n"
    "            hit_tokens,\n"
    "            query_tokens, hit_rate, tiers: [...]}\n";

int kv_cmd_status(kv_ctx *ctx, int argc, char **argv) {
  const char *pos[1];
  int n_pos, rc = kv_parse(ctx, kv_help_status, argc, argv, NULL, pos, 0, &n_pos);
  if (rc) return rc == KV_PARSE_HELP ? KV_EXIT_OK : rc;
  int serving = 0;
  if ((rc = fetch_health(ctx, &serving))) return rc;
  Prefixd__V1__StatsResponse *r;
  if ((rc = fetch_stats(ctx, &r))) return rc;
  if (ctx->json) {
    kv_json j;
    kv_json_init(&j, stdout, 1);
    kv_json_object(&j, NULL);
    kv_json_string(&j, "address", ctx->address);
    kv_json_bool(&j, "serving", serving);
    json_counters(&j, r);
    json_tiers(&j, r);
    kv_json_end(&j);
  } else {
    int width = kv_terminal_width();
    char up[32], pct[16], hit[32], query[32], model[1024];
    kv_style s = serving ? KV_GREEN : KV_RED;
    field("prefixd", "%s%s%s at %s", kv_style_on(s), serving ? "serving" : "not serving",
          kv_style_off(s), ctx->address);
    kv_one_line(r->model, width > 20 ? (size_t)width - 11 : 0, model, sizeof model);
    field("model", "%s", model);
    char backend[256];
    kv_one_line(r->backend, 0, backend, sizeof backend);
    field("backend", "%s", backend);
    field("uptime", "%s", kv_fmt_duration(up, sizeof up, r->uptime_seconds));
    field("requests", "%llu, running %u, queue %u, %.1f tokens/s over the last minute",
          (unsigned long long)r->requests, r->running, r->queue_depth, r->tokens_per_second);
    field("hit rate", "%s of prompt tokens (%s of %s)",
          kv_fmt_percent(pct, sizeof pct, r->hit_tokens, r->query_tokens),
          kv_fmt_count(hit, sizeof hit, r->hit_tokens),
          kv_fmt_count(query, sizeof query, r->query_tokens));
    printf("\n");
    print_tiers(r, width);
  }
  protobuf_c_message_free_unpacked(&r->base, NULL);
  return KV_EXIT_OK;
}

/* ---- stats ----------------------------------------------------------------------------------- */

const char kv_help_stats[] =
    "usage: kvctl stats [--watch [SECONDS]] [--count N] [--json]\n"
    "\n"
    "Every counter the daemon keeps: requests, queue, tokens/s and hit rate; each tier's use;\n"
    "each tenant's requests, hit rate and blocks per tier (the admin sees all tenants, a tenant\n"
    "only itself); the tier manager's storage counters since start (spills, restores, drops,\n"
    "disk writes and the write filter, checksum and read failures, restore-versus-recompute\n"
    "choices and the measured transfer rates); and the KV bytes per token with its formula,\n"
    "2 x layers x kv_heads x head_dim x dtype bytes.\n"
    "\n"
    "  -w, --watch [SECONDS]  redraw every SECONDS (default 2) until Ctrl-C\n"
    "  -n, --count N          stop after N frames (implies --watch)\n"
    "  --json                 one document; with --watch, one compact document per line\n";

/* What the model description says about the KV size; 0 if it does not parse. */
typedef struct kv_shape {
  int layers, kv_heads, head_dim;
  uint64_t dtype_bytes;
  uint64_t scale_bytes; /* per row of head_dim values: 4 for an fp8 cache, else 0 */
  uint64_t block_tokens, block_bytes;
} kv_shape;

static int kv_shape_from(const Prefixd__V1__StatsResponse *r, kv_shape *s) {
  memset(s, 0, sizeof *s);
  const char *colon = r->model ? strstr(r->model, ": ") : NULL;
  const char *paren = r->model ? strchr(r->model, '(') : NULL;
  if (!colon || !paren || sscanf(colon, ": %d layers", &s->layers) != 1 ||
      sscanf(paren, "(%d kv, head_dim %d)", &s->kv_heads, &s->head_dim) != 2)
    return 0;
  if (s->layers <= 0 || s->kv_heads <= 0 || s->head_dim <= 0 || !r->kv_bytes_per_token) return 0;
  uint64_t rows = 2ull * (uint64_t)s->layers * (uint64_t)s->kv_heads;
  uint64_t per_dtype_byte = rows * (uint64_t)s->head_dim;
  if (r->kv_bytes_per_token == per_dtype_byte + rows * 4) {
    s->dtype_bytes = 1, s->scale_bytes = 4;
  } else if (r->kv_bytes_per_token % per_dtype_byte == 0) {
    s->dtype_bytes = r->kv_bytes_per_token / per_dtype_byte;
  } else {
    return 0;
  }
  for (size_t i = 0; i < r->n_tiers; i++) {
    const Prefixd__V1__TierStats *t = r->tiers[i];
    if (t->tier == PREFIXD__V1__TIER__TIER_DEVICE && t->blocks_capacity) {
      s->block_bytes = t->bytes_capacity / t->blocks_capacity;
      s->block_tokens = s->block_bytes / r->kv_bytes_per_token;
    }
  }
  return 1;
}

static const char *dtype_names(uint64_t bytes) {
  switch (bytes) {
  case 2: return "f16 or bf16";
  case 4: return "f32";
  default: return "?";
  }
}

static void stats_json(const Prefixd__V1__StatsResponse *r, int pretty) {
  kv_json j;
  kv_json_init(&j, stdout, pretty);
  kv_json_object(&j, NULL);
  kv_json_int(&j, "time_unix_ms", kv_now_ms());
  json_counters(&j, r);
  kv_json_uint(&j, "kv_bytes_per_token", r->kv_bytes_per_token);
  kv_shape s;
  if (kv_shape_from(r, &s)) {
    kv_json_object(&j, "kv_formula");
    kv_json_uint(&j, "layers", (uint64_t)s.layers);
    kv_json_uint(&j, "kv_heads", (uint64_t)s.kv_heads);
    kv_json_uint(&j, "head_dim", (uint64_t)s.head_dim);
    kv_json_uint(&j, "dtype_bytes", s.dtype_bytes);
    kv_json_uint(&j, "scale_bytes", s.scale_bytes);
    kv_json_uint(&j, "block_tokens", s.block_tokens);
    kv_json_uint(&j, "block_bytes", s.block_bytes);
    kv_json_end(&j);
  } else {
    kv_json_null(&j, "kv_formula");
  }
  json_tiers(&j, r);
  kv_json_array(&j, "tenants");
  for (size_t i = 0; i < r->n_tenants; i++) {
    const Prefixd__V1__TenantStats *t = r->tenants[i];
    kv_json_object(&j, NULL);
    kv_json_string(&j, "tenant", t->tenant);
    kv_json_uint(&j, "requests", t->requests);
    kv_json_uint(&j, "hit_tokens", t->hit_tokens);
    kv_json_uint(&j, "query_tokens", t->query_tokens);
    json_hit_rate(&j, t->hit_tokens, t->query_tokens);
    kv_json_uint(&j, "computed_tokens", t->computed_tokens);
    kv_json_uint(&j, "rate_limited", t->rate_limited);
    json_tier_counts(&j, "blocks", t->blocks);
    kv_json_end(&j);
  }
  kv_json_end(&j);
  const Prefixd__V1__StorageStats *st = r->storage;
  if (st) {
    kv_json_object(&j, "storage");
    kv_json_uint(&j, "spilled_to_host_blocks", st->spilled_to_host_blocks);
    kv_json_uint(&j, "spilled_to_disk_blocks", st->spilled_to_disk_blocks);
    kv_json_uint(&j, "restored_from_host_blocks", st->restored_from_host_blocks);
    kv_json_uint(&j, "restored_from_disk_blocks", st->restored_from_disk_blocks);
    kv_json_uint(&j, "spill_bytes", st->spill_bytes);
    kv_json_uint(&j, "restore_bytes", st->restore_bytes);
    json_tier_counts(&j, "dropped_blocks", st->dropped_blocks);
    kv_json_uint(&j, "disk_writes", st->disk_writes);
    kv_json_uint(&j, "disk_write_bytes", st->disk_write_bytes);
    kv_json_uint(&j, "write_through_blocks", st->write_through_blocks);
    kv_json_uint(&j, "write_filtered_blocks", st->write_filtered_blocks);
    kv_json_uint(&j, "checksum_failures", st->checksum_failures);
    kv_json_uint(&j, "read_failures", st->read_failures);
    kv_json_uint(&j, "map_full_retries", st->map_full_retries);
    kv_json_uint(&j, "restores_chosen", st->restores_chosen);
    kv_json_uint(&j, "recomputes_chosen", st->recomputes_chosen);
    kv_json_number(&j, "host_restore_bytes_per_second", st->host_restore_bytes_per_second);
    kv_json_number(&j, "disk_restore_bytes_per_second", st->disk_restore_bytes_per_second);
    kv_json_string(&j, "write_filter", st->write_filter);
    kv_json_uint(&j, "disk_records", st->disk_records);
    kv_json_uint(&j, "transfers_in_flight", st->transfers_in_flight);
    kv_json_uint(&j, "pin_saves", st->pin_saves);
    kv_json_uint(&j, "pins_restored", st->pins_restored);
    kv_json_end(&j);
  } else {
    kv_json_null(&j, "storage");
  }
  kv_json_end(&j);
}

static void print_tenants(const Prefixd__V1__StatsResponse *r, int width) {
  static const char *const headers[] = {"TENANT",     "REQUESTS",     "HIT RATE",
                                        "HIT TOKENS", "ASKED TOKENS", "COMPUTED",
                                        "DEVICE",     "HOST",         "DISK"};
  kv_table *t = kv_table_new(headers, 9);
  if (!t) return;
  for (int c = 1; c < 9; c++) kv_table_align_right(t, c);
  for (size_t i = 0; i < r->n_tenants; i++) {
    const Prefixd__V1__TenantStats *ts = r->tenants[i];
    char a[32], b[32], c[32], d[32], e[32], f[32], g[32], pct[16];
    const Prefixd__V1__TierCounts *bl = ts->blocks;
    kv_table_add(t, KV_CYAN, "%s", ts->tenant);
    kv_table_add(t, KV_PLAIN, "%s", kv_fmt_count(a, sizeof a, ts->requests));
    kv_table_add(t, KV_PLAIN, "%s",
                 kv_fmt_percent(pct, sizeof pct, ts->hit_tokens, ts->query_tokens));
    kv_table_add(t, KV_PLAIN, "%s", kv_fmt_count(b, sizeof b, ts->hit_tokens));
    kv_table_add(t, KV_PLAIN, "%s", kv_fmt_count(c, sizeof c, ts->query_tokens));
    kv_table_add(t, KV_PLAIN, "%s", kv_fmt_count(g, sizeof g, ts->computed_tokens));
    kv_table_add(t, KV_PLAIN, "%s", kv_fmt_count(d, sizeof d, bl ? bl->device : 0));
    kv_table_add(t, KV_PLAIN, "%s", kv_fmt_count(e, sizeof e, bl ? bl->host : 0));
    kv_table_add(t, KV_PLAIN, "%s", kv_fmt_count(f, sizeof f, bl ? bl->disk : 0));
  }
  kv_table_print(t, stdout, width);
  kv_table_free(t);
}

static void heading(const char *title) {
  printf("\n%s%s%s\n", kv_style_on(KV_BOLD), title, kv_style_off(KV_BOLD));
}

/* One "  label  value" line of the storage section. */
static void storage_line(const char *label, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void storage_line(const char *label, const char *fmt, ...) {
  char value[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(value, sizeof value, fmt, ap);
  va_end(ap);
  printf("  %-18s %s\n", label, value);
}

static void print_storage(const Prefixd__V1__StorageStats *st) {
  heading("STORAGE (since start)");
  if (!st) {
    printf("  not reported by this daemon\n");
    return;
  }
  char a[32], b[32], c[32], d[32], e[32], f[32];
  storage_line("spilled", "device -> host %s blocks, host -> disk %s blocks (%s)",
               kv_fmt_count(a, sizeof a, st->spilled_to_host_blocks),
               kv_fmt_count(b, sizeof b, st->spilled_to_disk_blocks),
               kv_fmt_bytes(c, sizeof c, st->spill_bytes));
  storage_line("restored", "host -> device %s blocks, disk -> device %s blocks (%s)",
               kv_fmt_count(a, sizeof a, st->restored_from_host_blocks),
               kv_fmt_count(b, sizeof b, st->restored_from_disk_blocks),
               kv_fmt_bytes(c, sizeof c, st->restore_bytes));
  const Prefixd__V1__TierCounts *dr = st->dropped_blocks;
  storage_line("dropped", "device %s, host %s, disk %s blocks",
               kv_fmt_count(a, sizeof a, dr ? dr->device : 0),
               kv_fmt_count(b, sizeof b, dr ? dr->host : 0),
               kv_fmt_count(c, sizeof c, dr ? dr->disk : 0));
  storage_line("disk writes", "%s records (%s), %s of them write-through copies",
               kv_fmt_count(a, sizeof a, st->disk_writes),
               kv_fmt_bytes(b, sizeof b, st->disk_write_bytes),
               kv_fmt_count(c, sizeof c, st->write_through_blocks));
  storage_line("write filter", "%s: %s spills to disk turned into drops",
               st->write_filter && st->write_filter[0] ? st->write_filter : "-",
               kv_fmt_count(a, sizeof a, st->write_filtered_blocks));
  storage_line("disk store", "%s records, %s checksum failures, %s map-full retries",
               kv_fmt_count(a, sizeof a, st->disk_records),
               kv_fmt_count(b, sizeof b, st->checksum_failures),
               kv_fmt_count(c, sizeof c, st->map_full_retries));
  storage_line("cold prefixes", "%s restored, %s recomputed (the faster way), %s read failures",
               kv_fmt_count(a, sizeof a, st->restores_chosen),
               kv_fmt_count(b, sizeof b, st->recomputes_chosen),
               kv_fmt_count(c, sizeof c, st->read_failures));
  storage_line("measured rates", "host -> device %s, disk -> device %s",
               kv_fmt_rate(d, sizeof d, st->host_restore_bytes_per_second),
               kv_fmt_rate(e, sizeof e, st->disk_restore_bytes_per_second));
  storage_line("in flight", "%s transfers", kv_fmt_count(f, sizeof f, st->transfers_in_flight));
  storage_line("pins", "%s restored at start, stored %s times",
               kv_fmt_count(a, sizeof a, st->pins_restored),
               kv_fmt_count(b, sizeof b, st->pin_saves));
}

static void print_kv_formula(const Prefixd__V1__StatsResponse *r) {
  heading("KV PER TOKEN");
  char a[32], b[32];
  kv_shape s;
  static const char dot[] = "\xc2\xb7"; /* U+00B7 */
  if (!kv_shape_from(r, &s)) {
    printf("  %s B = 2 %s layers %s kv_heads %s head_dim %s dtype bytes\n",
           kv_fmt_count(a, sizeof a, r->kv_bytes_per_token), dot, dot, dot, dot);
    return;
  }
  if (s.scale_bytes)
    printf("  %s B = 2 %s %d layers %s %d kv_heads %s (%d head_dim %s 1 B + %llu B) (fp8, a scale "
           "per row)\n",
           kv_fmt_count(a, sizeof a, r->kv_bytes_per_token), dot, s.layers, dot, s.kv_heads, dot,
           s.head_dim, dot, (unsigned long long)s.scale_bytes);
  else
    printf("  %s B = 2 %s %d layers %s %d kv_heads %s %d head_dim %s %llu B (%s)\n",
           kv_fmt_count(a, sizeof a, r->kv_bytes_per_token), dot, s.layers, dot, s.kv_heads, dot,
           s.head_dim, dot, (unsigned long long)s.dtype_bytes, dtype_names(s.dtype_bytes));
  if (s.block_tokens)
    printf("  a block of %llu tokens: %s (%s B)\n", (unsigned long long)s.block_tokens,
           kv_fmt_bytes(a, sizeof a, s.block_bytes), kv_fmt_count(b, sizeof b, s.block_bytes));
}

static void stats_human(const Prefixd__V1__StatsResponse *r) {
  int width = kv_terminal_width();
  char up[32], pct[16], hit[32], query[32], model[1024], backend[256];
  kv_one_line(r->model, 0, model, sizeof model);
  kv_one_line(r->backend, 0, backend, sizeof backend);
  field("model", "%s", model);
  field("backend", "%s, up %s", backend, kv_fmt_duration(up, sizeof up, r->uptime_seconds));
  field("requests", "%llu, running %u, queue %u, %.1f tokens/s over the last minute",
        (unsigned long long)r->requests, r->running, r->queue_depth, r->tokens_per_second);
  field("preempted", "%llu sequences, %llu tokens recomputed", (unsigned long long)r->preemptions,
        (unsigned long long)r->recomputed_tokens);
  char kept[32], gen[32], drafted[32], share[16], cached[32];
  field("drafts",
        "%s of %s generated tokens came from kept drafts (%s of %s verified, %s from the cache)",
        kv_fmt_percent(share, sizeof share, r->spec_accepted_tokens, r->generated_tokens),
        kv_fmt_count(gen, sizeof gen, r->generated_tokens),
        kv_fmt_count(kept, sizeof kept, r->spec_accepted_tokens),
        kv_fmt_count(drafted, sizeof drafted, r->spec_draft_tokens),
        kv_fmt_count(cached, sizeof cached, r->spec_cache_accepted_tokens));
  field("hit rate", "%s of prompt tokens (%s of %s)",
        kv_fmt_percent(pct, sizeof pct, r->hit_tokens, r->query_tokens),
        kv_fmt_count(hit, sizeof hit, r->hit_tokens),
        kv_fmt_count(query, sizeof query, r->query_tokens));
  printf("\n");
  print_tiers(r, width);
  printf("\n");
  print_tenants(r, width);
  print_storage(r->storage);
  print_kv_formula(r);
}

int kv_cmd_stats(kv_ctx *ctx, int argc, char **argv) {
  uint32_t interval = 2;
  int watch = 0;
  uint64_t count = 0;
  int count_given = 0;
  const kv_opt opts[] = {{"watch", 'w', KV_OPT_OPT_SECONDS, &interval, &watch},
                         {"count", 'n', KV_OPT_UINT, &count, &count_given},
                         {0}};
  const char *pos[1];
  int n_pos, rc = kv_parse(ctx, kv_help_stats, argc, argv, opts, pos, 0, &n_pos);
  if (rc) return rc == KV_PARSE_HELP ? KV_EXIT_OK : rc;
  if (count_given && count == 0) return kv_usage(ctx, "--count must be at least 1");
  if (count_given) watch = 1;
  if (!watch) {
    Prefixd__V1__StatsResponse *r;
    if ((rc = fetch_stats(ctx, &r))) return rc;
    if (ctx->json)
      stats_json(r, 1);
    else
      stats_human(r);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return KV_EXIT_OK;
  }
  struct sigaction sa = {0};
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL); /* no SA_RESTART: the sleep returns at once */
  int clear = ctx->stdout_tty && !ctx->json;
  for (uint64_t frame = 0; !interrupted && (!count_given || frame < count); frame++) {
    if (frame) sleep_interruptible(interval);
    if (interrupted) break;
    Prefixd__V1__StatsResponse *r;
    if ((rc = fetch_stats(ctx, &r))) return rc;
    if (ctx->json) {
      stats_json(r, 0);
    } else {
      char now[40];
      if (clear)
        fputs("\033[H\033[2J", stdout);
      else if (frame)
        fputc('\n', stdout);
      printf("%skvctl stats every %us, %s, %s%s%s\n\n", kv_style_on(KV_DIM), interval, ctx->address,
             kv_fmt_time(now, sizeof now, kv_now_ms()), clear ? " (Ctrl-C to stop)" : "",
             kv_style_off(KV_DIM));
      stats_human(r);
    }
    fflush(stdout);
    protobuf_c_message_free_unpacked(&r->base, NULL);
  }
  return KV_EXIT_OK;
}
