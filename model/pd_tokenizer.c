/*
 * pd_tokenizer.c -- byte-level BPE; see pd_tokenizer.h.
 *
 * Tables: token text -> id and (left id, right id) -> (rank, merged id) are open-addressing hash
 * maps over XXH3-64; token pieces (decoded bytes) live in one arena. BPE on a pre-tokenized
 * piece runs on a small array of symbols: find the adjacent pair of lowest rank, merge it,
 * repeat (pieces are short, so the quadratic loop is cheaper than a heap).
 */
#include "pd_tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "pd_err.h"
#include "pd_unicode.h"

typedef struct str_slot {
  uint64_t hash;
  int32_t id; /* -1 empty */
} str_slot;

typedef struct merge_slot {
  uint64_t pair; /* left << 32 | right, UINT64_MAX empty */
  int32_t rank, merged;
} merge_slot;

enum {
  TYPE_NORMAL = 1,
  TYPE_UNKNOWN = 2,
  TYPE_CONTROL = 3,
  TYPE_USER = 4,
  TYPE_UNUSED = 5,
  TYPE_BYTE = 6
};
/* The pre-tokenizers (tokenizer.ggml.pre): GPT-2's pattern; SmolLM's (digits alone, then
 * GPT-2's); Llama 3's; Qwen2's (Llama 3's with single digits). */
enum { PRE_GPT2 = 0, PRE_SMOLLM = 1, PRE_LLAMA3 = 2, PRE_QWEN2 = 3 };

struct pd_tokenizer {
  int32_t n_vocab;
  char **text;        /* (n_vocab) token text as in the GGUF, NUL-terminated */
  uint32_t *text_len; /* (n_vocab) */
  char **piece;       /* (n_vocab) decoded bytes */
  uint32_t *piece_len;
  uint8_t *type;   /* (n_vocab) */
  str_slot *vocab; /* text -> id */
  uint64_t vocab_mask;
  merge_slot *merges;
  uint64_t merges_mask;
  int32_t byte_token[256];    /* the token of each single byte */
  int32_t *specials;          /* (n_specials) ids, longest text first */
  uint8_t special_first[256]; /* 1 for a byte that starts some special token */
  int32_t n_specials;
  int32_t bos, eos, eot, im_end, endoftext, eot_id, eom_id;
  int pre;
  int add_bos;         /* tokenizer.ggml.add_bos_token: prompts start with bos */
  size_t max_text_len; /* the longest token text */
};

/* GPT-2's byte <-> character map: printable bytes map to themselves, the rest to 256 + n. */
static uint32_t byte_to_cp[256];
static void init_byte_map(void) {
  int n = 0;
  for (int b = 0; b < 256; b++) {
    int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    byte_to_cp[b] = printable ? (uint32_t)b : (uint32_t)(256 + n++);
  }
}

static int cp_to_byte(uint32_t cp) {
  if (cp < 256 && byte_to_cp[cp] == cp) return (int)cp;
  if (cp >= 256 && cp < 256 + 68) {
    for (int b = 0; b < 256; b++)
      if (byte_to_cp[b] == cp) return b;
  }
  return -1;
}

static uint64_t hash_str(const char *s, size_t n) {
  return XXH3_64bits(s, n);
}

static int32_t vocab_find(const pd_tokenizer *t, const char *s, size_t n) {
  uint64_t h = hash_str(s, n);
  for (uint64_t i = h & t->vocab_mask;; i = (i + 1) & t->vocab_mask) {
    const str_slot *sl = &t->vocab[i];
    if (sl->id < 0) return -1;
    if (sl->hash == h && t->text_len[sl->id] == n && !memcmp(t->text[sl->id], s, n)) return sl->id;
  }
}

static const merge_slot *merge_find(const pd_tokenizer *t, int32_t l, int32_t r) {
  uint64_t key = ((uint64_t)(uint32_t)l << 32) | (uint32_t)r;
  uint64_t h = XXH3_64bits(&key, 8);
  for (uint64_t i = h & t->merges_mask;; i = (i + 1) & t->merges_mask) {
    const merge_slot *m = &t->merges[i];
    if (m->pair == UINT64_MAX) return NULL;
    if (m->pair == key) return m;
  }
}

