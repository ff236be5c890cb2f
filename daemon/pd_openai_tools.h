/*
 * pd_openai_tools.h -- OpenAI's tool calling on the chat completions API: a request's functions
 * and tool_choice, the tool calls and results in its messages, and the calls read back out of
 * the model's answer.
 *
 * The functions reach the model through the chat template (pd_chat_render renders them in the
 * template family's convention). What the model answers depends on tool_choice:
 * - "auto" (the default with tools): the model answers freely; a call is read out of the answer
 *   when it follows the convention (ChatML: <tool_call>{"name": ..., "arguments": {...}}
 *   </tool_call> blocks after any content; Llama 3: the whole answer is {"name": ...,
 *   "parameters": {...}}, or several such objects separated by ';'), names an offered function
 *   and has object arguments. Anything else is content, as it came;
 * - "required" or a named function: the answer is constrained (a JSON schema, pd_json_schema) to
 *   one call object {"name": ..., "<arguments key>": {...}} whose arguments follow the named
 *   function's parameters, or with several functions offered, those of the function its name
 *   names (an anyOf of call objects told apart by the name);
 * - "none": the functions are still shown; nothing is read as a call.
 * Streaming holds back what may be the start of a call, so content events never carry one.
 */
#ifndef PD_OPENAI_TOOLS_H
#define PD_OPENAI_TOOLS_H

#include <jansson.h>
#include <stddef.h>

#include "prefixd/v1/prefixd.pb-c.h"

enum pd_tool_choice {
  PD_TOOL_CHOICE_NONE = 0, /* no tools, or "none" */
  PD_TOOL_CHOICE_AUTO,
  PD_TOOL_CHOICE_REQUIRED, /* "required", or a named function (forced_name) */
};

#define PD_OPENAI_MAX_TOOLS 128

/* A request's functions and what it asks of them. Strings point into the request's JSON (which
 * must outlive this) or into allocations this owns. */
typedef struct pd_openai_tools {
  int family;              /* the chat template's: PD_CHAT_CHATML or PD_CHAT_LLAMA3 */
  int choice;              /* enum pd_tool_choice */
  int offered;             /* tools were given (even with "none": they are rendered) */
  const char *forced_name; /* tool_choice named this function (NULL: not named) */
  size_t n_tools;
  Prefixd__V1__Tool *tools; /* (n_tools) */
  Prefixd__V1__Tool **tool_ptrs;
  char *schema; /* REQUIRED: the constrained answer's JSON schema (owned) */
  void **owned; /* (n_owned) allocations freed with this */
  size_t n_owned;
} pd_openai_tools;

/* Reads root's "tools", "tool_choice" and "parallel_tool_calls" (family: the model's chat
 * template kind). 0, or -1 with the reason in err (a bad function, a name offered twice, a
 * tool_choice naming a function not offered, ...). */
int pd_openai_tools_parse(json_t *root, int family, pd_openai_tools *t, char *err, size_t errlen);

/* Message idx's tool calls (an assistant's "tool_calls": [{id, type: "function", function:
 * {name, arguments}}]) into m (its tool_calls, owned by t), and a "tool" message's
 * tool_call_id. 0, or -1 with the reason in err. */
int pd_openai_tools_message(pd_openai_tools *t, json_t *msg, size_t idx,
                            Prefixd__V1__ChatMessage *m, char *err, size_t errlen);

void pd_openai_tools_free(pd_openai_tools *t);

/* A call read out of an answer: name and arguments (the text of a JSON object, as the model
 * wrote it), owned by the array (pd_openai_calls_free). */
typedef struct pd_openai_call {
  char *name;
  char *arguments;
} pd_openai_call;

/* The calls in an answer (text, n bytes) under t's tool_choice: their count in *n_calls (0: the
 * answer is content) and *calls (malloc'd), and in *content_len the bytes of text before the
 * first call (whitespace at its end left out) that are content. -1 when out of memory. */
int pd_openai_calls_read(const pd_openai_tools *t, const char *text, size_t n,
                         pd_openai_call **calls, size_t *n_calls, size_t *content_len);
void pd_openai_calls_free(pd_openai_call *calls, size_t n);

/* Streaming: how many bytes at the start of text (n bytes so far) are content for certain,
 * whatever comes next (the rest may be, or begin, a call). */
size_t pd_openai_calls_content_safe(const pd_openai_tools *t, const char *text, size_t n);

#endif /* PD_OPENAI_TOOLS_H */
