"""Attention mechanisms; every module returns `(context, weights)`.

- `BahdanauAttention`: additive attention (Bahdanau et al., 2015).
- `LuongAttention`: global attention with dot / general / concat scores (Luong et al., 2015).
- `LuongLocalAttention`: Luong's local-p attention (predicted position, Gaussian window).
- `MultiHeadAttention`: scaled dot-product attention with several heads (Vaswani et al., 2017).

The RNN attentions share one calling convention so a decoder can take any of them:
`keys = attention.project_keys(memory)` once per sentence (the part of the score that depends
only on the encoder states), then `attention(query, keys, memory, src_mask)` per step, or for
all steps at once when the queries are known in advance.

Masks are bool tensors with True = real token (attend). Scores are masked and soft-maxed in
float32 so that bf16 autocast can neither overflow the mask value nor lose small weights;
padded positions get a weight of exactly 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt.dropout import inverted_dropout

# Finite (not -inf) so that a row without any real token gives uniform weights instead of NaN;
# exp(MASKED - max) underflows to exactly 0 in float32 whenever the row has a real token.
MASKED = -1e30


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last dim in float32, with weight 0 where `mask` is False (broadcast)."""
    return scores.float().masked_fill(~mask, MASKED).softmax(dim=-1)


def group_by_sentence(queries: Tensor, sentences: int) -> Tensor:
    """[R,T,D] queries of R decoder rows -> [N,R*T/N,D], each sentence's rows side by side.

    A decoder state keeps its source part (memory, keys, masks) once per sentence, with a
    sentence's R/N rows (its beams) consecutive, so beams attend to one shared copy instead of
    a copy per beam; see nmt/model.py. With R == N this is the identity.
    """
    return queries.reshape(sentences, -1, queries.size(-1))


def _weighted_sum(weights: Tensor, memory: Tensor) -> Tensor:
    """[B,T,S] x [B,S,K] -> [B,T,K] in the memory's dtype (autocast may still lower it)."""
    return torch.bmm(weights.to(memory.dtype), memory)


