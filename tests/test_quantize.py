"""`vitkit export --format onnx --quantize int8`: ONNX Runtime's dynamic quantiser on a shipped model; the file
holds int8 weights (so a quantiser that did nothing fails), loads in onnxruntime, and predicts as float32 does."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re

import pytest
import torch

from vitkit.cli import main

HAS_ORT = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript"))
needs_ort = pytest.mark.skipif(not HAS_ORT, reason="needs onnx, onnxscript and onnxruntime")
MODEL = "ViT-Mini_8-tiny-imagenet"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One CLI export for the module's tests: (the file, what the command printed)."""
    out = tmp_path_factory.mktemp("int8") / "vit-int8.onnx"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["export", MODEL, "--format", "onnx", str(out), "--quantize", "int8", "--verify-dataset",
                   "embedded", "--verify-limit", "100", "--batch-size", "50"])
    assert rc == 0, buf.getvalue()
    return out, buf.getvalue()


@pytest.fixture
def int8_file(exported):
    return exported[0]


@needs_ort
def test_int8_file_holds_int8_weights_and_is_smaller(int8_file):
    import onnx

    from vitkit.checkpoint.cli_export import int8_graph_facts

    f = int8_graph_facts(int8_file)
    # ViT-Mini/8: 6 blocks x (qkv, proj, fc1, fc2) + the head = 25 weight matmuls; 6 x 2 attention products stay
    assert f["integer_matmuls"] == 25 and f["float_matmuls"] == 12
    g = onnx.load(str(int8_file)).graph
    int8 = {t.name: t for t in g.initializer if t.data_type == onnx.TensorProto.INT8}
    assert f["int8_weights"] == len(int8) > 0
    # nearly all weight bytes are int8 (the float32 rest: patch embedding, norms, biases, scales)
    assert f["int8_bytes"] > 0.75 * f["weight_bytes"]
    assert f["bytes"] < 0.35 * 11_038_704  # the float32 safetensors of the same weights
    # a quantised weight's values use the int8 range (per-channel scale: some channel reaches +-127)
    w = onnx.numpy_helper.to_array(max(int8.values(), key=lambda t: len(t.raw_data)))
    assert w.dtype.name == "int8" and int(abs(w.astype(int)).max()) == 127


@needs_ort
def test_int8_predictions_agree_with_float32(int8_file):
    import onnxruntime as ort

    import vitkit
    from vitkit.runtime import load_split, to_model_input

    loaded = vitkit.load(MODEL)
    images, _, _ = load_split("embedded", "test", loaded.preprocess, limit=200)
    x = to_model_input(images, loaded.preprocess)
    with torch.no_grad():
        want = loaded.model.float().eval()(x)
    sess = ort.InferenceSession(str(int8_file), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {"pixel_values": x.numpy()})[0])
    agree = float((got.argmax(1) == want.argmax(1)).float().mean())
    # measured 97.4 % on these images (97.35 % on 2,000 Tiny ImageNet validation images); int8 changes some logits
    assert agree >= 0.93
    err = (got - want).abs().max(1).values / want.abs().max(1).values
    assert 1e-3 < float(err.max()) < 0.2  # quantised (float32 onnx differs by ~1e-6), within INT8_LOGIT_TOL


@needs_ort
def test_the_cli_reports_the_int8_comparison(exported):
    out, text = exported
    assert "25 MatMulInteger" in text and "onnxruntime int8" in text
    agree = float(re.search(r"predictions agree on ([0-9.]+)%", text).group(1))
    assert 90 <= agree < 100  # int8 moves some near-tied predictions; all 100 equal would mean nothing changed
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # the float32 intermediate is gone


@pytest.mark.parametrize("fmt", ["torchscript", "exported-program"])
def test_quantize_with_a_format_that_cannot_hold_it_is_one_line(tmp_path, capsys, fmt):
    out = tmp_path / "m.pt"
    rc = main(["export", MODEL, "--format", fmt, str(out), "--quantize", "int8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--quantize int8" in err[0] and f"--format {fmt}" in err[0], err
    assert list(tmp_path.iterdir()) == []
