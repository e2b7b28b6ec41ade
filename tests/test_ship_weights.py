"""scripts/ship_weights.py: a finished run becomes a new shipped version, NAME.v<N> (weights + config with its top-1
and the card's record + the model card rendered from it), recorded in the manifest with its files' sizes and sha256;
including a run that continued another one (a second cosine cycle, --first). A released version is never replaced,
and the alias NAME moves only with --move-alias."""

import hashlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from vitkit import cli
from vitkit.checkpoint import hub
from vitkit.checkpoint.io import load
from vitkit.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--batch-size", "32", "--limit-train", "128", "--limit-test", "64", "--precision", "fp32", "--no-progress",
        "--warmup-steps", "1", "--eval-every", "2"]


def _script(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("ship_weights", ROOT / "scripts" / "ship_weights.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "WEIGHTS", tmp_path / "weights")
    monkeypatch.setattr(hub, "WEIGHTS_DIR", tmp_path / "weights")  # what vitkit.load finds by name
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
    dest = tmp_path / "weights" / "Tiny-two-cycles.v1"
    shipped, trained = load(dest), load(second / "checkpoint")
    for k, v in trained.model.state_dict().items():
        assert torch.equal(shipped.model.state_dict()[k], v), k
    last, first_last = _evals(second)[-1], _evals(first)[-1]
    assert json.loads((dest / "config.json").read_text())["top1"] == round(100 * last["top1"], 2)
    card = (dest / "MODEL_CARD.md").read_text()
    assert f"validation top-1 {100 * last['top1']:.2f} %" in card
    assert f"({100 * first_last['top1']:.2f} % at its end)" in card
    assert "first cycle " in card and "; second cycle " in card
    assert "    first.sh\n    second.sh\n" in card and f"Tiny-two-cycles --first {first}\n" in card
    assert "lr=0.0005" in card and "seed=1" in card and "seed=0" in card  # both cycles' recipes, seed 0 kept
    assert "model=ViT-Mini/7" not in card  # the second cycle's architecture is the first's, not the recipe default
    assert card == hub.model_card(dest)  # the card is what its config.json renders
    # recorded in the manifest with real sizes and hashes; the first version gets the alias
    man = hub.manifest(tmp_path / "weights")
    assert man["aliases"] == {"Tiny-two-cycles": "Tiny-two-cycles.v1"}
    v1 = man["shipped"]["Tiny-two-cycles.v1"]
    weights = (dest / "model.safetensors").read_bytes()
    assert v1["model.safetensors"] == {"size": len(weights), "sha256": hashlib.sha256(weights).hexdigest()}
    assert v1["MODEL_CARD.md"]["sha256"] == hashlib.sha256(card.encode()).hexdigest()
    capsys.readouterr()
    # shipping again never touches v1: it writes v2, and the alias stays on v1 without --move-alias
    assert mod.main() == 0 and "alias Tiny-two-cycles still -> Tiny-two-cycles.v1" in capsys.readouterr().out
    man = hub.manifest(tmp_path / "weights")
    assert man["shipped"]["Tiny-two-cycles.v1"] == v1 and (dest / "model.safetensors").read_bytes() == weights
    assert set(man["shipped"]) == {"Tiny-two-cycles.v1", "Tiny-two-cycles.v2"}
    assert hub.lookup("Tiny-two-cycles").name == "Tiny-two-cycles.v1"
    argv = sys.argv[:]
    monkeypatch.setattr(sys, "argv", argv + ["--move-alias"])
    assert mod.main() == 0 and "alias Tiny-two-cycles -> Tiny-two-cycles.v3" in capsys.readouterr().out
    assert hub.lookup("Tiny-two-cycles").name == "Tiny-two-cycles.v3"
    man = hub.manifest(tmp_path / "weights")
    # a versioned name is refused, released or not: one line, nothing written
    for name in ("Tiny-two-cycles.v1", "Tiny-two-cycles.v9"):
        monkeypatch.setattr(sys, "argv", [a if a != "Tiny-two-cycles" else name for a in argv])
        assert mod.main() == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "a released version never changes" in err[0] and "Tiny-two-cycles.v4" in err[0]
    assert hub.manifest(tmp_path / "weights") == man and not (tmp_path / "weights" / "Tiny-two-cycles.v9").exists()
    assert not [p for p in (tmp_path / "weights").iterdir() if p.name.startswith(".")]  # no temporary left


def test_a_second_cycle_ships_from_the_first_cycles_shipped_card_when_its_run_is_gone(tmp_path, monkeypatch, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert cli.main(["train", "--model", "ViT-testing/4", *TINY, "--steps", "4", "--out", str(first)]) == 0
    mod = _script(tmp_path, monkeypatch)
    monkeypatch.setattr(sys, "argv", ["ship_weights.py", str(first), "Tiny-one", "--command", "first.sh"])
    assert mod.main() == 0
    one = tmp_path / "weights" / "Tiny-one.v1"
    first_card = (one / "MODEL_CARD.md").read_text()
    f_evals = _evals(first)
    size = json.loads((one / "config.json").read_text())["model"]["image_size"]
    assert cli.main(["train", "--init", str(one), *TINY, "--steps", "2", "--lr", "5e-4", "--seed", "1",
                     "--image-size", str(size + 8), "--out", str(second)]) == 0  # a higher-resolution second stage
    shutil.rmtree(first)  # the first cycle's run is lost; its card remains
    # the second cycle is the name's next version, reading the first's record from its config.json
    monkeypatch.setattr(sys, "argv", ["ship_weights.py", str(second), "Tiny-one", "--first", str(one),
                                      "--first-run", "runs/first", "--command", "second.sh",
                                      "--first-command", "first.sh", "--move-alias"])
    assert mod.main() == 0
    assert (one / "MODEL_CARD.md").read_text() == first_card  # v1 untouched
    two = tmp_path / "weights" / "Tiny-one.v2"
    card = (two / "MODEL_CARD.md").read_text()
    assert card == hub.model_card(two) and hub.lookup("Tiny-one").name == "Tiny-one.v2"
    assert f"({100 * f_evals[-1]['top1']:.2f} % at its end)" in card
    assert "first cycle " + ", ".join(f"{r['epoch']:g}: {100 * r['top1']:.1f} %" for r in f_evals) in card
    recipe_first = first_card.split("## Recipe\n")[1].splitlines()[0].removesuffix(".")
    assert recipe_first in card and "lr=0.0005" in card
    assert "    first.sh\n    second.sh\n" in card and "Tiny-one --first runs/first\n" in card
    assert f"Pre-training at {size} px, then fine-tuning at {size + 8} px" in card
    f_steps, steps = f_evals[-1]["step"], _evals(second)[-1]["step"]
    assert f"after {f_steps:,} + {steps:,} optimizer steps" in card
    h1 = float(first_card.split("Training time: ")[1].split(" h")[0])
    h2 = float(card.split("Training time: ")[1].split(" h")[0])
    assert h2 >= h1  # both cycles' time
    # a shipped model that is not one cycle is refused as a first cycle, not guessed from
    monkeypatch.setattr(sys, "argv", ["ship_weights.py", str(second), "Tiny-two", "--first", str(two)])
    capsys.readouterr()
    assert mod.main() == 2  # one line, exit 2, nothing written
    err = capsys.readouterr().err
    assert "is not a one-cycle shipped model" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "weights" / "Tiny-two.v1").exists() and "Tiny-two" not in hub.aliases()
    # --cards renders every card again from its config.json; it refuses weights that differ from the manifest
    (two / "MODEL_CARD.md").write_text("edited by hand\n")
    monkeypatch.setattr(sys, "argv", ["ship_weights.py", "--cards"])
    assert mod.main() == 0 and (two / "MODEL_CARD.md").read_text() == card
    assert hub.manifest(tmp_path / "weights")["shipped"]["Tiny-one.v2"] == hub.folder_record(two)
    data = bytearray((two / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (two / "model.safetensors").write_bytes(bytes(data))
    capsys.readouterr()
    assert mod.main() == 2 and "a released version's weights never change" in capsys.readouterr().err
    with pytest.raises(UserError, match="sha256"):
        load("Tiny-one")


def test_a_run_resumed_in_another_precision_says_which_steps_ran_how(tmp_path, monkeypatch):
    run = tmp_path / "run"
    common = ["train", "--model", "ViT-testing/4", *TINY, "--out", str(run)]
    assert cli.main([*common, "--steps", "2"]) == 0
    assert cli.main([*common, "--steps", "4", "--resume", "--precision", "bf16"]) == 0
    mod = _script(tmp_path, monkeypatch)
    extra = tmp_path / "card.json"  # the card's prose comes from config.json, given once when shipping
    extra.write_text(json.dumps({"notes": [{"title": "Caveats", "text": "Trained on 128 images."}],
                                 "data": "Synthetic images; no licence restriction."}))
    monkeypatch.setattr(sys, "argv", ["ship_weights.py", str(run), "Tiny-mixed", "--command", "x.sh",
                                      "--card-json", str(extra)])
    assert mod.main() == 0
    card = (tmp_path / "weights" / "Tiny-mixed.v1" / "MODEL_CARD.md").read_text()
    assert "fp32, then bf16 autocast from step 2)" in card
    assert "\n## Caveats\nTrained on 128 images.\n\n## Data\nSynthetic images; no licence restriction.\n" in card
    meta = json.loads((tmp_path / "weights" / "Tiny-mixed.v1" / "config.json").read_text())
    assert meta["card"]["notes"][0]["title"] == "Caveats" and meta["card"]["cycles"][0]["steps"] == 4
    # one precision throughout (resumed or not), or a run saved before segments were recorded: one word
    assert mod.precision_text({"precision": "bf16"}, None) == "bf16 autocast"
    assert mod.precision_text({"precision": "fp32"}, [{"from_step": 0, "precision": "fp32"},
                                                      {"from_step": 5, "precision": "fp32"}]) == "fp32"
    assert mod.precision_text({}, [{"from_step": 0, "precision": "bf16"}, {"from_step": 6000, "precision": "fp32"},
                                   {"from_step": 7000, "precision": "fp32"}]) == \
        "bf16 autocast, then fp32 from step 6,000"
