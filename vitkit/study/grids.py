"""The studies' grids as data: which models are pre-trained on how much data for how long, and how each is evaluated.

Paper section 4.3. Fig. 3/4 ("data-scale"): ViT, BiT ResNet and hybrid pre-trained on nested, class-balanced subsets
of increasing size, evaluated by linear few-shot transfer and upstream top-1. Fig. 5 ("compute"): transfer accuracy
against pre-training FLOPs for each family at several sizes and training lengths.

Same number of optimizer steps, not the same epochs, for every subset size: each model then gets the same
pre-training compute on every subset, so the only thing that changes along a data-scale line is how many distinct
images it sees -- the paper's "intrinsic model properties" with the same hyper-parameters for all settings. Equal
epochs would give the 10 % subset a tenth of the compute and confound data size with compute. Warmup is a number
of steps for the same reason (an epoch-based warmup would differ by subset).

Every cell is evaluated at its final checkpoint (the paper early-stops on validation accuracy; here no choice is
made on the data the top-1 is reported on).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field

FAMILIES = ("vit", "resnet", "hybrid")


def family_of(model: str) -> str:
    """vit, resnet (BiT) or hybrid (R...+ViT), from the variant name."""
    name = model.strip().lower()
    if name.startswith("bit"):
        return "resnet"
    return "hybrid" if "+vit" in name else "vit"


@dataclass(frozen=True)
class Cell:
    """One pre-training run: `model` on the first `fraction` of each class of the pre-training set for `steps`
    optimizer steps."""

    model: str
    fraction: float
    steps: int

    @property
    def family(self) -> str:
        return family_of(self.model)


@dataclass(frozen=True)
class Grid:
    """A study: its cells and the settings every cell shares (training and evaluation)."""

    name: str
    cells: tuple
    image_size: int
    batch_size: int
    lr: float = 1e-3
    warmup_frac: float = 0.1  # warmup steps = this x the cell's steps
    save_every: int = 200  # checkpoints inside a cell (an interrupted cell resumes from the last one)
    limit_test: int | None = None  # upstream (pre-training set) validation images for top-1; None: all
    shots: tuple = (5, 10)
    draws: int = 3  # few-shot draws (seeds 0..draws-1) per shot count
    transfer_train: int = 2000  # images sampled from each transfer set's train split (the few-shot pool)
    transfer_test: int = 2000  # and from its test split
    recipe: str = "pretrain"
    extra: dict = field(default_factory=dict)  # further TrainSettings fields shared by every cell

    def train_fields(self, cell: Cell) -> dict:
        """The TrainSettings fields that define `cell`'s run (all but where it runs and where it is written)."""
        return dict(model=cell.model, train_fraction=None if cell.fraction >= 1 else cell.fraction,
                    steps=cell.steps, image_size=self.image_size, batch_size=self.batch_size, lr=self.lr,
                    warmup_steps=max(1, round(self.warmup_frac * cell.steps)), limit_test=self.limit_test,
                    **self.extra)

    def cell_key(self, cell: Cell, dataset: str, seed: int) -> str:
        """The cell's directory name: readable, plus a hash of everything that defines the run, so that two studies
        (or two calls with other settings) share a cell exactly when it is the same run."""
        defining = dict(self.train_fields(cell), recipe=self.recipe, dataset=dataset, seed=seed)
        digest = hashlib.sha256(json.dumps(defining, sort_keys=True).encode()).hexdigest()[:8]
        slug = re.sub(r"[^A-Za-z0-9]+", "-", cell.model).strip("-")
        return f"{slug}-{cell.fraction * 100:g}pct-{cell.steps}steps-{digest}"

    def replace(self, **changes) -> "Grid":
        return dataclasses.replace(self, **changes)


def _cells(models, fractions, steps) -> tuple:
    return tuple(Cell(m, f, s) for m in models for s in steps for f in fractions)


# The full settings (32 px, ViT-Mini/BiT-R14/R+ViT-Mini sized, Tiny ImageNet): what docs/reproduction.md runs.
# The quick ones: the testing-size variants at 32 px, a handful of steps, a few hundred evaluation images -- a
# smoke run of the whole pipeline, not a measurement.
GRIDS: dict[tuple[str, bool], Grid] = {
    ("data-scale", False): Grid(
        "data-scale", _cells(["ViT-Mini/4", "BiT-R14x1-S", "R+ViT-Mini/8"], (0.1, 0.25, 0.5, 1.0), (1000,)),
        image_size=32, batch_size=128, limit_test=None),
    ("data-scale", True): Grid(
        "data-scale", _cells(["ViT-testing/4", "BiT-testing", "R+ViT-testing/8"], (0.1, 0.2), (30,)),
        image_size=32, batch_size=16, save_every=10, limit_test=500, draws=2, transfer_train=300,
        transfer_test=300),
    # Two sizes per family and two training lengths each (the paper's 7 and 14 epochs); the 1000-step cells at 100 %
    # are the data-scale study's own runs when both studies share --cells.
    ("compute", False): Grid(
        "compute", _cells(["ViT-Mini/4", "ViT-Ti/4", "BiT-R14x1-S", "BiT-R26x1-S", "R+ViT-Mini/8"], (1.0,),
                          (1000, 2000)),
        image_size=32, batch_size=128, limit_test=None),
    ("compute", True): Grid(
        "compute", _cells(["ViT-testing/4", "BiT-testing", "R+ViT-testing/8"], (1.0,), (15, 30)),
        image_size=32, batch_size=16, save_every=10, limit_test=500, draws=2, transfer_train=300,
        transfer_test=300),
}


def get_grid(study: str, quick: bool) -> Grid:
    return GRIDS[(study, quick)]
