"""The training loop: one loop for every recipe, single process or distributed (see distributed.py).

    from vitkit.train.loop import TrainSettings, train
    result = train(TrainSettings(epochs=1, out="runs/x"))     # {"top1": ..., "checkpoint": "runs/x/checkpoint"}

`train(TrainSettings)` trains exactly the settings given: no recipe, config file or plan is applied (a
TrainSettings starts from the default recipe's values). `vitkit.train(dataset=..., ...)` (train/cli.py, `train`)
is the Python form of the `vitkit train` command: recipe < config file < the keys given, then the plan for an image
folder (plan.py), then this function.

Where a run is. OUT/run.json holds the exact command that gives the run again on any machine
(`TrainSettings.command()`: every planned value as a flag) and every setting as the run used it; the result dict
(and so `vitkit train --json`) has the same "command". OUT/checkpoint holds the weights and the training state,
OUT/best the best evaluation's weights, OUT/metrics.jsonl one record per step and evaluation.

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
import gc
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from ..errors import UserError
from ..flags import Number, check, device, flag, option, resumable
from ..runtime import autocast, resolve_precision, to_channels  # noqa: F401 (to_channels re-exported)
from . import distributed as D
from .objectives import get_objective
from .optim import build_optimizer, build_scheduler
from .recipes import LONG, WHAT, Recipe

CHECKPOINT, BEST, METRICS, TENSORBOARD, RUN_JSON = "checkpoint", "best", "metrics.jsonl", "tensorboard", "run.json"
GELU = {"tanh": "tanh", "erf": "none"}  # --gelu -> ViTConfig.gelu_approximate (torch's `approximate` argument)
EXEC, OUT = "execution", "output"


@dataclass
class TrainSettings(Recipe):
    """A recipe plus the run's own settings. Field names are the `vitkit train` flags (vitkit/flags.py); the
    `resumable` ones may differ from the saved settings when a run is resumed, every other one must match."""

    init: Optional[str] = flag(None, "fine-tune from this checkpoint (any format vitkit reads)", metavar="CKPT",
                               group=WHAT)
    teacher: Optional[str] = flag(None, "distil from this checkpoint: each target mixes the label with its class "
                                  "probabilities on the same augmented image (a comma list: their mean, an "
                                  "ensemble); see --distill-weight", metavar="CKPT[,CKPT]", group=WHAT)
    distill_weight: float = flag(0.5, "with --teacher: the teachers' share W of each target (1 - W: the label)",
                                 type=Number(float, min=0, max=1), metavar="W", group=WHAT)
    data_dir: Optional[str] = flag(None, "where the dataset files are", metavar="DIR", group=WHAT, resumable=True)
    micro_batch: Optional[int] = flag(None, "examples per forward pass (gradient accumulation)",
                                      type=Number(int, min=1), group=LONG, resumable=True)
    accum_steps: Optional[int] = flag(None, "micro-batches per optimizer step", type=Number(int, min=1), group=LONG,
                                      resumable=True)
    limit_train: Optional[int] = flag(None, "use only the first N training examples", type=Number(int, min=1),
                                      metavar="N", group=LONG)
    train_fraction: Optional[float] = flag(None, "use only the first fraction F of each class's training examples "
                                           "(class-balanced, nested: a smaller F's images are in every larger F's)",
                                           type=Number(float, above=0, max=1), metavar="F", group=LONG)
    limit_test: Optional[int] = flag(None, "evaluate on the first N test examples only", type=Number(int, min=1),
                                     metavar="N", group=LONG)
    # The first N of an image folder are its first classes; a random sample draws from all of them. Seed 0 for
    # both: the same images `vitkit fewshot --sample-train/--sample-test N` and the studies' transfer sets take.
    sample_train: Optional[int] = flag(None, "use only a fixed random subset of N training examples (seed 0; "
                                       "after --train-fraction)", type=Number(int, min=1), metavar="N", group=LONG)
    sample_test: Optional[int] = flag(None, "evaluate on a fixed random subset of N test examples (seed 0)",
                                      type=Number(int, min=1), metavar="N", group=LONG)
    seed: int = flag(0, "seed of the initialisation, the data order and the augmentation", type=Number(int, min=0),
                     group=EXEC)
    workers: int = flag(0, "data-loading processes (image folders)", type=Number(int, min=0), group=EXEC,
                        resumable=True)
    compile: bool = flag(False, "torch.compile the model", group=EXEC, resumable=True)
    grad_checkpointing: bool = flag(False, "recompute each block in the backward pass (less memory)", group=EXEC,
                                    resumable=True)
    # "auto": explicit softmax attention on CPU (faster there for training, see benchmarks/README.md), PyTorch SDPA
    # elsewhere (ViT.set_fused_attn); outputs agree within 1e-5 (tests/test_model.py). Loaded models use "auto" too.
    attention: str = flag("auto", "attention kernel: auto (explicit softmax on CPU, SDPA on GPU), sdpa or explicit",
                          choices=("auto", "sdpa", "explicit"), group=EXEC, resumable=True)
    fsdp: bool = flag(False, "FSDP2 (fully_shard) instead of DDP", group=EXEC)
    device: str = flag("auto", "auto (CUDA if available), cpu, cuda, cuda:N", type=device, metavar="DEVICE",
                       group=EXEC, resumable=True)
    out: Optional[str] = flag(None, "run directory (default: runs/<dataset>)", metavar="DIR", group=OUT,
                              resumable=True)
    resume: bool = flag(False, "continue the run in --out exactly", negatable=False, group=OUT, resumable=True)
    overwrite: bool = flag(False, "replace the run in --out (its checkpoints, metrics and TensorBoard logs)",
                           negatable=False, group=OUT, resumable=True)
    eval_every: Optional[int] = flag(None, "evaluate every N steps (default: every epoch)", type=Number(int, min=1),
                                     metavar="N", group=OUT, resumable=True)
    save_every: Optional[int] = flag(None, "checkpoint every N steps (default: at each evaluation)",
                                     type=Number(int, min=1), metavar="N", group=OUT, resumable=True)
    time_budget: float = flag(6.0, "minutes the training steps of a planned run (an image folder, no --steps or "
                              "--epochs) should fit on this machine: the plan times a step first, then halves the "
                              "batch unless given, then cuts the steps (0: no limit)", type=Number(float, min=0),
                              metavar="MIN", group=LONG, resumable=True)
    eval_batch_size: int = flag(256, "examples per forward pass when evaluating", type=Number(int, min=1),
                                group=OUT, resumable=True)
    progress: bool = flag(True, "a progress bar on a terminal, else a line per evaluation", group=OUT,
                          resumable=True)

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

    def command(self) -> str:
        """One `vitkit train` line that gives exactly these settings on any machine (`settings_from_args` of it
        returns them): `--recipe NAME`, each setting that differs from that recipe's value, and, for an image folder,
        each setting the plan chooses (plan.PLANNED: the length as --epochs and, where set, --steps; the batch, the
        resolution, the model, ...) whatever its value, so that running it again plans nothing and times nothing.
        --resume and --overwrite are left out (what to do with an earlier run, not what the run is); a setting
        that is not set (None) is left out, except --clip-grad, written as 0 where the recipe clips. The run
        directory's run.json and the `--json` summary carry it; a run's `precision` is the one `auto` resolved to."""
        import shlex

        from .plan import PLANNED
        from .recipes import RECIPES

        recipe = RECIPES.get(self.name) or RECIPES["default"]
        pinned = set(PLANNED) if self.dataset.lower().startswith("imagefolder:") else set()
        words = ["vitkit", "train", "--recipe", recipe.name]
        for f in dataclasses.fields(self):
            meta = f.metadata.get("flag", {})
            v = getattr(self, f.name)
            if not meta.get("cli", True) or f.name in ("resume", "overwrite"):
                continue
            was = getattr(recipe, f.name, f.default)
            if f.name not in pinned and v == was:
                continue
            if v is None:
                if f.name == "clip_grad" and was is not None:
                    words += [option(f.name), "0"]
                continue
            if isinstance(v, bool):
                words.append(option(f.name) if v else "--no-" + f.name.replace("_", "-"))
                continue
            text = ",".join(map(_flag_text, v)) if isinstance(v, (tuple, list)) else _flag_text(v)
            words += [option(f.name), shlex.quote(text)]
        return " ".join(words)

    def run_dir(self) -> Path:
        """--out, or runs/<dataset> with ':' and '/' made '_' (imagefolder:/data/x -> runs/imagefolder__data_x)."""
        return Path(self.out) if self.out else Path("runs") / self.dataset.replace(":", "_").replace("/", "_")


def _flag_text(v) -> str:
    """A value as its flag's text, parsed back to the same value (repr of a float round-trips exactly)."""
    return repr(float(v)) if isinstance(v, float) else str(v)