void pd_tokenizer_free(pd_tokenizer *t) {
  if (!t) return;
  for (int32_t i = 0; i < t->n_vocab; i++) {
    if (t->text) free(t->text[i]);
    if (t->piece) free(t->piece[i]);
  }
  free(t->text), free(t->text_len), free(t->piece), free(t->piece_len), free(t->type);
  free(t->vocab), free(t->merges), free(t->specials);
  free(t);
}

static int cmp_special(const void *a, const void *b, void *arg) {
  const pd_tokenizer *t = arg;
  int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  return (int)t->text_len[y] - (int)t->text_len[x];
}

static int32_t opt_id(const pd_gguf *g, const char *key, int32_t n_vocab) {
  uint32_t v;
  if (pd_gguf_get_u32(g, key, &v) || v >= (uint32_t)n_vocab) return -1;
  return (int32_t)v;
}

int pd_tokenizer_from_gguf(const pd_gguf *g, pd_tokenizer **out, char *err, size_t errlen) {
  *out = NULL;
  init_byte_map();
  pd_str model;
  if (pd_gguf_get_str(g, "tokenizer.ggml.model", &model))
    return pd_errf(err, errlen, PD_ECORRUPT, "tokenizer: tokenizer.ggml.model is missing");
  if (model.len != 4 || memcmp(model.ptr, "gpt2", 4))
    return pd_errf(err, errlen, PD_EUNSUPPORTED,
                   "tokenizer: model '%.*s' is not supported (byte-level BPE, 'gpt2', is)",
                   (int)model.len, model.ptr);
  const pd_str *toks, *merges;
  uint64_t n_toks, n_merges, n_types = 0;
  if (pd_gguf_get_str_arr(g, "tokenizer.ggml.tokens", &toks, &n_toks) || n_toks == 0 ||
      n_toks > (1u << 24))
    return pd_errf(err, errlen, PD_ECORRUPT, "tokenizer: tokenizer.ggml.tokens is missing or bad");
  if (pd_gguf_get_str_arr(g, "tokenizer.ggml.merges", &merges, &n_merges))
    return pd_errf(err, errlen, PD_ECORRUPT, "tokenizer: tokenizer.ggml.merges is missing");
  enum pd_gguf_vtype tt;
  const void *types = NULL;
  if (pd_gguf_get_arr(g, "tokenizer.ggml.token_type", &tt, &n_types, &types) == 0 &&
      (tt != PD_GGUF_I32 || n_types != n_toks))
    return pd_errf(err, errlen, PD_ECORRUPT, "tokenizer: tokenizer.ggml.token_type is malformed");
  pd_tokenizer *t = calloc(1, sizeof *t);
  if (!t) return pd_errf(err, errlen, PD_ENOMEM, "tokenizer: out of memory");
  t->n_vocab = (int32_t)n_toks;
  pd_str pre;
  t->pre = PRE_GPT2;
  if (pd_gguf_get_str(g, "tokenizer.ggml.pre", &pre) == 0) {
    /* llama.cpp's names for each pattern */
    static const struct {
      const char *name;
      int pre;
    } known[] = {{"gpt2", PRE_GPT2},     {"default", PRE_GPT2},    {"smollm", PRE_SMOLLM},
                 {"llama3", PRE_LLAMA3}, {"llama-v3", PRE_LLAMA3}, {"llama-bpe", PRE_LLAMA3},
                 {"qwen2", PRE_QWEN2}};
    size_t k = 0, n_known = sizeof known / sizeof known[0];
    while (k < n_known &&
           !(strlen(known[k].name) == pre.len && !memcmp(pre.ptr, known[k].name, pre.len)))
      k++;
    if (k == n_known) {
      char names[128];
      size_t w = 0;
      for (size_t j = 0; j < n_known && w < sizeof names; j++)
        w += (size_t)snprintf(names + w, sizeof names - w, "%s%s", j ? ", " : "", known[j].name);
      pd_tokenizer_free(t);
      return pd_errf(err, errlen, PD_EUNSUPPORTED,
                     "tokenizer: pre-tokenizer '%.*s' is not supported (%s are)", (int)pre.len,
                     pre.ptr, names);
    }
    t->pre = known[k].pre;
  }
  size_t n = (size_t)n_toks;
  t->text = calloc(n, sizeof *t->text);
  t->text_len = calloc(n, sizeof *t->text_len);
  t->piece = calloc(n, sizeof *t->piece);
  t->piece_len = calloc(n, sizeof *t->piece_len);
  t->type = calloc(n, 1);
  uint64_t vcap = 16;
  while (vcap < 2 * n) vcap <<= 1;
  t->vocab = malloc(vcap * sizeof *t->vocab);
  t->vocab_mask = vcap - 1;
  if (!t->text || !t->text_len || !t->piece || !t->piece_len || !t->type || !t->vocab) goto oom;
  for (uint64_t i = 0; i < vcap; i++) t->vocab[i].id = -1;
  for (int b = 0; b < 256; b++) t->byte_token[b] = -1;
  for (size_t i = 0; i < n; i++) {
    t->text[i] = malloc(toks[i].len + 1);
    /* a piece may grow: an invalid UTF-8 byte in the text is kept as U+FFFD (3 bytes) */
    t->piece[i] = malloc(3 * toks[i].len + 1);
    if (!t->text[i] || !t->piece[i]) goto oom;
    memcpy(t->text[i], toks[i].ptr, toks[i].len);
    t->text[i][toks[i].len] = 0;
    t->text_len[i] = (uint32_t)toks[i].len;
    if (toks[i].len > t->max_text_len) t->max_text_len = toks[i].len;
    int32_t ty = TYPE_NORMAL;
    if (types) memcpy(&ty, (const uint8_t *)types + 4 * i, 4);
    t->type[i] = (uint8_t)(ty >= 1 && ty <= 6 ? ty : TYPE_NORMAL);
    /* piece: special tokens are their text; normal tokens map characters back to bytes */
    if (t->type[i] == TYPE_CONTROL || t->type[i] == TYPE_USER) {
      memcpy(t->piece[i], toks[i].ptr, toks[i].len);
      t->piece_len[i] = (uint32_t)toks[i].len;
    } else {
      const uint8_t *s = (const uint8_t *)toks[i].ptr;
      size_t pos = 0, pl = 0;
      while (pos < toks[i].len) {
        uint32_t cp;
        pos += (size_t)pd_utf8_decode(s + pos, toks[i].len - pos, &cp);
        int b = cp_to_byte(cp);
        if (b < 0) { /* not byte-level: keep the character's own UTF-8 */
          uint8_t u[4];
          int ul = pd_utf8_encode(cp, u);
          memcpy(t->piece[i] + pl, u, (size_t)ul);
          pl += (size_t)ul;
        } else {
          t->piece[i][pl++] = (char)b;
        }
      }
      t->piece_len[i] = (uint32_t)pl;
      if (pl == 1 && t->byte_token[(uint8_t)t->piece[i][0]] < 0 && t->type[i] != TYPE_UNUSED)
        t->byte_token[(uint8_t)t->piece[i][0]] = (int32_t)i;
    }
    uint64_t h = hash_str(t->text[i], toks[i].len);
    uint64_t j = h & t->vocab_mask;
    while (t->vocab[j].id >= 0) j = (j + 1) & t->vocab_mask;
    t->vocab[j] = (str_slot){h, (int32_t)i};
  }
  /* merges */
  uint64_t mcap = 16;
  while (mcap < 2 * n_merges + 2) mcap <<= 1;
  t->merges = malloc(mcap * sizeof *t->merges);
  if (!t->merges) goto oom;
  t->merges_mask = mcap - 1;
  for (uint64_t i = 0; i < mcap; i++) t->merges[i].pair = UINT64_MAX;
  char buf[1024];
  for (uint64_t i = 0; i < n_merges; i++) {
    const char *sp = memchr(merges[i].ptr, ' ', merges[i].len);
    if (!sp || merges[i].len >= sizeof buf) {
      pd_tokenizer_free(t);
      return pd_errf(err, errlen, PD_ECORRUPT, "tokenizer: merge %llu is malformed",
                     (unsigned long long)i);
    }
    size_t ll = (size_t)(sp - merges[i].ptr), rl = merges[i].len - ll - 1;
    int32_t l = vocab_find(t, merges[i].ptr, ll), r = vocab_find(t, sp + 1, rl);
    memcpy(buf, merges[i].ptr, ll);
    memcpy(buf + ll, sp + 1, rl);
    int32_t mg = vocab_find(t, buf, ll + rl);
    if (l < 0 || r < 0 || mg < 0) continue; /* a merge into nothing can never apply */
    uint64_t key = ((uint64_t)(uint32_t)l << 32) | (uint32_t)r;
    uint64_t j = XXH3_64bits(&key, 8) & t->merges_mask;
    while (t->merges[j].pair != UINT64_MAX && t->merges[j].pair != key)
      j = (j + 1) & t->merges_mask;
    if (t->merges[j].pair == key) continue; /* first (lowest) rank wins */
    t->merges[j] = (merge_slot){key, (int32_t)i, mg};
  }
  /* Some vocabularies lack a few control-byte tokens (SmolLM2 has none for 0x04..0x1f...):
   * such bytes are dropped when encoding, as Hugging Face's BPE does without an unknown token. */
  /* specials, longest first */
  t->specials = malloc(n * sizeof *t->specials);
  if (!t->specials) goto oom;
  for (size_t i = 0; i < n; i++)
    if ((t->type[i] == TYPE_CONTROL || t->type[i] == TYPE_USER) && t->text_len[i] > 0) {
      t->specials[t->n_specials++] = (int32_t)i;
      t->special_first[(uint8_t)t->text[i][0]] = 1;
    }
  qsort_r(t->specials, (size_t)t->n_specials, sizeof *t->specials, cmp_special, t);
  t->bos = opt_id(g, "tokenizer.ggml.bos_token_id", t->n_vocab);
  t->eos = opt_id(g, "tokenizer.ggml.eos_token_id", t->n_vocab);
  t->eot = opt_id(g, "tokenizer.ggml.eot_token_id", t->n_vocab);
  t->im_end = vocab_find(t, "<|im_end|>", 10);
  t->endoftext = vocab_find(t, "<|endoftext|>", 13);
  t->eot_id = vocab_find(t, "<|eot_id|>", 10); /* Llama 3's end of turn and of message */
  t->eom_id = vocab_find(t, "<|eom_id|>", 10);
  if (pd_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &t->add_bos)) t->add_bos = 0;
  if (t->bos < 0) t->add_bos = 0;
  *out = t;
  return PD_OK;
