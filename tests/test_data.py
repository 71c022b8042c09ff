"""Corpus loading, cleaning and the tokenized cache."""

from __future__ import annotations

import gzip
import json
import os
import runpy
from pathlib import Path

import pytest

from nmt.config import Config, ConfigError, config_from_dict
from nmt.corpus_store import FlatIds
from nmt.data import DataError, format_summary, load_corpus, prepare_data
from nmt.specials import EOS_ID

DE = ["Ein Hund läuft.", "Zwei Männer gehen.", "Eine Frau liest ein Buch."]
EN = ["A dog runs.", "Two men walk.", "A woman reads a book."]


def _write(path: Path, lines: list[str]) -> Path:
    text = "".join(line + "\n" for line in lines)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _files_config(files: dict[str, list[str]], **data: object) -> Config:
    return config_from_dict(
        {"data": {"preset": None, "files": files, "src_lang": "de", "tgt_lang": "en", **data}}
    )


def _rows(flat: FlatIds) -> list[list[int]]:
    """The rows of one side of a store, as lists."""
    return [flat.ids[flat.offsets[i] : flat.offsets[i + 1]].tolist() for i in range(len(flat))]


def _tiny_lines(tiny_corpus_dir: Path, lang: str, n: int) -> list[str]:
    """The first n training sentences of the tiny corpus (tests/data/tiny)."""
    return (tiny_corpus_dir / f"train.{lang}").read_text(encoding="utf-8").splitlines()[:n]


# --------------------------------------------------------------------------- loading


def test_tiny_corpus_is_what_its_script_makes(tiny_corpus_dir: Path, tmp_path: Path) -> None:
    """The shipped files are generated, never edited by hand: the script must reproduce them."""
    write = runpy.run_path(str(tiny_corpus_dir.parent / "make_tiny_corpus.py"))["write"]
    write(tmp_path)
    shipped = sorted(p.name for p in tiny_corpus_dir.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == shipped
    for name in shipped:
        assert (tmp_path / name).read_bytes() == (tiny_corpus_dir / name).read_bytes(), name


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_aligned_text_files(tmp_path: Path, suffix: str) -> None:
    src = _write(tmp_path / f"train.de{suffix}", DE)
    tgt = _write(tmp_path / f"train.en{suffix}", EN)
    _write(tmp_path / "valid.de", DE[:1])
    _write(tmp_path / "valid.en", EN[:1])
    config = _files_config(
        {
            "train": [str(src), str(tgt)],
            "valid": [str(tmp_path / "valid.de"), str(tmp_path / "valid.en")],
        }
    )
    corpus = load_corpus(config.data)
    assert set(corpus) == {"train", "valid"}
    assert corpus["train"]["src"][:] == DE and corpus["train"]["tgt"][:] == EN
    assert corpus["valid"][0] == {"src": DE[0], "tgt": EN[0]}


def test_lines_split_only_on_newline(tmp_path: Path) -> None:
    # A Unicode line separator inside a sentence must not shift the alignment.
    src = _write(tmp_path / "s.de", ["eins\u2028zwei", "drei\r"])
    tgt = _write(tmp_path / "t.en", ["one two", "three"])
    corpus = load_corpus(_files_config({"train": [str(src), str(tgt)]}).data)
    assert corpus["train"]["src"][:] == ["eins\u2028zwei", "drei"]


def test_relative_paths_use_current_directory(tmp_path: Path, monkeypatch) -> None:
    _write(tmp_path / "a.de", DE)
    _write(tmp_path / "a.en", EN)
    monkeypatch.chdir(tmp_path)
    corpus = load_corpus(_files_config({"train": ["a.de", "a.en"]}).data)
    assert len(corpus["train"]) == 3


def test_tsv(tmp_path: Path) -> None:
    path = _write(tmp_path / "train.tsv", [f"{d}\t{e}" for d, e in zip(DE, EN)])
    corpus = load_corpus(_files_config({"train": [str(path)]}).data)
    assert corpus["train"]["src"][:] == DE and corpus["train"]["tgt"][:] == EN


def test_tsv_with_wrong_column_count_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "train.tsv", ["a\tb", "a\tb\tc"])
    with pytest.raises(DataError, match=r"train\.tsv:2: expected 2 tab-separated columns, got 3"):
        load_corpus(_files_config({"train": [str(path)]}).data)


@pytest.mark.parametrize("keys", [("de", "en"), ("src", "tgt")])
def test_jsonl(tmp_path: Path, keys: tuple[str, str]) -> None:
    rows = [json.dumps({keys[0]: d, keys[1]: e, "id": i}) for i, (d, e) in enumerate(zip(DE, EN))]
    path = _write(tmp_path / "train.jsonl.gz", rows + [""])
    corpus = load_corpus(_files_config({"train": [str(path)]}).data)
    assert corpus["train"]["src"][:] == DE and corpus["train"]["tgt"][:] == EN


