"""Decode every model's test set in this one process, with the same threads and settings.

Per model: the beam translations (scored), greedy translations, both timed, so the sentences
per second stand side by side; then a greedy pass with attention for the alignment statistics
and the heatmaps (untimed: building alignments is bookkeeping, not decoding).

A measurement is kept in `<output>/decoded/<name>.json` with what it depends on (checkpoint
hash, decoding settings, threads, test set): rebuilding a report (another baseline, another
significance test) does not decode again. Delete the folder to measure again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nmt.alignment import Alignment
from nmt.checkpoint import file_sha256
from nmt.compare.runs import RunRecord
from nmt.compare.stats import AlignmentStats, alignment_stats
from nmt.config import DecodeConfig
from nmt.files import write_json_atomic
from nmt.translator import TranslationError, Translator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodeSettings:
    """What every model decodes with: the baseline's decode config with the study's beam."""

    decode: DecodeConfig
    threads: int
    device: str = "cpu"


@dataclass
class Measurement:
    name: str
    beam: list[str]  # the scored translations
    greedy: list[str]
    beam_sentences_per_s: float
    greedy_sentences_per_s: float
    parameters: int
    architecture: str
    alignment: AlignmentStats | None  # None: the model has no attention
    heatmaps: dict[int, Alignment]  # test index -> alignment of its greedy translation

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["heatmaps"] = {str(i): a.to_dict() for i, a in self.heatmaps.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        values = dict(data)
        if data["alignment"] is not None:
            values["alignment"] = AlignmentStats(**data["alignment"])
        values["heatmaps"] = {int(i): Alignment.from_dict(a) for i, a in data["heatmaps"].items()}
        return cls(**values)


def _timed(translator: Translator, sources: list[str], beam: int) -> tuple[list[str], float]:
    start = time.perf_counter()
    texts = [t.text for t in translator.translate(sources, beam_size=beam, truncate=True)]
    return texts, len(sources) / max(time.perf_counter() - start, 1e-9)


def measure_run(
    run: RunRecord,
    sources: list[str],
    settings: DecodeSettings,
    heatmap_rows: list[int],
    cache_dir: Path,
) -> Measurement:
    """The run's measurement: from `cache_dir` if it was taken with the same checkpoint,
    settings and test set, else decoded now (and kept there)."""
    key = {
        "checkpoint_sha256": file_sha256(run.checkpoint),
        "decode": dataclasses.asdict(settings),
        "sources": sources,
        "heatmap_rows": heatmap_rows,
    }
    path = cache_dir / f"{run.name}.json"
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved["key"] == json.loads(json.dumps(key)):
            log.info("%s: decoded already (%s)", run.name, path)
            return Measurement.from_dict(saved["measurement"])
    measurement = _decode(run, sources, settings, heatmap_rows)
    write_json_atomic(path, {"key": key, "measurement": measurement.to_dict()})
    return measurement


def _decode(
    run: RunRecord, sources: list[str], settings: DecodeSettings, heatmap_rows: list[int]
) -> Measurement:
    """Translate `sources` with the run's checkpoint (beam and greedy, timed), and the
    alignment statistics of its greedy translations."""
    torch.set_num_threads(settings.threads)
    try:
        translator = Translator.load(run.checkpoint, settings.device)
    except TranslationError as e:
        raise TranslationError(f"{run.name} ({run.checkpoint}): {e}") from None
    translator.decode = dataclasses.replace(settings.decode, n_best=1)
    beam_size = settings.decode.beam_size
    beam, beam_speed = _timed(translator, sources, beam_size)
    greedy, greedy_speed = _timed(translator, sources, 1)
    aligned = translator.translate(sources, beam_size=1, with_alignment=True, truncate=True)
    alignments = [t.alignment for t in aligned]
    has_attention = any(a is not None for a in alignments)
    log.info(
        "%s: beam %d %.1f sentences/s, greedy %.1f sentences/s",
        run.name,
        beam_size,
        beam_speed,
        greedy_speed,
    )
    return Measurement(
        name=run.name,
        beam=beam,
        greedy=greedy,
        beam_sentences_per_s=round(beam_speed, 2),
        greedy_sentences_per_s=round(greedy_speed, 2),
        parameters=translator.info.parameters,
        architecture=translator.info.architecture,
        alignment=alignment_stats([a for a in alignments if a]) if has_attention else None,
        heatmaps={i: a for i in heatmap_rows if (a := alignments[i]) is not None},
    )


def heatmap_rows(sources: list[str], lengths: tuple[int, ...] = (8, 13, 20)) -> list[int]:
    """Three fixed test sentences for the heatmaps: the first of about each length in words
    (short, medium, long), the same whichever models are compared."""
    rows: list[int] = []
    for target in lengths:
        candidates = [i for i, s in enumerate(sources) if i not in rows and s.split()]
        best = min(candidates, key=lambda i: (abs(len(sources[i].split()) - target), i))
        rows.append(best)
    return rows


def model_file_mb(path: Path) -> float:
    return round(path.stat().st_size / 2**20, 2)
