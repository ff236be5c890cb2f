/*
 * pd_strbuf.h -- a growing, NUL-terminated string for text built piece by piece (the metrics
 * exposition, chat prompts). An allocation failure is sticky: the buffer sets oom, appends
 * nothing more, and the caller checks oom once at the end instead of after every piece.
 */
#ifndef PD_STRBUF_H
#define PD_STRBUF_H

#include <stddef.h>

typedef struct pd_strbuf {
  char *p;    /* malloc'd, NUL-terminated once anything was appended; the owner frees it */
  size_t n;   /* bytes, without the NUL */
  size_t cap; /* bytes allocated */
  int oom;    /* an append failed: the text is incomplete */
} pd_strbuf;

/* Appends n bytes of s. */
void pd_strbuf_put(pd_strbuf *b, const char *s, size_t n);

/* Appends the string s. */
void pd_strbuf_puts(pd_strbuf *b, const char *s);

/* Appends printf's output. */
void pd_strbuf_printf(pd_strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif /* PD_STRBUF_H */
