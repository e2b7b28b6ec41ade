"""Running a study: every cell of its grid pre-trained, evaluated and recorded, resumable cell by cell.

A cell is a run directory CELLS/<key> (grids.Grid.cell_key) holding the training loop's own run (checkpoint,
metrics.jsonl) and, once evaluated, row.json -- written atomically, so a row exists exactly when the cell is
done. A second call skips finished cells, continues an interrupted cell from its last checkpoint (the loop's
--resume, exact), and restarts a cell that was killed before its first checkpoint. results.json (the rows of the
grid, in grid order) and the figures are rewritten after every cell.

FLOPs convention: pretrain_flops = 3 x flops_per_image x images seen (steps x batch size). flops_per_image is the
pre-training forward pass of one image, 2 x the multiply-adds of its matmuls and convolutions (norms, softmax and
activations not counted): model.flops_per_image() for classification; for masked patch prediction
MPPModel.flops_per_image(), the ViT without its classifier plus the colour head on the corrupted half of the
patch tokens. The backward pass is counted as twice the forward. A scratch cell is not pre-trained: 0. Evaluation,
few-shot feature extraction and fine-tuning are not pre-training and are not counted.

Fine-tuning (grids with finetune_steps, the mpp study): after its row, each cell's checkpoint (a scratch cell's
random initialisation, CELLS/<key>/init) is fine-tuned on the first transfer set in its own run directory
CELLS/<key>/<finetune key>, resumable the same way, which holds finetune.json once done. The study's row is the
cell's row plus the arm and those fields, so a supervised cell shared with another study keeps its row.json.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import UserError
from .grids import Cell, Grid

ROW = "row.json"
FINETUNE_ROW = "finetune.json"
RESULTS = "results.json"
INIT = "init"  # a scratch cell's checkpoint: the random initialisation it is evaluated and fine-tuned from


def pretrain_flops(flops_per_image: int, steps: int, batch_size: int) -> int:
    """Pre-training FLOPs of a run: forward + backward (= 3 x forward) for every image seen."""
    return 3 * int(flops_per_image) * int(steps) * int(batch_size)


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def read_row(path: Path, key: str = "pretrain_flops") -> Optional[dict]:
    """A finished cell's row (or fine-tuning's, with its `key`), or None (none, or one cut short: then it is
    evaluated again)."""
    try:
        row = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return row if isinstance(row, dict) and key in row else None


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
    reuse: list = field(default_factory=list)  # other studies' results.json files whose identical cells are taken
    say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)

    def cell_dir(self, cell: Cell) -> Path:
        return self.cells_dir / self.grid.cell_key(cell, self.dataset, self.seed)

    def settings(self, cell: Cell, resume: bool, overwrite: bool):
        """The pre-training run of `cell` (a scratch cell: the settings its random initialisation is made with)."""
        from ..train.loop import TrainSettings
        from ..train.recipes import get_recipe

        g = self.grid
        s = TrainSettings(**vars(get_recipe(g.recipe_of(cell)))).replace(
            **g.train_fields(cell), dataset=self.dataset, data_dir=self.data_dir, seed=self.seed, device=self.device,
            out=str(self.cell_dir(cell)), resume=resume, overwrite=overwrite, progress=False)
        if cell.arm == "scratch":
            return s
        return s.replace(eval_every=cell.steps, save_every=min(g.save_every, cell.steps))

    def checkpoint(self, cell: Cell) -> Path:
        """What the cell is evaluated and fine-tuned from: its run's final checkpoint, or a scratch cell's
        initialisation."""
        from ..train.loop import CHECKPOINT

        return self.cell_dir(cell) / (INIT if cell.arm == "scratch" else CHECKPOINT)

    def finetune_dir(self, cell: Cell) -> Path:
        return self.cell_dir(cell) / self.grid.finetune_key(cell, self.finetune_transfer().name, self.seed)

    def finetune_transfer(self) -> Transfer:
        if not self.transfers:
            raise UserError("fine-tuning needs a transfer set (--transfer SPEC)")
        return self.transfers[0]

    def finetune_settings(self, cell: Cell, resume: bool, overwrite: bool):
        """Fine-tuning `cell`'s checkpoint on the first transfer set: its transfer_train images (the few-shot
        pool), evaluated on its transfer_test images (the few-shot test images); grids.py says why which recipe."""
        from ..train.loop import TrainSettings
        from ..train.recipes import get_recipe

        g, t, steps = self.grid, self.finetune_transfer(), self.grid.finetune_steps
        return TrainSettings(**vars(get_recipe(g.finetune_recipe_of(cell)))).replace(
            **g.finetune_fields(), model=cell.model, init=str(self.checkpoint(cell)), dataset=t.spec,
            data_dir=t.data_dir, seed=self.seed, device=self.device, out=str(self.finetune_dir(cell)),
            resume=resume, overwrite=overwrite, eval_every=steps, save_every=min(g.save_every, steps),
            progress=False)


def _continues(d: Path) -> bool:
    """Whether the run in `d` has a checkpoint to continue from (else it starts again: a run killed before its
    first checkpoint has nothing to keep)."""
    from ..checkpoint.io import TRAIN_STATE, _existing
    from ..train.loop import CHECKPOINT

    return (_existing(d / CHECKPOINT) / TRAIN_STATE).exists()


def pretraining_flops_per_image(model, cell: Cell) -> int:
    """The forward FLOPs of one pre-training image of `cell` (the FLOPs convention above)."""
    if cell.arm == "mpp":
        from ..mpp import MPPModel

        return int(MPPModel(model).flops_per_image())
    return int(model.flops_per_image())


def run_cell(sr: StudyRun, cell: Cell) -> dict:
    """Pre-train (or continue) one cell, evaluate it and write its row; returns the row. A scratch cell saves its
    random initialisation instead (the weights the supervised run of the same model starts from)."""
    from ..checkpoint.io import load, save_checkpoint
    from ..train.loop import initial_model, train

    d, g = sr.cell_dir(cell), sr.grid
    t0 = time.perf_counter()
    if cell.arm == "scratch":
        sr.say(f"vitkit study: {cell.model} from scratch (no pre-training): its initialisation -> {d / INIT}")
        d.mkdir(parents=True, exist_ok=True)
        model, preprocess, class_names = initial_model(sr.settings(cell, resume=False, overwrite=False))
        save_checkpoint(d / INIT, model, preprocess, class_names)
        r = None
    else:
        resume = _continues(d)
        what = "masked patch prediction" if cell.arm == "mpp" else "classification"
        sr.say(f"vitkit study: {'continuing' if resume else 'training'} {cell.model} ({what}) on "
               f"{cell.fraction:.0%} of {sr.dataset}, {cell.steps} steps -> {d}")
        r = train(sr.settings(cell, resume=resume, overwrite=not resume))
    loaded = load(sr.checkpoint(cell))
    fpi = pretraining_flops_per_image(loaded.model, cell)
    mean, per = fewshot(loaded, sr.transfers, g)
    batch = g.batch_size if r is not None else None
    row = {"study": g.name, "model": cell.model, "family": cell.family, "arm": cell.arm, "fraction": cell.fraction,
           "pretrain_images": r["n_train"] if r is not None else 0, "steps": cell.steps, "batch_size": batch,
           "images_seen": cell.steps * (batch or 0), "image_size": loaded.config.image_size,
           "params": int(loaded.model.num_params()), "flops_per_image": fpi,
           "pretrain_flops": pretrain_flops(fpi, cell.steps, batch or 0),
           # upstream top-1 is a classifier's: the supervised arm's only
           "top1": r["top1"] if cell.arm == "supervised" else None,
           "top1_images": r["n"] if cell.arm == "supervised" else None, "fewshot": mean, "fewshot_per_transfer": per,
           "fewshot_draws": g.draws, "transfer_train": g.transfer_train, "transfer_test": g.transfer_test,
           "dataset": sr.dataset, "seed": sr.seed, "cell": d.name,
           "checkpoint": str(sr.checkpoint(cell).resolve()), "seconds": round(time.perf_counter() - t0, 1)}
    if cell.arm == "mpp":  # the held-out masked patch prediction: colour accuracy of the corrupted patches
        row.update(mpp_top1=r["top1"], mpp_top5=r["top5"], mpp_loss=r["loss"], mpp_eval_images=r["n"])
    write_json_atomic(d / ROW, row)
    return row


def finetune_cell(sr: StudyRun, cell: Cell) -> dict:
    """Fine-tune the cell's checkpoint on the first transfer set (or continue, or read back a finished one) and
    write finetune.json; returns its fields: finetune_top1 is the run's final evaluation of its checkpoint."""
    from ..train.loop import train

    d = sr.finetune_dir(cell)
    done = read_row(d / FINETUNE_ROW, "finetune_top1")
    if done is not None:
        return done
    g, resume = sr.grid, _continues(d)
    recipe = g.finetune_recipe_of(cell)
    sr.say(f"vitkit study: {'continuing' if resume else 'fine-tuning'} {cell.model} ({cell.arm}) on "
           f"{sr.finetune_transfer().name}, {g.finetune_steps} steps, recipe {recipe} -> {d}")
    t0 = time.perf_counter()
    r = train(sr.finetune_settings(cell, resume=resume, overwrite=not resume))
    ft = {"finetune_top1": r["top1"], "finetune_top5": r["top5"], "finetune_transfer": sr.finetune_transfer().name,
          "finetune_recipe": recipe, "finetune_steps": g.finetune_steps, "finetune_batch_size": g.finetune_batch_size,
          "finetune_train_images": r["n_train"], "finetune_test_images": r["n"],
          "finetune_checkpoint": str(Path(r["checkpoint"]).resolve()),
          "finetune_seconds": round(time.perf_counter() - t0, 1)}
    write_json_atomic(d / FINETUNE_ROW, ft)
    return ft


