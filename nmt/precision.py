"""Precision and device policy, decided once per process and device.

Callers ask here which precision to use and pass the answer down as plain values, so no model
or decoding module needs to know about CPU flags or GPU generations.

- `DeviceCaps` is what the hardware can do fast; `device_caps(device)` reads it (once per
  device), and tests build one by hand for hardware that is not present.
- `training_precision` / `decoding_precision` turn a configured precision into the one used.
- `prepare_device` sets per-process CUDA state (current device, TF32 matmuls).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Literal

import torch

from nmt.cpu import has_native_bf16

log = logging.getLogger(__name__)

TrainingPrecision = Literal["bf16", "fp16", "fp32"]
DecodingPrecision = Literal["bf16", "fp32"]


class PrecisionError(ValueError):
    """A precision this device cannot run."""


@dataclass(frozen=True)
class DeviceCaps:
    """What one device computes fast.

    native_bf16: bf16 matmuls run in hardware (CPU: AVX512-BF16/AMX/Arm BF16; CUDA: compute
    capability 8.0 or newer). Where bf16 is emulated (AVX2-only CPUs, V100/T4/P100) it is
    slower than fp32, so it is never chosen automatically there.
    """

    device_type: str
    native_bf16: bool
    capability: tuple[int, int] | None = None  # CUDA compute capability

    @classmethod
    def cuda(cls, capability: tuple[int, int]) -> DeviceCaps:
        """A CUDA device of this compute capability (bf16 tensor cores from Ampere, 8.0)."""
        return cls("cuda", native_bf16=capability >= (8, 0), capability=capability)


@functools.cache
def device_caps(device: torch.device) -> DeviceCaps:
    """The capabilities of `device` (cached: the hardware does not change within a process)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return DeviceCaps.cuda(torch.cuda.get_device_capability(index))
    if device.type == "cpu":
        return DeviceCaps("cpu", native_bf16=has_native_bf16())
    return DeviceCaps(device.type, native_bf16=False)


def training_precision(requested: str, caps: DeviceCaps) -> TrainingPrecision:
    """The precision a run trains in.

    auto: bf16 where it is native (CPUs with bf16 instructions, Ampere and newer GPUs), fp16
    with loss scaling on older GPUs, fp32 on other CPUs. `torch.cuda.is_bf16_supported()` is
    not used: it reports emulated bf16 as supported.
    """
    if requested == "auto":
        if caps.native_bf16:
            return "bf16"
        return "fp16" if caps.device_type == "cuda" else "fp32"
    if requested == "fp16" and caps.device_type != "cuda":
        raise PrecisionError("train.precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    if requested == "bf16" and not caps.native_bf16:
        log.warning(
            "train.precision bf16: this %s has no native bf16, so bf16 matmuls are "
            "emulated and slower than fp32 (precision auto avoids it)",
            caps.device_type,
        )
    if requested not in ("bf16", "fp16", "fp32"):
        raise PrecisionError(f"unknown precision {requested!r}; choose auto, bf16, fp16 or fp32")
    return requested  # type: ignore[return-value]


def decoding_precision(requested: str, caps: DeviceCaps) -> DecodingPrecision:
    """The precision a translator decodes in: bf16 only when asked for (it changes output
    slightly); where bf16 is emulated it is still honoured, with one warning per process."""
    if requested not in ("bf16", "fp32"):
        raise PrecisionError(f"decoding precision must be fp32 or bf16, got {requested!r}")
    if requested == "bf16" and not caps.native_bf16:
        _warn_emulated_decoding(caps.device_type)
    return requested  # type: ignore[return-value]


@functools.cache
def _warn_emulated_decoding(device_type: str) -> None:
    log.warning(
        "decode.precision bf16: this %s has no native bf16, so bf16 decoding is "
        "emulated and slower than fp32; use fp32 here",
        device_type,
    )


def recurrent_fp32(caps: DeviceCaps) -> bool:
    """Whether recurrent layers leave autocast and run in float32 on this device.

    CUDA: PyTorch's autocast wrapper of the cuDNN RNN casts to fp16 even under bf16 autocast
    (fp16 range without the loss scaling a bf16 run does not do), so there they run in fp32.
    CPU: oneDNN's bf16 RNN kernels need native bf16 instructions (on AVX2-only CPUs they fail
    to build their primitive), so only CPUs with them run the recurrent layers in bf16.
    """
    return caps.device_type == "cuda" or (caps.device_type == "cpu" and not caps.native_bf16)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a training precision; None for fp32 (no autocast)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def prepare_device(device: torch.device) -> None:
    """Per-process CUDA set-up before any work on `device`.

    Makes `device` the current CUDA device, so implicit current-device work (pinned memory,
    library handles) does not create a context on GPU 0, and lets fp32 matmuls and
    convolutions use TF32 tensor cores (validation, fp32 decoding and serving): the accuracy
    of fp32 reductions with a 10-bit mantissa in the products, standard for NMT inference.
    A no-op on CPU, where it would change nothing.
    """
    if device.type != "cuda":
        return
    if device.index is not None:
        torch.cuda.set_device(device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
