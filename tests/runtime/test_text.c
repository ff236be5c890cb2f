/*
 * test_text.c -- tokenizer specials, ChatML rendering, the streaming detokenizer and the
 * sampler, on a synthetic model made by prefixd-mkgguf (PD_TINY_MODEL).
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_chat.h"
#include "pd_check.h"
#include "pd_detok.h"
#include "pd_err.h"
#include "pd_gguf.h"
#include "pd_sampler.h"
#include "pd_tokenizer.h"

static pd_gguf *g;
static pd_tokenizer *tok;

static void setup(void) {
  char err[256];
  const char *path = getenv("PD_TINY_MODEL");
  ck_assert_ptr_nonnull(path);
  ck_assert_msg(pd_gguf_open(path, &g, err, sizeof err) == 0, "%s", err);
  ck_assert_msg(pd_tokenizer_from_gguf(g, &tok, err, sizeof err) == 0, "%s", err);
}

static void teardown(void) {
  pd_tokenizer_free(tok);
  pd_gguf_close(g);
}

static size_t encode(const char *text, int special, int32_t *ids, size_t cap) {
  size_t n;
  ck_assert_int_eq(pd_tokenize(tok, text, strlen(text), special, ids, cap, &n), 0);
  return n;
}

/* Feeds ids through a detokenizer; returns the text (static buffer) and whether it stopped. */
static const char *detok_all(const int32_t *ids, size_t n, const char *const *stops, size_t n_stops,
                             int *stopped) {
  static char text[4096];
  size_t len = 0;
  pd_detok *d;
  ck_assert_int_eq(pd_detok_create(tok, stops, n_stops, &d), 0);
  *stopped = 0;
  for (size_t i = 0; i < n; i++) {
    char out[256];
    size_t n_out;
    ck_assert_int_eq(pd_detok_push(d, ids[i], out, sizeof out, &n_out, stopped), 0);
    memcpy(text + len, out, n_out);
    len += n_out;
  }
  char out[256];
  size_t n_out;
  ck_assert_int_eq(pd_detok_flush(d, out, sizeof out, &n_out), 0);
  memcpy(text + len, out, n_out);
  text[len + n_out] = 0;
  pd_detok_free(d);
  return text;
}

START_TEST(special_tokens_only_when_asked) {
  int32_t ids[64];
  size_t n = encode("<|im_start|>hi<|im_end|>", 1, ids, 64);
  ck_assert_int_eq(ids[0], pd_tokenizer_find(tok, "<|im_start|>"));
  ck_assert_int_eq(ids[n - 1], pd_tokenizer_find(tok, "<|im_end|>"));
  ck_assert(pd_tokenizer_is_eog(tok, ids[n - 1]));
  n = encode("<|im_start|>hi", 0, ids, 64);
  for (size_t i = 0; i < n; i++) ck_assert(!pd_tokenizer_is_special(tok, ids[i]));
  size_t full;
  ck_assert_int_eq(pd_tokenize(tok, "abcdefgh", 8, 0, ids, 1, &full), PD_EFULL);
  ck_assert_uint_gt(full, 1);
  const char *p;
  size_t pl;
  ck_assert_int_eq(pd_token_piece(tok, -1, &p, &pl), PD_ERANGE);
  ck_assert_int_eq(pd_token_piece(tok, pd_tokenizer_n_vocab(tok), &p, &pl), PD_ERANGE);
}
END_TEST

START_TEST(chatml_rendering) {
  pd_chat_template tpl;
  char err[256];
  ck_assert_int_eq(pd_chat_template_from_gguf(g, &tpl, err, sizeof err), 0);
  pd_chat_msg msgs[2] = {{.role = "system", .content = "Be brief."},
                         {.role = "user", .content = "Hi"}};
  char *text;
  ck_assert_int_eq(pd_chat_render(&tpl, msgs, 2, NULL, 0, 1, &text, err, sizeof err), 0);
  ck_assert_str_eq(text, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                         "<|im_start|>assistant\n");
  free(text);
  pd_chat_msg bad = {.role = "wizard", .content = "x"};
  ck_assert_int_eq(pd_chat_render(&tpl, &bad, 1, NULL, 0, 1, &text, err, sizeof err), PD_EINVAL);
  ck_assert(strstr(err, "role") != NULL);
}
END_TEST

#define WEATHER_PARAMS                                                                             \
  "{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}},\"required\":[\"city\"]}"
