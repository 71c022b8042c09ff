"""sacreBLEU scoring, the literature setting, length buckets, reports and `nmt evaluate`."""

from __future__ import annotations

import dataclasses
import gzip
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from nmt.cli import main
from nmt.evaluate import (
    EvaluationError,
    EvaluationJob,
    ScoringPolicy,
    bleu_by_length,
    bleu_tokenizer,
    corpus_bleu,
    literature_tokenize,
    mecab_available,
    remove_word_spaces,
    run_evaluation,
    score_corpus,
)
from nmt.files import read_lines, write_lines

SACREBLEU = Path(sys.executable).parent / "sacrebleu"


def _degrade(lines: list[str], seed: int = 5) -> list[str]:
    """Hypotheses that differ from the references: words dropped and swapped."""
    rng = random.Random(seed)
    out = []
    for line in lines:
        words = [w for w in line.split() if rng.random() > 0.2]
        if len(words) > 3 and rng.random() < 0.5:
            i = rng.randrange(len(words) - 1)
            words[i], words[i + 1] = words[i + 1], words[i]
        out.append(" ".join(words))
    return out


@pytest.fixture(scope="module")
def refs(data_dir: Path) -> list[str]:
    return read_lines(data_dir / "multi30k" / "test_2016_flickr.en.gz")[:300]


def test_reads_gzip_and_plain(tmp_path: Path) -> None:
    lines = ["ein Hund", "", "zwei Männer"]
    write_lines(lines, tmp_path / "a.txt.gz")
    write_lines(lines, tmp_path / "a.txt")
    with gzip.open(tmp_path / "a.txt.gz", "rt", encoding="utf-8") as f:
        assert f.read() == "ein Hund\n\nzwei Männer\n"
    assert read_lines(tmp_path / "a.txt.gz") == lines == read_lines(tmp_path / "a.txt")


