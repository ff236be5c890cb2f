/*
 * pd_gpu_gate.h -- the one way a GPU test program starts: without a usable CUDA device it says
 * why and returns 77 (CTest's skip code for label gpu), or 1 under PD_REQUIRE_GPU
 * (pd_gpu_required.h: on a GPU machine a driver too old for the toolkit must fail the run rather
 * than skip every test); with one it prints the device's name, so a log of the run names the GPU
 * its figures came from.
 */
#ifndef PD_GPU_GATE_H
#define PD_GPU_GATE_H

#include <cuda_runtime.h>
#include <stdio.h>

#include "pd_cuda_attention.h"
#include "pd_gpu_required.h"

/* 0 when a GPU is there (its name printed); else 77, or 1 under PD_REQUIRE_GPU. The program's
 * exit status in both cases: `int g = pd_gpu_gate(); if (g) return g;`. */
static inline int pd_gpu_gate(void) {
  if (pd_cuda_device_count() == 0) {
    const char *why = pd_cuda_no_device_reason();
    if (pd_gpu_required()) {
      printf("FAILED: no usable CUDA device (%s) and PD_REQUIRE_GPU is set\n", why);
      return 1;
    }
    printf("no CUDA device (%s): skipped\n", why);
    return 77;
  }
  struct cudaDeviceProp p;
  if (cudaGetDeviceProperties(&p, 0) == cudaSuccess) printf("device: %s\n", p.name);
  return 0;
}

#endif /* PD_GPU_GATE_H */
