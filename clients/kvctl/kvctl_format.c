/*
 * kvctl_format.c -- see kvctl_format.h.
 *
 * Design notes. The JSON writer keeps a stack of open containers and whether each has an item,
 * which is all it needs to place commas and indentation; values go straight to the FILE. UTF-8
 * is decoded by hand (strict: no overlongs, no surrogates, nothing past U+10FFFF) because the
 * same decoder serves three jobs: JSON validity, terminal sanitising and display width. Display
 * width uses a short table of the wide and zero-width ranges rather than wcwidth(3), whose
 * answer depends on the process locale (often "C" under test runners and cron).
 */
#include "kvctl_format.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

/* ---- UTF-8 ----------------------------------------------------------------------------------- */

/* Decodes one code point at s (n bytes left). Returns its length, or 0 if the bytes there are
 * not valid UTF-8 (the caller then treats one byte as U+FFFD). */
static size_t utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
  if (n == 0) return 0;
  unsigned char c = s[0];
  if (c < 0x80) {
    *cp = c;
    return 1;
  }
  size_t len;
  uint32_t v, min;
  if ((c & 0xE0) == 0xC0) {
    len = 2, v = c & 0x1F, min = 0x80;
  } else if ((c & 0xF0) == 0xE0) {
    len = 3, v = c & 0x0F, min = 0x800;
  } else if ((c & 0xF8) == 0xF0) {
    len = 4, v = c & 0x07, min = 0x10000;
  } else {
    return 0;
  }
  if (n < len) return 0;
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xC0) != 0x80) return 0;
    v = v << 6 | (s[i] & 0x3F);
  }
  if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
  *cp = v;
  return len;
}

static int codepoint_width(uint32_t cp) {
  if ((cp >= 0x0300 && cp <= 0x036F) || (cp >= 0x200B && cp <= 0x200F) ||
      (cp >= 0xFE00 && cp <= 0xFE0F))
    return 0; /* combining marks, zero-width spaces and joiners, variation selectors */
  static const uint32_t wide[][2] = {
      {0x1100, 0x115F},   {0x2E80, 0x303E},   {0x3041, 0x33FF},   {0x3400, 0x4DBF},
      {0x4E00, 0x9FFF},   {0xA000, 0xA4CF},   {0xAC00, 0xD7A3},   {0xF900, 0xFAFF},
      {0xFE30, 0xFE4F},   {0xFF00, 0xFF60},   {0xFFE0, 0xFFE6},   {0x1F300, 0x1F64F},
      {0x1F900, 0x1F9FF}, {0x20000, 0x2FFFD}, {0x30000, 0x3FFFD},
  };
  for (size_t i = 0; i < sizeof wide / sizeof *wide; i++)
    if (cp >= wide[i][0] && cp <= wide[i][1]) return 2;
  return 1;
}

size_t kv_display_width(const char *s) {
  size_t cols = 0, n = strlen(s);
  const unsigned char *p = (const unsigned char *)s;
  while (n) {
    uint32_t cp;
    size_t len = utf8_decode(p, n, &cp);
    if (!len) len = 1, cp = 0xFFFD;
    cols += (size_t)codepoint_width(cp);
    p += len, n -= len;
  }
  return cols;
}

/* ---- JSON ------------------------------------------------------------------------------------ */

void kv_json_init(kv_json *j, FILE *out, int pretty) {
  memset(j, 0, sizeof *j);
  j->out = out;
  j->pretty = pretty;
}

void kv_json_write_string(FILE *out, const char *s, size_t n) {
  const unsigned char *p = (const unsigned char *)s;
  fputc('"', out);
  while (n) {
    uint32_t cp;
    size_t len = utf8_decode(p, n, &cp);
    if (!len) {
      fputs("\\ufffd", out);
      p++, n--;
      continue;
    }
    switch (cp) {
    case '"': fputs("\\\"", out); break;
    case '\\': fputs("\\\\", out); break;
    case '\b': fputs("\\b", out); break;
    case '\f': fputs("\\f", out); break;
    case '\n': fputs("\\n", out); break;
    case '\r': fputs("\\r", out); break;
    case '\t': fputs("\\t", out); break;
    default:
      if (cp < 0x20 || cp == 0x7F)
        fprintf(out, "\\u%04x", (unsigned)cp);
      else
        fwrite(p, 1, len, out);
    }
    p += len, n -= len;
  }
  fputc('"', out);
}

