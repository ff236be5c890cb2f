/*
 * test_matmul.c -- pd_matmul on its own: EXACT against a double-precision dot over the
 * dequantized weights (tolerance 1e-5 relative to the row's sum of |w x|), FAST against EXACT
 * (tolerance 2e-2 of that sum: int8 activations) and, for the types it runs on integers, against
 * a double-precision dot of the dequantized weights with the activations quantized as it
 * quantizes them (tolerance 1e-5: only float rounding may differ, so a wrong level, scale or
 * bit of any format fails), for every weight type, odd out_dim and n_rows 1..17; each row's result identical whatever n_rows and the thread count; pd_matmul_n over a set
 * of weights identical to each weight alone; bad arguments refused.
 */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "pd_check.h"
#include "pd_err.h"
#include "pd_matmul.h"
#include "pd_quant.h"

static uint64_t rng = 99;
static float frand(void) {
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

/* x (n) as the fast path sees it: per block of 32, d = max |x| / 127 and x = d * round(x / d),
 * rounded to nearest even. */
static void int8_activations(const float *x, double *xq, int64_t n) {
  for (int64_t b = 0; b < n; b += 32) {
    float amax = 0;
    for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[b + j]));
    float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
    for (int j = 0; j < 32; j++) xq[b + j] = (double)d * (double)lrintf(x[b + j] * id);
  }
}

START_TEST(matches_double_reference_and_is_batch_invariant) {
  enum pd_ggml_type t = pd_ggml_types[_i];
  const int64_t in = 512, out = 37, max_rows = 17;
  size_t rb = pd_ggml_row_bytes(t, in);
  uint8_t *w = malloc(rb * out);
  float *wf = malloc(sizeof(float) * in * out), *row = malloc(sizeof(float) * in);
  for (int64_t o = 0; o < out; o++) {
    for (int64_t i = 0; i < in; i++) row[i] = frand();
    ck_assert_int_eq(pd_quantize_row(t, row, w + rb * o, in), 0);
    ck_assert_int_eq(pd_dequant_row(t, w + rb * o, wf + in * o, in), 0);
  }
  float *x = malloc(sizeof(float) * in * max_rows);
  for (int64_t i = 0; i < in * max_rows; i++) x[i] = frand();
  float *ye = malloc(sizeof(float) * out * max_rows), *yf = malloc(sizeof(float) * out * max_rows);
  float *y1 = malloc(sizeof(float) * out);
  ck_assert_int_eq(pd_matmul(w, t, in, out, x, ye, max_rows, PD_MATMUL_EXACT), 0);
  ck_assert_int_eq(pd_matmul(w, t, in, out, x, yf, max_rows, PD_MATMUL_FAST), 0);
  double *xq = malloc(sizeof(double) * in);
  for (int64_t r = 0; r < max_rows; r++) {
    int8_activations(x + in * r, xq, in);
    for (int64_t o = 0; o < out; o++) {
      double ref = 0, mag = 0, ref_q = 0;
      for (int64_t i = 0; i < in; i++) {
        ref += (double)wf[in * o + i] * x[in * r + i];
        mag += fabs((double)wf[in * o + i] * x[in * r + i]);
        ref_q += (double)wf[in * o + i] * xq[i];
      }
      if (pd_matmul_is_fast(t))
        ck_assert_msg(fabs(yf[out * r + o] - ref_q) <= 1e-5 * mag,
                      "%s fast r%lld o%lld: %.9g vs %.9g with int8 activations",
                      pd_ggml_type_name(t), (long long)r, (long long)o, yf[out * r + o], ref_q);
      ck_assert_msg(fabs(ye[out * r + o] - ref) <= 1e-5 * mag, "%s exact r%lld o%lld: %g vs %g",
                    pd_ggml_type_name(t), (long long)r, (long long)o, ye[out * r + o], ref);
      ck_assert_msg(fabs(yf[out * r + o] - ref) <= 2e-2 * mag, "%s fast r%lld o%lld: %g vs %g",
                    pd_ggml_type_name(t), (long long)r, (long long)o, yf[out * r + o], ref);
    }
  }
  free(xq);
  /* the same bits for a row alone, in any batch size, with 1 or 2 threads */
  for (int mode = 0; mode < 2; mode++) {
    const float *full = mode ? yf : ye;
    for (int threads = 1; threads <= 2; threads++) {
#ifdef _OPENMP
      omp_set_num_threads(threads);
#endif
      for (int64_t n = 1; n <= max_rows; n += 4) {
        float *y = malloc(sizeof(float) * out * n);
        ck_assert_int_eq(pd_matmul(w, t, in, out, x, y, n, (enum pd_matmul_mode)mode), 0);
        ck_assert_msg(memcmp(y, full, sizeof(float) * out * n) == 0,
                      "%s mode %d: rows differ with n_rows %lld, %d threads", pd_ggml_type_name(t),
                      mode, (long long)n, threads);
        free(y);
      }
      ck_assert_int_eq(pd_matmul(w, t, in, out, x + in * 5, y1, 1, (enum pd_matmul_mode)mode), 0);
      ck_assert(memcmp(y1, full + out * 5, sizeof(float) * out) == 0);
    }
  }
  free(w), free(wf), free(row), free(x), free(ye), free(yf), free(y1);
}
END_TEST

