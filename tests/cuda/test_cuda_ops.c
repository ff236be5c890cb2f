/*
 * test_cuda_ops.c -- every small kernel of the GPU forward pass (pd_cuda_ops.h), the device
 * weights (pd_cuda_weight.h) and the cuBLAS GEMM (pd_cuda_gemm.h) against the CPU functions they
 * mirror, on fresh random inputs of odd sizes. Every output buffer is poisoned with NaN (0xff
 * bytes; -1 for int32) before each run, so an element a kernel does not write fails.
 *
 * Tolerances, |gpu - cpu| <= rel * |cpu| + abs unless stated:
 *   rmsnorm f32 out        rel 1e-5, abs 1e-6   (the sum of squares is a tree on the GPU)
 *   rmsnorm / swiglu f16   rel 1e-3, abs 1e-7   (one f16 ulp: 2^-10 relative)
 *   rope, qkv_rope         2e-6 * max|x|        (same angles given the host's frequency table;
 *                                                cos and sin may differ in the last bit)
 *   rope without a table   2e-3 * max|x|        (positions < 4096: an ulp of powf is
 *                                                pos * 6e-8 rad)
 *   swiglu f32             rel 1e-6, abs 1e-30  (exp may differ in the last bit)
 *   add, add_bias, embed, f32_to_f16, argmax, the v part of qkv_rope: bit for bit
 *   norm_gemv (RMSNorm + GEMV + SwiGLU or QKV split + RoPE, fused): the bytes of the three
 *                          kernels it replaces
 *   gemm, f32 weights      1e-5 * sum_k |x_k w_k| (pd_matmul exact: same products, other order)
 *   gemm, f16 weights      4e-3 * sum_k |x_k w_k| (inputs rounded to f16)
 * Exits 77 (skipped) when there is no GPU.
 */
#include <check.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_check.h"
#include "pd_gpu_gate.h"
#include "pd_cuda_attention.h"
#include "pd_cuda_gemm.h"
#include "pd_cuda_ops.h"
#include "pd_cuda_weight.h"
#include "pd_dtype.h"
#include "pd_err.h"
#include "pd_matmul.h"
#include "pd_ops.h"
#include "pd_quant.h"

static uint64_t rng = 0x5eed;
static float frand(void) { /* uniform in [-1, 1) */
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}
static int irand(int n) {
  int v = (int)((frand() + 1.0f) * 0.5f * (float)n);
  return v < n ? v : n - 1;
}

#define CK(x)                                                                                      \
  ck_assert_msg((x) == cudaSuccess, "%s: %s", #x, cudaGetErrorString(cudaGetLastError()))

static void *dput(const void *h, size_t bytes) {
  void *d = NULL;
  CK(cudaMalloc(&d, bytes ? bytes : 1));
  if (bytes) CK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
  return d;
}
static void *dpoison(size_t bytes) {
  void *d = NULL;
  CK(cudaMalloc(&d, bytes ? bytes : 1));
  CK(cudaMemset(d, 0xff, bytes ? bytes : 1));
  return d;
}
static void dget(void *h, const void *d, size_t bytes) {
  CK(cudaDeviceSynchronize());
  CK(cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost));
}
static float *frand_vec(size_t n, float scale) {
  float *v = malloc(n * sizeof *v);
  ck_assert_ptr_nonnull(v);
  for (size_t i = 0; i < n; i++) v[i] = scale * frand();
  return v;
}
static void check_close(const char *what, const float *got, const float *ref, size_t n, float rel,
                        float abs_tol) {
  float worst = 0;
  for (size_t i = 0; i < n; i++) {
    ck_assert_msg(!isnan(got[i]) || isnan(ref[i]), "%s: element %zu not written (NaN)", what, i);
    float diff = fabsf(got[i] - ref[i]);
    ck_assert_msg(diff <= rel * fabsf(ref[i]) + abs_tol, "%s: element %zu: gpu %.9g cpu %.9g", what,
                  i, got[i], ref[i]);
    if (diff > worst) worst = diff;
  }
  printf("ok: %s (%zu elements, max |diff| %.3g)\n", what, n, worst);
}
static void check_bits(const char *what, const float *got, const float *ref, size_t n) {
  for (size_t i = 0; i < n; i++)
    ck_assert_msg(memcmp(&got[i], &ref[i], 4) == 0 || (isnan(got[i]) && isnan(ref[i])),
                  "%s: element %zu: gpu %.9g cpu %.9g", what, i, got[i], ref[i]);
  printf("ok: %s (%zu elements, bit for bit)\n", what, n);
}
static float *f16_to_f32_vec(const uint16_t *h, size_t n) {
  float *v = malloc(n * sizeof *v);
  for (size_t i = 0; i < n; i++) v[i] = pd_f16_to_f32(h[i]);
  return v;
}

/* ---- RMSNorm ------------------------------------------------------------------------------- */