def recorded_rows(path: Path) -> dict:
    """The finished rows of an earlier call's results.json, by cell name ({} if there is none or it is unreadable).
    They let a study continue on another machine from its committed results.json alone: the cells' runs
    (checkpoints) need not travel."""
    try:
        rows = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    if not isinstance(rows, list):
        return {}
    return {r["cell"]: r for r in rows if isinstance(r, dict) and "cell" in r and "pretrain_flops" in r}


def reused_rows(sr: StudyRun) -> dict:
    """The rows of `sr.reuse` (other studies' results.json) that stand for cells of this grid: the same cell
    (its name hashes everything that defines the run) evaluated on the same transfer sets."""
    names = {sr.cell_dir(c).name for c in sr.grid.cells}
    transfers = sorted(t.name for t in sr.transfers)
    out = {}
    for path in sr.reuse:
        for name, row in recorded_rows(Path(path)).items():
            if name in names and sorted(row.get("fewshot_per_transfer") or {}) == transfers:
                out[name] = row
    return out


LOCK = ".lock"
POLL_SECONDS = 30.0  # how often a study waiting for a cell another process trains looks again


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def lock_holder(d: Path) -> Optional[int]:
    """The pid of the live process on this machine that holds cell `d`'s lock, or None (no lock, or a stale one:
    its process is gone)."""
    try:
        owner = json.loads((d / LOCK).read_text())
        pid, host = int(owner["pid"]), owner["host"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    if host != socket.gethostname():  # another machine's lock on a shared disk: trust it
        return pid
    return pid if _alive(pid) else None


def try_lock(d: Path) -> bool:
    """Take cell `d`'s lock (created exclusively: two processes cannot both get it), replacing a stale one. False
    when a live process holds it."""
    d.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(d / LOCK, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if lock_holder(d) is not None:
                return False
            (d / LOCK).unlink(missing_ok=True)  # stale: its process died without releasing it
            continue
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname()}, f)
        return True
    return False


