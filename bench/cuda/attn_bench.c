/*
 * attn_bench.c -- the CUDA attention kernels and block transfers, beside the device's own copy
 * bandwidths measured in the same run.
 *
 * 1. Decode (pd_cuda_attn_decode) with an f16 and with an fp8-e4m3 cache, beside cudaMemcpy
 *    device-to-device of 1 GiB (read + write), on two shapes:
 *      the default model's: 64 sequences, 9 query / 3 KV heads, head_dim 64, 2,048 tokens;
 *      a larger model's:    16 sequences, 32 / 8 heads, head_dim 128, 4,096 tokens.
 *    The same calls again with programmatic dependent launch (PDL), with the splits merged in a
 *    thread-block cluster instead of by merge_seq, and with both, where the GPU has them; and as
 *    one lean wave of thread blocks (pd_cuda_attn_set_decode_lean), plain and with PDL.
 *    KV bytes read = n_seqs * ctx * n_kv * 2 (K and V) * (head_dim * 2 bytes (f16), or
 *    head_dim + 4 bytes (fp8 and its row scale)). The blocks of each sequence are scattered over
 *    the pool (a shuffled block table).
 * 2. Cascade: 64 sequences sharing a 4,096-token prefix (256 blocks), each with its own 64-token
 *    tail, one decode row each, the default model's shape: pd_cuda_attn with shared_blocks = 256
 *    (prefix on the tf32, the SIMT and the f16 tile kernel) against the same batch with
 *    shared_blocks = 0 (per-sequence paged decode); and the prefix split coarser than the
 *    default's 128 positions a thread block (pd_cuda_attn_set_cascade_split), with the f16 kernel
 *    also under programmatic dependent launch (PDL, pd_cuda_launch.h), and with that and the
 *    decode merge in a cluster (pd_cuda_attn_set_decode_cluster). Timed with L2
 *    flushed before every call (a 256 MiB memset outside the timed range: in a forward pass
 *    the weights stream through L2 between two attention calls) and warm (back-to-back calls).
 * 3. Prefill: 4,096 new tokens on the default model's shape (9 / 3 heads, head_dim 64, f16), one
 *    layer's pd_cuda_attn, and that x 30 layers; also after 28,672 cached tokens; tf32, f16 and
 *    SIMT tile kernels; and from 0 cached tokens with the causal tiles handed out in launch order
 *    (pd_cuda_attn_set_prefill_order(0)) instead of longest first. FLOPs counted:
 *    4 * n_heads * head_dim per (row, visible position).
 * 4. Restore: N scattered blocks of the default model (2 * 30 * 3 * 16 * 64 * 2 = 368,640 bytes)
 *    from pinned host slots (shuffled) to pool blocks (shuffled) through
 *    pd_cuda_blocks_from_host in each transfer mode, beside one pinned 64 MiB cudaMemcpyAsync
 *    host-to-device in the same run; and the spill direction (pd_cuda_blocks_to_host).
 *
 * usage: attn_bench [--out results.md] [--decode-only]
 *   --decode-only: section 1 alone (for sweeps of PD_CUDA_DECODE_GRID, one process each: the
 *   kernel reads the variable once)
 */
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_attention.h"
#include "pd_cuda_attention.h"
#include "pd_cuda_batch.h"
#include "pd_cuda_launch.h"

