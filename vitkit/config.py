"""Model configuration and the named variants of the paper, as data.

A variant name is ``<size>/<patch>`` ("B/16", "ViT-B/16", "vit-b_16", "ViT-B_16" all mean the same thing).
Sizes follow Table 1 of Dosovitskiy et al. 2021 (arXiv 2010.11929); Ti and S come from DeiT / "How to train
your ViT" (2106.10270), as the official repository names them. Image size is a separate setting.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Optional

from .errors import UserError

# width, depth, heads, mlp width -- Table 1 of the paper (+ Ti/S from the official repo, + tiny sizes for small images).
SIZES: dict[str, dict[str, int]] = {
    "testing": dict(hidden_size=16, depth=2, num_heads=2, mlp_dim=32),  # seconds-long smoke tests
    "Mini": dict(hidden_size=192, depth=6, num_heads=3, mlp_dim=768),  # 28-64 px data on a laptop CPU
    "Ti": dict(hidden_size=192, depth=12, num_heads=3, mlp_dim=768),
    "S": dict(hidden_size=384, depth=12, num_heads=6, mlp_dim=1536),
    "B": dict(hidden_size=768, depth=12, num_heads=12, mlp_dim=3072),
    "L": dict(hidden_size=1024, depth=24, num_heads=16, mlp_dim=4096),
    "H": dict(hidden_size=1280, depth=32, num_heads=16, mlp_dim=5120),
}
# Patch sizes: the paper's 14/16/32, /8 from AugReg, and /2 /4 /7 for 28-64 px images (MNIST, CIFAR).
PATCHES = (2, 4, 7, 8, 14, 16, 32)
# Paper-size variants with the patch sizes they are published at; small ones are listed for small images.
LISTED = ["Ti/16", "S/16", "S/32", "B/8", "B/16", "B/32", "L/16", "L/32", "H/14",
          "Mini/4", "Mini/7", "Ti/4", "S/4", "testing/4"]
# Default image size for a patch size when none is given: 224 for paper variants, 28 for small patches.
DEFAULT_IMAGE_SIZE = {2: 32, 4: 32, 7: 28, 8: 224, 14: 224, 16: 224, 32: 224}

# -- the hybrid's ResNet stem (vitkit/hybrid.py builds it; paper section 3.1) as data
WS_EPS = 1e-5  # weight standardisation: added to the std (official models_resnet.weight_standardize)
GN_EPS = 1e-6  # flax.linen.GroupNorm default
# "norm" in the layout: whose normalisation constants. timm's hybrids standardise with (w - mean) / sqrt(var + 1e-8)
# and use GroupNorm eps 1e-5; a timm file keeps timm's numerics ("timm"), everything else is "official".
NORMS = {"official": dict(ws_var_eps=None, gn_eps=GN_EPS), "timm": dict(ws_var_eps=1e-8, gn_eps=1e-5)}
GN_GROUPS = 32
ROOT_STRIDE = 4


def check_layout(resnet: dict) -> tuple[list[int], float]:
    """Validate a cfg.resnet dict and return (layers, width_factor); a UserError names what is wrong."""
    if not isinstance(resnet, dict) or set(resnet) - {"layers", "width", "norm"} or "layers" not in resnet \
            or resnet.get("norm", "official") not in NORMS:
        raise UserError(f"unknown hybrid ResNet layout {resnet!r}: expected {{'layers': [n1, n2, ...], "
                        f"'width': w}}, e.g. {{'layers': [3, 4, 9], 'width': 1}} for R50+ViT-B/16")
    layers, width = list(resnet["layers"]), resnet.get("width", 1)
    ok_width = isinstance(width, (int, float)) and width > 0 and float(64 * width).is_integer() \
        and int(64 * width) % GN_GROUPS == 0
    if not all(isinstance(n, int) and n > 0 for n in layers) or not ok_width:
        raise UserError(f"unknown hybrid ResNet layout {resnet!r}: layers must be positive block counts and "
                        f"width a factor w with 64*w a multiple of {GN_GROUPS} (the official code's width_factor)")
    return layers, width


def resnet_stride(resnet: dict) -> int:
    """Pixels per feature-map position: 4 for the root block, x2 for every stage after the first."""
    layers, _ = check_layout(resnet)
    return ROOT_STRIDE * 2 ** max(len(layers) - 1, 0)


def hybrid_variants() -> dict[str, dict]:
    """The named hybrids of the official repository: name -> ViTConfig overrides (size from config.SIZES)."""
    return {
        "R50+ViT-B/16": dict(size="B", patch_size=1, resnet={"layers": [3, 4, 9], "width": 1}),
        "R26+ViT-S/32": dict(size="S", patch_size=1, resnet={"layers": [2, 2, 2, 2], "width": 1}),
        "R26+ViT-B/32": dict(size="B", patch_size=1, resnet={"layers": [2, 2, 2, 2], "width": 1}),
        "R50+ViT-L/32": dict(size="L", patch_size=1, resnet={"layers": [3, 4, 6, 3], "width": 1}),
        # root block only (stride 4) and 8x8 patches: one token per 32x32 pixels, as the official config has it
        "R+ViT-Ti/16": dict(size="Ti", patch_size=8, resnet={"layers": [], "width": 1}),
        # vitkit's, for 28-32 px data (no official weights): root block + 2x2 patches, 8 px per token, so a 32 px
        # image gives the same 4x4 grid as ViT-Mini/7 at 28 px. From scratch on full Fashion-MNIST it beats the pure
        # ViT-Mini/7 at equal training time (benchmarks/fmnist_from_scratch.py), as the paper's Fig. 5 has
        # hybrids ahead at small compute.
        "R+ViT-Mini/8": dict(size="Mini", patch_size=2, resnet={"layers": [], "width": 1}, image_size=32),
        # the same root block and one bottleneck unit after it (BiT's first stage, 64 -> 256 channels, stride 1):
        # more of the convolutional bias the paper's hybrids get from their ResNet stages, for 1.3x the step time
        # of R+ViT-Mini/8 at 64 px (docs/transfer.md, "A bottleneck unit in the stem")
        "R1+ViT-Mini/8": dict(size="Mini", patch_size=2, resnet={"layers": [1], "width": 1}, image_size=32),
        # the same stem under the twice-as-deep Ti Transformer: the second hybrid size of the compute study
        "R+ViT-Ti/8": dict(size="Ti", patch_size=2, resnet={"layers": [], "width": 1}, image_size=32),
        # seconds-long smoke tests (like ViT-testing/4): the same layout with the testing-size Transformer
        "R+ViT-testing/8": dict(size="testing", patch_size=2, resnet={"layers": [], "width": 1}, image_size=32),
    }


def hybrid_config(name: str) -> dict:
    """ViTConfig fields of a named hybrid. "R50+ViT-B/16", "R50+ViT-B_16" and AugReg's "R50+B/16" are one name."""

    def key(n: str) -> str:
        return n.strip().lower().replace("_", "/").replace("vit-", "")

    table = {key(k): (k, v) for k, v in hybrid_variants().items()}
    if key(name) not in table:
        raise UserError(f"unknown hybrid variant {name!r}; valid: {', '.join(hybrid_variants())}")
    hname, h = table[key(name)]
    return dict(SIZES[h["size"]], patch_size=h["patch_size"], resnet=h["resnet"], image_size=h.get("image_size", 224),
                name=hname)


