"""The training loop: one loop for every recipe, single process or distributed (see distributed.py).

    from vitkit.train.loop import TrainSettings, train
    result = train(TrainSettings(epochs=1, out="runs/x"))     # {"top1": ..., "checkpoint": "runs/x/checkpoint"}

What a step is. The global batch of `batch_size` examples is the b-th slice of a permutation of the training set
drawn from (seed, epoch); each of the N processes takes its contiguous 1/N of it and splits that into `accum`
micro-batches (gradient accumulation), so the optimizer always sees the mean gradient of the same examples,
whatever N and the micro-batch size are. Each micro-batch is augmented on uint8 (BatchAugment, with this
process's own torch.Generator), normalised with the model's Preprocess and run under bf16 autocast if asked.

Exact resume. OUT/checkpoint/train_state.pt holds everything the next step depends on: optimizer and scheduler
state, the step (the epoch and the position in it follow from it), the best metric, and every random state --
torch's (dropout), numpy's, Python's and the augmentation generator's, for every rank. Data order needs no state:
it is a pure function of (seed, epoch). On resume, metrics.jsonl is cut back to the checkpoint's step, so a
run killed at any point (even SIGKILL while writing a checkpoint: writes are atomic) and resumed writes the same
per-step losses as an uninterrupted one -- bitwise in fp32 on CPU with the same thread count
(tests/test_resume.py checks that).

Data channels. A model's channel count wins: 1-channel data is repeated to 3 channels for an RGB model and RGB
data is converted to luma (ITU-R 601, as PIL's "L") for a 1-channel model, so e.g. a checkpoint trained on
Fashion-MNIST can be fine-tuned on CIFAR-10 and vice versa.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import UserError
from . import distributed as D
from .optim import build_optimizer, build_scheduler
from .recipes import Recipe

CHECKPOINT, BEST, METRICS = "checkpoint", "best", "metrics.jsonl"
GELU = {"tanh": "tanh", "erf": "none"}  # --gelu -> ViTConfig.gelu_approximate (torch's `approximate` argument)


@dataclass
class TrainSettings(Recipe):
    """A recipe plus the run's own settings. Field names are the `vitkit train` flags."""

    out: Optional[str] = None  # None: runs/<dataset>
    init: Optional[str] = None  # a checkpoint to fine-tune from (any format vitkit.load reads)
    resume: bool = False
    data_dir: Optional[str] = None
    seed: int = 0
    workers: int = 0
    micro_batch: Optional[int] = None
    accum_steps: Optional[int] = None
    eval_every: Optional[int] = None  # steps; None: at the end of every epoch
    save_every: Optional[int] = None  # steps; None: whenever it evaluates
    eval_batch_size: int = 256
    compile: bool = False
    grad_checkpointing: bool = False
    # "auto": explicit softmax attention on CPU, PyTorch SDPA elsewhere (ViT.set_fused_attn). Measured on 2 CPU cores,
    # bf16 training step: explicit is 1.5-1.6x faster than SDPA at 17, 65 and 257 tokens (SDPA's CPU flash
    # backward is the slow part); outputs agree within 1e-5 (tests/test_model.py). Loaded models use "auto" too.
    attention: str = "auto"
    fsdp: bool = False
    device: str = "auto"
    progress: bool = True
    limit_train: Optional[int] = None  # use only the first N training / test examples (smoke tests)
    limit_test: Optional[int] = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainSettings":
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        for k in ("betas", "randaugment"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)


class TrainingDiverged(UserError):
    pass


# ------------------------------------------------------------------------------------------------------- data


def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The order of the training set in `epoch`: the same on every rank and after any resume."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


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


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "fp32":
        return nullcontext()
    raise UserError(f"unknown precision {precision!r}; valid: fp32, bf16")


def native_size(ds) -> Optional[int]:
    images = getattr(ds, "images", None)
    return int(images.shape[-1]) if images is not None else None


# ---------------------------------------------------------------------------------------------------- model


def default_config(name: str):
    """The ViTConfig of variant `name` (plain or hybrid) at its default image size; a UserError lists valid names."""
    from ..config import variant_config

    try:
        return variant_config(name)
    except ValueError as e:
        raise UserError(str(e)) from None


