/*
 * pd_cuda_attention.cu -- paged attention over f32 / f16 / bf16 / fp8-e4m3 KV blocks, and the KV
 * store (pd_cuda_attention.h, pd_cuda_batch.h).
 *
 * Nine kernels. K and V are converted to f32 as they are read (f16 and bf16
 * exactly; an fp8 row as its e4m3 value times the row's f32 scale, kernels/cpu/pd_attention.h);
 * all arithmetic is f32 or tensor-core products carried to f32 accuracy. Scores are kept in the
 * log2 domain (q . k * scale * log2(e), then exp2), so every partial result (acc, max, sum) that
 * any kernel writes to the workspace merges with any other.
 *
 * pd_cuda_attn picks, per batch, from host scalars only (so a step can be captured in a graph):
 *   max_new == 1, shared_blocks == 0: decode_split + merge_seq;
 *   max_new == 1, shared_blocks > 0 (cascade): the tile kernel over the shared prefix for every
 *     sequence at once, decode_split over each sequence's rest, merge_seq over both;
 *   max_new > 1: the tile kernel for sequences with n_new > 1 (+ merge_rows when the KV range is
 *     split), and decode_split + merge_seq for the sequences with n_new == 1 in the same batch.
 *
 * decode_split -- flash-decoding, one query row per sequence (n_new == 1).
 *   Grid (n_splits, n_kv_heads * group_chunks, n_seqs), 128 threads. A thread block owns one KV
 *   head of one sequence, up to 8 of the query heads that share it (GQA: each K and V row is read
 *   once for the group) and one split of the context. Nothing is staged in shared memory: a lane
 *   owns 8 elements of head_dim (head_dim / 8 lanes per token, so a warp reads 4 tokens of
 *   head_dim 64 or 2 of 128 side by side, a whole 16-token block's rows per step), loads the K
 *   and V rows of U tokens before it converts any (U = 4, 2 for 8 heads: that many bytes in
 *   flight per lane), sums its partial dot products over the token's lanes by shuffles, and keeps
 *   its own online softmax state (max, sum, acc[heads][8]) in registers, rescaled once per U
 *   tokens. At the end the lane groups of a warp merge by shuffles and the 4 warps through shared
 *   memory (one barrier in all). Registers are sized for 1, 4 or 8 heads (the smallest template
 *   that holds the group's chunk). The split's (acc, max, sum) go to the workspace and merge_seq
 *   combines the splits of each (sequence, head) by log-sum-exp. The split count grows with the
 *   context (128 tokens a split at least) until the grid has DEC_MAX_GRID (1,024) blocks;
 *   PD_CUDA_DECODE_GRID overrides that for tuning (bench/results/cuda_decode_tuning.md).
 *   Opt-in (pd_cuda_attn_set_decode_cluster, PD_CUDA_DECODE_CLUSTER=1; Hopper): a launch of at
 *   most 8 splits runs decode_split<CLUSTER> with each (sequence, KV head)'s splits as one
 *   thread-block cluster; block 0 reads the others' results through distributed shared memory
 *   (with a cascade's prefix partials from the workspace), merges them as merge_seq does and
 *   writes the rows: one launch instead of two. The plain instantiations' code is unchanged.
 *   fp8 rows convert with the hardware's e4m3x2 -> f16x2 instruction, then times the row scale.
 *
 * decode_lean (opt-in: pd_cuda_attn_set_decode_lean, PD_CUDA_DECODE_LEAN=1; before the cluster
 *   merge) -- the same work as decode_split, cut differently: one wave of as many blocks as the
 *   device keeps resident (its occupancy times the SMs). Each block first sums, by a block-wide
 *   scan, the batch's real tiles: per decoding sequence, its (KV head, head chunk) pairs of
 *   ceil((ctx - kv_start) / DEC_TILE) tiles. Block b then takes an equal run of them, pair after
 *   pair, at least DEC_MIN_SPLIT positions a block (pd_cuda_lean.h), so the runs are balanced
 *   over the real contexts, not over the host's max_ctx (which the model rounds up to a power of
 *   two for its graphs), and prefill sequences of a mixed batch take none. It walks its run one
 *   segment (its part inside one pair) at a time through decode_range, the body both kernels
 *   share, and writes the segment's partial to the pair's slot split_base + part; the block with
 *   a pair's last tile marks the pair's parts after its own empty. merge_seq merges as for
 *   decode_split, over pd_lean_max_parts slots a pair (17 for a 2,048-position bound). The grid
 *   of splits runs the default model's shape (192 pairs) as 960 blocks in 1.82 waves of 528,
 *   each paying its prologue (the query heads, the first table and KV loads, three dependent
 *   round trips) and epilogue; lean runs 528 blocks once, plus the scan (one load of the
 *   sequence lengths). The 4-head variants need a few spilled words at the 128-register cap of
 *   4 blocks an SM (ptxas: STACK below).
 *
 * tile_mma (default) and tile_attn (SIMT, pd_cuda_attn_set_tensor_cores(0) or
 *   PD_CUDA_ATTN_SIMT=1) -- flash attention on a tile of 64 (query row, head) pairs x 64 KV
 *   positions, for prefill and for the shared prefix of a cascade. Same grid, tiles and outputs.
 *   Pairs are (row, head-in-group) of one KV head, so a K/V tile loaded once serves every query
 *   head of the group and every row of the tile. Grid (tiles, n_kv_heads, kv_splits).
 *   Prefill: a tile is 64 consecutive pairs of one sequence with n_new > 1 (rows i, heads g,
 *   pair = i * group + g), found by a warp scan over n_new; the KV range is [0, n_past + the
 *   tile's last row + 1) with a causal mask per row. Cascade: pairs are (sequence, head) of every
 *   decoding sequence, the KV range is the shared prefix, read through sequence 0's block table
 *   (equal for all by contract), no mask. Few tiles and long contexts: the KV range is split
 *   across grid.z (each block writes partials; merge_rows or merge_seq combines them). Prefill
 *   tiles are taken longest first (block 0 gets the last tile; tile_setup explains).
 *   tile_attn: 256 threads, each a 4 x 4 piece of S = Q K^T and 4 rows of O in registers (rows
 *   ty + 16 i, S columns tx + 16 j, O dims tx * 4 + 64 k; row stride HD + 4 makes the float4 reads
 *   conflict-free), online softmax of 4 rows by shuffles over the 16 lanes that share them, P via
 *   shared memory. 69,632 / 118,784 bytes of shared memory for head_dim 64 / 128.
 *   tile_mma: 128 threads, warp w owns pairs 16 w .. 16 w + 15; S and P V with mma.m16n8k8 tf32,
 *   every operand that is not a tf32 value split into hi + lo (Q and P always, K and V for f32
 *   and fp8 pools (a scaled fp8 value is not); f16 and bf16 are exact in tf32), which keeps
 *   products to ~2^-21 relative: the results
 *   match the SIMT kernel and the CPU within the same tolerance. 70,656 / 119,808 bytes.
 *
 * tile_f16 (opt-in: pd_cuda_attn_set_tile_kernel(PD_CUDA_TILE_F16) or PD_CUDA_ATTN_F16=1; f16
 *   pools only) -- the same grid, tiles and outputs with one m16n8k16 f16 mma per product: Q and
 *   P rounded to f16, f32 sums; K/V tiles copied from the pool by cp.async into two stages (the
 *   next tile in flight while this one is computed), S's accumulators reused as P's A fragments,
 *   V's B fragments by a transposing ldmatrix. Written without a GPU at hand: its per-lane index
 *   math, pipeline and masking were simulated in Python against the PTX ISA's fragment layouts
 *   (they matched numpy), but its test pass and figures come from the next GPU run
 *   (scripts/gpu-check); tf32 x2 stays the default until then.
 *
 * kv_store -- one thread block per new row, threads across (K|V, kv_head, dim); f32 -> pool
 *   dtype with the integer round-to-nearest-even of common/pd_dtype.h, bit for bit
 *   (pd_cuda_convert.h; the GPU test also compares the stored bytes with pd_kv_store's).
 * kv_store_fp8 -- one thread block per new row, a warp per (K|V, kv_head) row: the row's max |x|
 *   by shuffles, its scale and elements exactly as pd_kv_store computes them (IEEE division
 *   __fdiv_rn even under --use_fast_math, the integer f32 -> e4m3 rounding of pd_cuda_convert.h).
 *
 * Every kernel begins with pdl_wait(); pdl_trigger(); and is launched through pd_cuda_launch
 * (pd_cuda_launch.h): under programmatic dependent launch the next kernel's blocks may already be
 * resident, and nothing is read or written before the grid before has finished.
 *
 * Measured on an H100 (bench/results/cuda_attention.md): decode reads KV at 62% (default model
 * shape) and 75% (32/8 heads, head_dim 128) of the device copy bandwidth, 2,661 GB/s (88%) over
 * 4,160-token contexts; PyTorch SDPA on contiguous KV reaches 87-98%. Speed work left: decode_split
 * over short splits is bound by its prologue and epilogue (a persistent grid, or splits sized to
 * whole waves, would help); the tile kernels carry products to f32 accuracy with split tf32 (3
 * mma per product) and reach ~37-46 TFLOP/s, so prefill attention and the cascade's shared
 * prefix are compute-bound: an f16 / bf16 mma path (one mma, Q and P rounded to 16 bits) with
 * ldmatrix and cp.async double buffering is the next step, with its own stated tolerance.
 */
#include <cooperative_groups.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <atomic>
#include <type_traits>

#include "pd_cuda_attention.h"
#include "pd_cuda_batch.h"
#include "pd_cuda_convert.h"
#include "pd_cuda_err.h"
#include "pd_cuda_launch.h"
#include "pd_cuda_lean.h"
#include "pd_err.h"

#define DEC_THREADS    128
#define DEC_TILE       32   /* decode split lengths are a multiple of this */
#define DEC_GROUP      8    /* query heads per decode thread block */
#define DEC_MIN_SPLIT  128  /* tokens per decode split, at least */
#define DEC_MAX_GRID   1024 /* decode splits stop growing past this many thread blocks */
#define DEC_CLUSTER    8    /* decode merges in a cluster when it has at most this many splits */
#define LEAN_MIN_TILES (DEC_MIN_SPLIT / DEC_TILE) /* a lean run's tiles, at least */
#define LEAN_MAX_SEQS  4096 /* lean decode's batches, at most (its prefix sums in shared memory) */
#define TB_M           64   /* (row, head) pairs per tile */
#define TB_N           64   /* KV positions per tile */
#define TB_THREADS     256
#define MMA_THREADS    128
#define TB_TARGET      528 /* tile_attn grids below this many blocks split the KV range */
#define TB_MIN_SPLIT   512
#define CASC_MIN_SPLIT 128 /* the cascade's prefix: few tiles, so split finer (the default) */
#define LOG2E          1.4426950408889634f

enum { MODE_PREFILL = 0, MODE_CASCADE = 1 };

/* Element types of the pool. bf16_t and fp8_t are tags: their values are handled as raw bits. */
struct bf16_t {
  uint16_t bits;
};
struct fp8_t {
  uint8_t bits;
};

/* Per type: elements per 16-byte load, their conversion to f32, and for fp8 (SCALED) the factor
 * that turns to_f32's values into the stored ones. */
template <typename T> struct Elem;
template <> struct Elem<float> {
  static constexpr int PER16 = 4; /* elements per 16-byte load */
  static constexpr bool SCALED = false;
  static __device__ __forceinline__ void to_f32(uint4 u, float *f) {
    f[0] = __uint_as_float(u.x), f[1] = __uint_as_float(u.y);
    f[2] = __uint_as_float(u.z), f[3] = __uint_as_float(u.w);
  }
  static __device__ __forceinline__ void store(uint8_t *p, size_t i, float v) {
    ((float *)p)[i] = v;
  }
};
template <> struct Elem<__half> {
  static constexpr int PER16 = 8;
  static constexpr bool SCALED = false;
  static __device__ __forceinline__ float lo(uint32_t w) {
    return __half2float(__ushort_as_half((unsigned short)(w & 0xffffu)));
  }
  static __device__ __forceinline__ float hi(uint32_t w) {
    return __half2float(__ushort_as_half((unsigned short)(w >> 16)));
  }
  static __device__ __forceinline__ void to_f32(uint4 u, float *f) {
    f[0] = lo(u.x), f[1] = hi(u.x), f[2] = lo(u.y), f[3] = hi(u.y);
    f[4] = lo(u.z), f[5] = hi(u.z), f[6] = lo(u.w), f[7] = hi(u.w);
  }
  static __device__ __forceinline__ void store(uint8_t *p, size_t i, float v) {
    ((uint16_t *)p)[i] = pd_cuda_cvt_f32_f16(__float_as_uint(v));
  }
};
template <> struct Elem<bf16_t> {
  static constexpr int PER16 = 8;
  static constexpr bool SCALED = false;
  static __device__ __forceinline__ float lo(uint32_t w) { return __uint_as_float(w << 16); }
  static __device__ __forceinline__ float hi(uint32_t w) {
    return __uint_as_float(w & 0xffff0000u);
  }
  static __device__ __forceinline__ void to_f32(uint4 u, float *f) {
    f[0] = lo(u.x), f[1] = hi(u.x), f[2] = lo(u.y), f[3] = hi(u.y);
    f[4] = lo(u.z), f[5] = hi(u.z), f[6] = lo(u.w), f[7] = hi(u.w);
  }
  static __device__ __forceinline__ void store(uint8_t *p, size_t i, float v) {
    ((uint16_t *)p)[i] = pd_cuda_cvt_f32_bf16(__float_as_uint(v));
  }
};

/* fp8: to_f32 gives e4m3 value * 2^-8 exactly (pd_cuda_fp8_to_f16_scaled), and unscale(s) is
 * s * 2^8, so that value * unscale is
 * the e4m3 value times the row's scale s, as the CPU computes it: both products are exact
 * scalings by powers of two (a row's scale is at least 1e-30 / 448, so nothing is subnormal). */
template <> struct Elem<fp8_t> {
  static constexpr int PER16 = 16;
  static constexpr bool SCALED = true;
  static __device__ __forceinline__ float one(uint32_t byte) {
    return __half2float(__ushort_as_half(pd_cuda_fp8_to_f16_scaled(byte)));
  }
  static __device__ __forceinline__ void to_f32(uint4 u, float *f) {
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 16; i++) f[i] = one((w[i / 4] >> (8 * (i % 4))) & 0xffu);
  }
  static __device__ __forceinline__ float unscale(float s) {
    return s * 256.0f;
  }
};

/* Loads 16 bytes of row `tok` (K: which = 0, V: 1) at element `e0` as f32 into f. An fp8 row's
 * scale sits after the block's elements (R = block_bytes / (hd + 4) rows of hd bytes), at index
 * head_off / hd + row: the rows are in the same order. */
