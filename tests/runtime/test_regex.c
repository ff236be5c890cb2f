/*
 * test_regex.c -- pd_regex: JSON Schema "pattern" + minLength/maxLength as a DFA over code points.
 *
 * What is tested:
 * - A table of (pattern, text, valid) cases over every supported construct (literals, '.',
 *   alternation, groups, quantifiers, escapes, classes, anchors, search semantics, Unicode,
 *   realistic schema patterns). A text is walked code point by code point with pd_regex_next
 *   from pd_regex_start; it is valid iff every step succeeds and pd_regex_accepting holds at the
 *   end. The expected column was generated with Python's re (gen: `re.search(p, s, re.ASCII) is
 *   not None`, with ECMA's '$', (?<name>) and \u{...} respelled for Python), then pasted here.
 * - The ECMA meanings where Python's re differs ('.' and line terminators, \s beyond ASCII,
 *   surrogate-pair escapes, [] and [^], \0), checked by hand against ECMA-262.
 * - Refusals: every unsupported construct, syntax errors and limits give PD_EINVAL with a reason
 *   naming them.
 * - Properties, by brute force over small alphabets, for patterns x (minLength, maxLength):
 *   (a) every string up to a length is valid by the walk iff an independent reference matcher
 *   (below: it evaluates the pattern as sets of end positions) says so and its length fits;
 *   (b) no dead ends: from every prefix the walk accepts, a breadth-first search through
 *   pd_regex_next finds a completion, which the reference matcher confirms valid;
 *   (c) pd_regex_any(state, count, lo, hi) equals the OR of pd_regex_next over [lo, hi].
 * - Length bounds alone (the empty pattern) and with patterns, counts past 65535, saturation.
 */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pd_check.h"
#include "pd_err.h"
#include "pd_regex.h"

/* Check's ck_assert records every passing check (a write each): far too slow for the loops below,
 * which use this instead. */
#define REQUIRE(cond, ...)                                                                         \
  do {                                                                                             \
    if (!(cond)) ck_abort_msg(__VA_ARGS__);                                                        \
  } while (0)

/* Decodes the UTF-8 text s (valid by construction) into code points; returns their number. */
static int decode(const char *s, uint32_t *cps, int cap) {
  const unsigned char *p = (const unsigned char *)s;
  int n = 0;
  while (*p) {
    REQUIRE(n < cap, "text too long");
    if (p[0] < 0x80)
      cps[n++] = p[0], p += 1;
    else if (p[0] < 0xE0)
      cps[n++] = (uint32_t)(p[0] & 0x1F) << 6 | (p[1] & 0x3F), p += 2;
    else if (p[0] < 0xF0)
      cps[n++] = (uint32_t)(p[0] & 0x0F) << 12 | (uint32_t)(p[1] & 0x3F) << 6 | (p[2] & 0x3F),
      p += 3;
    else
      cps[n++] = (uint32_t)(p[0] & 0x07) << 18 | (uint32_t)(p[1] & 0x3F) << 12 |
                 (uint32_t)(p[2] & 0x3F) << 6 | (p[3] & 0x3F),
      p += 4;
  }
  return n;
}

/* Whether the code points are valid: every step of the walk succeeds and the end accepts. */
static int walk(const pd_regex *re, const uint32_t *cps, int n) {
  uint32_t state = pd_regex_start(re);
  for (int i = 0; i < n; i++) {
    int32_t next = pd_regex_next(re, state, (uint32_t)i, cps[i]);
    if (next < 0) return 0;
    state = (uint32_t)next;
  }
  return pd_regex_accepting(re, state, (uint32_t)n);
}

static int walk_text(const pd_regex *re, const char *text) {
  uint32_t cps[256];
  return walk(re, cps, decode(text, cps, 256));
}

static pd_regex *compile_ok(const char *pattern, uint32_t min_len, uint32_t max_len) {
  char err[256] = "";
  pd_regex *re = NULL;
  int rc = pd_regex_compile(pattern, strlen(pattern), min_len, max_len, &re, err, sizeof err);
  ck_assert_msg(rc == PD_OK && re, "'%s' [%u, %u]: %d %s", pattern, min_len, max_len, rc, err);
  return re;
}

/* ---- the table ------------------------------------------------------------------------------ */

