"""`vitkit study {data-scale,compute,mpp} [--quick] --out DIR`: the paper's section 4.3 and 4.6 experiments at
laptop scale.

    vitkit study data-scale --quick --out runs/study-quick --data-dir ../shared/data      # smoke run, minutes
    vitkit study data-scale --out runs/data-scale --cells runs/cells --data-dir DATA       # Fig. 3/4
    vitkit study compute --out runs/compute --cells runs/cells --data-dir DATA             # Fig. 5
    vitkit study mpp --out runs/mpp --cells runs/cells --data-dir DATA                     # section 4.6

Writes DIR/results.json (one row per cell: model, family, pretrain_images, pretrain_flops, top1, fewshot per shot
count, ...) and the figure DIR/<study>.png. The mpp study's cells are one model pre-trained by masked patch
prediction, by classification (the data-scale study's ViT cell: shared when --cells is) and not at all (scratch);
its rows add `arm` and `finetune_top1` (fine-tuning on the first transfer set), and have top1 null for the arms
without a classifier (mpp_top1 is the masked patch prediction's held-out colour accuracy). Resumable: a second
call skips finished cells and fine-tunings and continues an interrupted one. The grids, and why every subset gets
the same number of steps (and which fine-tuning recipe each arm gets), are in vitkit/study/grids.py; the FLOPs
convention in vitkit/study/run.py; the full commands and the claims they test in docs/reproduction.md.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import UserError
from ..flags import Number, device, flag

STUDIES = ("data-scale", "compute", "mpp")
DEFAULT_TRANSFER = "cifar10-jpeg"  # under --data-dir: the CIFAR-10 JPEG folders (train/ and test/)


@dataclass
class StudySettings:
    out: Optional[str] = flag(None, "study directory: results.json and the figure (required)", metavar="DIR")
    quick: bool = flag(False, "the tiny grid: testing-size models, a few steps (a smoke run, not a measurement)",
                       negatable=False)
    cells: Optional[str] = flag(None, "where the cells' runs live (default: DIR/cells); share it between studies "
                                "to reuse identical runs", metavar="DIR")
    reuse: Optional[str] = flag(None, "another study's results.json (comma list): its rows of cells identical to "
                                "this grid's (same run, same transfer sets) are taken instead of training them "
                                "again, e.g. the data-scale study's 100 %% cells in the compute study",
                                metavar="FILE")
    dataset: str = flag("tiny-imagenet", "pre-training dataset (default: tiny-imagenet)")
    data_dir: Optional[str] = flag(None, "where the datasets are (also the default transfer set: "
                                   f"DATA_DIR/{DEFAULT_TRANSFER})", metavar="DIR")
    seed: int = flag(0, "seed of every cell's initialisation and data order", type=Number(int, min=0))
    device: str = flag("auto", "auto (CUDA if available), cpu, cuda, cuda:N", type=device, metavar="DEVICE")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..flags import add_flags

    p.add_argument("study", choices=STUDIES, help="data-scale (Fig. 3/4), compute (Fig. 5) or mpp (section 4.6)")
    add_flags(p, StudySettings, absent=None)
    p.set_defaults(quick=False, dataset="tiny-imagenet", seed=0, device="auto")
    p.add_argument("--transfer", action="append", metavar="SPEC", default=None,
                   help="few-shot transfer set (repeatable; the mpp study also fine-tunes on the first): "
                        "imagefolder:PATH with train/ and test/, or a dataset name (default: "
                        f"imagefolder:DATA_DIR/{DEFAULT_TRANSFER})")


def check_data_dir(data_dir) -> None:
    """--data-dir is only looked in (downloads go to the cache): a folder that is not there is a typo."""
    if data_dir is None:
        return
    d = Path(data_dir).expanduser()
    if not d.is_dir():
        raise UserError(f"--data-dir {data_dir}: {'not a directory' if d.exists() else 'no such directory'} "
                        f"(expected the folder that holds the datasets)")


def transfer_specs(args) -> list[str]:
    check_data_dir(args.data_dir)
    if args.transfer:
        return args.transfer
    if args.data_dir is None:
        raise UserError("--transfer SPEC is needed (e.g. --transfer imagefolder:PATH), or --data-dir DIR holding "
                        f"{DEFAULT_TRANSFER}/")
    default = Path(args.data_dir).expanduser() / DEFAULT_TRANSFER
    if not default.is_dir():
        raise UserError(f"--data-dir {args.data_dir}: no {DEFAULT_TRANSFER}/ there for the default transfer set; "
                        f"give --transfer SPEC")
    return [f"imagefolder:{default}"]


def run(args) -> int:
    from ..flags import check, check_writable
    from .grids import get_grid
    from .plots import compute_figure, data_scale_figure, mpp_figure, save
    from .run import RESULTS, StudyRun, Transfer, check_transfer, run_study

    s = StudySettings(**{k: getattr(args, k) for k in StudySettings.__dataclass_fields__})
    check(s)
    if s.out is None:
        raise UserError("--out DIR is required (results.json and the figure are written there)")
    out = Path(s.out).expanduser()
    check_writable(out, "--out", directory=True)
    cells = Path(s.cells).expanduser() if s.cells else out / "cells"
    check_writable(cells, "--cells", directory=True)
    reuse = [Path(f).expanduser() for f in (s.reuse or "").split(",") if f.strip()]
    for f in reuse:
        if not f.is_file():
            raise UserError(f"--reuse {f}: no such file (expected another study's results.json)")
    specs = transfer_specs(args)
    for spec in specs:  # before any training
        check_transfer(spec, s.data_dir)
    grid = get_grid(args.study, s.quick)
    figure = {"data-scale": data_scale_figure, "compute": compute_figure, "mpp": mpp_figure}[args.study]
    png = out / f"{args.study}.png"
    sr = StudyRun(grid, out, cells, dataset=s.dataset, data_dir=s.data_dir,
                  transfers=[Transfer(t, s.data_dir) for t in specs], seed=s.seed, device=s.device, reuse=reuse)
    rows = run_study(sr, on_row=lambda rows: save(figure(rows), png))
    print(f"{args.study}: {len(rows)} cells; wrote {out / RESULTS} and {png}")
    for r in rows:
        print("  " + summary(r))
    return 0


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def summary(row: dict) -> str:
    """One printed line per row; an accuracy not measured (None) is '-'."""
    shots = "  ".join(f"{k}-shot {_pct(v)}" for k, v in row["fewshot"].items())
    arm = f"{row['arm']:<10} " if "finetune_top1" in row else ""
    line = (f"{arm}{row['model']:<16} {row['pretrain_images']:>7} images  {row['pretrain_flops']:.3g} FLOPs  "
            f"top-1 {_pct(row.get('top1'))}  {shots}")
    if "finetune_top1" in row:
        line += f"  fine-tuned {_pct(row['finetune_top1'])}"
    return line
