/*
 * kvctl_prefixes.c -- the cached prefixes: `ls` (a table or a tree), `show`, `evict`, `pin`,
 * `unpin`, and the helpers they share (fetching every page of ListPrefixes, resolving short ids).
 *
 * Design notes.
 * - ListPrefixes returns the leaves of each namespace's radix tree and the pinned nodes, each
 *   with its token count, blocks per tier, hits, last use, pin and a preview (the text of its
 *   first 64 tokens, about 120 bytes). No RPC returns a prefix's tokens, so `show` prints the
 *   preview as the text and says so (text_is_preview in JSON).
 * - Ids are 32 hex digits; like git, every command also takes a unique leading part of at least
 *   4 digits, which is what the table shows when the terminal is too narrow for whole ids.
 * - The tree: prefixes of different tenants or namespaces never share blocks, so each
 *   (tenant, namespace) is a root. Inside one, a prefix nests under its parent_id, the nearest
 *   listed prefix whose blocks it continues (where prompts part, or a pin): the tree is the
 *   daemon's radix tree itself, cut down to the listed prefixes. Siblings are sorted by
 *   preview; a prefix whose parent is not in the listing (cut off by --limit) is a root.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvctl.h"

/* ---- shared helpers -------------------------------------------------------------------------- */

int64_t kv_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int kv_tier_parse(const char *name) {
  if (!strcmp(name, "device") || !strcmp(name, "gpu")) return PREFIXD__V1__TIER__TIER_DEVICE;
  if (!strcmp(name, "host")) return PREFIXD__V1__TIER__TIER_HOST;
  if (!strcmp(name, "disk")) return PREFIXD__V1__TIER__TIER_DISK;
  return -1;
}

const char *kv_tier_name(int proto_tier) {
  switch (proto_tier) {
  case PREFIXD__V1__TIER__TIER_DEVICE: return "device";
  case PREFIXD__V1__TIER__TIER_HOST: return "host";
  case PREFIXD__V1__TIER__TIER_DISK: return "disk";
  default: return "all";
  }
}

void kv_prefixes_free(kv_prefix_list *l) {
  for (size_t i = 0; i < l->n_pages; i++)
    protobuf_c_message_free_unpacked(&l->pages[i]->base, NULL);
  free(l->pages);
  free(l->items);
  memset(l, 0, sizeof *l);
}

int kv_prefixes_fetch(kv_ctx *ctx, const char *tenant, kv_prefix_list *out) {
  memset(out, 0, sizeof *out);
  pd_client *c;
  int rc = kv_connect(ctx, &c);
  if (rc) return rc;
  Prefixd__V1__ListPrefixesRequest req = PREFIXD__V1__LIST_PREFIXES_REQUEST__INIT;
  req.tenant = (char *)(tenant ? tenant : "");
  req.page_size = 1000;
  char token[64] = "";
  size_t cap_pages = 0, cap_items = 0;
  do {
    req.page_token = token;
    Prefixd__V1__ListPrefixesResponse *r;
    if ((rc = pd_client_list_prefixes(c, &req, &r))) {
      kv_prefixes_free(out);
      return kv_call_failed(ctx, rc);
    }
    if (out->n_pages == cap_pages) {
      cap_pages = cap_pages ? 2 * cap_pages : 4;
      void *grown = realloc(out->pages, cap_pages * sizeof *out->pages);
      if (!grown) {
        protobuf_c_message_free_unpacked(&r->base, NULL);
        kv_prefixes_free(out);
        kv_error("out of memory");
        return KV_EXIT_ERROR;
      }
      out->pages = grown;
    }
    out->pages[out->n_pages++] = r;
    if (out->n + r->n_prefixes > cap_items) {
      while (out->n + r->n_prefixes > cap_items) cap_items = cap_items ? 2 * cap_items : 256;
      void *grown = realloc(out->items, cap_items * sizeof *out->items);
      if (!grown) {
        kv_prefixes_free(out);
        kv_error("out of memory");
        return KV_EXIT_ERROR;
      }
      out->items = grown;
    }
    for (size_t i = 0; i < r->n_prefixes; i++) out->items[out->n++] = r->prefixes[i];
    snprintf(token, sizeof token, "%s", r->next_page_token ? r->next_page_token : "");
  } while (token[0]);
  return 0;
}

static int is_hex(const char *s) {
  if (!*s) return 0;
  for (; *s; s++)
    if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f') || (*s >= 'A' && *s <= 'F')))
      return 0;
  return 1;
}

