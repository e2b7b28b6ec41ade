"""vitkit study: class-balanced subsets, the rows' numbers against hand computations, resuming cell by cell, the
figures and the command's errors. Pre-training runs on the embedded Fashion-MNIST subset with testing-size models
for a few steps; the transfer set is a small image folder made here (classes told apart by colour)."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from imagefolders import write_folder
from vitkit.cli import main
from vitkit.data.datasets import first_per_class, iterate_batches, load_dataset, load_embedded, subset_per_class
from vitkit.study import run as study_run
from vitkit.study.grids import GRIDS, Cell, Grid, family_of
from vitkit.study.run import RESULTS, ROW, StudyRun, Transfer, pretrain_flops, run_study

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def test_first_per_class_is_balanced_nested_and_in_order():
    labels = np.array([0, 1, 0, 2, 0, 1, 0, 2, 1, 1])  # class 0: 4 (at 0,2,4,6), 1: 4 (1,5,8,9), 2: 2 (3,7)
    assert first_per_class(labels, 0.5).tolist() == [0, 1, 2, 3, 5]  # 2 + 2 + 1
    assert first_per_class(labels, 0.25).tolist() == [0, 1, 3]  # at least one per class: 1 + 1 + round(0.5)=1
    assert first_per_class(labels, 1.0).tolist() == list(range(10))
    small, large = set(first_per_class(labels, 0.3)), set(first_per_class(labels, 0.7))
    assert small <= large


def test_subset_of_an_image_folder_reads_the_chosen_images(tmp_path):
    spec = write_folder(tmp_path / "f", n_train=4, n_test=1)
    ds = load_dataset(spec, "train", image_size=8, channels=3)
    sub = subset_per_class(ds, 0.5)
    assert len(sub) == 6 and sorted(sub.labels.tolist()) == [0, 0, 1, 1, 2, 2]
    (images, labels), = list(iterate_batches(sub, torch.arange(len(sub)), 64))
    whole, whole_labels = ds.get_batch(sub.indices)
    assert torch.equal(images, whole) and torch.equal(labels, whole_labels)


def vit_testing_flops(image_size: int, patch: int, chans: int, classes: int) -> int:
    """ViT-testing/P by hand: width 16, 2 blocks, MLP 32, [class] token; 2 x multiply-adds of matmuls."""
    d, mlp, depth = 16, 32, 2
    patches = (image_size // patch) ** 2
    t = patches + 1
    block = 2 * t * (4 * d * d + 2 * d * mlp) + 2 * 2 * t * t * d
    return depth * block + 2 * patches * (chans * patch * patch) * d + 2 * d * classes


GRID = Grid("data-scale", (Cell("ViT-testing/4", 0.1, 6), Cell("ViT-testing/4", 0.2, 6), Cell("BiT-testing", 0.1, 6)),
            image_size=16, batch_size=8, save_every=3, limit_test=50, shots=(2, 5), draws=1, transfer_train=30,
            transfer_test=18)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    spec = write_folder(tmp / "transfer")
    sr = StudyRun(GRID, tmp / "out", tmp / "cells", dataset="embedded", transfers=[Transfer(spec)], device="cpu",
                  say=lambda line: None)
    return sr, run_study(sr)


def test_rows_hold_the_contract_and_hand_computed_numbers(study):
    sr, rows = study
    labels = load_embedded("train").labels.numpy()
    assert [r["model"] for r in rows] == ["ViT-testing/4", "ViT-testing/4", "BiT-testing"]
    assert [r["family"] for r in rows] == ["vit", "vit", "resnet"]
    for r, f in zip(rows, (0.1, 0.2, 0.1)):
        want = sum(max(1, int(f * (labels == c).sum() + 0.5)) for c in np.unique(labels))
        assert r["pretrain_images"] == want
        assert r["images_seen"] == 6 * 8
        assert r["top1_images"] == 50 and 0 <= r["top1"] <= 1
        assert set(r["fewshot"]) == {"2", "5"} and all(0 <= v <= 1 for v in r["fewshot"].values())
        assert r["fewshot"] == r["fewshot_per_transfer"]["transfer"]  # one transfer set: the mean is that set
    assert rows[0]["pretrain_images"] < rows[1]["pretrain_images"]
    # the embedded data is 1-channel 28 px with 10 classes; the study's 16 px
    fpi = vit_testing_flops(16, 4, 1, 10)
    assert rows[0]["flops_per_image"] == fpi
    assert rows[0]["pretrain_flops"] == 3 * fpi * 6 * 8 == pretrain_flops(fpi, 6, 8)
    assert rows[2]["pretrain_flops"] == 3 * rows[2]["flops_per_image"] * 48
    # same steps for every subset: equal compute along a model's line
    assert rows[0]["pretrain_flops"] == rows[1]["pretrain_flops"]
    assert json.loads((sr.out / RESULTS).read_text()) == rows


def test_colour_coded_transfer_set_is_learnt_by_the_few_shot_probe(study):
    """Three classes told apart by their mean colour: even a barely trained model's features separate them."""
    _, rows = study
    assert max(r["fewshot"]["5"] for r in rows) >= 0.9