class TrainingDiverged(UserError):
    pass


# ------------------------------------------------------------------------------------------------------- data


def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The order of the training set in `epoch`: the same on every rank and after any resume."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def native_size(ds) -> Optional[int]:
    images = getattr(ds, "images", None)
    return int(images.shape[-1]) if images is not None else None


# ---------------------------------------------------------------------------------------------------- model


def default_config(name: str):
    """The config of variant `name` (ViT, hybrid or BiT) at its default image size; a UserError lists valid names."""
    from ..model import model_config

    try:
        return model_config(name)
    except ValueError as e:
        raise UserError(str(e)) from None


def build_model(s: TrainSettings, num_classes: int, data_channels: int, native: Optional[int], init_model=None):
    """(model, preprocess): a fresh variant, or the --init checkpoint (`init_model`, as loaded) adapted to the data
    (section 3.2)."""
    from ..data.preprocess import Preprocess
    from ..model import create_model, model_from_config
    from ..resnet import BiTConfig

    bit = isinstance(init_model.config if init_model is not None else default_config(s.model), BiTConfig)
    if bit and (s.classifier or s.pos_embed or s.gelu or s.dropout or s.drop_path):
        raise UserError("--classifier, --pos-embed, --gelu, --dropout and --drop-path are ViT settings; a BiT ResNet "
                        "has none")
    if bit and s.layer_decay != 1:
        raise UserError(f"--layer-decay {s.layer_decay:g}: decays the learning rate per Transformer block; a BiT "
                        "ResNet has none (use 1, the default)")
    if init_model is not None:
        from ..checkpoint.surgery import adapt

        if s.classifier or s.pos_embed or s.gelu:
            raise UserError("--classifier, --pos-embed and --gelu cannot change a pre-trained (--init) model")
        init = adapt(init_model, num_classes=num_classes, image_size=s.image_size)
        model, pre = init.model, init.preprocess  # preprocessing resized with the model
        # training-time regularisation belongs to this run, not to the checkpoint: a model pre-trained with
        # stochastic depth or dropout fine-tunes without them unless the flags ask (the official fine-tuning has none)
        rates = {} if bit else {k: v for k, v in (("dropout", s.dropout), ("drop_path", s.drop_path))
                                if v != getattr(model.cfg, k)}
        if rates:
            state = model.state_dict()
            model = model_from_config(model.cfg.replace(**rates))
            model.load_state_dict(state)
        return model, pre
    base = default_config(s.model)
    stride = 1 if bit else base.stem_stride  # a ResNet takes any size (global average pooling)
    image_size = s.image_size or (native if native and native % stride == 0 else base.image_size)
    vit_only = {} if bit else dict(classifier=s.classifier, pos_embed=s.pos_embed, dropout=s.dropout, drop_path=s.drop_path,
                                   **({} if s.gelu is None else {"gelu_approximate": GELU[s.gelu]}))
    try:
        model = create_model(s.model, num_classes=num_classes, image_size=image_size, in_chans=data_channels,
                             **vit_only)
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