START_TEST(rmsnorm_matches_cpu) {
  const int ns[5] = {1, 31, 576, 1000, 4099};
  const int rows = 7;
  char err[256] = "";
  for (int ni = 0; ni < 5; ni++) {
    int n = ns[ni];
    size_t el = (size_t)rows * n;
    float *x = frand_vec(el, 3.0f), *w = frand_vec((size_t)n, 0.1f), *ref = malloc(el * 4);
    for (int i = 0; i < n; i++) w[i] += 1.0f;
    int32_t idx[7] = {6, 0, 5, 1, 4, 2, 2}; /* a gather, with a repeat */
    float *dx = dput(x, el * 4), *dw = dput(w, (size_t)n * 4);
    int32_t *didx = dput(idx, sizeof idx);
    for (int use_idx = 0; use_idx < 2; use_idx++) {
      for (int r = 0; r < rows; r++)
        pd_rmsnorm(ref + (size_t)r * n, x + (size_t)(use_idx ? idx[r] : r) * n, w, n, 1e-5f);
      /* f32 */
      float *dout = dpoison(el * 4), *got = malloc(el * 4);
      ck_assert_msg(pd_cuda_rmsnorm(dout, PD_DTYPE_F32, dx, use_idx ? didx : NULL, dw, rows, n,
                                    1e-5f, NULL, err, sizeof err) == 0,
                    "%s", err);
      dget(got, dout, el * 4);
      char what[64];
      snprintf(what, sizeof what, "rmsnorm f32 n=%d idx=%d", n, use_idx);
      check_close(what, got, ref, el, 1e-5f, 1e-6f);
      /* f16 */
      uint16_t *dh = dpoison(el * 2), *gh = malloc(el * 2);
      ck_assert_msg(pd_cuda_rmsnorm(dh, PD_DTYPE_F16, dx, use_idx ? didx : NULL, dw, rows, n, 1e-5f,
                                    NULL, err, sizeof err) == 0,
                    "%s", err);
      dget(gh, dh, el * 2);
      float *gf = f16_to_f32_vec(gh, el);
      snprintf(what, sizeof what, "rmsnorm f16 n=%d idx=%d", n, use_idx);
      check_close(what, gf, ref, el, 1e-3f, 1e-7f);
      cudaFree(dout), cudaFree(dh), free(got), free(gh), free(gf);
    }
    /* in place */
    for (int r = 0; r < rows; r++) pd_rmsnorm(ref + (size_t)r * n, x + (size_t)r * n, w, n, 1e-5f);
    ck_assert_msg(
        pd_cuda_rmsnorm(dx, PD_DTYPE_F32, dx, NULL, dw, rows, n, 1e-5f, NULL, err, sizeof err) == 0,
        "%s", err);
    float *got = malloc(el * 4);
    dget(got, dx, el * 4);
    check_close("rmsnorm in place", got, ref, el, 1e-5f, 1e-6f);
    cudaFree(dx), cudaFree(dw), cudaFree(didx);
    free(x), free(w), free(ref), free(got);
  }
}
END_TEST

/* ---- RoPE ---------------------------------------------------------------------------------- */

static float *host_freqs(float theta, int rot) { /* the expression of pd_rope */
  float *f = malloc(sizeof(float) * (size_t)(rot / 2 + 1));
  for (int i = 0; i < rot / 2; i++) f[i] = powf(theta, -2.0f * (float)i / (float)rot);
  return f;
}

static float max_abs(const float *x, size_t n) {
  float m = 0;
  for (size_t i = 0; i < n; i++) m = fmaxf(m, fabsf(x[i]));
  return m;
}

START_TEST(rope_matches_cpu) {
  const struct {
    int heads, hd, rot;
  } shapes[5] = {{3, 64, 64}, {2, 128, 128}, {3, 64, 32}, {5, 6, 4}, {2, 64, 0}};
  const float thetas[2] = {10000.0f, 100000.0f};
  const int rows = 9;
  char err[256] = "";
  for (int si = 0; si < 5; si++)
    for (int neox = 0; neox < 2; neox++)
      for (int ti = 0; ti < 2; ti++)
        for (int table = 0; table < 2; table++) {
          int H = shapes[si].heads, hd = shapes[si].hd, rot = shapes[si].rot;
          size_t el = (size_t)rows * H * hd;
          float *x = frand_vec(el, 2.0f), *ref = malloc(el * 4), *got = malloc(el * 4);
          int32_t pos[9];
          for (int r = 0; r < rows; r++)
            pos[r] = r == 0 ? 0 : (table ? irand(200000) : irand(4096)); /* 0 is the identity */
          if (table) pos[rows - 1] = 1 << 20;
          memcpy(ref, x, el * 4);
          for (int r = 0; r < rows; r++)
            pd_rope(ref + (size_t)r * H * hd, H, hd, rot, pos[r], thetas[ti], neox, NULL);
          float *fr = host_freqs(thetas[ti], rot);
          float *dx = dput(x, el * 4), *dfr = dput(fr, sizeof(float) * (size_t)(rot / 2 + 1));
          int32_t *dpos = dput(pos, sizeof pos);
          ck_assert_msg(pd_cuda_rope(dx, rows, H, hd, rot, dpos, table ? dfr : NULL, thetas[ti],
                                     neox, NULL, err, sizeof err) == 0,
                        "%s", err);
          dget(got, dx, el * 4);
          char what[96];
          snprintf(what, sizeof what, "rope heads %d hd %d rot %d neox %d theta %g table %d", H, hd,
                   rot, neox, (double)thetas[ti], table);
          check_close(what, got, ref, el, 0.0f, (table ? 2e-6f : 2e-3f) * max_abs(x, el));
          cudaFree(dx), cudaFree(dfr), cudaFree(dpos);
          free(x), free(ref), free(got), free(fr);
        }
}
END_TEST

