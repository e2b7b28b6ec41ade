"""Linear probing, then fine-tuning (LP-FT, Kumar et al., ICLR 2022), as an experiment on vitkit's fine-tuning.

    python benchmarks/lpft_init.py CKPT imagefolder:PATH OUT [--C 1.0]
    vitkit train --init OUT --dataset imagefolder:PATH

Writes a checkpoint OUT: CKPT with a new head for PATH's classes that is a logistic regression (scikit-learn, L2
strength 1/C) fitted on the frozen pre-logits features of PATH's training images at CKPT's resolution, instead of the
zero-initialised head of the paper's fine-tuning (section 3.2). `vitkit train --init` keeps a head whose class
count matches the data, so the run then fine-tunes from the probe. What it gave: docs/transfer.md.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

import vitkit
from vitkit.checkpoint.io import save_checkpoint
from vitkit.checkpoint.surgery import adapt
from vitkit.eval.features import extract_features, load_split


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("ckpt")
    p.add_argument("dataset", help="imagefolder:PATH")
    p.add_argument("out")
    p.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the logistic regression (> 0)")
    a = p.parse_args(argv)
    if not a.C > 0:
        p.error(f"--C must be > 0, got {a.C}")
    loaded = vitkit.load(a.ckpt)
    images, labels, names = load_split(a.dataset, "train", loaded)
    loaded = adapt(loaded, num_classes=len(names))
    feats = extract_features(loaded, images).astype(np.float64)
    clf = LogisticRegression(max_iter=5000, C=a.C).fit(feats, labels)
    w, b = clf.coef_, clf.intercept_
    if len(names) == 2:  # one logit difference -> two logits with the same softmax
        w, b = np.concatenate([-w / 2, w / 2]), np.array([-b[0] / 2, b[0] / 2])
    with torch.no_grad():
        loaded.model.head.weight.copy_(torch.as_tensor(w, dtype=torch.float32))
        loaded.model.head.bias.copy_(torch.as_tensor(b, dtype=torch.float32))
    save_checkpoint(a.out, loaded.replace(class_names=names))
    print(f"lpft_init: {a.out}: probe train top-1 {100 * clf.score(feats, labels):.1f} % on {len(labels)} images")


if __name__ == "__main__":
    main()