# ------------------------------------------------------------------------------------------------ the run's parts


@dataclass
class Run:
    """What setup() decided: where the run lives, the processes, and what it starts from."""

    s: TrainSettings
    info: D.DistInfo
    out: Path
    saved: Optional[dict]  # train_state.pt of the run being resumed
    init_model: Any  # the --init checkpoint, loaded once
    teachers: dict = dataclasses.field(default_factory=dict)  # --teacher: {as given: LoadedModel, eval, no grad}
    # [{"teacher": as given, "sha256": teacher_digest}] per teacher, saved in train_state.pt ("teachers"), so that a
    # resume can tell that the weights at a teacher's path are still the ones the run started with
    teacher_digests: list = dataclasses.field(default_factory=list)
    # one entry per start or resume: {"from_step", "precision", "device"}, saved in train_state.pt ("segments"),
    # so that a run continued in another precision or on another device says which steps ran how
    segments: list = dataclasses.field(default_factory=list)
    t_start: float = dataclasses.field(default_factory=time.perf_counter)

    @property
    def ckpt_dir(self) -> Path:
        return self.out / CHECKPOINT


@dataclass
class Data:
    train: Any
    test: Any
    class_names: list
    n_train: int
    n_test: int


@dataclass
class Plan:
    """The batch arithmetic: what a step is and how many there are."""

    batch: int
    world: int
    per_rank: int
    micro: int
    accum: int
    steps_per_epoch: int
    total: int
    warmup: int
    eval_every: int
    save_every: int


@dataclass
class Parts:
    """What build() makes: the model (bare, compiled, wrapped), its optimizer and schedule, the augmentation.
    `core` is the ViT the checkpoint holds; `trained` what the objective optimises (the ViT, or MPPModel around
    it, see objectives.py), which `cmodel` compiles and `model` wraps for the processes."""

    core: Any
    trained: Any
    objective: Any
    cmodel: Any
    model: Any
    preprocess: Any
    optimizer: Any
    scheduler: Any
    aug: Any
    aug_gen: torch.Generator


@dataclass
class Progress:
    """Where the run is; fit() advances it, save() records it."""

    step: int = 0
    best_top1: float = -1.0
    best_step: Optional[int] = None
    saved_at: Optional[int] = None
    evaluated_at: Optional[int] = None
    last_eval: Optional[dict] = None
    train_time: float = 0.0
    train_images: int = 0
    wait_time: float = 0.0


# ------------------------------------------------------------------------------------------------------ setup


def _existing_run(out: Path) -> Optional[str]:
    """What in `out` belongs to an earlier run, or None."""
    from ..checkpoint.io import _existing

    for name in (CHECKPOINT, BEST):
        if _existing(out / name).exists():
            return f"a checkpoint ({out / name})"
    if (out / METRICS).is_file() and (out / METRICS).stat().st_size > 0:
        return f"metrics ({out / METRICS})"
    return None


def _remove_run(out: Path) -> None:
    """--overwrite: the earlier run's checkpoints, metrics and TensorBoard logs (nothing else in `out`)."""
    for name in (CHECKPOINT, BEST):
        for p in (out / name, out / f".{name}.old"):
            shutil.rmtree(p, ignore_errors=True)
    shutil.rmtree(out / TENSORBOARD, ignore_errors=True)
    if (out / METRICS).is_file():
        (out / METRICS).unlink()


def _check_resumed_settings(s: TrainSettings, saved: dict, model_config: Optional[dict] = None) -> TrainSettings:
    """The settings that define the run must be the saved ones; a UserError names those that differ, each with the
    value the run used. A setting saved as None (not given: the run used a default, such as the checkpoint's
    resolution) is compared with the value the run's model has (`model_config`, its checkpoint's config.json);
    given as that value, it is no change, and `s` comes back with the saved None. --recipe is compared where the
    run saved its recipe's name; --teacher is compared by its weights' hash (_check_teachers) where the run
    recorded one."""
    settings = saved.get("settings", {})
    was = TrainSettings.from_dict(settings).to_dict()
    now, free = s.to_dict(), resumable(TrainSettings)
    if "name" not in settings:  # saved before the recipe's name was: nothing to compare with
        free = free | {"name"}
    if saved.get("teachers"):  # the teachers' weights are compared instead of their paths
        free = free | {"teacher"}
    used = _used_defaults(model_config or {})
    differ, same = [], {}
    for k in now:
        if k in free or now[k] == was[k]:
            continue
        if was[k] is None and k in used and now[k] == used[k]:
            same[k] = None  # the value the run used: no change
            continue
        saved_as = (f"the run used {used[k]}" if was[k] is None and used.get(k) is not None
                    else "not given" if was[k] is None else was[k])
        differ.append(f"{'--recipe' if k == 'name' else option(k)} {now[k]} (saved: {saved_as})")
    if differ:
        can = sorted(option(k) for k in resumable(TrainSettings) - {"resume"})
        raise UserError(f"--resume: {'; '.join(differ)}; these define the run and cannot change when it is "
                        f"resumed (only {', '.join(can)} can); start a new run with another --out instead")
    return s.replace(**same) if same else s