#define CK(x)                                                                                      \
  do {                                                                                             \
    cudaError_t e_ = (x);                                                                          \
    if (e_ != cudaSuccess) {                                                                       \
      fprintf(stderr, "attn_bench: %s: %s\n", #x, cudaGetErrorString(e_));                         \
      exit(1);                                                                                     \
    }                                                                                              \
  } while (0)

#define PD(x)                                                                                      \
  do {                                                                                             \
    if ((x) != 0) {                                                                                \
      fprintf(stderr, "attn_bench: %s: %s\n", #x, err);                                            \
      exit(1);                                                                                     \
    }                                                                                              \
  } while (0)

static char err[256];
static uint64_t rng = 7;
static uint64_t next_u64(void) {
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  return rng;
}
static void shuffle(int32_t *a, int n) {
  for (int i = n - 1; i > 0; i--) {
    int j = (int)(next_u64() % (uint64_t)(i + 1));
    int32_t t = a[i];
    a[i] = a[j], a[j] = t;
  }
}

static void *dev_upload(const void *h, size_t n) {
  void *d;
  CK(cudaMalloc(&d, n));
  CK(cudaMemcpy(d, h, n, cudaMemcpyHostToDevice));
  return d;
}

static double copy_gbps(void) {
  size_t n = (size_t)1 << 30;
  void *a, *b;
  CK(cudaMalloc(&a, n));
  CK(cudaMalloc(&b, n));
  CK(cudaMemset(a, 1, n));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  CK(cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice));
  CK(cudaEventRecord(e0, 0));
  for (int i = 0; i < 10; i++) CK(cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice));
  CK(cudaEventRecord(e1, 0));
  CK(cudaEventSynchronize(e1));
  float ms;
  CK(cudaEventElapsedTime(&ms, e0, e1));
  cudaFree(a), cudaFree(b);
  cudaEventDestroy(e0), cudaEventDestroy(e1);
  return 2.0 * n * 10 / (ms / 1e3) / 1e9; /* read + write */
}

/* ---- 1. decode through the legacy entry point ------------------------------------------------- */

typedef struct shape {
  const char *name;
  int n_seqs, n_heads, n_kv, hd, ctx;
} shape;

static double run_shape(const shape *s, enum pd_dtype dt, double *us) {
  const int B = 16;
  pd_kv_layout L = {1, s->n_kv, s->hd, B, dt};
  int max_blocks = (s->ctx + B - 1) / B, n_blocks = max_blocks * s->n_seqs;
  size_t bb = pd_kv_block_bytes(&L);
  int32_t *tables = malloc(sizeof(int32_t) * (size_t)n_blocks),
          *ctx = malloc(sizeof(int32_t) * s->n_seqs);
  for (int i = 0; i < n_blocks; i++) tables[i] = i;
  shuffle(tables, n_blocks);
  for (int i = 0; i < s->n_seqs; i++) ctx[i] = s->ctx;
  void *pool, *q, *out, *ws;
  size_t qn = (size_t)s->n_seqs * s->n_heads * s->hd;
  CK(cudaMalloc(&pool, bb * (size_t)n_blocks));
  CK(cudaMemset(pool, 0x3c, bb * (size_t)n_blocks)); /* f16 ~1.06; fp8 1.5 x scale 0.0115 */
  CK(cudaMalloc(&q, qn * 4));
  CK(cudaMemset(q, 0, qn * 4));
  CK(cudaMalloc(&out, qn * 4));
  void *d_tables = dev_upload(tables, sizeof(int32_t) * (size_t)n_blocks);
  void *d_ctx = dev_upload(ctx, sizeof(int32_t) * s->n_seqs);
  CK(cudaMalloc(&ws, pd_cuda_attn_workspace_bytes(s->n_seqs, s->n_heads, s->hd, s->ctx)));
  float scale = 1.0f / sqrtf((float)s->hd);
  for (int i = 0; i < 3; i++)
    PD(pd_cuda_attn_decode(&L, pool, 0, s->n_heads, q, out, d_tables, max_blocks, d_ctx, s->n_seqs,
                           s->ctx, scale, ws, NULL, err, sizeof err));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  int iters = 50;
  CK(cudaEventRecord(e0, 0));
  for (int i = 0; i < iters; i++)
    PD(pd_cuda_attn_decode(&L, pool, 0, s->n_heads, q, out, d_tables, max_blocks, d_ctx, s->n_seqs,
                           s->ctx, scale, ws, NULL, err, sizeof err));
  CK(cudaEventRecord(e1, 0));
  CK(cudaEventSynchronize(e1));
  float ms;
  CK(cudaEventElapsedTime(&ms, e0, e1));
  *us = ms * 1e3 / iters;
  double bytes =
      (double)s->n_seqs * s->ctx * s->n_kv * 2 * (pd_kv_block_bytes(&L) / (2.0 * B * s->n_kv));
  cudaFree(pool), cudaFree(q), cudaFree(out), cudaFree(d_tables), cudaFree(d_ctx), cudaFree(ws);
  cudaEventDestroy(e0), cudaEventDestroy(e1);
  free(tables), free(ctx);
  return bytes / (*us / 1e6) / 1e9;
}

