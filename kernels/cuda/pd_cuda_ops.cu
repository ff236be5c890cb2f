/*
 * pd_cuda_ops.cu -- the small kernels of a Llama layer; see pd_cuda_ops.h.
 *
 * Design: simple kernels that mirror the CPU reference operation by operation.
 *   - Row kernels (RMSNorm, RoPE, argmax) use one thread block per row; the element-wise ones
 *     (SwiGLU, adds, embedding, conversion) a grid-stride loop over all elements.
 *   - Every float operation that the CPU performs with its own rounding is written with an
 *     explicit round-to-nearest intrinsic (__fmul_rn, __fadd_rn, __fdiv_rn, __fsqrt_rn). nvcc
 *     would otherwise fuse a * b - c * d into an FMA (-fmad=true is its default) and give other
 *     bits than the CPU, which GCC compiles without contraction in ISO C mode. The intrinsics
 *     also keep these kernels IEEE-exact should someone build them with --use_fast_math (the
 *     attention kernels are; these live in their own target, pd_kernels_cuda_ops, without it).
 *   - exp, sin and cos (and pow when RoPE is given no frequency table) are evaluated in double
 *     precision and rounded to float: the correctly rounded float result on all but
 *     astronomically rare inputs, which is what glibc's expf / sinf / cosf return on almost
 *     every input (they are within 1 ulp). RoPE's frequencies should come from the host's powf
 *     (a table): an ulp of frequency is an angle error that grows with the position.
 *   - RMSNorm's sum of squares is a tree (warp shuffles, then one warp over the warp sums)
 *     instead of the CPU's left-to-right loop: the one place the order differs.
 *   - The decode GEMV (a warp per output, gemv_warp_dots) also comes fused with the RMSNorm
 *     before it and the SwiGLU or the QKV split and RoPE after it (norm_gemv_kernel). The fused
 *     kernel calls the same device functions as rmsnorm_kernel, gemv_f16_kernel, swiglu_kernel
 *     and rope_kernel in the same order, so the bits are theirs; what it saves is two launches
 *     each time and the round trips of the normed rows and the products through global memory.
 * Speed work left: the element-wise kernels are memory-bound and tiny next to the GEMMs; the
 * RoPE kernel computes its cos/sin per row (in double) rather than caching them per position,
 * which matters only for long prefills.
 */
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>

#include <type_traits>

#include "pd_cuda_err.h"
#include "pd_cuda_launch.h"
#include "pd_cuda_ops.h"
#include "pd_err.h"

#define ROW_THREADS 256 /* threads per block of the row kernels (a multiple of 32) */
#define EW_THREADS  256 /* threads per block of the element-wise kernels */
#define EW_MAX_GRID (1 << 20)
#define FULL_MASK   0xffffffffu

/* The status of a launch (pd_cuda_launch's return, e), and of any earlier asynchronous failure. */
static int launched(cudaError_t e, const char *what, char *err, size_t errlen) {
  if (e == cudaSuccess) e = cudaGetLastError();
  return e == cudaSuccess ? PD_OK : pd_cuda_fail(e, err, errlen, what);
}

/* f(float()) for PD_DTYPE_F32, else f(__half()): a kernel templated on the element type of one of
 * its buffers, picked by that buffer's dtype (the callers have checked it is one of the two). */
template <typename F> static cudaError_t by_f32_or_f16(enum pd_dtype dtype, F f) {
  return dtype == PD_DTYPE_F32 ? f(float()) : f(__half());
}

/* Blocks for a grid-stride loop over n elements (n > 0). */
static unsigned ew_blocks(int64_t n) {
  int64_t b = (n + EW_THREADS - 1) / EW_THREADS;
  return (unsigned)(b < EW_MAX_GRID ? b : EW_MAX_GRID);
}

__device__ __forceinline__ void store_out(float *p, float v) {
  *p = v;
}
__device__ __forceinline__ void store_out(__half *p, float v) {
  *p = __float2half_rn(v);
}

/* v summed over the warp by an xor butterfly, each add rounded: every lane gets the same total. */
__device__ __forceinline__ float warp_sum_rn(float v) {
  for (int o = 16; o; o >>= 1) v = __fadd_rn(v, __shfl_xor_sync(FULL_MASK, v, o));
  return v;
}

/* The sum of v over the thread block (blockDim.x a multiple of 32, at most 1024); every thread
 * gets the total. Call at most once per kernel (the shared arrays are not re-synchronised). */
__device__ float block_sum(float v) {
  __shared__ float part[32];
  __shared__ float total;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum_rn(v);
  if (lane == 0) part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int n_warps = (int)(blockDim.x >> 5);
    v = warp_sum_rn(lane < n_warps ? part[lane] : 0.0f);
    if (lane == 0) total = v;
  }
  __syncthreads();
  return total;
}

/* ---- RMSNorm: grid (rows), ROW_THREADS threads --------------------------------------------- */

/* The arithmetic of pd_rmsnorm in three steps, shared by rmsnorm_kernel and the fused
 * norm_gemv_kernel so that both give the same bits. The sum of squares is split as a block of
 * ROW_THREADS threads splits it: thread t sums elements t, t + ROW_THREADS, ... left to right,
 * then block_sum adds the thread sums (a butterfly per warp, then one over the warp sums). */
__device__ __forceinline__ float rms_partial(const float *xr, int64_t n, int t) {
  float ss = 0.0f;
  for (int64_t i = t; i < n; i += ROW_THREADS) ss = __fadd_rn(ss, __fmul_rn(xr[i], xr[i]));
  return ss;
}
/* CPU: inv = 1.0f / sqrtf(ss / (float)n + eps) */
__device__ __forceinline__ float rms_inv(float ss, int64_t n, float eps) {
  return __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(ss, (float)n), eps)));
}
__device__ __forceinline__ float rms_scale(float x, float inv, float w) {
  return __fmul_rn(__fmul_rn(x, inv), w);
}

