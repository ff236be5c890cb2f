#!/usr/bin/env python3
"""prefixd-run against the independent numpy reference (llama_ref.py) on several prompts:
the logits of every prompt position must agree to max|dlogit| <= 1e-3 * max|logit| (exact
matmul mode, f32 KV cache), and the greedy continuation of --greedy tokens must be identical.

    compare_logits.py PREFIXD_RUN MODEL.gguf [--greedy 32] [--prompts chat|synthetic]
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_ref  # noqa: E402

CHAT_PROMPTS = [
    ("chat", "What is the capital of France?"),
    ("chat", "Write a Python function that reverses a string."),
    ("text", "The quick brown fox jumps over the lazy dog. 1234567890"),
    ("text", "<|im_start|>user\nTranslate to German: good morning<|im_end|>\n<|im_start|>assistant\n"),
]


def run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runner")
    ap.add_argument("model")
    ap.add_argument("--greedy", type=int, default=32)
    a = ap.parse_args()
    m = llama_ref.Model(a.model)
    worst = 0.0
    for kind, text in CHAT_PROMPTS:
        flag = "--chat" if kind == "chat" else "-p"
        ids = run([a.runner, "-m", a.model, flag, text, "--dump-tokens"])
        toks = [int(t) for t in ids.split(",")]
        with tempfile.NamedTemporaryFile(suffix=".f32") as f:
            run([a.runner, "-m", a.model, "--tokens", ids, "-n", "0", "--mode", "exact",
                 "--cache-dtype", "f32", "--dump-logits", f.name])
            ours = np.fromfile(f.name, dtype=np.float32).reshape(len(toks), -1)
        ref = llama_ref.forward(m, toks).astype(np.float32)
        err = float(np.abs(ours - ref).max()) / float(np.abs(ref).max())
        worst = max(worst, err)
        if err > 1e-3:
            print(f"FAIL {kind} {text!r}: max|dlogit| / max|logit| = {err:.3g} > 1e-3")
            return 1
        # greedy continuation
        got = run([a.runner, "-m", a.model, "--tokens", ids, "-n", str(a.greedy), "--mode", "exact",
                   "--cache-dtype", "f32", "--ids"])
        got = [int(t) for t in got.split(",")] if got else []
        seq, want = list(toks), []
        for _ in range(len(got) if len(got) < a.greedy else a.greedy):
            nxt = int(np.argmax(llama_ref.forward(m, seq)[-1]))
            want.append(nxt)
            seq.append(nxt)
        if got != want:
            print(f"FAIL {kind} {text!r}: greedy continuation differs\n  ours {got}\n  ref  {want}")
            return 1
        print(f"ok {kind} {text[:40]!r}: {len(toks)} tokens, relative max|dlogit| {err:.2e}, "
              f"greedy {len(got)} tokens identical")
    print(f"all prompts agree; worst relative error {worst:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
