"""Strict config loading: unknown keys, types, impossible values, `base:` files, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nmt.config import Config, ConfigError, config_from_dict, load_config, save_config


def _yaml(path: Path, content: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(content), encoding="utf-8")
    return path


def test_defaults_are_valid_and_round_trip(tmp_path: Path) -> None:
    config = Config()
    assert config_from_dict(config.to_dict()) == config
    save_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == config


@pytest.mark.parametrize(
    "raw,key,valid",
    [
        ({"bogus": 1}, "'bogus' at top level", "data, tokenizer, model"),
        ({"data": {"src_langs": "de"}}, "'data.src_langs' in section 'data'", "src_lang, tgt_lang"),
        ({"data": {"hub": {"nme": "wmt14"}}}, "'data.hub.nme'", "name, config, translation_field"),
    ],
)
def test_unknown_key_names_key_and_valid_keys(raw: dict, key: str, valid: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    assert f"unknown config key {key}" in str(info.value)
    assert "valid keys: " in str(info.value) and valid in str(info.value)


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"train": {"lr": "fast"}}, "train.lr: expected a number, got 'fast'"),
        ({"model": {"heads": 2.5}}, "model.heads: expected an integer"),
        ({"model": {"heads": True}}, "model.heads: expected an integer"),
        ({"tokenizer": {"joint": "yes"}}, "tokenizer.joint: expected true or false"),
        ({"model": {"arch": "lstm"}}, "model.arch: 'lstm' is not one of rnn, transformer"),
        ({"decode": {"precision": "fp16"}}, "decode.precision: 'fp16' is not one of fp32, bf16"),
        ({"train": {"schedule": "linear"}}, "train.schedule: 'linear' is not one of inverse_sqrt"),
        ({"data": {"files": ["a.txt"]}}, "data.files: expected a mapping"),
        ({"train": {"betas": [0.9]}}, "train.betas: expected a list of 2 values"),
        (
            {"tokenizer": {"detok_remove_spaces": "ja"}},
            "tokenizer.detok_remove_spaces: expected a list",
        ),
    ],
)
def test_wrong_types_name_the_field(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("[", r"\[")):
        config_from_dict(raw)


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"tokenizer": {"vocab_size": 4}}, "tokenizer.vocab_size must be at least 8"),
        ({"tokenizer": {"character_coverage": 1.5}}, "tokenizer.character_coverage must be in"),
        ({"model": {"dropout": 1.0}}, "model.dropout must be in [0, 1)"),
        ({"train": {"batch_tokens": 0}}, "train.batch_tokens must be positive"),
        ({"data": {"max_len": -1}}, "data.max_len must be positive"),
        ({"data": {"src_lang": "en", "tgt_lang": "en"}}, "both 'en'"),
        ({"data": {"preset": None}}, "set data.preset, data.files or data.hub"),
        ({"decode": {"beam_size": 2, "n_best": 3}}, "decode.n_best (3) cannot exceed"),
    ],
)
def test_impossible_values_are_rejected(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "model,message",
    [
        ({"arch": "rnn", "hidden_size": 0}, "model.hidden_size must be positive"),
        ({"arch": "rnn", "local_window": -1}, "model.local_window must not be negative"),
        ({"arch": "transformer", "heads": 3}, "model.heads (3) must divide model.embed_dim (256)"),
        ({"arch": "transformer", "attention_dropout": 1.0}, "model.attention_dropout must be in"),
        ({"arch": "transformer", "alignment_layer": 3}, "model.alignment_layer 3 is out of range"),
    ],
)
def test_model_fields_are_checked_for_their_architecture(model: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"model": model})
    assert message in str(info.value)


def test_other_architectures_fields_are_not_checked() -> None:
    rnn = {"arch": "rnn", "heads": 3, "ffn_size": 0, "self_attention_window": -1}
    assert config_from_dict({"model": rnn}).model.heads == 3
    transformer = {"arch": "transformer", "hidden_size": 0, "local_window": -1}
    assert config_from_dict({"model": transformer}).model.hidden_size == 0


def test_base_files_merge_deeply(tmp_path: Path) -> None:
    _yaml(
        tmp_path / "base" / "root.yaml",
        {"model": {"arch": "rnn", "hidden_size": 128}, "train": {"lr": 0.001}},
    )
    _yaml(tmp_path / "base" / "mid.yaml", {"base": "root.yaml", "model": {"cell": "gru"}})
    variant = _yaml(
        tmp_path / "variant.yaml",
        {"base": "base/mid.yaml", "model": {"hidden_size": 64}, "name": "small"},
    )
    config = load_config(variant)
    # Bases are resolved relative to the file that names them; the variant wins per key.
    assert (config.model.arch, config.model.cell, config.model.hidden_size) == ("rnn", "gru", 64)
    assert config.train.lr == 0.001 and config.name == "small"
    assert load_config(tmp_path / "base" / "mid.yaml").name == "mid"


def test_base_loop_and_missing_base(tmp_path: Path) -> None:
    _yaml(tmp_path / "a.yaml", {"base": "b.yaml"})
    _yaml(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(ConfigError, match="loop"):
        load_config(tmp_path / "a.yaml")
    _yaml(tmp_path / "c.yaml", {"base": "missing.yaml"})
    with pytest.raises(ConfigError, match="config file not found: .*missing.yaml"):
        load_config(tmp_path / "c.yaml")


def test_set_overrides(tmp_path: Path) -> None:
    path = _yaml(tmp_path / "run.yaml", {"model": {"heads": 4}})
    config = load_config(
        path,
        [
            "model.heads=8",
            "train.betas=[0.9, 0.99]",
            "data.train_limit=",
            "data.hub.name=wmt14",
            "tokenizer.detok_remove_spaces=[ja]",
            "name=override",
        ],
    )
    assert config.model.heads == 8 and config.train.betas == (0.9, 0.99)
    assert config.data.train_limit is None and config.data.hub.name == "wmt14"
    assert config.tokenizer.detok_remove_spaces == ["ja"] and config.name == "override"


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.heads", "must look like section.key=value"),
        ("model.head=8", "unknown config key 'model.head'"),
        ("model.heads=many", "model.heads: expected an integer"),
        ("name.x=1", "name is not a section"),
    ],
)
def test_bad_overrides(tmp_path: Path, override: str, message: str) -> None:
    path = _yaml(tmp_path / "run.yaml", {"name": "run"})
    with pytest.raises(ConfigError) as info:
        load_config(path, [override])
    assert message in str(info.value)


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("model: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="broken.yaml: invalid YAML"):
        load_config(path)


SHIPPED = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_config_loads(path: Path) -> None:
    """The README's commands name these files: each must pass strict loading and validation."""
    config = load_config(path)
    assert config.data.src_lang != config.data.tgt_lang
    assert config.model.arch in ("transformer", "rnn")
