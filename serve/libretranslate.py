"""LibreTranslate's API under the prefix /libretranslate: what self-hosted MT clients speak.

Clients (libretranslatepy, editor plugins, apps) take `http://HOST:PORT/libretranslate` as
their server URL and call POST /translate (JSON or form-encoded: `q` a string or a list,
`source`, `target`, `format`, `alternatives`, `api_key`) and GET /languages. Requests go to
the same per-model queues as our own /translate, so they are batched with it. Errors are
LibreTranslate's: `{"error": "..."}` with 400 (bad request, unknown pair), 403 (API key)
and the server's own 503/504; `format=html` gets a 400 (only text is translated).
Language detection is not offered: `source=auto` is accepted only when a single hosted
source language translates into `target`.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from serve.middleware import validation_detail
from serve.models import ModelCatalog, RoutingError
from serve.schemas import Limits, TranslateRequest, TranslateResponse, limit_violations

PREFIX = "/libretranslate"
Endpoint = Callable[[TranslateRequest], Awaitable[Any]]
LANGUAGE_NAMES = {
    "ar": "Arabic",
    "cs": "Czech",
    "de": "German",
    "en": "English",
    "es": "Spanish",
    "fr": "French",
    "it": "Italian",
    "ja": "Japanese",
    "nl": "Dutch",
    "pt": "Portuguese",
    "ro": "Romanian",
    "ru": "Russian",
    "tr": "Turkish",
    "uk": "Ukrainian",
    "zh": "Chinese",
}


class LibreTranslateError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def languages(catalog: ModelCatalog) -> list[dict[str, Any]]:
    """LibreTranslate's language list: each source language with the targets it reaches."""
    return [
        {"code": code, "name": LANGUAGE_NAMES.get(code, code), "targets": targets}
        for code, targets in catalog.languages()
    ]


def add_libretranslate_routes(
    app: FastAPI,
    catalog: ModelCatalog,
    endpoints: dict[str, Endpoint],
    limits: Limits,
    api_key: str | None,
) -> None:
    async def translate(request: Request) -> JSONResponse:
        """LibreTranslate's POST /translate."""
        try:
            fields = await _fields(request)
            _check_key(fields, request, api_key)
            worker_request, model = _translate_request(fields, catalog, limits)
            response = await endpoints[model](worker_request)
            return JSONResponse(_translated(response, isinstance(fields["q"], list)))
        except LibreTranslateError as e:
            return JSONResponse({"error": e.message}, status_code=e.status)
        except HTTPException as e:  # a dead worker (503) or a request that waited too long (504)
            return JSONResponse({"error": str(e.detail)}, status_code=e.status_code)

    async def list_languages() -> list[dict[str, Any]]:
        """LibreTranslate's GET /languages."""
        return languages(catalog)

    app.add_api_route(f"{PREFIX}/translate", translate, methods=["POST"], tags=["libretranslate"])
    app.add_api_route(
        f"{PREFIX}/languages", list_languages, methods=["GET"], tags=["libretranslate"]
    )


async def _fields(request: Request) -> dict[str, Any]:
    """The request's parameters, from a JSON body or a form-encoded one (repeated `q`: a list)."""
    body = await request.body()
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith("application/json"):
            payload = json.loads(body)
            if not isinstance(payload, dict):
                raise LibreTranslateError(400, "Invalid request: expected a JSON object")
            return payload
        if content_type.startswith("multipart/"):
            raise LibreTranslateError(
                400, "Invalid request: send JSON or application/x-www-form-urlencoded"
            )
        form = parse_qs(body.decode("utf-8"), keep_blank_values=True)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LibreTranslateError(400, f"Invalid request: {e}") from None
    return {
        key: values if key == "q" and len(values) > 1 else values[0] for key, values in form.items()
    }


def _check_key(fields: dict[str, Any], request: Request, api_key: str | None) -> None:
    if api_key is None:
        return
    offered = fields.get("api_key") or request.headers.get("x-api-key") or ""
    if not secrets.compare_digest(str(offered).encode(), api_key.encode()):
        raise LibreTranslateError(403, "Invalid API key")


def _translate_request(
    fields: dict[str, Any], catalog: ModelCatalog, limits: Limits
) -> tuple[TranslateRequest, str]:
    """Our request for the model LibreTranslate's parameters name, and that model's id."""
    for name in ("q", "source", "target"):
        if fields.get(name) in (None, "", []):
            raise LibreTranslateError(400, f"Invalid request: missing {name} parameter")
    if fields.get("format", "text") != "text":
        raise LibreTranslateError(
            400, f"format {fields['format']!r} is not supported: this server translates text only"
        )
    try:
        alternatives = int(fields.get("alternatives", 0))
    except (TypeError, ValueError):
        raise LibreTranslateError(400, "Invalid request: alternatives must be a number") from None
    if not 0 <= alternatives < limits.max_beam:
        raise LibreTranslateError(
            400, f"Invalid request: alternatives must be from 0 to {limits.max_beam - 1}"
        )
    source, target = str(fields["source"]), str(fields["target"])
    if source == "auto":
        sources = [code for code, targets in catalog.languages() if target in targets]
        if len(sources) != 1:
            raise LibreTranslateError(
                400,
                f"cannot detect the language: give source; this server translates "
                f"{catalog.available()}",
            )
        source = sources[0]
    try:
        model = catalog.pick(None, source, target).id
    except RoutingError as e:
        raise LibreTranslateError(400, str(e)) from None
    q = fields["q"]
    try:
        request = TranslateRequest.model_validate(
            {
                "texts": q if isinstance(q, list) else [q],
                "beam_size": alternatives + 1 if alternatives else None,
                "n_best": alternatives + 1 if alternatives else None,
            }
        )
    except ValidationError as e:
        raise LibreTranslateError(400, f"Invalid request: {validation_detail(e)[0]}") from None
    problems = limit_violations(request, limits)
    if problems:
        raise LibreTranslateError(400, "Invalid request: " + "; ".join(problems))
    return request, model


def _translated(response: Any, as_list: bool) -> dict[str, Any]:
    """Our worker's answer in LibreTranslate's shape (an error response raises)."""
    if isinstance(response, JSONResponse):
        detail = json.loads(bytes(response.body)).get("detail", "translation failed")
        status = 400 if response.status_code == 422 else response.status_code
        raise LibreTranslateError(status, str(detail))
    assert isinstance(response, TranslateResponse)
    texts = [t.translation for t in response.translations]
    alternatives = [[h.translation for h in (t.n_best or [])[1:]] for t in response.translations]
    out: dict[str, Any] = {"translatedText": texts if as_list else texts[0]}
    if any(t.n_best for t in response.translations):
        out["alternatives"] = alternatives if as_list else alternatives[0]
    return out
