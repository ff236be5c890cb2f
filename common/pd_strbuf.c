/* pd_strbuf.c -- see pd_strbuf.h. */
#include "pd_strbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Makes room for need more bytes and the NUL; 0, or -1 (oom set). */
static int reserve(pd_strbuf *b, size_t need) {
  if (b->oom) return -1;
  if (b->n + need + 1 <= b->cap) return 0;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < b->n + need + 1) cap *= 2;
  char *q = realloc(b->p, cap);
  if (!q) {
    b->oom = 1;
    return -1;
  }
  b->p = q;
  b->cap = cap;
  return 0;
}

void pd_strbuf_put(pd_strbuf *b, const char *s, size_t n) {
  if (reserve(b, n)) return;
  memcpy(b->p + b->n, s, n);
  b->n += n;
  b->p[b->n] = 0;
}

void pd_strbuf_puts(pd_strbuf *b, const char *s) {
  pd_strbuf_put(b, s, strlen(s));
}

void pd_strbuf_printf(pd_strbuf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int k = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (k < 0) {
    b->oom = 1;
    return;
  }
  if (reserve(b, (size_t)k)) return;
  va_start(ap, fmt);
  vsnprintf(b->p + b->n, (size_t)k + 1, fmt, ap);
  va_end(ap);
  b->n += (size_t)k;
}
