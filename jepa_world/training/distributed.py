"""torchrun / DDP / FSDP2 helpers.

``init_distributed`` reads the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK) and
picks NCCL on CUDA, gloo on CPU. A plain ``python script.py`` is a world of one and
needs no process group. ``finish_distributed`` ends a run the way that is reliable
with gloo on this machine (REFERENCE 7): barrier, destroy the group, flush, ``os._exit``.
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> this rank's GPU if CUDA is available, else CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device=cuda requested but CUDA is not available; use device=cpu or device=auto")
        return torch.device("cuda", local_rank)
    if device != "cpu":
        raise ValueError(f"unknown device {device!r}; expected auto, cpu or cuda")
    return torch.device("cpu")


def export_slurm_environment() -> None:
    """Under a multi-task SLURM job (e.g. the submitit launcher) without torchrun, set the
    torch.distributed variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) from SLURM's."""
    if "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    try:
        from submitit.helpers import TorchDistributedEnvironment
    except ImportError as err:
        raise RuntimeError("a multi-task SLURM job needs submitit to set up torch.distributed: pip install -e '.[slurm]'") from err
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def init_distributed(device: str = "auto") -> DistInfo:
    export_slurm_environment()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=resolved if resolved.type == "cuda" else None)
        log.info("initialised %s process group: rank %d of %d", backend, rank, world_size)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=resolved)


def wrap_ddp(module: nn.Module, info: DistInfo) -> nn.Module:
    if not info.is_distributed:
        return module
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def apply_fsdp2(module: nn.Module, info: DistInfo, block_lists: list[nn.ModuleList], forward_only: bool = False) -> nn.Module:
    """Shard each transformer block, then the root (FSDP2 ``fully_shard``), over all ranks.

    ``forward_only``: the module never runs backward (the EMA target encoder). FSDP2 keeps a root's
    parameters gathered after forward, expecting backward to free them; without backward they
    would stay gathered, and the next forward would reuse that stale copy instead of the
    EMA-updated shards. So the root of a forward-only module reshards after every forward.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(info.device.type, (info.world_size,))
    for blocks in block_lists:
        for block in blocks:
            fully_shard(block, mesh=mesh)
    fully_shard(module, mesh=mesh, reshard_after_forward=True if forward_only else None)
    return module


def unwrap(module: nn.Module) -> nn.Module:
    """The user module inside DDP / torch.compile wrappers."""
    while True:
        if isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        elif hasattr(module, "_orig_mod"):
            module = module._orig_mod
        else:
            return module


def all_reduce_mean(value: Tensor, info: DistInfo) -> Tensor:
    if not info.is_distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.AVG if info.device.type == "cuda" else dist.ReduceOp.SUM)
    return value if info.device.type == "cuda" else value / info.world_size


def barrier(info: DistInfo) -> None:
    if info.is_distributed:
        dist.barrier()


def finish_distributed(exit_code: int = 0) -> None:
    """Tear down cleanly. Under torchrun this exits the process (gloo can abort in atexit otherwise).

    On failure (``exit_code != 0``) there is no barrier: the other ranks may be gone.
    """
    if not dist.is_initialized():
        return
    if exit_code == 0:
        dist.barrier()
    dist.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