#define WEATHER_SIG                                                                                \
  "{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Weather " \
  "of a city\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": "     \
  "\"string\"}}, \"required\": [\"city\"]}}}"
#define CHATML_TOOLS                                                                               \
  "# Tools\n\nYou can call functions to help with the request. Their signatures, as JSON, are "    \
  "within <tools></tools> XML tags:\n<tools>\n" WEATHER_SIG                                        \
  "\n</tools>\n\nTo call a function, answer with a JSON object holding its name and its "          \
  "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": "                   \
  "<function-name>, \"arguments\": <args-json-object>}\n</tool_call>"

/* Tool calling in ChatML: the signatures in the system message (the given one, the template's
 * default one, or one of their own), calls after the assistant's content, results in a row as
 * one user turn; malformed tools and calls refused. */
START_TEST(chatml_tool_rendering) {
  pd_chat_template tpl = {.kind = PD_CHAT_CHATML};
  char err[256], *text;
  pd_chat_tool tool = {"get_weather", "Weather of a city", WEATHER_PARAMS};
  pd_chat_tool_call call = {"get_weather", "{\"city\": \"Paris\"}"};
  pd_chat_msg msgs[6] = {
      {.role = "system", .content = "Be brief."},
      {.role = "user", .content = "Weather in Paris?"},
      {.role = "assistant", .content = "", .tool_calls = &call, .n_tool_calls = 1},
      {.role = "tool", .content = "18 C"},
      {.role = "tool", .content = "sunny"},
      {.role = "assistant", .content = "18 C, sunny."}};
  ck_assert_int_eq(pd_chat_render(&tpl, msgs, 6, &tool, 1, 1, &text, err, sizeof err), 0);
  ck_assert_str_eq(text, "<|im_start|>system\nBe brief.\n\n" CHATML_TOOLS "<|im_end|>\n"
                         "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
                         "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", "
                         "\"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n"
                         "<|im_start|>user\n<tool_response>\n18 C\n</tool_response>\n"
                         "<tool_response>\nsunny\n</tool_response><|im_end|>\n"
                         "<|im_start|>assistant\n18 C, sunny.<|im_end|>\n<|im_start|>assistant\n");
  free(text);
  /* no system message: the tools make one (after the template's default, if it has one); a
   * call with content and arguments that are not an object */
  pd_chat_tool_call odd = {"get_weather", "Paris"};
  pd_chat_msg two[2] = {
      {.role = "user", .content = "Hi"},
      {.role = "assistant", .content = "Let me see.", .tool_calls = &odd, .n_tool_calls = 1}};
  ck_assert_int_eq(pd_chat_render(&tpl, two, 2, &tool, 1, 0, &text, err, sizeof err), 0);
  ck_assert_str_eq(text, "<|im_start|>system\n" CHATML_TOOLS "<|im_end|>\n<|im_start|>user\n"
                         "Hi<|im_end|>\n<|im_start|>assistant\nLet me see.\n<tool_call>\n"
                         "{\"name\": \"get_weather\", \"arguments\": \"Paris\"}\n</tool_call>"
                         "<|im_end|>\n");
  free(text);
  snprintf(tpl.default_system, sizeof tpl.default_system, "You are kind.");
  ck_assert_int_eq(pd_chat_render(&tpl, two, 1, &tool, 1, 0, &text, err, sizeof err), 0);
  ck_assert_str_eq(text, "<|im_start|>system\nYou are kind.\n\n" CHATML_TOOLS "<|im_end|>\n"
                         "<|im_start|>user\nHi<|im_end|>\n");
  free(text);
  /* without tools nothing changes, an empty system message included */
  pd_chat_msg empty_system[1] = {{.role = "system", .content = ""}};
  ck_assert_int_eq(pd_chat_render(&tpl, empty_system, 1, NULL, 0, 0, &text, err, sizeof err), 0);
  ck_assert_str_eq(text, "<|im_start|>system\n<|im_end|>\n");
  free(text);
  pd_chat_tool bad = {"f", NULL, "[1, 2]"};
  ck_assert_int_eq(pd_chat_render(&tpl, two, 1, &bad, 1, 0, &text, err, sizeof err), PD_EINVAL);
  ck_assert_msg(strstr(err, "tool 0's parameters are not a JSON object") != NULL, "%s", err);
  pd_chat_tool nameless = {"", NULL, NULL};
  ck_assert_int_eq(pd_chat_render(&tpl, two, 1, &nameless, 1, 0, &text, err, sizeof err),
                   PD_EINVAL);
  pd_chat_tool_call anonymous = {"", "{}"};
  two[1].tool_calls = &anonymous;
  ck_assert_int_eq(pd_chat_render(&tpl, two, 2, NULL, 0, 0, &text, err, sizeof err), PD_EINVAL);
  ck_assert_msg(strstr(err, "tool call 0 has no name") != NULL, "%s", err);
}
END_TEST

