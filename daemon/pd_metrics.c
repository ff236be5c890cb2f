/*
 * pd_metrics.c -- see pd_metrics.h for the design. First the exposition text (engine thread),
 * then what the HTTP server answers (loop thread; the connections are pd_http1's).
 *
 * A /metrics job is a struct mjob whose first member is the pd_job, so pd_job_free frees the
 * whole of it. Its on_done callback runs on the loop thread when the engine is done with it; if
 * the connection went away meanwhile (pd_http1's on_gone), the job only frees itself.
 */
#include "pd_metrics.h"

#include <http_parser.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pd_err.h"
#include "pd_http1.h"
#include "pd_log.h"
#include "pd_strbuf.h"

#ifndef PD_VERSION
#define PD_VERSION "unknown"
#endif

/* ---- the exposition text (engine thread) ----------------------------------------------------- */

/* A label value, escaped as the text format wants (backslash, double quote, newline). */
static void sb_label(pd_strbuf *b, const char *v) {
  for (const char *run = v;; v++) {
    if (*v && *v != '\\' && *v != '"' && *v != '\n') continue;
    pd_strbuf_printf(b, "%.*s", (int)(v - run), run);
    if (!*v) return;
    pd_strbuf_printf(b, "\\%c", *v == '\n' ? 'n' : *v);
    run = v + 1;
  }
}

static void family(pd_strbuf *b, const char *name, const char *type, const char *help) {
  pd_strbuf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void sample_u(pd_strbuf *b, const char *name, uint64_t v) {
  pd_strbuf_printf(b, "%s %llu\n", name, (unsigned long long)v);
}

static void sample_f(pd_strbuf *b, const char *name, double v) {
  pd_strbuf_printf(b, "%s %.12g\n", name, v);
}

static const char *const tier_names[PD_TIERS] = {"device", "host", "disk"};
static const char *const spec_sources[PD_SPEC_SOURCES] = {"text", "cache", "grammar"};

/* One sample per value of a label: name{label="values[i]"} v[i], i < n. */
static void per_label(pd_strbuf *b, const char *name, const char *label, const char *const *values,
                      const uint64_t *v, int n) {
  for (int i = 0; i < n; i++)
    pd_strbuf_printf(b, "%s{%s=\"%s\"} %llu\n", name, label, values[i], (unsigned long long)v[i]);
}

/* One sample per tier: name{tier="..."} v[t]. */
static void per_tier(pd_strbuf *b, const char *name, const uint64_t v[PD_TIERS]) {
  per_label(b, name, "tier", tier_names, v, PD_TIERS);
}

static void histogram(pd_strbuf *b, const char *name, const char *help,
                      const pd_engine_histogram *h) {
  family(b, name, "histogram", help);
  for (int i = 0; i < PD_HIST_BUCKETS; i++)
    pd_strbuf_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, pd_engine_hist_le_ms[i] / 1000.0,
                     (unsigned long long)h->le[i]);
  pd_strbuf_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)h->count);
  pd_strbuf_printf(b, "%s_sum %.12g\n", name, h->sum_ms / 1000.0);
  pd_strbuf_printf(b, "%s_count %llu\n", name, (unsigned long long)h->count);
}

