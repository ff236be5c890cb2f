/*
 * pd_gguf_writer.c -- see pd_gguf_writer.h. Metadata is serialized into a growing byte buffer
 * as it is added; tensor infos and data are kept per tensor and laid out at write time.
 */
#include "pd_gguf_writer.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_err.h"
#include "pd_gguf.h"
#include "pd_quant.h"

typedef struct buf {
  uint8_t *p;
  size_t n, cap;
} buf;

typedef struct wtensor {
  char *name;
  int n_dims;
  uint64_t ne[4];
  enum pd_ggml_type type;
  void *data;
  size_t nbytes;
} wtensor;

struct pd_gguf_writer {
  buf kv;
  uint64_t n_kv;
  wtensor *tensors;
  size_t n_tensors, cap_tensors;
};

static int put(buf *b, const void *p, size_t n) {
  if (b->n + n > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 4096;
    while (cap < b->n + n) cap *= 2;
    uint8_t *q = realloc(b->p, cap);
    if (!q) return PD_ENOMEM;
    b->p = q;
    b->cap = cap;
  }
  memcpy(b->p + b->n, p, n);
  b->n += n;
  return PD_OK;
}

static int put_u32(buf *b, uint32_t v) {
  return put(b, &v, 4);
}
static int put_u64(buf *b, uint64_t v) {
  return put(b, &v, 8);
}
static int put_str(buf *b, const char *s) {
  int rc = put_u64(b, strlen(s));
  return rc ? rc : put(b, s, strlen(s));
}

int pd_gguf_writer_create(pd_gguf_writer **out) {
  *out = calloc(1, sizeof **out);
  return *out ? PD_OK : PD_ENOMEM;
}

void pd_gguf_writer_free(pd_gguf_writer *w) {
  if (!w) return;
  for (size_t i = 0; i < w->n_tensors; i++) {
    free(w->tensors[i].name);
    free(w->tensors[i].data);
  }
  free(w->tensors);
  free(w->kv.p);
  free(w);
}

static int key(pd_gguf_writer *w, const char *k, uint32_t type) {
  int rc = put_str(&w->kv, k);
  if (!rc) rc = put_u32(&w->kv, type);
  if (!rc) w->n_kv++;
  return rc;
}

int pd_gguf_add_str(pd_gguf_writer *w, const char *k, const char *val) {
  int rc = key(w, k, PD_GGUF_STRING);
  return rc ? rc : put_str(&w->kv, val);
}
int pd_gguf_add_u32(pd_gguf_writer *w, const char *k, uint32_t val) {
  int rc = key(w, k, PD_GGUF_U32);
  return rc ? rc : put_u32(&w->kv, val);
}
int pd_gguf_add_f32(pd_gguf_writer *w, const char *k, float val) {
  int rc = key(w, k, PD_GGUF_F32);
  return rc ? rc : put(&w->kv, &val, 4);
}
int pd_gguf_add_bool(pd_gguf_writer *w, const char *k, int val) {
  uint8_t v = val ? 1 : 0;
  int rc = key(w, k, PD_GGUF_BOOL);
  return rc ? rc : put(&w->kv, &v, 1);
}
int pd_gguf_add_str_arr(pd_gguf_writer *w, const char *k, const char *const *vals, size_t n) {
  int rc = key(w, k, PD_GGUF_ARRAY);
  if (!rc) rc = put_u32(&w->kv, PD_GGUF_STRING);
  if (!rc) rc = put_u64(&w->kv, n);
  for (size_t i = 0; i < n && !rc; i++) rc = put_str(&w->kv, vals[i]);
  return rc;
}
int pd_gguf_add_i32_arr(pd_gguf_writer *w, const char *k, const int32_t *vals, size_t n) {
  int rc = key(w, k, PD_GGUF_ARRAY);
  if (!rc) rc = put_u32(&w->kv, PD_GGUF_I32);
  if (!rc) rc = put_u64(&w->kv, n);
  return rc ? rc : put(&w->kv, vals, 4 * n);
}

