"""Alignments: soft matrices, Pharaoh links, word merging, heatmaps."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from nmt.alignment import (
    Alignment,
    build_alignment,
    find_cjk_font,
    plot_alignment,
    plot_attention,
    word_groups,
)
from nmt.translator import Translator

PHARAOH = re.compile(r"^(\d+-\d+( \d+-\d+)*)?$")


def test_word_groups_follow_word_starts() -> None:
    pieces = ["▁Ein", "▁Hund", "▁l", "äuft", ".", "▁", "W", "ie"]
    assert word_groups(pieces) == [[0], [1], [2, 3, 4], [5, 6, 7]]
    assert word_groups(["a", "b", "▁c"]) == [[0, 1], [2]]


def test_soft_matrix_drops_eos_and_rows_sum_to_one() -> None:
    torch.manual_seed(0)
    src, tgt = ["▁ein", "▁Hund", "▁l", "äuft"], ["▁a", "▁dog", "▁run", "s"]
    attention = torch.softmax(torch.randn(len(tgt) + 1, len(src) + 1), dim=-1)  # + EOS row/column
    a = build_alignment(attention, src, tgt)
    soft = torch.tensor(a.soft)
    assert soft.shape == (4, 4)
    assert torch.allclose(soft.sum(1), torch.ones(4), atol=1e-5)
    expected = attention[:4, :4] / attention[:4, :4].sum(1, keepdim=True)
    assert torch.allclose(soft, expected, atol=1e-5)
    assert a.hard == [(int(expected[t].argmax()), t) for t in range(4)]


def test_word_level_sums_source_pieces_and_averages_target_pieces() -> None:
    src, tgt = ["▁ein", "▁Hund", "▁l", "äuft"], ["▁a", "▁dog", "▁run", "s"]
    soft = torch.tensor(
        [
            [0.7, 0.1, 0.1, 0.1],
            [0.1, 0.8, 0.0, 0.1],
            [0.0, 0.2, 0.4, 0.4],
            [0.0, 0.0, 0.6, 0.4],
        ]
    )
    a = build_alignment(soft, src, tgt)
    assert a.src_words == ["ein", "Hund", "läuft"]
    assert a.tgt_words == ["a", "dog", "runs"]
    words = torch.tensor(a.word_soft)
    expected = torch.tensor([[0.7, 0.1, 0.2], [0.1, 0.8, 0.1], [0.0, 0.1, 0.9]])
    assert torch.allclose(words, expected, atol=1e-6)
    assert torch.allclose(words.sum(1), torch.ones(3), atol=1e-6)
    assert a.word_hard == [(0, 0), (1, 1), (2, 2)]
    assert a.pharaoh() == "0-0 1-1 2-2"
    assert a.pharaoh(words=False) == "0-0 1-1 2-2 2-3"


def test_row_with_all_mass_on_eos_becomes_uniform() -> None:
    attention = torch.tensor([[0.0, 0.0, 1.0], [0.5, 0.5, 0.0]])
    a = build_alignment(attention, ["▁x", "▁y"], ["▁z"])
    assert a.soft == [[0.5, 0.5]]


def test_to_dict_round_trip() -> None:
    a = build_alignment(torch.softmax(torch.randn(3, 4), -1), ["▁a", "b", "▁c"], ["▁d", "▁e"])
    assert Alignment.from_dict(a.to_dict()) == a


def test_translations_have_consistent_alignments(tiny_checkpoint: Path) -> None:
    translator = Translator.load(tiny_checkpoint)
    sources = ["Ein Hund läuft durch den Park.", "Zwei Männer spielen Fußball auf einer Wiese."]
    for t in translator.translate(sources, beam_size=2, with_alignment=True):
        a = t.alignment
        assert a is not None
        soft = torch.tensor(a.soft)
        assert soft.shape == (len(t.tokens), len(t.src_tokens))
        assert torch.allclose(soft.sum(1), torch.ones(len(t.tokens)), atol=1e-4)
        assert len(a.src_words) == len(t.source.split())
        assert all(0 <= i < len(t.src_tokens) and 0 <= j < len(t.tokens) for i, j in a.hard)
        assert all(0 <= i < len(a.src_words) and 0 <= j < len(a.tgt_words) for i, j in a.word_hard)
        assert len(a.word_hard) == len(a.tgt_words)
        assert PHARAOH.match(a.pharaoh()) and PHARAOH.match(a.pharaoh(words=False))


def _check_png(path: Path, min_width: int, min_height: int) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= min_width and image.height >= min_height
        assert image.width < 5000 and image.height < 5000


def test_heatmap_png(tmp_path: Path) -> None:
    src, tgt = ["▁Ein", "▁Hund", "▁läuft", "."], ["▁A", "▁dog", "▁runs", "."]
    a = build_alignment(torch.softmax(torch.randn(5, 5), -1), src, tgt)
    path = plot_attention(
        a.soft, a.src_tokens, a.tgt_tokens, tmp_path / "plots" / "a.png", title="t"
    )
    _check_png(path, 300, 250)
    _check_png(plot_alignment(a, tmp_path / "words.png", words=True), 300, 250)


def test_heatmap_renders_japanese_glyphs(tmp_path: Path) -> None:
    if find_cjk_font() is None:
        pytest.skip("no font with CJK glyphs installed (e.g. apt-get install fonts-noto-cjk)")
    src, tgt = ["▁a", "▁dog", "▁runs"], ["▁犬", "▁が", "▁走る", "。"]
    a = build_alignment(torch.softmax(torch.randn(5, 4), -1), src, tgt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = plot_attention(
            a.soft, a.src_tokens, a.tgt_tokens, tmp_path / "ja.png", title="犬が走る"
        )
    missing = [w for w in caught if "missing from font" in str(w.message).lower()]
    assert not missing, [str(w.message) for w in missing]
    _check_png(path, 300, 250)
