/*
 * pd_service.c -- see pd_service.h. First the loop-thread side (handlers, output), then the
 * bodies that run on the engine thread, one per RPC.
 */
#include "pd_service.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pd_err.h"
#include "pd_log.h"
#include "grpc/health/v1/health.pb-c.h"
#include "prefixd/v1/prefixd.pb-c.h"

/* ---- loop thread ----------------------------------------------------------------------------- */

static void live_add(pd_service *svc, pd_job *job) {
  job->live_next = svc->live;
  job->live_prev = NULL;
  if (svc->live) svc->live->live_prev = job;
  svc->live = job;
  svc->live_jobs++;
}

static void live_remove(pd_service *svc, pd_job *job) {
  if (job->live_prev)
    job->live_prev->live_next = job->live_next;
  else
    svc->live = job->live_next;
  if (job->live_next) job->live_next->live_prev = job->live_prev;
  svc->live_jobs--;
}

static void on_cancel(pd_grpc_call *call, void *user) {
  pd_job *job = user;
  atomic_store(&job->cancelled, 1);
}

void pd_service_cancel_all(pd_service *svc) {
  for (pd_job *j = svc->live; j; j = j->live_next)
    atomic_store(&j->cancelled, PD_JOB_CANCELLED_BY_SERVER);
}

