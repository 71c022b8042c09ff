"""Every use of LitServe beyond its documented API, in one place.

Written against litserve 0.2.x: the pin `litserve>=0.2.10,<0.3` in pyproject.toml is there
because of this module. Before widening it, check each function below against the new
version's `litserve/server.py` and `litserve/loops/`.
"""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

import litserve as ls
from fastapi import FastAPI
from fastapi.routing import APIRoute


def set_batch_timeout(api: ls.LitAPI, seconds: float) -> None:
    """How long the worker collects its next batch: LitServe's batched loop reads
    `batch_timeout` from the API anew before collecting each batch."""
    api.batch_timeout = seconds


def server_devices(server: ls.LitServer) -> list[Any]:
    """The devices the server starts workers on: LitServer resolves `devices="auto"` when it is
    built (GPUs found by nvidia-smi), and keeps the result in an undocumented attribute."""
    return list(server.devices)


def set_graceful_timeout(server: ls.LitServer, seconds: float) -> None:
    """Seconds LitServe waits for its API servers at shutdown (no constructor argument)."""
    server.uvicorn_graceful_timeout = seconds


def disable_worker_monitor(server: ls.LitServer) -> None:
    """Turn off LitServe's worker monitor thread, which polls manager-backed state and crashes
    (logging a traceback) once the manager is shut down."""
    server._monitor_workers = False


def inference_workers(server: ls.LitServer) -> list[mp.Process]:
    """The worker processes of a running server (none before `run` has started them)."""
    return list(getattr(server, "inference_workers", []))


def take_route(app: FastAPI, path: str) -> APIRoute:
    """Remove and return the route LitServer registered for its API's `path`."""
    route = next(r for r in app.router.routes if isinstance(r, APIRoute) and r.path == path)
    app.router.routes.remove(route)
    return route
