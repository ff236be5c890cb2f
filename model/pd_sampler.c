/* pd_sampler.c -- see pd_sampler.h. */
#include "pd_sampler.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_err.h"

typedef struct cand {
  float logit;
  int32_t id;
} cand;

struct pd_sampler {
  pd_sampling_params p;
  int32_t n_vocab;
  int32_t *recent; /* ring of the last repeat_last_n tokens */
  int32_t n_recent, head;
  uint64_t rng[4];
  pd_logit_bias *bias; /* (p.n_logit_bias), p.logit_bias points here */
  /* with a presence or frequency penalty: how often each token was picked, and the distinct
   * picked tokens in order of their first pick */
  uint32_t *picked_count; /* (n_vocab), NULL without those penalties */
  int32_t *picked_ids;    /* (n_vocab); n_picked_ids of them used */
  int32_t n_picked_ids;
  cand *c;     /* (n_vocab) scratch */
  float *work; /* (n_vocab) scratch */
};

static uint64_t splitmix(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) {
  return (x << k) | (x >> (64 - k));
}

static uint64_t next_u64(uint64_t *s) { /* xoshiro256** */
  uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
  s[2] ^= s[0], s[3] ^= s[1], s[1] ^= s[2], s[0] ^= s[3], s[2] ^= t, s[3] = rotl(s[3], 45);
  return r;
}

#define BAD(...) return snprintf(err, errlen, __VA_ARGS__), PD_EINVAL

int pd_sampling_check(const pd_sampling_params *p, int32_t n_vocab, char *err, size_t errlen) {
  if (n_vocab <= 0) BAD("the model has no vocabulary");
  if (!(p->temperature >= 0) || isinf(p->temperature)) BAD("temperature must be >= 0");
  if (p->top_k < 0) BAD("top_k must be >= 0");
  if (!(p->top_p > 0 && p->top_p <= 1)) BAD("top_p must be in (0, 1]");
  if (!(p->min_p >= 0 && p->min_p <= 1)) BAD("min_p must be in [0, 1]");
  if (!(p->repeat_penalty > 0) || isinf(p->repeat_penalty)) BAD("repeat_penalty must be > 0");
  if (p->repeat_last_n < 0) BAD("repeat_last_n must be >= 0");
  if (!(p->presence_penalty >= -2 && p->presence_penalty <= 2))
    BAD("presence_penalty must be in [-2, 2]");
  if (!(p->frequency_penalty >= -2 && p->frequency_penalty <= 2))
    BAD("frequency_penalty must be in [-2, 2]");
  if (p->n_logit_bias < 0 || p->n_logit_bias > PD_LOGIT_BIAS_MAX)
    BAD("logit_bias has %d entries; at most %d", p->n_logit_bias, PD_LOGIT_BIAS_MAX);
  for (int32_t i = 0; i < p->n_logit_bias; i++) {
    const pd_logit_bias *b = &p->logit_bias[i];
    if (b->token < 0 || b->token >= n_vocab)
      BAD("logit_bias names token %d; the vocabulary has %d tokens", b->token, n_vocab);
    if (!(b->bias >= -100 && b->bias <= 100))
      BAD("logit_bias for token %d must be in [-100, 100]", b->token);
    for (int32_t j = 0; j < i; j++)
      if (p->logit_bias[j].token == b->token) BAD("logit_bias names token %d twice", b->token);
  }
  return PD_OK;
}

int pd_sampler_create(const pd_sampling_params *p, int32_t n_vocab, pd_sampler **out) {
  *out = NULL;
  char err[128];
  if (pd_sampling_check(p, n_vocab, err, sizeof err)) return PD_EINVAL;
  pd_sampler *s = calloc(1, sizeof *s);
  if (!s) return PD_ENOMEM;
  s->p = *p;
  s->n_vocab = n_vocab;
  s->recent = malloc((size_t)(p->repeat_last_n ? p->repeat_last_n : 1) * sizeof *s->recent);
  s->c = malloc((size_t)n_vocab * sizeof *s->c);
  s->work = malloc((size_t)n_vocab * sizeof *s->work);
  int failed = !s->recent || !s->c || !s->work;
  if (p->n_logit_bias && !failed) {
    failed = !(s->bias = malloc((size_t)p->n_logit_bias * sizeof *s->bias));
    if (!failed) memcpy(s->bias, p->logit_bias, (size_t)p->n_logit_bias * sizeof *s->bias);
  }
  s->p.logit_bias = s->bias;
  if ((p->presence_penalty != 0 || p->frequency_penalty != 0) && !failed)
    failed = !(s->picked_count = calloc((size_t)n_vocab, sizeof *s->picked_count)) ||
             !(s->picked_ids = malloc((size_t)n_vocab * sizeof *s->picked_ids));
  if (failed) {
    pd_sampler_free(s);
    return PD_ENOMEM;
  }
  uint64_t x = p->seed;
  for (int i = 0; i < 4; i++) s->rng[i] = splitmix(&x);
  *out = s;
  return PD_OK;
}

