/*
 * test_model.c -- the GGUF reader on good, truncated and corrupted files, and the forward pass's
 * cache contract on the default model: logits computed with a prefix's KV taken from the cache
 * equal, bit for bit, the logits computed with the prefix in the same batch; chunked prefill
 * equals one-shot prefill; a sequence in a batch of three equals the sequence alone.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pd_check.h"
#include "pd_err.h"
#include "pd_gguf.h"
#include "pd_llama.h"
#include "pd_model.h"

/* ---- a tiny GGUF written by hand ---------------------------------------------------------- */

static size_t put(uint8_t *p, const void *v, size_t n) {
  memcpy(p, v, n);
  return n;
}
static size_t put_u32(uint8_t *p, uint32_t v) {
  return put(p, &v, 4);
}
static size_t put_u64(uint8_t *p, uint64_t v) {
  return put(p, &v, 8);
}
static size_t put_str(uint8_t *p, const char *s) {
  size_t n = put_u64(p, strlen(s));
  return n + put(p + n, s, strlen(s));
}

/* One string key and one 4x2 f32 tensor. Returns the file size. */
static size_t tiny_gguf(uint8_t *buf) {
  size_t n = 0;
  n += put_u32(buf + n, 0x46554747u);
  n += put_u32(buf + n, 3);
  n += put_u64(buf + n, 1); /* tensors */
  n += put_u64(buf + n, 2); /* keys */
  n += put_str(buf + n, "general.architecture");
  n += put_u32(buf + n, 8);
  n += put_str(buf + n, "llama");
  n += put_str(buf + n, "general.alignment");
  n += put_u32(buf + n, 4);
  n += put_u32(buf + n, 32);
  n += put_str(buf + n, "w");
  n += put_u32(buf + n, 2);
  n += put_u64(buf + n, 4);
  n += put_u64(buf + n, 2);
  n += put_u32(buf + n, 0); /* f32 */
  n += put_u64(buf + n, 0); /* offset */
  while (n % 32) buf[n++] = 0;
  for (int i = 0; i < 8; i++) {
    float f = (float)i;
    n += put(buf + n, &f, 4);
  }
  return n;
}

static const char *write_tmp(const uint8_t *buf, size_t n) {
  static char path[64];
  snprintf(path, sizeof path, "/tmp/pd_gguf_test.%d", (int)getpid());
  FILE *f = fopen(path, "wb");
  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(fwrite(buf, 1, n, f), n);
  fclose(f);
  return path;
}

static int open_bytes(const uint8_t *buf, size_t n, char *err, size_t errlen) {
  pd_gguf *g = NULL;
  int rc = pd_gguf_open(write_tmp(buf, n), &g, err, errlen);
  if (rc == 0) pd_gguf_close(g);
  return rc;
}

START_TEST(gguf_reads_a_good_file) {
  uint8_t buf[512];
  size_t n = tiny_gguf(buf);
  pd_gguf *g;
  char err[256];
  ck_assert_int_eq(pd_gguf_open(write_tmp(buf, n), &g, err, sizeof err), 0);
  pd_str s;
  ck_assert_int_eq(pd_gguf_get_str(g, "general.architecture", &s), 0);
  ck_assert_uint_eq(s.len, 5);
  ck_assert_int_eq(memcmp(s.ptr, "llama", 5), 0);
  uint32_t a;
  ck_assert_int_eq(pd_gguf_get_u32(g, "general.alignment", &a), 0);
  ck_assert_uint_eq(a, 32);
  ck_assert_int_eq(pd_gguf_get_u32(g, "missing", &a), PD_ENOTFOUND);
  ck_assert_int_eq(pd_gguf_get_str(g, "general.alignment", &s), PD_EINVAL);
  const pd_gguf_tensor *t = pd_gguf_tensor_by_name(g, "w");
  ck_assert_ptr_nonnull(t);
  ck_assert_uint_eq(t->ne[0], 4);
  ck_assert_uint_eq(t->ne[1], 2);
  ck_assert_uint_eq(t->nbytes, 32);
  ck_assert(((const float *)t->data)[7] == 7.0f);
  ck_assert_uint_eq(pd_gguf_version(g), 3);
  pd_gguf_close(g);
  /* version 2 has the same layout */
  buf[4] = 2;
  ck_assert_int_eq(pd_gguf_open(write_tmp(buf, n), &g, err, sizeof err), 0);
  ck_assert_uint_eq(pd_gguf_version(g), 2);
  pd_gguf_close(g);
}
END_TEST

