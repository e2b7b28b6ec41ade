"""Official .npz checkpoints: architecture inference, parity with the official implementation's logits (fixtures
made by running google-research/vision_transformer, see tests/fixtures/README.md), both key layouts, resizing,
write-back, and one-line errors for bad files."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import vitkit
from vitkit.checkpoint import npz as npzmod
from vitkit.cli import main
from vitkit.errors import UserError

FIX = Path(__file__).parent / "fixtures"
REF = np.load(FIX / "reference.npz")
CASES = ["vit_token", "vit_gap_oldkeys", "vit_prelogits", "hybrid_r2", "hybrid_stem", "vit_token@24",
         "hybrid_stem@40"]


def _inputs(case, dtype):
    return torch.from_numpy(REF[f"{case}/x"]).permute(0, 3, 1, 2).to(dtype)


def _logits(model, case, dtype):
    with torch.no_grad():
        return model.to(dtype)(_inputs(case, dtype)).numpy()


@pytest.mark.parametrize("case", CASES)
def test_official_parity(case):
    base, _, size = case.partition("@")
    model = vitkit.load(FIX / f"{base}.npz", image_size=int(size) if size else None).model
    assert np.abs(_logits(model, case, torch.float32) - REF[f"{case}/logits32"]).max() <= 5e-5
    assert np.abs(_logits(model, case, torch.float64) - REF[f"{case}/logits64"]).max() <= 1e-9


def test_inferred_architecture():
    cfg = vitkit.load(FIX / "vit_token.npz").model.cfg
    assert (cfg.hidden_size, cfg.depth, cfg.num_heads, cfg.mlp_dim, cfg.patch_size, cfg.image_size,
            cfg.classifier, cfg.num_classes, cfg.representation_size) == (16, 2, 2, 32, 4, 16, "token", 10, None)
    assert (cfg.layer_norm_eps, cfg.gelu_approximate) == (1e-6, "tanh")
    assert vitkit.load(FIX / "vit_gap_oldkeys.npz").model.cfg.classifier == "gap"
    assert vitkit.load(FIX / "vit_gap_oldkeys.npz").model.cfg.num_heads == 4
    assert vitkit.load(FIX / "vit_prelogits.npz").model.cfg.representation_size == 12
    loaded = vitkit.load(FIX / "hybrid_r2.npz")
    m = loaded.model
    assert m.cfg.resnet == {"layers": [1, 1], "width": 0.5} and m.cfg.image_size == 32 and m.cfg.grid_size == 4
    assert vitkit.load(FIX / "hybrid_stem.npz").model.cfg.resnet == {"layers": [], "width": 0.5}
    pre = loaded.preprocess
    assert (pre.image_size, pre.mean, pre.std, pre.resize) == (32, (0.5,) * 3, (0.5,) * 3, "bilinear")


def test_convert_cli_then_load(tmp_path):
    out = tmp_path / "ckpt"
    assert main(["convert", str(FIX / "vit_token.npz"), str(out), "--image-size", "24"]) == 0
    loaded = vitkit.load(out)
    model = loaded.model
    assert loaded.source == "vitkit" and model.cfg.image_size == 24
    assert loaded.preprocess.image_size == 24 and loaded.preprocess.mean == (0.5,) * 3
    assert np.abs(_logits(model, "vit_token@24", torch.float64) - REF["vit_token@24/logits64"]).max() <= 1e-9
    out2 = tmp_path / "ckpt10"
    assert main(["convert", str(FIX / "vit_prelogits.npz"), str(out2), "--num-classes", "3"]) == 0
    m2 = vitkit.load(out2).model
    assert m2.cfg.num_classes == 3 and m2.cfg.representation_size == 12 and not m2.head.weight.any()


@pytest.mark.parametrize("base", ["vit_gap_oldkeys", "hybrid_r2", "vit_prelogits"])
def test_npz_round_trip(tmp_path, base):
    model = vitkit.load(FIX / f"{base}.npz").model
    out = tmp_path / "back.npz"
    assert main(["convert", str(FIX / f"{base}.npz"), str(out), "--to", "npz"]) == 0
    orig = npzmod.canonicalize(dict(np.load(FIX / f"{base}.npz")))
    back = dict(np.load(out))
    assert back.keys() == orig.keys()
    assert all(np.array_equal(back[k], orig[k]) for k in orig)
    again = vitkit.load(out).model
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def _rewrite(src, dst, edit):
    flat = dict(np.load(src))
    edit(flat)
    np.savez(dst, **flat)
    return dst


def test_bad_files(tmp_path):
    bad = tmp_path / "not.npz"
    bad.write_text("hello")
    with pytest.raises(UserError, match="not a readable .npz"):
        vitkit.load(bad).model
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes((FIX / "vit_token.npz").read_bytes()[:20000])
    with pytest.raises(UserError, match="trunc.npz"):
        vitkit.load(trunc).model
    with pytest.raises(UserError, match=r"unexpected \['extra/kernel'\]"):
        vitkit.load(_rewrite(FIX / "vit_token.npz", tmp_path / "x.npz", lambda f: f.update({"extra/kernel": f["cls"]}))).model
    with pytest.raises(UserError, match="missing.*encoderblock_1/LayerNorm_1/scale"):
        vitkit.load(_rewrite(FIX / "vit_token.npz", tmp_path / "m.npz",
                             lambda f: f.pop("Transformer/encoderblock_1/LayerNorm_1/scale"))).model
    with pytest.raises(UserError, match="query kernel"):
        vitkit.load(_rewrite(FIX / "vit_token.npz", tmp_path / "q.npz", lambda f: f.update({
            "Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel": np.zeros((16, 3, 4))}))).model
    with pytest.raises(UserError, match="not a square"):
        vitkit.load(_rewrite(FIX / "vit_token.npz", tmp_path / "p.npz", lambda f: f.update({
            "Transformer/posembed_input/pos_embedding": np.zeros((1, 16, 16))}))).model
    with pytest.raises(UserError, match="unknown hybrid ResNet layout"):
        vitkit.load(_rewrite(FIX / "hybrid_r2.npz", tmp_path / "h.npz", lambda f: [
            f.update({k.replace("block2/", "block3/"): f.pop(k)}) for k in list(f) if k.startswith("block2/")])).model
    with pytest.raises(UserError, match="gn_root/scale"):
        vitkit.load(_rewrite(FIX / "hybrid_stem.npz", tmp_path / "g.npz", lambda f: f.update({
            "gn_root/scale": np.zeros(48, np.float32)}))).model


def test_bad_file_cli_one_line(tmp_path, capsys):
    bad = tmp_path / "x.npz"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("a.npy", b"garbage")
    assert main(["convert", str(bad), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vitkit: error:") and "x.npz" in err and "\n" not in err


def test_bfloat16_npz(tmp_path):
    """bfloat16 checkpoints (numpy stores ml_dtypes' bfloat16 as raw 2-byte void) load as float32."""
    def to_bf16_void(a):
        return (a.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).view("V2")

    flat = dict(np.load(FIX / "vit_token.npz"))
    np.savez(tmp_path / "bf16.npz", **{k: to_bf16_void(v) for k, v in flat.items()})
    model, ref = vitkit.load(tmp_path / "bf16.npz").model, vitkit.load(FIX / "vit_token.npz").model
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert a.dtype == torch.float32 and torch.allclose(a, b, rtol=2**-7, atol=0), k


def test_optimizer_wrapped_npz(tmp_path):
    """Old official files saved the flax optimizer: parameters under opt/target/, optimizer state beside them."""
    flat = dict(np.load(FIX / "vit_gap_oldkeys.npz"))
    wrapped = {f"opt/target/{k}": v for k, v in flat.items()}
    wrapped["opt/state/step"] = np.array(10)
    wrapped["opt/state/param_states/cls/grad_ema"] = np.zeros(3, np.float32)
    np.savez(tmp_path / "opt.npz", **wrapped)
    model, ref = vitkit.load(tmp_path / "opt.npz").model, vitkit.load(FIX / "vit_gap_oldkeys.npz").model
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))


def test_headless_npz(tmp_path):
    flat = {k: v for k, v in np.load(FIX / "vit_prelogits.npz").items() if not k.startswith("head/")}
    np.savez(tmp_path / "nohead.npz", **flat)
    with pytest.raises(UserError, match="--num-classes"):
        vitkit.load(tmp_path / "nohead.npz").model
    model = vitkit.load(tmp_path / "nohead.npz", num_classes=4).model
    assert model.cfg.num_classes == 4 and model.head.in_features == 12 and not model.head.weight.any()
