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
#include "pd_json_schema.h"
#include "pd_json_vocab.h"
#include "pd_sampler.h"
#include "pd_token_trie.h"
#include "pd_tokenizer.h"
#include "schema_walk.h"

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
      {"{\"a\":\"\\uDC00\"}", 9},         /* a low surrogate alone */
      {"{\"a\":\"\\uD800x\"}", 12},       /* a high one without its low half */
      {"{\"a\":\"\\uD800\\u0041\"}", 14}, /* ... or with a non-surrogate after it */
      {"{\"a\":\"\\uD83D\\uDE00\\udbff\\udfff\\ud7ff\\uE000\"",
       43}, /* pairs, and code units outside the surrogates: accepted */
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
  /* one line break per run: indented JSON reads, blank lines do not */
  ck_assert_uint_eq(accepted("{\r\n  \"a\": [\n    1\n  ]\n}", 23, 1, &complete), 23);
  ck_assert(complete);
  ck_assert_uint_eq(accepted("{\n\n", 3, 1, &complete), 2);
  ck_assert_uint_eq(accepted("{\n \r", 4, 1, &complete), 3);
  ck_assert_uint_eq(accepted("[1, \r\r", 6, 0, &complete), 5);
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

/* 1 unless a whitespace run outside strings holds two line breaks ('\n' twice, '\r' twice, or
 * '\n' then '\r'): what the grammar refuses beyond RFC 8259, by design. */
static int one_break_per_run(const char *text, size_t len) {
  int in_string = 0, escaped = 0, breaks = 0;
  for (size_t i = 0; i < len; i++) {
    char c = text[i];
    if (in_string) {
      if (escaped)
        escaped = 0;
      else if (c == '\\')
        escaped = 1;
      else if (c == '"')
        in_string = 0;
      continue;
    }
    if (c == '\n') {
      if (breaks & 1) return 0;
      breaks |= 1;
    } else if (c == '\r') {
      if (breaks) return 0;
      breaks |= 2;
    } else if (c != ' ' && c != '\t') {
      breaks = 0;
      in_string = c == '"';
    }
  }
  return 1;
}

/* Random documents and single-byte mutations of them: the grammar takes a whole text as
 * complete exactly when jansson parses it, and whatever jansson parses, the grammar accepts
 * every prefix of. Trailing whitespace is cut first: the grammar ends at the value's last byte,
 * by design. (The mutation alphabet has no 'u', so no \u escape is made that jansson and
 * RFC 8259 judge differently: lone surrogates.) */
START_TEST(grammar_agrees_with_jansson) {
  static const char alphabet[] = "{}[]\",:0123456789.eE+- tfnrl\\a\n\xc3\xa9\x80uDdC";
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
      int theirs = jansson_valid(mutated, n) && one_break_per_run(mutated, n);
      ck_assert_msg(ours == theirs, "grammar %d, jansson %d: '%.*s'", ours, theirs, (int)n,
                    mutated);
      valid_mutants += theirs;
    }
  }
  ck_assert_int_gt(valid_mutants, 100); /* the mutations reach both verdicts */
}
END_TEST

/* ---- JSON Schema --------------------------------------------------------------------------- */

/* The schema the tests read: required and optional properties, an integer, a nullable string
 * (anyOf), an enum of mixed values, a bounded array, a recursive definition through an Optional
 * (anyOf of a $ref and null) and a free value. */
