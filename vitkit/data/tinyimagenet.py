"""Tiny ImageNet (Stanford CS231n): 200 ImageNet classes, 64x64 photos; vitkit's pre-training set.

    load_tiny_imagenet("train", data_dir="~/data")   # ArrayDataset, uint8 (N, 3, 64, 64)

Where it is read from, first match wins, in each root (`data_dir`, `$VITKIT_DATA`, `~/.cache/vitkit`): the root
itself when it *is* the extracted `tiny-imagenet-200/` folder, `ROOT/tiny-imagenet-200/`, or the official zip
`ROOT/tiny-imagenet-200.zip` read in place (members are decoded straight from the archive, nothing is extracted).
Without either, the official zip is downloaded into ~/.cache/vitkit/tiny-imagenet/ when the network allows
(vitkit/download.py: progress bar, lock, atomic rename, size and md5 checked on arrival).

The official layout: `wnids.txt` (the 200 class ids; classes are numbered in sorted id order, as an ImageFolder of
`train/` would number them), `words.txt` (id -> names; the first name is the class name), `train/<wnid>/images/
<wnid>_<i>.JPEG` (500 per class) and `val/images/val_<k>.JPEG` labelled by `val/val_annotations.txt`. The unlabelled
test split is not used: "test" here means the labelled validation split, the one every paper reports. A copy with
fewer training images per class (e.g. the 250 per class of a trimmed copy) loads with a one-line note of what is
missing; a class with no images, a missing annotation file or an image that does not decode is an error. About 2 %
of the photos are greyscale JPEGs; they are converted to RGB.

Decoded images are cached as one uncompressed .npz of uint8 arrays per split in ~/.cache/vitkit/tiny-imagenet/
(named by a digest of the file listing, so a changed copy is decoded again): every run after the first loads the
split with one read instead of decoding 60,000 JPEGs. Decoding is hand-written here (PIL in a thread pool) because
the only library that packages this dataset, torchvision, does not install beside this project's CPU torch;
benchmarks/README.md gives what the first pass and a cached load cost.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..download import DownloadError, fetch
from ..errors import UserError
from .datasets import ArrayDataset, _roots, cache_dir, md5sum

FOLDER = "tiny-imagenet-200"
ZIP_NAME = "tiny-imagenet-200.zip"
ZIP_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
ZIP_BYTES = 248_100_043
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TRAIN_PER_CLASS, VAL_PER_CLASS, SIZE = 500, 50, 64


class _Source:
    """The files of one copy, extracted or zipped, behind one interface: read(relative path) -> bytes."""

    def __init__(self, where: Path):
        self.where = where
        self.zip = zipfile.ZipFile(where) if where.is_file() else None
        if self.zip is not None:
            names = [n for n in self.zip.namelist() if not n.endswith("/")]
            prefix = FOLDER + "/" if any(n.startswith(FOLDER + "/") for n in names) else ""
            self.files = {n[len(prefix):]: n for n in names if n.startswith(prefix)}

    def exists(self, rel: str) -> bool:
        return rel in self.files if self.zip is not None else (self.where / rel).is_file()

    def read(self, rel: str) -> bytes:
        if self.zip is not None:
            return self.zip.read(self.files[rel])
        return (self.where / rel).read_bytes()

    def listdir(self, rel: str) -> list[str]:
        """File names (not folders) directly inside `rel`."""
        if self.zip is not None:
            pre = rel.rstrip("/") + "/"
            return sorted(k[len(pre):] for k in self.files if k.startswith(pre) and "/" not in k[len(pre):])
        d = self.where / rel
        return sorted(e.name for e in os.scandir(d) if e.is_file()) if d.is_dir() else []

    def fingerprint(self) -> str:
        st = self.where.stat()
        return f"{self.where.resolve()}|{st.st_size}|{st.st_mtime_ns}"


# fingerprints (_Source.fingerprint: path, size, mtime) of zips whose md5 matched: a 248 MB file is hashed once per
# process, not once per split (nor again right after a download, which fetch() has just checked)
_VERIFIED: set = set()


def _verify_zip(src: _Source) -> None:
    if src.fingerprint() in _VERIFIED:
        return
    got = md5sum(src.where)
    if got != ZIP_MD5:
        raise UserError(f"{src.where}: checksum mismatch: expected md5 {ZIP_MD5} (the official {ZIP_NAME}), got {got}")
    _VERIFIED.add(src.fingerprint())


def find_source(data_dir=None, download: bool = False) -> _Source:
    for root in _roots(data_dir):
        for cand in (root, root / FOLDER, root / "tiny-imagenet"):
            if (cand / "wnids.txt").is_file():
                return _Source(cand)
        for cand in (root / ZIP_NAME, root / "tiny-imagenet" / ZIP_NAME):
            if cand.is_file():
                return _checked_zip(cand)
    tried = ""
    if download:
        dest = cache_dir() / "tiny-imagenet" / ZIP_NAME
        print(f"vitkit: downloading Tiny ImageNet ({ZIP_BYTES / 1e6:.0f} MB) from {URL} to {dest}", file=sys.stderr)
        try:
            there = dest.is_file()
            src = _Source(fetch(URL, dest, md5=ZIP_MD5, size=ZIP_BYTES))
            if ZIP_MD5 and not there:  # fetch checked what it downloaded (a copy already there it returns as is)
                _VERIFIED.add(src.fingerprint())
            return src
        except DownloadError as e:
            if not e.connection:  # it arrived, but is not the official zip
                raise
            tried = f"; could not download it: {e.url} ({e.reason})"
    where = Path(data_dir).expanduser() if data_dir else cache_dir() / "tiny-imagenet"
    raise UserError(f"tiny-imagenet not found: need the extracted {FOLDER}/ folder or {ZIP_NAME} (md5 {ZIP_MD5}) "
                    f"in {where} (or pass --data-dir / set VITKIT_DATA){tried}")


def _checked_zip(path: Path) -> _Source:
    size = path.stat().st_size
    if size != ZIP_BYTES:
        raise UserError(f"{path}: {size} bytes, but the official {ZIP_NAME} has {ZIP_BYTES} (md5 {ZIP_MD5}); "
                        f"a partial download? delete it and download again")
    try:
        return _Source(path)
    except zipfile.BadZipFile as e:
        raise UserError(f"{path} is not a readable zip file ({e})") from None


# ------------------------------------------------------------------------------------------------ the listing


def class_ids(src: _Source) -> list[str]:
    if not src.exists("wnids.txt"):
        raise UserError(f"{src.where}: no wnids.txt; not the official Tiny ImageNet layout")
    ids = sorted({w.strip() for w in src.read("wnids.txt").decode().split() if w.strip()})
    if not ids:
        raise UserError(f"{src.where}/wnids.txt lists no classes")
    return ids


def class_names(src: _Source, ids: list[str]) -> list[str]:
    """The first name words.txt gives each id ('n02206856' -> 'bee'); the id itself where words.txt is absent."""
    words = {}
    if src.exists("words.txt"):
        for line in src.read("words.txt").decode("utf-8", "replace").splitlines():
            wnid, _, names = line.partition("\t")
            words[wnid.strip()] = names.split(",")[0].strip()
    return [words.get(i) or i for i in ids]


def listing(src: _Source, split: str, ids: list[str]) -> tuple[list[str], np.ndarray, Optional[str]]:
    """(relative image paths, int64 labels, a note on what is missing or None) for 'train' or 'val'."""
    index = {w: k for k, w in enumerate(ids)}
    files, labels, counts = [], [], {}
    if split == "train":
        for k, wnid in enumerate(ids):
            names = [n for n in src.listdir(f"train/{wnid}/images") if n.lower().endswith((".jpeg", ".jpg"))]
            if not names:
                raise UserError(f"{src.where}: class {wnid} has no training images in train/{wnid}/images/")
            files += [f"train/{wnid}/images/{n}" for n in names]
            labels += [k] * len(names)
            counts[wnid] = len(names)
        expected = TRAIN_PER_CLASS
    else:
        if not src.exists("val/val_annotations.txt"):
            raise UserError(f"{src.where}: no val/val_annotations.txt (the validation labels)")
        for n, line in enumerate(src.read("val/val_annotations.txt").decode().splitlines(), 1):
            parts = line.split("\t")
            if len(parts) < 2 or not line.strip():
                continue
            if parts[1] not in index:
                raise UserError(f"{src.where}/val/val_annotations.txt line {n}: unknown class {parts[1]!r}")
            rel = f"val/images/{parts[0]}"
            if not src.exists(rel):
                continue
            files.append(rel)
            labels.append(index[parts[1]])
            counts[parts[1]] = counts.get(parts[1], 0) + 1
        expected = VAL_PER_CLASS
        if not files:
            raise UserError(f"{src.where}: none of the images val/val_annotations.txt names is in val/images/")
    note = None
    have, want = len(files), expected * len(ids)
    if have < want:
        per = sorted(set(counts.values()))
        per_txt = f"{per[0]}" if len(per) == 1 else f"{per[0]}-{per[-1]}"
        note = (f"tiny-imagenet {split}: {have:,} of the official {want:,} images found in {src.where} "
                f"({per_txt} of {expected} per class); using what is there")
    return files, np.asarray(labels, dtype=np.int64), note


# ----------------------------------------------------------------------------------------------- decoding


def decode(data: bytes, name: str) -> np.ndarray:
    """JPEG bytes -> uint8 (3, 64, 64): greyscale and CMYK converted to RGB, other sizes resized (bilinear)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
            if im.size != (SIZE, SIZE):
                im = im.resize((SIZE, SIZE), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"tiny-imagenet: cannot decode {name} ({e})") from None