/* Comma, newline and indentation before an item, then its key. */
static void json_item(kv_json *j, const char *key) {
  if (j->depth > 0) {
    if (j->items[j->depth - 1]) fputc(',', j->out);
    j->items[j->depth - 1] = 1;
    if (j->pretty) fprintf(j->out, "\n%*s", 2 * j->depth, "");
  }
  if (key) {
    kv_json_write_string(j->out, key, strlen(key));
    fputs(j->pretty ? ": " : ":", j->out);
  }
}

static void json_open(kv_json *j, const char *key, char open, char close) {
  json_item(j, key);
  fputc(open, j->out);
  if (j->depth < KV_JSON_MAX_DEPTH) {
    j->closer[j->depth] = close;
    j->items[j->depth] = 0;
  }
  j->depth++;
}

void kv_json_object(kv_json *j, const char *key) {
  json_open(j, key, '{', '}');
}

void kv_json_array(kv_json *j, const char *key) {
  json_open(j, key, '[', ']');
}

void kv_json_end(kv_json *j) {
  if (j->depth == 0) return;
  j->depth--;
  if (j->depth < KV_JSON_MAX_DEPTH) {
    if (j->pretty && j->items[j->depth]) fprintf(j->out, "\n%*s", 2 * j->depth, "");
    fputc(j->closer[j->depth], j->out);
  }
  if (j->depth == 0) {
    fputc('\n', j->out);
    fflush(j->out);
  }
}

void kv_json_string(kv_json *j, const char *key, const char *value) {
  json_item(j, key);
  if (!value) value = "";
  kv_json_write_string(j->out, value, strlen(value));
}

void kv_json_uint(kv_json *j, const char *key, uint64_t value) {
  json_item(j, key);
  fprintf(j->out, "%llu", (unsigned long long)value);
}

void kv_json_int(kv_json *j, const char *key, int64_t value) {
  json_item(j, key);
  fprintf(j->out, "%lld", (long long)value);
}

void kv_json_number(kv_json *j, const char *key, double value) {
  json_item(j, key);
  if (!isfinite(value)) {
    fputs("null", j->out);
    return;
  }
  /* the shortest of %.15g and %.17g that reads back as the same double */
  char buf[40];
  snprintf(buf, sizeof buf, "%.15g", value);
  if (strtod(buf, NULL) != value) snprintf(buf, sizeof buf, "%.17g", value);
  fputs(buf, j->out);
  /* keep it a JSON number that a reader also sees as a float where it has no dot or exponent */
  if (!strpbrk(buf, ".eEn")) fputs(".0", j->out);
}

void kv_json_bool(kv_json *j, const char *key, int value) {
  json_item(j, key);
  fputs(value ? "true" : "false", j->out);
}

void kv_json_null(kv_json *j, const char *key) {
  json_item(j, key);
  fputs("null", j->out);
}

/* ---- human units ----------------------------------------------------------------------------- */

char *kv_fmt_bytes(char *buf, size_t cap, uint64_t bytes) {
  static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  if (bytes < 1024) {
    snprintf(buf, cap, "%llu B", (unsigned long long)bytes);
    return buf;
  }
  double v = (double)bytes;
  int u = 0;
  while (v >= 1024.0 && u < 6) v /= 1024.0, u++;
  snprintf(buf, cap, v < 100.0 ? "%.1f %s" : "%.0f %s", v, units[u]);
  return buf;
}

char *kv_fmt_count(char *buf, size_t cap, uint64_t n) {
  char digits[32];
  int len = snprintf(digits, sizeof digits, "%llu", (unsigned long long)n);
  char grouped[48];
  int o = 0;
  for (int i = 0; i < len; i++) {
    if (i > 0 && (len - i) % 3 == 0) grouped[o++] = ',';
    grouped[o++] = digits[i];
  }
  grouped[o] = 0;
  snprintf(buf, cap, "%s", grouped);
  return buf;
}

