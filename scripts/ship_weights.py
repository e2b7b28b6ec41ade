"""Ship a finished pre-training run inside the package: vitkit/weights/NAME/ (model.safetensors, config.json,
MODEL_CARD.md), found by `vitkit models --pretrained` and loadable as `vitkit.load("NAME")`.

    python scripts/ship_weights.py runs/tiny-imagenet-vit-mini8-64 ViT-Mini_8-tiny-imagenet \
        --command "benchmarks/pretrain_tiny_imagenet.sh"

Only the weights travel (no optimizer state): they are read with vitkit's own loader, which refuses non-finite
values, and written as an ordinary native checkpoint whose config.json also carries "dataset" and "top1" (the run's
last evaluation in percent, read from its metrics.jsonl). The model card is written from the run's own record: the settings
saved in its checkpoint, the evaluation curve, and the summed step times. An existing NAME is replaced only with
--overwrite.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
from pathlib import Path

import torch

from vitkit.checkpoint.io import load, load_train_state, read_config, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "vitkit" / "weights"
LIMIT_MB = 25  # all shipped weights together


def read_metrics(path: Path) -> tuple[list, list]:
    steps, evals = [], []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        (evals if "top1" in r else steps).append(r)
    return steps, evals


def step_seconds(steps: list, settings: dict) -> float:
    batch = settings.get("batch_size")
    return sum(batch / r["img_per_s"] for r in steps if r.get("img_per_s")) if batch else 0.0


def recipe_line(settings: dict) -> str:
    skip = {"out", "resume", "progress", "dataset", "data_dir", "name", "init",
            "momentum" if settings.get("optimizer") == "adamw" else "betas"}
    if settings.get("init"):  # the architecture is the initial checkpoint's
        skip |= {"model", "gelu", "classifier", "pos_embed"}
    flags = {k: v for k, v in settings.items() if v is not None and v is not False and k not in skip}
    return f"recipe {settings.get('name')}, then {', '.join(f'{k}={v}' for k, v in flags.items())}"


def precision_text(settings: dict, segments: list | None) -> str:
    """"bf16 autocast", or for a run resumed in another precision "bf16 autocast, then fp32 from step 6,000"
    (train_state.pt's segments; a run saved before they were recorded has none: its last precision)."""
    def name(p):
        return "bf16 autocast" if p == "bf16" else p or "fp32"

    changes = []
    for seg in segments or []:
        if not changes or changes[-1][1] != seg.get("precision"):
            changes.append((seg.get("from_step", 0), seg.get("precision")))
    if len(changes) <= 1:
        return name(settings.get("precision"))
    return ", then ".join(name(p) + (f" from step {s:,}" if s else "") for s, p in changes)


def curve(evals: list) -> str:
    return ", ".join(f"{r['epoch']:g}: {100 * r['top1']:.1f} %" for r in evals)


def first_from_card(folder: Path, command: str) -> dict:
    """The first cycle's record from a shipped model's MODEL_CARD.md (a folder under vitkit/weights/, or a copy of
    one), for a second cycle whose first cycle's run folder is gone: its curve, last top-1/top-5, step count, time
    and recipe line, as this script wrote them. A card that does not have them is an error, not a guess."""
    text = (folder / "MODEL_CARD.md").read_text()
    top = re.search(r"validation top-1 ([0-9.]+) %\*\* \(top-5 ([0-9.]+) %\)", text)
    steps = re.search(r"after ([0-9,]+) optimizer steps", text)
    curve_m = re.search(r"Top-1 by epoch: ([^\n]+(?:\n  [^\n]+)*)\.\n", text)
    hours = re.search(r"Training time: ([0-9.]+) h", text)
    machine = re.search(r"on 2 CPU cores \(([^,)]+)", text)
    size = re.search(r" at (\d+) px: vitkit's own pre-trained model", text)
    recipe = re.search(r"## Recipe\n(recipe [^\n]+)\n", text)
    if not (top and steps and curve_m and hours and recipe) or "second cycle" in curve_m.group(1):
        raise ValueError(f"{folder}/MODEL_CARD.md is not a one-cycle card of this script "
                         "(top-1, steps, 'Top-1 by epoch', 'Training time', '## Recipe')")
    points = re.findall(r"([0-9.]+): ([0-9.]+) %", curve_m.group(1).replace("\n  ", " "))
    evals = [{"epoch": float(e), "top1": float(t) / 100} for e, t in points]
    evals[-1].update(top1=float(top.group(1)) / 100, top5=float(top.group(2)) / 100,
                     step=int(steps.group(1).replace(",", "")))
    return {"seconds": 3600 * float(hours.group(1)), "evals": evals,
            "recipe": recipe.group(1).removesuffix("."), "command": command,
            "machine": machine.group(1) if machine else None, "image_size": int(size.group(1)) if size else None}


def cpu_name() -> str:
    """This machine's CPU, shortened ("AMD EPYC", "Intel(R) Xeon(R) Processor"), for the card's timing line."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                return "AMD EPYC" if name.startswith("AMD EPYC") else name
    except OSError:
        pass
    return platform.processor() or platform.machine()


def card(name: str, run: Path, loaded, steps: list, evals: list, settings: dict, command: str, dataset: str,
         first: dict | None = None, segments: list | None = None) -> str:
    """first: the first cycle of a two-cycle run (keys run, evals, seconds, recipe, command, machine, image_size;
    from its run folder in main() or its shipped card in first_from_card), or None."""
    last = evals[-1]
    cfg = loaded.config
    machine = cpu_name()
    seconds = step_seconds(steps, settings)
    where = machine
    recipe, curves = recipe_line(settings), curve(evals)
    after = f"{last['step']:,} optimizer steps ({last['epoch']:g} epochs)"
    autocast = precision_text(settings, segments)
    reproduce = f"    {command}\n    python scripts/ship_weights.py {run} {name} --overwrite"
    if first:
        f_last, f_machine = first["evals"][-1], first.get("machine") or machine
        if f_machine != machine:
            where = (f"first cycle {first['seconds'] / 3600:.2f} h on {f_machine}, second {seconds / 3600:.2f} h on "
                     f"{machine}")
        seconds += first["seconds"]
        after = (f"{f_last['step']:,} + {last['step']:,} optimizer steps ({f_last['epoch']:g} + {last['epoch']:g} "
                 "epochs, two cycles)")
        f_size = first.get("image_size")
        if f_size and f_size != cfg.image_size:  # section 3.2: fine-tune at a higher resolution than pre-training
            kind = (f"Pre-training at {f_size} px, then fine-tuning at {cfg.image_size} px on the same data "
                    f"(section 3.2 of the paper: the images resized to {cfg.image_size} px, so more and smaller "
                    "patches; the position embeddings 2D-interpolated to the larger grid)")
        else:
            kind = "Two cosine cycles (a warm restart)"
        recipe = (f"{kind}. First cycle, {f_last['epoch']:g} epochs from a random "
                  f"initialisation ({100 * f_last['top1']:.2f} % at its end): {first['recipe']}.\n\n"
                  f"Second cycle, {last['epoch']:g} epochs from the first cycle's weights, with a fresh optimizer: "
                  f"{recipe}.")
        curves = f"first cycle {curve(first['evals'])}; second cycle {curves}"
        reproduce = (f"    {first['command']}\n    {command}\n    python scripts/ship_weights.py {run} {name} "
                     f"--first {first['run']} --overwrite")
    if cfg.resnet:  # the paper's hybrid (section 3.1): the Transformer reads patches of a ResNet's feature map
        stages = cfg.resnet.get("layers") or []
        units = "unit" if stages == [1] else "units per stage"
        stem = "root block only" if not stages else f"root block + {'/'.join(map(str, stages))} bottleneck {units}"
        arch = (f"hybrid: a BiT-style ResNet stem ({stem}, stride {cfg.stem_stride // cfg.patch_size}) whose feature "
                f"map is cut into {cfg.patch_size}x{cfg.patch_size} patches, one token per "
                f"{cfg.stem_stride}x{cfg.stem_stride} pixels, then a ViT of {cfg.depth} blocks, width "
                f"{cfg.hidden_size}, {cfg.num_heads} heads")
    else:
        arch = (f"ViT: {cfg.depth} blocks, width {cfg.hidden_size}, {cfg.num_heads} heads, "
                f"{cfg.patch_size}x{cfg.patch_size} patches")
    return f"""# {name}

A {cfg.name} ({arch}, {loaded.model.num_params():,} parameters) trained from a random initialisation on {dataset} at \
{cfg.image_size} px: vitkit's own pre-trained model, made on 2 CPU cores, to fine-tune or probe on small image sets (docs/transfer.md).

    import vitkit
    m = vitkit.load("{name}")
    vitkit train --init {name} --dataset imagefolder:PATH      # fine-tune (recipe finetune)
    vitkit fewshot {name} --dataset imagefolder:PATH --shots 5,10

## Result
- **{dataset} validation top-1 {100 * last['top1']:.2f} %** (top-5 {100 * last['top5']:.2f} %) on the 10,000 official
  validation images, after {after}, evaluated once at the end of
  each epoch; the last one is shipped (no early stopping on the validation split).
- Top-1 by epoch: {curves}.
- Training time: {seconds / 3600:.2f} h of summed step times (evaluations and data loading before the first step not
  counted) on 2 CPU cores ({where}, torch {torch.__version__.split("+")[0]}, {autocast}), shared with other work,
  so the time is an upper bound for an idle machine.

## Data
Tiny ImageNet (cs231n, Stanford): 200 ImageNet classes at 64x64. The copy used had 250 of the 500 training images
of every class (50,000 images) and the full 10,000-image validation split; `vitkit train --dataset tiny-imagenet`
reads the official folder or zip. **Licence:** the images come from ImageNet and may be used for non-commercial
research and education only (ImageNet terms of access); these weights are derived from them and carry the same
restriction.

## Recipe
{recipe}

(see `vitkit train --help`; the pad-crop is a shift of up to 1/8 of the image, RandAugment is N ops at magnitude M.)

## Reproduce
{reproduce}

The run is seeded (seed {settings.get('seed')}: initialisation, data order, augmentation) and resumable exactly: an
interrupted run continued with `--resume` gives the same weights as an uninterrupted one (tests/test_resume.py).
A second run on another machine or torch build gives the same top-1 within run-to-run noise, not the same bits.
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a finished `vitkit train` run directory (checkpoint/ and metrics.jsonl)")
    p.add_argument("name", help="folder name under vitkit/weights/ (the name users load)")
    p.add_argument("--dataset", default="tiny-imagenet")
    p.add_argument("--command", default="benchmarks/pretrain_tiny_imagenet.sh", help="what reproduces the run")
    p.add_argument("--first", type=Path, help="the first cycle's run, when RUN continued it (--init) with a "
                   "second one (FIRST=RUN benchmarks/pretrain_tiny_imagenet.sh); or, where that run is gone, the "
                   "folder the first cycle was shipped to (its MODEL_CARD.md gives the record)")
    p.add_argument("--first-run", help="the first cycle's run folder to name in the card's "
                   "reproduce commands (default: --first)")
    p.add_argument("--first-command", default="benchmarks/pretrain_tiny_imagenet.sh",
                   help="what reproduces the first cycle")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args()
    dest = WEIGHTS / a.name
    if dest.exists() and not a.overwrite:
        print(f"ship_weights: error: {dest} exists; --overwrite replaces it", file=sys.stderr)
        return 2
    ckpt = a.run / "checkpoint"
    steps, evals = read_metrics(a.run / "metrics.jsonl")
    if not evals:
        print(f"ship_weights: error: {a.run}/metrics.jsonl has no evaluation", file=sys.stderr)
        return 2
    loaded = load(ckpt)  # refuses non-finite weights
    state = load_train_state(ckpt) or {}  # torch.load(weights_only=True)
    settings, segments = state.get("settings", {}), state.get("segments")
    first = None
    if a.first is not None and not (a.first / "metrics.jsonl").exists() and (a.first / "MODEL_CARD.md").exists():
        try:
            first = first_from_card(a.first, a.first_command)
        except ValueError as e:
            print(f"ship_weights: error: {e}", file=sys.stderr)
            return 2
    elif a.first is not None:
        f_steps, f_evals = read_metrics(a.first / "metrics.jsonl")
        f_settings = (load_train_state(a.first / "checkpoint") or {}).get("settings", {})
        first = {"evals": f_evals, "seconds": step_seconds(f_steps, f_settings), "recipe": recipe_line(f_settings),
                 "command": a.first_command, "image_size": read_config(a.first / "checkpoint")["model"]["image_size"]}
    if first is not None:
        first["run"] = a.first_run or a.first  # the run folder the card's reproduce commands name
    top1 = round(100 * float(evals[-1]["top1"]), 2)  # percent, as the registry gives the published figures
    save_checkpoint(dest, loaded, extra={"dataset": a.dataset, "top1": top1})
    (dest / "MODEL_CARD.md").write_text(card(a.name, a.run, loaded, steps, evals, settings, a.command, a.dataset, first,
                                               segments))
    total = sum(f.stat().st_size for f in WEIGHTS.rglob("*.safetensors")) / 2 ** 20
    print(f"shipped {dest}: top-1 {top1:.2f} %; all shipped weights {total:.1f} MB (limit {LIMIT_MB} MB)")
    return 0 if total <= LIMIT_MB else 1


if __name__ == "__main__":
    sys.exit(main())
