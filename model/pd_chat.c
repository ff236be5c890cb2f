/* pd_chat.c -- see pd_chat.h. */
#include "pd_chat.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "pd_err.h"
#include "pd_strbuf.h"

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

/* Appends value as JSON with Python's json.dumps separators (", " and ": "), keys in order. */
static void put_json(pd_strbuf *b, const json_t *value) {
  char *text = json_dumps(value, JSON_PRESERVE_ORDER | JSON_ENCODE_ANY);
  if (!text) {
    b->oom = 1;
    return;
  }
  pd_strbuf_puts(b, text);
  free(text);
}

/* A tool's signature: {"type": "function", "function": {"name", "description", "parameters"}}.
 * NULL with err set if its parameters are not a JSON object. */
static json_t *tool_json(const pd_chat_tool *t, size_t i, char *err, size_t errlen) {
  json_t *params = NULL;
  if (t->parameters && t->parameters[0]) {
    json_error_t jerr;
    params = json_loads(t->parameters, JSON_DECODE_ANY, &jerr);
    if (!json_is_object(params)) {
      json_decref(params);
      pd_errf(err, errlen, PD_EINVAL, "chat: tool %zu's parameters are not a JSON object", i);
      return NULL;
    }
  } else {
    params = json_pack("{s:s,s:{}}", "type", "object", "properties");
  }
  json_t *fn = json_object();
  json_object_set_new(fn, "name", json_string(t->name));
  if (t->description && t->description[0])
    json_object_set_new(fn, "description", json_string(t->description));
  json_object_set_new(fn, "parameters", params);
  json_t *out = json_pack("{s:s,s:o}", "type", "function", "function", fn);
  if (!out) pd_errf(err, errlen, PD_ENOMEM, "chat: out of memory");
  return out;
}

/* A call as the family writes it: {"name": ..., "<key>": arguments} (arguments that are not a
 * JSON object are kept as a string). */
static void put_call(pd_strbuf *b, const pd_chat_tool_call *c, const char *key) {
  json_error_t jerr;
  json_t *args = c->arguments ? json_loads(c->arguments, JSON_DECODE_ANY, &jerr) : NULL;
  if (!json_is_object(args)) {
    json_decref(args);
    args = json_string(c->arguments ? c->arguments : "");
  }
  json_t *call = json_pack("{s:s,s:o}", "name", c->name ? c->name : "", key, args);
  if (!call) {
    b->oom = 1;
    return;
  }
  put_json(b, call);
  json_decref(call);
}

const char *pd_chat_arguments_key(const pd_chat_template *tpl) {
  return tpl->kind == PD_CHAT_LLAMA3 ? "parameters" : "arguments";
}

static int valid_role(const char *role) {
  return role && (!strcmp(role, "system") || !strcmp(role, "user") || !strcmp(role, "assistant") ||
                  !strcmp(role, "tool"));
}

/* Llama 3: a message's content, trimmed as its template does. */
static void put_trimmed(pd_strbuf *b, const char *c) {
  const char *end = c + strlen(c);
  while (c < end && isspace((unsigned char)*c)) c++;
  while (end > c && isspace((unsigned char)end[-1])) end--;
  pd_strbuf_put(b, c, (size_t)(end - c));
}

static void render_llama3(pd_strbuf *b, const pd_chat_msg *msgs, size_t n, json_t *const *tools,
                          size_t n_tools) {
  int tools_done = n_tools == 0;
  for (size_t i = 0; i < n; i++) {
    const pd_chat_msg *m = &msgs[i];
    const char *role = !strcmp(m->role, "tool") ? "ipython" : m->role;
    pd_strbuf_puts(b, "<|start_header_id|>");
    pd_strbuf_puts(b, role);
    pd_strbuf_puts(b, "<|end_header_id|>\n\n");
    if (!tools_done && !strcmp(m->role, "user")) {
      pd_strbuf_puts(
          b, "You can call the functions below. To call one, answer with nothing but a JSON "
             "object of the form {\"name\": function name, \"parameters\": dictionary of "
             "argument name and its value}.\n\n");
      for (size_t k = 0; k < n_tools; k++) {
        put_json(b, tools[k]);
        pd_strbuf_puts(b, "\n\n");
      }
      tools_done = 1;
    }
    if (m->n_tool_calls) {
      for (size_t k = 0; k < m->n_tool_calls; k++) {
        if (k) pd_strbuf_puts(b, "; ");
        put_call(b, &m->tool_calls[k], "parameters");
      }
    } else {
      put_trimmed(b, m->content);
    }
    pd_strbuf_puts(b, "<|eot_id|>");
  }
}

