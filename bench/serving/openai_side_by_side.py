#!/usr/bin/env python3
"""bench/serving/openai_side_by_side.py -- prefixd and llama.cpp's llama-server through the same
API (OpenAI's chat completions) and the same client (OpenAI's Python SDK, streaming), on the same
GGUF and thread count, one server after the other in one run.

The workload is the product's case: SESSIONS chats that share one long system prompt (about
SYSTEM_TOKENS tokens) and each ask their own question, CONCURRENCY at a time, every answer
MAX_TOKENS long (ignore_eos, greedy). Reported per server: time to first token (p50, p90, max),
the wall time of the whole workload, aggregate generated tokens per second, and the prompt tokens
each server says it took from its cache (prefixd: usage.prompt_tokens_details.cached_tokens;
llama-server: usage.prompt_tokens minus the timings.prompt_n it computed).

    .venv/bin/python bench/serving/openai_side_by_side.py --llama-server PATH [--prefixd PATH]
        [--model GGUF] [--threads 2] [--sessions 16] [--concurrency 4] [--system-tokens 1000]
        [--max-tokens 32] [--out bench/results/openai_api.md]

prefixd does not build or ship llama.cpp; see bench/serving/run.sh for how to build llama-server.
"""
import argparse
import asyncio
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx
import openai

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "../.."))
WORDS = ("bicycle chain wheel saddle brake gear pedal frame tyre spoke helmet lock light bell "
         "pump rack basket mudguard").split()


def system_prompt(n_tokens):
    """A shop assistant's instructions, about n_tokens tokens long (deterministic)."""
    lines, i = ["You are the assistant of a bicycle shop. Answer briefly and politely."], 0
    while len(" ".join(lines)) < n_tokens * 4:  # about 4 characters per token in English
        w = [WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(8)]
        lines.append(f"Rule {i}: when asked about the {w[0]} or the {w[1]}, mention the "
                     f"{w[2]}, the {w[3]} and the {w[4]} before the {w[5]}.")
        i += 1
    return "\n".join(lines)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_prefixd(binary, model, threads, data_dir, extra=(), metrics_listen="none",
                   ready=r"openai_port=(\d+)"):
    """Starts prefixd with its OpenAI listener on a free port and waits for its ready line.

    Returns (the process, the match of `ready` in the log: its groups are the ready line's
    fields the caller asked for)."""
    log = os.path.join(data_dir, "prefixd.log")
    proc = subprocess.Popen([binary, "--model", model, "--listen", "127.0.0.1:0", "--unix", "none",
                             "--data-dir", data_dir, "--metrics-listen", metrics_listen,
                             "--threads", str(threads), "--openai-listen", "127.0.0.1:0",
                             *extra], stderr=open(log, "w"))
    deadline = time.time() + 120
    while time.time() < deadline:
        m = re.search(ready, open(log).read())
        if m:
            return proc, m
        if proc.poll() is not None:
            sys.exit("prefixd did not start: " + open(log).read())
        time.sleep(0.1)
    sys.exit("prefixd did not start in 120 s")


def start_prefixd(binary, model, threads, data_dir):
    proc, m = launch_prefixd(binary, model, threads, data_dir)
    return proc, int(m.group(1))


def start_llama(binary, model, threads, slots, ctx, data_dir, extra=()):
    port = free_port()
    proc = subprocess.Popen([binary, "-m", model, "-t", str(threads), "--host", "127.0.0.1",
                             "--port", str(port), "-np", str(slots), "-c", str(ctx * slots),
                             *extra],
                            stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(data_dir, "llama.log"), "w"))
    return proc, port


def require_files(args, script):
    """Exits with one line naming the first of args' llama-server, prefixd and model paths that
    does not exist."""
    for path in (args.llama_server, args.prefixd, args.model):
        if not os.path.exists(path):
            sys.exit(f"{script}: {path} does not exist")


def run_each_server(args, run_server, llama_extra=()):
    """Runs run_server(name, port) against a fresh prefixd, then a fresh llama-server (one slot,
    4,096 tokens of context, llama_extra added), each in its own data folder and stopped after.
    Returns {name: what run_server returned}."""
    results = {}
    for name in ("prefixd", "llama-server"):
        with tempfile.TemporaryDirectory() as data_dir:
            if name == "prefixd":
                proc, port = start_prefixd(args.prefixd, args.model, args.threads, data_dir)
            else:
                proc, port = start_llama(args.llama_server, args.model, args.threads, 1, 4096,
                                         data_dir, llama_extra)
            try:
                results[name] = run_server(name, port)
            finally:
                proc.terminate()
                proc.wait(60)
    return results


async def wait_ready(client, deadline=120):
    t0 = time.time()
    while True:
        try:
            await client.models.list()
            return
        except Exception:  # not up yet (connection refused, 503 while loading)
            if time.time() - t0 > deadline:
                raise
            await asyncio.sleep(0.2)


