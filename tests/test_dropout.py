"""Dropout: the right keep rate and scale, identity in eval mode, gradients via survivors only."""

from __future__ import annotations

import pytest
import torch

from nmt.dropout import Dropout


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_keeps_one_minus_p_and_preserves_the_mean(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    layer = Dropout(0.3).train()
    x = torch.ones(200_000, dtype=dtype, requires_grad=True)
    y = layer(x)
    kept = y != 0
    assert y.dtype == dtype
    assert kept.float().mean().item() == pytest.approx(0.7, abs=0.01)
    survivors = y.detach()[kept].float()
    torch.testing.assert_close(survivors, torch.full_like(survivors, 1 / 0.7), rtol=1e-2, atol=0)
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())  # d(x * mask / (1-p)) / dx = mask / (1-p)


def test_dropout_is_identity_in_eval_mode_and_at_zero() -> None:
    x = torch.randn(4, 5)
    assert torch.equal(Dropout(0.5).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.5)
