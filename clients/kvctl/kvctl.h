/*
 * kvctl.h -- what kvctl's source files share: the invocation context (where the daemon is, the
 * key, --json, colours, --yes), the exit codes, one option parser for every command, error
 * reporting, prompt sources (--text, --file, --chat) and the listing of cached prefixes.
 *
 * Design: kvctl.c owns main, the global options, the connection and the command table; each
 * group of commands lives in its own file (kvctl_stats.c, kvctl_prefixes.c, kvctl_prompts.c,
 * kvctl_tenant.c) and exports only its entry points and help texts, declared here. Printing
 * helpers that know nothing about prefixd are in kvctl_format.h. Every command returns an exit
 * code (KV_EXIT_*), never a negative number, so main returns what the command returned.
 */
#ifndef KVCTL_H
#define KVCTL_H

#include <stdint.h>
#include <stdio.h>

#include "kvctl_format.h"
#include "pd_client.h"

#define KVCTL_VERSION "0.1.0"

/* Exit codes (also `kvctl help exit-codes`). */
enum {
  KV_EXIT_OK = 0,
  KV_EXIT_ERROR = 1,       /* the server refused, or the operation failed or was declined */
  KV_EXIT_USAGE = 2,       /* bad command line */
  KV_EXIT_UNREACHABLE = 3, /* no daemon at the address, the connection broke, or UNAVAILABLE */
  KV_EXIT_AUTH = 4,        /* UNAUTHENTICATED or PERMISSION_DENIED */
};

/* Where the daemon listens when nothing says otherwise. */
#define KV_DEFAULT_TCP "127.0.0.1:7878"

typedef struct kv_ctx {
  /* from the command line or the environment */
  const char *address_flag; /* --addr, else NULL */
  const char *key;          /* --key, PREFIXD_KEY or PREFIXD_API_KEY; NULL for none */
  int json;                 /* --json: one JSON document on stdout */
  int yes;                  /* --yes: no confirmation prompts */
  int no_color;             /* --no-color (main decides colours from the whole line) */
  int64_t timeout_ms;       /* --timeout; deadline of each call */
  int tls;                  /* --tls or --tls-ca: TCP addresses are reached over TLS */
  const char *tls_ca;       /* --tls-ca or PREFIXD_TLS_CA: the CAs to trust; NULL: the system's */
  const char *tls_cert, *tls_key; /* --tls-client-cert, --tls-client-key: for mutual TLS */
  /* derived */
  int stdout_tty, stdin_tty;
  char address[4200];  /* the address in use, once connected (for messages) */
  pd_client *client;   /* connected by kv_connect on first use; closed by main */
  const char *command; /* "ls", "tenant add": names the command in messages */
} kv_ctx;

