"""Datasets on real files: official MNIST (shared/data/mnist), Debian's Fashion-MNIST, hymenoptera photos, plus
corrupted / fake copies made in tmp_path. Nothing here touches the internet (VITKIT_NO_DOWNLOAD=1; the downloads
tested come from file:// URLs or a server on 127.0.0.1) or the user's ~/.cache (XDG_CACHE_HOME points into
tmp_path)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import pickle
import re
import shutil
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from httpserver import Server, closed_port_url

from vitkit.data import datasets as ds
from vitkit.data.datasets import (ArrayDataset, ImageFolderDataset, iterate_batches, load_dataset, resize_batch,
                                  restricted_loads)
from vitkit.errors import UserError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MNIST = SHARED / "mnist"
HYMENOPTERA = SHARED / "hymenoptera"
FMNIST = Path("/usr/share/datasets/fashion-mnist")

needs_mnist = pytest.mark.skipif(not (MNIST / "t10k-images-idx3-ubyte.gz").is_file(),
                                 reason=f"official MNIST files not found in {MNIST} (shared/ beside the repo)")
needs_fmnist = pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(),
                                  reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
needs_hymenoptera = pytest.mark.skipif(not (HYMENOPTERA / "train").is_dir(),
                                       reason=f"hymenoptera not found in {HYMENOPTERA} (shared/ beside the repo)")

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("VITKIT_NO_DOWNLOAD", "1")
    monkeypatch.delenv("VITKIT_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


# ------------------------------------------------------------------------------------------ MNIST / Fashion-MNIST


@needs_mnist
def test_mnist_from_official_files():
    train = load_dataset("mnist", "train", data_dir=SHARED)  # found in the mnist/ sub-folder of the root
    test = load_dataset("mnist", "test", data_dir=MNIST)  # or directly in the folder
    assert isinstance(train, ArrayDataset)
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and test.images.shape == (10000, 1, 28, 28)
    assert train.labels.bincount().tolist() == MNIST_TRAIN_COUNTS
    assert test.labels.bincount().tolist() == MNIST_TEST_COUNTS
    assert train.class_names == [str(i) for i in range(10)] and train.channels == 1
    assert train.flip_ok is False  # a mirrored digit is another symbol
    # the pixels are the IDX payload, unchanged
    raw = gzip.decompress((MNIST / "t10k-images-idx3-ubyte.gz").read_bytes())
    assert torch.equal(test.images[123, 0], torch.frombuffer(bytearray(raw[16 + 123 * 784:16 + 124 * 784]),
                                                              dtype=torch.uint8).view(28, 28))


@needs_mnist
def test_vitkit_data_env_and_decompressed_copies(tmp_path, monkeypatch):
    root = tmp_path / "data" / "MNIST" / "raw"  # torchvision's layout, files decompressed
    root.mkdir(parents=True)
    for f in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (root / f[:-3]).write_bytes(gzip.decompress((MNIST / f).read_bytes()))
    monkeypatch.setenv("VITKIT_DATA", str(tmp_path / "data"))
    test = load_dataset("mnist", "test")
    assert len(test) == 10000 and test.labels.bincount().tolist() == MNIST_TEST_COUNTS


@needs_fmnist
def test_fashion_mnist_debian_recompressed_gz_accepted():
    # Debian recompressed the files: the .gz md5 is not the official one, the content is
    official = ds._IDX["fashion-mnist"].files["train"][0].md5
    assert md5((FMNIST / "train-images-idx3-ubyte.gz").read_bytes()) != official
    train = load_dataset("fashion-mnist", "train")  # found in the system path, no data_dir
    test = load_dataset("fmnist", "test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.labels.bincount().tolist() == [6000] * 10
    assert test.labels.bincount().tolist() == [1000] * 10
    assert train.flip_ok and train.class_names[0] == "T-shirt/top" and train.class_names[9] == "Ankle boot"


@needs_mnist
def test_checksum_mismatch_names_file_and_md5(tmp_path):
    d = tmp_path / "mnist"
    d.mkdir()
    shutil.copy(MNIST / "t10k-images-idx3-ubyte.gz", d)
    labels = bytearray(gzip.decompress((MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    labels[100] = (labels[100] + 1) % 10  # one wrong label, still a valid gzip of a valid IDX file
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(labels)))
    with pytest.raises(UserError) as e:
        load_dataset("mnist", "test", data_dir=tmp_path)
    msg = str(e.value)
    assert "t10k-labels-idx1-ubyte.gz" in msg and "ec29112dd5afa0611ce80d1b7f02629c" in msg
    assert md5(bytes(labels)) in msg and "\n" not in msg
    # a damaged gzip stream: still one line naming the file and the expected md5
    data = bytearray((MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(bytes(data))
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.gz.*ec29112dd5afa0611ce80d1b7f02629c"):
        load_dataset("mnist", "test", data_dir=tmp_path)


def test_missing_files_name_them_and_where(tmp_path):
    with pytest.raises(UserError) as e:
        load_dataset("mnist", "train", data_dir=tmp_path / "nowhere")
    msg = str(e.value)
    assert "train-images-idx3-ubyte.gz" in msg and "train-labels-idx1-ubyte.gz" in msg
    assert str(tmp_path / "nowhere" / "mnist") in msg
    with pytest.raises(UserError, match="cifar-10-python.tar.gz.*cifar-10-batches-py"):
        load_dataset("cifar10", data_dir=tmp_path)


@needs_mnist
def test_download_goes_to_cache_and_is_verified(tmp_path, monkeypatch):
    # a file:// "server" stands in for the official URL: same code path as https
    src = dataclasses.replace(ds._IDX["mnist"], urls=(MNIST.as_uri() + "/",), system_dirs=())
    monkeypatch.setitem(ds._IDX, "mnist", src)
    test = load_dataset("mnist", "test", data_dir=tmp_path / "empty", download=True)
    assert len(test) == 10000
    cached = tmp_path / "xdg-cache" / "vitkit" / "mnist" / "t10k-images-idx3-ubyte.gz"
    assert cached.read_bytes() == (MNIST / "t10k-images-idx3-ubyte.gz").read_bytes()
    # a server that sends the wrong bytes: refused, nothing left in the cache
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train-images-idx3-ubyte.gz").write_bytes(b"not mnist")
    monkeypatch.setitem(ds._IDX, "mnist", dataclasses.replace(src, urls=(bad.as_uri() + "/",)))
    with pytest.raises(UserError, match="md5 .*expected f68b3c2dcbeaaa9fbdd348bbdeb94873"):
        load_dataset("mnist", "train", data_dir=tmp_path / "empty", download=True)
    assert not (tmp_path / "xdg-cache" / "vitkit" / "mnist" / "train-images-idx3-ubyte.gz").exists()


def test_unknown_dataset_lists_names():
    with pytest.raises(UserError, match="unknown dataset 'imagenet21k'.*embedded, fashion-mnist, mnist, cifar10, "
                                        "cifar100, tiny-imagenet or imagefolder:PATH"):
        load_dataset("imagenet21k")
    with pytest.raises(UserError, match="split"):
        load_dataset("embedded", "dev")


# ------------------------------------------------------------------------------------------------- embedded


def test_embedded_is_balanced_and_small():
    train, test = load_dataset("embedded"), load_dataset("embedded", "test")
    assert train.images.shape == (30000, 1, 28, 28) and test.images.shape == (2000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.labels.bincount().tolist() == [3000] * 10 and test.labels.bincount().tolist() == [200] * 10
    assert train.class_names[3] == "Dress" and train.name == "embedded"
    assert ds.EMBEDDED_FILE.stat().st_size < 15e6  # 32,000 images losslessly: 14.2 MB
    with np.load(ds.EMBEDDED_FILE, allow_pickle=False) as z:  # nothing in it needs pickle
        assert {k: z[k].dtype.kind for k in z.files} == {
            "train_images": "u", "train_labels": "u", "train_indices": "u", "test_images": "u",
            "test_labels": "u", "test_indices": "u", "class_names": "U", "seed": "i"}


@needs_fmnist
def test_embedded_images_are_the_official_ones():
    with np.load(ds.EMBEDDED_FILE, allow_pickle=False) as z:
        idx = {s: torch.from_numpy(z[f"{s}_indices"].astype(np.int64)) for s in ("train", "test")}
    for split in ("train", "test"):
        official = load_dataset("fashion-mnist", split)
        emb = load_dataset("embedded", split)
        assert len(set(idx[split].tolist())) == len(emb)  # distinct images
        assert torch.equal(emb.images, official.images[idx[split]])  # byte-identical pixels
        assert torch.equal(emb.labels, official.labels[idx[split]])


# ------------------------------------------------------------------------------------------------- batching


def test_iterate_batches_array_dataset():
    d = load_dataset("embedded", "test")
    idx = torch.randperm(len(d), generator=torch.Generator().manual_seed(0))[:1000]
    batches = list(iterate_batches(d, idx, 300))
    assert [len(y) for _, y in batches] == [300, 300, 300, 100]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert torch.equal(x, d.images[idx]) and torch.equal(y, d.labels[idx])


def test_resize_batch():
    x = torch.randint(0, 256, (4, 3, 28, 28), dtype=torch.uint8)
    assert resize_batch(x, 28) is x
    up = resize_batch(x, 56)
    assert up.shape == (4, 3, 56, 56) and up.dtype == torch.uint8
    const = torch.full((2, 1, 224, 224), 77, dtype=torch.uint8)
    assert torch.equal(resize_batch(const, 32), torch.full((2, 1, 32, 32), 77, dtype=torch.uint8))
    # shrinking antialiases: a 1-px checkerboard averages to grey instead of aliasing to black or white
    board = ((torch.arange(64)[:, None] + torch.arange(64)) % 2 * 255).to(torch.uint8).expand(1, 1, 64, 64)
    small = resize_batch(board, 16)
    assert (small.float() - 127.5).abs().max() < 3


# ---------------------------------------------------------------------------------------------------- CIFAR


def _fake_cifar_batch(n: int, seed: int, label_key: str = "labels") -> bytes:
    """A CIFAR python batch as the official ones are written: a protocol-2 pickle of a dict with bytes keys,
    a (n, 3072) uint8 numpy array and a list of ints."""
    rng = np.random.default_rng(seed)
    batch = {b"batch_label": b"fake", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             label_key.encode(): [int(v) for v in rng.integers(0, 10, n)], b"filenames": [b"a.png"] * n}
    return pickle.dumps(batch, protocol=2)


def _fake_cifar10(root: Path) -> dict:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    md5s = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        (folder / name).write_bytes(_fake_cifar_batch(3, i))
    meta = pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072}, protocol=2)
    (folder / "batches.meta").write_bytes(meta)
    for p in folder.iterdir():
        md5s[p.name] = md5(p.read_bytes())
    return md5s


def _patched_cifar10(md5s: dict, tar_md5: str = "") -> dict:
    info = dict(ds._CIFAR["cifar10"])
    info["train"] = tuple((n, md5s[n]) for n, _ in info["train"])
    info["test"] = (("test_batch", md5s["test_batch"]),)
    info["meta"] = ("batches.meta", md5s["batches.meta"])
    if tar_md5:
        info["tarball"] = ds.DataFile("cifar-10-python.tar.gz", tar_md5)
    return info


def test_cifar_folder_and_tarball(tmp_path, monkeypatch):
    md5s = _fake_cifar10(tmp_path / "folder")
    # the official md5s are enforced: the fake folder fails them
    with pytest.raises(UserError, match="data_batch_1: checksum mismatch: expected md5 "
                                        "c99cafc152244af753f735de768cd75f"):
        load_dataset("cifar10", data_dir=tmp_path / "folder")
    monkeypatch.setitem(ds._CIFAR, "cifar10", _patched_cifar10(md5s))
    train = load_dataset("cifar10", data_dir=tmp_path / "folder")
    test = load_dataset("cifar10", "test", data_dir=tmp_path / "folder")
    assert train.images.shape == (15, 3, 32, 32) and test.images.shape == (3, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.class_names == [f"c{i}" for i in range(10)] and train.flip_ok
    # row layout: 1024 red, then 1024 green, then 1024 blue values, each row-major 32x32
    batch = restricted_loads((tmp_path / "folder" / "cifar-10-batches-py" / "data_batch_1").read_bytes())
    assert torch.equal(train.images[0, 1, 2, 5], torch.tensor(batch["data"][0, 1024 + 2 * 32 + 5]))
    assert train.labels[:3].tolist() == batch["labels"]

    # the same files as the official tarball, in cifar10/ under the root
    tar_path = tmp_path / "tar" / "cifar10" / "cifar-10-python.tar.gz"
    tar_path.parent.mkdir(parents=True)
    with tarfile.open(tar_path, "w:gz") as tf:
        tf.add(tmp_path / "folder" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setitem(ds._CIFAR, "cifar10", _patched_cifar10(md5s, md5(tar_path.read_bytes())))
    from_tar = load_dataset("cifar10", data_dir=tmp_path / "tar")
    assert torch.equal(from_tar.images, train.images) and torch.equal(from_tar.labels, train.labels)
    monkeypatch.setitem(ds._CIFAR, "cifar10", _patched_cifar10(md5s, "0" * 32))
    with pytest.raises(UserError, match=r"cifar-10-python.tar.gz: checksum mismatch: expected md5 0{32}, got"):
        load_dataset("cifar10", data_dir=tmp_path / "tar")


def test_cifar_tarball_is_downloaded_once_through_the_shared_downloader(tmp_path, monkeypatch):
    md5s = _fake_cifar10(tmp_path / "folder")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(tmp_path / "folder" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    info = dict(_patched_cifar10(md5s, md5(buf.getvalue())), url=closed_port_url("/kriz/"))
    monkeypatch.setitem(ds._CIFAR, "cifar10", info)
    with pytest.raises(UserError) as e:  # unreachable: the usual message, with why the download did not help
        load_dataset("cifar10", "test", data_dir=tmp_path / "empty", download=True)
    assert "\n" not in str(e.value) and re.match(r"cifar10 not found: need cifar-10-python.tar.gz .*; could not "
                                                 r"download it: http://127\.0\.0\.1:\d+/kriz/cifar-10-python"
                                                 r"\.tar\.gz \(.*\); put it in ", str(e.value))
    server = Server()
    try:
        info["url"] = server.base + "/kriz/"
        server.serve("/kriz/cifar-10-python.tar.gz", buf.getvalue())
        test = load_dataset("cifar10", "test", data_dir=tmp_path / "empty", download=True)
        train = load_dataset("cifar10", "train", data_dir=tmp_path / "empty", download=True)
        assert len(test) == 3 and len(train) == 15
        assert server.hits == {"/kriz/cifar-10-python.tar.gz": 1}
        cached = tmp_path / "xdg-cache" / "vitkit" / "cifar10" / "cifar-10-python.tar.gz"
        assert cached.read_bytes() == buf.getvalue()
    finally:
        server.close()


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):  # unpickling with pickle.load would create this file
        return (open, (self.path, "w"))


def test_restricted_unpickler_refuses_code(tmp_path):
    target = tmp_path / "pwned"
    for payload in (pickle.dumps({b"data": _Evil(str(target))}, protocol=2),
                    pickle.dumps({b"data": _Evil(str(target))}),  # newest protocol too
                    pickle.dumps([shutil.rmtree], protocol=2),  # a bare reference to a function
                    pickle.dumps(np.array([1, "x"], dtype=object), protocol=2)):  # object arrays hold anything
        with pytest.raises(pickle.UnpicklingError, match="refusing"):
            restricted_loads(payload)
    assert not target.exists()
    # plain data and numeric arrays come through intact
    arr = np.arange(12, dtype=np.int32).reshape(3, 4)
    out = restricted_loads(pickle.dumps({b"k": [1, 2.5, b"x", "s", (3,)], b"a": arr, b"f": np.asfortranarray(arr)},
                                        protocol=2))
    assert out["k"] == [1, 2.5, b"x", "s", (3,)]
    assert out["a"].dtype == np.int32 and np.array_equal(out["a"], arr) and np.array_equal(out["f"], arr)


def test_cifar_with_code_in_pickle_is_a_user_error(tmp_path, monkeypatch):
    md5s = _fake_cifar10(tmp_path)
    evil = pickle.dumps({b"data": _Evil(str(tmp_path / "pwned")), b"labels": []}, protocol=2)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(evil)
    md5s["test_batch"] = md5(evil)
    monkeypatch.setitem(ds._CIFAR, "cifar10", _patched_cifar10(md5s))
    with pytest.raises(UserError, match="cifar10: cannot read .*refusing to load"):
        load_dataset("cifar10", "test", data_dir=tmp_path)
    assert not (tmp_path / "pwned").exists()


# ----------------------------------------------------------------------------------------------- imagefolder


@needs_hymenoptera
def test_hymenoptera_skips_the_placeholder_gif():
    with pytest.warns(UserWarning, match="skipped 1 file.*imageNotFound.gif"):
        train = load_dataset(f"imagefolder:{HYMENOPTERA}", "train", image_size=32, channels=3)
    assert isinstance(train, ImageFolderDataset)
    assert len(train) == 244 and train.labels.bincount().tolist() == [123, 121]
    assert train.class_names == ["ants", "bees"] and train.flip_ok
    assert [Path(p).name for p, _ in train.skipped] == ["imageNotFound.gif"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing skipped, nothing said
        val = load_dataset(f"imagefolder:{HYMENOPTERA}", "val", image_size=32, channels=3)
        test = load_dataset(f"imagefolder:{HYMENOPTERA}", "test", image_size=32, channels=3)  # finds val/
    assert len(val) == len(test) == 153 and val.labels.bincount().tolist() == [70, 83]
    x, y = val[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8 and y == 0


def _jpegs(n: int) -> list[Path]:
    return sorted((HYMENOPTERA / "val" / "ants").glob("*.jpg"))[:n]


@needs_hymenoptera
def test_imagefolder_skips_truncated_jpeg_and_junk(tmp_path):
    for cls in ("ants", "bees"):
        (tmp_path / "train" / cls).mkdir(parents=True)
    for i, p in enumerate(_jpegs(4)):
        shutil.copy(p, tmp_path / "train" / ("ants" if i < 2 else "bees") / p.name)
    whole = _jpegs(5)[4].read_bytes()
    (tmp_path / "train" / "bees" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "train" / "bees" / "trailing.jpg").write_bytes(whole + b"camera data after the end marker" * 4)
    (tmp_path / "train" / "ants" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "ants" / "fake.png").write_bytes(b"\x89PNG but not really")
    (tmp_path / "train" / "ants" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    with pytest.warns(UserWarning, match="skipped 3 file"):
        d = ImageFolderDataset(tmp_path, "train", image_size=48, channels=3)
    reasons = {Path(p).name: r for p, r in d.skipped}
    assert set(reasons) == {"truncated.jpg", "notes.txt", "fake.png"}
    assert "truncated" in reasons["truncated.jpg"] and "not a readable image" in reasons["fake.png"]
    assert len(d) == 5 and d.labels.tolist() == [0, 0, 1, 1, 1]  # trailing.jpg is a complete image: kept
    x, y = d.get_batch(torch.arange(len(d)))
    assert x.shape == (5, 3, 48, 48) and x.dtype == torch.uint8 and y.tolist() == [0, 0, 1, 1, 1]
    # decoded as predict decodes: Preprocess.to_array on the PIL image
    with Image.open(d.paths[0]) as im:
        expected = d.preprocess.to_array(im)
    assert np.array_equal(x[0].permute(1, 2, 0).numpy(), expected)


@needs_hymenoptera
def test_imagefolder_workers_match_main_process(tmp_path):
    for i, p in enumerate(_jpegs(6)):
        cls = tmp_path / "train" / ("a" if i % 2 else "b")
        cls.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, cls)
    d = ImageFolderDataset(tmp_path, "train", image_size=32, channels=1)
    idx = torch.tensor([5, 0, 3, 1, 4, 2])
    ref = [(x.clone(), y.clone()) for x, y in iterate_batches(d, idx, 4, num_workers=0)]
    assert [len(y) for _, y in ref] == [4, 2] and ref[0][0].shape == (4, 1, 32, 32)
    for _ in range(2):  # the second epoch reuses the persistent workers
        got = list(iterate_batches(d, idx, 4, num_workers=2))
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(ref, got))
    assert torch.equal(torch.cat([y for _, y in ref]), d.labels[idx])


def test_imagefolder_converts_modes(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / "train" / cls).mkdir(parents=True)
    red = (255, 0, 0)
    Image.new("RGBA", (40, 30), red + (128,)).save(tmp_path / "train" / "a" / "rgba.png")
    pal = Image.new("P", (17, 23))
    pal.putpalette([255, 0, 0] + [0] * 765)
    pal.save(tmp_path / "train" / "a" / "palette.png")
    Image.new("L", (50, 50), 200).save(tmp_path / "train" / "b" / "gray.png")
    Image.new("RGB", (64, 64), red).save(tmp_path / "train" / "b" / "rgb.bmp")
    rgb = ImageFolderDataset(tmp_path, "train", image_size=16, channels=3)
    gray = ImageFolderDataset(tmp_path, "train", image_size=16, channels=1)
    names = [Path(p).name for p in rgb.paths]
    assert names == ["palette.png", "rgba.png", "gray.png", "rgb.bmp"]
    x, _ = rgb.get_batch(torch.arange(4))
    g, _ = gray.get_batch(torch.arange(4))
    assert x.shape == (4, 3, 16, 16) and g.shape == (4, 1, 16, 16)
    expect_rgb = torch.tensor([red, red, (200, 200, 200), red], dtype=torch.uint8)
    assert torch.equal(x[:, :, 5, 7], expect_rgb)
    assert g[:, 0, 5, 7].tolist() == [76, 76, 200, 76]  # L = 0.299 R + 0.587 G + 0.114 B


def test_imagefolder_user_errors(tmp_path):
    with pytest.raises(UserError, match="imagefolder: .*no-such is not a directory"):
        load_dataset(f"imagefolder:{tmp_path / 'no-such'}", image_size=32, channels=3)
    with pytest.raises(UserError, match="need image_size and channels"):
        load_dataset(f"imagefolder:{tmp_path}")
    with pytest.raises(UserError, match=f"expected the folder {tmp_path / 'train'}"):
        ImageFolderDataset(tmp_path, "train", 32, 3)
    (tmp_path / "train" / "only").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "only" / "x.png")
    with pytest.raises(UserError, match="at least 2 class sub-folders, found 1: only"):
        ImageFolderDataset(tmp_path, "train", 32, 3)
    (tmp_path / "train" / "other").mkdir()
    (tmp_path / "train" / "only" / "x.png").unlink()
    with pytest.raises(UserError, match="no readable images in"):
        ImageFolderDataset(tmp_path, "train", 32, 3)
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "only" / "x.png")
    with pytest.raises(UserError, match=r"no readable images for class\(es\) \['other'\]"):
        ImageFolderDataset(tmp_path, "train", 32, 3)
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "other" / "y.png")
    assert len(ImageFolderDataset(tmp_path, "train", 32, 3)) == 2
    expected = f"no test split: expected the folder {tmp_path / 'val'} or {tmp_path / 'test'}"
    with pytest.raises(UserError, match=expected):
        ImageFolderDataset(tmp_path, "test", 32, 3)
    (tmp_path / "val" / "stranger").mkdir(parents=True)
    with pytest.raises(UserError, match=r"class folders \['stranger'\]"):
        ImageFolderDataset(tmp_path, "val", 32, 3)


def test_imagefolder_decodes_with_a_checkpoints_preprocess(tmp_path):
    from vitkit.data.preprocess import Preprocess

    for cls in ("a", "b"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        rng = np.random.default_rng(len(cls) + ord(cls))
        Image.fromarray(rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)).save(tmp_path / "train" / cls / "x.png")
    pre = Preprocess(image_size=24, channels=3, resize="bicubic", crop_pct=0.875)
    d = load_dataset(f"imagefolder:{tmp_path}", preprocess=pre)
    assert d.image_size == 24 and d.channels == 3
    x, _ = d[1]
    with Image.open(tmp_path / "train" / "b" / "x.png") as im:
        assert np.array_equal(x.permute(1, 2, 0).numpy(), pre.to_array(im))
    plain = load_dataset(f"imagefolder:{tmp_path}", image_size=24, channels=3)[1][0]
    assert not torch.equal(plain, x)  # centre crop + bicubic really differ from a plain resize
