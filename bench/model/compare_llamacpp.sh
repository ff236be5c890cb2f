#!/usr/bin/env bash
# bench/model/compare_llamacpp.sh -- prefixd's CPU runtime beside llama.cpp, in one run, on the
# same GGUF with the same thread count. Writes bench/results/model_cpu_vs_llamacpp.md.
#
#   bench/model/compare_llamacpp.sh LLAMA_BENCH [MODEL.gguf] [THREADS]
#
# LLAMA_BENCH is the path of a llama-bench binary. prefixd does not build or ship llama.cpp; to
# get one: fetch llama.cpp's source into a scratch folder outside this repository, then
# `cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF && cmake --build build -j --target llama-bench`.
# Run it on a quiet machine: the two are timed one after the other.
set -euo pipefail
cd "$(dirname "$0")/../.."
bench=${1:?usage: compare_llamacpp.sh LLAMA_BENCH [MODEL] [THREADS]}
model=${2:-${PREFIXD_MODEL:-$HOME/.cache/prefixd/SmolLM2-135M-Instruct.Q4_1.gguf}}
threads=${3:-$(nproc)}
out=bench/results/model_cpu_vs_llamacpp.md
[ -x "$bench" ] || { echo "compare_llamacpp: $bench is not an executable llama-bench" >&2; exit 2; }
[ -x build/bench/model/model_bench ] || make -s build >/dev/null
ours=$(build/bench/model/model_bench "$model" --threads "$threads")
theirs=$("$bench" -m "$model" -t "$threads" -p 1024 -n 64 -r 3 -o md 2>/dev/null)
{
  echo "# CPU runtime: prefixd beside llama.cpp"
  echo
  echo "Command: \`bench/model/compare_llamacpp.sh $bench $model $threads\` on $(date -u '+%Y-%m-%d %H:%M UTC'),"
  echo "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))."
  echo
  echo "## prefixd (build/bench/model/model_bench)"
  echo
  echo "$ours"
  echo
  echo "## llama.cpp (llama-bench -p 1024 -n 64 -r 3, same model and threads)"
  echo
  echo "$theirs"
  echo
  echo "llama-bench's pp1024 is a 1,024-token prefill; its tg64 decodes 64 tokens at batch 1 from an"
  echo "empty context, which compares with prefixd's \"decode, batch 1 (from an empty context)\" row."
} > "$out"
cat "$out"
