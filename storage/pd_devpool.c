/*
 * pd_devpool.c -- see pd_devpool.h.
 *
 * CPU: calloc'd memory, page-aligned so the disk tier reads into it and writes from it with
 * O_DIRECT, and memcpy. CUDA (built when PD_WITH_CUDA): cudaMalloc'd memory, the
 * engine's copies queued on its stream, the worker's transfers batched by
 * pd_cuda_blocks_to_host / pd_cuda_blocks_from_host (kernels/cuda/pd_cuda_batch.h) on a stream
 * of its own and waited for.
 */
#include "pd_devpool.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_blockfile.h"
#include "pd_err.h"
#include "pd_log.h"

#ifdef PD_WITH_CUDA
#include <cuda_runtime.h>

#include "pd_cuda_attention.h"
#include "pd_cuda_batch.h"
#include "pd_cuda_err.h"
#endif

/* calloc'd memory whose start is page-aligned; the pointer calloc returned is kept just below
 * it. Zeroed lazily, as calloc's large allocations are. NULL on overflow or out of memory. */
static void *calloc_page_aligned(size_t n, size_t size) {
  const size_t page = PD_BLOCKFILE_PAGE; /* what O_DIRECT transfers must be aligned to */
  if (size && n > (SIZE_MAX - page - sizeof(void *)) / size) return NULL;
  uint8_t *raw = calloc(1, n * size + page + sizeof(void *));
  if (!raw) return NULL;
  uintptr_t at = ((uintptr_t)raw + sizeof(void *) + page - 1) & ~(uintptr_t)(page - 1);
  ((void **)at)[-1] = raw;
  return (void *)at;
}

static void free_page_aligned(void *ptr) {
  if (ptr) free(((void **)ptr)[-1]);
}

int pd_devpool_cuda_available(void) {
#ifdef PD_WITH_CUDA
  return pd_cuda_device_count() > 0;
#else
  return 0;
#endif
}

const char *pd_devpool_cuda_unavailable_reason(void) {
#ifdef PD_WITH_CUDA
  return pd_cuda_no_device_reason();
#else
  return "this build has no CUDA backend";
#endif
}

int pd_devpool_create(pd_devpool *p, enum pd_devpool_kind kind, uint32_t n_blocks,
                      size_t block_bytes, char *err, size_t errlen) {
  memset(p, 0, sizeof *p);
  p->kind = kind;
  p->block_bytes = block_bytes;
  p->n_blocks = n_blocks;
  size_t bytes = (size_t)n_blocks * block_bytes;
  if (kind == PD_DEVPOOL_CPU) {
    p->base = calloc_page_aligned(n_blocks ? n_blocks : 1, block_bytes ? block_bytes : 1);
    if (!p->base) {
      snprintf(err, errlen, "cannot allocate the KV pool: %zu bytes of host memory", bytes);
      return PD_ENOMEM;
    }
    return PD_OK;
  }
#ifdef PD_WITH_CUDA
  cudaError_t e;
  if ((e = cudaGetDevice(&p->device)) != cudaSuccess)
    return pd_cuda_fail(e, err, errlen, "no usable GPU");
  if ((e = cudaMalloc(&p->base, bytes ? bytes : 1)) != cudaSuccess) {
    p->base = NULL;
    int rc = pd_cuda_rc(e);
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    snprintf(err, errlen,
             "cannot allocate the KV pool on the GPU: %zu bytes asked, %zu of %zu free; lower "
             "--kv-cache-mb",
             bytes, free_b, total_b);
    cudaGetLastError();
    return rc;
  }
  cudaStream_t s1 = NULL, s2 = NULL;
  /* the memset runs on the legacy default stream, which the pool's non-blocking streams do not
   * wait for: synchronized here, before any of them writes a block */
  if ((e = cudaMemset(p->base, 0, bytes)) != cudaSuccess ||
      (e = cudaDeviceSynchronize()) != cudaSuccess ||
      (e = cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking)) != cudaSuccess ||
      (e = cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking)) != cudaSuccess) {
    int rc = pd_cuda_fail(e, err, errlen, "setting up the KV pool");
    if (s1) cudaStreamDestroy(s1);
    cudaFree(p->base);
    p->base = NULL;
    return rc;
  }
  p->stream = s1;
  p->xfer_stream = s2;
  return PD_OK;
#else
  snprintf(err, errlen, "this prefixd was built without the CUDA backend");
  return PD_EUNSUPPORTED;
#endif
}

void pd_devpool_destroy(pd_devpool *p) {
  if (p->kind == PD_DEVPOOL_CPU) {
    free_page_aligned(p->base);
  } else {
#ifdef PD_WITH_CUDA
    if (p->stream) cudaStreamSynchronize((cudaStream_t)p->stream);
    if (p->xfer_stream) cudaStreamSynchronize((cudaStream_t)p->xfer_stream);
    if (p->stream) cudaStreamDestroy((cudaStream_t)p->stream);
    if (p->xfer_stream) cudaStreamDestroy((cudaStream_t)p->xfer_stream);
    cudaFree(p->base);
#endif
  }
  memset(p, 0, sizeof *p);
}

