"""Training loop, optimiser, schedule, evaluation and fine-tuning, on ViT-testing/4 and small subsets (seconds)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import vitkit
from runlogs import tensorboard_scalars
from test_data import needs_fmnist
from vitkit.checkpoint.io import load_train_state
from vitkit.errors import UserError
from vitkit.train.loop import TrainSettings, to_channels, train
from vitkit.train.optim import build_optimizer, lr_factor, no_decay_names, param_groups

TINY = dict(model="ViT-testing/4", batch_size=32, limit_train=128, limit_test=64, precision="fp32",
            progress=False, warmup_steps=1)


def _steps(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    result = train(TrainSettings(**TINY, steps=4, eval_every=2, out=str(out)))
    return out, result


def test_param_groups_exclude_biases_norms_and_embeddings():
    model = vitkit.create_model("ViT-testing/4", num_classes=10, image_size=28, in_chans=1)
    decay, no_decay = param_groups(model, 0.1)
    names = set(no_decay_names(model))
    assert {"cls_token", "pos_embed", "norm.weight", "norm.bias", "head.bias", "blocks.0.attn.qkv.bias",
            "blocks.0.norm1.weight"} <= names
    assert "head.weight" not in names and "blocks.0.mlp.fc1.weight" not in names
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert all(p.ndim >= 2 for p in decay["params"])
    opt = build_optimizer(model, "adamw", 1e-3, 0.1)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[1]["weight_decay"] == 0.0
    assert isinstance(build_optimizer(model, "sgd", 1e-2, 0.0), torch.optim.SGD)


def test_lr_schedule_warmup_then_decay_to_zero():
    assert lr_factor(0, 10, 100, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, "cosine") == pytest.approx(1.0)
    assert lr_factor(10, 10, 100, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 10, 100, "cosine") == pytest.approx(0.5)
    assert lr_factor(55, 10, 100, "linear") == pytest.approx(0.5)
    assert lr_factor(100, 10, 100, "linear") == pytest.approx(0.0)
    assert lr_factor(99, 10, 100, "cosine") < 0.001
    with pytest.raises(ValueError):
        lr_factor(0, 0, 10, "exp")


def test_recipes_match_the_paper():
    from vitkit.train.recipes import RECIPES

    pre, ft = RECIPES["pretrain"], RECIPES["finetune"]
    assert (pre.optimizer, pre.betas, pre.weight_decay, pre.schedule) == ("adamw", (0.9, 0.999), 0.1, "linear")
    assert (ft.optimizer, ft.momentum, ft.weight_decay, ft.clip_grad, ft.schedule) == ("sgd", 0.9, 0.0, 1.0, "cosine")


def test_smoke_train_writes_checkpoints_and_metrics(tiny_run):
    out, result = tiny_run
    assert result["steps"] == 4 and 0.0 <= result["top1"] <= 1.0 and result["top5"] >= result["top1"]
    assert result["checkpoint"] == str(out / "checkpoint") and result["n"] == 64
    for d in ("checkpoint", "best"):
        assert {"model.safetensors", "config.json", "train_state.pt"} <= {p.name for p in (out / d).iterdir()}
    meta = json.loads((out / "checkpoint" / "config.json").read_text())
    assert meta["preprocess"]["mean"] == [0.5] and meta["preprocess"]["channels"] == 1
    assert meta["class_names"][0] == "T-shirt/top" and len(meta["class_names"]) == 10
    rows = _steps(out)
    steps = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "top1" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and [r["step"] for r in evals] == [2, 4]
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 and r["img_per_s"] > 0 for r in steps)
    assert steps[0]["lr"] < steps[1]["lr"] or steps[1]["lr"] > steps[3]["lr"]  # warmup then decay
    state = torch.load(out / "checkpoint" / "train_state.pt", weights_only=True)
    assert state["step"] == 4 and {"torch", "numpy", "python", "aug"} <= set(state["rng"][0])
    assert evals[-1]["top1"] == pytest.approx(result["top1"])


def test_tensorboard_logs_the_same_figures_as_metrics_jsonl(tiny_run):
    pytest.importorskip("tensorboard")
    out, _ = tiny_run
    rows = _steps(out)
    for tag, key in (("train/loss", "loss"), ("train/lr", "lr"), ("eval/top1", "top1")):
        want = [(r["step"], r[key]) for r in rows if key in r]
        got = tensorboard_scalars(out, tag)
        assert [s for s, _ in got] == [s for s, _ in want], tag
        np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-6)  # float32 in the event file


def test_evaluate_reloaded_checkpoint_agrees(tiny_run):
    from vitkit.data.datasets import load_dataset
    from vitkit.eval.evaluate import evaluate

    out, result = tiny_run
    model = vitkit.load(out / "checkpoint")
    r = evaluate(model, load_dataset("embedded", "test"), batch_size=50, indices=torch.arange(64))
    assert r["n"] == 64 and r["top1"] == pytest.approx(result["top1"]) and r["loss"] == pytest.approx(result["loss"])
    assert set(r["per_class"]) == set(model.class_names)
    labels = load_dataset("embedded", "test").labels[:64]
    for i, name in enumerate(model.class_names):  # per-class accuracies average back to top-1
        assert (r["per_class"][name] is None) == (int((labels == i).sum()) == 0)
    total = sum(r["per_class"][n] * int((labels == i).sum()) for i, n in enumerate(model.class_names)
                if r["per_class"][n] is not None)
    assert total / 64 == pytest.approx(r["top1"])


def test_flip_tta_averages_the_probabilities_of_image_and_mirror(tiny_run):
    import torch.nn.functional as F

    from vitkit.data.datasets import load_dataset
    from vitkit.eval.evaluate import evaluate

    loaded = vitkit.load(tiny_run[0] / "checkpoint")
    model = loaded.model.eval()
    ds, idx = load_dataset("embedded", "test"), torch.arange(64)
    r = evaluate(loaded, ds, batch_size=24, indices=idx, tta="flip")
    x = loaded.preprocess.normalize(torch.as_tensor(ds.images[:64]))
    y = torch.as_tensor(ds.labels[:64]).long()
    with torch.no_grad():
        p = (model(x).softmax(-1) + model(x.flip(-1)).softmax(-1)) / 2
    assert r["top1"] == pytest.approx(float((p.argmax(-1) == y).float().mean()))
    assert r["loss"] == pytest.approx(float(F.nll_loss(p.log(), y)), rel=1e-5)
    assert r["loss"] != pytest.approx(evaluate(loaded, ds, batch_size=24, indices=idx)["loss"])  # mirror was used
    with pytest.raises(UserError, match="test-time augmentation 'rot'"):
        evaluate(model, ds, indices=idx, tta="rot")


def test_gelu_flag_sets_a_fresh_model_and_is_refused_with_init(tiny_run, tmp_path):
    import torch.nn.functional as F

    r = train(TrainSettings(**TINY, steps=1, gelu="erf", out=str(tmp_path / "erf")))
    model = vitkit.load(r["checkpoint"]).model
    assert model.cfg.gelu_approximate == "none"  # saved in the checkpoint and restored: exact-erf GELU
    mlp, x = model.blocks[0].mlp.eval(), torch.randn(2, 5, model.cfg.hidden_size)
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), mlp.fc2(F.gelu(mlp.fc1(x))), atol=0, rtol=0)
        assert not torch.equal(mlp(x), mlp.fc2(F.gelu(mlp.fc1(x), approximate="tanh")))
    assert vitkit.load(tiny_run[0] / "checkpoint").model.cfg.gelu_approximate == "tanh"  # the variants' default
    with pytest.raises(UserError, match="--gelu"):
        train(TrainSettings(**TINY, steps=1, gelu="erf", init=str(tiny_run[0] / "checkpoint"),
                            out=str(tmp_path / "ft")))
    with pytest.raises(UserError, match="unknown --gelu 'relu'"):
        train(TrainSettings(**TINY, steps=1, gelu="relu", out=str(tmp_path / "bad")))


def test_hybrid_trains_from_scratch(tmp_path):
    """The paper's hybrid (section 3.1; ResNet stem, here root block only) is a --model like any other."""
    r = train(TrainSettings(**{**TINY, "model": "R+ViT-Mini/8"}, steps=2, out=str(tmp_path / "h")))
    loaded = vitkit.load(r["checkpoint"])  # 28 px data, 8 px per token: the variant's own 32 px
    model = loaded.model
    assert model.cfg.resnet == {"layers": [], "width": 1} and model.cfg.image_size == 32 and r["steps"] == 2
    assert model.cfg.patch_size == 2 and model.cfg.grid_size == 4 and model.cfg.name == "R+ViT-Mini/8"
    assert loaded.preprocess.image_size == 32 and model.cfg.in_chans == 1  # embedded Fashion-MNIST, resized
    losses = [row["loss"] for row in _steps(tmp_path / "h") if "loss" in row]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    with pytest.raises(UserError, match="not divisible by the patch size 32"):
        train(TrainSettings(**{**TINY, "model": "R+ViT-Ti/16"}, steps=1, image_size=48, out=str(tmp_path / "b")))
    with pytest.raises(UserError, match="unknown hybrid variant 'R9\\+ViT-Ti/16'"):
        train(TrainSettings(**{**TINY, "model": "R9+ViT-Ti/16"}, steps=1, out=str(tmp_path / "c")))


