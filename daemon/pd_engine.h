/*
 * pd_engine.h -- the engine thread: it owns the model, the KV pool, the prefix tree and the
 * tenant registry, and runs the continuous-batching scheduler.
 *
 * THREADS. The libuv loop thread submits jobs (pd_engine_submit) and receives their results
 * through a uv_async handle; the engine thread does all the work. Nothing the engine owns is
 * touched by the loop thread, and a job is touched by one thread at a time except for three
 * fields: `cancelled` (atomic, set by the loop thread), and the stream output and `done` flag,
 * which move engine -> loop under the engine's outbox mutex.
 *
 * JOBS. A job is a Generate or Warm request (it becomes a sequence in the scheduler) or a call
 * (any other RPC: a function that runs on the engine thread between two forward steps and fills
 * a response). Every job is authenticated first, on the engine thread, against the registry:
 * an admin key, a tenant's key, or -- in single-tenant mode -- nothing.
 *
 * SCHEDULER. Each step: take new jobs; run calls; drop queued or running sequences whose client
 * went away or whose deadline passed; admit queued sequences (round-robin over tenants, while
 * the KV pool can hold what they may need); then one forward pass over a batch of every decoding
 * sequence (one row each) and prefill chunks of the others, the token budget split equally
 * between the tenants that are prefilling. A sequence joins and leaves between steps.
 *
 * CACHE USE. A sequence matches its prompt (all but the last token, whose logits it needs)
 * against the tree; the matched full blocks go into its block table by reference, a partially
 * matched block is copied (copy-on-write), and only the rest is prefilled. When its prompt is
 * done, its full prompt blocks enter the tree, so a concurrent request with the same prefix
 * shares them; at its end the rest (the generated tokens, and a partial last block) enters too,
 * so the next chat turn reuses the answer. The pool is the device tier (tier 0: host memory on
 * the CPU backend); when it is full, the tier manager (storage/pd_tiers.h) demotes its least
 * recently used unreferenced blocks to host RAM and from there to disk. A match that ends in
 * colder blocks restores them (when that is faster than computing them): the sequence waits in
 * the restore phase for its own blocks only, while the others run.
 */
#ifndef PD_ENGINE_H
#define PD_ENGINE_H

#include <protobuf-c/protobuf-c.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <uv.h>

#include "kernels.h"
#include "pd_chat.h"
#include "pd_cpu_share.h"
#include "pd_detok.h"
#include "pd_grpc_server.h"
#include "pd_llama.h"
#include "pd_pins.h"
#include "pd_model.h"
#include "pd_radix.h"
#include "pd_sampler.h"
#include "pd_speculate.h"
#include "pd_tenantdb.h"
#include "pd_tiers.h"
#include "pd_tokenizer.h"

/* Where the forward pass and the device tier run. */
enum pd_engine_device {
  PD_ENGINE_DEVICE_AUTO = 0, /* a GPU where the build has CUDA and the driver reports one */
  PD_ENGINE_DEVICE_CPU = 1,
  PD_ENGINE_DEVICE_CUDA = 2, /* a GPU, or an error at start */
};

/* How much of the device tier a sequence must find room for before it starts.
 * PD_ADMIT_INCREMENTAL (the default): its context and the next block of new tokens; it reserves
 * more a block at a time as it grows, and when the pool cannot give it one, the most recent
 * arrival among the running sequences is preempted: its computed blocks go into the tree, its
 * slots are given back, and it waits at the head of the queue to resume, matching those blocks
 * again (whatever of them was demoted meanwhile is restored or recomputed). On the CPU the
 * resumed sequence's tokens are bit-identical to an uninterrupted run.
 * PD_ADMIT_FULL: its prompt and every token max_tokens allows, so it never waits for a block
 * once started, at the price of fewer sequences at once when requests ask for many tokens. */
enum pd_kv_admission { PD_ADMIT_INCREMENTAL = 0, PD_ADMIT_FULL = 1 };

