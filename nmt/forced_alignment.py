"""Forced alignment: how a model aligns a given translation (a human's or another system's).

The target is teacher-forced through the same `decode_step` path search uses, one step per
target piece and a last step for EOS, so its attention is collected exactly as for a
hypothesis and turned into the same `Alignment` (nmt.alignment) as the model's own
translations, with character offsets into both texts. The target's log-probability under
the model comes for free, scored as search scores a hypothesis.

`Translator.align` encodes, checks lengths and sub-batches; this module decodes one batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from nmt.alignment import Alignment
from nmt.search import StepModel, gnmt_penalty
from nmt.specials import BOS_ID, EOS_ID, PAD_ID


@dataclass
class ForcedAlignment:
    source: str
    target: str
    score: float  # length-normalised log-probability of the target (as Translation.score)
    log_prob: float  # sum of the target's token log-probabilities, EOS included
    alignment: Alignment

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (one line of `nmt align --format jsonl`)."""
        return {
            "source": self.source,
            "target": self.target,
            "score": self.score,
            "log_prob": self.log_prob,
            "alignment": self.alignment.to_dict(),
        }


@dataclass
class Forced:
    """One target teacher-forced: its attention [len(tokens) + 1, S_real] (EOS step
    included, as nmt.search.Hypothesis; None when not asked for) and its log-probabilities."""

    attention: Tensor | None
    log_prob: float
    score: float


def teacher_force(
    model: StepModel,
    src_ids: list[list[int]],
    tgt_ids: list[list[int]],
    device: torch.device,
    length_penalty: float,
    with_attention: bool = True,
) -> list[Forced]:
    """Decode each target (pieces, no BOS/EOS) given its source (pieces + EOS), all in one
    batch; a finished row is fed padding until the longest target has ended. Without
    attention only the log-probabilities are kept (scoring; any model)."""
    rows = len(src_ids)
    src = _padded(src_ids, device)
    src_mask = src != PAD_ID
    gold = _padded([ids + [EOS_ID] for ids in tgt_ids], device)  # [B, T+1]
    state = model.encode(src, src_mask)
    prev = torch.full((rows,), BOS_ID, dtype=torch.long, device=device)
    token_log_probs, attentions = [], []
    for step in range(gold.size(1)):
        log_probs, attention, state = model.decode_step(state, prev, with_attention)
        if with_attention:
            if attention is None:
                raise ValueError("this model has no attention: there is nothing to align with")
            attentions.append(attention)
        token_log_probs.append(log_probs.gather(1, gold[:, step : step + 1]).squeeze(1))
        prev = gold[:, step]
    scores = torch.stack(token_log_probs, dim=1).cpu()  # [B, T+1]
    attention = torch.stack(attentions, dim=1).cpu() if attentions else None  # [B, T+1, S]
    out = []
    for row in range(rows):
        steps, src_len = len(tgt_ids[row]) + 1, len(src_ids[row])
        log_prob = float(scores[row, :steps].sum())
        out.append(
            Forced(
                attention=None if attention is None else attention[row, :steps, :src_len],
                log_prob=log_prob,
                score=log_prob / float(gnmt_penalty(steps, length_penalty)),
            )
        )
    return out


def _padded(sequences: list[list[int]], device: torch.device) -> Tensor:
    longest = max(len(ids) for ids in sequences)
    batch = torch.full((len(sequences), longest), PAD_ID, dtype=torch.long)
    for row, ids in enumerate(sequences):
        batch[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return batch.to(device)
