/*
 * kvctl_help.c -- the top-level usage and the `kvctl help TOPIC` pages (tiers, tenants, keys,
 * exit-codes, json).
 *
 * Design: each command's own --help text lives next to the command's code (kvctl_*.c), so
 * that a change of flags and its documentation land together; this file holds only what spans
 * commands. The JSON page is the contract for scripts: it lists the shape of every command's
 * document, and tests/daemon/test_kvctl.py asserts those field names exactly.
 */
#include <stdio.h>
#include <string.h>

#include "kvctl.h"

void kv_print_usage(FILE *out) {
  fputs("usage: kvctl [OPTIONS] COMMAND [ARGS]\n"
        "\n"
        "The operator's tool for prefixd and its prefix KV cache.\n"
        "\n"
        "commands:\n"
        "  status                         the daemon at a glance: model, tiers, hit rate, queue\n"
        "  stats [--watch [N]]            per tier, per tenant and storage counters; KV per token\n"
        "  ls [--tree] [--sort hits|age|size] [--tenant T] [--limit N]\n"
        "                                 cached prefixes, as a table or a tree\n"
        "  show ID                        one prefix in full\n"
        "  evict ID | --tenant T | --all [--tier device|host|disk]\n"
        "                                 drop cached blocks (asks first on a terminal)\n"
        "  pin ID [--ttl 1h]              keep a prefix cached, for a while or until unpinned\n"
        "  unpin ID                       let a pinned prefix go\n"
        "  warm --text T | --file F | --chat F\n"
        "                                 prefill and cache a prompt\n"
        "  lookup --text T | --file F     how much of a prompt is cached\n"
        "  gen TEXT [--max-tokens N]      a quick streamed generation\n"
        "  tenant add|ls|rm|limits|rotate-key|grant|revoke\n"
        "                                 tenants and their keys (admin key)\n"
        "  health                         whether the daemon is serving\n"
        "  help [COMMAND|TOPIC]           topics: tiers, tenants, keys, exit-codes, json\n"
        "\n"
        "options (before or after the command):\n"
        "  -a, --addr ADDR   HOST:PORT or unix:/path (PREFIXD_ADDR). Default: the daemon's socket\n"
        "                    $PREFIXD_DATA_DIR/prefixd.sock, else ~/.local/share/prefixd/\n"
        "                    prefixd.sock, when it exists; else 127.0.0.1:7878\n"
        "  -k, --key KEY     API key, a tenant's or the admin's (PREFIXD_KEY)\n"
        "  -j, --json        one JSON document on stdout, for scripts (kvctl help json)\n"
        "  -y, --yes         do not ask before evicting or deleting\n"
        "      --no-color    no colours (also NO_COLOR=1; never when stdout is not a terminal)\n"
        "      --timeout D   deadline of each call, like 30s or 10m (default 10m)\n"
        "      --tls         reach a TCP address over TLS, trusting the system's CAs\n"
        "      --tls-ca FILE over TLS, trusting the CA certificates in FILE (PREFIXD_TLS_CA)\n"
        "      --tls-client-cert FILE, --tls-client-key FILE\n"
        "                    a client certificate and its key, for a daemon started with\n"
        "                    --tls-client-ca (PREFIXD_TLS_CLIENT_CERT, PREFIXD_TLS_CLIENT_KEY)\n"
        "  -h, --help        this text; `kvctl COMMAND --help` for one command\n"
        "      --version\n"
        "\n"
        "exit codes: 0 ok, 1 error, 2 usage, 3 unreachable, 4 auth (kvctl help exit-codes)\n",
        out);
}

static const char topic_tiers[] =
    "Tiers: where a cached block's KV lives\n"
    "\n"
    "prefixd cuts every prompt into blocks (16 tokens by default) and keeps each block's KV\n"
    "tensors, the keys and values of every layer, in one of three tiers, hottest first:\n"
    "\n"
    "  device  GPU memory on the CUDA backend, host memory on the CPU backend. Blocks are\n"
    "          computed here and attention reads them only from here. (--tier gpu is the same.)\n"
    "  host    host RAM below the device pool. When the device tier is full, the least recently\n"
    "          used blocks that no running request holds are spilled here, not dropped.\n"
    "  disk    a store in <data-dir>/kv, every record checksummed. Host blocks spill to it;\n"
    "          blocks used a second time (write filter \"second-use\"), warmed or pinned are\n"
    "          also copied to it ahead of time, so they survive a restart.\n"
    "\n"
    "A request whose prefix sits in a colder tier restores those blocks to the device tier or\n"
    "recomputes them, whichever the measured transfer rates say is faster. A block is never in a\n"
    "hotter tier than its parent (the frontier rule), so eviction always takes the deepest blocks\n"
    "of a prefix first, and `ls` shows a prefix's blocks per tier.\n"
    "\n"
    "Size: kv_bytes_per_token = 2 (K and V) x layers x kv_heads x head_dim x bytes of the cache\n"
    "dtype, and a block holds 16 tokens of it; `kvctl stats` shows the numbers for the model.\n"
    "\n"
    "  kvctl status                     used and capacity of each tier\n"
    "  kvctl stats                      spills, restores, drops, disk writes, checksum failures\n"
    "  kvctl evict --all --tier host    drop what the host tier holds (your prefixes; admin: "
    "all)\n";