def decode_all(src: _Source, files: list[str]) -> np.ndarray:
    """Every file decoded to uint8 (N, 3, 64, 64): PIL in a thread pool for a folder, in this thread for a zip (one
    ZipFile handle is not safe to read from several threads)."""
    out = np.empty((len(files), 3, SIZE, SIZE), dtype=np.uint8)

    def one(i: int) -> None:
        out[i] = decode(src.read(files[i]), f"{src.where}/{files[i]}")

    workers = 1 if src.zip is not None else (os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, range(len(files))))
    return out


# -------------------------------------------------------------------------------------------------- caching


def _cache_path(src: _Source, split: str, files: list[str]) -> Path:
    h = hashlib.sha256(src.fingerprint().encode())
    for f in files:
        h.update(f.encode() + b"\n")
    if src.zip is None:  # an extracted copy can change file by file: include sizes and times
        for f in files:
            st = (src.where / f).stat()
            h.update(f"{st.st_size},{st.st_mtime_ns};".encode())
    root = cache_dir()
    return root / "tiny-imagenet" / f"{split}-{h.hexdigest()[:16]}.npz"


def _save_atomic(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, images=images, labels=labels)
        os.replace(tmp, path)
    except OSError as e:  # a read-only or full cache only costs the next run a decode
        print(f"vitkit: note: could not cache decoded images in {path} ({e.strerror or e})", file=sys.stderr)


