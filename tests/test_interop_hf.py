"""Hugging Face interop: random transformers models -> vitkit (logits within 1e-5), vitkit -> HF folder ->
transformers (same tensors, same logits), ViTModel pooler = pre-logits, refusals in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import vitkit
from vitkit.cli import main
from vitkit.errors import UserError

transformers = pytest.importorskip("transformers", reason="transformers is needed for the Hugging Face tests")
FIX = Path(__file__).parent / "fixtures"


def _hf_model(cls=None, **kw):
    cfg = transformers.ViTConfig(**{**dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                           intermediate_size=48, image_size=32, patch_size=8, num_labels=5), **kw})
    torch.manual_seed(0)
    model = (cls or transformers.ViTForImageClassification)(cfg).eval()
    with torch.no_grad():  # HF initialises the cls token/biases to constants; make everything random
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def test_hf_to_vitkit_parity(tmp_path):
    hf = _hf_model()
    hf.save_pretrained(tmp_path / "hf")
    loaded = vitkit.load(tmp_path / "hf")
    model = loaded.model
    assert loaded.source == "huggingface"
    assert (model.cfg.layer_norm_eps, model.cfg.gelu_approximate) == (1e-12, "none")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want, got = hf(pixel_values=x).logits, model(x)
    assert (want - got).abs().max() <= 1e-5
    assert loaded.class_names == [f"LABEL_{i}" for i in range(5)]
    # through the CLI into a vitkit checkpoint and back out to HF: the same tensors
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "ck")]) == 0
    assert main(["convert", str(tmp_path / "ck"), str(tmp_path / "hf2"), "--to", "hf"]) == 0
    back = transformers.ViTForImageClassification.from_pretrained(tmp_path / "hf2").eval()
    sd1, sd2 = hf.state_dict(), back.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)


def test_vitkit_to_hf_official_numerics(tmp_path):
    """An official checkpoint written as HF keeps eps 1e-6 and tanh GELU: transformers reproduces its logits."""
    model = vitkit.load(FIX / "vit_token.npz").model
    assert main(["convert", str(FIX / "vit_token.npz"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["hidden_act"] == "gelu_pytorch_tanh" and cfg["layer_norm_eps"] == 1e-6
    hf = transformers.ViTForImageClassification.from_pretrained(tmp_path / "hf").eval()
    ref = np.load(FIX / "reference.npz")
    x = torch.from_numpy(ref["vit_token/x"]).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        got = hf(pixel_values=x).logits
        assert (got - model(x)).abs().max() <= 1e-5
    assert np.abs(got.numpy() - ref["vit_token/logits32"]).max() <= 5e-5


def test_hf_vitmodel_pooler_is_pre_logits(tmp_path):
    hf = _hf_model(transformers.ViTModel)
    hf.save_pretrained(tmp_path / "m")
    model = vitkit.load(tmp_path / "m", num_classes=3).model
    assert model.cfg.representation_size == 32 and model.cfg.num_classes == 3
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = hf(pixel_values=x)
        feats = model.forward_features(x)
        assert (out.last_hidden_state - feats).abs().max() <= 1e-5
        assert (out.pooler_output - model.forward_pre_logits(feats)).abs().max() <= 1e-5
    from vitkit.checkpoint.hf import save_hf, save_hf_model
    with pytest.raises(UserError, match="pre-logits"):
        save_hf(model, tmp_path / "no")
    save_hf_model(model, tmp_path / "m2")
    back = transformers.ViTModel.from_pretrained(tmp_path / "m2").eval()
    with torch.no_grad():
        assert (back(pixel_values=x).pooler_output - out.pooler_output).abs().max() == 0


def test_hf_refuses_what_it_cannot_hold(tmp_path):
    with pytest.raises(UserError, match="global average pooling"):
        vitkit.checkpoint.hf.save_hf(vitkit.load(FIX / "vit_gap_oldkeys.npz").model, tmp_path / "x")
    with pytest.raises(UserError, match="hybrid ResNet"):
        vitkit.checkpoint.hf.save_hf(vitkit.load(FIX / "hybrid_r2.npz").model, tmp_path / "y")


def test_hf_weights_only_bin_and_bad_folder(tmp_path):
    """A folder with pytorch_model.bin (read with weights_only=True) instead of safetensors; a truncated file."""
    from safetensors.torch import load_file

    hf = _hf_model()
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    torch.save(load_file(str(tmp_path / "hf" / "model.safetensors")), tmp_path / "bin" / "pytorch_model.bin")
    model = vitkit.load(tmp_path / "bin").model
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (hf(pixel_values=x).logits - model(x)).abs().max() <= 1e-5
    f = tmp_path / "hf" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(UserError, match="model.safetensors"):
        vitkit.load(tmp_path / "hf").model
