"""benchmarks/pretrain_tiny_imagenet.sh: the `vitkit train` command it builds (a stand-in `vitkit` on PATH records
its arguments): first cycle, a second stage from a run folder or a shipped name, --resume once a checkpoint
exists, and the caller's flags last so that they win."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "pretrain_tiny_imagenet.sh"


@pytest.fixture
def run_script(tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "args"
    fake = bin_dir / "vitkit"
    fake.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "{record}"\n')
    fake.chmod(0o755)

    def run(*args, first=None):
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
        env.pop("FIRST", None)
        if first is not None:
            env["FIRST"] = str(first)
        subprocess.run(["bash", str(SCRIPT), *map(str, args)], cwd=tmp_path, env=env, check=True,
                       capture_output=True, text=True)
        return record.read_text().splitlines()

    return run


def _value(argv, flag):
    return argv[len(argv) - 1 - argv[::-1].index(flag) + 1]  # the last occurrence wins, as with argparse


def test_first_cycle_is_seeded_and_resumes_once_a_checkpoint_exists(run_script, tmp_path):
    out = tmp_path / "runs" / "a"
    argv = run_script(out, "--model", "R+ViT-Mini/8")
    assert argv[:3] == ["train", "--dataset", "tiny-imagenet"]
    assert _value(argv, "--seed") == "0" and _value(argv, "--model") == "R+ViT-Mini/8"
    assert _value(argv, "--out") == str(out) and "--resume" not in argv and "--init" not in argv
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "train_state.pt").write_bytes(b"")
    assert "--resume" in run_script(out, "--model", "R+ViT-Mini/8")


def test_second_stage_from_a_run_folder_or_a_shipped_name_with_the_callers_flags_winning(run_script, tmp_path):
    first = tmp_path / "runs" / "first"
    (first / "checkpoint").mkdir(parents=True)
    argv = run_script(tmp_path / "runs" / "b", first=first)
    assert _value(argv, "--init") == f"{first}/checkpoint" and _value(argv, "--seed") == "1"
    assert _value(argv, "--lr") == "5e-4" and "--model" not in argv
    argv = run_script(tmp_path / "runs" / "c", "--image-size", "96", "--lr", "3e-4",
                      first="R+ViT-Mini_8-tiny-imagenet")
    assert _value(argv, "--init") == "R+ViT-Mini_8-tiny-imagenet"
    assert _value(argv, "--image-size") == "96" and _value(argv, "--lr") == "3e-4"