START_TEST(unsupported_architecture_is_refused_by_name) {
  uint8_t buf[512];
  size_t n = tiny_gguf(buf);
  uint8_t *arch = memmem(buf, n, "llama", 5);
  ck_assert_ptr_nonnull(arch);
  memcpy(arch, "bloom", 5);
  pd_model *m;
  char err[256] = "";
  ck_assert_int_eq(pd_model_load(write_tmp(buf, n), &m, err, sizeof err), PD_EUNSUPPORTED);
  ck_assert_msg(strstr(err, "bloom") && strstr(err, "not supported"), "message: %s", err);
}
END_TEST

START_TEST(gguf_refuses_every_truncation) {
  uint8_t buf[512];
  size_t n = tiny_gguf(buf);
  char err[256];
  for (size_t cut = 0; cut < n; cut++) {
    err[0] = 0;
    int rc = open_bytes(buf, cut, err, sizeof err);
    ck_assert_msg(rc == PD_ECORRUPT, "truncated at %zu: rc %d", cut, rc);
    ck_assert_msg(err[0], "no message at %zu", cut);
  }
}
END_TEST

START_TEST(gguf_refuses_corruptions_with_a_reason) {
  uint8_t good[512], buf[512];
  size_t n = tiny_gguf(good);
  char err[256];
  struct {
    size_t off;
    uint32_t val;
    int rc;
    const char *says;
  } cases[] = {
      {0, 0x12345678, PD_ECORRUPT, "magic"},
      {4, 7, PD_EUNSUPPORTED, "version"},
      {8, 0xffffff, PD_ECORRUPT, "counts"},
      {131, 16, PD_EUNSUPPORTED, "type 16 (iq2_xxs), which prefixd does not read"}, /* w's type */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    memcpy(buf, good, n);
    memcpy(buf + cases[i].off, &cases[i].val, 4);
    ck_assert_int_eq(open_bytes(buf, n, err, sizeof err), cases[i].rc);
    ck_assert_msg(strstr(err, cases[i].says), "message '%s' lacks '%s'", err, cases[i].says);
  }
  /* Every single-byte corruption either still parses or is refused; never a crash. */
  for (size_t off = 0; off < n; off++)
    for (int bit = 0; bit < 8; bit += 3) {
      memcpy(buf, good, n);
      buf[off] ^= (uint8_t)(1 << bit);
      int rc = open_bytes(buf, n, err, sizeof err);
      ck_assert(rc == 0 || rc == PD_ECORRUPT || rc == PD_EUNSUPPORTED);
    }
  ck_assert_int_eq(open_bytes(good, 0, err, sizeof err), PD_ECORRUPT);
  pd_gguf *g;
  ck_assert_int_eq(pd_gguf_open("/nonexistent/model.gguf", &g, err, sizeof err), PD_ENOTFOUND);
}
END_TEST

/* ---- the forward pass on the default model ------------------------------------------------ */

static pd_model *model;

static void load_model(void) {
  const char *path = getenv("PREFIXD_MODEL");
  char err[256];
  if (!path || access(path, R_OK)) {
    fprintf(stderr, "test_model: PREFIXD_MODEL not readable\n");
    exit(77);
  }
  ck_assert_msg(pd_model_load(path, &model, err, sizeof err) == 0, "%s", err);
}

START_TEST(default_model_is_what_we_expect) {
  load_model();
  ck_assert_str_eq(model->arch, "llama");
  ck_assert_int_eq(model->n_layers, 30);
  ck_assert_int_eq(model->d_model, 576);
  ck_assert_int_eq(model->n_heads, 9);
  ck_assert_int_eq(model->n_kv_heads, 3);
  ck_assert_int_eq(model->n_vocab, 49152);
  ck_assert(model->tied_output);
  ck_assert_int_eq(model->tok_embd.type, PD_GGML_Q8_0);
  for (int l = 0; l < model->n_layers; l++) {
    const pd_layer_weights *L = &model->layers[l];
    ck_assert_int_eq(L->wq.type, PD_GGML_Q4_1);
    ck_assert_int_eq(L->w_down.type, PD_GGML_Q4_1);
    ck_assert_int_eq(L->attn_norm.type, PD_GGML_F32);
  }
  pd_model_free(model);
}
END_TEST

