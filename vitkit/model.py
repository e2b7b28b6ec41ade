"""The Vision Transformer of Dosovitskiy et al. 2021 (arXiv 2010.11929, section 3.1, Eq. 1-4), in one file.

    z_0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos          (Eq. 1)  PatchEmbed, cls_token, pos_embed
    z'_l = MSA(LN(z_{l-1})) + z_{l-1}                       (Eq. 2)  Block: norm1, attn
    z_l = MLP(LN(z'_l)) + z'_l                              (Eq. 3)  Block: norm2, mlp
    y = LN(z_L^0)                                           (Eq. 4)  norm, then pooling and head

Numerics follow the official implementation (google-research/vision_transformer, vit_jax/models_vit.py):
LayerNorm eps 1e-6 (flax default), tanh-approximated GELU (jax.nn.gelu's default), attention logits scaled by
1/sqrt(head_dim), the final LayerNorm applied to all tokens *before* global average pooling, and the same
initialisers (xavier-uniform q/k/v/out and MLP kernels, MLP biases N(0, 1e-6), lecun-normal patch embedding,
position embeddings N(0, 0.02), zero class token and zero head). Both choices that differ elsewhere (HF's eps
1e-12 and exact GELU) are config fields, so a converted model stays faithful to its source.

Parameter names match timm's (patch_embed.proj, cls_token, pos_embed, blocks.N.attn.qkv, norm, head), which
makes timm interop a near-identity key table.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import perf  # perf.Dropout: nn.Dropout with a faster CPU mask
from .config import ViTConfig, variant_config
from .resnet import BiT, BiTConfig, bit_config, create_bit, is_bit_name


def lecun_normal_(t: torch.Tensor, fan_in: int) -> torch.Tensor:
    """jax.nn.initializers.lecun_normal: truncated normal (+-2 std) with variance 1/fan_in after truncation."""
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    return nn.init.trunc_normal_(t, std=std, a=-2 * std, b=2 * std)


def xavier_uniform_(t: torch.Tensor, fan_in: int, fan_out: int) -> torch.Tensor:
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return nn.init.uniform_(t, -bound, bound)


class PatchEmbed(nn.Module):
    """Split the image into P x P patches and project each linearly: a stride-P convolution (Eq. 1, E)."""

    def __init__(self, patch_size: int, in_chans: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        lecun_normal_(self.proj.weight, in_chans * patch_size**2)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, h*w, D), row-major patches
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention. `fused` True uses PyTorch's scaled_dot_product_attention; False the explicit path,
    which computes softmax(q k^T / sqrt(d)) itself and can return those weights (the paper's attention analyses
    need them); "auto" (the default) is SDPA on GPU and explicit on CPU, where it is the faster one (PyTorch's CPU
    flash-attention kernel is slower than the plain matmuls; measurements: benchmarks/README.md, "ViT-B/16 ... bf16
    inference"). Both paths agree within 1e-5 in fp32 (tests/test_model.py)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.fused: Union[bool, str] = "auto"
        for w in self.qkv.weight.chunk(3):  # q, k, v are separate (D, D) kernels in the official code
            xavier_uniform_(w.data, dim, dim)
        xavier_uniform_(self.proj.weight.data, dim, dim)
        if qkv_bias:
            nn.init.zeros_(self.qkv.bias)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, return_attn: bool = False):
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        drop = self.attn_drop if self.training else 0.0
        if not return_attn and (self.fused is True or (self.fused == "auto" and x.device.type != "cpu")):
            out, attn = F.scaled_dot_product_attention(q, k, v, dropout_p=drop), None
        else:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, heads, T, T)
            out = perf.dropout(attn, drop, self.training) @ v
        out = self.proj(out.transpose(1, 2).reshape(B, T, D))
        return (out, attn) if return_attn else out


class MLP(nn.Module):
    """Two layers with a GELU non-linearity (section 3.1); dropout after each, as in the official MlpBlock."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0, approximate: str = "tanh"):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.approximate, self.drop = approximate, perf.Dropout(dropout)
        for fc in (self.fc1, self.fc2):
            xavier_uniform_(fc.weight.data, fc.in_features, fc.out_features)
            nn.init.normal_(fc.bias, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x), approximate=self.approximate))))


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: in training, zero a residual branch for a random fraction p of the examples and scale
    the others by 1 / (1 - p), so its expected value is unchanged; the identity in evaluation."""
    if not training or p == 0.0:
        return x
    keep = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device).bernoulli_(1.0 - p)
    return x * (keep / (1.0 - p)).to(x.dtype)


class Block(nn.Module):
    """Pre-LN Transformer encoder block: Eq. 2 and Eq. 3 (and stochastic depth on both branches, off by default:
    not in the paper, it is how its follow-up, AugReg, regularises ViTs)."""

    def __init__(self, cfg: ViTConfig, drop_path_rate: float = 0.0):
        super().__init__()
        self.drop_path_rate = drop_path_rate
        d = cfg.hidden_size
        self.norm1 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.attn = Attention(d, cfg.num_heads, cfg.qkv_bias, cfg.attention_dropout)
        self.norm2 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.mlp = MLP(d, cfg.mlp_dim, cfg.dropout, cfg.gelu_approximate)
        self.drop = perf.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, return_attn: bool = False):
        a = self.attn(self.norm1(x), return_attn=return_attn)
        a, attn = a if return_attn else (a, None)
        x = x + drop_path(self.drop(a), self.drop_path_rate, self.training)
        x = x + drop_path(self.mlp(self.norm2(x)), self.drop_path_rate, self.training)
        return (x, attn) if return_attn else x


def sincos_2d(grid: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2D sin-cos position embedding (1, grid*grid, dim): a quarter of the channels each for sin/cos of
    the row and column index (App. D.4 "fixed" variant; the form big_vision's posemb_sincos_2d uses)."""
    y, x = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                          indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4 - 1 or 1))
    y, x = y.flatten()[:, None] * omega, x.flatten()[:, None] * omega
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)[None].float()