def test_scores_equal_sacrebleu_cli(tmp_path: Path, refs: list[str]) -> None:
    hyps = _degrade(refs)
    write_lines(refs, tmp_path / "ref.en")
    write_lines(hyps, tmp_path / "hyp.en")
    cli = subprocess.run(
        [
            str(SACREBLEU),
            str(tmp_path / "ref.en"),
            "-i",
            str(tmp_path / "hyp.en"),
            "-m",
            "bleu",
            "chrf",
            "ter",
            "-w",
            "4",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    expected = {m["name"]: m for m in json.loads(cli.stdout)}
    ours = score_corpus(hyps, refs, "en")
    assert 20 < ours["bleu"] < 90
    assert round(ours["bleu"], 4) == pytest.approx(expected["BLEU"]["score"], abs=1e-4)
    assert round(ours["chrf"], 4) == pytest.approx(expected["chrF2"]["score"], abs=1e-4)
    assert round(ours["ter"], 4) == pytest.approx(expected["TER"]["score"], abs=1e-4)
    assert ours["signatures"]["bleu"] == expected["BLEU"]["signature"]
    assert ours["signatures"]["chrf"] == expected["chrF2"]["signature"]
    assert ours["signatures"]["ter"] == expected["TER"]["signature"]


def test_lowercase_scoring_ignores_case_and_says_so(tmp_path: Path, refs: list[str]) -> None:
    hyps = [r.lower() for r in refs]
    cased = score_corpus(hyps, refs, "en")
    lowered = score_corpus(hyps, refs, "en", lowercase=True, srcs=refs)
    assert cased["bleu"] < 95 and cased["chrf"] < 99
    assert lowered["bleu"] == pytest.approx(100.0) and lowered["chrf"] == pytest.approx(100.0)
    assert lowered["ter"] == pytest.approx(0.0)
    assert all(b["bleu"] is None or b["bleu"] == pytest.approx(100.0) for b in lowered["by_length"])
    assert "case:lc" in lowered["signatures"]["bleu"] and "case:lc" in lowered["signatures"]["chrf"]
    assert "case:lc" in lowered["signatures"]["ter"]
    write_lines(refs, tmp_path / "ref.en")
    write_lines(hyps, tmp_path / "hyp.en")
    assert (
        main(
            [
                "evaluate",
                "--hyp",
                str(tmp_path / "hyp.en"),
                "--ref",
                str(tmp_path / "ref.en"),
                "--lowercase",
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "hyp.en.json").read_text(encoding="utf-8"))
    assert report["scores"]["bleu"] == pytest.approx(100.0)


@pytest.mark.parametrize(
    "policy", [ScoringPolicy(), ScoringPolicy(remove_spaces=True, lowercase=True)]
)
def test_validation_bleu_scores_as_nmt_evaluate_does(
    refs: list[str], policy: ScoringPolicy
) -> None:
    hyps = [h.upper() for h in _degrade(refs)]
    bleu, signature = corpus_bleu(hyps, refs, "en", policy)
    full = score_corpus(
        hyps, refs, "en", remove_spaces=policy.remove_spaces, lowercase=policy.lowercase
    )
    assert bleu == pytest.approx(full["bleu"]) and signature == full["signatures"]["bleu"]


def test_run_evaluation_scores_a_hypothesis_file(tmp_path: Path, refs: list[str]) -> None:
    write_lines(refs, tmp_path / "ref.en")
    write_lines(refs, tmp_path / "hyp.en")
    job = EvaluationJob(ref=str(tmp_path / "ref.en"), hyp=str(tmp_path / "hyp.en"))
    evaluation = run_evaluation(job)
    assert evaluation.report == tmp_path / "hyp.en.json" and evaluation.report.is_file()
    assert evaluation.scores["bleu"] == pytest.approx(100.0)
    with pytest.raises(EvaluationError):
        run_evaluation(EvaluationJob(ref=str(tmp_path / "ref.en")))


def test_cli_hyp_equal_ref_scores_100_and_writes_report(
    tmp_path: Path, refs: list[str], capsys: pytest.CaptureFixture
) -> None:
    ref = tmp_path / "ref.en.gz"
    write_lines(refs, ref)
    report = tmp_path / "out" / "report.json"
    assert main(["evaluate", "--hyp", str(ref), "--ref", str(ref), "--report", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "BLEU = 100.00" in printed and "tok:13a" in printed
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["scores"]["bleu"] == pytest.approx(100.0)
    assert data["scores"]["ter"] == pytest.approx(0.0)
    assert data["signatures"]["bleu"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert "chrf" in data["signatures"] and "ter" in data["signatures"]
    assert data["files"]["tgt_lang"] == "en"


def test_cli_default_report_beside_hypotheses_and_length_buckets(
    tmp_path: Path, data_dir: Path
) -> None:
    src = read_lines(data_dir / "multi30k" / "test_2016_flickr.de.gz")[:300]
    ref = read_lines(data_dir / "multi30k" / "test_2016_flickr.en.gz")[:300]
    write_lines(src, tmp_path / "src.de")
    write_lines(ref, tmp_path / "ref.en")
    write_lines(_degrade(ref), tmp_path / "hyp.en")
    argv = [
        "evaluate",
        "--hyp",
        str(tmp_path / "hyp.en"),
        "--ref",
        str(tmp_path / "ref.en"),
        "--src",
        str(tmp_path / "src.de"),
    ]
    assert main(argv) == 0
    data = json.loads((tmp_path / "hyp.en.json").read_text(encoding="utf-8"))
    buckets = data["by_length"]
    assert [b["bucket"] for b in buckets] == ["1-10", "11-20", "21-30", "31+"]
    assert sum(b["sentences"] for b in buckets) == 300
    expected = sum(1 for s in src if len(s.split()) <= 10)
    assert buckets[0]["sentences"] == expected


def test_cli_rejects_mismatched_line_counts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_lines(["a b c", "d e f"], tmp_path / "hyp.en")
    write_lines(["a b c"], tmp_path / "ref.en")
    code = main(["evaluate", "--hyp", str(tmp_path / "hyp.en"), "--ref", str(tmp_path / "ref.en")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 hypotheses but 1 references" in err[0]
    with pytest.raises(EvaluationError):
        score_corpus(["a"], ["a", "b"], "en")


def test_bleu_by_length_buckets() -> None:
    srcs = ["w " * 3, "w " * 10, "w " * 11, "w " * 25, "w " * 40, ""]
    hyps = refs = ["the same words here"] * 6
    rows = {r["bucket"]: r for r in bleu_by_length(srcs, hyps, refs, "en")}
    assert rows["1-10"]["sentences"] == 3  # the empty source counts in the first bucket
    assert rows["11-20"]["sentences"] == 1 and rows["21-30"]["sentences"] == 1
    assert rows["31+"]["sentences"] == 1
    assert rows["1-10"]["bleu"] == pytest.approx(100.0)
    empty = {r["bucket"]: r for r in bleu_by_length(["w"], ["x"], ["x"], "en")}
    assert empty["31+"]["bleu"] is None


@pytest.mark.parametrize("lang", ["de", "en"])
def test_literature_pipeline_reproduces_official_tokenized_refs(data_dir: Path, lang: str) -> None:
    raw = read_lines(data_dir / "multi30k" / f"test_2016_flickr.{lang}.gz")
    official = read_lines(data_dir / "multi30k" / "tok" / f"test_2016_flickr.lc.norm.tok.{lang}")
    ours = literature_tokenize(raw, lang)
    matches = sum(a == b for a, b in zip(ours, official))
    assert len(ours) == len(official) == 1000
    assert matches / 1000 >= 0.995, f"{matches}/1000 lines match"


def test_literature_setting_scores_raw_refs_as_official(data_dir: Path) -> None:
    raw = read_lines(data_dir / "multi30k" / "test_2016_flickr.de.gz")[:200]
    official = read_lines(data_dir / "multi30k" / "tok" / "test_2016_flickr.lc.norm.tok.de")[:200]
    result = score_corpus(raw, official, "de", literature=True)
    assert result["bleu"] == pytest.approx(100.0)
    assert "tok:none" in result["signatures"]["bleu"]
    assert result["setting"] == "literature"
    degraded = score_corpus(_degrade(raw), raw, "de", literature=True, tokenize_refs=True)
    assert degraded["bleu"] < 90


def test_japanese_tokenizer_choice_is_stated_in_signature() -> None:
    expected = "ja-mecab" if mecab_available() else "char"
    assert bleu_tokenizer("ja") == expected
    result = score_corpus(["犬が走る。"], ["犬が走っている。"], "ja")
    assert f"tok:{expected}" in result["signatures"]["bleu"]
    assert 0 < result["bleu"] < 100
    assert bleu_tokenizer("de") == "13a"


# --------------------------------------------------------------------------- pre-segmented Japanese


@pytest.fixture(scope="module")
def dev_ja(data_dir: Path) -> list[str]:
    """small_parallel_enja's dev references: KyTea-segmented, words separated by spaces."""
    lines = read_lines(data_dir / "small_parallel_enja" / "dev.ja")
    assert all(" " in line for line in lines[:50])
    return lines


def test_remove_word_spaces_matches_what_the_decoder_outputs(dev_ja: list[str]) -> None:
    assert remove_word_spaces(["私 は テニス 部員 で す 。", "", " a  b\t"]) == [
        "私はテニス部員です。",
        "",
        "ab",
    ]
    assert remove_word_spaces(dev_ja) == [line.replace(" ", "") for line in dev_ja]


def test_segmented_references_score_100_against_decoder_style_output(dev_ja: list[str]) -> None:
    decoded = remove_word_spaces(dev_ja)  # a perfect translation, as our decoder writes it
    plain = score_corpus(decoded, dev_ja, "ja")
    assert plain["bleu"] < 80 and plain["normalisation"] is None  # the mismatch being fixed
    fixed = score_corpus(decoded, dev_ja, "ja", remove_spaces=True)
    assert fixed["bleu"] == pytest.approx(100.0) and fixed["ter"] == pytest.approx(0.0)
    assert fixed["normalisation"] == "remove-spaces"
    itself = score_corpus(dev_ja, dev_ja, "ja", remove_spaces=True)  # hyps in the corpus' format
    assert itself["bleu"] == pytest.approx(100.0)
    assert f"tok:{bleu_tokenizer('ja')}" in fixed["signatures"]["bleu"]


def test_cli_remove_spaces_flag_and_report(
    tmp_path: Path, data_dir: Path, dev_ja: list[str], capsys: pytest.CaptureFixture
) -> None:
    ref = data_dir / "small_parallel_enja" / "dev.ja"
    write_lines(remove_word_spaces(dev_ja), tmp_path / "hyp.ja")
    argv = ["evaluate", "--hyp", str(tmp_path / "hyp.ja"), "--ref", str(ref)]
    assert main(argv + ["--report", str(tmp_path / "plain.json")]) == 0
    plain = json.loads((tmp_path / "plain.json").read_text(encoding="utf-8"))
    assert plain["normalisation"] is None and plain["scores"]["bleu"] < 80
    capsys.readouterr()
    assert main(argv + ["--remove-spaces", "--report", str(tmp_path / "fixed.json")]) == 0
    assert "spaces removed" in capsys.readouterr().out
    fixed = json.loads((tmp_path / "fixed.json").read_text(encoding="utf-8"))
    assert fixed["scores"]["bleu"] == pytest.approx(100.0)
    assert fixed["normalisation"] == "remove-spaces"
    assert fixed["files"]["tgt_lang"] == "ja"


def _untrained_enja_checkpoint(
    data_dir: Path, out_dir: Path, remove: list[str], lowercase: bool = False
) -> Path:
    """An en->ja checkpoint (tiny untrained Transformer) whose tokenizer lists `remove`."""
    import torch

    from nmt.checkpoint import Checkpoint, VocabSizes, save_checkpoint
    from nmt.config import TokenizerConfig, config_from_dict
    from nmt.model import build_model
    from nmt.tokenizer import Tokenizer

    corpus = data_dir / "small_parallel_enja"
    tok_config = TokenizerConfig(
        vocab_size=800,
        joint=False,
        character_coverage=0.98,
        detok_remove_spaces=remove,
        lowercase=lowercase,
    )
    tokenizer = Tokenizer.train(
        tok_config,
        read_lines(corpus / "dev.en"),
        read_lines(corpus / "dev.ja"),
        "en",
        "ja",
        out_dir / "tok",
    )
    config = config_from_dict(
        {
            "name": "enja",
            "data": {"preset": "small_parallel_enja", "src_lang": "en", "tgt_lang": "ja"},
            "tokenizer": dataclasses.asdict(tok_config),
            "model": {
                "arch": "transformer",
                "embed_dim": 16,
                "hidden_size": 16,
                "encoder_layers": 1,
                "decoder_layers": 1,
                "heads": 2,
                "ffn_size": 32,
                "max_positions": 64,
            },
            "decode": {"beam_size": 1, "max_len_a": 0.0, "max_len_b": 4},
        }
    )
    torch.manual_seed(0)
    model = build_model(config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    path = out_dir / "enja.pt"
    save_checkpoint(
        Checkpoint(
            model=model.state_dict(),
            config=config,
            tokenizer=tokenizer.to_state(),
            vocab=VocabSizes(tokenizer.src_vocab_size, tokenizer.tgt_vocab_size),
        ),
        path,
    )
    return path


@pytest.mark.parametrize(("remove", "lowercase"), [(["ja"], True), ([], False)])
def test_cli_checkpoint_normalises_references_as_its_tokenizer_does(
    tmp_path: Path, data_dir: Path, remove: list[str], lowercase: bool
) -> None:
    """Spaces removed and case ignored exactly when the checkpoint's tokenizer does so."""
    from nmt.translator import Translator

    checkpoint = _untrained_enja_checkpoint(data_dir, tmp_path, remove, lowercase)
    policy = ScoringPolicy.of(Translator.load(checkpoint).tokenizer)
    assert policy == ScoringPolicy(remove_spaces=bool(remove), lowercase=lowercase)
    corpus = data_dir / "small_parallel_enja"
    write_lines(read_lines(corpus / "dev.en")[:8], tmp_path / "src.en")
    write_lines(read_lines(corpus / "dev.ja")[:8], tmp_path / "ref.ja")
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(checkpoint),
                "--src",
                str(tmp_path / "src.en"),
                "--ref",
                str(tmp_path / "ref.ja"),
                "--output",
                str(tmp_path / "hyp.ja"),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "hyp.ja.json").read_text(encoding="utf-8"))
    assert report["normalisation"] == ("remove-spaces" if remove else None)
    assert report["sentences"] == 8
    case = "case:lc" if lowercase else "case:mixed"
    assert all(case in report["signatures"][m] for m in ("bleu", "chrf"))
    if remove:  # the decoder wrote no spaces: the references lost theirs too
        assert all(" " not in hyp for hyp in read_lines(tmp_path / "hyp.ja"))


def test_paired_bootstrap_marks_a_p_value_that_is_only_a_bound() -> None:
    from nmt.compare.report import _p
    from nmt.compare.stats import paired_scores

    refs = [f"a dog number {i} runs through the white snow" for i in range(60)]
    noisy = [r if i % 3 else r.replace("white snow", "grass") for i, r in enumerate(refs)]
    wrong = ["the cat sleeps" for _ in refs]
    close = [r.replace("number", "no.") if i in (1, 4) else r for i, r in enumerate(noisy)]
    systems = {"base": noisy, "close": close, "wrong": wrong, "same": list(noisy)}
    scores, _ = paired_scores(systems, refs, "en", ScoringPolicy())
    assert scores["base"]["bleu"]["p_value"] is None  # the baseline is not tested
    assert scores["wrong"]["bleu"]["p_at_floor"] and _p(scores["wrong"]["bleu"]) == "≤ 0.0010 *"
    close_p = scores["close"]["bleu"]
    assert not close_p["p_at_floor"] and close_p["p_value"] > 0.05
    assert _p(close_p) == f"{close_p['p_value']:.4f}"
    assert scores["same"]["bleu"]["p_value"] == 1.0 and not scores["same"]["bleu"]["p_at_floor"]