/* Generated with Python 3.11's re as described at the top; not edited by hand. */
static const struct {
  const char *pattern, *text;
  int valid;
} CASES[] = {
    {"abc", "abc", 1},
    {"abc", "xxabcxx", 1},
    {"abc", "ab", 0},
    {"abc", "acb", 0},
    {"abc", "", 0},
    {"abc", "ABC", 0},
    {"abc", "aabc", 1},
    {"^abc", "abc", 1},
    {"^abc", "abcd", 1},
    {"^abc", "xabc", 0},
    {"abc$", "xabc", 1},
    {"abc$", "abcx", 0},
    {"abc$", "abc", 1},
    {"^abc$", "abc", 1},
    {"^abc$", "abcc", 0},
    {"^abc$", "aabc", 0},
    {"^abc$", "", 0},
    {"", "", 1},
    {"", "anything", 1},
    {"", "\n", 1},
    {"^$", "", 1},
    {"^$", "a", 0},
    {"^$", "\n", 0},
    {"^", "", 1},
    {"^", "x", 1},
    {"$", "", 1},
    {"$", "x", 1},
    {"x*", "", 1},
    {"x*", "yyy", 1},
    {"a|b", "a", 1},
    {"a|b", "b", 1},
    {"a|b", "c", 0},
    {"a|b", "xbx", 1},
    {"a|b", "", 0},
    {"^a|b$", "ax", 1},
    {"^a|b$", "xa", 0},
    {"^a|b$", "xb", 1},
    {"^a|b$", "bx", 0},
    {"^a|b$", "b", 1},
    {"^a$|^b$", "a", 1},
    {"^a$|^b$", "b", 1},
    {"^a$|^b$", "ab", 0},
    {"^a$|^b$", "", 0},
    {"^(a|b)$", "a", 1},
    {"^(a|b)$", "b", 1},
    {"^(a|b)$", "ab", 0},
    {"^(a|b)$", "", 0},
    {"^(?:ab|cd)+$", "ab", 1},
    {"^(?:ab|cd)+$", "abcd", 1},
    {"^(?:ab|cd)+$", "abc", 0},
    {"^(?:ab|cd)+$", "", 0},
    {"^(?:ab|cd)+$", "cdab", 1},
    {"^(?<year>\\d{4})-(?<month>\\d\\d)$", "2024-05", 1},
    {"^(?<year>\\d{4})-(?<month>\\d\\d)$", "24-05", 0},
    {"^(?<year>\\d{4})-(?<month>\\d\\d)$", "2024-5", 0},
    {"^(|a)b$", "b", 1},
    {"^(|a)b$", "ab", 1},
    {"^(|a)b$", "aab", 0},
    {"^a(?:)b$", "ab", 1},
    {"^a(?:)b$", "a b", 0},
    {"^(a|ab)(c|bcd)(d*)$", "abcd", 1},
    {"^(a|ab)(c|bcd)(d*)$", "acd", 1},
    {"^(a|ab)(c|bcd)(d*)$", "abc", 1},
    {"^(a|ab)(c|bcd)(d*)$", "abd", 0},
    {"cat|dog", "hotdog", 1},
    {"cat|dog", "catalog", 1},
    {"cat|dog", "cow", 0},
    {"^.$", "a", 1},
    {"^.$", "\303\251", 1},
    {"^.$", "\344\270\255", 1},
    {"^.$", "\360\237\230\200", 1},
    {"^.$", "\n", 0},
    {"^.$", "ab", 0},
    {"^.$", "\t", 1},
    {"^.$", "", 0},
    {"^.+$", "hello", 1},
    {"^.+$", "a\nb", 0},
    {"^a.c$", "abc", 1},
    {"^a.c$", "a\nc", 0},
    {"^a.c$", "ac", 0},
    {"^a.c$", "a\344\270\255c", 1},
    {"^a*$", "", 1},
    {"^a*$", "aaaa", 1},
    {"^a*$", "ab", 0},
    {"^a+$", "", 0},
    {"^a+$", "a", 1},
    {"^a+$", "aaa", 1},
    {"^a+$", "ba", 0},
    {"^ab?c$", "ac", 1},
    {"^ab?c$", "abc", 1},
    {"^ab?c$", "abbc", 0},
    {"^a{3}$", "aa", 0},
    {"^a{3}$", "aaa", 1},
    {"^a{3}$", "aaaa", 0},
    {"^a{2,}$", "a", 0},
    {"^a{2,}$", "aa", 1},
    {"^a{2,}$", "aaaaaaa", 1},
    {"^a{2,4}$", "a", 0},
    {"^a{2,4}$", "aa", 1},
    {"^a{2,4}$", "aaaa", 1},
    {"^a{2,4}$", "aaaaa", 0},
    {"^a{0}b$", "b", 1},
    {"^a{0}b$", "ab", 0},
    {"^(ab){2}$", "abab", 1},
    {"^(ab){2}$", "ab", 0},
    {"^(ab){2}$", "ababab", 0},
    {"^a+?b*?$", "aab", 1},
    {"^a+?b*?$", "b", 0},
    {"^a+?b*?$", "a", 1},
    {"^a{2,3}?$", "aaa", 1},
    {"^a{2,3}?$", "a", 0},
    {"^(a|bc){1,2}d$", "ad", 1},
    {"^(a|bc){1,2}d$", "bcad", 1},
    {"^(a|bc){1,2}d$", "abcad", 0},
    {"^(a|bc){1,2}d$", "d", 0},
    {"^(a+)+$", "aaaa", 1},
    {"^(a+)+$", "aab", 0},
    {"^(a*b*)*c$", "c", 1},
    {"^(a*b*)*c$", "ababbac", 1},
    {"^(a*b*)*c$", "abab", 0},
    {"^x{1,2}y{0,1}z{1,}$", "xz", 1},
    {"^x{1,2}y{0,1}z{1,}$", "xxyzzz", 1},
    {"^x{1,2}y{0,1}z{1,}$", "xyy", 0},
    {"^x{1,2}y{0,1}z{1,}$", "xxxz", 0},
    {"^a{$", "a{", 1},
    {"^a{$", "a", 0},
    {"^a{x}$", "a{x}", 1},
    {"^a{x}$", "ax", 0},
    {"^a{1,2$", "a{1,2", 1},
    {"^a{1,2$", "aa", 0},
    {"^}$", "}", 1},
    {"^}$", "", 0},
    {"^]$", "]", 1},
    {"^]$", "", 0},
    {"^\\d+$", "123", 1},
    {"^\\d+$", "12a", 0},
    {"^\\d+$", "", 0},
    {"^\\d+$", "\331\243", 0},
    {"^\\D+$", "abc", 1},
    {"^\\D+$", "a1", 0},
    {"^\\w+$", "foo_Bar9", 1},
    {"^\\w+$", "foo-bar", 0},
    {"^\\w+$", "\303\251", 0},
    {"^\\W$", "-", 1},
    {"^\\W$", "a", 0},
    {"^\\W$", "\303\251", 1},
    {"^\\W$", "_", 0},
    {"^\\s$", " ", 1},
    {"^\\s$", "\t", 1},
    {"^\\s$", "\n", 1},
    {"^\\s$", "\015", 1},
    {"^\\s$", "\013", 1},
    {"^\\s$", "\014", 1},
    {"^\\s$", "a", 0},
    {"^\\S+$", "abc", 1},
    {"^\\S+$", "a b", 0},
    {"^\\S+$", "\303\251", 1},
    {"^\\t\\n\\r\\v\\f$", "\t\n\015\013\014", 1},
    {"^\\t\\n\\r\\v\\f$", "\t\n\015\013", 0},
    {"^\\x41\\x62$", "Ab", 1},
    {"^\\x41\\x62$", "AB", 0},
    {"^\\u00e9$", "\303\251", 1},
    {"^\\u00e9$", "e", 0},
    {"^\\u{1F600}$", "\360\237\230\200", 1},
    {"^\\u{1F600}$", "\360\237\230\201", 0},
    {"^\\u{4E2D}\\u{6587}$", "\344\270\255\346\226\207", 1},
    {"^\\u{4E2D}\\u{6587}$", "\344\270\255", 0},
    {"^\\^\\$\\\\\\.\\*\\+\\?\\(\\)\\[\\]\\{\\}\\|\\/\\-$", "^$\\.*+?()[]{}|/-", 1},
    {"^\\^\\$\\\\\\.\\*\\+\\?\\(\\)\\[\\]\\{\\}\\|\\/\\-$", "^$", 0},
    {"^a\\.b$", "a.b", 1},
    {"^a\\.b$", "axb", 0},
    {"^\\:\\@\\#$", ":@#", 1},
    {"^[abc]+$", "abcba", 1},
    {"^[abc]+$", "abd", 0},
    {"^[abc]+$", "", 0},
    {"^[a-z]+$", "hello", 1},
    {"^[a-z]+$", "Hello", 0},
    {"^[a-z]+$", "hello1", 0},
    {"^[^a-z]+$", "ABC", 1},
    {"^[^a-z]+$", "aB", 0},
    {"^[^a-z]+$", "\344\270\255", 1},
    {"^[^a-z]+$", "123", 1},
    {"^[a-]$", "-", 1},
    {"^[a-]$", "a", 1},
    {"^[a-]$", "b", 0},
    {"^[-a]$", "-", 1},
    {"^[-a]$", "a", 1},
    {"^[-a]$", "b", 0},
    {"^[\\d.]+$", "1.5", 1},
    {"^[\\d.]+$", "1,5", 0},
    {"^[\\w-]+$", "a-b_c", 1},
    {"^[\\w-]+$", "a b", 0},
    {"^[^\\s]+$", "ab", 1},
    {"^[^\\s]+$", "a b", 0},
    {"^[^\\s]+$", "a\tb", 0},
    {"^[\\]\\[]+$", "][", 1},
    {"^[\\]\\[]+$", "a", 0},
    {"^[\\D]$", "a", 1},
    {"^[\\D]$", "1", 0},
    {"^[^\\W]+$", "abc_1", 1},
    {"^[^\\W]+$", "a-b", 0},
    {"^[\\u00e9-\\u00eb]+$", "\303\251\303\252\303\253", 1},
    {"^[\\u00e9-\\u00eb]+$", "e", 0},
    {"^[\\u00e9-\\u00eb]+$", "\303\254", 0},
    {"^[\303\251-\303\253]+$", "\303\251\303\252\303\253", 1},
    {"^[\303\251-\303\253]+$", "e", 0},
    {"^[\344\270\200-\351\276\245]+$", "\344\270\255\346\226\207", 1},
    {"^[\344\270\200-\351\276\245]+$", "abc", 0},
    {"^[\344\270\200-\351\276\245]+$", "\344\270\255a", 0},
    {"^[\360\237\230\200-\360\237\230\202]$", "\360\237\230\201", 1},
    {"^[\360\237\230\200-\360\237\230\202]$", "\360\237\230\203", 0},
    {"^[\360\237\230\200-\360\237\230\202]$", "\303\251", 0},
    {"^[\\u0041-\\u005A]+$", "ABC", 1},
    {"^[\\u0041-\\u005A]+$", "abc", 0},
    {"^[.]$", ".", 1},
    {"^[.]$", "a", 0},
    {"^[\\b]$", "\010", 1},
    {"^[\\b]$", "b", 0},
    {"^[a-cx-z]{2}$", "ay", 1},
    {"^[a-cx-z]{2}$", "dz", 0},
    {"^[a-cx-z]{2}$", "zz", 1},
    {"^[^abc]$", "d", 1},
    {"^[^abc]$", "a", 0},
    {"^[^abc]$", "\n", 1},
    {"^[^abc]$", "\360\237\230\200", 1},
    {"[0-9]", "abc", 0},
    {"[0-9]", "ab3c", 1},
    {"^\303\251+$", "\303\251\303\251\303\251", 1},
    {"^\303\251+$", "e", 0},
    {"^\303\251+$", "", 0},
    {"\344\270\255", "\344\270\255\346\226\207", 1},
    {"\344\270\255", "\346\226\207", 0},
    {"^\360\237\230\200{2}$", "\360\237\230\200\360\237\230\200", 1},
    {"^\360\237\230\200{2}$", "\360\237\230\200", 0},
    {"^caf\303\251$", "caf\303\251", 1},
    {"^caf\303\251$", "cafe", 0},
    {"^[A-Z]{2}-\\d{4}$", "AB-1234", 1},
    {"^[A-Z]{2}-\\d{4}$", "Ab-1234", 0},
    {"^[A-Z]{2}-\\d{4}$", "AB-123", 0},
    {"^[A-Z]{2}-\\d{4}$", "ABC-1234", 0},
    {"^[A-Z]{2}-\\d{4}$", "AB-12345", 0},
    {"^\\+?[1-9]\\d{1,14}$", "+14155552671", 1},
    {"^\\+?[1-9]\\d{1,14}$", "14155552671", 1},
    {"^\\+?[1-9]\\d{1,14}$", "+0123", 0},
    {"^\\+?[1-9]\\d{1,14}$", "1", 0},
    {"^\\+?[1-9]\\d{1,14}$", "+1234567890123456", 0},
    {"^\\+?[1-9]\\d{1,14}$", "12", 1},
    {"^[a-z0-9_-]{3,16}$", "user_1", 1},
    {"^[a-z0-9_-]{3,16}$", "ab", 0},
    {"^[a-z0-9_-]{3,16}$", "a-very-long-username-here", 0},
    {"^[a-z0-9_-]{3,16}$", "User", 0},
    {"^[a-z0-9_-]{3,16}$", "abc", 1},
    {"^\\d{4}-\\d{2}-\\d{2}$", "2024-01-31", 1},
    {"^\\d{4}-\\d{2}-\\d{2}$", "2024-1-31", 0},
    {"^\\d{4}-\\d{2}-\\d{2}$", "2024-01-31T", 0},
    {"^\\d{4}-\\d{2}-\\d{2}$", "abcd-ef-gh", 0},
    {"^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", "a@b.co", 1},
    {"^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", "a@b", 0},
    {"^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", "a b@c.d", 0},
    {"^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", "@b.c", 0},
    {"^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", "a@@b.c", 0},
    {"^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", "first.last@sub.example.org", 1},
    {"^#[0-9a-fA-F]{6}$", "#a1B2c3", 1},
    {"^#[0-9a-fA-F]{6}$", "#a1B2c", 0},
    {"^#[0-9a-fA-F]{6}$", "#ggg000", 0},
    {"^#[0-9a-fA-F]{6}$", "a1B2c3", 0},
    {"^(?:[01]\\d|2[0-3]):[0-5]\\d$", "00:00", 1},
    {"^(?:[01]\\d|2[0-3]):[0-5]\\d$", "23:59", 1},
    {"^(?:[01]\\d|2[0-3]):[0-5]\\d$", "24:00", 0},
    {"^(?:[01]\\d|2[0-3]):[0-5]\\d$", "9:30", 0},
    {"^(?:[01]\\d|2[0-3]):[0-5]\\d$", "12:60", 0},
    {"^(?:[01]\\d|2[0-3]):[0-5]\\d$", "19:05", 1},
    {"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
     "123e4567-e89b-12d3-a456-426614174000", 1},
    {"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
     "123e4567-e89b-12d3-a456-42661417400", 0},
    {"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
     "123e4567e89b12d3a456426614174000", 0},
    {"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
     "$",
     "example.com", 1},
    {"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
     "$",
     "a", 1},
    {"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
     "$",
     "a-.com", 0},
    {"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
     "$",
     "-a.com", 0},
    {"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
     "$",
     "sub.example-site.org", 1},
    {"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
     "$",
     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 1},
    {"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
     "$",
     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 0},
    {"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
     "$",
     "a..b", 0},
    {"^https?://[^\\s/$.?#].[^\\s]*$", "http://example.com", 1},
    {"^https?://[^\\s/$.?#].[^\\s]*$", "https://a.b/c d", 0},
    {"^https?://[^\\s/$.?#].[^\\s]*$", "ftp://x", 0},
    {"^https?://[^\\s/$.?#].[^\\s]*$", "http://", 0},
    {"^[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\\.[a-zA-Z]{2,}$", "john.doe@example.com", 1},
    {"^[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\\.[a-zA-Z]{2,}$", "x@y.z", 0},
    {"^[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\\.[a-zA-Z]{2,}$", "bad@domain", 0},
    {"^(\\d{1,3}\\.){3}\\d{1,3}$", "192.168.0.1", 1},
    {"^(\\d{1,3}\\.){3}\\d{1,3}$", "1.2.3", 0},
    {"^(\\d{1,3}\\.){3}\\d{1,3}$", "1234.1.1.1", 0},
    {"^(\\d{1,3}\\.){3}\\d{1,3}$", "1.2.3.4.5", 0},
    {"^[A-Z][a-z]*( [A-Z][a-z]*)*$", "Hello World", 1},
    {"^[A-Z][a-z]*( [A-Z][a-z]*)*$", "hello", 0},
    {"^[A-Z][a-z]*( [A-Z][a-z]*)*$", "Hello  World", 0},
    {"^[A-Z][a-z]*( [A-Z][a-z]*)*$", "A B C", 1},
    {"^-?(0|[1-9]\\d*)(\\.\\d+)?$", "0", 1},
    {"^-?(0|[1-9]\\d*)(\\.\\d+)?$", "-12.50", 1},
    {"^-?(0|[1-9]\\d*)(\\.\\d+)?$", "01", 0},
    {"^-?(0|[1-9]\\d*)(\\.\\d+)?$", "1.", 0},
    {"^-?(0|[1-9]\\d*)(\\.\\d+)?$", "3.14", 1},
    {"^v\\d+\\.\\d+\\.\\d+(-[0-9A-Za-z.-]+)?$", "v1.2.3", 1},
    {"^v\\d+\\.\\d+\\.\\d+(-[0-9A-Za-z.-]+)?$", "v1.2.3-rc.1", 1},
    {"^v\\d+\\.\\d+\\.\\d+(-[0-9A-Za-z.-]+)?$", "v1.2", 0},
    {"^v\\d+\\.\\d+\\.\\d+(-[0-9A-Za-z.-]+)?$", "1.2.3", 0},
};

