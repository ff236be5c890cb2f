/*
 * fuzz_tokenizer.c -- libFuzzer target: the byte-level BPE tokenizer (model/pd_tokenizer.h) and
 * the streaming detokenizer (model/pd_detok.h) on arbitrary bytes as text.
 *
 * DESIGN
 *
 * Once, at start: a synthetic vocabulary is written with the GGUF writer (model/pd_gguf_writer.h)
 * into a temporary file and read back with pd_gguf_open + pd_tokenizer_from_gguf, four times: with
 * the "smollm" pre-tokenizer (digits split), "gpt2", "llama-bpe" (Llama 3's pattern and its
 * ignore_merges) and "qwen2". The vocabulary has every one of the 256
 * byte tokens, control tokens <|endoftext|> <|im_start|> <|im_end|>, a user-defined token that
 * shares a prefix with <|im_start|>, merges of every pair of lowercase letters, space and newline,
 * a few longer ASCII words, and merged multi-byte UTF-8 characters (é, €, an emoji). Every merged
 * token's text is the concatenation of its two parts, so decoding is exact.
 *
 * Per input (the whole input is the text), for each tokenizer: the pre-tokenizer's pieces
 * (pd_tokenizer_split) tile the input; and for parse_special 0 and 1:
 *   - pd_tokenize succeeds with room for one id per byte, and gives no more ids than bytes;
 *   - every id is in the vocabulary, and the concatenated pieces of the ids are the input,
 *     byte for byte (every byte has a token, so nothing is dropped; a special token's piece is its
 *     text);
 *   - with room for only half of the ids, PD_EFULL, the same full count and the same first ids;
 *   - the streaming detokenizer (64-byte output per push, as the daemon reads it) releases only
 *     whole UTF-8 and, for valid UTF-8 input, gives back the input less the special tokens that
 *     were cut out (test_text.c's detok_never_breaks_utf8, on any text). For invalid input its
 *     output is still valid UTF-8 (U+FFFD replacements).
 * Then once more with a stop string taken from the input (a 1-4 byte slice at a position the
 * first byte picks): for valid UTF-8 text without parse_special, the detokenizer's output is the
 * input up to the stop string's first occurrence.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pd_detok.h"
#include "pd_err.h"
#include "pd_gguf.h"
#include "pd_gguf_writer.h"
#include "pd_tokenizer.h"

#define FUZZ_CHECK(cond)                                                                           \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "fuzz_tokenizer: check failed: %s (line %d)\n", #cond, __LINE__);            \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

#define N_TOKENIZERS 4
static pd_tokenizer *tokenizers[N_TOKENIZERS]; /* smollm, gpt2, llama-bpe, qwen2 */

/* ---- the synthetic vocabulary -------------------------------------------------------------- */

static const char *const special_texts[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>",
                                            "<|im_start|>tool"};
#define N_SPECIALS 4

typedef struct vocab {
  char **tokens;
  int32_t *types;
  size_t n, cap;
  char **merges;
  size_t n_merges, cap_merges;
} vocab;

/* GPT-2's byte-level alphabet, as UTF-8: printable bytes stand for themselves, others for
 * 256 + n. Written independently of the tokenizer's own table. */
static void byte_as_text(uint8_t b, char *out) {
  unsigned cp = b;
  int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
  if (!printable) {
    unsigned n = 0;
    for (unsigned x = 0; x < b; x++)
      if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || x >= 174)) n++;
    cp = 256 + n;
  }
  if (cp < 0x80) {
    out[0] = (char)cp, out[1] = 0;
  } else {
    out[0] = (char)(0xC0 | (cp >> 6)), out[1] = (char)(0x80 | (cp & 0x3F)), out[2] = 0;
  }
}

/* The token text of a byte string. */
static char *bytes_as_text(const uint8_t *s, size_t n) {
  char *t = malloc(2 * n + 1), *p = t;
  FUZZ_CHECK(t != NULL);
  *p = 0;
  for (size_t i = 0; i < n; i++) {
    byte_as_text(s[i], p);
    p += strlen(p);
  }
  return t;
}

static void add_token(vocab *v, char *text, int32_t type) {
  if (v->n == v->cap) {
    v->cap = v->cap ? 2 * v->cap : 1024;
    v->tokens = realloc(v->tokens, v->cap * sizeof *v->tokens);
    v->types = realloc(v->types, v->cap * sizeof *v->types);
    FUZZ_CHECK(v->tokens && v->types);
  }
  v->tokens[v->n] = text;
  v->types[v->n] = type;
  v->n++;
}

