"""The training loss and the learning-rate schedules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nmt.config import TrainConfig
from nmt.optim import label_smoothed_nll, lr_factor
from nmt.specials import PAD_ID


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_smoothed_loss_and_gradient_match_cross_entropy(smoothing: float, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    logits = (torch.randn(3, 700, 50) * 3).to(dtype)  # > one chunk of rows
    target = torch.randint(1, 50, (3, 700))
    target[:, -40:] = PAD_ID
    ours = logits.clone().requires_grad_()
    loss, nll = label_smoothed_nll(ours, target, smoothing, scale=0.5)
    loss.backward()
    ref = logits.float().clone().requires_grad_()
    ref_loss = F.cross_entropy(ref.view(-1, 50), target.view(-1), ignore_index=PAD_ID,
                               label_smoothing=smoothing, reduction="sum")
    (ref_loss * 0.5).backward()
    ref_nll = F.cross_entropy(ref.detach().view(-1, 50), target.view(-1), ignore_index=PAD_ID, reduction="sum")
    torch.testing.assert_close(loss, 0.5 * ref_loss, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(nll, ref_nll, rtol=1e-5, atol=1e-3)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(ours.grad.float(), ref.grad, rtol=tol, atol=tol)
    assert ours.grad.dtype == dtype
    assert torch.all(ours.grad[target == PAD_ID] == 0)


def test_smoothed_loss_scales_its_gradient_and_needs_no_grad_for_validation() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 300, 40)
    target = torch.randint(1, 40, (2, 300))
    scaled = logits.clone().requires_grad_()
    loss, _ = label_smoothed_nll(scaled, target, 0.1, scale=0.25)
    (loss * 8.0).backward()  # a loss scaler's factor on top of the normalisation
    plain = logits.clone().requires_grad_()
    loss1, _ = label_smoothed_nll(plain, target, 0.1)
    loss1.backward()
    torch.testing.assert_close(scaled.grad, 2.0 * plain.grad)
    with torch.no_grad():
        no_grad_loss, _ = label_smoothed_nll(logits, target, 0.1)
    torch.testing.assert_close(no_grad_loss, loss1.detach())


def test_schedules_warm_up_then_decay() -> None:
    inv = TrainConfig(schedule="inverse_sqrt", warmup_steps=100)
    assert lr_factor(50, inv, 256) == pytest.approx(0.5)
    assert lr_factor(100, inv, 256) == pytest.approx(1.0)
    assert lr_factor(400, inv, 256) == pytest.approx(0.5)
    cos = TrainConfig(schedule="cosine", warmup_steps=10, max_steps=110, lr=1e-3, min_lr=1e-5)
    assert lr_factor(10, cos, 256) == pytest.approx(1.0)
    assert lr_factor(110, cos, 256) == pytest.approx(0.01)
    noam = TrainConfig(schedule="noam", warmup_steps=100)
    peak = lr_factor(100, noam, 256)
    assert lr_factor(50, noam, 256) < peak and lr_factor(200, noam, 256) < peak
    assert lr_factor(500, TrainConfig(schedule="constant", warmup_steps=0), 256) == 1.0
