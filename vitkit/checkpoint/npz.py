"""Official google-research/vision_transformer checkpoints (.npz): read, infer the architecture, write.

An official checkpoint is a flat .npz of the flax parameter tree with "/"-joined names. There is no config in
it, so everything is read off tensor names and shapes:

    embedding/kernel (P, P, C, D)        patch size P, input channels C (ResNet channels for a hybrid), width D
    cls (1, 1, D)                         present: classifier "token"; absent: "gap" (mean of the normed tokens)
    Transformer/posembed_input/pos_embedding (1, T, D)    grid = sqrt(T - has_cls), so image = grid * stride
    Transformer/encoderblock_{i}/...      depth; MultiHeadDotProductAttention query kernel (D, heads, D/heads)
                                          gives the head count; MlpBlock Dense_0 kernel (D, M) the MLP width
    pre_logits/kernel (D, R)              representation layer (Dense + tanh) of the pre-training head
    head/kernel (D or R, K)               classes
    conv_root, gn_root, block{s}/unit{u}/{conv,gn}{1,2,3,_proj}   hybrid: stages and units from the names,
                                          width factor from conv_root's output channels / 64

Two key layouts exist: the original (pre-Linen) one numbers the sub-modules of an encoder block with one counter
(LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3) and stores GroupNorm scale/bias as
(1, 1, 1, C); current files number per type (LayerNorm_0, MultiHeadDotProductAttention_0, LayerNorm_1,
MlpBlock_0) with 1-D GroupNorm parameters. Both are first renamed to the current ("canonical") layout; then one
key table maps canonical names to vitkit parameter names, with a layout transform per row. The written format
is the canonical (current) layout.

Numerics of the converted model are the official ones: LayerNorm eps 1e-6, tanh-approximated GELU, weight
standardisation eps 1e-5 and GroupNorm eps 1e-6 in the ResNet (vitkit/hybrid.py). Preprocessing: pixels to
[-1, 1] at the checkpoint's resolution, bilinear resize.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..config import SIZES, ViTConfig, check_layout, hybrid_variants, resnet_stride
from ..data.preprocess import Preprocess
from ..errors import UserError
from ..runtime import LoadedModel, unwrap
from .keys import _regex as keys_regex
from .surgery import resize_pos_embed

PREPROCESS_MEAN = PREPROCESS_STD = (0.5, 0.5, 0.5)


# -- tensor layout transforms: official (flax) array <-> torch tensor --------------------------------------------
def _dense(a, heads=None):  # (in, out) -> (out, in)
    return a.T


def _conv(a, heads=None):  # HWIO -> OIHW
    return a.transpose(3, 2, 0, 1)


def _conv_back(a, heads=None):
    return a.transpose(2, 3, 1, 0)


def _same(a, heads=None):
    return a


def _heads_in(a, heads=None):  # q/k/v kernel (D, heads, hd) -> (heads*hd, D); bias (heads, hd) -> (heads*hd,)
    return a.reshape(a.shape[0], -1).T if a.ndim == 3 else a.reshape(-1)


def _heads_out(a, heads=None):  # out kernel (heads, hd, D) -> (D, heads*hd)
    return a.reshape(-1, a.shape[-1]).T


def _vec(a, heads=None):
    return a.reshape(-1)


def _heads_in_back(a, heads):  # (heads*hd, D) -> (D, heads, hd); (heads*hd,) -> (heads, hd)
    return a.T.reshape(a.shape[1], heads, -1) if a.ndim == 2 else a.reshape(heads, -1)


def _heads_out_back(a, heads):  # (D, heads*hd) -> (heads, hd, D)
    return a.T.reshape(heads, -1, a.shape[0])


# One row per tensor kind: canonical official name, vitkit name, to-torch transform, to-official transform.
# Placeholders: {i} encoder block, {s}/{u} 1-based ResNet stage/unit (official) and {s0}/{u0} the same 0-based
# (vitkit), {n} conv/norm number, {p} query/key/value. q, k and v are separate in flax and one fused (3D, D)
# matrix in vitkit: they map to per-part names here, joined/split by to_state_dict/from_state_dict.
_ENC, _ENCV = "Transformer/encoderblock_{i}/", "blocks.{i}."
_RES, _RESV = "block{s}/unit{u}/", "stem.stages.{s0}.blocks.{u0}."
KEY_TABLE: list[tuple[str, str, Callable, Callable]] = [
    ("embedding/kernel", "patch_embed.proj.weight", _conv, _conv_back),
    ("embedding/bias", "patch_embed.proj.bias", _same, _same),
    ("cls", "cls_token", _same, _same),
    ("Transformer/posembed_input/pos_embedding", "pos_embed", _same, _same),
    ("Transformer/encoder_norm/scale", "norm.weight", _same, _same),
    ("Transformer/encoder_norm/bias", "norm.bias", _same, _same),
    (_ENC + "LayerNorm_0/scale", _ENCV + "norm1.weight", _same, _same),
    (_ENC + "LayerNorm_0/bias", _ENCV + "norm1.bias", _same, _same),
    (_ENC + "LayerNorm_1/scale", _ENCV + "norm2.weight", _same, _same),
    (_ENC + "LayerNorm_1/bias", _ENCV + "norm2.bias", _same, _same),
    (_ENC + "MultiHeadDotProductAttention_0/{p}/kernel", _ENCV + "attn.{p}.weight", _heads_in, _heads_in_back),
    (_ENC + "MultiHeadDotProductAttention_0/{p}/bias", _ENCV + "attn.{p}.bias", _heads_in, _heads_in_back),
    (_ENC + "MultiHeadDotProductAttention_0/out/kernel", _ENCV + "attn.proj.weight", _heads_out, _heads_out_back),
    (_ENC + "MultiHeadDotProductAttention_0/out/bias", _ENCV + "attn.proj.bias", _same, _same),
    (_ENC + "MlpBlock_0/Dense_0/kernel", _ENCV + "mlp.fc1.weight", _dense, _dense),
    (_ENC + "MlpBlock_0/Dense_0/bias", _ENCV + "mlp.fc1.bias", _same, _same),
    (_ENC + "MlpBlock_0/Dense_1/kernel", _ENCV + "mlp.fc2.weight", _dense, _dense),
    (_ENC + "MlpBlock_0/Dense_1/bias", _ENCV + "mlp.fc2.bias", _same, _same),
    ("pre_logits/kernel", "pre_logits.weight", _dense, _dense),
    ("pre_logits/bias", "pre_logits.bias", _same, _same),
    ("head/kernel", "head.weight", _dense, _dense),
    ("head/bias", "head.bias", _same, _same),
    ("conv_root/kernel", "stem.stem.conv.weight", _conv, _conv_back),
    ("gn_root/scale", "stem.stem.norm.weight", _vec, _same),
    ("gn_root/bias", "stem.stem.norm.bias", _vec, _same),
    (_RES + "conv{n}/kernel", _RESV + "conv{n}.weight", _conv, _conv_back),
    (_RES + "gn{n}/scale", _RESV + "norm{n}.weight", _vec, _same),
    (_RES + "gn{n}/bias", _RESV + "norm{n}.bias", _vec, _same),
    (_RES + "conv_proj/kernel", _RESV + "downsample.conv.weight", _conv, _conv_back),
    (_RES + "gn_proj/scale", _RESV + "downsample.norm.weight", _vec, _same),
    (_RES + "gn_proj/bias", _RESV + "downsample.norm.bias", _vec, _same),
]
_QKV = ("query", "key", "value")
_PLACEHOLDER = {"i": r"\d+", "s": r"\d+", "u": r"\d+", "s0": r"\d+", "u0": r"\d+", "n": "[123]",
                "p": "query|key|value"}


def _regex(template: str) -> re.Pattern:
    return keys_regex(template, _PLACEHOLDER)


def _fill(template: str, groups: dict) -> str:
    g = dict(groups)
    for one, zero in (("s", "s0"), ("u", "u0")):  # 1-based official <-> 0-based vitkit numbering
        if one in g:
            g[zero] = str(int(g[one]) - 1)
        elif zero in g:
            g[one] = str(int(g[zero]) + 1)
    return template.format(**g)


_FORWARD = [(_regex(o), v, f) for o, v, f, _ in KEY_TABLE]  # official -> vitkit
_BACKWARD = [(_regex(v), o, b) for o, v, _, b in KEY_TABLE]  # vitkit -> official


# -- reading ---------------------------------------------------------------------------------------------------
def read_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an .npz, read eagerly; a UserError (one line) if it is not a readable numeric npz."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if not isinstance(f, np.lib.npyio.NpzFile):
                raise UserError(f"{path} is not an .npz archive (a plain .npy array)")
            flat = {k: f[k] for k in f.files}
    except UserError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, zipfile.LargeZipFile) as e:
        raise UserError(f"{path} is not a readable .npz checkpoint (truncated or not a zip archive: {e})") from None
    except ValueError as e:  # pickled object arrays, corrupt array headers
        raise UserError(f"{path} is not a readable .npz checkpoint ({e})") from None
    except Exception as e:  # zlib errors, CRC mismatches of a truncated member, ...
        raise UserError(f"{path} is not a readable .npz checkpoint ({type(e).__name__}: {e})") from None
    if not flat:
        raise UserError(f"{path} is an empty .npz: no tensors")
    for k, v in flat.items():
        if isinstance(v, np.ndarray) and v.dtype == np.dtype("V2"):  # bfloat16 (ml_dtypes) saved as raw 2 bytes
            v = flat[k] = (v.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        if not isinstance(v, np.ndarray) or v.dtype.kind not in "fiu":
            raise UserError(f"{path}: member {k} is not a numeric array ({getattr(v, 'dtype', type(v).__name__)})")
    return flat


_BLOCK_SUB = re.compile(
    r"^(Transformer/encoderblock_\d+/)(LayerNorm|MultiHeadDotProductAttention|MlpBlock)_(\d+)/(.*)$")


def canonicalize(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename both official key layouts to the current one and make GroupNorm scale/bias 1-D.

    Within an encoder block the sub-modules are renumbered by rank per type, so the pre-Linen names
    (LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3) become LayerNorm_0,
    MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0, and current names stay as they are. A leading
    "params/" (flax variable collection) or "opt/target/" (the parameters inside an old flax optimizer checkpoint;
    its optimizer state opt/state/... is then left out) is dropped."""
    for prefix in ("opt/target/", "params/"):
        if f"{prefix}embedding/kernel" in flat:
            flat = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
            break
    indices: dict[tuple[str, str], set] = {}
    for k in flat:
        m = _BLOCK_SUB.match(k)
        if m:
            indices.setdefault((m.group(1), m.group(2)), set()).add(int(m.group(3)))
    rank = {key: {n: r for r, n in enumerate(sorted(ns))} for key, ns in indices.items()}
    out = {}
    for k, v in flat.items():
        m = _BLOCK_SUB.match(k)
        if m:
            k = f"{m.group(1)}{m.group(2)}_{rank[(m.group(1), m.group(2))][int(m.group(3))]}/{m.group(4)}"
        if re.search(r"(^|/)gn(\d+|_root|_proj)/(scale|bias)$", k):
            v = v.reshape(-1)
        out[k] = v
    return out


