"""Small synthetic image folders for tests: train/<class>/*.png and test/<class>/*.png."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_folder(root: Path, n_train: int = 12, n_test: int = 6, classes: int = 3, size: int = 16) -> str:
    rng = np.random.default_rng(0)
    colours = [(220, 30, 30), (30, 220, 30), (30, 30, 220), (200, 200, 30)][:classes]
    for split, n in (("train", n_train), ("test", n_test)):
        for c, col in enumerate(colours):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                px = np.clip(np.array(col) + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(px).save(d / f"{i:03d}.png")
    return f"imagefolder:{root}"
