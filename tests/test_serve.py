"""The translation server as clients use it.

Most tests talk to an in-process server (FastAPI TestClient + LitServe's `wrap_litserve_start`,
which spawns a real inference worker); one starts the real `nmt serve` on a free 127.0.0.1
port and checks batching over HTTP, agreement with the library and CLI, and that SIGTERM
leaves no process behind. Every traffic loop is bounded and local.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from litserve.utils import wrap_litserve_start
from serving import free_port, serve_command, wait_healthy

from nmt.config import ConfigError
from serve.api import TranslatorAPI, next_batch_timeout
from serve.app import ServeSettings, build_server
from serve.metrics import ServerMetrics, parse_histogram
from serve.schemas import Limits, TranslateRequest
from serve.shared import SharedJSON
from serve.supervisor import CrashLoop, group_members

API_KEY = "test-key"
LIMITS = Limits(max_chars=1500, max_texts=8, max_beam=4, max_len=64)
GOOD = {"text": "Ein Hund läuft über die Wiese."}


def _source_lines(data_dir: Path, count: int) -> list[str]:
    with gzip.open(data_dir / "multi30k" / "test_2016_flickr.de.gz", "rt", encoding="utf-8") as f:
        return [next(f).rstrip("\n") for _ in range(count)]


def _batches_over_one(metrics_text: str) -> float:
    buckets = parse_histogram(metrics_text, "nmt_batch_size_requests")
    return buckets["+Inf"] - buckets["1"]


@pytest.fixture(scope="module")
def client(tiny_checkpoint: Path):
    """An in-process server with an API key, small limits and a 0.2 s batching window."""
    settings = ServeSettings(
        checkpoint=str(tiny_checkpoint),
        max_batch_size=8,
        batch_timeout=0.2,
        accelerator="cpu",
        api_key=API_KEY,
        limits=LIMITS,
        threads=1,
    )
    server = build_server(settings)
    with (
        wrap_litserve_start(server) as started,
        TestClient(started.app, headers={"X-API-Key": API_KEY}) as c,
    ):
        wait_healthy(c.get)
        yield c


# --------------------------------------------------------------------------- API surface


def test_translate_single_and_list_with_alignment(client: TestClient) -> None:
    single = client.post("/translate", json=GOOD)
    assert single.status_code == 200, single.text
    body = single.json()
    assert [t["source"] for t in body["translations"]] == [GOOD["text"]]
    assert body["translations"][0]["alignment"] is None
    assert body["model"]["name"] == "tiny" and len(body["model"]["version"]) == 12
    assert body["timing"]["total_ms"] >= body["timing"]["translate_ms"] > 0

    texts = ["Zwei Männer spielen Fußball.", "", "Eine Frau liest ein Buch im Park."]
    many = client.post(
        "/translate", json={"texts": texts, "alignment": True, "beam_size": 3, "n_best": 2}
    )
    assert many.status_code == 200, many.text
    results = many.json()["translations"]
    assert [r["source"] for r in results] == texts
    assert results[1]["translation"] == ""
    for r in results:
        a = r["alignment"]
        assert len(a["matrix"]) == len(a["tgt_tokens"])
        assert all(len(row) == len(a["src_tokens"]) for row in a["matrix"])
        for row in a["matrix"]:
            assert abs(sum(row) - 1.0) < 1e-3
        assert len(a["hard"]) == len(a["tgt_tokens"])
        assert a["pharaoh"] == " ".join(f"{i}-{j}" for i, j in a["hard"])
        assert all(0 <= i < len(a["src_tokens"]) for i, _ in a["hard"])
        w = a["words"]
        assert len(w["matrix"]) == len(w["tgt_words"]) and len(w["links"]) == len(w["tgt_words"])
        assert len(r["n_best"]) == (2 if r["source"] else 1)
        assert r["n_best"][0]["score"] == pytest.approx(r["score"])


def test_info_health_metrics_and_docs(client: TestClient) -> None:
    info = client.get("/info").json()
    assert info["model"]["arch"] == "transformer"
    assert (info["model"]["src_lang"], info["model"]["tgt_lang"]) == ("de", "en")
    assert info["model"]["lowercase"] is False
    assert info["model"]["parameters"] > 0 and "valid_bleu" in info["model"]
    assert info["model"]["decode"]["beam_size"] == 2
    assert info["serving"]["max_batch_size"] == 8 and info["serving"]["limits"]["max_texts"] == 8
    assert info["serving"]["batch_timeout"] == 0.2 and info["serving"]["batch_wait"] == 0.1

    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'nmt_http_requests_total{endpoint="/info",status="200"}' in metrics.text
    assert "nmt_batch_size_requests_bucket" in metrics.text

    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    assert {
        "TranslateRequest",
        "TranslateResponse",
        "AlignmentOut",
        "HypothesisOut",
        "ErrorResponse",
        "InfoResponse",
    } <= set(components)
    route = schema["paths"]["/translate"]["post"]
    assert route["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/TranslateRequest"
    )
    assert route["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/TranslateResponse"
    )
    assert {"400", "413", "422", "504"} <= set(route["responses"])
    assert client.get("/docs").status_code == 200


def test_api_key_required_except_health(client: TestClient) -> None:
    assert client.post("/translate", json=GOOD, headers={"X-API-Key": ""}).status_code == 401
    wrong = client.get("/info", headers={"X-API-Key": "nope"})
    assert wrong.status_code == 401 and "API key" in wrong.json()["detail"]
    bearer = client.get("/info", headers={"X-API-Key": "", "Authorization": f"Bearer {API_KEY}"})
    assert bearer.status_code == 200
    assert client.get("/health", headers={"X-API-Key": ""}).status_code == 200


BAD_INPUTS = {
    "malformed_json": (b'{"text": "Hallo', 400, "malformed JSON"),
    "invalid_utf8": (b'{"text": "\xff\xfe Hallo"}', 400, "UTF-8"),
    "empty_body": (b"", 400, "empty"),
    "not_an_object": (b'["Hallo"]', 422, "object"),
    "missing_text": (b'{"beam_size": 2}', 422, "exactly one of"),
    "both_text_and_texts": (b'{"text": "a", "texts": ["b"]}', 422, "exactly one of"),
    "ill_typed_text": (b'{"text": 5}', 422, "text"),
    "ill_typed_beam": (b'{"text": "Hallo", "beam_size": "5"}', 422, "beam_size"),
    "ill_typed_item": (b'{"texts": ["ok", 3]}', 422, "texts.1"),
    "empty_list": (b'{"texts": []}', 422, "texts"),
    "unknown_field": (b'{"text": "Hallo", "temperature": 0.7}', 422, "temperature: unknown field"),
    "lone_surrogate": (b'{"text": "Hallo \\ud800"}', 422, "surrogate"),
    "text_over_max_chars": (json.dumps({"text": "a" * 1501}).encode(), 422, "1501 characters"),
    "too_many_texts": (json.dumps({"texts": ["Hallo"] * 9}).encode(), 422, "at most 8"),
    "beam_over_max": (b'{"text": "Hallo", "beam_size": 9}', 422, "beam_size"),
    "n_best_over_beam": (b'{"text": "Hallo", "beam_size": 2, "n_best": 3}', 422, "n_best"),
    "max_len_over_max": (b'{"text": "Hallo", "max_len": 100}', 422, "max_len"),
    "body_too_large": (json.dumps({"text": "a" * 200_000}).encode(), 413, "exceeds"),
    # Passes the front end; the model rejects it (more tokens than it accepts): its own 422.
    "too_long_for_model": (
        json.dumps({"text": " ".join(["Hund"] * 300)}).encode(),
        422,
        "at most 128",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gets_4xx_while_neighbour_succeeds(client: TestClient, case: str) -> None:
    body, status, message = BAD_INPUTS[case]
    with ThreadPoolExecutor(2) as pool:
        good = pool.submit(client.post, "/translate", json=GOOD)
        bad = pool.submit(
            client.post, "/translate", content=body, headers={"Content-Type": "application/json"}
        )
        good_response, bad_response = good.result(), bad.result()
    assert bad_response.status_code == status, bad_response.text
    assert message in bad_response.json()["detail"]
    assert good_response.status_code == 200, good_response.text
    assert good_response.json()["translations"][0]["source"] == GOOD["text"]


def test_model_rejection_is_isolated_within_one_batch(client: TestClient) -> None:
    """A text the model refuses fails only its own request, even when batched with others."""
    too_long = {"text": " ".join(["Hund"] * 300)}
    for _ in range(3):  # the 0.2 s window makes sharing a batch near certain; retry if not
        with ThreadPoolExecutor(3) as pool:
            futures = [
                pool.submit(client.post, "/translate", json=p) for p in (GOOD, too_long, GOOD)
            ]
            responses = [f.result() for f in futures]
        assert [r.status_code for r in responses] == [200, 422, 200]
        if (
            max(responses[0].json()["batch"]["requests"], responses[2].json()["batch"]["requests"])
            == 3
        ):
            break
    else:
        pytest.fail("the three requests never shared a batch")
    failures = client.get("/metrics").text
    assert 'nmt_worker_failures_total{kind="invalid_input"}' in failures


def test_concurrent_requests_are_batched(client: TestClient) -> None:
    before = _batches_over_one(client.get("/metrics").text)
    texts = [f"Ein Kind spielt mit {n} Bällen." for n in range(6)]
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda t: client.post("/translate", json={"text": t}), texts))
    assert all(r.status_code == 200 for r in responses)
    assert max(r.json()["batch"]["requests"] for r in responses) > 1
    assert _batches_over_one(client.get("/metrics").text) > before


def test_served_translation_equals_translator(
    client: TestClient, tiny_checkpoint: Path, data_dir: Path
) -> None:
    from nmt.translator import Translator

    texts = _source_lines(data_dir, 4)
    served = client.post("/translate", json={"texts": texts, "alignment": True}).json()[
        "translations"
    ]
    expected = Translator.load(tiny_checkpoint).translate(texts, with_alignment=True)
    for s, e in zip(served, expected):
        assert s["translation"] == e.text
        assert s["score"] == pytest.approx(e.score, abs=1e-5)
        assert s["alignment"]["tgt_tokens"] == e.alignment.tgt_tokens
        assert s["alignment"]["hard"] == [list(link) for link in e.alignment.hard]


def test_request_waiting_too_long_gets_504_then_server_recovers(tiny_checkpoint: Path) -> None:
    """A request queued while the worker is still loading waits past the timeout: 504."""
    settings = ServeSettings(
        checkpoint=str(tiny_checkpoint),
        max_batch_size=4,
        batch_timeout=0.01,
        request_timeout=0.5,
        accelerator="cpu",
        threads=1,
    )
    server = build_server(settings)
    with wrap_litserve_start(server) as started, TestClient(started.app) as c:
        assert c.get("/health").status_code == 503  # the worker is still starting
        early = c.post("/translate", json=GOOD)
        assert early.status_code == 504 and "timed out" in early.json()["detail"]
        wait_healthy(c.get)
        assert c.post("/translate", json=GOOD).status_code == 200
        assert (
            'nmt_http_requests_total{endpoint="/translate",status="504"} 1'
            in c.get("/metrics").text
        )


def test_decoding_settings_reach_the_worker_and_info(tiny_checkpoint: Path) -> None:
    """`nmt serve --precision bf16 --length-penalty 2.5` decodes so and says so in /info."""
    board, metrics = SharedJSON(), ServerMetrics()
    api = TranslatorAPI(
        checkpoint=str(tiny_checkpoint),
        metrics=metrics,
        model_board=board,
        threads=1,
        precision="bf16",
        length_penalty=2.5,
    )
    api.setup("cpu")
    assert api.translator.decode.precision == "bf16"
    assert api.translator.decode.length_penalty == 2.5
    assert board.read()["info"]["decode"]["precision"] == "bf16"
    assert board.read()["info"]["decode"]["length_penalty"] == 2.5
    assert "nmt_translated_sentences_total 0\n" in metrics.render()  # the warm-up is not counted
    outcome = api.predict(
        [api.decode_request(TranslateRequest(texts=["Ein Hund läuft.", "Zwei Männer."]))]
    )[0]
    assert outcome.error is None and len(outcome.translations) == 2
    with pytest.raises(Exception, match="--precision"):
        ServeSettings(checkpoint=str(tiny_checkpoint), precision="fp16").check()
    with pytest.raises(ConfigError, match="--length-penalty must be >= 0"):
        ServeSettings(checkpoint=str(tiny_checkpoint), length_penalties=(-1.0,)).check()


def test_length_penalties_are_one_for_all_models_or_one_per_model(tiny_checkpoint: Path) -> None:
    three = {"checkpoint": str(tiny_checkpoint), "more_models": ((str(tiny_checkpoint),),) * 2}
    assert [ServeSettings(**three).length_penalty(i) for i in range(3)] == [None] * 3
    one = ServeSettings(**three, length_penalties=(2.0,))
    assert [one.length_penalty(i) for i in range(3)] == [2.0] * 3
    each = ServeSettings(**three, length_penalties=(1.0, 2.0, 3.0))
    assert [each.length_penalty(i) for i in range(3)] == [1.0, 2.0, 3.0]
    with pytest.raises(ConfigError, match="given 2 times for 3 models"):
        ServeSettings(**three, length_penalties=(1.0, 2.0)).check()


def test_batch_wait_grows_with_load_and_never_delays_a_lone_request(tiny_checkpoint: Path) -> None:
    """After a batch of several requests the worker waits a fraction of its decoding time for
    the next batch to fill; after a batch of one it waits only --batch-timeout."""
    assert next_batch_timeout(0.01, 0.1, last_requests=1, last_seconds=2.0) == 0.01
    assert next_batch_timeout(0.01, 0.1, last_requests=8, last_seconds=2.0) == pytest.approx(0.2)
    assert next_batch_timeout(0.01, 0.1, last_requests=8, last_seconds=0.05) == 0.01
    assert next_batch_timeout(0.01, 0.0, last_requests=8, last_seconds=2.0) == 0.01

    api = TranslatorAPI(
        checkpoint=str(tiny_checkpoint),
        metrics=ServerMetrics(),
        model_board=SharedJSON(),
        max_batch_size=8,
        batch_timeout=0.0,
        batch_wait=1.0,
        threads=1,
    )
    api.setup("cpu")
    jobs = [
        api.decode_request(TranslateRequest(text=t)) for t in ("Ein Hund läuft.", "Zwei Männer.")
    ]
    api.predict(jobs)
    assert api.batch_timeout > 0  # the whole last batch's time
    api.predict(jobs[:1])
    assert api.batch_timeout == 0.0
    with pytest.raises(Exception, match="--batch-wait"):
        ServeSettings(checkpoint=str(tiny_checkpoint), batch_wait=1.5).check()


def test_requests_with_equal_options_share_a_translate_call(tiny_checkpoint: Path) -> None:
    from nmt.translator import TranslateOptions

    api = TranslatorAPI(
        checkpoint=str(tiny_checkpoint),
        metrics=ServerMetrics(),
        model_board=SharedJSON(),
        threads=1,
    )
    api.setup("cpu")
    requests = [
        TranslateRequest(text="Ein Hund.", beam_size=2),
        TranslateRequest(text="Ein Kind."),
        TranslateRequest(texts=["Zwei Männer.", "Eine Frau."], beam_size=2),
    ]
    jobs = [api.decode_request(r) for r in requests]
    assert jobs[0].options == jobs[2].options == TranslateOptions(beam_size=2)
    calls: list[list[str]] = []
    translate = api.translator.translate

    def counting(texts: list[str], **options: Any) -> list[Any]:
        calls.append(texts)
        return translate(texts, **options)

    api.translator.translate = counting
    outcomes = api.predict(jobs)
    assert sorted(calls) == [["Ein Hund.", "Zwei Männer.", "Eine Frau."], ["Ein Kind."]]
    assert [[t.source for t in o.translations] for o in outcomes] == [r.all_texts for r in requests]


def test_worker_threads_share_the_usable_cores_among_all_workers_of_all_devices(
    tiny_checkpoint: Path,
) -> None:
    settings = ServeSettings(checkpoint=str(tiny_checkpoint), workers_per_device=2)
    assert settings.worker_threads(devices=1, usable=32) == 16
    assert settings.worker_threads(devices=8, usable=32) == 2
    assert settings.worker_threads(devices=32, usable=32) == 1
    assert 1 <= settings.worker_threads(devices=1) <= len(os.sched_getaffinity(0))
    assert ServeSettings(checkpoint=str(tiny_checkpoint), threads=3).worker_threads(devices=8) == 3


# --------------------------------------------------------------------------- the real server


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


@pytest.mark.slow
def test_real_server_batches_matches_cli_and_stops_cleanly(
    tiny_checkpoint: Path, data_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    command = serve_command(
        port,
        *("--checkpoint", str(tiny_checkpoint), "--max-batch-size", "8", "--batch-timeout", "0.2"),
    )
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=30.0) as http:
            wait_healthy(http.get)
            texts = _source_lines(data_dir, 6)
            response = http.post("/translate", json={"texts": texts, "alignment": True})
            assert response.status_code == 200
            served = response.json()["translations"]
            for r in served:
                a = r["alignment"]
                assert [len(row) for row in a["matrix"]] == [len(a["src_tokens"])] * len(
                    a["tgt_tokens"]
                )

            before = _batches_over_one(http.get("/metrics").text)
            with ThreadPoolExecutor(6) as pool:
                answers = list(pool.map(lambda t: http.post("/translate", json={"text": t}), texts))
            assert [a.status_code for a in answers] == [200] * 6
            assert _batches_over_one(http.get("/metrics").text) > before

        _assert_matches_cli(tiny_checkpoint, texts, served, tmp_path)

        tree = _descendants(process.pid)
        assert len(tree) >= 4  # server process, manager, worker, API server (+ resource tracker)
        groups = {os.getpgid(pid) for pid in tree} - {os.getpgrp()}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        # Python's multiprocessing resource tracker (a child of `nmt serve`, holding no port)
        # notices its parent's exit a moment later; everything must be gone within seconds.
        deadline = time.monotonic() + 5
        while [pid for pid in tree if _running(pid)] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in tree if _running(pid)]
        assert groups and not [g for g in groups if group_members(g)]
        with socket.socket() as s:  # the port is free again
            s.bind(("127.0.0.1", port))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _serve_command(checkpoint: Path, port: int) -> list[str]:
    options = ("--checkpoint", str(checkpoint), "--max-batch-size", "4", "--batch-timeout", "0.05")
    return serve_command(port, *options)


def _next_worker(http: httpx.Client, old: int | None, attempts: int = 600) -> int:
    """The pid of the worker that loaded the model last, once it differs from `old`."""
    for _ in range(attempts):
        try:
            response = http.get("/info")
            pid = response.json().get("worker_pid") if response.status_code == 200 else None
        except httpx.TransportError:
            pid = None
        if pid is not None and pid != old:
            return pid
        time.sleep(0.1)
    raise AssertionError("no (new) inference worker published itself")


def test_crash_loop_counts_deaths_within_the_window() -> None:
    loop = CrashLoop(deaths=3, seconds=60.0)
    assert not loop.died(0.0) and not loop.died(50.0)
    assert not loop.died(100.0)  # the first death left the window
    assert loop.died(109.0)  # three within 60 s


@pytest.mark.slow
def test_killed_worker_is_replaced_while_serving_and_a_crash_loop_stops_the_server(
    tiny_checkpoint: Path,
) -> None:
    """kill -9 of the worker under load: its requests get 503 JSON, none hangs, a new worker
    serves within about the model's load time; three deaths within a minute stop the server."""
    port = free_port()
    process = subprocess.Popen(
        _serve_command(tiny_checkpoint, port),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=60.0) as http:  # a hang would time out
            started = time.monotonic()
            wait_healthy(http.get)
            load_seconds = time.monotonic() - started  # the whole start-up: an upper bound
            worker = _next_worker(http, None)

            def post(n: int) -> httpx.Response:
                return http.post("/translate", json={"text": f"Ein Hund läuft {n} Runden."})

            with ThreadPoolExecutor(8) as pool:
                futures = [pool.submit(post, n) for n in range(120)]
                for _ in range(600):  # kill once the load is flowing
                    if sum(f.done() for f in futures) >= 16:
                        break
                    time.sleep(0.05)
                os.kill(worker, signal.SIGKILL)
                answers = [f.result() for f in futures]  # raises on a transport timeout
            statuses = [a.status_code for a in answers]
            assert set(statuses) <= {200, 503}, statuses
            for answer in answers:
                if answer.status_code == 503:
                    assert "worker" in answer.json()["detail"]
            assert statuses.count(200) >= 16

            replacement = _next_worker(http, worker)
            wait_healthy(http.get, timeout=30 + 3 * load_seconds)
            assert post(0).status_code == 200
            assert process.poll() is None

            # Two more deaths within the minute make three: a crash loop, the server stops.
            for _ in range(4):
                if process.poll() is not None:
                    break
                os.kill(replacement, signal.SIGKILL)
                try:
                    replacement = _next_worker(http, replacement, attempts=100)
                except AssertionError:
                    break
        assert process.wait(timeout=60) != 0
        output = process.stdout.read() if process.stdout else ""
        assert "worker deaths within" in output, output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _model_workers(http: httpx.Client) -> dict[str, int | None]:
    """Each served model's id with the pid of the worker that loaded it last."""
    response = http.get("/info")
    assert response.status_code == 200, response.text
    return {model["id"]: model["worker_pid"] for model in response.json()["models"]}


