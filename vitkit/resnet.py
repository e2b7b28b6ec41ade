"""BiT: the ResNet baseline the paper compares ViT against (section 4.1, Tables 2 and 5, Fig. 5).

Big Transfer (Kolesnikov et al. 2020, "Big Transfer (BiT): General Visual Representation Learning",
arXiv 1912.11370) is a ResNet-v2 -- pre-activation units (He et al. 2016, "Identity Mappings in Deep Residual
Networks") -- with GroupNorm and weight-standardised convolutions. This file follows the official code
(google-research/big_transfer; bit_pytorch/models.py, bit_jax/models.py and bit_tf2/models.py agree on every
point below):

* root: a 7x7/2 convolution (64 * width channels), then a 3x3/2 max pool; no norm and no ReLU, since every unit
  normalises its own input (pre-activation);
* unit (bottleneck, 4x expansion): GN-ReLU -> 1x1 conv -> GN-ReLU -> 3x3 conv (the stride sits here) -> GN-ReLU ->
  1x1 conv, added to the shortcut: the input itself, or a 1x1 (strided) projection of the *activated* input where
  the shape changes; no ReLU after the sum;
* stage i: 64 * width * 2**i bottleneck channels, stride 1 for the first stage and 2 for the others;
* pre-head: GN-ReLU over the last feature map, global average pooling; head: one dense layer (the official 1x1
  conv on the pooled features), zero-initialised.

Where BiT differs from the hybrid's ResNet (vitkit/hybrid.py, the official vit_jax models_resnet.py):

    ==============  ======================================  ===============================================
                    BiT (this file)                         hybrid stem
    ==============  ======================================  ===============================================
    unit            pre-activation: GN-ReLU-conv            post-activation: conv-GN-ReLU, ReLU after the sum
    root            conv, max pool                          conv-GN-ReLU, max pool
    weight std.     (w - mean) / sqrt(var + 1e-10)          (w - mean) / (std + 1e-5)
    GroupNorm eps   1e-5                                    1e-6
    padding         fixed: (k - 1) // 2 zeros each side     TF "SAME" (odd pixel after, for stride 2)
    max-pool pad    one pixel of zeros each side            SAME, with -inf
    ==============  ======================================  ===============================================

Shared with the hybrid: the weight-standardised convolution class (hybrid.StdConv2d, here with the variance
epsilon 1e-10 and symmetric padding), GroupNorm with 32 groups, the layout check (layers per stage, width factor)
and He-normal initialisation for training from scratch (the official code only fine-tunes; it zero-initialises
the head, as here).

Variants ("BiT-R50x1" = ResNet-50, width factor 1) are data: `DEPTHS` maps the depth to units per stage, the
width factor is any positive integer. "BiT-S-R50x1" and "BiT-M-R50x1" (the official names, S/M naming the
pre-training data, ImageNet-1k / ImageNet-21k) are the same architecture. R26 and R14 are not official BiT models:
R26 is the body of the paper's R26+ViT hybrids, R14 the smallest ResNet with one unit per stage.

Small images ("-S" suffix, e.g. "BiT-R26x1-S", 32 px default): the root is a 3x3/1 convolution without max pool,
the first layer of He et al.'s CIFAR ResNets (2016, section 4.2). BiT itself keeps the standard root and upsamples
small images instead: its hyper-rule (bit_hyperrule.py) resizes anything under 96x96 px, CIFAR included, to 160 px
and crops 128. A stride-1 root at 32 px yields the 32x32 map the standard root yields at 128 px, so every stage sees
the feature-map sizes of BiT's CIFAR runs (4x4 at the end) without 16x the pixels; the standard root at 32 px
would leave a 1x1 map for the last stage.

Parameter names: stem, stages.S.U.{norm1,conv1,norm2,conv2,norm3,conv3,downsample}, norm (pre-head), head.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .errors import UserError
from .hybrid import GN_GROUPS, StdConv2d, check_layout

WS_VAR_EPS = 1e-10  # weight standardisation: (w - mean) / sqrt(var + 1e-10), all three official implementations
GN_EPS = 1e-5  # GroupNorm epsilon of all three official implementations

# Units per stage by depth (3 convs per unit + root + head = depth).
DEPTHS: dict[int, tuple[int, ...]] = {
    14: (1, 1, 1, 1),
    26: (2, 2, 2, 2),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
# Root block: (kernel, stride, max pool). "standard" is BiT's; "small" is for 32-64 px images (module docstring).
ROOTS = {"standard": (7, 2, True), "small": (3, 1, False)}
# Listed by `vitkit models`: the official BiT architectures (bit_pytorch/models.py KNOWN_MODELS), the paper's R26,
# and small-image variants.
LISTED = ["BiT-R50x1", "BiT-R50x3", "BiT-R101x1", "BiT-R101x3", "BiT-R152x2", "BiT-R152x4", "BiT-R26x1",
          "BiT-R26x1-S", "BiT-R14x1-S"]
DEFAULT_IMAGE_SIZE = {"standard": 224, "small": 32}
# Seconds-long smoke tests (like ViT-testing/4): one unit, half width, the small root. Not listed.
TESTING = {"BiT-testing": dict(layers=(1,), width=0.5, root="small", image_size=32, name="BiT-testing")}

_NAME = re.compile(r"^bit[-_ ](?:[sml][-_])?r(?P<depth>\d+)x(?P<width>\d+)(?P<small>[-_]s)?$", re.IGNORECASE)


@dataclass(frozen=True)
class BiTConfig:
    """Everything that decides a BiT architecture; stored in a checkpoint's config.json with "family": "bit"."""

    layers: tuple = (3, 4, 6, 3)  # units per stage
    width: int = 1  # the official width_factor: the root has 64 * width channels
    root: str = "standard"  # "standard" (7x7/2 conv + 3x3/2 max pool) or "small" (3x3/1 conv)
    image_size: int = 224  # the resolution the preprocessing resizes to (the network itself takes any size)
    num_classes: int = 1000
    in_chans: int = 3
    name: str = ""  # the variant name this was built from, for display only
    family: str = "bit"  # tells a checkpoint reader this is not a ViTConfig
    extra: dict = field(default_factory=dict)  # forward-compatible room; ignored by the model

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        if self.family != "bit":
            raise ValueError(f"BiTConfig.family must be 'bit', got {self.family!r}")
        if self.root not in ROOTS:
            raise ValueError(f"BiT root must be one of {list(ROOTS)}, got {self.root!r}")
        if not self.layers:
            raise ValueError("a BiT ResNet needs at least one stage (layers)")
        check_layout({"layers": list(self.layers), "width": self.width})
        if self.image_size < 1 or self.num_classes < 1 or self.in_chans < 1:
            raise ValueError(f"image_size, num_classes and in_chans must be positive, got {self.image_size}, "
                             f"{self.num_classes}, {self.in_chans}")

    @property
    def root_width(self) -> int:
        return int(64 * self.width)

    @property
    def num_features(self) -> int:
        """Channels of the last stage: what the pre-head pools and the head sees."""
        return self.root_width * 2 ** (len(self.layers) - 1) * 4

    @property
    def stride(self) -> int:
        """Pixels per position of the last feature map."""
        k, s, pool = ROOTS[self.root]
        return s * (2 if pool else 1) * 2 ** (len(self.layers) - 1)

    @property
    def depth(self) -> int:
        """Weight layers: 3 convolutions per unit, the root and the head (ResNet-50 -> 50)."""
        return 3 * sum(self.layers) + 2

    def replace(self, **changes) -> "BiTConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "BiTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown BiT config keys {unknown}; known: {sorted(known)}")
        return cls(**d)


