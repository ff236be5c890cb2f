/*
 * test_attention.c -- the CPU paged attention and KV store (kernels/cpu/pd_attention.c) on their
 * own, for every cache dtype.
 *
 *   - layout: block sizes, and an fp8 block's row scales after its elements, one per row, none
 *     shared, none overlapping another row's elements;
 *   - fp8 rows: each element is fp8(x / s) with s = max|x| / 448, the largest element decodes to
 *     +-448 s, a zero row has scale 1 and zero bytes, and every element is within 1/16 of itself
 *     (3 mantissa bits) or 2^-10 s (the subnormal step);
 *   - attention on random inputs (GQA 1, 3 and 8, head_dim 36, 64, 96 and 128, contexts that end
 *     inside a block and span one to three key segments, several sequences with decode and
 *     prefill rows in one call) against a
 *     double-precision softmax computed from the values the pool holds: within 2e-5 of the
 *     largest |v|; and against the f32 values before they were stored, within the dtype's
 *     tolerance (f32 2e-5, f16 2e-3, bf16 2e-2, fp8 1.5e-1 of the largest |v|; measured 4e-7,
 *     6e-4, 6.5e-3, 0.078-0.089);
 *   - outputs are poisoned with NaN first, so a row that is not written fails;
 *   - a row's output is identical, bit for bit, in a prefill chunk, decoded alone, after another
 *     sequence's rows and with 1 or 2 threads (f32, f16, and a head_dim that is not a multiple
 *     of 8).
 */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "pd_attention.h"
#include "pd_check.h"
#include "pd_err.h"