/* ---- a batch on the device for pd_cuda_attn ---------------------------------------------------- */

typedef struct dbatch {
  pd_cuda_batch b;
  void *pool, *q, *out, *ws;
  size_t ws_bytes;
} dbatch;

/* n_seqs sequences with n_past[s] cached tokens and n_new[s] rows; the first `shared` table
 * entries are the same blocks for all; every other block is its sequence's own, all shuffled. */
static void dbatch_make(dbatch *d, const pd_kv_layout *L, int n_heads, int n_seqs,
                        const int *n_past, const int *n_new, int shared) {
  const int B = L->block_tokens;
  int n_rows = 0, max_new = 0, max_ctx = 0, max_blocks = 0, own = 0;
  for (int s = 0; s < n_seqs; s++) {
    int ctx = n_past[s] + n_new[s], nb = (ctx + B - 1) / B;
    n_rows += n_new[s];
    max_new = n_new[s] > max_new ? n_new[s] : max_new;
    max_ctx = ctx > max_ctx ? ctx : max_ctx;
    max_blocks = nb > max_blocks ? nb : max_blocks;
    own += nb - shared;
  }
  int n_blocks = shared + own;
  int32_t *perm = malloc(sizeof(int32_t) * (size_t)n_blocks);
  for (int i = 0; i < n_blocks; i++) perm[i] = i;
  shuffle(perm, n_blocks);
  int32_t *tables = calloc((size_t)n_seqs * max_blocks, sizeof(int32_t));
  int32_t *np = malloc(sizeof(int32_t) * n_seqs), *nn = malloc(sizeof(int32_t) * n_seqs),
          *rs = malloc(sizeof(int32_t) * n_seqs), *rseq = malloc(sizeof(int32_t) * n_rows);
  int next = shared, row = 0;
  for (int s = 0; s < n_seqs; s++) {
    int nb = (n_past[s] + n_new[s] + B - 1) / B;
    for (int j = 0; j < nb; j++)
      tables[(size_t)s * max_blocks + j] = j < shared ? perm[j] : perm[next++];
    np[s] = n_past[s], nn[s] = n_new[s], rs[s] = row;
    for (int i = 0; i < n_new[s]; i++) rseq[row + i] = s;
    row += n_new[s];
  }
  memset(d, 0, sizeof *d);
  pd_cuda_batch *b = &d->b;
  b->n_seqs = n_seqs, b->n_rows = n_rows, b->max_blocks = max_blocks, b->max_new = max_new;
  b->max_ctx = max_ctx, b->shared_blocks = shared;
  b->block_tables = dev_upload(tables, sizeof(int32_t) * (size_t)n_seqs * max_blocks);
  b->n_past = dev_upload(np, sizeof(int32_t) * n_seqs);
  b->n_new = dev_upload(nn, sizeof(int32_t) * n_seqs);
  b->row_start = dev_upload(rs, sizeof(int32_t) * n_seqs);
  b->row_seq = dev_upload(rseq, sizeof(int32_t) * n_rows);
  size_t bb = pd_kv_block_bytes(L), qn = (size_t)n_rows * n_heads * L->head_dim;
  CK(cudaMalloc(&d->pool, bb * (size_t)n_blocks));
  CK(cudaMemset(d->pool, 0x3c, bb * (size_t)n_blocks));
  CK(cudaMalloc(&d->q, qn * 4));
  CK(cudaMemset(d->q, 0, qn * 4));
  CK(cudaMalloc(&d->out, qn * 4));
  /* room for both the cascade and the plain plan of the same batch */
  size_t w1 = pd_cuda_attn_batch_workspace_bytes(L, n_heads, b);
  b->shared_blocks = 0;
  size_t w0 = pd_cuda_attn_batch_workspace_bytes(L, n_heads, b);
  b->shared_blocks = shared;
  d->ws_bytes = w1 > w0 ? w1 : w0;
  CK(cudaMalloc(&d->ws, d->ws_bytes ? d->ws_bytes : 16));
  free(perm), free(tables), free(np), free(nn), free(rs), free(rseq);
}

