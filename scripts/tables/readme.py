"""The tables of README.md, rendered from docs/results/ (see scripts/render_tables.py)."""

from __future__ import annotations

from rows import ROOT, load, machine, mean_sd, num, pct, table


def _precision(row: dict) -> str:
    m = row.get("machine")
    native = m.get("bf16_native") if isinstance(m, dict) else None
    return {True: "bf16 autocast", False: "fp32"}.get(native, "unknown")


def quickstart() -> str:
    """`vitkit train` (the quick start) on each machine it was measured on."""
    rows = [r for r in load("quickstart/*.json") if r.get("dataset") == "embedded"]
    rows.sort(key=lambda r: (not (r.get("machine") or {}).get("bf16_native", False), r["date"]))
    return table(["machine", "precision", "test top-1", "training", "img/s", "measured"],
                 [[machine(r), _precision(r), f"**{pct(r['top1'])}**", num(r["time_s"]) + " s" if r.get("time_s") is not None else "-", num(r["img_per_s"]),
                   f"{str(r['date'])[:10]}, {str(r['commit'])[:7]}, torch {r['torch']}"] for r in rows],
                 "llrrrl")


def shipped() -> str:
    """The shipped weights by versioned name, from the package's own records: vitkit/weights/MANIFEST.json (aliases,
    sizes, sha256, the retired versions) and each folder's config.json (the top-1 measured when it was shipped)."""
    import json

    weights = ROOT / "vitkit" / "weights"
    man = json.loads((weights / "MANIFEST.json").read_text())
    alias_of = {v: k for k, v in man["aliases"].items()}
    out = []
    for name, files in sorted(man["shipped"].items(), key=lambda kv: (not kv[0].startswith("R+"), kv[0])):
        cfg = json.loads((weights / name / "config.json").read_text())
        out.append([f"`{name}`", f"`{alias_of[name]}`" if name in alias_of else "-", cfg["model"]["name"],
                    f"**{cfg['top1']:.2f} %**", f"{files['model.safetensors']['size'] / 1e6:.1f} MB",
                    f"`{files['model.safetensors']['sha256'][:12]}`"])
    for name, r in sorted(man["retired"].items()):
        out.append([f"`{name}` (retired)", "-", r["variant"], f"{r['top1']:.2f} %",
                    f"{r['model.safetensors']['size'] / 1e6:.1f} MB", f"`{r['model.safetensors']['sha256'][:12]}`"])
    return table(["versioned name", "alias", "model", "Tiny ImageNet val top-1", "size", "sha256"], out, "lllrrl")


def transfer() -> str:
    """Mean over seeds of the untuned CIFAR-10 folders: 1-NN, small CNN, from scratch, fine-tuned."""
    rows = load("untuned/*.json")
    out = []
    for folder in sorted({r["set"] for r in rows if "set" in r}, key=lambda s: int(s.rsplit("-", 1)[1])):
        cells = [r for r in rows if r.get("set") == folder]
        scratch = [r["top1"] for r in cells if r.get("kind") == "scratch"]
        tuned = [r["top1"] for r in cells if r.get("kind") == "finetune"]
        base = {r["baseline"]: r["top1"] for r in cells if r.get("kind") == "baseline"}
        out.append([folder, num(cells[0]["n_train"]), pct(base.get("1nn")), pct(base.get("cnn")),
                    pct(mean_sd(scratch)[0]) + f" ({len(scratch)} seeds)", f"**{pct(mean_sd(tuned)[0])}**"])
    return table(["folder", "training images", "1-NN on pixels", "small CNN", "from scratch", "fine-tuned"], out,
                 "lrrrrr")


def parity() -> str:
    """Official checkpoints' logits, vitkit against the official code and Hugging Face."""
    rows = load("parity/*.json")
    return table(["checkpoint", "against", "precision", "max abs logit difference", "cases"],
                 [[r["checkpoint"], r["reference"], r["precision"], f"{r['max_abs_diff']:.1e}", num(r.get("cases"))]
                  for r in rows], "lllrr")


TABLES = {"readme.quickstart": quickstart, "readme.shipped": shipped, "readme.transfer": transfer,
          "readme.parity": parity}
