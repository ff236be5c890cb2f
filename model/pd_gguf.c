/*
 * pd_gguf.c -- the GGUF reader; the contract is in pd_gguf.h.
 *
 * The file is mapped read-only and parsed once by a cursor that checks every read against the
 * end of the mapping. Metadata values are not copied: the handle keeps, per key, the offset of
 * its value, and string arrays get an index of (pointer, length) pairs built at open. Tensor
 * infos are validated as a whole after parsing: a known type, dimensions whose product fits in
 * 63 bits and is a multiple of the type's block, a data range inside the file's data section,
 * aligned, and not overlapping another tensor's.
 */
#include "pd_gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pd_err.h"
#include "pd_quant.h"

#define GGUF_MAGIC 0x46554747u /* "GGUF" */
#define MAX_DIMS   4

typedef struct kv {
  pd_str key;
  enum pd_gguf_vtype type;
  enum pd_gguf_vtype elem_type; /* arrays */
  uint64_t n;                   /* arrays: element count */
  const uint8_t *val;           /* the value (for arrays: the first element) */
  pd_str *strs;                 /* string arrays: (n) */
} kv;

struct pd_gguf {
  const uint8_t *map;
  size_t size;
  uint32_t version;
  kv *kvs;
  uint64_t n_kv;
  pd_gguf_tensor *tensors;
  uint64_t n_tensors;
};

typedef struct cursor {
  const uint8_t *p, *end;
  char *err;
  size_t errlen;
  int rc;
} cursor;

/* ggml's name for any tensor type number, for the message that refuses one (pd_quant.h names the
 * ones prefixd reads). */
static const char *ggml_type_name(uint32_t type) {
  static const char *const names[] = {
      "f32",      "f16",      "q4_0",    "q4_1",  "q4_2",   "q4_3",  "q5_0",  "q5_1",
      "q8_0",     "q8_1",     "q2_k",    "q3_k",  "q4_k",   "q5_k",  "q6_k",  "q8_k",
      "iq2_xxs",  "iq2_xs",   "iq3_xxs", "iq1_s", "iq4_nl", "iq3_s", "iq2_s", "iq4_xs",
      "i8",       "i16",      "i32",     "i64",   "f64",    "iq1_m", "bf16",  "q4_0_4_4",
      "q4_0_4_8", "q4_0_8_8", "tq1_0",   "tq2_0"};
  return type < sizeof names / sizeof names[0] ? names[type] : "unknown";
}

static int failf(cursor *c, int rc, const char *fmt, ...) {
  if (c->rc) return c->rc;
  c->rc = rc;
  if (c->err && c->errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, c->errlen, fmt, ap);
    va_end(ap);
  }
  return rc;
}

static int need(cursor *c, uint64_t n, const char *what) {
  if (c->rc) return 0;
  if ((uint64_t)(c->end - c->p) < n) {
    failf(c, PD_ECORRUPT, "gguf: truncated while reading %s", what);
    return 0;
  }
  return 1;
}

static uint64_t rd_u64(cursor *c, const char *what) {
  if (!need(c, 8, what)) return 0;
  uint64_t v;
  memcpy(&v, c->p, 8);
  c->p += 8;
  return v;
}

static uint32_t rd_u32(cursor *c, const char *what) {
  if (!need(c, 4, what)) return 0;
  uint32_t v;
  memcpy(&v, c->p, 4);
  c->p += 4;
  return v;
}

static pd_str rd_str(cursor *c, const char *what) {
  pd_str s = {NULL, 0};
  uint64_t len = rd_u64(c, what);
  if (!need(c, len, what)) return s;
  s.ptr = (const char *)c->p;
  s.len = len;
  c->p += len;
  return s;
}

static uint64_t scalar_size(enum pd_gguf_vtype t) {
  switch (t) {
  case PD_GGUF_U8:
  case PD_GGUF_I8:
  case PD_GGUF_BOOL: return 1;
  case PD_GGUF_U16:
  case PD_GGUF_I16: return 2;
  case PD_GGUF_U32:
  case PD_GGUF_I32:
  case PD_GGUF_F32: return 4;
  case PD_GGUF_U64:
  case PD_GGUF_I64:
  case PD_GGUF_F64: return 8;
  default: return 0;
  }
}

