/*
 * pd_matmul.h -- y = x . W^T on quantized weights, the CPU backend's one matmul.
 *
 * W has out_dim rows of in_dim elements of type wt, exactly as a 2-D GGUF weight is stored
 * (ne[0] = in_dim, ne[1] = out_dim). Two modes:
 *
 *   PD_MATMUL_EXACT  f32 activations times the exactly dequantized weights, f32 accumulation:
 *                    the reference, matched by tests/reference/ within float rounding.
 *   PD_MATMUL_FAST   activations quantized per block of 32 to int8 with an f32 scale (as ggml's
 *                    q8 formats do), integer dot products with AVX2 for every quantized
 *                    format (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, IQ4_XS, Q2_K .. Q6_K); without AVX2
 *                    for Q4_0, Q4_1 and Q8_0. f32, f16 and bf16 weights run the exact path.
 *
 * Determinism (the prefix cache relies on it): each y element is one dot product whose order of
 * operations depends only on in_dim, never on n_rows, the thread count or the other rows, so a
 * row computes the same bits alone or in any batch. Threads (OpenMP) split the output columns.
 */
#ifndef PD_MATMUL_H
#define PD_MATMUL_H

#include <stdint.h>

#include "pd_ggml.h"

enum pd_matmul_mode { PD_MATMUL_EXACT = 0, PD_MATMUL_FAST = 1 };

/* 1 if PD_MATMUL_FAST runs weights of type wt on integer dot products in this build, else 0 (they
 * run the exact path in either mode). */
int pd_matmul_is_fast(enum pd_ggml_type wt);

/* y (n_rows, out_dim) = x (n_rows, in_dim) . W^T. Returns 0, PD_EINVAL (bad type or in_dim not
 * a multiple of the block), PD_ENOMEM. */
int pd_matmul(const void *w, enum pd_ggml_type wt, int64_t in_dim, int64_t out_dim, const float *x,
              float *y, int64_t n_rows, enum pd_matmul_mode mode);

/* One weight of a set that multiplies the same activations: y (n_rows, out_dim) = x . W^T,
 * W of type wt with out_dim rows of in_dim elements. */
typedef struct pd_matmul_out {
  const void *w;
  enum pd_ggml_type wt;
  int64_t out_dim;
  float *y; /* (n_rows, out_dim), written by the call */
} pd_matmul_out;

/* The matmuls of n_outs weights over one x (n_rows, in_dim): a layer's q, k and v projections,
 * or its gate and up. In FAST mode x is quantized once and one parallel region covers the tiles
 * of every weight (one fork/join instead of n_outs); each y holds exactly the bits pd_matmul
 * gives for its weight alone. Returns as pd_matmul; on an error no y is to be trusted. */
int pd_matmul_n(const pd_matmul_out *outs, int n_outs, int64_t in_dim, const float *x,
                int64_t n_rows, enum pd_matmul_mode mode);

/* The dot product both modes use for f32 vectors, exposed for the attention kernels. */
float pd_dot_f32(const float *a, const float *b, int64_t n);

#endif /* PD_MATMUL_H */