template <typename T>
__device__ __forceinline__ void load_kv16(const uint8_t *__restrict__ pool, size_t block_bytes,
                                          const int32_t *__restrict__ table, int block_shift,
                                          size_t head_off, int hd, int tok, int e0, float *f) {
  const int32_t blk = table[tok >> block_shift];
  const int row = tok & ((1 << block_shift) - 1);
  const size_t elem = head_off + (size_t)row * hd + e0;
  const uint8_t *base = pool + (size_t)blk * block_bytes;
  Elem<T>::to_f32(*(const uint4 *)(base + elem * sizeof(T)), f);
  if constexpr (Elem<T>::SCALED) {
    const size_t scales = block_bytes / (size_t)(hd + 4) * (size_t)hd;
    const float u =
        Elem<T>::unscale(*(const float *)(base + scales + (head_off / hd + row) * sizeof(float)));
#pragma unroll
    for (int j = 0; j < Elem<T>::PER16; j++) f[j] *= u;
  }
}

/* ---- device count --------------------------------------------------------------------------- */

extern "C" int pd_cuda_device_count(void) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError(); /* clear the sticky "no driver" error */
    return 0;
  }
  return n;
}

extern "C" const char *pd_cuda_no_device_reason(void) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  cudaGetLastError();
  return e != cudaSuccess ? cudaGetErrorString(e) : "no device";
}

/* ---- decode: one query row per sequence, split over the context ---------------------------- */

struct DecArgs {
  const uint8_t *pool;
  size_t block_bytes;
  int block_shift, n_kv, layer, group, n_heads, max_blocks;
  const float *q;
  const int32_t *tables;
  const int32_t *ctx_lens; /* legacy entry point: ctx of sequence s, its row is s; else NULL */
  const int32_t *n_past, *n_new, *row_start;
  int kv_start;  /* first position walked (the end of a cascade's shared prefix, else 0) */
  int split_len; /* positions per split, a multiple of DEC_TILE */
  int split_base, ws_splits; /* workspace slot = (seq, head) * ws_splits + split_base + split */
  float scale2;              /* scale * log2(e) */
  float *ws_acc, *ws_ml;
};

/* decode_split<CLUSTER = true>'s arguments: the grid's x (the splits) is one thread-block cluster,
 * whose block 0 merges the splits (and the workspace's slots before split_base) into out. */
struct DecClusterArgs : DecArgs {
  float *out;
};

/* 8 consecutive elements of one K or V row as f32 (fp8: times the row's scale). Raw<T> holds the
 * loaded bytes, so that a thread issues the loads of several tokens before it converts any. */
template <typename T> struct Raw8 {
  uint4 u; /* f16 / bf16: one 16-byte load */
  __device__ __forceinline__ void load(const uint8_t *p, const uint8_t *) { u = *(const uint4 *)p; }
  __device__ __forceinline__ void to_f32(float *f) const { Elem<T>::to_f32(u, f); }
};
template <> struct Raw8<float> {
  uint4 a, b; /* two 16-byte loads */
  __device__ __forceinline__ void load(const uint8_t *p, const uint8_t *) {
    a = *(const uint4 *)p, b = *(const uint4 *)(p + 16);
  }
  __device__ __forceinline__ void to_f32(float *f) const {
    Elem<float>::to_f32(a, f), Elem<float>::to_f32(b, f + 4);
  }
};
template <> struct Raw8<fp8_t> {
  uint2 u; /* one 8-byte load */
  float s; /* the row's scale */
  __device__ __forceinline__ void load(const uint8_t *p, const uint8_t *scale) {
    u = *(const uint2 *)p, s = *(const float *)scale;
  }
  /* the e4m3 values exactly (the hardware's pairwise e4m3 -> f16 conversion; NaN stays NaN),
   * times the scale: the same product as Elem<fp8_t>'s value * 2^-8 times s * 2^8 */
  __device__ __forceinline__ void to_f32(float *f) const {
    const uint32_t w[2] = {u.x, u.y};
#pragma unroll
    for (int i = 0; i < 4; i++) {
      const __half2 h((__half2_raw)__nv_cvt_fp8x2_to_halfraw2(
          (__nv_fp8x2_storage_t)((w[i / 2] >> (16 * (i % 2))) & 0xffffu), __NV_E4M3));
      const float2 p = __half22float2(h);
      f[2 * i] = p.x * s, f[2 * i + 1] = p.y * s;
    }
  }
};

/* The largest max of the n workspace slots from slot0 (ws_ml holds (max, sum) per slot). */
__device__ __forceinline__ float ws_max(const float *ws_ml, size_t slot0, int n) {
  float M = -INFINITY;
  for (int s = 0; s < n; s++) M = fmaxf(M, ws_ml[2 * (slot0 + s)]);
  return M;
}

/* Adds the n workspace slots from slot0, each weighted by exp2(its max - M), to *L (sums) and
 * *acc (element d); slots whose max is -inf (empty splits) are skipped. */
template <int HD>
__device__ __forceinline__ void ws_add(const float *ws_acc, const float *ws_ml, size_t slot0, int n,
                                       int d, float M, float *L, float *acc) {
  for (int s = 0; s < n; s++) {
    const float m = ws_ml[2 * (slot0 + s)];
    if (m == -INFINITY) continue;
    const float w = exp2f(m - M);
    *L += ws_ml[2 * (slot0 + s) + 1] * w;
    *acc += ws_acc[(slot0 + s) * HD + d] * w;
  }
}

/*
 * The end of decode_split<CLUSTER> (its splits form one cluster): every block has put its split's
 * (acc, max, sum) for its gn heads in part_acc / part_ml; block 0 of the cluster reads
 * them all through distributed shared memory, together with the workspace's slots before
 * split_base (a cascade's shared-prefix partials, written by the tile kernel before), merges them
 * by log-sum-exp in merge_seq's order and arithmetic, and writes the row's output. Block 0 first
 * copies every rank's (max, sum) pairs into its own shared memory (ml_all), so that the remote
 * reads per output element are the acc values alone. The second cluster barrier keeps every
 * block's shared memory alive until block 0 has read it.
 */
template <int HD, int G>
__device__ __forceinline__ void cluster_merge(const DecClusterArgs &a, int seq, int row, int head0,
                                              int gn, float (*part_acc)[HD], float (*part_ml)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  __shared__ float ml_all[DEC_CLUSTER][G][2];
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();
  if (cluster.block_rank() == 0) { /* uniform over the block */
    const int n_ranks = (int)cluster.num_blocks();
    for (int i = threadIdx.x; i < n_ranks * gn * 2; i += DEC_THREADS) {
      const int r = i / (gn * 2), g = i / 2 % gn, k = i % 2;
      ml_all[r][g][k] = *cluster.map_shared_rank(&part_ml[g][k], r);
    }
    __syncthreads();
    for (int e = threadIdx.x; e < gn * HD; e += DEC_THREADS) {
      const int g = e / HD, d = e % HD;
      const size_t slot0 = ((size_t)seq * a.n_heads + head0 + g) * a.ws_splits;
      float M = ws_max(a.ws_ml, slot0, a.split_base);
      for (int r = 0; r < n_ranks; r++) M = fmaxf(M, ml_all[r][g][0]);
      float L = 0.0f, acc = 0.0f;
      ws_add<HD>(a.ws_acc, a.ws_ml, slot0, a.split_base, d, M, &L, &acc);
      for (int r = 0; r < n_ranks; r++) {
        const float m = ml_all[r][g][0];
        if (m == -INFINITY) continue;
        const float w = exp2f(m - M);
        L += ml_all[r][g][1] * w;
        acc += *cluster.map_shared_rank(&part_acc[g][d], r) * w;
      }
      a.out[((size_t)row * a.n_heads + head0 + g) * HD + d] = acc / L;
    }
  }
  cluster.sync();
#else
  (void)a, (void)seq, (void)row, (void)head0, (void)gn, (void)part_acc, (void)part_ml;
#endif
}

/* Sequence seq's decode row: whether it has one (n_new == 1; every sequence of the legacy entry
 * point does), its context (the positions it attends to) and its query row. */
__device__ __forceinline__ bool dec_seq(const DecArgs &a, int seq, int *ctx, int *row) {
  if (a.ctx_lens) {
    *ctx = a.ctx_lens[seq], *row = seq;
    return true;
  }
  if (a.n_new[seq] != 1) return false;
  *ctx = a.n_past[seq] + 1, *row = a.row_start[seq];
  return true;
}

/* A decode thread block's shared memory: each warp's softmax state for G heads after the lane
 * groups of the warp have merged (m, l: [NW][G]; acc: [NW][G][HD]). */
template <int HD, int G> struct DecSmem {
  static constexpr int NW = DEC_THREADS / 32;
  float m[NW][G], l[NW][G];
  __align__(16) float acc[NW][G][HD];
};

/* Registers cap decode_split at this many resident blocks an SM (its __launch_bounds__). */
template <typename T, int G> constexpr int dec_min_blocks() {
  return G == 8 ? 2 : (sizeof(T) == 4 ? 3 : 4);
}

/*
 * The body of every decode kernel: positions [start, end) of one sequence's context for the gn
 * query heads head0 .. head0 + gn - 1 (sharing KV head kvh), whose query row is `row`. Every
 * thread of the block calls it; it ends with the NW warps' states in sh behind a barrier, ready
 * for dec_merged. start >= end is an empty range (every state max -inf, sum 0).
 */
template <int HD, typename T, int G>
__device__ __forceinline__ void decode_range(const DecArgs &a, int seq, int kvh, int head0, int gn,
                                             int row, int start, int end, DecSmem<HD, G> &sh) {
  constexpr int LPT = HD / 8;       /* lanes per token, 8 elements each */
  constexpr int TPW = 32 / LPT;     /* tokens a warp reads side by side */
  constexpr int U = G == 8 ? 2 : 4; /* steps whose loads are in flight together */
  constexpr int NW = DEC_THREADS / 32;
  constexpr int WARP_SPAN = TPW * U, CHUNK = NW * WARP_SPAN; /* tokens per warp / block step */
  const int tid = threadIdx.x;
  const int warp = tid / 32, lane = tid % 32, sub = lane / LPT, part = lane % LPT;
  /* this lane's slice of each query head, scaled into the log2 domain: q[G][8] */
  float q[G][8];
#pragma unroll
  for (int g = 0; g < G; g++) {
    if (g < gn) {
      const float4 *src =
          (const float4 *)(a.q + ((size_t)row * a.n_heads + head0 + g) * HD + part * 8);
      const float4 x = src[0], y = src[1];
      q[g][0] = x.x * a.scale2, q[g][1] = x.y * a.scale2, q[g][2] = x.z * a.scale2;
      q[g][3] = x.w * a.scale2, q[g][4] = y.x * a.scale2, q[g][5] = y.y * a.scale2;
      q[g][6] = y.z * a.scale2, q[g][7] = y.w * a.scale2;
    } else {
#pragma unroll
      for (int j = 0; j < 8; j++) q[g][j] = 0.0f;
    }
  }
  /* this lane group's running softmax state over its tokens: m[G], l[G], acc[G][8] */
  float m[G], l[G], acc[G][8];
#pragma unroll
  for (int g = 0; g < G; g++) {
    m[g] = -INFINITY, l[g] = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; j++) acc[g][j] = 0.0f;
  }
  const size_t per_head = ((size_t)1 << a.block_shift) * HD;
  const size_t k_off = (((size_t)a.layer * 2 + 0) * a.n_kv + kvh) * per_head;
  const size_t v_off = (((size_t)a.layer * 2 + 1) * a.n_kv + kvh) * per_head;
  const size_t scales = a.block_bytes / (size_t)(HD + 4) * (size_t)HD; /* fp8 only */
  const int32_t *table = a.tables + (size_t)a.max_blocks * seq;
  const int row_mask = (1 << a.block_shift) - 1;
  for (int c0 = start + warp * WARP_SPAN; c0 < end; c0 += CHUNK) {
    /* 1. the loads of U tokens (K and V rows, this lane's 8 elements) */
    Raw8<T> kr[U], vr[U];
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int tok = c0 + u * TPW + sub;
      if (tok < end) {
        const uint8_t *base = a.pool + (size_t)table[tok >> a.block_shift] * a.block_bytes;
        const int r = tok & row_mask;
        const size_t ke = k_off + (size_t)r * HD + part * 8, ve = v_off + (size_t)r * HD + part * 8;
        kr[u].load(base + ke * sizeof(T), base + scales + (k_off / HD + r) * sizeof(float));
        vr[u].load(base + ve * sizeof(T), base + scales + (v_off / HD + r) * sizeof(float));
      } else {
        kr[u] = Raw8<T>{}, vr[u] = Raw8<T>{};
      }
    }
    /* 2. scores: a partial dot over 8 elements, summed over the token's LPT lanes */
    float s[U][G];
#pragma unroll
    for (int u = 0; u < U; u++) {
      float kf[8];
      kr[u].to_f32(kf);
      const bool valid = c0 + u * TPW + sub < end;
#pragma unroll
      for (int g = 0; g < G; g++) {
        float dot = 0.0f;
        if (g < gn) {
#pragma unroll
          for (int j = 0; j < 8; j++) dot += q[g][j] * kf[j];
#pragma unroll
          for (int o = LPT / 2; o; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        }
        s[u][g] = valid ? dot : -INFINITY;
      }
    }
    /* 3. online softmax of the U tokens: rescale each head's state to the new max, then s
     * holds the weights p */
#pragma unroll
    for (int g = 0; g < G; g++) {
      float mx = s[0][g];
#pragma unroll
      for (int u = 1; u < U; u++) mx = fmaxf(mx, s[u][g]);
      const float m_new = fmaxf(m[g], mx);
      /* m_new == -inf: no valid token seen yet by this lane group, every p is 0 */
      const float alpha = m_new == -INFINITY ? 1.0f : exp2f(m[g] - m_new); /* m == -inf -> 0 */
      l[g] *= alpha;
#pragma unroll
      for (int j = 0; j < 8; j++) acc[g][j] *= alpha;
      m[g] = m_new;
#pragma unroll
      for (int u = 0; u < U; u++) {
        const float p = m_new == -INFINITY ? 0.0f : exp2f(s[u][g] - m_new); /* -inf -> 0 */
        s[u][g] = p;
        l[g] += p;
      }
    }
    /* 4. the V accumulation: each V row converted once for all heads */
#pragma unroll
    for (int u = 0; u < U; u++) {
      float vf[8];
      vr[u].to_f32(vf);
#pragma unroll
      for (int g = 0; g < G; g++) {
        if (g >= gn) continue;
#pragma unroll
        for (int j = 0; j < 8; j++) acc[g][j] += s[u][g] * vf[j];
      }
    }
  }
  /* 5. merge the warp's TPW lane groups (same part, different sub) by log-sum-exp */