class ViT(nn.Module):
    """Vision Transformer. `forward(x)` maps a preprocessed (N, C, H, W) float tensor to logits (N, num_classes)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        d, g = cfg.hidden_size, cfg.grid_size
        if cfg.resnet is not None:
            from .hybrid import ResNetStem  # R50+ViT hybrid: ResNet features, then patch embedding

            self.stem = ResNetStem(cfg.resnet, cfg.in_chans)
            embed_in = self.stem.out_chans
        else:
            self.stem, embed_in = None, cfg.in_chans
        self.patch_embed = PatchEmbed(cfg.patch_size, embed_in, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if cfg.classifier == "token" else None
        self.pos_embed = self.pos_embed_row = self.pos_embed_col = None
        if cfg.pos_embed == "learned":  # 1D: one vector per token, including the [class] token
            self.pos_embed = nn.Parameter(torch.empty(1, cfg.num_tokens, d).normal_(std=0.02))
        elif cfg.pos_embed == "learned2d":  # App. D.4: row and column embeddings of D/2 each, concatenated
            self.pos_embed_row = nn.Parameter(torch.empty(1, g, d // 2).normal_(std=0.02))
            self.pos_embed_col = nn.Parameter(torch.empty(1, g, d // 2).normal_(std=0.02))
        elif cfg.pos_embed == "sincos2d":
            self.register_buffer("pos_embed_fixed", sincos_2d(g, d), persistent=False)
        self.pos_drop = perf.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, cfg.drop_path * i / max(cfg.depth - 1, 1)) for i in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)  # the official "encoder_norm"
        self.pre_logits = None
        if cfg.representation_size:  # pre-training head: one hidden layer with tanh
            self.pre_logits = nn.Linear(d, cfg.representation_size)
            lecun_normal_(self.pre_logits.weight, d)
            nn.init.zeros_(self.pre_logits.bias)
        self.head = nn.Linear(cfg.representation_size or d, cfg.num_classes)
        nn.init.zeros_(self.head.weight)  # zero-initialised head (section 3.2, official kernel_init=zeros)
        nn.init.zeros_(self.head.bias)
        self.grad_checkpointing = False

    # -- switches -------------------------------------------------------------------------------------------
    def set_fused_attn(self, fused: Union[bool, str] = True) -> "ViT":
        """True or "sdpa": SDPA; False or "explicit": explicit softmax attention; "auto": SDPA on GPU, explicit on
        CPU (the default). The strings are the values of the --attention flags of `vitkit train` and `vitkit bench`."""
        fused = {"sdpa": True, "explicit": False}.get(fused, fused)
        if fused not in (True, False, "auto"):
            raise ValueError(f"fused must be True, False, 'auto', 'sdpa' or 'explicit', got {fused!r}")
        for b in self.blocks:
            b.attn.fused = fused
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> "ViT":
        self.grad_checkpointing = enable
        return self

    # -- Eq. 1 ----------------------------------------------------------------------------------------------
    def position_embedding(self) -> Optional[torch.Tensor]:
        """The (1, T, D) tensor added to the tokens, or None. For 2D/fixed kinds the [class] token gets none."""
        cfg = self.cfg
        if cfg.pos_embed == "learned":
            return self.pos_embed
        if cfg.pos_embed == "none":
            return None
        if cfg.pos_embed == "learned2d":
            g = cfg.grid_size
            grid = torch.cat([self.pos_embed_row[:, :, None].expand(-1, g, g, -1),
                              self.pos_embed_col[:, None, :].expand(-1, g, g, -1)], dim=-1)
            pe = grid.reshape(1, g * g, -1)
        else:
            pe = self.pos_embed_fixed
        return F.pad(pe, (0, 0, 1, 0)) if self.cls_token is not None else pe

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels -> z_0 (Eq. 1): patch tokens, [class] token prepended, position embedding added."""
        cfg = self.cfg
        if x.ndim != 4 or x.shape[1] != cfg.in_chans or x.shape[-2:] != (cfg.image_size, cfg.image_size):
            raise ValueError(f"input of shape {tuple(x.shape)} does not fit the model: expected "
                             f"(N, {cfg.in_chans}, {cfg.image_size}, {cfg.image_size})")
        if self.stem is not None:
            x = self.stem(x)
        x = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        pe = self.position_embedding()
        if pe is not None:
            x = x + pe.to(x.dtype)
        return self.pos_drop(x)

    # -- Eq. 2-4 --------------------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """All output tokens after the final LayerNorm, (N, T, D)."""
        x = self.embed(x)
        for blk in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return self.norm(x)

    def forward_intermediates(self, x: torch.Tensor, layers: Optional[Sequence[int]] = None,
                              return_attn: bool = False) -> dict:
        """Run the encoder and keep what the analyses need, without hooks.

        Returns {"tokens": [per requested block output (N, T, D)], "attn": [per requested block (N, heads, T, T)]
        (only with return_attn), "layers": the block indices, "features": final normed tokens, "logits"}.
        `layers` are block indices (negative counts from the end); None means every block.
        """
        depth = len(self.blocks)
        wanted = sorted({i % depth for i in layers}) if layers is not None else list(range(depth))
        out = {"tokens": [], "attn": [], "layers": wanted}
        x = self.embed(x)
        for i, blk in enumerate(self.blocks):
            if return_attn and i in wanted:
                x, a = blk(x, return_attn=True)
                out["attn"].append(a)
            else:
                x = blk(x)
            if i in wanted:
                out["tokens"].append(x)
        out["features"] = self.norm(x)
        out["logits"] = self.forward_head(out["features"])
        if not return_attn:
            del out["attn"]
        return out

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """[class] token output, or the mean over patch tokens (GAP, App. D.3)."""
        return tokens[:, 0] if self.cfg.classifier == "token" else tokens.mean(dim=1)

    def forward_pre_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """The image representation the head sees (and the few-shot probe uses)."""
        x = self.pool(tokens)
        return torch.tanh(self.pre_logits(x)) if self.pre_logits is not None else x

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_pre_logits(tokens))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # -- bookkeeping -----------------------------------------------------------------------------------------
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_image(self) -> int:
        """Forward multiply-adds x 2 of the matmuls and convolutions (what MFU is measured against)."""
        cfg, t, d = self.cfg, self.cfg.num_tokens, self.cfg.hidden_size
        per_block = 2 * t * (4 * d * d + 2 * d * cfg.mlp_dim) + 2 * 2 * t * t * d  # projections + q@k, a@v
        embed_in = self.patch_embed.proj.in_channels * cfg.patch_size**2
        total = cfg.depth * per_block + 2 * cfg.num_patches * embed_in * d + self.classifier_flops()
        if self.stem is not None:
            total += self.stem.flops(cfg.image_size)
        return int(total)

    def classifier_flops(self) -> int:
        """The part of flops_per_image spent in the pre-logits layer and the head (not run by masked patch
        prediction, which reads the patch tokens; see vitkit/mpp.py)."""
        cfg = self.cfg
        return int(2 * (cfg.representation_size or 0) * cfg.hidden_size
                   + 2 * (cfg.representation_size or cfg.hidden_size) * cfg.num_classes)


