/*
 * pd_metrics.c -- see pd_metrics.h for the design. First the exposition text (engine thread),
 * then the HTTP server (loop thread).
 *
 * A connection moves through states: IDLE (waiting for a request's first byte; 60 s), READING
 * (10 s to complete it), WAITING (its /metrics job is in the engine; reading is stopped),
 * WRITING (10 s for the client to take the response), LINGER (answered with "Connection: close":
 * the write side is shut, input is discarded for up to 2 s), CLOSING. Each connection embeds its
 * TCP handle and a timer; its memory goes when both close callbacks have run.
 *
 * A /metrics job is a struct mjob whose first member is the pd_job, so pd_job_free frees the
 * whole of it. Its on_done callback runs on the loop thread when the engine is done with it; if
 * the connection went away meanwhile, the job only frees itself.
 */
#include "pd_metrics.h"

#include <http_parser.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pd_err.h"
#include "pd_tcp.h"
#include "pd_log.h"

#ifndef PD_VERSION
#define PD_VERSION "unknown"
#endif

/* ---- the exposition text (engine thread) ----------------------------------------------------- */

typedef struct sbuf {
  char *p;
  size_t n, cap;
  int oom;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
  if (b->oom) return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(b->p + b->n, b->cap - b->n, fmt, ap);
    va_end(ap);
    if (k < 0) {
      b->oom = 1;
      return;
    }
    if ((size_t)k < b->cap - b->n) {
      b->n += (size_t)k;
      return;
    }
    size_t cap = b->cap * 2 + (size_t)k;
    char *q = realloc(b->p, cap);
    if (!q) {
      b->oom = 1;
      return;
    }
    b->p = q;
    b->cap = cap;
  }
}

/* A label value, escaped as the text format wants (backslash, double quote, newline). */
static void sb_label(sbuf *b, const char *v) {
  for (const char *run = v;; v++) {
    if (*v && *v != '\\' && *v != '"' && *v != '\n') continue;
    sb_printf(b, "%.*s", (int)(v - run), run);
    if (!*v) return;
    sb_printf(b, "\\%c", *v == '\n' ? 'n' : *v);
    run = v + 1;
  }
}

static void family(sbuf *b, const char *name, const char *type, const char *help) {
  sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void sample_u(sbuf *b, const char *name, uint64_t v) {
  sb_printf(b, "%s %llu\n", name, (unsigned long long)v);
}

static void sample_f(sbuf *b, const char *name, double v) {
  sb_printf(b, "%s %.12g\n", name, v);
}

static const char *const tier_names[PD_TIERS] = {"device", "host", "disk"};

/* One sample per tier: name{tier="..."} v[t]. */
static void per_tier(sbuf *b, const char *name, const uint64_t v[PD_TIERS]) {
  for (int t = 0; t < PD_TIERS; t++)
    sb_printf(b, "%s{tier=\"%s\"} %llu\n", name, tier_names[t], (unsigned long long)v[t]);
}

static void histogram(sbuf *b, const char *name, const char *help, const pd_engine_histogram *h) {
  family(b, name, "histogram", help);
  for (int i = 0; i < PD_HIST_BUCKETS; i++)
    sb_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, pd_engine_hist_le_ms[i] / 1000.0,
              (unsigned long long)h->le[i]);
  sb_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)h->count);
  sb_printf(b, "%s_sum %.12g\n", name, h->sum_ms / 1000.0);
  sb_printf(b, "%s_count %llu\n", name, (unsigned long long)h->count);
}

static const char *const status_names[PD_GRPC_STATUSES] = {
    "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
    "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
    "DATA_LOSS", "UNAUTHENTICATED"};

