"""The host CPU: what it does fast (native bf16), its name, and how many cores this process
may really use (affinity mask and cgroup quota), from which thread counts are chosen.

A core count from `os.cpu_count()` is the machine's: it ignores `taskset`/`sched_setaffinity`
and a container's CPU quota (`docker run --cpus 2` on a 64-core host still reports 64), and
more compute threads than usable cores make OpenMP's thread pool wait on descheduled threads.
"""

from __future__ import annotations

import functools
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_STAT = Path("/proc/stat")
TAKEN_FROM = 0.6  # cores' worth of other processes' load that takes a thread away


def usable_cpus(
    affinity: Callable[[], set[int]] | None = None, cgroup_root: Path = CGROUP_ROOT
) -> int:
    """Cores this process may run on: its affinity mask, capped by the cgroup CPU quota.

    A fractional quota (1.5 CPUs) rounds down: threads beyond it are throttled. Never below 1.
    """
    get_affinity = affinity or _affinity
    cores = len(get_affinity())
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return max(1, cores)


def _affinity() -> set[int]:
    if hasattr(os, "sched_getaffinity"):
        return os.sched_getaffinity(0)
    return set(range(os.cpu_count() or 1))  # macOS, Windows: no affinity masks


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs' worth of time the cgroup may use (quota / period), or None when unlimited.

    cgroup v2: `cpu.max` ("max 100000" or "200000 100000"); cgroup v1: `cpu.cfs_quota_us`
    (-1 when unlimited) and `cpu.cfs_period_us` under the `cpu` (or `cpu,cpuacct`)
    controller. Inside a container these files at `root` are the container's own.
    """
    v2 = root / "cpu.max"
    if v2.is_file():
        fields = _read(v2).split()
        if len(fields) == 2 and fields[0] != "max":
            return _ratio(fields[0], fields[1])
        return None
    for controller in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        folder = root / controller
        quota, period = folder / "cpu.cfs_quota_us", folder / "cpu.cfs_period_us"
        if quota.is_file() and period.is_file():
            return _ratio(_read(quota), _read(period))
    return None


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii").strip()
    except OSError:
        return ""


def default_threads(processes: int = 1, usable: int | None = None) -> int:
    """Compute threads per process when `processes` share the usable cores (at least 1)."""
    cores = usable if usable is not None else usable_cpus()
    return max(1, cores // max(1, processes))


class ThreadBudget:
    """Threads for the next piece of work (a training step, a batch to translate):
    `ceiling` while this process has the machine to itself, one fewer per core that other
    processes keep busy.

    Why: PyTorch's OpenMP threads spin while they wait for each other. When another process
    takes a core, one of them is descheduled and the other spins through its time slices:
    on 2 cores a second thread turned 34 requests/s (one thread) into 2.6. Sleeping instead
    of spinning (OMP_WAIT_POLICY=PASSIVE) avoids the collapse but costs idle throughput, so
    the count follows the load instead (README, Speed). Other processes' load is the machine's
    busy time (/proc/stat, steal included) minus this process's own, over at least
    `interval` seconds; a core counts as taken from `TAKEN_FROM` of a core on (a process that
    wants a whole core gets 2/3 of one while our two threads spin beside it on two cores).
    """

    def __init__(
        self,
        ceiling: int,
        usable: int | None = None,
        interval: float = 1.0,
        stat_path: Path = PROC_STAT,
        own_seconds: Callable[[], float] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ceiling = max(1, ceiling)
        self.usable = usable if usable is not None else usable_cpus()
        self.interval = interval
        self.stat_path = stat_path
        self.own_seconds = own_seconds or _own_cpu_seconds
        self.clock = clock
        self.threads = self.ceiling
        self._last: tuple[float, float, float] | None = None  # (time, machine busy, own)

    def update(self) -> int:
        """The thread count for now (re-estimated at most every `interval` seconds)."""
        now = self.clock()
        if self._last is not None and now - self._last[0] < self.interval:
            return self.threads
        busy, own = machine_busy_seconds(self.stat_path), self.own_seconds()
        if self._last is not None and busy is not None and self._last[1] >= 0:
            then, busy_then, own_then = self._last
            others = max(0.0, (busy - busy_then) - (own - own_then)) / (now - then)
            taken = math.floor(others + 1.0 - TAKEN_FROM)
            self.threads = max(1, min(self.ceiling, self.usable - taken))
        self._last = (now, -1.0 if busy is None else busy, own)
        return self.threads

    def apply(self) -> int:
        """`update()`, and set torch's intra-op thread count to it when it changed."""
        import torch

        threads = self.update()
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return threads


def machine_busy_seconds(stat_path: Path = PROC_STAT) -> float | None:
    """CPU seconds every core of the machine has spent busy (not idle, not waiting for I/O)
    since boot, from the first line of /proc/stat; None when unreadable (not Linux)."""
    line = _read(stat_path).split("\n", 1)[0].split()
    if len(line) < 5 or line[0] != "cpu":
        return None
    ticks = [int(v) for v in line[1:9]]  # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system  # every thread of this process, not its children


@functools.cache
def has_native_bf16() -> bool:
    """True when the CPU has bf16 matmul instructions (AVX512-BF16 or AMX on x86, BF16 on Arm).

    With them a bf16 matmul runs about 2-3x faster than fp32; without them (AVX2-only CPUs such
    as AMD Zen 3 and older Intel) it is emulated, up to 70x slower than fp32, so choosing bf16
    there would turn mixed precision into a slowdown.
    """
    if platform.machine().lower() in ("aarch64", "arm64"):
        return _arm_bf16()
    import torch  # not at module level: the HTTP front end and load_test do without it

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
