/*
 * test_cuda_llama.c -- the GPU forward pass (model/pd_llama_cuda.h) against the CPU one
 * (pd_llama_forward), on synthetic models written by prefixd-mkgguf (CTest fixtures):
 *   PD_CUDA_MODEL       the default model's shape (SmolLM2-135M: d 576, 9/3 heads, head_dim 64,
 *                       ffn 1536, vocab 49152, q4_1 weights, q8_0 tied embeddings), 8 layers
 *   PD_CUDA_MODEL_QWEN  a small qwen2 (q/k/v biases, NEOX RoPE, untied q6_k output, q4_k weights)
 *
 * Checks, with their tolerances (max over a logits row, relative to max |cpu logit|):
 *   1. f32 weights, f32 KV cache: the same greedy tokens as the CPU (exact matmul mode) for a
 *      20-token prompt and 64 decode steps, both fed the CPU's token each step. A token may
 *      differ only where the CPU's best two logits are within the logits tolerance (a near tie,
 *      counted and printed). Logits within 1e-3. The device argmax equals the host argmax of
 *      the device logits, exactly.
 *   2. f16 weights, f16 KV cache: logits within 3e-2 of the CPU (exact, f16 cache) over the same
 *      65 steps; the agreement of greedy tokens is printed. The same for f32 weights and an
 *      fp8-e4m3 cache against the CPU's fp8 cache (a K or V value that the two sides round to
 *      neighbouring e4m3 values moves the logits by more than f32 rounding does).
 *   3. Cached prefix: a 40-token prompt run whole, run as 16 + 24, and run as 24 over the first
 *      block taken from the pool, give the same logits on the GPU: within 1e-4 (f32 weights) and
 *      1e-2 (f16) -- cuBLAS and the attention kernels may pick other kernels for other row
 *      counts, so the GPU path is batch-invariant only within rounding; whether the results were
 *      bit for bit is printed.
 *   4. A batch mixing a prefill chunk and three decode steps equals each run alone (1e-4).
 *   5. A decode batch whose sequences share cached prefix blocks (the cascade path,
 *      shared_blocks > 0) equals each sequence alone (1e-4).
 *   6. Decode steps replayed from CUDA graphs give the tokens and logits of eager runs (1e-5),
 *      with a shared prefix too; graphs were captured and replayed, and never turned off.
 *   7. Bad input is refused (PD_EINVAL), an impossible init or pool is PD_ENOMEM naming bytes.
 *   8. Decode steps with the fused norm GEMVs (fused_gemv = 1) give the tokens and logits of the
 *      separate kernels bit for bit, on both models.
 * Exits 77 (skipped) when there is no GPU.
 */
#include <check.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pd_check.h"
#include "pd_gpu_gate.h"
#include "pd_cuda_attention.h"
#include "pd_cuda_launch.h"
#include "pd_err.h"
#include "pd_llama.h"
#include "pd_llama_cuda.h"
#include "pd_model.h"

#define B        16
#define PROMPT   20
#define STEPS    64
#define MAX_TOK  64
#define MAX_SEQS 8

static pd_model *models[2]; /* smollm-like, qwen2-like */

static void load(int i) {
  if (models[i]) return;
  const char *var = i ? "PD_CUDA_MODEL_QWEN" : "PD_CUDA_MODEL";
  const char *path = getenv(var);
  ck_assert_msg(path && !access(path, R_OK), "%s is not set or not readable (the mkgguf fixture)",
                var);
  char err[256];
  ck_assert_msg(pd_model_load(path, &models[i], err, sizeof err) == 0, "%s", err);
}

static void tokens(int32_t *t, int n, int salt, int vocab) {
  for (int i = 0; i < n; i++) t[i] = 3 + (i * 37 + salt * 1001) % (vocab - 3);
}

static int32_t argmax(const float *l, int n) { /* pd_sampler.c, temperature 0 */
  int32_t pick = 0;
  for (int32_t i = 1; i < n; i++)
    if (l[i] > l[pick]) pick = i;
  return pick;
}

