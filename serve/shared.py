"""A small JSON document in shared memory: how workers tell the HTTP front end about the model.

The model is loaded only inside the inference workers, yet `/info` and the response's model
name/version are answered by the front end. A worker publishes what its Translator says once
`setup()` has loaded it; the front end reads it. Like `ServerMetrics`, the buffer is created
before any server process starts, so forked and spawned processes all see the same memory.
"""

from __future__ import annotations

import json
import multiprocessing as mp
from typing import Any

DEFAULT_CAPACITY = 1 << 16


class SharedJSON:
    """One JSON object, written whole and read whole under a lock."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self._buffer = mp.get_context("spawn").Array("c", capacity)
        self._length = mp.get_context("spawn").RawValue("q", 0)

    def publish(self, document: dict[str, Any]) -> None:
        data = json.dumps(document, ensure_ascii=False, default=str).encode("utf-8")
        if len(data) > len(self._buffer):
            raise ValueError(
                f"document of {len(data)} bytes exceeds the {len(self._buffer)}-byte buffer"
            )
        with self._buffer.get_lock():
            self._buffer[: len(data)] = data
            self._length.value = len(data)

    def read(self) -> dict[str, Any] | None:
        """The last published document, or None before any worker has published."""
        with self._buffer.get_lock():
            length = self._length.value
            data = bytes(self._buffer[:length]) if length else b""
        return json.loads(data) if data else None


class WorkerDeaths:
    """How many times each inference worker (by LitServe worker id) has died: the server
    process counts, every HTTP front end reads and answers the requests a dead worker held
    (see serve.supervisor and serve.middleware.WorkerLossMiddleware)."""

    def __init__(self, capacity: int = 1024) -> None:
        # One writer (the server process's watcher), so no lock: a reader sees old or new.
        self._counts = mp.get_context("spawn").RawArray("q", capacity)

    def record(self, worker: int) -> None:
        self._counts[worker] += 1

    def counts(self) -> list[int]:
        return list(self._counts)
