#!/usr/bin/env python3
"""PyTorch SDPA decode on contiguous KV, for the same shapes as attn_bench (fp16, GQA via
enable_gqa), timed with CUDA events: the baseline a user would otherwise write."""
import sys

import torch
import torch.nn.functional as F


def bench(b, h, hkv, d, t, iters=50):
    q = torch.randn(b, h, 1, d, device="cuda", dtype=torch.float16)
    k = torch.randn(b, hkv, t, d, device="cuda", dtype=torch.float16)
    v = torch.randn(b, hkv, t, d, device="cuda", dtype=torch.float16)
    for _ in range(3):
        F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(iters):
        F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    e1.record()
    torch.cuda.synchronize()
    us = e0.elapsed_time(e1) * 1e3 / iters
    gbps = b * t * hkv * d * 2 * 2 / (us / 1e6) / 1e9
    return us, gbps


def main():
    lines = ["| shape | PyTorch SDPA time | KV read |", "| --- | --- | --- |"]
    for name, shape in [("default model: 64 seqs, 9/3 heads, hd 64, 2,048 tokens", (64, 9, 3, 64, 2048)),
                        ("16 seqs, 32/8 heads, hd 128, 4,096 tokens", (16, 32, 8, 128, 4096))]:
        us, gbps = bench(*shape)
        lines.append(f"| {name} | {us:.1f} us | {gbps:.0f} GB/s |")
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}")
    print("\n".join(lines))
    if len(sys.argv) > 2 and sys.argv[1] == "--append":
        with open(sys.argv[2], "a") as f:
            f.write(f"\nPyTorch {torch.__version__} SDPA on contiguous KV, same shapes:\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
