/*
 * pd_openai.c -- see pd_openai.h for what is served. Three parts: the JSON request turned into a
 * GenerateRequest (loop thread, jansson), the engine's output turned into OpenAI's answers, and
 * the HTTP/1.1 connections.
 *
 * The HTTP/1.1 connections are pd_http1's (shared with the metrics endpoint); a request in the
 * engine is that connection's work, so a hang-up reaches it (on_gone) and cancels its job.
 *
 * A request is a struct oreq whose first member is the pd_job, so pd_job_free frees all of it.
 * The GenerateRequest it hands the engine points into the parsed JSON (root) and into arrays the
 * oreq owns; all of it lives until the engine gives the job back done.
 */
#include "pd_openai.h"

#include <errno.h>
#include <http_parser.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pd_chat.h"
#include "pd_err.h"
#include "pd_http1.h"
#include "pd_unicode.h"
#include "pd_log.h"
#include "pd_openai_tools.h"
#include "pd_service.h"
#include "prefixd/v1/prefixd.pb-c.h"

#define MAX_CONNS    256
#define MAX_BODY     (4u << 20)
#define REQUEST_MS   30000
#define SEND_MS      30000
#define MAX_STOP     16
#define MAX_MESSAGES 4096
#define MAX_CHOICES  16 /* OpenAI's n */

typedef struct oreq oreq;

/* One choice of a request: an engine job of its own (n choices are n jobs over the same prompt,
 * which the prefix cache computes once: the others wait for its blocks) and its answer as it
 * accumulates. */
typedef struct ochoice {
  pd_job job; /* first: pd_job_free frees the whole struct */
  oreq *r;
  int index;
  Prefixd__V1__GenerateRequest gen;     /* the request's, with its own sampling */
  Prefixd__V1__SamplingParams sampling; /* the request's, with seed + index */
  /* a whole (non-streamed) answer as it accumulates */
  char *text;
  size_t n_text, cap_text;
  json_t *lp_list;  /* chat: logprobs.content items; completions: the legacy object */
  size_t lp_offset; /* completions: bytes of the token pieces so far (text_offset) */
  int started;      /* streaming: this choice's first event is sent */
  size_t sent;      /* streaming with tools: bytes of text sent as content */
  int lost;         /* its answer could not be kept (out of memory): the request ends in a 500 */
  int done;
} ochoice;

struct oreq {
  pd_http1_conn *c; /* NULL once the connection is gone (loop thread only) */
  pd_openai *o;
  json_t *root; /* the request body: the strings below point into it */
  int chat, stream, include_usage;
  int logprobs, top_logprobs; /* as asked (completions: top_logprobs = the legacy integer) */
  int n_choices;              /* OpenAI's n */
  int pending;                /* choices whose jobs are in the engine */
  ochoice *choices[MAX_CHOICES];
  ochoice *failed; /* the first choice that ended in an error (the others are cancelled) */
  int head_sent;   /* streaming: the HTTP head is out */
  char id[48];
  int64_t created;
  /* what the GenerateRequest points at */
  Prefixd__V1__GenerateRequest gen;
  Prefixd__V1__Prompt prompt;
  Prefixd__V1__ChatMessages chat_messages;
  Prefixd__V1__ChatMessage *messages; /* (n_messages) */
  Prefixd__V1__ChatMessage **message_ptrs;
  size_t n_messages;
  char **owned; /* (n_owned) strings joined from content parts */
  size_t n_owned;
  Prefixd__V1__TokenIds token_ids;
  int32_t *ids;
  Prefixd__V1__SamplingParams sampling;
  Prefixd__V1__ResponseFormat format;
  char *schema_text;            /* format.json_schema (jansson's, freed with free) */
  Prefixd__V1__LogitBias *bias; /* (sampling.n_logit_bias) */
  Prefixd__V1__LogitBias **bias_ptrs;
  char *stop[MAX_STOP];
  pd_openai_tools tools; /* chat: the functions offered, tool_choice */
};

struct pd_openai {
  pd_http1 *http; /* the connections; NULL once closed */
  pd_engine *engine;
  char model_id[256];
  int64_t started;
  int closing, draining;
  size_t in_flight; /* jobs (choices) in the engine */
  uint64_t next_id;
};

static void maybe_free(pd_openai *o);

/* ---- small helpers --------------------------------------------------------------------------- */

static int http_status_of(int grpc) {
  switch (grpc) {
  case PD_GRPC_OK: return 200;
  case PD_GRPC_INVALID_ARGUMENT:
  case PD_GRPC_FAILED_PRECONDITION:
  case PD_GRPC_OUT_OF_RANGE: return 400;
  case PD_GRPC_UNAUTHENTICATED: return 401;
  case PD_GRPC_PERMISSION_DENIED: return 403;
  case PD_GRPC_NOT_FOUND: return 404;
  case PD_GRPC_RESOURCE_EXHAUSTED: return 429;
  case PD_GRPC_CANCELLED: return 499;
  case PD_GRPC_UNIMPLEMENTED: return 501;
  case PD_GRPC_UNAVAILABLE: return 503;
  case PD_GRPC_DEADLINE_EXCEEDED: return 504;
  default: return 500;
  }
}

static const char *error_type(int code) {
  switch (code) {
  case 401: return "authentication_error";
  case 403: return "permission_error";
  case 404: return "not_found_error";
  case 429: return "rate_limit_error";
  default: return code >= 500 ? "server_error" : "invalid_request_error";
  }
}

/* OpenAI's error object, compact JSON (malloc'd; NULL when out of memory). */
static char *error_json(int code, const char *message) {
  json_t *e = json_pack("{s:{s:s,s:s,s:n,s:n}}", "error", "message", message, "type",
                        error_type(code), "param", "code");
  char *s = e ? json_dumps(e, JSON_COMPACT) : NULL;
  json_decref(e);
  return s;
}

/* A token's bytes as text: invalid UTF-8 (a piece of a character) and NUL become U+FFFD, as
 * OpenAI's API shows such tokens (with their raw bytes beside). out: (3 * n + 1) bytes. */
static void utf8_lossy(const unsigned char *p, size_t n, char *out) {
  size_t o = 0;
  for (size_t i = 0; i < n;) {
    uint32_t cp;
    i += (size_t)pd_utf8_decode(p + i, n - i, &cp); /* an invalid byte decodes as U+FFFD */
    o += (size_t)pd_utf8_encode(cp ? cp : 0xFFFD, (uint8_t *)out + o);
  }
  out[o] = 0;
}