START_TEST(table_agrees_with_python_re) {
  const char *last = NULL;
  pd_regex *re = NULL;
  for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) {
    if (!last || strcmp(last, CASES[i].pattern)) {
      pd_regex_free(re);
      re = compile_ok(CASES[i].pattern, 0, PD_REGEX_NO_MAX);
      last = CASES[i].pattern;
    }
    ck_assert_msg(walk_text(re, CASES[i].text) == CASES[i].valid, "/%s/ on \"%s\": expected %d",
                  CASES[i].pattern, CASES[i].text, CASES[i].valid);
  }
  pd_regex_free(re);
}
END_TEST

/* Where ECMA-262 and Python's re part ways; the expectations follow ECMA-262 (u flag). */
START_TEST(ecma_meanings) {
  const struct {
    const char *pattern;
    uint32_t cps[4];
    int n, valid;
  } cases[] = {
      {"^.$", {'\r'}, 1, 0},
      {"^.$", {0x2028}, 1, 0},
      {"^.$", {0x2029}, 1, 0},
      {"^.$", {0x85}, 1, 1},
      {"^.$", {0x10FFFF}, 1, 1},
      {"^.$", {0xE000}, 1, 1},
      {"^\\s$", {0xA0}, 1, 1},
      {"^\\s$", {0xFEFF}, 1, 1},
      {"^\\s$", {0x3000}, 1, 1},
      {"^\\s$", {0x2028}, 1, 1},
      {"^\\s$", {0x200A}, 1, 1},
      {"^\\s$", {0x1680}, 1, 1},
      {"^\\s$", {0x85}, 1, 0},
      {"^\\s$", {0x180E}, 1, 0},
      {"^\\s$", {0x1C}, 1, 0},
      {"^\\S$", {0xA0}, 1, 0},
      {"^\\S$", {0x85}, 1, 1},
      {"^\\W$", {0x1F600}, 1, 1},
      {"^\\uD83D\\uDE00$", {0x1F600}, 1, 1},
      {"^\\uD83D\\uDE00$", {0xD83D, 0xDE00}, 2, 0},
      {"^[\\uD83D\\uDE00-\\uD83D\\uDE02]$", {0x1F601}, 1, 1},
      {"^[^]$", {'\n'}, 1, 1},
      {"^[^]$", {0x10FFFF}, 1, 1},
      {"^[^]$", {0}, 0, 0},
      {"a[]|b", {'a'}, 1, 0},
      {"a[]|b", {'b'}, 1, 1},
      {"^a\\0b$", {'a', 0, 'b'}, 3, 1},
      {"^[\\0-\\x1F]+$", {0, 0x1F}, 2, 1},
      {"^[^a]$", {0x10FFFF}, 1, 1},
      {"^[^a]$", {'a'}, 1, 0},
      {"^\\u{10FFFF}$", {0x10FFFF}, 1, 1},
      {"^\\u{0000041}$", {'A'}, 1, 1},
      {"^.*$", {'a', '\r'}, 2, 0},
      {"a.b", {'a', 0x2029, 'b'}, 3, 0},
      {"^[\\s\\S]{2}$", {0x2028, 0x10FFFF}, 2, 1},
      {"^x{,2}$", {'x', '{', ',', '2'}, 4, 0}, /* Annex B: "x{,2}" is literal, not {0,2} */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    pd_regex *re = compile_ok(cases[i].pattern, 0, PD_REGEX_NO_MAX);
    ck_assert_msg(walk(re, cases[i].cps, cases[i].n) == cases[i].valid, "/%s/ case %zu",
                  cases[i].pattern, i);
    pd_regex_free(re);
  }
  pd_regex *re = compile_ok("^x{,2}$", 0, PD_REGEX_NO_MAX);
  ck_assert(walk_text(re, "x{,2}"));
  pd_regex_free(re);
  /* an embedded NUL in the pattern is a literal */
  char err[128];
  ck_assert_int_eq(pd_regex_compile("^a\0b$", 5, 0, PD_REGEX_NO_MAX, &re, err, sizeof err), PD_OK);
  ck_assert(walk(re, (uint32_t[]){'a', 0, 'b'}, 3));
  pd_regex_free(re);
}
END_TEST