def _shape(flat, key, ndim, path) -> tuple:
    if key not in flat:
        raise UserError(f"{path}: the shapes do not describe a ViT: tensor {key} is missing")
    s = tuple(flat[key].shape)
    if len(s) != ndim:
        raise UserError(f"{path}: the shapes do not describe a ViT: {key} has shape {s}, expected {ndim} dims")
    return s


def infer_config(flat: dict[str, np.ndarray], path="checkpoint", image_size: Optional[int] = None) -> ViTConfig:
    """The ViTConfig a canonical official parameter dict describes (no config file needed)."""
    P, P2, cin, D = _shape(flat, "embedding/kernel", 4, path)
    if P != P2:
        raise UserError(f"{path}: the shapes do not describe a ViT: non-square patches {P}x{P2} in embedding/kernel")
    blocks = sorted({int(m.group(1)) for k in flat if (m := re.match(r"Transformer/encoderblock_(\d+)/", k))})
    if not blocks:
        raise UserError(f"{path}: the shapes do not describe a ViT: no Transformer/encoderblock_* tensors")
    if blocks != list(range(len(blocks))):
        raise UserError(f"{path}: the shapes do not describe a ViT: encoder blocks {blocks} are not numbered 0..n-1")
    b0 = "Transformer/encoderblock_0/"
    q = _shape(flat, b0 + "MultiHeadDotProductAttention_0/query/kernel", 3, path)
    if q[0] != D or q[1] * q[2] != D:
        raise UserError(f"{path}: the shapes do not describe a ViT: query kernel {q} does not fit width {D}")
    mlp = _shape(flat, b0 + "MlpBlock_0/Dense_0/kernel", 2, path)[1]
    token = "cls" in flat
    resnet, stride = None, P
    if "conv_root/kernel" in flat:
        resnet = _infer_resnet(flat, path)
        stride = P * resnet_stride(resnet)
        cin_img = flat["conv_root/kernel"].shape[2]
    else:
        cin_img = cin
    pos_embed, grid = "none", None
    pe_key = "Transformer/posembed_input/pos_embedding"
    if pe_key in flat:
        pos_embed = "learned"
        T = _shape(flat, pe_key, 3, path)[1] - int(token)
        grid = int(round(T**0.5))
        if grid * grid != T or T <= 0:
            raise UserError(f"{path}: the shapes do not describe a ViT: {pe_key} has {T} patch rows, not a square "
                            f"grid")
    rep = flat["pre_logits/kernel"].shape[1] if "pre_logits/kernel" in flat else None
    if "head/kernel" not in flat:
        raise UserError(f"{path}: no classification head (head/kernel); pass --num-classes to add a new one")
    classes = _shape(flat, "head/kernel", 2, path)[1]
    if image_size is None:
        if grid is None:
            raise UserError(f"{path}: no position embedding to infer the image size from; pass --image-size")
        image_size = grid * stride
    try:
        return ViTConfig(image_size=image_size, patch_size=P, hidden_size=D, depth=len(blocks), num_heads=q[1],
                         mlp_dim=mlp, num_classes=classes, in_chans=cin_img, classifier="token" if token else "gap",
                         pos_embed=pos_embed, representation_size=rep, layer_norm_eps=1e-6, gelu_approximate="tanh",
                         resnet=resnet, name=_name(D, len(blocks), q[1], mlp, P, resnet))
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None