def is_bit_name(name: str) -> bool:
    """True for names of the BiT family ("BiT-R50x1", "bit_r26x1_s", "BiT-M-R101x3", ...), valid or not."""
    return name.strip().lower().startswith("bit")


def bit_config(name: str, **overrides) -> BiTConfig:
    """The BiTConfig of a named variant; any field can be overridden (None values are ignored).

    "BiT-R<depth>x<width>" with depth in DEPTHS and a positive integer width; "-S" appended selects the small-image
    root. The official "BiT-S-R50x1" / "BiT-M-R50x1" name the same architecture as "BiT-R50x1"."""
    testing = {k.lower(): v for k, v in TESTING.items()}.get(name.strip().lower())
    if testing is not None:
        return BiTConfig(**{**testing, **{k: v for k, v in overrides.items() if v is not None}})
    m = _NAME.match(name.strip())
    if not m or int(m.group("depth")) not in DEPTHS or int(m.group("width")) < 1:
        raise ValueError(f"unknown BiT variant {name!r}; valid: BiT-R<depth>x<width>[-S] with depth in "
                         f"{list(DEPTHS)} and an integer width factor, e.g. {', '.join(LISTED)}")
    depth, width, small = int(m.group("depth")), int(m.group("width")), bool(m.group("small"))
    root = "small" if small else "standard"
    kw = dict(layers=DEPTHS[depth], width=width, root=root, image_size=DEFAULT_IMAGE_SIZE[root],
              name=f"BiT-R{depth}x{width}{'-S' if small else ''}")
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return BiTConfig(**kw)