static float max_abs(const float *x, size_t n) {
  float m = 0;
  for (size_t i = 0; i < n; i++) m = fmaxf(m, fabsf(x[i]));
  return m;
}

/* max |a - b| over n, failing on a NaN in a */
static float max_diff(const float *a, const float *b, size_t n, const char *what) {
  float m = 0;
  for (size_t i = 0; i < n; i++) {
    ck_assert_msg(!isnan(a[i]), "%s: element %zu is NaN", what, i);
    m = fmaxf(m, fabsf(a[i] - b[i]));
  }
  return m;
}

static void gpu_init(pd_llama_cuda *g, pd_model *m, enum pd_dtype cache,
                     enum pd_cuda_weight_mode mode, void **pool, int n_blocks) {
  char err[256] = "";
  ck_assert_msg(pd_llama_cuda_init(g, m, B, cache, mode, MAX_TOK, MAX_SEQS, err, sizeof err) == 0,
                "%s", err);
  ck_assert_msg(pd_llama_cuda_pool_alloc(g, n_blocks, pool, err, sizeof err) == 0, "%s", err);
  g->pool_blocks = n_blocks;
}

static void gpu_run(pd_llama_cuda *g, void *pool, const pd_llama_seq *s, int n, float *logits,
                    int32_t *ids) {
  int rc = pd_llama_cuda_forward_ex(g, pool, s, n, logits, ids);
  ck_assert_msg(rc == 0, "forward: %s (%s)", g->err, pd_strerror(rc));
}

/* ---- 1, 2: greedy decoding against the CPU ------------------------------------------------- */

static void decode_against_cpu(pd_model *m, enum pd_dtype cache, enum pd_cuda_weight_mode mode,
                               float tol, const char *name) {
  const int V = m->n_vocab, n_blocks = (PROMPT + STEPS + B) / B + 1;
  pd_llama cpu;
  ck_assert_int_eq(pd_llama_init(&cpu, m, B, cache, PD_MATMUL_EXACT, MAX_TOK, MAX_SEQS), 0);
  uint8_t *cpool = calloc((size_t)n_blocks, pd_kv_block_bytes(&cpu.kv));
  pd_llama_cuda g;
  void *gpool;
  gpu_init(&g, m, cache, mode, &gpool, n_blocks);
  float *cl = malloc(sizeof(float) * V), *gl = malloc(sizeof(float) * V);
  int32_t table[16], prompt[PROMPT], gid = -1;
  for (int i = 0; i < n_blocks; i++) table[i] = n_blocks - 1 - i; /* not the identity */
  tokens(prompt, PROMPT, 1, V);
  int n_past = 0, near_ties = 0, agree = 0;
  float worst = 0;
  int32_t tok = 0;
  for (int step = 0; step <= STEPS; step++) {
    pd_llama_seq s = step ? (pd_llama_seq){&tok, 1, n_past, table, n_blocks, 1}
                          : (pd_llama_seq){prompt, PROMPT, 0, table, n_blocks, 1};
    ck_assert_int_eq(pd_llama_forward(&cpu, cpool, &s, 1, cl), 0);
    memset(gl, 0xff, sizeof(float) * V);
    gpu_run(&g, gpool, &s, 1, gl, &gid);
    n_past += s.n_new;
    float scale = max_abs(cl, V), diff = max_diff(gl, cl, V, name);
    worst = fmaxf(worst, diff / scale);
    ck_assert_msg(diff <= tol * scale, "%s step %d: max |logit diff| %g > %g * %g", name, step,
                  diff, tol, scale);
    ck_assert_msg(gid == argmax(gl, V),
                  "%s step %d: device argmax %d, host argmax of its logits %d", name, step, gid,
                  argmax(gl, V));
    int32_t want = argmax(cl, V);
    if (gid == want) {
      agree++;
    } else if (mode == PD_CUDA_WEIGHTS_F32) {
      /* the GPU's logits are within diff of the CPU's, each: its pick can beat the CPU's by a
       * CPU-side gap of up to 2 diff, and no more */
      float gap = cl[want] - cl[gid];
      ck_assert_msg(gap <= 2.0f * diff,
                    "%s step %d: gpu token %d, cpu token %d, cpu logits %g vs %g: not a near tie",
                    name, step, gid, want, cl[gid], cl[want]);
      near_ties++;
    }
    tok = want; /* both follow the CPU */
  }
  printf("ok: %s: %d/%d greedy tokens equal (%d near ties), max |logit diff| / max |logit| "
         "%.2e\n",
         name, agree, STEPS + 1, near_ties, worst);
  free(cl), free(gl), free(cpool);
  pd_llama_free(&cpu);
  pd_llama_cuda_pool_free(gpool);
  pd_llama_cuda_free(&g);
}