char *kv_fmt_duration(char *buf, size_t cap, double seconds) {
  if (!(seconds >= 0)) seconds = 0;
  if (seconds < 10 && seconds != floor(seconds)) {
    snprintf(buf, cap, "%.1fs", seconds);
    return buf;
  }
  uint64_t s = (uint64_t)seconds;
  uint64_t d = s / 86400, h = s / 3600 % 24, m = s / 60 % 60, sec = s % 60;
  if (d)
    snprintf(buf, cap, "%llud %lluh", (unsigned long long)d, (unsigned long long)h);
  else if (h)
    snprintf(buf, cap, "%lluh %02llum", (unsigned long long)h, (unsigned long long)m);
  else if (m)
    snprintf(buf, cap, "%llum %02llus", (unsigned long long)m, (unsigned long long)sec);
  else
    snprintf(buf, cap, "%llus", (unsigned long long)sec);
  return buf;
}

char *kv_fmt_age(char *buf, size_t cap, double seconds) {
  if (!(seconds >= 0)) seconds = 0;
  uint64_t s = (uint64_t)seconds;
  if (s < 60)
    snprintf(buf, cap, "%llus", (unsigned long long)s);
  else if (s < 3600)
    snprintf(buf, cap, "%llum", (unsigned long long)(s / 60));
  else if (s < 86400)
    snprintf(buf, cap, "%lluh", (unsigned long long)(s / 3600));
  else
    snprintf(buf, cap, "%llud", (unsigned long long)(s / 86400));
  return buf;
}

char *kv_fmt_percent(char *buf, size_t cap, uint64_t part, uint64_t whole) {
  if (!whole)
    snprintf(buf, cap, "-");
  else
    snprintf(buf, cap, "%.1f%%", 100.0 * (double)part / (double)whole);
  return buf;
}

char *kv_fmt_rate(char *buf, size_t cap, double bytes_per_second) {
  if (!(bytes_per_second > 0)) {
    snprintf(buf, cap, "-");
    return buf;
  }
  char b[32];
  kv_fmt_bytes(b, sizeof b, (uint64_t)bytes_per_second);
  snprintf(buf, cap, "%s/s", b);
  return buf;
}

char *kv_fmt_time(char *buf, size_t cap, int64_t unix_ms) {
  time_t t = (time_t)(unix_ms / 1000);
  struct tm tm;
  if (!gmtime_r(&t, &tm) || !strftime(buf, cap, "%Y-%m-%d %H:%M:%S UTC", &tm))
    snprintf(buf, cap, "?");
  return buf;
}

int kv_parse_uint(const char *text, uint64_t max, uint64_t *value) {
  if (!text || !*text) return -1;
  uint64_t v = 0;
  for (const char *p = text; *p; p++) {
    if (*p < '0' || *p > '9') return -1;
    unsigned digit = (unsigned)(*p - '0');
    if (v > (max - digit) / 10) return -1;
    v = v * 10 + digit;
  }
  *value = v;
  return 0;
}

int kv_parse_duration(const char *text, uint32_t *seconds) {
  if (!text || !*text) return -1;
  uint64_t total = 0;
  const char *p = text;
  int units_seen = 0;
  while (*p) {
    if (*p < '0' || *p > '9') return -1;
    uint64_t n = 0;
    while (*p >= '0' && *p <= '9') {
      n = n * 10 + (uint64_t)(*p++ - '0');
      if (n > UINT32_MAX) return -1;
    }
    uint64_t unit;
    switch (*p) {
    case 0:
      if (units_seen) return -1; /* "1h30": a bare number only on its own */
      unit = 1;
      break;
    case 's': unit = 1; break;
    case 'm': unit = 60; break;
    case 'h': unit = 3600; break;
    case 'd': unit = 86400; break;
    default: return -1;
    }
    if (*p) p++, units_seen = 1;
    total += n * unit;
    if (total > UINT32_MAX) return -1;
  }
  *seconds = (uint32_t)total;
  return 0;
}

/* ---- terminal -------------------------------------------------------------------------------- */

int kv_terminal_width(void) {
  struct winsize ws;
  if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  const char *columns = getenv("COLUMNS");
  uint64_t n;
  if (columns && !kv_parse_uint(columns, 10000, &n) && n > 0) return (int)n;
  return 80;
}

static int color_on;

void kv_set_color(int on) {
  color_on = on;
}

int kv_color_enabled(void) {
  return color_on;
}

const char *kv_style_on(kv_style s) {
  if (!color_on) return "";
  switch (s) {
  case KV_BOLD: return "\033[1m";
  case KV_DIM: return "\033[2m";
  case KV_RED: return "\033[31m";
  case KV_GREEN: return "\033[32m";
  case KV_YELLOW: return "\033[33m";
  case KV_CYAN: return "\033[36m";
  default: return "";
  }
}

