/*
 * test_daemon_gpu.c -- the daemon on a GPU (label gpu): the two-session shared-prompt scenario
 * served by the CUDA forward pass over a KV pool in GPU memory, on a synthetic model of the
 * default model's shape (PD_CUDA_MODEL: prefixd-mkgguf --like smollm2-135m, 8 layers), driven
 * through the C client (no Python needed on the GPU machine).
 *
 * One daemon with --device cuda --matmul exact --cache-dtype f32 (f32 weights and KV: the GPU
 * computes what the CPU does up to summation order):
 *   1. it says it runs on the GPU (backend="cuda:...").
 *   2. session 1 computes a 300-token system prompt plus its own turn; session 2 (another turn
 *      after the same system prompt) gets the prompt's 18 full blocks from the device tier.
 *   3. each session's 16 greedy tokens equal the same request with no_cache, and equal what a
 *      CPU daemon (--device cpu, same settings) generates.
 *   4. after a restart, the system prompt (written through to disk by a Warm) comes back from
 *      disk into GPU memory through the staging buffer and gives the same tokens.
 * And one with --cache-dtype fp8 (e4m3 with a scale per row): session 2 again takes the system
 * prompt from the device tier, and after a restart from disk, with the same tokens both times
 * (the restored bytes are the stored ones, and the batch is the same).
 * Exits 77 (skipped) when prefixd --device cuda finds no GPU. PD_DAEMON_GPU_TEST_DEVICE=cpu runs
 * the same steps with the "GPU" daemon on the CPU, to check the test itself where there is none.
 */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pd_check.h"
#include "pd_client.h"
#include "pd_gpu_required.h"
#include "pd_err.h"

#define N_SYSTEM 300
#define N_USER   24
#define N_GEN    16

static char base_dir[64];
static int no_gpu;
static pid_t started[8]; /* every daemon started, killed at exit if a failed check left it */
static int n_started;

typedef struct daemon_proc {
  pid_t pid;
  char addr[64], dir[128], log[160];
} daemon_proc;

/* Starts prefixd on device in dir with the given KV cache dtype; 0 when ready, 77 when --device
 * cuda finds no GPU. */
static int start_with(daemon_proc *d, const char *device, const char *sub, const char *cache) {
  snprintf(d->dir, sizeof d->dir, "%s/%s", base_dir, sub);
  mkdir(d->dir, 0700);
  snprintf(d->log, sizeof d->log, "%s/log", d->dir);
  unlink(d->log); /* a restart: the last run's ready line must not be read as this one's */
  d->pid = fork();
  if (d->pid == 0) {
    if (!freopen(d->log, "w", stderr)) _exit(126);
    execl(getenv("PREFIXD_BIN"), "prefixd", "--model", getenv("PD_CUDA_MODEL"), "--listen",
          "127.0.0.1:0", "--data-dir", d->dir, "--device", device, "--matmul", "exact",
          "--cache-dtype", cache, "--kv-cache-mb", "256", "--host-cache-mb", "64",
          "--disk-cache-mb", "256", "--metrics-listen", "none", (char *)NULL);
    _exit(127);
  }
  if (n_started < 8) started[n_started++] = d->pid;
  for (int i = 0; i < 1200; i++) {
    FILE *f = fopen(d->log, "r");
    char line[4096];
    while (f && fgets(line, sizeof line, f)) {
      const char *p = strstr(line, " port=");
      if (strstr(line, "prefixd ready") && p && strchr(p, '\n')) { /* a whole line */
        snprintf(d->addr, sizeof d->addr, "127.0.0.1:%d", atoi(p + 6));
        ck_assert_msg(strcmp(device, "cuda") || strstr(line, "backend=\"cuda:"), "%s", line);
        fclose(f);
        return 0;
      }
      if (strstr(line, "no GPU found")) {
        fclose(f);
        waitpid(d->pid, NULL, 0);
        d->pid = 0;
        return 77;
      }
    }
    if (f) fclose(f);
    int status;
    if (waitpid(d->pid, &status, WNOHANG) == d->pid) {
      d->pid = 0;
      ck_abort_msg("prefixd exited at start; see %s", d->log);
    }
    usleep(50000);
  }
  ck_abort_msg("prefixd did not start; see %s", d->log);
  return 1;
}

static int start(daemon_proc *d, const char *device, const char *sub) {
  return start_with(d, device, sub, "f32");
}

static void stop(daemon_proc *d) {
  int status = -1;
  if (d->pid > 0) {
    kill(d->pid, SIGTERM);
    waitpid(d->pid, &status, 0);
    d->pid = 0;
  }
  ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "prefixd exit status %d", status);
}

