"""Running the server so that it always shuts down cleanly.

Process tree of `nmt serve`:

    nmt serve (supervisor: holds no port, only forwards signals and cleans up)
    └── server process, leader of its own process group (LitServer.run)
        ├── manager process (LitServe's queues)
        ├── inference workers (spawned; each loads the Translator once)
        └── HTTP API servers (forked uvicorn processes sharing the listening socket)

An inference worker that dies (killed by the OOM killer, a crash in native code) is replaced,
as gunicorn replaces its workers: the requests it held are answered 503, /health says 503
until the replacement has loaded the model, and queued requests wait for it. Only a crash
loop (`CRASH_LOOP_DEATHS` deaths within `CRASH_LOOP_SECONDS`) or a worker that cannot load
the model stops the server, exit code 1.

LitServe shuts down gracefully on Ctrl-C (KeyboardInterrupt in its main process), but a plain
SIGTERM kills its main process alone and leaves the workers and API servers running, still
holding the port. So the supervisor turns SIGINT and SIGTERM into a SIGINT for the server
process, waits `shutdown_grace` seconds, then terminates and kills whatever is left of the
server's process group, and returns only once no process of that group is alive.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import litserve as ls

from nmt.config import ConfigError
from serve.app import ServeSettings, build_server
from serve.litserve_internals import (
    disable_worker_monitor,
    inference_workers,
    restart_worker,
    worker_failed_setup,
)
from serve.shared import WorkerDeaths

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CRASH_LOOP_DEATHS = 3  # worker deaths within CRASH_LOOP_SECONDS that stop the server
CRASH_LOOP_SECONDS = 60.0
WATCH_INTERVAL = 0.2  # seconds between checks of the workers


@dataclass
class CrashLoop:
    """Remembers recent worker deaths; `died()` says whether they now form a crash loop."""

    deaths: int = CRASH_LOOP_DEATHS
    seconds: float = CRASH_LOOP_SECONDS
    times: deque[float] = field(default_factory=deque)

    def died(self, now: float) -> bool:
        self.times.append(now)
        while self.times and now - self.times[0] > self.seconds:
            self.times.popleft()
        return len(self.times) >= self.deaths


def serve(settings: ServeSettings) -> int:
    """Run the server until SIGINT/SIGTERM (or until it fails); return an exit code.

    Returns only when no process of the server is left.
    """
    settings.check()
    _check_port_free(settings.host, settings.port)
    log.info("serving with %s", settings_summary(settings))
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        received.append(signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    child = mp.get_context("spawn").Process(
        target=_server_main, args=(settings, os.getpid()), name="nmt-serve-server"
    )
    try:
        child.start()
        while not stop.is_set() and _alive(child.pid):
            stop.wait(0.2)
        if stop.is_set() and child.pid is not None:
            log.info("received %s, shutting down", signal.Signals(received[0]).name)
            _stop_group(child.pid, settings.shutdown_grace, abort=lambda: len(received) > 1)
    finally:
        if child.pid is not None:
            _kill_group(child.pid)
            if _alive(child.pid):  # stopped before it had its own group
                _signal_pid(child.pid, signal.SIGKILL)
            child.join()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if stop.is_set():
        return 0
    log.error("server process exited with code %s", child.exitcode)
    return 1 if not child.exitcode else abs(child.exitcode)


def _server_main(settings: ServeSettings, parent_pid: int) -> None:
    """Body of the server process: its own process group, LitServer.run, then no children left.

    SIGTERM keeps its default action here: forked API servers inherit handlers, and uvicorn
    re-raises the signal it caught at exit. If this process dies by it, the supervisor sees it
    exit and kills the rest of the group.
    """
    os.setsid()
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT, datefmt="%H:%M:%S")
    stopping = threading.Event()
    failures: list[str] = []

    def on_sigint(signum: int, frame: Any) -> None:
        stopping.set()
        raise KeyboardInterrupt  # LitServer.run's graceful shutdown path

    signal.signal(signal.SIGINT, on_sigint)
    try:
        deaths = WorkerDeaths()
        server = build_server(settings, deaths)
        # _watch does what LitServe's own monitor did, from local state only.
        disable_worker_monitor(server)
        threading.Thread(
            target=_watch,
            args=(server, parent_pid, stopping, failures, deaths),
            name="nmt-serve-watch",
            daemon=True,
        ).start()
        server.run(
            host=settings.host,
            port=settings.port,
            generate_client_file=False,
            log_level=settings.log_level,
        )
    except KeyboardInterrupt:
        pass
    except RuntimeError as e:  # e.g. a worker could not load the checkpoint (logged above)
        failures.append(f"server failed: {e}")
    finally:
        stopping.set()  # no replacement workers while shutting down
        _stop_children()
    if failures:
        log.error("%s", failures[0])
        raise SystemExit(1)


def _watch(
    server: ls.LitServer,
    parent_pid: int,
    stopping: threading.Event,
    failures: list[str],
    deaths: WorkerDeaths,
    crash_loop: CrashLoop | None = None,
) -> None:
    """Replace inference workers that die; stop the server (SIGINT to itself) on a crash loop
    or when the supervisor is gone.

    A dead worker's requests would wait forever: counting its death in `deaths` makes every
    HTTP front end answer them 503 (serve.middleware.WorkerLossMiddleware). A missing
    supervisor (killed with SIGKILL) could no longer stop the server.
    """
    crash_loop = crash_loop or CrashLoop()
    while not stopping.wait(WATCH_INTERVAL):
        if os.getppid() != parent_pid:
            break
        if _replace_dead_workers(server, stopping, failures, deaths, crash_loop):
            break
    else:
        return
    os.kill(os.getpid(), signal.SIGINT)


def _replace_dead_workers(
    server: ls.LitServer,
    stopping: threading.Event,
    failures: list[str],
    deaths: WorkerDeaths,
    crash_loop: CrashLoop,
) -> bool:
    """Start a replacement for each dead worker; True when the deaths form a crash loop."""
    for index, worker in enumerate(inference_workers(server)):
        if worker.is_alive() or stopping.is_set():
            continue
        deaths.record(index)
        if worker_failed_setup(server, index):  # a new worker would fail the same way
            failures.append(f"inference worker {worker.pid} could not load the model")
            return True
        if crash_loop.died(time.monotonic()):
            failures.append(
                f"inference worker {worker.pid} exited with code {worker.exitcode}: "
                f"{crash_loop.deaths} worker deaths within {crash_loop.seconds:.0f}s, stopping"
            )
            return True
        replacement = restart_worker(server, index)
        log.warning(
            "inference worker %d (pid %s) exited with code %s; started pid %s in its place",
            index,
            worker.pid,
            worker.exitcode,
            replacement.pid,
        )
    return False


def _stop_children(timeout: float = 3.0) -> None:
    """Terminate this process's multiprocessing children still alive (e.g. interrupted start-up)."""
    children = mp.active_children()
    for child in children:
        child.terminate()
    deadline = time.monotonic() + timeout
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
        if child.is_alive():
            child.kill()
            child.join(1.0)


