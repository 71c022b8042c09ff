"""Checkpoints: one self-contained file per save, written atomically, loaded without pickle code.

A checkpoint is a plain dict of tensors, numbers, strings and bytes:
  model        state_dict of the translator
  config       the full Config as a plain dict
  tokenizer    the SentencePiece model protos (bytes) and their settings
  vocab        {"src": int, "tgt": int}
  step, epoch, batch_in_epoch    where training stands (the data position)
  vocab        also {"joint": bool}: whether one SentencePiece model serves both sides
  metrics      e.g. {"valid_bleu": ..., "valid_loss": ...} at save time
  meta         parameter count, run folder, save time, precision (versions: env.json)
  training     optimizer / scheduler / scaler / RNG states (absent in averaged or exported files)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or is not one of ours."""


REQUIRED_KEYS = ("model", "config", "tokenizer", "vocab")


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write `payload` to `path` atomically (see `_write_atomic`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, lambda f: torch.save(payload, f))


def copy_atomic(src: str | Path, dst: str | Path) -> None:
    """Copy a file so that `dst` is always either the old or the complete new file."""
    def copy(out: BinaryIO) -> None:
        with open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, 1 << 20)

    _write_atomic(Path(dst), copy)


def _write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Temp file in the same folder, fsync, rename: a crash (even SIGKILL) at any moment leaves
    either the old file or the new one, never a truncated file under the final name."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without executing code from it (`weights_only=True`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated file, foreign pickle, ...
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from None
    missing = [k for k in REQUIRED_KEYS if k not in payload] if isinstance(payload, dict) else REQUIRED_KEYS
    if missing:
        raise CheckpointError(f"{path} is not an nmt checkpoint (missing {', '.join(missing)})")
    return payload


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def snapshots_of_run(run_dir: str | Path, last: int | None = None, best: int | None = None) -> list[Path]:
    """The `last` newest or `best` best-BLEU snapshots listed in a run's checkpoints.json."""
    index = Path(run_dir) / "checkpoints.json"
    if not index.is_file():
        raise CheckpointError(f"no checkpoints.json in {run_dir}: is it a run folder?")
    snaps = json.loads(index.read_text())
    if best:
        chosen = sorted(snaps, key=lambda s: -s["bleu"])[:best]
    else:
        chosen = sorted(snaps, key=lambda s: s["step"])[-(last or len(snaps)):]
    return [Path(run_dir) / s["path"] for s in sorted(chosen, key=lambda s: s["step"])]


def average_checkpoints(paths: list[str | Path]) -> dict[str, Any]:
    """Average the model weights of several checkpoints of one run (float tensors only).

    The result keeps the config, tokenizer and metadata of the last checkpoint and drops the
    training state, so it is a checkpoint for translation, not for resuming.
    """
    if not paths:
        raise CheckpointError("no checkpoints to average")
    payloads = [load_checkpoint(p) for p in paths]
    keys = payloads[0]["model"].keys()
    for p, payload in zip(paths, payloads):
        if payload["model"].keys() != keys:
            raise CheckpointError(f"{p} has different parameters from {paths[0]}")
    averaged: dict[str, torch.Tensor] = {}
    for key in keys:
        tensors = [payload["model"][key] for payload in payloads]
        if tensors[0].is_floating_point():
            stacked = torch.stack([t.double() for t in tensors])
            averaged[key] = stacked.mean(0).to(tensors[0].dtype)
        else:
            averaged[key] = tensors[-1]
    result = {k: v for k, v in payloads[-1].items() if k != "training"}
    result["model"] = averaged
    result["metrics"] = {}  # the inputs' scores are not the average's
    result["meta"] = dict(result.get("meta", {}), averaged_from=[str(p) for p in paths])
    return result
