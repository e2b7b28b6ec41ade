"""`vitkit predict CKPT IMAGE --explain OUT.png`: the attention-rollout overlay next to the top-k answer.

    write_explanation(model, pil_image, out_path, topk=5) -> dict
    explain(model, pil_image, topk=5)                     -> dict with the map, without writing a file
    open_image(path)                                      -> PIL image, or a one-line UserError
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.preprocess import open_image
from ..errors import UserError
from ..runtime import as_loaded, unwrap
from .attention import attention_rollout, collect_attention, rollout_map

CLS_LABEL = "attention rollout: [class] token to patches"
GAP_LABEL = "GAP model (no [class] token): mean over query patches of attention rollout"


def rollout_label(has_cls: bool) -> str:
    return CLS_LABEL if has_cls else GAP_LABEL


def _as_pil(image):
    if isinstance(image, (str, Path)):
        return open_image(image)
    if not hasattr(image, "convert"):
        raise UserError(f"expected a PIL image or an image path, got {type(image).__name__}")
    return image


def explain(model, pil_image, topk: int = 5) -> dict:
    """Classify one image and compute its rollout map. Returns {"topk": [{"index", "class", "prob"}], "map" (g, g)
    numpy, "label" (what the map shows), "display" uint8 (S, S, C) the preprocessed image as the model sees it}.
    `model`: a LoadedModel (vitkit.load), or a bare ViT with default preprocessing."""
    loaded = as_loaded(model)
    pre = loaded.preprocess
    img = _as_pil(pil_image)
    x = pre([img])
    out = collect_attention(unwrap(loaded.model), x)
    rmap = rollout_map(attention_rollout(out["attn"]), out["grid"], out["has_cls"])[0]
    probs = torch.softmax(out["logits"].float(), dim=-1)[0]
    k = min(int(topk), probs.numel())
    p, idx = probs.topk(k)
    names = loaded.class_names
    top = [{"index": int(i), "class": names[i], "prob": float(v)}
           for v, i in zip(p.tolist(), idx.tolist())]
    return {"topk": top, "map": rmap, "label": rollout_label(out["has_cls"]), "display": pre.to_array(img)}


def write_explanation(model, pil_image, out_path, topk: int = 5) -> dict:
    """Write a PNG with the input, the attention-rollout overlay (App. D.8; for GAP models the mean over query
    patches, labelled so) and the top-k classes. Returns {"path", "topk", "label", "map": g x g list}."""
    from .plots import plot_explanation

    res = explain(model, pil_image, topk)
    out_path = Path(out_path)
    if out_path.parent and not out_path.parent.exists():
        out_path.parent.mkdir(parents=True, exist_ok=True)
    fig = plot_explanation(res["display"], res["map"], [(t["class"], t["prob"]) for t in res["topk"]],
                           res["label"])
    try:
        fig.savefig(out_path, dpi=100)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot write {out_path}: {' '.join(str(e).split())}") from None
    return {"path": str(out_path), "topk": res["topk"], "label": res["label"],
            "map": np.round(res["map"], 6).tolist()}
