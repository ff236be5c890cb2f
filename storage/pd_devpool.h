/*
 * pd_devpool.h -- the device tier's memory: the pool of KV blocks the forward pass reads and
 * writes, in host RAM (the CPU backend) or in GPU memory (the CUDA backend), and every way bytes
 * get into or out of it.
 *
 * The engine and the tier manager never touch pool bytes with memcpy/memset: they ask the pool,
 * which uses memcpy on the CPU and CUDA copies on the GPU. The pool is
 *
 *     base: (n_blocks, block_bytes) bytes, block b at base + b * block_bytes
 *
 * in the layout of kernels/cpu/pd_attention.h. Host memory meant to exchange blocks with the pool
 * (the host tier, staging buffers) comes from pd_devpool_host_alloc: page-locked (cudaHostAlloc)
 * on the GPU, so transfers run at full PCIe speed and never through a bounce buffer.
 *
 * Threads: zero and copy are for the engine thread; on the GPU they return when done, so the
 * forward pass (on its own stream) sees their bytes. download and
 * upload are for the storage worker; they use a stream of their own and return when the bytes
 * have landed, so a completion the worker reports is a transfer that is done. The engine only
 * ever moves blocks that no sequence is writing, so the two streams never race on a block.
 *
 * A binary built with CUDA makes a CPU pool where there is no GPU (pd_devpool_create with
 * PD_DEVPOOL_CPU); all functions then behave as on a CPU-only build.
 */
#ifndef PD_DEVPOOL_H
#define PD_DEVPOOL_H

#include <stddef.h>
#include <stdint.h>

enum pd_devpool_kind { PD_DEVPOOL_CPU = 0, PD_DEVPOOL_CUDA = 1 };

typedef struct pd_devpool {
  enum pd_devpool_kind kind;
  void *base; /* (n_blocks, block_bytes): host memory, or device memory for CUDA */
  size_t block_bytes;
  uint32_t n_blocks;
  void *stream;      /* CUDA: the engine's cudaStream_t (the forward pass uses it too) */
  void *xfer_stream; /* CUDA: the storage worker's cudaStream_t */
  int device;        /* CUDA: the device ordinal */
} pd_devpool;

/* 1 if this build has the CUDA backend and the driver reports a GPU. Never fails. */
int pd_devpool_cuda_available(void);

/* Why pd_devpool_cuda_available is 0: the CUDA runtime's message, "no device", or "this build has
 * no CUDA backend". A static string. */
const char *pd_devpool_cuda_unavailable_reason(void);

/* Allocates n_blocks zeroed blocks of kind. On failure (PD_ENOMEM with the bytes asked for,
 * PD_EDEVICE, PD_EUNSUPPORTED for CUDA in a CPU-only build) writes one line into err. */
int pd_devpool_create(pd_devpool *p, enum pd_devpool_kind kind, uint32_t n_blocks,
                      size_t block_bytes, char *err, size_t errlen);
void pd_devpool_destroy(pd_devpool *p);

/* One line naming where the pool is: "cpu", or "cuda:0 NVIDIA H100 80GB HBM3 (79.2 GiB)". */
void pd_devpool_describe(const pd_devpool *p, char *buf, size_t len);

/* Block slot's address in the pool (a device address for CUDA: never dereference it on the
 * host). */
void *pd_devpool_block(const pd_devpool *p, uint32_t slot);

/* Engine thread: sets a block to zero bytes; copies block src over block dst (copy-on-write). */
int pd_devpool_zero(pd_devpool *p, uint32_t slot);
int pd_devpool_copy(pd_devpool *p, uint32_t dst, uint32_t src);

/* Storage worker: n blocks between the pool and host slots (host slot j at host + j *
 * block_bytes; host from pd_devpool_host_alloc for full speed). download: host slot
 * host_slots[i] = pool block slots[i]; upload: the reverse. Return when the copies are done:
 * 0, or PD_ENOMEM / PD_EDEVICE (a GPU pool's failure is logged with CUDA's reason). */
int pd_devpool_download(pd_devpool *p, const int32_t *slots, uint32_t n, void *host,
                        const int32_t *host_slots);
int pd_devpool_upload(pd_devpool *p, const int32_t *slots, uint32_t n, const void *host,
                      const int32_t *host_slots);

/* Host memory for exchanging blocks with the pool, zeroed and page-aligned (the disk tier moves
 * it with O_DIRECT): page-locked for CUDA, plain otherwise. NULL when out of memory. Free with pd_devpool_host_free (same pool kind). */
void *pd_devpool_host_alloc(const pd_devpool *p, size_t bytes);
void pd_devpool_host_free(const pd_devpool *p, void *ptr);

#endif /* PD_DEVPOOL_H */
