/*
 * pd_cuda_ops.h -- the small kernels of a Llama layer on the GPU, callable from C: RMSNorm,
 * rotary position embedding (normal and NEOX), SwiGLU, residual add, bias add, embedding gather,
 * f32 -> f16 conversion, greedy argmax, and the decode-sized GEMV on f16 weights (alone, or with
 * the RMSNorm before it and the SwiGLU or the QKV split and RoPE after it fused in).
 *
 * Each one is the twin of a CPU function (kernels/cpu/pd_ops.h, pd_llama.c, pd_sampler.c) and
 * follows its arithmetic step by step, so the only differences left are the order of the RMSNorm
 * sum of squares and the last bit of a transcendental function (exp, pow, sin, cos are computed
 * in double precision and rounded to float, which agrees with glibc's float functions on all
 * but rare inputs); tests/cuda/test_cuda_ops.c states the tolerance of each.
 *
 * All pointers are device pointers unless a comment says otherwise. stream is a cudaStream_t
 * (NULL: the default stream); every call only enqueues work, so a call can be captured in a
 * CUDA graph. Returns 0, PD_EINVAL (a bad size or dtype, with the reason in err) or PD_EDEVICE /
 * PD_ENOMEM (a failed launch, with CUDA's message in err). A call with zero rows does nothing
 * and returns 0. Activation dtypes: f32, or f16 where a comment says so (what the f16 GEMM
 * reads); f16 results are rounded to nearest even, exactly as pd_f32_to_f16 does.
 */
#ifndef PD_CUDA_OPS_H
#define PD_CUDA_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "pd_dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * out (rows, n) = x[r] / sqrt(mean(x[r]^2) + eps) * w, row by row (pd_rmsnorm).
 *   x:   f32 rows of n elements; row i of out reads row idx[i] of x, or row i when idx is NULL
 *   idx: (rows) int32 or NULL
 *   w:   (n) f32
 *   out: (rows, n) of out_dtype, f32 or f16; may be x itself when idx is NULL and out_dtype f32
 */
int pd_cuda_rmsnorm(void *out, enum pd_dtype out_dtype, const float *x, const int32_t *idx,
                    const float *w, int64_t rows, int64_t n, float eps, void *stream, char *err,
                    size_t errlen);

/*
 * Rotates every head of x (rows, n_heads, head_dim) f32 in place, row r at position pos[r]
 * (pd_rope: frequencies theta_base^(-2i / rot_dim), only the first rot_dim dimensions of a head
 * rotate; neox = 0 pairs (2i, 2i + 1), neox = 1 pairs (i, i + rot_dim / 2)).
 *   pos:   (rows) int32
 *   freqs: (rot_dim / 2) f32, freqs[i] = powf(theta_base, -2.0f * (float)i / (float)rot_dim)
 *          computed on the host with the C library's powf, as pd_rope does: then the angles are
 *          the CPU's bit for bit. NULL: computed on the device (pow in double, rounded), which
 *          can differ from glibc's powf by an ulp, an angle error of pos * 6e-8 * freq.
 * rot_dim must be even and at most head_dim (0: nothing rotates).
 */
int pd_cuda_rope(float *x, int64_t rows, int n_heads, int head_dim, int rot_dim, const int32_t *pos,
                 const float *freqs, float theta_base, int neox, void *stream, char *err,
                 size_t errlen);

/*
 * The attention block's split, bias and RoPE in one pass over the fused QKV projection:
 *   qkv:  (rows, (n_heads + 2 * n_kv_heads) * head_dim) f32, each row [q heads | k heads | v heads]
 *   bias: ((n_heads + 2 * n_kv_heads) * head_dim) f32 in the same layout, or NULL
 *   q:    (rows, n_heads, head_dim)    = rope(qkv q part + bias)
 *   k, v: (rows, n_kv_heads, head_dim) = rope(qkv k part + bias), qkv v part + bias
 * The same arithmetic as pd_llama.c's add_bias followed by pd_rope (pos and freqs as for
 * pd_cuda_rope). q, k, v must not overlap qkv.
 */
int pd_cuda_qkv_rope(float *q, float *k, float *v, const float *qkv, const float *bias,
                     int64_t rows, int n_heads, int n_kv_heads, int head_dim, int rot_dim,
                     const int32_t *pos, const float *freqs, float theta_base, int neox,
                     void *stream, char *err, size_t errlen);

/*
 * out (rows, n) = silu(gate) * up = gate / (1 + exp(-gate)) * up (pd_swiglu).
 *   gate, up: rows of n f32 elements, row r at gate + r * ld_in and up + r * ld_in
 *             (ld_in >= n; the fused gate|up projection passes up = gate + n, ld_in = 2n)
 *   out:      (rows, n) contiguous, f32 or f16; may be gate itself when f32 and ld_in == n
 */
int pd_cuda_swiglu(void *out, enum pd_dtype out_dtype, const float *gate, const float *up,
                   int64_t rows, int64_t n, int64_t ld_in, void *stream, char *err, size_t errlen);

/* x (n) += y (n), f32 (pd_add). */
int pd_cuda_add(float *x, const float *y, int64_t n, void *stream, char *err, size_t errlen);

/* y (rows, n) += bias (n) on every row, f32 (pd_llama.c's add_bias). */
int pd_cuda_add_bias(float *y, const float *bias, int64_t rows, int64_t n, void *stream, char *err,
                     size_t errlen);

