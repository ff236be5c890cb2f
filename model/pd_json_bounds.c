/*
 * pd_json_bounds.c -- see pd_json_bounds.h.
 *
 * A prefix of a number reaches a set of values that is a few intervals of the grid: after the
 * whole digits I (n of them), I itself, I.xxx up to I+1 and, with j more digits, I*10^j up to
 * (I+1)*10^j; after the point and k fraction digits, the 10^-k wide interval they begin. A byte
 * is taken when one of the intervals of the prefix it makes meets [lo, hi], so a generation that
 * takes only such bytes can always finish within the bounds.
 */
#include "pd_json_bounds.h"

#include <stdio.h>
#include <string.h>

#include "pd_err.h"

enum phase {
  P_SIGN,  /* nothing, or only '-' */
  P_ZERO,  /* a leading 0: only '.' or the end may follow */
  P_WHOLE, /* whole digits, the first not 0 */
  P_POINT, /* the point, no fraction digit yet */
  P_FRAC   /* fraction digits */
};

#define UNIT ((pd_num_units)1000000000000000) /* 10^15: one in units */
#define HUGE_UNITS                                                                                 \
  ((pd_num_units)1000000000000000000 * (pd_num_units)1000000000000000000) /* 10^36: beyond any \
                                                                             value */

static pd_num_units pow10_units(int e) {
  pd_num_units p = 1;
  while (e-- > 0) p *= 10;
  return p;
}

static pd_num_units max_magnitude(int integer) {
  pd_num_units whole_max = pow10_units(PD_NUM_MAX_WHOLE) - 1;
  return integer ? whole_max * UNIT : whole_max * UNIT + UNIT - 1;
}

