"""Pre-trained weights by name or by URL: the registry of checkpoints vitkit knows, and downloads into a cache.

`resolve` turns a checkpoint argument into a local path; `vitkit.load` calls it, so a name or a URL works
wherever a checkpoint path does (train --init, eval, predict, analyze, fewshot, features, convert, export):

    vitkit.load("imagenet21k+imagenet2012/ViT-B_16")     # the paper's ViT-B/16, fine-tuned on ImageNet at 384 px
    vitkit.load("https://storage.googleapis.com/vit_models/imagenet21k/ViT-B_16.npz")
    vitkit train --init augreg/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0 ...

An existing local path always wins over a name. `vitkit models --pretrained` lists the names. A URL names a file of
a format vitkit reads (.npz, .safetensors, .pth, .pt, .bin), or a checkpoint folder (vitkit, Hugging Face) packed
as .zip, .tar, .tar.gz or .tgz, which is unpacked once next to the download.

Official names are the file paths in Google's `vit_models` bucket without ".npz", so a name and its URL are one
thing: https://storage.googleapis.com/vit_models/<name>.npz. Sources, all in google-research/vision_transformer
(commit c6de1e5):
  - README.md, "Available ViT models": the buckets imagenet21k (pre-trained on ImageNet-21k) and
    imagenet21k+imagenet2012 (then fine-tuned on ImageNet), and the table of recommended AugReg checkpoints
    (pre-trained and fine-tuned file names, fine-tuning resolution, ImageNet top-1). Those AugReg figures are the
    only top-1 the README states for a downloadable file, so the paper's files have none here.
  - vit_jax.ipynb, whose `gsutil ls gs://vit_models/imagenet*` output lists the files of both paper buckets; the
    fine-tuned ones are at 384 px as in the paper, except the two named "-224".
  - vit_jax/configs/models.py: the architectures. The paper's ImageNet-21k files keep the pre-logits layer of the
    pre-training head (fine-tuning drops it, vit_jax/checkpoint.py load_pretrained); AugReg files have none. The
    listed file sizes agree: 4 bytes per parameter of exactly these architectures (tests/test_hub.py).
  - vit_jax/checkpoint.py, get_augreg_df(): the AugReg index gs://vit_models/augreg/index.csv (759 pre-trained and
    51,509 fine-tuned files, vit_jax_augreg.ipynb). Every file of that index works as "augreg/<filename>"; only the
    README's recommended ones are listed.
No sha256 is published for these files (and no exact size: the listing's sizes are rounded): a download is checked
against the length the server announces, and `vitkit models --pretrained --json` says so (`integrity`) and gives
4 bytes per parameter as an approximate size (`approx_size`) for the vit_models files, whose listed sizes it matches.

Shipped models live inside the package as native checkpoints, vitkit/weights/<name>.v<N>/ (model.safetensors,
config.json, MODEL_CARD.md); they are found by scanning that folder, so `shipped` is a fact about the installed
package. Optional "dataset" and "top1" (percent) keys of the config.json are shown in the listing.

Names, versions and aliases. A versioned name `<name>.v<N>` ("ViT-Mini_8-tiny-imagenet.v1") names one file of
weights forever: new weights under the same model name are a new version, `.v<N+1>`, never a new file under an old
version (scripts/ship_weights.py refuses that). The bare `<name>` is an alias of the recommended version and may
move to newer weights; it loads wherever a versioned name does. A version no longer in the package is "retired":
still known by name, and asking for it is refused in one line saying what it was (top-1, sha256) and which git
commit holds it -- never mapped to another version. All of this is one file, vitkit/weights/MANIFEST.json:

    {"format": "vitkit-weights-manifest", "version": 1,
     "aliases": {"<name>": "<name>.v<N>", ...},
     "shipped": {"<name>.v<N>": {"model.safetensors": {"size": BYTES, "sha256": HEX}, "config.json": {...},
                                 "MODEL_CARD.md": {...}}, ...},
     "retired": {"<name>.v<N>": {"variant", "dataset", "top1", "image_size", "num_classes", "params",
                                 "model.safetensors": {"size", "sha256"}, "commit", "path", "replaced_by",
                                 "replaced_in", "copy"}, ...}}

Loading a shipped name (or its alias) first checks model.safetensors and config.json against their recorded size
and sha256 (`verify`) and refuses a mismatch in one line naming the file and both hashes; a folder the manifest does
not record is refused too. The result is remembered per process, keyed by the file's path, size, mtime and inode,
so repeated loads hash once. Measured on a 2-core Intel Xeon at 2.80 GHz: hashing one shipped 11 MB safetensors
file takes about 11 ms (about 1 GB/s), a repeated check 0.03 ms, a whole `vitkit.load` of that model about 70 ms.
tests/test_weights_versions.py keeps a frozen list of every released (versioned name, sha256): a released version
still in the package must have exactly that hash, and no released name may disappear from the manifest.

Model cards are generated, not edited: `model_card(folder)` renders MODEL_CARD.md from the folder's config.json
(its architecture, "dataset", "top1", and the "card" entry: the training record -- cycles with their evaluation
curve, steps, time and recipe -- and the prose for data, licence and notes) and the weights file's size and sha256.

Downloads go to $VITKIT_CACHE (default: the datasets' cache, ~/.cache/vitkit)/<host>/<path of the URL>. The
fetching itself is vitkit/download.py, shared with the datasets' downloads: bytes are written to a ".part" file
that is renamed into place only when complete and checked (length, and sha256 where known), so a killed or
truncated download leaves nothing a later run trusts; a lock file lets only one process download a file at a time.
A cached file is never downloaded again. A progress bar (tqdm, stderr) shows when stderr is a terminal or
VITKIT_PROGRESS=1; VITKIT_DOWNLOAD_TIMEOUT (seconds, default 60) bounds each wait for the server;
VITKIT_NO_DOWNLOAD=1 forbids downloads. Without network, the error (a DownloadError, one line) names the URL and
the cache path where a file fetched by other means is picked up. This module keeps what is particular to weights:
the registry, the cache layout (`cache_path`) and unpacking archived checkpoint folders (`unpack`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urlsplit

from ..download import DownloadError, allowed, fetch
from ..errors import UserError

BUCKET = "https://storage.googleapis.com/vit_models/"
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"  # shipped models: vitkit/weights/<name>.v<N>/
MANIFEST = "MANIFEST.json"  # WEIGHTS_DIR/MANIFEST.json: aliases, sizes and sha256 of shipped files, retired versions
RECORDED = ("model.safetensors", "config.json", "MODEL_CARD.md")  # the files of a shipped folder the manifest lists
CHECKED = ("model.safetensors", "config.json")  # the ones load() reads: checked before it does
VERSIONED = re.compile(r"^(?P<base>.+)\.v(?P<n>[1-9][0-9]*)$")  # "<name>.v<N>"
URL_SUFFIXES = (".npz", ".safetensors", ".pth", ".pt", ".bin")  # single-file formats vitkit reads
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")  # a checkpoint folder (vitkit, Hugging Face) packed in one file
IMAGENET21K_CLASSES, IMAGENET_CLASSES = 21843, 1000


@dataclass(frozen=True)
class Pretrained:
    """One checkpoint vitkit knows by name."""

    name: str
    variant: str  # the vitkit variant name ("ViT-B/16", "R50+ViT-B/16")
    dataset: Optional[str]  # what the weights were (last) trained on
    image_size: int
    num_classes: int
    representation_size: Optional[int] = None  # width of the pre-logits layer, where the file has one
    top1: Optional[float] = None  # ImageNet top-1 (%) as published, where known
    url: Optional[str] = None  # downloadable ones
    sha256: Optional[str] = None
    size: Optional[int] = None  # bytes, where known
    path: Optional[Path] = None  # shipped ones: the folder inside the package
    files: Optional[dict] = None  # shipped ones: file name -> {"size", "sha256"}, from the manifest (None: unrecorded)
    aliases: tuple = ()  # the bare names that point at this version now
    retired: Optional[dict] = None  # a version no longer shipped: its manifest record (commit, path, ...)

    @property
    def shipped(self) -> bool:
        return self.path is not None

    def params(self) -> int:
        """Parameter count of the architecture, counted on the meta device (no memory, no time)."""
        import torch

        from ..model import ViT, create_model

        if self.retired is not None:
            return int(self.retired["params"])
        with torch.device("meta"):
            if self.path is not None:
                from ..config import ViTConfig

                return ViT(ViTConfig.from_dict(_read_json(self.path / "config.json")["model"])).num_params()
            extra = {"representation_size": self.representation_size} if self.representation_size else {}
            return create_model(self.variant, num_classes=self.num_classes, image_size=self.image_size,
                                **extra).num_params()

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(shipped=self.shipped, params=self.params(), path=str(self.path) if self.path else None,
                 aliases=list(self.aliases))
        if self.shipped:
            d["integrity"] = ("size and sha256 of every file recorded in vitkit/weights/MANIFEST.json; "
                              "model.safetensors and config.json checked on load" if self.files else
                              "not recorded in vitkit/weights/MANIFEST.json: loading it is refused")
        elif self.retired is not None:
            d["integrity"] = "retired: no longer shipped; the sha256 is what it had"
        elif self.sha256 is None:
            d["integrity"] = ("no sha256 is published for this file; a download is checked against the length "
                              "the server announces")
            if self.url and self.url.startswith(BUCKET):  # tests/test_hub.py: the listed sizes agree with this
                d["approx_size"] = 4 * d["params"]
        return d


# -- the paper's checkpoints (README "Available ViT models", vit_jax.ipynb bucket listing) ---------------------------
_PAPER = {  # file name -> vitkit variant, width (for the pre-logits layer of the ImageNet-21k files)
    "ViT-B_16": ("ViT-B/16", 768), "ViT-B_32": ("ViT-B/32", 768), "ViT-L_16": ("ViT-L/16", 1024),
    "ViT-L_32": ("ViT-L/32", 1024), "ViT-H_14": ("ViT-H/14", 1280), "R50+ViT-B_16": ("R50+ViT-B/16", 768),
}
_PAPER_FINETUNED = {  # imagenet21k+imagenet2012 file -> (file of the architecture, resolution); no H/14 is published
    "ViT-B_16": ("ViT-B_16", 384), "ViT-B_16-224": ("ViT-B_16", 224), "ViT-B_32": ("ViT-B_32", 384),
    "ViT-L_16": ("ViT-L_16", 384), "ViT-L_16-224": ("ViT-L_16", 224), "ViT-L_32": ("ViT-L_32", 384),
    "R50+ViT-B_16": ("R50+ViT-B_16", 384),
}

# -- AugReg (README table of recommended checkpoints): model, pre-trained file, fine-tuned file suffix, top-1 -------
_AUGREG_VARIANT = {  # first part of an AugReg file name (vit_jax/configs/models.py AUGREG_CONFIGS) -> vitkit variant
    "Ti_16": "ViT-Ti/16", "S_16": "ViT-S/16", "S_32": "ViT-S/32", "B_8": "ViT-B/8", "B_16": "ViT-B/16",
    "B_32": "ViT-B/32", "L_16": "ViT-L/16", "R_Ti_16": "R+ViT-Ti/16", "R26_S_32": "R26+ViT-S/32",
    "R26_B_32": "R26+ViT-B/32", "R50_L_32": "R50+ViT-L/32",
}
_AUGREG = [  # (pre-trained file, fine-tuning suffix at 384 px, ImageNet top-1 of the fine-tuned file)
    ("L_16-i21k-300ep-lr_0.001-aug_strong1-wd_0.1-do_0.0-sd_0.0", "steps_20k-lr_0.01-res_384", 85.59),
    ("B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0", "steps_20k-lr_0.03-res_384", 85.49),
    ("S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0", "steps_20k-lr_0.03-res_384", 83.73),
    ("R50_L_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1", "steps_20k-lr_0.01-res_384", 85.99),
    ("R26_S_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0", "steps_20k-lr_0.01-res_384", 83.85),
    ("Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0", "steps_20k-lr_0.03-res_384", 78.22),
    ("B_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0", "steps_20k-lr_0.01-res_384", 83.59),
    ("S_32-i21k-300ep-lr_0.001-aug_none-wd_0.1-do_0.0-sd_0.0", "steps_20k-lr_0.01-res_384", 79.58),
    ("R_Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0", "steps_20k-lr_0.03-res_384", 75.40),
]
# -- BiT (google-research/big_transfer README): BiT-S on ILSVRC-2012, BiT-M on ImageNet-21k, and BiT-M fine-tuned on
# ILSVRC-2012 ("-ILSVRC2012"; BiT-HyperRule fine-tunes ImageNet at 480 px). R152x2 was released later, BiT-M only.
BIT_BUCKET = "https://storage.googleapis.com/bit_models/"
_BIT_S = ("R50x1", "R101x1", "R50x3", "R101x3", "R152x4")
_BIT_M = _BIT_S + ("R152x2",)
_AUGREG_FILE = re.compile(r"^(?P<model>[A-Za-z0-9_]+?)-[A-Za-z0-9_.+-]+$")


def official() -> list[Pretrained]:
    """The downloadable checkpoints of google-research/vision_transformer (sources in the module docstring)."""
    out = []
    for f, (variant, width) in _PAPER.items():
        out.append(Pretrained(f"imagenet21k/{f}", variant, "imagenet21k", 224, IMAGENET21K_CLASSES,
                              representation_size=width, url=f"{BUCKET}imagenet21k/{f}.npz"))
    for f, (arch, size) in _PAPER_FINETUNED.items():
        name = f"imagenet21k+imagenet2012/{f}"
        out.append(Pretrained(name, _PAPER[arch][0], "imagenet21k+imagenet2012", size, IMAGENET_CLASSES,
                              url=f"{BUCKET}{name}.npz"))
    for f, adapt, top1 in _AUGREG:
        variant = _AUGREG_VARIANT[f.split("-")[0]]
        out.append(Pretrained(f"augreg/{f}", variant, "imagenet21k", 224, IMAGENET21K_CLASSES,
                              url=f"{BUCKET}augreg/{f}.npz"))
        ft = f"augreg/{f}--imagenet2012-{adapt}"
        out.append(Pretrained(ft, variant, "imagenet21k+imagenet2012", int(adapt.rsplit("_", 1)[1]),
                              IMAGENET_CLASSES, top1=top1, url=f"{BUCKET}{ft}.npz"))
    for arch in _BIT_S:
        out.append(Pretrained(f"BiT-S-{arch}", f"BiT-{arch}", "imagenet2012", 224, IMAGENET_CLASSES,
                              url=f"{BIT_BUCKET}BiT-S-{arch}.npz"))
    for arch in _BIT_M:
        out.append(Pretrained(f"BiT-M-{arch}", f"BiT-{arch}", "imagenet21k", 224, IMAGENET21K_CLASSES,
                              url=f"{BIT_BUCKET}BiT-M-{arch}.npz"))
        out.append(Pretrained(f"BiT-M-{arch}-ILSVRC2012", f"BiT-{arch}", "imagenet21k+imagenet2012", 480,
                              IMAGENET_CLASSES, url=f"{BIT_BUCKET}BiT-M-{arch}-ILSVRC2012.npz"))
    return out


def manifest(weights_dir: Optional[Path] = None) -> dict:
    """WEIGHTS_DIR/MANIFEST.json (format in the module docstring); without one, nothing is recorded."""
    path = (weights_dir or WEIGHTS_DIR) / MANIFEST
    m = _read_json(path) if path.is_file() else {}
    return {"format": "vitkit-weights-manifest", "version": 1,
            **{k: m.get(k) or {} for k in ("aliases", "shipped", "retired")}}


def shipped() -> list[Pretrained]:
    """The models inside the installed package: every WEIGHTS_DIR/<name>/ holding model.safetensors + config.json,
    with the sizes and sha256 its manifest records (None where it records none; loading that one is refused)."""
    out = []
    if not WEIGHTS_DIR.is_dir():
        return out
    man = manifest()
    for d in sorted(WEIGHTS_DIR.iterdir()):
        if d.name.startswith(".") or not (d.is_dir() and (d / "model.safetensors").is_file()
                                          and (d / "config.json").is_file()):
            continue  # a hidden folder is one being written (scripts/ship_weights.py)
        meta = _read_json(d / "config.json")
        model = meta.get("model", {})
        files = man["shipped"].get(d.name)
        weights = (files or {}).get("model.safetensors") or {}
        out.append(Pretrained(d.name, model.get("name") or "ViT", meta.get("dataset"), model.get("image_size", 224),
                              model.get("num_classes", len(meta.get("class_names", []))),
                              model.get("representation_size"), top1=meta.get("top1"), path=d, files=files,
                              sha256=weights.get("sha256"), size=weights.get("size"),
                              aliases=tuple(sorted(a for a, t in man["aliases"].items() if t == d.name))))
    return out


def retired() -> list[Pretrained]:
    """Released versions no longer in the package, from the manifest: known by name, refused when asked for."""
    out = []
    for name, r in sorted(manifest()["retired"].items()):
        w = r["model.safetensors"]
        out.append(Pretrained(name, r["variant"], r.get("dataset"), r["image_size"], r["num_classes"],
                              top1=r.get("top1"), sha256=w["sha256"], size=w["size"], retired=r))
    return out


def aliases() -> dict[str, str]:
    """bare name -> the versioned name it points at now (an alias may move to newer weights; a version never)."""
    return dict(sorted(manifest()["aliases"].items()))


def registry() -> dict[str, Pretrained]:
    """Every pre-trained model vitkit knows, by its exact (versioned) name: the shipped ones first, then the
    official downloads, then the retired versions. Aliases are not keys: `lookup` resolves them."""
    return {p.name: p for p in shipped() + official() + retired()}


def retired_message(entry: Pretrained) -> str:
    r = entry.retired
    w = r["model.safetensors"]
    top1 = f"{entry.top1:.2f} % {entry.dataset} top-1 " if entry.top1 is not None else ""
    copy = f"; a copy is {r['copy']} in the repository" if r.get("copy") else ""
    return (f"{entry.name} is no longer shipped: it was the {entry.variant} {top1}model (model.safetensors, "
            f"{w['size']:,} bytes, sha256 {w['sha256']}), replaced by {r['replaced_by']} in commit "
            f"{r['replaced_in'][:12]}; git commit {r['commit'][:12]} holds it ({r['path']}/){copy}")


def exact_weights(spec) -> Optional[dict]:
    """For a result row: {"weights": versioned name, "sha256": of its model.safetensors} when `spec` is a shipped
    name or alias (not an existing local path), else None. Record this, not the alias, which may move."""
    if spec is None or is_url(spec) or _exists_locally(Path(str(spec))):
        return None
    entry = lookup(str(spec))
    if entry is None or not entry.shipped:
        return None
    return {"weights": entry.name, "sha256": entry.sha256}


def file_record(path: Path) -> dict:
    return {"size": path.stat().st_size, "sha256": sha256_file(path)}


def folder_record(folder: Path) -> dict:
    """{file name: {"size", "sha256"}} of the RECORDED files a shipped folder has (MODEL_CARD.md optional)."""
    return {f: file_record(folder / f) for f in RECORDED if (folder / f).is_file()}


def write_manifest(man: dict, weights_dir: Optional[Path] = None) -> Path:
    """Write the manifest atomically (a temporary sibling renamed into place), keys sorted, one file per line."""
    from ..flags import write_atomic

    text = json.dumps(man, indent=1, sort_keys=True) + "\n"
    return write_atomic((weights_dir or WEIGHTS_DIR) / MANIFEST, lambda f: f.write(text.encode()))


# -- checking shipped files against the manifest ------------------------------------------------------------------
_VERIFIED: set = set()  # (path, size, mtime_ns, inode, recorded sha256) of files that matched, in this process


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(entry: Pretrained) -> None:
    """Refuse a shipped folder whose model.safetensors or config.json is not the size and sha256 the manifest
    records (one line: the file, both sizes and both hashes), or that the manifest does not record. A file that
    matched once is not hashed again in this process unless its size, mtime or inode changed."""
    where = entry.path.parent / MANIFEST
    if not entry.files:
        raise UserError(f"{entry.path}: {entry.name} is not recorded in {where} (no size or sha256 to check it "
                        f"against; scripts/ship_weights.py records the versions it ships); refusing to load it")
    for name in CHECKED:
        rec, p = entry.files.get(name), entry.path / name
        if rec is None:
            raise UserError(f"{p}: {where} records no size or sha256 for it; refusing to load {entry.name}")
        st = p.stat()
        key = (str(p), st.st_size, st.st_mtime_ns, st.st_ino, rec["sha256"])
        if key in _VERIFIED:
            continue
        actual = sha256_file(p)
        if st.st_size != rec["size"] or actual != rec["sha256"]:
            raise UserError(f"{p}: sha256 {actual} ({st.st_size:,} bytes), but {where} records sha256 "
                            f"{rec['sha256']} ({rec['size']:,} bytes) for {entry.name}; a released version never "
                            f"changes, so this file was altered or damaged (reinstall vitkit); refusing to load it")
        _VERIFIED.add(key)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not readable JSON ({e})") from None


# -- model cards, rendered from a shipped folder's own config.json ------------------------------------------------
def _curve(evals: list) -> str:
    return ", ".join(f"{r['epoch']:g}: {100 * r['top1']:.1f} %" for r in evals)


def _architecture(cfg) -> str:
    if cfg.resnet:  # the paper's hybrid (section 3.1): the Transformer reads patches of a ResNet's feature map
        stages = cfg.resnet.get("layers") or []
        units = "unit" if stages == [1] else "units per stage"
        stem = "root block only" if not stages else f"root block + {'/'.join(map(str, stages))} bottleneck {units}"
        return (f"hybrid: a BiT-style ResNet stem ({stem}, stride {cfg.stem_stride // cfg.patch_size}) whose feature "
                f"map is cut into {cfg.patch_size}x{cfg.patch_size} patches, one token per "
                f"{cfg.stem_stride}x{cfg.stem_stride} pixels, then a ViT of {cfg.depth} blocks, width "
                f"{cfg.hidden_size}, {cfg.num_heads} heads")
    return (f"ViT: {cfg.depth} blocks, width {cfg.hidden_size}, {cfg.num_heads} heads, "
            f"{cfg.patch_size}x{cfg.patch_size} patches")


def model_card(folder: Path, name: Optional[str] = None) -> str:
    """MODEL_CARD.md of a shipped folder, rendered from its config.json alone (architecture, "dataset", "top1" and
    the "card" entry that scripts/ship_weights.py writes from the run's record) and its model.safetensors' size and
    sha256. A card is never edited by hand: tests/test_weights_versions.py compares each committed one with this.

    The "card" entry: summary, evaluated_on, hardware, torch, precision, seed, time_note, data (prose: the data set
    and its licence), notes (a list of {"title", "text"} sections), run (the run folder), first_run (two cycles),
    and cycles: one or two of {init, epochs, steps, image_size, evals: [{"epoch", "top1" (a fraction)}], top5
    (fraction, of the last evaluation), seconds (summed step times), machine, recipe, command}."""
    from ..config import ViTConfig

    folder = Path(folder)
    name = name or folder.name
    m = VERSIONED.match(name)
    base = m.group("base") if m else name
    meta = _read_json(folder / "config.json")
    c = meta.get("card")
    if not isinstance(c, dict) or not c.get("cycles"):
        raise UserError(f"{folder / 'config.json'} has no \"card\" entry with the training record (cycles); "
                        "scripts/ship_weights.py writes one")
    cfg = ViTConfig.from_dict(meta["model"])
    entry = Pretrained(name, cfg.name or "ViT", meta.get("dataset"), cfg.image_size, cfg.num_classes, path=folder)
    dataset, cycles = meta.get("dataset"), c["cycles"]
    last, first = cycles[-1], cycles[0]
    seconds = sum(float(k["seconds"]) for k in cycles)
    hours = [f"{float(k['seconds']) / 3600:.2f} h" for k in cycles]
    machines = [k.get("machine") or "unknown CPU" for k in cycles]
    where = machines[-1]
    if len(cycles) == 1:
        after = f"{last['steps']:,} optimizer steps ({last['epochs']:g} epochs)"
        curves, recipe = _curve(last["evals"]), last["recipe"]
        reproduce = [last["command"], f"python scripts/ship_weights.py {c['run']} {base}"]
    else:
        if machines[0] != machines[-1]:
            where = f"first cycle {hours[0]} on {machines[0]}, second {hours[1]} on {machines[1]}"
        after = (f"{first['steps']:,} + {last['steps']:,} optimizer steps ({first['epochs']:g} + {last['epochs']:g} "
                 "epochs, two cycles)")
        if first["image_size"] != last["image_size"]:  # section 3.2: fine-tune at a higher resolution
            kind = (f"Pre-training at {first['image_size']} px, then fine-tuning at {last['image_size']} px on the "
                    f"same data (section 3.2 of the paper: the images resized to {last['image_size']} px, so more and "
                    "smaller patches; the position embeddings 2D-interpolated to the larger grid)")
        else:
            kind = "Two cosine cycles (a warm restart)"
        recipe = (f"{kind}. First cycle, {first['epochs']:g} epochs from {first['init']} "
                  f"({100 * first['evals'][-1]['top1']:.2f} % at its end): {first['recipe']}.\n\n"
                  f"Second cycle, {last['epochs']:g} epochs from the first cycle's weights, with a fresh optimizer: "
                  f"{last['recipe']}.")
        curves = f"first cycle {_curve(first['evals'])}; second cycle {_curve(last['evals'])}"
        reproduce = [first["command"], last["command"],
                     f"python scripts/ship_weights.py {c['run']} {base} --first {c['first_run']}"]
    size, sha = (folder / "model.safetensors").stat().st_size, sha256_file(folder / "model.safetensors")
    notes = "".join(f"## {n['title']}\n{n['text']}\n\n" for n in c.get("notes") or [])
    top5 = f" (top-5 {100 * last['top5']:.2f} %)" if last.get("top5") is not None else ""
    time_note = f", {c['time_note']}" if c.get("time_note") else ""
    lines = "\n".join(f"    {r}" for r in reproduce)
    return f"""# {name}

A {cfg.name} ({_architecture(cfg)}, {entry.params():,} parameters) trained from {first['init']} on {dataset} at \
{cfg.image_size} px: {c['summary']}.

    import vitkit
    m = vitkit.load("{name}")
    vitkit train --init {name} --dataset imagefolder:PATH      # fine-tune (recipe finetune)
    vitkit fewshot {name} --dataset imagefolder:PATH --shots 5,10

`{name}` names these weights and nothing else, ever. `{base}` is an alias of the recommended version of this \
model: it may move to newer weights (`vitkit models --pretrained` shows where it points), so results should name \
the version.

## Weights
model.safetensors: {size:,} bytes, sha256 `{sha}`. vitkit/weights/MANIFEST.json records its size and sha256 (and \
config.json's); loading the name checks them and refuses a file that differs.

## Result
- **{dataset} validation top-1 {meta['top1']:.2f} %**{top5} on {c['evaluated_on']}, after {after}, evaluated once \
at the end of each epoch; the last one is shipped (no early stopping on the validation split).
- Top-1 by epoch: {curves}.
- Training time: {seconds / 3600:.2f} h of summed step times (evaluations and data loading before the first step not \
counted) on {c['hardware']} ({where}, torch {c['torch']}, {c['precision']}){time_note}, so the time is an upper bound \
for an idle machine.

{notes}## Data
{c['data']}

## Recipe
{recipe}

(see `vitkit train --help`; the pad-crop is a shift of up to 1/8 of the image, RandAugment is N ops at magnitude M.)

## Reproduce
{lines}

The run is seeded (seed {c['seed']}: initialisation, data order, augmentation) and resumable exactly: an \
interrupted run continued with `--resume` gives the same weights as an uninterrupted one (tests/test_resume.py). \
A second run on another machine or torch build gives the same top-1 within run-to-run noise, not the same bits: \
shipped, it would be a new version.
"""


# -- resolving a checkpoint argument ------------------------------------------------------------------------------
def is_url(spec) -> bool:
    return isinstance(spec, str) and spec.lower().startswith(("http://", "https://"))


def _exists_locally(p: Path) -> bool:  # the checkpoint, or the previous one an interrupted save left (io._existing)
    return p.exists() or p.with_name(f".{p.name}.old").exists()


def _known() -> dict[str, Pretrained]:
    """Every name -> its entry: the registry's exact names, and each alias -> the version it points at."""
    reg = registry()
    known = dict(reg)
    for alias, target in aliases().items():
        if target in reg and reg[target].shipped:
            known.setdefault(alias, reg[target])
    return known


def lookup(name: str) -> Optional[Pretrained]:
    """The registry entry of `name` (exact, else case-insensitive; an alias gives the version it points at; a
    retired version gives its record, which `resolve` refuses), or an unlisted AugReg file "augreg/<file>"."""
    reg = _known()
    if name in reg:
        return reg[name]
    folded = {k.lower(): v for k, v in reg.items()}
    if name.lower() in folded:
        return folded[name.lower()]
    target = {k.lower(): v for k, v in aliases().items()}.get(name.lower())
    if target is not None:  # an alias whose version is not in this installation: not silently another one
        raise UserError(f"{name} is an alias of {target}, which this installation does not ship "
                        f"({WEIGHTS_DIR / MANIFEST}; reinstall vitkit)")
    if name.startswith("augreg/"):
        m = _AUGREG_FILE.match(name[len("augreg/"):])
        if m and m.group("model") in _AUGREG_VARIANT:
            res = re.search(r"-res_(\d+)$", name)
            return Pretrained(name, _AUGREG_VARIANT[m.group("model")], None, int(res.group(1)) if res else 224, 0,
                              url=f"{BUCKET}{name}.npz")
    return None


def resolve(spec, progress: Optional[bool] = None) -> Path:
    """A checkpoint argument -> a local path. An existing path is returned as it is; an http(s) URL or a
    pre-trained name is downloaded into the cache unless it is there already (a shipped name or alias is a package
    folder, checked against the manifest first; a retired version is refused, saying what it was).
    Anything else is refused in one line, with the nearest names."""
    if is_url(spec):
        return unpack(download(str(spec), progress=progress))
    p = Path(spec)
    if _exists_locally(p):
        return p
    entry = lookup(str(spec))
    if entry is None:
        import difflib

        near = difflib.get_close_matches(str(spec), list(_known()), n=3, cutoff=0.75)
        raise UserError(f"checkpoint {spec} does not exist, and it is not a pre-trained name or an http(s) URL"
                        + (f"; did you mean {', '.join(near)}?" if near else "")
                        + " (vitkit models --pretrained lists the names)")
    if entry.retired is not None:
        raise UserError(retired_message(entry))
    if entry.path is not None:
        verify(entry)
        return entry.path
    return download(entry.url, sha256=entry.sha256, size=entry.size, progress=progress)


# -- downloads ----------------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """vitkit's cache, shared with the datasets: $VITKIT_CACHE, else $XDG_CACHE_HOME/vitkit or ~/.cache/vitkit."""
    from ..data.datasets import cache_dir as data_cache

    return data_cache()


def cache_path(url: str) -> Path:
    """Where `url` is cached: CACHE/<host>/<path of the URL>. Refuses URLs that name no file vitkit reads."""
    u = urlsplit(url)
    parts = [unquote(s) for s in u.path.split("/") if s]
    if (u.scheme.lower() not in ("http", "https") or not u.hostname or not parts
            or any(s in (".", "..") or "/" in s or "\\" in s or "\0" in s for s in parts)):
        raise UserError(f"{url} is not an http(s) URL of a file")
    if not parts[-1].lower().endswith(URL_SUFFIXES + ARCHIVE_SUFFIXES):
        raise UserError(f"{url}: vitkit reads {', '.join(URL_SUFFIXES)} files, or a checkpoint folder packed as "
                        f"{', '.join(ARCHIVE_SUFFIXES)}, from URLs (the file name must end with one)")
    if u.query:  # distinct queries are distinct files
        stem, dot, suffix = parts[-1].rpartition(".")
        parts[-1] = f"{stem}-{hashlib.sha256(u.query.encode()).hexdigest()[:12]}{dot}{suffix}"
    host = u.hostname + (f"_{u.port}" if u.port else "")
    return cache_dir().joinpath(host, *parts)


def download(url: str, sha256: Optional[str] = None, size: Optional[int] = None,
             progress: Optional[bool] = None) -> Path:
    """Download `url` into the cache (once) and return the local file; vitkit/download.py does the fetching (lock,
    .part file, checks, one-line errors). `progress`: a tqdm bar on stderr; default when stderr is a terminal or
    VITKIT_PROGRESS=1."""
    dest = cache_path(url)
    if dest.is_file():
        return dest
    if not allowed():  # as for datasets (vitkit/data/README.md)
        raise DownloadError(url, dest, "downloads are off: VITKIT_NO_DOWNLOAD is set", connection=False)
    return fetch(url, dest, sha256=sha256, size=size, progress=progress)


def unpack(path: Path) -> Path:
    """A downloaded archive of a checkpoint folder -> the folder, unpacked once into <archive>.d/ (atomically: a
    temporary sibling renamed into place). Other files are returned as they are."""
    name = path.name.lower()
    kind = next((s for s in ARCHIVE_SUFFIXES if name.endswith(s)), None)
    if kind is None:
        return path
    target = path.with_name(path.name + ".d")
    if not target.is_dir():
        import shutil
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=path.parent))
        try:
            _extract(path, tmp, kind)
            os.replace(tmp, target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not target.is_dir():  # not just another process that unpacked it first
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    inside = list(target.iterdir())
    return inside[0] if len(inside) == 1 and inside[0].is_dir() else target  # one top folder: that is the checkpoint


def _extract(archive: Path, out: Path, kind: str) -> None:
    """Unpack with no file landing outside `out` (no absolute paths, no "..", no links or devices)."""
    import tarfile
    import zipfile

    try:
        if kind == ".zip":
            with zipfile.ZipFile(archive) as z:
                _check_members(archive, z.namelist())
                z.extractall(out)
        else:
            with tarfile.open(archive) as t:
                members = t.getmembers()
                _check_members(archive, [m.name for m in members])
                bad = [m.name for m in members if not (m.isfile() or m.isdir())]
                if bad:
                    raise UserError(f"{archive}: refusing links or special files in a checkpoint archive: {bad[:3]}")
                safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python's own check too
                t.extractall(out, members=members, **safe)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
        raise UserError(f"{archive} is not a readable {kind} archive ({e})") from None


def _check_members(archive: Path, names: list[str]) -> None:
    for n in names:
        p = Path(n)
        if p.is_absolute() or ".." in p.parts or n.startswith(("/", "\\")):
            raise UserError(f"{archive}: refusing the archive member {n!r} (outside the folder it unpacks into)")