static void render_chatml(pd_strbuf *b, const pd_chat_template *tpl, const pd_chat_msg *msgs,
                          size_t n, json_t *const *tools, size_t n_tools) {
  int has_system = n > 0 && !strcmp(msgs[0].role, "system");
  const char *system = has_system ? msgs[0].content : tpl->default_system;
  if (has_system || system[0] || n_tools) {
    pd_strbuf_puts(b, "<|im_start|>system\n");
    pd_strbuf_puts(b, system);
    if (n_tools) {
      if (system[0]) pd_strbuf_puts(b, "\n\n");
      pd_strbuf_puts(
          b, "# Tools\n\nYou can call functions to help with the request. Their signatures, as "
             "JSON, are within <tools></tools> XML tags:\n<tools>");
      for (size_t k = 0; k < n_tools; k++) {
        pd_strbuf_puts(b, "\n");
        put_json(b, tools[k]);
      }
      pd_strbuf_puts(
          b, "\n</tools>\n\nTo call a function, answer with a JSON object holding its name and "
             "its arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
             "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>");
    }
    pd_strbuf_puts(b, "<|im_end|>\n");
  }
  for (size_t i = has_system; i < n; i++) {
    const pd_chat_msg *m = &msgs[i];
    if (!strcmp(m->role, "tool")) { /* results in a row: one user turn */
      if (i == 0 || strcmp(msgs[i - 1].role, "tool")) pd_strbuf_puts(b, "<|im_start|>user");
      pd_strbuf_puts(b, "\n<tool_response>\n");
      pd_strbuf_puts(b, m->content);
      pd_strbuf_puts(b, "\n</tool_response>");
      if (i + 1 == n || strcmp(msgs[i + 1].role, "tool")) pd_strbuf_puts(b, "<|im_end|>\n");
      continue;
    }
    pd_strbuf_puts(b, "<|im_start|>");
    pd_strbuf_puts(b, m->role);
    pd_strbuf_puts(b, "\n");
    pd_strbuf_puts(b, m->content);
    for (size_t k = 0; k < m->n_tool_calls; k++) {
      if (k || m->content[0]) pd_strbuf_puts(b, "\n");
      pd_strbuf_puts(b, "<tool_call>\n");
      put_call(b, &m->tool_calls[k], "arguments");
      pd_strbuf_puts(b, "\n</tool_call>");
    }
    pd_strbuf_puts(b, "<|im_end|>\n");
  }
}

int pd_chat_render(const pd_chat_template *tpl, const pd_chat_msg *msgs, size_t n,
                   const pd_chat_tool *tools, size_t n_tools, int add_generation_prompt,
                   char **text, char *err, size_t errlen) {
  *text = NULL;
  for (size_t i = 0; i < n; i++) {
    if (!valid_role(msgs[i].role) || !msgs[i].content)
      return pd_errf(err, errlen, PD_EINVAL,
                     "chat: message %zu has no valid role (system, user, assistant, tool)", i);
    for (size_t k = 0; k < msgs[i].n_tool_calls; k++)
      if (!msgs[i].tool_calls[k].name || !msgs[i].tool_calls[k].name[0])
        return pd_errf(err, errlen, PD_EINVAL, "chat: message %zu's tool call %zu has no name", i,
                       k);
  }
  json_t **sigs = n_tools ? calloc(n_tools, sizeof *sigs) : NULL;
  if (n_tools && !sigs) return pd_errf(err, errlen, PD_ENOMEM, "chat: out of memory");
  int rc = PD_OK;
  for (size_t k = 0; k < n_tools && !rc; k++) {
    if (!tools[k].name || !tools[k].name[0])
      rc = pd_errf(err, errlen, PD_EINVAL, "chat: tool %zu has no name", k);
    else if (!(sigs[k] = tool_json(&tools[k], k, err, errlen)))
      rc = PD_EINVAL;
  }
  pd_strbuf b = {0};
  if (!rc) {
    if (tpl->kind == PD_CHAT_LLAMA3) {
      render_llama3(&b, msgs, n, sigs, n_tools);
      if (add_generation_prompt)
        pd_strbuf_puts(&b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
    } else {
      render_chatml(&b, tpl, msgs, n, sigs, n_tools);
      if (add_generation_prompt) pd_strbuf_puts(&b, "<|im_start|>assistant\n");
    }
    pd_strbuf_puts(&b, ""); /* an empty conversation is still a string */
    if (b.oom) rc = pd_errf(err, errlen, PD_ENOMEM, "chat: out of memory");
  }
  for (size_t k = 0; k < n_tools; k++) json_decref(sigs ? sigs[k] : NULL);
  free(sigs);
  if (rc) {
    free(b.p);
    return rc;
  }
  *text = b.p;
  return PD_OK;
}