static int has_token(const vocab *v, const char *text) {
  for (size_t i = 0; i < v->n; i++)
    if (!strcmp(v->tokens[i], text)) return 1;
  return 0;
}

/* Adds the merge of byte strings a and b (both already tokens) and their concatenation. */
static void add_merge(vocab *v, const uint8_t *a, size_t na, const uint8_t *b, size_t nb) {
  char *ta = bytes_as_text(a, na), *tb = bytes_as_text(b, nb);
  size_t la = strlen(ta), lb = strlen(tb);
  char *merged = malloc(la + lb + 1), *rule = malloc(la + lb + 2);
  FUZZ_CHECK(merged && rule);
  memcpy(merged, ta, la), memcpy(merged + la, tb, lb + 1);
  memcpy(rule, ta, la), rule[la] = ' ', memcpy(rule + la + 1, tb, lb + 1);
  free(ta), free(tb);
  if (has_token(v, merged)) {
    free(merged), free(rule);
    return;
  }
  add_token(v, merged, 1);
  if (v->n_merges == v->cap_merges) {
    v->cap_merges = v->cap_merges ? 2 * v->cap_merges : 1024;
    v->merges = realloc(v->merges, v->cap_merges * sizeof *v->merges);
    FUZZ_CHECK(v->merges != NULL);
  }
  v->merges[v->n_merges++] = rule;
}

/* Merges a word left to right: w[0..1], then that + w[2], ... (each step a merge). */
static void add_word(vocab *v, const char *word) {
  const uint8_t *w = (const uint8_t *)word;
  for (size_t k = 1; w[k]; k++) add_merge(v, w, k, w + k, 1);
}

static void build_vocab(vocab *v) {
  memset(v, 0, sizeof *v);
  for (int i = 0; i < N_SPECIALS; i++) add_token(v, strdup(special_texts[i]), i < 3 ? 3 : 4);
  for (int b = 0; b < 256; b++) {
    uint8_t byte = (uint8_t)b;
    add_token(v, bytes_as_text(&byte, 1), 1);
  }
  static const char alphabet[] = " \nabcdefghijklmnopqrstuvwxyz";
  for (const char *a = alphabet; *a; a++)
    for (const char *b = alphabet; *b; b++)
      add_merge(v, (const uint8_t *)a, 1, (const uint8_t *)b, 1);
  static const char *const words[] = {" the",
                                      "the",
                                      " and",
                                      "ing",
                                      "tion",
                                      " hello",
                                      "hello",
                                      " world",
                                      "12",
                                      "2024",
                                      "'s",
                                      "\r\n",
                                      "\n\n",
                                      "  ",
                                      "   ",
                                      "\t\t",
                                      "\xc3\xa9",
                                      "\xe2\x82\xac",
                                      "\xf0\x9f\x98\x80",
                                      "caf\xc3\xa9",
                                      " \xe2\x82\xac",
                                      "<|",
                                      "|>"};
  for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) add_word(v, words[i]);
}

static void free_vocab(vocab *v) {
  for (size_t i = 0; i < v->n; i++) free(v->tokens[i]);
  for (size_t i = 0; i < v->n_merges; i++) free(v->merges[i]);
  free(v->tokens), free(v->types), free(v->merges);
}

