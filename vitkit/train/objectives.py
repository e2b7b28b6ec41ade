"""What the training loop optimises: the `objective` setting (`vitkit train --objective`, or a recipe's default).

* ``classify`` -- the labels, by (soft-target) cross-entropy of the ViT's logits; evaluation is top-1/top-5.
  With `--teacher CKPT[,CKPT...]` it distils (``Distill``): the target is mixed with the teachers' class
  probabilities on the same augmented batch.
* ``mpp`` -- masked patch prediction (paper section 4.6, appendix B.1.2; vitkit/mpp.py), self-supervised: the
  labels are never read. The trained module is MPPModel(vit), the ViT plus a [mask] embedding and a 512-way
  colour head; the checkpoint written is the ViT alone, an ordinary one that `--init`, `vitkit fewshot` and the
  rest take as they take any other, with the [mask] embedding, the head and their optimizer state kept in
  train_state.pt for --resume. Evaluation is the held-out MPP loss and colour accuracy on the test split's
  corrupted patches (reported as "top1"/"top5"/"loss" so the loop's bookkeeping is the same), with a corruption
  drawn from a fixed seed, so that every evaluation of a run sees the same corrupted patches.

The loop asks an objective for four things: the module to optimise (`module`), the model input of an augmented
uint8 batch (`inputs`), a micro-batch's loss (`loss`) and the test-split evaluation (`evaluate_counts`).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError

OBJECTIVES = ("classify", "mpp")
EVAL_SEED = 0  # the MPP corruption of the test split, the same at every evaluation


class Classify:
    name = "classify"

    def check(self, s) -> None:
        pass

    def module(self, core: nn.Module, preprocess) -> nn.Module:
        return core

    def inputs(self, images: torch.Tensor, preprocess) -> torch.Tensor:
        return preprocess.normalize(images)

    def loss(self, model, x: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        from ..data.transforms import soft_target_cross_entropy

        return soft_target_cross_entropy(model(x).float(), targets)

    def extra_state(self, trained: nn.Module) -> Optional[dict]:
        return None

    def load_extra_state(self, trained: nn.Module, state: Optional[dict]) -> None:
        pass

    def evaluate_counts(self, model, dataset, indices, batch_size, precision, preprocess, device) -> dict:
        from ..eval.evaluate import evaluate_counts

        return evaluate_counts(model, dataset, indices, batch_size, precision, preprocess, device)

    def summarize(self, counts: dict, class_names) -> dict:
        from ..eval.evaluate import summarize

        return summarize(counts, class_names)


class Distill(Classify):
    """``classify`` with teachers (`vitkit train --teacher CKPT[,CKPT...] --distill-weight W`): knowledge
    distillation (Hinton et al. 2015, arXiv 1503.02531, at temperature 1), each student image's target being

        (1 - W) * its label (smoothed, mixed as --label-smoothing/--mixup/--cutmix say) + W * p_teachers(image)

    where p_teachers is the mean class probability of the teachers on exactly the augmented image the student sees
    (the "consistent" teaching of Beyer et al. 2022, arXiv 2106.05237, big_vision's distillation). Several teachers
    make an ensemble, whose mean probability is usually better than each member's; distilling it gives one model
    of the student's size. The loss is the soft-target cross-entropy, i.e. the KL divergence to that target plus a
    constant. Teachers run in eval mode without gradients, inside the step's autocast; each reads the uint8 batch
    through its own preprocessing (size, channels, normalisation), so it may be another architecture or size; it
    must have the dataset's classes in the dataset's order (checked by count here and by name where both have
    names). Only the student is saved; resuming needs the same teachers (--teacher is part of the run)."""

    def __init__(self, teachers: list, weight: float):
        self.teachers, self.weight, self.pre = teachers, weight, None

    def module(self, core: nn.Module, preprocess) -> nn.Module:
        self.pre = preprocess
        return core

    def inputs(self, images: torch.Tensor, preprocess) -> torch.Tensor:
        return images  # uint8: the student and each teacher normalise it their own way, in loss()

    @torch.no_grad()
    def teacher_probs(self, images: torch.Tensor) -> torch.Tensor:
        from ..runtime import to_model_input

        probs = [t.model(to_model_input(images, t.preprocess, images.device)).float().softmax(-1)
                 for t in self.teachers]
        return torch.stack(probs).mean(0)

    def loss(self, model, x: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        from ..data.transforms import soft_target_cross_entropy

        logits = model(self.pre.normalize(x)).float()
        if not targets.is_floating_point():
            targets = F.one_hot(targets.long(), logits.shape[-1]).float()
        mixed = (1 - self.weight) * targets.float() + self.weight * self.teacher_probs(x)
        return soft_target_cross_entropy(logits, mixed)


def check_teachers(teachers: dict, names: list) -> None:
    """teachers: {what --teacher named: LoadedModel}. Each must predict the dataset's classes: the same count, and
    the same names in the same order unless its names are the placeholders 0..K-1; a UserError names the teacher
    and what differs."""
    for spec, t in teachers.items():
        k = t.config.num_classes
        if k != len(names):
            raise UserError(f"--teacher {spec}: it predicts {k} classes, the dataset has {len(names)}; a teacher "
                            "must have been trained on the same classes")
        own, theirs = [str(c) for c in t.class_names], [str(c) for c in names]
        if own != [str(i) for i in range(k)] and own != theirs:
            i = next(i for i, (a, b) in enumerate(zip(own, theirs)) if a != b)
            raise UserError(f"--teacher {spec}: its class {i} is {own[i]!r}, the dataset's is {theirs[i]!r}; a "
                            "teacher must have the dataset's classes in the same order")


class MaskedPatchPrediction(Classify):
    name = "mpp"

    def check(self, s) -> None:
        if getattr(s, "teacher", None):
            raise UserError("--teacher distils class probabilities; --objective mpp predicts colours and reads no "
                            "labels: leave it out")
        if s.mixup or s.cutmix:
            raise UserError("--mixup and --cutmix blend images and labels; --objective mpp predicts each patch's own "
                            "colour and reads no labels: leave them at 0")
        if s.fsdp:
            raise UserError("--fsdp is not available with --objective mpp; use DDP (the default with torchrun)")
        from ..resnet import is_bit_name

        if not s.init and is_bit_name(s.model):
            raise UserError(f"--objective mpp corrupts patch embeddings, which only a ViT (or hybrid) has; "
                            f"--model {s.model} is a ResNet")

    def module(self, core: nn.Module, preprocess) -> nn.Module:
        from ..model import ViT
        from ..mpp import MPPModel

        if not isinstance(core, ViT):
            raise UserError(f"--objective mpp corrupts patch embeddings, which only a ViT (or hybrid) has; "
                            f"{getattr(core.cfg, 'name', '') or type(core).__name__} is a ResNet")
        for layer in (core.head, core.pre_logits):  # the classifier takes no part (and DDP wants no idle params)
            if layer is not None:
                layer.requires_grad_(False)
        return MPPModel(core, mean=preprocess.mean, std=preprocess.std)

    def inputs(self, images: torch.Tensor, preprocess) -> torch.Tensor:
        return images  # raw uint8: MPPModel takes the colour targets from them, then normalises

    def loss(self, model, x: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        logits, colours = model(x, generator)
        return F.cross_entropy(logits.float(), colours)

    def extra_state(self, trained: nn.Module) -> Optional[dict]:
        return {k: v.detach().cpu() for k, v in trained.mpp_state_dict().items()}

    def load_extra_state(self, trained: nn.Module, state: Optional[dict]) -> None:
        if state is None:
            raise UserError("--resume: the checkpoint has no masked-patch-prediction state ([mask] embedding and "
                            "head); was it written by --objective mpp?")
        trained.load_state_dict({**trained.state_dict(), **state})

    @torch.no_grad()
    def evaluate_counts(self, model, dataset, indices, batch_size, precision, preprocess, device) -> dict:
        """Summed over the corrupted patches of `indices`: colour loss, top-1 and top-5 hits, count."""
        from ..data.datasets import iterate_batches, resize_batch
        from ..runtime import autocast, to_channels

        was_training = model.training
        model.eval()
        gen = torch.Generator().manual_seed(EVAL_SEED)
        c1, c5, loss_sum, n, images_seen = (torch.zeros((), dtype=torch.float64) for _ in range(5))
        try:
            for images, _ in iterate_batches(dataset, indices, batch_size):
                images = resize_batch(to_channels(images, preprocess.channels), preprocess.image_size)
                with autocast(device, precision):
                    logits, colours = model(images.to(device), gen)
                logits, colours = logits.float().cpu(), colours.cpu()
                loss_sum += F.cross_entropy(logits, colours, reduction="sum").double()
                top = logits.topk(5, dim=1).indices
                c1 += (top[:, 0] == colours).sum()
                c5 += (top == colours[:, None]).any(1).sum()
                n += len(colours)
                images_seen += len(images)
        finally:
            model.train(was_training)
        return {k: v.to(device) for k, v in dict(correct1=c1, correct5=c5, loss_sum=loss_sum, n=n,
                                                 images=images_seen).items()}

    def summarize(self, counts: dict, class_names) -> dict:
        patches = max(float(counts["n"]), 1.0)
        return {"top1": float(counts["correct1"]) / patches, "top5": float(counts["correct5"]) / patches,
                "loss": float(counts["loss_sum"]) / patches, "n": int(counts["images"]),
                "patches": int(counts["n"]), "per_class": {}}


def get_objective(name: str) -> Classify:
    if name == "classify":
        return Classify()
    if name == "mpp":
        return MaskedPatchPrediction()
    raise UserError(f"unknown --objective {name!r}; valid: {', '.join(OBJECTIVES)}")
