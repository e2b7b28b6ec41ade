"""The native checkpoint directory, and `load()` for every format vitkit reads.

A native checkpoint is a directory:
    model.safetensors   the weights (safetensors: no pickle)
    config.json         {"format": "vitkit", "model": ViTConfig or BiTConfig ("family": "bit"), "preprocess": ...,
                         "class_names": [...]}
    train_state.pt      optional: optimizer, schedule, step, RNG, data position; read with weights_only=True

Writes are atomic: everything goes to a temporary sibling directory, which is renamed into place; the previous
checkpoint is moved aside first and removed only after the new one is in place, and `load` falls back to it if a
crash happened in between. Nothing the user had is lost.

Other formats are recognised by `FORMATS`, a table of (name, detector, reader module): official .npz (ViT, and BiT
in vitkit/checkpoint/bit_npz.py), Hugging Face folders and timm state dicts (vitkit/checkpoint/{npz,hf,timm_sd}.py).
"""

from __future__ import annotations

import glob
import importlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import torch
try:  # the exception class moved between safetensors releases
    from safetensors import SafetensorError as SafetensorsError
except ImportError:  # pragma: no cover
    SafetensorsError = Exception
from safetensors.torch import load_file, save_file

from ..data.preprocess import Preprocess
from ..errors import UserError
from ..runtime import LoadedModel, as_loaded, unwrap
from .hub import resolve

CONFIG, WEIGHTS, TRAIN_STATE = "config.json", "model.safetensors", "train_state.pt"
FORMAT_VERSION = 1
STALE_SECONDS = 60  # a temporary directory untouched this long belongs to a save that was killed


def clean_state_dict(state: dict) -> dict:
    """Detached contiguous CPU tensors, without the `_orig_mod.` / `module.` prefixes that compile and DDP add."""
    out = {}
    for k, v in state.items():
        for p in ("_orig_mod.", "module."):
            k = k.replace(p, "")
        out[k] = v.detach().to("cpu").contiguous()
    return out


def _remove_stale_temporaries(path: Path) -> None:
    """Remove the `.NAME.tmp-*` siblings that saves killed mid-write left behind: those older than this save and
    untouched for a minute (a save of the same path running right now in another process keeps writing its own)."""
    now = time.time()
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        try:
            if tmp.is_dir() and now - tmp.stat().st_mtime > STALE_SECONDS:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def _write_dir_atomically(path: Path, write: Callable[[Path], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(path.parent, os.W_OK):
        raise UserError(f"output directory {path.parent} is not writable")
    _remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        write(tmp)
        for f in tmp.iterdir():  # data on disk before the rename makes it visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = path.with_name(f".{path.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_checkpoint(path, model, preprocess: Optional[Preprocess] = None, class_names=None,
                    train_state: Optional[dict] = None, extra: Optional[dict] = None) -> Path:
    """Write a native checkpoint directory atomically. `model`: a LoadedModel (its preprocess and class names are
    saved unless given here) or a ViT, which may be wrapped by DDP or torch.compile."""
    loaded = as_loaded(model, preprocess, class_names)
    inner = unwrap(loaded.model)
    meta = {"format": "vitkit", "version": FORMAT_VERSION, "model": inner.cfg.to_dict(),
            "preprocess": loaded.preprocess.to_dict(), "class_names": loaded.class_names, **(extra or {})}

    def write(tmp: Path):
        save_file(clean_state_dict(inner.state_dict()), str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2))
        if train_state is not None:
            torch.save(train_state, tmp / TRAIN_STATE)

    _write_dir_atomically(Path(path), write)
    return Path(path)


def _existing(path: Path) -> Path:
    """The checkpoint dir, or the previous one if a crash left only that (see _write_dir_atomically)."""
    if not path.exists():
        old = path.with_name(f".{path.name}.old")
        if old.exists():
            return old
    return path


def read_config(path) -> dict:
    path = _existing(Path(path))
    try:
        return json.loads((path / CONFIG).read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is not a vitkit checkpoint: {CONFIG} is missing") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path / CONFIG} is not valid JSON ({e})") from None


def load_train_state(path) -> Optional[dict]:
    f = _existing(Path(path)) / TRAIN_STATE
    if not f.exists():
        return None
    return torch.load(f, map_location="cpu", weights_only=True)


def check_finite(state: dict, source: str = "checkpoint") -> None:
    """A UserError naming the first tensor with a NaN or an infinity: such weights are never trusted."""
    for k, v in state.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise UserError(f"{source}: tensor {k} has non-finite values (NaN or inf); refusing to load it")


def load_state_dict_strict(model, state: dict, source: str = "checkpoint") -> None:
    """Load `state` into `model`, naming every missing/unexpected tensor and any shape mismatch with both shapes."""
    own = model.state_dict()
    for k, v in state.items():
        if k in own and tuple(own[k].shape) != tuple(v.shape):
            raise UserError(f"{source}: tensor {k} has shape {tuple(v.shape)} but the architecture needs "
                            f"{tuple(own[k].shape)}")
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise UserError(f"{source}: tensors do not fit the architecture: missing {missing[:8]}"
                        f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
                        f"{' ...' if len(unexpected) > 8 else ''}")
    check_finite(state, source)
    model.load_state_dict(state)