#pragma unroll
  for (int o = LPT; o < 32; o <<= 1) {
#pragma unroll
    for (int g = 0; g < G; g++) {
      const float mo = __shfl_xor_sync(0xffffffffu, m[g], o);
      const float lo = __shfl_xor_sync(0xffffffffu, l[g], o);
      const float M = fmaxf(m[g], mo);
      const float wa = M == -INFINITY ? 0.0f : exp2f(m[g] - M);
      const float wb = M == -INFINITY ? 0.0f : exp2f(mo - M);
      l[g] = l[g] * wa + lo * wb;
#pragma unroll
      for (int j = 0; j < 8; j++) {
        const float ao = __shfl_xor_sync(0xffffffffu, acc[g][j], o);
        acc[g][j] = acc[g][j] * wa + ao * wb;
      }
      m[g] = M;
    }
  }
  /* 6. the NW warps' states to shared memory (an empty range leaves max -inf, sum 0, acc 0) */
  if (sub == 0) {
#pragma unroll
    for (int g = 0; g < G; g++) {
#pragma unroll
      for (int j = 0; j < 8; j++) sh.acc[warp][g][part * 8 + j] = acc[g][j];
      if (part == 0) sh.m[warp][g] = m[g], sh.l[warp][g] = l[g];
    }
  }
  __syncthreads();
}

/* Element (g, d) of a decode range's result (decode_range has filled sh): the NW warps' states
 * merged by log-sum-exp into max *M, sum *L and acc *A. */
template <int HD, int G>
__device__ __forceinline__ void dec_merged(const DecSmem<HD, G> &sh, int g, int d, float *M,
                                           float *L, float *A) {
  constexpr int NW = DecSmem<HD, G>::NW;
  *M = -INFINITY;
#pragma unroll
  for (int w = 0; w < NW; w++) *M = fmaxf(*M, sh.m[w][g]);
  *L = 0.0f, *A = 0.0f;
  if (*M != -INFINITY) {
#pragma unroll
    for (int w = 0; w < NW; w++) {
      const float wt = exp2f(sh.m[w][g] - *M);
      *L += sh.l[w][g] * wt;
      *A += sh.acc[w][g][d] * wt;
    }
  }
}

/* decode_split: see the top of the file. G = query heads per thread block the registers are
 * sized for (1, 4 or 8; a block's chunk of the group has gn <= G of them). CLUSTER: the splits
 * are one cluster and merge in it (cluster_merge; a.out is set), a separate instantiation so
 * that the plain one's code stays as it was. */
template <int HD, typename T, int G, bool CLUSTER>
__global__ void __launch_bounds__(DEC_THREADS, dec_min_blocks<T, G>())
    decode_split(std::conditional_t<CLUSTER, DecClusterArgs, DecArgs> a) {
  pdl_wait();
  pdl_trigger();
  const int split = blockIdx.x, seq = blockIdx.z, tid = threadIdx.x;
  const int gchunks = (a.group + DEC_GROUP - 1) / DEC_GROUP;
  const int kvh = blockIdx.y / gchunks, g0 = (blockIdx.y % gchunks) * DEC_GROUP;
  const int gn = min(G, a.group - g0);
  int ctx, row;
  if (!dec_seq(a, seq, &ctx, &row)) return; /* uniform over the block: not a decode sequence */
  const int start = a.kv_start + split * a.split_len, end = min(ctx, start + a.split_len);
  const int head0 = kvh * a.group + g0;
  __shared__ DecSmem<HD, G> sh;
  decode_range<HD, T, G>(a, seq, kvh, head0, gn, row, start, end, sh);
  if constexpr (CLUSTER) {          /* the result stays in shared memory, and the cluster merges */
    __shared__ float part_ml[G][2]; /* the split's (max, sum) per head */
    for (int e = tid; e < gn * HD; e += DEC_THREADS) {
      const int g = e / HD, d = e % HD;
      float M, L, A;
      dec_merged(sh, g, d, &M, &L, &A);
      sh.acc[0][g][d] = A; /* element (g, d) of sh.acc is read above by this thread only */
      if (d == 0) part_ml[g][0] = M, part_ml[g][1] = L;
    }
    cluster_merge<HD, G>(a, seq, row, head0, gn, sh.acc[0], part_ml);
  } else {
    for (int e = tid; e < gn * HD; e += DEC_THREADS) {
      const int g = e / HD, d = e % HD;
      float M, L, A;
      dec_merged(sh, g, d, &M, &L, &A);
      const size_t slot =
          ((size_t)seq * a.n_heads + head0 + g) * a.ws_splits + a.split_base + split;
      a.ws_acc[slot * HD + d] = A;
      if (d == 0) a.ws_ml[2 * slot] = M, a.ws_ml[2 * slot + 1] = L;
    }
  }
}

/* decode_lean's arguments. Workspace part k of a (sequence, head) is slot split_base + k;
 * ws_splits - split_base parts a pair (pd_lean_max_parts of the host's bounds). */
struct DecLeanArgs : DecArgs {
  int n_seqs;    /* the batch's sequences: (n_seqs + 1) int32 of dynamic shared memory */
  int min_tiles; /* DEC_TILE-position tiles a run takes at least */
  int max_tiles; /* tiles a pair has at most: the host's bound, which sized the workspace */
};

/* Sequence s's tiles per pair for decode_lean: its context past kv_start in DEC_TILE-position
 * tiles, at least one (so every decoding pair writes part 0 and marks the rest) and at most the
 * host's bound (positions past max_ctx, against the batch's contract, are left out as
 * decode_split leaves them, instead of taking parts the workspace does not have); 0 for a
 * sequence that is not decoding (merge_seq skips those). */
__device__ __forceinline__ int lean_tiles(const DecLeanArgs &a, int s) {
  int ctx, row;
  if (!dec_seq(a, s, &ctx, &row)) return 0;
  const int t = (ctx - a.kv_start + DEC_TILE - 1) / DEC_TILE;
  return t < 1 ? 1 : t > a.max_tiles ? a.max_tiles : t;
}

/* decode_lean: see the top of the file. Grid (the device's resident blocks), DEC_THREADS
 * threads, (n_seqs + 1) * 4 bytes of dynamic shared memory. */
template <int HD, typename T, int G>
__global__ void __launch_bounds__(DEC_THREADS, dec_min_blocks<T, G>()) decode_lean(DecLeanArgs a) {
  pdl_wait();
  pdl_trigger();
  extern __shared__ int32_t seq_first[]; /* [n_seqs + 1]: first tile of each sequence */
  __shared__ DecSmem<HD, G> sh;
  __shared__ int32_t warp_sum[DEC_THREADS / 32], carry;
  /* the segment's first tile, for its epilogue: read back from shared memory after
   * decode_range's barrier, so that the segment's values are derived again there instead of
   * being held in registers (or spilled) through decode_range's loop */
  __shared__ int32_t seg_first_tile;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, b = blockIdx.x;
  const int gchunks = (a.group + DEC_GROUP - 1) / DEC_GROUP, pairs_per_seq = a.n_kv * gchunks;
  /* 1. seq_first: the exclusive prefix sum of pairs_per_seq * lean_tiles, 128 sequences a step */
  if (tid == 0) seq_first[0] = 0, carry = 0;
  for (int base = 0; base < a.n_seqs; base += DEC_THREADS) {
    __syncthreads(); /* carry and warp_sum of the step before are read */
    const int s = base + tid;
    int v = s < a.n_seqs ? pairs_per_seq * lean_tiles(a, s) : 0;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int n = __shfl_up_sync(0xffffffffu, v, o);
      if (lane >= o) v += n;
    }
    if (lane == 31) warp_sum[warp] = v;
    __syncthreads();
    int before = carry;
    for (int w = 0; w < warp; w++) before += warp_sum[w];
    if (s < a.n_seqs) seq_first[s + 1] = before + v;
    __syncthreads();
    if (tid == DEC_THREADS - 1) carry = before + v;
  }
  __syncthreads();
  if (b >= pd_lean_blocks(seq_first[a.n_seqs], a.min_tiles, (int)gridDim.x) || !seq_first[a.n_seqs])
    return; /* uniform: no run for this block (or no sequence decodes) */
  /* 2. the run, one segment at a time. The run's bounds and the segment are derived from
   * seq_first in shared memory each time they are needed, before and after decode_range's loop,
   * so that none of them is held in a register (or spilled) through it. */
  auto run_bound = [&](int blk) {
    const int n_tiles = seq_first[a.n_seqs];
    return pd_lean_block_start(n_tiles, pd_lean_blocks(n_tiles, a.min_tiles, (int)gridDim.x), blk);
  };
  auto locate = [&](int t, pd_lean_segment *s, int *head0, int *gn) {
    const int n_tiles = seq_first[a.n_seqs];
    const int n_blocks = pd_lean_blocks(n_tiles, a.min_tiles, (int)gridDim.x);
    pd_lean_segment_at(seq_first, a.n_seqs, pairs_per_seq, n_blocks, b,
                       pd_lean_block_start(n_tiles, n_blocks, b + 1), t, s);
    const int g0 = (s->pair_in_seq % gchunks) * DEC_GROUP;
    *head0 = s->pair_in_seq / gchunks * a.group + g0;
    *gn = min(G, a.group - g0);
  };
  for (int t = run_bound(b); t < run_bound(b + 1);) {
    pd_lean_segment s;
    int head0, gn;
    locate(t, &s, &head0, &gn);
    if (tid == 0) seg_first_tile = t;
    const int seq = s.seq;
    int ctx, row;
    dec_seq(a, seq, &ctx, &row); /* a decoding sequence: the others have no tiles */
    const int start = a.kv_start + s.first * DEC_TILE;
    const int end = min(ctx, a.kv_start + s.last * DEC_TILE);
    decode_range<HD, T, G>(a, seq, head0 / a.group, head0, gn, row, start, end, sh);
    locate(seg_first_tile, &s, &head0, &gn);
    t = s.seg_end;
    const size_t slot0 = ((size_t)s.seq * a.n_heads + head0) * a.ws_splits + a.split_base;
    for (int e = tid; e < gn * HD; e += DEC_THREADS) {
      const int g = e / HD, d = e % HD;
      float M, L, A;
      dec_merged(sh, g, d, &M, &L, &A);
      const size_t slot = slot0 + (size_t)g * a.ws_splits + s.part;
      a.ws_acc[slot * HD + d] = A;
      if (d == 0) a.ws_ml[2 * slot] = M, a.ws_ml[2 * slot + 1] = L;
    }
    /* the pair's last segment: the parts no block has are empty (merge_seq skips them) */
    if (s.ends_pair) {
      const int n_parts = a.ws_splits - a.split_base;
      for (int e = tid; e < gn * (n_parts - 1 - s.part); e += DEC_THREADS) {
        const size_t slot = slot0 + (size_t)(e % gn) * a.ws_splits + s.part + 1 + e / gn;
        a.ws_ml[2 * slot] = -INFINITY, a.ws_ml[2 * slot + 1] = 0.0f;
      }
    }
    __syncthreads(); /* the next segment's decode_range writes sh and seg_first_tile again */
  }
}

/* 1: a cluster launch of decode_split failed; the merge in a cluster stays off for the process */
static std::atomic<int> cluster_refused{0};

/* Launches decode_split with the smallest register tile that holds a chunk of the group; with
 * cluster_out, the splits (grid.x) as one cluster that writes the merged rows to cluster_out
 * (*merged set). Should the runtime refuse the cluster launch, the merge in clusters is turned off
 * for the process and the plain kernel is launched instead (*merged clear: the caller merges). */
template <int HD, typename T>
static cudaError_t launch_decode(dim3 grid, cudaStream_t st, const DecArgs &d, float *cluster_out,
                                 bool *merged) {
  const int gmax = d.group < DEC_GROUP ? d.group : DEC_GROUP;
  *merged = false;
  if (cluster_out) {
    auto kernel = gmax == 1   ? decode_split<HD, T, 1, true>
                  : gmax <= 4 ? decode_split<HD, T, 4, true>
                              : decode_split<HD, T, 8, true>;
    DecClusterArgs c;
    static_cast<DecArgs &>(c) = d;
    c.out = cluster_out;
    const cudaError_t e = pd_cuda_launch_clusters(kernel, grid, DEC_THREADS, 0, st, grid.x, c);
    if (e == cudaSuccess) {
      *merged = true;
      return e;
    }
    cudaGetLastError();
    cluster_refused.store(1);
  }
  auto kernel = gmax == 1   ? decode_split<HD, T, 1, false>
                : gmax <= 4 ? decode_split<HD, T, 4, false>
                            : decode_split<HD, T, 8, false>;
  return pd_cuda_launch(kernel, grid, DEC_THREADS, 0, st, d);
}

/* -1: not decided yet (PD_CUDA_DECODE_CLUSTER decides); else 0 / 1 as set */
static std::atomic<int> cluster_asked{-1};

extern "C" void pd_cuda_attn_set_decode_cluster(int on) {
  cluster_asked.store(on ? 1 : 0);
}

extern "C" int pd_cuda_attn_decode_cluster(void) {
  int v = cluster_asked.load();
  if (v < 0) {
    v = pd_cuda_env_flag("PD_CUDA_DECODE_CLUSTER");
    cluster_asked.store(v);
  }
  return v && !cluster_refused.load() && pd_cuda_sm90_code();
}

/* -1: not decided yet (PD_CUDA_DECODE_LEAN decides); else 0 / 1 as set */
static std::atomic<int> lean_asked{-1};

extern "C" void pd_cuda_attn_set_decode_lean(int on) {
  lean_asked.store(on ? 1 : 0);
}

extern "C" int pd_cuda_attn_decode_lean(void) {
  int v = lean_asked.load();
  if (v < 0) {
    v = pd_cuda_env_flag("PD_CUDA_DECODE_LEAN");
    lean_asked.store(v);
  }
  return v;
}

/* decode_lean's dynamic shared memory for a batch of n_seqs sequences */
static size_t lean_smem_bytes(int n_seqs) {
  return ((size_t)n_seqs + 1) * sizeof(int32_t);
}

/* The thread blocks of decode_lean<HD, T, G> the current device keeps resident at once (its
 * occupancy times the SMs, with the shared memory of the largest batch), or 0 where the runtime
 * cannot say (then asked again next time); an answer is kept for the process, per
 * instantiation. */
template <int HD, typename T, int G> static int lean_resident_of(void) {
  static std::atomic<int> cached{0};
  int v = cached.load();
  if (!v) {
    int dev = 0, sms = 0, per_sm = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, decode_lean<HD, T, G>, DEC_THREADS,
                                                      lean_smem_bytes(LEAN_MAX_SEQS)) !=
            cudaSuccess) {
      cudaGetLastError(); /* the failed query's own error: not for the next launch to report */
      return 0;
    }
    v = sms * per_sm;
    cached.store(v);
  }
  return v;
}

