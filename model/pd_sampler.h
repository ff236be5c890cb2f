/*
 * pd_sampler.h -- choosing the next token from logits.
 *
 * Order of operations: logit bias (added to the named tokens' logits), repetition penalty (over
 * the last repeat_last_n accepted tokens, prompt included: a positive logit is divided by the
 * penalty, a negative one multiplied), presence and frequency penalties (OpenAI's: over the tokens
 * this sampler picked, logit -= presence_penalty if picked at all + frequency_penalty x times
 * picked), then temperature 0 means
 * greedy (argmax, lowest id on ties); otherwise temperature, top-k, softmax, top-p (smallest set
 * with cumulative probability >= top_p), min-p (drop tokens below min_p times the best
 * probability), and a draw from a seeded xoshiro256** generator, so a seed reproduces a run.
 * Tokens more than 25 nats below the best (after temperature) are never drawn: together they hold
 * under 1e-6 of the probability, and leaving them out spares sorting the whole vocabulary.
 */
#ifndef PD_SAMPLER_H
#define PD_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

/* A bias added to one token's logit before sampling, greedy included: -100 bans the token in
 * practice, +100 all but forces it. */
typedef struct pd_logit_bias {
  int32_t token;
  float bias;
} pd_logit_bias;

#define PD_LOGIT_BIAS_MAX 1024 /* entries one sampler takes */

typedef struct pd_sampling_params {
  float temperature;    /* 0 = greedy */
  int32_t top_k;        /* 0 = off */
  float top_p;          /* 1 = off */
  float min_p;          /* 0 = off */
  float repeat_penalty; /* 1 = off */
  int32_t repeat_last_n;
  uint64_t seed;
  float presence_penalty;          /* 0 = off; -2 to 2 */
  float frequency_penalty;         /* 0 = off; -2 to 2 */
  const pd_logit_bias *logit_bias; /* (n_logit_bias): copied by pd_sampler_create */
  int32_t n_logit_bias;            /* 0 to PD_LOGIT_BIAS_MAX, each token at most once */
} pd_sampling_params;

typedef struct pd_sampler pd_sampler;

/* PD_EINVAL for out-of-range parameters (negative temperature, top_p outside (0, 1], a penalty
 * outside [-2, 2], a bias outside [-100, 100] or on a token outside [0, n_vocab) or twice, ...).
 * pd_sampling_check names the first such parameter in err. */
int pd_sampling_check(const pd_sampling_params *p, int32_t n_vocab, char *err, size_t errlen);
int pd_sampler_create(const pd_sampling_params *p, int32_t n_vocab, pd_sampler **out);
void pd_sampler_free(pd_sampler *s);
/* Records a token seen (prompt or generated) for the repetition penalty; the presence and
 * frequency penalties count only what pd_sampler_sample picked, and pd_sampler_record. */
void pd_sampler_accept(pd_sampler *s, int32_t tok);
/* Records a generated token picked elsewhere (a device argmax): pd_sampler_accept, and counted
 * for the presence and frequency penalties. */
void pd_sampler_record(pd_sampler *s, int32_t tok);
/* 1 when the pick is the argmax of the raw logits, lowest id on ties (temperature 0, no
 * penalty, no bias): what a device-side argmax computes. */
int pd_sampler_is_greedy(const pd_sampler *s);
/* Picks a token from logits (n_vocab, not modified) and records it. */
int32_t pd_sampler_sample(pd_sampler *s, const float *logits);

/* A rule on which tokens may come next (a grammar: pd_json_constraint). */
typedef struct pd_token_constraint {
  int (*allows)(void *ctx, int32_t tok); /* may tok come next? */
  /* sets the logit of every token that may not come next to -INFINITY (logits: n_vocab);
   * returns how many may */
  int32_t (*mask)(void *ctx, float *logits);
  void *ctx;
} pd_token_constraint;

/* pd_sampler_sample under a constraint, applied after the bias and penalties and before every
 * filter, so the pick is drawn from the distribution restricted to the allowed tokens. Without
 * top-k, top-p or min-p (greedy, or plain temperature) the first pick is checked with allows()
 * and the mask is computed only when it is refused (exact: see the .c). Returns -1 (nothing
 * recorded) when the constraint allows no token. */
int32_t pd_sampler_sample_constrained(pd_sampler *s, const float *logits,
                                      const pd_token_constraint *c);

/* The most alternatives pd_logprobs reports. */
#define PD_TOP_LOGPROBS_MAX 20

/* A token's log-probability under the model's distribution: the log-softmax of the raw logits
 * (n_vocab), independent of the sampling parameters. *chosen_logprob gets tok's; the n_top
 * (<= PD_TOP_LOGPROBS_MAX) most probable tokens go to top_ids and top_logprobs (n_top each,
 * best first, the lower id first on ties; fewer when n_vocab < n_top: the count is returned).
 * Sums in double; one pass over the logits for the maximum, one for the sum and the top. */
int pd_logprobs(const float *logits, int32_t n_vocab, int32_t tok, int n_top, float *chosen_logprob,
                int32_t *top_ids, float *top_logprobs);

#endif /* PD_SAMPLER_H */