def test_a_second_call_reads_finished_cells_back(study, monkeypatch):
    sr, rows = study

    def no_training(*a, **k):
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr(study_run, "run_cell", no_training)
    assert run_study(sr) == rows


def test_a_study_continues_from_its_results_json_alone(study, tmp_path, monkeypatch):
    """On another machine only DIR/results.json was kept (committed): finished rows are not run again, the
    missing cell is, and an interrupted call keeps the recorded rows it had not reached."""
    import dataclasses
    import shutil

    sr, rows = study
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(sr.out / RESULTS, out / RESULTS)
    moved = dataclasses.replace(sr, out=out, cells_dir=tmp_path / "no-cells")
    ran = []

    def fake_run(s, cell):
        ran.append(cell)
        return {**rows[1], "seconds": -1.0}

    monkeypatch.setattr(study_run, "run_cell", fake_run)
    assert run_study(moved) == rows and ran == []
    (out / RESULTS).write_text(json.dumps([rows[0], rows[2]]))  # the second cell's row is missing
    got = run_study(moved)
    assert ran == [GRID.cells[1]] and got == [rows[0], {**rows[1], "seconds": -1.0}, rows[2]]

    def killed(s, cell):
        raise KeyboardInterrupt

    (out / RESULTS).write_text(json.dumps([rows[0], rows[2]]))
    monkeypatch.setattr(study_run, "run_cell", killed)
    with pytest.raises(KeyboardInterrupt):
        run_study(moved)
    assert json.loads((out / RESULTS).read_text()) == [rows[0], rows[2]]


def test_identical_cells_are_reused_from_another_studys_results(study, tmp_path, monkeypatch):
    """--reuse: a row of another study's results.json stands for the same cell here (e.g. the data-scale study's
    100 % cells in the compute study) -- but only for the same run (cell name) on the same transfer sets."""
    import dataclasses

    sr, rows = study
    other = tmp_path / "other.json"
    foreign = {**rows[2], "cell": "some-other-run", "fewshot_per_transfer": {"transfer": rows[2]["fewshot"]}}
    elsewhere = {**rows[1], "fewshot_per_transfer": {"another-set": rows[1]["fewshot"]}}
    other.write_text(json.dumps([rows[0], elsewhere, foreign]))
    moved = dataclasses.replace(sr, out=tmp_path / "out", cells_dir=tmp_path / "no-cells", reuse=[other])
    ran = []

    def fake_run(s, cell):
        ran.append(cell)
        return {**rows[GRID.cells.index(cell)], "seconds": -1.0}

    monkeypatch.setattr(study_run, "run_cell", fake_run)
    got = run_study(moved)
    assert ran == [GRID.cells[1], GRID.cells[2]]  # cell 0 reused; cell 1 was measured on another transfer set
    assert got[0] == rows[0] and "some-other-run" not in {r["cell"] for r in got}


def test_an_interrupted_cell_continues_from_its_checkpoint(tmp_path):
    from vitkit.train.loop import train

    spec = write_folder(tmp_path / "transfer")
    grid = GRID.replace(cells=(Cell("ViT-testing/4", 0.1, 6),))
    sr = StudyRun(grid, tmp_path / "out", tmp_path / "cells", dataset="embedded", transfers=[Transfer(spec)],
                  device="cpu", say=lambda line: None)
    cell = grid.cells[0]
    # the cell killed after its checkpoint at step 3: the same run, stopped early
    train(sr.settings(cell, resume=False, overwrite=False).replace(steps=3))
    metrics = sr.cell_dir(cell) / "metrics.jsonl"
    before = [json.loads(x) for x in metrics.read_text().splitlines() if "loss" in json.loads(x)]
    row, = run_study(sr)
    after = [json.loads(x) for x in metrics.read_text().splitlines() if "loss" in json.loads(x)]
    assert [a["step"] for a in after] == [1, 2, 3, 4, 5, 6]
    assert [a["loss"] for a in after[:3]] == [b["loss"] for b in before]  # continued, not started again
    assert row["steps"] == 6 and (sr.cell_dir(cell) / ROW).is_file()