const char *kv_style_off(kv_style s) {
  return color_on && s != KV_PLAIN ? "\033[0m" : "";
}

/* ---- text ------------------------------------------------------------------------------------ */

/* Sanitises s into out, stopping before the piece that would pass limit columns (0: none).
 * Returns the columns written; *cut says whether it stopped early. */
static size_t sanitize_line(const char *s, size_t limit, char *out, size_t cap, int *cut) {
  size_t o = 0, cols = 0, n = s ? strlen(s) : 0;
  const unsigned char *p = (const unsigned char *)s;
  *cut = 0;
  while (n) {
    uint32_t cp;
    size_t len = utf8_decode(p, n, &cp);
    char piece[8];
    size_t piece_len, piece_cols;
    if (!len) {
      memcpy(piece, "\xef\xbf\xbd", 3); /* U+FFFD */
      piece_len = 3, piece_cols = 1, len = 1;
    } else if (cp == '\n' || cp == '\t' || cp == '\r') {
      piece[0] = '\\', piece[1] = cp == '\n' ? 'n' : cp == '\t' ? 't' : 'r';
      piece_len = 2, piece_cols = 2;
    } else if (cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp < 0xA0)) {
      piece_len = (size_t)snprintf(piece, sizeof piece, "\\x%02x", (unsigned)cp);
      piece_cols = piece_len;
    } else {
      memcpy(piece, p, len);
      piece_len = len, piece_cols = (size_t)codepoint_width(cp);
    }
    if ((limit && cols + piece_cols > limit) || o + piece_len >= cap) {
      *cut = 1;
      break;
    }
    memcpy(out + o, piece, piece_len);
    o += piece_len, cols += piece_cols;
    p += len, n -= len;
  }
  out[o] = 0;
  return cols;
}

size_t kv_one_line(const char *s, size_t max_cols, char *out, size_t cap) {
  if (cap == 0) return 0;
  int cut;
  size_t cols = sanitize_line(s, 0, out, cap, &cut);
  if (!max_cols || (cols <= max_cols && !cut)) return cols;
  /* too long: as much as fits in one column less, then U+2026 */
  cols = sanitize_line(s, max_cols - 1, out, cap > 3 ? cap - 3 : 1, &cut);
  size_t o = strlen(out);
  if (o + 3 < cap) {
    memcpy(out + o, "\xe2\x80\xa6", 4);
    cols++;
  }
  return cols;
}

void kv_write_safe_text(FILE *out, const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  size_t n = strlen(s);
  while (n) {
    uint32_t cp;
    size_t len = utf8_decode(p, n, &cp);
    if (!len) {
      fputs("\xef\xbf\xbd", out);
      len = 1;
    } else if (cp == '\n' || cp == '\t') {
      fputc((int)cp, out);
    } else if (cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp < 0xA0)) {
      fprintf(out, "\\x%02x", (unsigned)cp);
    } else {
      fwrite(p, 1, len, out);
    }
    p += len, n -= len;
  }
}

/* ---- tables ---------------------------------------------------------------------------------- */

typedef struct cell {
  char *text; /* sanitised, one line */
  int width;  /* display columns */
  kv_style style;
} cell;

struct kv_table {
  int n_cols;
  cell *cells; /* row-major, n_cells of cap_cells */
  size_t n_cells, cap_cells;
  char **headers;
  unsigned char *right; /* per column: right-aligned */
  int flex_col, flex_min;
  int oom;
};

kv_table *kv_table_new(const char *const *headers, int n_cols) {
  kv_table *t = calloc(1, sizeof *t);
  if (!t) return NULL;
  t->n_cols = n_cols;
  t->flex_col = -1;
  t->headers = calloc((size_t)n_cols, sizeof *t->headers);
  t->right = calloc((size_t)n_cols, 1);
  if (!t->headers || !t->right) {
    kv_table_free(t);
    return NULL;
  }
  for (int c = 0; c < n_cols; c++)
    if (!(t->headers[c] = strdup(headers[c]))) {
      kv_table_free(t);
      return NULL;
    }
  return t;
}

