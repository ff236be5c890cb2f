/*
 * pd_engine.c -- see pd_engine.h for the design. This file holds the thread, the job queues,
 * the sequences and the scheduler; the RPC bodies that run on the engine thread live in
 * pd_service.c.
 *
 * A sequence's block table: entries [0, n_held) are blocks of the tree it holds references on
 * (matched, or inserted by itself), entries [n_held, n_table) are private slots it allocated
 * from the device tier's pool and still owns. Block i covers tokens [i * B, (i + 1) * B).
 */
#include "pd_engine.h"

#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "pd_blockkey.h"
#include "pd_err.h"
#include "pd_json_constraint.h"
#include "pd_log.h"
#ifdef PD_WITH_CUDA
#include "pd_llama_cuda.h"
#endif
#include "pd_sha256.h"
#include "pd_speculate.h"
#include "prefixd/v1/prefixd.pb-c.h"

enum { PHASE_QUEUED, PHASE_RESTORE, PHASE_PREFILL, PHASE_DECODE };

typedef struct pd_seq {
  pd_job *job;
  int warm;
  uint32_t tenant, ns;
  int no_cache;
  uint32_t pin_ttl_s;
  int32_t *tokens; /* (cap_tokens) prompt, then generated */
  uint32_t n_prompt, n_tokens, cap_tokens;
  uint32_t n_past; /* tokens whose K and V are in the blocks */
  uint32_t max_new, n_generated;
  uint32_t *table; /* (cap_table) slots of the device tier */
  uint32_t n_table, cap_table;
  uint32_t *held; /* (cap_table) tree nodes referenced, path order: table[i] is held[i]'s slot */
  uint32_t n_held;
  uint32_t n_hot; /* of held: the device blocks matched at admission (no reservation covers them) */
  uint32_t anchor; /* the deepest held node, or the namespace root */
  uint32_t n_cached;
  uint32_t cached_by_tier[PD_TIERS]; /* of n_cached: where the blocks were when matched */
  uint64_t reserve;         /* blocks past the hot prefix it may hold: set at admission, grown while
                       it decodes (PD_ADMIT_INCREMENTAL) */
  uint64_t arrival;         /* the engine's count of sequences queued before this one */
  uint32_t n_preempted;     /* times its blocks were taken back; it resumed (or waits to) */
  uint32_t prompt_computed; /* prompt tokens it had computed when last preempted */
  pd_sampler *smp;
  pd_json_constraint *json; /* response_format JSON_OBJECT or JSON_SCHEMA; NULL otherwise */
  pd_json_schema *schema;   /* JSON_SCHEMA's, compiled (json reads it) */
  pd_detok *dt;
  int32_t *stop_tokens; /* (n_stop_tokens) borrowed from the request */
  size_t n_stop_tokens;
  int phase;
  int64_t admit_ms, prefill_start_ms, first_token_ms, end_ms;
  double prefill_ms, restore_ms;
  int rows;     /* rows in the current batch */
  int deferred; /* passed over by this step's admission */
  int ignore_eos;
  int logprobs;     /* GenerateRequest.logprobs (or top_logprobs > 0) */
  int top_logprobs; /* alternatives per token, 0..PD_TOP_LOGPROBS_MAX */
  /* speculative decoding (pd_speculate.h): this step's draft, fed after the last sampled token
   * (its copy in tokens[n_tokens..] is what the forward pass reads), and the tokens sampled from
   * the verify rows, each with its log-probabilities */
  int n_draft;
  int draft_source; /* PD_SPEC_FROM_TEXT, _CACHE or _GRAMMAR */
  int32_t draft[PD_SPEC_DRAFT_MAX];
  pd_spec_seq spec[PD_SPEC_SOURCES]; /* acceptance, per source */
  int n_picks;
  int pick_failed; /* the JSON constraint allowed no token, or refused the pick, after n_picks */
  int32_t picks[PD_SPEC_DRAFT_MAX + 1];
  pd_token_logprob step_lp[PD_SPEC_DRAFT_MAX + 1];
  struct pd_seq *next;
} pd_seq;

uint64_t pd_engine_now_ms(void) {
  return (uint64_t)pd_grpc_now_ms();
}

static uint32_t B(const pd_engine *e) {
  return e->tree.cfg.block_tokens;
}

#ifdef PD_WITH_CUDA
#define PD_ENGINE_HAVE_CUDA 1
#else
#define PD_ENGINE_HAVE_CUDA 0
#endif

/* ---- outbox (engine -> loop) ----------------------------------------------------------------- */

/* Appends job to a queue linked through job->next (the inbox, the outbox, the tokenizer's),
 * under the queue's mutex. */
static void job_append(pd_job **head, pd_job **tail, pd_job *job) {
  job->next = NULL;
  if (*tail)
    (*tail)->next = job;
  else
    *head = job;
  *tail = job;
}

/* Caller holds e->mu. */
static void outbox_push_locked(pd_engine *e, pd_job *job) {
  if (job->in_outbox) return;
  job->in_outbox = 1;
  job_append(&e->outbox_head, &e->outbox_tail, job);
}

static void job_done(pd_engine *e, pd_job *job, int status, const char *message) {
  if (!job->on_done && status >= 0 && status < PD_GRPC_STATUSES) e->rpc_status[status]++;
  pthread_mutex_lock(&e->mu);
  job->status = status;
  if (message != job->message)
    snprintf(job->message, sizeof job->message, "%s", message ? message : "");
  job->done = 1;
  outbox_push_locked(e, job);
  pthread_mutex_unlock(&e->mu);
  uv_async_send(&e->async);
}

static int grow(void **p, uint32_t *cap, uint32_t need, size_t elem) {
  if (need <= *cap) return PD_OK;
  uint32_t ncap = *cap ? *cap : 16;
  while (ncap < need) ncap *= 2;
  void *q = realloc(*p, (size_t)ncap * elem);
  if (!q) return PD_ENOMEM;
  *p = q;
  *cap = ncap;
  return PD_OK;
}

/* Appends a streamed token (tok < 0: none), its log-probabilities (lp NULL: none asked for) and
 * its text to the job's pending output. */
static int job_stream(pd_engine *e, pd_job *job, int32_t tok, const pd_token_logprob *lp,
                      const char *text, size_t n_text) {
  pthread_mutex_lock(&e->mu);
  int rc = grow((void **)&job->out_ids, &job->cap_out_ids, job->n_out_ids + 1, sizeof(int32_t));
  if (!rc && tok >= 0 && lp)
    rc = grow((void **)&job->out_logprobs, &job->cap_out_logprobs, job->n_out_ids + 1, sizeof *lp);
  if (!rc && tok >= 0) {
    if (lp) job->out_logprobs[job->n_out_ids] = *lp;
    job->out_ids[job->n_out_ids++] = tok;
  }
  if (!rc && n_text) {
    uint32_t cap = (uint32_t)job->cap_out_text;
    rc = grow((void **)&job->out_text, &cap, (uint32_t)(job->n_out_text + n_text + 1), 1);
    job->cap_out_text = cap;
    if (!rc) {
      memcpy(job->out_text + job->n_out_text, text, n_text);
      job->n_out_text += n_text;
    }
  }
  outbox_push_locked(e, job);
  pthread_mutex_unlock(&e->mu);
  uv_async_send(&e->async);
  return rc;
}

pd_job *pd_engine_take_output(pd_engine *e) {
  pthread_mutex_lock(&e->mu);
  pd_job *list = e->outbox_head;
  e->outbox_head = e->outbox_tail = NULL;
  for (pd_job *j = list; j; j = j->next) {
    j->in_outbox = 0;
    j->taken_next = j->next; /* ->next may be reused by the engine as soon as we unlock */
  }
  pthread_mutex_unlock(&e->mu);
  return list;
}

void pd_engine_take_stream(pd_engine *e, pd_job *job, int32_t **ids, uint32_t *n_ids, char **text,
                           size_t *n_text, pd_token_logprob **logprobs, int *done) {
  pthread_mutex_lock(&e->mu);
  *logprobs = job->out_logprobs;
  job->out_logprobs = NULL;
  job->cap_out_logprobs = 0;
  *ids = job->out_ids;
  *n_ids = job->n_out_ids;
  *text = job->out_text;
  *n_text = job->n_out_text;
  if (*text) (*text)[*n_text] = 0;
  job->out_ids = NULL;
  job->out_text = NULL;
  job->n_out_ids = job->cap_out_ids = 0;
  job->n_out_text = job->cap_out_text = 0;
  *done = job->done;
  if (job->done && job->in_outbox) { /* queued again since it was taken: the caller frees it */
    pd_job *prev = NULL;
    for (pd_job *j = e->outbox_head; j; prev = j, j = j->next)
      if (j == job) {
        if (prev)
          prev->next = j->next;
        else
          e->outbox_head = j->next;
        if (e->outbox_tail == j) e->outbox_tail = prev;
        break;
      }
    job->in_outbox = 0;
  }
  pthread_mutex_unlock(&e->mu);
}

/* ---- tenants --------------------------------------------------------------------------------- */

int32_t pd_engine_tenant_id(const pd_engine *e, const char *name) {
  uint32_t id;
  if (pd_tenants_find(&e->tree.tenants, name, &id)) return -1;
  return (int32_t)id;
}

static pd_tenant_counters *counters(pd_engine *e, uint32_t tenant) {
  if (grow((void **)&e->counters, &e->cap_counters, tenant + 1, sizeof *e->counters)) return NULL;
  return &e->counters[tenant];
}

/* The registry's record of a tenant (NULL: none, e.g. single-tenant mode). */
static const pd_tenant_rec *tenant_rec(const pd_engine *e, uint32_t tenant) {
  const pd_tenant *tn = pd_tenants_get(&e->tree.tenants, tenant);
  return tn ? pd_tenantdb_find(&e->db, tn->name) : NULL;
}

/* ---- rate limits: token buckets that hold a minute's worth and refill continuously ---------- */

static void rate_refill(pd_tenant_counters *c, const pd_tenant_limits *l, int64_t now_ms) {
  double tpm = l->tokens_per_minute, rpm = l->requests_per_minute;
  if (!c->credit_ms) {
    c->token_credit = tpm;
    c->request_credit = rpm;
  } else if (now_ms > c->credit_ms) {
    double minutes = (double)(now_ms - c->credit_ms) / 60000.0;
    c->token_credit = fmin(c->token_credit + minutes * tpm, tpm);
    c->request_credit = fmin(c->request_credit + minutes * rpm, rpm);
  }
  c->credit_ms = now_ms;
}

/* Seconds until the tenant may start a request (0: now). */
static double rate_wait_s(pd_tenant_counters *c, const pd_tenant_limits *l, int64_t now_ms) {
  rate_refill(c, l, now_ms);
  double wait = 0;
  if (l->tokens_per_minute && c->token_credit < 1)
    wait = (1 - c->token_credit) * 60.0 / l->tokens_per_minute;
  if (l->requests_per_minute && c->request_credit < 1)
    wait = fmax(wait, (1 - c->request_credit) * 60.0 / l->requests_per_minute);
  return wait;
}

int pd_engine_add_tenant(pd_engine *e, const pd_tenant_rec *r, char *err, size_t errlen) {
  uint32_t id;
  int rc = pd_tenants_add(&e->tree.tenants, r->name, r->salt, &id);
  if (rc) {
    snprintf(err, errlen, "tenant %s: %s", r->name, pd_strerror(rc));
    return rc;
  }
  uint32_t old_cap = e->cap_counters;
  if (!counters(e, id)) {
    snprintf(err, errlen, "tenant %s: %s", r->name, pd_strerror(PD_ENOMEM));
    pd_tenants_remove(&e->tree.tenants, id);
    return PD_ENOMEM;
  }
  if (e->cap_counters > old_cap)
    memset(e->counters + old_cap, 0, (e->cap_counters - old_cap) * sizeof *e->counters);
  memset(&e->counters[id], 0, sizeof e->counters[id]);
  for (int t = 0; t < PD_TIERS; t++)
    pd_tenants_set_limit(&e->tree.tenants, id, t, r->limits.max_blocks[t]);
  for (uint32_t g = 0; g < r->n_grants; g++) {
    uint32_t ns;
    if (pd_tenants_find_ns(&e->tree.tenants, r->grants[g], &ns)) {
      const pd_shared_ns *s = pd_tenantdb_find_shared(&e->db, r->grants[g]);
      if (!s || (rc = pd_tenants_add_shared(&e->tree.tenants, s->name, s->salt, &ns))) {
        snprintf(err, errlen, "namespace %s: %s", r->grants[g],
                 pd_strerror(rc ? rc : PD_ENOTFOUND));
        pd_tenants_remove(&e->tree.tenants, id);
        return rc ? rc : PD_ENOTFOUND;
      }
    }
    if ((rc = pd_tenants_grant(&e->tree.tenants, id, ns))) {
      snprintf(err, errlen, "tenant %s: %s", r->name, pd_strerror(rc));
      pd_tenants_remove(&e->tree.tenants, id);
      return rc;
    }
  }
  return PD_OK;
}

int pd_engine_resolve_ns(const pd_engine *e, int32_t tenant, const char *name, uint32_t *ns) {
  const pd_tenant *t = pd_tenants_get(&e->tree.tenants, (uint32_t)tenant);
  if (!t) return PD_ENOTFOUND;
  if (!name || !name[0]) {
    *ns = t->private_ns;
    return PD_OK;
  }
  if (pd_tenants_find_ns(&e->tree.tenants, name, ns)) return PD_ENOTFOUND;
  return pd_tenants_may_use(&e->tree.tenants, (uint32_t)tenant, *ns) ? PD_OK : PD_EPERM;
}

