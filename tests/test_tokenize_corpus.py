"""Tokenizing and cleaning in worker processes gives what one process gives, in order."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nmt.config import TokenizerConfig
from nmt.corpus_reader import read_pairs
from nmt.tokenize_corpus import Cleaning, clean, encode_chunks
from nmt.tokenizer import Tokenizer


def test_clean_counts_the_first_reason_only() -> None:
    src = np.array([0, 3, 120, 2, 5, 0])
    tgt = np.array([4, 0, 130, 9, 6, 0])
    keep, dropped = clean(src, tgt, Cleaning(max_len=100, max_ratio=3.0))
    assert keep.tolist() == [False, False, False, False, True, False]
    assert dropped == {"empty": 3, "too_long": 1, "ratio": 1}


def test_workers_encode_as_one_process(tiny_corpus_files: dict[str, list[str]], tmp_path: Path):
    paths = [Path(p) for p in tiny_corpus_files["train"]]
    src, tgt = (p.read_text(encoding="utf-8").splitlines() for p in paths)
    tokenizer = Tokenizer.train(TokenizerConfig(vocab_size=200), src, tgt, "de", "en", tmp_path)
    cleaning = Cleaning(max_len=12, max_ratio=1.5)

    def encoded(workers: int) -> list:
        chunks = read_pairs(paths, "de", "en", chunk_pairs=60)
        return list(encode_chunks(chunks, tokenizer, cleaning, np.dtype(np.uint8), workers))

    alone, pooled = encoded(1), encoded(2)
    assert len(alone) == len(pooled) == 7  # 400 pairs in chunks of 60
    for a, b in zip(alone, pooled, strict=True):
        assert a.pairs == b.pairs and a.dropped == b.dropped
        assert a.src.ids.dtype == np.uint8 and np.array_equal(a.src.ids, b.src.ids)
        assert np.array_equal(a.tgt.lengths, b.tgt.lengths)
    assert sum(sum(a.dropped.values()) for a in alone) > 0
    first = alone[0]
    kept_src = np.split(first.src.ids, np.cumsum(first.src.lengths)[:-1])
    assert all(row[-1] == 3 and len(row) - 1 <= 12 for row in kept_src)  # EOS last, clean
