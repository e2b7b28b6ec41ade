"""vitkit study mpp (section 4.6): masked patch prediction vs supervised pre-training vs scratch, each evaluated by
the few-shot probe and by fine-tuning. The study runs on the embedded Fashion-MNIST subset with ViT-testing/4 for a
few steps, the transfer set is the small colour-coded image folder of test_study.py; the rows' numbers are checked
against hand computations and against evaluating the checkpoints they name. Also: --sample-train/--sample-test,
the random subset the fine-tuning uses (the first N of a class-sorted folder are its first classes)."""

import json

import numpy as np
import pytest
import torch

from imagefolders import write_folder
from test_study import SHARED, vit_testing_flops
from vitkit.data.datasets import load_dataset, load_embedded, random_indices
from vitkit.study import run as study_run
from vitkit.study.grids import GRIDS, Cell, Grid
from vitkit.study.run import FINETUNE_ROW, INIT, RESULTS, ROW, StudyRun, Transfer, run_study

GRID = Grid("mpp", (Cell("ViT-testing/4", 1.0, 6, "mpp"), Cell("ViT-testing/4", 1.0, 6),
                    Cell("ViT-testing/4", 0.0, 0, "scratch")),
            image_size=16, batch_size=8, save_every=3, limit_test=50, shots=(2, 5), draws=1, transfer_train=30,
            transfer_test=12, finetune_steps=4, finetune_batch_size=8)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared; these models are tiny
    tmp = tmp_path_factory.mktemp("mpp")
    spec = write_folder(tmp / "transfer")
    sr = StudyRun(GRID, tmp / "out", tmp / "cells", dataset="embedded", transfers=[Transfer(spec)], device="cpu",
                  say=lambda line: None)
    try:
        yield sr, run_study(sr)
    finally:
        torch.set_num_threads(n)


def test_three_arms_with_hand_computed_flops(study):
    sr, rows = study
    assert [r["arm"] for r in rows] == ["mpp", "supervised", "scratch"]
    assert {r["model"] for r in rows} == {"ViT-testing/4"} and {r["family"] for r in rows} == {"vit"}
    n_train = len(load_embedded("train").labels)
    assert [r["pretrain_images"] for r in rows] == [n_train, n_train, 0]
    assert [r["images_seen"] for r in rows] == [6 * 8, 6 * 8, 0]
    # the embedded data: 1 channel, 10 classes; the study's 16 px: 16 patches of 4x4, width 16
    fpi = vit_testing_flops(16, 4, 1, 10)
    assert rows[1]["pretrain_flops"] == 3 * fpi * 6 * 8
    # MPP runs no classifier (2 x 16 x 10) but a colour head on the 8 corrupted patches: 8 grey levels
    mpp_fpi = fpi - 2 * 16 * 10 + 8 * 2 * 16 * 8
    assert rows[0]["flops_per_image"] == mpp_fpi and rows[0]["pretrain_flops"] == 3 * mpp_fpi * 6 * 8
    assert rows[2]["pretrain_flops"] == 0 and rows[2]["steps"] == 0
    assert json.loads((sr.out / RESULTS).read_text()) == rows


def test_top1_only_where_a_classifier_was_trained(study):
    _, rows = study
    mpp, sup, scratch = rows
    assert 0 <= sup["top1"] <= 1 and sup["top1_images"] == 50
    assert mpp["top1"] is None and scratch["top1"] is None
    assert 0 <= mpp["mpp_top1"] <= mpp["mpp_top5"] <= 1 and mpp["mpp_eval_images"] == 50
    for r in rows:
        assert set(r["fewshot"]) == {"2", "5"} and all(0 <= v <= 1 for v in r["fewshot"].values())


def test_cells_are_apart_and_the_supervised_one_is_the_data_scale_run(study):
    sr, rows = study
    assert len({r["cell"] for r in rows}) == 3
    mpp, sup, scratch = GRID.cells
    assert GRID.cell_key(mpp, "embedded", 0) != GRID.cell_key(sup, "embedded", 0)
    # same model, data, steps and settings as a data-scale cell: the same key, so a shared --cells reuses it
    assert GRID.cell_key(sup, "embedded", 0) == GRIDS[("data-scale", True)].replace(
        image_size=16, batch_size=8, save_every=3, limit_test=50).cell_key(sup, "embedded", 0)
    full = GRIDS[("mpp", False)]
    ds_vit = [c for c in GRIDS[("data-scale", False)].cells if c.model == "ViT-Mini/4" and c.fraction == 1.0][0]
    assert full.cell_key(full.cells[1], "tiny-imagenet", 0) == \
        GRIDS[("data-scale", False)].cell_key(ds_vit, "tiny-imagenet", 0)
    assert full.cell_key(full.cells[0], "tiny-imagenet", 0) != full.cell_key(full.cells[1], "tiny-imagenet", 0)
    # the scratch cell is the model's random initialisation: the same architecture as the pre-trained ones
    import vitkit

    init = vitkit.load(sr.cell_dir(scratch) / INIT)
    trained = vitkit.load(sr.checkpoint(sup))
    assert init.config == trained.config
    assert not torch.equal(init.model.blocks[0].attn.qkv.weight, trained.model.blocks[0].attn.qkv.weight)


