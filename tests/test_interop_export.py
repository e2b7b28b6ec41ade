"""`vitkit export`: ONNX (run in onnxruntime), TorchScript, ExportedProgram; dynamic batch; top-1 of runtime and
PyTorch printed side by side on the embedded Fashion-MNIST test images."""

from __future__ import annotations

import importlib.util
import os
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
    assert out.exists() and _left_next_to(out) == []
    umask = os.umask(0o022)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain open() would make it
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


def _near_tie_checkpoint(path):
    """A model whose ten logits differ by less than the rounding of two runtimes: its top-1 is decided by
    rounding, so PyTorch and onnxruntime disagree on many images."""
    import torch

    import vitkit
    from vitkit.model import create_model

    torch.manual_seed(0)
    m = create_model("ViT-testing/7", num_classes=10, image_size=28, in_chans=1)
    for p in m.parameters():
        p.data.normal_(0, 0.3)
    with torch.no_grad():
        m.head.weight.copy_(m.head.weight[0] + 3e-8 * torch.randn_like(m.head.weight))
        m.head.bias.zero_()
    vitkit.save_checkpoint(path, m)
    return path


def _left_next_to(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name != out.name and out.name in p.name)


@pytest.mark.skipif(not HAS_ORT, reason="needs onnx, onnxscript and onnxruntime")
def test_a_failed_top1_check_leaves_no_file_and_keeps_the_earlier_one(tmp_path, capsys):
    ck = _near_tie_checkpoint(tmp_path / "ck")
    fresh, kept = tmp_path / "fresh.onnx", tmp_path / "kept.onnx"
    kept.write_text("the user's earlier export")
    for out in (fresh, kept):
        capsys.readouterr()
        rc = main(["export", str(ck), "--format", "onnx", str(out), "--verify-dataset", "embedded",
                   "--verify-limit", "500", "--max-top1-gap", "0"])
        cap = capsys.readouterr()
        assert rc == 1, cap.out
        assert "top-1 differs" in cap.err and f"{out} not written" in cap.err
        assert _left_next_to(out) == []  # no temporary file either
    assert not fresh.exists()
    assert kept.read_text() == "the user's earlier export"


def _undecodable_png(path: Path) -> None:
    """A PNG whose every chunk passes its CRC (so the folder index accepts it) but whose pixel data does not
    inflate: it fails only when decoded, in the middle of the verification."""
    import struct
    import zlib

    b = bytearray(path.read_bytes())
    i = b.index(b"IDAT")
    n = struct.unpack(">I", b[i - 4:i])[0]
    data = bytes(x ^ 0x55 if 10 <= k < n - 4 else x for k, x in enumerate(b[i + 4:i + 4 + n]))
    b[i + 4:i + 4 + n] = data
    b[i + 4 + n:i + 8 + n] = struct.pack(">I", zlib.crc32(b"IDAT" + data) & 0xFFFFFFFF)
    path.write_bytes(bytes(b))


def test_a_verification_that_fails_midway_leaves_no_file(tmp_path, capsys):
    from imagefolders import write_folder

    spec = write_folder(tmp_path / "folder", n_train=2, n_test=4, size=28)
    last = sorted((tmp_path / "folder" / "test").rglob("*.png"))[-1]
    _undecodable_png(last)
    out = tmp_path / "m.pt"
    capsys.readouterr()
    rc = main(["export", str(FIX / "vit_token.npz"), "--format", "torchscript", str(out), "--verify-dataset", spec,
               "--batch-size", "4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "cannot decode" in err[0] and last.name in err[0], err
    assert not out.exists() and _left_next_to(out) == []


def test_an_unreadable_verify_dataset_fails_before_the_export(tmp_path, capsys):
    out = tmp_path / "m.pt"
    rc = main(["export", str(FIX / "vit_token.npz"), "--format", "torchscript", str(out), "--verify-dataset",
               f"imagefolder:{tmp_path / 'none'}"])
    cap = capsys.readouterr()
    assert rc == 2 and "none" in cap.err and "exported" not in cap.out
    assert list(tmp_path.iterdir()) == []
