"""Official BiT checkpoints (google-research/big_transfer, e.g. BiT-M-R50x1.npz): read, infer the architecture, write.

A BiT .npz is a flat dict of TensorFlow variable names under "resnet/" (the files the official PyTorch and JAX
code load with `load_from` / `tf2jax.transform_params`); there is no config in it, so the architecture is read
off the names and shapes:

    resnet/root_block/standardized_conv2d/kernel (k, k, C, 64 * width)   root: k 7 the standard one, k 3 vitkit's
                                                                         small-image root; C input channels
    resnet/block{s}/unit{uu}/{a,b,c}/...                                 stages and units (1-based, units as 01..)
    resnet/head/conv2d/kernel (1, 1, F, K)                               classes K

Units: a/b/c are the unit's three GN-ReLU-conv steps (vitkit norm1/conv1 .. norm3/conv3), a/proj the projection
shortcut. Tensors outside "resnet/" are not read, as the official loaders do not read them. The resolution is not
in the file: 224 px (the pre-training resolution of the official weights; 32 px for a small-image root) unless
`image_size` says otherwise; a BiT network runs at any resolution, so nothing is resized.

Numerics are the official ones (vitkit/resnet.py); preprocessing is the official code's: resize to the
resolution, pixels to [-1, 1].
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..errors import UserError
from ..resnet import DEPTHS, ROOTS, BiT, BiTConfig, DEFAULT_IMAGE_SIZE
from .keys import _regex as keys_regex
from .npz import _conv, _conv_back, official_preprocess, read_npz, stage_units

PREFIX = "resnet/"
ROOT_KEY = PREFIX + "root_block/standardized_conv2d/kernel"


def _vec(a):
    return a.reshape(-1)


def _same(a):
    return a


def _head(a):  # (1, 1, F, K) 1x1 conv kernel -> (K, F) dense weight
    return a.reshape(a.shape[-2], a.shape[-1]).T


def _head_back(a):
    return a.T[None, None]


# One row per tensor kind: official name (without "resnet/"), vitkit name, to-torch and to-official transforms.
# Placeholders: {s}/{u} 1-based stage/unit (official, units written with two digits), {s0}/{u0} the same 0-based.
_UNIT, _UNITV = "block{s}/unit{u}/", "stages.{s0}.{u0}."
KEY_TABLE: list[tuple[str, str, Callable, Callable]] = [
    ("root_block/standardized_conv2d/kernel", "stem.weight", _conv, _conv_back),
    *[(_UNIT + f"{step}/standardized_conv2d/kernel", _UNITV + f"conv{n}.weight", _conv, _conv_back)
      for n, step in enumerate("abc", 1)],
    *[(_UNIT + f"{step}/group_norm/{tf}", _UNITV + f"norm{n}.{pt}", _vec, _same)
      for n, step in enumerate("abc", 1) for tf, pt in (("gamma", "weight"), ("beta", "bias"))],
    (_UNIT + "a/proj/standardized_conv2d/kernel", _UNITV + "downsample.weight", _conv, _conv_back),
    ("group_norm/gamma", "norm.weight", _vec, _same),  # the pre-head GroupNorm
    ("group_norm/beta", "norm.bias", _vec, _same),
    ("head/conv2d/kernel", "head.weight", _head, _head_back),
    ("head/conv2d/bias", "head.bias", _same, _same),
]
_PLACEHOLDER = {"s": r"\d+", "u": r"\d+", "s0": r"\d+", "u0": r"\d+"}
_FORWARD = [(keys_regex(o, _PLACEHOLDER), v, f) for o, v, f, _ in KEY_TABLE]
_BACKWARD = [(keys_regex(v, _PLACEHOLDER), o, b) for o, v, _, b in KEY_TABLE]


def _fill(template: str, groups: dict) -> str:
    g = dict(groups)
    if "s" in g:  # official -> vitkit
        g.update(s0=int(g["s"]) - 1, u0=int(g["u"]) - 1)
    elif "s0" in g:  # vitkit -> official: stages 1.., units 01..
        g.update(s=int(g["s0"]) + 1, u=f"{int(g['u0']) + 1:02d}")
    return template.format(**g)


def is_bit_npz(path) -> bool:
    """An .npz holding the BiT root kernel (read from the zip directory, no tensor is loaded)."""
    p = Path(path)
    if not (p.is_file() and p.suffix == ".npz"):
        return False
    try:
        with zipfile.ZipFile(p) as z:
            return f"{ROOT_KEY}.npy" in z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


# -- reading ---------------------------------------------------------------------------------------------------
def infer_config(flat: dict[str, np.ndarray], path="checkpoint", image_size: Optional[int] = None,
                 num_classes: Optional[int] = None) -> BiTConfig:
    """The BiTConfig an official BiT parameter dict (names without "resnet/") describes; `num_classes` replaces
    the head's class count (and is required where the file has no head)."""
    root_key = ROOT_KEY[len(PREFIX):]
    if root_key not in flat:
        raise UserError(f"{path}: not a BiT checkpoint: tensor {ROOT_KEY} is missing")
    k, k2, cin, width = flat[root_key].shape if flat[root_key].ndim == 4 else (0, 0, 0, 0)
    root = next((r for r, (rk, _, _) in ROOTS.items() if rk == k == k2), None)
    if root is None:
        raise UserError(f"{path}: {ROOT_KEY} has shape {tuple(flat[root_key].shape)}, expected (7, 7, C, 64*width) "
                        f"(or (3, 3, C, 64*width) for vitkit's small-image root)")
    layers = tuple(stage_units(flat, f"{path}: BiT stages/units"))
    if not layers:
        raise UserError(f"{path}: BiT stages/units {{}} are not numbered block1.. / unit1.. (no residual units)")
    head = flat.get("head/conv2d/kernel")
    if head is None and num_classes is None:
        raise UserError(f"{path}: no classification head (resnet/head/conv2d/kernel); pass --num-classes to add a "
                        f"new one")
    if head is not None and head.ndim != 4:
        raise UserError(f"{path}: resnet/head/conv2d/kernel has shape {tuple(head.shape)}, expected (1, 1, F, K)")
    w = width / 64
    w = int(w) if float(w).is_integer() else w
    depth = 3 * sum(layers) + 2
    name = f"BiT-R{depth}x{w}{'-S' if root == 'small' else ''}"
    if DEPTHS.get(depth) != layers:
        name = f"BiT-{'-'.join(map(str, layers))}x{w}"
    try:
        return BiTConfig(layers=layers, width=w, root=root, image_size=image_size or DEFAULT_IMAGE_SIZE[root],
                         num_classes=int(num_classes or head.shape[-1]), in_chans=int(cin), name=name)
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None


