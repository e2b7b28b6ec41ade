"""BiT ResNets (vitkit/resnet.py): the official architecture's parameter counts, variant names, the official code's
logits on an official-layout .npz (tests/fixtures/bit_reference.npz), writing the official format, FLOPs, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fixtures.bit_weights import official_bit_weights
from vitkit.checkpoint.bit_npz import is_bit_npz, load_bit_npz, save_bit_npz
from vitkit.cli import main as cli_main
from vitkit.errors import UserError
from vitkit.resnet import BiT, BiTConfig, BiTConv, bit_config, create_bit

FIXTURES = Path(__file__).parent / "fixtures"

# Parameter counts of the official definition: google-research/big_transfer, bit_pytorch/models.py (commit 140de6e),
# KNOWN_MODELS[...](head_size=K) counted with sum(p.numel()), for K = 1000 and K = 21843 (the BiT-M checkpoints'
# head). R26x1 is ResNetV2([2, 2, 2, 2], 1), the same class with the paper's R26 depth.
OFFICIAL_PARAMS = {
    "BiT-R50x1": (25_549_352, 68_256_659),
    "BiT-R50x3": (217_319_080, 345_399_315),
    "BiT-R101x1": (44_541_480, 87_248_787),
    "BiT-R101x3": (387_934_888, 516_015_123),
    "BiT-R152x2": (236_335_208, 321_728_979),
    "BiT-R152x4": (936_533_224, 1_107_299_923),
    "BiT-R26x1": (15_987_496, 58_694_803),
}


@pytest.mark.parametrize("name", list(OFFICIAL_PARAMS))
def test_param_counts_match_the_official_definition(name):
    for classes, want in zip((1000, 21843), OFFICIAL_PARAMS[name]):
        with torch.device("meta"):
            model = create_bit(name, num_classes=classes)
        assert model.num_params() == want, (name, classes)


def test_small_image_variants():
    # the 3x3/1 root replaces the 7x7/2 root: 7*7*3*64 - 3*3*3*64 = 7,680 parameters fewer than BiT-R26x1
    with torch.device("meta"):
        assert create_bit("BiT-R26x1-S").num_params() == 15_987_496 - 7_680
    cfg = bit_config("BiT-R26x1-S")
    assert (cfg.root, cfg.image_size, cfg.stride, cfg.layers) == ("small", 32, 8, (2, 2, 2, 2))
    feats = create_bit("BiT-R14x1-S", num_classes=3, width=0.5).eval().forward_features(torch.randn(2, 3, 32, 32))
    assert feats.shape == (2, 1024, 4, 4)  # 32 px -> 4x4: the map BiT's standard root leaves at 128 px
    standard = create_bit("BiT-R14x1", num_classes=3, width=0.5).eval()
    assert standard.forward_features(torch.randn(1, 3, 128, 128)).shape[-1] == 4


def test_variant_names():
    assert bit_config("BiT-M-R50x1") == bit_config("BiT-S-R50x1") == bit_config("bit_r50x1")
    assert bit_config("BiT-M-R50x1").name == "BiT-R50x1"
    c = bit_config("bit-r152x4")
    assert (c.layers, c.width, c.root_width, c.num_features, c.depth) == ((3, 8, 36, 3), 4, 256, 8192, 152)
    assert bit_config("BiT-R101x3").layers == (3, 4, 23, 3) and bit_config("BiT-R26x2-S").name == "BiT-R26x2-S"
    assert bit_config("BiT-R50x1", num_classes=10, image_size=128).image_size == 128
    for bad in ("BiT-R34x1", "BiT-R50x0", "BiT-R50", "ResNet50"):
        with pytest.raises(ValueError, match="unknown BiT variant"):
            bit_config(bad)


def test_config_round_trip():
    cfg = bit_config("BiT-R26x1-S", num_classes=10)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["family"] == "bit" and d["layers"] == [2, 2, 2, 2]
    assert BiTConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="unknown BiT config keys"):
        BiTConfig.from_dict({**d, "patch_size": 16})
    with pytest.raises(UserError, match="unknown hybrid ResNet layout"):  # the shared layout check
        BiTConfig(layers=(2, 2), width=0.25)


def _official_npz(tmp_path, dtype=np.float32):
    ref = np.load(FIXTURES / "bit_reference.npz", allow_pickle=False)
    weights = official_bit_weights(str(ref["spec"]), dtype)
    path = tmp_path / "bit.npz"
    np.savez(path, **weights)
    return path, ref, weights


@pytest.mark.parametrize("size", [36, 29])
def test_official_logits(tmp_path, size):
    """The official bit_pytorch ResNetV2 (block units 2-2-1-1, width factor 0.5, 7 classes) on this .npz."""
    path, ref, _ = _official_npz(tmp_path)
    assert is_bit_npz(path)
    model, pre, _ = load_bit_npz(path)
    cfg = model.cfg
    assert (cfg.layers, cfg.width, cfg.root, cfg.num_classes, cfg.image_size) == ((2, 2, 1, 1), 0.5, "standard", 7,
                                                                                   224)
    assert pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.5, 0.5, 0.5)
    with torch.no_grad():
        out = model.eval()(torch.from_numpy(ref[f"x{size}"])).numpy()
    np.testing.assert_allclose(out, ref[f"logits32_{size}"], atol=5e-5, rtol=0)
    (tmp_path / "f64").mkdir()
    path64, _, _ = _official_npz(tmp_path / "f64", np.float64)
    model64, _, _ = load_bit_npz(path64)
    assert next(model64.parameters()).dtype == torch.float64
    with torch.no_grad():
        out64 = model64.eval()(torch.from_numpy(ref[f"x{size}"]).double()).numpy()
    np.testing.assert_allclose(out64, ref[f"logits64_{size}"], atol=1e-9, rtol=0)


def test_write_official_format(tmp_path):
    """save_bit_npz writes exactly the official names and shapes, and reads back to the same model."""
    path, ref, weights = _official_npz(tmp_path)
    model, _, _ = load_bit_npz(path)
    out = save_bit_npz(model, tmp_path / "out" / "again.npz")
    with np.load(out, allow_pickle=False) as f:
        written = {k: f[k] for k in f.files}
    assert written.keys() == weights.keys()
    for k, v in weights.items():
        assert written[k].shape == v.shape and written[k].dtype == np.float32 and np.array_equal(written[k], v), k
    back, _, _ = load_bit_npz(out)
    for (n, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), n


def test_new_head_and_resolution(tmp_path):
    path, ref, weights = _official_npz(tmp_path)
    model, pre, _ = load_bit_npz(path, num_classes=3, image_size=128)
    assert model.cfg.num_classes == 3 and model.cfg.image_size == 128 and pre.image_size == 128
    assert not model.head.weight.any() and not model.head.bias.any()  # zero head, as the official zero_head=True
    assert torch.equal(model.stem.weight, torch.from_numpy(
        weights["resnet/root_block/standardized_conv2d/kernel"].transpose(3, 2, 0, 1)))
    headless = {k: v for k, v in weights.items() if "/head/" not in k}
    np.savez(tmp_path / "headless.npz", **headless)
    with pytest.raises(UserError, match="no classification head"):
        load_bit_npz(tmp_path / "headless.npz")
    assert load_bit_npz(tmp_path / "headless.npz", num_classes=5)[0].cfg.num_classes == 5


def test_bad_files_name_the_tensor(tmp_path):
    _, _, weights = _official_npz(tmp_path)
    cases = {
        "missing": ({k: v for k, v in weights.items() if k != "resnet/block2/unit02/b/group_norm/beta"},
                    "missing.*block2/unit02/b/group_norm/beta"),
        "unexpected": ({**weights, "resnet/block1/unit01/d/group_norm/gamma": np.ones(32, np.float32)},
                       "unexpected.*unit01/d/group_norm/gamma"),
        "shape": ({**weights, "resnet/block3/unit01/c/standardized_conv2d/kernel": np.ones((1, 1, 128, 7),
                                                                                          np.float32)},
                  "block3/unit01/c/standardized_conv2d/kernel has shape \\(1, 1, 128, 7\\)"),
        "root": ({**weights, "resnet/root_block/standardized_conv2d/kernel": np.ones((5, 5, 3, 32), np.float32)},
                 "root_block/standardized_conv2d/kernel has shape \\(5, 5, 3, 32\\)"),
    }
    for case, (flat, message) in cases.items():
        np.savez(tmp_path / f"{case}.npz", **flat)
        with pytest.raises(UserError, match=message):
            load_bit_npz(tmp_path / f"{case}.npz")
    # tensors outside resnet/ are not read, as the official loaders do not read them
    np.savez(tmp_path / "extra.npz", **weights, global_step=np.array(5))
    assert load_bit_npz(tmp_path / "extra.npz")[0].cfg.num_classes == 7
    assert not is_bit_npz(FIXTURES / "vit_token.npz")


def test_weight_standardisation_and_padding():
    conv = BiTConv(4, 8, 3, stride=2)
    w = conv.weight.detach().double()
    c = w - w.mean(dim=(1, 2, 3), keepdim=True)
    want = c / (c.pow(2).mean(dim=(1, 2, 3), keepdim=True) + 1e-10).sqrt()
    assert torch.allclose(conv.standardized_weight().double(), want, atol=1e-6)
    x = torch.randn(1, 4, 8, 8)  # stride 2 on an even size: one pixel of zeros on *both* sides (TF SAME: after only)
    assert torch.allclose(conv(x), F.conv2d(F.pad(x, (1, 1, 1, 1)), conv.standardized_weight(), stride=2))


def test_pre_activation_unit():
    """A unit's shortcut is the input itself where the shape is kept; the projection sees the activated input."""
    model = BiT(BiTConfig(layers=(2,), width=0.5, num_classes=2, image_size=16))
    u0, u1 = model.stages[0]
    assert u0.downsample is not None and u1.downsample is None
    x = torch.randn(2, 128, 4, 4)
    torch.nn.init.zeros_(u1.conv3.weight)  # standardised zeros: the residual branch adds nothing
    assert torch.allclose(u1(x), x)
    a = F.relu(u0.norm1(torch.randn(2, 32, 4, 4)))
    assert u0.downsample(a).shape == (2, 128, 4, 4)


