"""Bounded load test of a local `nmt serve`: throughput, latency percentiles, batch sizes.

N concurrent clients send a fixed number of POST /translate requests (sentences of mixed
lengths from Multi30k's test_2016_flickr, in the served model's source language), then the
script prints requests/s, p50/p95/p99 latency, errors by status, and the batch sizes the
server formed (from /metrics, before and after). Traffic goes to loopback addresses only.

    # against a running server
    python scripts/load_test.py --url http://127.0.0.1:8000 --clients 16 --requests 400
    # start a server for the run (and stop it afterwards)
    python scripts/load_test.py --checkpoint runs/multi30k_de_en_de-en/best.pt --max-batch-size 16
    # batching on and off against the same load: one server per setting, then the speed-up
    python scripts/load_test.py --checkpoint CKPT --clients 32 --requests 400 --max-batch-size 32 1
    # sharing the CPU: idle, then while a busy process occupies one core, against one server
    python scripts/load_test.py --checkpoint CKPT --clients 32 --requests 400 --cpu-hog
    # engines side by side: the checkpoint (PyTorch) and its CTranslate2 exports, in turn
    python scripts/load_test.py --checkpoint CKPT CT2_FLOAT32_DIR CT2_INT8_DIR --clients 32

Before measuring, `--warmup` requests (default: one per client) let the server finish its
one-time work (first allocations, lazy initialisation); they are not counted.

The data folder is $NMT_DATA_DIR (default: ../shared/data beside the checkout).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from cpu_hog import cpu_hog  # noqa: E402

from nmt.cpu import cpu_name, usable_cpus  # noqa: E402
from nmt.files import read_lines  # noqa: E402
from serve.metrics import parse_histogram  # noqa: E402

BATCH_HISTOGRAM = "nmt_batch_size_requests"
BATCH_SECONDS = "nmt_batch_seconds"


@dataclass
class Results:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    transport_errors: Counter = field(default_factory=Counter)
    elapsed: float = 0.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--url", help="a running server on this machine, e.g. http://127.0.0.1:8000"
    )
    target.add_argument(
        "--checkpoint",
        nargs="+",
        help="start `nmt serve` on this checkpoint (or exported model directory) for the run; "
        "several: one server each, in turn, compared",
    )
    p.add_argument(
        "--max-batch-size",
        type=int,
        nargs="+",
        default=[32],
        help="for the started server; several values start one server each and compare them",
    )
    p.add_argument("--batch-timeout", type=float, default=0.01, help="for the started server")
    p.add_argument(
        "--batch-wait",
        type=float,
        help="for the started server: fraction of a batch's decoding time it waits under load",
    )
    p.add_argument("--threads", type=int, help="torch threads per worker of the started server")
    p.add_argument("--workers-per-device", type=int, help="worker processes of the started server")
    p.add_argument(
        "--precision", choices=["fp32", "bf16"], help="decoding precision of the started server"
    )
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--requests", type=int, default=200, help="total requests (default 200)")
    p.add_argument(
        "--texts-per-request", type=int, default=1, help="up to this many texts each (default 1)"
    )
    p.add_argument("--beam-size", type=int, help="beam size to ask for (default: the model's)")
    p.add_argument("--alignment", action="store_true", help="ask for alignments too")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds")
    p.add_argument("--api-key", default=os.environ.get("NMT_API_KEY"), help="default: $NMT_API_KEY")
    p.add_argument("--warmup", type=int, help="uncounted requests sent first (default: --clients)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--cpu-hog",
        action="store_true",
        help="measure twice: idle, then while a busy process occupies one core (started and "
        "stopped here); prints the ratio",
    )
    args = p.parse_args(argv)
    if args.clients < 1 or args.requests < 1 or args.texts_per_request < 1:
        p.error("--clients, --requests and --texts-per-request must be at least 1")
    if min(args.max_batch_size) < 1:
        p.error("--max-batch-size must be at least 1")
    if args.warmup is None:
        args.warmup = args.clients
    if args.url:
        host = urlparse(args.url).hostname or ""
        if not _is_loopback(host):
            p.error(
                f"--url must point at this machine (127.0.0.0/8, ::1 or localhost), got {host!r}"
            )
    return args


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_sentences(lang: str, count: int, seed: int) -> list[str]:
    """`count` test sentences with lengths from short to long (sampled per length quartile)."""
    data_dir = Path(os.environ.get("NMT_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
    path = data_dir / "multi30k" / f"test_2016_flickr.{lang}.gz"
    if not path.is_file():
        raise SystemExit(f"load_test: {path} not found (set NMT_DATA_DIR)")
    lines = sorted((line.strip() for line in read_lines(path) if line.strip()), key=len)
    rng = random.Random(seed)
    quartiles = [lines[i * len(lines) // 4 : (i + 1) * len(lines) // 4] for i in range(4)]
    return [rng.choice(quartiles[i % 4]) for i in range(count)]


class Connection:
    """One client's keep-alive HTTP/1.1 connection for its POSTs.

    Hand-rolled because httpx spends about 2.5 ms of CPU per request, and the load generator
    shares the machine with the server it measures: at 100 req/s that is an eighth of this
    2-core CPU taken from the server. This costs a tenth of that.
    """

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        parsed = urlparse(url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self.head = f"Host: {self.host}:{self.port}\r\nContent-Type: application/json\r\n{extra}"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> int:
        """Send one request and read the whole response; returns its status code."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        request = f"POST {path} HTTP/1.1\r\n{self.head}Content-Length: {len(body)}\r\n\r\n"
        self.writer.write(request.encode("latin-1") + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionResetError("the server closed the connection")
        status = int(status_line.split()[1])
        length, chunked, close = 0, False, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding":
                chunked = "chunked" in value
            elif name == "connection":
                close = value == "close"
        if chunked:
            while (size := int((await self.reader.readline()).split(b";")[0], 16)) > 0:
                await self.reader.readexactly(size + 2)
            await self.reader.readline()  # the empty line after the last chunk
        else:
            await self.reader.readexactly(length)
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def run_load(
    url: str, headers: dict[str, str], payloads: list[dict], clients: int, timeout: float
) -> Results:
    results = Results()
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for payload in payloads:
        queue.put_nowait(json.dumps(payload).encode("utf-8"))

    async def worker() -> None:
        connection = Connection(url, headers)
        while not queue.empty():
            body = queue.get_nowait()
            start = time.perf_counter()
            try:
                status = await asyncio.wait_for(connection.post("/translate", body), timeout)
                results.statuses[status] += 1
                if status == 200:
                    results.latencies.append(time.perf_counter() - start)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as e:
                results.transport_errors[type(e).__name__] += 1
                connection.close()
        connection.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    results.elapsed = time.perf_counter() - start
    return results


def build_payloads(args: argparse.Namespace, sentences: list[str]) -> list[dict]:
    rng = random.Random(args.seed)
    payloads, cursor = [], 0
    for _ in range(args.requests):
        n = rng.randint(1, args.texts_per_request)
        texts = [sentences[(cursor + i) % len(sentences)] for i in range(n)]
        cursor += n
        payload: dict = {"texts": texts, "alignment": args.alignment}
        if args.beam_size:
            payload["beam_size"] = args.beam_size
        payloads.append(payload)
    return payloads


def batch_sizes(before: str, after: str) -> dict[str, float]:
    """Batches formed during the run per size bucket (non-cumulative), from two /metrics pages."""
    old, new = parse_histogram(before, BATCH_HISTOGRAM), parse_histogram(after, BATCH_HISTOGRAM)
    counts, previous = {}, 0.0
    for le, total in new.items():
        cumulative = total - old.get(le, 0.0)
        counts[le] = cumulative - previous
        previous = cumulative
    return counts


def percentile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def report(results: Results, before: str, after: str) -> float:
    """Print the run's figures (`before`/`after`: /metrics pages); returns its requests/s."""
    batches = batch_sizes(before, after)
    ok = len(results.latencies)
    total = sum(results.statuses.values()) + sum(results.transport_errors.values())
    print(
        f"requests: {total} in {results.elapsed:.2f}s = {total / results.elapsed:.1f} req/s "
        f"({ok} ok)"
    )
    if ok:
        ms = [1000 * v for v in results.latencies]
        print(
            f"latency ms: p50 {percentile(ms, 50):.1f}  p95 {percentile(ms, 95):.1f}  "
            f"p99 {percentile(ms, 99):.1f}  max {max(ms):.1f}"
        )
    errors = {str(k): v for k, v in results.statuses.items() if k != 200}
    errors.update(results.transport_errors)
    print(f"errors: {errors or 'none'}")
    formed = sum(batches.values())
    if formed:
        sizes = "  ".join(f"<={le}: {int(n)}" for le, n in batches.items() if n)
        requests = _metric_sum(after, BATCH_HISTOGRAM) - _metric_sum(before, BATCH_HISTOGRAM)
        print(f"batches formed: {int(formed)}, mean {requests / formed:.2f} requests  ({sizes})")
        busy = _metric_sum(after, BATCH_SECONDS) - _metric_sum(before, BATCH_SECONDS)
        print(
            f"workers translating: {busy:.2f}s of {results.elapsed:.2f}s "
            f"({busy / results.elapsed:.0%} of wall time, summed over workers)"
        )
    return total / results.elapsed


def _metric_sum(text: str, histogram: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"{histogram}_sum "):
            return float(line.split()[1])
    return 0.0


async def measure(args: argparse.Namespace, url: str) -> float:
    """One load run against `url`; returns requests/s."""
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=args.timeout) as client:
        info = (await client.get("/info")).raise_for_status().json()
        model = info["model"]
        engine = model.get("engine", "pytorch")
        if model.get("quantization"):
            engine += f" {model['quantization']}"
        print(
            f"model: {model['name']} ({model['arch']}, {model['src_lang']}->{model['tgt_lang']}, "
            f"{engine}); "
            f"batching: max {info['serving']['max_batch_size']}, "
            f"timeout {info['serving']['batch_timeout']}s, "
            f"wait under load {info['serving'].get('batch_wait', 0)}; "
            f"{args.clients} clients, {args.requests} requests"
        )
        sentences = load_sentences(model["src_lang"], 4 * args.requests, args.seed)
        payloads = build_payloads(args, sentences)
        if args.warmup:
            await run_load(url, headers, payloads[: args.warmup], args.clients, args.timeout)
        before = (await client.get("/metrics")).text
        results = await run_load(url, headers, payloads, args.clients, args.timeout)
        after = (await client.get("/metrics")).text
    return report(results, before, after)


