"""The generated tables of docs/analysis.md: what `vitkit analyze` and `vitkit fewshot` measured on the shipped
Tiny ImageNet ViT and on three small Fashion-MNIST / MNIST models.

The rows are in docs/results/transfer-doc/analysis-*.json (transcribed from the page with the provenance it
stated; the small models were trained for that page and not kept).
"""

from __future__ import annotations

from rows import load, num, pct, table


def _signed(x: float | None, digits: int = 3) -> str:
    """A similarity or correlation (not a fraction of anything): "0.555", "-0.047"; None -> "-"."""
    if x is None:
        return "-"
    return f"{x:.{digits}f}".replace("-", "\u2212")


def _px(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def tin() -> str:
    """The shipped ViT's figures behind the verdicts on the paper's section 4.5 observations."""
    (r,) = load("transfer-doc/analysis-tin.json")
    f, p, a, ro = r["filters_explained"], r["pos_embed"], r["attention_distance"], r["rollout"]
    rows = [
        ("embedding filters: variance explained by PC 1 / PC 10 / PC 28",
         " / ".join(pct(f[k], 1) for k in ("1", "10", "28"))),
        ("position embeddings: correlation of similarity with patch distance", _signed(p["corr_grid_distance"], 2)),
        ("position embeddings: mean similarity within a row / within a column / elsewhere",
         " / ".join(_signed(p[k], 2) for k in ("same_row", "same_column", "elsewhere"))),
        ("mean attention distance, layer 1 / layer 6 (uniform attention)",
         f"{_px(a['layer1_px'], 1)} / {_px(a['layer6_px'], 1)} px ({_px(a['uniform_px'], 1)} px)"),
        ("mean attention distance of the layer-1 heads",
         f"{_px(a['layer1_head_min_px'], 1)}-{_px(a['layer1_head_max_px'], 1)} px"),
        ("hymenoptera photos whose rollout peaks on the insect",
         f"{ro['hymenoptera_on_insect']} of {ro['hymenoptera_shown']}"),
        ("`vitkit analyze`, seconds inside the process (2 CPU cores)", f"{r['seconds_in_process']:.1f} s"),
    ]
    return table([f"{r['weights']}, 8x8 grid of 8 px, 6 layers of 3 heads", "measured"], rows)


def _models() -> dict[str, dict]:
    return {r["name"]: r for r in load("transfer-doc/analysis-models.json")}


def models() -> str:
    rows = [(f"**{r['name']}**", r["model"], f"{r['grid']} + [class]", r["dataset"], r["how"],
             f"{num(r['wall_s'])} s", f"**{pct(r['top1'])}**", f"`{r['command']}`")
            for r in _models().values()]
    rows.append(("random", "ViT-Mini/7 or ViT-Mini/4", "4x4 or 7x7", "-", "untrained, created after "
                 "`torch.manual_seed(0)`", "-", "-",
                 "`vitkit.save_checkpoint(path, vitkit.create_model(NAME, num_classes=10, image_size=28, in_chans=1))`"))
    return table(["name", "variant", "grid", "trained on", "how", "wall time", "test top-1 (10,000)", "command"], rows,
                 "llllllrl")


def pos_embed() -> str:
    keys = ("same_row", "mirror_column", "same_row_not_mirror", "same_column", "neighbours4", "elsewhere")
    rows = [(r["model"], *(_signed(r[k]) for k in keys), _signed(r["corr_grid_distance"], 2))
            for r in load("transfer-doc/analysis-pos-embed.json")]
    return table(["model", "same row", "of which: mirror column", "same row, not mirror", "same column",
                  "4-neighbours", "elsewhere", "corr(similarity, grid distance)"], rows, "lrrrrrrr")


def attention_distance() -> str:
    rows = [(r["model"], _px(r["uniform_px"], 1), ", ".join(_px(x) for x in r["layer_mean_px"]),
             f"{_px(r['head_min_px'])} - {_px(r['head_max_px'])}")
            for r in load("transfer-doc/analysis-attention-distance.json")]
    return table(["model (256 test images)", "uniform attention (px)", "per-layer mean, layers 1 -> 6 (px)",
                  "head range (px)"], rows, "lrll")


def filters() -> str:
    rows = []
    for r in load("transfer-doc/analysis-filters.json"):
        corr = "-" if r["corr_with_init"] is None else (
            f"{r['corr_with_init']:.3f} (relative change {pct(r['relative_change'], 1)})")
        rows.append((r["model"], r["filter_size"], pct(r["pc1"], 1), pct(r["top5"], 1), pct(r["top10"], 1), corr))
    return table(["model", "filter size", "PC 1", "top 5", "top 10", "correlation of the filters with their initial values"],
                 rows, "llrrrl")


def fewshot() -> str:
    rows = []
    for r in load("transfer-doc/analysis-fewshot.json"):
        bold = "**" if r["model"] == "mnist" else ""
        shots = [f"{bold}{100 * r['shots'][k]['mean']:.2f} \u00b1 {100 * r['shots'][k]['std']:.2f}{bold}"
                 for k in ("1", "5", "10", "25")]
        rows.append((f"{r['model']} ({r['features']})", *shots, f"{bold}{pct(r['linear_probe'])}{bold}",
                     pct(r["knn"]["1"]), pct(r["knn"]["10"])))
    return table(["features from", "1-shot (%)", "5-shot (%)", "10-shot (%)", "25-shot (%)", "linear probe (ridge, 9k)",
                  "1-NN", "10-NN"], rows, "lrrrrrrr")


def speed() -> str:
    rows = [(r["model"], f"{r['grid']}", str(r["num_images"]), f"{r['seconds_in_process']:.1f} s", f"{r['wall_s']:.1f} s")
            for r in load("transfer-doc/analysis-speed.json")]
    return table(["model", "grid", "images", "inside the process", "wall, with Python start-up"], rows, "llrrr")


TABLES = {
    "analysis.tin": tin,
    "analysis.models": models,
    "analysis.pos_embed": pos_embed,
    "analysis.attention_distance": attention_distance,
    "analysis.filters": filters,
    "analysis.fewshot": fewshot,
    "analysis.speed": speed,
}
