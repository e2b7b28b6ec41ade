"""`vitkit export CKPT --format onnx|torchscript|exported-program OUT`: a deployable model with a dynamic batch size,
checked in its own runtime.

    vitkit export ckpt/ --format onnx model.onnx --verify-dataset embedded
    vitkit export ViT-B_16.npz --format exported-program vit.pt2        # any checkpoint vitkit reads
    vitkit export ViT-Mini_8-tiny-imagenet --format onnx vit-int8.onnx --quantize int8 \
        --verify-dataset tiny-imagenet                                   # int8 weights for CPU inference

The exported graph takes the preprocessed float tensor `pixel_values` (N, C, S, S) -- the checkpoint's
preprocessing (resize to S, scale to its mean/std) stays outside -- and returns `logits` (N, classes).

Runtimes: ONNX runs in onnxruntime (`pip install onnx onnxruntime onnxscript`; torch's exporter needs onnxscript),
TorchScript in torch.jit.load, ExportedProgram in torch.export.load. After writing, the file is reloaded in its
runtime and run on two batch sizes against PyTorch (max |logit difference| printed); `--verify-dataset` also
compares top-1 accuracy on a dataset's test split (e.g. "embedded": the 2,000 Fashion-MNIST test images that ship
with vitkit) and prints both numbers; the command fails if they differ by more than --max-top1-gap points.

`--quantize int8` (ONNX only; another format is refused in one line) writes the ONNX file through ONNX Runtime's
dynamic quantiser (`onnxruntime.quantization.quantize_dynamic`): the weights of every MatMul/Gemm (attention
projections, MLP, head: 25 of the ViT-Mini/8's 37 MatMul/Gemm; the other 12 multiply two activations) become int8
initialisers, one scale per output channel; activations are quantised to uint8 on the fly, per tensor
(DynamicQuantizeLinear, MatMulInteger), so no calibration set is needed. Convolutions (the patch embedding, a hybrid's
ResNet stem) stay float32: only MatMul/Gemm are given to the quantiser. The file is about 3.5x smaller.
`per_channel=True` was chosen over the default per-tensor scale by measurement (2,000 Tiny ImageNet validation
images, ViT-Mini_8-tiny-imagenet: per tensor 97.45 % of predictions agree with float32, per channel 97.35 %, top-1
27.60 / 27.75 % vs 27.65 %, worst per-image logit error 7.0 / 6.0 % of the image's largest logit, same speed);
`reduce_range` (7-bit weights, advised by ORT for CPUs without VNNI, whose u8s8 instruction can saturate) stays off
as it lost 0.25 points per tensor; the figures were measured on a VNNI CPU (docs/results/int8/).

The same checks run on the quantised file, against the float32 PyTorch model: before writing, the graph must hold
int8 weight initialisers and MatMulInteger nodes (so a quantiser that silently did nothing fails); the two random
batches must agree within INT8_LOGIT_TOL, a *relative* tolerance: max |logit difference| <= 0.2 x the batch's
largest |fp32 logit|. Rounding every weight to 1/127 of its channel's range and every activation to 1/255 of its
tensor's range, through 25 quantised matmuls, measured 1.2 % of that scale on random batches and up to 6 % on single
real images; 0.2 leaves room for other models while a broken quantisation (wrong scale or zero point, a transposed
weight) errs by the order of the logits themselves. That check only catches gross faults: the meaningful one is
top-1 and prediction agreement on a real dataset (`--verify-dataset`), whose --max-top1-gap defaults to 0.5 points
with --quantize (0.1 otherwise), the accuracy budget the project gives int8.
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
QUANTIZE = ("int8",)
QUANTIZABLE = ("onnx",)  # the formats --quantize can write
INT8_LOGIT_TOL = 0.2  # max |logit difference| / max |fp32 logit| on the random batches (see the module docstring)
MAX_TOP1_GAP = {None: 0.1, "int8": 0.5}  # --max-top1-gap's default, points


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
    p.add_argument("--max-top1-gap", type=Number(float, min=0), default=None, metavar="POINTS",
                   help="fail if the two top-1 accuracies differ by more than this many points (default 0.1; 0.5 "
                        "with --quantize int8)")
    p.add_argument("--quantize", default=None, choices=QUANTIZE,
                   help="int8: ONNX Runtime dynamic quantisation (int8 MatMul/Gemm weights, per channel; uint8 "
                        "activations quantised at run time), for CPU inference; ONNX only")


@contextlib.contextmanager
def _quiet():
    """The exporters log and warn about things that do not concern the user (missing torchvision ops, ...); the
    quantiser advises, on the root logger, a pre-processing pass that changes nothing for these graphs."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript", "")]
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


