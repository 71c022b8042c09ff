"""Building the LitServer for a checkpoint, and running it so that it always shuts down cleanly.

Process tree of `nmt serve`:

    nmt serve (supervisor: holds no port, only forwards signals and cleans up)
    └── server process, leader of its own process group (LitServer.run)
        ├── manager process (LitServe's queues)
        ├── inference workers (spawned; each loads the Translator once)
        └── HTTP API servers (forked uvicorn processes sharing the listening socket)

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import litserve as ls
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute

from nmt.config import ConfigError
from serve.api import TranslatorAPI
from serve.metrics import CONTENT_TYPE, ServerMetrics
from serve.middleware import ApiKeyMiddleware, MetricsMiddleware, RequestGuardMiddleware
from serve.schemas import ErrorResponse, InfoResponse, Limits, TranslateResponse
from serve.shared import SharedJSON

logger = logging.getLogger("nmt.serve")

TRANSLATE_PATH = "/translate"
HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # what LitServer.run accepts
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass(frozen=True)
class ServeSettings:
    checkpoint: str
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 32
    batch_timeout: float = 0.01  # seconds a worker waits for a batch to fill
    batch_wait: float = 0.1  # under load, wait up to this fraction of the last batch's decode time
    workers_per_device: int = 1
    accelerator: str = "auto"  # auto | cpu | cuda
    devices: Union[int, str] = "auto"
    api_key: Optional[str] = None
    limits: Limits = field(default_factory=Limits)
    request_timeout: float = 30.0  # seconds a request may wait in the queue (then 504)
    threads: Optional[int] = None  # torch threads per worker; None = cores / workers_per_device
    precision: Optional[str] = None  # fp32 | bf16 decoding; None = the checkpoint's decode.precision
    log_level: str = "info"
    shutdown_grace: float = 10.0  # seconds for LitServe's own shutdown before the group is killed

    def check(self) -> None:
        """Reject unusable settings with a message naming the option."""
        if not Path(self.checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint not found: {self.checkpoint}")
        if self.host not in HOSTS:
            raise ConfigError(f"--host must be one of {', '.join(HOSTS)}, got {self.host!r}")
        if not 1024 <= self.port <= 65535:
            raise ConfigError(f"--port must be in 1024..65535, got {self.port}")
        if self.max_batch_size < 1 or self.workers_per_device < 1:
            raise ConfigError("--max-batch-size and --workers-per-device must be at least 1")
        if not 0 <= self.batch_timeout < self.request_timeout:
            raise ConfigError("--batch-timeout must be >= 0 and smaller than --request-timeout")
        if not 0 <= self.batch_wait <= 1:
            raise ConfigError(f"--batch-wait must be in 0..1 (a fraction), got {self.batch_wait}")
        if self.precision not in (None, "fp32", "bf16"):
            raise ConfigError(f"--precision must be fp32 or bf16, got {self.precision!r}")
        if self.accelerator not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--accelerator must be auto, cpu or cuda, got {self.accelerator!r}")
        limits = self.limits
        if min(limits.max_chars, limits.max_texts, limits.max_beam, limits.max_len) < 1:
            raise ConfigError("--max-chars, --max-texts, --max-beam and --max-len must be at least 1")

    def worker_threads(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 1) // self.workers_per_device)


# --------------------------------------------------------------------------- building


def build_server(settings: ServeSettings) -> ls.LitServer:
    """A LitServer for the checkpoint with /translate, /health, /info, /metrics and the guards."""
    metrics = ServerMetrics()
    model_board = SharedJSON()
    api = TranslatorAPI(
        checkpoint=str(settings.checkpoint), metrics=metrics, model_board=model_board,
        max_batch_size=settings.max_batch_size, batch_timeout=settings.batch_timeout,
        batch_wait=settings.batch_wait, threads=settings.worker_threads(), precision=settings.precision,
        api_path=TRANSLATE_PATH,
    )
    # Registered innermost first: metrics see every answer, including 401 and 413.
    middlewares: list[Any] = [(RequestGuardMiddleware, {"path": TRANSLATE_PATH, "limits": settings.limits})]
    if settings.api_key:
        middlewares.append((ApiKeyMiddleware, {"api_key": settings.api_key}))
    middlewares.append((MetricsMiddleware, {"metrics": metrics}))
    server = ls.LitServer(
        api,
        accelerator=settings.accelerator,
        devices=settings.devices,
        workers_per_device=settings.workers_per_device,
        timeout=settings.request_timeout,
        info_path="/litserve/info",  # /info is ours (model and serving details)
        middlewares=middlewares,
    )
    server.uvicorn_graceful_timeout = max(1.0, settings.shutdown_grace / 2)
    serving = _serving_info(settings, server.devices)
    _document_translate_route(server.app)
    _add_routes(server.app, metrics, model_board, serving)
    return server


def _serving_info(settings: ServeSettings, devices: list[Any]) -> dict[str, Any]:
    return {
        "max_batch_size": settings.max_batch_size,
        "batch_timeout": settings.batch_timeout,
        "batch_wait": settings.batch_wait,
        "workers_per_device": settings.workers_per_device,
        "accelerator": settings.accelerator,
        "devices": [str(d) for d in devices],
        "request_timeout": settings.request_timeout,
        "threads_per_worker": settings.worker_threads(),
        "limits": settings.limits.to_dict(),
        "api_key_required": bool(settings.api_key),
    }


def _add_routes(app: FastAPI, metrics: ServerMetrics, model_board: SharedJSON, serving: dict[str, Any]) -> None:
    async def info() -> Any:
        """The served model (architecture, languages, parameters, validation BLEU, decoding
        defaults) and the serving settings (batching, workers, limits)."""
        model = model_board.read()
        if model is None:
            return JSONResponse({"detail": "model not loaded yet"}, status_code=503)
        return InfoResponse(model=dict(model["info"], version=model["version"]), serving=serving)

    async def prometheus() -> PlainTextResponse:
        """Prometheus text exposition: requests by status, errors, latency and batch sizes."""
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE)

    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        return JSONResponse({"detail": detail}, status_code=422)

    app.add_api_route("/info", info, methods=["GET"], response_model=InfoResponse, tags=["service"],
                      responses={503: {"model": ErrorResponse}})
    app.add_api_route("/metrics", prometheus, methods=["GET"], response_class=PlainTextResponse,
                      tags=["service"])
    app.add_exception_handler(RequestValidationError, validation_error)


def _document_translate_route(app: FastAPI) -> None:
    """Re-register LitServe's /translate route with its error responses and a description."""
    route = next(r for r in app.router.routes if isinstance(r, APIRoute) and r.path == TRANSLATE_PATH)
    app.router.routes.remove(route)
    errors = {
        400: "Malformed JSON, invalid UTF-8 or an empty body.",
        401: "Missing or wrong API key (when the server requires one).",
        413: "Request body larger than the server accepts.",
        422: "A field is missing, has the wrong type, is unknown, or exceeds a limit; or the model "
             "cannot translate a text (e.g. too long without `truncate`).",
        504: "The request waited in the queue longer than the server's request timeout.",
    }
    app.add_api_route(
        TRANSLATE_PATH, route.endpoint, methods=["POST"], dependencies=route.dependencies,
        response_model=TranslateResponse, tags=["translation"], summary="Translate texts",
        description="Translate one text or a list; concurrent requests are batched. With "
        "`alignment: true`, each result carries source/target pieces, the soft attention matrix "
        "and hard and word-level links (Pharaoh 'source-target' pairs).",
        responses={code: {"model": ErrorResponse, "description": text} for code, text in errors.items()},
    )


