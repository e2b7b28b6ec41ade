"""Pre-trained weights by name and by URL (vitkit/checkpoint/hub.py): the registry against the official listing,
shipped models found by scanning the package folder, and downloads from a real HTTP server on 127.0.0.1 (complete,
truncated, 404, slow, stalled, killed mid-download, no server at all) -- never the internet."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from httpserver import Server, closed_port_url

import vitkit
from vitkit.checkpoint import hub
from vitkit.cli import main
from vitkit.errors import UserError

FIX = Path(__file__).parent / "fixtures"
BODY = (FIX / "vit_token.npz").read_bytes()  # a small official-format checkpoint


@pytest.fixture
def server():
    s = Server(BODY)
    yield s
    s.close()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VITKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VITKIT_PROGRESS", raising=False)
    monkeypatch.delenv("VITKIT_DOWNLOAD_TIMEOUT", raising=False)
    monkeypatch.delenv("VITKIT_NO_DOWNLOAD", raising=False)
    monkeypatch.setattr(hub, "WEIGHTS_DIR", tmp_path / "no-weights")  # independent of what the package ships
    return tmp_path / "cache"


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def leftovers(folder: Path):
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


# -- the registry -------------------------------------------------------------------------------------------------
PAPER_I21K = ["ViT-B_16", "ViT-B_32", "ViT-L_16", "ViT-L_32", "ViT-H_14", "R50+ViT-B_16"]
PAPER_FT = {"ViT-B_16": 384, "ViT-B_16-224": 224, "ViT-B_32": 384, "ViT-L_16": 384, "ViT-L_16-224": 224,
            "ViT-L_32": 384, "R50+ViT-B_16": 384}
# The README's AugReg table: fine-tuned file name -> ImageNet top-1 (%)
AUGREG_TOP1 = {
    "L_16-i21k-300ep-lr_0.001-aug_strong1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_384": 85.59,
    "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_384": 85.49,
    "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_384": 83.73,
    "R50_L_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_384": 85.99,
    "R26_S_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_384": 83.85,
    "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_384": 78.22,
    "B_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_384": 83.59,
    "S_32-i21k-300ep-lr_0.001-aug_none-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_384": 79.58,
    "R_Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_384": 75.40,
}


BIT_ARCHS = ["R50x1", "R101x1", "R50x3", "R101x3", "R152x4"]  # big_transfer README; R152x2 later, BiT-M only


def test_registry_names_urls_sizes_and_top1():
    reg = {p.name: p for p in hub.official() if not p.name.startswith("BiT-")}
    assert set(hub.registry()) >= set(reg)
    expected = ({f"imagenet21k/{f}" for f in PAPER_I21K} | {f"imagenet21k+imagenet2012/{f}" for f in PAPER_FT}
                | {f"augreg/{f}" for f in AUGREG_TOP1} | {f"augreg/{f.split('--')[0]}" for f in AUGREG_TOP1})
    assert set(reg) == expected and len(reg) == 6 + 7 + 18
    for name, p in reg.items():
        assert p.url == f"https://storage.googleapis.com/vit_models/{name}.npz" and not p.shipped
        assert p.sha256 is None and p.size is None  # none is published (sizes only rounded); never invented
        assert p.image_size == (PAPER_FT[name.split("/")[1]] if name.startswith("imagenet21k+") else
                                384 if "--imagenet2012" in name else 224)
        assert p.num_classes == (1000 if "imagenet2012" in name else 21843)
        assert p.top1 == AUGREG_TOP1.get(name.removeprefix("augreg/"))
    assert reg["imagenet21k/R50+ViT-B_16"].variant == "R50+ViT-B/16"
    assert reg["imagenet21k/ViT-H_14"].representation_size == 1280  # the paper's i21k files keep the pre-logits


def test_bit_files_by_name():
    bit = {p.name: p for p in hub.official() if p.name.startswith("BiT-")}
    expected = ({f"BiT-S-{a}" for a in BIT_ARCHS} | {f"BiT-M-{a}" for a in BIT_ARCHS + ["R152x2"]}
                | {f"BiT-M-{a}-ILSVRC2012" for a in BIT_ARCHS + ["R152x2"]})
    assert set(bit) == expected
    for name, p in bit.items():
        assert p.url == f"https://storage.googleapis.com/bit_models/{name}.npz"
        assert p.num_classes == (21843 if name.startswith("BiT-M") and not name.endswith("ILSVRC2012") else 1000)
        assert p.variant == "BiT-" + name.split("-")[2]
    # timm's model card for resnetv2_50x1_bit.goog_in21k: 68.3 M parameters. By hand: vitkit's BiT-R50x1 with 1000
    # classes has 25,549,352 parameters (pinned in tests/test_bit.py); swap its 2048 -> 1000 head for 2048 -> 21843.
    assert bit["BiT-M-R50x1"].params() == 25_549_352 - 2049 * 1000 + 2049 * 21843 == 68_256_659


# Official file sizes (vit_jax.ipynb `gsutil ls -lh`, README AugReg table): float32 weights are 4 bytes per
# parameter, so the registry's architecture (classes, pre-logits, resolution) must match within rounding.
LISTED_MIB = {
    "imagenet21k/ViT-B_16": "393.69 MiB", "imagenet21k/ViT-B_32": "400.01 MiB", "imagenet21k/ViT-L_16": "1.22 GiB",
    "imagenet21k/ViT-L_32": "1.23 GiB", "imagenet21k/ViT-H_14": "2.46 GiB", "imagenet21k/R50+ViT-B_16": "439.85 MiB",
    "imagenet21k+imagenet2012/ViT-B_16": "331.4 MiB", "imagenet21k+imagenet2012/ViT-B_16-224": "330.29 MiB",
    "imagenet21k+imagenet2012/ViT-B_32": "336.89 MiB", "imagenet21k+imagenet2012/ViT-L_16": "1.14 GiB",
    "imagenet21k+imagenet2012/ViT-L_16-224": "1.13 GiB", "imagenet21k+imagenet2012/ViT-L_32": "1.14 GiB",
    "imagenet21k+imagenet2012/R50+ViT-B_16": "377.57 MiB",
    "augreg/L_16-i21k-300ep-lr_0.001-aug_strong1-wd_0.1-do_0.0-sd_0.0": "1243 MiB",
    "augreg/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0": "391 MiB",
    "augreg/S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0": "115 MiB",
    "augreg/R50_L_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1": "1337 MiB",
    "augreg/R26_S_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0": "170 MiB",
    "augreg/Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0": "37 MiB",
    "augreg/B_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0": "398 MiB",
    "augreg/S_32-i21k-300ep-lr_0.001-aug_none-wd_0.1-do_0.0-sd_0.0": "118 MiB",
    "augreg/R_Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0": "40 MiB",
}


def test_params_match_the_official_file_sizes():
    reg = hub.registry()
    for name, listed in LISTED_MIB.items():
        number, unit = listed.split()
        scale = 1024 if unit == "GiB" else 1
        mib = float(number) * scale
        # the listing's rounding, plus 0.2 % for the arrays that are not parameters: less than the 2.25 MiB of
        # ViT-B's pre-logits layer, so a wrong head shows
        tol = 0.5 * 10 ** -len(number.partition(".")[2]) * scale + 0.002 * mib
        assert abs(reg[name].params() * 4 / 2**20 - mib) < tol, name
    assert reg["imagenet21k+imagenet2012/ViT-B_16-224"].params() == 86_567_656  # timm vit_base_patch16_224


def test_models_pretrained_json(capsys):
    assert main(["models", "--pretrained", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert isinstance(rows, list) and len(rows) == 31 + 17  # ViT files, BiT files (nothing shipped: see the fixture)
    for r in rows:
        assert {"name", "shipped", "dataset", "image_size", "params", "top1", "url"} <= set(r)
    b16 = next(r for r in rows if r["name"] == "imagenet21k+imagenet2012/ViT-B_16")
    assert (b16["shipped"], b16["image_size"], b16["params"], b16["top1"]) == (False, 384, 86_859_496, None)
    assert main(["models", "--pretrained"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["name", "dataset", "image", "classes", "params", "top-1", "source"]
    assert_readable_table(table, [r["name"] for r in rows])
    ti = "augreg/Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_384"
    figures = table[table.index(ti) + 1].split()  # a name too long for its column: its figures on the next line
    assert figures == ["imagenet21k+imagenet2012", "384", "1000", "5,790,376", "78.22", "download"]
    assert table[2].split() == ["imagenet21k/ViT-B_32", "imagenet21k", "224", "21843", "104,843,091", "-", "download"]
    assert not any("https://" in line for line in table)  # URLs are in --json, not in the table


def assert_readable_table(table: list[str], names: list[str], width: int = 120):
    """Every line fits `width` columns, and every name appears in full, in order, at the start of a line."""
    assert max(len(line) for line in table) <= width, max(table, key=len)
    body = table[1:table.index("")] if "" in table else table[1:]  # the aliases and the notes follow a blank line
    starts = [line.split()[0] for line in body if not line[0].isspace() and not line.startswith("(")]
    assert starts == names


def test_pretrained_table_puts_names_too_long_for_their_column_on_their_own_line():
    from vitkit.cli_models import pretrained_table

    row = dict(dataset="some-set", image_size=224, num_classes=10, params=1234, top1=None, shipped=True)
    names = ["short", "x" * 70, "y" * 130]  # the last is wider than the table itself
    table = pretrained_table([dict(row, name=n) for n in names])
    assert table[1].startswith("short ") and table[1].endswith("shipped")
    assert table[2] == "x" * 70 and table[4] == "y" * 130 and table[3] == table[5]
    assert table[3].lstrip().startswith("some-set") and len(table[3]) - len(table[3].lstrip()) == len("short") + 2
    assert all(len(line) <= 120 for line in table if line != "y" * 130)


def make_shipped(folder: Path, name="vit-tiny-fmnist", record=True, **extra):
    """A checkpoint folder; with record (a shipped one, folder/<name>.v1): recorded in folder/MANIFEST.json with
    the alias <name>, as scripts/ship_weights.py records it."""
    from vitkit.data.preprocess import Preprocess

    torch.manual_seed(0)
    model = vitkit.create_model("ViT-testing/4", num_classes=10, image_size=28, in_chans=1)
    torch.nn.init.normal_(model.head.weight, std=0.02)  # a trained head (eval and predict refuse an all-zero one)
    pre = Preprocess(image_size=28, channels=1, mean=(0.5,), std=(0.5,))
    version = f"{name}.v1" if record else name
    vitkit.save_checkpoint(folder / version, model, pre, [f"c{i}" for i in range(10)], extra=extra)
    (folder / version / "MODEL_CARD.md").write_text("# test model\n")
    if record:
        man = hub.manifest(folder)
        man["shipped"][version] = hub.folder_record(folder / version)
        man["aliases"][name] = version
        hub.write_manifest(man, folder)
    return model


def test_shipped_models_are_found_by_scanning_the_package_folder(tmp_path, monkeypatch, capsys):
    weights = tmp_path / "weights"
    monkeypatch.setattr(hub, "WEIGHTS_DIR", weights)
    assert hub.shipped() == []  # no folder: nothing shipped
    model = make_shipped(weights, dataset="fashion-mnist", top1=12.5)
    (weights / "half-written").mkdir()  # no weights in it: not a model
    (weights / "half-written" / "config.json").write_text("{}")
    assert [p.name for p in hub.shipped()] == ["vit-tiny-fmnist.v1"]
    assert main(["models", "--pretrained", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 32 + 17 and sum(r["shipped"] for r in rows) == 1
    mine = rows[0]
    assert (mine["name"], mine["shipped"], mine["dataset"], mine["image_size"], mine["top1"], mine["url"]) == (
        "vit-tiny-fmnist.v1", True, "fashion-mnist", 28, 12.5, None)
    assert mine["params"] == model.num_params() and mine["aliases"] == ["vit-tiny-fmnist"]
    f = weights / "vit-tiny-fmnist.v1" / "model.safetensors"
    assert mine["size"] == f.stat().st_size and mine["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    assert set(mine["files"]) == {"model.safetensors", "config.json", "MODEL_CARD.md"}
    assert main(["models", "--pretrained"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert_readable_table(table, [r["name"] for r in rows])
    assert table[1].split() == ["vit-tiny-fmnist.v1", "fashion-mnist", "28", "10", f"{model.num_params():,}",
                                "12.50", "shipped"]
    assert "  vit-tiny-fmnist  -> vit-tiny-fmnist.v1" in table  # the alias, under the table
    assert same_weights(vitkit.load("vit-tiny-fmnist").model, model)
    assert same_weights(vitkit.load("vit-tiny-fmnist.v1").model, model)


def test_an_alias_whose_version_is_not_installed_is_refused_not_mapped_to_another(tmp_path, monkeypatch):
    weights = tmp_path / "weights"
    monkeypatch.setattr(hub, "WEIGHTS_DIR", weights)
    make_shipped(weights)  # vit-tiny-fmnist.v1, alias vit-tiny-fmnist
    man = hub.manifest(weights)
    man["aliases"]["vit-tiny-fmnist"] = "vit-tiny-fmnist.v2"  # moved to a version this installation lacks
    hub.write_manifest(man, weights)
    with pytest.raises(UserError, match=r"vit-tiny-fmnist is an alias of vit-tiny-fmnist\.v2, which this "
                                        r"installation does not ship"):
        vitkit.load("vit-tiny-fmnist")
    assert hub.lookup("vit-tiny-fmnist.v1").name == "vit-tiny-fmnist.v1"  # the versions it has still load
    assert hub.lookup("imagenet21k/ViT-B_16") is not None and hub.exact_weights("vit-tiny-fmnist.v1") == {
        "weights": "vit-tiny-fmnist.v1", "sha256": man["shipped"]["vit-tiny-fmnist.v1"]["model.safetensors"]["sha256"]}


def test_a_shipped_name_works_wherever_a_checkpoint_path_does(tmp_path, monkeypatch, capsys):
    from PIL import Image

    monkeypatch.setattr(hub, "WEIGHTS_DIR", tmp_path / "weights")
    make_shipped(tmp_path / "weights")
    img = tmp_path / "x.png"
    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(img)
    assert main(["eval", "vit-tiny-fmnist", "--limit", "32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 32
    assert main(["predict", "vit-tiny-fmnist", str(img), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["top"][0]["class"].startswith("c")
    assert main(["convert", "vit-tiny-fmnist", str(tmp_path / "copy")]) == 0
    assert same_weights(vitkit.load(tmp_path / "copy").model, vitkit.load("vit-tiny-fmnist").model)
    assert main(["train", "--init", "vit-tiny-fmnist", "--steps", "2", "--batch-size", "16", "--limit-train", "32",
                 "--limit-test", "32", "--precision", "fp32", "--no-progress", "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").is_file()


def test_a_local_path_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hub, "BUCKET", closed_port_url("/vit_models/"))  # a download would fail loudly
    model = make_shipped(tmp_path / "imagenet21k", name="ViT-B_16", record=False)
    assert same_weights(vitkit.load("imagenet21k/ViT-B_16").model, model)


def test_unknown_names_are_refused_with_the_nearest_ones():
    with pytest.raises(UserError, match=r"does not exist.*did you mean imagenet21k/ViT-B_16\b.*--pretrained"):
        vitkit.load("imagenet21k/ViT-B_61").model
    with pytest.raises(UserError, match="does not exist") as e:
        vitkit.load("runs/none/checkpoint").model
    assert "did you mean" not in str(e.value)


def test_every_augreg_index_file_resolves_by_name():
    name = "augreg/B_8-i21k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_224"
    p = hub.lookup(name)
    assert (p.url, p.variant, p.image_size) == (f"{hub.BUCKET}{name}.npz", "ViT-B/8", 224)
    assert hub.lookup("augreg/X_99-i21k") is None and hub.lookup("augreg/../../etc") is None


# -- downloads ----------------------------------------------------------------------------------------------------
def test_url_download_is_cached_and_not_repeated(server, cache):
    url = server.serve("/models/vit_token.npz")
    loaded = vitkit.load(url)
    assert same_weights(loaded.model, vitkit.load(FIX / "vit_token.npz").model) and loaded.source == "official-npz"
    dest = hub.cache_path(url)
    assert dest == cache / f"127.0.0.1_{server.httpd.server_port}" / "models" / "vit_token.npz"
    assert dest.read_bytes() == BODY and leftovers(cache) == ["vit_token.npz"]
    vitkit.load(url).model
    assert main(["convert", url, str(cache.parent / "out")]) == 0
    assert server.hits == {"/models/vit_token.npz": 1}


def test_a_registry_name_downloads_from_its_official_url(server, monkeypatch):
    monkeypatch.setattr(hub, "BUCKET", server.base + "/vit_models/")
    server.serve("/vit_models/imagenet21k+imagenet2012/ViT-B_16.npz")
    model = vitkit.load("imagenet21k+imagenet2012/ViT-B_16").model
    assert same_weights(model, vitkit.load(FIX / "vit_token.npz").model)
    server.routes.clear()  # cached: the server is not asked again
    vitkit.load("imagenet21k+imagenet2012/ViT-B_16").model
    assert server.hits == {"/vit_models/imagenet21k+imagenet2012/ViT-B_16.npz": 1}


def test_truncated_download_keeps_nothing_and_a_rerun_succeeds(server, cache):
    url = server.serve("/t.npz", mode="truncate")
    with pytest.raises(UserError, match=r"cannot download .*/t\.npz \(truncated"):
        hub.download(url)
    assert leftovers(cache) == []
    server.serve("/t.npz")
    assert hub.download(url).read_bytes() == BODY and server.hits["/t.npz"] == 2


def test_404_is_one_line_naming_the_url_and_the_cache_path(server, cache, capsys):
    url = server.base + "/missing.npz"
    assert main(["convert", url, str(cache.parent / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vitkit: error: cannot download " + url)
    assert "HTTP 404" in err[0] and str(hub.cache_path(url)) in err[0]
    assert leftovers(cache) == [] and not (cache.parent / "out").exists()


def test_without_network_one_line_says_where_to_put_the_file(cache, capsys):
    url = closed_port_url("/vit_models/imagenet21k/ViT-B_16.npz")
    assert main(["eval", url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and url in err[0] and f"put it at {hub.cache_path(url)}" in err[0]
    hub.cache_path(url).parent.mkdir(parents=True, exist_ok=True)  # put there by hand: used without asking the network
    hub.cache_path(url).write_bytes(BODY)
    assert same_weights(vitkit.load(url).model, vitkit.load(FIX / "vit_token.npz").model)


def test_no_download_setting_refuses_before_any_request(server, cache, monkeypatch):
    monkeypatch.setenv("VITKIT_NO_DOWNLOAD", "1")
    url = server.serve("/n.npz")
    with pytest.raises(UserError, match=r"VITKIT_NO_DOWNLOAD.*put it at .*n\.npz"):
        vitkit.load(url).model
    assert server.hits == {} and leftovers(cache) == []


def test_cache_defaults_to_the_datasets_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("VITKIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_path("https://storage.googleapis.com/vit_models/imagenet21k/ViT-B_16.npz") == (
        tmp_path / "xdg" / "vitkit" / "storage.googleapis.com" / "vit_models" / "imagenet21k" / "ViT-B_16.npz")


def test_slow_server_with_a_progress_bar_on_stderr(server, capsys):
    url = server.serve("/slow.npz", mode="slow")
    assert hub.download(url, progress=True).read_bytes() == BODY
    err = capsys.readouterr().err
    assert "slow.npz" in err and "100%" in err
    hub.cache_path(url).unlink()
    hub.download(url)  # stderr is not a terminal here and nobody asked: no bar
    assert capsys.readouterr().err == ""


def test_a_stalled_server_times_out_and_keeps_nothing(server, cache, monkeypatch):
    monkeypatch.setenv("VITKIT_DOWNLOAD_TIMEOUT", "0.5")
    url = server.serve("/stall.npz", mode="stall")
    t = time.time()
    with pytest.raises(UserError, match=r"cannot download .*timed out"):
        hub.download(url)
    assert time.time() - t < 10 and leftovers(cache) == []


def test_size_and_sha256_are_checked(server, cache):
    url = server.serve("/s.npz")
    with pytest.raises(UserError, match="announces"):
        hub.download(url, size=len(BODY) + 1)
    with pytest.raises(UserError, match="sha256"):
        hub.download(url, sha256="0" * 64)
    assert leftovers(cache) == []
    assert hub.download(url, sha256=hashlib.sha256(BODY).hexdigest(), size=len(BODY)).read_bytes() == BODY


def test_a_killed_download_leaves_nothing_trusted_and_a_rerun_completes(server, cache):
    url = server.serve("/k.npz", mode="stall")
    env = dict(os.environ, VITKIT_CACHE=str(cache), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", f"import vitkit; vitkit.load({url!r}).model"], env=env,
                            stderr=subprocess.PIPE)
    part = hub.cache_path(url).with_name("k.npz.part")
    deadline = time.time() + 60
    while not (part.exists() and part.stat().st_size > 0) and time.time() < deadline:
        time.sleep(0.05)
    assert part.exists() and 0 < part.stat().st_size < len(BODY), "the download never started"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not hub.cache_path(url).exists()  # only the .part file, which nothing loads
    with pytest.raises(UserError, match="does not exist|not a checkpoint"):
        vitkit.load(part).model  # not even by its own name: it has no format suffix
    server.serve("/k.npz")
    assert same_weights(vitkit.load(url).model, vitkit.load(FIX / "vit_token.npz").model)
    assert server.hits["/k.npz"] == 2 and leftovers(cache) == ["k.npz"]


@pytest.mark.parametrize("fmt", ["zip", "gztar", "tar"])
def test_a_checkpoint_folder_packed_in_an_archive_loads_from_its_url(server, cache, tmp_path, fmt):
    import shutil

    model = make_shipped(tmp_path / "src", name="ckpt", record=False)
    archive = Path(shutil.make_archive(str(tmp_path / "ckpt"), fmt, tmp_path / "src", "ckpt"))
    url = server.serve("/packed/" + archive.name, archive.read_bytes())
    assert same_weights(vitkit.load(url).model, model) and vitkit.load(url).class_names[3] == "c3"
    assert (hub.cache_path(url).with_name(archive.name + ".d") / "ckpt" / "model.safetensors").is_file()
    assert server.hits == {"/packed/" + archive.name: 1}
    assert main(["convert", url, str(tmp_path / "copy")]) == 0 and same_weights(vitkit.load(tmp_path / "copy").model, model)


def test_an_archive_reaching_outside_its_folder_is_refused(server, cache, tmp_path):
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 2
        t.addfile(info, io.BytesIO(b"hi"))
    url = server.serve("/evil.tar.gz", buf.getvalue())
    with pytest.raises(UserError, match=r"refusing the archive member '\.\./escaped\.txt'"):
        vitkit.load(url)
    assert not list(cache.rglob("escaped.txt")) and not list(cache.rglob("*.d"))


def test_two_processes_asking_for_one_url_download_it_once(server, cache):
    url = server.serve("/twice.npz", mode="slow", pause=1.0)  # 8 s: longer than the processes' start-up jitter
    env = dict(os.environ, VITKIT_CACHE=str(cache), OMP_NUM_THREADS="1")
    code = f"from vitkit.checkpoint.hub import download; print(download({url!r}))"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and outs == [str(hub.cache_path(url))] * 2
    assert server.hits == {"/twice.npz": 1} and hub.cache_path(url).read_bytes() == BODY


def test_urls_naming_no_readable_file_are_refused_before_any_request(server):
    for path in ("/model.onnx", "/folder/", "/"):
        with pytest.raises(UserError, match="URL"):
            vitkit.load(server.base + path).model
    assert server.hits == {}
    a, b = hub.cache_path("https://h/m.npz?v=1"), hub.cache_path("https://h/m.npz?v=2")
    assert a != b and a.suffix == b.suffix == ".npz"
