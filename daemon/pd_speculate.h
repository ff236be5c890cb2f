/*
 * pd_speculate.h -- speculative decoding by prompt lookup: a decoding sequence drafts its next
 * tokens from its own text, and the engine verifies the draft in the same forward pass as the
 * token it had to compute anyway.
 *
 * DRAFT. First from the prefix cache: when the sequence's whole context -- prompt and output so
 * far -- is a path of the tree (its tenant's namespace), because the same conversation was
 * generated before and its answer published, the tokens that followed there are the draft
 * (pd_radix_continuation): a question many users ask over the same system prompt, a regenerated
 * answer, the same request retried. Else from its own text: when the last few tokens (an n-gram
 * of PD_SPEC_NGRAM_MAX down to PD_SPEC_NGRAM_MIN tokens) occurred earlier in its prompt or its
 * output, the tokens that followed the most recent such occurrence (pd_spec_draft). A document
 * the model quotes, code it edits, a JSON value it copies out of the prompt and a loop it fell
 * into all draft well. Under a JSON constraint, first of all from the grammar: the bytes every
 * valid continuation begins with (a property name the schema puts next, the rest of an enum
 * value or a literal; never inside a string, where any character may also be written as an
 * escape; pd_json_constraint_forced), tokenized --
 * the jump-forward of constrained decoding, verified like any draft, so the model's own choice
 * of tokens is kept. Each source keeps its own acceptance record.
 *
 * VERIFY. The engine feeds the last sampled token and the draft d_0..d_k-1 as k+1 rows of one
 * sequence; row j's logits predict the token after d_j-1. It samples row 0 exactly as a plain
 * step would (same sampler, same penalties, same JSON state), and goes on to row j+1 only while
 * the token it sampled equals d_j. The tokens are therefore the ones decoding one at a time gives
 * -- for greedy and for seeded sampling alike: the sampler draws each token from the model's own
 * distribution, and a draft only decides how many of those draws one pass can serve. The CPU
 * kernels are batch-invariant (pd_llama.h), so even the log-probabilities are the same bits.
 *
 * HOW MANY. A draft of k tokens costs k more rows in the pass; with a per-token acceptance rate a
 * it yields E(k) = 1 + a + ... + a^k tokens. The step time is modelled as fixed + per_row * rows,
 * fitted on the engine's own passes (pd_spec_cost), and pd_spec_choose gives each sequence the k
 * that maximizes the batch's tokens per second (k = 0 when no draft is worth its rows, as in most
 * free text, or in a large batch where every row already costs its full share). Each sequence
 * estimates a from its own verifications (pd_spec_seq); an estimate that has kept it from
 * drafting drifts back towards the prior, so a sequence that starts to repeat itself is tried
 * again.
 */
#ifndef PD_SPECULATE_H
#define PD_SPECULATE_H

#include <stdint.h>

#define PD_SPEC_NGRAM_MAX 4
#define PD_SPEC_NGRAM_MIN 2
#define PD_SPEC_DRAFT_MAX 16    /* --speculate's upper bound */
#define PD_SPEC_DEFAULT   8     /* --speculate's default */
#define PD_SPEC_WINDOW    32768 /* tokens searched back from the end */

/* Where a draft came from: the sequence's own prompt and output (pd_spec_draft), the prefix
 * cache -- what followed the very same context when it was generated before
 * (pd_radix_continuation) -- or the JSON grammar (what it forces next). */
enum {
  PD_SPEC_FROM_TEXT = 0,
  PD_SPEC_FROM_CACHE = 1,
  PD_SPEC_FROM_GRAMMAR = 2,
  PD_SPEC_SOURCES = 3
};

/*
 * Writes up to max_draft tokens that follow the most recent earlier occurrence of the last
 * n-gram of tokens (n_tokens of them) into draft, the longest n-gram first. A continuation that
 * runs into the end of the text repeats its period (a sequence in a loop drafts the loop).
 * Returns the number written, 0 when nothing matches.
 */
int pd_spec_draft(const int32_t *tokens, uint32_t n_tokens, int max_draft, int32_t *draft);

/* A sequence's acceptance record for one source: accepted draft tokens and rejections (a
 * verification that stopped before the end of its draft), starting from a prior worth two
 * verifications. */
typedef struct pd_spec_seq {
  double accepted, rejected;
  double prior_accepted, prior_rejected;
} pd_spec_seq;

/* The prior rates of each source: drafts from the sequence's own text are right about half the
 * time; a continuation from the cache, the same context answered before, far more often; the
 * grammar's bytes are certain, only their cut into tokens may differ from the model's. */
#define PD_SPEC_PRIOR_TEXT    0.5
#define PD_SPEC_PRIOR_CACHE   0.8
#define PD_SPEC_PRIOR_GRAMMAR 0.9

void pd_spec_seq_init(pd_spec_seq *s, double prior_rate);
/* The estimated probability that the next draft token is accepted. */
double pd_spec_seq_rate(const pd_spec_seq *s);
/* A verification of n_draft tokens kept n_accepted of them. */
void pd_spec_seq_note(pd_spec_seq *s, int n_draft, int n_accepted);
/* No draft was verified (the cost model said none would pay): the record relaxes a little towards
 * its prior, so that a sequence that stopped drafting is tried again later. */
void pd_spec_seq_skip(pd_spec_seq *s);

/* The step time model: exponentially weighted least squares of seconds over rows. */
typedef struct pd_spec_cost {
  double w, r, rr, t, rt; /* weighted sums: 1, rows, rows^2, seconds, rows * seconds */
} pd_spec_cost;

void pd_spec_cost_init(pd_spec_cost *c);
/* A forward pass of rows rows took seconds. */
void pd_spec_cost_note(pd_spec_cost *c, int rows, double seconds);
/* The model's per-row cost as a fraction of its fixed cost (clamped to [0.01, 1.5]); a default
 * until passes of different sizes have been seen. */
double pd_spec_cost_row_ratio(const pd_spec_cost *c);

/*
 * The draft length for one more sequence: the k in [0, max_k] maximizing
 * (tokens + E(k) - 1) / (time + row_ratio * k), where tokens is what the batch yields per pass so
 * far and time the pass's modelled cost in units of the fixed cost (1 + row_ratio * rows).
 * rate: the sequence's acceptance estimate. The caller adds the chosen k's rows and E(k) - 1 to
 * both before choosing for the next sequence.
 */
int pd_spec_choose(double rate, int max_k, double tokens, double time, double row_ratio);
/* E(k): the tokens a draft of k yields on average, the sampled one included. */
double pd_spec_expected(double rate, int k);

#endif /* PD_SPECULATE_H */