START_TEST(f32_greedy_tokens_match_cpu) {
  load(_i);
  decode_against_cpu(models[_i], PD_DTYPE_F32, PD_CUDA_WEIGHTS_F32, 1e-3f,
                     _i ? "qwen2-like f32/f32" : "smollm-like f32/f32");
}
END_TEST

START_TEST(f16_logits_within_tolerance) {
  load(_i);
  decode_against_cpu(models[_i], PD_DTYPE_F16, PD_CUDA_WEIGHTS_F16, 3e-2f,
                     _i ? "qwen2-like f16/f16" : "smollm-like f16/f16");
}
END_TEST

START_TEST(fp8_cache_logits_within_tolerance) {
  load(_i);
  decode_against_cpu(models[_i], PD_DTYPE_FP8_E4M3, PD_CUDA_WEIGHTS_F32, 3e-2f,
                     _i ? "qwen2-like f32/fp8" : "smollm-like f32/fp8");
}
END_TEST

/* ---- 3: a cached prefix gives the logits of a recompute ------------------------------------ */

START_TEST(cached_prefix_equals_recompute) {
  load(0);
  pd_model *m = models[0];
  const int V = m->n_vocab, N = 40;
  const enum pd_cuda_weight_mode mode = _i ? PD_CUDA_WEIGHTS_F16 : PD_CUDA_WEIGHTS_F32;
  const float tol = _i ? 1e-2f : 1e-4f;
  pd_llama_cuda g;
  void *pool;
  gpu_init(&g, m, _i ? PD_DTYPE_F16 : PD_DTYPE_F32, mode, &pool, 8);
  float *one = malloc(sizeof(float) * V), *two = malloc(sizeof(float) * V);
  float *reuse = malloc(sizeof(float) * V);
  int32_t tok[40];
  tokens(tok, N, 2, V);
  int32_t ta[3] = {0, 1, 2}, tb[3] = {3, 4, 5}, tc[3] = {0, 6, 7};
  pd_llama_seq s = {tok, N, 0, ta, 3, 1};
  gpu_run(&g, pool, &s, 1, one, NULL);
  s = (pd_llama_seq){tok, 16, 0, tb, 3, 0};
  gpu_run(&g, pool, &s, 1, NULL, NULL);
  s = (pd_llama_seq){tok + 16, N - 16, 16, tb, 3, 1};
  gpu_run(&g, pool, &s, 1, two, NULL);
  s = (pd_llama_seq){tok + 16, N - 16, 16, tc, 3, 1}; /* block 0 from the first run */
  gpu_run(&g, pool, &s, 1, reuse, NULL);
  float scale = max_abs(one, V);
  float d2 = max_diff(two, one, V, "chunked"), d3 = max_diff(reuse, one, V, "cached");
  ck_assert_msg(d2 <= tol * scale, "chunked prefill: max diff %g (scale %g)", d2, scale);
  ck_assert_msg(d3 <= tol * scale, "cached prefix: max diff %g (scale %g)", d3, scale);
  printf("ok: cached prefix, %s: chunked %.2e, cached %.2e of max |logit| (bit for bit: %s, %s)\n",
         _i ? "f16" : "f32", d2 / scale, d3 / scale,
         memcmp(one, two, sizeof(float) * V) ? "no" : "yes",
         memcmp(one, reuse, sizeof(float) * V) ? "no" : "yes");
  free(one), free(two), free(reuse);
  pd_llama_cuda_pool_free(pool);
  pd_llama_cuda_free(&g);
}
END_TEST