def _load_native(path: Path, **_):
    from ..model import config_from_dict, model_from_config

    path = _existing(path)
    meta = read_config(path)
    try:
        cfg = config_from_dict(meta["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path / CONFIG}: invalid model config ({e})") from None
    try:
        state = load_file(str(path / WEIGHTS))
    except FileNotFoundError:
        raise UserError(f"{path} has no {WEIGHTS}") from None
    except (SafetensorsError, OSError) as e:
        raise UserError(f"{path / WEIGHTS} is not a readable safetensors file ({e})") from None
    model = model_from_config(cfg)
    if state and all(v.dtype == torch.float64 for v in state.values() if v.is_floating_point()):
        model = model.double()  # a float64 checkpoint (e.g. converted for a 1e-9 reference check) stays float64
    load_state_dict_strict(model, state, str(path / WEIGHTS))
    try:
        pre = Preprocess.from_dict(meta["preprocess"]) if "preprocess" in meta else None
    except (TypeError, ValueError) as e:
        raise UserError(f"{path / CONFIG}: invalid preprocess ({e})") from None
    return model, pre, meta.get("class_names")


def _folder_config(p: Path) -> Optional[dict]:
    """The config.json of a checkpoint folder, None if there is none; a UserError saying why if it is broken."""
    if not (p.is_dir() and (p / CONFIG).exists()):
        return None
    try:
        meta = json.loads((p / CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{p / CONFIG} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except OSError as e:
        raise UserError(f"{p / CONFIG} cannot be read ({e.strerror or e})") from None
    if not isinstance(meta, dict):
        raise UserError(f"{p / CONFIG} holds a JSON {type(meta).__name__}, not an object")
    return meta


def _is_native(p: Path) -> bool:
    meta = _folder_config(_existing(p))
    return meta is not None and meta.get("format") == "vitkit"


def _is_bit_npz(p: Path) -> bool:
    from .bit_npz import is_bit_npz

    return is_bit_npz(p)


def _is_hf(p: Path) -> bool:
    meta = _folder_config(p)
    return meta is not None and meta.get("model_type") == "vit"


# name, detector, "module:function" returning (model, preprocess, class_names). First match wins.
FORMATS: list[tuple[str, Callable[[Path], bool], str]] = [
    ("vitkit", _is_native, "vitkit.checkpoint.io:_load_native"),
    ("huggingface", _is_hf, "vitkit.checkpoint.hf:load_hf"),
    ("official-bit-npz", _is_bit_npz, "vitkit.checkpoint.bit_npz:load_bit_npz"),  # before the ViT .npz row
    ("official-npz", lambda p: p.is_file() and p.suffix == ".npz", "vitkit.checkpoint.npz:load_npz"),
    ("timm", lambda p: p.is_file() and p.suffix in (".safetensors", ".pth", ".pt", ".bin"),
     "vitkit.checkpoint.timm_sd:load_timm"),
]


def detect_format(path) -> str:
    p = resolve(path)
    if not p.exists() and not _existing(p).exists():
        raise UserError(f"checkpoint {path} does not exist")
    for name, detect, _ in FORMATS:
        if detect(p):
            return name
    meta = _folder_config(p)
    if meta is not None:
        raise UserError(f"{p / CONFIG} has neither \"format\": \"vitkit\" nor \"model_type\": \"vit\" "
                        f"(format {meta.get('format')!r}, model_type {meta.get('model_type')!r}): not a checkpoint "
                        f"vitkit reads")
    raise UserError(f"{path} is not a checkpoint vitkit reads (expected a vitkit checkpoint directory, a Hugging "
                    f"Face ViT folder, an official .npz, or a timm .safetensors/.pth state dict)")


def load(path, device="cpu", **kwargs) -> LoadedModel:
    """Load any checkpoint vitkit reads: a LoadedModel (vitkit.runtime) holding the model (eval mode, on `device`),
    its preprocessing (PIL -> tensor), its class names and the format it came from; `load(path)(x)` runs the model.
    kwargs go to the format's reader (e.g. image_size=384). `path` may also be a pre-trained name or an
    http(s) URL (vitkit/checkpoint/hub.py)."""
    path = resolve(path)
    fmt = detect_format(path)
    target = dict((n, t) for n, _, t in FORMATS)[fmt]
    mod, fn = target.split(":")
    model, pre, class_names = getattr(importlib.import_module(mod), fn)(Path(path), **kwargs)
    check_finite(model.state_dict(), str(path))  # every reader, whichever way it filled the model
    k = model.cfg.num_classes
    if class_names and len(class_names) != k:
        raise UserError(f"{path}: {len(class_names)} class names for a head of {k} classes (the checkpoint's "
                        f"class_names must name every output)")
    return as_loaded(model.to(device).eval(), pre, class_names or None, fmt)
