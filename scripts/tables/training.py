"""The tables of docs/training.md, rendered from docs/results/ (see scripts/render_tables.py)."""

from __future__ import annotations

from rows import load, machine, num, pct, table


def runs() -> str:
    """Full Fashion-MNIST from scratch with benchmarks/fmnist_from_scratch.py, and the quick start."""
    out = []
    for r in load("training/fmnist-from-scratch.json"):
        out.append([f"{r['model']}, {r['epochs']} epochs, seed {r['seed']}", f"**{pct(r['top1'])}**",
                    pct(r["top1_flip_tta"]), f"{r['wall_s']:.0f} s", num(r.get("img_per_s")), machine(r),
                    str(r["date"])[:10], f"`{r['command']}`"])
    return table(["full Fashion-MNIST (60k / 10k) from scratch", "test top-1", "with flip TTA", "wall",
                  "img/s", "machine", "date", "command"], out, "lrrrrlll")


TABLES = {"training.runs": runs}
