"""A server with several models (de-en and en-de): routing, /info, /languages, POST /align.

In-process, as tests/test_serve.py: FastAPI's TestClient over LitServe's test start, which
spawns a real inference worker per model.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from litserve.utils import wrap_litserve_start

from nmt.translator import Translator
from serve.app import ServeSettings, build_server
from serve.litserve_internals import worker_of_api
from serve.schemas import Limits

LIMITS = Limits(max_chars=200, max_texts=4, max_beam=4, max_len=64)
GERMAN = "Ein Hund läuft über die Wiese."
ENGLISH = "A dog runs across the meadow."


@pytest.fixture(scope="module")
def client(tiny_checkpoint: Path, tiny_checkpoint_en_de: Path):
    settings = ServeSettings(
        checkpoint=str(tiny_checkpoint),
        more_models=((str(tiny_checkpoint_en_de),),),
        max_batch_size=8,
        batch_timeout=0.2,
        accelerator="cpu",
        limits=LIMITS,
        threads=1,
    )
    server = build_server(settings)
    with wrap_litserve_start(server) as started, TestClient(started.app) as c:
        for _ in range(1200):
            if c.get("/health").status_code == 200:
                break
            time.sleep(0.1)
        yield c


def test_info_and_languages_list_every_model(client: TestClient) -> None:
    info = client.get("/info").json()
    assert [(m["id"], m["src_lang"], m["tgt_lang"]) for m in info["models"]] == [
        ("de-en", "de", "en"),
        ("en-de", "en", "de"),
    ]
    assert info["model"]["id"] == "de-en"  # the default model
    assert client.get("/languages").json() == [
        {"code": "de", "name": "German", "targets": ["en"]},
        {"code": "en", "name": "English", "targets": ["de"]},
    ]


def test_requests_are_routed_by_languages_or_model_and_match_each_translator(
    client: TestClient, tiny_checkpoint: Path, tiny_checkpoint_en_de: Path
) -> None:
    cases = [
        ({"text": GERMAN}, "de-en", tiny_checkpoint, GERMAN),
        ({"text": GERMAN, "source": "de", "target": "en"}, "de-en", tiny_checkpoint, GERMAN),
        ({"text": ENGLISH, "target": "de"}, "en-de", tiny_checkpoint_en_de, ENGLISH),
        ({"text": ENGLISH, "model": "en-de"}, "en-de", tiny_checkpoint_en_de, ENGLISH),
    ]
    for body, model_id, checkpoint, text in cases:
        response = client.post("/translate", json={**body, "beam_size": 2})
        assert response.status_code == 200, response.text
        assert response.json()["model"]["id"] == model_id
        expected = Translator.load(checkpoint).translate([text], beam_size=2)[0].text
        assert response.json()["translations"][0]["translation"] == expected


def test_an_unknown_pair_or_model_gets_400_naming_the_models(client: TestClient) -> None:
    for body in (
        {"text": GERMAN, "source": "de", "target": "fr"},
        {"text": GERMAN, "model": "fr-en"},
        {"text": GERMAN, "model": "en-de", "source": "de"},
    ):
        response = client.post("/translate", json=body)
        assert response.status_code == 400
        assert "de->en" in response.json()["detail"] or "en-de" in response.json()["detail"]
    response = client.post("/align", json={"text": "x", "translation": "y", "target": "ja"})
    assert response.status_code == 400
    assert "de->en (model 'de-en'), en->de (model 'en-de')" in response.json()["detail"]


def test_each_model_batches_its_own_requests(client: TestClient) -> None:
    bodies = [{"text": GERMAN, "model": "de-en"}, {"text": ENGLISH, "model": "en-de"}] * 4
    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda body: client.post("/translate", json=body), bodies))
    assert [a.status_code for a in answers] == [200] * len(bodies)
    for body, answer in zip(bodies, answers):
        assert answer.json()["model"]["id"] == body["model"]
        assert answer.json()["batch"]["requests"] <= 4  # never the other model's requests
    assert max(a.json()["batch"]["requests"] for a in answers) > 1


def test_align_returns_the_translate_alignment_block_with_offsets(client: TestClient) -> None:
    translated = client.post(
        "/translate", json={"text": ENGLISH, "target": "de", "beam_size": 1, "alignment": True}
    ).json()["translations"][0]
    body = {"texts": [ENGLISH], "translations": [translated["translation"]], "target": "de"}
    response = client.post("/align", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["model"]["id"] == "en-de"
    result = data["alignments"][0]
    assert result["translation"] == translated["translation"] and result["log_prob"] < 0
    assert set(result["alignment"]) == set(translated["alignment"])
    words = result["alignment"]["words"]
    assert [ENGLISH[a:b] for a, b in words["src_offsets"]] == ENGLISH.split()
    target = result["translation"]
    assert [target[a:b] for a, b in words["tgt_offsets"]] == words["tgt_words"]
    assert [len(row) for row in words["matrix"]] == [len(words["src_words"])] * len(
        words["tgt_words"]
    )


@pytest.mark.parametrize(
    "body",
    [
        {"text": GERMAN, "translation": ""},
        {"text": GERMAN},
        {"texts": [GERMAN, GERMAN], "translations": ["A dog."]},
        {"text": GERMAN, "translation": "x" * 201},
        {"text": GERMAN, "translation": "A dog.", "beam_size": 2},
    ],
)
def test_bad_align_requests_get_422_naming_the_field(client: TestClient, body: dict) -> None:
    response = client.post("/align", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


def test_worker_indices_map_to_their_model(
    tiny_checkpoint: Path, tiny_checkpoint_en_de: Path
) -> None:
    settings = ServeSettings(
        checkpoint=str(tiny_checkpoint),
        more_models=((str(tiny_checkpoint_en_de), str(tiny_checkpoint_en_de)),),
        accelerator="cpu",
        workers_per_device=2,
        threads=1,
        length_penalties=(1.0, 3.0),
    )
    server = build_server(settings)
    apis = server.litapi_connector.lit_apis
    assert [api.length_penalty for api in apis] == [1.0, 3.0]  # one per model, in order
    assert [worker_of_api(server, i) for i in range(4)] == [
        (apis[0], 0),
        (apis[0], 1),
        (apis[1], 0),
        (apis[1], 1),
    ]
    assert [api.worker_offset for api in apis] == [0, 2]
    assert apis[1].ensemble == (str(tiny_checkpoint_en_de),)  # the second model: an ensemble