class BahdanauAttention(nn.Module):
    """Additive attention: e_ij = v^T tanh(W s_{i-1} + U h_j) (Bahdanau et al., 2015).

    The query is the decoder state *before* the recurrent step. `U h_j` does not depend on the
    step, so it is computed once per sentence by `project_keys`.
    """

    def __init__(self, query_size: int, key_size: int, attention_size: int) -> None:
        super().__init__()
        self.key_proj = nn.Linear(key_size, attention_size, bias=False)
        self.query_proj = nn.Linear(query_size, attention_size)  # one bias for the sum suffices
        self.energy = nn.Linear(attention_size, 1, bias=False)

    def project_keys(self, memory: Tensor) -> Tensor:
        """memory [B,S,K] -> keys [B,S,A]."""
        return self.key_proj(memory)

    def forward(
        self, query: Tensor, keys: Tensor, memory: Tensor, src_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """query [B,T,Q], keys [B,S,A], memory [B,S,K], src_mask [B,S]
        -> context [B,T,K], weights [B,T,S] float32."""
        hidden = torch.tanh(self.query_proj(query).unsqueeze(2) + keys.unsqueeze(1))
        scores = self.energy(hidden).squeeze(-1)
        weights = masked_softmax(scores, src_mask.unsqueeze(1))
        return _weighted_sum(weights, memory), weights


class LuongAttention(nn.Module):
    """Global attention (Luong et al., 2015) with the current decoder state h_t as query.

    score(h_t, h_s) = dot: h_t^T h_s | general: h_t^T W_a h_s | concat: v^T tanh(W_a [h_t; h_s]).
    `dot` needs equal sizes; when the encoder states are wider (a bidirectional encoder gives 2H
    against the decoder's H) they are projected to the query size by a bias-free linear layer,
    which makes `dot` the same function as `general` in that case.
    """

    def __init__(self, query_size: int, key_size: int, score: str) -> None:
        super().__init__()
        if score not in ("dot", "general", "concat"):
            raise ValueError(f"unknown Luong score {score!r}")
        self.score = score
        needs_proj = score != "dot" or key_size != query_size
        self.key_proj = nn.Linear(key_size, query_size, bias=False) if needs_proj else None
        if score == "concat":
            # W_a [h_t; h_s] = W_q h_t + W_k h_s; the h_s half is key_proj (precomputed).
            self.query_proj = nn.Linear(query_size, query_size)
            self.energy = nn.Linear(query_size, 1, bias=False)

    def project_keys(self, memory: Tensor) -> Tensor:
        """memory [B,S,K] -> keys [B,S,Q] (the memory itself for a plain dot score)."""
        return memory if self.key_proj is None else self.key_proj(memory)

    def scores(self, query: Tensor, keys: Tensor) -> Tensor:
        """query [B,T,Q], keys [B,S,Q] -> unnormalised scores [B,T,S]."""
        if self.score == "concat":
            hidden = torch.tanh(self.query_proj(query).unsqueeze(2) + keys.unsqueeze(1))
            return self.energy(hidden).squeeze(-1)
        return torch.bmm(query, keys.transpose(1, 2))

    def forward(
        self, query: Tensor, keys: Tensor, memory: Tensor, src_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """query [B,T,Q], keys [B,S,Q], memory [B,S,K], src_mask [B,S]
        -> context [B,T,K], weights [B,T,S] float32."""
        weights = masked_softmax(self.scores(query, keys), src_mask.unsqueeze(1))
        return _weighted_sum(weights, memory), weights


class LuongLocalAttention(nn.Module):
    """Local-p attention (Luong et al., 2015, section 3.2).

    The aligned position p_t = S_i * sigmoid(v_p^T tanh(W_p h_t)) uses each sentence's real
    length S_i. Scores come from a `LuongAttention` score function; positions outside the
    window [p_t - D, p_t + D] and padding are excluded, and the rest are weighted by the
    Gaussian exp(-(s - p_t)^2 / (2 (D/2)^2)). Unlike the paper, the result is renormalised so
    the weights over real tokens sum to 1 (a proper distribution, like every other attention
    here); this is computed as one softmax of score + log Gaussian over the allowed positions,
    which equals softmax-then-multiply-then-renormalise. The Gaussian keeps p_t differentiable.
    """

    def __init__(self, query_size: int, key_size: int, score: str, window: int) -> None:
        super().__init__()
        if window <= 0:
            raise ValueError(f"local attention needs a positive window, got {window}")
        self.align = LuongAttention(query_size, key_size, score)
        self.position_proj = nn.Linear(query_size, query_size, bias=False)  # W_p
        self.position_energy = nn.Linear(query_size, 1, bias=False)  # v_p
        self.window = window

    def project_keys(self, memory: Tensor) -> Tensor:
        """memory [B,S,K] -> keys [B,S,Q]."""
        return self.align.project_keys(memory)

    def forward(
        self, query: Tensor, keys: Tensor, memory: Tensor, src_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """query [B,T,Q], keys [B,S,Q], memory [B,S,K], src_mask [B,S]
        -> context [B,T,K], weights [B,T,S] float32."""
        lengths = src_mask.sum(dim=-1, keepdim=True).float()  # [B,1]
        gate = self.position_energy(torch.tanh(self.position_proj(query))).squeeze(-1)
        centre = lengths * torch.sigmoid(gate.float())  # p_t [B,T]
        positions = torch.arange(src_mask.size(1), device=query.device, dtype=torch.float32)
        distance = positions.view(1, 1, -1) - centre.unsqueeze(-1)  # [B,T,S]
        sigma = self.window / 2.0
        scores = self.align.scores(query, keys).float() - distance.square() / (2 * sigma**2)
        allowed = src_mask.unsqueeze(1) & (distance.abs() <= self.window)
        weights = masked_softmax(scores, allowed)
        return _weighted_sum(weights, memory), weights


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention (Vaswani et al., 2017).

    Parameters use the layout of `torch.nn.MultiheadAttention` (`in_proj_weight` [3E,E] for
    q, k, v; `out_proj`). The fast path is `F.scaled_dot_product_attention`; only when weights
    are asked for are the scores computed explicitly (float32 softmax) to return them.
    """

    def __init__(self, embed_dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if embed_dim % heads != 0:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by heads {heads}")
        self.embed_dim = embed_dim
        self.heads = heads
        self.head_dim = embed_dim // heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        for block in self.in_proj_weight.data.chunk(3):  # Xavier per q/k/v matrix
            nn.init.xavier_uniform_(block)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def _split(self, x: Tensor) -> Tensor:
        """[B,T,E] -> [B,heads,T,dh]."""
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, self.head_dim).transpose(1, 2)

    def _project(self, x: Tensor, part: slice) -> Tensor:
        return F.linear(x, self.in_proj_weight[part], self.in_proj_bias[part])

    def project_q(self, x: Tensor) -> Tensor:
        """x [B,T,E] -> q [B,heads,T,dh]."""
        return self._split(self._project(x, slice(0, self.embed_dim)))

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [B,S,E] -> k, v [B,heads,S,dh] (one matmul for both)."""
        k, v = self._project(x, slice(self.embed_dim, None)).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Self-attention projections in one matmul: x [B,T,E] -> q, k, v [B,heads,T,dh]."""
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        return self._split(q), self._split(k), self._split(v)

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """q [B,h,T,dh], k/v [B,h,S,dh], mask bool broadcastable to [B,h,T,S] (True = attend)
        -> output [B,T,E], weights [B,T,S] float32 averaged over heads (or None)."""
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            context, weights = self._explicit(q, k, v, mask, is_causal, dropout)
        else:
            context = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal
            )
            weights = None
        batch, _, length, _ = context.shape
        context = context.transpose(1, 2).reshape(batch, length, self.embed_dim)
        return self.out_proj(context), weights

    def _explicit(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None,
        is_causal: bool,
        dropout: float,
    ) -> tuple[Tensor, Tensor]:
        """Attention with its weights: context [B,h,T,dh], weights [B,T,S] (head mean)."""
        scores = torch.matmul(q, k.transpose(-2, -1)).float() / math.sqrt(self.head_dim)
        if is_causal:
            t, s = scores.shape[-2:]
            causal = torch.ones(t, s, dtype=torch.bool, device=q.device).tril()
            mask = causal if mask is None else mask & causal
        probs = scores.softmax(-1) if mask is None else masked_softmax(scores, mask)
        dropped = inverted_dropout(probs, dropout, training=True)
        context = torch.matmul(dropped.to(v.dtype), v)
        return context, probs.mean(dim=1)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        mask: Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """query [B,T,E], key/value [B,S,E] -> output [B,T,E], weights [B,T,S] or None."""
        q = self.project_q(query)
        k = self._split(self._project(key, slice(self.embed_dim, 2 * self.embed_dim)))
        v = self._split(self._project(value, slice(2 * self.embed_dim, None)))
        return self.attend(q, k, v, mask, is_causal, need_weights)
