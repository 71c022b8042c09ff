"""Decoding with CTranslate2 over an exported model directory, by our search's rules.

`open_exported(dir)` gives what `Translator.load` needs: the engine, the tokenizer and the
config. `CTranslate2Engine.search` returns the same `Hypothesis` lists as nmt/search.py, so
the Translator builds the same Translations (text, score, n-best, alignments) from either.

CTranslate2's beam search keeps the same hypotheses as ours (top 2K candidates, EOS within
the top K finishes a hypothesis, a sentence is done after K of them), but differs in what it
reports and masks, so it is asked in a way that lets us apply our rules afterwards:
- length penalty: CTranslate2 divides by L^b, we by GNMT's ((5+L)/6)^alpha. It is asked for
  K hypotheses with the EOS kept (so L >= 1), their raw log-probabilities recovered as
  score * L^b and re-ranked with ours. The last step can finish more than K hypotheses and
  it keeps its K best, so b is the power closest to ours at the batch's typical length,
  alpha * L / (5 + L) (never exactly 0, which would switch on its early stop).
- token masking: it masks before the softmax, we after (our log-probabilities are those of
  the full vocabulary). So nothing is masked; hypotheses with PAD or BOS, or ending before
  `min_len`, are dropped. A sentence left with none is decoded again with its masking
  (same tokens for greedy search; the scores then come from the renormalised distribution).
- maximum length: ours is a * source length + b per sentence, CTranslate2's one per call.
  A batch is decoded to its longest limit; sentences whose hypotheses ran past their own are
  decoded again, grouped by limit. At the limit we force EOS, CTranslate2 stops with the
  last token instead: such a hypothesis is cut to the limit and keeps that token's score.
- attention: `model.alignment_layer`'s cross-attention, all heads averaged (set at export).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nmt.config import Config, config_from_dict
from nmt.ct2_export import read_metadata, require_ctranslate2
from nmt.search import Hypothesis, gnmt_penalty
from nmt.specials import BOS_ID, BOS_PIECE, EOS_ID, PAD_ID, PAD_PIECE
from nmt.tokenizer import Tokenizer

ENGINE = "ctranslate2"
# The smallest length penalty passed to CTranslate2: 0 would switch on its early stop.
_MIN_PENALTY = 1e-6


@dataclass(frozen=True)
class SearchSettings:
    """One decoding call's settings, as nmt.search's functions take them."""

    beam_size: int
    n_best: int
    max_len_a: float
    max_len_b: int
    min_len: int
    length_penalty: float
    with_attention: bool


@dataclass
class ExportedModel:
    """An opened export: the engine and what the Translator needs around it."""

    engine: CTranslate2Engine
    tokenizer: Tokenizer
    config: Config
    metadata: dict[str, Any]


def open_exported(model_dir: str | Path, device: str | torch.device = "cpu") -> ExportedModel:
    """Load an `nmt export --format ctranslate2` directory on `device` (cpu or cuda[:N]),
    decoding with torch's thread count (which `nmt serve` sets per worker)."""
    ctranslate2 = require_ctranslate2()
    path = Path(model_dir)
    metadata = read_metadata(path)
    config = config_from_dict(metadata["config"])
    tokenizer = Tokenizer.load(path)
    device = torch.device(device)
    translator = ctranslate2.Translator(
        str(path),
        device=device.type,
        device_index=device.index or 0,
        compute_type="default",
        inter_threads=1,
        intra_threads=torch.get_num_threads(),
    )
    engine = CTranslate2Engine(
        translator,
        tokenizer,
        max_source_len=config.model.max_positions,
        max_target_len=int(metadata["max_target_positions"]),
    )
    return ExportedModel(engine, tokenizer, config, metadata)


