/*
 * pd_cuda_err.h -- a CUDA runtime error as a pd_status with its reason: the one translation
 * every file of the CUDA backend uses (kernels, the GPU model, the device pool).
 */
#ifndef PD_CUDA_ERR_H
#define PD_CUDA_ERR_H

#include <cuda_runtime.h>
#include <stddef.h>

#include "pd_err.h"

/* cudaErrorMemoryAllocation is PD_ENOMEM (an admission refusal, a clear start-up error); every
 * other CUDA error is PD_EDEVICE. */
static inline int pd_cuda_rc(cudaError_t e) {
  return e == cudaErrorMemoryAllocation ? PD_ENOMEM : PD_EDEVICE;
}

/* Writes "cuda: WHAT: <CUDA's string>" into err, clears the runtime's last-error state (so a
 * later launch check does not report this error again; a sticky error stays) and returns
 * pd_cuda_rc(e). */
static inline int pd_cuda_fail(cudaError_t e, char *err, size_t errlen, const char *what) {
  cudaGetLastError();
  return pd_errf(err, errlen, pd_cuda_rc(e), "cuda: %s: %s", what, cudaGetErrorString(e));
}

#endif /* PD_CUDA_ERR_H */