START_TEST(qkv_rope_matches_cpu) {
  const int rows = 5, H = 9, Hkv = 3, hd = 64, rot = 64;
  const int qd = H * hd, kvd = Hkv * hd, w = qd + 2 * kvd;
  char err[256] = "";
  for (int neox = 0; neox < 2; neox++)
    for (int with_bias = 0; with_bias < 2; with_bias++) {
      float *qkv = frand_vec((size_t)rows * w, 2.0f), *bias = frand_vec((size_t)w, 0.5f);
      float *rq = malloc(sizeof(float) * rows * qd), *rk = malloc(sizeof(float) * rows * kvd);
      float *rv = malloc(sizeof(float) * rows * kvd);
      int32_t pos[5] = {0, 1, 17, 4095, 100000};
      for (int r = 0; r < rows; r++) {
        const float *src = qkv + (size_t)r * w;
        memcpy(rq + (size_t)r * qd, src, sizeof(float) * qd);
        memcpy(rk + (size_t)r * kvd, src + qd, sizeof(float) * kvd);
        memcpy(rv + (size_t)r * kvd, src + qd + kvd, sizeof(float) * kvd);
        if (with_bias) { /* pd_llama.c: add_bias, then rope */
          pd_add(rq + (size_t)r * qd, bias, qd);
          pd_add(rk + (size_t)r * kvd, bias + qd, kvd);
          pd_add(rv + (size_t)r * kvd, bias + qd + kvd, kvd);
        }
        pd_rope(rq + (size_t)r * qd, H, hd, rot, pos[r], 10000.0f, neox, NULL);
        pd_rope(rk + (size_t)r * kvd, Hkv, hd, rot, pos[r], 10000.0f, neox, NULL);
      }
      float *fr = host_freqs(10000.0f, rot);
      float *dqkv = dput(qkv, sizeof(float) * rows * w), *db = dput(bias, sizeof(float) * w);
      float *dfr = dput(fr, sizeof(float) * (rot / 2));
      int32_t *dpos = dput(pos, sizeof pos);
      float *dq = dpoison(sizeof(float) * rows * qd), *dk = dpoison(sizeof(float) * rows * kvd);
      float *dv = dpoison(sizeof(float) * rows * kvd);
      ck_assert_msg(pd_cuda_qkv_rope(dq, dk, dv, dqkv, with_bias ? db : NULL, rows, H, Hkv, hd, rot,
                                     dpos, dfr, 10000.0f, neox, NULL, err, sizeof err) == 0,
                    "%s", err);
      float *gq = malloc(sizeof(float) * rows * qd), *gk = malloc(sizeof(float) * rows * kvd);
      float *gv = malloc(sizeof(float) * rows * kvd);
      dget(gq, dq, sizeof(float) * rows * qd);
      dget(gk, dk, sizeof(float) * rows * kvd);
      dget(gv, dv, sizeof(float) * rows * kvd);
      float mx = max_abs(qkv, (size_t)rows * w) + 0.5f;
      check_close("qkv_rope q", gq, rq, (size_t)rows * qd, 0.0f, 2e-6f * mx);
      check_close("qkv_rope k", gk, rk, (size_t)rows * kvd, 0.0f, 2e-6f * mx);
      check_bits("qkv_rope v", gv, rv, (size_t)rows * kvd);
      cudaFree(dqkv), cudaFree(db), cudaFree(dfr), cudaFree(dpos), cudaFree(dq), cudaFree(dk);
      cudaFree(dv);
      free(qkv), free(bias), free(rq), free(rk), free(rv), free(fr), free(gq), free(gk), free(gv);
    }
}
END_TEST

/* ---- SwiGLU -------------------------------------------------------------------------------- */

START_TEST(swiglu_matches_cpu) {
  const int rows = 3, n = 1001;
  char err[256] = "";
  for (int fused = 0; fused < 2; fused++) {
    int64_t ld = fused ? 2 * n : n;
    float *gate = frand_vec((size_t)rows * ld, 20.0f), *up = frand_vec((size_t)rows * ld, 3.0f);
    gate[0] = -100.0f, gate[1] = 100.0f, gate[2] = 0.0f; /* exp overflow, saturation, zero */
    /* fused: the up rows live in the second half of each gate row */
    const float *g_src = gate, *u_src = fused ? gate + n : up;
    float *ref = malloc(sizeof(float) * rows * n), *u_ref = malloc(sizeof(float) * rows * n);
    for (int r = 0; r < rows; r++) {
      memcpy(ref + (size_t)r * n, g_src + r * ld, sizeof(float) * n);
      memcpy(u_ref + (size_t)r * n, u_src + r * ld, sizeof(float) * n);
    }
    pd_swiglu(ref, u_ref, (int64_t)rows * n);
    float *dg = dput(gate, sizeof(float) * rows * ld), *du = dput(up, sizeof(float) * rows * ld);
    const float *dgate = dg, *dup = fused ? dg + n : du;
    float *dout = dpoison(sizeof(float) * rows * n), *got = malloc(sizeof(float) * rows * n);
    ck_assert_msg(
        pd_cuda_swiglu(dout, PD_DTYPE_F32, dgate, dup, rows, n, ld, NULL, err, sizeof err) == 0,
        "%s", err);
    dget(got, dout, sizeof(float) * rows * n);
    check_close(fused ? "swiglu f32 fused" : "swiglu f32", got, ref, (size_t)rows * n, 1e-6f,
                1e-30f);
    uint16_t *dh = dpoison((size_t)rows * n * 2), *gh = malloc((size_t)rows * n * 2);
    ck_assert_msg(
        pd_cuda_swiglu(dh, PD_DTYPE_F16, dgate, dup, rows, n, ld, NULL, err, sizeof err) == 0, "%s",
        err);
    dget(gh, dh, (size_t)rows * n * 2);
    float *gf = f16_to_f32_vec(gh, (size_t)rows * n);
    check_close(fused ? "swiglu f16 fused" : "swiglu f16", gf, ref, (size_t)rows * n, 1e-3f, 1e-7f);
    if (!fused) { /* in place, as pd_swiglu */
      ck_assert_msg(pd_cuda_swiglu(dg, PD_DTYPE_F32, dg, du, rows, n, n, NULL, err, sizeof err) ==
                        0,
                    "%s", err);
      dget(got, dg, sizeof(float) * rows * n);
      check_close("swiglu in place", got, ref, (size_t)rows * n, 1e-6f, 1e-30f);
    } else { /* in place with a stride is refused */
      ck_assert_int_eq(
          pd_cuda_swiglu(dg, PD_DTYPE_F32, dg, dg + n, rows, n, ld, NULL, err, sizeof err),
          PD_EINVAL);
    }
    cudaFree(dg), cudaFree(du), cudaFree(dout), cudaFree(dh);
    free(gate), free(up), free(ref), free(u_ref), free(got), free(gh), free(gf);
  }
}
END_TEST

