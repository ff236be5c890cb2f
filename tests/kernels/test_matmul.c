/*
 * test_matmul.c -- pd_matmul on its own: EXACT against a double-precision dot over the
 * dequantized weights (tolerance 1e-5 relative to the row's sum of |w x|), FAST against EXACT
 * (tolerance 2e-2 of that sum: int8 activations), for every weight type, odd out_dim and n_rows
 * 1..17; each row's result identical whatever n_rows and the thread count; bad arguments refused.
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

static const enum pd_ggml_type types[] = {PD_GGML_F32,  PD_GGML_F16,  PD_GGML_BF16, PD_GGML_Q8_0,
                                          PD_GGML_Q4_0, PD_GGML_Q4_1, PD_GGML_Q5_0, PD_GGML_Q5_1,
                                          PD_GGML_Q4_K, PD_GGML_Q6_K};

START_TEST(matches_double_reference_and_is_batch_invariant) {
  enum pd_ggml_type t = types[_i];
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
  for (int64_t r = 0; r < max_rows; r++)
    for (int64_t o = 0; o < out; o++) {
      double ref = 0, mag = 0;
      for (int64_t i = 0; i < in; i++) {
        ref += (double)wf[in * o + i] * x[in * r + i];
        mag += fabs((double)wf[in * o + i] * x[in * r + i]);
      }
      ck_assert_msg(fabs(ye[out * r + o] - ref) <= 1e-5 * mag, "%s exact r%lld o%lld: %g vs %g",
                    pd_ggml_type_name(t), (long long)r, (long long)o, ye[out * r + o], ref);
      ck_assert_msg(fabs(yf[out * r + o] - ref) <= 2e-2 * mag, "%s fast r%lld o%lld: %g vs %g",
                    pd_ggml_type_name(t), (long long)r, (long long)o, yf[out * r + o], ref);
    }
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

START_TEST(bad_arguments_are_refused) {
  float x[64] = {0}, y[4];
  uint8_t w[512] = {0};
  ck_assert_int_eq(pd_matmul(w, PD_GGML_Q8_0, 33, 1, x, y, 1, PD_MATMUL_EXACT), PD_EINVAL);
  ck_assert_int_eq(pd_matmul(w, (enum pd_ggml_type)99, 32, 1, x, y, 1, PD_MATMUL_FAST), PD_EINVAL);
  ck_assert_int_eq(pd_matmul(NULL, PD_GGML_Q8_0, 32, 1, x, y, 1, PD_MATMUL_FAST), PD_EINVAL);
  ck_assert_int_eq(pd_matmul(w, PD_GGML_Q8_0, 32, 0, x, y, 1, PD_MATMUL_FAST), PD_EINVAL);
  ck_assert_int_eq(pd_matmul(w, PD_GGML_Q8_0, 32, 1, x, y, 0, PD_MATMUL_FAST), PD_OK);
  ck_assert_int_eq(pd_dequant_row(PD_GGML_Q4_K, w, y, 100), PD_EINVAL);
}
END_TEST

int main(void) {
  Suite *s = suite_create("matmul");
  TCase *tc = tcase_create("matmul");
  tcase_set_timeout(tc, 120);
  tcase_add_loop_test(tc, matches_double_reference_and_is_batch_invariant, 0,
                      (int)(sizeof types / sizeof types[0]));
  tcase_add_test(tc, bad_arguments_are_refused);
  suite_add_tcase(s, tc);
  return pd_check_run(s, 1);
}
