/*
 * pd_cuda_gemm.c -- see pd_cuda_gemm.h.
 *
 * Row-major y (rows, out) = x (rows, in) . W^T with W row-major (out, in) is, in cuBLAS's
 * column-major terms, Y (out x rows, ld out) = W' (in x out, ld in)^T . X (in x rows, ld in):
 * cublasGemmEx(transa = T, transb = N, m = out, n = rows, k = in). alpha and beta are host
 * values (the default pointer mode), read at the call, so a captured graph keeps them.
 *
 * Decode (at most PD_CUDA_GEMV_MAX_ROWS rows, f16 weights) goes to pd_cuda_gemv_f16 instead of
 * cuBLAS: one launch, f32 activations read as they are (no f16 rounding pass). Speed work left: the
 * RMSNorm / SwiGLU folded into the GEMV's prologue would save launches and a pass over the
 * activations.
 */
#include "pd_cuda_gemm.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "pd_cuda_ops.h"
#include "pd_cuda_err.h"
#include "pd_err.h"

/* cuBLAS's recommended workspace on Hopper (32 MiB; 4 MiB is enough before it). */
#define WORKSPACE_BYTES ((size_t)32 << 20)

static int blas_fail(cublasStatus_t st, char *err, size_t errlen, const char *what) {
  if (err && errlen)
    snprintf(err, errlen, "cublas: %s: %s (status %d)", what, cublasGetStatusString(st), (int)st);
  switch (st) {
  case CUBLAS_STATUS_ALLOC_FAILED: return PD_ENOMEM;
  case CUBLAS_STATUS_INVALID_VALUE:
  case CUBLAS_STATUS_NOT_SUPPORTED: return PD_EINVAL;
  default: return PD_EDEVICE;
  }
}

void pd_cuda_gemm_free(pd_cuda_gemm *g) {
  if (g->handle) cublasDestroy((cublasHandle_t)g->handle);
  if (g->workspace) cudaFree(g->workspace);
  if (g->x16) cudaFree(g->x16);
  memset(g, 0, sizeof *g);
}

int pd_cuda_gemm_init(pd_cuda_gemm *g, void *stream, int64_t x16_elems, char *err, size_t errlen) {
  memset(g, 0, sizeof *g);
  if (x16_elems < 0) {
    if (err && errlen) snprintf(err, errlen, "cuda gemm: negative scratch size");
    return PD_EINVAL;
  }
  g->stream = stream;
  cublasHandle_t h;
  cublasStatus_t st = cublasCreate(&h);
  if (st != CUBLAS_STATUS_SUCCESS) return blas_fail(st, err, errlen, "cublasCreate");
  g->handle = h;
  char what[128];
  cudaError_t e = cudaMalloc(&g->workspace, WORKSPACE_BYTES);
  if (e != cudaSuccess) {
    g->workspace = NULL;
    snprintf(what, sizeof what, "cudaMalloc of %zu bytes for the cuBLAS workspace",
             WORKSPACE_BYTES);
    int rc = pd_cuda_fail(e, err, errlen, what);
    pd_cuda_gemm_free(g);
    return rc;
  }
  g->workspace_bytes = WORKSPACE_BYTES;
  if (x16_elems > 0) {
    size_t bytes = (size_t)x16_elems * 2;
    e = cudaMalloc(&g->x16, bytes);
    if (e != cudaSuccess) {
      g->x16 = NULL;
      snprintf(what, sizeof what, "cudaMalloc of %zu bytes for the f16 activation scratch", bytes);
      int rc = pd_cuda_fail(e, err, errlen, what);
      pd_cuda_gemm_free(g);
      return rc;
    }
    g->x16_elems = x16_elems;
  }
  /* cublasSetStream resets the workspace to cuBLAS's own pool, so the stream goes first. */
  if ((st = cublasSetStream(h, (cudaStream_t)stream)) != CUBLAS_STATUS_SUCCESS ||
      (st = cublasSetWorkspace(h, g->workspace, g->workspace_bytes)) != CUBLAS_STATUS_SUCCESS ||
      (st = cublasSetPointerMode(h, CUBLAS_POINTER_MODE_HOST)) != CUBLAS_STATUS_SUCCESS) {
    int rc = blas_fail(st, err, errlen, "configuring the handle");
    pd_cuda_gemm_free(g);
    return rc;
  }
  return PD_OK;
}

int pd_cuda_gemm_run(pd_cuda_gemm *g, const pd_cuda_weight *w, const void *x, enum pd_dtype x_dtype,
                     float *y, int64_t rows, float beta, char *err, size_t errlen) {
  if (!g->handle || !w->data || rows < 0 || rows > INT_MAX || w->in_dim > INT_MAX ||
      w->out_dim > INT_MAX || (w->dtype != PD_DTYPE_F32 && w->dtype != PD_DTYPE_F16) ||
      (x_dtype != PD_DTYPE_F32 && x_dtype != PD_DTYPE_F16) ||
      (w->dtype == PD_DTYPE_F32 && x_dtype != PD_DTYPE_F32)) {
    if (err && errlen)
      snprintf(err, errlen, "cuda gemm: refused (%lld rows, weight %lld x %lld %s, x %s)",
               (long long)rows, (long long)w->out_dim, (long long)w->in_dim,
               pd_dtype_name(w->dtype), pd_dtype_name(x_dtype));
    return PD_EINVAL;
  }
  if (!rows) return PD_OK;
  const int m = (int)w->out_dim, n = (int)rows, k = (int)w->in_dim;
  const float alpha = 1.0f;
  cublasStatus_t st;
  if (w->dtype == PD_DTYPE_F32) {
    st = cublasGemmEx((cublasHandle_t)g->handle, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, w->data,
                      CUDA_R_32F, k, x, CUDA_R_32F, k, &beta, y, CUDA_R_32F, m,
                      CUBLAS_COMPUTE_32F_PEDANTIC, CUBLAS_GEMM_DEFAULT);
  } else if (n <= PD_CUDA_GEMV_MAX_ROWS && k % 8 == 0 &&
             !(((uintptr_t)w->data | (uintptr_t)x) & 15)) {
    /* decode: cuBLAS's kernels for a handful of rows reach a fraction of the bandwidth and may
     * add a split-K reduction; a warp per output reads the f32 rows as they are */
    return pd_cuda_gemv_f16(w->data, x, x_dtype, y, n, k, m, beta, g->stream, err, errlen);
  } else {
    const void *xh = x;
    if (x_dtype == PD_DTYPE_F32) {
      if ((int64_t)n * k > g->x16_elems) {
        if (err && errlen)
          snprintf(err, errlen,
                   "cuda gemm: %d rows of %d need %lld f16 scratch elements, %lld allocated", n, k,
                   (long long)n * k, (long long)g->x16_elems);
        return PD_EINVAL;
      }
      int rc = pd_cuda_f32_to_f16(g->x16, (const float *)x, (int64_t)n * k, g->stream, err, errlen);
      if (rc) return rc;
      xh = g->x16;
    }
    st = cublasGemmEx((cublasHandle_t)g->handle, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, w->data,
                      CUDA_R_16F, k, xh, CUDA_R_16F, k, &beta, y, CUDA_R_32F, m, CUBLAS_COMPUTE_32F,
                      CUBLAS_GEMM_DEFAULT);
  }
  if (st != CUBLAS_STATUS_SUCCESS) return blas_fail(st, err, errlen, "cublasGemmEx");
  return PD_OK;
}
