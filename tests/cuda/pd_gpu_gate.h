/*
 * pd_gpu_gate.h -- the one way a GPU test program starts: without a CUDA device it says so and
 * returns 77 (CTest's skip code for label gpu); with one it prints the device's name, so a log
 * of the run names the GPU its figures came from.
 */
#ifndef PD_GPU_GATE_H
#define PD_GPU_GATE_H

#include <cuda_runtime.h>
#include <stdio.h>

#include "pd_cuda_attention.h"

/* 0 when a GPU is there (its name printed), 77 when there is none. */
static inline int pd_gpu_gate(void) {
  if (pd_cuda_device_count() == 0) {
    printf("no CUDA device: skipped\n");
    return 77;
  }
  struct cudaDeviceProp p;
  if (cudaGetDeviceProperties(&p, 0) == cudaSuccess) printf("device: %s\n", p.name);
  return 0;
}

#endif /* PD_GPU_GATE_H */