def _alive(pid: int | None) -> bool:
    """Whether child `pid` still runs, without reaping it (its pid stays its group's id)."""
    if pid is None:
        return True  # not started yet
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:
        return False


def _wait(condition: Callable[[], bool], timeout: float, abort: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not abort():
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _stop_group(pid: int, grace: float, abort: Callable[[], bool]) -> None:
    """SIGINT to the server (LitServe's graceful path), then SIGTERM, then SIGKILL to its group."""
    _signal_pid(pid, signal.SIGINT)
    if _wait(lambda: not _alive(pid), grace, abort):
        return
    log.warning("server did not stop within %.0fs; terminating its processes", grace)
    _signal_group(pid, signal.SIGTERM)
    if _wait(lambda: not _alive(pid), 3.0, abort):
        return
    _signal_group(pid, signal.SIGKILL)


def _kill_group(pgid: int) -> None:
    """Kill what is left of the server's group and wait until none of it runs any more."""
    if group_members(pgid):
        _signal_group(pgid, signal.SIGKILL)
    _wait(lambda: not group_members(pgid), 5.0, abort=lambda: False)


def _signal_pid(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid`, read from /proc."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def settings_summary(settings: ServeSettings) -> dict[str, Any]:
    """The settings without the secret, for logs."""
    summary = asdict(settings)
    summary["api_key"] = "***" if settings.api_key else None
    return summary
