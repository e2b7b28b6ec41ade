"""Training recipes: named sets of defaults, one TOML file each in vitkit/recipes/ (the one source of their values).
Every field can be overridden by the `vitkit train` flag of the same name (``--weight-decay`` sets
``weight_decay``, ...); the loop (loop.py) is the same for all of them.

* ``default``  -- what ``vitkit train`` with no arguments runs (ViT-Mini/7 on the embedded Fashion-MNIST subset,
  AdamW, 5 epochs); vitkit/recipes/default.toml is also where the Recipe dataclass (and so TrainSettings) takes
  its field defaults from.
* ``pretrain`` -- paper section 4.1 / Table 3 (upstream training): AdamW, decoupled weight decay 0.1, linear decay.
* ``finetune`` -- section 3.2 / appendix B.1.1: SGD with momentum, no weight decay, clipping, cosine.
* ``mpp``      -- section 4.6 / appendix B.1.2: self-supervised masked patch prediction.

Each file starts with what the recipe is for and why its values; a recipe file holds only what differs from
default.toml. A config file (`vitkit train --config FILE`, the published runs in configs/) has the same form with
any TrainSettings key and `recipe = "NAME"`: `read_settings_file` reads both, and refuses an unknown key or a
value the flag would refuse in one line naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..data.names import DATASETS_HELP
from ..errors import UserError
from ..flags import Number, Pair, flag, value_problem

WHAT, LONG, OPT, REG = "what to train", "how long, how big", "optimisation", "regularisation and augmentation"
FRACTION = Number(float, min=0, max=1)
RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"  # vitkit/recipes/<name>.toml (package data)


def _toml(path: Path, what: str) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path}: is a directory, expected a TOML file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {path}: not a TOML file ({e})") from None


D = _toml(RECIPE_DIR / "default.toml", "recipe")  # the default recipe's values: the field defaults below


@dataclass
class Recipe:
    """Defaults for a kind of run. Each field is the `vitkit train` flag of the same name (vitkit/flags.py)."""

    name: str = flag("default", cli=False)  # chosen with --recipe
    model: str = flag(D["model"], "variant, e.g. ViT-Mini/7, ViT-S/16, R+ViT-Mini/8 (see `vitkit models`)",
                      group=WHAT)
    objective: str = flag(D["objective"], "what is learnt: classify the labels, or mpp, masked patch prediction (paper "
                          "section 4.6; self-supervised, labels unused; the checkpoint is an ordinary ViT)",
                          choices=("classify", "mpp"), group=WHAT)
    dataset: str = flag(D["dataset"], DATASETS_HELP, group=WHAT)
    image_size: Optional[int] = flag(None, "input resolution (default: the dataset's, or the checkpoint's with "
                                     "--init)", type=Number(int, min=1), group=WHAT)
    classifier: Optional[str] = flag(None, "[class] token or global average pooling (default: the variant's, token)",
                                     choices=("token", "gap"), group=WHAT)
    pos_embed: Optional[str] = flag(None, "position embedding (default: the variant's, learned)",
                                    choices=("learned", "learned2d", "sincos2d", "none"), group=WHAT)
    dropout: float = flag(D["dropout"], "dropout rate", type=FRACTION, group=WHAT)
    drop_path: float = flag(D["drop_path"], "stochastic depth: the rate at the last block, rising linearly from 0 at the first "
                            "(ViT only)", type=FRACTION, group=WHAT)
    # For training from scratch on CPU "erf" is the faster one: PyTorch's CPU kernel for the tanh form is slower
    # (measured in benchmarks/README.md). A pre-trained (--init) model keeps the GELU it was trained with.
    gelu: Optional[str] = flag(None, "GELU of a fresh model: tanh approximation (the official code's; the "
                               "variants' default) or exact erf (faster on CPU)", choices=("tanh", "erf"), group=WHAT)
    epochs: float = flag(D["epochs"], "passes over the training set", type=Number(float, above=0), group=LONG,
                       resumable=True)
    steps: Optional[int] = flag(None, "optimizer steps (wins over --epochs)", type=Number(int, min=1), group=LONG,
                                resumable=True)
    batch_size: int = flag(D["batch_size"], "global batch size, the same for any number of processes and accumulation steps",
                           type=Number(int, min=1), group=LONG)
    optimizer: str = flag(D["optimizer"], "adamw (decoupled weight decay) or sgd (momentum)", choices=("adamw", "sgd"),
                          group=OPT)
    lr: float = flag(D["lr"], "peak learning rate", type=Number(float, above=0), group=OPT)
    betas: tuple = flag(tuple(D["betas"]), "Adam betas", type=Pair(Number(float, min=0, below=1),
                                                               Number(float, min=0, below=1), "B1,B2"), group=OPT)
    momentum: float = flag(D["momentum"], "SGD momentum", type=Number(float, min=0, below=1), group=OPT)
    weight_decay: float = flag(D["weight_decay"], "decoupled (AdamW-style) weight decay", type=Number(float, min=0), group=OPT)
    layer_decay: float = flag(D["layer_decay"], "layer-wise lr decay D: Transformer block i of L at lr x D^(L+1-i), the embedding "
                              "at lr x D^(L+1), the head at lr (ViT and hybrid; 1: off)", type=Number(float, above=0, max=1),
                              metavar="D", group=OPT)
    warmup_steps: Optional[int] = flag(None, "linear warmup steps (wins over --warmup-epochs)",
                                       type=Number(int, min=0), group=OPT)
    warmup_epochs: float = flag(D["warmup_epochs"], "linear warmup, in epochs", type=Number(float, min=0), group=OPT)
    schedule: str = flag(D["schedule"], "decay to zero after the warmup", choices=("cosine", "linear", "constant"),
                         group=OPT)
    clip_grad: Optional[float] = flag(None, "clip the global gradient norm to this (0: off)",
                                      type=Number(float, min=0), group=OPT)
    # regularisation / augmentation (vitkit.data.transforms.BatchAugment)
    label_smoothing: float = flag(D["label_smoothing"], "label smoothing", type=Number(float, min=0, below=1), group=REG)
    mixup: float = flag(D["mixup"], "mixup alpha (0: off)", type=Number(float, min=0), group=REG)
    cutmix: float = flag(D["cutmix"], "cutmix alpha (0: off)", type=Number(float, min=0), group=REG)
    randaugment: Optional[tuple] = flag(None, "RandAugment: N ops per image at magnitude M (0-10 scale)",
                                        type=Pair(Number(int, min=0, max=14), Number(float, min=0, max=30), "N,M"),
                                        group=REG)
    random_erase: float = flag(D["random_erase"], "erase one random box with noise in a fraction P of the images (0: off)",
                               type=FRACTION, metavar="P", group=REG)
    crop: str = flag(D["crop"], "random crop: pad-and-crop (small images), random-resized-crop (photos) or none",
                     choices=("pad", "rrc", "none"), group=REG)
    crop_pad: Optional[int] = flag(None, "padding for --crop pad (default: image size / 8)", type=Number(int, min=0),
                                   group=REG)
    flip: bool = flag(D["flip"], "horizontal flips, where the dataset allows them (not for digits)", group=REG)
    precision: str = flag(D["precision"], "bf16 autocast, fp32, or auto (default): bf16 where the hardware has it (CUDA, "
                          "CPUs with AVX512-BF16 or AMX), else fp32", choices=("auto", "fp32", "bf16"),
                          group="execution", resumable=True)

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **changes)


def read_settings_file(path, cls, what: str = "--config") -> dict:
    """The settings in a TOML file: {field: value}, each key a flag field of `cls` (or `recipe`, the name of the
    recipe to start from, where `cls` has that field as `name`), each value of the flag's type within its range
    and choices (flags.value_problem), lists made tuples. Anything else is a UserError naming the file and the key:
    "--config run.toml: batch_size: expected an integer >= 1, got 0"."""
    path = Path(path).expanduser()
    data = _toml(path, what)
    names = {f.name for f in dataclasses.fields(cls) if f.metadata.get("flag", {}).get("cli", True)}
    out = {}
    for key, value in data.items():
        field = "name" if key == "recipe" and "name" not in names and hasattr(cls, "name") else key
        if field not in names and field != "name":
            raise UserError(f"{what} {path}: unknown key {key!r} (the keys are vitkit train's flags with '_' for "
                            f"'-', see vitkit train --help{', and recipe' if cls is not Recipe else ''})")
        if isinstance(value, list):
            value = tuple(value)
        if field == "name":
            if cls is Recipe:
                raise UserError(f"{what} {path}: recipe: a recipe file is named by its file name")
            if value not in RECIPES:
                raise UserError(f"{what} {path}: recipe: expected one of {', '.join(RECIPES)}, got {value!r}")
        else:
            problem = value_problem(cls, field, value)
            if problem:
                raise UserError(f"{what} {path}: {key}: {problem}")
        out[field] = value
    return out


def _read_recipes() -> dict:
    """Every vitkit/recipes/*.toml as a Recipe named by its file, default first: default.toml's values are the
    field defaults, so each other file is what its recipe changes."""
    files = sorted(RECIPE_DIR.glob("*.toml"), key=lambda p: (p.stem != "default", p.stem))
    return {p.stem: Recipe(name=p.stem, **read_settings_file(p, Recipe, "recipe")) for p in files}


RECIPES: dict[str, Recipe] = {}
RECIPES.update(_read_recipes())


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; valid: {', '.join(RECIPES)}")
    return RECIPES[name]