def test_gradient_accumulation_matches_full_batch(tmp_path):
    base = dict(TINY, steps=3, crop="none", flip=False, eval_every=100)
    train(TrainSettings(**base, out=str(tmp_path / "a")))
    train(TrainSettings(**base, accum_steps=4, out=str(tmp_path / "b")))
    la = [r["loss"] for r in _steps(tmp_path / "a") if "loss" in r]
    lb = [r["loss"] for r in _steps(tmp_path / "b") if "loss" in r]
    assert len(la) == 3 and np.allclose(la, lb, rtol=0, atol=1e-5)
    assert la[0] != la[2]  # it did learn something, so the comparison means something


def test_finetune_init_new_classes_size_and_channels(tiny_run, tmp_path):
    """1-channel 28 px, 10-class checkpoint -> 3-class RGB image folder at 32 px: new zero head, interpolated
    position embeddings, data converted to the model's single channel."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
            d = tmp_path / "folder" / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(6):
                arr = (np.array(colour) * rng.uniform(0.5, 1.0)).astype(np.uint8)[None, None].repeat(40, 0).repeat(40, 1)
                Image.fromarray(arr).save(d / f"{i}.png")
    out, _ = tiny_run
    r = train(TrainSettings(**dict(TINY, limit_train=None, limit_test=None, batch_size=6), init=str(out / "checkpoint"),
                            dataset=f"imagefolder:{tmp_path / 'folder'}", image_size=32, steps=2,
                            optimizer="sgd", lr=0.01, out=str(tmp_path / "ft")))
    loaded = vitkit.load(tmp_path / "ft" / "checkpoint")
    model = loaded.model
    assert model.cfg.num_classes == 3 and model.cfg.image_size == 32 and model.cfg.in_chans == 1
    assert model.pos_embed.shape == (1, 1 + 8 * 8, 16)
    assert loaded.class_names == ["class0", "class1", "class2"] and loaded.preprocess.image_size == 32
    assert r["n"] == 18 and 0 <= r["top1"] <= 1
    base = vitkit.load(out / "checkpoint").model
    assert model.blocks[0].attn.qkv.weight.shape == base.blocks[0].attn.qkv.weight.shape
    # fine-tuned from the checkpoint, not from scratch: 2 small SGD steps stay close to the pre-trained weights
    assert (model.blocks[0].attn.qkv.weight - base.blocks[0].attn.qkv.weight).abs().max() < 0.05


def test_to_channels():
    gray = torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8)
    assert torch.equal(to_channels(gray, 3), gray.expand(-1, 3, -1, -1))
    rgb = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    rgb[:, 0] = 255
    assert int(to_channels(rgb, 1).max()) == round(0.299 * 255)


def test_non_finite_loss_stops_naming_the_step(tmp_path):
    with pytest.raises(UserError, match=r"loss is (nan|inf) at step \d+"):
        train(TrainSettings(**dict(TINY, warmup_steps=0), steps=8, lr=1e30, out=str(tmp_path)))


@needs_fmnist
def test_fmnist_benchmark_script_runs_end_to_end(tmp_path, capsys):
    """benchmarks/fmnist_from_scratch.py, the documented time-to-accuracy command, on a few steps of the real data."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fmnist_from_scratch.py"
    spec = importlib.util.spec_from_file_location("fmnist_from_scratch", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "result.json"
    assert bench.main(["--epochs", "0.01", "--out", str(tmp_path / "run"), "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["model"] == "R+ViT-Mini/8" and r["settings"]["image_size"] is None and r["n"] == 10000
    assert r["steps"] == 3  # 0.01 epoch x 234.4 steps per epoch, rounded up
    assert 0.0 <= r["top1"] < 0.9 and 0.0 <= r["top1_tta_flip"] <= 1.0
    assert vitkit.load(r["checkpoint"]).model.cfg.image_size == 32  # the hybrid's own size for 28 px data
    text = capsys.readouterr().out
    assert "MISS: >= 90% within 10 minutes" in text and "MISS: >= 90% within 5 minutes" in text
    assert f"test top-1       {100 * r['top1']:.2f}%" in text


def test_drop_path_flag_reaches_a_fresh_and_a_fine_tuned_model(tiny_run, tmp_path):
    r = train(TrainSettings(**TINY, steps=1, drop_path=0.2, out=str(tmp_path / "dp")))
    model = vitkit.load(r["checkpoint"]).model
    assert model.cfg.drop_path == 0.2 and model.blocks[-1].drop_path_rate == pytest.approx(0.2)
    r = train(TrainSettings(**TINY, steps=1, drop_path=0.1, init=str(tiny_run[0] / "checkpoint"),
                            out=str(tmp_path / "ft")))
    assert vitkit.load(r["checkpoint"]).model.cfg.drop_path == 0.1
    assert vitkit.load(tiny_run[0] / "checkpoint").model.cfg.drop_path == 0.0
    # the pre-training run's rate is not inherited: fine-tuning the drop-path run without the flag has none
    r = train(TrainSettings(**TINY, steps=1, init=str(tmp_path / "dp" / "checkpoint"), out=str(tmp_path / "ft0")))
    ft = vitkit.load(r["checkpoint"]).model
    assert ft.cfg.drop_path == 0.0 and all(b.drop_path_rate == 0.0 for b in ft.blocks)
    with pytest.raises(UserError, match="--drop-path"):
        train(TrainSettings(**{**TINY, "model": "BiT-testing"}, steps=1, drop_path=0.1, out=str(tmp_path / "bit")))


def test_resume_may_change_precision_and_says_it_is_not_exact(tmp_path, capsys):
    """A bf16 run continued on a machine without bf16 (where bf16 is emulated, 24x slower) goes on in fp32 with a
    note, like a change of --device; the settings that define the run still may not change."""
    out = str(tmp_path / "r")
    train(TrainSettings(**TINY, steps=2, out=out))
    capsys.readouterr()
    r = train(TrainSettings(**{**TINY, "precision": "bf16"}, steps=3, out=out, resume=True))
    assert "continues a fp32 run in bf16; from step 2 on" in capsys.readouterr().err
    state = load_train_state(Path(r["checkpoint"]))
    assert state["step"] == 3 and state["settings"]["precision"] == "bf16"
    # which steps ran how is kept (the model card says so: scripts/ship_weights.py)
    assert state["segments"] == [{"from_step": 0, "precision": "fp32", "device": "cpu"},
                                 {"from_step": 2, "precision": "bf16", "device": "cpu"}]
    with pytest.raises(UserError, match="--seed"):
        train(TrainSettings(**TINY, steps=4, seed=1, out=out, resume=True))
