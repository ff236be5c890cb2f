/* pd_json_grammar.c -- see pd_json_grammar.h. One switch on the mode per byte; a number ends on
 * the first byte that cannot continue it, and that byte is then read as what follows a value. */
#include "pd_json_grammar.h"

#include <string.h>

enum mode {
  M_START,        /* before the top-level value */
  M_VALUE,        /* a value: after ':' or after ',' in an array */
  M_ARRAY_FIRST,  /* after '[': a value or ']' */
  M_OBJECT_FIRST, /* after '{': a key or '}' */
  M_KEY,          /* after ',' in an object: a key */
  M_COLON,        /* after a key */
  M_AFTER,        /* after a value in a container: ',' or its closer */
  M_STRING,       /* inside a string */
  M_ESCAPE,       /* after a backslash in a string */
  M_HEX,          /* inside \uXXXX; sub = digits left */
  M_LITERAL,      /* inside true, false or null; sub = which, pos = bytes matched */
  M_NUMBER,       /* inside a number; sub = its part */
  M_DONE          /* the top-level value is closed */
};

enum number_part {
  N_MINUS,     /* '-': a digit must follow */
  N_ZERO,      /* a leading 0: '.', 'e' or the end */
  N_INT,       /* integer digits */
  N_DOT,       /* '.': a digit must follow */
  N_FRAC,      /* fraction digits */
  N_EXP,       /* 'e': a sign or a digit */
  N_EXP_SIGN,  /* the exponent's sign: a digit must follow */
  N_EXP_DIGITS /* exponent digits */
};

static const char *const literals[3] = {"true", "false", "null"};

/* \u escapes and UTF-16 surrogates: a high surrogate (D800-DBFF) must be followed at once by an
 * escaped low one (DC00-DFFF), and a low one may not come alone (strict parsers refuse both). */
enum surrogate {
  U_NONE,       /* not in an escape that matters */
  U_ANY,        /* \u: any code unit but a lone low surrogate */
  U_ANY_D,      /* \uD: the next digit decides */
  U_HIGH,       /* \uD8-\uDB: a high surrogate */
  U_LOW,        /* the low surrogate after a high one: DC00-DFFF */
  U_NEED_SLASH, /* after a high surrogate: '\' must come */
  U_NEED_U      /* after a high surrogate and '\': 'u' must come */
};

void pd_json_init(pd_json_state *s, int object_only) {
  memset(s, 0, sizeof *s);
  s->mode = M_START;
  s->object_only = (uint8_t)(object_only != 0);
}

static int is_ws(uint8_t b) {
  return b == ' ' || b == '\t' || b == '\n' || b == '\r';
}

static int is_digit(uint8_t b) {
  return b >= '0' && b <= '9';
}

static int is_hex(uint8_t b) {
  return is_digit(b) || (b >= 'a' && b <= 'f') || (b >= 'A' && b <= 'F');
}

static int top_is_object(const pd_json_state *s) {
  return (int)((s->stack >> (s->depth - 1)) & 1);
}

/* A value just ended. */
static void value_done(pd_json_state *s) {
  s->mode = s->depth ? M_AFTER : M_DONE;
}

static int push(pd_json_state *s, int object) {
  if (s->depth == PD_JSON_MAX_DEPTH) return 0;
  s->stack = (s->stack & ~(1ull << s->depth)) | ((uint64_t)object << s->depth);
  s->depth++;
  s->mode = object ? M_OBJECT_FIRST : M_ARRAY_FIRST;
  return 1;
}

static void pop(pd_json_state *s) {
  s->depth--;
  value_done(s);
}

/* The first byte of a value (not whitespace). */
static int value_start(pd_json_state *s, uint8_t b) {
  if (s->mode == M_START && s->object_only && b != '{') return 0;
  switch (b) {
  case '{': return push(s, 1);
  case '[': return push(s, 0);
  case '"': s->mode = M_STRING, s->key = 0, s->utf8_need = 0; return 1;
  case '-': s->mode = M_NUMBER, s->sub = N_MINUS; return 1;
  case 't':
  case 'f':
  case 'n': s->mode = M_LITERAL, s->sub = b == 't' ? 0 : b == 'f' ? 1 : 2, s->pos = 1; return 1;
  default:
    if (!is_digit(b)) return 0;
    s->mode = M_NUMBER, s->sub = b == '0' ? N_ZERO : N_INT;
    return 1;
  }
}

/* One hex digit of a \u escape (i: its place, 0 to 3). */
static int hex_digit(pd_json_state *s, uint8_t b, int i) {
  if (!is_hex(b)) return 0;
  int d = b == 'd' || b == 'D';
  if (i == 0) {
    if (s->surrogate == U_LOW) return d;
    if (d) s->surrogate = U_ANY_D;
  } else if (i == 1) {
    int v = is_digit(b) ? b - '0' : (b | 0x20) - 'a' + 10;
    if (s->surrogate == U_LOW) return v >= 0xC;
    if (s->surrogate == U_ANY_D) {
      if (v >= 0xC) return 0; /* a low surrogate alone */
      s->surrogate = v >= 8 ? U_HIGH : U_ANY;
    }
  }
  return 1;
}