/* ---- adds ---------------------------------------------------------------------------------- */

START_TEST(adds_are_exact) {
  const int rows = 7, n = 333;
  size_t el = (size_t)rows * n;
  char err[256] = "";
  float *x = frand_vec(el, 5.0f), *y = frand_vec(el, 5.0f), *b = frand_vec((size_t)n, 1.0f);
  float *ref = malloc(el * 4), *got = malloc(el * 4);
  memcpy(ref, x, el * 4);
  pd_add(ref, y, (int64_t)el);
  float *dx = dput(x, el * 4), *dy = dput(y, el * 4), *db = dput(b, (size_t)n * 4);
  ck_assert_msg(pd_cuda_add(dx, dy, (int64_t)el, NULL, err, sizeof err) == 0, "%s", err);
  dget(got, dx, el * 4);
  check_bits("add", got, ref, el);
  for (int r = 0; r < rows; r++) pd_add(ref + (size_t)r * n, b, n);
  ck_assert_msg(pd_cuda_add_bias(dx, db, rows, n, NULL, err, sizeof err) == 0, "%s", err);
  dget(got, dx, el * 4);
  check_bits("add_bias", got, ref, el);
  cudaFree(dx), cudaFree(dy), cudaFree(db);
  free(x), free(y), free(b), free(ref), free(got);
}
END_TEST

/* ---- embedding, conversion, argmax --------------------------------------------------------- */

START_TEST(embed_gathers_rows) {
  const int V = 1000, d = 577, rows = 9;
  char err[256] = "";
  float *table = frand_vec((size_t)V * d, 1.0f);
  uint16_t *t16 = malloc(sizeof(uint16_t) * V * d);
  for (size_t i = 0; i < (size_t)V * d; i++) t16[i] = pd_f32_to_f16(table[i]);
  int32_t ids[9] = {0, V - 1, 5, 5, 999, 17, 0, -1, V}; /* the last two are out of range */
  float *ref = malloc(sizeof(float) * rows * d), *got = malloc(sizeof(float) * rows * d);
  float *dt = dput(table, sizeof(float) * V * d);
  uint16_t *dt16 = dput(t16, sizeof(uint16_t) * V * d);
  int32_t *dids = dput(ids, sizeof ids);
  for (int half = 0; half < 2; half++) {
    for (int r = 0; r < rows; r++)
      for (int c = 0; c < d; c++)
        ref[(size_t)r * d + c] = ids[r] < 0 || ids[r] >= V ? NAN
                                 : half ? pd_f16_to_f32(t16[(size_t)ids[r] * d + c])
                                        : table[(size_t)ids[r] * d + c];
    float *dout = dpoison(sizeof(float) * rows * d);
    CK(cudaMemset(dout, 0, sizeof(float) * rows * d)); /* NaN rows must come from the kernel */
    ck_assert_msg(pd_cuda_embed(dout, half ? (const void *)dt16 : (const void *)dt,
                                half ? PD_DTYPE_F16 : PD_DTYPE_F32, dids, rows, d, V, NULL, err,
                                sizeof err) == 0,
                  "%s", err);
    dget(got, dout, sizeof(float) * rows * d);
    for (size_t i = (size_t)(rows - 2) * d; i < (size_t)rows * d; i++)
      ck_assert_msg(isnan(got[i]), "out-of-range id: element %zu is %g, not NaN", i, got[i]);
    check_bits(half ? "embed f16 table" : "embed f32 table", got, ref, (size_t)rows * d);
    cudaFree(dout);
  }
  cudaFree(dt), cudaFree(dt16), cudaFree(dids);
  free(table), free(t16), free(ref), free(got);
}
END_TEST

START_TEST(f32_to_f16_rounds_like_the_cpu) {
  const size_t n = 100003;
  char err[256] = "";
  float *x = malloc(n * 4);
  for (size_t i = 0; i < n; i++) x[i] = frand() * ldexpf(1.0f, irand(56) - 36);
  const float specials[] = {
      0.0f,      -0.0f,   65504.0f,       65519.0f,        65520.0f,   -65520.0f,
      1e-8f,     6.0e-8f, 2.9e-8f,        3.0e-8f,         6.1035e-5f, INFINITY,
      -INFINITY, NAN,     1.00048828125f, 1.000244140625f, 1e-45f,     5.96046448e-08f};
  memcpy(x, specials, sizeof specials);
  uint16_t *got = malloc(n * 2);
  float *dx = dput(x, n * 4);
  uint16_t *dout = dpoison(n * 2);
  ck_assert_msg(pd_cuda_f32_to_f16(dout, dx, (int64_t)n, NULL, err, sizeof err) == 0, "%s", err);
  dget(got, dout, n * 2);
  for (size_t i = 0; i < n; i++) {
    uint16_t want = pd_f32_to_f16(x[i]);
    if (isnan(x[i]))
      ck_assert_msg((got[i] & 0x7c00) == 0x7c00 && (got[i] & 0x3ff), "NaN became 0x%04x", got[i]);
    else
      ck_assert_msg(got[i] == want, "element %zu (%.9g): gpu 0x%04x cpu 0x%04x", i, x[i], got[i],
                    want);
  }
  printf("ok: f32_to_f16 (%zu elements, bit for bit)\n", n);
  cudaFree(dx), cudaFree(dout), free(x), free(got);
}
END_TEST

static int32_t cpu_argmax(const float *l, int n) { /* pd_sampler.c, temperature 0 */
  int32_t pick = 0;
  for (int32_t i = 1; i < n; i++)
    if (l[i] > l[pick]) pick = i;
  return pick;
}

