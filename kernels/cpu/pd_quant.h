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
 *   Q4_K  256 elements, 144 B: f16 d | f16 dmin | u8 scales[12] (8 pairs of 6-bit scale and min)
 *                              | u8 qs[128]; sub-block j of 32: x = d * sc_j * q - dmin * m_j
 *   Q6_K  256 elements, 210 B: u8 ql[128] (low 4 bits) | u8 qh[64] (high 2 bits) |
 *                              int8 scales[16] (one per 16) | f16 d;   x = d * sc * (q - 32)
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
size_t pd_ggml_block_bytes(enum pd_ggml_type t);
const char *pd_ggml_type_name(enum pd_ggml_type t); /* "q4_1", ...; "?" if unknown */
int pd_ggml_type_supported(uint32_t t);             /* 1 for the ten types of pd_ggml.h */

/* dst (n) = the n elements at src. Returns 0 or PD_EINVAL (unknown type, n not a multiple). */
int pd_dequant_row(enum pd_ggml_type t, const void *src, float *dst, int64_t n);
/* dst (pd_ggml_row_bytes(t, n) bytes) = src (n) quantized. Returns 0 or PD_EINVAL. */
int pd_quantize_row(enum pd_ggml_type t, const float *src, void *dst, int64_t n);

#endif /* PD_QUANT_H */
