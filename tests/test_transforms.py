"""Batched augmentation: determinism, crops, flips, mixup/cutmix/label-smoothing targets, and the RandAugment
ops against PIL's definitions (ImageOps / ImageEnhance) on random images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageOps

from vitkit.data.transforms import (BatchAugment, RandAugment, apply_op, autocontrast, cutmix, equalize, mixup,
                                    random_erase, random_flip, random_pad_crop, random_resized_crop, smooth_one_hot,
                                    soft_target_cross_entropy)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand_images(b=8, c=3, s=20, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (b, c, s, s), generator=gen(seed), dtype=torch.uint8)


def to_pil(t: torch.Tensor) -> Image.Image:
    return Image.fromarray(t.permute(1, 2, 0).numpy())


def from_pil(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(im)).permute(2, 0, 1)


FULL = dict(crop="pad", flip=True, randaugment=(2, 9), mixup=0.8, cutmix=1.0, label_smoothing=0.1, erase=0.25)


@pytest.mark.parametrize("crop", ["pad", "rrc", "none"])
def test_deterministic_given_the_generator(crop):
    x, y = rand_images(16, 1, 28), torch.arange(16) % 10
    aug = BatchAugment(28, 10, **{**FULL, "crop": crop})
    a1, t1 = aug(x, y, gen(7))
    a2, t2 = aug(x, y, gen(7))
    assert torch.equal(a1, a2) and torch.equal(t1, t2)
    g = gen(7)
    b1, _ = aug(x, y, g)
    b2, _ = aug(x, y, g)  # the generator advanced: a different augmentation
    assert torch.equal(b1, a1) and not torch.equal(b2, b1)
    assert not torch.equal(aug(x, y, gen(8))[0], a1)
    # a checkpointed generator state resumes exactly
    g = gen(3)
    aug(x, y, g)
    state = g.get_state()
    nxt = aug(x, y, g)[0]
    g2 = torch.Generator()
    g2.set_state(state)
    assert torch.equal(aug(x, y, g2)[0], nxt)
    assert a1.dtype == torch.uint8 and a1.shape == (16, 1, 28, 28) and t1.shape == (16, 10)


def test_output_size_and_internal_generator():
    x, y = rand_images(4, 3, 28), torch.tensor([0, 1, 2, 3])
    out, t = BatchAugment(32, 5, crop="pad")(x, y)  # 28 px data for a 32 px model
    assert out.shape == (4, 3, 32, 32) and t.shape == (4, 5)
    photos = rand_images(2, 3, 300)
    assert BatchAugment(64, 5, crop="rrc")(photos, y[:2])[0].shape == (2, 3, 64, 64)
    assert BatchAugment(64, 5, crop="none")(photos, y[:2])[0].shape == (2, 3, 64, 64)
    a, b = BatchAugment(28, 10, seed=1), BatchAugment(28, 10, seed=1)
    assert torch.equal(a(x, y)[0], b(x, y)[0])  # no generator given: the seeded internal one
    with pytest.raises(ValueError, match="crop must be one of"):
        BatchAugment(28, 10, crop="center")
    with pytest.raises(ValueError, match="uint8"):
        a(x.float(), y)


def test_label_smoothing_values():
    y = torch.tensor([3, 0, 9])
    t = BatchAugment(28, 10, crop="none", flip=False, label_smoothing=0.1)(rand_images(3, 1, 28), y, gen())[1]
    assert t.dtype == torch.float32
    assert torch.allclose(t[torch.arange(3), y], torch.full((3,), 0.91))
    assert torch.allclose(t.sum(1), torch.ones(3)) and torch.isclose(t[0, 5], torch.tensor(0.01))
    assert torch.equal(smooth_one_hot(y, 10), F.one_hot(y, 10).float())


def test_soft_target_cross_entropy_matches_torch():
    logits, y = torch.randn(6, 7, generator=gen()), torch.tensor([0, 1, 2, 3, 4, 6])
    assert torch.allclose(soft_target_cross_entropy(logits, smooth_one_hot(y, 7)), F.cross_entropy(logits, y))
    assert torch.allclose(soft_target_cross_entropy(logits, smooth_one_hot(y, 7, 0.2)),
                          F.cross_entropy(logits, y, label_smoothing=0.2))
    assert torch.equal(soft_target_cross_entropy(logits, y), F.cross_entropy(logits, y))


def test_mixup_blends_images_and_targets_alike():
    x = rand_images(6, 3, 16)
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    out, t = mixup(x, smooth_one_hot(y, 6), 0.8, gen(2))
    lam = t[0, 0].item()
    assert 0 < lam < 1 and torch.allclose(t[0, 5], torch.tensor(1 - lam))
    assert torch.allclose(t.sum(1), torch.ones(6))
    expected = (lam * x.double() + (1 - lam) * x.flip(0).double()).round()
    assert (out.double() - expected).abs().max() <= 1  # float32 rounding at .5
    # through BatchAugment with smoothing: rows still sum to 1, every value within [0, 1]
    _, t2 = BatchAugment(16, 6, crop="none", flip=False, mixup=0.8, label_smoothing=0.1)(x, y, gen(3))
    assert torch.allclose(t2.sum(1), torch.ones(6)) and (t2 >= 0).all() and (t2 <= 1).all()
    assert ((t2 > 0.1 / 6 + 1e-4).sum(1) == 2).all()  # exactly two classes get more than the smoothing floor


def test_cutmix_target_weight_is_the_pasted_area():
    b = 6
    x = torch.arange(b, dtype=torch.uint8).mul(40).view(b, 1, 1, 1).expand(b, 3, 24, 24).contiguous()
    y = torch.arange(b)
    for seed in range(5):
        out, t = cutmix(x, smooth_one_hot(y, b), 1.0, gen(seed))
        own = (out == x).float().mean((1, 2, 3))  # each image is constant: own pixels are recognisable
        assert torch.allclose(t[y, y], own) and torch.allclose(t[y, y.flip(0)], 1 - own)
        assert torch.allclose(t.sum(1), torch.ones(b))


def test_flips_actually_flip():
    x = rand_images(64, 3, 12)
    out = random_flip(x, gen(0))
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x)]
    kept = [torch.equal(o, i) for o, i in zip(out, x)]
    assert all(f != k for f, k in zip(flipped, kept))  # each image is one or the other
    assert 20 < sum(flipped) < 44
    same = BatchAugment(12, 2, crop="none", flip=False)(x, torch.zeros(64, dtype=torch.long), gen())[0]
    assert torch.equal(same, x)


def test_pad_crop_is_a_window_of_the_padded_image():
    x = rand_images(5, 1, 28) | 1  # no zeros inside, so the zero padding is recognisable
    pad = 4
    out = random_pad_crop(x, pad, gen(1))
    padded = F.pad(x, (pad,) * 4)
    offsets = []
    for o, p in zip(out, padded):
        hits = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                if torch.equal(o, p[:, dy:dy + 28, dx:dx + 28])]
        assert len(hits) == 1
        offsets.append(hits[0])
    assert len(set(offsets)) > 1


def test_random_resized_crop():
    const = torch.full((4, 3, 100, 80), 90, dtype=torch.uint8)
    assert torch.equal(random_resized_crop(const, 32, gen()), torch.full((4, 3, 32, 32), 90, dtype=torch.uint8))
    # a left-to-right ramp stays monotonic inside each crop (no flips, no rotations), and crops differ
    ramp = torch.linspace(0, 255, 96).round().to(torch.uint8).expand(8, 1, 96, 96).contiguous()
    out = random_resized_crop(ramp, 24, gen(5)).int()
    assert (out[..., 1:] >= out[..., :-1]).all()
    assert len({tuple(o[0, 0].tolist()) for o in out}) == 8
    # scale (1, 1) and a square image: the whole image, resized
    full = random_resized_crop(ramp[:1], 48, gen(), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert (full.int() - F.interpolate(ramp[:1].float(), size=48, mode="bilinear", antialias=True).round()
            .int()).abs().max() <= 2


# ---------------------------------------------------------------------------------------------------- RandAugment


def test_ops_match_pil():
    x = rand_images(6, 3, 20, seed=1)
    x[0] = x[0] // 4 + 100  # a low-contrast image, where equalize and autocontrast do something
    pil = [to_pil(i) for i in x]
    assert torch.equal(equalize(x), torch.stack([from_pil(ImageOps.equalize(p)) for p in pil]))
    assert torch.equal(apply_op("Posterize", x, 9), torch.stack([from_pil(ImageOps.posterize(p, 5)) for p in pil]))
    assert torch.equal(apply_op("Solarize", x, 5), torch.stack([from_pil(ImageOps.solarize(p, 128)) for p in pil]))
    auto = torch.stack([from_pil(ImageOps.autocontrast(p)) for p in pil])
    assert (autocontrast(x).int() - auto.int()).abs().max() <= 1  # PIL truncates, we round
    for op, enhancer in (("Brightness", ImageEnhance.Brightness), ("Color", ImageEnhance.Color),
                         ("Contrast", ImageEnhance.Contrast), ("Sharpness", ImageEnhance.Sharpness)):
        for sign in (1.0, -1.0):
            ours = apply_op(op, x, 7, torch.full((6,), sign))
            ref = torch.stack([from_pil(enhancer(p).enhance(1 + 0.63 * sign)) for p in pil])
            assert (ours.int() - ref.int()).abs().max() <= 1, (op, sign)


def test_geometric_ops():
    x = rand_images(3, 2, 8)
    assert torch.equal(apply_op("Rotate", x, 30), torch.rot90(x, 1, (2, 3)))  # magnitude 30 = 90 degrees
    ramp = torch.arange(20, dtype=torch.uint8).expand(2, 1, 20, 20).contiguous()
    shifted = apply_op("TranslateX", ramp, 10 / 0.45 * 0.25, torch.tensor([1.0, -1.0]))  # 5 px each way
    assert shifted[0, 0, 7].tolist() == list(range(5, 20)) + [128] * 5
    assert shifted[1, 0, 7].tolist() == [128] * 5 + list(range(0, 15))
    down = apply_op("TranslateY", ramp.transpose(2, 3), 10 / 0.45 * 0.25)
    assert down[0, 0, :, 3].tolist() == list(range(5, 20)) + [128] * 5
    sheared = apply_op("ShearX", ramp, 10)
    assert sheared[0, 0, 10].tolist() == ramp[0, 0, 10].tolist()  # the centre row does not move
    assert sheared[0, 0, 0].tolist() != ramp[0, 0, 0].tolist()
    assert torch.equal(apply_op("ShearX", ramp, 0), ramp) and torch.equal(apply_op("Rotate", ramp, 0), ramp)


@pytest.mark.parametrize("channels", [1, 3])
def test_every_op_keeps_shape_and_dtype(channels):
    x = rand_images(4, channels, 28)
    for op in RandAugment.OPS:
        out = apply_op(op, x, 9, torch.tensor([1.0, -1.0, 1.0, -1.0]))
        assert out.shape == x.shape and out.dtype == torch.uint8, op
    assert torch.equal(apply_op("Color", x[:, :1], 9), x[:, :1])  # nothing to saturate in grey


def test_randaugment_draws_ops_per_image():
    x = rand_images(1, 3, 16).expand(64, 3, 16, 16).contiguous()  # the same image 64 times
    out = RandAugment(1, 9)(x, gen(0))
    distinct = {o.numpy().tobytes() for o in out}
    assert len(distinct) >= 10  # 14 ops x 2 signs: per-image choices, not one policy for the whole batch
    assert torch.equal(RandAugment(1, 9)(x, gen(0)), out)
    assert torch.equal(RandAugment(0, 9)(x, gen(0)), x)
    assert torch.equal(RandAugment(2, 9, ops=("Identity",))(x, gen(0)), x)
    with pytest.raises(ValueError, match="unknown RandAugment ops"):
        RandAugment(2, 9, ops=("Invert",))


def test_random_erase_fills_one_box_with_noise_in_a_fraction_p_of_the_images():
    x = torch.zeros(2000, 3, 28, 28, dtype=torch.uint8)
    out = random_erase(x, gen(0), p=0.25)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    changed = out != 0  # noise is 0 with probability 1/256 only
    erased = changed.flatten(1).any(1)
    assert 0.22 < erased.float().mean() < 0.28  # 500 +- 19 expected
    fracs = []
    for img in changed[erased].any(1):  # (H, W) per erased image
        rows, cols = img.any(1).nonzero().flatten(), img.any(0).nonzero().flatten()
        box = img[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.float().mean() > 0.9  # one solid rectangle, not scattered pixels
        assert box.numel() == len(rows) * len(cols)  # contiguous rows and columns
        fracs.append(box.numel() / img.numel())
    fracs = torch.tensor(fracs)
    assert fracs.min() >= 0.015 and fracs.max() <= 0.36  # area fraction drawn in [0.02, 1/3], rounded to pixels
    assert 0.14 < fracs.mean() < 0.19  # U(0.02, 1/3) has mean 0.177; clipping oversized sides lowers it a little
    assert 120 < out[changed].float().mean() < 135  # uniform bytes: mean 127.5
    assert torch.equal(random_erase(x, gen(0), p=0.0), x)
    assert (random_erase(x, gen(1), p=1.0) != 0).flatten(1).any(1).all()
