#!/usr/bin/env python3
"""bench/serving/json_mode.py -- JSON output, prefixd beside llama.cpp's llama-server: how often
the answer is a JSON object, and what the constraint costs in decode speed, on the same model,
threads and prompts, through the same client (OpenAI's Python SDK, streamed chat completions),
in one run.

Each server answers every prompt (requests asking for a JSON object of named keys) three times,
greedy, one request at a time: as plain text, with response_format {"type": "json_object"}, and
with {"type": "json_schema"} carrying the prompt's schema (prefixd: its byte-level grammars over
the vocabulary trie; llama-server: its GBNF grammars). An answer counts as JSON when json.loads
takes the whole content and gives an object (as a program would use it); "extractable" also
allows prose or code fences around the first '{' ... last '}'; "valid" means valid for the
prompt's schema by jsonschema's validator.
Decode rate: the tokens after the first, over the time from the first content to the last.

    .venv/bin/python bench/serving/json_mode.py --llama-server PATH [--prefixd PATH]
        [--model GGUF] [--threads 2] [--max-tokens 200] [--out bench/results/json_mode.md]

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
from openai_side_by_side import ROOT, require_files, run_each_server, server_args  # noqa: E402

S, I, N, B = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
LIST = {"type": "array", "items": S}


def obj(**props):
    return {"type": "object", "properties": props, "required": list(props)}


# (prompt, the schema its answer should follow)
PROMPTS = [
    ("Describe a fictional person as a JSON object with the keys name, age and city.",
     obj(name=S, age=I, city=S)),
    ("Give a JSON object for a book with the keys title, author, year and genres (a list).",
     obj(title=S, author=S, year=I, genres=LIST)),
    ("Return the weather in Paris as a JSON object with the keys city, temperature_c and sky.",
     obj(city=S, temperature_c=N, sky=S)),
    ("Write a JSON object for a product with the keys id, name, price and in_stock.",
     obj(id=I, name=S, price=N, in_stock=B)),
    ("Describe a cat as a JSON object with the keys name, color and age.",
     obj(name=S, color=S, age=I)),
    ("Give a JSON object with the keys country and capital for France.",
     obj(country=S, capital=S)),
    ("Make a JSON object for a meeting with the keys title, day, start and attendees (a list).",
     obj(title=S, day=S, start=S, attendees=LIST)),
    ("Describe a car as a JSON object with the keys make, model, year and electric (true or "
     "false).", obj(make=S, model=S, year=I, electric=B)),
    ("Write a JSON object for an address with the keys street, city, zip and country.",
     obj(street=S, city=S, zip=S, country=S)),
    ("Return a JSON object with the keys movie, director and rating for a famous film.",
     obj(movie=S, director=S, rating=N)),
    ("Create a JSON object describing a recipe with the keys name, servings and ingredients.",
     obj(name=S, servings=I, ingredients=LIST)),
    ("Give a JSON object for a song with the keys title, artist and duration_seconds.",
     obj(title=S, artist=S, duration_seconds=I)),
]

def text(**kw):
    return {"type": "string", **kw}


def integer(lo, hi):
    return {"type": "integer", "minimum": lo, "maximum": hi}


# --suite constraints: schemas whose strings carry a pattern, a format or a length and whose
# numbers carry bounds (what pydantic writes for constr, EmailStr, date, datetime, UUID, IP
# addresses, URLs, conint and confloat)
CONSTRAINED = [
    ("Create a user signup as a JSON object with the keys username (3 to 16 lowercase letters, "
     "digits or underscores), email and age.",
     obj(username=text(pattern="^[a-z0-9_]{3,16}$"), email=text(format="email"),
         age=integer(13, 120))),
    ("Give a JSON object for a calendar event with the keys title, date (YYYY-MM-DD) and start "
     "(an RFC 3339 date-time).",
     obj(title=text(maxLength=60), date=text(format="date"), start=text(format="date-time"))),
    ("Describe a web server as a JSON object with the keys hostname, ipv4 and port.",
     obj(hostname=text(format="hostname"), ipv4=text(format="ipv4"), port=integer(1, 65535))),
    ("Write a JSON object for a product with the keys sku (two capital letters, a dash and four "
     "digits), name and price.",
     obj(sku=text(pattern="^[A-Z]{2}-\\d{4}$"), name=S,
         price={"type": "number", "exclusiveMinimum": 0, "maximum": 10000})),
    ("Rate a restaurant as a JSON object with the keys name, stars (1 to 5) and summary (one "
     "short sentence).",
     obj(name=S, stars=integer(1, 5), summary=text(minLength=10, maxLength=80))),
    ("Return a JSON object for a color with the keys name and hex (like #FF8800).",
     obj(name=S, hex=text(pattern="^#[0-9A-Fa-f]{6}$"))),
    ("Give a JSON object for a contact with the keys name, phone (international format, like "
     "+14155552671) and email.",
     obj(name=S, phone=text(pattern="^\\+[1-9]\\d{6,14}$"), email=text(format="email"))),
    ("Make a JSON object for an order with the keys order_id (a UUID), quantity and total.",
     obj(order_id=text(format="uuid"), quantity=integer(1, 100),
         total={"type": "number", "minimum": 0})),
    ("Create a JSON object for a website with the keys title and url.",
     obj(title=S, url=text(format="uri", minLength=1, maxLength=2083))),
    ("Give a JSON object for a flight with the keys flight (two capital letters and 3 or 4 "
     "digits), from and to (airport codes) and departure (an RFC 3339 date-time).",
     obj(flight=text(pattern="^[A-Z]{2}\\d{3,4}$"), **{"from": text(pattern="^[A-Z]{3}$")},
         to=text(pattern="^[A-Z]{3}$"), departure=text(format="date-time"))),
    ("Return a temperature reading as a JSON object with the keys sensor, celsius and time "
     "(HH:MM:SS with a time zone).",
     obj(sensor=S, celsius={"type": "number", "minimum": -50, "maximum": 60},
         time=text(format="time"))),
    ("Write a JSON object for a book with the keys title, isbn (13 digits) and year.",
     obj(title=S, isbn=text(pattern="^\\d{13}$"), year=integer(1450, 2025))),
]
MODES = ("text", "json_object", "json_schema")


def parse(content, schema):
    """(whole, extractable, valid): the content as a JSON object, strictly and loosely, and the
    whole content valid for the prompt's schema."""
    def load(text):
        try:
            v = json.loads(text)
            return v if isinstance(v, dict) else None
        except ValueError:
            return None
    a, b = content.find("{"), content.rfind("}")
    whole = load(content)
    loose = whole is not None or (a >= 0 and b > a and load(content[a:b + 1]) is not None)
    valid = whole is not None and jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER).is_valid(whole)
    return whole is not None, loose, valid


