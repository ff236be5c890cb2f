/*
 * test_schema_values.c -- JSON Schema's constraints on strings and numbers in constrained
 * decoding: bounded numbers (pd_json_bounds) against a brute force over every short number text,
 * with strtod as the judge of values; strings with a pattern, a format or a length, and numbers
 * with bounds, read through pd_json_schema; the refusals; and random walks through a schema that
 * uses them all, each document judged by independent code (jansson, glibc's POSIX regexec,
 * inet_pton, timegm), never by the automata under test.
 */
#include <arpa/inet.h>
#include <check.h>
#include <jansson.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pd_check.h"
#include "pd_err.h"
#include "pd_json_bounds.h"
#include "pd_json_schema.h"
#include "schema_walk.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(uint32_t n) {
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  return (uint32_t)(rng % n);
}

/* ---- bounded numbers ----------------------------------------------------------------------- */

typedef struct bounds_case {
  const char *lower, *upper;
  int lower_exclusive, upper_exclusive, integer;
} bounds_case;

static const bounds_case bounds_cases[] = {
    {"0", "10", 0, 0, 0},   {"0", "1", 1, 0, 0},       {"-5.5", "2.25", 0, 1, 0},
    {"-12", "7", 0, 0, 1},  {"0.5", "3.7", 1, 1, 1},   {"100", "200", 0, 0, 1},
    {"1e3", NULL, 0, 0, 0}, {NULL, "-0.001", 0, 0, 0}, {"0.1", "0.3", 0, 0, 0},
    {"-1", "-1", 0, 0, 1},  {NULL, "0", 0, 1, 1},      {"-0.05", "0.05", 1, 1, 0},
    {"2.5", NULL, 1, 0, 0}, {NULL, NULL, 0, 0, 1},     {"99", "99.5", 0, 0, 0},
};

/* The reference: text is a number as JSON writes it without an exponent (and without a point
 * for an integer), and strtod's value is within the case's bounds. */
static int reference_valid(const bounds_case *c, const char *text) {
  static regex_t number, integer;
  static int compiled;
  if (!compiled) {
    ck_assert_int_eq(regcomp(&number, "^-?(0|[1-9][0-9]*)(\\.[0-9]+)?$", REG_EXTENDED), 0);
    ck_assert_int_eq(regcomp(&integer, "^-?(0|[1-9][0-9]*)$", REG_EXTENDED), 0);
    compiled = 1;
  }
  if (regexec(c->integer ? &integer : &number, text, 0, NULL, 0)) return 0;
  double v = strtod(text, NULL);
  if (c->lower) {
    double lo = strtod(c->lower, NULL);
    if (c->lower_exclusive ? !(v > lo) : !(v >= lo)) return 0;
  }
  if (c->upper) {
    double hi = strtod(c->upper, NULL);
    if (c->upper_exclusive ? !(v < hi) : !(v <= hi)) return 0;
  }
  return 1;
}

/* Bytes of text the recognizer takes (len if all); *complete when it took all and is complete. */
static size_t bounds_taken(const pd_num_bounds *b, const char *text, int *complete) {
  pd_num_state s;
  pd_num_init(&s);
  size_t i = 0, len = strlen(text);
  while (i < len && pd_num_step(b, &s, (uint8_t)text[i])) i++;
  *complete = i == len && pd_num_complete(b, &s);
  return i;
}

/* From s, some sequence of at most depth taken bytes makes a complete number. */
static int can_finish(const pd_num_bounds *b, const pd_num_state *s, int depth) {
  if (pd_num_complete(b, s)) return 1;
  if (!depth) return 0;
  static const char alphabet[] = "0123456789.-";
  for (const char *a = alphabet; *a; a++) {
    pd_num_state t = *s;
    if (pd_num_step(b, &t, (uint8_t)*a) && can_finish(b, &t, depth - 1)) return 1;
  }
  return 0;
}

/* Every text of up to 5 bytes over "0123456789.-": the recognizer calls it a complete number
 * within the bounds exactly when the reference does; it takes every prefix of such a number; and
 * from whatever it took, a complete number within the bounds can still be written. */
