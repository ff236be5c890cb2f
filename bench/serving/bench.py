#!/usr/bin/env python3
"""prefixd beside llama-server: four serving workloads on the same GGUF, same threads, same
token-id prompts. Prints a table, writes JSON (then bench/serving/plot.py draws it).

    bench.py --prefixd BIN [--llama-server BIN] [--model GGUF] [--quick] [--threads 2]
             [--workloads w1,w2,w3,w4] [--w1-slots 8] [--w2-slots 64] [--out FILE.json]
             [--reuse-runs EARLIER.json.partial]

Normally run through bench/serving/run.sh, which checks the binaries, the venv and matplotlib.
Every server run starts a fresh server process (cold cache); see docs/benchmarks.md.
"""
import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads as W  # noqa: E402
from clients import LlamaClient, PrefixdClient, ROOT, pb  # noqa: E402
from servers import LlamaServer, Prefixd, ProcWatch  # noqa: E402

ADMIN_KEY = "serving-bench-admin-key-0123456789abcdef"

# Sizes. `quick` is a small sizing for trying the whole chain; `full` is the comparison in
# docs/benchmarks.md (cut to what a loaded 2-core machine finishes in about an hour). Seeds
# are fixed: the same flags give the same prompts and schedules.
SIZES = {
    "quick": dict(
        w1=dict(seed=101, tenants=2, sessions=4, sys_lo=1024, sys_hi=1280, user_lo=16,
                user_hi=32, n_predict=8, rate=0.25),
        w2=dict(seed=202, sessions=8, turns_lo=3, turns_hi=6, sys_tokens=64, user_lo=4,
                user_hi=8, reply_lo=8, reply_hi=16, n_predict=4, think_mean=4.0,
                start_spread=4.0),
        w3=dict(seed=303, tenants=3, docs_per_tenant=3, doc_lo=256, doc_hi=384, q_lo=8,
                q_hi=16, n_predict=8, requests=16, rate=0.33, zipf_s=1.0, kv_cache_mb=24,
                host_cache_mb=16),
        w4=dict(seed=404, requests=4, prompt_lo=128, prompt_hi=192, n_predict=8,
                concurrency=[1, 4], repeats=1),
        run_cap_s=180,
    ),
    "full": dict(
        w1=dict(seed=101, tenants=3, sessions=10, sys_lo=1024, sys_hi=2560, user_lo=16,
                user_hi=48, n_predict=16, rate=0.25),
        w2=dict(seed=202, sessions=64, turns_lo=5, turns_hi=20, sys_tokens=64, user_lo=4,
                user_hi=8, reply_lo=8, reply_hi=16, n_predict=4, think_mean=15.0,
                start_spread=15.0),
        w3=dict(seed=303, tenants=4, docs_per_tenant=3, doc_lo=256, doc_hi=512, q_lo=8,
                q_hi=16, n_predict=8, requests=40, rate=0.33, zipf_s=1.0, kv_cache_mb=32,
                host_cache_mb=32),
        w4=dict(seed=404, requests=4, prompt_lo=128, prompt_hi=192, n_predict=8,
                concurrency=[1, 8], repeats=2),
        run_cap_s=600,
    ),
}


# ---- small helpers --------------------------------------------------------------------------

def pct(xs, p):
    """Linear-interpolated percentile of a list (None if empty)."""
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100.0
    i = int(k)
    if i + 1 >= len(xs) or k == i or xs[i + 1] == float("inf"):
        return xs[i] if k == i or i + 1 >= len(xs) else xs[i + 1]
    return xs[i] + (xs[i + 1] - xs[i]) * (k - i)


def machine_busy_s():
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


class LagMonitor:
    """How late the event loop wakes up: if the generator were the bottleneck, this grows."""

    def __init__(self, period=0.02):
        self.period, self.lags = period, []
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self):
        while True:
            t = time.perf_counter()
            await asyncio.sleep(self.period)
            self.lags.append(time.perf_counter() - t - self.period)

    def finish(self):
        self.task.cancel()
        return dict(loop_lag_p99_ms=round(1e3 * (pct(self.lags, 99) or 0), 2),
                    loop_lag_max_ms=round(1e3 * max(self.lags, default=0), 2))


