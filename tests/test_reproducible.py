"""A run can be had again anywhere: the plan's budget fit is stable under timing noise and proportional to the
step cost; the exact command a run records gives the same settings on a machine of another speed without timing
anything; `--plan` shows it without training; `vitkit.train(...)` resolves settings exactly as the command does."""

from __future__ import annotations

import json
import math
import shlex

import pytest

from vitkit import cli
from vitkit.train import plan as P
from vitkit.train.cli import resolve, settings_from_args
from vitkit.train.plan import MIN_STEPS, DataFacts, fit_budget

from imagefolders import write_folder

FACTS = DataFacts(n_train=10200, num_classes=102, grey=False, median_side=375)


def _plan(cost, budget=360.0, given=frozenset()):
    changes, _ = P.plan(set(given), recipe_batch=128, recipe_epochs=5, facts=FACTS, seconds_per_image=cost,
                        budget_s=budget)
    return changes


def test_ten_noisy_measurements_plan_the_same_run():
    """Between two grid lines (each 2^(1/8), 9 %, apart in estimate / budget) every measurement plans the same:
    ten costs drawn within +-3 % of a band's centre give one plan, for bands from 1.2x to 8x over the budget."""
    import random

    rng = random.Random(0)
    allowed = 360 * (1 + P.BUDGET_TOLERANCE)
    for k in range(2, 25):
        centre = allowed / (MIN_STEPS * 128) * 2 ** ((k - 0.5) / P.BUDGET_GRID)  # mid-band cost per image
        plans = {json.dumps(_plan(centre * (1 + rng.uniform(-0.03, 0.03))), sort_keys=True) for _ in range(10)}
        assert len(plans) == 1, (k, plans)


def test_a_ten_percent_slower_step_plans_about_ten_percent_fewer_steps():
    """Not half: the batch stays, the steps shrink by one or two grid steps (8-16 %), at every cost tried."""
    for cost in (3e-3, 3.7e-3, 4.4e-3, 5e-3, 6.1e-3):
        fast, slow = _plan(cost), _plan(cost * 1.10)
        assert fast.get("batch_size", 128) == slow.get("batch_size", 128) == 128
        ratio = slow["steps"] / fast["steps"]
        assert 0.82 <= ratio <= 0.96, (cost, fast["steps"], slow["steps"])
        for c, p in ((cost, fast), (cost * 1.1, slow)):  # each fits the budget with its tolerance
            assert p["steps"] * 128 * c <= 360 * (1 + P.BUDGET_TOLERANCE)


def test_fit_budget_is_monotone_and_never_halves_on_noise():
    """A slower machine never gets a longer run, and 3 % more cost never cuts the planned images by more than
    one grid step (or the batch at the step floor in proportion)."""
    last = None
    cost = 1e-3
    while cost < 0.05:
        steps, batch = fit_budget(1200, 128, cost, 360, 300)
        if last is not None:
            assert steps * batch <= last[0] * last[1]
            assert steps * batch >= last[0] * last[1] * 2 ** (-1 / P.BUDGET_GRID) * 0.97 - 8 * steps
        last = (steps, batch)
        cost *= 1.03


def _folder(tmp_path):
    return write_folder(tmp_path / "photos", n_train=20, n_test=4, classes=3, size=40)


def _settings(argv, monkeypatch, seconds_per_image):
    """`vitkit train ARGV` resolved on a machine whose training step costs `seconds_per_image` (None: timing it
    is an error: the settings must not depend on the machine)."""
    def timed(s, num_classes, batch):
        if seconds_per_image is None:
            raise AssertionError("the plan timed a step although every planned value was given")
        return seconds_per_image

    monkeypatch.setattr(P, "seconds_per_image", timed)
    args = cli.build_parser("train").parse_args(["train", *argv])
    return settings_from_args(args)


def test_the_recorded_command_gives_the_same_settings_on_a_slower_machine(tmp_path, monkeypatch):
    folder = _folder(tmp_path)
    # a slow machine: the plan fits the run to the budget (the steps cut)
    s = _settings(["--dataset", folder, "--time-budget", "1"], monkeypatch, seconds_per_image=0.02)
    assert s.steps < MIN_STEPS
    command = s.command()
    words = shlex.split(command)
    assert words[:2] == ["vitkit", "train"] and "--steps" in words and "--batch-size" in words
    # the same command elsewhere: 50x faster, or with timing forbidden, gives exactly those settings
    for cost in (0.0004, None):
        again = _settings(words[2:], monkeypatch, seconds_per_image=cost)
        assert again == s
    # and the unfitted run differs: the command is what carries the fit
    fast = _settings(["--dataset", folder, "--time-budget", "1"], monkeypatch, seconds_per_image=0.0004)
    assert fast.steps == MIN_STEPS and fast != s


def test_plan_prints_the_command_and_writes_nothing(tmp_path, monkeypatch, capsys):
    folder = _folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(P, "seconds_per_image", lambda s, n, b: 0.001)
    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", folder, "--plan", "--json", "--out", str(out)]) == 0
    plan = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert not out.exists() and not (tmp_path / "runs").exists()
    assert plan["command"].startswith("vitkit train --recipe default") and plan["settings"]["steps"] == MIN_STEPS
    assert plan["settings"]["model"] == P.SCRATCH_MODEL and math.isclose(plan["settings"]["lr"], P.SCRATCH_LR)
    # the text form is a config file that gives the same settings
    assert cli.main(["train", "--dataset", folder, "--plan", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    cfg = tmp_path / "plan.toml"
    cfg.write_text(text)
    from_file = _settings(["--config", str(cfg)], monkeypatch, seconds_per_image=None)
    assert from_file.to_dict() == {**plan["settings"], "precision": from_file.precision}


def test_a_run_records_its_command_and_the_api_resolves_as_the_cli(tmp_path, monkeypatch):
    import vitkit
    from vitkit.train import loop

    folder = _folder(tmp_path)
    monkeypatch.setattr(P, "seconds_per_image", lambda s, n, b: 0.001)
    seen = []
    monkeypatch.setattr(loop, "train", lambda s, on_step=None: seen.append(s) or {"command": s.command()})
    vitkit.train(dataset=folder, seed=1, quiet=True)
    cli_s = _settings(["--dataset", folder, "--seed", "1"], monkeypatch, seconds_per_image=0.001)
    assert seen[0] == cli_s and seen[0].model == P.SCRATCH_MODEL  # the plan applied from Python too
    with pytest.raises(vitkit.errors.UserError, match="lr"):
        vitkit.train(dataset=folder, lr=-1.0, quiet=True)
    monkeypatch.undo()
    # a real (2-step) run writes run.json with the command, and the result carries it
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "r"
    result = vitkit.train(dataset="embedded", steps=2, batch_size=16, sample_train=64, limit_test=32,
                          progress=False, out=str(out), quiet=True)
    record = json.loads((out / "run.json").read_text())
    assert record["command"] == result["command"]
    assert resolve({k: v for k, v in record["settings"].items() if k not in ("name",)}, None) \
        .replace(precision=record["settings"]["precision"]).steps == 2