static void dbatch_free(dbatch *d) {
  cudaFree((void *)d->b.block_tables), cudaFree((void *)d->b.n_past);
  cudaFree((void *)d->b.n_new), cudaFree((void *)d->b.row_start), cudaFree((void *)d->b.row_seq);
  cudaFree(d->pool), cudaFree(d->q), cudaFree(d->out), cudaFree(d->ws);
}

/* Mean microseconds of one pd_cuda_attn call; flush: memset `flush` (256 MiB) before each call,
 * outside the timed range. */
static double time_attn(dbatch *d, const pd_kv_layout *L, int n_heads, int iters, void *flush) {
  float scale = 1.0f / sqrtf((float)L->head_dim);
  for (int i = 0; i < 2; i++)
    PD(pd_cuda_attn(L, d->pool, 0, n_heads, d->q, d->out, &d->b, scale, d->ws, d->ws_bytes, NULL,
                    err, sizeof err));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  double total_ms = 0;
  if (flush) {
    for (int i = 0; i < iters; i++) {
      CK(cudaMemsetAsync(flush, i & 0xff, (size_t)256 << 20, NULL));
      CK(cudaEventRecord(e0, 0));
      PD(pd_cuda_attn(L, d->pool, 0, n_heads, d->q, d->out, &d->b, scale, d->ws, d->ws_bytes, NULL,
                      err, sizeof err));
      CK(cudaEventRecord(e1, 0));
      CK(cudaEventSynchronize(e1));
      float ms;
      CK(cudaEventElapsedTime(&ms, e0, e1));
      total_ms += ms;
    }
  } else {
    CK(cudaEventRecord(e0, 0));
    for (int i = 0; i < iters; i++)
      PD(pd_cuda_attn(L, d->pool, 0, n_heads, d->q, d->out, &d->b, scale, d->ws, d->ws_bytes, NULL,
                      err, sizeof err));
    CK(cudaEventRecord(e1, 0));
    CK(cudaEventSynchronize(e1));
    float ms;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    total_ms = ms;
  }
  CK(cudaGetLastError());
  cudaEventDestroy(e0), cudaEventDestroy(e1);
  return total_ms * 1e3 / iters;
}

/* What the columns marked PDL measured: asked for PDL where pdl_ok, and pd_cuda_launch turns it
 * off for good should the runtime refuse it. Call after the last PDL measurement. */
static const char *pdl_note(int pdl_ok) {
  if (!pdl_ok) return "PDL (programmatic dependent launch): not supported on this GPU.";
  const int before = pd_cuda_pdl();
  pd_cuda_set_pdl(1);
  const int held = pd_cuda_pdl();
  pd_cuda_set_pdl(before);
  return held ? "PDL (programmatic dependent launch, pd_cuda_launch.h): measured in the columns "
                "marked PDL."
              : "PDL was REFUSED by the runtime during the run: the columns marked PDL ran plain.";
}

/* ---- 2. cascade ------------------------------------------------------------------------------- */

