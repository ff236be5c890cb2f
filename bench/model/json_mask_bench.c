/*
 * json_mask_bench.c -- what constrained JSON decoding costs per step: the time to find every token
 * a JSON grammar allows next (the mask), on a real vocabulary, at the kinds of places a generation
 * passes through, for plain JSON output and for a schema.
 *
 * Side by side in one run: the mask as the sampler computes it (pd_json_constraint: inside a
 * string, the plain tokens as they are and a walk of the others' trie) and a walk of the whole
 * vocabulary's trie from the same state (what the mask cost before plain tokens were set apart).
 * Both find the same tokens (checked here; tests/runtime/test_json.c checks it on every token).
 *
 *   build/bench/model/json_mask_bench MODEL.gguf [--reps N] [--out FILE.md]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pd_gguf.h"
#include "pd_json_constraint.h"
#include "pd_json_vocab.h"
#include "pd_tokenizer.h"

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e3 + (double)t.tv_nsec * 1e-6;
}

static int32_t walked;
static void count(void *user, int32_t tok) {
  (void)user, (void)tok;
  walked++;
}

int main(int argc, char **argv) {
  const char *model = NULL, *out_path = NULL;
  int reps = 200;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--reps") && i + 1 < argc)
      reps = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--out") && i + 1 < argc)
      out_path = argv[++i];
    else
      model = argv[i];
  }
  if (!model || reps < 1) {
    fprintf(stderr, "usage: json_mask_bench MODEL.gguf [--reps N] [--out FILE.md]\n");
    return 2;
  }
  char err[256];
  pd_gguf *g;
  pd_tokenizer *tok;
  if (pd_gguf_open(model, &g, err, sizeof err) ||
      pd_tokenizer_from_gguf(g, &tok, err, sizeof err)) {
    fprintf(stderr, "json_mask_bench: %s\n", err);
    return 1;
  }
  double t0 = now_ms();
  pd_json_vocab *vocab;
  const char *schema_text =
      "{\"type\": \"object\", \"properties\": {\"name\": {\"type\": \"string\"}, "
      "\"age\": {\"type\": \"integer\"}, \"tags\": {\"type\": \"array\", "
      "\"items\": {\"enum\": [\"red\", \"green\"]}}}, "
      "\"required\": [\"name\", \"age\", \"tags\"]}";
  pd_json_schema *schema;
  if (pd_json_vocab_build(tok, &vocab) ||
      pd_json_schema_compile(schema_text, strlen(schema_text), &schema, err, sizeof err)) {
    fprintf(stderr, "json_mask_bench: out of memory or bad schema\n");
    return 1;
  }
  double build_ms = now_ms() - t0;
  int32_t n_vocab = pd_tokenizer_n_vocab(tok);
  float *logits = malloc((size_t)n_vocab * sizeof *logits);
  /* generous scratch for the whole-trie walk of either state kind */
  void *scratch = malloc((pd_token_trie_max_len(vocab->all) + 1) * sizeof(pd_schema_state));
  const struct {
    const char *where, *text;
  } points[] = {
      {"before the object", ""},
      {"after '{'", "{"},
      {"inside a string", "{\"name\": \"Jo"},
      {"inside a number", "{\"name\": \"Jo\", \"age\": 4"},
      {"after a value", "{\"name\": \"Jo\", \"age\": 41"},
      {"in a list's string (schema: an enum value)",
       "{\"name\": \"Jo\", \"age\": 41, \"tags\": [\"gr"},
  };
  char table[8192];
  size_t len = 0;
  len +=
      (size_t)snprintf(table + len, sizeof table - len,
                       "| grammar | where | tokens allowed | mask (ms) | whole-trie walk (ms) |\n"
                       "| --- | --- | --- | --- | --- |\n");
  for (int k = 0; k < 2; k++)
    for (size_t p = 0; p < sizeof points / sizeof points[0]; p++) {
      pd_json_constraint *c;
      if (pd_json_constraint_create(vocab, k ? schema : NULL, &c)) return 1;
      int32_t ids[256];
      size_t n_ids;
      if (pd_tokenize(tok, points[p].text, strlen(points[p].text), 0, ids, 256, &n_ids)) return 1;
      int ok = 1;
      for (size_t i = 0; i < n_ids; i++) ok &= pd_json_constraint_accept(c, ids[i]) == 0;
      if (!ok) { /* the plain grammar has no enum: that point is the schema's */
        pd_json_constraint_free(c);
        continue;
      }
      pd_token_constraint rule = pd_json_constraint_rule(c);
      int32_t allowed = 0;
      double m0 = now_ms();
      for (int r = 0; r < reps; r++) allowed = rule.mask(rule.ctx, logits);
      double mask_ms = (now_ms() - m0) / reps;
      /* the whole trie from the same state: the constraint's state is its first member */
      pd_json_state js;
      pd_schema_state ss;
      pd_json_init(&js, 1);
      pd_schema_init(&ss, schema);
      for (size_t i = 0; i < n_ids; i++) {
        const char *b;
        size_t n;
        pd_token_piece(tok, ids[i], &b, &n);
        for (size_t j = 0; j < n; j++)
          k ? pd_schema_step(&ss, (uint8_t)b[j]) : pd_json_step(&js, (uint8_t)b[j]);
      }
      double w0 = now_ms();
      for (int r = 0; r < reps; r++) {
        walked = 0;
        if (k)
          pd_token_trie_walk(vocab->all, &ss, sizeof ss, pd_schema_step, scratch, count, NULL);
        else
          pd_token_trie_walk(vocab->all, &js, sizeof js, pd_json_step, scratch, count, NULL);
      }
      double walk_ms = (now_ms() - w0) / reps;
      if (walked > allowed || allowed - walked > 8) { /* the mask adds only end-of-generation */
        fprintf(stderr, "json_mask_bench: the mask found %d tokens, the walk %d\n", allowed,
                walked);
        return 1;
      }
      len += (size_t)snprintf(table + len, sizeof table - len, "| %s | %s | %d | %.3f | %.3f |\n",
                              k ? "schema" : "json_object", points[p].where, allowed, mask_ms,
                              walk_ms);
      pd_json_constraint_free(c);
    }
  char head[1024];
  time_t now = time(NULL);
  char when[64];
  strftime(when, sizeof when, "%Y-%m-%d %H:%M UTC", gmtime(&now));
  snprintf(
      head, sizeof head,
      "# Constrained JSON: the mask per step\n\nCommand: `build/bench/model/json_mask_bench %s "
      "--reps %d`, %s. Vocabulary: %d tokens, %d of them plain string text; building the "
      "tries and the plain list took %.1f ms (once per model, at the first JSON request). "
      "Mean over %d masks, one thread. The mask also writes every disallowed logit (-inf), "
      "which the bare walk does not. The schema: `%s`.\n\n",
      model, reps, when, n_vocab, vocab->n_plain, build_ms, reps, schema_text);
  printf("%s%s", head, table);
  if (out_path) {
    FILE *f = fopen(out_path, "w");
    if (!f) return 1;
    fprintf(f, "%s%s", head, table);
    fclose(f);
  }
  free(scratch);
  free(logits);
  pd_json_schema_free(schema);
  pd_json_vocab_free(vocab);
  pd_tokenizer_free(tok);
  pd_gguf_close(g);
  return 0;
}
