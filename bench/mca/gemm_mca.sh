#!/usr/bin/env bash
# gemm_mca.sh — static throughput of the aarch64 f32 GEMM inner loop, from llvm-mca-22.
#
# Compiles one linear layer (x[197×192]·W[192×768] + b, deit_tiny's MLP fc1) with
# `vitc gemm.vit --emit asm --target aarch64-neon:CPU` for each CPU, takes the k loop of the
# widest microkernel tile out of the assembly (bench/mca/inner_loop.py), runs
# `llvm-mca-22 -mtriple=aarch64 -mcpu=CPU -iterations=1000` on it, and reports 128-bit FMLAs per
# cycle against the core's peak: Neoverse N1 and Cortex-A76 issue two 128-bit FMLAs a cycle
# (8 f32 FMAs). It also reports the peak of LLVM's own model of the core (a block of independent
# FMLAs), because LLVM 22 has no Cortex-A76 model: -mcpu=cortex-a76 schedules with the
# Cortex-A57 model, which issues one 128-bit FMLA a cycle. qemu timings mean nothing; this is
# the number to watch for aarch64 kernel work.
#
#   bench/mca/gemm_mca.sh                      # the table
#   bench/mca/gemm_mca.sh --min-percent 80     # also exit 1 if Neoverse N1 is below 80 % of peak
#   KEEP=/tmp/mca bench/mca/gemm_mca.sh        # keep the assembly, loop and llvm-mca output there
#   VITC=path/to/vitc bench/mca/gemm_mca.sh    # use this vitc instead of building one
#   bench/mca/gemm_mca.sh --loop bench/mca/sketches/neon_gemm_f32_7x12_k4.s
#                                              # a hand-written loop instead of vitc's (what a
#                                              # kernel change would reach)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cpus=(neoverse-n1 cortex-a76)
peak=2 # 128-bit FMLAs per cycle on both cores (Arm's software optimization guides)
min=""
loop=""
while [ $# -gt 0 ]; do
  case "$1" in
    --min-percent) min=$2; shift 2 ;;
    --loop) loop=$(cd "$(dirname "$2")" && pwd)/$(basename "$2"); shift 2 ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "gemm_mca.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
for tool in llvm-mca-22 python3; do
  command -v "$tool" >/dev/null || { echo "gemm_mca.sh: $tool not found (scripts/setup.sh)" >&2; exit 2; }
done

if [ -z "${VITC:-}" ] && [ -z "$loop" ]; then
  (cd "$root" && cargo build -q -p vitc)
  VITC="${CARGO_TARGET_DIR:-$root/target}/debug/vitc"
fi
if [ -n "${KEEP:-}" ]; then
  work=$KEEP
  mkdir -p "$work"
else
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
fi
py() { python3 "$here/inner_loop.py" "$@"; }
mca() { llvm-mca-22 -mtriple=aarch64 -mcpu="$1" -iterations=1000 "$2"; }

py model "$work" 197 192 768
# A block of independent FMLAs: the most the core's LLVM model can issue.
for i in $(seq 0 23); do printf '\tfmla\tv%d.4s, v30.4s, v31.4s\n' "$i"; done >"$work/peak.s"

printf '%-12s %-6s %6s %8s %11s %12s %9s %13s\n' cpu model FMLAs cycles FMLA/cycle "f32 FMA/cyc" "% peak" "% model peak"
status=0
for cpu in "${cpus[@]}"; do
  if [ -n "$loop" ]; then
    cp "$loop" "$work/loop-$cpu.s"
  else
    "$VITC" "$work/gemm.vit" --emit asm --target "aarch64-neon:$cpu" -o "$work/gemm-$cpu.s"
    py loop "$work/gemm-$cpu.s" >"$work/loop-$cpu.s"
  fi
  mca "$cpu" "$work/loop-$cpu.s" >"$work/mca-$cpu.txt"
  mca "$cpu" "$work/peak.s" >"$work/mca-peak-$cpu.txt"
  read -r fmla _lanes < <(py fmla "$work/loop-$cpu.s")
  read -r its cycles model < <(py cycles "$work/mca-$cpu.txt")
  read -r pits pcycles _ < <(py cycles "$work/mca-peak-$cpu.txt")
  python3 - "$cpu" "$model" "$fmla" "$its" "$cycles" "$pits" "$pcycles" "$peak" "$min" >"$work/row-$cpu.txt" <<'PY' || status=1
import sys
cpu, model, fmla, its, cycles, pits, pcycles, peak, minimum = sys.argv[1:]
per_iter = int(cycles) / int(its)
rate = int(fmla) / per_iter
model_peak = 24 / (int(pcycles) / int(pits))
pct = 100 * rate / float(peak)
print(f"{cpu:<12} {model:<6} {fmla:>6} {per_iter:8.2f} {rate:11.2f} {4 * rate:12.2f} {pct:8.1f}% {100 * rate / model_peak:12.1f}%")
sys.exit(1 if minimum and cpu == "neoverse-n1" and pct < float(minimum) else 0)
PY
  cat "$work/row-$cpu.txt"
done
echo
if [ -n "$loop" ]; then
  echo "loop: $loop"
else
  echo "loop: the innermost loop with the most f32 FMAs in vitc's assembly for one linear layer"
fi
echo "command: llvm-mca-22 -mtriple=aarch64 -mcpu=CPU -iterations=1000 loop-CPU.s"
echo "peak: $peak x 128-bit FMLA = $((peak * 4)) f32 FMA per cycle (Neoverse N1, Cortex-A76)"
if [ "$status" -ne 0 ]; then
  echo "gemm_mca.sh: neoverse-n1 is below $min % of the FMA peak" >&2
fi
exit "$status"