def quantize_int8(src, dst) -> dict:
    """ONNX file `src` -> `dst` with int8 MatMul/Gemm weights (onnxruntime.quantization.quantize_dynamic, per channel,
    full 8-bit range), and what the graph holds afterwards (int8_graph_facts). A UserError if nothing was quantised."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise UserError("--quantize int8 needs onnxruntime (its quantiser): pip install onnxruntime") from None
    with _quiet():
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                         reduce_range=False, weight_type=QuantType.QInt8)
    facts = int8_graph_facts(dst)
    if facts["int8_weights"] == 0 or facts["integer_matmuls"] == 0:
        raise UserError(f"ONNX Runtime's quantiser left {src} unquantised (no int8 weights, no MatMulInteger in the "
                        f"graph): nothing in it is a MatMul/Gemm with a constant weight")
    return facts


def int8_graph_facts(path) -> dict:
    """What an ONNX file holds: int8 initialisers and their share of the weight bytes, MatMulInteger nodes, float
    MatMul/Gemm left (activation x activation products, such as attention's), the file's size."""
    import os

    import onnx

    g = onnx.load(str(path)).graph
    int8 = [t for t in g.initializer if t.data_type == onnx.TensorProto.INT8]
    nbytes = lambda ts: sum(len(t.raw_data) for t in ts)  # noqa: E731
    ops = [n.op_type for n in g.node]
    return {"int8_weights": len(int8), "int8_bytes": nbytes(int8), "weight_bytes": nbytes(g.initializer),
            "integer_matmuls": ops.count("MatMulInteger"), "float_matmuls": ops.count("MatMul") + ops.count("Gemm"),
            "bytes": os.path.getsize(path)}


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


def check_batches(model, run, sizes=(1, 3), relative: bool = False):
    """Max |logit difference| between PyTorch and the runtime on random inputs of several batch sizes; with
    `relative`, also that difference over the largest |PyTorch logit| (a pair, the worst batch of each)."""
    cfg, gen = model.cfg, torch.Generator().manual_seed(0)
    worst = worst_rel = 0.0
    for n in sizes:
        x = torch.randn(n, cfg.in_chans, cfg.image_size, cfg.image_size, generator=gen)
        with torch.no_grad():
            want = model(x)
        got = run(x)
        if tuple(got.shape) != tuple(want.shape):
            raise UserError(f"exported model returned shape {tuple(got.shape)} for batch {n}, expected "
                            f"{tuple(want.shape)}")
        d = float((got - want).abs().max())
        worst, worst_rel = max(worst, d), max(worst_rel, d / max(float(want.abs().max()), 1e-12))
    return (worst, worst_rel) if relative else worst


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

    quantize = getattr(args, "quantize", None)
    if quantize and args.format not in QUANTIZABLE:
        raise UserError(f"--quantize {quantize} writes ONNX only (ONNX Runtime's quantiser); --format {args.format} "
                        f"cannot hold it: use --format onnx")
    gap_limit = args.max_top1_gap if args.max_top1_gap is not None else MAX_TOP1_GAP[quantize]
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
    fp32 = partial_file(out) if quantize else tmp  # the float32 graph the quantiser reads
    try:
        export(model, args.format, fp32, args.opset)
        what = args.format
        if quantize:
            facts = quantize_int8(fp32, tmp)
            what = f"onnx, int8 weights in {facts['integer_matmuls']} MatMulInteger ({facts['float_matmuls']} " \
                   f"activation MatMuls stay float), {fp32.stat().st_size / 2**20:.1f} -> " \
                   f"{facts['bytes'] / 2**20:.1f} MiB"
        rt = runtime(args.format, tmp)
        diff, rel = check_batches(model, rt, relative=True)
        name = RUNTIME[args.format]
        print(f"exported {args.checkpoint} ({what}, dynamic batch, input pixel_values "
              f"(N, {model.cfg.in_chans}, {model.cfg.image_size}, {model.cfg.image_size}) preprocessed as "
              f"mean={list(pre.mean)} std={list(pre.std)}); batches 1 and 3 in {name}: "
              f"max |logit difference| vs PyTorch {diff:.2e}" + (f" ({100 * rel:.1f} % of the largest logit)"
                                                                  if quantize else ""))
        if quantize and rel > INT8_LOGIT_TOL:
            print(f"vitkit: error: the int8 model's logits differ from float32 by {100 * rel:.1f} % of the largest "
                  f"logit (> {100 * INT8_LOGIT_TOL:.0f} %); {out} not written"
                  f"{' (the earlier file is kept)' if out.exists() else ''}", file=sys.stderr)
            return 1
        if ds is not None:
            r = compare_top1(model, pre, rt, ds, args.batch_size, args.verify_limit)
            gap = abs(r["top1_pytorch"] - r["top1_runtime"])
            print(f"top-1 on {args.verify_dataset} test ({r['n']} images): PyTorch {r['top1_pytorch']:.2f}%  "
                  f"{name}{' int8' if quantize else ''} {r['top1_runtime']:.2f}%  (difference {gap:.2f} points, "
                  f"predictions agree on {r['agreement']:.2f}%, max |logit difference| {r['max_abs_diff']:.2e})")
            if gap > gap_limit:
                print(f"vitkit: error: top-1 differs by {gap:.2f} points (> {gap_limit}); {out} not "
                      f"written{' (the earlier file is kept)' if out.exists() else ''}", file=sys.stderr)
                return 1
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        fp32.unlink(missing_ok=True)
    print(f"wrote {out}")
    return 0