int pd_metrics_render(pd_engine *e, char **text, size_t *n_text) {
  pd_strbuf b = {0};
  pd_strbuf_puts(&b, ""); /* an empty exposition is still a string */
  int64_t now_ms = pd_grpc_now_ms();

  /* process */
  family(&b, "prefixd_build_info", "gauge", "Always 1; the labels name the build and the model.");
  pd_strbuf_printf(&b, "prefixd_build_info{version=\"%s\",backend=\"cpu\",model=\"", PD_VERSION);
  sb_label(&b, e->model_desc);
  pd_strbuf_printf(&b, "\"} 1\n");
  family(&b, "prefixd_uptime_seconds", "gauge", "Seconds since the engine was created.");
  sample_f(&b, "prefixd_uptime_seconds", (double)(now_ms - e->start_ms) / 1000.0);
  family(&b, "prefixd_start_time_seconds", "gauge", "Unix time the engine was created.");
  struct timespec wall;
  clock_gettime(CLOCK_REALTIME, &wall);
  int64_t start_unix_ms =
      (int64_t)wall.tv_sec * 1000 + wall.tv_nsec / 1000000 - (now_ms - e->start_ms);
  pd_strbuf_printf(&b, "prefixd_start_time_seconds %.3f\n", (double)start_unix_ms / 1000.0);

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
      {"prefixd_tenant_computed_tokens_total", "counter",
       "A tenant's computed tokens (prompt tokens not in the cache, and generated ones): what "
       "its tokens-per-minute limit counts."},
      {"prefixd_tenant_rate_limited_total", "counter",
       "A tenant's requests refused by its rate limits."},
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
          pd_strbuf_printf(&b, "%s{tenant=\"", tf[f].name);
          sb_label(&b, t->name);
          pd_strbuf_printf(&b, "\",tier=\"%s\"} %llu\n", tier_names[k],
                           (unsigned long long)t->used[k]);
        }
        continue;
      case 1: v = c ? c->requests : 0; break;
      case 2: v = c ? c->hit_tokens : 0; break;
      case 3: v = c ? c->query_tokens : 0; break;
      case 4: v = c ? c->computed_tokens : 0; break;
      case 5: v = c ? c->rate_limited : 0; break;
      default: v = c ? c->active : 0; break;
      }
      pd_strbuf_printf(&b, "%s{tenant=\"", tf[f].name);
      sb_label(&b, t->name);
      pd_strbuf_printf(&b, "\"} %llu\n", (unsigned long long)v);
    }
  }

  /* requests */
  family(&b, "prefixd_requests_total", "counter", "Generate and Warm requests queued.");
  sample_u(&b, "prefixd_requests_total", e->requests);
  family(&b, "prefixd_generated_tokens_total", "counter", "Tokens generated.");
  sample_u(&b, "prefixd_generated_tokens_total", e->generated_tokens);
  family(&b, "prefixd_preemptions_total", "counter",
         "Running sequences whose KV blocks were taken back for an older one's next block "
         "(--kv-admission incremental); each resumed from the prefix cache.");
  sample_u(&b, "prefixd_preemptions_total", e->preemptions);
  family(&b, "prefixd_spec_draft_tokens_total", "counter",
         "Draft tokens verified by speculative decoding (--speculate), checked in the pass that "
         "computed the request's next token; source: text (the request's own prompt and "
         "output) or cache (what followed the same context in the prefix cache).");
  per_label(&b, "prefixd_spec_draft_tokens_total", "source", spec_sources, e->spec_draft_tokens,
            PD_SPEC_SOURCES);
  family(&b, "prefixd_spec_accepted_tokens_total", "counter",
         "Draft tokens kept: generated tokens that cost no forward pass of their own.");
  per_label(&b, "prefixd_spec_accepted_tokens_total", "source", spec_sources,
            e->spec_accepted_tokens, PD_SPEC_SOURCES);
  family(&b, "prefixd_recomputed_tokens_total", "counter",
         "Tokens resumed sequences computed again: a partial last block, and blocks that left "
         "the cache while they waited.");
  sample_u(&b, "prefixd_recomputed_tokens_total", e->recomputed_tokens);
  family(&b, "prefixd_cpu_threads", "gauge",
         "Threads of the CPU forward pass now (--threads auto: fewer while other processes keep "
         "CPUs busy).");
  sample_u(&b, "prefixd_cpu_threads", (uint64_t)atomic_load(&e->cpu_threads));
  family(&b, "prefixd_cpu_threads_allowed", "gauge",
         "CPUs this process may use: its affinity, capped by a cgroup CPU quota.");
  sample_u(&b, "prefixd_cpu_threads_allowed", (uint64_t)e->cpu_share.allowed);
  family(&b, "prefixd_queue_depth", "gauge", "Sequences waiting for admission.");
  sample_u(&b, "prefixd_queue_depth", (uint64_t)e->n_queued);
  family(&b, "prefixd_running_sequences", "gauge", "Sequences in the batch.");
  sample_u(&b, "prefixd_running_sequences", (uint64_t)e->n_running);
  family(&b, "prefixd_rpcs_total", "counter",
         "RPCs the engine answered, by gRPC status (errors: every code but OK).");
  for (int s = 0; s < PD_GRPC_STATUSES; s++)
    pd_strbuf_printf(&b, "prefixd_rpcs_total{code=\"%s\"} %llu\n", pd_grpc_status_name(s),
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
    pd_strbuf_printf(&b, "prefixd_spilled_blocks_total{tier=\"%s\"} %llu\n", tier_names[t],
                     (unsigned long long)spilled[t]);
  family(&b, "prefixd_restored_blocks_total", "counter",
         "Blocks brought back to the device tier on a hit, by the tier they came from.");
  for (int t = 1; t < PD_TIERS; t++)
    pd_strbuf_printf(&b, "prefixd_restored_blocks_total{tier=\"%s\"} %llu\n", tier_names[t],
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
  pd_strbuf_printf(&b, "prefixd_restore_decisions_total{choice=\"restore\"} %llu\n",
                   (unsigned long long)c.restore_chosen);
  pd_strbuf_printf(&b, "prefixd_restore_decisions_total{choice=\"recompute\"} %llu\n",
                   (unsigned long long)c.recompute_chosen);
  family(&b, "prefixd_restore_rate_bytes_per_second", "gauge",
         "Measured transfer rate into the device tier from a colder tier (moving average).");
  for (int t = 1; t < PD_TIERS; t++)
    pd_strbuf_printf(&b, "prefixd_restore_rate_bytes_per_second{tier=\"%s\"} %.12g\n",
                     tier_names[t], c.rate_bps[t]);
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
#define REQUEST_MS   10000 /* from a request's first byte to its end */
#define WRITE_MS     10000 /* for the client to take a response */
#define MAX_REQUESTS 100   /* per connection */

typedef struct mjob {
  pd_job job;       /* first: pd_job_free frees the whole struct */
  pd_http1_conn *c; /* NULL once the connection is gone (loop thread only) */
  char *text;       /* the exposition, in the job's arena (written by the engine thread) */
  size_t n_text;
} mjob;

struct pd_metrics {
  pd_http1 *http; /* the connections; NULL once closed */
  pd_engine *engine;
  int closing, ready, quiescing;
  size_t in_flight; /* jobs in the engine */
};

static void maybe_free(pd_metrics *m) {
  if (m->closing && !m->http && m->in_flight == 0) free(m);
}

static void respond_text(pd_http1_conn *c, int code, const char *text) {
  pd_http1_respond(c, code, "text/plain; charset=utf-8",
                   code == 405 ? "Allow: GET, HEAD\r\n" : NULL, text, strlen(text));
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
  pd_http1_conn *c = j->c;
  m->in_flight--;
  if (c) pd_http1_end_work(c);
  if (c && (job->status != PD_GRPC_OK || !j->text)) {
    pd_log(PD_LOG_WARN, "metrics: the engine could not render", "status=%d message=\"%s\"",
           job->status, job->message);
    respond_text(c, 500, "the metrics could not be rendered\n");
  } else if (c) {
    pd_http1_respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, j->text, j->n_text);
  }
  pd_job_free(job);
  maybe_free(m);
}

/* The connection went away while its scrape was in the engine: the job frees itself. */
static void scrape_gone(void *work, void *user) {
  (void)user;
  mjob *j = work;
  j->c = NULL;
  atomic_store(&j->job.cancelled, 1);
}

static void start_scrape(pd_metrics *m, pd_http1_conn *c) {
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
  pd_http1_begin_work(c, j); /* the engine answers between two steps */
  m->in_flight++;
  pd_engine_submit(m->engine, &j->job);
}

/* ---- requests -------------------------------------------------------------------------------- */

static int path_is(const pd_http1_request *req, const char *want) {
  return req->n_path == strlen(want) && !memcmp(req->path, want, req->n_path);
}

static void on_request(pd_http1_conn *c, const pd_http1_request *req, void *user) {
  pd_metrics *m = user;
  if (req->method != HTTP_GET && req->method != HTTP_HEAD)
    respond_text(c, 405, "only GET and HEAD\n");
  else if (path_is(req, "/metrics"))
    start_scrape(m, c);
  else if (path_is(req, "/healthz"))
    respond_text(c, 200, "ok\n");
  else if (path_is(req, "/readyz"))
    respond_text(c, m->ready ? 200 : 503, m->ready ? "ready\n" : "draining\n");
  else if (path_is(req, "/"))
    respond_text(c, 200, "prefixd: /metrics (Prometheus), /healthz, /readyz\n");
  else
    respond_text(c, 404, "not found: try /metrics, /healthz or /readyz\n");
}

static void on_error(pd_http1_conn *c, int code, const char *message, void *user) {
  (void)user;
  char text[128];
  snprintf(text, sizeof text, "%s\n", message);
  respond_text(c, code, text);
}

static void on_http_closed(void *user) {
  pd_metrics *m = user;
  m->http = NULL;
  maybe_free(m);
}

int pd_metrics_create(uv_loop_t *loop, pd_engine *engine, pd_metrics **out) {
  pd_metrics *m = calloc(1, sizeof *m);
  if (!m) return PD_ENOMEM;
  m->engine = engine;
  pd_http1_config cfg = {.name = "metrics",
                         .max_conns = MAX_CONNS,
                         .max_body = 0,
                         .max_requests = MAX_REQUESTS,
                         .request_ms = REQUEST_MS,
                         .send_ms = WRITE_MS,
                         .on_request = on_request,
                         .on_error = on_error,
                         .on_gone = scrape_gone,
                         .on_closed = on_http_closed,
                         .user = m};
  int rc = pd_http1_create(loop, &cfg, &m->http);
  if (rc) {
    free(m);
    return rc;
  }
  *out = m;
  return PD_OK;
}

int pd_metrics_listen(pd_metrics *m, const char *host, int port, int *bound_port) {
  return pd_http1_listen(m->http, host, port, NULL, bound_port);
}

void pd_metrics_set_ready(pd_metrics *m, int ready) {
  if (m) m->ready = ready;
}

size_t pd_metrics_quiesce(pd_metrics *m) {
  if (!m) return 0;
  m->quiescing = 1;
  return m->in_flight;
}

void pd_metrics_close(pd_metrics *m) {
  if (!m || m->closing) return;
  m->closing = 1;
  m->ready = 0;
  pd_http1_close(m->http); /* on_http_closed frees m, now or later, once no job is out */
}
