/*
 * test_cuda_attention.c -- the CUDA paged decode attention against the CPU reference
 * (pd_attn_paged) on fresh random inputs: f16 KV pools with shuffled block tables, GQA ratios
 * 1, 3 and 8, head_dim 64 and 128, contexts from 1 to 32,768 tokens including partial blocks,
 * several sequences of different lengths per call. The output is poisoned with NaN before each
 * run, so an element the kernel does not write fails. Tolerance: |gpu - cpu| <= 2e-3 * max|cpu|
 * + 1e-5 (both read the same f16 values; they differ only in summation order and in __expf).
 * Exits 77 (skipped) when there is no GPU.
 */
#include <check.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_check.h"
#include "pd_attention.h"
#include "pd_cuda_attention.h"
#include "pd_err.h"

static uint64_t rng = 12345;
static float frand(void) {
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

#define CK(x) ck_assert_msg((x) == cudaSuccess, "%s", #x)

static void run_case(int n_kv, int group, int hd, const int *ctx, int n_seqs) {
  const int B = 16, layers = 2, layer = 1, n_heads = n_kv * group;
  pd_kv_layout L = {layers, n_kv, hd, B, PD_DTYPE_F16};
  int max_ctx = 0;
  for (int s = 0; s < n_seqs; s++) max_ctx = ctx[s] > max_ctx ? ctx[s] : max_ctx;
  int max_blocks = (max_ctx + B - 1) / B, n_blocks = max_blocks * n_seqs + 3;
  size_t bb = pd_kv_block_bytes(&L);
  uint8_t *pool = malloc(bb * (size_t)n_blocks);
  for (size_t i = 0; i < bb * (size_t)n_blocks / 2; i++)
    ((uint16_t *)pool)[i] = pd_f32_to_f16(frand());
  /* shuffled block ids: the tables point all over the pool */
  int32_t *perm = malloc(sizeof(int32_t) * (size_t)n_blocks);
  for (int i = 0; i < n_blocks; i++) perm[i] = i;
  for (int i = n_blocks - 1; i > 0; i--) {
    int j = (int)((frand() + 1) * 0.5f * (float)i);
    int32_t t = perm[i];
    perm[i] = perm[j], perm[j] = t;
  }
  int32_t *tables = malloc(sizeof(int32_t) * (size_t)n_seqs * (size_t)max_blocks);
  for (int i = 0; i < n_seqs * max_blocks; i++) tables[i] = perm[i];
  size_t qn = (size_t)n_seqs * (size_t)n_heads * (size_t)hd;
  float *q = malloc(qn * 4), *ref = malloc(qn * 4), *got = malloc(qn * 4);
  for (size_t i = 0; i < qn; i++) q[i] = frand();
  pd_attn_seq *seqs = malloc(sizeof *seqs * (size_t)n_seqs);
  for (int s = 0; s < n_seqs; s++)
    seqs[s] = (pd_attn_seq){tables + (size_t)s * max_blocks, max_blocks, ctx[s] - 1, 1, s};
  float scale = 1.0f / sqrtf((float)hd);
  ck_assert_int_eq(pd_attn_paged(&L, pool, layer, n_heads, q, ref, seqs, n_seqs, scale), 0);

  void *d_pool, *d_q, *d_out, *d_tables, *d_ctx, *d_ws;
  size_t ws_bytes = pd_cuda_attn_workspace_bytes(n_seqs, n_heads, hd, max_ctx);
  CK(cudaMalloc(&d_pool, bb * (size_t)n_blocks));
  CK(cudaMalloc(&d_q, qn * 4));
  CK(cudaMalloc(&d_out, qn * 4));
  CK(cudaMalloc(&d_tables, sizeof(int32_t) * (size_t)n_seqs * (size_t)max_blocks));
  CK(cudaMalloc(&d_ctx, sizeof(int32_t) * (size_t)n_seqs));
  CK(cudaMalloc(&d_ws, ws_bytes));
  CK(cudaMemcpy(d_pool, pool, bb * (size_t)n_blocks, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(d_q, q, qn * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(d_tables, tables, sizeof(int32_t) * (size_t)n_seqs * (size_t)max_blocks,
                cudaMemcpyHostToDevice));
  CK(cudaMemcpy(d_ctx, ctx, sizeof(int32_t) * (size_t)n_seqs, cudaMemcpyHostToDevice));
  CK(cudaMemset(d_out, 0xff, qn * 4)); /* NaN poison */
  char err[256] = "";
  int rc = pd_cuda_attn_decode(&L, d_pool, layer, n_heads, d_q, d_out, d_tables, max_blocks, d_ctx,
                               n_seqs, max_ctx, scale, d_ws, NULL, err, sizeof err);
  ck_assert_msg(rc == 0, "%s", err);
  CK(cudaDeviceSynchronize());
  CK(cudaMemcpy(got, d_out, qn * 4, cudaMemcpyDeviceToHost));
  float mx = 0, worst = 0;
  for (size_t i = 0; i < qn; i++) mx = fmaxf(mx, fabsf(ref[i]));
  for (size_t i = 0; i < qn; i++) {
    ck_assert_msg(!isnan(got[i]), "element %zu not written (kv %d group %d hd %d)", i, n_kv, group,
                  hd);
    float diff = fabsf(got[i] - ref[i]);
    worst = fmaxf(worst, diff);
    ck_assert_msg(diff <= 2e-3f * mx + 1e-5f,
                  "element %zu: gpu %g cpu %g (kv %d group %d hd %d ctx0 %d)", i, got[i], ref[i],
                  n_kv, group, hd, ctx[0]);
  }
  printf("ok: kv heads %d, group %d, head_dim %d, %d seqs, max ctx %d: max |diff| %.2e (max |ref| "
         "%.2e)\n",
         n_kv, group, hd, n_seqs, max_ctx, worst, mx);
  cudaFree(d_pool), cudaFree(d_q), cudaFree(d_out), cudaFree(d_tables), cudaFree(d_ctx),
      cudaFree(d_ws);
  free(pool), free(perm), free(tables), free(q), free(ref), free(got), free(seqs);
}

START_TEST(decode_matches_cpu_reference) {
  const int groups[3] = {1, 3, 8};
  const int hds[2] = {64, 128};
  int ctx_small[5] = {1, 15, 16, 17, 300};
  for (int gi = 0; gi < 3; gi++)
    for (int hi = 0; hi < 2; hi++) run_case(gi == 2 ? 1 : 3, groups[gi], hds[hi], ctx_small, 5);
  int ctx_long[3] = {4097, 2048, 32768};
  run_case(3, 3, 64, ctx_long, 3);
  run_case(8, 4, 128, ctx_long, 3);
}
END_TEST

START_TEST(bad_shapes_are_refused) {
  pd_kv_layout L = {1, 3, 96, 16, PD_DTYPE_F16};
  char err[256] = "";
  ck_assert_int_eq(pd_cuda_attn_decode(&L, NULL, 0, 9, NULL, NULL, NULL, 1, NULL, 1, 1, 1.0f, NULL,
                                       NULL, err, sizeof err),
                   PD_EINVAL);
  ck_assert(strstr(err, "head_dim") != NULL);
}
END_TEST

int main(void) {
  if (pd_cuda_device_count() == 0) {
    printf("no CUDA device: skipped\n");
    return 77;
  }
  struct cudaDeviceProp p;
  cudaGetDeviceProperties(&p, 0);
  printf("device: %s\n", p.name);
  Suite *s = suite_create("cuda_attention");
  TCase *tc = tcase_create("decode");
  tcase_set_timeout(tc, 600);
  tcase_add_test(tc, decode_matches_cpu_reference);
  tcase_add_test(tc, bad_shapes_are_refused);
  suite_add_tcase(s, tc);
  int rc = pd_check_run(s, 0);
  return rc;
}
