"""Native checkpoints (atomic, strict) and fine-tuning surgery checked against scipy, as the official code does it."""

import json

import numpy as np
import pytest
import torch

import vitkit
from vitkit.checkpoint.io import load_state_dict_strict, save_checkpoint
from vitkit.checkpoint.surgery import adapt_model, drop_pre_logits, reset_head, resize_pos_embed
from vitkit.data.preprocess import Preprocess
from vitkit.errors import UserError


def _model(**kw):
    torch.manual_seed(0)
    m = vitkit.create_model("ViT-testing/4", num_classes=kw.pop("num_classes", 4), image_size=16, **kw)
    for p in m.parameters():
        p.data.normal_(0, 0.2)
    return m.eval()


def test_resize_pos_embed_matches_scipy_zoom_order1():
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    torch.manual_seed(0)
    posemb = torch.randn(1, 1 + 7 * 7, 6, dtype=torch.float64)
    for new in (12, 5, 7):
        ours = resize_pos_embed(posemb, new, num_prefix_tokens=1)
        grid = posemb[0, 1:].reshape(7, 7, 6).numpy()
        ref = scipy_ndimage.zoom(grid, (new / 7, new / 7, 1), order=1)  # official vit_jax load_pretrained
        assert ours.shape == (1, 1 + new * new, 6)
        np.testing.assert_allclose(ours[0, 1:].reshape(new, new, 6).numpy(), ref, atol=1e-12)
        assert torch.equal(ours[:, :1], posemb[:, :1])  # class token row kept apart


def test_resize_pos_embed_torch_fallback_matches_scipy(monkeypatch):
    """Without scipy, surgery interpolates in torch (bilinear, aligned corners): the same numbers to 1e-12."""
    import sys

    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    posemb = torch.randn(1, 1 + 7 * 7, 6, dtype=torch.float64)
    ref = scipy_ndimage.zoom(posemb[0, 1:].reshape(7, 7, 6).numpy(), (12 / 7, 12 / 7, 1), order=1)
    monkeypatch.setitem(sys.modules, "scipy.ndimage", None)  # `import scipy.ndimage` now raises ImportError
    ours = resize_pos_embed(posemb, 12, num_prefix_tokens=1)
    np.testing.assert_allclose(ours[0, 1:].reshape(12, 12, 6).numpy(), ref, atol=1e-12)
    assert torch.equal(ours[:, :1], posemb[:, :1])


def test_resize_pos_embed_without_class_token():
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    posemb = torch.randn(1, 16, 3, dtype=torch.float64)
    ours = resize_pos_embed(posemb, 6, num_prefix_tokens=0)
    ref = scipy_ndimage.zoom(posemb[0].reshape(4, 4, 3).numpy(), (1.5, 1.5, 1), order=1)
    np.testing.assert_allclose(ours[0].reshape(6, 6, 3).numpy(), ref, atol=1e-12)


def test_adapt_model_new_classes_new_resolution():
    m = _model(representation_size=8)
    new = adapt_model(m, num_classes=7, image_size=24)
    assert new.cfg.num_classes == 7 and new.cfg.image_size == 24 and new.pre_logits is None
    assert torch.count_nonzero(new.head.weight) == 0
    assert new.pos_embed.shape == (1, 1 + 36, 16)
    assert torch.equal(new.blocks[0].attn.qkv.weight, m.blocks[0].attn.qkv.weight)
    assert new(torch.randn(2, 3, 24, 24)).shape == (2, 7)


def test_adapt_resizes_the_preprocessing_with_the_model():
    from PIL import Image

    from vitkit.checkpoint.surgery import adapt
    from vitkit.data.preprocess import Preprocess
    from vitkit.runtime import LoadedModel

    m = _model()
    loaded = LoadedModel(m, Preprocess(image_size=m.cfg.image_size, resize="bicubic"), list("abcd"))
    new = adapt(loaded, image_size=24)
    assert new.preprocess == Preprocess(image_size=24, resize="bicubic")  # only the size changed
    assert new.class_names == list("abcd") and new.config.image_size == 24
    assert new(new.preprocess([Image.new("RGB", (50, 30))])).shape == (1, 4)
    assert adapt(loaded, num_classes=3).class_names == ["0", "1", "2"]  # a new head: the old names are gone


def test_reset_head_and_drop_pre_logits():
    m = _model(representation_size=8)
    assert reset_head(m, 3).head.weight.shape == (3, 8)
    d = drop_pre_logits(m)
    assert d.pre_logits is None and d.head.weight.shape == (4, 16)


