"""Top-1 / top-5 accuracy, mean cross-entropy and per-class accuracy of a model on a dataset.

    evaluate(model, dataset, batch_size=256, precision="fp32") -> {top1, top5, loss, n, per_class: {name: acc}}

`model` is a LoadedModel (vitkit.load) or a bare ViT. Its own preprocessing is used (the checkpoint's; a bare ViT
gets vitkit.runtime.default_preprocess): dataset batches are converted to its channel count (gray <-> RGB) and
resized to its image size before normalisation (vitkit.runtime.to_model_input), so any checkpoint can be evaluated
on any dataset with the same classes. `evaluate_counts` returns summable tensors so
that the training loop can shard evaluation over processes and all-reduce them.

Test-time augmentation (`tta="flip"`): the class probabilities of each image and of its horizontal mirror are
averaged (the loss is the cross-entropy of that average). Only for data whose classes are mirror-invariant (clothes,
photos; not digits), for twice the evaluation cost; what it gains: benchmarks/README.md ("Figures behind the
code's choices"). Reported separately from plain accuracy wherever vitkit prints it.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..runtime import LoadedModel, as_loaded, autocast, to_model_input, unwrap


@torch.no_grad()
def evaluate_counts(model, dataset, indices: Optional[torch.Tensor] = None, batch_size: int = 256,
                    precision: str = "fp32", preprocess=None, device=None, num_workers: int = 0,
                    tta: Optional[str] = None) -> dict:
    """Sums over `indices` (default: the whole dataset): correct top-1 / top-5, summed loss, count, and per-class
    correct / total, as float64 tensors on `device`. `tta`: None or "flip" (see the module docstring)."""
    from ..data.datasets import iterate_batches

    loaded = as_loaded(model, preprocess)
    model, pre, inner = loaded.model, loaded.preprocess, unwrap(loaded.model)
    if tta not in (None, "none", "flip"):
        raise UserError(f"unknown test-time augmentation {tta!r}; valid: none, flip")
    device = torch.device(device) if device is not None else next(inner.parameters()).device
    k = inner.cfg.num_classes
    if indices is None:
        indices = torch.arange(len(dataset.labels))
    was_training = model.training
    model.eval()
    c1 = torch.zeros((), dtype=torch.float64)
    c5 = torch.zeros((), dtype=torch.float64)
    loss_sum = torch.zeros((), dtype=torch.float64)
    cls_correct = torch.zeros(k, dtype=torch.float64)
    cls_total = torch.zeros(k, dtype=torch.float64)
    try:
        for images, labels in iterate_batches(dataset, indices, batch_size, num_workers=num_workers):
            x = to_model_input(images, pre, device)
            with autocast(device, precision):
                logits = model(x).float()
                if tta == "flip":  # log of the mean probability: argmax, top-5 and cross-entropy all follow from it
                    probs = (logits.softmax(-1) + model(x.flip(-1)).float().softmax(-1)) / 2
                    logits = probs.clamp_min(1e-30).log()
            logits = logits.cpu()
            labels = labels.long()
            if int(labels.max()) >= k:
                raise UserError(f"the dataset has label {int(labels.max())} but the model has only {k} classes")
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
            top = logits.topk(min(5, k), dim=1).indices
            hit1 = top[:, 0] == labels
            c1 += hit1.sum()
            c5 += (top == labels[:, None]).any(1).sum()
            cls_total += torch.bincount(labels, minlength=k).double()
            cls_correct += torch.bincount(labels[hit1], minlength=k).double()
    finally:
        model.train(was_training)
    n = torch.tensor(float(len(indices)), dtype=torch.float64)
    return {k_: v.to(device) for k_, v in dict(correct1=c1, correct5=c5, loss_sum=loss_sum, n=n,
                                              class_correct=cls_correct, class_total=cls_total).items()}


def summarize(counts: dict, class_names) -> dict:
    n = max(float(counts["n"]), 1.0)
    correct, total = counts["class_correct"].cpu(), counts["class_total"].cpu()
    names = list(class_names) if class_names else [str(i) for i in range(len(total))]
    per_class = {str(names[i]) if i < len(names) else str(i): (float(correct[i] / total[i]) if total[i] else None)
                 for i in range(len(total))}
    return {"top1": float(counts["correct1"]) / n, "top5": float(counts["correct5"]) / n,
            "loss": float(counts["loss_sum"]) / n, "n": int(counts["n"]), "per_class": per_class}


def evaluate(model, dataset, batch_size: int = 256, precision: str = "fp32", indices=None, device=None,
             num_workers: int = 0, tta: Optional[str] = None) -> dict:
    """{top1, top5, loss, n, per_class: {class name: accuracy}} of `model` on `dataset` (fractions in [0, 1])."""
    names = model.class_names if isinstance(model, LoadedModel) else getattr(dataset, "class_names", None)
    return summarize(evaluate_counts(model, dataset, indices, batch_size, precision, device=device,
                                     num_workers=num_workers, tta=tta), names)
