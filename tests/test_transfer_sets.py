"""scripts/make_transfer_sets.py --untuned: three CIFAR-10 folders of the stated sizes, disjoint from the tuning sets
(the first 10/100 train images per class) and from each other, in train and in test."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_transfer_sets.py"


def _fake_cifar(root: Path, classes=("cat", "dog")) -> None:
    for split, n in (("train", 2000), ("test", 1000)):
        for c in classes:
            d = root / "cifar10-jpeg" / split / c
            d.mkdir(parents=True)
            for i in range(n):
                (d / f"{i:04d}.jpg").write_bytes(b"x")


def _files(d: Path) -> set:
    return {p.relative_to(d).as_posix() for p in d.rglob("*.jpg")}


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def test_untuned_folders_are_disjoint_from_the_tuning_sets_and_each_other(tmp_path):
    _fake_cifar(tmp_path / "data")
    r = _run(tmp_path / "out", "--data", tmp_path / "data", "--untuned")
    assert r.returncode == 0, r.stderr
    sets = {n: tmp_path / "out" / f"untuned-cifar10-{n}" for n in (10, 30, 60)}
    for n, d in sets.items():
        assert len(_files(d / "train")) == 2 * n and len(_files(d / "test")) == 2 * 200
    assert sorted(p.name for p in (sets[30] / "train" / "cat").iterdir())[0] == "1970.jpg"
    tuning = {f"{c}/{i:04d}.jpg" for c in ("cat", "dog") for i in range(100)}
    for split in ("train", "test"):
        parts = [_files(d / split) for d in sets.values()]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    for d in sets.values():
        assert not _files(d / "train") & tuning
    again = _run(tmp_path / "out", "--data", tmp_path / "data", "--untuned")
    assert again.returncode == 0 and again.stdout.count("exists, left alone") == 3


def test_a_missing_cifar_folder_is_one_line_and_exit_2(tmp_path):
    r = _run(tmp_path / "out", "--data", tmp_path / "nothing", "--untuned")
    assert r.returncode == 2 and "cifar10-jpeg" in r.stderr and "Traceback" not in r.stderr
    assert not list((tmp_path / "out").glob("untuned-*"))