int kv_prefix_resolve(kv_ctx *ctx, const kv_prefix_list *l, const char *id, char out[33],
                      const Prefixd__V1__Prefix **found) {
  if (found) *found = NULL;
  size_t n = strlen(id);
  if (!is_hex(id) || n > 32) return kv_usage(ctx, "'%s' is not a prefix id (32 hex digits)", id);
  if (n < 4 && n != 32) return kv_usage(ctx, "give at least 4 hex digits of the id, got '%s'", id);
  const Prefixd__V1__Prefix *match = NULL;
  int matches = 0;
  for (size_t i = 0; l && i < l->n; i++)
    if (!strncasecmp(l->items[i]->id, id, n)) {
      if (!match || strcmp(match->id, l->items[i]->id)) matches++;
      match = l->items[i];
    }
  if (matches > 1) {
    kv_error("%s: the id '%s' is ambiguous: %d prefixes start with it", ctx->command, id, matches);
    return KV_EXIT_ERROR;
  }
  if (match) {
    snprintf(out, 33, "%s", match->id);
    if (found) *found = match;
    return 0;
  }
  if (n == 32) { /* maybe an inner block, which ListPrefixes does not list: let the server say */
    for (size_t i = 0; i < 32; i++)
      out[i] = (char)(id[i] >= 'A' && id[i] <= 'F' ? id[i] + 32 : id[i]);
    out[32] = 0;
    return 0;
  }
  kv_error("NOT_FOUND: no cached prefix starts with '%s'", id);
  return KV_EXIT_ERROR;
}

/* Resolves id, fetching the listing only when id is not a whole id; l is freed by the caller. */
static int resolve_id(kv_ctx *ctx, const char *id, char out[33], kv_prefix_list *l) {
  memset(l, 0, sizeof *l);
  if (strlen(id) != 32) {
    int rc = kv_prefixes_fetch(ctx, NULL, l);
    if (rc) return rc;
  }
  return kv_prefix_resolve(ctx, l, id, out, NULL);
}

void kv_json_prefix(kv_json *j, const Prefixd__V1__Prefix *p, int64_t now_ms) {
  kv_json_string(j, "id", p->id);
  kv_json_string(j, "tenant", p->tenant);
  kv_json_string(j, "namespace", p->namespace_);
  kv_json_uint(j, "token_count", p->token_count);
  kv_json_object(j, "blocks");
  kv_json_uint(j, "device", p->blocks ? p->blocks->device : 0);
  kv_json_uint(j, "host", p->blocks ? p->blocks->host : 0);
  kv_json_uint(j, "disk", p->blocks ? p->blocks->disk : 0);
  kv_json_end(j);
  kv_json_uint(j, "hits", p->hits);
  kv_json_int(j, "last_use_unix_ms", p->last_use_unix_ms);
  double age = (double)(now_ms - p->last_use_unix_ms) / 1000.0;
  kv_json_number(j, "age_seconds", age > 0 ? age : 0.0);
  kv_json_bool(j, "pinned", p->pinned);
  kv_json_int(j, "pin_expires_unix_ms", p->pin_expires_unix_ms);
  kv_json_string(j, "preview", p->preview);
  kv_json_string(j, "parent_id", p->parent_id);
}

static uint64_t total_blocks(const Prefixd__V1__Prefix *p) {
  return p->blocks ? p->blocks->device + p->blocks->host + p->blocks->disk : 0;
}

/* "yes" (until unpinned), "47m" (the time left), or "-". */
static char *pin_text(char *buf, size_t cap, const Prefixd__V1__Prefix *p, int64_t now_ms) {
  if (!p->pinned)
    snprintf(buf, cap, "-");
  else if (!p->pin_expires_unix_ms)
    snprintf(buf, cap, "yes");
  else
    kv_fmt_age(buf, cap, (double)(p->pin_expires_unix_ms - now_ms) / 1000.0);
  return buf;
}

/* "device 4 host 2" (non-zero tiers only), or "-". */
static char *tiers_text(char *buf, size_t cap, const Prefixd__V1__Prefix *p) {
  buf[0] = 0;
  const uint64_t counts[3] = {p->blocks ? p->blocks->device : 0, p->blocks ? p->blocks->host : 0,
                              p->blocks ? p->blocks->disk : 0};
  static const char *const names[3] = {"device", "host", "disk"};
  size_t o = 0;
  for (int t = 0; t < 3; t++)
    if (counts[t] && o < cap)
      o += (size_t)snprintf(buf + o, cap - o, "%s%s %llu", o ? " " : "", names[t],
                            (unsigned long long)counts[t]);
  if (!buf[0]) snprintf(buf, cap, "-");
  return buf;
}

/* ---- ls: the table --------------------------------------------------------------------------- */

const char kv_help_ls[] =
    "usage: kvctl ls [--tenant T] [--tree] [--sort hits|age|size] [--limit N] [--json]\n"
    "\n"
    "Lists the cached prefixes: every leaf of the cache's radix tree, every point where prompts\n"
    "part and every pinned prefix, with its id, tenant, tokens, blocks per tier, hits, time since\n"
    "last use, pin, and the start of its text. The table fits the terminal's width: the preview "
    "shrinks, and ids shorten to\n"
    "12 digits when the preview would get less than 40 columns (every command takes a unique\n"
    "leading part of an id).\n"
    "\n"
    "  --tenant T          a tenant's prefixes (admin key); default: yours (admin: everyone's)\n"
    "  --tree              nest each prefix under the one whose blocks it continues\n"
    "  --sort hits|age|size  most hits, most recently used, or most tokens first\n"
    "  --limit N           at most N prefixes (after sorting)\n"
    "  --json              {\"prefixes\": [...]}; with --tree {\"tree\": [...]} (kvctl help "
    "json)\n";

