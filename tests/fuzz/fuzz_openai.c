/*
 * fuzz_openai.c -- libFuzzer target: the OpenAI-compatible API's request bodies
 * (daemon/pd_openai), from untrusted JSON to the GenerateRequest the engine would get.
 *
 * DESIGN
 *
 * Byte 0 picks the endpoint (even: /v1/chat/completions, odd: /v1/completions); the rest is the
 * body. pd_openai_parse runs what a request runs before it reaches the engine: jansson's parser,
 * the field checks and refusals, the mapping into a GenerateRequest (strings pointing into the
 * parsed JSON, messages joined from content parts), and packs the result. Checked per input:
 *   - a refusal always carries a message (the 400's text is never empty);
 *   - an accepted body packs into a GenerateRequest that protobuf-c unpacks again, passes
 *     protobuf_c_message_check, and holds a prompt of the kind the endpoint makes (chat messages
 *     for chat; text or token ids for completions), at most 16 stop strings and
 *     top_logprobs <= 20;
 *   - nothing leaks (LeakSanitizer) and nothing reads out of bounds (ASan), whatever the JSON.
 * Byte 0's bit 1 set instead makes the rest a model's answer to a request offering two functions
 * (pd_openai_tools: what a prompt injection could make a model write); bits 2 and 3 pick the
 * template family (ChatML, Llama 3) and tool_choice (auto, required). Checked: the content is
 * within the answer; every call read names an offered function and its arguments are a JSON
 * object by jansson; what streaming may send is within the answer, and under ChatML's auto it
 * holds no "<tool_call>".
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pd_chat.h"
#include "pd_err.h"
#include "pd_openai.h"
#include "pd_openai_tools.h"
#include "prefixd/v1/prefixd.pb-c.h"

static const char TOOLS[] =
    "{\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", "
    "\"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": "
    "\"string\"}}}}}, {\"type\": \"function\", \"function\": {\"name\": \"get_time\"}}], "
    "\"tool_choice\": \"auto\"}";

static void fuzz_answer(int family, int required, const char *text, size_t n) {
  json_error_t jerr;
  json_t *root = json_loads(TOOLS, 0, &jerr);
  if (!root) abort();
  if (required) json_object_set_new(root, "tool_choice", json_string("required"));
  pd_openai_tools t;
  char err[300];
  if (pd_openai_tools_parse(root, family, &t, err, sizeof err)) abort();
  pd_openai_call *calls;
  size_t n_calls, content_len;
  if (pd_openai_calls_read(&t, text, n, &calls, &n_calls, &content_len) == 0) {
    if (content_len > n) abort();
    for (size_t i = 0; i < n_calls; i++) {
      if (strcmp(calls[i].name, "get_weather") && strcmp(calls[i].name, "get_time")) abort();
      json_t *args = json_loads(calls[i].arguments, JSON_DECODE_INT_AS_REAL, &jerr);
      if (!json_is_object(args)) abort();
      json_decref(args);
    }
    pd_openai_calls_free(calls, n_calls);
  }
  size_t safe = pd_openai_calls_content_safe(&t, text, n);
  if (safe > n) abort();
  if (family == PD_CHAT_CHATML && !required)
    for (size_t i = 0; i + 11 <= safe; i++)
      if (!memcmp(text + i, "<tool_call>", 11)) abort();
  pd_openai_tools_free(&t);
  json_decref(root);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  if (data[0] & 2) {
    fuzz_answer(data[0] & 4 ? PD_CHAT_LLAMA3 : PD_CHAT_CHATML, (data[0] & 8) != 0,
                (const char *)data + 1, size - 1);
    return 0;
  }
  int chat = (data[0] & 1) == 0;
  char err[300] = "";
  uint8_t *packed;
  size_t n_packed;
  int rc =
      pd_openai_parse((const char *)data + 1, size - 1, chat, err, sizeof err, &packed, &n_packed);
  if (rc == PD_EINVAL) {
    if (!err[0]) abort(); /* a refusal without a reason */
    return 0;
  }
  if (rc != PD_OK) return 0; /* out of memory */
  Prefixd__V1__GenerateRequest *g = prefixd__v1__generate_request__unpack(NULL, n_packed, packed);
  if (!g || !protobuf_c_message_check(&g->base) || !g->prompt) abort();
  Prefixd__V1__Prompt__KindCase kind = g->prompt->kind_case;
  if (chat ? kind != PREFIXD__V1__PROMPT__KIND_CHAT
           : kind != PREFIXD__V1__PROMPT__KIND_TEXT && kind != PREFIXD__V1__PROMPT__KIND_TOKENS)
    abort();
  if (g->n_stop > 16 || g->top_logprobs > 20) abort();
  prefixd__v1__generate_request__free_unpacked(g, NULL);
  free(packed);
  return 0;
}
