"""`imagefolder:PATH`: a user's photos, one folder per class.

    PATH/train/<class>/*.jpg      the training split
    PATH/val/<class>/*.jpg        the eval split ("test" works too; either name is looked for)

Class names and their order come from PATH/train (sorted), so labels mean the same in both splits.

Which files count. Only files with the usual still-image extensions (torchvision's list: .jpg .jpeg .png .ppm
.pgm .pbm .bmp .tif .tiff .webp) whose header PIL can read, and JPEGs only if complete. Everything else is
skipped at index time, listed in `skipped` as (path, reason) and reported in one warning, so that `len()` and
`labels` are honest from the start and a bad file never stops training half-way. Dot-files (.DS_Store) are
ignored silently. GIFs are skipped on purpose: the classic hymenoptera set holds `train/ants/imageNotFound.gif`,
which *is* a valid 300x300 GIF, but of a "We're sorry, this image could not be found" placeholder; it is an
unusable training image that no content check would catch, and the usual 244/153 image counts of that dataset
(torchvision's ImageFolder) leave it out the same way. Convert real GIFs to PNG to use them.

The completeness check is cheap: a JPEG must end with its end-of-image marker (0xFFD9) among its last bytes;
only when it does not (truncated, or trailing data some cameras append) is the image fully decoded to decide.
A file that still fails to decode later raises an error naming it rather than being silently replaced.

Decoding and resizing to the model's size happen in `__getitem__` (in DataLoader workers) through
`Preprocess.to_array`, exactly what `vitkit predict` does, so eval on a folder and predict on its files agree.
Transparency is dropped the way Preprocess drops it (PIL's convert to RGB/L).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import UserError
from .preprocess import Preprocess

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp")
EVAL_SPLIT_NAMES = ("val", "test")


def check_image(path: Path) -> str:
    """'' if `path` looks like a complete, decodable still image; otherwise the reason it is not."""
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"not an accepted image type ({path.suffix or 'no extension'})"
    try:
        with Image.open(path) as im:
            fmt, (w, h) = im.format, im.size
            if w < 1 or h < 1:
                return "image has no pixels"
            if fmt == "JPEG" and not _jpeg_has_end(path):
                im.load()  # decide by decoding: raises OSError "image file is truncated" if it is
    except UnidentifiedImageError:
        return "not a readable image"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"corrupt or truncated image ({' '.join(str(e).split())})"
    return ""


def _jpeg_has_end(path: Path, tail: int = 64) -> bool:
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - tail))
        return b"\xff\xd9" in f.read()


def eval_split_dir(root: Path, split: str) -> Path:
    """PATH/train for "train"; PATH/val or PATH/test (whichever exists, val first) for "val"/"test"."""
    if split == "train":
        return root / "train"
    names = (split,) + tuple(n for n in EVAL_SPLIT_NAMES if n != split)
    for n in names:
        if (root / n).is_dir():
            return root / n
    return root / split


class ImageFolderDataset(torch.utils.data.Dataset):
    """Lazy folder of images: `dataset[i]` -> (uint8 tensor (C, S, S), int label)."""

    flip_ok = True

    def __init__(self, path, split: str = "train", image_size: int = 224, channels: int = 3,
                 warn: bool = True, preprocess: Preprocess | None = None):
        """preprocess: decode with this (a checkpoint's, e.g. with crop_pct < 1 or bicubic) instead of a plain
        bilinear resize to image_size; its image_size and channels then win."""
        if split not in ("train", "test", "val"):
            raise UserError(f"unknown split {split!r}; use 'train', 'val' or 'test'")
        self.root = Path(path).expanduser()
        if not self.root.is_dir():
            raise UserError(f"imagefolder: {self.root} is not a directory")
        self.split = split
        if preprocess is None:
            preprocess = Preprocess(image_size=image_size, channels=channels, mean=(0.5,) * channels,
                                    std=(0.5,) * channels)
        self.preprocess = preprocess
        self.channels = preprocess.channels
        self.image_size = preprocess.image_size
        self.name = f"imagefolder:{self.root}"
        self.class_names = self._classes()
        split_dir = eval_split_dir(self.root, split)
        if not split_dir.is_dir():
            expected = " or ".join(str(self.root / n) for n in EVAL_SPLIT_NAMES) if split != "train" else split_dir
            raise UserError(f"imagefolder: no {split} split: expected the folder {expected}")
        self.split_dir = split_dir
        extra = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")
                       and d.name not in self.class_names)
        if extra:
            raise UserError(f"imagefolder: {split_dir} has class folders {extra} that {self.root / 'train'} "
                            f"does not have (classes: {self.class_names})")
        self.paths: list[str] = []
        labels: list[int] = []
        self.skipped: list[tuple[str, str]] = []
        for label, cls in enumerate(self.class_names):
            cls_dir = split_dir / cls
            if not cls_dir.is_dir():
                continue
            for p in _walk(cls_dir):
                reason = check_image(p)
                if reason:
                    self.skipped.append((str(p), reason))
                else:
                    self.paths.append(str(p))
                    labels.append(label)
        if not self.paths:
            raise UserError(f"imagefolder: no readable images in {split_dir} (looked in {len(self.class_names)} "
                            f"class folders; skipped {len(self.skipped)} files)")
        self.labels = torch.tensor(labels, dtype=torch.int64)
        empty = [c for c, n in zip(self.class_names, self.labels.bincount(minlength=len(self.class_names))) if n == 0]
        if empty and split == "train":  # a class the model could never learn; an eval split may lack classes
            raise UserError(f"imagefolder: no readable images for class(es) {empty} in {split_dir}")
        if self.skipped and warn:
            shown = ", ".join(f"{p} ({r})" for p, r in self.skipped[:5])
            more = f" and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
            warnings.warn(f"imagefolder {split_dir}: skipped {len(self.skipped)} file(s) that are not usable "
                          f"images: {shown}{more}", stacklevel=2)
        self._loaders: dict = {}

    def _classes(self) -> list[str]:
        train = self.root / "train"
        if not train.is_dir():
            raise UserError(f"imagefolder: expected the folder {train} with one sub-folder per class")
        classes = sorted(d.name for d in train.iterdir() if d.is_dir() and not d.name.startswith("."))
        if len(classes) < 2:
            raise UserError(f"imagefolder: {train} must have at least 2 class sub-folders, found "
                            f"{len(classes)}{': ' + classes[0] if classes else ''}")
        return classes

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path = self.paths[i]
        try:
            with Image.open(path) as im:
                arr = self.preprocess.to_array(im)
        except (OSError, SyntaxError, ValueError) as e:
            raise UserError(f"imagefolder: cannot decode {path} ({e}); remove or replace the file") from None
        return torch.from_numpy(np.array(arr.transpose(2, 0, 1), order="C")), int(self.labels[i])  # a writable copy

    def get_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode a batch in this process (for small evals and tests)."""
        items = [self[int(i)] for i in idx]
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.int64)

    def iterate_batches(self, indices: torch.Tensor, batch_size: int, num_workers: int = 0):
        """Batches of exactly the chunks of `indices`, decoded by `num_workers` processes. With workers, one
        DataLoader is kept per worker count and its processes persist across calls (epochs), so each epoch
        does not pay the worker start-up again; a second iteration started while one is running gets its own."""
        sampler = _ChunkSampler([c.tolist() for c in indices.split(batch_size)])
        if num_workers == 0:
            yield from torch.utils.data.DataLoader(self, batch_sampler=sampler, num_workers=0)
            return
        entry = self._loaders.get(num_workers)
        if entry is None or entry["busy"]:
            persistent = entry is None  # a concurrent second iteration gets throw-away workers
            loader_sampler = _ChunkSampler([])
            loader = torch.utils.data.DataLoader(self, batch_sampler=loader_sampler, num_workers=num_workers,
                                                 persistent_workers=persistent, prefetch_factor=4)
            entry = {"loader": loader, "sampler": loader_sampler, "busy": False}
            if persistent:
                self._loaders[num_workers] = entry
        entry["sampler"].chunks = sampler.chunks
        entry["busy"] = True
        try:
            yield from entry["loader"]
        finally:
            entry["busy"] = False

    def __getstate__(self):  # workers need the paths, not the parent's DataLoaders
        state = dict(self.__dict__)
        state["_loaders"] = {}
        return state

    def __repr__(self) -> str:
        return (f"ImageFolderDataset({str(self.split_dir)!r}, {len(self)} images, {self.num_classes} classes, "
                f"{len(self.skipped)} skipped)")


class _ChunkSampler:
    """A batch sampler whose batches can be swapped between epochs (the DataLoader iterates it anew each time,
    in the main process, so persistent workers see the new chunks)."""

    def __init__(self, chunks: list):
        self.chunks = chunks

    def __iter__(self):
        return iter(self.chunks)

    def __len__(self):
        return len(self.chunks)


def _walk(d: Path):
    for dirpath, dirnames, filenames in os.walk(d, followlinks=True):
        dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
        for f in sorted(filenames):
            if not f.startswith("."):
                yield Path(dirpath) / f
