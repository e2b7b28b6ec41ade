"""The same architecture built in other libraries, for side-by-side timing: Hugging Face transformers
(ViTForImageClassification with SDPA attention; the `bench` extra) and timm (VisionTransformer) when importable.

Weights are freshly initialised (speed does not depend on their values); shapes, depth, widths, GELU form,
LayerNorm eps, qkv bias, image and patch size and the number of classes match the vitkit model exactly, so the
FLOPs per image are the same and one FLOP count serves both for MFU.
"""

from __future__ import annotations

from typing import Optional

from torch import nn

from ..config import ViTConfig


def _check_plain(cfg: ViTConfig, lib: str) -> None:
    if cfg.resnet is not None or cfg.classifier != "token" or cfg.pos_embed != "learned" or cfg.representation_size:
        raise ValueError(f"the {lib} peer only mirrors the plain ViT (token classifier, learned 1D position "
                         f"embedding, no pre-logits, no ResNet stem)")


def hf_config(cfg: ViTConfig, attn: str = "sdpa"):
    import transformers

    _check_plain(cfg, "Hugging Face")
    act = {"tanh": "gelu_pytorch_tanh", "none": "gelu"}[cfg.gelu_approximate]
    hc = transformers.ViTConfig(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.depth,
                                num_attention_heads=cfg.num_heads, intermediate_size=cfg.mlp_dim,
                                image_size=cfg.image_size, patch_size=cfg.patch_size, num_channels=cfg.in_chans,
                                num_labels=cfg.num_classes, hidden_act=act, layer_norm_eps=cfg.layer_norm_eps,
                                qkv_bias=cfg.qkv_bias, hidden_dropout_prob=cfg.dropout,
                                attention_probs_dropout_prob=cfg.attention_dropout, attn_implementation=attn)
    hc._attn_implementation = attn  # older releases ignore the constructor argument
    return hc


def hf_model(cfg: ViTConfig, attn: str = "sdpa") -> nn.Module:
    """transformers.ViTForImageClassification of the same shapes, SDPA attention. Forward takes pixel_values
    positionally and returns an output object with .logits."""
    import transformers

    m = transformers.ViTForImageClassification(hf_config(cfg, attn))
    return m


def timm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("timm") is not None


def timm_model(cfg: ViTConfig) -> Optional[nn.Module]:
    """timm's VisionTransformer of the same shapes (fused attention on), or None when timm is not installed."""
    if not timm_available():
        return None
    from functools import partial

    import torch
    from timm.models.vision_transformer import VisionTransformer

    _check_plain(cfg, "timm")
    return VisionTransformer(img_size=cfg.image_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans,
                             num_classes=cfg.num_classes, embed_dim=cfg.hidden_size, depth=cfg.depth,
                             num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_dim / cfg.hidden_size,
                             qkv_bias=cfg.qkv_bias, class_token=True, global_pool="token",
                             norm_layer=partial(torch.nn.LayerNorm, eps=cfg.layer_norm_eps),
                             act_layer=partial(torch.nn.GELU, approximate=cfg.gelu_approximate))


PEERS = {"hf": hf_model, "timm": timm_model}
