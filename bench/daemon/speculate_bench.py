#!/usr/bin/env python3
"""What speculative decoding (--speculate) does to decode speed: the same
daemon binary and model with --speculate 0 ("off"), with drafts chosen by the cost model ("on")
and with every draft verified whatever it costs ("always", PREFIXD_SPECULATE_ALWAYS=1: what the
cost model saves), measured side by side in one run, the daemons alternating round by round (only
one runs at a time: they would share the cores).

Workloads (chat requests to the default model, greedy, no prefix cache so every request
computes its prompt the same way; each round sends each request once):
  quote    repeat a passage word for word (the answer is in the prompt);
  edit     rename a variable in a piece of code and print all of it;
  extract  JSON extraction with response_format json_schema: values copied out of a document;
  free     open-ended writing, nothing to copy (the case speculation must not slow down);
  again    the free requests asked a second time with the prefix cache on (measured: the
           second time): the first answers were published into the cache, so the second
           ones are drafted from it -- a question many users ask, a regenerated answer;
  batch8   eight requests at once, four free and four quote (drafts compete for the pass).

Every request must give the same text on both daemons (checked). Reported per workload: decode
tokens per second (generated tokens over the time after the first token, summed over the
requests), the speed-up, and the share of generated tokens that came from kept drafts
(prefixd_spec_accepted_tokens_total over prefixd_generated_tokens_total).

    speculate_bench.py PREFIXD_BIN MODEL [--threads 2] [--rounds 3] [--speculate 8]
                       [--out bench/results/speculate.md]
"""
import argparse
import concurrent.futures
import datetime
import json
import os
import re
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "../../tests/daemon"))
sys.path.insert(0, os.path.join(HERE, "../../tests/common"))
os.environ.setdefault("PREFIXD_PROTO", os.path.join(HERE, "../../proto"))
from conftest import Daemon, pb  # noqa: E402

PASSAGE = (
    "The river Vecht flows north from Utrecht to Muiden, where it meets the IJmeer. Along its "
    "banks stand dozens of country houses built by Amsterdam merchants in the seventeenth and "
    "eighteenth centuries, when a summer on the Vecht was the height of fashion. Many of the "
    "houses still stand, some as museums, and a boat trip from Utrecht passes most of them.")
PASSAGE2 = (
    "To reset the router, hold the small button on its back for ten seconds until the light "
    "turns orange. Wait two minutes, then connect to the network named on the sticker under the "
    "router, and open the address printed there in a browser to choose a new password.")
CODE = (
    "def total(items):\n    x = 0\n    for item in items:\n        x = x + item.price * item.qty\n"
    "    return x\n\n\ndef average(items):\n    x = total(items)\n    return x / len(items)\n")
CODE2 = (
    "class Counter:\n    def __init__(self):\n        self.n = 0\n\n    def add(self, k):\n"
    "        self.n = self.n + k\n        return self.n\n\n    def reset(self):\n"
    "        self.n = 0\n")
DOC = (
    "Order 48213 was placed on 12 March 2026 by Marieke de Vries, Oudegracht 112, 3511 AZ "
    "Utrecht, for two Gazelle Orange C7 city bikes at 849 euros each, to be delivered by "
    "Fietsenwinkel Vecht on 19 March 2026.")
DOC2 = (
    "Ticket 7731: on 3 April 2026 Joost Bakker reported that the Brompton C Line folding bike "
    "he bought in Amersfoort makes a clicking noise in third gear; he asks for a repair at the "
    "Domstraat 4 workshop in Utrecht.")
SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string"}, "address": {"type": "string"}, "product": {"type": "string"},
    "date": {"type": "string"}}, "required": ["name", "address", "product", "date"]}
FREE = ["Write a short story about a cat who learns to sail.",
        "Explain why the sky is blue to a ten-year-old.",
        "Give me three ideas for a birthday party in winter.",
        "What makes a good cup of coffee? Answer in a paragraph."]


def chat(text, max_tokens, schema=None, cache=False):
    kw = dict(prompt=pb.Prompt(chat=pb.ChatMessages(messages=[
        pb.ChatMessage(role="user", content=text)])), max_tokens=max_tokens,
        cache=pb.CacheOptions(no_cache=not cache))
    if schema:
        kw["response_format"] = pb.ResponseFormat(
            type=pb.ResponseFormat.RESPONSE_FORMAT_JSON_SCHEMA, json_schema=json.dumps(schema))
    return pb.GenerateRequest(**kw)


WORKLOADS = {
    "quote": [chat(f"Repeat the following text exactly, word for word:\n\n{p}", 160)
              for p in (PASSAGE, PASSAGE2)],
    "edit": [chat(f"Rename the variable {v} to {w} in this Python code and print the whole "
                  f"code:\n\n{c}", 200) for v, w, c in (("x", "subtotal", CODE),
                                                        ("n", "count", CODE2))],
    "extract": [chat(f"Extract the customer's name, address, product and date from this text "
                     f"as JSON:\n\n{d}", 120, SCHEMA) for d in (DOC, DOC2)],
    "free": [chat(t, 160) for t in FREE],
    "again": [chat(t, 160, cache=True) for t in FREE],
}


def one(stub, req):
    text, final = "", None
    for m in stub.Generate(req, timeout=600):
        text += m.text
        if m.finish_reason:
            final = m
    return text, final.usage.generated_tokens, final.timings.decode_ms


