"""`vitkit predict CKPT IMAGE... [--topk K] [--json] [--explain OUT.png]`: classify image files.

Each image goes through the checkpoint's own preprocessing (its Preprocess: convert to its channels, resize,
normalise), the very code the image-folder datasets use, so predictions match `vitkit eval`. An image that cannot
be read stops the command with one line naming it, before any model work. `--explain` writes the attention-rollout
overlay of the (first) image via vitkit.analysis.explain when that module is installed.
"""

from __future__ import annotations

import argparse
import json

from ..data.preprocess import open_image
from ..errors import UserError
from ..runtime import as_loaded, unwrap


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint directory or file (vitkit, Hugging Face, official .npz, timm)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format PIL reads)")
    from ..flags import Number, device

    p.add_argument("--topk", type=Number(int, min=1), default=5, metavar="K",
                   help="how many classes to show per image (default 5)")
    p.add_argument("--device", type=device, default="auto", help="auto (default: CUDA if available), cpu, cuda, cuda:N")
    p.add_argument("--json", action="store_true", help="print one JSON object per image, one per line")
    p.add_argument("--explain", metavar="OUT.png", default=None,
                   help="also write an attention-rollout explanation of the first image to this file")


def predict(model, pil_images, topk: int = 5) -> list[list[tuple[str, float]]]:
    """For each PIL image, the top-k (class name, probability) pairs. `model`: a LoadedModel (vitkit.load), or a
    bare ViT (default preprocessing, classes named "0", "1", ...)."""
    import torch

    loaded = as_loaded(model)
    param = next(loaded.model.parameters())
    with torch.no_grad():
        x = loaded.preprocess(list(pil_images)).to(param.device, param.dtype)
        probs = loaded(x).float().softmax(-1).cpu()
    k = max(1, min(topk, probs.shape[1]))
    top = probs.topk(k, dim=1)
    names = loaded.class_names
    return [[(str(names[int(i)]), float(p)) for p, i in zip(ps, idx)] for ps, idx in zip(top.values, top.indices)]


def run(args: argparse.Namespace) -> int:
    from ..checkpoint.io import load

    if args.topk < 1:
        raise UserError(f"--topk must be >= 1, got {args.topk}")
    images = [open_image(p) for p in args.images]  # fail on a bad file before loading the model
    explain_fn = None
    if args.explain:
        try:
            from ..analysis.explain import write_explanation as explain_fn
        except ImportError:
            raise UserError("--explain is not available in this installation (vitkit.analysis.explain is "
                            "missing)") from None
    from ..runtime import require_trained_head, resolve_device

    model = load(args.checkpoint, device=resolve_device(args.device))
    require_trained_head(model, args.checkpoint, "predict")
    if explain_fn is not None and not hasattr(unwrap(model.model), "forward_intermediates"):
        raise UserError(f"--explain draws a ViT's attention rollout; {args.checkpoint} is "
                        f"{model.cfg.name or 'a model'}, a BiT ResNet, which has no attention")
    results = predict(model, images, args.topk)
    for path, res in zip(args.images, results):
        if args.json:
            print(json.dumps({"image": path, "top": [{"class": c, "prob": p} for c, p in res]}))
        else:
            print(path)
            for c, p in res:
                print(f"  {100 * p:6.2f}%  {c}")
    if explain_fn is not None:
        explain_fn(model, images[0], args.explain, topk=args.topk)
        if not args.json:
            print(f"explanation of {args.images[0]} written to {args.explain}")
    return 0
