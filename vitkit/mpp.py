"""Masked patch prediction (MPP): the paper's self-supervised pre-training (section 4.6, appendix B.1.2).

    "We corrupt 50% of patch embeddings by either replacing their embeddings with a learnable [mask] embedding
    (80%), a random other patch embedding (10%) or just keeping them as is (10%). [...] Finally, we predict the
    3-bit, mean color (i.e., 512 colors in total) of every corrupted patch using their respective patch
    representations."

    from vitkit.model import create_model
    from vitkit.mpp import MPPModel
    mpp = MPPModel(create_model("ViT-Mini/8", image_size=64))
    loss = mpp.loss(images_uint8, generator=g)    # (N, 3, 64, 64) raw pixels; normalised inside
    mpp.vit                                      # an ordinary ViT: save and fine-tune it like any other

The pieces, each usable alone:

* `mean_color_target`: the class of every token's pixels. Each channel's mean over the pixels the token covers
  (P x P for a ViT, stem_stride x stem_stride for a hybrid), as a fraction m of full scale, is quantised to 3
  bits, q = min(floor(8 m), 7); the class is q_R * 64 + q_G * 8 + q_B (8 ** C classes: 512 for RGB, 8 for grey).
  It is computed on the raw pixels, before normalisation: uint8 exactly, in integers; float input must be pixels
  in [0, 1] and is rounded to 8 bits first, so both give the same classes, and normalised (negative) input is
  refused rather than silently binned wrong.
* `corrupt`: BERT's recipe on patch embeddings. Exactly round(0.5 L) (half up) of the L patch tokens of every image are
  picked uniformly without replacement (as BERT's create_pretraining_data picks a fixed count per sequence); each
  picked one independently becomes the [mask] embedding (80 %), another patch's embedding (10 %) or stays (10 %).
  "Another random patch embedding" is drawn uniformly from every *other* patch of the whole batch, not only of
  the same image: BERT's random replacement is a word from the whole vocabulary, not from the same sentence, and
  a patch of the same image would mostly share its colour, making the 10 % "random" cases nearly "kept" ones.
  Replacement happens before the position embedding is added, so a moved patch sits at its new position.
* `MPPHead`: the final-LayerNorm'd output token of each corrupted patch -> 8 ** (bits * C) logits, one linear
  layer, zero-initialised like the classification head.
* `MPPModel(vit)`: runs the ViT's own submodules (stem, patch embedding, [class] token, position embedding,
  blocks, final norm) with the corruption between patch embedding and position embedding. Its only parameters
  of its own are the [mask] embedding and the head, so after pre-training `mpp.vit` is saved as an ordinary
  checkpoint (`mpp_state_dict()` holds the rest, for resuming).

Hybrids: the corrupted embedding is the one made from the ResNet features of the token's cell, and the target is
the mean colour of that cell's stem_stride x stem_stride pixels. The ResNet's receptive field overlaps neighbouring
cells, so a hybrid's other tokens still see some of a corrupted cell's pixels; the paper ran MPP on ViT-B/16 only.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .model import ViT

BITS = 3  # per channel: 3 bits -> 8 levels, 512 colours for RGB (appendix B.1.2)
CORRUPT_RATIO = 0.5  # of the patch tokens of each image
# of the corrupted ones: [mask] embedding, another patch's embedding, unchanged (BERT's 80/10/10)
SPLIT = (0.8, 0.1, 0.1)
KEPT, MASKED, RANDOM, UNCHANGED = 0, 1, 2, 3  # Corruption.kind: not corrupted, then the three kinds of corruption


def num_colors(channels: int, bits: int = BITS) -> int:
    return 2 ** (bits * channels)


def _pixels_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 as is; float pixels in [0, 1] rounded to 8 bits; anything else (normalised input) refused."""
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise ValueError(f"mean_color_target: images must be uint8 or float pixels in [0, 1], got {images.dtype}")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"mean_color_target: float images must be raw pixels in [0, 1], before normalisation; got "
                         f"values in [{lo:.3g}, {hi:.3g}]")
    return (images.float() * 255.0).round_().to(torch.uint8)