/* Sets the job's identity from its key. Returns 0, or the gRPC status to refuse it with. */
static int authenticate(pd_engine *e, pd_job *job) {
  const char *key = job->authorization;
  if (job->on_done) { /* the daemon's own job (metrics): no client, no key */
    job->is_admin = 1;
    job->tenant = -1;
    return 0;
  }
  if (!key[0]) {
    if (e->single_tenant) {
      job->tenant = (int32_t)e->default_tenant;
      return 0;
    }
    snprintf(job->message, sizeof job->message,
             "missing API key: send metadata 'authorization: Bearer <key>'");
    return PD_GRPC_UNAUTHENTICATED;
  }
  if (e->has_admin) {
    uint8_t d[32], diff = 0;
    pd_sha256_digest(key, strlen(key), d);
    for (int i = 0; i < 32; i++) diff |= (uint8_t)(d[i] ^ e->admin_sha256[i]);
    if (!diff) {
      job->is_admin = 1;
      job->tenant = -1;
      snprintf(job->tenant_name, sizeof job->tenant_name, "(admin)");
      return 0;
    }
  }
  const pd_tenant_rec *r = pd_tenantdb_authenticate(&e->db, key);
  if (r) {
    job->tenant = pd_engine_tenant_id(e, r->name);
    snprintf(job->tenant_name, sizeof job->tenant_name, "%s", r->name);
    if (job->tenant >= 0) return 0;
  }
  snprintf(job->message, sizeof job->message, "invalid API key");
  return PD_GRPC_UNAUTHENTICATED;
}

/* ---- prompts --------------------------------------------------------------------------------- */

int pd_engine_prompt_tokens(const pd_engine *e, const ProtobufCMessage *msg, int for_generate,
                            int32_t **ids, uint32_t *n, char *err, size_t errlen) {
  const Prefixd__V1__Prompt *p = (const Prefixd__V1__Prompt *)msg;
  *ids = NULL;
  *n = 0;
  if (!p || p->kind_case == PREFIXD__V1__PROMPT__KIND__NOT_SET) {
    snprintf(err, errlen, "prompt is empty: set text, tokens or chat");
    return PD_EINVAL;
  }
  if (p->kind_case == PREFIXD__V1__PROMPT__KIND_TOKENS) {
    size_t k = p->tokens ? p->tokens->n_ids : 0;
    int32_t *out = malloc((k ? k : 1) * sizeof *out);
    if (!out) {
      snprintf(err, errlen, "out of memory");
      return PD_ENOMEM;
    }
    for (size_t i = 0; i < k; i++) {
      if (p->tokens->ids[i] < 0 || p->tokens->ids[i] >= e->model->n_vocab) {
        snprintf(err, errlen, "token id %d at position %zu is outside the vocabulary (0..%d)",
                 p->tokens->ids[i], i, e->model->n_vocab - 1);
        free(out);
        return PD_EINVAL;
      }
      out[i] = p->tokens->ids[i];
    }
    *ids = out;
    *n = (uint32_t)k;
    return PD_OK;
  }
  char *text = NULL;
  const char *src;
  if (p->kind_case == PREFIXD__V1__PROMPT__KIND_CHAT) {
    if (!e->have_chat) {
      snprintf(err, errlen, "the model has no chat template prefixd can render");
      return PD_EUNSUPPORTED;
    }
    size_t k = p->chat ? p->chat->n_messages : 0;
    if (k == 0) {
      snprintf(err, errlen, "chat prompt has no messages");
      return PD_EINVAL;
    }
    size_t n_calls = 0, n_tools = p->chat->n_tools;
    for (size_t i = 0; i < k; i++) n_calls += p->chat->messages[i]->n_tool_calls;
    pd_chat_msg *msgs = calloc(k, sizeof *msgs);
    pd_chat_tool_call *calls = calloc(n_calls + 1, sizeof *calls);
    pd_chat_tool *tools = calloc(n_tools + 1, sizeof *tools);
    if (!msgs || !calls || !tools) {
      free(msgs);
      free(calls);
      free(tools);
      snprintf(err, errlen, "out of memory");
      return PD_ENOMEM;
    }
    for (size_t i = 0, c = 0; i < k; i++) {
      const Prefixd__V1__ChatMessage *m = p->chat->messages[i];
      msgs[i].role = m->role;
      msgs[i].content = m->content;
      msgs[i].tool_calls = calls + c;
      msgs[i].n_tool_calls = m->n_tool_calls;
      for (size_t j = 0; j < m->n_tool_calls; j++, c++)
        calls[c] = (pd_chat_tool_call){m->tool_calls[j]->name, m->tool_calls[j]->arguments};
    }
    for (size_t i = 0; i < n_tools; i++)
      tools[i] = (pd_chat_tool){p->chat->tools[i]->name, p->chat->tools[i]->description,
                                p->chat->tools[i]->parameters};
    /* Generate always opens the assistant's turn; Warm and Lookup take the flag as given. */
    int gen_prompt = for_generate || p->chat->add_generation_prompt;
    int rc = pd_chat_render(&e->chat, msgs, k, tools, n_tools, gen_prompt, &text, err, errlen);
    free(msgs);
    free(calls);
    free(tools);
    if (rc) return rc;
    src = text;
  } else {
    src = p->text;
  }
  size_t len = strlen(src), cap = len + 16, got = 0;
  int32_t *out = malloc(cap * sizeof *out);
  int rc = out ? pd_tokenize_prompt(e->tok, src, len, out, cap, &got) : PD_ENOMEM;
  free(text);
  if (rc) {
    free(out);
    snprintf(err, errlen, "cannot tokenize the prompt: %s", pd_strerror(rc));
    return rc;
  }
  *ids = out;
  *n = (uint32_t)got;
  return PD_OK;
}

/* ---- the tokenizer thread -------------------------------------------------------------------- */

/* The prompt a job is tokenized from (NULL: none), and whether it opens the assistant's turn
 * (Generate's does). */
static const ProtobufCMessage *job_prompt(const pd_job *job, int *for_generate) {
  const ProtobufCMessageDescriptor *d = job->req ? job->req->descriptor : NULL;
  const Prefixd__V1__Prompt *p = NULL;
  *for_generate = d == &prefixd__v1__generate_request__descriptor;
  if (*for_generate)
    p = ((const Prefixd__V1__GenerateRequest *)job->req)->prompt;
  else if (d == &prefixd__v1__warm_request__descriptor)
    p = ((const Prefixd__V1__WarmRequest *)job->req)->prompt;
  else if (d == &prefixd__v1__tokenize_request__descriptor)
    p = ((const Prefixd__V1__TokenizeRequest *)job->req)->prompt;
  else if (d == &prefixd__v1__lookup_request__descriptor)
    p = ((const Prefixd__V1__LookupRequest *)job->req)->prompt;
  return (const ProtobufCMessage *)p;
}

int pd_engine_job_prompt_tokens(const pd_engine *e, pd_job *job, int32_t **ids, uint32_t *n,
                                char *err, size_t errlen) {
  if (job->prompt_done) { /* the tokenizer thread's work */
    *ids = job->prompt_ids;
    *n = job->n_prompt_ids;
    job->prompt_ids = NULL;
    if (job->prompt_rc) snprintf(err, errlen, "%s", job->prompt_error);
    return job->prompt_rc;
  }
  int for_generate;
  const ProtobufCMessage *prompt = job_prompt(job, &for_generate);
  return pd_engine_prompt_tokens(e, prompt, for_generate, ids, n, err, errlen);
}

/* Bytes of text a prompt is tokenized from (chat: its messages'; 0 for token ids). */
static size_t prompt_text_bytes(const Prefixd__V1__Prompt *p) {
  if (!p) return 0;
  if (p->kind_case == PREFIXD__V1__PROMPT__KIND_TEXT) return strlen(p->text);
  size_t n = 0;
  if (p->kind_case == PREFIXD__V1__PROMPT__KIND_CHAT && p->chat)
    for (size_t i = 0; i < p->chat->n_messages; i++) n += strlen(p->chat->messages[i]->content);
  return n;
}

/* Engine thread: 1 if an authenticated job's prompt is long enough to be tokenized on the
 * tokenizer thread (the engine is not draining: then it answers at once). */
static int tokenize_elsewhere_wanted(const pd_engine *e, const pd_job *job) {
  int for_generate;
  const ProtobufCMessage *prompt = job_prompt(job, &for_generate);
  return e->tk_started && !e->draining && !job->prompt_done && prompt &&
         prompt_text_bytes((const Prefixd__V1__Prompt *)prompt) > e->cfg.tokenize_thread_bytes;
}

/* Engine thread: hands an authenticated job to the tokenizer thread. */
static void tokenize_elsewhere(pd_engine *e, pd_job *job) {
  pthread_mutex_lock(&e->mu);
  e->tokenizing++;
  pthread_mutex_unlock(&e->mu);
  pthread_mutex_lock(&e->tk_mu);
  job_append(&e->tk_head, &e->tk_tail, job);
  pthread_cond_signal(&e->tk_cv);
  pthread_mutex_unlock(&e->tk_mu);
}

/* Stops the tokenizer thread once its queue is empty, and waits for it. */
static void tokenizer_stop(pd_engine *e) {
  if (!e->tk_started) return;
  pthread_mutex_lock(&e->tk_mu);
  e->tk_stop = 1;
  pthread_cond_signal(&e->tk_cv);
  pthread_mutex_unlock(&e->tk_mu);
  pthread_join(e->tk_thread, NULL);
  e->tk_started = 0;
}

/* Tokenizes each job it is handed (the tokenizer, the chat template and the model's vocabulary
 * size are read-only once loaded) and puts it back in the engine's inbox, marked done. */
static void *tokenizer_main(void *arg) {
  pd_engine *e = arg;
  for (;;) {
    pthread_mutex_lock(&e->tk_mu);
    while (!e->tk_stop && !e->tk_head) pthread_cond_wait(&e->tk_cv, &e->tk_mu);
    pd_job *job = e->tk_head;
    if (job) {
      e->tk_head = job->next;
      if (!e->tk_head) e->tk_tail = NULL;
    }
    pthread_mutex_unlock(&e->tk_mu);
    if (!job) break; /* stopped, and nothing is left */
    int for_generate;
    const ProtobufCMessage *prompt = job_prompt(job, &for_generate);
    job->prompt_rc =
        pd_engine_prompt_tokens(e, prompt, for_generate, &job->prompt_ids, &job->n_prompt_ids,
                                job->prompt_error, sizeof job->prompt_error);
    job->prompt_done = 1;
    pthread_mutex_lock(&e->mu);
    job_append(&e->inbox_head, &e->inbox_tail, job);
    e->tokenizing--;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
  }
  return NULL;
}

/* ---- blocks ---------------------------------------------------------------------------------- */

/* Free device slots the engine keeps ahead of need: demotions run in the background while
 * fewer are left, so a step rarely waits for a spill. */
static uint32_t low_watermark(const pd_engine *e) {
  uint32_t w = (uint32_t)e->cfg.max_batch_tokens / B(e) + 8;
  return w < e->n_blocks / 8 ? w : e->n_blocks / 8;
}

/* One slot of the device tier for a sequence. When none is free, cold blocks are demoted (their
 * slots come free when the copies out of them land: then this waits for the storage worker). */
static int alloc_block_any(pd_engine *e, uint32_t *slot) {
  return pd_tiers_alloc_slot(e->tiers, 0, low_watermark(e), pd_engine_now_ms(), slot);
}

/* A device block for a sequence of tenant to write into. A block last written for another
 * tenant is zeroed first (--zero-reused-kv): its stale rows past the sequence's length are
 * never read, and with this they hold nothing of anyone's even if a bug read them. */
static int alloc_block(pd_engine *e, uint32_t tenant, uint32_t *slot) {
  int rc = alloc_block_any(e, slot);
  if (rc) return rc;
  uint16_t owner = (uint16_t)(tenant + 1);
  if (e->slot_owner[*slot] != owner) {
    if (e->cfg.zero_reused_kv && e->slot_owner[*slot] && (rc = pd_devpool_zero(&e->pool, *slot))) {
      pd_radix_free_slot(&e->tree, 0, *slot); /* not handed out with another tenant's rows */
      return rc;
    }
    e->slot_owner[*slot] = owner;
  }
  return PD_OK;
}

/* Makes the table cover n tokens. */
static int ensure_blocks(pd_engine *e, pd_seq *s, uint32_t n) {
  uint32_t need = (n + B(e) - 1) / B(e);
  if (grow((void **)&s->table, &s->cap_table, need, sizeof *s->table)) return PD_ENOMEM;
  while (s->n_table < need) {
    int rc = alloc_block(e, s->tenant, &s->table[s->n_table]);
    if (rc) return rc;
    s->n_table++;
  }
  return PD_OK;
}

/* ---- sequences ------------------------------------------------------------------------------- */

static void seq_free(pd_seq *s) {
  pd_sampler_free(s->smp);
  pd_detok_free(s->dt);
  pd_json_constraint_free(s->json);
  pd_json_schema_free(s->schema);
  free(s->tokens);
  free(s->table);
  free(s->held);
  free(s);
}

/* Inserts the blocks the sequence computed after its held ones, up to `upto` tokens, into the
 * tree (below its anchor). Blocks the tree deduplicated are replaced by the tree's copy. */
static void seq_publish(pd_engine *e, pd_seq *s, uint32_t upto) {
  if (s->no_cache || upto <= s->n_held * B(e)) return;
  uint32_t first = s->n_held, n_tok = upto - first * B(e);
  uint32_t n_blocks = (n_tok + B(e) - 1) / B(e);
  pd_insert_result res[64];
  for (uint32_t done_blocks = 0; done_blocks < n_blocks;) {
    uint32_t chunk_blocks = n_blocks - done_blocks < 64 ? n_blocks - done_blocks : 64;
    uint32_t at = first + done_blocks;
    uint32_t chunk_tok =
        upto - at * B(e) < chunk_blocks * B(e) ? upto - at * B(e) : chunk_blocks * B(e);
    uint32_t n_done = 0;
    int rc = pd_radix_extend(&e->tree, s->tenant, s->anchor, s->tokens + (size_t)at * B(e),
                             chunk_tok, s->table + at, 0, pd_engine_now_ms(), res, &n_done);
    for (uint32_t i = 0; i < n_done; i++) {
      s->held[at + i] = res[i].node;
      s->table[at + i] = pd_radix_node(&e->tree, res[i].node)->slot;
      s->anchor = res[i].node;
      if (res[i].adopted) pd_tiers_note_insert(e->tiers, res[i].node);
    }
    s->n_held = at + n_done;
    done_blocks += n_done;
    if (rc || n_done < chunk_blocks) break; /* a quota (PD_ELIMIT): the rest stays private */
  }
}

