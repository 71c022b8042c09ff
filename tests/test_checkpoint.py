"""Checkpoint files: atomic writes, loading that never runs code, averaging, run snapshots."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from nmt.checkpoint import (
    CheckpointError,
    average_checkpoints,
    copy_atomic,
    load_checkpoint,
    save_checkpoint,
    snapshots_of_run,
)


def _payload(value: float) -> dict:
    return {"model": {"w": torch.full((2, 2), value), "steps": torch.tensor(3)},
            "config": {"name": "x"}, "tokenizer": {"models": {"joint": b"proto"}},
            "vocab": {"src": 8, "tgt": 8, "joint": True}, "metrics": {"valid_bleu": value},
            "training": {"optimizer": {}}}


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(_payload(1.0), path)
    save_checkpoint(_payload(2.0), path)
    assert load_checkpoint(path)["model"]["w"][0, 0] == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    copy_atomic(path, tmp_path / "best.pt")
    assert (tmp_path / "best.pt").read_bytes() == path.read_bytes()


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_loading_never_executes_code(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": _RunsCode(), "config": {}, "tokenizer": {}, "vocab": {}}, f, protocol=2)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(path)


def test_truncated_or_foreign_files_are_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(_payload(1.0), path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(path)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an nmt checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_average_and_run_snapshots(tmp_path: Path) -> None:
    snaps = []
    for step, (value, bleu) in enumerate([(1.0, 30.0), (2.0, 35.0), (6.0, 31.0)], start=1):
        save_checkpoint(_payload(value), tmp_path / f"ckpt-{step}.pt")
        snaps.append({"path": f"ckpt-{step}.pt", "step": step, "bleu": bleu})
    (tmp_path / "checkpoints.json").write_text(json.dumps(snaps))
    assert [p.name for p in snapshots_of_run(tmp_path, last=2)] == ["ckpt-2.pt", "ckpt-3.pt"]
    assert [p.name for p in snapshots_of_run(tmp_path, best=2)] == ["ckpt-2.pt", "ckpt-3.pt"]
    assert [p.name for p in snapshots_of_run(tmp_path, best=1)] == ["ckpt-2.pt"]
    averaged = average_checkpoints(snapshots_of_run(tmp_path, last=3))
    torch.testing.assert_close(averaged["model"]["w"], torch.full((2, 2), 3.0))
    assert averaged["model"]["steps"] == 3  # integer buffers are taken, not averaged
    assert "training" not in averaged and averaged["metrics"] == {}
    assert len(averaged["meta"]["averaged_from"]) == 3
