/*
 * model_bench.c (target cuda_model_bench) -- the GPU forward pass's speed on a synthetic GGUF of
 * the default model's shape (SmolLM2-135M: 30 layers, d 576, 9/3 heads, vocab 49152), with f16
 * weights and an f16 KV cache, greedy sampling on the device:
 *   decode tokens/s at batch 1      one sequence after a 512-token prompt, 256 timed steps, with
 *                                   the separate RMSNorm/RoPE/SwiGLU kernels and with them fused into
 *                                   the GEMVs (fused_gemv), each in plain stream order and with
 *                                   programmatic dependent launch (PDL, pd_cuda_launch.h; where the
 *                                   GPU has it): four variants, alternating, best of 3 rounds each
 *   decode tokens/s at batch 64     64 sequences after 512-token prompts each, 128 timed steps,
 *                                   aggregate (64 tokens per step); without and with PDL
 *   prefill of 4,096 tokens         one sequence, one call, the median of 5 (after a warm-up);
 *                                   without and with PDL
 * Each forward call is synchronous, so wall time around the calls is the figure. Decode steps
 * run from CUDA graphs after the first two steps of a shape (pd_llama_cuda.h); --no-graphs turns
 * them off.
 *
 * usage: cuda_model_bench MODEL.gguf [--out results.md] [--no-graphs]
 *   MODEL.gguf: prefixd-mkgguf -o smollm-like.gguf --like smollm2-135m
 */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pd_cuda_attention.h"
#include "pd_cuda_launch.h"
#include "pd_cuda_ops.h"
#include "pd_err.h"
#include "pd_llama_cuda.h"
#include "pd_model.h"

