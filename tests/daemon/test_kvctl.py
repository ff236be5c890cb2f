"""kvctl against a real prefixd (synthetic model).

Every command in --json mode with exact field sets and values; the connection rules (the
daemon's default Unix socket, PREFIXD_ADDR, --addr and their aliases); keys and the exit codes
(0 ok, 1 error, 2 usage, 3 unreachable, 4 auth) with one-line errors; and the terminal
behaviours through a real pseudo-terminal (os.openpty): colours only on a terminal and without
NO_COLOR, tables fitted to the window's width, the evict / tenant rm confirmation answered y
and n. Also the chat-file reader, JSON escaping, the bash completion and the man page.
"""
import fcntl
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import termios
import time
import unicodedata

import pytest

from conftest import Daemon

ADMIN = "kvctl-test-admin-key-0123456789"
KVCTL_DIR = os.path.join(os.path.dirname(__file__), "../../clients/kvctl")

SYSTEM = "You are a helpful assistant."
FRANCE = SYSTEM + " Answer briefly. What is the capital of France?"
JOKE = SYSTEM + " Answer briefly. Tell me a joke."
FRENCH = "Translate to French: good morning"

PREFIX_FIELDS = {"id", "tenant", "namespace", "token_count", "blocks", "hits", "last_use_unix_ms",
                 "age_seconds", "pinned", "pin_expires_unix_ms", "preview", "parent_id"}
TIER_FIELDS = {"tier", "blocks_used", "blocks_capacity", "bytes_used", "bytes_capacity",
               "disabled", "disabled_reason"}
COUNTER_FIELDS = {"model", "backend", "uptime_seconds", "requests", "queue_depth", "running",
                  "preemptions", "recomputed_tokens", "generated_tokens", "spec_draft_tokens",
                  "spec_accepted_tokens", "spec_cache_accepted_tokens",
                  "tokens_per_second", "hit_tokens", "query_tokens", "hit_rate"}
STORAGE_FIELDS = {"spilled_to_host_blocks", "spilled_to_disk_blocks", "restored_from_host_blocks",
                  "restored_from_disk_blocks", "spill_bytes", "restore_bytes", "dropped_blocks",
                  "disk_writes", "disk_write_bytes", "write_through_blocks",
                  "write_filtered_blocks", "checksum_failures", "read_failures",
                  "map_full_retries", "restores_chosen", "recomputes_chosen",
                  "host_restore_bytes_per_second", "disk_restore_bytes_per_second",
                  "write_filter", "disk_records", "transfers_in_flight", "pin_saves",
                  "pins_restored"}
TENANT_FIELDS = {"name", "created_unix_ms", "limits", "granted_namespaces"}
COMMANDS = ["status", "stats", "health", "ls", "show", "evict", "pin", "unpin", "warm", "lookup",
            "gen", "tenant"]
TENANT_SUBCOMMANDS = ["add", "ls", "rm", "limits", "rotate-key", "grant", "revoke"]


def kvctl_bin():
    path = os.environ.get("KVCTL_BIN")
    if not path:
        pytest.skip("KVCTL_BIN not set")
    return path


def clean_env(extra=None):
    """The environment kvctl runs in: none of the variables it reads, unless given."""
    env = dict(os.environ)
    for name in ("PREFIXD_KEY", "PREFIXD_API_KEY", "PREFIXD_ADDR", "PREFIXD_ADDRESS",
                 "PREFIXD_DATA_DIR", "PREFIXD_TLS_CA", "NO_COLOR", "COLUMNS", "TERM"):
        env.pop(name, None)
    env.update(extra or {})
    return env


def kv(d, *args, key=None, env=None, stdin=None, addr=True):
    """Runs kvctl against daemon d over TCP; returns (rc, stdout, stderr)."""
    extra = dict(env or {})
    if addr:
        extra.setdefault("PREFIXD_ADDR", d.target if d else "127.0.0.1:1")
    if key:
        extra["PREFIXD_KEY"] = key
    p = subprocess.run([kvctl_bin(), *args], capture_output=True, text=True, env=clean_env(extra),
                       timeout=120, input=stdin if stdin is not None else "")
    return p.returncode, p.stdout, p.stderr


def kvj(d, *args, key=None, env=None):
    """kvctl --json: exit 0, nothing on stderr, one JSON document on stdout."""
    rc, out, err = kv(d, *args, "--json", key=key, env=env)
    assert rc == 0 and err == "", (args, rc, err)
    return json.loads(out)


def assert_error(result, code, pattern):
    """An error: the exit code, nothing on stdout, one line 'kvctl: ...' matching pattern."""
    rc, out, err = result
    assert rc == code, (rc, out, err)
    assert out == ""
    assert err.startswith("kvctl: ") and err.count("\n") == 1 and err.endswith("\n"), err
    assert re.search(pattern, err), err


@pytest.fixture
def daemon(tiny_model, data_dir):
    kvctl_bin()
    d = Daemon(tiny_model, data_dir, admin_key=ADMIN)
    yield d
    assert d.stop() == 0


@pytest.fixture
def acme(daemon):
    """A tenant 'acme' on the admin daemon; yields its key."""
    out = kvj(daemon, "tenant", "add", "acme", key=ADMIN)
    return out["api_key"]


# ---- connection -------------------------------------------------------------------------------

def free_port_7878():
    s = socket.socket()
    try:
        return s.connect_ex(("127.0.0.1", 7878)) != 0
    finally:
        s.close()


def test_connects_to_the_default_socket_then_tcp(tiny_model, data_dir):
    kvctl_bin()
    d = Daemon(tiny_model, data_dir)  # single tenant, no keys; socket <data-dir>/prefixd.sock
    try:
        sock = os.path.join(data_dir, "prefixd.sock")
        assert os.path.exists(sock)
        # PREFIXD_DATA_DIR names the daemon's data directory: kvctl finds its socket there
        rc, out, err = kv(None, "status", "--json", env={"PREFIXD_DATA_DIR": data_dir},
                          addr=False)
        assert rc == 0, err
        st = json.loads(out)
        assert st["address"] == "unix:" + sock and st["serving"] is True
        # explicit addresses win: --addr, -a, --address, PREFIXD_ADDR, PREFIXD_ADDRESS, bare path
        for args, env in [(["--addr", d.target], {}), (["-a", d.target], {}),
                          (["--address", d.target], {}), ([], {"PREFIXD_ADDR": d.target}),
                          ([], {"PREFIXD_ADDRESS": d.target}),
                          (["--addr", "unix:" + sock], {}), (["--addr", sock], {})]:
            rc, out, err = kv(None, *args, "status", "--json",
                              env={"PREFIXD_DATA_DIR": "/nonexistent", **env}, addr=False)
            assert rc == 0, (args, env, err)
            want = d.target if d.target in args or d.target in env.values() else "unix:" + sock
            assert json.loads(out)["address"] == want
        # options also after the command
        rc, out, _ = kv(None, "status", "--addr", d.target, "--json", addr=False)
        assert rc == 0 and json.loads(out)["address"] == d.target
    finally:
        assert d.stop() == 0


