#!/usr/bin/env python3
"""What TLS costs the daemon: two prefixd processes on the same binary and model, one with
--tls-cert (ECDSA P-256 test certificates from the openssl command) and one plaintext, measured
side by side in one run, each measurement alternating between them.

  1. unary RPC rate and latency: rpc_bench (the C client, CONNECTIONS threads calling Stats);
  2. the daemon's CPU per new connection: N connections opened, taken through the TLS handshake
     (Python's ssl, ALPN h2) or the HTTP/2 preface, and closed; the daemon's user+system CPU
     time from /proc, divided by N (what one handshake costs the loop thread);
  3. memory per idle connection: the daemon's RSS growth with IDLE connections held open after
     their handshake, divided by IDLE;
  4. streamed tokens: STREAMS Generate streams at once (greedy, ignore_eos), aggregate
     tokens/s over grpcio's secure and insecure channels.

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
import threading
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
    base = rss_kib(d.proc.pid)
    conns = [open_conn(d.port, tls_ctx) for _ in range(n)]
    time.sleep(1.0)
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


def streams(d, channel, n, tokens):
    stub = pb_grpc.PrefixdStub(channel)
    counts = [0] * n

    def one(i):
        req = pb.GenerateRequest(prompt=pb.Prompt(text=f"Stream {i}: tell a long story."),
                                 max_tokens=tokens,
                                 sampling=pb.SamplingParams(ignore_eos=True))
        for m in stub.Generate(req, timeout=600):
            counts[i] += len(m.token_ids)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - t0)


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
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=128)
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
            for rnd in range(2):  # each measurement alternates: plaintext, TLS, plaintext, TLS
                for name, (d, ca, ctx) in sides.items():
                    r = rpc_rate(a.rpc_bench, d, ca, a.connections, a.seconds)
                    rows[name].setdefault("rpc", []).append(r)
                    rows[name].setdefault("hs", []).append(handshake_cpu(d, ctx, a.handshakes))
                    rows[name].setdefault("idle", []).append(idle_memory(d, ctx, a.idle))
                    ch = (grpc.secure_channel(d.target, grpc.ssl_channel_credentials(
                        open(ca, "rb").read())) if ca else grpc.insecure_channel(d.target))
                    rows[name].setdefault("tok", []).append(streams(d, ch, a.streams, a.tokens))
                    ch.close()
                    print(name, rnd, rows[name]["rpc"][-1], rows[name]["hs"][-1],
                          rows[name]["idle"][-1], rows[name]["tok"][-1], flush=True)
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
        "measured side by side in one run; each figure is the mean of two rounds that "
        "alternate between them.",
        "",
        f"| transport | Stats calls/s ({a.connections} connections) | Stats p50 | Stats p99 | "
        f"daemon CPU per new connection | new connections/s (one Python client) | "
        f"RSS per idle connection ({a.idle} held) | tokens/s, {a.streams} streams |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in sides:
        r = rows[name]
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        lines.append(
            f"| {name} | {mean([float(x['calls_per_s']) for x in r['rpc']]):,.0f} | "
            f"{mean([float(x['p50_us']) for x in r['rpc']]):.0f} us | "
            f"{mean([float(x['p99_us']) for x in r['rpc']]):.0f} us | "
            f"{mean([h[0] for h in r['hs']]):.0f} us | {mean([h[1] for h in r['hs']]):,.0f} | "
            f"{mean(r['idle']) / 1024:.1f} KiB | {mean(r['tok']):,.0f} |")
    with open(a.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