enum { SORT_NONE, SORT_HITS, SORT_AGE, SORT_SIZE };

static int sort_key;

static int compare_prefixes(const void *a, const void *b) {
  const Prefixd__V1__Prefix *x = *(const Prefixd__V1__Prefix *const *)a;
  const Prefixd__V1__Prefix *y = *(const Prefixd__V1__Prefix *const *)b;
  int c = 0;
  if (sort_key == SORT_HITS)
    c = (x->hits < y->hits) - (x->hits > y->hits);
  else if (sort_key == SORT_AGE)
    c = (x->last_use_unix_ms < y->last_use_unix_ms) - (x->last_use_unix_ms > y->last_use_unix_ms);
  else if (sort_key == SORT_SIZE)
    c = (x->token_count < y->token_count) - (x->token_count > y->token_count);
  return c ? c : strcmp(x->id, y->id);
}

/* The table in one layout: whole or 12-digit ids, one column per tier or one "D/H/K" column.
 * *preview_col gets the preview's column. NULL when out of memory. */
static kv_table *build_table(const kv_prefix_list *l, size_t n, int short_ids, int one_tier_column,
                             int64_t now, int *preview_col) {
  int several_tenants = 0, any_namespace = 0;
  for (size_t i = 0; i < n; i++) {
    if (strcmp(l->items[i]->tenant, l->items[0]->tenant)) several_tenants = 1;
    if (l->items[i]->namespace_ && l->items[i]->namespace_[0]) any_namespace = 1;
  }
  const char *headers[12];
  int nc = 0;
  headers[nc++] = "ID";
  if (several_tenants) headers[nc++] = "TENANT";
  if (any_namespace) headers[nc++] = "NAMESPACE";
  int first_number = nc;
  headers[nc++] = "TOKENS";
  if (one_tier_column) {
    headers[nc++] = "D/H/K";
  } else {
    headers[nc++] = "DEVICE";
    headers[nc++] = "HOST";
    headers[nc++] = "DISK";
  }
  headers[nc++] = "HITS";
  headers[nc++] = "AGE";
  int last_number = nc;
  headers[nc++] = "PINNED";
  *preview_col = nc;
  headers[nc++] = "PREVIEW";
  kv_table *t = kv_table_new(headers, nc);
  if (!t) return NULL;
  for (int c = first_number; c < last_number; c++) kv_table_align_right(t, c);
  kv_table_flex(t, *preview_col, 8);
  for (size_t i = 0; i < n; i++) {
    const Prefixd__V1__Prefix *p = l->items[i];
    char age[16], pin[16];
    unsigned long long dev = p->blocks ? p->blocks->device : 0,
                       host = p->blocks ? p->blocks->host : 0,
                       disk = p->blocks ? p->blocks->disk : 0;
    kv_table_add(t, KV_CYAN, "%.*s", short_ids ? 12 : 32, p->id);
    if (several_tenants) kv_table_add(t, KV_PLAIN, "%s", p->tenant);
    if (any_namespace)
      kv_table_add(t, KV_PLAIN, "%s", p->namespace_[0] ? p->namespace_ : "(private)");
    kv_table_add(t, KV_PLAIN, "%u", p->token_count);
    if (one_tier_column) {
      kv_table_add(t, KV_PLAIN, "%llu/%llu/%llu", dev, host, disk);
    } else {
      kv_table_add(t, KV_PLAIN, "%llu", dev);
      kv_table_add(t, KV_PLAIN, "%llu", host);
      kv_table_add(t, KV_PLAIN, "%llu", disk);
    }
    kv_table_add(t, KV_PLAIN, "%llu", (unsigned long long)p->hits);
    kv_table_add(t, KV_PLAIN, "%s",
                 kv_fmt_age(age, sizeof age, (double)(now - p->last_use_unix_ms) / 1000.0));
    kv_table_add(t, p->pinned ? KV_YELLOW : KV_DIM, "%s", pin_text(pin, sizeof pin, p, now));
    kv_table_add(t, KV_PLAIN, "%s", p->preview);
  }
  return t;
}

/* The first layout, from the widest, that leaves the preview 40 columns (or all it needs):
 * whole ids are worth less than text, since every command takes a unique part of an id. */
static void print_table(const kv_prefix_list *l, size_t n, int width) {
  static const int layouts[][2] = {{0, 0}, {1, 0}, {1, 1}}; /* short ids, one tier column */
  int64_t now = kv_now_ms();
  for (size_t k = 0; k < 3; k++) {
    int preview_col;
    kv_table *t = build_table(l, n, layouts[k][0], layouts[k][1], now, &preview_col);
    if (!t) return;
    int preview = kv_table_column_width(t, preview_col);
    int needed = kv_table_natural_width(t) - preview + (preview < 40 ? preview : 40);
    if (needed <= width || k == 2) {
      kv_table_print(t, stdout, width);
      kv_table_free(t);
      return;
    }
    kv_table_free(t);
  }
}

/* ---- ls --tree ------------------------------------------------------------------------------- */

typedef struct tree_node {
  const Prefixd__V1__Prefix *prefix;
  struct tree_node **children; /* owned array of borrowed nodes, sorted by preview */
  size_t n_children, cap_children;
} tree_node;

