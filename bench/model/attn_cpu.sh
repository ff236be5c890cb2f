#!/usr/bin/env bash
# bench/model/attn_cpu.sh -- the CPU's decode attention beside the memory's read rate, on the
# kernels this machine's native build compiles (AVX-512 where the CPU has it) and on the same
# kernels built for x86-64-v3 (AVX2), in one run: two rounds, alternating, the second round kept.
# Writes bench/results/cpu_attention.md.
#
#   bench/model/attn_cpu.sh [THREADS]
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${1:-$(nproc)}
out=bench/results/cpu_attention.md
make -s build >/dev/null
cmake --build build --target attn_cpu_bench attn_cpu_bench_x86_64_v3 >/dev/null
native=build/bench/model/attn_cpu_bench v3=build/bench/model/attn_cpu_bench_x86_64_v3
for _ in 1 2; do
  a=$("$v3" --threads "$threads" 2>/dev/null)
  b=$("$native" --threads "$threads" 2>/dev/null)
done
isa=$(grep -o -w -E 'avx512f|avx2' /proc/cpuinfo | sort -r | head -1 || true)
{
  echo "# CPU decode attention beside the memory's read rate"
  echo
  echo "Command: \`bench/model/attn_cpu.sh $threads\` on $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores"
  echo "($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), best ISA flag: ${isa:-none})."
  echo "Two rounds of the two builds, alternating; the second round's figures."
  echo
  echo "## The kernels built for x86-64-v3 (AVX2, FMA, F16C)"
  echo
  echo "$a" | sed -n '/^One decode step/,$p'
  echo
  echo "## The native build (-march=native: AVX-512 on this CPU)"
  echo
  echo "$b" | sed -n '/^One decode step/,$p'
  echo
  cat <<'TEXT'
## How to read it

- "prefetch off" is the same code with the prefetch turned off (`pd_attn_set_prefetch_blocks(0)`):
  a block's rows converted when they are reached. A sequence's blocks lie anywhere in the pool, so every 16 rows the reads
  jump, and the hardware prefetcher, which follows streams, cannot run ahead. "prefetch 4
  blocks" (the default) asks for the next four blocks' rows while one is converted.
- "in cache" runs the same steps with every table pointing into the same 8 blocks (rotated per
  sequence, so no two share a prefix): no memory waits, only the arithmetic. The distance from
  "prefetch 4 blocks" to it is what memory still costs; the distance from it to the memory's
  read rate is arithmetic.
- AVX-512 (the native build here) scores 16 positions at a time with a four-level pairwise
  reduction, accumulates the output in 512-bit registers in two chains, and converts 16 f16,
  bf16 or fp8 values an instruction. fp8 rows carry a scale each and convert in more steps than
  f16, so they are slower per step although they read half the bytes.
- Both builds give every row the same bits whatever the batch, the chunk or the thread count
  (tests/kernels/test_attention.c runs against both); the two builds' bits differ from each
  other (the order of the sums differs), within the tolerance the tests state.
TEXT
} > "$out"
cat "$out"
