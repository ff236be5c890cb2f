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
 */
#ifndef PD_CHAT_H
#define PD_CHAT_H

#include <stddef.h>

#include "pd_tokenizer.h"

typedef struct pd_chat_msg {
  const char *role; /* "system", "user", "assistant" */
  const char *content;
} pd_chat_msg;

enum { PD_CHAT_CHATML = 1, PD_CHAT_LLAMA3 = 2 };

typedef struct pd_chat_template {
  int kind;                 /* PD_CHAT_CHATML or PD_CHAT_LLAMA3 */
  char default_system[512]; /* "" if the template adds none */
} pd_chat_template;

/* Recognises the GGUF's template. PD_EUNSUPPORTED (with a message) if unknown or absent. */
int pd_chat_template_from_gguf(const pd_gguf *g, pd_chat_template *out, char *err, size_t errlen);

/* Renders msgs. *text is malloc'd (the caller frees it). PD_EINVAL for a bad role. */
int pd_chat_render(const pd_chat_template *tpl, const pd_chat_msg *msgs, size_t n,
                   int add_generation_prompt, char **text, char *err, size_t errlen);

#endif /* PD_CHAT_H */
