"""Greedy and beam search over the model-agnostic `decode_step` interface.

One implementation serves RNNs and Transformers: a model encodes the source into a decoder
state (opaque here), `decode_step` scores the next token, and `reorder` selects/repeats state
rows. Beam search keeps the `N` still-active sentences times their beams as one batch of
`N*W` rows; sentences whose beams are all finished (or that reached their maximum length) are
dropped from that batch at once, so a long tail of unfinished sentences does not pay for the
whole batch. Which sentences are active, their maximum lengths and finished counts are kept
on the host, so a step waits for the device once (to learn which hypotheses ended).

Conventions:
- max output length of a sentence = floor(max_len_a * src_len + max_len_b) tokens, EOS not
  counted, where src_len counts the real (mask True) source tokens, the source EOS included;
  at that length only EOS is allowed. Before `min_len` tokens EOS is forbidden; PAD and BOS
  are never produced.
- a sentence is done once K hypotheses have ended within the top K candidates of a step
  (the usual early stop: a longer hypothesis could in principle still score better under
  the length penalty) or when it reaches its maximum length.
- scores are GNMT length-normalised: log_prob / ((5 + L) / 6) ** alpha, with L the number
  of generated tokens including the final EOS (alpha = 0: raw log-probability).
- a hypothesis's attention is [T, S_real], T = len(tokens) + 1 (the EOS step included),
  S_real = the sentence's real source tokens; None when the model has no attention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from nmt.specials import BOS_ID, EOS_ID, PAD_ID

State = Any  # the model's decoder state: search only passes it back to the model

# Score given to a forced EOS the model itself rules out, so every sentence ends with a hypothesis.
_FORCED_EOS_FLOOR = -1e30


class StepModel(Protocol):
    """What search needs from a translation model (nmt.model.Seq2Seq)."""

    def encode(self, src: Tensor, src_mask: Tensor) -> State: ...

    def decode_step(
        self,
        state: State,
        prev_tokens: Tensor,
        with_attention: bool = True,
        logits_dtype: torch.dtype | None = None,
    ) -> tuple[Tensor, Tensor | None, State]:
        """-> log-probs [B,V] float32 (a new tensor: search overwrites it), attention, state."""

    def reorder(self, state: State, rows: Tensor, sentences: Tensor | None = None) -> State:
        """rows [N',W']: new row (n, w) continues row rows[n, w], of sentence sentences[n]
        (None: sentence n, nothing dropped)."""


@dataclass
class Hypothesis:
    tokens: list[int]  # target ids without BOS/EOS
    score: float  # length-normalised log-probability
    log_prob: float  # sum of token log-probabilities, EOS included
    attention: Tensor | None = None  # [len(tokens) + 1, S_real] on CPU


@dataclass
class _Active:
    """The still-running part of a search: N sentences with W rows (beams) each."""

    sent_ids: list[int]  # [N] position of each sentence in the input batch
    max_len: list[int]  # [N] maximum output length
    num_finished: list[int]  # [N] finished hypotheses collected
    scores: Tensor  # [N, W] cumulative log-probabilities
    tokens: Tensor  # [N*W, t] tokens generated so far
    attention: Tensor | None  # [N*W, t, S] attention so far (when tracked)
    state: State

    @property
    def width(self) -> int:
        return self.scores.size(1)

    def prev_tokens(self) -> Tensor:
        if self.tokens.size(1) == 0:
            return self.tokens.new_full((self.tokens.size(0),), BOS_ID)
        return self.tokens[:, -1]


def gnmt_penalty(length: int | Tensor, alpha: float) -> float | Tensor:
    """GNMT length penalty ((5 + length) / 6) ** alpha."""
    return ((5 + length) / 6) ** alpha


def max_output_lengths(src_mask: Tensor, max_len_a: float, max_len_b: int) -> Tensor:
    """[B] maximum output lengths from the real source lengths."""
    src_len = src_mask.sum(1).double()
    return torch.floor(max_len_a * src_len + max_len_b).long()


def _cap(max_len: Tensor, model: StepModel) -> list[int]:
    """Respect a model that can only decode a limited number of positions (learned positions)."""
    limit = getattr(model, "max_target_len", None)
    return (max_len if limit is None else max_len.clamp_max(int(limit) - 1)).tolist()


def _start(
    model: StepModel,
    src: Tensor,
    src_mask: Tensor,
    max_len_a: float,
    max_len_b: int,
    track_attention: bool,
) -> _Active:
    batch = src.size(0)
    device = src.device
    return _Active(
        sent_ids=list(range(batch)),
        max_len=_cap(max_output_lengths(src_mask, max_len_a, max_len_b), model),
        num_finished=[0] * batch,
        scores=torch.zeros(batch, 1, device=device),
        tokens=torch.zeros(batch, 0, dtype=torch.long, device=device),
        attention=src.new_zeros(batch, 0, src.size(1), dtype=torch.float32)
        if track_attention
        else None,
        state=model.encode(src, src_mask),
    )


def _constrain(log_probs: Tensor, step: int, active: _Active, min_len: int) -> Tensor:
    """Forbid PAD/BOS, and EOS before `min_len`; only EOS once a row is at its maximum length.

    log_probs [R, V] float32, fresh from `decode_step`: changed in place (a vocabulary-sized
    copy per step is measurable in batched decoding) and returned.
    """
    log_probs[:, PAD_ID] = float("-inf")  # never valid outputs
    log_probs[:, BOS_ID] = float("-inf")
    if step < min_len:
        log_probs[:, EOS_ID] = float("-inf")
    at_max = [step >= limit for limit in active.max_len]
    if any(at_max):
        forced = torch.tensor(at_max, device=log_probs.device).repeat_interleave(active.width)
        eos = log_probs[:, EOS_ID].clamp_min(_FORCED_EOS_FLOOR)
        only_eos = torch.full_like(log_probs, float("-inf"))
        only_eos[:, EOS_ID] = eos
        log_probs = torch.where(forced.unsqueeze(1), only_eos, log_probs)
    return log_probs


def _step(
    model: StepModel,
    active: _Active,
    step: int,
    min_len: int,
    with_attention: bool,
    logits_dtype: torch.dtype | None,
) -> tuple[Tensor, Tensor | None, State]:
    """One step for all active rows -> (log_probs [N*W, V], attention [N*W, S] | None, state)."""
    prev = active.prev_tokens()
    log_probs, attention, state = model.decode_step(
        active.state, prev, with_attention, logits_dtype
    )
    log_probs = _constrain(log_probs, step, active, min_len)
    if attention is not None:
        attention = attention.float()
    return log_probs, attention, state


def _finish(
    active: _Active,
    rows: Tensor,
    sents: list[int],
    log_probs: Tensor,
    step_attention: Tensor | None,
    src_mask: Tensor,
    alpha: float,
    finished: list[list[Hypothesis]],
) -> None:
    """Store the hypotheses that end with EOS now: `rows` [F] of the active batch, belonging
    to input sentences `sents` [F], with total log-probabilities `log_probs` [F].

    Gathers everything with a few tensor ops (one device-to-host copy each), not per row.
    """
    tokens = active.tokens[rows].tolist()
    values = log_probs.tolist()
    attention, masks = None, None
    if active.attention is not None and step_attention is not None:
        history = torch.cat([active.attention[rows], step_attention[rows].unsqueeze(1)], dim=1)
        attention, masks = history.cpu(), src_mask[sents].cpu()  # [F, t+1, S], [F, S]
    for k, sent in enumerate(sents):
        weights = None if attention is None or masks is None else attention[k][:, masks[k]]
        score = values[k] / gnmt_penalty(len(tokens[k]) + 1, alpha)
        finished[sent].append(Hypothesis(tokens[k], score, values[k], weights))


def _advance(
    model: StepModel,
    active: _Active,
    keep: list[bool],
    rows: Tensor,
    tokens: Tensor,
    scores: Tensor,
    step_attention: Tensor | None,
    state: State,
) -> _Active | None:
    """The next active batch: kept sentences, continuing from `rows` with `tokens`.

    keep [N] on the host; rows, tokens, scores [N, W'] (rows index the current N*W batch).
    One `reorder` both follows the beams and drops finished sentences.
    """
    kept = [n for n, k in enumerate(keep) if k]
    if not kept:
        return None
    sentences = None
    if len(kept) < len(keep):
        sentences = torch.tensor(kept, device=rows.device)
        rows, tokens, scores = (x.index_select(0, sentences) for x in (rows, tokens, scores))
    # Greedy search keeping every sentence continues every row as it is.
    identity = sentences is None and rows.size(1) == 1 and active.width == 1
    flat = rows.reshape(-1)
    history = active.tokens if identity else active.tokens[flat]
    attention = None
    if active.attention is not None and step_attention is not None:
        past = active.attention if identity else active.attention[flat]
        attention = torch.cat([past, step_attention[flat].unsqueeze(1)], dim=1)
    return _Active(
        sent_ids=[active.sent_ids[n] for n in kept],
        max_len=[active.max_len[n] for n in kept],
        num_finished=[active.num_finished[n] for n in kept],
        scores=scores,
        tokens=torch.cat([history, tokens.reshape(-1, 1)], dim=1),
        attention=attention,
        state=state if identity else model.reorder(state, rows, sentences),
    )


# --------------------------------------------------------------------------- greedy


@torch.no_grad()
def greedy_search(
    model: StepModel,
    src: Tensor,
    src_mask: Tensor,
    max_len_a: float,
    max_len_b: int,
    min_len: int = 1,
    with_attention: bool = False,
    length_penalty: float = 0.6,
    logits_dtype: torch.dtype | None = None,
) -> list[list[Hypothesis]]:
    """Best next token at every step. src, src_mask [B, S]; returns one hypothesis per sentence.

    `length_penalty` only normalises the reported score (so it is comparable to beam search's);
    `logits_dtype` is passed to `decode_step` (bf16 decoding).
    """
    active: _Active | None = _start(model, src, src_mask, max_len_a, max_len_b, with_attention)
    finished: list[list[Hypothesis]] = [[] for _ in range(src.size(0))]
    step = 0
    while active is not None:
        log_probs, attention, state = _step(
            model, active, step, min_len, with_attention, logits_dtype
        )
        best, tokens = log_probs.max(dim=-1)  # [N]
        scores = active.scores[:, 0] + best
        ended = (tokens == EOS_ID).tolist()  # the step's one wait for the device
        if any(ended):
            ends = [n for n, end in enumerate(ended) if end]
            rows = torch.tensor(ends, device=tokens.device)
            _finish(
                active,
                rows,
                [active.sent_ids[n] for n in ends],
                scores[rows],
                attention,
                src_mask,
                length_penalty,
                finished,
            )
        rows = torch.arange(tokens.size(0), device=tokens.device).unsqueeze(1)
        keep = [not end for end in ended]
        active = _advance(
            model, active, keep, rows, tokens.unsqueeze(1), scores.unsqueeze(1), attention, state
        )
        step += 1
    return finished


# --------------------------------------------------------------------------- beam


@dataclass
class _Candidates:
    """The best 2*K continuations per sentence, sorted by cumulative score. All [N, C]."""

    scores: Tensor
    beams: Tensor  # which of the sentence's W rows each candidate extends
    tokens: Tensor


def _candidates(scores: Tensor, log_probs: Tensor, beam_size: int) -> _Candidates:
    """scores [N, W], log_probs [N*W, V] (overwritten) -> top min(2K, W*V) candidates per sentence.

    2K candidates always leave K that do not end (each row adds at most one EOS).
    """
    n, width = scores.shape
    vocab = log_probs.size(-1)
    total = log_probs.view(n, width, vocab).add_(scores.unsqueeze(2)).view(n, width * vocab)
    top, index = total.topk(min(2 * beam_size, width * vocab), dim=1)
    beams = torch.div(index, vocab, rounding_mode="floor")
    return _Candidates(scores=top, beams=beams, tokens=index % vocab)


def _collect_finished(
    active: _Active,
    cand: _Candidates,
    step_attention: Tensor | None,
    src_mask: Tensor,
    beam_size: int,
    alpha: float,
    finished: list[list[Hypothesis]],
) -> None:
    """Store the EOS candidates ranked within the top K as finished hypotheses."""
    ranks = torch.arange(cand.tokens.size(1), device=cand.tokens.device)
    is_eos = (cand.tokens == EOS_ID) & (ranks < beam_size) & torch.isfinite(cand.scores)
    counts = is_eos.sum(1).tolist()  # the step's one wait for the device
    active.num_finished = [done + new for done, new in zip(active.num_finished, counts)]
    if not any(counts):
        return
    n_idx, c_idx = is_eos.nonzero(as_tuple=True)
    rows = n_idx * active.width + cand.beams[n_idx, c_idx]
    sents = [active.sent_ids[n] for n, count in enumerate(counts) for _ in range(count)]
    _finish(
        active, rows, sents, cand.scores[n_idx, c_idx], step_attention, src_mask, alpha, finished
    )


def _next_beams(
    model: StepModel,
    active: _Active,
    cand: _Candidates,
    step_attention: Tensor | None,
    state: State,
    beam_size: int,
    step: int,
) -> _Active | None:
    """Continue each unfinished sentence with its K best candidates that do not end."""
    keep = [
        done < beam_size and step < limit
        for done, limit in zip(active.num_finished, active.max_len)
    ]
    open_scores = cand.scores.masked_fill(cand.tokens == EOS_ID, float("-inf"))
    scores, pos = open_scores.topk(min(beam_size, open_scores.size(1)), dim=1)
    beams = cand.beams.gather(1, pos)
    tokens = cand.tokens.gather(1, pos)
    base = torch.arange(beams.size(0), device=beams.device).unsqueeze(1) * active.width
    return _advance(model, active, keep, base + beams, tokens, scores, step_attention, state)


@torch.no_grad()
def beam_search(
    model: StepModel,
    src: Tensor,
    src_mask: Tensor,
    beam_size: int,
    n_best: int = 1,
    length_penalty: float = 0.6,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    min_len: int = 1,
    with_attention: bool = False,
    logits_dtype: torch.dtype | None = None,
) -> list[list[Hypothesis]]:
    """Batched beam search. src, src_mask [B, S]; returns up to `n_best` hypotheses per
    sentence, best (highest length-normalised score) first. `logits_dtype` is passed to
    `decode_step` (bf16 decoding).

    Step 0 runs on B rows (one per sentence) and widens to K, so the encoder state is not
    copied K times before the first selection.
    """
    if n_best > beam_size:
        raise ValueError(f"n_best ({n_best}) cannot exceed beam_size ({beam_size})")
    active: _Active | None = _start(model, src, src_mask, max_len_a, max_len_b, with_attention)
    finished: list[list[Hypothesis]] = [[] for _ in range(src.size(0))]
    step = 0
    while active is not None:
        log_probs, attention, state = _step(
            model, active, step, min_len, with_attention, logits_dtype
        )
        cand = _candidates(active.scores, log_probs, beam_size)
        _collect_finished(active, cand, attention, src_mask, beam_size, length_penalty, finished)
        active = _next_beams(model, active, cand, attention, state, beam_size, step)
        step += 1
    return [sorted(hyps, key=lambda h: h.score, reverse=True)[:n_best] for hyps in finished]