int pd_metrics_render(pd_engine *e, char **text, size_t *n_text) {
  sbuf b = {malloc(16384), 0, 16384, 0};
  if (!b.p) return PD_ENOMEM;
  b.p[0] = 0;
  int64_t now_ms = pd_grpc_now_ms();

  /* process */
  family(&b, "prefixd_build_info", "gauge", "Always 1; the labels name the build and the model.");
  sb_printf(&b, "prefixd_build_info{version=\"%s\",backend=\"cpu\",model=\"", PD_VERSION);
  sb_label(&b, e->model_desc);
  sb_printf(&b, "\"} 1\n");
  family(&b, "prefixd_uptime_seconds", "gauge", "Seconds since the engine was created.");
  sample_f(&b, "prefixd_uptime_seconds", (double)(now_ms - e->start_ms) / 1000.0);
  family(&b, "prefixd_start_time_seconds", "gauge", "Unix time the engine was created.");
  struct timespec wall;
  clock_gettime(CLOCK_REALTIME, &wall);
  int64_t start_unix_ms =
      (int64_t)wall.tv_sec * 1000 + wall.tv_nsec / 1000000 - (now_ms - e->start_ms);
  sb_printf(&b, "prefixd_start_time_seconds %.3f\n", (double)start_unix_ms / 1000.0);

  /* tiers */
  uint64_t used[PD_TIERS], cap[PD_TIERS], bytes[PD_TIERS], cap_bytes[PD_TIERS], on[PD_TIERS];
  pd_kvstore_counters kc = {0};
  uint64_t disk_records = 0, disk_used = 0, disk_map = 0;
  int have_disk = pd_tiers_disk_stats(e->tiers, &kc, &disk_records, &disk_used, &disk_map) == 0;
  const char *reason = "";
  int disk_on = pd_tiers_disk_enabled(e->tiers, &reason);
  for (int t = 0; t < PD_TIERS; t++) {
    uint64_t slot = t == 0 ? e->block_bytes : pd_tiers_slot_bytes(e->tiers, t);
    cap[t] = e->tree.cfg.tier_capacity[t];
    used[t] = cap[t] ? pd_radix_tier_used(&e->tree, t) : 0;
    bytes[t] = used[t] * slot;
    cap_bytes[t] = cap[t] * slot;
    if (t == 2 && have_disk) { /* the store's pages in use, and its map size */
      bytes[t] = disk_used;
      cap_bytes[t] = disk_map;
    }
    on[t] = cap[t] != 0 && (t != 2 || disk_on);
  }
  family(&b, "prefixd_tier_blocks", "gauge", "KV blocks held in each tier.");
  per_tier(&b, "prefixd_tier_blocks", used);
  family(&b, "prefixd_tier_capacity_blocks", "gauge", "KV blocks each tier can hold.");
  per_tier(&b, "prefixd_tier_capacity_blocks", cap);
  family(&b, "prefixd_tier_bytes", "gauge",
         "Bytes used in each tier (disk: the index pages and the payload pages in use).");
  per_tier(&b, "prefixd_tier_bytes", bytes);
  family(&b, "prefixd_tier_capacity_bytes", "gauge",
         "Bytes each tier may use (disk: the budget for index and payloads).");
  per_tier(&b, "prefixd_tier_capacity_bytes", cap_bytes);
  family(&b, "prefixd_tier_enabled", "gauge",
         "1 if the tier is configured and working; 0 if absent or disabled (disk after ENOSPC "
         "or EIO).");
  per_tier(&b, "prefixd_tier_enabled", on);
  family(&b, "prefixd_kv_bytes_per_token", "gauge",
         "KV bytes one token takes: 2 * layers * kv_heads * head_dim * sizeof(cache dtype).");
  sample_u(&b, "prefixd_kv_bytes_per_token", e->block_bytes / e->tree.cfg.block_tokens);

  /* the cache */
  family(&b, "prefixd_cache_hit_tokens_total", "counter",
         "Prompt tokens whose KV came from the cache (the hit rate's numerator).");
  sample_u(&b, "prefixd_cache_hit_tokens_total", e->tree.stats.hit_tokens);
  family(&b, "prefixd_cache_query_tokens_total", "counter",
         "Prompt tokens looked up in the cache (the hit rate's denominator).");
  sample_u(&b, "prefixd_cache_query_tokens_total", e->tree.stats.query_tokens);
  family(&b, "prefixd_cache_hit_tokens_by_tier_total", "counter",
         "Cache hit tokens by the tier their block was found in.");
  per_tier(&b, "prefixd_cache_hit_tokens_by_tier_total", e->tree.stats.hit_tokens_by_tier);

  /* tenants */
  uint32_t n_t = e->tree.tenants.n_tenants;
  static const struct {
    const char *name, *type, *help;
  } tf[] = {
      {"prefixd_tenant_blocks", "gauge", "KV blocks charged to a tenant in each tier."},
      {"prefixd_tenant_requests_total", "counter", "Generate and Warm requests a tenant queued."},
      {"prefixd_tenant_cache_hit_tokens_total", "counter",
       "A tenant's prompt tokens served from the cache."},
      {"prefixd_tenant_cache_query_tokens_total", "counter",
       "A tenant's prompt tokens looked up in the cache."},
      {"prefixd_tenant_active_requests", "gauge", "A tenant's queued and running sequences."},
  };
  for (size_t f = 0; f < sizeof tf / sizeof *tf; f++) {
    family(&b, tf[f].name, tf[f].type, tf[f].help);
    for (uint32_t i = 0; i < n_t; i++) {
      const pd_tenant *t = pd_tenants_get(&e->tree.tenants, i);
      if (!t) continue;
      const pd_tenant_counters *c = i < e->cap_counters ? &e->counters[i] : NULL;
      uint64_t v = 0;
      switch (f) {
      case 0:
        for (int k = 0; k < PD_TIERS; k++) {
          sb_printf(&b, "%s{tenant=\"", tf[f].name);
          sb_label(&b, t->name);
          sb_printf(&b, "\",tier=\"%s\"} %llu\n", tier_names[k], (unsigned long long)t->used[k]);
        }
        continue;
      case 1: v = c ? c->requests : 0; break;
      case 2: v = c ? c->hit_tokens : 0; break;
      case 3: v = c ? c->query_tokens : 0; break;
      default: v = c ? c->active : 0; break;
      }
      sb_printf(&b, "%s{tenant=\"", tf[f].name);
      sb_label(&b, t->name);
      sb_printf(&b, "\"} %llu\n", (unsigned long long)v);
    }
  }

  /* requests */
  family(&b, "prefixd_requests_total", "counter", "Generate and Warm requests queued.");
  sample_u(&b, "prefixd_requests_total", e->requests);
  family(&b, "prefixd_generated_tokens_total", "counter", "Tokens generated.");
  sample_u(&b, "prefixd_generated_tokens_total", e->generated_tokens);
  family(&b, "prefixd_queue_depth", "gauge", "Sequences waiting for admission.");
  sample_u(&b, "prefixd_queue_depth", (uint64_t)e->n_queued);
  family(&b, "prefixd_running_sequences", "gauge", "Sequences in the batch.");
  sample_u(&b, "prefixd_running_sequences", (uint64_t)e->n_running);
  family(&b, "prefixd_rpcs_total", "counter",
         "RPCs the engine answered, by gRPC status (errors: every code but OK).");
  for (int s = 0; s < PD_GRPC_STATUSES; s++)
    sb_printf(&b, "prefixd_rpcs_total{code=\"%s\"} %llu\n", status_names[s],
              (unsigned long long)e->rpc_status[s]);
  histogram(&b, "prefixd_queue_wait_seconds",
            "Generate requests' wait from arrival to admission into the batch.", &e->hist_queue);
  histogram(&b, "prefixd_time_to_first_token_seconds",
            "Generate requests' time from arrival to the first generated token.", &e->hist_ttft);
  histogram(&b, "prefixd_time_per_output_token_seconds",
            "Generate requests' mean time per generated token after the first (one observation "
            "per request).",
            &e->hist_token);

  /* storage */
  pd_tiers_counters c;
  pd_tiers_get_counters(e->tiers, &c);
  uint64_t spilled[PD_TIERS] = {0, c.demoted[1], c.demoted[2]};
  family(&b, "prefixd_spilled_blocks_total", "counter",
         "Blocks demoted into a tier from a hotter one (host: from device, disk: from host).");
  for (int t = 1; t < PD_TIERS; t++)
    sb_printf(&b, "prefixd_spilled_blocks_total{tier=\"%s\"} %llu\n", tier_names[t],
              (unsigned long long)spilled[t]);
  family(&b, "prefixd_restored_blocks_total", "counter",
         "Blocks brought back to the device tier on a hit, by the tier they came from.");
  for (int t = 1; t < PD_TIERS; t++)
    sb_printf(&b, "prefixd_restored_blocks_total{tier=\"%s\"} %llu\n", tier_names[t],
              (unsigned long long)c.restored[t]);
  family(&b, "prefixd_spill_bytes_total", "counter", "Bytes moved to colder tiers.");
  sample_u(&b, "prefixd_spill_bytes_total", c.spill_bytes);
  family(&b, "prefixd_restore_bytes_total", "counter", "Bytes restored to the device tier.");
  sample_u(&b, "prefixd_restore_bytes_total", c.restore_bytes);
  family(&b, "prefixd_dropped_blocks_total", "counter",
         "Blocks that left the cache, by the tier they left from.");
  per_tier(&b, "prefixd_dropped_blocks_total", c.dropped);
  family(&b, "prefixd_disk_writes_total", "counter",
         "Records written to the disk tier (spills and write-through copies).");
  sample_u(&b, "prefixd_disk_writes_total", c.disk_writes);
  family(&b, "prefixd_disk_write_bytes_total", "counter", "Bytes written to the disk tier.");
  sample_u(&b, "prefixd_disk_write_bytes_total", c.disk_write_bytes);
  family(&b, "prefixd_disk_reads_total", "counter", "Records read from the disk tier.");
  sample_u(&b, "prefixd_disk_reads_total", c.disk_reads);
  family(&b, "prefixd_disk_deletes_total", "counter", "Records deleted from the disk tier.");
  sample_u(&b, "prefixd_disk_deletes_total", c.disk_deletes);
  family(&b, "prefixd_disk_checksum_failures_total", "counter",
         "Stored blocks found corrupt: deleted, never served.");
  sample_u(&b, "prefixd_disk_checksum_failures_total", kc.checksum_failures);
  family(&b, "prefixd_disk_read_races_total", "counter",
         "Disk reads that met their block being replaced or deleted meanwhile (a miss, or read "
         "again): not corruption.");
  sample_u(&b, "prefixd_disk_read_races_total", kc.read_races);
  family(&b, "prefixd_disk_direct_io", "gauge",
         "1 when the disk tier reads and writes with O_DIRECT, 0 through the page cache.");
  sample_u(&b, "prefixd_disk_direct_io", kc.direct_io);
  family(&b, "prefixd_restore_read_failures_total", "counter",
         "Restores whose block was missing or corrupt (recomputed instead).");
  sample_u(&b, "prefixd_restore_read_failures_total", c.read_failures);
  family(&b, "prefixd_disk_map_full_retries_total", "counter",
         "Disk writes retried after evicting the disk LRU (the disk tier full).");
  sample_u(&b, "prefixd_disk_map_full_retries_total", c.map_full_retries);
  family(&b, "prefixd_write_through_blocks_total", "counter",
         "Hot blocks copied to disk (second use, warmed or pinned).");
  sample_u(&b, "prefixd_write_through_blocks_total", c.write_through);
  family(&b, "prefixd_write_filtered_blocks_total", "counter",
         "Spills to disk the write filter turned into drops.");
  sample_u(&b, "prefixd_write_filtered_blocks_total", c.write_filtered);
  family(&b, "prefixd_restore_decisions_total", "counter",
         "Cold prefixes restored from a colder tier or recomputed, whichever was faster.");
  sb_printf(&b, "prefixd_restore_decisions_total{choice=\"restore\"} %llu\n",
            (unsigned long long)c.restore_chosen);
  sb_printf(&b, "prefixd_restore_decisions_total{choice=\"recompute\"} %llu\n",
            (unsigned long long)c.recompute_chosen);
  family(&b, "prefixd_restore_rate_bytes_per_second", "gauge",
         "Measured transfer rate into the device tier from a colder tier (moving average).");
  for (int t = 1; t < PD_TIERS; t++)
    sb_printf(&b, "prefixd_restore_rate_bytes_per_second{tier=\"%s\"} %.12g\n", tier_names[t],
              c.rate_bps[t]);
  family(&b, "prefixd_disk_records", "gauge", "Blocks in the disk store.");
  sample_u(&b, "prefixd_disk_records", disk_records);
  family(&b, "prefixd_pin_saves_total", "counter",
         "Times the pinned prefixes were stored beside the disk tier's blocks.");
  sample_u(&b, "prefixd_pin_saves_total", c.meta_writes);
  family(&b, "prefixd_transfers_in_flight", "gauge", "Tier transfers queued or running.");
  sample_u(&b, "prefixd_transfers_in_flight", pd_tiers_in_flight(e->tiers));

  if (b.oom) {
    free(b.p);
    return PD_ENOMEM;
  }
  *text = b.p;
  *n_text = b.n;
  return PD_OK;
}
/* ---- the HTTP server (loop thread) ----------------------------------------------------------- */

