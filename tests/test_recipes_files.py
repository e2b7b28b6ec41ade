"""Every recipe and published-run file loads and validates, starts with its command and expected result, and the
quick start's file gives exactly the settings of plain `vitkit train`."""

from pathlib import Path

import pytest

from vitkit import cli
from vitkit.errors import UserError
from vitkit.flags import check
from vitkit.train.cli import settings_from_args
from vitkit.train.loop import TrainSettings
from vitkit.train.recipes import RECIPE_DIR, read_settings_file

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted(RECIPE_DIR.glob("*.toml")) + sorted((ROOT / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_every_file_validates(path):
    settings = read_settings_file(path, TrainSettings)
    s = TrainSettings().replace(**{k: v for k, v in settings.items() if k != "name"})
    check(s)
    head = path.read_text().splitlines()[0]
    assert head.startswith("#"), f"{path.name} starts with what it is"
    if path.parent.name == "configs":
        text = path.read_text()
        assert f"--config configs/{path.name}" in text and "Expected" in text


def test_the_quick_start_file_is_plain_vitkit_train():
    parse = cli.build_parser("train").parse_args
    assert settings_from_args(parse(["train", "--config", "configs/quickstart.toml"])) == \
        settings_from_args(parse(["train"]))


def test_a_bad_key_or_value_is_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('lerning_rate = 0.1\n')
    with pytest.raises(UserError, match="bad.toml.*lerning_rate"):
        read_settings_file(bad, TrainSettings)
    bad.write_text('lr = -1.0\n')
    with pytest.raises(UserError, match="bad.toml.*lr"):
        read_settings_file(bad, TrainSettings)