typedef struct result {
  int32_t tokens[N_GEN];
  size_t n;
  uint32_t cached, cached_device, cached_disk;
} result;

static int collect(const Prefixd__V1__GenerateResponse *m, void *user) {
  result *r = user;
  for (size_t i = 0; i < m->n_token_ids && r->n < N_GEN; i++) r->tokens[r->n++] = m->token_ids[i];
  if (m->usage) {
    r->cached = m->usage->cached_tokens;
    if (m->usage->cached_tokens_by_tier) {
      r->cached_device = (uint32_t)m->usage->cached_tokens_by_tier->device;
      r->cached_disk = (uint32_t)m->usage->cached_tokens_by_tier->disk;
    }
  }
  return 0;
}

static result greedy(const daemon_proc *d, const int32_t *ids, size_t n, int no_cache) {
  pd_client *c;
  int crc = pd_client_connect(d->addr, NULL, &c);
  ck_assert_msg(crc == 0, "connect %s: %d", d->addr, crc);
  pd_client_set_timeout_ms(c, 300000);
  Prefixd__V1__TokenIds tok = PREFIXD__V1__TOKEN_IDS__INIT;
  tok.n_ids = n;
  tok.ids = (int32_t *)ids;
  Prefixd__V1__Prompt prompt = PREFIXD__V1__PROMPT__INIT;
  prompt.kind_case = PREFIXD__V1__PROMPT__KIND_TOKENS;
  prompt.tokens = &tok;
  Prefixd__V1__SamplingParams sp = PREFIXD__V1__SAMPLING_PARAMS__INIT;
  sp.ignore_eos = 1;
  Prefixd__V1__CacheOptions co = PREFIXD__V1__CACHE_OPTIONS__INIT;
  co.no_cache = no_cache;
  Prefixd__V1__GenerateRequest req = PREFIXD__V1__GENERATE_REQUEST__INIT;
  req.prompt = &prompt;
  req.max_tokens = N_GEN;
  req.sampling = &sp;
  req.cache = &co;
  result r = {{0}, 0, 0, 0, 0};
  int rc = pd_client_generate(c, &req, collect, &r);
  ck_assert_msg(rc == 0 && pd_client_status(c) == 0, "Generate: rc %d status %d %s", rc,
                pd_client_status(c), pd_client_message(c));
  pd_client_close(c);
  ck_assert_uint_eq(r.n, N_GEN);
  return r;
}

static void warm(const daemon_proc *d, const int32_t *ids, size_t n) {
  pd_client *c;
  ck_assert_int_eq(pd_client_connect(d->addr, NULL, &c), 0);
  Prefixd__V1__TokenIds tok = PREFIXD__V1__TOKEN_IDS__INIT;
  tok.n_ids = n;
  tok.ids = (int32_t *)ids;
  Prefixd__V1__Prompt prompt = PREFIXD__V1__PROMPT__INIT;
  prompt.kind_case = PREFIXD__V1__PROMPT__KIND_TOKENS;
  prompt.tokens = &tok;
  Prefixd__V1__WarmRequest req = PREFIXD__V1__WARM_REQUEST__INIT;
  req.prompt = &prompt;
  Prefixd__V1__WarmResponse *resp = NULL;
  ck_assert_int_eq(pd_client_warm(c, &req, &resp), 0);
  protobuf_c_message_free_unpacked(&resp->base, NULL);
  pd_client_close(c);
}

static void same_tokens(const result *a, const result *b, const char *what) {
  for (size_t i = 0; i < N_GEN; i++)
    ck_assert_msg(a->tokens[i] == b->tokens[i], "%s: token %zu differs (%d vs %d)", what, i,
                  a->tokens[i], b->tokens[i]);
}

/* Two prompts that share N_SYSTEM tokens, each N_SYSTEM + N_USER long. */
static void make_prompts(int32_t prompts[2][N_SYSTEM + N_USER]) {
  uint64_t rng = 5;
  for (int i = 0; i < N_SYSTEM + 2 * N_USER; i++) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    int32_t tok = 10 + (int32_t)((rng >> 33) % 40000);
    if (i < N_SYSTEM)
      prompts[0][i] = prompts[1][i] = tok;
    else
      prompts[(i - N_SYSTEM) / N_USER][N_SYSTEM + (i - N_SYSTEM) % N_USER] = tok;
  }
}