def _used_defaults(model: dict) -> dict:
    """The values a run used for the settings it left to a default that its model records (config.json's
    "model"): its resolution, and for a ViT its classifier, position embedding and GELU."""
    used = {"image_size": model.get("image_size"), "classifier": model.get("classifier"),
            "pos_embed": model.get("pos_embed"),
            "gelu": {v: k for k, v in GELU.items()}.get(model.get("gelu_approximate"))}
    return {k: v for k, v in used.items() if v is not None}


def teacher_digest(teacher) -> str:
    """sha256 of what a teacher's targets are computed from, whatever format or name it was loaded from: its
    model config, its preprocessing and every weight (name, dtype, shape and bytes, in name order). Reading
    costs a pass over the weights (about 0.3 s for ViT-B/16's 344 MB)."""
    import hashlib

    h = hashlib.sha256()
    h.update(repr(teacher.model.cfg).encode())
    pre = teacher.preprocess
    h.update(json.dumps(pre.to_dict() if pre is not None else None, sort_keys=True).encode())
    for name, v in sorted(teacher.model.state_dict().items()):
        v = v.detach().cpu().contiguous()
        h.update(f"{name} {v.dtype} {tuple(v.shape)}".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _check_teachers(s: TrainSettings, saved: dict, digests: list, say: bool) -> None:
    """A resumed distillation must have the teachers it started with: their weights' hashes are compared (a path
    may hold other weights now; the same weights may have moved). A run saved before the hashes were recorded is
    resumed unchecked (its --teacher paths are the saved ones: _check_resumed_settings compares them), with a note;
    its checkpoints record the hashes from then on."""
    if "teachers" not in saved:
        if s.teacher:
            _say(f"vitkit train: note: this run's checkpoint records no hash of its teachers' weights (saved by an "
                 f"earlier vitkit): resuming without checking that --teacher {s.teacher} holds the weights it was "
                 f"started with; the hashes are recorded from now on", say)
        return
    was = list(saved["teachers"])
    if len(was) != len(digests):
        started = ",".join(d["teacher"] for d in was) or "none"
        raise UserError(f"--resume: --teacher {s.teacher or 'not given'}: {len(digests)} teacher(s), the run was "
                        f"started with {len(was)} ({started}); start a new run with another --out instead")
    for a, b in zip(was, digests):
        if a["sha256"] != b["sha256"]:
            moved = "" if a["teacher"] == b["teacher"] else f" (started with {a['teacher']})"
            raise UserError(f"--resume: --teacher {b['teacher']}{moved}: its weights are not the ones the run was "
                            f"started with (sha256 {b['sha256'][:12]}, saved: {a['sha256'][:12]}); put those weights "
                            f"back, or start a new run with another --out instead")


def setup(s: TrainSettings, info: D.DistInfo) -> Run:
    """The run directory (created, checked: a new run refuses an earlier one unless --overwrite), the state to
    resume from (its settings checked against `s`), the seeds and the --init checkpoint."""
    from ..checkpoint.io import TRAIN_STATE, _existing, load_train_state, read_config

    out = s.run_dir()
    ckpt_dir = out / CHECKPOINT
    if info.is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create output directory {out} ({e.strerror or e})") from None
        if not os.access(out, os.W_OK):
            raise UserError(f"output directory {out} is not writable")
        if (out / METRICS).exists() and not (out / METRICS).is_file():
            raise UserError(f"{out / METRICS} is not a file; the run writes its metrics there")
    saved = None
    if s.resume:
        if not (_existing(ckpt_dir) / TRAIN_STATE).exists():
            raise UserError(f"--resume: no checkpoint to resume in {out} (expected {ckpt_dir / TRAIN_STATE})")
        saved = load_train_state(ckpt_dir)
        try:
            model_config = read_config(ckpt_dir).get("model")
        except UserError:  # the weights' own check reports a broken checkpoint
            model_config = None
        s = _check_resumed_settings(s, saved, model_config if isinstance(model_config, dict) else None)
        was = saved.get("settings", {}).get("precision", s.precision)
        if was != s.precision:  # like --device: allowed (a bf16 run on a machine without bf16 would crawl), not exact
            _say(f"vitkit train: note: --resume continues a {was} run in {s.precision}; from step {saved['step']} on "
                 f"it is not the run an uninterrupted {was} run gives (within noise, not the same bits)", info.is_main)
    elif info.is_main:
        earlier = _existing_run(out)
        if earlier and not s.overwrite:
            raise UserError(f"{out} already holds a run: {earlier}; continue it with --resume, choose another "
                            f"--out, or replace it with --overwrite")
        if earlier:
            _remove_run(out)
    if info.is_main:
        write_run_json(out, s, resumed_at=None if saved is None else int(saved["step"]))
    D.barrier()

    segments = _segments(saved, s.precision, info.device.type)
    init_model = _seed_and_load_init(s)
    teachers, digests = _load_teachers(s, info.device)
    if saved is not None:
        _check_teachers(s, saved, digests, info.is_main)
    return Run(s, info, out, saved, init_model, teachers, digests, segments)


def write_run_json(out: Path, s: TrainSettings, resumed_at: Optional[int] = None) -> None:
    """OUT/run.json: how to get this run again, on any machine: {"command": s.command(), "settings": every setting
    as the run uses it, "vitkit": the version, "resumed_at": the step a resume continued from, or null}. Written
    when the run starts (atomically; again on each resume, with the settings the resume runs with); it is part of
    the run, so --overwrite replaces it with the new run's."""
    from ..flags import write_atomic
    from ..version import __version__

    record = {"command": s.command(), "settings": s.to_dict(), "vitkit": __version__, "resumed_at": resumed_at}
    try:
        write_atomic(out / RUN_JSON, lambda f: f.write((json.dumps(record, indent=1) + "\n").encode()))
    except OSError as e:
        raise UserError(f"cannot write {out / RUN_JSON} ({e.strerror or e})") from None


def _segments(saved: Optional[dict], precision: str, device: str) -> list:
    """The saved run's segments (a run saved before segments were recorded: one, from its settings) plus this
    one."""
    if saved is None:
        return [{"from_step": 0, "precision": precision, "device": device}]
    earlier = saved.get("segments") or [{"from_step": 0, "device": None,
                                         "precision": saved.get("settings", {}).get("precision")}]
    return [*earlier, {"from_step": int(saved["step"]), "precision": precision, "device": device}]


def _load_teachers(s: TrainSettings, device) -> tuple[dict, list]:
    """--teacher's checkpoints (names, paths or URLs; a comma list), in eval mode without gradients, on `device`;
    and their digests (teacher_digest), in the order given."""
    if not s.teacher:
        return {}, []
    from ..checkpoint.io import load

    specs = [t.strip() for t in s.teacher.split(",")]
    if not all(specs):
        raise UserError(f"--teacher {s.teacher!r}: an empty name in the comma list")
    teachers, digests = {}, []
    for spec in specs:
        t = load(spec)
        digests.append({"teacher": spec, "sha256": teacher_digest(t)})
        t.model.to(device).eval().requires_grad_(False)
        teachers[spec] = t
    return teachers, digests


def _seed_and_load_init(s: TrainSettings):
    """Seed every generator from --seed, then load the --init checkpoint (or None): the first steps of a run."""
    torch.manual_seed(s.seed)
    random.seed(s.seed)
    np.random.seed(s.seed)
    if not s.init:
        return None
    from ..checkpoint.io import load

    return load(s.init)


def _load_split(s: TrainSettings, split: str, init_model):
    """The whole split; an image folder is indexed to decode straight to the model's size and channels."""
    from ..data.datasets import load_dataset

    size = s.image_size or (init_model.config.image_size if init_model is not None else None)
    chans = init_model.config.in_chans if init_model is not None else 3
    if s.dataset.lower().startswith("imagefolder:") and size is None:
        size = default_config(s.model).image_size
    return load_dataset(s.dataset, split, data_dir=s.data_dir, image_size=size, channels=chans)


def load_data(s: TrainSettings, init_model) -> Data:
    """The train and test splits, cut to --train-fraction, --sample-train/--sample-test and --limit-train/test."""
    train_ds = _load_split(s, "train", init_model)
    if s.train_fraction is not None and s.train_fraction < 1:
        from ..data.datasets import subset_per_class

        train_ds = subset_per_class(train_ds, s.train_fraction)
    test_ds = _load_split(s, "test", init_model)
    if s.sample_train is not None or s.sample_test is not None:
        from ..data.datasets import random_indices, take

        if s.sample_train is not None:
            train_ds = take(train_ds, random_indices(len(train_ds.labels), s.sample_train))
        if s.sample_test is not None:
            test_ds = take(test_ds, random_indices(len(test_ds.labels), s.sample_test))
    n_train = len(train_ds.labels) if s.limit_train is None else min(s.limit_train, len(train_ds.labels))
    n_test = len(test_ds.labels) if s.limit_test is None else min(s.limit_test, len(test_ds.labels))
    return Data(train_ds, test_ds, list(train_ds.class_names), n_train, n_test)


def initial_model(s: TrainSettings):
    """(model, preprocess, class names): what train(s) starts from, seeded and built in the order train() does it
    (seeds, --init, data, model), so the same weights as its step 0; nothing is trained or written. A study's
    from-scratch baseline is this model at this seed."""
    init_model = _seed_and_load_init(s)
    train_ds = _load_split(s, "train", init_model)
    model, preprocess = build_model(s, len(train_ds.class_names), train_ds.channels, native_size(train_ds),
                                    init_model)
    return model, preprocess, list(train_ds.class_names)


def plan_steps(s: TrainSettings, n_train: int, world: int) -> Plan:
    """Global batch -> per process -> micro-batches; epochs -> steps; warmup, evaluation and checkpoint cadence."""
    B = s.batch_size
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
    eval_every = s.eval_every or steps_per_epoch
    return Plan(B, world, per_rank, micro, accum, steps_per_epoch, total, min(warmup, total), eval_every,
                s.save_every or eval_every)


# ------------------------------------------------------------------------------------------------------ build


def build(run: Run, data: Data, plan: Plan) -> tuple[Parts, Progress]:
    """The model (fresh, --init adapted, or the resumed weights), wrapped for the processes; the optimizer, the
    schedule and the augmentation, with their state restored when resuming."""
    from ..data.transforms import BatchAugment

    s, info = run.s, run.info
    core, preprocess = build_model(s, len(data.class_names), data.train.channels, native_size(data.train),
                                   run.init_model)
    if s.grad_checkpointing:
        core.set_grad_checkpointing(True)
    if hasattr(core, "set_fused_attn"):  # ViT only: a BiT ResNet has no attention
        core.set_fused_attn(s.attention)
    if run.saved is not None:  # weights before wrapping (FSDP shards what it is given)
        from safetensors.torch import load_file

        from ..checkpoint.io import WEIGHTS, _existing, load_state_dict_strict

        src = _existing(run.ckpt_dir)
        load_state_dict_strict(core, load_file(str(src / WEIGHTS)), str(src / WEIGHTS))
    objective = get_objective(s.objective)
    if run.teachers:
        from .objectives import Distill, check_teachers

        check_teachers(run.teachers, data.class_names)
        objective = Distill(list(run.teachers.values()), s.distill_weight)
    trained = objective.module(core, preprocess)
    if run.saved is not None:
        objective.load_extra_state(trained, run.saved.get("objective_state"))
    trained.to(info.device)
    cmodel = torch.compile(trained) if s.compile else trained
    model = D.wrap_model(cmodel if not s.fsdp else trained, info, fsdp=s.fsdp)
    if s.fsdp and s.compile:
        model = torch.compile(model)
    optimizer = build_optimizer(trained, s.optimizer, s.lr, s.weight_decay, s.betas, s.momentum,
                                fused=not s.fsdp and info.device.type in ("cpu", "cuda"), layer_decay=s.layer_decay,
                                depth=getattr(core.cfg, "depth", 0))
    scheduler = build_scheduler(optimizer, plan.warmup, plan.total, s.schedule)
    aug_gen = torch.Generator().manual_seed(s.seed * 7919 + 17 + info.rank)
    aug = BatchAugment(core.cfg.image_size, len(data.class_names), crop=s.crop,
                       flip=s.flip and getattr(data.train, "flip_ok", True), randaugment=s.randaugment,
                       mixup=s.mixup, cutmix=s.cutmix, label_smoothing=s.label_smoothing, seed=s.seed,
                       erase=s.random_erase, pad=s.crop_pad)
    parts = Parts(core, trained, objective, cmodel, model, preprocess, optimizer, scheduler, aug, aug_gen)
    return parts, restore(run, parts, plan)


def restore(run: Run, parts: Parts, plan: Plan) -> Progress:
    """The saved optimizer, schedule, step, best and random states (resume), or a fresh start."""
    ts = run.saved
    if ts is None:
        return Progress()
    if int(ts["step"]) > plan.total:
        raise UserError(f"--resume: the checkpoint is at step {ts['step']}, past the {plan.total} steps asked for; "
                        f"give more --steps or --epochs")
    D.load_optimizer_state(parts.model, parts.optimizer, ts["optimizer"])
    parts.scheduler.load_state_dict(ts["scheduler"])
    rngs = ts["rng"]
    if len(rngs) == plan.world:
        set_rng_state(rngs[run.info.rank], parts.aug_gen)
    else:
        _say(f"vitkit: note: resuming with {plan.world} processes, saved with {len(rngs)}: random streams restart "
             f"from the seed", run.info.is_main)
    step = int(ts["step"])
    return Progress(step=step, best_top1=float(ts["best_top1"]), best_step=ts.get("best_step"), saved_at=step)


# -------------------------------------------------------------------------------------------- evaluate, save


def evaluate(run: Run, data: Data, parts: Parts) -> dict:
    """Top-1/top-5/loss on the test split (for MPP: of the corrupted patches' colours, see objectives.py); each
    process takes its share and the counts are summed."""
    s, info = run.s, run.info
    evaluate_counts, summarize = parts.objective.evaluate_counts, parts.objective.summarize
    if s.fsdp and info.enabled:  # every rank runs the sharded model on all the data (collectives align)
        counts = evaluate_counts(parts.model, data.test, torch.arange(data.n_test), s.eval_batch_size, s.precision,
                                 parts.preprocess, info.device)
        for mod in parts.core.modules():  # the root stays unsharded after a forward without backward
            if hasattr(mod, "reshard"):
                mod.reshard()
    else:
        counts = evaluate_counts(parts.cmodel, data.test, torch.arange(data.n_test)[info.rank::info.world_size],
                                 s.eval_batch_size, s.precision, parts.preprocess, info.device)
        for v in counts.values():
            D.all_reduce_(v)
    return summarize(counts, data.class_names)


def _all_finite(run: Run, parts: Parts) -> bool:
    """Every weight finite, on every process (each checks its own FSDP shards)."""
    bad = sum(int((~torch.isfinite(p.to_local() if hasattr(p, "to_local") else p)).sum())
              for p in parts.trained.parameters())
    return float(D.all_reduce_(torch.tensor(float(bad), device=run.info.device))) == 0


def save(path: Path, run: Run, data: Data, plan: Plan, parts: Parts, progress: Progress) -> None:
    """A checkpoint with the full training state; refuses non-finite weights (nothing saved is ever NaN)."""
    from ..checkpoint.io import save_checkpoint

    if not _all_finite(run, parts):
        raise TrainingDiverged(f"the weights are not finite after step {progress.step}; stopping without saving "
                               f"them ({_last_good(run, progress)}); try a lower --lr or --clip-grad 1")
    step, model = progress.step, parts.model
    state = {"step": step, "epoch": step // plan.steps_per_epoch, "position": step % plan.steps_per_epoch,
             "optimizer": D.full_optimizer_state(model, parts.optimizer), "scheduler": parts.scheduler.state_dict(),
             "best_top1": progress.best_top1, "best_step": progress.best_step,
             "rng": D.all_gather_object(rng_state(parts.aug_gen)), "settings": run.s.to_dict(),
             "world_size": plan.world, "objective_state": parts.objective.extra_state(parts.trained),
             "segments": run.segments, "teachers": run.teacher_digests}
    tosave = parts.core
    if D.is_fsdp(model):  # collectives on every rank; the full tensors land on rank 0 only
        full = D.full_model_state(model)
        if run.info.is_main:
            from ..model import model_from_config

            tosave = model_from_config(parts.core.cfg)
            tosave.load_state_dict(full)
    if run.info.is_main:
        try:
            save_checkpoint(path, tosave, parts.preprocess, data.class_names, train_state=state)
        except (OSError, RuntimeError) as e:  # disk full: torch.save says "unexpected pos ..."
            why = e.strerror if isinstance(e, OSError) and e.strerror else "the write was cut short (disk full?)"
            raise UserError(f"cannot write the checkpoint {path}: {why}; {_last_good(run, progress)}") from None
    D.barrier()


def _last_good(run: Run, progress: Progress) -> str:
    if progress.saved_at is None:
        return "no checkpoint was written"
    return f"the last good checkpoint is {run.ckpt_dir} (step {progress.saved_at})"


# -------------------------------------------------------------------------------------------------------- fit


def train_step(run: Run, parts: Parts, plan: Plan, batches) -> tuple[float, float, float]:
    """One optimizer step on the next `accum` micro-batches: (mean loss over processes, gradient norm, seconds
    spent waiting for data). Raises TrainingDiverged before the update if the loss or the gradient is not finite.
    The objective (objectives.py) makes the model input and the loss; MPP draws its corruption from aug_gen."""
    s, dev, model, objective = run.s, run.info.device, parts.model, parts.objective
    wait = 0.0
    loss_sum = torch.zeros((), device=dev)
    for m in range(plan.accum):
        tw = time.perf_counter()
        images, labels = next(batches)
        images, targets = parts.aug(to_channels(images, parts.core.cfg.in_chans), labels, generator=parts.aug_gen)
        x = objective.inputs(images, parts.preprocess).to(dev, non_blocking=True)
        targets = targets.to(dev, non_blocking=True)
        wait += time.perf_counter() - tw
        with D.no_sync(model, m == plan.accum - 1):
            with autocast(dev, s.precision):
                loss = objective.loss(model, x, targets, parts.aug_gen) / plan.accum
            loss.backward()
        loss_sum += loss.detach()
    params = [p for p in parts.trained.parameters() if p.requires_grad]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, s.clip_grad or float("inf")))
    loss_val = float(D.all_reduce_(loss_sum) / plan.world)
    return loss_val, grad_norm, wait


