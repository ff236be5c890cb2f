/*
 * pd_regex.c -- see pd_regex.h.
 *
 * Compiling goes pattern -> AST -> NFA -> DFA -> trimmed DFA -> minimal DFA -> length tables:
 *
 * - Code point sets are sorted, disjoint, surrogate-free ranges in one pool (cp_set names a run
 *   of it). Every AST leaf is a set; inner nodes are concatenation, alternation and repetition.
 * - The Thompson NFA has, per state, at most one edge on a set and any number of epsilon edges.
 *   A repetition {n,m} copies its operand m times (or n+1 with a loop), hence PD_REGEX_MAX_NFA.
 *   Search semantics: alternatives without '^' are entered through a loop on any code point;
 *   alternatives without '$' end in FOREVER, an accepting state looping on any code point. A
 *   state set holding FOREVER accepts every continuation, so it is replaced by {FOREVER}, which
 *   keeps the DFA of an unanchored pattern small.
 * - Subset construction: a DFA state is the sorted set of the NFA states of its epsilon closure
 *   that matter (those with a set edge, and the accepting ones). Its outgoing ranges are the
 *   elementary intervals between all range boundaries of its members' sets; adjacent intervals
 *   with the same target are merged.
 * - Trimming drops states that reach no accepting state (backwards search from the accepting
 *   ones); Moore's partition refinement then merges equivalent states.
 * - Length bounds (live(d, c): some path of length L from d to acceptance has min <= c + L <= max):
 *   with a maximum M, nearest[d][k] = the least L >= k such that d reaches acceptance in exactly
 *   L steps (L <= M), so live(d, c) = c <= M && nearest[d][max(0, min - c)] <= M - c; without
 *   one, a state that can reach a cycle has arbitrarily long accepting paths ("pumpable"), and
 *   the others have a finite longest one (Kahn's algorithm over the acyclic rest).
 */
#include "pd_regex.h"

#include <stdlib.h>
#include <string.h>

#include "pd_err.h"

#define CP_MAX       0x10FFFFu
#define SURROGATE_LO 0xD800u
#define SURROGATE_HI 0xDFFFu
#define REPEAT_INF   UINT32_MAX
#define NONE         (-1)

typedef struct cp_range {
  uint32_t lo, hi;
} cp_range;

typedef struct cp_set {
  uint32_t first, count; /* ranges[first .. first + count) */
} cp_set;

enum ast_kind { AST_SET, AST_CAT, AST_ALT, AST_REPEAT }; /* an empty CAT is the empty string */

typedef struct ast_node {
  uint32_t kind;
  uint32_t set;      /* AST_SET */
  int32_t child;     /* the first child (CAT, ALT) or the repeated node (REPEAT) */
  int32_t sibling;   /* the next child of the parent */
  int32_t last;      /* CAT, ALT: the last child, for appending */
  uint32_t min, max; /* REPEAT; max REPEAT_INF for none */
} ast_node;

typedef struct top_alt {
  int32_t node;
  int anchored_start, anchored_end;
} top_alt;

typedef struct eps_edge {
  int32_t from, to;
} eps_edge;

typedef struct cp_trans {
  uint32_t lo, hi, target;
} cp_trans;

/* A DFA with partial transitions (a missing one leads to the implicit dead state). */
typedef struct dfa {
  uint32_t n, n_trans;
  uint32_t *begin; /* n + 1: state s's transitions are trans[begin[s] .. begin[s + 1]) */
  cp_trans *trans;
  uint8_t *accepting;
} dfa;

struct pd_regex {
  uint32_t n_states, start, min_len, max_len;
  uint32_t *begin;
  cp_trans *trans;
  uint8_t *accepting;
  uint16_t *nearest16; /* max_len < 0xFFFF: n_states * (max_len + 1), sentinel 0xFFFF */
  uint32_t *nearest32; /* larger finite max_len: the same, sentinel UINT32_MAX */
  uint8_t *pumpable;   /* no max_len */
  uint32_t *longest;   /* no max_len, for states not pumpable */
};

typedef struct compiler {
  const unsigned char *pat;
  size_t n, pos;
  char *err;
  size_t errlen;
  cp_range *ranges; /* the set pool */
  uint32_t n_ranges, cap_ranges;
  cp_set *sets;
  uint32_t n_sets, cap_sets;
  cp_range *scratch; /* the ranges of the set being parsed, in any order */
  uint32_t n_scratch, cap_scratch;
  ast_node *ast;
  uint32_t n_ast, cap_ast;
  top_alt *alts;
  uint32_t n_alts, cap_alts;
  /* NFA */
  int32_t *nfa_next; /* the successor on a code point of nfa_set[s], NONE for no set edge */
  uint32_t *nfa_set;
  uint32_t n_nfa;
  eps_edge *eps;
  uint32_t n_eps, cap_eps;
  uint32_t *eps_begin; /* CSR of eps by source: eps_to[eps_begin[s] .. eps_begin[s + 1]) */
  int32_t *eps_to;
  int32_t start, accept, forever;
  uint32_t any_set;
} compiler;

static const cp_range DIGIT[] = {{'0', '9'}};
static const cp_range WORD[] = {{'0', '9'}, {'A', 'Z'}, {'_', '_'}, {'a', 'z'}};
static const cp_range SPACE[] = {
    {0x09, 0x0D},     {0x20, 0x20},     {0xA0, 0xA0},     {0x1680, 0x1680}, {0x2000, 0x200A},
    {0x2028, 0x2029}, {0x202F, 0x202F}, {0x205F, 0x205F}, {0x3000, 0x3000}, {0xFEFF, 0xFEFF}};
static const cp_range LINE_TERMINATORS[] = {{'\n', '\n'}, {'\r', '\r'}, {0x2028, 0x2029}};

#define COUNT_OF(a) ((uint32_t)(sizeof(a) / sizeof((a)[0])))

/* Makes room for `need` items in the array whose address is items_ptr (a T **) and whose
 * capacity is *cap items. Returns 0, or PD_ENOMEM leaving the array as it was. */
static int reserve(void *items_ptr, uint32_t *cap, uint64_t need, size_t item_size) {
  if (need <= *cap) return 0;
  if (need > UINT32_MAX / 2) return PD_ENOMEM;
  uint64_t grown = *cap ? *cap : 16;
  while (grown < need) grown *= 2;
  void *old;
  memcpy(&old, items_ptr, sizeof old);
  void *fresh = realloc(old, (size_t)grown * item_size);
  if (!fresh) return PD_ENOMEM;
  memcpy(items_ptr, &fresh, sizeof fresh);
  *cap = (uint32_t)grown;
  return 0;
}

static int no_memory(compiler *c) {
  return pd_errf(c->err, c->errlen, PD_ENOMEM, "out of memory compiling a pattern");
}

/* A syntax error or an unsupported construct at byte offset `at` of the pattern. */
static int refuse(compiler *c, size_t at, const char *what) {
  return pd_errf(c->err, c->errlen, PD_EINVAL, "%s (at offset %zu)", what, at);
}

/* Decodes the UTF-8 code point at s[*pos] and advances *pos; -1 (and *pos unchanged) if the bytes
 * there are not UTF-8: truncated, overlong, a surrogate, above U+10FFFF. */
