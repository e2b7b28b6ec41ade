"""`vitkit models`: every listed variant -- ViT, the hybrids and the BiT ResNets the paper compares against -- with
its parameter count (1000 classes unless --num-classes) and forward GFLOPs at its default (or the given) image size.
Built on the meta device: no memory, no time.

`vitkit models --pretrained`: every pre-trained model vitkit knows by name (vitkit/checkpoint/hub.py): the ones
shipped inside the package and the official downloads, with dataset, image size, parameters, published ImageNet
top-1 where known, and URL. Each name works wherever a checkpoint path does."""

from __future__ import annotations

import json

import torch

from .config import LISTED, variant_config
from .config import hybrid_variants
from .model import create_model
from .resnet import LISTED as BIT_LISTED
from .resnet import create_bit


def add_arguments(p):
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--image-size", type=int, default=None, help="default: 224 for paper variants, 28/32 for small")
    p.add_argument("--pretrained", action="store_true",
                   help="list the pre-trained models (shipped and downloadable) instead of the variants")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (with --pretrained: a list of objects, one per model)")


def run_pretrained(args) -> int:
    from .checkpoint.hub import registry

    rows = [p.to_dict() for p in registry().values()]
    if args.json:
        print(json.dumps(rows))
        return 0
    width = max(len(r["name"]) for r in rows) + 2
    print(f"{'name':<{width}}{'dataset':<26}{'image':>6}{'classes':>8}{'params':>14}{'top-1':>8}  source")
    for r in rows:
        top1 = f"{r['top1']:.2f}" if r["top1"] is not None else "-"
        print(f"{r['name']:<{width}}{r['dataset'] or '-':<26}{r['image_size']:>6}{r['num_classes']:>8}"
              f"{r['params']:>14,}{top1:>8}  {'shipped' if r['shipped'] else r['url']}")
    print("(top-1: ImageNet accuracy in % as published; any name above works wherever a checkpoint path does)")
    return 0


def run(args) -> int:
    if args.pretrained:
        return run_pretrained(args)
    rows = [_vit_row(name, args) for name in [f"ViT-{v}" for v in LISTED] + list(hybrid_variants())]
    rows += [_bit_row(name, args) for name in BIT_LISTED]
    if args.json:
        print(json.dumps({"num_classes": args.num_classes, "models": rows}))
        return 0
    print(f"{'variant':<18}{'image':>6}{'width':>7}{'depth':>6}{'heads':>6}{'mlp':>6}{'params':>14}{'GFLOPs':>9}")
    for r in rows:
        heads, mlp = (r["heads"], r["mlp_dim"]) if r["family"] == "vit" else ("-", "-")
        print(f"{r['name']:<18}{r['image_size']:>6}{r['hidden_size']:>7}{r['depth']:>6}{heads:>6}"
              f"{mlp:>6}{r['params']:>14,}{r['gflops']:>9.2f}")
    print(f"(parameters with {args.num_classes} classes; GFLOPs = 2 x multiply-adds of one forward pass; BiT: width "
          f"= channels of the last stage, depth = weight layers)")
    return 0


def _vit_row(name: str, args) -> dict:
    size = args.image_size or variant_config(name).image_size
    with torch.device("meta"):
        m = create_model(name, num_classes=args.num_classes, image_size=size)
    c = m.cfg
    return dict(name=name, family="vit", image_size=size, hidden_size=c.hidden_size, depth=c.depth,
                heads=c.num_heads, mlp_dim=c.mlp_dim, params=m.num_params(), gflops=round(m.flops_per_image() / 1e9, 3))


def _bit_row(name: str, args) -> dict:
    with torch.device("meta"):
        m = create_bit(name, num_classes=args.num_classes, image_size=args.image_size)
    c = m.cfg
    return dict(name=name, family="bit", image_size=c.image_size, hidden_size=c.num_features, depth=c.depth,
                layers=list(c.layers), width_factor=c.width, root=c.root, params=m.num_params(),
                gflops=round(m.flops_per_image() / 1e9, 3))
