/*
 * pd_quant.c -- block formats of GGUF tensors; see pd_quant.h for the layouts. Scalar code:
 * dequantization of a row is not on the hot path of the forward pass (pd_matmul works on blocks
 * directly), so clarity wins here.
 */
#include "pd_quant.h"

#include <math.h>
#include <string.h>
#ifdef __F16C__
#include <immintrin.h>
#endif

#include "pd_dtype.h"
#include "pd_err.h"

static uint16_t rd16(const uint8_t *p) {
  return (uint16_t)(p[0] | (p[1] << 8));
}
/* f16 scale -> float: one instruction with F16C, exact like the software conversion. */
static inline float rdh(const uint8_t *p) {
#ifdef __F16C__
  return _cvtsh_ss(rd16(p));
#else
  return pd_f16_to_f32(rd16(p));
#endif
}
static void wrh(uint8_t *p, float v) {
  uint16_t h = pd_f32_to_f16(v);
  p[0] = (uint8_t)h, p[1] = (uint8_t)(h >> 8);
}

const enum pd_ggml_type pd_ggml_types[PD_GGML_N_TYPES] = {
    PD_GGML_F32,  PD_GGML_F16,  PD_GGML_Q4_0,   PD_GGML_Q4_1,   PD_GGML_Q5_0,
    PD_GGML_Q5_1, PD_GGML_Q8_0, PD_GGML_Q2_K,   PD_GGML_Q3_K,   PD_GGML_Q4_K,
    PD_GGML_Q5_K, PD_GGML_Q6_K, PD_GGML_IQ4_NL, PD_GGML_IQ4_XS, PD_GGML_BF16};

const int8_t pd_iq4nl_values[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                    1,    13,   25,  38,  53,  69,  89,  113};

int pd_ggml_block_elems(enum pd_ggml_type t) {
  switch (t) {
  case PD_GGML_F32:
  case PD_GGML_F16:
  case PD_GGML_BF16: return 1;
  case PD_GGML_Q4_0:
  case PD_GGML_Q4_1:
  case PD_GGML_Q5_0:
  case PD_GGML_Q5_1:
  case PD_GGML_Q8_0:
  case PD_GGML_IQ4_NL: return 32;
  case PD_GGML_IQ4_XS:
  case PD_GGML_Q2_K:
  case PD_GGML_Q3_K:
  case PD_GGML_Q4_K:
  case PD_GGML_Q5_K:
  case PD_GGML_Q6_K: return 256;
  }
  return 0;
}

const char *pd_ggml_type_name(enum pd_ggml_type t) {
  switch (t) {
  case PD_GGML_F32: return "f32";
  case PD_GGML_F16: return "f16";
  case PD_GGML_BF16: return "bf16";
  case PD_GGML_Q4_0: return "q4_0";
  case PD_GGML_Q4_1: return "q4_1";
  case PD_GGML_Q5_0: return "q5_0";
  case PD_GGML_Q5_1: return "q5_1";
  case PD_GGML_Q8_0: return "q8_0";
  case PD_GGML_IQ4_NL: return "iq4_nl";
  case PD_GGML_IQ4_XS: return "iq4_xs";
  case PD_GGML_Q2_K: return "q2_k";
  case PD_GGML_Q3_K: return "q3_k";
  case PD_GGML_Q4_K: return "q4_k";
  case PD_GGML_Q5_K: return "q5_k";
  case PD_GGML_Q6_K: return "q6_k";
  }
  return "?";
}

int pd_ggml_type_supported(uint32_t t) {
  return pd_ggml_block_elems((enum pd_ggml_type)t) != 0;
}

size_t pd_ggml_row_bytes(enum pd_ggml_type t, int64_t n) {
  int be = pd_ggml_block_elems(t);
  if (!be || n < 0 || n % be) return 0;
  return (size_t)(n / be) * pd_ggml_block_bytes(t);
}

/* ---- dequantization ---------------------------------------------------------------------- */

