"""What the host CPU does fast: bf16 matmuls are a speed-up only with native bf16 instructions."""

from __future__ import annotations

import functools
import platform

import torch


@functools.cache
def has_native_bf16() -> bool:
    """True when the CPU has bf16 matmul instructions (AVX512-BF16 or AMX on x86, BF16 on Arm).

    With them a bf16 matmul runs about 2-3x faster than fp32; without them (AVX2-only CPUs such
    as AMD Zen 3 and older Intel) it is emulated, up to 70x slower than fp32, so choosing bf16
    there would turn mixed precision into a slowdown.
    """
    if platform.machine().lower() in ("aarch64", "arm64"):
        return _arm_bf16()
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def _arm_bf16() -> bool:
    """Arm CPUs list bf16 among /proc/cpuinfo's feature flags."""
    return any(line.startswith("Features") and " bf16" in line for line in _cpuinfo())


def cpu_name() -> str:
    """The CPU model as the OS names it (run records and benchmarks say what they ran on)."""
    for line in _cpuinfo():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _cpuinfo() -> list[str]:
    """Lines of /proc/cpuinfo; none off Linux."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            return info.readlines()
    except OSError:
        return []
