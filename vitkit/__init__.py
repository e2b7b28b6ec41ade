"""vitkit: the Vision Transformer of "An Image is Worth 16x16 Words" (Dosovitskiy et al., ICLR 2021).

Public API:
    create_model(name, num_classes=..., image_size=...)  -> ViT with fresh weights ("ViT-B/16", "ViT-Mini/7", ...),
                                                            or the BiT ResNet baseline ("BiT-R50x1", "BiT-R26x1-S")
    load(path)                                           -> LoadedModel: .model (the ViT), .preprocess, .class_names
    save_checkpoint(path, model, preprocess, class_names)
    train(dataset=..., steps=..., config=None, ...)       -> result dict: what `vitkit train --dataset ... --steps ...`
                                                            runs (recipe < config file < keys given, then the plan
                                                            for an image folder; vitkit/train/cli.py)
    ViT, ViTConfig, VARIANTS, BiT, BiTConfig, LoadedModel

Importing vitkit changes nothing in the process (no environment variables, no warning hooks) and loads torch only
when one of these names is first used, so the `vitkit` command can set up its process before torch starts
(vitkit/cli.py). The layer order of the parts: ARCHITECTURE.md.
"""

import importlib as _importlib

from .version import __version__

# public name -> (module, attribute)
_API = {
    "create_model": ("vitkit.model", "create_model"),
    "ViT": ("vitkit.model", "ViT"),
    "load": ("vitkit.checkpoint.io", "load"),
    "save_checkpoint": ("vitkit.checkpoint.io", "save_checkpoint"),
    "ViTConfig": ("vitkit.config", "ViTConfig"),
    "variant_config": ("vitkit.config", "variant_config"),
    "VARIANTS": ("vitkit.config", "LISTED"),
    "Preprocess": ("vitkit.data.preprocess", "Preprocess"),
    "BiT": ("vitkit.resnet", "BiT"),
    "BiTConfig": ("vitkit.resnet", "BiTConfig"),
    "LoadedModel": ("vitkit.runtime", "LoadedModel"),
}

__all__ = [*_API, "train", "__version__"]  # train: the package vitkit.train, callable (vitkit/train/__init__.py)


def __getattr__(name: str):
    if name in _API:
        module, attr = _API[name]
        value = getattr(_importlib.import_module(module), attr)
        globals()[name] = value
        return value
    try:  # vitkit.checkpoint, vitkit.runtime, ... as attributes, as after an eager import
        return _importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])