def test_save_load_round_trip(tmp_path):
    m = _model()
    pre = Preprocess(image_size=16, channels=3, mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7))
    save_checkpoint(tmp_path / "ck", m, pre, ["a", "b", "c", "d"], train_state={"step": torch.tensor(3)})
    loaded = vitkit.load(tmp_path / "ck")
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(loaded(x), m(x))  # vitkit.load(path)(x) runs the model
    assert loaded.source == "vitkit" and loaded.config == m.cfg and not hasattr(loaded.model, "preprocess")
    assert loaded.preprocess == pre and loaded.class_names == ["a", "b", "c", "d"]
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["format"] == "vitkit"


def test_overwrite_is_atomic_and_leaves_no_temporaries(tmp_path, monkeypatch):
    m = _model()
    save_checkpoint(tmp_path / "ck", m)
    m2 = _model()
    m2.head.bias.data.fill_(1.0)

    class Boom(Exception):
        pass

    def crash(*a, **k):  # the process dies while the new checkpoint is being written
        raise Boom

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(Boom):
        save_checkpoint(tmp_path / "ck", m2, train_state={"step": 1})
    loaded = vitkit.load(tmp_path / "ck").model  # the old checkpoint is intact
    assert torch.equal(loaded.head.bias, m.head.bias)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_load_falls_back_to_previous_after_crash_between_renames(tmp_path):
    m = _model()
    save_checkpoint(tmp_path / "ck", m)
    (tmp_path / "ck").rename(tmp_path / ".ck.old")  # the state a crash between the two renames leaves
    assert torch.equal(vitkit.load(tmp_path / "ck").model.head.bias, m.head.bias)


def test_shape_mismatch_names_tensor_and_both_shapes():
    m = _model()
    state = dict(m.state_dict())
    state["pos_embed"] = torch.zeros(1, 5, 16)
    with pytest.raises(UserError, match=r"pos_embed has shape \(1, 5, 16\) but the architecture needs \(1, 17, 16\)"):
        load_state_dict_strict(m, state)
    del state["pos_embed"]
    with pytest.raises(UserError, match=r"missing \['pos_embed'\]"):
        load_state_dict_strict(m, state)


def test_load_rejects_non_checkpoints(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        vitkit.load(tmp_path / "nope").model
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="not a checkpoint vitkit reads"):
        vitkit.load(tmp_path / "notes.txt").model


def test_preprocess_pil_to_tensor():
    from PIL import Image

    pre = Preprocess(image_size=8, channels=1, mean=(0.5,), std=(0.5,))
    img = Image.fromarray(np.full((20, 30, 4), 255, np.uint8), "RGBA")
    x = pre([img, img.convert("P")])
    assert x.shape == (2, 1, 8, 8)
    torch.testing.assert_close(x, torch.ones_like(x))
    crop = Preprocess(image_size=8, crop_pct=0.875)
    assert crop(Image.new("RGB", (40, 20))).shape == (1, 3, 8, 8)


def test_float64_checkpoint_stays_float64(tmp_path):
    m = _model().double()
    save_checkpoint(tmp_path / "ck", m)
    loaded = vitkit.load(tmp_path / "ck").model
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    assert loaded.pos_embed.dtype == torch.float64
    assert torch.equal(loaded(x), m(x))


# -- what load() refuses, and what a LoadedModel carries ---------------------------------------------------------
def _poison_safetensors(f):
    from safetensors.torch import load_file, save_file

    state = load_file(str(f))
    name = next(k for k in sorted(state) if "blocks.0" in k or "encoderblock_0" in k or "layer.0" in k)
    state[name] = state[name].clone()
    state[name].view(-1)[0] = float("nan")
    save_file(state, str(f), metadata={"format": "pt"})


def test_non_finite_weights_are_refused_by_every_reader(tmp_path):
    from vitkit.checkpoint.hf import save_hf
    from vitkit.checkpoint.npz import save_npz
    from vitkit.checkpoint.timm_sd import save_timm

    m = _model()
    save_checkpoint(tmp_path / "ck", m)
    _poison_safetensors(tmp_path / "ck" / "model.safetensors")
    save_hf(m, tmp_path / "hf")
    _poison_safetensors(tmp_path / "hf" / "model.safetensors")
    save_timm(m, tmp_path / "t.safetensors")
    _poison_safetensors(tmp_path / "t.safetensors")
    save_npz(m, tmp_path / "m.npz")
    flat = dict(np.load(tmp_path / "m.npz", allow_pickle=False))
    k = next(k for k in sorted(flat) if "encoderblock_0" in k and k.endswith("kernel"))
    flat[k] = np.full_like(flat[k], np.inf)
    np.savez(tmp_path / "m.npz", **flat)
    for path in ("ck", "hf", "t.safetensors", "m.npz"):
        with pytest.raises(UserError, match=r"tensor \S+ has non-finite values") as e:
            vitkit.load(tmp_path / path)
        assert path in str(e.value) and "\n" not in str(e.value)