/* One line "kvctl: <what>" on stderr. */
void kv_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* A usage error: the line, then where to read more. Returns KV_EXIT_USAGE. */
int kv_usage(const kv_ctx *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Connects on first use (the address rules are in `kvctl help keys` and kvctl.c). On failure
 * prints the reason and returns KV_EXIT_UNREACHABLE or KV_EXIT_USAGE; 0 with *out set. The
 * client belongs to ctx. */
int kv_connect(kv_ctx *ctx, pd_client **out);
/* Reports a failed call (rc from pd_client_*) in one line and returns its exit code. */
int kv_call_failed(kv_ctx *ctx, int rc);
/* Asks "<question> [y/N] " on stderr when stdin is a terminal and --yes was not given, and reads
 * the answer. Returns 1 to go ahead (also when there is no one to ask), 0 if declined. */
int kv_confirm(const kv_ctx *ctx, const char *question);

/* ---- options --------------------------------------------------------------------------------- */

typedef enum kv_opt_kind {
  KV_OPT_FLAG,       /* int *: set to 1 */
  KV_OPT_STRING,     /* const char **: the value */
  KV_OPT_UINT,       /* uint64_t *: a non-negative integer (below UINT32_MAX) */
  KV_OPT_DURATION,   /* uint32_t *: seconds, from "90", "30s", "10m", "1h30m", "2d" */
  KV_OPT_OPT_SECONDS /* uint32_t *: a flag with an optional duration after it (--watch [N]) */
} kv_opt_kind;

typedef struct kv_opt {
  const char *name; /* without the dashes */
  char short_name;  /* 0: none */
  kv_opt_kind kind;
  void *dest;
  int *given; /* optional: set to 1 when the option appears */
} kv_opt;

#define KV_PARSE_HELP (-1) /* --help was printed: the command returns KV_EXIT_OK */

/* Parses a command's arguments: its options (opts, ended by a {0} entry) and the global ones
 * (--json, --addr, --key, --yes, --no-color, --timeout, --help) in any order, "--name value" or
 * "--name=value", "--" ending the options. Positional arguments go to pos[0..*n_pos) (at most
 * max_pos). Returns 0, KV_PARSE_HELP after printing help, or KV_EXIT_USAGE after printing the
 * error. */
int kv_parse(kv_ctx *ctx, const char *help, int argc, char **argv, const kv_opt *opts,
             const char **pos, int max_pos, int *n_pos);

/* ---- prompts (kvctl_prompts.c) --------------------------------------------------------------- */

/* A prompt read from --text, --file or --chat (or a positional TEXT); owns its memory. */
typedef struct kv_prompt {
  Prefixd__V1__Prompt prompt;
  Prefixd__V1__ChatMessages chat;
  Prefixd__V1__ChatMessage *messages;      /* n_messages; role and content malloc'd */
  Prefixd__V1__ChatMessage **message_ptrs; /* n_messages pointers into messages */
  size_t n_messages;
  char *file_text; /* --file's contents (malloc'd), the prompt's text */
} kv_prompt;

/* Fills p from exactly one of text, file_path ("-" = stdin) or chat_path ("-" = stdin): a JSON
 * array of {"role": .., "content": ..} objects, or an object with such a "messages" array.
 * add_generation_prompt applies to chat prompts. Prints the problem and returns an exit code
 * on failure; 0 on success. Release with kv_prompt_free. */
int kv_prompt_read(const kv_ctx *ctx, const char *text, const char *file_path,
                   const char *chat_path, int add_generation_prompt, kv_prompt *p);
void kv_prompt_free(kv_prompt *p);
/* Parses the chat JSON in buf (len bytes). On success returns 0 and fills p's messages; on
 * failure returns -1 and writes "LINE:COL: what" into err. Exposed for the reader's tests. */
int kv_chat_parse(const char *buf, size_t len, kv_prompt *p, char *err, size_t errlen);

/* ---- cached prefixes (kvctl_prefixes.c) ------------------------------------------------------ */

/* Every prefix ListPrefixes returns, all pages. The responses own the prefixes. */
typedef struct kv_prefix_list {
  Prefixd__V1__ListPrefixesResponse **pages;
  size_t n_pages;
  const Prefixd__V1__Prefix **items;
  size_t n;
} kv_prefix_list;

/* Fetches the caller's prefixes (admin: all, or tenant's if tenant is not NULL). Returns 0, or
 * an exit code after reporting the failure. */
int kv_prefixes_fetch(kv_ctx *ctx, const char *tenant, kv_prefix_list *out);
void kv_prefixes_free(kv_prefix_list *l);
/* Resolves an id, or a unique leading part of one (at least 4 hex digits), to 32 hex digits in
 * out (33 bytes). If the id is listed, *found (may be NULL) points to it inside l, which the
 * caller fetched and frees. Returns 0 or an exit code after reporting. */
int kv_prefix_resolve(kv_ctx *ctx, const kv_prefix_list *l, const char *id, char out[33],
                      const Prefixd__V1__Prefix **found);
/* The JSON fields of one prefix (inside an open object). */
void kv_json_prefix(kv_json *j, const Prefixd__V1__Prefix *p, int64_t now_ms);
int64_t kv_now_ms(void);
/* "device"/"host"/"disk" (also "gpu" for device) to the proto tier; -1 if none of them. */
int kv_tier_parse(const char *name);
const char *kv_tier_name(int proto_tier);

/* ---- commands: each takes the arguments after its name and returns an exit code -------------- */

int kv_cmd_health(kv_ctx *ctx, int argc, char **argv);
int kv_cmd_status(kv_ctx *ctx, int argc, char **argv);
int kv_cmd_stats(kv_ctx *ctx, int argc, char **argv);
int kv_cmd_ls(kv_ctx *ctx, int argc, char **argv);
int kv_cmd_show(kv_ctx *ctx, int argc, char **argv);
int kv_cmd_evict(kv_ctx *ctx, int argc, char **argv);
int kv_cmd_pin(kv_ctx *ctx, int argc, char **argv);
int kv_cmd_unpin(kv_ctx *ctx, int argc, char **argv);
int kv_cmd_warm(kv_ctx *ctx, int argc, char **argv);
int kv_cmd_lookup(kv_ctx *ctx, int argc, char **argv);
int kv_cmd_gen(kv_ctx *ctx, int argc, char **argv);
int kv_cmd_tenant(kv_ctx *ctx, int argc, char **argv);

extern const char kv_help_health[], kv_help_status[], kv_help_stats[], kv_help_ls[], kv_help_show[],
    kv_help_evict[], kv_help_pin[], kv_help_unpin[], kv_help_warm[], kv_help_lookup[],
    kv_help_gen[], kv_help_tenant[];

/* ---- help (kvctl_help.c) --------------------------------------------------------------------- */

void kv_print_usage(FILE *out);
/* Prints `kvctl help TOPIC` to stdout; -1 if there is no such topic. */
int kv_print_topic(const char *topic);
extern const char *const kv_topic_names[]; /* NULL-terminated */

#endif /* KVCTL_H */
