/*
 * attn_cpu_bench.c -- the CPU's decode attention (pd_attn_paged) beside the memory's read rate.
 *
 * Decode attention reads every cached K and V row of every sequence once a step and does little
 * arithmetic on each, so its limit is the rate at which the machine reads memory. This bench
 * measures, in one run:
 *   - the read rate of the memory: a 2-thread (or --threads) sum over a buffer four times the
 *     largest pool below, the physical limit;
 *   - one decode step of the default model's attention (30 layers, 9 query heads over 3 KV
 *     heads, head_dim 64, 16-token blocks) at 1,024 and 4,096 tokens of context, batch 1 and 8,
 *     with the blocks scattered through the pool as a long-running daemon leaves them, in the
 *     f16 and fp8-e4m3 caches;
 *   - each with the software prefetch of the next blocks off and on (pd_attn_set_prefetch_blocks),
 *     alternating, best of --reps;
 *   - the same steps with the whole pool in cache (every sequence's table pointing into the same 8
 *     blocks, rotated): the arithmetic's own limit, which no prefetch can beat.
 * Figures: ms a step (all 30 layers) and KV bytes read per second.
 *
 *   build/bench/model/attn_cpu_bench [--threads N] [--reps N] [--out FILE.md]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "pd_attention.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

enum { LAYERS = 30, N_HEADS = 9, N_KV = 3, HEAD_DIM = 64, BLOCK = 16, HOT_BLOCKS = 8 };

/* One configuration: a pool of n_seqs sequences of ctx tokens each, in scattered blocks. */
typedef struct attn_world {
  pd_kv_layout L;
  uint8_t *pool;     /* (n_blocks, block bytes) */
  int32_t *tables;   /* (n_seqs, blocks_per_seq): scattered, or all in HOT_BLOCKS when hot */
  int32_t *hot;      /* (n_seqs, blocks_per_seq): ids < HOT_BLOCKS, rotated per sequence */
  float *q, *out;    /* (n_seqs, N_HEADS, HEAD_DIM) */
  pd_attn_seq *seqs; /* (n_seqs) */
  int n_seqs, ctx, blocks_per_seq;
} attn_world;

static void world_free(attn_world *w) {
  free(w->pool), free(w->tables), free(w->hot), free(w->q), free(w->out), free(w->seqs);
}

static int world_init(attn_world *w, enum pd_dtype dt, int n_seqs, int ctx) {
  memset(w, 0, sizeof *w);
  w->L = (pd_kv_layout){LAYERS, N_KV, HEAD_DIM, BLOCK, dt};
  w->n_seqs = n_seqs, w->ctx = ctx, w->blocks_per_seq = (ctx + BLOCK - 1) / BLOCK;
  const size_t n_blocks = (size_t)n_seqs * (size_t)w->blocks_per_seq, bb = pd_kv_block_bytes(&w->L);
  w->pool = malloc(n_blocks * bb);
  w->tables = malloc(sizeof(int32_t) * n_blocks);
  w->hot = malloc(sizeof(int32_t) * n_blocks);
  w->q = malloc(sizeof(float) * (size_t)n_seqs * N_HEADS * HEAD_DIM);
  w->out = malloc(sizeof(float) * (size_t)n_seqs * N_HEADS * HEAD_DIM);
  w->seqs = calloc((size_t)n_seqs, sizeof *w->seqs);
  if (!w->pool || !w->tables || !w->hot || !w->q || !w->out || !w->seqs) return 1;
  /* the pool's bytes: small finite values in every dtype (f16 0x3000.. is 0.125 and up, fp8 bytes
   * below 0x40 are below 2, the fp8 scales 1/64) */
  if (dt == PD_DTYPE_FP8_E4M3) {
    for (size_t b = 0; b < n_blocks; b++) {
      uint8_t *blk = w->pool + b * bb;
      for (size_t i = 0; i < bb; i++) blk[i] = (uint8_t)(i * 7 % 0x3f);
      const float scale = 1.0f / 64.0f;
      for (int l = 0; l < LAYERS; l++)
        for (int kv = 0; kv < 2; kv++)
          for (int h = 0; h < N_KV; h++)
            for (int r = 0; r < BLOCK; r++)
              memcpy(blk + pd_kv_scale_offset(&w->L, l, kv, h, r), &scale, sizeof scale);
    }
  } else {
    uint16_t *e = (uint16_t *)w->pool;
    for (size_t i = 0; i < n_blocks * bb / 2; i++) e[i] = (uint16_t)(0x3000 + i % 977);
  }
  /* a shuffled permutation of the blocks: the pool of a daemon that has run for a while */
  for (size_t i = 0; i < n_blocks; i++) w->tables[i] = (int32_t)i;
  uint64_t x = 0x9e3779b97f4a7c15ull;
  for (size_t i = n_blocks - 1; i > 0; i--) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    const size_t j = (size_t)(x % (i + 1));
    const int32_t t = w->tables[i];
    w->tables[i] = w->tables[j], w->tables[j] = t;
  }
  /* the hot tables: the same 8 blocks for every sequence, rotated by the sequence's index so that
   * no two sequences hold the same blocks at the same positions (that would be a shared prefix,
   * which the cascade computes once for all) */
  for (int s = 0; s < n_seqs; s++)
    for (int b = 0; b < w->blocks_per_seq; b++)
      w->hot[(size_t)s * w->blocks_per_seq + b] = (int32_t)((b + s) % HOT_BLOCKS);
  for (size_t i = 0; i < (size_t)n_seqs * N_HEADS * HEAD_DIM; i++)
    w->q[i] = (float)(i % 13) * 0.01f;
  return 0;
}

