"""Export a Transformer checkpoint to a CTranslate2 model directory (`nmt export`).

The directory is a complete model for `Translator.load` (see nmt/ct2_engine.py): CTranslate2's
`model.bin`, `config.json` and vocabularies, our SentencePiece model(s) and `tokenizer.json`
(as `Tokenizer.save` writes them), and `nmt_model.json`: the training config (language pair,
lowercasing, decoding defaults), the checkpoint's step and scores, the source checkpoint's
path and sha256, the quantization and the longest target the position table allows.

The spec is filled by hand from our state dict, layer by layer. What must match for the
outputs to be the same (not only close):
- positions: our sinusoidal table interleaves sin and cos, CTranslate2's built-in one does
  not, so the table is written into the model (long enough for the longest output allowed);
- LayerNorm epsilon: torch's 1e-5, not CTranslate2's default;
- the alignment: `model.alignment_layer`'s cross-attention averaged over all heads.
Sliding-window and linear attention have no CTranslate2 counterpart (its `sliding_window`
only bounds a decoder's key/value cache, the encoder sees every position), and CTranslate2
has no RNN decoders: those models are refused with the reason, they keep the PyTorch engine.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from nmt.checkpoint import Checkpoint, file_sha256, load_checkpoint
from nmt.config import Config, ModelConfig
from nmt.model import alignment_index, build_model, count_parameters
from nmt.slim import slim_checkpoint
from nmt.tokenizer import Tokenizer
from nmt.transformer import SinusoidalPositions

QUANTIZATIONS = ("float32", "int8", "int8_float32", "int16", "float16", "bfloat16")
METADATA_FILE = "nmt_model.json"
METADATA_VERSION = 1
# Rows of the written sinusoidal table at least (positions beyond it cannot be decoded):
# room for `--max-len` requests longer than the decode config's a * source + b rule allows.
MIN_SINUSOIDAL_POSITIONS = 1024
LAYER_NORM_EPSILON = 1e-5  # torch.nn.LayerNorm's default, which our models use


class ExportError(ValueError):
    """A checkpoint that cannot be exported, or an export that cannot be written."""


def require_ctranslate2() -> Any:
    """The ctranslate2 module, or an ExportError saying how to install it."""
    try:
        import ctranslate2
    except ImportError:
        raise ExportError(
            "CTranslate2 is not installed: pip install 'nmt[ct2]' (or ctranslate2>=4.5)"
        ) from None
    return ctranslate2


def check_exportable(config: ModelConfig) -> None:
    """Raise ExportError naming what CTranslate2 cannot run faithfully."""
    if config.arch != "transformer":
        raise ExportError(
            f"model.arch is {config.arch!r}: CTranslate2 has no RNN decoders, so RNN models "
            "cannot be exported; translate and serve them with the checkpoint (PyTorch engine)"
        )
    if config.self_attention_window > 0:
        raise ExportError(
            f"model.self_attention_window is {config.self_attention_window}: CTranslate2 has no "
            "banded (local) self-attention (its sliding_window only bounds a decoder's "
            "key/value cache; its encoder always sees every position), so the export would "
            "translate differently; use the checkpoint (PyTorch engine)"
        )
    for key in ("self_attention", "cross_attention"):
        if getattr(config, key) != "softmax":
            raise ExportError(
                f"model.{key} is {getattr(config, key)!r}: CTranslate2 has only softmax "
                "attention, so linear attention cannot be exported; use the checkpoint "
                "(PyTorch engine)"
            )


def export_ctranslate2(
    checkpoint_path: str | Path,
    output_dir: str | Path,
    quantization: str = "float32",
    decode_changes: dict[str, Any] | None = None,
) -> Path:
    """Write the CTranslate2 model of a Transformer checkpoint into `output_dir` (new or
    empty), atomically: a failed export leaves no partial directory. `decode_changes` (e.g.
    {"beam_size": 5, "length_penalty": 1.0}) become its decoding defaults. Returns the
    directory."""
    if quantization not in QUANTIZATIONS:
        raise ExportError(
            f"unknown quantization {quantization!r}; choose one of {', '.join(QUANTIZATIONS)}"
        )
    output = Path(output_dir)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ExportError(f"{output} already exists; choose a new --output or remove it")
    checkpoint = slim_checkpoint(load_checkpoint(checkpoint_path), "fp32", decode_changes)
    check_exportable(checkpoint.config.model)
    require_ctranslate2()
    checkpoint.meta["parameters"] = _checked_parameters(checkpoint, checkpoint_path)
    tokenizer = Tokenizer.from_state(checkpoint.tokenizer)
    spec, target_positions = build_spec(checkpoint, tokenizer)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        spec.validate()
        spec.optimize(quantization=quantization)
        spec.save(str(staging))
        tokenizer.save(staging)
        metadata = _metadata(checkpoint, checkpoint_path, quantization, target_positions)
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2), encoding="utf-8")
        if output.exists():
            output.rmdir()
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


def _checked_parameters(checkpoint: Checkpoint, path: str | Path) -> int:
    """The model's parameter count, once its weights are known to fit its config."""
    model = build_model(
        checkpoint.config.model,
        checkpoint.vocab.src,
        checkpoint.vocab.tgt,
        joint_vocab=checkpoint.vocab.joint,
    )
    try:
        model.load_state_dict(checkpoint.model)
    except RuntimeError as e:
        raise ExportError(f"{path}: its weights do not fit its config: {e}") from None
    return count_parameters(model)


