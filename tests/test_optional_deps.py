"""Optional packages: the figures' libraries are ordinary dependencies; every command that needs a package that
stays optional (transformers, onnx, tensorboard) says which `pip install` in one line instead of a traceback, or
leaves out just the part that needs it. A package is made "not installed" by putting None in sys.modules, which
is what Python's import does for a missing module (ModuleNotFoundError naming it)."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest

from vitkit.cli import main
from vitkit.errors import UserError, distribution, require

ROOT = Path(__file__).resolve().parents[1]


def hide(monkeypatch, *packages: str) -> None:
    """Make `packages` (and every submodule already imported) unimportable, and forget vitkit modules that
    imported them so that the next import runs again."""
    for name in list(sys.modules):
        if name.split(".")[0] in packages:
            monkeypatch.setitem(sys.modules, name, None)
    for name in packages:
        monkeypatch.setitem(sys.modules, name, None)
    for name in ("vitkit.analysis.plots", "vitkit.analysis.explain", "vitkit.bench.peers"):
        monkeypatch.delitem(sys.modules, name, raising=False)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if not ln.startswith("vitkit: warning:")]
    assert len(lines) == 1 and lines[0].startswith("vitkit: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_figure_libraries_are_ordinary_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].strip() for d in project["dependencies"]}
    assert {"matplotlib", "scipy", "scikit-learn"} <= names
    assert not any(d.startswith("torch") for d in project["dependencies"] if "torch>=" not in d)
    optional = {d.split(">")[0] for deps in project["optional-dependencies"].values() for d in deps}
    assert {"transformers", "onnx", "onnxruntime", "tensorboard"} <= optional  # these stay optional


def test_require_names_the_pip_command(monkeypatch):
    assert require("json").dumps([1]) == "[1]"
    assert distribution("sklearn.linear_model") == "scikit-learn" and distribution("matplotlib.pyplot") == "matplotlib"
    hide(monkeypatch, "transformers")
    with pytest.raises(UserError, match=r"^--peers hf needs the package 'transformers', which is not installed: "
                                        r"pip install transformers$"):
        require("transformers", "--peers hf")


def test_analyze_without_matplotlib_is_one_line(monkeypatch, capsys, tmp_path):
    hide(monkeypatch, "matplotlib")
    assert main(["analyze", str(tmp_path / "ckpt"), "--dataset", "embedded", "--out", str(tmp_path / "a")]) == 2
    assert one_error_line(capsys) == ("vitkit: error: vitkit analyze needs the package 'matplotlib', which is not "
                                      "installed: pip install matplotlib")
    assert not (tmp_path / "a").exists()  # failed before any work


def test_bench_without_transformers_skips_the_hf_rows(monkeypatch, capsys):
    hide(monkeypatch, "transformers", "timm")
    args = ["bench", "--model", "ViT-testing/4", "--image-size", "16", "--batch-size", "2", "--mode", "inference",
            "--precision", "fp32", "--repeats", "1", "--warmup", "1", "--ceiling-n", "32", "--no-memory", "--quiet"]
    assert main(args) == 0
    captured = capsys.readouterr()
    out = captured.out
    # vitkit's own warning, printed by the CLI as one line
    assert re.search(r"^vitkit: warning: .*no Hugging Face rows.*\(pip install transformers\)", captured.err, re.M)
    assert "vitkit infer fp32 c=no" in out and "hf " not in out and "FAILED" not in out
    assert main(args + ["--peers", "hf"]) == 2  # asked for by name: an error, before any timing
    assert one_error_line(capsys).endswith("--peers hf needs the package 'transformers', which is not installed: "
                                           "pip install transformers")


def test_fewshot_logreg_without_scikit_learn_fails_before_feature_extraction(monkeypatch, capsys, tmp_path):
    hide(monkeypatch, "sklearn")
    assert main(["fewshot", str(tmp_path / "no-such-checkpoint"), "--dataset", "embedded",
                 "--baselines", "ridge,logreg"]) == 2
    assert one_error_line(capsys).endswith("--baselines logreg needs the package 'scikit-learn', which is not "
                                           "installed: pip install scikit-learn")


def test_training_logs_without_tensorboard(monkeypatch, tmp_path):
    from vitkit.train.loop import Logger

    hide(monkeypatch, "tensorboard")
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    log = Logger(tmp_path, enabled=True, resume_step=None)
    log.log({"step": 1, "loss": 2.5})
    log.close()
    assert log.tb is None and (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "loss": 2.5}\n'


def test_onnx_export_without_onnxscript_is_one_line(monkeypatch, capsys, tmp_path):
    from vitkit import create_model
    from vitkit.checkpoint.io import save_checkpoint

    save_checkpoint(tmp_path / "ckpt", create_model("ViT-testing/4", num_classes=3, image_size=16))
    hide(monkeypatch, "onnxscript", "onnx")
    assert main(["export", str(tmp_path / "ckpt"), "--format", "onnx", str(tmp_path / "m.onnx")]) == 2
    assert "pip install onnx onnxscript" in one_error_line(capsys)
    assert not (tmp_path / "m.onnx").exists()