static uint64_t rng = 12345;
static float frand(void) {
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

START_TEST(fp8_block_layout) {
  pd_kv_layout L = {3, 2, 64, 16, PD_DTYPE_FP8_E4M3};
  size_t rows = 2 * 3 * 2 * 16, bb = pd_kv_block_bytes(&L);
  ck_assert_uint_eq(bb, rows * 64 + rows * 4);
  L.dtype = PD_DTYPE_F16;
  ck_assert_uint_eq(pd_kv_block_bytes(&L), rows * 64 * 2);
  L.dtype = PD_DTYPE_FP8_E4M3;
  /* every row's scale is distinct, 4-aligned, after every element and inside the block */
  unsigned char *seen = calloc(bb, 1);
  for (int layer = 0; layer < 3; layer++)
    for (int kv = 0; kv < 2; kv++)
      for (int h = 0; h < 2; h++)
        for (int r = 0; r < 16; r++) {
          size_t off = pd_kv_scale_offset(&L, layer, kv, h, r);
          ck_assert_uint_ge(off, rows * 64);
          ck_assert_uint_le(off + 4, bb);
          ck_assert_uint_eq(off % 4, 0);
          ck_assert_int_eq(seen[off], 0);
          seen[off] = 1;
        }
  free(seen);
}
END_TEST

START_TEST(fp8_rows_are_scaled_and_rounded) {
  pd_kv_layout L = {1, 1, 64, 4, PD_DTYPE_FP8_E4M3};
  size_t bb = pd_kv_block_bytes(&L);
  uint8_t *pool = malloc(bb);
  memset(pool, 0xa5, bb);
  float k[4 * 64], v[4 * 64];
  for (int i = 0; i < 4 * 64; i++) k[i] = frand() * 37.0f, v[i] = frand() * 1e-3f;
  for (int d = 0; d < 64; d++) k[2 * 64 + d] = 0.0f; /* row 2 of K: all zero */
  k[3 * 64 + 5] = 1e6f;                              /* row 3 of K: one huge element */
  int32_t table[1] = {0};
  pd_attn_seq s = {table, 1, 0, 4, 0};
  ck_assert_int_eq(pd_kv_store(&L, pool, &s, 0, k, v), PD_OK);
  for (int kv = 0; kv < 2; kv++)
    for (int r = 0; r < 4; r++) {
      const float *x = (kv ? v : k) + r * 64;
      float amax = 0.0f, sc;
      for (int d = 0; d < 64; d++) amax = fmaxf(amax, fabsf(x[d]));
      memcpy(&sc, pool + pd_kv_scale_offset(&L, 0, kv, 0, r), 4);
      ck_assert_float_eq(sc, amax > 0 ? amax / 448.0f : 1.0f);
      ck_assert_float_eq(sc, pd_kv_fp8_row_scale(amax));
      const uint8_t *e = pool + pd_kv_elem_offset(&L, 0, kv, 0, r);
      for (int d = 0; d < 64; d++) {
        ck_assert_uint_eq(e[d], pd_f32_to_fp8e4m3(x[d] / sc));
        float back = pd_fp8e4m3_to_f32(e[d]) * sc;
        if (fabsf(x[d]) == amax && amax > 0) ck_assert_float_eq(fabsf(back), 448.0f * sc);
        ck_assert_msg(fabsf(back - x[d]) <= fmaxf(fabsf(x[d]) / 16.0f, sc / 1024.0f),
                      "kv %d row %d dim %d: %g stored as %g", kv, r, d, x[d], back);
      }
    }
  const uint8_t *zero_row = pool + pd_kv_elem_offset(&L, 0, 0, 0, 2);
  for (int d = 0; d < 64; d++) ck_assert_uint_eq(zero_row[d], 0);
  ck_assert_float_eq(pd_kv_fp8_row_scale(0.0f), 1.0f);
  ck_assert_float_eq(pd_kv_fp8_row_scale(INFINITY), 1.0f);
  ck_assert_float_eq(pd_kv_fp8_row_scale(NAN), 1.0f);
  free(pool);
}
END_TEST

/* A context of one token: attention returns its V row exactly (weight exp(0) = 1, sum 1), so the
 * rows read back give every e4m3 byte's decoded value times the row's scale, whatever path
 * (vector or scalar) reads them: it must be pd_fp8e4m3_to_f32(byte) * scale, bit for bit. */
START_TEST(fp8_every_byte_reads_back_exactly) {
  pd_kv_layout L = {1, 1, 64, 4, PD_DTYPE_FP8_E4M3};
  size_t bb = pd_kv_block_bytes(&L);
  uint8_t *pool = calloc(4, bb);
  const float scales[4] = {0.37f, 1.0f, 3.0e-3f, 1.0e20f};
  int32_t tables[4] = {0, 1, 2, 3};
  pd_attn_seq seqs[4];
  for (int s = 0; s < 4; s++) {
    uint8_t *blk = pool + (size_t)s * bb;
    for (int d = 0; d < 64; d++) blk[pd_kv_elem_offset(&L, 0, 1, 0, 0) + d] = (uint8_t)(64 * s + d);
    memcpy(blk + pd_kv_scale_offset(&L, 0, 1, 0, 0), &scales[s], 4);
    memcpy(blk + pd_kv_scale_offset(&L, 0, 0, 0, 0), &scales[s], 4); /* K: zeros, any scale */
    seqs[s] = (pd_attn_seq){&tables[s], 1, 0, 1, s};
  }
  float q[4 * 64] = {0}, out[4 * 64];
  ck_assert_int_eq(pd_attn_paged(&L, pool, 0, 1, q, out, seqs, 4, 0.125f), PD_OK);
  for (int s = 0; s < 4; s++)
    for (int d = 0; d < 64; d++) {
      float want = pd_fp8e4m3_to_f32((uint8_t)(64 * s + d)) * scales[s], got = out[64 * s + d];
      if (isnan(want))
        ck_assert_msg(isnan(got), "byte 0x%02x: %g, want NaN", 64 * s + d, got);
      else if (want == 0.0f) /* 0 + 1 * -0 is +0: the sign of a zero does not survive the sum */
        ck_assert_msg(got == 0.0f, "byte 0x%02x: %g, want 0", 64 * s + d, got);
      else
        ck_assert_msg(memcmp(&got, &want, 4) == 0, "byte 0x%02x: %g, want %g", 64 * s + d, got,
                      want);
    }
  free(pool);
}
END_TEST

/* (dtype, head_dim, n_heads / n_kv_heads, block tokens) of each loop iteration */
static const struct {
  enum pd_dtype dt;
  int hd, group;
  double tol; /* against the f32 inputs, times the largest |v| */
  int block_tokens;
} cases[] = {
    {PD_DTYPE_F32, 64, 3, 2e-5, 16},
    {PD_DTYPE_F16, 64, 1, 2e-3, 16},
    {PD_DTYPE_BF16, 128, 8, 2e-2, 16},
    {PD_DTYPE_FP8_E4M3, 64, 3, 1.5e-1, 16},
    {PD_DTYPE_FP8_E4M3, 128, 8, 1.5e-1, 16},
    {PD_DTYPE_FP8_E4M3, 64, 1, 1.5e-1, 16},
    {PD_DTYPE_F16, 36, 3, 2e-3, 16}, /* head_dim not a multiple of 8: the portable loops */
    {PD_DTYPE_F32, 96, 3, 2e-5, 16}, /* 64 + 32 dims of output accumulators */
    /* blocks longer than a key segment (segments start inside a block), and of 32 tokens */
    {PD_DTYPE_F16, 64, 3, 2e-3, 512},
    {PD_DTYPE_FP8_E4M3, 64, 3, 1.5e-1, 512},
    {PD_DTYPE_BF16, 64, 3, 2e-2, 32},
    {PD_DTYPE_F32, 64, 1, 2e-5, 512},
    /* head_dim 40: fp8 rows converted 16, 16 and then 8 at a time; with AVX-512 the 8-lane
     * attention (40 is not a multiple of 16) */
    {PD_DTYPE_FP8_E4M3, 40, 3, 1.5e-1, 16},
};

/* Double-precision causal attention of query row (seq, i, head) over K and V read through
 * get(pos, d) for K (kv = 0) and V (kv = 1); writes head_dim values to o. */
typedef double (*kv_get)(void *ctx, int seq, int kv, int kvh, int pos, int d);

static void reference_row(const float *q, int hd, int n_ctx, kv_get get, void *ctx, int seq,
                          int kvh, float scale, double *o) {
  double *sc = malloc(sizeof(double) * (size_t)n_ctx), mx = -INFINITY, sum = 0;
  for (int p = 0; p < n_ctx; p++) {
    double dot = 0;
    for (int d = 0; d < hd; d++) dot += (double)q[d] * get(ctx, seq, 0, kvh, p, d);
    sc[p] = dot * scale;
    if (sc[p] > mx) mx = sc[p];
  }
  for (int p = 0; p < n_ctx; p++) sum += (sc[p] = exp(sc[p] - mx));
  for (int d = 0; d < hd; d++) {
    double acc = 0;
    for (int p = 0; p < n_ctx; p++) acc += sc[p] * get(ctx, seq, 1, kvh, p, d);
    o[d] = acc / sum;
  }
  free(sc);
}

#define NSEQ 3
typedef struct world {
  pd_kv_layout L;
  uint8_t *pool;
  size_t bb;
  int32_t tables[NSEQ][64];
  float *kin[NSEQ], *vin[NSEQ]; /* (ctx, n_kv, hd) f32: what was stored */
} world;

static double get_input(void *c, int seq, int kv, int kvh, int pos, int d) {
  world *w = c;
  return (kv ? w->vin : w->kin)[seq][((size_t)pos * w->L.n_kv_heads + kvh) * w->L.head_dim + d];
}

static double get_pool(void *c, int seq, int kv, int kvh, int pos, int d) {
  world *w = c;
  const pd_kv_layout *L = &w->L;
  const uint8_t *blk = w->pool + (size_t)w->tables[seq][pos / L->block_tokens] * w->bb;
  int r = pos % L->block_tokens;
  size_t off = pd_kv_elem_offset(L, 1, kv, kvh, r); /* the tests store layer 1 */
  double x = pd_dtype_load(L->dtype, blk + off * pd_dtype_size(L->dtype), (size_t)d);
  if (L->dtype == PD_DTYPE_FP8_E4M3) {
    float s;
    memcpy(&s, blk + pd_kv_scale_offset(L, 1, kv, kvh, r), 4);
    x *= s;
  }
  return x;
}

START_TEST(matches_double_reference) {
  const int hd = cases[_i].hd, n_kv = 2, n_heads = n_kv * cases[_i].group;
  const int B = cases[_i].block_tokens;
  world w = {{2, n_kv, hd, B, cases[_i].dt}, NULL, 0, {{0}}, {NULL}, {NULL}};
  w.bb = pd_kv_block_bytes(&w.L);
  /* per sequence: n_past (stored by an earlier call), n_new (stored now, queried now) */
  const int n_past[NSEQ] = {230, 37, 700}, n_new[NSEQ] = {40, 1, 1}; /* 1 to 3 key segments */
  int total_blocks = 0, rows = 0;
  for (int s = 0; s < NSEQ; s++) {
    int ctx = n_past[s] + n_new[s], nb = (ctx + B - 1) / B;
    for (int b = 0; b < nb; b++) w.tables[s][b] = total_blocks + (b * 7) % nb; /* scattered */
    total_blocks += nb;
    rows += n_new[s];
  }
  w.pool = malloc((size_t)total_blocks * w.bb);
  memset(w.pool, 0xff, (size_t)total_blocks * w.bb);
  float *q = malloc(sizeof(float) * (size_t)rows * n_heads * hd);
  float *out = malloc(sizeof(float) * (size_t)rows * n_heads * hd);
  for (size_t i = 0; i < (size_t)rows * n_heads * hd; i++) q[i] = frand() * 2.0f, out[i] = NAN;
  pd_attn_seq seqs[NSEQ];
  int row = 0;
  for (int s = 0; s < NSEQ; s++) {
    int ctx = n_past[s] + n_new[s], nb = (ctx + B - 1) / B;
    size_t n = (size_t)ctx * n_kv * hd;
    w.kin[s] = malloc(sizeof(float) * n), w.vin[s] = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) w.kin[s][i] = frand() * 3.0f, w.vin[s][i] = frand() * 5.0f;
    /* the past rows as an earlier batch would have stored them, then the new rows */
    if (n_past[s]) {
      pd_attn_seq past = {w.tables[s], nb, 0, n_past[s], 0};
      ck_assert_int_eq(pd_kv_store(&w.L, w.pool, &past, 1, w.kin[s], w.vin[s]), PD_OK);
    }
    seqs[s] = (pd_attn_seq){w.tables[s], nb, n_past[s], n_new[s], row};
    const float *kn = w.kin[s] + (size_t)n_past[s] * n_kv * hd;
    const float *vn = w.vin[s] + (size_t)n_past[s] * n_kv * hd;
    pd_attn_seq now = seqs[s];
    now.row = 0;
    ck_assert_int_eq(pd_kv_store(&w.L, w.pool, &now, 1, kn, vn), PD_OK);
    row += n_new[s];
  }
  float scale = 1.0f / sqrtf((float)hd);
  ck_assert_int_eq(pd_attn_paged(&w.L, w.pool, 1, n_heads, q, out, seqs, NSEQ, scale), PD_OK);
  double *ref = malloc(sizeof(double) * hd), *ideal = malloc(sizeof(double) * hd);
  double worst_pool = 0, worst_input = 0;
  for (int s = 0; s < NSEQ; s++) {
    double vmax = 0;
    for (size_t i = 0; i < (size_t)(n_past[s] + n_new[s]) * n_kv * hd; i++)
      vmax = fmax(vmax, fabs(w.vin[s][i]));
    for (int i = 0; i < n_new[s]; i++)
      for (int h = 0; h < n_heads; h++) {
        const size_t at = (((size_t)seqs[s].row + i) * n_heads + h) * hd;
        int n_ctx = n_past[s] + i + 1, kvh = h / cases[_i].group;
        reference_row(q + at, hd, n_ctx, get_pool, &w, s, kvh, scale, ref);
        reference_row(q + at, hd, n_ctx, get_input, &w, s, kvh, scale, ideal);
        for (int d = 0; d < hd; d++) {
          ck_assert_msg(isfinite(out[at + d]), "seq %d row %d head %d dim %d not written", s, i, h,
                        d);
          worst_pool = fmax(worst_pool, fabs(out[at + d] - ref[d]) / vmax);
          worst_input = fmax(worst_input, fabs(out[at + d] - ideal[d]) / vmax);
        }
      }
  }
  ck_assert_msg(worst_pool <= 2e-5, "%s: %.3g from the pool's values", pd_dtype_name(w.L.dtype),
                worst_pool);
  ck_assert_msg(worst_input <= cases[_i].tol, "%s: %.3g from the f32 inputs",
                pd_dtype_name(w.L.dtype), worst_input);
  for (int s = 0; s < NSEQ; s++) free(w.kin[s]), free(w.vin[s]);
  free(ref), free(ideal), free(q), free(out), free(w.pool);
}
END_TEST