static pd_tokenizer *make_tokenizer(const vocab *v, const char *pre, const char *dir) {
  pd_gguf_writer *w;
  FUZZ_CHECK(pd_gguf_writer_create(&w) == PD_OK);
  int rc = pd_gguf_add_str(w, "general.architecture", "llama");
  rc |= pd_gguf_add_str(w, "tokenizer.ggml.model", "gpt2");
  rc |= pd_gguf_add_str(w, "tokenizer.ggml.pre", pre);
  rc |= pd_gguf_add_str_arr(w, "tokenizer.ggml.tokens", (const char *const *)v->tokens, v->n);
  rc |= pd_gguf_add_i32_arr(w, "tokenizer.ggml.token_type", v->types, v->n);
  rc |=
      pd_gguf_add_str_arr(w, "tokenizer.ggml.merges", (const char *const *)v->merges, v->n_merges);
  rc |= pd_gguf_add_u32(w, "tokenizer.ggml.bos_token_id", 1);
  rc |= pd_gguf_add_u32(w, "tokenizer.ggml.eos_token_id", 2);
  FUZZ_CHECK(rc == PD_OK);
  char path[4200], err[256];
  snprintf(path, sizeof path, "%s/vocab-%s.gguf", dir, pre);
  FUZZ_CHECK(pd_gguf_writer_write(w, path, err, sizeof err) == PD_OK);
  pd_gguf_writer_free(w);
  pd_gguf *g;
  if (pd_gguf_open(path, &g, err, sizeof err) != PD_OK) {
    fprintf(stderr, "fuzz_tokenizer: %s\n", err);
    abort();
  }
  pd_tokenizer *t;
  if (pd_tokenizer_from_gguf(g, &t, err, sizeof err) != PD_OK) {
    fprintf(stderr, "fuzz_tokenizer: %s\n", err);
    abort();
  }
  pd_gguf_close(g);
  unlink(path);
  return t;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  const char *tmp = getenv("TMPDIR");
  char dir[4096];
  snprintf(dir, sizeof dir, "%s/pd-fuzz-tokenizer-XXXXXX", tmp && *tmp ? tmp : "/tmp");
  FUZZ_CHECK(mkdtemp(dir) != NULL);
  vocab v;
  build_vocab(&v);
  tokenizers[0] = make_tokenizer(&v, "smollm", dir);
  tokenizers[1] = make_tokenizer(&v, "gpt2", dir);
  tokenizers[2] = make_tokenizer(&v, "llama-bpe", dir);
  tokenizers[3] = make_tokenizer(&v, "qwen2", dir);
  free_vocab(&v);
  rmdir(dir);
  return 0;
}

/* ---- oracles ------------------------------------------------------------------------------- */

/* Strict UTF-8 (no overlong forms, no surrogates, nothing past U+10FFFF). Written here rather
 * than borrowed from pd_unicode, so that the two can disagree. */
