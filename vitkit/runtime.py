"""Running a model: the one home of what eval, predict, analyze, export, bench and train share at run time.

    resolve_device(name)                  -> torch.device ("auto": CUDA, else Apple's MPS, else CPU)
    native_bf16(device)                   -> whether `device` computes bf16 natively (else bf16 is emulated, slowly)
    resolve_precision(precision, device)  -> "auto" made "bf16" or "fp32" for `device`
    autocast(device, precision)           -> bf16 autocast context, or a no-op for fp32
    unwrap(model)                         -> the ViT inside DDP / FSDP / torch.compile wrappers
    default_preprocess(cfg)               -> the Preprocess of a model that came without one ([-1, 1] pixels)
    to_channels(images_u8, channels)     -> grey repeated to RGB, or RGB to ITU-R 601 luma (as PIL's "L")
    to_model_input(images_u8, preprocess) -> the normalised float batch a model takes (channels, size, mean/std)
    load_split(spec, split, preprocess)   -> a dataset split as uint8 images at the model's size and channels
    LoadedModel(model, preprocess, class_names, source)
                                          -> a model with what running it needs, as data (vitkit.load returns one);
                                             it answers as the nn.Module inside (.eval(), .to(), .parameters(), ...)
    as_loaded(model)                      -> a LoadedModel from a bare ViT (default preprocessing, classes "0", "1", ...)
    head_is_blank(model) / require_trained_head(model, name, what)
                                          -> whether the head is still all zeros / a UserError if so

Nothing here knows a checkpoint format (vitkit.checkpoint reads files) or a training loop (vitkit.train).
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from typing import Optional

import numpy as np
import torch

from .config import ViTConfig
from .data.preprocess import Preprocess
from .errors import UserError

PRECISIONS = ("auto", "fp32", "bf16")


def _mps_available() -> bool:
    """Whether Apple's Metal (MPS) backend can run here (a torch build with MPS, on an Apple-silicon Mac)."""
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _mps_bf16_supported() -> bool:
    """bf16 on MPS needs macOS 14 or newer (torch raises on older systems)."""
    return bool(torch.backends.mps.is_macos_or_newer(14, 0))


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """"auto" -> CUDA if available, else MPS (Apple silicon) if available, else CPU; "cuda" -> this process's GPU
    (local_rank). A UserError if CUDA or MPS is asked for but missing.

    The MPS branch is tested only with the probes (torch.cuda.is_available, torch.backends.mps.is_available)
    mocked (tests/test_precision.py): no part of vitkit has been run on a Mac."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown --device {name!r}; valid: auto, cpu, cuda, cuda:N, mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda was given but no CUDA GPU is available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if dev.type == "mps" and not _mps_available():
        raise UserError("--device mps was given but MPS is not available (it needs an Apple-silicon Mac and a "
                        "torch built with MPS)")
    return dev


def native_bf16(device: torch.device) -> bool:
    """Whether `device` has bf16 arithmetic in hardware: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or
    AMX. Elsewhere (an AVX2-only CPU) oneDNN emulates bf16 matmuls, and a bf16 training step measured 24x slower
    than fp32 (benchmarks/README.md, "bf16 on a CPU without bf16 instructions"). MPS: False (bf16 runs there on
    macOS 14+, but whether a given Apple GPU computes it natively is not something torch reports, and nothing was
    measured on a Mac), so "auto" stays fp32 on MPS."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        return any(getattr(cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> "bf16" where the hardware computes it natively (native_bf16), else "fp32"; others unchanged.

    On MPS "auto" is "fp32", the safe choice: torch.autocast("mps") takes float16 (its default) and bfloat16, but
    bfloat16 needs macOS 14+, float16 (no bf16-sized exponent) can overflow in training without a gradient scaler,
    which vitkit's loop does not use, and no speed was measured on a Mac. "bf16" asked for on MPS is kept on
    macOS 14+ and refused in one line before it. fp16 is not one of vitkit's precisions."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if precision == "bf16" and device.type == "mps" and not _mps_bf16_supported():
        raise UserError("--precision bf16 on MPS needs macOS 14 or newer; use --precision fp32 (or auto)")
    return precision


