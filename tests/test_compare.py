"""`nmt compare`: a tiny two-model study end to end, its report, resume and its errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config_dict

from nmt.cli import main
from nmt.config import TrainConfig
from nmt.optim import lr_factor

SECTIONS = ("Quality", "Cost", "Plots", "Alignment", "Examples", "Environment")
MODEL_FIELDS = {"name", "architecture", "run_dir", "checkpoint", "quality", "by_length"}
MODEL_FIELDS |= {"cost", "curves", "alignment", "stop_reason"}
COST_FIELDS = {"parameters", "model_mb", "train_minutes", "steps", "train_steps_per_minute"}
COST_FIELDS |= {"train_tokens_per_s"}
COST_FIELDS |= {"greedy_sentences_per_s", "beam_sentences_per_s"}


def _write_config(folder: Path, name: str, files: dict, arch: str, **data: str) -> str:
    raw = tiny_config_dict(Path("unused"), Path("unused"), arch)
    raw["data"] = {"preset": None, "files": files, "max_len": 40, **data}
    raw["tokenizer"] = {"vocab_size": 300}
    raw["model"]["attention"] = "bahdanau"
    del raw["train"]["run_dir"], raw["name"]
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _compare(*args: str) -> int:
    common = ["--threads", "1", "--beam", "2", "--set", "train.valid_limit=8", "train.log_every=1"]
    return main(["compare", *args, *common])


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, tiny_corpus_dir: Path) -> tuple[Path, list]:
    """A finished two-model study (Transformer and LSTM+Bahdanau, 4 steps each)."""
    folder = tmp_path_factory.mktemp("study")
    files = {
        split: [str(tiny_corpus_dir / f"{split}.{lang}") for lang in ("de", "en")]
        for split in ("train", "valid", "test")
    }
    configs = [
        _write_config(folder, "transformer", files, "transformer"),
        _write_config(folder, "lstm", files, "rnn"),
    ]
    args = ["--configs", *configs, "--budget-steps", "4", "--parallel", "2"]
    args += ["--output", str(folder / "out")]
    assert _compare(*args) == 0
    return folder / "out", args


def test_study_report_has_every_section(study: tuple[Path, list]) -> None:
    out, _ = study
    markdown = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    for section in SECTIONS:
        assert f"## {section}" in markdown and f"<h2>{section}</h2>" in page
    assert "transformer" in markdown and "lstm" in markdown


def test_report_json_has_the_documented_fields(study: tuple[Path, list]) -> None:
    out, _ = study
    report = json.loads((out / "report.json").read_text())
    assert report["baseline"] == "transformer"
    assert report["test_set"]["sentences"] == 40
    assert {m["name"] for m in report["models"]} == {"transformer", "lstm"}
    for model in report["models"]:
        assert MODEL_FIELDS <= set(model)
        assert COST_FIELDS <= set(model["cost"])
        assert model["cost"]["steps"] == 4 and model["stop_reason"] == "max_steps"
        for metric in ("bleu", "chrf", "ter"):
            score = model["quality"][metric]
            assert score["ci95"][0] <= score["ci95"][1]
        assert model["alignment"]["sentences"] > 0  # both models have attention
        assert model["curves"]["valid"] and model["curves"]["train"]
    lstm = next(m for m in report["models"] if m["name"] == "lstm")
    assert 0.0 <= lstm["quality"]["bleu"]["p_value"] <= 1.0
    assert len(report["heatmap_sentences"]) == 3 and report["examples"]
    assert report["study"]["budget"] == {"minutes": 0.0, "steps": 4}
    assert report["environment"]["command"].startswith("nmt compare --configs")


def test_html_is_self_contained_and_plots_are_pngs(study: tuple[Path, list]) -> None:
    out, _ = study
    page = (out / "report.html").read_text()
    assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:)?//", page)
    assert "url(" not in page and "@import" not in page
    report = json.loads((out / "report.json").read_text())
    assert len(report["plots"]) == 7  # 4 charts, 3 heatmaps
    for plot in report["plots"]:
        data = (out / plot).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000
    assert page.count("data:image/png;base64,") == 7


def test_resume_does_not_retrain_a_finished_run(study: tuple[Path, list]) -> None:
    out, args = study
    runs = out / "runs"
    summary = runs / "lstm" / "summary.json"
    # The lstm run as a SIGTERM leaves it: stopped, with its last.pt.
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "stop_reason": "signal"}))
    finished_log = (runs / "transformer" / "train.log").read_text()
    finished_checkpoint = (runs / "transformer" / "last.pt").stat().st_mtime_ns
    assert _compare(*args) == 0
    assert (runs / "transformer" / "train.log").read_text() == finished_log
    assert (runs / "transformer" / "last.pt").stat().st_mtime_ns == finished_checkpoint
    assert "resumed from" in (runs / "lstm" / "train.log").read_text()
    assert json.loads(summary.read_text())["stop_reason"] == "max_steps"


def test_errors_name_the_config_or_run(
    study: tuple[Path, list], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, args = study
    configs = args[1:3]
    broken = tmp_path / "broken.yaml"
    broken.write_text("model:\n  arch: lstm\n")
    code = _compare(
        "--configs", configs[0], str(broken), "--budget-steps", "2", "--output", str(tmp_path / "a")
    )
    assert code == 2 and "broken.yaml" in capsys.readouterr().err
    assert not (tmp_path / "a" / "runs").exists()  # nothing trained

    raw = yaml.safe_load(Path(configs[1]).read_text())
    raw["data"]["src_lang"], raw["data"]["tgt_lang"] = "en", "de"
    swapped = tmp_path / "swapped.yaml"
    swapped.write_text(yaml.safe_dump(raw))
    code = _compare(
        "--configs",
        configs[0],
        str(swapped),
        "--budget-steps",
        "2",
        "--output",
        str(tmp_path / "b"),
    )
    err = capsys.readouterr().err
    assert code == 2 and "language pairs" in err and "swapped (en-de)" in err

    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert (
        _compare(str(out / "runs" / "transformer"), str(empty), "--output", str(tmp_path / "c"))
        == 2
    )
    assert "empty_run has no usable checkpoint" in capsys.readouterr().err


def test_budget_schedule_warms_up_and_ends_with_the_budget() -> None:
    config = TrainConfig(schedule="budget", lr=1e-3, min_lr=1e-6, budget_warmup=0.1, max_steps=100)
    assert lr_factor(1, config, 64, budget_used=0.05) == pytest.approx(0.5)
    assert lr_factor(1, config, 64, budget_used=0.1) == pytest.approx(1.0)
    assert lr_factor(1, config, 64, budget_used=1.0) == pytest.approx(1e-3)
    assert lr_factor(50, config, 64) < lr_factor(20, config, 64)  # steps when no time budget
