#!/usr/bin/env bash
# Does a demo model that does not learn in the CPU budget learn with more steps? The demo profile
# (its data, fitted backbones and sizes) on a CUDA machine, each model trained for several times
# its demo steps, evaluated, and scored by the gallery check (nstlab.evaluation.gallery: content
# SSIM, luminance std, gallery pairs moved toward the style). No DVC, no MLflow (--no-tracking).
#   bash reports/benchmarks/gpu_demo_budget.sh OUT_DIR
# Writes OUT_DIR/gpu_demo_budget.csv (one row per model and budget; the demo's own budgets are in
# reports/gallery.csv) and each command's log.
set -euo pipefail
out=${1:-reports/benchmarks/gpu}
mkdir -p "$out"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
device=${DEVICE:-cuda}
table="$out/gpu_demo_budget.csv"
echo "model,budget,seconds,ssim_content,luminance_std,toward_style,pairs" >"$table"
run() {  # run LABEL ARGS...: `nstlab ARGS`, its log kept; stops the script on failure
  local label=$1
  shift
  python -m nstlab "$@" >"$out/budget_$label.log" 2>&1 || { tail -20 "$out/budget_$label.log"; exit 1; }
}
score() {  # score MODEL BUDGET SECONDS: the gallery check of reports/outputs/MODEL, one CSV row
  python - "$@" <<'PY' | tee -a "$table"
import sys
from pathlib import Path

from nstlab.config import load_config
from nstlab.evaluation.gallery import gallery_scores_of_outputs

model, budget, seconds = sys.argv[1:]
pairs = load_config("params.yaml").eval.gallery_pairs
scores = gallery_scores_of_outputs(Path("reports/outputs") / model, pairs)
mean = {key: sum(row[key] for row in scores) / len(scores) for key in ("ssim_content", "luminance_std")}
toward = sum(row["style_gram_ratio"] <= 0.9 for row in scores)
print(f"{model},{budget},{seconds},{mean['ssim_content']:.3f},{mean['luminance_std']:.3f},{toward},{len(scores)}")
PY
}
train_and_score() {  # train_and_score MODEL BUDGET_LABEL OVERRIDES...: fresh training, evaluation, score
  local model=$1 budget=$2 start
  shift 2
  rm -rf "models/$model" "models/${model}_stage1" "models/${model}_stage2" "reports/outputs/$model"
  start=$(date +%s)
  if [ "$model" = vit_lora ]; then
    run "${model}_${budget}_s1" train vit_lora --stage 1 --no-tracking --no-progress -S "train.device=$device" "$@"
    run "${model}_${budget}_s2" train vit_lora --stage 2 --no-tracking --no-progress -S "train.device=$device" "$@"
  else
    run "${model}_${budget}" train "$model" --no-tracking --no-progress -S "train.device=$device" "$@"
  fi
  run "evaluate_${model}_${budget}" evaluate "$model" --no-progress -S "train.device=$device" "$@"
  score "$model" "$budget" "$(($(date +%s) - start))"
}

run download download
run pair pair
run demo_backbones demo-backbones
steps=${STEPS:-1}  # multiplies every budget below (STEPS=0.02 for a quick check on CPU)
n() { python -c "print(max(1, round($1 * $steps)))"; }
# Three chains at once (one model each, so no two write the same folder); the GPU has room for all.
(
  for iterations in "$(n 160)" "$(n 800)"; do
    train_and_score sanet "${iterations}_steps" -S "baselines.sanet.iterations=$iterations"
  done
) &
(
  for iterations in "$(n 120)" "$(n 600)"; do
    train_and_score adain "${iterations}_steps" -S "baselines.adain.iterations=$iterations"
  done
  train_and_score adain "$(n 600)_steps_lr1e-4" -S "baselines.adain.iterations=$(n 600)" -S baselines.adain.lr=1.0e-4
) &
(
  for epochs in "$(n 10)" "$(n 40)"; do  # stage 1: `epochs` epochs; stage 2: twice as many
    train_and_score vit_lora "${epochs}+$((2 * epochs))_epochs" -S "train.stage1.epochs=$epochs" \
      -S "train.stage2.epochs=$((2 * epochs))" -S "train.stage2.milestones=[$epochs]"
  done
) &
for chain in $(jobs -p); do wait "$chain"; done  # each chain's failure stops the script
