"""Typed configuration: dataclasses per section, strict YAML loading, `--set` overrides.

A config file may name a `base:` file (relative to itself); the variant's keys are merged
over the base's, so reference configs stay short and every key is commented once.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration problem, phrased for the user (names the key or field)."""


@dataclass
class HubSource:
    """A Hugging Face hub dataset (needs network), e.g. name=wmt/wmt14, config=de-en."""

    name: str = ""
    config: str | None = None
    # Field holding the pair: "translation" for WMT/IWSLT style rows ({"de": ..., "en": ...}).
    translation_field: str | None = "translation"
    # Used when translation_field is null: top-level column names for source and target.
    src_field: str | None = None
    tgt_field: str | None = None
    # Our split name -> the hub's split name.
    splits: dict[str, str] = field(
        default_factory=lambda: {"train": "train", "valid": "validation", "test": "test"}
    )
    revision: str | None = None


@dataclass
class DataConfig:
    # multi30k | small_parallel_enja | null (then `files` or `hub` says where the data is)
    preset: str | None = "multi30k"
    # Folder holding the presets' corpora; null = $NMT_DATA_DIR, else ./data.
    dir: str | None = None
    src_lang: str = "de"
    tgt_lang: str = "en"
    # Local corpora by split name: [src_file, tgt_file] for plain text (optionally .gz),
    # or [file] for a two-column .tsv or a .jsonl with `src_lang`/`tgt_lang` (or src/tgt) keys.
    files: dict[str, list[str]] = field(default_factory=dict)
    hub: HubSource | None = None
    # Cleaning (training split only): max subword tokens per side, max length ratio.
    max_len: int = 100
    max_ratio: float = 3.0
    # Use only the first N training pairs (quick experiments, tests); null = all.
    train_limit: int | None = None
    # Which splits are used for validation during training and for the final test.
    valid_split: str = "valid"
    test_split: str = "test"


@dataclass
class TokenizerConfig:
    type: Literal["unigram", "bpe"] = "unigram"
    vocab_size: int = 8000
    # One shared model/vocabulary for both languages (enables tying all embeddings).
    joint: bool = True
    # Share of characters covered; ~0.9995 for Japanese, 1.0 for small alphabets.
    character_coverage: float = 1.0
    # Train on at most this many sentences per language (sampled); null = all.
    input_sentence_size: int | None = 1_000_000
    # For corpora that are already space-tokenized (small_parallel_enja): treat the spaces
    # as word boundaries to learn, and remove them again after decoding for these languages.
    detok_remove_spaces: list[str] = field(default_factory=list)
    # Lowercase every sentence before segmentation, in training and when translating (the
    # Multi30k literature trains on lowercased text). Output is then lowercase, so BLEU,
    # chrF and TER compare case-insensitively (signature case:lc).
    lowercase: bool = False
    # Reuse the tokenizer inside this checkpoint instead of training one (its settings must
    # match these; the reverse direction is fine). A model that joins an ensemble with the
    # checkpoint, or is distilled from it, must share its target vocabulary.
    from_checkpoint: str | None = None


@dataclass
class ModelConfig:
    arch: Literal["rnn", "transformer"] = "transformer"
    embed_dim: int = 256
    hidden_size: int = 256
    encoder_layers: int = 3
    decoder_layers: int = 3
    dropout: float = 0.1
    # Tie the decoder's input and output embeddings; with a joint vocabulary also the
    # encoder's (three-way tying).
    tie_embeddings: bool = True
    # --- RNN family ---
    cell: Literal["rnn", "gru", "lstm"] = "lstm"
    bidirectional: bool = True
    # none: Sutskever-style, the encoder state is the only link to the source.
    attention: Literal["none", "bahdanau", "luong"] = "bahdanau"
    luong_score: Literal["dot", "general", "concat"] = "general"
    # Luong local-p attention: window half-width D (0 = global attention).
    local_window: int = 0
    input_feeding: bool = True
    # For attention "none": feed the encoder summary at every step (Cho et al. 2014).
    context_every_step: bool = False
    # --- Transformer ---
    heads: int = 4
    ffn_size: int = 1024
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    norm: Literal["pre", "post"] = "pre"
    positions: Literal["sinusoidal", "learned"] = "sinusoidal"
    max_positions: int = 512
    # Sliding-window self-attention: each position sees +/- this many others (0 = full).
    self_attention_window: int = 0
    # Encoder and decoder self-attention: softmax, or linear (Katharopoulos et al. 2020,
    # elu+1 features: linear cost in length, O(1) per decoded token). Cross-attention is
    # separate and stays softmax by default (see nmt/transformer.py).
    self_attention: Literal["softmax", "linear"] = "softmax"
    cross_attention: Literal["softmax", "linear"] = "softmax"
    # Decoder layer whose head-averaged cross-attention is reported as the alignment.
    alignment_layer: int = -2