static int parse_kv(cursor *c, kv *out) {
  out->key = rd_str(c, "a metadata key");
  out->type = (enum pd_gguf_vtype)rd_u32(c, "a value type");
  if (c->rc) return c->rc;
  out->val = c->p;
  if (out->type == PD_GGUF_STRING) {
    rd_str(c, "a string value");
  } else if (out->type == PD_GGUF_ARRAY) {
    out->elem_type = (enum pd_gguf_vtype)rd_u32(c, "an array type");
    out->n = rd_u64(c, "an array length");
    if (c->rc) return c->rc;
    out->val = c->p;
    if (out->elem_type == PD_GGUF_STRING) {
      if (out->n > (uint64_t)(c->end - c->p) / 8)
        return failf(c, PD_ECORRUPT, "gguf: key %.*s: array of %llu strings exceeds the file",
                     (int)out->key.len, out->key.ptr, (unsigned long long)out->n);
      out->strs = malloc((out->n ? out->n : 1) * sizeof *out->strs);
      if (!out->strs) return failf(c, PD_ENOMEM, "gguf: out of memory");
      for (uint64_t i = 0; i < out->n && !c->rc; i++) out->strs[i] = rd_str(c, "an array string");
    } else {
      uint64_t es = scalar_size(out->elem_type);
      if (!es)
        return failf(c, PD_ECORRUPT, "gguf: key %.*s: bad array element type %u", (int)out->key.len,
                     out->key.ptr, (unsigned)out->elem_type);
      if (out->n > UINT64_MAX / es || !need(c, out->n * es, "an array"))
        return failf(c, PD_ECORRUPT, "gguf: key %.*s: array exceeds the file", (int)out->key.len,
                     out->key.ptr);
      c->p += out->n * es;
    }
  } else {
    uint64_t es = scalar_size(out->type);
    if (!es)
      return failf(c, PD_ECORRUPT, "gguf: key %.*s: bad value type %u", (int)out->key.len,
                   out->key.ptr, (unsigned)out->type);
    if (need(c, es, "a value")) c->p += es;
  }
  return c->rc;
}

static int cmp_range(const void *a, const void *b) {
  const pd_gguf_tensor *x = *(pd_gguf_tensor *const *)a, *y = *(pd_gguf_tensor *const *)b;
  return x->data < y->data ? -1 : x->data > y->data;
}

void pd_gguf_close(pd_gguf *g) {
  if (!g) return;
  for (uint64_t i = 0; i < g->n_kv; i++) free(g->kvs[i].strs);
  free(g->kvs);
  free(g->tensors);
  if (g->map) munmap((void *)g->map, g->size);
  free(g);
}

static const kv *find_kv(const pd_gguf *g, const char *key) {
  size_t len = strlen(key);
  for (uint64_t i = 0; i < g->n_kv; i++)
    if (g->kvs[i].key.len == len && !memcmp(g->kvs[i].key.ptr, key, len)) return &g->kvs[i];
  return NULL;
}