def test_jsonl_without_the_keys(tmp_path: Path) -> None:
    path = _write(tmp_path / "train.jsonl", [json.dumps({"fr": "x", "en": "y"})])
    with pytest.raises(DataError, match="expected keys 'de'/'en' or 'src'/'tgt'"):
        load_corpus(_files_config({"train": [str(path)]}).data)


def test_mismatched_line_counts_name_both_files(tmp_path: Path) -> None:
    src = _write(tmp_path / "train.de", DE)
    tgt = _write(tmp_path / "train.en", EN[:2])
    with pytest.raises(DataError) as info:
        load_corpus(_files_config({"train": [str(src), str(tgt)]}).data)
    message = str(info.value)
    assert str(src) in message and str(tgt) in message
    assert "3 lines" in message and "2 lines" in message


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    src = _write(tmp_path / "train.de", DE)
    missing = tmp_path / "nowhere" / "train.en"
    with pytest.raises(DataError, match=f"data file not found: {missing}"):
        load_corpus(_files_config({"train": [str(src), str(missing)]}).data)


def test_missing_preset_file_names_the_path(tmp_path: Path) -> None:
    config = config_from_dict({"data": {"preset": "multi30k", "dir": str(tmp_path)}})
    with pytest.raises(DataError, match=str(tmp_path / "multi30k" / "train.de.gz")):
        prepare_data(config, tmp_path / "work")


