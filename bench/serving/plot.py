#!/usr/bin/env python3
"""Plots of a serving benchmark's JSON (bench/serving/bench.py):

  <prefix>_ttft_cdf.png    -- TTFT CDF, one panel per workload, one line per server run
  <prefix>_throughput.png  -- W4 (no reuse): output tokens/s and tokens per server CPU-second
                              against the number of concurrent requests, per server setting

    plot.py bench/results/serving_full.json [--prefix bench/results/serving_full]
"""
import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

COLORS = {"prefixd": "tab:blue", "prefixd cache on": "tab:blue",
          "prefixd cache off": "tab:cyan", "llama-server": "tab:orange"}


def color(run, i):
    label = run["label"].split(" c=")[0]
    if label in COLORS:
        return COLORS[label]
    if run["server"] == "prefixd":
        return "tab:blue"
    return ["tab:orange", "tab:red", "tab:brown", "tab:olive", "tab:pink"][i % 5]


def ttft_cdf(doc, path):
    wks = [w for w in ("w1", "w2", "w3", "w4") if any(r["workload"] == w for r in doc["runs"])]
    fig, axes = plt.subplots(1, len(wks), figsize=(5.2 * len(wks), 4.2), squeeze=False)
    for ax, wk in zip(axes[0], wks):
        runs = [r for r in doc["runs"] if r["workload"] == wk]
        if wk == "w4":  # the highest concurrency, first repeat of each setting
            top = max(r.get("concurrency", 0) for r in runs)
            runs = [r for r in runs if r.get("concurrency") == top and r.get("repeat", 0) == 0]
        n_llama = n_prefixd = 0
        for r in runs:
            xs = sorted(r["ttft_ms"])
            if not xs:
                continue
            # over every planned request: unfinished ones keep the curve below 1
            n = max(len(xs), r["metrics"].get("requests_planned", len(xs)))
            ys = [(i + 1) / n for i in range(len(xs))]
            c = color(r, n_llama)
            style = "-"
            if r["server"] == "prefixd":
                style = ["-", ":", "-."][n_prefixd % 3]
                n_prefixd += 1
            else:
                n_llama += 1
            if "off" in r["label"]:
                style = "--"
            ax.step(xs, ys, where="post", color=c, label=r["label"], linestyle=style)
        w = doc["workloads"][wk]
        ax.set_title(f"{wk.upper()}: {w['name']}")
        ax.set_xscale("log")
        ax.set_xlabel("time to first token (ms, log)")
        ax.set_ylabel("fraction of requests")
        ax.set_ylim(0, 1.02)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    m = doc["meta"]
    fig.suptitle(f"TTFT CDF ({m['mode']} sizes), {m['cpu']}, {m['cores']} cores, "
                 f"{m['threads']} threads", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def throughput(doc, path):
    runs = [r for r in doc["runs"] if r["workload"] == "w4"]
    if not runs:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    series = {}
    for r in runs:
        series.setdefault(r["label"].split(" c=")[0], {}).setdefault(
            r["concurrency"], []).append(r["metrics"])
    for i, (label, pts) in enumerate(sorted(series.items())):
        cs = sorted(pts)
        for ax, key in zip(axes, ("output_tok_s", "output_tokens_per_server_cpu_s")):
            med = []
            for c in cs:
                v = sorted(m[key] for m in pts[c] if m.get(key) is not None)
                med.append(v[len(v) // 2] if v else float("nan"))
            c0 = COLORS.get(label, ["tab:orange", "tab:red"][i % 2])
            ax.plot(cs, med, marker="o", color=c0, label=label,
                    linestyle="--" if "off" in label else "-")
    axes[0].set_ylabel("output tokens/s (median of repeats, upper)")
    axes[1].set_ylabel("output tokens per server CPU-second")
    levels = sorted({r["concurrency"] for r in runs})
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_ylim(bottom=0)
        ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(levels))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%d"))
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("concurrent requests (closed loop)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    w = doc["workloads"]["w4"]["sizes"][0]
    fig.suptitle(f"W4 no reuse: unique prompts of {w['prompt_tokens'][0]}-{w['prompt_tokens'][1]} "
                 f"tokens, {w['n_predict']} output tokens ({doc['meta']['mode']} sizes)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("json")
    ap.add_argument("--prefix", default="")
    a = ap.parse_args()
    with open(a.json) as f:
        doc = json.load(f)
    prefix = a.prefix or os.path.splitext(a.json)[0]
    out = [prefix + "_ttft_cdf.png"]
    ttft_cdf(doc, out[0])
    if throughput(doc, prefix + "_throughput.png"):
        out.append(prefix + "_throughput.png")
    for p in out:
        print(f"plot: {p}")


if __name__ == "__main__":
    main()
