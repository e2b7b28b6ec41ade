"""The studies' figures from their rows (results.json), in the style of the paper's Fig. 4 and Fig. 5.

    data_scale_figure(rows) -> Figure: accuracy vs pre-training set size, one line per model (colour = family)
    compute_figure(rows)    -> Figure: transfer accuracy vs pre-training FLOPs, one marker per run (marker = family)
    mpp_figure(rows)        -> Figure: few-shot and fine-tuning accuracy per arm (section 4.6), grouped bars
    save(fig, path)         -> PNG written atomically

A missing accuracy (None: e.g. the upstream top-1 of an arm with no classifier) is left out, never drawn as 0.
"""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

COLOR = {"vit": "tab:blue", "resnet": "tab:gray", "hybrid": "tab:orange"}
MARKER = {"vit": "o", "resnet": "s", "hybrid": "^"}
LABEL = {"vit": "ViT", "resnet": "BiT ResNet", "hybrid": "Hybrid"}
ARM_COLOR = {"scratch": "tab:gray", "mpp": "tab:green", "supervised": "tab:blue"}
ARM_LABEL = {"scratch": "From scratch", "mpp": "Masked patch prediction", "supervised": "Supervised"}


def _panels(rows) -> list[tuple[str, str]]:
    """(title, key) of every accuracy measured: few-shot per shot count (mean over transfer sets), then top-1."""
    shots = sorted({k for r in rows for k in r.get("fewshot", {})}, key=int)
    panels = [(f"Linear {k}-shot (transfer)", f"fewshot:{k}") for k in shots]
    if any(r.get("top1") is not None for r in rows):
        panels.append(("Pre-training val top-1", "top1"))
    return panels


def _value(row, key):
    if key.startswith("fewshot:"):
        return row.get("fewshot", {}).get(key.split(":", 1)[1])
    return row.get(key)


def _figure(n: int, width: float = 4.2) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * max(n, 1), 3.6), constrained_layout=True)
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, max(n, 1), i + 1) for i in range(max(n, 1))]


def _style(ax, title: str, xlabel: str, log_x: bool = True, grid_axis: str = "both") -> None:
    """What every panel shares: labels, title, grid (and the log x axis of the scaling plots)."""
    if log_x:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels (2e13, 3e13, ...) run into each other
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Accuracy [%]")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis=grid_axis)


def data_scale_figure(rows) -> Figure:
    """Fig. 4: accuracy (%) against the number of pre-training images (log scale), one line per model."""
    panels = _panels(rows)
    fig, axes = _figure(len(panels))
    models = list(dict.fromkeys(r["model"] for r in rows))
    for ax, (title, key) in zip(axes, panels):
        for m in models:
            pts = sorted((r["pretrain_images"], _value(r, key), r["family"]) for r in rows
                         if r["model"] == m and _value(r, key) is not None)
            if not pts:
                continue
            fam = pts[0][2]
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker=MARKER.get(fam, "o"),
                    color=COLOR.get(fam), label=f"{LABEL.get(fam, fam)}: {m}")
        _style(ax, title, "Pre-training images")
    axes[0].legend(fontsize=7)
    return fig


def compute_figure(rows) -> Figure:
    """Fig. 5: transfer accuracy (%) against total pre-training FLOPs (log scale), one marker per run (marker and
    colour = family); the runs of one model (its training lengths) joined by a thin line and named at the last."""
    panels = _panels(rows)
    fig, axes = _figure(len(panels))
    models = list(dict.fromkeys(r["model"] for r in rows))
    for ax, (title, key) in zip(axes, panels):
        labelled = set()
        for m in models:
            pts = sorted((r["pretrain_flops"], _value(r, key), r["family"]) for r in rows
                         if r["model"] == m and _value(r, key) is not None)
            if not pts:
                continue
            fam = pts[0][2]
            xs, ys = [p[0] for p in pts], [100 * p[1] for p in pts]
            ax.plot(xs, ys, color=COLOR.get(fam), alpha=0.5, linewidth=0.8)
            ax.scatter(xs, ys, marker=MARKER.get(fam, "o"), color=COLOR.get(fam),
                       label=None if fam in labelled else LABEL.get(fam, fam))
            labelled.add(fam)
            ax.annotate(m, (xs[-1], ys[-1]), textcoords="offset points", xytext=(4, 2), fontsize=6,
                        color=COLOR.get(fam))
        _style(ax, title, "Total pre-training compute [FLOPs]")
    axes[0].legend(fontsize=8)
    return fig


def mpp_figure(rows) -> Figure:
    """Section 4.6: accuracy (%) of each arm (scratch, masked patch prediction, supervised pre-training) on each
    transfer measure -- linear few-shot per shot count and fine-tuning top-1 -- as groups of bars, the value on
    each bar."""
    shots = sorted({k for r in rows for k in r.get("fewshot", {})}, key=int)
    measures = [(f"{k}-shot linear", f"fewshot:{k}") for k in shots]
    if any(r.get("finetune_top1") is not None for r in rows):
        measures.append(("Fine-tuning top-1", "finetune_top1"))
    fig, (ax,) = _figure(1, width=6.4)
    width = 0.8 / max(len(rows), 1)
    models = list(dict.fromkeys(r["model"] for r in rows))
    for i, r in enumerate(rows):
        arm = r.get("arm", "supervised")
        pts = [(j, _value(r, key)) for j, (_, key) in enumerate(measures)]
        pts = [(j, v) for j, v in pts if v is not None]
        if not pts:
            continue
        bars = ax.bar([j + (i - (len(rows) - 1) / 2) * width for j, _ in pts], [100 * v for _, v in pts], width,
                      color=ARM_COLOR.get(arm),
                      label=ARM_LABEL.get(arm, arm) + (f": {r['model']}" if len(models) > 1 else ""))
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(measures)), [title for title, _ in measures])
    ax.set_ylim(0, 1.35 * max([100 * (_value(r, key) or 0) for r in rows for _, key in measures] + [1]))
    transfer = next((r["finetune_transfer"] for r in rows if r.get("finetune_transfer")), "transfer")
    model = f"{models[0]}, " if len(models) == 1 else ""
    _style(ax, f"Transfer after each pre-training ({model}{transfer})", "", log_x=False, grid_axis="y")
    ax.legend(fontsize=7, loc="upper left", ncol=len(rows))  # in the headroom above the bars
    return fig


def save(fig: Figure, path) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)
    return path
