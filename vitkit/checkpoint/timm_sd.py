"""timm VisionTransformer state dicts (.safetensors, or a weights-only .pth/.pt/.bin): read and write.

vitkit's parameter names are timm's (patch_embed.proj, cls_token, pos_embed, blocks.N.{norm1,attn.qkv,attn.proj,
norm2,mlp.fc1,mlp.fc2}, norm, head), so the table is nearly the identity; the hybrid ResNet lives under
patch_embed.backbone in timm and under stem in vitkit, and old timm files hold the representation layer as
pre_logits.fc.

A timm state dict has no config. The architecture comes from the shapes (width, depth, MLP width, patch size,
grid, classes, [class] token or not, hybrid layout) except the head count, which no tensor shape holds: it is taken
from the safetensors metadata vitkit writes ("vitkit_config"), else the `num_heads` argument, else the paper's
count for that width (192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16), else width / 64.

Numerics: timm computes exact GELU and LayerNorm eps 1e-6, so a timm file becomes a vitkit model with
gelu_approximate "none" (unless the vitkit metadata says otherwise). timm's GAP models apply the final LayerNorm
*after* pooling (fc_norm), which vitkit does not model (the official GAP normalises tokens, then pools): such
files are refused by name. timm's hybrids standardise conv weights with eps 1e-8 inside the square root and use
GroupNorm eps 1e-5, where the official code adds 1e-5 to the std and uses 1e-6: a timm hybrid keeps timm's
constants (resnet layout "norm": "timm"), an official one written as timm keeps the official ones (metadata).

.pth files are read with torch.load(weights_only=True) only: a file that needs arbitrary unpickling is refused.
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
from pathlib import Path
from typing import Optional

import torch

from ..config import SIZES, ViTConfig, resnet_stride
from ..errors import UserError
from ..runtime import as_loaded, unwrap
from .keys import block_indices, compile_table, rename

TABLE = compile_table([
    ("patch_embed.backbone.{rest}", "stem.{rest}"),  # hybrid ResNet (placeholder below matches any suffix)
    ("pre_logits.fc.weight", "pre_logits.weight"),
    ("pre_logits.fc.bias", "pre_logits.bias"),
])
# `rest` is a free suffix, not a number: patch the compiled rows
TABLE = [(re.compile(a.pattern.replace(r"(?P<rest>\d+)", r"(?P<rest>.+)")), b,
          re.compile(c.pattern.replace(r"(?P<rest>\d+)", r"(?P<rest>.+)")), d) for a, b, c, d in TABLE]
IDENTITY = compile_table([(n, n) for n in (
    "cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias",
    "head.weight", "head.bias")] + [(f"blocks.{{i}}.{n}", f"blocks.{{i}}.{n}") for n in (
        "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
        "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")])
FULL = TABLE + IDENTITY
HEADS_BY_WIDTH = {v["hidden_size"]: v["num_heads"] for k, v in SIZES.items() if k not in ("testing", "Mini")}
_WRAPPERS = ("state_dict", "model", "model_state_dict", "module")


def load_weights_only(path: Path) -> dict:
    """torch.load(weights_only=True); anything that needs arbitrary unpickling is refused in one line."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        what = re.search(r"Unsupported (?:global|operand)[^.\n]*", str(e))
        raise UserError(f"{path} needs arbitrary unpickling to load (a pickle of Python objects, not a weights-only "
                        f"state dict), which vitkit refuses to do" + (f" ({what.group(0)})" if what else "")) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} is not a readable PyTorch state dict (truncated or corrupt: {first})") from None
    for w in _WRAPPERS:  # {"state_dict": {...}} / {"model": {...}} checkpoints
        if isinstance(obj, dict) and isinstance(obj.get(w), dict):
            obj = obj[w]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} is not a state dict of tensors")
    return {k: v for k, v in obj.items()}


