"""Frozen pre-logits features of a model, for few-shot evaluation, linear probes, k-NN and export to .npy.

    extract_features(model, images_u8, batch_size)   -> (N, D) float32 numpy, the representation the head sees
    load_split(spec, split, model, data_dir, limit)  -> the dataset at the model's size and channels
    save_features(path, feats, labels, meta)         -> writes F.npy, F.labels.npy, F.json
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError


def model_inputs(model, images_u8) -> torch.Tensor:
    """uint8 (N, C, H, W) -> the normalised float batch the model expects (resized / channel-fixed if needed)."""
    x = torch.as_tensor(np.asarray(images_u8)) if not isinstance(images_u8, torch.Tensor) else images_u8
    cfg = model.cfg
    if x.ndim != 4:
        raise UserError(f"images have shape {tuple(x.shape)}; expected (N, C, H, W)")
    if x.shape[1] != cfg.in_chans:
        if x.shape[1] == 1 and cfg.in_chans == 3:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] == 3 and cfg.in_chans == 1:  # ITU-R 601 luma, as PIL's convert("L")
            x = (x.float() * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
            x = x.round().clamp(0, 255).to(torch.uint8)
        else:
            raise UserError(f"images have {x.shape[1]} channels; the model takes {cfg.in_chans}")
    if tuple(x.shape[-2:]) != (cfg.image_size, cfg.image_size):
        from ..data.datasets import resize_batch

        x = resize_batch(x, cfg.image_size)
    pre = getattr(model, "preprocess", None)
    x = pre.normalize(x) if pre is not None else x.float().div(255.0).sub(0.5).div(0.5)
    param = next(model.parameters(), None)
    return x.to(param.dtype) if param is not None and param.dtype != x.dtype else x


@torch.inference_mode()
def extract_features(model, images_u8, batch_size: int = 256) -> np.ndarray:
    """The frozen pre-logits representation (``forward_pre_logits`` of the final tokens) of every image,
    (N, D) float32. `images_u8` is a uint8 array/tensor (N, C, H, W)."""
    model.eval()
    n = len(images_u8)
    out = []
    for s in range(0, n, batch_size):
        x = model_inputs(model, images_u8[s:s + batch_size])
        out.append(model.forward_pre_logits(model.forward_features(x)).float().cpu().numpy())
    if not out:
        raise UserError("no images to extract features from")
    return np.concatenate(out).astype(np.float32)


def load_split(spec: str, split: str, model=None, data_dir=None, limit: int | None = None, seed: int = 0):
    """Load a dataset split through vitkit.data.datasets (at the model's image size and channels for image folders).
    Returns (images uint8 (N, C, H, W) tensor, labels (N,) int64 numpy, class_names). With `limit`, a fixed random
    subset (seed `seed`) of that many images, in index order; only those are decoded."""
    from ..data.datasets import iterate_batches, load_dataset

    kw = {}
    if model is not None:
        kw = dict(image_size=model.cfg.image_size, channels=model.cfg.in_chans,
                  preprocess=getattr(model, "preprocess", None))  # folders decode exactly as predict does
    ds = load_dataset(spec, split=split, data_dir=data_dir, **kw)
    labels = np.asarray(ds.labels).astype(np.int64)
    if len(labels) == 0:
        raise UserError(f"dataset {spec!r} split {split!r} is empty")
    idx = np.arange(len(labels))
    if limit is not None and limit < len(labels):
        idx = np.sort(np.random.default_rng(seed).choice(len(labels), size=int(limit), replace=False))
    if hasattr(ds, "images"):
        images = ds.images[torch.from_numpy(idx)]
    else:
        images = torch.cat([b for b, _ in iterate_batches(ds, torch.from_numpy(idx), 256)])
    return images, labels[idx], list(getattr(ds, "class_names", None) or [])


def save_features(path, feats: np.ndarray, labels: np.ndarray | None = None, meta: dict | None = None) -> dict:
    """Write F.npy (features), F.labels.npy (labels) and F.json (metadata) for `path` = F.npy."""
    path = Path(path)
    if path.suffix != ".npy":
        path = path.with_name(path.name + ".npy")
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    stem = path.with_suffix("")
    np.save(path, np.asarray(feats, np.float32))
    files = {"features": str(path)}
    if labels is not None:
        np.save(f"{stem}.labels.npy", np.asarray(labels, np.int64))
        files["labels"] = f"{stem}.labels.npy"
    info = {**(meta or {}), "shape": list(np.shape(feats)), "files": files}
    Path(f"{stem}.json").write_text(json.dumps(info, indent=2))
    files["meta"] = f"{stem}.json"
    return files