typedef struct pd_engine_config {
  const char *model_path;
  uint32_t block_tokens;     /* B (default 16) */
  uint64_t kv_cache_bytes;   /* the device tier's pool */
  uint64_t host_cache_bytes; /* the host tier (0: none) */
  const char *disk_dir;      /* the disk tier's directory (NULL: none) */
  uint64_t disk_cache_bytes; /* the disk tier's budget */
  enum pd_kvstore_durability disk_durability;
  enum pd_kvstore_foreign disk_foreign;
  enum pd_write_filter disk_write_filter;
  int max_batch_tokens;      /* rows per forward pass */
  int max_running;           /* sequences in the batch at once */
  int max_queue;             /* waiting sequences; beyond: RESOURCE_EXHAUSTED */
  int max_context;           /* tokens per sequence (0 = the model's training context) */
  enum pd_dtype cache_dtype; /* f16 */
  enum pd_matmul_mode mode;
  const char *tenants_path; /* the registry file; NULL = in memory */
  const char *admin_key;    /* NULL = no admin */
  int threads;              /* CPU threads for the forward pass; 0 = all */
  enum pd_engine_device device;
  size_t tokenize_thread_bytes; /* prompts with more bytes of text are tokenized on the
                                   tokenizer thread; 0 = no tokenizer thread */
  int zero_reused_kv;           /* zero a device block before another tenant's sequence writes
                               into it, so no stale KV of one tenant is ever in reach of
                               another's through a bug (default on) */
  enum pd_kv_admission kv_admission;
  int log_requests; /* a log line for every finished Generate and Warm (pd_service_log_request) */
  int speculate;    /* draft tokens a decoding sequence may verify per pass (prompt lookup,
                       pd_speculate.h), 0..PD_SPEC_DRAFT_MAX; 0: off. The CPU backend's. */
  int speculate_always; /* verify every draft found, whatever the cost model says (tests, and
                           measuring what rejected drafts cost) */
} pd_engine_config;

enum pd_job_kind { PD_JOB_GENERATE, PD_JOB_WARM, PD_JOB_CALL };

typedef struct pd_engine pd_engine;
typedef struct pd_job pd_job;

/* A streamed token's log-probabilities (GenerateRequest.logprobs): its own, and the n_top most
 * probable tokens of that step (pd_logprobs). */
typedef struct pd_token_logprob {
  float logprob;
  int32_t n_top;
  int32_t top_ids[PD_TOP_LOGPROBS_MAX];
  float top_logprobs[PD_TOP_LOGPROBS_MAX];
} pd_token_logprob;
#define PD_JOB_CANCELLED_BY_SERVER 2 /* pd_job.cancelled: the daemon's drain ran out of time */

/* A call's body, run on the engine thread after authentication. It sets job->resp (a message
 * built in the job's arena, pd_job_alloc) or job->status and job->message. */
typedef void (*pd_call_fn)(pd_engine *e, pd_job *job);