START_TEST(bounds_agree_with_a_brute_force) {
  static const char alphabet[] = "0123456789.-";
  for (size_t k = 0; k < sizeof bounds_cases / sizeof *bounds_cases; k++) {
    const bounds_case *c = &bounds_cases[k];
    pd_num_bounds b;
    char err[160];
    ck_assert_msg(pd_num_bounds_set(&b, c->lower, c->lower_exclusive, c->upper, c->upper_exclusive,
                                    c->integer, err, sizeof err) == 0,
                  "case %zu: %s", k, err);
    int valid_seen = 0;
    char text[8];
    for (int len = 1; len <= 5; len++) {
      int total = 1;
      for (int i = 0; i < len; i++) total *= 12;
      for (int code = 0; code < total; code++) {
        int x = code;
        for (int i = 0; i < len; i++) text[i] = alphabet[x % 12], x /= 12;
        text[len] = 0;
        int complete;
        size_t taken = bounds_taken(&b, text, &complete);
        int valid = reference_valid(c, text);
        valid_seen += valid;
        ck_assert_msg(complete == valid, "case %zu '%s': complete %d, reference %d", k, text,
                      complete, valid);
        if (valid) /* every prefix of a valid number was taken */
          ck_assert_msg(taken == (size_t)len, "case %zu '%s': took %zu", k, text, taken);
        if (taken == (size_t)len && !complete) {
          pd_num_state s;
          pd_num_init(&s);
          for (int i = 0; i < len; i++) pd_num_step(&b, &s, (uint8_t)text[i]);
          ck_assert_msg(can_finish(&b, &s, 24), "case %zu: '%s' is a dead end", k, text);
        }
      }
    }
    ck_assert_msg(valid_seen > 0, "case %zu: nothing valid", k);
  }
}
END_TEST

START_TEST(bounds_refuse_what_nothing_satisfies) {
  pd_num_bounds b;
  char err[160] = "";
  ck_assert_int_eq(pd_num_bounds_set(&b, "0.5", 0, "0.7", 0, 1, err, sizeof err), PD_EINVAL);
  ck_assert_msg(strstr(err, "no integer"), "%s", err);
  ck_assert_int_eq(pd_num_bounds_set(&b, "1", 1, "1", 0, 0, err, sizeof err), PD_EINVAL);
  ck_assert_int_eq(pd_num_bounds_set(&b, "1e30", 0, NULL, 0, 0, err, sizeof err), PD_EINVAL);
  ck_assert_int_eq(pd_num_bounds_set(&b, "1x", 0, NULL, 0, 0, err, sizeof err), PD_EINVAL);
  ck_assert_msg(strstr(err, "not a number"), "%s", err);
  /* far bounds are no bounds; a tiny exclusive one is still one */
  ck_assert_int_eq(pd_num_bounds_set(&b, "-1e300", 0, "1e300", 0, 0, err, sizeof err), 0);
  ck_assert_int_eq(pd_num_bounds_set(&b, "1e-20", 1, NULL, 0, 0, err, sizeof err), 0);
  int complete;
  ck_assert_uint_eq(bounds_taken(&b, "0.000000000000001", &complete), 17);
  ck_assert(complete);
  ck_assert_uint_eq(bounds_taken(&b, "0.000000000000000", &complete), 16); /* 0 is not > 1e-20 */
}
END_TEST

/* ---- through the schema -------------------------------------------------------------------- */

typedef struct reading {
  const char *text;
  size_t at; /* refused at this byte; (size_t)-1: read whole and complete */
} reading;

#define WHOLE ((size_t)-1)

static void expect(const char *schema_text, const reading *r, size_t n) {
  pd_json_schema *schema = compile_ok(schema_text);
  for (size_t i = 0; i < n; i++) {
    int complete;
    size_t at = schema_accepted(schema, r[i].text, NULL, &complete);
    if (r[i].at == WHOLE)
      ck_assert_msg(at == strlen(r[i].text) && complete, "%s: '%s' refused at %zu", schema_text,
                    r[i].text, at);
    else
      ck_assert_msg(at == r[i].at, "%s: '%s' refused at %zu, expected %zu", schema_text, r[i].text,
                    at, r[i].at);
  }
  pd_json_schema_free(schema);
}

