"""A result names the exact weights it used: a shipped alias may move, so eval/fewshot/features/analyze record the
versioned name and its sha256 beside the name as typed."""

import json

import numpy as np

from vitkit import cli
from vitkit.checkpoint import hub

from imagefolders import write_folder


def test_eval_and_fewshot_record_the_version_behind_an_alias(tmp_path, capsys):
    alias = "ViT-Mini_8-tiny-imagenet"
    version = hub.lookup(alias)
    assert version.name != alias and version.name.startswith(alias + ".v")
    folder = write_folder(tmp_path / "f", n_train=8, n_test=3, classes=2, size=20)
    out = tmp_path / "fs.json"
    assert cli.main(["fewshot", alias, "--dataset", folder, "--shots", "2", "--val-size", "2",
                     "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["weights"] == {"weights": version.name, "sha256": version.sha256}
    feats = tmp_path / "feat.npy"
    assert cli.main(["features", alias, "--dataset", folder, "--split", "train", "--out", str(feats)]) == 0
    meta = json.loads(next(tmp_path.glob("feat*.json")).read_text())
    assert meta["weights"]["weights"] == version.name
    assert np.load(feats, allow_pickle=False).shape[0] == 16


def test_a_local_path_records_no_shipped_weights(tmp_path):
    assert hub.exact_weights(str(tmp_path)) is None
    assert hub.exact_weights("https://example.invalid/x.npz") is None
