"""Transformer specifics: causal and sliding-window masks, positions, the cache, alignment,
and with linear attention the recurrent decoding state, float32 sums and alignments."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from nmt.attention import MultiHeadAttention
from nmt.config import ModelConfig
from nmt.linear_attention import CHUNK
from nmt.model import build_model
from nmt.specials import BOS_ID
from nmt.transformer import LearnedPositions, SinusoidalPositions

VOCAB = 20
TINY = ModelConfig(
    arch="transformer",
    embed_dim=16,
    encoder_layers=2,
    decoder_layers=2,
    heads=2,
    ffn_size=32,
    dropout=0.0,
    attention_dropout=0.0,
    max_positions=32,
)


def make(**overrides):
    torch.manual_seed(0)
    return build_model(replace(TINY, **overrides), VOCAB, VOCAB, joint_vocab=True).eval()


def tokens(seed: int, shape: tuple[int, int]) -> torch.Tensor:
    return torch.randint(4, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_causal_mask_future_tokens_change_no_earlier_logit(norm: str) -> None:
    model = make(norm=norm)
    src = tokens(0, (2, 6))
    src_mask = torch.ones_like(src, dtype=torch.bool)
    tgt = tokens(1, (2, 7))
    changed = tgt.clone()
    changed[:, 4] = (tgt[:, 4] + 1 - 4) % (VOCAB - 4) + 4
    with torch.no_grad():
        before, _ = model(src, src_mask, tgt)
        after, _ = model(src, src_mask, changed)
    torch.testing.assert_close(after[:, :4], before[:, :4], atol=0, rtol=0)
    assert not torch.allclose(after[:, 4:], before[:, 4:])


def test_encoder_sliding_window_limits_what_each_position_sees() -> None:
    window = 1
    model = make(encoder_layers=1, self_attention_window=window)
    src = tokens(2, (1, 9))
    src_mask = torch.ones_like(src, dtype=torch.bool)
    changed = src.clone()
    changed[0, 4] = 4 if src[0, 4] != 4 else 5
    with torch.no_grad():
        before, _ = model.encoder(src, src_mask)
        after, _ = model.encoder(changed, src_mask)
    moved = (after - before).abs().amax(-1)[0] > 1e-6
    assert moved.tolist() == [abs(i - 4) <= window for i in range(9)]


def test_decoder_sliding_window_is_causal_and_local() -> None:
    window = 2
    model = make(decoder_layers=1, self_attention_window=window)
    src = tokens(3, (1, 5))
    src_mask = torch.ones_like(src, dtype=torch.bool)
    tgt = tokens(4, (1, 9))
    changed = tgt.clone()
    changed[0, 3] = 4 if tgt[0, 3] != 4 else 5
    with torch.no_grad():
        before, _ = model(src, src_mask, tgt)
        after, _ = model(src, src_mask, changed)
    moved = (after - before).abs().amax(-1)[0] > 1e-6
    assert moved.tolist() == [3 <= i <= 3 + window for i in range(9)]


def test_sinusoidal_positions_follow_the_paper() -> None:
    table = SinusoidalPositions(8)(start=0, length=50)
    pos, i = 37, 2
    angle = pos / 10000 ** (2 * i / 8)
    assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
    assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)
    torch.testing.assert_close(SinusoidalPositions(8)(start=37, length=1), table[37:38])


def test_learned_positions_refuse_positions_beyond_the_table() -> None:
    positions = LearnedPositions(4, 8)
    assert positions(0, 4).shape == (4, 8)
    with pytest.raises(ValueError, match="max_positions"):
        positions(2, 3)


def test_cache_grows_one_position_per_step_and_cross_keys_are_reused() -> None:
    model = make()
    src = tokens(5, (3, 6))
    src_mask = torch.ones_like(src, dtype=torch.bool)
    with torch.no_grad():
        state = model.encode(src, src_mask)
        cross = state.source["cross_k.0"]
        assert cross.shape == (3, 2, 6, 8)  # [B, heads, S, dh]
        for step in range(1, 4):
            _, _, state = model.decode_step(state, torch.full((3,), BOS_ID))
            assert state.rows["self_k.1"].shape == (3, 2, step, 8)
        assert state.source["cross_k.0"] is cross


def test_alignment_is_the_chosen_layers_head_average() -> None:
    model = make(decoder_layers=3, alignment_layer=0)
    src = tokens(6, (2, 5))
    src_mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    tgt = tokens(7, (2, 4))
    with torch.no_grad():
        _, attention = model(src, src_mask, tgt, with_attention=True)
        # Recompute layer 0's cross-attention by hand.
        memory, _ = model.encoder(src, src_mask)
        layer = model.decoder.layers[0]
        x = model.decoder.embed(tgt)
        h = layer.self_norm(x)
        q, k, v = layer.self_attn.project_qkv(h)
        a, _ = layer.self_attn.attend(q, k, v, is_causal=True)
        x = x + a
        q = layer.cross_attn.project_q(layer.cross_norm(x))
        k, _ = layer.cross_attn.project_kv(memory)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(8)
        scores = scores.masked_fill(~src_mask[:, None, None, :], float("-inf"))
    torch.testing.assert_close(attention, scores.softmax(-1).mean(1), atol=1e-6, rtol=1e-5)


def test_pre_norm_has_final_layer_norms_and_post_norm_none() -> None:
    pre, post = make(norm="pre"), make(norm="post")
    assert isinstance(pre.encoder.final_norm, torch.nn.LayerNorm)
    assert isinstance(pre.decoder.final_norm, torch.nn.LayerNorm)
    assert isinstance(post.encoder.final_norm, torch.nn.Identity)
    assert isinstance(post.decoder.final_norm, torch.nn.Identity)


def test_embeddings_scaled_by_sqrt_d() -> None:
    model = make()
    ids = torch.tensor([[5, 6]])
    expected = model.decoder.embed.embedding(ids) * 4.0 + SinusoidalPositions(16)(0, 2)
    torch.testing.assert_close(model.decoder.embed(ids), expected)


def test_learned_positions_limit_target_length() -> None:
    model = make(positions="learned", max_positions=3)
    src = tokens(8, (1, 3))
    state = model.encode(src, torch.ones_like(src, dtype=torch.bool))
    for _ in range(3):
        _, _, state = model.decode_step(state, torch.tensor([BOS_ID]))
    with pytest.raises(ValueError, match="max_positions"):
        model.decode_step(state, torch.tensor([BOS_ID]))


def test_local_window_encoder_has_no_fully_masked_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Padding far past a short sentence: every query row may attend somewhere (some CUDA
    kernels give NaN otherwise), outputs are finite, and the sentence's own are unchanged."""
    model = make(self_attention_window=1)
    short = tokens(9, (1, 2))
    padded = torch.cat([short, torch.zeros(1, 8, dtype=torch.long)], dim=1)
    masks = []
    attend = MultiHeadAttention.attend

    def recording(self, q, k, v, mask=None, is_causal=False, need_weights=False):
        masks.append(mask)
        return attend(self, q, k, v, mask, is_causal, need_weights)

    monkeypatch.setattr(MultiHeadAttention, "attend", recording)
    with torch.no_grad():
        memory, _ = model.encoder(padded, padded != 0)
    monkeypatch.undo()
    with torch.no_grad():
        alone, _ = model.encoder(short, torch.ones_like(short, dtype=torch.bool))
    assert masks and all(mask.expand(1, 1, 10, 10).any(-1).all() for mask in masks)
    assert torch.isfinite(memory).all()
    torch.testing.assert_close(memory[:, :2], alone, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- linear attention


def test_linear_decoding_state_is_fixed_size_and_matches_a_long_forward_pass() -> None:
    """Several chunks of prefix sums in the forward pass against the step recurrence; the
    state of every layer keeps its size however long the output gets."""
    model = make(self_attention="linear", max_positions=256)
    src = tokens(10, (2, 7))
    src_mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    tgt = tokens(11, (2, 2 * CHUNK + 9))
    with torch.no_grad():
        logits, _ = model(src, src_mask, tgt)
        state = model.encode(src, src_mask)
        sizes = {k: v.shape for k, v in state.rows.items() if k != "position"}
        assert set(sizes) == {f"self_{n}.{i}" for n in ("kv", "ksum") for i in range(2)}
        steps = []
        for t in range(tgt.size(1)):
            log_probs, _, state = model.decode_step(state, tgt[:, t])
            steps.append(log_probs)
            assert {k: v.shape for k, v in state.rows.items() if k != "position"} == sizes
        assert state.rows["position"].shape == (2, tgt.size(1), 0)
    expected = torch.log_softmax(logits.float(), -1)
    torch.testing.assert_close(torch.stack(steps, 1), expected, atol=1e-4, rtol=1e-4)


def test_linear_sums_stay_float32_under_bf16_autocast() -> None:
    model = make(self_attention="linear", cross_attention="linear")
    src = tokens(12, (2, 6))
    src_mask = torch.ones_like(src, dtype=torch.bool)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        state = model.encode(src, src_mask)
        for _ in range(3):
            log_probs, attention, state = model.decode_step(state, torch.full((2,), BOS_ID))
    assert state.rows["self_kv.0"].dtype == torch.float32
    assert state.rows["self_ksum.1"].dtype == torch.float32
    assert torch.isfinite(log_probs).all() and attention is not None
    torch.testing.assert_close(attention.sum(-1), torch.ones(2))


def test_linear_cross_attention_alignment_is_the_normalised_kernel() -> None:
    model = make(self_attention="linear", cross_attention="linear", decoder_layers=1)
    src = tokens(13, (2, 5))
    src_mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    tgt = tokens(14, (2, 4))
    with torch.no_grad():
        _, attention = model(src, src_mask, tgt, with_attention=True)
        memory, _ = model.encoder(src, src_mask)
        layer = model.decoder.layers[0]
        x = model.decoder.embed(tgt)
        a, _ = layer.self_attn.attend(
            *layer.self_attn.project_qkv(layer.self_norm(x)), is_causal=True
        )
        x = x + a
        q = layer.cross_attn.project_q(layer.cross_norm(x))
        k, _ = layer.cross_attn.project_kv(memory)
        phi_q = torch.nn.functional.elu(q) + 1
        phi_k = (torch.nn.functional.elu(k) + 1) * src_mask[:, None, :, None]
        scores = phi_q @ phi_k.transpose(-1, -2)
        weights = scores / (scores.sum(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(attention, weights.mean(1), atol=1e-6, rtol=1e-5)
