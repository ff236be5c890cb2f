/*
 * kvctl_prompts.c -- the commands that send a prompt: `warm`, `lookup` and `gen`, and where
 * their prompts come from (--text, --file, --chat, or a positional TEXT).
 *
 * Design notes.
 * - --chat F reads a JSON file of messages, [{"role": "system", "content": "..."}, ...] (or an
 *   object with such a "messages" array, as OpenAI-style request bodies have). Debian has JSON
 *   libraries (cJSON, json-c, jansson), but for one fixed shape a reader of 200 lines is less
 *   than a new dependency of the build and of every package of prefixd: it is a strict
 *   recursive-descent parser (RFC 8259: escapes, \u surrogate pairs, no control characters in
 *   strings, nothing after the value), skips members other than role and content whatever
 *   their type, and reports errors as LINE:COL.
 * - Files are read whole, up to 4 MiB (the daemon's message limit) and taken as they are: a
 *   trailing newline is part of the prompt, as it would be for any client.
 * - gen streams the text as it arrives. On a terminal, control characters in the model's
 *   output are shown escaped (the output is not trusted to drive the terminal); into a pipe
 *   the bytes go through unchanged. Usage and timings go to stderr, so stdout holds only the
 *   text. Ctrl-C cancels the stream (the daemon stops generating); a second one kills kvctl.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "kvctl.h"

#define MAX_PROMPT_BYTES (4u << 20)

/* ---- the chat JSON reader -------------------------------------------------------------------- */

typedef struct json_reader {
  const char *s;
  size_t n, i;
  char *err;
  size_t errlen;
} json_reader;

static int jr_fail(json_reader *r, const char *what) {
  size_t line = 1, col = 1;
  for (size_t k = 0; k < r->i && k < r->n; k++) {
    if (r->s[k] == '\n')
      line++, col = 1;
    else
      col++;
  }
  snprintf(r->err, r->errlen, "%zu:%zu: %s", line, col, what);
  return -1;
}

static void jr_space(json_reader *r) {
  while (r->i < r->n &&
         (r->s[r->i] == ' ' || r->s[r->i] == '\t' || r->s[r->i] == '\n' || r->s[r->i] == '\r'))
    r->i++;
}

static int jr_peek(json_reader *r) {
  jr_space(r);
  return r->i < r->n ? (unsigned char)r->s[r->i] : -1;
}

static int jr_expect(json_reader *r, char c, const char *what) {
  if (jr_peek(r) != (unsigned char)c) return jr_fail(r, what);
  r->i++;
  return 0;
}

static int hex4(const char *s, uint32_t *v) {
  *v = 0;
  for (int k = 0; k < 4; k++) {
    char c = s[k];
    int d = c >= '0' && c <= '9'   ? c - '0'
            : c >= 'a' && c <= 'f' ? c - 'a' + 10
            : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                   : -1;
    if (d < 0) return -1;
    *v = *v << 4 | (uint32_t)d;
  }
  return 0;
}