@dataclass
class TrainConfig:
    # Run folder; null = runs/<name>_<src_lang>-<tgt_lang> (name: the config file's stem).
    run_dir: str | None = None
    seed: int = 1
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    threads: int | None = None  # CPU threads; None = usable cores / local ranks, following load
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-9
    weight_decay: float = 0.0
    schedule: Literal["inverse_sqrt", "noam", "plateau", "constant", "cosine", "budget"] = (
        "inverse_sqrt"
    )
    warmup_steps: int = 4000
    min_lr: float = 1e-6
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    batch_tokens: int = 4096
    accum_steps: int = 1
    clip_norm: float = 0.0  # 0 = no clipping
    label_smoothing: float = 0.1
    # R-Drop (Liang et al. 2021): each batch runs twice under different dropout masks and this
    # weight times the symmetric KL divergence between the two predictions joins the loss.
    # 0 = off. A step costs two to two and a half plain ones: worth it where data, not compute,
    # is short.
    rdrop_alpha: float = 0.0
    max_steps: int = 100_000
    max_epochs: int = 100
    # Wall-clock budget in minutes (0 = none); the run saves and stops when it is spent.
    max_minutes: float = 0.0
    budget_warmup: float = 0.1  # schedule budget: warm-up share of the run's budget
    log_every: int = 100
    valid_every: int = 1000
    valid_every_minutes: float = 0.0  # also validate every N minutes of training; 0 = off
    valid_beam_size: int = 1
    # Validation BLEU on at most this many sentences (null = all).
    valid_limit: int | None = None
    keep_best: int = 5
    keep_last: int = 5
    patience: int = 0  # validations without BLEU improvement before stopping (0 = never)
    max_nonfinite: int = 5  # consecutive non-finite losses before the run stops
    # Average the last N saved checkpoints into averaged.pt at the end (0 = off).
    average_last: int = 0


