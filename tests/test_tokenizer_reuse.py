"""A tokenizer taken from a checkpoint (`tokenizer.from_checkpoint`): one shared vocabulary."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import tiny_config_dict

from nmt.checkpoint import load_checkpoint
from nmt.config import Config, ConfigError, config_from_dict
from nmt.data import prepare_data
from nmt.tokenizer import Tokenizer
from nmt.train import train
from nmt.translator import Translator


def _config(
    files: dict[str, list[str]],
    teacher: Path,
    src: str = "de",
    tgt: str = "en",
    **tokenizer: object,
) -> Config:
    if (src, tgt) == ("en", "de"):
        files = {split: paths[::-1] for split, paths in files.items()}
    return config_from_dict(
        {
            "data": {"preset": None, "files": files, "src_lang": src, "tgt_lang": tgt},
            "tokenizer": {"vocab_size": 400, "from_checkpoint": str(teacher), **tokenizer},
        }
    )


def _teacher_tokenizer(checkpoint: Path) -> Tokenizer:
    return Tokenizer.from_state(load_checkpoint(checkpoint).tokenizer)


def test_a_run_takes_the_checkpoints_tokenizer(
    tiny_checkpoint: Path, tiny_corpus_files: dict[str, list[str]], tmp_path: Path
) -> None:
    # The tiny corpus is other text than the teacher's Multi30k slice: trained on it, the
    # tokenizer would differ; taken from the checkpoint, it is the teacher's own.
    teacher = _teacher_tokenizer(tiny_checkpoint)
    config = _config(tiny_corpus_files, tiny_checkpoint)
    first = prepare_data(config, tmp_path)
    assert first.tokenizer.models == teacher.models
    assert (tmp_path / "tokenizer" / "joint.model").read_bytes() == teacher.models["joint"]
    assert not first.stats["cache"]["tokenizer_reused"]
    de = Path(tiny_corpus_files["train"][0]).read_text(encoding="utf-8").splitlines()[0]
    assert first.tokenizer.encode_src([de]) == teacher.encode_src([de])
    again = prepare_data(config, tmp_path)
    assert again.stats["cache"]["tokenizer_reused"] and again.stats["cache"]["hit"]
    # The other direction takes the same joint model.
    reverse = prepare_data(
        _config(tiny_corpus_files, tiny_checkpoint, "en", "de"), tmp_path / "reverse"
    )
    assert reverse.tokenizer.models == teacher.models
    assert (reverse.tokenizer.src_lang, reverse.tokenizer.tgt_lang) == ("en", "de")


def test_other_settings_or_languages_are_named(
    tiny_checkpoint: Path, tiny_corpus_files: dict[str, list[str]], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="vocab_size: 400 there, 500 here"):
        prepare_data(_config(tiny_corpus_files, tiny_checkpoint, vocab_size=500), tmp_path)
    with pytest.raises(ConfigError, match="translates de->en; its tokenizer cannot serve fr->en"):
        prepare_data(_config(tiny_corpus_files, tiny_checkpoint, "fr", "en"), tmp_path)
    with pytest.raises(ConfigError, match="tokenizer.from_checkpoint: checkpoint not found"):
        prepare_data(_config(tiny_corpus_files, tmp_path / "missing.pt"), tmp_path)


def test_a_resumed_run_keeps_its_copy(
    tiny_checkpoint: Path, tiny_corpus_files: dict[str, list[str]], tmp_path: Path
) -> None:
    teacher = tmp_path / "teacher.pt"
    shutil.copyfile(tiny_checkpoint, teacher)
    config = _config(tiny_corpus_files, teacher)
    first = prepare_data(config, tmp_path / "run")
    teacher.unlink()
    resumed = prepare_data(config, tmp_path / "run", keep_tokenizer=True)
    assert resumed.stats["cache"]["tokenizer_reused"] and resumed.stats["cache"]["hit"]
    assert resumed.tokenizer.models == first.tokenizer.models
    with pytest.raises(ConfigError, match="tokenizer.from_checkpoint: checkpoint not found"):
        prepare_data(config, tmp_path / "new")


@pytest.mark.slow
def test_a_student_on_other_data_ensembles_with_its_teacher(
    tiny_checkpoint: Path, data_dir: Path, tmp_path: Path
) -> None:
    # Fewer training pairs would train another vocabulary, which no ensemble could average.
    config = tiny_config_dict(data_dir, tmp_path / "student", arch="rnn")
    config["data"]["train_limit"] = 300
    config["tokenizer"]["from_checkpoint"] = str(tiny_checkpoint)
    config["train"].update(max_steps=10, valid_every=10)
    train(config_from_dict(config))
    student = tmp_path / "student" / "best.pt"
    ensemble = Translator.load_ensemble([tiny_checkpoint, student])
    [translation] = ensemble.translate(["Ein Hund läuft im Park."], beam_size=2)
    assert translation.text and ensemble.info.arch == "ensemble"
