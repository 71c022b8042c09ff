"""CTranslate2 export: the directory translates, aligns, evaluates and serves like the checkpoint.

Real tiny models (trained in seconds), exported with `nmt export`, compared with the PyTorch
path on Multi30k test sentences; one test starts the real `nmt serve` on the directory.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from conftest import tiny_config_dict
from serving import running_server

from nmt.checkpoint import file_sha256
from nmt.cli import main
from nmt.config import ModelConfig, config_from_dict
from nmt.ct2_export import METADATA_FILE, ExportError, check_exportable, export_ctranslate2
from nmt.ensemble import EnsembleError
from nmt.translator import Translation, TranslationError, Translator

SAMPLE = 40  # test sentences compared per model
TOLERANCE = 1e-4  # scores and attention weights, float32 against float32


def _sources(data_dir: Path, count: int = SAMPLE, lang: str = "de") -> list[str]:
    with gzip.open(data_dir / "multi30k" / f"test_2016_flickr.{lang}.gz", "rt") as f:
        return [next(f).rstrip("\n") for _ in range(count)]


@pytest.fixture(scope="module")
def variant_checkpoint(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The other side of every option: post-norm, learned positions, untied embeddings, one
    SentencePiece model per language, lowercased text."""
    from nmt.train import train

    run_dir = tmp_path_factory.mktemp("variant_run")
    raw = tiny_config_dict(data_dir, run_dir)
    raw["model"].update(norm="post", positions="learned", tie_embeddings=False)
    raw["tokenizer"].update(joint=False, lowercase=True)
    train(config_from_dict(raw))
    return run_dir / "best.pt"


@pytest.fixture(scope="module", params=["tiny", "variant"])
def checkpoint(request: pytest.FixtureRequest) -> Path:
    name = "tiny_checkpoint" if request.param == "tiny" else "variant_checkpoint"
    return request.getfixturevalue(name)