/* ---- refusals ------------------------------------------------------------------------------- */

START_TEST(refusals_name_the_construct) {
  static const struct {
    const char *pattern;
    uint32_t min_len, max_len;
    const char *says;
  } bad[] = {
      {"(a)\\1", 0, PD_REGEX_NO_MAX, "backreferences are not supported"},
      {"(?<n>a)\\k<n>", 0, PD_REGEX_NO_MAX, "backreferences are not supported"},
      {"a(?=b)", 0, PD_REGEX_NO_MAX, "lookahead assertions"},
      {"a(?!b)", 0, PD_REGEX_NO_MAX, "lookahead assertions"},
      {"(?<=a)b", 0, PD_REGEX_NO_MAX, "lookbehind assertions"},
      {"(?<!a)b", 0, PD_REGEX_NO_MAX, "lookbehind assertions"},
      {"\\bword", 0, PD_REGEX_NO_MAX, "\\b word boundaries are not supported"},
      {"a\\B", 0, PD_REGEX_NO_MAX, "\\B word boundaries"},
      {"\\p{L}", 0, PD_REGEX_NO_MAX, "\\p{...}"},
      {"[\\P{L}]", 0, PD_REGEX_NO_MAX, "\\p{...}"},
      {"\\cJ", 0, PD_REGEX_NO_MAX, "\\c control escapes"},
      {"\\q", 0, PD_REGEX_NO_MAX, "unknown escape '\\q'"},
      {"[\\q]", 0, PD_REGEX_NO_MAX, "unknown escape '\\q'"},
      {"\\01", 0, PD_REGEX_NO_MAX, "octal escapes"},
      {"[\\1]", 0, PD_REGEX_NO_MAX, "octal escapes"},
      {"a^b", 0, PD_REGEX_NO_MAX, "'^' is supported only at the start"},
      {"(^a)", 0, PD_REGEX_NO_MAX, "'^' is supported only at the start"},
      {"^^a", 0, PD_REGEX_NO_MAX, "'^' is supported only at the start"},
      {"a$b", 0, PD_REGEX_NO_MAX, "'$' is supported only at the end"},
      {"(a$)", 0, PD_REGEX_NO_MAX, "'$' is supported only at the end"},
      {"a$*", 0, PD_REGEX_NO_MAX, "'$' is supported only at the end"},
      {"(ab", 0, PD_REGEX_NO_MAX, "missing ')'"},
      {"((a)|b", 0, PD_REGEX_NO_MAX, "missing ')'"},
      {"ab)", 0, PD_REGEX_NO_MAX, "unmatched ')'"},
      {"*a", 0, PD_REGEX_NO_MAX, "nothing to repeat"},
      {"a|+", 0, PD_REGEX_NO_MAX, "nothing to repeat"},
      {"(?:?)", 0, PD_REGEX_NO_MAX, "nothing to repeat"},
      {"{2}", 0, PD_REGEX_NO_MAX, "nothing to repeat"},
      {"^*", 0, PD_REGEX_NO_MAX, "nothing to repeat"},
      {"a**", 0, PD_REGEX_NO_MAX, "a quantifier cannot follow a quantifier"},
      {"a{2}{3}", 0, PD_REGEX_NO_MAX, "a quantifier cannot follow a quantifier"},
      {"a*?+", 0, PD_REGEX_NO_MAX, "a quantifier cannot follow a quantifier"},
      {"[z-a]", 0, PD_REGEX_NO_MAX, "reversed range"},
      {"[a-", 0, PD_REGEX_NO_MAX, "unterminated character class"},
      {"[", 0, PD_REGEX_NO_MAX, "unterminated character class"},
      {"[\\d-z]", 0, PD_REGEX_NO_MAX, "cannot bound a range"},
      {"a{3,2}", 0, PD_REGEX_NO_MAX, "n greater than m"},
      {"a{1001}", 0, PD_REGEX_NO_MAX, "over the limit of 1000"},
      {"a{2,99999999999}", 0, PD_REGEX_NO_MAX, "over the limit of 1000"},
      {"\\x4", 0, PD_REGEX_NO_MAX, "\\x must be followed by two hex digits"},
      {"\\u12", 0, PD_REGEX_NO_MAX, "\\u must be followed"},
      {"\\u{}", 0, PD_REGEX_NO_MAX, "\\u{ must be followed"},
      {"\\u{110000}", 0, PD_REGEX_NO_MAX, "above U+10FFFF"},
      {"\\uD800", 0, PD_REGEX_NO_MAX, "lone surrogate"},
      {"\\uDE00\\uD83D", 0, PD_REGEX_NO_MAX, "lone surrogate"},
      {"(?x)", 0, PD_REGEX_NO_MAX, "unknown group syntax"},
      {"(?<1a>x)", 0, PD_REGEX_NO_MAX, "invalid group name"},
      {"(?<a", 0, PD_REGEX_NO_MAX, "invalid group name"},
      {"a\\", 0, PD_REGEX_NO_MAX, "'\\' at the end of the pattern"},
      {"a\xff", 0, PD_REGEX_NO_MAX, "not valid UTF-8"},
      {"\xed\xa0\x80", 0, PD_REGEX_NO_MAX, "not valid UTF-8"}, /* a surrogate in UTF-8 */
      {"[\xc3]", 0, PD_REGEX_NO_MAX, "not valid UTF-8"},
      {"(a|b)*a(a|b){12}", 0, PD_REGEX_NO_MAX, "PD_REGEX_MAX_STATES"},
      {"(a{1000}){20}", 0, PD_REGEX_NO_MAX, "PD_REGEX_MAX_NFA"},
      {"^[a-z]{0,1000}$", 0, 100000, "maxLength 100000 is too large"},
      {"a", 5, 3, "minLength 5 is greater than maxLength 3"},
      {"^a{5}$", 0, 3, "no string of 0 to 3 characters matches the pattern"},
      {"^a{2}$", 3, PD_REGEX_NO_MAX, "no string of at least 3 characters matches the pattern"},
      {"^(ab)+$", 3, 3, "no string of 3 to 3 characters"},
      {"a", 0, 0, "no string of 0 to 0 characters"},
      {"[]", 0, PD_REGEX_NO_MAX, "no string matches the pattern"},
      {"^a[^\\s\\S]b", 0, PD_REGEX_NO_MAX, "no string matches the pattern"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    static char not_null;
    char err[256] = "";
    pd_regex *re = (pd_regex *)(void *)&not_null; /* must come back NULL */
    int rc = pd_regex_compile(bad[i].pattern, strlen(bad[i].pattern), bad[i].min_len,
                              bad[i].max_len, &re, err, sizeof err);
    ck_assert_msg(rc == PD_EINVAL && !re, "/%s/: rc %d", bad[i].pattern, rc);
    ck_assert_msg(strstr(err, bad[i].says), "/%s/: \"%s\" does not say \"%s\"", bad[i].pattern, err,
                  bad[i].says);
    ck_assert_msg(!strchr(err, '\n'), "/%s/: more than one line", bad[i].pattern);
  }
  /* groups nested too deep */
  char deep[2 * PD_REGEX_MAX_DEPTH + 8], err[256];
  pd_regex *re;
  memset(deep, '(', PD_REGEX_MAX_DEPTH + 1);
  memset(deep + PD_REGEX_MAX_DEPTH + 1, ')', PD_REGEX_MAX_DEPTH + 1);
  ck_assert_int_eq(
      pd_regex_compile(deep, 2 * PD_REGEX_MAX_DEPTH + 2, 0, PD_REGEX_NO_MAX, &re, err, sizeof err),
      PD_EINVAL);
  ck_assert_ptr_nonnull(strstr(err, "PD_REGEX_MAX_DEPTH"));
  ck_assert_int_eq(
      pd_regex_compile(deep + 1, 2 * PD_REGEX_MAX_DEPTH, 0, PD_REGEX_NO_MAX, &re, err, sizeof err),
      PD_OK);
  pd_regex_free(re);
  /* a tiny error buffer is fine */
  ck_assert_int_eq(pd_regex_compile("(", 1, 0, PD_REGEX_NO_MAX, &re, NULL, 0), PD_EINVAL);
  ck_assert_int_eq(pd_regex_compile("(", 1, 0, PD_REGEX_NO_MAX, &re, err, 4), PD_EINVAL);
  ck_assert_uint_eq(strlen(err), 3);
}
END_TEST

/* ---- a reference matcher -------------------------------------------------------------------- */

/* Evaluates a small pattern (ASCII literals, '.', [...] with ranges and ^, (...), (?:...), '|',
 * * + ? {n} {n,} {n,m}, a top-level ^ and $) on a text while reading it: each function maps the
 * set of positions where its part may begin (bit i: before text[i]) to the set where it may end.
 * Repetition re-reads the operand from its start. Texts of at most 30 code points. */
typedef struct ref_matcher {
  const char *p;
  size_t pos;
  const uint32_t *text;
  int len;
} ref_matcher;

static uint32_t ref_disjunction(ref_matcher *m, uint32_t begins);

/* The positions i whose text[i] is in the class at m->pos (which it skips). */
static uint32_t ref_class(ref_matcher *m) {
  uint32_t lo[16], hi[16], in = 0, n = 0;
  int negate = m->p[++m->pos] == '^';
  m->pos += (size_t)negate;
  while (m->p[m->pos] != ']') {
    lo[n] = hi[n] = (unsigned char)m->p[m->pos++];
    if (m->p[m->pos] == '-' && m->p[m->pos + 1] != ']')
      hi[n] = (unsigned char)m->p[m->pos + 1], m->pos += 2;
    n++;
  }
  m->pos++;
  for (int i = 0; i < m->len; i++) {
    int member = 0;
    for (uint32_t k = 0; k < n; k++) member |= m->text[i] >= lo[k] && m->text[i] <= hi[k];
    if (member != negate) in |= 1u << i;
  }
  return in;
}

static uint32_t ref_atom(ref_matcher *m, uint32_t begins) {
  char ch = m->p[m->pos];
  uint32_t in = 0;
  if (ch == '(') {
    m->pos += m->p[m->pos + 1] == '?' ? 3 : 1;
    uint32_t ends = ref_disjunction(m, begins);
    m->pos++; /* ')' */
    return ends;
  }
  if (ch == '[') {
    in = ref_class(m);
  } else {
    m->pos++;
    for (int i = 0; i < m->len; i++)
      if (ch == '.' ? m->text[i] != '\n' : m->text[i] == (uint32_t)ch) in |= 1u << i;
  }
  return (begins & in) << 1;
}

static uint32_t ref_term(ref_matcher *m, uint32_t begins) {
  size_t atom = m->pos;
  uint32_t ends = ref_atom(m, begins);
  int min, max; /* max -1: none */
  char q = m->p[m->pos];
  if (q == '*')
    min = 0, max = -1, m->pos++;
  else if (q == '+')
    min = 1, max = -1, m->pos++;
  else if (q == '?')
    min = 0, max = 1, m->pos++;
  else if (q == '{') {
    char *end;
    min = (int)strtol(m->p + m->pos + 1, &end, 10);
    max = *end == ',' ? (end[1] == '}' ? -1 : (int)strtol(end + 1, &end, 10)) : min;
    m->pos = (size_t)(strchr(end, '}') - m->p) + 1;
  } else {
    return ends;
  }
  size_t after = m->pos;
  for (int i = 0; i < min; i++) m->pos = atom, begins = ref_atom(m, begins);
  for (int i = min; max < 0 || i < max; i++) {
    m->pos = atom;
    uint32_t more = begins | ref_atom(m, begins);
    if (more == begins) break;
    begins = more;
  }
  m->pos = after;
  return begins;
}

static uint32_t ref_sequence(ref_matcher *m, uint32_t begins) {
  while (m->p[m->pos] && !strchr("|)$", m->p[m->pos])) begins = ref_term(m, begins);
  return begins;
}

static uint32_t ref_disjunction(ref_matcher *m, uint32_t begins) {
  uint32_t ends = ref_sequence(m, begins);
  while (m->p[m->pos] == '|') m->pos++, ends |= ref_sequence(m, begins);
  return ends;
}

static int ref_matches(const char *pattern, const uint32_t *text, int len) {
  REQUIRE(len <= 30, "reference: text too long");
  ref_matcher m = {pattern, 0, text, len};
  uint32_t anywhere = (2u << len) - 1;
  int found = 0;
  for (;;) {
    int anchored = m.p[m.pos] == '^';
    m.pos += (size_t)anchored;
    uint32_t ends = ref_sequence(&m, anchored ? 1u : anywhere);
    if (m.p[m.pos] == '$')
      m.pos++, found |= (int)(ends >> len) & 1;
    else
      found |= ends != 0;
    if (m.p[m.pos] != '|') return found;
    m.pos++;
  }
}

/* ---- properties by brute force -------------------------------------------------------------- */

static const char *const PROPERTY_PATTERNS[] = {
    "",
    "a",
    "^a",
    "c$",
    "^ab|c$",
    "^(ab|c)*$",
    "^a+b?c{1,3}$",
    "(a|b)*c",
    "^[ab]{2,4}$",
    "^.b",
    "a.c",
    "[^a]b$",
    "^(a|ab)(c|bc)?$",
    "^(a*b*)*c$",
    "^(?:a|bc)+$",
    "b{2,}",
    "^a?b?c?$",
    "^[a-b]*c[^c]$",
    "^(a{2}|b){1,3}$",
    "^(.a|b.)*$",
};
static const uint32_t LENGTHS[][2] = {
    {0, PD_REGEX_NO_MAX}, {3, PD_REGEX_NO_MAX}, {0, 0}, {0, 3}, {2, 5}, {4, 4}};
static const uint32_t ENUM_ALPHABET[] = {'a', 'b', 'c', '\n'};
/* every code point outside a, b, c and the line terminators behaves like 'z' in these patterns,
 * and every line terminator like '\n': completions over these reach every DFA transition */
static const uint32_t EXTEND_ALPHABET[] = {'a', 'b', 'c', 'z', '\n'};
#define ENUM_MAX_LEN   7
#define MAX_COMPLETION 24

typedef struct property_run {
  const char *pattern;
  uint32_t min_len, max_len;
  const pd_regex *re;
  int32_t *completion_len; /* per (state, count): -2 not searched, -1 none, else its length */
  uint32_t *completions;   /* per (state, count): MAX_COMPLETION code points */
  uint32_t text[ENUM_MAX_LEN + MAX_COMPLETION];
  long strings, live_prefixes;
} property_run;

static int length_fits(const property_run *r, uint32_t n) {
  return n >= r->min_len && (r->max_len == PD_REGEX_NO_MAX || n <= r->max_len);
}

typedef struct bfs_node {
  uint32_t state, count;
  int32_t parent;
  uint32_t cp; /* the code point from the parent */
} bfs_node;

/* A shortest w over EXTEND_ALPHABET taking (state, count) to acceptance (its length, or -1), by
 * breadth-first search through pd_regex_next over (state, count) pairs; without a maximum, counts
 * past min_len are one (only the state matters there). */
static int find_completion(const property_run *r, uint32_t state, uint32_t count, uint32_t *w) {
  enum { CAP = 16 };
  uint32_t n_states = pd_regex_states(r->re), max_nodes = n_states * (CAP + 1) + 1;
  bfs_node *nodes = malloc(max_nodes * sizeof *nodes);
  uint8_t *seen = calloc((size_t)n_states * (CAP + 1), 1);
  uint32_t head = 0, tail = 0;
  int found = -1;
  nodes[tail++] = (bfs_node){state, count, -1, 0};
  while (head < tail && found < 0) {
    uint32_t at = head++;
    if (pd_regex_accepting(r->re, nodes[at].state, nodes[at].count)) {
      found = (int)at;
      break;
    }
    for (size_t k = 0; k < sizeof EXTEND_ALPHABET / sizeof EXTEND_ALPHABET[0]; k++) {
      int32_t next = pd_regex_next(r->re, nodes[at].state, nodes[at].count, EXTEND_ALPHABET[k]);
      if (next < 0) continue;
      uint32_t c = nodes[at].count + 1, key = c;
      if (r->max_len == PD_REGEX_NO_MAX && key > r->min_len) key = r->min_len;
      REQUIRE(key <= CAP, "search: count %u over the cap", key);
      if (seen[(size_t)next * (CAP + 1) + key]++) continue;
      REQUIRE(tail < max_nodes, "search: too many nodes");
      nodes[tail++] = (bfs_node){(uint32_t)next, c, (int32_t)at, EXTEND_ALPHABET[k]};
    }
  }
  int len = 0;
  for (int at = found; at >= 0 && nodes[at].parent >= 0; at = nodes[at].parent) len++;
  REQUIRE(len <= MAX_COMPLETION, "search: completion too long");
  for (int at = found, i = len; at >= 0 && nodes[at].parent >= 0; at = nodes[at].parent)
    w[--i] = nodes[at].cp;
  free(seen), free(nodes);
  return found < 0 ? -1 : len;
}

/* Every string over ENUM_ALPHABET of length `depth` .. ENUM_MAX_LEN extending r->text[0..depth),
 * which led to `state` (or to a refusal: state -1). */
static void enumerate(property_run *r, int depth, int32_t state) {
  uint32_t n = (uint32_t)depth;
  int valid = state >= 0 && pd_regex_accepting(r->re, (uint32_t)state, n);
  int expected = ref_matches(r->pattern, r->text, depth) && length_fits(r, n);
  r->strings++;
  REQUIRE(valid == expected, "(a) /%s/ [%u, %u] length %d: walk %d, reference %d", r->pattern,
          r->min_len, r->max_len, depth, valid, expected);
  if (state >= 0) { /* (b): a live prefix can be completed */
    size_t key = (size_t)state * (ENUM_MAX_LEN + 1) + n;
    uint32_t *w = r->completions + key * MAX_COMPLETION;
    if (r->completion_len[key] == -2)
      r->completion_len[key] = find_completion(r, (uint32_t)state, n, w);
    int len = r->completion_len[key];
    REQUIRE(len >= 0, "(b) /%s/ [%u, %u]: a dead end after %d code points", r->pattern, r->min_len,
            r->max_len, depth);
    memcpy(r->text + depth, w, (size_t)len * sizeof *w);
    REQUIRE(ref_matches(r->pattern, r->text, depth + len) && length_fits(r, n + (uint32_t)len),
            "(b) /%s/ [%u, %u]: the completion is not valid", r->pattern, r->min_len, r->max_len);
    r->live_prefixes++;
  }
  if (depth == ENUM_MAX_LEN) return;
  for (size_t k = 0; k < sizeof ENUM_ALPHABET / sizeof ENUM_ALPHABET[0]; k++) {
    r->text[depth] = ENUM_ALPHABET[k];
    enumerate(r, depth + 1,
              state < 0 ? -1 : pd_regex_next(r->re, (uint32_t)state, n, ENUM_ALPHABET[k]));
  }
}

START_TEST(brute_force_agrees_and_has_no_dead_ends) {
  long strings = 0, live = 0, refused = 0;
  for (size_t p = 0; p < sizeof PROPERTY_PATTERNS / sizeof PROPERTY_PATTERNS[0]; p++)
    for (size_t l = 0; l < sizeof LENGTHS / sizeof LENGTHS[0]; l++) {
      property_run r = {
          PROPERTY_PATTERNS[p], LENGTHS[l][0], LENGTHS[l][1], NULL, NULL, NULL, {0}, 0, 0};
      pd_regex *re;
      char err[256];
      int rc = pd_regex_compile(r.pattern, strlen(r.pattern), r.min_len, r.max_len, &re, err,
                                sizeof err);
      if (rc) { /* only where nothing fits: then no enumerated string may be valid */
        ck_assert_msg(rc == PD_EINVAL && strstr(err, "no string"), "/%s/: %s", r.pattern, err);
        ck_assert_uint_le(r.max_len, ENUM_MAX_LEN); /* the enumeration covers every length */
        enumerate(&r, 0, -1);
        refused++;
        continue;
      }
      r.re = re;
      size_t keys = (size_t)pd_regex_states(re) * (ENUM_MAX_LEN + 1);
      r.completion_len = malloc(keys * sizeof *r.completion_len);
      r.completions = malloc(keys * MAX_COMPLETION * sizeof *r.completions);
      for (size_t k = 0; k < keys; k++) r.completion_len[k] = -2;
      enumerate(&r, 0, (int32_t)pd_regex_start(re));
      strings += r.strings, live += r.live_prefixes;
      free(r.completion_len), free(r.completions);
      pd_regex_free(re);
    }
  ck_assert_int_gt(live, strings / 10);
  ck_assert_int_gt(refused, 0); /* e.g. "a" with maxLength 0 */
}
END_TEST

static uint32_t random_below(uint64_t *rng, uint32_t n) {
  *rng = *rng * 6364136223846793005ull + 1442695040888963407ull;
  return (uint32_t)(*rng >> 33) % n;
}

/* (c): pd_regex_any against the OR of pd_regex_next, from states reached by random walks. */
START_TEST(any_equals_next_over_the_range) {
  static const struct {
    const char *pattern;
    uint32_t min_len, max_len;
  } cases[] = {
      {"^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", 0, PD_REGEX_NO_MAX},
      {"^.{2,5}$", 0, PD_REGEX_NO_MAX},
      {"[\\u00e9-\\u00eb\\u4e00-\\u9fa5]+x", 0, 12},
      {"^\\w+\\s\\d$", 3, PD_REGEX_NO_MAX},
      {"^(\\u{1F600}|[a-c]|\\u2028)*$", 2, 6},
      {"", 1, 3},
  };
  static const uint32_t probes[] = {'a',  'b',  'c',    'x',     '@',    '.',  ' ',    '1',
                                    '\n', 0xE9, 0x4E2D, 0x1F600, 0x2028, 0xA0, 0xFFFF, 0x10FFFF};
  static const uint32_t anchors[] = {0,      '0',    '@',     'a',     'z',    0x80,
                                     0xE0,   0x1F00, 0x2000,  0x4E00,  0x9F00, 0xD700,
                                     0xDF80, 0xFEF0, 0x1F5F0, 0x10FF00};
  uint64_t rng = 0x9E3779B97F4A7C15ull;
  long checks = 0;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    pd_regex *re = compile_ok(cases[i].pattern, cases[i].min_len, cases[i].max_len);
    uint32_t state = pd_regex_start(re), count = 0;
    for (int step = 0; step < 12; step++) {
      for (int k = 0; k < 25; k++) {
        uint32_t lo = anchors[random_below(&rng, 16)] + random_below(&rng, 200),
                 hi = lo + random_below(&rng, k < 20 ? 64 : 5000);
        if (hi > 0x10FFFF) hi = 0x10FFFF;
        int any = 0;
        for (uint32_t cp = lo; cp <= hi && !any; cp++)
          if (cp < 0xD800 || cp > 0xDFFF) any = pd_regex_next(re, state, count, cp) >= 0;
        REQUIRE(pd_regex_any(re, state, count, lo, hi) == any,
                "/%s/ state %u count %u [%x, %x]: expected %d", cases[i].pattern, state, count, lo,
                hi, any);
        checks++;
      }
      /* step on with a random probe the DFA allows, if any */
      int32_t next = -1;
      for (int tries = 0; tries < 32 && next < 0; tries++)
        next = pd_regex_next(re, state, count, probes[random_below(&rng, 16)]);
      if (next < 0) break;
      state = (uint32_t)next, count++;
    }
    /* the whole domain, once per pattern from the start */
    int any = 0;
    for (uint32_t cp = 0; cp <= 0x10FFFF && !any; cp++)
      if (cp < 0xD800 || cp > 0xDFFF) any = pd_regex_next(re, pd_regex_start(re), 0, cp) >= 0;
    ck_assert_int_eq(pd_regex_any(re, pd_regex_start(re), 0, 0, 0x10FFFF), any);
    ck_assert_int_eq(pd_regex_any(re, pd_regex_start(re), 0, 5, 4), 0); /* an empty range */
    pd_regex_free(re);
  }
  ck_assert_int_gt(checks, 1000);
}
END_TEST

