#!/usr/bin/env python3
"""bench/serving/tool_calls.py -- tool calling, prefixd beside llama.cpp's llama-server (run with
--jinja, its tool-calling mode): how often the answer is a usable call of the right function, on
the same model, threads and requests, through the same client (OpenAI's Python SDK), in one run.

Every request offers the same three functions (get_weather, get_time, convert_currency) and asks
a question one of them answers, greedy, one request at a time, with tool_choice "auto" and
"required". Counted per server and mode: answers with a tool call at all; calls of the function
the question needs; and of those, arguments valid for that function's parameters (jsonschema's
validator). Also the generated tokens per second over each whole request, and the median time
per request.

    .venv/bin/python bench/serving/tool_calls.py --llama-server PATH [--prefixd PATH]
        [--model GGUF] [--threads 2] [--max-tokens 120] [--out bench/results/tool_calls.md]

prefixd does not build or ship llama.cpp; see bench/serving/run.sh for how to build llama-server.
"""
import argparse
import json
import os
import statistics
import sys
import time

import httpx
import jsonschema
import openai

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from json_mode import wait_ready  # noqa: E402
from openai_side_by_side import ROOT, require_files, run_each_server, server_args  # noqa: E402


def function(name, description, **props):
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": props, "required": list(props)}}}


TOOLS = [
    function("get_weather", "The current weather in a city.",
             city={"type": "string", "description": "the city's name"},
             unit={"enum": ["celsius", "fahrenheit"]}),
    function("get_time", "The current local time in a time zone.",
             timezone={"type": "string", "description": "an IANA zone, like Europe/Paris"}),
    function("convert_currency", "Converts an amount of money between currencies.",
             amount={"type": "number"}, source={"type": "string", "description": "ISO code"},
             target={"type": "string", "description": "ISO code"}),
]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
QUESTIONS = [
    ("What's the weather like in Paris right now?", "get_weather"),
    ("Is it raining in London today? Use celsius.", "get_weather"),
    ("How hot is it in Tokyo, in fahrenheit?", "get_weather"),
    ("Tell me the weather in Berlin.", "get_weather"),
    ("What time is it in New York?", "get_time"),
    ("What is the local time in Europe/Madrid?", "get_time"),
    ("Which time is it now in Sydney?", "get_time"),
    ("Give me the current time in Asia/Kolkata.", "get_time"),
    ("How much is 100 US dollars in euros?", "convert_currency"),
    ("Convert 50 GBP to JPY.", "convert_currency"),
    ("What are 20 euros in Swiss francs?", "convert_currency"),
    ("I have 1000 yen; how many dollars is that?", "convert_currency"),
]
MODES = ("auto", "required")


def one(client, question, want, mode, max_tokens):
    t0 = time.perf_counter()
    r = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": question}], tools=TOOLS,
        tool_choice=mode, max_tokens=max_tokens, temperature=0)
    elapsed = time.perf_counter() - t0
    calls = r.choices[0].message.tool_calls or []
    right = [c for c in calls if c.function.name == want]
    valid = False
    for c in right:
        try:
            valid |= jsonschema.Draft202012Validator(PARAMS[want]).is_valid(
                json.loads(c.function.arguments))
        except ValueError:
            pass
    return {"call": bool(calls), "right": bool(right), "valid": valid, "s": elapsed,
            "tokens": r.usage.completion_tokens, "finish": r.choices[0].finish_reason,
            "calls": [(c.function.name, c.function.arguments) for c in calls],
            "content": r.choices[0].message.content}


def run_server(port, max_tokens):
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="bench", max_retries=0, timeout=600,
        http_client=httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=600))
    wait_ready(client)
    out = {}
    for mode in MODES:
        out[mode] = []
        for q, want in QUESTIONS:
            try:
                out[mode].append(one(client, q, want, mode, max_tokens))
            except openai.APIError as e:  # a server that refuses the request: no call
                out[mode].append({"call": False, "right": False, "valid": False, "s": 0,
                                  "tokens": 0, "finish": f"error {e.__class__.__name__}",
                                  "calls": [], "content": str(e)[:200]})
    client.close()
    return out


def row(server, mode, results):
    n = len(results)
    tokens = sum(r["tokens"] for r in results)
    seconds = sum(r["s"] for r in results)
    return (f"| {server} | {mode} | {sum(r['call'] for r in results)}/{n} | "
            f"{sum(r['right'] for r in results)}/{n} | {sum(r['valid'] for r in results)}/{n} | "
            f"{tokens / n:.1f} | {tokens / seconds if seconds else 0:.1f} | "
            f"{statistics.median(r['s'] for r in results) * 1000:.0f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    server_args(ap)
    ap.add_argument("--max-tokens", type=int, default=120)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/tool_calls.md"))
    args = ap.parse_args()
    require_files(args, "tool_calls.py")
    results = run_each_server(args, lambda name, port: run_server(port, args.max_tokens),
                              llama_extra=("--jinja",))
    lines = [
        "# Tool calling: prefixd beside llama-server",
        "",
        f"Command: `.venv/bin/python bench/serving/tool_calls.py --llama-server PATH "
        f"--threads {args.threads} --max-tokens {args.max_tokens}`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, on {os.cpu_count()} cores.",
        "",
        f"Model `{os.path.basename(args.model)}`, {len(QUESTIONS)} questions that one of three "
        "offered functions answers (get_weather, get_time, convert_currency), greedy, at most "
        f"{args.max_tokens} tokens, one request at a time, through OpenAI's Python SDK; each "
        f"server started fresh with {args.threads} threads (llama-server: `--jinja`, one slot, "
        "`-c 4096`). \"right function\": a call of the function the question needs; \"valid\": "
        "its arguments are valid for that function's parameters (jsonschema's validator).",
        "",
        "| server | tool_choice | answers with a call | right function | valid arguments | "
        "tokens per answer | tokens/s | median request ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in results:
        for mode in MODES:
            lines.append(row(name, mode, results[name][mode]))
    lines += ["", "The answers:", ""]
    for name in results:
        for mode in MODES:
            for (q, want), r in zip(QUESTIONS, results[name][mode]):
                lines.append(f"- {name}, {mode}, \"{q}\" ({want}): finish {r['finish']}, calls "
                             f"{json.dumps(r['calls'])}"
                             + (f", content {json.dumps((r['content'] or '')[:120])}"
                                if not r["calls"] else ""))
    text = "\n".join(lines) + "\n"
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
