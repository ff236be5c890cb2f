/*
 * pd_speculate.c -- prompt-lookup drafts, acceptance records and the step cost model; see
 * pd_speculate.h for the design.
 */
#include "pd_speculate.h"

int pd_spec_draft(const int32_t *t, uint32_t n, int max_draft, int32_t *draft) {
  if (max_draft <= 0 || n < PD_SPEC_NGRAM_MIN + 1) return 0;
  if (max_draft > PD_SPEC_DRAFT_MAX) max_draft = PD_SPEC_DRAFT_MAX;
  /* one pass from the end: an occurrence ending at i (i < n - 1) matches the last `len` tokens;
   * the longest wins, the most recent among equals */
  const uint32_t lo = n > PD_SPEC_WINDOW ? n - PD_SPEC_WINDOW : 0;
  const int32_t last = t[n - 1];
  uint32_t best_end = 0;
  int best_len = 0;
  for (uint32_t i = n - 1; i-- > lo;) {
    if (t[i] != last) continue;
    int len = 1;
    while (len < PD_SPEC_NGRAM_MAX && (uint32_t)len <= i && t[i - len] == t[n - 1 - len]) len++;
    if (len > best_len) {
      best_len = len, best_end = i;
      if (len == PD_SPEC_NGRAM_MAX) break;
    }
  }
  if (best_len < PD_SPEC_NGRAM_MIN) return 0;
  /* what followed is t[best_end + 1 ..]; the text repeats with period q from there on */
  const uint32_t q = n - 1 - best_end;
  for (int j = 0; j < max_draft; j++)
    draft[j] = (uint32_t)j < q ? t[best_end + 1 + (uint32_t)j] : draft[(uint32_t)j - q];
  return max_draft;
}

/* ---- acceptance ------------------------------------------------------------------------------ */

#define SEQ_MEMORY 0.9  /* each verification weighs the earlier ones by this */
#define SEQ_RELAX  0.97 /* each skipped draft moves the record this much back to the prior */

void pd_spec_seq_init(pd_spec_seq *s, double prior_rate) {
  s->accepted = s->prior_accepted = 2.0 * prior_rate;
  s->rejected = s->prior_rejected = 2.0 * (1.0 - prior_rate);
}

double pd_spec_seq_rate(const pd_spec_seq *s) {
  return s->accepted / (s->accepted + s->rejected);
}

void pd_spec_seq_note(pd_spec_seq *s, int n_draft, int n_accepted) {
  s->accepted = s->accepted * SEQ_MEMORY + n_accepted;
  s->rejected = s->rejected * SEQ_MEMORY + (n_accepted < n_draft ? 1.0 : 0.0);
  if (s->accepted + s->rejected < 1e-6) s->accepted = s->prior_accepted, s->rejected = 1.0;
}

void pd_spec_seq_skip(pd_spec_seq *s) {
  s->accepted = s->prior_accepted + (s->accepted - s->prior_accepted) * SEQ_RELAX;
  s->rejected = s->prior_rejected + (s->rejected - s->prior_rejected) * SEQ_RELAX;
}

/* ---- cost ------------------------------------------------------------------------------------ */

#define COST_MEMORY        0.98 /* each pass weighs the earlier ones by this */
#define COST_DEFAULT_RATIO 0.5
#define COST_MIN_RATIO     0.01
#define COST_MAX_RATIO     1.5 /* a row costing more than 1.5 passes' fixed part: timing noise */

void pd_spec_cost_init(pd_spec_cost *c) {
  c->w = c->r = c->rr = c->t = c->rt = 0.0;
}

void pd_spec_cost_note(pd_spec_cost *c, int rows, double seconds) {
  if (rows <= 0 || !(seconds >= 0.0)) return;
  const double r = rows;
  c->w = c->w * COST_MEMORY + 1.0;
  c->r = c->r * COST_MEMORY + r;
  c->rr = c->rr * COST_MEMORY + r * r;
  c->t = c->t * COST_MEMORY + seconds;
  c->rt = c->rt * COST_MEMORY + r * seconds;
}

double pd_spec_cost_row_ratio(const pd_spec_cost *c) {
  if (c->w < 2.0) return COST_DEFAULT_RATIO;
  const double mean_r = c->r / c->w, mean_t = c->t / c->w;
  const double var_r = c->rr / c->w - mean_r * mean_r;
  if (var_r < 0.25) return COST_DEFAULT_RATIO; /* every pass the same size: no slope to see */
  const double per_row = (c->rt / c->w - mean_r * mean_t) / var_r;
  const double fixed = mean_t - per_row * mean_r;
  if (per_row <= 0.0) return COST_MIN_RATIO;
  if (fixed <= 0.0) return COST_MAX_RATIO; /* no fixed part seen: rows cost all */
  const double ratio = per_row / fixed;
  return ratio < COST_MIN_RATIO ? COST_MIN_RATIO : ratio > COST_MAX_RATIO ? COST_MAX_RATIO : ratio;
}

/* ---- choice ---------------------------------------------------------------------------------- */

double pd_spec_expected(double rate, int k) {
  double e = 1.0, p = 1.0;
  for (int j = 0; j < k; j++) e += (p *= rate);
  return e;
}

int pd_spec_choose(double rate, int max_k, double tokens, double time, double row_ratio) {
  int best = 0;
  double best_rate = tokens / time, gained = 0.0, p = 1.0;
  for (int k = 1; k <= max_k; k++) {
    gained += (p *= rate);
    const double r = (tokens + gained) / (time + row_ratio * k);
    if (r > best_rate * (1.0 + 1e-9)) best = k, best_rate = r;
  }
  return best;
}
