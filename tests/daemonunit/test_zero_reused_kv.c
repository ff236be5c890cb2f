/*
 * test_zero_reused_kv.c -- --zero-reused-kv observed in the device pool's bytes.
 *
 * The engine runs in-process (pd_engine_create, its own thread, a libuv loop for its output) on
 * the tiny synthetic model with a device tier of 8 blocks, no host tier and no disk tier, so a
 * block that leaves the device tier is dropped and its slot is free for anyone. Two tenants:
 *
 *   1. alpha warms 7 full blocks (slots 0..6) and then 1 more (slot 7): every slot now holds
 *      alpha's K and V in all 16 rows. The pool being full, the engine demotes alpha's least
 *      recently used block (with no colder tier: drops it) to keep a slot free.
 *   2. a call on the engine thread copies the whole pool and checks every slot was written for
 *      alpha (slot_owner), so whatever slot beta gets next held alpha's bytes;
 *   3. beta generates from a 5-token prompt: one block, rows 0..4 written by beta's prefill;
 *      rows 5..15 beta never writes;
 *   4. a call finds beta's block in the tree (its partial block is published at the end) and
 *      copies its slot.
 *
 * With the option on, rows 5..15 of every (layer, K/V, kv head) of beta's block must be zero;
 * with it off they must still be alpha's bytes from step 2, and those bytes must not be zero --
 * which proves the test can tell the two apart (were alpha's rows zero, or beta's slot never
 * alpha's, both runs would look alike: that fails too). Rows 0..4 must be beta's own (not zero)
 * in both. Case 2 evicts explicitly (pd_engine_evict of alpha's blocks, as the Evict RPC does)
 * instead of by pressure.
 *
 * The engine is driven through its public interface only: jobs submitted as the gRPC service
 * does (pd_engine_submit, output through the uv_async), and PD_JOB_CALL jobs whose body (run on
 * the engine thread between two steps, like every RPC body) reads the tree, and the pool's bytes
 * through the pool's own copy-out (pd_devpool_download), never by dereferencing it. The engine
 * is the CPU one (--device cpu); the GPU pool zeroes through pd_devpool_zero, the same call.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "pd_check.h"
#include "pd_dtype.h"
#include "pd_engine.h"
#include "pd_err.h"
#include "prefixd/v1/prefixd.pb-c.h"

#define N_BLOCKS  8
#define B_TOKENS  16
#define BETA_ROWS 5
#define ADMIN_KEY "zero-reused-kv-admin-key"

typedef struct ctx {
  uv_loop_t loop;
  pd_engine *e;
  char key_alpha[PD_API_KEY_LEN + 1], key_beta[PD_API_KEY_LEN + 1];
  int32_t alpha, beta;
  /* filled by the engine-thread calls */
  uint8_t *snapshot;   /* (N_BLOCKS * block_bytes) the pool after alpha's requests */
  int all_alpha;       /* every slot's owner was alpha when the snapshot was taken */
  uint8_t *beta_block; /* (block_bytes) beta's block */
  uint32_t beta_slot;  /* its slot */
  int beta_nodes;      /* device blocks of beta in the tree */
  int evict_alpha;     /* case 2: the snapshot call also evicts alpha's blocks */
  int read_rc;         /* of the last pd_devpool_download */
} ctx;

static ctx C;

static void on_output(pd_job *unused, void *user) {
  ctx *c = user;
  pd_job *list = pd_engine_take_output(c->e);
  for (pd_job *j = list, *next; j; j = next) {
    next = j->taken_next;
    int32_t *ids;
    uint32_t n_ids;
    char *text;
    size_t n_text;
    int done;
    pd_token_logprob *lps;
    pd_engine_take_stream(c->e, j, &ids, &n_ids, &text, &n_text, &lps, &done);
    free(ids);
    free(text);
    free(lps);
  }
}