oom:
  pd_tokenizer_free(t);
  return pd_errf(err, errlen, PD_ENOMEM, "tokenizer: out of memory");
}

int32_t pd_tokenizer_n_vocab(const pd_tokenizer *t) {
  return t->n_vocab;
}
int32_t pd_tokenizer_bos(const pd_tokenizer *t) {
  return t->bos;
}
int32_t pd_tokenizer_eos(const pd_tokenizer *t) {
  return t->eos;
}

int pd_tokenizer_is_eog(const pd_tokenizer *t, int32_t tok) {
  return tok >= 0 && (tok == t->eos || tok == t->eot || tok == t->im_end || tok == t->endoftext ||
                      tok == t->eot_id || tok == t->eom_id);
}

int pd_tokenizer_is_special(const pd_tokenizer *t, int32_t tok) {
  return tok >= 0 && tok < t->n_vocab &&
         (t->type[tok] == TYPE_CONTROL || t->type[tok] == TYPE_USER);
}

int32_t pd_tokenizer_find(const pd_tokenizer *t, const char *text) {
  return vocab_find(t, text, strlen(text));
}

int pd_token_piece(const pd_tokenizer *t, int32_t tok, const char **bytes, size_t *len) {
  if (tok < 0 || tok >= t->n_vocab) return PD_ERANGE;
  *bytes = t->piece[tok];
  *len = t->piece_len[tok];
  return PD_OK;
}

