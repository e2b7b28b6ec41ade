"""`vitkit train`: a recipe's defaults, overridden by any flag given.

    vitkit train                                   # ViT-Mini/7 on the embedded Fashion-MNIST subset, ~3 min on CPU
    vitkit train --dataset fashion-mnist --epochs 5
    vitkit train --recipe pretrain --model ViT-S/16 --dataset imagefolder:~/photos --batch-size 512 --accum-steps 8
    vitkit train --init runs/embedded/checkpoint --dataset cifar10 --image-size 56   # fine-tune (recipe finetune)
    vitkit train --out runs/embedded --resume                                         # continue exactly
    torchrun --nproc_per_node=4 -m vitkit train --dataset cifar10 --batch-size 512   # DDP, same global batch

Precedence: recipe defaults < the settings saved in OUT/checkpoint (with --resume) < flags given. With --init
and no --recipe the finetune recipe is used.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import UserError


def _pair(text: str) -> tuple:
    try:
        n, m = text.split(",")
        return int(n), float(m)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N,M (e.g. 2,9), got {text!r}") from None


def _betas(text: str) -> tuple:
    try:
        b1, b2 = text.split(",")
        return float(b1), float(b2)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected B1,B2 (e.g. 0.9,0.999), got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .recipes import RECIPES

    S = argparse.SUPPRESS  # flags not given stay absent, so that recipe / saved settings fill them
    p.set_defaults(json=False)
    g = p.add_argument_group("what to train")
    g.add_argument("--recipe", choices=list(RECIPES), default=S,
                   help="defaults to start from (default: default; finetune with --init)")
    g.add_argument("--model", default=S, help="variant, e.g. ViT-Mini/7, ViT-S/16 (see `vitkit models`)")
    g.add_argument("--dataset", default=S, help="embedded (default), fashion-mnist, mnist, cifar10, cifar100 or "
                   "imagefolder:PATH")
    g.add_argument("--data-dir", default=S, help="where the dataset files are")
    g.add_argument("--image-size", type=int, default=S, help="input resolution (default: the dataset's)")
    g.add_argument("--classifier", choices=["token", "gap"], default=S)
    g.add_argument("--pos-embed", choices=["learned", "learned2d", "sincos2d", "none"], default=S)
    g.add_argument("--dropout", type=float, default=S)
    g.add_argument("--gelu", choices=["tanh", "erf"], default=S,
                   help="GELU of a fresh model: tanh approximation (official; default) or exact erf (faster on CPU)")
    g.add_argument("--init", default=S, metavar="CKPT", help="fine-tune from this checkpoint (any format)")
    g = p.add_argument_group("how long, how big")
    g.add_argument("--epochs", type=float, default=S)
    g.add_argument("--steps", type=int, default=S, help="optimizer steps (wins over --epochs)")
    g.add_argument("--batch-size", type=int, default=S, help="global batch size, for any number of processes")
    g.add_argument("--micro-batch", type=int, default=S, help="examples per forward pass (gradient accumulation)")
    g.add_argument("--accum-steps", type=int, default=S, help="micro-batches per optimizer step")
    g.add_argument("--limit-train", type=int, default=S, help="use only the first N training examples")
    g.add_argument("--limit-test", type=int, default=S, help="evaluate on the first N test examples only")
    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", choices=["adamw", "sgd"], default=S)
    g.add_argument("--lr", type=float, default=S, help="peak learning rate")
    g.add_argument("--weight-decay", type=float, default=S, help="decoupled (AdamW-style) weight decay")
    g.add_argument("--momentum", type=float, default=S, help="SGD momentum")
    g.add_argument("--betas", type=_betas, default=S, metavar="B1,B2", help="Adam betas")
    g.add_argument("--warmup-steps", type=int, default=S)
    g.add_argument("--warmup-epochs", type=float, default=S)
    g.add_argument("--schedule", choices=["cosine", "linear", "constant"], default=S)
    g.add_argument("--clip-grad", type=float, default=S, help="clip the global gradient norm (0: off)")
    g = p.add_argument_group("regularisation and augmentation")
    g.add_argument("--label-smoothing", type=float, default=S)
    g.add_argument("--mixup", type=float, default=S, help="mixup alpha (0: off)")
    g.add_argument("--cutmix", type=float, default=S, help="cutmix alpha (0: off)")
    g.add_argument("--randaugment", type=_pair, default=S, metavar="N,M", help="RandAugment ops and magnitude")
    g.add_argument("--random-erase", type=float, default=S, metavar="P",
                   help="erase one random box with noise in a fraction P of the images (0: off)")
    g.add_argument("--crop", choices=["pad", "rrc", "none"], default=S,
                   help="random crop: pad-and-crop (small images), random-resized-crop (photos) or none")
    g.add_argument("--crop-pad", type=int, default=S, help="padding for --crop pad (default: image size / 8)")
    g.add_argument("--no-flip", dest="flip", action="store_false", default=S)
    g = p.add_argument_group("execution")
    g.add_argument("--precision", choices=["fp32", "bf16"], default=S, help="bf16 autocast (default) or fp32")
    g.add_argument("--compile", action="store_true", default=S, help="torch.compile the model")
    g.add_argument("--grad-checkpointing", action="store_true", default=S)
    g.add_argument("--attention", choices=["auto", "sdpa", "explicit"], default=S,
                   help="attention kernel for training: auto (default) = explicit softmax on CPU (1.5x faster "
                        "there), SDPA on GPU")
    g.add_argument("--fsdp", action="store_true", default=S, help="FSDP2 (fully_shard) instead of DDP")
    g.add_argument("--device", default=S, help="auto (default), cpu, cuda, cuda:N")
    g.add_argument("--seed", type=int, default=S)
    g.add_argument("--workers", type=int, default=S, help="data-loading processes (image folders)")
    g = p.add_argument_group("output")
    g.add_argument("--out", default=S, metavar="DIR", help="run directory (default: runs/<dataset>)")
    g.add_argument("--resume", action="store_true", default=S, help="continue the run in --out exactly")
    g.add_argument("--eval-every", type=int, default=S, help="evaluate every N steps (default: every epoch)")
    g.add_argument("--save-every", type=int, default=S, help="checkpoint every N steps (default: at each eval)")
    g.add_argument("--eval-batch-size", type=int, default=S)
    g.add_argument("--json", action="store_true", help="print the result as one JSON line (last line of stdout)")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=S)


def settings_from_args(args: argparse.Namespace):
    from .loop import CHECKPOINT, TrainSettings
    from .recipes import get_recipe

    given = {k: v for k, v in vars(args).items() if k not in ("command", "debug", "json", "_run")}
    recipe = get_recipe(given.pop("recipe", "finetune" if given.get("init") else "default"))
    base = TrainSettings(**{k: v for k, v in vars(recipe).items()})
    if given.get("resume"):
        from pathlib import Path

        from ..checkpoint.io import _existing, load_train_state

        out = Path(given.get("out") or f"runs/{given.get('dataset', base.dataset)}".replace(":", "_"))
        ckpt = _existing(out / CHECKPOINT)
        state = load_train_state(ckpt) if ckpt.exists() else None
        if state is None:
            raise UserError(f"--resume: no checkpoint to resume in {out} (expected {out / CHECKPOINT}/train_state.pt)")
        base = TrainSettings.from_dict(state.get("settings", {}))
    if given.get("clip_grad") == 0:
        given["clip_grad"] = None
    return base.replace(**given)


def run(args: argparse.Namespace) -> int:
    from ..perf import keep_freed_memory
    from .loop import train

    s = settings_from_args(args)
    # This process exists to train, at its peak memory every step: let malloc keep freed blocks for the next one
    # instead of returning them to the OS (vitkit/perf.py; ViT-B/16 CPU training step +3 %).
    keep_freed_memory()
    result = train(s)
    import os

    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if args.json:
        print(json.dumps({k: v for k, v in result.items()}))
    else:
        print(f"{result['dataset']}: test top-1 {100 * result['top1']:.2f}%  top-5 {100 * result['top5']:.2f}%  "
              f"({result['n']} images, {result['steps']} steps, {result['time_s']:.0f} s, "
              f"{result['img_per_s'] or 0:.0f} img/s)")
        print(f"checkpoint: {result['checkpoint']}  (best: {result['best']}, top-1 {100 * result['best_top1']:.2f}%)")
    sys.stdout.flush()
    return 0