def to_state_dict(flat: dict[str, np.ndarray]) -> tuple[dict, list[str], dict]:
    """official dict (names without "resnet/") -> (vitkit state dict, unexpected official names,
    vitkit name -> official name)."""
    state, unexpected, origin = {}, [], {}
    for k, v in flat.items():
        for rx, template, to_torch in _FORWARD:
            m = rx.match(k)
            if m:
                name = _fill(template, m.groupdict())
                state[name] = torch.from_numpy(np.ascontiguousarray(to_torch(v)))
                origin[name] = PREFIX + k
                break
        else:
            unexpected.append(PREFIX + k)
    return state, unexpected, origin


def from_state_dict(state: dict, names_only: bool = False) -> dict[str, np.ndarray]:
    """vitkit BiT state dict -> official dict with the "resnet/" names, float32 numpy arrays
    (with names_only: the names, values None)."""
    out = {}
    for name, t in state.items():
        for rx, template, back in _BACKWARD:
            m = rx.match(name)
            if m:
                out[PREFIX + _fill(template, m.groupdict())] = None if names_only else \
                    np.ascontiguousarray(back(t.detach().cpu().float().numpy()))
                break
        else:
            raise UserError(f"tensor {name} has no official BiT .npz equivalent")
    return out


def load_bit_npz(path: Path, image_size: Optional[int] = None, num_classes: Optional[int] = None,
                 dtype: Optional[torch.dtype] = None, **_):
    """Official BiT .npz -> (BiT, Preprocess, None). `num_classes` different from the file's (or a file without a
    head) gives a new zero-initialised head, as the official fine-tuning does (`zero_head=True`). `dtype`: the
    model's dtype (default float32, float64 for a float64 file)."""
    path = Path(path)
    raw = read_npz(path)
    flat = {k[len(PREFIX):]: v for k, v in raw.items() if k.startswith(PREFIX)}
    cfg = infer_config(flat, path, image_size, num_classes)
    head = flat.get("head/conv2d/kernel")
    if head is None or head.shape[-1] != cfg.num_classes:  # a new zero head for the new classes
        flat["head/conv2d/kernel"] = np.zeros((1, 1, cfg.num_features, cfg.num_classes), np.float32)
        flat["head/conv2d/bias"] = np.zeros((cfg.num_classes,), np.float32)
    state, unexpected, origin = to_state_dict(flat)
    with torch.device("meta"):  # no random init of weights that are replaced anyway
        model = BiT(cfg)
    own = model.state_dict()
    missing = sorted(set(from_state_dict(own, names_only=True)) - {origin[k] for k in state})
    if unexpected or missing:
        raise UserError(f"{path}: tensors do not fit the architecture the checkpoint describes ({cfg.name}): "
                        f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}, unexpected "
                        f"{sorted(unexpected)[:8]}{' ...' if len(unexpected) > 8 else ''}")
    for k, v in state.items():
        if tuple(own[k].shape) != tuple(v.shape):
            raise UserError(f"{path}: tensor {origin[k]} has shape {tuple(raw.get(origin[k], v).shape)} which does "
                            f"not fit the architecture the other tensors describe ({cfg.name}: {k} must be "
                            f"{tuple(own[k].shape)})")
    if dtype is None and all(v.dtype == np.float64 for v in flat.values() if v.dtype.kind == "f"):
        dtype = torch.float64
    model.load_state_dict({k: v.to(dtype or torch.float32) for k, v in state.items()}, assign=True)
    return model, official_preprocess(cfg.image_size, cfg.in_chans), None


def save_bit_npz(model, path) -> Path:
    """Write a BiT `model` as an official-format .npz (float32), atomically."""
    from ..runtime import as_loaded, unwrap

    inner = unwrap(as_loaded(model).model)
    flat = from_state_dict(inner.state_dict())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, **flat)
    tmp.replace(path)
    return path
