"""Peak training memory per variant, with and without gradient checkpointing.

    python benchmarks/memory.py [--variants Ti/16,S/16,B/16] [--batch 32] [--image-size 224] [--json out.json]

One training step (forward, cross-entropy, backward, AdamW step) at bf16 autocast over fp32 master weights, each
configuration in a fresh process so that nothing of one measurement leaks into the next. Reported per row:
  state      bytes of what persists between steps: fp32 weights + fp32 gradients + AdamW moments + the batch
  transient  the step's peak RSS above the RSS before it (activations saved for backward, workspaces;
             allocator slack included, so an upper bound); on CUDA the figure is max_memory_allocated instead
  peak       state + transient
  maxrss     the process's ru_maxrss above its RSS before the model was built (a cross-check)
and an extrapolation to the variants too large to run here (ViT-L/16, ViT-H/14): state = 16 bytes per
parameter; activations scale with depth x tokens x width (fitted on the largest variant measured).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys

GB = 2**30


def _one(variant: str, ckpt: bool, batch: int, image_size: int, device: str, q) -> None:
    import torch

    from vitkit import create_model
    from vitkit.bench import throughput as T

    try:
        T.malloc_trim()
        rss0 = T.rss_bytes()
        m = create_model(variant, num_classes=1000, image_size=image_size).set_grad_checkpointing(ckpt)
        r = T.training_runner(variant, m, batch=batch, image_size=image_size, chans=3, num_classes=1000,
                              flops_per_image=m.flops_per_image(), precision="bf16", device=device,
                              fused_optimizer=True)
        r.step()  # warm-up: AdamW state allocated
        peak = T.measure_peak(r)
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
        q.put(dict(variant=m.cfg.name, grad_checkpointing=ckpt, batch=batch, image_size=image_size,
                   params=m.num_params(), tokens=m.cfg.num_tokens, depth=m.cfg.depth, width=m.cfg.hidden_size,
                   state_bytes=r.info.get("mem_state_bytes"), transient_bytes=r.info.get("mem_transient_bytes"),
                   peak_bytes=peak, maxrss_delta_bytes=maxrss - rss0, device=device,
                   torch=torch.__version__))
    except Exception as e:  # noqa: BLE001 - reported in the table
        q.put(dict(variant=variant, grad_checkpointing=ckpt, error=f"{type(e).__name__}: {e}"))


def measure(variant, ckpt, batch, image_size, device="cpu") -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_one, args=(variant, ckpt, batch, image_size, device, q))
    p.start()
    out = q.get()
    p.join()
    return out


def extrapolate(rows: list[dict], batch: int, image_size: int) -> list[dict]:
    """State = 16 bytes/parameter (fp32 weight, grad, two AdamW moments). Activations, per image and per
    (token x width) unit, fitted on the largest variant measured both ways: without checkpointing every block
    keeps A units (transient = depth * A * T * D * B); with it, each block keeps its input (c units) and one
    block's full activations are alive during its recomputation (transient = (depth * c + A) * T * D * B)."""
    import torch

    from vitkit import create_model

    ok = [r for r in rows if "error" not in r]
    pairs = {}
    for r in ok:
        pairs.setdefault(r["variant"], {})[r["grad_checkpointing"]] = r
    full = [v for v in pairs.values() if len(v) == 2]
    if not full:
        return []
    fit = max(full, key=lambda v: v[False]["params"])
    f0, f1 = fit[False], fit[True]
    unit = f0["tokens"] * f0["width"] * f0["batch"]
    A = f0["transient_bytes"] / (f0["depth"] * unit)
    c = max(0.0, (f1["transient_bytes"] / unit - A) / f0["depth"])
    out = []
    for name in ("ViT-L/16", "ViT-H/14"):
        try:
            with torch.device("meta"):
                m = create_model(name, num_classes=1000, image_size=image_size)
        except ValueError:  # image size not a multiple of its patch size
            continue
        cfg = m.cfg
        u = cfg.num_tokens * cfg.hidden_size * batch
        for ckpt in (False, True):
            act = (cfg.depth * c + A) * u if ckpt else cfg.depth * A * u
            state = 16 * m.num_params()
            out.append(dict(variant=cfg.name, grad_checkpointing=ckpt, params=m.num_params(), state_bytes=state,
                            transient_bytes=int(act), peak_bytes=int(state + act), estimated=True,
                            fitted_on=f0["variant"], bytes_per_unit_block=A, bytes_per_unit_ckpt=c))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", default="Ti/16,S/16,B/16")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    rows = []
    for v in args.variants.split(","):
        for ckpt in (False, True):
            r = measure(v if v.lower().startswith("vit") else f"ViT-{v}", ckpt, args.batch, args.image_size,
                        args.device)
            rows.append(r)
            print(f"  measured {r['variant']} ckpt={ckpt}: "
                  + (r["error"] if "error" in r else f"{r['peak_bytes'] / GB:.2f} GiB"), file=sys.stderr, flush=True)
    est = extrapolate(rows, args.batch, args.image_size)
    print(f"# training step, batch {args.batch}, {args.image_size} px, bf16 autocast + fp32 master weights, AdamW "
          f"(device {args.device}); GiB")
    print(f"{'variant':10} {'ckpt':5} {'params':>8} {'state':>7} {'transient':>10} {'peak':>7} {'maxrss':>7}")
    for r in rows + est:
        if "error" in r:
            print(f"{r['variant']:10} {str(r['grad_checkpointing']):5} FAILED {r['error']}")
            continue
        mr = f"{r['maxrss_delta_bytes'] / GB:7.2f}" if "maxrss_delta_bytes" in r else "  (est)"
        print(f"{r['variant']:10} {str(r['grad_checkpointing']):5} {r['params'] / 1e6:7.1f}M "
              f"{r['state_bytes'] / GB:7.2f} {r['transient_bytes'] / GB:10.2f} {r['peak_bytes'] / GB:7.2f} {mr}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "estimates": est, "batch": args.batch, "image_size": args.image_size}, f,
                      indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
