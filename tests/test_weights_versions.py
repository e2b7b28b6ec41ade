"""Shipped weights keep their meaning (vitkit/checkpoint/hub.py, "Names, versions and aliases"): every released
version is frozen here with the sha256 of its model.safetensors, the committed manifest equals the files' real sizes
and hashes, loading refuses a file that differs, aliases resolve to their version, a retired version is refused
saying what it was, and each model card is what the generator renders from the folder's own config.json."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

import vitkit
from vitkit.checkpoint import hub
from vitkit.cli import main
from vitkit.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = hub.WEIGHTS_DIR  # the installed package's folder, before any test patches it

# Every version ever released, with the sha256 of its model.safetensors. Append a line when shipping a new version;
# never edit or remove one: a released name keeps its weights forever (a retired one stays known by name).
RELEASED = {
    "ViT-Mini_8-tiny-imagenet.v1": "0ddac5b348d2188afbf2c4eb6d76410e6b4b101a116a1f1b21c3f01edae76e53",
    "R+ViT-Mini_8-tiny-imagenet.v1": "1daee019c1843b8dd0328cc6caa0c51920b1bcbf1aabe020b027c6260dd278d5",
    "R+ViT-Mini_8-tiny-imagenet.v2": "acbeafa875d065eeb0c7aa030bd45f3dbd7a49a00d97edbfaa6a2851a62c4836",
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_released_version_is_known_and_a_shipped_one_has_exactly_its_released_hash():
    man = hub.manifest(PACKAGE)
    known = {**{n: r["model.safetensors"]["sha256"] for n, r in man["shipped"].items()},
             **{n: r["model.safetensors"]["sha256"] for n, r in man["retired"].items()}}
    assert set(RELEASED) <= set(known), "a released name disappeared from vitkit/weights/MANIFEST.json"
    assert set(known) <= set(RELEASED), "a new version is shipped: add it to RELEASED in this test"
    assert not set(man["shipped"]) & set(man["retired"])
    for name, digest in RELEASED.items():
        assert known[name] == digest, f"{name}: its recorded weights changed (a released version never changes)"
        if name in man["shipped"]:
            assert sha256(PACKAGE / name / "model.safetensors") == digest, name


def test_the_committed_manifest_equals_the_files_real_sizes_and_hashes():
    man = hub.manifest(PACKAGE)
    folders = sorted(d.name for d in PACKAGE.iterdir() if d.is_dir())
    assert folders == sorted(man["shipped"])  # every shipped folder recorded, nothing recorded that is not there
    for name in folders:
        d = PACKAGE / name
        assert hub.VERSIONED.match(name), f"{name}: a shipped folder is named <name>.v<N>"
        expected = {f: {"size": (d / f).stat().st_size, "sha256": sha256(d / f)} for f in hub.RECORDED}
        assert man["shipped"][name] == expected, name


def test_aliases_point_at_a_shipped_version_of_their_own_name():
    man = hub.manifest(PACKAGE)
    assert man["aliases"] == {"ViT-Mini_8-tiny-imagenet": "ViT-Mini_8-tiny-imagenet.v1",
                              "R+ViT-Mini_8-tiny-imagenet": "R+ViT-Mini_8-tiny-imagenet.v2"}
    for alias, target in man["aliases"].items():
        assert target in man["shipped"] and hub.VERSIONED.match(target).group("base") == alias
        entry = hub.lookup(alias)
        assert entry.name == target and entry.sha256 == RELEASED[target] and alias in entry.aliases
        assert hub.lookup(alias.lower()).name == target  # case-insensitive, as every name
        assert hub.exact_weights(alias) == {"weights": target, "sha256": RELEASED[target]}


def test_an_alias_loads_the_same_weights_as_its_version():
    a, v = vitkit.load("R+ViT-Mini_8-tiny-imagenet"), vitkit.load("R+ViT-Mini_8-tiny-imagenet.v2")
    sa, sv = a.model.state_dict(), v.model.state_dict()
    assert sa.keys() == sv.keys() and all(bool((sa[k] == sv[k]).all()) for k in sa)


def test_the_retired_version_is_refused_saying_what_it_was_never_mapped_to_v2(capsys):
    with pytest.raises(UserError) as e:
        vitkit.load("R+ViT-Mini_8-tiny-imagenet.v1")
    msg = str(e.value)
    assert "no longer shipped" in msg and "37.65 %" in msg and RELEASED["R+ViT-Mini_8-tiny-imagenet.v1"] in msg
    assert "e65cf6c1ed5f" in msg and "\n" not in msg
    assert main(["eval", "r+vit-mini_8-tiny-imagenet.v1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no longer shipped" in err[0]


def test_the_retired_version_is_in_the_named_git_commit():
    r = hub.manifest(PACKAGE)["retired"]["R+ViT-Mini_8-tiny-imagenet.v1"]
    try:
        blob = subprocess.run(["git", "show", f"{r['commit']}:{r['path']}/model.safetensors"], cwd=ROOT,
                              capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout with its history")
    assert hashlib.sha256(blob).hexdigest() == r["model.safetensors"]["sha256"] and len(blob) == \
        r["model.safetensors"]["size"]
    copy = ROOT / r["copy"] / "model.safetensors"
    if copy.is_file():
        assert sha256(copy) == r["model.safetensors"]["sha256"]


def copy_package(tmp_path, monkeypatch) -> Path:
    weights = tmp_path / "weights"
    shutil.copytree(PACKAGE, weights)
    monkeypatch.setattr(hub, "WEIGHTS_DIR", weights)
    return weights


@pytest.mark.parametrize("how", ["flip a byte", "append", "config"])
def test_loading_refuses_an_altered_shipped_file_in_one_line_naming_it_and_both_hashes(tmp_path, monkeypatch,
                                                                                        capsys, how):
    weights = copy_package(tmp_path, monkeypatch)
    name = "ViT-Mini_8-tiny-imagenet.v1"
    f = weights / name / ("config.json" if how == "config" else "model.safetensors")
    recorded = hub.manifest(weights)["shipped"][name][f.name]["sha256"]
    assert vitkit.load("ViT-Mini_8-tiny-imagenet").model is not None  # the copy loads as it is
    data = bytearray(f.read_bytes())
    if how == "flip a byte":
        data[-1] ^= 1
    elif how == "append":
        data += b"\0"
    else:
        data = data.replace(b'"top1": 26.83', b'"top1": 99.99')
    f.write_bytes(bytes(data))
    for spec in ("ViT-Mini_8-tiny-imagenet", name):  # by alias and by version
        with pytest.raises(UserError) as e:
            vitkit.load(spec)
        msg = str(e.value)
        assert str(f) in msg and recorded in msg and hashlib.sha256(bytes(data)).hexdigest() in msg
        assert "\n" not in msg
    assert main(["eval", name]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refusing to load it" in err[0]


def test_a_folder_the_manifest_does_not_record_is_refused(tmp_path, monkeypatch):
    weights = copy_package(tmp_path, monkeypatch)
    shutil.copytree(weights / "ViT-Mini_8-tiny-imagenet.v1", weights / "ViT-Mini_8-tiny-imagenet.v2")
    entry = {p.name: p for p in hub.shipped()}["ViT-Mini_8-tiny-imagenet.v2"]
    assert entry.files is None and entry.sha256 is None
    with pytest.raises(UserError, match=r"ViT-Mini_8-tiny-imagenet\.v2 is not recorded in .*MANIFEST\.json"):
        vitkit.load("ViT-Mini_8-tiny-imagenet.v2")


def test_a_verified_file_is_hashed_once_per_process_until_it_changes(tmp_path, monkeypatch):
    copy_package(tmp_path, monkeypatch)
    calls = []
    real = hub.sha256_file
    monkeypatch.setattr(hub, "sha256_file", lambda p: calls.append(Path(p).name) or real(p))
    entry = hub.lookup("ViT-Mini_8-tiny-imagenet.v1")
    hub.verify(entry)
    hub.verify(entry)
    hub.resolve("ViT-Mini_8-tiny-imagenet")
    assert sorted(calls) == ["config.json", "model.safetensors"]  # once each, however often it is loaded
    f = entry.path / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[100] ^= 1
    f.write_bytes(bytes(data))  # same size, new mtime: checked again, and refused
    with pytest.raises(UserError, match="sha256"):
        hub.verify(entry)


@pytest.mark.parametrize("name", sorted(hub.manifest(PACKAGE)["shipped"]))
def test_each_committed_model_card_is_what_the_generator_renders_from_its_config(name):
    d = PACKAGE / name
    assert (d / "MODEL_CARD.md").read_text() == hub.model_card(d)
    meta = json.loads((d / "config.json").read_text())
    card = (d / "MODEL_CARD.md").read_text()
    # by hand: the figures a reader looks for come from the config
    assert card.startswith(f"# {name}\n") and f"validation top-1 {meta['top1']:.2f} %" in card
    assert RELEASED[name] in card and "research and education" in meta["card"]["data"]
    last = meta["card"]["cycles"][-1]
    assert f"after {last['steps']:,} optimizer steps" in card
    assert f"{last['evals'][0]['epoch']:g}: {100 * last['evals'][0]['top1']:.1f} %" in card


def test_models_pretrained_lists_versions_files_and_aliases(capsys):
    assert main(["models", "--pretrained", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    man = hub.manifest(PACKAGE)
    for name, files in man["shipped"].items():
        r = rows[name]
        assert r["shipped"] and r["files"] == files and r["sha256"] == RELEASED[name]
        assert r["size"] == (PACKAGE / name / "model.safetensors").stat().st_size
    assert rows["R+ViT-Mini_8-tiny-imagenet.v2"]["aliases"] == ["R+ViT-Mini_8-tiny-imagenet"]
    old = rows["R+ViT-Mini_8-tiny-imagenet.v1"]
    assert (old["shipped"], old["top1"], old["sha256"], old["retired"]["commit"][:7]) == (
        False, 37.65, RELEASED["R+ViT-Mini_8-tiny-imagenet.v1"], "e65cf6c")
    b16 = rows["imagenet21k/ViT-B_16"]
    assert b16["sha256"] is None and "no sha256 is published" in b16["integrity"]
    assert b16["approx_size"] == 4 * b16["params"] == 4 * 103_186_515
    assert "R+ViT-Mini_8-tiny-imagenet" not in rows  # an alias is not a second model
    assert main(["models", "--pretrained"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert "  R+ViT-Mini_8-tiny-imagenet  -> R+ViT-Mini_8-tiny-imagenet.v2" in table
    assert any(line.startswith("aliases (each may move to newer weights; a versioned name") for line in table)
    retired = next(line for line in table if line.startswith("R+ViT-Mini_8-tiny-imagenet.v1 "))
    assert retired.split()[-2:] == ["37.65", "retired"]
    assert max(len(line) for line in table) <= 120