static int tree_add_child(tree_node *parent, tree_node *child) {
  if (parent->n_children == parent->cap_children) {
    size_t cap = parent->cap_children ? 2 * parent->cap_children : 4;
    tree_node **grown = realloc(parent->children, cap * sizeof *grown);
    if (!grown) return -1;
    parent->children = grown;
    parent->cap_children = cap;
  }
  parent->children[parent->n_children++] = child;
  return 0;
}

static int same_root(const Prefixd__V1__Prefix *a, const Prefixd__V1__Prefix *b) {
  return !strcmp(a->tenant, b->tenant) && !strcmp(a->namespace_, b->namespace_);
}

static int compare_for_tree(const void *a, const void *b) {
  const Prefixd__V1__Prefix *x = *(const Prefixd__V1__Prefix *const *)a;
  const Prefixd__V1__Prefix *y = *(const Prefixd__V1__Prefix *const *)b;
  int c = strcmp(x->tenant, y->tenant);
  if (!c) c = strcmp(x->namespace_, y->namespace_);
  if (!c) c = strcmp(x->preview, y->preview);
  if (!c) c = (x->token_count > y->token_count) - (x->token_count < y->token_count);
  return c ? c : strcmp(x->id, y->id);
}

static int compare_ids(const void *a, const void *b) {
  const tree_node *x = *(tree_node *const *)a, *y = *(tree_node *const *)b;
  return strcmp(x->prefix->id, y->prefix->id);
}

/* Links nodes[0..n) (one per prefix of one root, in preview order) under their parents; those
 * whose parent is not among them go under root. Children keep the preview order. */
static int tree_link(tree_node *root, tree_node *nodes, size_t n) {
  tree_node **by_id = malloc((n ? n : 1) * sizeof *by_id);
  if (!by_id) return -1;
  for (size_t i = 0; i < n; i++) by_id[i] = &nodes[i];
  qsort(by_id, n, sizeof *by_id, compare_ids);
  int rc = 0;
  for (size_t i = 0; i < n && !rc; i++) {
    tree_node key_node = {&(Prefixd__V1__Prefix){.id = nodes[i].prefix->parent_id}, 0, 0, 0};
    tree_node *key = &key_node, **found = NULL;
    if (nodes[i].prefix->parent_id[0] && strcmp(nodes[i].prefix->parent_id, nodes[i].prefix->id))
      found = bsearch(&key, by_id, n, sizeof *by_id, compare_ids);
    rc = tree_add_child(found ? *found : root, &nodes[i]);
  }
  free(by_id);
  return rc;
}

static void tree_free(tree_node *n) {
  for (size_t i = 0; i < n->n_children; i++) tree_free(n->children[i]);
  free(n->children);
}

static void tree_json(kv_json *j, const tree_node *n, int64_t now) {
  kv_json_object(j, NULL);
  kv_json_prefix(j, n->prefix, now);
  kv_json_array(j, "children");
  for (size_t i = 0; i < n->n_children; i++) tree_json(j, n->children[i], now);
  kv_json_end(j);
  kv_json_end(j);
}

/* One line of the tree: the branch drawing, the node's facts, and its text after the part its
 * parent already showed (parent_text, when the node's preview starts with it), cut to the
 * terminal's width. indent holds the drawing of the levels above (each 3 columns wide, levels
 * of them). */
static void tree_print(const tree_node *n, const char *parent_text, const char *indent, int levels,
                       int last, int width, int64_t now) {
  static const char branch[] = "\xe2\x94\x9c\xe2\x94\x80 ", corner[] = "\xe2\x94\x94\xe2\x94\x80 ",
                    bar[] = "\xe2\x94\x82  ";
  char facts[256], age[16], tiers[64], pin[16];
  const Prefixd__V1__Prefix *p = n->prefix;
  snprintf(facts, sizeof facts, "%.12s  %u tok  %s  %llu hits  %s%s%s", p->id, p->token_count,
           tiers_text(tiers, sizeof tiers, p), (unsigned long long)p->hits,
           kv_fmt_age(age, sizeof age, (double)(now - p->last_use_unix_ms) / 1000.0),
           p->pinned ? "  pinned " : "", p->pinned ? pin_text(pin, sizeof pin, p, now) : "");
  /* the text this node adds to its parent's, quoted, led by an ellipsis if it continues one;
   * when the width leaves no room for it, the facts are cut instead */
  size_t parent_len = strlen(parent_text);
  size_t from = parent_len && !strncmp(p->preview, parent_text, parent_len) ? parent_len : 0;
  int room = width - 3 * (levels + 1);
  int budget = room - (int)kv_display_width(facts) - 4 - (from ? 1 : 0);
  kv_style style = KV_CYAN;
  if (budget >= 1) {
    char quoted[1024];
    kv_one_line(p->preview + from, (size_t)budget, quoted, sizeof quoted);
    printf("%s%s%s%s%s  \"%s%s\"\n", indent, last ? corner : branch, kv_style_on(style), facts,
           kv_style_off(style), from ? "\xe2\x80\xa6" : "", quoted);
  } else {
    char cut[512];
    kv_one_line(facts, room > 12 ? (size_t)room : 12, cut, sizeof cut);
    printf("%s%s%s%s%s\n", indent, last ? corner : branch, kv_style_on(style), cut,
           kv_style_off(style));
  }
  if (!n->n_children) return;
  size_t len = strlen(indent);
  char *child_indent = malloc(len + sizeof bar);
  if (!child_indent) return;
  memcpy(child_indent, indent, len);
  memcpy(child_indent + len, last ? "   " : bar, last ? 4 : sizeof bar);
  for (size_t i = 0; i < n->n_children; i++)
    tree_print(n->children[i], p->preview, child_indent, levels + 1, i + 1 == n->n_children, width,
               now);
  free(child_indent);
}