def counters(port):
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    found = lambda name: re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", body, re.M)  # noqa: E731
    return (sum(float(v) for v in found("prefixd_spec_accepted_tokens_total")),
            float(found("prefixd_generated_tokens_total")[0]))


def measure(binary, model, threads, speculate, always, data_dir):
    """{workload: (texts, generated tokens, decode seconds, accepted share)} for one round."""
    os.environ["PREFIXD_BIN"] = binary
    d = Daemon(model, data_dir, extra=["--threads", str(threads), "--speculate", str(speculate),
                                       "--metrics-listen", "127.0.0.1:0", "--disk-cache-mb", "0",
                                       "--log-requests", "no"],
               env={"PREFIXD_SPECULATE_ALWAYS": "1" if always else "0"})
    try:
        port = int(re.search(r"metrics_port=(\d+)", d.log_text()).group(1))
        stub = d.stub()
        one(stub, WORKLOADS["free"][0])  # warm-up: page in the weights
        out = {}
        for name, reqs in list(WORKLOADS.items()) + [("batch8", None)]:
            a0, g0 = counters(port)
            if reqs is None:
                reqs = WORKLOADS["free"] + WORKLOADS["quote"] * 2
                t0 = time.perf_counter()
                with concurrent.futures.ThreadPoolExecutor(len(reqs)) as pool:
                    res = list(pool.map(lambda r: one(stub, r), reqs))
                wall = time.perf_counter() - t0
                gen = sum(r[1] for r in res)
                secs = wall  # aggregate: all tokens over the wall time
            else:
                if name == "again":  # the first time, unmeasured
                    for r in reqs:
                        one(stub, r)
                    a0, g0 = counters(port)
                res = [one(stub, r) for r in reqs]
                gen = sum(r[1] for r in res)
                secs = sum(r[2] for r in res) / 1000.0
            a1, g1 = counters(port)
            out[name] = ([r[0] for r in res], gen, secs, (a1 - a0) / max(g1 - g0, 1))
        return out
    finally:
        d.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--speculate", type=int, default=8)
    ap.add_argument("--out", default=os.path.join(HERE, "../results/speculate.md"))
    args = ap.parse_args()
    names = list(WORKLOADS) + ["batch8"]
    configs = {"off": (0, False), "on": (args.speculate, False), "always": (args.speculate, True)}
    runs = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as data_dir:
        for r in range(args.rounds):
            for c, (spec, always) in configs.items():
                runs[c].append(measure(args.binary, args.model, args.threads, spec, always,
                                       data_dir))
                print(f"round {r + 1} {c}: " + ", ".join(
                    f"{n} {runs[c][-1][n][1] / runs[c][-1][n][2]:.1f}" for n in names),
                    file=sys.stderr)
    same = {n: all(run[n][0] == runs["off"][0][n][0] for c in runs for run in runs[c])
            for n in names}

    def rate(c, n):  # tokens/s over all rounds
        return (sum(run[n][1] for run in runs[c]) / sum(run[n][2] for run in runs[c]))

    cmd = (f"bench/daemon/speculate_bench.py {args.binary} {args.model} --threads "
           f"{args.threads} --rounds {args.rounds} --speculate {args.speculate}")
    lines = [
        "# Speculative decoding: --speculate 0 beside --speculate "
        f"{args.speculate}", "",
        f"Command: `{cmd}`, {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} cores.", "",
        f"Model `{os.path.basename(args.model)}`, greedy, no prefix cache (but for again, asked "
        f"a second time with the cache on); {args.rounds} rounds, "
        "the three daemons alternating (one at a time). off = `--speculate 0`; on = "
        f"`--speculate {args.speculate}`, the cost model choosing each draft's length; always = "
        "the same with `PREFIXD_SPECULATE_ALWAYS=1`, every draft found verified in full. Decode "
        "tok/s = generated tokens over the time after each request's first token (batch8: over "
        "the wall time of the eight requests at once). Kept = generated tokens that came from "
        "kept drafts.", "",
        "| workload | requests | tokens per round | decode tok/s: off | on | always | "
        "on / off | always / off | kept: on | always | same text |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for n in names:
        off, on, al = rate("off", n), rate("on", n), rate("always", n)
        kept = [sum(run[n][3] for run in runs[c]) / args.rounds for c in ("on", "always")]
        n_req = len(runs["off"][0][n][0])
        lines.append(f"| {n} | {n_req} | {runs['off'][0][n][1]} | {off:.1f} | {on:.1f} | "
                     f"{al:.1f} | {on / off:.2f}x | {al / off:.2f}x | {kept[0]:.0%} | "
                     f"{kept[1]:.0%} | {'yes' if same[n] else 'NO'} |")
    lines += ["", "Per round (tok/s, off / on / always):", "", "```"]
    for r in range(args.rounds):
        lines.append(f"round {r + 1}: " + ", ".join(
            f"{n} " + " / ".join(f"{runs[c][r][n][1] / runs[c][r][n][2]:.1f}" for c in configs)
            for n in names))
    lines += ["```", "", "Answers (the same in every configuration; first 200 characters):", ""]
    for n in names[:-1]:
        for t in runs["on"][0][n][0]:
            lines.append(f"- {n}: `{json.dumps(t[:200])}`")
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines[:len(names) + 10]))
    if not all(same.values()):
        sys.exit("speculation changed an output")


if __name__ == "__main__":
    main()
