"""Training recipes: small dataclasses of defaults. Every field can be overridden by the `vitkit train` flag of
the same name (``--weight-decay`` sets ``weight_decay``, ...); the loop (loop.py) is the same for all of them.

* ``default``  -- what ``vitkit train`` with no arguments runs: ViT-Mini/7 on the embedded 30k/2k Fashion-MNIST
  subset, AdamW (lr 1e-3, wd 0.05) + 1 warmup epoch + cosine, batch 128, 5 epochs, flips, label smoothing 0.1,
  bf16 autocast where the hardware has bf16 (fp32 elsewhere), explicit attention on CPU: a few minutes on a laptop
  CPU. Why these values (the variants tried, and their accuracies) is in benchmarks/README.md, "The default recipe:
  what decided it".
* ``pretrain`` -- paper section 4.1 / Table 3 (upstream training): Adam with beta1 0.9, beta2 0.999, weight decay
  0.1, linear warmup then linear decay. The paper's "high weight decay" is applied *decoupled* from the gradient,
  AdamW-style (torch.optim.AdamW: ``p -= lr * wd * p`` each step, as big_vision does it); it is not an L2 term
  added to the loss, which Adam would rescale per parameter. The paper's batch is 4096 with 10k warmup steps; on
  one machine the defaults below are scaled down (batch 256, 2 warmup epochs) -- pass ``--batch-size`` and
  ``--warmup-steps`` to reproduce the paper's settings.
* ``finetune`` -- section 3.2 / appendix B.1.1: SGD with momentum 0.9, no weight decay, gradients clipped at global
  norm 1, cosine decay after a linear warmup, zero-initialised new head, optionally a higher resolution
  (``--image-size``; position embeddings are 2D-interpolated by vitkit.checkpoint.surgery.adapt_model). The paper
  uses batch 512 and 500 warmup steps and picks the learning rate from {0.001, 0.003, 0.01, 0.03}; the default
  here is 0.01 with batch 128 and half an epoch of warmup, since small datasets have few steps.
* ``mpp``      -- section 4.6 / appendix B.1.2: self-supervised masked patch prediction (``--objective mpp``, see
  vitkit/train/objectives.py and vitkit/mpp.py) on any image dataset, labels unused; then fine-tune the checkpoint
  (``--init``) or probe it (``vitkit fewshot``) like any other. The paper: Adam, base learning rate 2e-4 at batch
  4096, 10k warmup steps, cosine decay, 1M steps on JFT. Scaled down here as ``pretrain`` is (AdamW lr 1e-3, batch
  256, 2 warmup epochs), with cosine decay and no crops: zero-padded crop borders would be free black patches.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from ..data.names import DATASETS_HELP
from ..flags import Number, Pair, flag

WHAT, LONG, OPT, REG = "what to train", "how long, how big", "optimisation", "regularisation and augmentation"
FRACTION = Number(float, min=0, max=1)


@dataclass
class Recipe:
    """Defaults for a kind of run. Each field is the `vitkit train` flag of the same name (vitkit/flags.py)."""

    name: str = flag("default", cli=False)  # chosen with --recipe
    model: str = flag("ViT-Mini/7", "variant, e.g. ViT-Mini/7, ViT-S/16, R+ViT-Mini/8 (see `vitkit models`)",
                      group=WHAT)
    objective: str = flag("classify", "what is learnt: classify the labels, or mpp, masked patch prediction (paper "
                          "section 4.6; self-supervised, labels unused; the checkpoint is an ordinary ViT)",
                          choices=("classify", "mpp"), group=WHAT)
    dataset: str = flag("embedded", DATASETS_HELP, group=WHAT)
    image_size: Optional[int] = flag(None, "input resolution (default: the dataset's, or the checkpoint's with "
                                     "--init)", type=Number(int, min=1), group=WHAT)
    classifier: Optional[str] = flag(None, "[class] token or global average pooling (default: the variant's, token)",
                                     choices=("token", "gap"), group=WHAT)
    pos_embed: Optional[str] = flag(None, "position embedding (default: the variant's, learned)",
                                    choices=("learned", "learned2d", "sincos2d", "none"), group=WHAT)
    dropout: float = flag(0.0, "dropout rate", type=FRACTION, group=WHAT)
    drop_path: float = flag(0.0, "stochastic depth: the rate at the last block, rising linearly from 0 at the first "
                            "(ViT only)", type=FRACTION, group=WHAT)
    # For training from scratch on CPU "erf" is the faster one: PyTorch's CPU kernel for the tanh form is slower
    # (measured in benchmarks/README.md). A pre-trained (--init) model keeps the GELU it was trained with.
    gelu: Optional[str] = flag(None, "GELU of a fresh model: tanh approximation (the official code's; the "
                               "variants' default) or exact erf (faster on CPU)", choices=("tanh", "erf"), group=WHAT)
    epochs: float = flag(5, "passes over the training set", type=Number(float, above=0), group=LONG,
                       resumable=True)
    steps: Optional[int] = flag(None, "optimizer steps (wins over --epochs)", type=Number(int, min=1), group=LONG,
                                resumable=True)
    batch_size: int = flag(128, "global batch size, the same for any number of processes and accumulation steps",
                           type=Number(int, min=1), group=LONG)
    optimizer: str = flag("adamw", "adamw (decoupled weight decay) or sgd (momentum)", choices=("adamw", "sgd"),
                          group=OPT)
    lr: float = flag(1e-3, "peak learning rate", type=Number(float, above=0), group=OPT)
    betas: tuple = flag((0.9, 0.999), "Adam betas", type=Pair(Number(float, min=0, below=1),
                                                               Number(float, min=0, below=1), "B1,B2"), group=OPT)
    momentum: float = flag(0.9, "SGD momentum", type=Number(float, min=0, below=1), group=OPT)
    weight_decay: float = flag(0.05, "decoupled (AdamW-style) weight decay", type=Number(float, min=0), group=OPT)
    layer_decay: float = flag(1.0, "layer-wise lr decay D: Transformer block i of L at lr x D^(L+1-i), the embedding "
                              "at lr x D^(L+1), the head at lr (ViT and hybrid; 1: off)", type=Number(float, above=0, max=1),
                              metavar="D", group=OPT)
    warmup_steps: Optional[int] = flag(None, "linear warmup steps (wins over --warmup-epochs)",
                                       type=Number(int, min=0), group=OPT)
    warmup_epochs: float = flag(1.0, "linear warmup, in epochs", type=Number(float, min=0), group=OPT)
    schedule: str = flag("cosine", "decay to zero after the warmup", choices=("cosine", "linear", "constant"),
                         group=OPT)
    clip_grad: Optional[float] = flag(None, "clip the global gradient norm to this (0: off)",
                                      type=Number(float, min=0), group=OPT)
    # regularisation / augmentation (vitkit.data.transforms.BatchAugment)
    label_smoothing: float = flag(0.1, "label smoothing", type=Number(float, min=0, below=1), group=REG)
    mixup: float = flag(0.0, "mixup alpha (0: off)", type=Number(float, min=0), group=REG)
    cutmix: float = flag(0.0, "cutmix alpha (0: off)", type=Number(float, min=0), group=REG)
    randaugment: Optional[tuple] = flag(None, "RandAugment: N ops per image at magnitude M (0-10 scale)",
                                        type=Pair(Number(int, min=0, max=14), Number(float, min=0, max=30), "N,M"),
                                        group=REG)
    random_erase: float = flag(0.0, "erase one random box with noise in a fraction P of the images (0: off)",
                               type=FRACTION, metavar="P", group=REG)
    # The default run is too short for crops to pay off (see the recipe notes above).
    crop: str = flag("none", "random crop: pad-and-crop (small images), random-resized-crop (photos) or none",
                     choices=("pad", "rrc", "none"), group=REG)
    crop_pad: Optional[int] = flag(None, "padding for --crop pad (default: image size / 8)", type=Number(int, min=0),
                                   group=REG)
    flip: bool = flag(True, "horizontal flips, where the dataset allows them (not for digits)", group=REG)
    precision: str = flag("auto", "bf16 autocast, fp32, or auto (default): bf16 where the hardware has it (CUDA, "
                          "CPUs with AVX512-BF16 or AMX), else fp32", choices=("auto", "fp32", "bf16"),
                          group="execution", resumable=True)

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **changes)


RECIPES: dict[str, Recipe] = {
    "default": Recipe(),
    "pretrain": Recipe(name="pretrain", optimizer="adamw", lr=1e-3, betas=(0.9, 0.999), weight_decay=0.1,
                       schedule="linear", warmup_epochs=2.0, batch_size=256, epochs=30, clip_grad=1.0, crop="pad",
                       label_smoothing=0.0),
    "mpp": Recipe(name="mpp", objective="mpp", optimizer="adamw", lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05,
                  schedule="cosine", warmup_epochs=2.0, batch_size=256, epochs=30, clip_grad=1.0,
                  label_smoothing=0.0),
    "finetune": Recipe(name="finetune", optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=0.0, clip_grad=1.0,
                       schedule="cosine", warmup_epochs=0.5, batch_size=128, epochs=10, label_smoothing=0.0),
}


def get_recipe(name: str) -> Recipe:
    from ..errors import UserError

    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; valid: {', '.join(RECIPES)}")
    return RECIPES[name]
