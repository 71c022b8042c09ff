"""Training: every architecture learns, resume is exact, checkpoints survive kills, DDP agrees."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from archs import ARCHS
from conftest import tiny_config_dict

from nmt.checkpoint import load_checkpoint
from nmt.config import ConfigError, config_from_dict
from nmt.cpu import has_native_bf16
from nmt.runlog import read_metrics
from nmt.train import resolve_precision, train

REPO = Path(__file__).resolve().parents[1]

# Trained end to end here: one architecture per cell and attention kind (tests/archs.py).
TRAINED = [
    "transformer-pre",
    "lstm-none",
    "gru-none",
    "rnn-none",
    "lstm-bi-bahdanau",
    "luong-dot-feed",
    "luong-general-feed",
    "luong-concat-feed",
    "luong-local-feed",
]


def _config(data_dir: Path, run_dir: Path, arch: str = "transformer-pre", **train_overrides):
    raw = tiny_config_dict(data_dir, run_dir, ARCHS[arch]["arch"])
    raw["model"].update(ARCHS[arch])
    raw["train"].update(train_overrides)
    return config_from_dict(raw)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "nmt.cli", *args]


@pytest.mark.parametrize("arch", TRAINED)
def test_every_architecture_trains_and_loss_falls(
    data_dir: Path, tmp_path: Path, arch: str
) -> None:
    config = _config(
        data_dir,
        tmp_path / "run",
        arch,
        max_steps=30,
        log_every=3,
        valid_every=30,
        precision="bf16",
    )
    summary = train(config)
    losses = [r["loss"] for r in read_metrics(tmp_path / "run", "train")]
    assert summary["steps"] == 30
    assert losses[-1] < losses[0] * 0.9, losses
    checkpoint = load_checkpoint(tmp_path / "run" / "best.pt")
    assert checkpoint.config.model.arch == config.model.arch
    assert checkpoint.training is None and checkpoint.tokenizer
    assert (tmp_path / "run" / "config.yaml").is_file() and (
        tmp_path / "run" / "env.json"
    ).is_file()
    assert any((tmp_path / "run" / "tensorboard").iterdir())


def test_rdrop_learns_and_without_dropout_equals_plain_training(
    data_dir: Path, tmp_path: Path
) -> None:
    """R-Drop's two passes differ only by dropout: without dropout its KL term vanishes and the
    doubled batch's halved loss is the plain loss, so both runs follow the same loss curve."""
    steps = dict(max_steps=12, log_every=3, valid_every=12)
    rdrop = _config(data_dir, tmp_path / "rdrop", rdrop_alpha=5.0, **steps)
    train(rdrop)
    losses = [r["loss"] for r in read_metrics(tmp_path / "rdrop", "train")]
    assert losses[-1] < losses[0] * 0.9, losses

    curves = {}
    for name, alpha in (("plain0", 0.0), ("rdrop0", 5.0)):
        raw = tiny_config_dict(data_dir, tmp_path / name)
        raw["model"].update(
            ARCHS["transformer-pre"], dropout=0.0, attention_dropout=0.0, activation_dropout=0.0
        )
        raw["train"].update(steps, rdrop_alpha=alpha, log_every=1)
        train(config_from_dict(raw))
        curves[name] = [r["loss"] for r in read_metrics(tmp_path / name, "train")]
    # Step by step; the weights themselves differ in noise only (Adam rescales the float-level
    # gradient noise of parameters whose true gradient is zero, such as attention key biases).
    assert len(curves["plain0"]) == 12
    assert curves["rdrop0"] == pytest.approx(curves["plain0"], rel=1e-4)


def test_precision_of_a_run_on_this_cpu() -> None:
    """Emulated bf16 matmuls are many times slower than fp32, so auto must not pick them."""
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if has_native_bf16() else "fp32")
    assert resolve_precision("bf16", cpu) == "bf16"  # an explicit choice is kept (with a warning)
    assert resolve_precision("fp32", cpu) == "fp32"
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", cpu)


def test_budget_schedule_decays_by_the_epoch_cap_that_ends_the_run(
    data_dir: Path, tmp_path: Path
) -> None:
    """Steps and minutes would allow far more; the two epochs end the run, so the rate must
    have warmed up and decayed within them."""
    config = _config(
        data_dir,
        tmp_path / "run",
        schedule="budget",
        budget_warmup=0.2,
        min_lr=3e-6,
        max_epochs=2,
        max_steps=10_000,
        max_minutes=600,
        log_every=1,
        valid_every=10_000,
    )
    summary = train(config)
    rates = [r["lr"] for r in read_metrics(tmp_path / "run", "train")]
    peak = rates.index(max(rates))
    assert summary["stop_reason"] == "max_epochs" and len(rates) == summary["steps"] > 10
    assert max(rates) == pytest.approx(config.train.lr, rel=0.1)
    assert 0 < peak < len(rates) - 1
    assert rates[peak:] == sorted(rates[peak:], reverse=True)
    assert rates[-1] < config.train.lr * 0.02