/* ---- length bounds -------------------------------------------------------------------------- */

START_TEST(lengths_alone) {
  pd_regex *re = compile_ok("", 2, 4);
  uint32_t s = pd_regex_start(re);
  ck_assert(!walk_text(re, "a"));
  ck_assert(walk_text(re, "ab") && walk_text(re, "a\xe4\xb8\xad\xf0\x9f\x98\x80"));
  ck_assert(walk_text(re, "abcd") && !walk_text(re, "abcde"));
  for (uint32_t n = 0; n < 4; n++) ck_assert_int_ge(pd_regex_next(re, s, n, 'x'), 0);
  ck_assert_int_eq(pd_regex_next(re, s, 4, 'x'), -1); /* the 5th code point */
  ck_assert(!pd_regex_any(re, s, 4, 0, 0x10FFFF) && pd_regex_any(re, s, 3, 0x1F600, 0x1F600));
  ck_assert(!pd_regex_accepting(re, s, 1) && pd_regex_accepting(re, s, 2));
  ck_assert(!pd_regex_accepting(re, s, 5));
  ck_assert_uint_eq(pd_regex_states(re), 1);
  pd_regex_free(re);

  re = compile_ok("", 3, PD_REGEX_NO_MAX);
  ck_assert(!walk_text(re, "ab") && walk_text(re, "abc") && walk_text(re, "abcdefghijkl"));
  pd_regex_free(re);

  re = compile_ok("", 0, 0); /* only the empty string */
  ck_assert(walk_text(re, "") && !walk_text(re, "a"));
  ck_assert(!pd_regex_any(re, pd_regex_start(re), 0, 0, 0x10FFFF));
  pd_regex_free(re);

  re = compile_ok("^$", 0, 0);
  ck_assert(walk_text(re, "") && !walk_text(re, "a"));
  pd_regex_free(re);
}
END_TEST

