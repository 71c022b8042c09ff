"""A tokenizer taken from an existing checkpoint instead of trained (`tokenizer.from_checkpoint`).

Ensemble members average their target distributions, so they must share one target
vocabulary; a student distilled from a model, or a new member for its ensemble, therefore
reuses that model's SentencePiece models rather than training its own on its own data.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from nmt.checkpoint import CheckpointError, load_checkpoint
from nmt.config import ConfigError, DataConfig, TokenizerConfig
from nmt.tokenizer import Tokenizer


def tokenizer_settings(config: TokenizerConfig) -> dict[str, Any]:
    """The settings a tokenizer is trained with (where it comes from is not one of them)."""
    settings = dataclasses.asdict(config)
    settings.pop("from_checkpoint")
    return settings


def checkpoint_tokenizer(path: str, config: TokenizerConfig, data: DataConfig) -> Tokenizer:
    """The tokenizer of checkpoint `path`, for data.src_lang -> data.tgt_lang.

    A checkpoint for the reverse direction serves too: its source model becomes the target
    model. Settings that differ from the config are an error rather than silently adopted,
    so the run's saved config stays true to the tokenizer it used.
    """
    try:
        saved = Tokenizer.from_state(load_checkpoint(path, mmap=True).tokenizer)
    except CheckpointError as e:
        raise ConfigError(f"tokenizer.from_checkpoint: {e}") from None
    theirs, ours = tokenizer_settings(saved.config), tokenizer_settings(config)
    differ = [key for key in ours if theirs.get(key) != ours[key]]
    if differ:
        changes = ", ".join(
            f"{key}: {theirs.get(key)!r} there, {ours[key]!r} here" for key in differ
        )
        raise ConfigError(
            f"tokenizer.from_checkpoint: {path} was tokenized with other settings ({changes}); "
            "set the tokenizer section as in that checkpoint"
        )
    langs = (data.src_lang, data.tgt_lang)
    if langs == (saved.src_lang, saved.tgt_lang):
        models = saved.models
    elif langs == (saved.tgt_lang, saved.src_lang):
        models = (
            saved.models
            if saved.joint
            else {"src": saved.models["tgt"], "tgt": saved.models["src"]}
        )
    else:
        raise ConfigError(
            f"tokenizer.from_checkpoint: {path} translates {saved.src_lang}->{saved.tgt_lang}; "
            f"its tokenizer cannot serve {data.src_lang}->{data.tgt_lang}"
        )
    return Tokenizer(models, data.src_lang, data.tgt_lang, saved.config)


def protos_digest(tokenizer: Tokenizer) -> str:
    """Identifies a tokenizer's SentencePiece models (by content)."""
    digest = hashlib.sha256()
    for name in sorted(tokenizer.models):
        digest.update(name.encode() + tokenizer.models[name])
    return digest.hexdigest()
