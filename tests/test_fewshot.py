"""Few-shot linear evaluation (section 4.1) and the baselines, against scikit-learn / numpy lstsq computations."""

import json
import os

import numpy as np
import pytest
import torch

from vitkit.errors import UserError
from vitkit.eval.features import extract_features, save_features
from vitkit.eval.fewshot import (_holdout, fewshot_eval, knn_eval, linear_probe, pm1_targets, ridge_fit,
                                 ridge_path, sample_per_class)
from vitkit.model import create_model


def _blobs(n_per=60, k=4, d=12, seed=0, spread=1.5):
    centres = np.random.default_rng(42).normal(0, 1, (k, d))  # the same classes for every seed
    rng = np.random.default_rng(seed)
    x = np.concatenate([centres[c] + spread * rng.normal(0, 1, (n_per, d)) for c in range(k)])
    y = np.repeat(np.arange(k) * 3 + 1, n_per)  # non-contiguous labels on purpose
    perm = rng.permutation(len(y))
    return x[perm], y[perm]


@pytest.mark.parametrize("lam", [1e-3, 0.5, 30.0])
def test_ridge_matches_sklearn(lam):
    from sklearn.linear_model import Ridge

    x, y = _blobs()
    t = pm1_targets(y, np.unique(y))
    assert set(np.unique(t)) == {-1.0, 1.0} and (t == 1).sum(1).tolist() == [1] * len(y)
    w, b = ridge_fit(x, t, lam)
    ref = Ridge(alpha=lam, fit_intercept=True, solver="svd").fit(x, t)
    np.testing.assert_allclose(w, ref.coef_.T, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(b, ref.intercept_, rtol=1e-7, atol=1e-9)


def test_ridge_path_matches_lstsq_with_more_features_than_examples():
    rng = np.random.default_rng(1)
    x, t = rng.normal(size=(7, 20)), rng.choice([-1.0, 1.0], size=(7, 3))
    for lam, (w, b) in zip([0.01, 1.0], ridge_path(x, t, [0.01, 1.0])):
        # augmented least squares: [x 1; sqrt(lam) I 0] [W; b] = [t; 0], the bias unpenalised
        a = np.block([[x, np.ones((7, 1))], [np.sqrt(lam) * np.eye(20), np.zeros((20, 1))]])
        sol = np.linalg.lstsq(a, np.vstack([t, np.zeros((20, 3))]), rcond=None)[0]
        np.testing.assert_allclose(w, sol[:20], rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(b, sol[20], rtol=1e-7, atol=1e-9)


def test_fewshot_accuracy_matches_independent_sklearn_solution():
    from sklearn.linear_model import Ridge

    x, y = _blobs(n_per=80)
    xt, yt = _blobs(n_per=40, seed=5)
    lam = 2.0
    res = fewshot_eval(x, y, xt, yt, shots=(1, 5), seeds=(0, 1, 2), val_size=40, lambdas=[lam])
    classes = np.unique(y)
    pool, val = _holdout(y, 40, 1234)
    assert len(set(pool) & set(val)) == 0 and len(pool) + len(val) == len(y)
    for k in (1, 5):
        accs = []
        for seed in (0, 1, 2):
            idx = sample_per_class(y, k, np.random.default_rng(seed), pool)
            assert np.isin(idx, pool).all() and sorted(np.bincount(np.searchsorted(classes, y[idx]))) == [k] * 4
            t = np.where(y[idx][:, None] == classes[None], 1.0, -1.0)
            clf = Ridge(alpha=lam).fit(x[idx], t)
            accs.append(np.mean(classes[clf.predict(xt).argmax(1)] == yt))
        assert res["shots"][k]["acc"] == pytest.approx(accs)
        assert res["shots"][k]["mean"] == pytest.approx(np.mean(accs))
        assert res["shots"][k]["std"] == pytest.approx(np.std(accs))
    assert res["shots"][5]["mean"] > 0.5  # separable blobs: well above chance (0.25)


def test_fewshot_chooses_regulariser_on_held_out_split():
    x, y = _blobs(n_per=80, spread=3.0)
    xt, yt = _blobs(n_per=40, seed=5, spread=3.0)
    lams = [1e-4, 1.0, 100.0]
    res = fewshot_eval(x, y, xt, yt, shots=(5,), seeds=(0,), val_size=60, lambdas=lams)
    pool, val = _holdout(y, 60, 1234)
    classes = np.unique(y)
    idx = sample_per_class(y, 5, np.random.default_rng(0), pool)
    val_acc = []
    for lam in lams:
        w, b = ridge_fit(x[idx], pm1_targets(y[idx], classes), lam)
        val_acc.append(np.mean(classes[(x[val] @ w + b).argmax(1)] == y[val]))
    best = max(range(3), key=lambda i: (val_acc[i], lams[i]))
    assert res["shots"][5]["lambda"] == [lams[best]]
    assert res["shots"][5]["val_acc"] == [pytest.approx(val_acc[best])]


def test_fewshot_is_deterministic():
    x, y = _blobs()
    a = fewshot_eval(x, y, x[:50], y[:50], shots=(2,), val_size=30)
    b = fewshot_eval(x, y, x[:50], y[:50], shots=(2,), val_size=30)
    assert a == b


def test_bad_few_shot_requests_are_user_errors():
    x, y = _blobs(n_per=10)
    with pytest.raises(UserError, match=r"25 shots per class asked, but class \d+ has only \d+"):
        fewshot_eval(x, y, x, y, shots=(25,), val_size=8)
    with pytest.raises(UserError, match="at least 2 classes; the data has 1"):
        fewshot_eval(x, np.zeros(len(x), int), x, y, shots=(1,))
    with pytest.raises(UserError, match="at least 2 classes"):
        linear_probe(x, np.ones(len(x), int), x, y)
    with pytest.raises(UserError, match="at least 2 classes"):
        knn_eval(x, np.ones(len(x), int), x, y)


def test_linear_probe_ridge_matches_sklearn_and_logreg_runs():
    from sklearn.linear_model import Ridge

    x, y = _blobs(n_per=80)
    xt, yt = _blobs(n_per=40, seed=5)
    res = linear_probe(x, y, xt, yt, method="ridge", val_size=40, lambdas=[3.0])
    pool, _ = _holdout(y, 40, 1234)
    classes = np.unique(y)
    clf = Ridge(alpha=3.0).fit(x[pool], np.where(y[pool][:, None] == classes[None], 1.0, -1.0))
    assert res["acc"] == pytest.approx(np.mean(classes[clf.predict(xt).argmax(1)] == yt))
    lr = linear_probe(x, y, xt, yt, method="logreg")
    assert lr["acc"] > 0.5


def test_knn_matches_sklearn():
    from sklearn.neighbors import KNeighborsClassifier

    x, y = _blobs(n_per=50)
    xt, yt = _blobs(n_per=20, seed=3)
    res = knn_eval(x, y, xt, yt, ks=(1, 5), chunk=17)
    for k in (1, 5):
        ref = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(x, y).predict(xt)
        # majority votes can tie differently; k=1 must agree exactly, k=5 nearly always
        agree = res["acc"][k] - np.mean(ref == yt)
        assert abs(agree) <= (0 if k == 1 else 0.03)


def test_extract_features_are_the_pre_logits_the_head_sees(tmp_path):
    torch.manual_seed(0)
    model = create_model("ViT-testing/4", num_classes=3, image_size=16, in_chans=1).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.3)
    imgs = torch.randint(0, 256, (5, 1, 16, 16), dtype=torch.uint8)
    f = extract_features(model, imgs, batch_size=2)
    assert f.shape == (5, 16) and f.dtype == np.float32
    x = imgs.float() / 255 * 2 - 1  # default preprocess: mean 0.5, std 0.5
    with torch.no_grad():
        torch.testing.assert_close(model.head(torch.from_numpy(f)), model(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.from_numpy(f), model.norm(model.forward_intermediates(x)["tokens"][-1])[:, 0])
    files = save_features(tmp_path / "sub" / "F.npy", f, np.arange(5), {"split": "train"})
    np.testing.assert_array_equal(np.load(files["features"]), f)
    np.testing.assert_array_equal(np.load(tmp_path / "sub" / "F.labels.npy"), np.arange(5))
    assert json.loads((tmp_path / "sub" / "F.json").read_text())["shape"] == [5, 16]


def test_fewshot_and_features_cli(tmp_path, capsys):
    import vitkit
    from vitkit.cli import main

    torch.manual_seed(0)
    m = create_model("ViT-testing/7", num_classes=10, image_size=28, in_chans=1)
    for p in m.parameters():
        p.data.normal_(0, 0.3)
    vitkit.save_checkpoint(tmp_path / "ck", m)
    ck = str(tmp_path / "ck")
    assert main(["features", ck, "--dataset", "embedded", "--split", "train", "--sample", "600",
                 "--out", str(tmp_path / "F.npy")]) == 0
    assert main(["features", ck, "--dataset", "embedded", "--split", "test", "--sample", "300",
                 "--out", str(tmp_path / "G.npy")]) == 0
    f, y = np.load(tmp_path / "F.npy"), np.load(tmp_path / "F.labels.npy")
    assert f.shape == (600, 16) and y.shape == (600,)
    assert main(["fewshot", "--train-features", str(tmp_path / "F.npy"), "--test-features", str(tmp_path / "G.npy"),
                 "--shots", "1,5", "--val-size", "100", "--out", str(tmp_path / "fs.json")]) == 0
    rep = json.loads((tmp_path / "fs.json").read_text())
    g, yg = np.load(tmp_path / "G.npy"), np.load(tmp_path / "G.labels.npy")
    ref = fewshot_eval(f, y, g, yg, shots=(1, 5), val_size=100)
    assert rep["fewshot"]["shots"]["5"]["acc"] == pytest.approx(ref["shots"][5]["acc"])
    assert "knn" in rep["baselines"] and "linear_probe_ridge" in rep["baselines"]
    assert "top-1 mean" in capsys.readouterr().out
    # the same numbers straight from the checkpoint
    assert main(["fewshot", ck, "--dataset", "embedded", "--sample-train", "600", "--sample-test", "300",
                 "--shots", "5", "--val-size", "100", "--baselines", "none", "--out", str(tmp_path / "fs2.json")]) == 0
    rep2 = json.loads((tmp_path / "fs2.json").read_text())
    assert rep2["fewshot"]["shots"]["5"]["acc"] == pytest.approx(ref["shots"][5]["acc"], abs=1e-6)
    capsys.readouterr()
    assert main(["fewshot", ck, "--dataset", "embedded", "--sample-train", "600", "--shots", "200"]) == 2
    assert main(["fewshot", "--train-features", str(tmp_path / "F.npy"), "--test-features",
                 str(tmp_path / "F.npy"), "--shots", "1,x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "200 shots per class asked" in err[0] and "integers" in err[1]


def _small_checkpoint(tmp_path):
    import vitkit

    torch.manual_seed(0)
    m = create_model("ViT-testing/7", num_classes=10, image_size=28, in_chans=1)
    for p in m.parameters():
        p.data.normal_(0, 0.3)
    vitkit.save_checkpoint(tmp_path / "ck", m)
    return str(tmp_path / "ck")


def _one_error_line(capsys, argv) -> str:
    from vitkit.cli import main

    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vitkit: error: "), err
    return err[0]


def test_fewshot_writes_a_file_only_when_asked(tmp_path, monkeypatch, capsys):
    """Without --out the table is printed and nothing is written: a fewshot.json already in the current folder
    (or any other file) is left as it was. With --out, the JSON is written there, with no temporary file left."""
    from vitkit.cli import main

    x, y = _blobs(n_per=30)
    xt, yt = _blobs(n_per=10, seed=3)
    save_features(tmp_path / "F.npy", x, y)
    save_features(tmp_path / "G.npy", xt, yt)
    work = tmp_path / "work"
    work.mkdir()
    (work / "fewshot.json").write_text("the user's earlier results")
    monkeypatch.chdir(work)
    feats = ["fewshot", "--train-features", str(tmp_path / "F.npy"), "--test-features", str(tmp_path / "G.npy"),
             "--shots", "1", "--val-size", "20"]
    assert main(feats) == 0
    assert "top-1 mean" in capsys.readouterr().out
    assert sorted(p.name for p in work.iterdir()) == ["fewshot.json"]
    assert (work / "fewshot.json").read_text() == "the user's earlier results"
    assert main(feats + ["--out", str(tmp_path / "out" / "fs.json")]) == 0
    assert json.loads((tmp_path / "out" / "fs.json").read_text())["fewshot"]["shots"]["1"]["acc"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["fs.json"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "out" / "fs.json").stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain open() makes it


def test_too_many_shots_names_the_class(tmp_path, capsys):
    """The class short of examples is named as the dataset names it (and by label), both from a checkpoint and
    dataset and from `vitkit features` files (their F.json keeps the class names)."""
    import re

    ck = _small_checkpoint(tmp_path)
    line = _one_error_line(capsys, ["fewshot", ck, "--dataset", "embedded", "--sample-train", "300",
                                    "--shots", "100", "--val-size", "50", "--baselines", "none"])
    m = re.search(r"100 shots per class asked, but class '([^']+)' \(label (\d)\) has only \d+", line)
    from vitkit.data.datasets import FMNIST_CLASSES
    assert m and FMNIST_CLASSES[int(m.group(2))] == m.group(1), line
    x, _ = _blobs(n_per=30)
    y = np.repeat([0, 1, 2, 3], [30, 30, 30, 5])
    save_features(tmp_path / "F.npy", x, y, {"class_names": ["cat", "dog", "bird", "fish"]})
    line = _one_error_line(capsys, ["fewshot", "--train-features", tmp_path / "F.npy", "--test-features",
                                    tmp_path / "F.npy", "--shots", "10", "--val-size", "20"])
    assert "class 'fish' (label 3) has only" in line, line


@pytest.mark.parametrize("split", ["validation", "val", "dev"])
def test_features_accepts_only_the_splits_datasets_have(tmp_path, capsys, split):
    line = _one_error_line(capsys, ["features", tmp_path / "missing", "--dataset", "embedded", "--split", split,
                                    "--out", tmp_path / "F.npy"])
    assert "--split" in line and "'train', 'test'" in line and split in line, line
    assert list(tmp_path.iterdir()) == []
