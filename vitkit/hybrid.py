"""The ResNet feature extractor of the hybrid models (paper section 3.1, "Hybrid Architecture").

The hybrid feeds the patch embedding with a ResNet feature map instead of raw pixels; with 1x1 patches every
feature-map position becomes one token. The ResNet is the one the official code uses for R50+ViT-B/16 & co.:

* every convolution is weight-standardised (per output channel: w <- (w - mean) / (std + 1e-5), mean and
  population std over the kernel's spatial and input axes) and has no bias;
* GroupNorm with 32 groups (eps 1e-6, flax's default) follows every convolution;
* root: 7x7/2 conv (64 * width channels), GroupNorm, ReLU, 3x3/2 max pool;
* stages of bottleneck units (1x1 -> 3x3 -> 1x1 convs, 4x expansion, stride on the 3x3 conv, a projection
  shortcut where the shape changes, ReLU after the residual sum); stage i has 64 * width * 2**i bottleneck
  channels and stride 1 for the first stage, 2 for the others;
* every convolution and the max pool pad like TensorFlow's "SAME": the total padding is split with the extra
  pixel at the bottom/right (asymmetric for stride 2 on even sizes).

Output stride: 4 (root) * 2**(stages - 1), so (3, 4, 9) -> 16 and (2, 2, 2, 2) or (3, 4, 6, 3) -> 32; with no
stages ("R+ViT-Ti/16") only the root block runs (stride 4).

`cfg.resnet` layout: {"layers": [3, 4, 9], "width": 1}: bottleneck units per stage, and the official
width_factor (root width 64 * width; 0.5 is allowed, as the official code allows it), and optionally
"norm": "timm" for timm's normalisation constants (see NORMS).

Parameter names follow timm's ResNetV2 as the hybrid ViT uses it (stem.conv, stem.norm,
stages.N.blocks.M.{downsample.conv, downsample.norm, conv1..3, norm1..3}),
so the timm key table is a prefix swap (timm: patch_embed.backbone.* <-> vitkit: stem.*).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# The layout of cfg.resnet (check_layout, resnet_stride), its normalisation constants and the named hybrids
# are data, in vitkit/config.py, so that a config knows its stride without building a ResNet.
from .config import (GN_EPS, GN_GROUPS, NORMS, ROOT_STRIDE, WS_EPS, check_layout, hybrid_config,  # noqa: F401
                     hybrid_variants, resnet_stride)


def same_pad(size: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding for one axis: (before, after), the odd pixel after."""
    total = max((math.ceil(size / s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


class StdConv2d(nn.Conv2d):
    """Weight-standardised convolution without bias, TF "SAME" padding."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1):
        super().__init__(cin, cout, k, stride=stride, padding=0, bias=False)
        self.var_eps = None  # None: official (w - mean) / (std + 1e-5); a number: timm's / sqrt(var + eps)

    def standardized_weight(self) -> torch.Tensor:
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        w = w - mean
        var = w.pow(2).mean(dim=(1, 2, 3), keepdim=True)  # population variance, as jnp.std
        if self.var_eps is not None:
            return w / (var + self.var_eps).sqrt()
        return w / (var.sqrt() + WS_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        ph, pw = same_pad(x.shape[-2], k, s), same_pad(x.shape[-1], k, s)
        if any(ph + pw):
            x = F.pad(x, (pw[0], pw[1], ph[0], ph[1]))
        return F.conv2d(x, self.standardized_weight(), None, self.stride)


def group_norm(cout: int) -> nn.GroupNorm:
    return nn.GroupNorm(GN_GROUPS, cout, eps=GN_EPS)


class Root(nn.Module):
    def __init__(self, cin: int, width: int):
        super().__init__()
        self.conv = StdConv2d(cin, width, 7, 2)
        self.norm = group_norm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(self.conv(x)))
        ph, pw = same_pad(x.shape[-2], 3, 2), same_pad(x.shape[-1], 3, 2)
        x = F.pad(x, (pw[0], pw[1], ph[0], ph[1]), value=float("-inf"))  # SAME max pool pads with -inf
        return F.max_pool2d(x, 3, 2)


class Downsample(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv = StdConv2d(cin, cout, 1, stride)
        self.norm = group_norm(cout)

    def forward(self, x):
        return self.norm(self.conv(x))


class Bottleneck(nn.Module):
    """The official ResidualUnit: conv-GN-ReLU x2, conv-GN (scale initialised to zero), add, ReLU."""

    def __init__(self, cin: int, mid: int, stride: int):
        super().__init__()
        cout = mid * 4
        self.downsample = Downsample(cin, cout, stride) if (cin != cout or stride != 1) else None
        self.conv1, self.norm1 = StdConv2d(cin, mid, 1), group_norm(mid)
        self.conv2, self.norm2 = StdConv2d(mid, mid, 3, stride), group_norm(mid)
        self.conv3, self.norm3 = StdConv2d(mid, cout, 1), group_norm(cout)
        nn.init.zeros_(self.norm3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsample(x) if self.downsample is not None else x
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        y = self.norm3(self.conv3(y))
        return F.relu(shortcut + y)


class Stage(nn.Module):
    def __init__(self, cin: int, mid: int, depth: int, stride: int):
        super().__init__()
        self.blocks = nn.Sequential(*[Bottleneck(cin if i == 0 else mid * 4, mid, stride if i == 0 else 1)
                                      for i in range(depth)])

    def forward(self, x):
        return self.blocks(x)


class ResNetStem(nn.Module):
    """ResNet root block + stages; (N, C, H, W) -> (N, out_chans, H / stride, W / stride)."""

    def __init__(self, resnet: dict, in_chans: int = 3):
        super().__init__()
        layers, wf = check_layout(resnet)
        self.layers, width = layers, int(64 * wf)
        self.stem = Root(in_chans, width)
        stages, cin = [], width
        for i, depth in enumerate(layers):
            stages.append(Stage(cin, width * 2**i, depth, 1 if i == 0 else 2))
            cin = width * 2**i * 4
        self.stages = nn.Sequential(*stages)
        self.out_chans = cin
        self.stride = resnet_stride(resnet)
        norm = NORMS[resnet.get("norm", "official")]
        for m in self.modules():
            if isinstance(m, StdConv2d):  # He-normal init for fresh (untrained) hybrids
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                m.var_eps = norm["ws_var_eps"]
            elif isinstance(m, nn.GroupNorm):
                m.eps = norm["gn_eps"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def flops(self, image_size: int) -> int:
        """Forward multiply-adds x 2 of the convolutions at `image_size` pixels."""
        total, size = 0, image_size

        def conv(c: StdConv2d, size: int) -> tuple[int, int]:
            out = math.ceil(size / c.stride[0])
            return 2 * out * out * c.in_channels * c.out_channels * c.kernel_size[0] ** 2, out

        f, size = conv(self.stem.conv, size)
        total += f
        size = math.ceil(size / 2)  # max pool
        for stage in self.stages:
            for b in stage.blocks:
                f1, _ = conv(b.conv1, size)
                f2, out = conv(b.conv2, size)
                f3, _ = conv(b.conv3, out)
                total += f1 + f2 + f3 + (conv(b.downsample.conv, size)[0] if b.downsample is not None else 0)
                size = out
        return total
