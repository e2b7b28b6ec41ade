"""Layer-wise learning-rate decay (`vitkit train --layer-decay D`): each parameter's learning rate against the hand
formula, one real optimizer step against p - lr_layer * grad, a run that resumes exactly, and the refusals."""

from __future__ import annotations

import json

import pytest
import torch

import vitkit
from vitkit.errors import UserError
from vitkit.train.loop import TrainSettings, train
from vitkit.train.optim import build_optimizer, build_scheduler, layer_id, param_groups

TINY = dict(model="ViT-testing/4", batch_size=32, limit_train=128, limit_test=64, precision="fp32",
            progress=False, warmup_steps=1)


def _expected_scale(name: str, depth: int, d: float) -> float:
    """The hand formula: block i (0-based here) at d^(L - i), the embedding at d^(L + 1), the rest at 1."""
    if name.startswith("blocks."):
        return d ** (depth - int(name.split(".")[1]))
    if name.split(".")[0] in ("stem", "patch_embed", "pos_embed", "cls_token"):
        return d ** (depth + 1)
    assert name.split(".")[0] in ("norm", "head"), name
    return 1.0


@pytest.mark.parametrize("variant", ["ViT-testing/4", "R+ViT-testing/8"])
def test_every_parameter_gets_its_layers_learning_rate_and_weight_decay(variant):
    model = vitkit.create_model(variant, num_classes=5, image_size=32)
    depth = model.cfg.depth
    opt = build_optimizer(model, "adamw", 0.1, 0.05, layer_decay=0.5, depth=depth)
    where = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(where) == len(list(model.parameters()))
    names = [n for n, _ in model.named_parameters()]
    assert any(n.startswith("stem.") for n in names) == variant.startswith("R+")
    for name, p in model.named_parameters():
        g = where[id(p)]
        assert g["lr"] == pytest.approx(0.1 * _expected_scale(name, depth, 0.5), rel=1e-12), name
        no_decay = p.ndim <= 1 or name in ("pos_embed", "cls_token")
        assert g["weight_decay"] == (0.0 if no_decay else 0.05), name
    # off (1.0): the usual two groups at the base learning rate, in the usual order
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {g["lr"] for g in build_optimizer(model, "sgd", 0.1, 0.0).param_groups} == {0.1}


def test_layer_id_reads_block_numbers_under_any_prefix():
    assert layer_id("model.blocks.11.mlp.fc1.weight", 12) == 12
    assert layer_id("blocks.0.norm1.weight", 12) == 1
    assert layer_id("model.stem.stem.conv.weight", 12) == 0
    assert layer_id("model.norm.weight", 12) == layer_id("head.bias", 12) == 13


@pytest.mark.parametrize("fused", [False, True])
def test_one_sgd_step_moves_each_layer_by_its_own_rate(fused):
    torch.manual_seed(0)
    model = vitkit.create_model("ViT-testing/4", num_classes=3, image_size=16, in_chans=1)
    torch.nn.init.normal_(model.head.weight, std=0.1)  # a zero head would give the blocks no gradient
    depth, d, lr = model.cfg.depth, 0.7, 0.05
    opt = build_optimizer(model, "sgd", lr, 0.0, momentum=0.0, fused=fused, layer_decay=d, depth=depth)
    sched = build_scheduler(opt, warmup=2, total=10, schedule="cosine")  # step 0 of a 2-step warmup: factor 1/2
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.randn(4, 1, 16, 16)).logsumexp(-1).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    sched.step()
    for n, p in model.named_parameters():
        want = before[n] - 0.5 * lr * _expected_scale(n, depth, d) * grads[n]
        torch.testing.assert_close(p.detach(), want, rtol=1e-6, atol=1e-7, msg=n)
    assert any(grads[n].abs().sum() > 0 for n in grads if n.startswith("blocks.0."))


def test_a_run_with_layer_decay_logs_the_heads_rate_and_resumes_exactly(tmp_path):
    s = dict(TINY, steps=4, eval_every=4, layer_decay=0.5, optimizer="sgd", lr=0.05, schedule="constant",
             warmup_steps=0)
    whole, part = tmp_path / "whole", tmp_path / "part"
    train(TrainSettings(**s, out=str(whole)))
    train(TrainSettings(**dict(s, steps=2, eval_every=2), out=str(part)))
    train(TrainSettings(**s, out=str(part), resume=True))

    def steps(out):
        return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r
                and "lr" in r]

    a, b = steps(whole), steps(part)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
    assert all(r["lr"] == pytest.approx(0.05) for r in a)  # the head's rate, the base one
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    ts = torch.load(part / "checkpoint" / "train_state.pt", weights_only=True)
    assert len(ts["optimizer"]["param_groups"]) > 2


def test_refusals(tmp_path, capsys):
    with pytest.raises(UserError, match="--layer-decay 0.5: .*BiT ResNet"):
        train(TrainSettings(**dict(TINY, model="BiT-testing", steps=1), layer_decay=0.5, out=str(tmp_path / "a")))
    from vitkit.cli import main

    for bad in ("1.5", "0", "nan"):
        assert main(["train", "--layer-decay", bad, "--out", str(tmp_path / "b")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"vitkit: error: argument --layer-decay: expected a number > 0 and <= 1, got '{bad}'"]
    assert not (tmp_path / "b").exists()
