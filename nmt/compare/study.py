"""An equal-budget study: every config trained with the same budget, threads and precision.

Each config becomes a run folder `<output>/runs/<name>`, trained by `nmt train` in its own
process (so `--parallel K` runs K side by side, each with its own thread count) with the
budget schedule: warmup and cosine decay measured in the budget (minutes or steps), so a slow
model is not cut off mid-warmup while a fast one finishes its decay. Every config is loaded
and checked before anything trains. Re-running the same command resumes: finished runs are
kept, interrupted ones continue from their last.pt.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from nmt.compare.runs import (
    Comparability,
    StudyError,
    check_comparable,
    load_test_set,
    unique_names,
)
from nmt.config import Config, ConfigError, load_config
from nmt.files import write_json_atomic

log = logging.getLogger(__name__)

FINISHED = ("max_minutes", "max_steps", "max_epochs", "patience")  # summary.json stop reasons
VALIDATIONS = 6  # validations per run: enough points for the curves, little time taken
FOREVER = 100_000_000  # a step or epoch limit the budget always ends first


@dataclass(frozen=True)
class Budget:
    """Minutes of training per run (this machine), or optimiser steps (any machine)."""

    minutes: float = 0.0
    steps: int = 0

    def __post_init__(self) -> None:
        if (self.minutes > 0) == (self.steps > 0):
            raise ConfigError("give one budget: --budget-minutes N or --budget-steps N")

    def overrides(self) -> list[str]:
        if self.minutes:
            return [
                f"train.max_minutes={self.minutes}",
                f"train.max_steps={FOREVER}",
                f"train.valid_every={FOREVER}",
                f"train.valid_every_minutes={self.minutes / VALIDATIONS:.4g}",
            ]
        return [
            "train.max_minutes=0",
            f"train.max_steps={self.steps}",
            f"train.valid_every={max(1, self.steps // VALIDATIONS)}",
            "train.valid_every_minutes=0",
        ]


@dataclass(frozen=True)
class StudyPlan:
    configs: tuple[str, ...]
    output: Path
    budget: Budget
    parallel: int = 1
    threads: int = 1  # per training process
    precision: str = "auto"
    device: str = "cpu"
    overrides: tuple[str, ...] = ()  # --set, applied to every config


@dataclass(frozen=True)
class PlannedRun:
    name: str
    config_path: str
    overrides: tuple[str, ...]
    run_dir: Path
    config: Config

    def command(self, resume: bool = False) -> list[str]:
        """The `nmt train` command that trains (or resumes) this run."""
        args = ["nmt", "train", "--config", self.config_path, "--set", *self.overrides]
        return args + (["--resume"] if resume else [])


# Settings every run of a study shares, before the user's --set (which may change them) ...
STUDY_DEFAULTS = (
    "train.valid_limit=100",
    "train.log_every=25",
    "train.patience=0",
    "train.average_last=0",
)


def study_overrides(plan: StudyPlan, run_dir: Path) -> tuple[str, ...]:
    """... and after it: what makes the study an equal-budget one (not overridable)."""
    fixed = [
        f"train.run_dir={run_dir}",
        f"train.device={plan.device}",
        f"train.precision={plan.precision}",
        f"train.threads={plan.threads}",
        "train.schedule=budget",
        f"train.max_epochs={FOREVER}",
        *plan.budget.overrides(),
    ]
    return (*STUDY_DEFAULTS, *plan.overrides, *fixed)


def plan_runs(plan: StudyPlan) -> list[PlannedRun]:
    """Load every config with the study's overrides (a config that fails is named before
    anything trains) and check that their scores will be comparable."""
    runs = []
    names = unique_names([Path(p) for p in plan.configs])
    if len(set(names)) != len(names):
        raise StudyError(f"configs listed twice: {', '.join(plan.configs)}")
    for name, path in zip(names, plan.configs):
        run_dir = plan.output / "runs" / name
        overrides = study_overrides(plan, run_dir)
        try:
            config = load_config(path, list(overrides))
        except ConfigError as e:
            raise StudyError(f"config {path} does not load: {e}") from None
        runs.append(PlannedRun(name, path, overrides, run_dir, config))
    keys = {r.name: Comparability.of(r.config, load_test_set(r.config.data).identity) for r in runs}
    check_comparable(keys)
    return runs


def run_state(run_dir: Path) -> str:
    """Where a run stands: "done" (ended by its budget), "resume" (stopped, with a last.pt to
    continue from) or "new"."""
    summary = run_dir / "summary.json"
    if (run_dir / "last.pt").is_file():
        if summary.is_file() and json.loads(summary.read_text()).get("stop_reason") in FINISHED:
            return "done"
        return "resume"
    return "new"


def _share_prepared_data(run: PlannedRun, runs: list[PlannedRun]) -> None:
    """Copy another run's SentencePiece models and tokenized data into a new run, so the
    study trains the tokenizer once. Safe whatever the configs: prepare_data reuses them only
    when their fingerprints match the run's own settings, and prepares its own otherwise."""
    from nmt.data import TOKENIZER_FINGERPRINT

    if (run.run_dir / "tokenizer").exists():
        return
    for donor in runs:
        ready = (donor.run_dir / "tokenizer" / TOKENIZER_FINGERPRINT).is_file()
        if donor is not run and ready and (donor.run_dir / "cache").is_dir():
            in_progress = shutil.ignore_patterns(".*")  # caches being written are dot-named
            for part in ("tokenizer", "cache"):
                shutil.copytree(donor.run_dir / part, run.run_dir / part, ignore=in_progress)
            log.info("%s: using the tokenizer and data prepared for %s", run.name, donor.name)
            return


