/*
 * pd_tokenize_tool.c -- a test helper: `pd_tokenize_tool MODEL.gguf [--special | --pieces]` reads
 * texts from stdin, separated by NUL bytes, and prints one line of comma-separated token ids per
 * text (--pieces: the byte offsets where the pre-tokenizer's pieces end).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_gguf.h"
#include "pd_tokenizer.h"

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: pd_tokenize_tool MODEL.gguf [--special | --pieces]\n");
    return 2;
  }
  int special = argc > 2 && !strcmp(argv[2], "--special");
  int pieces = argc > 2 && !strcmp(argv[2], "--pieces");
  char err[256];
  pd_gguf *g;
  pd_tokenizer *t;
  if (pd_gguf_open(argv[1], &g, err, sizeof err) ||
      pd_tokenizer_from_gguf(g, &t, err, sizeof err)) {
    fprintf(stderr, "pd_tokenize_tool: %s\n", err);
    return 1;
  }
  size_t cap = 1 << 20, n = 0;
  char *buf = malloc(cap);
  int c;
  int32_t *ids = malloc(sizeof *ids * (1 << 20));
  size_t *ends = malloc(sizeof *ends * (1 << 20));
  for (;;) {
    c = getchar();
    if (c == EOF || c == 0) {
      if (n || c == 0) {
        size_t n_ids;
        if (pieces) {
          if (pd_tokenizer_split(t, buf, n, ends, 1 << 20, &n_ids)) return 1;
          for (size_t i = 0; i < n_ids; i++) printf("%s%zu", i ? "," : "", ends[i]);
        } else {
          if (pd_tokenize(t, buf, n, special, ids, 1 << 20, &n_ids)) return 1;
          for (size_t i = 0; i < n_ids; i++) printf("%s%d", i ? "," : "", ids[i]);
        }
        printf("\n");
      }
      n = 0;
      if (c == EOF) break;
      continue;
    }
    if (n + 1 >= cap) return 1;
    buf[n++] = (char)c;
  }
  free(buf);
  free(ids);
  free(ends);
  pd_tokenizer_free(t);
  pd_gguf_close(g);
  return 0;
}
