/*
 * pd_cuda_weight.h -- a matmul weight in device memory, dequantized from its GGUF blocks.
 *
 * The GPU path does not read quantized blocks: at load, each weight row is dequantized on the
 * host with pd_dequant_row (kernels/cpu/pd_quant.h, the exact reference dequantization) and
 * uploaded either as f32 (the "exact" mode, which reproduces the CPU's greedy tokens) or as f16
 * rounded to nearest even (the "fast" mode, half the memory and tensor-core GEMMs). Several GGUF
 * tensors with the same in_dim can be stacked into one weight (rows of wq, wk and wv become one
 * QKV projection), by uploading each at its own first row.
 *
 * Layout: out_dim rows of in_dim elements, row-major, exactly as the GGUF stores the tensor
 * (ne[0] = in_dim), so y = x . W^T (pd_cuda_gemm.h).
 *
 * Errors: PD_EINVAL (bad shape or type, with the reason in err), PD_ENOMEM (host or device
 * allocation; the message names the bytes asked), PD_EDEVICE (another CUDA failure).
 */
#ifndef PD_CUDA_WEIGHT_H
#define PD_CUDA_WEIGHT_H

#include <stddef.h>
#include <stdint.h>

#include "pd_dtype.h"
#include "pd_ggml.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pd_cuda_weight {
  void *data;          /* device (out_dim, in_dim) of dtype; owned (pd_cuda_weight_free) */
  enum pd_dtype dtype; /* PD_DTYPE_F32 or PD_DTYPE_F16 */
  int64_t in_dim, out_dim;
} pd_cuda_weight;

/* Allocates an uninitialised (out_dim, in_dim) weight of dtype f32 or f16. name (for messages)
 * may be NULL. On failure *w is zeroed. */
int pd_cuda_weight_alloc(pd_cuda_weight *w, int64_t in_dim, int64_t out_dim, enum pd_dtype dtype,
                         const char *name, char *err, size_t errlen);

/*
 * Dequantizes n_rows rows of a GGUF tensor and writes them to rows row0 .. row0 + n_rows - 1 of
 * w. host: n_rows rows of w->in_dim elements of type t, pd_ggml_row_bytes(t, in_dim) bytes each
 * (borrowed for the call). Synchronous: when it returns, host may be unmapped.
 */
int pd_cuda_weight_upload(pd_cuda_weight *w, int64_t row0, const void *host, enum pd_ggml_type t,
                          int64_t n_rows, char *err, size_t errlen);

/* Bytes of device memory the weight holds. */
size_t pd_cuda_weight_bytes(const pd_cuda_weight *w);

/* Frees the device memory (NULL data is fine) and zeroes *w. */
void pd_cuda_weight_free(pd_cuda_weight *w);

#ifdef __cplusplus
}
#endif

#endif /* PD_CUDA_WEIGHT_H */