static int bench_cascade(char *md, size_t cap, void *flush) {
  const int n_seqs = 64, prefix = 4096, tail = 64, n_heads = 9;
  pd_kv_layout L = {1, 3, 64, 16, PD_DTYPE_F16};
  int past[64], one[64];
  for (int s = 0; s < n_seqs; s++) past[s] = prefix + tail, one[s] = 1;
  dbatch d;
  dbatch_make(&d, &L, n_heads, n_seqs, past, one, prefix / 16);
  /* the tile kernel over the shared prefix, indexed by PD_CUDA_TILE_* */
  double casc_cold[3], casc_warm[3];
  for (int kind = 0; kind < 3; kind++) {
    pd_cuda_attn_set_tile_kernel(kind);
    casc_cold[kind] = time_attn(&d, &L, n_heads, 20, flush);
    casc_warm[kind] = time_attn(&d, &L, n_heads, 50, NULL);
  }
  /* coarser splits of the prefix (fewer, longer thread blocks; the workspace sized for the
   * default's 128 covers them), L2 flushed */
  static const int splits[4] = {128, 256, 512, 1024};
  double casc_split[4][4]; /* [split][tf32, f16, f16 with PDL, and the merge in a cluster] */
  const int pdl_default = pd_cuda_pdl(), cluster_default = pd_cuda_attn_decode_cluster();
  for (int i = 0; i < 4; i++) {
    pd_cuda_attn_set_cascade_split(splits[i]);
    for (int k = 0; k < 4; k++) {
      pd_cuda_attn_set_tile_kernel(k ? PD_CUDA_TILE_F16 : PD_CUDA_TILE_TF32);
      pd_cuda_set_pdl(k >= 2);
      pd_cuda_attn_set_decode_cluster(k == 3);
      casc_split[i][k] = time_attn(&d, &L, n_heads, 20, flush);
    }
  }
  pd_cuda_set_pdl(pdl_default);
  pd_cuda_attn_set_decode_cluster(cluster_default);
  pd_cuda_attn_set_cascade_split(0);
  pd_cuda_attn_set_tile_kernel(PD_CUDA_TILE_TF32);
  d.b.shared_blocks = 0;
  double plain_cold = time_attn(&d, &L, n_heads, 20, flush);
  double plain_warm = time_attn(&d, &L, n_heads, 50, NULL);
  dbatch_free(&d);
  double kv = (double)n_seqs * (prefix + tail + 1) * 3 * 64 * 2 * 2;
  int n = snprintf(
      md, cap,
      "| 64 seqs on a shared 4,096-token prefix (+64-token tails), 9/3 heads, hd 64, f16 | "
      "cascade, tensor cores (tf32 x2) | cascade, SIMT | cascade, tensor cores (f16) | "
      "per-sequence decode | speed-up (tf32 x2) | speed-up (f16) "
      "|\n| --- | --- | --- | --- | --- | --- | --- |\n"
      "| L2 flushed before each call | %.1f us | %.1f us | %.1f us | %.1f us (%.0f GB/s of KV) | "
      "%.2fx | %.2fx |\n"
      "| warm, back to back | %.1f us | %.1f us | %.1f us | %.1f us | %.2fx | %.2fx |\n",
      casc_cold[PD_CUDA_TILE_TF32], casc_cold[PD_CUDA_TILE_SIMT], casc_cold[PD_CUDA_TILE_F16],
      plain_cold, kv / (plain_cold / 1e6) / 1e9, plain_cold / casc_cold[PD_CUDA_TILE_TF32],
      plain_cold / casc_cold[PD_CUDA_TILE_F16], casc_warm[PD_CUDA_TILE_TF32],
      casc_warm[PD_CUDA_TILE_SIMT], casc_warm[PD_CUDA_TILE_F16], plain_warm,
      plain_warm / casc_warm[PD_CUDA_TILE_TF32], plain_warm / casc_warm[PD_CUDA_TILE_F16]);
  n +=
      snprintf(md + n, cap - (size_t)n,
               "\n| fewest prefix positions per thread block (default 128), L2 flushed | tf32 x2 | "
               "f16 | f16, PDL | f16, PDL, merge in a cluster | speed-up (f16) | speed-up (f16, "
               "PDL, cluster) |\n| --- | --- | --- | --- | --- | --- | --- |\n");
  for (int i = 0; i < 4; i++)
    n += snprintf(md + n, cap - (size_t)n,
                  "| %d | %.1f us | %.1f us | %.1f us | %.1f us | %.2fx | %.2fx |\n", splits[i],
                  casc_split[i][0], casc_split[i][1], casc_split[i][2], casc_split[i][3],
                  plain_cold / casc_split[i][1], plain_cold / casc_split[i][3]);
  return n;
}