# ---- the vocabulary ---------------------------------------------------------------------------

async def make_vocab(prefixd_bin, model, threads):
    """Tokenizes the word list and the ChatML markers once, with prefixd's tokenizer (the same
    GGUF vocabulary llama-server reads)."""
    srv = Prefixd(prefixd_bin, model, threads)
    try:
        await srv.ready()
        c = PrefixdClient(srv.target, n_channels=1)
        words = [await c.tokenize(" " + w) for w in W.WORDS]
        markers = {r: await c.tokenize(f"<|im_start|>{r}\n") for r in
                   ("system", "user", "assistant")}
        markers["end"] = await c.tokenize("<|im_end|>\n")
        st = await c.stubs[0].Stats(pb.StatsRequest(), timeout=30)
        await c.close()
    finally:
        srv.stop()
    return W.Vocab(words, markers), st.kv_bytes_per_token, st.model


def build(vocab, sizes, which):
    out = {}
    if "w1" in which:
        s = dict(sizes["w1"])
        out["w1"] = W.fanout(vocab, s.pop("seed"), **s)
    if "w2" in which:
        s = dict(sizes["w2"])
        out["w2"] = W.chat(vocab, s.pop("seed"), **s)
    if "w3" in which:
        s = dict(sizes["w3"])
        out["w3"] = W.pressure(vocab, s.pop("seed"), **s)
    if "w4" in which:
        s = dict(sizes["w4"])
        seed, levels, repeats = s.pop("seed"), s.pop("concurrency"), s.pop("repeats")
        n = s.pop("requests")
        out["w4"] = [W.unique(vocab, seed + c, requests=max(n, 2 * c), concurrency=c, **s)
                     for c in levels]
        for wl in out["w4"]:
            wl.sizes["repeats"] = repeats
    return out


# ---- one measured run ---------------------------------------------------------------------------

async def drive(client, wl, cap_s, no_cache=False):
    """Sends the workload's requests on its schedule; returns (results, dispatch lateness)."""
    results, late = [], []
    deadline = time.perf_counter() + cap_s
    warm = []
    for r in wl.warm:
        warm.append(await client.generate(r.rid, r.tenant, r.prompt, r.n_predict,
                                          timeout=max(1.0, deadline - time.perf_counter())))
    t0 = time.perf_counter()

    def left():
        return max(1.0, deadline - time.perf_counter())

    async def one(r):
        return await client.generate(r.rid, r.tenant, r.prompt, r.n_predict,
                                     no_cache=no_cache or r.no_cache, timeout=left())

    if wl.mode == "open":
        tasks = []
        for r in wl.requests:
            delay = t0 + r.at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.perf_counter() > deadline:
                break
            late.append(time.perf_counter() - (t0 + r.at))
            tasks.append(asyncio.create_task(one(r)))
        results = list(await asyncio.gather(*tasks))
    elif wl.mode == "sessions":
        by_s = {}
        for r in wl.requests:
            by_s.setdefault(r.session, []).append(r)

        async def session(s, turns):
            await asyncio.sleep(max(0.0, t0 + wl.session_starts[s] - time.perf_counter()))
            for r in turns:
                if r.think:
                    await asyncio.sleep(r.think)
                if time.perf_counter() > deadline:
                    return
                res = await one(r)
                results.append(res)
                if res.error:
                    return
        await asyncio.gather(*[session(s, t) for s, t in by_s.items()])
    else:
        it = iter(wl.requests)

        async def worker():
            for r in it:
                if time.perf_counter() > deadline:
                    return
                results.append(await one(r))
        await asyncio.gather(*[worker() for _ in range(wl.concurrency)])
    return results, late, warm