#define B            16
#define PROMPT       512
#define WARM         8
#define STEPS1       256
#define ROUNDS       3 /* batch-1 rounds per variant */
#define BATCH        64
#define STEPS64      128
#define PREFILL      4096
#define PREFILL_RUNS 5

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what, const pd_llama_cuda *g, int rc) {
  fprintf(stderr, "cuda_model_bench: %s: %s (%s)\n", what, g ? g->err : "", pd_strerror(rc));
  exit(1);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  const char *path = NULL, *outp = NULL;
  int graphs = 1;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--out") && i + 1 < argc)
      outp = argv[++i];
    else if (!strcmp(argv[i], "--no-graphs"))
      graphs = 0;
    else if (argv[i][0] != '-' && !path)
      path = argv[i];
    else {
      fprintf(stderr, "usage: cuda_model_bench MODEL.gguf [--out results.md] [--no-graphs]\n");
      return 2;
    }
  }
  if (!path) {
    fprintf(stderr, "usage: cuda_model_bench MODEL.gguf [--out results.md] [--no-graphs]\n"
                    "  (make one: prefixd-mkgguf -o smollm-like.gguf --like smollm2-135m)\n");
    return 2;
  }
  char err[512];
  pd_model *m;
  if (pd_model_load(path, &m, err, sizeof err)) {
    fprintf(stderr, "cuda_model_bench: %s\n", err);
    return 1;
  }
  char desc[512];
  pd_model_describe(m, desc, sizeof desc);
  struct cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
    fprintf(stderr, "cuda_model_bench: no CUDA device\n");
    return 1;
  }
  printf("device: %s\nmodel: %s\n", prop.name, desc);

  pd_llama_cuda g;
  double t0 = now_s();
  int rc = pd_llama_cuda_init(&g, m, B, PD_DTYPE_F16, PD_CUDA_WEIGHTS_F16, PREFILL, BATCH, err,
                              sizeof err);
  if (rc) {
    fprintf(stderr, "cuda_model_bench: init: %s\n", err);
    return 1;
  }
  g.use_graphs = graphs;
  printf("init (dequantize and upload the weights): %.2f s\n", now_s() - t0);
  const int per_seq = (PROMPT + WARM + STEPS1 + B) / B + 1; /* blocks per decoding sequence */
  const int prefill_blocks = PREFILL / B;
  const int n_blocks = BATCH * per_seq + prefill_blocks;
  void *pool;
  if ((rc = pd_llama_cuda_pool_alloc(&g, n_blocks, &pool, err, sizeof err))) {
    fprintf(stderr, "cuda_model_bench: pool: %s\n", err);
    return 1;
  }
  g.pool_blocks = n_blocks;
  int32_t *table = malloc(sizeof(int32_t) * (size_t)n_blocks);
  int32_t *tok = malloc(sizeof(int32_t) * PREFILL);
  for (int i = 0; i < n_blocks; i++) table[i] = i;
  for (int i = 0; i < PREFILL; i++) tok[i] = 100 + (i * 7919) % 40000;
  int32_t ids[BATCH];

  /* PDL where the GPU has it (compute capability 9.0 and up); the default comes back after */
  const int pdl_default = pd_cuda_pdl();
  pd_cuda_set_pdl(1);
  const int pdl_ok = pd_cuda_pdl(), n_pdl = pdl_ok ? 2 : 1;
  pd_cuda_set_pdl(pdl_default);

  /* decode at batch 1: sequence 0, its prompt once, then the same positions with the separate
   * norm kernels and with the fused norm GEMVs, each without and with PDL (alternating, ROUNDS
   * times each; the best round of each counts). All give the same tokens
   * (tests/cuda/test_cuda_llama.c checks the bits). */
  pd_llama_seq s = {tok, PROMPT, 0, table, per_seq, 1};
  if ((rc = pd_llama_cuda_forward_ex(&g, pool, &s, 1, NULL, ids))) die("prompt", &g, rc);
  const int32_t first = ids[0];
  double t_dec1_by[2][2] = {{1e30, 1e30}, {1e30, 1e30}}; /* [pdl][fused_gemv] s for STEPS1 */
  const int fused_default = g.fused_gemv;
  for (int round = 0; round < 2 * n_pdl * ROUNDS; round++) {
    const int fused = round % 2, pdl = (round / 2) % n_pdl;
    g.fused_gemv = fused;
    pd_cuda_set_pdl(pdl);
    int32_t cur = first;
    for (int i = 0; i < WARM + STEPS1; i++) {
      if (i == WARM) t0 = now_s();
      s = (pd_llama_seq){&cur, 1, PROMPT + i, table, per_seq, 1};
      if ((rc = pd_llama_cuda_forward_ex(&g, pool, &s, 1, NULL, ids))) die("decode 1", &g, rc);
      cur = ids[0];
    }
    const double t = now_s() - t0;
    if (t < t_dec1_by[pdl][fused]) t_dec1_by[pdl][fused] = t;
  }
  g.fused_gemv = fused_default;
  pd_cuda_set_pdl(pdl_default);
  for (int pdl = 0; pdl < n_pdl; pdl++)
    for (int fused = 0; fused < 2; fused++)
      printf("decode batch 1, %s%s: %.0f tokens/s (%.3f ms per token)\n",
             fused ? "fused norm GEMVs" : "separate kernels", pdl ? ", PDL" : "",
             STEPS1 / t_dec1_by[pdl][fused], 1e3 * t_dec1_by[pdl][fused] / STEPS1);

  /* decode at batch 64: prompts of 512 tokens each (different per sequence), 8 per call */
  static pd_llama_seq seqs[BATCH];
  static int32_t prompts[BATCH][PROMPT];
  for (int b = 0; b < BATCH; b++)
    for (int i = 0; i < PROMPT; i++) prompts[b][i] = 100 + (i * 7919 + b * 104729) % 40000;
  for (int b0 = 0; b0 < BATCH; b0 += PREFILL / PROMPT) {
    int n = BATCH - b0 < PREFILL / PROMPT ? BATCH - b0 : PREFILL / PROMPT;
    for (int j = 0; j < n; j++)
      seqs[j] = (pd_llama_seq){prompts[b0 + j], PROMPT, 0, table + (size_t)(b0 + j) * per_seq,
                               per_seq,         1};
    if ((rc = pd_llama_cuda_forward_ex(&g, pool, seqs, n, NULL, ids + b0)))
      die("batch prompts", &g, rc);
  }
  int32_t start[BATCH];
  memcpy(start, ids, sizeof start);
  double dec64_tps_by[2] = {0, 0}, dec64_ms_by[2] = {0, 0}; /* [pdl] */
  for (int pdl = 0; pdl < n_pdl; pdl++) { /* the same positions again, and the same tokens */
    pd_cuda_set_pdl(pdl);
    int32_t curs[BATCH];
    memcpy(curs, start, sizeof curs);
    for (int i = 0; i < WARM + STEPS64; i++) {
      if (i == WARM) t0 = now_s();
      for (int b = 0; b < BATCH; b++)
        seqs[b] = (pd_llama_seq){&curs[b], 1, PROMPT + i, table + (size_t)b * per_seq, per_seq, 1};
      if ((rc = pd_llama_cuda_forward_ex(&g, pool, seqs, BATCH, NULL, curs)))
        die("decode 64", &g, rc);
    }
    const double t = now_s() - t0;
    dec64_tps_by[pdl] = (double)BATCH * STEPS64 / t, dec64_ms_by[pdl] = 1e3 * t / STEPS64;
    printf("decode batch 64%s: %.0f tokens/s aggregate (%.3f ms per step)\n", pdl ? ", PDL" : "",
           dec64_tps_by[pdl], dec64_ms_by[pdl]);
  }

  /* prefill 4,096 tokens in one call, into the blocks after the decoding sequences' */
  double prefill_ms_by[2] = {0, 0}; /* [pdl] */
  s = (pd_llama_seq){tok, PREFILL, 0, table + (size_t)BATCH * per_seq, prefill_blocks, 1};
  for (int pdl = 0; pdl < n_pdl; pdl++) {
    pd_cuda_set_pdl(pdl);
    double runs[PREFILL_RUNS];
    if ((rc = pd_llama_cuda_forward_ex(&g, pool, &s, 1, NULL, ids))) die("prefill warm-up", &g, rc);
    for (int r = 0; r < PREFILL_RUNS; r++) {
      t0 = now_s();
      if ((rc = pd_llama_cuda_forward_ex(&g, pool, &s, 1, NULL, ids))) die("prefill", &g, rc);
      runs[r] = now_s() - t0;
    }
    qsort(runs, PREFILL_RUNS, sizeof runs[0], cmp_double);
    prefill_ms_by[pdl] = 1e3 * runs[PREFILL_RUNS / 2];
    printf("prefill %d tokens%s: %.2f ms (%.0f tokens/s)\n", PREFILL, pdl ? ", PDL" : "",
           prefill_ms_by[pdl], PREFILL / (prefill_ms_by[pdl] / 1e3));
  }
  pd_cuda_set_pdl(pdl_default);
  printf("steps: %llu eager, %llu graph captures, %llu graph replays%s%s\n",
         (unsigned long long)g.n_eager, (unsigned long long)g.n_captures,
         (unsigned long long)g.n_replays, g.graphs_off ? "; graphs turned off: " : "",
         g.graphs_off ? g.graph_err : "");

  /* pd_cuda_launch turns PDL off for good should the runtime refuse it: then say so */
  pd_cuda_set_pdl(1);
  const int pdl_refused = pdl_ok && !pd_cuda_pdl();
  pd_cuda_set_pdl(pdl_default);
  if (pdl_refused)
    printf("PDL was refused by the runtime during the run: the PDL rows ran plain\n");

  if (outp) {
    FILE *f = fopen(outp, "w");
    if (!f) {
      perror(outp);
      return 1;
    }
    fprintf(f, "# CUDA forward pass (model/pd_llama_cuda)\n\n");
    fprintf(f,
            "Device: %s (%d SMs, %.1f GiB). Model: synthetic, %s. Weights f16, KV cache f16, "
            "block 16 tokens, greedy sampling on the device, CUDA graphs %s, prefill attention on "
            "the %s tile kernel, decode %s.\n\n",
            prop.name, prop.multiProcessorCount, (double)prop.totalGlobalMem / (1 << 30), desc,
            graphs ? (g.graphs_off ? "asked for but turned off" : "on") : "off",
            pd_cuda_attn_tile_kernel_name(pd_cuda_attn_tile_kernel()),
            pd_cuda_attn_decode_lean() ? "as one lean wave of thread blocks, its parts merged by a "
                                         "second kernel"
            : pd_cuda_attn_decode_cluster()
                ? "splits merged in thread-block clusters (up to 8 splits)"
                : "splits merged by a second kernel");
    fprintf(f,
            "Command: `cuda_model_bench MODEL.gguf --out FILE%s` with MODEL.gguf from "
            "`prefixd-mkgguf -o MODEL.gguf --like smollm2-135m`.\n\n",
            graphs ? "" : " --no-graphs");
    fprintf(f, "| figure | measured | target | verdict |\n| --- | --- | --- | --- |\n");
    for (int pdl = 0; pdl < n_pdl; pdl++)
      for (int fused = 0; fused < 2; fused++) {
        const double tps = STEPS1 / t_dec1_by[pdl][fused];
        fprintf(f,
                "| decode, batch 1 (context %d..%d), %s%s | %.0f tokens/s (%.3f ms/token) | >= "
                "1,000 tokens/s | %s |\n",
                PROMPT + WARM, PROMPT + WARM + STEPS1,
                fused ? "RMSNorm, RoPE and SwiGLU fused into the GEMVs (fused_gemv = 1)"
                      : "separate RMSNorm, RoPE and SwiGLU kernels",
                pdl ? ", PDL" : "", tps, 1e3 * t_dec1_by[pdl][fused] / STEPS1,
                tps >= 1000 ? "met" : "not met");
      }
    for (int pdl = 0; pdl < n_pdl; pdl++)
      fprintf(f,
              "| decode, batch 64 (context %d..%d each)%s | %.0f tokens/s aggregate (%.3f "
              "ms/step) | >= 20,000 tokens/s | %s |\n",
              PROMPT + WARM, PROMPT + WARM + STEPS64, pdl ? ", PDL" : "", dec64_tps_by[pdl],
              dec64_ms_by[pdl], dec64_tps_by[pdl] >= 20000 ? "met" : "not met");
    for (int pdl = 0; pdl < n_pdl; pdl++)
      fprintf(f,
              "| prefill, %d tokens in one call (median of %d)%s | %.2f ms (%.0f tokens/s) | <= "
              "15 ms | %s |\n",
              PREFILL, PREFILL_RUNS, pdl ? ", PDL" : "", prefill_ms_by[pdl],
              PREFILL / (prefill_ms_by[pdl] / 1e3), prefill_ms_by[pdl] <= 15.0 ? "met" : "not met");
    fprintf(f,
            "\nBatch 64 and prefill ran with fused_gemv = %d (the fusion applies to steps of at "
            "most %d rows). PDL: programmatic dependent launch (pd_cuda_launch.h), %s.\n",
            fused_default, PD_CUDA_GEMV_MAX_ROWS,
            !pdl_ok       ? "not supported on this GPU"
            : pdl_refused ? "REFUSED by the runtime during the run: the rows marked PDL ran plain"
                          : "measured in the rows marked PDL");
    fprintf(f, "\nSteps: %llu eager, %llu graph captures, %llu graph replays.\n",
            (unsigned long long)g.n_eager, (unsigned long long)g.n_captures,
            (unsigned long long)g.n_replays);
    fclose(f);
  }
  free(table), free(tok);
  pd_llama_cuda_pool_free(pool);
  pd_llama_cuda_free(&g);
  pd_model_free(m);
  return 0;
}