int pd_gguf_open(const char *path, pd_gguf **out, char *err, size_t errlen) {
  *out = NULL;
  cursor c = {.err = err, .errlen = errlen};
  if (err && errlen) err[0] = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    failf(&c, pd_err_from_errno(e), "gguf: cannot open %s: %s", path, strerror(e));
    return c.rc;
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return failf(&c, PD_EINVAL, "gguf: %s is not a regular file", path);
  }
  pd_gguf *g = calloc(1, sizeof *g);
  if (!g) {
    close(fd);
    return failf(&c, PD_ENOMEM, "gguf: out of memory");
  }
  g->size = (size_t)st.st_size;
  if (g->size < 24) {
    close(fd);
    pd_gguf_close(g);
    return failf(&c, PD_ECORRUPT, "gguf: %s is too short (%zu bytes) to be a GGUF file", path,
                 (size_t)st.st_size);
  }
  void *m = mmap(NULL, g->size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (m == MAP_FAILED) {
    int e = errno;
    pd_gguf_close(g);
    return failf(&c, pd_err_from_errno(e), "gguf: cannot map %s: %s", path, strerror(e));
  }
  g->map = m;
  c.p = g->map;
  c.end = g->map + g->size;

  if (rd_u32(&c, "the magic") != GGUF_MAGIC) failf(&c, PD_ECORRUPT, "gguf: %s: bad magic", path);
  g->version = rd_u32(&c, "the version");
  if (!c.rc && (g->version < 2 || g->version > 3))
    failf(&c, PD_EUNSUPPORTED, "gguf: version %u is not supported (2 and 3 are)", g->version);
  uint64_t n_tensors = rd_u64(&c, "the tensor count");
  uint64_t n_kv = rd_u64(&c, "the metadata count");
  /* Each entry takes at least 12 bytes: the counts can't exceed the file. */
  if (!c.rc && (n_kv > g->size / 12 || n_tensors > g->size / 24))
    failf(&c, PD_ECORRUPT, "gguf: counts (%llu tensors, %llu keys) exceed the file",
          (unsigned long long)n_tensors, (unsigned long long)n_kv);
  if (!c.rc) {
    g->kvs = calloc(n_kv ? n_kv : 1, sizeof *g->kvs);
    g->tensors = calloc(n_tensors ? n_tensors : 1, sizeof *g->tensors);
    if (!g->kvs || !g->tensors) failf(&c, PD_ENOMEM, "gguf: out of memory");
  }
  for (uint64_t i = 0; i < n_kv && !c.rc; i++) {
    parse_kv(&c, &g->kvs[i]);
    g->n_kv = i + 1;
  }
  uint64_t alignment = 32;
  if (!c.rc) {
    uint32_t a;
    int rc = pd_gguf_get_u32(g, "general.alignment", &a);
    if (rc == 0) {
      if (a == 0 || (a & (a - 1)) || a > (1u << 20))
        failf(&c, PD_ECORRUPT, "gguf: general.alignment %u is not a power of two", a);
      alignment = a;
    } else if (rc != PD_ENOTFOUND) {
      failf(&c, PD_ECORRUPT, "gguf: general.alignment has the wrong type");
    }
  }
  uint64_t *offsets = c.rc ? NULL : calloc(n_tensors ? n_tensors : 1, sizeof *offsets);
  if (!offsets && !c.rc) failf(&c, PD_ENOMEM, "gguf: out of memory");
  for (uint64_t i = 0; i < n_tensors && !c.rc; i++) {
    pd_gguf_tensor *t = &g->tensors[i];
    t->name = rd_str(&c, "a tensor name");
    t->n_dims = rd_u32(&c, "a tensor's dimension count");
    if (!c.rc && (t->n_dims == 0 || t->n_dims > MAX_DIMS))
      failf(&c, PD_ECORRUPT, "gguf: tensor %.*s has %u dimensions", (int)t->name.len, t->name.ptr,
            t->n_dims);
    for (uint32_t d = 0; d < MAX_DIMS; d++) t->ne[d] = 1;
    for (uint32_t d = 0; d < t->n_dims && !c.rc; d++) t->ne[d] = rd_u64(&c, "a dimension");
    uint32_t type = rd_u32(&c, "a tensor type");
    offsets[i] = rd_u64(&c, "a tensor offset");
    if (c.rc) break;
    if (!pd_ggml_type_supported(type)) {
      char known[256];
      size_t k = 0;
      for (int j = 0; j < PD_GGML_N_TYPES && k < sizeof known; j++)
        k += (size_t)snprintf(known + k, sizeof known - k, "%s%s", j ? ", " : "",
                              pd_ggml_type_name(pd_ggml_types[j]));
      failf(&c, PD_EUNSUPPORTED,
            "gguf: tensor %.*s has type %u (%s), which prefixd does not read (it reads %s)",
            (int)t->name.len, t->name.ptr, type, ggml_type_name(type), known);
      break;
    }
    t->type = (enum pd_ggml_type)type;
    uint64_t n_elems = 1;
    for (uint32_t d = 0; d < MAX_DIMS; d++) {
      if (t->ne[d] == 0 || t->ne[d] > (1ull << 40) || n_elems > (1ull << 62) / t->ne[d]) {
        failf(&c, PD_ECORRUPT, "gguf: tensor %.*s has bad dimensions", (int)t->name.len,
              t->name.ptr);
        break;
      }
      n_elems *= t->ne[d];
    }
    if (c.rc) break;
    size_t row = pd_ggml_row_bytes(t->type, (int64_t)t->ne[0]);
    if (row == 0) {
      failf(&c, PD_ECORRUPT, "gguf: tensor %.*s: row of %llu is not a multiple of the %s block",
            (int)t->name.len, t->name.ptr, (unsigned long long)t->ne[0],
            pd_ggml_type_name(t->type));
      break;
    }
    uint64_t rows = n_elems / t->ne[0];
    if (rows > UINT64_MAX / row) { /* 2^62 f32 elements: the size would wrap to 0 */
      failf(&c, PD_ECORRUPT, "gguf: tensor %.*s is too large", (int)t->name.len, t->name.ptr);
      break;
    }
    t->nbytes = (uint64_t)row * rows;
  }
  if (!c.rc) {
    g->n_tensors = n_tensors;
    uint64_t header_end = (uint64_t)(c.p - g->map);
    uint64_t data_start = (header_end + alignment - 1) / alignment * alignment;
    for (uint64_t i = 0; i < n_tensors && !c.rc; i++) {
      pd_gguf_tensor *t = &g->tensors[i];
      if (offsets[i] % alignment)
        failf(&c, PD_ECORRUPT, "gguf: tensor %.*s: offset %llu is not aligned to %llu",
              (int)t->name.len, t->name.ptr, (unsigned long long)offsets[i],
              (unsigned long long)alignment);
      else if (data_start > g->size || offsets[i] > g->size - data_start ||
               t->nbytes > g->size - data_start - offsets[i])
        failf(&c, PD_ECORRUPT,
              "gguf: tensor %.*s: data (%llu bytes at %llu) past the end of the file",
              (int)t->name.len, t->name.ptr, (unsigned long long)t->nbytes,
              (unsigned long long)offsets[i]);
      else
        t->data = g->map + data_start + offsets[i];
    }
    /* No two tensors may overlap. */
    pd_gguf_tensor **byaddr = c.rc ? NULL : malloc((n_tensors ? n_tensors : 1) * sizeof *byaddr);
    if (!c.rc && !byaddr) failf(&c, PD_ENOMEM, "gguf: out of memory");
    if (!c.rc) {
      for (uint64_t i = 0; i < n_tensors; i++) byaddr[i] = &g->tensors[i];
      qsort(byaddr, n_tensors, sizeof *byaddr, cmp_range);
      for (uint64_t i = 1; i < n_tensors && !c.rc; i++)
        if ((const uint8_t *)byaddr[i - 1]->data + byaddr[i - 1]->nbytes >
            (const uint8_t *)byaddr[i]->data)
          failf(&c, PD_ECORRUPT, "gguf: tensors %.*s and %.*s overlap",
                (int)byaddr[i - 1]->name.len, byaddr[i - 1]->name.ptr, (int)byaddr[i]->name.len,
                byaddr[i]->name.ptr);
    }
    free(byaddr);
  }
  free(offsets);
  if (c.rc) {
    pd_gguf_close(g);
    return c.rc;
  }
  *out = g;
  return PD_OK;
}