/* Submits a job and runs the loop until the engine reports it done. Returns its gRPC status. */
static int run_job(pd_job *job) {
  atomic_init(&job->cancelled, 0);
  job->arrival_ms = pd_grpc_now_ms();
  pd_engine_submit(C.e, job);
  for (;;) {
    pthread_mutex_lock(&C.e->mu);
    int done = job->done && !job->in_outbox;
    pthread_mutex_unlock(&C.e->mu);
    if (done) break;
    uv_run(&C.loop, UV_RUN_ONCE);
  }
  int status = job->status;
  if (status) fprintf(stderr, "job failed: %d %s\n", status, job->message);
  pd_job_free(job);
  return status;
}

static int32_t *prompt_ids(int n, int seed) {
  int32_t *ids = malloc((size_t)n * sizeof *ids);
  int vocab = C.e->model->n_vocab;
  for (int i = 0; i < n; i++)
    ids[i] = 3 + (int32_t)(((uint32_t)seed * 7919u + (uint32_t)i * 131u) % (uint32_t)(vocab - 3));
  return ids;
}

/* A Warm (max_tokens < 0) or a greedy Generate of n prompt tokens for the tenant's key. */
static int request(const char *key, int n, int seed, int max_tokens) {
  int32_t *ids = prompt_ids(n, seed);
  Prefixd__V1__TokenIds t = PREFIXD__V1__TOKEN_IDS__INIT;
  t.ids = ids;
  t.n_ids = (size_t)n;
  Prefixd__V1__Prompt p = PREFIXD__V1__PROMPT__INIT;
  p.kind_case = PREFIXD__V1__PROMPT__KIND_TOKENS;
  p.tokens = &t;
  Prefixd__V1__WarmRequest w = PREFIXD__V1__WARM_REQUEST__INIT;
  Prefixd__V1__GenerateRequest g = PREFIXD__V1__GENERATE_REQUEST__INIT;
  pd_job *job = calloc(1, sizeof *job);
  ck_assert_ptr_nonnull(job);
  snprintf(job->authorization, sizeof job->authorization, "%s", key);
  if (max_tokens < 0) {
    w.prompt = &p;
    job->kind = PD_JOB_WARM;
    job->req = &w.base;
  } else {
    g.prompt = &p;
    g.max_tokens = (uint32_t)max_tokens;
    job->kind = PD_JOB_GENERATE;
    job->req = &g.base;
  }
  int status = run_job(job);
  free(ids);
  return status;
}

/* Engine thread: the pool after alpha's requests; case 2 evicts alpha's blocks after the copy. */
static void snapshot_fn(pd_engine *e, pd_job *job) {
  int32_t slots[N_BLOCKS];
  for (int i = 0; i < N_BLOCKS; i++) slots[i] = i;
  C.read_rc = pd_devpool_download(&e->pool, slots, N_BLOCKS, C.snapshot, slots);
  C.all_alpha = 1;
  for (uint32_t s = 0; s < e->n_blocks; s++)
    if (e->slot_owner[s] != (uint16_t)(C.alpha + 1)) C.all_alpha = 0;
  if (C.evict_alpha) {
    uint64_t counts[PD_TIERS] = {0};
    pd_engine_evict(e, C.alpha, -1, counts);
  }
}

/* Engine thread: beta's device block in the tree, and its bytes. */
static void find_beta_fn(pd_engine *e, pd_job *job) {
  C.beta_nodes = 0;
  for (uint32_t id = 0; id < e->tree.cap_nodes; id++) {
    const pd_node *nd = pd_radix_node(&e->tree, id);
    if (!(nd->flags & PD_NODE_USED) || nd->tier != 0 || nd->tenant != (uint16_t)C.beta) continue;
    C.beta_nodes++;
    C.beta_slot = nd->slot;
  }
  int32_t slot = (int32_t)C.beta_slot, zero = 0;
  if (C.beta_nodes == 1) C.read_rc = pd_devpool_download(&e->pool, &slot, 1, C.beta_block, &zero);
}

