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

Section 4.6 ("mpp"): one model, three arms -- masked patch prediction pre-training (recipe mpp), supervised
pre-training on the same images for the same steps (recipe pretrain, the data-scale study's own cell), and no
pre-training at all (scratch: the model's random initialisation, the weights the supervised run starts from).
Each arm is evaluated by the linear few-shot probe as in the other studies and by fine-tuning top-1 on the first
transfer set: `finetune_steps` steps of `finetune_batch_size` with `--init` from the arm's checkpoint, trained on
the transfer_train images the few-shot pool is drawn from and evaluated on the transfer_test test images the
probe is evaluated on (both a fixed random sample, `--sample-train/--sample-test`: the first N of a class-sorted
folder would be its first classes). Same steps, batch, images, image size and warmup (warmup_frac of the steps)
for every arm. The probe reads the same features for every arm, the [class] token's pre-logits; masked patch
prediction trains the patch tokens' outputs and never the [class] token's, so its few-shot numbers may understate
it (the paper evaluates MPP by fine-tuning only).

Optimiser of the fine-tunes: the pre-trained arms use recipe `finetune` (the paper's fine-tuning, appendix
B.1.1: SGD with momentum, lr 0.01, no weight decay), the scratch arm recipe `default` (AdamW, lr 1e-3, weight
decay 0.05, label smoothing 0.1). The paper's SGD recipe is made to move pre-trained weights a little; from a
random initialisation SGD at 0.01 trains a ViT slowly, so with it scratch would be handicapped by its optimiser
rather than by its missing pre-training, and the gaps to it overstated. `default` is vitkit's recipe for
training from scratch on small data, chosen on four small folders (benchmarks/README.md, "The default recipe:
what decided it"): the strongest from-scratch baseline at hand, given the same steps and images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field

FAMILIES = ("vit", "resnet", "hybrid")
# supervised: classification pre-training (Grid.recipe); mpp: masked patch prediction (Grid.mpp_recipe);
# scratch: none, the model's random initialisation
ARMS = ("supervised", "mpp", "scratch")


def family_of(model: str) -> str:
    """vit, resnet (BiT) or hybrid (R...+ViT), from the variant name."""
    name = model.strip().lower()
    if name.startswith("bit"):
        return "resnet"
    return "hybrid" if "+vit" in name else "vit"


@dataclass(frozen=True)
class Cell:
    """One pre-training run: `model` on the first `fraction` of each class of the pre-training set for `steps`
    optimizer steps, by classification (arm "supervised") or masked patch prediction ("mpp"); or no pre-training
    ("scratch", fraction 0 and steps 0: the random initialisation)."""

    model: str
    fraction: float
    steps: int
    arm: str = "supervised"

    def __post_init__(self):
        if self.arm not in ARMS:
            raise ValueError(f"Cell.arm must be one of {ARMS}, got {self.arm!r}")
        if (self.arm == "scratch") != (self.steps == 0):
            raise ValueError(f"a {self.arm} cell with {self.steps} steps: only a scratch cell has no steps")

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
    mpp_recipe: str = "mpp"  # the pre-training recipe of "mpp" cells
    # Fine-tuning evaluation (the mpp study; 0: none): steps of finetune_batch_size on the first transfer set's
    # transfer_train images, top-1 on its transfer_test images; the recipes and why are in the module docstring.
    finetune_steps: int = 0
    finetune_batch_size: int = 128
    finetune_recipe: str = "finetune"  # from a pre-trained checkpoint
    scratch_recipe: str = "default"  # from the random initialisation

    def recipe_of(self, cell: Cell) -> str:
        """The pre-training recipe of `cell` (a scratch cell has none; its model is the supervised recipe's
        initialisation)."""
        return self.mpp_recipe if cell.arm == "mpp" else self.recipe

    def train_fields(self, cell: Cell) -> dict:
        """The TrainSettings fields that define `cell`'s run (all but where it runs and where it is written); for a
        scratch cell those that define its random initialisation."""
        if cell.arm == "scratch":
            return dict(model=cell.model, image_size=self.image_size, **self.extra)
        return dict(model=cell.model, train_fraction=None if cell.fraction >= 1 else cell.fraction,
                    steps=cell.steps, image_size=self.image_size, batch_size=self.batch_size, lr=self.lr,
                    warmup_steps=max(1, round(self.warmup_frac * cell.steps)), limit_test=self.limit_test,
                    **self.extra)

    def cell_key(self, cell: Cell, dataset: str, seed: int) -> str:
        """The cell's directory name: readable, plus a hash of everything that defines the run, so that two studies
        (or two calls with other settings) share a cell exactly when it is the same run. A supervised cell's key
        is the same as before arms existed (the data-scale and compute studies' cells are reused); the other arms
        hash their arm too, so an mpp or scratch cell never shares a directory with a supervised one."""
        defining = dict(self.train_fields(cell), dataset=dataset, seed=seed)
        if cell.arm != "scratch":
            defining["recipe"] = self.recipe_of(cell)
        if cell.arm != "supervised":
            defining["arm"] = cell.arm
        digest = hashlib.sha256(json.dumps(defining, sort_keys=True).encode()).hexdigest()[:8]
        slug = re.sub(r"[^A-Za-z0-9]+", "-", cell.model).strip("-")
        if cell.arm == "scratch":
            return f"{slug}-scratch-{digest}"
        arm = "" if cell.arm == "supervised" else f"{cell.arm}-"
        return f"{slug}-{arm}{cell.fraction * 100:g}pct-{cell.steps}steps-{digest}"

    def finetune_fields(self) -> dict:
        """The TrainSettings fields (beyond the recipe) of every cell's fine-tuning run on the first transfer set."""
        steps = self.finetune_steps
        return dict(steps=steps, batch_size=self.finetune_batch_size, image_size=self.image_size,
                    warmup_steps=max(1, round(self.warmup_frac * steps)), sample_train=self.transfer_train,
                    sample_test=self.transfer_test)

    def finetune_recipe_of(self, cell: Cell) -> str:
        return self.scratch_recipe if cell.arm == "scratch" else self.finetune_recipe

    def finetune_key(self, cell: Cell, transfer: str, seed: int) -> str:
        """The fine-tuning run's directory name inside the cell's: the transfer set's name, the steps, and a hash
        of the recipe, its fields and the seed (the cell, hence the checkpoint it starts from, is the parent)."""
        defining = dict(self.finetune_fields(), recipe=self.finetune_recipe_of(cell), transfer=transfer, seed=seed)
        digest = hashlib.sha256(json.dumps(defining, sort_keys=True).encode()).hexdigest()[:8]
        slug = re.sub(r"[^A-Za-z0-9]+", "-", transfer).strip("-")
        return f"finetune-{slug}-{self.finetune_steps}steps-{digest}"

    def replace(self, **changes) -> "Grid":
        return dataclasses.replace(self, **changes)


def _cells(models, fractions, steps) -> tuple:
    return tuple(Cell(m, f, s) for m in models for s in steps for f in fractions)


# The full settings (32 px, ViT-Mini/BiT-R14/R+ViT-Mini sized, Tiny ImageNet): what docs/reproduction.md runs. Cells
# run in the order listed, the cheap families first; the order does not change what a cell is (its key).
# The quick ones: the testing-size variants at 32 px, a handful of steps, a few hundred evaluation images -- a
# smoke run of the whole pipeline, not a measurement.
GRIDS: dict[tuple[str, bool], Grid] = {
    ("data-scale", False): Grid(
        "data-scale", _cells(["ViT-Mini/4", "R+ViT-Mini/8", "BiT-R14x1-S"], (0.1, 0.25, 0.5, 1.0), (1000,)),
        image_size=32, batch_size=128, limit_test=None),
    ("data-scale", True): Grid(
        "data-scale", _cells(["ViT-testing/4", "BiT-testing", "R+ViT-testing/8"], (0.1, 0.2), (30,)),
        image_size=32, batch_size=16, save_every=10, limit_test=500, draws=2, transfer_train=300,
        transfer_test=300),
    # Two sizes per family and two training lengths each, a factor 2 apart as the paper's 7 and 14 epochs; the
    # 1000-step cells of the smaller sizes are the data-scale study's 100 % cells (the same runs: share --cells, or
    # --reuse its results.json). The 500-step cells come first, so an interrupted study has a complete short line,
    # and within a length the cheaper families first (a BiT cell takes several times a ViT cell's CPU time).
    # BiT-R26x1-S has no 1000-step cell: at 5.6e14 FLOPs it would lie beyond every ViT and hybrid cell (the largest,
    # ViT-Ti/4 at 1000 steps, is 2.8e14, the FLOPs of BiT-R26x1-S at 500), so it would add no equal-compute
    # comparison, for 1.5 h of one core.
    ("compute", False): Grid(
        "compute", _cells(["ViT-Mini/4", "ViT-Ti/4", "R+ViT-Mini/8", "R+ViT-Ti/8", "BiT-R14x1-S", "BiT-R26x1-S"],
                          (1.0,), (500,)) +
        _cells(["ViT-Mini/4", "ViT-Ti/4", "R+ViT-Mini/8", "R+ViT-Ti/8", "BiT-R14x1-S"], (1.0,), (1000,)) +
        # Added after the first 11 cells: at 500-1000 steps the smaller model trained longer beats the larger one
        # at equal FLOPs in every family, so each family's best use of compute is its small model trained longer.
        # ViT-Mini/4 at 2000 steps (2.8e14) is then the ViT to hold against BiT-R14x1-S at 1000 (3.4e14), the
        # best cell of the first 11; the hybrid's 2000-step cell costs 5 minutes.
        _cells(["R+ViT-Mini/8", "ViT-Mini/4"], (1.0,), (2000,)),
        image_size=32, batch_size=128, limit_test=None),
    ("compute", True): Grid(
        "compute", _cells(["ViT-testing/4", "BiT-testing", "R+ViT-testing/8"], (1.0,), (15, 30)),
        image_size=32, batch_size=16, save_every=10, limit_test=500, draws=2, transfer_train=300,
        transfer_test=300),
    # Section 4.6: ViT-Mini/4 on all of Tiny ImageNet for 1000 steps of 128, by masked patch prediction or by
    # classification (the data-scale study's ViT cell at 100 %: the same run when --cells is shared), or not at all;
    # each fine-tuned for 500 steps of 128 on the 2000 transfer training images (about 32 epochs).
    ("mpp", False): Grid(
        "mpp", (Cell("ViT-Mini/4", 1.0, 1000, "mpp"), Cell("ViT-Mini/4", 1.0, 1000),
                Cell("ViT-Mini/4", 0.0, 0, "scratch")),
        image_size=32, batch_size=128, limit_test=None, finetune_steps=500, finetune_batch_size=128),
    ("mpp", True): Grid(
        "mpp", (Cell("ViT-testing/4", 1.0, 30, "mpp"), Cell("ViT-testing/4", 1.0, 30),
                Cell("ViT-testing/4", 0.0, 0, "scratch")),
        image_size=32, batch_size=16, save_every=10, limit_test=500, draws=2, transfer_train=300,
        transfer_test=300, finetune_steps=20, finetune_batch_size=16),
}


def get_grid(study: str, quick: bool) -> Grid:
    return GRIDS[(study, quick)]
