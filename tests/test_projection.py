"""VocabularyProjection: bf16 decoding path, weight-change refresh, training untouched."""

import torch

from nmt.projection import VocabularyProjection


def _projection() -> VocabularyProjection:
    torch.manual_seed(0)
    return VocabularyProjection(16, 50, bias=True).eval()


def test_decoding_dtype_gives_bf16_logits_close_to_fp32() -> None:
    layer, x = _projection(), torch.randn(7, 16)
    with torch.inference_mode():
        exact = layer(x)
        fast = layer(x, torch.bfloat16)
        again = layer(x)
    assert exact.dtype == again.dtype == torch.float32 and fast.dtype == torch.bfloat16
    torch.testing.assert_close(fast.float(), exact, atol=0.05, rtol=0.02)
    assert not torch.equal(fast.float(), exact)  # really the low-precision path
    assert torch.equal(again, exact)  # no switch left behind


def test_low_precision_copy_follows_weight_updates() -> None:
    layer, x = _projection(), torch.randn(3, 16)
    with torch.inference_mode():
        before = layer(x, torch.bfloat16)
    with torch.no_grad():
        layer.weight.mul_(2.0)  # in place, like an optimiser step
    with torch.inference_mode():
        after = layer(x, torch.bfloat16)
    torch.testing.assert_close(
        after.float(),
        2 * before.float() - layer.bias.to(torch.bfloat16).float(),
        atol=0.1,
        rtol=0.02,
    )


def test_training_and_gradients_ignore_the_decoding_dtype() -> None:
    layer, x = _projection(), torch.randn(4, 16)
    out = layer.train()(x, torch.bfloat16)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert layer.weight.grad is not None
    assert layer.eval()(x, torch.bfloat16).dtype == torch.float32  # grad enabled: exact path
    assert set(layer.state_dict()) == {"weight", "bias"}
