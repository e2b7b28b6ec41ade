"""--precision auto: bf16 only where the hardware computes it, so a CPU without bf16 instructions is not 24x slower."""

from __future__ import annotations

import pytest
import torch

from vitkit.checkpoint.io import load_train_state
from vitkit.errors import UserError
from vitkit.runtime import native_bf16, resolve_precision
from vitkit.train.loop import TrainSettings, train

CPU = torch.device("cpu")


@pytest.mark.parametrize("bf16,amx,want", [(True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")])
def test_auto_is_bf16_only_on_cpus_with_bf16_instructions(monkeypatch, bf16, amx, want):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert native_bf16(CPU) is (want == "bf16")
    assert resolve_precision("auto", CPU) == want
    assert resolve_precision("fp32", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"  # asked: kept
    with pytest.raises(UserError, match="unknown precision 'fp16'"):
        resolve_precision("fp16", CPU)


def test_a_run_saves_the_precision_it_used_and_resumes_with_it(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    s = TrainSettings(model="ViT-testing/4", batch_size=16, limit_train=32, limit_test=16, progress=False,
                      warmup_steps=1, steps=1, out=str(tmp_path / "r"))
    assert s.precision == "auto"
    train(s)
    assert load_train_state(tmp_path / "r" / "checkpoint")["settings"]["precision"] == "fp32"
    # the saved value is what a resume uses (the CLI starts from the saved settings)
    r = train(TrainSettings.from_dict(load_train_state(tmp_path / "r" / "checkpoint")["settings"])
              .replace(resume=True, steps=2))
    assert r["steps"] == 2


def _probes(monkeypatch, cuda: bool, mps: bool, macos14: bool = True):
    """No Mac or GPU here: the device probes torch offers, mocked."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer",
                        lambda major, minor: macos14 and (major, minor) <= (14, 0))


@pytest.mark.parametrize("cuda,mps,want", [(True, True, "cuda:0"), (True, False, "cuda:0"), (False, True, "mps"),
                                           (False, False, "cpu")])
def test_device_auto_is_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, want):
    from vitkit.runtime import resolve_device

    _probes(monkeypatch, cuda, mps)
    assert str(resolve_device("auto")) == want


def test_auto_precision_on_mps_is_fp32_and_bf16_needs_macos_14(monkeypatch):
    from vitkit.runtime import autocast, resolve_device

    _probes(monkeypatch, cuda=False, mps=True, macos14=True)
    mps = resolve_device("auto")
    assert mps.type == "mps" and not native_bf16(mps)
    assert resolve_precision("auto", mps) == "fp32" and resolve_precision("bf16", mps) == "bf16"
    assert autocast(mps, "auto").__class__.__name__ == "nullcontext"
    _probes(monkeypatch, cuda=False, mps=True, macos14=False)
    with pytest.raises(UserError, match="bf16 on MPS needs macOS 14"):
        resolve_precision("bf16", mps)
    assert resolve_precision("fp32", mps) == "fp32"


def test_cuda_auto_precision_is_bf16_where_supported(monkeypatch):
    from vitkit.runtime import resolve_device

    _probes(monkeypatch, cuda=True, mps=True)
    assert resolve_precision("auto", resolve_device("auto")) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision("auto", resolve_device("auto")) == "fp32"


@pytest.mark.parametrize("name", ["mps", "cuda"])
def test_asking_for_a_missing_device_is_one_line(monkeypatch, name):
    from vitkit.runtime import resolve_device

    _probes(monkeypatch, cuda=False, mps=False)
    with pytest.raises(UserError, match=f"--device {name} was given but"):
        resolve_device(name)
