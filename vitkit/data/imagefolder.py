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

The completeness check is cheap for the two common formats: a JPEG must end with its end-of-image marker (0xFFD9)
among its last bytes, and every chunk of a PNG must pass its CRC up to the end chunk (PIL's verify: the file is
read, nothing is decompressed). Only when that fails (truncated, or trailing data some cameras append), and for
the rarer formats always, is the image fully decoded to decide. Images larger than PIL's decompression-bomb limit
are skipped too. A file that still fails to decode later stops the run with one line naming it (also from a
DataLoader worker) rather than being silently replaced.

Symbolic links are followed, but each real directory is entered once: a link loop, or a link from one class
folder into another, adds no image twice.

Decoding and resizing to the model's size go through `Preprocess.to_array`, exactly what `vitkit predict` does,
so eval on a folder and predict on its files agree. Transparency is dropped the way Preprocess drops it (PIL's
convert to RGB/L).

Decoded once. A small dataset is read for many epochs (1,200 steps of 128 are 15 passes over 10,000 photos), and
decoding a 400 px JPEG and resizing it costs about as much as a training step spends on the image, so when the
decoded split fits in `CACHE_BYTES` (at the model's resolution: 10,000 images at 64 px are 123 MB) each image is
decoded the first time a batch needs it, in `max(1, num_workers)` threads (PIL releases the GIL while decoding),
and kept as uint8. Augmentation happens later, on batches, so the cache changes no pixel a model sees. A split
larger than that is decoded anew each epoch, in `num_workers` DataLoader processes.
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

CACHE_BYTES = 1 << 30  # decoded images kept in memory per split (above this, decoded each epoch)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp")
EVAL_SPLIT_NAMES = ("val", "test")


def check_image(path: Path) -> str:
    """'' if `path` looks like a complete, decodable still image; otherwise the reason it is not."""
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"not an accepted image type ({path.suffix or 'no extension'})"
    if not path.is_file():
        return "not a file (a broken link?)"
    try:
        with Image.open(path) as im:
            fmt, (w, h) = im.format, im.size
            if w < 1 or h < 1:
                return "image has no pixels"
        if not _complete_without_decoding(path, fmt):
            with Image.open(path) as im:
                im.load()  # decide by decoding: raises OSError "image file is truncated" if it is
    except UnidentifiedImageError:
        return "not a readable image"
    except Image.DecompressionBombError as e:
        return f"too large to decode ({' '.join(str(e).split())})"
    except (OSError, SyntaxError, ValueError) as e:
        return f"corrupt or truncated image ({' '.join(str(e).split())})"
    return ""


def _complete_without_decoding(path: Path, fmt: str) -> bool:
    """The cheap checks: a JPEG ends with its end-of-image marker; every chunk of a PNG, up to its end chunk,
    passes its CRC (PIL's verify, which reads the file but decompresses nothing). False means: decode to decide
    (a JPEG with camera data appended, a PNG without its end chunk, and every other format)."""
    if fmt in ("JPEG", "MPO"):  # MPO: the multi-picture JPEGs some cameras write
        return _jpeg_has_end(path)
    if fmt == "PNG":
        try:
            with Image.open(path) as im:
                im.verify()
        except (OSError, SyntaxError, ValueError):
            return False
        return True
    return False


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
        class_dirs = [split_dir / cls for cls in self.class_names]
        seen = {_dir_key(d) for d in class_dirs if d.is_dir()}  # each class folder is walked as its own class
        for label, cls_dir in enumerate(class_dirs):
            if not cls_dir.is_dir():
                continue
            for p in _walk(cls_dir, seen):
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
        self.cache_bytes = CACHE_BYTES
        self._cache = None  # uint8 (N, C, S, S) once allocated, with self._decoded (N,) bool

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

    def _decode(self, i: int) -> np.ndarray:
        """Image i as uint8 (C, S, S)."""
        path = self.paths[i]
        try:
            with Image.open(path) as im:
                arr = self.preprocess.to_array(im)
        except (OSError, SyntaxError, ValueError) as e:
            raise UserError(f"imagefolder: cannot decode {path} ({e}); remove or replace the file") from None
        return np.array(arr.transpose(2, 0, 1), order="C")  # a writable copy

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self._cache is not None and self._decoded[i]:
            return torch.from_numpy(self._cache[i].copy()), int(self.labels[i])
        return torch.from_numpy(self._decode(i)), int(self.labels[i])

    @property
    def cacheable(self) -> bool:
        """Whether the decoded split fits in `cache_bytes`."""
        return len(self) * self.channels * self.image_size ** 2 <= self.cache_bytes

    def _cached_batch(self, idx: torch.Tensor, threads: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch from the cache, decoding (in `threads` threads) the images of `idx` not decoded yet."""
        if self._cache is None:
            self._cache = np.empty((len(self), self.channels, self.image_size, self.image_size), np.uint8)
            self._decoded = np.zeros(len(self), bool)
        ids = idx.numpy()
        missing = [int(i) for i in np.unique(ids[~self._decoded[ids]])]
        if missing:
            if threads > 1 and len(missing) > 1:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(min(threads, len(missing))) as pool:
                    arrays = list(pool.map(self._decode, missing))
            else:
                arrays = [self._decode(i) for i in missing]
            for i, a in zip(missing, arrays):
                self._cache[i] = a
            self._decoded[missing] = True
        return torch.from_numpy(self._cache[ids]), self.labels[idx]

    def get_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode a batch in this process (for small evals and tests)."""
        items = [self[int(i)] for i in idx]
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.int64)

    def iterate_batches(self, indices: torch.Tensor, batch_size: int, num_workers: int = 0):
        """Batches of exactly the chunks of `indices`, decoded by `num_workers` processes. With workers, one
        DataLoader is kept per worker count and its processes persist across calls (epochs), so each epoch
        does not pay the worker start-up again; a second iteration started while one is running gets its own.
        A split that fits in `cache_bytes` is decoded once instead, in max(1, num_workers) threads, and kept."""
        if self.cacheable:
            for chunk in indices.split(batch_size):
                yield self._cached_batch(chunk, max(1, num_workers))
            return
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
        except UserError as e:  # raised in a worker: the DataLoader wraps it with the worker's traceback
            raise UserError(_original_message(str(e))) from None
        finally:
            entry["busy"] = False

    def __getstate__(self):  # workers need the paths, not the parent's DataLoaders
        state = dict(self.__dict__)
        state["_loaders"] = {}
        state["_cache"] = None  # (a worker decodes what it is given)
        return state

    def __repr__(self) -> str:
        return (f"ImageFolderDataset({str(self.split_dir)!r}, {len(self)} images, {self.num_classes} classes, "
                f"{len(self.skipped)} skipped)")


def _original_message(wrapped: str) -> str:
    """The message of an error re-raised from a DataLoader worker, without the worker's traceback around it."""
    last = wrapped.strip().splitlines()[-1] if wrapped.strip() else wrapped
    prefix = f"{UserError.__module__}.{UserError.__qualname__}: "
    return last[len(prefix):] if last.startswith(prefix) else last


class _ChunkSampler:
    """A batch sampler whose batches can be swapped between epochs (the DataLoader iterates it anew each time,
    in the main process, so persistent workers see the new chunks)."""

    def __init__(self, chunks: list):
        self.chunks = chunks

    def __iter__(self):
        return iter(self.chunks)

    def __len__(self):
        return len(self.chunks)


def _walk(d: Path, seen: set):
    """Image candidates under `d`, sorted, following symbolic links but entering each real directory once, so
    that a link loop (or a link to another class folder, whose keys are in `seen`) adds nothing twice."""
    for dirpath, dirnames, filenames in os.walk(d, followlinks=True):
        keep = []
        for n in sorted(n for n in dirnames if not n.startswith(".")):
            key = _dir_key(Path(dirpath) / n)
            if key not in seen:
                seen.add(key)
                keep.append(n)
        dirnames[:] = keep
        for f in sorted(filenames):
            if not f.startswith("."):
                yield Path(dirpath) / f


def _dir_key(d: Path) -> tuple:
    """What identifies a real directory, whatever links lead to it."""
    st = d.stat()
    return st.st_dev, st.st_ino