static void dq_block(enum pd_ggml_type t, const uint8_t *b, float *y) {
  switch (t) {
  case PD_GGML_F32: memcpy(y, b, 4); break;
  case PD_GGML_F16: y[0] = rdh(b); break;
  case PD_GGML_BF16: y[0] = pd_bf16_to_f32(rd16(b)); break;
  case PD_GGML_Q8_0: {
    float d = rdh(b);
    for (int j = 0; j < 32; j++) y[j] = d * (float)(int8_t)b[2 + j];
    break;
  }
  case PD_GGML_Q4_0: {
    float d = rdh(b);
    for (int j = 0; j < 16; j++) {
      y[j] = d * (float)((b[2 + j] & 0xF) - 8);
      y[j + 16] = d * (float)((b[2 + j] >> 4) - 8);
    }
    break;
  }
  case PD_GGML_Q4_1: {
    float d = rdh(b), m = rdh(b + 2);
    for (int j = 0; j < 16; j++) {
      y[j] = d * (float)(b[4 + j] & 0xF) + m;
      y[j + 16] = d * (float)(b[4 + j] >> 4) + m;
    }
    break;
  }
  case PD_GGML_Q5_0:
  case PD_GGML_Q5_1: {
    int has_m = t == PD_GGML_Q5_1;
    float d = rdh(b), m = has_m ? rdh(b + 2) : 0.0f;
    const uint8_t *p = b + (has_m ? 4 : 2);
    uint32_t qh =
        (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
    const uint8_t *qs = p + 4;
    for (int j = 0; j < 16; j++) {
      int x0 = (qs[j] & 0xF) | (int)(((qh >> j) << 4) & 0x10);
      int x1 = (qs[j] >> 4) | (int)((qh >> (j + 12)) & 0x10);
      if (has_m) {
        y[j] = d * (float)x0 + m;
        y[j + 16] = d * (float)x1 + m;
      } else {
        y[j] = d * (float)(x0 - 16);
        y[j + 16] = d * (float)(x1 - 16);
      }
    }
    break;
  }
  case PD_GGML_IQ4_NL: {
    float d = rdh(b);
    for (int j = 0; j < 16; j++) {
      y[j] = d * (float)pd_iq4nl_values[b[2 + j] & 0xF];
      y[j + 16] = d * (float)pd_iq4nl_values[b[2 + j] >> 4];
    }
    break;
  }
  case PD_GGML_IQ4_XS: {
    float d = rdh(b);
    for (int j = 0; j < 8; j++) {
      const float dl = d * (float)pd_iq4xs_scale(b, j);
      const uint8_t *qs = b + 8 + 16 * j;
      for (int l = 0; l < 16; l++) {
        y[32 * j + l] = dl * (float)pd_iq4nl_values[qs[l] & 0xF];
        y[32 * j + l + 16] = dl * (float)pd_iq4nl_values[qs[l] >> 4];
      }
    }
    break;
  }
  case PD_GGML_Q2_K: {
    const uint8_t *scales = b, *qs = b + 16;
    float d = rdh(b + 80), dmin = rdh(b + 82);
    /* element 128 h + 32 k + l: bits 2 k of qs[32 h + l]; its scale byte is its 16-element
     * sub-block's: 8 h + 2 k + l / 16 */
    for (int e = 0; e < 256; e++) {
      int h = e / 128, k = (e % 128) / 32, l = e % 32;
      uint8_t sc = scales[e / 16];
      int q = (qs[32 * h + l] >> (2 * k)) & 3;
      y[e] = d * (float)(sc & 0xF) * (float)q - dmin * (float)(sc >> 4);
    }
    break;
  }
  case PD_GGML_Q3_K: {
    const uint8_t *hmask = b, *qs = b + 32;
    int8_t sc[16];
    pd_q3k_scales(b + 96, sc);
    float d = rdh(b + 108);
    /* element 128 h + 32 k + l: low bits 2 k of qs[32 h + l], third bit 4 h + k of hmask[l]
     * (set: no offset; clear: minus 4) */
    for (int e = 0; e < 256; e++) {
      int h = e / 128, k = (e % 128) / 32, l = e % 32;
      int q = ((qs[32 * h + l] >> (2 * k)) & 3) - ((hmask[l] >> (4 * h + k)) & 1 ? 0 : 4);
      y[e] = d * (float)sc[e / 16] * (float)q;
    }
    break;
  }
  case PD_GGML_Q4_K:
  case PD_GGML_Q5_K: {
    int five = t == PD_GGML_Q5_K;
    float d = rdh(b), dmin = rdh(b + 2);
    const uint8_t *scales = b + 4, *qh = b + 16, *q = b + (five ? 48 : 16);
    for (int j = 0, is = 0; j < 256; j += 64, is += 2, q += 32) {
      uint8_t sc, m;
      pd_q4k_scale_min(is, scales, &sc, &m);
      float d1 = d * sc, m1 = dmin * m;
      pd_q4k_scale_min(is + 1, scales, &sc, &m);
      float d2 = d * sc, m2 = dmin * m;
      for (int l = 0; l < 32; l++) {
        int h1 = five ? ((qh[l] >> is) & 1) << 4 : 0,
            h2 = five ? ((qh[l] >> (is + 1)) & 1) << 4 : 0;
        y[j + l] = d1 * (float)((q[l] & 0xF) | h1) - m1;
        y[j + 32 + l] = d2 * (float)((q[l] >> 4) | h2) - m2;
      }
    }
    break;
  }
  case PD_GGML_Q6_K: {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = rdh(b + 208);
    for (int n = 0; n < 256; n += 128, ql += 64, qh += 32, sc += 8) {
      for (int l = 0; l < 32; l++) {
        int is = l / 16;
        int q1 = (int)((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        int q2 = (int)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        int q3 = (int)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        int q4 = (int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[n + l] = d * (float)sc[is] * (float)q1;
        y[n + l + 32] = d * (float)sc[is + 2] * (float)q2;
        y[n + l + 64] = d * (float)sc[is + 4] * (float)q3;
        y[n + l + 96] = d * (float)sc[is + 6] * (float)q4;
      }
    }
    break;
  }
  }
}

int pd_dequant_row(enum pd_ggml_type t, const void *src, float *dst, int64_t n) {
  if (!pd_ggml_row_bytes(t, n) && n) return PD_EINVAL;
  int be = pd_ggml_block_elems(t);
  size_t bb = pd_ggml_block_bytes(t);
  const uint8_t *p = src;
  if (t == PD_GGML_F32) {
    memcpy(dst, src, (size_t)n * 4);
    return PD_OK;
  }
  for (int64_t i = 0; i < n; i += be, p += bb) dq_block(t, p, dst + i);
  return PD_OK;
}

/* ---- reference quantizers ---------------------------------------------------------------- */

static float absmax_signed(const float *x, int n) { /* the element of largest magnitude */
  float m = 0;
  for (int i = 0; i < n; i++)
    if (fabsf(x[i]) > fabsf(m)) m = x[i];
  return m;
}

static void minmax(const float *x, int n, float *mn, float *mx) {
  *mn = x[0], *mx = x[0];
  for (int i = 1; i < n; i++) {
    if (x[i] < *mn) *mn = x[i];
    if (x[i] > *mx) *mx = x[i];
  }
}

static int clampi(int v, int lo, int hi) {
  return v < lo ? lo : v > hi ? hi : v;
}

static int nearest_iq4nl(float v) { /* the index of the IQ4_NL level nearest v */
  int best = 0;
  for (int i = 1; i < 16; i++)
    if (fabsf(v - (float)pd_iq4nl_values[i]) < fabsf(v - (float)pd_iq4nl_values[best])) best = i;
  return best;
}

static void q_block(enum pd_ggml_type t, const float *x, uint8_t *b) {
  switch (t) {
  case PD_GGML_F32: memcpy(b, x, 4); break;
  case PD_GGML_F16: wrh(b, x[0]); break;
  case PD_GGML_BF16: {
    uint16_t h = pd_f32_to_bf16(x[0]);
    b[0] = (uint8_t)h, b[1] = (uint8_t)(h >> 8);
    break;
  }
  case PD_GGML_Q8_0: {
    float amax = fabsf(absmax_signed(x, 32)), d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
    wrh(b, d);
    for (int j = 0; j < 32; j++)
      b[2 + j] = (uint8_t)(int8_t)clampi((int)roundf(x[j] * id), -127, 127);
    break;
  }
  case PD_GGML_Q4_0:
  case PD_GGML_Q5_0: {
    int bits = t == PD_GGML_Q4_0 ? 4 : 5, half = 1 << (bits - 1), top = (1 << bits) - 1;
    float mx = absmax_signed(x, 32), d = mx / (float)-half, id = d ? 1.0f / d : 0.0f;
    wrh(b, d);
    uint8_t *qs = b + (bits == 4 ? 2 : 6);
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
      int q0 = clampi((int)(x[j] * id + (float)half + 0.5f), 0, top);
      int q1 = clampi((int)(x[j + 16] * id + (float)half + 0.5f), 0, top);
      qs[j] = (uint8_t)((q0 & 0xF) | ((q1 & 0xF) << 4));
      qh |= (uint32_t)((q0 >> 4) & 1) << j;
      qh |= (uint32_t)((q1 >> 4) & 1) << (j + 16);
    }
    if (bits == 5)
      for (int i = 0; i < 4; i++) b[2 + i] = (uint8_t)(qh >> (8 * i));
    break;
  }
  case PD_GGML_Q4_1:
  case PD_GGML_Q5_1: {
    int bits = t == PD_GGML_Q4_1 ? 4 : 5, top = (1 << bits) - 1;
    float mn, mx;
    minmax(x, 32, &mn, &mx);
    float d = (mx - mn) / (float)top, id = d ? 1.0f / d : 0.0f;
    wrh(b, d);
    wrh(b + 2, mn);
    uint8_t *qs = b + (bits == 4 ? 4 : 8);
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
      int q0 = clampi((int)((x[j] - mn) * id + 0.5f), 0, top);
      int q1 = clampi((int)((x[j + 16] - mn) * id + 0.5f), 0, top);
      qs[j] = (uint8_t)((q0 & 0xF) | ((q1 & 0xF) << 4));
      qh |= (uint32_t)((q0 >> 4) & 1) << j;
      qh |= (uint32_t)((q1 >> 4) & 1) << (j + 16);
    }
    if (bits == 5)
      for (int i = 0; i < 4; i++) b[4 + i] = (uint8_t)(qh >> (8 * i));
    break;
  }
  case PD_GGML_IQ4_NL: {
    float d = absmax_signed(x, 32) / (float)pd_iq4nl_values[0], id = d ? 1.0f / d : 0.0f;
    wrh(b, d);
    for (int j = 0; j < 16; j++) {
      int q0 = nearest_iq4nl(x[j] * id), q1 = nearest_iq4nl(x[j + 16] * id);
      b[2 + j] = (uint8_t)(q0 | q1 << 4);
    }
    break;
  }
  case PD_GGML_IQ4_XS: {
    /* per 32: the element of largest magnitude on level -127 through a signed 6-bit scale */
    float s[8], max_s = 0;
    for (int j = 0; j < 8; j++) {
      s[j] = absmax_signed(x + 32 * j, 32) / (float)pd_iq4nl_values[0];
      if (fabsf(s[j]) > max_s) max_s = fabsf(s[j]);
    }
    wrh(b, max_s / 31.0f);
    float d = rdh(b);
    memset(b + 2, 0, 134);
    uint16_t scales_h = 0;
    for (int j = 0; j < 8; j++) {
      int ls = clampi(d ? (int)roundf(s[j] / d) : 0, -32, 31) + 32;
      b[4 + j / 2] |= (uint8_t)((ls & 0xF) << (4 * (j % 2)));
      scales_h |= (uint16_t)((ls >> 4) << (2 * j));
    }
    b[2] = (uint8_t)scales_h, b[3] = (uint8_t)(scales_h >> 8);
    for (int j = 0; j < 8; j++) {
      float dl = d * (float)pd_iq4xs_scale(b, j), id = dl ? 1.0f / dl : 0.0f;
      uint8_t *qs = b + 8 + 16 * j;
      for (int l = 0; l < 16; l++)
        qs[l] = (uint8_t)(nearest_iq4nl(x[32 * j + l] * id) | nearest_iq4nl(x[32 * j + l + 16] * id)
                                                                  << 4);
    }
    break;
  }
  case PD_GGML_Q2_K: {
    /* per 16: q in 0..3 over [mn, mx] with mn <= 0; 4-bit scales and mins against d, dmin */
    float scale[16], mins[16], max_scale = 0, max_min = 0;
    for (int j = 0; j < 16; j++) {
      float mn, mx;
      minmax(x + 16 * j, 16, &mn, &mx);
      if (mn > 0) mn = 0;
      scale[j] = (mx - mn) / 3.0f, mins[j] = -mn;
      if (scale[j] > max_scale) max_scale = scale[j];
      if (mins[j] > max_min) max_min = mins[j];
    }
    wrh(b + 80, max_scale / 15.0f);
    wrh(b + 82, max_min / 15.0f);
    float d = rdh(b + 80), dmin = rdh(b + 82);
    uint8_t *scales = b, *qs = b + 16;
    memset(qs, 0, 64);
    for (int j = 0; j < 16; j++) {
      int sc = clampi(d ? (int)roundf(scale[j] / d) : 0, 0, 15);
      int m = clampi(dmin ? (int)roundf(mins[j] / dmin) : 0, 0, 15);
      scales[j] = (uint8_t)(sc | m << 4);
    }
    for (int e = 0; e < 256; e++) {
      int h = e / 128, k = (e % 128) / 32, l = e % 32;
      float ds = d * (float)(scales[e / 16] & 0xF), dm = dmin * (float)(scales[e / 16] >> 4);
      int q = clampi(ds ? (int)roundf((x[e] + dm) / ds) : 0, 0, 3);
      qs[32 * h + l] |= (uint8_t)(q << (2 * k));
    }
    break;
  }
  case PD_GGML_Q3_K: {
    /* per 16: q in -4..3 against a signed 6-bit scale (biased by 32) times d; the scale's sign
     * puts the element of largest magnitude on -4 */
    float s[16], max_s = 0;
    for (int j = 0; j < 16; j++) {
      s[j] = absmax_signed(x + 16 * j, 16) / -4.0f;
      if (fabsf(s[j]) > max_s) max_s = fabsf(s[j]);
    }
    wrh(b + 108, max_s / 31.0f);
    float d = rdh(b + 108);
    uint8_t *hmask = b, *qs = b + 32, *packed = b + 96;
    int8_t sc[16];
    memset(b, 0, 108);
    for (int k = 0; k < 16; k++) {
      int v = clampi(d ? (int)roundf(s[k] / d) : 0, -32, 31) + 32;
      packed[k % 8] |= (uint8_t)((v & 0xF) << (k < 8 ? 0 : 4));
      packed[8 + k % 4] |= (uint8_t)((v >> 4) << (2 * (k / 4)));
    }
    pd_q3k_scales(packed, sc);
    for (int e = 0; e < 256; e++) {
      int h = e / 128, k = (e % 128) / 32, l = e % 32;
      float ds = d * (float)sc[e / 16];
      int q = clampi(ds ? (int)roundf(x[e] / ds) : 0, -4, 3) + 4; /* 0..7 */
      qs[32 * h + l] |= (uint8_t)((q & 3) << (2 * k));
      hmask[l] |= (uint8_t)((q >> 2) << (4 * h + k));
    }
    break;
  }
  case PD_GGML_Q4_K:
  case PD_GGML_Q5_K: {
    const int five = t == PD_GGML_Q5_K, top = five ? 31 : 15;
    float scale[8], mins[8];
    for (int j = 0; j < 8; j++) {
      float mn, mx;
      minmax(x + 32 * j, 32, &mn, &mx);
      if (mn > 0) mn = 0;
      scale[j] = (mx - mn) / (float)top;
      mins[j] = -mn;
    }
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; j++) {
      if (scale[j] > max_scale) max_scale = scale[j];
      if (mins[j] > max_min) max_min = mins[j];
    }
    float d = max_scale / 63.0f, dmin = max_min / 63.0f;
    wrh(b, d);
    wrh(b + 2, dmin);
    d = rdh(b), dmin = rdh(b + 2); /* quantize against the stored (rounded) values */
    uint8_t sc[8], mq[8];
    for (int j = 0; j < 8; j++) {
      sc[j] = (uint8_t)clampi(d ? (int)roundf(scale[j] / d) : 0, 0, 63);
      mq[j] = (uint8_t)clampi(dmin ? (int)roundf(mins[j] / dmin) : 0, 0, 63);
    }
    uint8_t *scales = b + 4, *qh = b + 16, *qs = b + (five ? 48 : 16);
    memset(scales, 0, 12);
    if (five) memset(qh, 0, 32);
    for (int j = 0; j < 4; j++) {
      scales[j] = (uint8_t)((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
      scales[j + 4] = (uint8_t)((mq[j] & 63) | ((mq[j + 4] >> 4) << 6));
      scales[j + 8] = (uint8_t)((sc[j + 4] & 0xF) | ((mq[j + 4] & 0xF) << 4));
    }
    for (int j = 0; j < 8; j += 2) {
      for (int half = 0; half < 2; half++) {
        float ds = d * sc[j + half], dm = dmin * mq[j + half];
        float ids = ds ? 1.0f / ds : 0.0f;
        for (int l = 0; l < 32; l++) {
          int q = clampi((int)roundf((x[32 * (j + half) + l] + dm) * ids), 0, top);
          if (half == 0)
            qs[16 * j + l] = (uint8_t)(q & 0xF);
          else
            qs[16 * j + l] |= (uint8_t)((q & 0xF) << 4);
          if (five) qh[l] |= (uint8_t)((q >> 4) << (j + half));
        }
      }
    }
    break;
  }
  case PD_GGML_Q6_K: {
    float s[16], max_s = 0;
    for (int j = 0; j < 16; j++) {
      s[j] = fabsf(absmax_signed(x + 16 * j, 16)) / 31.0f;
      if (s[j] > max_s) max_s = s[j];
    }
    float d = max_s / 127.0f;
    uint8_t *ql = b, *qh = b + 128;
    int8_t *sc = (int8_t *)(b + 192);
    wrh(b + 208, d);
    d = rdh(b + 208);
    for (int j = 0; j < 16; j++) sc[j] = (int8_t)clampi(d ? (int)roundf(s[j] / d) : 0, -128, 127);
    memset(ql, 0, 128);
    memset(qh, 0, 64);
    for (int n = 0; n < 256; n += 128) {
      for (int l = 0; l < 32; l++) {
        int is = (n / 128) * 8 + l / 16;
        int q[4];
        for (int k = 0; k < 4; k++) {
          float ds = d * (float)sc[is + 2 * k];
          q[k] = clampi(ds ? (int)roundf(x[n + l + 32 * k] / ds) : 0, -32, 31) + 32;
        }
        ql[n / 2 + l] = (uint8_t)((q[0] & 0xF) | ((q[2] & 0xF) << 4));
        ql[n / 2 + l + 32] = (uint8_t)((q[1] & 0xF) | ((q[3] & 0xF) << 4));
        qh[n / 4 + l] =
            (uint8_t)((q[0] >> 4) | ((q[1] >> 4) << 2) | ((q[2] >> 4) << 4) | ((q[3] >> 4) << 6));
      }
    }
    break;
  }
  }
}

int pd_quantize_row(enum pd_ggml_type t, const float *src, void *dst, int64_t n) {
  if (!pd_ggml_row_bytes(t, n) && n) return PD_EINVAL;
  int be = pd_ggml_block_elems(t);
  size_t bb = pd_ggml_block_bytes(t);
  uint8_t *p = dst;
  for (int64_t i = 0; i < n; i += be, p += bb) q_block(t, src + i, p);
  return PD_OK;
}
