"""Reverse-model reranking: real en->de and de->en checkpoints, scores checked against
forced decoding of the source through the reverse model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from serving import run_nmt, running_server

from nmt.config import ConfigError
from nmt.files import read_lines
from nmt.rerank import Reranker, RerankError
from nmt.search import Hypothesis
from nmt.translator import Translator
from serve.app import ServeSettings
from serve.models import model_specs, reranked_models

SOURCES = ["A man is riding a bike.", "Two dogs play in the snow.", "A woman sings."]


@pytest.fixture(scope="module")
def forward(tiny_checkpoint_en_de: Path) -> Translator:
    return Translator.load(tiny_checkpoint_en_de)


@pytest.fixture(scope="module")
def reverse_path(tiny_checkpoint: Path) -> Path:
    return tiny_checkpoint  # de -> en


def test_weight_zero_keeps_the_search_order(forward: Translator, reverse_path: Path) -> None:
    plain = forward.translate(SOURCES, beam_size=3, n_best=3)
    forward.rerank_with(Reranker.load([reverse_path], 0.0))
    try:
        reranked = forward.translate(SOURCES, beam_size=3, n_best=3)
    finally:
        forward.rerank_with(None)
    assert [t.n_best for t in reranked] == [t.n_best for t in plain]


def test_reranked_scores_add_the_weighted_reverse_log_prob(
    forward: Translator, reverse_path: Path
) -> None:
    defaults = forward.decode
    forward.decode = dataclasses.replace(defaults, length_penalty=0.0)  # scores: log-probs
    plain = forward.translate(SOURCES, beam_size=3, n_best=3)
    reverse = Translator.load(reverse_path)
    forward.rerank_with(Reranker([reverse], 0.5))
    try:
        reranked = forward.translate(SOURCES, beam_size=3, n_best=3)
        best_of_one = forward.translate(SOURCES, beam_size=3)
    finally:
        forward.rerank_with(None)
        forward.decode = defaults
    for source, before, after, best in zip(SOURCES, plain, reranked, best_of_one):
        assert before.n_best is not None and after.n_best is not None
        filled = [(text, score) for text, score in before.n_best if text]
        forced = reverse.align([text for text, _ in filled], [source] * len(filled))
        expected = sorted(
            ((score + 0.5 * f.log_prob, text) for (text, score), f in zip(filled, forced)),
            reverse=True,
        )
        got = [(score, text) for text, score in after.n_best[: len(expected)]]
        assert [text for _, text in got] == [text for _, text in expected]
        assert [score for score, _ in got] == pytest.approx([s for s, _ in expected], abs=1e-4)
        assert best.text == after.text  # with n_best 1 the whole beam is reranked as well


def test_one_search_reranked_offline_gives_what_translate_gives(
    forward: Translator, reverse_path: Path
) -> None:
    """`hypotheses` + `Reranker.rerank` (how choose_decoding.py tries several weights on one
    search) picks exactly what `translate` with that reranker picks."""
    texts = [*SOURCES, ""]
    found = forward.hypotheses(texts, beam_size=3)
    plain = forward.translate(texts, beam_size=3, n_best=3)
    assert found[-1] == []
    for sentence, translation in zip(found[:-1], plain[:-1]):
        assert [(text, hyp.score) for hyp, text in sentence] == translation.n_best
    reranker = Reranker.load([reverse_path], 0.0)
    forward.rerank_with(reranker)
    try:
        for weight in (0.3, 1.0):
            reranker.weight = weight
            ranked = reranker.rerank(
                texts,
                [[hyp for hyp, _ in sentence] for sentence in found],
                [[text for _, text in sentence] for sentence in found],
                forward.decode.length_penalty,
            )
            offline = [sentence[0][1] if sentence else "" for sentence in ranked]
            assert offline == [t.text for t in forward.translate(texts, beam_size=3)]
    finally:
        forward.rerank_with(None)


def test_an_empty_hypothesis_ranks_last(reverse_path: Path) -> None:
    reranker = Reranker.load([reverse_path], 1.0)
    empty = Hypothesis(tokens=[], score=-0.1, log_prob=-0.1)
    words = Hypothesis(tokens=[7, 8], score=-50.0, log_prob=-50.0)
    ranked = reranker.rerank(["Ein Hund."], [[empty, words]], [["", "a dog"]], 1.0)
    assert [text for _, text in ranked[0]] == ["a dog", ""]
    assert ranked[0][1][0].score == -0.1  # the empty one keeps search's score


def test_the_score_cache_keeps_only_the_newest_pairs(reverse_path: Path) -> None:
    """A server reranks ever new sentences: its cache must not grow without end, and a call
    larger than the cache still gets every score."""
    reranker = Reranker([Translator.load(reverse_path)], 0.5, cache_size=2)
    hypotheses = ["a dog", "two dogs", "a cat"]
    scores = reranker.channel_log_probs(["Ein Hund."] * 3, hypotheses)
    assert all(score is not None for score in scores)
    assert list(reranker._cache) == [("a dog", "Ein Hund."), ("two dogs", "Ein Hund.")]
    again = reranker.channel_log_probs(["Ein Hund."] * 3, hypotheses)
    assert again == pytest.approx(scores, abs=1e-5)  # evicted pairs are scored anew
    assert len(reranker._cache) == 2


def test_a_hypothesis_too_long_for_the_reverse_model_is_left_unscored(reverse_path: Path) -> None:
    """The reverse model refuses a source (here: a hypothesis) longer than it accepts; the
    other pairs of the batch are scored all the same, as they are alone."""
    reverse = Translator.load(reverse_path)
    reranker = Reranker([reverse], 0.5)
    too_long = " ".join(["ein Mann fährt mit einem roten Fahrrad die lange Straße hinunter"] * 30)
    sources = ["A dog.", "A dog.", "Two men."]
    hypotheses = ["ein Hund", too_long, "zwei Männer"]
    scores = reranker.channel_log_probs(sources, hypotheses)
    alone = [f.log_prob for f in reverse.align(["ein Hund", "zwei Männer"], ["A dog.", "Two men."])]
    assert scores[1] is None
    assert [scores[0], scores[2]] == pytest.approx(alone, abs=1e-4)


def test_reverse_models_must_translate_the_other_way(
    forward: Translator, tiny_checkpoint_en_de: Path
) -> None:
    with pytest.raises(RerankError, match="needs a de->en model"):
        forward.rerank_with(Reranker.load([tiny_checkpoint_en_de], 0.3))


def test_a_negative_weight_is_refused(reverse_path: Path) -> None:
    with pytest.raises(RerankError, match=">= 0"):
        Reranker.load([reverse_path], -1.0)


def test_cli_translates_and_evaluates_with_reranking(
    tiny_checkpoint_en_de: Path, reverse_path: Path, data_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "in.en").write_text("\n".join(SOURCES) + "\n")
    model = ["--checkpoint", str(tiny_checkpoint_en_de)]
    rerank = ["--rerank-with", str(reverse_path), "--rerank-weight", "0.5"]
    out = run_nmt("translate", *model, *rerank, "--beam", "3", "--input", str(tmp_path / "in.en"))
    assert out.returncode == 0, out.stderr[-2000:]
    forward = Translator.load(tiny_checkpoint_en_de)
    forward.rerank_with(Reranker.load([reverse_path], 0.5))
    assert out.stdout.splitlines() == [t.text for t in forward.translate(SOURCES, beam_size=3)]

    missing = run_nmt("translate", *model, "--rerank-with", str(reverse_path))
    assert missing.returncode == 2
    assert "--rerank-weight" in missing.stderr

    val = data_dir / "multi30k" / "val"
    for lang in ("en", "de"):
        lines = read_lines(f"{val}.{lang}.gz")[:40]
        (tmp_path / f"val.{lang}").write_text("\n".join(lines) + "\n")
    report = tmp_path / "report.json"
    out = run_nmt(
        "evaluate",
        *model,
        *rerank,
        "--src",
        str(tmp_path / "val.en"),
        "--ref",
        str(tmp_path / "val.de"),
        "--report",
        str(report),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    settings = json.loads(report.read_text())["decoding"]["rerank"]
    assert settings == {"reverse_checkpoints": [str(reverse_path)], "weight": 0.5}


@pytest.mark.slow
def test_a_real_server_reranks_the_models_translating_the_other_way(
    tiny_checkpoint_en_de: Path, reverse_path: Path
) -> None:
    """Served beside the de->en model it reranks with, the en->de model is reranked and the
    de->en one is not; /info says which."""
    with running_server(
        *("--checkpoint", str(reverse_path), "--checkpoint", str(tiny_checkpoint_en_de)),
        *("--rerank-with", str(reverse_path), "--rerank-weight", "0.5"),
    ) as http:
        rerank = {m["id"]: m["rerank"] for m in http.get("/info").json()["models"]}
        request = {"texts": SOURCES, "beam_size": 3, "n_best": 2, "model": "en-de"}
        response = http.post("/translate", json=request)
        assert response.status_code == 200, response.text
        served = response.json()["translations"]
    settings = {"reverse_checkpoints": [str(reverse_path)], "weight": 0.5}
    assert rerank == {"de-en": None, "en-de": settings}
    forward = Translator.load(tiny_checkpoint_en_de)
    forward.rerank_with(Reranker.load([reverse_path], 0.5))
    local = forward.translate(SOURCES, beam_size=3, n_best=2)
    assert [s["translation"] for s in served] == [t.text for t in local]


def test_serve_settings_name_what_is_wrong_with_reranking(
    tiny_checkpoint_en_de: Path, reverse_path: Path
) -> None:
    both = {"checkpoint": str(reverse_path), "more_models": ((str(tiny_checkpoint_en_de),),)}
    specs = model_specs([[str(reverse_path)], [str(tiny_checkpoint_en_de)]])
    assert reranked_models([str(reverse_path)], specs) == {"en-de"}
    assert reranked_models([str(tiny_checkpoint_en_de)], specs) == {"de-en"}
    with pytest.raises(ConfigError, match="go together"):
        ServeSettings(**both, rerank_with=(str(reverse_path),)).check()
    with pytest.raises(ConfigError, match="no --checkpoint translates en->de"):
        ServeSettings(
            checkpoint=str(reverse_path), rerank_with=(str(reverse_path),), rerank_weight=0.5
        ).check()
    with pytest.raises(ConfigError, match="all translate one way"):
        ServeSettings(
            **both, rerank_with=(str(reverse_path), str(tiny_checkpoint_en_de)), rerank_weight=0.5
        ).check()
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        ServeSettings(**both, rerank_with=("missing.pt",), rerank_weight=0.5).check()
