/*
 * pd_dequant_tool.c -- a test helper: `pd_dequant_tool TYPE N < blocks > floats` dequantizes N
 * elements of ggml type TYPE (its number) read as raw blocks from stdin and writes N float32
 * to stdout; `pd_dequant_tool TYPE N q < floats > blocks` quantizes instead. check_dequant.py
 * compares both against gguf-py.
 */
#include <stdio.h>
#include <stdlib.h>

#include "pd_quant.h"

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: pd_dequant_tool TYPE N [q]\n");
    return 2;
  }
  enum pd_ggml_type t = (enum pd_ggml_type)atoi(argv[1]);
  long n = atol(argv[2]);
  size_t bytes = pd_ggml_row_bytes(t, n);
  if (!pd_ggml_type_supported((unsigned)t) || !bytes) {
    fprintf(stderr, "pd_dequant_tool: bad type %s or count %ld\n", argv[1], n);
    return 2;
  }
  float *f = malloc((size_t)n * sizeof *f);
  unsigned char *q = malloc(bytes);
  int quantize = argc > 3;
  if (quantize) {
    if (fread(f, sizeof *f, (size_t)n, stdin) != (size_t)n) return 1;
    if (pd_quantize_row(t, f, q, n)) return 1;
    fwrite(q, 1, bytes, stdout);
  } else {
    if (fread(q, 1, bytes, stdin) != bytes) return 1;
    if (pd_dequant_row(t, q, f, n)) return 1;
    fwrite(f, sizeof *f, (size_t)n, stdout);
  }
  free(f);
  free(q);
  return 0;
}