static int32_t utf8_decode(const unsigned char *s, size_t n, size_t *pos) {
  size_t i = *pos;
  uint32_t b = s[i], cp, len;
  if (b < 0x80)
    len = 1, cp = b;
  else if (b >= 0xC2 && b < 0xE0)
    len = 2, cp = b & 0x1F;
  else if (b >= 0xE0 && b < 0xF0)
    len = 3, cp = b & 0x0F;
  else if (b >= 0xF0 && b < 0xF5)
    len = 4, cp = b & 0x07;
  else
    return -1;
  if (n - i < len) return -1;
  for (uint32_t k = 1; k < len; k++) {
    if ((s[i + k] & 0xC0) != 0x80) return -1;
    cp = cp << 6 | (s[i + k] & 0x3F);
  }
  if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > CP_MAX))) return -1;
  if (cp >= SURROGATE_LO && cp <= SURROGATE_HI) return -1;
  *pos = i + len;
  return (int32_t)cp;
}

/* ---- code point sets ---- */

static int scratch_push(compiler *c, uint32_t lo, uint32_t hi) {
  if (reserve(&c->scratch, &c->cap_scratch, (uint64_t)c->n_scratch + 1, sizeof *c->scratch))
    return no_memory(c);
  c->scratch[c->n_scratch++] = (cp_range){lo, hi};
  return 0;
}

/* Pushes a sorted table of ranges onto the scratch set, or its complement when negated. */
static int scratch_push_table(compiler *c, const cp_range *table, uint32_t count, int negated) {
  uint32_t next = 0; /* the first code point not yet covered by a gap */
  for (uint32_t i = 0; i < count; i++) {
    int rc = 0;
    if (!negated)
      rc = scratch_push(c, table[i].lo, table[i].hi);
    else if (table[i].lo > next)
      rc = scratch_push(c, next, table[i].lo - 1);
    if (rc) return rc;
    next = table[i].hi + 1;
  }
  return negated && next <= CP_MAX ? scratch_push(c, next, CP_MAX) : 0;
}

static int compare_ranges(const void *a, const void *b) {
  const cp_range *x = a, *y = b;
  return x->lo < y->lo ? -1 : x->lo > y->lo ? 1 : 0;
}

/* Appends [lo, hi] without the surrogates to the pool (room reserved by the caller). */
static void pool_add_clipped(compiler *c, uint32_t lo, uint32_t hi) {
  if (lo < SURROGATE_LO)
    c->ranges[c->n_ranges++] = (cp_range){lo, hi < SURROGATE_LO ? hi : SURROGATE_LO - 1};
  if (hi > SURROGATE_HI)
    c->ranges[c->n_ranges++] = (cp_range){lo > SURROGATE_HI ? lo : SURROGATE_HI + 1, hi};
}

/* Turns the scratch ranges (or their complement) into a new set; the scratch is emptied. */
static int finish_set(compiler *c, int negate, uint32_t *set_id) {
  if (c->n_scratch > 1) qsort(c->scratch, c->n_scratch, sizeof *c->scratch, compare_ranges);
  uint32_t m = 0; /* merge overlapping and adjacent ranges in place */
  for (uint32_t i = 0; i < c->n_scratch; i++) {
    if (m && c->scratch[i].lo <= c->scratch[m - 1].hi + 1) {
      if (c->scratch[i].hi > c->scratch[m - 1].hi) c->scratch[m - 1].hi = c->scratch[i].hi;
    } else {
      c->scratch[m++] = c->scratch[i];
    }
  }
  if (reserve(&c->ranges, &c->cap_ranges, (uint64_t)c->n_ranges + 2 * m + 2, sizeof *c->ranges) ||
      reserve(&c->sets, &c->cap_sets, (uint64_t)c->n_sets + 1, sizeof *c->sets))
    return no_memory(c);
  uint32_t first = c->n_ranges, next = 0;
  for (uint32_t i = 0; i < m; i++) {
    if (!negate)
      pool_add_clipped(c, c->scratch[i].lo, c->scratch[i].hi);
    else if (c->scratch[i].lo > next)
      pool_add_clipped(c, next, c->scratch[i].lo - 1);
    next = c->scratch[i].hi + 1;
  }
  if (negate && next <= CP_MAX) pool_add_clipped(c, next, CP_MAX);
  c->sets[c->n_sets] = (cp_set){first, c->n_ranges - first};
  *set_id = c->n_sets++;
  c->n_scratch = 0;
  return 0;
}

