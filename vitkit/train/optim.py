"""Optimiser, parameter groups and learning-rate schedule.

Weight decay is applied to weight matrices and convolution kernels only: biases, LayerNorm scales/offsets, the
position embeddings, the [class] token and masked patch prediction's [mask] embedding are excluded (decaying them
towards zero only hurts; this is the usual ViT practice, e.g. big_vision's `wd_mults` and timm's
`no_weight_decay`).

The schedule is a `LambdaLR` whose factor is a pure function of the step (linear warmup from 0, then linear or
cosine decay to 0 at the last step), so resuming from a saved step reproduces it exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed (>= 2-D weights) and not decayed (biases, norms, position embeddings, class token)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or any(n in name for n in NO_DECAY_NAMES):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def no_decay_names(model: nn.Module) -> list[str]:
    """Names of the parameters `param_groups` leaves undecayed (for tests and --debug output)."""
    return [n for n, p in model.named_parameters() if p.ndim <= 1 or any(k in n for k in NO_DECAY_NAMES)]


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, betas=(0.9, 0.999),
                    momentum: float = 0.9, fused: bool = False) -> torch.optim.Optimizer:
    """`fused`: one multi-tensor kernel per step instead of a Python loop over parameters (CPU and CUDA): faster
    (timings in benchmarks/README.md); tests/test_fastpaths.py checks it against the looped update."""
    groups = param_groups(model, weight_decay)
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
