/*
 * pd_openai_tools.c -- see pd_openai_tools.h. The request side turns OpenAI's JSON into the
 * proto's Tool and ToolCall messages (and, for a forced call, a JSON schema the engine enforces);
 * the answer side reads calls with jansson, which parses one value at a time
 * (JSON_DISABLE_EOF_CHECK), so objects separated by ';' or followed by a closing tag are read in
 * place.
 */
#include "pd_openai_tools.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_chat.h"

#define BAD(...)                                                                                   \
  do {                                                                                             \
    snprintf(err, errlen, __VA_ARGS__);                                                            \
    return -1;                                                                                     \
  } while (0)

static const char CALL_OPEN[] = "<tool_call>", CALL_CLOSE[] = "</tool_call>";

static void *own(pd_openai_tools *t, void *p) {
  if (!p) return NULL;
  void **grown = realloc(t->owned, (t->n_owned + 1) * sizeof *grown);
  if (!grown) {
    free(p);
    return NULL;
  }
  t->owned = grown;
  t->owned[t->n_owned++] = p;
  return p;
}

static const char *arguments_key(const pd_openai_tools *t) {
  return t->family == PD_CHAT_LLAMA3 ? "parameters" : "arguments";
}

/* OpenAI's rule for function names: 1 to 64 of [a-zA-Z0-9_-]. */
static int valid_name(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > 64) return 0;
  for (size_t i = 0; i < n; i++)
    if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-') return 0;
  return 1;
}

static int find_tool(const pd_openai_tools *t, const char *name) {
  for (size_t i = 0; i < t->n_tools; i++)
    if (!strcmp(t->tools[i].name, name)) return (int)i;
  return -1;
}

/* One function's call object: {"name": its name (a constant), key: its parameters}. */
static json_t *call_schema(const pd_openai_tools *t, const char *name, json_t *params) {
  json_t *args =
      params ? json_deep_copy(params) : json_pack("{s:s,s:{}}", "type", "object", "properties");
  return json_pack("{s:s,s:{s:{s:s},s:o},s:[s,s]}", "type", "object", "properties", "name", "const",
                   name, arguments_key(t), args, "required", "name", arguments_key(t));
}

/* The schema of a forced call: the named (or only) function's call object, or with several an
 * anyOf of theirs, told apart by the name (pd_json_schema's union). tools: the request's. */