def test_a_cell_killed_before_its_first_checkpoint_starts_again(tmp_path):
    spec = write_folder(tmp_path / "transfer")
    grid = GRID.replace(cells=(Cell("ViT-testing/4", 0.1, 6),))
    sr = StudyRun(grid, tmp_path / "out", tmp_path / "cells", dataset="embedded", transfers=[Transfer(spec)],
                  device="cpu", say=lambda line: None)
    d = sr.cell_dir(grid.cells[0])
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_text('{"step": 1, "loss": 2.3}\n')
    row, = run_study(sr)
    assert row["steps"] == 6


def test_cell_keys_share_identical_runs_only(study):
    g = GRIDS[("data-scale", False)]
    c = g.cells[-1]
    same = GRIDS[("compute", False)]
    full = [x for x in g.cells if x.fraction == 1.0]
    assert len(full) == 3 and all(x in same.cells for x in full)  # every 100 % cell is a compute cell too
    assert g.cell_key(c, "tiny-imagenet", 0) == same.cell_key(c, "tiny-imagenet", 0)
    assert g.cell_key(c, "tiny-imagenet", 0) != g.cell_key(c, "tiny-imagenet", 1)
    assert g.cell_key(c, "tiny-imagenet", 0) != g.replace(lr=3e-3).cell_key(c, "tiny-imagenet", 0)


def test_families_and_full_grids():
    assert [family_of(m) for m in ("ViT-Mini/4", "BiT-R14x1-S", "R+ViT-Mini/8", "R50+ViT-B/16")] == \
        ["vit", "resnet", "hybrid", "hybrid"]
    for (name, quick), g in GRIDS.items():
        if name == "mpp":  # one model, three arms: tests/test_study_mpp.py
            continue
        assert {c.family for c in g.cells} == {"vit", "resnet", "hybrid"}, name
        steps = {m: {c.steps for c in g.cells if c.model == m} for m in {c.model for c in g.cells}}
        if name == "data-scale":  # the same steps for every subset size
            assert all(len(s) == 1 for s in steps.values())
            assert len({c.fraction for c in g.cells}) >= 2
    # the compute study: at least two sizes for ViT and ResNet
    full = GRIDS[("compute", False)]
    assert len({c.model for c in full.cells if c.family == "vit"}) >= 2
    assert len({c.model for c in full.cells if c.family == "resnet"}) >= 2
    assert len({c.model for c in full.cells if c.family == "hybrid"}) >= 2
    # two lengths for every model but the largest BiT, whose longer cell would lie beyond every ViT cell's FLOPs;
    # a third for the small ViT and hybrid (grids.py says why)
    lengths = {m: {c.steps for c in full.cells if c.model == m} for m in {c.model for c in full.cells}}
    assert lengths.pop("BiT-R26x1-S") == {500}
    assert lengths.pop("ViT-Mini/4") == lengths.pop("R+ViT-Mini/8") == {500, 1000, 2000}
    assert all(s == {500, 1000} for s in lengths.values())


def test_figures_are_drawn(study):
    from vitkit.study.plots import compute_figure, data_scale_figure, save

    sr, rows = study
    for fig in (data_scale_figure(rows), compute_figure(rows)):
        assert len(fig.axes) == 3  # 2-shot, 5-shot, top-1
        p = save(fig, sr.out / "fig.png")
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = data_scale_figure(rows).axes[0].get_lines()
    assert len(lines) == 2  # one line per model
    assert list(lines[0].get_xdata()) == [rows[0]["pretrain_images"], rows[1]["pretrain_images"]]


@pytest.mark.parametrize("argv, says", [
    (["study", "mpp", "--quick", "--out", "X"], "--transfer SPEC is needed"),
    (["study", "data-scale", "--quick"], "--out DIR is required"),
    (["study", "data-scale", "--quick", "--out", "X"], "--transfer SPEC is needed"),
    (["study", "data-scale", "--quick", "--out", "X", "--seed", "-1"], "--seed"),
    (["study", "data-scale", "--quick", "--out", "X", "--transfer", "imagefolder:/nonexistent/t"], "nonexistent"),
    (["study", "sizes", "--out", "X"], "invalid choice"),
    (["study", "compute", "--quick", "--out", "X", "--reuse", "/nonexistent/results.json"], "--reuse"),
    (["study", "data-scale", "--quick", "--out", "X", "--data-dir", "/nonexistent/data"],
     "--data-dir /nonexistent/data: no such directory"),
    (["study", "data-scale", "--quick", "--out", "X", "--data-dir", "/nonexistent/data", "--transfer",
      "fashion-mnist"], "--data-dir /nonexistent/data: no such directory"),
])
def test_bad_input_is_one_line_before_any_work(argv, says, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vitkit: error:") and says in err[0], err
    assert not (tmp_path / "X" / "cells").exists()


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "tiny-imagenet-200").is_dir() or not (SHARED / "cifar10-jpeg").is_dir(),
                    reason="needs ../shared/data (tiny-imagenet-200, cifar10-jpeg)")
