"""A busy process on one core, for measuring how training and serving share a CPU.

    with cpu_hog():
        ...  # measure while another process keeps one core busy

Used by `load_test.py --cpu-hog` and `bench_train.py --cpu-hog`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

BUSY_LOOP = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True: pass\n"


@contextmanager
def cpu_hog() -> Iterator[int]:
    """Keep the last usable core busy (a pure-Python loop pinned to it) within the block;
    yields the core's number."""
    core = max(os.sched_getaffinity(0))
    hog = subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(core)])
    try:
        yield core
    finally:
        hog.kill()
        hog.wait()
