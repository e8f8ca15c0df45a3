#!/usr/bin/env bash
# The demo as a new user meets it: a fresh clone of HEAD, `dvc repro` from an empty workspace, then
# `dvc exp run -S lora.r=32`, each timed; then a check that no nstlab process outlived them.
# The clone imports its own src/ (PYTHONPATH), so the code measured is HEAD's.
# Usage (repository root, venv with nstlab's dependencies active): bash reports/benchmarks/demo_repro.sh
# Writes reports/benchmarks/cpu/demo_repro.txt and prints it. KEEP_CLONE=DIR keeps the used clone
# there (to run the test suite in it, as a user would after these commands).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
out=reports/benchmarks/cpu/demo_repro.txt
work=$(mktemp -d)
trap 'if [ -n "${KEEP_CLONE:-}" ]; then mv "$work/clone" "$KEEP_CLONE"; fi; rm -rf "$work"' EXIT

timed() {  # timed LABEL COMMAND...: one line "LABEL  SECONDS"
  local label=$1 start end
  shift
  start=$(date +%s.%N)
  (cd "$work/clone" && PYTHONPATH="$work/clone/src" "$@" >"$work/$label.log" 2>&1)
  end=$(date +%s.%N)
  printf '%-34s %7.1f s\n' "$label" "$(echo "$end - $start" | bc)"
}

git clone -q "$repo" "$work/clone"
{
  echo "$(date -u +%F) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs);" \
    "bf16: $(grep -qE 'avx512_bf16|amx_bf16' /proc/cpuinfo && echo native || echo no); HEAD $(git rev-parse --short HEAD)"
  timed "dvc repro" dvc repro
  grep "Running stage" "$work/dvc repro.log" | wc -l | xargs printf '%s stages ran\n'
  timed "dvc exp run -S lora.r=32" dvc exp run -S lora.r=32
  left=$(pgrep -f "$work/clone" || true)
  echo "nstlab processes left running: ${left:-none}"
} | tee "$out"