def test_class_names_must_name_every_output(tmp_path):
    save_checkpoint(tmp_path / "ck", _model(), class_names=list("abcd"))
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    cfg["class_names"] = ["a", "b"]
    (tmp_path / "ck" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="2 class names for a head of 4 classes"):
        vitkit.load(tmp_path / "ck")


def test_predict_and_explain_take_a_bare_model():
    """A model from create_model() has no checkpoint: predict and explain use the default preprocessing and
    classes "0".."k-1", as evaluate does (predict used to crash on it)."""
    from PIL import Image

    from vitkit.analysis.explain import explain
    from vitkit.eval.predict import predict

    m = _model()
    top = predict(m, [Image.new("RGB", (20, 20), (200, 10, 10))], topk=4)[0]
    assert sorted(c for c, _ in top) == ["0", "1", "2", "3"] and sum(p for _, p in top) == pytest.approx(1.0)
    loaded = vitkit.runtime.as_loaded(m)
    assert predict(loaded, [Image.new("RGB", (20, 20), (200, 10, 10))], topk=4)[0] == top
    assert explain(m, Image.new("RGB", (20, 20)), topk=2)["map"].shape == (4, 4)


def test_eval_refuses_a_dataset_with_fewer_classes_than_the_head(tmp_path, capsys):
    """A label is a class by its index: a 4-class head on 2-class data would score against the wrong classes."""
    from PIL import Image

    from vitkit.cli import main

    for split in ("train", "val"):
        for c in range(2):
            d = tmp_path / "folder" / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (20, 20), (100 * c, 50, 50)).save(d / f"{i}.png")
    save_checkpoint(tmp_path / "ck", _model())
    assert main(["eval", str(tmp_path / "ck"), "--dataset", f"imagefolder:{tmp_path / 'folder'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vitkit: error:") and "has 2 classes but the checkpoint's head has 4" in err
    assert len(err.splitlines()) == 1


def test_a_broken_config_json_says_why(tmp_path):
    save_checkpoint(tmp_path / "ck", _model())
    f = tmp_path / "ck" / "config.json"
    good = json.loads(f.read_text())
    f.write_text('{"format": "vitkit",\n "model": {')
    with pytest.raises(UserError, match=r"config.json is not valid JSON: .* at line 2 column"):
        vitkit.load(tmp_path / "ck")
    f.write_text(json.dumps({**good, "model": {**good["model"], "patch_size": 0}}))
    with pytest.raises(UserError, match="patch_size must be a positive integer, got 0"):
        vitkit.load(tmp_path / "ck")
    f.write_text(json.dumps({**good, "format": "other"}))
    with pytest.raises(UserError, match="neither \"format\": \"vitkit\" nor \"model_type\": \"vit\""):
        vitkit.load(tmp_path / "ck")


def test_convert_refuses_an_output_that_overlaps_the_source(tmp_path, capsys):
    from vitkit.cli import main

    save_checkpoint(tmp_path / "ck", _model(), train_state={"step": torch.tensor(3)})
    for out in (tmp_path / "ck", tmp_path / "ck" / "inner", tmp_path):
        assert main(["convert", str(tmp_path / "ck"), str(out)]) == 2
        assert "overlaps the source" in capsys.readouterr().err
    assert (tmp_path / "ck" / "train_state.pt").exists() and vitkit.load(tmp_path / "ck").config.num_classes == 4


def test_saving_removes_temporaries_that_killed_saves_left(tmp_path):
    import os
    import time

    stale, fresh = tmp_path / ".ck.tmp-killed", tmp_path / ".ck.tmp-running"
    for d in (stale, fresh):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"partial")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    other = tmp_path / ".other.tmp-killed"  # another checkpoint's: not ours to judge
    other.mkdir()
    os.utime(other, (old, old))
    save_checkpoint(tmp_path / "ck", _model())
    assert not stale.exists() and fresh.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ck.tmp-running", ".other.tmp-killed", "ck"]