static const char person_schema[] =
    "{\"type\": \"object\", \"title\": \"Person\", \"properties\": {"
    "\"name\": {\"type\": \"string\", \"description\": \"full name\"},"
    "\"age\": {\"type\": \"integer\"},"
    "\"email\": {\"anyOf\": [{\"type\": \"string\"}, {\"type\": \"null\"}], \"default\": null},"
    "\"role\": {\"enum\": [\"admin\", \"user\", 7, 75, null]},"
    "\"tags\": {\"type\": \"array\", \"items\": {\"type\": \"string\"}, \"minItems\": 1, "
    "\"maxItems\": 3},"
    "\"home\": {\"$ref\": \"#/$defs/Place\"},"
    "\"extra\": {}},"
    "\"required\": [\"name\", \"age\", \"role\", \"tags\"],"
    "\"$defs\": {\"Place\": {\"type\": \"object\", \"properties\": {"
    "\"city\": {\"type\": \"string\"},"
    "\"near\": {\"anyOf\": [{\"$ref\": \"#/$defs/Place\"}, {\"type\": \"null\"}]}},"
    "\"required\": [\"city\"]}}}";

/* A text the reader must refuse, and the byte it refuses it at. */
typedef struct refused_at {
  const char *text;
  size_t at;
} refused_at;

/* Every ok text is read whole and done; every bad one is refused at its byte. */
static void expect_reads(const pd_json_schema *schema, const char *const *ok, size_t n_ok,
                         const refused_at *bad, size_t n_bad) {
  for (size_t i = 0; i < n_ok; i++) {
    int done;
    size_t n = schema_accepted(schema, ok[i], &done, NULL);
    ck_assert_msg(n == strlen(ok[i]) && done, "'%s': %zu bytes, done %d", ok[i], n, done);
  }
  for (size_t i = 0; i < n_bad; i++) {
    int done;
    size_t n = schema_accepted(schema, bad[i].text, &done, NULL);
    ck_assert_msg(n == bad[i].at, "'%s': refused at %zu, expected %zu", bad[i].text, n, bad[i].at);
  }
}

START_TEST(schema_reads_what_it_describes) {
  pd_json_schema *schema = compile_ok(person_schema);
  const char *ok[] = {
      "{\"name\": \"Ada\", \"age\": 36, \"role\": \"admin\", \"tags\": [\"x\"]}",
      "{\"name\":\"\\u00c9mile\",\"age\":-4,\"email\":null,\"role\":7,\"tags\":[\"a\",\"b\",\"c\"]"
      "}",
      "{\"name\": \"B\", \"age\": 0, \"email\": \"b@c.d\", \"role\": 75, \"tags\": [\"\"], "
      "\"home\": {\"city\": \"Oslo\", \"near\": {\"city\": \"Bergen\", \"near\": null}}, "
      "\"extra\": [1, {\"free\": true}]}",
      "{\"name\": \"C\", \"age\": 1, \"role\": null, \"tags\": [\"t\"], \"extra\": 2.5e3}",
  };
  const refused_at bad[] = {
      {"[", 0},                                                 /* not an object */
      {"{}", 1},                                                /* name is required */
      {"{\"age\"", 2},                                          /* name comes first */
      {"{\"name\": \"A\", \"nick\"", 15},                       /* age comes next */
      {"{\"name\": \"A\", \"age\": 1.5", 22},                   /* an integer */
      {"{\"name\": \"A\", \"age\": \"1\"", 21},                 /* not a string */
      {"{\"name\": \"A\", \"age\": 1}", 22},                    /* role and tags are required */
      {"{\"name\": \"A\", \"age\": 1, \"role\": \"root\"", 33}, /* not in the enum */
      {"{\"name\": \"A\", \"age\": 1, \"role\": 76", 33},       /* 7 and 75 only */
      {"{\"name\": \"A\", \"age\": 1, \"role\": 7, \"tags\": []", 44}, /* minItems */
      {"{\"name\": \"A\", \"age\": 1, \"role\": 7, \"tags\": [\"a\",\"b\",\"c\",",
       55},                                                            /* maxItems */
      {"{\"name\": \"A\", \"age\": 1, \"role\": 7, \"tags\": [1", 44}, /* strings */
      {"{\"name\": \"A\", \"age\": 1, \"role\": 7, \"tags\": [\"a\"], \"home\": {}", 59}, /* city */
      {"{\"name\": \"A\", \"age\": 1, \"email\": 3", 33},                     /* string or null */
      {"{\"name\": \"A\", \"age\": 1, \"role\": 7, \"tags\": [\"a\"]} ", 49}, /* nothing after */
  };
  expect_reads(schema, ok, sizeof ok / sizeof ok[0], bad, sizeof bad / sizeof bad[0]);
  pd_json_schema_free(schema);
  /* top-level scalars: an enum of numbers ends where no longer value can continue */
  schema = compile_ok("{\"enum\": [1, 12, \"x\"]}");
  pd_schema_state st;
  pd_schema_init(&st, schema);
  ck_assert(pd_schema_step(&st, '1') && pd_schema_complete(&st) && !pd_schema_done(&st));
  ck_assert(pd_schema_step(&st, '2') && pd_schema_done(&st));
  pd_json_schema_free(schema);
  schema = compile_ok("{\"type\": \"integer\"}");
  pd_schema_init(&st, schema);
  ck_assert(pd_schema_step(&st, '4') && pd_schema_complete(&st) && !pd_schema_step(&st, '.'));
  pd_json_schema_free(schema);
}
END_TEST