def one(client, prompt, schema, max_tokens, mode, server="prefixd"):
    t0 = time.perf_counter()
    times, text, finish, usage = [], "", None, None
    extra = {}
    if mode == "json_object":
        extra = {"response_format": {"type": "json_object"}}
    elif mode == "json_schema" and server == "llama-server":
        # llama-server's own form: the build measured drops OpenAI's json_schema form (a
        # shadowed variable in its request parsing), and honours this one
        extra = {"response_format": {"type": "json_object", "schema": schema}}
    elif mode == "json_schema":
        extra = {"response_format": {"type": "json_schema", "json_schema": {
            "name": "answer", "schema": schema, "strict": True}}}
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
        temperature=0, stream=True, stream_options={"include_usage": True}, **extra)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            times.append(time.perf_counter())
            text += chunk.choices[0].delta.content
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
        if chunk.usage:
            usage = chunk.usage
    tokens = usage.completion_tokens if usage else len(times)
    whole, loose, valid = parse(text, schema)
    return {"ttft": (times[0] - t0) if times else None, "tokens": tokens, "finish": finish,
            "decode_s": (times[-1] - times[0]) if len(times) > 1 else 0.0, "whole": whole,
            "loose": loose, "valid": valid, "text": text}


def wait_ready(client, deadline=120):
    t0 = time.time()
    while True:
        try:
            client.models.list()
            return
        except Exception:  # not up yet
            if time.time() - t0 > deadline:
                raise
            time.sleep(0.2)


