"""The small-data plan: which settings `vitkit train` chooses for an image folder, from facts about its images."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from vitkit.train.plan import (BUDGET_MIN_BATCH, FINETUNE_DROP_PATH, FINETUNE_RANDAUGMENT, FINETUNE_RANDAUGMENT_LARGE,
                               FINETUNE_STRONG_MAX_IMAGES, MIN_STEPS, MIN_STEPS_FINETUNE, SCRATCH_LR,
                               SCRATCH_MODEL, DataFacts, facts_of_folder, fit_budget, plan)


def _folder(root: Path, mode: str, side: int, per_class: int = 6) -> Path:
    for split in ("train", "val"):
        for c in ("a", "b"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.new(mode, (side + i, side), 100 + 10 * i if mode == "L" else (100, 10 * i, 3)).save(d / f"{i}.png")
    return root


def test_facts_from_headers(tmp_path):
    f = facts_of_folder(_folder(tmp_path / "p", "RGB", 300))
    assert f == DataFacts(n_train=12, num_classes=2, grey=False, median_side=300)
    chars = facts_of_folder(_folder(tmp_path / "c", "L", 28))
    assert chars.grey and chars.median_side == 28 and chars.n_train == 12


def test_photos_from_scratch():
    facts = DataFacts(n_train=240, num_classes=10, grey=False, median_side=375)
    changes, why = plan(set(), recipe_batch=128, recipe_epochs=5, facts=facts)
    assert changes == {"image_size": 64, "model": SCRATCH_MODEL, "lr": SCRATCH_LR, "batch_size": 16,
                       "steps": MIN_STEPS, "eval_every": MIN_STEPS // 4, "crop": "pad"}
    named, _ = plan(set(), recipe_batch=128, recipe_epochs=5, facts=facts, default_recipe=False)
    assert "lr" not in named  # --recipe pretrain keeps its learning rate
    assert len(why) == len(changes)
    assert "flip" not in changes  # colour photos keep the recipe's flips


def test_characters_small_images_no_flips():
    facts = DataFacts(n_train=1000, num_classes=26, grey=True, median_side=28)
    changes, _ = plan(set(), recipe_batch=128, recipe_epochs=5, facts=facts)
    assert changes["image_size"] == 32 and changes["flip"] is False and changes["steps"] == MIN_STEPS
    assert changes["batch_size"] == 64  # 1000 // 8 = 125 -> the power of two below


def test_given_flags_win():
    facts = DataFacts(n_train=1000, num_classes=26, grey=True, median_side=28)
    given = {"image_size", "model", "lr", "batch_size", "epochs", "flip", "crop"}  # eval_every follows the steps
    assert plan(given, recipe_batch=128, recipe_epochs=5, facts=facts) == ({}, [])


def test_a_long_run_the_user_chose_is_not_evaluated_every_epoch():
    """--steps 2400 on 100 images at batch 8 is 192 epochs: 4 evaluations, not 192 passes over the test split;
    a normal number of epochs keeps the every-epoch default, and --eval-every given wins."""
    facts = DataFacts(n_train=100, num_classes=10, grey=False, median_side=32)
    changes, why = plan({"steps"}, recipe_batch=128, recipe_epochs=5, facts=facts, steps=2400)
    assert changes["eval_every"] == 600 and "steps" not in changes and "evaluated every 600 steps" in why
    changes, _ = plan({"epochs"}, recipe_batch=128, recipe_epochs=5, facts=facts, epochs=400)
    assert changes["eval_every"] == 400 * 12 // 4
    changes, _ = plan({"epochs"}, recipe_batch=128, recipe_epochs=5, facts=facts, epochs=30)
    assert "eval_every" not in changes
    changes, _ = plan({"steps", "eval_every"}, recipe_batch=128, recipe_epochs=5, facts=facts, steps=2400)
    assert "eval_every" not in changes


def test_fine_tuning_keeps_the_checkpoint_resolution_and_model():
    facts = DataFacts(n_train=5000, num_classes=10, grey=False, median_side=32)
    changes, why = plan(set(), recipe_batch=128, recipe_epochs=10, facts=facts, fine_tuning=True)
    assert "image_size" not in changes and "model" not in changes and "batch_size" not in changes
    assert "the checkpoint's resolution" in why
    _, why = plan(set(), recipe_batch=128, recipe_epochs=10, facts=facts, fine_tuning=True, checkpoint_size=64)
    assert "64 px (the checkpoint's resolution)" in why
    assert changes["steps"] == MIN_STEPS_FINETUNE < MIN_STEPS  # 10 epochs of 5000 images at batch 128: 390 steps
    big = DataFacts(n_train=20000, num_classes=10, grey=False, median_side=32)
    changes, _ = plan(set(), recipe_batch=128, recipe_epochs=10, facts=big, fine_tuning=True)
    assert "steps" not in changes  # 1560 steps: the recipe's epochs are enough


def test_randaugment_only_fine_tuning_on_colour_images():
    photos = DataFacts(n_train=500, num_classes=10, grey=False, median_side=300)
    changes, why = plan(set(), recipe_batch=128, recipe_epochs=10, facts=photos, fine_tuning=True)
    assert changes["randaugment"] == FINETUNE_RANDAUGMENT == (2, 9.0) and "RandAugment 2,9 (fine-tuning" in "; ".join(why)
    assert "randaugment" not in plan(set(), 128, 5, photos)[0]  # from scratch: off
    grey = DataFacts(n_train=500, num_classes=10, grey=True, median_side=28)
    assert "randaugment" not in plan(set(), 128, 10, grey, fine_tuning=True)[0]
    assert "randaugment" not in plan({"randaugment"}, 128, 10, photos, fine_tuning=True)[0]  # given wins


def test_stochastic_depth_only_fine_tuning_a_transformer_on_colour_images():
    photos = DataFacts(n_train=500, num_classes=10, grey=False, median_side=300)
    changes, why = plan(set(), 128, 10, photos, fine_tuning=True, checkpoint_blocks=True)
    assert changes["drop_path"] == FINETUNE_DROP_PATH == 0.2
    assert "stochastic depth 0.2 (fine-tuning" in "; ".join(why)
    assert "drop_path" not in plan(set(), 128, 10, photos, fine_tuning=True, checkpoint_blocks=False)[0]  # BiT
    assert "drop_path" not in plan(set(), 128, 10, photos, fine_tuning=True)[0]  # family unknown: not guessed
    assert "drop_path" not in plan(set(), 128, 5, photos, checkpoint_blocks=True)[0]  # from scratch: off
    grey = DataFacts(n_train=500, num_classes=10, grey=True, median_side=28)
    assert "drop_path" not in plan(set(), 128, 10, grey, fine_tuning=True, checkpoint_blocks=True)[0]
    assert "drop_path" not in plan({"drop_path"}, 128, 10, photos, fine_tuning=True, checkpoint_blocks=True)[0]


def test_a_larger_set_keeps_the_milder_fine_tuning_regularisation():
    """RandAugment(2, 9) with stochastic depth gained on 100-1,000 images and lost 1.6 points on 5,000 and 4.4 on 20,000."""
    at = DataFacts(n_train=FINETUNE_STRONG_MAX_IMAGES, num_classes=10, grey=False, median_side=32)
    changes, _ = plan(set(), 128, 10, at, fine_tuning=True, checkpoint_blocks=True)
    assert changes["randaugment"] == FINETUNE_RANDAUGMENT and changes["drop_path"] == FINETUNE_DROP_PATH
    above = DataFacts(n_train=FINETUNE_STRONG_MAX_IMAGES + 1, num_classes=10, grey=False, median_side=32)
    changes, why = plan(set(), 128, 10, above, fine_tuning=True, checkpoint_blocks=True)
    assert changes["randaugment"] == FINETUNE_RANDAUGMENT_LARGE == (2, 5.0) and "drop_path" not in changes
    assert "RandAugment 2,5 (fine-tuning on colour images; more than 2000 images: no stochastic depth)" in why
    changes, _ = plan({"drop_path"}, 128, 10, above, fine_tuning=True, checkpoint_blocks=True)
    assert "drop_path" not in changes  # given: the flag's value stands (the loop keeps it)


def test_only_image_folders_are_planned_and_a_resumed_run_keeps_its_settings(tmp_path):
    from vitkit.train.loop import TrainSettings
    from vitkit.train.plan import apply
    from vitkit.train.recipes import get_recipe

    recipe = get_recipe("default")
    lines = []
    named = TrainSettings(**vars(recipe)).replace(dataset="fashion-mnist")
    assert apply(named, set(), recipe, say=lines.append) == named and lines == []
    # no time budget: what fits in it depends on this machine's speed (its own test is below)
    folder = TrainSettings(**vars(recipe)).replace(dataset=f"imagefolder:{_folder(tmp_path / 'p', 'RGB', 300)}",
                                                   time_budget=0)
    planned = apply(folder, set(), recipe, say=lines.append)
    assert planned.image_size == 64 and planned.model == SCRATCH_MODEL and planned.steps == MIN_STEPS
    assert len(lines) == 1 and "any flag given wins" in lines[0]
    assert apply(folder.replace(resume=True), set(), recipe, say=lines.append) == folder.replace(resume=True)


def test_checkpoint_size_from_a_folder_or_a_name_without_loading(tmp_path):
    import json

    from vitkit.train.plan import checkpoint_facts

    def checkpoint_size(spec):
        return checkpoint_facts(spec)[0]

    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "config.json").write_text(json.dumps({"model": {"image_size": 96}}))
    assert checkpoint_size(tmp_path / "ck") == 96
    assert checkpoint_size("imagenet21k/ViT-B_16") == 224  # listed, not downloaded
    assert checkpoint_size("ViT-Mini_8-tiny-imagenet") == 64  # shipped
    assert checkpoint_size(tmp_path / "nothing-here.npz") is None


def test_checkpoint_facts_tell_a_transformer_from_a_resnet_without_loading(tmp_path):
    import json

    from vitkit.train.plan import checkpoint_facts

    (tmp_path / "vit").mkdir()
    (tmp_path / "vit" / "config.json").write_text(json.dumps({"model": {"image_size": 64, "depth": 6}}))
    (tmp_path / "bit").mkdir()
    (tmp_path / "bit" / "config.json").write_text(json.dumps({"model": {"image_size": 128, "layers": [3, 4, 6, 3], "family": "bit"}}))
    assert checkpoint_facts(tmp_path / "vit") == (64, True)
    assert checkpoint_facts(tmp_path / "bit") == (128, False)
    assert checkpoint_facts("R+ViT-Mini_8-tiny-imagenet") == (64, True)  # shipped hybrid
    assert checkpoint_facts("BiT-M-R50x1") == (224, False)  # listed, not downloaded
    assert checkpoint_facts(tmp_path / "nothing-here.npz") == (None, None)


def test_time_budget_cuts_the_steps_in_proportion_on_a_grid():
    """1200 steps of 128 at 3 ms per image are 461 s: 1.219x the 360 s budget with its 5 % tolerance (378 s), so
    the steps go down the grid 1200 * 2^(-k/8) to the first line that fits, k = ceil(8 log2 1.219) = 3:
    1200 * 0.7711 = 925 -> 920 (two significant figures), the batch kept. A run that fits is not touched; where
    the steps would fall below a quarter of the minimum (300) the batch is cut in proportion instead; a given batch
    is kept."""
    facts = DataFacts(n_train=10200, num_classes=102, grey=False, median_side=375)
    free, _ = plan(set(), recipe_batch=128, recipe_epochs=5, facts=facts)
    assert "batch_size" not in free and free["steps"] == MIN_STEPS  # the recipe's 128
    fits, _ = plan(set(), recipe_batch=128, recipe_epochs=5, facts=facts, seconds_per_image=1e-3, budget_s=360)
    assert fits == free  # 154 s: nothing to change
    within, _ = plan(set(), recipe_batch=128, recipe_epochs=5, facts=facts, seconds_per_image=2.4e-3, budget_s=360)
    assert within == free  # 369 s: 2.4 % over, inside the tolerance
    changes, why = plan(set(), recipe_batch=128, recipe_epochs=5, facts=facts, seconds_per_image=3e-3, budget_s=360)
    assert "batch_size" not in changes and changes["steps"] == 920 and 920 * 128 * 3e-3 <= 378
    assert changes["eval_every"] == 920 // 4
    assert any("fitted to --time-budget 6 min (1200 steps of 128 would take ~7.7 min" in w for w in why)
    assert any("--time-budget 0 runs them" in w for w in why)
    assert any(w.startswith("920 steps of 128") for w in why)
    # 10 ms per image: 1536 s; the grid gives 270 < 300 steps, so 300 steps and the batch down the same grid:
    # 300 * 128 * 0.01 = 384 s is 1.016x of 378 -> k = 1, 128 * 2^(-1/8) = 117.4 -> 112 (a multiple of 8)
    slow, _ = plan(set(), recipe_batch=128, recipe_epochs=5, facts=facts, seconds_per_image=0.01, budget_s=360)
    assert slow["steps"] == MIN_STEPS // 4 == 300 and slow["batch_size"] == 112
    slower, _ = plan(set(), recipe_batch=128, recipe_epochs=5, facts=facts, seconds_per_image=1.0, budget_s=360)
    assert slower["steps"] == 300 and slower["batch_size"] == BUDGET_MIN_BATCH == 32
    given, _ = plan({"batch_size"}, recipe_batch=128, recipe_epochs=5, facts=facts, seconds_per_image=0.005,
                    budget_s=360)
    # 768 s is 2.03x of 378: k = ceil(8 * 1.023) = 9, 1200 * 2^(-9/8) = 550.3 -> 550
    assert "batch_size" not in given and given["steps"] == 550
    # 1011 s is 2.675x of 378: k = ceil(8 * 1.42) = 12, 790 * 2^(-12/8) = 279.3 -> 270, above the floor of 150
    assert fit_budget(790, 128, 0.01, 360, 150) == (270, 128)
    # with a floor of 300: 300 steps, 384 s is 1.016x -> one grid step, 117.4 -> 112
    assert fit_budget(790, 128, 0.01, 360, 300) == (300, 112)


def test_the_budget_is_measured_on_this_machine_and_said(tmp_path):
    """apply() times the planned model before the run; a budget of 0.06 s cannot fit 1200 steps anywhere, so the
    steps go to the floor and the line says what the measurement was."""
    from vitkit.train.loop import TrainSettings
    from vitkit.train.plan import apply
    from vitkit.train.recipes import get_recipe

    root = _folder(tmp_path / "p", "RGB", 100, per_class=40)
    lines = []
    s = TrainSettings(dataset=f"imagefolder:{root}", time_budget=0.001, precision="fp32")
    out = apply(s, {"dataset", "time_budget", "precision"}, get_recipe("default"), say=lines.append)
    assert out.steps == MIN_STEPS // 4 and out.batch_size == 8  # 80 images: an eighth is 10 -> 8 (below 32: kept)
    assert "fitted to --time-budget 0.001 min" in lines[0] and "ms per training image" in lines[0]
    off = apply(s.replace(time_budget=0), {"dataset", "time_budget", "precision"}, get_recipe("default"))
    assert off.steps == MIN_STEPS
