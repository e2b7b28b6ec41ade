"""Masked patch prediction (vitkit/mpp.py): the mean-colour target by hand, the corruption's proportions and
replacements, the wrapped ViT unchanged, and the loss falling on real photos."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vitkit.config import ViTConfig
from vitkit.model import ViT, create_model
from vitkit.mpp import KEPT, MASKED, RANDOM, UNCHANGED, MPPModel, corrupt, mean_color_target, num_colors

from runlogs import metrics, uninterrupted_and_resumed

SHARED_TIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "tiny-imagenet-200"


@pytest.fixture
def one_thread():
    """The machine is shared: one thread is both faster and deterministic for these tiny models."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def crafted_image() -> tuple[torch.Tensor, list[int]]:
    """An 8x8 RGB image of four 4x4 cells, and each cell's class worked out by hand (class = R*64 + G*8 + B, each
    channel's level floor(8 * mean / 255), capped at 7)."""
    img = torch.zeros(3, 8, 8, dtype=torch.uint8)
    # cell (0, 0): black -> levels (0, 0, 0) -> class 0
    # cell (0, 1): white -> 255 * 8 / 255 = 8, capped -> (7, 7, 7) -> 511
    img[:, 0:4, 4:8] = 255
    # cell (1, 0): R sums to 510 = 255 * 16 / 8, the exact 1/8 boundary -> 1; G sums to 509, just below -> 0;
    #              B 128 everywhere: 128 * 8 / 255 = 4.02 -> 4. Class 1*64 + 0*8 + 4 = 68
    r = torch.full((4, 4), 32, dtype=torch.uint8)
    r.view(-1)[:2] = 31  # 14 * 32 + 2 * 31 = 510
    g = r.clone()
    g.view(-1)[2] = 31  # 509
    img[0, 4:8, 0:4], img[1, 4:8, 0:4], img[2, 4:8, 0:4] = r, g, 128
    # cell (1, 1): R a 0/255 checkerboard, mean 127.5 -> exactly 4; G 127 -> 3.98 -> 3; B 224 -> 7.03 -> 7.
    #              Class 4*64 + 3*8 + 7 = 287
    checker = ((torch.arange(4)[:, None] + torch.arange(4)[None]) % 2 * 255).to(torch.uint8)
    img[0, 4:8, 4:8], img[1, 4:8, 4:8], img[2, 4:8, 4:8] = checker, 127, 224
    return img, [0, 511, 68, 287]


def test_target_matches_hand_computation():
    img, expected = crafted_image()
    assert mean_color_target(img[None], cell=4).tolist() == [expected]
    # float pixels in [0, 1] give the same classes, boundaries included
    assert mean_color_target(img[None].float() / 255, cell=4).tolist() == [expected]
    # a batch keeps images apart; channel order matters (G and B swapped: 68 -> 1*64 + 4*8 + 0 = 96)
    swapped = img[[0, 2, 1]]
    both = mean_color_target(torch.stack([img, swapped]), cell=4).tolist()
    assert both == [expected, [0, 511, 96, 4 * 64 + 7 * 8 + 3]]
    # one cell for the whole image: channel means (R, G, B) over all 64 pixels
    means = img.double().mean(dim=(1, 2))
    levels = [min(math.floor(8 * m / 255), 7) for m in means.tolist()]
    assert mean_color_target(img[None], cell=8).tolist() == [[levels[0] * 64 + levels[1] * 8 + levels[2]]]


def test_target_grey_images_have_eight_classes():
    img = torch.tensor([[[0, 31], [32, 255]]], dtype=torch.uint8)[None]  # (1, 1, 2, 2)
    assert mean_color_target(img, cell=1).tolist() == [[0, 0, 1, 7]]
    assert num_colors(1) == 8 and num_colors(3) == 512


def test_target_refuses_normalised_input():
    img, _ = crafted_image()
    normalised = (img[None].float() / 255 - 0.5) / 0.5
    with pytest.raises(ValueError, match="raw pixels in \\[0, 1\\], before normalisation"):
        mean_color_target(normalised, cell=4)
    with pytest.raises(ValueError, match="not a multiple of the cell size 3"):
        mean_color_target(img[None], cell=3)


