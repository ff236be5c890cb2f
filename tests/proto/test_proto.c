/*
 * test_proto.c -- the generated wire code: a request round-trips through pack/unpack, garbage
 * bytes are refused (what the server turns into INVALID_ARGUMENT), and the service descriptors
 * name every method the server's dispatch table is built from.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "pd_check.h"
#include "prefixd/v1/prefixd.pb-c.h"

START_TEST(generate_request_round_trip) {
  Prefixd__V1__ChatMessage m1 = PREFIXD__V1__CHAT_MESSAGE__INIT,
                           m2 = PREFIXD__V1__CHAT_MESSAGE__INIT;
  m1.role = "system", m1.content = "You are brief.";
  m2.role = "user", m2.content = "Hi \xf0\x9f\x98\x80";
  Prefixd__V1__ChatMessage *msgs[2] = {&m1, &m2};
  Prefixd__V1__ChatMessages chat = PREFIXD__V1__CHAT_MESSAGES__INIT;
  chat.n_messages = 2, chat.messages = msgs, chat.add_generation_prompt = 1;
  Prefixd__V1__Prompt prompt = PREFIXD__V1__PROMPT__INIT;
  prompt.kind_case = PREFIXD__V1__PROMPT__KIND_CHAT, prompt.chat = &chat;
  Prefixd__V1__CacheOptions cache = PREFIXD__V1__CACHE_OPTIONS__INIT;
  cache.namespace_ = "public", cache.pin_ttl_seconds = 3600;
  Prefixd__V1__GenerateRequest req = PREFIXD__V1__GENERATE_REQUEST__INIT;
  req.prompt = &prompt, req.cache = &cache, req.max_tokens = 64;
  char *stops[1] = {"\n\n"};
  req.n_stop = 1, req.stop = stops;
  size_t n = prefixd__v1__generate_request__get_packed_size(&req);
  uint8_t *buf = malloc(n);
  ck_assert_uint_eq(prefixd__v1__generate_request__pack(&req, buf), n);
  Prefixd__V1__GenerateRequest *back = prefixd__v1__generate_request__unpack(NULL, n, buf);
  ck_assert_ptr_nonnull(back);
  ck_assert_int_eq(back->prompt->kind_case, PREFIXD__V1__PROMPT__KIND_CHAT);
  ck_assert_uint_eq(back->prompt->chat->n_messages, 2);
  ck_assert_str_eq(back->prompt->chat->messages[1]->content, "Hi \xf0\x9f\x98\x80");
  ck_assert_str_eq(back->cache->namespace_, "public");
  ck_assert_uint_eq(back->cache->pin_ttl_seconds, 3600);
  ck_assert_uint_eq(back->max_tokens, 64);
  ck_assert_str_eq(back->stop[0], "\n\n");
  prefixd__v1__generate_request__free_unpacked(back, NULL);
  /* truncated and garbage inputs are refused, never crash */
  for (size_t cut = 1; cut < n; cut++) {
    Prefixd__V1__GenerateRequest *r = prefixd__v1__generate_request__unpack(NULL, cut, buf);
    if (r) prefixd__v1__generate_request__free_unpacked(r, NULL);
  }
  uint8_t garbage[8] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  ck_assert_ptr_null(prefixd__v1__generate_request__unpack(NULL, sizeof garbage, garbage));
  free(buf);
}
END_TEST

START_TEST(service_descriptors_name_every_method) {
  const ProtobufCServiceDescriptor *s = &prefixd__v1__prefixd__descriptor;
  ck_assert_str_eq(s->name, "prefixd.v1.Prefixd");
  const char *want[] = {"Generate", "Tokenize", "Detokenize", "Warm",  "Lookup", "ListPrefixes",
                        "Evict",    "Pin",      "Unpin",      "Stats", "Health"};
  ck_assert_uint_eq(s->n_methods, sizeof want / sizeof want[0]);
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    int found = 0;
    for (unsigned m = 0; m < s->n_methods; m++)
      if (!strcmp(s->methods[m].name, want[i])) found = 1;
    ck_assert_msg(found, "method %s missing", want[i]);
  }
  ck_assert_str_eq(prefixd__v1__admin__descriptor.name, "prefixd.v1.Admin");
  ck_assert_uint_eq(prefixd__v1__admin__descriptor.n_methods, 7);
}
END_TEST

int main(void) {
  Suite *s = suite_create("proto");
  TCase *tc = tcase_create("wire");
  tcase_add_test(tc, generate_request_round_trip);
  tcase_add_test(tc, service_descriptors_name_every_method);
  suite_add_tcase(s, tc);
  return pd_check_run(s, 1);
}
