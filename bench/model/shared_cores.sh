#!/usr/bin/env bash
# bench/model/shared_cores.sh -- the CPU runtime's speed on a quiet machine and on one whose CPUs
# another process also keeps busy, with all CPUs' threads, one thread, libgomp's passive wait
# policy, and --threads auto (pd_cpu_share, the daemon's default), in one run. Writes
# bench/results/cpu_shared_cores.md.
#
#   bench/model/shared_cores.sh [MODEL.gguf]
#
# "loaded" runs HOGS (default 1) busy loops beside the model at the same priority: a daemon on a
# shared machine. Each setting is a fresh model_bench --quick process.
set -euo pipefail
cd "$(dirname "$0")/../.."
model=${1:-${PREFIXD_MODEL:-$HOME/.cache/prefixd/SmolLM2-135M-Instruct.Q4_1.gguf}}
hogs=${HOGS:-1}
n=$(nproc)
out=bench/results/cpu_shared_cores.md
make -s build >/dev/null
settings=("$n threads (all):--threads $n" "1 thread:--threads 1"
          "$n threads, OMP_WAIT_POLICY=passive:--threads $n:OMP_WAIT_POLICY=passive"
          "auto (prefixd's default):--threads auto")
rows=""
for load in quiet loaded; do
  pids=()
  if [ "$load" = loaded ]; then
    for _ in $(seq "$hogs"); do (while :; do :; done) & pids+=($!); done
  fi
  for s in "${settings[@]}"; do
    IFS=: read -r name flags envs <<< "$s"
    # shellcheck disable=SC2086 # flags are words
    line=$(env ${envs:-} build/bench/model/model_bench "$model" --quick $flags)
    rows+="| $load | $name | $(echo "$line" | awk '{printf "%s | %s | %s | %s", $2, $4, $6, $8}') |"$'\n'
  done
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p"; done
  wait 2>/dev/null || true
done
{
  echo "# The CPU runtime on shared CPUs"
  echo
  echo "Command: \`bench/model/shared_cores.sh $model\` (HOGS=$hogs) on $(date -u '+%Y-%m-%d %H:%M UTC'),"
  echo "$n CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))."
  echo
  echo "\"loaded\": $hogs busy loop(s) beside the model at the same priority. Tokens/s from"
  echo "\`model_bench --quick\` (fast mode, f16 KV): prefill of 1,024 tokens, decode at batch 1 from an"
  echo "empty context and after 1,024 tokens, decode of 8 sequences together. \"auto\" asks"
  echo "pd_cpu_share before every forward pass, as the daemon's engine does before every step,"
  echo "after one unmeasured run."
  echo
  echo "| machine | threads | prefill | decode | decode after 1,024 | batch 8 |"
  echo "| --- | --- | --- | --- | --- | --- |"
  printf '%s' "$rows"
  echo
  cat <<'TEXT'
Read: with a busy process beside it, a forward pass on all CPUs waits at each of its ~150
barriers a token for whichever thread the kernel has descheduled; one thread does not wait.
libgomp's passive wait policy sleeps instead of spinning, which helps under load and costs
several times over at batch 1 on a quiet machine (a futex wake per barrier). "auto" is the
daemon's default (`--threads` unset): the thread count follows the CPUs that other processes
leave free, sampled once a second (common/pd_cpu_share.h), so it runs as all threads when the
machine is quiet and as one thread beside the busy loop.
TEXT
} > "$out"
cat "$out"
