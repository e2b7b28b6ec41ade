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


# ------------------------------------------------------------------------------------------ 2. --recipe on --resume


def one_error(rc: int, err: list[str]) -> str:
    lines = [x for x in err if not x.startswith(("vitkit train: ", "step "))]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("vitkit: error: ") and "Traceback" not in lines[0], err
    return lines[0]


def test_resume_refuses_another_recipe(tmp_path, capsys, one_thread):
    """An MPP run (and a fine-tuning run) resumed with another --recipe is refused in one line, as a changed
    --layer-decay is; the run's own recipe named again resumes."""
    photos = folder(tmp_path / "photos", per_class=8, side=32)
    common = ["--dataset", f"imagefolder:{photos}", "--image-size", "32", "--batch-size", "8", *FAST]
    mpp, ft = tmp_path / "mpp", tmp_path / "ft"
    assert run_cli(capsys, ["train", "--recipe", "mpp", *common, "--steps", "1", "--out", mpp])[0] == 0
    for other in ("pretrain", "finetune", "default"):
        line = one_error(*run_cli(capsys, ["train", "--out", mpp, "--resume", "--recipe", other, "--steps", "2"]))
        assert f"--resume: --recipe {other} (saved: mpp); these define the run" in line, line
    assert torch.load(mpp / "checkpoint" / "train_state.pt", weights_only=True)["step"] == 1
    assert run_cli(capsys, ["train", "--out", mpp, "--resume", "--recipe", "mpp", "--steps", "2"])[0] == 0
    assert run_cli(capsys, ["train", "--out", mpp, "--resume", "--steps", "3"])[0] == 0  # no --recipe: the run's

    assert run_cli(capsys, ["train", "--init", mpp / "checkpoint", *common, "--steps", "1", "--out", ft])[0] == 0
    line = one_error(*run_cli(capsys, ["train", "--out", ft, "--resume", "--recipe", "pretrain", "--steps", "2"]))
    assert "--recipe pretrain (saved: finetune)" in line, line


# ------------------------------------------------------------------ 4. a refused resume names the value used


def test_a_refused_resume_names_the_value_the_run_used(tmp_path, capsys, one_thread):
    """Fine-tuning on a folder, the plan leaves the resolution to the checkpoint (saved as not given): a resume
    that gives another --image-size names the 32 px the run used, not None; giving the 32 it used is no change."""
    photos = folder(tmp_path / "photos", per_class=4, side=32)
    pre, ft = tmp_path / "pre", tmp_path / "ft"
    assert run_cli(capsys, ["train", "--dataset", f"imagefolder:{photos}", "--image-size", "32", *FAST,
                            "--steps", "1", "--out", pre])[0] == 0
    rc, err = run_cli(capsys, ["train", "--init", pre / "checkpoint", "--dataset", f"imagefolder:{photos}", *FAST,
                               "--steps", "1", "--out", ft])
    assert rc == 0 and "32 px (the checkpoint's resolution)" in err[0], err
    assert torch.load(ft / "checkpoint" / "train_state.pt", weights_only=True)["settings"]["image_size"] is None
    line = one_error(*run_cli(capsys, ["train", "--out", ft, "--resume", "--image-size", "64", "--steps", "2"]))
    assert "--image-size 64 (saved: the run used 32)" in line and "None" not in line, line
    line = one_error(*run_cli(capsys, ["train", "--out", ft, "--resume", "--teacher", pre / "checkpoint",
                                       "--steps", "2"]))
    assert f"--teacher {pre / 'checkpoint'} (saved: not given)" in line, line
    assert run_cli(capsys, ["train", "--out", ft, "--resume", "--image-size", "32", "--steps", "2"])[0] == 0
    state = torch.load(ft / "checkpoint" / "train_state.pt", weights_only=True)
    assert state["step"] == 2 and state["settings"]["image_size"] is None  # the run's settings, as saved


# ------------------------------------------------------------------- 3. a teacher whose weights changed


