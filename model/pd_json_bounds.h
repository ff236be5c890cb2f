/*
 * pd_json_bounds.h -- a JSON number read byte by byte within bounds (JSON Schema's "minimum",
 * "maximum", "exclusiveMinimum", "exclusiveMaximum"), for constrained decoding.
 *
 * The recognizer never takes a byte after which no number within the bounds could be written,
 * and says when what was read is a whole number within them. Values are exact decimals, compared
 * exactly: a number is written without an exponent, with at most PD_NUM_MAX_WHOLE digits before
 * the point and PD_NUM_MAX_FRAC after it, so every value lies on a grid of 10^-15 and is held as
 * a 128-bit count of 10^-15 units. Fifteen fraction digits also keep every value a double
 * parses to on the same side of a bound (a validator that compares doubles agrees).
 *
 * Bounds are given as decimal text (the schema's own numbers, printed shortest) and rounded
 * inward onto the grid at set-up: a lower bound up, an upper one down, an exclusive bound one
 * step further when it lies on the grid (the step is 1 for an integer, 10^-15 otherwise).
 */
#ifndef PD_JSON_BOUNDS_H
#define PD_JSON_BOUNDS_H

#include <stddef.h>
#include <stdint.h>

#define PD_NUM_MAX_WHOLE 18 /* digits before the decimal point */
#define PD_NUM_MAX_FRAC  15 /* digits after it */

__extension__ typedef __int128 pd_num_units; /* a value in units of 10^-15 */

typedef struct pd_num_bounds {
  pd_num_units lo, hi; /* inclusive, on the grid */
  uint8_t integer;     /* no fraction: the grid is whole numbers */
} pd_num_bounds;

typedef struct pd_num_state {
  int64_t whole;  /* the digits before the point, as a number */
  int64_t frac;   /* the digits after it, as a number */
  uint8_t phase;  /* what was read last (pd_json_bounds.c's enum) */
  uint8_t neg;    /* a '-' came first */
  uint8_t digits; /* digits in the current part */
} pd_num_state;

/* Sets b from decimal texts (as JSON writes numbers: "-12", "0.5", "1e-3"; NULL: no bound) and
 * whether each is exclusive; integer: only whole numbers. PD_EINVAL with the reason in err for
 * a text that is not a number, or bounds no number of at most PD_NUM_MAX_WHOLE digits satisfies
 * (naming them). */
int pd_num_bounds_set(pd_num_bounds *b, const char *lower, int lower_exclusive, const char *upper,
                      int upper_exclusive, int integer, char *err, size_t errlen);

/* Nothing read yet. */
void pd_num_init(pd_num_state *s);

/* One byte: 1 if the text stays the beginning of a number within b (s advanced), 0 if not (s
 * unchanged). */
int pd_num_step(const pd_num_bounds *b, pd_num_state *s, uint8_t byte);

/* What was read is a whole number within b. */
int pd_num_complete(const pd_num_bounds *b, const pd_num_state *s);

#endif /* PD_JSON_BOUNDS_H */