/* {"token", "logprob", "bytes"} of one token (chat format); NULL when out of memory. */
static json_t *token_entry(const pd_tokenizer *tok, int32_t id, float logprob) {
  const char *bytes = "";
  size_t n = 0;
  if (pd_token_piece(tok, id, &bytes, &n)) n = 0;
  char *text = malloc(3 * n + 1);
  json_t *b = json_array();
  if (!text || !b) {
    free(text);
    json_decref(b);
    return NULL;
  }
  utf8_lossy((const unsigned char *)bytes, n, text);
  for (size_t i = 0; i < n; i++) json_array_append_new(b, json_integer((unsigned char)bytes[i]));
  json_t *e = json_pack("{s:s,s:f,s:o}", "token", text, "logprob", (double)logprob, "bytes", b);
  free(text);
  return e;
}

/* ---- the request: JSON -> GenerateRequest ----------------------------------------------------- */

/* Fails the parse with a message naming the field. */
#define BAD(...)                                                                                   \
  do {                                                                                             \
    snprintf(err, errlen, __VA_ARGS__);                                                            \
    return -1;                                                                                     \
  } while (0)

static int get_number(json_t *root, const char *key, double lo, double hi, double *out, char *err,
                      size_t errlen) {
  json_t *v = json_object_get(root, key);
  if (!v || json_is_null(v)) return 0;
  if (!json_is_number(v)) BAD("'%s' must be a number", key);
  double x = json_number_value(v);
  if (!(x >= lo && x <= hi)) BAD("'%s' is %g; it must be in [%g, %g]", key, x, lo, hi);
  *out = x;
  return 0;
}

static int get_int(json_t *root, const char *key, json_int_t lo, json_int_t hi, json_int_t *out,
                   char *err, size_t errlen) {
  json_t *v = json_object_get(root, key);
  if (!v || json_is_null(v)) return 0;
  if (!json_is_integer(v)) BAD("'%s' must be an integer", key);
  json_int_t x = json_integer_value(v);
  if (x < lo || x > hi)
    BAD("'%s' is %lld; it must be in [%lld, %lld]", key, (long long)x, (long long)lo,
        (long long)hi);
  *out = x;
  return 0;
}

static int get_bool(json_t *root, const char *key, int *out, char *err, size_t errlen) {
  json_t *v = json_object_get(root, key);
  if (!v || json_is_null(v)) return 0;
  if (!json_is_boolean(v)) BAD("'%s' must be true or false", key);
  *out = json_is_true(v);
  return 0;
}

static char *own(oreq *r, char *s) {
  char **grown = realloc(r->owned, (r->n_owned + 1) * sizeof *grown);
  if (!grown) {
    free(s);
    return NULL;
  }
  r->owned = grown;
  r->owned[r->n_owned++] = s;
  return s;
}

/* A message's content: a string, or an array of {"type": "text", "text": ...} parts (joined). */
static int content_text(oreq *r, json_t *content, size_t idx, char **out, char *err,
                        size_t errlen) {
  if (json_is_string(content)) {
    *out = (char *)json_string_value(content);
    return 0;
  }
  if (json_is_null(content)) {
    *out = "";
    return 0;
  }
  if (!json_is_array(content)) BAD("messages[%zu].content must be a string or an array", idx);
  size_t total = 1, i;
  json_t *part;
  json_array_foreach(content, i, part) {
    json_t *type = json_object_get(part, "type"), *text = json_object_get(part, "text");
    if (!json_is_string(type) || strcmp(json_string_value(type), "text") || !json_is_string(text))
      BAD("messages[%zu].content[%zu]: only parts of type 'text' are supported", idx, i);
    total += json_string_length(text);
  }
  char *joined = malloc(total);
  if (!joined || !own(r, joined)) BAD("out of memory");
  size_t n = 0;
  json_array_foreach(content, i, part) {
    json_t *text = json_object_get(part, "text");
    memcpy(joined + n, json_string_value(text), json_string_length(text));
    n += json_string_length(text);
  }
  joined[n] = 0;
  *out = joined;
  return 0;
}

static int parse_messages(oreq *r, json_t *msgs, char *err, size_t errlen) {
  if (!json_is_array(msgs) || json_array_size(msgs) == 0)
    BAD("'messages' must be a non-empty array");
  size_t n = json_array_size(msgs);
  if (n > MAX_MESSAGES) BAD("at most %d messages", MAX_MESSAGES);
  r->messages = calloc(n, sizeof *r->messages);
  r->message_ptrs = calloc(n, sizeof *r->message_ptrs);
  if (!r->messages || !r->message_ptrs) BAD("out of memory");
  for (size_t i = 0; i < n; i++) {
    json_t *m = json_array_get(msgs, i);
    json_t *role = json_object_get(m, "role");
    if (!json_is_object(m) || !json_is_string(role)) BAD("messages[%zu] needs a string 'role'", i);
    const char *rs = json_string_value(role);
    if (!strcmp(rs, "developer")) rs = "system"; /* OpenAI's newer name for it */
    if (strcmp(rs, "system") && strcmp(rs, "user") && strcmp(rs, "assistant") && strcmp(rs, "tool"))
      BAD("messages[%zu].role '%.40s' is not supported (system, developer, user, assistant, "
          "tool)",
          i, rs);
    prefixd__v1__chat_message__init(&r->messages[i]);
    r->messages[i].role = (char *)rs;
    if (content_text(r, json_object_get(m, "content"), i, &r->messages[i].content, err, errlen) ||
        pd_openai_tools_message(&r->tools, m, i, &r->messages[i], err, errlen))
      return -1;
    r->message_ptrs[i] = &r->messages[i];
  }
  r->n_messages = n;
  prefixd__v1__chat_messages__init(&r->chat_messages);
  r->chat_messages.messages = r->message_ptrs;
  r->chat_messages.n_messages = n;
  r->chat_messages.add_generation_prompt = 1;
  r->chat_messages.tools = r->tools.tool_ptrs;
  r->chat_messages.n_tools = r->tools.n_tools;
  r->prompt.kind_case = PREFIXD__V1__PROMPT__KIND_CHAT;
  r->prompt.chat = &r->chat_messages;
  return 0;
}

static int parse_prompt(oreq *r, json_t *p, char *err, size_t errlen) {
  if (json_is_array(p) && json_array_size(p) == 1 && json_is_string(json_array_get(p, 0)))
    p = json_array_get(p, 0);
  if (json_is_string(p)) {
    r->prompt.kind_case = PREFIXD__V1__PROMPT__KIND_TEXT;
    r->prompt.text = (char *)json_string_value(p);
    return 0;
  }
  if (!json_is_array(p) || json_array_size(p) == 0)
    BAD("'prompt' must be a string, an array of one string, or an array of token ids");
  size_t n = json_array_size(p);
  if (json_is_array(json_array_get(p, 0)) || json_is_string(json_array_get(p, 0)))
    BAD("'prompt' holds %zu prompts: send one prompt per request", n);
  r->ids = malloc(n * sizeof *r->ids);
  if (!r->ids) BAD("out of memory");
  for (size_t i = 0; i < n; i++) {
    json_t *v = json_array_get(p, i);
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX)
      BAD("prompt[%zu] must be a token id", i);
    r->ids[i] = (int32_t)json_integer_value(v);
  }
  prefixd__v1__token_ids__init(&r->token_ids);
  r->token_ids.ids = r->ids;
  r->token_ids.n_ids = n;
  r->prompt.kind_case = PREFIXD__V1__PROMPT__KIND_TOKENS;
  r->prompt.tokens = &r->token_ids;
  return 0;
}

