/* test_sha256.c -- pd_sha256 against digests from Python's hashlib (FIPS 180-4 vectors and the
 * padding edge cases: 55, 56 and 64 bytes), one-shot and fed in uneven pieces. */
#include <check.h>
#include <stdio.h>
#include <string.h>

#include "pd_check.h"
#include "pd_sha256.h"

static void hex(const uint8_t d[32], char out[65]) {
  for (int i = 0; i < 32; i++) snprintf(out + 2 * i, 3, "%02x", d[i]);
}

static const struct {
  char c;
  size_t n;
  const char *digest;
} vectors[] = {
    {0, 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
    {'a', 55, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318"},
    {'a', 56, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a"},
    {'a', 64, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb"},
    {'a', 1000, "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3"},
};

START_TEST(matches_hashlib) {
  uint8_t d[32];
  char h[65];
  pd_sha256_digest("abc", 3, d);
  hex(d, h);
  ck_assert_str_eq(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  char buf[1000];
  for (size_t v = 0; v < sizeof vectors / sizeof *vectors; v++) {
    memset(buf, vectors[v].c, vectors[v].n);
    pd_sha256_digest(buf, vectors[v].n, d);
    hex(d, h);
    ck_assert_str_eq(h, vectors[v].digest);
    /* the same bytes in pieces of 1, 2, 3, ... */
    pd_sha256 s;
    pd_sha256_init(&s);
    for (size_t off = 0, step = 1; off < vectors[v].n; off += step, step++)
      pd_sha256_update(&s, buf + off, vectors[v].n - off < step ? vectors[v].n - off : step);
    pd_sha256_final(&s, d);
    hex(d, h);
    ck_assert_str_eq(h, vectors[v].digest);
  }
}
END_TEST

int main(void) {
  Suite *s = suite_create("sha256");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, matches_hashlib);
  suite_add_tcase(s, tc);
  return pd_check_run(s, 1);
}