@contextmanager
def started_server(args: argparse.Namespace, checkpoint: str, max_batch_size: int) -> Iterator[str]:
    """`nmt serve` on a free loopback port for the duration of the block."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "nmt.cli",
        "serve",
        "--checkpoint",
        checkpoint,
        "--port",
        str(port),
        "--max-batch-size",
        str(max_batch_size),
        "--batch-timeout",
        str(args.batch_timeout),
        "--log-level",
        "warning",
    ]
    if args.batch_wait is not None:
        command += ["--batch-wait", str(args.batch_wait)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.workers_per_device:
        command += ["--workers-per-device", str(args.workers_per_device)]
    if args.precision:
        command += ["--precision", args.precision]
    if args.api_key:
        command += ["--api-key", args.api_key]
    process = subprocess.Popen(command, cwd=REPO_ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_healthy(url: str, process: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"load_test: the server exited with code {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise SystemExit("load_test: the server did not become healthy")


def measure_shared(args: argparse.Namespace, url: str) -> float:
    """One load run, or with --cpu-hog two (idle, then with a busy core); returns idle req/s."""
    idle = asyncio.run(measure(args, url))
    if args.cpu_hog:
        with cpu_hog() as core:
            print(f"--- while a busy process occupies core {core}")
            busy = asyncio.run(measure(args, url))
        print(f"with a busy core: {busy:.1f} req/s = {busy / idle:.0%} of idle ({idle:.1f})")
    return idle


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"CPU: {cpu_name()}, {usable_cpus()} usable cores; load average {load}")
    if args.url:
        measure_shared(args, args.url.rstrip("/"))
        return
    throughput: dict[tuple[str, int], float] = {}
    for checkpoint in args.checkpoint:
        for size in args.max_batch_size:
            print(f"--- {_label(args, checkpoint, size)}")
            with started_server(args, checkpoint, size) as url:
                throughput[checkpoint, size] = measure_shared(args, url)
    if len(throughput) > 1:
        # against the first checkpoint's smallest max_batch_size (usually 1: batching off)
        base = throughput[args.checkpoint[0], min(args.max_batch_size)]
        print(
            "throughput: "
            + ", ".join(
                f"{_label(args, checkpoint, size)}: {rps:.1f} req/s ({rps / base:.2f}x)"
                for (checkpoint, size), rps in throughput.items()
            )
        )


def _label(args: argparse.Namespace, checkpoint: str, size: int) -> str:
    """A run's name: its max_batch_size, and its checkpoint when several are compared."""
    label = f"max_batch_size {size}"
    return f"{checkpoint}, {label}" if len(args.checkpoint) > 1 else label


if __name__ == "__main__":
    main()