template <typename OutT>
__global__ void __launch_bounds__(ROW_THREADS)
    rmsnorm_kernel(OutT *out, const float *x, const int32_t *__restrict__ idx,
                   const float *__restrict__ w, int64_t n, float eps) {
  pdl_wait();
  pdl_trigger();
  const int64_t r = blockIdx.x;
  const int64_t src = idx ? (int64_t)idx[r] : r;
  const float *xr = x + src * n;
  /* all reads of xr in the sum are done before any write below (block_sum synchronises) */
  const float inv = rms_inv(block_sum(rms_partial(xr, n, threadIdx.x)), n, eps);
  OutT *orow = out + r * n;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
    store_out(orow + i, rms_scale(xr[i], inv, w[i]));
}

extern "C" int pd_cuda_rmsnorm(void *out, enum pd_dtype out_dtype, const float *x,
                               const int32_t *idx, const float *w, int64_t rows, int64_t n,
                               float eps, void *stream, char *err, size_t errlen) {
  if (rows < 0 || rows > INT32_MAX || n <= 0)
    return pd_errf(err, errlen, PD_EINVAL, "rmsnorm: bad shape (%lld rows of %lld)",
                   (long long)rows, (long long)n);
  if (out_dtype != PD_DTYPE_F32 && out_dtype != PD_DTYPE_F16)
    return pd_errf(err, errlen, PD_EINVAL, "rmsnorm: output dtype %s unsupported (f32, f16)",
                   pd_dtype_name(out_dtype));
  if (out == (const void *)x && (idx || out_dtype != PD_DTYPE_F32))
    return pd_errf(err, errlen, PD_EINVAL, "rmsnorm: in place needs f32 output and no row index");
  if (!rows) return PD_OK;
  cudaStream_t s = (cudaStream_t)stream;
  const dim3 grid((unsigned)rows);
  const cudaError_t e = by_f32_or_f16(out_dtype, [&](auto t) {
    using T = decltype(t);
    return pd_cuda_launch(rmsnorm_kernel<T>, grid, ROW_THREADS, 0, s, (T *)out, x, idx, w, n, eps);
  });
  return launched(e, "rmsnorm", err, errlen);
}

/* ---- RoPE (with the QKV split and bias): grid (rows), ROW_THREADS threads ------------------ */

/* The cos and sin of pair i's angle at position p (pd_rope): the frequency from the host's
 * table, or pow in double when there is none; the angle rounded as the CPU rounds it.
 * CPU: freq = powf(theta_base, -2.0f * (float)i / (float)rot_dim); ang = (float)pos * freq */
__device__ __forceinline__ void rope_cos_sin(float p, int i, int rot, const float *freqs,
                                             float theta_base, float *c, float *sn) {
  float freq;
  if (freqs) {
    freq = freqs[i];
  } else {
    const float e = __fdiv_rn(__fmul_rn(-2.0f, (float)i), (float)rot);
    freq = (float)pow((double)theta_base, (double)e);
  }
  const float ang = __fmul_rn(p, freq);
  *c = (float)cos((double)ang);
  *sn = (float)sin((double)ang);
}

/* (x0, x1) rotated by the angle of cos c and sin sn, each operation rounded as the CPU's. */
__device__ __forceinline__ void rope_rotate(float x0, float x1, float c, float sn, float *y0,
                                            float *y1) {
  *y0 = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, sn));
  *y1 = __fadd_rn(__fmul_rn(x0, sn), __fmul_rn(x1, c));
}

/* Item j of a rotated head (per head: rot / 2 pairs, then hd - rot dimensions that pass
 * through): the dimensions a and b of a pair (pair index *pair = j), or a alone (*pair = -1). */
__device__ __forceinline__ void rope_item(int j, int rot, int neox, int *a, int *b, int *pair) {
  const int half = rot / 2;
  if (j < half) {
    *a = neox ? j : 2 * j, *b = neox ? j + half : 2 * j + 1, *pair = j;
  } else {
    *a = rot + (j - half), *b = *a, *pair = -1;
  }
}

/* x + bias[i] when there is a bias (one rounding, as pd_add), else x. */
__device__ __forceinline__ float plus_bias(float x, const float *bias, int64_t i) {
  return bias ? __fadd_rn(x, bias[i]) : x;
}

/*
 * Row r of src holds n_q + n_k + n_v heads of hd elements. Heads 0 .. n_q - 1 go rotated to q
 * (rows of n_q heads), the next n_k rotated to k (rows of n_k heads), the last n_v unrotated to
 * v (rows of n_v heads). bias, when given, is added to the source first (one rounding, as
 * pd_add does). Dynamic shared memory: rot floats (the row's cos and sin per pair).
 * In place (q == src, n_k = n_v = 0) is safe: each element is read and written by one thread.
 */
