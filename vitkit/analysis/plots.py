"""Figures of the paper's analyses, each a plain function of arrays returning a matplotlib Figure.

Figures are built with the object-oriented API on the Agg canvas (no pyplot, no display, no global state), so
they work headless, in threads and in notebooks alike: ``fig.savefig("x.png")``, or display ``fig`` in Jupyter.

    plot_embedding_filters(components, explained)        Fig. 7 left
    plot_pos_embed_similarity(sim)                       Fig. 7 centre
    plot_attention_distance(mad, image_size)             Fig. 7 right
    plot_rollout_overlays(images, maps, titles, label)   Fig. 6 / App. D.8
    plot_head_maps(images, maps, layer, label)           raw per-head maps of one layer
    plot_explanation(image, rmap, topk, label)           predict --explain: overlay next to the top-k answer
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _figure(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _hwc(image) -> np.ndarray:
    """(C, H, W) or (H, W, C) or (H, W), uint8 or float in [0, 1] -> float (H, W) or (H, W, 3) in [0, 1]."""
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    a = a.astype(np.float64) / 255.0 if a.dtype == np.uint8 else a.astype(np.float64)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    return np.clip(a, 0, 1)


def _upsample(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of a (g, g) map to the image size (PIL, float mode)."""
    from PIL import Image

    return np.asarray(Image.fromarray(np.asarray(m, np.float32), mode="F").resize((size[1], size[0]),
                                                                                   Image.BILINEAR))


def _show_image(ax, img):
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)