static void seq_release(pd_engine *e, pd_seq *s) {
  for (uint32_t i = s->n_held; i < s->n_table; i++) pd_radix_free_slot(&e->tree, 0, s->table[i]);
  s->n_table = s->n_held;
  pd_radix_release(&e->tree, s->held, s->n_held);
  s->n_held = 0;
  s->n_table = 0;
}

void *pd_job_alloc(pd_job *job, size_t n) {
  if (grow((void **)&job->arena, &job->cap_arena, job->n_arena + 1, sizeof *job->arena))
    return NULL;
  void *p = calloc(1, n ? n : 1);
  if (p) job->arena[job->n_arena++] = p;
  return p;
}

char *pd_job_strdup(pd_job *job, const char *str) {
  size_t n = strlen(str) + 1;
  char *p = pd_job_alloc(job, n);
  if (p) memcpy(p, str, n);
  return p;
}

int pd_job_take_bearer(pd_job *job, const char *value, size_t n) {
  if (n <= 7 || strncasecmp(value, "Bearer ", 7) || n - 7 >= sizeof job->authorization ||
      memchr(value + 7, 0, n - 7))
    return PD_EINVAL;
  memcpy(job->authorization, value + 7, n - 7);
  job->authorization[n - 7] = 0;
  return PD_OK;
}

void pd_job_free(pd_job *job) {
  for (uint32_t i = 0; i < job->n_arena; i++) free(job->arena[i]);
  free(job->arena);
  free(job->out_ids);
  free(job->out_text);
  free(job->out_logprobs);
  free(job->prompt_ids);
  free(job);
}

/* Bounds of the latency histograms, in ms: 0.5 ms to a minute. */
const double pd_engine_hist_le_ms[PD_HIST_BUCKETS] = {
    0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000};

static void hist_observe(pd_engine_histogram *h, double ms) {
  for (int i = 0; i < PD_HIST_BUCKETS; i++)
    if (ms <= pd_engine_hist_le_ms[i]) h->le[i]++;
  h->count++;
  h->sum_ms += ms;
}

typedef struct final_generate {
  Prefixd__V1__GenerateResponse msg;
  Prefixd__V1__Usage usage;
  Prefixd__V1__TierCounts by_tier;
  Prefixd__V1__Timings timings;
} final_generate;

typedef struct final_warm {
  Prefixd__V1__WarmResponse msg;
  char prefix_id[33];
} final_warm;

/* Ends a sequence: publishes what it computed (also when cancelled: the work is kept), pins,
 * gives back its blocks and references, and reports the job done. */
static void seq_finish(pd_engine *e, pd_seq *s, int status, const char *message, int reason) {
  pd_job *job = s->job;
  uint64_t now = pd_engine_now_ms();
  s->end_ms = (int64_t)now;
  if (s->phase != PHASE_QUEUED) {
    seq_publish(e, s, s->n_past);
    /* the prompt's blocks (a Warm's partial last block too; a Generate's last block that also
     * holds generated tokens is not the prompt's) */
    uint32_t n_prompt_blocks = s->warm ? s->n_held : s->n_prompt / B(e);
    if (n_prompt_blocks > s->n_held) n_prompt_blocks = s->n_held;
    if (s->pin_ttl_s && n_prompt_blocks > 0 && status == PD_GRPC_OK &&
        pd_radix_pin(&e->tree, s->held[n_prompt_blocks - 1], now + (uint64_t)s->pin_ttl_s * 1000) ==
            PD_OK)
      pd_pins_note(&e->pins, &e->tree, s->held[n_prompt_blocks - 1]);
    /* warmed and pinned prefixes are worth keeping across a restart: written through to disk */
    if ((s->warm || s->pin_ttl_s) && n_prompt_blocks > 0 && status == PD_GRPC_OK)
      pd_tiers_keep(e->tiers, s->held[n_prompt_blocks - 1]);
  }
  if (s->warm && status == PD_GRPC_OK) {
    final_warm *f = pd_job_alloc(job, sizeof *f);
    if (f) {
      prefixd__v1__warm_response__init(&f->msg);
      f->msg.prompt_tokens = s->n_prompt;
      f->msg.cached_tokens = s->n_cached;
      f->msg.computed_tokens = s->n_prompt - s->n_cached;
      if (s->n_held > 0 && s->n_held * B(e) >= s->n_prompt)
        pd_key_hex(pd_radix_node(&e->tree, s->held[s->n_held - 1])->key, f->prefix_id);
      f->msg.prefix_id = f->prefix_id;
      job->resp = &f->msg.base;
    }
  } else if (!s->warm) {
    final_generate *f = pd_job_alloc(job, sizeof *f);
    if (f) {
      prefixd__v1__generate_response__init(&f->msg);
      prefixd__v1__usage__init(&f->usage);
      prefixd__v1__tier_counts__init(&f->by_tier);
      prefixd__v1__timings__init(&f->timings);
      f->msg.finish_reason = (Prefixd__V1__FinishReason)reason;
      f->usage.prompt_tokens = s->n_prompt;
      f->usage.cached_tokens = s->n_cached;
      f->by_tier.device = s->cached_by_tier[0];
      f->by_tier.host = s->cached_by_tier[1];
      f->by_tier.disk = s->cached_by_tier[2];
      f->usage.cached_tokens_by_tier = &f->by_tier;
      f->usage.generated_tokens = s->n_generated;
      f->msg.usage = &f->usage;
      int64_t admit = s->admit_ms ? s->admit_ms : s->end_ms;
      f->timings.queue_ms = (double)(admit - job->arrival_ms);
      f->timings.prefill_ms = s->prefill_ms;
      f->timings.restore_ms = s->restore_ms;
      if (s->first_token_ms) {
        f->timings.ttft_ms = (double)(s->first_token_ms - job->arrival_ms);
        f->timings.decode_ms = (double)(s->end_ms - s->first_token_ms);
      }
      f->msg.timings = &f->timings;
      job->final = &f->msg.base;
    }
    if (s->admit_ms) hist_observe(&e->hist_queue, (double)(s->admit_ms - job->arrival_ms));
    if (s->first_token_ms) {
      hist_observe(&e->hist_ttft, (double)(s->first_token_ms - job->arrival_ms));
      if (s->n_generated >= 2)
        hist_observe(&e->hist_token,
                     (double)(s->end_ms - s->first_token_ms) / (double)(s->n_generated - 1));
    }
    /* what the detokenizer held back (a partial stop string that never completed) */
    char tail[256];
    size_t n_tail = 0;
    if (s->dt && reason == PREFIXD__V1__FINISH_REASON__FINISH_REASON_LENGTH &&
        !pd_detok_flush(s->dt, tail, sizeof tail, &n_tail) && n_tail &&
        job_stream(e, job, -1, NULL, tail, n_tail) && status == PD_GRPC_OK) {
      status = PD_GRPC_RESOURCE_EXHAUSTED; /* the end of the text is lost: not a success */
      message = "out of memory for the output";
    }
  }
  seq_release(e, s);
  e->reserved_blocks -= s->reserve;
  pd_tenant_counters *c = counters(e, s->tenant);
  if (c && c->active) c->active--;
  if (c && (s->phase != PHASE_QUEUED || s->n_preempted)) { /* what it computed counts against
                                                              its rate limit */
    uint32_t past = s->n_past < s->n_prompt ? s->n_past : s->n_prompt;
    if (past < s->prompt_computed) past = s->prompt_computed;
    uint64_t computed = (past > s->n_cached ? past - s->n_cached : 0) + s->n_generated;
    c->computed_tokens += computed;
    const pd_tenant_rec *rec = tenant_rec(e, s->tenant);
    if (rec && rec->limits.tokens_per_minute) {
      rate_refill(c, &rec->limits, pd_grpc_now_ms());
      c->token_credit -= (double)computed;
    }
  }
  job_done(e, job, status, message);
  seq_free(s);
}

/* ---- admission ------------------------------------------------------------------------------- */

static void queue_remove(pd_engine *e, pd_seq *prev, pd_seq *s) {
  if (prev)
    prev->next = s->next;
  else
    e->queue_head = s->next;
  if (e->queue_tail == s) e->queue_tail = prev;
  e->n_queued--;
  atomic_store(&e->queue_depth, e->n_queued);
}

/* Blocks a sequence whose first `hot` blocks are matched device blocks (used in place) holds
 * beyond them once its table covers n_tokens, with one to spare (a copy-on-write block). */
static uint64_t owned_blocks(const pd_engine *e, uint32_t hot, uint32_t n_tokens) {
  return (n_tokens + B(e) - 1) / B(e) + 1 - hot;
}

/* The tokens a sequence's reservation covers: every token it may reach (PD_ADMIT_FULL), or its
 * context and a block of new tokens past it (PD_ADMIT_INCREMENTAL). */
static uint32_t reserve_horizon(const pd_engine *e, const pd_seq *s) {
  uint32_t max_total = s->n_prompt + s->max_new;
  if (e->cfg.kv_admission == PD_ADMIT_FULL) return max_total;
  uint32_t horizon = s->n_tokens + B(e);
  return horizon < max_total ? horizon : max_total;
}

/* Device slots that running sequences (and a candidate's hot_slots) hold but that no reservation
 * counts: cached blocks matched at admission, used in place, that no running sequence computed
 * itself. Entries past a sequence's hot prefix are its own (allocated, restored, or a block the
 * tree deduplicated in their place), all inside its reservation. Each slot counts once. */
static uint64_t held_unreserved(pd_engine *e, const uint32_t *hot_slots, uint32_t n_hot_slots) {
  if (++e->stamp_epoch == 0) { /* wrapped: old marks could collide */
    memset(e->slot_stamp, 0, (size_t)e->n_blocks * sizeof *e->slot_stamp);
    e->stamp_epoch = 1;
  }
  const uint32_t mark = e->stamp_epoch;
  for (const pd_seq *r = e->running; r; r = r->next)
    for (uint32_t i = r->n_hot < r->n_table ? r->n_hot : r->n_table; i < r->n_table; i++)
      e->slot_stamp[r->table[i]] = mark;
  uint64_t n = 0;
  for (const pd_seq *r = e->running; r; r = r->next)
    for (uint32_t i = 0; i < r->n_hot && i < r->n_table; i++)
      if (e->slot_stamp[r->table[i]] != mark) e->slot_stamp[r->table[i]] = mark, n++;
  for (uint32_t i = 0; i < n_hot_slots; i++)
    if (e->slot_stamp[hot_slots[i]] != mark) e->slot_stamp[hot_slots[i]] = mark, n++;
  return n;
}

/* A match the engine does not keep (the pool has no room yet; a resumed sequence matching its own
 * blocks again) leaves the tree's hit counters as they were: they count admissions, not tries. */
static void uncount_match(pd_engine *e, const pd_radix_stats *before) {
  e->tree.stats.matches = before->matches;
  e->tree.stats.query_tokens = before->query_tokens;
  e->tree.stats.hit_tokens = before->hit_tokens;
  memcpy(e->tree.stats.hit_tokens_by_tier, before->hit_tokens_by_tier,
         sizeof before->hit_tokens_by_tier);
}

/* Matches the prompt (a resumed sequence: its prompt and the tokens it generated) and sets up
 * the table; returns 0, PD_EFULL if the pool cannot take the sequence now (it stays queued),
 * PD_ERANGE if the whole pool could never hold what it may reach, or another error. The pool
 * must hold every running sequence's reservation, the cached blocks they use in place, and this
 * sequence's: a sequence admitted past that would find the pool full in its prefill. */
