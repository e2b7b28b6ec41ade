"""vitkit: the Vision Transformer of "An Image is Worth 16x16 Words" (Dosovitskiy et al., ICLR 2021).

Public API:
    create_model(name, num_classes=..., image_size=...)  -> ViT with fresh weights ("ViT-B/16", "ViT-Mini/7", ...),
                                                            or the BiT ResNet baseline ("BiT-R50x1", "BiT-R26x1-S")
    load(path)                                           -> LoadedModel: .model (the ViT), .preprocess, .class_names
    save_checkpoint(path, model, preprocess, class_names)
    ViT, ViTConfig, VARIANTS, BiT, BiTConfig
"""

from .version import __version__  # noqa: E402,F401

import os as _os  # noqa: E402

# Before torch loads libgomp: idle OpenMP threads sleep instead of spinning for ~0.3 s. On a CPU shared with other
# processes (or more threads than cores), spinning threads steal the cores the working ones need; measured on a
# loaded 2-core box, bf16 training ran 24 img/s spinning vs 220 img/s passive. Set OMP_WAIT_POLICY to override.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .checkpoint.io import load, save_checkpoint  # noqa: E402
from .config import LISTED as VARIANTS  # noqa: E402
from .config import ViTConfig, variant_config  # noqa: E402
from .data.preprocess import Preprocess  # noqa: E402
from .model import ViT, create_model  # noqa: E402
from .resnet import BiT, BiTConfig  # noqa: E402

__all__ = ["create_model", "load", "save_checkpoint", "ViT", "ViTConfig", "BiT", "BiTConfig", "VARIANTS",
           "variant_config", "Preprocess", "__version__"]