static int print_tree(kv_ctx *ctx, kv_prefix_list *l, size_t n, int width) {
  qsort(l->items, n, sizeof *l->items, compare_for_tree);
  int64_t now = kv_now_ms();
  kv_json j;
  if (ctx->json) {
    kv_json_init(&j, stdout, 1);
    kv_json_object(&j, NULL);
    kv_json_array(&j, "tree");
  }
  int rc = KV_EXIT_OK;
  for (size_t start = 0; start < n;) {
    size_t end = start + 1;
    while (end < n && same_root(l->items[start], l->items[end])) end++;
    tree_node root = {0}, *nodes = calloc(end - start, sizeof *nodes);
    for (size_t i = 0; nodes && i < end - start; i++) nodes[i].prefix = l->items[start + i];
    if (!nodes || tree_link(&root, nodes, end - start)) {
      if (nodes)
        for (size_t i = 0; i < end - start; i++) free(nodes[i].children);
      free(root.children), free(nodes);
      kv_error("out of memory");
      rc = KV_EXIT_ERROR;
      break;
    }
    const Prefixd__V1__Prefix *p = l->items[start];
    if (ctx->json) {
      kv_json_object(&j, NULL);
      kv_json_string(&j, "tenant", p->tenant);
      kv_json_string(&j, "namespace", p->namespace_);
      kv_json_array(&j, "children");
      for (size_t i = 0; i < root.n_children; i++) tree_json(&j, root.children[i], now);
      kv_json_end(&j);
      kv_json_end(&j);
    } else {
      char safe_tenant[256];
      kv_one_line(p->tenant, 0, safe_tenant, sizeof safe_tenant);
      printf("%s%s%s", kv_style_on(KV_BOLD), safe_tenant, kv_style_off(KV_BOLD));
      if (p->namespace_[0]) {
        char safe_ns[256];
        kv_one_line(p->namespace_, 0, safe_ns, sizeof safe_ns);
        printf(" / namespace %s", safe_ns);
      } else {
        printf(" (private)");
      }
      printf("  %zu prefixes\n", end - start);
      for (size_t i = 0; i < root.n_children; i++)
        tree_print(root.children[i], "", "", 0, i + 1 == root.n_children, width, now);
    }
    tree_free(&root);
    free(nodes);
    start = end;
  }
  if (ctx->json) {
    kv_json_end(&j);
    kv_json_end(&j);
  }
  return rc;
}

int kv_cmd_ls(kv_ctx *ctx, int argc, char **argv) {
  const char *tenant = NULL, *sort = NULL;
  int tree = 0, limit_given = 0;
  uint64_t limit = 0;
  const kv_opt opts[] = {{"tenant", 't', KV_OPT_STRING, &tenant, NULL},
                         {"tree", 0, KV_OPT_FLAG, &tree, NULL},
                         {"sort", 's', KV_OPT_STRING, &sort, NULL},
                         {"limit", 'l', KV_OPT_UINT, &limit, &limit_given},
                         {0}};
  const char *pos[1];
  int n_pos, rc = kv_parse(ctx, kv_help_ls, argc, argv, opts, pos, 0, &n_pos);
  if (rc) return rc == KV_PARSE_HELP ? KV_EXIT_OK : rc;
  sort_key = SORT_NONE;
  if (sort) {
    if (!strcmp(sort, "hits"))
      sort_key = SORT_HITS;
    else if (!strcmp(sort, "age"))
      sort_key = SORT_AGE;
    else if (!strcmp(sort, "size"))
      sort_key = SORT_SIZE;
    else
      return kv_usage(ctx, "--sort takes hits, age or size, not '%s'", sort);
  }
  kv_prefix_list l;
  if ((rc = kv_prefixes_fetch(ctx, tenant, &l))) return rc;
  if (sort_key != SORT_NONE) qsort(l.items, l.n, sizeof *l.items, compare_prefixes);
  size_t n = limit_given && limit < l.n ? (size_t)limit : l.n;
  int width = kv_terminal_width();
  if (tree) {
    rc = print_tree(ctx, &l, n, width);
  } else if (ctx->json) {
    int64_t now = kv_now_ms();
    kv_json j;
    kv_json_init(&j, stdout, 1);
    kv_json_object(&j, NULL);
    kv_json_array(&j, "prefixes");
    for (size_t i = 0; i < n; i++) {
      kv_json_object(&j, NULL);
      kv_json_prefix(&j, l.items[i], now);
      kv_json_end(&j);
    }
    kv_json_end(&j);
    kv_json_end(&j);
  } else if (n == 0) {
    printf("no cached prefixes\n");
  } else {
    print_table(&l, n, width);
  }
  kv_prefixes_free(&l);
  return rc;
}

