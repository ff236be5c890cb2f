/*
 * kernels.h -- the one kernel interface of prefixd, as the model runtime sees it.
 *
 * The CPU set is the reference and is always built; each header below is one operation family:
 *
 *   pd_quant.h      block formats of GGUF weights: sizes, dequantization, quantizers
 *   pd_matmul.h     y = x . W^T on quantized weights (exact and fast modes), batch-invariant
 *   pd_attention.h  the paged KV block layout, storing K/V, causal attention over block tables
 *   pd_ops.h        RMSNorm, RoPE (normal and NEOX), SwiGLU, residual add
 *
 * Sampling lives with the model (model/pd_sampler.h). The CUDA backend (kernels/cuda/) offers
 * the same operations on device pointers and is tested against these, function by function.
 */
#ifndef PD_KERNELS_H
#define PD_KERNELS_H

#include "pd_attention.h"
#include "pd_matmul.h"
#include "pd_ops.h"
#include "pd_quant.h"

#endif /* PD_KERNELS_H */