START_TEST(strings_follow_pattern_format_and_length) {
  const reading code[] = {{"\"AB-1234\"", WHOLE},
                          {"\"ab", 1},
                          {"\"AB-12\"", 6},
                          {"\"AB-12345", 8},
                          {"\"A\\u0042-1234\"", WHOLE}};
  expect("{\"type\": \"string\", \"pattern\": \"^[A-Z]{2}-\\\\d{4}$\"}", code, 5);
  /* not anchored: the pattern may match anywhere */
  const reading anywhere[] = {{"\"xx42yy\"", WHOLE}, {"\"xxyy\"", 5}, {"\"42\"", WHOLE}};
  expect("{\"type\": \"string\", \"pattern\": \"\\\\d\\\\d\"}", anywhere, 3);
  /* characters JSON must escape: a quote and a line break in the pattern */
  const reading quoted[] = {
      {"\"a\\\"b\\nc\"", WHOLE}, {"\"a\"", 2}, {"\"a\\u0022b\\u000ac\"", WHOLE}};
  expect("{\"type\": \"string\", \"pattern\": \"^a\\\"b\\nc$\"}", quoted, 3);
  /* lengths count code points, however written */
  const reading len[] = {{"\"ab\"", WHOLE},
                         {"\"a\"", 2},
                         {"\"abcd\"", WHOLE},
                         {"\"abcde", 5},
                         {"\"\xc3\xa9\xe4\xb8\xad\"", WHOLE},
                         {"\"\\u00e9\xf0\x9f\x98\x80\\n\"", WHOLE},
                         {"\"\xf0\x9f\x98\x80\"", 5}};
  expect("{\"type\": \"string\", \"minLength\": 2, \"maxLength\": 4}", len, 7);
  /* a pattern of non-ASCII characters: a lead byte is refused when no allowed one begins so */
  const reading accents[] = {{"\"\xc3\xa9t\xc3\xa9\"", WHOLE}, {"\"\xe4", 1}, {"\"\xc3\xa8", 2}};
  expect("{\"type\": \"string\", \"pattern\": \"^[\xc3\xa9t]+$\"}", accents, 3);
  const reading date[] = {
      {"\"2024-02-29\"", WHOLE}, {"\"2023-02-29", 10}, {"\"2023-13", 7},
      {"\"2023-04-31", 10},      {"\"0000", 4},        {"\"2000-02-29\"", WHOLE},
      {"\"1900-02-29", 10}};
  expect("{\"type\": \"string\", \"format\": \"date\"}", date, 7);
  const reading datetime[] = {{"\"2024-05-01T12:30:00Z\"", WHOLE},
                              {"\"2024-05-01T12:30:00.123+02:00\"", WHOLE},
                              {"\"2024-05-01T24", 13},
                              {"\"2024-05-01T12:30:00\"", 20}};
  expect("{\"type\": \"string\", \"format\": \"date-time\"}", datetime, 4);
  const reading ip[] = {{"\"192.168.0.1\"", WHOLE}, {"\"256", 3}, {"\"1.2.3\"", 6}, {"\"01.", 2}};
  expect("{\"type\": \"string\", \"format\": \"ipv4\"}", ip, 4);
  const reading ip6[] = {{"\"::1\"", WHOLE},
                         {"\"fe80::1:2\"", WHOLE},
                         {"\"2001:db8:0:0:0:0:2:1\"", WHOLE},
                         {"\"1:::", 4},
                         {"\"12345", 5}};
  expect("{\"type\": \"string\", \"format\": \"ipv6\"}", ip6, 5);
  const reading uuid[] = {{"\"123e4567-e89b-12d3-a456-426614174000\"", WHOLE}, {"\"123g", 4}};
  expect("{\"type\": \"string\", \"format\": \"uuid\"}", uuid, 2);
  const reading email[] = {
      {"\"ada.l@example.org\"", WHOLE}, {"\"ada@example\"", 12}, {"\"@", 1}, {"\"a b", 2}};
  expect("{\"type\": \"string\", \"format\": \"email\"}", email, 4);
  const reading uri[] = {
      {"\"https://example.org/a?b=c#d\"", WHOLE}, {"\"https:/\"", 8}, {"\"1http", 1}};
  expect("{\"type\": \"string\", \"format\": \"uri\", \"maxLength\": 2083}", uri, 3);
  const reading duration[] = {
      {"\"P3DT4H\"", WHOLE}, {"\"PT0.5S\"", WHOLE}, {"\"P\"", 2}, {"\"PT\"", 3}};
  expect("{\"type\": \"string\", \"format\": \"duration\"}", duration, 4);
  /* a nullable constrained string (pydantic's Optional[constr(...)]), and no type: the pattern
   * binds strings only */
  const reading optional[] = {{"null", WHOLE}, {"\"ok\"", WHOLE}, {"\"no\"", 1}};
  expect("{\"anyOf\": [{\"type\": \"string\", \"pattern\": \"^o\"}, {\"type\": \"null\"}]}",
         optional, 3);
  const reading untyped[] = {{"12", WHOLE}, {"\"x1\"", WHOLE}, {"\"xy", 2}};
  expect("{\"pattern\": \"^x\\\\d\"}", untyped, 3);
}
END_TEST

