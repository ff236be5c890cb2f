/*
 * pd_regex.h -- JSON Schema "pattern" with "minLength"/"maxLength", compiled for constrained
 * decoding: a generator emits a JSON string one code point at a time and asks, before each one,
 * whether some string satisfying the pattern and the length bounds can still be completed after
 * it. The pattern becomes a DFA over Unicode code points (0..0x10FFFF without the surrogates
 * 0xD800..0xDFFF), trimmed of dead states and minimized; the length bounds are tables per state,
 * so every query is O(1) or a binary search over one state's transitions.
 *
 * Syntax: ECMA-262 as if the 'u' flag were on (code points, not UTF-16 units), this subset:
 * literals (any UTF-8 code point), '.' (any code point but the line terminators \n \r U+2028
 * U+2029), '|', groups (...), (?:...), (?<name>...) (a plain group), the quantifiers * + ? {n}
 * {n,} {n,m} and their lazy forms (same language; bounds up to PD_REGEX_MAX_REPEAT), the escapes
 * \d \D \w \W \s \S (ECMA's ASCII \d and \w, ECMA's WhiteSpace+LineTerminator \s) \t \n \r \v \f
 * \0 \xHH \uHHHH (a surrogate pair \uD83D\uDE00 is one code point) \u{H...}, identity escapes of
 * any character but ASCII letters and digits (\. \- \/ \: ...), and classes [...] [^...] with
 * ranges and the escapes above (\b in a class is U+0008; [] matches nothing, [^] any code
 * point). '^' is allowed only at the start of a top-level alternative and '$' only at its end;
 * ^ab|cd$ means (^ab)|(cd$).
 * Annex B leniency: a '{' that does not begin a valid quantifier ("a{", "a{x}", "a{,3}") is a
 * literal, as are a lone '}' and ']'.
 * Refused by name (PD_EINVAL): backreferences (\1..\9, \k<name>), lookahead and lookbehind
 * assertions, \b and \B word boundaries, \p{...} property escapes, \c control escapes, octal
 * escapes, lone surrogates, unknown escapes of letters.
 *
 * Semantics are JSON Schema's: the pattern is not implicitly anchored; a string is valid when the
 * pattern matches somewhere in it (each alternative not anchored by '^' may start anywhere, each
 * one not anchored by '$' may end anywhere) and minLength <= its length in code points <=
 * maxLength. The empty pattern matches every string.
 *
 * Thread safety: a compiled pd_regex is immutable; any number of threads may query it at once.
 */
#ifndef PD_REGEX_H
#define PD_REGEX_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PD_REGEX_NO_MAX          UINT32_MAX /* max_len: no maxLength */
#define PD_REGEX_MAX_STATES      4096       /* DFA states while compiling (before minimizing) */
#define PD_REGEX_MAX_NFA         16384      /* NFA states (a {n,m} copies its operand) */
#define PD_REGEX_MAX_TRANSITIONS (1u << 20) /* DFA transitions (code point ranges), all told */
#define PD_REGEX_MAX_REPEAT      1000       /* the largest n or m in {n}, {n,}, {n,m} */
#define PD_REGEX_MAX_DEPTH       64         /* nested groups */
#define PD_REGEX_MAX_LENGTH_TABLE                                                                  \
  (1u << 21) /* with maxLength M: DFA states * (M + 1) entries
                                                (2 bytes each when M < 65535, else 4) */

typedef struct pd_regex pd_regex;

/* Compiles a JSON Schema "pattern" (n bytes of UTF-8, not necessarily NUL-terminated; NULL when
 * n is 0) together with minLength/maxLength (in code points; max_len PD_REGEX_NO_MAX for none).
 * *out is owned by the caller (pd_regex_free). Returns PD_OK; PD_EINVAL with a one-line reason in
 * err (capacity errlen) for a syntax error, an unsupported construct (named), a pattern too big
 * (naming the limit), min_len > max_len, or no string at all satisfying pattern and lengths;
 * PD_ENOMEM. */
int pd_regex_compile(const char *pattern, size_t n, uint32_t min_len, uint32_t max_len,
                     pd_regex **out, char *err, size_t errlen);
void pd_regex_free(pd_regex *re);

/* The state before any character. */
uint32_t pd_regex_start(const pd_regex *re);

/* The state after code point cp is appended to a string of `count` code points that led to
 * `state`; -1 if after it no string valid for pattern and lengths could follow (or be complete). */
int32_t pd_regex_next(const pd_regex *re, uint32_t state, uint32_t count, uint32_t cp);

/* 1 if pd_regex_next would accept some code point in [lo, hi] (inclusive) from (state, count),
 * else 0. For a multi-byte UTF-8 character or a \uXXXX escape that is half written. */
int pd_regex_any(const pd_regex *re, uint32_t state, uint32_t count, uint32_t lo, uint32_t hi);

/* 1 if a string of `count` code points that led to `state` is valid now (the pattern matches and
 * min_len <= count <= max_len). */
int pd_regex_accepting(const pd_regex *re, uint32_t state, uint32_t count);

/* The number of DFA states (for tests and logs). */
uint32_t pd_regex_states(const pd_regex *re);

#ifdef __cplusplus
}
#endif

#endif /* PD_REGEX_H */
