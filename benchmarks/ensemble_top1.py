"""Top-1 of an ensemble (the mean class probability of several checkpoints) and of each member, on a dataset's
test split: what a student distilled from them (`vitkit train --teacher A,B`) can aim at.

    python benchmarks/ensemble_top1.py benchmarks/teachers/R+ViT-Mini_8-30ep benchmarks/teachers/R+ViT-Mini_8-dp50 \
        --dataset tiny-imagenet --data-dir ../shared/data

Each member reads the uint8 images through its own preprocessing (vitkit.runtime.to_model_input), as the
teachers do in distillation. Prints one JSON object.
"""

import argparse
import json
import sys

import torch

import vitkit
from vitkit.data.datasets import iterate_batches, load_dataset
from vitkit.errors import UserError
from vitkit.runtime import autocast, to_model_input


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--dataset", default="tiny-imagenet")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    ap.add_argument("--batch-size", type=int, default=256)
    a = ap.parse_args(argv)
    try:
        members = [vitkit.load(c) for c in a.checkpoints]
        first = members[0].config
        ds = load_dataset(a.dataset, "test", data_dir=a.data_dir, image_size=first.image_size,
                          channels=first.in_chans)
        for c, m in zip(a.checkpoints, members):
            if m.config.num_classes != len(ds.class_names):
                raise UserError(f"{c}: {m.config.num_classes} classes, {a.dataset} has {len(ds.class_names)}")
    except UserError as e:
        print(f"ensemble_top1: error: {e}", file=sys.stderr)
        return 2
    hits, each, n, cpu = 0, [0] * len(members), 0, torch.device("cpu")
    with torch.no_grad():
        for images, labels in iterate_batches(ds, torch.arange(len(ds.labels)), a.batch_size):
            labels, probs = labels.long(), []
            for i, m in enumerate(members):
                m.model.eval()
                with autocast(cpu, a.precision):
                    p = m.model(to_model_input(images, m.preprocess, cpu)).float().softmax(-1)
                each[i] += int((p.argmax(1) == labels).sum())
                probs.append(p)
            hits += int((torch.stack(probs).mean(0).argmax(1) == labels).sum())
            n += len(labels)
    print(json.dumps({"dataset": a.dataset, "n": n, "precision": a.precision, "ensemble_top1": hits / n,
                      "members": {c: h / n for c, h in zip(a.checkpoints, each)}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
