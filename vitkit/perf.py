"""CPU performance pieces that no library provides: a malloc setting and a faster dropout mask.
Measurements of both: benchmarks/README.md ("Figures behind the code's choices").

`keep_freed_memory()`: glibc's malloc serves large blocks (from 128 KB, adaptively up to 32 MB) with mmap and
returns them to the OS on free, and trims the top of the heap once more than twice that threshold is free. A
model that allocates tensors of tens of MB every layer (a ViT-B/16 attention matrix or MLP activation at batch 32)
then gets fresh pages every time, each zero-filled by the kernel on first touch. Raising both thresholds keeps
freed memory in the process for reuse, which makes the explicit attention path markedly faster. The cost: the
process keeps its peak heap (RSS does not shrink after a big step), so it is applied by `vitkit bench` and
`vitkit train` (a training process is at its peak every step anyway) and is opt-in for library users.
Equivalent environment variables for any process: MALLOC_MMAP_THRESHOLD_=2147483647
MALLOC_TRIM_THRESHOLD_=2147483647. No effect (returns False) where the C library is not glibc.

`dropout(x, p, training)`: F.dropout with a cheaper keep-mask on CPU. PyTorch's CPU dropout draws one Bernoulli
sample per element from its Mersenne Twister, which costs more than the matmul that produced the activation, so
the paper's dropout 0.1 slowed a small model's training step markedly. Here each 64-bit draw of the same
generator (torch.randint) gives four 16-bit lanes, and an element is dropped when its lane falls below
round(p * 65536) - 32768: the drop probability is p rounded to a multiple of 1/65536 (0.1 -> 0.100006), and kept
elements are scaled by 1 / (1 - that), so the output is unbiased. The 0/1 mask goes through uint8 because
PyTorch's bool -> float conversion and masked_fill are slower than the multiply. It uses the global torch
generator, so seeding and exact resume work as before. On GPU, under torch.compile, or with p outside (0, 1) it
is plain F.dropout.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import torch
import torch.nn.functional as F

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>
_LIMIT = 2**31 - 1  # mallopt takes an int


def keep_freed_memory() -> bool:
    """Ask glibc malloc to keep freed large blocks for reuse (see the module docstring). True if it took effect."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, _LIMIT)) and bool(mallopt(M_TRIM_THRESHOLD, _LIMIT))


_LANES = 65536  # one 16-bit lane per element


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """F.dropout(x, p, training), with a 16-bit-lane keep-mask on CPU (see the module docstring)."""
    if not training or not 0.0 < p < 1.0 or x.device.type != "cpu" or torch.compiler.is_compiling():
        return F.dropout(x, p, training)
    cut = round(p * _LANES)
    n = x.numel()
    lanes = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64).view(torch.int16)[:n]
    keep = lanes.view(x.shape) >= cut - _LANES // 2  # lanes are uniform on [-32768, 32767]
    keep = keep.view(torch.uint8).to(x.dtype)  # 0/1 (via uint8: bool -> float and masked_fill are slower)
    return (x * keep).mul_(_LANES / (_LANES - cut))  # scaled by a Python float: fp32 math even for bf16 x


class Dropout(torch.nn.Dropout):
    """nn.Dropout through `dropout` above (same state dict, same repr)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