START_TEST(argmax_matches_greedy_sampling) {
  const int ns[4] = {1, 33, 1000, 49152};
  char err[256] = "";
  for (int ni = 0; ni < 4; ni++) {
    const int n = ns[ni], rows = 8;
    float *x = frand_vec((size_t)rows * n, 10.0f);
    /* row 1: a tie, the earlier wins; row 2: NaN at 0 (the CPU keeps 0); row 3: NaN elsewhere;
     * row 4: all -inf; row 5: max at the last element; rows 6, 7: random */
    if (n > 1) {
      x[(size_t)1 * n + n / 3] = 50.0f, x[(size_t)1 * n + n - 1] = 50.0f;
      x[(size_t)2 * n] = NAN;
      x[(size_t)3 * n + n / 2] = NAN;
      x[(size_t)5 * n + n - 1] = 99.0f;
    }
    for (int i = 0; i < n; i++) x[(size_t)4 * n + i] = -INFINITY;
    int32_t ref[8], got[8];
    for (int r = 0; r < rows; r++) ref[r] = cpu_argmax(x + (size_t)r * n, n);
    float *dx = dput(x, sizeof(float) * rows * n);
    int32_t *dout = dpoison(sizeof got);
    ck_assert_msg(pd_cuda_argmax(dout, dx, rows, n, NULL, err, sizeof err) == 0, "%s", err);
    dget(got, dout, sizeof got);
    for (int r = 0; r < rows; r++)
      ck_assert_msg(got[r] == ref[r], "n %d row %d: gpu %d cpu %d", n, r, got[r], ref[r]);
    printf("ok: argmax n=%d\n", n);
    cudaFree(dx), cudaFree(dout), free(x);
  }
}
END_TEST

/* ---- weights and GEMM ---------------------------------------------------------------------- */

START_TEST(gemm_matches_pd_matmul) {
  const int in = 512, out = 67, rows_list[4] = {1, 3, 7, 33}; /* 1, 3: the GEMV */
  char err[256] = "";
  pd_cuda_gemm g;
  ck_assert_msg(pd_cuda_gemm_init(&g, NULL, (int64_t)33 * in, err, sizeof err) == 0, "%s", err);
  for (int ti = 0; ti < PD_GGML_N_TYPES; ti++) {
    enum pd_ggml_type t = pd_ggml_types[ti];
    size_t rb = pd_ggml_row_bytes(t, in);
    uint8_t *wq = malloc(rb * out);
    float *row = frand_vec((size_t)in, 1.0f), *wf = malloc(sizeof(float) * in * out);
    for (int o = 0; o < out; o++) {
      for (int i = 0; i < in; i++) row[i] = frand();
      ck_assert_int_eq(pd_quantize_row(t, row, wq + (size_t)o * rb, in), 0);
      ck_assert_int_eq(pd_dequant_row(t, wq + (size_t)o * rb, wf + (size_t)o * in, in), 0);
    }
    for (int mode = 0; mode < 2; mode++) {
      pd_cuda_weight w;
      enum pd_dtype dt = mode ? PD_DTYPE_F16 : PD_DTYPE_F32;
      ck_assert_msg(pd_cuda_weight_alloc(&w, in, out, dt, "test", err, sizeof err) == 0, "%s", err);
      CK(cudaMemset(w.data, 0xff, pd_cuda_weight_bytes(&w)));
      /* in two parts, as the stacked QKV weights are */
      ck_assert_msg(pd_cuda_weight_upload(&w, 0, wq, t, 30, err, sizeof err) == 0, "%s", err);
      ck_assert_msg(pd_cuda_weight_upload(&w, 30, wq + 30 * rb, t, out - 30, err, sizeof err) == 0,
                    "%s", err);
      for (int ri = 0; ri < 4; ri++) {
        int rows = rows_list[ri];
        float *x = frand_vec((size_t)rows * in, 2.0f), *ref = malloc(sizeof(float) * rows * out);
        float *y0 = frand_vec((size_t)rows * out, 1.0f), *got = malloc(sizeof(float) * rows * out);
        ck_assert_int_eq(pd_matmul(wq, t, in, out, x, ref, rows, PD_MATMUL_EXACT), 0);
        /* scale of each dot product: sum_k |x_k w_k| */
        float *mag = malloc(sizeof(float) * rows * out);
        for (int r = 0; r < rows; r++)
          for (int o = 0; o < out; o++) {
            double s = 0;
            for (int i = 0; i < in; i++)
              s += fabs((double)x[(size_t)r * in + i] * wf[(size_t)o * in + i]);
            mag[(size_t)r * out + o] = (float)s;
          }
        float *dx = dput(x, sizeof(float) * rows * in);
        float *dy = dpoison(sizeof(float) * rows * out);
        const float tol = mode ? 4e-3f : 1e-5f;
        for (int beta = 0; beta < 2; beta++) {
          if (beta) CK(cudaMemcpy(dy, y0, sizeof(float) * rows * out, cudaMemcpyHostToDevice));
          ck_assert_msg(pd_cuda_gemm_run(&g, &w, dx, PD_DTYPE_F32, dy, rows, (float)beta, err,
                                         sizeof err) == 0,
                        "%s", err);
          dget(got, dy, sizeof(float) * rows * out);
          float worst = 0;
          for (int i = 0; i < rows * out; i++) {
            float want = ref[i] + (beta ? y0[i] : 0.0f);
            ck_assert_msg(!isnan(got[i]), "%s rows %d: element %d not written",
                          pd_ggml_type_name(t), rows, i);
            float diff = fabsf(got[i] - want);
            ck_assert_msg(diff <= tol * mag[i] + 1e-6f,
                          "%s %s rows %d beta %d: element %d gpu %g cpu %g (scale %g)",
                          pd_ggml_type_name(t), pd_dtype_name(dt), rows, beta, i, got[i], want,
                          mag[i]);
            worst = fmaxf(worst, diff / (mag[i] + 1e-6f));
          }
          printf("ok: gemm %s weights as %s, %d rows, beta %d: max |diff| / scale %.2e\n",
                 pd_ggml_type_name(t), pd_dtype_name(dt), rows, beta, worst);
        }
        if (mode) { /* f16 input directly */
          uint16_t *xh = malloc((size_t)rows * in * 2);
          for (int i = 0; i < rows * in; i++) xh[i] = pd_f32_to_f16(x[i]);
          uint16_t *dxh = dput(xh, (size_t)rows * in * 2);
          CK(cudaMemset(dy, 0xff, sizeof(float) * rows * out));
          ck_assert_msg(
              pd_cuda_gemm_run(&g, &w, dxh, PD_DTYPE_F16, dy, rows, 0.0f, err, sizeof err) == 0,
              "%s", err);
          dget(got, dy, sizeof(float) * rows * out);
          for (int i = 0; i < rows * out; i++)
            ck_assert_msg(fabsf(got[i] - ref[i]) <= tol * mag[i] + 1e-6f,
                          "f16 input: element %d gpu %g cpu %g", i, got[i], ref[i]);
          cudaFree(dxh), free(xh);
        }
        cudaFree(dx), cudaFree(dy);
        free(x), free(ref), free(y0), free(got), free(mag);
      }
      pd_cuda_weight_free(&w);
    }
    free(wq), free(row), free(wf);
  }
  /* refusals: f16 input on f32 weights; more rows than the scratch holds */
  pd_cuda_weight w;
  ck_assert_int_eq(pd_cuda_weight_alloc(&w, in, out, PD_DTYPE_F32, "t", err, sizeof err), 0);
  ck_assert_int_eq(pd_cuda_gemm_run(&g, &w, w.data, PD_DTYPE_F16, w.data, 1, 0, err, sizeof err),
                   PD_EINVAL);
  pd_cuda_weight_free(&w);
  ck_assert_int_eq(pd_cuda_weight_alloc(&w, in, out, PD_DTYPE_F16, "t", err, sizeof err), 0);
  ck_assert_int_eq(pd_cuda_gemm_run(&g, &w, w.data, PD_DTYPE_F32, w.data, 34, 0, err, sizeof err),
                   PD_EINVAL);
  ck_assert_msg(strstr(err, "scratch") != NULL, "message: %s", err);
  /* an upload past the last row */
  ck_assert_int_eq(pd_cuda_weight_upload(&w, out - 1, "", PD_GGML_F32, 2, err, sizeof err),
                   PD_EINVAL);
  pd_cuda_weight_free(&w);
  /* an impossible weight is PD_ENOMEM and names the bytes */
  ck_assert_int_eq(pd_cuda_weight_alloc(&w, (int64_t)1 << 31, (int64_t)1 << 20, PD_DTYPE_F32,
                                        "huge", err, sizeof err),
                   PD_ENOMEM);
  ck_assert_msg(strstr(err, "bytes") && strstr(err, "huge"), "message: %s", err);
  pd_cuda_gemm_free(&g);
}
END_TEST

