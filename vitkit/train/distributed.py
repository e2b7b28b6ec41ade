"""Data-parallel training: DDP (and FSDP2) set up from the environment torchrun provides.

    torchrun --nproc_per_node=N -m vitkit train ...

`setup()` reads RANK / WORLD_SIZE / LOCAL_RANK; with WORLD_SIZE > 1 it joins the process group (NCCL on GPUs,
gloo on CPU). Without them everything here is a no-op on a single process, so the loop has one code path.

How the work is split (loop.py): every rank draws the same global permutation of the training set for an
epoch from (seed, epoch); global batch b is permutation[b*B:(b+1)*B] and rank r takes its r-th contiguous
slice of it, then splits that into `accum` micro-batches. Gradients are averaged over ranks by DDP (or
reduce-scattered by FSDP), so one optimizer step sees the mean gradient of the same B examples whatever N is.
Only rank 0 prints, logs and writes checkpoints.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..runtime import resolve_device, unwrap  # noqa: F401 (re-exported for the training loop)


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    dev = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank, world, local_rank, local_world, dev)


def cleanup(synchronize: bool = True) -> None:
    """End the process group. After a run that ended well every rank first waits at a barrier, so that none tears
    its connections down while a peer is still sending; after an error (synchronize=False) no rank waits for peers
    that may never come. The caller frees what holds the group first (train: the model, FSDP's modules above all)."""
    if dist.is_initialized():
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_(t: torch.Tensor, op=None) -> torch.Tensor:
    """In-place sum (or `op`) over ranks; identity on one process."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def all_gather_object(obj) -> list:
    if dist.is_initialized() and dist.get_world_size() > 1:
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def broadcast_object(obj, src: int = 0):
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def wrap_model(model: torch.nn.Module, info: DistInfo, fsdp: bool = False) -> torch.nn.Module:
    """DDP around the model, or FSDP2 (`fully_shard` on each Transformer block -- each residual unit of a BiT
    ResNet -- then on the root)."""
    if fsdp:
        if not info.enabled:
            return model  # nothing to shard on one process
        from torch.distributed.fsdp import fully_shard

        blocks = model.blocks if hasattr(model, "blocks") else [unit for stage in model.stages for unit in stage]
        for blk in blocks:
            fully_shard(blk)
        fully_shard(model)
        return model
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)


def no_sync(model: torch.nn.Module, last_micro_step: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulated step."""
    if last_micro_step:
        return contextlib.nullcontext()
    if hasattr(model, "no_sync"):  # DDP
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        @contextlib.contextmanager
        def _fsdp():
            model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                model.set_requires_gradient_sync(True)
        return _fsdp()
    return contextlib.nullcontext()


def is_fsdp(model: torch.nn.Module) -> bool:
    return any(type(m).__name__.startswith("FSDP") for m in [unwrap(model)])


def full_model_state(model: torch.nn.Module) -> dict:
    """The complete (unsharded, CPU) model state dict, on every rank; works for plain, DDP and FSDP2 models."""
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(unwrap(model), options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def full_optimizer_state(model: torch.nn.Module, optimizer) -> dict:
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(unwrap(model), optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return optimizer.state_dict()


def load_optimizer_state(model: torch.nn.Module, optimizer, state: dict) -> None:
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(unwrap(model), optimizer, state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state)
