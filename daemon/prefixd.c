/*
 * prefixd -- the daemon: parses flags and environment, loads the model into the engine, serves
 * gRPC on TCP and/or a Unix socket, and drains on SIGTERM/SIGINT. See `prefixd --help`.
 *
 * Modes: with an admin key (flag, file or environment) tenants authenticate with API keys and
 * are managed through the Admin service; the registry lives in <data-dir>/tenants. With no
 * admin key and no tenants, the daemon serves one tenant ("default") without keys, and only on
 * loopback.
 *
 * Shutdown: the first SIGTERM/SIGINT stops accepting (GOAWAY to clients), refuses queued work,
 * lets running requests finish for up to --drain-timeout seconds, cancels what is left, and
 * exits 0. A second signal cancels at once.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pd_engine.h"
#include "pd_err.h"
#include "pd_log.h"
#include "pd_metrics.h"
#include "pd_openai.h"
#include "pd_service.h"
#include "pd_tls.h"

#define VERSION "0.1.0"

static void usage(FILE *f) {
  fprintf(
      f,
      "usage: prefixd [options]\n"
      "Serves LLM generation over gRPC (prefixd.v1.Prefixd, prefixd.v1.Admin) and reuses\n"
      "cached prompt prefixes. Every option also reads an environment variable (shown);\n"
      "the flag wins.\n"
      "  -m, --model PATH          GGUF model (PREFIXD_MODEL; default\n"
      "                            ~/.cache/prefixd/SmolLM2-135M-Instruct.Q4_1.gguf)\n"
      "  -l, --listen HOST:PORT    TCP address (PREFIXD_LISTEN; default 127.0.0.1:7878;\n"
      "                            'none' for no TCP)\n"
      "      --unix PATH           also listen on a Unix socket (PREFIXD_UNIX; default\n"
      "                            <data-dir>/prefixd.sock, where kvctl looks; 'none': no\n"
      "                            socket)\n"
      "  -d, --data-dir DIR        tenant registry and state (PREFIXD_DATA_DIR; default\n"
      "                            ~/.local/share/prefixd)\n"
      "      --metrics-listen HOST:PORT\n"
      "                            Prometheus /metrics, /healthz and /readyz over HTTP\n"
      "                            (PREFIXD_METRICS_LISTEN; default 127.0.0.1:9464; 'none'\n"
      "                            to disable; no authentication: keep it private)\n"
      "      --openai-listen HOST:PORT\n"
      "                            also serve the OpenAI-compatible HTTP API there\n"
      "                            (/v1/chat/completions, /v1/completions, /v1/models;\n"
      "                            PREFIXD_OPENAI_LISTEN; default none; same API keys)\n"
      "      --tls-cert FILE       serve TLS on --listen and --openai-listen with this PEM\n"
      "                            certificate chain (PREFIXD_TLS_CERT; the Unix socket and\n"
      "                            the metrics endpoint stay plaintext)\n"
      "      --tls-key FILE        its PEM private key (PREFIXD_TLS_KEY); SIGHUP reloads\n"
      "                            both for new connections\n"
      "      --tls-client-ca FILE  also require a client certificate signed by one of these\n"
      "                            PEM CAs (mutual TLS; PREFIXD_TLS_CLIENT_CA)\n"
      "      --admin-key-file F    file holding the admin key (PREFIXD_ADMIN_KEY_FILE)\n"
      "                            (or the key itself in PREFIXD_ADMIN_KEY)\n"
      "      --kv-cache-mb N       KV cache of the device tier in MiB (PREFIXD_KV_CACHE_MB;\n"
      "                            default 1024)\n"
      "      --host-cache-mb N     host RAM tier in MiB; 0 = none (PREFIXD_HOST_CACHE_MB;\n"
      "                            default 1024)\n"
      "      --disk-cache-mb N     disk tier budget in MiB (index and payloads); 0 = none\n"
      "                            (PREFIXD_DISK_CACHE_MB; default 8192)\n"
      "      --disk-dir DIR        the disk tier's directory (PREFIXD_DISK_DIR; default\n"
      "                            <data-dir>/kv)\n"
      "      --disk-sync M         durable (fsync every commit), fast (no meta sync: power\n"
      "                            loss may lose the last commits, never corrupts) or nosync\n"
      "                            (the OS flushes) (PREFIXD_DISK_SYNC; default fast)\n"
      "      --disk-write F        which blocks are written to disk: second-use (on their\n"
      "                            first hit, or warmed or pinned), always, or pinned (only\n"
      "                            warmed or pinned) (PREFIXD_DISK_WRITE; default second-use)\n"
      "      --disk-foreign P      blocks of another model or format in the store: keep\n"
      "                            (never served) or purge (default keep)\n"
      "      --zero-reused-kv B    yes: a device block is zeroed before a sequence of\n"
      "                            another tenant writes into it (PREFIXD_ZERO_REUSED_KV;\n"
      "                            default yes)\n"
      "      --device D            where the forward pass and the device tier run: auto (a\n"
      "                            GPU if this build has CUDA and the driver reports one,\n"
      "                            else the CPU), cpu, or cuda (PREFIXD_DEVICE; auto)\n"
      "      --block-tokens N      tokens per KV block, a power of two (default 16)\n"
      "      --max-batch-tokens N  rows per forward pass (PREFIXD_MAX_BATCH_TOKENS; 256)\n"
      "      --max-running N       sequences batched at once (PREFIXD_MAX_RUNNING; 64)\n"
      "      --max-queue N         waiting requests before RESOURCE_EXHAUSTED (1024)\n"
      "      --max-context N       tokens per sequence (default: the model's)\n"
      "      --kv-admission A      incremental: a request starts when the KV cache holds its\n"
      "                            prompt and one more block, grows a block at a time, and\n"
      "                            the latest arrival is preempted (its blocks kept in the\n"
      "                            prefix cache, resumed from them) when a block is missing;\n"
      "                            full: it starts only once the cache can hold its prompt\n"
      "                            and all of max_tokens (PREFIXD_KV_ADMISSION; incremental)\n"
      "      --cache-dtype T       f16, bf16, f32 or fp8 (fp8-e4m3, a scale per row; default f16)\n"
      "      --speculate N         draft tokens a decoding request may verify per forward pass,\n"
      "                            drafted from what a JSON schema forces next, the prefix cache\n"
      "                            (the same conversation answered before) or its own prompt\n"
      "                            and output; the tokens are the\n"
      "                            same, fewer passes compute them where text repeats; 0 = off;\n"
      "                            CPU backend (PREFIXD_SPECULATE; 8)\n"
      "      --matmul M            fast or exact (default fast)\n"
      "  -t, --threads N           CPU threads (PREFIXD_THREADS; default: auto, the CPUs the\n"
      "                            process may use (affinity, cgroup CPU quota), fewer while\n"
      "                            other processes keep some of them busy)\n"
      "      --tokenize-thread-bytes N\n"
      "                            prompts with more bytes of text are tokenized on a thread\n"
      "                            of their own, not between two forward passes; 0 = none\n"
      "                            (PREFIXD_TOKENIZE_THREAD_BYTES; default 16384)\n"
      "      --drain-timeout S     seconds running requests get at shutdown (default 30)\n"
      "      --log-level L         debug, info, warn, error (PREFIXD_LOG_LEVEL; info)\n"
      "      --log-file F          log to F instead of stderr; SIGHUP reopens it\n"
      "      --log-requests B      yes: an info line for every finished generation and warm\n"
      "                            (tenant, status, token counts, times; never the prompt)\n"
      "                            (PREFIXD_LOG_REQUESTS; default yes)\n"
      "  -h, --help                this text\n"
      "      --version\n");
}

typedef struct daemon_state {
  uv_loop_t *loop;
  pd_grpc_server *server;
  pd_engine *engine;
  pd_service svc;
  pd_metrics *metrics; /* NULL when disabled */
  pd_openai *openai;   /* NULL when disabled */
  uv_signal_t sigterm, sigint, sighup;
  /* TLS (--tls-cert): the files, and each listener's context, replaced on SIGHUP */
  pd_tls_files tls_files;
  pd_tls_server *grpc_tls, *openai_tls; /* NULL where that listener is plaintext or off */
  uv_timer_t drain_timer;
  int64_t drain_started, drain_timeout_ms;
  int cancelled, shutting_down;
} daemon_state;

