/*
 * pd_gguf.h -- read-only access to a GGUF file (versions 2 and 3), mmapped.
 *
 * pd_gguf_open maps the file and validates all of it before it returns: header, every key and
 * value (type tags, string lengths, array counts), every tensor's name, dimensions, type, offset,
 * size and alignment against the file's length. After a successful open no accessor can read
 * outside the mapping. A malformed file gets PD_ECORRUPT (or PD_EUNSUPPORTED for an unknown
 * version or tensor type) and a message naming what is wrong in the caller's err buffer.
 *
 * Lifetimes: every pointer returned by an accessor (strings, arrays, tensor data) points into the
 * mapping or into the handle and stays valid until pd_gguf_close. Strings in GGUF are not
 * NUL-terminated: they come as (pointer, length) pairs.
 */
#ifndef PD_GGUF_H
#define PD_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "pd_ggml.h"

/* Value types of GGUF metadata. */
enum pd_gguf_vtype {
  PD_GGUF_U8 = 0,
  PD_GGUF_I8 = 1,
  PD_GGUF_U16 = 2,
  PD_GGUF_I16 = 3,
  PD_GGUF_U32 = 4,
  PD_GGUF_I32 = 5,
  PD_GGUF_F32 = 6,
  PD_GGUF_BOOL = 7,
  PD_GGUF_STRING = 8,
  PD_GGUF_ARRAY = 9,
  PD_GGUF_U64 = 10,
  PD_GGUF_I64 = 11,
  PD_GGUF_F64 = 12
};

typedef struct pd_str {
  const char *ptr; /* not NUL-terminated */
  uint64_t len;
} pd_str;

typedef struct pd_gguf_tensor {
  pd_str name;
  uint32_t n_dims;
  uint64_t ne[4]; /* ne[0] is the innermost (contiguous) dimension; unused dims are 1 */
  enum pd_ggml_type type;
  const void *data; /* into the mapping */
  uint64_t nbytes;
} pd_gguf_tensor;

typedef struct pd_gguf pd_gguf;

/* Opens and validates path. On success *out owns the mapping (free with pd_gguf_close).
 * On failure returns a PD_E* code and writes a one-line reason into err (if errlen > 0). */
int pd_gguf_open(const char *path, pd_gguf **out, char *err, size_t errlen);
void pd_gguf_close(pd_gguf *g);

uint32_t pd_gguf_version(const pd_gguf *g);

/* Scalars: return 0, PD_ENOTFOUND if the key is absent, PD_EINVAL if its type does not convert
 * (integers convert between widths when the value fits; f32/f64 convert to float). */
int pd_gguf_get_u32(const pd_gguf *g, const char *key, uint32_t *out);
int pd_gguf_get_i64(const pd_gguf *g, const char *key, int64_t *out);
int pd_gguf_get_f32(const pd_gguf *g, const char *key, float *out);
int pd_gguf_get_bool(const pd_gguf *g, const char *key, int *out);
int pd_gguf_get_str(const pd_gguf *g, const char *key, pd_str *out);

/* Arrays of numbers: *data points at n packed little-endian elements of *elem_type. */
int pd_gguf_get_arr(const pd_gguf *g, const char *key, enum pd_gguf_vtype *elem_type, uint64_t *n,
                    const void **data);
/* Arrays of strings: *strs is an array of n pd_str owned by the handle. */
int pd_gguf_get_str_arr(const pd_gguf *g, const char *key, const pd_str **strs, uint64_t *n);

/* Tensors: NULL if absent. */
const pd_gguf_tensor *pd_gguf_tensor_by_name(const pd_gguf *g, const char *name);
uint64_t pd_gguf_n_tensors(const pd_gguf *g);
const pd_gguf_tensor *pd_gguf_tensor_at(const pd_gguf *g, uint64_t i);

#endif /* PD_GGUF_H */
