"""Random state for exact resume: seeding, and saving/restoring every rank's RNG streams.

Each rank saves the generators it uses: Python's, torch's CPU generator and, on CUDA, the
generator of its own device only (saving all visible GPUs' would tie a checkpoint to the GPU
count of the machine that wrote it). States are CPU ByteTensors, as torch requires on restore.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import torch

from nmt.distributed import DistInfo

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def gather_rng_states(info: DistInfo, device: torch.device) -> list[dict[str, Any]]:
    """Every rank's random state, in rank order (collective: all ranks must call it)."""
    state = rng_state(device)
    if not info.enabled:
        return [state]
    states: list[Any] = [None] * info.world_size
    torch.distributed.all_gather_object(states, state)
    return states


def rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore a state saved by `rng_state` (or by older versions, which saved the list of all
    visible GPUs' generators), whatever device the tensors were loaded onto."""
    torch.set_rng_state(_cpu_bytes(state["torch"]))
    random.setstate(_as_tuple(state["python"]))
    if device.type != "cuda" or "cuda" not in state:
        return
    cuda = _this_device_state(state["cuda"], device)
    if cuda is not None:
        torch.cuda.set_rng_state(_cpu_bytes(cuda), device)


def _this_device_state(saved: Any, device: torch.device) -> torch.Tensor | None:
    if isinstance(saved, torch.Tensor):
        return saved
    index = device.index or 0
    if index < len(saved):
        return saved[index]
    log.warning(
        "the checkpoint has no CUDA random state for %s: its random stream will differ", device
    )
    return None


def _cpu_bytes(state: torch.Tensor) -> torch.Tensor:
    """torch's set_rng_state accepts only a CPU ByteTensor."""
    return state.detach().to("cpu", torch.uint8)


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