int pd_gguf_add_tensor(pd_gguf_writer *w, const char *name, int n_dims, const uint64_t *ne,
                       enum pd_ggml_type t, const void *data, size_t nbytes) {
  if (n_dims < 1 || n_dims > 4) return PD_EINVAL;
  uint64_t rows = 1;
  for (int d = 1; d < n_dims; d++) rows *= ne[d];
  size_t row = pd_ggml_row_bytes(t, (int64_t)ne[0]);
  if (!row || row * rows != nbytes) return PD_EINVAL;
  if (w->n_tensors == w->cap_tensors) {
    size_t cap = w->cap_tensors ? w->cap_tensors * 2 : 64;
    wtensor *n = realloc(w->tensors, cap * sizeof *n);
    if (!n) return PD_ENOMEM;
    w->tensors = n;
    w->cap_tensors = cap;
  }
  wtensor *wt = &w->tensors[w->n_tensors];
  memset(wt, 0, sizeof *wt);
  wt->name = strdup(name);
  wt->data = malloc(nbytes ? nbytes : 1);
  if (!wt->name || !wt->data) {
    free(wt->name);
    free(wt->data);
    return PD_ENOMEM;
  }
  memcpy(wt->data, data, nbytes);
  wt->n_dims = n_dims;
  for (int d = 0; d < 4; d++) wt->ne[d] = d < n_dims ? ne[d] : 1;
  wt->type = t;
  wt->nbytes = nbytes;
  w->n_tensors++;
  return PD_OK;
}

#define ALIGN 32

int pd_gguf_writer_write(const pd_gguf_writer *w, const char *path, char *err, size_t errlen) {
  buf h = {0};
  int rc = put_u32(&h, 0x46554747u);
  if (!rc) rc = put_u32(&h, 3);
  if (!rc) rc = put_u64(&h, w->n_tensors);
  if (!rc) rc = put_u64(&h, w->n_kv);
  if (!rc) rc = put(&h, w->kv.p, w->kv.n);
  uint64_t off = 0;
  for (size_t i = 0; i < w->n_tensors && !rc; i++) {
    const wtensor *t = &w->tensors[i];
    rc = put_str(&h, t->name);
    if (!rc) rc = put_u32(&h, (uint32_t)t->n_dims);
    for (int d = 0; d < t->n_dims && !rc; d++) rc = put_u64(&h, t->ne[d]);
    if (!rc) rc = put_u32(&h, (uint32_t)t->type);
    if (!rc) rc = put_u64(&h, off);
    off += (t->nbytes + ALIGN - 1) / ALIGN * ALIGN;
  }
  static const uint8_t zeros[ALIGN] = {0};
  if (!rc && h.n % ALIGN) rc = put(&h, zeros, ALIGN - h.n % ALIGN);
  if (rc) {
    free(h.p);
    if (err && errlen) snprintf(err, errlen, "gguf writer: out of memory");
    return rc;
  }
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "wb");
  if (!f) {
    int e = errno;
    free(h.p);
    if (err && errlen) snprintf(err, errlen, "gguf writer: cannot create %s: %s", tmp, strerror(e));
    return pd_err_from_errno(e);
  }
  int ok = fwrite(h.p, 1, h.n, f) == h.n;
  for (size_t i = 0; i < w->n_tensors && ok; i++) {
    const wtensor *t = &w->tensors[i];
    ok = fwrite(t->data, 1, t->nbytes, f) == t->nbytes;
    size_t pad = (ALIGN - t->nbytes % ALIGN) % ALIGN;
    if (ok && pad) ok = fwrite(zeros, 1, pad, f) == pad;
  }
  free(h.p);
  if (fclose(f) != 0) ok = 0;
  if (!ok || rename(tmp, path) != 0) {
    int e = errno;
    remove(tmp);
    if (err && errlen) snprintf(err, errlen, "gguf writer: cannot write %s: %s", path, strerror(e));
    return e ? pd_err_from_errno(e) : PD_EIO;
  }
  return PD_OK;
}
