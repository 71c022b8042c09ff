"""Translator on real checkpoints, and `nmt translate` / `nmt evaluate --checkpoint`."""

from __future__ import annotations

import dataclasses
import json
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nmt.checkpoint import file_sha256, load_checkpoint, save_checkpoint
from nmt.cli import main
from nmt.config import config_from_dict
from nmt.files import read_lines, write_lines
from nmt.model import build_model
from nmt.tokenizer import Tokenizer
from nmt.translator import ModelInfo, Translation, TranslationError, Translator

SOURCES = [
    "Ein Hund läuft durch den Park.",
    "",
    "Zwei Männer spielen Fußball auf einer grünen Wiese.",
    "   ",
    "Eine Frau sitzt auf einer Bank.",
    "Kinder.",
]


@pytest.fixture(scope="module")
def translator(tiny_checkpoint: Path) -> Translator:
    return Translator.load(tiny_checkpoint)


@pytest.fixture(scope="module")
def no_attention_checkpoint(
    tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The tiny checkpoint's tokenizer with an untrained LSTM encoder-decoder without attention."""
    checkpoint = load_checkpoint(tiny_checkpoint)
    config = checkpoint.config.to_dict()
    config["model"].update(arch="rnn", cell="lstm", attention="none", bidirectional=False)
    vocab = checkpoint.vocab
    torch.manual_seed(0)
    model = build_model(config_from_dict(config).model, vocab.src, vocab.tgt, vocab.joint)
    path = tmp_path_factory.mktemp("no_attention") / "model.pt"
    save_checkpoint(
        dataclasses.replace(
            checkpoint, model=model.state_dict(), config=config_from_dict(config), metrics={}
        ),
        path,
    )
    return path


def test_load_builds_eval_model_and_info(translator: Translator, tiny_checkpoint: Path) -> None:
    info = translator.info
    assert not translator.model.training
    assert info.arch == "transformer" and info.src_lang == "de" and info.tgt_lang == "en"
    assert info.sha256 == file_sha256(tiny_checkpoint) and info.checkpoint == str(tiny_checkpoint)
    assert info.parameters == sum(p.numel() for p in translator.model.parameters())
    assert isinstance(info.valid_bleu, float) and info.step is not None
    assert info.max_source_len == translator.model.max_source_len


def test_info_json_carries_the_decoding_settings_in_use(translator: Translator) -> None:
    """The decoding settings live once, in `translator.decode`; the JSON form reads them there."""
    narrow = dataclasses.replace(translator.decode, beam_size=1, precision="bf16")
    data = translator.info.to_dict(narrow)
    assert data["decode"]["beam_size"] == 1 and data["decode"]["precision"] == "bf16"
    assert data["checkpoint_sha256"] == translator.info.sha256 and "sha256" not in data
    assert "decode" not in {f.name for f in dataclasses.fields(ModelInfo)}


def test_translate_keeps_order_and_empty_lines(translator: Translator) -> None:
    results = translator.translate(SOURCES, beam_size=2)
    assert [r.source for r in results] == SOURCES
    for r in results:
        if not r.source.strip():
            assert r.text == "" and r.tokens == [] and r.src_tokens == [] and r.score == 0.0
        else:
            assert r.src_tokens and r.tokens
            assert isinstance(r.text, str) and "\n" not in r.text
            assert r.score < 0 and not r.truncated and r.n_best is None


def test_sub_batches_and_batch_composition_do_not_change_results(translator: Translator) -> None:
    wide = translator.translate(SOURCES, beam_size=3)
    narrow = Translator(
        translator.model,
        translator.tokenizer,
        dataclasses.replace(translator.decode, batch_tokens=10),
        translator.device,
        info=translator.info,
    )
    for i, result in enumerate(narrow.translate(SOURCES, beam_size=3)):
        assert result.tokens == wide[i].tokens
        assert result.score == pytest.approx(wide[i].score, abs=1e-4)
    alone = translator.translate([SOURCES[4]], beam_size=3)[0]
    assert alone.tokens == wide[4].tokens


def test_n_best_lists(translator: Translator) -> None:
    result = translator.translate([SOURCES[0]], beam_size=4, n_best=3)[0]
    assert len(result.n_best) == 3
    scores = [score for _, score in result.n_best]
    assert scores == sorted(scores, reverse=True)
    assert result.n_best[0] == (result.text, result.score)
    with pytest.raises(TranslationError, match="n_best"):
        translator.translate([SOURCES[0]], beam_size=2, n_best=3)


def test_too_long_input_is_rejected_or_truncated(translator: Translator) -> None:
    limit = translator.model.max_source_len
    long_text = " ".join(["Hund"] * (limit + 10))
    with pytest.raises(TranslationError, match=f"at most {limit}"):
        translator.translate(["Kurz.", long_text])
    short, cut = translator.translate(["Kurz.", long_text], truncate=True, max_len=5)
    assert not short.truncated and cut.truncated
    assert len(cut.src_tokens) == limit - 1  # plus EOS = the limit
    assert len(cut.tokens) <= 5


def test_in_memory_translator_restores_training_mode(
    tiny_checkpoint: Path, translator: Translator
) -> None:
    checkpoint = load_checkpoint(tiny_checkpoint)
    config, vocab = checkpoint.config, checkpoint.vocab
    model = build_model(config.model, vocab.src, vocab.tgt, vocab.joint)
    model.load_state_dict(checkpoint.model)
    model.train()
    tokenizer = Tokenizer.from_state(checkpoint.tokenizer)
    info = ModelInfo.of("valid", config.model, model, tokenizer)
    memory = Translator(model, tokenizer, config.decode, "cpu", info=info)
    results = memory.translate(SOURCES)
    assert model.training
    assert [r.tokens for r in results] == [r.tokens for r in translator.translate(SOURCES)]
    assert info.name == "valid" and info.checkpoint is None and info.sha256 is None
    assert (
        dataclasses.replace(
            translator.info, name="valid", valid_bleu=None, step=None, checkpoint=None, sha256=None
        )
        == info
    )


def test_model_without_attention_has_no_alignment(no_attention_checkpoint: Path) -> None:
    translator = Translator.load(no_attention_checkpoint)
    assert translator.info.arch == "rnn" and "no attention" in translator.info.architecture
    results = translator.translate(SOURCES[:3], beam_size=2, with_alignment=True, max_len=6)
    assert results[0].alignment is None and results[2].alignment is None
    assert results[0].tokens and len(results[0].tokens) <= 6


def test_translation_json_round_trip(translator: Translator) -> None:
    results = translator.translate(SOURCES, beam_size=3, n_best=2, with_alignment=True)
    for r in results:
        line = json.dumps(r.to_dict(), ensure_ascii=False)
        assert Translation.from_dict(json.loads(line)) == r


def test_cli_translate_file_jsonl_alignments_plots(
    tmp_path: Path, tiny_checkpoint: Path, translator: Translator
) -> None:
    write_lines(SOURCES, tmp_path / "in.de")
    out, links, plots = tmp_path / "out.jsonl", tmp_path / "links.txt", tmp_path / "plots"
    code = main(
        [
            "translate",
            "--checkpoint",
            str(tiny_checkpoint),
            "--input",
            str(tmp_path / "in.de"),
            "--output",
            str(out),
            "--format",
            "jsonl",
            "--beam",
            "2",
            "--alignments",
            str(links),
            "--plot-attention",
            str(plots),
        ]
    )
    assert code == 0
    expected = translator.translate(SOURCES, beam_size=2, with_alignment=True)
    got = [Translation.from_dict(json.loads(line)) for line in read_lines(out)]
    assert got == expected
    pharaoh = read_lines(links)
    assert len(pharaoh) == len(SOURCES)
    assert all(re.fullmatch(r"(\d+-\d+( \d+-\d+)*)?", line) for line in pharaoh)
    assert pharaoh[0] == expected[0].alignment.pharaoh() and pharaoh[1] == ""
    pngs = sorted(p.name for p in plots.glob("*.png"))
    assert pngs == [f"{i:06d}.png" for i, r in enumerate(expected) if r.tokens]


def test_cli_translate_text_n_best(tmp_path: Path, tiny_checkpoint: Path) -> None:
    write_lines(SOURCES[:3], tmp_path / "in.de")
    out = tmp_path / "out.txt"
    argv = [
        "translate",
        "--checkpoint",
        str(tiny_checkpoint),
        "--input",
        str(tmp_path / "in.de"),
        "--output",
        str(out),
        "--beam",
        "3",
        "--n-best",
        "2",
    ]
    assert main(argv) == 0
    lines = read_lines(out)
    # The empty second input has a single (empty) entry.
    assert [line.split(" ||| ")[0] for line in lines] == ["0", "0", "1", "2", "2"]
    assert lines[2] == "1 |||  ||| 0.0000"
    assert all(len(line.split(" ||| ")) == 3 for line in lines)


def test_cli_translate_streams_stdin(tiny_checkpoint: Path) -> None:
    """Each line piped in is answered before stdin is closed (no waiting for EOF)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nmt.cli",
            "translate",
            "--checkpoint",
            str(tiny_checkpoint),
            "--beam",
            "1",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        answers = []
        for source in ("Ein Hund.", "Eine Frau."):
            proc.stdin.write(source + "\n")
            proc.stdin.flush()
            deadline = time.monotonic() + 120
            ready, _, _ = select.select(
                [proc.stdout], [], [], max(0.0, deadline - time.monotonic())
            )
            assert ready, "no translation before stdin was closed"
            answers.append(proc.stdout.readline())
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
        assert len(answers) == 2 and all(a.endswith("\n") for a in answers)
    finally:
        proc.kill()


def test_cli_translate_too_long_input_is_a_user_error(
    tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    write_lines([" ".join(["Hund"] * 300)], tmp_path / "in.de")
    argv = [
        "translate",
        "--checkpoint",
        str(tiny_checkpoint),
        "--input",
        str(tmp_path / "in.de"),
        "--output",
        str(tmp_path / "out.txt"),
    ]
    assert main(argv) == 2
    assert "at most" in capsys.readouterr().err


def test_cli_evaluate_checkpoint(tmp_path: Path, tiny_checkpoint: Path, data_dir: Path) -> None:
    src = read_lines(data_dir / "multi30k" / "val.de.gz")[:12]
    ref = read_lines(data_dir / "multi30k" / "val.en.gz")[:12]
    write_lines(src, tmp_path / "src.de")
    write_lines(ref, tmp_path / "ref.en")
    hyp = tmp_path / "hyp.en"
    argv = [
        "evaluate",
        "--checkpoint",
        str(tiny_checkpoint),
        "--src",
        str(tmp_path / "src.de"),
        "--ref",
        str(tmp_path / "ref.en"),
        "--beam",
        "2",
        "--output",
        str(hyp),
    ]
    assert main(argv) == 0
    assert len(read_lines(hyp)) == 12
    report = json.loads((tmp_path / "hyp.en.json").read_text(encoding="utf-8"))
    assert report["checkpoint"]["sha256"] == file_sha256(tiny_checkpoint)
    assert report["checkpoint"]["path"] == str(tiny_checkpoint)
    assert report["decoding"]["beam_size"] == 2
    assert report["signatures"]["bleu"].startswith("nrefs:1|")
    assert sum(b["sentences"] for b in report["by_length"]) == 12


def test_cli_length_penalty_reaches_the_decoder_and_report(
    tmp_path: Path, tiny_checkpoint: Path, data_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    src = read_lines(data_dir / "multi30k" / "val.de.gz")[:4]
    write_lines(src, tmp_path / "src.de")
    write_lines(read_lines(data_dir / "multi30k" / "val.en.gz")[:4], tmp_path / "ref.en")
    argv = [
        "evaluate",
        "--checkpoint",
        str(tiny_checkpoint),
        "--src",
        str(tmp_path / "src.de"),
        "--ref",
        str(tmp_path / "ref.en"),
        "--beam",
        "2",
        "--output",
        str(tmp_path / "hyp.en"),
        "--length-penalty",
        "0",
    ]
    assert main(argv) == 0
    report = json.loads((tmp_path / "hyp.en.json").read_text(encoding="utf-8"))
    assert report["decoding"]["length_penalty"] == 0.0
    raw = Translator.load(tiny_checkpoint)
    raw.decode = dataclasses.replace(raw.decode, length_penalty=0.0)
    assert read_lines(tmp_path / "hyp.en") == [t.text for t in raw.translate(src, beam_size=2)]
    assert main(argv[:-1] + ["-1"]) == 2
    assert "--length-penalty must be >= 0" in capsys.readouterr().err


def test_bf16_decoding_translates_every_sentence(tiny_checkpoint: Path) -> None:
    fp32 = Translator.load(tiny_checkpoint)
    bf16 = Translator.load(tiny_checkpoint)
    bf16.decode = dataclasses.replace(bf16.decode, precision="bf16")
    texts = ["Ein Hund läuft über die Wiese.", "", "Zwei Kinder spielen."]
    fast = bf16.translate(texts, beam_size=2, with_alignment=True)
    slow = fp32.translate(texts, beam_size=2, with_alignment=True)
    assert [t.source for t in fast] == texts and fast[1].text == ""
    for a, b in zip(fast, slow):
        if a.alignment is not None:
            assert len(a.alignment.soft) == len(a.tokens)
        assert abs(a.score - b.score) < 0.5 or a.text != b.text
    bf16.decode = dataclasses.replace(bf16.decode, precision="fp32")  # nothing left in bf16:
    assert [t.text for t in bf16.translate(texts, beam_size=2)] == [t.text for t in slow]


def test_model_descriptions_name_the_attention_variant() -> None:
    from nmt.config import ModelConfig
    from nmt.translator import describe_model

    plain = describe_model(ModelConfig(arch="transformer"))
    linear = describe_model(ModelConfig(arch="transformer", self_attention="linear"))
    window = describe_model(ModelConfig(arch="transformer", self_attention_window=8))
    assert "linear" not in plain and "window" not in plain
    assert linear.endswith("linear self-attention") and window.endswith("window 8")
