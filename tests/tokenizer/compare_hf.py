#!/usr/bin/env python3
"""Our tokenizer against Hugging Face `tokenizers`, built independently from the same GGUF's
vocabulary and merges with the pre-tokenizers of the model's family and a ByteLevel decoder.
Every text of the corpus must give exactly the same ids, and decoding must give the text back.

    compare_hf.py PD_TOKENIZE_TOOL MODEL.gguf CORPUS_DIR [--pre NAME]

Without --pre: the model's own pre-tokenizer, SmolLM2's (Digits(individual_digits=True), then
ByteLevel with the GPT-2 regex). With --pre llama-bpe or qwen2: a tokenizer-only GGUF is written
with the model's vocabulary and merges and that tokenizer.ggml.pre, and the reference is built
as those families' tokenizer.json files build it: a Split on their regex (isolated), then
ByteLevel without its own regex. Besides the ids, the pieces the pre-tokenizer cuts must be
Hugging Face's pieces, one for one (ids alone would miss a wrong cut between characters that no
merge joins).
"""
import glob
import os
import subprocess
import sys
import tempfile
import time

from gguf import GGUFReader, GGUFWriter
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
PATTERNS = {"llama-bpe": LLAMA3_PATTERN, "qwen2": LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")}


def vocab_and_merges(model_path):
    r = GGUFReader(model_path)
    f = r.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
    m = r.fields["tokenizer.ggml.merges"]
    merges = [bytes(m.parts[i]).decode("utf-8") for i in m.data]
    t = r.fields["tokenizer.ggml.token_type"]
    types = [int(t.parts[i][0]) for i in t.data]
    return tokens, merges, types


def cuts(pre):
    """The pre-tokenizer's cutting steps on the original text: for --pre the family's regex; for
    the model's own (SmolLM2) digits alone, then the GPT-2 regex (which its tokenizer.json runs
    inside ByteLevel)."""
    if pre is None:
        return [pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.Split(Regex(GPT2_PATTERN), behavior="isolated", invert=False)]
    return [pre_tokenizers.Split(Regex(PATTERNS[pre]), behavior="isolated", invert=False)]


def family_pre_tokenizer(pre):
    """A --pre family's pre_tokenizer, as its tokenizer.json builds it: the cuts, then ByteLevel
    without its own regex."""
    return pre_tokenizers.Sequence(
        cuts(pre) + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def hf_tokenizer(tokens, merges, pre):
    vocab = {t: i for i, t in reversed(list(enumerate(tokens)))}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    # Llama 3's tokenizer.json sets ignore_merges: a piece that is in the vocabulary is one token
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False,
                               ignore_merges=pre == "llama-bpe"))
    if pre is None:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    else:
        tok.pre_tokenizer = family_pre_tokenizer(pre)
    tok.decoder = decoders.ByteLevel()
    return tok


def hf_pieces(pre, text):
    """The pre-tokenizer's pieces of text, as byte offsets where each ends."""
    ends, at = [], 0
    for piece, _ in pre_tokenizers.Sequence(cuts(pre)).pre_tokenize_str(text):
        at += len(piece.encode("utf-8"))
        ends.append(at)
    return ends


def with_whole_pieces(tokens, types, texts, count=40):
    """The vocabulary plus `count` pieces of the corpus that it lacks, as tokens no merge makes:
    ignore_merges (Llama 3) emits such a piece as one token, merges alone could not."""
    split = family_pre_tokenizer("llama-bpe")
    known, extra = set(tokens), []
    for text in texts:
        for piece, _ in split.pre_tokenize_str(text):
            if len(piece) >= 4 and piece not in known and len(extra) < count:
                known.add(piece)
                extra.append(piece)
    return tokens + extra, types + [1] * len(extra)


def tokenizer_gguf(path, tokens, merges, types, pre):
    w = GGUFWriter(path, "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    tool, model, corpus_dir = sys.argv[1:4]
    pre = sys.argv[sys.argv.index("--pre") + 1] if "--pre" in sys.argv else None
    texts = []
    for path in sorted(glob.glob(os.path.join(corpus_dir, "*.txt"))):
        with open(path, encoding="utf-8") as f:
            content = f.read()
        texts.append(content)  # the whole file
        texts.extend(p for p in content.split("\n\n") if p)  # and each paragraph
    tokens, merges, types = vocab_and_merges(model)
    if pre == "llama-bpe":
        tokens, types = with_whole_pieces(tokens, types, texts)
    hf = hf_tokenizer(tokens, merges, pre)
    payload = b"\0".join(t.encode("utf-8") for t in texts)
    with tempfile.TemporaryDirectory() as tmp:
        if pre is not None:
            model = os.path.join(tmp, f"tokenizer-{pre}.gguf")
            tokenizer_gguf(model, tokens, merges, types, pre)
        t0 = time.perf_counter()
        out = subprocess.run([tool, model], input=payload, capture_output=True, check=True).stdout
        secs = time.perf_counter() - t0
        cuts = subprocess.run([tool, model, "--pieces"], input=payload, capture_output=True,
                              check=True).stdout.decode().split("\n")[:-1]
    n_pieces = 0
    for text, line in zip(texts, cuts):
        got = [int(x) for x in line.split(",")] if line else []
        want = hf_pieces(pre, text)
        n_pieces += len(want)
        if got != want:
            i = next((k for k in range(min(len(got), len(want))) if got[k] != want[k]), 0)
            raw = text.encode("utf-8")
            at = want[i - 1] if i else 0
            print(f"FAIL pieces of {text[:40]!r}: piece {i} from byte {at}: ours ends at "
                  f"{got[i] if i < len(got) else None}, hf at {want[i] if i < len(want) else None} "
                  f"({raw[at:at + 12]!r})")
            return 1
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
    which = pre or "the model's own pre-tokenizer"
    print(f"ok ({which}): {len(texts)} texts, {n_pieces} pieces and {n_tok} tokens, "
          f"{mb:.2f} MB identical to Hugging Face tokenizers "
          f"(ours: {mb / secs:.1f} MB/s including model load)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
