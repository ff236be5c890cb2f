/*
 * pd_detok.c -- see pd_detok.h.
 *
 * Two buffers: `raw` holds bytes not yet known to be whole UTF-8; `text` holds whole UTF-8 not
 * yet released because it may start a stop string. A push appends the token's bytes to raw,
 * moves the longest complete prefix of raw to text, then releases from text everything that can
 * no longer be part of a stop string.
 */
#include "pd_detok.h"

#include <stdlib.h>
#include <string.h>

#include "pd_err.h"
#include "pd_unicode.h"

struct pd_detok {
  const pd_tokenizer *tok;
  char **stops;
  size_t *stop_len;
  size_t n_stops;
  uint8_t raw[16];
  size_t n_raw;
  char *text;
  size_t n_text, cap_text;
  int stopped;
};

int pd_detok_create(const pd_tokenizer *t, const char *const *stops, size_t n_stops,
                    pd_detok **out) {
  pd_detok *d = calloc(1, sizeof *d);
  if (!d) return PD_ENOMEM;
  d->tok = t;
  d->cap_text = 256;
  d->text = malloc(d->cap_text);
  d->stops = calloc(n_stops + 1, sizeof *d->stops);
  d->stop_len = calloc(n_stops + 1, sizeof *d->stop_len);
  if (!d->text || !d->stops || !d->stop_len) {
    pd_detok_free(d);
    return PD_ENOMEM;
  }
  for (size_t i = 0; i < n_stops; i++) {
    if (!stops[i] || !stops[i][0]) continue;
    d->stops[d->n_stops] = strdup(stops[i]);
    if (!d->stops[d->n_stops]) {
      pd_detok_free(d);
      return PD_ENOMEM;
    }
    d->stop_len[d->n_stops] = strlen(stops[i]);
    d->n_stops++;
  }
  *out = d;
  return PD_OK;
}

void pd_detok_free(pd_detok *d) {
  if (!d) return;
  for (size_t i = 0; i < d->n_stops; i++) free(d->stops[i]);
  free(d->stops);
  free(d->stop_len);
  free(d->text);
  free(d);
}

static int append_text(pd_detok *d, const void *p, size_t n) {
  if (d->n_text + n > d->cap_text) {
    size_t cap = d->cap_text * 2 + n;
    char *t = realloc(d->text, cap);
    if (!t) return PD_ENOMEM;
    d->text = t;
    d->cap_text = cap;
  }
  memcpy(d->text + d->n_text, p, n);
  d->n_text += n;
  return PD_OK;
}

/* Moves whole characters from raw to text; with final, incomplete ones become U+FFFD. */
static int drain_raw(pd_detok *d, int final) {
  size_t i = 0;
  int rc = PD_OK;
  while (i < d->n_raw && !rc) {
    uint8_t c = d->raw[i];
    size_t need = c < 0x80             ? 1
                  : (c & 0xE0) == 0xC0 ? 2
                  : (c & 0xF0) == 0xE0 ? 3
                  : (c & 0xF8) == 0xF0 ? 4
                                       : 1;
    if (i + need > d->n_raw && !final) {
      /* incomplete: hold it, unless what is there already can't be a valid prefix */
      int ok = 1;
      for (size_t k = i + 1; k < d->n_raw; k++)
        if ((d->raw[k] & 0xC0) != 0x80) ok = 0;
      if (ok) break;
    }
    uint32_t cp;
    int l = pd_utf8_decode(d->raw + i, d->n_raw - i, &cp);
    if (cp == 0xFFFD && !(l == 3 && d->raw[i] == 0xEF)) {
      static const uint8_t repl[3] = {0xEF, 0xBF, 0xBD};
      rc = append_text(d, repl, 3);
    } else {
      rc = append_text(d, d->raw + i, (size_t)l);
    }
    i += (size_t)l;
  }
  memmove(d->raw, d->raw + i, d->n_raw - i);
  d->n_raw -= i;
  return rc;
}

/* Length of text that may be released: all of it, minus a tail that begins some stop string;
 * or, if a stop string occurs, everything before it (and stopped). */
static size_t releasable(pd_detok *d, int final) {
  size_t cut = d->n_text;
  for (size_t s = 0; s < d->n_stops; s++) {
    char *hit = memmem(d->text, d->n_text, d->stops[s], d->stop_len[s]);
    if (hit && (size_t)(hit - d->text) < cut) {
      cut = (size_t)(hit - d->text);
      d->stopped = 1;
    }
  }
  if (d->stopped || final) return cut;
  size_t keep = 0;
  for (size_t s = 0; s < d->n_stops; s++)
    for (size_t k = d->stop_len[s] - 1; k > keep; k--)
      if (k <= d->n_text && !memcmp(d->text + d->n_text - k, d->stops[s], k)) {
        keep = k;
        break;
      }
  return d->n_text - keep;
}

static void release(pd_detok *d, size_t n, char *out, size_t cap, size_t *n_out) {
  /* never split a character at the capacity limit */
  if (n > cap) {
    n = cap;
    while (n > 0 && (d->text[n] & 0xC0) == 0x80) n--;
  }
  memcpy(out, d->text, n);
  *n_out = n;
  if (d->stopped && n == releasable(d, 1)) {
    d->n_text = 0; /* the stop string and what follows it are dropped */
    return;
  }
  memmove(d->text, d->text + n, d->n_text - n);
  d->n_text -= n;
}

int pd_detok_push(pd_detok *d, int32_t tok, char *out, size_t cap, size_t *n_out, int *stopped) {
  *n_out = 0;
  *stopped = d->stopped;
  if (d->stopped) return PD_OK;
  const char *piece;
  size_t len;
  int rc = pd_token_piece(d->tok, tok, &piece, &len);
  if (rc) return rc;
  if (pd_tokenizer_is_special(d->tok, tok)) len = 0;
  for (size_t i = 0; i < len && !rc; i++) {
    if (d->n_raw == sizeof d->raw) rc = drain_raw(d, 1);
    d->raw[d->n_raw++] = (uint8_t)piece[i];
    if (!rc) rc = drain_raw(d, 0);
  }
  if (rc) return rc;
  release(d, releasable(d, 0), out, cap, n_out);
  *stopped = d->stopped;
  return PD_OK;
}

int pd_detok_flush(pd_detok *d, char *out, size_t cap, size_t *n_out) {
  *n_out = 0;
  if (!d->stopped) {
    int rc = drain_raw(d, 1);
    if (rc) return rc;
  }
  release(d, releasable(d, 1), out, cap, n_out);
  return PD_OK;
}