class BiTConv(StdConv2d):
    """hybrid.StdConv2d with BiT's numerics: (w - mean) / sqrt(var + 1e-10), (k - 1) // 2 zeros of padding on
    every side (the official fixed padding; odd kernels only, as BiT has)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1):
        super().__init__(cin, cout, k, stride)
        self.var_eps = WS_VAR_EPS
        self.pad = (k - 1) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.standardized_weight(), None, self.stride, self.pad)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GN_GROUPS, channels, eps=GN_EPS)


class PreActBottleneck(nn.Module):
    """One pre-activation bottleneck unit (module docstring); `mid` bottleneck channels, 4 * mid out."""

    def __init__(self, cin: int, mid: int, stride: int):
        super().__init__()
        cout = 4 * mid
        self.norm1, self.conv1 = group_norm(cin), BiTConv(cin, mid, 1)
        self.norm2, self.conv2 = group_norm(mid), BiTConv(mid, mid, 3, stride)
        self.norm3, self.conv3 = group_norm(mid), BiTConv(mid, cout, 1)
        self.downsample = BiTConv(cin, cout, 1, stride) if (cin != cout or stride != 1) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.norm1(x))
        shortcut = self.downsample(a) if self.downsample is not None else x  # projection of the activated input
        y = self.conv1(a)
        y = self.conv2(F.relu(self.norm2(y)))
        y = self.conv3(F.relu(self.norm3(y)))
        return y + shortcut


class BiT(nn.Module):
    """BiT ResNet-v2. `forward(x)` maps a preprocessed (N, C, H, W) float tensor to logits (N, num_classes); any
    H, W works (global average pooling), `cfg.image_size` is what the preprocessing resizes to."""

    def __init__(self, cfg: BiTConfig):
        super().__init__()
        self.cfg = cfg
        k, s, self.root_pool = ROOTS[cfg.root]
        width = cfg.root_width
        self.stem = BiTConv(cfg.in_chans, width, k, s)
        stages, cin = [], width
        for i, units in enumerate(cfg.layers):
            mid = width * 2**i
            stages.append(nn.Sequential(*[PreActBottleneck(cin if u == 0 else 4 * mid, mid,
                                                           (1 if i == 0 else 2) if u == 0 else 1)
                                          for u in range(units)]))
            cin = 4 * mid
        self.stages = nn.ModuleList(stages)
        self.norm = group_norm(cin)  # the pre-head GroupNorm
        self.head = nn.Linear(cin, cfg.num_classes)
        for m in self.modules():
            if isinstance(m, BiTConv):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.head.weight)  # zero head, as the official code and the paper's fine-tuning (3.2)
        nn.init.zeros_(self.head.bias)
        self.grad_checkpointing = False
        self.preprocess = None  # set by vitkit.load: turns PIL images into the tensor forward() expects

    def set_grad_checkpointing(self, enable: bool = True) -> "BiT":
        self.grad_checkpointing = enable
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map after the pre-head GN-ReLU, (N, num_features, h, w)."""
        if x.ndim != 4 or x.shape[1] != self.cfg.in_chans:
            raise ValueError(f"input of shape {tuple(x.shape)} does not fit the model: expected "
                             f"(N, {self.cfg.in_chans}, H, W)")
        x = self.stem(x)
        if self.root_pool:
            x = F.max_pool2d(F.pad(x, (1, 1, 1, 1)), 3, 2)  # zero padding, as the official code pads
        for stage in self.stages:
            for unit in stage:
                if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                    x = checkpoint(unit, x, use_reentrant=False)
                else:
                    x = unit(x)
        return F.relu(self.norm(x))

    def forward_pre_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Global average pooling: the image representation the head sees (and the few-shot probe uses)."""
        return features.mean(dim=(2, 3))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_pre_logits(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # -- bookkeeping -----------------------------------------------------------------------------------------
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_image(self, image_size: Optional[int] = None) -> int:
        """Forward multiply-adds x 2 of the convolutions and the head at `image_size` (default cfg.image_size)."""
        size = image_size or self.cfg.image_size

        def conv(c: BiTConv, size: int) -> tuple[int, int]:
            out = (size + 2 * c.pad - c.kernel_size[0]) // c.stride[0] + 1
            return 2 * out * out * c.in_channels * c.out_channels * c.kernel_size[0] ** 2, out

        total, size = conv(self.stem, size)
        if self.root_pool:
            size = (size + 2 - 3) // 2 + 1
        for stage in self.stages:
            for u in stage:
                f1, _ = conv(u.conv1, size)
                f2, out = conv(u.conv2, size)
                f3, _ = conv(u.conv3, out)
                total += f1 + f2 + f3 + (conv(u.downsample, size)[0] if u.downsample is not None else 0)
                size = out
        return int(total + 2 * self.head.in_features * self.head.out_features)


def create_bit(name: str = "BiT-R50x1", num_classes: Optional[int] = None, image_size: Optional[int] = None,
               **overrides) -> BiT:
    """Build a named BiT variant with fresh weights, e.g. create_bit("BiT-R26x1-S", num_classes=10)."""
    try:
        cfg = bit_config(name, num_classes=num_classes, image_size=image_size, **overrides)
    except TypeError as e:  # an override that is no BiTConfig field
        raise UserError(f"{name}: {e}") from None
    return BiT(cfg)