/* A row's output is the same bits whether it is one of a 400-row prefill chunk (crossing key
 * segments and row chunks), decoded alone, placed after another sequence's rows, or computed with
 * 1 or 2 threads: what makes a prefix from the cache equal to the prefix computed now. */
START_TEST(rows_are_batch_invariant) {
  const int hd = _i == 2 ? 36 : 64, n_kv = 2, n_heads = 6, B = 16, ctx = 600, first = 200;
  const enum pd_dtype dt = _i == 1 ? PD_DTYPE_F16 : PD_DTYPE_F32;
  pd_kv_layout L = {1, n_kv, hd, B, dt};
  const size_t bb = pd_kv_block_bytes(&L);
  const int nb = ctx / B + 1;
  int32_t table[64], other_table[2] = {nb, nb + 1};
  for (int b = 0; b < nb; b++) table[b] = (b * 11) % nb;
  uint8_t *pool = malloc((size_t)(nb + 2) * bb);
  memset(pool, 0xff, (size_t)(nb + 2) * bb);
  const size_t row_floats = (size_t)n_heads * hd, kv_floats = (size_t)ctx * n_kv * hd;
  float *k = malloc(sizeof(float) * kv_floats), *v = malloc(sizeof(float) * kv_floats);
  for (size_t i = 0; i < kv_floats; i++) k[i] = frand() * 3.0f, v[i] = frand() * 5.0f;
  pd_attn_seq all = {table, nb, 0, ctx, 0};
  ck_assert_int_eq(pd_kv_store(&L, pool, &all, 0, k, v), PD_OK);
  pd_attn_seq other = {other_table, 2, 0, 20, 0}; /* 20 rows of another sequence */
  ck_assert_int_eq(pd_kv_store(&L, pool, &other, 0, k, v), PD_OK);
  const int n = ctx - first;
  float *q = malloc(sizeof(float) * (size_t)(n + 20) * row_floats);
  for (size_t i = 0; i < (size_t)(n + 20) * row_floats; i++) q[i] = frand() * 2.0f;
  float *chunk = malloc(sizeof(float) * (size_t)n * row_floats);
  float *again = malloc(sizeof(float) * (size_t)(n + 20) * row_floats);
  const float scale = 1.0f / sqrtf((float)hd);
  pd_attn_seq prefill = {table, nb, first, n, 0};
  ck_assert_int_eq(pd_attn_paged(&L, pool, 0, n_heads, q, chunk, &prefill, 1, scale), PD_OK);
  for (int threads = 1; threads <= 2; threads++) {
#ifdef _OPENMP
    omp_set_num_threads(threads);
#endif
    /* the same chunk after another sequence's rows in one call: q rows shifted by 20 */
    float *q2 = malloc(sizeof(float) * (size_t)(n + 20) * row_floats);
    memcpy(q2, q + (size_t)n * row_floats, sizeof(float) * 20 * row_floats);
    memcpy(q2 + 20 * row_floats, q, sizeof(float) * (size_t)n * row_floats);
    pd_attn_seq two[2] = {other, {table, nb, first, n, 20}};
    ck_assert_int_eq(pd_attn_paged(&L, pool, 0, n_heads, q2, again, two, 2, scale), PD_OK);
    ck_assert_msg(memcmp(again + 20 * row_floats, chunk, sizeof(float) * (size_t)n * row_floats) ==
                      0,
                  "%s hd %d: the chunk differs after another sequence, %d threads",
                  pd_dtype_name(dt), hd, threads);
    free(q2);
    const int rows[] = {0, 15, 16, 55, 56, 57, 311, 312, 399};
    for (size_t j = 0; j < sizeof rows / sizeof rows[0]; j++) {
      const int r = rows[j];
      pd_attn_seq one = {table, nb, first + r, 1, 0};
      ck_assert_int_eq(
          pd_attn_paged(&L, pool, 0, n_heads, q + (size_t)r * row_floats, again, &one, 1, scale),
          PD_OK);
      ck_assert_msg(memcmp(again, chunk + (size_t)r * row_floats, sizeof(float) * row_floats) == 0,
                    "%s hd %d: row %d (position %d) decoded alone differs, %d threads",
                    pd_dtype_name(dt), hd, r, first + r, threads);
    }
  }
  free(pool), free(k), free(v), free(q), free(chunk), free(again);
}
END_TEST

