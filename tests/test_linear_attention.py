"""Linear attention: prefix sums against the definition, padded keys, weights."""

from __future__ import annotations

import pytest
import torch

from nmt.linear_attention import CHUNK, LinearAttention, causal_linear_attention


def quadratic_linear_attention(phi_q, phi_k, v, causal: bool):
    """The definition, O(T^2): weights phi(q).phi(k) over the allowed keys, normalised."""
    scores = phi_q @ phi_k.transpose(-1, -2)
    if causal:
        scores = scores.tril()
    return (scores @ v) / (scores.sum(-1, keepdim=True) + 1e-6)


@pytest.mark.parametrize("length", [1, 5, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7])
def test_causal_prefix_sums_equal_the_quadratic_form(length: int) -> None:
    gen = torch.Generator().manual_seed(length)
    phi_q, phi_k, v = (torch.rand(2, 3, length, 4, generator=gen) for _ in range(3))
    got = causal_linear_attention(phi_q, phi_k, v)
    want = quadratic_linear_attention(phi_q, phi_k, v, causal=True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_linear_attention_ignores_padded_keys_and_weights_sum_to_one() -> None:
    torch.manual_seed(0)
    attention = LinearAttention(16, 2).eval()
    q, k, v = (torch.randn(2, 2, 5, 8) for _ in range(3))
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])[:, None, None, :]
    out, weights = attention.attend(q, k, v, mask=mask, need_weights=True)
    garbage_k, garbage_v = k.clone(), v.clone()
    garbage_k[1, :, 3:], garbage_v[1, :, 3:] = 100.0, -100.0  # padded keys and values
    out2, weights2 = attention.attend(q, garbage_k, garbage_v, mask=mask, need_weights=True)
    torch.testing.assert_close(out2, out, atol=0, rtol=0)
    assert weights2 is not None and weights is not None
    assert torch.all(weights[1, :, 3:] == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 5))
    with pytest.raises(ValueError, match="key mask"):
        attention.attend(q, k, v, mask=torch.ones(5, 5, dtype=torch.bool))


def test_summarised_keys_and_values_give_the_same_attention() -> None:
    """Cross-attention reads phi(K)^T [V 1], computed once per sentence, instead of K and V."""
    torch.manual_seed(0)
    attention = LinearAttention(16, 2).eval()
    q, k, v = torch.randn(2, 2, 3, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    src_mask = torch.tensor([[True] * 5, [True] * 2 + [False] * 3])
    want, want_weights = attention.attend(
        q, k, v, mask=src_mask[:, None, None, :], need_weights=True
    )
    phi_k, summary = attention.summarise(k, v, src_mask)
    assert summary.shape == (2, 2, 8, 9) and summary.dtype == torch.float32
    got, got_weights = attention.attend_summary(q, phi_k, summary, need_weights=True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_weights, want_weights, atol=1e-6, rtol=1e-5)