def build_model(s: TrainSettings, num_classes: int, data_channels: int, native: Optional[int]):
    """(model, preprocess): a fresh variant, or the --init checkpoint adapted to the data (section 3.2)."""
    from ..data.preprocess import Preprocess
    from ..model import ViT, create_model

    if s.gelu is not None and s.gelu not in GELU:
        raise UserError(f"unknown --gelu {s.gelu!r}; valid: {', '.join(GELU)}")
    if s.init:
        from ..checkpoint.io import load
        from ..checkpoint.surgery import adapt_model

        if s.classifier or s.pos_embed or s.gelu:
            raise UserError("--classifier, --pos-embed and --gelu cannot change a pre-trained (--init) model")
        model = adapt_model(load(s.init), num_classes=num_classes, image_size=s.image_size)
        pre = model.preprocess  # resized with the model
        if s.dropout and s.dropout != model.cfg.dropout:
            state = model.state_dict()
            model = ViT(model.cfg.replace(dropout=s.dropout))
            model.load_state_dict(state)
        return model, pre
    base = default_config(s.model)
    image_size = s.image_size or (native if native and native % base.stem_stride == 0 else base.image_size)
    try:
        model = create_model(s.model, num_classes=num_classes, image_size=image_size, in_chans=data_channels,
                             classifier=s.classifier, pos_embed=s.pos_embed, dropout=s.dropout,
                             **({} if s.gelu is None else {"gelu_approximate": GELU[s.gelu]}))
    except ValueError as e:
        raise UserError(str(e)) from None
    c = data_channels
    return model, Preprocess(image_size=image_size, channels=c, mean=(0.5,) * c, std=(0.5,) * c)


# ------------------------------------------------------------------------------------------------ RNG state


