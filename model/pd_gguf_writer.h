/*
 * pd_gguf_writer.h -- writing GGUF v3 files: metadata and tensors, laid out as pd_gguf reads
 * them (32-byte alignment). Used by prefixd-mkgguf to make synthetic models for tests and for
 * speed runs where the real model file cannot travel.
 *
 * Every add copies its arguments; the writer owns all it holds until pd_gguf_writer_free.
 */
#ifndef PD_GGUF_WRITER_H
#define PD_GGUF_WRITER_H

#include <stddef.h>
#include <stdint.h>

#include "pd_ggml.h"

typedef struct pd_gguf_writer pd_gguf_writer;

int pd_gguf_writer_create(pd_gguf_writer **out);
void pd_gguf_writer_free(pd_gguf_writer *w);

int pd_gguf_add_str(pd_gguf_writer *w, const char *key, const char *val);
int pd_gguf_add_u32(pd_gguf_writer *w, const char *key, uint32_t val);
int pd_gguf_add_f32(pd_gguf_writer *w, const char *key, float val);
int pd_gguf_add_bool(pd_gguf_writer *w, const char *key, int val);
int pd_gguf_add_str_arr(pd_gguf_writer *w, const char *key, const char *const *vals, size_t n);
int pd_gguf_add_i32_arr(pd_gguf_writer *w, const char *key, const int32_t *vals, size_t n);

/* A tensor of n_dims dimensions (ne[0] innermost) of type t; data holds
 * pd_ggml_row_bytes(t, ne[0]) * (the other dims) bytes. PD_EINVAL on a size mismatch. */
int pd_gguf_add_tensor(pd_gguf_writer *w, const char *name, int n_dims, const uint64_t *ne,
                       enum pd_ggml_type t, const void *data, size_t nbytes);

/* Writes everything to path (via a temporary file renamed into place). */
int pd_gguf_writer_write(const pd_gguf_writer *w, const char *path, char *err, size_t errlen);

#endif /* PD_GGUF_WRITER_H */
