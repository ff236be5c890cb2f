#!/usr/bin/env bash
# bench/serving/run.sh -- prefixd beside llama.cpp's llama-server on four serving workloads, CPU,
# the same GGUF and thread count, end to end: starts each server fresh for every run, drives it
# with the load generator (bench/serving/bench.py), writes bench/results/serving_<mode>.json,
# draws the plots (bench/serving/plot.py) and prints the table. docs/benchmarks.md explains it.
#
#   bench/serving/run.sh --llama-server /path/to/llama-server [--quick] [options]
#
# Options:
#   --llama-server PATH  llama.cpp's server binary (required)
#   --prefixd PATH       the daemon (default build/bin/prefixd; built with `make build` if missing)
#   --model PATH         GGUF (default ~/.cache/prefixd/SmolLM2-135M-Instruct.Q4_1.gguf,
#                        fetched by scripts/setup)
#   --quick              small sizes: a few minutes (default: the full sizes of docs/benchmarks.md)
#   --threads N          threads of each server (default 2)
#   --workloads LIST     subset of w1,w2,w3,w4 (default all)
#   --w1-slots LIST      llama-server slot counts (-np) run on W1 (default 8)
#   --w2-slots LIST      llama-server slot counts (-np) run on W2 (default: one per session)
#   --out FILE.json      default bench/results/serving_<quick|full>.json
#   --reuse-runs F.json  keep the runs of the workloads not named in --workloads from an earlier
#                        (interrupted: its .json.partial) invocation
#
# Getting llama-server: prefixd does not build, fetch or ship llama.cpp. Build it yourself, in a
# folder outside this repository, from a checkout of llama.cpp's source (the ggml-org/llama.cpp
# repository):
#   cmake -S llama.cpp -B llama.cpp/build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
#         -DCMAKE_BUILD_TYPE=Release
#   cmake --build llama.cpp/build -j --target llama-server
# and pass --llama-server llama.cpp/build/bin/llama-server. The figures in docs/benchmarks.md
# were taken with llama.cpp build 4748 (c392e5094).
set -euo pipefail
cd "$(dirname "$0")/../.."

how_to_get_llama() {
  sed -n '/^# Getting llama-server/,/^# were taken/p' "$0" | sed 's/^# \{0,1\}//' >&2
}

llama="" prefixd="build/bin/prefixd" pass=()
while [ $# -gt 0 ]; do
  case "$1" in
    --llama-server) llama=${2:?--llama-server needs a path}; shift 2 ;;
    --llama-server=*) llama=${1#*=}; shift ;;
    --prefixd) prefixd=${2:?--prefixd needs a path}; shift 2 ;;
    --prefixd=*) prefixd=${1#*=}; shift ;;
    --quick) pass+=(--quick); shift ;;
    --model|--threads|--workloads|--w1-slots|--w2-slots|--out|--cache-reuse|--reuse-runs)
      pass+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
    -h|--help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [ -z "$llama" ]; then
  echo "run.sh: --llama-server PATH is required." >&2
  how_to_get_llama
  exit 2
fi
if [ ! -x "$llama" ]; then
  echo "run.sh: $llama is not an executable llama-server." >&2
  how_to_get_llama
  exit 2
fi
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import grpc_tools' 2>/dev/null; then
  echo "run.sh: the Python venv is missing; running scripts/setup" >&2
  scripts/setup >/dev/null
fi
model_default=${PREFIXD_MODEL:-$HOME/.cache/prefixd/SmolLM2-135M-Instruct.Q4_1.gguf}
if ! printf '%s\n' "${pass[@]:-}" | grep -qx -- --model && [ ! -f "$model_default" ]; then
  echo "run.sh: the default model is missing; running scripts/setup" >&2
  scripts/setup >/dev/null
fi
if [ ! -x "$prefixd" ]; then
  if [ "$prefixd" = build/bin/prefixd ]; then
    echo "run.sh: building prefixd (make build)" >&2
    make -s build >/dev/null
  else
    echo "run.sh: $prefixd is not an executable prefixd" >&2
    exit 2
  fi
fi
# matplotlib draws the plots; it is not one of the project's dependencies, so it is installed
# into the venv only here, on demand
if ! .venv/bin/python -c 'import matplotlib' 2>/dev/null; then
  echo "run.sh: installing matplotlib into .venv (for the plots)" >&2
  .venv/bin/pip install -q 'matplotlib>=3.8,<3.11'
fi

mode=full
for x in "${pass[@]:-}"; do [ "$x" = --quick ] && mode=quick; done
out=bench/results/serving_$mode.json
for ((i = 0; i < ${#pass[@]}; i++)); do [ "${pass[$i]}" = --out ] && out=${pass[$((i + 1))]}; done

echo "run.sh: uptime before: $(uptime)" >&2
.venv/bin/python bench/serving/bench.py --prefixd "$prefixd" --llama-server "$llama" "${pass[@]}"
echo "run.sh: uptime after: $(uptime)" >&2
.venv/bin/python bench/serving/plot.py "$out"