CLASSIFIERS = ("token", "gap")
POS_EMBEDS = ("learned", "learned2d", "sincos2d", "none")


@dataclass(frozen=True)
class ViTConfig:
    """Everything that decides the architecture; stored in every checkpoint's config.json."""

    image_size: int = 224  # input height = width, in pixels
    patch_size: int = 16  # P: side of a square patch
    hidden_size: int = 768  # D: token width
    depth: int = 12  # L: number of Transformer blocks
    num_heads: int = 12
    mlp_dim: int = 3072
    num_classes: int = 1000
    in_chans: int = 3
    classifier: str = "token"  # "token" ([class] token) or "gap" (global average pooling, App. D.3)
    pos_embed: str = "learned"  # "learned" (1D), "learned2d", "sincos2d" or "none" (App. D.4)
    representation_size: Optional[int] = None  # pre-logits layer (tanh) of the pre-training head
    dropout: float = 0.0
    attention_dropout: float = 0.0
    # stochastic depth (Huang et al. 2016, as AugReg trains ViTs): in training, each residual branch of block l is
    # dropped for a whole example with probability drop_path * l / (depth - 1); no effect in evaluation
    drop_path: float = 0.0
    layer_norm_eps: float = 1e-6  # flax default, used by the official code (HF uses 1e-12)
    gelu_approximate: str = "tanh"  # jax.nn.gelu default as the official code uses it; HF/timm use "none"
    qkv_bias: bool = True
    # Hybrid (ResNet stem) layout, None for a pure ViT: e.g. {"layers": [3, 4, 9], "width": 1} (issue: interop).
    resnet: Optional[dict] = None
    name: str = ""  # the variant name this was built from, for display only
    extra: dict = field(default_factory=dict)  # forward-compatible room; ignored by the model

    def __post_init__(self):
        for name in ("image_size", "patch_size", "hidden_size", "depth", "num_heads", "mlp_dim", "num_classes",
                     "in_chans"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "depth" else 1):
                raise UserError(f"model config {name} must be a positive integer, got {value!r}")
        if self.classifier not in CLASSIFIERS:
            raise UserError(f"classifier must be one of {CLASSIFIERS}, got {self.classifier!r}")
        for name in ("dropout", "attention_dropout", "drop_path"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
                raise UserError(f"model config {name} must be a rate in [0, 1), got {value!r}")
        if self.pos_embed not in POS_EMBEDS:
            raise UserError(f"pos_embed must be one of {POS_EMBEDS}, got {self.pos_embed!r}")
        if self.hidden_size % self.num_heads:
            raise UserError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.image_size % self.stem_stride:
            raise UserError(f"image size {self.image_size} is not divisible by the patch size "
                             f"{self.stem_stride} (choose a multiple of {self.stem_stride})")
        if self.pos_embed in ("learned2d", "sincos2d") and self.hidden_size % 4:
            raise UserError(f"{self.pos_embed} position embeddings need hidden_size divisible by 4")

    @property
    def stem_stride(self) -> int:
        """Pixels per token side: the patch size, times the ResNet's downsampling for a hybrid."""
        if self.resnet is None:
            return self.patch_size
        return self.patch_size * resnet_stride(self.resnet)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.stem_stride

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def num_tokens(self) -> int:
        return self.num_patches + (self.classifier == "token")

    def replace(self, **changes) -> "ViTConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ViTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown model config keys {unknown}; known: {sorted(known)}")
        return cls(**d)