/* ---- encoding ------------------------------------------------------------------------------ */

typedef struct outbuf {
  int32_t *out;
  size_t cap, n;
} outbuf;

static void emit(outbuf *o, int32_t id) {
  if (o->n < o->cap) o->out[o->n] = id;
  o->n++;
}

/* BPE over the bytes of one pre-tokenized piece. */
/* A candidate merge for the long-piece path: the pair starting at symbol `pos`, as it was when
 * queued (left and right tokens), and its rank. Ordered by rank, then position. */
typedef struct bpe_cand {
  int32_t rank, merged, left, right;
  uint32_t pos;
} bpe_cand;

static int cand_less(const bpe_cand *a, const bpe_cand *b) {
  return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(bpe_cand *h, size_t *n, bpe_cand c) {
  size_t i = (*n)++;
  while (i > 0 && cand_less(&c, &h[(i - 1) / 2])) {
    h[i] = h[(i - 1) / 2];
    i = (i - 1) / 2;
  }
  h[i] = c;
}

static bpe_cand heap_pop(bpe_cand *h, size_t *n) {
  bpe_cand top = h[0], last = h[--(*n)];
  size_t i = 0;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= *n) break;
    if (c + 1 < *n && cand_less(&h[c + 1], &h[c])) c++;
    if (!cand_less(&h[c], &last)) break;
    h[i] = h[c];
    i = c;
  }
  if (*n) h[i] = last;
  return top;
}

