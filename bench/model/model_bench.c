/*
 * model_bench.c -- CPU model runtime figures on a real GGUF: prefill tokens/s for a 1,024-token
 * prompt, decode tokens/s at batch 1 and batch 8 (8 sequences stepping together, each after its
 * own 64-token prompt), in both matmul modes with an f16 KV cache; then, in fast mode, the same
 * figures for each KV cache dtype (f32, f16, bf16, fp8-e4m3) beside its bytes per token.
 *
 * usage: model_bench MODEL.gguf [--threads N|auto] [--out results.md] [--quick]
 *
 * --threads auto asks pd_cpu_share before every forward pass, as the daemon's engine does by
 * default (after one unmeasured run, so that it has sampled the machine).
 *
 * --quick measures fast mode with an f16 KV cache only and prints one line,
 * "prefill P decode0 D0 decode1024 D1 decode8 D8" (tokens/s), for scripts that compare many
 * files (bench/model/compare_formats.sh).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "pd_cpu_share.h"
#include "pd_llama.h"
#include "pd_model.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

typedef struct figures {
  double prefill_tps, decode0_tps, decode1_tps, decode8_tps;
} figures;

/* --threads auto: the thread count the daemon's engine would use (pd_cpu_share), asked before
 * every forward pass as the engine does before every step. */
static int auto_threads;
static pd_cpu_share share;

static int forward(pd_llama *ctx, void *pool, pd_llama_seq *seqs, int n, float *logits) {
#ifdef _OPENMP
  if (auto_threads) omp_set_num_threads(pd_cpu_share_update(&share, (int64_t)(now_s() * 1e3)));
#endif
  return pd_llama_forward(ctx, pool, seqs, n, logits);
}

static int measure(pd_model *m, enum pd_matmul_mode mode, enum pd_dtype cache, figures *f,
                   size_t *kv_bytes_per_token) {
  const int B = 16, prompt = 1024, steps = 64, batch = 8, short_prompt = 64;
  pd_llama ctx;
  if (pd_llama_init(&ctx, m, B, cache, mode, 256, batch)) return 1;
  *kv_bytes_per_token = pd_kv_block_bytes(&ctx.kv) / (size_t)B;
  int blocks_per_seq = (prompt + steps + B - 1) / B + 1;
  uint8_t *pool = calloc((size_t)blocks_per_seq * batch, pd_kv_block_bytes(&ctx.kv));
  int32_t *table = malloc(sizeof(int32_t) * (size_t)blocks_per_seq * batch);
  float *logits = malloc(sizeof(float) * (size_t)m->n_vocab * batch);
  int32_t *tok = malloc(sizeof(int32_t) * prompt);
  if (!pool || !table || !logits || !tok) return 1;
  for (int i = 0; i < blocks_per_seq * batch; i++) table[i] = i;
  for (int i = 0; i < prompt; i++) tok[i] = 100 + (i * 7919) % 40000;
  /* decode at batch 1 from an empty context (what llama-bench's tg measures), in the blocks of
   * sequence 1, which the batch-8 run below overwrites */
  double t0 = now_s();
  for (int i = 0; i < steps; i++) {
    int32_t t = tok[i];
    pd_llama_seq s = {&t, 1, i, table + blocks_per_seq, blocks_per_seq, 1};
    if (forward(&ctx, pool, &s, 1, logits)) return 1;
  }
  f->decode0_tps = steps / (now_s() - t0);
  /* prefill 1,024 tokens in chunks of 256 */
  t0 = now_s();
  for (int i = 0; i < prompt; i += 256) {
    pd_llama_seq s = {tok + i, 256, i, table, blocks_per_seq, i + 256 == prompt};
    if (forward(&ctx, pool, &s, 1, logits)) return 1;
  }
  f->prefill_tps = prompt / (now_s() - t0);
  /* decode at batch 1 after the 1,024-token prompt */
  t0 = now_s();
  for (int i = 0; i < steps; i++) {
    int32_t t = tok[i];
    pd_llama_seq s = {&t, 1, prompt + i, table, blocks_per_seq, 1};
    if (forward(&ctx, pool, &s, 1, logits)) return 1;
  }
  f->decode1_tps = steps / (now_s() - t0);
  /* decode at batch 8: 8 sequences with 64-token prompts step together */
  pd_llama_seq seqs[8];
  for (int b = 0; b < batch; b++) {
    seqs[b] =
        (pd_llama_seq){tok + b, short_prompt, 0, table + b * blocks_per_seq, blocks_per_seq, 1};
    if (forward(&ctx, pool, &seqs[b], 1, logits)) return 1;
  }
  int32_t step_tok[8];
  t0 = now_s();
  for (int i = 0; i < steps; i++) {
    for (int b = 0; b < batch; b++) {
      step_tok[b] = tok[(i + b) % prompt];
      seqs[b] = (pd_llama_seq){&step_tok[b],   1, short_prompt + i, table + b * blocks_per_seq,
                               blocks_per_seq, 1};
    }
    if (forward(&ctx, pool, seqs, batch, logits)) return 1;
  }
  f->decode8_tps = (double)steps * batch / (now_s() - t0);
  free(pool), free(table), free(logits), free(tok);
  pd_llama_free(&ctx);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: model_bench MODEL.gguf [--threads N|auto] [--out FILE] [--quick]\n");
    return 2;
  }
  const char *out = NULL;
  int threads = 0, quick = 0;
  for (int i = 2; i < argc; i++) {
    if (!strcmp(argv[i], "--threads") && i + 1 < argc && !strcmp(argv[i + 1], "auto"))
      auto_threads = 1, i++;
    else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
      threads = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--out") && i + 1 < argc)
      out = argv[++i];
    else if (!strcmp(argv[i], "--quick"))
      quick = 1;
    else {
      fprintf(stderr, "model_bench: unknown option %s\n", argv[i]);
      return 2;
    }
  }