/* ---- RMSNorm + GEMV (+ SwiGLU) fused --------------------------------------------------------- */

/* pd_cuda_norm_gemv_f16 against the kernels it replaces (rmsnorm, the f16 GEMV, swiglu), which
 * the tests above check against the CPU: the same bytes, for every row count the GEMV takes,
 * both activation dtypes, with and without SwiGLU and a row gather, and output counts that leave
 * the last thread block partly empty. */
START_TEST(norm_gemv_equals_the_three_kernels) {
  /* in, out; 4 f32 rows of 2,944 fill PD_CUDA_NORM_GEMV_MAX_SMEM exactly */
  const int shapes[4][2] = {{576, 960}, {264, 7}, {1536, 37}, {2944, 5}};
  const int32_t idx[4] = {5, 0, 3, 3};
  char err[256] = "";
  for (int si = 0; si < 4; si++) {
    const int in = shapes[si][0], out = shapes[si][1], wrows = 2 * out;
    float *x = frand_vec((size_t)6 * in, 3.0f), *nw = frand_vec((size_t)in, 0.1f);
    for (int i = 0; i < in; i++) nw[i] += 1.0f;
    uint16_t *wh = malloc(sizeof(uint16_t) * (size_t)wrows * in);
    for (size_t i = 0; i < (size_t)wrows * in; i++) wh[i] = pd_f32_to_f16(0.2f * frand());
    float *dx = dput(x, sizeof(float) * 6 * in), *dnw = dput(nw, sizeof(float) * in);
    void *dw = dput(wh, sizeof(uint16_t) * (size_t)wrows * in);
    int32_t *didx = dput(idx, sizeof idx);
    void *dxn = dpoison(sizeof(float) * 4 * in), *dgu = dpoison(sizeof(float) * 4 * wrows);
    for (int act = 0; act < 2; act++) {
      const enum pd_dtype at = act ? PD_DTYPE_F16 : PD_DTYPE_F32;
      for (int swiglu = 0; swiglu < 2; swiglu++)
        for (int use_idx = 0; use_idx < 2; use_idx++)
          for (int rows = 1; rows <= PD_CUDA_GEMV_MAX_ROWS; rows++) {
            const int32_t *ix = use_idx ? didx : NULL;
            const size_t ybytes = (size_t)rows * out * (swiglu ? pd_dtype_size(at) : 4);
            void *dref = dpoison(ybytes), *dgot = dpoison(ybytes);
            ck_assert_msg(pd_cuda_norm_gemv_ok(rows, in, at), "in %d rows %d %s refused", in, rows,
                          pd_dtype_name(at));
            ck_assert_msg(pd_cuda_rmsnorm(dxn, at, dx, ix, dnw, rows, in, 1e-5f, NULL, err,
                                          sizeof err) == 0 &&
                              pd_cuda_gemv_f16(dw, dxn, at, swiglu ? dgu : dref, rows, in,
                                               swiglu ? wrows : out, 0.0f, NULL, err,
                                               sizeof err) == 0 &&
                              (!swiglu || pd_cuda_swiglu(dref, at, dgu, (float *)dgu + out, rows,
                                                         out, wrows, NULL, err, sizeof err) == 0),
                          "%s", err);
            ck_assert_msg(pd_cuda_norm_gemv_f16(dw, dx, ix, dnw, 1e-5f, at, swiglu, dgot, rows, in,
                                                out, NULL, err, sizeof err) == 0,
                          "%s", err);
            uint8_t *ref = malloc(ybytes), *got = malloc(ybytes);
            dget(ref, dref, ybytes);
            dget(got, dgot, ybytes);
            ck_assert_msg(!memcmp(ref, got, ybytes),
                          "norm_gemv in %d out %d rows %d %s swiglu %d idx %d: not the bytes of "
                          "rmsnorm + gemv%s",
                          in, out, rows, pd_dtype_name(at), swiglu, use_idx,
                          swiglu ? " + swiglu" : "");
            cudaFree(dref), cudaFree(dgot), free(ref), free(got);
          }
      printf("ok: norm_gemv in %d out %d, %s activations: rows 1-%d, with and without swiglu and "
             "a gather, bit for bit\n",
             in, out, pd_dtype_name(at), PD_CUDA_GEMV_MAX_ROWS);
    }
    cudaFree(dx), cudaFree(dnw), cudaFree(dw), cudaFree(didx), cudaFree(dxn), cudaFree(dgu);
    free(x), free(nw), free(wh);
  }
  /* what does not fit is refused with a reason, and the caller runs the three kernels */
  ck_assert(pd_cuda_norm_gemv_ok(4, 4096, PD_DTYPE_F16));
  ck_assert(!pd_cuda_norm_gemv_ok(4, 4096, PD_DTYPE_F32)); /* 64 KiB of normed rows */
  ck_assert(!pd_cuda_norm_gemv_ok(PD_CUDA_GEMV_MAX_ROWS + 1, 64, PD_DTYPE_F16));
  ck_assert(!pd_cuda_norm_gemv_ok(1, 12, PD_DTYPE_F16));
  ck_assert(!pd_cuda_norm_gemv_ok(1, 64, PD_DTYPE_BF16));
  ck_assert_int_eq(pd_cuda_norm_gemv_f16(NULL, NULL, NULL, NULL, 1e-5f, PD_DTYPE_F32, 0, NULL, 4,
                                         4096, 8, NULL, err, sizeof err),
                   PD_EINVAL);
  ck_assert_msg(strstr(err, "norm_gemv") != NULL, "message: %s", err);
}
END_TEST

