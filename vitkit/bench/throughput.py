"""Measurement primitives for `vitkit bench`: the matmul ceiling, inference and training steps, peak memory.

Every figure is a median over timed repeats after warm-up. Runners that are compared (vitkit against a peer) are
timed *interleaved*, one repeat of each in turn, so that a noisy shared machine slows all of them alike and the
ratios stay meaningful even when the absolute numbers drift.

Devices: on CUDA every timing is bracketed by torch.cuda.synchronize() and peak memory is
torch.cuda.max_memory_allocated() over a measured step; on CPU peak memory is the resident set size (RSS)
sampled during a measured step, above the RSS before the runner's model, optimizer and inputs were created
(memory released to the OS with malloc_trim first). RSS also counts allocator slack, so CPU figures are an
upper bound of live tensor bytes, not the same quantity as the CUDA figure.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# -- timing -------------------------------------------------------------------------------------------------------
def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_once(fn: Callable[[], object], device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def matmul_ceiling(dtype: torch.dtype, device="cpu", n: Optional[int] = None, repeats: int = 5,
                   min_time: float = 0.5) -> dict:
    """Measured dense matmul throughput (FLOP/s) for `dtype` on `device`: C = A @ B with square n x n operands,
    the ceiling MFU is reported against. n defaults to 2048 on CPU and 8192 on GPU; each repeat runs enough
    products to last about `min_time`/repeats seconds; the median repeat is returned."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)  # warm-up (oneDNN / cuBLAS kernel selection)
    dt = time_once(lambda: torch.mm(a, b), device)
    inner = max(1, int(min_time / repeats / max(dt, 1e-6)))
    times = []
    for _ in range(repeats):
        times.append(time_once(lambda: [torch.mm(a, b) for _ in range(inner)], device) / inner)
    t = statistics.median(times)
    return {"dtype": str(dtype).replace("torch.", ""), "n": n, "flops_per_s": 2 * n**3 / t, "seconds": t}


