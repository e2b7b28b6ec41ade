"""`vitkit models`: every listed variant with its parameter count (1000 classes unless --num-classes) and
forward GFLOPs at its default (or the given) image size. Built on the meta device: no memory, no time."""

from __future__ import annotations

import json

import torch

from .config import LISTED, variant_config
from .hybrid import hybrid_variants
from .model import create_model


def add_arguments(p):
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--image-size", type=int, default=None, help="default: 224 for paper variants, 28/32 for small")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args) -> int:
    rows = []
    for name in [f"ViT-{v}" for v in LISTED] + list(hybrid_variants()):
        size = args.image_size or variant_config(name).image_size
        with torch.device("meta"):
            m = create_model(name, num_classes=args.num_classes, image_size=size)
        c = m.cfg
        rows.append(dict(name=name, image_size=size, hidden_size=c.hidden_size, depth=c.depth,
                         heads=c.num_heads, mlp_dim=c.mlp_dim, params=m.num_params(),
                         gflops=round(m.flops_per_image() / 1e9, 3)))
    if args.json:
        print(json.dumps({"num_classes": args.num_classes, "models": rows}))
        return 0
    print(f"{'variant':<18}{'image':>6}{'width':>7}{'depth':>6}{'heads':>6}{'mlp':>6}{'params':>14}{'GFLOPs':>9}")
    for r in rows:
        print(f"{r['name']:<18}{r['image_size']:>6}{r['hidden_size']:>7}{r['depth']:>6}{r['heads']:>6}"
              f"{r['mlp_dim']:>6}{r['params']:>14,}{r['gflops']:>9.2f}")
    print(f"(parameters with {args.num_classes} classes; GFLOPs = 2 x multiply-adds of one forward pass)")
    return 0
