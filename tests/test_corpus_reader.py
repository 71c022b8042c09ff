"""Streaming corpus readers: chunks in corpus order, errors that name the file and line."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from nmt.corpus_reader import CorpusError, LineReader, read_pairs


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_chunks_cover_every_line_in_order(tmp_path: Path, suffix: str) -> None:
    src_lines = [f"satz {i} " + "x" * (i % 50) for i in range(2500)]
    tgt_lines = [f"sentence {i}" for i in range(2500)]
    src = _write_bytes(tmp_path / f"a.de{suffix}", "\n".join(src_lines).encode())  # no final \n
    tgt = _write_bytes(tmp_path / f"a.en{suffix}", ("\n".join(tgt_lines) + "\n").encode())
    chunks = list(read_pairs([src, tgt], "de", "en", chunk_pairs=1000))
    assert [len(c) for c in chunks] == [1000, 1000, 500]
    assert [c.first_line for c in chunks] == [1, 1001, 2001]
    assert [s for c in chunks for s in c.src] == [line.strip() for line in src_lines]
    assert [t for c in chunks for t in c.tgt] == tgt_lines


def test_byte_order_mark_and_carriage_returns_are_dropped(tmp_path: Path) -> None:
    path = _write_bytes(tmp_path / "a.de", "\ufeffeins\r\nzwei\r\n".encode())
    with LineReader(path) as reader:
        assert reader.take(10) == ["eins", "zwei"]


def test_invalid_utf8_names_the_file_and_line(tmp_path: Path) -> None:
    lines = [b"gut"] * 1500 + [b"schlecht \xff\xfe"] + [b"gut"] * 10
    path = _write_bytes(tmp_path / "train.de.gz", b"\n".join(lines) + b"\n")
    tgt = _write_bytes(tmp_path / "train.en", b"good\n" * 1511)
    with pytest.raises(CorpusError, match=r"train\.de\.gz:1501: not UTF-8 text"):
        list(read_pairs([path, tgt], "de", "en", chunk_pairs=100))


def test_misaligned_files_name_the_line_without_partner(tmp_path: Path) -> None:
    src = _write_bytes(tmp_path / "a.de", b"a\n" * 2300)
    tgt = _write_bytes(tmp_path / "a.en", b"b\n" * 2305)
    with pytest.raises(CorpusError) as info:
        list(read_pairs([src, tgt], "de", "en", chunk_pairs=1000))
    message = str(info.value)
    assert f"{src} has 2300 lines but {tgt} has 2305 lines" in message
    assert "line 2301 has no partner" in message


def test_tsv_error_line_counts_across_chunks(tmp_path: Path) -> None:
    path = _write_bytes(tmp_path / "a.tsv", b"a\tb\n" * 250 + b"only one column\n")
    with pytest.raises(CorpusError, match=r"a\.tsv:251: expected 2 tab-separated columns"):
        list(read_pairs([path], "de", "en", chunk_pairs=100))