static int forced_schema(pd_openai_tools *t, json_t *tools, char *err, size_t errlen) {
  json_t *schema = NULL;
  if (t->forced_name || t->n_tools == 1) {
    int k = t->forced_name ? find_tool(t, t->forced_name) : 0;
    json_t *params = json_object_get(json_object_get(json_array_get(tools, (size_t)k), "function"),
                                     "parameters");
    schema = call_schema(t, t->tools[k].name, json_is_object(params) ? params : NULL);
  } else {
    json_t *alts = json_array();
    for (size_t i = 0; alts && i < t->n_tools; i++) {
      json_t *params =
          json_object_get(json_object_get(json_array_get(tools, i), "function"), "parameters");
      json_array_append_new(
          alts, call_schema(t, t->tools[i].name, json_is_object(params) ? params : NULL));
    }
    schema = alts ? json_pack("{s:o}", "anyOf", alts) : NULL;
  }
  t->schema = schema ? json_dumps(schema, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  json_decref(schema);
  if (!t->schema) BAD("out of memory");
  return 0;
}

int pd_openai_tools_parse(json_t *root, int family, pd_openai_tools *t, char *err, size_t errlen) {
  memset(t, 0, sizeof *t);
  t->family = family;
  json_t *tools = json_object_get(root, "tools"), *choice = json_object_get(root, "tool_choice");
  json_t *parallel = json_object_get(root, "parallel_tool_calls");
  if (parallel && !json_is_null(parallel) && !json_is_boolean(parallel))
    BAD("'parallel_tool_calls' must be true or false");
  if (!tools || json_is_null(tools) || (json_is_array(tools) && !json_array_size(tools))) {
    if (choice && !json_is_null(choice) &&
        !(json_is_string(choice) && !strcmp(json_string_value(choice), "none")))
      BAD("'tool_choice' needs 'tools'");
    return 0;
  }
  if (!json_is_array(tools)) BAD("'tools' must be an array of functions");
  size_t n = json_array_size(tools);
  if (n > PD_OPENAI_MAX_TOOLS) BAD("at most %d tools", PD_OPENAI_MAX_TOOLS);
  t->tools = own(t, calloc(n, sizeof *t->tools));
  t->tool_ptrs = own(t, calloc(n, sizeof *t->tool_ptrs));
  if (!t->tools || !t->tool_ptrs) BAD("out of memory");
  for (size_t i = 0; i < n; i++) {
    json_t *tool = json_array_get(tools, i), *type = json_object_get(tool, "type");
    json_t *fn = json_object_get(tool, "function");
    if (!json_is_object(tool) || !json_is_string(type) ||
        strcmp(json_string_value(type), "function") || !json_is_object(fn))
      BAD("tools[%zu] must be {\"type\": \"function\", \"function\": {...}}", i);
    json_t *name = json_object_get(fn, "name"), *desc = json_object_get(fn, "description");
    json_t *params = json_object_get(fn, "parameters");
    if (!json_is_string(name) || !valid_name(json_string_value(name)))
      BAD("tools[%zu].function.name must be 1 to 64 letters, digits, '_' or '-'", i);
    if (desc && !json_is_null(desc) && !json_is_string(desc))
      BAD("tools[%zu].function.description must be a string", i);
    if (params && !json_is_null(params) && !json_is_object(params))
      BAD("tools[%zu].function.parameters must be a JSON Schema object", i);
    Prefixd__V1__Tool *pt = &t->tools[i];
    prefixd__v1__tool__init(pt);
    pt->name = (char *)json_string_value(name);
    if (find_tool(t, pt->name) >= 0 && (size_t)find_tool(t, pt->name) < i)
      BAD("tools[%zu]: the function '%s' is offered twice", i, pt->name);
    pt->description = json_is_string(desc) ? (char *)json_string_value(desc) : "";
    pt->parameters = "";
    if (json_is_object(params)) {
      pt->parameters = own(t, json_dumps(params, JSON_COMPACT | JSON_PRESERVE_ORDER));
      if (!pt->parameters) BAD("out of memory");
    }
    t->tool_ptrs[i] = pt;
    t->n_tools = i + 1;
  }
  t->offered = 1;
  t->choice = PD_TOOL_CHOICE_AUTO;
  if (json_is_string(choice)) {
    const char *c = json_string_value(choice);
    if (!strcmp(c, "none"))
      t->choice = PD_TOOL_CHOICE_NONE;
    else if (!strcmp(c, "required"))
      t->choice = PD_TOOL_CHOICE_REQUIRED;
    else if (strcmp(c, "auto"))
      BAD("'tool_choice' must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", "
          "\"function\": {\"name\": ...}}");
  } else if (json_is_object(choice)) {
    json_t *fn = json_object_get(choice, "function");
    json_t *name = json_is_object(fn) ? json_object_get(fn, "name") : NULL;
    if (!json_is_string(name))
      BAD("'tool_choice' must be {\"type\": \"function\", \"function\": {\"name\": ...}}");
    int k = find_tool(t, json_string_value(name));
    if (k < 0) BAD("'tool_choice' names '%.64s', which is not in 'tools'", json_string_value(name));
    t->forced_name = t->tools[k].name;
    t->choice = PD_TOOL_CHOICE_REQUIRED;
  } else if (choice && !json_is_null(choice)) {
    BAD("'tool_choice' must be a string or an object");
  }
  if (t->choice == PD_TOOL_CHOICE_REQUIRED && forced_schema(t, tools, err, errlen)) return -1;
  return 0;
}

int pd_openai_tools_message(pd_openai_tools *t, json_t *msg, size_t idx,
                            Prefixd__V1__ChatMessage *m, char *err, size_t errlen) {
  json_t *id = json_object_get(msg, "tool_call_id");
  if (id && !json_is_null(id)) {
    if (!json_is_string(id)) BAD("messages[%zu].tool_call_id must be a string", idx);
    m->tool_call_id = (char *)json_string_value(id);
  }
  json_t *calls = json_object_get(msg, "tool_calls");
  if (!calls || json_is_null(calls)) return 0;
  if (strcmp(m->role, "assistant")) BAD("messages[%zu]: only an assistant makes tool calls", idx);
  if (!json_is_array(calls)) BAD("messages[%zu].tool_calls must be an array", idx);
  size_t n = json_array_size(calls);
  if (n > PD_OPENAI_MAX_TOOLS)
    BAD("messages[%zu] has more than %d tool calls", idx, PD_OPENAI_MAX_TOOLS);
  Prefixd__V1__ToolCall *tc = own(t, calloc(n + 1, sizeof *tc));
  Prefixd__V1__ToolCall **ptrs = own(t, calloc(n + 1, sizeof *ptrs));
  if (!tc || !ptrs) BAD("out of memory");
  for (size_t k = 0; k < n; k++) {
    json_t *c = json_array_get(calls, k), *fn = json_object_get(c, "function");
    json_t *name = json_object_get(fn, "name"), *args = json_object_get(fn, "arguments");
    json_t *cid = json_object_get(c, "id");
    if (!json_is_object(c) || !json_is_object(fn) || !json_is_string(name) ||
        !json_string_length(name))
      BAD("messages[%zu].tool_calls[%zu] must be {\"id\": ..., \"type\": \"function\", "
          "\"function\": {\"name\": ..., \"arguments\": \"{...}\"}}",
          idx, k);
    if (args && !json_is_null(args) && !json_is_string(args))
      BAD("messages[%zu].tool_calls[%zu].function.arguments must be a string of JSON", idx, k);
    prefixd__v1__tool_call__init(&tc[k]);
    tc[k].id = json_is_string(cid) ? (char *)json_string_value(cid) : "";
    tc[k].name = (char *)json_string_value(name);
    tc[k].arguments = json_is_string(args) ? (char *)json_string_value(args) : "{}";
    ptrs[k] = &tc[k];
  }
  m->tool_calls = ptrs;
  m->n_tool_calls = n;
  return 0;
}

void pd_openai_tools_free(pd_openai_tools *t) {
  for (size_t i = 0; i < t->n_owned; i++) free(t->owned[i]);
  free(t->owned);
  free(t->schema);
  memset(t, 0, sizeof *t);
}

/* ---- the answer ---------------------------------------------------------------------------- */

void pd_openai_calls_free(pd_openai_call *calls, size_t n) {
  for (size_t i = 0; calls && i < n; i++) {
    free(calls[i].name);
    free(calls[i].arguments);
  }
  free(calls);
}

static const char *skip_space(const char *p, const char *end) {
  while (p < end && isspace((unsigned char)*p)) p++;
  return p;
}

/* The end of the JSON value at p (after whitespace), or NULL if it does not end before end:
 * strings with their escapes, nested containers, a scalar up to its delimiter. Only the extent;
 * whether the value is valid JSON is jansson's to judge. */
static const char *value_end(const char *p, const char *end) {
  p = skip_space(p, end);
  int depth = 0;
  do {
    if (p == end) return NULL;
    if (*p == '"') {
      for (p++; p < end && *p != '"'; p++)
        if (*p == '\\' && ++p == end) return NULL;
      if (p == end) return NULL;
      p++;
    } else if (*p == '{' || *p == '[') {
      depth++, p++;
    } else if (*p == '}' || *p == ']') {
      if (depth-- == 0) return NULL;
      p++;
    } else if (depth == 0) {
      while (p < end && !strchr(",:}]; \t\r\n", *p)) p++;
      return p;
    } else {
      p++;
    }
  } while (depth > 0);
  return p;
}

/* The arguments of the call object [s, e) (valid JSON, checked): the text of its member key's
 * value, as the model wrote it (numbers of any size kept). NULL if absent. */
static char *arguments_text(const char *s, const char *e, const char *key) {
  const char *p = s + 1;
  for (;;) {
    p = skip_space(p, e);
    if (p == e || *p == '}') return NULL;
    const char *key_end = value_end(p, e);
    json_error_t jerr;
    json_t *k = key_end ? json_loadb(p, (size_t)(key_end - p), JSON_DECODE_ANY, &jerr) : NULL;
    int match = json_is_string(k) && !strcmp(json_string_value(k), key);
    json_decref(k);
    if (!key_end) return NULL;
    p = skip_space(key_end, e);
    if (p == e || *p != ':') return NULL;
    const char *v = skip_space(p + 1, e), *v_end = value_end(v, e);
    if (!v_end) return NULL;
    if (match) return strndup(v, (size_t)(v_end - v));
    p = skip_space(v_end, e);
    if (p < e && *p == ',') p++;
  }
}

/* One call object at *p (whitespace first allowed): {"name": offered, "arguments" or
 * "parameters": {...}}. 1 read (*p past it), 0 not a call, -1 out of memory. */
static int read_call(const pd_openai_tools *t, const char **p, const char *end,
                     pd_openai_call *out) {
  const char *s = skip_space(*p, end), *e = s < end && *s == '{' ? value_end(s, end) : NULL;
  if (!e || memchr(s, 0, (size_t)(e - s))) return 0; /* a NUL byte: jansson reads it as the end */
  json_error_t jerr; /* numbers as reals: any size is a number here (the text is kept) */
  json_t *obj =
      json_loadb(s, (size_t)(e - s), JSON_DECODE_INT_AS_REAL | JSON_REJECT_DUPLICATES, &jerr);
  if (!obj) return 0;
  const char *keys[] = {arguments_key(t), "arguments", "parameters"}, *key = NULL;
  for (int i = 0; i < 3 && !key; i++)
    if (json_object_get(obj, keys[i])) key = keys[i];
  json_t *name = json_object_get(obj, "name");
  int rc = 0;
  if (json_is_string(name) && find_tool(t, json_string_value(name)) >= 0 && key &&
      json_is_object(json_object_get(obj, key))) {
    out->name = strdup(json_string_value(name));
    out->arguments = arguments_text(s, e, key);
    rc = out->name && out->arguments ? 1 : -1;
    if (rc < 0) free(out->name), free(out->arguments);
    *p = e;
  }
  json_decref(obj);
  return rc;
}

static int add_call(pd_openai_call **calls, size_t *n, const pd_openai_call *c) {
  pd_openai_call *grown = realloc(*calls, (*n + 1) * sizeof *grown);
  if (!grown) return -1;
  *calls = grown;
  grown[(*n)++] = *c;
  return 0;
}

/* Calls in the text from p on, in the family's convention; 1 if all of it was calls (and
 * nothing else but whitespace), 0 if not (the calls read are given back), -1 out of memory. */
static int read_calls(const pd_openai_tools *t, const char *p, const char *end, int tagged,
                      pd_openai_call **calls, size_t *n_calls) {
  for (;;) {
    p = skip_space(p, end);
    if (p == end) return *n_calls > 0;
    if (tagged) {
      if ((size_t)(end - p) < sizeof CALL_OPEN - 1 || memcmp(p, CALL_OPEN, sizeof CALL_OPEN - 1))
        return 0;
      p += sizeof CALL_OPEN - 1;
    } else if (*n_calls) { /* Llama 3: calls separated by ';' */
      if (*p != ';') return 0;
      p++;
    }
    pd_openai_call c;
    int rc = read_call(t, &p, end, &c);
    if (rc <= 0) return rc;
    if (add_call(calls, n_calls, &c)) {
      free(c.name), free(c.arguments);
      return -1;
    }
    if (tagged) { /* the closing tag, or the end (the answer stopped right after the object) */
      p = skip_space(p, end);
      if ((size_t)(end - p) >= sizeof CALL_CLOSE - 1 &&
          !memcmp(p, CALL_CLOSE, sizeof CALL_CLOSE - 1))
        p += sizeof CALL_CLOSE - 1;
      else if (p != end)
        return 0;
    }
  }
}

static const char *find_open_tag(const char *text, size_t n) {
  for (size_t i = 0; i + sizeof CALL_OPEN - 1 <= n; i++)
    if (!memcmp(text + i, CALL_OPEN, sizeof CALL_OPEN - 1)) return text + i;
  return NULL;
}

int pd_openai_calls_read(const pd_openai_tools *t, const char *text, size_t n,
                         pd_openai_call **calls, size_t *n_calls, size_t *content_len) {
  *calls = NULL;
  *n_calls = 0;
  *content_len = n;
  if (t->choice == PD_TOOL_CHOICE_NONE) return 0;
  const char *end = text + n, *from = text;
  int tagged = 0;
  if (t->choice == PD_TOOL_CHOICE_AUTO && t->family != PD_CHAT_LLAMA3) {
    from = find_open_tag(text, n);
    if (!from) return 0;
    tagged = 1;
  }
  int rc = read_calls(t, from, end, tagged, calls, n_calls);
  if (rc <= 0) {
    pd_openai_calls_free(*calls, *n_calls);
    *calls = NULL;
    *n_calls = 0;
    return rc;
  }
  while (from > text && isspace((unsigned char)from[-1])) from--;
  *content_len = (size_t)(from - text);
  return 0;
}

size_t pd_openai_calls_content_safe(const pd_openai_tools *t, const char *text, size_t n) {
  if (t->choice == PD_TOOL_CHOICE_NONE) return n;
  if (t->choice == PD_TOOL_CHOICE_REQUIRED) return 0;
  if (t->family == PD_CHAT_LLAMA3) { /* a call is the whole answer: held while it may be one */
    const char *p = skip_space(text, text + n);
    return p == text + n || *p == '{' ? 0 : n;
  }
  const char *tag = find_open_tag(text, n);
  if (tag) return (size_t)(tag - text);
  /* the longest end of the text that may begin the tag is held back */
  for (size_t keep = sizeof CALL_OPEN - 2; keep > 0; keep--)
    if (keep <= n && !memcmp(text + n - keep, CALL_OPEN, keep)) return n - keep;
  return n;
}