/* Tool calling in Llama 3's JSON convention: the signatures and how to call at the start of the
 * first user message, a call as the assistant's content, a result as an ipython turn. */
START_TEST(llama3_tool_rendering) {
  pd_chat_template tpl = {.kind = PD_CHAT_LLAMA3};
  char err[256], *text;
  pd_chat_tool tool = {"get_weather", "Weather of a city", WEATHER_PARAMS};
  pd_chat_tool_call call = {"get_weather", "{\"city\": \"Paris\"}"};
  pd_chat_msg msgs[3] = {
      {.role = "user", .content = "Weather in Paris?"},
      {.role = "assistant", .content = "", .tool_calls = &call, .n_tool_calls = 1},
      {.role = "tool", .content = "18 C"}};
  ck_assert_int_eq(pd_chat_render(&tpl, msgs, 3, &tool, 1, 1, &text, err, sizeof err), 0);
  ck_assert_str_eq(text, "<|start_header_id|>user<|end_header_id|>\n\nYou can call the functions "
                         "below. To call one, answer with nothing but a JSON object of the form "
                         "{\"name\": function name, \"parameters\": dictionary of argument name "
                         "and its value}.\n\n" WEATHER_SIG "\n\nWeather in Paris?<|eot_id|>"
                         "<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": "
                         "\"get_weather\", \"parameters\": {\"city\": \"Paris\"}}<|eot_id|>"
                         "<|start_header_id|>ipython<|end_header_id|>\n\n18 C<|eot_id|>"
                         "<|start_header_id|>assistant<|end_header_id|>\n\n");
  free(text);
  ck_assert_str_eq(pd_chat_arguments_key(&tpl), "parameters");
  tpl.kind = PD_CHAT_CHATML;
  ck_assert_str_eq(pd_chat_arguments_key(&tpl), "arguments");
}
END_TEST

/* A model with Llama 3's conventions (prefixd-mkgguf --chat llama3): its chat template rendered
 * as its Jinja renders it (content trimmed), bos added to a prompt once, <|eot_id|> ending
 * generation; the ChatML model adds no bos. */
START_TEST(llama3_conventions) {
  char err[256];
  pd_gguf *g3;
  pd_tokenizer *t3;
  const char *path = getenv("PD_TINY_LLAMA3");
  ck_assert_ptr_nonnull(path);
  ck_assert_msg(pd_gguf_open(path, &g3, err, sizeof err) == 0, "%s", err);
  ck_assert_msg(pd_tokenizer_from_gguf(g3, &t3, err, sizeof err) == 0, "%s", err);
  pd_chat_template tpl;
  ck_assert_int_eq(pd_chat_template_from_gguf(g3, &tpl, err, sizeof err), 0);
  ck_assert_int_eq(tpl.kind, PD_CHAT_LLAMA3);
  pd_chat_msg msgs[2] = {{.role = "system", .content = " Be brief.\n"},
                         {.role = "user", .content = "Hi"}};
  char *text;
  ck_assert_int_eq(pd_chat_render(&tpl, msgs, 2, NULL, 0, 1, &text, err, sizeof err), 0);
  ck_assert_str_eq(text, "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                         "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                         "<|start_header_id|>assistant<|end_header_id|>\n\n");
  int32_t ids[256];
  size_t n;
  const int32_t bos = pd_tokenizer_find(t3, "<|begin_of_text|>");
  ck_assert_int_eq(pd_tokenizer_bos(t3), bos);
  ck_assert_int_eq(pd_tokenize_prompt(t3, text, strlen(text), ids, 256, &n), 0);
  ck_assert_int_eq(ids[0], bos);
  ck_assert_int_eq(ids[1], pd_tokenizer_find(t3, "<|start_header_id|>"));
  size_t n_again;
  const char *opened = "<|begin_of_text|>hello";
  ck_assert_int_eq(pd_tokenize_prompt(t3, opened, strlen(opened), ids, 256, &n_again), 0);
  ck_assert_int_eq(ids[0], bos);
  ck_assert_int_ne(ids[1], bos); /* not twice */
  ck_assert_int_eq(pd_tokenize_prompt(t3, "hello", 5, ids, 1, &n_again), PD_EFULL);
  ck_assert(pd_tokenizer_is_eog(t3, pd_tokenizer_find(t3, "<|eot_id|>")));
  free(text);
  pd_tokenizer_free(t3);
  pd_gguf_close(g3);
  /* the ChatML model: no bos */
  ck_assert_int_eq(pd_tokenize_prompt(tok, "hello", 5, ids, 256, &n), 0);
  ck_assert_int_ne(ids[0], pd_tokenizer_bos(tok));
  ck_assert_uint_eq(n, encode("hello", 1, ids, 256));
}
END_TEST

