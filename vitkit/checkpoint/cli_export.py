"""`vitkit export CKPT --format onnx|torchscript|exported-program OUT`: a deployable model with a dynamic batch size,
checked in its own runtime.

    vitkit export ckpt/ --format onnx model.onnx --verify-dataset embedded
    vitkit export ViT-B_16.npz --format exported-program vit.pt2        # any checkpoint vitkit reads

The exported graph takes the preprocessed float tensor `pixel_values` (N, C, S, S) -- the checkpoint's
preprocessing (resize to S, scale to its mean/std) stays outside -- and returns `logits` (N, classes).

Runtimes: ONNX runs in onnxruntime (`pip install onnx onnxruntime onnxscript`; torch's exporter needs onnxscript),
TorchScript in torch.jit.load, ExportedProgram in torch.export.load. After writing, the file is reloaded in its
runtime and run on two batch sizes against PyTorch (max |logit difference| printed); `--verify-dataset` also
compares top-1 accuracy on a dataset's test split (e.g. "embedded": the 2,000 Fashion-MNIST test images that ship
with vitkit) and prints both numbers; the command fails if they differ by more than --max-top1-gap points.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import warnings
from pathlib import Path

import torch

from ..errors import UserError

FORMATS = ("onnx", "torchscript", "exported-program")
RUNTIME = {"onnx": "onnxruntime", "torchscript": "torch.jit", "exported-program": "torch.export"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="any checkpoint vitkit reads (vitkit dir, official .npz, HF folder, timm)")
    p.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    p.add_argument("out", help="output file (.onnx, .pt, .pt2)")
    from ..flags import Number

    p.add_argument("--opset", type=Number(int, min=7), default=18, help="ONNX opset (default 18)")
    p.add_argument("--verify-dataset", default=None, metavar="NAME",
                   help="compare top-1 of the exported model (in its runtime) and PyTorch on this dataset's test "
                        "split, e.g. embedded, fashion-mnist, cifar10, imagefolder:PATH")
    p.add_argument("--verify-limit", type=Number(int, min=1), default=None, metavar="N",
                   help="use only the first N test images")
    p.add_argument("--batch-size", type=Number(int, min=1), default=100, metavar="N",
                   help="images per forward pass when verifying (default 100)")
    p.add_argument("--max-top1-gap", type=Number(float, min=0), default=0.1, metavar="POINTS",
                   help="fail if the two top-1 accuracies differ by more than this many points (default 0.1)")


@contextlib.contextmanager
def _quiet():
    """The exporters log and warn about things that do not concern the user (missing torchvision ops, ...)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            for lg, lv in zip(loggers, levels):
                lg.setLevel(lv)