def _overlay(ax, img, m, vmax=None, alpha=0.55, cmap="jet", gamma=None):
    """Image with the upsampled map on top; returns an opaque mappable for the colour bar. `gamma` < 1 uses a
    power-law colour scale, so that diffuse maps stay visible next to peaked ones."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize, PowerNorm

    _show_image(ax, img)
    up = np.clip(_upsample(m, img.shape[:2]), 0, None)
    top = vmax if vmax is not None else (float(up.max()) or 1.0)
    norm = PowerNorm(gamma, 0, top) if gamma else Normalize(0, top)
    ax.imshow(up, cmap=cmap, alpha=alpha, norm=norm)
    return ScalarMappable(norm=norm, cmap=cmap)


def _off(ax):
    ax.set_xticks([])
    ax.set_yticks([])


def plot_embedding_filters(components, explained=None, ncols: int = 7, title: Optional[str] = None) -> Figure:
    """Fig. 7 left: the principal components (k, C, P, P) of the patch-embedding filters, each shown as an RGB
    (C=3) or gray (C=1) patch, min-max scaled per component; subplot titles give the explained variance."""
    comps = np.asarray(components, np.float64)
    k, c = comps.shape[:2]
    ncols = min(ncols, k)
    nrows = int(np.ceil(k / ncols))
    fig = _figure(1.25 * ncols + 0.4, 1.35 * nrows + 0.9)
    for i in range(k):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        p = comps[i]
        p = (p - p.min()) / (p.max() - p.min() + 1e-12)
        if c == 3:
            ax.imshow(p.transpose(1, 2, 0), interpolation="nearest")
        else:
            ax.imshow(p.mean(0) if c > 3 else p[0], cmap="gray", interpolation="nearest")
        _off(ax)
        lab = f"PC {i + 1}"
        if explained is not None:
            lab += f" ({100 * float(explained[i]):.1f}%)"
        ax.set_title(lab, fontsize=7)
    kind = "RGB" if c == 3 else ("gray" if c == 1 else f"mean of {c} channels")
    fig.suptitle(title or f"{'RGB e' if c == 3 else 'E'}mbedding filters: first {k} principal components ({kind}, "
                 f"{comps.shape[2]}x{comps.shape[3]} px)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig


def plot_pos_embed_similarity(sim, title: Optional[str] = None, vmin: Optional[float] = None) -> Figure:
    """Fig. 7 centre: a g x g grid of small heat maps. The map at (row r, column c) shows the cosine similarity
    between the position embedding of patch (r, c) and those of all patches; one colour scale [vmin, 1] for all,
    vmin by default the lowest similarity rounded down to 0.1 (-1 at most), so that embeddings whose similarities
    are all high (e.g. fixed sin-cos) still show their structure."""
    s = np.asarray(sim)
    n, g, _ = s.shape
    if vmin is None:
        vmin = max(-1.0, np.floor(float(s.min()) * 10) / 10)
        vmin = min(vmin, 0.9)
    size = min(9.0, max(4.0, 0.5 * g + 2))
    fig = _figure(size + 1.0, size)
    gs = fig.add_gridspec(g, g, left=0.09, right=0.8, bottom=0.08, top=0.9, wspace=0.08, hspace=0.08)
    im = None
    for r in range(g):
        for c in range(g):
            ax = fig.add_subplot(gs[r, c])
            im = ax.imshow(s[r * g + c], cmap="viridis", vmin=vmin, vmax=1, interpolation="nearest")
            _off(ax)
            if r == g - 1:
                ax.set_xlabel(str(c + 1), fontsize=7)
            if c == 0:
                ax.set_ylabel(str(r + 1), fontsize=7, rotation=0, labelpad=8, va="center")
    fig.text(0.445, 0.02, "Input patch column", ha="center", fontsize=10)
    fig.text(0.015, 0.49, "Input patch row", va="center", rotation="vertical", fontsize=10)
    cax = fig.add_axes((0.83, 0.15, 0.025, 0.68))
    fig.colorbar(im, cax=cax).set_label("Cosine similarity", fontsize=9)
    fig.suptitle(title or "Position embedding similarity", fontsize=11)
    return fig


def plot_attention_distance(mad, image_size: Optional[int] = None, title: Optional[str] = None,
                            num_images: Optional[int] = None, uniform: Optional[float] = None) -> Figure:
    """Fig. 7 right: mean attention distance (pixels) against network depth (layer), one point per head,
    coloured by head index. `uniform`: the distance of uniform attention over all patches, drawn as a reference
    line (``patch_distance_matrix(g, P).mean()``)."""
    d = np.asarray(mad, np.float64)
    layers, heads = d.shape
    fig = _figure(6.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    cmap = __import__("matplotlib").colormaps["tab20" if heads > 10 else "tab10"]
    rng = np.random.default_rng(0)
    for h in range(heads):
        jitter = rng.uniform(-0.12, 0.12, layers) if heads > 1 else 0
        ax.scatter(np.arange(1, layers + 1) + jitter, d[:, h], s=22, color=cmap(h % cmap.N), label=f"Head {h + 1}",
                   edgecolors="k", linewidths=0.3)
    ax.plot(np.arange(1, layers + 1), d.mean(1), color="0.4", lw=1, ls="--", label="mean over heads")
    if uniform is not None:
        ax.axhline(uniform, color="tab:red", lw=1, ls=":", label=f"uniform attention ({uniform:.1f} px)")
    ax.set_xlabel("Network depth (layer)")
    ax.set_ylabel("Mean attention distance (pixels)")
    ax.set_xticks(np.arange(1, layers + 1))
    top = max(float(d.max()) * 1.1, 1.0, 1.1 * (uniform or 0))
    if image_size:
        top = max(top, 0.5 * image_size)
    ax.set_ylim(0, top)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if heads > 6 else 1, loc="best")
    sub = f" ({num_images} images)" if num_images else ""
    ax.set_title(title or f"Mean attention distance by head{sub}", fontsize=11)
    fig.tight_layout()
    return fig


def plot_rollout_overlays(images: Sequence, maps, titles: Optional[Sequence[str]] = None,
                          label: str = "Attention rollout: [class] token to patches", ncols: int = 8) -> Figure:
    """Fig. 6 / App. D.8: each input image (top) and the rollout map overlaid on it (bottom), the map upsampled
    bilinearly and scaled to its own maximum (colour bar: fraction of the image's maximum)."""
    m = np.asarray(maps, np.float64)
    n = len(m)
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    fig = _figure(max(1.6 * ncols + 1.0, 5.5), 3.3 * nrows + 0.8)
    im = None
    for i in range(n):
        img = _hwc(images[i])
        r, c = divmod(i, ncols)
        ax = fig.add_subplot(2 * nrows, ncols, 2 * r * ncols + c + 1)
        _show_image(ax, img)
        _off(ax)
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=7)
        ax2 = fig.add_subplot(2 * nrows, ncols, (2 * r + 1) * ncols + c + 1)
        im = _overlay(ax2, img, m[i] / (m[i].max() or 1.0), vmax=1.0)
        _off(ax2)
        if c == 0:
            ax.set_ylabel("input", fontsize=8)
            ax2.set_ylabel("rollout", fontsize=8)
    import textwrap

    fig.suptitle(textwrap.fill(label, int(12 * fig.get_figwidth())), fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.86, 0.93))
    cax = fig.add_axes((0.87, 0.15, 0.018, 0.7))
    fig.colorbar(im, cax=cax).set_label("rollout weight / image max", fontsize=8)
    return fig