struct pd_job {
  enum pd_job_kind kind;
  pd_grpc_call *call;              /* loop thread only */
  const ProtobufCMessage *req;     /* owned by the call; valid until the job is done */
  pd_call_fn run;                  /* PD_JOB_CALL */
  char authorization[128];         /* the bearer key presented, "" if none */
  int64_t arrival_ms, deadline_ms; /* pd_grpc_now_ms() time; deadline 0 = none */
  atomic_int cancelled;            /* client gone (loop thread sets it), or
                                    * PD_JOB_CANCELLED_BY_SERVER (the drain timed out) */
  /* identity, set by the engine's authentication */
  int is_admin;
  int32_t tenant;       /* tree tenant id; -1 for the admin */
  char tenant_name[64]; /* for logs: the tenant's name, "(admin)", or "" (single tenant) */
  char request_id[48];  /* set by the front end: the id its client sees (x-request-id), or "" */
  /* results (engine -> loop), under the outbox mutex */
  ProtobufCMessage *resp;
  void **arena; /* (n_arena) blocks of pd_job_alloc, freed with the job */
  uint32_t n_arena, cap_arena;
  int status;
  char message[256];
  int64_t retry_after_ms; /* > 0: refused by a rate limit, which allows a request after this */
  int32_t *out_ids;       /* streamed tokens not yet sent: (n_out_ids) */
  uint32_t n_out_ids, cap_out_ids;
  char *out_text; /* their text: (n_out_text) bytes */
  size_t n_out_text, cap_out_text;
  pd_token_logprob *out_logprobs; /* (n_out_ids) when the request asked for logprobs, else NULL */
  uint32_t cap_out_logprobs;
  int done, in_outbox, first_sent;
  int reply_failed; /* loop thread: a reply could not be queued (out of memory); the call ends
                       RESOURCE_EXHAUSTED */
  ProtobufCMessage *final; /* Generate: the last stream message (usage, timings) */
  /* A prompt tokenized on the tokenizer thread (a long text or chat prompt: see
   * pd_engine_config.tokenize_thread_bytes): prompt_done, then prompt_ids (n_prompt_ids; the job's
   * until the engine takes them) or prompt_rc with the reason in prompt_error. */
  int prompt_done, prompt_rc;
  char prompt_error[256];
  int32_t *prompt_ids;
  uint32_t n_prompt_ids;
  pd_job *next;                  /* inbox / outbox / tokenizer queue link */
  pd_job *live_prev, *live_next; /* the service's list of live jobs (loop thread) */
  pd_job *taken_next;            /* the list pd_engine_take_output returned (loop thread) */
  /* A job the daemon makes itself (the metrics endpoint), not a client's: call is NULL, it runs
   * as the admin without a key, it is not counted in rpc_status, and once done the service hands
   * it to on_done(job, done_user) on the loop thread instead of answering a call; on_done owns it
   * from then on (pd_job_free). Set before pd_engine_submit; NULL for every gRPC job. */
  void (*on_done)(pd_job *job, void *user);
  void *done_user;
  /* A client's job from another front end than gRPC (the OpenAI-compatible HTTP API): call is
   * NULL, it is authenticated from `authorization` and counted like a gRPC call, and each time it
   * has output (pd_engine_take_stream) or is done, the service hands it to on_output(job,
   * output_user) on the loop thread. Once the job is done (the flag pd_engine_take_stream
   * returns) the callback owns it (pd_job_free). NULL for gRPC jobs. */
  void (*on_output)(pd_job *job, void *user);
  void *output_user;
};

/* Zeroed memory that lives as long as the job (one thread at a time). NULL when out of memory. */
void *pd_job_alloc(pd_job *job, size_t n);
char *pd_job_strdup(pd_job *job, const char *s);
/* Frees the job, its arena and pending output (the call is not touched). */
void pd_job_free(pd_job *job);
/* The API key of an Authorization value (n bytes, "Bearer <key>"; the scheme in any case, as
 * HTTP's schemes are) into job->authorization. PD_EINVAL when the value has another form, an
 * empty key, or a key longer than the field. */
int pd_job_take_bearer(pd_job *job, const char *value, size_t n);

/* Loop-thread callback for jobs with output: replies and, once done, finishes the call. */
typedef void (*pd_job_output_fn)(pd_job *job, void *user);

typedef struct pd_engine_stats_window {
  uint64_t tokens[60]; /* generated tokens per second, ring */
  int64_t second[60];
} pd_engine_stats_window;

typedef struct pd_tenant_counters {
  uint64_t requests, hit_tokens, query_tokens;
  uint64_t computed_tokens; /* uncached prompt + generated: what the rate limit counts */
  uint64_t rate_limited;    /* requests refused by a rate limit */
  uint32_t active;          /* queued + running sequences */
  /* the rate limits' buckets: credit left (tokens may be overdrawn) as of credit_ms (0: not
   * yet used, full) */
  double token_credit, request_credit;
  int64_t credit_ms;
} pd_tenant_counters;

/* A latency histogram with fixed bounds (pd_engine_hist_le_ms), for the metrics endpoint.
 * Engine thread only. */
#define PD_HIST_BUCKETS 16
typedef struct pd_engine_histogram {
  uint64_t le[PD_HIST_BUCKETS]; /* observations <= pd_engine_hist_le_ms[i] (cumulative) */
  uint64_t count;               /* every observation (the +Inf bucket) */
  double sum_ms;
} pd_engine_histogram;
extern const double pd_engine_hist_le_ms[PD_HIST_BUCKETS];
#define PD_GRPC_STATUSES 17 /* OK .. UNAUTHENTICATED */

