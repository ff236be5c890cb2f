#!/usr/bin/env bash
# bench/model/compare_formats.sh -- prefixd's CPU runtime beside llama.cpp on each common GGUF
# format, in one run: the default model is requantized to each format with llama.cpp's own
# llama-quantize (so both read the very same file), then prefill of 1,024 tokens and decode at
# batch 1 from an empty context are timed by prefixd's model_bench (--quick: fast mode, f16 KV)
# and by llama-bench (-p 1024 -n 64), in three alternating rounds per format (means). Writes
# bench/results/model_cpu_formats.md.
#
#   bench/model/compare_formats.sh LLAMA_BIN_DIR [MODEL.gguf] [THREADS]
#
# LLAMA_BIN_DIR holds llama-bench and llama-quantize (see compare_llamacpp.sh for building them
# outside this repository). PD_FORMATS overrides the list. The default model ships as Q4_1, so
# the other files are requantized from Q4_1: right for speed, not a statement about quality.
# Where a tensor's rows are not a multiple of 256 (d_model 576 here), llama-quantize picks a
# 32-block fallback for it (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K/Q3_K -> IQ4_NL);
# the table lists the types each file really holds.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:?usage: compare_formats.sh LLAMA_BIN_DIR [MODEL] [THREADS]}
model=${2:-${PREFIXD_MODEL:-$HOME/.cache/prefixd/SmolLM2-135M-Instruct.Q4_1.gguf}}
threads=${3:-$(nproc)}
formats=${PD_FORMATS:-"Q8_0 Q6_K Q5_K_M Q5_0 Q4_K_M Q4_1 IQ4_NL IQ4_XS Q3_K_M Q2_K"}
out=bench/results/model_cpu_formats.md
for tool in llama-bench llama-quantize; do
  [ -x "$bin/$tool" ] || { echo "compare_formats: $bin/$tool is not an executable" >&2; exit 2; }
done
[ -x build/bench/model/model_bench ] && [ -x build/bin/prefixd-run ] || make -s build >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}x')" "$1" "$2"; }

rows=""
for f in $formats; do
  file=$work/$f.gguf
  if [ "$f" = Q4_1 ] && [[ $model == *Q4_1.gguf ]]; then
    file=$model
  else
    "$bin/llama-quantize" --allow-requantize "$model" "$file" "$f" >"$work/quantize.log" 2>&1 ||
      { echo "compare_formats: llama-quantize $f failed" >&2; tail -3 "$work/quantize.log" >&2; exit 1; }
  fi
  types=$(build/bin/prefixd-run -m "$file" --describe | sed 's/.*; weights //; s/, embeddings.*//')
  mib=$(( $(stat -c %s "$file") / 1048576 ))
  # three rounds, each prefixd then llama.cpp, so that drift of the machine hits both alike;
  # each figure is the mean of its three (llama-bench's -r 3 reports a mean too)
  runs=""
  for round in 1 2 3; do
    runs+="ours $(build/bench/model/model_bench "$file" --threads "$threads" --quick)"$'\n'
    runs+="theirs $("$bin/llama-bench" -m "$file" -t "$threads" -p 1024 -n 64 -r 1 -o json 2>/dev/null |
      python3 -c 'import json, sys; print(" ".join("%s %s" % ("pp" if r["n_prompt"] else "tg", r["avg_ts"]) for r in json.load(sys.stdin)))')"$'\n'
  done
  read -r pp_ours tg_ours pp_theirs tg_theirs < <(printf '%s' "$runs" | python3 -c '
import sys
from statistics import mean
f = {}
for line in sys.stdin:
    who, *kv = line.split()
    for k, v in zip(kv[::2], kv[1::2]):
        f.setdefault((who, k), []).append(float(v))
print(" ".join("%.1f" % mean(f[k]) for k in
               [("ours", "prefill"), ("ours", "decode0"), ("theirs", "pp"), ("theirs", "tg")]))')
  row="| $f | $types | $mib | $pp_ours | $pp_theirs | $(ratio "$pp_ours" "$pp_theirs") | $tg_ours | $tg_theirs | $(ratio "$tg_ours" "$tg_theirs") |"
  echo "$row"
  rows+="$row"$'\n'
done

commit=$("$bin/llama-bench" -m "$model" -t "$threads" -p 0 -n 1 -r 1 -o json 2>/dev/null |
  python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["build_commit"])')
{
  echo "# CPU runtime by GGUF format: prefixd beside llama.cpp"
  echo
  echo "Command: \`bench/model/compare_formats.sh $bin $model $threads\` on $(date -u '+%Y-%m-%d %H:%M UTC'),"
  echo "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')); llama.cpp build $commit."
  echo
  echo "Each file is the default model requantized by llama.cpp's llama-quantize (from Q4_1; Q4_1 is"
  echo "the shipped file). Both programs read the same file with the same thread count, timed one"
  echo "after the other in three alternating rounds; each figure is the mean of its three. prefixd:"
  echo "\`model_bench FILE --quick\` (fast mode, f16 KV cache); llama.cpp: \`llama-bench -p 1024 -n 64 -r 1\`. Prefill is a 1,024-token prompt, decode is batch 1 from an"
  echo "empty context, in tokens/s. \"Weight types\" is what the file's layers hold, as prefixd reads it."
  echo
  echo "| format | weight types | MiB | prefill prefixd | prefill llama.cpp | ratio | decode prefixd | decode llama.cpp | ratio |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  printf '%s' "$rows"
} >"$out"
cat "$out"
