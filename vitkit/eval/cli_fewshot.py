"""`vitkit fewshot CKPT --dataset D --shots 1,5,10,25`: few-shot linear evaluation (paper section 4.1).

Prints a table (test top-1, mean and spread over the draws); --out F.json also writes the results as JSON (nothing
is written without it, as with the other commands: `--out` names what is written). Baselines on the same frozen
features: a linear probe on all training features (closed-form ridge, or logistic regression) and cosine k-NN.
Features can come from .npy files instead (`vitkit features`): --train-features F.npy --test-features G.npy.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError


def _ints(s: str) -> list[int]:
    try:
        v = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"expected comma-separated integers, got {s!r}") from None
    if not v or min(v) < 1:
        raise UserError(f"expected positive integers, got {s!r}")
    return v


def add_arguments(p):
    from ..data.names import DATASET_LIST
    from ..flags import Number, add_deprecated

    p.add_argument("checkpoint", nargs="?", help="checkpoint (not needed with --train/--test-features)")
    p.add_argument("--dataset", help=f"dataset spec ({DATASET_LIST})")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--shots", default="1,5,10,25", help="examples per class (default: 1,5,10,25)")
    p.add_argument("--draws", type=Number(int, min=1), default=3,
                   help="random draws per shot count, seeds 0..n-1 (default: 3)")
    p.add_argument("--val-size", type=Number(int, min=1), default=1000,
                   help="held-out training images for choosing the regulariser (default: 1000)")
    p.add_argument("--sample-train", type=Number(int, min=1), default=None, metavar="N",
                   help="a fixed random subset of N images of the train split")
    p.add_argument("--sample-test", type=Number(int, min=1), default=None, metavar="N",
                   help="a fixed random subset of N images of the test split")
    add_deprecated(p, "--train-limit", "--sample-train", type=Number(int, min=1))  # old names, same meaning
    add_deprecated(p, "--test-limit", "--sample-test", type=Number(int, min=1))
    p.add_argument("--baselines", default="ridge,knn",
                   help="comma list of ridge (linear probe, all train features), logreg, knn; 'none' for none")
    p.add_argument("--knn", default="1,10", help="k values of the k-NN baseline (default: 1,10)")
    p.add_argument("--train-features", help="F.npy from `vitkit features` (with F.labels.npy next to it)")
    p.add_argument("--test-features", help="G.npy from `vitkit features --split test`")
    p.add_argument("--batch-size", type=Number(int, min=1), default=256, metavar="N",
                   help="images per forward pass (default 256)")
    p.add_argument("--out", default=None, metavar="FILE", help="also write the results as JSON to FILE (default: "
                   "print only)")


def _load_npy(path: str):
    """(features, labels) of F.npy and F.labels.npy."""
    p = Path(path)
    lab = p.with_suffix("").as_posix() + ".labels.npy"
    try:
        return np.load(p, allow_pickle=False), np.load(lab, allow_pickle=False)
    except FileNotFoundError as e:
        raise UserError(f"{e.filename} does not exist (features need their .labels.npy next to them)") from None
    except ValueError as e:
        raise UserError(f"{path} is not a readable .npy file ({e})") from None


def _class_names(path: str):
    """The dataset's class names that `vitkit features` put in F.json, or None (only for naming classes)."""
    try:
        names = json.loads(Path(path).with_suffix(".json").read_text()).get("class_names")
    except (OSError, ValueError, AttributeError):
        return None
    return names if isinstance(names, list) and names else None


def _check_shots(labels, shots, val_size: int, names) -> None:
    """Every shot count can be drawn from every class (after the held-out split), before features are
    extracted: the check fewshot_eval makes, on the labels alone."""
    from .fewshot import _classes, _holdout, sample_per_class

    labels = np.asarray(labels)
    if val_size < len(_classes(labels)):
        raise UserError(f"the held-out split ({val_size}) must have at least one example per class")
    pool, _ = _holdout(labels, val_size, 1234)
    sample_per_class(labels, max(shots), np.random.default_rng(0), pool, names)


