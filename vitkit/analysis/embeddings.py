"""Embedding analyses of the paper's Fig. 7 (left and centre) as plain functions of arrays.

    embedding_filter_pcs(weight, k)           -> (components (k, C, P, P), explained variance ratio (k,))
    position_grid(model)                      -> (g*g, D) position embeddings of the patch tokens, or None
    pos_embed_similarity(posemb_grid)         -> (g*g, g, g) cosine similarity of each position with all others
    row_column_similarity(sim)                -> {"same_row", "same_col", "other", ...} mean similarities
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from .attention import _np


def embedding_filter_pcs(weight, k: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Fig. 7 left: principal components of the linear patch-embedding filters.

    `weight` is the patch embedding kernel (D, C, P, P) (``model.patch_embed.proj.weight``): D filters, each a
    C x P x P patch. The filters are flattened to D vectors of length C*P*P, centred, and their covariance
    diagonalised; the top-k eigenvectors (directions in pixel-patch space) are returned reshaped to (k, C, P, P),
    ordered by explained variance. Each component's sign is fixed so that its largest-magnitude entry is positive
    (PCA signs are arbitrary). k is capped at min(D, C*P*P)."""
    w = _np(weight)
    if w.ndim != 4:
        raise UserError(f"patch embedding weight has shape {w.shape}; expected (D, C, P, P)")
    d, c, p, q = w.shape
    x = w.reshape(d, -1)
    x = x - x.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    var = s**2
    k = max(1, min(int(k), vt.shape[0]))
    comps = vt[:k]
    idx = np.abs(comps).argmax(axis=1)
    comps = comps * np.sign(comps[np.arange(k), idx])[:, None]
    ratio = var[:k] / var.sum() if var.sum() > 0 else np.zeros(k)
    return comps.reshape(k, c, p, q), ratio


def position_grid(model) -> np.ndarray | None:
    """The position embeddings the g*g patch tokens receive, (g*g, D) row-major; None if the model has none.
    Works for every kind vitkit builds (learned 1D, learned2d, sincos2d) through ``model.position_embedding()``."""
    pe = model.position_embedding() if hasattr(model, "position_embedding") else getattr(model, "pos_embed", None)
    if pe is None:
        return None
    pe = _np(pe)[0]
    g = model.cfg.grid_size
    if pe.shape[0] == g * g + 1:
        pe = pe[1:]  # drop the [class] token's entry
    if pe.shape[0] != g * g:
        raise UserError(f"position embedding has {pe.shape[0]} entries, which does not fit a {g}x{g} grid")
    return pe


def pos_embed_similarity(posemb_grid) -> np.ndarray:
    """Fig. 7 centre: for every grid position i, the cosine similarity of its embedding with all positions,
    (g*g, g, g): entry [i, r, c] is cos(E_i, E_{r*g+c}). Accepts (g*g, D) in row-major order or (g, g, D)."""
    e = _np(posemb_grid)
    if e.ndim == 3:
        if e.shape[0] != e.shape[1]:
            raise UserError(f"position grid has shape {e.shape}; expected (g, g, D)")
        e = e.reshape(-1, e.shape[-1])
    if e.ndim != 2:
        raise UserError(f"position embeddings have shape {e.shape}; expected (g*g, D) or (g, g, D)")
    g = int(round(np.sqrt(e.shape[0])))
    if g * g != e.shape[0]:
        raise UserError(f"{e.shape[0]} position embeddings do not form a square grid")
    unit = e / np.clip(np.linalg.norm(e, axis=1, keepdims=True), 1e-12, None)
    return (unit @ unit.T).reshape(g * g, g, g)


def row_column_similarity(sim) -> dict:
    """Summary of whether the embeddings encode rows and columns (the paper's observation for Fig. 7 centre):
    mean cosine similarity between different positions in the same row, in the same column, and elsewhere, and
    the Pearson correlation between similarity and grid distance (negative: nearby positions are more alike)."""
    s = _np(sim)
    n, g, _ = s.shape
    flat = s.reshape(n, n)
    r, c = np.divmod(np.arange(n), g)
    off = ~np.eye(n, dtype=bool)
    same_row = (r[:, None] == r[None, :]) & off
    same_col = (c[:, None] == c[None, :]) & off
    other = off & ~same_row & ~same_col
    dist = np.sqrt((r[:, None] - r[None, :]) ** 2 + (c[:, None] - c[None, :]) ** 2)
    corr = float(np.corrcoef(flat[off], dist[off])[0, 1]) if n > 2 and flat[off].std() > 0 else float("nan")
    mean = lambda m: float(flat[m].mean()) if m.any() else float("nan")  # noqa: E731
    return {"same_row": mean(same_row), "same_col": mean(same_col), "other": mean(other),
            "corr_with_distance": corr}