def test_scratch_is_the_supervised_runs_starting_point(study, monkeypatch):
    """The scratch arm's weights are exactly those the supervised run of the same model and seed starts from."""
    import vitkit
    from vitkit.train import loop

    sr, _ = study
    mpp, sup, scratch = GRID.cells
    start = {}

    class Stop(Exception):
        pass

    def stop_before_the_first_step(run, data, plan, parts, *a, **k):
        start.update(parts.core.state_dict())
        raise Stop

    monkeypatch.setattr(loop, "fit", stop_before_the_first_step)
    with pytest.raises(Stop):
        loop.train(sr.settings(sup, resume=False, overwrite=False).replace(out=str(sr.out / "step0")))
    init = vitkit.load(sr.checkpoint(scratch)).model.state_dict()
    assert init.keys() == start.keys() and all(torch.equal(init[k], start[k]) for k in init)


def test_finetune_top1_is_the_evaluation_of_the_finetuned_checkpoint(study):
    import vitkit
    from vitkit.data.datasets import take
    from vitkit.eval.evaluate import evaluate

    sr, rows = study
    spec = sr.transfers[0].spec
    for cell, r in zip(GRID.cells, rows):
        assert 0 <= r["finetune_top1"] <= 1
        assert r["finetune_steps"] == 4 and r["finetune_train_images"] == 30 and r["finetune_test_images"] == 12
        assert r["finetune_recipe"] == ("default" if cell.arm == "scratch" else "finetune")
        d = sr.finetune_dir(cell)
        assert d.parent == sr.cell_dir(cell) and (d / FINETUNE_ROW).is_file()
        # the fine-tuning started from the arm's checkpoint
        state = torch.load(d / "checkpoint" / "train_state.pt", weights_only=False)
        assert state["settings"]["init"] == str(sr.checkpoint(cell))
        # evaluated again, by hand: the transfer folder's test split (3 classes x 6, class-sorted), the same fixed
        # random 12 the few-shot probe is evaluated on, at the model's size and channels
        loaded = vitkit.load(r["finetune_checkpoint"])
        test = load_dataset(spec, "test", image_size=16, channels=1)
        idx = random_indices(len(test.labels), 12)
        assert len(set(np.asarray(test.labels)[idx].tolist())) == 3
        again = evaluate(loaded, take(test, idx), precision=state["settings"]["precision"])
        assert again["n"] == 12 and again["top1"] == r["finetune_top1"]


def test_a_second_call_reruns_nothing(study, monkeypatch):
    from vitkit.train import loop

    sr, rows = study

    def no_work(*a, **k):
        raise AssertionError("a finished cell or fine-tuning was run again")

    monkeypatch.setattr(study_run, "run_cell", no_work)
    monkeypatch.setattr(loop, "train", no_work)
    monkeypatch.setattr(loop, "initial_model", no_work)
    assert run_study(sr) == rows


def test_an_interrupted_finetuning_continues(study, tmp_path):
    """A fine-tuning killed after its first checkpoint continues from it; the cell is not run again."""
    from vitkit.train.loop import train

    sr, rows = study
    own_row = (sr.cell_dir(GRID.cells[1]) / ROW).read_text()
    sr2 = StudyRun(GRID.replace(cells=GRID.cells[1:2], finetune_steps=6, save_every=3), tmp_path / "out",
                   sr.cells_dir, dataset="embedded", transfers=sr.transfers, device="cpu", say=lambda line: None)
    cell = sr2.grid.cells[0]
    train(sr2.finetune_settings(cell, resume=False, overwrite=False).replace(steps=3))  # "killed" at step 3
    metrics = sr2.finetune_dir(cell) / "metrics.jsonl"
    before = [json.loads(x)["loss"] for x in metrics.read_text().splitlines() if "loss" in json.loads(x)]
    row, = run_study(sr2)
    after = [json.loads(x) for x in metrics.read_text().splitlines() if "loss" in json.loads(x)]
    assert [a["step"] for a in after] == [1, 2, 3, 4, 5, 6]
    assert [a["loss"] for a in after[:3]] == before
    assert row["finetune_steps"] == 6 and row["cell"] == rows[1]["cell"]  # the same pre-training cell, not rerun
    assert (sr.cell_dir(cell) / ROW).read_text() == own_row  # whose own row is untouched