START_TEST(numbers_follow_their_bounds) {
  const reading score[] = {{"0.5", WHOLE}, {"1", WHOLE}, {"0", WHOLE},   {"1.5", 2},
                           {"-1", 1},      {"2", 0},     {"1.0", WHOLE}, {"0.5e3", 3}};
  expect("{\"type\": \"number\", \"minimum\": 0, \"maximum\": 1}", score, 8);
  const reading age[] = {{"0", WHOLE}, {"130", WHOLE}, {"131", 2},
                         {"-1", 1},    {"1.5", 1},     {"99", WHOLE}};
  expect("{\"type\": \"integer\", \"minimum\": 0, \"maximum\": 130}", age, 6);
  /* draft 4's boolean exclusives, and draft 6's numbers, the tighter bound counting */
  const reading positive[] = {{"1", WHOLE}, {"0", 0}, {"0.5", 0}};
  expect("{\"type\": \"integer\", \"minimum\": 0, \"exclusiveMinimum\": true}", positive, 3);
  const reading below[] = {{"9", WHOLE}, {"10", 1}, {"-3", WHOLE}};
  expect("{\"type\": \"integer\", \"exclusiveMaximum\": 10, \"maximum\": 20}", below, 3);
  /* inside an object: the number ends at the ',' and the object goes on */
  const reading in_object[] = {{"{\"n\": 7, \"m\": 2}", WHOLE}, {"{\"n\": 70", 7}};
  expect("{\"type\": \"object\", \"properties\": {\"n\": {\"type\": \"integer\", \"maximum\": 9}, "
         "\"m\": {}}, \"required\": [\"n\", \"m\"]}",
         in_object, 2);
}
END_TEST

/* pydantic's discriminated union: oneOf over $refs whose discriminator is not their first
 * property (and a plain Union, anyOf): the discriminator is generated first, then the
 * alternative it names, its other properties in their order. */
#define PET_DEFS                                                                                   \
  "\"$defs\": {\"Cat\": {\"type\": \"object\", \"properties\": {\"name\": {\"type\": "             \
  "\"string\"}, "                                                                                  \
  "\"pet_type\": {\"const\": \"cat\", \"type\": \"string\"}, \"lives\": {\"type\": \"integer\", "  \
  "\"maximum\": 9}}, \"required\": [\"name\", \"pet_type\", \"lives\"]}, \"Dog\": {\"type\": "     \
  "\"object\", \"properties\": {\"pet_type\": {\"const\": \"dog\", \"type\": \"string\"}, "        \
  "\"barks\": "                                                                                    \
  "{\"type\": \"boolean\"}}, \"required\": [\"pet_type\", \"barks\"]}}"