static const char *device_under_test(void) {
  return getenv("PD_DAEMON_GPU_TEST_DEVICE") ? getenv("PD_DAEMON_GPU_TEST_DEVICE") : "cuda";
}

/* Session 1 computes everything; session 2 takes the system prompt's 18 full blocks from the
 * device tier. */
static void two_sessions(const daemon_proc *d, int32_t prompts[2][N_SYSTEM + N_USER], result *s1,
                         result *s2) {
  *s1 = greedy(d, prompts[0], N_SYSTEM + N_USER, 0);
  *s2 = greedy(d, prompts[1], N_SYSTEM + N_USER, 0);
  ck_assert_uint_eq(s1->cached, 0);
  ck_assert_uint_ge(s2->cached, 288);
  ck_assert_uint_eq(s2->cached_device, s2->cached);
}

START_TEST(two_sessions_share_a_system_prompt_on_the_gpu) {
  int32_t prompts[2][N_SYSTEM + N_USER];
  make_prompts(prompts);
  size_t n = N_SYSTEM + N_USER;
  daemon_proc gpu = {0}, cpu = {0};
  const char *dev = device_under_test();
  if (start(&gpu, dev, "gpu") == 77) {
    no_gpu = 1;
    return;
  }
  result s1, s2;
  two_sessions(&gpu, prompts, &s1, &s2);
  result r1 = greedy(&gpu, prompts[0], n, 1), r2 = greedy(&gpu, prompts[1], n, 1);
  same_tokens(&s1, &r1, "session 1, cached vs computed on the GPU");
  same_tokens(&s2, &r2, "session 2, cached vs computed on the GPU");
  warm(&gpu, prompts[0], N_SYSTEM);
  stop(&gpu);

  ck_assert_int_eq(start(&cpu, "cpu", "cpu"), 0);
  result c1 = greedy(&cpu, prompts[0], n, 1), c2 = greedy(&cpu, prompts[1], n, 1);
  stop(&cpu);
  same_tokens(&s1, &c1, "session 1, GPU vs CPU");
  same_tokens(&s2, &c2, "session 2, GPU vs CPU");

  ck_assert_int_eq(start(&gpu, dev, "gpu"), 0);
  result s3 = greedy(&gpu, prompts[1], n, 0);
  ck_assert_uint_ge(s3.cached_disk, 288);
  same_tokens(&s3, &s2, "session 2 after a restart, from disk");
  stop(&gpu);
}
END_TEST

START_TEST(fp8_cache_serves_and_restores_on_the_gpu) {
  if (no_gpu) return;
  int32_t prompts[2][N_SYSTEM + N_USER];
  make_prompts(prompts);
  size_t n = N_SYSTEM + N_USER;
  daemon_proc gpu = {0};
  if (start_with(&gpu, device_under_test(), "gpu-fp8", "fp8") == 77) {
    no_gpu = 1;
    return;
  }
  result s1, s2;
  two_sessions(&gpu, prompts, &s1, &s2);
  warm(&gpu, prompts[0], N_SYSTEM);
  stop(&gpu);
  ck_assert_int_eq(start_with(&gpu, device_under_test(), "gpu-fp8", "fp8"), 0);
  result s3 = greedy(&gpu, prompts[1], n, 0);
  ck_assert_uint_ge(s3.cached_disk, 288);
  same_tokens(&s3, &s2, "fp8: session 2 after a restart, from disk");
  stop(&gpu);
}
END_TEST

int main(void) {
  snprintf(base_dir, sizeof base_dir, "/tmp/pd_gpu_XXXXXX");
  if (!mkdtemp(base_dir)) return 1;
  Suite *s = suite_create("daemon_gpu");
  TCase *tc = tcase_create("gpu");
  tcase_set_timeout(tc, 900);
  tcase_add_test(tc, two_sessions_share_a_system_prompt_on_the_gpu);
  tcase_add_test(tc, fp8_cache_serves_and_restores_on_the_gpu);
  suite_add_tcase(s, tc);
  int rc = pd_check_run(s, 0);
  for (int i = 0; i < n_started; i++)
    if (kill(started[i], SIGKILL) == 0) waitpid(started[i], NULL, 0);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", base_dir);
  if (system(cmd)) { /* leftovers in /tmp only */
  }
  if (rc == 0 && no_gpu) {
    if (pd_gpu_required()) {
      printf("FAILED: prefixd --device cuda found no GPU and PD_REQUIRE_GPU is set\n");
      return 1;
    }
    printf("SKIPPED: no GPU (prefixd --device cuda found none)\n");
    return 77;
  }
  return rc;
}
