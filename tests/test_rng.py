"""Random state for exact resume: saved per rank and per device, restorable after any load."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from nmt.rng import _this_device_state, rng_state, set_rng_state


def _draws() -> tuple[list[float], float]:
    return torch.rand(3).tolist(), random.random()


def test_state_round_trip_through_a_file(tmp_path: Path) -> None:
    cpu = torch.device("cpu")
    torch.manual_seed(5)
    random.seed(5)
    state = rng_state(cpu)
    assert "cuda" not in state  # a CPU run saves no GPU generators
    expected = _draws()
    torch.save(state, tmp_path / "rng.pt")
    set_rng_state(torch.load(tmp_path / "rng.pt", map_location="cpu", weights_only=True), cpu)
    assert _draws() == expected


def test_state_loaded_onto_another_device_is_restorable(tmp_path: Path) -> None:
    """Loading a checkpoint with map_location=<GPU> moves RNG ByteTensors off the CPU, and
    torch.set_rng_state only accepts CPU ByteTensors (reproduced here with the meta device,
    the one non-CPU device every machine has). Checkpoints are therefore always loaded to the
    CPU (see test_train's resume tests) and states are converted back on restore."""
    torch.save(rng_state(torch.device("cpu")), tmp_path / "rng.pt")
    on_meta = torch.load(tmp_path / "rng.pt", map_location="meta", weights_only=True)
    with pytest.raises(TypeError, match="ByteTensor"):
        torch.set_rng_state(on_meta["torch"])
    as_int64 = torch.load(tmp_path / "rng.pt", weights_only=True)
    as_int64["torch"] = as_int64["torch"].long()  # any dtype or layout: converted on restore
    set_rng_state(as_int64, torch.device("cpu"))


def test_cuda_state_is_this_devices_own() -> None:
    """A rank restores its own device's generator; older checkpoints saved every visible GPU's
    generator as a list, from which the device's own entry is taken when it exists."""
    mine = torch.zeros(8, dtype=torch.uint8)
    assert _this_device_state(mine, torch.device("cuda", 3)) is mine
    saved_all = [torch.full((8,), i, dtype=torch.uint8) for i in range(4)]
    assert _this_device_state(saved_all, torch.device("cuda", 2)) is saved_all[2]
    assert _this_device_state(saved_all, torch.device("cuda")) is saved_all[0]
    assert _this_device_state(saved_all[:1], torch.device("cuda", 3)) is None  # fewer GPUs