static void shutdown_now(daemon_state *d) {
  if (d->shutting_down) return;
  d->shutting_down = 1;
  pd_grpc_server_close(d->server);
  pd_metrics_close(d->metrics); /* no metrics job is in the engine (see on_drain_tick) */
  pd_openai_close(d->openai);   /* nor an HTTP request's */
  uv_close((uv_handle_t *)&d->sigterm, NULL);
  uv_close((uv_handle_t *)&d->sigint, NULL);
  uv_close((uv_handle_t *)&d->sighup, NULL);
  uv_close((uv_handle_t *)&d->drain_timer, NULL);
  pd_engine_destroy(d->engine);
  pd_log(PD_LOG_INFO, "stopped", NULL);
}

static void on_drain_tick(uv_timer_t *t) {
  daemon_state *d = t->data;
  /* metrics scrapes are refused from now on; those in the engine come back first */
  if (d->svc.live_jobs == 0 && pd_openai_in_flight(d->openai) == 0 &&
      pd_metrics_quiesce(d->metrics) == 0) {
    shutdown_now(d);
    return;
  }
  if (!d->cancelled && pd_grpc_now_ms() - d->drain_started > d->drain_timeout_ms) {
    pd_log(PD_LOG_WARN, "drain timeout: cancelling requests", "left=%zu", d->svc.live_jobs);
    d->cancelled = 1;
    pd_service_cancel_all(&d->svc);
    pd_openai_cancel_all(d->openai);
  }
}

/* Each TLS listener's context from files, for its ALPN protocol: the gRPC listener's (h2) when
 * want_grpc, the OpenAI API's (http/1.1) when want_openai. At start and on every reload. Returns
 * 0; or nonzero with err set and neither context kept. */
static int tls_contexts(const pd_tls_files *files, int want_grpc, int want_openai,
                        pd_tls_server **grpc, pd_tls_server **openai, char *err, size_t errlen) {
  *grpc = *openai = NULL;
  if ((want_grpc && pd_tls_server_create(files, "h2", grpc, err, errlen)) ||
      (want_openai && pd_tls_server_create(files, "http/1.1", openai, err, errlen))) {
    pd_tls_server_free(*grpc);
    *grpc = NULL;
    return -1;
  }
  return 0;
}

/* SIGHUP: the certificate and key files again (a renewed certificate). New connections get
 * them; open ones keep theirs. Files that fail to load leave the old ones in use. */