/* ---- 4: a mixed batch equals its parts alone ----------------------------------------------- */

START_TEST(mixed_batch_equals_alone) {
  load(0);
  pd_model *m = models[0];
  const int V = m->n_vocab;
  pd_llama_cuda g;
  void *pool;
  gpu_init(&g, m, PD_DTYPE_F32, PD_CUDA_WEIGHTS_F32, &pool, 16);
  int32_t p[40], d[3][40];
  tokens(p, 40, 3, V);
  const int dlen[3] = {10, 23, 37};
  int32_t tp[3] = {0, 1, 2}, td[3][3] = {{3, 4, 5}, {6, 7, 8}, {9, 10, 11}};
  /* the prefixes, alone: 16 tokens of p, each decode sequence's prompt */
  pd_llama_seq s = {p, 16, 0, tp, 3, 0};
  gpu_run(&g, pool, &s, 1, NULL, NULL);
  for (int i = 0; i < 3; i++) {
    tokens(d[i], 40, 4 + i, V);
    s = (pd_llama_seq){d[i], dlen[i], 0, td[i], 3, 0};
    gpu_run(&g, pool, &s, 1, NULL, NULL);
  }
  /* the batch: decode, prefill chunk, decode, decode */
  pd_llama_seq batch[4] = {{&d[0][dlen[0]], 1, dlen[0], td[0], 3, 1},
                           {p + 16, 24, 16, tp, 3, 1},
                           {&d[1][dlen[1]], 1, dlen[1], td[1], 3, 1},
                           {&d[2][dlen[2]], 1, dlen[2], td[2], 3, 1}};
  float *lb = malloc(sizeof(float) * 4 * V), *la = malloc(sizeof(float) * V);
  int32_t ids[4];
  gpu_run(&g, pool, batch, 4, lb, ids);
  for (int i = 0; i < 4; i++) {
    ck_assert_int_eq(ids[i], argmax(lb + (size_t)i * V, V));
    gpu_run(&g, pool, &batch[i], 1, la, NULL);
    float scale = max_abs(la, V), diff = max_diff(lb + (size_t)i * V, la, V, "mixed batch");
    ck_assert_msg(diff <= 1e-4f * scale, "batch member %d: max diff %g (scale %g)", i, diff, scale);
    printf("ok: mixed batch member %d (n_new %d): max diff %.2e of max |logit|\n", i,
           batch[i].n_new, diff / scale);
  }
  free(lb), free(la);
  pd_llama_cuda_pool_free(pool);
  pd_llama_cuda_free(&g);
}
END_TEST

/* ---- 5: a decode batch over a shared prefix (cascade) -------------------------------------- */

/* Three sequences over the same first two blocks (32 tokens), each with its own continuation of
 * 5 + 3 i tokens in its own three blocks (room for 80 tokens). Pool: 11 blocks. */
static void shared_prefix_setup(pd_llama_cuda *g, void *pool, int32_t seq_tok[3][48],
                                int32_t tables[3][5], int len[3]) {
  const int V = g->model->n_vocab;
  int32_t sys[32];
  tokens(sys, 32, 7, V);
  int32_t t0[2] = {0, 1};
  pd_llama_seq s = {sys, 32, 0, t0, 2, 0};
  gpu_run(g, pool, &s, 1, NULL, NULL);
  for (int i = 0; i < 3; i++) {
    tables[i][0] = 0, tables[i][1] = 1;
    for (int j = 2; j < 5; j++) tables[i][j] = 3 * i + j;
    memcpy(seq_tok[i], sys, sizeof sys);
    tokens(seq_tok[i] + 32, 16, 8 + i, V);
    len[i] = 32 + 5 + 3 * i;
    s = (pd_llama_seq){seq_tok[i] + 32, len[i] - 32, 32, tables[i], 5, 0};
    gpu_run(g, pool, &s, 1, NULL, NULL);
  }
}