void pd_sampler_free(pd_sampler *s) {
  if (!s) return;
  free(s->recent);
  free(s->bias);
  free(s->picked_count);
  free(s->picked_ids);
  free(s->c);
  free(s->work);
  free(s);
}

int pd_sampler_is_greedy(const pd_sampler *s) {
  return s->p.temperature <= 0 && s->p.repeat_penalty == 1.0f && !s->picked_count &&
         !s->p.n_logit_bias;
}

void pd_sampler_accept(pd_sampler *s, int32_t tok) {
  if (!s->p.repeat_last_n) return;
  s->recent[s->head] = tok;
  s->head = (s->head + 1) % s->p.repeat_last_n;
  if (s->n_recent < s->p.repeat_last_n) s->n_recent++;
}

void pd_sampler_record(pd_sampler *s, int32_t tok) {
  pd_sampler_accept(s, tok);
  if (s->picked_count && tok >= 0 && tok < s->n_vocab && !s->picked_count[tok]++)
    s->picked_ids[s->n_picked_ids++] = tok;
}

/* Descending weight (or scaled logit), then ascending id: a total order, so every selection
 * below is deterministic. */
static int before(const cand *x, const cand *y) {
  return x->logit > y->logit || (x->logit == y->logit && x->id < y->id);
}

static int cmp_cand(const void *a, const void *b) {
  return before(a, b) ? -1 : before(b, a) ? 1 : 0;
}

static void swap_cand(cand *a, cand *b) {
  cand t = *a;
  *a = *b, *b = t;
}

/* Reorders c[0..n) so that its k first elements are the k first in `before` order, sorted
 * (0 < k <= n): a quickselect (median-of-three pivots), then a sort of the k. */
static void select_top(cand *c, int32_t n, int32_t k) {
  int32_t lo = 0, hi = n - 1;
  while (hi > lo) {
    int32_t mid = lo + (hi - lo) / 2;
    if (before(&c[hi], &c[lo])) swap_cand(&c[hi], &c[lo]);
    if (before(&c[mid], &c[lo])) swap_cand(&c[mid], &c[lo]);
    if (before(&c[hi], &c[mid])) swap_cand(&c[hi], &c[mid]);
    const cand pivot = c[mid];
    int32_t i = lo, j = hi;
    while (i <= j) { /* Hoare: [lo, j] before-or-equal the pivot, [i, hi] after-or-equal */
      while (before(&c[i], &pivot)) i++;
      while (before(&pivot, &c[j])) j--;
      if (i <= j) swap_cand(&c[i], &c[j]), i++, j--;
    }
    if (k - 1 <= j)
      hi = j;
    else if (k - 1 >= i)
      lo = i;
    else
      break;
  }
  qsort(c, (size_t)k, sizeof *c, cmp_cand);
}

/* The logits after the bias and the penalties, into s->work. */
static float *adjusted(pd_sampler *s, const float *logits) {
  float *l = s->work;
  memcpy(l, logits, (size_t)s->n_vocab * sizeof *l);
  for (int32_t i = 0; i < s->p.n_logit_bias; i++) l[s->bias[i].token] += s->bias[i].bias;
  if (s->p.repeat_penalty != 1.0f)
    for (int32_t i = 0; i < s->n_recent; i++) {
      int32_t t = s->recent[i];
      if (t < 0 || t >= s->n_vocab) continue;
      /* each distinct token once: skip if it appeared earlier in the ring */
      int seen = 0;
      for (int32_t j = 0; j < i; j++) seen |= s->recent[j] == t;
      if (!seen) l[t] = l[t] > 0 ? l[t] / s->p.repeat_penalty : l[t] * s->p.repeat_penalty;
    }
  for (int32_t i = 0; i < s->n_picked_ids; i++) {
    int32_t t = s->picked_ids[i];
    l[t] -= s->p.presence_penalty + s->p.frequency_penalty * (float)s->picked_count[t];
  }
  return l;
}

static int32_t argmax(const float *l, int32_t n) {
  int32_t pick = 0;
  for (int32_t i = 1; i < n; i++)
    if (l[i] > l[pick]) pick = i;
  return pick;
}

