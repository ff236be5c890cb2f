/*
 * pd_cuda_attention.cu -- paged decode attention (flash-decoding) over f16 KV blocks.
 *
 * Grid (n_splits, n_kv_heads, n_seqs), 128 threads. A thread block owns one KV head of one
 * sequence and one split of SPLIT tokens of its context, and serves all the query heads that
 * share that KV head (GQA: every K and V row is read from memory once for the whole group).
 * It walks its split in tiles of TILE tokens:
 *   1. the tile's K and V rows are copied to shared memory with 16-byte loads (a block of 16
 *      tokens holds each head's K rows contiguously, so the loads are coalesced);
 *   2. scores (group heads x TILE tokens) are computed from shared memory, one warp per token
 *      with its lanes across head_dim, so shared-memory reads are free of bank conflicts;
 *   3. one warp per head updates the running max and sum (online softmax) and turns scores
 *      into weights;
 *   4. each thread accumulates its (head, dim) outputs from the weights and the V tile.
 * The split's partial result (acc, max, sum per head) goes to the workspace, and a second kernel
 * merges the splits of each (sequence, head) with the usual log-sum-exp rescaling.
 */
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>

#include "pd_cuda_attention.h"
#include "pd_err.h"

#define THREADS   128
#define TILE      32
#define SPLIT     256
#define MAX_GROUP 8

extern "C" int pd_cuda_device_count(void) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError(); /* clear the sticky "no driver" error */
    return 0;
  }
  return n;
}

extern "C" size_t pd_cuda_attn_workspace_bytes(int n_seqs, int n_heads, int head_dim, int max_ctx) {
  size_t n_splits = (size_t)((max_ctx + SPLIT - 1) / SPLIT);
  return (size_t)n_seqs * (size_t)n_heads * n_splits * ((size_t)head_dim + 2) * sizeof(float);
}

