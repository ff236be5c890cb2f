/*
 * pd_cuda_blocks.cu -- whole-block copies inside the KV pool and between the pool and host slots
 * (pd_cuda_batch.h): copy-on-write, zeroing, demotion to host RAM and restore from it.
 *
 * A block is one contiguous extent of block_bytes, so a transfer is a list of (dst, src) extents.
 * Every call first merges runs -- entries whose source and destination ids both continue the
 * previous entry's -- into one extent each, then moves the extents:
 *
 *   inside the pool (copy, zero): one cudaMemcpyAsync / cudaMemsetAsync per run when there are
 *     few runs; past RUNS_FOR_KERNEL runs, a copy kernel that takes up to LIST_MAX (dst, src)
 *     block pairs by value per launch (no upload of the list, so a launch can be captured in a
 *     graph): grid (chunks of a block, pairs), 256 threads, 16-byte loads and stores.
 *   pool <-> host, by mode (pd_cuda_blocks_set_xfer_mode, for the bench and the tests):
 *     MEMCPY: one cudaMemcpyAsync per run. The copies queue back to back on the stream, so the
 *       copy engine is not idle between them as it is with one synchronous copy at a time.
 *     BATCH: one cudaMemcpyBatchAsync (CUDA >= 12.8) over all runs; falls back to MEMCPY on the
 *       legacy NULL stream or when the driver refuses it.
 *     KERNEL: for pinned host memory only (falls back to MEMCPY otherwise): the copy kernel
 *       reads or writes the mapped host slots directly over PCIe (zero copy), all blocks in one
 *       launch. It occupies SMs while it runs.
 *     AUTO (default): BATCH where it applies, else MEMCPY. The bench (attn_bench) times every
 *       mode beside a pinned 64 MiB cudaMemcpy; the default should follow its figures.
 *
 * All calls only enqueue work on the stream; the id arrays are read before the call returns.
 * Host and pool pointers must stay valid until the stream reaches the copies.
 */
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <atomic>

#include "pd_cuda_attention.h"
#include "pd_cuda_batch.h"
#include "pd_cuda_err.h"
#include "pd_cuda_launch.h"
#include "pd_err.h"

#define LIST_MAX        240 /* pairs per kernel launch: 2 * 240 * 8 bytes + 16 < 4 KiB of params */
#define RUNS_FOR_KERNEL 8   /* pool-internal copies with more runs than this use the kernel */
#define COPY_THREADS    256
#define COPY_CHUNK      ((size_t)COPY_THREADS * 16 * 8) /* bytes per thread block: 8 uint4 each */

static std::atomic<int> xfer_mode{PD_CUDA_XFER_AUTO};

extern "C" void pd_cuda_blocks_set_xfer_mode(int mode) {
  xfer_mode.store(mode >= PD_CUDA_XFER_AUTO && mode <= PD_CUDA_XFER_KERNEL ? mode
                                                                           : PD_CUDA_XFER_AUTO);
}

static int bad(char *err, size_t errlen, const char *why) {
  if (err && errlen) snprintf(err, errlen, "cuda blocks: %s", why);
  return PD_EINVAL;
}

/* ---- the copy kernel ----------------------------------------------------------------------- */

/* Pair i: dst + dst_id[i] * block_bytes <- src + src_id[i] * block_bytes (src NULL: zeros). */
struct CopyList {
  uint8_t *dst;
  const uint8_t *src;
  size_t block_bytes; /* a multiple of 16; dst and src 16-byte aligned */
  int64_t dst_id[LIST_MAX], src_id[LIST_MAX];
};

__global__ void __launch_bounds__(COPY_THREADS) copy_blocks(const CopyList l) {
  pdl_wait();
  pdl_trigger();
  const int i = blockIdx.y;
  const size_t begin = (size_t)blockIdx.x * COPY_CHUNK;
  const size_t end = begin + COPY_CHUNK < l.block_bytes ? begin + COPY_CHUNK : l.block_bytes;
  uint4 *d = (uint4 *)(l.dst + (size_t)l.dst_id[i] * l.block_bytes);
  const uint4 *s = l.src ? (const uint4 *)(l.src + (size_t)l.src_id[i] * l.block_bytes) : NULL;
  for (size_t o = begin / 16 + threadIdx.x; o < end / 16; o += COPY_THREADS)
    d[o] = s ? s[o] : make_uint4(0, 0, 0, 0);
}