START_TEST(lengths_with_patterns) {
  /* ^[ab]*c$ with 3..5: the walk refuses a 5th code point that is not 'c', since 'c' must follow */
  pd_regex *re = compile_ok("^[ab]*c$", 3, 5);
  uint32_t cps[8];
  ck_assert(!walk_text(re, "c") && !walk_text(re, "ac") && walk_text(re, "abc"));
  ck_assert(walk_text(re, "ababc") && !walk_text(re, "ababac"));
  int n = decode("abab", cps, 8);
  uint32_t s = pd_regex_start(re);
  for (int i = 0; i < n; i++) s = (uint32_t)pd_regex_next(re, s, (uint32_t)i, cps[i]);
  ck_assert_int_eq(pd_regex_next(re, s, 4, 'a'), -1);
  ck_assert_int_ge(pd_regex_next(re, s, 4, 'c'), 0);
  s = pd_regex_start(re);
  ck_assert_int_eq(pd_regex_next(re, s, 0, 'c'), -1); /* "c" could never reach 3 */
  pd_regex_free(re);

  /* a cycle makes any minimum reachable; a finite language caps it */
  re = compile_ok("^(ab)+$", 7, PD_REGEX_NO_MAX);
  ck_assert(!walk_text(re, "ababab") && walk_text(re, "abababab"));
  pd_regex_free(re);
  re = compile_ok("^a{1,3}b?$", 4, PD_REGEX_NO_MAX);
  ck_assert(walk_text(re, "aaab") && !walk_text(re, "aab"));
  s = pd_regex_start(re);
  s = (uint32_t)pd_regex_next(re, s, 0, 'a');
  ck_assert_int_eq(pd_regex_next(re, s, 1, 'b'), -1); /* "ab" is complete at 2 < 4 */
  pd_regex_free(re);

  /* counts past 65535 without a maximum, saturating at UINT32_MAX */
  re = compile_ok("^a+$", 0, PD_REGEX_NO_MAX);
  s = (uint32_t)pd_regex_next(re, pd_regex_start(re), 0, 'a');
  ck_assert_int_ge(pd_regex_next(re, s, 100000, 'a'), 0);
  ck_assert_int_ge(pd_regex_next(re, s, UINT32_MAX, 'a'), 0);
  ck_assert(pd_regex_accepting(re, s, UINT32_MAX));
  ck_assert_int_eq(pd_regex_next(re, s, 100000, 'b'), -1);
  pd_regex_free(re);
  re = compile_ok("^a+$", 70000, PD_REGEX_NO_MAX);
  s = (uint32_t)pd_regex_next(re, pd_regex_start(re), 0, 'a');
  ck_assert(!pd_regex_accepting(re, s, 69999) && pd_regex_accepting(re, s, 70000));
  pd_regex_free(re);
  /* a large maximum: 4-byte table entries */
  re = compile_ok("^a*$", 1, 70000);
  s = pd_regex_start(re);
  ck_assert_int_ge(pd_regex_next(re, s, 69999, 'a'), 0);
  ck_assert_int_eq(pd_regex_next(re, s, 70000, 'a'), -1);
  ck_assert_int_eq(pd_regex_next(re, s, UINT32_MAX, 'a'), -1);
  ck_assert(pd_regex_accepting(re, s, 70000) && !pd_regex_accepting(re, s, 70001));
  ck_assert(!pd_regex_accepting(re, s, 0));
  pd_regex_free(re);
  /* out-of-range states are refused, not read */
  re = compile_ok("ab", 0, PD_REGEX_NO_MAX);
  ck_assert_int_eq(pd_regex_next(re, pd_regex_states(re), 0, 'a'), -1);
  ck_assert(!pd_regex_accepting(re, pd_regex_states(re), 0));
  ck_assert(!pd_regex_any(re, pd_regex_states(re), 0, 0, 0x10FFFF));
  pd_regex_free(re);
  pd_regex_free(NULL);
}
END_TEST

