"""`vitkit eval CKPT --dataset D`: top-1, top-5, loss and per-class accuracy of any checkpoint vitkit reads.

The checkpoint's own preprocessing is used: dataset images are resized to its image size and converted to its
channel count (see vitkit/eval/evaluate.py). `--json` prints one JSON object instead of the table.
"""

from __future__ import annotations

import argparse
import json
import time

from ..data.names import DATASETS_HELP
from ..errors import UserError
from ..flags import Number, device


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint directory or file (vitkit, Hugging Face, official .npz, timm)")
    p.add_argument("--dataset", default="embedded", help=DATASETS_HELP)
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--batch-size", type=Number(int, min=1), default=256, metavar="N",
                   help="images per forward pass (default 256)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--device", type=device, default="auto", help="auto (default: CUDA if available), cpu, cuda, cuda:N")
    p.add_argument("--workers", type=Number(int, min=0), default=0, metavar="N",
                   help="data-loading processes (image folders)")
    p.add_argument("--limit", type=Number(int, min=1), default=None, metavar="N", help="only the first N examples")
    p.add_argument("--tta", choices=["none", "flip"], default="none",
                   help="test-time augmentation: flip = average the predictions for each image and its mirror "
                        "(mirror-invariant classes only; reported as such)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoint.io import load
    from ..data.datasets import load_dataset
    from ..runtime import require_trained_head, resolve_device
    from .evaluate import evaluate

    device = resolve_device(args.device)
    loaded = load(args.checkpoint, device=device)
    require_trained_head(loaded, args.checkpoint, "eval")
    pre = loaded.preprocess
    ds = load_dataset(args.dataset, args.split, data_dir=args.data_dir, image_size=pre.image_size,
                      channels=pre.channels, preprocess=pre)  # folders decode exactly as predict does
    k_model, k_data = loaded.config.num_classes, len(ds.class_names)
    if k_data != k_model:  # a label means a class by its index: other counts mean other classes
        raise UserError(f"{args.dataset} has {k_data} classes but the checkpoint's head has {k_model}; evaluate "
                        f"on data with the checkpoint's classes, or fine-tune it first (vitkit train --init "
                        f"{args.checkpoint} --dataset {args.dataset})")
    n = len(ds.labels) if args.limit is None else min(args.limit, len(ds.labels))
    if args.tta == "flip" and not getattr(ds, "flip_ok", True):
        raise UserError(f"--tta flip: {args.dataset} classes are not mirror-invariant (digits); use --tta none")
    t0 = time.perf_counter()
    r = evaluate(loaded, ds, batch_size=args.batch_size, precision=args.precision, indices=torch.arange(n),
                 device=device, num_workers=args.workers, tta=args.tta)
    r["per_class"] = {name: r["per_class"].get(loaded.class_names[i]) for i, name in enumerate(ds.class_names)}
    from ..checkpoint.hub import exact_weights

    r.update(dataset=args.dataset, split=args.split, checkpoint=str(args.checkpoint), tta=args.tta,
             time_s=round(time.perf_counter() - t0, 2), weights=exact_weights(args.checkpoint))
    if args.json:
        print(json.dumps(r))
        return 0
    tta = ", flip test-time augmentation" if args.tta == "flip" else ""
    print(f"{args.checkpoint} on {args.dataset} ({args.split}, {r['n']} images{tta})")
    print(f"  top-1  {100 * r['top1']:6.2f}%")
    print(f"  top-5  {100 * r['top5']:6.2f}%")
    print(f"  loss   {r['loss']:.4f}")
    width = max(len(str(c)) for c in r["per_class"]) if r["per_class"] else 5
    print("  per class:")
    for name, acc in r["per_class"].items():
        print(f"    {name:<{width}}  " + ("   n/a" if acc is None else f"{100 * acc:6.2f}%"))
    return 0
