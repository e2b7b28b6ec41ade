"""`vitkit train` as a maintainer and a user meet it: flags generated from the typed settings and validated in one
line, a run directory never replaced unasked, --resume refusing a changed run, nothing non-finite saved, write
failures as one line -- and the loop does learn (a small batch overfitted to 100 %)."""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import pytest
import torch

import vitkit
from vitkit import cli
from vitkit.checkpoint.io import load_train_state
from vitkit.errors import UserError
from vitkit.flags import Number, check
from vitkit.train.loop import TrainSettings, train

TINY = ["--model", "ViT-testing/4", "--batch-size", "32", "--limit-train", "128", "--limit-test", "64",
        "--precision", "fp32", "--no-progress", "--warmup-steps", "1"]


def error_line(capsys, argv) -> str:
    """Run `vitkit *argv` in this process; it must fail with exactly one `vitkit: error:` line and exit code 2
    (after the progress lines of a run that had started)."""
    capsys.readouterr()
    assert cli.main([str(a) for a in argv]) == 2
    err = [x for x in capsys.readouterr().err.strip().splitlines() if not x.startswith(("vitkit train: ", "step "))]
    assert len(err) == 1 and err[0].startswith("vitkit: error: ") and "Traceback" not in err[0], err
    return err[0]


def losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def test_every_settings_field_is_a_flag_with_help_and_checked_range():
    from vitkit.train.cli import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    flags = {s for a in p._actions for s in a.option_strings}
    for f in dataclasses.fields(TrainSettings):
        if f.name != "name":
            assert "--" + f.name.replace("_", "-") in flags, f.name
            assert f.metadata["flag"]["help"], f"{f.name} has no help text"
    with pytest.raises(UserError, match=r"--batch-size must be an integer >= 1, got 0"):
        check(TrainSettings(batch_size=0))  # the same ranges for the Python API
    with pytest.raises(UserError, match=r"--clip-grad must be a number >= 0, got -1"):
        train(TrainSettings(clip_grad=-1.0))
    with pytest.raises(UserError, match=r"--randaugment must be N,M .* got 99,99"):
        check(TrainSettings(randaugment=(99, 99)))
    assert Number(float, above=0).describe() == "a number > 0" and not Number(float, min=0).ok(float("nan"))


@pytest.mark.parametrize("argv, flag", [
    (["train", "--batch-size", "0"], "--batch-size"), (["train", "--batch-size", "-4"], "--batch-size"),
    (["train", "--image-size", "-28"], "--image-size"), (["train", "--device", "tpu"], "--device"),
    (["train", "--epochs", "0"], "--epochs"), (["train", "--epochs", "-1"], "--epochs"),
    (["train", "--steps", "-5"], "--steps"), (["train", "--accum-steps", "0"], "--accum-steps"),
    (["train", "--micro-batch", "0"], "--micro-batch"), (["train", "--save-every", "-1"], "--save-every"),
    (["train", "--warmup-steps", "-10"], "--warmup-steps"), (["train", "--crop-pad", "-1"], "--crop-pad"),
    (["train", "--randaugment", "99,99"], "--randaugment"), (["train", "--clip-grad", "-1"], "--clip-grad"),
    (["train", "--eval-batch-size", "0"], "--eval-batch-size"), (["train", "--limit-test", "0"], "--limit-test"),
    (["train", "--lr", "nan"], "--lr"),
    (["eval", "ckpt", "--batch-size", "0"], "--batch-size"), (["eval", "ckpt", "--limit", "0"], "--limit"),
    (["eval", "ckpt", "--limit", "-1"], "--limit"), (["eval", "ckpt", "--device", "tpu"], "--device"),
    (["predict", "ckpt", "x.png", "--topk", "0"], "--topk"), (["predict", "ckpt", "x.png", "--device", "gpu"],
                                                               "--device"),
    (["features", "ckpt", "--dataset", "embedded", "--out", "f.npy", "--sample", "0"], "--sample"),
    (["features", "ckpt", "--dataset", "embedded", "--out", "f.npy", "--batch-size", "-1"], "--batch-size"),
    (["fewshot", "ckpt", "--dataset", "embedded", "--draws", "0"], "--draws"),
    (["fewshot", "ckpt", "--dataset", "embedded", "--sample-train", "0"], "--sample-train"),
    (["analyze", "ckpt", "--out", "o", "--num-images", "0"], "--num-images"),
    (["bench", "--batch-size", "0"], "--batch-size"), (["bench", "--repeats", "0"], "--repeats"),
    (["bench", "--device", "tpu"], "--device"),
    (["export", "ckpt", "--format", "onnx", "o.onnx", "--verify-limit", "0"], "--verify-limit"),
    (["export", "ckpt", "--format", "onnx", "o.onnx", "--max-top1-gap", "-1"], "--max-top1-gap"),
    (["convert", "a", "b", "--image-size", "0"], "--image-size"), (["convert", "a", "b", "--num-heads", "0"],
                                                                   "--num-heads"),
])
def test_bad_numbers_are_one_line_errors_before_any_work(capsys, argv, flag):
    assert flag in error_line(capsys, argv)


