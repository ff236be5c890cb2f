/*
 * pd_unicode.h -- UTF-8 decoding and the character classes the pre-tokenizer needs.
 *
 * Letters (\p{L}) and numbers (\p{N}) come from tables generated from Python's unicodedata
 * (scripts/gen_unicode_tables.py); whitespace is the set that regex engines treat as \s.
 */
#ifndef PD_UNICODE_H
#define PD_UNICODE_H

#include <stddef.h>
#include <stdint.h>

typedef struct pd_unicode_range {
  uint32_t first, last;
} pd_unicode_range;

extern const pd_unicode_range pd_unicode_letters[], pd_unicode_numbers[];
extern const unsigned pd_unicode_letters_count, pd_unicode_numbers_count;

int pd_unicode_is_letter(uint32_t cp);
int pd_unicode_is_number(uint32_t cp);
int pd_unicode_is_space(uint32_t cp);

/* Decodes one code point at s (len bytes left). Returns its byte length (1..4) and sets *cp;
 * an invalid or truncated sequence decodes as one byte with *cp = 0xFFFD. */
int pd_utf8_decode(const uint8_t *s, size_t len, uint32_t *cp);
/* Encodes cp into out (4 bytes of room); returns the length. */
int pd_utf8_encode(uint32_t cp, uint8_t *out);

#endif /* PD_UNICODE_H */