/*
 * out (rows, d) f32 = table[ids[r]] for every row (the embedding lookup).
 *   table: (n_vocab, d) of table_dtype, f32 or f16 (f16 is widened exactly)
 *   ids:   (rows) int32; an id outside [0, n_vocab) gives a row of NaN (the host checks ids
 *          before it uploads them; this only keeps a bad id from reading outside the table)
 */
int pd_cuda_embed(float *out, const void *table, enum pd_dtype table_dtype, const int32_t *ids,
                  int64_t rows, int64_t d, int64_t n_vocab, void *stream, char *err, size_t errlen);

/*
 * y (rows, out) = x (rows, in) . W^T (+ beta * y), W row-major (out, in) f16: the decode-sized
 * GEMM (rows <= PD_CUDA_GEMV_MAX_ROWS) that pd_cuda_gemm_run takes instead of cuBLAS, a warp per
 * output reading its weight row once for all rows; f32 accumulation in a fixed order (the same
 * bits on every run). y is not read when beta == 0.
 *   w: (out, in) f16; x: (rows, in) f32 or f16; in a multiple of 8; w and x 16-byte aligned
 */
#define PD_CUDA_GEMV_MAX_ROWS 4
int pd_cuda_gemv_f16(const void *w, const void *x, enum pd_dtype x_dtype, float *y, int64_t rows,
                     int64_t in, int64_t out, float beta, void *stream, char *err, size_t errlen);

/*
 * The decode step's RMSNorm and the GEMV after it in one launch (and, with swiglu, the SwiGLU
 * after that too): the same bits as
 *   pd_cuda_rmsnorm(xn, act_dtype, x, idx, norm_w, rows, in, eps)
 *   swiglu = 0: pd_cuda_gemv_f16(w, xn, act_dtype, y, rows, in, out, 0.0f)
 *   swiglu = 1: pd_cuda_gemv_f16(w, xn, act_dtype, gu, rows, in, 2 * out, 0.0f), then
 *               pd_cuda_swiglu(y, act_dtype, gu, gu + out, rows, out, 2 * out)
 * without the intermediate buffers: every thread block normalises the rows into its shared
 * memory first (rows * in * sizeof(act) bytes, at most PD_CUDA_NORM_GEMV_MAX_SMEM), summing the
 * squares in rmsnorm's order, and the products and sums are the GEMV's.
 *   w:      f16, (out, in) row-major; with swiglu (2 out, in): the gate rows over the up rows;
 *           16-byte aligned
 *   x:      f32 rows of in elements; row i reads row idx[i] of x, or row i when idx is NULL
 *   norm_w: (in) f32
 *   y:      swiglu = 0: (rows, out) f32; swiglu = 1: (rows, out) of act_dtype
 * pd_cuda_norm_gemv_ok says whether a shape can run (else call the three kernels). y must not
 * overlap x (other thread blocks still read x while one writes y); the same for q, k, v below.
 */
/* 46 KiB: a launch may use 48 KiB of shared memory without opting in, and the kernel's own
 * static arrays (at most 144 bytes) count against that too */
#define PD_CUDA_NORM_GEMV_MAX_SMEM 47104
int pd_cuda_norm_gemv_ok(int64_t rows, int64_t in, enum pd_dtype act_dtype);
int pd_cuda_norm_gemv_f16(const void *w, const float *x, const int32_t *idx, const float *norm_w,
                          float eps, enum pd_dtype act_dtype, int swiglu, void *y, int64_t rows,
                          int64_t in, int64_t out, void *stream, char *err, size_t errlen);

/*
 * The decode step's first three kernels of a layer in one launch: the same bits as
 *   pd_cuda_rmsnorm(xn, act_dtype, x, NULL, norm_w, rows, in, eps)
 *   pd_cuda_gemv_f16(w, xn, act_dtype, qkv, rows, in, (n_heads + 2 n_kv_heads) head_dim, 0.0f)
 *   pd_cuda_qkv_rope(q, k, v, qkv, bias, rows, n_heads, n_kv_heads, head_dim, rot_dim, pos,
 *                    freqs, theta_base, neox)
 * without xn and qkv: a warp computes the two outputs of a rotating pair and rotates them.
 * w is the stacked QKV weight ((n_heads + 2 n_kv_heads) head_dim, in) f16, 16-byte aligned; the
 * other arguments are those of the three calls. pd_cuda_norm_gemv_ok(rows, in, act_dtype) must
 * hold.
 */
int pd_cuda_norm_gemv_qkv_rope_f16(const void *w, const float *x, const float *norm_w, float eps,
                                   enum pd_dtype act_dtype, float *q, float *k, float *v,
                                   const float *bias, int64_t rows, int64_t in, int n_heads,
                                   int n_kv_heads, int head_dim, int rot_dim, const int32_t *pos,
                                   const float *freqs, float theta_base, int neox, void *stream,
                                   char *err, size_t errlen);

/* out (n) f16 = x (n) f32, rounded to nearest even (pd_f32_to_f16). */
int pd_cuda_f32_to_f16(void *out, const float *x, int64_t n, void *stream, char *err,
                       size_t errlen);

/*
 * out[r] = the index of the largest element of row r of x (rows, n) f32: greedy sampling,
 * exactly as pd_sampler's temperature-0 path picks (the lowest index on ties, NaN never picked,
 * and index 0 when element 0 is NaN, since the CPU loop then never moves).
 *   out: (rows) int32
 */
int pd_cuda_argmax(int32_t *out, const float *x, int64_t rows, int64_t n, void *stream, char *err,
                   size_t errlen);

#ifdef __cplusplus
}
#endif

#endif /* PD_CUDA_OPS_H */