def test_flags_mean_the_same_in_every_subcommand(capsys):
    """--device defaults to auto everywhere; the old spellings still parse, with a warning naming the new one."""
    from vitkit.cli import build_parser

    for cmd, rest in (("predict", ["c", "x.png"]), ("eval", ["c"]), ("bench", [])):
        assert build_parser(cmd).parse_args([cmd, *rest]).device == "auto", cmd
    with pytest.warns(FutureWarning, match="--train-limit is deprecated; use --sample-train"):
        args = build_parser("fewshot").parse_args(["fewshot", "c", "--train-limit", "600"])
    assert args.sample_train == 600
    with pytest.warns(FutureWarning, match="--limit is deprecated; use --sample"):
        assert build_parser("features").parse_args(["features", "c", "--dataset", "d", "--out", "o", "--limit",
                                                    "5"]).sample == 5
    with pytest.warns(FutureWarning, match="--batch is deprecated; use --batch-size"):
        assert build_parser("bench").parse_args(["bench", "--batch", "8"]).batch == 8
    help_text = build_parser("fewshot")._subparsers._group_actions[0].choices["fewshot"].format_help()
    assert "--train-limit" not in help_text and "--sample-train" in help_text  # hidden


def _image_folder(root, n=6):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                rgb = (np.array(colour) * rng.uniform(0.5, 1.0)).astype(np.uint8)
                arr = rgb[None, None].repeat(32, 0).repeat(32, 1)
                Image.fromarray(arr).save(d / f"{i}.png")


def test_default_run_dir_of_an_image_folder_resumes(tmp_path, monkeypatch):
    """The default --out is computed in one place: the run written to runs/imagefolder__..._folder resumes."""
    _image_folder(tmp_path / "folder")
    monkeypatch.chdir(tmp_path)
    spec = f"imagefolder:{tmp_path / 'folder'}"
    args = ["train", "--model", "ViT-testing/4", "--dataset", spec, "--batch-size", "6", "--image-size", "16",
            "--precision", "fp32", "--no-progress"]
    assert cli.main([*args, "--steps", "2"]) == 0
    run = tmp_path / "runs" / spec.replace(":", "_").replace("/", "_")
    assert load_train_state(run / "checkpoint")["step"] == 2
    assert cli.main([*args, "--steps", "3", "--resume"]) == 0
    assert load_train_state(run / "checkpoint")["step"] == 3


def test_an_existing_run_is_never_replaced_unasked(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--steps", "2", "--out", str(out)]) == 0
    before = (out / "checkpoint" / "model.safetensors").read_bytes(), (out / "metrics.jsonl").read_text()
    line = error_line(capsys, ["train", *TINY, "--steps", "1", "--out", out])
    assert str(out) in line and "--resume" in line and "--out" in line and "--overwrite" in line
    assert (out / "checkpoint" / "model.safetensors").read_bytes() == before[0]
    assert (out / "metrics.jsonl").read_text() == before[1] and (out / "best").is_dir()
    assert cli.main(["train", *TINY, "--steps", "1", "--out", str(out), "--overwrite"]) == 0
    assert load_train_state(out / "checkpoint")["step"] == 1 and len(losses(out)) == 1


def test_resume_refuses_a_changed_run_and_extends_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--steps", "2", "--out", str(out)]) == 0
    for flag, value in (("--dataset", "mnist"), ("--batch-size", "64"), ("--lr", "1000000"), ("--seed", "3")):
        line = error_line(capsys, ["train", "--out", out, "--resume", flag, value])
        assert f"{flag} " in line and "saved" in line and "--steps" in line  # names what differs, what may
    assert load_train_state(out / "checkpoint")["step"] == 2
    # --steps may change (extend the run), and the new length is used
    assert cli.main(["train", "--out", str(out), "--resume", "--steps", "4", "--eval-every", "1"]) == 0
    assert load_train_state(out / "checkpoint")["step"] == 4 and len(losses(out)) == 4
    evals = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines() if "top1" in x]
    assert evals == [2, 3, 4]  # --eval-every 1 applied from the resumed step on
    line = error_line(capsys, ["train", "--out", out, "--resume", "--steps", "3"])
    assert "step 4" in line and "--steps" in line


def test_non_finite_weights_are_never_saved(tmp_path):
    """lr 1e6: the update blows the weights up; no checkpoint with NaN/inf weights may be written (the gradient
    norm, not only the loss, is checked, and the weights before each save)."""
    out = tmp_path / "nan"
    with pytest.raises(UserError, match=r"(loss|gradient norm|weights) .*(nan|inf|not finite).* step \d+") as e:
        train(TrainSettings(model="ViT-Mini/7", batch_size=16, limit_train=64, limit_test=16, precision="bf16",
                            progress=False, warmup_steps=0, steps=8, lr=1e6, save_every=1, eval_every=100,
                            out=str(out)))
    state = load_train_state(out / "checkpoint")
    if state is not None:
        assert f"(step {state['step']})" in str(e.value)
        model = vitkit.load(out / "checkpoint").model
        assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    else:
        assert "no checkpoint was written" in str(e.value)


