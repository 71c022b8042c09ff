"""Greedy and beam search on real tiny models of every architecture."""

from __future__ import annotations

import pytest
import torch
from archs import ARCHS, tiny_config
from torch import nn

from nmt.model import build_model
from nmt.search import beam_search, gnmt_penalty, greedy_search, max_output_lengths
from nmt.specials import BOS_ID, EOS_ID, PAD_ID

VOCAB = 40
LENGTHS = [11, 3, 6, 1, 8, 2, 9]


def tiny_model(
    name: str, eos_rate: float = 0.12, eos_bias: float | None = None, seed: int = 0
) -> nn.Module:
    """A real tiny model of architecture `name` in eval mode (fp32) with a shifted EOS logit.

    Untrained models hardly ever end, or (with near-uniform logits) end everywhere at once, so
    a forward hook on the vocabulary projection adds a bias to the EOS logit: by default one
    that makes EOS the best token at about `eos_rate` of teacher-forced positions, so
    sentences finish at different steps (pruning finished sentences gets exercised);
    `eos_bias=-1e9` makes EOS impossible.
    """
    torch.manual_seed(seed)
    config = tiny_config(name, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    model = build_model(config, VOCAB, VOCAB).eval()
    output = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == VOCAB][
        -1
    ]
    bias = {"eos": 0.0}

    def shift_eos(module: nn.Module, inputs: tuple, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.clone()
        logits[..., EOS_ID] += bias["eos"]
        return logits

    output.register_forward_hook(shift_eos)
    bias["eos"] = _eos_gap_quantile(model, eos_rate) if eos_bias is None else eos_bias
    return model


def _eos_gap_quantile(model: nn.Module, rate: float) -> float:
    """How much EOS must gain to be the argmax at `rate` of teacher-forced positions."""
    src, mask = source_batch(seed=7)
    gen = torch.Generator().manual_seed(8)
    tgt_in = torch.randint(4, VOCAB, (src.size(0), 12), generator=gen)
    tgt_in[:, 0] = BOS_ID
    with torch.no_grad():
        logits, _ = model(src, mask, tgt_in)
    others = logits.float().clone()
    others[..., EOS_ID] = float("-inf")
    gap = others.max(-1).values - logits[..., EOS_ID].float()
    return float(torch.quantile(gap.flatten(), rate))


def source_batch(lengths: list[int] = LENGTHS, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded sources ending in EOS: src, src_mask [B, S]."""
    gen = torch.Generator().manual_seed(seed)
    src = torch.full((len(lengths), max(lengths)), PAD_ID, dtype=torch.long)
    for i, n in enumerate(lengths):
        src[i, : n - 1] = torch.randint(4, VOCAB, (n - 1,), generator=gen)
        src[i, n - 1] = EOS_ID
    return src, src != PAD_ID


def beam(model: nn.Module, src: torch.Tensor, mask: torch.Tensor, k: int, n_best: int = 1, **extra):
    return beam_search(
        model, src, mask, k, n_best=n_best, max_len_a=1.5, max_len_b=4, with_attention=True, **extra
    )


@pytest.mark.parametrize("name", ["gru-bahdanau", "transformer-pre", "lstm-none"])
def test_beam_size_one_equals_greedy(name: str) -> None:
    model = tiny_model(name)
    src, mask = source_batch()
    greedy = greedy_search(model, src, mask, 1.5, 4, with_attention=True)
    beamed = beam(model, src, mask, 1)
    for g, b in zip(greedy, beamed):
        assert g[0].tokens == b[0].tokens
        assert g[0].log_prob == pytest.approx(b[0].log_prob, abs=1e-5)
        assert g[0].score == pytest.approx(b[0].score, abs=1e-5)
    assert len({len(g[0].tokens) for g in greedy}) > 1, "outputs should end at different steps"


@pytest.mark.parametrize("name", list(ARCHS))
def test_batch_invariance(name: str) -> None:
    """A sentence gets the same n-best list alone, in a batch, and at another batch position."""
    model = tiny_model(name)
    src, mask = source_batch()
    batched = beam(model, src, mask, 3, n_best=3)
    flipped = beam(model, src.flip(0), mask.flip(0), 3, n_best=3)[::-1]
    for i, n in enumerate(LENGTHS):
        alone = beam(model, src[i : i + 1, :n], mask[i : i + 1, :n], 3, n_best=3)[0]
        for other in (batched[i], flipped[i]):
            assert [h.tokens for h in other] == [h.tokens for h in alone]
            assert [h.score for h in other] == pytest.approx([h.score for h in alone], abs=1e-4)
            if alone[0].attention is not None:
                assert torch.allclose(other[0].attention, alone[0].attention, atol=1e-5)
    greedy = greedy_search(model, src, mask, 1.5, 4)
    for i, n in enumerate(LENGTHS):
        alone = greedy_search(model, src[i : i + 1, :n], mask[i : i + 1, :n], 1.5, 4)[0]
        assert greedy[i][0].tokens == alone[0].tokens


@pytest.mark.parametrize("name", ["luong-general-feed", "transformer-pre"])
def test_beam_scores_sorted_nbest_distinct_and_consistent(name: str) -> None:
    model = tiny_model(name)
    src, mask = source_batch()
    alpha = 0.6
    results = beam(model, src, mask, 4, n_best=4, length_penalty=alpha)
    for hyps in results:
        assert len(hyps) == 4
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in hyps}) == len(hyps)
        for h in hyps:
            assert h.score == pytest.approx(h.log_prob / gnmt_penalty(len(h.tokens) + 1, alpha))
            assert not {PAD_ID, BOS_ID, EOS_ID} & set(h.tokens)


def test_log_prob_matches_teacher_forced_model() -> None:
    """The search's log-probability of its output equals the model's forward() scoring."""
    model = tiny_model("transformer-pre")
    src, mask = source_batch()
    hyps = beam(model, src, mask, 3)
    for i, n in enumerate(LENGTHS):
        tokens = hyps[i][0].tokens
        tgt_in = torch.tensor([[BOS_ID] + tokens])
        tgt_out = torch.tensor([tokens + [EOS_ID]])
        with torch.no_grad():
            logits, _ = model(src[i : i + 1, :n], mask[i : i + 1, :n], tgt_in)
        log_probs = torch.log_softmax(logits.float(), -1).gather(-1, tgt_out.unsqueeze(-1)).sum()
        assert hyps[i][0].log_prob == pytest.approx(float(log_probs), abs=1e-3)


@pytest.mark.parametrize("name", ["luong-local-feed", "transformer-pre"])
def test_stops_at_max_length_when_model_never_ends(name: str) -> None:
    model = tiny_model(name, eos_bias=-1e9)
    src, mask = source_batch()
    limits = max_output_lengths(mask, 1.5, 4).tolist()
    for results in (beam(model, src, mask, 3, n_best=2), greedy_search(model, src, mask, 1.5, 4)):
        for hyps, limit in zip(results, limits):
            assert all(len(h.tokens) == limit for h in hyps)


def test_min_length_and_attention_shapes() -> None:
    model = tiny_model("gru-bahdanau", eos_bias=1e3)  # would end at once if allowed
    src, mask = source_batch()
    for results in (
        beam(model, src, mask, 2, min_len=3),
        greedy_search(model, src, mask, 1.5, 4, 3, True),
    ):
        for hyps, n in zip(results, LENGTHS):
            h = hyps[0]
            assert len(h.tokens) >= 3
            assert h.attention.shape == (len(h.tokens) + 1, n)
            assert torch.allclose(h.attention.sum(1), torch.ones(len(h.tokens) + 1), atol=1e-5)


def test_model_without_attention_gives_none() -> None:
    model = tiny_model("lstm-none")
    src, mask = source_batch()
    assert all(h[0].attention is None for h in beam(model, src, mask, 2))
    assert all(
        h[0].attention is None for h in greedy_search(model, src, mask, 1.5, 4, with_attention=True)
    )


def test_n_best_larger_than_beam_is_rejected() -> None:
    model = tiny_model("transformer-pre")
    src, mask = source_batch()
    with pytest.raises(ValueError, match="n_best"):
        beam_search(model, src, mask, 2, n_best=3)
