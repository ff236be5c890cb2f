/* pd_json_vocab.c -- see pd_json_vocab.h. */
#include "pd_json_vocab.h"

#include <stdlib.h>

#include "pd_err.h"

int pd_json_plain_text(const char *bytes, size_t len) {
  const uint8_t *p = (const uint8_t *)bytes;
  size_t i = 0;
  while (i < len) {
    uint8_t b = p[i];
    if (b < 0x80) {
      if (b < 0x20 || b == '"' || b == '\\') return 0;
      i++;
      continue;
    }
    int need;
    uint8_t lo = 0x80, hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) {
      need = 1;
    } else if (b >= 0xE0 && b <= 0xEF) {
      need = 2;
      if (b == 0xE0) lo = 0xA0;
      if (b == 0xED) hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
      need = 3;
      if (b == 0xF0) lo = 0x90;
      if (b == 0xF4) hi = 0x8F;
    } else {
      return 0;
    }
    if (len - i - 1 < (size_t)need) return 0; /* the character does not end in the token */
    for (int k = 1; k <= need; k++) {
      if (p[i + k] < lo || p[i + k] > hi) return 0;
      lo = 0x80, hi = 0xBF;
    }
    i += (size_t)need + 1;
  }
  return 1;
}

static int keep_unplain(void *user, int32_t id, const char *bytes, size_t len) {
  (void)user, (void)id;
  return !pd_json_plain_text(bytes, len);
}

void pd_json_vocab_free(pd_json_vocab *v) {
  if (!v) return;
  pd_token_trie_free(v->all);
  pd_token_trie_free(v->unplain);
  free(v->plain);
  free(v);
}

int pd_json_vocab_build(const pd_tokenizer *tok, pd_json_vocab **out) {
  *out = NULL;
  int32_t n_vocab = pd_tokenizer_n_vocab(tok);
  pd_json_vocab *v = calloc(1, sizeof *v);
  if (!v || !(v->plain = malloc((size_t)(n_vocab > 0 ? n_vocab : 1) * sizeof *v->plain)) ||
      pd_token_trie_build(tok, &v->all) ||
      pd_token_trie_build_subset(tok, keep_unplain, NULL, &v->unplain)) {
    pd_json_vocab_free(v);
    return PD_ENOMEM;
  }
  v->tok = tok;
  for (int32_t id = 0; id < n_vocab; id++) {
    const char *bytes;
    size_t len;
    if (!pd_tokenizer_is_special(tok, id) && !pd_token_piece(tok, id, &bytes, &len) && len &&
        pd_json_plain_text(bytes, len))
      v->plain[v->n_plain++] = id;
  }
  *out = v;
  return PD_OK;
}
