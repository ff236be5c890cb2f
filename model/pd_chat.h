/*
 * pd_chat.h -- chat messages to prompt text with the model's chat template.
 *
 * Templates are Jinja in the GGUF (tokenizer.chat_template); prefixd does not run Jinja. It
 * recognises the templates it knows and renders them in C: ChatML
 * ("<|im_start|>role\ncontent<|im_end|>\n", generation prompt "<|im_start|>assistant\n"),
 * including SmolLM2's variant that inserts a default system message when the conversation has
 * none (the message is read from the template itself), and Llama 3's
 * ("<|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>", the content trimmed, as its
 * template does; generation prompt "<|start_header_id|>assistant<|end_header_id|>\n\n"; the
 * bos token is the tokenizer's to add, pd_tokenize_prompt). Anything else is refused.
 * Functions offered to the model (tool calling) are rendered in each family's convention, in
 * prefixd's own words (pd_chat_render).
 */
#ifndef PD_CHAT_H
#define PD_CHAT_H

#include <stddef.h>

#include "pd_tokenizer.h"

/* A function call an assistant made: arguments is JSON text (an object; anything else is
 * rendered as a JSON string). */
typedef struct pd_chat_tool_call {
  const char *name;
  const char *arguments;
} pd_chat_tool_call;

typedef struct pd_chat_msg {
  const char *role; /* "system", "user", "assistant", "tool" (a function's result) */
  const char *content;
  const pd_chat_tool_call *tool_calls; /* (n_tool_calls) assistant: the calls it made */
  size_t n_tool_calls;
} pd_chat_msg;

/* A function offered to the model. parameters: its arguments' JSON Schema as JSON text (NULL or
 * "": any object). */
typedef struct pd_chat_tool {
  const char *name;
  const char *description; /* NULL or "": none */
  const char *parameters;
} pd_chat_tool;

enum { PD_CHAT_CHATML = 1, PD_CHAT_LLAMA3 = 2 };

typedef struct pd_chat_template {
  int kind;                 /* PD_CHAT_CHATML or PD_CHAT_LLAMA3 */
  char default_system[512]; /* "" if the template adds none */
} pd_chat_template;

/* Recognises the GGUF's template. PD_EUNSUPPORTED (with a message) if unknown or absent. */
int pd_chat_template_from_gguf(const pd_gguf *g, pd_chat_template *out, char *err, size_t errlen);

/* Renders msgs, and the functions offered (tools, n_tools; none: NULL, 0) the way the template's
 * family expects (tool calling):
 * - ChatML: the functions as JSON signatures, one per line, inside <tools></tools> in a "# Tools"
 *   section appended to the system message (or the template's default one, or a system message
 *   of its own); an assistant's calls as <tool_call>\n{"name": ..., "arguments": {...}}\n
 *   </tool_call> after its content; results ("tool" messages in a row) as <tool_response>
 *   blocks in one user turn (Hermes' and Qwen2's convention);
 * - Llama 3: the functions as JSON, with how to call them, at the start of the first user message;
 *   a call as the assistant's content {"name": ..., "parameters": {...}}; results as ipython
 *   turns (Llama 3.1's JSON convention).
 * *text is malloc'd (the caller frees it). PD_EINVAL for a bad role or a tool whose parameters
 * are not a JSON object. */
int pd_chat_render(const pd_chat_template *tpl, const pd_chat_msg *msgs, size_t n,
                   const pd_chat_tool *tools, size_t n_tools, int add_generation_prompt,
                   char **text, char *err, size_t errlen);

/* The key a call's arguments go under in the family's convention: "arguments" (ChatML) or
 * "parameters" (Llama 3). */
const char *pd_chat_arguments_key(const pd_chat_template *tpl);

#endif /* PD_CHAT_H */