__global__ void __launch_bounds__(ROW_THREADS)
    rope_kernel(const float *src, int64_t ld_src, const float *__restrict__ bias, float *q,
                float *k, float *v, int n_q, int n_k, int n_v, int hd, int rot,
                const int32_t *__restrict__ pos, const float *__restrict__ freqs, float theta_base,
                int neox) {
  extern __shared__ float cs[]; /* cos: cs[0 .. half), sin: cs[half .. rot) */
  pdl_wait();
  pdl_trigger();
  const int64_t r = blockIdx.x;
  const int half = rot / 2;
  const float p = (float)pos[r];
  for (int i = threadIdx.x; i < half; i += blockDim.x)
    rope_cos_sin(p, i, rot, freqs, theta_base, &cs[i], &cs[half + i]);
  __syncthreads();
  const float *row = src + r * ld_src;
  const int per_head = half + (hd - rot);
  const int n_items = (n_q + n_k) * per_head;
  for (int e = threadIdx.x; e < n_items; e += blockDim.x) {
    const int h = e / per_head;
    int a, b, pair;
    rope_item(e % per_head, rot, neox, &a, &b, &pair);
    const int64_t h0 = (int64_t)h * hd;
    float *dh = h < n_q ? q + (r * n_q + h) * (int64_t)hd : k + (r * n_k + (h - n_q)) * (int64_t)hd;
    const float x0 = plus_bias(row[h0 + a], bias, h0 + a);
    if (pair >= 0) {
      const float x1 = plus_bias(row[h0 + b], bias, h0 + b);
      rope_rotate(x0, x1, cs[pair], cs[half + pair], &dh[a], &dh[b]);
    } else {
      dh[a] = x0;
    }
  }
  const int64_t v0 = (int64_t)(n_q + n_k) * hd;
  for (int e = threadIdx.x; e < n_v * hd; e += blockDim.x)
    v[r * n_v * (int64_t)hd + e] = plus_bias(row[v0 + e], bias, v0 + e);
}

static int rope_shape_ok(int64_t rows, int n_heads, int head_dim, int rot_dim, char *err,
                         size_t errlen) {
  if (rows < 0 || rows > INT32_MAX || n_heads <= 0 || head_dim <= 0 || rot_dim < 0 ||
      rot_dim > head_dim || rot_dim % 2 || (int64_t)n_heads * head_dim > INT32_MAX / 4) {
    pd_errf(err, errlen, PD_EINVAL,
            "rope: bad shape (%lld rows, %d heads, head_dim %d, rot_dim %d)", (long long)rows,
            n_heads, head_dim, rot_dim);
    return 0;
  }
  return 1;
}

extern "C" int pd_cuda_rope(float *x, int64_t rows, int n_heads, int head_dim, int rot_dim,
                            const int32_t *pos, const float *freqs, float theta_base, int neox,
                            void *stream, char *err, size_t errlen) {
  if (!rope_shape_ok(rows, n_heads, head_dim, rot_dim, err, errlen)) return PD_EINVAL;
  if (!rows) return PD_OK;
  size_t smem = (size_t)(rot_dim ? rot_dim : 1) * sizeof(float);
  const cudaError_t e = pd_cuda_launch(
      rope_kernel, dim3((unsigned)rows), ROW_THREADS, smem, (cudaStream_t)stream, (const float *)x,
      (int64_t)n_heads * head_dim, (const float *)NULL, x, (float *)NULL, (float *)NULL, n_heads, 0,
      0, head_dim, rot_dim, pos, freqs, theta_base, neox ? 1 : 0);
  return launched(e, "rope", err, errlen);
}

extern "C" int pd_cuda_qkv_rope(float *q, float *k, float *v, const float *qkv, const float *bias,
                                int64_t rows, int n_heads, int n_kv_heads, int head_dim,
                                int rot_dim, const int32_t *pos, const float *freqs,
                                float theta_base, int neox, void *stream, char *err,
                                size_t errlen) {
  if (!rope_shape_ok(rows, n_heads + 2 * n_kv_heads, head_dim, rot_dim, err, errlen))
    return PD_EINVAL;
  if (n_kv_heads <= 0) return pd_errf(err, errlen, PD_EINVAL, "qkv_rope: %d kv heads", n_kv_heads);
  if (!rows) return PD_OK;
  size_t smem = (size_t)(rot_dim ? rot_dim : 1) * sizeof(float);
  int64_t ld = (int64_t)(n_heads + 2 * n_kv_heads) * head_dim;
  const cudaError_t e =
      pd_cuda_launch(rope_kernel, dim3((unsigned)rows), ROW_THREADS, smem, (cudaStream_t)stream,
                     qkv, ld, bias, q, k, v, n_heads, n_kv_heads, n_kv_heads, head_dim, rot_dim,
                     pos, freqs, theta_base, neox ? 1 : 0);
  return launched(e, "qkv_rope", err, errlen);
}

/* ---- SwiGLU -------------------------------------------------------------------------------- */

/* CPU: gate / (1.0f + expf(-gate)) * up (also the fused gate|up GEMV's epilogue) */
__device__ __forceinline__ float silu_mul(float g, float u) {
  const float ex = (float)exp(-(double)g);
  return __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, ex)), u);
}

template <typename OutT>
__global__ void swiglu_kernel(OutT *out, const float *gate, const float *up, int64_t rows,
                              int64_t n, int64_t ld_in) {
  pdl_wait();
  pdl_trigger();
  const int64_t total = rows * n;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = e / n, c = e % n;
    store_out(out + e, silu_mul(gate[r * ld_in + c], up[r * ld_in + c]));
  }
}

extern "C" int pd_cuda_swiglu(void *out, enum pd_dtype out_dtype, const float *gate,
                              const float *up, int64_t rows, int64_t n, int64_t ld_in, void *stream,
                              char *err, size_t errlen) {
  if (rows < 0 || n <= 0 || ld_in < n || (rows && n > INT64_MAX / rows))
    return pd_errf(err, errlen, PD_EINVAL, "swiglu: bad shape (%lld rows of %lld, ld %lld)",
                   (long long)rows, (long long)n, (long long)ld_in);
  if (out_dtype != PD_DTYPE_F32 && out_dtype != PD_DTYPE_F16)
    return pd_errf(err, errlen, PD_EINVAL, "swiglu: output dtype %s unsupported (f32, f16)",
                   pd_dtype_name(out_dtype));
  if ((out == (const void *)gate || out == (const void *)up) &&
      (out_dtype != PD_DTYPE_F32 || ld_in != n))
    return pd_errf(err, errlen, PD_EINVAL, "swiglu: in place needs f32 output and ld_in == n");
  if (!rows) return PD_OK;
  cudaStream_t s = (cudaStream_t)stream;
  const dim3 grid(ew_blocks(rows * n));
  const cudaError_t e = by_f32_or_f16(out_dtype, [&](auto t) {
    using T = decltype(t);
    return pd_cuda_launch(swiglu_kernel<T>, grid, EW_THREADS, 0, s, (T *)out, gate, up, rows, n,
                          ld_in);
  });
  return launched(e, "swiglu", err, errlen);
}