def summarize(wl, results, late, warm, extra):
    by_rid = {r.rid: r for r in wl.requests + wl.warm}
    order = sorted(results + warm, key=lambda x: x.send)
    shared = W.ideal_shared([(x.tenant, by_rid[x.rid].prompt) for x in order])
    ideal_of = {x.rid: s for x, s in zip(order, shared)}
    ok = [x for x in results if not x.error]
    # TTFT percentiles over every planned request: one that failed or ran out of time before its
    # first token, or was never sent (the run's time cap), counts as infinitely late, so a
    # server that finishes few requests is not flattered by the few it finished
    ttft = [x.ttft * 1e3 for x in results if x.ttft is not None and not x.error]
    n_censored = len(wl.requests) - len(ttft)
    ttft_all = ttft + [float("inf")] * n_censored
    itl = [g * 1e3 for x in ok for g in x.itls()]
    wall = (max(x.done for x in results) - min(x.send for x in results)) if results else 0
    n_prompt = sum(x.n_prompt for x in ok)
    known = ok and all(x.cached >= 0 for x in ok)
    cached = sum(x.cached for x in ok) if known else None
    ideal = sum(ideal_of[x.rid] for x in ok)
    tiers = [sum(x.by_tier[i] for x in ok) for i in range(3)] if ok and all(
        x.by_tier for x in ok) else None
    m = dict(
        requests_sent=len(results), requests_ok=len(ok), errors=len(results) - len(ok),
        first_error=next((x.error for x in results if x.error), ""),
        requests_planned=len(wl.requests),
        prompt_tokens=n_prompt, output_tokens=sum(x.n_out for x in ok), wall_s=round(wall, 3),
        ttft_p50_ms=pct(ttft_all, 50), ttft_p90_ms=pct(ttft_all, 90),
        ttft_p99_ms=pct(ttft_all, 99), ttft_unfinished=n_censored,
        itl_p50_ms=pct(itl, 50), itl_p99_ms=pct(itl, 99),
        output_tok_s=sum(x.n_out for x in ok) / wall if wall else None,
        requests_s=len(ok) / wall if wall else None,
        cached_tokens=cached, hit_rate=cached / n_prompt if known and n_prompt else None,
        ideal_shared_tokens=ideal, ideal_hit_rate=ideal / n_prompt if n_prompt else None,
        multi_token_chunks=sum(1 for x in ok for _, k in x.chunks if k > 1),
        dispatch_late_p99_ms=round(1e3 * (pct(late, 99) or 0), 2),
    )
    if tiers is not None:
        m["hit_rate_by_tier"] = dict(zip(("device", "host", "disk"),
                                         [t / n_prompt if n_prompt else 0 for t in tiers]))
    if m["hit_rate"] is not None and m["ideal_hit_rate"]:
        m["hit_vs_ideal"] = m["hit_rate"] / m["ideal_hit_rate"]
    if warm:
        m["warm_phase"] = dict(requests=len(warm), errors=sum(1 for x in warm if x.error),
                               ttft_ms=[round(x.ttft * 1e3, 1) if x.ttft else None for x in warm],
                               cached_tokens=[x.cached for x in warm],
                               prompt_tokens=[x.n_prompt for x in warm])
    sq = [x.server_queue_ms for x in ok if x.server_queue_ms >= 0]
    if sq:
        m["server_queue_p50_ms"] = pct(sq, 50)
    m.update(extra)
    m["generator_cpu_ms_per_request"] = (1e3 * m["generator_cpu_s"] / len(results)
                                         if results else None)
    m["generator_cpu_share"] = (m["generator_cpu_s"] / m["accounting_window_s"]
                                if m["accounting_window_s"] else None)
    m["output_tokens_per_server_cpu_s"] = (m["output_tokens"] / m["server_cpu_s"]
                                           if m["server_cpu_s"] else None)
    for k, v in list(m.items()):
        if isinstance(v, float):
            inf = v in (float("inf"), -float("inf"))
            m[k] = None if v != v else (str(v) if inf else round(v, 4))
    return m, ttft


