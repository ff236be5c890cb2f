/*
 * test_openai_tools.c -- OpenAI's tool calling (daemon/pd_openai_tools.h): a request's tools and
 * tool_choice (the forced call's schema, every refusal), the calls read out of answers in each
 * template family's convention (and what is not a call), and what streaming may send before the
 * answer ends.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "pd_chat.h"
#include "pd_check.h"
#include "pd_openai_tools.h"

#define WEATHER                                                                                    \
  "{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"d\", "    \
  "\"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}}, "    \
  "\"required\": [\"city\"]}}}"
#define TIME "{\"type\": \"function\", \"function\": {\"name\": \"get_time\"}}"

/* The request body the tools point into: kept until the next parse (t's strings borrow it). */
static json_t *root;

/* Parses body's tools for family; returns what pd_openai_tools_parse returned, err filled. */
static int parse(const char *body, int family, pd_openai_tools *t, char *err, size_t errlen) {
  json_error_t jerr;
  json_decref(root);
  root = json_loads(body, 0, &jerr);
  ck_assert_msg(root != NULL, "%s", jerr.text);
  err[0] = 0;
  int rc = pd_openai_tools_parse(root, family, t, err, errlen);
  if (rc) pd_openai_tools_free(t);
  return rc;
}

START_TEST(request_choices_and_schemas) {
  pd_openai_tools t;
  char err[300];
  ck_assert_int_eq(parse("{}", PD_CHAT_CHATML, &t, err, sizeof err), 0);
  ck_assert_int_eq(t.choice, PD_TOOL_CHOICE_NONE);
  ck_assert_int_eq(t.offered, 0);
  pd_openai_tools_free(&t);
  ck_assert_int_eq(
      parse("{\"tools\": [" WEATHER ", " TIME "]}", PD_CHAT_CHATML, &t, err, sizeof err), 0);
  ck_assert_int_eq(t.choice, PD_TOOL_CHOICE_AUTO);
  ck_assert_uint_eq(t.n_tools, 2);
  ck_assert_str_eq(t.tools[0].parameters, "{\"type\":\"object\",\"properties\":{\"city\":{\"type\":"
                                          "\"string\"}},\"required\":[\"city\"]}");
  ck_assert_str_eq(t.tools[1].parameters, "");
  ck_assert_ptr_null(t.schema);
  pd_openai_tools_free(&t);
  /* named: the call's name is a const and its arguments follow the function's parameters */
  ck_assert_int_eq(parse("{\"tools\": [" WEATHER ", " TIME "], \"tool_choice\": {\"type\": "
                         "\"function\", \"function\": {\"name\": \"get_weather\"}}}",
                         PD_CHAT_CHATML, &t, err, sizeof err),
                   0);
  ck_assert_int_eq(t.choice, PD_TOOL_CHOICE_REQUIRED);
  ck_assert_str_eq(t.schema, "{\"type\":\"object\",\"properties\":{\"name\":{\"const\":"
                             "\"get_weather\"},\"arguments\":{\"type\":\"object\",\"properties\":"
                             "{\"city\":{\"type\":\"string\"}},\"required\":[\"city\"]}},"
                             "\"required\":[\"name\",\"arguments\"]}");
  pd_openai_tools_free(&t);
  /* required with one function: the same, under Llama 3's key; without parameters: {} */
  ck_assert_int_eq(parse("{\"tools\": [" TIME "], \"tool_choice\": \"required\"}", PD_CHAT_LLAMA3,
                         &t, err, sizeof err),
                   0);
  ck_assert_str_eq(t.schema,
                   "{\"type\":\"object\",\"properties\":{\"name\":{\"const\":"
                   "\"get_time\"},\"parameters\":{\"type\":\"object\",\"properties\":{}}},"
                   "\"required\":[\"name\",\"parameters\"]}");
  pd_openai_tools_free(&t);
  /* required with several: a union of their call objects, told apart by the name */
  ck_assert_int_eq(parse("{\"tools\": [" WEATHER ", " TIME "], \"tool_choice\": \"required\"}",
                         PD_CHAT_CHATML, &t, err, sizeof err),
                   0);
  ck_assert_str_eq(t.schema, "{\"anyOf\":[{\"type\":\"object\",\"properties\":{\"name\":{"
                             "\"const\":\"get_weather\"},\"arguments\":{\"type\":\"object\","
                             "\"properties\":{\"city\":{\"type\":\"string\"}},\"required\":["
                             "\"city\"]}},\"required\":[\"name\",\"arguments\"]},{\"type\":"
                             "\"object\",\"properties\":{\"name\":{\"const\":\"get_time\"},"
                             "\"arguments\":{\"type\":\"object\",\"properties\":{}}},"
                             "\"required\":[\"name\",\"arguments\"]}]}");
  pd_openai_tools_free(&t);
  ck_assert_int_eq(parse("{\"tools\": [" WEATHER "], \"tool_choice\": \"none\"}", PD_CHAT_CHATML,
                         &t, err, sizeof err),
                   0);
  ck_assert_int_eq(t.choice, PD_TOOL_CHOICE_NONE);
  ck_assert_int_eq(t.offered, 1);
  pd_openai_tools_free(&t);
}
END_TEST

