/*
 * pd_chat.h -- chat messages to prompt text with the model's chat template.
 *
 * Templates are Jinja in the GGUF (tokenizer.chat_template); prefixd does not run Jinja. It
 * recognises the templates it knows and renders them in C: ChatML
 * ("<|im_start|>role\ncontent<|im_end|>\n", generation prompt "<|im_start|>assistant\n"),
 * including SmolLM2's variant that inserts a default system message when the conversation has
 * none (the message is read from the template itself). Anything else is refused.
 */
#ifndef PD_CHAT_H
#define PD_CHAT_H

#include <stddef.h>

#include "pd_tokenizer.h"

typedef struct pd_chat_msg {
  const char *role; /* "system", "user", "assistant" */
  const char *content;
} pd_chat_msg;

typedef struct pd_chat_template {
  int kind;                 /* 1 = ChatML */
  char default_system[512]; /* "" if the template adds none */
} pd_chat_template;

/* Recognises the GGUF's template. PD_EUNSUPPORTED (with a message) if unknown or absent. */
int pd_chat_template_from_gguf(const pd_gguf *g, pd_chat_template *out, char *err, size_t errlen);

/* Renders msgs. *text is malloc'd (the caller frees it). PD_EINVAL for a bad role. */
int pd_chat_render(const pd_chat_template *tpl, const pd_chat_msg *msgs, size_t n,
                   int add_generation_prompt, char **text, char *err, size_t errlen);

#endif /* PD_CHAT_H */
