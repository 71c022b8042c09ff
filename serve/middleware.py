"""ASGI middlewares of the front end: metrics, API key, the request guard, and the watch
that answers the requests of a dead inference worker.

They run in the HTTP process, before a request is put on the workers' queue: a request that
is refused here costs no worker time and cannot fail the batch it would have joined.
Plain ASGI (not BaseHTTPMiddleware) so bodies are not buffered twice and errors stay cheap.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.metrics import ServerMetrics
from serve.schemas import Limits
from serve.shared import WorkerDeaths

log = logging.getLogger(__name__)


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    data = json.dumps(body, ensure_ascii=False).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


def validation_detail(error: ValidationError) -> tuple[str, list[dict[str, Any]]]:
    """One readable line naming every bad field, plus the structured list."""
    items = []
    for e in error.errors(include_url=False, include_context=False, include_input=False):
        loc = ".".join(str(p) for p in e["loc"]) or "request"
        message = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
        message = message.removeprefix("Value error, ")
        items.append({"field": loc, "message": message, "type": e["type"]})
    return "; ".join(f"{i['field']}: {i['message']}" for i in items), items


class MetricsMiddleware:
    """Counts every answered request by endpoint and status, and times /translate."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        status = 500  # what the client gets if the app raises before answering

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.metrics.observe_request(scope["path"], status, time.monotonic() - start)


class ApiKeyMiddleware:
    """Requires the key as `X-API-Key: KEY` or `Authorization: Bearer KEY` except on open
    `paths` and under open `prefixes` (the web page; LibreTranslate's API, which reads the
    key from its requests' `api_key` field)."""

    def __init__(
        self,
        app: ASGIApp,
        api_key: str,
        paths: tuple[str, ...] = ("/health",),
        prefixes: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.api_key = api_key.encode("utf-8")
        self.paths = paths
        self.prefixes = prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._open(scope["path"]) or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        await send_json(
            send,
            401,
            {
                "detail": "missing or invalid API key: send it as 'X-API-Key: KEY' or "
                "'Authorization: Bearer KEY'"
            },
            [(b"www-authenticate", b'Bearer realm="nmt"')],
        )

    def _open(self, path: str) -> bool:
        return path in self.paths or any(path.startswith(prefix) for prefix in self.prefixes)

    def _authorized(self, scope: Scope) -> bool:
        headers = dict(scope["headers"])
        offered = headers.get(b"x-api-key", b"")
        bearer = headers.get(b"authorization", b"")
        if not offered and bearer[:7].lower() == b"bearer ":
            offered = bearer[7:].strip()
        return bool(offered) and secrets.compare_digest(offered, self.api_key)


Check = tuple[type[BaseModel], Callable[[Any, Limits], list[str]]]  # schema, limit check


class RequestGuardMiddleware:
    """Checks POST bodies of the guarded paths (/translate, /align): size (413), UTF-8 and
    JSON (400), the path's schema and limits (422).

    A request that passes is handed on with its body replayed and its content type set to JSON
    (so `curl -d` without a header works too).
    """

    def __init__(self, app: ASGIApp, checks: dict[str, Check], limits: Limits) -> None:
        self.app = app
        self.checks = checks
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        check = self.checks.get(scope["path"]) if scope["type"] == "http" else None
        if check is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = await self._read_body(scope, receive)
        if body is None:
            await send_json(
                send, 413, {"detail": f"request body exceeds {self.limits.body_bytes} bytes"}
            )
            return
        problem = self._check(body, *check)
        if problem is not None:
            status, content = problem
            await send_json(send, status, content)
            return
        await self.app(_with_json_type(scope), _replay(body, receive), send)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body, or None as soon as it is known to be too large."""
        limit = self.limits.body_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return None
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    def _check(
        self,
        body: bytes,
        schema: type[BaseModel],
        violations: Callable[[Any, Limits], list[str]],
    ) -> tuple[int, dict[str, Any]] | None:
        if not body.strip():
            return 400, {"detail": 'empty request body: send a JSON object such as {"text": "..."}'}
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as e:
            return 400, {"detail": f"request body is not valid UTF-8 (byte {e.start})"}
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as e:
            return 400, {"detail": f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}"}
        if not isinstance(payload, dict):
            return 422, {"detail": f"request: expected a JSON object, got {type(payload).__name__}"}
        try:
            request = schema.model_validate(payload)
        except ValidationError as e:
            detail, items = validation_detail(e)
            return 422, {"detail": detail, "errors": items}
        problems = violations(request, self.limits)
        if problems:
            return 422, {"detail": "; ".join(problems)}
        return None


def _with_json_type(scope: Scope) -> Scope:
    headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
    return dict(scope, headers=headers + [(b"content-type", b"application/json")])


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later calls wait for the disconnect, as usual

    return replay


class WorkerLossMiddleware:
    """Answers the requests a dead inference worker had taken with 503, instead of letting
    them wait forever for a response that will never come.

    The server process counts worker deaths in shared memory (serve.supervisor); each HTTP
    front-end process polls the counts from a task started with its first ASGI event
    (lifespan startup) and calls `fail(worker)`, which answers that worker's pending requests.
    """

    def __init__(
        self,
        app: ASGIApp,
        deaths: WorkerDeaths,
        fail: Callable[[int], int],
        interval: float = 0.1,
    ) -> None:
        self.app = app
        self.deaths = deaths
        self.fail = fail
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="worker-loss")
        await self.app(scope, receive, send)

    async def _watch(self) -> None:
        seen = self.deaths.counts()
        while True:
            await asyncio.sleep(self.interval)
            counts = self.deaths.counts()
            for worker, (before, now) in enumerate(zip(seen, counts)):
                if now != before:
                    failed = self.fail(worker)
                    log.warning(
                        "inference worker %d died; %d request(s) answered 503", worker, failed
                    )
            seen = counts
