/*
 * pd_json_vocab.h -- a model's vocabulary as constrained JSON decoding reads it, built once per
 * model and read-only afterwards (any number of sequences on any threads share it).
 *
 * Inside a JSON string, with no character half read and no surrogate pending, a token made only
 * of "plain" text -- whole UTF-8 characters, none of them '"', '\' or a control character -- is
 * always allowed and leaves the string as it was. Most of a vocabulary is plain, so the mask
 * there is the plain list plus a walk of the trie of the other tokens only, instead of a walk of
 * the whole vocabulary (pd_json_constraint).
 */
#ifndef PD_JSON_VOCAB_H
#define PD_JSON_VOCAB_H

#include <stdint.h>

#include "pd_token_trie.h"
#include "pd_tokenizer.h"

typedef struct pd_json_vocab {
  const pd_tokenizer *tok; /* borrowed: it must outlive the vocab */
  pd_token_trie *all;      /* every non-special token */
  pd_token_trie *unplain;  /* the non-special tokens that are not plain string text */
  int32_t *plain;          /* (n_plain) the tokens that are, ascending */
  int32_t n_plain;
} pd_json_vocab;

/* *out is owned by the caller (pd_json_vocab_free). PD_ENOMEM. */
int pd_json_vocab_build(const pd_tokenizer *tok, pd_json_vocab **out);
void pd_json_vocab_free(pd_json_vocab *v);

/* Whether bytes (len > 0) are plain string text: whole UTF-8 characters (RFC 3629: no overlong
 * form, no surrogate, nothing above U+10FFFF), none of them '"', '\' or below U+0020. */
int pd_json_plain_text(const char *bytes, size_t len);

#endif /* PD_JSON_VOCAB_H */
