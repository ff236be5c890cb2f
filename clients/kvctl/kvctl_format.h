/*
 * kvctl_format.h -- everything kvctl prints, and nothing about the daemon: a JSON writer, human
 * units (bytes, counts, durations, percentages), duration parsing, terminal width and colours,
 * UTF-8 aware single-line sanitising and truncation, and tables sized to the terminal.
 *
 * Design: the commands build their output from these pieces so that every table has the same
 * look, every JSON document the same escaping, and no text received from the daemon (prefix
 * previews are user text) reaches the terminal with its control characters intact. Nothing here
 * allocates memory the caller must free, except kv_table (kv_table_free).
 */
#ifndef KVCTL_FORMAT_H
#define KVCTL_FORMAT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* ---- JSON ------------------------------------------------------------------------------------ */

#define KV_JSON_MAX_DEPTH 32

/* A streaming writer: containers are opened and closed in order, and every value inside an
 * object is written with its key (key NULL inside an array or at the top level). Pretty output
 * indents by two spaces; compact output is one line (used by `stats --watch --json`). The
 * document ends with a newline when the top-level container is closed. */
typedef struct kv_json {
  FILE *out;
  int pretty;
  int depth;
  char closer[KV_JSON_MAX_DEPTH];         /* '}' or ']' of each open container */
  unsigned char items[KV_JSON_MAX_DEPTH]; /* whether the container has an item yet */
} kv_json;

void kv_json_init(kv_json *j, FILE *out, int pretty);
void kv_json_object(kv_json *j, const char *key);
void kv_json_array(kv_json *j, const char *key);
void kv_json_end(kv_json *j);
void kv_json_string(kv_json *j, const char *key, const char *value); /* NULL writes "" */
void kv_json_uint(kv_json *j, const char *key, uint64_t value);
void kv_json_int(kv_json *j, const char *key, int64_t value);
void kv_json_number(kv_json *j, const char *key, double value); /* NaN and infinities: null */
void kv_json_bool(kv_json *j, const char *key, int value);
void kv_json_null(kv_json *j, const char *key);
/* Writes s (n bytes) as a quoted JSON string: quotes, backslashes and control characters are
 * escaped, and bytes that are not valid UTF-8 become U+FFFD, so the output is always valid. */
void kv_json_write_string(FILE *out, const char *s, size_t n);

/* ---- human units ----------------------------------------------------------------------------- */

/* Each writes into buf (cap bytes, always terminated) and returns buf. */
char *kv_fmt_bytes(char *buf, size_t cap, uint64_t bytes);    /* "0 B", "1.5 KiB", "8.0 GiB" */
char *kv_fmt_count(char *buf, size_t cap, uint64_t n);        /* "262,144" */
char *kv_fmt_duration(char *buf, size_t cap, double seconds); /* "45s", "3m 12s", "2d 3h" */
char *kv_fmt_age(char *buf, size_t cap, double seconds);      /* one unit: "45s", "3m", "2d" */
char *kv_fmt_percent(char *buf, size_t cap, uint64_t part, uint64_t whole); /* "24.4%", "-" */
char *kv_fmt_rate(char *buf, size_t cap, double bytes_per_second); /* "1.2 GiB/s", "-" if 0 */
/* "2026-11-22 22:13:05 UTC" */
char *kv_fmt_time(char *buf, size_t cap, int64_t unix_ms);

/* Parses a duration: a number of seconds ("90") or numbers with units s, m, h, d, in any
 * sequence ("30s", "10m", "1h30m", "2d"). 0 on success, -1 if malformed or above UINT32_MAX. */
int kv_parse_duration(const char *text, uint32_t *seconds);
/* Parses a non-negative decimal integer into *value. 0 or -1. */
int kv_parse_uint(const char *text, uint64_t max, uint64_t *value);

/* ---- terminal -------------------------------------------------------------------------------- */

/* Columns of the terminal on stdout (TIOCGWINSZ), else $COLUMNS, else 80. */
int kv_terminal_width(void);

/* Colours are off unless kv_set_color(1) was called (kvctl does when stdout is a terminal and
 * NO_COLOR is unset or empty). Both return "" when off. */
typedef enum kv_style {
  KV_PLAIN = 0,
  KV_BOLD,
  KV_DIM,
  KV_RED,
  KV_GREEN,
  KV_YELLOW,
  KV_CYAN
} kv_style;
void kv_set_color(int on);
int kv_color_enabled(void);
const char *kv_style_on(kv_style s);
const char *kv_style_off(kv_style s);

/* ---- text ------------------------------------------------------------------------------------ */

/* Columns a UTF-8 string takes on a terminal (wide East Asian characters 2, combining marks 0). */
size_t kv_display_width(const char *s);
/* Copies s into out as one safe line: newline, tab and other control characters are shown as
 * \n, \t, \xHH, invalid UTF-8 as U+FFFD, and the result is cut to max_cols columns with a
 * trailing "…" when it is longer (max_cols 0: no limit). Returns the columns written. */
size_t kv_one_line(const char *s, size_t max_cols, char *out, size_t cap);
/* Like kv_one_line for a multi-line text: keeps newlines and tabs, escapes other controls. */
void kv_write_safe_text(FILE *out, const char *s);

/* ---- tables ---------------------------------------------------------------------------------- */

/* Rows of cells under a header, columns as wide as their widest cell, two spaces apart. When
 * the table is wider than the terminal, the flexible column (a preview) shrinks down to its
 * minimum width and its cells end in "…". Cells are sanitised with kv_one_line. */
typedef struct kv_table kv_table;

/* headers: n_cols strings (copied). NULL when out of memory. */
kv_table *kv_table_new(const char *const *headers, int n_cols);
void kv_table_free(kv_table *t);
void kv_table_align_right(kv_table *t, int col);
void kv_table_flex(kv_table *t, int col, int min_width);
/* Appends one cell to the current row (a row is complete after n_cols cells), printf-style. An
 * allocation failure is remembered and reported by kv_table_print. */
void kv_table_add(kv_table *t, kv_style style, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Prints the table fitted to width columns. 0, or -1 if a cell could not be stored. */
int kv_table_print(kv_table *t, FILE *out, int width);
/* The width the table would take without shrinking, and that of one column. */
int kv_table_natural_width(const kv_table *t);
int kv_table_column_width(const kv_table *t, int col);

#endif /* KVCTL_FORMAT_H */