@pytest.fixture(scope="module")
def exported(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`nmt export --format ctranslate2` of the checkpoint, float32."""
    output = tmp_path_factory.mktemp("export") / "model-ct2"
    code = main(
        [
            "export",
            "--checkpoint",
            str(checkpoint),
            "--format",
            "ctranslate2",
            "--output",
            str(output),
        ]
    )
    assert code == 0
    return output


def _max_difference(a: list[list[float]], b: list[list[float]]) -> float:
    assert len(a) == len(b) and all(len(x) == len(y) for x, y in zip(a, b))
    return max((abs(p - q) for x, y in zip(a, b) for p, q in zip(x, y)), default=0.0)


def _assert_same(torch_side: list[Translation], ct2_side: list[Translation]) -> None:
    for pt, ct in zip(torch_side, ct2_side):
        assert ct.tokens == pt.tokens and ct.text == pt.text and ct.src_tokens == pt.src_tokens
        assert ct.score == pytest.approx(pt.score, abs=TOLERANCE)
        assert pt.alignment is not None and ct.alignment is not None
        assert _max_difference(ct.alignment.soft, pt.alignment.soft) < TOLERANCE
        assert ct.alignment.hard == pt.alignment.hard
        assert ct.alignment.word_hard == pt.alignment.word_hard


def test_export_writes_the_model_tokenizer_and_metadata(checkpoint: Path, exported: Path) -> None:
    metadata = json.loads((exported / METADATA_FILE).read_text())
    assert metadata["source_sha256"] == file_sha256(checkpoint)
    assert metadata["quantization"] == "float32"
    torch_side = Translator.load(checkpoint)
    assert (exported / "model.bin").is_file() and (exported / "tokenizer.json").is_file()
    ct2_side = Translator.load(exported)
    assert ct2_side.tokenizer.to_state() == torch_side.tokenizer.to_state()
    assert ct2_side.decode == torch_side.decode
    same = ("name", "architecture", "src_lang", "tgt_lang", "lowercase", "parameters", "step")
    assert {k: getattr(ct2_side.info, k) for k in same} == {
        k: getattr(torch_side.info, k) for k in same
    }
    assert (ct2_side.info.engine, ct2_side.info.quantization) == ("ctranslate2", "float32")
    assert ct2_side.info.sha256 == torch_side.info.sha256  # the source checkpoint's
    assert torch_side.info.engine == "pytorch"


def test_float32_export_translates_like_the_checkpoint(
    checkpoint: Path, exported: Path, data_dir: Path
) -> None:
    """Greedy and beam search: the same tokens, scores, n-best lists and alignments."""
    torch_side, ct2_side = Translator.load(checkpoint), Translator.load(exported)
    sources = _sources(data_dir)
    greedy = [
        t.translate(sources, beam_size=1, with_alignment=True) for t in (torch_side, ct2_side)
    ]
    _assert_same(*greedy)
    beam = [
        t.translate(sources, beam_size=3, n_best=3, with_alignment=True)
        for t in (torch_side, ct2_side)
    ]
    _assert_same(*beam)
    same_lists = 0
    for pt, ct in zip(*beam):
        assert pt.n_best is not None and ct.n_best is not None
        assert ct.n_best[0][0] == pt.n_best[0][0]
        texts = [text for text, _ in ct.n_best]
        same_lists += texts == [text for text, _ in pt.n_best]
        assert [s for _, s in ct.n_best] == sorted((s for _, s in ct.n_best), reverse=True)
    # At the length limit (the loops of a barely trained model) CTranslate2 keeps its best
    # candidates where we end every beam (see nmt/ct2_engine.py): the lower ranks may differ.
    assert same_lists >= 0.9 * len(sources)


def test_length_rules_and_options_carry_over(checkpoint: Path, exported: Path, data_dir: Path):
    """max_len caps every output as a * source + b does; empty lines, truncation, errors."""
    torch_side, ct2_side = Translator.load(checkpoint), Translator.load(exported)
    sources = _sources(data_dir, 8)
    for t in (torch_side, ct2_side):
        t.decode = type(t.decode)(**{**vars(t.decode), "max_len_a": 0.5, "max_len_b": 2})
    short = [t.translate(sources, beam_size=2) for t in (torch_side, ct2_side)]
    assert [x.tokens for x in short[1]] == [x.tokens for x in short[0]]
    limits = [int(0.5 * (len(ids)) + 2) for ids in ct2_side.tokenizer.encode_src(sources)]
    assert all(len(x.tokens) <= limit for x, limit in zip(short[1], limits))
    capped = ct2_side.translate(sources, beam_size=2, max_len=3)
    assert [x.tokens for x in capped] == [x.tokens for x in torch_side.translate(sources, 2, 3)]
    assert all(len(x.tokens) <= 3 for x in capped)
    assert ct2_side.translate(["", "  "])[0].text == ""
    too_long = " ".join(["Hund"] * 400)
    with pytest.raises(TranslationError, match="at most"):
        ct2_side.translate([too_long])
    assert ct2_side.translate([too_long], beam_size=1, truncate=True)[0].truncated


def test_int8_export_translates_close_to_float32(
    tiny_checkpoint: Path, data_dir: Path, tmp_path: Path
) -> None:
    directory = export_ctranslate2(tiny_checkpoint, tmp_path / "int8", "int8")
    translator = Translator.load(directory)
    assert translator.info.quantization is not None
    assert translator.info.quantization.startswith("int8")
    results = translator.translate(_sources(data_dir, 16), beam_size=2, with_alignment=True)
    assert len(results) == 16 and all(r.tokens and r.alignment is not None for r in results)
    for r in results:
        assert r.alignment is not None
        assert all(abs(sum(row) - 1) < 1e-4 for row in r.alignment.soft)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"arch": "rnn"}, "CTranslate2 has no RNN decoders"),
        ({"self_attention_window": 4}, "no banded"),
        ({"self_attention": "linear"}, "only softmax attention"),
        ({"cross_attention": "linear"}, "only softmax attention"),
    ],
)
def test_models_without_a_ctranslate2_counterpart_are_refused(change: dict, reason: str) -> None:
    with pytest.raises(ExportError, match=reason):
        check_exportable(ModelConfig(**change))


def test_export_refuses_bad_arguments(tiny_checkpoint: Path, exported: Path, tmp_path: Path):
    with pytest.raises(ExportError, match="unknown quantization 'int4'"):
        export_ctranslate2(tiny_checkpoint, tmp_path / "x", "int4")
    with pytest.raises(ExportError, match="already exists"):
        export_ctranslate2(tiny_checkpoint, exported, "float32")
    with pytest.raises(EnsembleError, match="cannot be ensembled"):
        Translator.load_ensemble([exported, exported])
    assert not (tmp_path / "x").exists()


def test_export_command_sets_decoding_defaults_and_checks_its_options(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    output = tmp_path / "tuned"
    args = ["export", "--checkpoint", str(tiny_checkpoint), "--format", "ctranslate2"]
    assert main(args + ["--output", str(output), "--beam", "4", "--length-penalty", "1.0"]) == 0
    decode = Translator.load(output).decode
    assert (decode.beam_size, decode.length_penalty) == (4, 1.0)
    assert main(args + ["--output", str(tmp_path / "x"), "--weights-dtype", "bf16"]) == 2
    assert "--weights-dtype is for --format torch" in capsys.readouterr().err
    torch_args = ["export", "--checkpoint", str(tiny_checkpoint), "--output", str(tmp_path / "y")]
    assert main(torch_args + ["--quantization", "int8"]) == 2
    assert "--quantization is for --format ctranslate2" in capsys.readouterr().err


def test_translate_and_evaluate_commands_take_the_directory(
    tiny_checkpoint: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    directory = export_ctranslate2(tiny_checkpoint, tmp_path / "ct2", "float32")
    source = tmp_path / "input.de"
    source.write_text("\n".join(_sources(data_dir, 12)) + "\n", encoding="utf-8")
    outputs = {}
    for name, model in (("torch", tiny_checkpoint), ("ct2", directory)):
        args = ["translate", "--checkpoint", str(model), "--input", str(source), "--beam", "2"]
        args += ["--n-best", "2", "--format", "jsonl", "--with-alignment"]
        args += ["--output", str(tmp_path / f"{name}.jsonl")]
        assert main(args) == 0
        outputs[name] = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").open()]
    assert [o["tokens"] for o in outputs["ct2"]] == [o["tokens"] for o in outputs["torch"]]
    assert [o["alignment"]["word_hard"] for o in outputs["ct2"]] == [
        o["alignment"]["word_hard"] for o in outputs["torch"]
    ]
    reference = tmp_path / "ref.en"
    reference.write_text("\n".join(_sources(data_dir, 12, "en")) + "\n", encoding="utf-8")
    report = tmp_path / "report.json"
    args = ["evaluate", "--checkpoint", str(directory), "--src", str(source)]
    assert main(args + ["--ref", str(reference), "--beam", "1", "--report", str(report)]) == 0
    capsys.readouterr()
    saved = json.loads(report.read_text())
    assert saved["scores"]["bleu"] >= 0 and saved["sentences"] == 12
    assert saved["checkpoint"]["engine"] == "ctranslate2"
    assert saved["checkpoint"]["sha256"] == file_sha256(tiny_checkpoint)


@pytest.mark.slow
def test_real_server_on_the_directory_names_the_engine(
    tiny_checkpoint: Path, data_dir: Path, tmp_path: Path
) -> None:
    directory = export_ctranslate2(tiny_checkpoint, tmp_path / "ct2-int8", "int8")
    with running_server("--checkpoint", str(directory), "--max-batch-size", "4") as http:
        model = http.get("/info").json()["model"]
        assert model["engine"] == "ctranslate2" and model["quantization"].startswith("int8")
        texts = _sources(data_dir, 4)
        request = {"texts": texts, "alignment": True, "beam_size": 2, "n_best": 2}
        response = http.post("/translate", json=request)
        assert response.status_code == 200
        served = response.json()["translations"]
        local = Translator.load(directory).translate(texts, 2, n_best=2, with_alignment=True)
        pair = {"text": texts[0], "translation": local[0].text}
        refused = http.post("/align", json=pair)
        assert refused.status_code == 422 and "PyTorch engine" in refused.text
    assert [s["translation"] for s in served] == [t.text for t in local]
    for s, t in zip(served, local):
        assert t.alignment is not None
        assert s["alignment"]["src_tokens"] == t.alignment.src_tokens
        assert len(s["n_best"]) == 2
