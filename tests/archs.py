"""The architectures every model and search test runs: one tiny config per variant."""

from __future__ import annotations

from dataclasses import replace

from nmt.config import ModelConfig

TINY = ModelConfig(
    embed_dim=16,
    hidden_size=16,
    encoder_layers=2,
    decoder_layers=2,
    dropout=0.1,
    attention_dropout=0.1,
    activation_dropout=0.1,
    heads=2,
    ffn_size=32,
    max_positions=64,
)

ARCHS: dict[str, dict] = {
    "lstm-none": dict(arch="rnn", cell="lstm", attention="none", bidirectional=False),
    "gru-none": dict(arch="rnn", cell="gru", attention="none"),
    "rnn-none": dict(arch="rnn", cell="rnn", attention="none", bidirectional=False),
    "lstm-cho": dict(arch="rnn", cell="lstm", attention="none", context_every_step=True),
    "gru-cho": dict(
        arch="rnn", cell="gru", attention="none", context_every_step=True, bidirectional=False
    ),
    "rnn-cho": dict(arch="rnn", cell="rnn", attention="none", context_every_step=True),
    "lstm-bi-bahdanau": dict(arch="rnn", cell="lstm", attention="bahdanau", bidirectional=True),
    "gru-bahdanau": dict(
        arch="rnn", cell="gru", attention="bahdanau", bidirectional=False, encoder_layers=1
    ),
    "rnn-bahdanau": dict(arch="rnn", cell="rnn", attention="bahdanau"),
    "luong-dot-feed": dict(arch="rnn", attention="luong", luong_score="dot"),
    "luong-dot": dict(
        arch="rnn", attention="luong", luong_score="dot", input_feeding=False, bidirectional=False
    ),
    "luong-general-feed": dict(arch="rnn", attention="luong", luong_score="general"),
    "luong-general": dict(
        arch="rnn", attention="luong", luong_score="general", input_feeding=False
    ),
    "luong-concat-feed": dict(arch="rnn", attention="luong", luong_score="concat"),
    "luong-concat": dict(
        arch="rnn", attention="luong", luong_score="concat", input_feeding=False, cell="gru"
    ),
    "luong-local-feed": dict(arch="rnn", attention="luong", luong_score="general", local_window=2),
    "luong-local": dict(
        arch="rnn", attention="luong", luong_score="dot", local_window=1, input_feeding=False
    ),
    "transformer-pre": dict(arch="transformer", norm="pre"),
    "transformer-post": dict(arch="transformer", norm="post"),
    "transformer-learned": dict(arch="transformer", positions="learned", norm="post"),
    "transformer-window": dict(arch="transformer", self_attention_window=2, norm="post"),
    "transformer-untied": dict(arch="transformer", tie_embeddings=False, decoder_layers=1),
    "transformer-linear": dict(arch="transformer", self_attention="linear"),
    "transformer-linear-post": dict(
        arch="transformer", self_attention="linear", cross_attention="linear", norm="post"
    ),
}
NO_ATTENTION = {name for name, kw in ARCHS.items() if kw.get("attention") == "none"}


def tiny_config(name: str, **overrides) -> ModelConfig:
    """TINY with architecture `name`, then `overrides`."""
    return replace(TINY, **{**ARCHS[name], **overrides})