def unlock(d: Path) -> None:
    (d / LOCK).unlink(missing_ok=True)


def run_study(sr: StudyRun, on_row: Optional[Callable[[list], None]] = None) -> list:
    """Every cell of the grid, in order: finished ones read back, the others run; then, if the grid fine-tunes,
    its fine-tuning likewise. results.json is rewritten (and `on_row(rows)` called, e.g. to redraw the figures)
    after each cell, so an interrupted study leaves the rows of the cells it finished.

    Two studies may share --cells and run at the same time: a cell is trained under a lock file in its directory,
    and a cell another live process is training is left for last, then waited for (its row is read back) -- or
    trained here if that process died meanwhile."""
    sr.out.mkdir(parents=True, exist_ok=True)
    sr.cells_dir.mkdir(parents=True, exist_ok=True)
    recorded = reused_rows(sr)
    recorded.update(recorded_rows(sr.out / RESULTS))
    cells = sr.grid.cells
    rows: dict[int, dict] = {}

    def record(i: int, row: dict) -> None:
        rows[i] = row
        ordered = [rows[k] for k in sorted(rows)]
        # the recorded rows not reached yet stay in the file, so an interrupted call loses none of them
        seen = {r["cell"] for r in ordered}
        write_json_atomic(sr.out / RESULTS, ordered + [r for k, r in recorded.items() if k not in seen])
        if on_row is not None:
            on_row(ordered)

    def attempt(i: int, cell: Cell) -> bool:
        d = sr.cell_dir(cell)
        done = recorded.get(d.name)
        if done is not None and (not sr.grid.finetune_steps or "finetune_top1" in done) and not (d / ROW).exists():
            # a finished row kept in DIR/results.json (e.g. committed) while the cell's run is gone: keep it
            sr.say(f"vitkit study: cell {i + 1}/{len(cells)} recorded in {sr.out / RESULTS} ({done['cell']})")
            record(i, done)
            return True
        if not try_lock(d):
            return False
        try:
            record(i, _cell_row(sr, cell, i))
        finally:
            unlock(d)
        return True

    busy = []
    for i, cell in enumerate(cells):
        if not attempt(i, cell):
            sr.say(f"vitkit study: cell {i + 1}/{len(cells)} is being trained by process "
                   f"{lock_holder(sr.cell_dir(cell))}; coming back to it after the others ({sr.cell_dir(cell)})")
            busy.append(i)
    for i in busy:
        said = False
        while not attempt(i, cells[i]):
            if not said:
                sr.say(f"vitkit study: waiting for cell {i + 1}/{len(cells)}, which process "
                       f"{lock_holder(sr.cell_dir(cells[i]))} is training ({sr.cell_dir(cells[i])})")
                said = True
            time.sleep(POLL_SECONDS)
    ordered = [rows[k] for k in sorted(rows)]
    write_json_atomic(sr.out / RESULTS, ordered)  # the grid complete: rows of cells no longer in it are dropped
    return ordered


def _cell_row(sr: StudyRun, cell: Cell, i: int) -> dict:
    """A cell's row: read back if finished, else trained and evaluated; with the grid's fine-tuning added."""
    row = read_row(sr.cell_dir(cell) / ROW)
    if row is None:
        row = run_cell(sr, cell)
    else:
        sr.say(f"vitkit study: cell {i + 1}/{len(sr.grid.cells)} done already ({row['cell']})")
    if sr.grid.finetune_steps:  # the cell's own row stays as it is (another study may share it)
        row = {**row, "arm": cell.arm, **finetune_cell(sr, cell)}
    return row
