/*
 * test_cuda_attention.c -- the CUDA attention, KV store and block moves against the CPU
 * reference (pd_attn_paged, pd_kv_store, memcpy) on fresh random inputs.
 *
 * Every attention case builds a batch (sequences with n_past cached tokens and n_new new rows,
 * block tables shuffled over a pool of f32, f16, bf16 or fp8-e4m3 blocks, two layers of which layer 1 is
 * used), stores the new rows' K and V with pd_cuda_kv_store and with pd_kv_store and requires the
 * two pools to be equal byte for byte, then runs pd_cuda_attn against pd_attn_paged. The output
 * and the workspace are poisoned with NaN before each run, so an element not written, or a
 * partial read before it is written, fails. Unused block-table entries are -1, so a read past a
 * sequence's blocks is out of bounds for compute-sanitizer.
 *
 * Tolerance, all dtypes: |gpu - cpu| <= 5e-4 * max|cpu| + 1e-6 (the f16 tile kernel, run on f16
 * pools as a fourth pass: 1.5e-2 * max|cpu| + 1e-3, TOL_F16_REL). The kv store is bit-exact, so
 * both sides read the same K and V elements whatever the dtype (f32: 1e-4 would do; f16, bf16
 * and fp8 with its row scales add no error of their own here); they differ only in summation
 * order, exp2 against expf and
 * the scale folded into q. A whole 64-token tile dropped or read twice in a 32k context moves the
 * output by ~1e-3 of its size and fails; single positions are checked by the short contexts and
 * by the sharp (q x 16) cases, where a few positions carry most of the weight.
 *
 * Coverage: GQA ratios 1, 3, 8 and 16 (two query-head chunks in decode), head_dim 64 and 128,
 * block sizes 8, 16, 64 and 128, contexts 1 to 32,768, partial blocks, prefill chunks with
 * n_past == 0 and > 0 up to 4,096 new rows, batches mixing prefill and decode rows, the split
 * and the direct prefill paths, the tensor-core and the SIMT tile kernels on every prefill and
 * cascade case, cascade (shared prefix) against the CPU and against plain decode,
 * the legacy pd_cuda_attn_decode, f32 -> f16 / bf16 / fp8 store of special values (NaN payloads,
 * infinities, subnormals, ties; for fp8 also rows whose scale is 1, so the edges of e4m3 itself
 * are stored), and block copy / zero / to_host / from_host byte-exact in every
 * transfer mode with pinned and pageable host memory.
 * PD_CUDA_TEST_QUICK=1 in the environment skips the long-context cases (contexts past 4,096 and
 * the 4,096-row prefills): for compute-sanitizer racecheck, which is slow on shared memory.
 * Exits 77 (skipped) when there is no GPU.
 */
#include <check.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_attention.h"
#include "pd_check.h"
#include "pd_gpu_gate.h"
#include "pd_cuda_attention.h"
#include "pd_cuda_launch.h"
#include "pd_cuda_batch.h"
#include "pd_err.h"

