#!/usr/bin/env python3
"""An independent Llama forward pass in numpy, for checking prefixd's C runtime.

Weights come from the GGUF through gguf-py (GGUFReader + gguf.quants.dequantize), in float32.
Nothing here shares code with prefixd: attention is a plain causal softmax over the whole
sequence, RoPE rotates adjacent pairs (the "normal" mode that GGUF llama Q/K weights are
permuted for) or halves (NEOX, qwen2).

    llama_ref.py MODEL.gguf --tokens 1,2,3 [--out logits.f32] [--greedy N]

writes the logits of every position (float32, shape (n_tokens, n_vocab)) and/or prints the
greedy continuation of N tokens.
"""
import argparse
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


class Model:
    def __init__(self, path):
        r = GGUFReader(path)
        self.f = {}
        for k, field in r.fields.items():
            if field.data:
                v = field.parts[field.data[0]]
                self.f[k] = bytes(v).decode() if field.types[0].name == "STRING" else v[0]
        self.arch = self.f["general.architecture"]
        self.t = {t.name: t for t in r.tensors}
        hp = lambda k, d=None: self.f.get(f"{self.arch}.{k}", d)
        self.n_layers = int(hp("block_count"))
        self.d = int(hp("embedding_length"))
        self.n_heads = int(hp("attention.head_count"))
        self.n_kv = int(hp("attention.head_count_kv", self.n_heads))
        self.hd = self.d // self.n_heads
        self.rot = int(hp("rope.dimension_count", self.hd))
        self.eps = float(hp("attention.layer_norm_rms_epsilon", 1e-5))
        self.theta = float(hp("rope.freq_base", 10000.0))
        self.neox = self.arch == "qwen2"
        self.cache = {}

    def w(self, name):
        if name not in self.cache:
            t = self.t[name]
            a = dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)
            shape = [int(x) for x in t.shape][::-1]
            self.cache[name] = a.reshape(shape)
        return self.cache[name]

    def has(self, name):
        return name in self.t


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, pos, rot, theta, neox, factors=None):
    # x: (n, heads, hd); factors (rot/2): rope_freqs.weight, each pair's frequency divisor
    x = x.copy()
    i = np.arange(rot // 2, dtype=np.float32)
    freq = theta ** (-2.0 * i / rot)
    if factors is not None:
        freq = freq / factors
    ang = pos[:, None].astype(np.float32) * freq[None, :]  # (n, rot/2)
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    if neox:
        a, b = x[..., : rot // 2].copy(), x[..., rot // 2 : rot].copy()
        x[..., : rot // 2], x[..., rot // 2 : rot] = a * c - b * s, a * s + b * c
    else:
        a, b = x[..., 0:rot:2].copy(), x[..., 1:rot:2].copy()
        x[..., 0:rot:2], x[..., 1:rot:2] = a * c - b * s, a * s + b * c
    return x


def forward(m, tokens):
    n = len(tokens)
    emb = m.w("token_embd.weight")
    x = emb[np.array(tokens)]
    pos = np.arange(n)
    mask = np.triu(np.full((n, n), -np.inf, dtype=np.float32), 1)
    group = m.n_heads // m.n_kv
    for l in range(m.n_layers):
        p = f"blk.{l}."
        xn = rmsnorm(x, m.w(p + "attn_norm.weight"), m.eps)
        q = xn @ m.w(p + "attn_q.weight").T
        k = xn @ m.w(p + "attn_k.weight").T
        v = xn @ m.w(p + "attn_v.weight").T
        if m.has(p + "attn_q.bias"):
            q, k, v = q + m.w(p + "attn_q.bias"), k + m.w(p + "attn_k.bias"), v + m.w(p + "attn_v.bias")
        factors = m.w("rope_freqs.weight") if m.has("rope_freqs.weight") else None
        q = rope(q.reshape(n, m.n_heads, m.hd), pos, m.rot, m.theta, m.neox, factors)
        k = rope(k.reshape(n, m.n_kv, m.hd), pos, m.rot, m.theta, m.neox, factors)
        v = v.reshape(n, m.n_kv, m.hd)
        att = np.empty((n, m.n_heads, m.hd), dtype=np.float32)
        for h in range(m.n_heads):
            kh, vh = k[:, h // group, :], v[:, h // group, :]
            s = (q[:, h, :] @ kh.T) / np.sqrt(m.hd) + mask
            s = np.exp(s - s.max(axis=1, keepdims=True))
            att[:, h, :] = (s / s.sum(axis=1, keepdims=True)) @ vh
        x = x + att.reshape(n, -1) @ m.w(p + "attn_output.weight").T
        xn = rmsnorm(x, m.w(p + "ffn_norm.weight"), m.eps)
        g = xn @ m.w(p + "ffn_gate.weight").T
        u = xn @ m.w(p + "ffn_up.weight").T
        x = x + ((g / (1 + np.exp(-g))) * u) @ m.w(p + "ffn_down.weight").T
    out = m.w("output.weight") if m.has("output.weight") else emb
    return rmsnorm(x, m.w("output_norm.weight"), m.eps) @ out.T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--out")
    ap.add_argument("--greedy", type=int, default=0)
    a = ap.parse_args()
    m = Model(a.model)
    toks = [int(t) for t in a.tokens.split(",")]
    logits = forward(m, toks).astype(np.float32)
    if a.out:
        logits.tofile(a.out)
    if a.greedy:
        seq = list(toks)
        for _ in range(a.greedy):
            seq.append(int(np.argmax(forward(m, seq)[-1])))
        print(",".join(str(t) for t in seq[len(toks):]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
