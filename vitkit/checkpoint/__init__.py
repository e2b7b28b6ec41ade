"""Checkpoints: the native directory format, readers for other formats, and fine-tuning surgery."""

from .io import load, load_state_dict_strict, read_config, save_checkpoint
from .surgery import adapt_model, drop_pre_logits, reset_head, resize_pos_embed

__all__ = ["load", "save_checkpoint", "read_config", "load_state_dict_strict", "adapt_model", "reset_head",
           "drop_pre_logits", "resize_pos_embed"]
