"""Building the LitServer for one or several models: an API per model, the guards, and the
routes clients call (/translate, /align, /info, /languages, LibreTranslate's, the web page).

Each model is a LitAPI of its own (own queue, workers and dynamic batching). LitServe's
per-model routes are taken off the app: /translate and /align pick the model (serve.models)
and hand the request to that model's LitServe handler, so every request passes the guards.

`serve.supervisor` runs what `build_server` returns; tests start it in-process instead.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import litserve as ls
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles

from nmt.config import ConfigError
from nmt.cpu import default_threads
from serve.api import TranslatorAPI
from serve.libretranslate import PREFIX as LIBRETRANSLATE_PREFIX
from serve.libretranslate import Endpoint, add_libretranslate_routes, languages
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
from serve.models import ModelCatalog, ModelSpec, RoutingError, model_specs, reranked_models
from serve.schemas import (
    AlignRequest,
    AlignResponse,
    ErrorResponse,
    InfoResponse,
    Limits,
    TranslateRequest,
    TranslateResponse,
    align_limit_violations,
    limit_violations,
)
from serve.shared import SharedJSON, WorkerDeaths

TRANSLATE_PATH = "/translate"
ALIGN_PATH = "/align"
STATIC_DIR = Path(__file__).resolve().parent / "static"
HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # what LitServer.run accepts


@dataclass(frozen=True)
class ServeSettings:
    checkpoint: str
    ensemble: tuple[str, ...] = ()  # more checkpoints, decoded with `checkpoint` as one model
    more_models: tuple[tuple[str, ...], ...] = ()  # further models: a checkpoint or an ensemble
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
    # GNMT alpha of beam search: none given = each checkpoint's own; one = every model's; else
    # one per model, in order (an ensemble's chosen on val need not be its first member's)
    length_penalties: tuple[float, ...] = ()
    # reverse (target->source) checkpoints that rerank the hypotheses of every served model
    # translating the other way (serve.models.reranked_models)
    rerank_with: tuple[str, ...] = ()
    rerank_weight: float | None = None
    log_level: str = "info"
    shutdown_grace: float = 10.0  # seconds for LitServe's own shutdown before the group is killed

    def length_penalty(self, model: int) -> float | None:
        """Model `model`'s length penalty (None: its checkpoint's own)."""
        if not self.length_penalties:
            return None
        return self.length_penalties[model if len(self.length_penalties) > 1 else 0]

    @property
    def models(self) -> list[tuple[str, ...]]:
        """The checkpoints of each model served, the first model first."""
        return [(self.checkpoint, *self.ensemble), *self.more_models]

    def check(self) -> None:
        """Reject unusable settings with a message naming the option."""
        for checkpoint in (c for model in self.models for c in model):
            if not Path(checkpoint).exists():  # a file, or an exported model directory
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
        if any(alpha < 0 for alpha in self.length_penalties):
            raise ConfigError(f"--length-penalty must be >= 0, got {self.length_penalties}")
        if len(self.length_penalties) not in (0, 1, len(self.models)):
            raise ConfigError(
                f"--length-penalty given {len(self.length_penalties)} times for "
                f"{len(self.models)} models (--checkpoint): give it once for all, or once per model"
            )
        from nmt.rerank import check_rerank_options

        check_rerank_options(self.rerank_with, self.rerank_weight)
        for checkpoint in self.rerank_with:
            if not Path(checkpoint).is_file():
                raise FileNotFoundError(f"reverse checkpoint not found: {checkpoint}")
        reranked_models(self.rerank_with, model_specs(self.models))
        if self.accelerator not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--accelerator must be auto, cpu or cuda, got {self.accelerator!r}")
        limits = self.limits
        if min(limits.max_chars, limits.max_texts, limits.max_beam, limits.max_len) < 1:
            raise ConfigError(
                "--max-chars, --max-texts, --max-beam and --max-len must be at least 1"
            )

    def worker_threads(self, devices: int, usable: int | None = None, models: int = 1) -> int:
        """Torch threads per worker: the usable cores (affinity, cgroup quota; `usable` for
        tests) shared by every worker of every model on every device."""
        return self.threads or default_threads(models * devices * self.workers_per_device, usable)


def build_server(settings: ServeSettings, deaths: WorkerDeaths | None = None) -> ls.LitServer:
    """A LitServer for the models with /translate, /align, /health, /info, /languages,
    /metrics, LibreTranslate's API, the web page at /, and the guards.

    `deaths`: where the process running the server counts dead workers (serve.supervisor), so
    that the HTTP front ends answer the requests those workers held with 503.
    """
    metrics = ServerMetrics()
    specs = model_specs(settings.models)
    boards = {spec.id: SharedJSON() for spec in specs}
    apis = _model_apis(settings, specs, metrics, boards)
    # Registered innermost first: metrics see every answer, including 401 and 413.
    guard = {
        "checks": {
            TRANSLATE_PATH: (TranslateRequest, limit_violations),
            ALIGN_PATH: (AlignRequest, align_limit_violations),
        },
        "limits": settings.limits,
    }
    middlewares: list[Any] = [(RequestGuardMiddleware, guard)]
    if settings.api_key:
        open_to_all = {"paths": ("/health", "/"), "prefixes": ("/static/", LIBRETRANSLATE_PREFIX)}
        middlewares.append((ApiKeyMiddleware, {"api_key": settings.api_key, **open_to_all}))
    middlewares.append((MetricsMiddleware, {"metrics": metrics}))
    server = ls.LitServer(
        apis,
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
    threads = settings.worker_threads(len(devices), models=len(specs))
    for index, api in enumerate(apis):
        api.worker_offset = index * len(devices) * settings.workers_per_device
        api.threads = threads
        api.adapt_threads = settings.threads is None  # on CPU: fewer while others load the cores
    endpoints: dict[str, Endpoint] = {
        spec.id: take_route(server.app, api.api_path).endpoint for spec, api in zip(specs, apis)
    }
    catalog = ModelCatalog(tuple(specs))
    _add_model_routes(server.app, catalog, endpoints)
    _add_routes(server.app, metrics, catalog, boards, _serving_info(settings, devices, threads))
    add_libretranslate_routes(
        server.app, catalog, endpoints, settings.limits, settings.api_key or None
    )
    _add_page(server.app)
    return server


def _model_apis(
    settings: ServeSettings,
    specs: Sequence[ModelSpec],
    metrics: ServerMetrics,
    boards: dict[str, SharedJSON],
) -> list[TranslatorAPI]:
    """A LitAPI per model, at an internal path whose last part (LitServe's key for its
    workers) is the model's id; worker ids are offset to be unique across models."""
    apis: list[TranslatorAPI] = []
    reranked = reranked_models(settings.rerank_with, specs)
    for index, spec in enumerate(specs):
        api = TranslatorAPI(
            checkpoint=spec.checkpoints[0],
            ensemble=spec.checkpoints[1:],
            alignment_from=settings.alignment_from,
            metrics=metrics,
            model_board=boards[spec.id],
            max_batch_size=settings.max_batch_size,
            batch_timeout=settings.batch_timeout,
            batch_wait=settings.batch_wait,
            precision=settings.precision,
            length_penalty=settings.length_penalty(index),
            rerank_with=settings.rerank_with if spec.id in reranked else (),
            rerank_weight=settings.rerank_weight,
            api_path=f"/models/{spec.id}",
            model_id=spec.id,
        )
        apis.append(api)
    return apis


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
    app: FastAPI,
    metrics: ServerMetrics,
    catalog: ModelCatalog,
    boards: dict[str, SharedJSON],
    serving: dict[str, Any],
) -> None:
    async def info() -> Any:
        """The served models (id, architecture, languages, parameters, validation BLEU,
        decoding defaults) and the serving settings (batching, workers, limits). `model` is
        the first model, the one requests naming no model or languages go to."""
        published = {spec.id: boards[spec.id].read() for spec in catalog.specs}
        if any(model is None for model in published.values()):
            return JSONResponse({"detail": "model not loaded yet"}, status_code=503)
        models = [
            dict(
                model["info"],
                id=model_id,
                version=model["version"],
                worker_pid=model.get("worker_pid"),
            )
            for model_id, model in published.items()
            if model is not None
        ]
        first = published[catalog.specs[0].id] or {}
        return InfoResponse(
            model=models[0], models=models, serving=serving, worker_pid=first.get("worker_pid")
        )

    async def list_languages() -> list[dict[str, Any]]:
        """Each source language with the target languages the server translates it into (the
        LibreTranslate format)."""
        return languages(catalog)

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
    app.add_api_route("/languages", list_languages, methods=["GET"], tags=["service"])
    app.add_api_route(
        "/metrics", prometheus, methods=["GET"], response_class=PlainTextResponse, tags=["service"]
    )
    app.add_exception_handler(RequestValidationError, validation_error)


