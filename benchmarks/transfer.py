"""The paper's claim on small data, measured: from scratch vs fine-tuned from a pre-trained model vs few-shot linear.

    python benchmarks/transfer.py --init NAME_OR_CKPT --out runs/transfer [--sets DIR] [--only cifar10-1k,...]

For each transfer set (image folders: train/<class>/*, test|val/<class>/*; the 1k-image sets come from
scripts/make_transfer_sets.py) it runs, with vitkit's defaults and nothing else:
  scratch   vitkit train --dataset imagefolder:SET
  finetune  vitkit train --dataset imagefolder:SET --init NAME_OR_CKPT
  fewshot   vitkit fewshot NAME_OR_CKPT --dataset imagefolder:SET --shots 5,10   (frozen features, section 4.1)
and, where ../shared/tools/baselines.py exists, the two references it prints (1-NN on raw pixels, a small CNN).
Each row is one JSON file in OUT (a finished row is not run again: the script resumes), with the wall time of its
command; OUT/results.json gathers them and the table printed at the end is the one in docs/transfer.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SETS = {  # name -> folder, relative to --sets (or absolute)
    "cifar10-100": "cifar10-100",  # 10 per class: the low end of "10-100 images per class"
    "cifar10-1k": "cifar10-1k",
    "cifar10-20k": str(SHARED / "data" / "cifar10-jpeg"),
    "hymenoptera": str(SHARED / "data" / "hymenoptera"),
    "mnist-1k": "mnist-1k",
    "fashion-mnist-1k": "fashion-mnist-1k",
}
GREY = {"mnist-1k", "fashion-mnist-1k"}
# 10 images per class: fewshot holds some out to choose its regulariser, which leaves 5 for the probe
SHOTS = {"cifar10-100": "5"}


def run(cmd: list[str], log: Path) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True)
    return p.returncode, round(time.perf_counter() - t0, 1), p.stdout


def row(kind: str, name: str, folder: Path, args, out: Path) -> dict:
    dest = out / f"{kind}-{name}.json"
    if dest.exists():
        return json.loads(dest.read_text())
    log = out / f"{kind}-{name}.log"
    ds = f"imagefolder:{folder}"
    if kind == "scratch":
        cmd = ["vitkit", "train", "--dataset", ds, "--out", str(out / f"run-{kind}-{name}"), "--json", "--no-progress"]
    elif kind == "finetune":
        cmd = ["vitkit", "train", "--dataset", ds, "--init", args.init, "--out", str(out / f"run-{kind}-{name}"),
               "--json", "--no-progress"]
    elif kind == "fewshot":
        cmd = ["vitkit", "fewshot", args.init, "--dataset", ds, "--shots", SHOTS.get(name, "5,10"),
               "--baselines", "ridge", "--out", str(out / f"fewshot-{name}.raw.json")]
    else:  # the two references of the acceptance checks
        cmd = [sys.executable, str(SHARED / "tools" / "baselines.py"), str(folder)] + (["--gray"] if name in GREY else [])
    cmd += args.extra.get(kind, [])
    # a training run interrupted in an earlier call continues from its checkpoint (exact); its wall time is then
    # that of the continuation only, and the row says so
    resumed = kind in ("scratch", "finetune") and (out / f"run-{kind}-{name}" / "checkpoint" / "train_state.pt").exists()
    if resumed:
        cmd.append("--resume")
    rc, wall, stdout = run(cmd, log)
    if rc != 0:
        raise SystemExit(f"transfer: {kind} on {name} failed (exit {rc}); see {log}")
    r = {"kind": kind, "set": name, "command": " ".join(cmd), "wall_s": wall}
    if resumed:
        r["resumed"] = True  # wall_s: the continued part only
    if kind in ("scratch", "finetune"):
        res = json.loads(stdout.strip().splitlines()[-1])
        r.update(top1=res["top1"], steps=res["steps"], model=res["model"])
    elif kind == "fewshot":
        res = json.loads((out / f"fewshot-{name}.raw.json").read_text())
        r.update({f"{k}shot": v["mean"] for k, v in res["fewshot"]["shots"].items()})
        r["linear_probe"] = res["baselines"].get("linear_probe_ridge", {}).get("acc")
    else:
        r["nn1"] = float(re.search(r"1-NN[^:]*:\s*([\d.]+)", stdout).group(1)) / 100
        m = re.search(r"CNN[^:]*:\s*([\d.]+)", stdout)
        r["cnn"] = float(m.group(1)) / 100 if m else None
    dest.write_text(json.dumps(r, indent=1))
    return r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--init", help="pre-trained model: a shipped name, URL or checkpoint (for finetune, fewshot)")
    p.add_argument("--out", type=Path, default=Path("runs/transfer"))
    p.add_argument("--sets", type=Path, default=Path("runs/transfer-sets"),
                   help="where scripts/make_transfer_sets.py wrote the 1k-image sets")
    p.add_argument("--only", default=",".join(SETS), help="comma list of sets")
    p.add_argument("--kinds", default="baselines,scratch,finetune,fewshot")
    p.add_argument("--seed", type=int, help="passed to the scratch and fine-tuning runs (vitkit's default: 0), for "
                   "a second run of each cell; use another --out")
    a = p.parse_args()
    if a.seed is not None and a.seed < 0:
        print(f"transfer: error: --seed must be >= 0, got {a.seed}", file=sys.stderr)
        return 2
    seed = ["--seed", str(a.seed)] if a.seed is not None else []
    a.extra = {"scratch": seed, "finetune": seed}
    if not a.init and {"finetune", "fewshot"} & set(a.kinds.split(",")):
        print("transfer: error: --kinds finetune/fewshot need --init (a pre-trained model)", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in a.only.split(","):
        if name not in SETS:
            print(f"transfer: error: unknown set {name!r}; valid: {', '.join(SETS)}", file=sys.stderr)
            return 2
        folder = Path(SETS[name]) if os.path.isabs(SETS[name]) else a.sets / SETS[name]
        if not folder.is_dir():
            print(f"transfer: note: {folder} not found, {name} skipped (scripts/make_transfer_sets.py makes it)")
            continue
        for kind in a.kinds.split(","):
            if kind == "baselines" and not (SHARED / "tools" / "baselines.py").is_file():
                continue
            rows.append(row(kind, name, folder, a, a.out))
            print(json.dumps(rows[-1]), flush=True)
    (a.out / "results.json").write_text(json.dumps(rows, indent=1))
    print(table(rows))
    return 0


def table(rows: list[dict]) -> str:
    by = {}
    for r in rows:
        by.setdefault(r["set"], {})[r["kind"]] = r

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f} %"

    lines = ["| set | 1-NN pixels | small CNN | from scratch | fine-tuned | 5-shot linear | 10-shot linear |",
             "|---|---|---|---|---|---|---|"]
    for name, k in by.items():
        b, s, f, w = k.get("baselines", {}), k.get("scratch", {}), k.get("finetune", {}), k.get("fewshot", {})
        lines.append(f"| {name} | {pct(b.get('nn1'))} | {pct(b.get('cnn'))} | {pct(s.get('top1'))} ({s.get('wall_s', '-')} s) "
                     f"| {pct(f.get('top1'))} ({f.get('wall_s', '-')} s) | {pct(w.get('5shot'))} | {pct(w.get('10shot'))} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