uint32_t pd_gguf_version(const pd_gguf *g) {
  return g->version;
}

static int get_int(const kv *k, int64_t *out) {
  const uint8_t *v = k->val;
  switch (k->type) {
  case PD_GGUF_U8: *out = v[0]; return PD_OK;
  case PD_GGUF_I8: *out = (int8_t)v[0]; return PD_OK;
  case PD_GGUF_BOOL: *out = v[0] != 0; return PD_OK;
  case PD_GGUF_U16: {
    uint16_t x;
    memcpy(&x, v, 2);
    *out = x;
    return PD_OK;
  }
  case PD_GGUF_I16: {
    int16_t x;
    memcpy(&x, v, 2);
    *out = x;
    return PD_OK;
  }
  case PD_GGUF_U32: {
    uint32_t x;
    memcpy(&x, v, 4);
    *out = x;
    return PD_OK;
  }
  case PD_GGUF_I32: {
    int32_t x;
    memcpy(&x, v, 4);
    *out = x;
    return PD_OK;
  }
  case PD_GGUF_U64: {
    uint64_t x;
    memcpy(&x, v, 8);
    if (x > INT64_MAX) return PD_EINVAL;
    *out = (int64_t)x;
    return PD_OK;
  }
  case PD_GGUF_I64: memcpy(out, v, 8); return PD_OK;
  default: return PD_EINVAL;
  }
}