/* ---- adds ---------------------------------------------------------------------------------- */

__global__ void add_kernel(float *x, const float *y, int64_t n) {
  pdl_wait();
  pdl_trigger();
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n;
       e += (int64_t)gridDim.x * blockDim.x)
    x[e] = __fadd_rn(x[e], y[e]);
}

__global__ void add_bias_kernel(float *y, const float *__restrict__ bias, int64_t total,
                                int64_t n) {
  pdl_wait();
  pdl_trigger();
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x)
    y[e] = __fadd_rn(y[e], bias[e % n]);
}

extern "C" int pd_cuda_add(float *x, const float *y, int64_t n, void *stream, char *err,
                           size_t errlen) {
  if (n < 0) return pd_errf(err, errlen, PD_EINVAL, "add: %lld elements", (long long)n);
  if (!n) return PD_OK;
  return launched(
      pd_cuda_launch(add_kernel, dim3(ew_blocks(n)), EW_THREADS, 0, (cudaStream_t)stream, x, y, n),
      "add", err, errlen);
}

extern "C" int pd_cuda_add_bias(float *y, const float *bias, int64_t rows, int64_t n, void *stream,
                                char *err, size_t errlen) {
  if (rows < 0 || n <= 0 || (rows && n > INT64_MAX / rows))
    return pd_errf(err, errlen, PD_EINVAL, "add_bias: bad shape (%lld rows of %lld)",
                   (long long)rows, (long long)n);
  if (!rows) return PD_OK;
  return launched(pd_cuda_launch(add_bias_kernel, dim3(ew_blocks(rows * n)), EW_THREADS, 0,
                                 (cudaStream_t)stream, y, bias, rows * n, n),
                  "add_bias", err, errlen);
}

/* ---- embedding gather ---------------------------------------------------------------------- */

__device__ __forceinline__ float load_elem(const float *p) {
  return *p;
}
__device__ __forceinline__ float load_elem(const __half *p) {
  return __half2float(*p);
}

template <typename T>
__global__ void embed_kernel(float *out, const T *__restrict__ table,
                             const int32_t *__restrict__ ids, int64_t total, int64_t d,
                             int64_t n_vocab) {
  pdl_wait();
  pdl_trigger();
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = e / d, c = e % d;
    const int64_t id = ids[r];
    out[e] = id >= 0 && id < n_vocab ? load_elem(table + id * d + c) : __int_as_float(0x7fc00000);
  }
}

extern "C" int pd_cuda_embed(float *out, const void *table, enum pd_dtype table_dtype,
                             const int32_t *ids, int64_t rows, int64_t d, int64_t n_vocab,
                             void *stream, char *err, size_t errlen) {
  if (rows < 0 || d <= 0 || n_vocab <= 0 || (rows && d > INT64_MAX / rows))
    return pd_errf(err, errlen, PD_EINVAL, "embed: bad shape (%lld rows of %lld, vocab %lld)",
                   (long long)rows, (long long)d, (long long)n_vocab);
  if (table_dtype != PD_DTYPE_F32 && table_dtype != PD_DTYPE_F16)
    return pd_errf(err, errlen, PD_EINVAL, "embed: table dtype %s unsupported (f32, f16)",
                   pd_dtype_name(table_dtype));
  if (!rows) return PD_OK;
  cudaStream_t s = (cudaStream_t)stream;
  const dim3 grid(ew_blocks(rows * d));
  const cudaError_t e = by_f32_or_f16(table_dtype, [&](auto t) {
    using T = decltype(t);
    return pd_cuda_launch(embed_kernel<T>, grid, EW_THREADS, 0, s, out, (const T *)table, ids,
                          rows * d, d, n_vocab);
  });
  return launched(e, "embed", err, errlen);
}

/* ---- f32 -> f16 ---------------------------------------------------------------------------- */

__global__ void to_f16_kernel(__half *out, const float *x, int64_t n) {
  pdl_wait();
  pdl_trigger();
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n;
       e += (int64_t)gridDim.x * blockDim.x)
    out[e] = __float2half_rn(x[e]);
}

extern "C" int pd_cuda_f32_to_f16(void *out, const float *x, int64_t n, void *stream, char *err,
                                  size_t errlen) {
  if (n < 0) return pd_errf(err, errlen, PD_EINVAL, "f32_to_f16: %lld elements", (long long)n);
  if (!n) return PD_OK;
  return launched(pd_cuda_launch(to_f16_kernel, dim3(ew_blocks(n)), EW_THREADS, 0,
                                 (cudaStream_t)stream, (__half *)out, x, n),
                  "f32_to_f16", err, errlen);
}

/* ---- argmax: grid (rows), ROW_THREADS threads ---------------------------------------------- */

#define NO_INDEX INT64_MAX

/* (v, i) beats (bv, bi): larger, or equal and earlier. NaN never beats anything. */
__device__ __forceinline__ bool beats(float v, int64_t i, float bv, int64_t bi) {
  return v > bv || (v == bv && i < bi);
}

