/*
 * prefixd-run -- the model runtime from the command line: completion, chat, logits dumps and
 * per-phase timings. See `prefixd-run --help`.
 *
 * It owns a plain KV pool (an array of blocks) and one sequence whose block table grows as the
 * conversation does; in interactive chat (-i) every turn reuses the KV of the turns before it,
 * the way the daemon's prefix cache does for every session.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "pd_chat.h"
#include "pd_detok.h"
#include "pd_err.h"
#include "pd_llama.h"
#include "pd_model.h"
#include "pd_sampler.h"
#include "pd_tokenizer.h"

#define BLOCK 16

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: prefixd-run -m MODEL.gguf (-p TEXT | --chat TEXT | --tokens IDS | -i) [options]\n"
          "  -p, --prompt TEXT       complete raw text (special tokens like <|im_start|> parsed)\n"
          "      --chat TEXT         one user turn with the model's chat template\n"
          "      --system TEXT       system message for --chat and -i\n"
          "  -i, --interactive       chat turns read from stdin, one per line; KV reused\n"
          "      --tokens 1,2,3      prompt as token ids\n"
          "  -n, --max-tokens N      tokens to generate (default 128)\n"
          "      --temp T --top-k K --top-p P --min-p P --repeat-penalty R --seed S\n"
          "  -t, --threads N         CPU threads (default: all)\n"
          "      --cache-dtype f32|f16|bf16|fp8   KV cache element type (default f16)\n"
          "      --mode exact|fast   matmul mode (default fast)\n"
          "      --ctx N             context length (default 4096)\n"
          "      --dump-logits FILE  write the logits of every prompt position (f32, n x vocab)\n"
          "      --dump-tokens       print the prompt's token ids and exit\n"
          "      --ids               print generated token ids (comma-separated) instead of text\n"
          "      --chunk N           prefill in chunks of N tokens (default 256)\n"
          "      --describe          print the model's description and exit\n"
          "  -h, --help\n");
}

typedef struct run {
  pd_model *m;
  pd_tokenizer *tok;
  pd_llama ctx;
  void *pool;
  int32_t *table;
  int n_blocks, n_ctx, chunk;
  int32_t *seq; /* the tokens in the KV so far: (n_ctx) */
  int n_seq;
} run;

/* Feeds tokens after what is already in the KV; logits of the last one into logits (n_vocab)
 * (and of every position into dump, if not NULL). */
static int feed(run *r, const int32_t *toks, int n, float *logits, FILE *dump) {
  if (r->n_seq + n > r->n_ctx) {
    fprintf(stderr, "prefixd-run: context full (%d tokens)\n", r->n_ctx);
    return PD_ERANGE;
  }
  int step = dump ? 1 : r->chunk;
  for (int i = 0; i < n; i += step) {
    int len = n - i < step ? n - i : step;
    pd_llama_seq s = {toks + i, len, r->n_seq, r->table, r->n_blocks, 1};
    int rc = pd_llama_forward(&r->ctx, r->pool, &s, 1, logits);
    if (rc) return rc;
    if (dump &&
        fwrite(logits, sizeof *logits, (size_t)r->m->n_vocab, dump) != (size_t)r->m->n_vocab)
      return PD_EIO;
    memcpy(r->seq + r->n_seq, toks + i, (size_t)len * sizeof *toks);
    r->n_seq += len;
  }
  return PD_OK;
}

/* Samples until max_tokens, an end-of-generation token or a full context; streams text. */
static int print_ids; /* --ids */

static int generate(run *r, pd_sampler *smp, float *logits, int max_tokens, int *n_gen,
                    double *secs) {
  pd_detok *dt;
  int rc = pd_detok_create(r->tok, NULL, 0, &dt);
  if (rc) return rc;
  double t0 = now_s();
  *n_gen = 0;
  for (int i = 0; i < max_tokens; i++) {
    int32_t t = pd_sampler_sample(smp, logits);
    if (pd_tokenizer_is_eog(r->tok, t)) break;
    char out[256];
    size_t n_out = 0;
    int stop = 0;
    pd_detok_push(dt, t, out, sizeof out, &n_out, &stop);
    if (print_ids)
      printf("%s%d", *n_gen ? "," : "", t);
    else
      fwrite(out, 1, n_out, stdout);
    fflush(stdout);
    (*n_gen)++;
    if ((rc = feed(r, &t, 1, logits, NULL))) break;
  }
  char out[64];
  size_t n_out = 0;
  pd_detok_flush(dt, out, sizeof out, &n_out);
  if (!print_ids) fwrite(out, 1, n_out, stdout);
  pd_detok_free(dt);
  *secs = now_s() - t0;
  return rc == PD_ERANGE ? PD_OK : rc;
}