def _metadata(
    checkpoint: Checkpoint, path: str | Path, quantization: str, target_positions: int
) -> dict[str, Any]:
    import ctranslate2

    return {
        "version": METADATA_VERSION,
        "config": checkpoint.config.to_dict(),
        "vocab": {
            "src": checkpoint.vocab.src,
            "tgt": checkpoint.vocab.tgt,
            "joint": checkpoint.vocab.joint,
        },
        "parameters": checkpoint.meta["parameters"],
        "step": checkpoint.step,
        "metrics": checkpoint.metrics,
        "source_checkpoint": str(path),
        "source_sha256": file_sha256(path),
        "quantization": quantization,
        "max_target_positions": target_positions,
        "ctranslate2_version": ctranslate2.__version__,
    }


def target_positions(config: Config) -> int:
    """Decoder positions the exported model can encode: the learned table's size, or a
    sinusoidal table long enough for a * (longest source) + b tokens and the EOS step."""
    model = config.model
    if model.positions == "learned":
        return model.max_positions
    longest = math.floor(config.decode.max_len_a * model.max_positions + config.decode.max_len_b)
    return max(MIN_SINUSOIDAL_POSITIONS, longest + 1, model.max_positions)


# --------------------------------------------------------------------------- spec filling


def build_spec(checkpoint: Checkpoint, tokenizer: Tokenizer) -> tuple[Any, int]:
    """The filled TransformerSpec of a checked checkpoint, and its decoder position count."""
    from ctranslate2.specs import transformer_spec

    config = checkpoint.config.model
    weights = {k: v.detach().float().cpu().numpy() for k, v in checkpoint.model.items()}
    pre_norm = config.norm == "pre"
    spec = transformer_spec.TransformerSpec.from_config(
        (config.encoder_layers, config.decoder_layers),
        config.heads,
        pre_norm=pre_norm,
        alignment_layer=alignment_index(config.alignment_layer, config.decoder_layers),
        alignment_heads=config.heads,  # every head, averaged as ours are
    )
    spec.config.layer_norm_epsilon = LAYER_NORM_EPSILON
    spec.config.add_source_eos = False  # the engine passes our source EOS itself
    encoder_positions = config.max_positions
    decoder_positions = target_positions(checkpoint.config)
    _fill_embeddings(spec.encoder, weights, "encoder", config, encoder_positions)
    _fill_embeddings(spec.decoder, weights, "decoder", config, decoder_positions)
    for i, layer in enumerate(spec.encoder.layer):
        scope = f"encoder.layers.{i}"
        _fill_attention(layer.self_attention, weights, f"{scope}.self_attn", f"{scope}.attn_norm")
        _fill_ffn(layer.ffn, weights, scope)
    for i, layer in enumerate(spec.decoder.layer):
        scope = f"decoder.layers.{i}"
        _fill_attention(layer.self_attention, weights, f"{scope}.self_attn", f"{scope}.self_norm")
        _fill_attention(
            layer.attention, weights, f"{scope}.cross_attn", f"{scope}.cross_norm", cross=True
        )
        _fill_ffn(layer.ffn, weights, scope)
    if pre_norm:
        _fill_norm(spec.encoder.layer_norm, weights, "encoder.final_norm")
        _fill_norm(spec.decoder.layer_norm, weights, "decoder.final_norm")
    spec.decoder.projection.weight = weights["decoder.output.weight"]
    spec.register_source_vocabulary(_pieces(tokenizer, "src"))
    spec.register_target_vocabulary(_pieces(tokenizer, "tgt"))
    return spec, decoder_positions


