/* pd_token_trie.c -- see pd_token_trie.h. Nodes are parallel arrays (first child, next sibling,
 * parent, byte, token); the walk is iterative, climbing through parents, so it needs no stack
 * beyond one state per level. */
#include "pd_token_trie.h"

#include <stdlib.h>
#include <string.h>

#include "pd_err.h"

struct pd_token_trie {
  int32_t n_nodes, cap;
  int32_t *first_child;  /* (cap) -1 = none */
  int32_t *next_sibling; /* (cap) -1 = none */
  int32_t *parent;       /* (cap) the root (node 0) has -1 */
  int32_t *token;        /* (cap) the first token whose bytes end here, -1 = none */
  uint8_t *byte;         /* (cap) the byte that leads from the parent here */
  int32_t *same_next;    /* (n_vocab) the next token with the same bytes, -1 = none */
  int32_t root_child[256];
  size_t max_len;
};

void pd_token_trie_free(pd_token_trie *trie) {
  if (!trie) return;
  free(trie->first_child);
  free(trie->next_sibling);
  free(trie->parent);
  free(trie->token);
  free(trie->byte);
  free(trie->same_next);
  free(trie);
}

static int grow(pd_token_trie *t) {
  int32_t cap = t->cap ? t->cap * 2 : 65536;
  int32_t **arrays[] = {&t->first_child, &t->next_sibling, &t->parent, &t->token};
  for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++) {
    int32_t *p = realloc(*arrays[i], (size_t)cap * sizeof *p);
    if (!p) return PD_ENOMEM;
    *arrays[i] = p;
  }
  uint8_t *b = realloc(t->byte, (size_t)cap);
  if (!b) return PD_ENOMEM;
  t->byte = b;
  t->cap = cap;
  return PD_OK;
}

/* The child of node under byte b, created if missing; -1 without memory. */
static int32_t child(pd_token_trie *t, int32_t node, uint8_t b) {
  int32_t c = node == 0 ? t->root_child[b] : t->first_child[node];
  if (node != 0)
    while (c >= 0 && t->byte[c] != b) c = t->next_sibling[c];
  if (c >= 0) return c;
  if (t->n_nodes == t->cap && grow(t)) return -1;
  c = t->n_nodes++;
  t->first_child[c] = -1, t->parent[c] = node, t->token[c] = -1, t->byte[c] = b;
  t->next_sibling[c] = t->first_child[node];
  t->first_child[node] = c;
  if (node == 0) t->root_child[b] = c;
  return c;
}

int pd_token_trie_build(const pd_tokenizer *tok, pd_token_trie **out) {
  return pd_token_trie_build_subset(tok, NULL, NULL, out);
}

int pd_token_trie_build_subset(const pd_tokenizer *tok,
                               int (*keep)(void *user, int32_t id, const char *bytes, size_t len),
                               void *user, pd_token_trie **out) {
  *out = NULL;
  int32_t n_vocab = pd_tokenizer_n_vocab(tok);
  pd_token_trie *t = calloc(1, sizeof *t);
  if (!t || grow(t) ||
      !(t->same_next = malloc((size_t)(n_vocab > 0 ? n_vocab : 1) * sizeof(int32_t)))) {
    pd_token_trie_free(t);
    return PD_ENOMEM;
  }
  memset(t->root_child, 0xff, sizeof t->root_child);
  t->n_nodes = 1;
  t->first_child[0] = -1, t->next_sibling[0] = -1, t->parent[0] = -1, t->token[0] = -1;
  t->byte[0] = 0;
  /* in reverse, so that each node's first token and its chain come out in ascending order */
  for (int32_t id = n_vocab - 1; id >= 0; id--) {
    t->same_next[id] = -1;
    const char *bytes;
    size_t len;
    if (pd_tokenizer_is_special(tok, id) || pd_token_piece(tok, id, &bytes, &len) || !len ||
        (keep && !keep(user, id, bytes, len)))
      continue;
    int32_t node = 0;
    for (size_t i = 0; i < len && node >= 0; i++) node = child(t, node, (uint8_t)bytes[i]);
    if (node < 0) {
      pd_token_trie_free(t);
      return PD_ENOMEM;
    }
    t->same_next[id] = t->token[node];
    t->token[node] = id;
    if (len > t->max_len) t->max_len = len;
  }
  *out = t;
  return PD_OK;
}

size_t pd_token_trie_max_len(const pd_token_trie *trie) {
  return trie->max_len;
}

int32_t pd_token_trie_walk(const pd_token_trie *t, const void *state, size_t state_size,
                           pd_byte_step step, void *scratch,
                           void (*on_token)(void *user, int32_t tok), void *user) {
  uint8_t *states = scratch; /* level d's state at states + d * state_size */
  memcpy(states, state, state_size);
  int32_t reported = 0, n = t->first_child[0];
  size_t depth = 1;
  while (n >= 0) {
    uint8_t *here = states + depth * state_size;
    memcpy(here, here - state_size, state_size);
    if (step(here, t->byte[n])) {
      for (int32_t id = t->token[n]; id >= 0; id = t->same_next[id]) on_token(user, id), reported++;
      if (t->first_child[n] >= 0) { /* down */
        n = t->first_child[n];
        depth++;
        continue;
      }
    }
    /* across, climbing while a level has no more siblings */
    while (n > 0 && t->next_sibling[n] < 0) n = t->parent[n], depth--;
    n = n > 0 ? t->next_sibling[n] : -1;
  }
  return reported;
}