START_TEST(shared_prefix_decode_equals_alone) {
  load(0);
  pd_model *m = models[0];
  const int V = m->n_vocab;
  pd_llama_cuda g;
  void *pool;
  gpu_init(&g, m, PD_DTYPE_F16, PD_CUDA_WEIGHTS_F32, &pool, 16);
  int32_t seq_tok[3][48], tables[3][5];
  int len[3];
  shared_prefix_setup(&g, pool, seq_tok, tables, len);
  pd_llama_seq batch[3];
  for (int i = 0; i < 3; i++)
    batch[i] = (pd_llama_seq){&seq_tok[i][len[i]], 1, len[i], tables[i], 5, 1};
  float *lb = malloc(sizeof(float) * 3 * V), *la = malloc(sizeof(float) * V);
  gpu_run(&g, pool, batch, 3, lb, NULL);
  ck_assert_int_eq(g.last_shared_blocks, 2);
  for (int i = 0; i < 3; i++) {
    gpu_run(&g, pool, &batch[i], 1, la, NULL);
    ck_assert_int_eq(g.last_shared_blocks, 0);
    float scale = max_abs(la, V), diff = max_diff(lb + (size_t)i * V, la, V, "cascade");
    ck_assert_msg(diff <= 1e-4f * scale, "cascade member %d: max diff %g (scale %g)", i, diff,
                  scale);
    printf("ok: shared-prefix decode member %d: max diff %.2e of max |logit|\n", i, diff / scale);
  }
  free(lb), free(la);
  pd_llama_cuda_pool_free(pool);
  pd_llama_cuda_free(&g);
}
END_TEST

/* ---- 6: graphs ----------------------------------------------------------------------------- */

/* Decodes the three shared-prefix sequences together for n steps (greedy on the device), with
 * graphs on or off and the fused norm GEMVs on or off; tokens (n, 3) and the last step's logits
 * (3, V) come back. */
static void decode_three(pd_model *m, int graphs, int fused, int pdl, int n, int32_t *toks,
                         float *last_logits, pd_llama_cuda *g_out_stats) {
  const int V = m->n_vocab;
  /* pdl: 1 or 0 for this run (the environment's choice is put back at the end), -1 as it is */
  if (pdl >= 0) pd_cuda_set_pdl(pdl);
  pd_llama_cuda g;
  void *pool;
  gpu_init(&g, m, PD_DTYPE_F16, PD_CUDA_WEIGHTS_F16, &pool, 16);
  g.use_graphs = graphs;
  g.fused_gemv = fused;
  int32_t seq_tok[3][48], tables[3][5];
  int len[3];
  shared_prefix_setup(&g, pool, seq_tok, tables, len);
  int32_t cur[3] = {seq_tok[0][len[0]], seq_tok[1][len[1]], seq_tok[2][len[2]]};
  float *l = malloc(sizeof(float) * 3 * V);
  for (int step = 0; step < n; step++) {
    pd_llama_seq batch[3];
    for (int i = 0; i < 3; i++)
      batch[i] = (pd_llama_seq){&cur[i], 1, len[i] + step, tables[i], 5, 1};
    gpu_run(&g, pool, batch, 3, l, toks + 3 * step);
    memcpy(cur, toks + 3 * step, sizeof cur);
  }
  memcpy(last_logits, l, sizeof(float) * 3 * V);
  *g_out_stats = g; /* the counters; the pointers are not used after the free below */
  free(l);
  pd_llama_cuda_pool_free(pool);
  pd_llama_cuda_free(&g);
  if (pdl >= 0) pd_cuda_set_pdl(pd_cuda_env_flag("PD_CUDA_PDL"));
}

#define PAIR_STEPS 24 /* 43 + 24 < 5 blocks of 16 per sequence */

