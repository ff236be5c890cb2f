/*
 * test_json.c -- constrained JSON decoding: the byte-level grammar (pd_json_grammar) against
 * jansson as an independent JSON parser, the token trie's walk against trying every token one by
 * one, and the sampler under the constraint. Tokens come from synthetic models made by
 * prefixd-mkgguf (PD_TINY_MODEL: 512 tokens, every byte among them; PD_WIDE_MODEL: 8,192).
 */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_check.h"
#include "pd_err.h"
#include "pd_gguf.h"
#include "pd_json_constraint.h"
#include "pd_json_grammar.h"
#include "pd_sampler.h"
#include "pd_token_trie.h"
#include "pd_tokenizer.h"

/* The number of bytes of text the grammar accepts before refusing one (len if all), and whether
 * it is then a complete JSON text. */
static size_t accepted(const char *text, size_t len, int object_only, int *complete) {
  pd_json_state s;
  pd_json_init(&s, object_only);
  size_t i = 0;
  while (i < len && pd_json_step(&s, (uint8_t)text[i])) i++;
  *complete = i == len && pd_json_complete(&s);
  return i;
}

START_TEST(grammar_accepts_json) {
  const char *ok[] = {
      "{}",
      "{\"a\":1}",
      "{ \"a\" : [ 1 , 2.5 , -0.25e+10 , 0 , -0 , 1E5 , 3e-2 ] , \"b\" : { } }",
      "{\"s\":\"esc \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u00e9 \\uD83D\\uDE00\"}",
      "{\"utf8\":\"h\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xef\xbf\xbf\"}",
      "{\"t\":true,\"f\":false,\"n\":null,\"\":\"\"}",
      "[[[[]]],{}]",
      "\"top\"",
      "12.5",
      "null",
      "\n{\r\n\t\"pretty\": [\n    1\n  ]\n}",
  };
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    int complete;
    size_t n = accepted(ok[i], strlen(ok[i]), 0, &complete);
    ck_assert_msg(n == strlen(ok[i]) && complete, "'%s': %zu bytes, complete %d", ok[i], n,
                  complete);
    int is_object = ok[i][strspn(ok[i], " \t\r\n")] == '{';
    n = accepted(ok[i], strlen(ok[i]), 1, &complete);
    ck_assert_msg((n == strlen(ok[i]) && complete) == is_object, "object_only '%s'", ok[i]);
  }
}
END_TEST

START_TEST(grammar_refuses_at_the_first_bad_byte) {
  const struct {
    const char *text;
    size_t at; /* the refused byte */
  } bad[] = {
      {"{\"a\":01}", 6},
      {"{\"a\" 1}", 5},
      {"{,}", 1},
      {"[1,]", 3},
      {"{\"a\":tru}", 8},
      {"{\"a\":1,}", 7},
      {"{\"a\":\"\\x\"}", 7},
      {"{\"a\":\"\x01\"}", 6},
      {"{\"a\":\"\xc0\x80\"}", 6},
      {"{\"a\":\"\xed\xa0\x80\"}", 7},
      {"{\"a\":\"\xf5\"}", 6},
      {"{\"a\":\"\xe2\x28\"}", 7},
      {"{}x", 2},
      {"{} ", 2},
      {"{\"a\":1.}", 7},
      {"{\"a\":1e}", 7},
      {"{\"a\":-}", 6},
      {"{\"a\":\"\\u12g4\"}", 10},
      {"{1:2}", 1},
      {"[}", 1},
      {"{]", 1},
      {"{\"a\":[1 2]}", 8},
      {"{\"a\":.5}", 5},
      {"{\"a\":+1}", 5},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int complete;
    size_t n = accepted(bad[i].text, strlen(bad[i].text), 0, &complete);
    ck_assert_msg(n == bad[i].at, "'%s': refused at %zu, expected %zu", bad[i].text, n, bad[i].at);
  }
  /* object_only: anything but '{' first (after whitespace) */
  int complete;
  ck_assert_uint_eq(accepted("  [1]", 5, 1, &complete), 2);
  ck_assert_uint_eq(accepted("\"s\"", 3, 1, &complete), 0);
  /* a top-level number is complete, but not done: more digits may follow */
  pd_json_state s;
  pd_json_init(&s, 0);
  ck_assert(pd_json_feed(&s, "42", 2) && pd_json_complete(&s) && !pd_json_done(&s));
  ck_assert(!pd_json_step(&s, ' ')); /* nothing after the top-level value */
  /* whitespace runs and depth are bounded */
  char text[256];
  memset(text, ' ', sizeof text);
  text[0] = '{';
  ck_assert_uint_eq(accepted(text, 1 + PD_JSON_MAX_WS + 1, 1, &complete), 1 + PD_JSON_MAX_WS);
  memset(text, '[', sizeof text);
  ck_assert_uint_eq(accepted(text, PD_JSON_MAX_DEPTH + 1, 0, &complete), PD_JSON_MAX_DEPTH);
}
END_TEST

