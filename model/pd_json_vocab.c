/* pd_json_vocab.c -- see pd_json_vocab.h. */
#include "pd_json_vocab.h"

#include <stdlib.h>

#include "pd_err.h"
#include "pd_unicode.h"

int pd_json_plain_text(const char *bytes, size_t len) {
  const uint8_t *p = (const uint8_t *)bytes;
  for (size_t i = 0; i < len;) {
    uint32_t cp;
    int n = pd_utf8_decode(p + i, len - i, &cp);
    if (cp == 0xFFFD && n == 1) return 0; /* not whole, valid UTF-8 */
    if (cp < 0x20 || cp == '"' || cp == '\\') return 0;
    i += (size_t)n;
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
