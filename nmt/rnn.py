"""Recurrent encoder and decoders (tanh-RNN, GRU or LSTM cells).

- `RNNEncoder`: (bi)directional multi-layer RNN over packed sequences, so padding never
  changes a sentence's encoding.
- `SutskeverDecoder`: no attention; the encoder's final state is the only link (Sutskever et
  al., 2014), or with `context_size` > 0 the encoder summary also enters every step and the
  output layer (Cho et al., 2014).
- `BahdanauDecoder`: additive attention from the previous state, before the recurrent step.
- `LuongDecoder`: global or local-p attention from the current state, after the recurrent
  step; attentional state h~ = tanh(W_c [c; h]); optional input feeding.

Decoder state (see nmt/model.py: N sentences, R = N*W rows): `rows` holds hidden [R,L,H]
(and cell [R,L,H] for LSTM), feed [R,H] the previous h~ (Luong input feeding), context [R,K]
(Cho-style summary); `source` holds memory [N,S,K] encoder outputs and keys [N,S,A] their
step-independent attention projection (omitted when equal to memory), src_mask [N,S].

Precision: under autocast the recurrent layers may run in float32 outside it
(`recurrent_fp32`); the rest of the model keeps autocast.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from nmt.attention import (
    BahdanauAttention,
    LuongAttention,
    LuongLocalAttention,
    group_by_sentence,
)
from nmt.dropout import Dropout
from nmt.precision import device_caps, recurrent_fp32
from nmt.projection import VocabularyProjection

if TYPE_CHECKING:  # one part of a decoder state, dict[str, Tensor]; see nmt/model.py
    from nmt.model import Tensors

Recurrent = Tensor | tuple[Tensor, Tensor]  # torch layout: h [L,B,H] or (h, c)
Sequence = TypeVar("Sequence", Tensor, PackedSequence)  # what an RNN returns: what it was given


def make_rnn(
    cell: str,
    input_size: int,
    hidden_size: int,
    layers: int,
    dropout: float,
    bidirectional: bool = False,
) -> nn.RNNBase:
    """A batch-first stacked RNN (tanh for the plain cell); `dropout` applies between layers."""
    classes: dict[str, Callable[..., nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
    if cell in classes:
        between = dropout if layers > 1 else 0.0
        return classes[cell](
            input_size,
            hidden_size,
            layers,
            batch_first=True,
            dropout=between,
            bidirectional=bidirectional,
        )
    raise ValueError(f"unknown RNN cell {cell!r}")


def run_rnn(
    rnn: nn.RNNBase,
    inputs: Sequence,
    hx: Recurrent | None = None,
    fp32: bool = False,
) -> tuple[Sequence, Recurrent]:
    """Call a fused RNN; with `fp32` (see `recurrent_fp32`) outside autocast, in float32."""
    device_type = inputs.data.device.type
    if fp32 and torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type, enabled=False):
            return rnn(_as_float(inputs), None if hx is None else _as_float(hx))
    return rnn(inputs, hx)


def _call_rnn(
    rnn: nn.RNNBase, inputs: Sequence, hx: Recurrent | None = None
) -> tuple[Sequence, Recurrent]:
    """`run_rnn` with the precision policy of the inputs' device (decided once per device)."""
    device = inputs.data.device
    fp32 = torch.is_autocast_enabled(device.type) and recurrent_fp32(device_caps(device))
    return run_rnn(rnn, inputs, hx, fp32)


def _as_float(
    x: Tensor | PackedSequence | tuple[Tensor, ...],
) -> Tensor | PackedSequence | tuple[Tensor, ...]:
    if isinstance(x, PackedSequence):
        return x._replace(data=x.data.float())
    if isinstance(x, tuple):
        return tuple(t.float() for t in x)
    return x.float()