/* ---- show ------------------------------------------------------------------------------------ */

const char kv_help_show[] =
    "usage: kvctl show ID [--json]\n"
    "\n"
    "One prefix in full: id, tenant and namespace, tokens and blocks per tier, hits, last use,\n"
    "pin, and its text. The daemon reports a prefix's text as a preview (its first 64 tokens,\n"
    "about 120 bytes): no RPC returns a cached prefix's tokens, so that is the text shown.\n"
    "ID may be a unique leading part of the id (4 hex digits or more).\n"
    "\n"
    "  --json   the fields of `ls --json` and {\"text\", \"text_is_preview\"}\n";

int kv_cmd_show(kv_ctx *ctx, int argc, char **argv) {
  const char *pos[1];
  int n_pos, rc = kv_parse(ctx, kv_help_show, argc, argv, NULL, pos, 1, &n_pos);
  if (rc) return rc == KV_PARSE_HELP ? KV_EXIT_OK : rc;
  if (n_pos != 1) return kv_usage(ctx, "which prefix? give its id");
  kv_prefix_list l;
  if ((rc = kv_prefixes_fetch(ctx, NULL, &l))) return rc;
  char id[33];
  const Prefixd__V1__Prefix *p;
  if ((rc = kv_prefix_resolve(ctx, &l, pos[0], id, &p))) {
    kv_prefixes_free(&l);
    return rc;
  }
  if (!p) {
    kv_error("NOT_FOUND: no listed prefix %s (ls lists leaves and pinned prefixes; an inner "
             "block of a longer prefix is not listed: see kvctl ls --tree)",
             id);
    kv_prefixes_free(&l);
    return KV_EXIT_ERROR;
  }
  int64_t now = kv_now_ms();
  if (ctx->json) {
    kv_json j;
    kv_json_init(&j, stdout, 1);
    kv_json_object(&j, NULL);
    kv_json_prefix(&j, p, now);
    kv_json_string(&j, "text", p->preview);
    kv_json_bool(&j, "text_is_preview", 1);
    kv_json_end(&j);
  } else {
    char a[64], b[64], tiers[64];
    const char *bold = kv_style_on(KV_BOLD), *plain = kv_style_off(KV_BOLD);
    printf("%s%-10s%s %s%s%s\n", bold, "id", plain, kv_style_on(KV_CYAN), p->id,
           kv_style_off(KV_CYAN));
    kv_one_line(p->tenant, 0, a, sizeof a);
    printf("%s%-10s%s %s\n", bold, "tenant", plain, a);
    kv_one_line(p->namespace_[0] ? p->namespace_ : "(private)", 0, a, sizeof a);
    printf("%s%-10s%s %s\n", bold, "namespace", plain, a);
    printf("%s%-10s%s %u (%llu blocks: %s)\n", bold, "tokens", plain, p->token_count,
           (unsigned long long)total_blocks(p), tiers_text(tiers, sizeof tiers, p));
    printf("%s%-10s%s %s\n", bold, "parent", plain,
           p->parent_id[0] ? p->parent_id : "none (no listed prefix shares its first block)");
    printf("%s%-10s%s %llu\n", bold, "hits", plain, (unsigned long long)p->hits);
    printf("%s%-10s%s %s (%s ago)\n", bold, "last use", plain,
           kv_fmt_time(a, sizeof a, p->last_use_unix_ms),
           kv_fmt_duration(b, sizeof b, (double)(now - p->last_use_unix_ms) / 1000.0));
    if (!p->pinned)
      printf("%s%-10s%s no\n", bold, "pinned", plain);
    else if (!p->pin_expires_unix_ms)
      printf("%s%-10s%s yes, until unpinned\n", bold, "pinned", plain);
    else
      printf("%s%-10s%s yes, until %s (%s left)\n", bold, "pinned", plain,
             kv_fmt_time(a, sizeof a, p->pin_expires_unix_ms),
             kv_fmt_duration(b, sizeof b, (double)(p->pin_expires_unix_ms - now) / 1000.0));
    printf("%s%-10s%s %s(the preview: at most the first 64 tokens)%s\n", bold, "text", plain,
           kv_style_on(KV_DIM), kv_style_off(KV_DIM));
    kv_write_safe_text(stdout, p->preview);
    printf("\n");
  }
  kv_prefixes_free(&l);
  return KV_EXIT_OK;
}

/* ---- evict ----------------------------------------------------------------------------------- */