def fit(run: Run, data: Data, plan: Plan, parts: Parts, progress: Progress, logger: "Logger",
        on_step: Optional[Callable[[dict], None]] = None) -> None:
    """Steps from progress.step to plan.total: evaluate every eval_every, checkpoint every save_every (and the
    best). `on_step(record)` is called after each step with the logged record."""
    from ..data.datasets import iterate_batches

    s, main, B = run.s, run.info.is_main, plan.batch
    bar = _progress(plan.total, progress.step, main and s.progress and sys.stderr.isatty())
    parts.model.train()
    while progress.step < plan.total:
        epoch, pos = divmod(progress.step, plan.steps_per_epoch)
        perm = epoch_permutation(s.seed, epoch, data.n_train)
        n_steps = min(plan.steps_per_epoch - pos, plan.total - progress.step)
        local = perm[pos * B:(pos + n_steps) * B].view(n_steps, plan.world, plan.per_rank)[:, run.info.rank]
        batches = iterate_batches(data.train, local.reshape(-1), plan.micro, num_workers=s.workers)
        for _ in range(n_steps):
            t0 = time.perf_counter()
            loss, grad_norm, wait = train_step(run, parts, plan, batches)
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                what = f"loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {grad_norm}"
                raise TrainingDiverged(f"{what} at step {progress.step + 1}; stopping ({_last_good(run, progress)}); "
                                       f"try a lower --lr or --clip-grad 1")
            lr = max(g["lr"] for g in parts.optimizer.param_groups)  # the head's, with --layer-decay
            parts.optimizer.step()
            parts.scheduler.step()
            parts.optimizer.zero_grad(set_to_none=True)
            progress.step += 1
            dt = time.perf_counter() - t0
            progress.train_time += dt
            progress.train_images += B
            progress.wait_time += wait
            record = {"step": progress.step, "epoch": round(progress.step / plan.steps_per_epoch, 4), "loss": loss,
                      "lr": lr, "grad_norm": grad_norm, "img_per_s": round(B / dt, 1),
                      "data_wait_frac": round(wait / dt, 4)}
            logger.log(record)
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", img_s=f"{B / dt:.0f}", refresh=False)
                bar.update(1)
            if on_step is not None:
                on_step(record)
            after_step(run, data, plan, parts, progress, logger, bar, loss)
    if bar is not None:
        bar.close()


