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
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pd_err.h"
#include "pd_openai.h"
#include "prefixd/v1/prefixd.pb-c.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
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
