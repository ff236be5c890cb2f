#!/usr/bin/env python3
"""Our tokenizer against Hugging Face `tokenizers`, built independently from the same GGUF's
vocabulary and merges with the pre-tokenizers SmolLM2 uses (Digits(individual_digits=True),
then ByteLevel with the GPT-2 regex) and a ByteLevel decoder. Every text of the corpus must
give exactly the same ids, and decoding must give the text back.

    compare_hf.py PD_TOKENIZE_TOOL MODEL.gguf CORPUS_DIR
"""
import glob
import os
import subprocess
import sys
import time

from gguf import GGUFReader
from tokenizers import Tokenizer, decoders, models, pre_tokenizers


def hf_tokenizer(model_path):
    r = GGUFReader(model_path)
    f = r.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
    m = r.fields["tokenizer.ggml.merges"]
    merges = [tuple(bytes(m.parts[i]).decode("utf-8").split(" ", 1)) for i in m.data]
    vocab = {t: i for i, t in reversed(list(enumerate(tokens)))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def main():
    tool, model, corpus_dir = sys.argv[1:4]
    texts = []
    for path in sorted(glob.glob(os.path.join(corpus_dir, "*.txt"))):
        with open(path, encoding="utf-8") as f:
            content = f.read()
        texts.append(content)  # the whole file
        texts.extend(p for p in content.split("\n\n") if p)  # and each paragraph
    hf = hf_tokenizer(model)
    payload = b"\0".join(t.encode("utf-8") for t in texts)
    t0 = time.perf_counter()
    out = subprocess.run([tool, model], input=payload, capture_output=True, check=True).stdout
    secs = time.perf_counter() - t0
    ours = [[int(x) for x in line.split(",")] if line else [] for line in out.decode().split("\n")[:-1]]
    if len(ours) != len(texts):
        print(f"FAIL: {len(ours)} results for {len(texts)} texts")
        return 1
    n_tok = 0
    for text, got in zip(texts, ours):
        want = hf.encode(text).ids
        n_tok += len(want)
        if got != want:
            i = next((k for k in range(min(len(got), len(want))) if got[k] != want[k]), min(len(got), len(want)))
            print(f"FAIL on {text[:60]!r}: first difference at token {i}:\n  ours {got[max(0, i-3):i+5]}\n  hf   {want[max(0, i-3):i+5]}")
            return 1
        if hf.decode(got) != text:
            print(f"FAIL: decoding {text[:60]!r} does not round-trip")
            return 1
    mb = len(payload) / 1e6
    print(f"ok: {len(texts)} texts, {n_tok} tokens, {mb:.2f} MB identical to Hugging Face tokenizers "
          f"(ours: {mb / secs:.1f} MB/s including model load)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