def test_default_socket_under_home(tiny_model):
    kvctl_bin()
    with tempfile.TemporaryDirectory(prefix="kvh-") as home:
        data = os.path.join(home, ".local/share/prefixd")
        os.makedirs(data)
        d = Daemon(tiny_model, data)
        try:
            rc, out, err = kv(None, "status", "--json", env={"HOME": home}, addr=False)
            assert rc == 0, err
            assert json.loads(out)["address"] == "unix:" + os.path.join(data, "prefixd.sock")
        finally:
            assert d.stop() == 0


def test_unreachable_exits_3(data_dir):
    kvctl_bin()
    assert_error(kv(None, "status"), 3, r"^kvctl: cannot reach prefixd at 127\.0\.0\.1:1: ")
    assert_error(kv(None, "ls", "--addr", "unix:/nonexistent/x.sock", addr=False), 3,
                 r"unix:/nonexistent/x\.sock: No such file or directory")
    assert_error(kv(None, "status", "--addr", "nonsense", addr=False), 2, r"not an address")
    # a stale socket file (nothing listening): kvctl tries it, then TCP 127.0.0.1:7878
    if not free_port_7878():
        pytest.skip("something listens on 127.0.0.1:7878")
    stale = os.path.join(data_dir, "prefixd.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(stale)
    s.close()
    assert_error(kv(None, "status", env={"PREFIXD_DATA_DIR": data_dir}, addr=False), 3,
                 r"cannot reach prefixd at unix:.*prefixd\.sock \(Connection refused\) nor at "
                 r"127\.0\.0\.1:7878 \(Connection refused\)")
    os.unlink(stale)
    assert_error(kv(None, "status", env={"PREFIXD_DATA_DIR": data_dir}, addr=False), 3,
                 r"at 127\.0\.0\.1:7878: Connection refused \(is it running\? no socket at ")


# ---- keys and exit codes ----------------------------------------------------------------------

def test_keys_and_auth_exit_codes(daemon, acme):
    # the key from --key, -k, PREFIXD_KEY or PREFIXD_API_KEY
    for args, env in [(["--key", acme], {}), (["-k", acme], {}), ([], {"PREFIXD_KEY": acme}),
                      ([], {"PREFIXD_API_KEY": acme})]:
        assert kv(daemon, *args, "ls", env=env)[0] == 0, (args, env)
    assert_error(kv(daemon, "stats"), 4,
                 r"^kvctl: UNAUTHENTICATED: .*\(no API key given: use --key or PREFIXD_KEY\)")
    assert_error(kv(daemon, "stats", key="pfx-wrong"), 4, r"^kvctl: UNAUTHENTICATED: ")
    assert_error(kv(daemon, "tenant", "ls", key=acme), 4, r"^kvctl: PERMISSION_DENIED: ")
    assert_error(kv(daemon, "ls", "--tenant", "acme", key=acme), 4, r"PERMISSION_DENIED")
    # health needs no key
    assert kvj(daemon, "health") == {"serving": True, "status": "serving"}


def test_usage_errors_exit_2(daemon, acme):
    cases = [
        (["frobnicate"], r"^kvctl: unknown command 'frobnicate' \(see kvctl --help\)$"),
        (["ls", "--bogus"], r"^kvctl: ls: unknown option '--bogus' \(see kvctl ls --help\)$"),
        (["ls", "--limit", "x"], r"--limit expects a number >= 0, got 'x'"),
        (["ls", "--sort", "colour"], r"--sort takes hits, age or size, not 'colour'"),
        (["ls", "extra"], r"unexpected argument 'extra'"),
        (["evict"], r"evict: give exactly one of ID, --tenant T, --all"),
        (["evict", "abcd", "--all"], r"give exactly one of"),
        (["evict", "--all", "--tier", "ssd"], r"--tier takes gpu, device, host or disk"),
        (["pin"], r"pin: which prefix\? give its id"),
        (["pin", "abcd", "--ttl", "5x"], r"--ttl expects a duration like 30s, 10m, 1h or 2d"),
        (["pin", "xyz"], r"'xyz' is not a prefix id"),
        (["pin", "ab"], r"give at least 4 hex digits"),
        (["show"], r"show: which prefix\?"),
        (["warm"], r"what prompt\? give TEXT, --text T, --file F or --chat F"),
        (["warm", "--text", "a", "--file", "b"], r"give only one of"),
        (["lookup", "a", "--text", "b"], r"give only one of"),
        (["gen", "hi", "--temperature", "hot"], r"--temperature expects a number"),
        (["gen", "hi", "--json-object", "--schema", "x"], r"exclude each other"),
        (["stats", "--count", "0"], r"--count must be at least 1"),
        (["stats", "--timeout", "0"], r"--timeout expects a duration"),
        (["tenant"], r"^kvctl: tenant: which one\?"),
        (["tenant", "frob"], r"^kvctl: tenant: unknown command 'frob'"),
        (["tenant", "add"], r"tenant add: give the new tenant's name"),
        (["tenant", "limits", "acme", "--max-concurrent", "lots"],
         r"--max-concurrent expects a number or 'unlimited'"),
        (["help", "nope"], r"no command or topic 'nope' \(topics: tiers, tenants, keys, "
                           r"exit-codes, json\)"),
        (["--json", "-x"], r"unknown option '-x'"),
    ]
    for args, pattern in cases:
        assert_error(kv(daemon, *args, key=ADMIN), 2, pattern)
    rc, out, err = kv(daemon)
    assert rc == 2 and out == "" and err.startswith("usage: kvctl")


def test_help_everywhere():
    kvctl_bin()
    rc, out, _ = kv(None, "--help")
    assert rc == 0 and out.startswith("usage: kvctl [OPTIONS] COMMAND [ARGS]")
    for cmd in COMMANDS:
        assert re.search(rf"^  {cmd}\b", out, re.M), cmd
    for cmd in COMMANDS:
        rc, text, err = kv(None, cmd, "--help")
        assert rc == 0 and err == "" and text.startswith(f"usage: kvctl {cmd}"), (cmd, text)
        assert kv(None, "help", cmd)[1] == text
        assert kv(None, cmd, "-h")[1] == text
    for sub in TENANT_SUBCOMMANDS:
        rc, text, _ = kv(None, "tenant", sub, "--help")
        want = "grant" if sub == "revoke" else sub
        assert rc == 0 and text.startswith(f"usage: kvctl tenant {want}"), (sub, text)
    titles = {"tiers": "Tiers: ", "tenants": "Tenants: ", "keys": "Keys and addresses",
              "exit-codes": "Exit codes", "json": "JSON output (--json)"}
    for topic, title in titles.items():
        rc, text, _ = kv(None, "help", topic)
        assert rc == 0 and text.startswith(title) and len(text.splitlines()) > 8, topic
    rc, text, _ = kv(None, "--version")
    assert rc == 0 and re.fullmatch(r"kvctl \d+\.\d+\.\d+\n", text)


# ---- commands in --json mode ------------------------------------------------------------------

def test_status_and_stats_json(daemon, acme):
    kvj(daemon, "warm", "--text", FRANCE, key=acme)
    kvj(daemon, "warm", "--text", FRANCE, key=acme)
    st = kvj(daemon, "status", key=acme)
    assert set(st) == {"address", "serving", "tiers"} | COUNTER_FIELDS
    assert st["address"] == daemon.target and st["serving"] is True and st["backend"] == "cpu"
    assert st["model"].startswith("llama: 2 layers, d_model 64, 4 heads (2 kv, head_dim 16)")
    assert st["requests"] == 2 and st["queue_depth"] == 0 and st["running"] == 0
    assert st["preemptions"] == 0 and st["recomputed_tokens"] == 0
    assert st["hit_tokens"] > 0 and st["hit_rate"] == st["hit_tokens"] / st["query_tokens"]
    assert [t["tier"] for t in st["tiers"]] == ["device", "host", "disk"]
    assert all(set(t) == TIER_FIELDS for t in st["tiers"])
    device = st["tiers"][0]
    assert device["blocks_used"] > 0 and device["bytes_used"] == device["blocks_used"] * 4096

    s = kvj(daemon, "stats", key=acme)
    assert set(s) == {"time_unix_ms", "kv_bytes_per_token", "kv_formula", "tiers", "tenants",
                      "storage"} | COUNTER_FIELDS
    # the synthetic model: 2 layers, 2 kv heads, head_dim 16, f16 cache, 16-token blocks
    assert s["kv_bytes_per_token"] == 256
    assert s["kv_formula"] == {"layers": 2, "kv_heads": 2, "head_dim": 16, "dtype_bytes": 2,
                               "scale_bytes": 0, "block_tokens": 16, "block_bytes": 4096}
    assert set(s["storage"]) == STORAGE_FIELDS
    assert s["storage"]["write_filter"] == "second-use"
    assert set(s["storage"]["dropped_blocks"]) == {"device", "host", "disk"}
    assert [t["tenant"] for t in s["tenants"]] == ["acme"]  # a tenant sees itself only
    t = s["tenants"][0]
    assert set(t) == {"tenant", "requests", "hit_tokens", "query_tokens", "hit_rate",
                      "computed_tokens", "rate_limited", "blocks"}
    assert t["requests"] == 2 and t["blocks"]["device"] == device["blocks_used"]
    # computed: every prompt token not found in the cache, and every generated one
    assert 0 < t["computed_tokens"] and t["rate_limited"] == 0
    assert abs(s["time_unix_ms"] / 1000 - time.time()) < 60

    # the human form shows the formula with the model's numbers
    rc, out, _ = kv(daemon, "stats", key=acme)
    assert rc == 0
    assert "  256 B = 2 \u00b7 2 layers \u00b7 2 kv_heads \u00b7 16 head_dim \u00b7 2 B (f16 or bf16)" in out
    assert "a block of 16 tokens: 4.0 KiB (4,096 B)" in out
    assert re.search(r"^acme +2 +\S+%", out, re.M)
    for label in ("spilled", "restored", "dropped", "disk writes", "write filter", "disk store",
                  "cold prefixes", "measured rates"):
        assert re.search(rf"^  {label} ", out, re.M), label
    rc, out, _ = kv(daemon, "status", key=acme)
    assert rc == 0 and re.search(r"^device +\d+ / 262,144 +[\d.]+ KiB / 1\.0 GiB +0\.0%$", out, re.M)

    # --watch: a bounded loop, one compact document per frame
    t0 = time.time()
    rc, out, err = kv(daemon, "stats", "--watch", "1", "--count", "3", "--json", key=acme)
    assert rc == 0 and err == ""
    frames = [json.loads(line) for line in out.splitlines()]
    assert len(frames) == 3 and all(set(f) == set(s) for f in frames)
    assert 1.8 < time.time() - t0 < 30
    assert frames[0]["time_unix_ms"] < frames[2]["time_unix_ms"]
    rc, out, _ = kv(daemon, "stats", "-n", "2", "-w", "1", key=acme)
    assert rc == 0 and out.count("kvctl stats every 1s") == 2 and out.count("KV PER TOKEN") == 2


def test_stats_formula_of_an_fp8_cache(tiny_model, data_dir):
    """An fp8 cache adds a 4-byte scale per row of head_dim values: kvctl recognises it."""
    d = Daemon(tiny_model, data_dir, extra=("--cache-dtype", "fp8"))
    try:
        s = kvj(d, "stats")
        assert s["kv_bytes_per_token"] == 2 * 2 * 2 * (16 + 4)
        assert s["kv_formula"] == {"layers": 2, "kv_heads": 2, "head_dim": 16, "dtype_bytes": 1,
                                   "scale_bytes": 4, "block_tokens": 16, "block_bytes": 2560}
        rc, out, err = kv(d, "stats")
        assert rc == 0 and err == "", err
        assert "(16 head_dim \u00b7 1 B + 4 B) (fp8, a scale per row)" in out, out
    finally:
        assert d.stop() == 0


def test_stats_watch_stops_on_sigint(daemon, acme):
    env = clean_env({"PREFIXD_ADDR": daemon.target, "PREFIXD_KEY": acme})
    p = subprocess.Popen([kvctl_bin(), "stats", "--watch", "--json"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert json.loads(line)["requests"] == 0
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=10)
    assert p.returncode == 0 and err == ""


def test_prefix_commands_json(daemon, acme, tmp_path):
    w1 = kvj(daemon, "warm", "--text", SYSTEM, "--pin-ttl", "1h", key=acme)
    assert set(w1) == {"prefix_id", "prompt_tokens", "cached_tokens", "computed_tokens"}
    assert w1["cached_tokens"] == 0 and w1["computed_tokens"] == w1["prompt_tokens"] > 0
    w2 = kvj(daemon, "warm", FRANCE, key=acme)  # a positional TEXT still works
    assert w2["cached_tokens"] >= 16 and len(w2["prefix_id"]) == 32
    prompt_file = tmp_path / "joke.txt"
    prompt_file.write_text(JOKE)
    w3 = kvj(daemon, "warm", "--file", str(prompt_file), key=acme)
    rc, out, _ = kv(daemon, "warm", "--file", "-", "--json", key=acme, stdin=FRENCH)
    assert rc == 0
    w4 = json.loads(out)

    look = kvj(daemon, "lookup", "--text", FRANCE, key=acme)
    assert look == {"prompt_tokens": w2["prompt_tokens"], "cached_tokens": w2["prompt_tokens"],
                    "cached_tokens_by_tier": {"device": w2["prompt_tokens"], "host": 0,
                                              "disk": 0}}
    assert kvj(daemon, "lookup", "--file", str(prompt_file), key=acme)["cached_tokens"] == \
        w3["prompt_tokens"]
    miss = kvj(daemon, "lookup", "nothing like this was cached", key=acme)
    assert miss["cached_tokens"] == 0

    listing = kvj(daemon, "ls", key=acme)
    assert set(listing) == {"prefixes"}
    by_id = {p["id"]: p for p in listing["prefixes"]}
    warmed = {w1["prefix_id"], w2["prefix_id"], w3["prefix_id"], w4["prefix_id"]}
    # the four prompts, and the blocks where their paths part (shared prefixes, with own hits)
    assert set(by_id) >= warmed
    for pid in set(by_id) - warmed:
        shared = by_id[pid]["token_count"]
        assert sum(by_id[w]["token_count"] > shared for w in warmed) >= 2, by_id[pid]
    listing = {"prefixes": [p for p in listing["prefixes"] if p["id"] in warmed]}
    now_ms = time.time() * 1000
    for p in listing["prefixes"]:
        assert set(p) == PREFIX_FIELDS and set(p["blocks"]) == {"device", "host", "disk"}
        assert p["tenant"] == "acme" and p["namespace"] == ""
        assert abs(p["last_use_unix_ms"] - now_ms) < 60000 and 0 <= p["age_seconds"] < 60
    sysp, france = by_id[w1["prefix_id"]], by_id[w2["prefix_id"]]
    assert sysp["preview"] == SYSTEM and sysp["token_count"] == w1["prompt_tokens"]
    assert sysp["pinned"] is True and abs(sysp["pin_expires_unix_ms"] - now_ms - 3600e3) < 60e3
    assert france["preview"] == FRANCE and france["pinned"] is False
    assert france["pin_expires_unix_ms"] == 0
    assert france["blocks"]["device"] == (france["token_count"] + 15) // 16
    assert by_id[w4["prefix_id"]]["preview"] == FRENCH

    # sorting and limits
    kvj(daemon, "lookup", "--text", JOKE, key=acme)  # lookups do not count as hits
    kvj(daemon, "warm", "--text", JOKE, key=acme)
    by_size = kvj(daemon, "ls", "--sort", "size", key=acme)["prefixes"]
    assert [p["token_count"] for p in by_size] == sorted((p["token_count"] for p in by_size),
                                                         reverse=True)
    by_hits = kvj(daemon, "ls", "--sort", "hits", key=acme)["prefixes"]
    assert [p["hits"] for p in by_hits] == sorted((p["hits"] for p in by_hits), reverse=True)
    assert by_hits[0]["hits"] > by_hits[-1]["hits"] == 0
    by_age = kvj(daemon, "ls", "--sort", "age", key=acme)["prefixes"]
    assert [p["id"] for p in by_age if p["id"] in warmed][0] == w3["prefix_id"]
    assert [p["last_use_unix_ms"] for p in by_age] == \
        sorted((p["last_use_unix_ms"] for p in by_age), reverse=True)
    assert len(kvj(daemon, "ls", "--sort", "age", "--limit", "2", key=acme)["prefixes"]) == 2
    assert kvj(daemon, "ls", "--limit", "0", key=acme) == {"prefixes": []}
    # the admin sees every tenant's, or one tenant's with --tenant
    assert {p["id"] for p in kvj(daemon, "ls", "--tenant", "acme", key=ADMIN)["prefixes"]} == \
        set(by_id)
    assert_error(kv(daemon, "ls", "--tenant", "nobody", key=ADMIN), 1,
                 r"^kvctl: NOT_FOUND: no tenant 'nobody'")

    # show, by whole id and by a unique leading part
    shown = kvj(daemon, "show", w2["prefix_id"][:6], key=acme)
    assert set(shown) == PREFIX_FIELDS | {"text", "text_is_preview"}
    assert shown["id"] == w2["prefix_id"] and shown["text"] == FRANCE
    assert shown["text_is_preview"] is True
    rc, out, _ = kv(daemon, "show", w2["prefix_id"], key=acme)
    assert rc == 0 and f"id         {w2['prefix_id']}" in out and out.endswith(FRANCE + "\n")
    assert f"parent     {shown['parent_id'] or 'none '}" in out
    assert_error(kv(daemon, "show", "ffff" if not w2["prefix_id"].startswith("ffff") else "eeee",
                    key=acme), 1, r"^kvctl: NOT_FOUND: no cached prefix starts with ")

    # pin with a duration, unpin
    assert kvj(daemon, "pin", w2["prefix_id"][:8], "--ttl", "1h30m", key=acme) == \
        {"prefix_id": w2["prefix_id"], "pinned": True, "ttl_seconds": 5400}
    p = kvj(daemon, "show", w2["prefix_id"], key=acme)
    assert p["pinned"] and abs(p["pin_expires_unix_ms"] - time.time() * 1000 - 5400e3) < 60e3
    assert kvj(daemon, "unpin", w2["prefix_id"], key=acme) == \
        {"prefix_id": w2["prefix_id"], "pinned": False}
    assert kvj(daemon, "pin", w2["prefix_id"], key=acme)["ttl_seconds"] == 0
    assert kvj(daemon, "show", w2["prefix_id"], key=acme)["pin_expires_unix_ms"] == 0
    for ttl, seconds in [("30s", 30), ("10m", 600), ("2d", 172800), ("90", 90)]:
        assert kvj(daemon, "pin", w4["prefix_id"], "--ttl", ttl, key=acme)["ttl_seconds"] == seconds
    assert_error(kv(daemon, "unpin", w3["prefix_id"], key=acme), 1,
                 r"^kvctl: FAILED_PRECONDITION: prefix .* is not pinned$")

    # evict one prefix (no terminal on stdin: no question), then everything of the tenant
    ev = kvj(daemon, "evict", w4["prefix_id"], key=acme)
    assert set(ev) == {"blocks_evicted", "total_blocks"}
    assert ev["blocks_evicted"]["device"] == (by_id[w4["prefix_id"]]["token_count"] + 15) // 16
    assert ev["total_blocks"] == sum(ev["blocks_evicted"].values())
    assert_error(kv(daemon, "pin", w4["prefix_id"], key=acme), 1, r"^kvctl: NOT_FOUND: ")
    assert kvj(daemon, "evict", "--all", "--tier", "host", key=acme)["blocks_evicted"]["device"] == 0
    # a tier named moves blocks one tier colder, pinned ones excepted: unpin first
    for w in (w1, w2):
        kvj(daemon, "unpin", w["prefix_id"], key=acme)
    used = kvj(daemon, "stats", key=acme)["tenants"][0]["blocks"]
    ev = kvj(daemon, "evict", "--tenant", "acme", "--tier", "gpu", key=ADMIN)
    assert ev["blocks_evicted"]["device"] == used["device"] > 0
    left = kvj(daemon, "ls", key=acme)["prefixes"]
    assert left and all(p["blocks"]["device"] == 0 for p in left)  # spilled to host, or gone
    ev = kvj(daemon, "evict", "--all", key=acme)
    assert ev["blocks_evicted"]["device"] == 0 and ev["total_blocks"] > 0
    assert kvj(daemon, "ls", key=acme) == {"prefixes": []}


def test_ls_tree(daemon, acme):
    a = kvj(daemon, "warm", "--text", SYSTEM, "--pin-ttl", "1h", key=acme)["prefix_id"]
    b = kvj(daemon, "warm", "--text", FRANCE, key=acme)["prefix_id"]
    c = kvj(daemon, "warm", "--text", JOKE, key=acme)["prefix_id"]
    d = kvj(daemon, "warm", "--text", FRENCH, key=acme)["prefix_id"]
    tree = kvj(daemon, "ls", "--tree", key=acme)
    assert set(tree) == {"tree"} and len(tree["tree"]) == 1
    root = tree["tree"][0]
    assert set(root) == {"tenant", "namespace", "children"}
    assert (root["tenant"], root["namespace"]) == ("acme", "")

    def shape(node):
        assert set(node) == PREFIX_FIELDS | {"children"}
        return (node["id"], [shape(n) for n in node["children"]])

    # the radix tree itself, each child naming its parent. The system prompt (24 tokens: a full
    # block and 8 tokens) and the two questions share its first block, a prefix of its own where
    # their paths part; the questions go on to share a block with " Answer briefly. ", where
    # theirs part; the translation shares nothing with them.
    ancestors = {}

    def walk(node, above):
        ancestors[node["id"]] = list(above)
        assert node["parent_id"] == (above[-1] if above else "")
        for child in node["children"]:
            walk(child, above + [node["id"]])

    for n in root["children"]:
        walk(n, [])
    listed = kvj(daemon, "ls", key=acme)["prefixes"]
    assert set(ancestors) == {p["id"] for p in listed}
    assert {a, b, c, d} <= set(ancestors)
    first_block = ancestors[a][-1]
    assert len(ancestors[a]) == 1 and first_block in ancestors[b] and first_block in ancestors[c]
    assert ancestors[b] == ancestors[c] == [first_block, ancestors[b][-1]]
    assert ancestors[d] == [] and root["children"][0]["id"] == d  # "Translate" < "You are"
    [shape(n) for n in root["children"]]  # every node has exactly the documented fields
    rc, out, _ = kv(daemon, "ls", "--tree", env={"COLUMNS": "200"}, key=acme)
    assert rc == 0
    lines = out.splitlines()
    n_listed = len(kvj(daemon, "ls", key=acme)["prefixes"])
    assert lines[0] == f"acme (private)  {n_listed} prefixes"
    assert re.fullmatch(rf"\u251c\u2500 {d[:12]}  \d+ tok  device \d+  0 hits  \d+s  \"{FRENCH}\"",
                        lines[1])
    assert any(re.search(rf"\u2500 {a[:12]}  \d+ tok  device \d+  \d+ hits  \d+s  pinned 59m  "
                         rf"\"", ln) for ln in lines), out
    assert any(re.search(rf"\u2500 {c[:12]} .*  \"\u2026[^\"]*Tell me a joke\.\"", ln)
               for ln in lines)
    assert any(re.search(rf"\u2500 {b[:12]} .*  \"\u2026[^\"]*What is the capital of France\?\"",
                         ln) for ln in lines)
    assert len(lines) >= 6
    # tenants never share blocks: the admin's tree has one root per tenant
    other = kvj(daemon, "tenant", "add", "other", key=ADMIN)["api_key"]
    kvj(daemon, "warm", "--text", SYSTEM, key=other)
    roots = kvj(daemon, "ls", "--tree", key=ADMIN)["tree"]
    assert [(r["tenant"], len(r["children"])) for r in roots] == [("acme", 2), ("other", 1)]


def test_gen(daemon, acme):
    g = kvj(daemon, "gen", "hello there", "--max-tokens", "5", key=acme)
    assert set(g) == {"text", "finish_reason", "usage", "timings"}
    assert g["finish_reason"] == "length" and isinstance(g["text"], str)
    assert set(g["usage"]) == {"prompt_tokens", "cached_tokens", "cached_tokens_by_tier",
                               "generated_tokens"}
    assert g["usage"]["generated_tokens"] == 5 and g["usage"]["prompt_tokens"] > 0
    assert set(g["timings"]) == {"queue_ms", "restore_ms", "prefill_ms", "ttft_ms", "decode_ms"}
    assert all(isinstance(v, float) and v >= 0 for v in g["timings"].values())
    # the same greedy generation again, streamed: the prompt now comes from the cache
    rc, out, err = kv(daemon, "gen", "hello there", "-n", "5", key=acme)
    assert rc == 0 and out == g["text"]
    first, second = err.splitlines()
    m = re.fullmatch(r"\[prompt (\d+) tokens, (\d+) cached \(device (\d+), host 0, disk 0\); "
                     r"5 generated; finish: length\]", first)
    assert m and int(m[1]) == g["usage"]["prompt_tokens"] and int(m[2]) > 0
    assert second.startswith("[queue ") and "first token" in second
    chat = kvj(daemon, "gen", "--chat", write_chat([["user", "hi"]]), "--max-tokens", "3",
               key=acme)
    assert chat["usage"]["generated_tokens"] <= 3
    nc = kvj(daemon, "gen", "hello there", "--max-tokens", "2", "--no-cache", key=acme)
    assert nc["usage"]["cached_tokens"] == 0
    # structured output: a schema whose only choices are forced (one key, one enum value)
    schema = os.path.join(os.path.dirname(daemon.log_path), "schema.json")
    with open(schema, "w") as f:
        json.dump({"type": "object", "properties": {"ok": {"const": True}}, "required": ["ok"]}, f)
    s = kvj(daemon, "gen", "hello", "--schema", schema, "--max-tokens", "200", key=acme)
    assert s["finish_reason"] == "stop" and json.loads(s["text"]) == {"ok": True}, s
    o = kvj(daemon, "gen", "hello", "--json-object", "--max-tokens", "400", key=acme)
    assert o["text"].lstrip().startswith("{"), o
    with open(schema, "w") as f:
        json.dump({"type": "string", "format": "iri"}, f)
    rc, out, err = kv(daemon, "gen", "hello", "--schema", schema, key=acme)
    assert rc != 0 and "'format' 'iri' is not supported" in err, err


def test_tenant_commands_json(daemon):
    added = kvj(daemon, "tenant", "add", "acme", "--max-device-blocks", "100",
                "--max-concurrent", "4", "--tokens-per-minute", "60000", key=ADMIN)
    assert set(added) == {"name", "api_key", "tenant"}
    key = added["api_key"]
    assert added["name"] == "acme" and re.fullmatch(r"pfx-[0-9a-f]{48}", key)
    t = added["tenant"]
    assert set(t) == TENANT_FIELDS and t["name"] == "acme" and t["granted_namespaces"] == []
    assert t["limits"] == {"max_blocks": {"device": 100, "host": 0, "disk": 0},
                           "max_concurrent_requests": 4, "max_context_tokens": 0,
                           "max_tokens_per_minute": 60000, "max_requests_per_minute": 0}
    assert abs(t["created_unix_ms"] - time.time() * 1000) < 60000
    # the key works, and is printed alone on stdout in the human form
    assert kv(daemon, "ls", key=key)[0] == 0
    rc, out, err = kv(daemon, "tenants", "create", "beta", key=ADMIN)  # the older names
    assert rc == 0 and re.fullmatch(r"pfx-[0-9a-f]{48}\n", out) and err == ""

    listing = kvj(daemon, "tenant", "ls", key=ADMIN)
    assert set(listing) == {"tenants"}
    assert [x["name"] for x in listing["tenants"]] == ["acme", "beta"]
    assert listing["tenants"][0] == t
    assert kvj(daemon, "tenants", "list", key=ADMIN) == listing

    # limits: shown, then changed where a flag says so, the others kept
    assert kvj(daemon, "tenant", "limits", "acme", key=ADMIN) == {"name": "acme",
                                                                  "limits": t["limits"]}
    changed = kvj(daemon, "tenant", "limits", "acme", "--max-context", "512",
                  "--max-device-blocks", "unlimited", "--requests-per-minute", "30", key=ADMIN)
    assert changed == {"name": "acme", "limits": {
        "max_blocks": {"device": 0, "host": 0, "disk": 0}, "max_concurrent_requests": 4,
        "max_context_tokens": 512, "max_tokens_per_minute": 60000, "max_requests_per_minute": 30}}
    assert kvj(daemon, "tenant", "ls", key=ADMIN)["tenants"][0]["limits"] == changed["limits"]
    rc, out, _ = kv(daemon, "tenant", "limits", "acme", key=ADMIN)
    assert out == ("acme: max blocks device -, host -, disk -; max concurrent requests 4; "
                   "max context tokens 512; per minute 60,000 tokens, 30 requests  "
                   "(- = unlimited)\n")
    assert_error(kv(daemon, "tenant", "limits", "nobody", key=ADMIN), 1,
                 r"^kvctl: NOT_FOUND: no tenant 'nobody'$")

    # grant and revoke a shared namespace
    assert kvj(daemon, "tenant", "grant", "acme", "docs", key=ADMIN) == \
        {"tenant": "acme", "namespace": "docs", "granted": True}
    assert kvj(daemon, "tenant", "ls", key=ADMIN)["tenants"][0]["granted_namespaces"] == ["docs"]
    w = kvj(daemon, "warm", "--text", FRANCE, "--namespace", "docs", key=key)
    assert kvj(daemon, "show", w["prefix_id"], key=key)["namespace"] == "docs"
    rc, out, _ = kv(daemon, "ls", "--tree", key=key)
    assert out.splitlines()[0] == "acme / namespace docs  1 prefixes"
    assert kvj(daemon, "tenant", "revoke", "acme", "docs", key=ADMIN)["granted"] is False

    # rotate-key: the new key works, the old one no longer does
    rotated = kvj(daemon, "tenant", "rotate-key", "acme", key=ADMIN)
    assert set(rotated) == {"name", "api_key"} and rotated["name"] == "acme"
    assert rotated["api_key"] != key and re.fullmatch(r"pfx-[0-9a-f]{48}", rotated["api_key"])
    assert_error(kv(daemon, "ls", key=key), 4, r"UNAUTHENTICATED")
    assert kv(daemon, "ls", key=rotated["api_key"])[0] == 0
    assert kvj(daemon, "tenants", "rotate", "beta", key=ADMIN)["name"] == "beta"

    # rm (no terminal: no question)
    assert kvj(daemon, "tenant", "rm", "acme", key=ADMIN) == {"name": "acme", "deleted": True}
    assert kvj(daemon, "tenants", "delete", "beta", key=ADMIN)["deleted"] is True
    assert kvj(daemon, "tenant", "ls", key=ADMIN) == {"tenants": []}
    assert_error(kv(daemon, "tenant", "rm", "acme", key=ADMIN), 1, r"^kvctl: NOT_FOUND: ")
    assert_error(kv(daemon, "tenant", "add", "bad name!", key=ADMIN), 1,
                 r"^kvctl: INVALID_ARGUMENT: ")


# ---- prompt files and JSON escaping -----------------------------------------------------------

def write_chat(messages, raw=None):
    fd, path = tempfile.mkstemp(suffix=".json")
    with os.fdopen(fd, "w") as f:
        f.write(raw if raw is not None else
                json.dumps([{"role": r, "content": c} for r, c in messages]))
    return path


def test_chat_files(daemon, acme):
    # escapes, a surrogate pair, other members of any type, the {"messages": [...]} form
    raw = ('[{"role": "system", "content": "Be \\"terse\\".\\n\\u00e9 \\ud83d\\ude00 \\/"},\n'
           ' {"role": "user", "content": "Hi", "name": {"x": [1, -2.5e3, null, true, "s"]}}]')
    w = kvj(daemon, "warm", "--chat", write_chat(None, raw), key=acme)
    look = kvj(daemon, "lookup", "--chat", write_chat(
        [["system", "Be \"terse\".\n\u00e9 \U0001F600 /"], ["user", "Hi"]]), key=acme)
    assert look["cached_tokens"] == look["prompt_tokens"] == w["prompt_tokens"]
    wrapped = write_chat(None, '{"model": "x", "messages": ' + raw + ', "stream": false}')
    assert kvj(daemon, "lookup", "--chat", wrapped, key=acme)["cached_tokens"] == \
        w["prompt_tokens"]
    preview = kvj(daemon, "show", w["prefix_id"], key=acme)["preview"]
    assert "Be \"terse\".\n\u00e9 \U0001F600 /" in preview and "<|im_start|>" in preview
    bad = [
        ('[{"role": "user"}]', r'1:2: a message without "content"'),
        ('[{"role": "user", "content": "x"},\n {"role": 3}]', r'2:11: "role" must be a string'),
        ('[{"role": "user", "content": "x" "y"}]', r"1:34: expected ',' or '}'"),
        ('[{"role": "user", "content": "a\nb"}]', r"1:32: control character in a string"),
        ('[{"role": "user", "content": "\\ud800"}]', r"1:31: a high surrogate \\u escape "
                                                    r"without its low half"),
        ('[{"role": "user", "content": "\\u0000"}]', r"1:31: \\u0000 is not allowed"),
        ('[{"role": "", "content": "x"}]', r'1:2: a message with an empty "role"'),
        ('[]', r"1:1: no messages"),
        ('{"msgs": []}', r'1:13: no "messages" array in the object'),
        ('[{"role": "user", "content": "x", "role": "system"}]', r'1:43: "role" given twice'),
        ('[{"role": "user", "content": "x"}] x', r"1:36: unexpected text after the messages"),
        ('[{"role": "user", "content": "x", "n": 01}]', r"1:40: expected a value"),
        ('"x"', r"1:1: expected an array of messages"),
        ('[{"role": "user", "content": "x', r"1:30: unterminated string"),
    ]
    for text, pattern in bad:
        path = write_chat(None, text)
        assert_error(kv(daemon, "warm", "--chat", path, key=acme), 1,
                     rf"^kvctl: warm: {re.escape(path)}:{pattern}")
    assert_error(kv(daemon, "warm", "--chat", "/nonexistent.json", key=acme), 1,
                 r"^kvctl: warm: cannot read /nonexistent\.json: No such file or directory$")


def test_json_strings_are_escaped_and_tables_sanitised(daemon, acme):
    text = 'He said "hi" \\ back\ttab \x01 \x1b[31mred \u00e9 \U0001F600 end'
    w = kvj(daemon, "warm", "--text", text, key=acme)
    rc, out, _ = kv(daemon, "ls", "--json", key=acme)
    assert '\\"hi\\"' in out and "\\\\ back" in out and "\\ttab" in out and "\\u0001" in out
    assert "\\u001b[31m" in out and "\x1b" not in out and "\x01" not in out
    assert json.loads(out)["prefixes"][0]["preview"] == text
    # a table never passes control characters through to the terminal
    rc, out, _ = kv(daemon, "ls", env={"COLUMNS": "300"}, key=acme)
    assert "\x1b" not in out and "\x01" not in out
    assert 'He said "hi" \\ back\\ttab \\x01 \\x1b[31mred \u00e9 \U0001F600 end' in out
    rc, out, _ = kv(daemon, "show", w["prefix_id"], key=acme)
    assert "\x1b" not in out and "\\x1b[31mred" in out and "back\ttab" in out


# ---- terminal behaviours, through a pseudo-terminal --------------------------------------------

def run_tty(args, env, cols=80, rows=24, answer=None, timeout=60):
    """Runs kvctl with stdin, stdout and stderr on a new pseudo-terminal of cols x rows.
    If answer is given, types it after the "[y/N]" question. Returns (rc, output)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    p = subprocess.Popen([kvctl_bin(), *args], stdin=slave, stdout=slave, stderr=slave, env=env,
                         start_new_session=True)
    os.close(slave)
    out, answered, deadline = b"", False, time.time() + timeout
    try:
        while True:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.time()))
            if not ready:
                p.kill()
                raise AssertionError(f"kvctl {args} hung; output so far: {out!r}")
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
            if answer is not None and not answered and b"[y/N] " in out:
                os.write(master, answer.encode())
                answered = True
        rc = p.wait(timeout=timeout)
    finally:
        os.close(master)
    return rc, out.decode("utf-8", "replace").replace("\r\n", "\n")


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def display_width(line):
    line = ANSI.sub("", line)
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in line)


def tty_env(d, key, **extra):
    return clean_env({"PREFIXD_ADDR": d.target, "PREFIXD_KEY": key, "TERM": "xterm", **extra})


def test_colours_only_on_a_terminal_without_no_color(daemon, acme):
    kvj(daemon, "warm", "--text", SYSTEM, "--pin-ttl", "1h", key=acme)
    for cmd in (["status"], ["ls"], ["stats"], ["ls", "--tree"]):
        rc, out = run_tty(cmd, tty_env(daemon, acme))
        assert rc == 0 and "\x1b[1m" in out and "\x1b[0m" in out, (cmd, out)
        rc, out = run_tty(cmd, tty_env(daemon, acme, NO_COLOR="1"))
        assert rc == 0 and "\x1b[" not in out, cmd
        rc, out = run_tty([*cmd, "--no-color"], tty_env(daemon, acme))
        assert rc == 0 and "\x1b[" not in out, cmd
        rc, out, _ = kv(daemon, *cmd, key=acme)  # a pipe
        assert rc == 0 and "\x1b[" not in out, cmd
    rc, out = run_tty(["status"], tty_env(daemon, acme, NO_COLOR=""))  # empty: colours stay
    assert "\x1b[32mserving\x1b[0m" in out
    rc, out = run_tty(["ls", "--json"], tty_env(daemon, acme))  # JSON is never coloured
    assert rc == 0 and "\x1b[" not in out and json.loads(out)["prefixes"][0]["pinned"]


def test_tables_fit_the_terminal_width(daemon, acme):
    long_texts = [f"Document {i}: " + "the quick brown fox jumps over the lazy dog " * 4
                  for i in range(3)]
    ids = [kvj(daemon, "warm", "--text", t, key=acme)["prefix_id"] for t in long_texts]
    for cols in (60, 100, 132):
        rc, out = run_tty(["ls"], tty_env(daemon, acme), cols=cols)
        lines = out.rstrip("\n").split("\n")
        assert rc == 0 and len(lines) == 4, out
        assert all(display_width(line) <= cols for line in lines), (cols, out)
        assert all(line.rstrip().endswith("\u2026") for line in lines[1:]), out
        rc, out = run_tty(["ls", "--tree"], tty_env(daemon, acme), cols=cols)
        assert rc == 0 and all(display_width(line) <= cols for line in out.split("\n")), out
    # narrow: 12-digit ids; wide: whole ids and whole previews
    rc, out = run_tty(["ls", "--no-color"], tty_env(daemon, acme), cols=60)
    assert re.match(r"ID {12}TOKENS   D/H/K  HITS", out) and ids[0][:12] in out and ids[0] not in out
    rc, out = run_tty(["ls", "--no-color"], tty_env(daemon, acme), cols=400)
    previews = [p["preview"] for p in kvj(daemon, "ls", key=acme)["prefixes"]]
    assert all(i in out for i in ids) and all(p in out for p in previews)
    assert "\u2026" not in out
    # not a terminal: COLUMNS, else 80
    rc, out, _ = kv(daemon, "ls", env={"COLUMNS": "70"}, key=acme)
    assert all(display_width(line) <= 70 for line in out.splitlines())
    rc, out, _ = kv(daemon, "ls", key=acme)
    lines = out.splitlines()
    assert all(display_width(line) <= 80 for line in lines) and \
        max(display_width(line) for line in lines) >= 75


def test_evict_asks_on_a_terminal(daemon, acme):
    w = kvj(daemon, "warm", "--text", FRANCE, key=acme)
    pid, blocks = w["prefix_id"], (w["prompt_tokens"] + 15) // 16
    question = (f"evict prefix {pid[:12]} ({w['prompt_tokens']} tokens, {blocks} blocks) from "
                f"every tier? [y/N] ")
    rc, out = run_tty(["evict", pid], tty_env(daemon, acme), answer="n\n")
    assert rc == 1 and question in out
    assert "kvctl: evict: not confirmed, nothing evicted" in out
    assert kvj(daemon, "show", pid, key=acme)["id"] == pid  # still cached
    rc, out = run_tty(["evict", pid[:10]], tty_env(daemon, acme), answer="\n")  # default: no
    assert rc == 1 and kvj(daemon, "show", pid, key=acme)["id"] == pid
    rc, out = run_tty(["evict", pid], tty_env(daemon, acme), answer="y\n")
    assert rc == 0 and question in out
    assert f"evicted {blocks} blocks: device {blocks}, host 0, disk 0" in out
    assert_error(kv(daemon, "show", pid, key=acme), 1, r"NOT_FOUND")
    # --tenant and --all count the blocks first; --yes skips the question
    kvj(daemon, "warm", "--text", FRANCE, key=acme)
    rc, out = run_tty(["evict", "--tenant", "acme", "--tier", "device"],
                      tty_env(daemon, ADMIN), answer="no\n")
    assert rc == 1 and f"evict {blocks} blocks of tenant acme from the device tier? [y/N]" in out
    rc, out = run_tty(["evict", "--all"], tty_env(daemon, acme), answer="yes\n")
    assert rc == 0 and f"evict {blocks} blocks, everything you can see cached, from every " \
                       f"tier? [y/N]" in out
    kvj(daemon, "warm", "--text", FRANCE, key=acme)
    rc, out = run_tty(["evict", "--all", "--yes", "--json"], tty_env(daemon, acme))
    assert rc == 0 and "[y/N]" not in out and json.loads(out)["total_blocks"] >= blocks
    # tenant rm asks too
    rc, out = run_tty(["tenant", "rm", "acme"], tty_env(daemon, ADMIN), answer="n\n")
    assert rc == 1 and "delete tenant acme? its API key stops working" in out
    assert [t["name"] for t in kvj(daemon, "tenant", "ls", key=ADMIN)["tenants"]] == ["acme"]
    rc, out = run_tty(["tenant", "rm", "acme"], tty_env(daemon, ADMIN), answer="y\n")
    assert rc == 0 and "deleted tenant acme" in out


def test_gen_on_a_terminal(daemon, acme):
    g = kvj(daemon, "gen", "hello there", "--max-tokens", "6", key=acme)
    rc, out = run_tty(["gen", "hello there", "-n", "6"], tty_env(daemon, acme))
    assert rc == 0
    text, report = out.split("[prompt ", 1)
    # the model's text, its control characters (other than newline and tab) escaped, then a
    # newline so that the report starts on its own line
    shown = "".join(c if c in "\n\t" or (ord(c) >= 0x20 and not 0x7f <= ord(c) < 0xa0)
                    else f"\\x{ord(c):02x}" for c in g["text"])
    assert text == shown + ("" if shown.endswith("\n") else "\n")
    assert report.startswith(f"{g['usage']['prompt_tokens']} tokens, ")


def test_tenant_key_note_on_a_terminal(daemon):
    rc, out = run_tty(["tenant", "add", "acme", "--no-color"], tty_env(daemon, ADMIN))
    assert rc == 0
    key_line, note = out.rstrip("\n").split("\n")
    assert re.fullmatch(r"pfx-[0-9a-f]{48}", key_line)
    assert note == "(the API key of acme: it is shown only this once)"


# ---- the completion script and the man page ---------------------------------------------------

def complete(words):
    """Asks the bash completion for the last of words; returns the candidates."""
    script = os.path.join(KVCTL_DIR, "kvctl.bash")
    line = " ".join(words)
    cmd = (f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
           f"_kvctl; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    p = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=30,
                       env=clean_env({"PATH": os.path.dirname(kvctl_bin()) + ":" +
                                      os.environ.get("PATH", "")}))
    assert p.returncode == 0, p.stderr
    return [w for w in p.stdout.splitlines() if w]


def test_bash_completion(daemon, acme):
    if not shutil.which("bash"):
        pytest.skip("no bash")
    assert complete(["kvctl", "''"]) == ["status", "stats", "health", "ls", "show", "evict", "pin",
                                         "unpin", "warm", "lookup", "gen", "tenant", "help"]
    assert complete(["kvctl", "st"]) == ["status", "stats"]
    assert set(complete(["kvctl", "ls", "--"])) >= {"--tree", "--sort", "--limit", "--tenant",
                                                    "--json", "--addr"}
    assert complete(["kvctl", "evict", "--tier", "''"]) == ["gpu", "device", "host", "disk"]
    assert complete(["kvctl", "ls", "--sort", "''"]) == ["hits", "age", "size"]
    assert complete(["kvctl", "tenant", "''"]) == TENANT_SUBCOMMANDS
    assert "--max-device-blocks" in complete(["kvctl", "tenant", "add", "x", "--"])
    assert "exit-codes" in complete(["kvctl", "help", "''"])
    # prefix ids, asked of the daemon with the --addr and --key on the line
    pid = kvj(daemon, "warm", "--text", FRANCE, key=acme)["prefix_id"]
    assert complete(["kvctl", "--addr", daemon.target, "-k", acme, "pin", pid[:3]]) == [pid]
    # every flag the completion offers is one kvctl accepts (its --help names it)
    for cmd in COMMANDS:
        flags = [f for f in complete(["kvctl", cmd, "--"]) if f.startswith("--")]
        for flag in flags:
            rc, _, err = kv(None, cmd, flag, "--help")
            assert "unknown option" not in err, (cmd, flag)


def test_man_page():
    page = os.path.join(KVCTL_DIR, "kvctl.1")
    if not shutil.which("groff"):
        pytest.skip("no groff")
    p = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", page], capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    text = subprocess.run(["groff", "-man", "-Tascii", "-P", "-cbou", page], capture_output=True,
                          text=True, timeout=30).stdout
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS", "ENVIRONMENT",
                    "EXIT STATUS", "EXAMPLES"):
        assert re.search(rf"^{section}$", text, re.M), section
    for cmd in COMMANDS:
        assert re.search(rf"^       {cmd}\b", text, re.M), cmd
    for var in ("PREFIXD_ADDR", "PREFIXD_KEY", "PREFIXD_DATA_DIR", "NO_COLOR", "COLUMNS"):
        assert var in text
