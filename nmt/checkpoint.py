"""Checkpoints: one typed, self-contained object per save, written atomically, loaded safely.

`Checkpoint` is the one description of the format; training writes it, translation and
averaging read it. On disk it is a plain dict of tensors, numbers, strings and bytes (loaded
with `weights_only=True`, so a file can never run code):
  model        state_dict of the translator
  config       the full Config as a plain dict
  tokenizer    the SentencePiece model protos and their settings; on disk the protos are
               xz-compressed uint8 tensors (`models_xz`): a third of their size, and bytes
               pickled by torch.save's protocol 2 would grow by half (older files: `models`)
  vocab        {"src": int, "tgt": int, "joint": bool (one SentencePiece model for both sides)}
  step, epoch, batch_in_epoch    where training stands
  metrics      e.g. {"valid_bleu": ..., "valid_loss": ...} at save time
  meta         parameter count, run folder, save time, precision (versions: env.json)
  training     optimizer / scheduler / scaler / RNG / progress states (only in last.pt)
"""

from __future__ import annotations

import dataclasses
import hashlib
import lzma
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch

from nmt.config import Config, ConfigError, config_from_dict
from nmt.files import write_atomic


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or is not one of ours."""


REQUIRED_KEYS = ("model", "config", "tokenizer", "vocab")


@dataclass(frozen=True)
class VocabSizes:
    src: int
    tgt: int
    joint: bool = False  # one SentencePiece model (and embedding table) for both sides


@dataclass
class TrainingState:
    """What `nmt train --resume` needs besides the weights to continue exactly."""

    optimizer: dict[str, Any]
    lr: dict[str, float]
    scaler: dict[str, Any]  # empty when the run had no loss scaling (bf16, fp32)
    rng: list[dict[str, Any]]  # one random state per rank, in rank order
    progress: dict[str, Any]  # nmt.train.Progress as a dict
    world_size: int = 1  # processes that wrote it (the data position is per rank)
    precision: str = ""  # the precision the run trained in


@dataclass
class Checkpoint:
    model: dict[str, torch.Tensor]
    config: Config
    tokenizer: dict[str, Any]  # nmt.tokenizer.Tokenizer.to_state()
    vocab: VocabSizes
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    training: TrainingState | None = None

    def for_translation(self) -> Checkpoint:
        """The same checkpoint without its training state (snapshots, averages, exports)."""
        return dataclasses.replace(self, training=None)

    def to_payload(self) -> dict[str, Any]:
        """The dict written to disk (plain types only)."""
        payload: dict[str, Any] = {
            "model": self.model,
            "config": self.config.to_dict(),
            "tokenizer": _packed_tokenizer(self.tokenizer),
            "vocab": dataclasses.asdict(self.vocab),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "metrics": self.metrics,
            "meta": self.meta,
        }
        if self.training is not None:
            payload["training"] = dataclasses.asdict(self.training)
        return payload

    @classmethod
    def from_payload(cls, payload: Any, source: str = "checkpoint") -> Checkpoint:
        """Validate a loaded dict; `source` names it in errors."""
        missing = (
            [k for k in REQUIRED_KEYS if k not in payload]
            if isinstance(payload, dict)
            else list(REQUIRED_KEYS)
        )
        if missing:
            raise CheckpointError(
                f"{source} is not an nmt checkpoint (missing {', '.join(missing)})"
            )
        try:
            config = config_from_dict(payload["config"])
        except ConfigError as e:
            raise CheckpointError(f"{source}: its config is not valid here: {e}") from None
        vocab = payload["vocab"]
        training = payload.get("training")
        return cls(
            model=payload["model"],
            config=config,
            tokenizer=_unpacked_tokenizer(payload["tokenizer"]),
            vocab=VocabSizes(int(vocab["src"]), int(vocab["tgt"]), bool(vocab.get("joint", False))),
            step=int(payload.get("step", 0)),
            epoch=int(payload.get("epoch", 0)),
            batch_in_epoch=int(payload.get("batch_in_epoch", 0)),
            metrics=dict(payload.get("metrics") or {}),
            meta=dict(payload.get("meta") or {}),
            training=_training_state(training) if training else None,
        )


def _packed_tokenizer(state: dict[str, Any]) -> dict[str, Any]:
    """The tokenizer state as written: its SentencePiece protos xz-compressed, as tensors."""
    packed = {key: value for key, value in state.items() if key != "models"}
    packed["models_xz"] = {
        name: torch.frombuffer(bytearray(lzma.compress(proto)), dtype=torch.uint8)
        for name, proto in state["models"].items()
    }
    return packed


def _unpacked_tokenizer(saved: dict[str, Any]) -> dict[str, Any]:
    """The tokenizer state (Tokenizer.to_state) of a file, written by this or older versions."""
    if "models_xz" not in saved:
        return saved
    state = {key: value for key, value in saved.items() if key != "models_xz"}
    state["models"] = {
        name: lzma.decompress(proto.numpy().tobytes()) for name, proto in saved["models_xz"].items()
    }
    return state


def _training_state(saved: dict[str, Any]) -> TrainingState:
    """The training state, also as older versions wrote it: one process saved its random state
    as a dict, and the world size was not recorded (it is the number of random states)."""
    rng = saved["rng"] if isinstance(saved["rng"], list) else [saved["rng"]]
    return TrainingState(**{"world_size": len(rng), **saved, "rng": rng})


def save_checkpoint(checkpoint: Checkpoint, path: str | Path) -> None:
    """Write `checkpoint` to `path` atomically (see nmt.files.write_atomic)."""
    payload = checkpoint.to_payload()
    write_atomic(path, lambda f: torch.save(payload, f))


def copy_atomic(src: str | Path, dst: str | Path) -> None:
    """Copy a file so that `dst` is always either the old or the complete new file."""

    def copy(out: BinaryIO) -> None:
        with open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, 1 << 20)

    write_atomic(dst, copy)


def load_checkpoint(path: str | Path, mmap: bool = False) -> Checkpoint:
    """Load a checkpoint onto the CPU without executing code from it.

    Always to the CPU: `load_state_dict` moves weights and optimizer moments to their
    parameters' device, while random-number states must stay CPU tensors, and Adam's step
    counters on the CPU spare a host sync per parameter and step. `mmap`: map the file, so
    tensors are read only when used (to read a checkpoint's config or languages).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # torch's own text advises weights_only=False: never repeat it
        if isinstance(e, pickle.UnpicklingError) and "GLOBAL" in str(e):
            raise CheckpointError(
                f"cannot read checkpoint {path}: it holds pickled Python objects, not only "
                "tensors and plain values, and loading those could run code from the file"
            ) from None
        raise CheckpointError(
            f"cannot read checkpoint {path}: not a complete PyTorch "
            f"checkpoint file ({type(e).__name__})"
        ) from None
    return Checkpoint.from_payload(payload, str(path))


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


TensorIdentity = tuple[int, torch.dtype, tuple[int, ...]]


def tensor_identity(tensor: torch.Tensor) -> TensorIdentity:
    """Equal for the names of one tied tensor (same memory, dtype and shape) in a state dict,
    so code that rebuilds weights can keep them tied."""
    return (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape))