#define UNION_ALT(name, key)                                                                       \
  "{\"type\": \"object\", \"properties\": {\"name\": {\"const\": \"" name "\"}, \"" key            \
  "\": {\"type\": \"integer\"}}, \"required\": [\"name\", \"" key "\"]}"

/* A union of objects told apart by a constant first property (a tool call among several
 * functions, a tagged union): the constant picks the alternative whose other properties follow;
 * a null alternative makes it nullable. */
START_TEST(schema_union_follows_the_alternative_its_constant_names) {
  pd_json_schema *schema = compile_ok("{\"anyOf\": [" UNION_ALT("get", "x") ", " UNION_ALT(
      "get_time", "y") ", {\"type\": \"null\"}]}");
  const char *ok[] = {"{\"name\": \"get\", \"x\": 1}", "{\"name\":\"get_time\",\"y\":-2}", "null"};
  const refused_at bad[] = {
      {"{\"x\"", 2},                               /* the constant comes first */
      {"{\"name\": \"got\"", 11},                  /* one of the constants */
      {"{\"name\": \"get\", \"y\"", 17},           /* get's property is x */
      {"{\"name\": \"get_time\", \"x\"", 22},      /* get_time's is y */
      {"{\"name\": \"get\"}", 14},                 /* x is required */
      {"{\"name\": \"get\", \"x\": 1, \"y\"", 22}, /* nothing more */
  };
  expect_reads(schema, ok, sizeof ok / sizeof ok[0], bad, sizeof bad / sizeof bad[0]);
  pd_json_schema_free(schema);
}
END_TEST

