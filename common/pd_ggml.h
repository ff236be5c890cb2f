/*
 * pd_ggml.h -- the tensor element types that GGUF files use (ggml numbering), shared by the GGUF
 * reader (model/) and the quantized kernels (kernels/cpu/). Only the types listed are accepted.
 */
#ifndef PD_GGML_H
#define PD_GGML_H

/* Tensor element types (ggml numbering). Only the ones listed are accepted. */
enum pd_ggml_type {
  PD_GGML_F32 = 0,
  PD_GGML_F16 = 1,
  PD_GGML_Q4_0 = 2,
  PD_GGML_Q4_1 = 3,
  PD_GGML_Q5_0 = 6,
  PD_GGML_Q5_1 = 7,
  PD_GGML_Q8_0 = 8,
  PD_GGML_Q2_K = 10,
  PD_GGML_Q3_K = 11,
  PD_GGML_Q4_K = 12,
  PD_GGML_Q5_K = 13,
  PD_GGML_Q6_K = 14,
  PD_GGML_IQ4_NL = 20,
  PD_GGML_IQ4_XS = 23,
  PD_GGML_BF16 = 30
};

#endif /* PD_GGML_H */
