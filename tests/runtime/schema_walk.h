/*
 * schema_walk.h -- what the tests of JSON Schema's reading share: compiling a schema that must
 * compile, reading a text through it, and a random walk through its reading, which makes the
 * documents the tests judge: at every step a random byte among those the reader accepts
 * (whitespace and bytes >= 0x80 rarely; one of `closers` more often once the text is long_at
 * bytes long, and one time in close_one_in before), until the reader is done.
 */
#ifndef SCHEMA_WALK_H
#define SCHEMA_WALK_H

#include <check.h>
#include <stdint.h>
#include <string.h>

#include "pd_err.h"
#include "pd_json_schema.h"

/* The compiled schema (the caller frees it); fails the test with the reason if it is refused. */
static inline pd_json_schema *compile_ok(const char *text) {
  pd_json_schema *schema;
  char err[256];
  ck_assert_msg(pd_json_schema_compile(text, strlen(text), &schema, err, sizeof err) == 0, "%s: %s",
                text, err);
  return schema;
}

/* The schema is refused (PD_EINVAL) with a reason that contains says. */
static inline void expect_refused(const char *schema_text, const char *says) {
  pd_json_schema *schema;
  char err[256] = "";
  ck_assert_int_eq(
      pd_json_schema_compile(schema_text, strlen(schema_text), &schema, err, sizeof err),
      PD_EINVAL);
  ck_assert_msg(strstr(err, says), "'%s': '%s'", schema_text, err);
}

/* Bytes of text the reader accepts before the first refusal (all of them if none), and whether
 * it then took them all and is done (*done) or complete (*complete); either may be NULL. */
static inline size_t schema_accepted(const pd_json_schema *schema, const char *text, int *done,
                                     int *complete) {
  pd_schema_state st;
  pd_schema_init(&st, schema);
  size_t i = 0, len = strlen(text);
  while (i < len && pd_schema_step(&st, (uint8_t)text[i])) i++;
  if (done) *done = i == len && pd_schema_done(&st);
  if (complete) *complete = i == len && pd_schema_complete(&st);
  return i;
}

/* Writes the document into text (capacity cap, NUL-terminated) and returns its length; fails
 * the test if the reader ever accepts no byte. rnd(n) is a uniform draw below n. */
static inline size_t schema_random_walk(const pd_json_schema *schema, char *text, size_t cap,
                                        uint32_t (*rnd)(uint32_t), const char *closers,
                                        size_t long_at, uint32_t close_one_in) {
  pd_schema_state st;
  pd_schema_init(&st, schema);
  size_t len = 0;
  while (!pd_schema_done(&st)) {
    ck_assert_uint_lt(len, cap - 1);
    uint8_t options[256];
    int n = 0;
    for (int b = 1; b < 256; b++) {
      pd_schema_state t = st;
      if (pd_schema_step(&t, (uint8_t)b)) options[n++] = (uint8_t)b;
    }
    ck_assert_msg(n > 0, "stuck after '%.*s'", (int)len, text);
    uint8_t pick = options[rnd((uint32_t)n)];
    for (int tries = 0; tries < 3 && (pick <= ' ' || pick >= 0x80); tries++)
      pick = options[rnd((uint32_t)n)];
    if (len > long_at || rnd(close_one_in) == 0)
      for (int k = 0; k < n; k++)
        if (strchr(closers, options[k]) && rnd(2)) pick = options[k];
    ck_assert(pd_schema_step(&st, pick));
    text[len++] = (char)pick;
  }
  text[len] = 0;
  return len;
}

#endif /* SCHEMA_WALK_H */