static int seq_admit(pd_engine *e, pd_seq *s) {
  uint32_t n_match = s->warm ? s->n_prompt : s->n_tokens - 1;
  uint32_t cap = n_match / B(e) + 2;
  uint32_t *nodes = NULL;
  pd_match m = {0, 0, -1};
  const pd_radix_stats counted = e->tree.stats;
  int rc;
  if (!s->no_cache) {
    if ((rc = pd_radix_root(&e->tree, s->tenant, s->ns, &s->anchor))) return rc;
    nodes = malloc(cap * sizeof *nodes);
    if (!nodes) return PD_ENOMEM;
    if ((rc = pd_radix_match(&e->tree, s->tenant, s->ns, s->tokens, n_match, pd_engine_now_ms(),
                             nodes, cap, &m))) {
      free(nodes);
      return rc;
    }
  }
  /* full blocks in the device tier are used in place; after them, a run of colder blocks is
   * restored if that is faster than computing them */
  uint32_t n_full = m.cow >= 0 ? (uint32_t)m.cow : m.n_nodes, hot = 0;
  while (hot < n_full && pd_radix_node(&e->tree, nodes[hot])->tier == 0 &&
         !pd_tiers_is_bad(e->tiers, nodes[hot]))
    hot++;
  uint32_t n_restore =
      hot < n_full ? pd_tiers_plan_restore(e->tiers, nodes + hot, n_full - hot) : 0;
  uint32_t max_total = s->n_prompt + s->max_new;
  uint64_t need = owned_blocks(e, hot, reserve_horizon(e, s));
  uint32_t *held = NULL;
  if (hot + owned_blocks(e, hot, max_total) > e->n_blocks) {
    pd_radix_release(&e->tree, nodes, m.n_nodes);
    free(nodes);
    uncount_match(e, &counted);
    return PD_ERANGE;
  }
  if (grow((void **)&s->table, &s->cap_table, max_total / B(e) + 2, sizeof *s->table) ||
      !(held = realloc(s->held, s->cap_table * sizeof *s->held))) {
    pd_radix_release(&e->tree, nodes, m.n_nodes);
    free(nodes);
    return PD_ENOMEM;
  }
  s->held = held;
  for (uint32_t i = 0; i < hot; i++) s->table[i] = pd_radix_node(&e->tree, nodes[i])->slot;
  /* incremental: room too for each running sequence's next block, so that a sequence admitted
   * (or resumed) now does not make the next step preempt one */
  uint64_t headroom = e->cfg.kv_admission == PD_ADMIT_INCREMENTAL ? (uint64_t)e->n_running : 0;
  if (e->reserved_blocks + need + headroom + held_unreserved(e, s->table, hot) > e->n_blocks) {
    pd_radix_release(&e->tree, nodes, m.n_nodes);
    free(nodes);
    uncount_match(e, &counted);
    return PD_EFULL;
  }
  uint64_t now = pd_engine_now_ms();
  uint32_t by_tier[PD_TIERS] = {0}; /* where the cached blocks were */
  for (uint32_t i = 0; i < hot; i++) {
    s->held[i] = nodes[i];
    s->anchor = nodes[i];
    by_tier[0] += B(e);
  }
  s->n_hot = hot;
  uint32_t usable = hot;
  for (; usable < hot + n_restore; usable++) {
    uint32_t slot, node = nodes[usable];
    int from = pd_radix_node(&e->tree, node)->tier;
    if (pd_tiers_restore(e->tiers, node, now, &slot) != PD_OK) break;
    e->slot_owner[slot] = UINT16_MAX; /* the cache's bytes: zeroed before any sequence's use */
    s->held[usable] = node;
    s->table[usable] = slot;
    s->anchor = node;
    by_tier[from] += B(e);
  }
  s->n_held = s->n_table = usable;
  int cow = m.cow >= 0 && usable == n_full && pd_radix_node(&e->tree, nodes[m.cow])->tier == 0 &&
            !pd_tiers_is_bad(e->tiers, nodes[m.cow]) && !pd_tiers_pending(e->tiers, nodes[m.cow]);
  uint32_t cached = usable * B(e) + (cow ? m.n_tokens - n_full * B(e) : 0);
  rc = PD_OK;
  if (cow) { /* copy the shared, partially matched block before appending to it */
    uint32_t slot;
    rc = alloc_block(e, s->tenant, &slot);
    if (!rc && (rc = pd_devpool_copy(&e->pool, slot,
                                     pd_radix_node(&e->tree, nodes[m.cow])->slot)) != PD_OK)
      pd_radix_free_slot(&e->tree, 0, slot); /* the copy failed: recompute the block instead */
    if (!rc) {
      s->table[s->n_table++] = slot;
      by_tier[0] += cached - usable * B(e);
    } else {
      cached = usable * B(e);
    }
  }
  /* references beyond what is used go back (leaf first) */
  if (m.n_nodes > usable) pd_radix_release(&e->tree, nodes + usable, m.n_nodes - usable);
  free(nodes);
  s->n_past = cached;
  s->reserve = need;
  e->reserved_blocks += need;
  /* a block used a second time may be worth a disk copy (the write filter decides) */
  for (uint32_t i = 0; i < s->n_held; i++) pd_tiers_note_use(e->tiers, s->held[i]);
  s->phase = PHASE_PREFILL;
  for (uint32_t i = 0; i < s->n_held && s->phase == PHASE_PREFILL; i++)
    if (pd_tiers_pending(e->tiers, s->held[i])) s->phase = PHASE_RESTORE;
  if (s->n_preempted) { /* resumed: its usage and the hit rate keep the first admission's */
    uncount_match(e, &counted);
    e->recomputed_tokens += s->n_tokens - cached;
    return PD_OK;
  }
  s->n_cached = cached;
  memcpy(s->cached_by_tier, by_tier, sizeof by_tier);
  s->admit_ms = pd_grpc_now_ms();
  pd_tenant_counters *c = counters(e, s->tenant);
  if (c) {
    c->hit_tokens += cached;
    c->query_tokens += n_match;
  }
  return PD_OK;
}

/* Admits queued sequences while there is room, one tenant at a time in turn. */
/* 1 if s should wait: a running sequence is prefilling the same prompt beginning (at least a
 * block more than the tree holds now), and s will match it from the tree once that prefill is
 * published, instead of computing it a second time. */
static int waits_for_leader(pd_engine *e, const pd_seq *s) {
  if (s->no_cache) return 0;
  uint32_t cached = 0;
  for (const pd_seq *r = e->running; r; r = r->next) {
    if (r->phase != PHASE_PREFILL || r->no_cache || r->ns != s->ns) continue;
    uint32_t n = r->n_prompt < s->n_prompt ? r->n_prompt : s->n_prompt, lcp = 0;
    while (lcp < n && r->tokens[lcp] == s->tokens[lcp]) lcp++;
    if (lcp < B(e)) continue;
    if (!cached) pd_radix_peek(&e->tree, s->tenant, s->ns, s->tokens, s->n_prompt, &cached, NULL);
    if (lcp >= cached + B(e)) return 1;
  }
  return 0;
}

static void admit(pd_engine *e) {
  int resuming = 0; /* preempted sequences come back before any new one starts */
  for (pd_seq *s = e->queue_head; s; s = s->next) {
    s->deferred = 0;
    resuming |= s->n_preempted != 0;
  }
  while (e->queue_head && e->n_running < e->cfg.max_running) {
    /* the first queued sequence of the next tenant after rr_tenant, else the oldest; one that
     * waits for a leader's prefill is passed over this step */
    pd_seq *pick = NULL, *pick_prev = NULL, *prev = NULL;
    uint32_t best = UINT32_MAX;
    for (pd_seq *s = e->queue_head; s; prev = s, s = s->next) {
      uint32_t dist =
          s->tenant > e->rr_tenant ? s->tenant - e->rr_tenant : s->tenant + 65536 - e->rr_tenant;
      if (!s->deferred && dist < best && (!resuming || s->n_preempted))
        best = dist, pick = s, pick_prev = prev;
    }
    if (!pick) return;
    if (waits_for_leader(e, pick)) {
      pick->deferred = 1;
      continue;
    }
    int rc = seq_admit(e, pick);
    if (rc == PD_EFULL || rc == PD_ERANGE) {
      if (rc == PD_ERANGE || e->n_running == 0) { /* nothing will ever free room for it */
        queue_remove(e, pick_prev, pick);
        seq_finish(e, pick, PD_GRPC_RESOURCE_EXHAUSTED,
                   "the KV cache cannot hold this request (prompt + max_tokens); lower "
                   "max_tokens or raise --kv-cache-mb",
                   PREFIXD__V1__FINISH_REASON__FINISH_REASON_ERROR);
        continue;
      }
      return; /* wait for running sequences to finish */
    }
    queue_remove(e, pick_prev, pick);
    e->rr_tenant = pick->tenant;
    if (rc) {
      char msg[128];
      snprintf(msg, sizeof msg, "cannot start the request: %s", pd_strerror(rc));
      seq_finish(e, pick,
                 rc == PD_EPERM    ? PD_GRPC_PERMISSION_DENIED
                 : rc == PD_ENOMEM ? PD_GRPC_RESOURCE_EXHAUSTED
                                   : PD_GRPC_INTERNAL,
                 msg, PREFIXD__V1__FINISH_REASON__FINISH_REASON_ERROR);
      continue;
    }
    if (pick->warm && pick->n_past == pick->n_prompt) { /* all cached: nothing to compute */
      seq_finish(e, pick, PD_GRPC_OK, NULL, 0);
      continue;
    }
    pick->next = e->running;
    e->running = pick;
    e->n_running++;
  }
}