static const char topic_tenants[] =
    "Tenants: who shares the cache, and who does not\n"
    "\n"
    "Each API key belongs to one tenant. A tenant's prompts are cached in its private namespace:\n"
    "block keys are salted per tenant, so two tenants sending the same system prompt never share\n"
    "KV and cannot learn about each other's prefixes (another tenant's prefix id reads as\n"
    "NOT_FOUND). To share, the admin grants a named namespace to several tenants; requests then\n"
    "name it (warm/lookup/gen --namespace NS).\n"
    "\n"
    "Started without an admin key and without tenants, prefixd serves one tenant, \"default\",\n"
    "without keys, on loopback only. With an admin key (--admin-key-file or PREFIXD_ADMIN_KEY on\n"
    "the daemon), the admin creates tenants:\n"
    "\n"
    "  kvctl tenant add acme                       prints acme's API key, once\n"
    "  kvctl tenant ls                             names, limits, namespaces\n"
    "  kvctl tenant limits acme --max-device-blocks 4096 --max-concurrent 8\n"
    "  kvctl tenant grant acme shared-docs         share a namespace\n"
    "  kvctl tenant rotate-key acme                a new key; the old one stops at once\n"
    "  kvctl tenant rm acme                        deletes it and evicts its blocks\n"
    "\n"
    "Limits (0 = unlimited): blocks per tier, concurrent requests, context tokens. The admin key\n"
    "sees every tenant's prefixes and stats (ls --tenant T, evict --tenant T); a tenant's key\n"
    "sees only its own.\n";

static const char topic_keys[] =
    "Keys and addresses\n"
    "\n"
    "kvctl sends the key as \"authorization: Bearer <key>\". It is taken from --key, else from\n"
    "PREFIXD_KEY (PREFIXD_API_KEY is read too). Prefer the environment to --key on shared\n"
    "machines, where command lines are visible to other users:\n"
    "\n"
    "  export PREFIXD_KEY=\"$(cat admin.key)\"\n"
    "\n"
    "The admin key is the daemon's --admin-key-file or PREFIXD_ADMIN_KEY; the daemon keeps only\n"
    "its SHA-256. Tenant keys (pfx- and 48 hex digits) are printed once by `tenant add` and\n"
    "`tenant rotate-key`; the daemon stores their hashes in <data-dir>/tenants, so a lost key\n"
    "cannot be shown again, only rotated.\n"
    "\n"
    "Where kvctl connects, first match wins:\n"
    "  1. --addr ADDR (alias -a, --address): HOST:PORT, [IPv6]:PORT, unix:/path or /path\n"
    "  2. PREFIXD_ADDR (PREFIXD_ADDRESS is read too)\n"
    "  3. the daemon's default Unix socket, if it exists: $PREFIXD_DATA_DIR/prefixd.sock, else\n"
    "     ~/.local/share/prefixd/prefixd.sock\n"
    "  4. 127.0.0.1:7878\n"
    "The socket's file permissions decide who may connect to it; a key is still required when\n"
    "the daemon has one. A daemon started with --tls-cert serves TLS on TCP: reach it with\n"
    "--tls (the system's CAs) or --tls-ca FILE (PREFIXD_TLS_CA); its Unix socket stays\n"
    "plaintext.\n"
    "\n"
    "Wrong or missing keys exit with 4 (UNAUTHENTICATED); a tenant key used for an admin command\n"
    "exits with 4 too (PERMISSION_DENIED).\n";

static const char topic_exit_codes[] =
    "Exit codes\n"
    "\n"
    "  0  done\n"
    "  1  error: the server refused the request (NOT_FOUND, INVALID_ARGUMENT, ...), the answer\n"
    "     to a confirmation was not yes, `health` found the daemon not serving, or a deadline\n"
    "     passed\n"
    "  2  usage: unknown command or option, a missing or malformed argument\n"
    "  3  unreachable: nothing listens at the address, the connection broke, or the daemon\n"
    "     answered UNAVAILABLE (starting or draining)\n"
    "  4  authentication: UNAUTHENTICATED (no key, or a wrong one) or PERMISSION_DENIED (a\n"
    "     tenant key used for an admin command)\n"
    "\n"
    "Every error is one line on stderr, \"kvctl: <what>\"; a refusal names the gRPC status:\n"
    "\"kvctl: NOT_FOUND: no cached prefix ...\". stdout then stays empty, also with --json.\n";

