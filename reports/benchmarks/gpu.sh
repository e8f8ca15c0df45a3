#!/usr/bin/env bash
# The GPU speed benchmarks of issue 8 (paper configuration, random weights, synthetic inputs on
# the device). Needs only torch, transformers, peft, typer, rich, pyyaml, pandas: no mlflow, no dvc.
# Run from the repository root on a CUDA machine:   bash reports/benchmarks/gpu.sh [OUT_DIR]
# Each result is a JSON file with the device name, the command, the date and the config.
set -euo pipefail
out=${1:-reports/benchmarks}
mkdir -p "$out"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
paper=(-S profile=paper -S backbone.vit=random -S backbone.vgg19=random -S backbone.adain_vgg=random)
bench() { python -m nstlab bench "$@" --out "$out/$name.json" > /dev/null && echo "wrote $out/$name.json"; }

# Training step, ViT-LoRA stage 2 (LoRA on), batch 16 at 224², then bf16 with a larger batch.
name=train_paper_fp32_b16 bench train "${paper[@]}" -S train.precision=fp32 -S profiles.paper.train.batch_size=16 --steps 20
name=train_paper_bf16_b16 bench train "${paper[@]}" -S train.precision=auto -S profiles.paper.train.batch_size=16 --steps 20
name=train_paper_bf16_b64 bench train "${paper[@]}" -S train.precision=auto -S profiles.paper.train.batch_size=64 --steps 20
# Stylising one image: 1600×1064 and 512², bf16 and fp32.
name=stylize_1600x1064_bf16 bench stylize "${paper[@]}" -S train.precision=auto --height 1064 --width 1600 --steps 50
name=stylize_1600x1064_fp32 bench stylize "${paper[@]}" -S train.precision=fp32 --height 1064 --width 1600 --steps 50
name=stylize_512_bf16 bench stylize "${paper[@]}" -S train.precision=auto --height 512 --width 512 --steps 50
