#!/usr/bin/env bash
# Pre-train vitkit's shipped model on Tiny ImageNet (issue: pre-trained weights and transfer).
#
#   benchmarks/pretrain_tiny_imagenet.sh [OUT] [extra vitkit train flags...]
#   FIRST=RUN benchmarks/pretrain_tiny_imagenet.sh [OUT]      # a second cosine cycle from the finished run RUN
#   FIRST=NAME benchmarks/pretrain_tiny_imagenet.sh [OUT]     # ... or from a shipped model / checkpoint path
#
# Seeded and resumable: run it again after an interruption and it continues exactly where the last checkpoint was
# (every 200 steps). DATA defaults to ../shared/data (the folder holding tiny-imagenet-200/ or the official zip).
# What it reached and what it cost: the model cards in vitkit/weights/*/MODEL_CARD.md (scripts/ship_weights.py
# writes them from the finished runs). The first shipped hybrid, R+ViT-Mini_8-tiny-imagenet.v1 (retired; a copy is
# benchmarks/teachers/R+ViT-Mini_8-30ep/), is
#   benchmarks/pretrain_tiny_imagenet.sh runs/tin-rvit-mini8-64 --model R+ViT-Mini/8
# and, when its card says two cycles, then
#   FIRST=runs/tin-rvit-mini8-64 benchmarks/pretrain_tiny_imagenet.sh runs/tin-rvit-restart
# The second cycle is a warm restart (SGDR, Loshchilov & Hutter 2017): the first cycle's weights, a fresh AdamW at
# half its peak learning rate, 30 more epochs, a new data order (seed 1), the same augmentation. The first cycle's
# curve had flattened as its learning rate reached zero; continuing costs 30 epochs where a 60-epoch run costs 60.
# Flags after OUT override the script's own (the last one given wins), e.g. a second stage at a higher resolution
# (section 3.2; what it gave, and why it is not shipped: docs/transfer.md, "Fine-tuning at 96 px"):
#   FIRST=R+ViT-Mini_8-tiny-imagenet benchmarks/pretrain_tiny_imagenet.sh runs/tin-rvit-96 --image-size 96 \
#     --epochs 8 --lr 3e-4 --warmup-epochs 0.25
# Precision is vitkit's default, auto: the shipped runs were bf16 autocast on a CPU with avx512_bf16. On a CPU
# without bf16 instructions the same command trains in fp32 (bf16 is emulated there, 24x slower): about 3x the time
# (93 vs ~300 img/s for the hybrid on 2 cores), and a top-1 to compare within noise, not the same bits.
set -euo pipefail
OUT=${1:-runs/tiny-imagenet-vit-mini8-64}
shift || true
DATA=${DATA:-../shared/data}
if [ -n "${FIRST:-}" ]; then
  init=$FIRST
  [ -d "$FIRST/checkpoint" ] && init=$FIRST/checkpoint
  cycle=(--init "$init" --lr 5e-4 --warmup-epochs 1 --seed 1)
else
  cycle=(--model ViT-Mini/8 --gelu erf --lr 1e-3 --warmup-epochs 2 --seed 0)
fi
# A run interrupted in an earlier session may have been committed (weights, optimizer state, metrics) under
# benchmarks/pretrain-state/: start from there when OUT has nothing yet.
STATE="$(dirname "$0")/pretrain-state/$(basename "$OUT")"
if [ ! -f "$OUT/checkpoint/train_state.pt" ] && [ -f "$STATE/checkpoint/train_state.pt" ]; then
  mkdir -p "$OUT" && cp -r "$STATE/checkpoint" "$STATE/metrics.jsonl" "$OUT/"
  echo "pretrain: continuing the committed state in $STATE" >&2
fi
resume=()
[ -f "$OUT/checkpoint/train_state.pt" ] && resume=(--resume)
exec vitkit train --dataset tiny-imagenet --data-dir "$DATA" --image-size 64 "${cycle[@]}" \
  --recipe pretrain --optimizer adamw --weight-decay 0.05 --batch-size 256 --epochs 30 \
  --schedule cosine --clip-grad 1 --label-smoothing 0.1 --crop pad --randaugment 2,5 \
  --save-every 200 --out "$OUT" --no-progress "${resume[@]}" "$@"