template <int HD>
__global__ void __launch_bounds__(THREADS)
    decode_split(const uint8_t *__restrict__ pool, size_t block_bytes, int block_tokens, int n_kv,
                 int layer, int group, const float *__restrict__ q,
                 const int32_t *__restrict__ tables, int max_blocks,
                 const int32_t *__restrict__ ctx_lens, float scale, int n_splits,
                 float *__restrict__ ws) {
  const int split = blockIdx.x, kvh = blockIdx.y, seq = blockIdx.z, tid = threadIdx.x;
  const int n_heads = n_kv * group;
  const int ctx = ctx_lens[seq];
  const int start = split * SPLIT, end = min(ctx, start + SPLIT);
  __shared__ float q_s[MAX_GROUP][HD];
  __shared__ __align__(16) __half k_s[TILE][HD];
  __shared__ __align__(16) __half v_s[TILE][HD];
  __shared__ float p_s[MAX_GROUP][TILE];
  __shared__ float m_s[MAX_GROUP], l_s[MAX_GROUP], alpha_s[MAX_GROUP];
  for (int e = tid; e < group * HD; e += THREADS)
    q_s[e / HD][e % HD] = q[((size_t)seq * n_heads + (size_t)kvh * group + e / HD) * HD + e % HD];
  if (tid < group) m_s[tid] = -INFINITY, l_s[tid] = 0.0f;
  constexpr int PER_THREAD = (MAX_GROUP * HD + THREADS - 1) / THREADS;
  float acc[PER_THREAD];
#pragma unroll
  for (int k = 0; k < PER_THREAD; k++) acc[k] = 0.0f;
  /* element offsets within a block of (layer, K|V, kvh, row 0) */
  const size_t per_head = (size_t)block_tokens * HD;
  const size_t k_off = (((size_t)layer * 2 + 0) * n_kv + kvh) * per_head;
  const size_t v_off = (((size_t)layer * 2 + 1) * n_kv + kvh) * per_head;
  const int32_t *table = tables + (size_t)seq * max_blocks;
  __syncthreads();
  for (int t0 = start; t0 < end; t0 += TILE) {
    /* 1. K and V tiles to shared memory, 8 halves (16 bytes) per load */
    constexpr int CHUNKS = TILE * HD / 8;
    for (int c = tid; c < 2 * CHUNKS; c += THREADS) {
      int which = c / CHUNKS, cc = c % CHUNKS, t = cc / (HD / 8), d8 = cc % (HD / 8);
      int tok = t0 + t;
      uint4 val = make_uint4(0, 0, 0, 0);
      if (tok < end) {
        const uint8_t *blk = pool + (size_t)table[tok / block_tokens] * block_bytes;
        const __half *src = (const __half *)blk + (which ? v_off : k_off) +
                            (size_t)(tok % block_tokens) * HD + d8 * 8;
        val = *(const uint4 *)src;
      }
      *(uint4 *)((which ? &v_s[t][0] : &k_s[t][0]) + d8 * 8) = val;
    }
    __syncthreads();
    /* 2. scores: one warp per token, lanes across head_dim (conflict-free shared reads),
     *    a shuffle reduction per (head, token) */
    {
      const int warp = tid / 32, lane = tid % 32;
      for (int t = warp; t < TILE; t += THREADS / 32) {
        const bool valid = t0 + t < end;
        float2 kv[HD / 64];
#pragma unroll
        for (int j = 0; j < HD / 64; j++)
          kv[j] = __half22float2(*(const __half2 *)&k_s[t][2 * lane + 64 * j]);
        for (int g = 0; g < group; g++) {
          float dot = 0.0f;
#pragma unroll
          for (int j = 0; j < HD / 64; j++)
            dot += q_s[g][2 * lane + 64 * j] * kv[j].x + q_s[g][2 * lane + 64 * j + 1] * kv[j].y;
          for (int o = 16; o; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
          if (lane == 0) p_s[g][t] = valid ? dot * scale : -INFINITY;
        }
      }
    }
    __syncthreads();
    /* 3. online softmax, one warp per head, TILE / 32 tokens per lane */
    const int warp = tid / 32, lane = tid % 32;
    for (int g = warp; g < group; g += THREADS / 32) {
      float sv[TILE / 32], mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < TILE / 32; j++) {
        sv[j] = p_s[g][lane + 32 * j];
        mx = fmaxf(mx, sv[j]);
      }
      for (int o = 16; o; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      float m_old = m_s[g], m_new = fmaxf(m_old, mx), sum = 0.0f;
#pragma unroll
      for (int j = 0; j < TILE / 32; j++) {
        float p = sv[j] == -INFINITY ? 0.0f : __expf(sv[j] - m_new);
        p_s[g][lane + 32 * j] = p;
        sum += p;
      }
      for (int o = 16; o; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      __syncwarp();
      if (lane == 0) {
        float alpha = m_old == -INFINITY ? 0.0f : __expf(m_old - m_new);
        alpha_s[g] = alpha;
        l_s[g] = l_s[g] * alpha + sum;
        m_s[g] = m_new;
      }
    }
    __syncthreads();
    /* 4. accumulate V */
#pragma unroll
    for (int k = 0; k < PER_THREAD; k++) {
      int e = tid + k * THREADS;
      if (e < group * HD) {
        int g = e / HD, d = e % HD;
        float a = acc[k] * alpha_s[g];
#pragma unroll 8
        for (int t = 0; t < TILE; t++) a += p_s[g][t] * __half2float(v_s[t][d]);
        acc[k] = a;
      }
    }
    __syncthreads();
  }
  /* partial result: ws[(seq, head, split)] = acc (HD), max, sum */
#pragma unroll
  for (int k = 0; k < PER_THREAD; k++) {
    int e = tid + k * THREADS;
    if (e < group * HD) {
      int g = e / HD, d = e % HD;
      size_t slot = ((size_t)seq * n_heads + (size_t)kvh * group + g) * n_splits + split;
      ws[slot * (HD + 2) + d] = acc[k];
      if (d == 0) {
        ws[slot * (HD + 2) + HD] = m_s[g];
        ws[slot * (HD + 2) + HD + 1] = l_s[g];
      }
    }
  }
}

template <int HD>
__global__ void merge_splits(const float *__restrict__ ws, int n_splits, float *__restrict__ out) {
  const int head = blockIdx.x, seq = blockIdx.y, n_heads = gridDim.x, d = threadIdx.x;
  const float *base = ws + ((size_t)seq * n_heads + head) * n_splits * (HD + 2);
  float M = -INFINITY;
  for (int s = 0; s < n_splits; s++) M = fmaxf(M, base[s * (HD + 2) + HD]);
  float L = 0.0f, a = 0.0f;
  for (int s = 0; s < n_splits; s++) {
    float m = base[s * (HD + 2) + HD];
    if (m == -INFINITY) continue;
    float w = __expf(m - M);
    L += base[s * (HD + 2) + HD + 1] * w;
    a += base[s * (HD + 2) + d] * w;
  }
  out[((size_t)seq * n_heads + head) * HD + d] = a / L;
}

static int cuda_fail(cudaError_t e, char *err, size_t errlen, const char *what) {
  if (err && errlen) snprintf(err, errlen, "cuda: %s: %s", what, cudaGetErrorString(e));
  return e == cudaErrorMemoryAllocation ? PD_ENOMEM : PD_EDEVICE;
}

extern "C" int pd_cuda_attn_decode(const pd_kv_layout *L, const void *pool, int layer, int n_heads,
                                   const float *q, float *out, const int32_t *block_tables,
                                   int max_blocks, const int32_t *ctx_lens, int n_seqs, int max_ctx,
                                   float scale, void *workspace, void *stream, char *err,
                                   size_t errlen) {
  if (L->dtype != PD_DTYPE_F16 || (L->head_dim != 64 && L->head_dim != 128) || n_heads <= 0 ||
      n_heads % L->n_kv_heads || n_heads / L->n_kv_heads > MAX_GROUP || n_seqs <= 0 ||
      max_ctx <= 0 || max_ctx > max_blocks * L->block_tokens || layer < 0 || layer >= L->n_layers) {
    if (err && errlen)
      snprintf(err, errlen, "cuda attention: unsupported shape (dtype %s, head_dim %d, group %d)",
               pd_dtype_name(L->dtype), L->head_dim, n_heads / (L->n_kv_heads ? L->n_kv_heads : 1));
    return PD_EINVAL;
  }
  int n_splits = (max_ctx + SPLIT - 1) / SPLIT, group = n_heads / L->n_kv_heads;
  cudaStream_t s = (cudaStream_t)stream;
  dim3 grid(n_splits, L->n_kv_heads, n_seqs), grid2(n_heads, n_seqs);
  size_t bb = pd_kv_block_bytes(L);
  float *ws = (float *)workspace;
  if (L->head_dim == 64) {
    decode_split<64><<<grid, THREADS, 0, s>>>((const uint8_t *)pool, bb, L->block_tokens,
                                              L->n_kv_heads, layer, group, q, block_tables,
                                              max_blocks, ctx_lens, scale, n_splits, ws);
    merge_splits<64><<<grid2, 64, 0, s>>>(ws, n_splits, out);
  } else {
    decode_split<128><<<grid, THREADS, 0, s>>>((const uint8_t *)pool, bb, L->block_tokens,
                                               L->n_kv_heads, layer, group, q, block_tables,
                                               max_blocks, ctx_lens, scale, n_splits, ws);
    merge_splits<128><<<grid2, 128, 0, s>>>(ws, n_splits, out);
  }
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? PD_OK : cuda_fail(e, err, errlen, "launching decode attention");
}