START_TEST(schema_refusals_name_the_keyword) {
  const struct {
    const char *schema, *says;
  } bad[] = {
      {"{\"properties\": {\"a\": {\"multipleOf\": 3}}}",
       "'multipleOf' is not supported in a schema (at #/a)"},
      {"{\"type\": \"strung\"}", "'type' must name JSON types"},
      {"{\"$ref\": \"#/$defs/X\"}", "not at it"},
      {"{\"properties\": {\"a\": {\"$ref\": \"#/$defs/Nope\"}}}", "does not name a definition"},
      {"{\"properties\": {\"a\": {}}, \"required\": [\"b\"]}", "'b', which is not in"},
      {"{\"anyOf\": [{\"properties\": {\"a\": {}}}, {\"properties\": {\"b\": {}}}]}",
       "needs a required property of the same name in each"},
      {"{\"anyOf\": [{\"properties\": {\"a\": {}}}, {\"type\": \"object\"}]}",
       "two object schemas"},
      {"{\"anyOf\": [" UNION_ALT("a", "x") ", " UNION_ALT("a", "y") "]}",
       "whose 'name' is the same constant"},
      {"{\"anyOf\": [{\"enum\": [1]}, {\"type\": \"string\"}]}", "mixes 'enum'"},
      {"{\"type\": \"array\", \"items\": [{}, {}]}", "tuples"},
      {"{\"type\": \"array\", \"items\": {}, \"minItems\": 3, \"maxItems\": 2}", "over 'maxItems'"},
      {"{\"properties\": {\"a\\\"b\": {}}}", "needs escaping"},
      {"{\"oneOf\": []}", "'oneOf' must be a non-empty array"},
      {"{\"allOf\": []}", "'allOf' is not supported"},
      {"[1]", "must be an object or true"},
      {"{not json", "not valid JSON"},
  };
  /* a schema whose enum values add up to more than PD_SCHEMA_MAX_POOL: 20 enums of 64 values
   * of 1,000 bytes */
  size_t cap = 2u << 20, n = 0;
  char *big = malloc(cap);
  n += (size_t)snprintf(big + n, cap - n, "{\"properties\": {");
  for (int p = 0; p < 20; p++) {
    n += (size_t)snprintf(big + n, cap - n, "%s\"p%d\": {\"enum\": [", p ? ", " : "", p);
    for (int v = 0; v < 64; v++) {
      n += (size_t)snprintf(big + n, cap - n, "%s\"%d", v ? ", " : "", v);
      memset(big + n, 'x', 1000), n += 1000;
      big[n++] = '"';
    }
    n += (size_t)snprintf(big + n, cap - n, "]}");
  }
  n += (size_t)snprintf(big + n, cap - n, "}}");
  pd_json_schema *too_big;
  char why[256] = "";
  ck_assert_int_eq(pd_json_schema_compile(big, n, &too_big, why, sizeof why), PD_EINVAL);
  ck_assert_msg(strstr(why, "exceed 1048576 bytes"), "%s", why);
  free(big);
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    expect_refused(bad[i].schema, bad[i].says);
  }
}
END_TEST

/* Random walks through the schema's reading: at every step a random byte among those accepted
 * (whitespace rarely, closing brackets more as the text grows), until done. Every text produced
 * parses, and jansson's view of it satisfies the schema (checked by hand below). */
static int place_ok(json_t *p, int depth) {
  if (!json_is_object(p) || !json_is_string(json_object_get(p, "city")) || depth > 20) return 0;
  json_t *near = json_object_get(p, "near");
  const char *key;
  json_t *v;
  json_object_foreach(p, key, v) if (strcmp(key, "city") && strcmp(key, "near")) return 0;
  return !near || json_is_null(near) || place_ok(near, depth + 1);
}

static int person_ok(json_t *v) {
  json_t *role = json_object_get(v, "role"), *tags = json_object_get(v, "tags"),
         *email = json_object_get(v, "email"), *home = json_object_get(v, "home");
  if (!json_is_object(v) || !json_is_string(json_object_get(v, "name")) ||
      !json_is_integer(json_object_get(v, "age")) || !role || !json_is_array(tags))
    return 0;
  if (!(json_is_null(role) ||
        (json_is_string(role) &&
         (!strcmp(json_string_value(role), "admin") || !strcmp(json_string_value(role), "user"))) ||
        (json_is_integer(role) &&
         (json_integer_value(role) == 7 || json_integer_value(role) == 75))))
    return 0;
  if (json_array_size(tags) < 1 || json_array_size(tags) > 3) return 0;
  for (size_t i = 0; i < json_array_size(tags); i++)
    if (!json_is_string(json_array_get(tags, i))) return 0;
  if (email && !json_is_null(email) && !json_is_string(email)) return 0;
  if (home && !place_ok(home, 0)) return 0;
  const char *known[] = {"name", "age", "email", "role", "tags", "home", "extra"};
  const char *key;
  json_t *x;
  json_object_foreach(v, key, x) {
    int found = 0;
    for (int k = 0; k < 7; k++) found |= !strcmp(key, known[k]);
    if (!found) return 0;
  }
  return 1;
}