def load_tiny_imagenet(split: str = "train", data_dir=None, download: bool = False, cache: bool = True,
                       verbose: bool = True):
    """The split ('train' or 'test' = the labelled validation split) as an ArrayDataset of uint8 (N, 3, 64, 64)."""
    split = {"test": "val", "validation": "val"}.get(split, split)
    if split not in ("train", "val"):
        raise UserError(f"unknown tiny-imagenet split {split!r}; use 'train' or 'test'/'val'")
    src = find_source(data_dir, download)
    ids = class_ids(src)
    files, labels, note = listing(src, split, ids)
    if note and verbose:
        print(f"vitkit: note: {note}", file=sys.stderr)
    path = _cache_path(src, split, files) if cache else None
    images = None
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                images, cached_labels = z["images"], z["labels"]
            if images.shape != (len(files), 3, SIZE, SIZE) or not np.array_equal(cached_labels, labels):
                images = None
        except (OSError, ValueError, KeyError, EOFError):  # a damaged cache file is decoded again
            images = None
    if images is None:
        if src.zip is not None and ZIP_MD5:  # before decoding; the cache is keyed by size and time
            _verify_zip(src)
        if verbose:
            print(f"vitkit: decoding {len(files):,} tiny-imagenet {split} images from {src.where} "
                  f"(once; cached as uint8 in {path.parent if path else 'memory'})", file=sys.stderr)
        images = decode_all(src, files)
        if path is not None:
            _save_atomic(path, images, labels)
    return ArrayDataset(torch.from_numpy(images), torch.from_numpy(labels), class_names(src, ids), "tiny-imagenet",
                        flip_ok=True)
