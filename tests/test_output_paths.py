"""An output path that cannot be written is one line naming the flag and the path, before any work starts: the
checkpoint named is never read (it does not exist here), no features are computed.

The paths below cannot be written even by root (these tests may run as root, where permission bits stop
nothing): a directory under /proc cannot be created, nor a directory whose name is too long. Under a regular
file is covered in tests/test_train_cli.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vitkit import cli
from vitkit.errors import UserError
from vitkit.flags import check_writable

PROC = Path("/proc")
LONG = "n" * 300  # longer than any file system's name limit (255 bytes on Linux and macOS)


def _unwritable(kind: str, tmp_path: Path) -> Path:
    if kind == "proc":
        if not (PROC / "self").is_dir():
            pytest.skip("needs Linux /proc")
        return PROC / "vitkit-no-such-dir" / "deeper"
    return tmp_path / LONG / "deeper"


COMMANDS = {
    "features": lambda base, ck: ["features", ck, "--dataset", "embedded", "--out", base / "f.npy"],
    "fewshot": lambda base, ck: ["fewshot", ck, "--dataset", "embedded", "--out", base / "fewshot.json"],
    "fewshot-npy": lambda base, ck: ["fewshot", "--train-features", ck, "--test-features", ck,
                                     "--out", base / "fewshot.json"],
    "export": lambda base, ck: ["export", ck, "--format", "torchscript", base / "model.pt"],
    "study": lambda base, ck: ["study", "data-scale", "--quick", "--out", base / "study", "--transfer",
                               f"imagefolder:{ck}"],
    "analyze": lambda base, ck: ["analyze", ck, "--dataset", "embedded", "--out", base / "figures"],
}


@pytest.mark.parametrize("kind", ["proc", "long-name"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_output_that_cannot_be_created_is_one_line_before_the_work(tmp_path, capsys, command, kind):
    base = _unwritable(kind, tmp_path)
    argv = [str(a) for a in COMMANDS[command](base, tmp_path / "missing")]
    capsys.readouterr()
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vitkit: error: ") and "Errno" not in err[0], err
    flag = "OUT" if command == "export" else "--out"
    assert f"{flag} {base}" in err[0] and "missing" not in err[0], err
    assert captured.out == ""  # nothing ran
    assert os.listdir(tmp_path) == []  # nothing created on the way


def test_the_check_leaves_nothing_behind(tmp_path):
    """Directories the output would need are tried (created) and removed again; so is a probe file."""
    check_writable(tmp_path / "a" / "b" / "out.json")
    check_writable(tmp_path / "c" / "d", directory=True)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "there.json").write_text("kept")
    check_writable(tmp_path / "e" / "there.json")
    check_writable(tmp_path / "e", directory=True)
    assert sorted(os.listdir(tmp_path)) == ["e"] and os.listdir(tmp_path / "e") == ["there.json"]
    assert (tmp_path / "e" / "there.json").read_text() == "kept"
    with pytest.raises(UserError, match=r"--out .*: is a directory"):
        check_writable(tmp_path / "e")
    with pytest.raises(UserError, match=r"--cells .*there.json: is not a directory"):
        check_writable(tmp_path / "e" / "there.json", "--cells", directory=True)