/* ---- against jansson ---------------------------------------------------------------------- */

static uint64_t rng = 12345;
static uint32_t rnd(uint32_t n) {
  rng = rng * 6364136223846793005ull + 1442695040888963407ull;
  return (uint32_t)(rng >> 33) % n;
}

static void put(char *buf, size_t *len, const char *s) {
  size_t n = strlen(s);
  memcpy(buf + *len, s, n);
  *len += n;
}

static void ws(char *buf, size_t *len) {
  static const char *const spaces[] = {"", "", "", " ", "\n  ", "\t", "\r\n"};
  put(buf, len, spaces[rnd(7)]);
}

/* A random JSON value of nesting at most depth, appended to buf. */
static void value(char *buf, size_t *len, int depth) {
  static const char *const scalars[] = {
      "0",
      "-0",
      "17",
      "-3.25",
      "6.02e23",
      "1E-7",
      "true",
      "false",
      "null",
      "\"\"",
      "\"abc\"",
      "\"q\\\"uote\\n\"",
      "\"\\u00e9t\\u00e9\"",
      "\"\xc3\xa9\xe2\x82\xac\"",
      "\"\xf0\x9f\x98\x80 x\"",
      "123456789012",
      "0.5e+2",
  };
  uint32_t kind = depth ? rnd(4) : 3;
  if (kind == 3) {
    put(buf, len, scalars[rnd(sizeof scalars / sizeof scalars[0])]);
    return;
  }
  int object = kind == 0;
  put(buf, len, object ? "{" : "[");
  uint32_t n = rnd(4);
  for (uint32_t i = 0; i < n; i++) {
    ws(buf, len);
    if (i) put(buf, len, ","), ws(buf, len);
    if (object) {
      put(buf, len, rnd(2) ? "\"k\"" : "\"key \\t two\""), ws(buf, len), put(buf, len, ":");
      ws(buf, len);
    }
    value(buf, len, depth - 1);
  }
  ws(buf, len);
  put(buf, len, object ? "}" : "]");
}

/* jansson's verdict on a whole text (any top-level value). A number too large for a double or
 * an integer is jansson's limit, not a syntax error: valid JSON to RFC 8259. */