static pd_num_units floor_div(pd_num_units a, pd_num_units b) {
  pd_num_units q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

/* A JSON number's text as floor(value in units) and whether that is exact. -1 if not a number. */
static int parse_units(const char *t, pd_num_units *floor_out, int *exact_out) {
  int neg = *t == '-';
  if (neg) t++;
  if (*t < '0' || *t > '9' || (t[0] == '0' && t[1] >= '0' && t[1] <= '9')) return -1;
  pd_num_units digits = 0; /* the first 36 significant digits */
  int kept = 0, exp10 = 0, rest_nonzero = 0, any = 0;
  for (int frac = 0;; t++) {
    if (*t == '.' && !frac) {
      frac = 1;
      if (t[1] < '0' || t[1] > '9') return -1;
      continue;
    }
    if (*t < '0' || *t > '9') break;
    any = 1;
    if (kept < 36 && (digits || *t != '0')) {
      digits = digits * 10 + (*t - '0');
      kept++;
      exp10 -= frac;
    } else if (digits || *t != '0') {
      rest_nonzero |= *t != '0';
      exp10 += !frac; /* a whole digit beyond the kept ones scales them */
    } else {
      exp10 -= frac; /* a leading zero after the point */
    }
  }
  if (!any) return -1;
  if (*t == 'e' || *t == 'E') {
    t++;
    int eneg = *t == '-';
    if (*t == '+' || *t == '-') t++;
    if (*t < '0' || *t > '9') return -1;
    long e = 0;
    while (*t >= '0' && *t <= '9') e = e < 100000 ? e * 10 + (*t++ - '0') : (t++, e);
    exp10 += (int)(eneg ? -e : e);
  }
  if (*t) return -1;
  /* value = digits * 10^exp10 (+ a little when rest_nonzero); in units: * 10^15 */
  int p = exp10 + 15;
  pd_num_units mag;
  int exact = !rest_nonzero;
  if (!digits) {
    mag = 0;
  } else if (p >= 0) {
    mag = HUGE_UNITS;
    if (p <= 36 && digits <= HUGE_UNITS / pow10_units(p)) mag = digits * pow10_units(p);
  } else if (-p > 36) {
    mag = 0, exact = 0;
  } else {
    pd_num_units d = pow10_units(-p);
    mag = digits / d;
    exact &= digits % d == 0;
  }
  *floor_out = neg ? -(mag + !exact) : mag;
  *exact_out = exact;
  return 0;
}

/* The bound rounded inward onto the grid of step units. */
static pd_num_units round_inward(pd_num_units floor_units, int exact, pd_num_units step, int upper,
                                 int exclusive) {
  pd_num_units below = floor_div(floor_units, step) * step; /* the grid point at or below */
  if (exact && below == floor_units)                        /* on the grid */
    return exclusive ? (upper ? below - step : below + step) : below;
  return upper ? below : below + step;
}

int pd_num_bounds_set(pd_num_bounds *b, const char *lower, int lower_exclusive, const char *upper,
                      int upper_exclusive, int integer, char *err, size_t errlen) {
  pd_num_units step = integer ? UNIT : 1, limit = max_magnitude(integer);
  b->integer = (uint8_t)(integer != 0);
  b->lo = -limit;
  b->hi = limit;
  const char *texts[2] = {lower, upper};
  for (int i = 0; i < 2; i++) {
    if (!texts[i]) continue;
    pd_num_units f;
    int exact;
    if (parse_units(texts[i], &f, &exact))
      return pd_errf(err, errlen, PD_EINVAL, "'%.40s' is not a number", texts[i]);
    pd_num_units r = round_inward(f, exact, step, i, i ? upper_exclusive : lower_exclusive);
    if (i == 0 && r > b->lo) b->lo = r;
    if (i == 1 && r < b->hi) b->hi = r;
  }
  if (b->lo > b->hi)
    return pd_errf(err, errlen, PD_EINVAL, "no %s of at most %d digits lies in %s%s, %s%s",
                   integer ? "integer" : "number", PD_NUM_MAX_WHOLE,
                   lower && !lower_exclusive ? "[" : "(", lower ? lower : "-inf",
                   upper ? upper : "inf", upper && !upper_exclusive ? "]" : ")");
  return PD_OK;
}

void pd_num_init(pd_num_state *s) {
  memset(s, 0, sizeof *s);
}

/* Whether some value of magnitude in [a, b] (signed by neg) is within the bounds. */
static int meets(const pd_num_bounds *b, int neg, pd_num_units lo_mag, pd_num_units hi_mag) {
  pd_num_units lo = neg ? -hi_mag : lo_mag, hi = neg ? -lo_mag : hi_mag;
  return lo <= b->hi && hi >= b->lo;
}

/* Some number that begins as s does is within the bounds. */
static int reachable(const pd_num_bounds *b, const pd_num_state *s) {
  pd_num_units whole = (pd_num_units)s->whole * UNIT, last = b->integer ? UNIT : 1;
  switch (s->phase) {
  case P_SIGN: return meets(b, s->neg, 0, max_magnitude(b->integer));
  case P_ZERO: return meets(b, s->neg, 0, b->integer ? 0 : UNIT - 1);
  case P_WHOLE:
    for (int j = 0; j + s->digits <= PD_NUM_MAX_WHOLE; j++) { /* j more whole digits */
      pd_num_units scale = pow10_units(j);
      if (meets(b, s->neg, whole * scale, (whole + UNIT) * scale - last)) return 1;
    }
    return 0;
  case P_POINT: return meets(b, s->neg, whole, whole + UNIT - 1);
  default: {
    pd_num_units width = pow10_units(PD_NUM_MAX_FRAC - s->digits);
    pd_num_units at = whole + (pd_num_units)s->frac * width;
    return meets(b, s->neg, at, at + width - 1);
  }
  }
}

int pd_num_complete(const pd_num_bounds *b, const pd_num_state *s) {
  if (s->phase == P_SIGN || s->phase == P_POINT) return 0;
  pd_num_units v = (pd_num_units)s->whole * UNIT;
  if (s->phase == P_FRAC) v += (pd_num_units)s->frac * pow10_units(PD_NUM_MAX_FRAC - s->digits);
  if (s->neg) v = -v;
  return v >= b->lo && v <= b->hi;
}

int pd_num_step(const pd_num_bounds *b, pd_num_state *s, uint8_t byte) {
  pd_num_state next = *s;
  if (byte >= '0' && byte <= '9') {
    int d = byte - '0';
    switch (next.phase) {
    case P_SIGN: next.phase = d ? P_WHOLE : P_ZERO, next.whole = d, next.digits = 1; break;
    case P_WHOLE:
      if (next.digits == PD_NUM_MAX_WHOLE) return 0;
      next.whole = next.whole * 10 + d, next.digits++;
      break;
    case P_POINT: next.phase = P_FRAC, next.frac = d, next.digits = 1; break;
    case P_FRAC:
      if (next.digits == PD_NUM_MAX_FRAC) return 0;
      next.frac = next.frac * 10 + d, next.digits++;
      break;
    default: return 0; /* after a leading 0 */
    }
  } else if (byte == '-' && next.phase == P_SIGN && !next.neg) {
    next.neg = 1;
  } else if (byte == '.' && !b->integer && (next.phase == P_ZERO || next.phase == P_WHOLE)) {
    next.phase = P_POINT, next.digits = 0;
  } else {
    return 0;
  }
  if (!reachable(b, &next)) return 0;
  *s = next;
  return 1;
}
