"""Build the small transfer sets of docs/transfer.md as image folders (train/<class>/*, test/<class>/*).

    python scripts/make_transfer_sets.py OUT [--data ../shared/data] [--per-class 100]

OUT/cifar10-1k       CIFAR-10 (JPEG copy in DATA/cifar10-jpeg): the first N train images per class, all 10,000 test
OUT/mnist-1k         MNIST (official IDX files in DATA/mnist): the first N train images per class as PNG, all test
OUT/fashion-mnist-1k Fashion-MNIST (official files, Debian's dataset-fashion-mnist): the same
With --per-class 10 the same three at 10 per class (OUT/cifar10-100, ...: docs/transfer.md uses cifar10-100).
With --untuned, instead: three CIFAR-10 folders that no default was chosen on, disjoint from the sets above (which
take the first 10 or 100 train images per class) and from each other, in train and in test (of the 2,000 train and
1,000 test images per class in DATA/cifar10-jpeg):
OUT/untuned-cifar10-10  train images 1960-1969 of each class, test images 200-399
OUT/untuned-cifar10-30  train images 1970-1999, test images 0-199
OUT/untuned-cifar10-60  train images 1900-1959, test images 400-599
hymenoptera and the full cifar10-jpeg folder are used as they are. "First N" is in file/IDX order, so the sets are
the same on every machine. Files are copied (JPEG) or written (PNG) once; an existing OUT/<set> is left alone.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from vitkit.data.datasets import load_dataset
from vitkit.errors import UserError


# name: (train slice, test slice) per class, in file order
UNTUNED = {"untuned-cifar10-10": (slice(1960, 1970), slice(200, 400)),
           "untuned-cifar10-30": (slice(1970, 2000), slice(0, 200)),
           "untuned-cifar10-60": (slice(1900, 1960), slice(400, 600))}


def cifar(src: Path, dst: Path, train: slice, test: slice = slice(None)) -> None:
    for split, part in (("train", train), ("test", test)):
        if not (src / split).is_dir():
            raise UserError(f"{src / split}: no such folder (expected the cifar10-jpeg layout, train/ and test/)")
        for cdir in sorted(p for p in (src / split).iterdir() if p.is_dir()):
            files = sorted(cdir.iterdir())[part]
            (dst / split / cdir.name).mkdir(parents=True, exist_ok=True)
            for f in files:
                shutil.copyfile(f, dst / split / cdir.name / f.name)


def idx(name: str, data_dir, dst: Path, per_class: int) -> None:
    for split in ("train", "test"):
        ds = load_dataset(name, split, data_dir=data_dir)
        labels = ds.labels.numpy()
        keep = np.arange(len(labels))
        if split == "train":
            keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(ds.num_classes)])
            keep.sort()
        for i in keep:
            cname = ds.class_names[labels[i]].replace("/", "-")
            d = dst / split / cname
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(ds.images[i, 0].numpy(), "L").save(d / f"{i:05d}.png")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--untuned", action="store_true", help="build the three untuned CIFAR-10 folders instead")
    a = p.parse_args()
    if a.per_class < 1:
        print("make_transfer_sets: error: --per-class must be >= 1", file=sys.stderr)
        return 2
    n = a.per_class * 10
    if a.untuned:
        jobs = {name: (lambda d, tr=tr, te=te: cifar(a.data / "cifar10-jpeg", d, tr, te))
                for name, (tr, te) in UNTUNED.items()}
    else:
        jobs = {f"cifar10-{n // 1000}k" if n % 1000 == 0 else f"cifar10-{n}":
                lambda d: cifar(a.data / "cifar10-jpeg", d, slice(a.per_class)),
                f"mnist-{n // 1000}k" if n % 1000 == 0 else f"mnist-{n}":
                lambda d: idx("mnist", a.data / "mnist", d, a.per_class),
                f"fashion-mnist-{n // 1000}k" if n % 1000 == 0 else f"fashion-mnist-{n}":
                lambda d: idx("fashion-mnist", None, d, a.per_class)}
    for name, job in jobs.items():
        dst = a.out / name
        if dst.exists():
            print(f"{dst}: exists, left alone")
            continue
        tmp = a.out / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            job(tmp)
        except UserError as e:  # a missing dataset: one line, not a traceback
            shutil.rmtree(tmp, ignore_errors=True)
            print(f"make_transfer_sets: error: {e}", file=sys.stderr)
            return 2
        tmp.rename(dst)
        print(f"{dst}: written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