/* BPE over one pre-tokenized piece: merges the lowest-ranked adjacent pair, the leftmost among
 * equals, until none applies (Llama 3's tokenizer first takes a piece that is itself in the
 * vocabulary as that token: its tokenizer.json sets ignore_merges). Short pieces (almost every word) rescan the pairs, which is
 * fastest for a handful of symbols; long ones keep the candidates in a heap over a linked list
 * of symbols, O(n log n), so that one 64 KB "word" costs milliseconds, not the engine thread's
 * minute. Both give the same tokens: the heap orders candidates exactly as the rescan picks them,
 * and a candidate whose symbols changed since it was queued is skipped. */
static int bpe_piece(const pd_tokenizer *t, const uint8_t *s, size_t n, outbuf *o) {
  if (t->pre == PRE_LLAMA3) { /* ignore_merges: a piece that is a token is that token */
    /* the piece's byte-level text; one longer than the longest token is no token (nor, here,
     * one over 1 KiB: no real vocabulary has such tokens) */
    char text[1024];
    const size_t limit = t->max_text_len < sizeof text ? t->max_text_len : sizeof text;
    size_t len = 0, i = 0;
    for (; i < n; i++) {
      int32_t b = t->byte_token[s[i]];
      if (b < 0 || len + t->text_len[b] > limit) break;
      memcpy(text + len, t->text[b], t->text_len[b]);
      len += t->text_len[b];
    }
    int32_t whole = i == n ? vocab_find(t, text, len) : -1;
    if (whole >= 0) {
      emit(o, whole);
      return PD_OK;
    }
  }
  int32_t stack_syms[64];
  int32_t *sym = n <= 64 ? stack_syms : malloc(n * sizeof *sym);
  if (!sym) return PD_ENOMEM;
  size_t m = 0;
  for (size_t i = 0; i < n; i++)
    if (t->byte_token[s[i]] >= 0) sym[m++] = t->byte_token[s[i]];
  if (m <= 64) {
    for (;;) {
      int32_t best_rank = INT32_MAX, best_merged = -1;
      size_t best_i = 0;
      for (size_t i = 0; i + 1 < m; i++) {
        const merge_slot *mg = merge_find(t, sym[i], sym[i + 1]);
        if (mg && mg->rank < best_rank) best_rank = mg->rank, best_merged = mg->merged, best_i = i;
      }
      if (best_merged < 0) break;
      sym[best_i] = best_merged;
      memmove(sym + best_i + 1, sym + best_i + 2, (m - best_i - 2) * sizeof *sym);
      m--;
    }
    for (size_t i = 0; i < m; i++) emit(o, sym[i]);
    if (sym != stack_syms) free(sym);
    return PD_OK;
  }
  uint32_t *next = malloc(m * sizeof *next);     /* (m) the next live symbol, or m */
  uint32_t *prev = malloc(m * sizeof *prev);     /* (m) the previous live symbol, or UINT32_MAX */
  bpe_cand *heap = malloc(2 * m * sizeof *heap); /* at most m - 1 at start, 2 per merge */
  if (!next || !prev || !heap) {
    free(next), free(prev), free(heap), free(sym);
    return PD_ENOMEM;
  }
  size_t n_heap = 0;
  for (size_t i = 0; i < m; i++) {
    next[i] = (uint32_t)(i + 1);
    prev[i] = i ? (uint32_t)(i - 1) : UINT32_MAX;
  }
#define QUEUE_PAIR(L)                                                                              \
  do {                                                                                             \
    uint32_t l_ = (L);                                                                             \
    if (l_ != UINT32_MAX && next[l_] < m) {                                                        \
      const merge_slot *mg_ = merge_find(t, sym[l_], sym[next[l_]]);                               \
      if (mg_)                                                                                     \
        heap_push(heap, &n_heap, (bpe_cand){mg_->rank, mg_->merged, sym[l_], sym[next[l_]], l_});  \
    }                                                                                              \
  } while (0)
  for (size_t i = 0; i + 1 < m; i++) QUEUE_PAIR((uint32_t)i);
  while (n_heap) {
    bpe_cand c = heap_pop(heap, &n_heap);
    uint32_t l = c.pos, r = next[l];
    if (sym[l] != c.left || r >= m || sym[r] != c.right) continue; /* stale */
    sym[l] = c.merged;
    sym[r] = -1;
    next[l] = next[r];
    if (next[r] < m) prev[next[r]] = l;
    QUEUE_PAIR(prev[l]);
    QUEUE_PAIR(l);
  }
#undef QUEUE_PAIR
  for (uint32_t i = 0; i < m; i = next[i]) emit(o, sym[i]);
  free(next), free(prev), free(heap), free(sym);
  return PD_OK;
}

