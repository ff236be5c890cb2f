#!/usr/bin/env python3
"""What TLS costs the daemon: two prefixd processes on the same binary and model, one with
--tls-cert (ECDSA P-256 test certificates from the openssl command) and one plaintext, measured
side by side in one run, each measurement alternating between them.

  1. unary RPC rate and latency: rpc_bench (the C client, CONNECTIONS threads calling Stats);
  2. the daemon's CPU per new connection: N connections opened, taken through the TLS handshake
     (Python's ssl, ALPN h2) or the HTTP/2 preface, and closed; the daemon's user+system CPU
     time from /proc, divided by N (what one handshake costs the loop thread);
  3. memory per idle connection: on each fresh daemon, before anything else, the RSS growth
     from IDLE/2 to 3*IDLE/2 connections held open after their handshake, divided by IDLE (the
     slope, so that the first connections' one-time allocations do not count);
  4. bulk transfer: Tokenize of a prompt of BULK token ids (they come back unchanged, so the
     call is two ~1.5 MB messages and no model work), over grpcio's secure and insecure
     channels: MB/s both ways together.

    tls_bench.py PREFIXD_BIN MODEL RPC_BENCH [--threads 2] [--out bench/results/tls.md]
"""
import argparse
import datetime
import os
import resource
import socket
import ssl
import subprocess
import sys
import tempfile
import time

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "../../tests/daemon"))
sys.path.insert(0, os.path.join(HERE, "../../tests/common"))
os.environ.setdefault("PREFIXD_PROTO", os.path.join(HERE, "../../proto"))
from conftest import Daemon, pb, pb_grpc  # noqa: E402
from pd_pki import make_pki  # noqa: E402

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def open_conn(port, tls_ctx):
    """A connection through its handshake (TLS, then the HTTP/2 preface; or the preface)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    if tls_ctx:
        s = tls_ctx.wrap_socket(s, server_hostname="127.0.0.1")
    s.sendall(PREFACE)
    s.recv(4096)  # the server's SETTINGS: the daemon has done its part
    return s


def handshake_cpu(d, tls_ctx, n):
    before, t0 = cpu_seconds(d.proc.pid), time.monotonic()
    for _ in range(n):
        open_conn(d.port, tls_ctx).close()
    wall = time.monotonic() - t0
    time.sleep(0.3)  # the closes reach the daemon
    return (cpu_seconds(d.proc.pid) - before) / n * 1e6, n / wall


def idle_memory(d, tls_ctx, n):
    conns = [open_conn(d.port, tls_ctx) for _ in range(n // 2)]
    time.sleep(0.5)
    base = rss_kib(d.proc.pid)
    conns += [open_conn(d.port, tls_ctx) for _ in range(n)]
    time.sleep(0.5)
    grown = rss_kib(d.proc.pid) - base
    for c in conns:
        c.close()
    return grown * 1024 / n


def rpc_rate(rpc_bench, d, ca, conns, seconds):
    env = dict(os.environ)
    env.pop("PREFIXD_TLS_CA", None)
    if ca:
        env["PREFIXD_TLS_CA"] = ca
    out = subprocess.run([rpc_bench, d.target, str(conns), str(seconds)], capture_output=True,
                         text=True, env=env, timeout=seconds + 60, check=True).stdout
    return dict(kv.split("=") for kv in out.split())


def bulk(d, channel, n_ids, calls):
    """Tokenize of a prompt given as n_ids token ids, which come back unchanged: the bytes of
    two large messages each way and no model work. Returns MB/s (request plus response)."""
    stub = pb_grpc.PrefixdStub(channel)
    req = pb.TokenizeRequest(prompt=pb.Prompt(tokens=pb.TokenIds(ids=[i % 500 for i in
                                                                     range(n_ids)])))
    size = req.ByteSize()
    stub.Tokenize(req, timeout=120)  # warm-up
    t0 = time.monotonic()
    for _ in range(calls):
        r = stub.Tokenize(req, timeout=120)
        assert len(r.token_ids) == n_ids
    return 2 * size * calls / (time.monotonic() - t0) / 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("prefixd")
    ap.add_argument("model")
    ap.add_argument("rpc_bench")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--handshakes", type=int, default=500)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--bulk", type=int, default=1000000)
    ap.add_argument("--bulk-calls", type=int, default=20)
    ap.add_argument("--out", default=os.path.join(HERE, "../results/tls.md"))
    a = ap.parse_args()
    os.environ["PREFIXD_BIN"] = a.prefixd
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory() as tmp:
        pki = make_pki(tmp)
        tls_ctx = ssl.create_default_context(cafile=pki["ca.pem"])
        tls_ctx.set_alpn_protocols(["h2"])
        dirs = [os.path.join(tmp, n) for n in ("plain", "tls")]
        for x in dirs:
            os.mkdir(x)
        common = ["--threads", str(a.threads), "--host-cache-mb", "0", "--disk-cache-mb", "0",
                  "--metrics-listen", "none", "--unix", "none"]
        plain = Daemon(a.model, dirs[0], extra=common)
        tls = Daemon(a.model, dirs[1], extra=common + ["--tls-cert", pki["server.pem"],
                                                      "--tls-key", pki["server.key"]])
        sides = {"plaintext": (plain, None, None), "TLS": (tls, pki["ca.pem"], tls_ctx)}
        rows = {k: {} for k in sides}
        try:
            for name, (d, ca, ctx) in sides.items():  # first, on the fresh daemons
                rows[name]["idle"] = [idle_memory(d, ctx, a.idle)]
            for rnd in range(3):  # each measurement alternates: plaintext, TLS, plaintext, ...
                for name, (d, ca, ctx) in sides.items():
                    r = rpc_rate(a.rpc_bench, d, ca, a.connections, a.seconds)
                    rows[name].setdefault("rpc", []).append(r)
                    rows[name].setdefault("hs", []).append(handshake_cpu(d, ctx, a.handshakes))
                    ch = (grpc.secure_channel(d.target, grpc.ssl_channel_credentials(
                        open(ca, "rb").read())) if ca else grpc.insecure_channel(d.target))
                    rows[name].setdefault("bulk", []).append(bulk(d, ch, a.bulk, a.bulk_calls))
                    ch.close()
                    print(name, rnd, rows[name]["rpc"][-1], rows[name]["hs"][-1],
                          rows[name]["bulk"][-1], flush=True)
        finally:
            plain.stop()
            tls.stop()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = " ".join(["bench/daemon/tls_bench.py", *sys.argv[1:]])
    lines = [
        "# TLS beside plaintext",
        "",
        f"Command: `{cmd}` on {when}, {os.cpu_count()} cores. Two daemons on the same binary and "
        f"model ({os.path.basename(a.model)}), one with `--tls-cert` (ECDSA P-256, TLS 1.3), "
        "measured side by side in one run; each figure is the median of three rounds that "
        "alternate between them (memory: one measurement on each fresh daemon).",
        "",
        f"| transport | Stats calls/s ({a.connections} connections) | Stats p50 | Stats p99 | "
        f"daemon CPU per new connection | new connections/s (one Python client) | "
        f"RSS per idle connection | bulk Tokenize, {a.bulk:,} ids |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in sides:
        r = rows[name]
        median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731 -- the middle round
        lines.append(
            f"| {name} | {median([float(x['calls_per_s']) for x in r['rpc']]):,.0f} | "
            f"{median([float(x['p50_us']) for x in r['rpc']]):.0f} us | "
            f"{median([float(x['p99_us']) for x in r['rpc']]):.0f} us | "
            f"{median([h[0] for h in r['hs']]):.0f} us | {median([h[1] for h in r['hs']]):,.0f} | "
            f"{median(r['idle']) / 1024:.1f} KiB | {median(r['bulk']):,.0f} MB/s |")
    with open(a.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
