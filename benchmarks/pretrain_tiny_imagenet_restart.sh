#!/usr/bin/env bash
# Continue a finished Tiny ImageNet pre-training with a second cosine cycle (a warm restart, as in SGDR: Loshchilov &
# Hutter 2017): the run's weights, a fresh AdamW at half the first cycle's peak learning rate, 30 more epochs, a new
# data order (seed 1). Everything else is the first cycle's recipe (benchmarks/pretrain_tiny_imagenet.sh).
#
#   benchmarks/pretrain_tiny_imagenet_restart.sh [FIRST] [OUT] [extra vitkit train flags...]
#
# FIRST is the finished first-cycle run (default: the shipped hybrid's, runs/tin-rvit-mini8-64, made by
# `benchmarks/pretrain_tiny_imagenet.sh runs/tin-rvit-mini8-64 --model R+ViT-Mini/8`). Seeded and resumable like
# the first cycle: run it again after an interruption and it continues from the last checkpoint (every 200 steps).
# Why a second cycle rather than one longer run: the first cycle's curve had flattened as its learning rate reached
# zero, and continuing from it costs 30 epochs where a 60-epoch run from nothing costs 60 (docs/transfer.md).
set -euo pipefail
FIRST=${1:-runs/tin-rvit-mini8-64}
OUT=${2:-runs/tin-rvit-restart}
shift 2 || shift $# || true
DATA=${DATA:-../shared/data}
STATE="$(dirname "$0")/pretrain-state/$(basename "$OUT")"
if [ ! -f "$OUT/checkpoint/train_state.pt" ] && [ -f "$STATE/checkpoint/train_state.pt" ]; then
  mkdir -p "$OUT" && cp -r "$STATE/checkpoint" "$STATE/metrics.jsonl" "$OUT/"
  echo "pretrain: continuing the committed state in $STATE" >&2
fi
resume=()
[ -f "$OUT/checkpoint/train_state.pt" ] && resume=(--resume)
exec vitkit train --dataset tiny-imagenet --data-dir "$DATA" --init "$FIRST/checkpoint" --image-size 64 \
  --recipe pretrain --optimizer adamw --lr 5e-4 --weight-decay 0.05 --batch-size 256 --epochs 30 \
  --warmup-epochs 1 --schedule cosine --clip-grad 1 --label-smoothing 0.1 --crop pad --randaugment 2,5 \
  --seed 1 --save-every 200 --out "$OUT" --no-progress "${resume[@]}" "$@"
