"""What a comparison needs from a run folder: its checkpoint, curves, cost and test set.

A run is read from the files training writes (nmt/train.py): best.pt (else last.pt) for the
model, metrics.jsonl for the curves, summary.json for how it ended. Runs can only be compared
when they translate the same language pair, are scored on the same test set and write text
that is scored the same way; `check_comparable` says which runs differ.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nmt.checkpoint import CheckpointError, load_checkpoint
from nmt.config import Config, DataConfig
from nmt.evaluate import ScoringPolicy
from nmt.runlog import read_metrics


class StudyError(ValueError):
    """A study that cannot be run or compared as asked; the message names the runs or files."""


@dataclass(frozen=True)
class TestSet:
    """The test split of a run's corpus, and the official tokenized references if any."""

    identity: str  # what must be equal for two runs to be compared
    src: list[str]
    ref: list[str]
    literature_ref: list[str] | None  # Multi30k's lc.norm.tok references, for the literature BLEU
    files: dict[str, str | None]


@dataclass(frozen=True)
class RunRecord:
    """One finished (or stopped) run as the report sees it."""

    name: str
    run_dir: Path
    checkpoint: Path
    config: Config
    policy: ScoringPolicy
    valid_curve: list[dict[str, float]]  # step, minutes, bleu
    train_curve: list[dict[str, float]]  # step, minutes, loss, tokens_per_s
    summary: dict[str, Any]

    @property
    def pair(self) -> str:
        return f"{self.config.data.src_lang}-{self.config.data.tgt_lang}"


def unique_names(paths: list[Path]) -> list[str]:
    """Config file stems or run folder names; a name used twice gets its parent folder's name
    in front (a_rnn, b_rnn)."""
    names = [p.stem if p.suffix in (".yaml", ".yml") else p.name for p in paths]
    return [
        f"{p.resolve().parent.name}_{name}" if names.count(name) > 1 else name
        for p, name in zip(paths, names)
    ]


def usable_checkpoint(run_dir: Path) -> Path:
    """best.pt, else last.pt: the model to compare (a run stopped before any validation has
    neither)."""
    for name in ("best.pt", "last.pt"):
        if (run_dir / name).is_file():
            return run_dir / name
    raise StudyError(f"run folder {run_dir} has no usable checkpoint (best.pt or last.pt)")


def read_run(run_dir: Path, name: str | None = None) -> RunRecord:
    """The record of the run in `run_dir`; StudyError naming the folder if it has no model."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise StudyError(f"run folder not found: {run_dir}")
    checkpoint_path = usable_checkpoint(run_dir)
    try:
        checkpoint = load_checkpoint(checkpoint_path)
    except CheckpointError as e:
        raise StudyError(f"run folder {run_dir}: unusable checkpoint: {e}") from None
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    records = read_metrics(run_dir)
    return RunRecord(
        name=name or run_dir.name,
        run_dir=run_dir,
        checkpoint=checkpoint_path,
        config=checkpoint.config,
        policy=scoring_policy(checkpoint.config),
        valid_curve=_curve(records, "valid", ("bleu",)),
        train_curve=_curve(records, "train", ("loss", "tokens_per_s")),
        summary=summary,
    )


def _curve(
    records: list[dict[str, Any]], kind: str, keys: tuple[str, ...]
) -> list[dict[str, float]]:
    """Points of one series of a run's metrics.jsonl `records` with the minutes trained at
    each. Runs logged before `train_seconds` was recorded fall back to wall-clock time since
    their first record."""
    series = [r for r in records if r["kind"] == kind]
    if not series:
        return []
    start = min(r["time"] for r in records)
    points = []
    for r in series:
        seconds = r.get("train_seconds", r["time"] - start)
        point: dict[str, float] = {"step": int(r["step"]), "minutes": round(seconds / 60, 3)}
        point.update({k: float(r[k]) for k in keys if k in r})
        points.append(point)
    return points


def load_test_set(data: DataConfig) -> TestSet:
    """The test split's raw source and reference lines (not length-filtered: every sentence
    counts), and the literature's tokenized references for the Multi30k preset."""
    from nmt.data import CorpusSource, corpus_files, preset_dir
    from nmt.files import read_lines

    split = data.test_split
    if data.hub is not None and not data.files:
        chunks = list(CorpusSource(data).chunks(split))
        sources = [line for chunk in chunks for line in chunk.src]
        references = [line for chunk in chunks for line in chunk.tgt]
        spec = f"hub:{data.hub.name}/{data.hub.config}/{data.hub.splits.get(split, split)}"
        return TestSet(spec, sources, references, None, {"hub": spec})
    files = corpus_files(data)
    if split not in files:
        raise StudyError(f"the corpus has no {split!r} split (data.test_split)")
    src_path, ref_path = files[split]
    literature = None
    lit_path = (
        preset_dir(data) / "multi30k" / "tok" / f"test_2016_flickr.lc.norm.tok.{data.tgt_lang}"
    )
    official = data.preset == "multi30k" and not data.files and split == "test"
    if official and lit_path.is_file():
        literature = read_lines(lit_path)
    identity = f"{src_path.resolve()}|{ref_path.resolve()}"
    paths = {
        "src": str(src_path),
        "ref": str(ref_path),
        "literature_ref": str(lit_path) if literature else None,
    }
    return TestSet(identity, read_lines(src_path), read_lines(ref_path), literature, paths)


def scoring_policy(config: Config) -> ScoringPolicy:
    """How the model of `config` is scored (ScoringPolicy.of, read from the config alone)."""
    tok = config.tokenizer
    return ScoringPolicy(
        remove_spaces=config.data.tgt_lang in tok.detok_remove_spaces, lowercase=tok.lowercase
    )


@dataclass(frozen=True)
class Comparability:
    """What must be equal for two runs' scores to be comparable."""

    pair: str
    test_set: str
    scoring: str

    @classmethod
    def of(cls, config: Config, test_set: str) -> Comparability:
        policy = scoring_policy(config)
        return cls(
            pair=f"{config.data.src_lang}-{config.data.tgt_lang}",
            test_set=test_set,
            scoring=f"lowercase={policy.lowercase}, remove_spaces={policy.remove_spaces}",
        )


def check_comparable(runs: dict[str, Comparability]) -> None:
    """Raise StudyError naming the runs whose language pair, test set or target scoring
    (lowercased, segmentation spaces removed) differs from the first run's."""
    first_name, first = next(iter(runs.items()))
    for field, what in (
        ("pair", "language pairs"),
        ("test_set", "test sets"),
        ("scoring", "target tokenisation (lowercased or spaces removed before scoring)"),
    ):
        odd = [name for name, key in runs.items() if getattr(key, field) != getattr(first, field)]
        if odd:
            others = ", ".join(f"{name} ({getattr(runs[name], field)})" for name in odd)
            raise StudyError(
                f"cannot compare runs with different {what}: {others} against "
                f"{first_name} ({getattr(first, field)})"
            )