def create_model(name: str = "ViT-B/16", num_classes: Optional[int] = None, image_size: Optional[int] = None,
                 **overrides):
    """Build a named variant with fresh weights, e.g. create_model("ViT-S/16", num_classes=10, image_size=224).

    Any ViTConfig field can be overridden (classifier="gap", pos_embed="learned2d", in_chans=1, ...). BiT names
    ("BiT-R50x1", "BiT-R26x1-S", ...) build the paper's ResNet baseline (vitkit/resnet.py), with BiTConfig fields.
    """
    if is_bit_name(name):
        return create_bit(name, num_classes=num_classes, image_size=image_size, **overrides)
    return ViT(variant_config(name, num_classes=num_classes, image_size=image_size, **overrides))


def model_config(name: str, **overrides):
    """The config (ViTConfig or BiTConfig) of a named variant, by its family."""
    return bit_config(name, **overrides) if is_bit_name(name) else variant_config(name, **overrides)


def config_from_dict(d: dict):
    """A checkpoint's saved model config: a BiTConfig where it says "family": "bit", else a ViTConfig."""
    return BiTConfig.from_dict(d) if d.get("family") == "bit" else ViTConfig.from_dict(d)


def model_from_config(cfg):
    """A fresh model of the config's family (ViT for a ViTConfig, BiT for a BiTConfig)."""
    return BiT(cfg) if isinstance(cfg, BiTConfig) else ViT(cfg)