def after_step(run: Run, data: Data, plan: Plan, parts: Parts, progress: Progress, logger: "Logger", bar,
               loss: float) -> None:
    """Evaluate and checkpoint when the cadence (or the last step) says so."""
    step, last = progress.step, progress.step == plan.total
    if step % plan.eval_every == 0 or last:
        r = evaluate(run, data, parts)
        progress.last_eval, progress.evaluated_at = r, step
        parts.model.train()
        logger.log({"step": step, "epoch": round(step / plan.steps_per_epoch, 4), "top1": r["top1"],
                    "top5": r["top5"], "eval_loss": r["loss"]})
        msg = (f"step {step}/{plan.total} epoch {step / plan.steps_per_epoch:.2f}: loss {loss:.4f} test top1 "
               f"{100 * r['top1']:.2f}% top5 {100 * r['top5']:.2f}% "
               f"({progress.train_images / max(progress.train_time, 1e-9):.0f} img/s, "
               f"{time.perf_counter() - run.t_start:.0f}s)")
        if bar is not None:
            bar.write(msg, file=sys.stderr)
        else:
            _say(msg, run.info.is_main)
        if r["top1"] > progress.best_top1:
            progress.best_top1, progress.best_step = r["top1"], step
    if step % plan.save_every == 0 or last:
        save(run.ckpt_dir, run, data, plan, parts, progress)
        progress.saved_at = step
        if progress.evaluated_at == step and progress.best_step == step:
            save(run.out / BEST, run, data, plan, parts, progress)


