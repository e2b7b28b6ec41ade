"""scripts/ship_weights.py: a finished run becomes a shipped model (weights + config with its top-1 + model card),
including a run that continued another one (a second cosine cycle, --first)."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import torch

from vitkit import cli
from vitkit.checkpoint.io import load

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--batch-size", "32", "--limit-train", "128", "--limit-test", "64", "--precision", "fp32", "--no-progress",
        "--warmup-steps", "1", "--eval-every", "2"]


def _script(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("ship_weights", ROOT / "scripts" / "ship_weights.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "WEIGHTS", tmp_path / "weights")
    return mod


def _evals(run: Path) -> list:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "top1" in r]


def test_a_two_cycle_run_ships_with_both_cycles_on_its_card(tmp_path, monkeypatch, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert cli.main(["train", "--model", "ViT-testing/4", *TINY, "--steps", "4", "--out", str(first)]) == 0
    assert cli.main(["train", "--init", str(first / "checkpoint"), *TINY, "--steps", "2", "--lr", "5e-4",
                     "--seed", "1", "--out", str(second)]) == 0
    mod = _script(tmp_path, monkeypatch)
    monkeypatch.setattr(sys, "argv", ["ship_weights.py", str(second), "Tiny-two-cycles", "--first", str(first),
                                      "--command", "second.sh", "--first-command", "first.sh", "--dataset", "x"])
    assert mod.main() == 0
    dest = tmp_path / "weights" / "Tiny-two-cycles"
    shipped, trained = load(dest), load(second / "checkpoint")
    for k, v in trained.model.state_dict().items():
        assert torch.equal(shipped.model.state_dict()[k], v), k
    last, first_last = _evals(second)[-1], _evals(first)[-1]
    assert json.loads((dest / "config.json").read_text())["top1"] == round(100 * last["top1"], 2)
    card = (dest / "MODEL_CARD.md").read_text()
    assert f"validation top-1 {100 * last['top1']:.2f} %" in card
    assert f"({100 * first_last['top1']:.2f} % at its end)" in card
    assert "first cycle " in card and "; second cycle " in card
    assert "    first.sh\n    second.sh\n" in card and f"--first {first} --overwrite" in card
    assert "lr=0.0005" in card and "seed=1" in card and "seed=0" in card  # both cycles' recipes, seed 0 kept
    assert "model=ViT-Mini/7" not in card  # the second cycle's architecture is the first's, not the recipe default
    # an existing name is kept unless --overwrite
    assert mod.main() == 2 and "exists; --overwrite replaces it" in capsys.readouterr().err


def test_a_second_cycle_ships_from_the_first_cycles_shipped_card_when_its_run_is_gone(tmp_path, monkeypatch, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert cli.main(["train", "--model", "ViT-testing/4", *TINY, "--steps", "4", "--out", str(first)]) == 0
    mod = _script(tmp_path, monkeypatch)
    monkeypatch.setattr(sys, "argv", ["ship_weights.py", str(first), "Tiny-one", "--command", "first.sh"])
    assert mod.main() == 0
    one = tmp_path / "weights" / "Tiny-one"
    first_card = (one / "MODEL_CARD.md").read_text()
    f_evals = _evals(first)
    size = json.loads((one / "config.json").read_text())["model"]["image_size"]
    assert cli.main(["train", "--init", str(one), *TINY, "--steps", "2", "--lr", "5e-4", "--seed", "1",
                     "--image-size", str(size + 8), "--out", str(second)]) == 0  # a higher-resolution second stage
    shutil.rmtree(first)  # the first cycle's run is lost; its card remains
    # the second cycle replaces the first under the same name, reading the first's card before writing
    monkeypatch.setattr(sys, "argv", ["ship_weights.py", str(second), "Tiny-one", "--first", str(one),
                                      "--first-run", "runs/first", "--command", "second.sh",
                                      "--first-command", "first.sh", "--overwrite"])
    assert mod.main() == 0
    card = (one / "MODEL_CARD.md").read_text()
    assert f"({100 * f_evals[-1]['top1']:.2f} % at its end)" in card
    assert "first cycle " + ", ".join(f"{r['epoch']:g}: {100 * r['top1']:.1f} %" for r in f_evals) in card
    recipe_first = first_card.split("## Recipe\n")[1].splitlines()[0].removesuffix(".")
    assert recipe_first in card and "lr=0.0005" in card
    assert "    first.sh\n    second.sh\n" in card and "--first runs/first --overwrite" in card
    assert f"Pre-training at {size} px, then fine-tuning at {size + 8} px" in card
    f_steps, steps = f_evals[-1]["step"], _evals(second)[-1]["step"]
    assert f"after {f_steps:,} + {steps:,} optimizer steps" in card
    h1 = float(first_card.split("Training time: ")[1].split(" h")[0])
    h2 = float(card.split("Training time: ")[1].split(" h")[0])
    assert h2 >= h1  # both cycles' time
    # a card that is not a one-cycle card of the script is refused, not guessed from
    monkeypatch.setattr(sys, "argv", ["ship_weights.py", str(second), "Tiny-two", "--first", str(one)])
    capsys.readouterr()
    assert mod.main() == 2  # one line, exit 2, nothing written
    err = capsys.readouterr().err
    assert "is not a one-cycle card" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "weights" / "Tiny-two").exists()


def test_a_run_resumed_in_another_precision_says_which_steps_ran_how(tmp_path, monkeypatch):
    run = tmp_path / "run"
    common = ["train", "--model", "ViT-testing/4", *TINY, "--out", str(run)]
    assert cli.main([*common, "--steps", "2"]) == 0
    assert cli.main([*common, "--steps", "4", "--resume", "--precision", "bf16"]) == 0
    mod = _script(tmp_path, monkeypatch)
    monkeypatch.setattr(sys, "argv", ["ship_weights.py", str(run), "Tiny-mixed", "--command", "x.sh"])
    assert mod.main() == 0
    assert "fp32, then bf16 autocast from step 2)" in (tmp_path / "weights" / "Tiny-mixed" / "MODEL_CARD.md").read_text()
    # one precision throughout (resumed or not), or a run saved before segments were recorded: one word
    assert mod.precision_text({"precision": "bf16"}, None) == "bf16 autocast"
    assert mod.precision_text({"precision": "fp32"}, [{"from_step": 0, "precision": "fp32"},
                                                      {"from_step": 5, "precision": "fp32"}]) == "fp32"
    assert mod.precision_text({}, [{"from_step": 0, "precision": "bf16"}, {"from_step": 6000, "precision": "fp32"},
                                   {"from_step": 7000, "precision": "fp32"}]) == \
        "bf16 autocast, then fp32 from step 6,000"