def test_quick_data_scale_on_tiny_imagenet(tmp_path):
    """The documented smoke command, end to end (about a minute or two on a laptop CPU)."""
    out = tmp_path / "q"
    subprocess.run([sys.executable, "-m", "vitkit", "study", "data-scale", "--quick", "--out", str(out),
                    "--data-dir", str(SHARED), "--transfer", f"imagefolder:{SHARED / 'cifar10-jpeg'}",
                    "--device", "cpu"], check=True, timeout=600)
    rows = json.loads((out / RESULTS).read_text())
    assert len(rows) == 6 and {r["pretrain_images"] for r in rows} == {200 * 25, 200 * 50}
    assert all(r["top1_images"] == 500 for r in rows)
    assert (out / "data-scale.png").is_file()


@pytest.mark.parametrize("bad", [0, 1.5, float("nan")])
def test_train_fraction_is_checked(bad):
    from vitkit.errors import UserError
    from vitkit.flags import check
    from vitkit.train.loop import TrainSettings

    with pytest.raises(UserError, match="--train-fraction must be a number > 0 and <= 1"):
        check(TrainSettings(train_fraction=bad))


def _fake_cells(monkeypatch, ran):
    """run_cell replaced by one that records which cells it was asked to train (and writes their rows)."""
    def fake(sr, cell):
        ran.append(cell)
        row = {"cell": sr.cell_dir(cell).name, "pretrain_flops": 0}
        study_run.write_json_atomic(sr.cell_dir(cell) / ROW, row)
        return row
    monkeypatch.setattr(study_run, "run_cell", fake)


def _holder(d):
    """Another live process holding cell directory d's lock (taken by the lock code itself)."""
    code = ("import sys, time; from pathlib import Path; from vitkit.study.run import try_lock; "
            "assert try_lock(Path(sys.argv[1])); print('locked', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(d)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_cell_another_process_trains_is_left_for_last_then_taken_over(tmp_path, monkeypatch):
    sr = StudyRun(GRID, tmp_path / "out", tmp_path / "cells", dataset="embedded", device="cpu", say=lambda line: None)
    first = sr.cell_dir(GRID.cells[0])
    proc = _holder(first)
    try:
        assert study_run.lock_holder(first) == proc.pid and not study_run.try_lock(first)
        ran, waits = [], []

        def wait(seconds):  # while the study waits for the first cell, its holder dies without finishing it
            waits.append(seconds)
            proc.kill()
            proc.wait()
        _fake_cells(monkeypatch, ran)
        monkeypatch.setattr(study_run.time, "sleep", wait)
        rows = run_study(sr)
    finally:
        proc.kill()
        proc.wait()
    assert ran == [GRID.cells[1], GRID.cells[2], GRID.cells[0]]  # the busy cell last, after one wait
    assert waits == [study_run.POLL_SECONDS]
    assert [r["cell"] for r in rows] == [sr.cell_dir(c).name for c in GRID.cells]  # rows in grid order
    assert not any((sr.cell_dir(c) / study_run.LOCK).exists() for c in GRID.cells)  # every lock released


def test_a_cell_another_process_finishes_is_read_back_not_trained(tmp_path, monkeypatch):
    sr = StudyRun(GRID, tmp_path / "out", tmp_path / "cells", dataset="embedded", device="cpu", say=lambda line: None)
    last = sr.cell_dir(GRID.cells[2])
    proc = _holder(last)
    theirs = {"cell": last.name, "pretrain_flops": 7}

    def wait(seconds):  # the holder writes the cell's row and releases the lock
        study_run.write_json_atomic(last / ROW, theirs)
        proc.kill()
        proc.wait()
        study_run.unlock(last)
    ran = []
    _fake_cells(monkeypatch, ran)
    monkeypatch.setattr(study_run.time, "sleep", wait)
    try:
        rows = run_study(sr)
    finally:
        proc.kill()
        proc.wait()
    assert ran == list(GRID.cells[:2]) and rows[2] == theirs


def test_a_stale_lock_is_replaced_at_once(tmp_path, monkeypatch):
    sr = StudyRun(GRID, tmp_path / "out", tmp_path / "cells", dataset="embedded", device="cpu", say=lambda line: None)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    d = sr.cell_dir(GRID.cells[0])
    d.mkdir(parents=True)
    (d / study_run.LOCK).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    assert study_run.lock_holder(d) is None
    ran = []
    _fake_cells(monkeypatch, ran)
    monkeypatch.setattr(study_run.time, "sleep", lambda s: pytest.fail("waited for a dead process"))
    run_study(sr)
    assert ran == list(GRID.cells) and not (d / study_run.LOCK).exists()
