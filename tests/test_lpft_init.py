"""benchmarks/lpft_init.py: the head it writes is the logistic regression on the frozen features, logit for logit."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

import vitkit
from imagefolders import write_folder
from vitkit.checkpoint.io import save_checkpoint
from vitkit.data.preprocess import Preprocess
from vitkit.eval.features import extract_features, load_split, model_inputs
from vitkit.model import create_model

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "lpft_init.py"


def _script():
    spec = importlib.util.spec_from_file_location("lpft_init", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("classes", [3, 2])
def test_head_is_the_probe(tmp_path, classes):
    ckpt = save_checkpoint(tmp_path / "pre", create_model("ViT-testing/4", num_classes=5, image_size=16),
                           Preprocess(image_size=16, channels=3, mean=(0.5,) * 3, std=(0.5,) * 3))
    spec = write_folder(tmp_path / "data", n_train=6, classes=classes)
    _script().main([str(ckpt), spec, str(tmp_path / "out"), "--C", "0.5"])

    out = vitkit.load(tmp_path / "out")
    images, labels, names = load_split(spec, "train", out)
    assert out.model.cfg.num_classes == classes and out.class_names == names
    feats = extract_features(out, images).astype(np.float64)
    ref = LogisticRegression(max_iter=5000, C=0.5).fit(feats, labels).decision_function(feats)
    w, b = out.model.head.weight.detach().double().numpy(), out.model.head.bias.detach().double().numpy()
    logits = feats @ w.T + b
    got = logits if classes > 2 else logits[:, 1] - logits[:, 0]  # a binary probe's one logit difference
    np.testing.assert_allclose(got, ref, atol=1e-4)
    # and the network itself computes those logits from the images
    net_logits = out.model.eval()(model_inputs(out, images))
    np.testing.assert_allclose(net_logits.detach().double().numpy(), logits, atol=1e-4)


def test_bad_C_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        _script().main(["ckpt", "imagefolder:x", str(tmp_path / "o"), "--C", "-1"])
    assert e.value.code == 2 and "--C must be > 0" in capsys.readouterr().err
