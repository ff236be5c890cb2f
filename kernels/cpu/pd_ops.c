/* pd_ops.c -- see pd_ops.h. Scalar loops the compiler vectorises; none is a hot spot next to the
 * matmuls and attention. */
#include "pd_ops.h"

#include <math.h>

void pd_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps) {
  float ss = 0;
  for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
  float inv = 1.0f / sqrtf(ss / (float)n + eps);
  for (int64_t i = 0; i < n; i++) out[i] = x[i] * inv * w[i];
}

void pd_rope(float *x, int n_heads, int head_dim, int rot_dim, int pos, float theta_base, int neox,
             const float *freq_factors) {
  for (int i = 0; i < rot_dim / 2; i++) {
    float freq = powf(theta_base, -2.0f * (float)i / (float)rot_dim);
    if (freq_factors) freq /= freq_factors[i];
    float ang = (float)pos * freq, c = cosf(ang), s = sinf(ang);
    for (int h = 0; h < n_heads; h++) {
      float *v = x + (int64_t)h * head_dim;
      int a = neox ? i : 2 * i, b = neox ? i + rot_dim / 2 : 2 * i + 1;
      float x0 = v[a], x1 = v[b];
      v[a] = x0 * c - x1 * s;
      v[b] = x0 * s + x1 * c;
    }
  }
}

void pd_swiglu(float *gate, const float *up, int64_t n) {
  for (int64_t i = 0; i < n; i++) gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

void pd_add(float *x, const float *y, int64_t n) {
  for (int64_t i = 0; i < n; i++) x[i] += y[i];
}
