"""Hugging Face `transformers` ViT folders (config.json with model_type "vit" + safetensors weights): read and write.

Reads ViTForImageClassification and ViTModel folders (model.safetensors, sharded model.safetensors.index.json, or
a weights-only pytorch_model.bin), with the on-disk key names every transformers version writes
(vit.encoder.layer.N.attention.attention.query, ...) and, as aliases, the module names of transformers 5
(vit.layers.N.attention.q_proj, ...). Writes ViTForImageClassification folders that `from_pretrained` loads.

Numerics stay those of the source: HF ViT computes LayerNorm with config.layer_norm_eps (1e-12 by default, the
official code uses 1e-6) and config.hidden_act ("gelu" = exact erf GELU; the official code uses the tanh
approximation), so a converted model gets layer_norm_eps / gelu_approximate from config.json, and a vitkit model
written as HF gets them written into config.json ("gelu_pytorch_tanh" for the tanh approximation).

HF ViT has no GAP classifier, no hybrid ResNet stem and no pre-logits layer in ViTForImageClassification:
writing such a model is refused with a one-line error (a pre-logits model is written as a ViTModel whose pooler
is the pre-logits layer, without the classification head, when asked with kind="model"). A ViTModel's pooler
(Dense + tanh on the [class] token) is the pre-logits layer when read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from ..config import ViTConfig
from ..data.preprocess import Preprocess
from ..errors import UserError
from ..runtime import as_loaded, unwrap
from .keys import compile_table, join_qkv, rename, split_qkv

# vitkit-side names are after split_qkv (blocks.N.attn.{q,k,v}.*)
_L, _V = "encoder.layer.{i}.", "blocks.{i}."
_ROWS = [
    ("embeddings.cls_token", "cls_token"),
    ("embeddings.position_embeddings", "pos_embed"),
    ("embeddings.patch_embeddings.projection.weight", "patch_embed.proj.weight"),
    ("embeddings.patch_embeddings.projection.bias", "patch_embed.proj.bias"),
    (_L + "layernorm_before.weight", _V + "norm1.weight"),
    (_L + "layernorm_before.bias", _V + "norm1.bias"),
    (_L + "attention.attention.query.weight", _V + "attn.q.weight"),
    (_L + "attention.attention.query.bias", _V + "attn.q.bias"),
    (_L + "attention.attention.key.weight", _V + "attn.k.weight"),
    (_L + "attention.attention.key.bias", _V + "attn.k.bias"),
    (_L + "attention.attention.value.weight", _V + "attn.v.weight"),
    (_L + "attention.attention.value.bias", _V + "attn.v.bias"),
    (_L + "attention.output.dense.weight", _V + "attn.proj.weight"),
    (_L + "attention.output.dense.bias", _V + "attn.proj.bias"),
    (_L + "layernorm_after.weight", _V + "norm2.weight"),
    (_L + "layernorm_after.bias", _V + "norm2.bias"),
    (_L + "intermediate.dense.weight", _V + "mlp.fc1.weight"),
    (_L + "intermediate.dense.bias", _V + "mlp.fc1.bias"),
    (_L + "output.dense.weight", _V + "mlp.fc2.weight"),
    (_L + "output.dense.bias", _V + "mlp.fc2.bias"),
    ("layernorm.weight", "norm.weight"),
    ("layernorm.bias", "norm.bias"),
    ("pooler.dense.weight", "pre_logits.weight"),
    ("pooler.dense.bias", "pre_logits.bias"),
]
# transformers 5 module names (what model.state_dict() says in memory), accepted on read
_ALIASES = [
    ("layers.{i}.attention.q_proj.weight", _V + "attn.q.weight"),
    ("layers.{i}.attention.q_proj.bias", _V + "attn.q.bias"),
    ("layers.{i}.attention.k_proj.weight", _V + "attn.k.weight"),
    ("layers.{i}.attention.k_proj.bias", _V + "attn.k.bias"),
    ("layers.{i}.attention.v_proj.weight", _V + "attn.v.weight"),
    ("layers.{i}.attention.v_proj.bias", _V + "attn.v.bias"),
    ("layers.{i}.attention.o_proj.weight", _V + "attn.proj.weight"),
    ("layers.{i}.attention.o_proj.bias", _V + "attn.proj.bias"),
    ("layers.{i}.layernorm_before.weight", _V + "norm1.weight"),
    ("layers.{i}.layernorm_before.bias", _V + "norm1.bias"),
    ("layers.{i}.layernorm_after.weight", _V + "norm2.weight"),
    ("layers.{i}.layernorm_after.bias", _V + "norm2.bias"),
    ("layers.{i}.mlp.fc1.weight", _V + "mlp.fc1.weight"),
    ("layers.{i}.mlp.fc1.bias", _V + "mlp.fc1.bias"),
    ("layers.{i}.mlp.fc2.weight", _V + "mlp.fc2.weight"),
    ("layers.{i}.mlp.fc2.bias", _V + "mlp.fc2.bias"),
]
_HEAD = [("classifier.weight", "head.weight"), ("classifier.bias", "head.bias")]
TABLE = compile_table([("vit." + a, b) for a, b in _ROWS] + _HEAD)  # ViTForImageClassification
TABLE_BARE = compile_table(_ROWS)  # ViTModel (no "vit." prefix)
TABLE_READ = TABLE + TABLE_BARE + compile_table([("vit." + a, b) for a, b in _ALIASES] + _ALIASES)

# hidden_act -> vitkit gelu_approximate
ACTS = {"gelu": "none", "gelu_pytorch_tanh": "tanh", "gelu_new": "tanh"}
ACT_OUT = {"none": "gelu", "tanh": "gelu_pytorch_tanh"}
RESAMPLE_IDS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}
IGNORED = ("embeddings.mask_token", "vit.embeddings.mask_token")  # masked-image-modeling only


def _read_weights(path: Path) -> dict:
    from safetensors.torch import load_file

    from .io import SafetensorsError

    index = path / "model.safetensors.index.json"
    files = ([path / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
             if index.exists() else [path / "model.safetensors"])
    if all(f.exists() for f in files):
        state = {}
        for f in files:
            try:
                state.update(load_file(str(f)))
            except (SafetensorsError, OSError, ValueError) as e:
                raise UserError(f"{f} is not a readable safetensors file (truncated or corrupt: {e})") from None
        return state
    if (path / "pytorch_model.bin").exists():
        from .timm_sd import load_weights_only

        return load_weights_only(path / "pytorch_model.bin")
    raise UserError(f"{path}: Hugging Face folder without weights (model.safetensors or pytorch_model.bin)")


def config_from_hf(hf: dict, path, num_classes: Optional[int], has_head: bool, has_pooler: bool) -> ViTConfig:
    act = hf.get("hidden_act", "gelu")
    if act not in ACTS:
        raise UserError(f"{path}: hidden_act {act!r} is not supported (supported: {sorted(ACTS)})")
    if has_pooler and hf.get("pooler_act", "tanh") != "tanh":
        raise UserError(f"{path}: pooler_act {hf.get('pooler_act')!r} is not supported (only tanh)")
    labels = hf.get("id2label") or {}
    classes = num_classes or (len(labels) if labels else hf.get("num_labels", 2))
    size, patch = hf.get("image_size", 224), hf.get("patch_size", 16)
    size = size[0] if isinstance(size, (list, tuple)) else size
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    try:
        return ViTConfig(image_size=size, patch_size=patch, hidden_size=hf["hidden_size"],
                         depth=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
                         mlp_dim=hf["intermediate_size"], num_classes=classes, in_chans=hf.get("num_channels", 3),
                         classifier="token", pos_embed="learned",
                         representation_size=hf.get("pooler_output_size", hf["hidden_size"]) if has_pooler else None,
                         dropout=0.0, attention_dropout=0.0, layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
                         gelu_approximate=ACTS[act], qkv_bias=hf.get("qkv_bias", True),
                         name=f"hf:{hf.get('_name_or_path', '') or Path(path).name}")
    except KeyError as e:
        raise UserError(f"{path}/config.json lacks {e.args[0]!r}") from None
    except ValueError as e:
        raise UserError(f"{path}/config.json: {e}") from None


def _preprocess_from(path: Path, cfg: ViTConfig) -> Preprocess:
    f = path / "preprocessor_config.json"
    pre = {}
    if f.exists():
        try:
            pre = json.loads(f.read_text())
        except json.JSONDecodeError:
            pre = {}
    mean, std = pre.get("image_mean", [0.5] * cfg.in_chans), pre.get("image_std", [0.5] * cfg.in_chans)
    return Preprocess(image_size=cfg.image_size, channels=cfg.in_chans, mean=tuple(mean), std=tuple(std),
                      resize=RESAMPLE_IDS.get(pre.get("resample", 2), "bilinear"))


def load_hf(path: Path, num_classes: Optional[int] = None, image_size: Optional[int] = None, **_):
    """HF ViT folder -> (ViT, Preprocess, class names). A ViTModel (no classifier) gets a zero-initialised head
    for `num_classes` (default: the config's label count); `image_size` resizes the position embeddings."""
    from ..model import ViT
    from .io import load_state_dict_strict
    from .surgery import reset_head, resize_model

    path = Path(path)
    try:
        hf = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}/config.json is not readable JSON ({e})") from None
    raw = {k: v for k, v in _read_weights(path).items() if k not in IGNORED}
    state, unexpected = rename(raw, TABLE_READ)
    state = join_qkv(state)
    has_head = "head.weight" in state
    cfg = config_from_hf(hf, path, None if has_head else num_classes, has_head, "pre_logits.weight" in state)
    if unexpected:
        raise UserError(f"{path}: tensors with no place in a ViT: {sorted(unexpected)[:8]}")
    model = ViT(cfg)
    if not has_head:  # ViTModel: the fresh model's zero head
        state.update({k: v for k, v in model.state_dict().items() if k.startswith("head.")})
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    load_state_dict_strict(model, {k: v.float() for k, v in state.items()}, f"{path} (Hugging Face)")
    if dtypes == {torch.float64}:
        model = model.double()
    pre = _preprocess_from(path, cfg)
    if has_head and num_classes is not None and num_classes != cfg.num_classes:
        model = reset_head(model, num_classes)
    if image_size is not None and image_size != cfg.image_size:
        model = resize_model(model, image_size)
        pre = Preprocess(**{**pre.to_dict(), "image_size": image_size})
    labels = hf.get("id2label") or {}
    names = [labels.get(str(i), labels.get(i, str(i))) for i in range(model.cfg.num_classes)] if has_head else None
    if names and num_classes is not None and num_classes != len(labels):
        names = None
    return model, pre, names