static const char topic_json[] =
    "JSON output (--json)\n"
    "\n"
    "Every command prints exactly one JSON document on stdout with --json (stats --watch: one\n"
    "compact document per line), and nothing else; errors stay one line on stderr. Field names\n"
    "are snake_case, follow prefixd.proto where a field comes from it, and are stable: fields may\n"
    "be added, never renamed or removed. Counts are integers, rates and seconds are numbers,\n"
    "times are unix milliseconds (*_unix_ms), tiers are \"device\", \"host\", \"disk\".\n"
    "\n"
    "  status   {address, serving, model, backend, uptime_seconds, requests, queue_depth,\n"
    "            running, preemptions, recomputed_tokens, generated_tokens, spec_draft_tokens,\n"
    "            spec_accepted_tokens, spec_cache_accepted_tokens, tokens_per_second,\n"
    "            hit_tokens,\n"
    "            query_tokens, hit_rate, tiers: [TIER]}\n"
    "           TIER = {tier, blocks_used, blocks_capacity, bytes_used, bytes_capacity,\n"
    "                   disabled, disabled_reason}\n"
    "  stats    status's counters and {kv_bytes_per_token, kv_formula: {layers, kv_heads,\n"
    "            head_dim, dtype_bytes, scale_bytes, block_tokens, block_bytes} or null,\n"
    "            tiers: [TIER],\n"
    "            tenants: [{tenant, requests, hit_tokens, query_tokens, hit_rate,\n"
    "                       computed_tokens, rate_limited, blocks}],\n"
    "            storage: {every StorageStats field; dropped_blocks as {device, host, disk}}}\n"
    "  ls       {prefixes: [PREFIX]}\n"
    "           PREFIX = {id, tenant, namespace, token_count, blocks: {device, host, disk},\n"
    "                     hits, last_use_unix_ms, age_seconds, pinned, pin_expires_unix_ms,\n"
    "                     preview, parent_id}\n"
    "  ls --tree  {tree: [{tenant, namespace, children: [NODE]}]}\n"
    "           NODE = {PREFIX's fields, children: [NODE]} (children continue its blocks)\n"
    "  show     PREFIX and {text, text_is_preview}\n"
    "  evict    {blocks_evicted: {device, host, disk}, total_blocks}\n"
    "  pin      {prefix_id, pinned: true, ttl_seconds}      unpin {prefix_id, pinned: false}\n"
    "  warm     {prefix_id, prompt_tokens, cached_tokens, computed_tokens}\n"
    "  lookup   {prompt_tokens, cached_tokens, cached_tokens_by_tier: {device, host, disk}}\n"
    "  gen      {text, finish_reason, usage: {prompt_tokens, cached_tokens,\n"
    "            cached_tokens_by_tier, generated_tokens}, timings: {queue_ms, restore_ms,\n"
    "            prefill_ms, ttft_ms, decode_ms}}\n"
    "  health   {serving, status}\n"
    "  tenant add         {name, api_key, tenant: TENANT}\n"
    "  tenant ls          {tenants: [TENANT]}\n"
    "           TENANT = {name, created_unix_ms, limits: LIMITS, granted_namespaces: [...]}\n"
    "           LIMITS = {max_blocks: {device, host, disk}, max_concurrent_requests,\n"
    "                     max_context_tokens} (0: unlimited)\n"
    "  tenant limits      {name, limits: LIMITS}\n"
    "  tenant rotate-key  {name, api_key}\n"
    "  tenant rm          {name, deleted: true}\n"
    "  tenant grant / revoke  {tenant, namespace, granted: true|false}\n"
    "\n"
    "  kvctl ls --json | jq -r '.prefixes[] | select(.hits == 0) | .id'\n";

const char *const kv_topic_names[] = {"tiers", "tenants", "keys", "exit-codes", "json", NULL};
static const char *const topic_texts[] = {topic_tiers, topic_tenants, topic_keys, topic_exit_codes,
                                          topic_json};

int kv_print_topic(const char *topic) {
  for (int i = 0; kv_topic_names[i]; i++)
    if (!strcmp(topic, kv_topic_names[i])) {
      fputs(topic_texts[i], stdout);
      return 0;
    }
  if (!strcmp(topic, "exit") || !strcmp(topic, "exit-code")) return kv_print_topic("exit-codes");
  if (!strcmp(topic, "tier")) return kv_print_topic("tiers");
  if (!strcmp(topic, "key")) return kv_print_topic("keys");
  return -1;
}
