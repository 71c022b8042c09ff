"""The web page at / in a real headless Chromium (Debian's `chromium`, driven by Playwright)
against the real `nmt serve` hosting de-en and en-de (tests/conftest.py).

The screenshot is kept in test-artifacts/ (git-ignored) for CI to collect.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import httpx
import pytest
from conftest import REPO_ROOT, LiveServer

ARTIFACTS = REPO_ROOT / "test-artifacts"
WEIGHTS = "words => words.map(w => parseFloat(w.style.getPropertyValue('--weight') || '0'))"
CANDIDATES = [
    "Ein Mann fährt Fahrrad.",
    "Zwei Hunde spielen im Schnee.",
    "Eine Frau sitzt auf einer Bank.",
    "Ein Kind spielt mit einem Ball.",
]


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("Chromium not found: install Debian's package (apt-get install chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox"]
        )
        yield chromium
        chromium.close()


def _translatable(live_server: LiveServer) -> tuple[str, dict]:
    """A sentence the tiny model translates into at least one word, and its translation."""
    for text in CANDIDATES:
        response = httpx.post(
            f"{live_server.url}/translate",
            json={"text": text, "beam_size": 2, "n_best": 2, "alignment": True},
            headers={"X-API-Key": live_server.api_key},
            timeout=60,
        )
        translation = response.json()["translations"][0]
        if translation["translation"].strip():
            return text, translation
    raise AssertionError("the tiny model translated every candidate to an empty string")


def test_the_page_translates_shows_alignments_and_server_errors(
    live_server: LiveServer, browser
) -> None:
    from playwright.sync_api import expect

    source, expected = _translatable(live_server)
    rows = len(expected["alignment"]["words"]["tgt_words"])
    page = browser.new_page()
    elsewhere: list[str] = []
    page.on(
        "request", lambda r: None if r.url.startswith(live_server.url) else elsewhere.append(r.url)
    )
    page.goto(f"{live_server.url}/")
    page.get_by_label("API key (if the server needs one)").fill(live_server.api_key)
    page.get_by_label("API key (if the server needs one)").press(
        "Tab"
    )  # `change`: the page loads the models
    expect(page.locator("#model option")).to_have_count(2)
    page.get_by_label("Model", exact=True).select_option("de-en")
    expect(page.locator("#model-info")).to_contain_text("de → en")

    page.get_by_label("Source text").fill(source)
    page.get_by_label("Beam size").fill("2")
    page.get_by_label("Hypotheses shown").fill("2")
    page.get_by_role("button", name="Translate", exact=True).click()
    expect(page.locator("#output")).to_have_text(expected["translation"])
    expect(page.locator("#nbest li")).to_have_count(2)
    source_words = page.locator('.word[data-side="src"]')
    expect(source_words).to_have_count(len(source.split()))
    assert source_words.all_inner_texts() == source.split()  # placed by character offsets

    target_words = page.locator('.word[data-side="tgt"]')
    target_words.first.hover()
    expect(page.locator('.word[data-side="src"].linked')).to_have_count(1)
    assert max(source_words.evaluate_all(WEIGHTS)) > 0
    page.mouse.move(0, 0)
    expect(page.locator(".word.linked")).to_have_count(0)
    source_words.first.focus()  # keyboard users: focusing a word highlights its links too
    expect(page.locator('.word[data-side="src"].active')).to_have_count(1)
    assert max(target_words.evaluate_all(WEIGHTS)) > 0
    expect(page.locator("#heatmap tbody tr")).to_have_count(rows)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-page.png"), full_page=True)

    page.get_by_label("Your own translation, to align instead (optional)").fill(
        "A man rides a bike."
    )
    page.get_by_role("button", name="Align this translation").click()
    expect(page.locator("#output")).to_have_text("A man rides a bike.")
    assert page.locator('.word[data-side="tgt"]').all_inner_texts() == "A man rides a bike.".split()

    page.get_by_label("Beam size").fill("99")  # over the server's limit: its message is shown
    page.get_by_role("button", name="Translate", exact=True).click()
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error")).to_contain_text("beam_size")
    assert elsewhere == []
    page.close()
