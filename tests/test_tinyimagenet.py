"""Tiny ImageNet: the official layout read from a folder and from the zip, labels, names, greyscale, the uint8 cache.

Fake copies in tmp_path (a few classes, the official file names and formats) check every rule against hand-made
expectations; the real validation split in shared/data is checked where present. No internet (a download comes from a
server on 127.0.0.1), no user cache."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from httpserver import Server

from vitkit.data import tinyimagenet as tin
from vitkit.data.datasets import ArrayDataset, load_dataset
from vitkit.errors import UserError

SHARED_TIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "tiny-imagenet-200"
needs_tin = pytest.mark.skipif(not (SHARED_TIN / "val" / "val_annotations.txt").is_file(),
                               reason=f"Tiny ImageNet not found in {SHARED_TIN} (shared/ beside the repo)")

WNIDS = ["n02206856", "n01443537", "n09999999"]  # deliberately not sorted in wnids.txt
WORDS = {"n02206856": "bee", "n01443537": "goldfish, Carassius auratus", "n00000001": "unused"}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("VITKIT_NO_DOWNLOAD", "1")
    monkeypatch.delenv("VITKIT_DATA", raising=False)
    monkeypatch.delenv("VITKIT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def _jpeg(value: int, mode: str = "RGB", size: int = 64) -> bytes:
    color = value if mode == "L" else (value, 255 - value, 7)
    buf = io.BytesIO()
    Image.new(mode, (size, size), color).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _files(per_class: int = 2) -> dict[str, bytes]:
    """The official layout: train/<wnid>/images/<wnid>_<i>.JPEG, val/images/val_<k>.JPEG + annotations."""
    files = {"wnids.txt": "\n".join(WNIDS).encode() + b"\n",
             "words.txt": "".join(f"{k}\t{v}\n" for k, v in WORDS.items()).encode()}
    for c, wnid in enumerate(WNIDS):
        for i in range(per_class):
            files[f"train/{wnid}/images/{wnid}_{i}.JPEG"] = _jpeg(40 * c + 10 * i, "L" if (c, i) == (1, 1) else "RGB")
        files[f"train/{wnid}/{wnid}_boxes.txt"] = b""
    ann = []
    for k, wnid in enumerate(["n09999999", "n02206856", "n01443537", "n02206856"]):
        files[f"val/images/val_{k}.JPEG"] = _jpeg(20 * k + 5)
        ann.append(f"val_{k}.JPEG\t{wnid}\t0\t0\t63\t63\n")
    files["val/val_annotations.txt"] = "".join(ann).encode()
    return files


def _write_folder(root: Path, files: dict) -> Path:
    for rel, data in files.items():
        p = root / tin.FOLDER / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root / tin.FOLDER


def _write_zip(path: Path, files: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for rel, data in files.items():
            z.writestr(f"{tin.FOLDER}/{rel}", data)
    return path


def test_folder_layout_labels_names_and_greyscale(tmp_path):
    _write_folder(tmp_path / "data", _files())
    train = load_dataset("tiny-imagenet", "train", data_dir=tmp_path / "data")
    assert isinstance(train, ArrayDataset) and train.images.shape == (6, 3, 64, 64)
    # classes are numbered in sorted id order; names are the first name words.txt gives (the id where it has none)
    assert train.class_names == ["goldfish", "bee", "n09999999"]
    assert train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    # the image of class n02206856 (sorted index 1), number 0 is the RGB colour (0, 255, 7) of the writer
    assert np.abs(train.images[2].float().mean((1, 2)).numpy() - [0, 255, 7]).max() < 3
    # the greyscale JPEG (class n01443537 = writer's c=1, i=1: value 50) comes out as three equal channels
    grey = train.images[1].float()  # n01443537_1
    assert grey.shape == (3, 64, 64) and (grey[0] == grey[1]).all() and (grey[1] == grey[2]).all()
    assert abs(grey.mean().item() - 50) < 3
    test = load_dataset("tiny-imagenet", "test", data_dir=tmp_path / "data" / tin.FOLDER)  # the folder itself
    assert test.labels.tolist() == [2, 1, 0, 1]  # val_annotations.txt, by file
    assert np.abs(test.images[3].float().mean((1, 2)).numpy() - [65, 190, 7]).max() < 3


def test_zip_read_in_place_equals_the_folder(tmp_path, monkeypatch):
    files = _files()
    _write_folder(tmp_path / "folder", files)
    z = _write_zip(tmp_path / "zipped" / tin.ZIP_NAME, files)
    monkeypatch.setattr(tin, "ZIP_BYTES", z.stat().st_size)  # the fake zip stands in for the official one
    with pytest.raises(UserError, match="checksum mismatch"):
        load_dataset("tiny-imagenet", "train", data_dir=tmp_path / "zipped")
    monkeypatch.setattr(tin, "ZIP_MD5", hashlib.md5(z.read_bytes()).hexdigest())
    for split in ("train", "test"):
        a = load_dataset("tiny-imagenet", split, data_dir=tmp_path / "folder")
        b = load_dataset("tiny-imagenet", split, data_dir=tmp_path / "zipped")
        assert (a.images == b.images).all() and (a.labels == b.labels).all() and a.class_names == b.class_names
    assert not (tmp_path / "zipped" / tin.FOLDER).exists()  # nothing extracted


def test_the_zip_is_hashed_once_per_process(tmp_path, monkeypatch):
    """Loading both splits from the zip hashes its bytes once (it is 248 MB); a changed file is hashed again."""
    z = _write_zip(tmp_path / tin.ZIP_NAME, _files())
    monkeypatch.setattr(tin, "ZIP_BYTES", z.stat().st_size)
    monkeypatch.setattr(tin, "ZIP_MD5", hashlib.md5(z.read_bytes()).hexdigest())
    calls = []
    real = tin.md5sum
    monkeypatch.setattr(tin, "md5sum", lambda p: calls.append(p) or real(p))
    for split in ("train", "test"):
        tin.load_tiny_imagenet(split, data_dir=tmp_path, cache=False, verbose=False)
    assert calls == [z]
    os.utime(z, ns=(1, 1))  # touched: another file as far as anyone can tell without reading it
    tin.load_tiny_imagenet("train", data_dir=tmp_path, cache=False, verbose=False)
    assert calls == [z, z]


def test_zip_of_the_wrong_size_is_refused(tmp_path):
    _write_zip(tmp_path / tin.ZIP_NAME, _files())
    with pytest.raises(UserError, match="partial download"):
        load_dataset("tiny-imagenet", "train", data_dir=tmp_path)


def test_the_zip_is_downloaded_once_and_a_wrong_one_is_not_kept(tmp_path, monkeypatch, capsys):
    z = _write_zip(tmp_path / "src" / tin.ZIP_NAME, _files())
    body = z.read_bytes()
    monkeypatch.setattr(tin, "ZIP_BYTES", len(body))
    monkeypatch.setattr(tin, "ZIP_MD5", hashlib.md5(body).hexdigest())
    server = Server()
    try:
        wrong = bytes(b ^ 0xFF for b in body)  # the same size, other bytes
        monkeypatch.setattr(tin, "URL", server.serve("/tin/" + tin.ZIP_NAME, wrong))
        cached = tmp_path / "xdg-cache" / "vitkit" / "tiny-imagenet" / tin.ZIP_NAME
        with pytest.raises(UserError) as e:
            load_dataset("tiny-imagenet", "test", data_dir=tmp_path / "empty", download=True)
        assert "\n" not in str(e.value) and f"does not match the expected {tin.ZIP_MD5}" in str(e.value)
        assert not cached.exists() and not cached.with_name(tin.ZIP_NAME + ".part").exists()
        server.serve("/tin/" + tin.ZIP_NAME, body)
        test = load_dataset("tiny-imagenet", "test", data_dir=tmp_path / "empty", download=True)
        train = load_dataset("tiny-imagenet", "train", data_dir=tmp_path / "empty", download=True)
        assert len(test) == 4 and len(train) == 6 and cached.read_bytes() == body
        assert server.hits == {"/tin/" + tin.ZIP_NAME: 2}  # the wrong copy, then the right one once
        assert "downloading Tiny ImageNet" in capsys.readouterr().err
    finally:
        server.close()


def test_partial_copy_loads_with_a_note(tmp_path, capsys):
    _write_folder(tmp_path, _files(per_class=3))
    ds = load_dataset("tiny-imagenet", "train", data_dir=tmp_path)
    assert len(ds) == 9
    err = capsys.readouterr().err
    assert "9 of the official 1,500 images" in err and "3 of 500 per class" in err


def test_cache_is_used_and_invalidated_by_a_changed_file(tmp_path, monkeypatch):
    root = _write_folder(tmp_path, _files())
    first = load_dataset("tiny-imagenet", "train", data_dir=tmp_path)
    cached = list((tmp_path / "xdg-cache" / "vitkit" / "tiny-imagenet").glob("train-*.npz"))
    assert len(cached) == 1
    decoded = []
    real = tin.decode
    monkeypatch.setattr(tin, "decode", lambda data, name: decoded.append(name) or real(data, name))
    again = load_dataset("tiny-imagenet", "train", data_dir=tmp_path)
    assert decoded == [] and (again.images == first.images).all()  # a cache hit decodes nothing
    img = root / "train" / WNIDS[0] / "images" / f"{WNIDS[0]}_0.JPEG"
    img.write_bytes(_jpeg(200))  # same name, new content and size
    changed = load_dataset("tiny-imagenet", "train", data_dir=tmp_path)
    assert len(decoded) == 6  # the listing changed: decoded again
    assert not (changed.images == first.images).all()


def test_broken_copies_are_one_line_errors(tmp_path):
    files = _files()
    del files["val/val_annotations.txt"]
    _write_folder(tmp_path / "a", files)
    with pytest.raises(UserError, match="val_annotations.txt"):
        load_dataset("tiny-imagenet", "test", data_dir=tmp_path / "a")
    files = _files()
    files[f"train/{WNIDS[0]}/images/{WNIDS[0]}_0.JPEG"] = b"not a jpeg"
    _write_folder(tmp_path / "b", files)
    with pytest.raises(UserError, match=f"cannot decode .*{WNIDS[0]}_0.JPEG"):
        load_dataset("tiny-imagenet", "train", data_dir=tmp_path / "b")
    with pytest.raises(UserError, match="tiny-imagenet not found"):
        load_dataset("tiny-imagenet", "train", data_dir=tmp_path / "nothing")


@needs_tin
def test_real_validation_split():
    ds = load_dataset("tiny-imagenet", "test", data_dir=SHARED_TIN.parent)
    assert ds.images.shape == (10000, 3, 64, 64) and len(ds.class_names) == 200
    assert np.bincount(ds.labels.numpy(), minlength=200).tolist() == [50] * 200
    ids = sorted((SHARED_TIN / "wnids.txt").read_text().split())
    assert ds.class_names[ids.index("n02206856")] == "bee"
    first = (SHARED_TIN / "val" / "val_annotations.txt").read_text().splitlines()[0].split("\t")
    assert first[0] == "val_0.JPEG" and ds.labels[0] == ids.index(first[1])
    with Image.open(SHARED_TIN / "val" / "images" / "val_0.JPEG") as im:
        assert (ds.images[0].permute(1, 2, 0).numpy() == np.asarray(im.convert("RGB"))).all()
