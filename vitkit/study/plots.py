"""The studies' figures from their rows (results.json), in the style of the paper's Fig. 4 and Fig. 5.

    data_scale_figure(rows) -> Figure: accuracy vs pre-training set size, one line per model (colour = family)
    compute_figure(rows)    -> Figure: transfer accuracy vs pre-training FLOPs, one marker per run (marker = family)
    save(fig, path)         -> PNG written atomically
"""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

COLOR = {"vit": "tab:blue", "resnet": "tab:gray", "hybrid": "tab:orange"}
MARKER = {"vit": "o", "resnet": "s", "hybrid": "^"}
LABEL = {"vit": "ViT", "resnet": "BiT ResNet", "hybrid": "Hybrid"}


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


def _figure(n: int) -> tuple[Figure, list]:
    fig = Figure(figsize=(4.2 * max(n, 1), 3.6), constrained_layout=True)
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, max(n, 1), i + 1) for i in range(max(n, 1))]


def data_scale_figure(rows) -> Figure:
    """Fig. 4: accuracy (%) against the number of pre-training images (log scale), one line per model."""
    panels = _panels(rows)
    fig, axes = _figure(len(panels))
    models = list(dict.fromkeys(r["model"] for r in rows))
    for ax, (title, key) in zip(axes, panels):
        for m in models:
            pts = sorted((r["pretrain_images"], _value(r, key), r["family"]) for r in rows if r["model"] == m)
            pts = [p for p in pts if p[1] is not None]
            if not pts:
                continue
            fam = pts[0][2]
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker=MARKER.get(fam, "o"),
                    color=COLOR.get(fam), label=f"{LABEL.get(fam, fam)}: {m}")
        ax.set_xscale("log")
        ax.set_xlabel("Pre-training images")
        ax.set_ylabel("Accuracy [%]")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return fig


def compute_figure(rows) -> Figure:
    """Fig. 5: transfer accuracy (%) against total pre-training FLOPs (log scale), one marker per run."""
    panels = _panels(rows)
    fig, axes = _figure(len(panels))
    for ax, (title, key) in zip(axes, panels):
        for fam in COLOR:
            pts = [(r["pretrain_flops"], _value(r, key)) for r in rows if r["family"] == fam]
            pts = [p for p in pts if p[1] is not None]
            if pts:
                ax.scatter([p[0] for p in pts], [100 * p[1] for p in pts], marker=MARKER[fam], color=COLOR[fam],
                           label=LABEL[fam])
        ax.set_xscale("log")
        ax.set_xlabel("Total pre-training compute [FLOPs]")
        ax.set_ylabel("Accuracy [%]")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return fig


def save(fig: Figure, path) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)
    return path