/* Launches the copy kernel over n pairs, LIST_MAX per launch. */
static int copy_kernel(uint8_t *dst, const uint8_t *src, size_t bb, const int32_t *dst_ids,
                       const int32_t *src_ids, int n, cudaStream_t st, char *err, size_t errlen) {
  CopyList l;
  l.dst = dst, l.src = src, l.block_bytes = bb;
  const size_t chunks = (bb + COPY_CHUNK - 1) / COPY_CHUNK;
  if (chunks > 0x7fffffff) return bad(err, errlen, "block too large for the copy kernel");
  for (int i0 = 0; i0 < n; i0 += LIST_MAX) {
    const int m = n - i0 < LIST_MAX ? n - i0 : LIST_MAX;
    for (int j = 0; j < m; j++) {
      l.dst_id[j] = dst_ids[i0 + j];
      l.src_id[j] = src_ids ? src_ids[i0 + j] : 0;
    }
    cudaError_t e =
        pd_cuda_launch(copy_blocks, dim3((unsigned)chunks, (unsigned)m), COPY_THREADS, 0, st, l);
    if (e != cudaSuccess) return pd_cuda_fail(e, err, errlen, "launching block copy kernel");
  }
  return PD_OK;
}

/* ---- runs --------------------------------------------------------------------------------- */

/* Calls fn(dst_first, src_first, count) for each maximal run i .. i + count - 1 in which both
 * dst[i + k] == dst[i] + k and src[i + k] == src[i] + k (src NULL: dst alone). Stops at the
 * first nonzero return. */
template <typename F> static int for_runs(const int32_t *dst, const int32_t *src, int n, F fn) {
  int i = 0;
  while (i < n) {
    int j = i + 1;
    while (j < n && dst[j] == dst[j - 1] + 1 && (!src || src[j] == src[j - 1] + 1)) j++;
    int rc = fn(dst[i], src ? src[i] : 0, j - i);
    if (rc) return rc;
    i = j;
  }
  return PD_OK;
}

static int count_runs(const int32_t *dst, const int32_t *src, int n) {
  int runs = 0;
  for_runs(dst, src, n, [&](int32_t, int32_t, int) {
    runs++;
    return 0;
  });
  return runs;
}

static int check_ids(const int32_t *a, const int32_t *b, int n, size_t bb, char *err,
                     size_t errlen) {
  if (n < 0 || bb == 0) return bad(err, errlen, "bad count or block size");
  for (int i = 0; i < n; i++)
    if (a[i] < 0 || (b && b[i] < 0)) return bad(err, errlen, "negative block id");
  return PD_OK;
}

/* ---- inside the pool ------------------------------------------------------------------------ */

extern "C" int pd_cuda_block_copy(void *pool, size_t block_bytes, const int32_t *src,
                                  const int32_t *dst, int n, void *stream, char *err,
                                  size_t errlen) {
  if (n == 0) return PD_OK;
  if (!pool || !src || !dst) return bad(err, errlen, "missing pointer");
  int rc = check_ids(dst, src, n, block_bytes, err, errlen);
  if (rc) return rc;
  cudaStream_t st = (cudaStream_t)stream;
  uint8_t *p = (uint8_t *)pool;
  if (block_bytes % 16 == 0 && ((uintptr_t)pool & 15) == 0 &&
      count_runs(dst, src, n) > RUNS_FOR_KERNEL)
    return copy_kernel(p, p, block_bytes, dst, src, n, st, err, errlen);
  return for_runs(dst, src, n, [&](int32_t d, int32_t s, int count) {
    cudaError_t e = cudaMemcpyAsync(p + (size_t)d * block_bytes, p + (size_t)s * block_bytes,
                                    (size_t)count * block_bytes, cudaMemcpyDeviceToDevice, st);
    return e == cudaSuccess ? PD_OK : pd_cuda_fail(e, err, errlen, "block copy");
  });
}

extern "C" int pd_cuda_block_zero(void *pool, size_t block_bytes, const int32_t *ids, int n,
                                  void *stream, char *err, size_t errlen) {
  if (n == 0) return PD_OK;
  if (!pool || !ids) return bad(err, errlen, "missing pointer");
  int rc = check_ids(ids, NULL, n, block_bytes, err, errlen);
  if (rc) return rc;
  cudaStream_t st = (cudaStream_t)stream;
  uint8_t *p = (uint8_t *)pool;
  if (block_bytes % 16 == 0 && ((uintptr_t)pool & 15) == 0 &&
      count_runs(ids, NULL, n) > RUNS_FOR_KERNEL)
    return copy_kernel(p, NULL, block_bytes, ids, NULL, n, st, err, errlen);
  return for_runs(ids, NULL, n, [&](int32_t d, int32_t, int count) {
    cudaError_t e =
        cudaMemsetAsync(p + (size_t)d * block_bytes, 0, (size_t)count * block_bytes, st);
    return e == cudaSuccess ? PD_OK : pd_cuda_fail(e, err, errlen, "block zero");
  });
}

/* ---- pool <-> host --------------------------------------------------------------------------- */