# --------------------------------------------------------------------------- running


def serve(settings: ServeSettings) -> int:
    """Run the server until SIGINT/SIGTERM (or until it fails); return an exit code.

    Returns only when no process of the server is left.
    """
    settings.check()
    _check_port_free(settings.host, settings.port)
    logger.info("serving with %s", settings_summary(settings))
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
        if stop.is_set():
            logger.info("received %s, shutting down", signal.Signals(received[0]).name)
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
    logger.error("server process exited with code %s", child.exitcode)
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
        server = build_server(settings)
        # LitServe's own monitor polls manager-backed state and crashes (logging a traceback)
        # once the manager is shut down; _watch covers what it did, from local state only.
        server._monitor_workers = False
        threading.Thread(target=_watch, args=(server, parent_pid, stopping, failures),
                         name="nmt-serve-watch", daemon=True).start()
        server.run(host=settings.host, port=settings.port, generate_client_file=False,
                   log_level=settings.log_level)
    except KeyboardInterrupt:
        pass
    except RuntimeError as e:  # e.g. a worker could not load the checkpoint (logged above)
        failures.append(f"server failed: {e}")
    finally:
        _stop_children()
    if failures:
        logger.error("%s", failures[0])
        raise SystemExit(1)


def _watch(server: ls.LitServer, parent_pid: int, stopping: threading.Event, failures: list[str]) -> None:
    """Stop the server (SIGINT to itself) when an inference worker dies or the supervisor is gone.

    A dead worker would leave its requests waiting forever; a missing supervisor (killed with
    SIGKILL) could no longer stop the server.
    """
    while not stopping.wait(1.0):
        dead = [w for w in getattr(server, "inference_workers", []) if not w.is_alive()]
        if dead:
            failures.append(f"inference worker {dead[0].pid} exited with code {dead[0].exitcode}")
        elif os.getppid() == parent_pid:
            continue
        os.kill(os.getpid(), signal.SIGINT)
        return


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


def _alive(pid: Optional[int]) -> bool:
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
    logger.warning("server did not stop within %.0fs; terminating its processes", grace)
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
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
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
