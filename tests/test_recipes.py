"""The hub recipes (WMT14 en-de Transformer-base, IWSLT'14 de-en), offline on a local slice:
the same configs, with data.hub.name pointing at a local folder laid out like the hub dataset."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest

from nmt.config import load_config
from nmt.data import prepare_data
from nmt.files import read_lines
from nmt.train import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY_MODEL = [
    "model.embed_dim=32",
    "model.ffn_size=64",
    "model.heads=2",
    "model.encoder_layers=1",
    "model.decoder_layers=1",
    "tokenizer.vocab_size=400",
    "tokenizer.input_sentence_size=200",
]


@pytest.fixture
def local_hub(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """train/validation/test parquet files with a `translation` column, from Multi30k."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    folder = tmp_path / "hub"
    for split, theirs, count in (
        ("train", "train", 600),
        ("validation", "val", 20),
        ("test", "val", 8),
    ):
        de = read_lines(data_dir / "multi30k" / f"{theirs}.de.gz")[:count]
        en = read_lines(data_dir / "multi30k" / f"{theirs}.en.gz")[:count]
        rows = [{"de": d, "en": e} for d, e in zip(de, en)]
        datasets.Dataset.from_dict({"translation": rows}).to_parquet(folder / f"{split}.parquet")
    return folder


def test_wmt14_base_recipe_trains_on_a_local_slice(local_hub: Path, tmp_path: Path) -> None:
    config = load_config(
        CONFIGS / "wmt14_en_de_base.yaml",
        [
            f"data.hub.name={local_hub}",
            "data.hub.config=",
            f"train.run_dir={tmp_path / 'run'}",
            "train.device=cpu",
            "train.precision=fp32",
            "train.threads=1",
            "train.batch_tokens=512",
            "train.accum_steps=2",
            "train.max_steps=2",
            "train.valid_every=2",
            "train.valid_limit=4",
            "train.average_last=0",
            "decode.beam_size=2",
            *TINY_MODEL,
        ],
    )
    assert (config.data.src_lang, config.data.tgt_lang) == ("en", "de")
    assert config.model.embed_dim == 32 and config.tokenizer.type == "bpe"
    summary = train(config)
    assert summary["steps"] == 2 and (tmp_path / "run" / "best.pt").is_file()
    prepared = prepare_data(config, tmp_path / "run")
    stats = prepared.stats
    assert stats["cache"]["hit"] and stats["splits"]["train"]["pairs"] == 600
    assert 0 < len(prepared.train) < 600  # max_ratio 1.5 drops some pairs
    assert prepared.splits["valid"]["src"][0].startswith("A group of men")  # English is the source


def test_iwslt14_recipe_prepares_a_local_slice(local_hub: Path, tmp_path: Path) -> None:
    config = load_config(
        CONFIGS / "iwslt14_de_en.yaml",
        [f"data.hub.name={local_hub}", "data.hub.config=", *TINY_MODEL],
    )
    prepared = prepare_data(config, tmp_path / "work")
    assert prepared.stats["splits"]["test"] == {"pairs": 8, "kept": 8, "dropped": {}}
    assert prepared.tokenizer.config.lowercase and len(prepared.train) > 300
    assert prepared.splits["valid"]["src"][0].startswith("Eine Gruppe von Männern")
