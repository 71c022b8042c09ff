"""The precision policy: what `auto` picks on each kind of device, and when it refuses."""

from __future__ import annotations

import pytest
import torch

from nmt.precision import (
    DeviceCaps,
    PrecisionError,
    autocast_dtype,
    decoding_precision,
    device_caps,
    training_precision,
)

# Compute capabilities of common GPUs: bf16 tensor cores only from Ampere (8.0) on; older cards
# can create bf16 tensors (torch.cuda.is_bf16_supported() says True) but emulate the math.
GPUS = {
    "P100": ((6, 0), "fp16"),
    "V100": ((7, 0), "fp16"),
    "T4": ((7, 5), "fp16"),
    "RTX 2080": ((7, 5), "fp16"),
    "A100": ((8, 0), "bf16"),
    "A10G / RTX 3090": ((8, 6), "bf16"),
    "L4 / RTX 4090": ((8, 9), "bf16"),
    "H100": ((9, 0), "bf16"),
    "B200": ((10, 0), "bf16"),
}


@pytest.mark.parametrize("gpu", GPUS)
def test_auto_picks_bf16_only_on_gpus_with_native_bf16(gpu: str) -> None:
    capability, expected = GPUS[gpu]
    caps = DeviceCaps.cuda(capability)
    assert training_precision("auto", caps) == expected
    assert training_precision("fp32", caps) == "fp32"
    assert training_precision("fp16", caps) == "fp16"


def test_auto_on_cpus_follows_native_bf16() -> None:
    assert training_precision("auto", DeviceCaps("cpu", native_bf16=True)) == "bf16"
    assert training_precision("auto", DeviceCaps("cpu", native_bf16=False)) == "fp32"
    with pytest.raises(PrecisionError, match="fp16 needs a CUDA device"):
        training_precision("fp16", DeviceCaps("cpu", native_bf16=True))


def test_explicit_emulated_bf16_is_kept_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    assert training_precision("bf16", DeviceCaps.cuda((7, 0))) == "bf16"
    assert "emulated" in caplog.text
    assert decoding_precision("bf16", DeviceCaps("cpu", native_bf16=False)) == "bf16"
    with pytest.raises(PrecisionError, match="fp32 or bf16"):
        decoding_precision("fp16", DeviceCaps("cpu", native_bf16=True))


def test_this_cpu_and_autocast_dtypes() -> None:
    caps = device_caps(torch.device("cpu"))
    assert caps.device_type == "cpu" and caps.capability is None
    assert autocast_dtype("bf16") is torch.bfloat16 and autocast_dtype("fp16") is torch.float16
    assert autocast_dtype("fp32") is None