/* The device address of pinned host memory, or NULL for pageable memory. */
static void *mapped_host(const void *host) {
  cudaPointerAttributes a;
  if (cudaPointerGetAttributes(&a, host) != cudaSuccess) {
    cudaGetLastError(); /* not an error to report: pageable memory */
    return NULL;
  }
  return a.type == cudaMemoryTypeHost ? a.devicePointer : NULL;
}

/* to_dev: pool block ids[i] <- host slot host_ids[i]; else the reverse. */
static int xfer(uint8_t *pool, size_t bb, const int32_t *ids, int n, uint8_t *host,
                const int32_t *host_ids, bool to_dev, cudaStream_t st, char *err, size_t errlen) {
  const int mode = xfer_mode.load();
  const cudaMemcpyKind kind = to_dev ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost;
  if (mode == PD_CUDA_XFER_KERNEL && bb % 16 == 0 && ((uintptr_t)pool & 15) == 0 &&
      ((uintptr_t)host & 15) == 0) {
    uint8_t *mapped = (uint8_t *)mapped_host(host);
    if (mapped && ((uintptr_t)mapped & 15) == 0)
      return to_dev ? copy_kernel(pool, mapped, bb, ids, host_ids, n, st, err, errlen)
                    : copy_kernel(mapped, pool, bb, host_ids, ids, n, st, err, errlen);
  }
#if CUDART_VERSION >= 13000 /* the signature changed in 13.0 (12.8 and 12.9 had a failIdx) */
  if ((mode == PD_CUDA_XFER_AUTO || mode == PD_CUDA_XFER_BATCH) && st != NULL) {
    const int runs = count_runs(ids, host_ids, n);
    void **dsts = (void **)malloc(sizeof(void *) * (size_t)runs);
    const void **srcs = (const void **)malloc(sizeof(void *) * (size_t)runs);
    size_t *sizes = (size_t *)malloc(sizeof(size_t) * (size_t)runs);
    if (!dsts || !srcs || !sizes) {
      free(dsts), free(srcs), free(sizes);
      return PD_ENOMEM;
    }
    int k = 0;
    for_runs(ids, host_ids, n, [&](int32_t d, int32_t h, int count) {
      uint8_t *dev = pool + (size_t)d * bb, *hp = host + (size_t)h * bb;
      dsts[k] = to_dev ? (void *)dev : (void *)hp;
      srcs[k] = to_dev ? (const void *)hp : (const void *)dev;
      sizes[k] = (size_t)count * bb;
      k++;
      return 0;
    });
    cudaMemcpyAttributes attr = {};
    attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
    size_t attr_idx = 0;
    cudaError_t e = cudaMemcpyBatchAsync(dsts, srcs, sizes, (size_t)runs, &attr, &attr_idx, 1, st);
    free(dsts), free(srcs), free(sizes);
    if (e == cudaSuccess) return PD_OK;
    /* refused (old driver, unsupported memory): clear the error, copy one run at a time */
    cudaGetLastError();
  }
#endif
  return for_runs(ids, host_ids, n, [&](int32_t d, int32_t h, int count) {
    uint8_t *dev = pool + (size_t)d * bb, *hp = host + (size_t)h * bb;
    cudaError_t e = cudaMemcpyAsync(to_dev ? (void *)dev : (void *)hp,
                                    to_dev ? (const void *)hp : (const void *)dev,
                                    (size_t)count * bb, kind, st);
    return e == cudaSuccess
               ? PD_OK
               : pd_cuda_fail(e, err, errlen, to_dev ? "block restore" : "block spill");
  });
}

extern "C" int pd_cuda_blocks_to_host(const void *pool, size_t block_bytes, const int32_t *ids,
                                      int n, void *host, const int32_t *host_ids, void *stream,
                                      char *err, size_t errlen) {
  if (n == 0) return PD_OK;
  if (!pool || !ids || !host || !host_ids) return bad(err, errlen, "missing pointer");
  int rc = check_ids(ids, host_ids, n, block_bytes, err, errlen);
  if (rc) return rc;
  return xfer((uint8_t *)pool, block_bytes, ids, n, (uint8_t *)host, host_ids, false,
              (cudaStream_t)stream, err, errlen);
}

extern "C" int pd_cuda_blocks_from_host(void *pool, size_t block_bytes, const int32_t *ids, int n,
                                        const void *host, const int32_t *host_ids, void *stream,
                                        char *err, size_t errlen) {
  if (n == 0) return PD_OK;
  if (!pool || !ids || !host || !host_ids) return bad(err, errlen, "missing pointer");
  int rc = check_ids(ids, host_ids, n, block_bytes, err, errlen);
  if (rc) return rc;
  return xfer((uint8_t *)pool, block_bytes, ids, n, (uint8_t *)host, host_ids, true,
              (cudaStream_t)stream, err, errlen);
}