static void submit(pd_service *svc, pd_grpc_call *call, const ProtobufCMessage *req,
                   enum pd_job_kind kind, pd_call_fn run) {
  const char *auth = pd_grpc_call_authorization(call);
  if (svc->draining) {
    pd_grpc_call_finish(call, PD_GRPC_UNAVAILABLE, "the server is shutting down");
    return;
  }
  pd_job *job = calloc(1, sizeof *job);
  if (!job) {
    pd_grpc_call_finish(call, PD_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  if (auth) {
    if (pd_job_take_bearer(job, auth, strlen(auth))) {
      free(job);
      pd_grpc_call_finish(call, PD_GRPC_UNAUTHENTICATED,
                          "authorization metadata must be 'Bearer <api key>'");
      return;
    }
  }
  job->kind = kind;
  if (kind != PD_JOB_CALL) { /* the generations and warms: named in the access log */
    snprintf(job->request_id, sizeof job->request_id, "req-%08x%08llx", svc->id_prefix,
             (unsigned long long)++svc->next_id);
    pd_grpc_call_set_request_id(call, job->request_id);
  }
  job->call = call;
  job->req = req;
  job->run = run;
  job->arrival_ms = pd_grpc_now_ms();
  job->deadline_ms = pd_grpc_call_deadline_ms(call);
  atomic_init(&job->cancelled, 0);
  pd_grpc_call_on_cancel(call, on_cancel, job);
  live_add(svc, job);
  pd_engine_submit(svc->engine, job);
}

/* Sends one chunk of a Generate stream: tokens, their text and, when asked for, their
 * log-probabilities (lps: (n_ids) or NULL). Returns 0 or an error (nothing was queued). */
static int reply_tokens(pd_grpc_call *call, int32_t *ids, uint32_t n_ids, char *text,
                        pd_token_logprob *lps) {
  Prefixd__V1__GenerateResponse r = PREFIXD__V1__GENERATE_RESPONSE__INIT;
  r.token_ids = ids;
  r.n_token_ids = n_ids;
  r.text = text ? text : "";
  Prefixd__V1__TokenLogprob *msgs = NULL, **ptrs = NULL;
  if (lps && n_ids) {
    msgs = malloc(n_ids * sizeof *msgs);
    ptrs = malloc(n_ids * sizeof *ptrs);
    if (!msgs || !ptrs) {
      free(msgs), free(ptrs);
      return PD_ENOMEM;
    }
    for (uint32_t i = 0; i < n_ids; i++) {
      prefixd__v1__token_logprob__init(&msgs[i]);
      msgs[i].token_id = ids[i];
      msgs[i].logprob = lps[i].logprob;
      msgs[i].n_top_ids = msgs[i].n_top_logprobs = (size_t)lps[i].n_top;
      msgs[i].top_ids = lps[i].top_ids;
      msgs[i].top_logprobs = lps[i].top_logprobs;
      ptrs[i] = &msgs[i];
    }
    r.logprobs = ptrs;
    r.n_logprobs = n_ids;
  }
  int rc = pd_grpc_call_reply(call, &r.base); /* packed now: nothing here is kept */
  free(msgs), free(ptrs);
  return rc;
}

void pd_service_output(pd_job *unused, void *user) {
  pd_service *svc = user;
  pd_job *list = pd_engine_take_output(svc->engine);
  for (pd_job *job = list, *next; job; job = next) {
    next = job->taken_next;
    if (job->on_done) { /* the daemon's own job (metrics): a call job comes back once, done */
      job->on_done(job, job->done_user);
      continue;
    }
    if (job->on_output) { /* another front end's (HTTP): it reads the output itself */
      job->on_output(job, job->output_user);
      continue;
    }
    pd_grpc_call *call = job->call;
    int32_t *ids;
    uint32_t n_ids;
    char *text;
    size_t n_text;
    int done;
    pd_token_logprob *lps;
    pd_engine_take_stream(svc->engine, job, &ids, &n_ids, &text, &n_text, &lps, &done);
    /* a reply that cannot be queued would leave a hole in the stream: the sequence stops and
     * the call ends with an error instead */
    if ((n_ids || n_text) && !job->reply_failed && reply_tokens(call, ids, n_ids, text, lps)) {
      job->reply_failed = 1;
      atomic_store(&job->cancelled, 1);
    }
    free(ids);
    free(text);
    free(lps);
    if (!done) continue;
    pd_grpc_call_on_cancel(call, NULL, NULL);
    int status = job->status;
    const char *message = job->message;
    if (status == PD_GRPC_OK && !job->reply_failed) {
      /* the engine found no memory for the answer, or the answer none to be queued */
      if ((!job->final && !job->resp) || (job->final && pd_grpc_call_reply(call, job->final)) ||
          (job->resp && pd_grpc_call_reply(call, job->resp)))
        job->reply_failed = 1;
    }
    if (job->reply_failed) {
      status = PD_GRPC_RESOURCE_EXHAUSTED;
      message = "out of memory for the reply";
    }
    if (job->retry_after_ms > 0) pd_grpc_call_set_pushback(call, job->retry_after_ms);
    pd_service_log_request(svc->engine, "grpc", job->kind == PD_JOB_WARM ? "Warm" : "Generate", job,
                           status, message);
    pd_grpc_call_finish(call, status, message[0] ? message : NULL);
    live_remove(svc, job);
    pd_job_free(job);
  }
}

/* A message as a logfmt value: no quote, backslash or line break; at most cap - 1 bytes. */
static void log_value(const char *in, char *out, size_t cap) {
  size_t n = 0;
  for (; *in && n + 1 < cap; in++) {
    unsigned char ch = (unsigned char)*in;
    out[n++] = ch == '"' ? '\'' : ch == '\\' ? '/' : ch < ' ' || ch == 127 ? ' ' : (char)ch;
  }
  out[n] = 0;
}

void pd_service_log_request(const pd_engine *e, const char *api, const char *rpc, const pd_job *job,
                            int status, const char *message) {
  if (!e->cfg.log_requests || job->kind == PD_JOB_CALL) return;
  static const char *const finishes[] = {"-", "stop", "length", "cancelled", "error"};
  unsigned prompt = 0, cached = 0, generated = 0;
  double queue_ms = 0, ttft_ms = 0;
  const char *finish = "-";
  if (job->kind == PD_JOB_GENERATE && job->final) {
    const Prefixd__V1__GenerateResponse *f = (const Prefixd__V1__GenerateResponse *)job->final;
    if (f->usage)
      prompt = f->usage->prompt_tokens, cached = f->usage->cached_tokens,
      generated = f->usage->generated_tokens;
    if (f->timings) queue_ms = f->timings->queue_ms, ttft_ms = f->timings->ttft_ms;
    if ((unsigned)f->finish_reason < sizeof finishes / sizeof *finishes)
      finish = finishes[f->finish_reason];
  } else if (job->kind == PD_JOB_WARM && job->resp) {
    const Prefixd__V1__WarmResponse *w = (const Prefixd__V1__WarmResponse *)job->resp;
    prompt = w->prompt_tokens, cached = w->cached_tokens;
  }
  char why[200] = "";
  if (status != PD_GRPC_OK && message && message[0]) log_value(message, why, sizeof why);
  pd_log(PD_LOG_INFO, "request",
         "api=%s rpc=%s id=%s tenant=%s status=%s prompt_tokens=%u cached_tokens=%u "
         "generated_tokens=%u finish=%s queue_ms=%.1f ttft_ms=%.1f total_ms=%lld%s%s%s",
         api, rpc, job->request_id[0] ? job->request_id : "-",
         job->tenant_name[0] ? job->tenant_name : "-", pd_grpc_status_name(status), prompt, cached,
         generated, finish, queue_ms, ttft_ms, (long long)(pd_grpc_now_ms() - job->arrival_ms),
         why[0] ? " error=\"" : "", why, why[0] ? "\"" : "");
}

static void health(pd_grpc_call *call, const ProtobufCMessage *req, void *user) {
  pd_service *svc = user;
  Prefixd__V1__HealthResponse r = PREFIXD__V1__HEALTH_RESPONSE__INIT;
  r.status = svc->draining ? PREFIXD__V1__HEALTH_RESPONSE__STATUS__STATUS_NOT_SERVING
                           : PREFIXD__V1__HEALTH_RESPONSE__STATUS__STATUS_SERVING;
  pd_grpc_call_reply(call, &r.base);
  pd_grpc_call_finish(call, PD_GRPC_OK, NULL);
}

/* ---- grpc.health.v1.Health (loop thread, no key) -------------------------------------------- */

/* One open Watch call. Owned by the service's watch list from the first reply until the client
 * goes (its cancel callback finishes the call and frees this). */
struct pd_health_watch {
  pd_grpc_call *call;
  pd_service *svc;
  int known; /* the service name was one of health_names: its status follows draining */
  pd_health_watch *prev, *next;
};

/* The names a health request may ask about: "" is the whole server. */
static const char *const health_names[] = {"", "prefixd.v1.Prefixd", "prefixd.v1.Admin"};

static int health_known(const char *service) {
  for (size_t i = 0; i < sizeof health_names / sizeof *health_names; i++)
    if (!strcmp(service, health_names[i])) return 1;
  return 0;
}

static int health_reply(pd_grpc_call *call,
                        Grpc__Health__V1__HealthCheckResponse__ServingStatus st) {
  Grpc__Health__V1__HealthCheckResponse r = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
  r.status = st;
  return pd_grpc_call_reply(call, &r.base);
}

static Grpc__Health__V1__HealthCheckResponse__ServingStatus health_now(const pd_service *svc) {
  return svc->draining ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING
                       : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
}

static void health_check(pd_grpc_call *call, const ProtobufCMessage *req, void *user) {
  const Grpc__Health__V1__HealthCheckRequest *r = (const Grpc__Health__V1__HealthCheckRequest *)req;
  if (!health_known(r->service)) {
    char msg[200];
    int n = snprintf(msg, sizeof msg, "unknown service \"%.80s\" (known:", r->service);
    for (size_t i = 0; i < sizeof health_names / sizeof *health_names; i++)
      n += snprintf(msg + n, sizeof msg - (size_t)n, "%s\"%s\"", i ? ", " : " ", health_names[i]);
    snprintf(msg + n, sizeof msg - (size_t)n, ")");
    pd_grpc_call_finish(call, PD_GRPC_NOT_FOUND, msg);
    return;
  }
  if (health_reply(call, health_now(user))) {
    pd_grpc_call_finish(call, PD_GRPC_RESOURCE_EXHAUSTED, "out of memory for the reply");
    return;
  }
  pd_grpc_call_finish(call, PD_GRPC_OK, NULL);
}

static void watch_gone(pd_grpc_call *call, void *user) {
  pd_health_watch *w = user;
  pd_service *svc = w->svc;
  if (w->prev)
    w->prev->next = w->next;
  else
    svc->watches = w->next;
  if (w->next) w->next->prev = w->prev;
  pd_grpc_call_finish(call, PD_GRPC_CANCELLED, NULL);
  free(w);
}

static void health_watch(pd_grpc_call *call, const ProtobufCMessage *req, void *user) {
  pd_service *svc = user;
  const Grpc__Health__V1__HealthCheckRequest *r = (const Grpc__Health__V1__HealthCheckRequest *)req;
  pd_health_watch *w = calloc(1, sizeof *w);
  int known = health_known(r->service);
  if (!w ||
      health_reply(
          call, known ? health_now(svc)
                      : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN)) {
    free(w);
    pd_grpc_call_finish(call, PD_GRPC_RESOURCE_EXHAUSTED, "out of memory for the reply");
    return;
  }
  w->call = call;
  w->svc = svc;
  w->known = known;
  w->next = svc->watches;
  if (svc->watches) svc->watches->prev = w;
  svc->watches = w;
  pd_grpc_call_on_cancel(call, watch_gone, w);
}

void pd_service_drain(pd_service *svc) {
  if (svc->draining) return;
  svc->draining = 1;
  for (pd_health_watch *w = svc->watches; w; w = w->next)
    if (w->known)
      health_reply(w->call, health_now(svc)); /* out of memory: the next probe sees it */
}

static void generate(pd_grpc_call *call, const ProtobufCMessage *req, void *user) {
  submit(user, call, req, PD_JOB_GENERATE, NULL);
}

static void warm(pd_grpc_call *call, const ProtobufCMessage *req, void *user) {
  submit(user, call, req, PD_JOB_WARM, NULL);
}

/* ---- engine thread: helpers ------------------------------------------------------------------ */

static void fail(pd_job *job, int status, const char *fmt, const char *arg) {
  job->status = status;
  snprintf(job->message, sizeof job->message, fmt, arg ? arg : "");
}

static int need_admin(pd_engine *e, pd_job *job) {
  if (job->is_admin) return 1;
  fail(job, PD_GRPC_PERMISSION_DENIED, "%s",
       e->has_admin ? "this RPC needs the admin key"
                    : "no admin key is configured (start prefixd with --admin-key-file)");
  return 0;
}

static void oom(pd_job *job) {
  fail(job, PD_GRPC_RESOURCE_EXHAUSTED, "out of memory%s", NULL);
}

/* Finds the prefix by its id and checks the caller may see it. Returns 0 and sets *node, or
 * fails the job. */
static int find_prefix(pd_engine *e, pd_job *job, const char *id, uint32_t *node) {
  pd_key128 k;
  if (!id || pd_key_parse(id, &k)) {
    fail(job, PD_GRPC_INVALID_ARGUMENT, "prefix_id must be 32 hex digits, got '%s'", id);
    return -1;
  }
  if (pd_radix_find(&e->tree, k, node)) {
    fail(job, PD_GRPC_NOT_FOUND, "no cached prefix %s", id);
    return -1;
  }
  const pd_node *nd = pd_radix_node(&e->tree, *node);
  /* another tenant's prefix is reported exactly like a missing one: ids reveal nothing */
  if (!job->is_admin && !pd_tenants_may_use(&e->tree.tenants, (uint32_t)job->tenant, nd->ns)) {
    fail(job, PD_GRPC_NOT_FOUND, "no cached prefix %s", id);
    return -1;
  }
  return 0;
}

static void tier_counts_set(Prefixd__V1__TierCounts *tc, const uint64_t c[PD_TIERS]) {
  prefixd__v1__tier_counts__init(tc);
  tc->device = c[0];
  tc->host = c[1];
  tc->disk = c[2];
}

/* Text of tokens, whole UTF-8 (special tokens rendered when render_special). Arena string. */
static char *tokens_text(pd_engine *e, pd_job *job, const int32_t *ids, size_t n,
                         int render_special, size_t max_bytes) {
  pd_detok *dt;
  if (pd_detok_create(e->tok, NULL, 0, &dt)) return NULL;
  size_t cap = 64, len = 0;
  char *out = malloc(cap);
  for (size_t i = 0; out && i < n && len < max_bytes; i++) {
    char piece[512];
    size_t n_piece = 0;
    int stopped;
    if (render_special && pd_tokenizer_is_special(e->tok, ids[i])) {
      const char *b;
      size_t bl;
      pd_detok_flush(dt, piece, sizeof piece, &n_piece);
      if (!pd_token_piece(e->tok, ids[i], &b, &bl) && n_piece + bl < sizeof piece) {
        memcpy(piece + n_piece, b, bl);
        n_piece += bl;
      }
    } else {
      pd_detok_push(dt, ids[i], piece, sizeof piece, &n_piece, &stopped);
    }
    if (len + n_piece + 64 > cap) {
      while (len + n_piece + 64 > cap) cap *= 2;
      char *grown = realloc(out, cap);
      if (!grown) {
        free(out);
        out = NULL;
        break;
      }
      out = grown;
    }
    memcpy(out + len, piece, n_piece);
    len += n_piece;
  }
  if (out && len < max_bytes) {
    size_t n_tail = 0;
    pd_detok_flush(dt, out + len, 64, &n_tail);
    len += n_tail;
  }
  pd_detok_free(dt);
  if (!out) return NULL;
  if (len > max_bytes) { /* cut at a character boundary */
    len = max_bytes;
    while (len > 0 && ((unsigned char)out[len] & 0xc0) == 0x80) len--;
  }
  out[len] = 0;
  char *kept = pd_job_strdup(job, out);
  free(out);
  return kept;
}

/* ---- engine thread: RPC bodies --------------------------------------------------------------- */

static void do_tokenize(pd_engine *e, pd_job *job) {
  int32_t *ids;
  uint32_t n;
  char err[256];
  int rc = pd_engine_job_prompt_tokens(e, job, &ids, &n, err, sizeof err);
  if (rc) {
    fail(job, rc == PD_ENOMEM ? PD_GRPC_RESOURCE_EXHAUSTED : PD_GRPC_INVALID_ARGUMENT, "%s", err);
    return;
  }
  Prefixd__V1__TokenizeResponse *r = pd_job_alloc(job, sizeof *r);
  int32_t *kept = pd_job_alloc(job, (n ? n : 1) * sizeof *kept);
  if (!r || !kept) {
    free(ids);
    oom(job);
    return;
  }
  prefixd__v1__tokenize_response__init(r);
  memcpy(kept, ids, n * sizeof *kept);
  free(ids);
  r->token_ids = kept;
  r->n_token_ids = n;
  job->resp = &r->base;
}

static void do_detokenize(pd_engine *e, pd_job *job) {
  const Prefixd__V1__DetokenizeRequest *req = (const void *)job->req;
  for (size_t i = 0; i < req->n_token_ids; i++)
    if (req->token_ids[i] < 0 || req->token_ids[i] >= e->model->n_vocab) {
      char at[64];
      snprintf(at, sizeof at, "%d at position %zu", req->token_ids[i], i);
      fail(job, PD_GRPC_INVALID_ARGUMENT, "token id %s is outside the vocabulary", at);
      return;
    }
  Prefixd__V1__DetokenizeResponse *r = pd_job_alloc(job, sizeof *r);
  char *text =
      r ? tokens_text(e, job, req->token_ids, req->n_token_ids, req->render_special, (size_t)-1 / 2)
        : NULL;
  if (!text) {
    oom(job);
    return;
  }
  prefixd__v1__detokenize_response__init(r);
  r->text = text;
  job->resp = &r->base;
}

static void do_lookup(pd_engine *e, pd_job *job) {
  const Prefixd__V1__LookupRequest *req = (const void *)job->req;
  if (job->is_admin) {
    fail(job, PD_GRPC_PERMISSION_DENIED, "%s", "Lookup needs a tenant's key");
    return;
  }
  uint32_t ns;
  int rc = pd_engine_resolve_ns(e, job->tenant, req->namespace_, &ns);
  if (rc) {
    fail(job, rc == PD_EPERM ? PD_GRPC_PERMISSION_DENIED : PD_GRPC_NOT_FOUND,
         "namespace '%s' is not available to this tenant", req->namespace_);
    return;
  }
  int32_t *ids;
  uint32_t n, cached = 0, by_tier[PD_TIERS] = {0};
  char err[256];
  if ((rc = pd_engine_job_prompt_tokens(e, job, &ids, &n, err, sizeof err))) {
    fail(job, rc == PD_ENOMEM ? PD_GRPC_RESOURCE_EXHAUSTED : PD_GRPC_INVALID_ARGUMENT, "%s", err);
    return;
  }
  pd_radix_peek(&e->tree, (uint32_t)job->tenant, ns, ids, n, &cached, by_tier);
  free(ids);
  Prefixd__V1__LookupResponse *r = pd_job_alloc(job, sizeof *r);
  Prefixd__V1__TierCounts *tc = pd_job_alloc(job, sizeof *tc);
  if (!r || !tc) {
    oom(job);
    return;
  }
  prefixd__v1__lookup_response__init(r);
  uint64_t c[PD_TIERS] = {by_tier[0], by_tier[1], by_tier[2]};
  tier_counts_set(tc, c);
  r->prompt_tokens = n;
  r->cached_tokens = cached;
  r->cached_tokens_by_tier = tc;
  job->resp = &r->base;
}

static void do_list_prefixes(pd_engine *e, pd_job *job) {
  const Prefixd__V1__ListPrefixesRequest *req = (const void *)job->req;
  int32_t tenant = job->tenant;
  if (req->tenant && req->tenant[0]) {
    if (!need_admin(e, job)) return;
    if ((tenant = pd_engine_tenant_id(e, req->tenant)) < 0) {
      fail(job, PD_GRPC_NOT_FOUND, "no tenant '%s'", req->tenant);
      return;
    }
  }
  uint32_t page = req->page_size ? req->page_size : 100;
  if (page > 1000) page = 1000;
  uint32_t cursor = 0;
  if (req->page_token && req->page_token[0]) {
    char *end;
    unsigned long v = strtoul(req->page_token, &end, 10);
    if (*end || v > UINT32_MAX) {
      fail(job, PD_GRPC_INVALID_ARGUMENT, "malformed page_token '%s'", req->page_token);
      return;
    }
    cursor = (uint32_t)v;
  }
  Prefixd__V1__ListPrefixesResponse *r = pd_job_alloc(job, sizeof *r);
  Prefixd__V1__Prefix **list = pd_job_alloc(job, page * sizeof *list);
  if (!r || !list) {
    oom(job);
    return;
  }
  prefixd__v1__list_prefixes_response__init(r);
  r->prefixes = list;
  pd_prefix_info info;
  int64_t unix_now = (int64_t)time(NULL) * 1000, mono_now = (int64_t)pd_engine_now_ms();
  uint32_t cap_tok = 0;
  int32_t *toks = NULL;
  while (r->n_prefixes < page && pd_radix_next_prefix(&e->tree, &cursor, tenant, &info)) {
    Prefixd__V1__Prefix *p = pd_job_alloc(job, sizeof *p);
    Prefixd__V1__TierCounts *tc = pd_job_alloc(job, sizeof *tc);
    char *id = pd_job_alloc(job, 33);
    if (!p || !tc || !id) break;
    prefixd__v1__prefix__init(p);
    pd_key_hex(info.id, id);
    p->id = id;
    if (info.has_parent) {
      char *parent = pd_job_alloc(job, 33);
      if (!parent) break;
      pd_key_hex(info.parent_id, parent);
      p->parent_id = parent;
    }
    const pd_tenant *tn = pd_tenants_get(&e->tree.tenants, info.tenant);
    const pd_namespace *ns = pd_tenants_ns(&e->tree.tenants, info.ns);
    p->tenant = pd_job_strdup(job, tn ? tn->name : "");
    p->namespace_ = pd_job_strdup(job, ns && ns->owner == PD_NS_SHARED ? ns->name : "");
    p->token_count = info.n_tokens;
    uint64_t c[PD_TIERS] = {info.blocks_by_tier[0], info.blocks_by_tier[1], info.blocks_by_tier[2]};
    tier_counts_set(tc, c);
    p->blocks = tc;
    p->hits = info.hits;
    p->last_use_unix_ms = unix_now - (mono_now - (int64_t)info.last_use);
    p->pinned = info.pinned;
    p->pin_expires_unix_ms = info.pinned && info.pin_until != PD_PIN_FOREVER
                                 ? unix_now + ((int64_t)info.pin_until - mono_now)
                                 : 0;
    uint32_t n_tok = 0;
    if (info.n_tokens > cap_tok) {
      cap_tok = info.n_tokens;
      free(toks);
      toks = malloc(cap_tok * sizeof *toks);
    }
    if (toks && !pd_radix_path_tokens(&e->tree, info.node, toks, cap_tok, &n_tok))
      p->preview = tokens_text(e, job, toks, n_tok < 64 ? n_tok : 64, 1, 120);
    if (!p->preview) p->preview = "";
    if (!p->tenant || !p->namespace_) break;
    list[r->n_prefixes++] = p;
  }
  free(toks);
  char *next = pd_job_alloc(job, 16);
  if (!next) {
    oom(job);
    return;
  }
  pd_prefix_info more;
  uint32_t probe = cursor;
  if (r->n_prefixes == page && pd_radix_next_prefix(&e->tree, &probe, tenant, &more))
    snprintf(next, 16, "%u", cursor);
  r->next_page_token = next;
  job->resp = &r->base;
}

static int tier_arg(Prefixd__V1__Tier t) {
  switch (t) {
  case PREFIXD__V1__TIER__TIER_DEVICE: return 0;
  case PREFIXD__V1__TIER__TIER_HOST: return 1;
  case PREFIXD__V1__TIER__TIER_DISK: return 2;
  default: return -1;
  }
}

static void do_evict(pd_engine *e, pd_job *job) {
  const Prefixd__V1__EvictRequest *req = (const void *)job->req;
  uint64_t counts[PD_TIERS] = {0};
  int tier = tier_arg(req->tier);
  if (req->tier < 0 || req->tier > PREFIXD__V1__TIER__TIER_DISK) {
    fail(job, PD_GRPC_INVALID_ARGUMENT, "unknown tier%s", NULL);
    return;
  }
  switch (req->target_case) {
  case PREFIXD__V1__EVICT_REQUEST__TARGET_PREFIX_ID: {
    uint32_t node;
    if (find_prefix(e, job, req->prefix_id, &node)) return;
    pd_engine_evict_prefix(e, node, tier, counts);
    break;
  }
  case PREFIXD__V1__EVICT_REQUEST__TARGET_TENANT: {
    if (!need_admin(e, job)) return;
    int32_t t = pd_engine_tenant_id(e, req->tenant);
    if (t < 0) {
      fail(job, PD_GRPC_NOT_FOUND, "no tenant '%s'", req->tenant);
      return;
    }
    pd_engine_evict(e, t, tier, counts);
    break;
  }
  case PREFIXD__V1__EVICT_REQUEST__TARGET_ALL:
    if (!req->all) {
      fail(job, PD_GRPC_INVALID_ARGUMENT, "%s", "all must be true when set");
      return;
    }
    pd_engine_evict(e, job->is_admin ? -1 : job->tenant, tier, counts);
    break;
  default: fail(job, PD_GRPC_INVALID_ARGUMENT, "%s", "set one of prefix_id, tenant or all"); return;
  }
  Prefixd__V1__EvictResponse *r = pd_job_alloc(job, sizeof *r);
  Prefixd__V1__TierCounts *tc = pd_job_alloc(job, sizeof *tc);
  if (!r || !tc) {
    oom(job);
    return;
  }
  prefixd__v1__evict_response__init(r);
  tier_counts_set(tc, counts);
  r->blocks_evicted = tc;
  job->resp = &r->base;
}

static void do_pin(pd_engine *e, pd_job *job) {
  const Prefixd__V1__PinRequest *req = (const void *)job->req;
  uint32_t node;
  if (find_prefix(e, job, req->prefix_id, &node)) return;
  uint64_t until =
      req->ttl_seconds ? pd_engine_now_ms() + (uint64_t)req->ttl_seconds * 1000 : PD_PIN_FOREVER;
  int rc = pd_radix_pin(&e->tree, node, until);
  if (rc == PD_OK) { /* a pinned prefix survives a restart: its blocks, and the pin */
    pd_tiers_keep(e->tiers, node);
    pd_pins_note(&e->pins, &e->tree, node);
  }
  if (rc) {
    fail(job, PD_GRPC_FAILED_PRECONDITION, "cannot pin: %s", pd_strerror(rc));
    return;
  }
  Prefixd__V1__PinResponse *r = pd_job_alloc(job, sizeof *r);
  if (!r) {
    oom(job);
    return;
  }
  prefixd__v1__pin_response__init(r);
  job->resp = &r->base;
}

static void do_unpin(pd_engine *e, pd_job *job) {
  const Prefixd__V1__UnpinRequest *req = (const void *)job->req;
  uint32_t node;
  if (find_prefix(e, job, req->prefix_id, &node)) return;
  if (pd_radix_unpin(&e->tree, node)) {
    fail(job, PD_GRPC_FAILED_PRECONDITION, "prefix %s is not pinned", req->prefix_id);
    return;
  }
  pd_pins_touch(&e->pins);
  Prefixd__V1__UnpinResponse *r = pd_job_alloc(job, sizeof *r);
  if (!r) {
    oom(job);
    return;
  }
  prefixd__v1__unpin_response__init(r);
  job->resp = &r->base;
}

static void do_stats(pd_engine *e, pd_job *job) {
  Prefixd__V1__StatsResponse *r = pd_job_alloc(job, sizeof *r);
  Prefixd__V1__TierStats *ts = pd_job_alloc(job, PD_TIERS * sizeof *ts);
  Prefixd__V1__TierStats **tsp = pd_job_alloc(job, PD_TIERS * sizeof *tsp);
  uint32_t n_t = e->tree.tenants.n_tenants;
  Prefixd__V1__TenantStats *tn = pd_job_alloc(job, (n_t + 1) * sizeof *tn);
  Prefixd__V1__TenantStats **tnp = pd_job_alloc(job, (n_t + 1) * sizeof *tnp);
  Prefixd__V1__TierCounts *tc = pd_job_alloc(job, (n_t + 1) * sizeof *tc);
  if (!r || !ts || !tsp || !tn || !tnp || !tc) {
    oom(job);
    return;
  }
  prefixd__v1__stats_response__init(r);
  static const char *const absent = "not configured (its size is 0)";
  pd_kvstore_counters kc = {0};
  uint64_t disk_records = 0, disk_used = 0, disk_map = 0;
  int have_disk = pd_tiers_disk_stats(e->tiers, &kc, &disk_records, &disk_used, &disk_map) == 0;
  const char *disk_reason = "";
  int disk_on = pd_tiers_disk_enabled(e->tiers, &disk_reason);
  for (int t = 0; t < PD_TIERS; t++) {
    prefixd__v1__tier_stats__init(&ts[t]);
    ts[t].tier = (Prefixd__V1__Tier)(t + 1);
    ts[t].blocks_capacity = e->tree.cfg.tier_capacity[t];
    ts[t].blocks_used = e->tree.cfg.tier_capacity[t] ? pd_radix_tier_used(&e->tree, t) : 0;
    ts[t].bytes_used = ts[t].blocks_used * pd_tiers_slot_bytes(e->tiers, t);
    ts[t].bytes_capacity = ts[t].blocks_capacity * pd_tiers_slot_bytes(e->tiers, t);
    if (t == 0) {
      ts[t].bytes_used = ts[t].blocks_used * e->block_bytes;
      ts[t].bytes_capacity = ts[t].blocks_capacity * e->block_bytes;
    }
    if (t == 2 && have_disk) {
      ts[t].bytes_used = disk_used; /* the store's pages in use (records and B-tree) */
      ts[t].bytes_capacity = disk_map;
    }
    ts[t].disabled = e->tree.cfg.tier_capacity[t] == 0 || (t == 2 && !disk_on);
    ts[t].disabled_reason = e->tree.cfg.tier_capacity[t] == 0 ? (char *)absent
                            : t == 2 && !disk_on              ? (char *)disk_reason
                                                              : "";
    tsp[t] = &ts[t];
  }
  Prefixd__V1__StorageStats *st = pd_job_alloc(job, sizeof *st);
  Prefixd__V1__TierCounts *dropped = pd_job_alloc(job, sizeof *dropped);
  if (st && dropped) {
    pd_tiers_counters c;
    pd_tiers_get_counters(e->tiers, &c);
    prefixd__v1__storage_stats__init(st);
    st->spilled_to_host_blocks = c.demoted[1];
    st->spilled_to_disk_blocks = c.demoted[2];
    st->restored_from_host_blocks = c.restored[1];
    st->restored_from_disk_blocks = c.restored[2];
    st->spill_bytes = c.spill_bytes;
    st->restore_bytes = c.restore_bytes;
    tier_counts_set(dropped, c.dropped);
    st->dropped_blocks = dropped;
    st->disk_writes = c.disk_writes;
    st->disk_write_bytes = c.disk_write_bytes;
    st->write_through_blocks = c.write_through;
    st->write_filtered_blocks = c.write_filtered;
    st->checksum_failures = kc.checksum_failures;
    st->read_failures = c.read_failures;
    st->map_full_retries = c.map_full_retries;
    st->restores_chosen = c.restore_chosen;
    st->recomputes_chosen = c.recompute_chosen;
    st->host_restore_bytes_per_second = c.rate_bps[1];
    st->disk_restore_bytes_per_second = c.rate_bps[2];
    static const char *const filters[] = {"second-use", "always", "pinned"};
    st->write_filter = (char *)filters[e->cfg.disk_write_filter];
    st->disk_records = disk_records;
    st->transfers_in_flight = pd_tiers_in_flight(e->tiers);
    st->pin_saves = c.meta_writes;
    st->pins_restored = e->pins_restored;
    r->storage = st;
  }
  r->tiers = tsp;
  r->n_tiers = PD_TIERS;
  for (uint32_t i = 0; i < n_t; i++) {
    const pd_tenant *t = pd_tenants_get(&e->tree.tenants, i);
    if (!t || (!job->is_admin && (int32_t)i != job->tenant)) continue;
    Prefixd__V1__TenantStats *s = &tn[r->n_tenants];
    prefixd__v1__tenant_stats__init(s);
    s->tenant = (char *)t->name;
    tier_counts_set(&tc[r->n_tenants], t->used);
    s->blocks = &tc[r->n_tenants];
    if (i < e->cap_counters) {
      s->requests = e->counters[i].requests;
      s->hit_tokens = e->counters[i].hit_tokens;
      s->query_tokens = e->counters[i].query_tokens;
      s->computed_tokens = e->counters[i].computed_tokens;
      s->rate_limited = e->counters[i].rate_limited;
    }
    tnp[r->n_tenants++] = s;
  }
  r->tenants = tnp;
  r->kv_bytes_per_token = e->block_bytes / e->tree.cfg.block_tokens;
  r->hit_tokens = e->tree.stats.hit_tokens;
  r->query_tokens = e->tree.stats.query_tokens;
  r->requests = e->requests;
  r->queue_depth = (uint32_t)e->n_queued;
  r->running = (uint32_t)e->n_running;
  r->preemptions = e->preemptions;
  r->recomputed_tokens = e->recomputed_tokens;
  r->generated_tokens = e->generated_tokens;
  for (int i = 0; i < PD_SPEC_SOURCES; i++) {
    r->spec_draft_tokens += e->spec_draft_tokens[i];
    r->spec_accepted_tokens += e->spec_accepted_tokens[i];
  }
  r->spec_cache_accepted_tokens = e->spec_accepted_tokens[PD_SPEC_FROM_CACHE];
  int64_t sec = pd_grpc_now_ms() / 1000;
  uint64_t sum = 0;
  for (int i = 0; i < 60; i++)
    if (e->window.second[i] > sec - 60 && e->window.second[i] < sec) sum += e->window.tokens[i];
  r->tokens_per_second = (double)sum / 59.0;
  r->uptime_seconds = (double)(pd_grpc_now_ms() - e->start_ms) / 1000.0;
  r->model = e->model_desc;
  r->backend = "cpu";
  job->resp = &r->base;
}

/* ---- engine thread: Admin -------------------------------------------------------------------- */

static void limits_from(const Prefixd__V1__TenantLimits *l, pd_tenant_limits *out) {
  memset(out, 0, sizeof *out);
  if (!l) return;
  if (l->max_blocks) {
    out->max_blocks[0] = l->max_blocks->device;
    out->max_blocks[1] = l->max_blocks->host;
    out->max_blocks[2] = l->max_blocks->disk;
  }
  out->max_concurrent = l->max_concurrent_requests;
  out->max_context = l->max_context_tokens;
  out->tokens_per_minute = l->max_tokens_per_minute;
  out->requests_per_minute = l->max_requests_per_minute;
}

/* A Tenant message for rec, in the job's arena. */
static Prefixd__V1__Tenant *tenant_msg(pd_job *job, const pd_tenant_rec *rec) {
  Prefixd__V1__Tenant *t = pd_job_alloc(job, sizeof *t);
  Prefixd__V1__TenantLimits *l = pd_job_alloc(job, sizeof *l);
  Prefixd__V1__TierCounts *tc = pd_job_alloc(job, sizeof *tc);
  char **grants = pd_job_alloc(job, (rec->n_grants + 1) * sizeof *grants);
  if (!t || !l || !tc || !grants) return NULL;
  prefixd__v1__tenant__init(t);
  prefixd__v1__tenant_limits__init(l);
  tier_counts_set(tc, rec->limits.max_blocks);
  l->max_blocks = tc;
  l->max_concurrent_requests = rec->limits.max_concurrent;
  l->max_context_tokens = rec->limits.max_context;
  l->max_tokens_per_minute = rec->limits.tokens_per_minute;
  l->max_requests_per_minute = rec->limits.requests_per_minute;
  t->name = pd_job_strdup(job, rec->name);
  t->limits = l;
  for (uint32_t i = 0; i < rec->n_grants; i++) grants[i] = pd_job_strdup(job, rec->grants[i]);
  t->granted_namespaces = grants;
  t->n_granted_namespaces = rec->n_grants;
  t->created_unix_ms = rec->created_ms;
  return t->name ? t : NULL;
}

static int admin_rc(pd_job *job, int rc, const char *name) {
  if (!rc) return 0;
  int status = rc == PD_ENOTFOUND ? PD_GRPC_NOT_FOUND
               : rc == PD_EEXIST  ? PD_GRPC_ALREADY_EXISTS
               : rc == PD_EINVAL  ? PD_GRPC_INVALID_ARGUMENT
               : rc == PD_ENOMEM  ? PD_GRPC_RESOURCE_EXHAUSTED
                                  : PD_GRPC_INTERNAL;
  job->status = status;
  snprintf(job->message, sizeof job->message, "%s: %s", name && name[0] ? name : "(empty name)",
           rc == PD_EINVAL ? "names are 1 to 63 characters of A-Z a-z 0-9 . _ -" : pd_strerror(rc));
  return -1;
}

static void do_create_tenant(pd_engine *e, pd_job *job) {
  const Prefixd__V1__CreateTenantRequest *req = (const void *)job->req;
  if (!need_admin(e, job)) return;
  pd_tenant_limits lim;
  limits_from(req->limits, &lim);
  char *key = pd_job_alloc(job, PD_API_KEY_LEN + 1);
  if (!key) {
    oom(job);
    return;
  }
  if (admin_rc(job, pd_tenantdb_create(&e->db, req->name, &lim, key), req->name)) return;
  const pd_tenant_rec *rec = pd_tenantdb_find(&e->db, req->name);
  char err[256] = "";
  int rc = pd_engine_add_tenant(e, rec, err, sizeof err);
  if (rc) {
    /* if this delete fails too, the record stays in the file: DeleteTenant can still remove it */
    pd_tenantdb_delete(&e->db, req->name);
    fail(job, rc == PD_ENOMEM ? PD_GRPC_RESOURCE_EXHAUSTED : PD_GRPC_INTERNAL, "%s",
         err[0] ? err : pd_strerror(rc));
    return;
  }
  Prefixd__V1__CreateTenantResponse *r = pd_job_alloc(job, sizeof *r);
  if (!r) {
    oom(job);
    return;
  }
  prefixd__v1__create_tenant_response__init(r);
  r->tenant = tenant_msg(job, rec);
  r->api_key = key;
  job->resp = &r->base;
  pd_log(PD_LOG_INFO, "tenant created", "tenant=%s", req->name);
}

static void do_list_tenants(pd_engine *e, pd_job *job) {
  if (!need_admin(e, job)) return;
  Prefixd__V1__ListTenantsResponse *r = pd_job_alloc(job, sizeof *r);
  Prefixd__V1__Tenant **list = pd_job_alloc(job, (e->db.n_recs + 1) * sizeof *list);
  if (!r || !list) {
    oom(job);
    return;
  }
  prefixd__v1__list_tenants_response__init(r);
  for (uint32_t i = 0; i < e->db.n_recs; i++)
    if (!(list[r->n_tenants++] = tenant_msg(job, &e->db.recs[i]))) {
      oom(job);
      return;
    }
  r->tenants = list;
  job->resp = &r->base;
}

static void do_delete_tenant(pd_engine *e, pd_job *job) {
  const Prefixd__V1__DeleteTenantRequest *req = (const void *)job->req;
  if (!need_admin(e, job)) return;
  int32_t t = pd_engine_tenant_id(e, req->name);
  if (!pd_tenantdb_find(&e->db, req->name)) {
    fail(job, PD_GRPC_NOT_FOUND, "no tenant '%s'", req->name);
    return;
  }
  /* t < 0: a record whose CreateTenant failed after it was stored (out of memory, and then the
   * rollback's write failed too): nothing of it is in the engine, only the record goes */
  if (t >= 0) {
    uint64_t counts[PD_TIERS] = {0};
    pd_engine_evict(e, t, -1, counts);
    const pd_tenant *tn = pd_tenants_get(&e->tree.tenants, (uint32_t)t);
    if ((t < (int32_t)e->cap_counters && e->counters[t].active) || tn->used[0] || tn->used[1] ||
        tn->used[2]) {
      fail(job, PD_GRPC_FAILED_PRECONDITION, "tenant '%s' has requests in flight; retry",
           req->name);
      return;
    }
  }
  if (admin_rc(job, pd_tenantdb_delete(&e->db, req->name), req->name)) return;
  if (t >= 0) pd_tenants_remove(&e->tree.tenants, (uint32_t)t);
  Prefixd__V1__DeleteTenantResponse *r = pd_job_alloc(job, sizeof *r);
  if (!r) {
    oom(job);
    return;
  }
  prefixd__v1__delete_tenant_response__init(r);
  job->resp = &r->base;
  pd_log(PD_LOG_INFO, "tenant deleted", "tenant=%s", req->name);
}

static void do_set_limits(pd_engine *e, pd_job *job) {
  const Prefixd__V1__SetLimitsRequest *req = (const void *)job->req;
  if (!need_admin(e, job)) return;
  pd_tenant_limits lim;
  limits_from(req->limits, &lim);
  if (admin_rc(job, pd_tenantdb_set_limits(&e->db, req->name, &lim), req->name)) return;
  int32_t t = pd_engine_tenant_id(e, req->name);
  for (int i = 0; i < PD_TIERS && t >= 0; i++)
    pd_tenants_set_limit(&e->tree.tenants, (uint32_t)t, i, lim.max_blocks[i]);
  Prefixd__V1__SetLimitsResponse *r = pd_job_alloc(job, sizeof *r);
  if (!r) {
    oom(job);
    return;
  }
  prefixd__v1__set_limits_response__init(r);
  job->resp = &r->base;
}

static void do_rotate_key(pd_engine *e, pd_job *job) {
  const Prefixd__V1__RotateKeyRequest *req = (const void *)job->req;
  if (!need_admin(e, job)) return;
  char *key = pd_job_alloc(job, PD_API_KEY_LEN + 1);
  Prefixd__V1__RotateKeyResponse *r = pd_job_alloc(job, sizeof *r);
  if (!key || !r) {
    oom(job);
    return;
  }
  if (admin_rc(job, pd_tenantdb_rotate(&e->db, req->name, key), req->name)) return;
  prefixd__v1__rotate_key_response__init(r);
  r->api_key = key;
  job->resp = &r->base;
}

static void do_grant(pd_engine *e, pd_job *job) {
  const Prefixd__V1__GrantNamespaceRequest *req = (const void *)job->req;
  if (!need_admin(e, job)) return;
  int created;
  if (admin_rc(job, pd_tenantdb_grant(&e->db, req->tenant, req->namespace_, &created),
               req->namespace_))
    return;
  uint32_t ns;
  int32_t t = pd_engine_tenant_id(e, req->tenant);
  if (pd_tenants_find_ns(&e->tree.tenants, req->namespace_, &ns)) {
    const pd_shared_ns *s = pd_tenantdb_find_shared(&e->db, req->namespace_);
    if (!s || pd_tenants_add_shared(&e->tree.tenants, s->name, s->salt, &ns)) {
      oom(job);
      return;
    }
  }
  if (t < 0 || pd_tenants_grant(&e->tree.tenants, (uint32_t)t, ns) == PD_ENOMEM) {
    oom(job);
    return;
  }
  Prefixd__V1__GrantNamespaceResponse *r = pd_job_alloc(job, sizeof *r);
  if (!r) {
    oom(job);
    return;
  }
  prefixd__v1__grant_namespace_response__init(r);
  job->resp = &r->base;
}

static void do_revoke(pd_engine *e, pd_job *job) {
  const Prefixd__V1__RevokeNamespaceRequest *req = (const void *)job->req;
  if (!need_admin(e, job)) return;
  if (admin_rc(job, pd_tenantdb_revoke(&e->db, req->tenant, req->namespace_), req->namespace_))
    return;
  uint32_t ns;
  int32_t t = pd_engine_tenant_id(e, req->tenant);
  if (t >= 0 && !pd_tenants_find_ns(&e->tree.tenants, req->namespace_, &ns))
    pd_tenants_revoke(&e->tree.tenants, (uint32_t)t, ns);
  Prefixd__V1__RevokeNamespaceResponse *r = pd_job_alloc(job, sizeof *r);
  if (!r) {
    oom(job);
    return;
  }
  prefixd__v1__revoke_namespace_response__init(r);
  job->resp = &r->base;
}

/* ---- routing --------------------------------------------------------------------------------- */

#define CALL_HANDLER(fn)                                                                           \
  static void h_##fn(pd_grpc_call *call, const ProtobufCMessage *req, void *user) {                \
    submit(user, call, req, PD_JOB_CALL, fn);                                                      \
  }
CALL_HANDLER(do_tokenize)
CALL_HANDLER(do_detokenize)
CALL_HANDLER(do_lookup)
CALL_HANDLER(do_list_prefixes)
CALL_HANDLER(do_evict)
CALL_HANDLER(do_pin)
CALL_HANDLER(do_unpin)
CALL_HANDLER(do_stats)
CALL_HANDLER(do_create_tenant)
CALL_HANDLER(do_list_tenants)
CALL_HANDLER(do_delete_tenant)
CALL_HANDLER(do_set_limits)
CALL_HANDLER(do_rotate_key)
CALL_HANDLER(do_grant)
CALL_HANDLER(do_revoke)

int pd_service_register(pd_service *svc, pd_grpc_server *server, pd_engine *engine) {
  memset(svc, 0, sizeof *svc);
  svc->engine = engine;
  svc->server = server;
  /* request ids differ between runs of the daemon: the start time and the pid in the prefix */
  svc->id_prefix = (uint32_t)time(NULL) * 2654435761u ^ (uint32_t)getpid();
  const ProtobufCServiceDescriptor *P = &prefixd__v1__prefixd__descriptor,
                                   *A = &prefixd__v1__admin__descriptor,
                                   *G = &grpc__health__v1__health__descriptor;
  struct {
    const ProtobufCServiceDescriptor *d;
    const char *name;
    pd_grpc_handler h;
  } routes[] = {
      {P, "Generate", generate},
      {P, "Warm", warm},
      {P, "Health", health},
      {P, "Tokenize", h_do_tokenize},
      {P, "Detokenize", h_do_detokenize},
      {P, "Lookup", h_do_lookup},
      {P, "ListPrefixes", h_do_list_prefixes},
      {P, "Evict", h_do_evict},
      {P, "Pin", h_do_pin},
      {P, "Unpin", h_do_unpin},
      {P, "Stats", h_do_stats},
      {A, "CreateTenant", h_do_create_tenant},
      {A, "ListTenants", h_do_list_tenants},
      {A, "DeleteTenant", h_do_delete_tenant},
      {A, "SetLimits", h_do_set_limits},
      {A, "RotateKey", h_do_rotate_key},
      {A, "GrantNamespace", h_do_grant},
      {A, "RevokeNamespace", h_do_revoke},
      {G, "Check", health_check},
      {G, "Watch", health_watch},
  };
  for (size_t i = 0; i < sizeof routes / sizeof *routes; i++) {
    int rc = pd_grpc_server_route(server, routes[i].d, routes[i].name, routes[i].h, svc);
    if (rc) return rc;
  }
  return PD_OK;
}
