"""Settings that fit the data: what `vitkit train` chooses for a user's image folder when a flag is not given.

A recipe's fixed number of epochs and the default model's 28 px input suit Fashion-MNIST, not a folder of 300
photos: 5 epochs of 300 images are 10 optimizer steps, and 28 px throws most of a photo away. So for
`imagefolder:` datasets the settings the user did not give are chosen from facts about the images:

* resolution: from scratch, 32 px for small images (characters, icons, CIFAR-like; median side <= 48 px) and
  64 px for photos; fine-tuning, the checkpoint's own resolution (its position embeddings were learned there;
  `--image-size` picks another, interpolated as in section 3.2);
* model, from scratch: the paper's hybrid with vitkit's small root block (`R+ViT-Mini/8`): its convolutional
  stem is the inductive bias that small data needs (section 4.3), trained at AdamW lr 3e-4 (`SCRATCH_LR`; the
  default recipe's 1e-3 measured 4.6-7.2 points lower on 100- and 244-image photo sets; a named --recipe keeps its
  own);
* length: enough optimizer steps whatever the dataset size (`MIN_STEPS` from scratch, `MIN_STEPS_FINETUNE`
  fine-tuning), as a number of steps rather than epochs, and a batch no larger than an eighth of the training set
  so that an epoch is several steps (but at least `MIN_BATCH`, and never more than the training images: a folder
  of 5 gets batches of 4);
* the images counted are the ones the run will train on: the folder's usable images (the dataset's own rule,
  `ImageFolderDataset`; corrupt and non-image files are not counted) cut as --train-fraction, --sample-train and
  --limit-train cut them. A folder the dataset refuses (one class, no readable images, a class without any) is
  refused before anything is planned or said;
* channels: an image folder is decoded to RGB (3 channels) from scratch, as a pre-trained checkpoint expects it,
  and to the checkpoint's channels when fine-tuning; when every image is greyscale the first line says that the
  grey is repeated to 3 equal channels (there is no flag for a 1-channel model from a folder);
* augmentation: horizontal flips only for colour photos (a mirrored character is another character, or none),
  pad-and-crop shifts for everything, and, fine-tuning on colour photos, RandAugment (`FINETUNE_RANDAUGMENT`):
  at magnitude 5, the shipped models' pre-training augmentation, it gained 2-3 points fine-tuning on each photo set
  tried, and lost 2.3 training from scratch on 10 images per class, so from scratch it stays off;
* regularisation, fine-tuning a ViT or hybrid on colour photos: stochastic depth 0.2 (`FINETUNE_DROP_PATH`) with
  the stronger RandAugment(2, 9) gained 1.3 points on the mean of three small photo sets over three seeds (0.1: 0.8;
  docs/transfer.md, "Stochastic depth and RandAugment(2, 9) when fine-tuning"). Those sets have 100-1,000 images;
  on 5,000 it lost 1.6 and on 20,000 4.4, so above `FINETUNE_STRONG_MAX_IMAGES` fine-tuning keeps RandAugment(2, 5)
  and no stochastic depth;
* time: the planned steps should fit `--time-budget` minutes on the machine at hand (default 6: with decoding and
  evaluations a default run stays under 10 minutes). Machines differ by 3x and more (a CPU without bf16
  instructions, fewer cores), so before the run `apply` times training steps of the planned model on random images
  (`seconds_per_image`: warm-up, then the median of up to five timed steps). The fit is proportional and stable
  (`fit_budget`): a run estimated within `BUDGET_TOLERANCE` (5 %) over the budget is kept as planned; beyond
  that the STEPS are cut in proportion to budget / estimate, on a grid of `BUDGET_GRID` steps per halving (each
  9 % below the last, rounded down to two significant figures), keeping the batch; only where the steps would go
  below a quarter of the minimum is the batch cut, in proportion too (to a multiple of 8, not below
  `BUDGET_MIN_BATCH`). So a few percent of timing noise changes nothing, except where a measurement lands
  within that noise of a grid line: then the two plans differ by one grid step, never by half; a 10 % slower step
  gives about 10 % fewer steps of the same batch. The first line says the run was fitted, with the estimate, and
  that `--time-budget 0` gives the unfitted run. Given --steps, --epochs or --batch-size are never changed.

Every planned value can be repeated anywhere: the run directory's run.json and the `--json` summary carry the
exact command (`TrainSettings.command()`, vitkit/train/loop.py), which gives each planned value as a flag, so that
the plan has nothing left to choose and no step is timed when it runs again.

`plan()` is a pure function of the given settings, the facts and the measured step cost, and returns the changes
with one reason each;
`vitkit train` prints them in its first line. docs/transfer.md has the measurements behind the numbers here.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

# the settings plan() may choose (TrainSettings.command() always gives these as flags for an image folder, epochs
# among them so that a repeated run's length is given and not fitted again)
PLANNED = ("image_size", "model", "lr", "batch_size", "epochs", "steps", "eval_every", "flip", "crop",
           "randaugment", "drop_path")
MIN_STEPS = 1200  # optimizer steps for a small dataset, from scratch
MIN_STEPS_FINETUNE = 600  # and fine-tuning a pre-trained model, which starts from features that already work
EVALS = 4  # evaluations in a run of the minimum length (the last one at the end)
MAX_EVALS = 50  # a run longer than this many epochs is evaluated EVALS times, not after every epoch
MAX_BATCH = 128
MIN_BATCH = 8  # the smallest planned batch, where the training set has that many images
SMALL_SIDE = 48  # median image side (px) at or below which images are "small" (32 px model input)
SCRATCH_MODEL = "R+ViT-Mini/8"
SCRATCH_LR = 3e-4  # AdamW from scratch on a small folder (docs/transfer.md, "From scratch: learning rate 3e-4")
FINETUNE_RANDAUGMENT = (2, 9.0)  # N ops at magnitude M, fine-tuning on colour images
FINETUNE_DROP_PATH = 0.2  # stochastic depth at the last block, fine-tuning a ViT or hybrid on colour images
FINETUNE_STRONG_MAX_IMAGES = 2000  # the two above up to this many training images (gained at 100-1,000, lost at 5,000)
FINETUNE_RANDAUGMENT_LARGE = (2, 5.0)  # above it: the pre-training augmentation, and no stochastic depth
BUDGET_TOLERANCE = 0.05  # a run estimated up to this fraction over --time-budget is kept as planned
BUDGET_GRID = 8  # fitted step counts per halving: each 2^(-1/8), 9 %, below the last
TIMED_STEPS, TIMING_S = 5, 3.0  # seconds_per_image: the median of up to 5 timed steps, within about 3 s
BUDGET_MIN_BATCH = 32  # a batch cut to fit the budget (steps at their floor) stays at or above this


@dataclass(frozen=True)
class DataFacts:
    """What the plan looks at: counts, colour, and the median image side of (a sample of) the training images."""

    n_train: int  # the usable training images the run will use
    num_classes: int
    grey: bool  # every sampled image is greyscale (or the dataset has one channel)
    median_side: Optional[int]  # None: unknown
    skipped: int = 0  # files in the class folders that are not usable images (corrupt, not an image type, ...)
    left_out: int = 0  # usable images that --train-fraction / --sample-train / --limit-train leave out


def facts_of_folder(root, sample: int = 200, seed: int = 0, train_fraction: Optional[float] = None,
                    sample_train: Optional[int] = None, limit_train: Optional[int] = None) -> DataFacts:
    """Facts about `root/train/<class>/*`: the usable images counted by the dataset itself (ImageFolderDataset,
    which raises the UserError that a folder it refuses deserves), cut as the --train-fraction, --sample-train and
    --limit-train values given would cut them, and colour and size from the headers of up to `sample` of them.

    Cost: indexing opens every file's header and checks it is complete, as the run does again when it loads the
    folder (about 0.1 ms per JPEG and 0.2 ms per PNG on a warm disk: some 10-20 s for 100,000 files; nothing is
    decoded)."""
    from PIL import Image

    from ..data.datasets import first_per_class
    from ..data.imagefolder import ImageFolderDataset

    ds = ImageFolderDataset(root, "train", image_size=32, channels=3, warn=False)  # the run warns about skipped files
    usable = n = len(ds)
    if train_fraction is not None and train_fraction < 1:
        n = len(first_per_class(ds.labels.numpy(), train_fraction))
    for cap in (sample_train, limit_train):
        if cap is not None:
            n = min(n, cap)
    picked = random.Random(seed).sample(ds.paths, min(sample, len(ds.paths)))
    sides, grey = [], True
    for p in picked:
        try:
            with Image.open(p) as im:
                sides.append(min(im.size))
                grey &= im.mode in ("1", "L", "LA", "I", "I;16", "F")
        except (OSError, ValueError):
            continue
    sides.sort()
    return DataFacts(n, ds.num_classes, grey and bool(sides), sides[len(sides) // 2] if sides else None,
                     skipped=len(ds.skipped), left_out=usable - n)


def _two_figures(x: float) -> int:
    """`x` rounded down to two significant figures (1100.4 -> 1100, 925.2 -> 920, 87.6 -> 87)."""
    if x < 10:
        return int(x)
    unit = 10 ** (int(math.floor(math.log10(x))) - 1)
    return int(x // unit * unit)


def fit_budget(steps: int, batch: int, seconds_per_image: float, budget_s: float, min_steps: int,
               batch_fixed: bool = False) -> tuple[int, int]:
    """(steps, batch) whose training time, at `seconds_per_image`, fits `budget_s`, cut in proportion and on a grid
    so that timing noise does not move it:

    * estimated within BUDGET_TOLERANCE over the budget: unchanged;
    * else the steps go down the grid steps * 2^(-k/BUDGET_GRID), rounded down to two significant figures, to the
      first k whose time fits budget_s * (1 + BUDGET_TOLERANCE); the batch is kept. The grid lines sit at fixed
      ratios estimate / budget, so every measurement between two lines gives the same plan, and neighbouring
      plans differ by one grid step (9 %);
    * where that would be fewer than `min_steps`, the steps are `min_steps` and the batch goes down the same grid to
      the first line that fits (rounded down to a multiple of 8, not below BUDGET_MIN_BATCH nor the batch
      itself); not at all if `batch_fixed`. A run that does not fit even then is left at that: the budget is a
      target, not a limit the run enforces.
    """
    allowed = budget_s * (1 + BUDGET_TOLERANCE)
    over = steps * batch * seconds_per_image / allowed
    if over <= 1:
        return steps, batch
    fitted = _two_figures(steps * _grid_line(over))
    if fitted >= min_steps:
        return fitted, batch
    steps = min(steps, min_steps)
    over = steps * batch * seconds_per_image / allowed
    if batch_fixed or over <= 1:
        return steps, batch
    floor = min(batch, BUDGET_MIN_BATCH)  # the batch on the same grid, so noise moves it no more than the steps
    return steps, max(floor, int(batch * _grid_line(over)) // 8 * 8)


def _grid_line(over: float) -> float:
    """The factor 2^(-k/BUDGET_GRID) of the first grid line at or below 1 / `over` (`over` > 1: the estimate over
    the budget): every estimate between two lines gives the same factor."""
    return 2 ** (-math.ceil(BUDGET_GRID * math.log2(over) - 1e-9) / BUDGET_GRID)


def plan(given: set, recipe_batch: int, recipe_epochs: float, facts: DataFacts, fine_tuning: bool = False,
         checkpoint_size: Optional[int] = None, checkpoint_blocks: Optional[bool] = None, steps: Optional[int] = None,
         epochs: Optional[float] = None, seconds_per_image: Optional[float] = None,
         budget_s: Optional[float] = None, default_recipe: bool = True) -> tuple[dict, list[str]]:
    """(settings to change, one reason per change) for the settings whose names are not in `given` (the flags the
    user gave, by TrainSettings field name); recipe_batch/recipe_epochs are the recipe's own defaults;
    checkpoint_size: the resolution of the checkpoint being fine-tuned, where known; checkpoint_blocks: whether it has
    Transformer blocks (stochastic depth needs them; None: unknown); steps/epochs: the values of
    --steps/--epochs where the user gave them; seconds_per_image: a training step's measured cost per image, and
    budget_s the time the planned steps should fit (None: no limit); default_recipe: no --recipe was named (a named
    recipe keeps its learning rate)."""
    if facts.n_train == 0:
        return {}, []
    changes, why = {}, []
    if "image_size" not in given:
        if fine_tuning:  # the loop uses the checkpoint's own resolution; nothing to change
            why.append(f"{checkpoint_size} px (the checkpoint's resolution)" if checkpoint_size
                       else "the checkpoint's resolution")
        elif facts.median_side is not None:
            size = 32 if facts.median_side <= SMALL_SIDE else 64
            changes["image_size"] = size
            why.append(f"{size} px (median image side {facts.median_side} px)")
    if "model" not in given and not fine_tuning:
        changes["model"] = SCRATCH_MODEL
        why.append(f"{SCRATCH_MODEL} (a convolutional stem for small data)")
    if default_recipe and not fine_tuning and "lr" not in given:
        changes["lr"] = SCRATCH_LR
        why.append(f"lr {SCRATCH_LR:g} (from scratch on small data)")
    batch = recipe_batch
    if "batch_size" not in given:
        n = facts.n_train
        batch = min(MAX_BATCH, max(MIN_BATCH, 2 ** int(math.log2(max(n // 8, 1)))), 2 ** int(math.log2(n)))
        if batch != recipe_batch:
            changes["batch_size"] = batch
            if 8 * batch <= n:
                why.append(f"batch {batch} (an eighth of the {n} images or less)")
            elif batch == MIN_BATCH:
                why.append(f"batch {batch} (the smallest planned batch; {n} images)")
            else:
                why.append(f"batch {batch} (no more than the {n} training images)")
    if not given & {"steps", "epochs"}:  # the length is a default: at least `least` steps, within the budget
        least = MIN_STEPS_FINETUNE if fine_tuning else MIN_STEPS
        default = math.ceil(recipe_epochs * (facts.n_train // batch))
        n, fit = max(least, default), ""
        full = n * batch * (seconds_per_image or 0)
        fitted = (fit_budget(n, batch, seconds_per_image, budget_s, least // 4, "batch_size" in given)
                  if budget_s and seconds_per_image else (n, batch))
        if fitted != (n, batch):
            was_n, was_b = n, batch
            n, b = fitted
            fit = (f", fitted to --time-budget {budget_s / 60:g} min ({was_n} steps of {was_b} would take "
                   f"~{full / 60:.1f} min here at a measured {1000 * seconds_per_image:.2f} ms per training image; "
                   f"--time-budget 0 runs them)")
            if b != batch:
                batch = changes["batch_size"] = b
                why = [w for w in why if not w.startswith("batch ")]
        if n != default or fit:
            changes["steps"] = n
            ep = n * batch / facts.n_train
            why.append(f"{n} steps of {batch} ({ep:.{0 if ep >= 10 else 1}f} epochs){fit}")
            if "eval_every" not in given:  # every epoch would be dozens of passes over the test split
                changes["eval_every"] = max(n // EVALS, 1)
                why.append(f"evaluated every {changes['eval_every']} steps")
    if "eval_every" not in given and "eval_every" not in changes:
        # the user chose the length: evaluating after every epoch of a small set would be hundreds of passes over
        # its (often much larger) test split
        per_epoch = max(facts.n_train // batch, 1)
        total = steps or math.ceil((epochs or recipe_epochs) * per_epoch)
        if total // per_epoch > MAX_EVALS:
            changes["eval_every"] = max(total // EVALS, 1)
            why.append(f"evaluated every {changes['eval_every']} steps")
    if facts.grey and "flip" not in given:
        changes["flip"] = False
        why.append("no flips (greyscale images: characters?)")
    if "crop" not in given:
        changes["crop"] = "pad"
        why.append("pad-and-crop shifts")
    if fine_tuning and not facts.grey:
        strong = facts.n_train <= FINETUNE_STRONG_MAX_IMAGES  # small enough for the stronger regularisation
        if "randaugment" not in given:
            changes["randaugment"] = FINETUNE_RANDAUGMENT if strong else FINETUNE_RANDAUGMENT_LARGE
            n, m = changes["randaugment"]
            why.append(f"RandAugment {n},{m:g} (fine-tuning on colour images"
                       + ("" if strong else f"; more than {FINETUNE_STRONG_MAX_IMAGES} images: no stochastic depth")
                       + ")")
        if strong and checkpoint_blocks and "drop_path" not in given:
            changes["drop_path"] = FINETUNE_DROP_PATH
            why.append(f"stochastic depth {FINETUNE_DROP_PATH:g} (fine-tuning on colour images)")
    return changes, why


def checkpoint_facts(spec) -> tuple[Optional[int], Optional[bool]]:
    """(input resolution, whether it has Transformer blocks) of a checkpoint to fine-tune, without loading or
    downloading it: from a native checkpoint folder's config.json, or a pre-trained name's listing; None where that
    says nothing (a file, a URL: the loop still uses the checkpoint's own resolution, and no stochastic depth is
    planned for a model of unknown family)."""
    from ..checkpoint.hub import lookup
    from ..checkpoint.io import read_config
    from ..errors import UserError
    from ..resnet import is_bit_name

    try:
        model = read_config(Path(spec).expanduser())["model"]
        return int(model["image_size"]), model.get("family") != "bit"  # BiTConfig's marker
    except (UserError, OSError, KeyError, TypeError, ValueError):  # not a native folder: a file, a name, a URL
        pass
    entry = lookup(str(spec))
    if entry is None:
        return None, None
    return entry.image_size, not is_bit_name(entry.variant)


def seconds_per_image(s, num_classes: int, batch: int) -> Optional[float]:
    """The cost per image of a training step (forward, backward; not the optimizer's update) of the model that `s`
    trains, at its precision and on its device, on random images (a batch of at most 32): after warm-up steps (two,
    or one where a step takes over a second), the median of up to TIMED_STEPS timed steps, fewer where they would
    take more than TIMING_S seconds (at least two). The median of several warm steps moves by a percent or two
    between runs on an idle machine, where the minimum of two moved by more. None where it cannot be measured (the
    run itself will report the error). The run reseeds everything before it starts, so this leaves no trace in it."""
    import statistics
    import time

    import torch
    import torch.nn.functional as F

    from ..runtime import autocast, resolve_device, resolve_precision

    try:
        device = resolve_device(s.device)
        if s.init:
            from ..checkpoint.io import load
            from ..checkpoint.surgery import adapt

            model = adapt(load(s.init), num_classes=num_classes, image_size=s.image_size).model
        else:
            from ..model import create_model

            model = create_model(s.model, num_classes=num_classes, image_size=s.image_size)
        size = getattr(model.cfg, "image_size", None) or s.image_size or 224
        chans = getattr(model.cfg, "in_chans", 3)
        model.to(device).train()
        precision = resolve_precision(s.precision, device)
        b = max(1, min(batch, 32))
        x = torch.randn(b, chans, size, size, device=device)
        y = torch.randint(0, num_classes, (b,), device=device)

        def step() -> float:
            t0 = time.perf_counter()
            with autocast(device, precision):
                loss = F.cross_entropy(model(x).float(), y)
            loss.backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return time.perf_counter() - t0

        if step() < 1.0:
            step()
        times = [step(), step()]
        while len(times) < TIMED_STEPS and sum(times) < TIMING_S:
            times.append(step())
        return statistics.median(times) / b
    except Exception:  # noqa: BLE001 - an estimate only; the run checks the same things and says what is wrong
        return None


def apply(s, given: set, recipe, say=None):
    """`s` with the plan's changes for an image-folder dataset (a new run only: a resumed run keeps its own
    settings); `say(line)` gets the one line that tells what was chosen and why. A folder the dataset refuses is
    refused here, before that line."""
    if s.resume or not s.dataset.lower().startswith("imagefolder:"):
        return s
    facts = facts_of_folder(s.dataset.split(":", 1)[1], train_fraction=s.train_fraction,
                            sample_train=s.sample_train, limit_train=s.limit_train)
    batch = s.batch_size if "batch_size" in given else recipe.batch_size
    size, blocks = checkpoint_facts(s.init) if s.init else (None, None)
    args = dict(fine_tuning=bool(s.init), default_recipe=recipe.name == "default", checkpoint_size=size,
                checkpoint_blocks=blocks,
                steps=s.steps if "steps" in given else None, epochs=s.epochs if "epochs" in given else None)
    changes, why = plan(given, batch, recipe.epochs, facts, **args)
    if not given & {"steps", "epochs"} and s.time_budget:  # a default length: does it fit the budget here?
        planned = s.replace(**changes)
        spi = seconds_per_image(planned, facts.num_classes, planned.batch_size)
        if spi is not None:
            changes, why = plan(given, batch, recipe.epochs, facts, **args, seconds_per_image=spi,
                                budget_s=60 * s.time_budget)
    if why and say is not None:
        say(f"vitkit train: {facts.n_train} images in {facts.num_classes} classes ({_what_was_counted(s, facts)}): "
            f"chose {'; '.join(why)}; any flag given wins")
    return s.replace(**changes) if changes else s


def _what_was_counted(s, facts: DataFacts) -> str:
    """The first line's parenthesis: the median side, the colour and how the grey reaches the model, and the
    files not counted."""
    said = [f"median side {facts.median_side} px"]
    if facts.grey:
        chans = checkpoint_channels(s.init) if s.init else 3
        said.append("greyscale, fed as the checkpoint's 1 channel" if chans == 1 else
                    "greyscale, repeated to the 3 channels of an RGB model" if chans == 3 else
                    "greyscale, fed in the checkpoint's channels (repeated to 3 for an RGB one)")
    if facts.skipped:
        said.append(f"{facts.skipped} unusable file{'s' if facts.skipped > 1 else ''} not counted")
    if facts.left_out:
        cuts = [f for f, v in (("--train-fraction", s.train_fraction), ("--sample-train", s.sample_train),
                               ("--limit-train", s.limit_train)) if v is not None]
        said.append(f"{facts.left_out} more left out by {' and '.join(cuts)}")
    return ", ".join(said)


def checkpoint_channels(spec) -> Optional[int]:
    """The input channels of a checkpoint to fine-tune, from a native checkpoint folder's config.json; None where
    that is not at hand (a file, a name, a URL)."""
    from ..checkpoint.io import read_config
    from ..errors import UserError

    try:
        return int(read_config(Path(spec).expanduser())["model"].get("in_chans", 3))
    except (UserError, OSError, KeyError, TypeError, ValueError, AttributeError):
        return None
