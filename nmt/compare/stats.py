"""Statistics of a comparison: scores with confidence intervals and paired significance
(sacreBLEU's paired bootstrap resampling or approximate randomisation), alignment statistics,
and the test sentences the models disagree on most."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from nmt.alignment import Alignment
from nmt.evaluate import (
    ScoringPolicy,
    literature_tokenize,
    remove_word_spaces,
    scoring_metrics,
)

Significance = Literal["bs", "ar"]
METRIC_KEYS = {"BLEU": "bleu", "chrF2": "chrf", "TER": "ter"}  # sacreBLEU's names -> ours
DIAGONAL_BAND = 0.1  # the diagonal band: relative positions within 10% of the sentence
SAMPLES = {"bs": 1000, "ar": 10000}  # sacreBLEU's defaults


def paired_scores(
    systems: dict[str, list[str]],
    refs: Sequence[str],
    tgt_lang: str,
    policy: ScoringPolicy,
    method: Significance = "bs",
    literature: bool = False,
) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, str]]:
    """Per system and metric (bleu, chrf, ter): score, 95% interval and the p-value of the
    paired test against the first system (the baseline). Also the signatures.

    `literature`: hypotheses are lowercased, Moses-normalised and tokenized like the official
    tokenized references `refs`, scored with tokenize=none (BLEU only, like the papers).
    """
    from sacrebleu.significance import PairedTest

    refs = list(refs)
    named: list[tuple[str, Sequence[str]]] = list(systems.items())
    if policy.remove_spaces:
        refs = remove_word_spaces(refs)
        named = [(n, remove_word_spaces(h)) for n, h in named]
    if literature:
        named = [(n, literature_tokenize(h, tgt_lang)) for n, h in named]
    bleu, chrf, ter = scoring_metrics(tgt_lang, literature, policy.lowercase)
    metrics = {"BLEU": bleu} if literature else {"BLEU": bleu, "chrF2": chrf, "TER": ter}
    test = PairedTest(
        named, metrics, [refs], test_type=method, n_samples=SAMPLES[method], n_ar_confidence=0
    )
    signatures, table = test()
    baseline = list(named[0][1])
    same_as_baseline = {name for name, hyps in named[1:] if list(hyps) == baseline}
    result: dict[str, dict[str, dict[str, Any]]] = {name: {} for name, _ in named}
    for metric, key in METRIC_KEYS.items():
        if metric not in table:
            continue
        for (name, _), row in zip(named, table[metric]):
            result[name][key] = _interval(row, SAMPLES[method], name in same_as_baseline)
    return result, {METRIC_KEYS[m]: str(s) for m, s in signatures.items()}


def _interval(row: Any, samples: int, same_as_baseline: bool) -> dict[str, Any]:
    """A sacreBLEU significance Result as our JSON: score, 95% interval, p-value.

    sacreBLEU's p is (c + 1) / (samples + 1) for the c samples whose difference exceeds the
    real one, so its smallest value, 1 / (samples + 1), says only "p at most this":
    `p_at_floor` marks it. Outputs identical to the baseline's (real difference 0, none
    exceeds it) would get that smallest p; they do not differ at all, so their p is 1.
    """
    score = float(row.score)  # sacreBLEU gives numpy floats here
    half = float(row.ci or 0.0)
    mean = float(row.mean) if row.mean is not None else score
    interval: dict[str, Any] = {
        "score": round(score, 2),
        "ci95": [round(mean - half, 2), round(mean + half, 2)],
        "p_value": None,
    }
    if row.p_value is not None:
        p = 1.0 if same_as_baseline else float(row.p_value)
        interval["p_value"] = round(p, 4)
        interval["p_at_floor"] = p * (samples + 1) <= 1.0 + 1e-9
    return interval


@dataclass(frozen=True)
class AlignmentStats:
    """Over a test set's translations (piece level, EOS excluded as everywhere)."""

    entropy_bits: float  # mean entropy of a target piece's attention: low = focused
    diagonal_share: float  # mass within DIAGONAL_BAND of the diagonal: monotone attention
    backward_rate: float  # how often the argmax moves left from one target piece to the next
    sentences: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def alignment_stats(alignments: Sequence[Alignment]) -> AlignmentStats:
    """Means over target pieces of all `alignments` (sentences with pieces on both sides)."""
    entropy, diagonal, rows, backward, moves = 0.0, 0.0, 0, 0, 0
    used = 0
    for a in alignments:
        soft = a.soft
        if not soft or not soft[0]:
            continue
        used += 1
        t_len, s_len = len(soft), len(soft[0])
        for t, row in enumerate(soft):
            entropy -= sum(p * math.log2(p) for p in row if p > 0)
            centre = (t + 0.5) / t_len
            diagonal += sum(
                p for s, p in enumerate(row) if abs((s + 0.5) / s_len - centre) <= DIAGONAL_BAND
            )
            rows += 1
        links = [src for src, _ in sorted(a.hard, key=lambda link: link[1])]
        backward += sum(1 for prev, cur in zip(links, links[1:]) if cur < prev)
        moves += max(len(links) - 1, 0)
    return AlignmentStats(
        entropy_bits=round(entropy / max(rows, 1), 3),
        diagonal_share=round(diagonal / max(rows, 1), 3),
        backward_rate=round(backward / max(moves, 1), 3),
        sentences=used,
    )


def most_disagreed(
    systems: dict[str, list[str]],
    refs: Sequence[str],
    tgt_lang: str,
    policy: ScoringPolicy,
    count: int = 5,
) -> list[int]:
    """Test rows where the models' sentence chrF against the reference spreads most (one
    model right, another wrong), the widest spread first."""
    from sacrebleu.metrics import CHRF

    chrf = CHRF(lowercase=policy.lowercase)
    spreads = []
    for i, ref in enumerate(refs):
        scores = [chrf.sentence_score(hyps[i], [ref]).score for hyps in systems.values()]
        spreads.append((max(scores) - min(scores), -i))
    ranked = sorted(spreads, reverse=True)[:count]
    return [-neg_i for _, neg_i in ranked]