static size_t utf8_encode(uint32_t cp, char *out) {
  if (cp < 0x80) {
    out[0] = (char)cp;
    return 1;
  }
  if (cp < 0x800) {
    out[0] = (char)(0xC0 | cp >> 6), out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = (char)(0xE0 | cp >> 12), out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  out[0] = (char)(0xF0 | cp >> 18), out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
  out[2] = (char)(0x80 | (cp >> 6 & 0x3F)), out[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

/* Reads a string at the cursor. *out (if out is not NULL) gets it decoded and malloc'd. */
static int jr_string(json_reader *r, char **out) {
  if (jr_peek(r) != '"') return jr_fail(r, "expected a string");
  r->i++;
  /* decoded text is never longer than its JSON form */
  size_t start = r->i, o = 0;
  char *buf = out ? malloc(r->n - start + 1) : NULL;
  if (out && !buf) return jr_fail(r, "out of memory");
  for (;;) {
    if (r->i >= r->n) {
      free(buf);
      r->i = start - 1;
      return jr_fail(r, "unterminated string");
    }
    unsigned char c = (unsigned char)r->s[r->i];
    if (c == '"') {
      r->i++;
      break;
    }
    if (c < 0x20) {
      free(buf);
      return jr_fail(r, "control character in a string (write it as \\n, \\t or \\u00XX)");
    }
    if (c != '\\') {
      if (buf) buf[o++] = (char)c;
      r->i++;
      continue;
    }
    if (r->i + 1 >= r->n) {
      free(buf);
      r->i = start - 1;
      return jr_fail(r, "unterminated string");
    }
    char e = r->s[r->i + 1];
    char piece[4];
    size_t piece_len = 1;
    switch (e) {
    case '"': piece[0] = '"'; break;
    case '\\': piece[0] = '\\'; break;
    case '/': piece[0] = '/'; break;
    case 'b': piece[0] = '\b'; break;
    case 'f': piece[0] = '\f'; break;
    case 'n': piece[0] = '\n'; break;
    case 'r': piece[0] = '\r'; break;
    case 't': piece[0] = '\t'; break;
    case 'u': {
      uint32_t cp, low;
      if (r->i + 6 > r->n || hex4(r->s + r->i + 2, &cp)) {
        free(buf);
        return jr_fail(r, "\\u needs 4 hex digits");
      }
      size_t used = 6;
      if (cp >= 0xD800 && cp <= 0xDBFF) { /* a surrogate pair */
        if (r->i + 12 > r->n || r->s[r->i + 6] != '\\' || r->s[r->i + 7] != 'u' ||
            hex4(r->s + r->i + 8, &low) || low < 0xDC00 || low > 0xDFFF) {
          free(buf);
          return jr_fail(r, "a high surrogate \\u escape without its low half");
        }
        cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
        used = 12;
      } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
        free(buf);
        return jr_fail(r, "a low surrogate \\u escape on its own");
      } else if (cp == 0) {
        free(buf);
        return jr_fail(r, "\\u0000 is not allowed in a prompt");
      }
      piece_len = utf8_encode(cp, piece);
      r->i += used - 2; /* the common step below adds 2 */
      break;
    }
    default: free(buf); return jr_fail(r, "unknown escape in a string");
    }
    if (buf) memcpy(buf + o, piece, piece_len), o += piece_len;
    r->i += 2;
  }
  if (buf) {
    buf[o] = 0;
    *out = buf;
  }
  return 0;
}

static int jr_skip_value(json_reader *r, int depth);

static int jr_skip_container(json_reader *r, int depth, char close) {
  r->i++;
  if (jr_peek(r) == (unsigned char)close) {
    r->i++;
    return 0;
  }
  for (;;) {
    if (close == '}') {
      if (jr_string(r, NULL) || jr_expect(r, ':', "expected ':' after a member name")) return -1;
    }
    if (jr_skip_value(r, depth + 1)) return -1;
    int c = jr_peek(r);
    r->i++;
    if (c == (unsigned char)close) return 0;
    if (c != ',') {
      r->i--;
      return jr_fail(r, close == '}' ? "expected ',' or '}'" : "expected ',' or ']'");
    }
  }
}

static int jr_skip_value(json_reader *r, int depth) {
  if (depth > 64) return jr_fail(r, "nested too deeply");
  int c = jr_peek(r);
  if (c == '"') return jr_string(r, NULL);
  if (c == '{') return jr_skip_container(r, depth, '}');
  if (c == '[') return jr_skip_container(r, depth, ']');
  static const char *const literals[] = {"true", "false", "null"};
  for (int k = 0; k < 3; k++) {
    size_t len = strlen(literals[k]);
    if (r->n - r->i >= len && !memcmp(r->s + r->i, literals[k], len)) {
      r->i += len;
      return 0;
    }
  }
  /* a number: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
  size_t k = r->i;
  if (k < r->n && r->s[k] == '-') k++;
  size_t digits = k;
  while (k < r->n && r->s[k] >= '0' && r->s[k] <= '9') k++;
  if (k == digits || (r->s[digits] == '0' && k - digits > 1)) return jr_fail(r, "expected a value");
  if (k < r->n && r->s[k] == '.') {
    size_t f = ++k;
    while (k < r->n && r->s[k] >= '0' && r->s[k] <= '9') k++;
    if (k == f) return jr_fail(r, "expected digits after '.'");
  }
  if (k < r->n && (r->s[k] == 'e' || r->s[k] == 'E')) {
    k++;
    if (k < r->n && (r->s[k] == '+' || r->s[k] == '-')) k++;
    size_t e = k;
    while (k < r->n && r->s[k] >= '0' && r->s[k] <= '9') k++;
    if (k == e) return jr_fail(r, "expected digits in the exponent");
  }
  r->i = k;
  return 0;
}

static int add_message(kv_prompt *p, size_t *cap, char *role, char *content) {
  if (p->n_messages == *cap) {
    size_t grown_cap = *cap ? 2 * *cap : 8;
    Prefixd__V1__ChatMessage *grown = realloc(p->messages, grown_cap * sizeof *grown);
    if (!grown) return -1;
    p->messages = grown;
    *cap = grown_cap;
  }
  Prefixd__V1__ChatMessage *m = &p->messages[p->n_messages++];
  prefixd__v1__chat_message__init(m);
  m->role = role;
  m->content = content;
  return 0;
}

/* One {"role": .., "content": ..} object at the cursor. */
static int jr_message(json_reader *r, kv_prompt *p, size_t *cap) {
  size_t at = r->i;
  if (jr_expect(r, '{', "expected a message object {\"role\": ..., \"content\": ...}")) return -1;
  char *role = NULL, *content = NULL;
  if (jr_peek(r) != '}') {
    for (;;) {
      char *name;
      if (jr_string(r, &name)) goto fail;
      if (jr_expect(r, ':', "expected ':' after a member name")) {
        free(name);
        goto fail;
      }
      int is_role = !strcmp(name, "role"), is_content = !strcmp(name, "content");
      free(name);
      if (is_role || is_content) {
        char **slot = is_role ? &role : &content;
        jr_space(r); /* errors point at the value */
        if (*slot) {
          jr_fail(r, is_role ? "\"role\" given twice" : "\"content\" given twice");
          goto fail;
        }
        if (jr_peek(r) != '"') {
          jr_fail(r, is_role ? "\"role\" must be a string" : "\"content\" must be a string");
          goto fail;
        }
        if (jr_string(r, slot)) goto fail;
      } else if (jr_skip_value(r, 1)) {
        goto fail;
      }
      int c = jr_peek(r);
      if (c == '}') break;
      if (c != ',') {
        jr_fail(r, "expected ',' or '}'");
        goto fail;
      }
      r->i++;
    }
  }
  r->i++; /* '}' */
  if (!role || !content) {
    size_t end = r->i;
    r->i = at;
    jr_fail(r, !role ? "a message without \"role\"" : "a message without \"content\"");
    r->i = end;
    goto fail;
  }
  if (!role[0]) {
    r->i = at;
    jr_fail(r, "a message with an empty \"role\"");
    goto fail;
  }
  if (add_message(p, cap, role, content)) {
    jr_fail(r, "out of memory");
    goto fail;
  }
  return 0;
fail:
  free(role);
  free(content);
  return -1;
}

static int jr_messages(json_reader *r, kv_prompt *p, size_t *cap) {
  if (jr_expect(r, '[', "expected an array of messages")) return -1;
  if (jr_peek(r) == ']') {
    r->i++;
    return 0;
  }
  for (;;) {
    if (jr_message(r, p, cap)) return -1;
    int c = jr_peek(r);
    r->i++;
    if (c == ']') return 0;
    if (c != ',') {
      r->i--;
      return jr_fail(r, "expected ',' or ']'");
    }
  }
}

static void free_messages(kv_prompt *p) {
  for (size_t k = 0; k < p->n_messages; k++) {
    free(p->messages[k].role);
    free(p->messages[k].content);
  }
  free(p->messages);
  free(p->message_ptrs);
  p->messages = NULL;
  p->message_ptrs = NULL;
  p->n_messages = 0;
}

int kv_chat_parse(const char *buf, size_t len, kv_prompt *p, char *err, size_t errlen) {
  json_reader r = {buf, len, 0, err, errlen};
  size_t cap = 0;
  int c = jr_peek(&r), rc;
  if (c == '[') {
    rc = jr_messages(&r, p, &cap);
  } else if (c == '{') {
    /* {"messages": [...], anything else} */
    r.i++;
    int seen = 0;
    rc = 0;
    if (jr_peek(&r) != '}') {
      for (;;) {
        char *name;
        if ((rc = jr_string(&r, &name))) break;
        if ((rc = jr_expect(&r, ':', "expected ':' after a member name"))) {
          free(name);
          break;
        }
        int is_messages = !strcmp(name, "messages");
        free(name);
        if (is_messages && seen) {
          rc = jr_fail(&r, "\"messages\" given twice");
          break;
        }
        rc = is_messages ? jr_messages(&r, p, &cap) : jr_skip_value(&r, 1);
        seen |= is_messages;
        if (rc) break;
        int d = jr_peek(&r);
        if (d == '}') break;
        if (d != ',') {
          rc = jr_fail(&r, "expected ',' or '}'");
          break;
        }
        r.i++;
      }
    }
    if (!rc) {
      r.i++;
      if (!seen) rc = jr_fail(&r, "no \"messages\" array in the object");
    }
  } else {
    rc = jr_fail(&r, "expected an array of messages [{\"role\": ..., \"content\": ...}]");
  }
  if (!rc && jr_peek(&r) != -1) rc = jr_fail(&r, "unexpected text after the messages");
  if (!rc && p->n_messages == 0) {
    r.i = 0;
    rc = jr_fail(&r, "no messages");
  }
  if (!rc && !(p->message_ptrs = malloc(p->n_messages * sizeof *p->message_ptrs))) {
    snprintf(err, errlen, "out of memory");
    rc = -1;
  }
  if (rc) {
    free_messages(p);
    return -1;
  }
  for (size_t k = 0; k < p->n_messages; k++) p->message_ptrs[k] = &p->messages[k];
  return 0;
}

/* ---- prompt sources -------------------------------------------------------------------------- */

/* Reads a whole file ("-": stdin) into *out (malloc'd, NUL-terminated), at most 4 MiB. */
static int read_file(const kv_ctx *ctx, const char *path, char **out, size_t *len) {
  FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
  if (!f) {
    kv_error("%s: cannot read %s: %s", ctx->command, path, strerror(errno));
    return KV_EXIT_ERROR;
  }
  size_t n = 0, cap = 4096;
  char *buf = malloc(cap);
  int rc = 0;
  while (buf) {
    if (n + 1 >= cap) {
      if (cap > MAX_PROMPT_BYTES) {
        kv_error("%s: %s is larger than %u MiB, the daemon's limit", ctx->command, path,
                 MAX_PROMPT_BYTES >> 20);
        rc = KV_EXIT_ERROR;
        break;
      }
      char *grown = realloc(buf, cap * 2);
      if (!grown) {
        free(buf);
        buf = NULL;
        break;
      }
      buf = grown, cap *= 2;
    }
    size_t got = fread(buf + n, 1, cap - n - 1, f);
    n += got;
    if (got == 0) {
      if (ferror(f)) {
        kv_error("%s: cannot read %s: %s", ctx->command, path, strerror(errno));
        rc = KV_EXIT_ERROR;
      }
      break;
    }
  }
  if (f != stdin) fclose(f);
  if (!buf) {
    kv_error("out of memory");
    return KV_EXIT_ERROR;
  }
  if (!rc && memchr(buf, 0, n)) {
    kv_error("%s: %s holds a NUL byte: not a text prompt", ctx->command, path);
    rc = KV_EXIT_ERROR;
  }
  if (rc) {
    free(buf);
    return rc;
  }
  buf[n] = 0;
  *out = buf;
  *len = n;
  return 0;
}

int kv_prompt_read(const kv_ctx *ctx, const char *text, const char *file_path,
                   const char *chat_path, int add_generation_prompt, kv_prompt *p) {
  memset(p, 0, sizeof *p);
  prefixd__v1__prompt__init(&p->prompt);
  int sources = !!text + !!file_path + !!chat_path;
  if (sources != 1)
    return kv_usage(ctx, sources ? "give only one of TEXT, --text, --file, --chat"
                                 : "what prompt? give TEXT, --text T, --file F or --chat F");
  if (text) {
    p->prompt.kind_case = PREFIXD__V1__PROMPT__KIND_TEXT;
    p->prompt.text = (char *)text;
    return 0;
  }
  size_t len;
  int rc;
  if (file_path) {
    if ((rc = read_file(ctx, file_path, &p->file_text, &len))) return rc;
    p->prompt.kind_case = PREFIXD__V1__PROMPT__KIND_TEXT;
    p->prompt.text = p->file_text;
    return 0;
  }
  char *json;
  if ((rc = read_file(ctx, chat_path, &json, &len))) return rc;
  char err[256];
  rc = kv_chat_parse(json, len, p, err, sizeof err);
  free(json);
  if (rc) {
    kv_error("%s: %s:%s", ctx->command, chat_path, err);
    return KV_EXIT_ERROR;
  }
  prefixd__v1__chat_messages__init(&p->chat);
  p->chat.messages = p->message_ptrs;
  p->chat.n_messages = p->n_messages;
  p->chat.add_generation_prompt = add_generation_prompt;
  p->prompt.kind_case = PREFIXD__V1__PROMPT__KIND_CHAT;
  p->prompt.chat = &p->chat;
  return 0;
}

void kv_prompt_free(kv_prompt *p) {
  free_messages(p);
  free(p->file_text);
  p->file_text = NULL;
}

static void json_tier_counts(kv_json *j, const char *key, const Prefixd__V1__TierCounts *tc) {
  kv_json_object(j, key);
  kv_json_uint(j, "device", tc ? tc->device : 0);
  kv_json_uint(j, "host", tc ? tc->host : 0);
  kv_json_uint(j, "disk", tc ? tc->disk : 0);
  kv_json_end(j);
}

/* ---- warm ------------------------------------------------------------------------------------ */

/* A prompt command's prompt, read, and its connection: the positional TEXT (pos, n_pos) or
 * --text, --file or --chat. 0 with *prompt (release with kv_prompt_free) and *c, or an exit
 * code after reporting. */
static int prompt_and_connect(kv_ctx *ctx, int n_pos, const char *const *pos, const char *text,
                              const char *file, const char *chat, int add_generation_prompt,
                              kv_prompt *prompt, pd_client **c) {
  if (n_pos == 1 && text) return kv_usage(ctx, "give only one of TEXT, --text, --file, --chat");
  int rc = kv_prompt_read(ctx, n_pos ? pos[0] : text, file, chat, add_generation_prompt, prompt);
  if (rc) return rc;
  if ((rc = kv_connect(ctx, c))) kv_prompt_free(prompt);
  return rc;
}

const char kv_help_warm[] =
    "usage: kvctl warm (TEXT | --text T | --file F | --chat F) [--pin-ttl D] [--namespace NS]\n"
    "                  [--json]\n"
    "\n"
    "Prefills a prompt and caches its KV without generating, so the next request that starts\n"
    "with it skips that work. Prints the prefix id, the prompt's tokens, how many were cached\n"
    "already and how many this call computed.\n"
    "\n"
    "  --text T        the prompt text (special tokens like <|im_start|> are recognised)\n"
    "  --file F        the prompt is the content of F, as it is (- reads stdin)\n"
    "  --chat F        F holds JSON messages: [{\"role\": \"system\", \"content\": \"...\"}, ...]\n"
    "                  rendered with the model's chat template (no generation prompt)\n"
    "  --pin-ttl D     also pin it for D (30s, 10m, 1h, 2d; see kvctl pin)\n"
    "  --namespace NS  a shared namespace the admin granted you, instead of your own\n"
    "  --json          {\"prefix_id\", \"prompt_tokens\", \"cached_tokens\", "
    "\"computed_tokens\"}\n";

int kv_cmd_warm(kv_ctx *ctx, int argc, char **argv) {
  const char *text = NULL, *file = NULL, *chat = NULL, *ns = NULL;
  uint32_t pin_ttl = 0;
  const kv_opt opts[] = {
      {"text", 0, KV_OPT_STRING, &text, NULL},    {"file", 'f', KV_OPT_STRING, &file, NULL},
      {"chat", 0, KV_OPT_STRING, &chat, NULL},    {"pin-ttl", 0, KV_OPT_DURATION, &pin_ttl, NULL},
      {"namespace", 0, KV_OPT_STRING, &ns, NULL}, {0}};
  const char *pos[1];
  int n_pos, rc = kv_parse(ctx, kv_help_warm, argc, argv, opts, pos, 1, &n_pos);
  if (rc) return rc == KV_PARSE_HELP ? KV_EXIT_OK : rc;
  kv_prompt prompt;
  pd_client *c;
  if ((rc = prompt_and_connect(ctx, n_pos, pos, text, file, chat, 0, &prompt, &c))) return rc;
  Prefixd__V1__CacheOptions cache = PREFIXD__V1__CACHE_OPTIONS__INIT;
  cache.namespace_ = (char *)(ns ? ns : "");
  cache.pin_ttl_seconds = pin_ttl;
  Prefixd__V1__WarmRequest req = PREFIXD__V1__WARM_REQUEST__INIT;
  req.prompt = &prompt.prompt;
  req.cache = &cache;
  Prefixd__V1__WarmResponse *r;
  rc = pd_client_warm(c, &req, &r);
  kv_prompt_free(&prompt);
  if (rc) return kv_call_failed(ctx, rc);
  if (ctx->json) {
    kv_json j;
    kv_json_init(&j, stdout, 1);
    kv_json_object(&j, NULL);
    kv_json_string(&j, "prefix_id", r->prefix_id);
    kv_json_uint(&j, "prompt_tokens", r->prompt_tokens);
    kv_json_uint(&j, "cached_tokens", r->cached_tokens);
    kv_json_uint(&j, "computed_tokens", r->computed_tokens);
    kv_json_end(&j);
  } else {
    char d[32];
    printf("%s%s%s  %u tokens: %u were cached, %u computed", kv_style_on(KV_CYAN), r->prefix_id,
           kv_style_off(KV_CYAN), r->prompt_tokens, r->cached_tokens, r->computed_tokens);
    if (pin_ttl) printf("; pinned for %s", kv_fmt_duration(d, sizeof d, pin_ttl));
    printf("\n");
  }
  protobuf_c_message_free_unpacked(&r->base, NULL);
  return KV_EXIT_OK;
}

/* ---- lookup ---------------------------------------------------------------------------------- */

const char kv_help_lookup[] =
    "usage: kvctl lookup (TEXT | --text T | --file F | --chat F) [--namespace NS] [--json]\n"
    "\n"
    "How much of a prompt is cached, and in which tiers, without computing anything.\n"
    "\n"
    "  --text T, --file F, --chat F, --namespace NS   as for kvctl warm\n"
    "  --json   {\"prompt_tokens\", \"cached_tokens\", \"cached_tokens_by_tier\": {\"device\",\n"
    "            \"host\", \"disk\"}}\n";

int kv_cmd_lookup(kv_ctx *ctx, int argc, char **argv) {
  const char *text = NULL, *file = NULL, *chat = NULL, *ns = NULL;
  const kv_opt opts[] = {{"text", 0, KV_OPT_STRING, &text, NULL},
                         {"file", 'f', KV_OPT_STRING, &file, NULL},
                         {"chat", 0, KV_OPT_STRING, &chat, NULL},
                         {"namespace", 0, KV_OPT_STRING, &ns, NULL},
                         {0}};
  const char *pos[1];
  int n_pos, rc = kv_parse(ctx, kv_help_lookup, argc, argv, opts, pos, 1, &n_pos);
  if (rc) return rc == KV_PARSE_HELP ? KV_EXIT_OK : rc;
  kv_prompt prompt;
  pd_client *c;
  if ((rc = prompt_and_connect(ctx, n_pos, pos, text, file, chat, 0, &prompt, &c))) return rc;
  Prefixd__V1__LookupRequest req = PREFIXD__V1__LOOKUP_REQUEST__INIT;
  req.prompt = &prompt.prompt;
  req.namespace_ = (char *)(ns ? ns : "");
  Prefixd__V1__LookupResponse *r;
  rc = pd_client_lookup(c, &req, &r);
  kv_prompt_free(&prompt);
  if (rc) return kv_call_failed(ctx, rc);
  const Prefixd__V1__TierCounts *t = r->cached_tokens_by_tier;
  if (ctx->json) {
    kv_json j;
    kv_json_init(&j, stdout, 1);
    kv_json_object(&j, NULL);
    kv_json_uint(&j, "prompt_tokens", r->prompt_tokens);
    kv_json_uint(&j, "cached_tokens", r->cached_tokens);
    json_tier_counts(&j, "cached_tokens_by_tier", t);
    kv_json_end(&j);
  } else {
    printf("%u of %u tokens cached (device %llu, host %llu, disk %llu)\n", r->cached_tokens,
           r->prompt_tokens, (unsigned long long)(t ? t->device : 0),
           (unsigned long long)(t ? t->host : 0), (unsigned long long)(t ? t->disk : 0));
  }
  protobuf_c_message_free_unpacked(&r->base, NULL);
  return KV_EXIT_OK;
}

/* ---- gen ------------------------------------------------------------------------------------- */

const char kv_help_gen[] =
    "usage: kvctl gen (TEXT | --text T | --file F | --chat F) [--max-tokens N]\n"
    "                 [--temperature X] [--seed N] [--json-object | --schema F]\n"
    "                 [--namespace NS] [--no-cache] [--json]\n"
    "\n"
    "A quick generation: prints the text as it streams in, then the usage (prompt tokens, how\n"
    "many came from the cache and from which tier, generated tokens) and the timings on\n"
    "stderr. TEXT is sent as raw text; --chat F renders messages with the model's chat template\n"
    "and opens the assistant's turn. Ctrl-C stops the generation.\n"
    "\n"
    "  --max-tokens N    at most N generated tokens (default 128; 0: up to the context limit)\n"
    "  --temperature X   0 (the default) is greedy\n"
    "  --seed N          same seed, prompt and model: same text\n"
    "  --json-object     the answer is one JSON object (it ends on its closing brace)\n"
    "  --schema F        the answer is JSON valid for the JSON schema in file F\n"
    "  --namespace NS    a shared namespace the admin granted you\n"
    "  --no-cache        neither read nor write the prefix cache\n"
    "  --json            nothing while streaming, then {\"text\", \"finish_reason\", \"usage\",\n"
    "                    \"timings\"}\n";

static volatile sig_atomic_t gen_interrupted;

static void on_gen_sigint(int sig) {
  (void)sig;
  gen_interrupted = 1;
}

typedef struct gen_state {
  int json, tty;
  char *text; /* --json: the whole text (n of cap) */
  size_t n, cap;
  int oom;
  int ends_with_newline;
  Prefixd__V1__GenerateResponse *final; /* a copy of the last message */
} gen_state;

static int on_chunk(const Prefixd__V1__GenerateResponse *m, void *user) {
  gen_state *g = user;
  if (gen_interrupted) return 1;
  size_t k = m->text ? strlen(m->text) : 0;
  if (g->json) {
    if (g->n + k + 1 > g->cap) {
      size_t cap = g->cap ? g->cap : 256;
      while (cap < g->n + k + 1) cap *= 2;
      char *t = realloc(g->text, cap);
      if (!t) {
        g->oom = 1;
        return 1;
      }
      g->text = t, g->cap = cap;
    }
    memcpy(g->text + g->n, m->text, k);
    g->n += k;
    g->text[g->n] = 0;
  } else if (k) {
    if (g->tty)
      kv_write_safe_text(stdout, m->text);
    else
      fwrite(m->text, 1, k, stdout);
    fflush(stdout);
    g->ends_with_newline = m->text[k - 1] == '\n';
  }
  if (m->finish_reason) {
    /* keep the final message: repack it, the callback's copy is freed after we return */
    size_t size = protobuf_c_message_get_packed_size(&m->base);
    uint8_t *packed = malloc(size ? size : 1);
    if (!packed) {
      g->oom = 1;
      return 1;
    }
    protobuf_c_message_pack(&m->base, packed);
    g->final = prefixd__v1__generate_response__unpack(NULL, size, packed);
    free(packed);
    if (!g->final) g->oom = 1;
  }
  return 0;
}

static const char *finish_name(Prefixd__V1__FinishReason r) {
  switch (r) {
  case PREFIXD__V1__FINISH_REASON__FINISH_REASON_STOP: return "stop";
  case PREFIXD__V1__FINISH_REASON__FINISH_REASON_LENGTH: return "length";
  case PREFIXD__V1__FINISH_REASON__FINISH_REASON_CANCELLED: return "cancelled";
  case PREFIXD__V1__FINISH_REASON__FINISH_REASON_ERROR: return "error";
  default: return "unspecified";
  }
}

static void gen_report(const gen_state *g) {
  const Prefixd__V1__GenerateResponse *f = g->final;
  const Prefixd__V1__Usage *u = f->usage;
  const Prefixd__V1__Timings *t = f->timings;
  const Prefixd__V1__TierCounts *by = u ? u->cached_tokens_by_tier : NULL;
  fprintf(stderr,
          "[prompt %u tokens, %u cached (device %llu, host %llu, disk %llu); %u generated; "
          "finish: %s]\n",
          u ? u->prompt_tokens : 0, u ? u->cached_tokens : 0,
          (unsigned long long)(by ? by->device : 0), (unsigned long long)(by ? by->host : 0),
          (unsigned long long)(by ? by->disk : 0), u ? u->generated_tokens : 0,
          finish_name(f->finish_reason));
  if (t) {
    double per_second = t->decode_ms > 0 && u && u->generated_tokens > 1
                            ? (double)(u->generated_tokens - 1) * 1000.0 / t->decode_ms
                            : 0.0;
    fprintf(stderr,
            "[queue %.1f ms, restore %.1f ms, prefill %.1f ms, first token %.1f ms, decode %.1f ms"
            "%s",
            t->queue_ms, t->restore_ms, t->prefill_ms, t->ttft_ms, t->decode_ms,
            per_second > 0 ? "" : "]\n");
    if (per_second > 0) fprintf(stderr, ", %.1f tokens/s]\n", per_second);
  }
}

static void gen_json(const gen_state *g) {
  const Prefixd__V1__GenerateResponse *f = g->final;
  const Prefixd__V1__Usage *u = f->usage;
  const Prefixd__V1__Timings *t = f->timings;
  kv_json j;
  kv_json_init(&j, stdout, 1);
  kv_json_object(&j, NULL);
  kv_json_string(&j, "text", g->text ? g->text : "");
  kv_json_string(&j, "finish_reason", finish_name(f->finish_reason));
  kv_json_object(&j, "usage");
  kv_json_uint(&j, "prompt_tokens", u ? u->prompt_tokens : 0);
  kv_json_uint(&j, "cached_tokens", u ? u->cached_tokens : 0);
  json_tier_counts(&j, "cached_tokens_by_tier", u ? u->cached_tokens_by_tier : NULL);
  kv_json_uint(&j, "generated_tokens", u ? u->generated_tokens : 0);
  kv_json_end(&j);
  kv_json_object(&j, "timings");
  kv_json_number(&j, "queue_ms", t ? t->queue_ms : 0.0);
  kv_json_number(&j, "restore_ms", t ? t->restore_ms : 0.0);
  kv_json_number(&j, "prefill_ms", t ? t->prefill_ms : 0.0);
  kv_json_number(&j, "ttft_ms", t ? t->ttft_ms : 0.0);
  kv_json_number(&j, "decode_ms", t ? t->decode_ms : 0.0);
  kv_json_end(&j);
  kv_json_end(&j);
}

int kv_cmd_gen(kv_ctx *ctx, int argc, char **argv) {
  const char *text = NULL, *file = NULL, *chat = NULL, *ns = NULL, *temperature = NULL;
  const char *schema_path = NULL;
  uint64_t max_tokens = 128, seed = 0;
  int no_cache = 0, json_object = 0;
  const kv_opt opts[] = {{"text", 0, KV_OPT_STRING, &text, NULL},
                         {"file", 'f', KV_OPT_STRING, &file, NULL},
                         {"chat", 0, KV_OPT_STRING, &chat, NULL},
                         {"max-tokens", 'n', KV_OPT_UINT, &max_tokens, NULL},
                         {"temperature", 't', KV_OPT_STRING, &temperature, NULL},
                         {"seed", 0, KV_OPT_UINT, &seed, NULL},
                         {"json-object", 0, KV_OPT_FLAG, &json_object, NULL},
                         {"schema", 0, KV_OPT_STRING, &schema_path, NULL},
                         {"namespace", 0, KV_OPT_STRING, &ns, NULL},
                         {"no-cache", 0, KV_OPT_FLAG, &no_cache, NULL},
                         {0}};
  const char *pos[1];
  int n_pos, rc = kv_parse(ctx, kv_help_gen, argc, argv, opts, pos, 1, &n_pos);
  if (rc) return rc == KV_PARSE_HELP ? KV_EXIT_OK : rc;
  double temp = 0.0;
  if (temperature) {
    char *end;
    temp = strtod(temperature, &end);
    if (*end || end == temperature || !(temp >= 0.0 && temp <= 100.0))
      return kv_usage(ctx, "--temperature expects a number >= 0, got '%s'", temperature);
  }
  if (json_object && schema_path)
    return kv_usage(ctx, "--json-object and --schema exclude each other");
  Prefixd__V1__ResponseFormat format = PREFIXD__V1__RESPONSE_FORMAT__INIT;
  char *schema = NULL; /* the daemon compiles it and says what it refuses */
  size_t schema_len;
  if (schema_path && (rc = read_file(ctx, schema_path, &schema, &schema_len))) return rc;
  format.type = schema        ? PREFIXD__V1__RESPONSE_FORMAT__TYPE__RESPONSE_FORMAT_JSON_SCHEMA
                : json_object ? PREFIXD__V1__RESPONSE_FORMAT__TYPE__RESPONSE_FORMAT_JSON_OBJECT
                              : PREFIXD__V1__RESPONSE_FORMAT__TYPE__RESPONSE_FORMAT_TEXT;
  format.json_schema = schema ? schema : (char *)"";
  kv_prompt prompt;
  pd_client *c;
  if ((rc = prompt_and_connect(ctx, n_pos, pos, text, file, chat, 1, &prompt, &c))) {
    free(schema);
    return rc;
  }
  Prefixd__V1__SamplingParams sampling = PREFIXD__V1__SAMPLING_PARAMS__INIT;
  sampling.temperature = (float)temp;
  sampling.seed = seed;
  Prefixd__V1__CacheOptions cache = PREFIXD__V1__CACHE_OPTIONS__INIT;
  cache.namespace_ = (char *)(ns ? ns : "");
  cache.no_cache = no_cache;
  Prefixd__V1__GenerateRequest req = PREFIXD__V1__GENERATE_REQUEST__INIT;
  req.prompt = &prompt.prompt;
  req.sampling = &sampling;
  req.max_tokens = (uint32_t)max_tokens;
  req.cache = &cache;
  req.response_format = &format;

  struct sigaction sa = {0}, old;
  sa.sa_handler = on_gen_sigint;
  sa.sa_flags = SA_RESETHAND; /* a second Ctrl-C ends kvctl at once */
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old);
  gen_state g = {.json = ctx->json, .tty = ctx->stdout_tty, .ends_with_newline = 1};
  rc = pd_client_generate(c, &req, on_chunk, &g);
  sigaction(SIGINT, &old, NULL);
  kv_prompt_free(&prompt);
  free(schema);
  if (!g.json && g.tty && !g.ends_with_newline) fputc('\n', stdout);
  fflush(stdout);
  if (rc == 0 && g.oom) {
    kv_error("out of memory");
    rc = KV_EXIT_ERROR;
  } else if (rc == 0 && !g.final) {
    kv_error("the stream ended without its final message");
    rc = KV_EXIT_ERROR;
  } else if (rc) {
    rc = kv_call_failed(ctx, rc);
  } else {
    if (g.json)
      gen_json(&g);
    else
      gen_report(&g);
    rc = g.final->finish_reason == PREFIXD__V1__FINISH_REASON__FINISH_REASON_ERROR ? KV_EXIT_ERROR
                                                                                   : KV_EXIT_OK;
  }
  free(g.text);
  if (g.final) protobuf_c_message_free_unpacked(&g.final->base, NULL);
  return rc;
}