/* ---- 3. prefill -------------------------------------------------------------------------------- */

static int bench_prefill(char *md, size_t cap) {
  const int n_heads = 9, hd = 64, n_new = 4096;
  pd_kv_layout L = {1, 3, hd, 16, PD_DTYPE_F16};
  int n =
      snprintf(md, cap,
               "| prefill of 4,096 new tokens, 9/3 heads, hd 64, f16 | kernel | one layer | x 30 "
               "layers | attention FLOP/s |\n| --- | --- | --- | --- | --- |\n");
  /* the last two rows: the tiles handed out in launch order instead of longest first */
  const int pasts[4] = {0, 28672, 0, 0}, orders[4] = {1, 1, 0, 0};
  for (int i = 0; i < 4; i++)
    for (int k = 0; k < 3; k++) {
      static const int kinds[3] = {PD_CUDA_TILE_TF32, PD_CUDA_TILE_F16, PD_CUDA_TILE_SIMT};
      if (!orders[i] && kinds[k] == PD_CUDA_TILE_SIMT) continue;
      int past = pasts[i], nn = n_new;
      pd_cuda_attn_set_tile_kernel(kinds[k]);
      pd_cuda_attn_set_prefill_order(orders[i]);
      dbatch d;
      dbatch_make(&d, &L, n_heads, 1, &past, &nn, 0);
      double us = time_attn(&d, &L, n_heads, 5, NULL);
      dbatch_free(&d);
      /* visible positions summed over rows: past + 1 .. past + n_new */
      double pos = (double)n_new * past + (double)n_new * (n_new + 1) / 2;
      double flops = 4.0 * n_heads * hd * pos;
      n += snprintf(md + n, cap - (size_t)n,
                    "| after %d cached tokens | %s%s | %.2f ms | %.1f ms | %.1f TFLOP/s |\n", past,
                    pd_cuda_attn_tile_kernel_name(kinds[k]),
                    orders[i] ? "" : ", tiles in launch order", us / 1e3, 30 * us / 1e3,
                    flops / (us / 1e6) / 1e12);
    }
  pd_cuda_attn_set_prefill_order(1);
  pd_cuda_attn_set_tile_kernel(PD_CUDA_TILE_TF32);
  return n;
}

/* ---- 4. restore / spill ------------------------------------------------------------------------ */