#ifdef _OPENMP
  if (threads > 0) omp_set_num_threads(threads);
  threads = omp_get_max_threads();
#endif
  pd_model *m;
  char err[256], desc[512];
  if (pd_model_load(argv[1], &m, err, sizeof err)) {
    fprintf(stderr, "model_bench: %s\n", err);
    return 1;
  }
  pd_model_describe(m, desc, sizeof desc);
  figures fe, ff, fd[4];
  size_t kvb, kvbd[4];
  if (auto_threads) { /* one run first, so that the sampler has seen the machine (seconds) */
    pd_cpu_share_init(&share);
    if (measure(m, PD_MATMUL_FAST, PD_DTYPE_F16, &ff, &kvb)) {
      fprintf(stderr, "model_bench: run failed\n");
      return 1;
    }
  }
  if (quick) {
    if (measure(m, PD_MATMUL_FAST, PD_DTYPE_F16, &ff, &kvb)) {
      fprintf(stderr, "model_bench: run failed\n");
      return 1;
    }
    printf("prefill %.1f decode0 %.1f decode1024 %.1f decode8 %.1f\n", ff.prefill_tps,
           ff.decode0_tps, ff.decode1_tps, ff.decode8_tps);
    pd_model_free(m);
    return 0;
  }
  static const enum pd_dtype caches[4] = {PD_DTYPE_F32, PD_DTYPE_F16, PD_DTYPE_BF16,
                                          PD_DTYPE_FP8_E4M3};
  if (measure(m, PD_MATMUL_EXACT, PD_DTYPE_F16, &fe, &kvb) ||
      measure(m, PD_MATMUL_FAST, PD_DTYPE_F16, &ff, &kvb)) {
    fprintf(stderr, "model_bench: run failed\n");
    return 1;
  }
  for (int i = 0; i < 4; i++)
    if (measure(m, PD_MATMUL_FAST, caches[i], &fd[i], &kvbd[i])) {
      fprintf(stderr, "model_bench: run failed (%s cache)\n", pd_dtype_name(caches[i]));
      return 1;
    }
  char table[1024];
  snprintf(table, sizeof table,
           "| figure (f16 KV cache, %d threads) | exact mode | fast mode |\n| --- | --- | --- |\n"
           "| prefill of a 1,024-token prompt | %.1f tok/s | %.1f tok/s |\n"
           "| decode, batch 1 (from an empty context, 64 tokens) | %.1f tok/s | %.1f tok/s |\n"
           "| decode, batch 1 (after 1,024 tokens) | %.1f tok/s | %.1f tok/s |\n"
           "| decode, batch 8 (aggregate) | %.1f tok/s | %.1f tok/s |\n",
           threads, fe.prefill_tps, ff.prefill_tps, fe.decode0_tps, ff.decode0_tps, fe.decode1_tps,
           ff.decode1_tps, fe.decode8_tps, ff.decode8_tps);
  char by_cache[1024];
  int n = snprintf(by_cache, sizeof by_cache,
                   "| KV cache (fast mode) | KV bytes per token | prefill 1,024 | decode after "
                   "1,024 | decode, batch 8 |\n| --- | --- | --- | --- | --- |\n");
  for (int i = 0; i < 4; i++)
    n += snprintf(by_cache + n, sizeof by_cache - (size_t)n,
                  "| %s | %zu | %.1f tok/s | %.1f tok/s | %.1f tok/s |\n", pd_dtype_name(caches[i]),
                  kvbd[i], fd[i].prefill_tps, fd[i].decode1_tps, fd[i].decode8_tps);
  printf("%s\n%s\n%s", desc, table, by_cache);
  if (out) {
    FILE *f = fopen(out, "w");
    if (!f) return 1;
    struct utsname u;
    uname(&u);
    time_t now = time(NULL);
    char date[64];
    strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", gmtime(&now));
    fprintf(f,
            "# CPU model runtime: prefill and decode\n\nCommand: `build/bench/model/model_bench %s "
            "--threads %d --out %s`\n\nMachine: %d threads, %s %s; %s. Model: %s\n\n%s\n"
            "## By KV cache dtype\n\nfp8-e4m3 keeps an f32 scale per row of head_dim values "
            "(kernels/cpu/pd_attention.h).\n\n%s\n",
            argv[1], threads, out, threads, u.sysname, u.release, date, desc, table, by_cache);
    fclose(f);
  }
  pd_model_free(m);
  return 0;
}
