"""Running a study: every cell of its grid pre-trained, evaluated and recorded, resumable cell by cell.

A cell is a run directory CELLS/<key> (grids.Grid.cell_key) holding the training loop's own run (checkpoint,
metrics.jsonl) and, once evaluated, row.json -- written atomically, so a row exists exactly when the cell is
done. A second call skips finished cells, continues an interrupted cell from its last checkpoint (the loop's
--resume, exact), and restarts a cell that was killed before its first checkpoint. results.json (the rows of the
grid, in grid order) and the figures are rewritten after every cell.

FLOPs convention: pretrain_flops = 3 x flops_per_image x images seen (steps x batch size). flops_per_image is the
model's forward pass, 2 x the multiply-adds of its matmuls and convolutions (model.flops_per_image(); norms,
softmax and activations not counted); the backward pass is counted as twice the forward. Evaluation and few-shot
feature extraction are not pre-training and are not counted.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import UserError
from .grids import Cell, Grid

ROW = "row.json"
RESULTS = "results.json"


def pretrain_flops(flops_per_image: int, steps: int, batch_size: int) -> int:
    """Pre-training FLOPs of a run: forward + backward (= 3 x forward) for every image seen."""
    return 3 * int(flops_per_image) * int(steps) * int(batch_size)


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def read_row(path: Path) -> Optional[dict]:
    """A finished cell's row, or None (no row, or one cut short: then the cell is evaluated again)."""
    try:
        row = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return row if isinstance(row, dict) and "pretrain_flops" in row else None


@dataclass
class Transfer:
    """A few-shot transfer set: a dataset spec; its images are decoded once per image size and reused by cells."""

    spec: str
    data_dir: Optional[str] = None
    cache: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        spec = self.spec.rstrip("/")
        return Path(spec.split(":", 1)[1]).name if spec.lower().startswith("imagefolder:") else spec

    def split(self, split: str, preprocess, n: int, seed: int = 0):
        from ..runtime import load_split

        key = (split, preprocess.image_size, preprocess.channels, n)
        if key not in self.cache:
            images, labels, _ = load_split(self.spec, split, preprocess, self.data_dir, n, seed)
            self.cache[key] = (images, labels)
        return self.cache[key]


def check_transfer(spec: str, data_dir) -> None:
    """Before any training: the transfer set exists and has both splits (image folders are indexed, not decoded)."""
    from ..data.datasets import load_dataset

    if spec.lower().startswith("imagefolder:"):
        for split in ("train", "test"):
            load_dataset(spec, split, data_dir=data_dir, image_size=8, channels=3)


def fewshot(loaded, transfers: list, grid: Grid, batch_size: int = 256) -> tuple[dict, dict]:
    """Linear few-shot top-1 (section 4.1) of a checkpoint on every transfer set: (mean over the sets per shot
    count, per set per shot count); the mean over the draws for each."""
    from ..eval.features import extract_features
    from ..eval.fewshot import fewshot_eval

    per = {}
    for t in transfers:
        xtr_img, ytr = t.split("train", loaded.preprocess, grid.transfer_train)
        xte_img, yte = t.split("test", loaded.preprocess, grid.transfer_test)
        xtr, xte = extract_features(loaded, xtr_img, batch_size), extract_features(loaded, xte_img, batch_size)
        r = fewshot_eval(xtr, ytr, xte, yte, shots=grid.shots, seeds=range(grid.draws))
        per[t.name] = {str(k): v["mean"] for k, v in r["shots"].items()}
    mean = {str(k): float(np.mean([p[str(k)] for p in per.values()])) for k in grid.shots}
    return mean, per


@dataclass
class StudyRun:
    """Where and how a study runs (the grid is data; this is the rest)."""

    grid: Grid
    out: Path
    cells_dir: Path
    dataset: str = "tiny-imagenet"
    data_dir: Optional[str] = None
    transfers: list = field(default_factory=list)
    seed: int = 0
    device: str = "auto"
    say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)

    def cell_dir(self, cell: Cell) -> Path:
        return self.cells_dir / self.grid.cell_key(cell, self.dataset, self.seed)

    def settings(self, cell: Cell, resume: bool, overwrite: bool):
        from ..train.loop import TrainSettings
        from ..train.recipes import get_recipe

        g = self.grid
        fields = g.train_fields(cell)
        return TrainSettings(**vars(get_recipe(g.recipe))).replace(
            **fields, dataset=self.dataset, data_dir=self.data_dir, seed=self.seed, device=self.device,
            out=str(self.cell_dir(cell)), resume=resume, overwrite=overwrite, eval_every=cell.steps,
            save_every=min(g.save_every, cell.steps), progress=False)


def run_cell(sr: StudyRun, cell: Cell) -> dict:
    """Pre-train (or continue) one cell, evaluate it and write its row; returns the row."""
    from ..checkpoint.io import TRAIN_STATE, _existing, load
    from ..train.loop import CHECKPOINT, train

    d = sr.cell_dir(cell)
    resume = (_existing(d / CHECKPOINT) / TRAIN_STATE).exists()
    # nothing to keep in a cell killed before its first checkpoint: it starts again
    s = sr.settings(cell, resume=resume, overwrite=not resume)
    sr.say(f"vitkit study: {'continuing' if resume else 'training'} {cell.model} on {cell.fraction:.0%} of "
           f"{sr.dataset}, {cell.steps} steps -> {d}")
    t0 = time.perf_counter()
    r = train(s)
    loaded = load(r["checkpoint"])
    fpi = int(loaded.model.flops_per_image())
    mean, per = fewshot(loaded, sr.transfers, sr.grid)
    row = {"study": sr.grid.name, "model": cell.model, "family": cell.family, "fraction": cell.fraction,
           "pretrain_images": r["n_train"], "steps": cell.steps, "batch_size": s.batch_size,
           "images_seen": cell.steps * s.batch_size, "image_size": loaded.config.image_size,
           "params": int(loaded.model.num_params()), "flops_per_image": fpi,
           "pretrain_flops": pretrain_flops(fpi, cell.steps, s.batch_size),
           "top1": r["top1"], "top1_images": r["n"], "fewshot": mean, "fewshot_per_transfer": per,
           "fewshot_draws": sr.grid.draws, "transfer_train": sr.grid.transfer_train,
           "transfer_test": sr.grid.transfer_test, "dataset": sr.dataset, "seed": sr.seed,
           "cell": d.name, "checkpoint": str(Path(r["checkpoint"]).resolve()),
           "seconds": round(time.perf_counter() - t0, 1)}
    write_json_atomic(d / ROW, row)
    return row


def run_study(sr: StudyRun, on_row: Optional[Callable[[list], None]] = None) -> list:
    """Every cell of the grid, in order: finished ones read back, the others run. results.json is rewritten (and
    `on_row(rows)` called, e.g. to redraw the figures) after each cell, so an interrupted study leaves the rows of
    the cells it finished."""
    sr.out.mkdir(parents=True, exist_ok=True)
    sr.cells_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, cell in enumerate(sr.grid.cells):
        row = read_row(sr.cell_dir(cell) / ROW)
        if row is None:
            row = run_cell(sr, cell)
        else:
            sr.say(f"vitkit study: cell {i + 1}/{len(sr.grid.cells)} done already ({row['cell']})")
        rows.append(row)
        write_json_atomic(sr.out / RESULTS, rows)
        if on_row is not None:
            on_row(rows)
    return rows