static void reload_tls(daemon_state *d) {
  char err[600];
  pd_tls_server *grpc_tls, *openai_tls;
  if (tls_contexts(&d->tls_files, d->grpc_tls != NULL, d->openai_tls != NULL, &grpc_tls,
                   &openai_tls, err, sizeof err)) {
    pd_log(PD_LOG_ERROR, "TLS certificate not reloaded: still serving the one loaded before",
           "err=\"%s\"", err);
    return;
  }
  if (grpc_tls) {
    pd_grpc_server_set_tls(d->server, grpc_tls);
    pd_tls_server_free(d->grpc_tls);
    d->grpc_tls = grpc_tls;
  }
  if (openai_tls) {
    pd_openai_set_tls(d->openai, openai_tls);
    pd_tls_server_free(d->openai_tls);
    d->openai_tls = openai_tls;
  }
  pd_log(PD_LOG_INFO, "TLS certificate reloaded", "cert=%s", d->tls_files.cert);
}

static void on_signal(uv_signal_t *sig, int signum) {
  daemon_state *d = sig->data;
  if (signum == SIGHUP) {
    pd_log_reopen();
    pd_log(PD_LOG_INFO, "log reopened", NULL);
    if (d->tls_files.cert && !d->shutting_down) reload_tls(d);
    return;
  }
  if (d->svc.draining) { /* a second signal: cancel everything now */
    d->cancelled = 1;
    pd_service_cancel_all(&d->svc);
    pd_openai_cancel_all(d->openai);
    return;
  }
  pd_log(PD_LOG_INFO, "draining", "signal=%d in_flight=%zu", signum, d->svc.live_jobs);
  pd_service_drain(&d->svc);
  pd_openai_drain(d->openai);
  pd_metrics_set_ready(d->metrics, 0);
  pd_engine_drain(d->engine);
  pd_grpc_server_stop_listening(d->server);
  d->drain_started = pd_grpc_now_ms();
  uv_timer_start(&d->drain_timer, on_drain_tick, 0, 20);
}

static const char *env_or(const char *name, const char *dflt) {
  const char *v = getenv(name);
  return v && v[0] ? v : dflt;
}

static int parse_int(const char *s, long lo, long hi, long *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || *end || end == s || v < lo || v > hi) return -1;
  *out = v;
  return 0;
}

/* Reads the admin key from a file: the first line, trimmed. */
static int read_key_file(const char *path, char *key, size_t cap) {
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  int ok = fgets(key, (int)cap, f) != NULL;
  fclose(f);
  if (!ok) return -1;
  size_t n = strlen(key);
  while (n > 0 && (key[n - 1] == '\n' || key[n - 1] == '\r' || key[n - 1] == ' ')) key[--n] = 0;
  return n > 0 ? 0 : -1;
}

/* "HOST:PORT" or "[IPv6]:PORT" into host (cap bytes) and port. Returns 0 or -1. */
static int split_hostport(const char *s, char *host, size_t cap, long *port) {
  const char *colon = strrchr(s, ':');
  if (!colon || colon == s || parse_int(colon + 1, 0, 65535, port) || (size_t)(colon - s) >= cap)
    return -1;
  memcpy(host, s, (size_t)(colon - s));
  host[colon - s] = 0;
  if (host[0] == '[') {
    size_t n = strlen(host);
    if (n < 3 || host[n - 1] != ']') return -1;
    memmove(host, host + 1, n - 2);
    host[n - 2] = 0;
  }
  return 0;
}

/* An HTTP listener's "IP:PORT" or "[IPv6]:PORT" (--flag value) into host and port; on a bad one
 * says so and returns -1. */
static int http_address(const char *flag, const char *value, char *host, size_t cap, long *port) {
  struct sockaddr_storage addr;
  if (split_hostport(value, host, cap, port) ||
      (uv_ip4_addr(host, (int)*port, (struct sockaddr_in *)&addr) &&
       uv_ip6_addr(host, (int)*port, (struct sockaddr_in6 *)&addr))) {
    fprintf(stderr, "prefixd: --%s %s: expected IP:PORT, [IPv6]:PORT or none\n", flag, value);
    return -1;
  }
  return 0;
}

static int is_loopback(const char *host) {
  return !strcmp(host, "127.0.0.1") || !strcmp(host, "::1") || !strncmp(host, "127.", 4) ||
         !strcmp(host, "localhost");
}

/* Without API keys (single tenant) nothing is served beyond loopback: when the listener (wanted,
 * on host) would be, says so and returns 1. what names the API before the address ("" for gRPC). */
static int keyless_beyond_loopback(const pd_engine *e, int wanted, const char *host,
                                   const char *what) {
  if (!e->single_tenant || !wanted || is_loopback(host)) return 0;
  fprintf(stderr,
          "prefixd: refusing to serve %s%s without API keys: set an admin key "
          "(--admin-key-file) or listen on loopback\n",
          what, host);
  return 1;
}

static int mkdir_p(const char *path) {
  char buf[4096];
  snprintf(buf, sizeof buf, "%s", path);
  for (char *p = buf + 1; *p; p++)
    if (*p == '/') {
      *p = 0;
      if (mkdir(buf, 0700) && errno != EEXIST) return -1;
      *p = '/';
    }
  return mkdir(buf, 0700) && errno != EEXIST ? -1 : 0;
}