static int bench_restore(char *md, size_t cap) {
  const size_t bb = 368640;
  const int n = 512, n_pool = 1024, n_slots = 640;
  void *pool, *host;
  CK(cudaMalloc(&pool, bb * (size_t)n_pool));
  CK(cudaMemset(pool, 1, bb * (size_t)n_pool));
  CK(cudaHostAlloc(&host, bb * (size_t)n_slots, cudaHostAllocDefault));
  memset(host, 2, bb * (size_t)n_slots);
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  float ms;
  /* the reference: one pinned 64 MiB copy, best of 5 */
  double ref = 0;
  for (int i = 0; i < 6; i++) {
    CK(cudaEventRecord(e0, st));
    CK(cudaMemcpyAsync(pool, host, (size_t)64 << 20, cudaMemcpyHostToDevice, st));
    CK(cudaEventRecord(e1, st));
    CK(cudaEventSynchronize(e1));
    CK(cudaEventElapsedTime(&ms, e0, e1));
    double g = ((size_t)64 << 20) / (ms / 1e3) / 1e9;
    if (i && g > ref) ref = g;
  }
  int32_t *ids = malloc(sizeof(int32_t) * n_pool), *hids = malloc(sizeof(int32_t) * n_slots);
  for (int i = 0; i < n_pool; i++) ids[i] = i;
  for (int i = 0; i < n_slots; i++) hids[i] = i;
  shuffle(ids, n_pool);
  shuffle(hids, n_slots);
  int len = snprintf(md, cap,
                     "| %d scattered blocks of 368,640 B (%.0f MiB), pinned host | restore "
                     "(from_host) | vs pinned 64 MiB copy (%.1f GB/s) | spill (to_host) |\n"
                     "| --- | --- | --- | --- |\n",
                     n, n * (double)bb / (1 << 20), ref);
  const char *names[4] = {"AUTO", "MEMCPY (one cudaMemcpyAsync per run)",
                          "BATCH (cudaMemcpyBatchAsync)", "KERNEL (zero-copy gather)"};
  for (int mode = 0; mode < 4; mode++) {
    pd_cuda_blocks_set_xfer_mode(mode);
    double best_in = 0, best_out = 0;
    for (int i = 0; i < 4; i++) {
      CK(cudaEventRecord(e0, st));
      PD(pd_cuda_blocks_from_host(pool, bb, ids, n, host, hids, st, err, sizeof err));
      CK(cudaEventRecord(e1, st));
      CK(cudaEventSynchronize(e1));
      CK(cudaEventElapsedTime(&ms, e0, e1));
      double g = n * (double)bb / (ms / 1e3) / 1e9;
      if (i && g > best_in) best_in = g;
      CK(cudaEventRecord(e0, st));
      PD(pd_cuda_blocks_to_host(pool, bb, ids, n, host, hids, st, err, sizeof err));
      CK(cudaEventRecord(e1, st));
      CK(cudaEventSynchronize(e1));
      CK(cudaEventElapsedTime(&ms, e0, e1));
      g = n * (double)bb / (ms / 1e3) / 1e9;
      if (i && g > best_out) best_out = g;
    }
    len += snprintf(md + len, cap - (size_t)len, "| %s | %.1f GB/s | %.0f%% | %.1f GB/s |\n",
                    names[mode], best_in, 100.0 * best_in / ref, best_out);
  }
  pd_cuda_blocks_set_xfer_mode(PD_CUDA_XFER_AUTO);
  CK(cudaGetLastError());
  cudaEventDestroy(e0), cudaEventDestroy(e1);
  CK(cudaStreamDestroy(st));
  cudaFree(pool), cudaFreeHost(host);
  free(ids), free(hids);
  return len;
}

