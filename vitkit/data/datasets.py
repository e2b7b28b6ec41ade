"""Datasets: the embedded default, the classic named sets read from their official files, and folders of photos.

    load_dataset("embedded")                     # 30k/2k Fashion-MNIST shipped in the package: works offline
    load_dataset("mnist", "test")                # official IDX files, md5-verified
    load_dataset("cifar10", data_dir="~/data")   # official python tarball or its extracted folder
    load_dataset("imagefolder:~/photos", "train", image_size=224, channels=3)

Two kinds of dataset come back, both with `labels`, `class_names`, `channels`, `name` and `flip_ok`:
  * `ArrayDataset`: the whole split in memory as one uint8 tensor (N, C, H, W) at its natural size (28 px MNIST,
    32 px CIFAR). Batches are plain tensor indexing: 60000 MNIST images are 47 MB, and workers would only add
    copying.
  * `ImageFolderDataset`: user photos of any size, decoded lazily (in DataLoader workers) and resized to the
    model's size by `Preprocess.to_array`, the very code `vitkit predict` uses, so that eval and predict agree.
Both hand out uint8 batches; augmentation (transforms.py) and normalisation (Preprocess.normalize) happen on the
main process, on whole batches.

Where files are looked for, first match wins: `data_dir`, `$VITKIT_DATA`, `~/.cache/vitkit`, then system paths
(/usr/share/datasets/<name>, where Debian's dataset-fashion-mnist puts its files). In each root the files may
sit directly, in a sub-folder named after the dataset (ROOT/mnist/), or in torchvision's layout
(ROOT/MNIST/raw/). Missing files are downloaded from the official URL into ~/.cache/vitkit/<name>/ when the
network allows (set VITKIT_NO_DOWNLOAD=1 to forbid it), by vitkit/download.py, the downloader pre-trained weights
use too: progress bar, lock, atomic rename, md5 checked on arrival, mirrors tried in order while they cannot be
reached; otherwise a one-line UserError says which files to put where. Every file is md5-checked against the
official release before use.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..download import DownloadError, allowed, fetch, fetch_first
from ..errors import UserError
from .imagefolder import ImageFolderDataset  # photos, decoded lazily: its own module, part of this API
from .names import DATASET_NAMES  # noqa: F401 - re-exported: the names the loader accepts

EMBEDDED_FILE = Path(__file__).with_name("embedded") / "fashion_mnist_32k.npz"

MNIST_CLASSES = [str(i) for i in range(10)]
FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot"]

# --------------------------------------------------------------------------------------------------- file specs


@dataclass(frozen=True)
class DataFile:
    """One official file: its name and the md5s accepted for it. `md5` is the official file's; `raw_md5` is the
    md5 of its decompressed content, for .gz files, so that a recompressed copy (Debian's `gzip -n`) or an
    already-decompressed one (torchvision's raw/ folder) is accepted too."""

    name: str
    md5: str
    raw_md5: str = ""


@dataclass(frozen=True)
class Source:
    folder_names: tuple  # sub-folders of a root that may hold the files
    urls: tuple  # base URLs, tried in order
    system_dirs: tuple = ()
    files: dict = field(default_factory=dict)  # split -> tuple of DataFile


_IDX = dict(
    mnist=Source(
        folder_names=("mnist", "MNIST/raw"),
        urls=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        system_dirs=("/usr/share/datasets/mnist",),
        files={
            "train": (DataFile("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                               "6bbc9ace898e44ae57da46a324031adb"),
                      DataFile("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432",
                               "a25bea736e30d166cdddb491f175f624")),
            "test": (DataFile("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3",
                              "2646ac647ad5339dbf082846283269ea"),
                     DataFile("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c",
                              "27ae3e4e09519cfbb04c329615203637")),
        }),
    **{"fashion-mnist": Source(
        folder_names=("fashion-mnist", "fashion_mnist", "FashionMNIST/raw"),
        urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        files={
            "train": (DataFile("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                               "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
                      DataFile("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe",
                               "9018921c3c673c538a1fc5bad174d6f9")),
            "test": (DataFile("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79",
                              "8181f5470baa50b63fa0f6fddb340f0a"),
                     DataFile("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310",
                              "15d484375f8d13e6eb1aabb0c3f46965")),
        })},
)

# CIFAR: the official tarball, or the folder it extracts to (then each member file is checked instead).
_CIFAR = {
    "cifar10": dict(
        tarball=DataFile("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
        folder="cifar-10-batches-py", url="https://www.cs.toronto.edu/~kriz/",
        train=(("data_batch_1", "c99cafc152244af753f735de768cd75f"),
               ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
               ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
               ("data_batch_4", "634d18415352ddfa80567beed471001a"),
               ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb")),
        test=(("test_batch", "40351d587109b95175f43aff81a1287e"),),
        meta=("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"), label_key="labels", names_key="label_names"),
    "cifar100": dict(
        tarball=DataFile("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
        folder="cifar-100-python", url="https://www.cs.toronto.edu/~kriz/",
        train=(("train", "16019d7e3df5f24257cddd939b257f8d"),),
        test=(("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),),
        meta=("meta", "7973b15100ade9c7d40fb424638fde48"), label_key="fine_labels", names_key="fine_label_names"),
}

# ------------------------------------------------------------------------------------------------ the datasets


class ArrayDataset:
    """A whole split in memory: uint8 images (N, C, H, W) and int64 labels (N,)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, class_names: list, name: str,
                 flip_ok: bool = True):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"ArrayDataset images must be uint8 (N, C, H, W), got {images.dtype} "
                             f"{tuple(images.shape)}")
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.class_names = list(class_names)
        self.channels = images.shape[1]
        self.name = name
        self.flip_ok = flip_ok  # False for digits: a mirrored 2 is not a 2

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    def __len__(self) -> int:
        return len(self.images)

    def get_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[idx], self.labels[idx]

    def __repr__(self) -> str:
        return (f"ArrayDataset({self.name!r}, {len(self)} images {tuple(self.images.shape[1:])}, "
                f"{self.num_classes} classes)")


def first_per_class(labels, fraction: float) -> np.ndarray:
    """Indices (in dataset order) of the first round(fraction * n_c) examples of every class c (at least one), so
    that a subset keeps the class balance of the whole and a larger fraction contains every smaller one."""
    labels = np.asarray(labels)
    keep = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        keep[where[:max(1, int(fraction * len(where) + 0.5))]] = True
    return np.flatnonzero(keep)


class Subset:
    """The examples `indices` of a dataset, with the dataset's interface (what iterate_batches and training use)."""

    def __init__(self, base, indices):
        self.base, self.indices = base, torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        self.labels = torch.as_tensor(base.labels)[self.indices]
        self.class_names, self.channels = list(base.class_names), base.channels
        self.flip_ok, self.name = getattr(base, "flip_ok", True), base.name

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.indices)

    def get_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.base.get_batch(self.indices[idx])

    def iterate_batches(self, indices: torch.Tensor, batch_size: int, num_workers: int = 0):
        yield from iterate_batches(self.base, self.indices[torch.as_tensor(indices)], batch_size, num_workers)


def random_indices(n_total: int, n: Optional[int], seed: int = 0) -> np.ndarray:
    """The `--sample N` rule: a fixed random subset of n of range(n_total) (seed `seed`), in index order; all of
    it when n is None or >= n_total. Unlike the first N (`--limit`), it draws from every class of a class-sorted
    image folder."""
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).choice(n_total, size=int(n), replace=False))


def take(ds, indices):
    """The examples `indices` of `ds`: an in-memory dataset stays one (ArrayDataset, a copy), anything else
    becomes a Subset (nothing decoded)."""
    idx = np.asarray(indices, dtype=np.int64)
    if isinstance(ds, ArrayDataset):
        t = torch.from_numpy(idx)
        return ArrayDataset(ds.images[t], ds.labels[t], ds.class_names, ds.name, flip_ok=ds.flip_ok)
    return Subset(ds, idx)


def subset_per_class(ds, fraction: float):
    """`ds` cut to first_per_class(fraction); an in-memory dataset stays one (ArrayDataset, a copy)."""
    return take(ds, first_per_class(np.asarray(ds.labels), fraction))


def load_dataset(spec: str, split: str = "train", data_dir=None, image_size: Optional[int] = None,
                 channels: Optional[int] = None, download: Optional[bool] = None, preprocess=None):
    """An ArrayDataset for a named dataset, an ImageFolderDataset for "imagefolder:PATH".

    split: "train" or "test" ("val" is accepted as another name for the eval split). image_size and channels
    are needed for imagefolder (images are decoded straight to the model's size); the named datasets ignore them
    and come at their natural size (use `resize_batch`). download: None = allowed unless VITKIT_NO_DOWNLOAD=1.
    preprocess: for imagefolder, decode with this Preprocess (a checkpoint's) instead of image_size/channels, so
    that eval on a folder matches predict exactly even for crop_pct < 1 or bicubic resizing.
    """
    spec = spec.strip()
    if spec.lower().startswith("imagefolder:"):
        if preprocess is None and (image_size is None or channels is None):
            raise UserError("imagefolder datasets need image_size and channels (the model's) to decode images")
        return ImageFolderDataset(spec.split(":", 1)[1], split, image_size=image_size or 0, channels=channels or 0,
                                  preprocess=preprocess)
    split = {"val": "test", "validation": "test"}.get(split, split)
    if split not in ("train", "test"):
        raise UserError(f"unknown split {split!r}; use 'train' or 'test'")
    name = spec.lower().replace("_", "-")
    name = {"fmnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10",
            "cifar-100": "cifar100", "tinyimagenet": "tiny-imagenet", "tiny-imagenet-200": "tiny-imagenet"
            }.get(name, name)
    if download is None:
        download = allowed()
    if name == "embedded":
        return load_embedded(split)
    if name == "tiny-imagenet":  # 64 px photos, decoded once and cached as uint8 (tinyimagenet.py)
        from .tinyimagenet import load_tiny_imagenet

        return load_tiny_imagenet(split, data_dir, download=download)
    if name in _IDX:
        images, labels = read_idx_split(name, split, data_dir, download=download)
        classes = MNIST_CLASSES if name == "mnist" else FMNIST_CLASSES
        return ArrayDataset(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
                            classes, name, flip_ok=name != "mnist")
    if name in _CIFAR:
        images, labels, classes = read_cifar_split(name, split, data_dir, download=download)
        return ArrayDataset(torch.from_numpy(images), torch.from_numpy(labels), classes, name, flip_ok=True)
    raise UserError(f"unknown dataset {spec!r}; valid: {', '.join(DATASET_NAMES)} or imagefolder:PATH")


def load_embedded(split: str = "train") -> ArrayDataset:
    """The Fashion-MNIST subset shipped in the package (embedded/LICENSE-fashion-mnist.md says which images)."""
    with np.load(EMBEDDED_FILE, allow_pickle=False) as z:
        images, labels = z[f"{split}_images"], z[f"{split}_labels"]
        classes = [str(c) for c in z["class_names"]]
    return ArrayDataset(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)), classes,
                        "embedded", flip_ok=True)


# ------------------------------------------------------------------------------------------ batches and resizing


def iterate_batches(dataset, indices: torch.Tensor, batch_size: int, num_workers: int = 0
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 images (B, C, H, W), int64 labels (B,)) for consecutive chunks of `indices`; the last may be smaller.

    ArrayDataset: tensor indexing, no DataLoader. Anything else (ImageFolderDataset): a DataLoader whose batches
    are exactly these chunks, decoded in `num_workers` processes (0 = in this process)."""
    indices = torch.as_tensor(indices, dtype=torch.int64)
    if isinstance(dataset, ArrayDataset):
        for chunk in indices.split(batch_size):
            yield dataset.get_batch(chunk)
        return
    if hasattr(dataset, "iterate_batches"):
        yield from dataset.iterate_batches(indices, batch_size, num_workers)
        return
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=[c.tolist() for c in indices.split(batch_size)],
                                         num_workers=num_workers)
    yield from loader


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, size, size), bilinear, antialiased when shrinking; the same tensor if it
    already has that size."""
    if images.shape[-2:] == (size, size):
        return images
    shrink = size < images.shape[-1] or size < images.shape[-2]
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    return out.round_().clamp_(0, 255).to(torch.uint8)


# ------------------------------------------------------------------------------------------- locating the files


def _roots(data_dir) -> list[Path]:
    roots = []
    if data_dir:
        roots.append(Path(data_dir).expanduser())
    if os.environ.get("VITKIT_DATA"):
        roots.append(Path(os.environ["VITKIT_DATA"]).expanduser())
    roots.append(cache_dir())
    return roots


def cache_dir() -> Path:
    """vitkit's one cache (downloaded datasets and weights, decoded Tiny ImageNet): $VITKIT_CACHE, else
    $XDG_CACHE_HOME/vitkit, else ~/.cache/vitkit."""
    if os.environ.get("VITKIT_CACHE"):
        return Path(os.environ["VITKIT_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "vitkit"


def _candidate_dirs(name: str, data_dir, folder_names, system_dirs) -> list[Path]:
    dirs = []
    for root in _roots(data_dir):
        dirs += [root] + [root / f for f in folder_names]
    dirs += [Path(d) for d in system_dirs]
    return dirs


def _where_to_put(name: str, data_dir) -> str:
    root = Path(data_dir).expanduser() if data_dir else cache_dir()
    return f"{root / name}/ (or pass --data-dir / set VITKIT_DATA)"


def md5sum(path_or_bytes) -> str:
    h = hashlib.md5()
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        h.update(path_or_bytes)
    else:
        with open(path_or_bytes, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------- IDX (MNIST)


def _read_checked(path: Path, f: DataFile) -> bytes:
    """The decompressed content of an IDX file (.gz or not), md5-checked: the official .gz md5, or the md5 of
    the decompressed bytes (recompressed or decompressed copies)."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        if md5sum(data) == f.md5:
            return gzip.decompress(data)
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise UserError(f"{path} is not a valid gzip file ({e}); expected md5 {f.md5}, "
                            f"got {md5sum(data)}") from None
    got = md5sum(data)
    if got != f.raw_md5:
        raise UserError(f"{path}: checksum mismatch: expected md5 {f.md5} (or {f.raw_md5} decompressed), got {got}")
    return data


def _find_files(files, dirs) -> Optional[list[Path]]:
    """The first directory holding all `files` (each as .gz or decompressed), as paths; None if none does."""
    for d in dirs:
        found = []
        for f in files:
            for p in (d / f.name, d / f.name.removesuffix(".gz")):
                if p.is_file():
                    found.append(p)
                    break
        if len(found) == len(files):
            return found
    return None


def read_idx_split(name: str, split: str, data_dir=None, download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 28, 28) and uint8 labels (N,) of MNIST or Fashion-MNIST, from verified official files."""
    src = _IDX[name]
    files = src.files[split]
    paths = _find_files(files, _candidate_dirs(name, data_dir, src.folder_names, src.system_dirs))
    tried = ""
    if paths is None and download:  # from the first mirror that answers; a file that arrives wrong is an error
        try:
            paths = [fetch_first([u + f.name for u in src.urls], cache_dir() / name / f.name, md5=f.md5)
                     for f in files]
        except DownloadError as e:
            if not e.connection:
                raise
            tried = f"; could not download them: {e.url} ({e.reason})"
    if paths is None:
        raise UserError(f"{name} {split} files not found: {', '.join(f.name for f in files)}{tried}; put them in "
                        f"{_where_to_put(name, data_dir)}")
    images = _parse_idx(_read_checked(paths[0], files[0]), paths[0], ndim=3)
    labels = _parse_idx(_read_checked(paths[1], files[1]), paths[1], ndim=1)
    if len(images) != len(labels):
        raise UserError(f"{paths[0]} has {len(images)} images but {paths[1]} has {len(labels)} labels")
    return images, labels


def _parse_idx(data: bytes, path: Path, ndim: int) -> np.ndarray:
    """IDX: 0x00 0x00 <type 0x08 = uint8> <ndim>, then ndim big-endian int32 sizes, then the values."""
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or data[3] != ndim:
        raise UserError(f"{path} is not an IDX file of uint8 with {ndim} dimensions")
    shape = tuple(int(s) for s in np.frombuffer(data, ">i4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)):
        raise UserError(f"{path}: header says {shape} but the file has {len(data) - offset} values")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(shape).copy()


# ------------------------------------------------------------------------------------------------------- CIFAR


class _NdarrayStub:
    """Stands in for numpy.ndarray / numpy.dtype while a CIFAR pickle is read: records what the pickle says
    (shape, dtype, bytes) and builds nothing. The real array is made afterwards by `_to_array`."""

    def __init__(self, *args):
        self.args, self.state = args, None

    def __setstate__(self, state):
        self.state = state


class RestrictedUnpickler(pickle.Unpickler):
    """Reads the CIFAR python batches without running any code from the file.

    `pickle.load` imports and calls whatever the file names: a crafted "dataset" can run any command. The CIFAR
    batches are dicts of bytes, lists of ints and *numpy arrays*, which a pickle spells as calls to
    numpy.core.multiarray._reconstruct, numpy.ndarray and numpy.dtype. So find_class resolves exactly those three
    names to an inert stub that only records its arguments (no numpy code runs while reading), maps
    _codecs.encode (Python 3's protocol-2 spelling of bytes) to a str->latin1 conversion, and refuses every
    other name. `_to_array` then builds plain uint8/int arrays from the recorded shape and bytes, and refuses
    anything else (object arrays, other dtypes).
    """

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return _NdarrayStub
        if (module, name) == ("_codecs", "encode"):  # how Python 3 spells bytes in protocol 2 (re-pickled copies)
            return _latin1_bytes
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only plain data and numpy arrays)")


def _latin1_bytes(text, encoding="utf-8"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("refusing _codecs.encode other than str -> latin1 bytes")
    return text.encode("latin1")


def restricted_loads(data: bytes):
    """Unpickle plain data (dict, list, tuple, str, bytes, numbers) and uint8/int numpy arrays; nothing else."""
    return _convert(RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load())


def _convert(obj):
    if isinstance(obj, _NdarrayStub):
        return _to_array(obj)
    if isinstance(obj, dict):
        return {(k.decode("latin1") if isinstance(k, bytes) else k): _convert(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_convert(v) for v in obj)
    return obj


_SAFE_DTYPES = {"u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "b1", "f4", "f8"}


def _to_array(stub: _NdarrayStub) -> np.ndarray:
    try:  # state = (version, shape, dtype, is_fortran, raw bytes)
        _, shape, dtype_stub, fortran, raw = stub.state
        code = dtype_stub.args[0]
        code = code.decode() if isinstance(code, bytes) else code
        endian = dtype_stub.state[1] if dtype_stub.state else "|"
        endian = endian.decode() if isinstance(endian, bytes) else endian
    except (TypeError, ValueError, AttributeError, IndexError) as e:
        raise pickle.UnpicklingError(f"unexpected numpy array layout in pickle ({e})") from None
    if code not in _SAFE_DTYPES or not isinstance(raw, (bytes, bytearray)):
        raise pickle.UnpicklingError(f"refusing numpy array of dtype {code!r} (only plain numeric arrays)")
    dtype = np.dtype(code).newbyteorder("<" if endian in ("|", "=", "<") else ">")
    arr = np.frombuffer(bytes(raw), dtype=dtype)
    return arr.reshape(tuple(shape), order="F" if fortran else "C").copy()


def _cifar_source(name: str, data_dir, download: bool):
    """('tar', path) or ('dir', path) of the first CIFAR copy found."""
    info = _CIFAR[name]
    tarball, folder = info["tarball"], info["folder"]
    for d in _candidate_dirs(name, data_dir, (name,), ()):
        if (d / folder).is_dir():
            return "dir", d / folder
        if (d / tarball.name).is_file():
            return "tar", d / tarball.name
    tried = ""
    if download:
        try:
            return "tar", fetch(info["url"] + tarball.name, cache_dir() / name / tarball.name, md5=tarball.md5)
        except DownloadError as e:
            if not e.connection:  # it arrived, but is not the official file
                raise
            tried = f"; could not download it: {e.url} ({e.reason})"
    raise UserError(f"{name} not found: need {tarball.name} or its extracted folder {folder}/{tried}; put it in "
                    f"{_where_to_put(name, data_dir)}")


def read_cifar_split(name: str, split: str, data_dir=None, download: bool = False
                     ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """uint8 images (N, 3, 32, 32), int64 labels (N,) and the class names of CIFAR-10/100, md5-verified."""
    info = _CIFAR[name]
    kind, path = _cifar_source(name, data_dir, download)
    members = list(info[split]) + [info["meta"]]
    blobs = {}
    if kind == "tar":
        got = md5sum(path)
        if got != info["tarball"].md5:
            raise UserError(f"{path}: checksum mismatch: expected md5 {info['tarball'].md5}, got {got}")
        with tarfile.open(path, "r:gz") as tf:
            for member, _ in members:
                f = tf.extractfile(f"{info['folder']}/{member}")
                if f is None:
                    raise UserError(f"{path} has no member {info['folder']}/{member}")
                blobs[member] = f.read()
    else:
        for member, md5 in members:
            p = path / member
            if not p.is_file():
                raise UserError(f"{name}: missing {p}; the folder must hold {', '.join(m for m, _ in members)}")
            blobs[member] = p.read_bytes()
            got = md5sum(blobs[member])
            if got != md5:
                raise UserError(f"{p}: checksum mismatch: expected md5 {md5}, got {got}")
    try:
        meta = restricted_loads(blobs[info["meta"][0]])
        batches = [restricted_loads(blobs[m]) for m, _ in info[split]]
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise UserError(f"{name}: cannot read {path} ({e})") from None
    return _cifar_arrays(batches, meta, info["label_key"], info["names_key"])


def _cifar_arrays(batches, meta, label_key: str, names_key: str):
    images = np.concatenate([np.asarray(b["data"], dtype=np.uint8).reshape(-1, 3, 32, 32) for b in batches])
    labels = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key]]
    return images, labels, names