def draws(n_draws: int, n: int, length: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(n, length, 4, generator=g)
    mask_token = torch.randn(4, generator=g)
    return [corrupt(tokens, mask_token, g) for _ in range(n_draws)], tokens, mask_token


def test_corruption_proportions_over_many_draws():
    cs, _, _ = draws(60, 32, 50)
    mask = torch.stack([c.mask for c in cs])
    kind = torch.stack([c.kind for c in cs])
    # exactly half of every image's patches, every draw
    assert (mask.sum(-1) == 25).all()
    assert ((kind != KEPT) == mask).all()
    # within the corrupted ones, 80/10/10: 48,000 draws, binomial std <= 0.0019; allow 5 std
    n = int(mask.sum())
    assert n == 60 * 32 * 25
    for k, p in ((MASKED, 0.8), (RANDOM, 0.1), (UNCHANGED, 0.1)):
        frac = float((kind == k).sum()) / n
        assert abs(frac - p) <= 5 * math.sqrt(p * (1 - p) / n), (k, frac)
    # every position is corrupted half of the time (1,920 draws each, 5 std = 0.057)
    per_position = mask.float().mean(dim=(0, 1))
    assert (per_position - 0.5).abs().max() <= 5 * math.sqrt(0.25 / (60 * 32))


def test_corruption_rounds_half_up_and_honours_ratio():
    tokens = torch.randn(3, 49, 2)
    c = corrupt(tokens, torch.zeros(2), torch.Generator().manual_seed(0))
    assert c.mask.sum(-1).tolist() == [25, 25, 25]  # ViT-B/32 at 224: 49 patches
    c = corrupt(tokens, torch.zeros(2), torch.Generator().manual_seed(0), ratio=0.15)
    assert c.mask.sum(-1).tolist() == [7, 7, 7]
    with pytest.raises(ValueError, match="summing to 1"):
        corrupt(tokens, torch.zeros(2), split=(0.8, 0.1, 0.2))


def test_corrupted_positions_get_mask_other_patch_or_own_embedding():
    cs, tokens, mask_token = draws(20, 8, 16)
    n, length, d = tokens.shape
    flat = tokens.reshape(-1, d)
    own = torch.arange(n * length).view(n, length)
    other_image = 0
    for c in cs:
        masked, rand, same = c.kind == MASKED, c.kind == RANDOM, (c.kind == UNCHANGED) | (c.kind == KEPT)
        assert torch.equal(c.tokens[masked], mask_token.expand(int(masked.sum()), d))
        assert torch.equal(c.tokens[same], tokens[same])
        assert rand.any()
        assert torch.equal(c.tokens[rand], flat[c.source[rand]])
        assert (c.source[rand] != own[rand]).all()  # another patch, never its own
        other_image += int((c.source[rand] // length != own[rand] // length).sum())
    # the other patch is drawn from the whole batch: from another image 7 times in 8 here (112 of 127 others)
    total_random = sum(int((c.kind == RANDOM).sum()) for c in cs)
    assert other_image / total_random == pytest.approx(112 / 127, abs=0.12)
    # the same seed gives the same corruption
    again, _, _ = draws(20, 8, 16)
    assert all(torch.equal(a.tokens, b.tokens) and torch.equal(a.kind, b.kind) for a, b in zip(cs, again))


@pytest.mark.parametrize("overrides", [dict(), dict(classifier="gap", pos_embed="sincos2d"),
                                       dict(pos_embed="learned2d")])
def test_without_corruption_the_wrapped_vit_computes_its_own_features(overrides):
    vit = create_model("ViT-testing/4", num_classes=5, image_size=16, **overrides).eval()
    mpp = MPPModel(vit, ratio=0.0).eval()
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    x = mpp.normalize(images)
    tokens, c = mpp.encode(x)
    feats = vit.forward_features(x)
    assert not c.mask.any()
    torch.testing.assert_close(tokens, feats[:, 1:] if vit.cls_token is not None else feats, rtol=0, atol=0)


def tiny_hybrid() -> ViT:
    return ViT(ViTConfig(image_size=32, patch_size=2, hidden_size=16, depth=1, num_heads=2, mlp_dim=32,
                         num_classes=3, resnet={"layers": [], "width": 0.5}))


def test_hybrid_targets_are_the_stem_cells_mean_colours():
    vit = tiny_hybrid().eval()
    assert vit.cfg.stem_stride == 8 and vit.cfg.num_patches == 16
    # every 8x8 cell one flat colour, so the class of token (i, j) is known by hand
    colours = torch.randint(0, 256, (16, 3), generator=torch.Generator().manual_seed(0), dtype=torch.int64)
    img = colours.view(4, 4, 3).permute(2, 0, 1).repeat_interleave(8, 1).repeat_interleave(8, 2)
    expected = [(r * 8 // 255) * 64 + (g * 8 // 255) * 8 + (b * 8 // 255) for r, g, b in colours.tolist()]
    mpp = MPPModel(vit, ratio=1.0).eval()
    logits, targets = mpp(img.to(torch.uint8)[None], torch.Generator().manual_seed(0))
    assert targets.tolist() == expected  # all 16 corrupted, in row-major order
    assert logits.shape == (16, 512)
    # without corruption the hybrid path equals the model's own
    x = mpp.normalize(img.to(torch.uint8)[None])
    plain = MPPModel(vit, ratio=0.0)
    torch.testing.assert_close(plain.encode(x)[0], vit.forward_features(x)[:, 1:], rtol=0, atol=0)


def test_gradient_reaches_the_mask_token_and_the_vit_stays_ordinary():
    vit = create_model("ViT-testing/4", num_classes=5, image_size=16)
    mpp = MPPModel(vit)
    torch.nn.init.normal_(mpp.head.proj.weight, std=0.1)  # the zero-initialised head passes no gradient back
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    logits, targets = mpp(images, torch.Generator().manual_seed(0))
    assert logits.shape == (4 * 8, 512) and targets.shape == (4 * 8,)
    assert targets.min() >= 0 and targets.max() < 512
    mpp.loss(images, torch.Generator().manual_seed(0)).backward()
    assert mpp.mask_token.grad is not None and mpp.mask_token.grad.abs().sum() > 0
    assert vit.patch_embed.proj.weight.grad.abs().sum() > 0
    assert vit.head.weight.grad is None  # the classification head takes no part
    # the ViT carries none of MPP's parameters: its checkpoint is an ordinary one
    assert set(vit.state_dict()) == set(create_model("ViT-testing/4", num_classes=5, image_size=16).state_dict())
    assert set(mpp.mpp_state_dict()) == {"mask_token", "head.proj.weight", "head.proj.bias"}


def test_normalisation_is_the_preprocess_one():
    from vitkit.data.preprocess import Preprocess

    vit = create_model("ViT-testing/4", num_classes=5, image_size=16)
    pre = Preprocess(image_size=16, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    torch.testing.assert_close(MPPModel(vit, mean=pre.mean, std=pre.std).normalize(images), pre.normalize(images))
    torch.testing.assert_close(MPPModel(vit).normalize(images), Preprocess(image_size=16).normalize(images))
    with pytest.raises(ValueError, match="mean/std need 3 values"):
        MPPModel(vit, mean=(0.5,), std=(0.5,))


def tiny_imagenet_photos(count: int, size: int) -> torch.Tensor:
    from PIL import Image

    folder = SHARED_TIN / "val" / "images"
    arrays = [np.asarray(Image.open(folder / f"val_{i}.JPEG").convert("RGB").resize((size, size), Image.BILINEAR))
              for i in range(count)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


@pytest.mark.skipif(not (SHARED_TIN / "val" / "images" / "val_0.JPEG").exists(),
                    reason="needs shared/data/tiny-imagenet-200")
def test_loss_falls_on_real_photos_below_the_colour_frequencies(one_thread):
    """80 steps on 320 Tiny ImageNet photos (32 px, 8 px patches) with a 2-block model. Held-out loss starts at
    ln 512 and must end well below what the colour frequencies alone give (the best guess that ignores the image):
    the model reads the colour of a corrupted patch from its neighbours."""
    torch.manual_seed(0)
    photos = tiny_imagenet_photos(384, 32)
    train, test = photos[:320], photos[320:]
    mpp = MPPModel(create_model("ViT-testing/8", num_classes=10, image_size=32))
    opt = torch.optim.AdamW(mpp.parameters(), lr=1e-2, weight_decay=0.0)

    def held_out() -> float:
        mpp.eval()
        with torch.no_grad():
            loss = mpp.loss(test, torch.Generator().manual_seed(1)).item()
        mpp.train()
        return loss

    counts = torch.bincount(mean_color_target(train, 8).flatten(), minlength=512).double() + 0.5
    colour_frequencies = -(counts / counts.sum()).log()[mean_color_target(test, 8).flatten()].mean().item()
    before = held_out()
    assert before == pytest.approx(math.log(512), abs=1e-4)
    g = torch.Generator().manual_seed(0)
    for _ in range(80):
        loss = mpp.loss(train[torch.randint(0, len(train), (64,), generator=g)], g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out()
    assert after < colour_frequencies - 0.25, (before, after, colour_frequencies)


# ------------------------------------------------------------------------------------ vitkit train --recipe mpp


def colour_folder(root: Path, per_class: int = 16, side: int = 32) -> Path:
    """An image folder of RGB pictures made of 8x8 blocks of random colours (train/ and val/, two classes)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(2):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(per_class):
                blocks = rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)
                Image.fromarray(blocks.repeat(8, 0).repeat(8, 1)).save(d / f"{i}.png")
    return root


def test_vitkit_train_recipe_mpp_then_init_from_it(tmp_path, capsys, one_thread):
    from safetensors.torch import load_file

    import vitkit
    from vitkit import cli
    from vitkit.checkpoint.io import load_train_state

    folder = colour_folder(tmp_path / "photos")
    common = ["--dataset", f"imagefolder:{folder}", "--image-size", "32", "--batch-size", "8", "--precision", "fp32",
              "--no-progress"]
    assert cli.main(["train", "--recipe", "mpp", "--model", "ViT-testing/4", "--steps", "3", *common,
                     "--out", str(tmp_path / "mpp")]) == 0
    printed = capsys.readouterr().out
    assert "masked patch prediction, test colour accuracy" in printed
    records = metrics(tmp_path / "mpp")
    assert records[0]["loss"] == pytest.approx(math.log(512), abs=1e-5)  # zero head: uniform over 512 colours
    assert [r["step"] for r in records if "loss" in r and "top1" not in r] == [1, 2, 3]
    final = [r for r in records if "top1" in r][-1]
    assert 0 <= final["top1"] <= final["top5"] <= 1 and final["eval_loss"] > 0

    # the checkpoint is an ordinary ViT; what MPP adds is in train_state.pt, for --resume
    ckpt = tmp_path / "mpp" / "checkpoint"
    model = vitkit.load(ckpt).model
    fresh = create_model("ViT-testing/4", num_classes=2, image_size=32)
    assert set(load_file(str(ckpt / "model.safetensors"))) == set(fresh.state_dict())
    state = load_train_state(ckpt)
    assert state["settings"]["objective"] == "mpp"
    assert set(state["objective_state"]) == {"mask_token", "head.proj.weight", "head.proj.bias"}
    assert state["objective_state"]["head.proj.weight"].shape == (512, 16)
    assert torch.equal(model.head.weight, torch.zeros_like(model.head.weight))  # the classifier took no part

    # fine-tuning starts from it like from any other checkpoint (recipe finetune, labels used)
    assert cli.main(["train", "--init", str(ckpt), "--steps", "2", *common, "--out", str(tmp_path / "ft")]) == 0
    assert "test top-1" in capsys.readouterr().out
    tuned = vitkit.load(tmp_path / "ft" / "checkpoint").model
    assert (tuned.blocks[0].attn.qkv.weight - model.blocks[0].attn.qkv.weight).abs().max() < 0.05
    assert load_train_state(tmp_path / "ft" / "checkpoint")["objective_state"] is None


def test_mpp_run_resumed_matches_the_uninterrupted_one(tmp_path, one_thread):
    """The corruption is drawn from the augmentation generator, which train_state.pt restores: a run that dies after
    step 4 and is resumed from step 3 logs the same losses, bit for bit, as an uninterrupted one; so the [mask]
    embedding, the head and their Adam moments come back too."""
    run = dict(model="ViT-testing/4", objective="mpp", batch_size=32, limit_train=128, limit_test=32,
               precision="fp32", progress=False, warmup_steps=1, save_every=3, eval_every=3)
    ref, cut = uninterrupted_and_resumed(tmp_path, 6, 4, **run)
    assert [r.get("loss", r.get("eval_loss")) for r in ref] == [r.get("loss", r.get("eval_loss")) for r in cut]
    assert len([r for r in ref if "grad_norm" in r]) == 6


def test_mpp_refuses_label_mixing_and_fsdp(tmp_path, capsys):
    from vitkit import cli

    assert cli.main(["train", "--recipe", "mpp", "--mixup", "0.2", "--out", str(tmp_path / "a")]) == 2
    assert "--mixup and --cutmix blend images and labels" in capsys.readouterr().err
    assert cli.main(["train", "--objective", "mpp", "--fsdp", "--out", str(tmp_path / "b")]) == 2
    assert "--fsdp is not available with --objective mpp" in capsys.readouterr().err
    assert cli.main(["train", "--objective", "mpp", "--model", "BiT-R50x1", "--out", str(tmp_path / "c")]) == 2
    assert "--model BiT-R50x1 is a ResNet" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in "abc")  # refused before any work


def test_mask_token_is_not_weight_decayed_and_evaluation_is_repeatable():
    from vitkit.data.datasets import ArrayDataset
    from vitkit.data.preprocess import Preprocess
    from vitkit.train.objectives import MaskedPatchPrediction
    from vitkit.train.optim import param_groups

    mpp = MPPModel(create_model("ViT-testing/4", num_classes=2, image_size=16))
    decayed, undecayed = param_groups(mpp, 0.1)
    assert any(p is mpp.mask_token for p in undecayed["params"]) and all(p is not mpp.mask_token
                                                                         for p in decayed["params"])
    images = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)
    ds = ArrayDataset(images, torch.zeros(10, dtype=torch.int64), ["a", "b"], "random")
    obj, pre = MaskedPatchPrediction(), Preprocess(image_size=16)
    first = obj.summarize(obj.evaluate_counts(mpp, ds, torch.arange(10), 4, "fp32", pre, torch.device("cpu")), [])
    again = obj.summarize(obj.evaluate_counts(mpp, ds, torch.arange(10), 4, "fp32", pre, torch.device("cpu")), [])
    assert first == again and first["n"] == 10 and first["patches"] == 10 * 8
    assert first["loss"] == pytest.approx(math.log(512), abs=1e-5)


def test_mpp_recipe_follows_appendix_b12():
    from vitkit.train.recipes import RECIPES

    r = RECIPES["mpp"]
    # Adam(W) with cosine decay after a warmup, as B.1.2; no label smoothing (no labels) and no zero-padded crops
    assert (r.objective, r.optimizer, r.betas, r.schedule) == ("mpp", "adamw", (0.9, 0.999), "cosine")
    assert r.warmup_epochs > 0 and r.label_smoothing == 0.0 and r.crop == "none" and r.mixup == r.cutmix == 0
    assert all(x.objective == "classify" for name, x in RECIPES.items() if name != "mpp")
