/*
 * pd_cuda_launch.h -- how every kernel of the CUDA backend is launched: programmatic dependent
 * launch (PDL) on Hopper and later, off by default until a GPU has timed it.
 *
 * A decode step at batch 1 is a chain of about 200 small dependent kernels (seven to eleven a
 * layer): each waits for the one before to finish, drain its memory and then be launched and
 * ramped up, a gap of a few microseconds that the GPU spends idle. With PDL
 * (cudaLaunchAttributeProgrammaticStreamSerialization) a kernel may be launched while the one
 * before it still runs; its blocks become resident, do what does not depend on the earlier
 * kernel (the GEMVs prefetch their weight rows into L2), and then block in pdl_wait() until the
 * earlier grid has completed and its writes are visible. The results are those of plain stream
 * order, bit for bit: only the overlap changes.
 *
 * The contract that makes this safe, kept by every kernel in kernels/cuda/:
 *   - pdl_wait() runs before the kernel's first access to memory another kernel writes or reads
 *     (activations, the KV pool, workspaces, block tables): before every read that could see an
 *     earlier kernel's output and before every write that could race an earlier kernel's read.
 *     Only constant data (model weights) is touched before it, and only to prefetch.
 *   - pdl_trigger() comes right after pdl_wait(), so at most two grids of a chain are in flight:
 *     the next kernel is launched once every block of this one has passed its wait.
 *   - Kernels are launched through pd_cuda_launch(), which sets the attribute when PDL is on.
 *     A kernel launched without it (PDL off, cuBLAS, a memcpy in between) runs in plain stream
 *     order, and pdl_wait() then returns at once.
 * Stream capture keeps the programmatic edges, so the decode-step graphs get them too.
 *
 * The switch is process-wide (the kernels' callers pass only a stream): pd_cuda_set_pdl, or
 * PD_CUDA_PDL=1 in the environment (pd_cuda_env_flag's rule). It applies only on devices of
 * compute capability 9.0 or more, where griddepcontrol exists, running code compiled for one (a
 * build for older architectures only, JIT-compiled on a Hopper, has no wait in its kernels).
 */
#ifndef PD_CUDA_LAUNCH_H
#define PD_CUDA_LAUNCH_H

#ifdef __cplusplus
extern "C" {
#endif

/* 1: launch with PDL (where the current device supports it), 0: plain stream order. */
void pd_cuda_set_pdl(int on);
/* Whether launches use PDL now: the last pd_cuda_set_pdl, else PD_CUDA_PDL from the environment,
 * and in both cases only on a device of compute capability >= 9.0 running code compiled for 9.0
 * or more (probed once per process, on the device current at the first call). */
int pd_cuda_pdl(void);
/* Called by pd_cuda_launch when a launch with the attribute failed and the same launch without it
 * succeeded: PDL stays off for the rest of the process (pd_cuda_pdl() returns 0 from then on). */
void pd_cuda_pdl_refused(void);
/* Whether the current device is of compute capability 9.0 or more and runs this build's code
 * compiled for one (the condition for PDL, and for thread-block clusters); probed once. */
int pd_cuda_sm90_code(void);

#ifdef __cplusplus
}
#endif

#ifdef __CUDACC__
#include <cuda_runtime.h>

/* Waits until every grid this one depends on programmatically has completed and its memory
 * operations are visible; returns at once when the kernel was launched without PDL. */
__device__ __forceinline__ void pdl_wait(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/* Lets the next kernel in the stream be launched once every block of this grid has called this
 * (or exited). Scheduling only: the next kernel's pdl_wait() still waits for this grid's end. */
__device__ __forceinline__ void pdl_trigger(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* Brings the 128-byte lines of [p, p + bytes) into L2, lane by lane over a warp (constant data
 * only: see the contract above). */
__device__ __forceinline__ void prefetch_l2_warp(const void *p, size_t bytes, int lane) {
  const char *c = (const char *)p;
  for (size_t off = (size_t)lane * 128; off < bytes; off += 32 * 128)
    asm volatile("prefetch.global.L2 [%0];" ::"l"(c + off));
}

/* kernel<<<grid, block, smem, stream>>>(args...) with the PDL attribute when pd_cuda_pdl(), in
 * clusters of cluster_x thread blocks along x when cluster_x > 0 (grid.x a multiple of it; 8 at
 * most, and only where pd_cuda_sm90_code()); returns the launch's status. Should the runtime refuse
 * the PDL attribute where the launch itself is fine (a stream or driver without PDL), the launch
 * is made without it and PDL is turned off. */
template <typename... KArgs, typename... Args>
static inline cudaError_t pd_cuda_launch_clusters(void (*kernel)(KArgs...), dim3 grid, dim3 block,
                                                  size_t smem, cudaStream_t stream,
                                                  unsigned cluster_x, Args... args) {
  cudaLaunchAttribute attr[2];
  int n = 0;
  if (cluster_x > 0) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = cluster_x;
    attr[n].val.clusterDim.y = 1;
    attr[n].val.clusterDim.z = 1;
    n++;
  }
  const int pdl = pd_cuda_pdl();
  if (pdl) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n].val.programmaticStreamSerializationAllowed = 1;
    n++;
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = n ? attr : NULL;
  cfg.numAttrs = (unsigned)n;
  cudaError_t e = cudaLaunchKernelEx(&cfg, kernel, args...);
  if (e != cudaSuccess && pdl) { /* again without the PDL attribute (the last one) */
    cudaGetLastError();
    cfg.numAttrs = (unsigned)(n - 1);
    cfg.attrs = n - 1 ? attr : NULL;
    e = cudaLaunchKernelEx(&cfg, kernel, args...);
    if (e == cudaSuccess) pd_cuda_pdl_refused();
  }
  return e;
}

/* pd_cuda_launch_clusters without clusters. */
template <typename... KArgs, typename... Args>
static inline cudaError_t pd_cuda_launch(void (*kernel)(KArgs...), dim3 grid, dim3 block,
                                         size_t smem, cudaStream_t stream, Args... args) {
  return pd_cuda_launch_clusters(kernel, grid, block, smem, stream, 0u, args...);
}
#endif /* __CUDACC__ */

#endif /* PD_CUDA_LAUNCH_H */