def export(model, fmt: str, out, opset: int = 18) -> Path:
    """Write `model` (eval mode, float32, CPU) in `fmt` with a dynamic batch dimension."""
    cfg = model.cfg
    model = model.float().cpu().eval()
    x = torch.randn(2, cfg.in_chans, cfg.image_size, cfg.image_size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with _quiet(), torch.no_grad():
        if fmt == "onnx":
            try:
                import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
            except ImportError:
                raise UserError("ONNX export needs the packages onnx and onnxscript: pip install onnx onnxscript "
                                "onnxruntime") from None
            torch.onnx.export(model, (x,), str(out), dynamo=True, opset_version=opset,
                              input_names=["pixel_values"], output_names=["logits"],
                              dynamic_shapes={"x": {0: batch}}, external_data=False, verbose=False)
        elif fmt == "torchscript":
            traced = torch.jit.trace(model, x, check_trace=False)
            traced.save(str(out))
        elif fmt == "exported-program":
            ep = torch.export.export(model, (x,), dynamic_shapes={"x": {0: batch}})
            torch.export.save(ep, str(out))
        else:
            raise UserError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    return out


def runtime(fmt: str, path):
    """A function float32 tensor (N, C, S, S) -> logits tensor, running the exported file in its runtime."""
    path = str(path)
    with _quiet():
        if fmt == "onnx":
            try:
                import onnxruntime as ort
            except ImportError:
                raise UserError("checking an ONNX export needs onnxruntime: pip install onnxruntime") from None
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            name = sess.get_inputs()[0].name
            return lambda x: torch.from_numpy(sess.run(None, {name: x.float().numpy()})[0])
        if fmt == "torchscript":
            m = torch.jit.load(path, map_location="cpu").eval()
        else:
            m = torch.export.load(path).module()

    def run(x):
        with torch.no_grad(), _quiet():
            return m(x.float())
    return run


def check_batches(model, run, sizes=(1, 3)) -> float:
    """Max |logit difference| between PyTorch and the runtime on random inputs of several batch sizes."""
    cfg, gen = model.cfg, torch.Generator().manual_seed(0)
    worst = 0.0
    for n in sizes:
        x = torch.randn(n, cfg.in_chans, cfg.image_size, cfg.image_size, generator=gen)
        with torch.no_grad():
            want = model(x)
        got = run(x)
        if tuple(got.shape) != tuple(want.shape):
            raise UserError(f"exported model returned shape {tuple(got.shape)} for batch {n}, expected "
                            f"{tuple(want.shape)}")
        worst = max(worst, float((got - want).abs().max()))
    return worst


def compare_top1(model, preprocess, run, dataset, batch_size: int = 100, limit=None) -> dict:
    """Top-1 (%) of PyTorch and of the runtime on `dataset`, the same preprocessed batches for both."""
    from ..data.datasets import iterate_batches
    from ..runtime import to_model_input

    n = len(dataset) if limit is None else min(limit, len(dataset))
    hits_pt = hits_rt = agree = 0
    worst = 0.0
    for images, labels in iterate_batches(dataset, torch.arange(n), batch_size):
        x = to_model_input(images, preprocess)
        with torch.no_grad():
            a = model(x)
        b = run(x)
        worst = max(worst, float((a - b).abs().max()))
        pa, pb = a.argmax(1), b.argmax(1)
        hits_pt += int((pa == labels).sum())
        hits_rt += int((pb == labels).sum())
        agree += int((pa == pb).sum())
    return {"n": n, "top1_pytorch": 100.0 * hits_pt / n, "top1_runtime": 100.0 * hits_rt / n,
            "agreement": 100.0 * agree / n, "max_abs_diff": worst}


def run(args) -> int:
    import os

    from ..flags import check_writable, partial_file
    from .io import load

    out = Path(args.out).expanduser()
    check_writable(out, "OUT")  # before the export, not after it
    loaded = load(args.checkpoint)
    model, pre = loaded.model.float().eval(), loaded.preprocess
    ds = None
    if args.verify_dataset:  # a dataset that cannot be read fails before the export
        from ..data.datasets import load_dataset

        ds = load_dataset(args.verify_dataset, "test", image_size=pre.image_size, channels=pre.channels,
                          preprocess=pre)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_file(out)  # OUT appears (or is replaced) only once the export has passed every check
    try:
        export(model, args.format, tmp, args.opset)
        rt = runtime(args.format, tmp)
        diff = check_batches(model, rt)
        name = RUNTIME[args.format]
        print(f"exported {args.checkpoint} ({args.format}, dynamic batch, input pixel_values "
              f"(N, {model.cfg.in_chans}, {model.cfg.image_size}, {model.cfg.image_size}) preprocessed as "
              f"mean={list(pre.mean)} std={list(pre.std)}); batches 1 and 3 in {name}: "
              f"max |logit difference| vs PyTorch {diff:.2e}")
        if ds is not None:
            r = compare_top1(model, pre, rt, ds, args.batch_size, args.verify_limit)
            gap = abs(r["top1_pytorch"] - r["top1_runtime"])
            print(f"top-1 on {args.verify_dataset} test ({r['n']} images): PyTorch {r['top1_pytorch']:.2f}%  "
                  f"{name} {r['top1_runtime']:.2f}%  (difference {gap:.2f} points, predictions agree on "
                  f"{r['agreement']:.2f}%, max |logit difference| {r['max_abs_diff']:.2e})")
            if gap > args.max_top1_gap:
                print(f"vitkit: error: top-1 differs by {gap:.2f} points (> {args.max_top1_gap}); {out} not "
                      f"written{' (the earlier file is kept)' if out.exists() else ''}", file=sys.stderr)
                return 1
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"wrote {out}")
    return 0
