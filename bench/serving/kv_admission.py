#!/usr/bin/env python3
"""bench/serving/kv_admission.py -- how many requests prefixd runs at once, and how fast it gets
through them, when requests allow far more tokens than they use: `--kv-admission full` (a request
starts only once the device tier can hold its prompt and all of max_tokens, as a server that
never preempts must) beside `--kv-admission incremental` (it starts once its prompt and a block
fit; the latest arrival is preempted into the prefix cache when a block is missing), one after the
other in one run, same binary, model, threads and device tier.

The workload: REQUESTS chats sent at once through OpenAI's Python SDK (streaming, greedy), each
with max_tokens MAX_TOKENS, as clients that leave room for a long answer do; the answers end at
the model's end of turn, mostly far sooner. Each mode runs on a device tier of each size in
--kv-cache-mb. Reported: the most sequences running at once (sampled from /metrics every 20 ms),
wall time, aggregate tokens/s, time to first token, preemptions and the tokens recomputed for
them, and whether every answer is the same under both modes (greedy; the CPU kernels are
bit-exact, so they must be).

    .venv/bin/python bench/serving/kv_admission.py [--prefixd PATH] [--model GGUF]
        [--threads 2] [--requests 32] [--max-tokens 1024] [--kv-cache-mb 256,64,32]
        [--out bench/results/kv_admission.md]
"""
import argparse
import asyncio
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request

import httpx
import openai

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from openai_side_by_side import ROOT, launch_prefixd, wait_ready  # noqa: E402

TOPICS = ("a sourdough starter", "the French revolution", "photosynthesis", "a job interview",
          "learning the guitar", "compound interest", "the moon landing", "composting",
          "a marathon", "black holes", "a first aid kit", "the printing press")


def start(args, mode, kv_mb, data_dir):
    proc, m = launch_prefixd(
        args.prefixd, args.model, args.threads, data_dir,
        extra=("--kv-cache-mb", str(kv_mb), "--kv-admission", mode),
        metrics_listen="127.0.0.1:0",
        ready=r"device_tier_blocks=(\d+).* metrics_port=(\d+) openai_port=(\d+)")
    return proc, int(m.group(1)), int(m.group(2)), int(m.group(3))


def metric(port, name):
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    m = re.search(rf"^{name} (\S+)$", body, re.M)
    return float(m.group(1))


async def one_chat(client, question, max_tokens):
    t0 = time.perf_counter()
    ttft, text, usage = None, "", None
    stream = await client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": question}],
        max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True})
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if ttft is None:
                ttft = time.perf_counter() - t0
            text += chunk.choices[0].delta.content
        if chunk.usage:
            usage = chunk.usage
    return {"ttft": ttft, "text": text, "tokens": usage.completion_tokens}


async def workload(port, questions, max_tokens):
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="bench",
                                max_retries=0, timeout=3600,
                                http_client=httpx.AsyncClient(timeout=3600))
    await wait_ready(client)
    t0 = time.perf_counter()
    results = await asyncio.gather(*(one_chat(client, q, max_tokens) for q in questions))
    wall = time.perf_counter() - t0
    await client.close()
    return results, wall


def run_mode(args, mode, kv_mb, questions):
    data = tempfile.mkdtemp(prefix="admission-bench-")
    proc, blocks, metrics_port, port = start(args, mode, kv_mb, data)
    peak, stop = [0], threading.Event()

    def sample():  # the most sequences in the batch at once
        while not stop.is_set():
            peak[0] = max(peak[0], int(metric(metrics_port, "prefixd_running_sequences")))
            time.sleep(0.02)
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        results, wall = asyncio.run(workload(port, questions, args.max_tokens))
    finally:
        stop.set()
        sampler.join()
    preempted = metric(metrics_port, "prefixd_preemptions_total")
    recomputed = metric(metrics_port, "prefixd_recomputed_tokens_total")
    proc.terminate()
    proc.wait(60)
    shutil.rmtree(data, ignore_errors=True)
    return {"mode": mode, "kv_mb": kv_mb, "blocks": blocks, "results": results, "wall": wall,
            "peak": peak[0], "preempted": int(preempted), "recomputed": int(recomputed)}


def row(r):
    ttfts = sorted(x["ttft"] * 1000 for x in r["results"])
    tokens = sum(x["tokens"] for x in r["results"])
    return (f"| {r['kv_mb']} MiB ({r['blocks']:,} blocks) | {r['mode']} | {r['peak']} | "
            f"{r['wall']:.1f} | {tokens:,} | {tokens / r['wall']:.1f} | "
            f"{statistics.median(ttfts):,.0f} | {ttfts[-1]:,.0f} | {r['preempted']} | "
            f"{r['recomputed']:,} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prefixd", default=os.path.join(ROOT, "build/bin/prefixd"))
    ap.add_argument("--model", default=os.path.expanduser(
        "~/.cache/prefixd/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--kv-cache-mb", default="256,64,32")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/kv_admission.md"))
    args = ap.parse_args()
    questions = [f"Write a paragraph about {TOPICS[i % len(TOPICS)]}"
                 f"{' for a child' if i // len(TOPICS) % 2 else ''}"
                 f"{'.' if i < 2 * len(TOPICS) else ', please.'}" for i in range(args.requests)]
    runs = []
    for kv_mb in (int(x) for x in args.kv_cache_mb.split(",")):
        for mode in ("full", "incremental"):
            runs.append(run_mode(args, mode, kv_mb, questions))
            print(row(runs[-1]), flush=True)
    same = []
    for kv_mb in dict.fromkeys(r["kv_mb"] for r in runs):
        a, b = [r for r in runs if r["kv_mb"] == kv_mb]
        same.append(sum(x["text"] == y["text"] for x, y in zip(a["results"], b["results"])))
    cmd = " ".join(["bench/serving/kv_admission.py"] + sys.argv[1:])
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), "?")
    lengths = sorted(x["tokens"] for x in runs[0]["results"])
    text = "\n".join([
        "# KV admission: full reservation beside incremental admission with preemption",
        "",
        f"Command: `.venv/bin/python {cmd}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} cores ({cpu}), model {os.path.basename(args.model)}, "
        f"{args.threads} threads, one prefixd after the other.",
        "",
        f"Workload: {args.requests} chat requests sent at once through OpenAI's Python SDK "
        f"(streaming, temperature 0), each with max_tokens {args.max_tokens}; the answers end at "
        f"the model's end of turn, {lengths[0]} to {lengths[-1]} tokens "
        f"(median {statistics.median(lengths):.0f}).",
        "",
        "| device tier | --kv-admission | most running at once | wall s | tokens | tokens/s | "
        "TTFT p50 ms | TTFT max ms | preemptions | tokens recomputed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *[row(r) for r in runs],
        "",
        "Answers identical under both modes (greedy): "
        + ", ".join(f"{n}/{args.requests}" for n in same) + ".",
        "",
    ])
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
