/*
 * pd_dtype.h -- element types of activations and of the KV cache, and scalar conversions.
 *
 * The KV cache holds f32, f16, bf16 or fp8-e4m3 elements; activations are f32 on the CPU path.
 * The conversions here are the reference ones (round to nearest even, NaN kept as NaN): CUDA
 * kernels that convert must agree with them bit for bit, and the tests check that they do.
 * Header only: every function is static inline.
 */
#ifndef PD_DTYPE_H
#define PD_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum pd_dtype { PD_DTYPE_F32 = 0, PD_DTYPE_F16 = 1, PD_DTYPE_BF16 = 2, PD_DTYPE_FP8_E4M3 = 3 };

static inline size_t pd_dtype_size(enum pd_dtype t) {
  switch (t) {
  case PD_DTYPE_F32: return 4;
  case PD_DTYPE_F16: return 2;
  case PD_DTYPE_BF16: return 2;
  case PD_DTYPE_FP8_E4M3: return 1;
  }
  return 0;
}

static inline const char *pd_dtype_name(enum pd_dtype t) {
  switch (t) {
  case PD_DTYPE_F32: return "f32";
  case PD_DTYPE_F16: return "f16";
  case PD_DTYPE_BF16: return "bf16";
  case PD_DTYPE_FP8_E4M3: return "fp8-e4m3";
  }
  return "?";
}

/* Parses "f32", "f16", "bf16", "fp8" / "fp8-e4m3". Returns 0 and sets *out, or -1. */
static inline int pd_dtype_parse(const char *s, enum pd_dtype *out) {
  if (!strcmp(s, "f32"))
    *out = PD_DTYPE_F32;
  else if (!strcmp(s, "f16"))
    *out = PD_DTYPE_F16;
  else if (!strcmp(s, "bf16"))
    *out = PD_DTYPE_BF16;
  else if (!strcmp(s, "fp8") || !strcmp(s, "fp8-e4m3"))
    *out = PD_DTYPE_FP8_E4M3;
  else
    return -1;
  return 0;
}

static inline uint32_t pd_f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

static inline float pd_bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* IEEE half -> float, exact. */
static inline float pd_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t man = h & 0x3ff;
  if (exp == 0) {
    if (man == 0) return pd_bits_f32(sign);
    /* subnormal: value = man * 2^-24 */
    float v = (float)man * (1.0f / 16777216.0f);
    return sign ? -v : v;
  }
  if (exp == 31) return pd_bits_f32(sign | 0x7f800000u | (man << 13));
  return pd_bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

/* float -> IEEE half, round to nearest even; overflow gives inf, NaN stays NaN. */
static inline uint16_t pd_f32_to_f16(float f) {
  uint32_t x = pd_f32_bits(f);
  uint32_t sign = (x >> 16) & 0x8000;
  uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u) return (uint16_t)(sign | 0x7c00 | (absx > 0x7f800000u ? 0x200 : 0));
  if (absx >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* rounds to >= 65520: inf */
  if (absx < 0x38800000u) {                                  /* below 2^-14: subnormal half */
    /* value / 2^-24, rounded to nearest even */
    float a = pd_bits_f32(absx) * 16777216.0f;
    uint32_t m = (uint32_t)a;
    float rem = a - (float)m;
    if (rem > 0.5f || (rem == 0.5f && (m & 1))) m++;
    return (uint16_t)(sign | m);
  }
  uint32_t exp = ((absx >> 23) - 112) << 10;
  uint32_t man = (absx >> 13) & 0x3ff;
  uint32_t rest = absx & 0x1fff;
  uint32_t h = exp | man;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;
  return (uint16_t)(sign | h);
}

static inline float pd_bf16_to_f32(uint16_t b) {
  return pd_bits_f32((uint32_t)b << 16);
}

/* float -> bfloat16, round to nearest even; NaN stays NaN. */
static inline uint16_t pd_f32_to_bf16(float f) {
  uint32_t x = pd_f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40);
  uint32_t lsb = (x >> 16) & 1;
  return (uint16_t)((x + 0x7fffu + lsb) >> 16);
}

/* fp8 e4m3 (OCP "fn" variant: no infinities, 0x7f/0xff are NaN, max 448) -> float, exact. */
static inline float pd_fp8e4m3_to_f32(uint8_t v) {
  uint32_t sign = (uint32_t)(v & 0x80) << 24;
  uint32_t exp = (v >> 3) & 0xf;
  uint32_t man = v & 0x7;
  if (exp == 0xf && man == 0x7) return pd_bits_f32(sign | 0x7fc00000u);
  if (exp == 0) {
    float m = (float)man * (1.0f / 512.0f); /* man * 2^-9 */
    return sign ? -m : m;
  }
  return pd_bits_f32(sign | ((exp + 120) << 23) | (man << 20));
}

/* float -> fp8 e4m3, round to nearest even, saturating to +-448; NaN -> NaN. */
static inline uint8_t pd_f32_to_fp8e4m3(float f) {
  uint32_t x = pd_f32_bits(f);
  uint8_t sign = (uint8_t)((x >> 24) & 0x80);
  uint32_t absx = x & 0x7fffffffu;
  if (absx > 0x7f800000u) return (uint8_t)(sign | 0x7f);
  float a = pd_bits_f32(absx);
  if (a >= 448.0f) return (uint8_t)(sign | 0x7e);
  if (a < 0.015625f) { /* below 2^-6: subnormal, step 2^-9 */
    float s = a * 512.0f;
    uint32_t m = (uint32_t)s;
    float rem = s - (float)m;
    if (rem > 0.5f || (rem == 0.5f && (m & 1))) m++;
    return (uint8_t)(sign | m); /* m == 8 lands exactly on the smallest normal */
  }
  uint32_t exp = (absx >> 23) - 120;
  uint32_t man = (absx >> 20) & 0x7;
  uint32_t rest = absx & 0xfffff;
  uint32_t v = (exp << 3) | man;
  if (rest > 0x80000 || (rest == 0x80000 && (v & 1))) v++;
  if (v > 0x7e) v = 0x7e;
  return (uint8_t)(sign | v);
}

/* Loads element i of a buffer of type t as float. */
static inline float pd_dtype_load(enum pd_dtype t, const void *p, size_t i) {
  switch (t) {
  case PD_DTYPE_F32: return ((const float *)p)[i];
  case PD_DTYPE_F16: return pd_f16_to_f32(((const uint16_t *)p)[i]);
  case PD_DTYPE_BF16: return pd_bf16_to_f32(((const uint16_t *)p)[i]);
  case PD_DTYPE_FP8_E4M3: return pd_fp8e4m3_to_f32(((const uint8_t *)p)[i]);
  }
  return 0.0f;
}

/* Stores v as element i of a buffer of type t (rounded to nearest even). */
static inline void pd_dtype_store(enum pd_dtype t, void *p, size_t i, float v) {
  switch (t) {
  case PD_DTYPE_F32: ((float *)p)[i] = v; break;
  case PD_DTYPE_F16: ((uint16_t *)p)[i] = pd_f32_to_f16(v); break;
  case PD_DTYPE_BF16: ((uint16_t *)p)[i] = pd_f32_to_bf16(v); break;
  case PD_DTYPE_FP8_E4M3: ((uint8_t *)p)[i] = pd_f32_to_fp8e4m3(v); break;
  }
}

#endif /* PD_DTYPE_H */
