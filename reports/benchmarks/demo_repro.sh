#!/usr/bin/env bash
# The demo as a new user meets it, cold stages against warm ones (nstlab.warm), in one run:
#   1. `dvc repro` on a fresh clone with NSTLAB_WARM=0 (every stage a fresh python process);
#   2. `dvc repro` on another fresh clone with the default (stages forked from a warm server;
#      the first stage starts it and runs cold);
#   3. `dvc exp run -S lora.r=32` in each clone after its repro: cold; warm with no server left
#      (its first stage starts one); warm with the server still up from the previous command.
# Each clone imports its own src/ (PYTHONPATH), so the code measured is HEAD's.
# Usage (repository root, venv with nstlab's dependencies active): bash reports/benchmarks/demo_repro.sh
# Writes reports/benchmarks/cpu/demo_repro.txt and prints it.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
out=reports/benchmarks/cpu/demo_repro.txt
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stop_servers() { pkill -f "nstlab/warm.py serve" 2>/dev/null || true; sleep 1; }

timed() {  # timed LABEL DIR ENV... -- COMMAND...: one line "LABEL  SECONDS"
  local label=$1 dir=$2
  shift 2
  local envs=()
  while [[ $1 != -- ]]; do envs+=("$1"); shift; done
  shift
  local start end
  start=$(date +%s.%N)
  (cd "$dir" && env "${envs[@]}" PYTHONPATH="$dir/src" "$@" >"$work/$label.log" 2>&1)
  end=$(date +%s.%N)
  printf '%-44s %7.1f s\n' "$label" "$(echo "$end - $start" | bc)"
}

for name in cold warm; do
  git clone -q "$repo" "$work/$name"
done
stop_servers
{
  echo "$(date -u +%F) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); HEAD $(git rev-parse --short HEAD)"
  timed "dvc repro, cold (NSTLAB_WARM=0)" "$work/cold" NSTLAB_WARM=0 -- dvc repro
  timed "dvc repro, warm (default)" "$work/warm" NSTLAB_WARM=1 -- dvc repro
  timed "dvc exp run -S lora.r=32, cold" "$work/cold" NSTLAB_WARM=0 -- dvc exp run -S lora.r=32
  stop_servers
  timed "dvc exp run -S lora.r=32, warm, no server" "$work/warm" NSTLAB_WARM=1 -- dvc exp run -S lora.r=32
  timed "dvc exp run -S lora.r=64, warm, server up" "$work/warm" NSTLAB_WARM=1 -- dvc exp run -S lora.r=64
} | tee "$out"
stop_servers
