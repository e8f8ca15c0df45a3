#!/usr/bin/env bash
# The CPU speed levers, measured before/after side by side in one run on this machine:
#   1. train.precision fp32 vs auto (bf16 autocast where the CPU has AVX512-BF16/AMX):
#      `nstlab bench train` (paper configuration, random weights, batch 4 at 224²) and
#      `nstlab bench stylize` at 512²; rounds alternate fp32/auto so machine noise hits both.
#   2. `nstlab stylize` end to end (process start to file written) at 512 px with a paper-size
#      ViT-LoRA checkpoint and a ViT-B/16 directory saved with save_pretrained (random weights).
# Usage (repository root, venv active): bash reports/benchmarks/cpu_levers.sh [ROUNDS]
# Writes reports/benchmarks/cpu/*.json and prints a summary table.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-2}
out=reports/benchmarks/cpu
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
paper=(-S profile=paper -S backbone.vit=random -S backbone.vgg19=random -S train.batch_size=4)

for round in $(seq "$rounds"); do
  for precision in fp32 auto; do
    nstlab bench train "${paper[@]}" -S train.precision=$precision --steps 3 --warmup 1 \
      --out "$out/train_${precision}_r$round.json" >/dev/null
    nstlab bench stylize "${paper[@]}" -S train.precision=$precision --height 512 --width 512 \
      --steps 5 --warmup 2 --out "$out/stylize512_${precision}_r$round.json" >/dev/null
  done
done

# A paper-size stage-2 checkpoint and a local ViT-B/16 directory, as a user's would be.
python - "$work" <<'PY'
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import ViTConfig, ViTModel

from nstlab.checkpoint import save_atomic, trained_state
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

for precision in fp32 auto; do
  for round in $(seq "$rounds"); do
    started=$(date +%s.%N)
    nstlab stylize "$work/content.jpg" "$work/style.jpg" -o "$work/out.png" --size 512 \
      --checkpoint "$work/model.pt" -S profile=paper -S "backbone.vit=$work/vit" -S backbone.vgg19=random \
      -S train.precision=$precision >/dev/null 2>&1
    python -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$started" "$(date +%s.%N)" \
      > "$out/stylize_e2e_${precision}_r$round.txt"
  done
done

python - "$out" <<'PY'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
print(f"{'measurement':<32}{'fp32':>12}{'auto':>12}{'speed-up':>10}")
for name, key, unit in (("train (pairs/s)", "train", "pairs_per_s"), ("stylize 512² (ms)", "stylize512", "ms_per_image")):
    means = {}
    for precision in ("fp32", "auto"):
        values = [json.loads(p.read_text())[unit] for p in sorted(out.glob(f"{key}_{precision}_r*.json"))]
        means[precision] = sum(values) / len(values)
    ratio = means["auto"] / means["fp32"] if unit == "pairs_per_s" else means["fp32"] / means["auto"]
    print(f"{name:<32}{means['fp32']:>12.3f}{means['auto']:>12.3f}{ratio:>9.2f}x")
means = {p: [float(f.read_text()) for f in sorted(out.glob(f"stylize_e2e_{p}_r*.txt"))] for p in ("fp32", "auto")}
print(f"{'stylize end to end 512 px (s)':<32}{min(means['fp32']):>12.2f}{min(means['auto']):>12.2f}"
      f"{min(means['fp32']) / min(means['auto']):>9.2f}x   (best of {len(means['fp32'])})")
PY
