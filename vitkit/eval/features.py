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
from ..flags import write_atomic
from ..runtime import as_loaded, to_model_input, unwrap
from ..runtime import load_split as runtime_load_split


def model_inputs(model, images_u8) -> torch.Tensor:
    """uint8 (N, C, H, W) -> the normalised float batch `model` (a LoadedModel or a bare ViT) expects, on its
    parameters' device and in their dtype."""
    loaded = as_loaded(model)
    param = next(loaded.model.parameters(), None)
    kw = dict(device=param.device, dtype=param.dtype) if param is not None else {}
    return to_model_input(images_u8, loaded.preprocess, **kw)


@torch.inference_mode()
def extract_features(model, images_u8, batch_size: int = 256) -> np.ndarray:
    """The frozen pre-logits representation (``forward_pre_logits`` of the final tokens) of every image,
    (N, D) float32. `model`: a LoadedModel or a bare ViT; `images_u8` a uint8 array/tensor (N, C, H, W)."""
    net = unwrap(as_loaded(model).model)
    net.eval()
    n = len(images_u8)
    out = []
    for s in range(0, n, batch_size):
        x = model_inputs(model, images_u8[s:s + batch_size])
        out.append(net.forward_pre_logits(net.forward_features(x)).float().cpu().numpy())
    if not out:
        raise UserError("no images to extract features from")
    return np.concatenate(out).astype(np.float32)


def load_split(spec: str, split: str, model=None, data_dir=None, limit: int | None = None, seed: int = 0):
    """vitkit.runtime.load_split at `model`'s preprocessing (its image size and channels)."""
    pre = None if model is None else as_loaded(model).preprocess
    return runtime_load_split(spec, split, pre, data_dir, limit, seed)


def features_path(path) -> Path:
    """The .npy file save_features writes for `path` (F -> F.npy)."""
    path = Path(path).expanduser()
    return path if path.suffix == ".npy" else path.with_name(path.name + ".npy")


def save_features(path, feats: np.ndarray, labels: np.ndarray | None = None, meta: dict | None = None) -> dict:
    """Write F.npy (features), F.labels.npy (labels) and F.json (metadata) for `path` = F.npy, each atomically
    (vitkit.flags.write_atomic)."""
    path = features_path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    stem = path.with_suffix("")
    write_atomic(path, lambda f: np.save(f, np.asarray(feats, np.float32)))
    files = {"features": str(path)}
    if labels is not None:
        write_atomic(f"{stem}.labels.npy", lambda f: np.save(f, np.asarray(labels, np.int64)))
        files["labels"] = f"{stem}.labels.npy"
    info = {**(meta or {}), "shape": list(np.shape(feats)), "files": files}
    write_atomic(f"{stem}.json", lambda f: f.write(json.dumps(info, indent=2).encode()))
    files["meta"] = f"{stem}.json"
    return files