/* decode_three twice, PAIR_STEPS steps each, as run a (graphs, fused, pdl) and run b; the greedy
 * tokens must be equal; the last logits (3, V) of each come back in la, lb (malloc'd, the
 * caller frees), the counters in sa, sb. */
static void decode_three_twice(pd_model *m, const int a[3], const int b[3], float **la, float **lb,
                               pd_llama_cuda *sa, pd_llama_cuda *sb, const char *what) {
  const int V = m->n_vocab, n = PAIR_STEPS;
  int32_t ta[PAIR_STEPS * 3], tb[PAIR_STEPS * 3];
  *la = malloc(sizeof(float) * 3 * V), *lb = malloc(sizeof(float) * 3 * V);
  decode_three(m, a[0], a[1], a[2], n, ta, *la, sa);
  decode_three(m, b[0], b[1], b[2], n, tb, *lb, sb);
  ck_assert_msg(!sa->graphs_off, "graphs were turned off: %s", sa->graph_err);
  for (int i = 0; i < 3 * n; i++)
    ck_assert_msg(ta[i] == tb[i], "%s: step %d seq %d: tokens %d and %d", what, i / 3, i % 3, ta[i],
                  tb[i]);
}

START_TEST(graph_replay_equals_eager) {
  load(0);
  pd_model *m = models[0];
  const int V = m->n_vocab, n = PAIR_STEPS;
  float *la, *lb;
  pd_llama_cuda on, off;
  decode_three_twice(m, (const int[3]){1, 0, -1}, (const int[3]){0, 0, -1}, &la, &lb, &on, &off,
                     "graph vs eager");
  ck_assert_msg(on.n_captures >= 1 && on.n_replays >= (uint64_t)n - 4,
                "graphs: %llu captures, %llu replays in %d steps",
                (unsigned long long)on.n_captures, (unsigned long long)on.n_replays, n);
  ck_assert_msg(off.n_captures == 0 && off.n_replays == 0, "graphs ran while off");
  float scale = max_abs(lb, (size_t)3 * V), diff = max_diff(la, lb, (size_t)3 * V, "graph");
  ck_assert_msg(diff <= 1e-5f * scale, "graph vs eager logits: max diff %g (scale %g)", diff,
                scale);
  printf("ok: graphs: %llu captures, %llu replays, %llu eager steps; tokens equal, logits %s\n",
         (unsigned long long)on.n_captures, (unsigned long long)on.n_replays,
         (unsigned long long)on.n_eager,
         memcmp(la, lb, sizeof(float) * 3 * V) ? "within 1e-5" : "bit for bit");
  free(la), free(lb);
}
END_TEST

/* ---- 8: the fused norm GEMVs ---------------------------------------------------------------- */

/* Decode steps of three sequences (f16 weights, graphs on) with each RMSNorm fused into the GEMV
 * after it and SwiGLU into the gate|up GEMV give the same tokens and the same logits, bit for
 * bit, as the separate kernels: the fused kernel repeats their arithmetic in their order. */
START_TEST(fused_gemv_equals_separate_kernels) {
  load(_i);
  pd_model *m = models[_i];
  const int V = m->n_vocab;
  float *la, *lb;
  pd_llama_cuda fused, separate;
  decode_three_twice(m, (const int[3]){1, 1, -1}, (const int[3]){1, 0, -1}, &la, &lb, &fused,
                     &separate, "fused vs separate");
  /* two fused launches a layer for every step enqueued (eager or captured) */
  ck_assert_msg(fused.n_fused_gemv >= (uint64_t)2 * m->n_layers && separate.n_fused_gemv == 0,
                "fused launches: %llu with fused_gemv, %llu without",
                (unsigned long long)fused.n_fused_gemv, (unsigned long long)separate.n_fused_gemv);
  for (size_t i = 0; i < (size_t)3 * V; i++)
    ck_assert_msg(!memcmp(&la[i], &lb[i], sizeof(float)),
                  "logit %zu: fused %.9g, separate %.9g (not the same bits)", i, la[i], lb[i]);
  printf("ok: %s: fused norm GEMVs: %d steps, tokens and logits bit for bit\n",
         _i ? "qwen2-like" : "smollm-like", PAIR_STEPS);
  free(la), free(lb);
}
END_TEST