_NAME = re.compile(r"^(?:vit[-_ ]?)?(?P<size>[a-z]+)[/_-](?P<patch>\d+)$", re.IGNORECASE)


def parse_variant(name: str) -> tuple[str, int]:
    """'ViT-B/16', 'vit_b_16', 'ViT-B_16', 'b/16' -> ('B', 16). Raises ValueError listing valid names."""
    m = _NAME.match(name.strip())
    sizes = {k.lower(): k for k in SIZES}
    if m and m.group("size").lower() in sizes and int(m.group("patch")) in PATCHES:
        return sizes[m.group("size").lower()], int(m.group("patch"))
    raise UserError(
        f"unknown variant {name!r}; valid: ViT-<size>/<patch> with size in {list(SIZES)} and patch in "
        f"{list(PATCHES)}, e.g. {', '.join('ViT-' + v for v in LISTED[:9])}")


def variant_config(name: str, **overrides) -> ViTConfig:
    """The ViTConfig of a named variant; any field can be overridden (num_classes, image_size, classifier, ...).
    Hybrids ("R50+ViT-B/16", ...) are listed in hybrid_variants()."""
    if "+" in name:  # hybrid: ResNet stem + ViT (built by vitkit/hybrid.py)
        kw = hybrid_config(name)
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return ViTConfig(**kw)
    size, patch = parse_variant(name)
    kw = dict(SIZES[size], patch_size=patch, image_size=DEFAULT_IMAGE_SIZE[patch], name=f"ViT-{size}/{patch}")
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return ViTConfig(**kw)