template <int HD, typename T> static int lean_resident_gmax(int group) {
  const int gmax = group < DEC_GROUP ? group : DEC_GROUP;
  return gmax == 1   ? lean_resident_of<HD, T, 1>()
         : gmax <= 4 ? lean_resident_of<HD, T, 4>()
                     : lean_resident_of<HD, T, 8>();
}

/* lean_resident_of for the kernel a pool of this dtype and head_dim (64 or 128) and this group
 * size would run. */
static int lean_resident(int dtype, int hd, int group) {
  switch (dtype) {
  case PD_DTYPE_F32:
    return hd == 64 ? lean_resident_gmax<64, float>(group) : lean_resident_gmax<128, float>(group);
  case PD_DTYPE_F16:
    return hd == 64 ? lean_resident_gmax<64, __half>(group)
                    : lean_resident_gmax<128, __half>(group);
  case PD_DTYPE_BF16:
    return hd == 64 ? lean_resident_gmax<64, bf16_t>(group)
                    : lean_resident_gmax<128, bf16_t>(group);
  default:
    return hd == 64 ? lean_resident_gmax<64, fp8_t>(group) : lean_resident_gmax<128, fp8_t>(group);
  }
}

/* How a decode runs lean (plan_lean), if it does. */
struct LeanPlan {
  bool on;
  int grid;      /* thread blocks: as many as the device keeps resident */
  int max_tiles; /* DEC_TILE-position tiles a pair has at most */
  int parts;     /* workspace parts a pair may need (pd_lean_max_parts) */
};

/* Launches decode_lean for the decode described by args (its workspace sized for lp.parts parts
 * a pair after args.split_base) over a batch of n_seqs sequences. */
template <int HD, typename T>
static cudaError_t launch_decode_lean(cudaStream_t st, const DecArgs &args, int n_seqs,
                                      const LeanPlan &lp) {
  DecLeanArgs d;
  static_cast<DecArgs &>(d) = args;
  d.n_seqs = n_seqs, d.min_tiles = LEAN_MIN_TILES, d.max_tiles = lp.max_tiles;
  const int gmax = d.group < DEC_GROUP ? d.group : DEC_GROUP;
  auto kernel = gmax == 1   ? decode_lean<HD, T, 1>
                : gmax <= 4 ? decode_lean<HD, T, 4>
                            : decode_lean<HD, T, 8>;
  return pd_cuda_launch(kernel, dim3(lp.grid), DEC_THREADS, lean_smem_bytes(n_seqs), st, d);
}

/* Whether a decode launch of n_splits splits merges in a cluster. */
static int decode_in_cluster(int n_splits) {
  return n_splits <= DEC_CLUSTER && pd_cuda_attn_decode_cluster();
}

/* Merges the ws_splits partials of each (sequence, head) of the decode rows. Grid (n_heads,
 * n_seqs), HD threads. */
struct MergeSeqArgs {
  int n_heads, ws_splits;
  const int32_t *ctx_lens, *n_new, *row_start;
  const float *ws_acc, *ws_ml;
  float *out;
};

template <int HD> __global__ void merge_seq(MergeSeqArgs a) {
  pdl_wait();
  pdl_trigger();
  const int head = blockIdx.x, seq = blockIdx.y, d = threadIdx.x;
  int row;
  if (a.ctx_lens) {
    row = seq;
  } else {
    if (a.n_new[seq] != 1) return;
    row = a.row_start[seq];
  }
  const size_t slot0 = ((size_t)seq * a.n_heads + head) * a.ws_splits;
  const float M = ws_max(a.ws_ml, slot0, a.ws_splits);
  float L = 0.0f, acc = 0.0f;
  ws_add<HD>(a.ws_acc, a.ws_ml, slot0, a.ws_splits, d, M, &L, &acc);
  a.out[((size_t)row * a.n_heads + head) * HD + d] = acc / L;
}

/* ---- tile_attn: prefill and the cascade's shared prefix ------------------------------------ */

struct TileArgs {
  const uint8_t *pool;
  size_t block_bytes;
  int block_shift, n_kv, layer, group, n_heads, max_blocks, n_seqs;
  const float *q;
  float *out;
  const int32_t *tables, *n_past, *n_new, *row_start;
  int kv_end;        /* cascade: end of the shared prefix */
  int split_len;     /* KV positions per grid.z split, a multiple of TB_N */
  int direct;        /* prefill with one split: normalized rows go straight to out */
  int longest_first; /* prefill: blockIdx.x 0 takes the last tile (see tile_setup) */
  int split_base, ws_splits;
  float scale2;
  float *ws_acc, *ws_ml;
};

template <int HD> constexpr size_t tile_smem_bytes() {
  return ((size_t)(TB_M + 2 * TB_N) * (HD + 4) + (size_t)TB_M * (TB_N + 4)) * sizeof(float);
}

/* Pair p of the tile's pair space -> query row, head within the group, the last visible
 * position (-1: not a pair to compute) and the workspace index (row, or seq for the cascade). */
template <int MODE>
__device__ __forceinline__ void pair_info(const TileArgs &a, int seq, int p, int n_pairs, int *row,
                                          int *g, int *limit, int *ws_index) {
  if (p >= n_pairs) {
    *row = 0, *g = 0, *limit = -1, *ws_index = 0;
    return;
  }
  if (MODE == MODE_PREFILL) {
    const int i = p / a.group;
    *g = p % a.group, *row = a.row_start[seq] + i, *limit = a.n_past[seq] + i, *ws_index = *row;
  } else {
    const int s = p / a.group;
    *g = p % a.group, *ws_index = s;
    if (a.n_new[s] == 1)
      *row = a.row_start[s], *limit = INT_MAX;
    else
      *row = 0, *limit = -1;
  }
}

/* What a tile block works on: its pairs p0 .. p0 + TB_M - 1 (those < n_pairs exist), the block
 * table they read, the KV range [lo, hi). */
struct TileCtx {
  int seq, p0, n_pairs, lo, hi;
  const int32_t *table;
};

/* Finds the block's tile and KV range. Every thread of the block calls it (it holds a barrier in
 * prefill mode); it returns false, the same for every thread, when the block has nothing to do. */
template <int MODE>
__device__ __forceinline__ bool tile_setup(const TileArgs &a, int *sh_seq, int *sh_p0, TileCtx *c) {
  const int tid = threadIdx.x, split = blockIdx.z, G = a.group;
  if (MODE == MODE_PREFILL) {
    /* tile t of the sequences with n_new > 1, ceil(n_new * G / TB_M) tiles each: warp 0 scans
     * the sequences 32 at a time. Causal tiles grow with their last row, and the hardware hands
     * out blocks roughly in blockIdx order, so by default the tiles are taken from the end
     * (t = gridDim.x - 1 - blockIdx.x): the longest start first and the short ones fill the
     * tail of the grid, instead of a 4,096-position tile starting last. The spare blocks of the
     * upper-bound grid then come first and return at once. */
    if (tid < 32) {
      const int t = a.longest_first ? (int)gridDim.x - 1 - (int)blockIdx.x : (int)blockIdx.x;
      int base = 0, found = -1, fp0 = 0;
      for (int s0 = 0; s0 < a.n_seqs; s0 += 32) {
        const int s = s0 + tid;
        int cnt = 0;
        if (s < a.n_seqs) {
          const int nn = a.n_new[s];
          cnt = nn > 1 ? (nn * G + TB_M - 1) / TB_M : 0;
        }
        int incl = cnt;
        for (int o = 1; o < 32; o <<= 1) {
          const int y = __shfl_up_sync(0xffffffffu, incl, o);
          if (tid >= o) incl += y;
        }
        const int excl = incl - cnt;
        const unsigned hit =
            __ballot_sync(0xffffffffu, cnt > 0 && t >= base + excl && t < base + incl);
        if (hit) { /* uniform over the warp */
          const int src = __ffs(hit) - 1;
          found = s0 + src;
          fp0 = (t - base - __shfl_sync(0xffffffffu, excl, src)) * TB_M;
          break;
        }
        base += __shfl_sync(0xffffffffu, incl, 31);
      }
      if (tid == 0) *sh_seq = found, *sh_p0 = fp0;
    }
    __syncthreads();
    c->seq = *sh_seq;
    if (c->seq < 0) return false; /* a spare block of the upper-bound grid */
    c->p0 = *sh_p0;
    c->n_pairs = a.n_new[c->seq] * G;
    c->table = a.tables + (size_t)c->seq * a.max_blocks;
    const int i_last = (min(c->p0 + TB_M, c->n_pairs) - 1) / G;
    c->lo = split * a.split_len;
    c->hi = min(c->lo + a.split_len, a.n_past[c->seq] + i_last + 1);
    return c->lo < c->hi; /* false: no row of the tile sees this split (never with 1 split) */
  }
  c->seq = -1;
  c->p0 = blockIdx.x * TB_M;
  c->n_pairs = a.n_seqs * G;
  c->table = a.tables; /* the shared blocks are the same in every table */
  c->lo = split * a.split_len;
  c->hi = min(c->lo + a.split_len, a.kv_end); /* may be empty: the partials still get written */
  return true;
}

/* Elements 4 c4 .. 4 c4 + 3 of the tile's pair r of Q, pre-scaled; zeros for a pair that is not
 * computed. */
template <int HD, int MODE>
__device__ __forceinline__ float4 q_tile_elems(const TileArgs &a, const TileCtx &c, int r, int c4) {
  const int kvh = blockIdx.y;
  int row, g, limit, wsi;
  pair_info<MODE>(a, c.seq, c.p0 + r, c.n_pairs, &row, &g, &limit, &wsi);
  float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
  if (limit >= 0) {
    v = *(const float4 *)(a.q + ((size_t)row * a.n_heads + (size_t)kvh * a.group + g) * HD +
                          c4 * 4);
    v.x *= a.scale2, v.y *= a.scale2, v.z *= a.scale2, v.w *= a.scale2;
  }
  return v;
}

/* Q tile (TB_M pairs x HD, pre-scaled) to shared memory with row stride LD; pairs that are not
 * computed get zeros. */
template <int HD, int MODE, int NTHREADS>
__device__ __forceinline__ void load_q_tile(const TileArgs &a, const TileCtx &c, float *Qs,
                                            int LD) {
  for (int e = threadIdx.x; e < TB_M * (HD / 4); e += NTHREADS) {
    const int r = e / (HD / 4), c4 = e % (HD / 4);
    *(float4 *)&Qs[r * LD + c4 * 4] = q_tile_elems<HD, MODE>(a, c, r, c4);
  }
}

/* K and V rows kv0 .. kv0 + TB_N - 1 to shared memory as f32 (strides LDK, LDV); rows at or past
 * hi are zeros (a zero V row times a zero weight must not make NaN from stale memory). */
template <int HD, typename T, int NTHREADS>
__device__ __forceinline__ void load_kv_tile(const TileArgs &a, const TileCtx &c, int kv0,
                                             float *Ks, int LDK, float *Vs, int LDV) {
  const int kvh = blockIdx.y;
  const size_t per_head = ((size_t)1 << a.block_shift) * HD;
  const size_t k_off = (((size_t)a.layer * 2 + 0) * a.n_kv + kvh) * per_head;
  const size_t v_off = (((size_t)a.layer * 2 + 1) * a.n_kv + kvh) * per_head;
  constexpr int PER = Elem<T>::PER16, CPR = HD / PER, CHUNKS = TB_N * CPR;
  for (int e = threadIdx.x; e < 2 * CHUNKS; e += NTHREADS) {
    const int which = e / CHUNKS, cc = e % CHUNKS, t = cc / CPR, part = cc % CPR;
    float f[PER];
#pragma unroll
    for (int j = 0; j < PER; j++) f[j] = 0.0f;
    if (kv0 + t < c.hi)
      load_kv16<T>(a.pool, a.block_bytes, c.table, a.block_shift, which ? v_off : k_off, HD,
                   kv0 + t, part * PER, f);
    float *dst = which ? Vs + t * LDV + part * PER : Ks + t * LDK + part * PER;
#pragma unroll
    for (int j = 0; j < PER; j += 4)
      *(float4 *)(dst + j) = make_float4(f[j], f[j + 1], f[j + 2], f[j + 3]);
  }
}