def test_resume_reproduces_uninterrupted_run(data_dir: Path, tmp_path: Path) -> None:
    full = _config(data_dir, tmp_path / "full", max_steps=12, log_every=1, valid_every=6)
    train(full)
    part = _config(data_dir, tmp_path / "part", max_steps=6, log_every=1, valid_every=6)
    train(part)
    rest = _config(data_dir, tmp_path / "part", max_steps=12, log_every=1, valid_every=6)
    train(rest, resume=True)
    full_losses = [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "full", "train")]
    resumed_losses = [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "part", "train")]
    assert [s for s, _ in full_losses] == list(range(1, 13))
    assert [s for s, _ in resumed_losses] == [s for s, _ in full_losses]
    assert [loss for _, loss in resumed_losses] == pytest.approx(
        [loss for _, loss in full_losses], rel=1e-5
    )
    a = load_checkpoint(tmp_path / "full" / "last.pt").model
    b = load_checkpoint(tmp_path / "part" / "last.pt").model
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_resume_without_checkpoint_and_rerun_into_full_folder_fail_clearly(
    data_dir: Path, tmp_path: Path
) -> None:
    config = _config(data_dir, tmp_path / "run", max_steps=2, valid_every=2)
    with pytest.raises(Exception, match="no checkpoint to resume"):
        train(config, resume=True)
    train(config)
    with pytest.raises(Exception, match="already holds a run"):
        train(config)