/* Minimization: equivalent patterns give the same number of states, and the state counts of
 * typical schema patterns stay small. */
START_TEST(state_counts) {
  static const struct {
    const char *pattern;
    uint32_t states;
  } cases[] = {
      {"", 1},
      {"abc", 4}, /* searching, a, ab, matched */
      {"^abc$", 4},
      {"^(a|b)*$", 1},
      {"^(?:a*)*(a|b)*(?:a|b)*$", 1},
      {"^\\d{4}-\\d{2}-\\d{2}$", 11},
      {"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", 37},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    pd_regex *re = compile_ok(cases[i].pattern, 0, PD_REGEX_NO_MAX);
    ck_assert_msg(pd_regex_states(re) == cases[i].states, "/%s/: %u states", cases[i].pattern,
                  pd_regex_states(re));
    pd_regex_free(re);
  }
}
END_TEST

int main(void) {
  Suite *s = suite_create("regex");
  TCase *syntax = tcase_create("syntax");
  tcase_add_test(syntax, table_agrees_with_python_re);
  tcase_add_test(syntax, ecma_meanings);
  tcase_add_test(syntax, refusals_name_the_construct);
  tcase_add_test(syntax, state_counts);
  suite_add_tcase(s, syntax);
  TCase *properties = tcase_create("properties");
  tcase_set_timeout(properties, 60);
  tcase_add_test(properties, brute_force_agrees_and_has_no_dead_ends);
  tcase_add_test(properties, any_equals_next_over_the_range);
  tcase_add_test(properties, lengths_alone);
  tcase_add_test(properties, lengths_with_patterns);
  suite_add_tcase(s, properties);
  return pd_check_run(s, 1);
}