/* A byte inside a string (not after a backslash). */
static int string_byte(pd_json_state *s, uint8_t b) {
  if (s->surrogate == U_NEED_SLASH) { /* a high surrogate's low half must follow */
    if (b != '\\') return 0;
    s->surrogate = U_NEED_U;
    s->mode = M_ESCAPE;
    return 1;
  }
  if (s->utf8_need) {
    if (b < s->utf8_lo || b > s->utf8_hi) return 0;
    s->utf8_need--, s->utf8_lo = 0x80, s->utf8_hi = 0xBF;
    return 1;
  }
  if (b == '"') {
    if (s->key)
      s->mode = M_COLON;
    else
      value_done(s);
    return 1;
  }
  if (b == '\\') {
    s->mode = M_ESCAPE;
    return 1;
  }
  if (b < 0x20) return 0;
  if (b < 0x80) return 1;
  /* a lead byte: how many continuation bytes, and the range of the first (RFC 3629) */
  s->utf8_lo = 0x80, s->utf8_hi = 0xBF;
  if (b >= 0xC2 && b <= 0xDF) {
    s->utf8_need = 1;
  } else if (b >= 0xE0 && b <= 0xEF) {
    s->utf8_need = 2;
    if (b == 0xE0) s->utf8_lo = 0xA0; /* no overlong forms */
    if (b == 0xED) s->utf8_hi = 0x9F; /* no surrogates */
  } else if (b >= 0xF0 && b <= 0xF4) {
    s->utf8_need = 3;
    if (b == 0xF0) s->utf8_lo = 0x90;
    if (b == 0xF4) s->utf8_hi = 0x8F; /* nothing above U+10FFFF */
  } else {
    return 0;
  }
  return 1;
}

/* A byte inside a number: 1 taken, 0 refused, -1 the number ended before this byte. */
static int number_byte(pd_json_state *s, uint8_t b) {
  switch (s->sub) {
  case N_MINUS:
    if (!is_digit(b)) return 0;
    s->sub = b == '0' ? N_ZERO : N_INT;
    return 1;
  case N_ZERO:
  case N_INT:
    if (s->sub == N_INT && is_digit(b)) return 1;
    if (b == '.') return s->sub = N_DOT, 1;
    if (b == 'e' || b == 'E') return s->sub = N_EXP, 1;
    return -1;
  case N_DOT:
    if (!is_digit(b)) return 0;
    s->sub = N_FRAC;
    return 1;
  case N_FRAC:
    if (is_digit(b)) return 1;
    if (b == 'e' || b == 'E') return s->sub = N_EXP, 1;
    return -1;
  case N_EXP:
    if (b == '+' || b == '-') return s->sub = N_EXP_SIGN, 1;
    if (!is_digit(b)) return 0;
    s->sub = N_EXP_DIGITS;
    return 1;
  case N_EXP_SIGN:
    if (!is_digit(b)) return 0;
    s->sub = N_EXP_DIGITS;
    return 1;
  default: /* N_EXP_DIGITS */ return is_digit(b) ? 1 : -1;
  }
}

int pd_json_step(void *state, uint8_t b) {
  pd_json_state *s = state;
  switch (s->mode) {
  case M_STRING: return string_byte(s, b);
  case M_ESCAPE:
    if (b == 'u') {
      s->surrogate = s->surrogate == U_NEED_U ? U_LOW : U_ANY;
      return s->mode = M_HEX, s->sub = 4, 1;
    }
    if (s->surrogate == U_NEED_U || !strchr("\"\\/bfnrt", b) || !b) return 0;
    s->mode = M_STRING;
    return 1;
  case M_HEX:
    if (!hex_digit(s, b, 4 - s->sub)) return 0;
    if (!--s->sub) {
      s->mode = M_STRING;
      s->surrogate = s->surrogate == U_HIGH ? U_NEED_SLASH : U_NONE;
    }
    return 1;
  case M_LITERAL: {
    const char *lit = literals[s->sub];
    if (b != (uint8_t)lit[s->pos]) return 0;
    if (!lit[++s->pos]) value_done(s);
    return 1;
  }
  case M_NUMBER: {
    int r = number_byte(s, b);
    if (r >= 0) return r;
    value_done(s); /* the number ended: b is what follows it */
    if (s->mode == M_DONE) return 0;
    break;
  }
  case M_DONE: return 0;
  default: break;
  }
  /* the structural modes: whitespace, then what the mode allows */
  if (is_ws(b)) return pd_json_ws_step(&s->ws_run, &s->ws_breaks, b);
  s->ws_run = s->ws_breaks = 0;
  switch (s->mode) {
  case M_START:
  case M_VALUE: return value_start(s, b);
  case M_ARRAY_FIRST:
    if (b == ']') return pop(s), 1;
    return value_start(s, b);
  case M_OBJECT_FIRST:
  case M_KEY:
    if (b == '}' && s->mode == M_OBJECT_FIRST) return pop(s), 1;
    if (b != '"') return 0;
    s->mode = M_STRING, s->key = 1, s->utf8_need = 0;
    return 1;
  case M_COLON:
    if (b != ':') return 0;
    s->mode = M_VALUE;
    return 1;
  case M_AFTER:
    if (b == ',') {
      s->mode = top_is_object(s) ? M_KEY : M_VALUE;
      return 1;
    }
    if (b == (top_is_object(s) ? '}' : ']')) return pop(s), 1;
    return 0;
  default: return 0;
  }
}

int pd_json_feed(pd_json_state *s, const void *bytes, size_t n) {
  const uint8_t *p = bytes;
  for (size_t i = 0; i < n; i++)
    if (!pd_json_step(s, p[i])) return 0;
  return 1;
}

int pd_json_done(const pd_json_state *s) {
  return s->mode == M_DONE;
}

int pd_json_complete(const pd_json_state *s) {
  if (s->mode == M_DONE) return 1;
  return s->mode == M_NUMBER && s->depth == 0 &&
         (s->sub == N_ZERO || s->sub == N_INT || s->sub == N_FRAC || s->sub == N_EXP_DIGITS);
}

int pd_json_plain_string(const pd_json_state *s) {
  return s->mode == M_STRING && !s->utf8_need && s->surrogate == U_NONE;
}
