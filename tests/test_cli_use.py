"""`python -m vitkit train / eval / predict` as a user runs them: the happy path end to end, and every bad input
answered by exactly one stderr line (exit code != 0, no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TINY = ["--model", "ViT-testing/4", "--steps", "3", "--batch-size", "32", "--limit-train", "128", "--limit-test",
        "64", "--precision", "fp32", "--no-progress"]


def vitkit(*args, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "vitkit", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def one_line_error(r, *words):
    assert r.returncode != 0, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr and lines[0].startswith("vitkit: error: ")
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    r = vitkit("train", *TINY, "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])  # --json: the last stdout line is one JSON object
    assert {"top1", "top5", "dataset", "checkpoint", "time_s", "steps", "img_per_s"} <= set(result)
    assert result["checkpoint"] == str(out / "checkpoint") and result["steps"] == 3 and result["dataset"] == "embedded"
    return out, result


def test_train_eval_predict(run_dir, tmp_path, capsys):
    from PIL import Image

    from vitkit.data.datasets import load_dataset

    out, trained = run_dir
    r = vitkit("eval", out / "checkpoint", "--limit", 64, "--json")
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)
    assert ev["n"] == 64 and ev["top1"] == pytest.approx(trained["top1"]) and ev["top5"] == pytest.approx(trained["top5"])
    from vitkit import cli

    assert cli.main(["eval", str(out / "checkpoint"), "--limit", "64"]) == 0  # the table, in this process
    table = capsys.readouterr().out
    assert "top-1" in table and "Ankle boot" in table and f"{100 * ev['top1']:6.2f}%" in table

    ds = load_dataset("embedded", "test")
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"im{i}.png")
        Image.fromarray(ds.images[i, 0].numpy()).resize((56, 40)).convert("RGB").save(paths[-1])
    r = vitkit("predict", out / "checkpoint", *paths, "--topk", 3, "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.strip().splitlines()]
    assert [row["image"] for row in rows] == [str(p) for p in paths]
    for row in rows:
        probs = [t["prob"] for t in row["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6


def start(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "vitkit", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def finish(proc):
    out, err = proc.communicate(timeout=240)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_bad_inputs_are_one_line_errors(run_dir, tmp_path):
    """All the bad inputs at once (the processes run concurrently: each is mostly Python and torch start-up)."""
    import shutil

    out, _ = run_dir
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    bad_ckpt = tmp_path / "bad_ckpt"  # config says 7 classes, weights have 10
    shutil.copytree(out / "checkpoint", bad_ckpt)
    meta = json.loads((bad_ckpt / "config.json").read_text())
    meta["model"]["num_classes"] = 7
    meta["class_names"] = meta["class_names"][:7]
    (bad_ckpt / "config.json").write_text(json.dumps(meta))
    cases = {
        "variant": (["train", "--model", "ViT-Q/16", "--out", tmp_path / "v"], ["ViT-Q/16", "ViT-B/16", "Mini"]),
        "dataset": (["train", "--dataset", "imagenet-9k", "--out", tmp_path / "d"],
                    ["imagenet-9k", "fashion-mnist", "cifar10", "imagefolder"]),
        "size": (["train", *TINY, "--image-size", 30, "--out", tmp_path / "s"], ["30", "patch size 4"]),
        "resume": (["train", "--out", tmp_path / "empty", "--resume"], ["--resume", "no checkpoint"]),
        "out": (["train", *TINY, "--out", blocker / "run"], [str(blocker)]),
        "shape": (["eval", bad_ckpt], ["head.", "(10", "(7"]),
        "image": (["predict", out / "checkpoint", broken], [str(broken)]),
        "batch": (["train", "--model", "ViT-testing/4", "--limit-train", 16, "--batch-size", 32, "--out",
                   tmp_path / "b"], ["--batch-size 32", "16"]),
    }
    mnist = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
    if (mnist / "t10k-images-idx3-ubyte.gz").is_file():  # flip TTA on digits (a mirrored 2 is not a 2)
        cases["tta"] = (["eval", out / "checkpoint", "--dataset", "mnist", "--data-dir", mnist, "--tta", "flip"],
                        ["--tta flip", "mnist", "mirror"])
    procs = {name: start(*args) for name, (args, _) in cases.items()}
    for name, proc in procs.items():
        one_line_error(finish(proc), *cases[name][1])


def test_train_command_keeps_freed_memory(tmp_path, monkeypatch):
    """`vitkit train` asks malloc to keep freed blocks for reuse (vitkit/perf.py)."""
    import vitkit.perf
    from vitkit import cli

    calls = []
    monkeypatch.setattr(vitkit.perf, "keep_freed_memory", lambda: calls.append("called") or True)
    assert cli.main(["train", *TINY, "--steps", "1", "--out", str(tmp_path / "run")]) == 0
    assert calls == ["called"]


def test_a_reader_that_leaves_early_gets_no_traceback():
    """`vitkit models --pretrained | head -1`: the pipe closes after one line."""
    p = subprocess.Popen([sys.executable, "-m", "vitkit", "models", "--pretrained"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    first = p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read()
    p.wait(timeout=60)
    assert first.split()[0] == "name" and "Traceback" not in err and "BrokenPipe" not in err


def test_every_command_with_a_dataset_flag_lists_every_dataset_name_in_its_help(capsys):
    """One list (vitkit/data/names.py) feeds the loader and every --dataset help text, so none falls behind."""
    from vitkit import cli
    from vitkit.data.datasets import DATASET_NAMES

    for command in ("train", "eval", "fewshot", "features", "analyze"):
        try:
            cli.main([command, "--help"])
        except SystemExit:
            pass
        text = " ".join(capsys.readouterr().out.split())
        options = text.split("options:", 1)[1]
        own = options.split("--dataset DATASET", 1)[1].split(" --", 1)[0]  # the flag's own help text
        for name in [*DATASET_NAMES, "imagefolder:PATH"]:
            assert name in own, (command, name, own)