# ------------------------------------------------------------------------------------------------------ train


def train(s: TrainSettings, on_step: Optional[Callable[[dict], None]] = None) -> dict:
    """Train (or fine-tune, or resume) as `s` says; returns the final evaluation and where the checkpoint is.

    setup (run directory, saved state, seeds, --init) -> load_data -> plan_steps -> build -> fit -> evaluate.
    `on_step(record)`, if given, is called after every optimizer step with the record written to metrics.jsonl."""
    check(s)
    for a, b in (("limit_train", "sample_train"), ("limit_test", "sample_test")):
        if getattr(s, a) is not None and getattr(s, b) is not None:
            raise UserError(f"{option(a)} (the first N) and {option(b)} (a random N) both choose the examples; "
                            f"give one")
    get_objective(s.objective).check(s)
    info = D.setup(s.device)
    # "auto" becomes what this machine computes fast; the run saves (and a resume keeps) the concrete value
    s = s.replace(precision=resolve_precision(s.precision, info.device))
    try:
        out = _train(s, info, on_step)
    except BaseException:
        D.cleanup(synchronize=False)
        raise
    # the run's model, optimizer and data went with _train's frame; collect what reference cycles keep (FSDP's
    # modules hold their process group) while the group still exists: torn down after it, a gloo rank sometimes
    # aborted at exit ("terminate called without an active exception", about 1 run in 15 with FSDP on 2 processes).
    # One process has no group to protect and skips the collection (0.1 s).
    if info.enabled:
        gc.collect()
    D.cleanup()
    return out