START_TEST(detok_never_breaks_utf8) {
  /* The tiny vocabulary has no merges beyond ASCII: the emoji is four byte tokens. */
  const char *text = "h\xc3\xa9llo \xf0\x9f\x98\x80 ok";
  int32_t ids[64];
  size_t n = encode(text, 0, ids, 64);
  pd_detok *d;
  ck_assert_int_eq(pd_detok_create(tok, NULL, 0, &d), 0);
  char all[256] = "";
  size_t len = 0;
  for (size_t i = 0; i < n; i++) {
    char out[64];
    size_t n_out;
    int stopped;
    ck_assert_int_eq(pd_detok_push(d, ids[i], out, sizeof out, &n_out, &stopped), 0);
    /* every piece released is whole UTF-8: it never ends inside a character */
    if (n_out) {
      unsigned char last = (unsigned char)out[n_out - 1];
      ck_assert_msg(last < 0x80 || (last & 0xC0) == 0x80, "piece ends on a lead byte");
      size_t k = n_out;
      while (k > 0 && ((unsigned char)out[k - 1] & 0xC0) == 0x80) k--;
      if (k > 0 && (unsigned char)out[k - 1] >= 0xC0) {
        unsigned char lead = (unsigned char)out[k - 1];
        size_t want = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2;
        ck_assert_uint_eq(n_out - (k - 1), want);
      }
    }
    memcpy(all + len, out, n_out);
    len += n_out;
  }
  char out[64];
  size_t n_out;
  ck_assert_int_eq(pd_detok_flush(d, out, sizeof out, &n_out), 0);
  memcpy(all + len, out, n_out);
  all[len + n_out] = 0;
  ck_assert_str_eq(all, text);
  pd_detok_free(d);
  /* A lone lead byte that never completes becomes U+FFFD at the end. */
  int32_t lone = -1;
  for (int32_t t = 0; t < pd_tokenizer_n_vocab(tok); t++) {
    const char *p;
    size_t pl;
    pd_token_piece(tok, t, &p, &pl);
    if (pl == 1 && (unsigned char)p[0] == 0xF0) lone = t;
  }
  ck_assert_int_ge(lone, 0);
  int32_t seq[2] = {lone, encode("a", 0, ids, 64) ? ids[0] : 0};
  int stopped;
  ck_assert_str_eq(detok_all(seq, 2, NULL, 0, &stopped), "\xef\xbf\xbd"
                                                         "a");
}
END_TEST

START_TEST(detok_stop_strings_across_tokens) {
  int32_t ids[128];
  size_t n = encode("the answer is STOP and more", 0, ids, 128);
  const char *stops[2] = {"STOP", "never"};
  int stopped;
  ck_assert_str_eq(detok_all(ids, n, stops, 2, &stopped), "the answer is ");
  ck_assert(stopped);
  /* a partial stop string at the end is released by the flush */
  n = encode("ends with STO", 0, ids, 128);
  ck_assert_str_eq(detok_all(ids, n, stops, 2, &stopped), "ends with STO");
  ck_assert(!stopped);
  /* special tokens render as nothing */
  n = encode("<|im_start|>x", 1, ids, 128);
  ck_assert_str_eq(detok_all(ids, n, NULL, 0, &stopped), "x");
}
END_TEST

