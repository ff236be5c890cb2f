/*
 * pd_detok.h -- streaming detokenization with stop strings.
 *
 * Tokens arrive one at a time; text leaves in pieces that are always whole UTF-8: bytes of a
 * character split across tokens are held until the character completes (a sequence that can
 * never complete becomes U+FFFD). Text that could be the beginning of a stop string is held back
 * too, until it either completes the stop string (then generation stops and the stop string is
 * not emitted) or cannot any more. Special tokens (control, user-defined) render as nothing.
 */
#ifndef PD_DETOK_H
#define PD_DETOK_H

#include <stddef.h>
#include <stdint.h>

#include "pd_tokenizer.h"

typedef struct pd_detok pd_detok;

/* stops: n_stops NUL-terminated strings, copied. *out is owned by the caller (pd_detok_free). */
int pd_detok_create(const pd_tokenizer *t, const char *const *stops, size_t n_stops,
                    pd_detok **out);
void pd_detok_free(pd_detok *d);

/* Adds one token; writes the text that is now final into out (capacity cap, at least 64 bytes
 * recommended; what does not fit stays pending) and its length into *n_out. *stopped is set to 1
 * once a stop string has been seen (nothing after it is ever emitted). */
int pd_detok_push(pd_detok *d, int32_t tok, char *out, size_t cap, size_t *n_out, int *stopped);

/* At the end: emits what was held back (incomplete UTF-8 as U+FFFD, partial stop strings). */
int pd_detok_flush(pd_detok *d, char *out, size_t cap, size_t *n_out);

#endif /* PD_DETOK_H */
