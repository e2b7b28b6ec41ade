"""`vitkit bench` machinery: correctness only (no timed assertions; speed figures live in benchmarks/README.md)."""

import json

import pytest
import torch

from vitkit import create_model
from vitkit.bench import throughput as T
from vitkit.cli import main

transformers = pytest.importorskip("transformers")


def test_hf_peer_has_the_same_architecture():
    from vitkit.bench.peers import hf_model

    m = create_model("ViT-testing/4", image_size=16, num_classes=7)
    hf = hf_model(m.cfg)
    assert hf.config._attn_implementation == "sdpa"
    assert sum(p.numel() for p in hf.parameters()) == m.num_params()  # same shapes -> same FLOPs per image
    assert hf.config.hidden_act == "gelu_pytorch_tanh" and hf.config.layer_norm_eps == m.cfg.layer_norm_eps
    out = hf(torch.randn(2, 3, 16, 16)).logits
    assert out.shape == (2, 7)


def test_runners_step_and_train():
    m = create_model("ViT-testing/4", image_size=16, num_classes=5)
    kw = dict(batch=4, image_size=16, chans=3, num_classes=5, flops_per_image=m.flops_per_image(), device="cpu")
    inf = T.inference_runner("i", m, precision="bf16", policy="cast", **kw)
    assert inf.step().dtype == torch.bfloat16 and inf.flops == 4 * m.flops_per_image()
    m2 = create_model("ViT-testing/4", image_size=16, num_classes=5)
    before = m2.head.weight.detach().clone()
    tr = T.training_runner("t", m2, precision="bf16", fused_optimizer=True, **kw)
    losses = [tr.step().item() for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(before, m2.head.weight) and m2.head.weight.dtype == torch.float32  # fp32 masters
    assert tr.flops == 3 * 4 * m.flops_per_image()
    assert all(p.grad is None for p in m2.parameters())  # zero_grad(set_to_none) ran


def test_interleaved_results_and_ceiling():
    c = T.ceiling_runner(torch.float32, "cpu", n=64, products=2)
    m = create_model("ViT-testing/4", image_size=16, num_classes=5)
    r = T.inference_runner("i", m, batch=2, image_size=16, chans=3, num_classes=5, flops_per_image=100,
                           precision="fp32", policy="cast", device="cpu")
    bad = T.Runner("bad", lambda: 1 / 0, 1, 1.0, torch.device("cpu"))
    T.run_interleaved([c, r, bad], warmup=1, repeats=2)
    assert len(r.times) == 2 and len(c.times) == 2 and bad.error.startswith("ZeroDivisionError")
    ceil = c.result(None)["flops_per_s"]
    res = r.result(ceil)
    assert res["mfu"] == pytest.approx(res["achieved_flops_per_s"] / ceil)
    assert res["peak_mem_bytes"] is not None and "error" in bad.result(ceil)


def test_cuda_path_syncs_and_uses_allocator_peak(monkeypatch):
    """The GPU branch (sync around timing, max_memory_allocated for peak) exercised with a fake CUDA device."""
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: calls.append("sync"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: 12345)
    r = T.Runner("fake-cuda", lambda: calls.append("step"), 1, 1.0, torch.device("cuda"))
    assert T.measure_peak(r) == 12345
    assert calls[:3] == ["sync", "reset", "step"] and calls[-1] == "sync"
    calls.clear()
    T.time_once(lambda: calls.append("step"), "cuda")
    assert calls == ["sync", "step", "sync"]


def test_bench_cli_table_and_json(tmp_path, capsys):
    out = tmp_path / "b.json"
    rc = main(["bench", "--model", "ViT-testing/4", "--image-size", "16", "--batch-size", "2", "--mode",
               "inference,training", "--precision", "fp32,bf16", "--repeats", "1", "--warmup", "1", "--peers", "hf",
               "--ceiling-n", "64", "--quiet", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "matmul ceiling bf16" in text and "hf infer bf16" in text and "ratios" in text
    rep = json.loads(out.read_text())
    assert set(rep["ceilings"]) == {"fp32", "bf16"}
    names = {r["name"] for r in rep["results"]}
    assert {"vitkit infer fp32 c=no", "hf train bf16 c=no"} <= names
    assert all(r["mfu"] > 0 and r["img_per_s"] > 0 for r in rep["results"])
    assert len(rep["ratios"]) == 8  # 2 vitkit rows x 2 peer rows, per mode


def test_bench_cli_rejects_bad_values(capsys):
    assert main(["bench", "--model", "ViT-testing/4", "--precision", "fp8", "--quiet"]) == 2
    assert "unknown value" in capsys.readouterr().err
    assert main(["bench", "--model", "ViT-testing/4", "--peer-precision", "int8", "--quiet"]) == 2
    from vitkit.bench.peers import timm_available

    if not timm_available():
        assert main(["bench", "--model", "ViT-testing/4", "--peers", "timm", "--quiet"]) == 2
        assert "timm is not installed" in capsys.readouterr().err


def test_decode_throughput_fallback(tmp_path):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "train" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 30), (i * 40, 10, 200)).save(tmp_path / "train" / c / f"{i}.jpg")
    rows = T.decode_throughput(f"imagefolder:{tmp_path}", image_size=16, batch=4, workers=[0], repeats=1)
    assert rows[0]["images"] == 6 and rows[0]["img_per_s"] > 0


def test_bench_precision_auto_is_what_the_hardware_has(monkeypatch):
    """The default --precision auto measures bf16 only where it is native (an emulated bf16 row was 24x slower)."""
    import argparse

    from vitkit.bench.cli import _resolve_auto, add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    for native, want in ((True, ["bf16"]), (False, ["fp32"])):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        args = p.parse_args(["--peer-precision", "auto,fp32"])
        assert args.precision == ["auto"]
        _resolve_auto(args, torch.device("cpu"))
        assert args.precision == want and args.peer_precision == want + ["fp32"]