/* pd_cuda_norm_gemv_qkv_rope_f16 against rmsnorm, the f16 GEMV and qkv_rope: the same bytes
 * of q, k and v, with and without biases, normal and NEOX pairs, a partial rotation (dimensions
 * that pass through), the host's frequency table and the device's pow. */
START_TEST(norm_gemv_qkv_rope_equals_the_three_kernels) {
  /* in, heads, kv heads, head_dim, rot_dim, neox, bias, frequency table */
  const int cases[3][8] = {
      {576, 9, 3, 64, 64, 0, 0, 1}, {256, 4, 2, 64, 64, 1, 1, 0}, {264, 2, 1, 128, 32, 1, 1, 1}};
  char err[256] = "";
  for (int ci = 0; ci < 3; ci++) {
    const int in = cases[ci][0], H = cases[ci][1], Hkv = cases[ci][2], hd = cases[ci][3];
    const int rot = cases[ci][4], neox = cases[ci][5];
    const int nq = H * hd, nkv = Hkv * hd, out = nq + 2 * nkv;
    float *x = frand_vec((size_t)4 * in, 3.0f), *nw = frand_vec((size_t)in, 0.1f);
    float *bias = frand_vec((size_t)out, 0.5f), *freqs = host_freqs(1e4f, rot);
    for (int i = 0; i < in; i++) nw[i] += 1.0f;
    uint16_t *wh = malloc(sizeof(uint16_t) * (size_t)out * in);
    for (size_t i = 0; i < (size_t)out * in; i++) wh[i] = pd_f32_to_f16(0.2f * frand());
    int32_t pos[4];
    for (int r = 0; r < 4; r++) pos[r] = irand(4096);
    float *dx = dput(x, sizeof(float) * 4 * in), *dnw = dput(nw, sizeof(float) * in);
    float *db = cases[ci][6] ? dput(bias, sizeof(float) * out) : NULL;
    float *dfr = cases[ci][7] ? dput(freqs, sizeof(float) * (rot / 2 ? rot / 2 : 1)) : NULL;
    void *dw = dput(wh, sizeof(uint16_t) * (size_t)out * in);
    int32_t *dpos = dput(pos, sizeof pos);
    void *dxn = dpoison(sizeof(float) * 4 * in);
    float *dqkv = dpoison(sizeof(float) * 4 * out);
    const size_t sizes[3] = {sizeof(float) * 4 * nq, sizeof(float) * 4 * nkv,
                             sizeof(float) * 4 * nkv};
    for (int act = 0; act < 2; act++) {
      const enum pd_dtype at = act ? PD_DTYPE_F16 : PD_DTYPE_F32;
      for (int rows = 1; rows <= PD_CUDA_GEMV_MAX_ROWS; rows++) {
        float *ref[3], *got[3];
        for (int j = 0; j < 3; j++) ref[j] = dpoison(sizes[j]), got[j] = dpoison(sizes[j]);
        ck_assert_msg(
            pd_cuda_rmsnorm(dxn, at, dx, NULL, dnw, rows, in, 1e-5f, NULL, err, sizeof err) == 0 &&
                pd_cuda_gemv_f16(dw, dxn, at, dqkv, rows, in, out, 0.0f, NULL, err, sizeof err) ==
                    0 &&
                pd_cuda_qkv_rope(ref[0], ref[1], ref[2], dqkv, db, rows, H, Hkv, hd, rot, dpos, dfr,
                                 1e4f, neox, NULL, err, sizeof err) == 0,
            "%s", err);
        ck_assert_msg(pd_cuda_norm_gemv_qkv_rope_f16(dw, dx, dnw, 1e-5f, at, got[0], got[1], got[2],
                                                     db, rows, in, H, Hkv, hd, rot, dpos, dfr, 1e4f,
                                                     neox, NULL, err, sizeof err) == 0,
                      "%s", err);
        for (int j = 0; j < 3; j++) {
          uint8_t *a = malloc(sizes[j]), *b = malloc(sizes[j]);
          dget(a, ref[j], sizes[j]);
          dget(b, got[j], sizes[j]);
          /* only the first rows rows are written; the rest stay poisoned on both sides */
          ck_assert_msg(!memcmp(a, b, sizes[j]),
                        "norm_gemv_qkv_rope case %d rows %d %s: %c differs from rmsnorm + gemv + "
                        "qkv_rope",
                        ci, rows, pd_dtype_name(at), "qkv"[j]);
          free(a), free(b);
          cudaFree(ref[j]), cudaFree(got[j]);
        }
      }
      printf("ok: norm_gemv_qkv_rope %d/%d heads, head_dim %d, rot %d, neox %d, bias %d, table %d, "
             "%s activations: rows 1-%d bit for bit\n",
             H, Hkv, hd, rot, neox, cases[ci][6], cases[ci][7], pd_dtype_name(at),
             PD_CUDA_GEMV_MAX_ROWS);
    }
    cudaFree(dx), cudaFree(dnw), cudaFree(db), cudaFree(dfr), cudaFree(dw), cudaFree(dpos);
    cudaFree(dxn), cudaFree(dqkv);
    free(x), free(nw), free(bias), free(freqs), free(wh);
  }
  ck_assert_int_eq(pd_cuda_norm_gemv_qkv_rope_f16(NULL, NULL, NULL, 1e-5f, PD_DTYPE_F16, NULL, NULL,
                                                  NULL, NULL, 1, 64, 2, 0, 64, 64, NULL, NULL, 1e4f,
                                                  0, NULL, err, sizeof err),
                   PD_EINVAL);
  ck_assert_int_eq(pd_cuda_norm_gemv_qkv_rope_f16(NULL, NULL, NULL, 1e-5f, PD_DTYPE_F16, NULL, NULL,
                                                  NULL, NULL, 5, 64, 2, 1, 64, 64, NULL, NULL, 1e4f,
                                                  0, NULL, err, sizeof err),
                   PD_EINVAL);
}
END_TEST