def hf_config(cfg: ViTConfig, class_names=None, architecture="ViTForImageClassification") -> dict:
    names = list(class_names) if class_names else [f"LABEL_{i}" for i in range(cfg.num_classes)]
    return {
        "architectures": [architecture], "model_type": "vit", "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.depth, "num_attention_heads": cfg.num_heads, "intermediate_size": cfg.mlp_dim,
        "hidden_act": ACT_OUT[cfg.gelu_approximate], "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02, "layer_norm_eps": cfg.layer_norm_eps,
        "image_size": cfg.image_size, "patch_size": cfg.patch_size, "num_channels": cfg.in_chans,
        "qkv_bias": cfg.qkv_bias, "encoder_stride": cfg.patch_size,
        "pooler_output_size": cfg.representation_size or cfg.hidden_size, "pooler_act": "tanh",
        "id2label": {str(i): str(n) for i, n in enumerate(names)},
        "label2id": {str(n): i for i, n in enumerate(names)}, "dtype": "float32",
    }


def save_hf(model, out, kind: str = "classification") -> Path:
    """Write a Hugging Face folder: ViTForImageClassification (kind="classification"), or ViTModel
    (kind="model": no head; the pooler is the pre-logits layer if the model has one)."""
    from safetensors.torch import save_file

    from .io import _write_dir_atomically, clean_state_dict

    loaded = as_loaded(model)
    inner = unwrap(loaded.model)
    cfg = inner.cfg
    problems = [msg for bad, msg in [
        (cfg.classifier != "token", "global average pooling (classifier 'gap')"),
        (cfg.resnet is not None, "a hybrid ResNet stem"),
        (cfg.pos_embed != "learned", f"{cfg.pos_embed!r} position embeddings"),
        (kind == "classification" and cfg.representation_size,
         "a pre-logits layer (write a ViTModel, whose pooler holds it: kind='model' / --to hf-model)"),
    ] if bad]
    if problems:
        raise UserError(f"Hugging Face ViT{'ForImageClassification' if kind == 'classification' else 'Model'} "
                        f"cannot hold {', '.join(problems)}")
    state = split_qkv(clean_state_dict(inner.state_dict()))
    if kind == "model":
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    out_state, unmatched = rename(state, TABLE if kind == "classification" else TABLE_BARE, reverse=True)
    if unmatched:
        raise UserError(f"tensors with no Hugging Face equivalent: {unmatched[:8]}")
    hf = hf_config(cfg, loaded.class_names, "ViTForImageClassification" if kind == "classification" else "ViTModel")
    pre = loaded.preprocess
    proc = {"image_processor_type": "ViTImageProcessor", "do_resize": True, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(pre.mean), "image_std": list(pre.std),
            "resample": {v: k for k, v in RESAMPLE_IDS.items()}[pre.resize],
            "size": {"height": cfg.image_size, "width": cfg.image_size}}

    def write(tmp: Path):
        save_file({k: v.float().contiguous() for k, v in out_state.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf, indent=2))
        (tmp / "preprocessor_config.json").write_text(json.dumps(proc, indent=2))

    _write_dir_atomically(Path(out), write)
    return Path(out)


def save_hf_model(model, out) -> Path:
    return save_hf(model, out, kind="model")