def _name(D, depth, heads, mlp, P, resnet) -> str:
    want = dict(hidden_size=D, depth=depth, num_heads=heads, mlp_dim=mlp)
    size = next((k for k, v in SIZES.items() if v == want and k != "testing"), f"D{D}x{depth}")
    if resnet is None:
        return f"ViT-{size}/{P}"
    for name, h in hybrid_variants().items():  # the official hybrids by name: R50+ViT-B/16, ...
        if h["size"] == size and h["patch_size"] == P and h["resnet"] == resnet:
            return name
    return f"R{'x'.join(map(str, resnet['layers'])) or '-root'}+ViT-{size}/{P}"


def stage_units(names, what: str) -> list[int]:
    """Units per stage of a ResNet stored as block<s>/unit<u>/... tensor names (official ViT hybrids and BiT), stages
    and units numbered from 1 without gaps; otherwise a UserError starting with `what` shows the numbering found."""
    units: dict[int, set] = {}
    for k in names:
        m = re.match(r"block(\d+)/unit(\d+)/", k)
        if m:
            units.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    stages = sorted(units)
    if stages != list(range(1, len(stages) + 1)) or any(sorted(u) != list(range(1, len(u) + 1))
                                                       for u in units.values()):
        raise UserError(f"{what} { {s: sorted(u) for s, u in units.items()} } are not numbered block1.. / unit1..")
    return [len(units[s]) for s in stages]