START_TEST(schema_random_walks_give_valid_documents) {
  pd_json_schema *schema = compile_ok(person_schema);
  static char text[1 << 16];
  int with_home = 0, with_extra = 0;
  for (int round = 0; round < 300; round++) {
    size_t len = schema_random_walk(schema, text, sizeof text, rnd, "}]\",", 200, 4);
    json_error_t err;
    json_t *v = json_loadb(text, len, 0, &err);
    if (!v && (strstr(err.text, "overflow") || strstr(err.text, "too big")))
      continue; /* a random number beyond a double: jansson's limit, valid JSON */
    ck_assert_msg(v, "%s: '%s'", err.text, text);
    ck_assert_msg(person_ok(v), "not valid for the schema: '%s'", text);
    with_home += json_object_get(v, "home") != NULL;
    with_extra += json_object_get(v, "extra") != NULL;
    json_decref(v);
  }
  ck_assert(with_home > 10 && with_extra > 10); /* the optional properties come too */
  pd_json_schema_free(schema);
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
    pd_json_vocab *vocab;
    ck_assert_int_eq(pd_json_vocab_build(tok, &vocab), 0);
    pd_token_trie *trie = vocab->all;
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
      ck_assert_int_eq(pd_json_constraint_create(vocab, NULL, &c), 0);
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
    pd_json_vocab_free(vocab);
  }
}
END_TEST

/* The same agreement under a schema: at every cut of a valid document, the mask (a trie walk of
 * the schema's state) allows exactly the tokens allows() does (their bytes stepped one by one). */
START_TEST(schema_constraint_mask_equals_allows) {
  const char *doc = "{\"name\": \"Ada\", \"age\": 36, \"role\": 75, \"tags\": [\"x\", \"y\"], "
                    "\"home\": {\"city\": \"Oslo\", \"near\": null}}";
  pd_json_schema *schema = compile_ok(person_schema);
  pd_json_vocab *vocab;
  ck_assert_int_eq(pd_json_vocab_build(wide, &vocab), 0);
  int32_t n_vocab = pd_tokenizer_n_vocab(wide), ids[256];
  float *logits = malloc((size_t)n_vocab * sizeof *logits);
  int checked = 0;
  for (size_t cut = 0; cut < strlen(doc); cut++) {
    size_t n_ids;
    if (pd_tokenize(wide, doc, cut, 0, ids, 256, &n_ids)) continue;
    pd_json_constraint *c;
    ck_assert_int_eq(pd_json_constraint_create(vocab, schema, &c), 0);
    for (size_t i = 0; i < n_ids; i++) ck_assert_int_eq(pd_json_constraint_accept(c, ids[i]), 0);
    pd_token_constraint rule = pd_json_constraint_rule(c);
    for (int32_t id = 0; id < n_vocab; id++) logits[id] = 1.0f;
    int32_t allowed = rule.mask(rule.ctx, logits), counted = 0;
    for (int32_t id = 0; id < n_vocab; id++) {
      int a = rule.allows(rule.ctx, id);
      ck_assert_msg((logits[id] == 1.0f) == a, "cut %zu, token %d", cut, id);
      counted += a;
    }
    ck_assert_int_eq(allowed, counted);
    ck_assert_int_gt(allowed, 0);
    pd_json_constraint_free(c);
    checked++;
  }
  ck_assert_int_gt(checked, 50);
  free(logits);
  pd_json_vocab_free(vocab);
  pd_json_schema_free(schema);
}
END_TEST

/* The plain tokens: exactly those pd_json_plain_text takes, and each of them, stepped from inside
 * a string, accepted and leaving the state byte for byte as it was (every token of both
 * vocabularies); pd_json_plain_text on its edges. */
