"""Process-group set-up for `torchrun` (NCCL on CUDA, gloo on CPU) and small collectives.

Long one-sided waits (rank 0 preparing a large corpus or validating while the others wait)
go through a separate gloo group with a long timeout (`wait_for_main`): NCCL's collectives
time out after 10 minutes by default and its watchdog then aborts the whole job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

# How long ranks wait for rank 0's data preparation or validation before giving up.
WAIT_FOR_MAIN_TIMEOUT = timedelta(hours=12)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    wait_group: Any | None = None  # gloo group for long waits (see module docstring)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def local_cuda_index(local_rank: int) -> int:
    """This rank's GPU: its local rank, or the only visible GPU when the launcher binds one GPU
    per process through CUDA_VISIBLE_DEVICES."""
    return local_rank % max(torch.cuda.device_count(), 1)


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_cuda_index(local_rank))
        dist.init_process_group(backend=backend)
    wait_group = dist.new_group(backend="gloo", timeout=WAIT_FOR_MAIN_TIMEOUT)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, wait_group=wait_group)


def close_distributed(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wait_for_main(info: DistInfo) -> None:
    """A barrier that may wait hours: the other ranks call it while rank 0 works alone."""
    if info.enabled:
        dist.barrier(group=info.wait_group)


def sum_across(info: DistInfo, value: float, device: torch.device) -> float:
    """Sum a number over all ranks (identity when alone)."""
    if not info.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item())


def sum_tensor_across(info: DistInfo, tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks in place, without a host sync (identity when alone)."""
    if info.enabled:
        dist.all_reduce(tensor)
    return tensor
