"""Regenerate vitkit/data/embedded/fashion_mnist_32k.npz, the dataset `vitkit train` uses with no arguments.

    python scripts/make_embedded.py [--source /usr/share/datasets/fashion-mnist] [--seed 0]

Takes 3000 images per class from the official Fashion-MNIST train split and 200 per class from the official test
split, chosen per class with `numpy.random.default_rng(seed).choice(..., replace=False)` (classes in order 0..9,
one generator for both splits, train first), sorted by their official index. The source files are verified
against the official checksums before anything is taken. The output is deterministic: the same source and seed
give the same arrays (and the same file bytes, since the zip entries carry a fixed timestamp).

Stored arrays (all fixed-width, loadable with allow_pickle=False):
    train_images uint8 (30000, 28, 28)   train_labels uint8 (30000,)   train_indices uint16 (30000,)
    test_images  uint8 (2000, 28, 28)    test_labels  uint8 (2000,)    test_indices  uint16 (2000,)
    class_names  <U11 (10,)              seed int64 ()
`*_indices` are the positions in the official files, so anyone can check the images are byte-identical.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vitkit.data.datasets import FMNIST_CLASSES, read_idx_split  # noqa: E402

OUT = ROOT / "vitkit" / "data" / "embedded" / "fashion_mnist_32k.npz"
PER_CLASS = {"train": 3000, "test": 200}


def choose(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    picked = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)]
    return np.sort(np.concatenate(picked))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", default="/usr/share/datasets/fashion-mnist", help="folder with the four IDX .gz files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    arrays = {}
    for split in ("train", "test"):
        images, labels = read_idx_split("fashion-mnist", split, Path(args.source))  # md5-verified
        idx = choose(labels, PER_CLASS[split], rng)
        arrays[f"{split}_images"] = images[idx]
        arrays[f"{split}_labels"] = labels[idx].astype(np.uint8)
        arrays[f"{split}_indices"] = idx.astype(np.uint16)
    arrays["class_names"] = np.array(FMNIST_CLASSES)
    arrays["seed"] = np.array(args.seed, dtype=np.int64)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _save_deterministic(out, arrays)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): "
          + ", ".join(f"{k} {v.dtype}{list(v.shape)}" for k, v in arrays.items()))
    return 0


def _save_deterministic(path: Path, arrays: dict) -> None:
    """np.savez_compressed, but with a fixed zip timestamp so regenerating gives identical bytes."""
    import io
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


if __name__ == "__main__":
    sys.exit(main())