int main(int argc, char **argv) {
  const char *home = getenv("HOME") ? getenv("HOME") : ".";
  char default_model[4096], default_data[4096];
  snprintf(default_model, sizeof default_model, "%s/.cache/prefixd/SmolLM2-135M-Instruct.Q4_1.gguf",
           home);
  snprintf(default_data, sizeof default_data, "%s/.local/share/prefixd", home);
  const char *model = env_or("PREFIXD_MODEL", default_model);
  const char *listen = env_or("PREFIXD_LISTEN", "127.0.0.1:7878");
  const char *metrics_listen = env_or("PREFIXD_METRICS_LISTEN", NULL);
  const char *openai_listen = env_or("PREFIXD_OPENAI_LISTEN", "none");
  const char *unix_path = env_or("PREFIXD_UNIX", NULL);
  const char *data_dir = env_or("PREFIXD_DATA_DIR", default_data);
  const char *admin_key_file = env_or("PREFIXD_ADMIN_KEY_FILE", NULL);
  const char *log_level = env_or("PREFIXD_LOG_LEVEL", "info");
  const char *log_file = env_or("PREFIXD_LOG_FILE", NULL);
  const char *tls_cert = env_or("PREFIXD_TLS_CERT", NULL);
  const char *tls_key = env_or("PREFIXD_TLS_KEY", NULL);
  const char *tls_client_ca = env_or("PREFIXD_TLS_CLIENT_CA", NULL);
  long kv_mb = 1024, host_mb = 1024, disk_mb = 8192, block = 16, batch = 256, running = 64,
       queue = 1024, ctx = 0, threads = 0, drain = 30, tokenize_bytes = PD_TOKENIZE_THREAD_BYTES,
       speculate = PD_SPEC_DEFAULT;
  const char *cache_dtype = "f16", *matmul = "fast";
  const char *disk_dir = env_or("PREFIXD_DISK_DIR", NULL);
  const char *disk_sync = env_or("PREFIXD_DISK_SYNC", "fast");
  const char *disk_write = env_or("PREFIXD_DISK_WRITE", "second-use");
  const char *disk_foreign = "keep";
  const char *zero_reused = env_or("PREFIXD_ZERO_REUSED_KV", "yes");
  const char *device = env_or("PREFIXD_DEVICE", "auto");
  const char *kv_admission = env_or("PREFIXD_KV_ADMISSION", "incremental");
  const char *log_requests = env_or("PREFIXD_LOG_REQUESTS", "yes");
  const char *speculate_always = env_or("PREFIXD_SPECULATE_ALWAYS", "0"); /* tests, benchmarks */
  struct {
    const char *env;
    long *v;
    long lo, hi;
  } env_ints[] = {{"PREFIXD_KV_CACHE_MB", &kv_mb, 1, 1 << 22},
                  {"PREFIXD_HOST_CACHE_MB", &host_mb, 0, 1 << 22},
                  {"PREFIXD_DISK_CACHE_MB", &disk_mb, 0, 1 << 30},
                  {"PREFIXD_MAX_BATCH_TOKENS", &batch, 1, 65536},
                  {"PREFIXD_MAX_RUNNING", &running, 1, 1024},
                  {"PREFIXD_THREADS", &threads, 0, 1024},
                  {"PREFIXD_TOKENIZE_THREAD_BYTES", &tokenize_bytes, 0, 1L << 30},
                  {"PREFIXD_SPECULATE", &speculate, 0, PD_SPEC_DRAFT_MAX}};
  for (size_t i = 0; i < sizeof env_ints / sizeof *env_ints; i++) {
    const char *v = getenv(env_ints[i].env);
    if (v && v[0] && parse_int(v, env_ints[i].lo, env_ints[i].hi, env_ints[i].v)) {
      fprintf(stderr, "prefixd: %s=%s is not a number in [%ld, %ld]\n", env_ints[i].env, v,
              env_ints[i].lo, env_ints[i].hi);
      return 2;
    }
  }
  enum {
    O_UNIX = 256,
    O_ADMIN_KEY_FILE,
    O_KV,
    O_HOST,
    O_DISK,
    O_DISK_DIR,
    O_DISK_SYNC,
    O_DISK_WRITE,
    O_DISK_FOREIGN,
    O_ZERO_REUSED,
    O_ADMISSION,
    O_DEVICE,
    O_BLOCK,
    O_BATCH,
    O_RUNNING,
    O_QUEUE,
    O_CTX,
    O_DTYPE,
    O_MATMUL,
    O_DRAIN,
    O_LEVEL,
    O_LOGFILE,
    O_METRICS,
    O_OPENAI,
    O_TOKENIZE,
    O_TLS_CERT,
    O_TLS_KEY,
    O_LOG_REQUESTS,
    O_TLS_CLIENT_CA,
    O_SPECULATE,
    O_VERSION
  };
  static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                       {"listen", required_argument, 0, 'l'},
                                       {"unix", required_argument, 0, O_UNIX},
                                       {"data-dir", required_argument, 0, 'd'},
                                       {"admin-key-file", required_argument, 0, O_ADMIN_KEY_FILE},
                                       {"kv-cache-mb", required_argument, 0, O_KV},
                                       {"host-cache-mb", required_argument, 0, O_HOST},
                                       {"disk-cache-mb", required_argument, 0, O_DISK},
                                       {"disk-dir", required_argument, 0, O_DISK_DIR},
                                       {"disk-sync", required_argument, 0, O_DISK_SYNC},
                                       {"disk-write", required_argument, 0, O_DISK_WRITE},
                                       {"disk-foreign", required_argument, 0, O_DISK_FOREIGN},
                                       {"zero-reused-kv", required_argument, 0, O_ZERO_REUSED},
                                       {"kv-admission", required_argument, 0, O_ADMISSION},
                                       {"device", required_argument, 0, O_DEVICE},
                                       {"block-tokens", required_argument, 0, O_BLOCK},
                                       {"max-batch-tokens", required_argument, 0, O_BATCH},
                                       {"max-running", required_argument, 0, O_RUNNING},
                                       {"max-queue", required_argument, 0, O_QUEUE},
                                       {"max-context", required_argument, 0, O_CTX},
                                       {"cache-dtype", required_argument, 0, O_DTYPE},
                                       {"matmul", required_argument, 0, O_MATMUL},
                                       {"threads", required_argument, 0, 't'},
                                       {"drain-timeout", required_argument, 0, O_DRAIN},
                                       {"log-level", required_argument, 0, O_LEVEL},
                                       {"log-file", required_argument, 0, O_LOGFILE},
                                       {"metrics-listen", required_argument, 0, O_METRICS},
                                       {"openai-listen", required_argument, 0, O_OPENAI},
                                       {"tokenize-thread-bytes", required_argument, 0, O_TOKENIZE},
                                       {"tls-cert", required_argument, 0, O_TLS_CERT},
                                       {"tls-key", required_argument, 0, O_TLS_KEY},
                                       {"log-requests", required_argument, 0, O_LOG_REQUESTS},
                                       {"speculate", required_argument, 0, O_SPECULATE},
                                       {"tls-client-ca", required_argument, 0, O_TLS_CLIENT_CA},
                                       {"help", no_argument, 0, 'h'},
                                       {"version", no_argument, 0, O_VERSION},
                                       {0, 0, 0, 0}};
  int c;
  while ((c = getopt_long(argc, argv, "m:l:d:t:h", opts, NULL)) != -1) {
    long *target = NULL, lo = 0, hi = 0;
    switch (c) {
    case 'm': model = optarg; break;
    case 'l': listen = optarg; break;
    case O_UNIX: unix_path = optarg; break;
    case 'd': data_dir = optarg; break;
    case O_ADMIN_KEY_FILE: admin_key_file = optarg; break;
    case O_KV: target = &kv_mb, lo = 1, hi = 1 << 22; break;
    case O_HOST: target = &host_mb, lo = 0, hi = 1 << 22; break;
    case O_DISK: target = &disk_mb, lo = 0, hi = 1 << 30; break;
    case O_DISK_DIR: disk_dir = optarg; break;
    case O_DISK_SYNC: disk_sync = optarg; break;
    case O_DISK_WRITE: disk_write = optarg; break;
    case O_DISK_FOREIGN: disk_foreign = optarg; break;
    case O_ZERO_REUSED: zero_reused = optarg; break;
    case O_ADMISSION: kv_admission = optarg; break;
    case O_DEVICE: device = optarg; break;
    case O_BLOCK: target = &block, lo = 1, hi = 256; break;
    case O_BATCH: target = &batch, lo = 1, hi = 65536; break;
    case O_RUNNING: target = &running, lo = 1, hi = 1024; break;
    case O_QUEUE: target = &queue, lo = 1, hi = 1 << 20; break;
    case O_CTX: target = &ctx, lo = 0, hi = 1 << 24; break;
    case 't': target = &threads, lo = 0, hi = 1024; break;
    case O_DRAIN: target = &drain, lo = 0, hi = 86400; break;
    case O_DTYPE: cache_dtype = optarg; break;
    case O_MATMUL: matmul = optarg; break;
    case O_LEVEL: log_level = optarg; break;
    case O_LOGFILE: log_file = optarg; break;
    case O_METRICS: metrics_listen = optarg; break;
    case O_OPENAI: openai_listen = optarg; break;
    case O_TOKENIZE: target = &tokenize_bytes, lo = 0, hi = 1L << 30; break;
    case O_SPECULATE: target = &speculate, lo = 0, hi = PD_SPEC_DRAFT_MAX; break;
    case O_TLS_CERT: tls_cert = optarg; break;
    case O_TLS_KEY: tls_key = optarg; break;
    case O_LOG_REQUESTS: log_requests = optarg; break;
    case O_TLS_CLIENT_CA: tls_client_ca = optarg; break;
    case 'h': usage(stdout); return 0;
    case O_VERSION: printf("prefixd %s\n", VERSION); return 0;
    default: usage(stderr); return 2;
    }
    if (target && parse_int(optarg, lo, hi, target)) {
      fprintf(stderr, "prefixd: --%s %s: expected a number in [%ld, %ld]\n",
              opts[0].name ? "option" : "", optarg, lo, hi);
      return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "prefixd: unexpected argument '%s' (see --help)\n", argv[optind]);
    return 2;
  }
  if (block & (block - 1)) {
    fprintf(stderr, "prefixd: --block-tokens must be a power of two\n");
    return 2;
  }
  enum pd_dtype dtype;
  if (pd_dtype_parse(cache_dtype, &dtype)) {
    fprintf(stderr, "prefixd: --cache-dtype must be f16, bf16, f32 or fp8\n");
    return 2;
  }
  if (strcmp(matmul, "fast") && strcmp(matmul, "exact")) {
    fprintf(stderr, "prefixd: --matmul must be fast or exact\n");
    return 2;
  }
  enum pd_kvstore_durability durability;
  if (!strcmp(disk_sync, "durable"))
    durability = PD_KVSTORE_DURABLE;
  else if (!strcmp(disk_sync, "fast"))
    durability = PD_KVSTORE_FAST;
  else if (!strcmp(disk_sync, "nosync"))
    durability = PD_KVSTORE_NOSYNC;
  else {
    fprintf(stderr, "prefixd: --disk-sync must be durable, fast or nosync\n");
    return 2;
  }
  enum pd_write_filter write_filter;
  if (!strcmp(disk_write, "second-use"))
    write_filter = PD_WRITE_SECOND_USE;
  else if (!strcmp(disk_write, "always"))
    write_filter = PD_WRITE_ALWAYS;
  else if (!strcmp(disk_write, "pinned"))
    write_filter = PD_WRITE_PINNED;
  else {
    fprintf(stderr, "prefixd: --disk-write must be second-use, always or pinned\n");
    return 2;
  }
  enum pd_engine_device engine_device = PD_ENGINE_DEVICE_AUTO;
  if (!strcmp(device, "cpu"))
    engine_device = PD_ENGINE_DEVICE_CPU;
  else if (!strcmp(device, "cuda"))
    engine_device = PD_ENGINE_DEVICE_CUDA;
  else if (strcmp(device, "auto")) {
    fprintf(stderr, "prefixd: --device must be auto, cpu or cuda\n");
    return 2;
  }
  if (strcmp(kv_admission, "incremental") && strcmp(kv_admission, "full")) {
    fprintf(stderr, "prefixd: --kv-admission must be incremental or full\n");
    return 2;
  }
  if (strcmp(log_requests, "yes") && strcmp(log_requests, "no")) {
    fprintf(stderr, "prefixd: --log-requests must be yes or no\n");
    return 2;
  }
  if (strcmp(zero_reused, "yes") && strcmp(zero_reused, "no")) {
    fprintf(stderr, "prefixd: --zero-reused-kv must be yes or no\n");
    return 2;
  }
  if (strcmp(disk_foreign, "keep") && strcmp(disk_foreign, "purge")) {
    fprintf(stderr, "prefixd: --disk-foreign must be keep or purge\n");
    return 2;
  }
  enum pd_log_level level;
  if (pd_log_parse_level(log_level, &level)) {
    fprintf(stderr, "prefixd: --log-level must be debug, info, warn or error\n");
    return 2;
  }
  pd_log_set_level(level);
  if (log_file && pd_log_open(log_file)) {
    fprintf(stderr, "prefixd: cannot open the log file %s\n", log_file);
    return 1;
  }
  /* the admin key: file, then environment */
  char admin_key[256] = "";
  if (admin_key_file && read_key_file(admin_key_file, admin_key, sizeof admin_key)) {
    fprintf(stderr, "prefixd: cannot read an admin key from %s\n", admin_key_file);
    return 2;
  }
  if (!admin_key[0] && getenv("PREFIXD_ADMIN_KEY"))
    snprintf(admin_key, sizeof admin_key, "%s", getenv("PREFIXD_ADMIN_KEY"));
  if (admin_key[0] && strlen(admin_key) < 16) {
    fprintf(stderr, "prefixd: the admin key must be at least 16 characters\n");
    return 2;
  }
  /* the TCP address */
  char host[256] = "";
  long port = 0;
  int want_tcp = strcmp(listen, "none") != 0;
  if (want_tcp) {
    const char *colon = strrchr(listen, ':');
    if (!colon || colon == listen || parse_int(colon + 1, 0, 65535, &port) ||
        (size_t)(colon - listen) >= sizeof host) {
      fprintf(stderr, "prefixd: --listen %s: expected HOST:PORT\n", listen);
      return 2;
    }
    memcpy(host, listen, (size_t)(colon - listen));
    if (host[0] == '[') { /* [::1]:port */
      memmove(host, host + 1, strlen(host));
      host[strlen(host) - 1] = 0;
    }
  }
  /* the metrics address: a default that is taken is only a warning at start */
  int metrics_is_default = !metrics_listen;
  if (!metrics_listen) metrics_listen = "127.0.0.1:9464";
  char metrics_host[256] = "", openai_host[256] = "";
  long metrics_port = 0, openai_port = 0;
  int want_metrics = strcmp(metrics_listen, "none") != 0;
  int want_openai = strcmp(openai_listen, "none") != 0;
  if ((want_metrics && http_address("metrics-listen", metrics_listen, metrics_host,
                                    sizeof metrics_host, &metrics_port)) ||
      (want_openai &&
       http_address("openai-listen", openai_listen, openai_host, sizeof openai_host, &openai_port)))
    return 2;
  /* TLS on the gRPC and OpenAI listeners: both files or neither, checked before the model loads.
   * Each listener has its own context, for its ALPN protocol; freed after the loop. */
  pd_tls_server *grpc_tls = NULL, *openai_tls = NULL;
  if (!tls_cert != !tls_key) {
    fprintf(stderr, "prefixd: --tls-cert and --tls-key go together (give both, or neither)\n");
    return 2;
  }
  if (tls_client_ca && !tls_cert) {
    fprintf(stderr, "prefixd: --tls-client-ca needs --tls-cert and --tls-key\n");
    return 2;
  }
  pd_tls_files tls_files = {.cert = tls_cert, .key = tls_key, .client_ca = tls_client_ca};
  if (tls_cert) {
    char tls_err[600];
    if (!want_tcp && !want_openai) {
      fprintf(stderr, "prefixd: --tls-cert: no TCP listener to serve TLS on (--listen none and "
                      "no --openai-listen)\n");
      return 2;
    }
    if (tls_contexts(&tls_files, want_tcp, want_openai, &grpc_tls, &openai_tls, tls_err,
                     sizeof tls_err)) {
      fprintf(stderr, "prefixd: %s\n", tls_err);
      return 2;
    }
  }
  char default_unix[4200];
  snprintf(default_unix, sizeof default_unix, "%s/prefixd.sock", data_dir);
  int unix_is_default = !unix_path;
  if (!unix_path) unix_path = default_unix;
  if (!strcmp(unix_path, "none")) unix_path = NULL;
  if (!want_tcp && !unix_path) {
    fprintf(stderr, "prefixd: nothing to listen on (--listen none and no --unix)\n");
    return 2;
  }
  if (mkdir_p(data_dir)) {
    fprintf(stderr, "prefixd: cannot create the data directory %s: %s\n", data_dir,
            strerror(errno));
    return 1;
  }
  /* one daemon per data directory: the tree, the registry and the store are its alone */
  char lock_path[4200];
  snprintf(lock_path, sizeof lock_path, "%s/prefixd.lock", data_dir);
  int lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd < 0 || flock(lock_fd, LOCK_EX | LOCK_NB)) {
    fprintf(stderr, "prefixd: another prefixd is using the data directory %s\n", data_dir);
    return 1;
  }
  char tenants_path[4200];
  snprintf(tenants_path, sizeof tenants_path, "%s/tenants", data_dir);
  char default_disk_dir[4200];
  snprintf(default_disk_dir, sizeof default_disk_dir, "%s/kv", data_dir);
  if (!disk_dir) disk_dir = default_disk_dir;
  if (disk_mb > 0 && mkdir_p(disk_dir)) {
    fprintf(stderr, "prefixd: cannot create the disk tier's directory %s: %s\n", disk_dir,
            strerror(errno));
    return 1;
  }

  daemon_state d = {.tls_files = tls_files, .grpc_tls = grpc_tls, .openai_tls = openai_tls};
  d.loop = uv_default_loop();
  d.drain_timeout_ms = drain * 1000;
  pd_engine_config cfg = {.model_path = model,
                          .block_tokens = (uint32_t)block,
                          .kv_cache_bytes = (uint64_t)kv_mb << 20,
                          .host_cache_bytes = (uint64_t)host_mb << 20,
                          .disk_dir = disk_mb > 0 ? disk_dir : NULL,
                          .disk_cache_bytes = (uint64_t)disk_mb << 20,
                          .disk_durability = durability,
                          .disk_foreign = strcmp(disk_foreign, "purge") ? PD_KVSTORE_FOREIGN_KEEP
                                                                        : PD_KVSTORE_FOREIGN_PURGE,
                          .disk_write_filter = write_filter,
                          .zero_reused_kv = !strcmp(zero_reused, "yes"),
                          .kv_admission =
                              strcmp(kv_admission, "full") ? PD_ADMIT_INCREMENTAL : PD_ADMIT_FULL,
                          .device = engine_device,
                          .max_batch_tokens = (int)batch,
                          .max_running = (int)running,
                          .max_queue = (int)queue,
                          .max_context = (int)ctx,
                          .cache_dtype = dtype,
                          .mode = strcmp(matmul, "exact") ? PD_MATMUL_FAST : PD_MATMUL_EXACT,
                          .tenants_path = tenants_path,
                          .admin_key = admin_key[0] ? admin_key : NULL,
                          .threads = (int)threads,
                          .tokenize_thread_bytes = (size_t)tokenize_bytes,
                          .log_requests = !strcmp(log_requests, "yes"),
                          .speculate = (int)speculate,
                          .speculate_always = !strcmp(speculate_always, "1")};
  char err[512];
  int64_t t0 = pd_grpc_now_ms();
  if (access(model, R_OK)) {
    fprintf(stderr,
            "prefixd: cannot read the model %s (run scripts/setup to fetch the default, "
            "or pass --model)\n",
            model);
    return 1;
  }
  int rc = pd_engine_create(&cfg, d.loop, pd_service_output, &d.svc, &d.engine, err, sizeof err);
  if (rc) {
    fprintf(stderr, "prefixd: %s\n", err);
    return 1;
  }
  if (keyless_beyond_loopback(d.engine, want_tcp, host, "") ||
      keyless_beyond_loopback(d.engine, want_openai, openai_host, "the OpenAI API on "))
    return 2;
  if ((rc = pd_grpc_server_create(d.loop, &d.server)) ||
      (rc = pd_service_register(&d.svc, d.server, d.engine))) {
    fprintf(stderr, "prefixd: cannot set up the server: %s\n", pd_strerror(rc));
    return 1;
  }
  d.engine->output_user = &d.svc;
  int bound = 0;
  if (want_tcp && (rc = pd_grpc_server_listen_tcp(d.server, host, (int)port, d.grpc_tls, &bound))) {
    fprintf(stderr, "prefixd: cannot listen on %s: %s\n", listen,
            rc == PD_EEXIST ? "address in use" : pd_strerror(rc));
    return 1;
  }
  if (unix_path && (rc = pd_grpc_server_listen_unix(d.server, unix_path))) {
    if (!unix_is_default || !want_tcp) {
      fprintf(stderr, "prefixd: cannot listen on unix:%s: %s\n", unix_path, pd_strerror(rc));
      return 1;
    }
    pd_log(PD_LOG_WARN, "no Unix socket (the path is too long or not writable): TCP only",
           "path=%s", unix_path);
    unix_path = NULL;
  }
  if ((rc = pd_engine_start(d.engine))) {
    fprintf(stderr, "prefixd: cannot start the engine thread\n");
    return 1;
  }
  int metrics_bound = 0;
  if (want_metrics) {
    if ((rc = pd_metrics_create(d.loop, d.engine, &d.metrics)) ||
        (rc = pd_metrics_listen(d.metrics, metrics_host, (int)metrics_port, &metrics_bound))) {
      if (!metrics_is_default) {
        fprintf(stderr, "prefixd: cannot serve metrics on %s: %s\n", metrics_listen,
                rc == PD_EEXIST ? "address in use" : pd_strerror(rc));
        return 1;
      }
      pd_log(PD_LOG_WARN, "no metrics endpoint (the default address is taken)",
             "addr=%s err=\"%s\"", metrics_listen,
             rc == PD_EEXIST ? "address in use" : pd_strerror(rc));
      pd_metrics_close(d.metrics);
      d.metrics = NULL;
      want_metrics = 0;
    } else {
      pd_metrics_set_ready(d.metrics, 1);
    }
  }
  int openai_bound = 0;
  if (want_openai) {
    /* the model's name in answers: its file name without the extension */
    char model_id[256];
    const char *base = strrchr(model, '/') ? strrchr(model, '/') + 1 : model;
    snprintf(model_id, sizeof model_id, "%.200s", base);
    char *ext = strrchr(model_id, '.');
    if (ext && !strcmp(ext, ".gguf")) *ext = 0;
    if ((rc = pd_openai_create(d.loop, d.engine, model_id, &d.openai)) ||
        (rc = pd_openai_listen(d.openai, openai_host, (int)openai_port, d.openai_tls,
                               &openai_bound))) {
      fprintf(stderr, "prefixd: cannot serve the OpenAI API on %s: %s\n", openai_listen,
              rc == PD_EEXIST ? "address in use" : pd_strerror(rc));
      return 1;
    }
  }
  uv_signal_init(d.loop, &d.sigterm);
  uv_signal_init(d.loop, &d.sigint);
  uv_signal_init(d.loop, &d.sighup);
  uv_timer_init(d.loop, &d.drain_timer);
  d.sigterm.data = d.sigint.data = d.sighup.data = d.drain_timer.data = &d;
  uv_signal_start(&d.sigterm, on_signal, SIGTERM);
  uv_signal_start(&d.sigint, on_signal, SIGINT);
  uv_signal_start(&d.sighup, on_signal, SIGHUP);
  signal(SIGPIPE, SIG_IGN);

  /* --threads N, or auto: the CPUs the process may use (fewer while others keep them busy) */
  int n_threads = atomic_load(&d.engine->cpu_threads);
  const pd_engine *e = d.engine;
  char addr_text[300] = "none", metrics_text[300] = "none", openai_text[300] = "none";
  if (want_tcp) snprintf(addr_text, sizeof addr_text, "%s:%d", host, bound);
  if (want_metrics)
    snprintf(metrics_text, sizeof metrics_text, "%s:%d", metrics_host, metrics_bound);
  if (want_openai) snprintf(openai_text, sizeof openai_text, "%s:%d", openai_host, openai_bound);
  /* how the disk tier reaches the disk: O_DIRECT, or the page cache where the file system
   * refuses O_DIRECT (then spills run at writeback's pace) */
  pd_kvstore_counters disk_counters;
  const char *disk_io = "none";
  if (e->tiers && pd_tiers_disk_stats(e->tiers, &disk_counters, NULL, NULL, NULL) == PD_OK)
    disk_io = disk_counters.direct_io ? "direct" : "page-cache";
  pd_log(PD_LOG_INFO, "prefixd ready",
         "version=%s model=\"%s\" backend=\"%s\" threads=%d device_tier_blocks=%u "
         "device_tier_mib=%.0f block_tokens=%ld cache_dtype=%s kv_bytes_per_token=%zu "
         "host_tier_blocks=%u "
         "host_tier_mib=%ld disk_tier_blocks=%u disk_tier_mib=%ld disk_dir=%s "
         "disk_blocks_indexed=%llu disk_io=%s "
         "addr=%s unix=%s metrics=%s openai=%s tls=%s mode=%s tenants=%u load_ms=%lld port=%d "
         "metrics_port=%d openai_port=%d",
         VERSION, e->model_desc, e->backend, n_threads, e->n_blocks,
         (double)e->n_blocks * (double)e->block_bytes / 1048576.0, block, pd_dtype_name(dtype),
         e->block_bytes / (size_t)block, e->tree.cfg.tier_capacity[1], host_mb,
         e->tree.cfg.tier_capacity[2], disk_mb, disk_mb > 0 ? disk_dir : "none",
         (unsigned long long)e->rebuilt_blocks, disk_io, addr_text, unix_path ? unix_path : "none",
         metrics_text, openai_text,
         tls_client_ca ? "mutual"
         : tls_cert    ? "on"
                       : "off",
         e->single_tenant ? "single-tenant (no API keys, loopback only)" : "multi-tenant",
         e->db.n_recs, (long long)(pd_grpc_now_ms() - t0), bound, metrics_bound, openai_bound);
  uv_run(d.loop, UV_RUN_DEFAULT);
  uv_loop_close(d.loop);
  pd_tls_server_free(d.grpc_tls); /* every connection is closed and freed by now */
  pd_tls_server_free(d.openai_tls);
  return 0;
}