void kv_table_free(kv_table *t) {
  if (!t) return;
  for (size_t i = 0; i < t->n_cells; i++) free(t->cells[i].text);
  free(t->cells);
  if (t->headers)
    for (int c = 0; c < t->n_cols; c++) free(t->headers[c]);
  free(t->headers);
  free(t->right);
  free(t);
}

void kv_table_align_right(kv_table *t, int col) {
  if (t && col >= 0 && col < t->n_cols) t->right[col] = 1;
}

void kv_table_flex(kv_table *t, int col, int min_width) {
  if (!t) return;
  t->flex_col = col;
  t->flex_min = min_width;
}

void kv_table_add(kv_table *t, kv_style style, const char *fmt, ...) {
  if (!t || t->oom) return;
  if (t->n_cells == t->cap_cells) {
    size_t cap = t->cap_cells ? 2 * t->cap_cells : 64;
    cell *grown = realloc(t->cells, cap * sizeof *grown);
    if (!grown) {
      t->oom = 1;
      return;
    }
    t->cells = grown;
    t->cap_cells = cap;
  }
  va_list ap;
  va_start(ap, fmt);
  char *raw = NULL;
  int rc = vasprintf(&raw, fmt, ap);
  va_end(ap);
  if (rc < 0) {
    t->oom = 1;
    return;
  }
  size_t cap = 4 * strlen(raw) + 8; /* \xHH is 4 bytes for 1 */
  char *text = malloc(cap);
  if (!text) {
    free(raw);
    t->oom = 1;
    return;
  }
  int width = (int)kv_one_line(raw, 0, text, cap);
  free(raw);
  t->cells[t->n_cells++] = (cell){text, width, style};
}

static void column_widths(const kv_table *t, int *w) {
  for (int c = 0; c < t->n_cols; c++) w[c] = (int)kv_display_width(t->headers[c]);
  for (size_t i = 0; i < t->n_cells; i++) {
    int c = (int)(i % (size_t)t->n_cols);
    if (t->cells[i].width > w[c]) w[c] = t->cells[i].width;
  }
}

int kv_table_natural_width(const kv_table *t) {
  int w[64], total = 0;
  if (t->n_cols > 64) return 0;
  column_widths(t, w);
  for (int c = 0; c < t->n_cols; c++) total += w[c] + (c ? 2 : 0);
  return total;
}

int kv_table_column_width(const kv_table *t, int col) {
  int w[64];
  if (t->n_cols > 64 || col < 0 || col >= t->n_cols) return 0;
  column_widths(t, w);
  return w[col];
}

static void print_cell(FILE *out, const char *text, int text_width, int col_width, int right,
                       int last, kv_style style) {
  char fitted[4096];
  if (text_width > col_width) {
    text_width = (int)kv_one_line(text, (size_t)col_width, fitted, sizeof fitted);
    text = fitted;
  }
  int pad = col_width - text_width;
  if (right) fprintf(out, "%*s", pad, "");
  fprintf(out, "%s%s%s", kv_style_on(style), text, kv_style_off(style));
  if (!right && !last) fprintf(out, "%*s", pad, "");
}

int kv_table_print(kv_table *t, FILE *out, int width) {
  if (!t || t->oom || t->n_cols > 64) return -1;
  int w[64], total = 0;
  column_widths(t, w);
  for (int c = 0; c < t->n_cols; c++) total += w[c] + (c ? 2 : 0);
  if (total > width && t->flex_col >= 0) {
    int f = t->flex_col, target = w[f] - (total - width);
    if (target < t->flex_min) target = t->flex_min < w[f] ? t->flex_min : w[f];
    w[f] = target;
  }
  for (int c = 0; c < t->n_cols; c++) {
    if (c) fputs("  ", out);
    print_cell(out, t->headers[c], (int)kv_display_width(t->headers[c]), w[c], t->right[c],
               c == t->n_cols - 1, KV_BOLD);
  }
  fputc('\n', out);
  for (size_t i = 0; i < t->n_cells; i++) {
    int c = (int)(i % (size_t)t->n_cols);
    if (c) fputs("  ", out);
    const cell *x = &t->cells[i];
    print_cell(out, x->text, x->width, w[c], t->right[c], c == t->n_cols - 1, x->style);
    if (c == t->n_cols - 1) fputc('\n', out);
  }
  if (t->n_cells % (size_t)t->n_cols) fputc('\n', out);
  return 0;
}