__global__ void __launch_bounds__(ROW_THREADS)
    argmax_kernel(int32_t *out, const float *__restrict__ x, int64_t n) {
  __shared__ float part_v[32];
  __shared__ long long part_i[32];
  pdl_wait();
  pdl_trigger();
  const float *xr = x + (int64_t)blockIdx.x * n;
  float bv = -INFINITY;
  int64_t bi = NO_INDEX;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float v = xr[i];
    if (beats(v, i, bv, bi)) bv = v, bi = i;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 16; o; o >>= 1) {
    const float ov = __shfl_xor_sync(FULL_MASK, bv, o);
    const long long oi = __shfl_xor_sync(FULL_MASK, (long long)bi, o);
    if (beats(ov, oi, bv, bi)) bv = ov, bi = oi;
  }
  if (lane == 0) part_v[warp] = bv, part_i[warp] = bi;
  __syncthreads();
  if (warp == 0) {
    const int n_warps = (int)(blockDim.x >> 5);
    bv = lane < n_warps ? part_v[lane] : -INFINITY;
    bi = lane < n_warps ? part_i[lane] : NO_INDEX;
    for (int o = 16; o; o >>= 1) {
      const float ov = __shfl_xor_sync(FULL_MASK, bv, o);
      const long long oi = __shfl_xor_sync(FULL_MASK, (long long)bi, o);
      if (beats(ov, oi, bv, bi)) bv = ov, bi = oi;
    }
    if (lane == 0) {
      /* the CPU loop starts at index 0 and never leaves it when element 0 is NaN */
      if (isnan(xr[0]) || bi == NO_INDEX) bi = 0;
      out[blockIdx.x] = (int32_t)bi;
    }
  }
}

extern "C" int pd_cuda_argmax(int32_t *out, const float *x, int64_t rows, int64_t n, void *stream,
                              char *err, size_t errlen) {
  if (rows < 0 || rows > INT32_MAX || n <= 0 || n > INT32_MAX)
    return pd_errf(err, errlen, PD_EINVAL, "argmax: bad shape (%lld rows of %lld)", (long long)rows,
                   (long long)n);
  if (!rows) return PD_OK;
  return launched(pd_cuda_launch(argmax_kernel, dim3((unsigned)rows), ROW_THREADS, 0,
                                 (cudaStream_t)stream, out, x, n),
                  "argmax", err, errlen);
}

/* ---- small-batch GEMV on f16 weights: grid (ceil(out / GEMV_WARPS)), a warp per output -------- */

#define GEMV_WARPS 4

/* 8 f16 values (one 16-byte load) as f32. */
__device__ __forceinline__ void half8_to_f32(uint4 u, float *f) {
  const __half2 *h = (const __half2 *)&u;
#pragma unroll
  for (int j = 0; j < 4; j++) {
    const float2 p = __half22float2(h[j]);
    f[2 * j] = p.x, f[2 * j + 1] = p.y;
  }
}

/* 16 bytes at p: through the read-only cache (NC: global memory the kernel never writes) or a
 * plain load (shared memory, which __ldg cannot address). */
template <bool NC, typename V> __device__ __forceinline__ V load16(const V *p) {
  if (NC) return __ldg(p);
  return *p;
}

/* The 8 activations of 16-byte chunk i8 (row r's chunk c is r * n8 + c) as f32: x f32 (two
 * 16-byte loads) or f16 (one); NC as for load16. */
template <bool XF32, bool NC>
__device__ __forceinline__ void x8_to_f32(const void *x, int64_t i8, float *f) {
  if (XF32) {
    const float4 a = load16<NC>((const float4 *)x + 2 * i8);
    const float4 b = load16<NC>((const float4 *)x + 2 * i8 + 1);
    f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
  } else {
    half8_to_f32(load16<NC>((const uint4 *)x + i8), f);
  }
}

/*
 * The dot products of one warp: acc[k][r] = W row k . x row r for NW weight rows (wr[k], n8
 * 16-byte chunks each) and R activation rows (in shared memory when XSMEM, else global). Lanes
 * stride the chunks; each weight load serves all R rows; f32 fused multiply-adds, then a
 * butterfly over the warp: the same order, and so the same bits, in every kernel that uses it.
 * Every lane ends with the totals.
 */
template <int NW, int R, bool XF32, bool XSMEM>
__device__ __forceinline__ void gemv_warp_dots(const uint4 *const *wr, int n8, int lane,
                                               const void *x, float (*acc)[R]) {
#pragma unroll
  for (int k = 0; k < NW; k++)
#pragma unroll
    for (int r = 0; r < R; r++) acc[k][r] = 0.0f;
#pragma unroll 4
  for (int c = lane; c < n8; c += 32) {
    float wf[NW][8];
#pragma unroll
    for (int k = 0; k < NW; k++) half8_to_f32(__ldg(wr[k] + c), wf[k]);
#pragma unroll
    for (int r = 0; r < R; r++) {
      float xf[8];
      x8_to_f32<XF32, !XSMEM>(x, (int64_t)r * n8 + c, xf);
#pragma unroll
      for (int k = 0; k < NW; k++)
#pragma unroll
        for (int j = 0; j < 8; j++) acc[k][r] = fmaf(wf[k][j], xf[j], acc[k][r]);
    }
  }
#pragma unroll
  for (int k = 0; k < NW; k++)
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
      for (int s = 16; s; s >>= 1) acc[k][r] += __shfl_xor_sync(FULL_MASK, acc[k][r], s);
}

/* y[r][o] = W[o] . x[r] (+ beta * y[r][o]) for R rows; lanes across in_dim, 8 elements a load,
 * the R rows share each weight load; f32 accumulation, summed over the warp in a fixed order. */