def test_disk_full_while_saving_is_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real_save, calls = torch.save, []

    def full_disk(obj, f, *a, **k):  # what torch.save raises when the disk fills up mid-write
        calls.append(f)
        if len(calls) >= 3:
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4352 vs 4240")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk)
    line = error_line(capsys, ["train", *TINY, "--steps", "4", "--save-every", "1", "--eval-every", "100",
                               "--out", out])
    assert "cannot write the checkpoint" in line and str(out / "checkpoint") in line and "disk full" in line
    assert "(step 2)" in line  # saves 1 and 2 went through (checkpoint, checkpoint), the third failed
    assert load_train_state(out / "checkpoint")["step"] == 2
    vitkit.load(out / "checkpoint").model


def test_metrics_file_that_is_a_directory_is_one_line_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "metrics.jsonl").mkdir(parents=True)
    line = error_line(capsys, ["train", *TINY, "--steps", "1", "--out", out])
    assert str(out / "metrics.jsonl") in line and "not a file" in line
    assert not (out / "checkpoint").exists()


def test_training_learns_a_small_batch_by_heart(tmp_path):
    """Overfit one batch of 32 images: the loop, the loss and the optimizer can fit data (~100 % train top-1)."""
    from vitkit.data.datasets import load_dataset
    from vitkit.eval.evaluate import evaluate

    r = train(TrainSettings(model="ViT-testing/4", batch_size=32, limit_train=32, limit_test=32, precision="fp32",
                            progress=False, steps=150, lr=1e-2, warmup_steps=5, weight_decay=0.0, label_smoothing=0.0,
                            flip=False, eval_every=1000, out=str(tmp_path / "overfit")))
    seen = evaluate(vitkit.load(r["checkpoint"]).model, load_dataset("embedded", "train"), batch_size=32,
                    indices=torch.arange(32))
    curve = losses(tmp_path / "overfit")
    assert seen["top1"] >= 0.97, seen["top1"]
    assert curve[-1] < 0.1 * curve[0] and seen["loss"] < 0.2


@pytest.mark.parametrize("argv", [
    ["features", "CKPT", "--dataset", "embedded", "--out", "BLOCK/f.npy"],
    ["fewshot", "CKPT", "--dataset", "embedded", "--out", "BLOCK/fewshot.json"],
    ["export", "CKPT", "--format", "torchscript", "BLOCK/model.pt"],
    ["bench", "--model", "ViT-testing/4", "--out", "BLOCK/bench.json", "--quiet"],
    ["analyze", "CKPT", "--dataset", "embedded", "--out", "BLOCK/figures"],
])
def test_unwritable_output_is_one_line_before_the_work(tmp_path, capsys, argv):
    """An output under a regular file (unwritable even for root) is refused first: the checkpoint is never read
    (it does not even exist here), no computation runs."""
    block = tmp_path / "a_file"
    block.write_text("x")
    argv = [a.replace("BLOCK", str(block)).replace("CKPT", str(tmp_path / "missing")) for a in argv]
    line = error_line(capsys, argv)
    assert str(block) in line and "missing" not in line


def test_a_run_saved_before_these_flags_existed_resumes(tmp_path):
    """train_state.pt written by earlier versions has no --overwrite in its settings (and may have keys that are
    gone): --resume still reads it, and extends the run."""
    out = tmp_path / "old"
    assert cli.main(["train", *TINY, "--steps", "2", "--out", str(out)]) == 0
    f = out / "checkpoint" / "train_state.pt"
    state = torch.load(f, weights_only=True)
    del state["settings"]["overwrite"]
    state["settings"]["a_setting_since_removed"] = 1
    torch.save(state, f)
    assert cli.main(["train", "--out", str(out), "--resume", "--steps", "3"]) == 0
    assert load_train_state(out / "checkpoint")["step"] == 3 and len(losses(out)) == 3


def test_init_checkpoint_is_read_once(tmp_path, monkeypatch):
    """Fine-tuning on an image folder reads the --init checkpoint once (the folder's decode size comes from it)."""
    import vitkit.checkpoint.io as io

    assert cli.main(["train", *TINY, "--steps", "1", "--out", str(tmp_path / "pre")]) == 0
    _image_folder(tmp_path / "folder")
    real_load, calls = io.load, []
    monkeypatch.setattr(io, "load", lambda *a, **k: calls.append(a[0]) or real_load(*a, **k))
    r = train(TrainSettings(model="ViT-testing/4", init=str(tmp_path / "pre" / "checkpoint"), batch_size=6, steps=1,
                            dataset=f"imagefolder:{tmp_path / 'folder'}", precision="fp32", progress=False,
                            out=str(tmp_path / "ft")))
    assert calls == [str(tmp_path / "pre" / "checkpoint")] and r["steps"] == 1
    assert vitkit.load(r["checkpoint"]).model.cfg.image_size == 28  # decoded at the checkpoint's size