START_TEST(bad_arguments_are_refused) {
  char err[256] = "";
  ck_assert_int_eq(pd_cuda_rope(NULL, 1, 2, 64, 63, NULL, NULL, 1e4f, 0, NULL, err, sizeof err),
                   PD_EINVAL);
  ck_assert(strstr(err, "rot_dim") != NULL);
  ck_assert_int_eq(pd_cuda_rope(NULL, 1, 2, 64, 66, NULL, NULL, 1e4f, 0, NULL, err, sizeof err),
                   PD_EINVAL);
  ck_assert_int_eq(
      pd_cuda_rmsnorm(NULL, PD_DTYPE_BF16, NULL, NULL, NULL, 1, 8, 1e-5f, NULL, err, sizeof err),
      PD_EINVAL);
  ck_assert_int_eq(pd_cuda_embed(NULL, NULL, PD_DTYPE_BF16, NULL, 1, 8, 8, NULL, err, sizeof err),
                   PD_EINVAL);
  ck_assert_int_eq(pd_cuda_argmax(NULL, NULL, 1, 0, NULL, err, sizeof err), PD_EINVAL);
  ck_assert_int_eq(pd_cuda_swiglu(NULL, PD_DTYPE_F32, NULL, NULL, 1, 8, 7, NULL, err, sizeof err),
                   PD_EINVAL);
  /* zero rows: nothing to do, not an error */
  ck_assert_int_eq(
      pd_cuda_rmsnorm(NULL, PD_DTYPE_F32, NULL, NULL, NULL, 0, 8, 1e-5f, NULL, err, sizeof err), 0);
  ck_assert_int_eq(pd_cuda_argmax(NULL, NULL, 0, 8, NULL, err, sizeof err), 0);
}
END_TEST

int main(void) {
  int gate = pd_gpu_gate();
  if (gate) return gate;
  Suite *s = suite_create("cuda_ops");
  TCase *tc = tcase_create("ops");
  tcase_set_timeout(tc, 600);
  tcase_add_test(tc, rmsnorm_matches_cpu);
  tcase_add_test(tc, rope_matches_cpu);
  tcase_add_test(tc, qkv_rope_matches_cpu);
  tcase_add_test(tc, swiglu_matches_cpu);
  tcase_add_test(tc, adds_are_exact);
  tcase_add_test(tc, embed_gathers_rows);
  tcase_add_test(tc, f32_to_f16_rounds_like_the_cpu);
  tcase_add_test(tc, argmax_matches_greedy_sampling);
  tcase_add_test(tc, gemm_matches_pd_matmul);
  tcase_add_test(tc, norm_gemv_equals_the_three_kernels);
  tcase_add_test(tc, norm_gemv_qkv_rope_equals_the_three_kernels);
  tcase_add_test(tc, bad_arguments_are_refused);
  suite_add_tcase(s, tc);
  return pd_check_run(s, 0);
}