typedef struct cps {
  uint32_t cp;
  uint32_t off; /* byte offset */
} cps;

/* The GPT-2 pattern over code points c[0..n): returns the length (in code points) of the match
 * at i. 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static size_t gpt2_match(const cps *c, size_t n, size_t i) {
  uint32_t c0 = c[i].cp;
  if (c0 == '\'' && i + 1 < n) {
    uint32_t c1 = c[i + 1].cp;
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
    if (i + 2 < n) {
      uint32_t c2 = c[i + 2].cp;
      if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l'))
        return 3;
    }
  }
  size_t j = i + (c0 == ' ' && i + 1 < n ? 1 : 0);
  /* ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: the optional space only if the class follows */
  for (int cls = 0; cls < 3; cls++) {
    for (size_t start = j;; start = i) {
      size_t k = start;
      while (k < n) {
        uint32_t cp = c[k].cp;
        int ok = cls == 0   ? pd_unicode_is_letter(cp)
                 : cls == 1 ? pd_unicode_is_number(cp)
                            : !pd_unicode_is_space(cp) && !pd_unicode_is_letter(cp) &&
                                  !pd_unicode_is_number(cp);
        if (!ok) break;
        k++;
      }
      if (k > start) return k - i;
      if (start == i) break;
    }
  }
  /* whitespace */
  size_t k = i;
  while (k < n && pd_unicode_is_space(c[k].cp)) k++;
  if (k > i) {
    if (k < n && k - i > 1) return k - 1 - i; /* \s+(?!\S): leave the last one to the next word */
    return k - i;
  }
  return 1; /* unreachable: every code point is in some class */
}

static int is_other(uint32_t cp) { /* [^\s\p{L}\p{N}] */
  return !pd_unicode_is_space(cp) && !pd_unicode_is_letter(cp) && !pd_unicode_is_number(cp);
}