START_TEST(unions_are_told_apart_by_their_discriminator_wherever_it_is) {
  const reading pets[] = {
      {"{\"pet_type\": \"cat\", \"name\": \"Tom\", \"lives\": 9}", WHOLE},
      {"{\"pet_type\": \"dog\", \"barks\": true}", WHOLE},
      {"{\"name\"", 2},                          /* the discriminator comes first */
      {"{\"pet_type\": \"cat\", \"barks\"", 21}, /* a cat's properties follow */
      {"{\"pet_type\": \"cat\", \"name\": \"a\", \"lives\": 10", 43}, /* and its bounds */
  };
  expect("{\"oneOf\": [{\"$ref\": \"#/$defs/Cat\"}, {\"$ref\": \"#/$defs/Dog\"}], "
         "\"discriminator\": {\"propertyName\": \"pet_type\"}, " PET_DEFS "}",
         pets, 5);
  expect("{\"anyOf\": [{\"$ref\": \"#/$defs/Cat\"}, {\"$ref\": \"#/$defs/Dog\"}], " PET_DEFS "}",
         pets, 5);
  /* oneOf of types that cannot overlap */
  const reading one[] = {{"\"x\"", WHOLE}, {"3", WHOLE}, {"null", WHOLE}, {"[", 0}};
  expect("{\"oneOf\": [{\"type\": \"string\"}, {\"type\": \"integer\"}, {\"type\": \"null\"}]}",
         one, 4);
}
END_TEST

/* An object without properties whose additionalProperties is a schema is a map (pydantic's
 * Dict[str, X]): any keys, each value valid for it; false allows only {}. */
START_TEST(maps_keep_their_values_schema) {
  const reading counts[] = {
      {"{\"a\": 1, \"b c\\u00e9\": 20}", WHOLE},
      {"{}", WHOLE},
      {"{\"a\": \"x\"", 6},   /* an integer */
      {"{\"a\": 1.5", 7},     /* an integer */
      {"{\"a\": 120", 8},     /* at most 99 */
      {"{\"a\": 1 \"b\"", 8}, /* a comma first */
      {"{\"a\"}", 4},         /* a value first */
  };
  expect("{\"type\": \"object\", \"additionalProperties\": {\"type\": \"integer\", "
         "\"maximum\": 99}}",
         counts, 7);
  const reading nested[] = {{"{\"k\": {\"x\": [true]}, \"j\": {}}", WHOLE},
                            {"{\"k\": {\"x\": [1", 13}};
  expect("{\"additionalProperties\": {\"additionalProperties\": {\"type\": \"array\", "
         "\"items\": {\"type\": \"boolean\"}}}}",
         nested, 2);
  const reading empty[] = {{"{}", WHOLE}, {"{\"", 1}, {"{ }", WHOLE}};
  expect("{\"type\": \"object\", \"additionalProperties\": false}", empty, 3);
  /* beside properties it needs no enforcing: nothing else is generated */
  const reading beside[] = {{"{\"a\": 1}", WHOLE}, {"{\"b\"", 2}};
  expect("{\"properties\": {\"a\": {\"type\": \"integer\"}}, \"additionalProperties\": "
         "{\"type\": \"string\"}}",
         beside, 2);
}
END_TEST

