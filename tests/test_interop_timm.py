"""timm state dicts: key round trips (.safetensors with vitkit metadata, plain weights-only .pth), architecture
from shapes, and one-line refusals (arbitrary pickles, truncated files, foreign keys, timm's fc_norm GAP head)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

import vitkit
from vitkit.checkpoint.io import load
from vitkit.cli import main
from vitkit.errors import UserError

FIX = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("base", ["vit_token", "vit_gap_oldkeys", "hybrid_r2", "vit_prelogits"])
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_round_trip(tmp_path, base, suffix):
    model = vitkit.load(FIX / f"{base}.npz").model
    out = tmp_path / f"m{suffix}"
    assert main(["convert", str(FIX / f"{base}.npz"), str(out)]) == 0
    if suffix == ".safetensors":
        from safetensors.torch import load_file
        keys = set(load_file(str(out)))
    else:
        keys = set(torch.load(out, weights_only=True))
    assert "patch_embed.proj.weight" in keys and "blocks.0.attn.qkv.weight" in keys
    assert ("patch_embed.backbone.stem.conv.weight" in keys) == (base == "hybrid_r2")
    assert ("pre_logits.fc.weight" in keys) == (base == "vit_prelogits")
    back = load(out, num_heads=model.cfg.num_heads)
    assert back.source == "timm"
    back = back.model
    if suffix == ".safetensors":  # vitkit metadata: config (official numerics) restored exactly
        assert back.cfg == model.cfg
    else:  # shapes only: a timm model, exact GELU
        assert back.cfg.gelu_approximate == "none"
        assert back.cfg.resnet == (None if model.cfg.resnet is None else {**model.cfg.resnet, "norm": "timm"})
        assert back.cfg.classifier == model.cfg.classifier and back.cfg.image_size == model.cfg.image_size
    sd1, sd2 = model.state_dict(), back.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)


class Thing:  # an arbitrary object: unpickling it would run its module's code
    pass


def test_timm_bad_files(tmp_path):
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"a": Thing()}, f)
    torch.save({"w": torch.zeros(1), "obj": Thing()}, tmp_path / "obj.pth")
    for p in (evil, tmp_path / "obj.pth"):
        with pytest.raises(UserError, match="arbitrary unpickling|not a readable"):
            vitkit.load(p).model
    good = tmp_path / "m.safetensors"
    main(["convert", str(FIX / "vit_token.npz"), str(good)])
    trunc = tmp_path / "t.safetensors"
    trunc.write_bytes(good.read_bytes()[:3000])
    with pytest.raises(UserError, match="t.safetensors"):
        vitkit.load(trunc).model
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match=r"foo\.weight"):
        vitkit.load(tmp_path / "other.pth").model
    sd = vitkit.load(FIX / "vit_token.npz").model.state_dict()
    sd["fc_norm.weight"] = torch.ones(16)
    torch.save(sd, tmp_path / "fc.pth")
    with pytest.raises(UserError, match="fc_norm"):
        vitkit.load(tmp_path / "fc.pth").model


def test_bad_pth_cli_one_line(tmp_path, capsys):
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump(Thing, f)
    assert main(["convert", str(tmp_path / "evil.pth"), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vitkit: error:") and "evil.pth" in err and "\n" not in err
