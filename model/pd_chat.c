/* pd_chat.c -- see pd_chat.h. */
#include "pd_chat.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_err.h"

int pd_chat_template_from_gguf(const pd_gguf *g, pd_chat_template *out, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  pd_str tpl;
  if (pd_gguf_get_str(g, "tokenizer.chat_template", &tpl))
    return pd_errf(err, errlen, PD_EUNSUPPORTED, "chat: the model has no chat template");
  char *s = strndup(tpl.ptr, tpl.len);
  if (!s) return pd_errf(err, errlen, PD_ENOMEM, "chat: out of memory");
  int rc = PD_OK;
  if (strstr(s, "<|start_header_id|>") && strstr(s, "<|end_header_id|>") &&
      strstr(s, "<|eot_id|>")) {
    out->kind = PD_CHAT_LLAMA3;
  } else if (!strstr(s, "<|im_start|>") || !strstr(s, "<|im_end|>")) {
    rc = pd_errf(err, errlen, PD_EUNSUPPORTED,
                 "chat: the model's chat template is neither ChatML nor Llama 3's; only those "
                 "are supported");
  } else {
    out->kind = PD_CHAT_CHATML;
    /* SmolLM2: {% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n...<|im_end|>\n' }} */
    const char *cond = strstr(s, "messages[0]['role'] != 'system'");
    const char *sys = cond ? strstr(cond, "<|im_start|>system\n") : NULL;
    if (sys) {
      sys += strlen("<|im_start|>system\n");
      const char *end = strstr(sys, "<|im_end|>");
      if (end && (size_t)(end - sys) < sizeof out->default_system) {
        memcpy(out->default_system, sys, (size_t)(end - sys));
        out->default_system[end - sys] = 0;
      }
    }
  }
  free(s);
  return rc;
}

int pd_chat_render(const pd_chat_template *tpl, const pd_chat_msg *msgs, size_t n,
                   int add_generation_prompt, char **text, char *err, size_t errlen) {
  *text = NULL;
  size_t cap = 64 + strlen(tpl->default_system);
  for (size_t i = 0; i < n; i++) {
    if (!msgs[i].role || !msgs[i].content ||
        (strcmp(msgs[i].role, "system") && strcmp(msgs[i].role, "user") &&
         strcmp(msgs[i].role, "assistant")))
      return pd_errf(err, errlen, PD_EINVAL,
                     "chat: message %zu has no valid role (system, user, assistant)", i);
    cap += strlen(msgs[i].content) + 64;
  }
  char *buf = malloc(cap), *p = buf;
  if (!buf) return pd_errf(err, errlen, PD_ENOMEM, "chat: out of memory");
  if (tpl->kind == PD_CHAT_LLAMA3) {
    for (size_t i = 0; i < n; i++) {
      const char *c = msgs[i].content, *end = c + strlen(c);
      while (c < end && isspace((unsigned char)*c)) c++;
      while (end > c && isspace((unsigned char)end[-1])) end--;
      p += sprintf(p, "<|start_header_id|>%s<|end_header_id|>\n\n%.*s<|eot_id|>", msgs[i].role,
                   (int)(end - c), c);
    }
    if (add_generation_prompt) p += sprintf(p, "<|start_header_id|>assistant<|end_header_id|>\n\n");
  } else {
    if (tpl->default_system[0] && (n == 0 || strcmp(msgs[0].role, "system")))
      p += sprintf(p, "<|im_start|>system\n%s<|im_end|>\n", tpl->default_system);
    for (size_t i = 0; i < n; i++)
      p += sprintf(p, "<|im_start|>%s\n%s<|im_end|>\n", msgs[i].role, msgs[i].content);
    if (add_generation_prompt) p += sprintf(p, "<|im_start|>assistant\n");
  }
  *text = buf;
  return PD_OK;
}
