"""Ship a finished pre-training run inside the package as a new version: vitkit/weights/NAME.v<N>/
(model.safetensors, config.json, MODEL_CARD.md), recorded with the size and sha256 of each file in
vitkit/weights/MANIFEST.json, found by `vitkit models --pretrained` and loadable as `vitkit.load("NAME.v<N>")`.

    python scripts/ship_weights.py runs/tiny-imagenet-vit-mini8-64 ViT-Mini_8-tiny-imagenet \
        --command "benchmarks/pretrain_tiny_imagenet.sh"

NAME is the bare model name; the script writes the next version, N = 1 + the highest one the manifest knows
(shipped or retired). A released version never changes: a NAME.v<N> that exists is refused, and there is no
overwrite. The alias NAME (what the docs load) is created with a model's first version and moved to a later one only
with --move-alias.

Only the weights travel (no optimizer state): they are read with vitkit's own loader, which refuses non-finite
values, and written as an ordinary native checkpoint whose config.json also carries "dataset", "top1" (the run's
last evaluation in percent, read from its metrics.jsonl) and "card": the run's record (the settings saved in its
checkpoint, the evaluation curve, the summed step times) and the prose for the card (data and licence, notes;
--card-json adds or replaces entries). MODEL_CARD.md is rendered from that config.json alone
(vitkit.checkpoint.hub.model_card), never edited by hand; --cards re-renders every shipped card from its config.json
and re-records config.json and MODEL_CARD.md in the manifest, refusing any folder whose model.safetensors is not the
file the manifest records.

The folder is written under a temporary name, renamed into place when complete, and only then added to the manifest
(atomically); a folder the manifest does not record is refused when loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from pathlib import Path

import torch

from vitkit.checkpoint import hub
from vitkit.checkpoint.io import load, load_train_state, read_config, save_checkpoint
from vitkit.errors import UserError

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


SUMMARY = ("vitkit's own pre-trained model, made on 2 CPU cores, to fine-tune or probe on small image sets "
           "(docs/transfer.md)")
DATASETS = {  # dataset -> (what the top-1 was measured on, the card's Data section: the data and its licence)
    "tiny-imagenet": (
        "the 10,000 official validation images",
        "Tiny ImageNet (cs231n, Stanford): 200 ImageNet classes at 64x64. The copy used had 250 of the 500 training "
        "images of every class (50,000 images) and the full 10,000-image validation split; `vitkit train --dataset "
        "tiny-imagenet` reads the official folder or zip. **Licence:** the images come from ImageNet and may be used "
        "for non-commercial research and education only (ImageNet terms of access); these weights are derived from "
        "them and carry the same restriction."),
}


def cycle(steps: list, evals: list, settings: dict, command: str, image_size: int,
          init: str = "a random initialisation", machine: str | None = None) -> dict:
    """One training cycle's record for the card entry of config.json (hub.model_card's "cycles")."""
    last = evals[-1]
    return {"init": init, "epochs": last["epoch"], "steps": last["step"], "image_size": image_size,
            "evals": [{"epoch": r["epoch"], "top1": r["top1"]} for r in evals], "top5": last.get("top5"),
            "seconds": round(step_seconds(steps, settings), 1), "machine": machine or cpu_name(),
            "recipe": recipe_line(settings), "command": command}


def first_from_shipped(folder: Path) -> dict:
    """The first cycle's record from a shipped model's config.json (a folder under vitkit/weights/, or a copy of
    one), for a second cycle whose first cycle's run folder is gone. A model shipped from two cycles, or a folder
    without the record, is an error, not a guess."""
    meta = read_config(folder)
    cycles = (meta.get("card") or {}).get("cycles") or []
    if len(cycles) != 1:
        raise UserError(f"{folder}/config.json is not a one-cycle shipped model (its \"card\" entry has "
                        f"{len(cycles)} training cycles, expected 1)")
    return dict(cycles[0])


def card_entry(run: Path, steps: list, evals: list, settings: dict, command: str, dataset: str, image_size: int,
               first: dict | None = None, first_run=None, segments: list | None = None,
               extra: dict | None = None) -> dict:
    evaluated_on, data = DATASETS.get(dataset, (
        "its validation split",
        f"`vitkit train --dataset {dataset}`; the data set's licence applies to these weights."))
    second = cycle(steps, evals, settings, command, image_size,
                   init="the first cycle's weights" if first else "a random initialisation")
    entry = {"summary": SUMMARY, "evaluated_on": evaluated_on, "hardware": "2 CPU cores",
             "torch": torch.__version__.split("+")[0], "precision": precision_text(settings, segments),
             "seed": settings.get("seed"), "time_note": "shared with other work", "data": data, "notes": [],
             "run": str(run), "cycles": [first, second] if first else [second]}
    if first:
        entry["first_run"] = str(first_run)
    entry.update(extra or {})
    return entry


def next_version(name: str, man: dict) -> int:
    known = [int(m.group("n")) for n in [*man["shipped"], *man["retired"]]
             if (m := hub.VERSIONED.match(n)) and m.group("base") == name]
    return max(known, default=0) + 1


def recard(weights: Path) -> int:
    """--cards: every shipped folder's MODEL_CARD.md rendered again from its config.json; config.json and the card
    re-recorded in the manifest. model.safetensors is never re-recorded: one that differs from the manifest stops
    everything before anything is written."""
    man = hub.manifest(weights)
    folders = sorted(d for d in weights.iterdir() if d.is_dir() and not d.name.startswith("."))
    for d in folders:
        rec = man["shipped"].get(d.name, {}).get("model.safetensors")
        if rec is None or hub.file_record(d / "model.safetensors") != rec:
            raise UserError(f"{d / 'model.safetensors'} is not the file {weights / hub.MANIFEST} records for {d.name} "
                            f"({rec}); a released version's weights never change")
    for d in folders:
        out = d / "MODEL_CARD.md"
        text = hub.model_card(d)
        if not out.is_file() or out.read_text() != text:
            out.write_text(text)
            print(f"rendered {out}")
        man["shipped"][d.name] = hub.folder_record(d)
    hub.write_manifest(man, weights)
    return 0


def main() -> int:
    try:
        return _main()
    except UserError as e:
        print(f"ship_weights: error: {e}", file=sys.stderr)
        return 2


def _main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, nargs="?",
                   help="a finished `vitkit train` run directory (checkpoint/ and metrics.jsonl)")
    p.add_argument("name", nargs="?", help="the model's bare name (the alias users load); the folder written is "
                   "vitkit/weights/NAME.v<N>, N the next version")
    p.add_argument("--dataset", default="tiny-imagenet")
    p.add_argument("--command", default="benchmarks/pretrain_tiny_imagenet.sh", help="what reproduces the run")
    p.add_argument("--first", type=Path, help="the first cycle's run, when RUN continued it (--init) with a "
                   "second one (FIRST=RUN benchmarks/pretrain_tiny_imagenet.sh); or, where that run is gone, the "
                   "folder the first cycle was shipped to (its config.json's card entry gives the record)")
    p.add_argument("--first-run", help="the first cycle's run folder to name in the card's "
                   "reproduce commands (default: --first)")
    p.add_argument("--first-command", default="benchmarks/pretrain_tiny_imagenet.sh",
                   help="what reproduces the first cycle")
    p.add_argument("--card-json", type=Path, help="a JSON object of card entries to add or replace (notes: a list of "
                   "{title, text}; data; summary; time_note; ...), written into config.json's card entry")
    p.add_argument("--move-alias", action="store_true",
                   help="point the alias NAME at the new version (a model's first version gets it anyway)")
    p.add_argument("--cards", action="store_true", help="render every shipped MODEL_CARD.md again from its "
                   "config.json and re-record config.json and the card in the manifest (no RUN, no NAME)")
    a = p.parse_args()
    if a.cards:
        return recard(WEIGHTS)
    if a.run is None or a.name is None:
        p.error("RUN and NAME are required (or --cards)")
    man = hub.manifest(WEIGHTS)
    if (m := hub.VERSIONED.match(a.name)):
        state = ("is released" if a.name in man["shipped"] or a.name in man["retired"] or (WEIGHTS / a.name).exists()
                 else "is a versioned name")
        raise UserError(f"{a.name} {state}: a released version never changes; give the bare name "
                        f"{m.group('base')} and the next version, {m.group('base')}.v"
                        f"{next_version(m.group('base'), man)}, is written")
    if a.name.startswith(".") or "/" in a.name or not a.name.strip():
        raise UserError(f"NAME {a.name!r}: expected a folder name (no '/', not starting with '.')")
    version = f"{a.name}.v{next_version(a.name, man)}"
    dest = WEIGHTS / version
    if dest.exists():
        raise UserError(f"{dest} exists but {WEIGHTS / hub.MANIFEST} does not record it (an interrupted ship?); "
                        "look at it and remove it first")
    extra = {}
    if a.card_json is not None:
        extra = hub._read_json(a.card_json)
        if not isinstance(extra, dict):
            raise UserError(f"--card-json {a.card_json}: expected a JSON object of card entries")
    ckpt = a.run / "checkpoint"
    steps, evals = read_metrics(a.run / "metrics.jsonl")
    if not evals:
        raise UserError(f"{a.run}/metrics.jsonl has no evaluation")
    loaded = load(ckpt)  # refuses non-finite weights
    state = load_train_state(ckpt) or {}  # torch.load(weights_only=True)
    settings, segments = state.get("settings", {}), state.get("segments")
    first = None
    if a.first is not None and not (a.first / "metrics.jsonl").exists() and (a.first / "config.json").exists():
        first = first_from_shipped(a.first)
        if a.first_command:
            first["command"] = a.first_command
    elif a.first is not None:
        f_steps, f_evals = read_metrics(a.first / "metrics.jsonl")
        f_settings = (load_train_state(a.first / "checkpoint") or {}).get("settings", {})
        first = cycle(f_steps, f_evals, f_settings, a.first_command,
                      read_config(a.first / "checkpoint")["model"]["image_size"])
    top1 = round(100 * float(evals[-1]["top1"]), 2)  # percent, as the registry gives the published figures
    card = card_entry(a.run, steps, evals, settings, a.command, a.dataset, loaded.config.image_size, first,
                      a.first_run or a.first, segments, extra)
    WEIGHTS.mkdir(parents=True, exist_ok=True)
    tmp = WEIGHTS / f".{version}.shipping"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_checkpoint(tmp, loaded, extra={"dataset": a.dataset, "top1": top1, "card": card})
        (tmp / "MODEL_CARD.md").write_text(hub.model_card(tmp, version))
        record = hub.folder_record(tmp)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    man["shipped"][version] = record
    moved = a.name not in man["aliases"] or a.move_alias
    if moved:
        man["aliases"][a.name] = version
    hub.write_manifest(man, WEIGHTS)
    total = sum(f.stat().st_size for f in WEIGHTS.rglob("*.safetensors")) / 2 ** 20
    alias = (f"alias {a.name} -> {version}" if moved else
             f"alias {a.name} still -> {man['aliases'][a.name]} (--move-alias moves it)")
    print(f"shipped {dest}: top-1 {top1:.2f} %, sha256 {record['model.safetensors']['sha256']}; {alias}; "
          f"all shipped weights {total:.1f} MB (limit {LIMIT_MB} MB)")
    return 0 if total <= LIMIT_MB else 1


if __name__ == "__main__":
    sys.exit(main())
