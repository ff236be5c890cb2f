/*
 * test_cuda_convert.c -- the CUDA kernels' element conversions (kernels/cuda/pd_cuda_convert.h),
 * compiled for the host, against common/pd_dtype.h: f32 -> f16, bf16 and fp8-e4m3 on every one
 * of the 2^32 f32 bit patterns (NaNs compared as NaN of the same sign, payload included where
 * pd_dtype.h keeps one), and every e4m3 byte decoded through f16 bits. The device runs this
 * same code, so it needs no GPU; the GPU tests then compare stored pools byte for byte.
 * Label unit: runs everywhere. The full sweep takes ~16 s; PD_CONVERT_STRIDE=N samples every
 * N-th pattern instead (default 1, and 97 under AddressSanitizer, where the sweep would take
 * over five minutes).
 */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "pd_check.h"
#include "pd_cuda_convert.h"
#include "pd_dtype.h"

static uint32_t stride(void) {
  const char *s = getenv("PD_CONVERT_STRIDE");
#ifdef __SANITIZE_ADDRESS__
  long v = s ? strtol(s, NULL, 10) : 97;
#else
  long v = s ? strtol(s, NULL, 10) : 1;
#endif
  return v >= 1 ? (uint32_t)v : 1u;
}

START_TEST(f32_to_f16_bf16_fp8_every_input) {
  const uint32_t step = stride();
  uint64_t bad16 = 0, badb = 0, bad8 = 0, first16 = 0, firstb = 0, first8 = 0;
  for (uint64_t u = 0; u <= 0xffffffffull; u += step) {
    const uint32_t x = (uint32_t)u;
    const float f = pd_bits_f32(x);
    if (pd_cuda_cvt_f32_f16(x) != pd_f32_to_f16(f) && !bad16++) first16 = u;
    if (pd_cuda_cvt_f32_bf16(x) != pd_f32_to_bf16(f) && !badb++) firstb = u;
    if (pd_cuda_cvt_f32_fp8(x) != pd_f32_to_fp8e4m3(f) && !bad8++) first8 = u;
  }
  ck_assert_msg(!bad16, "f16: %llu inputs differ, first 0x%08llx", (unsigned long long)bad16,
                (unsigned long long)first16);
  ck_assert_msg(!badb, "bf16: %llu inputs differ, first 0x%08llx", (unsigned long long)badb,
                (unsigned long long)firstb);
  ck_assert_msg(!bad8, "fp8: %llu inputs differ, first 0x%08llx", (unsigned long long)bad8,
                (unsigned long long)first8);
}
END_TEST

START_TEST(fp8_decodes_through_f16_exactly) {
  for (uint32_t v = 0; v < 256; v++) {
    const float want = pd_fp8e4m3_to_f32((uint8_t)v);
    const float got = pd_f16_to_f32(pd_cuda_fp8_to_f16_scaled(v)) * 256.0f;
    if (isnan(want))
      ck_assert_msg(isnan(got), "0x%02x: NaN decoded as %g", v, got);
    else
      ck_assert_msg(memcmp(&got, &want, sizeof got) == 0, "0x%02x: %g, want %g", v, got, want);
  }
}
END_TEST

int main(void) {
  Suite *s = suite_create("cuda_convert");
  TCase *t = tcase_create("host");
  tcase_set_timeout(t, 300);
  tcase_add_test(t, f32_to_f16_bf16_fp8_every_input);
  tcase_add_test(t, fp8_decodes_through_f16_exactly);
  suite_add_tcase(s, t);
  return pd_check_run(s, 1);
}