@torch.no_grad()  # inference only; scoped to the call, so nothing leaks to the caller
def run(args) -> int:
    from ..errors import require
    from ..flags import check_writable
    from ..flags import write_atomic
    from .fewshot import fewshot_eval, knn_eval, linear_probe

    if args.out is not None:
        check_writable(args.out, "--out")  # before the work, not after it
    t0 = time.perf_counter()
    shots, knn_ks = _ints(args.shots), _ints(args.knn)
    baselines = [b.strip() for b in args.baselines.split(",") if b.strip() and b.strip() != "none"]
    bad = sorted(set(baselines) - {"ridge", "logreg", "knn"})
    if bad:
        raise UserError(f"unknown baseline(s) {bad}; choose from ridge, logreg, knn")
    if "logreg" in baselines:  # before features are extracted
        require("sklearn.linear_model", "--baselines logreg")
    if args.draws < 1:
        raise UserError("--draws must be at least 1")
    if args.train_features or args.test_features:
        if not (args.train_features and args.test_features):
            raise UserError("give both --train-features and --test-features")
        (xtr, ytr), (xte, yte) = _load_npy(args.train_features), _load_npy(args.test_features)
        names = _class_names(args.train_features)
        source = f"features {args.train_features} / {args.test_features}"
    else:
        if not args.checkpoint or not args.dataset:
            raise UserError("give CHECKPOINT and --dataset D (or --train-features and --test-features)")

        from ..checkpoint import load
        from .features import extract_features, load_split

        model = load(args.checkpoint)
        tr_img, ytr, names = load_split(args.dataset, "train", model, args.data_dir, args.sample_train)
        _check_shots(ytr, shots, args.val_size, names)  # before the features are extracted
        te_img, yte, _ = load_split(args.dataset, "test", model, args.data_dir, args.sample_test)
        xtr = extract_features(model, tr_img, args.batch_size)
        xte = extract_features(model, te_img, args.batch_size)
        source = f"{args.checkpoint} on {args.dataset}"
    if xtr.ndim != 2 or xte.ndim != 2 or xtr.shape[1] != xte.shape[1]:
        raise UserError(f"train/test features have shapes {xtr.shape} / {xte.shape}; expected (N, D) with equal D")
    t_feat = time.perf_counter() - t0
    res = fewshot_eval(xtr, ytr, xte, yte, shots=shots, seeds=range(args.draws), val_size=args.val_size,
                       class_names=names)
    base = {}
    if "ridge" in baselines:
        base["linear_probe_ridge"] = linear_probe(xtr, ytr, xte, yte, "ridge", val_size=args.val_size)
    if "logreg" in baselines:
        base["linear_probe_logreg"] = linear_probe(xtr, ytr, xte, yte, "logreg")
    if "knn" in baselines:
        base["knn"] = knn_eval(xtr, ytr, xte, yte, knn_ks)
    from ..checkpoint.hub import exact_weights

    report = {"source": source, "weights": exact_weights(args.checkpoint), "dataset": args.dataset, "feature_dim": int(xtr.shape[1]),
              "train_size": int(len(xtr)), "test_size": int(len(xte)), "fewshot": res, "baselines": base,
              "seconds": {"features": round(t_feat, 2), "total": round(time.perf_counter() - t0, 2)}}
    print(f"few-shot linear evaluation (closed-form ridge to {{-1,1}}^K, regulariser chosen on {res['val_size']} "
          f"held-out train images): {source}")
    print(f"features: D={xtr.shape[1]}, train {len(xtr)}, test {len(xte)}, {res['num_classes']} classes")
    print(f"{'shots':>5}  {'top-1 mean':>10}  {'std':>5}  {'min':>6}  {'max':>6}  draws  lambda per draw")
    for k, r in res["shots"].items():
        lam = ", ".join(f"{v:g}" for v in r["lambda"])
        print(f"{k:>5}  {100 * r['mean']:>9.2f}%  {100 * r['std']:>5.2f}  {100 * r['min']:>5.2f}%  "
              f"{100 * r['max']:>5.2f}%  {len(r['acc']):>5}  {lam}")
    if "linear_probe_ridge" in base:
        b = base["linear_probe_ridge"]
        print(f"linear probe (ridge, {b['train_size']} train features, lambda {b['lambda']:g}): {100 * b['acc']:.2f}%")
    if "linear_probe_logreg" in base:
        b = base["linear_probe_logreg"]
        print(f"linear probe (logistic regression, {b['train_size']} train features"
              f"{'' if b['converged'] else ', lbfgs stopped at max_iter'}): {100 * b['acc']:.2f}%")
    if "knn" in base:
        print("k-NN (cosine): " + ", ".join(f"k={k}: {100 * a:.2f}%" for k, a in base["knn"]["acc"].items()))
    if args.out is not None:
        out = Path(args.out).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, lambda f: f.write(json.dumps(report, indent=1).encode()))
        print(f"wrote {out} ({report['seconds']['total']:.1f} s)")
    return 0