def _infer_resnet(flat, path) -> dict:
    w = flat["conv_root/kernel"].shape
    if len(w) != 4 or w[0] != 7 or w[1] != 7:
        raise UserError(f"{path}: unknown hybrid ResNet layout: conv_root/kernel has shape {tuple(w)}, expected "
                        f"(7, 7, C, 64*width)")
    for k in flat:
        if not re.match(r"block(\d+)/unit(\d+)/", k) and re.match(r"block|unit|conv\d|gn\d", k):
            raise UserError(f"{path}: unknown hybrid ResNet layout: tensor {k} is not under block<s>/unit<u>/")
    layers = stage_units(flat, f"{path}: unknown hybrid ResNet layout: stages/units")
    width = w[3] / 64
    resnet = {"layers": layers, "width": int(width) if width.is_integer() else width}
    check_layout(resnet)
    return resnet


def to_state_dict(flat: dict[str, np.ndarray], path="checkpoint") -> tuple[dict, list[str], dict]:
    """canonical official dict -> (vitkit state dict of torch tensors, unexpected official names,
    vitkit name -> official name)."""
    state, unexpected, origin, qkv = {}, [], {}, {}
    for k, v in flat.items():
        for rx, template, to_torch in _FORWARD:
            m = rx.match(k)
            if m:
                name = _fill(template, m.groupdict())
                t = torch.from_numpy(np.ascontiguousarray(to_torch(v)))
                if m.groupdict().get("p"):
                    qkv[name] = t
                else:
                    state[name] = t
                origin[name] = k
                break
        else:
            unexpected.append(k)
    blocks = {n.split(".attn.")[0] for n in qkv}
    for b in sorted(blocks):
        for kind in ("weight", "bias"):
            parts = [f"{b}.attn.{p}.{kind}" for p in _QKV]
            present = [p for p in parts if p in qkv]
            if present and len(present) < 3:
                missing = [origin.get(p, p) for p in parts if p not in qkv]
                raise UserError(f"{path}: attention tensors missing: {missing}")
            if present:
                state[f"{b}.attn.qkv.{kind}"] = torch.cat([qkv[p] for p in parts], 0)
                origin[f"{b}.attn.qkv.{kind}"] = origin[parts[0]].replace("query", "{query,key,value}")
    return state, unexpected, origin