template <int R, bool XF32>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
    gemv_f16_kernel(const __half *__restrict__ w, const void *__restrict__ x, float *y, int in,
                    int out, float beta) {
  const int o = blockIdx.x * GEMV_WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (o < out) prefetch_l2_warp(w + (size_t)o * in, (size_t)in * sizeof(__half), lane);
  pdl_wait();
  pdl_trigger();
  if (o >= out) return;
  const uint4 *wr[1] = {(const uint4 *)(w + (size_t)o * in)};
  float acc[1][R];
  gemv_warp_dots<1, R, XF32, false>(wr, in / 8, lane, x, acc);
  if (lane == 0)
#pragma unroll
    for (int r = 0; r < R; r++) {
      float *yo = y + (size_t)r * out + o;
      *yo = beta != 0.0f ? acc[0][r] + beta * *yo : acc[0][r];
    }
}

/* What norm_gemv_kernel does with its dot products. */
enum { EPI_PLAIN = 0, EPI_SWIGLU = 1, EPI_QKV_ROPE = 2 };

/* The QKV epilogue's destinations and RoPE parameters (pd_cuda_qkv_rope's). */
struct QkvRopeOut {
  float *q, *k, *v;
  const float *bias;
  const int32_t *pos;
  const float *freqs;
  float theta_base;
  int n_q, n_k, n_v, hd, rot, neox;
};

/* gemv_warp_dots over weight rows rows[0 .. NW) of w (in columns each) and the normed rows in
 * shared memory. */
template <int NW, int R, bool XF32>
__device__ __forceinline__ void rows_dot(const __half *w, const int64_t (&rows)[NW], int in,
                                         int lane, const void *xs, float (*acc)[R]) {
  const uint4 *wr[NW];
#pragma unroll
  for (int k = 0; k < NW; k++) wr[k] = (const uint4 *)(w + (size_t)rows[k] * in);
  gemv_warp_dots<NW, R, XF32, true>(wr, in / 8, lane, xs, acc);
}

/* Head h (q heads, then k heads) of row r in the QKV epilogue's outputs. */
__device__ __forceinline__ float *qk_head(const QkvRopeOut &ro, int r, int h) {
  return h < ro.n_q ? ro.q + ((int64_t)r * ro.n_q + h) * ro.hd
                    : ro.k + ((int64_t)r * ro.n_k + (h - ro.n_q)) * ro.hd;
}

/* The weight rows item o of norm_gemv_kernel reads (rows[0 .. n)), and for EPI_QKV_ROPE where it
 * goes: a q or k item's head h, its dimensions a and b and its rotating pair (-1: a alone passes
 * through), or v element v_e (h = -1). */
struct ItemRows {
  int n;
  int64_t rows[2];
  int h, a, b, pair, v_e;
};

template <int EPI>
__device__ __forceinline__ ItemRows item_rows(int o, int n_items, const QkvRopeOut &ro) {
  ItemRows it = {1, {o, 0}, -1, 0, 0, -1, 0};
  if (EPI == EPI_SWIGLU) {
    it.n = 2, it.rows[1] = (int64_t)n_items + o;
  } else if (EPI == EPI_QKV_ROPE) {
    const int hd = ro.hd, per_head = ro.rot / 2 + (hd - ro.rot);
    const int qk_items = (ro.n_q + ro.n_k) * per_head;
    if (o < qk_items) {
      it.h = o / per_head;
      rope_item(o % per_head, ro.rot, ro.neox, &it.a, &it.b, &it.pair);
      const int64_t h0 = (int64_t)it.h * hd;
      it.rows[0] = h0 + it.a;
      if (it.pair >= 0) it.n = 2, it.rows[1] = h0 + it.b;
    } else {
      it.v_e = o - qk_items;
      it.rows[0] = (int64_t)(ro.n_q + ro.n_k) * hd + it.v_e;
    }
  }
  return it;
}

/*
 * The RMSNorm of R rows, then the GEMV on them, in one kernel (pd_cuda_norm_gemv_f16 and
 * pd_cuda_norm_gemv_qkv_rope_f16). Every block first normalises the R rows into shared memory
 * (xs: (R, in) of ActT, rounded as rmsnorm_kernel stores them), summing the squares exactly as a
 * block of ROW_THREADS threads does: thread t of this block holds the sums of threads t and
 * t + GEMV_WARPS * 32 of that one, and each of its warps reduces both, giving the
 * 2 * GEMV_WARPS warp sums block_sum adds. Then each warp computes its item from xs with
 * gemv_warp_dots, and lane 0 writes it:
 *   EPI_PLAIN:    item o < n_items: y (R, n_items) f32 = xn . W[o]; W (n_items, in).
 *   EPI_SWIGLU:   W stacks gate rows over up rows (2 n_items, in); y (R, n_items) of ActT =
 *                 silu(xn . Wgate[o]) * (xn . Wup[o]), the two rows read by one warp.
 *   EPI_QKV_ROPE: W is the fused QKV weight ((n_q + n_k + n_v) hd, in); item o is one of
 *                 rope_kernel's items (a rotating pair of a q or k head, read by one warp, a
 *                 dimension that passes through, or a v element), written to q, k, v with the
 *                 bias and the rotation of rope_kernel (r's position pos[r]).
 * Dynamic shared memory: R * in * sizeof(ActT) bytes.
 */