#define MAX_CONNS    64
#define MAX_HEAD     8192  /* a request's line and headers */
#define MAX_URL      1024  /* within MAX_HEAD; longer: 414 */
#define READ_BUF     4096  /* one read; also the most a pipelined remainder can be */
#define IDLE_MS      60000 /* keep-alive: a connection with no request in progress */
#define REQUEST_MS   10000 /* from a request's first byte to its end */
#define WRITE_MS     10000 /* for the client to take a response */
#define LINGER_MS    2000  /* after "Connection: close": reading and discarding */
#define LINGER_BYTES (1u << 20)
#define MAX_REQUESTS 100 /* per connection */

enum { S_IDLE, S_READING, S_WAITING, S_WRITING, S_LINGER, S_CLOSING };

struct mjob;

typedef struct mconn {
  uv_tcp_t tcp; /* handle data of tcp and timer point back here */
  uv_timer_t timer;
  uv_shutdown_t shutdown;
  pd_metrics *m;
  struct mconn *prev, *next;
  http_parser parser;
  int state, open_handles;
  size_t head_bytes;   /* bytes of the current request parsed so far */
  size_t linger_bytes; /* discarded while lingering */
  char url[MAX_URL];
  size_t n_url;
  int error; /* a 4xx found while parsing, 0 = none */
  int done;  /* the request is complete; the parser is paused */
  int keep_alive;
  unsigned served;        /* requests answered on this connection */
  char in[READ_BUF];      /* libuv reads here */
  char pending[READ_BUF]; /* bytes read after the current request (pipelining) */
  size_t n_pending;
  struct mjob *job; /* the /metrics job in the engine */
} mconn;