#define NTOK 40

static void tokens(int32_t *t, int n, int salt) {
  for (int i = 0; i < n; i++) t[i] = 100 + (i * 37 + salt * 1001) % 20000;
}

START_TEST(cached_prefix_gives_identical_logits) {
  load_model();
  /* (matmul mode, cache dtype) for each loop iteration */
  static const enum pd_matmul_mode modes[5] = {PD_MATMUL_EXACT, PD_MATMUL_FAST, PD_MATMUL_EXACT,
                                               PD_MATMUL_FAST, PD_MATMUL_FAST};
  static const enum pd_dtype dtypes[5] = {PD_DTYPE_F16, PD_DTYPE_F16, PD_DTYPE_BF16, PD_DTYPE_F32,
                                          PD_DTYPE_FP8_E4M3};
  pd_llama ctx;
  ck_assert_int_eq(pd_llama_init(&ctx, model, 16, dtypes[_i], modes[_i], 128, 4), 0);
  size_t bb = pd_kv_block_bytes(&ctx.kv);
  uint8_t *pool = calloc(32, bb);
  int V = model->n_vocab;
  float *one = malloc(sizeof(float) * V), *two = malloc(sizeof(float) * V),
        *reuse = malloc(sizeof(float) * V), *batch = malloc(sizeof(float) * 3 * V);
  int32_t tok[NTOK];
  tokens(tok, NTOK, 0);
  /* 1: all 40 at once into blocks 0..2 */
  int32_t ta[3] = {0, 1, 2};
  pd_llama_seq s = {tok, NTOK, 0, ta, 3, 1};
  ck_assert_int_eq(pd_llama_forward(&ctx, pool, &s, 1, one), 0);
  /* 2: 16 then 24, into blocks 3..5 */
  int32_t tb[3] = {3, 4, 5};
  s = (pd_llama_seq){tok, 16, 0, tb, 3, 1};
  ck_assert_int_eq(pd_llama_forward(&ctx, pool, &s, 1, two), 0);
  s = (pd_llama_seq){tok + 16, NTOK - 16, 16, tb, 3, 1};
  ck_assert_int_eq(pd_llama_forward(&ctx, pool, &s, 1, two), 0);
  ck_assert_msg(memcmp(one, two, sizeof(float) * V) == 0, "chunked prefill differs");
  /* 3: a new sequence reuses block 0 of the first (the cached prefix) and computes the rest */
  int32_t tc[3] = {0, 6, 7};
  s = (pd_llama_seq){tok + 16, NTOK - 16, 16, tc, 3, 1};
  ck_assert_int_eq(pd_llama_forward(&ctx, pool, &s, 1, reuse), 0);
  ck_assert_msg(memcmp(one, reuse, sizeof(float) * V) == 0, "cached-prefix logits differ");
  /* 4: three sequences in one batch, each equal to itself alone */
  int32_t t2[NTOK], t3[NTOK];
  tokens(t2, NTOK, 1);
  tokens(t3, NTOK, 2);
  int32_t tbl[3][3] = {{8, 9, 10}, {11, 12, 13}, {14, 15, 16}};
  pd_llama_seq seqs[3] = {
      {tok, NTOK, 0, tbl[0], 3, 1}, {t2, 7, 0, tbl[1], 3, 1}, {t3, 23, 0, tbl[2], 3, 1}};
  ck_assert_int_eq(pd_llama_forward(&ctx, pool, seqs, 3, batch), 0);
  ck_assert_msg(memcmp(one, batch, sizeof(float) * V) == 0, "batched row differs");
  for (int i = 1; i < 3; i++) {
    int32_t tt[3] = {17 + 3 * i, 18 + 3 * i, 19 + 3 * i};
    pd_llama_seq alone = {seqs[i].tokens, seqs[i].n_new, 0, tt, 3, 1};
    ck_assert_int_eq(pd_llama_forward(&ctx, pool, &alone, 1, two), 0);
    ck_assert_msg(memcmp(two, batch + (size_t)i * V, sizeof(float) * V) == 0, "seq %d differs", i);
  }
  /* bad input: a token id outside the vocabulary, a block table too short */
  int32_t bad = V;
  s = (pd_llama_seq){&bad, 1, 0, ta, 3, 1};
  ck_assert_int_eq(pd_llama_forward(&ctx, pool, &s, 1, one), PD_EINVAL);
  s = (pd_llama_seq){tok, NTOK, 0, ta, 2, 1};
  ck_assert_int_eq(pd_llama_forward(&ctx, pool, &s, 1, one), PD_EINVAL);
  free(one), free(two), free(reuse), free(batch), free(pool);
  pd_llama_free(&ctx);
  pd_model_free(model);
}
END_TEST