async def measured(server_kind, srv, client, wl, cap_s, no_cache=False):
    """Warm-up request, then the workload with /proc and generator accounting around it."""
    rng = random.Random(7)
    warm = [w for i in range(16) for w in VOCAB.words[rng.randrange(len(VOCAB.words))]][:16]
    r = await client.generate(-1, "warmup", warm, 4)
    if r.error:
        raise RuntimeError(f"{server_kind} warm-up failed: {r.error}")
    watch, lag = ProcWatch(srv.pid), LagMonitor()
    gen0, busy0, la0, w0 = time.process_time(), machine_busy_s(), loadavg(), time.perf_counter()
    results, late, warm = await drive(client, wl, cap_s, no_cache)
    gen_cpu, busy = time.process_time() - gen0, machine_busy_s() - busy0
    window = time.perf_counter() - w0
    res = watch.finish()
    res.update(lag.finish())
    res["generator_cpu_s"] = round(gen_cpu, 3)
    res["machine_busy_cpu_s"] = round(busy, 3)
    # CPU time used on the machine by anything but the server and this generator
    res["other_cpu_s"] = round(max(0.0, busy - gen_cpu - res["server_cpu_s"]), 3)
    # the window of the CPU and memory accounting: the warm phase (W1) and the measured phase
    res["accounting_window_s"] = round(window, 3)
    res["other_load_cores"] = round(res["other_cpu_s"] / window, 3) if window else None
    res["loadavg_before"], res["loadavg_after"] = la0, loadavg()
    return summarize(wl, results, late, warm, res)


def llama_need(wl):
    """Context one request needs: the longest prompt plus its output, and a little slack."""
    return max(len(r.prompt) + r.n_predict for r in wl.requests + wl.warm) + 16


def llama_ctx(wl, slots):
    per_slot = (llama_need(wl) + 255) // 256 * 256
    return per_slot * slots, per_slot


async def run_prefixd(a, wl, label, no_cache=False, extra=()):
    srv = Prefixd(a.prefixd, a.model, a.threads, extra=wl.prefixd_args + list(extra),
                  admin_key=ADMIN_KEY)
    try:
        await srv.ready()
        c = PrefixdClient(srv.target)
        await c.create_tenants(ADMIN_KEY, wl.tenants + ["warmup"])
        m, ttft = await measured("prefixd", srv, c, wl, a.cap, no_cache)
        await c.close()
    finally:
        rc = srv.stop()
    cfg = dict(args=srv.args[1:], cache="off (request no_cache)" if no_cache else "on",
               exit_code=rc)
    return dict(workload=wl.key, server="prefixd", label=label, config=cfg, metrics=m,
                ttft_ms=ttft)


async def run_llama(a, wl, label, slots, ctx=None):
    cache_reuse = a.cache_reuse
    if ctx is None:
        ctx, per_slot = llama_ctx(wl, slots)
    else:
        per_slot = ctx // slots
    srv = LlamaServer(a.llama_server, a.model, a.threads, ctx, slots, cache_reuse)
    try:
        await srv.ready()
        c = LlamaClient("127.0.0.1", srv.port)
        m, ttft = await measured("llama-server", srv, c, wl, a.cap)
    finally:
        rc = srv.stop()
    cfg = dict(args=srv.args[1:], slots=slots, ctx=ctx, ctx_per_slot=per_slot,
               cache_reuse=cache_reuse, cache_prompt=True, exit_code=rc)
    return dict(workload=wl.key, server="llama-server", label=label, config=cfg, metrics=m,
                ttft_ms=ttft)


def say(*args):
    print(*args, file=sys.stderr, flush=True)


def brief(run):
    m = run["metrics"]
    f = lambda v, s="{:.0f}": "-" if v is None else (  # noqa: E731
        "unfinished" if v == "inf" else s.format(v))
    return (f"{run['workload']} {run['label']:<28} ok {m['requests_ok']}/{m['requests_sent']} "
            f"ttft p50 {f(m['ttft_p50_ms'])} ms, {f(m['output_tok_s'], '{:.1f}')} tok/s, "
            f"hit {f(m['hit_rate'], '{:.3f}')} (ideal {f(m['ideal_hit_rate'], '{:.3f}')}), "
            f"wall {m['wall_s']:.0f} s, other load {m['other_load_cores']:.2f} cores")


# ---- the comparison -----------------------------------------------------------------------------

