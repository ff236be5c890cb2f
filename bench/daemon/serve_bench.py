#!/usr/bin/env python3
"""The daemon's serving figures on the default model, CPU, through a stock grpcio client.

  1. TTFT of a 1,000-token shared system prompt plus a 30-token user turn: cold (the system
     prompt never seen: a nonce at its start) vs hit (the same system prompt, a new user turn).
     Target: hit <= 1/15 of cold.
  2. Aggregate decode throughput of 32 concurrent sessions sharing a system prompt vs 1 session
     (what continuous batching buys); each session generates a fixed number of tokens.
  3. Unary RPC rate (Stats) over loopback from many connections (bench/daemon/rpc_bench, the C
     client, one thread per connection).

    serve_bench.py PREFIXD_BIN MODEL [--out bench/results/daemon_cpu.md] [--threads 2]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../tests/daemon"))
os.environ.setdefault("PREFIXD_PROTO", os.path.join(os.path.dirname(__file__), "../../proto"))
import grpc  # noqa: E402

from conftest import Daemon, chat, generate, pb, pb_grpc  # noqa: E402

WORDS = ("the shop sells city bikes road bikes and cargo bikes repairs every brand offers "
         "rentals by the day and keeps spare parts for older models while the staff answers "
         "questions about sizes gears brakes lights locks and child seats ").split()


def text_of_tokens(stub, n, nonce=""):
    """A system prompt of about n tokens (measured with the daemon's tokenizer)."""
    words, out = WORDS * 200, nonce
    lo, hi = 1, len(words)
    while lo < hi:  # the longest word count whose system message stays within n tokens
        mid = (lo + hi + 1) // 2
        t = nonce + " ".join(words[:mid])
        if len(stub.Tokenize(pb.TokenizeRequest(prompt=chat(("system", t)))).token_ids) <= n:
            lo = mid
        else:
            hi = mid - 1
    out = nonce + " ".join(words[:lo])
    return out


def ttft(stub, system, user):
    _, _, f = generate(stub, chat(("system", system), ("user", user)), max_tokens=1)
    return f.timings.ttft_ms, f.usage


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("prefixd")
    ap.add_argument("model")
    ap.add_argument("--out", default="bench/results/daemon_cpu.md")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--rpc-bench", dest="rpc_bench", default="build/bench/daemon/rpc_bench")
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--gen-tokens", type=int, default=64)
    a = ap.parse_args()
    os.environ["PREFIXD_BIN"] = a.prefixd
    lines = []
    with tempfile.TemporaryDirectory() as data:
        d = Daemon(a.model, data, extra=["--threads", a.threads, "--max-running", "64"])
        try:
            s = d.stub()
            user = "Which of your bikes would suit a family with two small children? Thanks"
            n_user = len(s.Tokenize(pb.TokenizeRequest(prompt=pb.Prompt(text=user))).token_ids)
            system = text_of_tokens(s, 1000)
            n_prompt = len(s.Tokenize(pb.TokenizeRequest(
                prompt=chat(("system", system), ("user", user)), )).token_ids)
            # 1. TTFT cold vs hit
            cold, hit, cached = [], [], []
            ttft(s, system, "warm-up")  # the shared prompt enters the cache
            for i in range(a.trials):
                c_ms, c_use = ttft(s, f"[session {i} {time.time()}] " + system, user)
                assert c_use.cached_tokens < 16, c_use
                cold.append(c_ms)
                h_ms, h_use = ttft(s, system, user + f" ({i})")
                hit.append(h_ms)
                cached.append(h_use.cached_tokens)
            c_med, h_med = statistics.median(cold), statistics.median(hit)
            lines += [
                "## 1. Time to first token: shared system prompt, cache hit vs cold",
                "",
                f"Prompt: a {n_prompt}-token chat prompt (system message about 1,000 tokens, "
                f"a {n_user}-token user turn), max_tokens 1, {a.trials} trials each, median.",
                "",
                "| | TTFT (ms) | cached prompt tokens |",
                "| --- | --- | --- |",
                f"| cold (system prompt never seen) | {c_med:.1f} | 0 |",
                f"| hit (same system prompt, new user turn) | {h_med:.1f} | "
                f"{statistics.median(cached):.0f} |",
                "",
                f"hit / cold = **1/{c_med / h_med:.1f}** (target: at most 1/15: "
                f"{'met' if h_med * 15 <= c_med else 'missed'}).",
                "",
            ]
            # 2. throughput, 1 session vs 32 concurrent sessions
            samp = pb.SamplingParams(temperature=0.7, seed=1, ignore_eos=True)

            def session(i, out):
                t0 = time.time()
                _, ids, f = generate(s, chat(("system", system), ("user", f"question {i}")),
                                     max_tokens=a.gen_tokens, sampling=samp)
                out.append((len(ids), time.time() - t0, f))
            one = []
            session(0, one)
            t0 = time.time()
            _, ids, _ = generate(s, chat(("system", system), ("user", "question x")),
                                 max_tokens=a.gen_tokens, sampling=samp)
            single_tps = len(ids) / (time.time() - t0)
            many = []
            threads = [threading.Thread(target=session, args=(i, many)) for i in range(32)]
            t0 = time.time()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.time() - t0
            total = sum(n for n, _, _ in many)
            agg = total / wall
            print("\n".join(lines), file=sys.stderr, flush=True)
            lines += [
                "## 2. Continuous batching: 32 concurrent sessions sharing a system prompt",
                "",
                f"Each session: the shared system prompt, its own user turn, {a.gen_tokens} "
                "generated tokens (ignore_eos), temperature 0.7. Wall time from the first "
                "request sent to the last stream closed.",
                "",
                "| | generated tokens | wall (s) | aggregate tokens/s |",
                "| --- | --- | --- | --- |",
                f"| 1 session | {len(ids)} | {len(ids) / single_tps:.2f} | {single_tps:.1f} |",
                f"| 32 sessions at once | {total} | {wall:.2f} | {agg:.1f} |",
                "",
                f"32 sessions / 1 session = **{agg / single_tps:.2f}x** aggregate throughput; "
                f"every session's prompt beyond the first hit the cache "
                f"(median cached tokens {statistics.median(f.usage.cached_tokens for _, _, f in many):.0f}).",
                "",
            ]
            print("\n".join(lines[-12:]), file=sys.stderr, flush=True)
            # 3. unary RPC rate, with the C client (one thread per connection)
            rates = []
            for conns in (1, 8, 64, 256):
                out = subprocess.run([a.rpc_bench, d.target, str(conns), "3"],
                                     capture_output=True, text=True, check=True).stdout
                kv = dict(x.split("=") for x in out.split())
                rates.append((conns, kv))
            lines += [
                "## 3. Unary RPC rate (Stats) over loopback",
                "",
                f"`{a.rpc_bench} ADDRESS N 3`: N connections, one thread and one C client "
                "(clients/c) each, calling Stats back to back for 3 s. Client and daemon share "
                "the same 2 cores.",
                "",
                "| connections | Stats calls/s | p50 latency (us) | p99 latency (us) |",
                "| --- | --- | --- | --- |",
            ] + [f"| {c} | {kv['calls_per_s']} | {kv['p50_us']} | {kv['p99_us']} |"
                 for c, kv in rates] + [""]
        finally:
            d.stop()
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip()
    head = ["# Serving figures: prefixd daemon on the default model, CPU", "",
            f"Command: `{' '.join(sys.argv)}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"{os.cpu_count()} cores ({cpu}), --threads {a.threads}.", ""]
    text = "\n".join(head + lines)
    with open(a.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