class RNNEncoder(nn.Module):
    """Embedding -> dropout -> stacked (bi)RNN over the real tokens only -> dropout."""

    def __init__(
        self,
        embedding: nn.Embedding,
        cell: str,
        hidden_size: int,
        layers: int,
        bidirectional: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        self.embedding = embedding
        self.rnn = make_rnn(
            cell, embedding.embedding_dim, hidden_size, layers, dropout, bidirectional
        )
        self.dropout = Dropout(dropout)
        self.directions = 2 if bidirectional else 1

    def forward(self, src: Tensor, src_mask: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        """src [B,S], src_mask [B,S] -> memory [B,S,K] (K = directions*H, 0 at padding) and
        the final states per layer, both directions concatenated: (h [B,L,K],) or (h, c)."""
        emb = self.dropout(self.embedding(src))
        lengths = src_mask.sum(dim=1).clamp(min=1).cpu()
        packed = pack_padded_sequence(emb, lengths, batch_first=True, enforce_sorted=False)
        outputs, final = _call_rnn(self.rnn, packed)
        memory, _ = pad_packed_sequence(outputs, batch_first=True, total_length=src.size(1))
        finals = final if isinstance(final, tuple) else (final,)
        return self.dropout(memory), tuple(self._by_layer(state) for state in finals)

    def _by_layer(self, state: Tensor) -> Tensor:
        """[L*D,B,H] (torch order: layer-major, direction-minor) -> [B,L,D*H]."""
        _, batch, hidden = state.shape
        state = state.view(-1, self.directions, batch, hidden).permute(2, 0, 1, 3)
        return state.reshape(batch, -1, self.directions * hidden)


class Bridge(nn.Module):
    """The decoder's initial state from the encoder's final states.

    Layers are aligned from the top: decoder layer l takes encoder layer L_enc - L_dec + l
    (layer 0 when the decoder is deeper). When the encoder state is wider than the decoder
    (bidirectional: both directions concatenated) each decoder state kind (h, and c for LSTM)
    is its own tanh(W h_enc + b) of the encoder's final *hidden* state; otherwise the states
    are copied unchanged, as in Sutskever et al. The encoder's LSTM cell state is unbounded;
    projecting it saturates the tanh, which cuts the only gradient path from the decoder to
    the encoder of a model without attention.
    """

    def __init__(
        self,
        encoder_layers: int,
        decoder_layers: int,
        in_size: int,
        hidden_size: int,
        kinds: int,
    ) -> None:
        super().__init__()
        offset = encoder_layers - decoder_layers
        self.layer_index = [max(0, offset + layer) for layer in range(decoder_layers)]
        self.proj = None
        if in_size != hidden_size:
            self.proj = nn.ModuleList(nn.Linear(in_size, hidden_size) for _ in range(kinds))

    def forward(self, final: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """(h [B,L_enc,K], c?) -> (h [B,L_dec,H], c?)."""
        states = tuple(state[:, self.layer_index] for state in final)
        if self.proj is None:
            return states
        return tuple(torch.tanh(proj(states[0])) for proj in self.proj)


class OutputLayer(nn.Module):
    """Readout -> dropout -> vocabulary logits (the projection may share the embedding).

    deep=True is the deep output of Bahdanau/Cho: t = tanh(W [inputs]) of the embedding size.
    Otherwise the input is used as is, projected linearly to the embedding size only when
    tying the output to the embedding needs that size.
    """

    def __init__(
        self,
        in_size: int,
        embedding: nn.Embedding,
        vocab_size: int,
        dropout: float,
        deep: bool,
        tie: bool,
    ) -> None:
        super().__init__()
        embed_dim = embedding.embedding_dim
        self.readout: nn.Module = nn.Identity()
        size = in_size
        if deep:
            self.readout = nn.Sequential(nn.Linear(in_size, embed_dim), nn.Tanh())
            size = embed_dim
        elif tie and in_size != embed_dim:
            self.readout = nn.Linear(in_size, embed_dim)
            size = embed_dim
        self.dropout = Dropout(dropout)
        self.proj = VocabularyProjection(size, vocab_size)
        if tie:
            self.proj.weight = embedding.weight

    def forward(self, x: Tensor, logits_dtype: torch.dtype | None = None) -> Tensor:
        """x [...,in] -> logits [...,V] (in `logits_dtype` when decoding, if given)."""
        return self.proj(self.dropout(self.readout(x)), logits_dtype)


def _hidden_state(states: tuple[Tensor, ...]) -> Tensors:
    """Bridge output ([B,L,H] each) -> row entries."""
    return dict(zip(("hidden", "cell"), states))


def _recurrent(rows: Tensors) -> Recurrent:
    """Row entries [B,L,H] -> torch's [L,B,H] layout."""
    hidden = rows["hidden"].transpose(0, 1).contiguous()
    if "cell" in rows:
        return hidden, rows["cell"].transpose(0, 1).contiguous()
    return hidden


def _store(rows: Tensors, hx: Recurrent) -> Tensors:
    """A copy of `rows` with the recurrent state replaced (batch back on dim 0)."""
    new_rows = dict(rows)
    if isinstance(hx, tuple):
        new_rows["hidden"], new_rows["cell"] = hx[0].transpose(0, 1), hx[1].transpose(0, 1)
    else:
        new_rows["hidden"] = hx.transpose(0, 1)
    return new_rows


def _attend_by_sentence(
    attention: nn.Module, query: Tensor, source: Tensors
) -> tuple[Tensor, Tensor]:
    """query [R,T,Q] of R rows over the N sentences' memory -> context [R,T,K], weights [R,T,S]."""
    rows, length, _ = query.shape
    memory = source["memory"]
    grouped = group_by_sentence(query, memory.size(0))
    context, weights = attention(grouped, source.get("keys", memory), memory, source["src_mask"])
    return context.reshape(rows, length, -1), weights.reshape(rows, length, -1)


def _top(hx: Recurrent) -> Tensor:
    """The top layer's hidden state [B,H]."""
    return (hx[0] if isinstance(hx, tuple) else hx)[-1]


class SutskeverDecoder(nn.Module):
    """Decoder without attention. context_size > 0 (Cho et al., 2014): the encoder summary c
    (top layer's final state, both directions) is fed at every step beside the embedding, and
    the deep output reads [h; c; embedding]. Otherwise logits come from the top state alone.
    """

    def __init__(
        self,
        embedding: nn.Embedding,
        cell: str,
        hidden_size: int,
        layers: int,
        dropout: float,
        bridge: Bridge,
        context_size: int,
        output: OutputLayer,
    ) -> None:
        super().__init__()
        self.embedding = embedding
        self.rnn = make_rnn(
            cell, embedding.embedding_dim + context_size, hidden_size, layers, dropout
        )
        self.dropout = Dropout(dropout)
        self.bridge = bridge
        self.context_size = context_size
        self.output = output

    def init_state(
        self, memory: Tensor, final: tuple[Tensor, ...], src_mask: Tensor
    ) -> tuple[Tensors, Tensors]:
        """-> (no source entries: the final state is the only link, rows)."""
        rows = _hidden_state(self.bridge(final))
        if self.context_size > 0:
            rows["context"] = final[0][:, -1]
        return {}, rows

    def _run(
        self, rows: Tensors, tokens: Tensor, logits_dtype: torch.dtype | None = None
    ) -> tuple[Tensor, Tensors]:
        """tokens [B,T] -> logits [B,T,V]; the whole sequence is one fused RNN call."""
        emb = self.dropout(self.embedding(tokens))
        inputs = emb
        if self.context_size > 0:
            context = rows["context"].unsqueeze(1).expand(-1, tokens.size(1), -1)
            inputs = torch.cat((emb, context), dim=-1)
        outputs, hx = _call_rnn(self.rnn, inputs, _recurrent(rows))
        if self.context_size > 0:
            outputs = torch.cat((outputs, context, emb), dim=-1)
        return self.output(outputs, logits_dtype), _store(rows, hx)

    def forward(
        self, source: Tensors, rows: Tensors, tgt_in: Tensor, with_attention: bool
    ) -> tuple[Tensor, None]:
        """tgt_in [B,T] -> logits [B,T,V], None (no attention to report)."""
        return self._run(rows, tgt_in)[0], None

    def step(
        self,
        source: Tensors,
        rows: Tensors,
        prev_tokens: Tensor,
        with_attention: bool,
        logits_dtype: torch.dtype | None = None,
    ) -> tuple[Tensor, None, Tensors]:
        """prev_tokens [B] -> logits [B,V], None, new rows."""
        logits, new_rows = self._run(rows, prev_tokens.unsqueeze(1), logits_dtype)
        return logits.squeeze(1), None, new_rows


class BahdanauDecoder(nn.Module):
    """Bahdanau et al. (2015): c_i = attention(s_{i-1}, memory); s_i = RNN([E y_{i-1}; c_i],
    s_{i-1}); logits from the deep output tanh(W [s_i; c_i; E y_{i-1}])."""

    def __init__(
        self,
        embedding: nn.Embedding,
        attention: BahdanauAttention,
        cell: str,
        hidden_size: int,
        layers: int,
        memory_size: int,
        dropout: float,
        bridge: Bridge,
        output: OutputLayer,
    ) -> None:
        super().__init__()
        self.embedding = embedding
        self.attention = attention
        self.rnn = make_rnn(
            cell, embedding.embedding_dim + memory_size, hidden_size, layers, dropout
        )
        self.dropout = Dropout(dropout)
        self.bridge = bridge
        self.output = output

    def init_state(
        self, memory: Tensor, final: tuple[Tensor, ...], src_mask: Tensor
    ) -> tuple[Tensors, Tensors]:
        source = dict(memory=memory, keys=self.attention.project_keys(memory), src_mask=src_mask)
        return source, _hidden_state(self.bridge(final))

    def _recur(
        self, source: Tensors, hx: Recurrent, emb: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Recurrent]:
        """emb [B,1,E] -> new top state [B,1,H], context [B,1,K], weights [B,1,S], hx."""
        query = _top(hx).unsqueeze(1)  # s_{i-1}: attention comes before the step
        context, weights = _attend_by_sentence(self.attention, query, source)
        outputs, hx = _call_rnn(self.rnn, torch.cat((emb, context.to(emb.dtype)), dim=-1), hx)
        return outputs, context, weights, hx

    def forward(
        self, source: Tensors, rows: Tensors, tgt_in: Tensor, with_attention: bool
    ) -> tuple[Tensor, Tensor | None]:
        """tgt_in [B,T] -> logits [B,T,V], attention [B,T,S] or None."""
        emb = self.dropout(self.embedding(tgt_in))
        hx = _recurrent(rows)
        tops, contexts, weights = [], [], []
        for t in range(tgt_in.size(1)):
            top, context, weight, hx = self._recur(source, hx, emb[:, t : t + 1])
            tops.append(top)
            contexts.append(context)
            weights.append(weight)
        # The readout does not feed back, so it runs once for all steps.
        readout = torch.cat((torch.cat(tops, 1), torch.cat(contexts, 1).to(emb.dtype), emb), -1)
        return self.output(readout), torch.cat(weights, 1) if with_attention else None

    def step(
        self,
        source: Tensors,
        rows: Tensors,
        prev_tokens: Tensor,
        with_attention: bool,
        logits_dtype: torch.dtype | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensors]:
        """prev_tokens [B] -> logits [B,V], attention [B,S] or None, new rows."""
        emb = self.dropout(self.embedding(prev_tokens.unsqueeze(1)))
        top, context, weights, hx = self._recur(source, _recurrent(rows), emb)
        readout = torch.cat((top, context.to(emb.dtype), emb), dim=-1)
        logits = self.output(readout, logits_dtype).squeeze(1)
        return logits, weights.squeeze(1) if with_attention else None, _store(rows, hx)


class LuongDecoder(nn.Module):
    """Luong et al. (2015): h_t = RNN(input, h_{t-1}); c_t = attention(h_t, memory);
    h~_t = tanh(W_c [c_t; h_t]); logits from h~_t. With input feeding the input is
    [E y_{t-1}; h~_{t-1}], which forces a loop over steps; without it the recurrence and then
    the attention run for all steps at once."""

    def __init__(
        self,
        embedding: nn.Embedding,
        attention: LuongAttention | LuongLocalAttention,
        cell: str,
        hidden_size: int,
        layers: int,
        memory_size: int,
        dropout: float,
        input_feeding: bool,
        bridge: Bridge,
        output: OutputLayer,
    ) -> None:
        super().__init__()
        self.embedding = embedding
        self.attention = attention
        feed_size = hidden_size if input_feeding else 0
        self.rnn = make_rnn(cell, embedding.embedding_dim + feed_size, hidden_size, layers, dropout)
        self.combine = nn.Linear(memory_size + hidden_size, hidden_size, bias=False)  # W_c
        self.dropout = Dropout(dropout)
        self.input_feeding = input_feeding
        self.hidden_size = hidden_size
        self.bridge = bridge
        self.output = output

    def init_state(
        self, memory: Tensor, final: tuple[Tensor, ...], src_mask: Tensor
    ) -> tuple[Tensors, Tensors]:
        source = dict(memory=memory, src_mask=src_mask)
        keys = self.attention.project_keys(memory)
        if keys is not memory:
            source["keys"] = keys
        rows = _hidden_state(self.bridge(final))
        if self.input_feeding:
            rows["feed"] = memory.new_zeros(memory.size(0), self.hidden_size)
        return source, rows

    def _attend(self, source: Tensors, top: Tensor) -> tuple[Tensor, Tensor]:
        """top [B,T,H] -> h~ [B,T,H], weights [B,T,S]."""
        context, weights = _attend_by_sentence(self.attention, top, source)
        return torch.tanh(self.combine(torch.cat((context.to(top.dtype), top), -1))), weights

    def _recur(
        self, source: Tensors, hx: Recurrent, emb: Tensor, feed: Tensor
    ) -> tuple[Tensor, Tensor, Recurrent]:
        """One input-fed step: emb [B,1,E], feed [B,1,H] -> h~ [B,1,H], weights [B,1,S], hx."""
        top, hx = _call_rnn(self.rnn, torch.cat((emb, feed.to(emb.dtype)), dim=-1), hx)
        h_tilde, weights = self._attend(source, top)
        return h_tilde, weights, hx

    def forward(
        self, source: Tensors, rows: Tensors, tgt_in: Tensor, with_attention: bool
    ) -> tuple[Tensor, Tensor | None]:
        """tgt_in [B,T] -> logits [B,T,V], attention [B,T,S] or None."""
        emb = self.dropout(self.embedding(tgt_in))
        hx = _recurrent(rows)
        if not self.input_feeding:
            top, _ = _call_rnn(self.rnn, emb, hx)
            h_tilde, weights = self._attend(source, top)
        else:
            feed = rows["feed"].unsqueeze(1)
            steps, all_weights = [], []
            for t in range(tgt_in.size(1)):
                feed, weight, hx = self._recur(source, hx, emb[:, t : t + 1], feed)
                steps.append(feed)
                all_weights.append(weight)
            h_tilde, weights = torch.cat(steps, 1), torch.cat(all_weights, 1)
        return self.output(h_tilde), weights if with_attention else None

    def step(
        self,
        source: Tensors,
        rows: Tensors,
        prev_tokens: Tensor,
        with_attention: bool,
        logits_dtype: torch.dtype | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensors]:
        """prev_tokens [B] -> logits [B,V], attention [B,S] or None, new rows."""
        emb = self.dropout(self.embedding(prev_tokens.unsqueeze(1)))
        hx = _recurrent(rows)
        if self.input_feeding:
            h_tilde, weights, hx = self._recur(source, hx, emb, rows["feed"].unsqueeze(1))
        else:
            top, hx = _call_rnn(self.rnn, emb, hx)
            h_tilde, weights = self._attend(source, top)
        new_rows = _store(rows, hx)
        if self.input_feeding:
            new_rows["feed"] = h_tilde.squeeze(1)
        logits = self.output(h_tilde, logits_dtype).squeeze(1)
        return logits, weights.squeeze(1) if with_attention else None, new_rows