async def main_async(a):
    global VOCAB
    say(f"serving bench: {a.mode} sizes, workloads {','.join(a.workloads)}")
    VOCAB, kv_bpt, model_desc = await make_vocab(a.prefixd, a.model, a.threads)
    sizes = SIZES[a.mode]
    runs = []
    kept = set()
    if a.reuse_runs:  # runs of other workloads from an earlier, interrupted invocation
        with open(a.reuse_runs) as f:
            for r in json.load(f)["runs"]:
                if r["workload"] not in a.workloads:
                    runs.append(r)
                    kept.add(r["workload"])
        say(f"  kept {len(runs)} runs of {','.join(sorted(kept))} from {a.reuse_runs}")
    wls = build(VOCAB, sizes, set(a.workloads) | kept)
    run_wls = {k: v for k, v in wls.items() if k in a.workloads}

    async def add(coro, **extra):
        run = await coro
        run.update(extra)
        runs.append(run)
        say("  " + brief(run))
        with open(a.out + ".partial", "w") as f:  # what is done so far, should a run hang
            json.dump(dict(runs=runs), f)
        return run

    if "w1" in run_wls:
        wl = wls["w1"]
        if "prefixd" in a.servers:
            await add(run_prefixd(a, wl, "prefixd"))
        if a.llama_server:
            for np_ in a.w1_slots:
                await add(run_llama(a, wl, f"llama-server np={np_}", np_))
    if "w2" in run_wls:
        wl = wls["w2"]
        if "prefixd" in a.servers:
            await add(run_prefixd(a, wl, "prefixd"))
        if a.llama_server:
            for np_ in a.w2_slots:
                await add(run_llama(a, wl, f"llama-server np={np_}", np_))
    if "w3" in run_wls:
        wl = wls["w3"]
        if "prefixd" in a.servers:
            kv, host = sizes["w3"]["kv_cache_mb"], sizes["w3"]["host_cache_mb"]
            # the first tier alone, then with a host tier and the disk tier below it
            await add(run_prefixd(a, wl, f"prefixd kv={kv}M, no host/disk", extra=[
                "--host-cache-mb", "0", "--disk-cache-mb", "0"]))
            await add(run_prefixd(a, wl, f"prefixd kv={kv}M host={host}M disk", extra=[
                "--host-cache-mb", str(host)]))
        if a.llama_server:
            # the same KV memory as prefixd's first tier, in slots that each fit one request
            total = sizes["w3"]["kv_cache_mb"] * (1 << 20) // kv_bpt // 256 * 256
            need = llama_need(wl)
            slots = total // need
            if slots < 1:
                say(f"  w3: {total} tokens of KV cannot hold one request of {need}")
            else:
                await add(run_llama(a, wl, f"llama-server np={slots} c={total}", slots,
                                    ctx=total))
    if "w4" in run_wls:
        for wl in run_wls["w4"]:
            c = wl.concurrency
            for rep in range(wl.sizes["repeats"]):
                if "prefixd" in a.servers:
                    # alternate the order between repeats so drift on a shared machine cancels
                    pair = [("prefixd cache on", False), ("prefixd cache off", True)]
                    for label, nc in (pair if rep % 2 == 0 else pair[::-1]):
                        await add(run_prefixd(a, wl, f"{label} c={c}", no_cache=nc),
                                  repeat=rep, concurrency=c)
            if a.llama_server:
                np_ = max(sizes["w4"]["concurrency"])
                await add(run_llama(a, wl, f"llama-server np={np_} c={c}", np_),
                          repeat=0, concurrency=c)
    return runs, dict(kv_bytes_per_token=kv_bpt, model_description=model_desc), wls


