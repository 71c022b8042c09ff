"""LibreTranslate's API under /libretranslate, used by the real `libretranslatepy` client and
by plain HTTP, against the real `nmt serve` hosting de-en and en-de (tests/conftest.py)."""

from __future__ import annotations

import urllib.error

import httpx
import pytest
from conftest import LiveServer
from libretranslatepy import LibreTranslateAPI

GERMAN = ["Ein Hund läuft über die Wiese.", "Zwei Kinder spielen."]


@pytest.fixture(scope="module")
def http(live_server: LiveServer):
    with httpx.Client(base_url=f"{live_server.url}/libretranslate", timeout=60) as client:
        yield client


def _ours(live_server: LiveServer, texts: list[str], **fields) -> list[dict]:
    response = httpx.post(
        f"{live_server.url}/translate",
        json={"texts": texts, **fields},
        headers={"X-API-Key": live_server.api_key},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()["translations"]


def test_the_libretranslate_client_translates_and_lists_languages(live_server: LiveServer) -> None:
    client = LibreTranslateAPI(f"{live_server.url}/libretranslate", api_key=live_server.api_key)
    expected = _ours(live_server, GERMAN[:1], source="de", target="en")[0]["translation"]
    assert client.translate(GERMAN[0], source="de", target="en") == expected
    english = "A dog runs across the meadow."
    expected = _ours(live_server, [english], target="de")[0]["translation"]
    assert client.translate(english, source="en", target="de") == expected
    assert client.languages() == [
        {"code": "de", "name": "German", "targets": ["en"]},
        {"code": "en", "name": "English", "targets": ["de"]},
    ]
    with pytest.raises(urllib.error.HTTPError) as refused:
        LibreTranslateAPI(f"{live_server.url}/libretranslate", api_key="wrong").translate(
            GERMAN[0], source="de", target="en"
        )
    assert refused.value.code == 403


def test_a_list_keeps_its_shape_and_alternatives_are_the_n_best(
    live_server: LiveServer, http: httpx.Client
) -> None:
    body = {"q": GERMAN, "source": "de", "target": "en", "api_key": live_server.api_key}
    response = http.post("/translate", json={**body, "alternatives": 2})
    assert response.status_code == 200, response.text
    data = response.json()
    ours = _ours(live_server, GERMAN, beam_size=3, n_best=3)
    assert data["translatedText"] == [t["translation"] for t in ours]
    assert data["alternatives"] == [[h["translation"] for h in t["n_best"][1:]] for t in ours]
    default = [t["translation"] for t in _ours(live_server, GERMAN)]
    single = http.post("/translate", json={**body, "q": GERMAN[0]}).json()
    assert single == {"translatedText": default[0]}
    form = http.post("/translate", data={**body, "q": GERMAN})  # form-encoded, repeated q
    assert form.json()["translatedText"] == default
    auto = http.post("/translate", json={**body, "source": "auto"})  # one source reaches en
    assert auto.json()["translatedText"] == default


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        ({"target": "fr"}, 400, "de->en (model 'de-en'), en->de (model 'en-de')"),
        ({"format": "html"}, 400, "text only"),
        ({"q": ""}, 400, "missing q parameter"),
        ({"alternatives": "many"}, 400, "alternatives"),
        ({"q": ["x" * 3000]}, 400, "characters"),
        ({"api_key": "wrong"}, 403, "Invalid API key"),
    ],
)
def test_errors_have_libretranslates_shape(
    live_server: LiveServer, http: httpx.Client, change: dict, status: int, message: str
) -> None:
    body = {"q": GERMAN[0], "source": "de", "target": "en", "api_key": live_server.api_key}
    response = http.post("/translate", json={**body, **change})
    assert response.status_code == status
    assert set(response.json()) == {"error"} and message in response.json()["error"]