def test_flops_count_every_convolution():
    model = create_bit("BiT-R14x1", num_classes=10, image_size=45)
    counted = []

    def hook(m, inp, out):
        counted.append(2 * out.shape[-2] * out.shape[-1] * m.in_channels * m.out_channels * m.kernel_size[0] ** 2)

    for m in model.modules():
        if isinstance(m, BiTConv):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.zeros(1, 3, 45, 45))
    assert model.flops_per_image() == sum(counted) + 2 * 2048 * 10
    assert model.flops_per_image(224) > model.flops_per_image()


def test_trains_and_checkpoints_gradients():
    torch.manual_seed(0)
    model = BiT(BiTConfig(layers=(1, 1), width=0.5, root="small", num_classes=3, image_size=16)).train()
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    F.cross_entropy(model(x), y).backward()
    assert model.head.weight.grad.abs().sum() > 0 and model.stem.weight.grad.abs().sum() == 0  # zero head
    torch.nn.init.normal_(model.head.weight)
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert grads["stem.weight"].abs().sum() > 0
    model.zero_grad()
    model.set_grad_checkpointing(True)
    F.cross_entropy(model(x), y).backward()
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, grads[n], atol=1e-6), n


def test_models_command_lists_bit(capsys):
    assert cli_main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["models"]}
    for name, (params, _) in OFFICIAL_PARAMS.items():
        assert rows[name]["params"] == params and rows[name]["family"] == "bit"
    assert rows["BiT-R26x1-S"]["image_size"] == 32 and rows["BiT-R26x1-S"]["root"] == "small"
    with torch.device("meta"):
        r50 = create_bit("BiT-R50x1")
    assert math.isclose(rows["BiT-R50x1"]["gflops"], r50.flops_per_image() / 1e9, abs_tol=1e-3)
    assert rows["ViT-B/16"]["params"] == 86_567_656  # the ViT rows are still there
    assert cli_main(["models"]) == 0
    assert "BiT-R152x4           224   8192   152     -     -   936,533,224" in capsys.readouterr().out