/* ---- 9: programmatic dependent launch ------------------------------------------------------- */

/* The same decode steps (a shared-prefix prefill, then graphs; fused GEMVs, then the separate
 * kernels) with every kernel launched under PDL give the same tokens and logits, bit for bit, as
 * in plain stream order: pdl_wait() comes before each kernel's first dependent access. On a GPU
 * without griddepcontrol (compute capability < 9.0), or a build whose code has none, both runs
 * are plain and the test says so; under PD_REQUIRE_GPU (scripts/gpu-check builds for the GPU
 * found) a GPU of compute capability 9.0 or more must have PDL on, before and after the runs
 * (pd_cuda_launch turns it off should the runtime refuse it). */
START_TEST(pdl_equals_stream_order) {
  load(0);
  pd_model *m = models[0];
  const int V = m->n_vocab;
  pd_cuda_set_pdl(1);
  const int active = pd_cuda_pdl();
  pd_cuda_set_pdl(pd_cuda_env_flag("PD_CUDA_PDL"));
  int dev = 0, major = 0;
  ck_assert_int_eq(cudaGetDevice(&dev), cudaSuccess);
  ck_assert_int_eq(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev),
                   cudaSuccess);
  ck_assert_msg(!active || major >= 9, "PDL on at compute capability %d", major);
  if (pd_cuda_env_flag("PD_REQUIRE_GPU"))
    ck_assert_msg(active == (major >= 9), "PDL %s on compute capability %d", active ? "on" : "off",
                  major);
  for (int fused = 1; fused >= 0; fused--) {
    float *la, *lb;
    pd_llama_cuda with, without;
    decode_three_twice(m, (const int[3]){1, fused, 1}, (const int[3]){1, fused, 0}, &la, &lb, &with,
                       &without, fused ? "pdl vs plain (fused)" : "pdl vs plain");
    ck_assert_msg(with.n_replays > 0, "no graph replays with PDL");
    for (size_t i = 0; i < (size_t)3 * V; i++)
      ck_assert_msg(!memcmp(&la[i], &lb[i], sizeof(float)),
                    "logit %zu: with PDL %.9g, without %.9g (not the same bits)", i, la[i], lb[i]);
    free(la), free(lb);
  }
  pd_cuda_set_pdl(1);
  const int still = pd_cuda_pdl();
  pd_cuda_set_pdl(pd_cuda_env_flag("PD_CUDA_PDL"));
  ck_assert_msg(still == active, "PDL was turned off during the runs (the runtime refused it)");
  printf("ok: PDL %s: %d steps twice (fused GEMVs and not), tokens and logits bit for bit\n",
         active ? "active" : "not supported here (both runs plain)", PAIR_STEPS);
}
END_TEST

/* ---- 7: refusals --------------------------------------------------------------------------- */

