"""`vitkit.load()` answers as the nn.Module it holds, and the commands built on it (predict --explain, eval) work on
the shipped names: each test here failed before the fix it names."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import vitkit
from vitkit import cli
from vitkit.errors import UserError
from vitkit.runtime import head_is_blank

SHIPPED = ["ViT-Mini_8-tiny-imagenet", "R+ViT-Mini_8-tiny-imagenet"]


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(path)
    return path


def test_module_conventions_return_the_loaded_model():
    loaded = vitkit.load(SHIPPED[0])
    same = loaded.eval().to("cpu")
    assert same is loaded and not loaded.training and not loaded.model.training
    assert loaded.train() is loaded and loaded.model.training
    assert loaded.double() is loaded and next(loaded.model.parameters()).dtype == torch.float64
    assert loaded.float() is loaded and loaded.requires_grad_(False) is loaded
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in loaded.model.parameters())
    sd = loaded.state_dict()
    assert sd.keys() == loaded.model.state_dict().keys() and "head.weight" in sd  # no wrapper prefix
    fresh = type(loaded.model)(loaded.config)
    fresh.load_state_dict(sd)  # loads into a bare model as it is
    x = torch.randn(2, 3, 64, 64)
    loaded.eval()
    torch.testing.assert_close(fresh.eval()(x), loaded(x), rtol=0, atol=0)
    assert loaded.preprocess.image_size == 64 and len(loaded.class_names) == 200  # what it carries stays
    with pytest.raises(AttributeError, match="nosuch.*neither has its model"):
        loaded.nosuch


def test_a_uint8_batch_is_one_clear_error():
    loaded = vitkit.load(SHIPPED[0])
    with pytest.raises(UserError, match="float batch.*uint8.*to_model_input"):
        loaded(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


@pytest.mark.parametrize("name", SHIPPED)
def test_predict_explain_on_shipped_names(name, photo, tmp_path, capsys):
    out = tmp_path / "explain.png"
    assert cli.main(["predict", name, str(photo), "--explain", str(out), "--topk", "3", "--json"]) == 0
    top = json.loads(capsys.readouterr().out.splitlines()[0])["top"]
    assert len(top) == 3 and out.stat().st_size > 1000
    from vitkit.analysis.explain import explain

    res = explain(vitkit.load(name), str(photo), topk=3)
    assert [t["class"] for t in res["topk"]] == [t["class"] for t in top]
    assert res["map"].shape == (8, 8) and np.isfinite(res["map"]).all()


def test_a_model_without_a_trained_head_is_refused(tmp_path, photo, capsys):
    pytest.importorskip("transformers")
    out = tmp_path / "hf-model"
    assert cli.main(["convert", SHIPPED[0], str(out), "--to", "hf-model"]) == 0
    loaded = vitkit.load(str(out))
    assert head_is_blank(loaded) and not head_is_blank(vitkit.load(SHIPPED[0]))
    capsys.readouterr()
    for argv in (["predict", str(out), str(photo)], ["eval", str(out), "--dataset", "embedded"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no trained classification head" in err[0], err


def test_pretrained_footnote_names_the_datasets_scored():
    from vitkit.checkpoint.hub import registry
    from vitkit.cli_models import pretrained_table

    note = " ".join(ln for ln in pretrained_table([p.to_dict() for p in registry().values()]) if ln.startswith("("))
    assert "last dataset in the dataset column" in note and "ImageNet accuracy" not in note
