"""From run folders to the report's data: decode, score, test significance, gather the cost.

`compare_runs` returns the JSON-ready report (every figure, see the README's `nmt compare`
section for its fields) and the alignments the heatmaps are drawn from.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nmt.alignment import Alignment
from nmt.compare.measure import (
    DecodeSettings,
    Measurement,
    heatmap_rows,
    measure_run,
    model_file_mb,
)
from nmt.compare.runs import (
    Comparability,
    RunRecord,
    StudyError,
    TestSet,
    check_comparable,
    load_test_set,
)
from nmt.compare.stats import Significance, most_disagreed, paired_scores
from nmt.evaluate import bleu_by_length, corpus_bleu, remove_word_spaces
from nmt.runlog import environment_info

FORMAT = 1  # report.json's layout version
DECODING_KEYS = (
    "beam_size",
    "length_penalty",
    "max_len_a",
    "max_len_b",
    "batch_tokens",
    "precision",
)
METHODS = {"bs": "paired bootstrap resampling", "ar": "approximate randomisation"}


@dataclass(frozen=True)
class CompareOptions:
    beam_size: int = 5
    threads: int = 1
    device: str = "cpu"
    baseline: str | None = None  # run name; default the first
    significance: Significance = "bs"
    examples: int = 5
    command: str = ""  # how the report was made, for the environment section
    study: dict[str, Any] | None = None  # study.json, when the runs were trained as a study


@dataclass
class Comparison:
    report: dict[str, Any]
    heatmaps: list[dict[str, Alignment]]  # per heatmap sentence: model name -> alignment


def _ordered(runs: list[RunRecord], baseline: str | None) -> list[RunRecord]:
    """The runs with the baseline first (paired tests compare against the first)."""
    if baseline is None:
        return runs
    names = [r.name for r in runs]
    if baseline not in names:
        raise StudyError(f"--baseline {baseline!r} is not one of the runs: {', '.join(names)}")
    return sorted(runs, key=lambda r: r.name != baseline)


def compare_runs(runs: list[RunRecord], options: CompareOptions, output: Path) -> Comparison:
    """Decode the test set with every run's model (measurements kept in output/decoded),
    score and compare them."""
    runs = _ordered(runs, options.baseline)
    tests = {r.name: load_test_set(r.config.data) for r in runs}
    check_comparable({r.name: Comparability.of(r.config, tests[r.name].identity) for r in runs})
    test = tests[runs[0].name]
    torch.set_num_threads(options.threads)
    decode = dataclasses.replace(runs[0].config.decode, beam_size=options.beam_size)
    settings = DecodeSettings(decode, options.threads, options.device)
    rows = heatmap_rows(test.src)
    measured = [measure_run(r, test.src, settings, rows, output / "decoded") for r in runs]
    models = _quality(runs, measured, test, options.significance)
    for model, run, m in zip(models["models"], runs, measured):
        model.update(_cost_and_curves(run, m))
        model["alignment"] = m.alignment.to_dict() if m.alignment else None
    beams = {m.name: m.beam for m in measured}
    policy = runs[0].policy
    tgt_lang = runs[0].config.data.tgt_lang
    examples = most_disagreed(beams, test.ref, tgt_lang, policy, options.examples)
    report = {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "study": options.study,
        "test_set": {
            **test.files,
            "sentences": len(test.src),
            "src_lang": runs[0].config.data.src_lang,
            "tgt_lang": tgt_lang,
        },
        "decoding": {
            **{key: getattr(decode, key) for key in DECODING_KEYS},
            "threads": options.threads,
            "device": options.device,
        },
        "baseline": runs[0].name,
        "significance": models["significance"],
        "models": models["models"],
        "heatmap_sentences": [
            {"index": i, "source": test.src[i], "reference": test.ref[i]} for i in rows
        ],
        "examples": [
            {
                "index": i,
                "source": test.src[i],
                "reference": test.ref[i],
                "outputs": {name: hyps[i] for name, hyps in beams.items()},
            }
            for i in examples
        ],
        "environment": {
            **environment_info(torch.device(options.device), decode.precision, 1),
            "command": options.command,
        },
    }
    heatmaps = [{m.name: m.heatmaps[i] for m in measured if i in m.heatmaps} for i in rows]
    return Comparison(report, heatmaps)


def _quality(
    runs: list[RunRecord], measured: list[Measurement], test: TestSet, method: Significance
) -> dict[str, Any]:
    """Scores with intervals and p-values, the literature BLEU, greedy BLEU and BLEU by length."""
    policy, tgt_lang = runs[0].policy, runs[0].config.data.tgt_lang
    beams = {m.name: m.beam for m in measured}
    scores, signatures = paired_scores(beams, test.ref, tgt_lang, policy, method)
    literature, literature_signatures = None, None
    if test.literature_ref is not None:
        literature, literature_signatures = paired_scores(
            beams, test.literature_ref, tgt_lang, policy, method, literature=True
        )
    models = []
    for run, m in zip(runs, measured):
        hyps, refs = m.beam, test.ref
        if policy.remove_spaces:
            hyps, refs = remove_word_spaces(hyps), remove_word_spaces(refs)
        quality: dict[str, Any] = dict(scores[m.name])
        quality["bleu_literature"] = literature[m.name]["bleu"] if literature else None
        quality["bleu_greedy"] = round(corpus_bleu(m.greedy, test.ref, tgt_lang, policy)[0], 2)
        models.append(
            {
                "name": m.name,
                "architecture": m.architecture,
                "run_dir": str(run.run_dir),
                "checkpoint": str(run.checkpoint),
                "quality": quality,
                "by_length": bleu_by_length(
                    test.src, hyps, refs, tgt_lang, lowercase=policy.lowercase
                ),
            }
        )
    significance = {
        "method": METHODS[method],
        "baseline": runs[0].name,
        "signatures": signatures,
        "literature_signatures": literature_signatures,
    }
    return {"models": models, "significance": significance}


def _cost_and_curves(run: RunRecord, m: Measurement) -> dict[str, Any]:
    points = run.valid_curve + run.train_curve
    speeds = [p["tokens_per_s"] for p in run.train_curve if "tokens_per_s" in p]
    minutes = max((p["minutes"] for p in points), default=None)
    steps = int(max((p["step"] for p in points), default=0))
    return {
        "stop_reason": run.summary.get("stop_reason"),
        "cost": {
            "parameters": m.parameters,
            "model_mb": model_file_mb(Path(run.checkpoint)),
            "train_minutes": minutes,
            "steps": steps,
            # a study's runs see the same batches in the same order: steps compare directly
            "train_steps_per_minute": round(steps / minutes, 1) if minutes else None,
            "train_tokens_per_s": round(statistics.median(speeds)) if speeds else None,
            "greedy_sentences_per_s": m.greedy_sentences_per_s,
            "beam_sentences_per_s": m.beam_sentences_per_s,
        },
        "curves": {"valid": run.valid_curve, "train": run.train_curve},
    }