/* Fields prefixd cannot honour: refused by name rather than ignored. */
static int refuse_unsupported(json_t *root, int chat, char *err, size_t errlen) {
  json_t *v;
  if ((v = json_object_get(root, "best_of")) && !json_is_null(v) &&
      (!json_is_integer(v) || json_integer_value(v) != 1))
    BAD("'best_of' must be 1");
  if ((v = json_object_get(root, "functions")) && !json_is_null(v) &&
      (!json_is_array(v) || json_array_size(v)))
    BAD("'functions' (deprecated by OpenAI) are not supported: send them as 'tools'");
  if (!chat) {
    if ((v = json_object_get(root, "tools")) && !json_is_null(v) &&
        (!json_is_array(v) || json_array_size(v)))
      BAD("'tools' are for /v1/chat/completions");
    if ((v = json_object_get(root, "echo")) && json_is_true(v)) BAD("'echo' is not supported");
    if ((v = json_object_get(root, "suffix")) && !json_is_null(v) &&
        (!json_is_string(v) || json_string_length(v)))
      BAD("'suffix' is not supported");
  }
  return 0;
}

/* OpenAI's logit_bias: {"token id": bias, ...}, -100 to 100 each. The engine checks the ids
 * against the vocabulary and the count. */
static int parse_logit_bias(oreq *r, json_t *lb, char *err, size_t errlen) {
  if (!lb || json_is_null(lb)) return 0;
  if (!json_is_object(lb)) BAD("'logit_bias' must be an object of token ids to biases");
  size_t n = json_object_size(lb);
  if (n > PD_LOGIT_BIAS_MAX) BAD("'logit_bias' has %zu entries; at most %d", n, PD_LOGIT_BIAS_MAX);
  if (!n) return 0;
  r->bias = calloc(n, sizeof *r->bias);
  r->bias_ptrs = calloc(n, sizeof *r->bias_ptrs);
  if (!r->bias || !r->bias_ptrs) BAD("out of memory");
  const char *key;
  json_t *v;
  size_t i = 0;
  json_object_foreach(lb, key, v) {
    char *end;
    errno = 0;
    long id = strtol(key, &end, 10);
    if (!*key || *end || errno || id < 0 || id > INT32_MAX)
      BAD("'logit_bias' keys must be token ids; got '%.32s'", key);
    if (!json_is_number(v) || json_number_value(v) < -100 || json_number_value(v) > 100)
      BAD("'logit_bias' values must be numbers from -100 to 100 (token %ld)", id);
    prefixd__v1__logit_bias__init(&r->bias[i]);
    r->bias[i].token_id = (int32_t)id;
    r->bias[i].bias = (float)json_number_value(v);
    r->bias_ptrs[i] = &r->bias[i];
    i++;
  }
  r->sampling.logit_bias = r->bias_ptrs;
  r->sampling.n_logit_bias = n;
  return 0;
}

/* response_format: {"type": "text"}, {"type": "json_object"} or {"type": "json_schema",
 * "json_schema": {"name": ..., "schema": {...}, "strict": ...}} (the schema goes on as text; the
 * engine compiles it and names what it refuses). */
static int parse_format(oreq *r, json_t *f, char *err, size_t errlen) {
  if (!f || json_is_null(f)) return 0;
  json_t *t = json_object_get(f, "type");
  const char *type = json_is_string(t) ? json_string_value(t) : NULL;
  if (!json_is_object(f) || !type)
    BAD("'response_format' must be an object like {\"type\": \"json_object\"}");
  prefixd__v1__response_format__init(&r->format);
  if (!strcmp(type, "json_object")) {
    r->format.type = PREFIXD__V1__RESPONSE_FORMAT__TYPE__RESPONSE_FORMAT_JSON_OBJECT;
  } else if (!strcmp(type, "json_schema")) {
    json_t *schema = json_object_get(json_object_get(f, "json_schema"), "schema");
    if (!schema)
      BAD("'response_format' json_schema needs {\"json_schema\": {\"name\": ..., "
          "\"schema\": {...}}}");
    if (!(r->schema_text = json_dumps(schema, JSON_COMPACT | JSON_ENCODE_ANY)))
      BAD("out of memory");
    r->format.type = PREFIXD__V1__RESPONSE_FORMAT__TYPE__RESPONSE_FORMAT_JSON_SCHEMA;
    r->format.json_schema = r->schema_text;
  } else if (!strcmp(type, "text")) {
    return 0;
  } else {
    BAD("'response_format' type '%.32s' is not supported (\"text\", \"json_object\" or "
        "\"json_schema\")",
        type);
  }
  r->gen.response_format = &r->format;
  return 0;
}