struct pd_seq;

struct pd_engine {
  pd_engine_config cfg;
  /* owned by the engine thread after start */
  pd_model *model;
  pd_tokenizer *tok;
  struct pd_json_vocab *json_vocab; /* the vocabulary for JSON output, built at the first such
                                       request (owned) */
  pd_chat_template chat;
  int have_chat;
  pd_llama llama;
  pd_devpool pool;            /* (n_blocks, block_bytes) the device tier's memory */
  int on_gpu;                 /* the forward pass and the pool are on the GPU (pool.kind CUDA) */
  struct pd_llama_cuda *cuda; /* the GPU forward pass when on_gpu (owned) */
  char backend[160];          /* "cpu", or "cuda" and the GPU's name, for logs and Stats */
  uint16_t *slot_owner; /* (n_blocks) the tenant + 1 whose sequence last wrote the block, 0: none */
  uint32_t n_blocks;
  uint32_t *slot_stamp; /* (n_blocks) admission's scratch marks (held_unreserved) */
  uint32_t stamp_epoch;
  size_t block_bytes;
  pd_radix tree;
  pd_tiers *tiers;         /* moves blocks between the device pool, host RAM and disk */
  uint64_t rebuilt_blocks; /* disk blocks indexed at start */
  pd_pins pins;            /* pinned prefixes, stored with the disk tier */
  uint32_t pins_restored;  /* pins taken again at start */
  pd_tenantdb db;
  int single_tenant;
  uint32_t default_tenant;
  uint8_t admin_sha256[32];
  int has_admin;
  pd_tenant_counters *counters; /* (cap_counters) by tree tenant id */
  uint32_t cap_counters;
  struct pd_seq *queue_head, *queue_tail; /* admitted to the engine, waiting for the batch */
  int n_queued;
  /* --threads auto (cfg.threads 0): the forward pass's thread count follows what the machine's
   * other work leaves free (pd_cpu_share); cpu_threads is the count in use, for the metrics */
  pd_cpu_share cpu_share;
  atomic_int cpu_threads;
  struct pd_seq *running; /* in the batch */
  int n_running;
  uint64_t reserved_blocks; /* sum of the running sequences' reservations */
  uint32_t rr_tenant;       /* round-robin cursor for admission */
  float *logits;            /* (max_running + draft rows, n_vocab); pinned host memory on the GPU */
  int32_t *gpu_picks;       /* (max_running) tokens of a greedy batch, argmax on the GPU */
  pd_llama_seq *batch;      /* (max_running) */
  uint64_t requests, generated_tokens;
  uint64_t next_arrival;      /* order of Generate/Warm sequences, for preemption's victim */
  uint64_t preemptions;       /* sequences preempted to give a growing one a block */
  uint64_t recomputed_tokens; /* tokens resumed sequences computed again (not found cached) */
  pd_spec_cost spec_cost;     /* the forward pass's time against its rows, for drafts */
  uint64_t spec_draft_tokens[PD_SPEC_SOURCES];    /* draft tokens verified, by source */
  uint64_t spec_accepted_tokens[PD_SPEC_SOURCES]; /* of those, kept: tokens that cost no pass of
                                                     their own */
  pd_engine_stats_window window;
  /* for the metrics endpoint: each finished Generate's queue wait, time to first token and mean
   * time per output token after the first; every client job's final gRPC status */
  pd_engine_histogram hist_queue, hist_ttft, hist_token;
  uint64_t rpc_status[PD_GRPC_STATUSES];
  int64_t start_ms;
  char model_desc[512];
  /* shared between threads */
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pd_job *inbox_head, *inbox_tail;
  pd_job *outbox_head, *outbox_tail;
  atomic_int queue_depth; /* for Stats and admission from the loop thread */
  int stop, draining;
  uint32_t tokenizing; /* jobs handed to the tokenizer thread, not yet back in the inbox */
  /* The tokenizer thread: a Generate, Warm, Tokenize or Lookup whose text is longer than
   * cfg.tokenize_thread_bytes is tokenized there (after authentication), so a long prompt does not
   * hold up every running sequence's next step; it comes back through the inbox. Its queue: */
  pthread_t tk_thread;
  int tk_started, tk_stop;
  pthread_mutex_t tk_mu;
  pthread_cond_t tk_cv;
  pd_job *tk_head, *tk_tail;
  uv_async_t async;
  pd_job_output_fn on_output;
  void *output_user;
};