static int valid_utf8(const uint8_t *s, size_t n) {
  for (size_t i = 0; i < n;) {
    uint8_t c = s[i];
    size_t len;
    uint32_t cp, min;
    if (c < 0x80) {
      i++;
      continue;
    } else if (c >= 0xC2 && c <= 0xDF) {
      len = 2, cp = c & 0x1F, min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3, cp = c & 0x0F, min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4, cp = c & 0x07, min = 0x10000;
    } else {
      return 0;
    }
    if (i + len > n) return 0;
    for (size_t k = 1; k < len; k++) {
      if ((s[i + k] & 0xC0) != 0x80) return 0;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    i += len;
  }
  return 1;
}

/* The input less the special tokens pd_tokenize cuts out with parse_special: at each position,
 * the longest special text that starts there. Returns the length written to out. */
static size_t without_specials(const uint8_t *s, size_t n, uint8_t *out) {
  size_t o = 0;
  for (size_t i = 0; i < n;) {
    size_t best = 0;
    for (int k = 0; k < N_SPECIALS; k++) {
      size_t l = strlen(special_texts[k]);
      if (l <= n - i && l > best && !memcmp(s + i, special_texts[k], l)) best = l;
    }
    if (best) {
      i += best;
    } else {
      out[o++] = s[i++];
    }
  }
  return o;
}

/* Runs the ids through a detokenizer (64-byte pushes, then flushes until empty); returns the
 * text's length in out (capacity: at least 3 bytes per input byte + 64). */
static size_t detokenize(const pd_tokenizer *t, const int32_t *ids, size_t n, const char *stop,
                         uint8_t *out) {
  pd_detok *d;
  const char *stops[1] = {stop};
  FUZZ_CHECK(pd_detok_create(t, stops, stop ? 1 : 0, &d) == PD_OK);
  size_t len = 0;
  char piece[64];
  for (size_t i = 0; i < n; i++) {
    size_t n_out;
    int stopped;
    FUZZ_CHECK(pd_detok_push(d, ids[i], piece, sizeof piece, &n_out, &stopped) == PD_OK);
    FUZZ_CHECK(n_out <= sizeof piece);
    if (!stop) FUZZ_CHECK(valid_utf8((const uint8_t *)piece, n_out));
    memcpy(out + len, piece, n_out);
    len += n_out;
  }
  for (int rounds = 0;; rounds++) {
    size_t n_out;
    FUZZ_CHECK(pd_detok_flush(d, piece, sizeof piece, &n_out) == PD_OK);
    FUZZ_CHECK(n_out <= sizeof piece);
    if (n_out == 0) break;
    FUZZ_CHECK(rounds < 1000000);
    memcpy(out + len, piece, n_out);
    len += n_out;
  }
  pd_detok_free(d);
  return len;
}

static void check_tokenizer(const pd_tokenizer *t, const uint8_t *data, size_t size,
                            int parse_special, int32_t *ids, uint8_t *text, uint8_t *expect) {
  const char *s = (const char *)data;
  size_t n;
  int rc = pd_tokenize(t, s, size, parse_special, ids, size + 1, &n);
  FUZZ_CHECK(rc == PD_OK);
  FUZZ_CHECK(n <= size);

  /* ids are valid, and their pieces spell the input */
  size_t len = 0;
  int32_t n_vocab = pd_tokenizer_n_vocab(t);
  for (size_t i = 0; i < n; i++) {
    FUZZ_CHECK(ids[i] >= 0 && ids[i] < n_vocab);
    const char *p;
    size_t pl;
    FUZZ_CHECK(pd_token_piece(t, ids[i], &p, &pl) == PD_OK);
    FUZZ_CHECK(pl >= 1 && len + pl <= size);
    FUZZ_CHECK(!memcmp(data + len, p, pl));
    if (!parse_special) FUZZ_CHECK(!pd_tokenizer_is_special(t, ids[i]));
    len += pl;
  }
  FUZZ_CHECK(len == size);

  /* too little room: PD_EFULL, the same count and the same first ids */
  if (n > 1) {
    size_t half = n / 2, n2;
    int32_t *part = malloc(half * sizeof *part);
    FUZZ_CHECK(part != NULL);
    FUZZ_CHECK(pd_tokenize(t, s, size, parse_special, part, half, &n2) == PD_EFULL);
    FUZZ_CHECK(n2 == n);
    FUZZ_CHECK(!memcmp(part, ids, half * sizeof *part));
    free(part);
  }

  /* the detokenizer: whole UTF-8 out, and the text back when the text was UTF-8 */
  size_t out_len = detokenize(t, ids, n, NULL, text);
  FUZZ_CHECK(valid_utf8(text, out_len));
  if (valid_utf8(data, size)) {
    size_t want = parse_special ? without_specials(data, size, expect) : size;
    const uint8_t *w = parse_special ? expect : data;
    if (out_len != want || memcmp(text, w, want)) {
      fprintf(stderr, "fuzz_tokenizer: detokenized text differs (%zu bytes, want %zu)\n", out_len,
              want);
      abort();
    }
  }
}

/* The pre-tokenizer's pieces tile the input: ends rise strictly and the last is its length. */
static void check_split(const pd_tokenizer *t, const uint8_t *data, size_t size, size_t *ends) {
  size_t n;
  FUZZ_CHECK(pd_tokenizer_split(t, (const char *)data, size, ends, size + 1, &n) == PD_OK);
  FUZZ_CHECK(n <= size && (size == 0 || (n > 0 && ends[n - 1] == size)));
  for (size_t i = 0; i < n; i++) FUZZ_CHECK(ends[i] > (i ? ends[i - 1] : 0));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  int32_t *ids = malloc((size + 1) * sizeof *ids);
  uint8_t *text = malloc(3 * size + 64), *expect = malloc(size + 1);
  FUZZ_CHECK(ids && text && expect);
  size_t *ends = malloc((size + 1) * sizeof *ends);
  FUZZ_CHECK(ends);
  for (int k = 0; k < N_TOKENIZERS; k++) {
    check_split(tokenizers[k], data, size, ends);
    for (int parse_special = 0; parse_special < 2; parse_special++)
      check_tokenizer(tokenizers[k], data, size, parse_special, ids, text, expect);
  }
  free(ends);

  /* A stop string sliced from the input itself. */
  if (size >= 2 && valid_utf8(data, size)) {
    size_t at = data[0] % size, len = 1 + data[size - 1] % 4;
    if (len > size - at) len = size - at;
    char stop[5] = {0};
    memcpy(stop, data + at, len);
    size_t stop_len = strlen(stop);
    size_t n;
    FUZZ_CHECK(pd_tokenize(tokenizers[0], (const char *)data, size, 0, ids, size + 1, &n) == 0);
    size_t out_len = detokenize(tokenizers[0], ids, n, stop, text);
    size_t want = size;
    if (stop_len) {
      const uint8_t *hit = memmem(data, size, stop, stop_len);
      if (hit) want = (size_t)(hit - data);
    }
    if (out_len != want || memcmp(text, data, want)) {
      fprintf(stderr, "fuzz_tokenizer: with stop string of %zu bytes: %zu bytes out, want %zu\n",
              stop_len, out_len, want);
      abort();
    }
  }
  free(ids), free(text), free(expect);
  return 0;
}