def _write_config(path: Path, raw: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(raw))
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_sigkill_during_checkpoint_write_leaves_loadable_last(
    data_dir: Path, tmp_path: Path
) -> None:
    raw = tiny_config_dict(data_dir, tmp_path / "run")
    raw["train"].update(max_steps=100000, valid_every=1, valid_limit=1, log_every=1)
    cfg = _write_config(tmp_path / "cfg.yaml", raw)
    proc = subprocess.Popen(
        _cli("train", "--config", str(cfg)),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    run = tmp_path / "run"
    deadline = time.monotonic() + 120
    killed_mid_write = False
    try:
        # Wait until a checkpoint exists, then kill the moment a new one is being written.
        while time.monotonic() < deadline and not (run / "last.pt").is_file():
            time.sleep(0.05)
        while time.monotonic() < deadline:
            if any(run.glob(".last.pt.*.tmp")):
                proc.send_signal(signal.SIGKILL)
                killed_mid_write = True
                break
            time.sleep(0.001)
    finally:
        proc.kill()
        proc.wait()
    assert (run / "last.pt").is_file()
    checkpoint = load_checkpoint(run / "last.pt")
    assert checkpoint.step >= 1 and checkpoint.training is not None
    assert killed_mid_write, "never caught a checkpoint write in progress"


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(data_dir: Path, tmp_path: Path) -> None:
    raw = tiny_config_dict(data_dir, tmp_path / "run")
    raw["train"].update(max_steps=100000, valid_every=100000, log_every=1)
    cfg = _write_config(tmp_path / "cfg.yaml", raw)
    proc = subprocess.Popen(
        _cli("train", "--config", str(cfg)),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
        metrics.is_file() and metrics.read_text().count("\n") >= 3
    ):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    assert checkpoint.step >= 3
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["stop_reason"] == "signal"


@pytest.mark.slow
def test_two_process_gloo_ddp_matches_single_process(data_dir: Path, tmp_path: Path) -> None:
    def run(name: str, accum: int, launcher: list[str]) -> dict:
        raw = tiny_config_dict(data_dir, tmp_path / name)
        raw["model"].update(dropout=0.0, attention_dropout=0.0)  # ranks draw different masks
        raw["train"].update(
            max_steps=4, valid_every=4, accum_steps=accum, batch_tokens=512, log_every=1
        )
        cfg = _write_config(tmp_path / f"{name}.yaml", raw)
        out = subprocess.run(
            [*launcher, "train", "--config", str(cfg)],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return load_checkpoint(tmp_path / name / "last.pt").model

    single = run("single", 2, _cli())
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "nmt.cli",
    ]
    ddp = run("ddp", 1, torchrun)
    for key in single:
        torch.testing.assert_close(single[key], ddp[key], rtol=1e-4, atol=1e-5)


def test_bad_config_and_missing_data_fail_with_one_line(data_dir: Path, tmp_path: Path) -> None:
    raw = tiny_config_dict(data_dir, tmp_path / "run")
    raw["train"]["learning_rate"] = 0.1
    cfg = _write_config(tmp_path / "bad.yaml", raw)
    out = subprocess.run(
        _cli("train", "--config", str(cfg)), env=_env(), capture_output=True, text=True
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.learning_rate" in lines[0] and "valid keys" in lines[0]

    raw = tiny_config_dict(tmp_path / "nowhere", tmp_path / "run2")
    cfg = _write_config(tmp_path / "missing.yaml", raw)
    out = subprocess.run(
        _cli("train", "--config", str(cfg)), env=_env(), capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("nmt train: error:") and str(tmp_path / "nowhere") in last, out.stderr


def test_diverging_loss_skips_steps_then_stops_with_a_clear_message(
    data_dir: Path, tmp_path: Path
) -> None:
    from nmt.train import TrainingError

    config = _config(
        data_dir,
        tmp_path / "run",
        lr=1e30,
        warmup_steps=0,
        schedule="constant",
        max_nonfinite=3,
        max_steps=50,
        log_every=1,
    )
    with pytest.raises(TrainingError, match="not finite for 3 updates in a row"):
        train(config)


@pytest.mark.slow
def test_two_process_resume_reproduces_uninterrupted_run(data_dir: Path, tmp_path: Path) -> None:
    """Each rank's dropout stream and the plateau schedule survive an interruption under DDP."""
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "nmt.cli",
    ]

    def run(name: str, max_steps: int, resume: bool) -> None:
        raw = tiny_config_dict(data_dir, tmp_path / name)
        raw["train"].update(
            max_steps=max_steps,
            valid_every=2,
            batch_tokens=512,
            log_every=1,
            schedule="plateau",
            plateau_patience=0,
            warmup_steps=0,
        )
        cfg = _write_config(tmp_path / f"{name}-{max_steps}.yaml", raw)
        extra = ["--resume"] if resume else []
        out = subprocess.run(
            [*torchrun, "train", "--config", str(cfg), *extra],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-3000:]

    run("full", 4, resume=False)
    run("part", 2, resume=False)
    run("part", 4, resume=True)
    full = [r["loss"] for r in read_metrics(tmp_path / "full", "train")]
    part = [r["loss"] for r in read_metrics(tmp_path / "part", "train")]
    assert len(full) == 4 and part == pytest.approx(full, rel=1e-5)
    a = load_checkpoint(tmp_path / "full" / "last.pt").model
    b = load_checkpoint(tmp_path / "part" / "last.pt").model
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_resume_with_another_world_size_keeps_the_global_data_position(
    data_dir: Path, tmp_path: Path
) -> None:
    """Saved by one process, resumed by two (gloo): the per-rank data position is mapped to the
    rows the saved run had consumed, so no data is skipped."""
    from nmt.batching import TokenBatchSampler
    from nmt.data import prepare_data

    raw = tiny_config_dict(data_dir, tmp_path / "run")
    raw["train"].update(max_steps=3, valid_every=3, batch_tokens=512, log_every=1)
    out = subprocess.run(
        _cli("train", "--config", str(_write_config(tmp_path / "a.yaml", raw))),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    saved = load_checkpoint(tmp_path / "run" / "last.pt").training
    assert saved is not None and saved.world_size == 1 and saved.progress["batch_in_epoch"] == 3

    raw["train"]["max_steps"] = 4
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "nmt.cli",
    ]
    out = subprocess.run(
        [*torchrun, "train", "--config", str(_write_config(tmp_path / "b.yaml", raw)), "--resume"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming 2 process(es) from a run of 1" in out.stderr
    resumed = load_checkpoint(tmp_path / "run" / "last.pt").training
    assert resumed is not None and resumed.world_size == 2

    config = config_from_dict(raw)
    lengths = prepare_data(config, tmp_path / "run").train.batch_lengths()
    one = TokenBatchSampler(*lengths, 512, seed=config.train.seed)
    two = TokenBatchSampler(*lengths, 512, seed=config.train.seed, world_size=2)
    rows_seen = one.rows_before(3)
    continued_at = two.position_after(rows_seen)
    assert rows_seen - two.rows_before(continued_at) < max(map(len, two.epoch_batches())) * 2
    assert resumed.progress["batch_in_epoch"] == continued_at + 1  # one step by two ranks