START_TEST(plain_tokens_leave_a_string_as_it_was) {
  pd_tokenizer *toks[2] = {tiny, wide};
  for (int v = 0; v < 2; v++) {
    pd_json_vocab *vocab;
    ck_assert_int_eq(pd_json_vocab_build(toks[v], &vocab), 0);
    pd_json_state in;
    pd_json_init(&in, 1);
    ck_assert(pd_json_feed(&in, "{\"k\": \"ab", 9) && pd_json_plain_string(&in));
    int32_t n_vocab = pd_tokenizer_n_vocab(toks[v]), k = 0;
    for (int32_t id = 0; id < n_vocab; id++) {
      const char *bytes;
      size_t len;
      if (pd_tokenizer_is_special(toks[v], id) || pd_token_piece(toks[v], id, &bytes, &len) || !len)
        continue;
      pd_json_state t = in;
      int same = pd_json_feed(&t, bytes, len) && !memcmp(&t, &in, sizeof t);
      int listed = k < vocab->n_plain && vocab->plain[k] == id;
      k += listed;
      /* plain implies accepted and unchanged (not the converse: "\\n" leaves a string as it
       * was, through an escape) */
      ck_assert_msg(!listed || same, "vocab %d token %d: plain but not unchanged", v, id);
      ck_assert_int_eq(listed, pd_json_plain_text(bytes, len));
    }
    ck_assert_int_eq(k, vocab->n_plain);
    ck_assert_int_gt(vocab->n_plain, n_vocab / 2);
    pd_json_vocab_free(vocab);
  }
  ck_assert(pd_json_plain_text("caf\xc3\xa9 \xf0\x9f\x98\x80", 10));
  ck_assert(!pd_json_plain_text("caf\xc3", 4));      /* a character cut short */
  ck_assert(!pd_json_plain_text("\xa9", 1));         /* a continuation alone */
  ck_assert(!pd_json_plain_text("a\"", 2));          /* a quote */
  ck_assert(!pd_json_plain_text("a\\", 2));          /* a backslash */
  ck_assert(!pd_json_plain_text("\t", 1));           /* a control character */
  ck_assert(!pd_json_plain_text("\xed\xa0\x80", 3)); /* a surrogate */
  ck_assert(!pd_json_plain_text("\xc0\x80", 2));     /* overlong */
}
END_TEST

/* The sampler under the constraint: greedy picks the best allowed token (asking allows() first
 * is the same as masking), a temperature draws only allowed tokens, and a long constrained
 * generation over random logits is valid JSON all along and parses once done. */
