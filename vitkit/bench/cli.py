"""`vitkit bench`: inference and training throughput, peak memory and MFU of a ViT variant, side by side with the
same architecture in Hugging Face transformers (and timm when importable), all in one process, interleaved.

    vitkit bench --model ViT-B/16 --batch-size 32 --precision bf16 --mode inference   # default: auto
    vitkit bench --model ViT-Mini/4 --image-size 32 --batch-size 128 --mode training --precision fp32,bf16 \\
        --compile no,default --out mini.json
    vitkit bench --decode imagefolder:/work/shared/data/hymenoptera --workers 0,1,2

MFU = model FLOPs per second (ViT.flops_per_image x batch, x3 for a training step) / the dense-matmul FLOP/s of the
same dtype measured on the same device in the same run, timed interleaved with the model rows so that both see the
same contention (reported as the ceiling: median and best). Ratios are vitkit / peer (median img/s) for rows of
the same mode. "best" is the fastest repeat, "spread" (max - min) / median: a measure of the machine's noise.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import platform
import sys
import time
import warnings

import torch

from ..errors import UserError, require
from ..flags import Number, add_deprecated, device
from ..runtime import resolve_device, resolve_precision
from . import throughput as T


def _csv(kind=str):
    def parse(s: str):
        return [kind(v.strip()) for v in s.split(",") if v.strip()]
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="ViT-B/16", help="variant, e.g. ViT-B/16, ViT-Mini/4 (default ViT-B/16)")
    p.add_argument("--image-size", type=Number(int, min=1), default=None, metavar="N",
                   help="input size in pixels (default: the variant's)")
    p.add_argument("--num-classes", type=Number(int, min=1), default=1000, metavar="N")
    p.add_argument("--in-chans", type=Number(int, min=1), default=3, metavar="N")
    p.add_argument("--batch-size", dest="batch", type=Number(int, min=1), default=32, metavar="N",
                   help="images per step (default 32)")
    add_deprecated(p, "--batch", "--batch-size", dest="batch", type=Number(int, min=1))
    p.add_argument("--mode", type=_csv(), default=["inference", "training"],
                   help="comma list of inference,training (default both)")
    p.add_argument("--precision", type=_csv(), default=["auto"],
                   help="comma list of fp32,bf16,auto (default auto: bf16 where the hardware has it, else fp32)")
    p.add_argument("--policy", choices=["cast", "autocast"], default="cast",
                   help="bf16 inference: 'cast' converts model and input with .to(bfloat16) (pure bf16, default); "
                        "'autocast' keeps fp32 weights under torch.autocast. Training is always autocast over "
                        "fp32 master weights. Peers use the same policy.")
    p.add_argument("--compile", type=_csv(), default=["no"],
                   help="comma list of torch.compile settings for vitkit rows: no, default, freeze (inductor "
                        "freezing: weights folded and pre-packed, inference only), freeze-autotune (freezing + "
                        "max_autotune), reduce-overhead, max-autotune, max-autotune-no-cudagraphs (default no)")
    p.add_argument("--compile-peers", action="store_true", help="also torch.compile the peers (same modes)")
    p.add_argument("--peers", type=_csv(), default=None,
                   help="comma list of hf,timm, or none (default: hf, plus timm when importable)")
    p.add_argument("--peer-precision", type=_csv(), default=None,
                   help="precisions for peer rows (default: same as --precision), e.g. fp32,bf16")
    p.add_argument("--optimizer", choices=["fused", "foreach"], default="fused",
                   help="AdamW implementation for vitkit training rows (peers use foreach unless "
                        "--peer-optimizer fused)")
    p.add_argument("--peer-optimizer", choices=["fused", "foreach"], default="foreach")
    p.add_argument("--attention", choices=["auto", "sdpa", "explicit"], default="auto",
                   help="vitkit attention: auto (default: explicit softmax on CPU, SDPA on GPU), sdpa or explicit")
    p.add_argument("--explicit-attn", action="store_true", help="same as --attention explicit")
    p.add_argument("--no-keep-freed-memory", dest="keep_freed_memory", action="store_false",
                   help="leave glibc malloc's defaults (by default large freed blocks are kept for reuse, for every "
                        "row alike; see vitkit/perf.py)")
    p.add_argument("--grad-checkpointing", action="store_true", help="vitkit training: checkpoint every block")
    p.add_argument("--channels-last", action="store_true", help="vitkit inference: channels_last input/model")
    p.add_argument("--device", type=device, default="auto", help="auto (default: CUDA if available), cpu, cuda, "
                   "cuda:N")
    p.add_argument("--threads", type=Number(int, min=1), default=None, metavar="N",
                   help="torch.set_num_threads (CPU)")
    p.add_argument("--warmup", type=Number(int, min=0), default=2, metavar="N",
                   help="untimed steps per row (compilation happens here)")
    p.add_argument("--repeats", type=Number(int, min=1), default=5, metavar="N",
                   help="timed repeats per row; the median is reported")
    p.add_argument("--min-time", type=Number(float, min=0), default=0.0, metavar="SECONDS",
                   help="seconds per repeat: short steps are run several times per repeat (default 0: one)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--ceiling-n", type=Number(int, min=1), default=None, metavar="N",
                   help="matmul size for the ceiling (2048 CPU, 8192 GPU)")
    p.add_argument("--out", dest="json", default=None, metavar="PATH", help="also write all results as JSON to PATH")
    add_deprecated(p, "--json", "--out", dest="json")
    p.add_argument("--decode", default=None, metavar="SPEC",
                   help="instead of a model: JPEG decoding throughput of a dataset, e.g. imagefolder:PATH")
    p.add_argument("--workers", type=_csv(Number(int, min=0)), default=[0, 1, 2],
                   help="--decode: worker counts (default 0,1,2)")
    p.add_argument("--decode-batches", type=Number(int, min=1), default=None, metavar="N",
                   help="--decode: stop after this many batches")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _log(args):
    return (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))


def _fmt_bytes(b):
    if b is None:
        return "-"
    return f"{b / 2**30:.2f}G" if b >= 2**30 else f"{b / 2**20:.0f}M"


def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
           "threads": torch.get_num_threads(), "machine": platform.machine()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    else:
        try:
            with open("/proc/cpuinfo") as f:
                env["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
        except OSError:
            pass
        try:
            env["load_avg"] = list(__import__("os").getloadavg())
        except OSError:
            pass
    try:
        import transformers
        env["transformers"] = transformers.__version__
    except ImportError:
        pass
    return env


def _resolve_auto(args, device: torch.device) -> None:
    """--precision/--peer-precision "auto" -> bf16 or fp32 for `device` (vitkit.runtime.resolve_precision)."""
    args.precision = [resolve_precision(p, device) if p == "auto" else p for p in args.precision]
    if args.peer_precision:
        args.peer_precision = [resolve_precision(p, device) if p == "auto" else p for p in args.peer_precision]


def build_runners(args, device: torch.device, log) -> list:
    _resolve_auto(args, device)
    from ..model import create_model
    from ..resnet import BiTConfig
    from . import peers as P

    cfg_kw = dict(num_classes=args.num_classes, image_size=args.image_size, in_chans=args.in_chans)
    probe = create_model(args.model, **cfg_kw)
    cfg, flops = probe.cfg, probe.flops_per_image()
    del probe
    peers = args.peers
    bit = isinstance(cfg, BiTConfig)  # the paper's ResNet baseline: the peers here are ViT implementations
    if peers is None and not bit:  # the default: the peers that are installed
        has_hf = importlib.util.find_spec("transformers") is not None
        if not has_hf:
            warnings.warn("bench: no Hugging Face rows, transformers is not installed (pip install transformers)")
        peers = (["hf"] if has_hf else []) + (["timm"] if P.timm_available() else [])
    peers = [p for p in peers or [] if p != "none"]
    if bit and peers:
        raise UserError(f"--peers {','.join(peers)}: the peers are ViT implementations; {cfg.name} is a BiT ResNet "
                        f"(bench it with --peers none)")
    if "hf" in peers:
        require("transformers", "--peers hf")
    precisions = set(args.precision) | set(args.peer_precision or [])
    unknown = sorted(set(peers) - set(P.PEERS)) + sorted(precisions - {"fp32", "bf16", "fp16"})
    unknown += sorted(set(args.mode) - {"inference", "training"})
    if unknown:
        raise UserError(f"unknown value(s) {unknown}: peers are hf,timm; precisions fp32,bf16; modes "
                        "inference,training")
    if "timm" in peers and not P.timm_available():
        raise UserError("--peers timm: timm is not installed (pip install timm)")
    common = dict(batch=args.batch, image_size=cfg.image_size, chans=cfg.in_chans, num_classes=cfg.num_classes,
                  flops_per_image=flops, device=device)
    runners = []

    def add(name, build, mode, precision, compile_mode, peer=False):
        try:
            model = build()
        except Exception as e:  # a peer that cannot be built is reported as a failed row
            if not peer:
                raise
            r = T.Runner(name, lambda: None, args.batch, 0.0, device, info=dict(mode=mode, precision=precision,
                                                                                   policy="-", library=name.split()[0]))
            r.error = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
            runners.append(r)
            return
        comp = compile_mode != "no"
        cm = None if compile_mode in ("no", "default") else compile_mode
        if mode == "inference":
            r = T.inference_runner(name, model, precision=precision, policy=args.policy, compile=comp,
                                   compile_mode=cm, channels_last=args.channels_last and not peer,
                                   **common)
        else:
            fused = (args.peer_optimizer if peer else args.optimizer) == "fused"
            r = T.training_runner(name, model, precision=precision, compile=comp, compile_mode=cm,
                                  fused_optimizer=fused, **common)
        r.info["library"] = name.split()[0]
        runners.append(r)

    def vitkit_model():
        m = create_model(args.model, **cfg_kw)
        if hasattr(m, "set_fused_attn"):  # ViT only
            m.set_fused_attn("explicit" if args.explicit_attn else args.attention)
        m.set_grad_checkpointing(args.grad_checkpointing)
        return m

    peer_prec = args.peer_precision or args.precision
    peer_compiles = args.compile if args.compile_peers else ["no"]
    for mode in args.mode:
        for prec in args.precision:
            for c in args.compile:
                if mode == "training" and c.startswith("freeze"):
                    continue
                add(f"vitkit {mode[:5]} {prec} c={c}", vitkit_model, mode, prec, c)
        for peer in peers:
            for prec in peer_prec:
                for c in peer_compiles:
                    if mode == "training" and c.startswith("freeze"):
                        continue
                    add(f"{peer} {mode[:5]} {prec} c={c}", lambda peer=peer: P.PEERS[peer](cfg), mode, prec, c,
                        peer=True)
    return runners, cfg, flops


def ratios(results: list[dict]) -> list[dict]:
    out = []
    for a in results:
        if a.get("library") != "vitkit" or "img_per_s" not in a:
            continue
        for b in results:
            if b.get("library") == "vitkit" or b.get("mode") != a["mode"] or "img_per_s" not in b:
                continue
            out.append({"vitkit": a["name"], "peer": b["name"], "ratio": a["img_per_s"] / b["img_per_s"]})
    return out


def print_table(report: dict, file=None) -> None:
    file = file or sys.stdout  # looked up per call: sys.stdout may have been replaced since import
    env, ceil = report["environment"], report["ceilings"]
    print(f"# {report['model']} {report['image_size']}px batch {report['batch']} on {env['device']} "
          f"({env.get('gpu') or env.get('cpu', '')}, {env['threads']} threads), torch {env['torch']}", file=file)
    for k, c in ceil.items():
        print(f"# matmul ceiling {k}: {c['flops_per_s'] / 1e9:.1f} GFLOP/s median, {c['best_flops_per_s'] / 1e9:.1f} "
              f"best (n={c['n']}, timed interleaved with the rows below)", file=file)
    print(f"# model: {report['gflops_per_image']:.3f} GFLOPs/image forward; training step = 3x; "
          f"median of {report['repeats']} interleaved repeats after {report['warmup']} warm-up steps", file=file)
    hdr = (f"{'row':36} {'policy':8} {'optim':14} {'img/s':>9} {'best':>9} {'ms/step':>9} {'MFU':>6} {'peak mem':>9} "
           f"{'spread':>7}")
    print(hdr, file=file)
    print("-" * len(hdr), file=file)
    for r in report["results"]:
        if "error" in r:
            print(f"{r['name']:36} FAILED: {r['error']}", file=file)
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        print(f"{r['name']:36} {r['policy']:8} {r.get('optimizer', '-'):14} {r['img_per_s']:9.2f} "
              f"{r['best_img_per_s']:9.2f} {1e3 * r['seconds_per_step']:9.1f} {mfu:>6} "
              f"{_fmt_bytes(r['peak_mem_bytes']):>9} "
              f"{100 * r['spread']:6.0f}%", file=file)
    if report["ratios"]:
        print("# ratios (img/s vitkit / peer):", file=file)
        for q in report["ratios"]:
            print(f"#   {q['vitkit']:36} / {q['peer']:30} = {q['ratio']:.2f}", file=file)


def run_decode(args, log) -> int:
    from .throughput import decode_throughput

    size = args.image_size or 224
    log(f"decoding {args.decode} at {size}px, workers {args.workers}")
    rows = decode_throughput(args.decode, image_size=size, channels=args.in_chans, batch=args.batch,
                             workers=args.workers, max_batches=args.decode_batches)
    print(f"# decode {args.decode} -> uint8 {args.in_chans}x{size}x{size}, batch {args.batch} ({rows[0]['source']})")
    print(f"{'workers':>7} {'images':>7} {'seconds':>8} {'img/s':>8}")
    for r in rows:
        print(f"{r['workers']:7d} {r['images']:7d} {r['seconds']:8.2f} {r['img_per_s']:8.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"decode": args.decode, "image_size": size, "batch": args.batch, "rows": rows,
                       "environment": environment(torch.device("cpu"))}, f, indent=2)
    return 0


def run(args) -> int:
    log = _log(args)
    if args.json:
        from ..flags import check_writable

        check_writable(args.json, "--out")  # before the measurements, not after them
    if args.keep_freed_memory:  # every row of the run alike, peers included (vitkit/perf.py)
        from ..perf import keep_freed_memory

        keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.decode:
        return run_decode(args, log)
    device = resolve_device(args.device)
    _resolve_auto(args, device)
    if args.batch < 1 or args.repeats < 1:
        raise UserError("--batch and --repeats must be at least 1")
    dtypes = sorted({"bf16" if p != "fp32" else "fp32" for p in args.precision + (args.peer_precision or [])})
    ceil_runners = {d: T.ceiling_runner(T.DTYPES[d], device, n=args.ceiling_n) for d in dtypes}
    runners, cfg, flops = build_runners(args, device, log)
    log(f"{len(runners)} rows + {len(dtypes)} matmul ceiling(s); warming up (torch.compile, if asked, compiles now)")
    t0 = time.perf_counter()
    T.run_interleaved(list(ceil_runners.values()) + runners, warmup=args.warmup, repeats=args.repeats,
                      min_time=args.min_time, measure_memory=not args.no_memory, log=log)
    ceilings = {d: r.result(None) for d, r in ceil_runners.items()}
    for d, c in ceilings.items():
        if "error" in c:
            raise UserError(f"the {d} matmul ceiling could not be measured: {c['error']}")
    results = []
    for r in runners:
        results.append(r.result(ceilings["fp32" if r.info["precision"] == "fp32" else "bf16"]["flops_per_s"]))
    report = {"model": cfg.name, "config": cfg.to_dict(), "image_size": cfg.image_size, "batch": args.batch,
              "gflops_per_image": flops / 1e9, "warmup": args.warmup, "repeats": args.repeats,
              "ceilings": ceilings, "results": results, "ratios": ratios(results),
              "environment": environment(device), "wall_seconds": time.perf_counter() - t0,
              "command": "vitkit " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else None,
              "memory_note": ("CUDA max_memory_allocated over one step" if device.type == "cuda" else
                              "CPU: bytes of the persistent state (weights, grads, AdamW moments, batch) + the "
                              "step's transient RSS peak above the RSS before it")}
    print_table(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, default=str)
        log(f"wrote {args.json}")
    del runners
    gc.collect()
    return 0 if all("error" not in r for r in results) else 1
