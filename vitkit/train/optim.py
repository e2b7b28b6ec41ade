"""Optimiser, parameter groups and learning-rate schedule.

Weight decay is applied to weight matrices and convolution kernels only: biases, LayerNorm scales/offsets, the
position embeddings, the [class] token and masked patch prediction's [mask] embedding are excluded (decaying them
towards zero only hurts; this is the usual ViT practice, e.g. big_vision's `wd_mults` and timm's
`no_weight_decay`).

Layer-wise learning-rate decay (`--layer-decay D`, off at 1): Transformer block i (1-based) of L trains at
lr * D^(L + 1 - i), the embedding (stem, patch projection, [class] token, position embeddings) at lr * D^(L + 1), and
the final norm and head at lr. The lower layers, which hold the most general features, move least when fine-tuning
on little data (BEiT, Bao et al. 2021, section 2.4; timm's and big_vision's fine-tuning configs call it layer decay).

The schedule is a `LambdaLR` whose factor is a pure function of the step (linear warmup from 0, then linear or
cosine decay to 0 at the last step), so resuming from a saved step reproduces it exactly.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token")
EMBEDDING_NAMES = ("stem", "patch_embed", "pos_embed", "cls_token", "mask_token")


def layer_id(name: str, depth: int) -> int:
    """0 for the embedding, i + 1 for Transformer block i, depth + 1 for everything above the blocks."""
    m = re.search(r"(?:^|\.)blocks\.(\d+)\.", name)
    if m:
        return int(m.group(1)) + 1
    if any(k in name for k in EMBEDDING_NAMES):
        return 0
    return depth + 1


def decays(name: str, p: torch.Tensor) -> bool:
    """Whether weight decay applies: >= 2-D weights, not the position embeddings or the [class]/[mask] tokens."""
    return not (p.ndim <= 1 or any(n in name for n in NO_DECAY_NAMES))


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0, depth: int = 0) -> list[dict]:
    """Decayed (>= 2-D weights) and not decayed (biases, norms, position embeddings, class token) parameters, in
    that order; with `layer_decay` < 1 one such pair per layer of the `depth`-block model, lowest layer first. Each
    group has its `lr_scale`; the top layer's pair is always there (possibly empty)."""
    def new(layer: int, decayed: bool) -> dict:
        return {"params": [], "weight_decay": weight_decay if decayed else 0.0,
                "lr_scale": layer_decay ** (depth + 1 - layer)}

    groups = {(depth + 1, d): new(depth + 1, d) for d in (True, False)}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = (layer_id(name, depth) if layer_decay != 1 else depth + 1, decays(name, p))
            groups.setdefault(key, new(*key))["params"].append(p)
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0], not k[1]))]


def no_decay_names(model: nn.Module) -> list[str]:
    """Names of the parameters `param_groups` leaves undecayed (for tests and --debug output)."""
    return [n for n, p in model.named_parameters() if not decays(n, p)]


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, betas=(0.9, 0.999),
                    momentum: float = 0.9, fused: bool = False, layer_decay: float = 1.0,
                    depth: int = 0) -> torch.optim.Optimizer:
    """`fused`: one multi-tensor kernel per step instead of a Python loop over parameters (CPU and CUDA): faster
    (timings in benchmarks/README.md); tests/test_fastpaths.py checks it against the looped update."""
    groups = param_groups(model, weight_decay, layer_decay, depth)
    for g in groups:  # each group's peak; the schedule scales every group's lr by the same factor
        g["lr"] = lr * g.pop("lr_scale")
    kw = {"fused": True} if fused else {}
    if name == "adamw":  # decoupled weight decay: p -= lr * wd * p, independent of the Adam statistics
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=1e-8, weight_decay=weight_decay, **kw)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, **kw)
    raise ValueError(f"unknown optimizer {name!r}; valid: adamw, sgd")


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the base learning rate for optimizer step `step` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "constant":
        return 1.0
    raise ValueError(f"unknown schedule {schedule!r}; valid: cosine, linear, constant")


def build_scheduler(optimizer: torch.optim.Optimizer, warmup: int, total: int, schedule: str):
    lr_factor(0, warmup, total, schedule)  # validate the name now rather than at the first step
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, total, schedule))