def _pieces(tokenizer: Tokenizer, side: str) -> list[str]:
    if side == "src":
        return tokenizer.src_pieces(list(range(tokenizer.src_vocab_size)))
    return tokenizer.tgt_pieces(list(range(tokenizer.tgt_vocab_size)))


def _fill_embeddings(
    stack: Any, weights: dict[str, np.ndarray], side: str, config: ModelConfig, positions: int
) -> None:
    """Token table (scaled by sqrt(d) on use, as ours) and the position table."""
    table = weights[f"{side}.embed.embedding.weight"]
    embeddings = stack.embeddings[0] if isinstance(stack.embeddings, list) else stack.embeddings
    embeddings.weight = table
    stack.scale_embeddings = True
    if config.positions == "learned":
        stack.position_encodings.encodings = weights[f"{side}.embed.positions.table.weight"]
    else:
        sinusoid = SinusoidalPositions(config.embed_dim)
        stack.position_encodings.encodings = sinusoid(0, positions).numpy()


def _fill_attention(
    spec: Any, weights: dict[str, np.ndarray], scope: str, norm: str, cross: bool = False
) -> None:
    """Our packed in_proj [3E,E] (q, k, v) as CTranslate2's fused layout: self-attention one
    qkv projection, cross-attention q and a fused kv."""
    weight, bias = weights[f"{scope}.in_proj_weight"], weights[f"{scope}.in_proj_bias"]
    dim = weight.shape[1]
    if cross:
        spec.linear[0].weight, spec.linear[0].bias = weight[:dim], bias[:dim]
        spec.linear[1].weight, spec.linear[1].bias = weight[dim:], bias[dim:]
    else:
        spec.linear[0].weight, spec.linear[0].bias = weight, bias
    out = spec.linear[-1]
    out.weight, out.bias = weights[f"{scope}.out_proj.weight"], weights[f"{scope}.out_proj.bias"]
    _fill_norm(spec.layer_norm, weights, norm)


def _fill_ffn(spec: Any, weights: dict[str, np.ndarray], scope: str) -> None:
    spec.linear_0.weight = weights[f"{scope}.ffn.inner.weight"]
    spec.linear_0.bias = weights[f"{scope}.ffn.inner.bias"]
    spec.linear_1.weight = weights[f"{scope}.ffn.outer.weight"]
    spec.linear_1.bias = weights[f"{scope}.ffn.outer.bias"]
    _fill_norm(spec.layer_norm, weights, f"{scope}.ffn_norm")


def _fill_norm(spec: Any, weights: dict[str, np.ndarray], scope: str) -> None:
    spec.gamma, spec.beta = weights[f"{scope}.weight"], weights[f"{scope}.bias"]


def read_metadata(model_dir: Path) -> dict[str, Any]:
    """The export's metadata, checked to be one this version reads."""
    path = model_dir / METADATA_FILE
    if not path.is_file():
        raise ExportError(f"{model_dir} is not an exported nmt model (missing {METADATA_FILE})")
    metadata = json.loads(path.read_text(encoding="utf-8"))
    if metadata.get("version") != METADATA_VERSION:
        raise ExportError(f"{path}: unsupported metadata version {metadata.get('version')!r}")
    return metadata
