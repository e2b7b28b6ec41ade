"""Hybrid R+ViT models (paper section 3.1): named variants, exact parameter counts, the ResNet's TF "SAME"
padding and weight standardisation. Official-output parity of hybrids is in test_interop_npz.py."""

from __future__ import annotations

import pytest
import torch

from vitkit import create_model, variant_config
from vitkit.errors import UserError
from vitkit.hybrid import ResNetStem, StdConv2d, resnet_stride, same_pad


@pytest.mark.parametrize("name, params", [("R50+ViT-B/16", 98_659_112), ("R26+ViT-S/32", 36_431_912),
                                          ("R+ViT-Ti/16", 6_337_704)])
def test_param_counts(name, params):
    with torch.device("meta"):
        model = create_model(name)
    assert model.num_params() == params
    assert model.cfg.image_size == 224 and model.cfg.num_classes == 1000


def test_small_image_hybrid_param_counts_by_hand():
    """vitkit's 32 px hybrids: root block (7x7 StdConv 3->64, no bias; GroupNorm 64), 2x2 patches 64->192, then the
    Mini (6 blocks) or Ti (12 blocks) Transformer of width 192, MLP 768, 16 + 1 tokens, 1000 classes."""
    d, mlp, tokens = 192, 768, 4 * 4 + 1
    root = 3 * 7 * 7 * 64 + 2 * 64
    embed = 64 * 2 * 2 * d + d + d + tokens * d  # patch conv + bias, [class] token, position embeddings
    block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * mlp + mlp) + (mlp * d + d)
    head = 2 * d + d * 1000 + 1000  # final LayerNorm, classifier
    for name, depth in (("R+ViT-Mini/8", 6), ("R+ViT-Ti/8", 12)):
        with torch.device("meta"):
            model = create_model(name)
        assert model.cfg.image_size == 32 and model.cfg.grid_size == 4
        assert model.num_params() == root + embed + depth * block + head, name
    # R1+ViT-Mini/8: one bottleneck unit (64 -> mid 64 -> 256, stride 1) after the root, so the 2x2 patches read 256
    # channels: a 1x1 projection shortcut + GN 256, then 1x1, 3x3, 1x1 StdConvs (no bias) each with its GroupNorm
    unit = (64 * 256 + 2 * 256) + (64 * 64 + 2 * 64) + (9 * 64 * 64 + 2 * 64) + (64 * 256 + 2 * 256)
    embed = 256 * 2 * 2 * d + d + d + tokens * d
    with torch.device("meta"):
        model = create_model("R1+ViT-Mini/8")
    assert model.cfg.image_size == 32 and model.cfg.grid_size == 4 and model.cfg.stem_stride == 8
    assert model.num_params() == root + unit + embed + 6 * block + head == 3_147_368


def test_variants_parse():
    assert variant_config("R50+ViT-B/16").resnet == {"layers": [3, 4, 9], "width": 1}
    assert variant_config("r50+vit-b_16").stem_stride == 16
    assert variant_config("R26+S/32").name == "R26+ViT-S/32" and variant_config("R+Ti/16").name == "R+ViT-Ti/16"
    assert variant_config("R26+ViT-B/32").grid_size == 7
    assert variant_config("R50+ViT-L/32").resnet["layers"] == [3, 4, 6, 3]
    assert variant_config("R+ViT-Ti/16").patch_size == 8 and variant_config("R+ViT-Ti/16").grid_size == 7
    small = variant_config("r+vit-mini_8")  # vitkit's small-image hybrid: 8 px per token at its own 32 px
    assert (small.image_size, small.patch_size, small.stem_stride, small.grid_size) == (32, 2, 8, 4)
    with pytest.raises(ValueError, match="R50\\+ViT-B/16"):
        variant_config("R101+ViT-B/16")


def test_same_padding_and_strides():
    assert same_pad(224, 7, 2) == (2, 3) and same_pad(112, 3, 2) == (0, 1) and same_pad(7, 3, 2) == (1, 1)
    assert same_pad(8, 3, 1) == (1, 1) and same_pad(8, 1, 2) == (0, 0)
    assert resnet_stride({"layers": [3, 4, 9], "width": 1}) == 16 and resnet_stride({"layers": []}) == 4
    stem = ResNetStem({"layers": [1, 1], "width": 0.5})
    assert stem.out_chans == 256
    for size in (32, 30, 33):  # even and odd sizes: output ceil(size / 8)
        assert stem(torch.zeros(1, 3, size, size)).shape[-1] == -(-size // 8)


def test_weight_standardisation():
    conv = StdConv2d(4, 8, 3)
    w = conv.standardized_weight().double()
    assert torch.allclose(w.mean(dim=(1, 2, 3)), torch.zeros(8, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(w.std(dim=(1, 2, 3), unbiased=False), torch.ones(8, dtype=torch.float64), atol=1e-3)


def test_unknown_layout():
    with pytest.raises(UserError, match="unknown hybrid ResNet layout"):
        ResNetStem({"layers": [3, 0]})
    with pytest.raises(UserError, match="unknown hybrid ResNet layout"):
        ResNetStem({"depths": [3, 4]})


def test_hybrid_trains_a_step():
    model = create_model("R+ViT-Ti/16", num_classes=3, image_size=64, depth=1)
    loss = model(torch.randn(2, 3, 64, 64)).logsumexp(-1).sum()
    loss.backward()
    assert model.stem.stem.conv.weight.grad is not None


def test_timm_norm_constants():
    official = ResNetStem({"layers": [1], "width": 0.5})
    timm = ResNetStem({"layers": [1], "width": 0.5, "norm": "timm"})
    assert official.stem.norm.eps == 1e-6 and timm.stem.norm.eps == 1e-5
    timm.load_state_dict(official.state_dict())
    w = official.stem.conv.weight.detach().double()
    c = w - w.mean(dim=(1, 2, 3), keepdim=True)
    var = c.pow(2).mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(timm.stem.conv.standardized_weight().double(), c / (var + 1e-8).sqrt(), atol=1e-6)
    assert torch.allclose(official.stem.conv.standardized_weight().double(), c / (var.sqrt() + 1e-5), atol=1e-6)