def from_state_dict(state: dict, cfg: ViTConfig, names_only: bool = False) -> dict[str, np.ndarray]:
    """vitkit state dict -> canonical official parameter dict (current flax layout), float32 numpy arrays
    (with names_only: the official names, values None)."""
    parts = {}
    for name, t in state.items():
        m = re.match(r"(blocks\.\d+\.attn)\.qkv\.(weight|bias)$", name)
        if m:
            for p, part in zip(_QKV, (None,) * 3 if names_only else t.chunk(3, dim=0)):
                parts[f"{m.group(1)}.{p}.{m.group(2)}"] = part
        else:
            parts[name] = t
    out = {}
    for name, t in parts.items():
        for rx, template, back in _BACKWARD:
            m = rx.match(name)
            if m:
                out[_fill(template, m.groupdict())] = None if names_only else \
                    np.ascontiguousarray(back(t.detach().cpu().float().numpy(), cfg.num_heads))
                break
        else:
            raise UserError(f"tensor {name} has no official .npz equivalent (only learned 1D position embeddings "
                            f"with q/k/v biases can be written in the official format)")
    return out


def expected_official_names(cfg: ViTConfig) -> set[str]:
    from ..model import ViT

    with torch.device("meta"):
        model = ViT(cfg)
    return set(from_state_dict(model.state_dict(), cfg, names_only=True))