const char kv_help_evict[] =
    "usage: kvctl evict ID | --tenant T | --all  [--tier gpu|device|host|disk] [--yes] [--json]\n"
    "\n"
    "Drops cached blocks. ID: that prefix, the prefixes below it, and the blocks of its path\n"
    "that no other prefix shares. --tenant T: everything tenant T has cached (admin key).\n"
    "--all: everything you have cached (the admin: everything). --tier limits it to one tier;\n"
    "from the device or host tier the daemon may move blocks to a colder tier instead of\n"
    "dropping them. Pins on what is evicted are released.\n"
    "\n"
    "On a terminal kvctl asks first (\"evict N blocks ...? [y/N]\"); --yes skips the question,\n"
    "and without a terminal on stdin it goes ahead. Declining exits with 1.\n"
    "\n"
    "  --json   {\"blocks_evicted\": {\"device\", \"host\", \"disk\"}, \"total_blocks\"}\n";

/* Blocks that tenant (NULL: every tenant Stats reports to us) holds in tier (0: all). */
static int count_blocks(kv_ctx *ctx, const char *tenant, int tier, uint64_t *blocks) {
  pd_client *c;
  int rc = kv_connect(ctx, &c);
  if (rc) return rc;
  Prefixd__V1__StatsRequest req = PREFIXD__V1__STATS_REQUEST__INIT;
  Prefixd__V1__StatsResponse *r;
  if ((rc = pd_client_stats(c, &req, &r))) return kv_call_failed(ctx, rc);
  *blocks = 0;
  int found = 0;
  for (size_t i = 0; i < r->n_tenants; i++) {
    const Prefixd__V1__TenantStats *t = r->tenants[i];
    if ((tenant && strcmp(t->tenant, tenant)) || !t->blocks) continue;
    found = 1;
    if (tier == 0 || tier == PREFIXD__V1__TIER__TIER_DEVICE) *blocks += t->blocks->device;
    if (tier == 0 || tier == PREFIXD__V1__TIER__TIER_HOST) *blocks += t->blocks->host;
    if (tier == 0 || tier == PREFIXD__V1__TIER__TIER_DISK) *blocks += t->blocks->disk;
  }
  protobuf_c_message_free_unpacked(&r->base, NULL);
  if (tenant && !found) {
    kv_error("NOT_FOUND: no tenant '%s'", tenant);
    return KV_EXIT_ERROR;
  }
  return 0;
}

int kv_cmd_evict(kv_ctx *ctx, int argc, char **argv) {
  const char *tenant = NULL, *tier_name = NULL;
  int all = 0;
  const kv_opt opts[] = {{"tenant", 't', KV_OPT_STRING, &tenant, NULL},
                         {"all", 0, KV_OPT_FLAG, &all, NULL},
                         {"tier", 0, KV_OPT_STRING, &tier_name, NULL},
                         {0}};
  const char *pos[1];
  int n_pos, rc = kv_parse(ctx, kv_help_evict, argc, argv, opts, pos, 1, &n_pos);
  if (rc) return rc == KV_PARSE_HELP ? KV_EXIT_OK : rc;
  if (n_pos + !!tenant + all != 1)
    return kv_usage(ctx, "give exactly one of ID, --tenant T, --all");
  int tier = 0;
  if (tier_name && (tier = kv_tier_parse(tier_name)) < 0)
    return kv_usage(ctx, "--tier takes gpu, device, host or disk, not '%s'", tier_name);
  char where[64];
  snprintf(where, sizeof where, tier ? "from the %s tier" : "from every tier", kv_tier_name(tier));

  Prefixd__V1__EvictRequest req = PREFIXD__V1__EVICT_REQUEST__INIT;
  req.tier = (Prefixd__V1__Tier)tier;
  char id[33], question[512];
  int ask = !ctx->yes && ctx->stdin_tty;
  kv_prefix_list l = {0};
  if (n_pos == 1) {
    if (ask || strlen(pos[0]) != 32) {
      if ((rc = kv_prefixes_fetch(ctx, NULL, &l))) return rc;
    }
    const Prefixd__V1__Prefix *p;
    if ((rc = kv_prefix_resolve(ctx, &l, pos[0], id, &p))) {
      kv_prefixes_free(&l);
      return rc;
    }
    if (p)
      snprintf(question, sizeof question, "evict prefix %.12s (%u tokens, %llu blocks) %s?", id,
               p->token_count, (unsigned long long)total_blocks(p), where);
    else
      snprintf(question, sizeof question, "evict prefix %.12s %s?", id, where);
    kv_prefixes_free(&l);
    req.target_case = PREFIXD__V1__EVICT_REQUEST__TARGET_PREFIX_ID;
    req.prefix_id = id;
  } else if (tenant) {
    uint64_t blocks = 0;
    if (ask && (rc = count_blocks(ctx, tenant, tier, &blocks))) return rc;
    char safe[128];
    kv_one_line(tenant, 64, safe, sizeof safe);
    snprintf(question, sizeof question, "evict %llu blocks of tenant %s %s?",
             (unsigned long long)blocks, safe, where);
    req.target_case = PREFIXD__V1__EVICT_REQUEST__TARGET_TENANT;
    req.tenant = (char *)tenant;
  } else {
    uint64_t blocks = 0;
    if (ask && (rc = count_blocks(ctx, NULL, tier, &blocks))) return rc;
    snprintf(question, sizeof question, "evict %llu blocks, everything you can see cached, %s?",
             (unsigned long long)blocks, where);
    req.target_case = PREFIXD__V1__EVICT_REQUEST__TARGET_ALL;
    req.all = 1;
  }
  if (!kv_confirm(ctx, question)) {
    kv_error("evict: not confirmed, nothing evicted");
    return KV_EXIT_ERROR;
  }
  pd_client *c;
  if ((rc = kv_connect(ctx, &c))) return rc;
  Prefixd__V1__EvictResponse *r;
  if ((rc = pd_client_evict(c, &req, &r))) return kv_call_failed(ctx, rc);
  const Prefixd__V1__TierCounts *e = r->blocks_evicted;
  uint64_t dev = e ? e->device : 0, host = e ? e->host : 0, disk = e ? e->disk : 0;
  if (ctx->json) {
    kv_json j;
    kv_json_init(&j, stdout, 1);
    kv_json_object(&j, NULL);
    kv_json_object(&j, "blocks_evicted");
    kv_json_uint(&j, "device", dev);
    kv_json_uint(&j, "host", host);
    kv_json_uint(&j, "disk", disk);
    kv_json_end(&j);
    kv_json_uint(&j, "total_blocks", dev + host + disk);
    kv_json_end(&j);
  } else {
    printf("evicted %llu blocks: device %llu, host %llu, disk %llu\n",
           (unsigned long long)(dev + host + disk), (unsigned long long)dev,
           (unsigned long long)host, (unsigned long long)disk);
  }
  protobuf_c_message_free_unpacked(&r->base, NULL);
  return KV_EXIT_OK;
}