START_TEST(sampler_under_the_constraint_makes_json) {
  int32_t n_vocab = pd_tokenizer_n_vocab(tiny);
  pd_json_vocab *vocab;
  ck_assert_int_eq(pd_json_vocab_build(tiny, &vocab), 0);
  float *logits = malloc((size_t)n_vocab * sizeof *logits);
  int done_count = 0;
  for (int run = 0; run < 40; run++) {
    pd_sampling_params p = {
        .temperature = run % 4 ? 1.5f : 0, .top_p = 1, .repeat_penalty = 1, .seed = (uint64_t)run};
    pd_sampler *smp;
    ck_assert_int_eq(pd_sampler_create(&p, n_vocab, &smp), 0);
    pd_json_constraint *c;
    ck_assert_int_eq(pd_json_constraint_create(vocab, NULL, &c), 0);
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
  pd_json_vocab_free(vocab);
}
END_TEST

/* At a temperature without filters the sampler draws first and masks only when the draw is
 * refused; the picks must still follow softmax restricted to the allowed tokens. Checked after
 * '{"k": ' (a value: many tokens refused) and inside a string (few refused), against the mask. */
START_TEST(constrained_draws_follow_the_restricted_softmax) {
  int32_t n_vocab = pd_tokenizer_n_vocab(tiny);
  pd_json_vocab *vocab;
  ck_assert_int_eq(pd_json_vocab_build(tiny, &vocab), 0);
  float *logits = malloc((size_t)n_vocab * sizeof *logits), *masked = malloc((size_t)n_vocab * 4);
  int *count = calloc((size_t)n_vocab, sizeof *count);
  const char *prefixes[] = {"{\"k\": ", "{\"k\": \"ab"};
  for (int p = 0; p < 2; p++) {
    for (int32_t id = 0; id < n_vocab; id++) logits[id] = (float)rnd(3000) / 1000.0f;
    int32_t ids[64];
    size_t n_ids;
    ck_assert_int_eq(pd_tokenize(tiny, prefixes[p], strlen(prefixes[p]), 0, ids, 64, &n_ids), 0);
    pd_json_constraint *c;
    ck_assert_int_eq(pd_json_constraint_create(vocab, NULL, &c), 0);
    for (size_t i = 0; i < n_ids; i++) ck_assert_int_eq(pd_json_constraint_accept(c, ids[i]), 0);
    pd_token_constraint rule = pd_json_constraint_rule(c);
    memcpy(masked, logits, (size_t)n_vocab * sizeof *masked);
    rule.mask(rule.ctx, masked);
    double z = 0;
    for (int32_t id = 0; id < n_vocab; id++) z += isinf(masked[id]) ? 0 : exp(masked[id]);
    pd_sampling_params sp = {.temperature = 1, .top_p = 1, .repeat_penalty = 1, .seed = 77};
    pd_sampler *smp;
    ck_assert_int_eq(pd_sampler_create(&sp, n_vocab, &smp), 0);
    memset(count, 0, (size_t)n_vocab * sizeof *count);
    const int N = 30000;
    for (int j = 0; j < N; j++) {
      int32_t tok = pd_sampler_sample_constrained(smp, logits, &rule);
      ck_assert_msg(!isinf(masked[tok]), "token %d is not allowed", tok);
      count[tok]++;
    }
    double chi = 0;
    int cells = 0;
    for (int32_t id = 0; id < n_vocab; id++) {
      if (isinf(masked[id])) continue;
      double want = N * exp(masked[id]) / z;
      if (want < 20) continue;
      chi += (count[id] - want) * (count[id] - want) / want;
      cells++;
    }
    ck_assert_int_gt(cells, 2);
    /* chi-square with cells-1 degrees of freedom: mean cells-1, sd sqrt(2(cells-1)) */
    ck_assert_msg(chi < cells - 1 + 6 * sqrt(2.0 * (cells - 1)), "prefix %d: chi2 %.1f over %d", p,
                  chi, cells);
    pd_sampler_free(smp);
    pd_json_constraint_free(c);
  }
  free(count), free(masked), free(logits);
  pd_json_vocab_free(vocab);
}
END_TEST

int main(void) {
  Suite *s = suite_create("json");
  TCase *grammar = tcase_create("grammar");
  tcase_add_test(grammar, grammar_accepts_json);
  tcase_add_test(grammar, grammar_refuses_at_the_first_bad_byte);
  tcase_add_test(grammar, grammar_agrees_with_jansson);
  tcase_add_test(grammar, schema_reads_what_it_describes);
  tcase_add_test(grammar, schema_refusals_name_the_keyword);
  tcase_add_test(grammar, schema_union_follows_the_alternative_its_constant_names);
  tcase_add_test(grammar, schema_random_walks_give_valid_documents);
  suite_add_tcase(s, grammar);
  TCase *tokens = tcase_create("tokens");
  tcase_add_unchecked_fixture(tokens, setup, teardown);
  tcase_set_timeout(tokens, 120);
  tcase_add_test(tokens, trie_walk_equals_trying_every_token);
  tcase_add_test(tokens, schema_constraint_mask_equals_allows);
  tcase_add_test(tokens, plain_tokens_leave_a_string_as_it_was);
  tcase_add_test(tokens, sampler_under_the_constraint_makes_json);
  tcase_add_test(tokens, constrained_draws_follow_the_restricted_softmax);
  suite_add_tcase(s, tokens);
  return pd_check_run(s, 1);
}