def _train(s: TrainSettings, info: D.DistInfo, on_step) -> dict:
    run = setup(s, info)
    s = run.s  # a resumed run's settings, as the check settled them
    data = load_data(s, run.init_model)
    plan = plan_steps(s, data.n_train, info.world_size)
    parts, progress = build(run, data, plan)
    resumed_at = progress.step if s.resume else None
    logger = Logger(run.out, info.is_main, resumed_at)
    cfg = parts.core.cfg
    _say(f"vitkit train: {cfg.name or s.model} ({parts.core.num_params() / 1e6:.2f}M params, {cfg.image_size} px) "
         f"on {s.dataset} ({data.n_train} train / {data.n_test} test, {len(data.class_names)} classes), "
         f"{plan.total} steps of {plan.batch} ({plan.world} proc x {plan.accum} x {plan.micro}), {s.optimizer} "
         f"lr {s.lr:g}" + (f" (layer decay {s.layer_decay:g})" if s.layer_decay != 1 else "")
         + f", {s.precision}, {info.device}"
         + (", masked patch prediction (labels unused)" if s.objective == "mpp" else "")
         + (f", distilling {len(run.teachers)} teacher{'s' if len(run.teachers) > 1 else ''} (weight "
            f"{s.distill_weight:g})" if run.teachers else ""), info.is_main)
    try:
        fit(run, data, plan, parts, progress, logger, on_step)
    finally:
        logger.close()
    if progress.last_eval is None or progress.evaluated_at != progress.step:  # resumed at the end
        progress.last_eval, progress.evaluated_at = evaluate(run, data, parts), progress.step
    if progress.saved_at != progress.step:
        save(run.ckpt_dir, run, data, plan, parts, progress)
    return result(run, data, plan, parts, progress)


def result(run: Run, data: Data, plan: Plan, parts: Parts, progress: Progress) -> dict:
    r, p = progress.last_eval, progress
    return {"top1": r["top1"], "top5": r["top5"], "loss": r["loss"], "n": r["n"], "n_train": data.n_train,
            "dataset": run.s.dataset,
            "model": parts.core.cfg.name or run.s.model, "checkpoint": str(run.ckpt_dir),
            "best": str(run.out / BEST), "best_top1": max(p.best_top1, 0.0), "steps": p.step,
            "epochs": round(p.step / plan.steps_per_epoch, 3), "time_s": round(time.perf_counter() - run.t_start, 2),
            "img_per_s": round(p.train_images / p.train_time, 1) if p.train_time else None,
            "data_wait_frac": round(p.wait_time / p.train_time, 4) if p.train_time else None,
            "world_size": plan.world, "objective": run.s.objective, "command": run.s.command(),
            "per_class": r["per_class"]}
