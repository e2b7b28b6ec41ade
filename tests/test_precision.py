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