START_TEST(bad_input_is_refused) {
  load(0);
  pd_model *m = models[0];
  const int V = m->n_vocab;
  pd_llama_cuda g;
  void *pool;
  gpu_init(&g, m, PD_DTYPE_F16, PD_CUDA_WEIGHTS_F16, &pool, 4);
  float *l = malloc(sizeof(float) * V);
  int32_t tok[20], t[3] = {0, 1, 2};
  tokens(tok, 20, 9, V);
  int32_t bad = V;
  pd_llama_seq s = {&bad, 1, 0, t, 3, 1};
  ck_assert_int_eq(pd_llama_cuda_forward(&g, pool, &s, 1, l), PD_EINVAL);
  s = (pd_llama_seq){tok, 20, 0, t, 1, 1}; /* 20 tokens in one block */
  ck_assert_int_eq(pd_llama_cuda_forward(&g, pool, &s, 1, l), PD_EINVAL);
  int32_t far[2] = {0, 4}; /* block 4 of a 4-block pool */
  s = (pd_llama_seq){tok, 20, 0, far, 2, 1};
  ck_assert_int_eq(pd_llama_cuda_forward(&g, pool, &s, 1, l), PD_EINVAL);
  int32_t neg[2] = {0, -1};
  s = (pd_llama_seq){tok, 20, 0, neg, 2, 1};
  ck_assert_int_eq(pd_llama_cuda_forward(&g, pool, &s, 1, l), PD_EINVAL);
  pd_llama_seq many[MAX_SEQS + 1];
  for (int i = 0; i <= MAX_SEQS; i++) many[i] = (pd_llama_seq){tok, 1, 0, t, 1, 0};
  ck_assert_int_eq(pd_llama_cuda_forward(&g, pool, many, MAX_SEQS + 1, l), PD_EINVAL);
  s = (pd_llama_seq){tok, MAX_TOK + 1, 0, t, 3, 1};
  ck_assert_int_eq(pd_llama_cuda_forward(&g, pool, &s, 1, l), PD_EINVAL);
  /* the context still works after the refusals */
  s = (pd_llama_seq){tok, 20, 0, t, 3, 1};
  ck_assert_msg(pd_llama_cuda_forward(&g, pool, &s, 1, l) == 0, "%s", g.err);
  char err[256] = "";
  void *huge;
  ck_assert_int_eq(pd_llama_cuda_pool_alloc(&g, (int64_t)1 << 30, &huge, err, sizeof err),
                   PD_ENOMEM);
  ck_assert_msg(strstr(err, "bytes"), "message: %s", err);
  free(l);
  pd_llama_cuda_pool_free(pool);
  pd_llama_cuda_free(&g);
  /* init: an unknown cache dtype, a block size not a power of two are refused; out of memory
   * names bytes */
  ck_assert_int_eq(
      pd_llama_cuda_init(&g, m, B, (enum pd_dtype)99, PD_CUDA_WEIGHTS_F16, 8, 1, err, sizeof err),
      PD_EINVAL);
  ck_assert_int_eq(
      pd_llama_cuda_init(&g, m, 12, PD_DTYPE_F16, PD_CUDA_WEIGHTS_F16, 8, 1, err, sizeof err),
      PD_EINVAL);
  ck_assert_int_eq(
      pd_llama_cuda_init(&g, m, B, PD_DTYPE_F16, PD_CUDA_WEIGHTS_F16, 1 << 27, 1, err, sizeof err),
      PD_ENOMEM);
  ck_assert_msg(strstr(err, "bytes"), "message: %s", err);
  printf("ok: refusals (last: %s)\n", err);
}
END_TEST

int main(void) {
  int gate = pd_gpu_gate();
  if (gate) return gate;
  Suite *s = suite_create("cuda_llama");
  TCase *tc = tcase_create("forward");
  tcase_set_timeout(tc, 900);
  tcase_add_loop_test(tc, f32_greedy_tokens_match_cpu, 0, 2);
  tcase_add_loop_test(tc, f16_logits_within_tolerance, 0, 2);
  tcase_add_loop_test(tc, fp8_cache_logits_within_tolerance, 0, 2);
  tcase_add_loop_test(tc, cached_prefix_equals_recompute, 0, 2);
  tcase_add_test(tc, mixed_batch_equals_alone);
  tcase_add_test(tc, shared_prefix_decode_equals_alone);
  tcase_add_test(tc, graph_replay_equals_eager);
  tcase_add_loop_test(tc, fused_gemv_equals_separate_kernels, 0, 2);
  tcase_add_test(tc, pdl_equals_stream_order);
  tcase_add_test(tc, bad_input_is_refused);
  suite_add_tcase(s, tc);
  int rc = pd_check_run(s, 0);
  for (int i = 0; i < 2; i++) pd_model_free(models[i]);
  return rc;
}