def ceiling_runner(dtype: torch.dtype, device="cpu", n: Optional[int] = None, products: int = 4) -> "Runner":
    """The matmul ceiling as a Runner, so that it is timed interleaved with the model rows (same contention):
    one step = `products` n x n products."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)

    def step():
        for _ in range(products):
            torch.mm(a, b)

    name = f"matmul {str(dtype).replace('torch.', '')} n={n}"
    return Runner(name, step, 0, 2 * n**3 * products, device, info={"mode": "ceiling", "n": n})


# -- peak memory ----------------------------------------------------------------------------------------------------
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return 0


def malloc_trim() -> None:
    """Return freed heap memory to the OS (glibc), so that RSS reflects live memory before a measurement."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class RSSPeak:
    """Context manager sampling RSS in a background thread; `.peak` is the largest value seen (bytes)."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self):
        self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


# -- runners ------------------------------------------------------------------------------------------------------
@dataclass
class Runner:
    """One thing to time: `step()` processes one batch of `batch` images. `flops` is the model FLOPs of one
    step (forward only for inference, x3 for training). `state` returns the tensors that persist between steps
    (weights, optimizer state, inputs), whose bytes count towards the CPU peak-memory figure."""

    name: str
    step: Callable[[], object]
    batch: int
    flops: float
    device: torch.device
    state: Optional[Callable[[], list]] = None
    info: dict = field(default_factory=dict)
    times: list = field(default_factory=list)
    peak_mem: Optional[int] = None
    error: Optional[str] = None

    def result(self, ceiling: Optional[float]) -> dict:
        out = {"name": self.name, "batch": self.batch, **self.info}
        if self.error:
            return {**out, "error": self.error}
        t = statistics.median(self.times)
        if self.info.get("mode") == "ceiling":
            return {**out, "flops_per_s": self.flops / t, "best_flops_per_s": self.flops / min(self.times),
                    "repeats": len(self.times)}
        out.update(seconds_per_step=t, img_per_s=self.batch / t, best_img_per_s=self.batch / min(self.times),
                   flops_per_step=self.flops,
                   achieved_flops_per_s=self.flops / t, repeats=len(self.times),
                   spread=(max(self.times) - min(self.times)) / t if self.times else None,
                   peak_mem_bytes=self.peak_mem)
        out["mfu"] = self.flops / t / ceiling if ceiling else None
        return out


def autocast_ctx(device: torch.device, precision: str, policy: str):
    """bf16 under autocast ("autocast" policy), or nothing (fp32, or weights cast with .to: "cast" policy)."""
    if precision == "fp32" or policy == "cast":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def make_inputs(batch: int, chans: int, size: int, num_classes: int, device, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, chans, size, size, generator=g).to(device=device, dtype=dtype)
    y = torch.randint(0, num_classes, (batch,), generator=g).to(device)
    return x, y


def logits_of(out):
    """vitkit returns a tensor; Hugging Face returns an output object with .logits."""
    return out if torch.is_tensor(out) else out.logits


def _compile(model, mode: Optional[str], device=None):
    """torch.compile with static shapes. mode "freeze": inductor's freezing (weights folded in as constants and
    pre-packed for oneDNN, linear + bias + pointwise fused; inference only); "freeze-autotune": the same with
    max_autotune (GEMM template choices benchmarked at compile time); else a torch.compile mode.

    On CPU inductor's layout optimisation is turned off: it makes the patch embedding's input channels-last,
    and oneDNN's bf16 weight-gradient for that layout is far slower than for a contiguous input, which made
    compiled bf16 training slower than eager (measurements: benchmarks/README.md, "How vitkit bench measures")."""
    opts = {} if device is None or torch.device(device).type != "cpu" else {"layout_optimization": False}
    if mode in ("freeze", "freeze-autotune"):
        opts.update(freezing=True, max_autotune=mode == "freeze-autotune")
        return torch.compile(model, dynamic=False, options=opts)
    if opts and mode in (None, "default"):
        return torch.compile(model, dynamic=False, options=opts)
    return torch.compile(model, mode=mode, dynamic=False)


def inference_runner(name: str, model: torch.nn.Module, *, batch: int, image_size: int, chans: int,
                     num_classes: int, flops_per_image: float, precision: str, policy: str, device,
                     compile: bool = False, compile_mode: Optional[str] = None, channels_last: bool = False,
                     ) -> Runner:
    """Forward under torch.inference_mode(). policy "autocast": fp32 weights under torch.autocast(bf16);
    policy "cast": model and input converted with .to(bf16) (pure bf16, what a user serving in bf16 calls)."""
    device = torch.device(device)
    model = model.to(device).eval()
    in_dtype = torch.float32
    if precision != "fp32" and policy == "cast":
        model, in_dtype = model.to(DTYPES[precision]), DTYPES[precision]
    x, _ = make_inputs(batch, chans, image_size, num_classes, device, in_dtype)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    fwd = _compile(model, compile_mode, device) if compile else model

    def step():
        with torch.inference_mode(), autocast_ctx(device, precision, policy):
            return logits_of(fwd(x))

    info = dict(mode="inference", precision=precision, policy=policy if precision != "fp32" else "-",
                compile=(compile_mode or "default") if compile else "no")
    return Runner(name, step, batch, flops_per_image * batch, device, lambda: [*model.parameters(),
                  *model.buffers(), x], info)


def training_runner(name: str, model: torch.nn.Module, *, batch: int, image_size: int, chans: int,
                    num_classes: int, flops_per_image: float, precision: str, device, compile: bool = False,
                    compile_mode: Optional[str] = None, fused_optimizer: bool = False, lr: float = 1e-4,
                    ) -> Runner:
    """One optimisation step: forward, cross-entropy, backward, AdamW step, zero_grad (set_to_none).
    bf16 training is torch.autocast over fp32 master weights (no loss scaling needed for bf16).
    FLOPs per step are 3x the forward FLOPs (backward = 2x forward), the usual MFU convention."""
    device = torch.device(device)
    model = model.to(device).train()
    x, y = make_inputs(batch, chans, image_size, num_classes, device)
    opt_kw = {"fused": True} if fused_optimizer else {"foreach": True}
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, **opt_kw)
    if compile_mode in ("freeze", "freeze-autotune"):
        raise ValueError("--compile freeze (inductor freezing) is for inference only: it folds the weights")
    fwd = _compile(model, compile_mode, device) if compile else model

    def loss_fn():
        with autocast_ctx(device, precision, "autocast"):
            return F.cross_entropy(logits_of(fwd(x)).float(), y)

    def step():
        loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    info = dict(mode="training", precision=precision, policy="autocast" if precision != "fp32" else "-",
                compile=(compile_mode or "default") if compile else "no",
                optimizer="AdamW fused" if fused_optimizer else "AdamW foreach")
    def state():  # weights, their gradients (alive from backward to zero_grad), AdamW moments, the batch
        params = list(model.parameters())
        moments = [t for st in opt.state.values() for t in st.values() if torch.is_tensor(t)]
        return [*params, *params, *model.buffers(), *moments, x, y]

    r = Runner(name, step, batch, 3 * flops_per_image * batch, device, state, info)
    r.model, r.optimizer = model, opt  # kept for tests
    return r


def tensor_bytes(tensors) -> int:
    """Bytes of distinct tensor storages (parameters shared or listed twice count once per listing only when
    they are different objects; gradients are listed as their parameters, so training state counts them)."""
    return sum(t.numel() * t.element_size() for t in tensors)


def measure_peak(runner: Runner) -> Optional[int]:
    """Peak memory of one step of an already warmed-up runner (bytes).

    CUDA: torch.cuda.max_memory_allocated() over the step (live tensors, everything included).
    CPU (no allocator statistics): the bytes of the state that persists between steps (weights, gradients,
    AdamW moments, the input batch; from the tensors' sizes) plus the step's transient peak, the largest RSS
    sampled during the step above the RSS just before it (freed memory returned to the OS first with
    malloc_trim). The transient part counts activations and workspaces, and allocator slack, so it is an upper
    bound; compile-time copies (inductor freezing's pre-packed weights) show up in neither part."""
    if runner.error or runner.info.get("mode") == "ceiling":
        return None
    if runner.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        runner.step()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated())
    malloc_trim()
    before = rss_bytes()
    with RSSPeak() as p:
        runner.step()
    transient = max(0, p.peak - before)
    state = tensor_bytes(runner.state()) if runner.state else 0
    runner.info["mem_state_bytes"], runner.info["mem_transient_bytes"] = state, transient
    return state + transient


def run_interleaved(runners: list[Runner], warmup: int = 2, repeats: int = 5, min_time: float = 0.0,
                    measure_memory: bool = True, log: Optional[Callable[[str], None]] = None) -> None:
    """Warm every runner up (compilation happens here and is excluded), then time them in turn: repeat r of
    runner 1, repeat r of runner 2, ... so that contention affects all alike. A repeat runs the step
    ceil(min_time / step time) times and records the mean, which keeps tiny steps above timer noise."""
    inner = {}
    for r in runners:
        try:
            t0 = time.perf_counter()
            for _ in range(max(1, warmup)):
                r.step()
            sync(r.device)
            r._warm = [time_once(r.step, r.device) for _ in range(2 if r.info.get("mode") == "ceiling" else 1)]
            dt = min(r._warm)
            inner[r.name] = max(1, int(min_time / max(dt, 1e-6) + 0.999)) if min_time else 1
            if log:
                log(f"  warmed up {r.name} in {time.perf_counter() - t0:.1f}s (step {dt * 1e3:.1f} ms)")
            if measure_memory:
                r.peak_mem = measure_peak(r)
        except Exception as e:  # a peer that fails (e.g. compile on an unsupported setup) is reported, not fatal
            r.error = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
            if log:
                log(f"  {r.name} failed: {r.error}")
    # a matmul-ceiling runner repeats its products to last as long as the median model step, so that both see
    # contention over the same time scale
    model_dt = [inner[r.name] * statistics.median(r._warm) for r in runners
                if not r.error and r.info.get("mode") != "ceiling"]
    for r in runners:
        if not r.error and r.info.get("mode") == "ceiling" and model_dt:
            inner[r.name] = max(inner[r.name], int(statistics.median(model_dt) / statistics.median(r._warm) + 0.5))
    for _ in range(repeats):
        for r in runners:
            if r.error:
                continue
            n = inner[r.name]
            r.times.append(time_once(lambda: [r.step() for _ in range(n)], r.device) / n)


# -- data decoding ------------------------------------------------------------------------------------------------
def decode_throughput(spec: str, image_size: int = 224, channels: int = 3, batch: int = 64, workers=(0, 1, 2),
                      max_batches: Optional[int] = None, repeats: int = 3, split: str = "train") -> list[dict]:
    """Images/s of JPEG decoding + resizing into uint8 batches, for each worker count: median of `repeats` epochs
    after one warm-up epoch (worker start-up excluded: the data path keeps its workers across epochs). Goes
    through vitkit.data.datasets.load_dataset + iterate_batches (the training data path) when available, else a
    plain PIL + DataLoader path over an image directory (reported as such in "source"). The decoded-image cache of
    small image folders is turned off here, so every epoch decodes: what training pays in its first epoch (and in
    every epoch for splits too large to cache)."""
    try:
        from ..data.datasets import iterate_batches, load_dataset
        ds = load_dataset(spec, split, image_size=image_size, channels=channels)
        if hasattr(ds, "cache_bytes"):
            ds.cache_bytes = 0
        source = "vitkit.data.datasets"

        def epoch(w):
            n = len(ds) if not max_batches else min(len(ds), max_batches * batch)
            return (xb for xb, _ in iterate_batches(ds, torch.arange(n), batch, num_workers=w))
    except ImportError:  # pragma: no cover - only before the data package landed
        source = "PIL+DataLoader fallback"

        def epoch(w):
            return _iterate_fallback(spec, image_size, channels, batch, w, max_batches)
    out = []
    for w in workers:
        t0 = time.perf_counter()
        for _ in epoch(w):  # warm-up epoch: worker start-up, file cache
            pass
        first = time.perf_counter() - t0
        ts, n_imgs = [], 0
        for _ in range(repeats):
            n_imgs = 0
            t0 = time.perf_counter()
            for xb in epoch(w):
                n_imgs += int(xb.shape[0])
            ts.append(time.perf_counter() - t0)
        t = statistics.median(ts)
        out.append({"workers": w, "images": n_imgs, "seconds": t, "img_per_s": n_imgs / t,
                    "first_epoch_seconds": first, "source": source})
    return out


class _FolderImages(torch.utils.data.Dataset):
    def __init__(self, root, image_size, channels):
        from ..data.preprocess import Preprocess

        exts = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
        self.files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.lower().endswith(exts))
        if not self.files:
            raise FileNotFoundError(f"no images under {root}")
        self.pre = Preprocess(image_size=image_size, channels=channels)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.files[i]) as im:
            return torch.from_numpy(self.pre.to_array(im)).permute(2, 0, 1)


def _iterate_fallback(spec, image_size, channels, batch, workers, max_batches=None):
    root = spec.split(":", 1)[1] if spec.startswith("imagefolder:") else spec
    ds = _FolderImages(root, image_size, channels)
    for i, xb in enumerate(torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers)):
        yield xb
        if max_batches and i + 1 >= max_batches:
            return