static int set_contains(const compiler *c, uint32_t set_id, uint32_t cp) {
  const cp_range *r = c->ranges + c->sets[set_id].first;
  uint32_t lo = 0, hi = c->sets[set_id].count;
  while (lo < hi) { /* the first range with r.hi >= cp */
    uint32_t mid = lo + (hi - lo) / 2;
    if (r[mid].hi < cp)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < c->sets[set_id].count && r[lo].lo <= cp;
}

/* ---- parsing ---- */

static int new_node(compiler *c, uint32_t kind, int32_t *id) {
  if (reserve(&c->ast, &c->cap_ast, (uint64_t)c->n_ast + 1, sizeof *c->ast)) return no_memory(c);
  c->ast[c->n_ast] = (ast_node){kind, 0, NONE, NONE, NONE, 0, 0};
  *id = (int32_t)c->n_ast++;
  return 0;
}

static void add_child(compiler *c, int32_t parent, int32_t child) {
  ast_node *p = &c->ast[parent];
  if (p->last == NONE)
    p->child = child;
  else
    c->ast[p->last].sibling = child;
  p->last = child;
}

static int set_node(compiler *c, uint32_t set_id, int32_t *id) {
  int rc = new_node(c, AST_SET, id);
  if (!rc) c->ast[*id].set = set_id;
  return rc;
}

static int literal_node(compiler *c, uint32_t cp, int32_t *id) {
  uint32_t set_id;
  int rc;
  c->n_scratch = 0;
  if ((rc = scratch_push(c, cp, cp)) || (rc = finish_set(c, 0, &set_id))) return rc;
  return set_node(c, set_id, id);
}

static int hex_value(unsigned char ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

/* Reads exactly `digits` hex digits at the current position into *value; 0 if they are not. */
static int read_hex(compiler *c, int digits, uint32_t *value) {
  if (c->n - c->pos < (size_t)digits) return 0;
  uint32_t v = 0;
  for (int i = 0; i < digits; i++) {
    int h = hex_value(c->pat[c->pos + (size_t)i]);
    if (h < 0) return 0;
    v = v << 4 | (uint32_t)h;
  }
  c->pos += (size_t)digits;
  *value = v;
  return 1;
}

/* After "\u": HHHH (a high surrogate may be followed by \uHHHH, its low half) or {H...}. */
static int parse_unicode_escape(compiler *c, size_t at, uint32_t *cp) {
  if (c->pos < c->n && c->pat[c->pos] == '{') {
    uint32_t v = 0;
    size_t digits = 0;
    for (c->pos++; c->pos < c->n && hex_value(c->pat[c->pos]) >= 0; c->pos++, digits++) {
      v = v << 4 | (uint32_t)hex_value(c->pat[c->pos]);
      if (v > CP_MAX) return refuse(c, at, "\\u{...} above U+10FFFF");
    }
    if (!digits || c->pos >= c->n || c->pat[c->pos] != '}')
      return refuse(c, at, "\\u{ must be followed by hex digits and '}'");
    c->pos++;
    *cp = v;
  } else if (!read_hex(c, 4, cp)) {
    return refuse(c, at, "\\u must be followed by four hex digits or {hex digits}");
  }
  if (*cp >= SURROGATE_LO && *cp < 0xDC00 && c->n - c->pos >= 6 && c->pat[c->pos] == '\\' &&
      c->pat[c->pos + 1] == 'u') {
    size_t back = c->pos;
    uint32_t low;
    c->pos += 2;
    if (read_hex(c, 4, &low) && low >= 0xDC00 && low <= SURROGATE_HI) {
      *cp = 0x10000 + ((*cp - SURROGATE_LO) << 10) + (low - 0xDC00);
      return 0;
    }
    c->pos = back;
  }
  if (*cp >= SURROGATE_LO && *cp <= SURROGATE_HI)
    return refuse(c, at, "a lone surrogate escape is not supported");
  return 0;
}

/* An escape at the current position (a backslash): one code point in *cp, or (*is_set) ranges
 * pushed onto the scratch set. */
static int parse_escape(compiler *c, int in_class, uint32_t *cp, int *is_set) {
  size_t at = c->pos++;
  *is_set = 0;
  if (c->pos >= c->n) return refuse(c, at, "'\\' at the end of the pattern");
  unsigned char e = c->pat[c->pos++];
  switch (e) {
  case 'd':
  case 'D': *is_set = 1; return scratch_push_table(c, DIGIT, COUNT_OF(DIGIT), e == 'D');
  case 'w':
  case 'W': *is_set = 1; return scratch_push_table(c, WORD, COUNT_OF(WORD), e == 'W');
  case 's':
  case 'S': *is_set = 1; return scratch_push_table(c, SPACE, COUNT_OF(SPACE), e == 'S');
  case 't': *cp = '\t'; return 0;
  case 'n': *cp = '\n'; return 0;
  case 'r': *cp = '\r'; return 0;
  case 'v': *cp = 0x0B; return 0;
  case 'f': *cp = 0x0C; return 0;
  case '0':
    if (c->pos < c->n && c->pat[c->pos] >= '0' && c->pat[c->pos] <= '9')
      return refuse(c, at, "octal escapes are not supported");
    *cp = 0;
    return 0;
  case 'b':
    if (in_class) {
      *cp = 0x08;
      return 0;
    }
    return refuse(c, at, "\\b word boundaries are not supported");
  case 'B': return refuse(c, at, "\\B word boundaries are not supported");
  case 'k': return refuse(c, at, "backreferences are not supported (\\k<name>)");
  case 'p':
  case 'P': return refuse(c, at, "\\p{...} and \\P{...} property escapes are not supported");
  case 'c': return refuse(c, at, "\\c control escapes are not supported");
  case 'x':
    if (!read_hex(c, 2, cp)) return refuse(c, at, "\\x must be followed by two hex digits");
    return 0;
  case 'u': return parse_unicode_escape(c, at, cp);
  default: break;
  }
  if (e >= '1' && e <= '9')
    return refuse(
        c, at, in_class ? "octal escapes are not supported" : "backreferences are not supported");
  if ((e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z'))
    return pd_errf(c->err, c->errlen, PD_EINVAL, "unknown escape '\\%c' (at offset %zu)", e, at);
  c->pos--; /* an identity escape: the character itself */
  int32_t v = utf8_decode(c->pat, c->n, &c->pos);
  if (v < 0) return refuse(c, c->pos, "the pattern is not valid UTF-8");
  *cp = (uint32_t)v;
  return 0;
}

/* One member of a class: a code point, or (*is_set) ranges pushed onto the scratch set. */
static int parse_class_atom(compiler *c, uint32_t *cp, int *is_set) {
  if (c->pat[c->pos] == '\\') return parse_escape(c, 1, cp, is_set);
  *is_set = 0;
  int32_t v = utf8_decode(c->pat, c->n, &c->pos);
  if (v < 0) return refuse(c, c->pos, "the pattern is not valid UTF-8");
  *cp = (uint32_t)v;
  return 0;
}

static int parse_class(compiler *c, int32_t *node) {
  size_t at = c->pos++;
  int negate = c->pos < c->n && c->pat[c->pos] == '^';
  c->pos += (size_t)negate;
  c->n_scratch = 0;
  for (;;) {
    if (c->pos >= c->n) return refuse(c, at, "unterminated character class");
    if (c->pat[c->pos] == ']') break;
    uint32_t lo, hi;
    int lo_is_set, hi_is_set, rc = parse_class_atom(c, &lo, &lo_is_set);
    if (rc) return rc;
    if (c->n - c->pos >= 2 && c->pat[c->pos] == '-' && c->pat[c->pos + 1] != ']') {
      size_t dash = c->pos++;
      if ((rc = parse_class_atom(c, &hi, &hi_is_set))) return rc;
      if (lo_is_set || hi_is_set)
        return refuse(c, dash, "a class escape (\\d, \\w, \\s, ...) cannot bound a range");
      if (lo > hi) return refuse(c, dash, "reversed range in a character class");
      if ((rc = scratch_push(c, lo, hi))) return rc;
    } else if (!lo_is_set && (rc = scratch_push(c, lo, lo))) {
      return rc;
    }
  }
  c->pos++;
  uint32_t set_id;
  int rc = finish_set(c, negate, &set_id);
  return rc ? rc : set_node(c, set_id, node);
}

/* Whether a quantifier in braces ({n}, {n,}, {n,m}) starts at `pos`; its bounds in *min, *max
 * (saturating far above PD_REGEX_MAX_REPEAT) and the position after it in *end. */
static int read_braces(const compiler *c, size_t pos, uint32_t *min, uint32_t *max, size_t *end) {
  uint32_t bound[2] = {0, 0};
  int have_comma = 0;
  size_t digits[2] = {0, 0};
  if (pos >= c->n || c->pat[pos] != '{') return 0;
  for (pos++; pos < c->n; pos++) {
    unsigned char ch = c->pat[pos];
    if (ch >= '0' && ch <= '9') {
      if (bound[have_comma] < 100000000u) bound[have_comma] = bound[have_comma] * 10 + (ch - '0');
      digits[have_comma]++;
    } else if (ch == ',' && !have_comma) {
      have_comma = 1;
    } else if (ch == '}') {
      if (!digits[0]) return 0;
      *min = bound[0];
      *max = !have_comma ? bound[0] : digits[1] ? bound[1] : REPEAT_INF;
      *end = pos + 1;
      return 1;
    } else {
      return 0;
    }
  }
  return 0;
}

/* The quantifier at the current position, if any: *found, with its bounds. */
static int parse_quantifier(compiler *c, int *found, uint32_t *min, uint32_t *max) {
  size_t at = c->pos, end = c->pos + 1;
  *found = 1;
  switch (c->pos < c->n ? c->pat[c->pos] : 0) {
  case '*': *min = 0, *max = REPEAT_INF; break;
  case '+': *min = 1, *max = REPEAT_INF; break;
  case '?': *min = 0, *max = 1; break;
  default: *found = read_braces(c, c->pos, min, max, &end); break;
  }
  if (!*found) return 0;
  c->pos = end;
  if (c->pos < c->n && c->pat[c->pos] == '?') c->pos++; /* lazy: the same language */
  if (*min > PD_REGEX_MAX_REPEAT || (*max != REPEAT_INF && *max > PD_REGEX_MAX_REPEAT))
    return pd_errf(c->err, c->errlen, PD_EINVAL,
                   "a repetition bound is over the limit of %d (at offset %zu)",
                   PD_REGEX_MAX_REPEAT, at);
  if (*min > *max) return refuse(c, at, "{n,m} with n greater than m");
  return 0;
}

static int parse_disjunction(compiler *c, int depth, int32_t *node);

static int parse_group(compiler *c, int depth, int32_t *node) {
  size_t at = c->pos++;
  if (depth >= PD_REGEX_MAX_DEPTH)
    return pd_errf(c->err, c->errlen, PD_EINVAL,
                   "groups nested deeper than %d (PD_REGEX_MAX_DEPTH) (at offset %zu)",
                   PD_REGEX_MAX_DEPTH, at);
  if (c->pos < c->n && c->pat[c->pos] == '?') {
    unsigned char kind = c->pos + 1 < c->n ? c->pat[c->pos + 1] : 0;
    unsigned char after = c->pos + 2 < c->n ? c->pat[c->pos + 2] : 0;
    if (kind == ':') {
      c->pos += 2;
    } else if (kind == '=' || kind == '!') {
      return refuse(c, at, "lookahead assertions (?= and (?! are not supported");
    } else if (kind == '<' && (after == '=' || after == '!')) {
      return refuse(c, at, "lookbehind assertions (?<= and (?<! are not supported");
    } else if (kind == '<') { /* a named group: (?<name>...) */
      size_t name = c->pos += 2;
      while (c->pos < c->n &&
             (c->pat[c->pos] == '_' || c->pat[c->pos] == '$' || c->pat[c->pos] >= 0x80 ||
              (c->pat[c->pos] >= '0' && c->pat[c->pos] <= '9') ||
              ((c->pat[c->pos] | 0x20) >= 'a' && (c->pat[c->pos] | 0x20) <= 'z')))
        c->pos++;
      if (c->pos == name || c->pos >= c->n || c->pat[c->pos] != '>' ||
          (c->pat[name] >= '0' && c->pat[name] <= '9'))
        return refuse(c, at, "invalid group name in (?<name>...)");
      c->pos++;
    } else {
      return refuse(c, at, "unknown group syntax after '(?'");
    }
  }
  int rc = parse_disjunction(c, depth + 1, node);
  if (rc) return rc;
  if (c->pos >= c->n || c->pat[c->pos] != ')') return refuse(c, at, "missing ')'");
  c->pos++;
  return 0;
}

static int parse_atom(compiler *c, int depth, int32_t *node) {
  size_t at = c->pos, end;
  uint32_t cp, set_id, min, max;
  int is_set, rc;
  switch (c->pat[at]) {
  case '(': return parse_group(c, depth, node);
  case '[': return parse_class(c, node);
  case '.':
    c->pos++;
    c->n_scratch = 0;
    if ((rc = scratch_push_table(c, LINE_TERMINATORS, COUNT_OF(LINE_TERMINATORS), 0)) ||
        (rc = finish_set(c, 1, &set_id)))
      return rc;
    return set_node(c, set_id, node);
  case '*':
  case '+':
  case '?': return refuse(c, at, "nothing to repeat before a quantifier");
  case '{':
    if (read_braces(c, at, &min, &max, &end))
      return refuse(c, at, "nothing to repeat before a quantifier");
    break; /* Annex B: a literal '{' */
  case '^':
    return refuse(
        c, at, "'^' is supported only at the start of the pattern or of a top-level alternative");
  case '$':
    return refuse(c, at,
                  "'$' is supported only at the end of the pattern or of a top-level alternative");
  case '\\':
    c->n_scratch = 0;
    if ((rc = parse_escape(c, 0, &cp, &is_set))) return rc;
    if (!is_set) return literal_node(c, cp, node);
    if ((rc = finish_set(c, 0, &set_id))) return rc;
    return set_node(c, set_id, node);
  default: break;
  }
  int32_t v = utf8_decode(c->pat, c->n, &c->pos);
  if (v < 0) return refuse(c, at, "the pattern is not valid UTF-8");
  return literal_node(c, (uint32_t)v, node);
}

static int parse_term(compiler *c, int depth, int32_t *node) {
  int found, rc = parse_atom(c, depth, node);
  uint32_t min, max;
  if (rc || (rc = parse_quantifier(c, &found, &min, &max)) || !found) return rc;
  int32_t repeat;
  if ((rc = new_node(c, AST_REPEAT, &repeat))) return rc;
  c->ast[repeat].child = *node, c->ast[repeat].min = min, c->ast[repeat].max = max;
  *node = repeat;
  size_t at = c->pos, end;
  if (c->pos < c->n && (c->pat[at] == '*' || c->pat[at] == '+' || c->pat[at] == '?' ||
                        read_braces(c, at, &min, &max, &end)))
    return refuse(c, at, "a quantifier cannot follow a quantifier");
  return 0;
}

/* A sequence of terms up to '|', ')' or the end; at the top level (depth 0) a '$' right before
 * '|' or the end anchors the alternative (*anchored_end). */
static int parse_alternative(compiler *c, int depth, int32_t *node, int *anchored_end) {
  int rc = new_node(c, AST_CAT, node);
  while (!rc && c->pos < c->n) {
    unsigned char ch = c->pat[c->pos];
    if (ch == '|' || ch == ')') break;
    if (ch == '$' && depth == 0 && (c->pos + 1 == c->n || c->pat[c->pos + 1] == '|')) {
      c->pos++;
      *anchored_end = 1;
      break;
    }
    int32_t term;
    if (!(rc = parse_term(c, depth, &term))) add_child(c, *node, term);
  }
  return rc;
}

static int parse_disjunction(compiler *c, int depth, int32_t *node) {
  int rc = new_node(c, AST_ALT, node), unused_anchor = 0;
  while (!rc) {
    int32_t alternative = NONE;
    if ((rc = parse_alternative(c, depth, &alternative, &unused_anchor))) break;
    add_child(c, *node, alternative);
    if (c->pos >= c->n || c->pat[c->pos] != '|') break;
    c->pos++;
  }
  return rc;
}

/* The pattern: top-level alternatives, each with its anchors. */
static int parse_pattern(compiler *c) {
  for (;;) {
    top_alt alt = {NONE, 0, 0};
    if (c->pos < c->n && c->pat[c->pos] == '^') c->pos++, alt.anchored_start = 1;
    int rc = parse_alternative(c, 0, &alt.node, &alt.anchored_end);
    if (rc) return rc;
    if (reserve(&c->alts, &c->cap_alts, (uint64_t)c->n_alts + 1, sizeof *c->alts))
      return no_memory(c);
    c->alts[c->n_alts++] = alt;
    if (c->pos >= c->n) return 0;
    if (c->pat[c->pos] == ')') return refuse(c, c->pos, "unmatched ')'");
    c->pos++; /* '|' */
  }
}

/* ---- NFA ---- */

typedef struct fragment {
  int32_t start, end; /* end has no edges yet */
} fragment;

static int new_state(compiler *c, int32_t *id) {
  if (c->n_nfa >= PD_REGEX_MAX_NFA)
    return pd_errf(c->err, c->errlen, PD_EINVAL,
                   "pattern too big: it needs more than %d NFA states (PD_REGEX_MAX_NFA)",
                   PD_REGEX_MAX_NFA);
  c->nfa_next[c->n_nfa] = NONE;
  c->nfa_set[c->n_nfa] = 0;
  *id = (int32_t)c->n_nfa++;
  return 0;
}

static int link_eps(compiler *c, int32_t from, int32_t to) {
  if (reserve(&c->eps, &c->cap_eps, (uint64_t)c->n_eps + 1, sizeof *c->eps)) return no_memory(c);
  c->eps[c->n_eps++] = (eps_edge){from, to};
  return 0;
}

/* A fresh copy of the NFA of AST node `node`. Recursion depth is bounded by group nesting. */
static int build(compiler *c, int32_t node, fragment *out) {
  const ast_node nd = c->ast[node];
  fragment f;
  int32_t cur, exit_state = NONE, split = NONE;
  int rc = new_state(c, &out->start);
  if (rc) return rc;
  cur = out->start;
  switch (nd.kind) {
  case AST_SET:
    if ((rc = new_state(c, &exit_state))) return rc;
    c->nfa_next[cur] = exit_state, c->nfa_set[cur] = nd.set;
    cur = exit_state;
    break;
  case AST_CAT:
    for (int32_t child = nd.child; child != NONE; child = c->ast[child].sibling) {
      if ((rc = build(c, child, &f)) || (rc = link_eps(c, cur, f.start))) return rc;
      cur = f.end;
    }
    break;
  case AST_ALT:
    if ((rc = new_state(c, &exit_state))) return rc;
    for (int32_t child = nd.child; child != NONE; child = c->ast[child].sibling)
      if ((rc = build(c, child, &f)) || (rc = link_eps(c, cur, f.start)) ||
          (rc = link_eps(c, f.end, exit_state)))
        return rc;
    cur = exit_state;
    break;
  case AST_REPEAT:
    for (uint32_t i = 0; i < nd.min; i++) {
      if ((rc = build(c, nd.child, &f)) || (rc = link_eps(c, cur, f.start))) return rc;
      cur = f.end;
    }
    if ((rc = new_state(c, &exit_state))) return rc;
    if (nd.max == REPEAT_INF) { /* cur -> split; split -> operand -> split; split -> exit */
      if ((rc = new_state(c, &split)) || (rc = build(c, nd.child, &f)) ||
          (rc = link_eps(c, cur, split)) || (rc = link_eps(c, split, f.start)) ||
          (rc = link_eps(c, f.end, split)) || (rc = link_eps(c, split, exit_state)))
        return rc;
    } else { /* each optional copy may be skipped to the exit */
      for (uint32_t i = nd.min; i < nd.max; i++) {
        if ((rc = build(c, nd.child, &f)) || (rc = link_eps(c, cur, f.start)) ||
            (rc = link_eps(c, cur, exit_state)))
          return rc;
        cur = f.end;
      }
      if ((rc = link_eps(c, cur, exit_state))) return rc;
    }
    cur = exit_state;
    break;
  default: break;
  }
  out->end = cur;
  return 0;
}

/* The NFA of the whole pattern (see the top of the file), its epsilon edges as CSR. */
static int build_nfa(compiler *c) {
  int32_t any_loop = NONE, any_char = NONE;
  fragment f;
  int rc;
  c->nfa_next = malloc(PD_REGEX_MAX_NFA * sizeof *c->nfa_next);
  c->nfa_set = malloc(PD_REGEX_MAX_NFA * sizeof *c->nfa_set);
  if (!c->nfa_next || !c->nfa_set) return no_memory(c);
  c->n_scratch = 0;
  if ((rc = finish_set(c, 1, &c->any_set)) || (rc = new_state(c, &c->start)) ||
      (rc = new_state(c, &c->accept)) || (rc = new_state(c, &c->forever)) ||
      (rc = new_state(c, &any_loop)) || (rc = new_state(c, &any_char)) ||
      (rc = link_eps(c, any_loop, any_char)))
    return rc;
  for (uint32_t i = 0; i < c->n_alts; i++) /* enter the loop only if some alternative needs it */
    if (!c->alts[i].anchored_start) {
      if ((rc = link_eps(c, c->start, any_loop))) return rc;
      break;
    }
  c->nfa_next[c->forever] = c->forever, c->nfa_set[c->forever] = c->any_set;
  c->nfa_next[any_char] = any_loop, c->nfa_set[any_char] = c->any_set;
  for (uint32_t i = 0; i < c->n_alts; i++) {
    const top_alt alt = c->alts[i];
    if ((rc = build(c, alt.node, &f)) ||
        (rc = link_eps(c, alt.anchored_start ? c->start : any_loop, f.start)) ||
        (rc = link_eps(c, f.end, alt.anchored_end ? c->accept : c->forever)))
      return rc;
  }
  c->eps_begin = calloc((size_t)c->n_nfa + 1, sizeof *c->eps_begin);
  c->eps_to = malloc(((size_t)c->n_eps + 1) * sizeof *c->eps_to);
  if (!c->eps_begin || !c->eps_to) return no_memory(c);
  for (uint32_t i = 0; i < c->n_eps; i++) c->eps_begin[c->eps[i].from + 1]++;
  for (uint32_t s = 0; s < c->n_nfa; s++) c->eps_begin[s + 1] += c->eps_begin[s];
  /* filling advances eps_begin[s] to the start of s + 1's run; shifting restores the starts */
  for (uint32_t i = 0; i < c->n_eps; i++) c->eps_to[c->eps_begin[c->eps[i].from]++] = c->eps[i].to;
  for (uint32_t s = c->n_nfa; s > 0; s--) c->eps_begin[s] = c->eps_begin[s - 1];
  c->eps_begin[0] = 0;
  return 0;
}

/* ---- DFA ---- */

typedef struct subset_builder {
  uint32_t *stamp; /* per NFA state: the closure that last visited it */
  uint32_t generation;
  int32_t *stack;
  uint32_t *members; /* the closure's significant states, sorted */
  uint32_t n_members;
  uint32_t *pool; /* the member lists of all DFA states */
  uint32_t n_pool, cap_pool;
  uint32_t set_begin[PD_REGEX_MAX_STATES + 1];
  int32_t slots[2 * PD_REGEX_MAX_STATES]; /* hash of member lists -> DFA state */
} subset_builder;

static int compare_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

/* The epsilon closure of the seeds, as its sorted significant states in b->members. */
static void closure(const compiler *c, subset_builder *b, const int32_t *seeds, uint32_t n_seeds) {
  uint32_t depth = 0;
  b->generation++;
  b->n_members = 0;
  for (uint32_t i = 0; i < n_seeds; i++) {
    if (b->stamp[seeds[i]] == b->generation) continue;
    b->stamp[seeds[i]] = b->generation;
    b->stack[depth++] = seeds[i];
  }
  while (depth) {
    int32_t s = b->stack[--depth];
    if (s == c->forever) { /* accepts every continuation: nothing else matters */
      b->members[0] = (uint32_t)s;
      b->n_members = 1;
      return;
    }
    if (c->nfa_next[s] != NONE || s == c->accept) b->members[b->n_members++] = (uint32_t)s;
    for (uint32_t e = c->eps_begin[s]; e < c->eps_begin[s + 1]; e++) {
      int32_t t = c->eps_to[e];
      if (b->stamp[t] == b->generation) continue;
      b->stamp[t] = b->generation;
      b->stack[depth++] = t;
    }
  }
  if ((uint64_t)b->n_members * 32 < c->n_nfa) { /* few: sort them */
    if (b->n_members > 1) qsort(b->members, b->n_members, sizeof *b->members, compare_u32);
    return;
  }
  b->n_members = 0; /* many: collect them in order from the marks */
  for (uint32_t s = 0; s < c->n_nfa; s++)
    if (b->stamp[s] == b->generation && (c->nfa_next[s] != NONE || s == (uint32_t)c->accept))
      b->members[b->n_members++] = s;
}

/* The DFA state whose member list is b->members, added to `d` if new. */
static int dfa_state_for(compiler *c, subset_builder *b, dfa *d, uint32_t *id) {
  uint32_t hash = 2166136261u;
  for (uint32_t i = 0; i < b->n_members; i++) hash = (hash ^ b->members[i]) * 16777619u;
  uint32_t mask = 2 * PD_REGEX_MAX_STATES - 1, slot = hash & mask;
  for (;; slot = (slot + 1) & mask) {
    int32_t s = b->slots[slot];
    if (s == NONE) break;
    uint32_t count = b->set_begin[s + 1] - b->set_begin[s];
    if (count == b->n_members &&
        (!count || !memcmp(b->pool + b->set_begin[s], b->members, count * sizeof *b->members))) {
      *id = (uint32_t)s;
      return 0;
    }
  }
  if (d->n >= PD_REGEX_MAX_STATES)
    return pd_errf(c->err, c->errlen, PD_EINVAL,
                   "pattern too big: it needs more than %d DFA states (PD_REGEX_MAX_STATES)",
                   PD_REGEX_MAX_STATES);
  if (reserve(&b->pool, &b->cap_pool, (uint64_t)b->n_pool + b->n_members + 1, sizeof *b->pool))
    return no_memory(c);
  memcpy(b->pool + b->n_pool, b->members, b->n_members * sizeof *b->members);
  b->n_pool += b->n_members;
  *id = d->n++;
  b->set_begin[*id + 1] = b->n_pool;
  b->slots[slot] = (int32_t)*id;
  return 0;
}

/* Subset construction: state 0 is the start. */
static int build_dfa(compiler *c, dfa *d) {
  subset_builder *b = calloc(1, sizeof *b);
  uint32_t *bounds = NULL, n_bounds = 0, cap_bounds = 0, cap_trans = 0, id, n_used;
  int32_t *seeds = malloc(((size_t)c->n_nfa + 1) * sizeof *seeds);
  /* the distinct sets on the members' edges (copies of a repeated operand share theirs), which
   * of them hold the current interval, and the DFA state (+ 1) that last listed each */
  uint32_t *used_sets = malloc(((size_t)c->n_sets + 1) * sizeof *used_sets);
  uint32_t *listed_by = calloc((size_t)c->n_sets + 1, sizeof *listed_by);
  uint8_t *holds = calloc((size_t)c->n_sets + 1, 1);
  int rc = 0;
  d->begin = malloc((PD_REGEX_MAX_STATES + 1) * sizeof *d->begin);
  d->accepting = malloc(PD_REGEX_MAX_STATES);
  if (b) {
    b->stamp = calloc(c->n_nfa, sizeof *b->stamp);
    b->stack = malloc(c->n_nfa * sizeof *b->stack);
    b->members = malloc(c->n_nfa * sizeof *b->members);
  }
  if (!b || !b->stamp || !b->stack || !b->members || !seeds || !d->begin || !d->accepting ||
      !used_sets || !listed_by || !holds) {
    rc = no_memory(c);
    goto done;
  }
  memset(b->slots, 0xFF, sizeof b->slots);
  closure(c, b, &c->start, 1);
  if ((rc = dfa_state_for(c, b, d, &id))) goto done;
  for (uint32_t s = 0; s < d->n; s++) {
    d->begin[s] = d->n_trans;
    /* the boundaries of the elementary intervals of the members' sets */
    n_bounds = 0, n_used = 0;
    d->accepting[s] = 0;
    for (uint32_t i = b->set_begin[s]; i < b->set_begin[s + 1]; i++) {
      uint32_t m = b->pool[i];
      if (m == (uint32_t)c->accept || m == (uint32_t)c->forever) d->accepting[s] = 1;
      if (c->nfa_next[m] == NONE || listed_by[c->nfa_set[m]] == s + 1) continue;
      listed_by[c->nfa_set[m]] = s + 1;
      used_sets[n_used++] = c->nfa_set[m];
      const cp_set set = c->sets[c->nfa_set[m]];
      if (reserve(&bounds, &cap_bounds, (uint64_t)n_bounds + 2 * set.count, sizeof *bounds)) {
        rc = no_memory(c);
        goto done;
      }
      for (uint32_t r = set.first; r < set.first + set.count; r++) {
        bounds[n_bounds++] = c->ranges[r].lo;
        bounds[n_bounds++] = c->ranges[r].hi + 1;
      }
    }
    if (n_bounds > 1) qsort(bounds, n_bounds, sizeof *bounds, compare_u32);
    for (uint32_t i = 0; i + 1 < n_bounds; i++) {
      uint32_t lo = bounds[i], hi = bounds[i + 1] - 1, n_seeds = 0;
      if (bounds[i + 1] == lo) continue; /* a repeated boundary */
      for (uint32_t k = 0; k < n_used; k++)
        holds[used_sets[k]] = (uint8_t)set_contains(c, used_sets[k], lo);
      for (uint32_t k = b->set_begin[s]; k < b->set_begin[s + 1]; k++) {
        uint32_t m = b->pool[k];
        if (c->nfa_next[m] != NONE && holds[c->nfa_set[m]]) seeds[n_seeds++] = c->nfa_next[m];
      }
      if (!n_seeds) continue;
      closure(c, b, seeds, n_seeds);
      if (!b->n_members) continue;
      if ((rc = dfa_state_for(c, b, d, &id))) goto done;
      cp_trans *prev = d->n_trans > d->begin[s] ? &d->trans[d->n_trans - 1] : NULL;
      if (prev && prev->hi + 1 == lo && prev->target == id) {
        prev->hi = hi;
        continue;
      }
      if (d->n_trans >= PD_REGEX_MAX_TRANSITIONS) {
        rc = pd_errf(c->err, c->errlen, PD_EINVAL,
                     "pattern too big: more than %u DFA transitions (PD_REGEX_MAX_TRANSITIONS)",
                     PD_REGEX_MAX_TRANSITIONS);
        goto done;
      }
      if (reserve(&d->trans, &cap_trans, (uint64_t)d->n_trans + 1, sizeof *d->trans)) {
        rc = no_memory(c);
        goto done;
      }
      d->trans[d->n_trans++] = (cp_trans){lo, hi, id};
    }
  }
  d->begin[d->n] = d->n_trans;
done:
  if (b) free(b->stamp), free(b->stack), free(b->members), free(b->pool);
  free(b), free(bounds), free(seeds), free(used_sets), free(listed_by), free(holds);
  return rc;
}

static void dfa_free(dfa *d) {
  free(d->begin), free(d->trans), free(d->accepting);
  memset(d, 0, sizeof *d);
}

static int dfa_alloc(dfa *d, uint32_t n, uint32_t n_trans) {
  d->n = n, d->n_trans = n_trans;
  d->begin = malloc(((size_t)n + 1) * sizeof *d->begin);
  d->trans = malloc(((size_t)n_trans + 1) * sizeof *d->trans);
  d->accepting = malloc((size_t)n + 1);
  return d->begin && d->trans && d->accepting ? 0 : PD_ENOMEM;
}

/* The predecessors of every state as CSR: sources[rbegin[t] .. rbegin[t + 1]), one per
 * transition into t. Both arrays are the caller's to free. */
static int reverse_edges(const dfa *d, uint32_t **rbegin, uint32_t **sources) {
  *rbegin = calloc((size_t)d->n + 1, sizeof **rbegin);
  *sources = malloc(((size_t)d->n_trans + 1) * sizeof **sources);
  if (!*rbegin || !*sources) return PD_ENOMEM;
  for (uint32_t i = 0; i < d->n_trans; i++) (*rbegin)[d->trans[i].target + 1]++;
  for (uint32_t t = 0; t < d->n; t++) (*rbegin)[t + 1] += (*rbegin)[t];
  uint32_t *fill = malloc(((size_t)d->n + 1) * sizeof *fill);
  if (!fill) return PD_ENOMEM;
  memcpy(fill, *rbegin, ((size_t)d->n + 1) * sizeof *fill);
  for (uint32_t s = 0; s < d->n; s++)
    for (uint32_t i = d->begin[s]; i < d->begin[s + 1]; i++)
      (*sources)[fill[d->trans[i].target]++] = s;
  free(fill);
  return 0;
}

/* Keeps the states of `in` that can reach an accepting state, in order (the start, state 0,
 * stays 0); out->n is 0 when the start cannot. */
static int trim(const dfa *in, dfa *out) {
  uint32_t *rbegin = NULL, *sources = NULL, *queue = malloc(((size_t)in->n + 1) * sizeof *queue);
  int32_t *renumber = malloc(((size_t)in->n + 1) * sizeof *renumber);
  int rc = reverse_edges(in, &rbegin, &sources);
  if (rc || !queue || !renumber) {
    rc = PD_ENOMEM;
    goto done;
  }
  uint32_t head = 0, tail = 0, n_live = 0, n_trans = 0;
  for (uint32_t s = 0; s < in->n; s++) {
    renumber[s] = in->accepting[s] ? 0 : NONE;
    if (in->accepting[s]) queue[tail++] = s;
  }
  while (head < tail) {
    uint32_t t = queue[head++];
    for (uint32_t i = rbegin[t]; i < rbegin[t + 1]; i++)
      if (renumber[sources[i]] == NONE) renumber[sources[i]] = 0, queue[tail++] = sources[i];
  }
  for (uint32_t s = 0; s < in->n; s++)
    if (renumber[s] != NONE) renumber[s] = (int32_t)n_live++;
  for (uint32_t i = 0; i < in->n_trans; i++) n_trans += renumber[in->trans[i].target] != NONE;
  if (renumber[0] == NONE) n_live = 0;
  if ((rc = dfa_alloc(out, n_live, n_trans)) || !n_live) goto done;
  n_trans = 0;
  for (uint32_t s = 0; s < in->n; s++) {
    if (renumber[s] == NONE) continue;
    uint32_t ns = (uint32_t)renumber[s];
    out->begin[ns] = n_trans;
    out->accepting[ns] = in->accepting[s];
    for (uint32_t i = in->begin[s]; i < in->begin[s + 1]; i++) {
      cp_trans t = in->trans[i];
      if (renumber[t.target] == NONE) continue;
      t.target = (uint32_t)renumber[t.target];
      out->trans[n_trans++] = t;
    }
  }
  out->begin[n_live] = n_trans;
  out->n_trans = n_trans;
done:
  free(rbegin), free(sources), free(queue), free(renumber);
  return rc;
}

/* Writes state s's signature (its class, then its transitions with targets replaced by their
 * classes, adjacent ones with the same class merged) at sig; returns its length. */
static uint32_t signature(const dfa *d, const uint32_t *cls, uint32_t s, uint32_t *sig) {
  uint32_t len = 0;
  sig[len++] = cls[s];
  for (uint32_t i = d->begin[s]; i < d->begin[s + 1]; i++) {
    const cp_trans t = d->trans[i];
    if (len > 1 && sig[len - 2] + 1 == t.lo && sig[len - 1] == cls[t.target]) {
      sig[len - 2] = t.hi;
      continue;
    }
    sig[len++] = t.lo, sig[len++] = t.hi, sig[len++] = cls[t.target];
  }
  return len;
}

/* Moore's partition refinement: classes of equivalent states, numbered by their first state
 * (so state 0 stays in class 0); then the DFA of the classes. */
static int minimize(const dfa *in, dfa *out) {
  uint32_t n = in->n, n_classes = 0, n_slots = 16;
  while (n_slots < 2 * n) n_slots *= 2;
  uint32_t *cls = malloc(n * sizeof *cls), *next_cls = malloc(n * sizeof *next_cls);
  uint32_t *sig = malloc(((size_t)n + 3 * (size_t)in->n_trans) * sizeof *sig);
  uint32_t *sig_begin = malloc(((size_t)n + 1) * sizeof *sig_begin);
  int32_t *slots = malloc(n_slots * sizeof *slots), *rep = malloc(n * sizeof *rep);
  int rc = 0;
  if (!cls || !next_cls || !sig || !sig_begin || !slots || !rep) {
    rc = PD_ENOMEM;
    goto done;
  }
  for (uint32_t s = 0; s < n; s++) cls[s] = in->accepting[s] != in->accepting[0];
  for (uint32_t previous = 0;; previous = n_classes) {
    memset(slots, 0xFF, n_slots * sizeof *slots);
    sig_begin[0] = 0;
    n_classes = 0;
    for (uint32_t s = 0; s < n; s++) {
      uint32_t *mine = sig + sig_begin[s], len = signature(in, cls, s, mine), hash = 2166136261u;
      sig_begin[s + 1] = sig_begin[s] + len;
      for (uint32_t i = 0; i < len; i++) hash = (hash ^ mine[i]) * 16777619u;
      uint32_t slot = hash & (n_slots - 1);
      for (;; slot = (slot + 1) & (n_slots - 1)) {
        int32_t other = slots[slot];
        if (other == NONE) {
          slots[slot] = (int32_t)s;
          rep[n_classes] = (int32_t)s;
          next_cls[s] = n_classes++;
          break;
        }
        uint32_t other_len = sig_begin[other + 1] - sig_begin[other];
        if (other_len == len && !memcmp(sig + sig_begin[other], mine, len * sizeof *mine)) {
          next_cls[s] = next_cls[other];
          break;
        }
      }
    }
    memcpy(cls, next_cls, n * sizeof *cls);
    if (n_classes == previous) break;
  }
  /* the refined classes equal the previous ones: the signatures now hold the final targets */
  uint32_t n_trans = 0;
  for (uint32_t k = 0; k < n_classes; k++)
    n_trans += (sig_begin[rep[k] + 1] - sig_begin[rep[k]] - 1) / 3;
  if ((rc = dfa_alloc(out, n_classes, n_trans))) goto done;
  n_trans = 0;
  for (uint32_t k = 0; k < n_classes; k++) {
    const uint32_t *mine = sig + sig_begin[rep[k]], len = sig_begin[rep[k] + 1] - sig_begin[rep[k]];
    out->begin[k] = n_trans;
    out->accepting[k] = in->accepting[rep[k]];
    for (uint32_t i = 1; i < len; i += 3)
      out->trans[n_trans++] = (cp_trans){mine[i], mine[i + 1], mine[i + 2]};
  }
  out->begin[n_classes] = n_trans;
done:
  free(cls), free(next_cls), free(sig), free(sig_begin), free(slots), free(rep);
  return rc;
}

/* ---- length bounds ---- */

static uint32_t nearest(const pd_regex *re, uint32_t state, uint32_t k) {
  size_t i = (size_t)state * ((size_t)re->max_len + 1) + k;
  if (re->nearest16) return re->nearest16[i] == 0xFFFF ? UINT32_MAX : re->nearest16[i];
  return re->nearest32[i];
}

/* Whether, after `count` code points, state d can still reach a string valid for the lengths. */
static int live(const pd_regex *re, uint32_t d, uint32_t count) {
  uint32_t need = re->min_len > count ? re->min_len - count : 0; /* at least this many more */
  if (re->max_len == PD_REGEX_NO_MAX) return need == 0 || re->pumpable[d] || re->longest[d] >= need;
  return count <= re->max_len && nearest(re, d, need) <= re->max_len - count;
}

static void set_nearest(pd_regex *re, size_t i, uint32_t value) {
  if (re->nearest16)
    re->nearest16[i] = value == UINT32_MAX ? 0xFFFF : (uint16_t)value;
  else
    re->nearest32[i] = value;
}

/* With a maximum M: nearest[d][k] for k in 0..M (see the top of the file). */
static int prepare_nearest(pd_regex *re, char *err, size_t errlen) {
  uint64_t width = (uint64_t)re->max_len + 1, entries = re->n_states * width;
  if (entries > PD_REGEX_MAX_LENGTH_TABLE)
    return pd_errf(err, errlen, PD_EINVAL,
                   "maxLength %u is too large for this pattern: %u DFA states * %llu lengths is "
                   "over the limit of %u (PD_REGEX_MAX_LENGTH_TABLE)",
                   re->max_len, re->n_states, (unsigned long long)width, PD_REGEX_MAX_LENGTH_TABLE);
  if (re->max_len < 0xFFFF)
    re->nearest16 = malloc(entries * sizeof *re->nearest16);
  else
    re->nearest32 = malloc(entries * sizeof *re->nearest32);
  if (!re->nearest16 && !re->nearest32) return PD_ENOMEM;
  /* first mark exact reachability: entry [d][L] = L if d reaches acceptance in exactly L steps */
  for (uint32_t d = 0; d < re->n_states; d++)
    set_nearest(re, d * width, re->accepting[d] ? 0 : UINT32_MAX);
  for (uint32_t len = 1; len <= re->max_len; len++)
    for (uint32_t d = 0; d < re->n_states; d++) {
      uint32_t value = UINT32_MAX;
      for (uint32_t i = re->begin[d]; i < re->begin[d + 1] && value == UINT32_MAX; i++)
        if (nearest(re, re->trans[i].target, len - 1) == len - 1) value = len;
      set_nearest(re, d * width + len, value);
    }
  /* then carry the least L >= k backwards */
  for (uint32_t d = 0; d < re->n_states; d++)
    for (uint32_t k = re->max_len; k-- > 0;)
      if (nearest(re, d, k) == UINT32_MAX) set_nearest(re, d * width + k, nearest(re, d, k + 1));
  return 0;
}

/* Without a maximum: pumpable states and the longest accepting path of the others, by peeling
 * states whose successors are all known (Kahn); what is never peeled reaches a cycle. */
static int prepare_longest(pd_regex *re, const dfa *d) {
  uint32_t *rbegin = NULL, *sources = NULL, *pending = malloc(((size_t)d->n + 1) * sizeof *pending);
  uint32_t *queue = malloc(((size_t)d->n + 1) * sizeof *queue), head = 0, tail = 0;
  re->pumpable = malloc(d->n);
  re->longest = calloc(d->n, sizeof *re->longest);
  int rc = reverse_edges(d, &rbegin, &sources);
  if (rc || !pending || !queue || !re->pumpable || !re->longest) {
    rc = PD_ENOMEM;
    goto done;
  }
  for (uint32_t s = 0; s < d->n; s++) {
    re->pumpable[s] = 1;
    pending[s] = d->begin[s + 1] - d->begin[s];
    if (!pending[s]) queue[tail++] = s;
  }
  while (head < tail) {
    uint32_t t = queue[head++];
    re->pumpable[t] = 0;
    for (uint32_t i = d->begin[t]; i < d->begin[t + 1]; i++) {
      uint32_t via = re->longest[d->trans[i].target] + 1;
      if (via > re->longest[t]) re->longest[t] = via;
    }
    for (uint32_t i = rbegin[t]; i < rbegin[t + 1]; i++)
      if (--pending[sources[i]] == 0) queue[tail++] = sources[i];
  }
done:
  free(rbegin), free(sources), free(pending), free(queue);
  return rc;
}

/* ---- the API ---- */

static void compiler_free(compiler *c) {
  free(c->ranges), free(c->sets), free(c->scratch), free(c->ast), free(c->alts);
  free(c->nfa_next), free(c->nfa_set), free(c->eps), free(c->eps_begin), free(c->eps_to);
}

int pd_regex_compile(const char *pattern, size_t n, uint32_t min_len, uint32_t max_len,
                     pd_regex **out, char *err, size_t errlen) {
  if (!out || (!pattern && n))
    return pd_errf(err, errlen, PD_EINVAL, "pd_regex_compile: no pattern");
  *out = NULL;
  if (max_len != PD_REGEX_NO_MAX && min_len > max_len)
    return pd_errf(err, errlen, PD_EINVAL, "minLength %u is greater than maxLength %u", min_len,
                   max_len);
  compiler c = {.pat = (const unsigned char *)pattern, .n = n, .err = err, .errlen = errlen};
  dfa raw = {0}, trimmed = {0}, minimal = {0};
  pd_regex *re = NULL;
  int rc = parse_pattern(&c);
  if (!rc) rc = build_nfa(&c);
  if (!rc) rc = build_dfa(&c, &raw);
  if (!rc && (rc = trim(&raw, &trimmed)) == 0 && trimmed.n == 0)
    rc = pd_errf(err, errlen, PD_EINVAL, "no string matches the pattern");
  if (!rc) rc = minimize(&trimmed, &minimal);
  if (!rc && !(re = calloc(1, sizeof *re))) rc = PD_ENOMEM;
  if (!rc) {
    re->n_states = minimal.n, re->start = 0, re->min_len = min_len, re->max_len = max_len;
    re->begin = minimal.begin, re->trans = minimal.trans, re->accepting = minimal.accepting;
    minimal.begin = NULL, minimal.trans = NULL, minimal.accepting = NULL;
    dfa view = {re->n_states, re->begin[re->n_states], re->begin, re->trans, re->accepting};
    rc = max_len == PD_REGEX_NO_MAX ? prepare_longest(re, &view) : prepare_nearest(re, err, errlen);
  }
  if (!rc && !live(re, re->start, 0)) {
    if (max_len == PD_REGEX_NO_MAX)
      rc = pd_errf(err, errlen, PD_EINVAL,
                   "no string of at least %u characters matches the pattern", min_len);
    else
      rc = pd_errf(err, errlen, PD_EINVAL, "no string of %u to %u characters matches the pattern",
                   min_len, max_len);
  }
  if (rc == PD_ENOMEM) pd_errf(err, errlen, PD_ENOMEM, "out of memory compiling a pattern");
  compiler_free(&c);
  dfa_free(&raw), dfa_free(&trimmed), dfa_free(&minimal);
  if (rc) {
    pd_regex_free(re);
    return rc;
  }
  *out = re;
  return PD_OK;
}

void pd_regex_free(pd_regex *re) {
  if (!re) return;
  free(re->begin), free(re->trans), free(re->accepting);
  free(re->nearest16), free(re->nearest32), free(re->pumpable), free(re->longest);
  free(re);
}

uint32_t pd_regex_start(const pd_regex *re) {
  return re ? re->start : 0;
}

uint32_t pd_regex_states(const pd_regex *re) {
  return re ? re->n_states : 0;
}

/* The index of the first of state's transitions with hi >= cp (its end if none). */
static uint32_t first_reaching(const pd_regex *re, uint32_t state, uint32_t cp) {
  uint32_t lo = re->begin[state], hi = re->begin[state + 1];
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    if (re->trans[mid].hi < cp)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

int32_t pd_regex_next(const pd_regex *re, uint32_t state, uint32_t count, uint32_t cp) {
  if (!re || state >= re->n_states) return -1;
  uint32_t i = first_reaching(re, state, cp);
  if (i == re->begin[state + 1] || re->trans[i].lo > cp) return -1;
  uint32_t target = re->trans[i].target, after = count == UINT32_MAX ? count : count + 1;
  return live(re, target, after) ? (int32_t)target : -1;
}

int pd_regex_any(const pd_regex *re, uint32_t state, uint32_t count, uint32_t lo, uint32_t hi) {
  if (!re || state >= re->n_states || lo > hi) return 0;
  uint32_t after = count == UINT32_MAX ? count : count + 1;
  for (uint32_t i = first_reaching(re, state, lo);
       i < re->begin[state + 1] && re->trans[i].lo <= hi; i++)
    if (live(re, re->trans[i].target, after)) return 1;
  return 0;
}

int pd_regex_accepting(const pd_regex *re, uint32_t state, uint32_t count) {
  if (!re || state >= re->n_states || !re->accepting[state]) return 0;
  return count >= re->min_len && (re->max_len == PD_REGEX_NO_MAX || count <= re->max_len);
}