START_TEST(constraints_that_cannot_be_kept_are_refused_by_name) {
  const struct {
    const char *schema, *says;
  } bad[] = {
      {"{\"type\": \"string\", \"pattern\": \"(?=a)\"}", "lookahead"},
      {"{\"type\": \"string\", \"pattern\": \"(a)\\\\1\"}", "backreference"},
      {"{\"type\": \"string\", \"pattern\": \"(ab\"}", "'pattern'"},
      {"{\"type\": \"string\", \"format\": \"password\"}", "'format' 'password' is not supported"},
      {"{\"type\": \"string\", \"format\": \"date\", \"pattern\": \"^2\"}", "beside 'format'"},
      {"{\"type\": \"string\", \"minLength\": 3, \"maxLength\": 2}", "over 'maxLength'"},
      {"{\"type\": \"string\", \"pattern\": \"^a{5}$\", \"maxLength\": 3}", "(at #)"},
      {"{\"type\": \"integer\", \"minimum\": \"3\"}", "'minimum' must be a number"},
      {"{\"type\": \"integer\", \"minimum\": 5, \"maximum\": 4}", "no integer"},
      {"{\"type\": \"integer\", \"multipleOf\": 5}", "'multipleOf' is not supported"},
      {"{\"enum\": [\"a\"], \"maxLength\": 3}", "'maxLength' beside 'enum'"},
      {"{\"anyOf\": [{\"type\": \"string\"}], \"pattern\": \"a\"}", "'anyOf' beside 'pattern'"},
      {"{\"anyOf\": [{\"type\": \"string\", \"pattern\": \"a\"}, {\"type\": \"string\"}]}",
       "beside another string schema"},
      {"{\"anyOf\": [{\"type\": \"number\", \"minimum\": 1}, {\"type\": \"integer\"}]}",
       "beside another number schema"},
      {"{\"oneOf\": [{\"type\": \"number\"}, {\"type\": \"integer\"}]}",
       "'oneOf' alternatives overlap"},
      {"{\"oneOf\": [{\"enum\": [1, 2]}, {\"enum\": [2]}]}", "a value is in two of them"},
      {"{\"oneOf\": [{\"type\": \"string\"}], \"anyOf\": [{}]}", "'anyOf' beside 'oneOf'"},
      {"{\"additionalProperties\": 3}", "must be a boolean or a schema"},
      {"{\"additionalProperties\": {\"format\": \"x\"}}", "(at #/additionalProperties)"},
      {"{\"anyOf\": [{\"additionalProperties\": {}}, {\"properties\": {}}]}", "two object schemas"},
      {"{\"oneOf\": [{\"properties\": {\"a\": {}}}, {\"properties\": {\"b\": {}}}]}",
       "'oneOf' of object schemas needs a required property of the same name"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    expect_refused(bad[i].schema, bad[i].says);
  }
}
END_TEST

/* ---- random walks, judged independently ---------------------------------------------------- */

static const char walk_schema[] =
    "{\"type\": \"object\", \"properties\": {"
    "\"code\": {\"type\": \"string\", \"pattern\": \"^[A-Z]{2}-[0-9]{3,5}$\"},"
    "\"word\": {\"type\": \"string\", \"pattern\": \"^\\\\w+@\\\\d+$\", \"maxLength\": 12},"
    "\"short\": {\"type\": \"string\", \"minLength\": 2, \"maxLength\": 4},"
    "\"day\": {\"type\": \"string\", \"format\": \"date\"},"
    "\"when\": {\"type\": \"string\", \"format\": \"date-time\"},"
    "\"v4\": {\"type\": \"string\", \"format\": \"ipv4\"},"
    "\"v6\": {\"type\": \"string\", \"format\": \"ipv6\"},"
    "\"id\": {\"type\": \"string\", \"format\": \"uuid\"},"
    "\"score\": {\"type\": \"number\", \"minimum\": -1.5, \"exclusiveMaximum\": 2},"
    "\"age\": {\"anyOf\": [{\"type\": \"integer\", \"minimum\": 18, \"maximum\": 99}, "
    "{\"type\": \"null\"}]},"
    "\"counts\": {\"type\": \"object\", \"additionalProperties\": {\"type\": \"integer\", "
    "\"minimum\": 0, \"maximum\": 9}}},"
    "\"required\": [\"code\", \"word\", \"short\", \"day\", \"when\", \"v4\", \"v6\", \"id\", "
    "\"score\", \"age\", \"counts\"]}";

static size_t code_points(const char *s) {
  size_t n = 0;
  for (; *s; s++) n += ((uint8_t)*s & 0xC0) != 0x80;
  return n;
}

static int matches(const char *ere, const char *s) {
  regex_t re;
  ck_assert_int_eq(regcomp(&re, ere, REG_EXTENDED | REG_NOSUB), 0);
  int ok = regexec(&re, s, 0, NULL, 0) == 0;
  regfree(&re);
  return ok;
}

/* A calendar date: timegm normalizes an impossible one (February 30th) to another day. */
static int real_date(const char *s) {
  int y, m, d;
  char tail;
  if (sscanf(s, "%4d-%2d-%2d%c", &y, &m, &d, &tail) != 3 || strlen(s) != 10) return 0;
  struct tm tm = {.tm_year = y - 1900, .tm_mon = m - 1, .tm_mday = d, .tm_hour = 12};
  time_t t = timegm(&tm);
  struct tm back;
  gmtime_r(&t, &back);
  return y >= 1 && back.tm_year == y - 1900 && back.tm_mon == m - 1 && back.tm_mday == d;
}

static const char *str(json_t *doc, const char *key) {
  const char *s = json_string_value(json_object_get(doc, key));
  ck_assert_msg(s, "%s is not a string", key);
  return s;
}

static void judge(json_t *doc, const char *text) {
  ck_assert_msg(matches("^[A-Z]{2}-[0-9]{3,5}$", str(doc, "code")), "code: %s", text);
  const char *word = str(doc, "word");
  ck_assert_msg(matches("[A-Za-z0-9_]+@[0-9]+$", word) && code_points(word) <= 12, "word: %s",
                text);
  size_t n = code_points(str(doc, "short"));
  ck_assert_msg(n >= 2 && n <= 4, "short: %s", text);
  ck_assert_msg(real_date(str(doc, "day")), "day: %s", text);
  const char *when = str(doc, "when");
  char day[11] = "";
  memcpy(day, when, strlen(when) >= 10 ? 10 : 0);
  ck_assert_msg(real_date(day) && matches("^.{10}T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
                                          "(\\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$",
                                          when),
                "when: %s", text);
  unsigned char addr[16];
  ck_assert_msg(inet_pton(AF_INET, str(doc, "v4"), addr) == 1, "v4: %s", text);
  ck_assert_msg(inet_pton(AF_INET6, str(doc, "v6"), addr) == 1, "v6: %s", text);
  ck_assert_msg(matches("^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$", str(doc, "id")),
                "id: %s", text);
  json_t *score = json_object_get(doc, "score"), *age = json_object_get(doc, "age");
  ck_assert_msg(json_is_number(score) && json_number_value(score) >= -1.5 &&
                    json_number_value(score) < 2,
                "score: %s", text);
  ck_assert_msg(json_is_null(age) || (json_is_integer(age) && json_integer_value(age) >= 18 &&
                                      json_integer_value(age) <= 99),
                "age: %s", text);
  json_t *counts = json_object_get(doc, "counts"), *v;
  const char *key;
  ck_assert_msg(json_is_object(counts), "counts: %s", text);
  json_object_foreach(counts, key, v) {
    ck_assert_msg(json_is_integer(v) && json_integer_value(v) >= 0 && json_integer_value(v) <= 9,
                  "counts: %s", text);
  }
}

/* Random walks through the schema's reading, a random accepted byte at each step (whitespace and
 * non-ASCII rarely, a closing quote or bracket more often as the text grows), until done: every
 * document parses and every value keeps its constraint. */
START_TEST(random_walks_keep_every_constraint) {
  pd_json_schema *schema = compile_ok(walk_schema);
  static char text[1 << 14];
  int null_ages = 0;
  for (int round = 0; round < 200; round++) {
    size_t len = schema_random_walk(schema, text, sizeof text, rnd, "}\",", 400, 3);
    json_error_t err;
    json_t *doc = json_loadb(text, len, 0, &err);
    ck_assert_msg(doc, "%s: '%s'", err.text, text);
    judge(doc, text);
    null_ages += json_is_null(json_object_get(doc, "age"));
    json_decref(doc);
  }
  ck_assert(null_ages > 5 && null_ages < 195); /* both alternatives come */
  pd_json_schema_free(schema);
}
END_TEST

int main(void) {
  Suite *s = suite_create("schema_values");
  TCase *t = tcase_create("values");
  tcase_set_timeout(t, 120);
  tcase_add_test(t, bounds_agree_with_a_brute_force);
  tcase_add_test(t, bounds_refuse_what_nothing_satisfies);
  tcase_add_test(t, strings_follow_pattern_format_and_length);
  tcase_add_test(t, numbers_follow_their_bounds);
  tcase_add_test(t, unions_are_told_apart_by_their_discriminator_wherever_it_is);
  tcase_add_test(t, maps_keep_their_values_schema);
  tcase_add_test(t, constraints_that_cannot_be_kept_are_refused_by_name);
  tcase_add_test(t, random_walks_keep_every_constraint);
  suite_add_tcase(s, t);
  return pd_check_run(s, 1);
}
