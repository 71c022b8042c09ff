"""Transformer encoder and decoder (Vaswani et al., 2017) with cached incremental decoding.

d_model is `embed_dim` (the RNN-only `hidden_size` is not used here). Options: pre-norm or
post-norm residual blocks (pre-norm adds a final LayerNorm to each stack), sinusoidal or
learned positions, sliding-window (local) self-attention, linear (kernel) self- and/or
cross-attention (nmt/linear_attention.py), and reporting one decoder layer's head-averaged
cross-attention as the alignment.

Cross-attention stays softmax by default even when self-attention is linear: its cost per
step is O(S) with S fixed by the source, so linearising it saves nothing as the output grows,
while softmax's sharp weights are what aligns a target word with a source word (and what the
alignments report); elu+1 features cannot let one key dominate the way exp does, so linear
weights phi(q).phi(k) / normaliser tend to be flatter. `model.cross_attention` chooses.

Decoder state (see nmt/model.py: N sentences, R = N*W rows): `source` holds src_mask [N,S]
bool and cross_k.{i}, cross_v.{i} [N,heads,S,dh] (the encoder output projected once by layer
i's cross-attention, shared by the sentence's beams); `rows` holds self_k.{i}, self_v.{i}
[R,heads,t,dh] (the keys/values of the t target positions decoded so far; t is the step
counter).
With linear cross-attention cross_k.{i} is phi(K) and cross_v.{i} the sums phi(K)^T [V 1]
[N,heads,dh,dh+1] (see nmt/linear_attention.py). With linear self-attention `rows` holds
instead the fixed-size recurrent state self_kv.{i} [R,heads,dh,dh] and self_ksum.{i}
[R,heads,dh] (float32 sums of phi(k) v^T and phi(k) over the positions decoded so far), and
`position` [R,t,0]: no data, its size(1) is t, so a step knows its position without reading
a tensor, and `reorder` selects it like any other row entry.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor, nn

from nmt.attention import MultiHeadAttention, group_by_sentence
from nmt.dropout import Dropout
from nmt.linear_attention import LinearAttention
from nmt.projection import VocabularyProjection

if TYPE_CHECKING:  # one part of a decoder state, dict[str, Tensor]; see nmt/model.py
    from nmt.model import Tensors


class SinusoidalPositions(nn.Module):
    """PE(p, 2i) = sin(p / 10000^(2i/d)), PE(p, 2i+1) = cos(p / 10000^(2i/d)); no limit."""

    inv_freq: Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        exponents = torch.arange(0, dim, 2, dtype=torch.float32) / dim
        self.register_buffer("inv_freq", 10000.0 ** (-exponents), persistent=False)

    def forward(self, start: int, length: int) -> Tensor:
        """Encodings of positions start..start+length-1: [length, d] float32."""
        positions = torch.arange(start, start + length, device=self.inv_freq.device)
        angles = positions.float().unsqueeze(1) * self.inv_freq.unsqueeze(0)
        table = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(1)  # interleaved
        return table[:, : self.dim]


class LearnedPositions(nn.Module):
    """One trained vector per position, up to `max_positions`."""

    def __init__(self, max_positions: int, dim: int) -> None:
        super().__init__()
        self.max_positions = max_positions
        self.table = nn.Embedding(max_positions, dim)
        nn.init.normal_(self.table.weight, std=dim**-0.5)

    def forward(self, start: int, length: int) -> Tensor:
        """[length, d]; positions beyond the table cannot be encoded."""
        if start + length > self.max_positions:
            raise ValueError(
                f"position {start + length - 1} exceeds the learned table (max_positions="
                f"{self.max_positions})"
            )
        return self.table.weight[start : start + length]


class TransformerEmbedding(nn.Module):
    """Token embedding scaled by sqrt(d), plus positions, then dropout."""

    def __init__(self, embedding: nn.Embedding, positions: nn.Module, dropout: float) -> None:
        super().__init__()
        self.embedding = embedding
        self.positions = positions
        self.scale = math.sqrt(embedding.embedding_dim)
        self.dropout = Dropout(dropout)

    def forward(self, tokens: Tensor, start: int = 0) -> Tensor:
        """tokens [B,T] at positions start.. -> [B,T,E]."""
        x = self.embedding(tokens) * self.scale + self.positions(start, tokens.size(1))
        return self.dropout(x)


class FeedForward(nn.Module):
    """Position-wise FFN: Linear(E,F) -> ReLU -> activation dropout -> Linear(F,E)."""

    def __init__(self, embed_dim: int, ffn_size: int, activation_dropout: float) -> None:
        super().__init__()
        self.inner = nn.Linear(embed_dim, ffn_size)
        self.outer = nn.Linear(ffn_size, embed_dim)
        self.dropout = Dropout(activation_dropout)
        for layer in (self.inner, self.outer):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.outer(self.dropout(torch.relu(self.inner(x))))


def _attention(
    embed_dim: int, heads: int, attention_dropout: float, linear: bool
) -> MultiHeadAttention | LinearAttention:
    """Softmax or linear multi-head attention (chosen once, when the model is built)."""
    if linear:
        return LinearAttention(embed_dim, heads)
    return MultiHeadAttention(embed_dim, heads, attention_dropout)


class TransformerEncoderLayer(nn.Module):
    """Self-attention and FFN blocks, each wrapped as residual + LayerNorm (pre or post)."""

    def __init__(
        self,
        embed_dim: int,
        heads: int,
        ffn_size: int,
        dropout: float,
        attention_dropout: float,
        activation_dropout: float,
        pre_norm: bool,
        linear_self: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = _attention(embed_dim, heads, attention_dropout, linear_self)
        self.ffn = FeedForward(embed_dim, ffn_size, activation_dropout)
        self.attn_norm = nn.LayerNorm(embed_dim)
        self.ffn_norm = nn.LayerNorm(embed_dim)
        self.dropout = Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x [B,S,E], mask bool broadcastable to [B,h,S,S] -> [B,S,E]."""
        h = self.attn_norm(x) if self.pre_norm else x
        h, _ = self.self_attn.attend(*self.self_attn.project_qkv(h), mask=mask)
        x = _residual(x, self.dropout(h), self.attn_norm, self.pre_norm)
        h = self.ffn_norm(x) if self.pre_norm else x
        return _residual(x, self.dropout(self.ffn(h)), self.ffn_norm, self.pre_norm)


