"""The training loss and the learning-rate schedules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nmt.config import TrainConfig
from nmt.optim import label_smoothed_nll, lr_factor, rdrop_divergence
from nmt.specials import PAD_ID


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_smoothed_loss_and_gradient_match_cross_entropy(
    smoothing: float, dtype: torch.dtype
) -> None:
    torch.manual_seed(0)
    logits = (torch.randn(3, 700, 50) * 3).to(dtype)  # > one chunk of rows
    target = torch.randint(1, 50, (3, 700))
    target[:, -40:] = PAD_ID
    ours = logits.clone().requires_grad_()
    loss, nll = label_smoothed_nll(ours, target, smoothing, scale=0.5)
    loss.backward()
    ref = logits.float().clone().requires_grad_()
    ref_loss = F.cross_entropy(
        ref.view(-1, 50),
        target.view(-1),
        ignore_index=PAD_ID,
        label_smoothing=smoothing,
        reduction="sum",
    )
    (ref_loss * 0.5).backward()
    ref_nll = F.cross_entropy(
        ref.detach().view(-1, 50), target.view(-1), ignore_index=PAD_ID, reduction="sum"
    )
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


@pytest.mark.parametrize("peaked", [False, True])
def test_fp16_logits_with_loss_scale_65536_give_finite_accurate_gradients(peaked: bool) -> None:
    """Mixed precision on GPUs: fp16 logits, GradScaler's initial scale 65536, a 4k-token batch
    and an 8k vocabulary. The gradient must survive fp16 (no underflow of p / tokens before the
    loss scale arrives, no overflow of the scale itself) and match the fp32 reference."""
    torch.manual_seed(0)
    rows, vocab = 4096, 8000
    logits = torch.randn(rows, vocab) * (4.0 if peaked else 0.5)
    target = torch.randint(4, vocab, (rows,))
    target[:96] = PAD_ID
    tokens = int((target != PAD_ID).sum())
    ref = logits.clone().requires_grad_()
    (
        F.cross_entropy(ref, target, ignore_index=PAD_ID, label_smoothing=0.1, reduction="sum")
        / tokens
    ).backward()
    ours = logits.half().requires_grad_()
    loss, _ = label_smoothed_nll(ours, target, 0.1, scale=1.0 / tokens)
    (loss * 65536.0).backward()
    assert ours.grad.dtype == torch.float16 and torch.isfinite(ours.grad).all()
    real = target != PAD_ID
    assert (ours.grad[real] != 0).float().mean() > 0.999  # nothing flushed to zero
    grad = ours.grad.float() / 65536.0
    assert float((grad - ref.grad).norm() / ref.grad.norm()) < 2e-3
    smoothing_part = grad[real].sum(-1)  # the gradient of each row sums to zero over the vocabulary
    assert float(smoothing_part.abs().max()) < 1e-6


def test_unit_grad_skips_the_backward_multiply_only_when_told() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 30, 40, dtype=torch.bfloat16)
    target = torch.randint(1, 40, (2, 30))
    grads = []
    for unit_grad in (False, True):
        x = logits.clone().requires_grad_()
        loss, _ = label_smoothed_nll(x, target, 0.1, scale=0.01, unit_grad=unit_grad)
        loss.backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


def test_scale_may_be_a_tensor() -> None:
    """Under DDP the token count is all-reduced on the device and scales the loss there."""
    torch.manual_seed(0)
    logits = torch.randn(1, 20, 30)
    target = torch.randint(1, 30, (1, 20))
    by_float = logits.clone().requires_grad_()
    by_tensor = logits.clone().requires_grad_()
    loss_f, _ = label_smoothed_nll(by_float, target, 0.1, scale=2.0 / 40.0)
    loss_t, _ = label_smoothed_nll(by_tensor, target, 0.1, scale=2.0 / torch.tensor(40.0))
    loss_f.backward()
    loss_t.backward()
    torch.testing.assert_close(loss_f, loss_t)
    torch.testing.assert_close(by_float.grad, by_tensor.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rdrop_divergence_and_gradient_match_both_kl_directions(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    logits = (torch.randn(4, 150, 30) * 2).to(dtype)  # 300 rows per half: > one chunk
    target = torch.randint(1, 30, (4, 150))
    target[:, -20:] = PAD_ID
    ours = logits.clone().requires_grad_()
    divergence = rdrop_divergence(ours, target, scale=0.25)
    (divergence * 2.0).backward()  # a loss scaler's factor on top of the scale
    ref = logits.float().clone().requires_grad_()
    log_p, log_q = ref.log_softmax(-1).chunk(2)
    keep = target[:2] != PAD_ID
    forward = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)
    backward = F.kl_div(log_p, log_q, log_target=True, reduction="none").sum(-1)
    ref_divergence = 0.25 * ((forward + backward) * keep).sum()
    (ref_divergence * 2.0).backward()
    torch.testing.assert_close(divergence, ref_divergence, rtol=1e-5, atol=1e-4)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(ours.grad.float(), ref.grad, rtol=tol, atol=tol)
    assert ours.grad.dtype == dtype
    assert torch.all(ours.grad[target == PAD_ID] == 0)
    same = torch.randn(2, 5, 30).repeat(2, 1, 1)
    assert rdrop_divergence(same, torch.randint(1, 30, (4, 5))).item() == pytest.approx(0.0)
