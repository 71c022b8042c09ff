"""Checkpoint files: atomic writes, loading that never runs code, averaging, run snapshots."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from nmt.checkpoint import (
    Checkpoint,
    CheckpointError,
    TrainingState,
    VocabSizes,
    average_checkpoints,
    copy_atomic,
    load_checkpoint,
    save_checkpoint,
)
from nmt.config import config_from_dict
from nmt.runfolder import snapshots_of_run


def _payload(value: float) -> Checkpoint:
    training = TrainingState(
        optimizer={}, lr={}, scaler={}, rng=[{"torch": torch.zeros(4)}], progress={"step": 1}
    )
    return Checkpoint(
        model={"w": torch.full((2, 2), value), "steps": torch.tensor(3)},
        config=config_from_dict({"name": "x"}),
        tokenizer={"models": {"joint": b"proto"}},
        vocab=VocabSizes(8, 8, True),
        metrics={"valid_bleu": value},
        training=training,
    )


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(_payload(1.0), path)
    save_checkpoint(_payload(2.0), path)
    assert load_checkpoint(path).model["w"][0, 0] == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    copy_atomic(path, tmp_path / "best.pt")
    assert (tmp_path / "best.pt").read_bytes() == path.read_bytes()
    plain = tmp_path / "plain"
    plain.write_bytes(b"")  # the mode open() gives a new file under this umask
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_loading_never_executes_code(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump(
            {"model": _RunsCode(), "config": {}, "tokenizer": {}, "vocab": {}}, f, protocol=2
        )
    with pytest.raises(CheckpointError, match="could run code") as error:
        load_checkpoint(path)
    assert "weights_only" not in str(error.value) and "\n" not in str(error.value)


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
    torch.testing.assert_close(averaged.model["w"], torch.full((2, 2), 3.0))
    assert averaged.model["steps"] == 3  # integer buffers are taken, not averaged
    assert averaged.training is None and averaged.metrics == {}
    assert len(averaged.meta["averaged_from"]) == 3


def test_averaging_keeps_tied_tables_tied(tmp_path: Path) -> None:
    paths = []
    for value in (1.0, 3.0):
        checkpoint = _payload(value)
        table = torch.full((4, 2), value)
        checkpoint.model.update({"embedding": table, "output": table})
        paths.append(tmp_path / f"{value}.pt")
        save_checkpoint(checkpoint, paths[-1])
    averaged = average_checkpoints(paths)
    torch.testing.assert_close(averaged.model["embedding"], torch.full((4, 2), 2.0))
    assert averaged.model["embedding"].data_ptr() == averaged.model["output"].data_ptr()
    assert averaged.model["w"].data_ptr() != averaged.model["embedding"].data_ptr()


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    checkpoint = _payload(1.5)
    save_checkpoint(checkpoint, tmp_path / "c.pt")
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert loaded.config == checkpoint.config and loaded.vocab == checkpoint.vocab
    assert loaded.training is not None and loaded.training.progress == {"step": 1}
    assert loaded.training.world_size == 1 and loaded.metrics == {"valid_bleu": 1.5}
    assert loaded.tokenizer == checkpoint.tokenizer


def test_tokenizer_protos_are_stored_compressed_and_older_files_still_load(
    tmp_path: Path,
) -> None:
    """SentencePiece protos are written as xz-compressed uint8 tensors (torch.save's pickle
    protocol 2 would store bytes 1.4x larger); files with plain bytes still load."""
    proto = bytes(range(256)) * 64  # like a proto: every byte value, and repetitive
    checkpoint = dataclasses.replace(
        _payload(1.0), tokenizer={"version": 1, "models": {"joint": proto}}
    )
    save_checkpoint(checkpoint, tmp_path / "new.pt")
    payload = torch.load(tmp_path / "new.pt", weights_only=True)
    assert "models" not in payload["tokenizer"]
    assert payload["tokenizer"]["models_xz"]["joint"].dtype == torch.uint8
    assert (tmp_path / "new.pt").stat().st_size < len(proto)
    assert load_checkpoint(tmp_path / "new.pt").tokenizer == checkpoint.tokenizer
    payload["tokenizer"] = checkpoint.tokenizer  # as older versions wrote it
    torch.save(payload, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt").tokenizer == checkpoint.tokenizer


def test_text_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "notes.pt"
    path.write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match="not a complete PyTorch checkpoint") as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value)


def test_training_state_of_older_checkpoints(tmp_path: Path) -> None:
    """Older files hold one process's random state as a dict and no world size."""
    payload = _payload(1.0).to_payload()
    payload["training"] = {
        "optimizer": {},
        "lr": {},
        "scaler": {},
        "progress": {"step": 1},
        "rng": [{"torch": torch.zeros(4)}, {"torch": torch.ones(4)}],
    }
    torch.save(payload, tmp_path / "two.pt")
    two = load_checkpoint(tmp_path / "two.pt").training
    assert two is not None and two.world_size == 2
    payload["training"]["rng"] = {"torch": torch.zeros(4)}
    torch.save(payload, tmp_path / "one.pt")
    one = load_checkpoint(tmp_path / "one.pt").training
    assert one is not None and one.world_size == 1 and len(one.rng) == 1
