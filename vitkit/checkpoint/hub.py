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
No sha256 is published for these files: a download is checked against the length the server announces.

Shipped models live inside the package as native checkpoints, vitkit/weights/<name>/ (model.safetensors,
config.json, MODEL_CARD.md); they are found by scanning that folder, so `shipped` is a fact about the installed
package. Optional "dataset" and "top1" (percent) keys of the config.json are shown in the listing.

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
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"  # shipped models: vitkit/weights/<name>/
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

    @property
    def shipped(self) -> bool:
        return self.path is not None

    def params(self) -> int:
        """Parameter count of the architecture, counted on the meta device (no memory, no time)."""
        import torch

        from ..model import ViT, create_model

        with torch.device("meta"):
            if self.path is not None:
                from ..config import ViTConfig

                return ViT(ViTConfig.from_dict(_read_json(self.path / "config.json")["model"])).num_params()
            extra = {"representation_size": self.representation_size} if self.representation_size else {}
            return create_model(self.variant, num_classes=self.num_classes, image_size=self.image_size,
                                **extra).num_params()

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(shipped=self.shipped, params=self.params(), path=str(self.path) if self.path else None)
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


def shipped() -> list[Pretrained]:
    """The models inside the installed package: every WEIGHTS_DIR/<name>/ holding model.safetensors + config.json."""
    out = []
    if not WEIGHTS_DIR.is_dir():
        return out
    for d in sorted(WEIGHTS_DIR.iterdir()):
        if not (d.is_dir() and (d / "model.safetensors").is_file() and (d / "config.json").is_file()):
            continue
        meta = _read_json(d / "config.json")
        model = meta.get("model", {})
        out.append(Pretrained(d.name, model.get("name") or "ViT", meta.get("dataset"), model.get("image_size", 224),
                              model.get("num_classes", len(meta.get("class_names", []))),
                              model.get("representation_size"), top1=meta.get("top1"), path=d))
    return out


def registry() -> dict[str, Pretrained]:
    """Every pre-trained model vitkit knows, by name: the shipped ones first, then the official downloads."""
    return {p.name: p for p in shipped() + official()}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not readable JSON ({e})") from None


# -- resolving a checkpoint argument ------------------------------------------------------------------------------
def is_url(spec) -> bool:
    return isinstance(spec, str) and spec.lower().startswith(("http://", "https://"))


def _exists_locally(p: Path) -> bool:  # the checkpoint, or the previous one an interrupted save left (io._existing)
    return p.exists() or p.with_name(f".{p.name}.old").exists()


def lookup(name: str) -> Optional[Pretrained]:
    """The registry entry of `name` (exact, else case-insensitive), or an unlisted AugReg file "augreg/<file>"."""
    reg = registry()
    if name in reg:
        return reg[name]
    folded = {k.lower(): v for k, v in reg.items()}
    if name.lower() in folded:
        return folded[name.lower()]
    if name.startswith("augreg/"):
        m = _AUGREG_FILE.match(name[len("augreg/"):])
        if m and m.group("model") in _AUGREG_VARIANT:
            res = re.search(r"-res_(\d+)$", name)
            return Pretrained(name, _AUGREG_VARIANT[m.group("model")], None, int(res.group(1)) if res else 224, 0,
                              url=f"{BUCKET}{name}.npz")
    return None


def resolve(spec, progress: Optional[bool] = None) -> Path:
    """A checkpoint argument -> a local path. An existing path is returned as it is; an http(s) URL or a
    pre-trained name is downloaded into the cache unless it is there already (a shipped name is a package folder).
    Anything else is refused in one line, with the nearest names."""
    if is_url(spec):
        return unpack(download(str(spec), progress=progress))
    p = Path(spec)
    if _exists_locally(p):
        return p
    entry = lookup(str(spec))
    if entry is None:
        import difflib

        near = difflib.get_close_matches(str(spec), list(registry()), n=3, cutoff=0.75)
        raise UserError(f"checkpoint {spec} does not exist, and it is not a pre-trained name or an http(s) URL"
                        + (f"; did you mean {', '.join(near)}?" if near else "")
                        + " (vitkit models --pretrained lists the names)")
    if entry.path is not None:
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
