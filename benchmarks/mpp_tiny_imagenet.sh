#!/usr/bin/env bash
# Masked patch prediction vs training from scratch vs supervised pre-training (paper section 4.6, App. B.1.2),
# at laptop scale: one model, one dataset (Tiny ImageNet: 200 classes, 10k validation images), equal compute.
#
#   benchmarks/mpp_tiny_imagenet.sh [OUT]          # then read OUT/summary.txt
#
# Every arm runs PT_EPOCHS + FT_EPOCHS epochs of the same model on the same images:
#   scratch     supervised from a random init, PT_EPOCHS + FT_EPOCHS epochs in one run
#   mpp         masked patch prediction for PT_EPOCHS epochs (labels unused), then fine-tuned FT_EPOCHS epochs
#   supervised  supervised pre-training for PT_EPOCHS epochs, then the same fine-tuning
# The score is each arm's final top-1 on the Tiny ImageNet validation split. The paper (ViT-B/16, MPP on JFT,
# fine-tuned on ImageNet): MPP +2 % over from scratch, 4 % behind supervised pre-training. Here the supervised arm
# pre-trains on the same training images rather than on a far larger labelled set, so it is the label-using reference
# of the same two-phase schedule, not the paper's JFT model.
#
# Environment: DATA (folder holding tiny-imagenet-200/, default ../shared/data), MODEL (ViT-Mini/8), SIZE (64),
# PT_EPOCHS (20), FT_EPOCHS (10), SEED (0), EXTRA (flags added to every run, e.g. "--limit-train 512
# --limit-test 256 --steps 2" for a smoke test). Each arm costs about what benchmarks/pretrain_tiny_imagenet.sh
# does; runs are seeded, and re-running the script resumes an interrupted run from its last checkpoint (every
# 200 steps) and skips the finished ones.
set -euo pipefail
OUT=${1:-runs/mpp-tiny-imagenet}
DATA=${DATA:-../shared/data}
MODEL=${MODEL:-ViT-Mini/8}
SIZE=${SIZE:-64}
PT_EPOCHS=${PT_EPOCHS:-20}
FT_EPOCHS=${FT_EPOCHS:-10}
SEED=${SEED:-0}
read -r -a EXTRA <<< "${EXTRA:-}"
mkdir -p "$OUT"

# train NAME FLAGS...: one vitkit train run in OUT/NAME, its result as OUT/NAME.json; resumed if interrupted,
# skipped if done.
train() {
  local name=$1
  shift
  [ -s "$OUT/$name.json" ] && return 0
  local resume=()
  [ -f "$OUT/$name/checkpoint/train_state.pt" ] && resume=(--resume)
  vitkit train --dataset tiny-imagenet --data-dir "$DATA" --seed "$SEED" --save-every 200 --no-progress --json \
    --out "$OUT/$name" "${resume[@]}" "$@" "${EXTRA[@]}" | tail -n 1 > "$OUT/$name.json.tmp"
  mv "$OUT/$name.json.tmp" "$OUT/$name.json"
}

# Upstream settings shared by the supervised arms (those of benchmarks/pretrain_tiny_imagenet.sh).
SUPERVISED=(--model "$MODEL" --image-size "$SIZE" --gelu erf --recipe pretrain --optimizer adamw --lr 1e-3
            --weight-decay 0.05 --batch-size 256 --warmup-epochs 2 --schedule cosine --clip-grad 1
            --label-smoothing 0.1 --crop pad --randaugment 2,5)
# Fine-tuning (recipe finetune: SGD with momentum, cosine, gradient clipping; section 3.2 / App. B.1.1).
FINETUNE=(--recipe finetune --lr 0.01 --batch-size 128 --epochs "$FT_EPOCHS")

train scratch "${SUPERVISED[@]}" --epochs "$((PT_EPOCHS + FT_EPOCHS))"
train mpp-pretrain --recipe mpp --model "$MODEL" --image-size "$SIZE" --gelu erf --epochs "$PT_EPOCHS"
train mpp-finetune --init "$OUT/mpp-pretrain/checkpoint" "${FINETUNE[@]}"
train supervised-pretrain "${SUPERVISED[@]}" --epochs "$PT_EPOCHS"
train supervised-finetune --init "$OUT/supervised-pretrain/checkpoint" "${FINETUNE[@]}"

python - "$OUT" <<'EOF' | tee "$OUT/summary.txt"
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
r = {name: json.loads((out / f"{name}.json").read_text()) for name in
     ("scratch", "mpp-pretrain", "mpp-finetune", "supervised-pretrain", "supervised-finetune")}
print(f"MPP pre-training: held-out colour accuracy {100 * r['mpp-pretrain']['top1']:.2f} %, "
      f"loss {r['mpp-pretrain']['loss']:.4f}")
for arm, name in (("scratch", "scratch"), ("mpp", "mpp-finetune"), ("supervised", "supervised-finetune")):
    seconds = r[name]["time_s"] + (r[name.replace("finetune", "pretrain")]["time_s"] if arm != "scratch" else 0)
    print(f"{arm:<11} top-1 {100 * r[name]['top1']:6.2f} %  top-5 {100 * r[name]['top5']:6.2f} %  "
          f"({r[name]['n']} images, {seconds:.0f} s wall)")
print(f"mpp - scratch: {100 * (r['mpp-finetune']['top1'] - r['scratch']['top1']):+.2f} points; "
      f"mpp - supervised: {100 * (r['mpp-finetune']['top1'] - r['supervised-finetune']['top1']):+.2f} points")
EOF
