#!/usr/bin/env bash
# The CPU speed levers of issue 20, before and after side by side in one run on this machine:
#   1. `nstlab bench train` (paper configuration, random weights, batch 4 at 224², LoRA on):
#      before = train.precision fp32, glibc's malloc defaults (the code as it was); then bf16
#      alone (train.precision auto on a CPU with AVX512-BF16/AMX); then + glibc keeping freed
#      memory (all levers: the defaults).
#   2. `nstlab bench stylize` at 512²: before (fp32, malloc defaults), bf16, all levers.
#   3. `nstlab stylize` end to end (process start to file written) at 512 px with a paper-size
#      ViT-LoRA checkpoint and a ViT-B/16 directory saved with save_pretrained (random weights):
#      the code at BEFORE_REF (default b0a78ed, before these levers; run from a temporary git
#      worktree) against the working tree, both with train.precision auto.
# Rounds alternate the variants so machine noise hits each alike.
# Usage (repository root, venv active): bash reports/benchmarks/cpu_levers.sh [ROUNDS]
# Writes reports/benchmarks/cpu/*.json|txt and prints the summary table.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
before_ref=${BEFORE_REF:-b0a78ed}
out=reports/benchmarks/cpu
work=$(mktemp -d)
trap 'git worktree remove --force "$work/before" 2>/dev/null || true; rm -rf "$work"' EXIT
rm -rf "$out" && mkdir -p "$out"
paper=(-S profile=paper -S backbone.vit=random -S backbone.vgg19=random -S train.batch_size=4)
declare -A variants=(
  [before]="NSTLAB_KEEP_FREED_MEMORY=0 nstlab bench TASK -S train.precision=fp32"
  [bf16]="NSTLAB_KEEP_FREED_MEMORY=0 nstlab bench TASK -S train.precision=auto"
  [all]="nstlab bench TASK -S train.precision=auto"
)

for round in $(seq "$rounds"); do
  for variant in before bf16 all; do
    # shellcheck disable=SC2086
    env ${variants[$variant]/TASK/train} "${paper[@]}" --steps 3 --warmup 1 \
      --out "$out/train_${variant}_r$round.json" >/dev/null 2>&1
  done
  for variant in before bf16 all; do
    # shellcheck disable=SC2086
    env ${variants[$variant]/TASK/stylize} "${paper[@]}" --height 512 --width 512 --steps 5 --warmup 2 \
      --out "$out/stylize512_${variant}_r$round.json" >/dev/null 2>&1
  done
done

# A paper-size stage-2 checkpoint and a local ViT-B/16 directory, as a user's would be.
python - "$work" <<'PY' >/dev/null 2>&1
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import ViTConfig, ViTModel

from nstlab.training.checkpoint import save_atomic, trained_state
from nstlab.config import load_config
from nstlab.models import build_model

work = Path(sys.argv[1])
ViTModel(ViTConfig(image_size=224, patch_size=16), add_pooling_layer=False).save_pretrained(work / "vit")
cfg = load_config(Path("params.yaml"), ["profile=paper", f"backbone.vit={work / 'vit'}", "backbone.vgg19=random"])
model = build_model("vit_lora", cfg)
model.enable_lora()
save_atomic({"model": trained_state(model), "step": 0, "val": {}}, work / "model.pt")
rng = np.random.default_rng(0)
for name, size in (("content.jpg", (683, 1024)), ("style.jpg", (512, 512))):
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(work / name)
PY

git worktree add --detach -q "$work/before" "$before_ref"
declare -A trees=([before]="$work/before" [after]="$PWD")
for round in $(seq "$rounds"); do
  for variant in before after; do
    started=$(date +%s.%N)
    # each version runs in its own tree, with its own code and params.yaml
    (cd "${trees[$variant]}" && PYTHONPATH=src python -m nstlab stylize "$work/content.jpg" "$work/style.jpg" \
      -o "$work/out.png" --size 512 --checkpoint "$work/model.pt" -S profile=paper \
      -S "backbone.vit=$work/vit" -S backbone.vgg19=random -S train.precision=auto >/dev/null 2>&1)
    python -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$started" "$(date +%s.%N)" \
      > "$out/stylize_e2e_${variant}_r$round.txt"
  done
done

python - "$out" "$before_ref" <<'PY' | tee "$out/summary.txt"
import json
import statistics
import sys
from pathlib import Path

out, before_ref = Path(sys.argv[1]), sys.argv[2]
first = json.loads(next(out.glob("train_before_r*.json")).read_text())
print(f"machine: {first['device']}; torch {first['torch']}; {first['date']}")


def values(pattern: str, key: str) -> list[float]:
    return [json.loads(p.read_text())[key] for p in sorted(out.glob(pattern))]


def row(name: str, samples: list[float], baseline: list[float], higher_is_better: bool) -> None:
    median, base = statistics.median(samples), statistics.median(baseline)
    ratio = median / base if higher_is_better else base / median
    spread = f"{min(samples):.3f}-{max(samples):.3f}"
    print(f"{name:<44}{median:>10.3f}  ({spread}, n={len(samples)}){ratio:>8.2f}x")


print(f"{'measurement (median, range)':<44}{'value':>10}{'':>22}{'vs before':>10}")
train_before = values("train_before_r*.json", "pairs_per_s")
labels = {
    "before": "before (fp32)",
    "bf16": "bf16",
    "all": "bf16 + kept memory",
}
for variant in ("before", "bf16", "all"):
    samples = values(f"train_{variant}_r*.json", "pairs_per_s")
    row(f"bench train pairs/s: {labels[variant]}", samples, train_before, True)
stylize_before = values("stylize512_before_r*.json", "ms_per_image")
for variant in ("before", "bf16", "all"):
    samples = values(f"stylize512_{variant}_r*.json", "ms_per_image")
    row(f"bench stylize 512² ms: {labels[variant]}", samples, stylize_before, False)
e2e = {v: [float(p.read_text()) for p in sorted(out.glob(f"stylize_e2e_{v}_r*.txt"))] for v in ("before", "after")}
row(f"nstlab stylize 512 px end to end s: {before_ref}", e2e["before"], e2e["before"], False)
row("nstlab stylize 512 px end to end s: now", e2e["after"], e2e["before"], False)
PY