def test_preset_dir_from_environment(data_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("NMT_DATA_DIR", str(data_dir))
    corpus = load_corpus(
        config_from_dict({"data": {"preset": "multi30k", "src_lang": "fr", "tgt_lang": "cs"}}).data
    )
    assert {k: len(v) for k, v in corpus.items()} == {"train": 29000, "valid": 1014, "test": 1000}


def test_enja_preset_uses_dev_for_valid_and_test(data_dir: Path) -> None:
    config = config_from_dict(
        {
            "data": {
                "preset": "small_parallel_enja",
                "dir": str(data_dir),
                "src_lang": "ja",
                "tgt_lang": "en",
            }
        }
    )
    corpus = load_corpus(config.data)
    assert len(corpus["train"]) == 50000 and len(corpus["valid"]) == 500
    assert corpus["test"]["src"][:] == corpus["valid"]["src"][:]
    assert " " in corpus["train"][0]["src"]  # KyTea segmentation kept for training


def test_preset_rejects_unknown_languages(data_dir: Path) -> None:
    config = config_from_dict({"data": {"dir": str(data_dir), "src_lang": "de", "tgt_lang": "ja"}})
    with pytest.raises(DataError, match="multi30k has no language 'ja'"):
        load_corpus(config.data)


# --------------------------------------------------------------------------- preparation


def _cleaning_corpus(tiny_corpus_dir: Path, tmp_path: Path) -> Config:
    """200 clean pairs plus 3 empty, 2 overlong and 2 lopsided ones; valid keeps an empty pair."""
    de, en = _tiny_lines(tiny_corpus_dir, "de", 200), _tiny_lines(tiny_corpus_dir, "en", 200)
    de += ["", "Ein Hund.", "", " ".join(["Hund"] * 120), "Ein Mann.", "a", "a"]
    en += [
        "A dog.",
        "",
        "",
        "A dog.",
        " ".join(["man"] * 120),
        " ".join(["a"] * 12),
        " ".join(["a"] * 15),
    ]
    files = {
        "train": [str(_write(tmp_path / "train.de", de)), str(_write(tmp_path / "train.en", en))],
        "valid": [
            str(_write(tmp_path / "valid.de", DE + [""])),
            str(_write(tmp_path / "valid.en", EN + [""])),
        ],
    }
    return config_from_dict(
        {
            "data": {
                "preset": None,
                "files": files,
                "src_lang": "de",
                "tgt_lang": "en",
                "max_len": 100,
                "max_ratio": 3.0,
            },
            "tokenizer": {"vocab_size": 1000},
        }
    )


def test_cleaning_counts_each_reason(tiny_corpus_dir: Path, tmp_path: Path) -> None:
    prepared = prepare_data(_cleaning_corpus(tiny_corpus_dir, tmp_path), tmp_path / "work")
    train = prepared.stats["splits"]["train"]
    assert train["dropped"] == {"train_limit": 0, "empty": 3, "too_long": 2, "ratio": 2}
    assert train["pairs"] == 207 and train["kept"] == 200 == len(prepared.train)
    for src_ids, tgt_ids in zip(_rows(prepared.train.src), _rows(prepared.train.tgt)):
        n_src, n_tgt = len(src_ids) - 1, len(tgt_ids)
        assert src_ids[-1] == EOS_ID and EOS_ID not in tgt_ids
        assert 0 < n_src <= 100 and 0 < n_tgt <= 100 and max(n_src, n_tgt) <= 3 * min(n_src, n_tgt)
    # Only the training split is cleaned.
    assert prepared.stats["splits"]["valid"] == {"pairs": 4, "kept": 4, "dropped": {}}
    assert prepared.splits["valid"][3]["src_ids"] == [EOS_ID]


def test_train_limit_keeps_the_first_pairs(
    tiny_corpus_dir: Path, tiny_corpus_files: dict[str, list[str]], tmp_path: Path
) -> None:
    # The tiny corpus has 400 training pairs: the limit keeps 100 and cuts 300.
    config = _files_config(tiny_corpus_files, train_limit=100)
    config.tokenizer.vocab_size = 200
    prepared = prepare_data(config, tmp_path)
    train = prepared.stats["splits"]["train"]
    assert train["pairs"] == 400 and train["dropped"]["train_limit"] == 300
    kept = _rows(prepared.train.src)
    first = prepared.tokenizer.encode_src(_tiny_lines(tiny_corpus_dir, "de", 100))
    assert kept == [ids for ids in first if ids in kept]
    assert train["kept"] == len(kept) == 100 - sum(train["dropped"].values()) + 300


def test_prepare_real_multi30k(data_dir: Path, tmp_path: Path) -> None:
    config = config_from_dict(
        {"data": {"dir": str(data_dir), "train_limit": 2000}, "tokenizer": {"vocab_size": 1000}}
    )
    first = prepare_data(config, tmp_path)
    stats = first.stats
    assert stats["cache"] == {"dir": stats["cache"]["dir"], "hit": False, "tokenizer_reused": False}
    assert stats["vocab"] == {"src": 1000, "tgt": 1000, "joint": True}
    assert set(first.splits) == {"valid", "test"}
    assert set(first.splits["valid"].column_names) == {"src", "tgt", "src_ids", "tgt_ids"}
    assert len(first.train) == stats["splits"]["train"]["kept"] > 1900
    assert stats["store"]["dtype"] == "uint16"  # 1000 pieces fit in 16 bits
    assert all(ids[-1] == EOS_ID for ids in first.splits["valid"]["src_ids"][:])
    assert 5 < stats["lengths"]["train"]["src_mean"] <= stats["lengths"]["train"]["src_p95"]
    assert 0.0 <= stats["unk_rate"]["src"] < 0.05
    assert "valid" in format_summary(stats) and "joint" in format_summary(stats)


def test_prepare_reuses_tokenizer_and_cache(
    tiny_corpus_files: dict[str, list[str]], tmp_path: Path
) -> None:
    config = _files_config(tiny_corpus_files)
    config.tokenizer.vocab_size = 300
    first = prepare_data(config, tmp_path)
    stats = first.stats
    assert not stats["cache"]["hit"] and not stats["cache"]["tokenizer_reused"]
    model_file = tmp_path / "tokenizer" / "joint.model"
    cache_files = sorted(p for p in Path(stats["cache"]["dir"]).rglob("*") if p.is_file())
    mtimes = [p.stat().st_mtime_ns for p in [model_file, *cache_files]]
    second = prepare_data(config, tmp_path)
    assert second.stats["cache"]["hit"] and second.stats["cache"]["tokenizer_reused"]
    assert [p.stat().st_mtime_ns for p in [model_file, *cache_files]] == mtimes
    assert _rows(second.train.tgt) == _rows(first.train.tgt)
    assert second.splits["valid"]["tgt_ids"][:] == first.splits["valid"]["tgt_ids"][:]
    assert second.tokenizer.to_state() == first.tokenizer.to_state()


def _own_train_files(tiny_corpus_dir: Path, tmp_path: Path) -> tuple[Config, Path, list[str]]:
    """A config over a private copy of 300 tiny training pairs (the test may rewrite them):
    the config, the English file and its lines."""
    de, en = _tiny_lines(tiny_corpus_dir, "de", 300), _tiny_lines(tiny_corpus_dir, "en", 300)
    src, tgt = _write(tmp_path / "t.de", de), _write(tmp_path / "t.en", en)
    config = _files_config({"train": [str(src), str(tgt)]})
    config.tokenizer.vocab_size = 300
    return config, tgt, en


def test_cache_follows_settings_and_data(tiny_corpus_dir: Path, tmp_path: Path) -> None:
    config, tgt, en = _own_train_files(tiny_corpus_dir, tmp_path)
    work = tmp_path / "work"
    first = prepare_data(config, work)
    # Cleaning settings change the cache but not the tokenizer.
    config.data.max_len = 10
    second = prepare_data(config, work)
    assert second.stats["cache"]["tokenizer_reused"] and not second.stats["cache"]["hit"]
    assert second.stats["splits"]["train"]["kept"] < first.stats["splits"]["train"]["kept"]
    # A touched (or in-place copied) corpus is the same data: tokenizer and cache are reused.
    later = tgt.stat().st_mtime_ns + 10**9
    os.utime(tgt, ns=(later, later))
    touched = prepare_data(config, work)
    assert touched.stats["cache"]["hit"] and touched.stats["cache"]["tokenizer_reused"]
    # New data retrains the tokenizer.
    _write(tgt, [line.upper() for line in en])
    third = prepare_data(config, work)
    assert not third.stats["cache"]["tokenizer_reused"] and not third.stats["cache"]["hit"]
    assert third.tokenizer.to_state() != first.tokenizer.to_state()
    targets = third.tokenizer.decode_tgt(_rows(third.train.tgt))
    assert len(targets) == third.stats["splits"]["train"]["kept"] > 0
    assert all(t == t.upper() for t in targets)


def test_resume_keeps_its_tokenizer_when_the_files_change(
    tiny_corpus_dir: Path, tmp_path: Path
) -> None:
    # Changed training text would retrain the tokenizer of a new run; a resumed run's model
    # was trained on its tokenizer's ids, so that tokenizer stays.
    config, tgt, en = _own_train_files(tiny_corpus_dir, tmp_path)
    work = tmp_path / "work"
    first = prepare_data(config, work)
    model_file = work / "tokenizer" / "joint.model"
    trained = model_file.stat().st_mtime_ns
    _write(tgt, [*en[:-1], en[-1] + " ."])
    resumed = prepare_data(config, work, keep_tokenizer=True)
    assert resumed.stats["cache"]["tokenizer_reused"] and not resumed.stats["cache"]["hit"]
    assert model_file.stat().st_mtime_ns == trained
    assert resumed.tokenizer.to_state() == first.tokenizer.to_state()
    # Other tokenizer settings would not fit the model's embeddings: a clear error.
    config.tokenizer.vocab_size = 250
    with pytest.raises(ConfigError, match=r"tokenizer: .*'vocab_size': 300.* -> .*250"):
        prepare_data(config, work, keep_tokenizer=True)
    # A new run on the changed files retrains it.
    config.tokenizer.vocab_size = 300
    fresh = prepare_data(config, work)
    assert not fresh.stats["cache"]["tokenizer_reused"]
    assert model_file.stat().st_mtime_ns != trained


# --------------------------------------------------------------------------- streaming


def test_tokenizer_sample_is_seeded_uniform_and_in_corpus_order() -> None:
    from nmt.corpus_reader import PairChunk
    from nmt.data import PairSample

    def sample(size: int | None) -> list[str]:
        pairs = PairSample(size)
        for start in range(0, 5000, 700):
            numbers = [str(i) for i in range(start, min(start + 700, 5000))]
            pairs.add(PairChunk(numbers, ["" if int(n) % 10 == 0 else n for n in numbers]))
        return pairs.sides()[0]

    drawn = sample(1000)
    assert len(drawn) == 1000 and drawn == sample(1000)  # seeded
    assert [int(n) for n in drawn] == sorted(int(n) for n in drawn)  # corpus order
    assert not any(int(n) % 10 == 0 for n in drawn)  # pairs with an empty side are skipped
    assert 1500 < sum(map(int, drawn)) / len(drawn) < 3500  # spread over the whole corpus
    assert len(sample(None)) == 4500 == len(sample(4500))


def test_hub_dataset_without_the_column_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    datasets.Dataset.from_dict({"de": DE, "en": EN}).to_parquet(tmp_path / "hub" / "train.parquet")
    config = config_from_dict(
        {
            "data": {
                "preset": None,
                "hub": {"name": str(tmp_path / "hub"), "splits": {"train": "train"}},
            }
        }
    )
    with pytest.raises(DataError, match="has no column 'translation'; it has de, en"):
        load_corpus(config.data)
    config.data.hub.translation_field = None
    config.data.hub.src_field, config.data.hub.tgt_field = "de", "en"
    assert load_corpus(config.data)["train"]["tgt"][:] == EN