def _teacher(path: Path, seed: int) -> Path:
    from test_distill import loaded

    from vitkit import save_checkpoint

    m = loaded("ViT-testing/4", seed, classes=2)
    m.class_names = ["a", "b"]
    save_checkpoint(path, m)
    return path


def _losses(out: Path) -> list:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "grad_norm" in r]


def test_resume_refuses_a_teacher_whose_weights_changed_and_follows_moved_ones(tmp_path, capsys, one_thread):
    from vitkit.errors import UserError
    from vitkit.train.loop import TrainSettings, train

    photos = folder(tmp_path / "photos", per_class=8, side=32)
    teacher = _teacher(tmp_path / "teacher", 0)
    run = dict(dataset=f"imagefolder:{photos}", image_size=32, model="ViT-testing/4", batch_size=8,
               precision="fp32", progress=False, warmup_steps=1, save_every=2, eval_every=2, teacher=str(teacher),
               distill_weight=0.5, steps=4)
    train(TrainSettings(**run, out=str(tmp_path / "ref")))

    class Crash(Exception):
        pass

    def crash(record):  # after step 3, before its checkpoint: the run resumes from step 2's
        if record["step"] == 3:
            raise Crash

    cut = tmp_path / "cut"
    with pytest.raises(Crash):
        train(TrainSettings(**run, out=str(cut)), on_step=crash)
    _teacher(teacher, 1)  # other weights at the same path: another distillation, refused in one line
    line = one_error(*run_cli(capsys, ["train", "--out", cut, "--resume"]))
    assert f"--resume: --teacher {teacher}: its weights are not the ones the run was started with" in line, line
    state = torch.load(cut / "checkpoint" / "train_state.pt", weights_only=True)
    assert state["step"] == 2 and [t["teacher"] for t in state["teachers"]] == [str(teacher)]
    assert len(state["teachers"][0]["sha256"]) == 64
    with pytest.raises(UserError, match="its weights are not the ones"):
        train(TrainSettings(**run, out=str(cut), resume=True))

    # the same weights moved to another path: the same run, continued exactly
    _teacher(teacher, 0)
    moved = tmp_path / "moved"
    teacher.rename(moved)
    train(TrainSettings(**{**run, "teacher": str(moved)}, out=str(cut), resume=True))
    assert _losses(cut) == _losses(tmp_path / "ref") and len(_losses(cut)) == 4


def test_a_run_saved_without_teacher_hashes_resumes_with_a_note_and_records_them(tmp_path, capsys, one_thread):
    photos = folder(tmp_path / "photos", per_class=8, side=32)
    teacher = _teacher(tmp_path / "teacher", 0)
    out = tmp_path / "old"
    common = ["--dataset", f"imagefolder:{photos}", "--image-size", "32", "--batch-size", "8", *FAST,
              "--teacher", teacher]
    assert run_cli(capsys, ["train", *common, "--steps", "1", "--out", out])[0] == 0
    f = out / "checkpoint" / "train_state.pt"
    state = torch.load(f, weights_only=True)
    del state["teachers"]  # as an earlier vitkit wrote it
    torch.save(state, f)
    rc, err = run_cli(capsys, ["train", "--out", out, "--resume", "--steps", "2"])
    assert rc == 0, err
    assert any(x.startswith("vitkit train: note: this run's checkpoint records no hash of its teachers' weights")
               for x in err), err
    assert len(torch.load(f, weights_only=True)["teachers"]) == 1  # checked from the next resume on
    _teacher(teacher, 1)
    line = one_error(*run_cli(capsys, ["train", "--out", out, "--resume", "--steps", "3"]))
    assert "its weights are not the ones the run was started with" in line
    # an old run's teacher path is still compared as a path
    state = torch.load(f, weights_only=True)
    del state["teachers"]
    torch.save(state, f)
    line = one_error(*run_cli(capsys, ["train", "--out", out, "--resume", "--teacher", tmp_path / "elsewhere",
                                       "--steps", "3"]))
    assert f"--teacher {tmp_path / 'elsewhere'} (saved: {teacher})" in line, line