static int parse_request(oreq *r, char *err, size_t errlen) {
  json_t *root = r->root;
  if (!json_is_object(root)) BAD("the body must be a JSON object");
  if (refuse_unsupported(root, r->chat, err, errlen)) return -1;
  prefixd__v1__generate_request__init(&r->gen);
  prefixd__v1__prompt__init(&r->prompt);
  prefixd__v1__sampling_params__init(&r->sampling);
  if (r->chat) {
    /* the template family decides how calls are written (pd_openai_parse has no engine) */
    int family = r->o ? r->o->engine->chat.kind : PD_CHAT_CHATML;
    if (pd_openai_tools_parse(root, family, &r->tools, err, errlen) ||
        parse_messages(r, json_object_get(root, "messages"), err, errlen))
      return -1;
  } else {
    json_t *p = json_object_get(root, "prompt");
    if (!p) BAD("'prompt' is required");
    if (parse_prompt(r, p, err, errlen)) return -1;
  }
  json_int_t max_tokens = 0, top_k = 0, seed = 0, top_logprobs = 0, n_choices = 1;
  double temperature = 1.0, top_p = 1.0, min_p = 0, rep = 1, presence = 0, frequency = 0;
  if (get_int(root, "max_tokens", 0, INT32_MAX, &max_tokens, err, errlen) ||
      get_int(root, "max_completion_tokens", 0, INT32_MAX, &max_tokens, err, errlen) ||
      get_number(root, "temperature", 0, 100, &temperature, err, errlen) ||
      get_number(root, "top_p", 0, 1, &top_p, err, errlen) ||
      get_int(root, "top_k", 0, INT32_MAX, &top_k, err, errlen) ||
      get_number(root, "min_p", 0, 1, &min_p, err, errlen) ||
      get_number(root, "repetition_penalty", 1e-6, 100, &rep, err, errlen) ||
      get_number(root, "presence_penalty", -2, 2, &presence, err, errlen) ||
      get_number(root, "frequency_penalty", -2, 2, &frequency, err, errlen) ||
      parse_logit_bias(r, json_object_get(root, "logit_bias"), err, errlen) ||
      parse_format(r, json_object_get(root, "response_format"), err, errlen) ||
      get_int(root, "seed", INT64_MIN, INT64_MAX, &seed, err, errlen) ||
      get_bool(root, "stream", &r->stream, err, errlen) ||
      get_int(root, "n", 1, MAX_CHOICES, &n_choices, err, errlen))
    return -1;
  r->n_choices = (int)n_choices;
  int ignore_eos = 0;
  if (get_bool(root, "ignore_eos", &ignore_eos, err, errlen)) return -1;
  json_t *so = json_object_get(root, "stream_options");
  if (so && !json_is_null(so) &&
      (!json_is_object(so) || get_bool(so, "include_usage", &r->include_usage, err, errlen)))
    BAD("'stream_options' must be an object like {\"include_usage\": true}");
  if (r->chat) {
    if (get_bool(root, "logprobs", &r->logprobs, err, errlen) ||
        get_int(root, "top_logprobs", 0, PD_TOP_LOGPROBS_MAX, &top_logprobs, err, errlen))
      return -1;
    if (top_logprobs && !r->logprobs) BAD("'top_logprobs' needs 'logprobs': true");
    if (r->logprobs && r->tools.choice != PD_TOOL_CHOICE_NONE)
      BAD("'logprobs' with 'tools' is not supported (unless tool_choice is \"none\")");
    if (r->tools.choice == PD_TOOL_CHOICE_REQUIRED) { /* the call is constrained to a schema */
      if (r->gen.response_format)
        BAD("'response_format' cannot be combined with a tool_choice that forces a call");
      prefixd__v1__response_format__init(&r->format);
      r->format.type = PREFIXD__V1__RESPONSE_FORMAT__TYPE__RESPONSE_FORMAT_JSON_SCHEMA;
      r->format.json_schema = r->tools.schema;
      r->gen.response_format = &r->format;
    }
  } else {
    json_t *lp = json_object_get(root, "logprobs");
    if (lp && !json_is_null(lp)) {
      if (get_int(root, "logprobs", 0, 5, &top_logprobs, err, errlen)) return -1;
      r->logprobs = 1;
    }
  }
  r->top_logprobs = (int)top_logprobs;
  json_t *stop = json_object_get(root, "stop");
  size_t n_stop = 0;
  if (json_is_string(stop)) {
    r->stop[n_stop++] = (char *)json_string_value(stop);
  } else if (json_is_array(stop)) {
    if (json_array_size(stop) > MAX_STOP) BAD("at most %d stop strings", MAX_STOP);
    for (size_t i = 0; i < json_array_size(stop); i++) {
      json_t *s = json_array_get(stop, i);
      if (!json_is_string(s)) BAD("stop[%zu] must be a string", i);
      r->stop[n_stop++] = (char *)json_string_value(s);
    }
  } else if (stop && !json_is_null(stop)) {
    BAD("'stop' must be a string or an array of strings");
  }
  r->sampling.temperature = (float)temperature;
  r->sampling.top_p = (float)top_p;
  r->sampling.top_k = (int32_t)top_k;
  r->sampling.min_p = (float)min_p;
  r->sampling.repeat_penalty = (float)rep;
  r->sampling.presence_penalty = (float)presence;
  r->sampling.frequency_penalty = (float)frequency;
  r->sampling.seed = (uint64_t)seed;
  r->sampling.ignore_eos = ignore_eos;
  r->gen.prompt = &r->prompt;
  r->gen.sampling = &r->sampling;
  r->gen.max_tokens = (uint32_t)max_tokens;
  r->gen.stop = r->stop;
  r->gen.n_stop = n_stop;
  r->gen.logprobs = r->logprobs;
  r->gen.top_logprobs = (uint32_t)r->top_logprobs;
  return 0;
}

#undef BAD

/* The body (n bytes) of a chat (chat = 1) or completions request into r. Returns 0, or -1 with
 * the reason in err. */
static int parse_body(oreq *r, const char *body, size_t n, int chat, char *err, size_t errlen) {
  r->chat = chat;
  json_error_t jerr;
  r->root = json_loadb(body, n, 0, &jerr);
  if (!r->root) {
    snprintf(err, errlen, "the body is not valid JSON (line %d, column %d): %s", jerr.line,
             jerr.column, jerr.text);
    return -1;
  }
  return parse_request(r, err, errlen);
}

static void choice_free(ochoice *ch) {
  json_decref(ch->lp_list);
  free(ch->text);
  pd_job_free(&ch->job);
}

/* The request and its choices. */
static void oreq_free(oreq *r) {
  for (int i = 0; i < r->n_choices; i++)
    if (r->choices[i]) choice_free(r->choices[i]);
  json_decref(r->root);
  for (size_t i = 0; i < r->n_owned; i++) free(r->owned[i]);
  free(r->owned);
  free(r->messages);
  free(r->message_ptrs);
  free(r->ids);
  free(r->bias);
  free(r->bias_ptrs);
  free(r->schema_text);
  pd_openai_tools_free(&r->tools);
  free(r);
}

/* ---- answering ------------------------------------------------------------------------------- */

/* When even the error object cannot be built. */
static const char oom_error[] = "{\"error\":{\"message\":\"out of memory\",\"type\":"
                                "\"server_error\",\"param\":null,\"code\":null}}";

/* A whole JSON answer (s, copied; NULL: out of memory, a 500). extra_headers as for
 * pd_http1_respond; a 405 gets its Allow line. */
static void respond_text(pd_http1_conn *c, int code, const char *s, const char *extra_headers) {
  if (!s) code = 500, s = oom_error, extra_headers = NULL;
  if (code == 405) extra_headers = "Allow: GET, POST\r\n";
  pd_http1_respond(c, code, "application/json", extra_headers, s, strlen(s));
}

/* obj (taken) as the answer, with extra_headers (whole lines, or NULL). */
static void respond_json(pd_http1_conn *c, int code, json_t *obj, const char *extra_headers) {
  char *s = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
  json_decref(obj);
  respond_text(c, code, s, extra_headers);
  free(s);
}

/* OpenAI's error object. */
static void respond_error(pd_http1_conn *c, int code, const char *message,
                          const char *extra_headers) {
  char *s = error_json(code, message);
  respond_text(c, code, s, extra_headers);
  free(s);
}

