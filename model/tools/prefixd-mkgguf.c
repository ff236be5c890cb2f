/*
 * prefixd-mkgguf -- writes a synthetic Llama-architecture GGUF: any shape, seeded random weights
 * in any supported block format, and a byte-level BPE vocabulary that the tokenizer accepts
 * (256 byte tokens, <|endoftext|> <|im_start|> <|im_end|> as control tokens, merged tokens built
 * from pairs and triples of printable ASCII, a ChatML chat template). --arch qwen2 adds q/k/v
 * biases (and so NEOX rope in the runtime); --untied writes a separate output matrix. Tests use small ones; GPU
 * speed runs use `--like smollm2-135m`, the default model's shape, where the real file cannot
 * travel.
 *
 * usage: prefixd-mkgguf -o OUT.gguf [--like smollm2-135m] [--layers N] [--d N] [--heads N]
 *                       [--kv-heads N] [--ffn N] [--vocab N] [--ctx N] [--type T] [--embd-type T]
 *                       [--ffn-type T] [--seed N]
 *
 * --type sets every layer weight's format, --ffn-type then the three FFN weights' (as llama.cpp's
 * K-quant mixes give the FFN other formats than attention). --rope-freqs writes
 * rope_freqs.weight, random frequency divisors in [1, 8] (where Llama 3.1's scaling puts them).
 * --chat llama3 writes Llama 3's tokenizer conventions instead of ChatML's: its control tokens,
 * its pre-tokenizer, a bos token added to prompts, <|eot_id|> as eos, and its chat template.
 */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_err.h"
#include "pd_gguf_writer.h"
#include "pd_quant.h"

