/*
 * pd_token_trie.h -- the vocabulary as a trie of its tokens' bytes, to find every token a
 * byte-level constraint (pd_json_grammar) allows next in one walk.
 *
 * A walk steps a copy of the constraint's state down the trie; a byte the constraint refuses
 * prunes everything below it, so the cost is the number of trie nodes whose bytes are still
 * acceptable, not the vocabulary's size times the token length: in a JSON structural position
 * nearly the whole vocabulary is pruned at its first byte. Tokens that share their first bytes
 * share those steps.
 *
 * Special tokens (control and user-defined: <|im_end|>, ...) are not in the trie: they are not
 * text a constraint could read. Tokens with identical bytes are all reported.
 *
 * Built once per model (about 16 bytes per node, a node per distinct token prefix) and read-only
 * afterwards, so any number of threads may walk it at once.
 */
#ifndef PD_TOKEN_TRIE_H
#define PD_TOKEN_TRIE_H

#include <stddef.h>
#include <stdint.h>

#include "pd_tokenizer.h"

typedef struct pd_token_trie pd_token_trie;

/* The trie of t's non-special tokens. *out is owned by the caller (pd_token_trie_free). */
int pd_token_trie_build(const pd_tokenizer *t, pd_token_trie **out);
/* The same, of those non-special tokens keep(user, id, bytes, len) is 1 for. */
int pd_token_trie_build_subset(const pd_tokenizer *t,
                               int (*keep)(void *user, int32_t id, const char *bytes, size_t len),
                               void *user, pd_token_trie **out);
void pd_token_trie_free(pd_token_trie *trie);

/* The longest token, in bytes: a walk needs (max_len + 1) states of scratch. */
size_t pd_token_trie_max_len(const pd_token_trie *trie);

/* One byte into a constraint's state (state_size bytes): 1 = accepted (state advanced), 0 =
 * refused. */
typedef int (*pd_byte_step)(void *state, uint8_t byte);

/* Calls on_token(user, tok) for every token all of whose bytes step accepts, one after another,
 * from state (not modified). scratch holds (pd_token_trie_max_len + 1) * state_size bytes.
 * Returns the number of tokens reported. */
int32_t pd_token_trie_walk(const pd_token_trie *trie, const void *state, size_t state_size,
                           pd_byte_step step, void *scratch,
                           void (*on_token)(void *user, int32_t tok), void *user);

#endif /* PD_TOKEN_TRIE_H */