/* One server-sent event ("data: ...\n\n"). Returns 0, or -1 when the connection closed. */
static int send_event(pd_http1_conn *c, const char *data, int last) {
  size_t n = strlen(data);
  char *buf = malloc(n + 8);
  if (!buf) {
    pd_http1_abort(c);
    return -1;
  }
  memcpy(buf, "data: ", 6);
  memcpy(buf + 6, data, n);
  memcpy(buf + 6 + n, "\n\n", 2);
  int rc = pd_http1_stream_write(c, buf, n + 8, last);
  free(buf);
  return rc;
}

/* obj (taken) as an event; out of memory closes the connection (the stream cannot go on). */
static int send_event_json(pd_http1_conn *c, json_t *obj) {
  char *s = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
  json_decref(obj);
  if (!s) {
    pd_http1_abort(c);
    return -1;
  }
  int rc = send_event(c, s, 0);
  free(s);
  return rc;
}

/* ---- the engine's output -> OpenAI's answers -------------------------------------------------- */

static const char *finish_name(int reason) {
  return reason == PREFIXD__V1__FINISH_REASON__FINISH_REASON_LENGTH ? "length" : "stop";
}

/* The logprobs of n tokens in the request's format (chat: an array of entries; completions: the
 * legacy object of parallel arrays), for one event or to merge into a whole answer
 * (keep_logprobs). NULL when none were asked for or out of memory. */
static json_t *logprobs_json(ochoice *ch, const int32_t *ids, const pd_token_logprob *lps,
                             size_t n) {
  oreq *r = ch->r;
  if (!r->logprobs || (!lps && n)) return NULL;
  const pd_tokenizer *tok = r->o->engine->tok;
  if (r->chat) {
    json_t *content = json_array();
    for (size_t i = 0; content && i < n; i++) {
      json_t *e = token_entry(tok, ids[i], lps[i].logprob), *top = json_array();
      for (int k = 0; top && k < lps[i].n_top; k++)
        json_array_append_new(top, token_entry(tok, lps[i].top_ids[k], lps[i].top_logprobs[k]));
      if (!e || !top || json_object_set_new(e, "top_logprobs", top)) {
        json_decref(e);
        json_decref(content);
        return NULL;
      }
      json_array_append_new(content, e);
    }
    return content;
  }
  /* the legacy completions format: parallel arrays, and top alternatives as objects */
  json_t *o =
      json_pack("{s:[],s:[],s:[],s:[]}", "tokens", "token_logprobs", "top_logprobs", "text_offset");
  for (size_t i = 0; o && i < n; i++) {
    json_t *e = token_entry(tok, ids[i], lps[i].logprob), *top = json_object();
    for (int k = 0; e && top && k < lps[i].n_top; k++) {
      json_t *t = token_entry(tok, lps[i].top_ids[k], lps[i].top_logprobs[k]);
      if (t)
        json_object_set_new(top, json_string_value(json_object_get(t, "token")),
                            json_real(lps[i].top_logprobs[k]));
      json_decref(t);
    }
    if (!e || !top) {
      json_decref(e), json_decref(top), json_decref(o);
      return NULL;
    }
    json_array_append(json_object_get(o, "tokens"), json_object_get(e, "token"));
    json_array_append_new(json_object_get(o, "token_logprobs"), json_real(lps[i].logprob));
    json_array_append_new(json_object_get(o, "top_logprobs"), top);
    json_array_append_new(json_object_get(o, "text_offset"),
                          json_integer((json_int_t)ch->lp_offset));
    ch->lp_offset += json_array_size(json_object_get(e, "bytes"));
    json_decref(e);
  }
  return o;
}

/* The request's usage: the prompt once (every choice has the same), the completions of all
 * choices, and the cached tokens every choice had (the least). */
static json_t *usage_json(const oreq *r) {
  uint32_t p = 0, g = 0, cached = UINT32_MAX;
  for (int i = 0; i < r->n_choices; i++) {
    const Prefixd__V1__GenerateResponse *final =
        (const Prefixd__V1__GenerateResponse *)r->choices[i]->job.final;
    const Prefixd__V1__Usage *u = final ? final->usage : NULL;
    if (!u) continue;
    p = u->prompt_tokens;
    g += u->generated_tokens;
    if (u->cached_tokens < cached) cached = u->cached_tokens;
  }
  if (cached == UINT32_MAX) cached = 0;
  return json_pack("{s:i,s:i,s:i,s:{s:i}}", "prompt_tokens", (int)p, "completion_tokens", (int)g,
                   "total_tokens", (int)(p + g), "prompt_tokens_details", "cached_tokens",
                   (int)cached);
}

/* An answer (chunk 0) or one event of a streamed one (chunk 1): id, object, created, model, the
 * choices (an array, or none when NULL) and usage (left out when NULL); choices and usage are
 * stolen. NULL when out of memory. */
static json_t *answer_json(oreq *r, int chunk, json_t *choices, json_t *usage) {
  const char *object = !r->chat ? "text_completion"
                       : chunk  ? "chat.completion.chunk"
                                : "chat.completion";
  return json_pack("{s:s,s:s,s:I,s:s,s:o,s:o*}", "id", r->id, "object", object, "created",
                   (json_int_t)r->created, "model", r->o->model_id, "choices",
                   choices ? choices : json_array(), "usage", usage);
}

/* One streamed event of one choice: chat's delta or completions' text. */
static json_t *stream_chunk(ochoice *ch, json_t *delta_or_text, const char *finish,
                            json_t *logprobs) {
  oreq *r = ch->r;
  json_t *choice =
      r->chat ? json_pack("{s:i,s:o,s:o?,s:s?}", "index", ch->index, "delta", delta_or_text,
                          "logprobs", logprobs ? json_pack("{s:o}", "content", logprobs) : NULL,
                          "finish_reason", finish)
              : json_pack("{s:i,s:o,s:o?,s:s?}", "index", ch->index, "text", delta_or_text,
                          "logprobs", logprobs, "finish_reason", finish);
  return choice ? answer_json(r, 1, json_pack("[o]", choice), NULL) : NULL;
}

/* The request's "x-request-id" header line (OpenAI's SDKs keep it as _request_id) into buf;
 * returns its length. */
static int id_header(const oreq *r, char *buf, size_t cap) {
  return snprintf(buf, cap, "x-request-id: %s\r\n", r->id);
}

/* Streaming: the HTTP head once, and a choice's first event (chat: its role). */
static int stream_head(pd_http1_conn *c, ochoice *ch) {
  oreq *r = ch->r;
  char header[80];
  id_header(r, header, sizeof header);
  if (!r->head_sent && pd_http1_stream_begin(c, "text/event-stream", header)) return -1;
  r->head_sent = 1;
  ch->started = 1;
  if (!r->chat) return 0;
  return send_event_json(
      c, stream_chunk(ch, json_pack("{s:s,s:s}", "role", "assistant", "content", ""), NULL, NULL));
}