START_TEST(request_refusals) {
  static const struct {
    const char *body, *reason;
  } bad[] = {
      {"{\"tools\": {}}", "'tools' must be an array"},
      {"{\"tools\": [{\"type\": \"retrieval\"}]}", "tools[0] must be {\"type\": \"function\""},
      {"{\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"a b\"}}]}",
       "tools[0].function.name must be 1 to 64"},
      {"{\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": "
       "[]}}]}",
       "parameters must be a JSON Schema object"},
      {"{\"tools\": [" TIME ", " TIME "]}", "the function 'get_time' is offered twice"},
      {"{\"tools\": [" TIME "], \"tool_choice\": \"always\"}", "'tool_choice' must be"},
      {"{\"tools\": [" TIME "], \"tool_choice\": {\"type\": \"function\", \"function\": "
       "{\"name\": \"nope\"}}}",
       "names 'nope', which is not in 'tools'"},
      {"{\"tool_choice\": \"required\"}", "'tool_choice' needs 'tools'"},
      {"{\"tools\": [" TIME "], \"parallel_tool_calls\": 1}", "'parallel_tool_calls' must be"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    pd_openai_tools t;
    char err[300];
    ck_assert_int_eq(parse(bad[i].body, PD_CHAT_CHATML, &t, err, sizeof err), -1);
    ck_assert_msg(strstr(err, bad[i].reason) != NULL, "%s: %s", bad[i].body, err);
  }
}
END_TEST

/* The calls in text under the tools of body (family); checks their count, content length, and
 * the first call's name and arguments. */
static void expect_calls(const char *body, int family, const char *text, size_t want_calls,
                         size_t want_content, const char *name, const char *arguments) {
  pd_openai_tools t;
  char err[300];
  ck_assert_int_eq(parse(body, family, &t, err, sizeof err), 0);
  pd_openai_call *calls;
  size_t n, content;
  ck_assert_int_eq(pd_openai_calls_read(&t, text, strlen(text), &calls, &n, &content), 0);
  ck_assert_msg(n == want_calls, "%s: %zu calls", text, n);
  ck_assert_msg(content == want_content, "%s: content %zu", text, content);
  if (n) {
    ck_assert_str_eq(calls[0].name, name);
    ck_assert_str_eq(calls[0].arguments, arguments);
  }
  pd_openai_calls_free(calls, n);
  pd_openai_tools_free(&t);
}

START_TEST(calls_read_out_of_answers) {
  const char *tools = "{\"tools\": [" WEATHER ", " TIME "]}";
  const char *call = "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}";
  const char *args = "{\"city\": \"Paris\"}";
  char text[512];
  /* ChatML: content, then tagged calls (closed, or cut at the end after the object) */
  snprintf(text, sizeof text, "Let me look.\n<tool_call>\n%s\n</tool_call>", call);
  expect_calls(tools, PD_CHAT_CHATML, text, 1, 12, "get_weather", args);
  snprintf(text, sizeof text,
           "<tool_call>\n%s\n</tool_call>\n<tool_call>{\"name\": \"get_time\", "
           "\"arguments\": {}}</tool_call>\n",
           call);
  expect_calls(tools, PD_CHAT_CHATML, text, 2, 0, "get_weather", args);
  snprintf(text, sizeof text, "<tool_call>\n%s", call);
  expect_calls(tools, PD_CHAT_CHATML, text, 1, 0, "get_weather", args);
  /* not calls: plain text, an unknown function, arguments that are not an object, broken JSON,
   * text after a call: all content */
  static const char *const not_calls[] = {
      "The weather is fine.",
      "<tool_call>{\"name\": \"rm\", \"arguments\": {}}</tool_call>",
      "<tool_call>{\"name\": \"get_time\", \"arguments\": \"now\"}</tool_call>",
      "<tool_call>{\"name\": \"get_time\", </tool_call>",
  };
  for (size_t i = 0; i < sizeof not_calls / sizeof not_calls[0]; i++)
    expect_calls(tools, PD_CHAT_CHATML, not_calls[i], 0, strlen(not_calls[i]), NULL, NULL);
  snprintf(text, sizeof text, "<tool_call>%s</tool_call> and more", call);
  expect_calls(tools, PD_CHAT_CHATML, text, 0, strlen(text), NULL, NULL);
  /* a NUL byte inside the object (a byte token can decode to one): not a call */
  {
    pd_openai_tools t;
    char err[300];
    ck_assert_int_eq(parse(tools, PD_CHAT_CHATML, &t, err, sizeof err), 0);
    static const char nul[] = "<tool_call>{\"name\": \"get_time\", \"arguments\": {\"n\": 1\0}}";
    pd_openai_call *calls;
    size_t n, content;
    ck_assert_int_eq(pd_openai_calls_read(&t, nul, sizeof nul - 1, &calls, &n, &content), 0);
    ck_assert_uint_eq(n, 0);
    ck_assert_uint_eq(content, sizeof nul - 1);
    pd_openai_tools_free(&t);
  }
  /* Llama 3: the answer is the call, or calls separated by ';' */
  expect_calls(tools, PD_CHAT_LLAMA3,
               " {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}", 1, 0,
               "get_weather", args);
  expect_calls(tools, PD_CHAT_LLAMA3,
               "{\"name\": \"get_time\", \"parameters\": {}}; {\"name\": \"get_weather\", "
               "\"parameters\": {\"city\": \"Paris\"}}",
               2, 0, "get_time", "{}");
  /* an integer no C type holds is still a number: the text is kept */
  expect_calls(tools, PD_CHAT_LLAMA3,
               "{\"name\": \"get_time\", \"parameters\": {\"n\": "
               "123456789012345678901234567890}}",
               1, 0, "get_time", "{\"n\": 123456789012345678901234567890}");
  expect_calls(tools, PD_CHAT_LLAMA3, "Paris is sunny.", 0, 15, NULL, NULL);
  /* forced: the whole answer is one object; "none": nothing is a call */
  const char *named = "{\"tools\": [" WEATHER "], \"tool_choice\": \"required\"}";
  expect_calls(named, PD_CHAT_CHATML, call, 1, 0, "get_weather", args);
  const char *cut = "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Pa";
  expect_calls(named, PD_CHAT_CHATML, cut, 0, strlen(cut), NULL, NULL); /* cut at max_tokens */
  snprintf(text, sizeof text, "<tool_call>%s</tool_call>", call);
  expect_calls("{\"tools\": [" WEATHER "], \"tool_choice\": \"none\"}", PD_CHAT_CHATML, text, 0,
               strlen(text), NULL, NULL);
}
END_TEST

static size_t safe(const char *body, int family, const char *text) {
  pd_openai_tools t;
  char err[300];
  ck_assert_int_eq(parse(body, family, &t, err, sizeof err), 0);
  size_t n = pd_openai_calls_content_safe(&t, text, strlen(text));
  pd_openai_tools_free(&t);
  return n;
}

START_TEST(streaming_holds_back_what_may_be_a_call) {
  const char *tools = "{\"tools\": [" TIME "]}";
  ck_assert_uint_eq(safe(tools, PD_CHAT_CHATML, "Hello"), 5);
  ck_assert_uint_eq(safe(tools, PD_CHAT_CHATML, "Hello <tool"), 6);
  ck_assert_uint_eq(safe(tools, PD_CHAT_CHATML, "Hello <"), 6);
  ck_assert_uint_eq(safe(tools, PD_CHAT_CHATML, "Hello <tool_call>{\"na"), 6);
  ck_assert_uint_eq(safe(tools, PD_CHAT_CHATML, "a <b> c"), 7);
  ck_assert_uint_eq(safe(tools, PD_CHAT_LLAMA3, " \n"), 0);
  ck_assert_uint_eq(safe(tools, PD_CHAT_LLAMA3, " {\"name"), 0);
  ck_assert_uint_eq(safe(tools, PD_CHAT_LLAMA3, "Hi {"), 4);
  ck_assert_uint_eq(
      safe("{\"tools\": [" TIME "], \"tool_choice\": \"required\"}", PD_CHAT_CHATML, "{\"name\""),
      0);
  ck_assert_uint_eq(
      safe("{\"tools\": [" TIME "], \"tool_choice\": \"none\"}", PD_CHAT_CHATML, "<tool_call>"),
      11);
}
END_TEST

int main(void) {
  Suite *s = suite_create("openai_tools");
  TCase *tc = tcase_create("tools");
  tcase_add_test(tc, request_choices_and_schemas);
  tcase_add_test(tc, request_refusals);
  tcase_add_test(tc, calls_read_out_of_answers);
  tcase_add_test(tc, streaming_holds_back_what_may_be_a_call);
  suite_add_tcase(s, tc);
  int failed = pd_check_run(s, 1);
  json_decref(root);
  return failed;
}
