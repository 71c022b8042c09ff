"""Usable cores from the affinity mask and the cgroup CPU quota (v1 and v2), on fake files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nmt.cpu import (
    ThreadBudget,
    cgroup_cpu_quota,
    default_threads,
    machine_busy_seconds,
    usable_cpus,
)


def _cgroup_v2(root: Path, cpu_max: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cpu.max").write_text(cpu_max + "\n")
    return root


def _cgroup_v1(root: Path, quota: int, period: int, controller: str = "cpu,cpuacct") -> Path:
    folder = root / controller
    folder.mkdir(parents=True)
    (folder / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (folder / "cpu.cfs_period_us").write_text(f"{period}\n")
    return root


def _mask(n: int):
    return lambda: set(range(n))


@pytest.mark.parametrize(
    ("cpu_max", "quota"),
    [("max 100000", None), ("200000 100000", 2.0), ("150000 100000", 1.5), ("50000 100000", 0.5)],
)
def test_cgroup_v2_quota(tmp_path: Path, cpu_max: str, quota: float | None) -> None:
    assert cgroup_cpu_quota(_cgroup_v2(tmp_path, cpu_max)) == quota


@pytest.mark.parametrize("controller", ["cpu", "cpu,cpuacct"])
def test_cgroup_v1_quota(tmp_path: Path, controller: str) -> None:
    assert cgroup_cpu_quota(_cgroup_v1(tmp_path / "a", 400000, 100000, controller)) == 4.0
    assert cgroup_cpu_quota(_cgroup_v1(tmp_path / "b", -1, 100000, controller)) is None


def test_no_cgroup_files_or_garbage_mean_no_quota(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(tmp_path) is None
    assert cgroup_cpu_quota(_cgroup_v2(tmp_path / "v2", "")) is None
    assert cgroup_cpu_quota(_cgroup_v1(tmp_path / "v1", 0, 100000)) is None


def test_usable_cpus_is_the_affinity_mask_capped_by_the_quota(tmp_path: Path) -> None:
    none = tmp_path / "none"
    assert usable_cpus(_mask(64), none) == 64  # no cgroup limit: the mask
    assert usable_cpus(_mask(3), none) == 3  # taskset -c 0-2 on a bigger machine
    # docker run --cpus 2 on a 64-core host (v2), and --cpus 1.5 (rounded down: no throttling)
    assert usable_cpus(_mask(64), _cgroup_v2(tmp_path / "two", "200000 100000")) == 2
    assert usable_cpus(_mask(64), _cgroup_v2(tmp_path / "1.5", "150000 100000")) == 1
    assert usable_cpus(_mask(64), _cgroup_v1(tmp_path / "v1", 800000, 100000)) == 8
    # a quota above the mask, or below one CPU, never gives more than the mask or less than 1
    assert usable_cpus(_mask(2), _cgroup_v1(tmp_path / "v1big", 800000, 100000)) == 2
    assert usable_cpus(_mask(8), _cgroup_v2(tmp_path / "half", "50000 100000")) == 1


def test_usable_cpus_of_this_process() -> None:
    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))


def test_default_threads_share_the_usable_cores() -> None:
    assert default_threads(1, usable=2) == 2
    assert default_threads(2, usable=2) == 1
    assert default_threads(4, usable=2) == 1  # more processes than cores: still one thread
    assert default_threads(2, usable=16) == 8


def _stat(path: Path, busy_ticks: int, idle_ticks: int) -> None:
    # cpu user nice system idle iowait irq softirq steal guest guest_nice
    path.write_text(f"cpu  {busy_ticks} 0 0 {idle_ticks} 0 0 0 0 0 0\ncpu0 ...\n")


def test_machine_busy_seconds_leaves_out_idle_and_iowait(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 10 50 900 40 5 5 20 0 0\n")
    assert machine_busy_seconds(stat) == pytest.approx(190 / os.sysconf("SC_CLK_TCK"))
    assert machine_busy_seconds(tmp_path / "missing") is None


class _Machine:
    """A fake 2-core machine: /proc/stat, this process's CPU time and a clock, advanced by
    `run(seconds, own, others)` (cores kept busy by this process and by the others)."""

    def __init__(self, path: Path) -> None:
        self.path, self.now, self.own, self.busy = path, 0.0, 0.0, 0.0
        self.hz = os.sysconf("SC_CLK_TCK")
        self._write()

    def run(self, seconds: float, own: float, others: float) -> None:
        self.now += seconds
        self.own += own * seconds
        self.busy += (own + others) * seconds
        self._write()

    def _write(self) -> None:
        busy = round(self.busy * self.hz)
        _stat(self.path, busy, round(2 * self.now * self.hz) - busy)

    def budget(self, ceiling: int) -> ThreadBudget:
        return ThreadBudget(
            ceiling=ceiling,
            usable=2,
            interval=1.0,
            stat_path=self.path,
            own_seconds=lambda: self.own,
            clock=lambda: self.now,
        )


def test_thread_budget_gives_up_a_core_other_processes_keep_busy(tmp_path: Path) -> None:
    machine = _Machine(tmp_path / "stat")
    budget = machine.budget(ceiling=2)
    assert budget.update() == 2  # no history yet: the ceiling
    machine.run(2.0, own=1.8, others=0.3)  # an HTTP front end and a client: not a core
    assert budget.update() == 2
    machine.run(2.0, own=1.0, others=1.0)  # a busy process takes a core
    assert budget.update() == 1
    machine.run(0.5, own=1.0, others=0.0)  # within the interval: unchanged
    assert budget.update() == 1
    machine.run(2.0, own=1.0, others=0.2)  # it stopped: both cores again
    assert budget.update() == 2
    machine.run(2.0, own=0.5, others=1.5)  # never below one thread
    assert budget.update() == 1


def test_thread_budget_never_exceeds_its_ceiling(tmp_path: Path) -> None:
    machine = _Machine(tmp_path / "stat")
    budget = machine.budget(ceiling=1)
    budget.update()
    machine.run(2.0, own=1.0, others=0.0)
    assert budget.update() == 1