typedef struct mjob {
  pd_job job; /* first: pd_job_free frees the whole struct */
  mconn *c;   /* NULL once the connection is gone (loop thread only) */
  int head;   /* HEAD: no body */
  char *text; /* the exposition, in the job's arena (written by the engine thread) */
  size_t n_text;
} mjob;

typedef struct mwrite {
  uv_write_t req;
  mconn *c;
  mjob *job; /* the body's owner, freed after the write; NULL for static bodies */
  int close_after;
  char head[512];
} mwrite;

struct pd_metrics {
  uv_tcp_t listener;
  uv_loop_t *loop;
  pd_engine *engine;
  int open_handles; /* the listener, once initialised */
  int closing, ready, quiescing;
  size_t n_conns, in_flight; /* connections not yet freed; jobs in the engine */
  uint64_t refused;          /* connections closed at accept (limit) */
  mconn *conns;
};

static http_parser_settings parser_settings;

static void conn_close(mconn *c);
static void feed(mconn *c, const char *p, size_t n);

static void maybe_free(pd_metrics *m) {
  if (m->closing && m->open_handles == 0 && m->n_conns == 0 && m->in_flight == 0) free(m);
}

static void timer_start(mconn *c, void (*cb)(uv_timer_t *), uint64_t ms) {
  uv_timer_start(&c->timer, cb, ms, 0);
}