int pd_gguf_get_i64(const pd_gguf *g, const char *key, int64_t *out) {
  const kv *k = find_kv(g, key);
  return k ? get_int(k, out) : PD_ENOTFOUND;
}

int pd_gguf_get_u32(const pd_gguf *g, const char *key, uint32_t *out) {
  int64_t v;
  int rc = pd_gguf_get_i64(g, key, &v);
  if (rc) return rc;
  if (v < 0 || v > UINT32_MAX) return PD_EINVAL;
  *out = (uint32_t)v;
  return PD_OK;
}

int pd_gguf_get_bool(const pd_gguf *g, const char *key, int *out) {
  int64_t v;
  int rc = pd_gguf_get_i64(g, key, &v);
  if (!rc) *out = v != 0;
  return rc;
}

int pd_gguf_get_f32(const pd_gguf *g, const char *key, float *out) {
  const kv *k = find_kv(g, key);
  if (!k) return PD_ENOTFOUND;
  if (k->type == PD_GGUF_F32) {
    memcpy(out, k->val, 4);
    return PD_OK;
  }
  if (k->type == PD_GGUF_F64) {
    double d;
    memcpy(&d, k->val, 8);
    *out = (float)d;
    return PD_OK;
  }
  int64_t v;
  if (get_int(k, &v)) return PD_EINVAL;
  *out = (float)v;
  return PD_OK;
}

int pd_gguf_get_str(const pd_gguf *g, const char *key, pd_str *out) {
  const kv *k = find_kv(g, key);
  if (!k) return PD_ENOTFOUND;
  if (k->type != PD_GGUF_STRING) return PD_EINVAL;
  uint64_t len;
  memcpy(&len, k->val, 8);
  out->ptr = (const char *)k->val + 8;
  out->len = len;
  return PD_OK;
}

int pd_gguf_get_arr(const pd_gguf *g, const char *key, enum pd_gguf_vtype *elem_type, uint64_t *n,
                    const void **data) {
  const kv *k = find_kv(g, key);
  if (!k) return PD_ENOTFOUND;
  if (k->type != PD_GGUF_ARRAY || k->elem_type == PD_GGUF_STRING) return PD_EINVAL;
  *elem_type = k->elem_type;
  *n = k->n;
  *data = k->val;
  return PD_OK;
}

int pd_gguf_get_str_arr(const pd_gguf *g, const char *key, const pd_str **strs, uint64_t *n) {
  const kv *k = find_kv(g, key);
  if (!k) return PD_ENOTFOUND;
  if (k->type != PD_GGUF_ARRAY || k->elem_type != PD_GGUF_STRING) return PD_EINVAL;
  *strs = k->strs;
  *n = k->n;
  return PD_OK;
}

const pd_gguf_tensor *pd_gguf_tensor_by_name(const pd_gguf *g, const char *name) {
  size_t len = strlen(name);
  for (uint64_t i = 0; i < g->n_tensors; i++)
    if (g->tensors[i].name.len == len && !memcmp(g->tensors[i].name.ptr, name, len))
      return &g->tensors[i];
  return NULL;
}

uint64_t pd_gguf_n_tensors(const pd_gguf *g) {
  return g->n_tensors;
}

const pd_gguf_tensor *pd_gguf_tensor_at(const pd_gguf *g, uint64_t i) {
  return i < g->n_tensors ? &g->tensors[i] : NULL;
}