ERRORS = {
    400: "Malformed JSON, invalid UTF-8 or an empty body; or no model for the requested "
    "`model` or `source`/`target` (the message names the models served).",
    401: "Missing or wrong API key (when the server requires one).",
    413: "Request body larger than the server accepts.",
    422: "A field is missing, has the wrong type, is unknown, or exceeds a limit; or the model "
    "cannot handle a text (e.g. too long without `truncate`).",
    503: "The inference worker holding the request died (it is being replaced).",
    504: "The request waited in the queue longer than the server's request timeout.",
}


def _add_model_routes(app: FastAPI, catalog: ModelCatalog, endpoints: dict[str, Endpoint]) -> None:
    """POST /translate and POST /align: pick the model, queue the request on its API."""

    async def translate(request: TranslateRequest) -> Any:
        try:
            spec = catalog.pick(request.model, request.source, request.target)
        except RoutingError as e:
            return JSONResponse({"detail": str(e)}, status_code=400)
        return await endpoints[spec.id](request)

    async def align(request: AlignRequest) -> Any:
        try:
            spec = catalog.pick(request.model, request.source, request.target)
        except RoutingError as e:
            return JSONResponse({"detail": str(e)}, status_code=400)
        return await endpoints[spec.id](TranslateRequest.forced(request))

    responses: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorResponse, "description": text} for code, text in ERRORS.items()
    }
    app.add_api_route(
        TRANSLATE_PATH,
        translate,
        methods=["POST"],
        response_model=TranslateResponse,
        tags=["translation"],
        summary="Translate texts",
        description="Translate one text or a list; concurrent requests are batched (per "
        "model). With `alignment: true`, each result carries source/target pieces, the soft "
        "attention matrix, hard and word-level links (Pharaoh 'source-target' pairs) and "
        "character offsets into the source and the translation.",
        responses=responses,
    )
    app.add_api_route(
        ALIGN_PATH,
        align,
        methods=["POST"],
        response_model=AlignResponse,
        tags=["translation"],
        summary="Align given translations (forced alignment)",
        description="Teacher-force each given translation through the model (no decoding) "
        "and return the same alignment block as /translate, with the translation's score.",
        responses=responses,
    )


def _add_page(app: FastAPI) -> None:
    """The web page at / (plain HTML, CSS and JS from serve/static: nothing from other hosts)."""
    take_route(app, "/")  # LitServe's "litserve running"

    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8")

    app.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
