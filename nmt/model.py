"""The translation model interface (`Seq2Seq`) and `build_model(config)`.

One interface serves every architecture, so one beam search serves them all:

    state = model.encode(src, src_mask)                 # DecoderState
    log_probs, attention, state = model.decode_step(state, prev_tokens)   # first: BOS
    state = model.reorder(state, rows, sentences)       # beams: select / expand / prune
    logits, attention = model(src, src_mask, tgt_in, with_attention=True)  # teacher forcing

`DecoderState` holds two dicts of tensors with the batch on dim 0: `source`, computed once
from the source (memory, attention keys, masks, cross-attention keys/values), one entry per
sentence; and `rows`, one entry per row (hypothesis: recurrent states, self-attention caches).
A decoder puts each tensor in one of the two; `reorder` selects them without knowing names.
The R rows of N sentences are consecutive per sentence, W = R/N each, so a decoder attends its
rows grouped by sentence (`nmt.attention.group_by_sentence`) to one copy of the source part;
`reorder` keeps that layout. What the entries are belongs to the architecture (see
nmt/rnn.py and nmt/transformer.py).

Attention is float32 and exactly 0 on padded source positions; over real tokens it sums to 1.
For the Transformer it is the head-averaged cross-attention of `alignment_layer`. Models
without attention (RNN with attention "none", Sutskever/Cho style) return None for the
attention, whatever `with_attention` says: they have no alignment, and an invented one (such as
uniform weights) would be misleading. Callers must accept None.

Limits: `encode` raises ValueError for sources longer than `max_source_len` (= config
max_positions, for RNNs too, so every model has one documented limit to truncate to);
`max_target_len` is max_positions for learned Transformer positions, else None (no limit).
`forward` returns logits in the autocast dtype (bf16 under autocast): compute losses in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt.attention import BahdanauAttention, LuongAttention, LuongLocalAttention
from nmt.config import ConfigError, ModelConfig, check_model
from nmt.rnn import (
    BahdanauDecoder,
    Bridge,
    LuongDecoder,
    OutputLayer,
    RNNEncoder,
    SutskeverDecoder,
)
from nmt.specials import PAD_ID
from nmt.transformer import (
    LearnedPositions,
    SinusoidalPositions,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEmbedding,
    TransformerEncoder,
    TransformerEncoderLayer,
)

Tensors = dict[str, Tensor]  # one part of a DecoderState: name -> tensor, batch on dim 0


@dataclass(frozen=True)
class DecoderState:
    """A decoder's state for R rows of N sentences (R = N*W, each sentence's W rows
    consecutive): `source` entries [N,...] per sentence, `rows` entries [R,...] per row."""

    source: Tensors
    rows: Tensors


class Decoder(Protocol):
    """What `Seq2Seq` needs from a decoder (the RNN decoders and TransformerDecoder).

    `init_state` returns the source part and the initial row part of the state; decoding
    reads the source part and returns a new row part, so the source part never changes.
    """

    def init_state(
        self, memory: Tensor, final: tuple[Tensor, ...], src_mask: Tensor
    ) -> tuple[Tensors, Tensors]: ...

    def __call__(
        self, source: Tensors, rows: Tensors, tgt_in: Tensor, with_attention: bool
    ) -> tuple[Tensor, Tensor | None]: ...

    def step(
        self,
        source: Tensors,
        rows: Tensors,
        prev_tokens: Tensor,
        with_attention: bool,
        logits_dtype: torch.dtype | None,
    ) -> tuple[Tensor, Tensor | None, Tensors]: ...


class Seq2Seq(nn.Module):
    """Encoder + decoder behind the interface above.

    The encoder maps (src [B,S], src_mask [B,S]) to (memory [B,S,K], final states); the
    decoder turns them into its initial state, then decodes all steps (teacher forcing) or one.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: Decoder,
        arch: str,
        src_vocab_size: int,
        tgt_vocab_size: int,
        max_source_len: int,
        max_target_len: int | None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder: Decoder = decoder
        self.arch = arch
        self.src_vocab_size = src_vocab_size
        self.tgt_vocab_size = tgt_vocab_size
        self.max_source_len = max_source_len
        self.max_target_len = max_target_len  # None = no limit on decoded positions

    def encode(self, src: Tensor, src_mask: Tensor) -> DecoderState:
        """src [B,S] long, src_mask [B,S] bool (True = token) -> initial decoder state."""
        if src.size(1) > self.max_source_len:
            raise ValueError(
                f"source length {src.size(1)} exceeds the model's limit of {self.max_source_len}"
            )
        memory, final = self.encoder(src, src_mask)
        return DecoderState(*self.decoder.init_state(memory, final, src_mask))

    def decode_step(
        self,
        state: DecoderState,
        prev_tokens: Tensor,
        with_attention: bool = True,
        logits_dtype: torch.dtype | None = None,
    ) -> tuple[Tensor, Tensor | None, DecoderState]:
        """prev_tokens [B] -> log-probs [B,V] float32, attention [B,S] float32 or None, state.

        logits_dtype: compute the vocabulary projection in this dtype (bf16 decoding on CPU,
        see nmt/projection.py); None = the model's dtype.
        """
        logits, attention, rows = self.decoder.step(
            state.source, state.rows, prev_tokens, with_attention, logits_dtype
        )
        log_probs = F.log_softmax(logits, dim=-1, dtype=torch.float32)
        attention = None if attention is None else attention.float()
        return log_probs, attention, DecoderState(state.source, rows)

    def reorder(
        self, state: DecoderState, rows: Tensor, sentences: Tensor | None = None
    ) -> DecoderState:
        """The state of new rows: rows [N',W'] long, new row (n, w) continues row rows[n, w].

        All W' rows of line n must belong to one sentence: sentences[n] (an index into the
        state's N sentences), or sentence n when `sentences` is None (then N' = N). Beam search
        knows both from its own bookkeeping, so nothing here waits for the device.
        """
        if sentences is None and state.source and rows.size(0) != _sentences(state):
            raise ValueError(f"{rows.size(0)} lines of rows for {_sentences(state)} sentences")
        flat = rows.reshape(-1)
        source = state.source
        if sentences is not None:
            source = {key: value.index_select(0, sentences) for key, value in source.items()}
        return DecoderState(source, {k: v.index_select(0, flat) for k, v in state.rows.items()})

    def forward(
        self, src: Tensor, src_mask: Tensor, tgt_in: Tensor, with_attention: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Teacher forcing: -> logits [B,T,V] (autocast dtype), attention [B,T,S] or None."""
        state = self.encode(src, src_mask)
        logits, attention = self.decoder(state.source, state.rows, tgt_in, with_attention)
        return logits, None if attention is None or not with_attention else attention.float()


def _sentences(state: DecoderState) -> int:
    """N, the number of sentences (from any source entry)."""
    return next(iter(state.source.values())).size(0)


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameter values (tied embeddings count once)."""
    return sum(p.numel() for p in model.parameters())


def build_model(
    config: ModelConfig, src_vocab_size: int, tgt_vocab_size: int, joint_vocab: bool = False
) -> Seq2Seq:
    """The model `config` describes; raises ConfigError naming the offending field."""
    check_model_config(config, src_vocab_size, tgt_vocab_size, joint_vocab)
    encoder: nn.Module
    decoder: Decoder
    if config.arch == "transformer":
        encoder, decoder = _build_transformer(config, src_vocab_size, tgt_vocab_size, joint_vocab)
        max_target = None if config.positions == "sinusoidal" else config.max_positions
    elif config.arch == "rnn":
        encoder, decoder = _build_rnn(config, src_vocab_size, tgt_vocab_size, joint_vocab)
        max_target = None
    return Seq2Seq(
        encoder,
        decoder,
        config.arch,
        src_vocab_size,
        tgt_vocab_size,
        config.max_positions,
        max_target,
    )


def check_model_config(
    config: ModelConfig, src_vocab_size: int, tgt_vocab_size: int, joint_vocab: bool
) -> None:
    """Reject configs that cannot be built: the fields (see `check_model`; configs made in code
    skip YAML validation) and what they need of the vocabularies."""
    check_model(config)
    if min(src_vocab_size, tgt_vocab_size) <= PAD_ID + 1:
        raise ConfigError(f"vocabulary sizes too small: {src_vocab_size}, {tgt_vocab_size}")
    if config.tie_embeddings and joint_vocab and src_vocab_size != tgt_vocab_size:
        raise ConfigError(
            f"model.tie_embeddings with a joint vocabulary needs equal vocabulary sizes, got "
            f"source {src_vocab_size} and target {tgt_vocab_size}"
        )


def alignment_index(alignment_layer: int, decoder_layers: int) -> int:
    """The non-negative decoder layer index of a checked `alignment_layer`; the default -2
    means the last layer when there is only one."""
    if alignment_layer == -2 and decoder_layers == 1:
        return 0
    return alignment_layer % decoder_layers


def _build_transformer(
    config: ModelConfig, src_vocab_size: int, tgt_vocab_size: int, joint_vocab: bool
) -> tuple[TransformerEncoder, TransformerDecoder]:
    # d_model is embed_dim; hidden_size only sizes RNNs.
    dim = config.embed_dim
    tgt_table = _embedding_table(tgt_vocab_size, dim)
    share_src = config.tie_embeddings and joint_vocab
    src_table = tgt_table if share_src else _embedding_table(src_vocab_size, dim)
    pre_norm = config.norm == "pre"

    def positions() -> nn.Module:
        if config.positions == "learned":
            return LearnedPositions(config.max_positions, dim)
        return SinusoidalPositions(dim)

    sizes = (
        dim,
        config.heads,
        config.ffn_size,
        config.dropout,
        config.attention_dropout,
        config.activation_dropout,
        pre_norm,
    )
    window = config.self_attention_window
    linear_self = config.self_attention == "linear"
    linear_cross = config.cross_attention == "linear"
    encoder = TransformerEncoder(
        TransformerEmbedding(src_table, positions(), config.dropout),
        [TransformerEncoderLayer(*sizes, linear_self) for _ in range(config.encoder_layers)],
        pre_norm,
        window,
    )
    decoder = TransformerDecoder(
        TransformerEmbedding(tgt_table, positions(), config.dropout),
        [
            TransformerDecoderLayer(*sizes, window, linear_self, linear_cross)
            for _ in range(config.decoder_layers)
        ],
        pre_norm,
        window,
        alignment_index(config.alignment_layer, config.decoder_layers),
        tgt_vocab_size,
        config.tie_embeddings,
    )
    return encoder, decoder


def _embedding_table(vocab_size: int, embed_dim: int) -> nn.Embedding:
    """Token embeddings, N(0, d^-1/2) init (the Transformer scales them by sqrt(d) on use)."""
    table = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
    nn.init.normal_(table.weight, std=embed_dim**-0.5)
    with torch.no_grad():
        table.weight[PAD_ID].zero_()
    return table


def _build_rnn(
    config: ModelConfig, src_vocab_size: int, tgt_vocab_size: int, joint_vocab: bool
) -> tuple[RNNEncoder, Decoder]:
    hidden, dropout, cell = config.hidden_size, config.dropout, config.cell
    tgt_table = _embedding_table(tgt_vocab_size, config.embed_dim)
    share_src = config.tie_embeddings and joint_vocab
    src_table = tgt_table if share_src else _embedding_table(src_vocab_size, config.embed_dim)
    encoder = RNNEncoder(
        src_table, cell, hidden, config.encoder_layers, config.bidirectional, dropout
    )
    memory_size = hidden * (2 if config.bidirectional else 1)
    bridge = Bridge(
        config.encoder_layers,
        config.decoder_layers,
        memory_size,
        hidden,
        kinds=2 if cell == "lstm" else 1,
    )
    layers, tie = config.decoder_layers, config.tie_embeddings

    def output(in_size: int, deep: bool) -> OutputLayer:
        return OutputLayer(in_size, tgt_table, tgt_vocab_size, dropout, deep, tie)

    if config.attention == "none":
        context = memory_size if config.context_every_step else 0
        readout = hidden + context + config.embed_dim if context else hidden
        decoder: Decoder = SutskeverDecoder(
            tgt_table,
            cell,
            hidden,
            layers,
            dropout,
            bridge,
            context,
            output(readout, deep=context > 0),
        )
    elif config.attention == "bahdanau":
        attention = BahdanauAttention(hidden, memory_size, hidden)
        decoder = BahdanauDecoder(
            tgt_table,
            attention,
            cell,
            hidden,
            layers,
            memory_size,
            dropout,
            bridge,
            output(hidden + memory_size + config.embed_dim, deep=True),
        )
    elif config.attention == "luong":
        if config.local_window > 0:
            luong: LuongAttention | LuongLocalAttention = LuongLocalAttention(
                hidden, memory_size, config.luong_score, config.local_window
            )
        else:
            luong = LuongAttention(hidden, memory_size, config.luong_score)
        decoder = LuongDecoder(
            tgt_table,
            luong,
            cell,
            hidden,
            layers,
            memory_size,
            dropout,
            config.input_feeding,
            bridge,
            output(hidden, deep=False),
        )
    return encoder, decoder