static uint64_t rng = 12345;
static uint64_t next_u64(void) {
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  return rng;
}
static float frand(void) { /* [-1, 1) */
  return (float)((next_u64() >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}
static int irand(int n) {
  return (int)(next_u64() % (uint64_t)n);
}

#define CK(x)                                                                                      \
  do {                                                                                             \
    cudaError_t e_ = (x);                                                                          \
    ck_assert_msg(e_ == cudaSuccess, "%s: %s", #x, cudaGetErrorString(e_));                        \
  } while (0)

static void *dev_upload(const void *h, size_t n) {
  void *d = NULL;
  CK(cudaMalloc(&d, n ? n : 16));
  if (h && n) CK(cudaMemcpy(d, h, n, cudaMemcpyHostToDevice));
  return d;
}

static const float TOL_REL = 5e-4f, TOL_ABS = 1e-6f;
/* The f16 tile kernel (pd_cuda_attn_set_tile_kernel(PD_CUDA_TILE_F16)) rounds Q (pre-scaled) and
 * P to f16: a score moves by up to 2^-12 of sum |q_i k_i| (~0.06 in the log2 domain for the sharp
 * hd 128 cases, far less on average), a weight by 2^-12. Stated before it was run on a GPU: the
 * first run there confirms or corrects it. */
static const float TOL_F16_REL = 1.5e-2f, TOL_F16_ABS = 1e-3f;

/* Compares got with ref over n floats; one assertion with the first offender. */
static void compare_within(const float *ref, const float *got, size_t n, int n_heads, int hd,
                           const char *what, float tol_rel, float tol_abs) {
  float mx = 0, worst = 0;
  for (size_t i = 0; i < n; i++) mx = fmaxf(mx, fabsf(ref[i]));
  size_t bad = (size_t)-1;
  for (size_t i = 0; i < n; i++) {
    float diff = fabsf(got[i] - ref[i]);
    if (isnan(got[i]) || !(diff <= tol_rel * mx + tol_abs)) {
      bad = i;
      break;
    }
    worst = fmaxf(worst, diff);
  }
  if (bad != (size_t)-1) {
    size_t row = bad / ((size_t)n_heads * hd), head = bad / hd % n_heads, d = bad % hd;
    ck_abort_msg("%s: row %zu head %zu dim %zu: gpu %g cpu %g (max |cpu| %g)", what, row, head, d,
                 got[bad], ref[bad], mx);
  }
  printf("ok: %s: max |diff| %.2e (max |ref| %.2e)\n", what, worst, mx);
}

static void compare(const float *ref, const float *got, size_t n, int n_heads, int hd,
                    const char *what) {
  compare_within(ref, got, n, n_heads, hd, what, TOL_REL, TOL_ABS);
}

/* Fills n_blocks blocks with random values of L's dtype; an fp8 block's elements span the e4m3
 * range and its row scales are in [0.5, 2.5) / 448, so the values are of the order of 1 as in the
 * other dtypes. */
static void fill_pool(const pd_kv_layout *L, uint8_t *pool, int n_blocks) {
  const size_t bb = pd_kv_block_bytes(L);
  const size_t elems = 2u * (size_t)L->n_layers * (size_t)L->n_kv_heads * (size_t)L->block_tokens *
                       (size_t)L->head_dim;
  const int fp8 = L->dtype == PD_DTYPE_FP8_E4M3;
  for (int blk = 0; blk < n_blocks; blk++) {
    uint8_t *b = pool + (size_t)blk * bb;
    for (size_t i = 0; i < elems; i++) pd_dtype_store(L->dtype, b, i, frand() * (fp8 ? 448 : 1));
    for (size_t r = 0; fp8 && r < elems / (size_t)L->head_dim; r++) {
      float sc = (1.5f + frand()) / 448.0f;
      memcpy(b + elems + r * sizeof sc, &sc, sizeof sc);
    }
  }
}

/* ---- one attention case ------------------------------------------------------------------- */

typedef struct tcase {
  enum pd_dtype dt;
  int hd, n_kv, group, B;
  int n_seqs;
  const int *n_past, *n_new;
  int shared_blocks; /* > 0: these leading table entries are the same blocks in every sequence */
  float qscale;      /* q uniform in [-qscale, qscale] */
  int stream;        /* 1: run on a created stream, 0: the NULL stream */
} tcase;

/* When set, run_case copies its first pass's output (the tensor-core tile kernel's) here, up to
 * keep_cap floats, and its element count to keep_n: for comparing two runs of one case. */
static float *keep_out;
static size_t keep_cap, keep_n;

/* When above the batch's longest context, run_case passes this as the batch's max_ctx bound (and
 * block-table stride) instead, as the model does with its power-of-two decode buckets. */
static int ctx_bound;

static void run_case(const tcase *c) {
  const int layers = 2, layer = 1, n_heads = c->n_kv * c->group, hd = c->hd, B = c->B;
  pd_kv_layout L = {layers, c->n_kv, hd, B, c->dt};
  const size_t bb = pd_kv_block_bytes(&L);
  int n_rows = 0, max_new = 0, max_ctx = 0, max_blocks = 0, sum_blocks = 0;
  for (int s = 0; s < c->n_seqs; s++) {
    int ctx = c->n_past[s] + c->n_new[s], nb = (ctx + B - 1) / B;
    n_rows += c->n_new[s];
    max_new = c->n_new[s] > max_new ? c->n_new[s] : max_new;
    max_ctx = ctx > max_ctx ? ctx : max_ctx;
    max_blocks = nb > max_blocks ? nb : max_blocks;
    sum_blocks += nb - c->shared_blocks;
  }
  if (ctx_bound > max_ctx) {
    max_ctx = ctx_bound;
    if ((ctx_bound + B - 1) / B > max_blocks) max_blocks = (ctx_bound + B - 1) / B;
  }
  max_blocks += 1; /* a row stride longer than any table */
  const int n_blocks = c->shared_blocks + sum_blocks + 3;
  char what[256];
  snprintf(what, sizeof what,
           "%s hd %d kv %d group %d B %d: %d seqs, %d rows, max_new %d, max_ctx %d, shared %d, "
           "qscale %g",
           pd_dtype_name(c->dt), hd, c->n_kv, c->group, B, c->n_seqs, n_rows, max_new, max_ctx,
           c->shared_blocks, c->qscale);

  /* the pool: random values of the dtype */
  uint8_t *pool = malloc(bb * (size_t)n_blocks), *ref_pool = malloc(bb * (size_t)n_blocks);
  ck_assert(pool && ref_pool);
  fill_pool(&L, pool, n_blocks);
  memcpy(ref_pool, pool, bb * (size_t)n_blocks);
  /* tables: shared ids first, then each sequence's own, all shuffled over the pool */
  int32_t *perm = malloc(sizeof(int32_t) * (size_t)n_blocks);
  for (int i = 0; i < n_blocks; i++) perm[i] = i;
  for (int i = n_blocks - 1; i > 0; i--) {
    int j = irand(i + 1);
    int32_t t = perm[i];
    perm[i] = perm[j], perm[j] = t;
  }
  int32_t *tables = malloc(sizeof(int32_t) * (size_t)c->n_seqs * (size_t)max_blocks);
  int32_t *n_past = malloc(sizeof(int32_t) * (size_t)c->n_seqs),
          *n_new = malloc(sizeof(int32_t) * (size_t)c->n_seqs),
          *row_start = malloc(sizeof(int32_t) * (size_t)c->n_seqs),
          *row_seq = malloc(sizeof(int32_t) * (size_t)(n_rows ? n_rows : 1));
  pd_attn_seq *seqs = malloc(sizeof *seqs * (size_t)c->n_seqs);
  int next = c->shared_blocks, row = 0;
  for (int s = 0; s < c->n_seqs; s++) {
    int32_t *t = tables + (size_t)s * max_blocks;
    int nb = (c->n_past[s] + c->n_new[s] + B - 1) / B;
    for (int j = 0; j < max_blocks; j++)
      t[j] = j < c->shared_blocks ? perm[j] : j < nb ? perm[next++] : -1;
    n_past[s] = c->n_past[s], n_new[s] = c->n_new[s], row_start[s] = row;
    for (int i = 0; i < c->n_new[s]; i++) row_seq[row + i] = s;
    seqs[s] = (pd_attn_seq){t, max_blocks, c->n_past[s], c->n_new[s], row};
    row += c->n_new[s];
  }
  ck_assert_int_le(next, n_blocks);
  const size_t qn = (size_t)n_rows * n_heads * hd, kn = (size_t)n_rows * c->n_kv * hd;
  float *q = malloc(qn * 4 + 4), *k = malloc(kn * 4 + 4), *v = malloc(kn * 4 + 4);
  float *ref = malloc(qn * 4 + 4), *got = malloc(qn * 4 + 4);
  for (size_t i = 0; i < qn; i++) q[i] = frand() * c->qscale;
  for (size_t i = 0; i < kn; i++) k[i] = frand(), v[i] = frand();

  /* CPU reference: store, then attention */
  for (int s = 0; s < c->n_seqs; s++)
    ck_assert_int_eq(pd_kv_store(&L, ref_pool, &seqs[s], layer, k, v), 0);
  const float scale = 1.0f / sqrtf((float)hd);
  ck_assert_int_eq(pd_attn_paged(&L, ref_pool, layer, n_heads, q, ref, seqs, c->n_seqs, scale), 0);

  /* GPU */
  cudaStream_t st = NULL;
  if (c->stream) CK(cudaStreamCreate(&st));
  void *d_pool = dev_upload(pool, bb * (size_t)n_blocks);
  void *d_q = dev_upload(q, qn * 4), *d_k = dev_upload(k, kn * 4), *d_v = dev_upload(v, kn * 4);
  void *d_out = dev_upload(NULL, qn * 4);
  pd_cuda_batch b = {0};
  b.n_seqs = c->n_seqs, b.n_rows = n_rows, b.max_blocks = max_blocks, b.max_new = max_new;
  b.max_ctx = max_ctx, b.shared_blocks = c->shared_blocks;
  b.block_tables = dev_upload(tables, sizeof(int32_t) * (size_t)c->n_seqs * max_blocks);
  b.n_past = dev_upload(n_past, sizeof(int32_t) * (size_t)c->n_seqs);
  b.n_new = dev_upload(n_new, sizeof(int32_t) * (size_t)c->n_seqs);
  b.row_start = dev_upload(row_start, sizeof(int32_t) * (size_t)c->n_seqs);
  b.row_seq = dev_upload(row_seq, sizeof(int32_t) * (size_t)(n_rows ? n_rows : 1));
  char err[256] = "";
  int rc = pd_cuda_kv_store(&L, d_pool, layer, &b, d_k, d_v, st, err, sizeof err);
  ck_assert_msg(rc == 0, "kv store: %s", err);
  uint8_t *back = malloc(bb * (size_t)n_blocks);
  CK(cudaStreamSynchronize(st));
  CK(cudaMemcpy(back, d_pool, bb * (size_t)n_blocks, cudaMemcpyDeviceToHost));
  ck_assert_msg(memcmp(back, ref_pool, bb * (size_t)n_blocks) == 0,
                "kv store differs from pd_kv_store (%s)", what);
  free(back);

  /* attention: as given with the tensor-core and the SIMT tile kernel (prefill and the cascade's
   * prefix use it), for a cascade batch also as plain decode, and on an f16 pool with the f16
   * tile kernel */
  const int cascade = c->shared_blocks > 0 && max_new == 1, tiles = max_new > 1 || cascade;
  for (int pass = 0; pass < 4; pass++) {
    if ((pass == 1 && !tiles) || (pass == 2 && !cascade) ||
        (pass == 3 && (!tiles || c->dt != PD_DTYPE_F16)))
      continue;
    b.shared_blocks = pass == 2 ? 0 : c->shared_blocks;
    pd_cuda_attn_set_tile_kernel(pass == 1   ? PD_CUDA_TILE_SIMT
                                 : pass == 3 ? PD_CUDA_TILE_F16
                                             : PD_CUDA_TILE_TF32);
    size_t ws_bytes = pd_cuda_attn_batch_workspace_bytes(&L, n_heads, &b);
    void *d_ws = NULL;
    if (ws_bytes) {
      CK(cudaMalloc(&d_ws, ws_bytes));
      CK(cudaMemset(d_ws, 0xff, ws_bytes)); /* NaN poison */
    }
    CK(cudaMemset(d_out, 0xff, qn * 4));
    rc = pd_cuda_attn(&L, d_pool, layer, n_heads, d_q, d_out, &b, scale, d_ws, ws_bytes, st, err,
                      sizeof err);
    ck_assert_msg(rc == 0, "attention: %s (%s)", err, what);
    CK(cudaStreamSynchronize(st));
    CK(cudaGetLastError());
    CK(cudaMemcpy(got, d_out, qn * 4, cudaMemcpyDeviceToHost));
    char label[300];
    snprintf(label, sizeof label, "%s%s", what,
             pass == 3   ? " (f16 tensor cores)"
             : pass == 2 ? " (as plain decode)"
             : !tiles    ? ""
             : pass      ? " (SIMT)"
                         : " (tensor cores)");
    if (pass == 0 && keep_out) {
      ck_assert_uint_le(qn, keep_cap);
      memcpy(keep_out, got, qn * 4), keep_n = qn;
    }
    if (pass == 3)
      compare_within(ref, got, qn, n_heads, hd, label, TOL_F16_REL, TOL_F16_ABS);
    else
      compare(ref, got, qn, n_heads, hd, label);
    if (d_ws) CK(cudaFree(d_ws));
  }
  pd_cuda_attn_set_tile_kernel(PD_CUDA_TILE_TF32);
  cudaFree(d_pool), cudaFree(d_q), cudaFree(d_k), cudaFree(d_v), cudaFree(d_out);
  cudaFree((void *)b.block_tables), cudaFree((void *)b.n_past), cudaFree((void *)b.n_new);
  cudaFree((void *)b.row_start), cudaFree((void *)b.row_seq);
  if (st) CK(cudaStreamDestroy(st));
  free(pool), free(ref_pool), free(perm), free(tables), free(n_past), free(n_new);
  free(row_start), free(row_seq), free(seqs), free(q), free(k), free(v), free(ref), free(got);
}

static int quick(void) {
  const char *q = getenv("PD_CUDA_TEST_QUICK");
  return q && *q && strcmp(q, "0") != 0;
}

#define N_DTYPES 4
static const enum pd_dtype DTYPES[N_DTYPES] = {PD_DTYPE_F32, PD_DTYPE_F16, PD_DTYPE_BF16,
                                               PD_DTYPE_FP8_E4M3};

/* ---- decode ------------------------------------------------------------------------------- */

START_TEST(decode_matches_cpu) {
  const int groups[3] = {1, 3, 8};
  int past[6] = {0, 14, 15, 16, 299, 40}, one[6] = {1, 1, 1, 1, 1, 1};
  for (int di = 0; di < N_DTYPES; di++)
    for (int gi = 0; gi < 3; gi++)
      for (int hd = 64; hd <= 128; hd += 64) {
        tcase c = {DTYPES[di], hd,   gi == 2 ? 1 : 3, groups[gi], 16, 6, past, one,
                   0,          1.0f, (di + gi) & 1};
        run_case(&c);
      }
  /* GQA 16 (two query-head chunks per KV head), block size 8 */
  tcase c2 = {PD_DTYPE_BF16, 64, 2, 16, 8, 6, past, one, 0, 1.0f, 1};
  run_case(&c2);
  if (quick()) return;
  /* long contexts, block size 128 */
  int past_long[3] = {4096, 2047, 32767};
  for (int di = 0; di < N_DTYPES; di++) {
    tcase c = {DTYPES[di], 64, 3, 3, 16, 3, past_long, one, 0, 1.0f, 1};
    run_case(&c);
  }
  tcase c1 = {PD_DTYPE_F16, 128, 8, 4, 16, 3, past_long, one, 0, 16.0f, 0};
  run_case(&c1);
  tcase c3 = {PD_DTYPE_F32, 128, 1, 16, 128, 3, past_long, one, 0, 16.0f, 1};
  run_case(&c3);
  /* many sequences: the decode split count is capped by the grid size */
  int past_many[80], one_many[80];
  for (int s = 0; s < 80; s++) past_many[s] = irand(5000), one_many[s] = 1;
  tcase c4 = {PD_DTYPE_F16, 64, 3, 3, 16, 80, past_many, one_many, 0, 4.0f, 1};
  run_case(&c4);
}
END_TEST

/* ---- prefill ------------------------------------------------------------------------------ */

START_TEST(prefill_matches_cpu) {
  const int groups[3] = {1, 3, 8};
  /* one sequence: chunks with n_past 0 and > 0, odd sizes, partial blocks */
  int pasts[5] = {0, 5, 16, 300, 0}, news[5] = {2, 17, 64, 100, 1000};
  for (int di = 0; di < N_DTYPES; di++)
    for (int gi = 0; gi < 3; gi++)
      for (int hd = 64; hd <= 128; hd += 64)
        for (int i = 0; i < 5; i++) {
          if (i == 4 && (hd == 128 || gi == 0)) continue; /* keep the long ones few */
          tcase c = {DTYPES[di], hd,   gi == 2 ? 1 : 3, groups[gi], 16, 1, &pasts[i], &news[i], 0,
                     1.0f,       i & 1};
          run_case(&c);
        }
  /* batches mixing prefill chunks and decode rows, several block sizes */
  int mp[6] = {0, 100, 16, 5, 1000, 33}, mn[6] = {37, 1, 64, 1, 200, 2};
  const int bs[4] = {8, 16, 64, 128};
  for (int di = 0; di < N_DTYPES; di++)
    for (int gi = 0; gi < 3; gi++) {
      tcase c = {DTYPES[di],
                 gi == 1 ? 128 : 64,
                 gi == 2 ? 1 : 3,
                 groups[gi],
                 bs[(di + gi) % 4],
                 6,
                 mp,
                 mn,
                 0,
                 gi == 0 ? 16.0f : 1.0f,
                 gi & 1};
      run_case(&c);
    }
  /* GQA 16 in a mixed batch */
  tcase cg = {PD_DTYPE_F16, 64, 2, 16, 16, 6, mp, mn, 0, 1.0f, 0};
  run_case(&cg);
  /* same n_new everywhere (no decode kernel launched) */
  int ep[3] = {0, 7, 300}, en[3] = {20, 20, 20};
  tcase ce = {PD_DTYPE_BF16, 64, 3, 3, 16, 3, ep, en, 0, 1.0f, 1};
  run_case(&ce);
}
END_TEST

START_TEST(prefill_long) {
  if (quick()) return;
  /* 4,096 new rows from scratch (direct path), on the default model's shape */
  int p0 = 0, n0 = 4096;
  tcase c0 = {PD_DTYPE_F16, 64, 3, 3, 16, 1, &p0, &n0, 0, 1.0f, 1};
  run_case(&c0);
  /* a short chunk after 32k cached tokens (few tiles: the KV range is split) */
  int p1 = 32752, n1 = 16;
  for (int di = 0; di < N_DTYPES; di++) {
    tcase c1 = {DTYPES[di], di == 1 ? 128 : 64, 3, di == 2 ? 8 : 3, 16, 1, &p1, &n1, 0, 16.0f, 0};
    run_case(&c1);
  }
  /* 4,096 new rows after 28,672 cached: context 32,768 */
  int p2 = 28672, n2 = 4096;
  tcase c2 = {PD_DTYPE_BF16, 64, 3, 3, 16, 1, &p2, &n2, 0, 4.0f, 1};
  run_case(&c2);
  /* mixed: a long prefill with long decodes beside it */
  int p3[4] = {20000, 0, 32000, 9}, n3[4] = {1, 2048, 1, 300};
  tcase c3 = {PD_DTYPE_F16, 128, 8, 4, 16, 4, p3, n3, 0, 4.0f, 0};
  run_case(&c3);
}
END_TEST

/* ---- cascade ------------------------------------------------------------------------------ */

START_TEST(cascade_matches_cpu_and_decode) {
  const int groups[3] = {1, 3, 8};
  int past[64], one[64];
  for (int di = 0; di < N_DTYPES; di++)
    for (int gi = 0; gi < 3; gi++) {
      /* 3 shared blocks (48 tokens); tails from 0 to 300 tokens */
      int n = 5 + 7 * gi;
      for (int s = 0; s < n; s++) past[s] = 48 + irand(301), one[s] = 1;
      tcase c = {DTYPES[di], gi == 1 ? 128 : 64,     gi == 2 ? 1 : 3, groups[gi], 16, n, past, one,
                 3,          gi == 0 ? 16.0f : 1.0f, di & 1};
      run_case(&c);
    }
  /* the bench's shape: 64 sequences on a 4,096-token prefix, tails 0 .. 100 */
  for (int s = 0; s < 64; s++) past[s] = 4096 + irand(101), one[s] = 1;
  tcase c1 = {PD_DTYPE_F16, 64, 3, 3, 16, 64, past, one, 256, 4.0f, 1};
  run_case(&c1);
  /* a tail exactly at the prefix end, one sequence, GQA 16, block size 64 */
  int p2[2] = {640, 700}, n2[2] = {1, 1};
  tcase c2 = {PD_DTYPE_BF16, 128, 1, 16, 64, 2, p2, n2, 10, 1.0f, 0};
  run_case(&c2);
  /* a long shared prefix */
  if (quick()) return;
  for (int s = 0; s < 8; s++) past[s] = 30000 + irand(2000), one[s] = 1;
  tcase c3 = {PD_DTYPE_F32, 64, 3, 3, 16, 8, past, one, 1875, 16.0f, 1};
  run_case(&c3);
}
END_TEST

/* ---- the bench's tuning knobs -------------------------------------------------------------- */

/* Prefill tiles in launch order (the default takes them longest first) and cascades with coarser
 * splits of the shared prefix than the default's 128 positions: the same results. All of it with
 * the kernels launched under PDL (pd_cuda_launch.h; plain where the GPU has no griddepcontrol):
 * the chains tile -> merge_rows and tile -> decode_split -> merge_seq stay in order. */
START_TEST(tuning_knobs_keep_results) {
  pd_cuda_set_pdl(1);
  /* each tile's arithmetic does not depend on which block computes it: launch order and longest
   * first give the same bytes, on the same inputs (the generator restarted from one state) */
  int mp[6] = {0, 100, 16, 5, 1000, 33}, mn[6] = {37, 1, 64, 1, 200, 2};
  int p1 = 0, n1 = 700;
  const tcase cases[2] = {{PD_DTYPE_F16, 64, 3, 3, 16, 6, mp, mn, 0, 1.0f, 1},
                          {PD_DTYPE_BF16, 128, 1, 8, 16, 1, &p1, &n1, 0, 4.0f, 0}};
  keep_cap = (size_t)1400 * 8 * 128;
  float *by_order[2] = {malloc(keep_cap * 4), malloc(keep_cap * 4)};
  for (int i = 0; i < 2; i++) {
    const uint64_t seed = rng;
    size_t n[2];
    for (int order = 0; order < 2; order++) {
      rng = seed;
      pd_cuda_attn_set_prefill_order(order);
      keep_out = by_order[order];
      run_case(&cases[i]);
      n[order] = keep_n;
    }
    keep_out = NULL;
    ck_assert_uint_eq(n[0], n[1]);
    ck_assert_msg(!memcmp(by_order[0], by_order[1], n[0] * 4),
                  "case %d: prefill tiles in launch order and longest first differ", i);
  }
  free(by_order[0]), free(by_order[1]);
  pd_cuda_attn_set_prefill_order(1);
  /* coarser cascade splits: fewer partials, so a smaller workspace, and the same results */
  int past[24], one[24];
  for (int s = 0; s < 24; s++) past[s] = 1024 + irand(200), one[s] = 1;
  pd_kv_layout L = {2, 3, 64, 16, PD_DTYPE_F16};
  pd_cuda_batch b = {0};
  b.n_seqs = 24, b.n_rows = 24, b.max_blocks = 80, b.max_new = 1, b.max_ctx = 1224;
  b.shared_blocks = 64;
  size_t last = pd_cuda_attn_batch_workspace_bytes(&L, 9, &b);
  const int splits[3] = {256, 512, 1024};
  for (int i = 0; i < 3; i++) {
    pd_cuda_attn_set_cascade_split(splits[i]);
    const size_t ws = pd_cuda_attn_batch_workspace_bytes(&L, 9, &b);
    ck_assert_msg(ws < last, "split %d: workspace %zu, not below %zu", splits[i], ws, last);
    last = ws;
    tcase c = {PD_DTYPE_F16, 64, 3, 3, 16, 24, past, one, 64, 1.0f, i & 1};
    run_case(&c);
  }
  pd_cuda_attn_set_cascade_split(0);
  pd_cuda_set_pdl(pd_cuda_env_flag("PD_CUDA_PDL"));
}
END_TEST

static void run_legacy(enum pd_dtype dt, int n_kv, int group, int hd, const int *ctx, int n_seqs);

/* Decode merging in a thread-block cluster (pd_cuda_attn_set_decode_cluster): launches of at
 * most 8 splits run as clusters whose block 0 merges through distributed shared memory, longer
 * ones keep merge_seq; both, with and without a cascade's prefix partials, against the CPU. On a
 * GPU before Hopper the switch does not apply (and the cases run the usual way); under
 * PD_REQUIRE_GPU on a Hopper it must. */
START_TEST(decode_cluster_merge_matches_cpu) {
  pd_cuda_attn_set_decode_cluster(1);
  int dev = 0, major = 0;
  ck_assert_int_eq(cudaGetDevice(&dev), cudaSuccess);
  ck_assert_int_eq(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev),
                   cudaSuccess);
  const int active = pd_cuda_attn_decode_cluster();
  ck_assert_msg(!active || major >= 9, "cluster merge on at compute capability %d", major);
  if (pd_cuda_env_flag("PD_REQUIRE_GPU"))
    ck_assert_msg(active == (major >= 9), "cluster merge %s on compute capability %d",
                  active ? "on" : "off", major);
  const int groups[3] = {1, 3, 8};
  /* the split count follows the longest context: 8 splits (of 128 positions) for 1,001, so a
   * cluster of 8; then 24 splits for 3,001 (merge_seq); GQA 1, 3, 8 */
  int past[2][6] = {{0, 14, 200, 500, 700, 1000}, {0, 14, 200, 700, 1000, 3000}};
  int one[6] = {1, 1, 1, 1, 1, 1};
  for (int k = 0; k < 2; k++)
    for (int di = 0; di < N_DTYPES; di++)
      for (int gi = 0; gi < 3; gi++) {
        tcase c = {
            DTYPES[di], gi == 1 ? 128 : 64, gi == 2 ? 1 : 3, groups[gi], 16, 6, past[k], one, 0,
            1.0f,       (di + gi + k) & 1};
        run_case(&c);
      }
  /* one sequence (few pairs: up to 8 splits over 1,000 tokens) */
  int p1 = 999, n1 = 1;
  tcase c1 = {PD_DTYPE_F16, 64, 3, 3, 16, 1, &p1, &n1, 0, 4.0f, 1};
  run_case(&c1);
  /* clusters of one (contexts up to 128 positions); GQA 16 (two head chunks a KV head, block
   * size 8, 6 splits) */
  int ps[3] = {5, 60, 100};
  tcase cs = {PD_DTYPE_F16, 128, 2, 4, 16, 3, ps, one, 0, 1.0f, 0};
  run_case(&cs);
  int pg[6] = {0, 14, 200, 500, 700, 640};
  tcase cg = {PD_DTYPE_BF16, 64, 2, 16, 8, 6, pg, one, 0, 1.0f, 1};
  run_case(&cg);
  /* a mixed batch: the prefill sequences' clusters return at once (all their blocks) */
  int mp[6] = {0, 100, 16, 5, 600, 33}, mn[6] = {37, 1, 64, 1, 200, 2};
  tcase cm = {PD_DTYPE_F16, 64, 3, 3, 16, 6, mp, mn, 0, 1.0f, 1};
  run_case(&cm);
  /* a cascade: the prefix's partials from the workspace, merged by the cluster's block 0 */
  int cp[12], co[12];
  for (int s = 0; s < 12; s++) cp[s] = 512 + irand(300), co[s] = 1;
  tcase c2 = {PD_DTYPE_BF16, 64, 3, 3, 16, 12, cp, co, 32, 1.0f, 0};
  run_case(&c2);
  /* the legacy entry point */
  int ctx[4] = {1, 17, 640, 1024};
  run_legacy(PD_DTYPE_F16, 3, 3, 64, ctx, 4);
  /* a refused cluster launch turns the merge in clusters off (and falls back): it must not be */
  ck_assert_int_eq(pd_cuda_attn_decode_cluster(), active);
  pd_cuda_attn_set_decode_cluster(pd_cuda_env_flag("PD_CUDA_DECODE_CLUSTER"));
  printf("ok: decode merge in a cluster %s\n", active ? "(active)" : "(not supported here)");
}
END_TEST

/* Lean decode (pd_cuda_attn_set_decode_lean): one wave of blocks, each an equal run of 32-position
 * tiles across (sequence, KV head) boundaries, a partial per segment, the parts a pair does not
 * have marked empty (the NaN-poisoned workspace makes a slot left unwritten fail). Against the
 * CPU: runs that start and end inside pairs and span several, pairs of one tile, sequences far
 * shorter than the longest (empty tiles), GQA 1/3/8/16, every pool dtype, a cascade, and a
 * mixed prefill/decode batch. It must apply to each batch (pd_cuda_attn_decode_lean_blocks). */
START_TEST(decode_lean_matches_cpu) {
  pd_cuda_attn_set_decode_lean(1);
  pd_kv_layout L = {2, 3, 64, 16, PD_DTYPE_F16};
  pd_cuda_batch b = {0};
  b.n_seqs = 64, b.n_rows = 64, b.max_blocks = 128, b.max_new = 1, b.max_ctx = 2048;
  const int blocks = pd_cuda_attn_decode_lean_blocks(&L, 9, &b);
  int dev = 0, sms = 0;
  ck_assert_int_eq(cudaGetDevice(&dev), cudaSuccess);
  ck_assert_int_eq(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), cudaSuccess);
  /* the default model's decode shape fills the device: a whole number of blocks per SM */
  ck_assert_msg(blocks >= sms && blocks % sms == 0, "lean grid %d on %d SMs", blocks, sms);
  const int groups[4] = {1, 3, 8, 16};
  int past[40], one[40];
  for (int k = 0; k < 3; k++)
    for (int di = 0; di < N_DTYPES; di++)
      for (int gi = 0; gi < 4; gi++) {
        /* k 0: equal lengths; 1: from 0 to 3,000 (most tiles of the short ones empty); 2: many
         * short sequences, so a block's run spans several pairs */
        const int n = k == 2 ? 40 : 7;
        for (int s = 0; s < n; s++)
          past[s] = k == 0 ? 1500 : k == 1 ? irand(3001) : irand(200), one[s] = 1;
        tcase c = {DTYPES[di],
                   gi == 1 ? 128 : 64,
                   gi == 3 ? 2 : 3,
                   groups[gi],
                   gi == 2 ? 8 : 16,
                   n,
                   past,
                   one,
                   0,
                   1.0f,
                   (di + gi + k) & 1};
        pd_kv_layout Lc = {2, c.n_kv, c.hd, c.B, c.dt};
        pd_cuda_batch bc = {0};
        bc.n_seqs = n, bc.n_rows = n, bc.max_new = 1, bc.max_ctx = 1;
        for (int s = 0; s < n; s++)
          if (past[s] + 1 > bc.max_ctx) bc.max_ctx = past[s] + 1;
        bc.max_blocks = (bc.max_ctx + c.B - 1) / c.B;
        ck_assert_int_gt(pd_cuda_attn_decode_lean_blocks(&Lc, c.n_kv * c.group, &bc), 0);
        run_case(&c);
      }
  /* one sequence of one token; one of 4,097 (sharp scores: single positions carry the weight) */
  int p1 = 0, p2 = 4096, n1 = 1;
  tcase c1 = {PD_DTYPE_BF16, 64, 3, 3, 16, 1, &p1, &n1, 0, 4.0f, 0};
  run_case(&c1);
  tcase c2 = {PD_DTYPE_F16, 128, 1, 8, 16, 1, &p2, &n1, 0, 16.0f, 1};
  run_case(&c2);
  /* a cascade: the prefix's partials first in the workspace, the lean parts after them */
  int cp[24], co[24];
  for (int s = 0; s < 24; s++) cp[s] = 1024 + irand(400), co[s] = 1;
  tcase c3 = {PD_DTYPE_F16, 64, 3, 3, 16, 24, cp, co, 64, 1.0f, 1};
  run_case(&c3);
  /* a mixed batch: the prefill sequences' segments are skipped */
  int mp[6] = {0, 100, 16, 5, 600, 33}, mn[6] = {37, 1, 64, 1, 200, 2};
  tcase cm = {PD_DTYPE_FP8_E4M3, 64, 3, 3, 16, 6, mp, mn, 0, 1.0f, 0};
  run_case(&cm);
  /* the host's bound far above the real contexts (the model's power-of-two buckets): the runs
   * follow the real lengths, the parts the bound allows stay within the workspace */
  int bp[9], bo[9];
  for (int s = 0; s < 9; s++) bp[s] = 300 + irand(800), bo[s] = 1;
  ctx_bound = 4096;
  tcase cb = {PD_DTYPE_F16, 64, 3, 3, 16, 9, bp, bo, 0, 1.0f, 1};
  run_case(&cb);
  tcase cb2 = {PD_DTYPE_BF16, 128, 2, 8, 16, 9, bp, bo, 0, 4.0f, 0};
  run_case(&cb2);
  ctx_bound = 0;
  /* the legacy entry point (ctx_lens, one row a sequence), GQA 3 and 8 */
  int ctx[5] = {1, 17, 640, 1024, 3000};
  run_legacy(PD_DTYPE_F16, 3, 3, 64, ctx, 5);
  run_legacy(PD_DTYPE_FP8_E4M3, 2, 8, 128, ctx, 5);
  pd_cuda_attn_set_decode_lean(0);
  ck_assert_int_eq(pd_cuda_attn_decode_lean_blocks(&L, 9, &b), 0);
  pd_cuda_attn_set_decode_lean(pd_cuda_env_flag("PD_CUDA_DECODE_LEAN"));
  printf("ok: lean decode (%d blocks on the default shape, %d SMs)\n", blocks, sms);
}
END_TEST

/* ---- the legacy decode entry point -------------------------------------------------------- */

static void run_legacy(enum pd_dtype dt, int n_kv, int group, int hd, const int *ctx, int n_seqs) {
  const int B = 16, layer = 1, n_heads = n_kv * group;
  pd_kv_layout L = {2, n_kv, hd, B, dt};
  int max_ctx = 0;
  for (int s = 0; s < n_seqs; s++) max_ctx = ctx[s] > max_ctx ? ctx[s] : max_ctx;
  int max_blocks = (max_ctx + B - 1) / B, n_blocks = max_blocks * n_seqs + 3;
  size_t bb = pd_kv_block_bytes(&L);
  uint8_t *pool = malloc(bb * (size_t)n_blocks);
  fill_pool(&L, pool, n_blocks);
  int32_t *tables = malloc(sizeof(int32_t) * (size_t)n_seqs * (size_t)max_blocks);
  for (int i = 0; i < n_seqs * max_blocks; i++) tables[i] = (i * 7 + 3) % n_blocks;
  size_t qn = (size_t)n_seqs * (size_t)n_heads * (size_t)hd;
  float *q = malloc(qn * 4), *ref = malloc(qn * 4), *got = malloc(qn * 4);
  for (size_t i = 0; i < qn; i++) q[i] = frand();
  pd_attn_seq *seqs = malloc(sizeof *seqs * (size_t)n_seqs);
  for (int s = 0; s < n_seqs; s++)
    seqs[s] = (pd_attn_seq){tables + (size_t)s * max_blocks, max_blocks, ctx[s] - 1, 1, s};
  float scale = 1.0f / sqrtf((float)hd);
  ck_assert_int_eq(pd_attn_paged(&L, pool, layer, n_heads, q, ref, seqs, n_seqs, scale), 0);
  void *d_pool = dev_upload(pool, bb * (size_t)n_blocks), *d_q = dev_upload(q, qn * 4);
  void *d_out = dev_upload(NULL, qn * 4);
  void *d_tables = dev_upload(tables, sizeof(int32_t) * (size_t)n_seqs * (size_t)max_blocks);
  void *d_ctx = dev_upload(ctx, sizeof(int32_t) * (size_t)n_seqs), *d_ws;
  size_t ws_bytes = pd_cuda_attn_workspace_bytes(n_seqs, n_heads, hd, max_ctx);
  CK(cudaMalloc(&d_ws, ws_bytes));
  CK(cudaMemset(d_ws, 0xff, ws_bytes));
  CK(cudaMemset(d_out, 0xff, qn * 4));
  char err[256] = "";
  int rc = pd_cuda_attn_decode(&L, d_pool, layer, n_heads, d_q, d_out, d_tables, max_blocks, d_ctx,
                               n_seqs, max_ctx, scale, d_ws, NULL, err, sizeof err);
  ck_assert_msg(rc == 0, "%s", err);
  CK(cudaDeviceSynchronize());
  CK(cudaMemcpy(got, d_out, qn * 4, cudaMemcpyDeviceToHost));
  char what[160];
  snprintf(what, sizeof what, "legacy decode %s kv %d group %d hd %d, %d seqs, max ctx %d",
           pd_dtype_name(dt), n_kv, group, hd, n_seqs, max_ctx);
  compare(ref, got, qn, n_heads, hd, what);
  cudaFree(d_pool), cudaFree(d_q), cudaFree(d_out), cudaFree(d_tables), cudaFree(d_ctx);
  cudaFree(d_ws);
  free(pool), free(tables), free(q), free(ref), free(got), free(seqs);
}

START_TEST(legacy_decode_matches_cpu) {
  int ctx_small[5] = {1, 15, 16, 17, 300};
  const int groups[3] = {1, 3, 8};
  for (int di = 0; di < N_DTYPES; di++)
    for (int gi = 0; gi < 3; gi++)
      run_legacy(DTYPES[di], gi == 2 ? 1 : 3, groups[gi], 64 + 64 * (gi & 1), ctx_small, 5);
  if (quick()) return;
  int ctx_long[3] = {4097, 2048, 32768};
  run_legacy(PD_DTYPE_F16, 3, 3, 64, ctx_long, 3);
  run_legacy(PD_DTYPE_F16, 8, 4, 128, ctx_long, 3);
}
END_TEST

/* ---- KV store of special values ------------------------------------------------------------ */

static float bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

START_TEST(kv_store_special_values_bit_exact) {
  /* values on every rounding edge of f16 and bf16 */
  const uint32_t special[] = {
      0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u, 0xffc00001u, 0x7f800001u,
      0x7fa00000u, 0x00000001u, 0x807fffffu, 0x33000000u, 0x33000001u, 0x32ffffffu, 0x33800000u,
      0x387fc000u, 0x387fe000u, 0x387ff000u, 0x38800000u, 0x38801000u, 0x38803000u, 0x477fe000u,
      0x477fefffu, 0x477ff000u, 0x477fffffu, 0x3f801000u, 0x3f803000u, 0x3f808000u, 0x3f818000u,
      0x3f7fffffu, 0x7f7fffffu, 0xff7fffffu, 0x3f800001u, 0x3c008000u, 0x3c018000u, 0x34000000u,
      0x34001000u, 0xb4003000u, 0x3a7ff000u};
  const int n_special = (int)(sizeof special / sizeof special[0]);
  /* e4m3 edges, all <= 448: ties between normals (1.0625, 1.1875, 240 + 8), the subnormal step
   * 2^-9 and its ties (2^-10, 3 * 2^-10), either side of 2^-6, the largest values, NaN, a tiny
   * normal f32, 0 */
  const uint32_t fp8_edges[] = {0x3f880000u, 0x3f980000u, 0x43780000u, 0x3b000000u, 0x3a800000u,
                                0x3b400000u, 0x3c7fffffu, 0x3c800000u, 0x3c780000u, 0x43dfffffu,
                                0x43e00000u, 0x43d00000u, 0x7fc00000u, 0x00800000u, 0x00000000u,
                                0x3a800001u, 0x3a7fffffu};
  const int n_fp8_edges = (int)(sizeof fp8_edges / sizeof fp8_edges[0]);
  for (int di = 0; di < N_DTYPES; di++) {
    const int B = 16, n_kv = 2, hd = 64, n_rows = 40, layer = 0;
    pd_kv_layout L = {1, n_kv, hd, B, DTYPES[di]};
    size_t bb = pd_kv_block_bytes(&L);
    int n_blocks = 8;
    uint8_t *pool = malloc(bb * n_blocks), *ref_pool = malloc(bb * n_blocks),
            *back = malloc(bb * n_blocks);
    fill_pool(&L, pool, n_blocks);
    memcpy(ref_pool, pool, bb * n_blocks);
    size_t kn = (size_t)n_rows * n_kv * hd;
    float *k = malloc(kn * 4), *v = malloc(kn * 4);
    for (size_t i = 0; i < kn; i++) {
      uint32_t r = (uint32_t)next_u64();
      k[i] = i % 3 == 0 ? bits_f32(special[irand(n_special)]) : i % 3 == 1 ? bits_f32(r) : frand();
      v[i] = i % 2 ? bits_f32(special[irand(n_special)] ^ ((uint32_t)irand(2) << 31))
                   : bits_f32((r & 0x8fffffffu) | 0x30000000u); /* near the f16 subnormals */
    }
    /* fp8: every fourth (row, kv head) of K and V has max |x| = 448, so its scale is 1 and the
     * e4m3 edges below are rounded as they are */
    for (size_t seg = 0; L.dtype == PD_DTYPE_FP8_E4M3 && seg < kn / hd; seg += 4) {
      float *rows[2] = {k + seg * hd, v + seg * hd};
      for (int w = 0; w < 2; w++) {
        rows[w][0] = w ? -448.0f : 448.0f;
        for (int d = 1; d < hd; d++)
          rows[w][d] = bits_f32(fp8_edges[irand(n_fp8_edges)] ^ ((uint32_t)irand(2) << 31));
      }
    }
    /* two sequences: 17 rows after 9 cached, 23 rows after 0 */
    int32_t tables[2 * 4] = {5, 2, 7, -1, 0, 3, -1, -1}, past[2] = {9, 0}, nn[2] = {17, 23},
                       rs[2] = {0, 17}, row_seq[40];
    for (int r = 0; r < n_rows; r++) row_seq[r] = r < 17 ? 0 : 1;
    pd_attn_seq seqs[2] = {{tables, 4, 9, 17, 0}, {tables + 4, 4, 0, 23, 17}};
    for (int s = 0; s < 2; s++)
      ck_assert_int_eq(pd_kv_store(&L, ref_pool, &seqs[s], layer, k, v), 0);
    void *d_pool = dev_upload(pool, bb * n_blocks), *d_k = dev_upload(k, kn * 4),
         *d_v = dev_upload(v, kn * 4);
    pd_cuda_batch b = {2, n_rows, 4, 23, 32, 0, NULL, NULL, NULL, NULL, NULL};
    b.block_tables = dev_upload(tables, sizeof tables), b.n_past = dev_upload(past, sizeof past);
    b.n_new = dev_upload(nn, sizeof nn), b.row_start = dev_upload(rs, sizeof rs);
    b.row_seq = dev_upload(row_seq, sizeof row_seq);
    char err[256] = "";
    ck_assert_msg(pd_cuda_kv_store(&L, d_pool, layer, &b, d_k, d_v, NULL, err, sizeof err) == 0,
                  "%s", err);
    CK(cudaMemcpy(back, d_pool, bb * n_blocks, cudaMemcpyDeviceToHost));
    size_t first = (size_t)-1;
    for (size_t i = 0; i < bb * n_blocks; i++)
      if (back[i] != ref_pool[i]) {
        first = i;
        break;
      }
    ck_assert_msg(first == (size_t)-1, "%s store: byte %zu differs", pd_dtype_name(L.dtype), first);
    printf("ok: kv store of special values, %s: bit-exact\n", pd_dtype_name(L.dtype));
    cudaFree(d_pool), cudaFree(d_k), cudaFree(d_v), cudaFree((void *)b.block_tables);
    cudaFree((void *)b.n_past), cudaFree((void *)b.n_new), cudaFree((void *)b.row_start);
    cudaFree((void *)b.row_seq);
    free(pool), free(ref_pool), free(back), free(k), free(v);
  }
}
END_TEST

/* ---- block moves --------------------------------------------------------------------------- */

/* n ids: some runs of consecutive ids, the rest scattered; all distinct, in [lo, lo + span). */
static void make_ids(int32_t *ids, int n, int lo, int span) {
  int32_t *perm = malloc(sizeof(int32_t) * (size_t)span);
  for (int i = 0; i < span; i++) perm[i] = lo + i;
  for (int i = span - 1; i > 0; i--) {
    int j = irand(i + 1);
    int32_t t = perm[i];
    perm[i] = perm[j], perm[j] = t;
  }
  /* the first third as one run from perm[0]'s place when it fits */
  int run = n / 3, start = lo + irand(span - run > 0 ? span - run : 1), k = 0;
  for (int i = 0; i < run && start + i < lo + span; i++) ids[k++] = start + i;
  for (int i = 0; k < n && i < span; i++) {
    int dup = 0;
    for (int j = 0; j < run && !dup; j++) dup = perm[i] == start + j;
    if (!dup) ids[k++] = perm[i];
  }
  ck_assert_int_eq(k, n);
  free(perm);
}

static void blocks_case(size_t bb, int n_pool, int n, int mode, int pinned, int use_stream) {
  pd_cuda_blocks_set_xfer_mode(mode);
  cudaStream_t st = NULL;
  if (use_stream) CK(cudaStreamCreate(&st));
  const size_t pool_bytes = bb * (size_t)n_pool;
  uint8_t *h_pool = malloc(pool_bytes), *expect = malloc(pool_bytes), *back = malloc(pool_bytes);
  for (size_t i = 0; i < pool_bytes; i++) h_pool[i] = (uint8_t)next_u64();
  memcpy(expect, h_pool, pool_bytes);
  void *d_pool = dev_upload(h_pool, pool_bytes);
  char err[256] = "";
  /* copy: sources in the lower half, destinations in the upper half (never a source) */
  int32_t *src = malloc(sizeof(int32_t) * (size_t)n), *dst = malloc(sizeof(int32_t) * (size_t)n);
  make_ids(src, n, 0, n_pool / 2);
  make_ids(dst, n, n_pool / 2, n_pool - n_pool / 2);
  ck_assert_msg(pd_cuda_block_copy(d_pool, bb, src, dst, n, st, err, sizeof err) == 0, "%s", err);
  for (int i = 0; i < n; i++)
    memcpy(expect + (size_t)dst[i] * bb, expect + (size_t)src[i] * bb, bb);
  /* zero some of the upper half */
  int nz = n / 2 + 1;
  int32_t *zid = malloc(sizeof(int32_t) * (size_t)nz);
  make_ids(zid, nz, n_pool / 2, n_pool - n_pool / 2);
  ck_assert_msg(pd_cuda_block_zero(d_pool, bb, zid, nz, st, err, sizeof err) == 0, "%s", err);
  for (int i = 0; i < nz; i++) memset(expect + (size_t)zid[i] * bb, 0, bb);
  CK(cudaStreamSynchronize(st));
  CK(cudaMemcpy(back, d_pool, pool_bytes, cudaMemcpyDeviceToHost));
  ck_assert_msg(memcmp(back, expect, pool_bytes) == 0, "block copy / zero (bb %zu, n %d)", bb, n);

  /* to host: n pool blocks to scattered host slots; untouched slots keep their bytes */
  const int n_slots = n + 7;
  uint8_t *host;
  if (pinned)
    CK(cudaHostAlloc((void **)&host, bb * (size_t)n_slots, cudaHostAllocDefault));
  else
    host = malloc(bb * (size_t)n_slots);
  uint8_t *host_expect = malloc(bb * (size_t)n_slots);
  for (size_t i = 0; i < bb * (size_t)n_slots; i++) host[i] = (uint8_t)next_u64();
  memcpy(host_expect, host, bb * (size_t)n_slots);
  int32_t *ids = malloc(sizeof(int32_t) * (size_t)n), *hids = malloc(sizeof(int32_t) * (size_t)n);
  make_ids(ids, n, 0, n_pool);
  make_ids(hids, n, 0, n_slots);
  ck_assert_msg(pd_cuda_blocks_to_host(d_pool, bb, ids, n, host, hids, st, err, sizeof err) == 0,
                "%s", err);
  for (int i = 0; i < n; i++)
    memcpy(host_expect + (size_t)hids[i] * bb, expect + (size_t)ids[i] * bb, bb);
  CK(cudaStreamSynchronize(st));
  ck_assert_msg(memcmp(host, host_expect, bb * (size_t)n_slots) == 0,
                "blocks to host (bb %zu, n %d, mode %d, pinned %d)", bb, n, mode, pinned);

  /* from host: new bytes in the slots, to other scattered pool blocks */
  for (size_t i = 0; i < bb * (size_t)n_slots; i++) host[i] = (uint8_t)next_u64();
  make_ids(ids, n, 0, n_pool);
  make_ids(hids, n, 0, n_slots);
  ck_assert_msg(pd_cuda_blocks_from_host(d_pool, bb, ids, n, host, hids, st, err, sizeof err) == 0,
                "%s", err);
  for (int i = 0; i < n; i++) memcpy(expect + (size_t)ids[i] * bb, host + (size_t)hids[i] * bb, bb);
  CK(cudaStreamSynchronize(st));
  CK(cudaGetLastError());
  CK(cudaMemcpy(back, d_pool, pool_bytes, cudaMemcpyDeviceToHost));
  ck_assert_msg(memcmp(back, expect, pool_bytes) == 0,
                "blocks from host (bb %zu, n %d, mode %d, pinned %d)", bb, n, mode, pinned);
  printf("ok: block copy/zero/to_host/from_host: block %zu B, %d blocks, mode %d, %s, %s stream\n",
         bb, n, mode, pinned ? "pinned" : "pageable", use_stream ? "own" : "NULL");
  if (pinned)
    CK(cudaFreeHost(host));
  else
    free(host);
  if (st) CK(cudaStreamDestroy(st));
  cudaFree(d_pool);
  free(h_pool), free(expect), free(back), free(src), free(dst), free(zid), free(host_expect);
  free(ids), free(hids);
  pd_cuda_blocks_set_xfer_mode(PD_CUDA_XFER_AUTO);
}

START_TEST(block_moves_byte_exact) {
  for (int mode = PD_CUDA_XFER_AUTO; mode <= PD_CUDA_XFER_KERNEL; mode++)
    for (int pinned = 0; pinned < 2; pinned++)
      for (int use_stream = 0; use_stream < 2; use_stream++) {
        blocks_case(368640, 64, 20, mode, pinned, use_stream);  /* the default model's block */
        blocks_case(200, 1200, 500, mode, pinned, use_stream);  /* not a multiple of 16 */
        blocks_case(4096, 1200, 520, mode, pinned, use_stream); /* past one kernel launch's list */
      }
  blocks_case(368640, 16, 1, PD_CUDA_XFER_AUTO, 1, 1);
}
END_TEST

/* ---- refusals ------------------------------------------------------------------------------- */

START_TEST(bad_shapes_are_refused) {
  pd_kv_layout L = {1, 3, 96, 16, PD_DTYPE_F16};
  char err[256] = "";
  ck_assert_int_eq(pd_cuda_attn_decode(&L, NULL, 0, 9, NULL, NULL, NULL, 1, NULL, 1, 1, 1.0f, NULL,
                                       NULL, err, sizeof err),
                   PD_EINVAL);
  ck_assert(strstr(err, "head_dim") != NULL);
  int32_t one = 1;
  pd_cuda_batch b = {1, 1, 4, 1, 10, 0, &one, &one, &one, &one, &one};
  ck_assert_int_eq(pd_cuda_attn(&L, (void *)64, 0, 9, (float *)64, (float *)64, &b, 1.0f, NULL, 0,
                                NULL, err, sizeof err),
                   PD_EINVAL);
  L.head_dim = 64, L.dtype = (enum pd_dtype)99;
  ck_assert_int_eq(pd_cuda_attn(&L, (void *)64, 0, 9, (float *)64, (float *)64, &b, 1.0f, NULL, 0,
                                NULL, err, sizeof err),
                   PD_EINVAL);
  ck_assert(strstr(err, "dtype") != NULL);
  L.dtype = PD_DTYPE_F16, L.block_tokens = 12;
  ck_assert_int_eq(pd_cuda_attn(&L, (void *)64, 0, 9, (float *)64, (float *)64, &b, 1.0f, NULL, 0,
                                NULL, err, sizeof err),
                   PD_EINVAL);
  /* fp8, one layer, 3 KV heads, 1-token blocks: 6 rows of 68 bytes, not a multiple of 16 */
  L.dtype = PD_DTYPE_FP8_E4M3, L.block_tokens = 1;
  ck_assert_int_eq(pd_cuda_attn(&L, (void *)64, 0, 9, (float *)64, (float *)64, &b, 1.0f, NULL, 0,
                                NULL, err, sizeof err),
                   PD_EINVAL);
  ck_assert_msg(strstr(err, "multiple of 16") != NULL, "%s", err);
  L.dtype = PD_DTYPE_F16, L.block_tokens = 16;
  /* a decode batch needs a workspace */
  ck_assert_uint_gt(pd_cuda_attn_batch_workspace_bytes(&L, 9, &b), 0);
  ck_assert_int_eq(pd_cuda_attn(&L, (void *)64, 0, 9, (float *)64, (float *)64, &b, 1.0f, NULL, 0,
                                NULL, err, sizeof err),
                   PD_EINVAL);
  ck_assert(strstr(err, "workspace") != NULL);
  /* max_ctx beyond the tables */
  b.max_ctx = 65;
  ck_assert_int_eq(pd_cuda_attn(&L, (void *)64, 0, 9, (float *)64, (float *)64, &b, 1.0f, NULL, 0,
                                NULL, err, sizeof err),
                   PD_EINVAL);
  int32_t ids[2] = {0, -1};
  ck_assert_int_eq(pd_cuda_block_zero((void *)64, 16, ids, 2, NULL, err, sizeof err), PD_EINVAL);
}
END_TEST

int main(void) {
  int gate = pd_gpu_gate();
  if (gate) return gate;
  Suite *s = suite_create("cuda_attention");
  TCase *tc = tcase_create("cuda");
  tcase_set_timeout(tc, 900);
  tcase_add_test(tc, kv_store_special_values_bit_exact);
  tcase_add_test(tc, decode_matches_cpu);
  tcase_add_test(tc, legacy_decode_matches_cpu);
  tcase_add_test(tc, prefill_matches_cpu);
  tcase_add_test(tc, prefill_long);
  tcase_add_test(tc, cascade_matches_cpu_and_decode);
  tcase_add_test(tc, tuning_knobs_keep_results);
  tcase_add_test(tc, decode_cluster_merge_matches_cpu);
  tcase_add_test(tc, decode_lean_matches_cpu);
  tcase_add_test(tc, block_moves_byte_exact);
  tcase_add_test(tc, bad_shapes_are_refused);
  suite_add_tcase(s, tc);
  return pd_check_run(s, 0);
}