template <int HD, typename T, int MODE>
__global__ void __launch_bounds__(TB_THREADS) tile_attn(TileArgs a) {
  pdl_wait();
  pdl_trigger();
  extern __shared__ __align__(16) float smem[];
  constexpr int LD = HD + 4, LDP = TB_N + 4, NK = HD / 64;
  float *Qs = smem, *Ks = Qs + TB_M * LD, *Vs = Ks + TB_N * LD, *Ps = Vs + TB_N * LD;
  __shared__ int sh_seq, sh_p0;
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  const int kvh = blockIdx.y, split = blockIdx.z, G = a.group;
  TileCtx c;
  if (!tile_setup<MODE>(a, &sh_seq, &sh_p0, &c)) return; /* uniform over the block */
  const int seq = c.seq, p0 = c.p0, n_pairs = c.n_pairs, lo = c.lo, hi = c.hi;
  load_q_tile<HD, MODE, TB_THREADS>(a, c, Qs, LD);
  int lim[4];
#pragma unroll
  for (int i = 0; i < 4; i++) {
    int row, g, wsi;
    pair_info<MODE>(a, seq, p0 + ty + 16 * i, n_pairs, &row, &g, &lim[i], &wsi);
  }
  float o[4][4 * NK], m[4], l[4];
#pragma unroll
  for (int i = 0; i < 4; i++) {
    m[i] = -INFINITY, l[i] = 0.0f;
#pragma unroll
    for (int k = 0; k < 4 * NK; k++) o[i][k] = 0.0f;
  }
  for (int kv0 = lo; kv0 < hi; kv0 += TB_N) {
    __syncthreads(); /* the previous tile's readers of Ks, Vs, Ps are done; Qs is visible */
    load_kv_tile<HD, T, TB_THREADS>(a, c, kv0, Ks, LD, Vs, LD);
    __syncthreads();
    /* S = Q K^T: rows ty + 16 i, columns tx + 16 j */
    float s[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
      for (int j = 0; j < 4; j++) s[i][j] = 0.0f;
#pragma unroll 4
    for (int d = 0; d < HD; d += 4) {
      float4 qv[4], kv[4];
#pragma unroll
      for (int i = 0; i < 4; i++) qv[i] = *(const float4 *)&Qs[(ty + 16 * i) * LD + d];
#pragma unroll
      for (int j = 0; j < 4; j++) kv[j] = *(const float4 *)&Ks[(tx + 16 * j) * LD + d];
#pragma unroll
      for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) {
          s[i][j] = fmaf(qv[i].x, kv[j].x, s[i][j]);
          s[i][j] = fmaf(qv[i].y, kv[j].y, s[i][j]);
          s[i][j] = fmaf(qv[i].z, kv[j].z, s[i][j]);
          s[i][j] = fmaf(qv[i].w, kv[j].w, s[i][j]);
        }
    }
    /* mask, online softmax; the 16 lanes tx = 0..15 of a half-warp share rows ty + 16 i */
#pragma unroll
    for (int i = 0; i < 4; i++) {
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < 4; j++) {
        const int pos = kv0 + tx + 16 * j;
        if (pos >= hi || pos > lim[i]) s[i][j] = -INFINITY;
        mx = fmaxf(mx, s[i][j]);
      }
#pragma unroll
      for (int off = 8; off; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      const float m_new = fmaxf(m[i], mx);
      const float m_use = m_new == -INFINITY ? 0.0f : m_new; /* a row that sees nothing yet */
      const float alpha = exp2f(m[i] - m_use);
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < 4; j++) {
        const float p = exp2f(s[i][j] - m_use);
        Ps[(ty + 16 * i) * LDP + tx + 16 * j] = p;
        sum += p;
      }
#pragma unroll
      for (int off = 8; off; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
      l[i] = l[i] * alpha + sum;
      m[i] = m_new;
#pragma unroll
      for (int k = 0; k < 4 * NK; k++) o[i][k] *= alpha;
    }
    /* P rows ty + 16 i were written by the 16 lanes tx = 0..15 of this thread's own warp (tid =
     * ty * 16 + tx), and V is in place since the barrier after the load: a warp barrier is enough */
    __syncwarp();
    /* O += P V: rows ty + 16 i, dims tx * 4 + 64 k .. + 3 */
#pragma unroll 2
    for (int c = 0; c < TB_N; c += 4) {
      float4 pv[4];
#pragma unroll
      for (int i = 0; i < 4; i++) pv[i] = *(const float4 *)&Ps[(ty + 16 * i) * LDP + c];
#pragma unroll
      for (int cc = 0; cc < 4; cc++) {
#pragma unroll
        for (int k = 0; k < NK; k++) {
          const float4 vv = *(const float4 *)&Vs[(c + cc) * LD + tx * 4 + 64 * k];
#pragma unroll
          for (int i = 0; i < 4; i++) {
            const float p = cc == 0 ? pv[i].x : cc == 1 ? pv[i].y : cc == 2 ? pv[i].z : pv[i].w;
            o[i][4 * k + 0] = fmaf(p, vv.x, o[i][4 * k + 0]);
            o[i][4 * k + 1] = fmaf(p, vv.y, o[i][4 * k + 1]);
            o[i][4 * k + 2] = fmaf(p, vv.z, o[i][4 * k + 2]);
            o[i][4 * k + 3] = fmaf(p, vv.w, o[i][4 * k + 3]);
          }
        }
      }
    }
  }
  /* results */
#pragma unroll
  for (int i = 0; i < 4; i++) {
    int row, g, limit, wsi;
    pair_info<MODE>(a, seq, p0 + ty + 16 * i, n_pairs, &row, &g, &limit, &wsi);
    if (limit < 0) continue;
    const int head = kvh * G + g;
    if (a.direct) {
      const float inv = 1.0f / l[i];
      float *dst = a.out + ((size_t)row * a.n_heads + head) * HD + tx * 4;
#pragma unroll
      for (int k = 0; k < NK; k++)
        *(float4 *)(dst + 64 * k) = make_float4(o[i][4 * k] * inv, o[i][4 * k + 1] * inv,
                                                o[i][4 * k + 2] * inv, o[i][4 * k + 3] * inv);
    } else {
      const size_t slot = ((size_t)wsi * a.n_heads + head) * a.ws_splits + a.split_base + split;
      float *dst = a.ws_acc + slot * HD + tx * 4;
#pragma unroll
      for (int k = 0; k < NK; k++)
        *(float4 *)(dst + 64 * k) =
            make_float4(o[i][4 * k], o[i][4 * k + 1], o[i][4 * k + 2], o[i][4 * k + 3]);
      if (tx == 0) a.ws_ml[2 * slot] = m[i], a.ws_ml[2 * slot + 1] = l[i];
    }
  }
}

/* ---- tile_mma: tile_attn on tensor cores -------------------------------------------------- */

/* x = hi + lo with hi and lo tf32 values (19-bit floats: the low 13 bits of the f32 pattern zero):
 * hi rounds x to nearest (ties away from zero) by integer add-and-mask, lo is x - hi (exact in
 * f32) rounded the same way. hi * y + lo * y carries x * y to ~2^-21 of it. An f16 or bf16 value
 * is a tf32 value already (11 and 8 significant bits): its lo is 0. */
__device__ __forceinline__ void tf32_split(float x, uint32_t *hi, uint32_t *lo) {
  const uint32_t h = (__float_as_uint(x) + 0x1000u) & 0xffffe000u;
  *hi = h;
  *lo = (__float_as_uint(x - __uint_as_float(h)) + 0x1000u) & 0xffffe000u;
}
__device__ __forceinline__ uint32_t tf32_round(float x) {
  return (__float_as_uint(x) + 0x1000u) & 0xffffe000u;
}

/* c (16 x 8 f32) += a (16 x 8 tf32) * b (8 x 8 tf32), one warp. Fragments as in the PTX ISA,
 * "Matrix Fragments for mma.m16n8k8" (g = lane / 4, t = lane % 4):
 *   a0 (g, t)  a1 (g + 8, t)  a2 (g, t + 4)  a3 (g + 8, t + 4)      [row, k]
 *   b0 (t, g)  b1 (t + 4, g)                                        [k, col]
 *   c0 (g, 2t) c1 (g, 2t + 1) c2 (g + 8, 2t) c3 (g + 8, 2t + 1)     [row, col] */
__device__ __forceinline__ void mma_tf32(float *c, const uint32_t *a, const uint32_t *b) {
  asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
               "{%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <int HD> constexpr size_t mma_smem_bytes() {
  /* Q, K: stride HD + 4; V: HD + 8; P: 4 warps x 16 rows, stride TB_N + 4 */
  return ((size_t)TB_M * (HD + 4) + (size_t)TB_N * (HD + 4) + (size_t)TB_N * (HD + 8) +
          (size_t)TB_M * (TB_N + 4)) *
         sizeof(float);
}

/* The mma tile kernels' per-lane state before the first KV tile: the last visible position of
 * this lane's rows r = 16 warp + g + 8 h (h = 0, 1; -1: not a pair to compute), O (o[nd], the S
 * fragment layout over dims) zero, the rows' max m -inf and sum l zero. */
template <int MODE, int ND>
__device__ __forceinline__ void mma_rows_init(const TileArgs &a, const TileCtx &c, int warp, int g,
                                              int *lim, float (*o)[4], float *m, float *l) {
#pragma unroll
  for (int h = 0; h < 2; h++) {
    int row, gg, wsi;
    pair_info<MODE>(a, c.seq, c.p0 + 16 * warp + g + 8 * h, c.n_pairs, &row, &gg, &lim[h], &wsi);
    m[h] = -INFINITY, l[h] = 0.0f;
  }
#pragma unroll
  for (int nd = 0; nd < ND; nd++) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.0f;
}

/* The online softmax step of the mma tile kernels on one warp's S fragments (16 rows by TB_N
 * positions: row g in s[j][0..1], row g + 8 in s[j][2..3], columns 8 j + 2 t, + 1): masks the
 * positions at or past hi and past each row's limit, updates the rows' max m and sum l, rescales
 * O (o[nd], the same layout over dims) and leaves the weights P in s. */
template <int NT, int ND>
__device__ __forceinline__ void mma_softmax(float (*s)[4], float (*o)[4], float *m, float *l,
                                            int kv0, int hi, const int *lim, int t) {
#pragma unroll
  for (int h = 0; h < 2; h++) {
    float mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
      for (int e = 0; e < 2; e++) {
        const int pos = kv0 + 8 * j + 2 * t + e;
        if (pos >= hi || pos > lim[h]) s[j][2 * h + e] = -INFINITY;
        mx = fmaxf(mx, s[j][2 * h + e]);
      }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(m[h], mx);
    const float m_use = m_new == -INFINITY ? 0.0f : m_new; /* a row that sees nothing yet */
    const float alpha = exp2f(m[h] - m_use);
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
      for (int e = 0; e < 2; e++) {
        const float p = exp2f(s[j][2 * h + e] - m_use);
        s[j][2 * h + e] = p;
        sum += p;
      }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    l[h] = l[h] * alpha + sum;
    m[h] = m_new;
#pragma unroll
    for (int nd = 0; nd < ND; nd++) o[nd][2 * h] *= alpha, o[nd][2 * h + 1] *= alpha;
  }
}

/* The mma tile kernels' results, rows g + 8 h of warp w's pairs, dims 8 nd + 2 t, + 1: normalized
 * into out (direct prefill) or as partials (acc, max, sum) into the workspace. */
template <int HD, int MODE>
__device__ __forceinline__ void mma_store(const TileArgs &a, const TileCtx &c, int warp, int g,
                                          int t, float (*o)[4], const float *m, const float *l) {
  constexpr int ND = HD / 8;
  const int kvh = blockIdx.y, split = blockIdx.z;
#pragma unroll
  for (int h = 0; h < 2; h++) {
    int row, gg, limit, wsi;
    pair_info<MODE>(a, c.seq, c.p0 + 16 * warp + g + 8 * h, c.n_pairs, &row, &gg, &limit, &wsi);
    if (limit < 0) continue;
    const int head = kvh * a.group + gg;
    if (a.direct) {
      const float inv = 1.0f / l[h];
      float *dst = a.out + ((size_t)row * a.n_heads + head) * HD + 2 * t;
#pragma unroll
      for (int nd = 0; nd < ND; nd++)
        *(float2 *)(dst + 8 * nd) = make_float2(o[nd][2 * h] * inv, o[nd][2 * h + 1] * inv);
    } else {
      const size_t slot = ((size_t)wsi * a.n_heads + head) * a.ws_splits + a.split_base + split;
      float *dst = a.ws_acc + slot * HD + 2 * t;
#pragma unroll
      for (int nd = 0; nd < ND; nd++)
        *(float2 *)(dst + 8 * nd) = make_float2(o[nd][2 * h], o[nd][2 * h + 1]);
      if (t == 0) a.ws_ml[2 * slot] = m[h], a.ws_ml[2 * slot + 1] = l[h];
    }
  }
}

/* The same work as tile_attn (same grid, tiles, ranges and outputs), 128 threads: warp w owns the
 * 16 pairs 16 w .. 16 w + 15 of the tile. Per KV tile each warp computes S (16 x 64) with
 * m16n8k8 tf32 mma from shared Q and K (strides chosen so the fragment reads are conflict-free:
 * Q, K rows HD + 4 floats apart, V rows HD + 8), runs the online softmax on its fragments (a row's
 * 64 scores sit in the 4 lanes of one group: shuffles xor 1, 2), writes P to its own slice of
 * shared memory (the accumulator layout is not the A layout) and adds P V into its O fragments.
 * Operands that are not exact tf32 values are split in two (tf32_split): Q and P always, K and V
 * for f32 pools (then 3 mma per product instead of 2). */
template <int HD, typename T, int MODE>
__global__ void __launch_bounds__(MMA_THREADS) tile_mma(TileArgs a) {
  pdl_wait();
  pdl_trigger();
  extern __shared__ __align__(16) float smem[];
  constexpr int LDQ = HD + 4, LDK = HD + 4, LDV = HD + 8, LDP = TB_N + 4;
  constexpr int NT = TB_N / 8, ND = HD / 8;
  constexpr bool SPLIT_KV = sizeof(T) != 2; /* f32, fp8 pools: K and V are not tf32 values */
  float *Qs = smem, *Ks = Qs + TB_M * LDQ, *Vs = Ks + TB_N * LDK, *Ps = Vs + TB_N * LDV;
  __shared__ int sh_seq, sh_p0;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane >> 2, t = lane & 3;
  TileCtx c;
  if (!tile_setup<MODE>(a, &sh_seq, &sh_p0, &c)) return; /* uniform over the block */
  load_q_tile<HD, MODE, MMA_THREADS>(a, c, Qs, LDQ);
  int lim[2];
  float o[ND][4], m[2], l[2];
  mma_rows_init<MODE, ND>(a, c, warp, g, lim, o, m, l);
  const float *Qw = Qs + 16 * warp * LDQ;
  float *Pw = Ps + 16 * warp * LDP;
  for (int kv0 = c.lo; kv0 < c.hi; kv0 += TB_N) {
    __syncthreads(); /* every warp is done with the previous Ks, Vs; Qs is visible */
    load_kv_tile<HD, T, MMA_THREADS>(a, c, kv0, Ks, LDK, Vs, LDV);
    __syncthreads();
    /* S = Q K^T: n-tile j holds positions kv0 + 8 j .. + 7 */
    float s[NT][4];
#pragma unroll
    for (int j = 0; j < NT; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll 2
    for (int kk = 0; kk < HD / 8; kk++) {
      uint32_t ah[4], al[4];
      tf32_split(Qw[g * LDQ + 8 * kk + t], &ah[0], &al[0]);
      tf32_split(Qw[(g + 8) * LDQ + 8 * kk + t], &ah[1], &al[1]);
      tf32_split(Qw[g * LDQ + 8 * kk + t + 4], &ah[2], &al[2]);
      tf32_split(Qw[(g + 8) * LDQ + 8 * kk + t + 4], &ah[3], &al[3]);
#pragma unroll
      for (int j = 0; j < NT; j++) {
        const float k0 = Ks[(8 * j + g) * LDK + 8 * kk + t];
        const float k1 = Ks[(8 * j + g) * LDK + 8 * kk + t + 4];
        uint32_t bh[2], bl[2];
        if (SPLIT_KV) {
          tf32_split(k0, &bh[0], &bl[0]);
          tf32_split(k1, &bh[1], &bl[1]);
        } else {
          bh[0] = __float_as_uint(k0), bh[1] = __float_as_uint(k1);
        }
        mma_tf32(s[j], ah, bh);
        mma_tf32(s[j], al, bh);
        if (SPLIT_KV) mma_tf32(s[j], ah, bl);
      }
    }
    mma_softmax<NT, ND>(s, o, m, l, kv0, c.hi, lim, t);
    /* P to this warp's slice of shared memory, then O += P V */
#pragma unroll
    for (int j = 0; j < NT; j++) {
      *(float2 *)&Pw[g * LDP + 8 * j + 2 * t] = make_float2(s[j][0], s[j][1]);
      *(float2 *)&Pw[(g + 8) * LDP + 8 * j + 2 * t] = make_float2(s[j][2], s[j][3]);
    }
    __syncwarp();
#pragma unroll 2
    for (int kc = 0; kc < NT; kc++) {
      uint32_t ah[4], al[4];
      tf32_split(Pw[g * LDP + 8 * kc + t], &ah[0], &al[0]);
      tf32_split(Pw[(g + 8) * LDP + 8 * kc + t], &ah[1], &al[1]);
      tf32_split(Pw[g * LDP + 8 * kc + t + 4], &ah[2], &al[2]);
      tf32_split(Pw[(g + 8) * LDP + 8 * kc + t + 4], &ah[3], &al[3]);
#pragma unroll
      for (int nd = 0; nd < ND; nd++) {
        const float v0 = Vs[(8 * kc + t) * LDV + 8 * nd + g];
        const float v1 = Vs[(8 * kc + t + 4) * LDV + 8 * nd + g];
        uint32_t bh[2], bl[2];
        if (SPLIT_KV) {
          tf32_split(v0, &bh[0], &bl[0]);
          tf32_split(v1, &bh[1], &bl[1]);
        } else {
          bh[0] = __float_as_uint(v0), bh[1] = __float_as_uint(v1);
        }
        mma_tf32(o[nd], ah, bh);
        mma_tf32(o[nd], al, bh);
        if (SPLIT_KV) mma_tf32(o[nd], ah, bl);
      }
    }
    __syncwarp(); /* the P slice is read before the next tile rewrites it */
  }
  mma_store<HD, MODE>(a, c, warp, g, t, o, m, l);
}

/* ---- tile_f16: the tile kernel with f16 products, for f16 pools ---------------------------- */

/* Two floats as an f16x2 register, rounded to nearest even: lo in the low half. */
__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *(const uint32_t *)&h;
}