/* A random weight of out rows of in elements, quantized to t; the caller frees it. */
static uint8_t *random_weight(enum pd_ggml_type t, int64_t in, int64_t out) {
  size_t rb = pd_ggml_row_bytes(t, in);
  uint8_t *w = malloc(rb * out);
  float *row = malloc(sizeof(float) * in);
  for (int64_t o = 0; o < out; o++) {
    for (int64_t i = 0; i < in; i++) row[i] = frand();
    ck_assert_int_eq(pd_quantize_row(t, row, w + rb * o, in), 0);
  }
  free(row);
  return w;
}

/* pd_matmul_n over weights of mixed types and odd sizes gives each weight the bits pd_matmul
 * gives it alone, in both modes, with 1 and 2 threads, for 1..9 rows; with a weight of a type
 * the fast path does not take (f16) among them too. */
START_TEST(a_set_of_weights_matches_each_alone) {
  enum { N = 4 };
  const int64_t in = 256, max_rows = 9;
  const enum pd_ggml_type sets[3][N] = {{PD_GGML_Q4_1, PD_GGML_Q8_0, PD_GGML_Q4_0, PD_GGML_Q4_1},
                                        {PD_GGML_Q8_0, PD_GGML_F16, PD_GGML_Q4_1, PD_GGML_Q4_0},
                                        {PD_GGML_Q4_K, PD_GGML_Q5_0, PD_GGML_Q6_K, PD_GGML_Q2_K}};
  const int64_t dims[N] = {40, 17, 33, 16};
  float *x = malloc(sizeof(float) * in * max_rows);
  for (int64_t i = 0; i < in * max_rows; i++) x[i] = frand();
  for (int set = 0; set < 3; set++) {
    uint8_t *w[N];
    float *alone[N], *together[N];
    pd_matmul_out outs[N];
    for (int i = 0; i < N; i++) {
      w[i] = random_weight(sets[set][i], in, dims[i]);
      alone[i] = malloc(sizeof(float) * dims[i] * max_rows);
      together[i] = malloc(sizeof(float) * dims[i] * max_rows);
      outs[i] = (pd_matmul_out){w[i], sets[set][i], dims[i], together[i]};
    }
    for (int mode = 0; mode < 2; mode++)
      for (int threads = 1; threads <= 2; threads++) {
#ifdef _OPENMP
        omp_set_num_threads(threads);
#endif
        for (int64_t n = 1; n <= max_rows; n += 2) {
          for (int i = 0; i < N; i++) {
            ck_assert_int_eq(pd_matmul(w[i], sets[set][i], in, dims[i], x, alone[i], n,
                                       (enum pd_matmul_mode)mode),
                             0);
            for (int64_t k = 0; k < dims[i] * n; k++) together[i][k] = NAN; /* poison */
          }
          ck_assert_int_eq(pd_matmul_n(outs, N, in, x, n, (enum pd_matmul_mode)mode), 0);
          for (int i = 0; i < N; i++)
            ck_assert_msg(memcmp(alone[i], together[i], sizeof(float) * dims[i] * n) == 0,
                          "set %d weight %d (%s) mode %d, %lld rows, %d threads", set, i,
                          pd_ggml_type_name(sets[set][i]), mode, (long long)n, threads);
        }
      }
    for (int i = 0; i < N; i++) free(w[i]), free(alone[i]), free(together[i]);
  }
  free(x);
}
END_TEST