START_TEST(sampler_rules) {
  enum { V = 6 };
  float logits[V] = {1.0f, 3.0f, 2.0f, 3.0f, -1.0f, 0.5f};
  pd_sampling_params greedy = {.temperature = 0, .top_p = 1, .repeat_penalty = 1};
  pd_sampler *s;
  ck_assert_int_eq(pd_sampler_create(&greedy, V, &s), 0);
  ck_assert_int_eq(pd_sampler_sample(s, logits), 1); /* ties go to the lowest id */
  pd_sampler_free(s);
  /* repetition penalty: token 1 was just seen, so token 3 wins */
  pd_sampling_params rep = greedy;
  rep.repeat_penalty = 1.5f, rep.repeat_last_n = 4;
  ck_assert_int_eq(pd_sampler_create(&rep, V, &s), 0);
  pd_sampler_accept(s, 1);
  ck_assert_int_eq(pd_sampler_sample(s, logits), 3);
  pd_sampler_free(s);
  /* top_k = 1 and min_p = 1 are greedy whatever the temperature */
  pd_sampling_params k1 = {
      .temperature = 5, .top_k = 1, .top_p = 1, .repeat_penalty = 1, .seed = 9};
  pd_sampling_params mp = {
      .temperature = 5, .top_p = 1, .min_p = 1, .repeat_penalty = 1, .seed = 9};
  for (int i = 0; i < 2; i++) {
    ck_assert_int_eq(pd_sampler_create(i ? &mp : &k1, V, &s), 0);
    for (int j = 0; j < 50; j++) {
      int32_t t = pd_sampler_sample(s, logits);
      ck_assert(t == 1 || (i == 1 && t == 3)); /* min_p keeps both tied best */
    }
    pd_sampler_free(s);
  }
  /* the same seed gives the same draws; frequencies follow softmax(logits / T) */
  pd_sampling_params t1 = {.temperature = 1, .top_p = 1, .repeat_penalty = 1, .seed = 42};
  pd_sampler *a, *b;
  ck_assert_int_eq(pd_sampler_create(&t1, V, &a), 0);
  ck_assert_int_eq(pd_sampler_create(&t1, V, &b), 0);
  int counts[V] = {0};
  const int N = 20000;
  for (int j = 0; j < N; j++) {
    int32_t x = pd_sampler_sample(a, logits);
    ck_assert_int_eq(x, pd_sampler_sample(b, logits));
    counts[x]++;
  }
  double z = 0;
  for (int v = 0; v < V; v++) z += exp(logits[v]);
  for (int v = 0; v < V; v++) {
    double p = exp(logits[v]) / z, sd = sqrt(N * p * (1 - p));
    ck_assert_msg(fabs(counts[v] - N * p) < 5 * sd + 1, "token %d: %d draws, expected %.0f", v,
                  counts[v], N * p);
  }
  pd_sampler_free(a), pd_sampler_free(b);
  /* top_p = 0.5 keeps only the smallest set reaching half the mass: the two 3.0 logits */
  pd_sampling_params tp = {.temperature = 1, .top_p = 0.5f, .repeat_penalty = 1, .seed = 3};
  ck_assert_int_eq(pd_sampler_create(&tp, V, &s), 0);
  for (int j = 0; j < 200; j++) {
    int32_t x = pd_sampler_sample(s, logits);
    ck_assert(x == 1 || x == 3);
  }
  pd_sampler_free(s);
  pd_sampling_params bad = {.temperature = -1, .top_p = 1, .repeat_penalty = 1};
  ck_assert_int_eq(pd_sampler_create(&bad, V, &s), PD_EINVAL);
  bad = (pd_sampling_params){.temperature = 1, .top_p = 0, .repeat_penalty = 1};
  ck_assert_int_eq(pd_sampler_create(&bad, V, &s), PD_EINVAL);
}
END_TEST

/* Logit bias, presence and frequency penalties: greedy picks that move exactly as OpenAI's
 * formula says, counts of picked tokens only (not accepted prompt tokens), temperature draws
 * that follow the penalised softmax, and every out-of-range parameter named. */
