"""Throughput of the data path: BatchAugment on uint8 batches, and imagefolder decoding with 0 and N workers.

    python scripts/bench_data.py [--threads 2] [--imagefolder ../shared/data/hymenoptera] [--kornia]

Numbers go in vitkit/data/README.md. Timings are medians of a few repeats after warm-up; on a shared machine
expect noise of tens of percent.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vitkit.data.datasets import iterate_batches, load_dataset  # noqa: E402
from vitkit.data.transforms import BatchAugment, RandAugment  # noqa: E402


def rate(fn, n_images: int, repeats: int = 5, warmup: int = 2) -> str:
    """'W img/s wall, C img/s per CPU-second': the best of `repeats` runs. CPU time (this process, all its
    threads) is what stays comparable on a machine shared with other jobs; wall time is what a user waits."""
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return f"{n_images / min(walls):7.0f} img/s wall, {n_images / min(cpus):7.0f} img/s per CPU-second"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--imagefolder", default=str(ROOT.parent / "shared" / "data" / "hymenoptera"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--kornia", action="store_true", help="also time kornia's RandAugment (needs kornia)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)

    small = load_dataset("embedded").images[:256]
    labels = torch.arange(256) % 10
    photos = torch.randint(0, 256, (64, 3, 224, 224), dtype=torch.uint8, generator=g)
    configs = {
        "crop+flip": dict(flip=True),
        "crop+flip+RA(2,9)": dict(flip=True, randaugment=(2, 9)),
        "crop+flip+RA(2,9)+mixup/cutmix+ls": dict(flip=True, randaugment=(2, 9), mixup=0.8, cutmix=1.0,
                                                   label_smoothing=0.1),
    }
    print(f"torch {torch.__version__}, {args.threads} threads")
    for name, kw in configs.items():
        a28 = BatchAugment(28, 10, crop="pad", **kw)
        a224 = BatchAugment(224, 10, crop="rrc", **kw)
        print(f"BatchAugment {name:34s} 256x1x28x28 (pad):  {rate(lambda: a28(small, labels, g), 256)}")
        print(f"BatchAugment {name:34s} 64x3x224x224 (rrc): {rate(lambda: a224(photos, labels[:64], g), 64)}")
    ra = RandAugment(2, 9)
    print(f"RandAugment(2,9) alone, 256x1x28x28:  {rate(lambda: ra(small, g), 256)}")
    print(f"RandAugment(2,9) alone, 64x3x224x224: {rate(lambda: ra(photos, g), 64)}")
    if args.kornia:
        from kornia.augmentation.auto import RandAugment as KorniaRandAugment

        kra = KorniaRandAugment(n=2, m=9)
        photos_f = photos.float() / 255
        small3 = (small.float() / 255).expand(-1, 3, -1, -1).contiguous()  # kornia's Saturation needs 3 channels
        print(f"kornia RandAugment(n=2, m=9), float, 256x3x28x28:  {rate(lambda: kra(small3), 256)}")
        print(f"kornia RandAugment(n=2, m=9), float, 64x3x224x224: {rate(lambda: kra(photos_f), 64)}")

    folder = Path(args.imagefolder)
    if (folder / "train").is_dir():
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            d = load_dataset(f"imagefolder:{folder}", "train", image_size=224, channels=3)
        idx = torch.arange(len(d))
        for workers in (0, args.workers):
            def epoch():
                for _ in iterate_batches(d, idx, 32, num_workers=workers):
                    pass
            r = rate(epoch, len(d), repeats=3, warmup=1)  # CPU time excludes the workers' own processes
            print(f"imagefolder decode+resize to 224, {len(d)} images, batch 32, {workers} workers: {r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