def autocast(device: torch.device, precision: str):
    """bf16 autocast on `device` for "bf16" (and for "auto" where it is native), nothing for "fp32"."""
    precision = resolve_precision(precision, device)
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "fp32":
        return nullcontext()
    raise UserError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    inner = getattr(model, "module", model)
    return getattr(inner, "_orig_mod", inner)


def default_preprocess(cfg: ViTConfig) -> Preprocess:
    """The preprocessing of a model that carries none: pixels scaled to [-1, 1], as the official checkpoints
    expect, at the model's image size and channel count."""
    c = cfg.in_chans
    return Preprocess(image_size=cfg.image_size, channels=c, mean=(0.5,) * c, std=(0.5,) * c)


# nn.Module methods that return the module itself: on a LoadedModel they return the LoadedModel, so that
# `vitkit.load(p).eval().to("cpu")` keeps `.preprocess` and `.class_names` in hand, as timm and Hugging Face users expect
_CHAINABLE = frozenset({"eval", "train", "to", "cpu", "cuda", "xpu", "float", "double", "half", "bfloat16",
                        "requires_grad_", "apply", "share_memory", "to_empty", "type"})


@dataclasses.dataclass
class LoadedModel:
    """A model and what running it needs, kept beside it rather than patched onto the module (attributes on an
    nn.Module vanish behind DDP or torch.compile). `loaded(x)` runs the model on a preprocessed batch.

    It behaves as the nn.Module it holds: any attribute it does not have itself (`.parameters()`, `.state_dict()`,
    `.forward_intermediates(...)`, `.training`, ...) is the model's, and the methods that return the module
    (`.eval()`, `.train()`, `.to()`, `.float()`, `.half()`, `.cuda()`, ...) return this LoadedModel. `.model` is the
    module itself, for what needs a real nn.Module (an optimizer takes `.parameters()` either way)."""

    model: torch.nn.Module  # a ViT, possibly wrapped (DDP, torch.compile)
    preprocess: Preprocess  # PIL image -> tensor, and uint8 batch -> tensor (to_model_input)
    class_names: list  # one name per output of the head
    source: str = "memory"  # the checkpoint format it was read from ("vitkit", "huggingface", ...)

    def __post_init__(self):
        k = self.config.num_classes
        self.class_names = [str(c) for c in self.class_names]
        if len(self.class_names) != k:
            raise UserError(f"{len(self.class_names)} class names for a head of {k} classes")

    @property
    def config(self) -> ViTConfig:
        return unwrap(self.model).cfg

    @property
    def cfg(self) -> ViTConfig:
        """The same as `config`, under the name the models use (`model.cfg`)."""
        return self.config

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            what = f"a {x.dtype} tensor" if isinstance(x, torch.Tensor) else f"a {type(x).__name__}"
            raise UserError(f"the model takes a float batch (N, C, H, W), got {what}: use loaded.preprocess(pil_images)"
                            f" for PIL images, or vitkit.runtime.to_model_input(uint8_images, loaded.preprocess)")
        return self.model(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)

    def __getattr__(self, name: str):
        # only called for what the LoadedModel itself lacks: the model's attributes, methods returning self chained
        model = self.__dict__.get("model")
        if model is None or name.startswith("__"):
            raise AttributeError(name)
        for m in (model, unwrap(model)):  # DDP and torch.compile wrappers, then the model inside
            try:
                attr = getattr(m, name)
                break
            except AttributeError:
                continue
        else:
            raise AttributeError(f"'LoadedModel' object has no attribute {name!r}, and neither has its model "
                                 f"({type(unwrap(model)).__name__}, in `.model`)")
        if name in _CHAINABLE and callable(attr):
            def chained(*args, _attr=attr, _m=m, **kwargs):
                out = _attr(*args, **kwargs)
                return self if out is _m else out
            chained.__doc__ = attr.__doc__
            return chained
        return attr

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(dir(unwrap(self.model))))

    def replace(self, **changes) -> "LoadedModel":
        return dataclasses.replace(self, **changes)