def run_server(name, port, max_tokens, prompts):
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="bench", max_retries=0, timeout=600,
        http_client=httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=600))
    wait_ready(client)
    one(client, "Say hello.", {}, 8, "text")  # warm-up
    out = {}
    for mode in MODES:
        out[mode] = [one(client, p, schema, max_tokens, mode, name) for p, schema in prompts]
    client.close()
    return out


def row(server, mode, results):
    n = len(results)
    whole = sum(r["whole"] for r in results)
    loose = sum(r["loose"] for r in results)
    valid = sum(r["valid"] for r in results)
    stopped = sum(r["finish"] == "stop" for r in results)
    tokens = sum(r["tokens"] for r in results)
    decode_tokens = sum(max(r["tokens"] - 1, 0) for r in results if r["decode_s"] > 0)
    decode_s = sum(r["decode_s"] for r in results)
    ttft = statistics.median(r["ttft"] * 1000 for r in results if r["ttft"] is not None)
    return (f"| {server} | {mode} | {whole}/{n} | {loose}/{n} | {valid}/{n} | {stopped}/{n} | "
            f"{tokens / n:.1f} | {decode_tokens / decode_s:.1f} | {ttft:.0f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    server_args(ap)
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--suite", choices=("keys", "constraints"), default="keys",
                    help="keys: objects of named, typed keys; constraints: strings with a "
                    "pattern, format or length and numbers with bounds")
    ap.add_argument("--out")
    args = ap.parse_args()
    require_files(args, "json_mode.py")
    prompts = PROMPTS if args.suite == "keys" else CONSTRAINED
    out = args.out or os.path.join(
        ROOT, "bench/results", "json_mode.md" if args.suite == "keys" else "json_constraints.md")
    results = run_each_server(args, lambda name, port: run_server(name, port, args.max_tokens,
                                                                  prompts))
    what = ("asking for a JSON object with named keys" if args.suite == "keys" else
            "asking for a JSON object whose strings have a pattern, a format (email, date, "
            "date-time, time, hostname, ipv4, uuid, uri) or a length and whose numbers have "
            "bounds")
    lines = [
        "# JSON output: prefixd beside llama-server" +
        ("" if args.suite == "keys" else ", schemas with constraints on values"),
        "",
        f"Command: `.venv/bin/python bench/serving/json_mode.py --llama-server PATH "
        f"--threads {args.threads} --max-tokens {args.max_tokens} --suite {args.suite}`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, on {os.cpu_count()} cores.",
        "",
        f"Model `{os.path.basename(args.model)}`, {len(prompts)} prompts {what}, "
        f"greedy, at most {args.max_tokens} tokens, one request at a time, "
        f"streamed through OpenAI's Python SDK; each server started fresh with {args.threads} "
        "threads (llama-server: one slot, `-c 4096`). `json_object` = `response_format: "
        "{\"type\": \"json_object\"}`; `json_schema` = the prompt's schema (the keys it names, "
        "typed, all required) as `{\"type\": \"json_schema\", ...}`. \"valid\": the whole "
        "answer is an object valid for that schema (jsonschema's validator with its format "
        "checker), whatever the mode. "
        "llama-server gets its schema as `{\"type\": \"json_object\", \"schema\": ...}`: the build "
        "measured ignores OpenAI's `json_schema` form (its parser assigns the schema to a "
        "shadowing local variable), which would have made it plain text.",
        "",
        "| server | response_format | JSON object (whole answer) | JSON object (extractable) | "
        "valid for the schema | finish stop | tokens per answer | decode tok/s | TTFT p50 ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in results:
        for mode in MODES:
            lines.append(row(name, mode, results[name][mode]))
    lines += ["", "Answers (first 160 characters):", ""]
    for name in results:
        for mode in MODES:
            for r in results[name][mode]:
                lines.append(f"- {name}, {mode}, {r['finish']}, whole={int(r['whole'])}, "
                             f"valid={int(r['valid'])}: `{json.dumps(r['text'][:160])}`")
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