static int call(pd_call_fn fn) {
  pd_job *job = calloc(1, sizeof *job);
  ck_assert_ptr_nonnull(job);
  job->kind = PD_JOB_CALL;
  job->run = fn;
  snprintf(job->authorization, sizeof job->authorization, "%s", ADMIN_KEY);
  return run_job(job);
}

static pd_engine *create(uint64_t kv_bytes, int zero) {
  pd_engine_config cfg = {.model_path = getenv("PD_TINY_MODEL"),
                          .block_tokens = B_TOKENS,
                          .kv_cache_bytes = kv_bytes,
                          .host_cache_bytes = 0,
                          .disk_dir = NULL,
                          .max_batch_tokens = 256,
                          .max_running = 4,
                          .max_queue = 16,
                          .cache_dtype = PD_DTYPE_F16,
                          .mode = PD_MATMUL_FAST,
                          .tenants_path = NULL,
                          .admin_key = ADMIN_KEY,
                          .threads = 1,
                          .zero_reused_kv = zero,
                          .device = PD_ENGINE_DEVICE_CPU};
  char err[512] = "";
  pd_engine *e = NULL;
  int rc = pd_engine_create(&cfg, &C.loop, on_output, &C, &e, err, sizeof err);
  ck_assert_msg(rc == 0, "pd_engine_create: %s", err);
  return e;
}

static void destroy(pd_engine *e) {
  pd_engine_destroy(e); /* joins the thread (started or not) and closes the async handle */
  uv_run(&C.loop, UV_RUN_DEFAULT);
}

/* Starts an engine with exactly N_BLOCKS device blocks and the tenants alpha and beta. */
static void start(int zero) {
  memset(&C, 0, sizeof C);
  ck_assert_int_eq(uv_loop_init(&C.loop), 0);
  /* the block size is the model's: size the pool from a first engine */
  pd_engine *probe = create(64u << 20, zero);
  size_t block_bytes = probe->block_bytes;
  pd_engine_start(probe);
  destroy(probe);
  C.e = create((uint64_t)N_BLOCKS * block_bytes, zero);
  ck_assert_uint_eq(C.e->n_blocks, N_BLOCKS);
  char err[256];
  pd_tenant_limits lim = {0};
  ck_assert_int_eq(pd_tenantdb_create(&C.e->db, "alpha", &lim, C.key_alpha), 0);
  ck_assert_int_eq(pd_tenantdb_create(&C.e->db, "beta", &lim, C.key_beta), 0);
  ck_assert_int_eq(pd_engine_add_tenant(C.e, pd_tenantdb_find(&C.e->db, "alpha"), err, sizeof err),
                   0);
  ck_assert_int_eq(pd_engine_add_tenant(C.e, pd_tenantdb_find(&C.e->db, "beta"), err, sizeof err),
                   0);
  C.alpha = pd_engine_tenant_id(C.e, "alpha");
  C.beta = pd_engine_tenant_id(C.e, "beta");
  ck_assert_int_ge(C.alpha, 0);
  ck_assert_int_ge(C.beta, 0);
  C.snapshot = malloc((size_t)N_BLOCKS * block_bytes);
  C.beta_block = malloc(block_bytes);
  ck_assert_int_eq(pd_engine_start(C.e), 0);
}

static void stop(void) {
  destroy(C.e);
  ck_assert_int_eq(uv_loop_close(&C.loop), 0);
  free(C.snapshot);
  free(C.beta_block);
}