template <int R, typename ActT, int EPI>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
    norm_gemv_kernel(const __half *__restrict__ w, const float *__restrict__ x,
                     const int32_t *__restrict__ idx, const float *__restrict__ norm_w, float eps,
                     void *y, int in, int n_items, QkvRopeOut ro) {
  static_assert(ROW_THREADS == 2 * GEMV_WARPS * 32, "two RMSNorm threads per thread");
  static_assert(R <= GEMV_WARPS, "a warp finishes each row's sum");
  extern __shared__ uint4 xs_mem[];
  ActT *xs = (ActT *)xs_mem;
  __shared__ float part[R][ROW_THREADS / 32];
  __shared__ float inv[R];
  const int t = threadIdx.x, lane = t % 32, warp = t / 32;
  /* the warp's weight rows are constant: fetch them towards L2 while the norm is computed (and,
   * under PDL, while the kernel before still runs) */
  const int o = blockIdx.x * GEMV_WARPS + warp;
  const ItemRows it = item_rows<EPI>(o < n_items ? o : 0, n_items, ro);
  if (o < n_items)
#pragma unroll
    for (int k = 0; k < 2; k++)
      if (k < it.n)
        prefetch_l2_warp(w + (size_t)it.rows[k] * in, (size_t)in * sizeof(__half), lane);
  pdl_wait();
  pdl_trigger();
  const float *xr[R]; /* the source rows */
#pragma unroll
  for (int r = 0; r < R; r++) xr[r] = x + (idx ? (int64_t)idx[r] : (int64_t)r) * in;
#pragma unroll
  for (int r = 0; r < R; r++) {
    const float lo = warp_sum_rn(rms_partial(xr[r], in, t));
    const float hi = warp_sum_rn(rms_partial(xr[r], in, t + GEMV_WARPS * 32));
    if (lane == 0) part[r][warp] = lo, part[r][warp + GEMV_WARPS] = hi;
  }
  __syncthreads();
  if (warp < R) {
    const float ss = warp_sum_rn(lane < ROW_THREADS / 32 ? part[warp][lane] : 0.0f);
    if (lane == 0) inv[warp] = rms_inv(ss, in, eps);
  }
  __syncthreads();
#pragma unroll
  for (int r = 0; r < R; r++)
    for (int i = t; i < in; i += GEMV_WARPS * 32)
      store_out(xs + (size_t)r * in + i, rms_scale(xr[r][i], inv[r], norm_w[i]));
  __syncthreads();
  if (o >= n_items) return;
  constexpr bool XF32 = sizeof(ActT) == 4;
  if (EPI != EPI_PLAIN && it.n == 2) {
    const int64_t rows[2] = {it.rows[0], it.rows[1]};
    float acc[2][R];
    rows_dot<2, R, XF32>(w, rows, in, lane, xs, acc);
    if (lane == 0)
#pragma unroll
      for (int r = 0; r < R; r++) {
        if (EPI == EPI_SWIGLU) {
          store_out((ActT *)y + (size_t)r * n_items + o, silu_mul(acc[0][r], acc[1][r]));
        } else { /* EPI_QKV_ROPE, a rotating pair */
          float c, sn, *dh = qk_head(ro, r, it.h);
          rope_cos_sin((float)ro.pos[r], it.pair, ro.rot, ro.freqs, ro.theta_base, &c, &sn);
          rope_rotate(plus_bias(acc[0][r], ro.bias, rows[0]),
                      plus_bias(acc[1][r], ro.bias, rows[1]), c, sn, &dh[it.a], &dh[it.b]);
        }
      }
  } else {
    const int64_t rows[1] = {it.rows[0]};
    float acc[1][R];
    rows_dot<1, R, XF32>(w, rows, in, lane, xs, acc);
    if (lane == 0)
#pragma unroll
      for (int r = 0; r < R; r++) {
        if (EPI == EPI_PLAIN)
          ((float *)y)[(size_t)r * n_items + o] = acc[0][r];
        else if (it.h >= 0) /* EPI_QKV_ROPE, a q or k dimension that passes through */
          qk_head(ro, r, it.h)[it.a] = plus_bias(acc[0][r], ro.bias, rows[0]);
        else /* EPI_QKV_ROPE, a v element */
          ro.v[(int64_t)r * ro.n_v * ro.hd + it.v_e] = plus_bias(acc[0][r], ro.bias, rows[0]);
      }
  }
}

/* f(std::integral_constant<int, rows>()) for rows 1 .. PD_CUDA_GEMV_MAX_ROWS: the row count
 * of a GEMV launch as a template argument (the callers have checked the range). */
template <typename F> static void with_rows(int64_t rows, F f) {
  static_assert(PD_CUDA_GEMV_MAX_ROWS == 4, "one case per row count");
  switch (rows) {
  case 1: f(std::integral_constant<int, 1>()); break;
  case 2: f(std::integral_constant<int, 2>()); break;
  case 3: f(std::integral_constant<int, 3>()); break;
  default: f(std::integral_constant<int, 4>()); break;
  }
}

template <int R>
static cudaError_t gemv_launch(const void *w, const void *x, int x_f32, float *y, int in, int out,
                               float beta, cudaStream_t s) {
  const dim3 grid((unsigned)((out + GEMV_WARPS - 1) / GEMV_WARPS));
  const __half *wh = (const __half *)w;
  return x_f32 ? pd_cuda_launch(gemv_f16_kernel<R, true>, grid, GEMV_WARPS * 32, 0, s, wh, x, y, in,
                                out, beta)
               : pd_cuda_launch(gemv_f16_kernel<R, false>, grid, GEMV_WARPS * 32, 0, s, wh, x, y,
                                in, out, beta);
}

extern "C" int pd_cuda_gemv_f16(const void *w, const void *x, enum pd_dtype x_dtype, float *y,
                                int64_t rows, int64_t in, int64_t out, float beta, void *stream,
                                char *err, size_t errlen) {
  if (rows < 0 || rows > PD_CUDA_GEMV_MAX_ROWS || in <= 0 || in % 8 || in > INT_MAX || out <= 0 ||
      out > INT_MAX || (x_dtype != PD_DTYPE_F32 && x_dtype != PD_DTYPE_F16) ||
      ((uintptr_t)w | (uintptr_t)x) & 15)
    return pd_errf(err, errlen, PD_EINVAL,
                   "gemv: refused (%lld rows of %lld -> %lld, x %s, or pointers not 16-byte "
                   "aligned)",
                   (long long)rows, (long long)in, (long long)out, pd_dtype_name(x_dtype));
  if (!rows) return PD_OK;
  cudaStream_t s = (cudaStream_t)stream;
  const int xf = x_dtype == PD_DTYPE_F32;
  cudaError_t e = cudaSuccess;
  with_rows(rows,
            [&](auto R) { e = gemv_launch<R.value>(w, x, xf, y, (int)in, (int)out, beta, s); });
  return launched(e, "gemv", err, errlen);
}

