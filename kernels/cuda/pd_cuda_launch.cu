/*
 * pd_cuda_launch.cu -- the process-wide PDL switch of pd_cuda_launch.h. A library of its own
 * (pd_kernels_cuda_launch) because both kernel libraries launch through it and share the one
 * switch.
 */
#include <cuda_runtime.h>
#include <stdlib.h>
#include <string.h>

#include <atomic>

#include "pd_cuda_launch.h"

/* -1: not decided yet; else 0 / 1 as asked (pd_cuda_set_pdl or the environment) */
static std::atomic<int> pdl_asked{-1};
/* -1: not probed yet; else pd_cuda_sm90_code()'s answer */
static std::atomic<int> sm90_code{-1};
/* 1: the runtime refused a launch with the PDL attribute (pd_cuda_pdl_refused) */
static std::atomic<int> pdl_refused{0};

/* Compiled like every kernel of the backend (the same CUDA architectures), so that its PTX
 * version is theirs. */
__global__ void sm90_probe_kernel(void) {}

extern "C" void pd_cuda_set_pdl(int on) {
  pdl_asked.store(on ? 1 : 0);
}

/* The device must be of compute capability 9.0 or more, and the code it runs must have been
 * compiled for one: pdl_wait() (and the decode kernel's cluster merge) are empty below
 * __CUDA_ARCH__ 900, so a build for sm_80 / sm_89 only, JIT-compiled from that PTX on a Hopper,
 * has kernels without the wait, and launching them with the attribute would let them read before
 * the kernel before them has finished. The probe kernel's PTX version tells which code the
 * device runs (90 or more: the wait is in it). */
extern "C" int pd_cuda_sm90_code(void) {
  int v = sm90_code.load();
  if (v < 0) {
    int dev = 0, major = 0;
    cudaFuncAttributes fa = {};
    v = cudaGetDevice(&dev) == cudaSuccess &&
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
        major >= 9 && cudaFuncGetAttributes(&fa, sm90_probe_kernel) == cudaSuccess &&
        fa.ptxVersion >= 90;
    cudaGetLastError(); /* a failed probe is "no", not an error for the next launch to report */
    sm90_code.store(v);
  }
  return v;
}

extern "C" void pd_cuda_pdl_refused(void) {
  pdl_refused.store(1);
}

extern "C" int pd_cuda_pdl(void) {
  int v = pdl_asked.load();
  if (v < 0) {
    const char *e = getenv("PD_CUDA_PDL");
    v = e && *e && strcmp(e, "0") != 0;
    pdl_asked.store(v);
  }
  return v && !pdl_refused.load() && pd_cuda_sm90_code();
}
