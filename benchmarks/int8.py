"""int8 inference on CPU: top-1 and speed of a model as float32 eager PyTorch, ONNX Runtime float32 and ONNX Runtime
int8 (`vitkit export --quantize int8`), in one process, printed as one JSON object.

    VITKIT_DATA=DIR python benchmarks/int8.py ViT-Mini_8-tiny-imagenet --threads 1   # DIR holds a Tiny ImageNet folder

Accuracy: the whole validation split (10,000 images), the same preprocessed batches for the three. Speed: batch 1 and
32 of random input, the three runtimes interleaved in each repetition (so load from other work on a shared machine
falls on all three alike), median seconds per batch after one warm-up; ratios are the figures to compare. One JSON
line (scripts/record.py keeps it as a row).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import vitkit
from vitkit.checkpoint.cli_export import export, quantize_int8
from vitkit.runtime import load_split, to_model_input


def _ort(path, threads=None):
    """An onnxruntime session whose idle threads do not spin: spinning threads (the default) would take the cores
    from the PyTorch run that follows in the interleaved timing."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(sess.run(None, {"pixel_values": x.numpy()})[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--dataset", default="tiny-imagenet")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None, help="threads for torch and onnxruntime alike (default: each its own default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    loaded = vitkit.load(a.model)
    model = loaded.model.float().eval()
    with tempfile.TemporaryDirectory() as d:
        fp32, int8 = Path(d) / "fp32.onnx", Path(d) / "int8.onnx"
        export(model, "onnx", fp32)
        facts = quantize_int8(fp32, int8)

        def eager(x):
            with torch.no_grad():
                return model(x)
        runs = {"eager_fp32": eager, "ort_fp32": _ort(fp32, a.threads), "ort_int8": _ort(int8, a.threads)}

        images, labels, _ = load_split(a.dataset, "test", loaded.preprocess, data_dir=a.data_dir, limit=a.limit)
        labels = torch.as_tensor(labels)
        preds = {k: [] for k in runs}
        for i in range(0, len(labels), 250):
            x = to_model_input(images[i:i + 250], loaded.preprocess)
            for k, r in runs.items():
                preds[k].append(r(x).argmax(1))
        preds = {k: torch.cat(v) for k, v in preds.items()}
        top1 = {k: round(100.0 * float((p == labels).float().mean()), 2) for k, p in preds.items()}
        agree = round(100.0 * float((preds["ort_int8"] == preds["eager_fp32"]).float().mean()), 2)

        speed = {}
        cfg = model.cfg
        for bs in (1, 32):
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(bs, cfg.in_chans, cfg.image_size, cfg.image_size, generator=gen)
            times = {k: [] for k in runs}
            for rep in range(a.reps + 1):
                for k, r in runs.items():
                    t = time.perf_counter()
                    r(x)
                    if rep:  # the first is a warm-up
                        times[k].append(time.perf_counter() - t)
            med = {k: statistics.median(v) for k, v in times.items()}
            speed[f"batch{bs}"] = {"median_s": {k: round(v, 5) for k, v in med.items()},
                                   "images_per_s": {k: round(bs / v, 1) for k, v in med.items()},
                                   "speedup_int8_vs_eager": round(med["eager_fp32"] / med["ort_int8"], 2),
                                   "speedup_int8_vs_ort_fp32": round(med["ort_fp32"] / med["ort_int8"], 2)}
    print(json.dumps({"model": a.model, "dataset": a.dataset, "images": len(labels), "top1": top1,
                      "top1_change_int8_points": round(top1["ort_int8"] - top1["eager_fp32"], 2),
                      "int8_agreement_with_eager": agree, "reps": a.reps, "torch_threads": torch.get_num_threads(),
                      "int8_file": facts, "speed": speed}))


if __name__ == "__main__":
    main()
