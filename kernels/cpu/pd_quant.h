/*
 * pd_quant.h -- the block formats of GGUF tensors: sizes, dequantization, reference quantizers.
 *
 * Layouts (little-endian, as ggml writes them; f16 = IEEE half):
 *
 *   F32   1 element,   4 B     F16  1 element, 2 B     BF16  1 element, 2 B
 *   Q8_0  32 elements, 34 B:   f16 d | int8 q[32]                      x = d * q
 *   Q4_0  32 elements, 18 B:   f16 d | u8 qs[16]  (element j in the low nibble of qs[j],
 *                                                  element j + 16 in the high nibble)  x = d * (q - 8)
 *   Q4_1  32 elements, 20 B:   f16 d | f16 m | u8 qs[16]               x = d * q + m
 *   Q5_0  32 elements, 22 B:   f16 d | u32 qh | u8 qs[16]   (fifth bits in qh)  x = d * (q - 16)
 *   Q5_1  32 elements, 24 B:   f16 d | f16 m | u32 qh | u8 qs[16]      x = d * q + m
 *   IQ4_NL 32 elements, 18 B:  f16 d | u8 qs[16] (nibbles as Q4_0)   x = d * kvalues[q], the
 *                              16 non-uniform int8 levels of pd_iq4nl_values
 *   IQ4_XS 256 elements, 136 B: f16 d | u16 scales_h | u8 scales_l[4] | u8 qs[128]; sub-block j
 *                              of 32: 6-bit scale ls_j = nibble j of scales_l | bits 2 j of
 *                              scales_h << 4, its elements as IQ4_NL's at qs + 16 j;
 *                              x = d * (ls_j - 32) * kvalues[q]
 *   Q2_K  256 elements, 84 B:  u8 scales[16] (4-bit scale | 4-bit min << 4, one per 16) |
 *                              u8 qs[64] (2 bits each) | f16 d | f16 dmin;
 *                              x = d * sc * q - dmin * m
 *   Q3_K  256 elements, 110 B: u8 hmask[32] (third bits) | u8 qs[64] (low 2 bits) |
 *                              u8 scales[12] (16 6-bit scales, biased by 32) | f16 d;
 *                              x = d * (sc - 32) * (q - 4), q = low | hmask bit << 2
 *   Q4_K  256 elements, 144 B: f16 d | f16 dmin | u8 scales[12] (8 pairs of 6-bit scale and min)
 *                              | u8 qs[128]; sub-block j of 32: x = d * sc_j * q - dmin * m_j
 *   Q5_K  256 elements, 176 B: f16 d | f16 dmin | u8 scales[12] (as Q4_K) | u8 qh[32] (fifth
 *                              bits: bit j of qh[l] for sub-block j) | u8 qs[128] (as Q4_K)
 *   Q6_K  256 elements, 210 B: u8 ql[128] (low 4 bits) | u8 qh[64] (high 2 bits) |
 *                              int8 scales[16] (one per 16) | f16 d;   x = d * sc * (q - 32)
 *
 * Within a 256-element block the K formats order their elements in halves of 128: Q6_K's,
 * Q3_K's and Q2_K's low bits of element 32 k + l of a half sit in byte l (or l + 32) of that
 * half at bit 4 (k / 2) (Q6_K) or bit 2 k (Q3_K, Q2_K); pd_quant.c spells each out.
 *
 * Dequantization is exact (it is what the reference forward pass in tests/reference/ computes
 * with gguf-py, and the tests compare bit for bit). The quantizers round to nearest; they exist
 * to write synthetic models and test data, not to quantize models well.
 */
#ifndef PD_QUANT_H
#define PD_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "pd_ggml.h"

size_t pd_ggml_row_bytes(enum pd_ggml_type t, int64_t n); /* 0 if n is not a block multiple */
int pd_ggml_block_elems(enum pd_ggml_type t);             /* 1, 32 or 256; 0 if unknown */
const char *pd_ggml_type_name(enum pd_ggml_type t);       /* "q4_1", ...; "?" if unknown */
int pd_ggml_type_supported(uint32_t t);                   /* 1 for the types of pd_ggml.h */

/* Bytes per block (0 if unknown). Inline, so that kernels specialised on a type fold it. */
static inline size_t pd_ggml_block_bytes(enum pd_ggml_type t) {
  switch (t) {
  case PD_GGML_F32: return 4;
  case PD_GGML_F16:
  case PD_GGML_BF16: return 2;
  case PD_GGML_Q4_0: return 18;
  case PD_GGML_Q4_1: return 20;
  case PD_GGML_Q5_0: return 22;
  case PD_GGML_Q5_1: return 24;
  case PD_GGML_Q8_0: return 34;
  case PD_GGML_IQ4_NL: return 18;
  case PD_GGML_IQ4_XS: return 136;
  case PD_GGML_Q2_K: return 84;
  case PD_GGML_Q3_K: return 110;
  case PD_GGML_Q4_K: return 144;
  case PD_GGML_Q5_K: return 176;
  case PD_GGML_Q6_K: return 210;
  }
  return 0;
}

/* Every type of pd_ggml.h, in numbering order (the tests and prefixd-mkgguf walk it). */
#define PD_GGML_N_TYPES 15
extern const enum pd_ggml_type pd_ggml_types[PD_GGML_N_TYPES];

/* The 16 levels of IQ4_NL, ascending. */
extern const int8_t pd_iq4nl_values[16];

/* Q4_K's and Q5_K's scale and min of sub-block j (0..7) from their 12 packed bytes. Inline: the
 * fast matmul decodes them per super-block. */
static inline void pd_q4k_scale_min(int j, const uint8_t *packed, uint8_t *sc, uint8_t *m) {
  if (j < 4) {
    *sc = packed[j] & 63;
    *m = packed[j + 4] & 63;
  } else {
    *sc = (uint8_t)((packed[j + 4] & 0xF) | ((packed[j - 4] >> 6) << 4));
    *m = (uint8_t)((packed[j + 4] >> 4) | ((packed[j] >> 6) << 4));
  }
}

/* IQ4_XS's scale of sub-block j (0..7), unbiased (-32..31), from the block at b. */
static inline int pd_iq4xs_scale(const uint8_t *b, int j) {
  int lo = (b[4 + j / 2] >> (4 * (j % 2))) & 0xF, hi = ((b[2] | b[3] << 8) >> (2 * j)) & 3;
  return (lo | hi << 4) - 32;
}

/* Q3_K's 16 scales, unbiased (-32..31), from their 12 packed bytes: scale k has its low 4 bits
 * in byte k % 8 (low nibble for k < 8, high for k >= 8) and its top 2 bits at bit 2 (k / 4) of
 * byte 8 + k % 4. */
static inline void pd_q3k_scales(const uint8_t *packed, int8_t sc[16]) {
  for (int k = 0; k < 16; k++) {
    int lo = (packed[k % 8] >> (k < 8 ? 0 : 4)) & 0xF,
        hi = (packed[8 + k % 4] >> (2 * (k / 4))) & 3;
    sc[k] = (int8_t)((lo | hi << 4) - 32);
  }
}

/* dst (n) = the n elements at src. Returns 0 or PD_EINVAL (unknown type, n not a multiple). */
int pd_dequant_row(enum pd_ggml_type t, const void *src, float *dst, int64_t n);
/* dst (pd_ggml_row_bytes(t, n) bytes) = src (n) quantized. Returns 0 or PD_EINVAL. */
int pd_quantize_row(enum pd_ggml_type t, const float *src, void *dst, int64_t n);

#endif /* PD_QUANT_H */