int main(int argc, char **argv) {
  const char *outp = NULL;
  int decode_only = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--out") && i + 1 < argc) {
      outp = argv[++i];
    } else if (!strcmp(argv[i], "--decode-only")) {
      decode_only = 1;
    } else {
      fprintf(stderr, "usage: attn_bench [--out results.md] [--decode-only]\n");
      return 2;
    }
  }
  if (pd_cuda_device_count() == 0) {
    fprintf(stderr, "attn_bench: no CUDA device\n");
    return 1;
  }
  struct cudaDeviceProp p;
  CK(cudaGetDeviceProperties(&p, 0));
  double copy = copy_gbps();
  shape shapes[2] = {{"default model: 64 seqs, 9/3 heads, hd 64, 2,048 tokens", 64, 9, 3, 64, 2048},
                     {"16 seqs, 32/8 heads, hd 128, 4,096 tokens", 16, 32, 8, 128, 4096}};
  static char dec[4096], casc[4096], pre[4096], res[4096];
  /* the last columns: the same calls with programmatic dependent launch (pd_cuda_launch.h), with
   * the splits merged in a thread-block cluster (up to 8 splits), and both, where the GPU has
   * them (Hopper and later); then as one lean wave of blocks (pd_cuda_attn_set_decode_lean),
   * plain and with PDL */
  const int pdl_default = pd_cuda_pdl(), cluster_default = pd_cuda_attn_decode_cluster();
  const int lean_default = pd_cuda_attn_decode_lean();
  pd_cuda_set_pdl(1);
  pd_cuda_attn_set_decode_cluster(1);
  const int pdl_ok = pd_cuda_pdl(), cluster_ok = pd_cuda_attn_decode_cluster();
  int n = snprintf(dec, sizeof dec,
                   "| shape | cache | time | KV read | vs device copy (%.0f GB/s) | with PDL | "
                   "merge in a cluster | cluster + PDL | lean | lean + PDL |\n"
                   "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
                   copy);
  const enum pd_dtype dts[2] = {PD_DTYPE_F16, PD_DTYPE_FP8_E4M3};
  /* the variants: {pdl, cluster, lean} */
  static const int variants[6][3] = {{0, 0, 0}, {1, 0, 0}, {0, 1, 0},
                                     {1, 1, 0}, {0, 0, 1}, {1, 0, 1}};
  for (int i = 0; i < 2; i++)
    for (int d = 0; d < 2; d++) {
      double us[6] = {0}, gbps[6] = {0};
      char col[6][48];
      for (int v = 0; v < 6; v++) {
        const int pdl = variants[v][0], cluster = variants[v][1], lean = variants[v][2];
        snprintf(col[v], sizeof col[v], "not on this GPU");
        if ((pdl && !pdl_ok) || (cluster && !cluster_ok)) continue;
        pd_cuda_set_pdl(pdl);
        pd_cuda_attn_set_decode_cluster(cluster);
        pd_cuda_attn_set_decode_lean(lean);
        gbps[v] = run_shape(&shapes[i], dts[d], &us[v]);
        snprintf(col[v], sizeof col[v], "%.1f us (%.0f%%)", us[v], 100.0 * gbps[v] / copy);
      }
      n += snprintf(dec + n, sizeof dec - (size_t)n,
                    "| %s | %s | %.1f us | %.0f GB/s | %.0f%% | %s | %s | %s | %s | %s |\n",
                    shapes[i].name, pd_dtype_name(dts[d]), us[0], gbps[0], 100.0 * gbps[0] / copy,
                    col[1], col[2], col[3], col[4], col[5]);
    }
  pd_cuda_attn_set_decode_lean(lean_default);
  pd_cuda_attn_set_decode_cluster(cluster_default);
  pd_cuda_set_pdl(pdl_default);
  const char *grid_env = getenv("PD_CUDA_DECODE_GRID");
  if (decode_only) { /* the decode grid sweep (scripts/gpu-check bench): section 1 alone */
    printf("device: %s\nPD_CUDA_DECODE_GRID=%s\n\n%s\n%s\n", p.name,
           grid_env ? grid_env : "(unset)", dec, pdl_note(pdl_ok));
    FILE *f = outp ? fopen(outp, "w") : NULL;
    if (outp && !f) return 1;
    if (f) {
      fprintf(f,
              "# Decode attention, PD_CUDA_DECODE_GRID=%s\n\nDevice: %s. Command: "
              "`PD_CUDA_DECODE_GRID=%s attn_bench --decode-only --out %s`.\n\n%s\n%s\n",
              grid_env ? grid_env : "(unset)", p.name, grid_env ? grid_env : "", outp, dec,
              pdl_note(pdl_ok));
      fclose(f);
    }
    return 0;
  }
  void *flush;
  CK(cudaMalloc(&flush, (size_t)256 << 20));
  bench_cascade(casc, sizeof casc, flush);
  cudaFree(flush);
  bench_prefill(pre, sizeof pre);
  bench_restore(res, sizeof res);
  const char *note = pdl_note(pdl_ok);
  printf("device: %s\n\n%s\n%s\n%s\n%s\n%s\n", p.name, dec, casc, pre, res, note);
  if (outp) {
    FILE *f = fopen(outp, "w");
    if (!f) return 1;
    fprintf(
        f,
        "# CUDA attention and block transfers\n\nDevice: %s. Command: `build/bench/cuda/attn_bench "
        "--out %s`"
        " (the PyTorch SDPA line comes from `bench/cuda/sdpa_ref.py` in the same run).\n\n"
        "## Decode (pd_cuda_attn_decode, f16 and fp8-e4m3 caches)\n\n%s\n## Cascade: shared "
        "prefix\n\n%s\n"
        "## Prefill attention\n\n%s\n## Block restore and spill\n\n%s\n%s\n",
        p.name, outp, dec, casc, pre, res, note);
    fclose(f);
  }
  return 0;
}
