"""The one downloader (vitkit/download.py) as the datasets use it: MNIST-style IDX files fetched from mirrors on a real
HTTP server on 127.0.0.1 (tests/httpserver.py, the server tests/test_hub.py uses too) -- fetched once, a wrong md5
refused in one line with nothing kept, an unreachable mirror skipped for the next -- and the DownloadError kinds
those rules rest on. Fake IDX files with their own md5s stand in for the official ones; never the internet, never
the user's ~/.cache. CIFAR and Tiny ImageNet downloads: tests/test_data.py, tests/test_tinyimagenet.py."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import pickle
import time

import numpy as np
import pytest

from httpserver import Server, closed_port_url

from vitkit import download
from vitkit.data import datasets as ds
from vitkit.data.datasets import load_dataset
from vitkit.download import DownloadError, fetch, fetch_first
from vitkit.errors import UserError


@pytest.fixture
def server():
    s = Server(b"some bytes")
    yield s
    s.close()


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("VITKIT_NO_DOWNLOAD", "1")  # load_dataset(download=True) below overrides it explicitly
    monkeypatch.delenv("VITKIT_DATA", raising=False)
    monkeypatch.delenv("VITKIT_PROGRESS", raising=False)
    monkeypatch.delenv("VITKIT_DOWNLOAD_TIMEOUT", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("VITKIT_CACHE", raising=False)
    return tmp_path / "xdg-cache" / "vitkit"


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def leftovers(folder):
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


def idx(array: np.ndarray) -> bytes:
    """IDX bytes: 0x00 0x00 0x08 <ndim>, big-endian int32 sizes, uint8 values."""
    return bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">i4").tobytes() + array.astype(np.uint8).tobytes()


@pytest.fixture
def fake_mnist(monkeypatch):
    """A 5-image MNIST test split served as .gz files; ds._IDX["mnist"] points at `mirrors(...)` and accepts it."""
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), np.arange(5, dtype=np.uint8)
    raw = {"t10k-images-idx3-ubyte.gz": idx(images), "t10k-labels-idx1-ubyte.gz": idx(labels)}
    gz = {name: gzip.compress(data, mtime=0) for name, data in raw.items()}
    files = tuple(ds.DataFile(name, md5(gz[name]), md5(raw[name])) for name in raw)

    def mirrors(*bases):
        src = dataclasses.replace(ds._IDX["mnist"], urls=tuple(bases), system_dirs=(),
                                  files={"test": files, "train": files})
        monkeypatch.setitem(ds._IDX, "mnist", src)

    return dict(images=images, labels=labels, gz=gz, mirrors=mirrors)


# -- the downloader's contract --------------------------------------------------------------------------------------
def test_fetch_downloads_once_and_checks_what_arrives(server, tmp_path):
    url, dest = server.serve("/f.bin"), tmp_path / "d" / "f.bin"
    assert fetch(url, dest, md5=md5(b"some bytes"), sha256=hashlib.sha256(b"some bytes").hexdigest(),
                 size=10) == dest
    assert dest.read_bytes() == b"some bytes" and fetch(url, dest) == dest and server.hits == {"/f.bin": 1}
    with pytest.raises(DownloadError) as e:
        fetch(url, tmp_path / "d" / "g.bin", md5="0" * 32)
    assert e.value.connection is False and "md5" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DownloadError) as e:
        fetch(server.serve("/t.bin", mode="truncate"), tmp_path / "d" / "t.bin")
    assert e.value.connection is True and "truncated" in e.value.reason
    assert leftovers(tmp_path / "d") == ["f.bin"]


def test_connection_failures_are_marked_as_such(server, tmp_path):
    for url in (closed_port_url("/x"), server.base + "/missing"):
        with pytest.raises(DownloadError) as e:
            fetch(url, tmp_path / "x")
        assert e.value.connection is True and e.value.url == url and e.value.dest == tmp_path / "x"
    assert "HTTP 404" in e.value.reason
    again = pickle.loads(pickle.dumps(e.value))  # crosses process boundaries intact
    assert (type(again), str(again), again.connection) == (DownloadError, str(e.value), True)
    assert isinstance(e.value, UserError)  # the CLI prints it as one line


def test_fetch_first_tries_mirrors_only_while_they_cannot_be_reached(server, tmp_path):
    good = server.serve("/m.bin")
    dead = closed_port_url("/m.bin")
    assert fetch_first([dead, server.base + "/gone.bin", good], tmp_path / "a").read_bytes() == b"some bytes"
    bad = server.serve("/wrong.bin", b"other bytes")
    with pytest.raises(DownloadError, match="md5") as e:
        fetch_first([dead, bad, good], tmp_path / "b", md5=md5(b"some bytes"))
    assert e.value.connection is False and server.hits["/m.bin"] == 1  # a wrong file is not "try elsewhere"
    with pytest.raises(DownloadError) as e:
        fetch_first([dead, server.base + "/gone.bin"], tmp_path / "c")
    msg = str(e.value)
    assert e.value.connection and msg.startswith(f"cannot download {dead} (") and "HTTP 404" in msg
    assert f"mirror {server.base}/gone.bin" in msg and "\n" not in msg


def test_timeout_setting(monkeypatch):
    monkeypatch.setenv("VITKIT_DOWNLOAD_TIMEOUT", "2.5")
    assert download.timeout() == 2.5
    monkeypatch.setenv("VITKIT_DOWNLOAD_TIMEOUT", "soon")
    with pytest.raises(UserError, match="VITKIT_DOWNLOAD_TIMEOUT must be a number"):
        download.timeout()


# -- datasets through it --------------------------------------------------------------------------------------------
def test_a_dataset_is_downloaded_once_into_the_cache(server, fake_mnist, isolated, tmp_path, monkeypatch, capsys):
    for name, body in fake_mnist["gz"].items():
        server.serve(f"/mnist/{name}", body, mode="slow", pause=0.01)
    fake_mnist["mirrors"](server.base + "/mnist/")
    monkeypatch.setenv("VITKIT_PROGRESS", "1")
    test = load_dataset("mnist", "test", data_dir=tmp_path / "empty", download=True)
    assert (test.images[:, 0].numpy() == fake_mnist["images"]).all()
    assert test.labels.tolist() == fake_mnist["labels"].tolist()
    assert leftovers(isolated) == sorted(fake_mnist["gz"])
    labels_gz = "t10k-labels-idx1-ubyte.gz"
    assert (isolated / "mnist" / labels_gz).read_bytes() == fake_mnist["gz"][labels_gz]
    err = capsys.readouterr().err
    assert "t10k-images-idx3-ubyte.gz" in err and "100%" in err  # the progress bar, as for weights
    load_dataset("mnist", "test", data_dir=tmp_path / "empty", download=True)  # found in the cache
    assert server.hits == {f"/mnist/{name}": 1 for name in fake_mnist["gz"]}


def test_vitkit_cache_holds_dataset_downloads_too(server, fake_mnist, isolated, tmp_path, monkeypatch):
    """One setting moves the whole cache: datasets go where weights go."""
    for name, body in fake_mnist["gz"].items():
        server.serve(f"/mnist/{name}", body)
    fake_mnist["mirrors"](server.base + "/mnist/")
    monkeypatch.setenv("VITKIT_CACHE", str(tmp_path / "mine"))
    load_dataset("mnist", "test", data_dir=tmp_path / "empty", download=True)
    assert leftovers(tmp_path / "mine" / "mnist") == sorted(fake_mnist["gz"])
    assert not isolated.exists()  # nothing in the XDG cache


def test_an_unreachable_mirror_falls_through_to_the_next(server, fake_mnist, isolated, tmp_path):
    for name, body in fake_mnist["gz"].items():
        server.serve(f"/second/{name}", body)
    fake_mnist["mirrors"](closed_port_url("/first/"), server.base + "/missing/", server.base + "/second/")
    t = time.time()
    test = load_dataset("mnist", "test", data_dir=tmp_path / "empty", download=True)
    assert len(test) == 5 and time.time() - t < 30
    assert {p: n for p, n in server.hits.items() if p.startswith("/second/")} == {
        f"/second/{name}": 1 for name in fake_mnist["gz"]}
    assert leftovers(isolated) == sorted(fake_mnist["gz"])


def test_a_wrong_md5_keeps_nothing_and_says_so_in_one_line(server, fake_mnist, isolated, tmp_path):
    bad = server.serve("/bad/t10k-images-idx3-ubyte.gz", b"not mnist")
    for name, body in fake_mnist["gz"].items():
        server.serve(f"/good/{name}", body)
    fake_mnist["mirrors"](server.base + "/bad/", server.base + "/good/")
    with pytest.raises(UserError) as e:
        load_dataset("mnist", "test", data_dir=tmp_path / "empty", download=True)
    msg = str(e.value)
    want = md5(fake_mnist["gz"]["t10k-images-idx3-ubyte.gz"])
    assert "\n" not in msg and msg.startswith(f"cannot download {bad} (md5 {md5(b'not mnist')} does not match "
                                              f"the expected {want})")
    assert str(isolated / "mnist" / "t10k-images-idx3-ubyte.gz") in msg  # where a copy fetched by hand goes
    assert leftovers(isolated) == []
    assert "/good/t10k-images-idx3-ubyte.gz" not in server.hits  # arrived wrong: no other mirror is asked


def test_no_mirror_reachable_names_the_files_and_where_to_put_them(fake_mnist, isolated, tmp_path):
    dead = closed_port_url("/a/")
    fake_mnist["mirrors"](dead, closed_port_url("/b/"))
    with pytest.raises(UserError) as e:
        load_dataset("mnist", "test", data_dir=tmp_path / "empty", download=True)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("mnist test files not found: t10k-images-idx3-ubyte.gz, "
                                              "t10k-labels-idx1-ubyte.gz; could not download them: "
                                              f"{dead}t10k-images-idx3-ubyte.gz (")
    assert "mirror http://127.0.0.1:" in msg and str(tmp_path / "empty" / "mnist") in msg
    assert leftovers(isolated) == []


def test_no_download_setting_is_respected_by_datasets(server, fake_mnist, tmp_path):
    for name, body in fake_mnist["gz"].items():
        server.serve(f"/mnist/{name}", body)
    fake_mnist["mirrors"](server.base + "/mnist/")
    with pytest.raises(UserError, match="mnist test files not found") as e:
        load_dataset("mnist", "test", data_dir=tmp_path / "empty")  # VITKIT_NO_DOWNLOAD=1 (the fixture)
    assert "could not download" not in str(e.value) and server.hits == {}
