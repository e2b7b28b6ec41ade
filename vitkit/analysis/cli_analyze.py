"""`vitkit analyze CKPT --dataset D [--images ...] --out DIR`: the paper's figures for a checkpoint.

Writes to DIR (PNG for people, analysis.json for programs):
    embedding_filters.png        Fig. 7 left: principal components of the patch-embedding filters (skipped: hybrids)
    pos_embed_similarity.png     Fig. 7 centre: cosine similarity of position embeddings (skipped: pos_embed none)
    attention_distance.png       Fig. 7 right: mean attention distance per head vs depth, over N images
    attention_rollout.png        Fig. 6 / App. D.8: rollout overlays on the shown images
    attention_heads_last.png     raw per-head maps of the last layer
    analysis.json                all numbers behind the figures
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError


def add_arguments(p):
    from ..data.names import DATASET_LIST
    from ..flags import Number

    p.add_argument("checkpoint", help="checkpoint: vitkit directory, Hugging Face folder, official .npz, timm file")
    p.add_argument("--dataset", help="dataset spec for the attention statistics and example images "
                   f"({DATASET_LIST})")
    p.add_argument("--split", default="test", help="dataset split (default: test)")
    p.add_argument("--data-dir", default=None, help="where the dataset files are")
    p.add_argument("--images", nargs="+", default=[], metavar="IMAGE",
                   help="image files to draw attention maps for (they also count in the statistics if no "
                   "--dataset is given)")
    p.add_argument("--num-images", type=Number(int, min=1), default=256, metavar="N",
                   help="dataset images averaged in the mean attention distance (default: 256)")
    p.add_argument("--show", type=Number(int, min=1), default=8, metavar="N", help="dataset images drawn in the "
                   "attention figures when no --images are given (default: 8, one per class first)")
    p.add_argument("--filters", type=Number(int, min=1), default=28, metavar="N",
                   help="principal components of the filters shown (28)")
    p.add_argument("--batch-size", type=Number(int, min=1), default=64, metavar="N",
                   help="images per forward pass (default 64)")
    p.add_argument("--seed", type=Number(int, min=0), default=0, help="which dataset images are sampled (default: 0)")
    p.add_argument("--out", required=True, help="output directory")


def _pick_shown(labels: np.ndarray, n: int) -> np.ndarray:
    """Up to n indices, one per class first (in class order), then the next ones."""
    firsts = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)]
    rest = [i for i in range(len(labels)) if i not in set(firsts)]
    return np.array((firsts + rest)[:n], dtype=np.int64)


@torch.no_grad()  # inference only; scoped to the call, so nothing leaks to the caller
def run(args) -> int:
    from ..checkpoint import load
    from ..flags import check_writable
    from ..runtime import load_split, to_model_input
    from .attention import (attention_rollout, collect_attention, head_maps, mean_attention_distance,
                            patch_distance_matrix, rollout_map)
    from .embeddings import embedding_filter_pcs, pos_embed_similarity, position_grid, row_column_similarity
    from .explain import open_image, rollout_label
    from .plots import (plot_attention_distance, plot_embedding_filters, plot_head_maps, plot_pos_embed_similarity,
                        plot_rollout_overlays)

    t0 = time.perf_counter()
    if not args.dataset and not args.images:
        raise UserError("give --dataset D (attention statistics over its images) and/or --images FILE ...")
    if args.num_images < 1 or args.batch_size < 1 or args.show < 1 or args.filters < 1:
        raise UserError("--num-images, --batch-size, --show and --filters must be positive")
    pil = [(p, open_image(p)) for p in args.images]  # unreadable images fail before any work
    out = Path(args.out).expanduser()
    check_writable(out, "--out", directory=True)  # the check every command makes before its work
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create the directory ({e.strerror or e})") from None
    loaded = load(args.checkpoint)
    model, pre, names = loaded.model, loaded.preprocess, loaded.class_names
    cfg, dtype = loaded.config, next(model.parameters()).dtype
    if len(getattr(model, "blocks", [])) == 0:
        raise UserError(f"{args.checkpoint}: {cfg.name or 'the model'} has no Transformer blocks (a BiT ResNet?), so "
                        f"it has no attention or position embeddings to analyse")
    has_cls, grid, ppt = cfg.classifier == "token", cfg.grid_size, cfg.stem_stride
    from ..checkpoint.hub import exact_weights

    report = {"checkpoint": str(args.checkpoint), "weights": exact_weights(args.checkpoint), "format": loaded.source,
              "model": {"name": cfg.name, "image_size": cfg.image_size, "patch_size": cfg.patch_size,
                        "pixels_per_token": ppt, "grid": grid, "depth": cfg.depth, "heads": cfg.num_heads,
                        "hidden_size": cfg.hidden_size, "classifier": cfg.classifier, "pos_embed": cfg.pos_embed},
              "figures": {}, "notes": []}

    # -- Fig. 7 left: embedding filters ---------------------------------------------------------------------
    w = model.patch_embed.proj.weight
    if getattr(model, "stem", None) is not None or w.shape[1] not in (1, 3):
        report["notes"].append(f"hybrid model: the patch embedding acts on {w.shape[1]} ResNet feature channels "
                               f"with {w.shape[-1]}x{w.shape[-1]} kernels, not on pixels: no filter figure")
    else:
        comps, ratio = embedding_filter_pcs(w, args.filters)
        fig = plot_embedding_filters(comps, ratio)
        fig.savefig(out / "embedding_filters.png")
        report["figures"]["embedding_filters"] = "embedding_filters.png"
        report["embedding_filters"] = {"explained_variance_ratio": ratio.round(6).tolist(),
                                       "filter_shape": list(w.shape[1:])}

    # -- Fig. 7 centre: position embeddings ----------------------------------------------------------------
    pe = position_grid(model)
    if pe is None:
        report["notes"].append("the model has no position embedding (pos_embed none): no similarity figure")
    else:
        sim = pos_embed_similarity(pe)
        kind = {"learned": "learned 1D", "learned2d": "learned 2D (row + column)", "sincos2d": "fixed 2D sin-cos"}
        fig = plot_pos_embed_similarity(sim, f"Position embedding similarity ({kind.get(cfg.pos_embed, cfg.pos_embed)}"
                                        f", {grid}x{grid} patches)")
        fig.savefig(out / "pos_embed_similarity.png")
        report["figures"]["pos_embed_similarity"] = "pos_embed_similarity.png"
        report["pos_embed_similarity"] = {**row_column_similarity(sim), "kind": cfg.pos_embed,
                                          "matrix": sim.reshape(grid * grid, -1).round(4).tolist()}

    # -- images: statistics and shown ------------------------------------------------------------------------
    shown_u8, shown_titles = [], []
    if args.dataset:
        images, labels, ds_names = load_split(args.dataset, args.split, pre, args.data_dir, args.num_images,
                                              seed=args.seed)
        stats_u8 = images
        if not pil:
            idx = _pick_shown(labels, args.show)
            shown_u8 = images[idx]
            lab_names = ds_names or names
            shown_titles = [f"{lab_names[labels[i]] if labels[i] < len(lab_names) else labels[i]}" for i in idx]
        source = f"{args.dataset} {args.split}"
    else:
        stats_u8 = None
        source = "the --images"
    if pil:
        shown_u8 = np.stack([pre.to_array(im) for _, im in pil]).transpose(0, 3, 1, 2)
        shown_titles = [Path(p).name for p, _ in pil]
        if stats_u8 is None:
            stats_u8 = shown_u8

    # -- Fig. 7 right: mean attention distance over N images (batched, summed per image) -------------------
    total, count = None, 0
    for s in range(0, len(stats_u8), args.batch_size):
        x = to_model_input(stats_u8[s:s + args.batch_size], pre, dtype=dtype)
        attn = collect_attention(model, x)["attn"]
        d = mean_attention_distance(attn, grid, ppt, has_cls, reduce=False).sum(0)
        total = d if total is None else total + d
        count += len(x)
    mad = total / count
    uniform = float(patch_distance_matrix(grid, ppt).mean())
    fig = plot_attention_distance(mad, cfg.image_size, num_images=count, uniform=uniform,
                                  title=f"Mean attention distance by head ({count} images of {source})")
    fig.savefig(out / "attention_distance.png")
    report["figures"]["attention_distance"] = "attention_distance.png"
    report["mean_attention_distance"] = {"pixels": mad.round(4).tolist(), "per_layer_mean": mad.mean(1).round(4)
                                         .tolist(), "num_images": count, "source": source,
                                         "pixels_per_token": ppt, "image_size": cfg.image_size,
                                         "uniform_attention_pixels": round(uniform, 4),
                                         "convention": "patch tokens only; weights renormalised over key patches"}

    # -- Fig. 6 / D.8: rollout overlays and last-layer heads ----------------------------------------------
    x = to_model_input(shown_u8, pre, dtype=dtype)
    res = collect_attention(model, x)
    maps = rollout_map(attention_rollout(res["attn"]), grid, has_cls)
    probs = torch.softmax(res["logits"].float(), -1)
    conf, pred = probs.max(-1)
    titles = [f"{t}\npred {names[p] if p < len(names) else p} {100 * c:.0f}%"
              for t, p, c in zip(shown_titles, pred.tolist(), conf.tolist())]
    label = rollout_label(has_cls) + f" (all {cfg.depth} layers)"
    fig = plot_rollout_overlays(shown_u8, maps, titles, label=label[0].upper() + label[1:])
    fig.savefig(out / "attention_rollout.png")
    hm = head_maps(res["attn"][-1], grid, has_cls)
    head_label = (f"Layer {cfg.depth} (last) attention per head: [class] token to patches\n"
                  f"(corner: weight on the [class] token itself)" if has_cls else
                  f"Layer {cfg.depth} (last) attention per head, GAP model: mean over query patches")
    notes = None
    if has_cls:
        self_w = res["attn"][-1][:, :, 0, 0].float().numpy()
        notes = [[f"cls {100 * v:.0f}%" for v in row] for row in self_w]
    fig = plot_head_maps(shown_u8, hm, cfg.depth, label=head_label, notes=notes)
    fig.savefig(out / "attention_heads_last.png")
    report["figures"].update(attention_rollout="attention_rollout.png", attention_heads_last="attention_heads_last.png")
    report["attention_maps"] = {"label": label, "head_label": head_label, "images": [
        {"name": t, "pred": names[p] if p < len(names) else str(p), "prob": round(float(c), 6),
         "rollout": maps[i].round(6).tolist()}
        for i, (t, p, c) in enumerate(zip(shown_titles, pred.tolist(), conf.tolist()))]}
    report["seconds"] = round(time.perf_counter() - t0, 2)
    (out / "analysis.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {', '.join(sorted(report['figures'].values()))} and analysis.json to {out} "
          f"({report['seconds']:.1f} s)")
    print("mean attention distance (px) per layer: " + " ".join(f"L{i + 1}={v:.1f}" for i, v in
                                                                 enumerate(mad.mean(1))) +
          f" (uniform attention: {uniform:.1f})")
    for note in report["notes"]:
        print(f"note: {note}")
    return 0
