"""Building the LitServer for a checkpoint: the API, its guards, and the routes we add.

`serve.supervisor` runs what `build_server` returns; tests start it in-process instead.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import litserve as ls
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse

from nmt.config import ConfigError
from nmt.cpu import default_threads
from serve.api import TranslatorAPI
from serve.litserve_internals import (
    fail_requests_of_worker,
    server_devices,
    set_graceful_timeout,
    take_route,
)
from serve.metrics import CONTENT_TYPE, ServerMetrics
from serve.middleware import (
    ApiKeyMiddleware,
    MetricsMiddleware,
    RequestGuardMiddleware,
    WorkerLossMiddleware,
)
from serve.schemas import ErrorResponse, InfoResponse, Limits, TranslateResponse
from serve.shared import SharedJSON, WorkerDeaths

TRANSLATE_PATH = "/translate"
HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # what LitServer.run accepts


@dataclass(frozen=True)
class ServeSettings:
    checkpoint: str
    ensemble: tuple[str, ...] = ()  # more checkpoints, decoded with `checkpoint` as one model
    alignment_from: int | None = None  # an ensemble's alignments: this member's, else the mean
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 32
    batch_timeout: float = 0.01  # seconds a worker waits for a batch to fill
    batch_wait: float = 0.1  # under load, wait up to this fraction of the last batch's decode time
    workers_per_device: int = 1
    accelerator: str = "auto"  # auto | cpu | cuda
    devices: int | str = "auto"
    api_key: str | None = None
    limits: Limits = field(default_factory=Limits)
    request_timeout: float = 30.0  # seconds a request may wait in the queue (then 504)
    threads: int | None = None  # torch threads per worker; None = usable cores / workers
    precision: str | None = None  # fp32 | bf16 decoding; None = the checkpoint's
    log_level: str = "info"
    shutdown_grace: float = 10.0  # seconds for LitServe's own shutdown before the group is killed

    def check(self) -> None:
        """Reject unusable settings with a message naming the option."""
        for checkpoint in (self.checkpoint, *self.ensemble):
            if not Path(checkpoint).is_file():
                raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
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
            raise ConfigError(
                "--max-chars, --max-texts, --max-beam and --max-len must be at least 1"
            )

    def worker_threads(self, devices: int, usable: int | None = None) -> int:
        """Torch threads per worker: the usable cores (affinity, cgroup quota; `usable` for
        tests) shared by every worker on every device."""
        return self.threads or default_threads(devices * self.workers_per_device, usable)


def build_server(settings: ServeSettings, deaths: WorkerDeaths | None = None) -> ls.LitServer:
    """A LitServer for the checkpoint with /translate, /health, /info, /metrics and the guards.

    `deaths`: where the process running the server counts dead workers (serve.supervisor), so
    that the HTTP front ends answer the requests those workers held with 503.
    """
    metrics = ServerMetrics()
    model_board = SharedJSON()
    api = TranslatorAPI(
        checkpoint=str(settings.checkpoint),
        ensemble=settings.ensemble,
        alignment_from=settings.alignment_from,
        metrics=metrics,
        model_board=model_board,
        max_batch_size=settings.max_batch_size,
        batch_timeout=settings.batch_timeout,
        batch_wait=settings.batch_wait,
        precision=settings.precision,
        api_path=TRANSLATE_PATH,
    )
    # Registered innermost first: metrics see every answer, including 401 and 413.
    guard = {"path": TRANSLATE_PATH, "limits": settings.limits}
    middlewares: list[Any] = [(RequestGuardMiddleware, guard)]
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
        # Workers then tell the front end which of them took each request (and LitServe's
        # own restart logic stays off: serve.supervisor restarts them; see litserve_internals).
        restart_workers=True,
    )
    lost = functools.partial(
        fail_requests_of_worker,
        server,
        status=503,
        detail="the inference worker translating this request died; it is being replaced, "
        "retry shortly",
    )
    server.app.add_middleware(WorkerLossMiddleware, deaths=deaths or WorkerDeaths(), fail=lost)
    set_graceful_timeout(server, max(1.0, settings.shutdown_grace / 2))
    devices = server_devices(server)
    # Only LitServer knows how many devices `auto` means; its workers start later, in run().
    api.threads = settings.worker_threads(len(devices))
    api.adapt_threads = settings.threads is None  # on CPU: fewer while others load the cores
    serving = _serving_info(settings, devices, api.threads)
    _document_translate_route(server.app)
    _add_routes(server.app, metrics, model_board, serving)
    return server


def _serving_info(settings: ServeSettings, devices: list[Any], threads: int) -> dict[str, Any]:
    return {
        "max_batch_size": settings.max_batch_size,
        "batch_timeout": settings.batch_timeout,
        "batch_wait": settings.batch_wait,
        "workers_per_device": settings.workers_per_device,
        "accelerator": settings.accelerator,
        "devices": [str(d) for d in devices],
        "request_timeout": settings.request_timeout,
        "threads_per_worker": threads,
        "threads_follow_load": settings.threads is None,
        "limits": settings.limits.to_dict(),
        "api_key_required": bool(settings.api_key),
    }


def _add_routes(
    app: FastAPI, metrics: ServerMetrics, model_board: SharedJSON, serving: dict[str, Any]
) -> None:
    async def info() -> Any:
        """The served model (architecture, languages, parameters, validation BLEU, decoding
        defaults) and the serving settings (batching, workers, limits)."""
        model = model_board.read()
        if model is None:
            return JSONResponse({"detail": "model not loaded yet"}, status_code=503)
        return InfoResponse(
            model=dict(model["info"], version=model["version"]),
            serving=serving,
            worker_pid=model.get("worker_pid"),
        )

    async def prometheus() -> PlainTextResponse:
        """Prometheus text exposition: requests by status, errors, latency and batch sizes."""
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE)

    async def validation_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        return JSONResponse({"detail": detail}, status_code=422)

    app.add_api_route(
        "/info",
        info,
        methods=["GET"],
        response_model=InfoResponse,
        tags=["service"],
        responses={503: {"model": ErrorResponse}},
    )
    app.add_api_route(
        "/metrics", prometheus, methods=["GET"], response_class=PlainTextResponse, tags=["service"]
    )
    app.add_exception_handler(RequestValidationError, validation_error)


def _document_translate_route(app: FastAPI) -> None:
    """Re-register LitServe's /translate route with its error responses and a description."""
    route = take_route(app, TRANSLATE_PATH)
    errors = {
        400: "Malformed JSON, invalid UTF-8 or an empty body.",
        401: "Missing or wrong API key (when the server requires one).",
        413: "Request body larger than the server accepts.",
        422: "A field is missing, has the wrong type, is unknown, or exceeds a limit; or the model "
        "cannot translate a text (e.g. too long without `truncate`).",
        504: "The request waited in the queue longer than the server's request timeout.",
    }
    app.add_api_route(
        TRANSLATE_PATH,
        route.endpoint,
        methods=["POST"],
        dependencies=route.dependencies,
        response_model=TranslateResponse,
        tags=["translation"],
        summary="Translate texts",
        description="Translate one text or a list; concurrent requests are batched. With "
        "`alignment: true`, each result carries source/target pieces, the soft attention matrix "
        "and hard and word-level links (Pharaoh 'source-target' pairs).",
        responses={
            code: {"model": ErrorResponse, "description": text} for code, text in errors.items()
        },
    )
