/*
 * pd_ops.h -- the small element-wise kernels of a Llama layer, CPU reference: RMSNorm, rotary
 * position embedding, SwiGLU, residual add. Each works on one row at a time, so rows are
 * independent and batch composition never changes a result.
 */
#ifndef PD_OPS_H
#define PD_OPS_H

#include <stdint.h>

/* out (n) = x / sqrt(mean(x^2) + eps) * w */
void pd_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps);

/* Rotates each head of x (n_heads, head_dim) in place for position pos. Only the first
 * rot_dim dimensions of a head rotate. neox = 0: pairs (2i, 2i + 1) ("normal", what GGUF llama
 * weights are permuted for); neox = 1: pairs (i, i + rot_dim / 2). Pair i turns at
 * pos * theta_base^(-2i / rot_dim), divided by freq_factors[i] when freq_factors (rot_dim / 2) is
 * not NULL (Llama 3.1's long-context scaling, the GGUF's rope_freqs.weight). */
void pd_rope(float *x, int n_heads, int head_dim, int rot_dim, int pos, float theta_base, int neox,
             const float *freq_factors);

/* gate (n) = silu(gate) * up */
void pd_swiglu(float *gate, const float *up, int64_t n);

/* x (n) += y */
void pd_add(float *x, const float *y, int64_t n);

#endif /* PD_OPS_H */