def rng_state(aug_gen: torch.Generator) -> dict:
    st = {"torch": torch.get_rng_state(), "aug": aug_gen.get_state(), "python": random.getstate()}
    name, keys, pos, has_gauss, cached = np.random.get_state()
    st["numpy"] = [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def set_rng_state(st: dict, aug_gen: torch.Generator) -> None:
    torch.set_rng_state(st["torch"])
    aug_gen.set_state(st["aug"])
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = st["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])


# ----------------------------------------------------------------------------------------------------- logs


class Logger:
    """metrics.jsonl (+ TensorBoard when installed) on rank 0; nothing elsewhere."""

    def __init__(self, out: Path, enabled: bool, resume_step: Optional[int]):
        self.enabled, self.path, self.tb = enabled, out / METRICS, None
        if not enabled:
            return
        kept = []
        if resume_step is not None and self.path.exists():  # drop what was logged after the checkpoint
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_step:
                        kept.append(line)
                except json.JSONDecodeError:
                    pass  # a line cut short by a kill
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(k + "\n" for k in kept))
        os.replace(tmp, self.path)
        self.f = open(self.path, "a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            # on resume, purge_step makes TensorBoard drop what the killed run logged after the checkpoint
            self.tb = SummaryWriter(str(out / "tensorboard"),
                                    purge_step=None if resume_step is None else resume_step + 1)
        except ImportError:
            pass

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self.f.write(json.dumps(record) + "\n")
        self.f.flush()
        if self.tb is not None:
            prefix = "eval" if "top1" in record else "train"
            for k, v in record.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{prefix}/{k}", v, record["step"])

    def close(self) -> None:
        if self.enabled:
            self.f.close()
            if self.tb is not None:
                self.tb.close()


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr, leave=False)


def _say(msg: str, enabled: bool) -> None:
    if enabled:
        print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------- train


def train(s: TrainSettings) -> dict:
    """Train (or fine-tune, or resume) as `s` says; returns the final evaluation and where the checkpoint is."""
    from ..checkpoint.io import TRAIN_STATE, _existing, load_train_state, save_checkpoint
    from ..data.datasets import iterate_batches, load_dataset
    from ..data.transforms import BatchAugment, soft_target_cross_entropy
    from ..eval.evaluate import evaluate_counts, summarize

    t_start = time.perf_counter()
    info = D.setup(s.device)
    try:
        main = info.is_main
        out = Path(s.out or f"runs/{s.dataset.replace(':', '_').replace('/', '_')}")
        ckpt_dir = out / CHECKPOINT
        if main:
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UserError(f"cannot create output directory {out} ({e.strerror or e})") from None
            if not os.access(out, os.W_OK):
                raise UserError(f"output directory {out} is not writable")
        if s.resume and not (_existing(ckpt_dir) / TRAIN_STATE).exists():
            raise UserError(f"--resume: no checkpoint to resume in {out} (expected {ckpt_dir / TRAIN_STATE})")

        torch.manual_seed(s.seed)
        random.seed(s.seed)
        np.random.seed(s.seed)

        # -- data and model -----------------------------------------------------------------------------------
        init_model = None
        if s.init and s.dataset.lower().startswith("imagefolder:"):  # folders decode straight to the model size
            from ..checkpoint.io import load

            init_model = load(s.init)
        fold_size = s.image_size or (init_model.cfg.image_size if init_model is not None else None)
        fold_chans = init_model.cfg.in_chans if init_model is not None else 3
        if s.dataset.lower().startswith("imagefolder:") and fold_size is None:
            fold_size = default_config(s.model).image_size
        train_ds = load_dataset(s.dataset, "train", data_dir=s.data_dir, image_size=fold_size, channels=fold_chans)
        test_ds = load_dataset(s.dataset, "test", data_dir=s.data_dir, image_size=fold_size, channels=fold_chans)
        class_names = list(train_ds.class_names)
        n_train = len(train_ds.labels) if s.limit_train is None else min(s.limit_train, len(train_ds.labels))
        n_test = len(test_ds.labels) if s.limit_test is None else min(s.limit_test, len(test_ds.labels))

        model, preprocess = build_model(s, len(class_names), train_ds.channels, native_size(train_ds))
        core, cfg = model, model.cfg
        core.preprocess, core.class_names = preprocess, class_names
        if s.grad_checkpointing:
            core.set_grad_checkpointing(True)
        if s.attention not in ("auto", "sdpa", "explicit"):
            raise UserError(f"unknown --attention {s.attention!r}; valid: auto, sdpa, explicit")
        core.set_fused_attn(s.attention)

        # -- batch arithmetic ---------------------------------------------------------------------------------
        B, world = s.batch_size, info.world_size
        if B % world:
            raise UserError(f"--batch-size {B} is not divisible by the number of processes {world}")
        per_rank = B // world
        if s.micro_batch:
            if per_rank % s.micro_batch:
                raise UserError(f"--micro-batch {s.micro_batch} does not divide the per-process batch {per_rank} "
                                f"(global {B} / {world} processes)")
            micro, accum = s.micro_batch, per_rank // s.micro_batch
        else:
            accum = s.accum_steps or 1
            if per_rank % accum:
                raise UserError(f"--accum-steps {accum} does not divide the per-process batch {per_rank}")
            micro = per_rank // accum
        steps_per_epoch = n_train // B
        if steps_per_epoch == 0:
            raise UserError(f"--batch-size {B} is larger than the training set ({n_train} examples)")
        total = int(s.steps) if s.steps else max(1, math.ceil(s.epochs * steps_per_epoch))
        warmup = int(s.warmup_steps) if s.warmup_steps is not None else round(s.warmup_epochs * steps_per_epoch)
        warmup = min(warmup, total)
        eval_every = s.eval_every or steps_per_epoch
        save_every = s.save_every or eval_every

        # -- resume: weights before wrapping (FSDP shards what it is given) ---------------------------------
        ts = None
        if s.resume:
            from safetensors.torch import load_file

            from ..checkpoint.io import WEIGHTS, load_state_dict_strict

            src = _existing(ckpt_dir)
            ts = load_train_state(src)
            load_state_dict_strict(core, load_file(str(src / WEIGHTS)), str(src / WEIGHTS))

        core.to(info.device)
        cmodel = torch.compile(core) if s.compile else core
        model = D.wrap_model(cmodel if not s.fsdp else core, info, fsdp=s.fsdp)
        if s.fsdp and s.compile:
            model = torch.compile(model)
        params = [p for p in core.parameters() if p.requires_grad]
        optimizer = build_optimizer(core, s.optimizer, s.lr, s.weight_decay, s.betas, s.momentum,
                                    fused=not s.fsdp and info.device.type in ("cpu", "cuda"))
        scheduler = build_scheduler(optimizer, warmup, total, s.schedule)
        aug_gen = torch.Generator().manual_seed(s.seed * 7919 + 17 + info.rank)
        aug = BatchAugment(cfg.image_size, len(class_names), crop=s.crop,
                           flip=s.flip and getattr(train_ds, "flip_ok", True), randaugment=s.randaugment,
                           mixup=s.mixup, cutmix=s.cutmix, label_smoothing=s.label_smoothing, seed=s.seed,
                           erase=s.random_erase, pad=s.crop_pad)
        step, best_top1, best_step = 0, -1.0, None
        if ts is not None:
            D.load_optimizer_state(model, optimizer, ts["optimizer"])
            scheduler.load_state_dict(ts["scheduler"])
            step, best_top1, best_step = int(ts["step"]), float(ts["best_top1"]), ts.get("best_step")
            rngs = ts["rng"]
            if len(rngs) == world:
                set_rng_state(rngs[info.rank], aug_gen)
            else:
                _say(f"vitkit: note: resuming with {world} processes, saved with {len(rngs)}: random streams "
                     f"restart from the seed", main)
        logger = Logger(out, main, step if s.resume else None)

        bar = _progress(total, step, main and s.progress and sys.stderr.isatty())
        verbose = main and bar is None
        _say(f"vitkit train: {cfg.name or s.model} ({core.num_params() / 1e6:.2f}M params, {cfg.image_size} px) on "
             f"{s.dataset} ({n_train} train / {n_test} test, {len(class_names)} classes), {total} steps of "
             f"{B} ({world} proc x {accum} x {micro}), {s.optimizer} lr {s.lr:g}, {s.precision}, {info.device}",
             main and (verbose or s.progress))

        def run_eval() -> dict:
            if s.fsdp and info.enabled:  # every rank runs the sharded model on all the data (collectives align)
                counts = evaluate_counts(model, test_ds, torch.arange(n_test), s.eval_batch_size, s.precision,
                                         preprocess, info.device)
                for mod in core.modules():  # the root stays unsharded after a forward without backward
                    if hasattr(mod, "reshard"):
                        mod.reshard()
            else:
                counts = evaluate_counts(cmodel, test_ds, torch.arange(n_test)[info.rank::world],
                                         s.eval_batch_size, s.precision, preprocess, info.device)
                for v in counts.values():
                    D.all_reduce_(v)
            return summarize(counts, class_names)

        def save(path: Path, with_state: bool = True) -> None:
            state = None
            if with_state:
                state = {"step": step, "epoch": step // steps_per_epoch, "position": step % steps_per_epoch,
                         "optimizer": D.full_optimizer_state(model, optimizer),
                         "scheduler": scheduler.state_dict(), "best_top1": best_top1, "best_step": best_step,
                         "rng": D.all_gather_object(rng_state(aug_gen)), "settings": s.to_dict(),
                         "world_size": world}
            if D.is_fsdp(model):  # collectives on every rank; the full tensors land on rank 0 only
                full = D.full_model_state(model)
                tosave = None
                if main:
                    from ..model import ViT

                    tosave = ViT(cfg)
                    tosave.load_state_dict(full)
            else:
                tosave = core
            if main:
                save_checkpoint(path, tosave, preprocess, class_names, train_state=state)
            D.barrier()

        # -- the loop -----------------------------------------------------------------------------------------
        step_delay = float(os.environ.get("VITKIT_TEST_STEP_DELAY", "0"))  # test hook: lets a test kill mid-run
        last = {"loss": float("nan")}
        result_eval, evaluated_at, saved_at = None, None, None
        train_time, train_images, wait_time = 0.0, 0, 0.0
        model.train()
        while step < total:
            epoch, pos = divmod(step, steps_per_epoch)
            perm = epoch_permutation(s.seed, epoch, n_train)
            n_steps = min(steps_per_epoch - pos, total - step)
            local = perm[pos * B:(pos + n_steps) * B].view(n_steps, world, per_rank)[:, info.rank].reshape(-1)
            batches = iterate_batches(train_ds, local, micro, num_workers=s.workers)
            for _ in range(n_steps):
                t0 = time.perf_counter()
                wait = 0.0
                loss_sum = torch.zeros((), device=info.device)
                for m in range(accum):
                    tw = time.perf_counter()
                    images, labels = next(batches)
                    images, targets = aug(to_channels(images, cfg.in_chans), labels, generator=aug_gen)
                    x = preprocess.normalize(images).to(info.device, non_blocking=True)
                    targets = targets.to(info.device, non_blocking=True)
                    wait += time.perf_counter() - tw
                    with D.no_sync(model, m == accum - 1):
                        with autocast(info.device, s.precision):
                            loss = soft_target_cross_entropy(model(x).float(), targets) / accum
                        loss.backward()
                    loss_sum += loss.detach()
                grad_norm = torch.nn.utils.clip_grad_norm_(params, s.clip_grad or float("inf"))
                loss_val = float(D.all_reduce_(loss_sum) / world)
                if not math.isfinite(loss_val):
                    where = (f"the last good checkpoint is {ckpt_dir} (step {saved_at})" if saved_at is not None
                             else "no checkpoint was written")
                    raise TrainingDiverged(f"loss is {loss_val} at step {step + 1}; stopping ({where}); try a "
                                           f"lower --lr or --clip-grad 1")
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if step_delay:
                    time.sleep(step_delay)
                dt = time.perf_counter() - t0
                train_time += dt
                train_images += B
                wait_time += wait
                last = {"step": step, "epoch": round(step / steps_per_epoch, 4), "loss": loss_val, "lr": lr,
                        "grad_norm": float(grad_norm), "img_per_s": round(B / dt, 1),
                        "data_wait_frac": round(wait / dt, 4)}
                logger.log(last)
                if bar is not None:
                    bar.set_postfix(loss=f"{loss_val:.3f}", lr=f"{lr:.2e}", img_s=f"{B / dt:.0f}", refresh=False)
                    bar.update(1)

                if step % eval_every == 0 or step == total:
                    result_eval, evaluated_at = run_eval(), step
                    model.train()
                    logger.log({"step": step, "epoch": round(step / steps_per_epoch, 4), "top1": result_eval["top1"],
                                "top5": result_eval["top5"], "eval_loss": result_eval["loss"]})
                    msg = (f"step {step}/{total} epoch {step / steps_per_epoch:.2f}: loss {loss_val:.4f} test top1 "
                           f"{100 * result_eval['top1']:.2f}% top5 {100 * result_eval['top5']:.2f}% "
                           f"({train_images / max(train_time, 1e-9):.0f} img/s, "
                           f"{time.perf_counter() - t_start:.0f}s)")
                    if bar is not None:
                        bar.write(msg, file=sys.stderr)
                    else:
                        _say(msg, verbose)
                    improved = result_eval["top1"] > best_top1
                    if improved:
                        best_top1, best_step = result_eval["top1"], step
                if step % save_every == 0 or step == total:
                    save(ckpt_dir)
                    saved_at = step
                    if evaluated_at == step and best_step == step:
                        save(out / BEST)
        if bar is not None:
            bar.close()
        logger.close()
        if result_eval is None or evaluated_at != step:  # resumed at the very end, or nothing to train
            result_eval = run_eval()
        if saved_at != step and not (s.resume and step == int(ts["step"])):
            save(ckpt_dir)
        return {"top1": result_eval["top1"], "top5": result_eval["top5"], "loss": result_eval["loss"],
                "n": result_eval["n"], "dataset": s.dataset, "model": cfg.name or s.model,
                "checkpoint": str(ckpt_dir), "best": str(out / BEST), "best_top1": max(best_top1, 0.0),
                "steps": step, "epochs": round(step / steps_per_epoch, 3),
                "time_s": round(time.perf_counter() - t_start, 2),
                "img_per_s": round(train_images / train_time, 1) if train_time else None,
                "data_wait_frac": round(wait_time / train_time, 4) if train_time else None,
                "world_size": world, "per_class": result_eval["per_class"]}
    finally:
        D.cleanup()
