"""SentencePiece on the tiny de/en corpus and an en/ja slice: round trips, specials, persistence."""

from __future__ import annotations

import io
import unicodedata
from pathlib import Path

import pytest
import torch

from nmt.config import TokenizerConfig
from nmt.specials import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from nmt.tokenizer import Tokenizer, TokenizerError

N_LINES = 3000
# Below the ~400 unigram pieces the tiny corpus supports, so the requested size is the real one.
JOINT_VOCAB = 300


def _head(path: Path, n: int = N_LINES) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [next(f).strip() for _ in range(n)]


@pytest.fixture(scope="module")
def deen(tiny_corpus_dir: Path) -> dict[str, list[str]]:
    """The tiny corpus's 400 training pairs."""
    return {
        lang: (tiny_corpus_dir / f"train.{lang}").read_text(encoding="utf-8").splitlines()
        for lang in ("de", "en")
    }


@pytest.fixture(scope="module")
def enja(data_dir: Path) -> dict[str, list[str]]:
    return {
        lang: _head(data_dir / "small_parallel_enja" / f"train.{lang}") for lang in ("en", "ja")
    }


@pytest.fixture(scope="module")
def joint_deen(deen, tmp_path_factory) -> Tokenizer:
    config = TokenizerConfig(type="unigram", vocab_size=JOINT_VOCAB, joint=True)
    return Tokenizer.train(
        config, deen["de"], deen["en"], "de", "en", tmp_path_factory.mktemp("tok")
    )


def test_joint_round_trip_and_specials(joint_deen: Tokenizer, deen) -> None:
    tok = joint_deen
    assert tok.joint and tok.src_vocab_size == tok.tgt_vocab_size == JOINT_VOCAB
    assert tok.src_pieces([PAD_ID, UNK_ID, BOS_ID, EOS_ID]) == ["<pad>", "<unk>", "<s>", "</s>"]
    en = deen["en"][:200]
    src_ids = tok.encode_src(en)
    tgt_ids = tok.encode_tgt(en)
    assert all(s[-1] == EOS_ID and s[:-1] == t for s, t in zip(src_ids, tgt_ids))
    assert all(EOS_ID not in t and BOS_ID not in t and PAD_ID not in t for t in tgt_ids)
    assert tok.decode_tgt(tgt_ids) == en
    assert tok.decode_src(src_ids) == en
    # Joint model: German goes through the same vocabulary on both sides.
    de = deen["de"][:50]
    assert tok.decode_tgt(tok.encode_tgt(de)) == de


def test_lowercase_tokenizer_never_sees_case(deen, tmp_path: Path) -> None:
    config = TokenizerConfig(type="unigram", vocab_size=JOINT_VOCAB, joint=True, lowercase=True)
    tok = Tokenizer.train(config, deen["de"], deen["en"], "de", "en", tmp_path)
    pieces = {tok.tgt_pieces([i])[0] for i in range(tok.tgt_vocab_size)}
    assert not any(p != p.lower() for p in pieces - {"<pad>", "<unk>", "<s>", "</s>"})
    en = deen["en"][:100]
    assert tok.encode_src(en) == tok.encode_src([s.lower() for s in en])
    assert tok.decode_tgt(tok.encode_tgt(en)) == [s.lower() for s in en]
    restored = Tokenizer.from_state(tok.to_state())
    assert restored.encode_src(["Ein Mann."]) == tok.encode_src(["ein mann."])


def test_pieces_mark_word_starts(joint_deen: Tokenizer) -> None:
    ids = joint_deen.encode_src(["Ein Mann läuft."])[0]
    pieces = joint_deen.src_pieces(ids)
    assert pieces[0].startswith("▁") and pieces[-1] == "</s>"
    assert "".join(pieces[:-1]).replace("▁", " ").strip() == "Ein Mann läuft."


def test_decode_cuts_at_eos_and_drops_specials(joint_deen: Tokenizer) -> None:
    ids = joint_deen.encode_tgt(["A dog runs.", "Two men"])
    messy = [[BOS_ID] + ids[0] + [EOS_ID] + ids[1], ids[1] + [EOS_ID, PAD_ID, PAD_ID]]
    assert joint_deen.decode_tgt(messy) == ["A dog runs.", "Two men"]
    assert joint_deen.decode_tgt([]) == []


