/*
 * attn_bench.c -- the CUDA paged decode attention's throughput, beside the device's own copy
 * bandwidth measured in the same run (cudaMemcpy device-to-device of 1 GiB, counting read and
 * write), on two shapes:
 *   the default model's: 64 sequences, 9 query / 3 KV heads, head_dim 64, 2,048 tokens;
 *   a larger model's:    16 sequences, 32 / 8 heads, head_dim 128, 4,096 tokens.
 * KV bytes read = n_seqs * ctx * n_kv * head_dim * 2 (K and V) * 2 bytes (f16).
 * The blocks of each sequence are scattered over the pool (a shuffled block table).
 *
 * usage: attn_bench [--out results.md]
 */
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_attention.h"
#include "pd_cuda_attention.h"

#define CK(x)                                                                                      \
  do {                                                                                             \
    cudaError_t e_ = (x);                                                                          \
    if (e_ != cudaSuccess) {                                                                       \
      fprintf(stderr, "attn_bench: %s: %s\n", #x, cudaGetErrorString(e_));                         \
      exit(1);                                                                                     \
    }                                                                                              \
  } while (0)

static double copy_gbps(void) {
  size_t n = (size_t)1 << 30;
  void *a, *b;
  CK(cudaMalloc(&a, n));
  CK(cudaMalloc(&b, n));
  CK(cudaMemset(a, 1, n));
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0), cudaEventCreate(&e1);
  CK(cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice));
  cudaEventRecord(e0, 0);
  for (int i = 0; i < 10; i++) CK(cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice));
  cudaEventRecord(e1, 0);
  cudaEventSynchronize(e1);
  float ms;
  cudaEventElapsedTime(&ms, e0, e1);
  cudaFree(a), cudaFree(b);
  return 2.0 * n * 10 / (ms / 1e3) / 1e9; /* read + write */
}

typedef struct shape {
  const char *name;
  int n_seqs, n_heads, n_kv, hd, ctx;
} shape;

static double run_shape(const shape *s, double *us) {
  const int B = 16;
  pd_kv_layout L = {1, s->n_kv, s->hd, B, PD_DTYPE_F16};
  int max_blocks = (s->ctx + B - 1) / B, n_blocks = max_blocks * s->n_seqs;
  size_t bb = pd_kv_block_bytes(&L);
  int32_t *tables = malloc(sizeof(int32_t) * (size_t)n_blocks),
          *ctx = malloc(sizeof(int32_t) * s->n_seqs);
  for (int i = 0; i < n_blocks; i++) tables[i] = i;
  uint64_t r = 7;
  for (int i = n_blocks - 1; i > 0; i--) {
    r ^= r << 13, r ^= r >> 7, r ^= r << 17;
    int j = (int)(r % (uint64_t)(i + 1));
    int32_t t = tables[i];
    tables[i] = tables[j], tables[j] = t;
  }
  for (int i = 0; i < s->n_seqs; i++) ctx[i] = s->ctx;
  void *pool, *q, *out, *d_tables, *d_ctx, *ws;
  size_t qn = (size_t)s->n_seqs * s->n_heads * s->hd;
  CK(cudaMalloc(&pool, bb * (size_t)n_blocks));
  CK(cudaMemset(pool, 0x3c, bb * (size_t)n_blocks)); /* f16 ~1.06 everywhere */
  CK(cudaMalloc(&q, qn * 4));
  CK(cudaMemset(q, 0, qn * 4));
  CK(cudaMalloc(&out, qn * 4));
  CK(cudaMalloc(&d_tables, sizeof(int32_t) * (size_t)n_blocks));
  CK(cudaMalloc(&d_ctx, sizeof(int32_t) * s->n_seqs));
  CK(cudaMalloc(&ws, pd_cuda_attn_workspace_bytes(s->n_seqs, s->n_heads, s->hd, s->ctx)));
  CK(cudaMemcpy(d_tables, tables, sizeof(int32_t) * (size_t)n_blocks, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(d_ctx, ctx, sizeof(int32_t) * s->n_seqs, cudaMemcpyHostToDevice));
  char err[256];
  float scale = 1.0f / sqrtf((float)s->hd);
  for (int i = 0; i < 3; i++)
    if (pd_cuda_attn_decode(&L, pool, 0, s->n_heads, q, out, d_tables, max_blocks, d_ctx, s->n_seqs,
                            s->ctx, scale, ws, NULL, err, sizeof err)) {
      fprintf(stderr, "attn_bench: %s\n", err);
      exit(1);
    }
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0), cudaEventCreate(&e1);
  int iters = 50;
  cudaEventRecord(e0, 0);
  for (int i = 0; i < iters; i++)
    pd_cuda_attn_decode(&L, pool, 0, s->n_heads, q, out, d_tables, max_blocks, d_ctx, s->n_seqs,
                        s->ctx, scale, ws, NULL, err, sizeof err);
  cudaEventRecord(e1, 0);
  CK(cudaEventSynchronize(e1));
  float ms;
  cudaEventElapsedTime(&ms, e0, e1);
  *us = ms * 1e3 / iters;
  double bytes = (double)s->n_seqs * s->ctx * s->n_kv * s->hd * 2 * 2;
  cudaFree(pool), cudaFree(q), cudaFree(out), cudaFree(d_tables), cudaFree(d_ctx), cudaFree(ws);
  free(tables), free(ctx);
  return bytes / (*us / 1e6) / 1e9;
}

int main(int argc, char **argv) {
  const char *outp = argc > 2 && !strcmp(argv[1], "--out") ? argv[2] : NULL;
  if (pd_cuda_device_count() == 0) {
    fprintf(stderr, "attn_bench: no CUDA device\n");
    return 1;
  }
  struct cudaDeviceProp p;
  cudaGetDeviceProperties(&p, 0);
  double copy = copy_gbps();
  shape shapes[2] = {{"default model: 64 seqs, 9/3 heads, hd 64, 2,048 tokens", 64, 9, 3, 64, 2048},
                     {"16 seqs, 32/8 heads, hd 128, 4,096 tokens", 16, 32, 8, 128, 4096}};
  char table[2048];
  int n = snprintf(
      table, sizeof table,
      "| shape | time | KV read | vs device copy (%.0f GB/s) |\n| --- | --- | --- | --- |\n", copy);
  for (int i = 0; i < 2; i++) {
    double us, gbps = run_shape(&shapes[i], &us);
    n += snprintf(table + n, sizeof table - (size_t)n, "| %s | %.1f us | %.0f GB/s | %.0f%% |\n",
                  shapes[i].name, us, gbps, 100.0 * gbps / copy);
  }
  printf("device: %s\n%s", p.name, table);
  if (outp) {
    FILE *f = fopen(outp, "w");
    if (!f) return 1;
    fprintf(f,
            "# CUDA paged decode attention\n\nDevice: %s. Command: `build/bench/cuda/attn_bench "
            "--out %s`"
            " (the PyTorch SDPA line comes from `bench/cuda/sdpa_ref.py` in the same run).\n\n%s\n",
            p.name, outp, table);
    fclose(f);
  }
  return 0;
}