/* c (16 x 8 f32) += a (16 x 16 f16) * b (16 x 8 f16), one warp. Fragments as in the PTX ISA,
 * "Matrix Fragments for mma.m16n8k16 with floating point type" (g = lane / 4, t = lane % 4), each
 * register two f16 of consecutive k (the lower index in the low half):
 *   a0 (g, 2t..)  a1 (g + 8, 2t..)  a2 (g, 2t + 8..)  a3 (g + 8, 2t + 8..)   [row, k]
 *   b0 (2t.., g)  b1 (2t + 8.., g)                                           [k, col]
 *   c0 (g, 2t) c1 (g, 2t + 1) c2 (g + 8, 2t) c3 (g + 8, 2t + 1)              [row, col] */
__device__ __forceinline__ void mma_f16(float *c, const uint32_t *a, const uint32_t *b) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
               "{%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/* 16 bytes global -> shared without passing through registers; src_bytes 0 writes zeros (and
 * reads nothing). */
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, int src_bytes) {
  const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit(void) {
  asm volatile("cp.async.commit_group;\n" ::);
}
/* waits until at most N of this thread's committed groups are still in flight */
template <int N> __device__ __forceinline__ void cp_async_wait(void) {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

/* The B fragment of m16n8k16 for rows k0 .. k0 + 15 of a row-major (k, n) f16 matrix in shared
 * memory at columns n0 .. n0 + 7: lanes 0-15 give the row addresses (lane i: row k0 + i), the
 * transposing load hands lane (g, t) the elements (2t, g), (2t + 1, g) and (2t + 8, g), (2t + 9,
 * g). Rows 16-byte aligned. */
__device__ __forceinline__ void ldmatrix_b_trans(uint32_t *b, const __half *row_addr) {
  const unsigned s = (unsigned)__cvta_generic_to_shared(row_addr);
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(b[0]), "=r"(b[1])
               : "r"(s));
}

template <int HD> constexpr size_t f16_smem_bytes() {
  /* Q, then two stages of K and V, all f16 with rows HD + 8 apart */
  return ((size_t)TB_M + 4 * (size_t)TB_N) * (HD + 8) * sizeof(__half);
}

/* K and V rows kv0 .. kv0 + TB_N - 1 of an f16 pool into one stage, 16 bytes at a time with
 * cp.async (issued, not waited for); rows at or past hi are zeros. */
template <int HD>
__device__ __forceinline__ void issue_kv_f16(const TileArgs &a, const TileCtx &c, int kv0,
                                             __half *Ks, __half *Vs) {
  constexpr int LD = HD + 8, CPR = HD / 8, CHUNKS = TB_N * CPR;
  const int kvh = blockIdx.y;
  const size_t per_head = ((size_t)1 << a.block_shift) * HD;
  const size_t k_off = (((size_t)a.layer * 2 + 0) * a.n_kv + kvh) * per_head;
  const size_t v_off = (((size_t)a.layer * 2 + 1) * a.n_kv + kvh) * per_head;
  const int row_mask = (1 << a.block_shift) - 1;
  for (int e = threadIdx.x; e < 2 * CHUNKS; e += MMA_THREADS) {
    const int which = e / CHUNKS, cc = e % CHUNKS, t = cc / CPR, part = cc % CPR;
    const int tok = kv0 + t;
    const uint8_t *src = a.pool;
    int bytes = 0;
    if (tok < c.hi) {
      const size_t el = (which ? v_off : k_off) + (size_t)(tok & row_mask) * HD + part * 8;
      src = a.pool + (size_t)c.table[tok >> a.block_shift] * a.block_bytes + el * sizeof(__half);
      bytes = 16;
    }
    cp_async16((which ? Vs : Ks) + t * LD + part * 8, src, bytes);
  }
}

/* The same work as tile_mma (same grid, tiles, ranges and outputs; 128 threads, warp w owns the
 * pairs 16 w .. 16 w + 15) with one f16 mma per product: Q (pre-scaled) and P are rounded to f16,
 * K and V are the pool's f16 values, sums are f32. K and V tiles come straight from the pool by
 * cp.async into two stages, the next tile's loads in flight while this one is computed; S's
 * accumulator fragments are P's A fragments (no trip through shared memory); V's B fragments come
 * from a transposing ldmatrix. Shared rows are HD + 8 halves apart, so the 32-bit fragment reads
 * and the ldmatrix rows are free of bank conflicts. 46,080 / 87,040 bytes for head_dim 64 / 128. */
template <int HD, int MODE> __global__ void __launch_bounds__(MMA_THREADS) tile_f16(TileArgs a) {
  pdl_wait();
  pdl_trigger();
  extern __shared__ __align__(16) __half hsmem[];
  constexpr int LD = HD + 8, NT = TB_N / 8, ND = HD / 8, NK = HD / 16;
  __half *Qs = hsmem, *stage0 = Qs + TB_M * LD;
  __shared__ int sh_seq, sh_p0;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane >> 2, t = lane & 3;
  TileCtx c;
  if (!tile_setup<MODE>(a, &sh_seq, &sh_p0, &c)) return; /* uniform over the block */
  /* the first K/V tile's loads go out before Q is converted */
  if (c.lo < c.hi) issue_kv_f16<HD>(a, c, c.lo, stage0, stage0 + TB_N * LD);
  cp_async_commit();
  for (int e = tid; e < TB_M * (HD / 4); e += MMA_THREADS) {
    const int r = e / (HD / 4), c4 = e % (HD / 4);
    const float4 v = q_tile_elems<HD, MODE>(a, c, r, c4);
    uint2 h;
    h.x = pack_half2(v.x, v.y), h.y = pack_half2(v.z, v.w);
    *(uint2 *)&Qs[r * LD + c4 * 4] = h;
  }
  __syncthreads();
  /* this warp's Q as A fragments, k-chunk kk: qa[kk][0..3] */
  uint32_t qa[NK][4];
  const __half *Qw = Qs + 16 * warp * LD;
#pragma unroll
  for (int kk = 0; kk < NK; kk++) {
    qa[kk][0] = *(const uint32_t *)&Qw[g * LD + 16 * kk + 2 * t];
    qa[kk][1] = *(const uint32_t *)&Qw[(g + 8) * LD + 16 * kk + 2 * t];
    qa[kk][2] = *(const uint32_t *)&Qw[g * LD + 16 * kk + 8 + 2 * t];
    qa[kk][3] = *(const uint32_t *)&Qw[(g + 8) * LD + 16 * kk + 8 + 2 * t];
  }
  int lim[2];
  float o[ND][4], m[2], l[2];
  mma_rows_init<MODE, ND>(a, c, warp, g, lim, o, m, l);
  int stage = 0;
  for (int kv0 = c.lo; kv0 < c.hi; kv0 += TB_N, stage ^= 1) {
    __half *Ks = stage0 + stage * 2 * TB_N * LD, *Vs = Ks + TB_N * LD;
    /* the next tile into the other stage, whose readers finished at the previous iteration's
     * closing barrier; then wait for this tile's group */
    if (kv0 + TB_N < c.hi) {
      __half *Kn = stage0 + (stage ^ 1) * 2 * TB_N * LD;
      issue_kv_f16<HD>(a, c, kv0 + TB_N, Kn, Kn + TB_N * LD);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    /* S = Q K^T: n-tile j holds positions kv0 + 8 j .. + 7 */
    float s[NT][4];
#pragma unroll
    for (int j = 0; j < NT; j++) {
      s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < NK; kk++) {
        uint32_t b[2];
        b[0] = *(const uint32_t *)&Ks[(8 * j + g) * LD + 16 * kk + 2 * t];
        b[1] = *(const uint32_t *)&Ks[(8 * j + g) * LD + 16 * kk + 8 + 2 * t];
        mma_f16(s[j], qa[kk], b);
      }
    }
    mma_softmax<NT, ND>(s, o, m, l, kv0, c.hi, lim, t);
    /* O += P V: k-chunk kc is n-tiles 2 kc and 2 kc + 1 of S, already in A's layout */
#pragma unroll
    for (int kc = 0; kc < TB_N / 16; kc++) {
      uint32_t pa[4];
      pa[0] = pack_half2(s[2 * kc][0], s[2 * kc][1]);
      pa[1] = pack_half2(s[2 * kc][2], s[2 * kc][3]);
      pa[2] = pack_half2(s[2 * kc + 1][0], s[2 * kc + 1][1]);
      pa[3] = pack_half2(s[2 * kc + 1][2], s[2 * kc + 1][3]);
#pragma unroll
      for (int nd = 0; nd < ND; nd++) {
        uint32_t b[2];
        ldmatrix_b_trans(b, Vs + (16 * kc + (lane & 15)) * LD + 8 * nd);
        mma_f16(o[nd], pa, b);
      }
    }
    __syncthreads(); /* every warp is done with this stage before it is loaded again */
  }
  cp_async_wait<0>(); /* nothing may land after the block exits */
  mma_store<HD, MODE>(a, c, warp, g, t, o, m, l);
}

/* Merges the prefill splits of each (row, head) of the sequences with n_new > 1. Grid (n_rows,
 * n_heads), HD threads. A row reads only the splits that start at or before its last visible
 * position: exactly those whose tile_attn block ran. */
struct MergeRowArgs {
  int n_heads, n_splits, split_len;
  const int32_t *n_past, *n_new, *row_start, *row_seq;
  const float *ws_acc, *ws_ml;
  float *out;
};

template <int HD> __global__ void merge_rows(MergeRowArgs a) {
  pdl_wait();
  pdl_trigger();
  const int r = blockIdx.x, head = blockIdx.y, d = threadIdx.x;
  const int s = a.row_seq[r];
  if (a.n_new[s] <= 1) return;
  const int limit = a.n_past[s] + (r - a.row_start[s]);
  const int nv = min(a.n_splits, limit / a.split_len + 1);
  const size_t slot0 = ((size_t)r * a.n_heads + head) * a.n_splits;
  float M = -INFINITY;
  for (int sp = 0; sp < nv; sp++) M = fmaxf(M, a.ws_ml[2 * (slot0 + sp)]);
  float L = 0.0f, acc = 0.0f;
  for (int sp = 0; sp < nv; sp++) {
    const float m = a.ws_ml[2 * (slot0 + sp)];
    if (m == -INFINITY) continue;
    const float w = exp2f(m - M);
    L += a.ws_ml[2 * (slot0 + sp) + 1] * w;
    acc += a.ws_acc[(slot0 + sp) * HD + d] * w;
  }
  a.out[((size_t)r * a.n_heads + head) * HD + d] = acc / L;
}

/* ---- kv_store ---------------------------------------------------------------------------------- */

struct StoreArgs {
  uint8_t *pool;
  size_t block_bytes;
  int block_shift, n_kv, hd, layer, max_blocks;
  const int32_t *tables, *n_past, *row_start, *row_seq;
  const float *k, *v;
};

/* New row r's block and its row in that block; NULL when its position is outside the table
 * (refused on the host, so never). */
__device__ __forceinline__ uint8_t *store_target(const StoreArgs &a, int r, int *tok) {
  const int s = a.row_seq[r];
  const int pos = a.n_past[s] + (r - a.row_start[s]);
  if (pos < 0 || (pos >> a.block_shift) >= a.max_blocks) return NULL;
  *tok = pos & ((1 << a.block_shift) - 1);
  return a.pool +
         (size_t)a.tables[(size_t)s * a.max_blocks + (pos >> a.block_shift)] * a.block_bytes;
}

template <typename T> __global__ void kv_store(StoreArgs a) {
  pdl_wait();
  pdl_trigger();
  const int r = blockIdx.x;
  int tok;
  uint8_t *blk = store_target(a, r, &tok);
  if (!blk) return;
  const int per = a.n_kv * a.hd;
  const size_t per_head = ((size_t)1 << a.block_shift) * a.hd;
  for (int e = threadIdx.x; e < 2 * per; e += blockDim.x) {
    const int which = e / per, rem = e % per, h = rem / a.hd, d = rem % a.hd;
    const float x = (which ? a.v : a.k)[(size_t)r * per + rem];
    const size_t off =
        (((size_t)a.layer * 2 + which) * a.n_kv + h) * per_head + (size_t)tok * a.hd + d;
    Elem<T>::store(blk, off, x);
  }
}

/* fp8: warp w of the block stores rows (K|V, kv_head) w, w + 8, ... of new row r. */
__global__ void kv_store_fp8(StoreArgs a) {
  pdl_wait();
  pdl_trigger();
  const int r = blockIdx.x, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int tok;
  uint8_t *blk = store_target(a, r, &tok);
  if (!blk) return;
  const int per = a.n_kv * a.hd;
  const size_t per_head = ((size_t)1 << a.block_shift) * a.hd;
  const size_t scales = a.block_bytes / (size_t)(a.hd + 4) * (size_t)a.hd;
  for (int seg = warp; seg < 2 * a.n_kv; seg += blockDim.x / 32) {
    const int which = seg / a.n_kv, h = seg % a.n_kv;
    const float *x = (which ? a.v : a.k) + (size_t)r * per + (size_t)h * a.hd;
    float amax = 0.0f;
    for (int d = lane; d < a.hd; d += 32) amax = fmaxf(amax, fabsf(x[d]));
    for (int o = 16; o; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    /* pd_kv_fp8_row_scale */
    const float sc = !(amax >= 1e-30f) || isinf(amax) ? 1.0f : __fdiv_rn(amax, 448.0f);
    const size_t row = (((size_t)a.layer * 2 + which) * a.n_kv + h) * per_head / a.hd + tok;
    /* a NaN is converted as it is: the division would return the canonical NaN and lose the
     * sign the CPU store keeps */
    for (int d = lane; d < a.hd; d += 32)
      blk[row * a.hd + d] =
          pd_cuda_cvt_f32_fp8(__float_as_uint(isnan(x[d]) ? x[d] : __fdiv_rn(x[d], sc)));
    if (lane == 0) *(float *)(blk + scales + row * sizeof(float)) = sc;
  }
}

/* ---- host side ------------------------------------------------------------------------------- */

static int bad(char *err, size_t errlen, const char *why) {
  if (err && errlen) snprintf(err, errlen, "cuda attention: %s", why);
  return PD_EINVAL;
}

static int log2_exact(int v) {
  if (v <= 0 || (v & (v - 1))) return -1;
  int s = 0;
  while ((1 << s) < v) s++;
  return s;
}

static int64_t cdiv(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}
static size_t align256(size_t v) {
  return (v + 255) & ~(size_t)255;
}

/* How a decode of n_pairs (sequence, KV head, head chunk) pairs over at most `rest` positions
 * each runs lean, where it does: when switched on, for at most LEAN_MAX_SEQS sequences and
 * PD_LEAN_MAX_TILES tiles, on a device that can say its resident blocks. */
static LeanPlan plan_lean(const pd_kv_layout *L, int group, int64_t n_seqs, int64_t n_pairs,
                          int64_t rest) {
  LeanPlan lp = {};
  if (!pd_cuda_attn_decode_lean() || n_seqs > LEAN_MAX_SEQS) return lp;
  const int64_t tiles = cdiv(rest, DEC_TILE);
  const int resident = lean_resident(L->dtype, L->head_dim, group);
  if (resident <= 0 || n_pairs * tiles > PD_LEAN_MAX_TILES) return lp;
  lp.on = true, lp.grid = resident, lp.max_tiles = (int)tiles;
  lp.parts = pd_lean_max_parts(tiles, LEAN_MIN_TILES, resident);
  return lp;
}

/* How a batch is cut: decided on the host from the scalar bounds alone, so that
 * pd_cuda_attn_batch_workspace_bytes and pd_cuda_attn agree. */
struct Plan {
  int group, gchunks, shared_pos;
  bool run_decode, run_prefill, cascade;
  int dec_splits, dec_len; /* decode_split over [shared_pos, max_ctx) */
  LeanPlan lean;           /* decode_lean instead where lean.on: dec_splits = lean.parts */
  int casc_tiles, casc_splits, casc_len;
  int dec_total; /* workspace splits per (seq, head): casc_splits + dec_splits */
  int pf_tiles, pf_splits, pf_len;
  size_t dec_acc, dec_ml, pf_acc, pf_ml, bytes; /* byte offsets into the workspace, total */
};

/* The thread blocks the decode grid grows to: DEC_MAX_GRID, or PD_CUDA_DECODE_GRID (64 to
 * 65,536) for tuning; read once. */
static int64_t decode_grid(void) {
  static std::atomic<int> cached{0};
  int v = cached.load();
  if (!v) {
    const char *env = getenv("PD_CUDA_DECODE_GRID");
    long e = env ? strtol(env, NULL, 10) : 0;
    v = e >= 64 && e <= 65536 ? (int)e : DEC_MAX_GRID;
    cached.store(v);
  }
  return v;
}

/* Tuning knobs for the benches (pd_cuda_attn_set_cascade_split, pd_cuda_attn_set_prefill_order);
 * the defaults are what the daemon runs. */
static std::atomic<int> casc_min_split{CASC_MIN_SPLIT};
static std::atomic<int> prefill_longest_first{1};

extern "C" void pd_cuda_attn_set_cascade_split(int min_tokens) {
  casc_min_split.store(min_tokens >= TB_N ? min_tokens : CASC_MIN_SPLIT);
}

extern "C" void pd_cuda_attn_set_prefill_order(int longest_first) {
  prefill_longest_first.store(longest_first ? 1 : 0);
}

static void plan_decode(int64_t n_seqs, int n_kv, int gchunks, int64_t rest, int *n, int *len) {
  int64_t want = cdiv(rest, DEC_MIN_SPLIT);
  int64_t cap = decode_grid() / (n_seqs * n_kv * gchunks);
  if (cap < 1) cap = 1;
  int64_t ns = want < cap ? want : cap;
  if (ns < 1) ns = 1;
  int64_t ln = cdiv(cdiv(rest, ns), DEC_TILE) * DEC_TILE;
  *len = (int)ln;
  *n = (int)cdiv(rest, ln);
}

static void plan_tiles(int64_t blocks, int64_t range, int min_split, int *n, int *len) {
  int64_t ns = cdiv(TB_TARGET, blocks > 0 ? blocks : 1);
  int64_t most = cdiv(range, min_split);
  if (ns > most) ns = most;
  if (ns < 1) ns = 1;
  int64_t ln = cdiv(cdiv(range, ns), TB_N) * TB_N;
  *len = (int)ln;
  *n = (int)cdiv(range, ln);
}

static Plan make_plan(const pd_kv_layout *L, int n_heads, const pd_cuda_batch *b) {
  Plan p = {};
  const int n_kv = L->n_kv_heads, hd = L->head_dim;
  p.group = n_heads / n_kv;
  p.gchunks = (p.group + DEC_GROUP - 1) / DEC_GROUP;
  const int64_t n_seqs = b->n_seqs, n_rows = b->n_rows;
  if (b->max_new == 1) {
    p.run_decode = true;
    p.cascade = b->shared_blocks > 0;
    p.shared_pos = p.cascade ? b->shared_blocks * L->block_tokens : 0;
  } else {
    p.run_prefill = true;
    /* decode sequences in a mixed batch go to decode_split, unless there can be none */
    p.run_decode = n_seqs > 1 && n_rows != n_seqs * b->max_new;
  }
  if (p.run_decode) {
    const int64_t rest = (int64_t)b->max_ctx - p.shared_pos;
    plan_decode(n_seqs, n_kv, p.gchunks, rest, &p.dec_splits, &p.dec_len);
    p.lean = plan_lean(L, p.group, n_seqs, n_seqs * n_kv * p.gchunks, rest);
    if (p.lean.on) p.dec_splits = p.lean.parts, p.dec_len = 0;
    if (p.cascade) {
      p.casc_tiles = (int)cdiv(n_seqs * p.group, TB_M);
      plan_tiles((int64_t)p.casc_tiles * n_kv, p.shared_pos, casc_min_split.load(), &p.casc_splits,
                 &p.casc_len);
    }
    p.dec_total = p.casc_splits + p.dec_splits;
  }
  if (p.run_prefill) {
    int64_t a = n_seqs * cdiv((int64_t)b->max_new * p.group, TB_M);
    int64_t c = cdiv(n_rows * p.group, TB_M) + n_seqs;
    p.pf_tiles = (int)(a < c ? a : c);
    plan_tiles((int64_t)p.pf_tiles * n_kv, b->max_ctx, TB_MIN_SPLIT, &p.pf_splits, &p.pf_len);
  }
  size_t off = 0;
  if (p.run_decode) {
    size_t slots = (size_t)n_seqs * (size_t)n_heads * (size_t)p.dec_total;
    p.dec_acc = off, off = align256(off + slots * hd * sizeof(float));
    p.dec_ml = off, off = align256(off + slots * 2 * sizeof(float));
  }
  if (p.run_prefill && p.pf_splits > 1) {
    size_t slots = (size_t)n_rows * (size_t)n_heads * (size_t)p.pf_splits;
    p.pf_acc = off, off = align256(off + slots * hd * sizeof(float));
    p.pf_ml = off, off = align256(off + slots * 2 * sizeof(float));
  }
  p.bytes = off;
  return p;
}

/* Checks what the kernels rely on; 0 or PD_EINVAL with the reason in err. */
static int check_layout(const pd_kv_layout *L, int layer, int n_heads, char *err, size_t errlen) {
  if (L->dtype != PD_DTYPE_F32 && L->dtype != PD_DTYPE_F16 && L->dtype != PD_DTYPE_BF16 &&
      L->dtype != PD_DTYPE_FP8_E4M3)
    return bad(err, errlen, "unsupported KV dtype (f32, f16, bf16, fp8-e4m3)");
  if (L->head_dim != 64 && L->head_dim != 128)
    return bad(err, errlen, "unsupported head_dim (64 or 128)");
  if (L->n_kv_heads <= 0 || n_heads <= 0 || n_heads % L->n_kv_heads)
    return bad(err, errlen, "n_heads must be a positive multiple of n_kv_heads");
  if (log2_exact(L->block_tokens) < 0) return bad(err, errlen, "block_tokens not a power of two");
  if (pd_kv_block_bytes(L) % 16) /* the rows are read in 16-byte loads from each block */
    return bad(err, errlen,
               "a block's size is not a multiple of 16 bytes (block_tokens too small)");
  if (layer < 0 || layer >= L->n_layers) return bad(err, errlen, "layer out of range");
  return PD_OK;
}

static int check_batch(const pd_kv_layout *L, const pd_cuda_batch *b, char *err, size_t errlen) {
  if (b->n_seqs < 0 || b->n_rows < 0 || b->max_blocks <= 0 || b->n_seqs > 65535)
    return bad(err, errlen, "bad batch sizes (n_seqs 0 .. 65535, max_blocks > 0)");
  if (b->n_rows == 0) return PD_OK;
  if (b->max_new < 1 || b->max_ctx < b->max_new ||
      (int64_t)b->max_ctx > (int64_t)b->max_blocks * L->block_tokens)
    return bad(err, errlen, "bad batch bounds (1 <= max_new <= max_ctx <= max_blocks * B)");
  if (b->shared_blocks < 0 || b->shared_blocks > b->max_blocks ||
      (int64_t)b->shared_blocks * L->block_tokens >= b->max_ctx)
    return bad(err, errlen, "bad shared_blocks");
  if (!b->block_tables || !b->n_past || !b->n_new || !b->row_start || !b->row_seq)
    return bad(err, errlen, "missing batch array");
  return PD_OK;
}

extern "C" size_t pd_cuda_attn_batch_workspace_bytes(const pd_kv_layout *L, int n_heads,
                                                     const pd_cuda_batch *b) {
  if (!L || !b || L->n_kv_heads <= 0 || n_heads <= 0 || n_heads % L->n_kv_heads || b->n_rows <= 0 ||
      b->n_seqs <= 0 || b->max_new < 1 || b->max_ctx < 1 || log2_exact(L->block_tokens) < 0)
    return 0;
  return make_plan(L, n_heads, b).bytes;
}

extern "C" int pd_cuda_attn_decode_lean_blocks(const pd_kv_layout *L, int n_heads,
                                               const pd_cuda_batch *b) {
  if (!pd_cuda_attn_batch_workspace_bytes(L, n_heads, b)) return 0; /* the same checks */
  const Plan p = make_plan(L, n_heads, b);
  return p.run_decode && p.lean.on ? p.lean.grid : 0;
}

/* Opts a kernel in to its dynamic shared memory, once per device: K tells the instantiations
 * apart (one static per template instance). */
template <typename K> static cudaError_t smem_optin(const void *kernel, size_t bytes) {
  static std::atomic<unsigned long long> done{0};
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return e;
  const unsigned long long bit = dev < 64 ? 1ull << dev : 0;
  if (bit && (done.load() & bit)) return cudaSuccess;
  e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
  if (e == cudaSuccess && bit) done.fetch_or(bit);
  return e;
}

template <int HD, typename T, int MODE> struct SimtTag {};
template <int HD, typename T, int MODE> struct MmaTag {};

template <int HD, int MODE> struct F16Tag {};

/* -1: not decided yet (the environment decides: PD_CUDA_ATTN_SIMT=1 picks the SIMT kernel,
 * PD_CUDA_ATTN_F16=1 the f16 one); else a PD_CUDA_TILE_* value */
static std::atomic<int> tile_kind{-1};

extern "C" void pd_cuda_attn_set_tensor_cores(int on) {
  tile_kind.store(on ? PD_CUDA_TILE_TF32 : PD_CUDA_TILE_SIMT);
}

extern "C" void pd_cuda_attn_set_tile_kernel(int kind) {
  tile_kind.store(kind == PD_CUDA_TILE_SIMT || kind == PD_CUDA_TILE_F16 ? kind : PD_CUDA_TILE_TF32);
}

extern "C" int pd_cuda_env_flag(const char *name) {
  const char *e = getenv(name);
  return e && *e && strcmp(e, "0") != 0;
}

extern "C" int pd_cuda_attn_tile_kernel(void) {
  int v = tile_kind.load();
  if (v < 0) {
    v = pd_cuda_env_flag("PD_CUDA_ATTN_SIMT")  ? PD_CUDA_TILE_SIMT
        : pd_cuda_env_flag("PD_CUDA_ATTN_F16") ? PD_CUDA_TILE_F16
                                               : PD_CUDA_TILE_TF32;
    tile_kind.store(v);
  }
  return v;
}

extern "C" const char *pd_cuda_attn_tile_kernel_name(int kind) {
  return kind == PD_CUDA_TILE_SIMT ? "SIMT f32" : kind == PD_CUDA_TILE_F16 ? "f16" : "tf32 x2";
}

template <int HD, typename T, int MODE>
static cudaError_t launch_tile(dim3 grid, cudaStream_t st, const TileArgs &a) {
  cudaError_t e;
  const int kind = pd_cuda_attn_tile_kernel();
  if constexpr (std::is_same<T, __half>::value) {
    if (kind == PD_CUDA_TILE_F16) {
      e = smem_optin<F16Tag<HD, MODE>>((const void *)tile_f16<HD, MODE>, f16_smem_bytes<HD>());
      if (e != cudaSuccess) return e;
      return pd_cuda_launch(tile_f16<HD, MODE>, grid, MMA_THREADS, f16_smem_bytes<HD>(), st, a);
    }
  }
  if (kind != PD_CUDA_TILE_SIMT) { /* f16 asked for on another pool dtype: the tf32 kernel */
    e = smem_optin<MmaTag<HD, T, MODE>>((const void *)tile_mma<HD, T, MODE>, mma_smem_bytes<HD>());
    if (e != cudaSuccess) return e;
    return pd_cuda_launch(tile_mma<HD, T, MODE>, grid, MMA_THREADS, mma_smem_bytes<HD>(), st, a);
  }
  e = smem_optin<SimtTag<HD, T, MODE>>((const void *)tile_attn<HD, T, MODE>, tile_smem_bytes<HD>());
  if (e != cudaSuccess) return e;
  return pd_cuda_launch(tile_attn<HD, T, MODE>, grid, TB_THREADS, tile_smem_bytes<HD>(), st, a);
}

/* The launches of one batch for one head_dim and pool type. */
template <int HD, typename T>
static int run_attn(const pd_kv_layout *L, const Plan &p, const void *pool, int layer, int n_heads,
                    const float *q, float *out, const pd_cuda_batch *b, float scale, uint8_t *ws,
                    cudaStream_t st, char *err, size_t errlen) {
  const int shift = log2_exact(L->block_tokens);
  const size_t bb = pd_kv_block_bytes(L);
  const float scale2 = scale * LOG2E;
  cudaError_t e;
  if (p.run_decode) {
    float *acc = (float *)(ws + p.dec_acc), *ml = (float *)(ws + p.dec_ml);
    if (p.cascade) {
      TileArgs t = {};
      t.pool = (const uint8_t *)pool, t.block_bytes = bb, t.block_shift = shift;
      t.n_kv = L->n_kv_heads, t.layer = layer, t.group = p.group, t.n_heads = n_heads;
      t.max_blocks = b->max_blocks, t.n_seqs = b->n_seqs, t.q = q, t.out = out;
      t.tables = b->block_tables, t.n_past = b->n_past, t.n_new = b->n_new;
      t.row_start = b->row_start, t.kv_end = p.shared_pos, t.split_len = p.casc_len;
      t.direct = 0, t.split_base = 0, t.ws_splits = p.dec_total, t.scale2 = scale2;
      t.ws_acc = acc, t.ws_ml = ml;
      e = launch_tile<HD, T, MODE_CASCADE>(dim3(p.casc_tiles, L->n_kv_heads, p.casc_splits), st, t);
      if (e != cudaSuccess)
        return pd_cuda_fail(e, err, errlen, "launching cascade prefix attention");
    }
    DecArgs d = {};
    d.pool = (const uint8_t *)pool, d.block_bytes = bb, d.block_shift = shift;
    d.n_kv = L->n_kv_heads, d.layer = layer, d.group = p.group, d.n_heads = n_heads;
    d.max_blocks = b->max_blocks, d.q = q, d.tables = b->block_tables, d.ctx_lens = NULL;
    d.n_past = b->n_past, d.n_new = b->n_new, d.row_start = b->row_start;
    d.kv_start = p.shared_pos, d.split_len = p.dec_len, d.split_base = p.casc_splits;
    d.ws_splits = p.dec_total, d.scale2 = scale2, d.ws_acc = acc, d.ws_ml = ml;
    bool merged_in_cluster = false;
    if (p.lean.on) {
      e = launch_decode_lean<HD, T>(st, d, b->n_seqs, p.lean);
    } else {
      e = launch_decode<HD, T>(dim3(p.dec_splits, L->n_kv_heads * p.gchunks, b->n_seqs), st, d,
                               decode_in_cluster(p.dec_splits) ? out : NULL, &merged_in_cluster);
    }
    if (e != cudaSuccess) return pd_cuda_fail(e, err, errlen, "launching decode attention");
    if (!merged_in_cluster) { /* else block 0 of each cluster has merged */
      MergeSeqArgs m = {n_heads, p.dec_total, NULL, b->n_new, b->row_start, acc, ml, out};
      e = pd_cuda_launch(merge_seq<HD>, dim3(n_heads, b->n_seqs), HD, 0, st, m);
      if (e != cudaSuccess) return pd_cuda_fail(e, err, errlen, "launching decode merge");
    }
  }
  if (p.run_prefill) {
    const bool direct = p.pf_splits == 1;
    float *acc = direct ? NULL : (float *)(ws + p.pf_acc),
          *ml = direct ? NULL : (float *)(ws + p.pf_ml);
    TileArgs t = {};
    t.pool = (const uint8_t *)pool, t.block_bytes = bb, t.block_shift = shift;
    t.n_kv = L->n_kv_heads, t.layer = layer, t.group = p.group, t.n_heads = n_heads;
    t.max_blocks = b->max_blocks, t.n_seqs = b->n_seqs, t.q = q, t.out = out;
    t.tables = b->block_tables, t.n_past = b->n_past, t.n_new = b->n_new;
    t.row_start = b->row_start, t.kv_end = 0, t.split_len = p.pf_len;
    t.direct = direct, t.split_base = 0, t.ws_splits = p.pf_splits, t.scale2 = scale2;
    t.ws_acc = acc, t.ws_ml = ml, t.longest_first = prefill_longest_first.load();
    e = launch_tile<HD, T, MODE_PREFILL>(dim3(p.pf_tiles, L->n_kv_heads, p.pf_splits), st, t);
    if (e != cudaSuccess) return pd_cuda_fail(e, err, errlen, "launching prefill attention");
    if (!direct) {
      MergeRowArgs m = {n_heads,      p.pf_splits, p.pf_len, b->n_past, b->n_new,
                        b->row_start, b->row_seq,  acc,      ml,        out};
      e = pd_cuda_launch(merge_rows<HD>, dim3(b->n_rows, n_heads), HD, 0, st, m);
      if (e != cudaSuccess) return pd_cuda_fail(e, err, errlen, "launching prefill merge");
    }
  }
  return PD_OK;
}

extern "C" int pd_cuda_attn(const pd_kv_layout *L, const void *pool, int layer, int n_heads,
                            const float *q, float *out, const pd_cuda_batch *b, float scale,
                            void *workspace, size_t workspace_bytes, void *stream, char *err,
                            size_t errlen) {
  int rc = check_layout(L, layer, n_heads, err, errlen);
  if (rc) return rc;
  if ((rc = check_batch(L, b, err, errlen))) return rc;
  if (b->n_rows == 0 || b->n_seqs == 0) return PD_OK;
  if (!pool || !q || !out || ((uintptr_t)pool | (uintptr_t)q | (uintptr_t)out) & 15)
    return bad(err, errlen, "pool, q and out must be 16-byte aligned device pointers");
  Plan p = make_plan(L, n_heads, b);
  if (p.bytes && (!workspace || workspace_bytes < p.bytes || ((uintptr_t)workspace & 15)))
    return bad(err, errlen,
               "workspace missing, misaligned or smaller than "
               "pd_cuda_attn_batch_workspace_bytes");
  uint8_t *ws = (uint8_t *)workspace;
  cudaStream_t st = (cudaStream_t)stream;
  switch (L->dtype) {
  case PD_DTYPE_F32:
    return L->head_dim == 64 ? run_attn<64, float>(L, p, pool, layer, n_heads, q, out, b, scale, ws,
                                                   st, err, errlen)
                             : run_attn<128, float>(L, p, pool, layer, n_heads, q, out, b, scale,
                                                    ws, st, err, errlen);
  case PD_DTYPE_F16:
    return L->head_dim == 64 ? run_attn<64, __half>(L, p, pool, layer, n_heads, q, out, b, scale,
                                                    ws, st, err, errlen)
                             : run_attn<128, __half>(L, p, pool, layer, n_heads, q, out, b, scale,
                                                     ws, st, err, errlen);
  case PD_DTYPE_BF16:
    return L->head_dim == 64 ? run_attn<64, bf16_t>(L, p, pool, layer, n_heads, q, out, b, scale,
                                                    ws, st, err, errlen)
                             : run_attn<128, bf16_t>(L, p, pool, layer, n_heads, q, out, b, scale,
                                                     ws, st, err, errlen);
  default:
    return L->head_dim == 64 ? run_attn<64, fp8_t>(L, p, pool, layer, n_heads, q, out, b, scale, ws,
                                                   st, err, errlen)
                             : run_attn<128, fp8_t>(L, p, pool, layer, n_heads, q, out, b, scale,
                                                    ws, st, err, errlen);
  }
}

/* ---- the legacy decode entry point ------------------------------------------------------------ */

extern "C" size_t pd_cuda_attn_workspace_bytes(int n_seqs, int n_heads, int head_dim, int max_ctx) {
  /* an upper bound of what the capped split count of plan_decode needs, and of a lean plan's
   * parts (runs of at least DEC_MIN_SPLIT positions meet at most this many of a pair's) */
  size_t n_splits = (size_t)cdiv(max_ctx > 0 ? max_ctx : 1, DEC_MIN_SPLIT) + 1;
  return (size_t)n_seqs * (size_t)n_heads * n_splits * ((size_t)head_dim + 2) * sizeof(float);
}

template <int HD, typename T>
static int run_decode_legacy(const pd_kv_layout *L, const void *pool, int layer, int n_heads,
                             const float *q, float *out, const int32_t *tables, int max_blocks,
                             const int32_t *ctx_lens, int n_seqs, int max_ctx, float scale,
                             float *ws, cudaStream_t st, char *err, size_t errlen) {
  const int group = n_heads / L->n_kv_heads, gchunks = (group + DEC_GROUP - 1) / DEC_GROUP;
  int n_splits, len;
  plan_decode(n_seqs, L->n_kv_heads, gchunks, max_ctx, &n_splits, &len);
  /* lean, where it fits: its parts are within the workspace bound, ceil(max_ctx / 128) + 1 */
  LeanPlan lean = plan_lean(L, group, n_seqs, (int64_t)n_seqs * L->n_kv_heads * gchunks, max_ctx);
  lean.on = lean.on && lean.parts <= cdiv(max_ctx, DEC_MIN_SPLIT) + 1;
  if (lean.on) n_splits = lean.parts;
  float *acc = ws, *ml = ws + (size_t)n_seqs * n_heads * n_splits * HD;
  DecArgs d = {};
  d.pool = (const uint8_t *)pool, d.block_bytes = pd_kv_block_bytes(L);
  d.block_shift = log2_exact(L->block_tokens), d.n_kv = L->n_kv_heads, d.layer = layer;
  d.group = group, d.n_heads = n_heads, d.max_blocks = max_blocks, d.q = q, d.tables = tables;
  d.ctx_lens = ctx_lens, d.kv_start = 0, d.split_len = len, d.split_base = 0;
  d.ws_splits = n_splits, d.scale2 = scale * LOG2E, d.ws_acc = acc, d.ws_ml = ml;
  bool merged_in_cluster = false;
  cudaError_t e;
  if (lean.on) {
    e = launch_decode_lean<HD, T>(st, d, n_seqs, lean);
  } else {
    e = launch_decode<HD, T>(dim3(n_splits, L->n_kv_heads * gchunks, n_seqs), st, d,
                             decode_in_cluster(n_splits) ? out : NULL, &merged_in_cluster);
  }
  if (e != cudaSuccess) return pd_cuda_fail(e, err, errlen, "launching decode attention");
  if (merged_in_cluster) return PD_OK;
  MergeSeqArgs m = {n_heads, n_splits, ctx_lens, NULL, NULL, acc, ml, out};
  e = pd_cuda_launch(merge_seq<HD>, dim3(n_heads, n_seqs), HD, 0, st, m);
  return e == cudaSuccess ? PD_OK : pd_cuda_fail(e, err, errlen, "launching decode merge");
}

extern "C" int pd_cuda_attn_decode(const pd_kv_layout *L, const void *pool, int layer, int n_heads,
                                   const float *q, float *out, const int32_t *block_tables,
                                   int max_blocks, const int32_t *ctx_lens, int n_seqs, int max_ctx,
                                   float scale, void *workspace, void *stream, char *err,
                                   size_t errlen) {
  int rc = check_layout(L, layer, n_heads, err, errlen);
  if (rc) return rc;
  if (n_seqs <= 0 || n_seqs > 65535 || max_ctx <= 0 ||
      (int64_t)max_ctx > (int64_t)max_blocks * L->block_tokens)
    return bad(err, errlen, "bad sizes (n_seqs, max_ctx, max_blocks)");
  if (!pool || !q || !out || !workspace || ((uintptr_t)pool & 15))
    return bad(err, errlen, "missing or misaligned pointer");
  cudaStream_t st = (cudaStream_t)stream;
  float *ws = (float *)workspace;
#define PD_LEGACY(HD, T)                                                                           \
  run_decode_legacy<HD, T>(L, pool, layer, n_heads, q, out, block_tables, max_blocks, ctx_lens,    \
                           n_seqs, max_ctx, scale, ws, st, err, errlen)
  switch (L->dtype) {
  case PD_DTYPE_F32: return L->head_dim == 64 ? PD_LEGACY(64, float) : PD_LEGACY(128, float);
  case PD_DTYPE_F16: return L->head_dim == 64 ? PD_LEGACY(64, __half) : PD_LEGACY(128, __half);
  case PD_DTYPE_BF16: return L->head_dim == 64 ? PD_LEGACY(64, bf16_t) : PD_LEGACY(128, bf16_t);
  default: return L->head_dim == 64 ? PD_LEGACY(64, fp8_t) : PD_LEGACY(128, fp8_t);
  }
#undef PD_LEGACY
}

/* ---- kv store ---------------------------------------------------------------------------------- */

extern "C" int pd_cuda_kv_store(const pd_kv_layout *L, void *pool, int layer,
                                const pd_cuda_batch *b, const float *k, const float *v,
                                void *stream, char *err, size_t errlen) {
  const int shift = log2_exact(L->block_tokens);
  if (L->dtype != PD_DTYPE_F32 && L->dtype != PD_DTYPE_F16 && L->dtype != PD_DTYPE_BF16 &&
      L->dtype != PD_DTYPE_FP8_E4M3)
    return bad(err, errlen, "kv store: unsupported KV dtype (f32, f16, bf16, fp8-e4m3)");
  if (shift < 0 || L->n_kv_heads <= 0 || L->head_dim <= 0 || layer < 0 || layer >= L->n_layers)
    return bad(err, errlen, "kv store: bad layout or layer");
  int rc = check_batch(L, b, err, errlen);
  if (rc) return rc;
  if (b->n_rows == 0 || b->n_seqs == 0) return PD_OK;
  if (!pool || !k || !v) return bad(err, errlen, "kv store: missing pointer");
  StoreArgs a = {};
  a.pool = (uint8_t *)pool, a.block_bytes = pd_kv_block_bytes(L), a.block_shift = shift;
  a.n_kv = L->n_kv_heads, a.hd = L->head_dim, a.layer = layer, a.max_blocks = b->max_blocks;
  a.tables = b->block_tables, a.n_past = b->n_past, a.row_start = b->row_start;
  a.row_seq = b->row_seq, a.k = k, a.v = v;
  auto kernel = L->dtype == PD_DTYPE_F32    ? kv_store<float>
                : L->dtype == PD_DTYPE_F16  ? kv_store<__half>
                : L->dtype == PD_DTYPE_BF16 ? kv_store<bf16_t>
                                            : kv_store_fp8;
  cudaError_t e = pd_cuda_launch(kernel, dim3(b->n_rows), 256, 0, (cudaStream_t)stream, a);
  return e == cudaSuccess ? PD_OK : pd_cuda_fail(e, err, errlen, "launching kv store");
}
