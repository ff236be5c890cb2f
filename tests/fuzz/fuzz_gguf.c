/*
 * fuzz_gguf.c -- libFuzzer target: the GGUF reader (model/pd_gguf.h) and what reads a model file
 * right after it: the tokenizer's construction (pd_tokenizer_from_gguf), the chat template
 * (pd_chat_template_from_gguf) and the model loader (pd_model_load).
 *
 * DESIGN
 *
 * The reader opens a path and maps it, so the input is written into a memfd (one, made at start,
 * truncated and rewritten per input) and opened as /proc/self/fd/N: no disk, no file left
 * behind. Per input:
 *   - pd_gguf_open returns 0, or an error code with a non-empty message;
 *   - on success, every accessor is asked for every key the runtime reads (and the scalar and
 *     array accessors for each, so type mismatches are exercised); strings and arrays that come
 *     back are read to their last byte; every tensor is checked: known type, 1 to 4 dimensions,
 *     nbytes equal to row bytes times rows (computed without wrapping), data not NULL, and the
 *     tensors' bytes, read in full, add up to no more than the file (the reader promises no
 *     overlap); tensor_by_name finds each tensor's name;
 *   - the tokenizer is built from the file; when that works, a fixed text with special tokens
 *     is tokenized and every id's piece is read;
 *   - the chat template is read and, when it is recognised, rendered;
 *   - pd_model_load opens the same file and checks shapes; when that works, its description is
 *     printed to a buffer.
 * The sanitizers and libFuzzer's timeouts catch the rest (a read outside the mapping faults).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "pd_chat.h"
#include "pd_err.h"
#include "pd_gguf.h"
#include "pd_model.h"
#include "pd_quant.h"
#include "pd_tokenizer.h"

#define FUZZ_CHECK(cond)                                                                           \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "fuzz_gguf: check failed: %s (line %d)\n", #cond, __LINE__);                 \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

static int file_fd = -1;
static char file_path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  file_fd = memfd_create("pd-fuzz-gguf", MFD_CLOEXEC);
  FUZZ_CHECK(file_fd >= 0);
  snprintf(file_path, sizeof file_path, "/proc/self/fd/%d", file_fd);
  return 0;
}

static void write_file(const uint8_t *data, size_t size) {
  FUZZ_CHECK(ftruncate(file_fd, 0) == 0);
  size_t off = 0;
  while (off < size) {
    ssize_t n = pwrite(file_fd, data + off, size - off, (off_t)off);
    FUZZ_CHECK(n > 0);
    off += (size_t)n;
  }
}

static volatile uint8_t sink;

static void touch(const void *p, uint64_t n) {
  const uint8_t *b = p;
  uint8_t x = 0;
  for (uint64_t i = 0; i < n; i++) x ^= b[i];
  sink = x;
}

static const char *const keys[] = {"general.architecture",
                                   "general.alignment",
                                   "general.name",
                                   "llama.block_count",
                                   "llama.context_length",
                                   "llama.embedding_length",
                                   "llama.feed_forward_length",
                                   "llama.attention.head_count",
                                   "llama.attention.head_count_kv",
                                   "llama.attention.layer_norm_rms_epsilon",
                                   "llama.rope.freq_base",
                                   "llama.rope.dimension_count",
                                   "llama.vocab_size",
                                   "tokenizer.ggml.model",
                                   "tokenizer.ggml.pre",
                                   "tokenizer.ggml.tokens",
                                   "tokenizer.ggml.token_type",
                                   "tokenizer.ggml.merges",
                                   "tokenizer.ggml.bos_token_id",
                                   "tokenizer.ggml.eos_token_id",
                                   "tokenizer.ggml.eot_token_id",
                                   "tokenizer.chat_template"};

static void ask_every_accessor(const pd_gguf *g, const char *key) {
  uint32_t u32;
  int64_t i64;
  float f32;
  int b;
  pd_str s;
  int rc = pd_gguf_get_u32(g, key, &u32);
  FUZZ_CHECK(rc == PD_OK || rc == PD_ENOTFOUND || rc == PD_EINVAL);
  rc = pd_gguf_get_i64(g, key, &i64);
  FUZZ_CHECK(rc == PD_OK || rc == PD_ENOTFOUND || rc == PD_EINVAL);
  rc = pd_gguf_get_f32(g, key, &f32);
  FUZZ_CHECK(rc == PD_OK || rc == PD_ENOTFOUND || rc == PD_EINVAL);
  rc = pd_gguf_get_bool(g, key, &b);
  FUZZ_CHECK(rc == PD_OK || rc == PD_ENOTFOUND || rc == PD_EINVAL);
  if (pd_gguf_get_str(g, key, &s) == PD_OK) touch(s.ptr, s.len);
  enum pd_gguf_vtype et;
  uint64_t n;
  const void *arr;
  if (pd_gguf_get_arr(g, key, &et, &n, &arr) == PD_OK) {
    uint64_t es = et == PD_GGUF_U8 || et == PD_GGUF_I8 || et == PD_GGUF_BOOL    ? 1
                  : et == PD_GGUF_U16 || et == PD_GGUF_I16                      ? 2
                  : et == PD_GGUF_U32 || et == PD_GGUF_I32 || et == PD_GGUF_F32 ? 4
                  : et == PD_GGUF_U64 || et == PD_GGUF_I64 || et == PD_GGUF_F64 ? 8
                                                                                : 0;
    FUZZ_CHECK(es != 0);
    touch(arr, n * es);
  }
  const pd_str *strs;
  if (pd_gguf_get_str_arr(g, key, &strs, &n) == PD_OK)
    for (uint64_t i = 0; i < n; i++) touch(strs[i].ptr, strs[i].len);
}

static void check_tensors(const pd_gguf *g, size_t file_size) {
  uint64_t n = pd_gguf_n_tensors(g), total = 0;
  for (uint64_t i = 0; i < n; i++) {
    const pd_gguf_tensor *t = pd_gguf_tensor_at(g, i);
    FUZZ_CHECK(t != NULL);
    FUZZ_CHECK(t->n_dims >= 1 && t->n_dims <= 4);
    FUZZ_CHECK(pd_ggml_type_supported(t->type));
    FUZZ_CHECK(t->data != NULL && t->nbytes > 0);
    uint64_t rows, want;
    FUZZ_CHECK(!__builtin_mul_overflow(t->ne[1], t->ne[2], &rows) &&
               !__builtin_mul_overflow(rows, t->ne[3], &rows));
    FUZZ_CHECK(!__builtin_mul_overflow((uint64_t)pd_ggml_row_bytes(t->type, (int64_t)t->ne[0]),
                                       rows, &want) &&
               t->nbytes == want);
    total += t->nbytes;
    FUZZ_CHECK(total <= file_size);
    touch(t->data, t->nbytes);
    touch(t->name.ptr, t->name.len);
    char name[256];
    if (t->name.len < sizeof name && !memchr(t->name.ptr, 0, t->name.len)) {
      memcpy(name, t->name.ptr, t->name.len);
      name[t->name.len] = 0;
      const pd_gguf_tensor *found = pd_gguf_tensor_by_name(g, name);
      FUZZ_CHECK(found != NULL && found->name.len == t->name.len);
    }
  }
  FUZZ_CHECK(pd_gguf_tensor_at(g, n) == NULL);
}

static void use_tokenizer(const pd_gguf *g) {
  pd_tokenizer *t;
  char err[256] = "";
  int rc = pd_tokenizer_from_gguf(g, &t, err, sizeof err);
  if (rc != PD_OK) {
    FUZZ_CHECK(err[0] != 0);
    return;
  }
  int32_t n_vocab = pd_tokenizer_n_vocab(t);
  FUZZ_CHECK(n_vocab > 0);
  for (int32_t i = 0; i < n_vocab; i++) {
    const char *p;
    size_t len;
    FUZZ_CHECK(pd_token_piece(t, i, &p, &len) == PD_OK);
    touch(p, len);
  }
  static const char text[] = "<|im_start|>user\nHello, world! 12345 caf\xc3\xa9 \xf0\x9f\x98\x80"
                             "\xff\xfe it's<|im_end|>\n";
  int32_t ids[256];
  size_t n;
  for (int special = 0; special < 2; special++) {
    rc = pd_tokenize(t, text, sizeof text - 1, special, ids, 256, &n);
    FUZZ_CHECK(rc == PD_OK && n <= sizeof text - 1);
    for (size_t i = 0; i < n; i++) FUZZ_CHECK(ids[i] >= 0 && ids[i] < n_vocab);
  }
  pd_tokenizer_free(t);
}

static void use_chat_template(const pd_gguf *g) {
  pd_chat_template tpl;
  char err[256];
  if (pd_chat_template_from_gguf(g, &tpl, err, sizeof err) != PD_OK) return;
  FUZZ_CHECK(strlen(tpl.default_system) < sizeof tpl.default_system);
  pd_chat_msg msgs[2] = {{.role = "user", .content = "hi"},
                         {.role = "assistant", .content = "hello"}};
  char *text;
  FUZZ_CHECK(pd_chat_render(&tpl, msgs, 2, NULL, 0, 1, &text, err, sizeof err) == PD_OK);
  free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  write_file(data, size);
  pd_gguf *g;
  char err[256] = "";
  int rc = pd_gguf_open(file_path, &g, err, sizeof err);
  if (rc != PD_OK) {
    FUZZ_CHECK(rc < 0 && g == NULL && err[0] != 0);
    return 0;
  }
  uint32_t version = pd_gguf_version(g);
  FUZZ_CHECK(version == 2 || version == 3);
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) ask_every_accessor(g, keys[i]);
  check_tensors(g, size);
  use_tokenizer(g);
  use_chat_template(g);
  pd_gguf_close(g);

  pd_model *m;
  if (pd_model_load(file_path, &m, err, sizeof err) == PD_OK) {
    char desc[512];
    pd_model_describe(m, desc, sizeof desc);
    pd_model_free(m);
  }
  return 0;
}