/* Streaming: the tokens and text of one engine output as an event. */
static int stream_tokens(pd_http1_conn *c, ochoice *ch, const int32_t *ids, uint32_t n_ids,
                         const char *text, const pd_token_logprob *lps) {
  if (!ch->started && stream_head(c, ch)) return -1;
  json_t *lp = logprobs_json(ch, ids, lps, n_ids);
  json_t *piece =
      ch->r->chat ? json_pack("{s:s}", "content", text ? text : "") : json_string(text ? text : "");
  return send_event_json(c, stream_chunk(ch, piece, NULL, lp));
}

/* 1 when a choice's answer may hold tool calls to read out of it. */
static int tools_active(const oreq *r) {
  return r->chat && r->tools.choice != PD_TOOL_CHOICE_NONE;
}

/* OpenAI's tool_calls array of calls (ids: the request's id, the choice and the call's index);
 * NULL when out of memory. With stream_form, each call carries its index (a delta's form). */
static json_t *tool_calls_json(const ochoice *ch, const pd_openai_call *calls, size_t n,
                               int stream_form) {
  json_t *list = json_array();
  for (size_t k = 0; list && k < n; k++) {
    char id[96];
    snprintf(id, sizeof id, "call_%s_%d_%zu", strchr(ch->r->id, '-') + 1, ch->index, k);
    json_t *call = json_pack("{s:s,s:s,s:{s:s,s:s}}", "id", id, "type", "function", "function",
                             "name", calls[k].name, "arguments", calls[k].arguments);
    if (call && stream_form) json_object_set_new(call, "index", json_integer((json_int_t)k));
    if (!call || json_array_append_new(list, call)) {
      json_decref(list);
      return NULL;
    }
  }
  return list;
}

/* Streaming with tools: the content that is certainly content by now (pd_openai_calls_content_safe)
 * goes out; what may be a call waits for the end. */
static int stream_content(pd_http1_conn *c, ochoice *ch) {
  size_t safe = pd_openai_calls_content_safe(&ch->r->tools, ch->text ? ch->text : "", ch->n_text);
  if (safe <= ch->sent) return 0;
  if (!ch->started && stream_head(c, ch)) return -1;
  json_t *piece = json_pack("{s:s%}", "content", ch->text + ch->sent, safe - ch->sent);
  ch->sent = safe;
  return send_event_json(c, stream_chunk(ch, piece, NULL, NULL));
}

/* Streaming with tools, at the end: the rest of the content, then the calls read out of the
 * answer as one delta (or, if it holds none, the rest of the text). Returns the finish reason
 * to send, or NULL on a failed send. */
static const char *stream_calls(pd_http1_conn *c, ochoice *ch, const char *finish) {
  pd_openai_call *calls;
  size_t n_calls, content_len;
  if (pd_openai_calls_read(&ch->r->tools, ch->text ? ch->text : "", ch->n_text, &calls, &n_calls,
                           &content_len))
    return NULL;
  size_t end = n_calls ? content_len : ch->n_text;
  int failed = 0;
  if (end > ch->sent) {
    json_t *piece = json_pack("{s:s%}", "content", ch->text + ch->sent, end - ch->sent);
    ch->sent = end;
    failed = send_event_json(c, stream_chunk(ch, piece, NULL, NULL)) != 0;
  }
  if (!failed && n_calls) {
    json_t *list = tool_calls_json(ch, calls, n_calls, 1);
    failed = !list || send_event_json(c, stream_chunk(ch, json_pack("{s:o}", "tool_calls", list),
                                                      NULL, NULL)) != 0;
    finish = "tool_calls";
  }
  pd_openai_calls_free(calls, n_calls);
  return failed ? NULL : finish;
}

/* Streaming: a choice that ended well, its last event (after its head if nothing came). */
static int stream_finish(pd_http1_conn *c, ochoice *ch) {
  if (!ch->started && stream_head(c, ch)) return -1;
  const Prefixd__V1__GenerateResponse *final = (const Prefixd__V1__GenerateResponse *)ch->job.final;
  const char *finish = finish_name(final->finish_reason);
  if (tools_active(ch->r) && !(finish = stream_calls(c, ch, finish))) return -1;
  return send_event_json(
      c, stream_chunk(ch, ch->r->chat ? json_object() : json_string(""), finish, NULL));
}

static int append_text(ochoice *ch, const char *text, size_t n) {
  if (ch->n_text + n + 1 > ch->cap_text) {
    size_t cap = ch->cap_text ? ch->cap_text : 256;
    while (cap < ch->n_text + n + 1) cap *= 2;
    char *t = realloc(ch->text, cap);
    if (!t) return -1;
    ch->text = t;
    ch->cap_text = cap;
  }
  memcpy(ch->text + ch->n_text, text, n);
  ch->n_text += n;
  ch->text[ch->n_text] = 0;
  return 0;
}

/* A whole choice of a non-streamed answer; NULL when out of memory. */
static json_t *choice_json(ochoice *ch) {
  oreq *r = ch->r;
  const Prefixd__V1__GenerateResponse *final = (const Prefixd__V1__GenerateResponse *)ch->job.final;
  if (r->logprobs && !ch->lp_list) /* no token came */
    ch->lp_list = r->chat ? json_array() : logprobs_json(ch, NULL, NULL, 0);
  if (r->chat && tools_active(r)) {
    pd_openai_call *calls;
    size_t n_calls, content_len;
    if (pd_openai_calls_read(&r->tools, ch->text ? ch->text : "", ch->n_text, &calls, &n_calls,
                             &content_len))
      return NULL;
    json_t *list = n_calls ? tool_calls_json(ch, calls, n_calls, 0) : NULL;
    pd_openai_calls_free(calls, n_calls);
    if (n_calls && !list) return NULL;
    json_t *message = json_pack("{s:s,s:s%}", "role", "assistant", "content",
                                ch->text ? ch->text : "", content_len);
    if (message && n_calls) {
      if (!content_len) json_object_set_new(message, "content", json_null());
      json_object_set_new(message, "tool_calls", list);
      list = NULL;
    }
    json_decref(list);
    return json_pack("{s:i,s:o,s:n,s:s}", "index", ch->index, "message", message, "logprobs",
                     "finish_reason", n_calls ? "tool_calls" : finish_name(final->finish_reason));
  }
  if (r->chat)
    return json_pack("{s:i,s:{s:s,s:s%},s:o?,s:s}", "index", ch->index, "message", "role",
                     "assistant", "content", ch->text ? ch->text : "", ch->n_text, "logprobs",
                     r->logprobs ? json_pack("{s:O}", "content", ch->lp_list) : NULL,
                     "finish_reason", finish_name(final->finish_reason));
  return json_pack("{s:i,s:s%,s:O?,s:s}", "index", ch->index, "text", ch->text ? ch->text : "",
                   ch->n_text, "logprobs", r->logprobs ? ch->lp_list : NULL, "finish_reason",
                   finish_name(final->finish_reason));
}

