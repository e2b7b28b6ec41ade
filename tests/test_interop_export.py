"""`vitkit export`: ONNX (run in onnxruntime), TorchScript, ExportedProgram; dynamic batch; top-1 of runtime and
PyTorch printed side by side on the embedded Fashion-MNIST test images."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from vitkit.cli import main

FIX = Path(__file__).parent / "fixtures"
HAS_ORT = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript"))


def _export(tmp_path, capsys, fmt, ckpt="vit_token.npz"):
    out = tmp_path / f"m.{fmt}"
    rc = main(["export", str(FIX / ckpt), "--format", fmt, str(out), "--verify-dataset", "embedded",
               "--verify-limit", "200"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert out.exists()
    diff = float(re.search(r"max \|logit difference\| vs PyTorch ([0-9.e+-]+)", text).group(1))
    m = re.search(r"PyTorch ([0-9.]+)%\s+\S+ ([0-9.]+)%", text)
    assert m, text
    return diff, float(m.group(1)), float(m.group(2))


@pytest.mark.skipif(not HAS_ORT, reason="ONNX export tests need onnx, onnxscript and onnxruntime "
                                        "(pip install onnx onnxscript onnxruntime)")
@pytest.mark.parametrize("ckpt", ["vit_token.npz", "hybrid_stem.npz"])
def test_onnx(tmp_path, capsys, ckpt):
    diff, pt, rt = _export(tmp_path, capsys, "onnx", ckpt)
    assert diff < 1e-4 and abs(pt - rt) <= 0.1


@pytest.mark.parametrize("fmt", ["torchscript", "exported-program"])
def test_torch_formats(tmp_path, capsys, fmt):
    diff, pt, rt = _export(tmp_path, capsys, fmt)
    assert diff < 1e-5 and pt == rt