/* Best time of reps decode steps (every layer once) through tables: the scattered or the hot
 * ones. Returns seconds, or -1 if pd_attn_paged fails. */
static double step_s(attn_world *w, const int32_t *tables, int reps) {
  for (int s = 0; s < w->n_seqs; s++)
    w->seqs[s] =
        (pd_attn_seq){tables + (size_t)s * w->blocks_per_seq, w->blocks_per_seq, w->ctx - 1, 1, s};
  double best = 1e30;
  for (int r = 0; r < reps; r++) {
    const double t0 = now_s();
    for (int l = 0; l < LAYERS; l++)
      if (pd_attn_paged(&w->L, w->pool, l, N_HEADS, w->q, w->out, w->seqs, w->n_seqs, 0.125f))
        return -1;
    const double t = now_s() - t0;
    best = t < best ? t : best;
  }
  return best;
}

static volatile uint64_t read_sink;

/* The machine's read rate over bytes: best of reps sums of 64-bit words. */
static double read_gbs(size_t bytes, int reps) {
  const size_t n = bytes / sizeof(uint64_t);
  uint64_t *buf = malloc(n * sizeof *buf);
  if (!buf) return -1;
  for (size_t i = 0; i < n; i++) buf[i] = i;
  double best = 1e30;
  for (int r = 0; r < reps; r++) {
    const double t0 = now_s();
    uint64_t acc = 0;
#pragma omp parallel for reduction(^ : acc) schedule(static)
    for (size_t i = 0; i < n; i++) acc ^= buf[i];
    const double t = now_s() - t0;
    read_sink ^= acc; /* the sum is used, so the loop is kept */
    best = t < best ? t : best;
  }
  free(buf);
  return (double)(n * sizeof *buf) / best / 1e9;
}

int main(int argc, char **argv) {
  int threads = 0, reps = 7;
  const char *out_path = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--threads") && i + 1 < argc)
      threads = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
      reps = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--out") && i + 1 < argc)
      out_path = argv[++i];
    else {
      fprintf(stderr, "usage: attn_cpu_bench [--threads N] [--reps N] [--out FILE.md]\n");
      return 2;
    }
  }
  if (reps < 1) reps = 1;
#ifdef _OPENMP
  if (threads > 0) omp_set_num_threads(threads);
  threads = omp_get_max_threads();
#else
  threads = 1;