/* ---- RMSNorm + GEMV (+ SwiGLU) in one kernel ------------------------------------------------ */

template <int R, typename ActT>
static cudaError_t norm_gemv_launch(const void *w, const float *x, const int32_t *idx,
                                    const float *nw, float eps, int epi, void *y, int in,
                                    int n_items, const QkvRopeOut &ro, size_t smem,
                                    cudaStream_t s) {
  const dim3 grid((unsigned)((n_items + GEMV_WARPS - 1) / GEMV_WARPS));
  const __half *wh = (const __half *)w;
  auto kernel = epi == EPI_SWIGLU     ? norm_gemv_kernel<R, ActT, EPI_SWIGLU>
                : epi == EPI_QKV_ROPE ? norm_gemv_kernel<R, ActT, EPI_QKV_ROPE>
                                      : norm_gemv_kernel<R, ActT, EPI_PLAIN>;
  return pd_cuda_launch(kernel, grid, GEMV_WARPS * 32, smem, s, wh, x, idx, nw, eps, y, in, n_items,
                        ro);
}

/* The launch for rows rows and activation dtype act (pd_cuda_norm_gemv_ok has accepted both). */
static int norm_gemv_run(const void *w, const float *x, const int32_t *idx, const float *nw,
                         float eps, enum pd_dtype act, int epi, void *y, int64_t rows, int64_t in,
                         int64_t n_items, const QkvRopeOut &ro, void *stream, char *err,
                         size_t errlen) {
  if (!rows) return PD_OK;
  const size_t smem = (size_t)rows * (size_t)in * pd_dtype_size(act);
  cudaStream_t s = (cudaStream_t)stream;
  cudaError_t e = cudaSuccess;
  with_rows(rows, [&](auto R) {
    e = by_f32_or_f16(act, [&](auto t) {
      return norm_gemv_launch<R.value, decltype(t)>(w, x, idx, nw, eps, epi, y, (int)in,
                                                    (int)n_items, ro, smem, s);
    });
  });
  return launched(e, "norm_gemv", err, errlen);
}

extern "C" int pd_cuda_norm_gemv_ok(int64_t rows, int64_t in, enum pd_dtype act_dtype) {
  if (rows < 0 || rows > PD_CUDA_GEMV_MAX_ROWS || in <= 0 || in % 8 || in > INT_MAX ||
      (act_dtype != PD_DTYPE_F32 && act_dtype != PD_DTYPE_F16))
    return 0;
  return (uint64_t)rows * (uint64_t)in * pd_dtype_size(act_dtype) <= PD_CUDA_NORM_GEMV_MAX_SMEM;
}

extern "C" int pd_cuda_norm_gemv_f16(const void *w, const float *x, const int32_t *idx,
                                     const float *norm_w, float eps, enum pd_dtype act_dtype,
                                     int swiglu, void *y, int64_t rows, int64_t in, int64_t out,
                                     void *stream, char *err, size_t errlen) {
  if (!pd_cuda_norm_gemv_ok(rows, in, act_dtype) || out <= 0 ||
      out > (swiglu ? INT_MAX / 2 : INT_MAX) || ((uintptr_t)w & 15))
    return pd_errf(err, errlen, PD_EINVAL,
                   "norm_gemv: refused (%lld rows of %lld -> %lld%s, activations %s, or the "
                   "weights not 16-byte aligned)",
                   (long long)rows, (long long)in, (long long)out, swiglu ? " x 2 (swiglu)" : "",
                   pd_dtype_name(act_dtype));
  return norm_gemv_run(w, x, idx, norm_w, eps, act_dtype, swiglu ? EPI_SWIGLU : EPI_PLAIN, y, rows,
                       in, out, QkvRopeOut{}, stream, err, errlen);
}

extern "C" int pd_cuda_norm_gemv_qkv_rope_f16(const void *w, const float *x, const float *norm_w,
                                              float eps, enum pd_dtype act_dtype, float *q,
                                              float *k, float *v, const float *bias, int64_t rows,
                                              int64_t in, int n_heads, int n_kv_heads, int head_dim,
                                              int rot_dim, const int32_t *pos, const float *freqs,
                                              float theta_base, int neox, void *stream, char *err,
                                              size_t errlen) {
  if (!rope_shape_ok(rows, n_heads + 2 * n_kv_heads, head_dim, rot_dim, err, errlen))
    return PD_EINVAL;
  if (n_kv_heads <= 0 || !pd_cuda_norm_gemv_ok(rows, in, act_dtype) || ((uintptr_t)w & 15))
    return pd_errf(err, errlen, PD_EINVAL,
                   "norm_gemv_qkv_rope: refused (%lld rows of %lld, %d kv heads, activations %s, "
                   "or the weights not 16-byte aligned)",
                   (long long)rows, (long long)in, n_kv_heads, pd_dtype_name(act_dtype));
  const int per_head = rot_dim / 2 + (head_dim - rot_dim);
  const int64_t n_items =
      (int64_t)(n_heads + n_kv_heads) * per_head + (int64_t)n_kv_heads * head_dim;
  const QkvRopeOut ro = {q,        k,          v,           bias,       pos,
                         freqs,    theta_base, n_heads,     n_kv_heads, n_kv_heads,
                         head_dim, rot_dim,    neox ? 1 : 0};
  return norm_gemv_run(w, x, NULL, norm_w, eps, act_dtype, EPI_QKV_ROPE, NULL, rows, in, n_items,
                       ro, stream, err, errlen);
}