def _residual(x: Tensor, update: Tensor, norm: nn.LayerNorm, pre_norm: bool) -> Tensor:
    return x + update if pre_norm else norm(x + update)


class TransformerEncoder(nn.Module):
    """Embedding + N encoder layers (+ final LayerNorm for pre-norm)."""

    def __init__(
        self,
        embed: TransformerEmbedding,
        layers: list[TransformerEncoderLayer],
        pre_norm: bool,
        window: int,
    ) -> None:
        super().__init__()
        self.embed = embed
        self.layers = nn.ModuleList(layers)
        dim = embed.embedding.embedding_dim
        self.final_norm = nn.LayerNorm(dim) if pre_norm else nn.Identity()
        self.window = window

    def forward(self, src: Tensor, src_mask: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        """src [B,S], src_mask [B,S] -> (memory [B,S,E], no final states)."""
        x = self.embed(src)
        mask = src_mask[:, None, None, :]  # [B,1,1,S]
        if self.window > 0:
            length = src.size(1)
            pos = torch.arange(length, device=src.device)
            band = (pos[None, :] - pos[:, None]).abs() <= self.window  # [S,S]
            # A padded query more than `window` past the last token would see no key at all,
            # and some CUDA kernels return NaN for such rows (which P.V then spreads); letting
            # every position see itself changes no real token's row.
            mask = (mask & band) | torch.eye(length, dtype=torch.bool, device=src.device)
        for layer in self.layers:
            x = layer(x, mask)
        return self.final_norm(x), ()


class TransformerDecoderLayer(nn.Module):
    """Masked self-attention, cross-attention and FFN blocks with residuals and LayerNorm."""

    def __init__(
        self,
        embed_dim: int,
        heads: int,
        ffn_size: int,
        dropout: float,
        attention_dropout: float,
        activation_dropout: float,
        pre_norm: bool,
        window: int,
        linear_self: bool = False,
        linear_cross: bool = False,
    ) -> None:
        super().__init__()
        self.window = window
        self.self_attn = _attention(embed_dim, heads, attention_dropout, linear_self)
        self.cross_attn = _attention(embed_dim, heads, attention_dropout, linear_cross)
        self.ffn = FeedForward(embed_dim, ffn_size, activation_dropout)
        self.self_norm = nn.LayerNorm(embed_dim)
        self.cross_norm = nn.LayerNorm(embed_dim)
        self.ffn_norm = nn.LayerNorm(embed_dim)
        self.dropout = Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(
        self,
        x: Tensor,
        cross_kv: tuple[Tensor, Tensor],
        src_mask: Tensor,
        self_mask: Tensor | None,
        cache: tuple[Tensor, Tensor] | None,
        need_weights: bool,
    ) -> tuple[Tensor, Tensor | None, tuple[Tensor, Tensor]]:
        """x [R,T,E] (R = N sentences x W rows each); cross_kv [N,h,S,dh] each; src_mask [N,1,1,S].

        Full sequence (cache None): causal self-attention, `self_mask` = the causal window
        mask [T,T] or None. One step (cache = keys/values of earlier positions): attends to the
        last `window`+1 positions (all when window is 0); `self_mask` is unused. Linear
        self-attention: the cache is the recurrent state (sum phi(k) v^T, sum phi(k)).
        Returns x [B,T,E], cross-attention [B,T,S] or None, and this layer's self-attention
        keys/values (linear: state) including the new positions.
        """
        h = self.self_norm(x) if self.pre_norm else x
        q, k, v = self.self_attn.project_qkv(h)
        if cache is not None and isinstance(self.self_attn, LinearAttention):
            h, (k, v) = self.self_attn.step(q, k, v, cache)
        elif cache is not None:
            k, v = torch.cat((cache[0], k), dim=2), torch.cat((cache[1], v), dim=2)
            keep = k.size(2) if self.window == 0 else self.window + 1  # sliding window
            h, _ = self.self_attn.attend(q, k[:, :, -keep:], v[:, :, -keep:])
        elif self_mask is not None:
            h, _ = self.self_attn.attend(q, k, v, mask=self_mask)
        else:
            h, _ = self.self_attn.attend(q, k, v, is_causal=x.size(1) > 1)
        x = _residual(x, self.dropout(h), self.self_norm, self.pre_norm)
        h = self.cross_norm(x) if self.pre_norm else x
        rows, length, _ = x.shape
        q = self.cross_attn.project_q(group_by_sentence(h, cross_kv[0].size(0)))
        if isinstance(self.cross_attn, LinearAttention):  # sums precomputed per sentence
            h, weights = self.cross_attn.attend_summary(q, *cross_kv, need_weights)
        else:
            h, weights = self.cross_attn.attend(
                q, *cross_kv, mask=src_mask, need_weights=need_weights
            )
        h = h.reshape(rows, length, -1)
        weights = None if weights is None else weights.reshape(rows, length, -1)
        x = _residual(x, self.dropout(h), self.cross_norm, self.pre_norm)
        h = self.ffn_norm(x) if self.pre_norm else x
        x = _residual(x, self.dropout(self.ffn(h)), self.ffn_norm, self.pre_norm)
        return x, weights, (k, v)


class TransformerDecoder(nn.Module):
    """Embedding + N decoder layers (+ final LayerNorm for pre-norm) + vocabulary projection."""

    def __init__(
        self,
        embed: TransformerEmbedding,
        layers: list[TransformerDecoderLayer],
        pre_norm: bool,
        window: int,
        alignment_layer: int,
        vocab_size: int,
        tie: bool,
    ) -> None:
        super().__init__()
        self.embed = embed
        self.layers = nn.ModuleList(layers)
        dim = embed.embedding.embedding_dim
        self.final_norm = nn.LayerNorm(dim) if pre_norm else nn.Identity()
        self.output = VocabularyProjection(dim, vocab_size, bias=False)
        if tie:
            self.output.weight = embed.embedding.weight
        else:  # initialised like the embedding table it would otherwise share
            nn.init.normal_(self.output.weight, std=dim**-0.5)
        self.window = window
        self.alignment_layer = alignment_layer  # non-negative index
        # Linear self-attention decodes with a fixed-size recurrent state (module docstring).
        self.recurrent = isinstance(layers[0].self_attn, LinearAttention)
        self.state_names = ("self_kv", "self_ksum") if self.recurrent else ("self_k", "self_v")

    def init_state(
        self, memory: Tensor, final: tuple[Tensor, ...], src_mask: Tensor
    ) -> tuple[Tensors, Tensors]:
        """Project the encoder output once per layer for cross-attention; empty self caches
        (linear self-attention: zero states)."""
        source: Tensors = {"src_mask": src_mask}
        rows: Tensors = {}
        first, second = self.state_names
        for i, module in enumerate(self.layers):
            layer = cast(TransformerDecoderLayer, module)
            k, v = layer.cross_attn.project_kv(memory)
            if isinstance(layer.cross_attn, LinearAttention):
                source[f"cross_k.{i}"], source[f"cross_v.{i}"] = layer.cross_attn.summarise(
                    k, v, src_mask
                )
            else:
                source[f"cross_k.{i}"], source[f"cross_v.{i}"] = k, v
            if isinstance(layer.self_attn, LinearAttention):
                state = layer.self_attn.initial_state(memory.size(0), memory.device)
            else:
                state = (k[:, :, :0], k[:, :, :0])
            rows[f"{first}.{i}"], rows[f"{second}.{i}"] = state
        if self.recurrent:
            rows["position"] = memory.new_empty(memory.size(0), 0, 0)
        return source, rows

    def forward(
        self, source: Tensors, rows: Tensors, tgt_in: Tensor, with_attention: bool
    ) -> tuple[Tensor, Tensor | None]:
        """Teacher forcing: tgt_in [B,T] -> logits [B,T,V], attention [B,T,S] or None."""
        x = self.embed(tgt_in)
        src_mask = source["src_mask"][:, None, None, :]
        self_mask = None
        if self.window > 0:
            pos = torch.arange(tgt_in.size(1), device=tgt_in.device)
            offset = pos[:, None] - pos[None, :]
            self_mask = (offset >= 0) & (offset <= self.window)  # causal + window [T,T]
        attention = None
        for i, layer in enumerate(self.layers):
            need = with_attention and i == self.alignment_layer
            cross_kv = (source[f"cross_k.{i}"], source[f"cross_v.{i}"])
            x, weights, _ = layer(x, cross_kv, src_mask, self_mask, None, need)
            attention = weights if need else attention
        return self.output(self.final_norm(x)), attention

    def step(
        self,
        source: Tensors,
        rows: Tensors,
        prev_tokens: Tensor,
        with_attention: bool,
        logits_dtype: torch.dtype | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensors]:
        """One position: prev_tokens [B] -> logits [B,V], attention [B,S] or None, new rows."""
        first, second = self.state_names
        new_rows: Tensors = {}
        if self.recurrent:
            position = rows["position"]
            t = position.size(1)
            new_rows["position"] = position.new_empty(position.size(0), t + 1, 0)
        else:
            t = rows["self_k.0"].size(2)
        x = self.embed(prev_tokens.unsqueeze(1), start=t)
        src_mask = source["src_mask"][:, None, None, :]
        attention = None
        for i, layer in enumerate(self.layers):
            need = with_attention and i == self.alignment_layer
            cross_kv = (source[f"cross_k.{i}"], source[f"cross_v.{i}"])
            cache = (rows[f"{first}.{i}"], rows[f"{second}.{i}"])
            x, weights, (k, v) = layer(x, cross_kv, src_mask, None, cache, need)
            new_rows[f"{first}.{i}"], new_rows[f"{second}.{i}"] = k, v
            attention = weights.squeeze(1) if need else attention
        logits = self.output(self.final_norm(x), logits_dtype).squeeze(1)
        return logits, attention, new_rows