#endif
  const struct { int n_seqs, ctx; } shapes[] = {{1, 1024}, {1, 4096}, {8, 1024}, {8, 4096}};
  const enum pd_dtype dtypes[] = {PD_DTYPE_F16, PD_DTYPE_FP8_E4M3};
  const int n_shapes = (int)(sizeof shapes / sizeof shapes[0]);

  char table[8192];
  size_t len = 0;
  size_t largest = 0;
  for (int d = 0; d < 2; d++) {
    pd_kv_layout L = {LAYERS, N_KV, HEAD_DIM, BLOCK, dtypes[d]};
    for (int i = 0; i < n_shapes; i++) {
      size_t bytes = pd_kv_block_bytes(&L) * (size_t)shapes[i].n_seqs *
                     (size_t)((shapes[i].ctx + BLOCK - 1) / BLOCK);
      largest = bytes > largest ? bytes : largest;
    }
  }
  const double limit = read_gbs(largest * 2, reps);
  if (limit <= 0) {
    fprintf(stderr, "attn_cpu_bench: out of memory\n");
    return 1;
  }
  len += (size_t)snprintf(
      table + len, sizeof table - len,
      "| cache | batch x context | prefetch off | prefetch 4 blocks | speedup | in cache "
      "(arithmetic's limit) |\n| --- | --- | --- | --- | --- | --- |\n");
  for (int d = 0; d < 2; d++)
    for (int i = 0; i < n_shapes; i++) {
      attn_world w;
      if (world_init(&w, dtypes[d], shapes[i].n_seqs, shapes[i].ctx)) {
        fprintf(stderr, "attn_cpu_bench: out of memory\n");
        world_free(&w);
        return 1;
      }
      /* KV bytes a step reads: every row of every layer, scales included */
      const double kv_bytes = (double)pd_kv_block_bytes(&w.L) / BLOCK * w.ctx * w.n_seqs;
      double off = 1e30, on = 1e30;
      for (int r = 0; r < reps; r++) { /* alternating, so drift hits both alike */
        pd_attn_set_prefetch_blocks(0);
        const double a = step_s(&w, w.tables, 1);
        pd_attn_set_prefetch_blocks(-1);
        const double b = step_s(&w, w.tables, 1);
        off = a < off ? a : off, on = b < on ? b : on;
      }
      const double hot = step_s(&w, w.hot, reps);
      world_free(&w);
      if (off < 0 || on < 0 || hot < 0) {
        fprintf(stderr, "attn_cpu_bench: pd_attn_paged failed\n");
        return 1;
      }
      len += (size_t)snprintf(
          table + len, sizeof table - len,
          "| %s | %d x %d | %.2f ms (%.1f GB/s) | %.2f ms (%.1f GB/s, %.0f%% of read) | %.2fx | "
          "%.2f ms (%.1f GB/s) |\n",
          pd_dtype_name(dtypes[d]), shapes[i].n_seqs, shapes[i].ctx, off * 1e3,
          kv_bytes / off / 1e9, on * 1e3, kv_bytes / on / 1e9, 100.0 * kv_bytes / on / 1e9 / limit,
          off / on, hot * 1e3, kv_bytes / hot / 1e9);
      fprintf(stderr, "%s %d x %d done\n", pd_dtype_name(dtypes[d]), shapes[i].n_seqs,
              shapes[i].ctx);
    }
  struct utsname u;
  uname(&u);
  FILE *f = out_path ? fopen(out_path, "w") : stdout;
  if (!f) {
    fprintf(stderr, "attn_cpu_bench: cannot write %s\n", out_path);
    return 1;
  }
  fprintf(f,
          "# CPU decode attention beside the memory's read rate\n\n"
          "Command: `build/bench/model/attn_cpu_bench --threads %d --reps %d` (%s %s, %d "
          "threads).\n\n"
          "One decode step of the default model's attention (30 layers, 9 heads over 3 KV heads, "
          "head_dim 64, 16-token blocks scattered through the pool), ms a step and KV read "
          "rate. Memory read rate on this machine, same run: %.1f GB/s (%d threads summing a "
          "buffer 2x the largest pool).\n\n%s",
          threads, reps, u.sysname, u.machine, threads, limit, threads, table);
  if (f != stdout) fclose(f);
  return 0;
}