int main(int argc, char **argv) {
  const char *model = NULL, *prompt = NULL, *chat = NULL, *system_msg = NULL, *tokens_arg = NULL;
  const char *dump_path = NULL;
  int interactive = 0, max_tokens = 128, threads = 0, n_ctx = 4096, chunk = 256, dump_tokens = 0,
      describe = 0;
  enum pd_dtype cache_dtype = PD_DTYPE_F16;
  enum pd_matmul_mode mode = PD_MATMUL_FAST;
  pd_sampling_params sp = {.temperature = 0,
                           .top_k = 0,
                           .top_p = 1,
                           .min_p = 0,
                           .repeat_penalty = 1,
                           .repeat_last_n = 64,
                           .seed = 42};
  static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                       {"prompt", required_argument, 0, 'p'},
                                       {"chat", required_argument, 0, 'c'},
                                       {"system", required_argument, 0, 'S'},
                                       {"interactive", no_argument, 0, 'i'},
                                       {"tokens", required_argument, 0, 'T'},
                                       {"max-tokens", required_argument, 0, 'n'},
                                       {"temp", required_argument, 0, 1},
                                       {"top-k", required_argument, 0, 2},
                                       {"top-p", required_argument, 0, 3},
                                       {"min-p", required_argument, 0, 4},
                                       {"repeat-penalty", required_argument, 0, 5},
                                       {"seed", required_argument, 0, 6},
                                       {"threads", required_argument, 0, 't'},
                                       {"cache-dtype", required_argument, 0, 7},
                                       {"mode", required_argument, 0, 8},
                                       {"ctx", required_argument, 0, 9},
                                       {"dump-logits", required_argument, 0, 10},
                                       {"dump-tokens", no_argument, 0, 11},
                                       {"chunk", required_argument, 0, 12},
                                       {"describe", no_argument, 0, 13},
                                       {"ids", no_argument, 0, 14},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  int o;
  while ((o = getopt_long(argc, argv, "m:p:in:t:h", opts, NULL)) != -1) {
    switch (o) {
    case 'm': model = optarg; break;
    case 'p': prompt = optarg; break;
    case 'c': chat = optarg; break;
    case 'S': system_msg = optarg; break;
    case 'i': interactive = 1; break;
    case 'T': tokens_arg = optarg; break;
    case 'n': max_tokens = atoi(optarg); break;
    case 1: sp.temperature = strtof(optarg, NULL); break;
    case 2: sp.top_k = atoi(optarg); break;
    case 3: sp.top_p = strtof(optarg, NULL); break;
    case 4: sp.min_p = strtof(optarg, NULL); break;
    case 5: sp.repeat_penalty = strtof(optarg, NULL); break;
    case 6: sp.seed = strtoull(optarg, NULL, 10); break;
    case 't': threads = atoi(optarg); break;
    case 7:
      if (pd_dtype_parse(optarg, &cache_dtype)) {
        fprintf(stderr, "prefixd-run: --cache-dtype must be f32, f16, bf16 or fp8\n");
        return 2;
      }
      break;
    case 8:
      if (!strcmp(optarg, "exact"))
        mode = PD_MATMUL_EXACT;
      else if (!strcmp(optarg, "fast"))
        mode = PD_MATMUL_FAST;
      else {
        fprintf(stderr, "prefixd-run: --mode must be exact or fast\n");
        return 2;
      }
      break;
    case 9: n_ctx = atoi(optarg); break;
    case 10: dump_path = optarg; break;
    case 11: dump_tokens = 1; break;
    case 12: chunk = atoi(optarg); break;
    case 13: describe = 1; break;
    case 14: print_ids = 1; break;
    case 'h': usage(stdout); return 0;
    default: usage(stderr); return 2;
    }
  }
  int n_inputs = !!prompt + !!chat + !!tokens_arg + interactive;
  if (!model || (n_inputs != 1 && !describe) || max_tokens < 0 || n_ctx < 16 || chunk < 1) {
    usage(stderr);
    return 2;
  }
#ifdef _OPENMP
  if (threads > 0) omp_set_num_threads(threads);
#endif
  double t_load = now_s();
  run r = {0};
  char err[512];
  int rc = pd_model_load(model, &r.m, err, sizeof err);
  if (rc) {
    fprintf(stderr, "prefixd-run: %s\n", err);
    return 1;
  }
  if (describe) {
    char desc[512];
    pd_model_describe(r.m, desc, sizeof desc);
    printf("%s\n", desc);
    pd_model_free(r.m);
    return 0;
  }
  if ((rc = pd_tokenizer_from_gguf(r.m->gguf, &r.tok, err, sizeof err))) {
    fprintf(stderr, "prefixd-run: %s\n", err);
    pd_model_free(r.m);
    return 1;
  }
  r.n_ctx = n_ctx;
  r.chunk = chunk;
  r.n_blocks = (n_ctx + BLOCK - 1) / BLOCK;
  rc = pd_llama_init(&r.ctx, r.m, BLOCK, cache_dtype, mode, chunk, 1);
  r.pool = calloc((size_t)r.n_blocks, pd_kv_block_bytes(&r.ctx.kv));
  r.table = malloc((size_t)r.n_blocks * sizeof *r.table);
  r.seq = malloc((size_t)n_ctx * sizeof *r.seq);
  float *logits = malloc((size_t)r.m->n_vocab * sizeof *logits);
  int32_t *toks = malloc((size_t)n_ctx * sizeof *toks);
  if (rc || !r.pool || !r.table || !r.seq || !logits || !toks) {
    fprintf(stderr, "prefixd-run: out of memory for a %d-token context\n", n_ctx);
    return 1;
  }
  for (int b = 0; b < r.n_blocks; b++) r.table[b] = b;
  t_load = now_s() - t_load;
  pd_sampler *smp;
  if ((rc = pd_sampler_create(&sp, r.m->n_vocab, &smp))) {
    fprintf(stderr, "prefixd-run: bad sampling parameters: %s\n", pd_strerror(rc));
    return 2;
  }

  pd_chat_template tpl;
  int have_tpl = pd_chat_template_from_gguf(r.m->gguf, &tpl, err, sizeof err) == 0;
  if (!have_tpl && (chat || interactive)) {
    fprintf(stderr, "prefixd-run: %s\n", err);
    return 1;
  }
  pd_chat_msg history[256];
  char *owned[256]; /* history strings this program allocated (interactive turns) */
  int n_hist = 0, n_owned = 0;
  if (system_msg) history[n_hist++] = (pd_chat_msg){.role = "system", .content = system_msg};
  char line[8192];
  int exit_code = 0;
  for (;;) {
    /* Build this turn's prompt text (or ids). */
    size_t n_toks = 0;
    char *text = NULL;
    if (tokens_arg) {
      for (char *s = (char *)tokens_arg; *s && n_toks < (size_t)n_ctx;) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s) {
          fprintf(stderr, "prefixd-run: --tokens: not a list of integers: %s\n", tokens_arg);
          return 2;
        }
        toks[n_toks++] = (int32_t)v;
        s = *end == ',' ? end + 1 : end;
      }
    } else {
      if (interactive) {
        fprintf(stderr, "> ");
        if (!fgets(line, sizeof line, stdin)) break;
        line[strcspn(line, "\n")] = 0;
        if (!line[0]) continue;
        if (n_hist >= 250) {
          fprintf(stderr, "prefixd-run: conversation too long\n");
          break;
        }
        owned[n_owned] = strdup(line);
        if (!owned[n_owned]) break;
        history[n_hist++] = (pd_chat_msg){.role = "user", .content = owned[n_owned++]};
      } else if (chat) {
        history[n_hist++] = (pd_chat_msg){.role = "user", .content = chat};
      }
      if (prompt) {
        text = strdup(prompt);
      } else if ((rc = pd_chat_render(&tpl, history, (size_t)n_hist, NULL, 0, 1, &text, err,
                                      sizeof err))) {
        fprintf(stderr, "prefixd-run: %s\n", err);
        return 1;
      }
      rc = pd_tokenize_prompt(r.tok, text, strlen(text), toks, (size_t)n_ctx, &n_toks);
      free(text);
      if (rc == PD_EFULL || n_toks > (size_t)n_ctx) {
        fprintf(stderr, "prefixd-run: the prompt (%zu tokens) exceeds the context (%d)\n", n_toks,
                n_ctx);
        exit_code = 1;
        break;
      }
    }
    for (size_t i = 0; i < n_toks; i++)
      if (toks[i] < 0 || toks[i] >= r.m->n_vocab) {
        fprintf(stderr, "prefixd-run: token id %d is outside the vocabulary (0..%d)\n", toks[i],
                r.m->n_vocab - 1);
        return 1;
      }
    if (dump_tokens) {
      for (size_t i = 0; i < n_toks; i++) printf("%s%d", i ? "," : "", toks[i]);
      printf("\n");
      break;
    }
    /* Reuse the KV of the longest common prefix with what is already computed. */
    int reuse = 0;
    while (reuse < r.n_seq && reuse < (int)n_toks && r.seq[reuse] == toks[reuse]) reuse++;
    if (reuse == (int)n_toks) reuse--; /* at least one token to compute logits from */
    if (reuse < 0) reuse = 0;
    r.n_seq = reuse;
    FILE *dump = NULL;
    if (dump_path && !(dump = fopen(dump_path, "wb"))) {
      fprintf(stderr, "prefixd-run: cannot write %s: %s\n", dump_path, strerror(errno));
      return 1;
    }
    for (size_t i = 0; i < n_toks; i++) pd_sampler_accept(smp, toks[i]);
    double t0 = now_s();
    rc = feed(&r, toks + reuse, (int)n_toks - reuse, logits, dump);
    double t_prefill = now_s() - t0;
    if (dump) fclose(dump);
    if (rc) {
      fprintf(stderr, "prefixd-run: forward pass failed: %s\n", pd_strerror(rc));
      return 1;
    }
    int n_gen = 0;
    double t_decode = 0;
    if (max_tokens > 0) {
      size_t before = (size_t)r.n_seq;
      rc = generate(&r, smp, logits, max_tokens, &n_gen, &t_decode);
      printf("\n");
      fflush(stdout);
      if (rc) {
        fprintf(stderr, "prefixd-run: generation failed: %s\n", pd_strerror(rc));
        return 1;
      }
      if (interactive) { /* remember the answer as the assistant's turn */
        size_t cap = 4 * ((size_t)r.n_seq - before) + 16, len = 0;
        char *ans = malloc(cap);
        for (size_t i = before; i < (size_t)r.n_seq && ans; i++) {
          const char *piece;
          size_t pl;
          if (pd_token_piece(r.tok, r.seq[i], &piece, &pl) == 0 && len + pl < cap) {
            memcpy(ans + len, piece, pl);
            len += pl;
          }
        }
        if (ans) {
          ans[len] = 0;
          owned[n_owned++] = ans;
          history[n_hist++] = (pd_chat_msg){.role = "assistant", .content = ans};
        }
      }
    }
    fprintf(stderr,
            "[load %.2f s | prompt %zu tokens, %d reused, prefill %.1f ms (%.1f tok/s) | "
            "generated %d tokens in %.1f ms (%.1f tok/s)]\n",
            t_load, n_toks, reuse, t_prefill * 1e3,
            t_prefill > 0 ? ((double)n_toks - reuse) / t_prefill : 0.0, n_gen, t_decode * 1e3,
            t_decode > 0 ? n_gen / t_decode : 0.0);
    t_load = 0;
    if (!interactive) break;
  }
  for (int i = 0; i < n_owned; i++) free(owned[i]);
  pd_sampler_free(smp);
  free(logits);
  free(toks);
  free(r.pool);
  free(r.table);
  free(r.seq);
  pd_llama_free(&r.ctx);
  pd_tokenizer_free(r.tok);
  pd_model_free(r.m);
  return exit_code;
}