def test_figure_and_summary_tolerate_a_missing_top1(study):
    from vitkit.study.cli import summary
    from vitkit.study.plots import data_scale_figure, mpp_figure, save

    sr, rows = study
    fig = mpp_figure(rows)
    ax, = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2-shot linear", "5-shot linear", "Fine-tuning top-1"]
    heights = sorted(round(p.get_height(), 6) for p in ax.patches)
    want = sorted(round(100 * v, 6) for r in rows for v in (*r["fewshot"].values(), r["finetune_top1"]))
    assert heights == want  # 3 arms x 3 measures, each bar its row's number
    assert save(fig, sr.out / "mpp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data_scale_figure(rows).axes) == 3  # top-1 panel: the supervised row's only
    lines = [summary(r) for r in rows]
    assert "top-1 -" in lines[0] and "top-1 -" in lines[2] and "fine-tuned" in lines[1]


def test_sample_test_draws_from_every_class_of_a_sorted_folder(tmp_path):
    from vitkit.data.preprocess import Preprocess
    from vitkit.errors import UserError
    from vitkit.runtime import load_split
    from vitkit.train.loop import TrainSettings, load_data, train

    spec = write_folder(tmp_path / "f", n_train=8, n_test=6)  # 3 classes, sorted: 0 x 6, 1 x 6, 2 x 6
    first = load_data(TrainSettings(dataset=spec, image_size=16, limit_test=6), None)
    assert first.n_test == 6 and set(np.asarray(first.test.labels)[:6].tolist()) == {0}  # why --limit-test will not do
    s = TrainSettings(dataset=spec, image_size=16, sample_train=12, sample_test=6)
    data = load_data(s, None)
    assert data.n_train == 12 and data.n_test == 6 and len(set(data.test.labels.tolist())) >= 2
    # the same images as `vitkit fewshot --sample-test 6` (and the study's Transfer.split) take
    _, labels, _ = load_split(spec, "test", Preprocess(image_size=16), limit=6)
    assert data.test.labels.tolist() == labels.tolist()
    assert data.test.indices.tolist() == random_indices(18, 6).tolist()
    with pytest.raises(UserError, match="--limit-test .* and --sample-test .* both choose"):
        train(s.replace(limit_test=6, out=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


def test_mpp_grids():
    for quick in (False, True):
        g = GRIDS[("mpp", quick)]
        assert [c.arm for c in g.cells] == ["mpp", "supervised", "scratch"]
        assert len({c.model for c in g.cells}) == 1 and g.finetune_steps > 0
        assert g.cells[0].steps == g.cells[1].steps and g.cells[0].fraction == g.cells[1].fraction == 1.0
    full = GRIDS[("mpp", False)]
    assert (full.cells[0].model, full.image_size, full.batch_size, full.cells[0].steps) == ("ViT-Mini/4", 32, 128, 1000)
    with pytest.raises(ValueError):
        Cell("ViT-testing/4", 1.0, 0, "mpp")
    with pytest.raises(ValueError):
        Cell("ViT-testing/4", 1.0, 5, "self-supervised")


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "tiny-imagenet-200").is_dir() or not (SHARED / "cifar10-jpeg").is_dir(),
                    reason="needs ../shared/data (tiny-imagenet-200, cifar10-jpeg)")
def test_quick_mpp_study_on_tiny_imagenet(tmp_path):
    """The documented smoke command, end to end (about 20 s on a laptop CPU), then again: nothing rerun."""
    import subprocess
    import sys

    out = tmp_path / "q"
    cmd = [sys.executable, "-m", "vitkit", "study", "mpp", "--quick", "--out", str(out), "--data-dir", str(SHARED),
           "--device", "cpu"]
    subprocess.run(cmd, check=True, timeout=600)
    rows = json.loads((out / RESULTS).read_text())
    assert [r["arm"] for r in rows] == ["mpp", "supervised", "scratch"]
    assert [r["pretrain_images"] for r in rows] == [200 * 250, 200 * 250, 0]  # the shared copy: 250 per class
    assert all(r["finetune_train_images"] == r["finetune_test_images"] == 300 for r in rows)
    assert rows[1]["top1_images"] == 500 and rows[0]["top1"] is None and (out / "mpp.png").is_file()
    again = subprocess.run(cmd, check=True, timeout=600, capture_output=True, text=True)
    assert again.stderr.count("done already") == 3 and "vitkit train:" not in again.stderr
    assert json.loads((out / RESULTS).read_text()) == rows
