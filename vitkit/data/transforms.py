"""Batched data augmentation for training ViT from scratch, on uint8 tensors (B, C, H, W) in the main process.

ViT has few image priors, so trained from scratch on small data it needs strong augmentation and regularisation
("How to train your ViT", Steiner et al. 2021; DeiT): random crops, flips, RandAugment, mixup/cutmix and label
smoothing. Everything here works on whole batches with a handful of tensor ops, not image by image in PIL:
per-image Python loops would eat the two CPU cores the model needs. Every random draw comes from the
torch.Generator passed in (the training loop checkpoints it), so a resumed run augments exactly as an unbroken
one would.

Pipeline (`BatchAugment.__call__`): crop (pad-and-crop for 28-32 px data, random-resized-crop for photos, or just
resize) -> horizontal flip -> RandAugment -> random erasing -> mixup or cutmix. Images stay uint8 throughout;
targets come back as soft float (B, K) rows that sum to 1 (label smoothing and mixing both live in the targets).

RandAugment is implemented here rather than taken from kornia: see `RandAugment` for the op set and why.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .datasets import resize_batch

CROPS = ("pad", "rrc", "none")


class BatchAugment:
    """Augment a uint8 batch of any size to (B, C, image_size, image_size) and make soft targets (B, K).

    crop: "pad" zero-pads by image_size/8 (4 px at 32) and crops back at a random offset, the CIFAR recipe;
    "rrc" is Inception-style random-resized-crop (area 8-100 %, aspect 3/4-4/3), for photos; "none" only resizes.
    flip: random horizontal flips (keep False for digits). randaugment: (num_ops, magnitude 0-10), e.g. (2, 9).
    erase: probability of random erasing per image (Zhong et al. 2017; DeiT uses 0.25): one box of random noise.
    mixup / cutmix: Beta(alpha, alpha) strengths; with both > 0 each batch uses one of the two at random.
    label_smoothing: eps spread uniformly over the K classes (the true class keeps 1 - eps + eps/K).
    seed: seeds the internal generator used when __call__ is given none.
    """

    def __init__(self, image_size: int, num_classes: int, crop: str = "pad", flip: bool = True,
                 randaugment: Optional[tuple[int, int]] = None, mixup: float = 0.0, cutmix: float = 0.0,
                 label_smoothing: float = 0.0, seed: int = 0, pad: Optional[int] = None,
                 rrc_scale: tuple[float, float] = (0.08, 1.0), erase: float = 0.0):
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if mixup < 0 or cutmix < 0:
            raise ValueError(f"mixup and cutmix must be >= 0, got {mixup}, {cutmix}")
        if not 0.0 <= erase <= 1.0:
            raise ValueError(f"random erasing probability (--random-erase) must be in [0, 1], got {erase}")
        self.image_size, self.num_classes, self.crop, self.flip = image_size, num_classes, crop, flip
        self.pad = max(1, round(image_size / 8)) if pad is None else pad
        self.rrc_scale = rrc_scale
        self.randaugment = RandAugment(*randaugment) if randaugment else None
        self.mixup, self.cutmix, self.label_smoothing, self.erase = mixup, cutmix, label_smoothing, erase
        self.generator = torch.Generator().manual_seed(seed)

    def __repr__(self) -> str:
        return (f"BatchAugment(image_size={self.image_size}, crop={self.crop!r}, flip={self.flip}, "
                f"randaugment={self.randaugment}, erase={self.erase}, mixup={self.mixup}, cutmix={self.cutmix}, "
                f"label_smoothing={self.label_smoothing})")

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, generator: Optional[torch.Generator] = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"BatchAugment wants uint8 (B, C, H, W), got {images.dtype} {tuple(images.shape)}")
        g = self.generator if generator is None else generator
        if self.crop == "pad":
            x = random_pad_crop(resize_batch(images, self.image_size), self.pad, g)
        elif self.crop == "rrc":
            x = random_resized_crop(images, self.image_size, g, scale=self.rrc_scale)
        else:
            x = resize_batch(images, self.image_size)
        if self.flip:
            x = random_flip(x, g)
        if self.randaugment is not None:
            x = self.randaugment(x, g)
        if self.erase > 0:
            x = random_erase(x, g, self.erase)
        targets = smooth_one_hot(labels, self.num_classes, self.label_smoothing)
        use_mixup, use_cutmix = self.mixup > 0, self.cutmix > 0
        if use_mixup and use_cutmix:  # one draw per batch decides which
            use_cutmix = bool(torch.rand((), generator=g) < 0.5)
            use_mixup = not use_cutmix
        if use_cutmix:
            x, targets = cutmix(x, targets, self.cutmix, g)
        elif use_mixup:
            x, targets = mixup(x, targets, self.mixup, g)
        return x, targets


# --------------------------------------------------------------------------------------------- targets and loss


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """int labels (B,) -> float (B, K): 1 - eps + eps/K on the label, eps/K elsewhere (rows sum to 1)."""
    off = smoothing / num_classes
    out = torch.full((len(labels), num_classes), off, dtype=torch.float32)
    return out.scatter_(1, labels.long().view(-1, 1), 1.0 - smoothing + off)


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_k t_k log softmax(logits)_k; int targets fall back to plain cross-entropy."""
    if not targets.is_floating_point():
        return F.cross_entropy(logits, targets)
    return -(targets.to(logits.dtype) * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def _beta(alpha: float, g: torch.Generator) -> float:
    """Beta(alpha, alpha), drawn reproducibly from the torch generator (torch's Beta takes no generator)."""
    seed = int(torch.randint(0, 2**62, (), generator=g))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def mixup(x: torch.Tensor, targets: torch.Tensor, alpha: float, g: torch.Generator):
    """Blend each image with its partner in the reversed batch (timm's pairing): lam*x + (1-lam)*x_rev."""
    lam = _beta(alpha, g)
    mixed = x.float().mul_(lam).add_(x.flip(0).float().mul_(1 - lam)).round_().clamp_(0, 255).to(torch.uint8)
    return mixed, lam * targets + (1 - lam) * targets.flip(0)


def cutmix(x: torch.Tensor, targets: torch.Tensor, alpha: float, g: torch.Generator):
    """Paste one random box (area 1-lam) from the reversed batch; targets weighted by the box's true area."""
    lam = _beta(alpha, g)
    h, w = x.shape[-2:]
    ch, cw = round(h * math.sqrt(1 - lam)), round(w * math.sqrt(1 - lam))
    cy, cx = (int(v) for v in torch.randint(0, 1 << 30, (2,), generator=g))
    cy, cx = cy % h, cx % w
    y0, y1, x0, x1 = max(cy - ch // 2, 0), min(cy + ch - ch // 2, h), max(cx - cw // 2, 0), min(cx + cw - cw // 2, w)
    out = x.clone()
    out[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
    lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    return out, lam * targets + (1 - lam) * targets.flip(0)


# --------------------------------------------------------------------------------------------- crops and flips


def random_pad_crop(x: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    """Zero-pad by `pad` on every side and take a crop of the original size at a random offset per image."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (B, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (B, 1, W)
    bi = torch.arange(b)[:, None, None]
    return padded.permute(0, 2, 3, 1)[bi, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_flip(x: torch.Tensor, g: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability p."""
    flip = torch.rand(len(x), generator=g) < p
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def random_erase(x: torch.Tensor, g: torch.Generator, p: float = 0.25, scale=(0.02, 1 / 3),
                 ratio=(0.3, 1 / 0.3)) -> torch.Tensor:
    """Random erasing (Zhong et al. 2017, arXiv 1708.04896), as timm's RandomErasing in "pixel" mode does it.

    With probability p per image, one box of area fraction U(scale) and aspect h/w log-uniform in `ratio` is
    filled with uniform random bytes (independent per pixel and channel). timm redraws a box that does not fit up
    to 10 times; batched, an oversized side is clipped to the image instead, so a few boxes come out smaller.
    """
    b, c, h, w = x.shape
    area = torch.empty(b).uniform_(*scale, generator=g) * (h * w)
    log_r = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g)
    bh = (area * log_r.exp()).sqrt().round().clamp_(1, h).long()
    bw = (area / log_r.exp()).sqrt().round().clamp_(1, w).long()
    y0 = (torch.rand(b, generator=g) * (h - bh + 1)).long()
    x0 = (torch.rand(b, generator=g) * (w - bw + 1)).long()
    on = torch.rand(b, generator=g) < p
    noise = torch.randint(0, 256, x.shape, generator=g, dtype=torch.uint8)
    rows, cols = torch.arange(h), torch.arange(w)
    in_rows = (rows >= y0[:, None]) & (rows < (y0 + bh)[:, None])  # (B, H)
    in_cols = (cols >= x0[:, None]) & (cols < (x0 + bw)[:, None])  # (B, W)
    box = (in_rows[:, :, None] & in_cols[:, None, :] & on[:, None, None])[:, None]  # (B, 1, H, W)
    return torch.where(box, noise, x)


def random_resized_crop(x: torch.Tensor, size: int, g: torch.Generator, scale=(0.08, 1.0),
                        ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """Inception crop per image: area fraction in `scale`, aspect in `ratio` (log-uniform), resized to size.

    Up to 10 draws per image as in torchvision; images with no valid draw get the central crop of the whole
    image. One batched bilinear grid_sample does all crops and resizes together."""
    b, _, h, w = x.shape
    tries = 10
    area = torch.empty(b, tries).uniform_(*scale, generator=g) * (h * w)
    logr = torch.empty(b, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g)
    aspect = logr.exp()
    cw, ch = (area * aspect).sqrt().round(), (area / aspect).sqrt().round()
    ok = (cw >= 1) & (cw <= w) & (ch >= 1) & (ch <= h)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((b,), -1))
    u = torch.rand(b, 2, generator=g)
    pick = first.clamp(min=0)
    cw = torch.where(first >= 0, cw.gather(1, pick[:, None])[:, 0], torch.full((b,), float(min(h, w))))
    ch = torch.where(first >= 0, ch.gather(1, pick[:, None])[:, 0], torch.full((b,), float(min(h, w))))
    x0 = torch.where(first >= 0, (u[:, 0] * (w - cw + 1)).floor(), ((w - cw) / 2).floor())
    y0 = torch.where(first >= 0, (u[:, 1] * (h - ch + 1)).floor(), ((h - ch) / 2).floor())
    # crop box -> affine_grid theta in normalised coords (align_corners=False)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = cw / w
    theta[:, 1, 1] = ch / h
    theta[:, 0, 2] = (2 * x0 + cw) / w - 1
    theta[:, 1, 2] = (2 * y0 + ch) / h - 1
    grid = F.affine_grid(theta, (b, x.shape[1], size, size), align_corners=False)
    src = x.float()
    if max(h, w) > 2 * size:  # a crop far larger than the output would alias: shrink the source first
        src = F.interpolate(src, scale_factor=2 * size / max(h, w), mode="bilinear", antialias=True,
                            align_corners=False)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


# ------------------------------------------------------------------------------------------------ RandAugment


class RandAugment:
    """RandAugment (Cubuk et al. 2020) on uint8 batches: each image gets `num_ops` ops drawn uniformly from
    OPS, each at the fixed `magnitude` with a random sign for the signed ops. Magnitude is on the 0-10 scale of
    the TF/big_vision code and timm ("rand-m9" = RandAugment(2, 9) here; AugReg's "randaug(2, 15)" goes past
    10); torchvision's magnitude 9 of its 31 bins is 3 here.

    The 14 ops are torchvision's set: Identity, ShearX/Y, TranslateX/Y, Rotate, Brightness, Color, Contrast,
    Sharpness, Posterize, Solarize, AutoContrast, Equalize. Geometric ops use nearest sampling and fill with 128
    (the TF implementation's grey); Color is a no-op on 1-channel images. An op is run once per slot on the
    subset of images that drew it, so the cost is ~num_ops full-batch passes whatever the batch size.

    Why not kornia (0.9.0): its RandAugment draws one policy per *batch* (every image in a batch gets the same
    ops), draws from torch's global RNG rather than a passed generator (no exact resume), works on float only,
    crashes on 1-channel images when it draws Saturation, and would add kornia and kornia-rs as dependencies.
    Speed decides neither way (faster on small images, slower on large ones: the measurements are in
    vitkit/data/README.md).
    """

    OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
           "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")
    FILL = 128

    def __init__(self, num_ops: int = 2, magnitude: float = 9, ops: Optional[tuple] = None):
        if num_ops < 0 or magnitude < 0:
            raise ValueError(f"randaugment needs num_ops >= 0 and magnitude >= 0, got {num_ops}, {magnitude}")
        self.num_ops, self.magnitude = int(num_ops), float(magnitude)
        self.ops = tuple(ops) if ops else self.OPS
        unknown = set(self.ops) - set(self.OPS)
        if unknown:
            raise ValueError(f"unknown RandAugment ops {sorted(unknown)}; known: {self.OPS}")

    def __repr__(self) -> str:
        return f"RandAugment({self.num_ops}, {self.magnitude:g})"

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b = len(x)
        for _ in range(self.num_ops):
            choice = torch.randint(0, len(self.ops), (b,), generator=g)
            sign = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
            x = x.clone()
            for k, op in enumerate(self.ops):
                sel = (choice == k).nonzero()[:, 0]
                if len(sel) and op != "Identity":
                    x[sel] = apply_op(op, x[sel], self.magnitude, sign[sel])
        return x


def apply_op(op: str, x: torch.Tensor, magnitude: float, sign: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One RandAugment op on a uint8 batch; `sign` (B,) of +-1 for the signed ops (default +1)."""
    m = magnitude / 10.0
    s = torch.ones(len(x)) if sign is None else sign
    if op == "Identity":
        return x
    if op in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"):
        theta = torch.zeros(len(x), 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        if op == "ShearX":
            theta[:, 0, 1] = 0.3 * m * s
        elif op == "ShearY":
            theta[:, 1, 0] = 0.3 * m * s
        elif op == "TranslateX":
            theta[:, 0, 2] = 2 * 0.45 * m * s  # 0.45 of the width (TF: 100 px of 224); normalised coords span 2
        elif op == "TranslateY":
            theta[:, 1, 2] = 2 * 0.45 * m * s
        else:
            a = torch.deg2rad(30.0 * m * s)
            theta[:, 0, 0], theta[:, 0, 1] = a.cos(), -a.sin()
            theta[:, 1, 0], theta[:, 1, 1] = a.sin(), a.cos()
        return affine(x, theta)
    factor = (1 + 0.9 * m * s).clamp(min=0.0)  # enhance factor of the blend ops; >= 0 even past magnitude 10
    if op == "Brightness":
        return blend(torch.zeros(()), x, factor)
    if op == "Color":
        return x if x.shape[1] == 1 else blend(grayscale(x), x, factor)
    if op == "Contrast":
        mean = grayscale(x).float().mean((1, 2, 3), keepdim=True)
        return blend(mean, x, factor)
    if op == "Sharpness":
        return blend(smooth(x), x, factor)
    if op == "Posterize":
        bits = 8 - int(min(m, 1.0) * 4)  # 8 (no change) .. 4 bits, as torchvision
        return x & (0xFF << (8 - bits) & 0xFF)
    if op == "Solarize":
        threshold = round(255 * (1 - min(m, 1.0)))  # invert pixels >= threshold; 255 = almost nothing
        return torch.where(x >= threshold, 255 - x, x)
    if op == "AutoContrast":
        return autocontrast(x)
    if op == "Equalize":
        return equalize(x)
    raise ValueError(f"unknown op {op!r}")


def blend(a: torch.Tensor, b: torch.Tensor, factor) -> torch.Tensor:
    """a + factor * (b - a), per image factor (B,), clamped to uint8: PIL ImageEnhance's formula. `a` may be
    anything that broadcasts against b (a scalar, a per-image mean, a 1-channel grey image)."""
    f = torch.as_tensor(factor, dtype=torch.float32).view(-1, 1, 1, 1)
    a = a.float()
    out = b.float().sub_(a).mul_(f).add_(a)  # in place: one float copy of the batch, not five
    return out.round_().clamp_(0, 255).to(torch.uint8)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) uint8 -> (B, 1, H, W) uint8 luma (ITU-R 601, as PIL's convert('L'))."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (x.float() * w).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)


def smooth(x: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter (3x3, centre weight 5, total 13) on the interior; the 1-px border is kept."""
    c = x.shape[1]
    k = torch.ones(3, 3)
    k[1, 1] = 5.0
    k = (k / 13.0).expand(c, 1, 3, 3)
    out = x.clone()
    out[..., 1:-1, 1:-1] = F.conv2d(x.float(), k, groups=c).round_().clamp_(0, 255).to(torch.uint8)
    return out


def affine(x: torch.Tensor, theta: torch.Tensor, fill: int = RandAugment.FILL) -> torch.Tensor:
    """Warp by theta (B, 2, 3) in normalised output->input coords (affine_grid's convention, align_corners=False),
    nearest sampling, outside filled with `fill`. Nearest sampling is a gather, so the pixels stay uint8: only
    the (B, H, W) source-index map is computed in float, never a float copy of the images."""
    b, c, h, w = x.shape
    grid = F.affine_grid(theta, (b, 1, h, w), align_corners=False)
    ix = ((grid[..., 0] + 1) * w - 1).div_(2).round_()  # round half to even, as grid_sample's nearest
    iy = ((grid[..., 1] + 1) * h - 1).div_(2).round_()
    inside = ((ix >= 0) & (ix <= w - 1) & (iy >= 0) & (iy <= h - 1)).unsqueeze(1)
    src = (iy.clamp_(0, h - 1) * w + ix.clamp_(0, w - 1)).long().view(b, 1, h * w).expand(b, c, h * w)
    out = x.reshape(b, c, h * w).gather(2, src).view(b, c, h, w)
    return out.masked_fill_(~inside.expand_as(out), fill)


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """Stretch each image's channels to the full 0..255 range (constant channels are left alone)."""
    xf = x.float()
    lo = xf.amin((2, 3), keepdim=True)
    hi = xf.amax((2, 3), keepdim=True)
    scale = torch.where(hi > lo, 255.0 / (hi - lo).clamp(min=1), torch.ones_like(hi))
    lo = torch.where(hi > lo, lo, torch.zeros_like(lo))
    return ((xf - lo) * scale).round_().clamp_(0, 255).to(torch.uint8)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation per image and channel, PIL's ImageOps.equalize algorithm, batched with one bincount."""
    b, c, h, w = x.shape
    flat = x.reshape(b * c, h * w).long()
    rows = torch.arange(b * c).mul_(256).view(-1, 1)
    hist = torch.bincount((flat + rows).view(-1), minlength=b * c * 256).view(b * c, 256)
    # PIL: step = (count of all pixels but those of the last non-empty bin) // 255; step 0 -> unchanged
    last_bin = 255 - hist.flip(1).ne(0).long().argmax(1)
    last = hist.gather(1, last_bin[:, None])[:, 0]
    step = (h * w - last) // 255
    cum = hist.cumsum(1) - hist  # pixels strictly below each value
    lut = ((cum + (step // 2)[:, None]) // step.clamp(min=1)[:, None]).clamp_(0, 255)
    lut = torch.where((step > 0)[:, None], lut, torch.arange(256).expand(b * c, 256))
    return lut.gather(1, flat).to(torch.uint8).reshape(b, c, h, w)