static uint32_t ascii_lower(uint32_t cp) {
  return cp >= 'A' && cp <= 'Z' ? cp + 32 : cp;
}

/* Llama 3's pattern over code points c[0..n), the length of the match at i; max_digits is 3
 * (Llama 3) or 1 (Qwen2, whose \p{N} stands alone). Each alternative in order, the first that
 * matches wins, as the regex engine does:
 *   (?i:'s|'t|'re|'ve|'m|'ll|'d) | [^\r\n\p{L}\p{N}]?\p{L}+ | \p{N}{1,3} |
 *    ?[^\s\p{L}\p{N}]+[\r\n]* | \s*[\r\n]+ | \s+(?!\S) | \s+ */
static size_t llama3_match(const cps *c, size_t n, size_t i, size_t max_digits) {
  uint32_t c0 = c[i].cp;
  if (c0 == '\'' && i + 1 < n) {
    uint32_t c1 = ascii_lower(c[i + 1].cp), c2 = i + 2 < n ? ascii_lower(c[i + 2].cp) : 0;
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
    if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 3;
  }
  /* letters, after at most one character that is not a newline, letter or number */
  size_t j = i;
  if (!pd_unicode_is_letter(c0) && c0 != '\r' && c0 != '\n' && !pd_unicode_is_number(c0) &&
      i + 1 < n && pd_unicode_is_letter(c[i + 1].cp))
    j = i + 1;
  if (pd_unicode_is_letter(c[j].cp)) {
    while (j < n && pd_unicode_is_letter(c[j].cp)) j++;
    return j - i;
  }
  if (pd_unicode_is_number(c0)) {
    size_t k = i;
    while (k < n && k - i < max_digits && pd_unicode_is_number(c[k].cp)) k++;
    return k - i;
  }
  /* punctuation and symbols, after at most one space, then any newlines */
  j = c0 == ' ' && i + 1 < n && is_other(c[i + 1].cp) ? i + 1 : i;
  if (is_other(c[j].cp)) {
    while (j < n && is_other(c[j].cp)) j++;
    while (j < n && (c[j].cp == '\r' || c[j].cp == '\n')) j++;
    return j - i;
  }
  /* whitespace: up to its last newline if it has one; else all but the last character before
   * a non-space (which goes with the next piece); else all */
  size_t k = i, last_newline = n;
  while (k < n && pd_unicode_is_space(c[k].cp)) {
    if (c[k].cp == '\r' || c[k].cp == '\n') last_newline = k;
    k++;
  }
  if (last_newline < n) return last_newline + 1 - i;
  if (k < n && k - i > 1) return k - 1 - i;
  return k > i ? k - i : 1;
}

/* Cuts bytes s[0..n) (no special tokens in it) into the pre-tokenizer's pieces and calls
 * piece(ctx, bytes, length) on each in order; stops at the first nonzero return. */
typedef int (*piece_fn)(void *ctx, const uint8_t *p, size_t len);
static int split_text(const pd_tokenizer *t, const uint8_t *s, size_t n, piece_fn piece,
                      void *ctx) {
  if (n == 0) return PD_OK;
  cps *c = malloc((n + 1) * sizeof *c);
  if (!c) return PD_ENOMEM;
  size_t nc = 0;
  for (size_t pos = 0; pos < n;) {
    uint32_t cp;
    int l = pd_utf8_decode(s + pos, n - pos, &cp);
    c[nc++] = (cps){cp, (uint32_t)pos};
    pos += (size_t)l;
  }
  c[nc].off = (uint32_t)n;
  int rc = PD_OK;
  if (t->pre == PRE_LLAMA3 || t->pre == PRE_QWEN2) {
    for (size_t i = 0; i < nc && !rc;) {
      size_t len = llama3_match(c, nc, i, t->pre == PRE_LLAMA3 ? 3 : 1);
      rc = piece(ctx, s + c[i].off, c[i + len].off - c[i].off);
      i += len;
    }
    free(c);
    return rc;
  }
  /* smollm: split digits off one by one first; the GPT-2 pattern runs within each stretch */
  size_t start = 0;
  while (start < nc && !rc) {
    size_t end = start;
    if (t->pre == PRE_SMOLLM && pd_unicode_is_number(c[start].cp)) {
      end = start + 1;
      rc = piece(ctx, s + c[start].off, c[end].off - c[start].off);
      start = end;
      continue;
    }
    while (end < nc && !(t->pre == PRE_SMOLLM && pd_unicode_is_number(c[end].cp))) end++;
    for (size_t i = start; i < end && !rc;) {
      size_t len = gpt2_match(c, end, i);
      rc = piece(ctx, s + c[i].off, c[i + len].off - c[i].off);
      i += len;
    }
    start = end;
  }
  free(c);
  return rc;
}