/* The default of pd_engine_config.tokenize_thread_bytes: a few thousand tokens, about a
 * millisecond of the engine thread's time. */
#define PD_TOKENIZE_THREAD_BYTES 16384

/* Loads the model, sizes the pool and opens the registry. err gets one line. The engine is
 * owned by the caller (pd_engine_destroy). */
int pd_engine_create(const pd_engine_config *cfg, uv_loop_t *loop, pd_job_output_fn on_output,
                     void *user, pd_engine **out, char *err, size_t errlen);
int pd_engine_start(pd_engine *e);
/* Hands a job to the engine (loop thread). The engine owns it until it reports it done. */
void pd_engine_submit(pd_engine *e, pd_job *job);
/* Draining: queued and new sequences are refused (UNAVAILABLE); running ones go on. */
void pd_engine_drain(pd_engine *e);
/* Stops the thread (after every job reported done) and frees everything; the struct itself goes
 * once the loop has closed the async handle (run the loop after this). */
void pd_engine_destroy(pd_engine *e);

/* Loop thread: takes the jobs with new output. The list is the caller's; walk it by
 * ->taken_next. */
pd_job *pd_engine_take_output(pd_engine *e);
/* Loop thread: moves a job's pending stream output out (under the mutex). The caller owns and
 * frees *ids, *text and *logprobs ((n_ids) entries, or NULL when the request asked for none). */
void pd_engine_take_stream(pd_engine *e, pd_job *job, int32_t **ids, uint32_t *n_ids, char **text,
                           size_t *n_text, pd_token_logprob **logprobs, int *done);

/* Engine thread, for call functions: the tree tenant id of a tenant name, or -1. */
int32_t pd_engine_tenant_id(const pd_engine *e, const char *name);
/* Engine thread: the namespace a request uses: "" = the tenant's private one. PD_EPERM for one
 * it was not granted, PD_ENOTFOUND for an unknown one. */
int pd_engine_resolve_ns(const pd_engine *e, int32_t tenant, const char *name, uint32_t *ns);
/* Engine thread: the prompt's tokens (text, ids or chat). *ids is malloc'd (caller frees). err
 * gets the reason of a PD_EINVAL / PD_EUNSUPPORTED / PD_ERANGE. */
int pd_engine_prompt_tokens(const pd_engine *e, const ProtobufCMessage *prompt, int for_generate,
                            int32_t **ids, uint32_t *n, char *err, size_t errlen);
/* Engine thread: the tokens of the prompt of job (Generate, Warm, Tokenize, Lookup): taken from
 * the job when the tokenizer thread did the work, else tokenized now. As
 * pd_engine_prompt_tokens. */
int pd_engine_job_prompt_tokens(const pd_engine *e, pd_job *job, int32_t **ids, uint32_t *n,
                                char *err, size_t errlen);
/* Engine thread: drops every cached block of tenant (or of everyone for -1) from tier (or every
 * tier for -1). Blocks held by running sequences stay. Counts what went per tier. */
int pd_engine_evict(pd_engine *e, int32_t tenant, int tier, uint64_t counts[PD_TIERS]);
/* Engine thread: drops the subtree of node (a prefix): what a running sequence holds stays. */
int pd_engine_evict_prefix(pd_engine *e, uint32_t node, int tier, uint64_t counts[PD_TIERS]);
/* Engine thread: registers a tenant of the registry in the tree. */
int pd_engine_add_tenant(pd_engine *e, const pd_tenant_rec *r, char *err, size_t errlen);
/* Engine thread: monotonic ms, the tree's clock. */
uint64_t pd_engine_now_ms(void);

#endif /* PD_ENGINE_H */