void pd_devpool_describe(const pd_devpool *p, char *buf, size_t len) {
  snprintf(buf, len, "cpu");
#ifdef PD_WITH_CUDA
  struct cudaDeviceProp prop;
  if (p->kind == PD_DEVPOOL_CUDA && cudaGetDeviceProperties(&prop, p->device) == cudaSuccess)
    snprintf(buf, len, "cuda:%d %s (%.1f GiB)", p->device, prop.name,
             (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
#endif
}

void *pd_devpool_block(const pd_devpool *p, uint32_t slot) {
  return (char *)p->base + (size_t)slot * p->block_bytes;
}

int pd_devpool_zero(pd_devpool *p, uint32_t slot) {
  if (p->kind == PD_DEVPOOL_CPU) {
    memset(pd_devpool_block(p, slot), 0, p->block_bytes);
    return PD_OK;
  }
#ifdef PD_WITH_CUDA
  /* waited for: the forward pass runs on a stream of its own and must see the bytes */
  cudaStream_t s = (cudaStream_t)p->stream;
  if (cudaMemsetAsync(pd_devpool_block(p, slot), 0, p->block_bytes, s) != cudaSuccess)
    return PD_EDEVICE;
  return cudaStreamSynchronize(s) == cudaSuccess ? PD_OK : PD_EDEVICE;
#else
  return PD_EUNSUPPORTED;
#endif
}

int pd_devpool_copy(pd_devpool *p, uint32_t dst, uint32_t src) {
  if (p->kind == PD_DEVPOOL_CPU) {
    memcpy(pd_devpool_block(p, dst), pd_devpool_block(p, src), p->block_bytes);
    return PD_OK;
  }
#ifdef PD_WITH_CUDA
  cudaStream_t s = (cudaStream_t)p->stream;
  if (cudaMemcpyAsync(pd_devpool_block(p, dst), pd_devpool_block(p, src), p->block_bytes,
                      cudaMemcpyDeviceToDevice, s) != cudaSuccess)
    return PD_EDEVICE;
  return cudaStreamSynchronize(s) == cudaSuccess ? PD_OK : PD_EDEVICE;
#else
  return PD_EUNSUPPORTED;
#endif
}

#ifdef PD_WITH_CUDA
/* Waits for a batched transfer that queued with rc; a failure is logged with its reason (the
 * tier manager sees only the code: PD_ENOMEM for memory, PD_EDEVICE otherwise). */
static int finish_transfer(pd_devpool *p, int rc, char *msg, size_t msglen, const char *what) {
  if (rc == PD_OK) {
    cudaError_t e = cudaStreamSynchronize((cudaStream_t)p->xfer_stream);
    if (e != cudaSuccess) rc = pd_cuda_fail(e, msg, msglen, "waiting for a block transfer");
  }
  if (rc != PD_OK)
    pd_log(PD_LOG_ERROR, "block transfer failed", "direction=\"%s\" error=\"%s\"", what,
           msg[0] ? msg : pd_strerror(rc));
  return rc;
}
#endif

int pd_devpool_download(pd_devpool *p, const int32_t *slots, uint32_t n, void *host,
                        const int32_t *host_slots) {
  if (p->kind == PD_DEVPOOL_CPU) {
    for (uint32_t i = 0; i < n; i++)
      memcpy((char *)host + (size_t)host_slots[i] * p->block_bytes,
             pd_devpool_block(p, (uint32_t)slots[i]), p->block_bytes);
    return PD_OK;
  }
#ifdef PD_WITH_CUDA
  char msg[160] = "";
  cudaSetDevice(p->device); /* the worker thread's first CUDA call picks the device */
  int rc = pd_cuda_blocks_to_host(p->base, p->block_bytes, slots, (int)n, host, host_slots,
                                  p->xfer_stream, msg, sizeof msg);
  return finish_transfer(p, rc, msg, sizeof msg, "device -> host");
#else
  return PD_EUNSUPPORTED;
#endif
}

int pd_devpool_upload(pd_devpool *p, const int32_t *slots, uint32_t n, const void *host,
                      const int32_t *host_slots) {
  if (p->kind == PD_DEVPOOL_CPU) {
    for (uint32_t i = 0; i < n; i++)
      memcpy(pd_devpool_block(p, (uint32_t)slots[i]),
             (const char *)host + (size_t)host_slots[i] * p->block_bytes, p->block_bytes);
    return PD_OK;
  }
#ifdef PD_WITH_CUDA
  char msg[160] = "";
  cudaSetDevice(p->device);
  int rc = pd_cuda_blocks_from_host(p->base, p->block_bytes, slots, (int)n, host, host_slots,
                                    p->xfer_stream, msg, sizeof msg);
  return finish_transfer(p, rc, msg, sizeof msg, "host -> device");
#else
  return PD_EUNSUPPORTED;
#endif
}

void *pd_devpool_host_alloc(const pd_devpool *p, size_t bytes) {
  if (p->kind == PD_DEVPOOL_CPU) return calloc_page_aligned(1, bytes ? bytes : 1);
#ifdef PD_WITH_CUDA
  void *ptr = NULL;
  if (cudaHostAlloc(&ptr, bytes ? bytes : 1, cudaHostAllocPortable) != cudaSuccess) {
    cudaGetLastError();
    return NULL;
  }
  memset(ptr, 0, bytes);
  return ptr;
#else
  return NULL;
#endif
}

void pd_devpool_host_free(const pd_devpool *p, void *ptr) {
  if (!ptr) return;
  if (p->kind == PD_DEVPOOL_CPU) {
    free_page_aligned(ptr);
    return;
  }
#ifdef PD_WITH_CUDA
  cudaFreeHost(ptr);
#endif
}