typedef struct bpe_ctx {
  const pd_tokenizer *t;
  outbuf *o;
} bpe_ctx;

static int bpe_each(void *ctx, const uint8_t *p, size_t len) {
  bpe_ctx *b = ctx;
  return bpe_piece(b->t, p, len, b->o);
}

/* Pre-tokenizes bytes s[0..n) (no special tokens in it) and runs BPE on each piece. */
static int encode_text(const pd_tokenizer *t, const uint8_t *s, size_t n, outbuf *o) {
  bpe_ctx b = {t, o};
  return split_text(t, s, n, bpe_each, &b);
}

typedef struct split_ctx {
  const uint8_t *base;
  size_t *ends, cap, n;
} split_ctx;

static int record_end(void *ctx, const uint8_t *p, size_t len) {
  split_ctx *sc = ctx;
  if (sc->n < sc->cap) sc->ends[sc->n] = (size_t)(p - sc->base) + len;
  sc->n++;
  return PD_OK;
}

int pd_tokenizer_split(const pd_tokenizer *t, const char *text, size_t len, size_t *ends,
                       size_t cap, size_t *n_out) {
  split_ctx sc = {(const uint8_t *)text, ends, cap, 0};
  int rc = split_text(t, (const uint8_t *)text, len, record_end, &sc);
  *n_out = sc.n;
  return rc ? rc : sc.n > cap ? PD_EFULL : PD_OK;
}

int pd_tokenize(const pd_tokenizer *t, const char *text, size_t len, int parse_special,
                int32_t *out, size_t cap, size_t *n_out) {
  outbuf o = {out, cap, 0};
  const uint8_t *s = (const uint8_t *)text;
  size_t seg = 0;
  int rc = PD_OK;
  if (parse_special) {
    for (size_t i = 0; i < len && !rc;) {
      int32_t hit = -1;
      if (t->special_first[s[i]])
        for (int32_t k = 0; k < t->n_specials; k++) {
          int32_t id = t->specials[k];
          if (t->text_len[id] <= len - i && !memcmp(s + i, t->text[id], t->text_len[id])) {
            hit = id;
            break;
          }
        }
      if (hit < 0) {
        i++;
        continue;
      }
      rc = encode_text(t, s + seg, i - seg, &o);
      emit(&o, hit);
      i += t->text_len[hit];
      seg = i;
    }
  }
  if (!rc) rc = encode_text(t, s + seg, len - seg, &o);
  *n_out = o.n;
  if (!rc && o.n > cap) rc = PD_EFULL;
  return rc;
}

int pd_tokenize_prompt(const pd_tokenizer *t, const char *text, size_t len, int32_t *out,
                       size_t cap, size_t *n_out) {
  int rc = pd_tokenize(t, text, len, 1, out, cap, n_out);
  if ((rc && rc != PD_EFULL) || !t->add_bos) return rc;
  if (*n_out && cap && out[0] == t->bos) return rc; /* the text opens with the bos token */
  if (cap) { /* the ids move up one place (the last one falls off when they filled out) */
    memmove(out + 1, out, (*n_out < cap ? *n_out : cap - 1) * sizeof *out);
    out[0] = t->bos;
  }
  ++*n_out;
  return *n_out > cap ? PD_EFULL : PD_OK;
}