/* The fp8 cache against the f32 cache on the default model: 40 prompt tokens then 24 greedy
 * steps decoded from the f32 run's tokens (teacher forcing, so one early flip does not change
 * every later comparison). Each step's logits are within 0.15 of the largest |logit| and the
 * top-1 tokens agree on at least 22 of 24 steps (measured: 0.052, and every step agrees). */
START_TEST(fp8_cache_is_close_to_f32) {
  load_model();
  const int steps = 24, V = model->n_vocab;
  pd_llama c32, c8;
  ck_assert_int_eq(pd_llama_init(&c32, model, 16, PD_DTYPE_F32, PD_MATMUL_FAST, 128, 1), 0);
  ck_assert_int_eq(pd_llama_init(&c8, model, 16, PD_DTYPE_FP8_E4M3, PD_MATMUL_FAST, 128, 1), 0);
  uint8_t *p32 = calloc(5, pd_kv_block_bytes(&c32.kv)), *p8 = calloc(5, pd_kv_block_bytes(&c8.kv));
  float *l32 = malloc(sizeof(float) * V), *l8 = malloc(sizeof(float) * V);
  int32_t tok[NTOK + 25], table[5] = {0, 1, 2, 3, 4};
  tokens(tok, NTOK, 3);
  int agree = 0;
  double worst = 0;
  for (int step = 0; step <= steps; step++) {
    int past = step ? NTOK + step - 1 : 0, n = step ? 1 : NTOK;
    pd_llama_seq s = {tok + past, n, past, table, 5, 1};
    ck_assert_int_eq(pd_llama_forward(&c32, p32, &s, 1, l32), 0);
    ck_assert_int_eq(pd_llama_forward(&c8, p8, &s, 1, l8), 0);
    int a32 = 0, a8 = 0;
    double big = 0, diff = 0;
    for (int i = 0; i < V; i++) {
      if (l32[i] > l32[a32]) a32 = i;
      if (l8[i] > l8[a8]) a8 = i;
      big = fmax(big, fabs(l32[i]));
      diff = fmax(diff, fabs(l32[i] - l8[i]));
    }
    worst = fmax(worst, diff / big);
    if (step) agree += a32 == a8;
    tok[NTOK + step] = a32;
  }
  ck_assert_msg(worst <= 0.15, "fp8 logits off by %.3g of the largest", worst);
  ck_assert_msg(agree >= steps - 2, "fp8 agreed on %d of %d greedy steps", agree, steps);
  free(p32), free(p8), free(l32), free(l8);
  pd_llama_free(&c32), pd_llama_free(&c8);
  pd_model_free(model);
}
END_TEST

int main(void) {
  Suite *s = suite_create("model");
  TCase *g = tcase_create("gguf");
  tcase_add_test(g, gguf_reads_a_good_file);
  tcase_add_test(g, gguf_refuses_every_truncation);
  tcase_add_test(g, gguf_refuses_corruptions_with_a_reason);
  tcase_add_test(g, unsupported_architecture_is_refused_by_name);
  suite_add_tcase(s, g);
  if (getenv("PREFIXD_MODEL") && !access(getenv("PREFIXD_MODEL"), R_OK) &&
      !getenv("PD_GGUF_ONLY")) {
    TCase *f = tcase_create("forward");
    tcase_set_timeout(f, 300);
    tcase_add_test(f, default_model_is_what_we_expect);
    tcase_add_loop_test(f, cached_prefix_gives_identical_logits, 0, 5);
    tcase_add_test(f, fp8_cache_is_close_to_f32);
    suite_add_tcase(s, f);
  }
  int rc = pd_check_run(s, 1);
  return rc;
}
