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
/* -1: not probed yet; else whether the device current at the first probe has griddepcontrol */
static std::atomic<int> pdl_supported{-1};

extern "C" void pd_cuda_set_pdl(int on) {
  pdl_asked.store(on ? 1 : 0);
}

static int device_supports_pdl(void) {
  int v = pdl_supported.load();
  if (v < 0) {
    int dev = 0, major = 0;
    v = cudaGetDevice(&dev) == cudaSuccess &&
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
        major >= 9;
    cudaGetLastError(); /* a failed probe is "no", not an error for the next launch to report */
    pdl_supported.store(v);
  }
  return v;
}

extern "C" void pd_cuda_pdl_refused(void) {
  pdl_supported.store(0);
}

extern "C" int pd_cuda_pdl(void) {
  int v = pdl_asked.load();
  if (v < 0) {
    const char *e = getenv("PD_CUDA_PDL");
    v = e && *e && strcmp(e, "0") != 0;
    pdl_asked.store(v);
  }
  return v && device_supports_pdl();
}
