/*
 * pd_cuda_convert.h -- the element conversions of the CUDA KV store and attention, in integer
 * arithmetic only, so that no flush-to-zero or fast-math mode can change them.
 *
 * They are bit for bit those of common/pd_dtype.h (f32 -> f16, bf16, fp8-e4m3 rounding to
 * nearest even; e4m3 -> f16 bits exactly). The header is plain C as well as CUDA: the kernels
 * use it on the device, and tests/cuda/test_cuda_convert.c runs every one of them on the host
 * against pd_dtype.h over all 2^32 f32 inputs (all 256 e4m3 values), on machines without a GPU.
 */
#ifndef PD_CUDA_CONVERT_H
#define PD_CUDA_CONVERT_H

#include <stdint.h>

#ifdef __CUDACC__
#define PD_HOST_DEVICE __host__ __device__
#else
#define PD_HOST_DEVICE
#endif

/* f32 bits -> f16 bits, round to nearest even; overflow -> inf; NaN stays NaN (quiet bit set).
 * The subnormal branch of pd_f32_to_f16 computes a = |x| * 2^24 in float, m = trunc(a) and
 * compares the exact remainder with 0.5; here the same m and remainder come from the mantissa
 * with shifts (|x| = M * 2^(e - 150), so a = M * 2^(e - 126)), which no FTZ mode can change. */
PD_HOST_DEVICE static inline uint16_t pd_cuda_cvt_f32_f16(uint32_t x) {
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0u));
  if (absx >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);
  if (absx < 0x38800000u) {
    uint32_t e = absx >> 23;
    if (e < 102) return (uint16_t)sign; /* |x| < 2^-25: a < 0.5 */
    uint32_t M = (absx & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e; /* 14 .. 24 */
    uint32_t m = M >> shift, rem = M & ((1u << shift) - 1), halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (m & 1))) m++;
    return (uint16_t)(sign | m);
  }
  uint32_t h = (((absx >> 23) - 112) << 10) | ((absx >> 13) & 0x3ffu);
  uint32_t rest = absx & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1))) h++;
  return (uint16_t)(sign | h);
}

PD_HOST_DEVICE static inline uint16_t pd_cuda_cvt_f32_bf16(uint32_t x) {
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);
  uint32_t lsb = (x >> 16) & 1u;
  return (uint16_t)((x + 0x7fffu + lsb) >> 16);
}

/* f32 bits -> fp8 e4m3 (OCP "fn"), round to nearest even, saturating to +-448, NaN -> 0x7f: the
 * bits of pd_f32_to_fp8e4m3. Its subnormal branch (|x| < 2^-6, step 2^-9) rounds a = |x| * 2^9
 * in float; here m and the remainder come from the mantissa M (a = M * 2^(e - 141)). */
PD_HOST_DEVICE static inline uint8_t pd_cuda_cvt_f32_fp8(uint32_t x) {
  const uint32_t sign = (x >> 24) & 0x80u, absx = x & 0x7fffffffu;
  if (absx > 0x7f800000u) return (uint8_t)(sign | 0x7fu);
  if (absx >= 0x43e00000u) return (uint8_t)(sign | 0x7eu); /* >= 448, inf */
  if (absx < 0x3c800000u) {
    const uint32_t e = absx >> 23;
    if (e < 110) return (uint8_t)sign;                                  /* a < 2^-7 */
    const uint32_t M = (absx & 0x7fffffu) | 0x800000u, shift = 141 - e; /* 21 .. 31 */
    uint32_t m = M >> shift;
    const uint32_t rem = M & ((1u << shift) - 1), halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (m & 1))) m++;
    return (uint8_t)(sign | m); /* m == 8 is the smallest normal */
  }
  uint32_t v = ((((absx >> 23) - 120) << 3) | ((absx >> 20) & 0x7u));
  const uint32_t rest = absx & 0xfffffu;
  if (rest > 0x80000u || (rest == 0x80000u && (v & 1))) v++;
  return (uint8_t)(sign | (v > 0x7eu ? 0x7eu : v));
}

/* e4m3 bits (the low 8 bits of byte) -> the f16 bits of that value times 2^-8, exactly: the
 * exponent and mantissa move into an f16's (whose bias is 8 more), subnormals included; 0x7f and
 * 0xff (NaN) become an f16 NaN. */
PD_HOST_DEVICE static inline uint16_t pd_cuda_fp8_to_f16_scaled(uint32_t byte) {
  const uint32_t mag = byte & 0x7fu;
  return (uint16_t)(((byte & 0x80u) << 8) | (mag == 0x7fu ? 0x7e00u : mag << 7));
}

#endif /* PD_CUDA_CONVERT_H */
