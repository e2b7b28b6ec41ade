"""`vitkit convert SRC OUT`: read any checkpoint vitkit reads (official .npz, Hugging Face ViT folder, timm state
dict, vitkit checkpoint) and write it as a vitkit checkpoint directory (default), an official .npz, a Hugging
Face folder or a timm state dict.

    vitkit convert ViT-B_16.npz ckpt/                       # official -> vitkit, architecture from the shapes
    vitkit convert ViT-B_16.npz ckpt384/ --image-size 384   # position embeddings resized as the official code
    vitkit convert google-vit-folder/ ckpt/                 # Hugging Face -> vitkit
    vitkit convert ckpt/ hf-out/ --to hf                    # vitkit -> Hugging Face (ViTForImageClassification)
    vitkit convert ckpt/ model.safetensors --to timm        # vitkit -> timm VisionTransformer state dict
    vitkit convert ckpt/ out.npz --to npz                   # vitkit -> official .npz
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from ..resnet import BiTConfig

# target -> "module:function(model, out_path)" writing that format
WRITERS = {
    "vitkit": "vitkit.checkpoint.io:save_checkpoint",
    "npz": "vitkit.checkpoint.npz:save_npz",
    "hf": "vitkit.checkpoint.hf:save_hf",  # ViTForImageClassification
    "hf-model": "vitkit.checkpoint.hf:save_hf_model",  # ViTModel (no head; pooler = pre-logits layer)
    "timm": "vitkit.checkpoint.timm_sd:save_timm",
}
BIT_WRITERS = {"vitkit": WRITERS["vitkit"], "npz": "vitkit.checkpoint.bit_npz:save_bit_npz"}  # BiT: these only
_BY_SUFFIX = {".npz": "npz", ".safetensors": "timm", ".pth": "timm", ".pt": "timm", ".bin": "timm"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="checkpoint to read: official .npz, Hugging Face folder, timm .safetensors/.pth, "
                               "or a vitkit checkpoint directory")
    p.add_argument("out", help="where to write (a directory for vitkit/hf, a file for npz/timm)")
    p.add_argument("--to", choices=sorted(WRITERS), default=None,
                   help="output format (default: from OUT's suffix: .npz -> npz, .safetensors/.pth -> timm, "
                        "otherwise a vitkit checkpoint directory)")
    from ..flags import Number

    p.add_argument("--image-size", type=Number(int, min=1), default=None, metavar="N",
                   help="resolution to convert for; position embeddings are interpolated (official method)")
    p.add_argument("--num-classes", type=Number(int, min=1), default=None, metavar="N",
                   help="class count; a different count than the source's gives a new zero-initialised head")
    p.add_argument("--num-heads", type=Number(int, min=1), default=None, metavar="N",
                   help="attention heads of a timm state dict without vitkit metadata (no tensor shape holds it; "
                        "default: the paper's count for the width)")


def _refuse_overlap(src, out) -> None:
    """Writing OUT replaces it whole: OUT must not be the source, inside it, or contain it."""
    s, o = Path(src).resolve(), Path(out).resolve()
    if s == o or s in o.parents or o in s.parents:
        raise UserError(f"OUT {out} overlaps the source {src} (writing it would replace the source and whatever "
                        f"lies beside it, e.g. train_state.pt); choose another OUT")


def convert(src, out, to=None, image_size=None, num_classes=None, num_heads=None):
    import importlib

    from . import io
    from .surgery import adapt

    to = to or _BY_SUFFIX.get(Path(out).suffix, "vitkit")
    _refuse_overlap(src, out)
    kw = {}
    if image_size is not None:
        kw["image_size"] = image_size
    if num_classes is not None:
        kw["num_classes"] = num_classes
    fmt = io.detect_format(src)
    if num_heads is not None and fmt == "timm":
        kw["num_heads"] = num_heads
    if fmt == "vitkit":  # the native reader takes no options; apply them here (preprocessing resized with it)
        loaded = adapt(io.load(src), num_classes, image_size, keep_pre_logits=True)
    else:
        loaded = io.load(src, **kw)
    target = WRITERS[to]
    if isinstance(loaded.config, BiTConfig):  # the paper's ResNet baseline: vitkit or the official BiT .npz
        if to not in BIT_WRITERS:
            raise UserError(f"{src} holds {loaded.config.name or 'a BiT ResNet'}, a BiT ResNet: it converts to "
                            f"{' or '.join(BIT_WRITERS)}, not to {to} (a ViT format)")
        target = BIT_WRITERS[to]
    mod, fn = target.split(":")
    writer = getattr(importlib.import_module(mod), fn)
    if to == "vitkit":
        writer(out, loaded, extra={"converted_from": {"format": fmt, "path": str(src)}})
    else:
        writer(loaded, out)
    return loaded, fmt, to


def run(args) -> int:
    if args.image_size is not None and args.image_size <= 0:
        raise UserError(f"--image-size must be positive, got {args.image_size}")
    if args.num_classes is not None and args.num_classes <= 0:
        raise UserError(f"--num-classes must be positive, got {args.num_classes}")
    loaded, fmt, to = convert(args.src, args.out, args.to, args.image_size, args.num_classes, args.num_heads)
    c = loaded.config
    if isinstance(c, BiTConfig):
        print(f"converted {args.src} ({fmt}) -> {args.out} ({to}); {c.name}: layers={list(c.layers)} width={c.width} "
              f"root={c.root} image={c.image_size} classes={c.num_classes}; {loaded.model.num_params():,} parameters")
        return 0
    arch = (f"{c.name or 'ViT'}: D={c.hidden_size} depth={c.depth} heads={c.num_heads} mlp={c.mlp_dim} "
            f"patch={c.patch_size} image={c.image_size} classifier={c.classifier} classes={c.num_classes}"
            + (f" pre_logits={c.representation_size}" if c.representation_size else "")
            + (f" resnet={c.resnet}" if c.resnet else ""))
    print(f"converted {args.src} ({fmt}) -> {args.out} ({to}); {arch}; {loaded.model.num_params():,} parameters")
    if to == "npz" and (c.layer_norm_eps != 1e-6 or c.gelu_approximate != "tanh"):
        print(f"note: the source uses LayerNorm eps {c.layer_norm_eps} and GELU approximate="
              f"{c.gelu_approximate!r}; the official code computes with eps 1e-6 and tanh GELU")
    return 0