/* Sequences that hold the same prefix blocks (a shared system prompt: 592 tokens, two full key
 * segments) are computed together over those segments; each row must still equal, bit for bit,
 * the row computed with its sequence alone -- and the row of a sequence whose copy of the prefix
 * sits in blocks of its own. 17 decode rows and 2 prefill chunks of 40 rows (more than one
 * shared task's rows), each after a tail of its own, and one sequence with another prefix (it
 * must not be taken for a sharer); f16 and fp8 pools, 1 and 2 threads. */
START_TEST(sequences_sharing_prefix_blocks_match_each_alone) {
  enum { N = 21, PREFIX = 592, MAX_TAIL = 80 };
  const int hd = 64, n_kv = 3, n_heads = 9, B = 16, prefix_blocks = PREFIX / B;
  const enum pd_dtype dt = _i ? PD_DTYPE_FP8_E4M3 : PD_DTYPE_F16;
  pd_kv_layout L = {1, n_kv, hd, B, dt};
  const size_t bb = pd_kv_block_bytes(&L), row_floats = (size_t)n_heads * hd;
  const int own_blocks = (MAX_TAIL + B - 1) / B;
  /* the prefix, its copy, another prefix, the tails */
  const int n_pool = 3 * prefix_blocks + N * own_blocks;
  uint8_t *pool = malloc((size_t)n_pool * bb);
  memset(pool, 0xff, (size_t)n_pool * bb);
  static int32_t tables[N][64];
  pd_attn_seq seqs[N];
  float *k = malloc(sizeof(float) * (PREFIX + MAX_TAIL) * n_kv * hd);
  float *v = malloc(sizeof(float) * (PREFIX + MAX_TAIL) * n_kv * hd);
  for (int i = 0; i < PREFIX * n_kv * hd; i++) k[i] = frand() * 3.0f, v[i] = frand() * 5.0f;
  int rows = 0;
  for (int sq = 0; sq < N; sq++) {
    /* the last one holds the prefix in blocks of its own; sequence 7 another prefix */
    const int copy = sq == N - 1, stranger = sq == 7;
    for (int b = 0; b < prefix_blocks; b++)
      tables[sq][b] = copy ? prefix_blocks + b : stranger ? 2 * prefix_blocks + b : b;
    for (int b = 0; b < own_blocks; b++)
      tables[sq][prefix_blocks + b] = 3 * prefix_blocks + sq * own_blocks + b;
    /* the copy repeats the sequence before it: same tail, same rows, same queries */
    const int like = copy ? sq - 1 : sq;
    const int n_new = like == 3 || like == 11 ? 40 : 1, extra = (like * 7) % (MAX_TAIL - n_new);
    seqs[sq] = (pd_attn_seq){tables[sq], prefix_blocks + own_blocks, PREFIX + extra, n_new, rows};
    rows += n_new;
    if (sq == 0 || copy || stranger) { /* the shared blocks, the copy, the other prefix */
      pd_attn_seq pre = {tables[sq], prefix_blocks, 0, PREFIX, 0};
      float *ks = k, *vs = v;
      if (stranger) {
        ks = malloc(sizeof(float) * PREFIX * n_kv * hd),
        vs = malloc(sizeof(float) * PREFIX * n_kv * hd);
        for (int i = 0; i < PREFIX * n_kv * hd; i++) ks[i] = frand() * 3.0f, vs[i] = frand() * 5.0f;
      }
      ck_assert_int_eq(pd_kv_store(&L, pool, &pre, 0, ks, vs), PD_OK);
      if (stranger) free(ks), free(vs);
    }
    const int tail = extra + n_new; /* K and V of the sequence's own positions */
    for (int i = 0; i < tail * n_kv * hd && !copy; i++)
      k[PREFIX * n_kv * hd + i] = frand() * 3.0f, v[PREFIX * n_kv * hd + i] = frand() * 5.0f;
    pd_attn_seq own = {tables[sq], prefix_blocks + own_blocks, PREFIX, tail, 0};
    ck_assert_int_eq(pd_kv_store(&L, pool, &own, 0, k + (size_t)PREFIX * n_kv * hd,
                                 v + (size_t)PREFIX * n_kv * hd),
                     PD_OK);
  }
  float *q = malloc(sizeof(float) * (size_t)rows * row_floats);
  for (size_t i = 0; i < (size_t)rows * row_floats; i++) q[i] = frand() * 2.0f;
  memcpy(q + (size_t)seqs[N - 1].row * row_floats, q + (size_t)seqs[N - 2].row * row_floats,
         sizeof(float) * row_floats);
  float *alone = malloc(sizeof(float) * (size_t)rows * row_floats);
  float *together = malloc(sizeof(float) * (size_t)rows * row_floats);
  const float scale = 1.0f / sqrtf((float)hd);
  for (int sq = 0; sq < N; sq++) {
    pd_attn_seq one = seqs[sq];
    one.row = 0;
    ck_assert_int_eq(pd_attn_paged(&L, pool, 0, n_heads, q + (size_t)seqs[sq].row * row_floats,
                                   alone + (size_t)seqs[sq].row * row_floats, &one, 1, scale),
                     PD_OK);
  }
  for (int threads = 1; threads <= 2; threads++) {
#ifdef _OPENMP
    omp_set_num_threads(threads);
#endif
    for (size_t i = 0; i < (size_t)rows * row_floats; i++) together[i] = NAN; /* poison */
    ck_assert_int_eq(pd_attn_paged(&L, pool, 0, n_heads, q, together, seqs, N, scale), PD_OK);
    for (int sq = 0; sq < N; sq++)
      ck_assert_msg(memcmp(together + (size_t)seqs[sq].row * row_floats,
                           alone + (size_t)seqs[sq].row * row_floats,
                           sizeof(float) * (size_t)seqs[sq].n_new * row_floats) == 0,
                    "%s: sequence %d differs in the batch from alone, %d threads",
                    pd_dtype_name(dt), sq, threads);
    /* the copy (its own blocks, computed alone) equals its twin (shared blocks, together) */
    ck_assert_msg(memcmp(together + (size_t)seqs[N - 1].row * row_floats,
                         together + (size_t)seqs[N - 2].row * row_floats,
                         sizeof(float) * row_floats) == 0,
                  "%s: the prefix in blocks of its own gives other bits", pd_dtype_name(dt));
  }
  free(pool), free(k), free(v), free(q), free(alone), free(together);
}
END_TEST

int main(void) {
  Suite *s = suite_create("attention");
  TCase *t = tcase_create("cpu");
  tcase_set_timeout(t, 120);
  tcase_add_test(t, fp8_block_layout);
  tcase_add_test(t, fp8_rows_are_scaled_and_rounded);
  tcase_add_test(t, fp8_every_byte_reads_back_exactly);
  tcase_add_loop_test(t, matches_double_reference, 0, (int)(sizeof cases / sizeof cases[0]));
  tcase_add_loop_test(t, rows_are_batch_invariant, 0, 3);
  tcase_add_loop_test(t, sequences_sharing_prefix_blocks_match_each_alone, 0, 2);
  suite_add_tcase(s, t);
  return pd_check_run(s, 1);
}
