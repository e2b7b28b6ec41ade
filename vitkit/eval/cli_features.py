"""`vitkit features CKPT --dataset D --split train --out F.npy`: frozen pre-logits features to .npy.

Writes F.npy (float32 (N, D)), F.labels.npy (int64 (N,)) and F.json (checkpoint, dataset, split, class names).
"""

from __future__ import annotations

import time

import torch

SPLITS = ("train", "test")  # what every dataset has; "val"/"validation" would be the test split under another name


def add_arguments(p):
    from ..data.names import DATASET_LIST
    from ..flags import Number, add_deprecated

    p.add_argument("checkpoint", help="checkpoint: vitkit directory, Hugging Face folder, official .npz, timm file")
    p.add_argument("--dataset", required=True, help=f"dataset spec ({DATASET_LIST})")
    p.add_argument("--split", default="train", choices=SPLITS, help="train or test (default: train); every dataset "
                   "has these two (test: Tiny ImageNet's labelled validation images, an image folder's test/ or val/)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--sample", type=Number(int, min=1), default=None, metavar="N",
                   help="a fixed random subset of N images (seed --seed), in dataset order")
    add_deprecated(p, "--limit", "--sample", type=Number(int, min=1))  # its old name: a random subset
    p.add_argument("--seed", type=Number(int, min=0), default=0, help="seed of the --sample subset (default 0)")
    p.add_argument("--batch-size", type=Number(int, min=1), default=256, metavar="N",
                   help="images per forward pass (default 256)")
    p.add_argument("--out", required=True, help="output .npy path (labels go to OUT.labels.npy, metadata to OUT.json)")


@torch.no_grad()  # inference only; scoped to the call, so nothing leaks to the caller
def run(args) -> int:
    from ..checkpoint import load
    from ..checkpoint.hub import exact_weights
    from ..flags import check_writable
    from .features import extract_features, features_path, load_split, save_features

    check_writable(features_path(args.out), "--out")  # before the work, not after it
    t0 = time.perf_counter()
    model = load(args.checkpoint)
    images, labels, names = load_split(args.dataset, args.split, model, args.data_dir, args.sample, args.seed)
    feats = extract_features(model, images, args.batch_size)
    files = save_features(args.out, feats, labels, {
        "checkpoint": str(args.checkpoint), "weights": exact_weights(args.checkpoint), "dataset": args.dataset, "split": args.split, "sample": args.sample,
        "seed": args.seed, "representation": "pre-logits (forward_pre_logits of the final tokens)",
        "class_names": names})
    print(f"wrote {feats.shape[0]} x {feats.shape[1]} features to {files['features']} (labels: {files['labels']}, "
          f"{time.perf_counter() - t0:.1f} s)")
    return 0
