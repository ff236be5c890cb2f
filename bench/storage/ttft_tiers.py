#!/usr/bin/env python3
"""Time to first token of a request whose 1,000-token system prompt is cached in each tier
(device, host RAM, disk), against computing it (no_cache), on the default model, CPU.

For each repetition the system prompt is warmed, then moved with Evict(tier=...) one tier at a
time until it sits where the row says (Evict with a tier named moves blocks one tier colder), the
page cache is dropped for the disk row (when we may), and a Generate with a fresh 30-token user
turn is timed from the client. The final message's usage says which tier the cached tokens came
from; a row whose tokens did not come from its tier fails the run.

    ttft_tiers.py PREFIXD_BIN MODEL [--reps 5] [--threads 2] [--out bench/results/storage_ttft.md]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../tests/daemon"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../daemon"))
os.environ.setdefault("PREFIXD_PROTO", os.path.join(os.path.dirname(__file__), "../../proto"))

from conftest import Daemon, chat, generate, pb  # noqa: E402
from serve_bench import text_of_tokens  # noqa: E402

USER = ("Which of the bikes would you suggest for a daily ride of twelve kilometres through "
        "the city, with a child seat, in all weather? Question {}.")


def drop_page_cache():
    try:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def measure(stub, system, rep, tier):
    """One timed Generate; returns (ttft_ms, usage)."""
    t0 = time.perf_counter()
    first = None
    final = None
    cache = pb.CacheOptions(no_cache=(tier == "recompute"))
    req = pb.GenerateRequest(prompt=chat(("system", system), ("user", USER.format(rep))),
                             max_tokens=1, cache=cache)
    for m in stub.Generate(req, timeout=600):
        if first is None and (m.token_ids or m.finish_reason):
            first = time.perf_counter()
        if m.finish_reason:
            final = m
    return (first - t0) * 1000, final.usage, final.timings


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("prefixd")
    ap.add_argument("model")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    os.environ["PREFIXD_BIN"] = a.prefixd
    data = tempfile.mkdtemp(prefix="prefixd-ttft-tiers-")
    d = Daemon(a.model, data, extra=("--threads", str(a.threads)))
    rows = {}
    dropped = None
    try:
        s = d.stub()
        system = text_of_tokens(s, 1000)
        n_sys = len(s.Tokenize(pb.TokenizeRequest(prompt=chat(("system", system)))).token_ids)
        warm_prompt = chat(("system", system))
        field = {"device": "device", "host": "host", "disk": "disk"}
        for tier in ("recompute", "device", "host", "disk"):
            samples, cached, restore = [], [], []
            for rep in range(a.reps):
                s.Evict(pb.EvictRequest(all=True))  # nothing cached from the last rep
                if tier != "recompute":
                    s.Warm(pb.WarmRequest(prompt=warm_prompt))
                if tier in ("host", "disk"):
                    s.Evict(pb.EvictRequest(all=True, tier=pb.TIER_DEVICE))
                if tier == "disk":
                    s.Evict(pb.EvictRequest(all=True, tier=pb.TIER_HOST))
                    dropped = drop_page_cache()
                ms, usage, timings = measure(s, system, rep, tier)
                if tier != "recompute":
                    got = getattr(usage.cached_tokens_by_tier, field[tier])
                    assert got >= n_sys - 16, (tier, usage)
                samples.append(ms)
                cached.append(usage.cached_tokens)
                restore.append(timings.restore_ms)
            rows[tier] = (statistics.median(samples), min(samples), max(samples),
                          statistics.median(cached), statistics.median(restore))
        st = s.Stats(pb.StatsRequest())
    finally:
        d.stop()
    cold = rows["recompute"][0]
    lines = ["# TTFT of a 1,000-token system prompt cached in each tier, vs recompute", "",
             f"Command: `bench/storage/ttft_tiers.py {a.prefixd} {a.model} --reps {a.reps} "
             f"--threads {a.threads}" + (f" --out {a.out}`" if a.out else "`"), "",
             f"Model: {st.model}. Backend: {st.backend or 'cpu'}, {a.threads} threads. "
             f"System prompt {n_sys} tokens, user turn about 30 tokens, max_tokens 1. "
             f"{a.reps} repetitions per row; page cache dropped before each disk row: "
             f"{'yes' if dropped else 'no (not permitted)'}. {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
             "", "| where the system prompt was | TTFT median | min / max | cached tokens | "
             "restore (server) | vs recompute |", "| --- | --- | --- | --- | --- | --- |"]
    for tier in ("recompute", "device", "host", "disk"):
        med, lo, hi, cached, restore = rows[tier]
        lines.append(f"| {tier} | {med:.0f} ms | {lo:.0f} / {hi:.0f} ms | {cached:.0f} | "
                     f"{restore:.1f} ms | {cold / med:.1f}x faster |" if tier != "recompute"
                     else f"| not cached (no_cache) | {med:.0f} ms | {lo:.0f} / {hi:.0f} ms | 0 | "
                     f"- | 1.0x |")
    lines += ["", "A hit from every tier must beat recomputing (a peer's disk tier was measured "
              "slower than recomputing: 2,450 ms against 1,725 ms)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