static int jansson_valid(const char *text, size_t len) {
  json_error_t err;
  json_t *v = json_loadb(text, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
  json_decref(v);
  return v != NULL || strstr(err.text, "overflow") || strstr(err.text, "too big");
}

/* Random documents and single-byte mutations of them: the grammar takes a whole text as
 * complete exactly when jansson parses it, and whatever jansson parses, the grammar accepts
 * every prefix of. Trailing whitespace is cut first: the grammar ends at the value's last byte,
 * by design. (The mutation alphabet has no 'u', so no \u escape is made that jansson and
 * RFC 8259 judge differently: lone surrogates.) */
START_TEST(grammar_agrees_with_jansson) {
  static const char alphabet[] = "{}[]\",:0123456789.eE+- tfnrl\\a\n\xc3\xa9\x80";
  char doc[8192], mutated[8192];
  int valid_mutants = 0;
  for (int round = 0; round < 3000; round++) {
    size_t len = 0;
    value(doc, &len, 1 + (int)rnd(5));
    int complete;
    ck_assert_msg(jansson_valid(doc, len), "the generator made invalid JSON: %.*s", (int)len, doc);
    ck_assert_msg(accepted(doc, len, 0, &complete) == len && complete, "%.*s", (int)len, doc);
    for (int m = 0; m < 8; m++) {
      size_t n = len, at = rnd((uint32_t)len + 1);
      memcpy(mutated, doc, len);
      uint32_t op = rnd(3);
      char b = alphabet[rnd(sizeof alphabet - 1)];
      if (op == 0 && at < n) { /* replace */
        mutated[at] = b;
      } else if (op == 1) { /* insert */
        memmove(mutated + at + 1, mutated + at, n - at);
        mutated[at] = b, n++;
      } else if (at < n) { /* delete */
        memmove(mutated + at, mutated + at + 1, n - at - 1);
        n--;
      }
      while (n && strchr(" \t\r\n", mutated[n - 1])) n--; /* the grammar ends at the value */
      int ours = accepted(mutated, n, 0, &complete) == n && complete;
      int theirs = jansson_valid(mutated, n);
      ck_assert_msg(ours == theirs, "grammar %d, jansson %d: '%.*s'", ours, theirs, (int)n,
                    mutated);
      valid_mutants += theirs;
    }
  }
  ck_assert_int_gt(valid_mutants, 100); /* the mutations reach both verdicts */
}
END_TEST

/* ---- the trie and the constraint over a real vocabulary --------------------------------------- */

static pd_gguf *g_tiny, *g_wide;
static pd_tokenizer *tiny, *wide;

static void setup(void) {
  char err[256];
  const char *paths[2] = {getenv("PD_TINY_MODEL"), getenv("PD_WIDE_MODEL")};
  pd_gguf **gs[2] = {&g_tiny, &g_wide};
  pd_tokenizer **ts[2] = {&tiny, &wide};
  for (int i = 0; i < 2; i++) {
    ck_assert_ptr_nonnull(paths[i]);
    ck_assert_msg(pd_gguf_open(paths[i], gs[i], err, sizeof err) == 0, "%s", err);
    ck_assert_msg(pd_tokenizer_from_gguf(*gs[i], ts[i], err, sizeof err) == 0, "%s", err);
  }
}

static void teardown(void) {
  pd_tokenizer_free(tiny), pd_tokenizer_free(wide);
  pd_gguf_close(g_tiny), pd_gguf_close(g_wide);
}

static void mark(void *user, int32_t tok) {
  ((uint8_t *)user)[tok]++;
}

/* From a series of grammar states (prefixes of a document, cut at every byte), the trie walk
 * reports exactly the tokens whose bytes the grammar accepts one by one, each once, and the
 * constraint's allows() and mask() agree with it (an end-of-generation token only when
 * complete). */
START_TEST(trie_walk_equals_trying_every_token) {
  const char *doc = "{\"name\": \"Zo\xc3\xab\", \"tags\": [\"a\\n\", 1.5e3, true, null], "
                    "\"n\": {\"x\": -0}}";
  pd_tokenizer *toks[2] = {tiny, wide};
  for (int v = 0; v < 2; v++) {
    pd_tokenizer *tok = toks[v];
    int32_t n_vocab = pd_tokenizer_n_vocab(tok);
    pd_token_trie *trie;
    ck_assert_int_eq(pd_token_trie_build(tok, &trie), 0);
    uint8_t *seen = malloc((size_t)n_vocab);
    float *logits = malloc((size_t)n_vocab * sizeof *logits);
    pd_json_state *scratch = malloc((pd_token_trie_max_len(trie) + 1) * sizeof *scratch);
    int32_t ids[256];
    pd_json_state s;
    pd_json_init(&s, 1);
    for (size_t cut = 0; cut <= strlen(doc); cut++) {
      memset(seen, 0, (size_t)n_vocab);
      int32_t n = pd_token_trie_walk(trie, &s, sizeof s, pd_json_step, scratch, mark, seen);
      int32_t expect = 0;
      for (int32_t id = 0; id < n_vocab; id++) {
        const char *bytes;
        size_t len;
        pd_json_state t = s;
        int ok = !pd_tokenizer_is_special(tok, id) && !pd_token_piece(tok, id, &bytes, &len) &&
                 len && pd_json_feed(&t, bytes, len);
        ck_assert_msg(seen[id] == ok, "vocab %d, cut %zu, token %d: walk %d, one by one %d", v, cut,
                      id, seen[id], ok);
        expect += ok;
      }
      ck_assert_int_eq(n, expect);
      ck_assert(n > 0 || cut == strlen(doc)); /* only the closed document allows nothing */
      /* the constraint, after the document's first cut bytes as the tokenizer cuts them (the
       * same bytes, so the same state); a cut inside a character is left out */
      size_t n_ids;
      pd_json_constraint *c;
      ck_assert_int_eq(pd_json_constraint_create(trie, tok, 1, &c), 0);
      pd_token_constraint rule = pd_json_constraint_rule(c);
      int whole = (cut == strlen(doc) || ((uint8_t)doc[cut] & 0xC0) != 0x80) &&
                  pd_tokenize(tok, doc, cut, 0, ids, 256, &n_ids) == 0;
      for (size_t i = 0; whole && i < n_ids; i++)
        ck_assert_int_eq(pd_json_constraint_accept(c, ids[i]), 0);
      if (whole) {
        for (int32_t id = 0; id < n_vocab; id++) logits[id] = 1.0f;
        int complete = pd_json_complete(&s);
        int32_t allowed = rule.mask(rule.ctx, logits);
        int32_t counted = 0;
        for (int32_t id = 0; id < n_vocab; id++) {
          int want = seen[id] || (complete && pd_tokenizer_is_eog(tok, id));
          ck_assert_int_eq(logits[id] == 1.0f, want);
          ck_assert_int_eq(rule.allows(rule.ctx, id), want);
          counted += want;
        }
        ck_assert_int_eq(allowed, counted);
        ck_assert_int_eq(pd_json_constraint_done(c), cut == strlen(doc));
        if (cut == strlen(doc)) /* nothing after the closing brace */
          ck_assert_int_eq(pd_json_constraint_accept(c, ids[0]), PD_EINVAL);
      }
      pd_json_constraint_free(c);
      if (cut < strlen(doc)) ck_assert(pd_json_step(&s, (uint8_t)doc[cut]));
    }
    ck_assert(pd_json_done(&s));
    free(scratch), free(logits), free(seen);
    pd_token_trie_free(trie);
  }
}
END_TEST

/* The sampler under the constraint: greedy picks the best allowed token (asking allows() first
 * is the same as masking), a temperature draws only allowed tokens, and a long constrained
 * generation over random logits is valid JSON all along and parses once done. */
START_TEST(sampler_under_the_constraint_makes_json) {
  int32_t n_vocab = pd_tokenizer_n_vocab(tiny);
  pd_token_trie *trie;
  ck_assert_int_eq(pd_token_trie_build(tiny, &trie), 0);
  float *logits = malloc((size_t)n_vocab * sizeof *logits);
  int done_count = 0;
  for (int run = 0; run < 40; run++) {
    pd_sampling_params p = {
        .temperature = run % 4 ? 1.5f : 0, .top_p = 1, .repeat_penalty = 1, .seed = (uint64_t)run};
    pd_sampler *smp;
    ck_assert_int_eq(pd_sampler_create(&p, n_vocab, &smp), 0);
    pd_json_constraint *c;
    ck_assert_int_eq(pd_json_constraint_create(trie, tiny, 1, &c), 0);
    pd_token_constraint rule = pd_json_constraint_rule(c);
    char text[8192];
    size_t len = 0;
    for (int step = 0; step < 600 && !pd_json_constraint_done(c); step++) {
      /* random logits, with closing brackets and quotes favoured more as the text grows, so
       * that documents end */
      for (int32_t id = 0; id < n_vocab; id++) logits[id] = (float)rnd(1000) / 250.0f;
      const char *closers[] = {"}", "]", "\"", ","};
      for (int k = 0; k < 4; k++) {
        int32_t id = pd_tokenizer_find(tiny, closers[k]);
        if (id >= 0) logits[id] += (float)step / (k < 2 ? 40.0f : 80.0f);
      }
      int32_t tok = pd_sampler_sample_constrained(smp, logits, &rule);
      ck_assert_int_ge(tok, 0);
      if (p.temperature == 0) { /* the same as the argmax over the masked logits */
        float masked_best = -INFINITY;
        int32_t best = -1;
        for (int32_t id = 0; id < n_vocab; id++)
          if (rule.allows(rule.ctx, id) && logits[id] > masked_best)
            masked_best = logits[id], best = id;
        ck_assert_int_eq(tok, best);
      }
      ck_assert_int_eq(pd_json_constraint_accept(c, tok), 0);
      const char *bytes;
      size_t n;
      ck_assert_int_eq(pd_token_piece(tiny, tok, &bytes, &n), 0);
      ck_assert(len + n < sizeof text);
      memcpy(text + len, bytes, n);
      len += n;
    }
    int complete;
    ck_assert_uint_eq(accepted(text, len, 1, &complete), len); /* a prefix all along */
    if (pd_json_constraint_done(c)) {
      done_count++;
      json_error_t err;
      json_t *v = json_loadb(text, len, 0, &err);
      ck_assert_msg(v && json_is_object(v), "%s: '%.*s'", err.text, (int)len, text);
      json_decref(v);
    }
    pd_json_constraint_free(c);
    pd_sampler_free(smp);
  }
  ck_assert_int_gt(done_count, 20);
  free(logits);
  pd_token_trie_free(trie);
}
END_TEST

int main(void) {
  Suite *s = suite_create("json");
  TCase *grammar = tcase_create("grammar");
  tcase_add_test(grammar, grammar_accepts_json);
  tcase_add_test(grammar, grammar_refuses_at_the_first_bad_byte);
  tcase_add_test(grammar, grammar_agrees_with_jansson);
  suite_add_tcase(s, grammar);
  TCase *tokens = tcase_create("tokens");
  tcase_add_unchecked_fixture(tokens, setup, teardown);
  tcase_set_timeout(tokens, 120);
  tcase_add_test(tokens, trie_walk_equals_trying_every_token);
  tcase_add_test(tokens, sampler_under_the_constraint_makes_json);
  suite_add_tcase(s, tokens);
  return pd_check_run(s, 1);
}