START_TEST(bad_arguments_are_refused) {
  float x[64] = {0}, y[4];
  uint8_t w[512] = {0};
  ck_assert_int_eq(pd_matmul(w, PD_GGML_Q8_0, 33, 1, x, y, 1, PD_MATMUL_EXACT), PD_EINVAL);
  ck_assert_int_eq(pd_matmul(w, (enum pd_ggml_type)99, 32, 1, x, y, 1, PD_MATMUL_FAST), PD_EINVAL);
  ck_assert_int_eq(pd_matmul(NULL, PD_GGML_Q8_0, 32, 1, x, y, 1, PD_MATMUL_FAST), PD_EINVAL);
  ck_assert_int_eq(pd_matmul(w, PD_GGML_Q8_0, 32, 0, x, y, 1, PD_MATMUL_FAST), PD_EINVAL);
  ck_assert_int_eq(pd_matmul(w, PD_GGML_Q8_0, 32, 1, x, y, 0, PD_MATMUL_FAST), PD_OK);
  ck_assert_int_eq(pd_dequant_row(PD_GGML_Q4_K, w, y, 100), PD_EINVAL);
  pd_matmul_out outs[2] = {{w, PD_GGML_Q8_0, 1, y}, {w, PD_GGML_Q8_0, 1, NULL}};
  ck_assert_int_eq(pd_matmul_n(outs, 2, 32, x, 1, PD_MATMUL_FAST), PD_EINVAL);
  ck_assert_int_eq(pd_matmul_n(outs, 0, 32, x, 1, PD_MATMUL_FAST), PD_EINVAL);
  ck_assert_int_eq(pd_matmul_n(NULL, 1, 32, x, 1, PD_MATMUL_FAST), PD_EINVAL);
  ck_assert_int_eq(pd_matmul_n(outs, 1, 32, x, 1, PD_MATMUL_FAST), PD_OK);
}
END_TEST

/* Which formats the fast path runs on integers in this build. */
START_TEST(every_quantized_format_has_a_fast_path) {
  for (int i = 0; i < PD_GGML_N_TYPES; i++) {
    enum pd_ggml_type t = pd_ggml_types[i];
    int is_float = t == PD_GGML_F32 || t == PD_GGML_F16 || t == PD_GGML_BF16;
#ifdef __AVX2__
    int want = !is_float;
#else
    int want = !is_float && (t == PD_GGML_Q4_0 || t == PD_GGML_Q4_1 || t == PD_GGML_Q8_0);
#endif
    ck_assert_msg(pd_matmul_is_fast(t) == want, "%s: fast %d", pd_ggml_type_name(t),
                  pd_matmul_is_fast(t));
  }
}
END_TEST

int main(void) {
  Suite *s = suite_create("matmul");
  TCase *tc = tcase_create("matmul");
  tcase_set_timeout(tc, 120);
  tcase_add_loop_test(tc, matches_double_reference_and_is_batch_invariant, 0, PD_GGML_N_TYPES);
  tcase_add_test(tc, a_set_of_weights_matches_each_alone);
  tcase_add_test(tc, bad_arguments_are_refused);
  tcase_add_test(tc, every_quantized_format_has_a_fast_path);
  suite_add_tcase(s, tc);
  return pd_check_run(s, 1);
}