/* Every choice is done: the last events, or the whole answer. */
static void finish_request(pd_http1_conn *c, oreq *r) {
  /* the first failure speaks for the request; a choice with no final answer or a lost one is a
   * 500 */
  int code = 200;
  const char *message = NULL;
  int64_t retry_after_ms = 0;
  if (r->failed) {
    pd_job *job = &r->failed->job;
    code = http_status_of(job->status);
    message = job->message[0] ? job->message : pd_http1_reason(code);
    retry_after_ms = job->retry_after_ms;
  }
  for (int i = 0; i < r->n_choices && code == 200; i++)
    if (!r->choices[i]->job.final || r->choices[i]->lost) {
      code = 500;
      message = "out of memory for the answer";
    }
  if (r->stream && r->head_sent) { /* the head is out: an error travels as an event */
    if (code != 200) {
      char *e = error_json(code, message);
      if (!e) pd_http1_abort(c); /* out of memory: the stream cannot end properly */
      int failed = !e || send_event(c, e, 0);
      free(e);
      if (failed) return;
    } else if (r->include_usage) {
      json_t *usage = usage_json(r);
      if (send_event_json(c, usage ? answer_json(r, 1, NULL, usage) : NULL)) return;
    }
    send_event(c, "[DONE]", 1);
    return;
  }
  char headers[160];
  int n_headers = id_header(r, headers, sizeof headers);
  if (code != 200) {
    if (retry_after_ms > 0) /* a rate limit says when (OpenAI's SDKs wait that long, retry) */
      snprintf(headers + n_headers, sizeof headers - (size_t)n_headers,
               "Retry-After: %lld\r\nretry-after-ms: %lld\r\n",
               (long long)(retry_after_ms + 999) / 1000, (long long)retry_after_ms);
    respond_error(c, code, message, headers);
    return;
  }
  if (r->stream) { /* nothing was generated: the heads, the ends, [DONE] */
    for (int i = 0; i < r->n_choices; i++)
      if (stream_finish(c, r->choices[i])) return;
    finish_request(c, r);
    return;
  }
  json_t *choices = json_array(), *usage = usage_json(r);
  for (int i = 0; choices && i < r->n_choices; i++) {
    json_t *one = choice_json(r->choices[i]);
    if (!one || json_array_append_new(choices, one)) {
      json_decref(choices);
      choices = NULL;
    }
  }
  if (!choices || !usage) { /* out of memory: respond_json answers a 500 */
    json_decref(choices);
    json_decref(usage);
    respond_json(c, 200, NULL, NULL);
    return;
  }
  respond_json(c, 200, answer_json(r, 0, choices, usage), headers);
}

/* Merges one output's logprobs into the whole answer's. */
static int keep_logprobs(ochoice *ch, const int32_t *ids, const pd_token_logprob *lps, uint32_t n) {
  json_t *add = logprobs_json(ch, ids, lps, n);
  if (!add) return ch->r->logprobs && lps ? -1 : 0;
  if (!ch->lp_list) {
    ch->lp_list = add;
    return 0;
  }
  if (ch->r->chat) {
    json_array_extend(ch->lp_list, add);
  } else {
    const char *keys[] = {"tokens", "token_logprobs", "top_logprobs", "text_offset"};
    for (int k = 0; k < 4; k++)
      json_array_extend(json_object_get(ch->lp_list, keys[k]), json_object_get(add, keys[k]));
  }
  json_decref(add);
  return 0;
}

/* Cancels every choice of r still in the engine (value: PD_JOB_CANCELLED_*, or 1). */
static void cancel_choices(oreq *r, int value) {
  for (int i = 0; i < r->n_choices; i++)
    if (r->choices[i] && !r->choices[i]->done) atomic_store(&r->choices[i]->job.cancelled, value);
}

/* The service's on_output: new tokens of a choice, or its end. */
static void on_job_output(pd_job *job, void *user) {
  pd_openai *o = user;
  ochoice *ch = (ochoice *)job;
  oreq *r = ch->r;
  int32_t *ids;
  uint32_t n_ids;
  char *text;
  size_t n_text;
  pd_token_logprob *lps;
  int done;
  pd_engine_take_stream(o->engine, job, &ids, &n_ids, &text, &n_text, &lps, &done);
  pd_http1_conn *c = r->c;
  if (c && !r->failed && (n_ids || n_text)) {
    int failed;
    if (r->stream && tools_active(r)) { /* what may be a call is held back */
      failed = ch->lost = append_text(ch, text ? text : "", n_text);
      failed = failed || stream_content(c, ch) != 0;
    } else if (r->stream) {
      failed = stream_tokens(c, ch, ids, n_ids, text, lps) != 0;
    } else {
      /* job->status is the engine's to write: the loss is kept here */
      failed = ch->lost =
          append_text(ch, text ? text : "", n_text) || keep_logprobs(ch, ids, lps, n_ids);
    }
    if (failed) cancel_choices(r, 1);
    c = r->c; /* a failed send closed the connection */
  }
  free(ids);
  free(text);
  free(lps);
  if (!done) return;
  o->in_flight--;
  ch->done = 1;
  pd_service_log_request(o->engine, "openai", r->chat ? "chat.completions" : "completions", job,
                         job->status, job->message);
  r->pending--;
  if (job->status != PD_GRPC_OK && !r->failed) { /* the request fails: its other choices stop */
    r->failed = ch;
    cancel_choices(r, 1);
  } else if (c && r->stream && !r->failed && job->final && stream_finish(c, ch)) {
    cancel_choices(r, 1);
  }
  c = r->c;
  if (r->pending) return;
  if (c) {
    pd_http1_end_work(c); /* r is freed below */
    r->c = NULL;
    finish_request(c, r);
  }
  oreq_free(r);
  maybe_free(o);
}

/* ---- requests -------------------------------------------------------------------------------- */

/* Choice i's job: the request's GenerateRequest with its own sampling (seed + i, so that the
 * choices differ and a seed still reproduces them all). PD_ENOMEM, or PD_EINVAL for an
 * Authorization header that is not a bearer key. */
static int choice_new(oreq *r, int i, const pd_http1_request *req, ochoice **out) {
  ochoice *ch = *out = calloc(1, sizeof *ch);
  if (!ch) return PD_ENOMEM;
  ch->r = r;
  snprintf(ch->job.request_id, sizeof ch->job.request_id, "%s", r->id);
  ch->index = i;
  ch->gen = r->gen;
  ch->sampling = r->sampling;
  ch->sampling.seed += (uint64_t)i;
  ch->gen.sampling = &ch->sampling;
  pd_job *job = &ch->job;
  job->kind = PD_JOB_GENERATE;
  job->req = &ch->gen.base;
  job->arrival_ms = pd_grpc_now_ms();
  atomic_init(&job->cancelled, 0);
  job->on_output = on_job_output;
  job->output_user = r->o;
  /* OpenAI's clients always send a key; a daemon without keys (single tenant, loopback only)
   * takes whatever they send */
  if (req->authorization && !r->o->engine->single_tenant &&
      pd_job_take_bearer(job, req->authorization, req->n_authorization)) {
    pd_job_free(job);
    *out = NULL;
    return PD_EINVAL;
  }
  return PD_OK;
}

