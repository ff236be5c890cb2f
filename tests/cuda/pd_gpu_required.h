/*
 * pd_gpu_required.h -- whether a GPU test may skip: PD_REQUIRE_GPU set (to anything but "" or
 * "0"), as scripts/gpu-check sets it on a GPU machine, turns "no usable GPU" into a failure, so
 * a run where nothing ran cannot read as a pass. Without CUDA headers: the daemon test includes
 * it too.
 */
#ifndef PD_GPU_REQUIRED_H
#define PD_GPU_REQUIRED_H

#include <stdlib.h>
#include <string.h>

static inline int pd_gpu_required(void) {
  const char *v = getenv("PD_REQUIRE_GPU");
  return v && *v && strcmp(v, "0") != 0;
}

#endif /* PD_GPU_REQUIRED_H */