static uint64_t rng;
static float frand(void) { /* uniform in [-1, 1) */
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static int parse_type(const char *s, enum pd_ggml_type *t) {
  for (int i = 0; i < PD_GGML_N_TYPES; i++)
    if (!strcmp(s, pd_ggml_type_name(pd_ggml_types[i]))) return *t = pd_ggml_types[i], 0;
  return -1;
}

/* A (rows, cols) weight of random values of magnitude `scale`, quantized to t. */
static int add_weight(pd_gguf_writer *w, const char *name, int64_t cols, int64_t rows,
                      enum pd_ggml_type t, float scale, float offset) {
  size_t row_bytes = pd_ggml_row_bytes(t, cols);
  if (!row_bytes) {
    fprintf(stderr, "prefixd-mkgguf: %s: %lld columns are not a multiple of the %s block\n", name,
            (long long)cols, pd_ggml_type_name(t));
    return PD_EINVAL;
  }
  uint8_t *data = malloc(row_bytes * (size_t)rows);
  float *row = malloc(sizeof(float) * (size_t)cols);
  if (!data || !row) return PD_ENOMEM;
  for (int64_t r = 0; r < rows; r++) {
    for (int64_t c = 0; c < cols; c++) row[c] = offset + scale * frand();
    pd_quantize_row(t, row, data + (size_t)r * row_bytes, cols);
  }
  uint64_t ne[2] = {(uint64_t)cols, (uint64_t)rows};
  int rc = pd_gguf_add_tensor(w, name, rows > 1 ? 2 : 1, ne, t, data, row_bytes * (size_t)rows);
  free(data);
  free(row);
  return rc;
}

static int add_hp(pd_gguf_writer *w, const char *arch, const char *name, uint32_t v) {
  char key[128];
  snprintf(key, sizeof key, "%s.%s", arch, name);
  return pd_gguf_add_u32(w, key, v);
}

static int add_hpf(pd_gguf_writer *w, const char *arch, const char *name, float v) {
  char key[128];
  snprintf(key, sizeof key, "%s.%s", arch, name);
  return pd_gguf_add_f32(w, key, v);
}

/* GPT-2's byte-level alphabet: printable bytes stand for themselves, others for 256 + n. */
static void byte_char(int b, char out[8]) {
  static int map[256], init;
  if (!init) {
    int n = 0;
    for (int i = 0; i < 256; i++) {
      int printable = (i >= 33 && i <= 126) || (i >= 161 && i <= 172) || (i >= 174 && i <= 255);
      map[i] = printable ? i : 256 + n++;
    }
    init = 1;
  }
  unsigned cp = (unsigned)map[b];
  if (cp < 0x80)
    out[0] = (char)cp, out[1] = 0;
  else
    out[0] = (char)(0xC0 | (cp >> 6)), out[1] = (char)(0x80 | (cp & 0x3F)), out[2] = 0;
}

int main(int argc, char **argv) {
  const char *out = NULL;
  int layers = 2, d = 64, heads = 4, kv_heads = 2, ffn = 128, vocab = 512, ctx = 2048;
  enum pd_ggml_type type = PD_GGML_Q8_0, embd_type = PD_GGML_Q8_0, ffn_type = PD_GGML_Q8_0;
  int ffn_type_set = 0;
  uint64_t seed = 1;
  const char *arch = "llama";
  int untied = 0, rope_freqs = 0, llama3 = 0;
  static const struct option opts[] = {{"arch", required_argument, 0, 12},
                                       {"untied", no_argument, 0, 13},
                                       {"out", required_argument, 0, 'o'},
                                       {"like", required_argument, 0, 1},
                                       {"layers", required_argument, 0, 2},
                                       {"d", required_argument, 0, 3},
                                       {"heads", required_argument, 0, 4},
                                       {"kv-heads", required_argument, 0, 5},
                                       {"ffn", required_argument, 0, 6},
                                       {"vocab", required_argument, 0, 7},
                                       {"ctx", required_argument, 0, 8},
                                       {"type", required_argument, 0, 9},
                                       {"embd-type", required_argument, 0, 10},
                                       {"seed", required_argument, 0, 11},
                                       {"ffn-type", required_argument, 0, 14},
                                       {"rope-freqs", no_argument, 0, 15},
                                       {"chat", required_argument, 0, 16},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  int o;
  while ((o = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
    switch (o) {
    case 'o': out = optarg; break;
    case 1:
      if (strcmp(optarg, "smollm2-135m")) {
        fprintf(stderr, "prefixd-mkgguf: --like knows only smollm2-135m\n");
        return 2;
      }
      layers = 30, d = 576, heads = 9, kv_heads = 3, ffn = 1536, vocab = 49152, ctx = 8192;
      type = PD_GGML_Q4_1, embd_type = PD_GGML_Q8_0;
      break;
    case 2: layers = atoi(optarg); break;
    case 3: d = atoi(optarg); break;
    case 4: heads = atoi(optarg); break;
    case 5: kv_heads = atoi(optarg); break;
    case 6: ffn = atoi(optarg); break;
    case 7: vocab = atoi(optarg); break;
    case 8: ctx = atoi(optarg); break;
    case 9:
    case 10:
    case 14:
      if (parse_type(optarg, o == 9 ? &type : o == 10 ? &embd_type : &ffn_type)) {
        fprintf(stderr, "prefixd-mkgguf: unknown type %s\n", optarg);
        return 2;
      }
      ffn_type_set |= o == 14;
      break;
    case 11: seed = strtoull(optarg, NULL, 10); break;
    case 12:
      if (strcmp(optarg, "llama") && strcmp(optarg, "qwen2")) {
        fprintf(stderr, "prefixd-mkgguf: --arch must be llama or qwen2\n");
        return 2;
      }
      arch = optarg;
      break;
    case 13: untied = 1; break;
    case 15: rope_freqs = 1; break;
    case 16:
      if (strcmp(optarg, "chatml") && strcmp(optarg, "llama3")) {
        fprintf(stderr, "prefixd-mkgguf: --chat must be chatml or llama3\n");
        return 2;
      }
      llama3 = !strcmp(optarg, "llama3");
      break;
    case 'h':
      printf("usage: prefixd-mkgguf -o OUT.gguf [--like smollm2-135m] [--layers N] [--d N] "
             "[--heads N] [--kv-heads N] [--ffn N] [--vocab N] [--ctx N] [--type T] "
             "[--embd-type T] [--ffn-type T] [--seed N] [--arch llama|qwen2] [--untied] "
             "[--rope-freqs] [--chat chatml|llama3]\n");
      return 0;
    default: return 2;
    }
  }
  if (!ffn_type_set) ffn_type = type;
  if (!out || layers < 1 || d < 32 || heads < 1 || kv_heads < 1 || d % heads || heads % kv_heads ||
      ffn < 32 || vocab < 260 || vocab > 300000 || ctx < 16) {
    fprintf(stderr, "prefixd-mkgguf: need -o OUT and a consistent shape (see --help)\n");
    return 2;
  }
  rng = seed * 0x9e3779b97f4a7c15ull + 1;
  int hd = d / heads;
  pd_gguf_writer *w;
  if (pd_gguf_writer_create(&w)) return 1;
  /* vocabulary: 3 control tokens, 256 bytes, then merged ASCII pairs and triples */
  char **toks = calloc((size_t)vocab, sizeof *toks);
  int32_t *types = calloc((size_t)vocab, sizeof *types);
  char **merges = calloc((size_t)vocab, sizeof *merges);
  if (!toks || !types || !merges) return 1;
  /* ChatML's control tokens; --chat llama3 adds Llama 3's (ids 3..6) */
  const char *specials[7] = {"<|endoftext|>",     "<|im_start|>",        "<|im_end|>",
                             "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                             "<|eot_id|>"};
  const int n_specials = llama3 ? 7 : 3;
  int n = 0, n_merges = 0;
  for (int i = 0; i < n_specials; i++) toks[n] = strdup(specials[i]), types[n++] = 3;
  char ch[8], ch2[8];
  for (int b = 0; b < 256; b++) byte_char(b, ch), toks[n] = strdup(ch), types[n++] = 1;
  /* pairs of printable ASCII (' ' is written as its byte-level character) */
  for (int a = 32; a < 127 && n < vocab; a++)
    for (int b = 32; b < 127 && n < vocab; b++) {
      byte_char(a, ch), byte_char(b, ch2);
      char tok[32], mg[32];
      snprintf(tok, sizeof tok, "%s%s", ch, ch2);
      snprintf(mg, sizeof mg, "%s %s", ch, ch2);
      toks[n] = strdup(tok), types[n++] = 1;
      merges[n_merges++] = strdup(mg);
    }
  /* triples: a pair followed by one more letter */
  for (int p = n_specials + 256; n < vocab; p++)
    for (int c = 'a'; c <= 'z' && n < vocab; c++) {
      char tok[32], mg[40];
      snprintf(tok, sizeof tok, "%s%c", toks[p], c);
      snprintf(mg, sizeof mg, "%s %c", toks[p], c);
      toks[n] = strdup(tok), types[n++] = 1;
      merges[n_merges++] = strdup(mg);
    }
  int rc = 0;
  rc |= pd_gguf_add_str(w, "general.architecture", arch);
  rc |= pd_gguf_add_str(w, "general.name", "prefixd synthetic model");
  rc |= pd_gguf_add_u32(w, "general.alignment", 32);
  rc |= add_hp(w, arch, "block_count", (uint32_t)layers);
  rc |= add_hp(w, arch, "context_length", (uint32_t)ctx);
  rc |= add_hp(w, arch, "embedding_length", (uint32_t)d);
  rc |= add_hp(w, arch, "feed_forward_length", (uint32_t)ffn);
  rc |= add_hp(w, arch, "attention.head_count", (uint32_t)heads);
  rc |= add_hp(w, arch, "attention.head_count_kv", (uint32_t)kv_heads);
  rc |= add_hpf(w, arch, "rope.freq_base", 100000.0f);
  rc |= add_hpf(w, arch, "attention.layer_norm_rms_epsilon", 1e-5f);
  rc |= add_hp(w, arch, "rope.dimension_count", (uint32_t)hd);
  rc |= add_hp(w, arch, "vocab_size", (uint32_t)vocab);
  rc |= pd_gguf_add_str(w, "tokenizer.ggml.model", "gpt2");
  rc |= pd_gguf_add_str(w, "tokenizer.ggml.pre", llama3 ? "llama-bpe" : "smollm");
  rc |= pd_gguf_add_str_arr(w, "tokenizer.ggml.tokens", (const char *const *)toks, (size_t)vocab);
  rc |= pd_gguf_add_i32_arr(w, "tokenizer.ggml.token_type", types, (size_t)vocab);
  rc |= pd_gguf_add_str_arr(w, "tokenizer.ggml.merges", (const char *const *)merges,
                            (size_t)n_merges);
  /* Llama 3: bos <|begin_of_text|> added to prompts, eos <|eot_id|>, its template; else ChatML */
  static const char llama3_template[] =
      "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
      "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | "
      "trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
      "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ "
      "'<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";
  static const char chatml_template[] =
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
      "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
      "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
  rc |= pd_gguf_add_u32(w, "tokenizer.ggml.bos_token_id", llama3 ? 3 : 1);
  rc |= pd_gguf_add_u32(w, "tokenizer.ggml.eos_token_id", llama3 ? 6 : 2);
  if (llama3) rc |= pd_gguf_add_bool(w, "tokenizer.ggml.add_bos_token", 1);
  rc |= pd_gguf_add_str(w, "tokenizer.chat_template", llama3 ? llama3_template : chatml_template);
  if (rc) {
    fprintf(stderr, "prefixd-mkgguf: out of memory\n");
    return 1;
  }
  /* weights: scaled so activations stay O(1) through the layers */
  float s_in = 1.0f / sqrtf((float)d), s_ffn = 1.0f / sqrtf((float)ffn);
  rc = add_weight(w, "token_embd.weight", d, vocab, embd_type, 1.0f, 0.0f);
  if (!rc) rc = add_weight(w, "output_norm.weight", d, 1, PD_GGML_F32, 0.1f, 1.0f);
  if (!rc && untied) rc = add_weight(w, "output.weight", d, vocab, embd_type, s_in, 0.0f);
  if (!rc && rope_freqs)
    rc = add_weight(w, "rope_freqs.weight", d / heads / 2, 1, PD_GGML_F32, 3.5f, 4.5f);
  for (int l = 0; l < layers && !rc; l++) {
    char name[64];
#define W(suffix, cols, rows, t, scale, off)                                                       \
  snprintf(name, sizeof name, "blk.%d." suffix, l);                                                \
  if (!rc) rc = add_weight(w, name, cols, rows, t, scale, off);
    W("attn_norm.weight", d, 1, PD_GGML_F32, 0.1f, 1.0f)
    W("attn_q.weight", d, heads * hd, type, s_in, 0.0f)
    W("attn_k.weight", d, kv_heads * hd, type, s_in, 0.0f)
    W("attn_v.weight", d, kv_heads * hd, type, s_in, 0.0f)
    W("attn_output.weight", heads * hd, d, type, s_in, 0.0f)
    W("ffn_norm.weight", d, 1, PD_GGML_F32, 0.1f, 1.0f)
    W("ffn_gate.weight", d, ffn, ffn_type, s_in, 0.0f)
    W("ffn_up.weight", d, ffn, ffn_type, s_in, 0.0f)
    W("ffn_down.weight", ffn, d, ffn_type, s_ffn, 0.0f)
    if (!strcmp(arch, "qwen2")) { /* qwen2: biases on q, k, v */
      W("attn_q.bias", heads * hd, 1, PD_GGML_F32, 0.1f, 0.0f)
      W("attn_k.bias", kv_heads * hd, 1, PD_GGML_F32, 0.1f, 0.0f)
      W("attn_v.bias", kv_heads * hd, 1, PD_GGML_F32, 0.1f, 0.0f)
    }
#undef W
  }
  char err[256];
  if (!rc)
    rc = pd_gguf_writer_write(w, out, err, sizeof err);
  else
    snprintf(err, sizeof err, "%s", pd_strerror(rc));
  if (rc) fprintf(stderr, "prefixd-mkgguf: %s\n", err);
  for (int i = 0; i < vocab; i++) free(toks[i]), free(merges[i]);
  free(toks), free(types), free(merges);
  pd_gguf_writer_free(w);
  return rc ? 1 : 0;
}
