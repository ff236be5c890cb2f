#!/usr/bin/env python3
"""What a long prompt's tokenization costs the other sessions: the gaps between the tokens of a
running stream while other clients send long texts, with the tokenizer thread
(--tokenize-thread-bytes 16384, the default) and without it (0: every prompt is tokenized on the
engine thread, between two forward passes), side by side in one run, same daemon binary, model
and threads.

The stream: one Generate of --tokens tokens (greedy, ignore_eos) on the default model. Beside
it, one client sends Tokenize requests of --text-kib KiB of text back to back (Tokenize is the
purest case: no prefill follows, so what the stream feels is the tokenization alone). Figures:
the stream's inter-token gaps (p50, p99, max) and decode rate, and the Tokenize latency.

    tokenize_stall.py PREFIXD_BIN MODEL [--threads 2] [--text-kib 512] [--tokens 256]
                      [--out bench/results/tokenize_stall.md]
"""
import argparse
import os
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../tests/daemon"))
os.environ.setdefault("PREFIXD_PROTO", os.path.join(os.path.dirname(__file__), "../../proto"))
from conftest import Daemon, pb  # noqa: E402

WORDS = ("the shop sells city bikes road bikes and cargo bikes repairs every brand offers "
         "rentals by the day and keeps spare parts for older models while the staff answers "
         "questions about sizes gears brakes lights locks and child seats ").split()


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def run(binary, model, threads, thread_bytes, text, tokens):
    os.environ["PREFIXD_BIN"] = binary
    with tempfile.TemporaryDirectory() as data_dir:
        d = Daemon(model, data_dir, extra=["--threads", str(threads), "--tokenize-thread-bytes",
                                           str(thread_bytes), "--host-cache-mb", "0",
                                           "--disk-cache-mb", "0"])
        try:
            s = d.stub()
            s.Tokenize(pb.TokenizeRequest(prompt=pb.Prompt(text=text)), timeout=300)  # warm-up
            stop, lat = threading.Event(), []

            def tokenizer_client():
                c = d.stub()
                while not stop.is_set():
                    t0 = time.monotonic()
                    c.Tokenize(pb.TokenizeRequest(prompt=pb.Prompt(text=text)), timeout=300)
                    lat.append(time.monotonic() - t0)
            arrivals, gen_alone = [], None
            # the stream alone first (its own gaps), then with the tokenizing client beside it
            for beside in (False, True):
                if beside:
                    th = threading.Thread(target=tokenizer_client)
                    th.start()
                    time.sleep(0.2)
                times = []
                req = pb.GenerateRequest(prompt=pb.Prompt(text="Tell me about bicycles."),
                                         max_tokens=tokens,
                                         sampling=pb.SamplingParams(ignore_eos=True))
                for m in s.Generate(req, timeout=600):
                    if m.token_ids:
                        times.extend([time.monotonic()] * len(m.token_ids))
                if beside:
                    stop.set()
                    th.join()
                gaps = [b - a for a, b in zip(times[1:], times[2:])]  # from the second token
                row = {"p50": pct(gaps, 0.5) * 1000, "p99": pct(gaps, 0.99) * 1000,
                       "max": max(gaps) * 1000, "rate": (len(times) - 1) / (times[-1] - times[0])}
                if beside:
                    arrivals = row
                else:
                    gen_alone = row
            return gen_alone, arrivals, lat
        finally:
            d.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("prefixd")
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--text-kib", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--out")
    a = ap.parse_args()
    words, text = WORDS * 1, ""
    while len(text) < a.text_kib * 1024:
        text += " ".join(words) + ". "
    text = text[:a.text_kib * 1024]
    lines = [f"# Long prompts' tokenization beside a running stream\n",
             f"Command: `bench/daemon/tokenize_stall.py {a.prefixd} {a.model} --threads "
             f"{a.threads} --text-kib {a.text_kib} --tokens {a.tokens}` on "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores.\n",
             f"One Generate stream of {a.tokens} tokens (greedy, ignore_eos) on the model; beside "
             f"it one client sends Tokenize requests of {a.text_kib} KiB of text back to back. "
             "Gaps are between consecutive streamed tokens, from the second on.\n",
             "| tokenizer thread | stream | gap p50 | gap p99 | gap max | decode tok/s | "
             "Tokenize latency p50 | Tokenizes |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, thread_bytes in (("none (--tokenize-thread-bytes 0)", 0),
                                ("on (default, 16384)", 16384)):
        alone, beside, lat = run(a.prefixd, a.model, a.threads, thread_bytes, text, a.tokens)
        for name, row, tl in (("alone", alone, None), ("beside the Tokenizes", beside, lat)):
            lines.append(f"| {label} | {name} | {row['p50']:.1f} ms | {row['p99']:.1f} ms | "
                         f"{row['max']:.1f} ms | {row['rate']:.1f} | "
                         + (f"{statistics.median(tl) * 1000:.0f} ms | {len(tl)} |" if tl else
                            "- | - |"))
        print("\n".join(lines[-2:]), flush=True)
    out = "\n".join(lines) + "\n"
    print(out)
    if a.out:
        with open(a.out, "w") as f:
            f.write(out)


if __name__ == "__main__":
    main()