static void on_conn_handle_closed(uv_handle_t *h) {
  mconn *c = h->data;
  if (--c->open_handles > 0) return;
  pd_metrics *m = c->m;
  free(c);
  m->n_conns--;
  maybe_free(m);
}

static void conn_close(mconn *c) {
  if (c->state == S_CLOSING) return;
  c->state = S_CLOSING;
  pd_metrics *m = c->m;
  if (c->prev)
    c->prev->next = c->next;
  else
    m->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  if (c->job) { /* the engine still has it: it frees itself when it comes back */
    c->job->c = NULL;
    atomic_store(&c->job->job.cancelled, 1);
    c->job = NULL;
  }
  uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
  uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  mconn *c = h->data;
  buf->base = c->in;
  buf->len = sizeof c->in;
}

static void on_close_timeout(uv_timer_t *t) {
  conn_close(t->data);
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  (void)req;
  (void)status; /* lingering goes on until EOF or the timer; a failure closes through either */
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  mconn *c = stream->data;
  if (nread == 0) return;
  if (nread < 0) { /* EOF or an error: nothing more to answer */
    conn_close(c);
    return;
  }
  if (c->state == S_LINGER) {
    c->linger_bytes += (size_t)nread;
    if (c->linger_bytes > LINGER_BYTES) conn_close(c);
    return;
  }
  if (c->state != S_IDLE && c->state != S_READING) return; /* reading is stopped then */
  feed(c, buf->base, (size_t)nread);
}

