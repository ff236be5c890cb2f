/* pd_json_constraint.c -- see pd_json_constraint.h. */
#include "pd_json_constraint.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "pd_err.h"

/* The grammar's state: plain JSON, or a schema's reading of it. */
typedef union grammar_state {
  pd_json_state json;
  pd_schema_state schema;
} grammar_state;

struct pd_json_constraint {
  grammar_state state;
  size_t state_size; /* the bytes of state in use */
  pd_byte_step step;
  int (*done)(const grammar_state *st);
  int (*complete)(const grammar_state *st);
  int (*plain_string)(const grammar_state *st);
  const pd_json_vocab *vocab;
  const pd_tokenizer *tok;
  int32_t n_vocab;
  uint8_t *allowed;    /* (n_vocab) the mask's scratch: 1 = may come next */
  grammar_state *walk; /* (pd_token_trie_max_len + 1) the trie walk's scratch */
};

static int json_done(const grammar_state *st) {
  return pd_json_done(&st->json);
}
static int json_complete(const grammar_state *st) {
  return pd_json_complete(&st->json);
}
static int schema_done(const grammar_state *st) {
  return pd_schema_done(&st->schema);
}
static int schema_complete(const grammar_state *st) {
  return pd_schema_complete(&st->schema);
}
static int json_plain_string(const grammar_state *st) {
  return pd_json_plain_string(&st->json);
}
static int schema_plain_string(const grammar_state *st) {
  return pd_schema_plain_string(&st->schema);
}

int pd_json_constraint_create(const pd_json_vocab *vocab, const pd_json_schema *schema,
                              pd_json_constraint **out) {
  *out = NULL;
  pd_json_constraint *c = calloc(1, sizeof *c);
  if (!c) return PD_ENOMEM;
  if (schema) {
    pd_schema_init(&c->state.schema, schema);
    c->state_size = sizeof c->state.schema;
    c->step = pd_schema_step;
    c->done = schema_done;
    c->complete = schema_complete;
    c->plain_string = schema_plain_string;
  } else {
    pd_json_init(&c->state.json, 1);
    c->state_size = sizeof c->state.json;
    c->step = pd_json_step;
    c->done = json_done;
    c->complete = json_complete;
    c->plain_string = json_plain_string;
  }
  c->vocab = vocab;
  c->tok = vocab->tok;
  c->n_vocab = pd_tokenizer_n_vocab(c->tok);
  c->allowed = malloc((size_t)c->n_vocab);
  c->walk = malloc((pd_token_trie_max_len(vocab->all) + 1) * sizeof *c->walk);
  if (!c->allowed || !c->walk) {
    pd_json_constraint_free(c);
    return PD_ENOMEM;
  }
  *out = c;
  return PD_OK;
}

void pd_json_constraint_free(pd_json_constraint *c) {
  if (!c) return;
  free(c->allowed);
  free(c->walk);
  free(c);
}

/* Whether tok may follow state, and the state after it in *next. */
static int step_token(const pd_json_constraint *c, int32_t tok, grammar_state *next) {
  memcpy(next, &c->state, c->state_size);
  if (pd_tokenizer_is_special(c->tok, tok))
    return pd_tokenizer_is_eog(c->tok, tok) && c->complete(&c->state);
  const char *bytes;
  size_t len;
  if (pd_token_piece(c->tok, tok, &bytes, &len) || !len) return 0;
  for (size_t i = 0; i < len; i++)
    if (!c->step(next, (uint8_t)bytes[i])) return 0;
  return 1;
}

static int allows(void *ctx, int32_t tok) {
  grammar_state next;
  return step_token(ctx, tok, &next);
}

static void mark(void *user, int32_t tok) {
  ((pd_json_constraint *)user)->allowed[tok] = 1;
}

static int32_t mask(void *ctx, float *logits) {
  pd_json_constraint *c = ctx;
  memset(c->allowed, 0, (size_t)c->n_vocab);
  int32_t n;
  if (c->plain_string(&c->state)) { /* plain text as it is, the other tokens walked */
    for (int32_t i = 0; i < c->vocab->n_plain; i++) c->allowed[c->vocab->plain[i]] = 1;
    n = c->vocab->n_plain +
        pd_token_trie_walk(c->vocab->unplain, &c->state, c->state_size, c->step, c->walk, mark, c);
  } else {
    n = pd_token_trie_walk(c->vocab->all, &c->state, c->state_size, c->step, c->walk, mark, c);
  }
  int complete = c->complete(&c->state);
  for (int32_t i = 0; i < c->n_vocab; i++) {
    if (c->allowed[i]) continue;
    if (complete && pd_tokenizer_is_eog(c->tok, i)) {
      n++;
      continue;
    }
    logits[i] = -INFINITY;
  }
  return n;
}

pd_token_constraint pd_json_constraint_rule(pd_json_constraint *c) {
  return (pd_token_constraint){allows, mask, c};
}

int pd_json_constraint_accept(pd_json_constraint *c, int32_t tok) {
  grammar_state next;
  if (!step_token(c, tok, &next)) return PD_EINVAL;
  memcpy(&c->state, &next, c->state_size);
  return PD_OK;
}

int pd_json_constraint_done(const pd_json_constraint *c) {
  return c->done(&c->state);
}

size_t pd_json_constraint_forced(const pd_json_constraint *c, char *out, size_t cap) {
  grammar_state st, next;
  memcpy(&st, &c->state, c->state_size);
  size_t n = 0;
  while (n < cap && !c->done(&st) && !c->complete(&st)) {
    int only = -1;
    for (int b = 1; b < 256; b++) {
      memcpy(&next, &st, c->state_size);
      if (!c->step(&next, (uint8_t)b)) continue;
      if (only >= 0) return n; /* a choice: nothing more is forced */
      only = b;
    }
    if (only < 0) break;
    c->step(&st, (uint8_t)only);
    out[n++] = (char)only;
  }
  return n;
}