def read_state(path: Path) -> tuple[dict, dict]:
    """(tensors, safetensors metadata or {})."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        from .io import SafetensorsError

        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                return {k: f.get_tensor(k) for k in f.keys()}, meta
        except (SafetensorsError, OSError, ValueError, RuntimeError) as e:
            raise UserError(f"{path} is not a readable safetensors file (truncated or corrupt: {e})") from None
    return load_weights_only(path), {}


def infer_config(state: dict, path, num_heads: Optional[int] = None) -> ViTConfig:
    def shape(k):
        if k not in state:
            raise UserError(f"{path}: the shapes do not describe a timm VisionTransformer: {k} is missing")
        return tuple(state[k].shape)

    if "fc_norm.weight" in state:
        raise UserError(f"{path}: fc_norm (LayerNorm after global average pooling, timm's GAP head) is not "
                        f"supported; vitkit's GAP normalises tokens before pooling as the official code")
    D, cin, P, P2 = shape("patch_embed.proj.weight")
    depth = len(block_indices(state, r"blocks\.(\d+)\."))
    if depth == 0 or P != P2:
        raise UserError(f"{path}: the shapes do not describe a timm VisionTransformer (no blocks.N.* tensors or "
                        f"non-square patches)")
    mlp = shape("blocks.0.mlp.fc1.weight")[0]
    token = "cls_token" in state
    heads = num_heads or HEADS_BY_WIDTH.get(D) or max(D // 64, 1)
    resnet, stride = None, P
    if "stem.stem.conv.weight" in state:
        stages = block_indices(state, r"stem\.stages\.(\d+)\.")
        layers = [len(block_indices(state, rf"stem\.stages\.{s}\.blocks\.(\d+)\.")) for s in stages]
        width = state["stem.stem.conv.weight"].shape[0] / 64
        resnet = {"layers": layers, "width": int(width) if width.is_integer() else width, "norm": "timm"}
        stride = P * resnet_stride(resnet)
        cin = state["stem.stem.conv.weight"].shape[1]
    T = shape("pos_embed")[1] - int(token)
    grid = int(round(T**0.5))
    if grid * grid != T:
        raise UserError(f"{path}: pos_embed has {T} patch rows, not a square grid")
    rep = shape("pre_logits.weight")[0] if "pre_logits.weight" in state else None
    try:
        return ViTConfig(image_size=grid * stride, patch_size=P, hidden_size=D, depth=depth, num_heads=heads,
                         mlp_dim=mlp, num_classes=shape("head.weight")[0], in_chans=cin,
                         classifier="token" if token else "gap", representation_size=rep,
                         qkv_bias="blocks.0.attn.qkv.bias" in state, layer_norm_eps=1e-6, gelu_approximate="none",
                         resnet=resnet, name=f"timm:{Path(path).stem}")
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None


def load_timm(path: Path, num_classes: Optional[int] = None, image_size: Optional[int] = None,
              num_heads: Optional[int] = None, **_):
    from ..model import ViT
    from .io import load_state_dict_strict
    from .surgery import reset_head, resize_model

    path = Path(path)
    raw, meta = read_state(path)
    raw = {k.replace("_orig_mod.", "").removeprefix("module."): v for k, v in raw.items()}
    state, unexpected = rename(raw, FULL)
    if unexpected:
        raise UserError(f"{path}: tensors with no place in a vitkit ViT: {sorted(unexpected)[:8]}")
    if "vitkit_config" in meta:
        cfg = ViTConfig.from_dict(json.loads(meta["vitkit_config"]))
    else:
        cfg = infer_config(state, path, num_heads)
    model = ViT(cfg)
    load_state_dict_strict(model, {k: v.float() for k, v in state.items()}, f"{path} (timm)")
    if num_classes is not None and num_classes != cfg.num_classes:
        model = reset_head(model, num_classes)
    if image_size is not None and image_size != cfg.image_size:
        model = resize_model(model, image_size)
    names = json.loads(meta["class_names"]) if "class_names" in meta and model.cfg.num_classes == cfg.num_classes \
        else None
    pre = None
    if "preprocess" in meta:
        from ..data.preprocess import Preprocess

        pre = Preprocess.from_dict({**json.loads(meta["preprocess"]), "image_size": model.cfg.image_size})
    return model, pre, names


def save_timm(model, out) -> Path:
    """Write timm VisionTransformer keys: .safetensors (with vitkit's config in the metadata) or a .pth state dict."""
    from safetensors.torch import save_file

    from .io import clean_state_dict

    loaded = as_loaded(model)
    inner = unwrap(loaded.model)
    if inner.cfg.pos_embed != "learned":
        raise UserError(f"timm VisionTransformer has no {inner.cfg.pos_embed!r} position embeddings")
    state, unmatched = rename(clean_state_dict(inner.state_dict()), FULL, reverse=True)
    if unmatched:
        raise UserError(f"tensors with no timm equivalent: {unmatched[:8]}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    if out.suffix == ".safetensors":
        meta = {"format": "pt", "vitkit_config": json.dumps(inner.cfg.to_dict()),
                "class_names": json.dumps(loaded.class_names), "preprocess": json.dumps(loaded.preprocess.to_dict())}
        save_file(state, str(tmp), metadata=meta)
    else:
        torch.save(state, tmp)
    tmp.replace(out)
    return out