# -- load / save -----------------------------------------------------------------------------------------------
def load_npz(path: Path, image_size: Optional[int] = None, num_classes: Optional[int] = None,
             dtype: Optional[torch.dtype] = None, **_):
    """Official .npz -> (ViT, Preprocess, None). `image_size` resizes the position embeddings as the official
    load_pretrained does; `num_classes` different from the checkpoint's gives a new zero-initialised head.
    `dtype` (default: float32, or float64 for a float64 file) is the model's dtype, applied before resizing."""
    from ..model import ViT
    from .surgery import reset_head

    path = Path(path)
    flat = canonicalize(read_npz(path))
    if "head/kernel" not in flat and "head/bias" not in flat and num_classes is not None:
        # a checkpoint saved without a head (official num_classes=0): a new zero-initialised one, as load_pretrained
        width = flat["pre_logits/kernel"].shape[1] if "pre_logits/kernel" in flat else \
            _shape(flat, "embedding/kernel", 4, path)[3]
        flat["head/kernel"] = np.zeros((width, num_classes), np.float32)
        flat["head/bias"] = np.zeros((num_classes,), np.float32)
    cfg = infer_config(flat, path)
    state, unexpected, origin = to_state_dict(flat, path)
    expected = expected_official_names(cfg)
    missing = sorted(expected - set(flat))
    if unexpected or missing:
        raise UserError(f"{path}: tensors do not fit the architecture the checkpoint describes ({cfg.name}): "
                        f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}, unexpected "
                        f"{sorted(unexpected)[:8]}{' ...' if len(unexpected) > 8 else ''}")
    with torch.device("meta"):  # no random init of weights that are replaced anyway
        model = ViT(cfg)
    own = model.state_dict()
    for k, v in state.items():
        if tuple(own[k].shape) != tuple(v.shape):
            shape = tuple(flat[origin[k]].shape) if origin[k] in flat else tuple(v.shape)
            raise UserError(f"{path}: tensor {origin[k]} has shape {shape}"
                            f" which does not fit the architecture the other tensors describe ({cfg.name}: "
                            f"{k} must be {tuple(own[k].shape)})")
    if dtype is None and all(v.dtype == np.float64 for v in flat.values() if v.dtype.kind == "f"):
        dtype = torch.float64
    dtype = dtype or torch.float32
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, assign=True)  # names/shapes checked above
    if any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):  # pragma: no cover
        raise UserError(f"{path}: tensors missing for {[n for n, t in model.named_parameters() if t.is_meta][:8]}")
    if image_size is not None and image_size != cfg.image_size:
        if image_size % cfg.stem_stride:
            raise UserError(f"--image-size {image_size} is not a multiple of the checkpoint's patch stride "
                            f"{cfg.stem_stride}")
        new_cfg = cfg.replace(image_size=image_size)
        sd = dict(model.state_dict())
        if cfg.pos_embed == "learned":
            sd["pos_embed"] = resize_pos_embed(sd["pos_embed"], new_cfg.grid_size, int(cfg.classifier == "token"))
        model = ViT(new_cfg).to(dtype or torch.float32)
        model.load_state_dict(sd)
        cfg = new_cfg
    if num_classes is not None and num_classes != cfg.num_classes:
        dtype = next(model.parameters()).dtype
        model = reset_head(model, num_classes).to(dtype)
        cfg = model.cfg
    return model, official_preprocess(cfg.image_size, cfg.in_chans), None


def official_preprocess(image_size: int, channels: int = 3) -> Preprocess:
    """The paper's preprocessing for the official weights: bilinear resize to the resolution, pixels to [-1, 1]."""
    return Preprocess(image_size, channels, (0.5,) * channels, (0.5,) * channels, "bilinear")


def save_npz(model, path) -> Path:
    """Write `model` as an official-format .npz (current flax layout, float32)."""
    inner = unwrap(model.model if isinstance(model, LoadedModel) else model)
    flat = from_state_dict(inner.state_dict(), inner.cfg)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, **flat)
    tmp.replace(path)
    return path