/* Runs the scenario; returns the number of beta's unwritten rows' bytes checked. */
static size_t scenario(int zero, int evict) {
  start(zero);
  C.evict_alpha = evict;
  /* 1. alpha fills every slot: 7 full blocks, then one more */
  ck_assert_int_eq(request(C.key_alpha, (N_BLOCKS - 1) * B_TOKENS, 1, -1), 0);
  ck_assert_int_eq(request(C.key_alpha, B_TOKENS, 2, -1), 0);
  /* 2. the pool as alpha left it */
  ck_assert_int_eq(call(snapshot_fn), 0);
  ck_assert_int_eq(C.read_rc, 0);
  ck_assert_msg(C.all_alpha, "not every device slot was written for alpha: the scenario cannot "
                             "guarantee beta a slot of alpha's");
  /* 3. beta: one partial block */
  ck_assert_int_eq(request(C.key_beta, BETA_ROWS, 3, 1), 0);
  /* 4. beta's block */
  ck_assert_int_eq(call(find_beta_fn), 0);
  ck_assert_int_eq(C.beta_nodes, 1);
  ck_assert_int_eq(C.read_rc, 0);

  const pd_kv_layout *L = &C.e->llama.kv;
  size_t es = pd_dtype_size(L->dtype), row_bytes = (size_t)L->head_dim * es;
  size_t block_bytes = C.e->block_bytes, checked = 0;
  const uint8_t *before = C.snapshot + (size_t)C.beta_slot * block_bytes;
  int alpha_nonzero = 0, beta_nonzero = 0;
  for (int layer = 0; layer < L->n_layers; layer++)
    for (int kv = 0; kv < 2; kv++)
      for (int h = 0; h < L->n_kv_heads; h++)
        for (int row = 0; row < L->block_tokens; row++) {
          size_t off = pd_kv_elem_offset(L, layer, kv, h, row) * es;
          const uint8_t *now = C.beta_block + off, *was = before + off;
          int now_zero = 1, was_zero = 1;
          for (size_t i = 0; i < row_bytes; i++) {
            now_zero &= now[i] == 0;
            was_zero &= was[i] == 0;
          }
          if (row < BETA_ROWS) { /* beta's own rows */
            beta_nonzero |= !now_zero;
            continue;
          }
          alpha_nonzero |= !was_zero;
          if (zero)
            ck_assert_msg(now_zero,
                          "slot %u layer %d %s head %d row %d: beta's unwritten row is not zero",
                          C.beta_slot, layer, kv ? "V" : "K", h, row);
          else
            ck_assert_msg(!memcmp(now, was, row_bytes),
                          "slot %u layer %d %s head %d row %d: not alpha's bytes with the option "
                          "off",
                          C.beta_slot, layer, kv ? "V" : "K", h, row);
          checked += row_bytes;
        }
  ck_assert_msg(alpha_nonzero,
                "alpha's rows in slot %u were zero: the test could not see a "
                "difference between the option on and off",
                C.beta_slot);
  ck_assert_msg(beta_nonzero, "beta's own rows are all zero: its prefill did not reach slot %u",
                C.beta_slot);
  stop();
  return checked;
}

START_TEST(test_pressure_zeroed) {
  ck_assert_uint_gt(scenario(1, 0), 0);
}
END_TEST

START_TEST(test_pressure_kept_when_off) {
  ck_assert_uint_gt(scenario(0, 0), 0);
}
END_TEST

START_TEST(test_evicted_zeroed) {
  ck_assert_uint_gt(scenario(1, 1), 0);
}
END_TEST

START_TEST(test_evicted_kept_when_off) {
  ck_assert_uint_gt(scenario(0, 1), 0);
}
END_TEST

int main(void) {
  if (!getenv("PD_TINY_MODEL")) {
    fprintf(stderr, "PD_TINY_MODEL is not set\n");
    return 77;
  }
  Suite *s = suite_create("zero_reused_kv");
  TCase *tc = tcase_create("pool");
  tcase_add_test(tc, test_pressure_zeroed);
  tcase_add_test(tc, test_pressure_kept_when_off);
  tcase_add_test(tc, test_evicted_zeroed);
  tcase_add_test(tc, test_evicted_kept_when_off);
  suite_add_tcase(s, tc);
  return pd_check_run(s, 1);
}
