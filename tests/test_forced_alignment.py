"""Forced alignment (Translator.align, `nmt align`) and the character offsets of alignments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nmt.alignment import WORD_START, Alignment, build_alignment
from nmt.cli import main
from nmt.config import TokenizerConfig
from nmt.tokenizer import Tokenizer
from nmt.translator import TranslationError, Translator

SOURCES = [
    "Ein Mann fährt Fahrrad.",
    "Zwei  Hunde spielen im Schnee.",
    "Eine Frau mit einem roten Hut lacht.",
]


@pytest.fixture(scope="module")
def translator(tiny_checkpoint: Path) -> Translator:
    return Translator.load(tiny_checkpoint)


def _check_offsets(alignment: Alignment, source: str, target: str) -> None:
    """Every piece and word span points at its own text in the original strings."""
    sides = (
        (
            alignment.src_tokens,
            alignment.src_offsets,
            alignment.src_words,
            alignment.src_word_offsets,
            source,
        ),
        (
            alignment.tgt_tokens,
            alignment.tgt_offsets,
            alignment.tgt_words,
            alignment.tgt_word_offsets,
            target,
        ),
    )
    for pieces, spans, words, word_spans, text in sides:
        assert len(spans) == len(pieces) and len(word_spans) == len(words)
        for piece, (start, end) in zip(pieces, spans):
            assert text[start:end] == piece.replace(WORD_START, "").strip()
        for word, (start, end) in zip(words, word_spans):
            assert text[start:end] == word


def test_teacher_forcing_the_models_own_translation_reproduces_its_alignment_and_score(
    translator: Translator,
) -> None:
    translations = translator.translate(SOURCES, beam_size=1, with_alignment=True)
    forced = translator.align(SOURCES, [t.text for t in translations])
    compared = 0
    for translation, item in zip(translations, forced):
        assert item.alignment.src_tokens == translation.src_tokens
        _check_offsets(item.alignment, item.source, item.target)
        assert translation.alignment is not None
        _check_offsets(translation.alignment, translation.source, translation.text)
        if item.alignment.tgt_tokens != translation.tokens:
            continue  # the text re-encodes to other pieces: another target, another alignment
        compared += 1
        assert item.alignment.hard == translation.alignment.hard
        for forced_row, row in zip(item.alignment.soft, translation.alignment.soft):
            assert forced_row == pytest.approx(row, abs=1e-4)
        assert item.score == pytest.approx(translation.score, abs=1e-4)
    assert compared >= 1


def test_a_given_target_is_aligned_in_a_batch_as_alone(translator: Translator) -> None:
    targets = ["A man rides a bike.", "Two dogs play in the snow.", "A woman laughs."]
    together = translator.align(SOURCES, targets)
    for source, target, item in zip(SOURCES, targets, together):
        alone = translator.align([source], [target])[0]
        assert alone.alignment.word_hard == item.alignment.word_hard
        assert alone.score == pytest.approx(item.score, abs=1e-4)
        assert item.alignment.tgt_words == target.split()
        for row in item.alignment.word_soft:
            assert sum(row) == pytest.approx(1.0, abs=1e-4)
        _check_offsets(item.alignment, source, target)
        assert item.log_prob < 0


def test_offsets_point_into_the_original_text_through_normalisation(translator: Translator) -> None:
    source = "  Ein ＡＢＣ  Hund läuft 😀 weg. "  # full-width letters (NFKC), double spaces, emoji
    item = translator.align([source], ["A dog runs away."])[0]
    words = item.alignment.src_word_offsets
    assert [source[a:b] for a, b in words][:2] == ["Ein", "ＡＢＣ"]
    assert [source[a:b] for a, b in words][-1] == "weg."


def test_empty_or_unpaired_inputs_are_rejected_naming_the_pair(translator: Translator) -> None:
    with pytest.raises(TranslationError, match="pair 2 has an empty target"):
        translator.align(["Ein Hund.", "Eine Katze."], ["A dog.", " "])
    with pytest.raises(TranslationError, match="2 sources but 1 targets"):
        translator.align(["Ein Hund.", "Eine Katze."], ["A dog."])


def test_nmt_align_writes_pharaoh_lines_and_jsonl(tiny_checkpoint: Path, tmp_path: Path) -> None:
    src, tgt = tmp_path / "in.de", tmp_path / "in.en"
    src.write_text("Ein Hund rennt.\n\nZwei Männer sitzen auf einer Bank.\n", encoding="utf-8")
    tgt.write_text("A dog runs.\nNothing.\nTwo men sit on a bench.\n", encoding="utf-8")
    out = tmp_path / "out.align"
    args = ["align", "--checkpoint", str(tiny_checkpoint), "--src", str(src), "--tgt", str(tgt)]
    assert main([*args, "--output", str(out)]) == 0
    lines = out.read_text(encoding="utf-8").split("\n")[:-1]
    assert len(lines) == 3 and lines[1] == ""
    for line, source, target in zip(
        lines[::2],
        ["Ein Hund rennt.", "Zwei Männer sitzen auf einer Bank."],
        ["A dog runs.", "Two men sit on a bench."],
    ):
        links = [tuple(map(int, link.split("-"))) for link in line.split()]
        assert {j for _, j in links} == set(range(len(target.split())))  # a link per target word
        assert all(0 <= i < len(source.split()) for i, _ in links)
    jsonl = tmp_path / "out.jsonl"
    assert main([*args, "--format", "jsonl", "--output", str(jsonl)]) == 0
    records = [json.loads(line) if line else None for line in jsonl.read_text().split("\n")[:-1]]
    assert records[1] is None
    first = records[0]
    assert first is not None and first["alignment"]["tgt_words"] == ["A", "dog", "runs."]
    assert Alignment.from_dict(first["alignment"]).pharaoh() == lines[0]


def _tiny_tokenizer(tiny_corpus_dir: Path, tmp_path: Path, **settings) -> Tokenizer:
    de, en = (
        (tiny_corpus_dir / f"train.{lang}").read_text("utf-8").split("\n")
        for lang in "de en".split()
    )
    config = TokenizerConfig(vocab_size=300, **settings)
    return Tokenizer.train(config, de, en, "de", "en", tmp_path)


def test_offsets_of_a_lowercasing_tokenizer_point_at_the_original_case(
    tiny_corpus_dir: Path, tmp_path: Path
) -> None:
    tokenizer = _tiny_tokenizer(tiny_corpus_dir, tmp_path, lowercase=True)
    text = "Ein HUND İst DA."  # "İ" lowercases to two characters
    ids = tokenizer.encode_src([text])[0][:-1]
    alignment = build_alignment(
        torch.ones(1, len(ids)), tokenizer.src_pieces(ids), ["▁x"], tokenizer.src_spans(text)
    )
    assert [text[a:b] for a, b in alignment.src_word_offsets] == text.split()


def test_output_offsets_follow_the_returned_text(tiny_corpus_dir: Path, tmp_path: Path) -> None:
    tokenizer = _tiny_tokenizer(tiny_corpus_dir, tmp_path, detok_remove_spaces=["en"])
    ids = tokenizer.encode_tgt(["a dog runs."])[0]
    text = tokenizer.decode_tgt([ids])[0]
    assert text == "adogruns."  # spaces removed, as for Japanese
    spans = tokenizer.output_spans(ids, text)
    pieces = tokenizer.tgt_pieces(ids)
    assert [text[a:b] for a, b in spans] == [p.replace(WORD_START, "") for p in pieces]