def targets(runs, wls):
    """The issue's targets, judged on the measured runs."""
    out = []

    def pick(wk, server):
        return [r for r in runs if r["workload"] == wk and r["server"] == server]

    p1, l1 = pick("w1", "prefixd"), pick("w1", "llama-server")
    if p1:
        m = p1[0]["metrics"]
        if l1:
            num = lambda v: float(v) if v is not None else float("inf")  # noqa: E731
            best = min(l1, key=lambda r: num(r["metrics"]["ttft_p50_ms"]))
            ratio = num(best["metrics"]["ttft_p50_ms"]) / num(m["ttft_p50_ms"])
            out.append(dict(target="W1: prefixd TTFT p50 >= 5x lower than llama-server's "
                            f"(best slot count, {best['label']})",
                            value=round(ratio, 2) if ratio != float("inf") else "inf",
                            met=ratio >= 5))
        if m.get("hit_vs_ideal") is not None:
            out.append(dict(target="W1: prefixd hit rate >= 95% of ideal",
                            value=round(m["hit_vs_ideal"], 4), met=m["hit_vs_ideal"] >= 0.95))
    p2 = pick("w2", "prefixd")
    if p2 and p2[0]["metrics"].get("hit_vs_ideal") is not None:
        v = p2[0]["metrics"]["hit_vs_ideal"]
        n_s = next((w["sizes"]["sessions"] for w in [wls.get("w2")] if w), "?")
        out.append(dict(target=f"W2: prefixd hit rate >= 90% of ideal, {n_s} interleaved sessions",
                        value=round(v, 4), met=v >= 0.90))
    p4 = pick("w4", "prefixd")
    if p4:
        levels = sorted({r["concurrency"] for r in p4})
        per, tot_on, tot_off = {}, [0, 0], [0, 0]
        for c in levels:
            def med(label):
                xs = sorted(r["metrics"]["output_tok_s"] for r in p4
                            if r["concurrency"] == c and r["label"].startswith(label))
                return xs[len(xs) // 2] if xs else None
            on, off = med("prefixd cache on"), med("prefixd cache off")
            if on and off:
                per[c] = round(on / off, 4)
            for r in p4:
                if r["concurrency"] == c:
                    acc = tot_on if "cache on" in r["label"] else tot_off
                    acc[0] += r["metrics"]["output_tokens"]
                    acc[1] += r["metrics"]["wall_s"]
        if tot_on[1] and tot_off[1]:
            v = (tot_on[0] / tot_on[1]) / (tot_off[0] / tot_off[1])
            out.append(dict(target="W4: prefixd throughput with cache >= 0.98x with caching off "
                            "(all levels and repeats pooled)", value=round(v, 4),
                            per_concurrency_median_ratio=per, met=v >= 0.98))
    return out


def table(runs):
    cols = ["workload", "server", "req", "TTFT p50", "p90", "p99", "ITL p50", "p99", "tok/s",
            "req/s", "hit", "ideal", "hit/ideal", "RSS MB", "srv CPU s", "gen ms/req", "gen %core"]
    rows = []
    for r in runs:
        m = r["metrics"]

        def f(v, s="{:.0f}"):
            return "-" if v is None else ("unfinished" if v == "inf" else s.format(v))
        hit = f(m["hit_rate"], "{:.3f}") if m["hit_rate"] is not None else "unknown"
        rows.append([r["workload"], r["label"], f"{m['requests_ok']}/{m['requests_sent']}",
                     f(m["ttft_p50_ms"]), f(m["ttft_p90_ms"]), f(m["ttft_p99_ms"]),
                     f(m["itl_p50_ms"], "{:.1f}"), f(m["itl_p99_ms"], "{:.1f}"),
                     f(m["output_tok_s"], "{:.1f}"), f(m["requests_s"], "{:.2f}"), hit,
                     f(m["ideal_hit_rate"], "{:.3f}"), f(m.get("hit_vs_ideal"), "{:.3f}"),
                     f(m["vm_hwm_mb"]), f(m["server_cpu_s"], "{:.1f}"),
                     f(m["generator_cpu_ms_per_request"], "{:.1f}"),
                     f(100 * m["generator_cpu_share"] if m["generator_cpu_share"] else None,
                       "{:.1f}")])
    widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows)]
    line = lambda xs: " | ".join(str(x).ljust(w) for x, w in zip(xs, widths))  # noqa: E731
    out = [line(cols), "-+-".join("-" * w for w in widths)] + [line(x) for x in rows]
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prefixd", default=os.path.join(ROOT, "build/bin/prefixd"))
    ap.add_argument("--llama-server", dest="llama_server", default="")
    ap.add_argument("--model", default=os.environ.get("PREFIXD_MODEL") or os.path.expanduser(
        "~/.cache/prefixd/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workloads", default="w1,w2,w3,w4")
    ap.add_argument("--servers", default="prefixd,llama")
    ap.add_argument("--w1-slots", dest="w1_slots", default="8",
                    help="llama-server slot counts (-np) run on W1, comma-separated")
    ap.add_argument("--w2-slots", dest="w2_slots", default="",
                    help="llama-server slot counts (-np) run on W2, comma-separated "
                    "(default: one per session)")
    ap.add_argument("--cache-reuse", dest="cache_reuse", type=int, default=256,
                    help="llama-server --cache-reuse (0 = off)")
    ap.add_argument("--cap", type=float, default=0, help="seconds at most per run")
    ap.add_argument("--out", default="")
    ap.add_argument("--reuse-runs", dest="reuse_runs", default="",
                    help="a JSON (or .partial) of an interrupted invocation: its runs of the "
                    "workloads not named in --workloads are kept in the output")
    a = ap.parse_args()
    a.mode = "quick" if a.quick else "full"
    a.workloads = [w.strip() for w in a.workloads.split(",") if w.strip()]
    a.servers = a.servers.split(",")
    if "llama" not in a.servers:
        a.llama_server = ""
    a.w1_slots = [int(x) for x in a.w1_slots.split(",")]
    a.w2_slots = [int(x) for x in a.w2_slots.split(",")] if a.w2_slots else [
        SIZES[a.mode]["w2"]["sessions"]]
    a.cap = a.cap or SIZES[a.mode]["run_cap_s"]
    a.out = a.out or os.path.join(ROOT, f"bench/results/serving_{a.mode}.json")
    for p in [a.prefixd, a.model] + ([a.llama_server] if a.llama_server else []):
        if not os.path.exists(p):
            sys.exit(f"bench.py: {p} does not exist")

    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    la0 = loadavg()
    t0 = time.time()
    runs, info, wls = asyncio.run(main_async(a))
    la1 = loadavg()
    llama_version = ""
    if a.llama_server:
        llama_version = subprocess.run([a.llama_server, "--version"], capture_output=True,
                                       text=True).stderr.strip().splitlines()[0]
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    other = sum(r["metrics"]["other_cpu_s"] for r in runs)
    walls = sum(r["metrics"]["accounting_window_s"] for r in runs)
    tg = targets(runs, {k: dict(sizes=v.sizes) for k, v in wls.items() if not isinstance(v, list)})
    doc = dict(
        meta=dict(
            command=" ".join(sys.argv), started=started, reused_runs_from=a.reuse_runs or None,
            duration_s=round(time.time() - t0),
            mode=a.mode, host=platform.node(), cpu=cpu, cores=os.cpu_count(),
            threads=a.threads, model=a.model, model_description=info["model_description"],
            kv_bytes_per_token=info["kv_bytes_per_token"], prefixd=a.prefixd,
            prefixd_commit=commit + ("+local-changes" if dirty else ""),
            llama_server=a.llama_server, llama_server_version=llama_version,
            loadavg_before=la0, loadavg_after=la1,
            other_load_cpu_s=round(other, 1),
            other_load_cores_avg=round(other / walls, 3) if walls else None,
            note=("other_load_* is CPU time the machine spent on processes other than the server "
                  "under test and the load generator, during the measured runs (from /proc/stat); "
                  f"{other / walls if walls else 0:.2f} of a core on average over "
                  f"{os.cpu_count()} cores"),
        ),
        workloads={k: dict(name=(v[0] if isinstance(v, list) else v).name,
                           seed=(v[0] if isinstance(v, list) else v).seed,
                           sizes=[x.sizes for x in v] if isinstance(v, list) else v.sizes)
                   for k, v in wls.items()},
        runs=runs, targets=tg)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)
    if os.path.exists(a.out + ".partial"):
        os.unlink(a.out + ".partial")
    print(f"\nServing benchmark ({a.mode}), {cpu}, {os.cpu_count()} cores, threads {a.threads}; "
          f"times in ms; hit = cached prompt tokens / prompt tokens")
    print(table(runs))
    print(f"\nOther load on the machine during the runs: {doc['meta']['note']}")
    print("loadavg before", " ".join(la0), "after", " ".join(la1))
    for t in tg:
        print(f"{'MET   ' if t['met'] else 'MISSED'} {t['target']}: {t['value']}"
              + (f" (per concurrency {t['per_concurrency_median_ratio']})"
                 if "per_concurrency_median_ratio" in t else ""))
    print(f"\nJSON: {os.path.relpath(a.out, os.getcwd())}")


if __name__ == "__main__":
    main()
