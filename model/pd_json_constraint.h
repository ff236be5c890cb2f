/*
 * pd_json_constraint.h -- one generation's JSON constraint: the grammar's state after the tokens
 * generated so far, and the sampler's rule (pd_token_constraint) built on it.
 *
 * A token may come next when all of its bytes keep the output a prefix of a valid JSON object
 * (pd_json_grammar), or of a JSON text valid for a schema (pd_json_schema); an
 * end-of-generation token only once the output is whole.
 * Special tokens are never text, so never allowed otherwise. The mask walks the model's token
 * trie (pd_json_vocab: shared, read-only), so sequences on several threads each mask with their
 * own scratch; inside a string it takes the plain tokens as they are and walks the others only.
 */
#ifndef PD_JSON_CONSTRAINT_H
#define PD_JSON_CONSTRAINT_H

#include <stdint.h>

#include "pd_json_grammar.h"
#include "pd_json_schema.h"
#include "pd_json_vocab.h"
#include "pd_sampler.h"

typedef struct pd_json_constraint pd_json_constraint;

/* A constraint at the start of the output: any JSON object (schema NULL), or a text valid for
 * schema. vocab and schema are borrowed: they must outlive it. *out is owned by the caller
 * (pd_json_constraint_free). */
int pd_json_constraint_create(const pd_json_vocab *vocab, const pd_json_schema *schema,
                              pd_json_constraint **out);
void pd_json_constraint_free(pd_json_constraint *c);

/* The sampler's view of c (valid while c lives). */
pd_token_constraint pd_json_constraint_rule(pd_json_constraint *c);

/* The token picked: the state moves past its bytes. PD_EINVAL (state unchanged) when the token
 * was not allowed. */
int pd_json_constraint_accept(pd_json_constraint *c, int32_t tok);

/* The top-level value is closed: the generation is over. */
int pd_json_constraint_done(const pd_json_constraint *c);

/* The bytes every valid continuation of the output begins with: written into out while exactly
 * one byte may come next (at most cap of them; none once the text is done or may end, as a
 * number or an enum value may). Returns their count. What a grammar forces costs the model no
 * choice: these bytes are speculative decoding's surest draft. */
size_t pd_json_constraint_forced(const pd_json_constraint *c, char *out, size_t cap);

#endif /* PD_JSON_CONSTRAINT_H */
