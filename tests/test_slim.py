"""Slim checkpoints for shipping, and the models shipped under models/."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nmt.checkpoint import load_checkpoint
from nmt.config import ConfigError
from nmt.rerank import Reranker
from nmt.slim import cast_weights, export_slim
from nmt.translator import Translator

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "models").glob("*.pt"))
SENTENCES = [
    "Ein Mann fährt mit dem Fahrrad.",
    "Zwei Hunde spielen im Schnee.",
    "Eine Frau mit einem roten Hut sitzt auf einer Bank.",
    "Kinder spielen Fußball.",
]


def _outputs(translator: Translator) -> list[tuple[str, float]]:
    return [(t.text, t.score) for t in translator.translate(SENTENCES)]


def test_an_fp32_slim_checkpoint_translates_bit_for_bit_as_its_source(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    slim = tmp_path / "slim32.pt"
    export_slim(tiny_checkpoint, slim, "fp32")
    assert _outputs(Translator.load(slim)) == _outputs(Translator.load(tiny_checkpoint))


def test_an_fp16_slim_checkpoint_is_small_and_translates_as_its_source(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    slim = tmp_path / "slim.pt"
    export_slim(tiny_checkpoint, slim)
    full, half = _outputs(Translator.load(tiny_checkpoint)), _outputs(Translator.load(slim))
    assert [text for text, _ in half] == [text for text, _ in full]
    assert [score for _, score in half] == pytest.approx([score for _, score in full], abs=0.02)
    checkpoint = load_checkpoint(slim)
    assert checkpoint.training is None
    assert checkpoint.meta["weights_dtype"] == "fp16"
    assert checkpoint.meta["exported_from"] == tiny_checkpoint.name
    assert {t.dtype for t in checkpoint.model.values() if t.is_floating_point()} == {torch.float16}
    # tied embeddings are stored once, so the file holds about two bytes per parameter
    parameters = sum(
        p.numel()
        for p in Translator.load(tiny_checkpoint).model.parameters()  # unique tensors
    )
    tokenizer_bytes = sum(len(model) for model in checkpoint.tokenizer["models"].values())
    weights_bytes = slim.stat().st_size - tokenizer_bytes
    assert weights_bytes < 2 * parameters + 200_000


def test_cast_weights_keeps_shared_tensors_shared() -> None:
    table = torch.randn(10, 4)
    cast = cast_weights({"a": table, "b": table, "steps": torch.tensor(3)}, torch.float16)
    assert cast["a"] is cast["b"] and cast["a"].dtype == torch.float16
    assert cast["steps"].dtype == torch.int64


def test_exported_decoding_defaults_are_the_models_defaults(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    slim = tmp_path / "slim.pt"
    result = subprocess.run(
        [sys.executable, "-m", "nmt.cli", "export", "--checkpoint", str(tiny_checkpoint),
         "--output", str(slim), "--beam", "3", "--length-penalty", "1.3"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "beam 3, length penalty 1.3" in result.stdout
    translator = Translator.load(slim)
    assert (translator.decode.beam_size, translator.decode.length_penalty) == (3, 1.3)
    with_flags = Translator.load(tiny_checkpoint)
    with_flags.decode = dataclasses.replace(with_flags.decode, length_penalty=1.3)
    assert [t.text for t in translator.translate(SENTENCES)] == [
        t.text for t in with_flags.translate(SENTENCES, beam_size=3)
    ]


def test_impossible_decoding_defaults_are_refused_by_name(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="decode.beam_size"):
        export_slim(tiny_checkpoint, tmp_path / "x.pt", decode_changes={"beam_size": 0})
    with pytest.raises(ConfigError, match="unknown decoding setting beam; valid: .*beam_size"):
        export_slim(tiny_checkpoint, tmp_path / "x.pt", decode_changes={"beam": 4})
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("model", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_model_translates_and_has_a_card(model: Path) -> None:
    assert model.stat().st_size <= 10 * 2**20
    card = model.with_suffix(".md")
    assert card.is_file(), f"{model.name} has no model card"
    assert "BLEU" in card.read_text()
    translator = Translator.load(model)
    source = (
        "Ein Mann fährt mit dem Fahrrad."
        if translator.info.src_lang == "de"
        else ("A man rides a bicycle.")
    )
    [translation] = translator.translate([source])
    assert translation.text and translation.alignment is None
    assert load_checkpoint(model).training is None


RERANKED = [
    p
    for p in sorted((REPO / "models").glob("*.json"))
    if json.loads(p.read_text())["decode"].get("rerank")
]


@pytest.mark.parametrize("card", RERANKED, ids=[p.stem for p in RERANKED])
def test_every_shipped_reranked_system_loads_from_its_card(card: Path) -> None:
    """A reranked system is only a command line over shipped files: its card's JSON names
    them, and they must load, fit together and translate."""
    summary = json.loads(card.read_text())
    members = [REPO / "models" / name for name in summary["model"].split()]
    rerank = summary["decode"]["rerank"]
    translator = Translator.load_ensemble(members)
    translator.rerank_with(
        Reranker.load([REPO / p for p in rerank["reverse_checkpoints"]], rerank["weight"])
    )
    source = "A man rides a bicycle." if translator.info.src_lang == "en" else SENTENCES[0]
    [translation] = translator.translate([source])
    assert translation.text