class CTranslate2Engine:
    """A CTranslate2 Translator behind our search interface (see the module docstring)."""

    def __init__(
        self, translator: Any, tokenizer: Tokenizer, max_source_len: int, max_target_len: int
    ) -> None:
        self.translator = translator
        self.tokenizer = tokenizer
        self.max_source_len = max_source_len  # source tokens (with EOS) accepted
        self.max_target_len = max_target_len  # decoder positions, the EOS step included
        pieces = tokenizer.tgt_pieces(list(range(tokenizer.tgt_vocab_size)))
        self._tgt_ids = {piece: i for i, piece in enumerate(pieces)}

    @property
    def compute_type(self) -> str:
        """The weights' type in use (the export's quantization, or what the device runs)."""
        return str(self.translator.compute_type)

    def search(
        self, batch_ids: list[list[int]], settings: SearchSettings
    ) -> list[list[Hypothesis]]:
        """Hypotheses per source (ids with EOS), best first, at most n_best each."""
        limits = [self._max_len(len(ids), settings) for ids in batch_ids]
        found: list[list[Hypothesis]] = [[] for _ in batch_ids]
        retry: dict[tuple[int, bool], list[int]] = {}
        first = self._decode(batch_ids, max(limits), settings, masked=False)
        for i, raw in enumerate(first):
            kept = self._kept(raw, limits[i], settings.min_len)
            if any(len(h.tokens) > limits[i] for h in raw) and max(limits) > limits[i]:
                retry.setdefault((limits[i], False), []).append(i)  # ran past its own limit
            elif not kept:
                retry.setdefault((limits[i], True), []).append(i)
            else:
                found[i] = kept
        for (limit, masked), indices in sorted(retry.items()):
            again = self._decode([batch_ids[i] for i in indices], limit, settings, masked)
            for i, raw in zip(indices, again):
                found[i] = self._kept(raw, limit, settings.min_len)
                if not found[i] and not masked:  # nothing allowed left: decode with masking
                    raw = self._decode([batch_ids[i]], limit, settings, masked=True)[0]
                    found[i] = self._kept(raw, limit, settings.min_len)
        self._score_cut(batch_ids, found)
        return [_ranked(hyps, settings) for hyps in found]

    def _max_len(self, src_len: int, settings: SearchSettings) -> int:
        """Our rule (nmt.search): floor(a * source length + b), capped by the positions."""
        limit = math.floor(settings.max_len_a * src_len + settings.max_len_b)
        return max(0, min(limit, self.max_target_len - 1))

    def _decode(
        self, batch_ids: list[list[int]], limit: int, settings: SearchSettings, masked: bool
    ) -> list[list[Hypothesis]]:
        """Every hypothesis CTranslate2 finishes (tokens without EOS): log_prob is the sum of
        the token log-probabilities when it ended with EOS, NaN when it stopped at `limit`."""
        beam = settings.beam_size
        sources = [self.tokenizer.src_pieces(ids) for ids in batch_ids]
        typical = sum(map(len, batch_ids)) / len(batch_ids)  # outputs are about as long
        penalty = max(settings.length_penalty * typical / (5 + typical), _MIN_PENALTY)
        outputs = self.translator.translate_batch(
            sources,
            beam_size=beam,
            num_hypotheses=beam,
            length_penalty=penalty,
            max_input_length=0,
            max_decoding_length=max(limit, 1),
            min_decoding_length=min(settings.min_len, limit) if masked else 0,
            suppress_sequences=[[PAD_PIECE], [BOS_PIECE]] if masked else None,
            return_scores=True,
            return_attention=settings.with_attention,
            return_end_token=True,
        )
        found = [
            self._hypotheses(output, len(ids), penalty, settings.with_attention)
            for output, ids in zip(outputs, batch_ids)
        ]
        if settings.with_attention and beam > 1 and len(batch_ids) > 1:
            self._fix_first_attention(sources, found)
        return found

    def _fix_first_attention(self, sources: list[list[str]], found: list[list[Hypothesis]]) -> None:
        """CTranslate2's beam search (on CPU, with several sentences) reports the first step's
        attention of another row of the batch; every hypothesis of a sentence shares that
        step (all start from BOS), so it is taken from a one-step greedy decoding."""
        first = self.translator.translate_batch(
            sources, beam_size=1, max_decoding_length=1, return_attention=True, max_input_length=0
        )
        for output, hyps in zip(first, found):
            row = torch.tensor(output.attention[0][0], dtype=torch.float32)
            for h in hyps:
                if h.attention is not None and h.attention.size(0) > 0:
                    h.attention[0] = row[: h.attention.size(1)]

    def _hypotheses(
        self, output: Any, src_len: int, penalty: float, with_attention: bool
    ) -> list[Hypothesis]:
        hyps = []
        for k, (pieces, score) in enumerate(zip(output.hypotheses, output.scores)):
            ids = [self._tgt_ids[piece] for piece in pieces]
            ended = bool(ids) and ids[-1] == EOS_ID
            log_prob = float(score) * len(ids) ** penalty if ended else math.nan
            tokens = ids[:-1] if ended else ids
            attention = None
            if with_attention:
                attention = torch.tensor(output.attention[k], dtype=torch.float32)[:, :src_len]
            hyps.append(Hypothesis(tokens, 0.0, log_prob, attention))
        return hyps

    def _kept(self, raw: list[Hypothesis], limit: int, min_len: int) -> list[Hypothesis]:
        """The hypotheses our search could have made: no PAD/BOS, at least min_len tokens,
        at most `limit` (where ours forces EOS: a longer one is cut, its log-probability
        left NaN for _score_cut), each token sequence once."""
        kept, seen = [], set()
        min_len = min(min_len, limit)  # ours forces EOS at the limit even so
        for h in raw:
            if PAD_ID in h.tokens or BOS_ID in h.tokens or len(h.tokens) < min_len:
                continue
            if len(h.tokens) > limit:
                attention = None if h.attention is None else h.attention[: limit + 1]
                h = Hypothesis(h.tokens[:limit], 0.0, math.nan, attention)
            if tuple(h.tokens) not in seen:
                seen.add(tuple(h.tokens))
                kept.append(h)
        return kept

    def _score_cut(self, batch_ids: list[list[int]], found: list[list[Hypothesis]]) -> None:
        """The log-probabilities of hypotheses stopped at their limit, with EOS after their
        last token as our forced EOS scores them (one CTranslate2 scoring call)."""
        cut = [(i, h) for i, hyps in enumerate(found) for h in hyps if math.isnan(h.log_prob)]
        if not cut:
            return
        sources = [self.tokenizer.src_pieces(batch_ids[i]) for i, _ in cut]
        targets = [self.tokenizer.tgt_pieces(h.tokens) for _, h in cut]
        scored = self.translator.score_batch(sources, targets, max_input_length=0)
        for (_, h), result in zip(cut, scored):
            h.log_prob = float(sum(result.log_probs))


def _ranked(hyps: Sequence[Hypothesis], settings: SearchSettings) -> list[Hypothesis]:
    """Scored with our length penalty (nmt.search), best first, at most n_best."""
    for h in hyps:
        h.score = float(h.log_prob / gnmt_penalty(len(h.tokens) + 1, settings.length_penalty))
    return sorted(hyps, key=lambda h: h.score, reverse=True)[: settings.n_best]