def _start(run: PlannedRun, runs: list[PlannedRun]) -> subprocess.Popen:
    """Launch the run's training in its own process, logging to <run_dir>/train.log."""
    state = run_state(run.run_dir)
    if state == "new":  # a run that died before its first checkpoint starts afresh
        for leftover in ("metrics.jsonl", "summary.json", "tensorboard"):
            path = run.run_dir / leftover
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        _share_prepared_data(run, runs)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    command = run.command(resume=state == "resume")
    log.info(
        "%s %s: %s", "resuming" if state == "resume" else "training", run.name, shlex.join(command)
    )
    with open(run.run_dir / "train.log", "a", encoding="utf-8") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "nmt.cli", *command[1:]], stdout=out, stderr=subprocess.STDOUT
        )


def train_all(runs: list[PlannedRun], parallel: int) -> None:
    """Train the runs that are not finished, `parallel` at a time. On an interruption the
    running trainings are asked to save (SIGTERM) and waited for, so the study resumes."""
    pending = [r for r in runs if run_state(r.run_dir) != "done"]
    for run in runs:
        if run not in pending:
            log.info("%s: finished already, not retrained", run.name)
    active: dict[str, tuple[PlannedRun, subprocess.Popen]] = {}
    try:
        while pending or active:
            while pending and len(active) < parallel:
                run = pending.pop(0)
                active[run.name] = (run, _start(run, runs))
            time.sleep(0.5)
            for name, (run, process) in list(active.items()):
                code = process.poll()
                if code is None:
                    continue
                del active[name]
                if code != 0 or run_state(run.run_dir) != "done":
                    log_file = run.run_dir / "train.log"
                    raise StudyError(f"training {name} failed (exit code {code}); see {log_file}")
                log.info("%s: finished", name)
    finally:
        for _, process in active.values():
            process.terminate()
        for _, process in active.values():
            process.wait()


def save_plan(plan: StudyPlan, runs: list[PlannedRun], command: str) -> None:
    """study.json: the study as asked, checked against on resume (one study per folder)."""
    path = plan.output / "study.json"
    record = {
        "budget": asdict(plan.budget),
        "threads": plan.threads,
        "parallel": plan.parallel,
        "precision": plan.precision,
        "device": plan.device,
        "runs": {r.name: {"config": r.config_path, "overrides": list(r.overrides)} for r in runs},
    }
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved["budget"] != record["budget"] or saved["threads"] != record["threads"]:
            raise StudyError(
                f"{plan.output} holds a study with budget {saved['budget']} and "
                f"{saved['threads']} thread(s); resume it with those, or choose another --output"
            )
        record["commands"] = saved.get("commands", []) + [command]
    else:
        record["commands"] = [command]
    plan.output.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)


def run_study(plan: StudyPlan, command: str) -> list[PlannedRun]:
    """Plan, then train what is not finished; returns the runs, in config order."""
    runs = plan_runs(plan)
    save_plan(plan, runs, command)
    train_all(runs, plan.parallel)
    return runs
