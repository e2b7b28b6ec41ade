"""Fine-tuning surgery (paper section 3.2), as the official `load_pretrained` does it, one named function each.

* `resize_pos_embed`: 2D interpolation of the grid of learned position embeddings to a new grid, the [class]
  token row kept apart. The official code uses scipy.ndimage.zoom(order=1) on the (g, g, D) grid, whose default
  (grid_mode=False) maps output index o to input coordinate o * (g_old - 1) / (g_new - 1): bilinear interpolation
  with aligned corners. vitkit calls scipy itself where installed (bit-exact), torch's equivalent otherwise;
  tests/test_checkpoint_core.py checks both against scipy.
* `reset_head`: a new zero-initialised head for a new class count.
* `drop_pre_logits`: remove the pre-training head's hidden (tanh) layer.

They act on a ViT; `adapt` does the same to a LoadedModel and keeps its preprocessing and class names in step.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ViTConfig
from ..errors import UserError
from ..runtime import LoadedModel


def resize_pos_embed(posemb: torch.Tensor, new_grid: int, num_prefix_tokens: int = 1) -> torch.Tensor:
    """(1, prefix + g*g, D) -> (1, prefix + new_grid**2, D); prefix rows (the [class] token) are kept as they are.

    Where scipy is installed this runs scipy.ndimage.zoom(order=1) on the (g, g, D) grid in the checkpoint's dtype,
    bit for bit as the official load_pretrained. Otherwise the same interpolation in torch (bilinear, aligned
    corners, float64), which can differ from scipy's in the last float32 bit (~1e-9 in fp64 logits)."""
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[0, num_prefix_tokens:]
    old = int(round(grid.shape[0] ** 0.5))
    if old * old != grid.shape[0]:
        raise UserError(f"position embedding has {grid.shape[0]} grid rows, not a square number")
    if old == new_grid:
        return posemb
    try:
        import scipy.ndimage
    except ImportError:  # pragma: no cover - scipy is a dependency; this serves installs made without it
        g = grid.reshape(old, old, -1).permute(2, 0, 1)[None].double()  # (1, D, g, g)
        g = F.interpolate(g, size=(new_grid, new_grid), mode="bilinear", align_corners=True)
        g = g[0].permute(1, 2, 0).reshape(1, new_grid * new_grid, -1).to(posemb.dtype)
    else:
        z = scipy.ndimage.zoom(grid.detach().cpu().numpy().reshape(old, old, -1), (new_grid / old, new_grid / old, 1),
                               order=1)
        g = torch.from_numpy(np.ascontiguousarray(z)).reshape(1, new_grid * new_grid, -1).to(posemb)
    return torch.cat([prefix, g], dim=1)


def _resize_1d(emb: torch.Tensor, new_len: int) -> torch.Tensor:  # (1, n, d) -> (1, new_len, d)
    x = F.interpolate(emb.transpose(1, 2).double(), size=new_len, mode="linear", align_corners=True)
    return x.transpose(1, 2).to(emb.dtype)


def _rebuild(cfg: ViTConfig, state: dict):
    from ..model import model_from_config

    new = model_from_config(cfg)
    missing, unexpected = new.load_state_dict(state, strict=False)
    allowed = {"head.weight", "head.bias"}  # a fresh zero head is intended where the class count changed
    if set(missing) - allowed or unexpected:
        raise RuntimeError(f"surgery lost tensors: missing {missing}, unexpected {unexpected}")
    return new


def reset_head(model, num_classes: int):
    """A copy of `model` whose head is a fresh zero-initialised layer for `num_classes` classes."""
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    return _rebuild(model.cfg.replace(num_classes=num_classes), state)


def drop_pre_logits(model):
    """A copy of `model` without the pre-logits layer; the head (zero-initialised) then reads the pooled token."""
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(("pre_logits.", "head."))}
    return _rebuild(model.cfg.replace(representation_size=None), state)


def resize_model(model, image_size: int):
    """A copy of `model` for a new input resolution, its position embeddings interpolated to the new grid (a BiT
    ResNet has none: only the resolution its preprocessing resizes to changes)."""
    cfg = model.cfg.replace(image_size=image_size)
    state = dict(model.state_dict())
    pos_embed = getattr(cfg, "pos_embed", None)
    if pos_embed == "learned":
        state["pos_embed"] = resize_pos_embed(state["pos_embed"], cfg.grid_size, int(cfg.classifier == "token"))
    elif pos_embed == "learned2d":
        for k in ("pos_embed_row", "pos_embed_col"):
            state[k] = _resize_1d(state[k], cfg.grid_size)
    return _rebuild(cfg, state)


def adapt_model(model, num_classes: Optional[int] = None, image_size: Optional[int] = None,
                keep_pre_logits: bool = False):
    """What `vitkit train --init` does to a pre-trained model before fine-tuning (section 3.2): drop the
    pre-logits layer (unless asked to keep it), new zero head when the class count changes, and 2D-interpolated
    position embeddings when the resolution changes."""
    if getattr(model.cfg, "representation_size", None) and not keep_pre_logits:  # (BiT: no pre-logits layer)
        model = drop_pre_logits(model)
    if num_classes is not None and num_classes != model.cfg.num_classes:
        model = reset_head(model, num_classes)
    if image_size is not None and image_size != model.cfg.image_size:
        model = resize_model(model, image_size)
    return model


def adapt(loaded: LoadedModel, num_classes: Optional[int] = None, image_size: Optional[int] = None,
          keep_pre_logits: bool = False) -> LoadedModel:
    """`adapt_model` on a LoadedModel: its preprocessing follows the new resolution, and a new head gets the
    names "0", "1", ... (the old names belonged to the old classes)."""
    model = adapt_model(loaded.model, num_classes, image_size, keep_pre_logits)
    names = loaded.class_names if model.cfg.num_classes == loaded.config.num_classes else \
        [str(i) for i in range(model.cfg.num_classes)]
    pre = dataclasses.replace(loaded.preprocess, image_size=model.cfg.image_size)
    return loaded.replace(model=model, preprocess=pre, class_names=names)
