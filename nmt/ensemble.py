"""Ensembles: several models decoding as one, as in fairseq, Marian and OpenNMT-py.

At every step of the shared search (greedy, beam, n-best) the members' log-probabilities are
averaged, so the ensemble scores a hypothesis by the mean of its members' log-probabilities.
`Ensemble` has the model interface search uses (encode / decode_step / reorder); its state is
the tuple of its members' states, each reordered by its own member, so any mix of
architectures decodes together. Members must share the target vocabulary, and, since the
source is encoded once, the source vocabulary too.

Alignments come from one member (`alignment_member`), or are the mean of the members that
have attention (the others, such as RNNs without attention, have none to give).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nmt.model import DecoderState, Seq2Seq


class EnsembleError(ValueError):
    """Models that cannot decode together; the message says why."""


@dataclass(frozen=True)
class EnsembleState:
    members: tuple[DecoderState, ...]  # in member order


class Ensemble(nn.Module):
    """Members decoding in lockstep over one source batch; see the module docstring."""

    def __init__(self, members: Sequence[Seq2Seq], alignment_member: int | None = None) -> None:
        super().__init__()
        if len(members) < 2:
            raise EnsembleError("an ensemble needs at least two models")
        for name in ("tgt_vocab_size", "src_vocab_size"):
            sizes = [getattr(m, name) for m in members]
            if len(set(sizes)) > 1:
                side = "target" if name.startswith("tgt") else "source"
                raise EnsembleError(
                    f"ensemble members have different {side} vocabulary sizes: {sizes}"
                )
        if alignment_member is not None and not 0 <= alignment_member < len(members):
            raise EnsembleError(
                f"alignment member {alignment_member} is not one of the {len(members)} members"
            )
        self.members = nn.ModuleList(members)
        self.alignment_member = alignment_member
        self.arch = "ensemble"
        self.src_vocab_size = members[0].src_vocab_size
        self.tgt_vocab_size = members[0].tgt_vocab_size
        self.max_source_len = min(m.max_source_len for m in members)
        limits = [m.max_target_len for m in members if m.max_target_len is not None]
        self.max_target_len = min(limits) if limits else None

    def _models(self) -> list[Seq2Seq]:
        return [m for m in self.members if isinstance(m, Seq2Seq)]

    def encode(self, src: Tensor, src_mask: Tensor) -> EnsembleState:
        return EnsembleState(tuple(m.encode(src, src_mask) for m in self._models()))

    def decode_step(
        self,
        state: EnsembleState,
        prev_tokens: Tensor,
        with_attention: bool = True,
        logits_dtype: torch.dtype | None = None,
    ) -> tuple[Tensor, Tensor | None, EnsembleState]:
        """prev_tokens [B] -> mean log-probs [B,V] float32, attention [B,S] or None, state."""
        log_probs, attentions, states = [], [], []
        for member, member_state in zip(self._models(), state.members):
            lp, attention, new_state = member.decode_step(
                member_state, prev_tokens, with_attention, logits_dtype
            )
            log_probs.append(lp)
            attentions.append(attention)
            states.append(new_state)
        mean = torch.stack(log_probs).mean(dim=0)
        return mean, self._alignment(attentions), EnsembleState(tuple(states))

    def _alignment(self, attentions: list[Tensor | None]) -> Tensor | None:
        if self.alignment_member is not None:
            return attentions[self.alignment_member]
        present = [a for a in attentions if a is not None]
        return torch.stack(present).mean(dim=0) if present else None

    def reorder(
        self, state: EnsembleState, rows: Tensor, sentences: Tensor | None = None
    ) -> EnsembleState:
        return EnsembleState(
            tuple(m.reorder(s, rows, sentences) for m, s in zip(self._models(), state.members))
        )
