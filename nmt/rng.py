"""Random state for exact resume: seeding, and saving/restoring every rank's RNG streams."""

from __future__ import annotations

import random
from typing import Any

import torch

from nmt.distributed import DistInfo


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def gather_rng_states(info: DistInfo) -> list[dict[str, Any]]:
    """Every rank's random state, in rank order (collective: all ranks must call it)."""
    state = _rng_state()
    if not info.enabled:
        return [state]
    states: list[Any] = [None] * info.world_size
    torch.distributed.all_gather_object(states, state)
    return states


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
