"""`vitkit models`: every listed variant -- ViT, the hybrids and the BiT ResNets the paper compares against -- with
its parameter count (1000 classes unless --num-classes) and forward GFLOPs at its default (or the given) image size.
Built on the meta device: no memory, no time.

`vitkit models --pretrained`: every pre-trained model vitkit knows by name (vitkit/checkpoint/hub.py): the ones
shipped inside the package and the official downloads, with dataset, image size, parameters, published ImageNet
top-1 where known, and whether it is shipped, downloaded or retired, in a table that fits 120 columns (names too long
for their column get a line of their own); --json adds the URL and the rest. Each name works wherever a checkpoint
path does, except a retired one, which is refused saying what it was.

Shipped names are versioned, `<name>.v<N>`, and never change their weights; under the table, each alias (the bare
`<name>`) and the version it points at, which may move to newer weights. --json gives each shipped version's files
with their size and sha256 (vitkit/weights/MANIFEST.json, checked on load), its aliases, and for downloads that no
sha256 is published."""

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


TABLE_WIDTH = 120  # the plain --pretrained table fits a terminal this wide (names longer than their column excepted)


def run_pretrained(args) -> int:
    from .checkpoint.hub import aliases, registry

    rows = [p.to_dict() for p in registry().values()]
    if args.json:
        print(json.dumps(rows))
        return 0
    print("\n".join(pretrained_table(rows, aliases=aliases())))
    return 0


def pretrained_table(rows: list[dict], width: int = TABLE_WIDTH, aliases: dict | None = None) -> list[str]:
    """The plain table of `vitkit models --pretrained`: one line per model, within `width` columns. The name column
    is as wide as the names that fit beside the other columns; a longer name (AugReg's run up to ~110 characters)
    gets a line of its own, in full, with its figures on the next line under the columns. `source` says "shipped"
    (inside the package), "download" (fetched into the cache once; --json gives the URL) or "retired" (a version no
    longer shipped). `aliases` (bare name -> version) are listed under the table."""
    ds = max([len("dataset")] + [len(r["dataset"] or "-") for r in rows]) + 2

    def figures(r: dict) -> str:
        top1 = f"{r['top1']:.2f}" if r["top1"] is not None else "-"
        return (f"{r['dataset'] or '-':<{ds}}{r['image_size']:>6}{r['num_classes']:>8}{r['params']:>14,}{top1:>8}"
                f"  {'shipped' if r['shipped'] else 'retired' if r.get('retired') else 'download'}")

    head = f"{'dataset':<{ds}}{'image':>6}{'classes':>8}{'params':>14}{'top-1':>8}  source"
    rest = max([len(head)] + [len(figures(r)) for r in rows])
    name_w = max([len("name")] + [len(r["name"]) for r in rows if len(r["name"]) + 2 + rest <= width]) + 2
    lines = [f"{'name':<{name_w}}{head}"]
    for r in rows:
        if len(r["name"]) + 2 <= name_w:
            lines.append(f"{r['name']:<{name_w}}{figures(r)}")
        else:
            lines += [r["name"], " " * name_w + figures(r)]
    if aliases:
        lines += ["", "aliases (each may move to newer weights; a versioned name <name>.v<N> never does):"]
        aw = max(len(a) for a in aliases) + 2
        lines += [f"  {a:<{aw}}-> {t}" for a, t in aliases.items()]
        lines.append("")
    lines += ["(top-1: validation accuracy in % on the last dataset in the dataset column; downloads: as published;",
              "(shipped: measured by vitkit); any name above works wherever a checkpoint path does, but a retired one",
              "(source: shipped = inside the package; download = fetched into the cache on first use; --json: URLs;",
              "(retired = no longer shipped: asking for it is refused, saying what it was and which git commit "
              "holds it)",
              "(shipped files: size + sha256 in --json, checked on load; downloads: no sha256 is published by Google)"]
    return lines


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
