/* test_dtype.c -- the scalar conversions of pd_dtype.h and the error strings of pd_err.h. */
#include <check.h>
#include <math.h>
#include <stdlib.h>

#include "pd_check.h"
#include "pd_dtype.h"
#include "pd_err.h"

START_TEST(f16_roundtrip_all_halves) {
  /* Every finite half converts to float and back to itself. */
  for (uint32_t h = 0; h < 0x10000; h++) {
    if (((h >> 10) & 0x1f) == 0x1f) continue;
    float f = pd_f16_to_f32((uint16_t)h);
    ck_assert_uint_eq(pd_f32_to_f16(f), h);
  }
}
END_TEST

START_TEST(f16_rounds_to_nearest_even) {
  ck_assert_uint_eq(pd_f32_to_f16(1.0f), 0x3c00);
  /* 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even (1.0). */
  ck_assert_uint_eq(pd_f32_to_f16(1.0f + ldexpf(1.0f, -11)), 0x3c00);
  ck_assert_uint_eq(pd_f32_to_f16(1.0f + 3 * ldexpf(1.0f, -11)), 0x3c02);
  ck_assert_uint_eq(pd_f32_to_f16(65504.0f), 0x7bff);
  ck_assert_uint_eq(pd_f32_to_f16(70000.0f), 0x7c00);
  ck_assert_uint_eq(pd_f32_to_f16(-ldexpf(1.0f, -24)), 0x8001);
  ck_assert(isnan(pd_f16_to_f32(pd_f32_to_f16(NAN))));
}
END_TEST

START_TEST(bf16_and_fp8) {
  ck_assert_uint_eq(pd_f32_to_bf16(1.0f), 0x3f80);
  ck_assert(pd_bf16_to_f32(pd_f32_to_bf16(3.0f)) == 3.0f);
  for (uint32_t v = 0; v < 256; v++) {
    if ((v & 0x7f) == 0x7f) continue; /* NaN */
    float f = pd_fp8e4m3_to_f32((uint8_t)v);
    ck_assert_uint_eq(pd_f32_to_fp8e4m3(f), v == 0x80 ? 0x80 : v);
  }
  ck_assert(pd_fp8e4m3_to_f32(0x7e) == 448.0f);
  ck_assert_uint_eq(pd_f32_to_fp8e4m3(1000.0f), 0x7e);
  ck_assert_uint_eq(pd_f32_to_fp8e4m3(-1000.0f), 0xfe);
}
END_TEST

START_TEST(error_strings) {
  for (int c = PD_ECODE_MIN; c <= 0; c++) ck_assert_str_ne(pd_strerror(c), "unknown error");
  ck_assert_str_eq(pd_strerror(12345), "unknown error");
}
END_TEST

int main(void) {
  Suite *s = suite_create("dtype");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, f16_roundtrip_all_halves);
  tcase_add_test(tc, f16_rounds_to_nearest_even);
  tcase_add_test(tc, bf16_and_fp8);
  tcase_add_test(tc, error_strings);
  suite_add_tcase(s, tc);
  int rc = pd_check_run(s, 1);
  return rc;
}
