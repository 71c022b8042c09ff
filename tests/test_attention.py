"""Attention modules: masking, normalisation, local-p windows, and equality of
MultiHeadAttention with torch.nn.MultiheadAttention."""

from __future__ import annotations

import pytest
import torch

from nmt.attention import (
    BahdanauAttention,
    LuongAttention,
    LuongLocalAttention,
    MultiHeadAttention,
    masked_softmax,
)

B, T, S, Q, K = 3, 4, 6, 8, 12
LENGTHS = torch.tensor([6, 4, 1])


def inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(B, T, Q, generator=gen)
    memory = torch.randn(B, S, K, generator=gen)
    src_mask = torch.arange(S).unsqueeze(0) < LENGTHS.unsqueeze(1)
    return query, memory, src_mask


def rnn_attentions() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "bahdanau": BahdanauAttention(Q, K, 10),
        "luong-dot-projected": LuongAttention(Q, K, "dot"),
        "luong-general": LuongAttention(Q, K, "general"),
        "luong-concat": LuongAttention(Q, K, "concat"),
        "luong-local": LuongLocalAttention(Q, K, "general", window=2),
    }


@pytest.mark.parametrize("name", list(rnn_attentions()))
def test_rnn_attention_is_a_distribution_over_real_tokens(name: str) -> None:
    attention = rnn_attentions()[name]
    query, memory, src_mask = inputs()
    context, weights = attention(query, attention.project_keys(memory), memory, src_mask)
    assert context.shape == (B, T, K) and weights.shape == (B, T, S)
    assert weights.dtype == torch.float32
    assert torch.all(weights.masked_select(~src_mask.unsqueeze(1).expand_as(weights)) == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, T))
    torch.testing.assert_close(context, torch.bmm(weights, memory))


@pytest.mark.parametrize("name", list(rnn_attentions()))
def test_rnn_attention_ignores_what_padding_holds(name: str) -> None:
    attention = rnn_attentions()[name]
    query, memory, src_mask = inputs()
    noisy = memory.masked_fill(~src_mask.unsqueeze(-1), 7.0)
    clean = attention(query, attention.project_keys(memory), memory, src_mask)
    dirty = attention(query, attention.project_keys(noisy), noisy, src_mask)
    torch.testing.assert_close(clean, dirty)


def test_dot_score_without_projection_when_sizes_match() -> None:
    attention = LuongAttention(K, K, "dot")
    assert list(attention.parameters()) == []
    _, memory, src_mask = inputs()
    query = memory[:, :2]  # each token attends most to itself
    _, weights = attention(query, attention.project_keys(memory), memory, src_mask)
    expected = torch.bmm(query, memory.transpose(1, 2)).masked_fill(~src_mask.unsqueeze(1), -1e9)
    torch.testing.assert_close(weights, expected.softmax(-1))


def test_local_attention_stays_inside_the_window_around_p_t() -> None:
    torch.manual_seed(0)
    window = 1
    attention = LuongLocalAttention(Q, K, "dot", window=window)
    query, memory, src_mask = inputs(seed=3)
    _, weights = attention(query, attention.project_keys(memory), memory, src_mask)
    gate = attention.position_energy(torch.tanh(attention.position_proj(query))).squeeze(-1)
    centre = LENGTHS.float().unsqueeze(1) * torch.sigmoid(gate)  # p_t from the REAL length
    positions = torch.arange(S).float()
    outside = (positions.view(1, 1, S) - centre.unsqueeze(-1)).abs() > window
    assert torch.all(weights[outside] == 0)
    assert torch.all(centre <= LENGTHS.float().unsqueeze(1))
    # Within the window, weights are proportional to softmax(score) * Gaussian.
    scores = attention.align.scores(query, attention.project_keys(memory))
    gauss = torch.exp(-((positions.view(1, 1, S) - centre.unsqueeze(-1)) ** 2) / (2 * 0.5**2))
    allowed = ~outside & src_mask.unsqueeze(1)
    raw = scores.exp() * gauss * allowed
    torch.testing.assert_close(weights, raw / raw.sum(-1, keepdim=True))


def test_masked_softmax_in_bf16_keeps_padding_at_zero() -> None:
    scores = torch.tensor([[3.0e4, -2.0e4, 1.0, 5.0]], dtype=torch.bfloat16)
    mask = torch.tensor([[True, True, False, False]])
    weights = masked_softmax(scores, mask)
    assert weights.dtype == torch.float32
    assert torch.isfinite(weights).all() and weights[0, 2:].eq(0).all()
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0))


def _copied_pair(dim: int = 16, heads: int = 4) -> tuple[MultiHeadAttention, torch.nn.Module]:
    torch.manual_seed(0)
    ours = MultiHeadAttention(dim, heads, dropout=0.0)
    reference = torch.nn.MultiheadAttention(dim, heads, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(ours.in_proj_weight)
        reference.in_proj_bias.copy_(ours.in_proj_bias)
        reference.out_proj.weight.copy_(ours.out_proj.weight)
        reference.out_proj.bias.copy_(ours.out_proj.bias)
    return ours.eval(), reference.eval()


@pytest.mark.parametrize("need_weights", [False, True])
def test_multihead_equals_torch_with_padding_mask(need_weights: bool) -> None:
    ours, reference = _copied_pair()
    gen = torch.Generator().manual_seed(1)
    query, memory = torch.randn(B, T, 16, generator=gen), torch.randn(B, S, 16, generator=gen)
    src_mask = torch.arange(S).unsqueeze(0) < LENGTHS.unsqueeze(1)
    out, weights = ours(
        query, memory, memory, mask=src_mask[:, None, None, :], need_weights=need_weights
    )
    want, want_weights = reference(query, memory, memory, key_padding_mask=~src_mask)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    if need_weights:
        torch.testing.assert_close(weights, want_weights, atol=1e-6, rtol=1e-5)
    else:
        assert weights is None


@pytest.mark.parametrize("need_weights", [False, True])
def test_multihead_equals_torch_causal_self_attention(need_weights: bool) -> None:
    ours, reference = _copied_pair()
    x = torch.randn(B, T, 16, generator=torch.Generator().manual_seed(2))
    out, weights = ours(x, x, x, is_causal=True, need_weights=need_weights)
    causal = torch.ones(T, T, dtype=torch.bool).triu(1)  # torch: True = masked
    want, want_weights = reference(x, x, x, attn_mask=causal)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    if need_weights:
        torch.testing.assert_close(weights, want_weights, atol=1e-6, rtol=1e-5)
        assert torch.all(weights.triu(1) == 0)


def test_multihead_fused_projections_agree() -> None:
    ours, _ = _copied_pair()
    x = torch.randn(B, T, 16, generator=torch.Generator().manual_seed(3))
    q, k, v = ours.project_qkv(x)
    torch.testing.assert_close(q, ours.project_q(x))
    torch.testing.assert_close(torch.stack((k, v)), torch.stack(ours.project_kv(x)))
    assert q.shape == (B, 4, T, 4)