@dataclass
class DecodeConfig:
    beam_size: int = 5
    n_best: int = 1
    length_penalty: float = 0.6  # GNMT alpha; 0 = raw log-probability
    max_len_a: float = 1.5  # max output length = a * source length + b
    max_len_b: int = 10
    min_len: int = 1
    batch_tokens: int = 4096  # source-token budget of one decoding sub-batch
    # bf16: on CPU the vocabulary projection in bf16 (the rest of a decoding step is too small
    # to gain from autocast), on GPUs autocast. Faster; translations may differ slightly.
    precision: Literal["fp32", "bf16"] = "fp32"


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    # Free-form name shown in logs, /info and reports.
    name: str = "nmt"

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (following `base:` links) and apply `section.key=value` overrides."""
    raw = _read_with_bases(Path(path), seen=())
    for item in overrides or []:
        _apply_override(raw, item)
    if "name" not in raw:
        raw["name"] = Path(path).stem
    return config_from_dict(raw)


def config_from_dict(raw: dict[str, Any]) -> Config:
    config = _build(Config, raw, "")
    validate(config)
    return config


def _read_with_bases(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"config base loop through {path}")
    with open(path, encoding="utf-8") as f:
        try:
            raw = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    base = raw.pop("base", None)
    if base is None:
        return raw
    parent = _read_with_bases(path.parent / base, seen + (path.resolve(),))
    return _deep_merge(parent, raw)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    dotted, text = item.split("=", 1)
    keys = dotted.strip().split(".")
    node = raw
    for key in keys[:-1]:
        if node.get(key) is None:  # a section left null in a base file (e.g. data.hub)
            node[key] = {}
        node = node[key]
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {key} is not a section")
    node[keys[-1]] = yaml.safe_load(text) if text.strip() else None


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in raw if k not in names]
    if unknown:
        where = f"in section '{prefix}'" if prefix else "at top level"
        raise ConfigError(
            f"unknown config key '{_join(prefix, unknown[0])}' {where}; "
            f"valid keys: {', '.join(names)}"
        )
    values = {k: _coerce(hints[k], v, _join(prefix, k)) for k, v in raw.items()}
    return cls(**values)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _coerce(hint: Any, value: Any, name: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, name)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, name)
    if origin is Literal:  # the allowed values are checked by `validate`, with the others
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{name}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{name}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(a, v, name) for a, v in zip(args, value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{name}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return value
    return value


# --------------------------------------------------------------------------- validation


def validate(config: Config) -> None:
    """Reject impossible values, naming the field (one check per field)."""
    d, t, tr, dec = config.data, config.tokenizer, config.train, config.decode
    for section, prefix in ((d, "data"), (t, "tokenizer"), (tr, "train"), (dec, "decode")):
        _check_choices(section, prefix)
    _positive("data.max_len", d.max_len)
    _positive("data.max_ratio", d.max_ratio)
    if d.train_limit is not None:
        _positive("data.train_limit", d.train_limit)
    if d.preset is None and not d.files and d.hub is None:
        raise ConfigError("data: set data.preset, data.files or data.hub")
    if d.src_lang == d.tgt_lang:
        raise ConfigError(f"data.src_lang and data.tgt_lang are both {d.src_lang!r}")
    if t.vocab_size < 8:
        raise ConfigError(f"tokenizer.vocab_size must be at least 8, got {t.vocab_size}")
    if not 0.0 < t.character_coverage <= 1.0:
        raise ConfigError(
            f"tokenizer.character_coverage must be in (0, 1], got {t.character_coverage}"
        )
    check_model(config.model)
    _positive("train.lr", tr.lr)
    _positive("train.batch_tokens", tr.batch_tokens)
    _positive("train.accum_steps", tr.accum_steps)
    _positive("train.max_steps", tr.max_steps)
    _positive("train.max_epochs", tr.max_epochs)
    _positive("train.log_every", tr.log_every)
    _positive("train.valid_every", tr.valid_every)
    _positive("train.valid_beam_size", tr.valid_beam_size)
    _positive("train.max_nonfinite", tr.max_nonfinite)
    _non_negative("train.warmup_steps", tr.warmup_steps)
    _non_negative("train.clip_norm", tr.clip_norm)
    _non_negative("train.max_minutes", tr.max_minutes)
    _non_negative("train.valid_every_minutes", tr.valid_every_minutes)
    _probability("train.budget_warmup", tr.budget_warmup)
    _non_negative("train.keep_best", tr.keep_best)
    _positive("train.keep_last", tr.keep_last)
    _non_negative("train.patience", tr.patience)
    _non_negative("train.average_last", tr.average_last)
    _non_negative("train.weight_decay", tr.weight_decay)
    _probability("train.label_smoothing", tr.label_smoothing)
    _non_negative("train.rdrop_alpha", tr.rdrop_alpha)
    _positive("decode.beam_size", dec.beam_size)
    _positive("decode.n_best", dec.n_best)
    _positive("decode.batch_tokens", dec.batch_tokens)
    _non_negative("decode.max_len_a", dec.max_len_a)
    _non_negative("decode.max_len_b", dec.max_len_b)
    _non_negative("decode.min_len", dec.min_len)
    _non_negative("decode.length_penalty", dec.length_penalty)
    if dec.n_best > dec.beam_size:
        raise ConfigError(
            f"decode.n_best ({dec.n_best}) cannot exceed decode.beam_size ({dec.beam_size})"
        )


def check_model(m: ModelConfig) -> None:
    """Reject model settings no model can be built from (configs made in code come here
    without `validate`). Fields of one architecture are checked only for that architecture."""
    _check_choices(m, "model")
    for key in ("embed_dim", "encoder_layers", "decoder_layers", "max_positions"):
        _positive(f"model.{key}", getattr(m, key))
    _probability("model.dropout", m.dropout)
    if m.arch == "rnn":
        _positive("model.hidden_size", m.hidden_size)
        _non_negative("model.local_window", m.local_window)
        return
    _positive("model.heads", m.heads)
    _positive("model.ffn_size", m.ffn_size)
    _probability("model.attention_dropout", m.attention_dropout)
    _probability("model.activation_dropout", m.activation_dropout)
    _non_negative("model.self_attention_window", m.self_attention_window)
    if m.self_attention == "linear" and m.self_attention_window > 0:
        raise ConfigError(
            "model.self_attention_window needs softmax self-attention (model.self_attention: "
            "linear has no sliding window)"
        )
    if m.embed_dim % m.heads != 0:
        raise ConfigError(f"model.heads ({m.heads}) must divide model.embed_dim ({m.embed_dim})")
    # -2 (the default) means the second-to-last layer, or the only one.
    lowest = -2 if m.decoder_layers == 1 else -m.decoder_layers
    if not lowest <= m.alignment_layer < m.decoder_layers:
        raise ConfigError(
            f"model.alignment_layer {m.alignment_layer} is out of range for "
            f"{m.decoder_layers} decoder layer(s)"
        )


def _check_choices(section: Any, prefix: str) -> None:
    """Fields typed `Literal[...]` must hold one of the listed values."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        allowed = typing.get_args(hints[f.name])
        if typing.get_origin(hints[f.name]) is Literal and getattr(section, f.name) not in allowed:
            raise ConfigError(
                f"{prefix}.{f.name}: {getattr(section, f.name)!r} is not one of "
                f"{', '.join(map(str, allowed))}"
            )


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {value}")


def _non_negative(name: str, value: float) -> None:
    if value < 0:
        raise ConfigError(f"{name} must not be negative, got {value}")


def _probability(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be in [0, 1), got {value}")


def save_config(config: Config, path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config.to_dict(), f, sort_keys=False, allow_unicode=True)
