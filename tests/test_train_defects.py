"""Defects of `vitkit train` (issue 32): the small-data plan on tiny, dirty, one-class and greyscale folders, and
what --resume refuses (a changed recipe, a teacher whose weights changed) and how it says so."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit import cli
from vitkit.train.plan import DataFacts, facts_of_folder, plan

from test_mpp import one_thread  # noqa: F401 (a fixture)

FAST = ["--model", "ViT-testing/4", "--precision", "fp32", "--no-progress", "--time-budget", "0"]


def folder(root: Path, per_class: int = 1, classes=("a", "b"), mode: str = "RGB", side: int = 20,
           extra: dict | None = None) -> Path:
    """root/{train,val}/<class>/i.png: `per_class` distinct images per class; `extra` {relative path: bytes} adds
    files to train/."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                shape = (side, side) if mode == "L" else (side, side, 3)
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(d / f"{i}.png")
    for rel, data in (extra or {}).items():
        (root / "train" / rel).write_bytes(data)
    return root


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), (200, 10, 10)).save(buf, "JPEG")
    return buf.getvalue()


def run_cli(capsys, argv) -> tuple[int, list[str]]:
    capsys.readouterr()
    rc = cli.main([str(a) for a in argv])
    return rc, capsys.readouterr().err.strip().splitlines()


# ------------------------------------------------------------------------------------------- 1. the plan


def test_the_planned_batch_never_exceeds_the_training_images():
    def batch(n):
        changes, why = plan(set(), recipe_batch=128, recipe_epochs=5,
                            facts=DataFacts(n_train=n, num_classes=2, grey=False, median_side=32))
        return changes["batch_size"], next(w for w in why if w.startswith("batch "))

    assert batch(2) == (2, "batch 2 (no more than the 2 training images)")
    assert batch(5) == (4, "batch 4 (no more than the 5 training images)")  # a power of two, as elsewhere
    assert batch(12) == (8, "batch 8 (the smallest planned batch; 12 images)")  # not "an eighth"
    assert batch(100) == (8, "batch 8 (an eighth of the 100 images or less)")
    assert batch(600) == (64, "batch 64 (an eighth of the 600 images or less)")


def test_a_folder_of_two_images_trains_with_a_batch_it_has(tmp_path, capsys, one_thread):
    root = folder(tmp_path / "two", per_class=1)
    rc, err = run_cli(capsys, ["train", "--dataset", f"imagefolder:{root}", *FAST, "--steps", "2",
                               "--out", tmp_path / "run"])
    assert rc == 0, err
    assert "batch 2 (no more than the 2 training images)" in err[0], err
    assert not any("--batch-size" in line for line in err), err
    state = torch.load(tmp_path / "run" / "checkpoint" / "train_state.pt", weights_only=True)
    assert state["step"] == 2 and state["settings"]["batch_size"] == 2


def test_the_plan_counts_the_usable_images_the_run_trains_on(tmp_path, capsys, one_thread):
    """A corrupt PNG and a truncated JPEG are files with image extensions that the dataset skips: the plan does not
    count them (6 images, not 8), and a --limit-train cut is counted too."""
    whole = _jpeg()
    root = folder(tmp_path / "dirty", per_class=3, extra={"a/broken.png": b"not a png at all",
                                                           "b/cut.jpg": whole[: len(whole) // 2]})
    facts = facts_of_folder(root)
    assert (facts.n_train, facts.num_classes, facts.skipped, facts.left_out) == (6, 2, 2, 0)
    assert facts_of_folder(root, limit_train=5).n_train == 5
    assert facts_of_folder(root, train_fraction=0.34).n_train == 2  # one of each class's 3
    rc, err = run_cli(capsys, ["train", "--dataset", f"imagefolder:{root}", *FAST, "--steps", "1",
                               "--limit-train", "3", "--out", tmp_path / "run"])
    assert rc == 0, err
    assert err[0].startswith("vitkit train: 3 images in 2 classes (median side 20 px, 2 unusable files not "
                             "counted, 3 more left out by --limit-train): "), err[0]
    assert "batch 2 (no more than the 3 training images)" in err[0]


def test_a_one_class_folder_is_refused_before_the_plan_line(tmp_path, capsys):
    root = folder(tmp_path / "one", per_class=4, classes=("only",))
    rc, err = run_cli(capsys, ["train", "--dataset", f"imagefolder:{root}", *FAST, "--out", tmp_path / "run"])
    assert rc == 2
    assert err == [f"vitkit: error: imagefolder: {root / 'train'} must have at least 2 class sub-folders, found "
                   f"1: only"], err
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_a_class_of_only_corrupt_files_is_refused_before_the_plan_line(tmp_path, capsys):
    root = folder(tmp_path / "x", per_class=2)
    (root / "train" / "c").mkdir()
    (root / "train" / "c" / "0.png").write_bytes(b"garbage")
    rc, err = run_cli(capsys, ["train", "--dataset", f"imagefolder:{root}", *FAST, "--out", tmp_path / "run"])
    assert rc == 2 and len(err) == 1 and err[0].startswith("vitkit: error: imagefolder: no readable images for "
                                                           "class(es) ['c']"), err


# -------------------------------------------------------------------------------------- 5. greyscale folders


def test_a_greyscale_folder_says_it_is_fed_as_three_channels(tmp_path, capsys, one_thread):
    root = folder(tmp_path / "grey", per_class=4, mode="L")  # 8 images: batch 8 before the fix too
    rc, err = run_cli(capsys, ["train", "--dataset", f"imagefolder:{root}", *FAST, "--steps", "1",
                               "--out", tmp_path / "run"])
    assert rc == 0, err
    assert "(median side 20 px, greyscale, repeated to the 3 channels of an RGB model)" in err[0], err[0]
    config = json.loads((tmp_path / "run" / "checkpoint" / "config.json").read_text())
    assert config["model"]["in_chans"] == 3  # what the line says is what was trained
    # fine-tuning that 3-channel checkpoint on the grey folder: the checkpoint's channels, said the same way
    rc, err = run_cli(capsys, ["train", "--init", tmp_path / "run" / "checkpoint", "--dataset",
                               f"imagefolder:{root}", *FAST, "--steps", "1", "--out", tmp_path / "ft"])
    assert rc == 0, err
    assert "greyscale, repeated to the 3 channels of an RGB model" in err[0], err[0]