START_TEST(sampler_bias_and_penalties) {
  enum { V = 6 };
  const float logits[V] = {1.0f, 3.0f, 2.0f, 3.0f, -1.0f, 0.5f};
  pd_sampler *s;
  /* bias: -100 bans the best two, +2.5 lifts token 4 (-1 + 2.5 = 1.5 < 2): token 2 wins */
  const pd_logit_bias bias[] = {{1, -100}, {3, -100}, {4, 2.5f}};
  pd_sampling_params p = {.top_p = 1, .repeat_penalty = 1, .logit_bias = bias, .n_logit_bias = 3};
  ck_assert_int_eq(pd_sampler_create(&p, V, &s), 0);
  ck_assert(!pd_sampler_is_greedy(s)); /* a device argmax of the raw logits would be wrong */
  ck_assert_int_eq(pd_sampler_sample(s, logits), 2);
  pd_sampler_free(s);
  /* the sampler keeps its own copy of the bias list */
  pd_logit_bias lifted[] = {{5, 3.0f}};
  p = (pd_sampling_params){
      .top_p = 1, .repeat_penalty = 1, .logit_bias = lifted, .n_logit_bias = 1};
  ck_assert_int_eq(pd_sampler_create(&p, V, &s), 0);
  lifted[0].token = 0;
  ck_assert_int_eq(pd_sampler_sample(s, logits), 5); /* 0.5 + 3 = 3.5 */
  pd_sampler_free(s);
  /* presence 1.5: 1 is picked (3.0), then 3 (3.0 vs 1.5), then 1 and 3 both at 1.5 lose to 2 */
  p = (pd_sampling_params){.top_p = 1, .repeat_penalty = 1, .presence_penalty = 1.5f};
  ck_assert_int_eq(pd_sampler_create(&p, V, &s), 0);
  ck_assert(!pd_sampler_is_greedy(s));
  for (int i = 0; i < 8; i++) pd_sampler_accept(s, 1); /* prompt tokens do not count */
  ck_assert_int_eq(pd_sampler_sample(s, logits), 1);
  ck_assert_int_eq(pd_sampler_sample(s, logits), 3);
  ck_assert_int_eq(pd_sampler_sample(s, logits), 2);
  pd_sampler_free(s);
  /* frequency 0.4 (with presence -0.1) grows with the count: 40 greedy picks, each checked
   * against logit - (presence + frequency x count) over the picks so far */
  p = (pd_sampling_params){
      .top_p = 1, .repeat_penalty = 1, .frequency_penalty = 0.4f, .presence_penalty = -0.1f};
  ck_assert_int_eq(pd_sampler_create(&p, V, &s), 0);
  int count[V] = {0};
  for (int step = 0; step < 40; step++) {
    int want = 0;
    float best = -INFINITY;
    for (int v = 0; v < V; v++) {
      float x = logits[v] - (count[v] ? -0.1f + 0.4f * (float)count[v] : 0.0f);
      if (x > best) best = x, want = v;
    }
    int32_t got = pd_sampler_sample(s, logits);
    ck_assert_int_eq(got, want);
    count[got]++;
  }
  ck_assert(count[0] > 0 && count[5] > 0); /* the penalty spread the picks */
  pd_sampler_free(s);
  /* pd_sampler_record counts a pick made elsewhere (the GPU's argmax) like its own */
  p = (pd_sampling_params){.top_p = 1, .repeat_penalty = 1, .frequency_penalty = 2};
  ck_assert_int_eq(pd_sampler_create(&p, V, &s), 0);
  pd_sampler_record(s, 1);
  ck_assert_int_eq(pd_sampler_sample(s, logits), 3);
  pd_sampler_free(s);
  /* at a temperature the draws follow softmax(logits - penalty): after 1 is picked once with
   * presence 2, token 1's weight is exp(1.0) instead of exp(3.0) */
  p = (pd_sampling_params){
      .temperature = 1, .top_p = 1, .repeat_penalty = 1, .presence_penalty = 2, .seed = 5};
  int ones = 0; /* the first draw after the record, over many seeds */
  const int N = 4000;
  for (int j = 0; j < N; j++) {
    p.seed = (uint64_t)j + 1;
    ck_assert_int_eq(pd_sampler_create(&p, V, &s), 0);
    pd_sampler_record(s, 1);
    ones += pd_sampler_sample(s, logits) == 1;
    pd_sampler_free(s);
  }
  double z = 0;
  for (int v = 0; v < V; v++) z += exp(logits[v] - (v == 1 ? 2.0 : 0.0));
  double q = exp(1.0) / z, sd = sqrt(N * q * (1 - q));
  ck_assert_msg(fabs(ones - N * q) < 5 * sd + 1, "token 1 drawn %d times, expected %.0f", ones,
                N * q);
  /* refusals, each named */
  char err[128];
  const pd_logit_bias twice[] = {{2, 1}, {2, -1}}, outside[] = {{6, 1}}, big[] = {{0, 101}};
  const struct {
    pd_sampling_params p;
    const char *names;
  } bad[] = {
      {{.top_p = 1, .repeat_penalty = 1, .presence_penalty = 2.5f}, "presence_penalty"},
      {{.top_p = 1, .repeat_penalty = 1, .frequency_penalty = -3}, "frequency_penalty"},
      {{.top_p = 1, .repeat_penalty = 1, .frequency_penalty = NAN}, "frequency_penalty"},
      {{.top_p = 1, .repeat_penalty = 1, .logit_bias = twice, .n_logit_bias = 2}, "twice"},
      {{.top_p = 1, .repeat_penalty = 1, .logit_bias = outside, .n_logit_bias = 1}, "token 6"},
      {{.top_p = 1, .repeat_penalty = 1, .logit_bias = big, .n_logit_bias = 1}, "[-100, 100]"},
      {{.top_p = 1, .repeat_penalty = 1, .n_logit_bias = PD_LOGIT_BIAS_MAX + 1}, "at most"},
      {{.temperature = INFINITY, .top_p = 1, .repeat_penalty = 1}, "temperature"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    ck_assert_int_eq(pd_sampling_check(&bad[i].p, V, err, sizeof err), PD_EINVAL);
    ck_assert_msg(strstr(err, bad[i].names), "case %zu: '%s'", i, err);
    ck_assert_int_eq(pd_sampler_create(&bad[i].p, V, &s), PD_EINVAL);
  }
}
END_TEST

/* pd_logprobs against a direct log-softmax in double: the chosen token's value, the top list's
 * order (ties to the lower id), its length capped by the vocabulary, and a large vocabulary with
 * logits far from 0 (the sum is taken relative to the maximum). */
START_TEST(logprobs_are_the_log_softmax) {
  enum { V = 6 };
  const float logits[V] = {1.0f, 3.0f, 2.0f, 3.0f, -1.0f, 0.5f};
  double z = 0;
  for (int v = 0; v < V; v++) z += exp((double)logits[v]);
  float chosen, top_lp[PD_TOP_LOGPROBS_MAX];
  int32_t top_ids[PD_TOP_LOGPROBS_MAX];
  ck_assert_int_eq(pd_logprobs(logits, V, 4, 3, &chosen, top_ids, top_lp), 3);
  ck_assert_double_eq_tol(chosen, -1.0 - log(z), 1e-6);
  const int32_t want_ids[3] = {1, 3, 2};
  for (int k = 0; k < 3; k++) {
    ck_assert_int_eq(top_ids[k], want_ids[k]);
    ck_assert_double_eq_tol(top_lp[k], logits[want_ids[k]] - log(z), 1e-6);
  }
  ck_assert_int_eq(pd_logprobs(logits, V, 0, 0, &chosen, top_ids, top_lp), 0);
  ck_assert_double_eq_tol(chosen, 1.0 - log(z), 1e-6);
  ck_assert_int_eq(pd_logprobs(logits, V, 0, PD_TOP_LOGPROBS_MAX, &chosen, top_ids, top_lp), V);
  ck_assert_int_eq(top_ids[V - 1], 4); /* the least probable last */

  enum { BIG = 50000 };
  float *big = malloc(BIG * sizeof *big);
  ck_assert_ptr_nonnull(big);
  uint32_t h = 7;
  double zb = 0, best[PD_TOP_LOGPROBS_MAX];
  for (int v = 0; v < BIG; v++) {
    h = h * 1103515245u + 12345u;
    big[v] = 900.0f + (float)(h >> 8) / (float)(1u << 24) * 20.0f;
  }
  for (int v = 0; v < BIG; v++) zb += exp((double)big[v] - 900.0);
  /* the reference top 20: selection over a copy, ties to the lower id */
  char *taken = calloc(BIG, 1);
  ck_assert_ptr_nonnull(taken);
  int ref_ids[PD_TOP_LOGPROBS_MAX];
  for (int k = 0; k < PD_TOP_LOGPROBS_MAX; k++) {
    int at = -1;
    for (int v = 0; v < BIG; v++)
      if (!taken[v] && (at < 0 || big[v] > big[at])) at = v;
    taken[at] = 1;
    ref_ids[k] = at;
    best[k] = (double)big[at] - 900.0 - log(zb);
  }
  ck_assert_int_eq(pd_logprobs(big, BIG, 123, PD_TOP_LOGPROBS_MAX, &chosen, top_ids, top_lp),
                   PD_TOP_LOGPROBS_MAX);
  ck_assert_double_eq_tol(chosen, (double)big[123] - 900.0 - log(zb), 1e-4);
  for (int k = 0; k < PD_TOP_LOGPROBS_MAX; k++) {
    ck_assert_int_eq(top_ids[k], ref_ids[k]);
    ck_assert_double_eq_tol(top_lp[k], best[k], 1e-4);
  }
  free(taken);
  free(big);
}
END_TEST

/* The filters over a large vocabulary, where the sampler sorts only part of the candidates:
 * every draw is in the set a full sort allows, and the best token is drawn about as often as
 * its share of that set says. */
static int by_weight_desc(const void *a, const void *b) {
  const double x = ((const double *)a)[0], y = ((const double *)b)[0];
  if (x != y) return x > y ? -1 : 1;
  return ((const double *)a)[1] < ((const double *)b)[1] ? -1 : 1;
}

START_TEST(sampler_filters_on_a_large_vocabulary) {
  enum { V = 3000, DRAWS = 4000 };
  static float logits[V];
  static double order[V][2]; /* (weight, id), sorted */
  static char allowed[V];
  uint64_t rng = 77;
  for (int v = 0; v < V; v++) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    logits[v] = (float)((rng >> 40) % 4000) / 1000.0f; /* 0 .. 4, with ties */
  }
  const pd_sampling_params cases[] = {
      {.temperature = 1, .top_k = 100, .top_p = 1, .repeat_penalty = 1, .seed = 1},
      {.temperature = 1, .top_p = 0.5f, .repeat_penalty = 1, .seed = 2},
      {.temperature = 0.7f, .top_k = 700, .top_p = 0.9f, .repeat_penalty = 1, .seed = 3},
      {.temperature = 1, .top_p = 1, .min_p = 0.2f, .repeat_penalty = 1, .seed = 4},
      {.temperature = 1, .top_p = 1, .repeat_penalty = 1, .seed = 5},
  };
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    const pd_sampling_params *p = &cases[c];
    /* the reference: every token sorted, then the filters in the sampler's order */
    double best = -INFINITY;
    for (int v = 0; v < V; v++) best = fmax(best, logits[v] / p->temperature);
    for (int v = 0; v < V; v++)
      order[v][0] = exp(logits[v] / p->temperature - best), order[v][1] = v;
    qsort(order, V, sizeof order[0], by_weight_desc);
    int n = p->top_k > 0 && p->top_k < V ? p->top_k : V;
    double sum = 0, cum = 0;
    for (int i = 0; i < n; i++) sum += order[i][0];
    if (p->top_p < 1) {
      int i = 0;
      while (i < n && cum < p->top_p * sum) cum += order[i++][0];
      n = i;
    }
    double kept = 0;
    memset(allowed, 0, sizeof allowed);
    for (int i = 0; i < n; i++)
      if (order[i][0] >= p->min_p) allowed[(int)order[i][1]] = 1, kept += order[i][0];
    pd_sampler *s;
    ck_assert_int_eq(pd_sampler_create(p, V, &s), 0);
    int best_id = (int)order[0][1], best_draws = 0;
    for (int j = 0; j < DRAWS; j++) {
      int32_t x = pd_sampler_sample(s, logits);
      ck_assert_msg(x >= 0 && x < V && allowed[x], "case %zu: token %d is not allowed", c, x);
      best_draws += x == best_id;
    }
    pd_sampler_free(s);
    const double q = order[0][0] / kept, sd = sqrt(DRAWS * q * (1 - q));
    ck_assert_msg(fabs(best_draws - DRAWS * q) < 5 * sd + 1,
                  "case %zu: best drawn %d, expected %.0f", c, best_draws, DRAWS * q);
  }
}
END_TEST

int main(void) {
  Suite *s = suite_create("text");
  TCase *tc = tcase_create("text");
  tcase_add_unchecked_fixture(tc, setup, teardown);
  tcase_add_test(tc, special_tokens_only_when_asked);
  tcase_add_test(tc, chatml_rendering);
  tcase_add_test(tc, chatml_tool_rendering);
  tcase_add_test(tc, llama3_tool_rendering);
  tcase_add_test(tc, llama3_conventions);
  tcase_add_test(tc, detok_never_breaks_utf8);
  tcase_add_test(tc, detok_stop_strings_across_tokens);
  tcase_add_test(tc, sampler_rules);
  tcase_add_test(tc, sampler_bias_and_penalties);
  tcase_add_test(tc, logprobs_are_the_log_softmax);
  tcase_add_test(tc, sampler_filters_on_a_large_vocabulary);
  suite_add_tcase(s, tc);
  return pd_check_run(s, 1);
}
