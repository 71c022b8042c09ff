"""Every use of LitServe beyond its documented API, in one place.

Written against litserve 0.2.x: the pin `litserve>=0.2.10,<0.3` in pyproject.toml is there
because of this module. Before widening it, check each function below against the new
version's `litserve/server.py` and `litserve/loops/`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from typing import Any

import litserve as ls
from fastapi import FastAPI, HTTPException
from fastapi.routing import APIRoute
from litserve.utils import LitAPIStatus, WorkerSetupStatus


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
    (logging a traceback) once the manager is shut down, and whose restart path answers the
    requests of a dead worker only in its own process's `response_buffer`, which is empty when
    the API servers are forked processes: they would wait forever. serve.supervisor restarts
    workers instead (`restart_worker`, `fail_requests_of_worker`)."""
    server._monitor_workers = False


def inference_workers(server: ls.LitServer) -> list[mp.Process]:
    """The worker processes of a running server (none before `run` has started them)."""
    return list(getattr(server, "inference_workers", []))


def report_worker_id(offset: int) -> None:
    """In an inference worker's `setup()`: make the worker report `offset` + its LitServe
    worker id with each request it takes. LitServe numbers the workers of each API from 0,
    so with several APIs (models) two workers would share an id; the offset (the workers of
    the APIs before this one) makes it the worker's index in `inference_workers`, which is
    what serve.supervisor counts deaths by. The loop reads `LITSERVE_WORKER_ID` from the
    environment on first use, after `setup()`."""
    local = os.environ.get("LITSERVE_WORKER_ID")
    if local is not None:  # unset when setup() runs outside a LitServe worker (tests)
        os.environ["LITSERVE_WORKER_ID"] = str(offset + int(local))


def worker_of_api(server: ls.LitServer, index: int) -> tuple[ls.LitAPI, int]:
    """(API, its own worker id) of worker `index` of `inference_workers`: `run` starts each
    API's workers in turn, as many as `_inference_workers_config_for_api` lists."""
    for lit_api in server.litapi_connector.lit_apis:
        count = len(server._inference_workers_config_for_api(lit_api.api_path))
        if index < count:
            return lit_api, index
        index -= count
    raise IndexError(f"no inference worker {index}")


def restart_worker(server: ls.LitServer, index: int) -> mp.Process:
    """Start a new inference worker in place of worker `index` (of `inference_workers`).

    Relies on `LitServer.launch_single_inference_worker(lit_api, worker_id)`, which marks the
    worker STARTING in `workers_setup_status` (so /health says 503 until its `setup()` has
    returned) and spawns it on the same device and request queue, and on `inference_workers`
    being the list `run` polls and terminates at shutdown.
    """
    lit_api, local = worker_of_api(server, index)
    process = server.launch_single_inference_worker(lit_api, local)
    server.inference_workers[index] = process
    return process


def worker_failed_setup(server: ls.LitServer, index: int) -> bool:
    """Whether worker `index` reported that its `setup()` raised (it then exits): LitServe
    keeps each worker's state in the manager-backed dict `workers_setup_status`, keyed
    "<last part of the API path>_<worker id>", with WorkerSetupStatus.ERROR for this case."""
    lit_api, local = worker_of_api(server, index)
    key = f"{lit_api.api_path.split('/')[-1]}_{local}"
    try:
        return server.workers_setup_status.get(key) == WorkerSetupStatus.ERROR
    except (OSError, EOFError):  # the manager is already shut down
        return False


def fail_requests_of_worker(server: ls.LitServer, worker: int, status: int, detail: str) -> int:
    """Answer every request that worker `worker` had taken with an HTTP error; returns how many.

    Call it in an HTTP front-end process, on its event loop. Relies on the server having been
    built with `restart_workers=True`: a worker then sends a START message for each request it
    takes from the queue, and the front end records that worker's id in the request's
    `response_buffer` item (litserve.utils.ResponseBufferItem: event, worker_id, response).
    Setting `response` to (HTTPException, ERROR) and the event makes LitServe's request handler
    raise that exception, which FastAPI answers as JSON `{"detail": ...}`.

    Requests no worker has claimed yet are answered too: a worker sends START through a
    multiprocessing queue whose feeder thread dies with it, and a START still in flight reaches
    this process after the death is seen, so an unclaimed request may be one the dead worker
    had taken and would otherwise wait forever. Clients retry a 503; a lost request never ends.
    """
    failed = 0
    for item in list(server.response_buffer.values()):
        if item.worker_id in (worker, None) and not item.event.is_set():
            item.response = (HTTPException(status_code=status, detail=detail), LitAPIStatus.ERROR)
            item.event.set()
            failed += 1
    return failed


def take_route(app: FastAPI, path: str) -> APIRoute:
    """Remove and return the route LitServer registered at `path` (an API's, or its index)."""
    route = next(r for r in app.router.routes if isinstance(r, APIRoute) and r.path == path)
    app.router.routes.remove(route)
    return route
