"""Helpers for tests that start a real `nmt serve` on 127.0.0.1."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_nmt(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`nmt ARGS...` run to its end from the repository root, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "nmt.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).resolve().parents[1],
    )


def serve_command(port: int, *options: str) -> list[str]:
    """`nmt serve` on 127.0.0.1:`port`, on the CPU with one thread and quiet logs; `options`
    name the checkpoints and anything else."""
    return [
        *(sys.executable, "-m", "nmt.cli", "serve", "--port", str(port)),
        *("--accelerator", "cpu", "--threads", "1", "--log-level", "warning"),
        *options,
    ]


def wait_healthy(
    get: Callable[[str], httpx.Response],
    timeout: float = 120.0,
    process: subprocess.Popen | None = None,
) -> None:
    """Poll /health until it answers 200; fail early when the server `process` has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"nmt serve exited with code {process.returncode}")
        try:
            if get("/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not become healthy")


@contextlib.contextmanager
def running_server(*options: str, timeout: float = 30.0) -> Iterator[httpx.Client]:
    """`nmt serve OPTIONS` (see serve_command) on a free port, healthy, with a client for it;
    the server is stopped when the block ends, however it ends."""
    port = free_port()
    command = serve_command(port, *options)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=timeout) as http:
            wait_healthy(http.get, process=process)
            yield http
    finally:
        process.terminate()
        process.wait(timeout=60)