static void start_generation(pd_openai *o, pd_http1_conn *c, const pd_http1_request *req,
                             int chat) {
  oreq *r = calloc(1, sizeof *r);
  if (!r) {
    respond_error(c, 503, "out of memory", NULL);
    return;
  }
  r->o = o;
  char err[300];
  if (parse_body(r, req->body ? req->body : "", req->n_body, chat, err, sizeof err)) {
    oreq_free(r);
    respond_error(c, 400, err, NULL);
    return;
  }
  snprintf(r->id, sizeof r->id, "%s-%llx%08llx", chat ? "chatcmpl" : "cmpl",
           (unsigned long long)o->started, (unsigned long long)++o->next_id);
  r->created = (int64_t)time(NULL);
  for (int i = 0; i < r->n_choices; i++) {
    int rc = choice_new(r, i, req, &r->choices[i]);
    if (rc) {
      oreq_free(r);
      if (rc == PD_EINVAL)
        respond_error(c, 401, "the Authorization header must be 'Bearer <api key>'", NULL);
      else
        respond_error(c, 503, "out of memory", NULL);
      return;
    }
  }
  r->c = c;
  pd_http1_begin_work(c, r);
  r->pending = r->n_choices;
  o->in_flight += (size_t)r->n_choices;
  for (int i = 0; i < r->n_choices; i++) pd_engine_submit(o->engine, &r->choices[i]->job);
}

static int path_is(const pd_http1_request *req, const char *want) {
  return req->n_path == strlen(want) && !memcmp(req->path, want, req->n_path);
}

static void on_request(pd_http1_conn *c, const pd_http1_request *req, void *user) {
  pd_openai *o = user;
  int chat = path_is(req, "/v1/chat/completions"), completions = path_is(req, "/v1/completions");
  if (chat || completions) {
    if (req->method != HTTP_POST)
      respond_error(c, 405, "use POST", NULL);
    else if (o->draining || o->closing)
      respond_error(c, 503, "the server is shutting down", NULL);
    else
      start_generation(o, c, req, chat);
    return;
  }
  if (path_is(req, "/v1/models")) {
    if (req->method != HTTP_GET) {
      respond_error(c, 405, "use GET", NULL);
      return;
    }
    respond_json(c, 200,
                 json_pack("{s:s,s:[{s:s,s:s,s:I,s:s}]}", "object", "list", "data", "id",
                           o->model_id, "object", "model", "created", (json_int_t)o->started,
                           "owned_by", "prefixd"),
                 NULL);
    return;
  }
  char msg[160];
  snprintf(msg, sizeof msg,
           "no such endpoint: %.*s (POST /v1/chat/completions, POST /v1/completions, "
           "GET /v1/models)",
           (int)(req->n_path < 64 ? req->n_path : 64), req->path);
  respond_error(c, 404, msg, NULL);
}

/* A malformed, oversized or too slow request: OpenAI's error object (the connection closes). */
static void on_error(pd_http1_conn *c, int code, const char *message, void *user) {
  (void)user;
  respond_error(c, code, message, NULL);
}

/* The connection went away while the request ran: its job is cancelled, and frees itself when
 * the engine gives it back. */
static void on_gone(void *work, void *user) {
  (void)user;
  oreq *r = work;
  r->c = NULL;
  cancel_choices(r, 1);
}

/* ---- the server ------------------------------------------------------------------------------ */

static void maybe_free(pd_openai *o) {
  if (o->closing && !o->http && !o->in_flight) free(o);
}

static void on_http_closed(void *user) {
  pd_openai *o = user;
  o->http = NULL;
  maybe_free(o);
}

int pd_openai_create(uv_loop_t *loop, pd_engine *engine, const char *model_id, pd_openai **out) {
  pd_openai *o = calloc(1, sizeof *o);
  if (!o) return PD_ENOMEM;
  o->engine = engine;
  o->started = (int64_t)time(NULL);
  snprintf(o->model_id, sizeof o->model_id, "%s", model_id);
  pd_http1_config cfg = {.name = "openai",
                         .max_conns = MAX_CONNS,
                         .max_body = MAX_BODY,
                         .max_requests = 0,
                         .request_ms = REQUEST_MS,
                         .send_ms = SEND_MS,
                         .on_request = on_request,
                         .on_error = on_error,
                         .on_gone = on_gone,
                         .on_closed = on_http_closed,
                         .user = o};
  int rc = pd_http1_create(loop, &cfg, &o->http);
  if (rc) {
    free(o);
    return rc;
  }
  *out = o;
  return PD_OK;
}

int pd_openai_listen(pd_openai *o, const char *host, int port, struct pd_tls_server *tls,
                     int *bound_port) {
  return pd_http1_listen(o->http, host, port, tls, bound_port);
}

void pd_openai_set_tls(pd_openai *o, struct pd_tls_server *tls) {
  if (o) pd_http1_set_tls(o->http, tls);
}

void pd_openai_drain(pd_openai *o) {
  if (!o) return;
  o->draining = 1;
  pd_http1_drain(o->http);
}

size_t pd_openai_in_flight(const pd_openai *o) {
  return o ? o->in_flight : 0;
}

static void cancel_by_server(void *work, void *arg) {
  (void)arg;
  cancel_choices(work, PD_JOB_CANCELLED_BY_SERVER);
}

void pd_openai_cancel_all(pd_openai *o) {
  if (o) pd_http1_each_work(o->http, cancel_by_server, NULL);
}

void pd_openai_close(pd_openai *o) {
  if (!o || o->closing) return;
  o->closing = 1;
  pd_http1_close(o->http); /* on_http_closed frees o, now or later, once no job is out */
}

int pd_openai_parse(const char *body, size_t n, int chat, char *err, size_t errlen,
                    uint8_t **packed, size_t *n_packed) {
  oreq *r = calloc(1, sizeof *r);
  if (!r) return PD_ENOMEM;
  int rc = parse_body(r, body, n, chat, err, errlen) ? PD_EINVAL : PD_OK;
  *packed = NULL;
  *n_packed = 0;
  if (rc == PD_OK) {
    *n_packed = protobuf_c_message_get_packed_size(&r->gen.base);
    *packed = malloc(*n_packed ? *n_packed : 1);
    if (!*packed)
      rc = PD_ENOMEM;
    else
      protobuf_c_message_pack(&r->gen.base, *packed);
  }
  oreq_free(r);
  return rc;
}
