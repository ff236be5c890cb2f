/*
 * pd_cuda_weight.c -- see pd_cuda_weight.h.
 *
 * Upload goes through a host buffer of at most UPLOAD_ELEMS elements: rows are dequantized into
 * it (f32), narrowed to f16 when the weight is f16 (pd_f32_to_f16: round to nearest even, the
 * same rounding as __float2half_rn), and copied with one synchronous cudaMemcpy per chunk. Rows
 * are dequantized in parallel (OpenMP). Doing it on the device instead is speed work left for
 * bigger models.
 */
#include "pd_cuda_weight.h"

#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_cuda_err.h"
#include "pd_err.h"
#include "pd_quant.h"

#define UPLOAD_ELEMS ((int64_t)1 << 20) /* elements per host chunk: 4 MiB of f32 */

size_t pd_cuda_weight_bytes(const pd_cuda_weight *w) {
  return (size_t)w->in_dim * (size_t)w->out_dim * pd_dtype_size(w->dtype);
}

int pd_cuda_weight_alloc(pd_cuda_weight *w, int64_t in_dim, int64_t out_dim, enum pd_dtype dtype,
                         const char *name, char *err, size_t errlen) {
  memset(w, 0, sizeof *w);
  if (in_dim <= 0 || out_dim <= 0 || in_dim > ((int64_t)1 << 31) || out_dim > ((int64_t)1 << 31) ||
      (dtype != PD_DTYPE_F32 && dtype != PD_DTYPE_F16)) {
    if (err && errlen)
      snprintf(err, errlen, "cuda weight %s: bad shape (%lld x %lld) or dtype %s",
               name ? name : "?", (long long)out_dim, (long long)in_dim, pd_dtype_name(dtype));
    return PD_EINVAL;
  }
  size_t bytes = (size_t)in_dim * (size_t)out_dim * pd_dtype_size(dtype);
  cudaError_t e = cudaMalloc(&w->data, bytes);
  if (e != cudaSuccess) {
    w->data = NULL;
    char what[160];
    snprintf(what, sizeof what, "cudaMalloc of %zu bytes for weight %s (%lld x %lld %s)", bytes,
             name ? name : "?", (long long)out_dim, (long long)in_dim, pd_dtype_name(dtype));
    return pd_cuda_fail(e, err, errlen, what);
  }
  w->dtype = dtype;
  w->in_dim = in_dim;
  w->out_dim = out_dim;
  return PD_OK;
}

int pd_cuda_weight_upload(pd_cuda_weight *w, int64_t row0, const void *host, enum pd_ggml_type t,
                          int64_t n_rows, char *err, size_t errlen) {
  size_t row_bytes = pd_ggml_row_bytes(t, w->in_dim);
  if (!w->data || row0 < 0 || n_rows < 0 || row0 > w->out_dim - n_rows || !row_bytes ||
      (n_rows && !host)) {
    if (err && errlen)
      snprintf(err, errlen,
               "cuda weight upload: rows %lld..+%lld of %lld, type %s with %lld columns refused",
               (long long)row0, (long long)n_rows, (long long)w->out_dim, pd_ggml_type_name(t),
               (long long)w->in_dim);
    return PD_EINVAL;
  }
  const int64_t in = w->in_dim;
  int64_t chunk = UPLOAD_ELEMS / in;
  if (chunk < 1) chunk = 1;
  if (chunk > n_rows) chunk = n_rows;
  if (!chunk) return PD_OK;
  const size_t es = pd_dtype_size(w->dtype);
  float *f = malloc((size_t)chunk * (size_t)in * sizeof *f); /* (chunk, in) f32 */
  uint16_t *h = w->dtype == PD_DTYPE_F16 ? malloc((size_t)chunk * (size_t)in * sizeof *h)
                                         : NULL; /* (chunk, in) f16 bits */
  if (!f || (w->dtype == PD_DTYPE_F16 && !h)) {
    free(f), free(h);
    if (err && errlen)
      snprintf(err, errlen, "cuda weight upload: cannot allocate %zu bytes of host memory",
               (size_t)chunk * (size_t)in * (sizeof *f + (h ? sizeof *h : 0)));
    return PD_ENOMEM;
  }
  int rc = PD_OK;
  for (int64_t r = 0; r < n_rows && !rc; r += chunk) {
    int64_t nr = n_rows - r < chunk ? n_rows - r : chunk;
    int bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad)
    for (int64_t i = 0; i < nr; i++)
      bad |= pd_dequant_row(t, (const uint8_t *)host + (size_t)(r + i) * row_bytes,
                            f + (size_t)i * (size_t)in, in) != 0;
    if (bad) {
      rc = PD_EINVAL;
      if (err && errlen)
        snprintf(err, errlen, "cuda weight upload: cannot dequantize %s rows",
                 pd_ggml_type_name(t));
      break;
    }
    const void *src = f;
    if (h) {
      const int64_t n_el = nr * in;
#pragma omp parallel for schedule(static)
      for (int64_t j = 0; j < n_el; j++) h[j] = pd_f32_to_f16(f[j]);
      src = h;
    }
    char *dst = (char *)w->data + (size_t)(row0 + r) * (size_t)in * es;
    cudaError_t e = cudaMemcpy(dst, src, (size_t)nr * (size_t)in * es, cudaMemcpyHostToDevice);
    if (e != cudaSuccess) rc = pd_cuda_fail(e, err, errlen, "uploading a weight");
  }
  free(f), free(h);
  return rc;
}

void pd_cuda_weight_free(pd_cuda_weight *w) {
  if (w->data) cudaFree(w->data);
  memset(w, 0, sizeof *w);
}
