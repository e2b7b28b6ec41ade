"""Knowledge distillation (`vitkit train --teacher CKPT[,CKPT] --distill-weight W`, vitkit/train/objectives.py):
the loss against a hand computation, the teachers' own preprocessing, exact resume, and the refusals."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vitkit.model import create_model
from vitkit.runtime import LoadedModel, Preprocess
from vitkit.train.objectives import Classify, Distill

from runlogs import metrics, uninterrupted_and_resumed
from test_mpp import colour_folder, one_thread  # noqa: F401 (a fixture)


def loaded(name: str, seed: int, image_size: int = 32, classes: int = 3, mean=(0.5, 0.5, 0.5)) -> LoadedModel:
    torch.manual_seed(seed)
    model = create_model(name, num_classes=classes, image_size=image_size).eval()
    for p in model.parameters():  # a head that is not zero, so that the teachers' probabilities differ
        torch.nn.init.normal_(p, std=0.2) if p.ndim > 1 else None
    pre = Preprocess(image_size=image_size, mean=mean, std=(0.25, 0.25, 0.25), channels=3)
    return LoadedModel(model, pre, [str(i) for i in range(classes)])


def normalise(images: torch.Tensor, pre: Preprocess, size: int) -> torch.Tensor:
    """By hand: bilinear resize (as vitkit.data.datasets.resize_batch), /255, (x - mean) / std."""
    from vitkit.data.datasets import resize_batch

    x = resize_batch(images, size) if images.shape[-1] != size else images
    x = x.float() / 255
    return (x - torch.tensor(pre.mean)[:, None, None]) / torch.tensor(pre.std)[:, None, None]


def test_loss_is_the_cross_entropy_to_the_mixed_target_by_hand():
    student = loaded("ViT-testing/4", 0)
    # two teachers, one at another resolution and normalisation: each reads the uint8 batch its own way
    t1, t2 = loaded("ViT-testing/4", 1), loaded("ViT-testing/8", 2, image_size=48, mean=(0.4, 0.5, 0.6))
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 1, 0])
    smooth = F.one_hot(labels, 3).float() * 0.9 + 0.1 / 3
    w = 0.3
    obj = Distill([t1, t2], w)
    model = obj.module(student.model, student.preprocess)
    x = obj.inputs(images, student.preprocess)
    assert x.dtype == torch.uint8
    with torch.no_grad():
        got = obj.loss(model, x, smooth, torch.Generator())
        p1 = t1.model(normalise(images, t1.preprocess, 32)).softmax(-1)
        p2 = t2.model(normalise(images, t2.preprocess, 48)).softmax(-1)
        assert not torch.allclose(p1, p2, atol=1e-3)
        target = (1 - w) * smooth + w * (p1 + p2) / 2
        logp = student.model(normalise(images, student.preprocess, 32)).log_softmax(-1)
        want = -(target * logp).sum(-1).mean()
    assert float(got) == pytest.approx(float(want), abs=1e-5)

    # integer labels are one-hot; weight 0 is plain classification, to the bit
    with torch.no_grad():
        d0 = Distill([t1], 0.0)
        zero = d0.loss(d0.module(student.model, student.preprocess), x, labels, torch.Generator())
        plain = Classify().loss(model, Classify().inputs(images, student.preprocess), labels, torch.Generator())
    assert float(zero) == pytest.approx(float(plain), abs=1e-6)


def test_train_with_two_teachers_and_resume_exactly(tmp_path, capsys, one_thread):
    """Two teachers trained by vitkit (an ensemble: seeds 0 and 1) teach a student through the CLI; a
    distilling run that dies after step 4 and is resumed from step 3 logs the same losses as an uninterrupted one."""
    from vitkit import cli
    from vitkit.checkpoint.io import load_train_state
    from vitkit.train.loop import TrainSettings, train

    folder = colour_folder(tmp_path / "photos")
    common = ["--dataset", f"imagefolder:{folder}", "--image-size", "32", "--batch-size", "8", "--precision", "fp32",
              "--no-progress", "--model", "ViT-testing/4"]
    assert cli.main(["train", *common, "--steps", "3", "--out", str(tmp_path / "teacher")]) == 0
    assert cli.main(["train", *common, "--steps", "3", "--seed", "1", "--out", str(tmp_path / "teacher1")]) == 0
    teacher, teacher1 = (str(tmp_path / d / "checkpoint") for d in ("teacher", "teacher1"))
    capsys.readouterr()
    assert cli.main(["train", *common, "--steps", "2", "--teacher", f"{teacher},{teacher1}", "--distill-weight",
                     "1", "--out", str(tmp_path / "student")]) == 0
    printed = capsys.readouterr()
    assert "distilling 2 teachers (weight 1)" in printed.out + printed.err
    state = load_train_state(tmp_path / "student" / "checkpoint")
    assert state["settings"]["teacher"] == f"{teacher},{teacher1}" and state["settings"]["distill_weight"] == 1
    assert state["objective_state"] is None  # only the student is saved

    run = dict(dataset=f"imagefolder:{folder}", image_size=32, model="ViT-testing/4", batch_size=8,
               precision="fp32", progress=False, warmup_steps=1, save_every=3, eval_every=3, teacher=teacher,
               distill_weight=0.5, randaugment=(2, 5))
    ref, cut = uninterrupted_and_resumed(tmp_path, 6, 4, **run)
    assert [r.get("loss", r.get("eval_loss")) for r in ref] == [r.get("loss", r.get("eval_loss")) for r in cut]
    # and the teacher changed the losses: the same run without it differs
    train(TrainSettings(**{**run, "teacher": None}, steps=6, out=str(tmp_path / "plain")))
    assert [r["loss"] for r in metrics(tmp_path / "plain") if "grad_norm" in r] != \
        [r["loss"] for r in ref if "grad_norm" in r]


def test_refusals_are_one_line_before_training(tmp_path, capsys):
    from vitkit import cli

    folder = colour_folder(tmp_path / "photos", per_class=2)
    common = ["--dataset", f"imagefolder:{folder}", "--image-size", "32", "--batch-size", "4", "--no-progress",
              "--model", "ViT-testing/4", "--steps", "1"]
    wrong = tmp_path / "wrong"  # a checkpoint with 3 classes for a 2-class folder
    from vitkit import save_checkpoint

    save_checkpoint(wrong, loaded("ViT-testing/4", 0))
    cases = [
        (["--teacher", str(wrong)], f"--teacher {wrong}: it predicts 3 classes, the dataset has 2"),
        (["--teacher", str(tmp_path / "nope")], "does not exist"),
        (["--teacher", f"{wrong},"], "an empty name in the comma list"),
        (["--teacher", str(wrong), "--distill-weight", "1.5"], "--distill-weight: expected a number from 0 to 1"),
        (["--teacher", str(wrong), "--objective", "mpp"], "--teacher distils class probabilities"),
    ]
    for i, (extra, message) in enumerate(cases):
        assert cli.main(["train", *common, *extra, "--out", str(tmp_path / f"run{i}")]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (extra, err)
        assert not (tmp_path / f"run{i}" / "checkpoint").exists()


def test_class_names_must_match_where_the_teacher_has_them():
    from vitkit.errors import UserError
    from vitkit.train.objectives import check_teachers

    t = loaded("ViT-testing/4", 0, classes=2)
    t.class_names = ["ants", "bees"]
    check_teachers({"t": t}, ["ants", "bees"])
    with pytest.raises(UserError, match=r"--teacher t: its class 0 is 'ants', the dataset's is 'bees'"):
        check_teachers({"t": t}, ["bees", "ants"])
    check_teachers({"t": loaded("ViT-testing/4", 0, classes=2)}, ["bees", "ants"])  # placeholder names: count only


def test_ensemble_script_agrees_with_eval_and_a_hand_ensemble(tmp_path, capsys):
    """benchmarks/ensemble_top1.py: each member's top-1 is vitkit's evaluate(); the ensemble's is the argmax of
    the mean probability, computed here by hand."""
    import importlib.util

    import vitkit
    from vitkit import save_checkpoint
    from vitkit.data.datasets import load_dataset
    from vitkit.eval.evaluate import evaluate

    folder = colour_folder(tmp_path / "photos", per_class=6)
    paths = []
    for seed in (0, 1):
        paths.append(tmp_path / f"m{seed}")
        m = loaded("ViT-testing/4", seed, classes=2)
        m.class_names = ["class0", "class1"]
        save_checkpoint(paths[-1], m)
    spec = importlib.util.spec_from_file_location("ensemble_top1", Path(__file__).parents[1] / "benchmarks" /
                                                  "ensemble_top1.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main([*map(str, paths), "--dataset", f"imagefolder:{folder}", "--precision", "fp32"]) == 0
    got = json.loads(capsys.readouterr().out)
    ds = load_dataset(f"imagefolder:{folder}", "test", image_size=32, channels=3)
    members = [vitkit.load(p) for p in paths]
    for p, m in zip(paths, members):
        assert got["members"][str(p)] == pytest.approx(evaluate(m, ds)["top1"], abs=1e-9)
    from vitkit.data.datasets import iterate_batches

    x, labels = next(iterate_batches(ds, torch.arange(len(ds.labels)), 10_000))
    with torch.no_grad():
        probs = sum(normalise_and_run(m, x) for m in members) / 2
    assert got["ensemble_top1"] == pytest.approx(float((probs.argmax(1) == labels.long()).float().mean()))
    assert mod.main([str(paths[0]), "--dataset", "tiny-imagenet", "--data-dir", str(tmp_path)]) == 2


def normalise_and_run(m, images: torch.Tensor) -> torch.Tensor:
    return m.model(normalise(images, m.preprocess, m.config.image_size)).softmax(-1)
