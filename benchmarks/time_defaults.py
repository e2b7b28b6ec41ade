"""How long `vitkit train` with its defaults takes on a folder as large as the issue's largest small set:
102 classes x 100 training photos (and 20 test photos per class), from scratch and fine-tuning (--init).

    python benchmarks/time_defaults.py --out runs/time-defaults [--photos ../shared/data/hymenoptera]
        [--classes 102] [--per-class 100] [--test-per-class 20] [--init R+ViT-Mini_8-tiny-imagenet]

The folder is made of symbolic links to real photos (hymenoptera's 397 JPEGs of ~500x375, each used many times, so
every link is decoded like a distinct photo) under meaningless labels: it measures time only (indexing, decoding,
the plan's steps, the evaluations); its accuracy is chance. OUT/times.json has, per command, the wall seconds, the
first line of the plan and the run's own figures. The bound in the issue is 10 minutes per run on 2 cores; the
plan's `--time-budget` (6 minutes of training steps by default, measured on the machine at hand) is what keeps a
default run under it on a slow machine, and this is the check that it does.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_folder(dst: Path, files: list, classes: int, per_class: int, test_per_class: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    for split, n in (("train", per_class), ("test", test_per_class)):
        for c in range(classes):
            d = dst / split / f"c{c:03d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                link = d / f"{i}.jpg"
                if not link.is_symlink():
                    link.symlink_to(rng.choice(files))
    return dst


def timed(cmd: list[str], log: Path) -> dict:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True)
    wall = round(time.perf_counter() - t0, 1)
    if p.returncode != 0:
        raise SystemExit(f"time_defaults: {' '.join(cmd)} failed (exit {p.returncode}); see {log}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    plan = next((line for line in log.read_text().splitlines() if line.startswith("vitkit train:")), "")
    return {"command": " ".join(cmd), "wall_s": wall, "plan": plan,
            **{k: res.get(k) for k in ("steps", "model", "n_train", "n", "top1")}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/time-defaults"))
    p.add_argument("--photos", type=Path, default=ROOT.parent / "shared" / "data" / "hymenoptera")
    p.add_argument("--classes", type=int, default=102)
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--test-per-class", type=int, default=20)
    p.add_argument("--init", default="R+ViT-Mini_8-tiny-imagenet")
    a = p.parse_args()
    for flag in ("classes", "per_class", "test_per_class"):
        if getattr(a, flag) < 1 or (flag == "classes" and a.classes < 2):
            print(f"time_defaults: error: --{flag.replace('_', '-')} must be at least {2 if flag == 'classes' else 1}",
                  file=sys.stderr)
            return 2
    files = sorted(p.resolve() for p in a.photos.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        print(f"time_defaults: error: --photos {a.photos}: no JPEG photos there", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    folder = make_folder(a.out / "folder", files, a.classes, a.per_class, a.test_per_class)
    rows = {}
    for kind, extra in (("scratch", []), ("finetune", ["--init", a.init])):
        run = a.out / f"run-{kind}"
        cmd = ["vitkit", "train", "--dataset", f"imagefolder:{folder}", *extra, "--out", str(run), "--json",
               "--no-progress", "--overwrite"]
        rows[kind] = timed(cmd, a.out / f"{kind}.log")
        print(json.dumps({kind: rows[kind]}), flush=True)
    (a.out / "times.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