def plot_head_maps(images: Sequence, maps, layer: int, label: Optional[str] = None,
                   notes: Optional[Sequence[Sequence[str]]] = None) -> Figure:
    """Raw attention maps of one layer: rows are images, the first column the input, then one column per head
    with that head's map (N, heads, g, g) overlaid; one colour scale per figure (attention weight). `notes[i][h]`
    is printed in the corner of panel (i, h), e.g. the weight the [class] token puts on itself."""
    m = np.asarray(maps, np.float64)
    n, heads = m.shape[:2]
    vmax = float(m.max()) or 1.0
    fig = _figure(1.5 * (heads + 1) + 1.0, 1.55 * n + 0.8)
    im = None
    for i in range(n):
        img = _hwc(images[i])
        ax = fig.add_subplot(n, heads + 1, i * (heads + 1) + 1)
        _show_image(ax, img)
        _off(ax)
        if i == 0:
            ax.set_title("input", fontsize=8)
        for h in range(heads):
            ax = fig.add_subplot(n, heads + 1, i * (heads + 1) + h + 2)
            im = _overlay(ax, img, m[i, h], vmax=vmax, gamma=0.5)
            _off(ax)
            if notes is not None:
                ax.text(0.03, 0.97, notes[i][h], transform=ax.transAxes, fontsize=6, va="top", color="w",
                        bbox=dict(facecolor="k", alpha=0.5, pad=1, lw=0))
            if i == 0:
                ax.set_title(f"head {h + 1}", fontsize=8)
    fig.suptitle(label or f"Layer {layer} attention per head: [class] token to patches", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.85, 0.95))
    cax = fig.add_axes((0.86, 0.15, 0.02, 0.7))
    fig.colorbar(im, cax=cax).set_label("attention weight (square-root scale)", fontsize=8)
    return fig


def plot_explanation(image, rmap, topk: Sequence[tuple[str, float]], label: str) -> Figure:
    """predict --explain: the input, the rollout overlay (with colour bar) and a bar chart of the top-k answer."""
    img = _hwc(image)
    m = np.asarray(rmap, np.float64)
    fig = _figure(10.0, 3.4)
    ax = fig.add_subplot(1, 3, 1)
    _show_image(ax, img)
    _off(ax)
    ax.set_title("input", fontsize=9)
    ax = fig.add_subplot(1, 3, 2)
    im = _overlay(ax, img, m / (m.max() or 1.0), vmax=1.0)
    _off(ax)
    ax.set_title(label, fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).set_label("rollout weight / max", fontsize=8)
    ax = fig.add_subplot(1, 3, 3)
    names = [str(t[0]) for t in topk][::-1]
    probs = [float(t[1]) for t in topk][::-1]
    ax.barh(range(len(names)), probs, color="tab:blue")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability")
    ax.set_title(f"top-{len(names)}: {names[-1]} ({100 * probs[-1]:.1f}%)" if names else "top-k", fontsize=9)
    fig.tight_layout()
    return fig