def average_checkpoints(paths: list[str | Path]) -> Checkpoint:
    """Average the model weights of several checkpoints of one run (float tensors only).

    The result keeps the config, tokenizer and metadata of the last checkpoint and drops the
    training state, so it is a checkpoint for translation, not for resuming.
    """
    if not paths:
        raise CheckpointError("no checkpoints to average")
    checkpoints = [load_checkpoint(p) for p in paths]
    keys = checkpoints[0].model.keys()
    for p, checkpoint in zip(paths, checkpoints):
        if checkpoint.model.keys() != keys:
            raise CheckpointError(f"{p} has different parameters from {paths[0]}")
    averaged: dict[str, torch.Tensor] = {}
    # Tied tables (one tensor under several names) stay one tensor, so the average is tied
    # like its inputs and a slim export stores the table once.
    shared: dict[TensorIdentity, torch.Tensor] = {}
    for key in keys:
        tensors = [checkpoint.model[key] for checkpoint in checkpoints]
        if not tensors[0].is_floating_point():
            averaged[key] = tensors[-1]
            continue
        tie = tensor_identity(tensors[0])
        if tie not in shared:
            stacked = torch.stack([t.double() for t in tensors])
            shared[tie] = stacked.mean(0).to(tensors[0].dtype)
        averaged[key] = shared[tie]
    return dataclasses.replace(
        checkpoints[-1].for_translation(),
        model=averaged,
        metrics={},  # the inputs' scores are not the average's
        meta=dict(checkpoints[-1].meta, averaged_from=[str(p) for p in paths]),
    )
