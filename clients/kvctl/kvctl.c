/*
 * kvctl -- the operator's tool for prefixd: status and stats, the cached prefixes (list, tree,
 * show, evict, pin, unpin), warming and looking up prompts, a quick generation, and tenants.
 * A thin layer over the C client library (clients/c/pd_client.h); `kvctl --help`, `kvctl help
 * TOPIC` and kvctl.1 document it.
 *
 * This file holds main and what every command shares: the global options, where the daemon is
 * (an explicit --addr or PREFIXD_ADDR; else the Unix socket the daemon creates by default in
 * its data directory; else TCP 127.0.0.1:7878; TCP over TLS with --tls or --tls-ca), the API
 * key (--key, PREFIXD_KEY), the one
 * option parser, one-line errors with their exit codes, and the confirmation prompt. The
 * commands themselves are in kvctl_stats.c, kvctl_prefixes.c, kvctl_prompts.c and
 * kvctl_tenant.c; formatting helpers in kvctl_format.c.
 *
 * Exit codes: 0 done, 1 error (refused by the server, or declined), 2 usage, 3 unreachable,
 * 4 authentication or permission.
 */
#include "kvctl.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pd_err.h"

/* ---- messages -------------------------------------------------------------------------------- */

void kv_error(const char *fmt, ...) {
  char line[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  /* one line, whatever the server's message held */
  for (char *p = line; *p; p++)
    if (*p == '\n' || *p == '\r') *p = ' ';
  fprintf(stderr, "kvctl: %s\n", line);
}

int kv_usage(const kv_ctx *ctx, const char *fmt, ...) {
  char what[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  if (ctx && ctx->command)
    kv_error("%s: %s (see kvctl %s --help)", ctx->command, what, ctx->command);
  else
    kv_error("%s (see kvctl --help)", what);
  return KV_EXIT_USAGE;
}

static const char *const grpc_status_names[] = {
    "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
    "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
    "DATA_LOSS", "UNAUTHENTICATED"};

enum { GRPC_PERMISSION_DENIED = 7, GRPC_UNAVAILABLE = 14, GRPC_UNAUTHENTICATED = 16 };

int kv_call_failed(kv_ctx *ctx, int rc) {
  pd_client *c = ctx->client;
  if (rc == PD_CLIENT_ESTATUS) {
    int st = pd_client_status(c);
    const char *name = st >= 0 && st <= 16 ? grpc_status_names[st] : "ERROR";
    const char *msg = pd_client_message(c);
    if (st == GRPC_UNAUTHENTICATED && !ctx->key) {
      kv_error("%s: %s (no API key given: use --key or PREFIXD_KEY)", name, msg);
    } else {
      kv_error("%s: %s", name, msg);
    }
    if (st == GRPC_UNAUTHENTICATED || st == GRPC_PERMISSION_DENIED) return KV_EXIT_AUTH;
    if (st == GRPC_UNAVAILABLE) return KV_EXIT_UNREACHABLE;
    return KV_EXIT_ERROR;
  }
  if (rc == PD_CLIENT_ECANCELLED) {
    kv_error("interrupted");
    return KV_EXIT_ERROR;
  }
  const char *msg = c ? pd_client_message(c) : "";
  if (rc == PD_ETIMEDOUT) {
    kv_error("no answer from prefixd at %s within the deadline (--timeout)", ctx->address);
    return KV_EXIT_ERROR;
  }
  if (rc == PD_EIO) {
    kv_error("lost the connection to prefixd at %s%s%s", ctx->address, msg[0] ? ": " : "", msg);
    return KV_EXIT_UNREACHABLE;
  }
  kv_error("%s%s%s", pd_strerror(rc), msg[0] ? ": " : "", msg);
  return KV_EXIT_ERROR;
}

int kv_confirm(const kv_ctx *ctx, const char *question) {
  if (ctx->yes || !ctx->stdin_tty) return 1;
  fprintf(stderr, "%s [y/N] ", question);
  fflush(stderr);
  char answer[64];
  if (!fgets(answer, sizeof answer, stdin)) {
    fputc('\n', stderr);
    return 0;
  }
  return !strcasecmp(answer, "y\n") || !strcasecmp(answer, "yes\n");
}

/* ---- connection ------------------------------------------------------------------------------ */

static const char *nonempty_env(const char *name) {
  const char *v = getenv(name);
  return v && v[0] ? v : NULL;
}

/* The Unix socket prefixd listens on by default: <data-dir>/prefixd.sock. */
static void default_socket_path(char *out, size_t cap) {
  const char *data_dir = nonempty_env("PREFIXD_DATA_DIR");
  if (data_dir) {
    snprintf(out, cap, "%s/prefixd.sock", data_dir);
  } else {
    const char *home = nonempty_env("HOME");
    snprintf(out, cap, "%s/.local/share/prefixd/prefixd.sock", home ? home : ".");
  }
}

/* Connects to address; on failure fills why (one phrase). */
static int try_connect(kv_ctx *ctx, const char *address, char *why, size_t whylen) {
  errno = 0;
  int use_tls = ctx->tls && strncmp(address, "unix:", 5); /* the Unix socket is plaintext */
  pd_client_tls tls = {
      .ca_file = ctx->tls_ca, .cert_file = ctx->tls_cert, .key_file = ctx->tls_key};
  int rc = use_tls ? pd_client_connect_tls(address, ctx->key, &tls, why, whylen, &ctx->client)
                   : pd_client_connect(address, ctx->key, &ctx->client);
  int saved = errno;
  if (rc == 0) {
    snprintf(ctx->address, sizeof ctx->address, "%s", address);
    pd_client_set_timeout_ms(ctx->client, ctx->timeout_ms);
    return 0;
  }
  if (use_tls) return rc; /* why: the TLS connect's own line */
  if (rc == PD_EINVAL)
    snprintf(why, whylen, "not an address (HOST:PORT or unix:/path)");
  else if (rc == PD_ENOTFOUND)
    snprintf(why, whylen, "the host name does not resolve");
  else if (rc == PD_EIO && saved)
    snprintf(why, whylen, "%s", strerror(saved));
  else
    snprintf(why, whylen, "%s", pd_strerror(rc));
  return rc;
}

int kv_connect(kv_ctx *ctx, pd_client **out) {
  if (ctx->client) {
    *out = ctx->client;
    return 0;
  }
  const char *explicit_addr = ctx->address_flag              ? ctx->address_flag
                              : nonempty_env("PREFIXD_ADDR") ? nonempty_env("PREFIXD_ADDR")
                                                             : nonempty_env("PREFIXD_ADDRESS");
  char why[256], address[4200];
  if (explicit_addr) {
    /* a bare path is a Unix socket too */
    snprintf(address, sizeof address, "%s%s", explicit_addr[0] == '/' ? "unix:" : "",
             explicit_addr);
    int rc = try_connect(ctx, address, why, sizeof why);
    if (rc == 0) {
      *out = ctx->client;
      return 0;
    }
    kv_error("cannot reach prefixd at %s: %s", address, why);
    return rc == PD_EINVAL ? KV_EXIT_USAGE : KV_EXIT_UNREACHABLE;
  }
  char socket_path[4096];
  default_socket_path(socket_path, sizeof socket_path);
  struct stat st;
  char socket_why[256] = "";
  if (stat(socket_path, &st) == 0 && S_ISSOCK(st.st_mode)) {
    snprintf(address, sizeof address, "unix:%s", socket_path);
    if (try_connect(ctx, address, socket_why, sizeof socket_why) == 0) {
      *out = ctx->client;
      return 0;
    }
  }
  if (try_connect(ctx, KV_DEFAULT_TCP, why, sizeof why) == 0) {
    *out = ctx->client;
    return 0;
  }
  if (socket_why[0])
    kv_error("cannot reach prefixd at unix:%s (%s) nor at %s (%s)", socket_path, socket_why,
             KV_DEFAULT_TCP, why);
  else
    kv_error("cannot reach prefixd at %s: %s (is it running? no socket at %s either)",
             KV_DEFAULT_TCP, why, socket_path);
  return KV_EXIT_UNREACHABLE;
}

/* ---- options --------------------------------------------------------------------------------- */

enum {
  G_ADDR = 1,
  G_KEY,
  G_JSON,
  G_YES,
  G_NO_COLOR,
  G_TIMEOUT,
  G_TLS,
  G_TLS_CA,
  G_TLS_CERT,
  G_TLS_KEY,
  G_HELP
};

static const struct global_opt {
  const char *name;
  char short_name;
  int id, takes_value;
} global_opts[] = {
    {"addr", 'a', G_ADDR, 1},
    {"address", 0, G_ADDR, 1},
    {"key", 'k', G_KEY, 1},
    {"json", 'j', G_JSON, 0},
    {"yes", 'y', G_YES, 0},
    {"no-color", 0, G_NO_COLOR, 0},
    {"timeout", 0, G_TIMEOUT, 1},
    {"tls", 0, G_TLS, 0},
    {"tls-ca", 0, G_TLS_CA, 1},
    {"tls-client-cert", 0, G_TLS_CERT, 1},
    {"tls-client-key", 0, G_TLS_KEY, 1},
    {"help", 'h', G_HELP, 0},
    {NULL, 0, 0, 0},
};

static int apply_global(kv_ctx *ctx, int id, const char *value, const char *help) {
  uint32_t seconds;
  switch (id) {
  case G_ADDR: ctx->address_flag = value; return 0;
  case G_KEY: ctx->key = value[0] ? value : NULL; return 0;
  case G_JSON: ctx->json = 1; return 0;
  case G_YES: ctx->yes = 1; return 0;
  case G_NO_COLOR: ctx->no_color = 1; return 0;
  case G_TLS: ctx->tls = 1; return 0;
  case G_TLS_CA:
    ctx->tls = 1;
    ctx->tls_ca = value;
    return 0;
  case G_TLS_CERT:
    ctx->tls = 1;
    ctx->tls_cert = value;
    return 0;
  case G_TLS_KEY:
    ctx->tls = 1;
    ctx->tls_key = value;
    return 0;
  case G_TIMEOUT:
    if (kv_parse_duration(value, &seconds) || seconds == 0)
      return kv_usage(ctx, "--timeout expects a duration like 30s or 10m, got '%s'", value);
    ctx->timeout_ms = (int64_t)seconds * 1000;
    return 0;
  case G_HELP:
    if (help)
      fputs(help, stdout);
    else
      kv_print_usage(stdout);
    return KV_PARSE_HELP;
  }
  return 0;
}

/* Parses argv[*i] (an option) and, if it takes one, its value; advances *i past the value. */
static int parse_option(kv_ctx *ctx, const char *help, int argc, char **argv, int *i,
                        const kv_opt *opts) {
  const char *arg = argv[*i];
  char name[64];
  const char *inline_value = NULL;
  int is_long = arg[1] == '-';
  if (is_long) {
    const char *eq = strchr(arg + 2, '=');
    size_t n = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);
    if (n >= sizeof name) return kv_usage(ctx, "unknown option '%s'", arg);
    memcpy(name, arg + 2, n);
    name[n] = 0;
    inline_value = eq ? eq + 1 : NULL;
  } else if (arg[2]) {
    return kv_usage(ctx, "unknown option '%s' (give short options one at a time)", arg);
  }
  const kv_opt *opt = NULL;
  for (const kv_opt *o = opts; o && o->name; o++)
    if (is_long ? !strcmp(o->name, name) : (o->short_name && o->short_name == arg[1])) {
      opt = o;
      break;
    }
  if (!opt) {
    for (const struct global_opt *g = global_opts; g->name; g++) {
      if (is_long ? strcmp(g->name, name) != 0 : !(g->short_name && g->short_name == arg[1]))
        continue;
      const char *value = inline_value;
      if (g->takes_value && !value) {
        if (*i + 1 >= argc) return kv_usage(ctx, "%s needs a value", arg);
        value = argv[++*i];
      } else if (!g->takes_value && value) {
        return kv_usage(ctx, "--%s takes no value", g->name);
      }
      return apply_global(ctx, g->id, value, help);
    }
    return kv_usage(ctx, "unknown option '%s'", arg);
  }
  if (opt->given) *opt->given = 1;
  const char *value = inline_value;
  if (opt->kind == KV_OPT_FLAG) {
    if (value) return kv_usage(ctx, "--%s takes no value", opt->name);
    *(int *)opt->dest = 1;
    return 0;
  }
  if (opt->kind == KV_OPT_OPT_SECONDS) {
    /* the value is optional: take the next argument only if it is a duration */
    uint32_t seconds;
    if (!value && *i + 1 < argc && kv_parse_duration(argv[*i + 1], &seconds) == 0)
      value = argv[++*i];
    if (!value) return 0;
    if (kv_parse_duration(value, &seconds) || seconds == 0)
      return kv_usage(ctx, "--%s expects a duration like 2 or 5s, got '%s'", opt->name, value);
    *(uint32_t *)opt->dest = seconds;
    return 0;
  }
  if (!value) {
    if (*i + 1 >= argc) return kv_usage(ctx, "--%s needs a value", opt->name);
    value = argv[++*i];
  }
  switch (opt->kind) {
  case KV_OPT_STRING: *(const char **)opt->dest = value; return 0;
  case KV_OPT_UINT:
    if (kv_parse_uint(value, UINT32_MAX, (uint64_t *)opt->dest))
      return kv_usage(ctx, "--%s expects a number >= 0, got '%s'", opt->name, value);
    return 0;
  case KV_OPT_DURATION:
    if (kv_parse_duration(value, (uint32_t *)opt->dest))
      return kv_usage(ctx, "--%s expects a duration like 30s, 10m, 1h or 2d, got '%s'", opt->name,
                      value);
    return 0;
  default: return 0;
  }
}

int kv_parse(kv_ctx *ctx, const char *help, int argc, char **argv, const kv_opt *opts,
             const char **pos, int max_pos, int *n_pos) {
  *n_pos = 0;
  int options_ended = 0;
  for (int i = 0; i < argc; i++) {
    const char *arg = argv[i];
    if (options_ended || arg[0] != '-' || arg[1] == 0) { /* "-" alone means stdin */
      if (*n_pos >= max_pos) return kv_usage(ctx, "unexpected argument '%s'", arg);
      pos[(*n_pos)++] = arg;
      continue;
    }
    if (!strcmp(arg, "--")) {
      options_ended = 1;
      continue;
    }
    int rc = parse_option(ctx, help, argc, argv, &i, opts);
    if (rc) return rc;
  }
  return 0;
}

/* ---- commands -------------------------------------------------------------------------------- */

typedef struct command {
  const char *name;
  const char *alias;
  int (*run)(kv_ctx *ctx, int argc, char **argv);
  const char *help;
} command;

static const command commands[] = {
    {"status", NULL, kv_cmd_status, kv_help_status},
    {"stats", NULL, kv_cmd_stats, kv_help_stats},
    {"health", NULL, kv_cmd_health, kv_help_health},
    {"ls", "list", kv_cmd_ls, kv_help_ls},
    {"show", NULL, kv_cmd_show, kv_help_show},
    {"evict", NULL, kv_cmd_evict, kv_help_evict},
    {"pin", NULL, kv_cmd_pin, kv_help_pin},
    {"unpin", NULL, kv_cmd_unpin, kv_help_unpin},
    {"warm", NULL, kv_cmd_warm, kv_help_warm},
    {"lookup", NULL, kv_cmd_lookup, kv_help_lookup},
    {"gen", "generate", kv_cmd_gen, kv_help_gen},
    {"tenant", "tenants", kv_cmd_tenant, kv_help_tenant},
};

static const command *find_command(const char *name) {
  for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
    if (!strcmp(commands[i].name, name) || (commands[i].alias && !strcmp(commands[i].alias, name)))
      return &commands[i];
  return NULL;
}

/* `kvctl help [COMMAND|TOPIC]` */
static int cmd_help(int argc, char **argv) {
  if (argc == 0) {
    kv_print_usage(stdout);
    return KV_EXIT_OK;
  }
  /* topics first: "tenants" is a topic, and also an alias of the command "tenant" */
  if (kv_print_topic(argv[0]) == 0) return KV_EXIT_OK;
  const command *cmd = find_command(argv[0]);
  if (cmd) {
    fputs(cmd->help, stdout);
    return KV_EXIT_OK;
  }
  char topics[256] = "";
  for (int i = 0; kv_topic_names[i]; i++) {
    strncat(topics, i ? ", " : "", sizeof topics - strlen(topics) - 1);
    strncat(topics, kv_topic_names[i], sizeof topics - strlen(topics) - 1);
  }
  kv_error("help: no command or topic '%s' (topics: %s)", argv[0], topics);
  return KV_EXIT_USAGE;
}

int main(int argc, char **argv) {
  kv_ctx ctx = {0};
  ctx.timeout_ms = 600000;
  ctx.key =
      nonempty_env("PREFIXD_KEY") ? nonempty_env("PREFIXD_KEY") : nonempty_env("PREFIXD_API_KEY");
  ctx.tls_ca = nonempty_env("PREFIXD_TLS_CA");
  ctx.tls_cert = nonempty_env("PREFIXD_TLS_CLIENT_CERT");
  ctx.tls_key = nonempty_env("PREFIXD_TLS_CLIENT_KEY");
  ctx.tls = ctx.tls_ca || ctx.tls_cert || ctx.tls_key;
  ctx.stdout_tty = isatty(STDOUT_FILENO);
  ctx.stdin_tty = isatty(STDIN_FILENO);

  /* global options before the command */
  int i = 1;
  for (; i < argc && argv[i][0] == '-' && argv[i][1]; i++) {
    if (!strcmp(argv[i], "--")) {
      i++;
      break;
    }
    if (!strcmp(argv[i], "--version")) {
      printf("kvctl %s\n", KVCTL_VERSION);
      return KV_EXIT_OK;
    }
    int rc = parse_option(&ctx, NULL, argc, argv, &i, NULL);
    if (rc == KV_PARSE_HELP) return KV_EXIT_OK;
    if (rc) return rc;
  }
  if (i >= argc) {
    kv_print_usage(stderr);
    return KV_EXIT_USAGE;
  }
  const char *name = argv[i];
  if (!strcmp(name, "help")) return cmd_help(argc - i - 1, argv + i + 1);
  const command *cmd = find_command(name);
  if (!cmd) {
    kv_error("unknown command '%s' (see kvctl --help)", name);
    return KV_EXIT_USAGE;
  }
  ctx.command = cmd->name;
  /* colours follow the global options, which may also come after the command: the commands
   * call kv_parse first, so decide here from the whole command line */
  int no_color = 0;
  for (int k = 1; k < argc; k++) {
    if (!strcmp(argv[k], "--")) break;
    if (!strcmp(argv[k], "--no-color")) no_color = 1;
  }
  const char *no_color_env = getenv("NO_COLOR");
  const char *term = getenv("TERM");
  kv_set_color(ctx.stdout_tty && !no_color && !(no_color_env && no_color_env[0]) &&
               !(term && !strcmp(term, "dumb")));

  int rc = cmd->run(&ctx, argc - i - 1, argv + i + 1);
  if (ctx.client) pd_client_close(ctx.client);
  return rc;
}