def test_separate_bpe_enja_removes_japanese_spaces(enja, tmp_path: Path) -> None:
    # Japanese needs a vocabulary above its ~1100 distinct characters (coverage 1.0).
    config = TokenizerConfig(type="bpe", vocab_size=2000, joint=False, detok_remove_spaces=["ja"])
    tok = Tokenizer.train(config, enja["en"], enja["ja"], "en", "ja", tmp_path)
    assert not tok.joint
    assert (tmp_path / "src.model").is_file() and (tmp_path / "tgt.model").is_file()
    en, ja = enja["en"][:200], enja["ja"][:200]
    assert tok.decode_src(tok.encode_src(en)) == en  # English keeps its spaces
    decoded = tok.decode_tgt(tok.encode_tgt(ja))
    # sentencepiece applies NFKC (full-width "１" becomes "1"); spaces are gone.
    assert decoded == [unicodedata.normalize("NFKC", s.replace(" ", "")) for s in ja]
    # Separate vocabularies: the same id means different pieces on the two sides.
    assert tok.src_pieces(list(range(10, 40))) != tok.tgt_pieces(list(range(10, 40)))


def test_state_survives_weights_only_checkpoint(joint_deen: Tokenizer, deen) -> None:
    buffer = io.BytesIO()
    torch.save({"tokenizer": joint_deen.to_state()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["tokenizer"]
    restored = Tokenizer.from_state(state)
    texts = deen["de"][:100]
    assert restored.encode_src(texts) == joint_deen.encode_src(texts)
    assert (restored.src_lang, restored.tgt_lang, restored.joint) == ("de", "en", True)


def test_load_from_directory(enja, tmp_path: Path) -> None:
    config = TokenizerConfig(
        vocab_size=2000, joint=False, character_coverage=0.9995, detok_remove_spaces=["ja"]
    )
    trained = Tokenizer.train(config, enja["en"], enja["ja"], "en", "ja", tmp_path)
    loaded = Tokenizer.load(tmp_path)
    assert loaded.config == config
    assert loaded.encode_tgt(enja["ja"][:50]) == trained.encode_tgt(enja["ja"][:50])
    assert loaded.decode_tgt(loaded.encode_tgt(enja["ja"][:5]))[0].count(" ") == 0


def test_load_missing_directory_is_clear(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="no tokenizer in"):
        Tokenizer.load(tmp_path / "nothing")


def test_vocab_size_above_corpus_falls_back(tmp_path: Path) -> None:
    texts = ["a small corpus", "with very few words", "a few words"] * 5
    tok = Tokenizer.train(TokenizerConfig(vocab_size=5000), texts, texts, "en", "de", tmp_path)
    assert 4 < tok.src_vocab_size < 5000
    assert tok.decode_tgt(tok.encode_tgt(texts[:3])) == texts[:3]


def test_input_sentence_size_limits_training_sample(deen, tmp_path: Path) -> None:
    config = TokenizerConfig(vocab_size=5000, input_sentence_size=100)
    small = Tokenizer.train(config, deen["de"], deen["en"], "de", "en", tmp_path / "a")
    full = Tokenizer.train(
        TokenizerConfig(vocab_size=5000, input_sentence_size=None),
        deen["de"],
        deen["en"],
        "de",
        "en",
        tmp_path / "b",
    )
    # 100 of the 400 sentences per side cannot support as many pieces as all of them.
    assert small.src_vocab_size < full.src_vocab_size


def test_vocab_below_character_count_is_a_clear_error(enja, tmp_path: Path) -> None:
    config = TokenizerConfig(vocab_size=300, joint=False)
    with pytest.raises(TokenizerError, match="ja tokenizer.*character_coverage"):
        Tokenizer.train(config, enja["en"], enja["ja"], "en", "ja", tmp_path)


def test_no_text_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="no non-empty sentences"):
        Tokenizer.train(TokenizerConfig(), ["", " "], [""], "de", "en", tmp_path)
