"""Attention analyses of the paper (Dosovitskiy et al. 2021, Fig. 6, Fig. 7 right, App. D.7-D.8) as plain functions
of arrays, so that a notebook can call them on attention weights from any source.

Conventions: an attention list is one array per layer, each (N, heads, T, T) of softmax weights (rows sum to 1,
query on axis -2, key on axis -1). With a [class] token it is token 0 and the g*g patch tokens follow in row-major
order (row = token // g, column = token % g), which is how PatchEmbed flattens the grid. Inputs may be numpy
arrays or torch tensors; outputs are float64 numpy arrays.

    attention_rollout(attn_list)                                   -> (N, T, T)
    rollout_map(rollout, grid, has_cls)                            -> (N, g, g)  what the overlays draw
    head_maps(attn, grid, has_cls)                                 -> (N, heads, g, g)  raw per-head maps
    patch_distance_matrix(grid, patch_size)                        -> (g*g, g*g) pixel distances
    mean_attention_distance(attn_list, grid, patch_size, has_cls)  -> (layers, heads)
    collect_attention(model, x)                                    -> attention list of a model, or UserError
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import UserError


def _np(a) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor (any dtype/device)
        a = a.detach().float().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def _check_shape(i: int, a) -> None:
    shape = tuple(a.shape)
    if len(shape) != 4 or shape[-1] != shape[-2]:
        raise UserError(f"attention of layer {i} has shape {shape}; expected (N, heads, T, T)")


def _layers(attn_list):
    """Validate all shapes first, then yield one float64 layer at a time (peak memory: one layer, not all)."""
    attn_list = list(attn_list)
    if not attn_list:
        raise UserError("no attention weights: the model has no Transformer blocks")
    for i, a in enumerate(attn_list):
        _check_shape(i, a if hasattr(a, "shape") else np.asarray(a))
    for a in attn_list:
        yield _np(a)


def attention_rollout(attn_list: Sequence, residual: bool = True) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020), as the paper's App. D.8 uses it: average the weights over heads,
    add the identity for the residual connection, renormalise the rows, and multiply through the layers:

        R = A_L' ... A_2' A_1',  A_l' = rownorm(mean_heads(A_l) + I)

    R[n, i, j] is how much input token j contributes to output token i of the last layer. Returns (N, T, T).
    `residual=False` skips the identity (plain product of head-averaged attention)."""
    rollout = eye = None
    for a in _layers(attn_list):
        if rollout is None:
            n, _, t, _ = a.shape
            eye = np.eye(t)
            rollout = np.broadcast_to(eye, (n, t, t)).copy()
        a = a.mean(axis=1)
        if residual:
            a = a + eye
            a = a / a.sum(axis=-1, keepdims=True)
        rollout = a @ rollout
    return rollout


def rollout_map(rollout, grid: int, has_cls: bool) -> np.ndarray:
    """The (N, g, g) map the overlays draw. With a [class] token: row 0 of the rollout restricted to the patch
    columns (how much each patch flows into the [class] token the head reads). Without one (GAP models, whose head
    averages all output tokens): the mean over query patches of the rollout, i.e. how much each input patch flows
    into the pooled representation."""
    r = _np(rollout)
    if has_cls:
        m = r[:, 0, 1:]
    else:
        m = r.mean(axis=1)
    if m.shape[-1] != grid * grid:
        raise UserError(f"rollout has {m.shape[-1]} patch tokens, expected a {grid}x{grid} grid")
    return m.reshape(-1, grid, grid)


def head_maps(attn, grid: int, has_cls: bool) -> np.ndarray:
    """Raw per-head maps of one layer's attention (N, heads, T, T) -> (N, heads, g, g): the [class] token's
    attention to the patches, or for GAP models the mean over query patches of the attention to each key patch."""
    a = _np(attn)
    m = a[:, :, 0, 1:] if has_cls else a.mean(axis=2)
    if m.shape[-1] != grid * grid:
        raise UserError(f"attention has {m.shape[-1]} patch tokens, expected a {grid}x{grid} grid")
    return m.reshape(a.shape[0], a.shape[1], grid, grid)


def patch_distance_matrix(grid: int, patch_size: float) -> np.ndarray:
    """Euclidean distance in pixels between the centres of patches i and j, (g*g, g*g), row-major patch order."""
    r, c = np.divmod(np.arange(grid * grid), grid)
    dr, dc = r[:, None] - r[None, :], c[:, None] - c[None, :]
    return np.sqrt(dr**2 + dc**2) * float(patch_size)


def mean_attention_distance(attn_list: Sequence, grid: int, patch_size: float, has_cls: bool,
                            renormalize: bool = True, reduce: bool = True) -> np.ndarray:
    """Fig. 7 right / App. D.7: the attention-weighted mean pixel distance between query and key patches.

    For each layer, head, image and query patch i: sum_j w_ij * d_ij over key patches j, where d is the pixel
    distance between patch centres and w the attention weights among patch tokens. The [class] token (if any) is
    left out as query and key; with `renormalize` (default) the remaining weights of each query are rescaled to sum
    to 1, so a head that mostly reads the [class] token is not mistaken for a local one. The result is averaged
    over query patches, and (with `reduce`) over images: (layers, heads); without `reduce`: (N, layers, heads)."""
    d = patch_distance_matrix(grid, patch_size)
    out = []
    for a in _layers(attn_list):
        if has_cls:
            a = a[:, :, 1:, 1:]
        if a.shape[-1] != grid * grid:
            raise UserError(f"attention has {a.shape[-1]} patch tokens, expected a {grid}x{grid} grid")
        if renormalize:
            a = a / np.clip(a.sum(axis=-1, keepdims=True), 1e-12, None)
        per_query = (a * d).sum(axis=-1)  # (N, heads, g*g)
        out.append(per_query.mean(axis=-1))  # (N, heads)
    res = np.stack(out, axis=1)  # (N, layers, heads)
    return res.mean(axis=0) if reduce else res


def collect_attention(model, x) -> dict:
    """Run `model` on the preprocessed batch `x` and return {"attn": [(N, heads, T, T)] per layer, "logits",
    "has_cls", "grid", "pixels_per_token"}. Works for vitkit ViT models (native, or converted from official .npz /
    Hugging Face / timm checkpoints) through their explicit attention path; anything else is a one-line UserError."""
    import torch

    if not hasattr(model, "forward_intermediates") or not hasattr(model, "cfg"):
        raise UserError(f"{type(model).__name__} is not a vitkit ViT: attention maps need a model with "
                        f"forward_intermediates(..., return_attn=True)")
    if len(getattr(model, "blocks", [])) == 0:
        raise UserError("the model has no Transformer blocks, so it has no attention to analyse")
    cfg = model.cfg
    param = next(model.parameters(), None)
    if param is not None and torch.is_floating_point(x) and x.dtype != param.dtype:
        x = x.to(param.dtype)  # e.g. a float64 official .npz
    with torch.inference_mode():
        out = model.forward_intermediates(x, return_attn=True)
    attn = out.get("attn") or []
    if len(attn) != len(model.blocks) or any(a is None for a in attn):
        raise UserError("the model did not return attention weights for every block (its attention has no "
                        "explicit path)")
    t = cfg.num_tokens
    for i, a in enumerate(attn):
        if a.ndim != 4 or tuple(a.shape[-2:]) != (t, t):
            raise UserError(f"block {i} returned attention of shape {tuple(a.shape)}, expected (N, heads, {t}, {t})")
    return {"attn": attn, "logits": out["logits"], "has_cls": cfg.classifier == "token", "grid": cfg.grid_size,
            "pixels_per_token": cfg.stem_stride}
