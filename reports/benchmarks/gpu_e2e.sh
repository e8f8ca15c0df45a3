#!/usr/bin/env bash
# The study's own commands on a CUDA machine, without DVC or MLflow (the GPU machine has neither):
#   1. the demo profile, every stage of dvc.yaml in its order (the report excepted: it reads MLflow),
#      with train.device=cuda;
#   2. the paper profile's ViT-LoRA (ViT-B/16 size, random weights) and AdaIN at paper size on the
#      demo's images: a few steps of each stage, then evaluation at the paper's 512 px.
# Each command's wall time goes to OUT_DIR/gpu_e2e.txt. Run from the repository root:
#   bash reports/benchmarks/gpu_e2e.sh OUT_DIR
set -euo pipefail
out=${1:-reports/benchmarks/gpu}
mkdir -p "$out"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
log="$out/gpu_e2e.txt"
: >"$log"
step() {  # step LABEL ARGS...: `nstlab ARGS`, timed
  local label=$1 start
  shift
  start=$(date +%s.%N)
  python -m nstlab "$@" >"$out/$label.log" 2>&1 || { tail -20 "$out/$label.log"; exit 1; }
  awk -v l="$label" -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%-34s %7.1f s\n", l, e - s }' | tee -a "$log"
}
cuda=(-S profiles.demo.train.device=cuda)
step demo_download download
step demo_pair pair
if python -m nstlab demo-backbones --help >/dev/null 2>&1; then step demo_backbones demo-backbones; fi
step demo_vit_lora_stage1 train vit_lora --stage 1 --no-tracking --no-progress "${cuda[@]}"
step demo_vit_lora_stage2 train vit_lora --stage 2 --no-tracking --no-progress "${cuda[@]}"
for method in stytr2 adain sanet mcc artflow iest; do
  step "demo_$method" train "$method" --no-tracking --no-progress "${cuda[@]}"
done
for method in vit_lora stytr2 adain sanet mcc artflow iest gatys; do
  step "demo_evaluate_$method" evaluate "$method" --no-progress "${cuda[@]}"
done

# Paper size on the demo's images (random pairing: the demo has too few images for one-to-one).
paper=(-S profile=paper -S backbone.vit=random -S backbone.vgg19=random -S backbone.adain_vgg=random
  -S profiles.paper.data.content_source=demo -S profiles.paper.data.style_source=demo
  -S profiles.paper.data.pairing=random -S profiles.paper.data.n_train=64 -S profiles.paper.data.n_val=16
  -S profiles.paper.data.n_test=4 -S profiles.paper.train.val_every=2 -S profiles.paper.train.max_val_pairs=16
  -S profiles.paper.train.workers=2 -S profiles.paper.baselines.adain.iterations=50)
rm -rf data models reports/train reports/outputs reports/metrics reports/runs checkpoints
step paper_download download "${paper[@]}"
step paper_pair pair "${paper[@]}"
step paper_vit_lora_stage1 train vit_lora --stage 1 --no-tracking --no-progress "${paper[@]}"
step paper_vit_lora_stage2 train vit_lora --stage 2 --no-tracking --no-progress "${paper[@]}"
step paper_adain train adain --no-tracking --no-progress "${paper[@]}"
step paper_evaluate_vit_lora evaluate vit_lora --no-progress "${paper[@]}"
step paper_evaluate_adain evaluate adain --no-progress "${paper[@]}"
cp reports/train/vit_lora_stage2/metrics.json "$out/paper_vit_lora_stage2_metrics.json"
cp reports/metrics/vit_lora.json "$out/paper_vit_lora_test_metrics.json"
