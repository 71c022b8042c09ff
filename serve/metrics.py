"""Server metrics shared by every process of one server, rendered as Prometheus text.

LitServe runs the HTTP front end and the inference workers in separate processes (forked API
servers, spawned workers), so per-process counters would each see only a slice: requests are
counted where HTTP is answered, batches where workers form them. All numbers therefore live in
one block of shared memory (a `multiprocessing.Array` of doubles under one lock) created before
any process starts; forked processes inherit it and spawned workers receive it when their
LitAPI is pickled at start. Label sets are fixed up front, which keeps the layout a flat array.
"""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import dataclass

ENDPOINTS = (
    "/translate",
    "/align",
    "/libretranslate/translate",
    "/health",
    "/info",
    "/languages",
    "/metrics",
    "other",
)
STATUSES = (200, 400, 401, 404, 405, 413, 422, 500, 503, 504)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256)
SENTENCE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
FAILURE_KINDS = ("invalid_input", "internal")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class _Histogram:
    name: str
    help: str
    buckets: tuple[float, ...]
    offset: int  # first slot: one per bucket, then +Inf, sum, count

    @property
    def size(self) -> int:
        return len(self.buckets) + 3


def _histograms(start: int) -> tuple[_Histogram, _Histogram, _Histogram, _Histogram]:
    specs = (
        (
            "nmt_request_latency_seconds",
            "Time to answer POST /translate, as seen by the HTTP front end.",
            LATENCY_BUCKETS,
        ),
        (
            "nmt_batch_size_requests",
            "Requests per batch formed by the inference workers.",
            BATCH_BUCKETS,
        ),
        (
            "nmt_batch_size_sentences",
            "Sentences per batch formed by the inference workers.",
            SENTENCE_BUCKETS,
        ),
        ("nmt_batch_seconds", "Time a worker spent translating one batch.", LATENCY_BUCKETS),
    )
    out = []
    for name, help_text, buckets in specs:
        hist = _Histogram(name, help_text, tuple(float(b) for b in buckets), start)
        out.append(hist)
        start += hist.size
    return tuple(out)  # type: ignore[return-value]


class ServerMetrics:
    """Counters and histograms in shared memory; safe to update from any server process."""

    def __init__(self) -> None:
        self._n_requests = len(ENDPOINTS) * (len(STATUSES) + 1)  # +1: any other status
        self._failures_at = self._n_requests
        self._sentences_at = self._failures_at + len(FAILURE_KINDS)
        self._latency, self._batch, self._batch_sentences, self._batch_seconds = _histograms(
            self._sentences_at + 1
        )
        size = self._batch_seconds.offset + self._batch_seconds.size
        # Spawn-context lock: usable by forked and spawned processes alike.
        self._values = mp.get_context("spawn").Array("d", size)

    # ---------------------------------------------------------------- recording

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        endpoint = path if path in ENDPOINTS else "other"
        column = STATUSES.index(status) if status in STATUSES else len(STATUSES)
        slot = ENDPOINTS.index(endpoint) * (len(STATUSES) + 1) + column
        with self._values.get_lock():
            self._values[slot] += 1
            if endpoint == "/translate":
                self._observe(self._latency, seconds)

    def observe_batch(self, requests: int, sentences: int, seconds: float) -> None:
        """One batch as formed by a worker: `requests` HTTP requests holding `sentences` texts."""
        with self._values.get_lock():
            self._observe(self._batch, requests)
            self._observe(self._batch_sentences, sentences)
            self._observe(self._batch_seconds, seconds)
            self._values[self._sentences_at] += sentences

    def observe_failure(self, kind: str) -> None:
        """A request that failed inside a worker (its neighbours in the batch still succeed)."""
        with self._values.get_lock():
            self._values[self._failures_at + FAILURE_KINDS.index(kind)] += 1

    def _observe(self, hist: _Histogram, value: float) -> None:
        index = next((i for i, b in enumerate(hist.buckets) if value <= b), len(hist.buckets))
        self._values[hist.offset + index] += 1
        self._values[hist.offset + len(hist.buckets) + 1] += value
        self._values[hist.offset + len(hist.buckets) + 2] += 1

    # ---------------------------------------------------------------- reading

    def snapshot(self) -> list[float]:
        with self._values.get_lock():
            return [float(v) for v in self._values[:]]

    def render(self) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        values = self.snapshot()
        lines = _render_requests(values)
        lines += [
            "# HELP nmt_worker_failures_total Requests that failed in translation, by kind.",
            "# TYPE nmt_worker_failures_total counter",
        ]
        for i, kind in enumerate(FAILURE_KINDS):
            lines.append(
                f'nmt_worker_failures_total{{kind="{kind}"}} {_num(values[self._failures_at + i])}'
            )
        lines += [
            "# HELP nmt_translated_sentences_total Sentences translated by the workers.",
            "# TYPE nmt_translated_sentences_total counter",
            f"nmt_translated_sentences_total {_num(values[self._sentences_at])}",
        ]
        for hist in (self._latency, self._batch, self._batch_sentences, self._batch_seconds):
            lines += _render_histogram(hist, values)
        return "\n".join(lines) + "\n"


def _render_requests(values: list[float]) -> list[str]:
    requests = [
        "# HELP nmt_http_requests_total HTTP requests answered, by endpoint and status code.",
        "# TYPE nmt_http_requests_total counter",
    ]
    errors = [
        "# HELP nmt_http_errors_total HTTP requests answered with an error, by endpoint and class.",
        "# TYPE nmt_http_errors_total counter",
    ]
    width = len(STATUSES) + 1
    for e, endpoint in enumerate(ENDPOINTS):
        row = values[e * width : (e + 1) * width]
        for s, status in enumerate(STATUSES):
            if row[s]:
                requests.append(
                    f'nmt_http_requests_total{{endpoint="{endpoint}",status="{status}"}} '
                    f"{_num(row[s])}"
                )
        if row[-1]:
            requests.append(
                f'nmt_http_requests_total{{endpoint="{endpoint}",status="other"}} {_num(row[-1])}'
            )
        client = sum(row[s] for s, status in enumerate(STATUSES) if 400 <= status < 500)
        server = sum(row[s] for s, status in enumerate(STATUSES) if status >= 500)
        errors.append(f'nmt_http_errors_total{{endpoint="{endpoint}",class="4xx"}} {_num(client)}')
        errors.append(f'nmt_http_errors_total{{endpoint="{endpoint}",class="5xx"}} {_num(server)}')
    return requests + errors


def _render_histogram(hist: _Histogram, values: list[float]) -> list[str]:
    lines = [f"# HELP {hist.name} {hist.help}", f"# TYPE {hist.name} histogram"]
    cumulative = 0.0
    for i, bound in enumerate(hist.buckets):
        cumulative += values[hist.offset + i]
        lines.append(f'{hist.name}_bucket{{le="{_num(bound)}"}} {_num(cumulative)}')
    cumulative += values[hist.offset + len(hist.buckets)]
    lines.append(f'{hist.name}_bucket{{le="+Inf"}} {_num(cumulative)}')
    lines.append(f"{hist.name}_sum {_num(values[hist.offset + len(hist.buckets) + 1])}")
    lines.append(f"{hist.name}_count {_num(values[hist.offset + len(hist.buckets) + 2])}")
    return lines


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def parse_histogram(text: str, name: str) -> dict[str, float]:
    """Cumulative bucket counts {le: count} of histogram `name` in a Prometheus text page."""
    prefix = f'{name}_bucket{{le="'
    buckets = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            le, _, count = line[len(prefix) :].partition('"} ')
            buckets[le] = float(count)
    return buckets