/* After a response with "Connection: close": shut the write side, discard input for a while. */
static void linger(mconn *c) {
  c->state = S_LINGER;
  c->linger_bytes = 0;
  timer_start(c, on_close_timeout, LINGER_MS);
  c->shutdown.data = c;
  if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, on_shutdown)) {
    conn_close(c);
    return;
  }
  uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

static void on_request_timeout(uv_timer_t *t);

/* Ready for the next request on this connection (pipelined bytes first). */
static void begin_request(mconn *c) {
  c->state = S_IDLE;
  http_parser_init(&c->parser, HTTP_REQUEST);
  c->parser.data = c;
  c->head_bytes = c->n_url = 0;
  c->error = c->done = 0;
  timer_start(c, on_close_timeout, IDLE_MS);
  if (c->n_pending) {
    size_t n = c->n_pending;
    c->n_pending = 0;
    feed(c, c->pending, n); /* may answer and move a further remainder to the front */
  }
  if (c->state == S_IDLE || c->state == S_READING)
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

static void on_write(uv_write_t *req, int status) {
  mwrite *w = (mwrite *)req;
  mconn *c = w->c;
  int close_after = w->close_after;
  if (w->job) pd_job_free(&w->job->job);
  free(w);
  if (c->state == S_CLOSING) return;
  if (status < 0)
    conn_close(c);
  else if (close_after)
    linger(c);
  else
    begin_request(c);
}

static const char *reason_phrase(int code) {
  switch (code) {
  case 200: return "OK";
  case 400: return "Bad Request";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 408: return "Request Timeout";
  case 414: return "URI Too Long";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  default: return "Service Unavailable";
  }
}

/* Writes a response. body (n_body bytes) is static, or job's (freed after the write). HEAD
 * requests get the head only. */
static void respond(mconn *c, int code, const char *extra, const char *ctype, const char *body,
                    size_t n_body, mjob *job, int head_only) {
  uv_read_stop((uv_stream_t *)&c->tcp);
  mwrite *w = calloc(1, sizeof *w);
  if (!w) {
    if (job) pd_job_free(&job->job);
    conn_close(c);
    return;
  }
  w->c = c;
  w->job = job;
  w->close_after = !c->keep_alive || c->m->closing;
  int n = snprintf(w->head, sizeof w->head,
                   "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s"
                   "Cache-Control: no-store\r\nConnection: %s\r\n\r\n",
                   code, reason_phrase(code), ctype, n_body, extra ? extra : "",
                   w->close_after ? "close" : "keep-alive");
  uv_buf_t bufs[2] = {uv_buf_init(w->head, (unsigned)n),
                      uv_buf_init((char *)body, (unsigned)n_body)};
  c->state = S_WRITING;
  timer_start(c, on_close_timeout, WRITE_MS);
  if (uv_write(&w->req, (uv_stream_t *)&c->tcp, bufs, head_only || !n_body ? 1 : 2, on_write)) {
    if (job) pd_job_free(&job->job);
    free(w);
    conn_close(c);
  }
}

static void respond_text(mconn *c, int code, const char *text) {
  int head_only = c->done && c->parser.method == HTTP_HEAD;
  respond(c, code, code == 405 ? "Allow: GET, HEAD\r\n" : NULL, "text/plain; charset=utf-8", text,
          strlen(text), NULL, head_only);
}

/* A malformed, oversized or too slow request: answer and close. */
static void fail_request(mconn *c, int code) {
  c->keep_alive = 0;
  c->done = 0; /* not a HEAD we understood: send the body */
  const char *text = code == 431   ? "request line and headers are limited to 8 KiB\n"
                     : code == 414 ? "the URL is limited to 1 KiB\n"
                     : code == 408 ? "the request took too long\n"
                                   : "malformed request (only GET or HEAD without a body)\n";
  respond_text(c, code, text);
}

static void on_request_timeout(uv_timer_t *t) {
  mconn *c = t->data;
  fail_request(c, 408);
}

/* ---- /metrics: a job on the engine thread ---------------------------------------------------- */

static void scrape_run(pd_engine *e, pd_job *job) {
  mjob *j = (mjob *)job;
  char *text;
  size_t n;
  if (pd_metrics_render(e, &text, &n) == PD_OK) {
    j->text = pd_job_alloc(job, n + 1);
    if (j->text) {
      memcpy(j->text, text, n + 1);
      j->n_text = n;
    }
    free(text);
  }
  if (!j->text) {
    job->status = PD_GRPC_RESOURCE_EXHAUSTED;
    snprintf(job->message, sizeof job->message, "out of memory");
  }
}

static void scrape_done(pd_job *job, void *user) {
  pd_metrics *m = user;
  mjob *j = (mjob *)job;
  mconn *c = j->c;
  m->in_flight--;
  if (!c) { /* the client left */
    pd_job_free(job);
    maybe_free(m);
    return;
  }
  c->job = NULL;
  if (job->status != PD_GRPC_OK || !j->text) {
    pd_log(PD_LOG_WARN, "metrics: the engine could not render", "status=%d message=\"%s\"",
           job->status, job->message);
    pd_job_free(job);
    respond_text(c, 500, "the metrics could not be rendered\n");
    return;
  }
  respond(c, 200, NULL, "text/plain; version=0.0.4; charset=utf-8", j->text, j->n_text, j, j->head);
}

static void start_scrape(mconn *c, int head) {
  pd_metrics *m = c->m;
  if (m->quiescing || m->closing) {
    respond_text(c, 503, "shutting down\n");
    return;
  }
  mjob *j = calloc(1, sizeof *j);
  if (!j) {
    respond_text(c, 503, "out of memory\n");
    return;
  }
  j->job.kind = PD_JOB_CALL;
  j->job.run = scrape_run;
  j->job.on_done = scrape_done;
  j->job.done_user = m;
  atomic_init(&j->job.cancelled, 0);
  j->c = c;
  j->head = head;
  c->job = j;
  c->state = S_WAITING;
  uv_timer_stop(&c->timer); /* the engine answers between two steps */
  m->in_flight++;
  pd_engine_submit(m->engine, &j->job);
}

/* ---- requests -------------------------------------------------------------------------------- */

static int on_url(http_parser *p, const char *at, size_t n) {
  mconn *c = p->data;
  if (c->n_url + n > sizeof c->url) {
    c->error = 414;
    return -1;
  }
  memcpy(c->url + c->n_url, at, n);
  c->n_url += n;
  return 0;
}

static int on_headers_complete(http_parser *p) {
  mconn *c = p->data;
  if ((p->flags & F_CHUNKED) || ((p->flags & F_CONTENTLENGTH) && p->content_length > 0)) {
    c->error = 400; /* no request here has a body */
    return -1;
  }
  return 0;
}

static int on_message_complete(http_parser *p) {
  mconn *c = p->data;
  c->done = 1;
  http_parser_pause(p, 1); /* one request at a time: the rest waits in c->pending */
  return 0;
}

static int path_is(const char *path, size_t n, const char *want) {
  return n == strlen(want) && !memcmp(path, want, n);
}

static void handle_request(mconn *c) {
  pd_metrics *m = c->m;
  c->served++;
  c->keep_alive = http_should_keep_alive(&c->parser) && !c->parser.upgrade &&
                  c->served < MAX_REQUESTS && !m->closing;
  if (c->parser.upgrade) c->n_pending = 0; /* another protocol follows: not ours */
  int method = c->parser.method;
  if (method != HTTP_GET && method != HTTP_HEAD) {
    c->keep_alive = 0;
    respond_text(c, 405, "only GET and HEAD\n");
    return;
  }
  struct http_parser_url u;
  http_parser_url_init(&u);
  if (http_parser_parse_url(c->url, c->n_url, 0, &u) || !(u.field_set & (1 << UF_PATH))) {
    fail_request(c, 400);
    return;
  }
  const char *path = c->url + u.field_data[UF_PATH].off;
  size_t n = u.field_data[UF_PATH].len;
  if (path_is(path, n, "/metrics"))
    start_scrape(c, method == HTTP_HEAD);
  else if (path_is(path, n, "/healthz"))
    respond_text(c, 200, "ok\n");
  else if (path_is(path, n, "/readyz"))
    respond_text(c, m->ready ? 200 : 503, m->ready ? "ready\n" : "draining\n");
  else if (path_is(path, n, "/"))
    respond_text(c, 200, "prefixd: /metrics (Prometheus), /healthz, /readyz\n");
  else
    respond_text(c, 404, "not found: try /metrics, /healthz or /readyz\n");
}

/* Parses bytes of the current request; answers it once complete. p may be c->pending. */
static void feed(mconn *c, const char *p, size_t n) {
  if (c->state == S_IDLE) {
    c->state = S_READING;
    timer_start(c, on_request_timeout, REQUEST_MS);
  }
  if (c->head_bytes >= MAX_HEAD) {
    fail_request(c, 431);
    return;
  }
  size_t room = MAX_HEAD - c->head_bytes, chunk = n < room ? n : room;
  size_t used = http_parser_execute(&c->parser, &parser_settings, p, chunk);
  c->head_bytes += used;
  if (c->done) {
    size_t left = n - used;
    memmove(c->pending, p + used, left); /* left <= READ_BUF: p held at most one read */
    c->n_pending = left;
    handle_request(c);
    return;
  }
  enum http_errno err = HTTP_PARSER_ERRNO(&c->parser);
  if (err != HPE_OK) {
    fail_request(c, c->error ? c->error : err == HPE_HEADER_OVERFLOW ? 431 : 400);
    return;
  }
  if (used < n) fail_request(c, 431); /* cut by MAX_HEAD */
}

/* ---- the listener ---------------------------------------------------------------------------- */

static void refuse(pd_metrics *m, uv_stream_t *listener) {
  pd_tcp_refuse(m->loop, listener);
  if (m->refused++ % 1000 == 0)
    pd_log(PD_LOG_WARN, "metrics: connection limit reached, closing new connections",
           "limit=%d refused=%llu", MAX_CONNS, (unsigned long long)m->refused);
}

static void on_connection(uv_stream_t *listener, int status) {
  pd_metrics *m = listener->data;
  if (status < 0) return;
  mconn *c = m->n_conns < MAX_CONNS && !m->closing ? calloc(1, sizeof *c) : NULL;
  if (!c) {
    refuse(m, listener);
    return;
  }
  c->m = m;
  uv_tcp_init(m->loop, &c->tcp);
  uv_timer_init(m->loop, &c->timer);
  c->tcp.data = c->timer.data = c;
  c->open_handles = 2;
  m->n_conns++;
  c->next = m->conns;
  if (m->conns) m->conns->prev = c;
  m->conns = c;
  if (uv_accept(listener, (uv_stream_t *)&c->tcp)) {
    conn_close(c);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  begin_request(c);
}

int pd_metrics_create(uv_loop_t *loop, pd_engine *engine, pd_metrics **out) {
  pd_metrics *m = calloc(1, sizeof *m);
  if (!m) return PD_ENOMEM;
  m->loop = loop;
  m->engine = engine;
  http_parser_settings_init(&parser_settings);
  parser_settings.on_url = on_url;
  parser_settings.on_headers_complete = on_headers_complete;
  parser_settings.on_message_complete = on_message_complete;
  *out = m;
  return PD_OK;
}

int pd_metrics_listen(pd_metrics *m, const char *host, int port, int *bound_port) {
  if (m->open_handles) return PD_EEXIST;
  int rc = pd_tcp_listen(m->loop, &m->listener, host, port, 128, on_connection, bound_port);
  if (rc != PD_EINVAL) { /* initialised: pd_metrics_close closes it */
    m->listener.data = m;
    m->open_handles = 1;
  }
  return rc;
}

void pd_metrics_set_ready(pd_metrics *m, int ready) {
  if (m) m->ready = ready;
}

size_t pd_metrics_quiesce(pd_metrics *m) {
  if (!m) return 0;
  m->quiescing = 1;
  return m->in_flight;
}

static void on_listener_closed(uv_handle_t *h) {
  pd_metrics *m = h->data;
  m->open_handles = 0;
  maybe_free(m);
}

void pd_metrics_close(pd_metrics *m) {
  if (!m || m->closing) return;
  m->closing = 1;
  m->ready = 0;
  for (mconn *c = m->conns, *next; c; c = next) {
    next = c->next;
    conn_close(c);
  }
  if (m->open_handles)
    uv_close((uv_handle_t *)&m->listener, on_listener_closed);
  else
    maybe_free(m);
}
