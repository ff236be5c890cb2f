/*
 * pd_cuda_gemm.h -- y = x . W^T on the GPU with cuBLAS, the CUDA path's one matmul.
 *
 * A pd_cuda_gemm owns a cuBLAS handle bound to one stream, cuBLAS's workspace (set explicitly,
 * so that cuBLAS never allocates while a CUDA graph is being captured) and an f16 scratch for
 * activations. Two modes, chosen by the weight's dtype (pd_cuda_weight.h):
 *
 *   f32 weights   f32 x, CUBLAS_COMPUTE_32F_PEDANTIC: f32 products and sums, no TF32 and no
 *                 reduced-precision tensor-core path even when NVIDIA_TF32_OVERRIDE asks for it.
 *                 Matches pd_matmul's exact mode up to the order of the sums.
 *   f16 weights   f16 x (an f32 x is first rounded to f16 into the scratch), f32 accumulation
 *                 and output (CUBLAS_COMPUTE_32F, tensor cores).
 *
 * beta = 0 writes y; beta = 1 adds to it (the residual add of the attention output and the FFN
 * fused into their projections).
 *
 * Determinism: cuBLAS gives the same bits for the same shape, stream and workspace, run after
 * run; it does not promise that a row's result is independent of how many rows are in the call
 * (it may pick another kernel), so unlike the CPU path the GPU path is batch-invariant only
 * within a tolerance (tests/cuda/test_cuda_llama.c measures it).
 *
 * All pointers are device pointers. Errors: PD_EINVAL (shapes; a cuBLAS INVALID_VALUE or
 * NOT_SUPPORTED), PD_ENOMEM, PD_EDEVICE, each with cuBLAS's or CUDA's message in err.
 */
#ifndef PD_CUDA_GEMM_H
#define PD_CUDA_GEMM_H

#include <stddef.h>
#include <stdint.h>

#include "pd_cuda_weight.h"
#include "pd_dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pd_cuda_gemm {
  void *handle;    /* cublasHandle_t, owned */
  void *stream;    /* cudaStream_t, borrowed: every call enqueues on it */
  void *workspace; /* device, workspace_bytes, cuBLAS's workspace; owned */
  size_t workspace_bytes;
  void *x16;         /* device (x16_elems) f16: f32 activations rounded for f16 weights; owned */
  int64_t x16_elems; /* the most rows * in_dim an f32-input f16 call may have */
} pd_cuda_gemm;

/* Creates the handle on stream (a cudaStream_t; NULL: the default stream) with x16_elems of
 * activation scratch (0 when only f32 weights or f16 inputs will be used). */
int pd_cuda_gemm_init(pd_cuda_gemm *g, void *stream, int64_t x16_elems, char *err, size_t errlen);
/* Frees everything; a zeroed or partly initialised g is fine. */
void pd_cuda_gemm_free(pd_cuda_gemm *g);

/*
 * y (rows, w->out_dim) f32 = x (rows, w->in_dim) . W^T + beta * y.
 *   x_dtype: f32, or f16 (only with f16 weights)
 * rows == 0 does nothing. Only enqueues work on g->stream.
 */
int pd_cuda_gemm_run(pd_cuda_gemm *g, const pd_cuda_weight *w, const void *x, enum pd_dtype x_dtype,
                     float *y, int64_t rows, float beta, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif /* PD_CUDA_GEMM_H */
