#!/usr/bin/env bash
# Pre-train vitkit's shipped model on Tiny ImageNet (issue: pre-trained weights and transfer).
#
#   benchmarks/pretrain_tiny_imagenet.sh [OUT] [extra vitkit train flags...]
#
# Seeded and resumable: run it again after an interruption and it continues exactly where the last checkpoint was
# (every 200 steps). DATA defaults to ../shared/data (the folder holding tiny-imagenet-200/ or the official zip).
# What it reached and what it cost: vitkit/weights/ViT-Mini_8-tiny-imagenet/MODEL_CARD.md (scripts/ship_weights.py
# writes it from the finished run). The shipped hybrid, vitkit/weights/R+ViT-Mini_8-tiny-imagenet/ (37.65 %), is
#   benchmarks/pretrain_tiny_imagenet.sh runs/tin-rvit-mini8-64 --model R+ViT-Mini/8
set -euo pipefail
OUT=${1:-runs/tiny-imagenet-vit-mini8-64}
shift || true
DATA=${DATA:-../shared/data}
# A run interrupted in an earlier session may have been committed (weights, optimizer state, metrics) under
# benchmarks/pretrain-state/: start from there when OUT has nothing yet.
STATE="$(dirname "$0")/pretrain-state/$(basename "$OUT")"
if [ ! -f "$OUT/checkpoint/train_state.pt" ] && [ -f "$STATE/checkpoint/train_state.pt" ]; then
  mkdir -p "$OUT" && cp -r "$STATE/checkpoint" "$STATE/metrics.jsonl" "$OUT/"
  echo "pretrain: continuing the committed state in $STATE" >&2
fi
resume=()
[ -f "$OUT/checkpoint/train_state.pt" ] && resume=(--resume)
exec vitkit train --dataset tiny-imagenet --data-dir "$DATA" --model ViT-Mini/8 --image-size 64 --gelu erf \
  --recipe pretrain --optimizer adamw --lr 1e-3 --weight-decay 0.05 --batch-size 256 --epochs 30 \
  --warmup-epochs 2 --schedule cosine --clip-grad 1 --label-smoothing 0.1 --crop pad --randaugment 2,5 \
  --seed 0 --save-every 200 --out "$OUT" --no-progress "${resume[@]}" "$@"
