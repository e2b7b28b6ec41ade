"""Measure the README's parity rows from the committed fixtures in tests/fixtures and write docs/results/parity/.

Official JAX code: every case of tests/fixtures/reference.npz (the official model's logits on its own `.npz`
checkpoints, float32 and float64), vitkit loading the same `.npz`; the row's max_abs_diff is the largest absolute
logit difference over all cases, `cases` the number of cases. Hugging Face transformers: each `.npz` fixture
without a ResNet stem converted to a Hugging Face folder (`vitkit convert --to hf`) and run by transformers, against
vitkit on the same images (skipped, with a message, where transformers is not installed).

    python scripts/parity_rows.py          # writes docs/results/parity/*.json (atomically)
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"
OUT = ROOT / "docs" / "results" / "parity"
CASES = ["vit_token", "vit_gap_oldkeys", "vit_prelogits", "hybrid_r2", "hybrid_stem", "vit_token@24",
         "hybrid_stem@40"]
HF_CASES = ["vit_token", "vit_token@24"]  # HF ViTForImageClassification holds neither GAP, pre-logits nor a ResNet stem


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in subprocess.check_output(["lscpu"], text=True).splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "cores": torch.get_num_threads(), "bf16_native": "avx512_bf16" in flags, "gpu": None}


def commit() -> str:
    sha = subprocess.check_output(["git", "rev-parse", "--short=7", "HEAD"], cwd=ROOT, text=True).strip()
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "vitkit"], cwd=ROOT).returncode != 0
    return sha + ("+dirty" if dirty else "")


def provenance(cmd: str) -> dict:
    return {"command": cmd, "seed": None,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "commit": commit(), "torch": torch.__version__, "machine": machine(), "python": platform.python_version()}


def official() -> list[dict]:
    import vitkit

    ref = np.load(FIX / "reference.npz", allow_pickle=False)
    diffs = {torch.float32: 0.0, torch.float64: 0.0}
    for case in CASES:
        base, _, size = case.partition("@")
        model = vitkit.load(FIX / f"{base}.npz", image_size=int(size) if size else None).model.eval()
        for dtype, key in ((torch.float32, "logits32"), (torch.float64, "logits64")):
            x = torch.from_numpy(ref[f"{case}/x"]).permute(0, 3, 1, 2).to(dtype)
            with torch.no_grad():
                got = model.to(dtype)(x).numpy()
            diffs[dtype] = max(diffs[dtype], float(np.abs(got - ref[f"{case}/{key}"]).max()))
    return [{"checkpoint": "ViT and R+ViT (official .npz fixtures)", "reference": "official JAX code",
             "precision": name, "max_abs_diff": diffs[dtype], "cases": len(CASES),
             "fixtures": "tests/fixtures/reference.npz"}
            for dtype, name in ((torch.float32, "float32"), (torch.float64, "float64"))]


def hf() -> list[dict]:
    try:
        import transformers
    except ImportError:
        print("transformers is not installed: no Hugging Face row", file=sys.stderr)
        return []
    import vitkit
    from vitkit.cli import main

    ref = np.load(FIX / "reference.npz", allow_pickle=False)
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for case in HF_CASES:
            base, _, size = case.partition("@")
            out = Path(tmp) / case.replace("@", "_")
            args = ["convert", str(FIX / f"{base}.npz"), str(out), "--to", "hf"]
            if size:
                args += ["--image-size", size]
            if main(args) != 0:
                raise SystemExit(f"vitkit convert failed for {case}")
            model = vitkit.load(FIX / f"{base}.npz", image_size=int(size) if size else None).model.eval().float()
            theirs = transformers.ViTForImageClassification.from_pretrained(out).eval()
            x = torch.from_numpy(ref[f"{case}/x"]).permute(0, 3, 1, 2).float()
            with torch.no_grad():
                worst = max(worst, float((theirs(pixel_values=x).logits - model(x)).abs().max()))
    return [{"checkpoint": "ViT (official .npz fixtures, converted with vitkit convert --to hf)",
             "reference": "Hugging Face transformers", "precision": "float32", "max_abs_diff": worst,
             "cases": len(HF_CASES), "transformers": transformers.__version__}]


def write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(rows, indent=1) + "\n")
    os.replace(tmp, path)


def main() -> int:
    prov = provenance("python scripts/parity_rows.py")
    for name, rows in (("official-jax.json", official()), ("hugging-face.json", hf())):
        if rows:
            write(OUT / name, [{**r, **prov} for r in rows])
            for r in rows:
                print(f"{name}: {r['reference']} {r['precision']}: max abs diff {r['max_abs_diff']:.2e} "
                      f"over {r['cases']} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