/* A pick from the adjusted logits l (s->work): argmax, or a draw after the filters. */
static int32_t pick_from(pd_sampler *s, float *l) {
  int32_t pick = 0;
  if (s->p.temperature <= 0) {
    pick = argmax(l, s->n_vocab);
  } else {
    /* Only tokens within 25 nats of the best can be drawn (the rest hold less than 1e-6 of the
     * mass together, even over a 300k vocabulary). They are sorted only as far as a filter
     * needs: top_k sorts its k, top_p the most likely tokens until their mass reaches top_p,
     * min_p and plain temperature sampling not at all (the draw walks them in id order). A
     * small model's flat distribution leaves thousands of candidates: sorting them all was
     * the serving loop's largest cost after the forward pass. */
    float inv_t = 1.0f / s->p.temperature, best = -INFINITY;
    for (int32_t i = 0; i < s->n_vocab; i++)
      if (l[i] * inv_t > best) best = l[i] * inv_t;
    int32_t n = 0;
    for (int32_t i = 0; i < s->n_vocab; i++)
      if (l[i] * inv_t >= best - 25.0f) s->c[n++] = (cand){l[i] * inv_t, i};
    int32_t n_sorted = 0; /* c[0, n_sorted) are the most likely, in order */
    if (s->p.top_k > 0 && s->p.top_k < n) {
      select_top(s->c, n, s->p.top_k);
      n = n_sorted = s->p.top_k;
    }
    /* weights relative to the best token (exp(0) = 1): the order is unchanged */
    float sum = 0;
    for (int32_t i = 0; i < n; i++) sum += (s->c[i].logit = expf(s->c[i].logit - best));
    if (s->p.top_p < 1.0f) { /* the smallest set of most likely tokens holding top_p */
      const float need = s->p.top_p * sum;
      float cum = 0;
      int32_t i = 0;
      while (i < n) {
        if (i == n_sorted) { /* sort further: 64 more, then twice as many each time */
          int32_t more = n_sorted < 64 ? 64 : n_sorted;
          if (more > n - n_sorted) more = n - n_sorted;
          select_top(s->c + n_sorted, n - n_sorted, more);
          n_sorted += more;
        }
        cum += s->c[i++].logit;
        if (cum >= need) break;
      }
      n = i;
    }
    if (s->p.min_p > 0) { /* tokens at least min_p times as likely as the best (weight 1) */
      int32_t k = 0;
      for (int32_t i = 0; i < n; i++)
        if (s->c[i].logit >= s->p.min_p) s->c[k++] = s->c[i];
      n = k;
    }
    float total = 0;
    for (int32_t i = 0; i < n; i++) total += s->c[i].logit;
    double r = (double)(next_u64(s->rng) >> 11) * (1.0 / 9007199254740992.0) * total;
    pick = s->c[n - 1].id;
    double acc = 0;
    for (int32_t i = 0; i < n; i++) {
      acc += s->c[i].logit;
      if (r < acc) {
        pick = s->c[i].id;
        break;
      }
    }
  }
  return pick;
}

int32_t pd_sampler_sample(pd_sampler *s, const float *logits) {
  int32_t pick = pick_from(s, adjusted(s, logits));
  pd_sampler_record(s, pick);
  return pick;
}

int32_t pd_sampler_sample_constrained(pd_sampler *s, const float *logits,
                                      const pd_token_constraint *c) {
  if (!c) return pd_sampler_sample(s, logits);
  float *l = adjusted(s, logits);
  int32_t pick;
  /* Without top-k, top-p or min-p, a pick from the whole distribution that the constraint allows
   * may be kept: argmax, or a draw that is kept when allowed and otherwise redrawn from the
   * restricted distribution, which gives each allowed token p(a) + (1 - p(A)) p(a) / p(A) =
   * p(a) / p(A), exactly the restricted distribution. The mask (a walk of the vocabulary) is then
   * only computed when the first pick is refused. The filters depend on the whole distribution,
   * so with them the mask comes first. */
  int unfiltered = s->p.temperature <= 0 || (s->p.top_k == 0 && s->p.top_p >= 1 && s->p.min_p <= 0);
  if (unfiltered && c->allows(c->ctx, pick = pick_from(s, l))) {
    pd_sampler_record(s, pick);
    return pick;
  }
  if (c->mask(c->ctx, l) == 0) return -1;
  pick = pick_from(s, l);
  pd_sampler_record(s, pick);
  return pick;
}

int pd_logprobs(const float *logits, int32_t n_vocab, int32_t tok, int n_top, float *chosen_logprob,
                int32_t *top_ids, float *top_logprobs) {
  float best = logits[0];
  for (int32_t i = 1; i < n_vocab; i++) best = logits[i] > best ? logits[i] : best;
  double sum = 0;
  int have = 0; /* top_ids[0..have) sorted by logit, best first */
  for (int32_t i = 0; i < n_vocab; i++) {
    float x = logits[i];
    sum += exp((double)(x - best));
    if (have == n_top && (n_top == 0 || x <= top_logprobs[n_top - 1])) continue;
    int at = have < n_top ? have++ : n_top - 1;        /* the last place, or a new one */
    for (; at > 0 && top_logprobs[at - 1] < x; at--) { /* ties keep the lower id first */
      top_logprobs[at] = top_logprobs[at - 1];
      top_ids[at] = top_ids[at - 1];
    }
    top_logprobs[at] = x;
    top_ids[at] = i;
  }
  double lse = (double)best + log(sum);
  *chosen_logprob = (float)((double)logits[tok] - lse);
  for (int k = 0; k < have; k++) top_logprobs[k] = (float)((double)top_logprobs[k] - lse);
  return have;
}