@pytest.mark.slow
def test_a_killed_worker_of_one_model_leaves_the_other_model_serving(
    tiny_checkpoint: Path, tiny_checkpoint_en_de: Path
) -> None:
    """Two models, kill -9 of the second one's worker under load to both: the first model
    answers 200 throughout and keeps its worker; the second gets 200/503 and a new worker."""
    port = free_port()
    command = serve_command(
        port,
        *("--checkpoint", str(tiny_checkpoint), "--checkpoint", str(tiny_checkpoint_en_de)),
        *("--max-batch-size", "4", "--batch-timeout", "0.05"),
    )
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60.0) as http:
            wait_healthy(http.get)
            workers = _model_workers(http)
            assert set(workers) == {"de-en", "en-de"} and None not in workers.values()

            def post(model: str, n: int) -> httpx.Response:
                text = f"Ein Hund läuft {n} Runden." if model == "de-en" else f"A dog ran {n} km."
                return http.post("/translate", json={"text": text, "model": model})

            with ThreadPoolExecutor(8) as pool:
                futures = {
                    model: [pool.submit(post, model, n) for n in range(60)]
                    for model in ("de-en", "en-de")
                }
                for _ in range(600):  # kill once the load is flowing
                    if sum(f.done() for f in futures["en-de"]) >= 8:
                        break
                    time.sleep(0.05)
                os.kill(workers["en-de"], signal.SIGKILL)
                answers = {m: [f.result() for f in fs] for m, fs in futures.items()}
            assert [a.status_code for a in answers["de-en"]] == [200] * 60
            assert {a.status_code for a in answers["en-de"]} <= {200, 503}

            for _ in range(600):
                replaced = _model_workers(http) if http.get("/health").status_code == 200 else {}
                if replaced.get("en-de") not in (None, workers["en-de"]):
                    break
                time.sleep(0.1)
            else:
                raise AssertionError("the en-de model's worker was not replaced")
            assert replaced["de-en"] == workers["de-en"]
            assert post("en-de", 0).status_code == 200
            assert post("de-en", 0).status_code == 200
            assert process.poll() is None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _assert_matches_cli(
    checkpoint: Path, texts: list[str], served: list[dict[str, Any]], tmp_path: Path
) -> None:
    source = tmp_path / "input.de"
    source.write_text("\n".join(texts) + "\n", encoding="utf-8")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "nmt.cli",
            "translate",
            "--checkpoint",
            str(checkpoint),
            "--input",
            str(source),
            "--format",
            "jsonl",
            "--with-alignment",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert [line["text"] for line in lines] == [r["translation"] for r in served]
    assert [line["score"] for line in lines] == pytest.approx(
        [r["score"] for r in served], abs=1e-5
    )
    assert [line["alignment"]["hard"] for line in lines] == [r["alignment"]["hard"] for r in served]


@pytest.mark.slow
def test_an_ensemble_is_served_as_one_model(tiny_checkpoint: Path, client: TestClient) -> None:
    """`nmt serve --checkpoint A B`: /info names the members; the checkpoint twice translates
    as the checkpoint alone."""
    settings = ServeSettings(
        checkpoint=str(tiny_checkpoint),
        ensemble=(str(tiny_checkpoint),),
        alignment_from=1,
        max_batch_size=4,
        accelerator="cpu",
        threads=1,
    )
    server = build_server(settings)
    request = {"text": GOOD["text"], "beam_size": 2, "alignment": True}
    with wrap_litserve_start(server) as started, TestClient(started.app) as ensemble:
        wait_healthy(ensemble.get)
        model = ensemble.get("/info").json()["model"]
        assert model["arch"] == "ensemble" and model["members"] == [str(tiny_checkpoint)] * 2
        both = ensemble.post("/translate", json=request).json()["translations"][0]
    alone = client.post("/translate", json=request).json()["translations"][0]
    assert both["translation"] == alone["translation"]
    assert both["alignment"]["hard"] == alone["alignment"]["hard"]