def as_loaded(model, preprocess: Optional[Preprocess] = None, class_names=None, source: str = "memory"
              ) -> LoadedModel:
    """`model` if it already is a LoadedModel (the arguments then override its pieces), else a LoadedModel of a bare
    ViT with `preprocess` (default: default_preprocess) and `class_names` (default: "0", "1", ...)."""
    if isinstance(model, LoadedModel):
        changes = {k: v for k, v in dict(preprocess=preprocess, class_names=class_names).items() if v is not None}
        return model.replace(**changes) if changes else model
    cfg = unwrap(model).cfg
    return LoadedModel(model, preprocess if preprocess is not None else default_preprocess(cfg),
                       list(class_names) if class_names is not None else [str(i) for i in range(cfg.num_classes)],
                       source)


def head_is_blank(model) -> bool:
    """Whether the classification head is exactly zero, as initialised (section 3.2) and never after training: the
    head of a checkpoint that had none (a Hugging Face ViTModel folder) or got a new one (convert --num-classes)."""
    head = getattr(unwrap(getattr(model, "model", model)), "head", None)
    weight = getattr(head, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return False
    with torch.no_grad():
        return not weight.any() and (head.bias is None or not head.bias.any())


def require_trained_head(model, name, what: str) -> None:
    """A one-line UserError if `model`'s head is blank (head_is_blank): `what` ("predict", "eval") would print
    chance-level answers for classes nobody trained."""
    if head_is_blank(model):
        raise UserError(f"{name} has no trained classification head (all its head's weights are 0, as in a "
                        f"checkpoint saved without one, e.g. a Hugging Face ViTModel): {what} would give chance-level "
                        f"answers; fine-tune it first (vitkit train --init {name} --dataset D) or use its features "
                        f"(vitkit features, vitkit fewshot)")


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 (B, C, H, W) -> (B, channels, H, W): gray repeated to RGB, or RGB to ITU-R 601 luma."""
    c = images.shape[1]
    if c == channels:
        return images
    if c == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if c == 3 and channels == 1:
        w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images.float() * w).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    raise UserError(f"cannot convert {c}-channel images to {channels} channels")


def to_model_input(images, preprocess: Preprocess, device=None, dtype: Optional[torch.dtype] = None
                   ) -> torch.Tensor:
    """uint8 (N, C, H, W) -> the normalised float batch the model expects: converted to the preprocess's channel
    count, resized to its image size if needed, normalised with its mean/std, moved to `device` / cast to `dtype`."""
    from .data.datasets import resize_batch

    x = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    if x.ndim != 4:
        raise UserError(f"images have shape {tuple(x.shape)}; expected (N, C, H, W)")
    x = to_channels(x, preprocess.channels)
    if tuple(x.shape[-2:]) != (preprocess.image_size, preprocess.image_size):
        x = resize_batch(x, preprocess.image_size)
    x = preprocess.normalize(x)
    if device is not None:
        x = x.to(device)
    return x.to(dtype) if dtype is not None and dtype != x.dtype else x


def load_split(spec: str, split: str, preprocess: Optional[Preprocess] = None, data_dir=None,
               limit: Optional[int] = None, seed: int = 0):
    """A dataset split (vitkit.data.datasets) as (images uint8 (N, C, H, W) tensor, labels (N,) int64 numpy,
    class_names); image folders decode at `preprocess`'s size and channels exactly as predict does. With `limit`,
    a fixed random subset (seed `seed`) of that many images, in index order; only those are decoded."""
    from .data.datasets import iterate_batches, load_dataset, random_indices

    kw = {}
    if preprocess is not None:
        kw = dict(image_size=preprocess.image_size, channels=preprocess.channels, preprocess=preprocess)
    ds = load_dataset(spec, split=split, data_dir=data_dir, **kw)
    labels = np.asarray(ds.labels).astype(np.int64)
    if len(labels) == 0:
        raise UserError(f"dataset {spec!r} split {split!r} is empty")
    idx = random_indices(len(labels), limit, seed)
    if hasattr(ds, "images"):
        images = ds.images[torch.from_numpy(idx)]
    else:
        images = torch.cat([b for b, _ in iterate_batches(ds, torch.from_numpy(idx), 256)])
    return images, labels[idx], list(getattr(ds, "class_names", None) or [])
