/*
 * pd_json_grammar.h -- a byte-at-a-time recognizer of JSON (RFC 8259), for constrained decoding.
 *
 * The state is a small plain struct: copying it is how a walk over the vocabulary tries a token
 * without committing to it (pd_token_trie_walk copies it once per trie level). pd_json_step takes
 * one byte and answers whether the text so far is still the beginning of some JSON text; it
 * never accepts a byte that would make every continuation invalid, so a generation that only
 * ever takes accepted bytes is always a prefix of valid JSON, and is valid JSON once done.
 *
 * Beyond RFC 8259, what a generator needs:
 * - object_only: the top-level value must be an object (OpenAI's json_object mode);
 * - at most PD_JSON_MAX_WS whitespace bytes in a row, holding at most one line break ("\n",
 *   "\r" or "\r\n"), so a model cannot spend its budget on blank lines (JSON printed compact
 *   or indented, to a depth of 7 or so, still fits);
 * - at most PD_JSON_MAX_DEPTH nested containers;
 * - strings are valid UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF), with no
 *   raw control characters; escapes are checked, \u with four hex digits, a high surrogate
 *   only with the low one right after it and no low one alone (strict parsers refuse both);
 * - nothing after the top-level value, not even whitespace: the value's last byte ends it
 *   (pd_json_done), which is where a generation stops.
 */
#ifndef PD_JSON_GRAMMAR_H
#define PD_JSON_GRAMMAR_H

#include <stddef.h>
#include <stdint.h>

#define PD_JSON_MAX_DEPTH 64
#define PD_JSON_MAX_WS    32

typedef struct pd_json_state {
  uint64_t stack;    /* bit d set: the container at depth d+1 is an object, else an array */
  uint8_t mode;      /* what may come next (pd_json_grammar.c's enum) */
  uint8_t depth;     /* open containers */
  uint8_t sub;       /* number: its part; literal: which one; \u: hex digits left */
  uint8_t pos;       /* literal: bytes matched */
  uint8_t key;       /* the string being read is an object key */
  uint8_t utf8_need; /* continuation bytes still owed by a character in a string */
  uint8_t utf8_lo;   /* the range of the next continuation byte */
  uint8_t utf8_hi;
  uint8_t ws_run;      /* whitespace bytes in a row */
  uint8_t object_only; /* the top-level value must be an object */
  uint8_t surrogate;   /* where a \u escape is in UTF-16's surrogate rules */
  uint8_t ws_breaks;   /* line breaks in the whitespace run: 1 '\n', 2 '\r' */
} pd_json_state;

/* A fresh state: nothing read yet. */
void pd_json_init(pd_json_state *s, int object_only);

/* One whitespace byte between tokens, counted in *run and *breaks (both 0 after any other
 * byte): 1 if the run may take it (at most PD_JSON_MAX_WS bytes, at most one line break: '\n',
 * '\r', or '\r' then '\n'), 0 if not. Shared with pd_json_schema's reader. */
static inline int pd_json_ws_step(uint8_t *run, uint8_t *breaks, uint8_t b) {
  if (*run == PD_JSON_MAX_WS) return 0;
  if (b == '\n') {
    if (*breaks & 1) return 0;
    *breaks |= 1;
  } else if (b == '\r') {
    if (*breaks) return 0;
    *breaks |= 2;
  }
  (*run)++;
  return 1;
}

/* One byte: 1 if the text stays a prefix of valid JSON (s advanced), 0 if not (s may have
 * changed: step a copy when the answer matters). The signature is pd_token_trie's step. */
int pd_json_step(void *state, uint8_t byte);

/* n bytes: 1 if all were accepted. */
int pd_json_feed(pd_json_state *s, const void *bytes, size_t n);

/* The top-level value is closed: nothing may follow. */
int pd_json_done(const pd_json_state *s);

/* What was read is a whole JSON text: done, or a top-level number that may end here. */
int pd_json_complete(const pd_json_state *s);

/* Inside a string with no character half read and no surrogate pending: any plain text
 * (pd_json_plain_text) is accepted here and leaves the state as it is. */
int pd_json_plain_string(const pd_json_state *s);

#endif /* PD_JSON_GRAMMAR_H */