/* Builds a sequence for a Generate or Warm job; on refusal reports the job done. */
static void enqueue(pd_engine *e, pd_job *job) {
  char err[256] = "";
  int status = PD_GRPC_OK;
  pd_seq *s = calloc(1, sizeof *s);
  if (!s) {
    job_done(e, job, PD_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  s->job = job;
  s->warm = job->kind == PD_JOB_WARM;
  const Prefixd__V1__CacheOptions *cache;
  const Prefixd__V1__GenerateRequest *g = NULL;
  if (s->warm) {
    cache = ((const Prefixd__V1__WarmRequest *)job->req)->cache;
  } else {
    g = (const Prefixd__V1__GenerateRequest *)job->req;
    cache = g->cache;
  }
  if (job->is_admin) {
    status = PD_GRPC_PERMISSION_DENIED;
    snprintf(err, sizeof err, "the admin key has no tenant: use a tenant's key to generate");
    goto refuse;
  }
  s->tenant = (uint32_t)job->tenant;
  pd_spec_seq_init(&s->spec[PD_SPEC_FROM_TEXT], PD_SPEC_PRIOR_TEXT);
  pd_spec_seq_init(&s->spec[PD_SPEC_FROM_CACHE], PD_SPEC_PRIOR_CACHE);
  pd_spec_seq_init(&s->spec[PD_SPEC_FROM_GRAMMAR], PD_SPEC_PRIOR_GRAMMAR);
  s->no_cache = cache && cache->no_cache;
  s->pin_ttl_s = cache ? cache->pin_ttl_seconds : 0;
  if (s->warm && s->no_cache) {
    status = PD_GRPC_INVALID_ARGUMENT;
    snprintf(err, sizeof err, "Warm with no_cache would compute nothing to keep");
    goto refuse;
  }
  int rc = pd_engine_resolve_ns(e, job->tenant, cache ? cache->namespace_ : NULL, &s->ns);
  if (rc) {
    status = rc == PD_EPERM ? PD_GRPC_PERMISSION_DENIED : PD_GRPC_NOT_FOUND;
    snprintf(err, sizeof err, "namespace '%s' %s", cache->namespace_,
             rc == PD_EPERM ? "is not granted to this tenant" : "does not exist");
    goto refuse;
  }
  if ((rc = pd_engine_job_prompt_tokens(e, job, &s->tokens, &s->n_prompt, err, sizeof err))) {
    status = rc == PD_ENOMEM ? PD_GRPC_RESOURCE_EXHAUSTED : PD_GRPC_INVALID_ARGUMENT;
    goto refuse;
  }
  s->cap_tokens = s->n_prompt;
  const pd_tenant_rec *rec = tenant_rec(e, s->tenant);
  uint32_t ctx = (uint32_t)e->cfg.max_context;
  if (rec && rec->limits.max_context && rec->limits.max_context < ctx)
    ctx = rec->limits.max_context;
  if (s->n_prompt == 0) {
    status = PD_GRPC_INVALID_ARGUMENT;
    snprintf(err, sizeof err, "the prompt has no tokens");
    goto refuse;
  }
  if (s->n_prompt >= ctx) {
    status = PD_GRPC_INVALID_ARGUMENT;
    snprintf(err, sizeof err, "the prompt has %u tokens; the context limit is %u", s->n_prompt,
             ctx);
    goto refuse;
  }
  if (!s->warm) {
    s->max_new = ctx - s->n_prompt;
    if (g->max_tokens && g->max_tokens < s->max_new) s->max_new = g->max_tokens;
    pd_sampling_params sp = {.top_p = 1, .repeat_penalty = 1, .repeat_last_n = 64};
    pd_logit_bias bias[PD_LOGIT_BIAS_MAX];
    if (g->sampling) {
      const Prefixd__V1__SamplingParams *gs = g->sampling;
      sp.temperature = gs->temperature;
      sp.top_k = gs->top_k;
      sp.top_p = gs->top_p > 0 ? gs->top_p : 1;
      sp.min_p = gs->min_p;
      sp.repeat_penalty = gs->repeat_penalty > 0 ? gs->repeat_penalty : 1;
      sp.repeat_last_n = gs->repeat_last_n > 0 ? gs->repeat_last_n : 64;
      sp.seed = gs->seed;
      sp.presence_penalty = gs->presence_penalty;
      sp.frequency_penalty = gs->frequency_penalty;
      sp.n_logit_bias =
          gs->n_logit_bias > PD_LOGIT_BIAS_MAX ? PD_LOGIT_BIAS_MAX + 1 : (int32_t)gs->n_logit_bias;
      for (int32_t i = 0; i < sp.n_logit_bias && i < PD_LOGIT_BIAS_MAX; i++)
        bias[i] = (pd_logit_bias){gs->logit_bias[i]->token_id, gs->logit_bias[i]->bias};
      sp.logit_bias = bias;
      s->ignore_eos = gs->ignore_eos;
    }
    if (g->top_logprobs > PD_TOP_LOGPROBS_MAX) {
      status = PD_GRPC_INVALID_ARGUMENT;
      snprintf(err, sizeof err, "top_logprobs is %u; at most %d", g->top_logprobs,
               PD_TOP_LOGPROBS_MAX);
      goto refuse;
    }
    s->logprobs = g->logprobs || g->top_logprobs;
    s->top_logprobs = (int)g->top_logprobs;
    if ((rc = pd_sampler_create(&sp, e->model->n_vocab, &s->smp))) {
      status = rc == PD_ENOMEM ? PD_GRPC_RESOURCE_EXHAUSTED : PD_GRPC_INVALID_ARGUMENT;
      if (rc == PD_ENOMEM) /* else the check again, for the reason only (the sampler checked) */
        snprintf(err, sizeof err, "out of memory");
      else
        pd_sampling_check(&sp, e->model->n_vocab, err, sizeof err);
      goto refuse;
    }
    int format = g->response_format ? (int)g->response_format->type : 0;
    if (format == PREFIXD__V1__RESPONSE_FORMAT__TYPE__RESPONSE_FORMAT_JSON_SCHEMA) {
      const char *text = g->response_format->json_schema;
      char why[200];
      rc = pd_json_schema_compile(text, strlen(text), &s->schema, why, sizeof why);
      if (rc) {
        status = rc == PD_ENOMEM ? PD_GRPC_RESOURCE_EXHAUSTED : PD_GRPC_INVALID_ARGUMENT;
        snprintf(err, sizeof err, "response_format json_schema: %s", why);
        goto refuse;
      }
    }
    if (format == PREFIXD__V1__RESPONSE_FORMAT__TYPE__RESPONSE_FORMAT_JSON_OBJECT ||
        format == PREFIXD__V1__RESPONSE_FORMAT__TYPE__RESPONSE_FORMAT_JSON_SCHEMA) {
      if ((!e->json_vocab && pd_json_vocab_build(e->tok, &e->json_vocab)) ||
          pd_json_constraint_create(e->json_vocab, s->schema, &s->json)) {
        status = PD_GRPC_RESOURCE_EXHAUSTED;
        snprintf(err, sizeof err, "out of memory");
        goto refuse;
      }
    } else if (format != PREFIXD__V1__RESPONSE_FORMAT__TYPE__RESPONSE_FORMAT_TEXT) {
      status = PD_GRPC_INVALID_ARGUMENT;
      snprintf(err, sizeof err, "unknown response_format type %d", format);
      goto refuse;
    }
    for (size_t i = 0; i < g->n_stop; i++)
      if (!g->stop[i][0] || strlen(g->stop[i]) > 128) {
        status = PD_GRPC_INVALID_ARGUMENT;
        snprintf(err, sizeof err, "stop strings must be 1 to 128 bytes");
        goto refuse;
      }
    if (g->n_stop > 16) {
      status = PD_GRPC_INVALID_ARGUMENT;
      snprintf(err, sizeof err, "at most 16 stop strings");
      goto refuse;
    }
    if (pd_detok_create(e->tok, (const char *const *)g->stop, g->n_stop, &s->dt)) {
      status = PD_GRPC_RESOURCE_EXHAUSTED;
      snprintf(err, sizeof err, "out of memory");
      goto refuse;
    }
    s->stop_tokens = g->stop_tokens;
    s->n_stop_tokens = g->n_stop_tokens;
    for (uint32_t i = 0; i < s->n_prompt; i++) pd_sampler_accept(s->smp, s->tokens[i]);
    s->cap_tokens = s->n_prompt + s->max_new;
    int32_t *t = realloc(s->tokens, s->cap_tokens * sizeof *t);
    if (!t) {
      status = PD_GRPC_RESOURCE_EXHAUSTED;
      snprintf(err, sizeof err, "out of memory");
      goto refuse;
    }
    s->tokens = t;
  }
  s->n_tokens = s->n_prompt;
  pd_tenant_counters *c = counters(e, s->tenant);
  if (!c) {
    status = PD_GRPC_RESOURCE_EXHAUSTED;
    snprintf(err, sizeof err, "out of memory");
    goto refuse;
  }
  if (rec && rec->limits.max_concurrent && c->active >= rec->limits.max_concurrent) {
    status = PD_GRPC_RESOURCE_EXHAUSTED;
    snprintf(err, sizeof err, "tenant %s already has %u requests in flight (its limit)", rec->name,
             c->active);
    goto refuse;
  }
  if (e->n_queued >= e->cfg.max_queue) {
    status = PD_GRPC_RESOURCE_EXHAUSTED;
    snprintf(err, sizeof err, "the queue is full (%d requests waiting)", e->n_queued);
    goto refuse;
  }
  if (e->draining) {
    status = PD_GRPC_UNAVAILABLE;
    snprintf(err, sizeof err, "the server is shutting down");
    goto refuse;
  }
  if (rec && (rec->limits.tokens_per_minute || rec->limits.requests_per_minute)) {
    double wait = rate_wait_s(c, &rec->limits, pd_grpc_now_ms());
    if (wait > 0) {
      c->rate_limited++;
      job->retry_after_ms = (int64_t)ceil(wait * 1000);
      status = PD_GRPC_RESOURCE_EXHAUSTED;
      snprintf(err, sizeof err,
               "tenant %s is over its rate limit (%u tokens, %u requests per minute; 0 = none): "
               "retry in %.1f s",
               rec->name, rec->limits.tokens_per_minute, rec->limits.requests_per_minute,
               ceil(wait * 10) / 10);
      goto refuse;
    }
    c->request_credit -= 1;
  }
  c->active++;
  c->requests++;
  e->requests++;
  s->phase = PHASE_QUEUED;
  s->arrival = e->next_arrival++;
  if (e->queue_tail)
    e->queue_tail->next = s;
  else
    e->queue_head = s;
  e->queue_tail = s;
  e->n_queued++;
  atomic_store(&e->queue_depth, e->n_queued);
  return;
refuse:
  job_done(e, job, status, err);
  seq_free(s);
}

/* ---- the step -------------------------------------------------------------------------------- */

static int is_stop_token(const pd_seq *s, int32_t tok) {
  for (size_t i = 0; i < s->n_stop_tokens; i++)
    if (s->stop_tokens[i] == tok) return 1;
  return 0;
}

/* The token ends the sequence and is not part of its output: an end-of-generation token (unless
 * ignore_eos) or one of its stop tokens. */
static int is_end_token(const pd_engine *e, const pd_seq *s, int32_t tok) {
  return (pd_tokenizer_is_eog(e->tok, tok) && !s->ignore_eos) || is_stop_token(s, tok);
}

static void window_add(pd_engine *e, uint64_t n) {
  int64_t sec = pd_grpc_now_ms() / 1000;
  int i = (int)(sec % 60);
  if (e->window.second[i] != sec) {
    e->window.second[i] = sec;
    e->window.tokens[i] = 0;
  }
  e->window.tokens[i] += n;
}

/* A token was sampled; json_closed: the JSON output is whole with it. Returns 0 to go on, the
 * finish reason, or -1 if the token could not be queued for the client (out of memory): the
 * stream would have a hole, so the sequence ends. */
static int seq_emit(pd_engine *e, pd_seq *s, int32_t tok, const pd_token_logprob *lp,
                    int json_closed) {
  if (!s->first_token_ms) s->first_token_ms = pd_grpc_now_ms();
  if (is_end_token(e, s, tok)) return PREFIXD__V1__FINISH_REASON__FINISH_REASON_STOP;
  s->tokens[s->n_tokens++] = tok;
  s->n_generated++;
  e->generated_tokens++;
  window_add(e, 1);
  char text[512];
  size_t n_text = 0;
  int stopped = 0;
  pd_detok_push(s->dt, tok, text, sizeof text, &n_text, &stopped);
  if (job_stream(e, s->job, tok, s->logprobs ? lp : NULL, text, n_text)) return -1;
  if (stopped) return PREFIXD__V1__FINISH_REASON__FINISH_REASON_STOP;
  if (json_closed) return PREFIXD__V1__FINISH_REASON__FINISH_REASON_STOP;
  if (s->n_generated >= s->max_new) return PREFIXD__V1__FINISH_REASON__FINISH_REASON_LENGTH;
  s->phase = PHASE_DECODE;
  return 0;
}

static void running_remove(pd_engine *e, pd_seq *s) {
  for (pd_seq **p = &e->running; *p; p = &(*p)->next)
    if (*p == s) {
      *p = s->next;
      e->n_running--;
      return;
    }
}

/* Cancels sequences whose client left or whose deadline passed. */
static void reap(pd_engine *e) {
  int64_t now = pd_grpc_now_ms();
  pd_seq *prev = NULL;
  for (pd_seq *s = e->queue_head, *next; s; s = next) {
    next = s->next;
    pd_job *j = s->job;
    int gone = atomic_load(&j->cancelled), late = j->deadline_ms && now >= j->deadline_ms;
    /* a drain refuses what has not started; a preempted sequence had, and will finish */
    if (gone || late || (e->draining && !s->n_preempted)) {
      queue_remove(e, prev, s);
      seq_finish(e, s,
                 gone == 1 ? PD_GRPC_CANCELLED
                 : late    ? PD_GRPC_DEADLINE_EXCEEDED
                           : PD_GRPC_UNAVAILABLE,
                 gone == 1 ? "cancelled by the client"
                 : late    ? "deadline exceeded while queued"
                           : "the server is shutting down",
                 PREFIXD__V1__FINISH_REASON__FINISH_REASON_CANCELLED);
      continue;
    }
    prev = s;
  }
  for (pd_seq *s = e->running, *next; s; s = next) {
    next = s->next;
    pd_job *j = s->job;
    int gone = atomic_load(&j->cancelled), late = j->deadline_ms && now >= j->deadline_ms;
    if (gone || late) {
      running_remove(e, s);
      if (gone == PD_JOB_CANCELLED_BY_SERVER)
        seq_finish(e, s, PD_GRPC_UNAVAILABLE,
                   "the server is shutting down (its drain timeout ran out)",
                   PREFIXD__V1__FINISH_REASON__FINISH_REASON_CANCELLED);
      else
        seq_finish(e, s, gone ? PD_GRPC_CANCELLED : PD_GRPC_DEADLINE_EXCEEDED,
                   gone ? "cancelled by the client" : "deadline exceeded",
                   PREFIXD__V1__FINISH_REASON__FINISH_REASON_CANCELLED);
    }
  }
}

/* Gives back a restoring sequence's blocks from index keep on (a restore failed there): it
 * computes them instead. */
static void seq_truncate(pd_engine *e, pd_seq *s, uint32_t keep) {
  for (uint32_t i = s->n_held; i < s->n_table; i++) pd_radix_free_slot(&e->tree, 0, s->table[i]);
  pd_radix_release(&e->tree, s->held + keep, s->n_held - keep);
  s->n_held = s->n_table = keep;
  s->anchor = keep ? s->held[keep - 1] : s->anchor;
  if (!keep) pd_radix_root(&e->tree, s->tenant, s->ns, &s->anchor);
  if (s->n_preempted) { /* resumed: what it reported cached stays as first admitted */
    e->recomputed_tokens += s->n_past - keep * B(e);
    s->n_past = keep * B(e);
    return;
  }
  uint32_t lost = s->n_cached - keep * B(e);
  for (int t = PD_TIERS - 1; t >= 0 && lost; t--) {
    uint32_t take = s->cached_by_tier[t] < lost ? s->cached_by_tier[t] : lost;
    s->cached_by_tier[t] -= take;
    lost -= take;
  }
  pd_tenant_counters *c = counters(e, s->tenant);
  if (c) c->hit_tokens -= s->n_cached - keep * B(e);
  s->n_cached = s->n_past = keep * B(e);
}

/* Sequences whose blocks have all arrived go on to prefill (or, a Warm with nothing left to
 * compute, finish). */
static void restores_done(pd_engine *e) {
  int64_t now = pd_grpc_now_ms();
  for (pd_seq *s = e->running, *next; s; s = next) {
    next = s->next;
    if (s->phase != PHASE_RESTORE) continue;
    uint32_t bad_at = s->n_held;
    int waiting = 0;
    for (uint32_t i = 0; i < s->n_held && !waiting; i++) {
      waiting = pd_tiers_pending(e->tiers, s->held[i]) != 0;
      if (bad_at == s->n_held && pd_tiers_is_bad(e->tiers, s->held[i])) bad_at = i;
    }
    if (waiting) continue;
    if (bad_at < s->n_held) seq_truncate(e, s, bad_at);
    if (!s->n_preempted) s->restore_ms = (double)(now - s->admit_ms);
    s->phase = PHASE_PREFILL;
    if (s->warm && s->n_past == s->n_prompt) {
      running_remove(e, s);
      seq_finish(e, s, PD_GRPC_OK, NULL, 0);
    }
  }
}

/* Takes a running sequence's blocks back: what it computed in full blocks goes into the tree
 * (so it matches them again when it resumes, as any other prompt would), its slots and
 * references are given back, and it waits at the head of the queue. Its tokens, sampler, JSON
 * constraint and stream stay as they are: it resumes where it stopped. */
static void seq_preempt(pd_engine *e, pd_seq *s) {
  running_remove(e, s);
  seq_publish(e, s, s->n_past / B(e) * B(e));
  seq_release(e, s);
  e->reserved_blocks -= s->reserve;
  s->reserve = 0;
  s->n_hot = 0;
  uint32_t prompt_past = s->n_past < s->n_prompt ? s->n_past : s->n_prompt;
  if (prompt_past > s->prompt_computed) s->prompt_computed = prompt_past;
  s->n_past = 0;
  s->phase = PHASE_QUEUED;
  s->n_preempted++;
  e->preemptions++;
  s->next = e->queue_head;
  e->queue_head = s;
  if (!e->queue_tail) e->queue_tail = s;
  e->n_queued++;
  atomic_store(&e->queue_depth, e->n_queued);
}

static int by_arrival(const void *a, const void *b) {
  uint64_t x = (*(pd_seq *const *)a)->arrival, y = (*(pd_seq *const *)b)->arrival;
  return x < y ? -1 : x > y;
}

/* PD_ADMIT_INCREMENTAL: decoding sequences whose next token needs a block their reservation does
 * not cover reserve a block's worth more, oldest arrival first. When the pool cannot cover it,
 * the most recent arrival still running (prefilling or decoding) is preempted, the sequence
 * itself if it is that one. */
static void grow_reservations(pd_engine *e) {
  if (e->cfg.kv_admission != PD_ADMIT_INCREMENTAL) return;
  pd_seq *grow_list[1024];
  int n = 0;
  for (pd_seq *s = e->running; s && n < 1024; s = s->next)
    if (s->phase == PHASE_DECODE && owned_blocks(e, s->n_hot, s->n_past + 1) > s->reserve)
      grow_list[n++] = s;
  if (n == 0) return;
  qsort(grow_list, (size_t)n, sizeof *grow_list, by_arrival);
  for (int i = 0; i < n; i++) {
    pd_seq *s = grow_list[i];
    if (s->phase != PHASE_DECODE) continue; /* preempted for an older one */
    uint64_t more = owned_blocks(e, s->n_hot, reserve_horizon(e, s)) - s->reserve;
    while (e->reserved_blocks + more + held_unreserved(e, NULL, 0) > e->n_blocks) {
      pd_seq *victim = NULL;
      for (pd_seq *r = e->running; r; r = r->next)
        if ((r->phase == PHASE_DECODE || r->phase == PHASE_PREFILL) &&
            (!victim || r->arrival > victim->arrival))
          victim = r;
      if (!victim) break; /* only restores run beside it: it tries its luck with the pool */
      seq_preempt(e, victim);
      if (victim == s) break;
    }
    if (s->phase != PHASE_DECODE) continue;
    s->reserve += more;
    e->reserved_blocks += more;
  }
}

/* One forward pass over the batch on the engine's backend. On the GPU, when every sequence that
 * wants a token samples greedily and none asked for logprobs, the argmax runs there too and only
 * the tokens come back (e->gpu_picks, *picked set); else the logits rows come back into
 * e->logits. */
static int forward(pd_engine *e, pd_seq *const *order, int n, int *picked) {
  *picked = 0;
#ifdef PD_WITH_CUDA
  if (e->on_gpu) {
    int greedy = 1;
    for (int i = 0; i < n && greedy; i++)
      if (e->batch[i].want_logits)
        greedy = pd_sampler_is_greedy(order[i]->smp) && !order[i]->logprobs && !order[i]->json;
    int rc = greedy
                 ? pd_llama_cuda_forward_ex(e->cuda, e->pool.base, e->batch, n, NULL, e->gpu_picks)
                 : pd_llama_cuda_forward(e->cuda, e->pool.base, e->batch, n, e->logits);
    if (rc) pd_log(PD_LOG_ERROR, "the GPU forward pass failed", "error=\"%s\"", e->cuda->err);
    *picked = !rc && greedy;
    return rc;
  }
#endif
  (void)order;
  return pd_llama_forward(&e->llama, e->pool.base, e->batch, n, e->logits);
}

/* Frees e->logits (pinned when the engine runs on the GPU) and e->gpu_picks. */
static void logits_free(pd_engine *e) {
#ifdef PD_WITH_CUDA
  if (e->on_gpu) {
    pd_llama_cuda_host_free(e->logits);
    e->logits = NULL;
  }
#endif
  free(e->logits);
  free(e->gpu_picks);
  e->logits = NULL, e->gpu_picks = NULL;
}

/* Sets up the GPU forward pass (weights uploaded, scratch, graphs). Called only when
 * pd_devpool_cuda_available(), which is 0 in a build without CUDA (pd_engine_create says why). */
static int gpu_init(pd_engine *e, char *err, size_t errlen) {
#ifdef PD_WITH_CUDA
  e->cuda = calloc(1, sizeof *e->cuda);
  if (!e->cuda) return PD_ENOMEM;
  enum pd_cuda_weight_mode wm =
      e->cfg.mode == PD_MATMUL_EXACT ? PD_CUDA_WEIGHTS_F32 : PD_CUDA_WEIGHTS_F16;
  int rc = pd_llama_cuda_init(e->cuda, e->model, (int)e->cfg.block_tokens, e->cfg.cache_dtype, wm,
                              e->cfg.max_batch_tokens, e->cfg.max_running, err, errlen);
  if (rc) {
    free(e->cuda);
    e->cuda = NULL;
    return rc;
  }
  e->on_gpu = 1;
  return PD_OK;
#else
  (void)e, (void)err, (void)errlen;
  return PD_EUNSUPPORTED;
#endif
}

static void gpu_free(pd_engine *e) {
#ifdef PD_WITH_CUDA
  if (e->cuda) pd_llama_cuda_free(e->cuda);
#endif
  free(e->cuda);
  e->cuda = NULL;
}

/* The most draft rows one pass verifies, over all its sequences (each wants its logits: the
 * logits buffer has this many rows beyond max_running). */
#define SPEC_ROWS_MAX 64

/* The tokens of what s's JSON constraint forces next (pd_json_constraint_forced), at most max_k,
 * into s->draft; 0 when nothing is forced. */
static int grammar_draft(const pd_engine *e, pd_seq *s, int max_k) {
  char bytes[64];
  size_t n = pd_json_constraint_forced(s->json, bytes, sizeof bytes);
  int32_t ids[sizeof bytes]; /* a token has one byte at least */
  size_t got = 0;
  if (!n || pd_tokenize(e->tok, bytes, n, 0, ids, sizeof bytes, &got)) return 0;
  int k = got < (size_t)max_k ? (int)got : max_k;
  memcpy(s->draft, ids, (size_t)k * sizeof *ids);
  return k;
}

/* Speculative decoding (pd_speculate.h), on the CPU: gives the decoding sequences among order[0,
 * n) a draft where one is worth its rows, within the pass's row budget, the draft-row cap, the
 * tokens the sequence may still generate and (incremental admission) its block reservation. The
 * draft goes after the sequence's last token, s->rows grows by its length; *rows too. */
static void choose_drafts(pd_engine *e, pd_seq *const *order, int n, int *rows, int budget) {
  for (int i = 0; i < n; i++) order[i]->n_draft = 0;
  if (e->cfg.speculate <= 0 || e->on_gpu) return;
  const double ratio = pd_spec_cost_row_ratio(&e->spec_cost);
  double tokens = 0, time = 1.0 + ratio * *rows; /* per pass, in units of its fixed cost */
  for (int i = 0; i < n; i++) tokens += order[i]->phase == PHASE_DECODE;
  int spec_rows = 0;
  for (int i = 0; i < n; i++) {
    pd_seq *s = order[i];
    if (s->phase != PHASE_DECODE || s->warm) continue;
    int max_k = e->cfg.speculate;
    if (max_k > budget - *rows) max_k = budget - *rows;
    if (max_k > SPEC_ROWS_MAX - spec_rows) max_k = SPEC_ROWS_MAX - spec_rows;
    if ((int64_t)max_k > (int64_t)s->max_new - s->n_generated - 1)
      max_k = (int)s->max_new - (int)s->n_generated - 1;
    while (max_k > 0 && e->cfg.kv_admission == PD_ADMIT_INCREMENTAL &&
           owned_blocks(e, s->n_hot, s->n_past + 1 + (uint32_t)max_k) > s->reserve)
      max_k--;
    if (max_k <= 0) continue;
    /* no lookup where even the best source's draft would not pay (a large batch) */
    double best_rate = 0;
    for (int src = 0; src < PD_SPEC_SOURCES; src++)
      if ((src != PD_SPEC_FROM_GRAMMAR || s->json) && pd_spec_seq_rate(&s->spec[src]) > best_rate)
        best_rate = pd_spec_seq_rate(&s->spec[src]);
    if (!e->cfg.speculate_always && pd_spec_choose(best_rate, max_k, tokens, time, ratio) == 0) {
      for (int src = 0; src < PD_SPEC_SOURCES; src++) pd_spec_seq_skip(&s->spec[src]);
      continue;
    }
    /* what the JSON grammar forces next; else what followed this very context before (the
     * prefix cache); else the sequence's own text */
    int n_draft = s->json ? grammar_draft(e, s, max_k) : 0;
    s->draft_source = PD_SPEC_FROM_GRAMMAR;
    if (!n_draft) {
      uint32_t n_cached = 0;
      if (!s->no_cache && pd_radix_continuation(&e->tree, s->tenant, s->ns, s->tokens, s->n_tokens,
                                                s->draft, (uint32_t)max_k, &n_cached) != PD_OK)
        n_cached = 0;
      s->draft_source = n_cached ? PD_SPEC_FROM_CACHE : PD_SPEC_FROM_TEXT;
      n_draft = n_cached ? (int)n_cached : pd_spec_draft(s->tokens, s->n_tokens, max_k, s->draft);
    }
    if (n_draft == 0) continue;
    pd_spec_seq *record = &s->spec[s->draft_source];
    double rate = pd_spec_seq_rate(record);
    int k = e->cfg.speculate_always ? n_draft : pd_spec_choose(rate, n_draft, tokens, time, ratio);
    if (k == 0) {
      pd_spec_seq_skip(record);
      continue;
    }
    memcpy(s->tokens + s->n_tokens, s->draft, (size_t)k * sizeof *s->tokens); /* < cap_tokens */
    s->n_draft = k;
    s->rows += k;
    *rows += k;
    spec_rows += k;
    tokens += pd_spec_expected(rate, k) - 1.0;
    time += ratio * k;
  }
}

/* Samples a sequence's tokens from its logits rows (lg: 1 + n_draft rows of n_vocab): row 0's
 * as any step's, then row j + 1's while row j's token equals draft token j and does not end the
 * sequence. The JSON constraint advances with every pick. Runs on a worker thread: it touches
 * only the sequence. */
static void seq_sample(const pd_engine *e, pd_seq *s, const float *lg) {
  const int32_t V = e->model->n_vocab;
  s->n_picks = 0;
  s->pick_failed = 0;
  for (int j = 0; j <= s->n_draft; j++) {
    const float *row = lg + (size_t)j * (size_t)V;
    int32_t tok;
    if (s->json) {
      pd_token_constraint rule = pd_json_constraint_rule(s->json);
      tok = pd_sampler_sample_constrained(s->smp, row, &rule);
      if (tok < 0 || pd_json_constraint_accept(s->json, tok)) { /* nothing may follow */
        s->pick_failed = 1;
        return;
      }
    } else {
      tok = pd_sampler_sample(s->smp, row);
    }
    if (s->logprobs)
      s->step_lp[j].n_top = pd_logprobs(row, V, tok, s->top_logprobs, &s->step_lp[j].logprob,
                                        s->step_lp[j].top_ids, s->step_lp[j].top_logprobs);
    s->picks[s->n_picks++] = tok;
    if (j == s->n_draft || tok != s->draft[j]) return;
    if (is_end_token(e, s, tok) || (s->json && pd_json_constraint_done(s->json)) ||
        s->n_generated + (uint32_t)s->n_picks >= s->max_new)
      return; /* it ends here: the rest of the draft is moot */
  }
}

/* One forward pass over every running sequence. Returns the rows computed. */
static int step(pd_engine *e) {
  restores_done(e);
  grow_reservations(e);
  int n = 0, rows = 0, budget = e->cfg.max_batch_tokens;
  pd_seq *order[1024];
  /* decoding sequences: one row each */
  for (pd_seq *s = e->running; s && n < 1024; s = s->next)
    if (s->phase == PHASE_DECODE && rows < budget) {
      s->rows = 1;
      order[n++] = s;
      rows++;
    }
  /* prefill chunks: the rest of the budget split equally between the tenants prefilling */
  uint32_t tenants[64];
  int n_tenants = 0;
  for (pd_seq *s = e->running; s; s = s->next) {
    if (s->phase != PHASE_PREFILL) continue;
    int seen = 0;
    for (int i = 0; i < n_tenants; i++) seen |= tenants[i] == s->tenant;
    if (!seen && n_tenants < 64) tenants[n_tenants++] = s->tenant;
  }
  for (int ti = 0; ti < n_tenants && rows < budget; ti++) {
    int share = (budget - rows) / (n_tenants - ti);
    if (share < 1) share = 1;
    for (pd_seq *s = e->running; s && share > 0 && n < 1024; s = s->next) {
      if (s->phase != PHASE_PREFILL || s->tenant != tenants[ti]) continue;
      int left = (int)(s->n_tokens - s->n_past); /* a resumed sequence: its generated tokens too */
      int take = left < share ? left : share;
      if (take <= 0) continue;
      if (!s->prefill_start_ms) s->prefill_start_ms = pd_grpc_now_ms();
      s->rows = take;
      order[n++] = s;
      rows += take;
      share -= take;
    }
  }
  if (n == 0) return 0;
  choose_drafts(e, order, n, &rows, budget);
  /* blocks for the new rows */
  int m = 0;
  for (int i = 0; i < n; i++) {
    pd_seq *s = order[i];
    if (ensure_blocks(e, s, s->n_past + (uint32_t)s->rows)) {
      running_remove(e, s);
      seq_finish(e, s, PD_GRPC_RESOURCE_EXHAUSTED,
                 "the KV cache is full (pinned or in-use prefixes hold it)",
                 PREFIXD__V1__FINISH_REASON__FINISH_REASON_ERROR);
      continue;
    }
    order[m++] = s;
  }
  n = m;
  for (int i = 0; i < n; i++) {
    pd_seq *s = order[i];
    /* the rows up to its last token, and a draft after it, want logits */
    int want = !s->warm && s->n_past + (uint32_t)s->rows == s->n_tokens + (uint32_t)s->n_draft
                   ? 1 + s->n_draft
                   : 0;
    e->batch[i] = (pd_llama_seq){s->tokens + s->n_past, s->rows,
                                 (int32_t)s->n_past,    (const int32_t *)s->table,
                                 (int32_t)s->n_table,   want};
  }
  if (n == 0) return 0;
  int decode_rows = 0; /* a decoding sequence's row, and its draft's */
  rows = 0;
  for (int i = 0; i < n; i++) {
    rows += order[i]->rows;
    if (order[i]->phase == PHASE_DECODE) decode_rows += order[i]->rows;
  }
  struct timespec f0, f1;
  clock_gettime(CLOCK_MONOTONIC, &f0);
  int gpu_picked;
  int rc = forward(e, order, n, &gpu_picked);
  clock_gettime(CLOCK_MONOTONIC, &f1);
  const double pass_s = (double)(f1.tv_sec - f0.tv_sec) + (double)(f1.tv_nsec - f0.tv_nsec) * 1e-9;
  if (!rc && rows > decode_rows) /* the prefill rate, for restore-or-recompute */
    pd_tiers_note_prefill(e->tiers, (uint64_t)rows, pass_s);
  if (!rc) pd_spec_cost_note(&e->spec_cost, rows, pass_s);
  int64_t now = pd_grpc_now_ms();
  int li = 0;
  const float *lg[1024];
  int want[1024]; /* the index of the sequence's row among those that want a token, or -1 */
  for (int i = 0; i < n; i++) {
    pd_seq *s = order[i];
    lg[i] = NULL;
    want[i] = -1;
    if (rc) {
      running_remove(e, s);
      seq_finish(e, s, rc == PD_ENOMEM ? PD_GRPC_RESOURCE_EXHAUSTED : PD_GRPC_INTERNAL,
                 rc == PD_ENOMEM ? "out of memory in the forward pass" : "the forward pass failed",
                 PREFIXD__V1__FINISH_REASON__FINISH_REASON_ERROR);
      order[i] = NULL;
      continue;
    }
    s->n_past += (uint32_t)(s->rows - s->n_draft); /* a draft's KV counts once it is kept */
    if (e->batch[i].want_logits) {
      want[i] = li;
      lg[i] = e->logits + (size_t)li * (size_t)e->model->n_vocab;
      li += e->batch[i].want_logits;
    }
    if (s->phase == PHASE_PREFILL && s->n_past == s->n_tokens) {
      if (s->prefill_ms == 0) /* a resumed sequence keeps its first prefill's */
        s->prefill_ms = (double)(now - s->prefill_start_ms);
      if (s->warm) {
        running_remove(e, s);
        seq_finish(e, s, PD_GRPC_OK, NULL, 0);
        order[i] = NULL;
        continue;
      }
      seq_publish(e, s, s->n_tokens / B(e) * B(e)); /* full prompt blocks enter the tree */
    }
  }
  /* sampling: each sequence has its own sampler, so they run in parallel */
  if (gpu_picked) { /* the argmax ran on the GPU: the token, recorded as a sample would be */
    for (int i = 0; i < n; i++)
      if (order[i] && lg[i]) {
        order[i]->picks[0] = e->gpu_picks[want[i]];
        order[i]->n_picks = 1;
        order[i]->pick_failed = 0;
        pd_sampler_record(order[i]->smp, order[i]->picks[0]);
      }
  } else {
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < n; i++)
      if (order[i] && lg[i]) seq_sample(e, order[i], lg[i]);
  }
  /* the tokens go out in order; each kept draft token's KV joins the context first */
  for (int i = 0; i < n; i++) {
    pd_seq *s = order[i];
    if (!s || !lg[i]) continue;
    int reason = 0, kept = 0;
    for (int j = 0; j < s->n_picks && !reason; j++) {
      if (j > 0) s->n_past++, kept++; /* draft token j - 1 was the token sampled: its KV stands */
      /* the JSON state is the one after the last pick (a pick that closes it ends the chain) */
      int closed = j == s->n_picks - 1 && s->json && pd_json_constraint_done(s->json);
      reason = seq_emit(e, s, s->picks[j], &s->step_lp[j], closed);
    }
    if (s->n_draft) {
      e->spec_draft_tokens[s->draft_source] += (uint64_t)s->n_draft;
      e->spec_accepted_tokens[s->draft_source] += (uint64_t)kept;
      if (!reason && !s->pick_failed) pd_spec_seq_note(&s->spec[s->draft_source], s->n_draft, kept);
    }
    if (reason < 0) {
      running_remove(e, s);
      seq_finish(e, s, PD_GRPC_RESOURCE_EXHAUSTED, "out of memory for the output",
                 PREFIXD__V1__FINISH_REASON__FINISH_REASON_ERROR);
    } else if (reason) {
      running_remove(e, s);
      seq_finish(e, s, PD_GRPC_OK, NULL, reason);
    } else if (s->pick_failed) {
      running_remove(e, s);
      seq_finish(e, s, PD_GRPC_INTERNAL,
                 "no token can continue the JSON output (a schema nested deeper than the "
                 "constraint follows?)",
                 PREFIXD__V1__FINISH_REASON__FINISH_REASON_ERROR);
    }
  }
  return rows;
}

/* ---- pins across restarts -------------------------------------------------------------------- */

#define PINS_SAVE_MS 200 /* pins are written out at most this often (and at shutdown) */

static int64_t unix_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Hands the pin registry to the storage worker, after this step's write-through of the pinned
 * blocks. Without a disk tier nothing survives a restart, pins included. */
static void save_pins(pd_engine *e) {
  uint8_t *buf;
  size_t len;
  if (!pd_tiers_disk_enabled(e->tiers, NULL)) {
    e->pins.dirty = 0;
    return;
  }
  if (pd_pins_encode(&e->pins, &e->tree, pd_engine_now_ms(), unix_now_ms(), &buf, &len) == PD_OK)
    pd_tiers_put_meta(e->tiers, "pins", buf, len);
}

/* Takes again the pins stored before a restart whose prefixes came back from disk. */
static void restore_pins(pd_engine *e) {
  size_t len = 0, cap = 4096;
  uint8_t *buf = malloc(cap);
  int rc = buf ? pd_tiers_get_meta(e->tiers, "pins", buf, cap, &len) : PD_ENOMEM;
  if (rc == PD_EFULL) {
    uint8_t *bigger = realloc(buf, len);
    rc = bigger ? pd_tiers_get_meta(e->tiers, "pins", bigger, len, &len) : PD_ENOMEM;
    buf = bigger ? bigger : buf;
  }
  uint32_t restored = 0, gone = 0;
  if (rc == PD_OK)
    rc = pd_pins_restore(&e->pins, &e->tree, buf, len, pd_engine_now_ms(), unix_now_ms(), &restored,
                         &gone);
  free(buf);
  e->pins_restored = restored;
  if (rc == PD_OK && (restored || gone))
    pd_log(PD_LOG_INFO, "pins restored", "pinned=%u gone=%u", restored, gone);
  else if (rc != PD_OK && rc != PD_ENOTFOUND)
    pd_log(PD_LOG_WARN, "stored pins not restored", "error=\"%s\"", pd_strerror(rc));
  if (gone) pd_pins_touch(&e->pins); /* write back the ones that are left */
}

/* ---- eviction on request --------------------------------------------------------------------- */

/* Takes back the own pins of node's subtree (tenant < 0: any), so the blocks may go. */
static void unpin_subtree(pd_engine *e, uint32_t node, int32_t tenant) {
  const pd_node *nd = pd_radix_node(&e->tree, node);
  for (uint32_t c = nd->first_child; c != PD_NODE_NIL; c = pd_radix_node(&e->tree, c)->next_sibling)
    unpin_subtree(e, c, tenant);
  while (pd_radix_node(&e->tree, node)->own_pins > 0 &&
         (tenant < 0 || pd_radix_node(&e->tree, node)->tenant == tenant)) {
    if (pd_radix_unpin(&e->tree, node)) break;
    pd_pins_touch(&e->pins);
  }
}

/* Drops the evictable blocks of tenant (-1: everyone's) from tier, and their disk records. */
static void drop_tier(pd_engine *e, int32_t tenant, int tier, uint64_t counts[PD_TIERS]) {
  for (;;) {
    pd_evicted ev[256];
    uint32_t n = 0;
    pd_radix_evict(&e->tree, tier, tenant, 256, pd_engine_now_ms(), ev, &n);
    if (n == 0) break;
    for (uint32_t i = 0; i < n; i++) {
      counts[ev[i].tier]++; /* a detached victim holds no slot: drop does not count it */
      pd_tiers_drop(e->tiers, ev[i].node, counts);
    }
  }
}

/* Evict by tenant or for everyone. With one tier named, its blocks move one tier colder where
 * there is one (the disk tier: they are deleted, and so are the disk copies of hotter blocks);
 * with none named, they leave the cache (pins included). What running sequences hold stays, and
 * so do pinned blocks when one tier is named. */
int pd_engine_evict(pd_engine *e, int32_t tenant, int tier, uint64_t counts[PD_TIERS]) {
  pd_tiers_sync(e->tiers); /* transfers in flight hold blocks: let them land first */
  /* evicting from every tier takes the pins too; moving one tier colder leaves pinned blocks
   * where they are */
  for (uint32_t ns = 0; ns < e->tree.cap_ns_root && tier < 0; ns++)
    if (e->tree.ns_root[ns] != PD_NODE_NIL) unpin_subtree(e, e->tree.ns_root[ns], tenant);
  if (tier < 0) {
    for (int t = 0; t < PD_TIERS; t++) drop_tier(e, tenant, t, counts);
  } else if (tier == 2) {
    drop_tier(e, tenant, 2, counts);
    for (uint32_t id = 0; id < e->tree.cap_nodes; id++) {
      const pd_node *nd = pd_radix_node(&e->tree, id);
      if ((nd->flags & PD_NODE_USED) && nd->tier < 2 && (tenant < 0 || nd->tenant == tenant))
        counts[2] += (uint64_t)pd_tiers_forget_disk_copy(e->tiers, id);
    }
  } else {
    pd_tiers_evict(e->tiers, tier, tenant, pd_engine_now_ms(), counts);
  }
  pd_tiers_sync(e->tiers); /* the records are deleted when Evict answers */
  return PD_OK;
}

/* Evicts the subtree below and including node, deepest first, skipping what is in use. */
static void evict_subtree(pd_engine *e, uint32_t node, int tier, uint64_t counts[PD_TIERS]) {
  const pd_node *nd = pd_radix_node(&e->tree, node);
  for (uint32_t c = nd->first_child, next; c != PD_NODE_NIL; c = next) {
    next = pd_radix_node(&e->tree, c)->next_sibling;
    evict_subtree(e, c, tier, counts);
  }
  nd = pd_radix_node(&e->tree, node);
  if (tier == 2 && nd->tier < 2) counts[2] += (uint64_t)pd_tiers_forget_disk_copy(e->tiers, node);
  if (nd->tier >= PD_TIERS || (tier >= 0 && nd->tier != tier) || nd->refcount || nd->pin_count ||
      nd->first_child != PD_NODE_NIL)
    return;
  pd_tiers_drop(e->tiers, node, counts);
}

int pd_engine_evict_prefix(pd_engine *e, uint32_t node, int tier, uint64_t counts[PD_TIERS]) {
  pd_key128 key = pd_radix_node(&e->tree, node)->key;
  pd_tiers_sync(e->tiers);
  if (pd_radix_find(&e->tree, key, &node)) return PD_OK; /* a failed restore dropped it */
  uint32_t parent = pd_radix_node(&e->tree, node)->parent;
  unpin_subtree(e, node, -1);
  evict_subtree(e, node, tier, counts);
  /* then the prefix's own blocks up the path, as far as no other prefix shares them */
  while (parent != PD_NODE_NIL) {
    const pd_node *p = pd_radix_node(&e->tree, parent);
    if (p->tier == PD_TIER_ROOT || p->first_child != PD_NODE_NIL) break;
    uint32_t up = p->parent;
    evict_subtree(e, parent, tier, counts);
    if (pd_radix_node(&e->tree, parent)->flags & PD_NODE_USED &&
        pd_radix_node(&e->tree, parent)->parent == up)
      break; /* still there: in use or pinned by another holder */
    parent = up;
  }
  pd_tiers_sync(e->tiers);
  return PD_OK;
}

/* ---- the thread ------------------------------------------------------------------------------ */

static void run_call(pd_engine *e, pd_job *job) {
  if (atomic_load(&job->cancelled)) {
    job_done(e, job, PD_GRPC_CANCELLED, "cancelled by the client");
    return;
  }
  job->status = PD_GRPC_OK;
  job->message[0] = 0;
  job->run(e, job);
  job_done(e, job, job->status, job->message);
}

static void *engine_main(void *arg) {
  pd_engine *e = arg;
  int threads = atomic_load(&e->cpu_threads); /* set by pd_engine_start */
#ifdef _OPENMP
  omp_set_num_threads(threads);
#endif
  for (;;) {
    pthread_mutex_lock(&e->mu);
    /* stopping waits for the jobs the tokenizer thread still has */
    while ((!e->stop || e->tokenizing) && !e->inbox_head && !e->running && !e->queue_head &&
           !pd_tiers_has_completions(e->tiers))
      pthread_cond_wait(&e->cv, &e->mu);
    if (e->stop && !e->tokenizing && !e->inbox_head && !e->running && !e->queue_head) {
      pthread_mutex_unlock(&e->mu);
      break;
    }
    pd_job *in = e->inbox_head;
    e->inbox_head = e->inbox_tail = NULL;
    pthread_mutex_unlock(&e->mu);
    pd_tiers_poll(e->tiers, pd_engine_now_ms());
    for (pd_job *j = in, *next; j; j = next) {
      next = j->next;
      j->next = NULL;
      int status = authenticate(e, j);
      if (status) {
        job_done(e, j, status, j->message);
        continue;
      }
      if (tokenize_elsewhere_wanted(e, j)) { /* back through the inbox when tokenized */
        tokenize_elsewhere(e, j);
        continue;
      }
      if (j->kind == PD_JOB_CALL)
        run_call(e, j);
      else
        enqueue(e, j);
    }
    if (pd_radix_expire_pins(&e->tree, pd_engine_now_ms())) pd_pins_touch(&e->pins);
    if (e->pins.dirty && pd_engine_now_ms() >= e->pins.last_save_ms + PINS_SAVE_MS) save_pins(e);
    reap(e);
    admit(e);
    if (e->cfg.threads <= 0 && e->running) { /* --threads auto: what the others leave */
      const int want = pd_cpu_share_update(&e->cpu_share, (int64_t)pd_engine_now_ms());
      if (want != threads) {
        pd_log(PD_LOG_INFO, "CPU threads changed", "threads=%d was=%d allowed=%d others=%.2f", want,
               threads, e->cpu_share.allowed, e->cpu_share.others);
        threads = want;
#ifdef _OPENMP
        omp_set_num_threads(threads);
#endif
        atomic_store(&e->cpu_threads, threads);
      }
    }
    int rows = step(e);
    /* keep free device and host slots ahead of need, spilling in the background */
    uint64_t now_ms = pd_engine_now_ms();
    if (e->n_blocks - pd_radix_tier_used(&e->tree, 0) < low_watermark(e))
      pd_tiers_make_room(e->tiers, 0, low_watermark(e), now_ms);
    uint32_t host_cap = e->tree.cfg.tier_capacity[1], host_wm = host_cap / 16 + 1;
    if (host_cap && host_cap - pd_radix_tier_used(&e->tree, 1) < host_wm)
      pd_tiers_make_room(e->tiers, 1, host_wm, now_ms);
    pd_tiers_flush(e->tiers);
    if (rows == 0 && e->running) { /* every running sequence waits for its blocks */
      pthread_mutex_lock(&e->mu);
      if (!e->inbox_head && !pd_tiers_has_completions(e->tiers)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 20 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
        pthread_cond_timedwait(&e->cv, &e->mu, &ts);
      }
      pthread_mutex_unlock(&e->mu);
    }
  }
  return NULL;
}

/* The storage worker has completions: wake the engine thread (any thread). */
static void tiers_wake(void *arg) {
  pd_engine *e = arg;
  pthread_mutex_lock(&e->mu);
  pthread_cond_signal(&e->cv);
  pthread_mutex_unlock(&e->mu);
}

static void rebuild_progress(void *arg, uint64_t n_done) {
  (void)arg;
  pd_log(PD_LOG_INFO, "disk tier: indexing", "records_read=%llu", (unsigned long long)n_done);
}

void pd_engine_submit(pd_engine *e, pd_job *job) {
  if (!job->arrival_ms) job->arrival_ms = pd_grpc_now_ms();
  pthread_mutex_lock(&e->mu);
  job_append(&e->inbox_head, &e->inbox_tail, job);
  pthread_cond_signal(&e->cv);
  pthread_mutex_unlock(&e->mu);
}

void pd_engine_drain(pd_engine *e) {
  pthread_mutex_lock(&e->mu);
  e->draining = 1;
  pthread_cond_signal(&e->cv);
  pthread_mutex_unlock(&e->mu);
}

static void on_async(uv_async_t *h) {
  pd_engine *e = h->data;
  e->on_output(NULL, e->output_user);
}

int pd_engine_create(const pd_engine_config *cfg, uv_loop_t *loop, pd_job_output_fn on_output,
                     void *user, pd_engine **out, char *err, size_t errlen) {
  if (cfg->speculate < 0 || cfg->speculate > PD_SPEC_DRAFT_MAX) {
    snprintf(err, errlen, "speculate %d is outside [0, %d]", cfg->speculate, PD_SPEC_DRAFT_MAX);
    return PD_EINVAL;
  }
  pd_engine *e = calloc(1, sizeof *e);
  if (!e) return PD_ENOMEM;
  e->cfg = *cfg;
  e->on_output = on_output;
  e->output_user = user;
  e->start_ms = pd_grpc_now_ms();
  int rc = pd_model_load(cfg->model_path, &e->model, err, errlen);
  if (rc) goto fail;
  if ((rc = pd_tokenizer_from_gguf(e->model->gguf, &e->tok, err, errlen))) goto fail;
  char terr[256];
  e->have_chat = pd_chat_template_from_gguf(e->model->gguf, &e->chat, terr, sizeof terr) == 0;
  pd_model_describe(e->model, e->model_desc, sizeof e->model_desc);
  if (e->cfg.max_context <= 0 || e->cfg.max_context > e->model->n_ctx_train)
    e->cfg.max_context = e->model->n_ctx_train;
  if ((rc = pd_llama_init(&e->llama, e->model, (int)cfg->block_tokens, cfg->cache_dtype, cfg->mode,
                          cfg->max_batch_tokens, cfg->max_running))) {
    snprintf(err, errlen, "cannot size the forward pass: %s", pd_strerror(rc));
    goto fail;
  }
  int gpu = cfg->device == PD_ENGINE_DEVICE_CUDA ||
            (cfg->device == PD_ENGINE_DEVICE_AUTO && pd_devpool_cuda_available());
  if (cfg->device == PD_ENGINE_DEVICE_CUDA && !pd_devpool_cuda_available()) {
    if (PD_ENGINE_HAVE_CUDA)
      snprintf(err, errlen, "--device cuda: no GPU found (%s)",
               pd_devpool_cuda_unavailable_reason());
    else
      snprintf(err, errlen, "--device cuda: this prefixd was built without the CUDA backend");
    rc = PD_EUNSUPPORTED;
    goto fail;
  }
  if (PD_ENGINE_HAVE_CUDA && cfg->device == PD_ENGINE_DEVICE_AUTO && !gpu)
    pd_log(PD_LOG_INFO, "no usable GPU: the forward pass runs on the CPU", "reason=\"%s\"",
           pd_devpool_cuda_unavailable_reason());
  if (gpu && (rc = gpu_init(e, err, errlen))) {
    if (cfg->device != PD_ENGINE_DEVICE_AUTO) goto fail;
    /* auto: a model or a size the GPU path cannot take runs on the CPU, and says why */
    pd_log(PD_LOG_WARN, "the GPU cannot serve this: the forward pass runs on the CPU",
           "reason=\"%s\"", err);
    gpu = 0, rc = PD_OK, err[0] = 0;
  }
  e->block_bytes = pd_kv_block_bytes(&e->llama.kv);
  uint64_t n_blocks = cfg->kv_cache_bytes / e->block_bytes;
  if (n_blocks < 4 || n_blocks > UINT32_MAX / 2) {
    snprintf(err, errlen, "the KV cache of %llu bytes holds %llu blocks of %zu bytes: too few",
             (unsigned long long)cfg->kv_cache_bytes, (unsigned long long)n_blocks, e->block_bytes);
    rc = PD_EINVAL;
    goto fail;
  }
  e->n_blocks = (uint32_t)n_blocks;
  if ((rc = pd_devpool_create(&e->pool, gpu ? PD_DEVPOOL_CUDA : PD_DEVPOOL_CPU, e->n_blocks,
                              e->block_bytes, err, errlen))) {
    if (!gpu || cfg->device != PD_ENGINE_DEVICE_AUTO) goto fail;
    pd_log(PD_LOG_WARN, "the GPU cannot hold the KV cache: the forward pass runs on the CPU",
           "reason=\"%s\"", err);
    gpu_free(e);
    e->on_gpu = 0, gpu = 0, err[0] = 0;
    if ((rc =
             pd_devpool_create(&e->pool, PD_DEVPOOL_CPU, e->n_blocks, e->block_bytes, err, errlen)))
      goto fail;
  }
  pd_devpool_describe(&e->pool, e->backend, sizeof e->backend);
#ifdef PD_WITH_CUDA
  if (e->cuda) e->cuda->pool_blocks = e->n_blocks; /* a block id past the pool is refused */
#endif
  e->slot_owner = calloc(n_blocks, sizeof *e->slot_owner);
  e->slot_stamp = calloc(n_blocks, sizeof *e->slot_stamp);
  const size_t logits_rows = (size_t)cfg->max_running + (cfg->speculate > 0 ? SPEC_ROWS_MAX : 0);
  const size_t logits_bytes = logits_rows * (size_t)e->model->n_vocab * sizeof(float);
#ifdef PD_WITH_CUDA
  if (e->on_gpu && (rc = pd_llama_cuda_host_alloc(logits_bytes, (void **)&e->logits, err, errlen)))
    goto fail;
#endif
  if (!e->on_gpu) e->logits = malloc(logits_bytes);
  e->gpu_picks = malloc((size_t)cfg->max_running * sizeof *e->gpu_picks);
  e->batch = calloc((size_t)cfg->max_running + cfg->max_batch_tokens, sizeof *e->batch);
  if (!e->slot_owner || !e->slot_stamp || !e->logits || !e->gpu_picks || !e->batch) {
    snprintf(err, errlen, "out of memory for a KV cache of %llu blocks",
             (unsigned long long)n_blocks);
    rc = PD_ENOMEM;
    goto fail;
  }
  pd_radix_config rcfg = {0};
  rcfg.block_tokens = cfg->block_tokens;
  /* the fingerprint names the model, the cache dtype and the block size: disk records of another
   * dtype or block size are someone else's */
  pd_key128 fp;
  memcpy(&fp, e->model->fingerprint, 16);
  /* and the backend: the GPU's KV agrees with the CPU's only within rounding, and a cached
   * block must be bit for bit what this daemon would compute; so does the CPU's attention built
   * for AVX-512 with the AVX2 build's (in bits 8 and up: the AVX2 build's fingerprint is the one
   * it had before there was an AVX-512 build) */
  const uint32_t cpu_variant = e->on_gpu ? 0 : (uint32_t)pd_attn_arith_variant();
  uint32_t shape[3] = {(uint32_t)cfg->cache_dtype, cfg->block_tokens,
                       (uint32_t)e->on_gpu | cpu_variant << 8};
  fp = pd_blockkey_next(fp, (const int32_t *)shape, 3);
  memcpy(rcfg.fingerprint, &fp, 16);
  rcfg.tier_capacity[0] = e->n_blocks;
  pthread_mutex_init(&e->mu, NULL);
  pthread_cond_init(&e->cv, NULL);
  pthread_mutex_init(&e->tk_mu, NULL);
  pthread_cond_init(&e->tk_cv, NULL);
  pd_tiers_config tcfg = {.block_bytes = e->block_bytes,
                          .block_tokens = cfg->block_tokens,
                          .dtype = (uint8_t)cfg->cache_dtype,
                          .device = &e->pool,
                          .host_bytes = cfg->host_cache_bytes,
                          .disk_dir = cfg->disk_dir,
                          .disk_bytes = cfg->disk_cache_bytes,
                          .durability = cfg->disk_durability,
                          .foreign = cfg->disk_foreign,
                          .write_filter = cfg->disk_write_filter,
                          .wake = tiers_wake,
                          .wake_arg = e};
  memcpy(tcfg.fingerprint, rcfg.fingerprint, 16);
  pd_tiers_capacity(&tcfg, &rcfg.tier_capacity[0]);
  rcfg.tier_capacity[0] = e->n_blocks;
  if ((rc = pd_radix_init(&e->tree, &rcfg))) {
    snprintf(err, errlen, "cannot create the prefix tree: %s", pd_strerror(rc));
    goto fail;
  }
  if ((rc = pd_tiers_open(&tcfg, &e->tree, &e->tiers, err, errlen))) goto fail;
  if ((rc = pd_tenantdb_open(&e->db, cfg->tenants_path, err, errlen))) goto fail;
  if (cfg->admin_key && cfg->admin_key[0]) {
    e->has_admin = 1;
    pd_sha256_digest(cfg->admin_key, strlen(cfg->admin_key), e->admin_sha256);
  }
  for (uint32_t i = 0; i < e->db.n_recs; i++)
    if ((rc = pd_engine_add_tenant(e, &e->db.recs[i], err, errlen))) goto fail;
  e->single_tenant = !e->has_admin && e->db.n_recs == 0;
  if (e->single_tenant) {
    static const uint8_t zero_salt[16];
    pd_tenant_rec def = {.name = "default"};
    memcpy(def.salt, zero_salt, 16);
    if ((rc = pd_engine_add_tenant(e, &def, err, errlen))) goto fail;
    e->default_tenant = (uint32_t)pd_engine_tenant_id(e, "default");
  }
  /* the disk tier's blocks from before a restart are hits again */
  if ((rc = pd_tiers_rebuild(e->tiers, rebuild_progress, NULL, &e->rebuilt_blocks))) {
    snprintf(err, errlen, "cannot index the disk tier: %s", pd_strerror(rc));
    goto fail;
  }
  restore_pins(e);
  uv_async_init(loop, &e->async, on_async);
  e->async.data = e;
  *out = e;
  return PD_OK;
fail:
  pd_tiers_close(e->tiers);
  pd_pins_free(&e->pins);
  pd_tenantdb_close(&e->db);
  pd_devpool_destroy(&e->pool);
  free(e->slot_owner);
  free(e->slot_stamp);
  logits_free(e);
  free(e->batch);
  pd_llama_free(&e->llama);
  gpu_free(e);
  pd_tokenizer_free(e->tok);
  pd_model_free(e->model);
  free(e);
  return rc;
}

int pd_engine_start(pd_engine *e) {
  pd_cpu_share_init(&e->cpu_share);
  atomic_store(&e->cpu_threads, e->cfg.threads > 0 ? e->cfg.threads : e->cpu_share.allowed);
  /* without the tokenizer thread every prompt is tokenized on the engine thread */
  e->tk_started = e->cfg.tokenize_thread_bytes > 0 &&
                  pthread_create(&e->tk_thread, NULL, tokenizer_main, e) == 0;
  if (pthread_create(&e->thread, NULL, engine_main, e) == 0) return PD_OK;
  tokenizer_stop(e);
  return PD_ESYS;
}

static void free_engine(uv_handle_t *h) {
  free(h->data);
}

void pd_engine_destroy(pd_engine *e) {
  pthread_mutex_lock(&e->mu);
  e->stop = 1;
  pthread_cond_signal(&e->cv);
  pthread_mutex_unlock(&e->mu);
  pthread_join(e->thread, NULL); /* it waited for every job the tokenizer had */
  tokenizer_stop(e);
  if (e->pins.dirty) save_pins(e);
  pd_tiers_close(e->tiers); /* queued writes are committed first */
  pd_pins_free(&e->pins);
  pd_radix_free(&e->tree);
  pd_tenantdb_close(&e->db);
  pd_devpool_destroy(&e->pool);
  free(e->slot_owner);
  free(e->slot_stamp);
  logits_free(e);
  free(e->batch);
  free(e->counters);
  pd_llama_free(&e->llama);
  gpu_free(e);
  pd_json_vocab_free(e->json_vocab);
  pd_tokenizer_free(e->tok);
  pd_model_free(e->model);
  pthread_mutex_destroy(&e->mu);
  pthread_cond_destroy(&e->cv);
  pthread_mutex_destroy(&e->tk_mu);
  pthread_cond_destroy(&e->tk_cv);
  uv_close((uv_handle_t *)&e->async, free_engine); /* e goes when the loop lets go of it */
}
