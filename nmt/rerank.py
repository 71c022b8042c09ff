"""Reverse-model reranking of beam search's n-best list (the noisy channel's p(x | y)).

Beam search ranks hypotheses y by log p(y | x) alone, which favours fluent translations that
drop or invent content. A model of the other direction scores how well each hypothesis
explains the source, log p(x | y), by forcing the source through it (`Translator.score`).
The hypotheses of one search are reranked by

    (log p(y | x) + weight * log p(x | y)) / ((5 + |y|) / 6) ** alpha

with |y| the hypothesis's tokens with EOS and alpha search's length penalty, so weight 0
keeps search's own order. A hypothesis the reverse models cannot score (an empty one, or one
longer than they accept, or a source longer than they can produce, as after `truncate`)
ranks after those they can, with search's score, so a sentence none of whose hypotheses can
be scored keeps search's order. Several reverse models give the mean of their
log-probabilities (as an ensemble's teacher-forced score is); each may have its own
vocabularies. The weight is a decoding setting like the length penalty: choose both on the
validation split (scripts/choose_decoding.py --rerank-with).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nmt.config import ConfigError
from nmt.search import Hypothesis, gnmt_penalty

if TYPE_CHECKING:
    from nmt.translator import ModelInfo, Translator


class RerankError(ValueError):
    """Reverse models that cannot rerank this model's output, or a bad weight."""


def check_rerank_options(reverse: Sequence[object] | None, weight: float | None) -> None:
    """`--rerank-with` / `--rerank-weight` as given (commands, server settings, scripts):
    both or neither, and a weight >= 0, refused before any model is loaded."""
    if bool(reverse) != (weight is not None):
        raise ConfigError("--rerank-with and --rerank-weight go together: give both or neither")
    if weight is not None and not (math.isfinite(weight) and weight >= 0):
        raise ConfigError(f"--rerank-weight must be a number >= 0, got {weight}")


@dataclass
class Reranker:
    """Reverse translators (target -> source) and the weight of their log-probability.

    Scores are cached per (hypothesis, source) pair, so that trying several weights or
    length penalties on one set of n-best lists forces each pair through once; the cache
    keeps the newest `cache_size` pairs, so a long-running server does not grow with it.
    """

    reverse: list[Translator]
    weight: float
    cache_size: int = 100_000
    _cache: dict[tuple[str, str], float | None] = field(default_factory=dict, repr=False)

    @classmethod
    def load(
        cls, paths: Sequence[str | Path], weight: float, device: str | torch.device = "cpu"
    ) -> Reranker:
        from nmt.translator import Translator

        if not paths:
            raise RerankError("reranking needs at least one reverse checkpoint")
        return cls([Translator.load(path, device) for path in paths], weight)

    def __post_init__(self) -> None:
        if not math.isfinite(self.weight) or self.weight < 0:
            raise RerankError(f"the rerank weight must be a number >= 0, got {self.weight}")

    def to_dict(self) -> dict[str, Any]:
        """The settings, for evaluation reports and the server's /info."""
        checkpoints = [r.info.checkpoint or r.info.name for r in self.reverse]
        return {"reverse_checkpoints": checkpoints, "weight": self.weight}

    def check(self, forward: ModelInfo) -> None:
        """Every reverse model must translate the forward model's target into its source."""
        for reverse in self.reverse:
            if (reverse.info.src_lang, reverse.info.tgt_lang) != (
                forward.tgt_lang,
                forward.src_lang,
            ):
                raise RerankError(
                    f"{reverse.info.checkpoint or reverse.info.name} translates "
                    f"{reverse.info.src_lang}->{reverse.info.tgt_lang}, but reranking "
                    f"{forward.src_lang}->{forward.tgt_lang} output needs a "
                    f"{forward.tgt_lang}->{forward.src_lang} model"
                )

    def channel_log_probs(
        self, sources: Sequence[str], hypotheses: Sequence[str]
    ) -> list[float | None]:
        """Mean over the reverse models of log p(source | hypothesis); None where they
        cannot score it (an empty hypothesis, or a side longer than a reverse model takes)."""
        pairs = {(h, s) for s, h in zip(sources, hypotheses) if h.strip()}  # empty: None
        todo = sorted(pairs - self._cache.keys())
        if todo:
            hyps, srcs = [h for h, _ in todo], [s for _, s in todo]
            totals: list[float | None] = [0.0] * len(todo)
            for reverse in self.reverse:
                for i, log_prob in enumerate(_forced_log_probs(reverse, hyps, srcs)):
                    total = totals[i]
                    totals[i] = None if total is None or log_prob is None else total + log_prob
            self._cache.update(
                (pair, None if total is None else total / len(self.reverse))
                for pair, total in zip(todo, totals)
            )
        scores = [self._cache.get((h, s)) for s, h in zip(sources, hypotheses)]
        overflow = max(0, len(self._cache) - self.cache_size)
        for pair in list(itertools.islice(self._cache, overflow)):
            del self._cache[pair]  # the oldest first: dicts keep insertion order
        return scores

    def rerank(
        self,
        sources: Sequence[str],
        hypotheses: Sequence[list[Hypothesis]],
        texts: Sequence[list[str]],
        length_penalty: float,
    ) -> list[list[tuple[Hypothesis, str]]]:
        """Each sentence's hypotheses (with their detokenized texts), best first by the
        combined score, which replaces search's score."""
        flat_sources = [s for s, hyps in zip(sources, hypotheses) for _ in hyps]
        flat_texts = [t for sentence in texts for t in sentence]
        channel = iter(self.channel_log_probs(flat_sources, flat_texts))
        out = []
        for hyps, sentence_texts in zip(hypotheses, texts):
            scored = []
            for hyp, text in zip(hyps, sentence_texts):
                log_prob = next(channel)
                if log_prob is not None:
                    combined = hyp.log_prob + self.weight * log_prob
                    score = combined / gnmt_penalty(len(hyp.tokens) + 1, length_penalty)
                    hyp = dataclasses.replace(hyp, score=float(score))
                scored.append((log_prob is not None, hyp, text))
            scored.sort(key=lambda item: (item[0], item[1].score), reverse=True)
            out.append([(hyp, text) for _, hyp, text in scored])
        return out


def _forced_log_probs(
    reverse: Translator, hypotheses: list[str], sources: list[str]
) -> list[float | None]:
    """log p(source | hypothesis) under one reverse model, in one batch when every pair can
    be scored; else pair by pair, None for those it refuses (TranslationError names why)."""
    from nmt.translator import TranslationError

    try:
        scores: list[float | None] = [*reverse.score(hypotheses, sources)]
        return scores
    except TranslationError:
        if len(hypotheses) == 1:
            return [None]
        return [_forced_log_probs(reverse, [h], [s])[0] for h, s in zip(hypotheses, sources)]
