"""The preprocessing a model expects, stored in its checkpoint (config.json "preprocess") so that eval, predict
and analyze never need it repeated.

Two entry points share one definition of normalisation:
  * `Preprocess.__call__(images)`: PIL images (any mode, any size) -> float tensor (N, C, S, S), for predict.
  * `Preprocess.normalize(x)`: a batch of uint8 tensors (N, C, S, S) -> the same float tensor, for the data path.
PIL does the resizing here because no torch-only library decodes and resizes single images; see data/README.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import torch

RESAMPLE = {"bilinear": 2, "bicubic": 3, "nearest": 0, "lanczos": 1}  # PIL.Image.Resampling values


@dataclass(frozen=True)
class Preprocess:
    image_size: int = 224
    channels: int = 3  # 1 = grayscale ("L"), 3 = RGB
    mean: tuple = (0.5, 0.5, 0.5)  # default: pixels scaled to [-1, 1], as the official ViT checkpoints expect
    std: tuple = (0.5, 0.5, 0.5)
    resize: str = "bilinear"
    crop_pct: float = 1.0  # 1.0: resize straight to image_size; < 1: resize to image_size/crop_pct, centre crop

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise ValueError(f"preprocess channels must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"preprocess mean/std need {self.channels} values, got {self.mean} / {self.std}")
        if self.resize not in RESAMPLE:
            raise ValueError(f"preprocess resize must be one of {list(RESAMPLE)}, got {self.resize!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        d = dict(d)
        d["mean"], d["std"] = tuple(d.get("mean", cls.mean)), tuple(d.get("std", cls.std))
        return cls(**d)

    def to_array(self, image) -> np.ndarray:
        """One PIL image -> uint8 array (S, S, C) at the model's size and channel count."""
        image = to_8bit(image).convert("L" if self.channels == 1 else "RGB")
        size = self.image_size
        if self.crop_pct < 1.0:
            short = round(size / self.crop_pct)
            w, h = image.size
            scale = short / min(w, h)
            image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), RESAMPLE[self.resize])
            w, h = image.size
            left, top = (w - size) // 2, (h - size) // 2
            image = image.crop((left, top, left + size, top + size))
        elif image.size != (size, size):
            image = image.resize((size, size), RESAMPLE[self.resize])
        arr = np.asarray(image, dtype=np.uint8)
        return arr[:, :, None] if arr.ndim == 2 else arr

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, S, S) -> float32 normalised; float input is taken as already in [0, 1]."""
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def __call__(self, images: Union["object", Sequence["object"]]) -> torch.Tensor:
        """PIL image(s) -> float tensor (N, C, S, S) ready for model.forward."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        batch = np.stack([self.to_array(im) for im in images])  # (N, S, S, C)
        return self.normalize(torch.from_numpy(batch).permute(0, 3, 1, 2))


WIDE_INTEGER_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit greyscale, and 32-bit integer


def to_8bit(image):
    """A 16-bit greyscale image (PIL modes "I;16*", and "I", the 32-bit mode PIL also holds 16-bit pixels in)
    scaled to 8 bits: 0..65535 -> 0..255, rounded (v / 257). PIL's own convert("L") clips these modes at 255,
    which turns all but the darkest 0.4 % of the range white. Other modes are returned as they are (PIL
    already reads 16-bit RGB(A) PNGs as 8-bit RGB(A))."""
    if image.mode not in WIDE_INTEGER_MODES:
        return image
    from PIL import Image

    wide = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
    return Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8))  # 2-D uint8: mode "L"


def open_image(path):
    """Open an image file fully (so a truncated file fails here, not later), or raise a one-line UserError."""
    from PIL import Image, UnidentifiedImageError

    from ..errors import UserError

    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except FileNotFoundError:
        raise UserError(f"image {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"image {path} is a directory, not an image file") from None
    except Image.DecompressionBombError as e:
        raise UserError(f"image {path} is too large to decode safely ({' '.join(str(e).split())}); resize it "
                        "first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(f"cannot read image {path}: {' '.join(str(e).split()) or type(e).__name__}") from None