/* ---- pin / unpin ----------------------------------------------------------------------------- */

const char kv_help_pin[] =
    "usage: kvctl pin ID [--ttl DURATION] [--json]\n"
    "\n"
    "Keeps a prefix (and the blocks it starts with) from being evicted, for DURATION or until\n"
    "`kvctl unpin ID`. Durations: 90 (seconds), 30s, 10m, 1h, 2d, or sums like 1h30m; 0 means\n"
    "until unpinned (the default). A pinned prefix is also written to the disk tier, so it\n"
    "survives a restart. ID may be a unique leading part of the id.\n"
    "\n"
    "  --json   {\"prefix_id\", \"pinned\": true, \"ttl_seconds\"}\n";

const char kv_help_unpin[] = "usage: kvctl unpin ID [--json]\n"
                             "\n"
                             "Takes back a pin taken with `kvctl pin` (or warm --pin-ttl). The\n"
                             "prefix stays cached until evicted in the usual order.\n"
                             "\n"
                             "  --json   {\"prefix_id\", \"pinned\": false}\n";

static int pin_or_unpin(kv_ctx *ctx, int argc, char **argv, int pin) {
  uint32_t ttl = 0;
  const kv_opt pin_opts[] = {{"ttl", 0, KV_OPT_DURATION, &ttl, NULL}, {0}};
  const char *pos[1];
  int n_pos, rc = kv_parse(ctx, pin ? kv_help_pin : kv_help_unpin, argc, argv,
                           pin ? pin_opts : NULL, pos, 1, &n_pos);
  if (rc) return rc == KV_PARSE_HELP ? KV_EXIT_OK : rc;
  if (n_pos != 1) return kv_usage(ctx, "which prefix? give its id");
  char id[33];
  kv_prefix_list l;
  rc = resolve_id(ctx, pos[0], id, &l);
  kv_prefixes_free(&l);
  if (rc) return rc;
  pd_client *c;
  if ((rc = kv_connect(ctx, &c))) return rc;
  if (pin) {
    Prefixd__V1__PinRequest req = PREFIXD__V1__PIN_REQUEST__INIT;
    req.prefix_id = id;
    req.ttl_seconds = ttl;
    Prefixd__V1__PinResponse *r;
    if ((rc = pd_client_pin(c, &req, &r))) return kv_call_failed(ctx, rc);
    protobuf_c_message_free_unpacked(&r->base, NULL);
  } else {
    Prefixd__V1__UnpinRequest req = PREFIXD__V1__UNPIN_REQUEST__INIT;
    req.prefix_id = id;
    Prefixd__V1__UnpinResponse *r;
    if ((rc = pd_client_unpin(c, &req, &r))) return kv_call_failed(ctx, rc);
    protobuf_c_message_free_unpacked(&r->base, NULL);
  }
  if (ctx->json) {
    kv_json j;
    kv_json_init(&j, stdout, 1);
    kv_json_object(&j, NULL);
    kv_json_string(&j, "prefix_id", id);
    kv_json_bool(&j, "pinned", pin);
    if (pin) kv_json_uint(&j, "ttl_seconds", ttl);
    kv_json_end(&j);
  } else if (pin && ttl) {
    char d[32];
    printf("pinned %s for %s\n", id, kv_fmt_duration(d, sizeof d, ttl));
  } else {
    printf(pin ? "pinned %s until unpinned\n" : "unpinned %s\n", id);
  }
  return KV_EXIT_OK;
}

int kv_cmd_pin(kv_ctx *ctx, int argc, char **argv) {
  return pin_or_unpin(ctx, argc, argv, 1);
}

int kv_cmd_unpin(kv_ctx *ctx, int argc, char **argv) {
  return pin_or_unpin(ctx, argc, argv, 0);
}