def mean_color_target(images: torch.Tensor, cell: int, bits: int = BITS) -> torch.Tensor:
    """The MPP class of every cell x cell block, row-major: (N, C, H, W) pixels -> (N, H/cell * W/cell) int64.

    `images` are uint8, or float pixels in [0, 1] (never normalised input, see the module docstring); `cell` is
    the pixels per token side, cfg.stem_stride. Channel c's level is floor(2**bits * sum / (255 * cell**2)),
    capped at 2**bits - 1, computed in integers; the class is the levels read as a base-2**bits number, first
    channel most significant (R * 64 + G * 8 + B).
    """
    if images.ndim != 4:
        raise ValueError(f"mean_color_target: images must be (N, C, H, W), got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    if h % cell or w % cell:
        raise ValueError(f"mean_color_target: image size {h}x{w} is not a multiple of the cell size {cell}")
    px = _pixels_uint8(images).long()
    sums = px.view(n, c, h // cell, cell, w // cell, cell).sum(dim=(3, 5))  # (N, C, h', w')
    levels = 2**bits
    q = torch.div(levels * sums, 255 * cell * cell, rounding_mode="floor").clamp_(max=levels - 1)
    weights = levels ** torch.arange(c - 1, -1, -1, device=q.device)  # R most significant
    return (q * weights.view(1, c, 1, 1)).sum(dim=1).flatten(1)


class Corruption(NamedTuple):
    tokens: torch.Tensor  # (N, L, D) the corrupted patch embeddings
    mask: torch.Tensor  # (N, L) bool: corrupted positions (the ones to predict)
    kind: torch.Tensor  # (N, L) int64: KEPT, MASKED, RANDOM or UNCHANGED
    source: torch.Tensor  # (N, L) int64: flat index n * L + l of the patch whose embedding a RANDOM position got


def corrupt(tokens: torch.Tensor, mask_token: torch.Tensor, generator: Optional[torch.Generator] = None,
            ratio: float = CORRUPT_RATIO, split: Sequence[float] = SPLIT) -> Corruption:
    """Corrupt round(ratio * L) patch embeddings of each image of (N, L, D) `tokens` (see the module docstring).

    `mask_token` is the (D,) or (1, 1, D) learnable [mask] embedding; `split` the fractions of the corrupted ones
    that become [mask], another patch's embedding and stay unchanged. All randomness comes from `generator`
    (drawn on its device, then moved to the tokens'), so a seeded generator gives the same corruption anywhere.
    """
    n, length, d = tokens.shape
    p_mask, p_random, p_keep = split
    if abs(p_mask + p_random + p_keep - 1.0) > 1e-6 or min(split) < 0:
        raise ValueError(f"corrupt: split must be three fractions summing to 1, got {tuple(split)}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"corrupt: ratio must be a fraction in [0, 1], got {ratio}")
    k = math.floor(ratio * length + 0.5)  # half rounds up: 25 of ViT-B/32's 49 patches
    gdev = generator.device if generator is not None else torch.device("cpu")
    order = torch.rand(n, length, generator=generator, device=gdev).argsort(dim=1)
    mask = torch.zeros(n, length, dtype=torch.bool, device=gdev)
    mask.scatter_(1, order[:, :k], True)
    u = torch.rand(n, length, generator=generator, device=gdev)
    kind = torch.where(u < p_mask, MASKED, torch.where(u < p_mask + p_random, RANDOM, UNCHANGED))
    kind = torch.where(mask, kind, KEPT)
    total = n * length
    own = torch.arange(total, device=gdev).view(n, length)
    if total > 1:  # uniform over the other total - 1 patches: draw in [0, total - 1), skip over one's own index
        source = torch.randint(0, total - 1, (n, length), generator=generator, device=gdev)
        source = source + (source >= own)
    else:
        source = own
    mask, kind, source = mask.to(tokens.device), kind.to(tokens.device), source.to(tokens.device)
    out = torch.where((kind == RANDOM)[..., None], tokens.reshape(total, d)[source.flatten()].view(n, length, d),
                      tokens)
    out = torch.where((kind == MASKED)[..., None], mask_token.reshape(1, 1, d).to(tokens.dtype), out)
    return Corruption(out, mask, kind, source)


class MPPHead(nn.Module):
    """Output token (after the ViT's final LayerNorm) -> logits over the 8 ** C mean colours."""

    def __init__(self, dim: int, classes: int):
        super().__init__()
        self.proj = nn.Linear(dim, classes)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(tokens)


class MPPModel(nn.Module):
    """A ViT trained by masked patch prediction. forward(images, generator) -> (logits (M, classes), targets (M,)),
    M the corrupted patches of the batch; `loss` gives their mean cross-entropy.

    `images` are raw pixels, uint8 or float in [0, 1]: the targets are computed from them and the model input is
    normalised here, with `mean` / `std` (those of the checkpoint's Preprocess; default 0.5, as for a fresh
    model). `bits`, `ratio` and `split` are the paper's 3, 0.5 and (0.8, 0.1, 0.1) unless changed.
    """

    def __init__(self, vit: ViT, bits: int = BITS, ratio: float = CORRUPT_RATIO, split: Sequence[float] = SPLIT,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None):
        super().__init__()
        cfg = vit.cfg
        self.vit, self.bits, self.ratio, self.split = vit, bits, ratio, tuple(split)
        c = cfg.in_chans
        mean = mean if mean is not None else (0.5,) * c
        std = std if std is not None else (0.5,) * c
        if len(mean) != c or len(std) != c:
            raise ValueError(f"MPPModel: mean/std need {c} values for a {c}-channel model, got {mean} / {std}")
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1), persistent=False)
        self.mask_token = nn.Parameter(torch.empty(1, 1, cfg.hidden_size).normal_(std=0.02))
        self.head = MPPHead(cfg.hidden_size, num_colors(c, bits))

    @property
    def num_classes(self) -> int:
        return self.head.proj.out_features

    def flops_per_image(self) -> int:
        """Forward FLOPs of one image in MPP training, in ViT.flops_per_image's convention (2 x the multiply-adds
        of the matmuls and convolutions): the ViT's stem, patch embedding and blocks, without its classifier
        (pre-logits and head, which MPP does not run), plus this colour head on the round(ratio x L) corrupted
        tokens of the image. The corruption, the colour targets and the final norm have no matmuls."""
        vit, cfg = self.vit, self.vit.cfg
        corrupted = math.floor(self.ratio * cfg.num_patches + 0.5)  # as corrupt() picks them
        return int(vit.flops_per_image() - vit.classifier_flops()
                   + 2 * corrupted * cfg.hidden_size * self.num_classes)

    def mpp_state_dict(self) -> dict:
        """What MPP adds to the ViT ([mask] embedding, head): saved beside the ViT's checkpoint for resuming."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("vit.")}

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div(255.0) if images.dtype == torch.uint8 else images.float()
        return (x - self.pixel_mean) / self.pixel_std

    def encode(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, Corruption]:
        """Normalised input -> (final-normed patch tokens (N, L, D), the corruption applied): ViT.forward_features
        with the patch embeddings corrupted before the [class] token and position embedding join them."""
        vit, cfg = self.vit, self.vit.cfg
        if x.ndim != 4 or x.shape[1] != cfg.in_chans or x.shape[-2:] != (cfg.image_size, cfg.image_size):
            raise ValueError(f"input of shape {tuple(x.shape)} does not fit the model: expected "
                             f"(N, {cfg.in_chans}, {cfg.image_size}, {cfg.image_size})")
        if vit.stem is not None:
            x = vit.stem(x)
        c = corrupt(vit.patch_embed(x), self.mask_token, generator, self.ratio, self.split)
        z = c.tokens
        if vit.cls_token is not None:
            z = torch.cat([vit.cls_token.expand(z.shape[0], -1, -1).to(z.dtype), z], dim=1)
        pe = vit.position_embedding()
        if pe is not None:
            z = z + pe.to(z.dtype)
        z = vit.pos_drop(z)
        for blk in vit.blocks:
            if vit.grad_checkpointing and self.training and torch.is_grad_enabled():
                z = checkpoint(blk, z, use_reentrant=False)
            else:
                z = blk(z)
        z = vit.norm(z)
        return (z[:, 1:] if vit.cls_token is not None else z), c

    def forward(self, images: torch.Tensor, generator: Optional[torch.Generator] = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        targets = mean_color_target(images, self.vit.cfg.stem_stride, self.bits).to(images.device)
        tokens, c = self.encode(self.normalize(images), generator)
        return self.head(tokens[c.mask]), targets[c.mask]

    def loss(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        logits, targets = self(images, generator)
        return F.cross_entropy(logits.float(), targets)
