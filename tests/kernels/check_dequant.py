#!/usr/bin/env python3
"""Our dequantization against gguf-py's, independently written: random valid blocks of every
type must dequantize to the same float32 values, bit for bit; our quantizers' output must
dequantize (by gguf-py) close to the input. With --model, every tensor of a real GGUF is
checked too (a sample of rows). Exit 0 on success, 1 with a message on the first mismatch."""
import subprocess
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader
from gguf.quants import dequantize

TYPES = {T.F32: (1, 4), T.F16: (1, 2), T.BF16: (1, 2), T.Q8_0: (32, 34), T.Q4_0: (32, 18),
         T.Q4_1: (32, 20), T.Q5_0: (32, 22), T.Q5_1: (32, 24), T.Q4_K: (256, 144),
         T.Q6_K: (256, 210), T.Q2_K: (256, 84), T.Q3_K: (256, 110), T.Q5_K: (256, 176),
         T.IQ4_NL: (32, 18), T.IQ4_XS: (256, 136)}
F16_SCALE_OFFSETS = {T.Q8_0: [0], T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2],
                     T.Q4_K: [0, 2], T.Q6_K: [208], T.Q2_K: [80, 82], T.Q3_K: [108],
                     T.Q5_K: [0, 2], T.IQ4_NL: [0], T.IQ4_XS: [0]}


def ours(tool, qtype, raw, n):
    out = subprocess.run([tool, str(int(qtype)), str(n)], input=raw, capture_output=True, check=True)
    return np.frombuffer(out.stdout, dtype=np.float32)


def random_blocks(rng, qtype, n_blocks):
    be, bb = TYPES[qtype]
    if qtype == T.F32:
        return rng.standard_normal(n_blocks).astype(np.float32).tobytes()
    if qtype == T.F16:
        return rng.standard_normal(n_blocks).astype(np.float16).tobytes()
    raw = bytearray(rng.integers(0, 256, size=n_blocks * bb, dtype=np.uint8).tobytes())
    if qtype == T.BF16:
        for i in range(n_blocks):  # keep exponents sane (no NaN payload games)
            raw[2 * i + 1] = 0x3f + (raw[2 * i + 1] & 0x80)
        return bytes(raw)
    for i in range(n_blocks):
        for off in F16_SCALE_OFFSETS[qtype]:
            s = np.float16(rng.uniform(-2, 2)).tobytes()
            raw[i * bb + off:i * bb + off + 2] = s
    return bytes(raw)


def main():
    tool = sys.argv[1]
    model = sys.argv[sys.argv.index("--model") + 1] if "--model" in sys.argv else None
    rng = np.random.default_rng(1234)
    for qtype, (be, bb) in TYPES.items():
        n_blocks = 64 if be == 256 else 512
        raw = random_blocks(rng, qtype, n_blocks)
        want = dequantize(np.frombuffer(raw, dtype=np.uint8), qtype).astype(np.float32).reshape(-1)
        got = ours(tool, qtype, raw, n_blocks * be)
        if not np.array_equal(want.view(np.uint32), got.view(np.uint32)):
            i = int(np.argmax(want.view(np.uint32) != got.view(np.uint32)))
            print(f"FAIL {qtype.name}: element {i}: gguf-py {want[i]!r}, ours {got[i]!r}")
            return 1
        # Our quantizer, read back by gguf-py: within half a step of each block's scale.
        x = rng.standard_normal(n_blocks * be).astype(np.float32)
        q = subprocess.run([tool, str(int(qtype)), str(x.size), "q"], input=x.tobytes(),
                           capture_output=True, check=True).stdout
        back = dequantize(np.frombuffer(q, dtype=np.uint8), qtype).astype(np.float32).reshape(-1)
        err = float(np.max(np.abs(back - x)))
        bound = {T.F32: 0, T.F16: 2e-3, T.BF16: 2e-2, T.Q8_0: 0.03, T.Q4_0: 0.6, T.Q4_1: 0.3,
                 T.Q5_0: 0.3, T.Q5_1: 0.15, T.Q4_K: 0.5, T.Q6_K: 0.15, T.Q2_K: 1.4, T.Q3_K: 1.0,
                 T.Q5_K: 0.15, T.IQ4_NL: 0.45, T.IQ4_XS: 0.45}[qtype]
        if err > bound:
            print(f"FAIL {qtype.name}: quantize round trip error {err} > {bound}")
            return 1
        print(f"ok {qtype.name}: {n_blocks * be} elements bit-equal; round trip max error {err:.4g}")
    if model:
        reader = GGUFReader(model)
        n = 0
        for t in reader.tensors:
            qtype = T(t.tensor_type)
            data = np.asarray(t.data)
            rows = data.reshape(-1, data.shape[-1]) if data.ndim > 1 else data.reshape(1, -1)
            idx = sorted(set([0, rows.shape[0] // 2, rows.shape[0] - 1]))
            for r in idx:
                raw = rows[r].tobytes()
                n_el = len(raw) // TYPES[qtype][1] * TYPES[qtype][0]
                want = dequantize(np.frombuffer(raw, dtype=np.uint8), qtype).astype(np.float32).reshape(-1)
                got = ours(tool, qtype, raw, n_el)
                if not np.array_equal(want.view(np.uint32), got.view(np.uint32)):
                    print(f"FAIL {t.name} row {r} ({qtype.name})")
                    return 1
            n += 1
        print(f"ok model: {n} tensors, sampled rows bit-equal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