async def one_chat(client, model, system, question, max_tokens):
    t0 = time.perf_counter()
    ttft, n_chunks, usage, timings = None, 0, None, None
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "system", "content": system},
                               {"role": "user", "content": question}],
        max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if ttft is None:
                ttft = time.perf_counter() - t0
            n_chunks += 1
        if chunk.usage:
            usage = chunk.usage
        timings = (chunk.model_extra or {}).get("timings") or timings
    done = time.perf_counter() - t0
    cached = None
    if usage and usage.prompt_tokens_details:
        cached = usage.prompt_tokens_details.cached_tokens
    elif usage and timings and "prompt_n" in timings:  # llama-server: the tokens it computed
        cached = usage.prompt_tokens - timings["prompt_n"]
    return {"ttft": ttft, "done": done, "tokens": usage.completion_tokens if usage else n_chunks,
            "prompt": usage.prompt_tokens if usage else None, "cached": cached}


async def workload(port, model, args):
    # a connection per request: llama-server (cpp-httplib) closes keep-alive connections idle for
    # 5 s, and a request sent on one it just closed fails; neither server gets reused connections
    client = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="bench", max_retries=0, timeout=600,
        http_client=httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0),
                                      timeout=600))
    await wait_ready(client)
    system = system_prompt(args.system_tokens)
    questions = [f"Question {i}: what should I check on my {WORDS[i % len(WORDS)]} before a "
                 f"long ride in the rain?" for i in range(args.sessions)]
    sem = asyncio.Semaphore(args.concurrency)

    async def run(q):
        async with sem:
            return await one_chat(client, model, system, q, args.max_tokens)
    t0 = time.perf_counter()
    results = await asyncio.gather(*(run(q) for q in questions))
    wall = time.perf_counter() - t0
    await client.close()
    return results, wall


def summarise(name, results, wall):
    ttfts = sorted(r["ttft"] * 1000 for r in results)
    tokens = sum(r["tokens"] for r in results)
    cached = [r["cached"] for r in results if r["cached"] is not None]
    prompt = sum(r["prompt"] or 0 for r in results)
    q = statistics.quantiles(ttfts, n=10, method="inclusive") if len(ttfts) > 1 else ttfts * 9
    return (f"| {name} | {statistics.median(ttfts):.0f} | {q[8]:.0f} | {ttfts[-1]:.0f} | "
            f"{wall:.1f} | {tokens / wall:.1f} | "
            + (f"{sum(cached):,} of {prompt:,}" if cached else "not reported") + " |")


def server_args(ap):
    """The options every side-by-side run takes: the two servers, the model, the threads."""
    ap.add_argument("--llama-server", required=True)
    ap.add_argument("--prefixd", default=os.path.join(ROOT, "build/bin/prefixd"))
    ap.add_argument("--model", default=os.path.expanduser(
        "~/.cache/prefixd/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--threads", type=int, default=2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    server_args(ap)
    ap.add_argument("--sessions", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--system-tokens", type=int, default=1000)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/openai_api.md"))
    args = ap.parse_args()
    for path in (args.llama_server, args.prefixd):
        if not os.access(path, os.X_OK):
            sys.exit(f"openai_side_by_side: {path} is not an executable")
    rows = []
    for name in ("prefixd", "llama-server"):
        data = tempfile.mkdtemp(prefix="openai-bench-")
        try:
            if name == "prefixd":
                proc, port = start_prefixd(args.prefixd, args.model, args.threads, data)
            else:  # one slot per concurrent request, each with room for the whole chat
                proc, port = start_llama(args.llama_server, args.model, args.threads,
                                         args.concurrency, args.system_tokens * 2 + 512, data)
            results, wall = asyncio.run(workload(port, "default", args))
            rows.append(summarise(name, results, wall))
        finally:
            proc.terminate()
            proc.wait(60)
            shutil.rmtree(data, ignore_errors=True)
    cmd = " ".join(["bench/serving/openai_side_by_side.py"] + sys.argv[1:])
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), "?")
    text = "\n".join([
        "# The OpenAI-compatible API: prefixd beside llama-server",
        "",
        f"Command: `{cmd}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} cores ({cpu}), model {os.path.basename(args.model)}, "
        f"{args.threads} threads each.",
        "",
        f"Workload: {args.sessions} chats sharing one system prompt of about "
        f"{args.system_tokens} tokens, each with its own question, {args.concurrency} at a time, "
        f"{args.max_tokens} tokens per answer (greedy, ignore_eos), streamed; the same client "
        f"(OpenAI's Python SDK, `chat.completions.create(stream=True)`) for both servers, "
        f"started fresh, a new connection per request. llama-server runs {args.concurrency} "
        f"slots (-np), one per concurrent chat.",
        "",
        "| server | TTFT p50 (ms) | TTFT p90 (ms) | TTFT max (ms) | wall (s) | generated tok/s "
        "| prompt tokens from the cache |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        "",
    ])
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
