"""Slim checkpoints: what a shipped model needs to translate, and nothing else.

A slim checkpoint is an ordinary checkpoint (so everything that loads one loads it) with
the training state dropped, the weights stored in half precision (they are cast back to
fp32 when loaded; the model computes as before), and the decoding settings chosen on the
validation split written into its config, so that `nmt translate --checkpoint slim.pt`
decodes as its model card says with no flags.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from nmt.checkpoint import (
    Checkpoint,
    TensorIdentity,
    file_sha256,
    load_checkpoint,
    save_checkpoint,
    tensor_identity,
)
from nmt.config import ConfigError, DecodeConfig, validate

WEIGHT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def cast_weights(weights: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Floating-point tensors cast to `dtype`; tensors that share storage (tied embeddings)
    still share it afterwards, so a tied table is stored once."""
    cast: dict[TensorIdentity, torch.Tensor] = {}
    result: dict[str, torch.Tensor] = {}
    for name, tensor in weights.items():
        if not tensor.is_floating_point():
            result[name] = tensor
            continue
        key = tensor_identity(tensor)
        if key not in cast:
            cast[key] = tensor.detach().to(dtype).contiguous()
        result[name] = cast[key]
    return result


def slim_checkpoint(
    checkpoint: Checkpoint,
    weights_dtype: str = "fp16",
    decode_changes: dict[str, Any] | None = None,
    source: str | Path | None = None,
) -> Checkpoint:
    """`checkpoint` for shipping: no training state, weights in `weights_dtype`, decoding
    defaults changed by `decode_changes` (e.g. {"beam_size": 5, "length_penalty": 1.3})."""
    if weights_dtype not in WEIGHT_DTYPES:
        raise ConfigError(
            f"unknown weights dtype {weights_dtype!r}; choose one of {', '.join(WEIGHT_DTYPES)}"
        )
    decode = _changed_decode(checkpoint.config.decode, decode_changes or {})
    config = dataclasses.replace(checkpoint.config, decode=decode)
    validate(config)
    meta = dict(checkpoint.meta, weights_dtype=weights_dtype)
    if source is not None:
        meta.update(exported_from=Path(source).name, exported_from_sha256=file_sha256(source))
    return dataclasses.replace(
        checkpoint.for_translation(),
        model=cast_weights(checkpoint.model, WEIGHT_DTYPES[weights_dtype]),
        config=config,
        meta=meta,
    )


def export_slim(
    source: str | Path,
    output: str | Path,
    weights_dtype: str = "fp16",
    decode_changes: dict[str, Any] | None = None,
) -> Checkpoint:
    """Read the checkpoint at `source`, write its slim form to `output`, return it."""
    slim = slim_checkpoint(load_checkpoint(source), weights_dtype, decode_changes, source)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(slim, output)
    return slim


def _changed_decode(decode: DecodeConfig, changes: dict[str, Any]) -> DecodeConfig:
    valid = {f.name for f in dataclasses.fields(DecodeConfig)}
    unknown = sorted(set(changes) - valid)
    if unknown:
        raise ConfigError(
            f"unknown decoding setting {', '.join(unknown)}; valid: {', '.join(sorted(valid))}"
        )
    return dataclasses.replace(decode, **changes)
