"""Write a comparison as report.json, report.md (tables, PNGs beside it in plots/) and a
self-contained report.html (PNGs embedded as data URIs: opening it requests nothing).

Both documents are rendered from one list of sections, so they always say the same.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nmt.compare.assemble import Comparison
from nmt.compare.plots import all_plots, heatmap_file
from nmt.files import write_bytes_atomic, write_json_atomic

SECTIONS = ("Quality", "Cost", "Plots", "Alignment", "Examples", "Environment")


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)  # paragraphs
    table: tuple[list[str], list[list[str]]] | None = None  # header, rows
    images: list[tuple[str, str]] = field(default_factory=list)  # (file name, caption)
    code: str | None = None


def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _with_ci(score: dict[str, Any] | None) -> str:
    if score is None:
        return "–"
    low, high = score["ci95"]
    return f"{score['score']:.2f} [{low:.2f}, {high:.2f}]"


def _p(score: dict[str, Any] | None) -> str:
    if score is None or score.get("p_value") is None:
        return "baseline" if score is not None else "–"
    p = score["p_value"]
    bound = "≤ " if score.get("p_at_floor") else ""  # no resample as extreme: only a bound
    return f"{bound}{p:.4f}" + (" *" if p < 0.05 else "")


def _file_name(test: dict[str, Any]) -> str:
    """The test source's file name (its folder is the machine's business) or hub split."""
    return Path(test["src"]).name if test.get("src") else str(test.get("hub"))


def _quality(report: dict[str, Any]) -> Section:
    models = report["models"]
    has_lit = any(m["quality"]["bleu_literature"] for m in models)
    header = ["model", "BLEU [95% CI]", "p (BLEU)", "chrF [95% CI]", "TER [95% CI]"]
    header += ["BLEU greedy"] + (["BLEU lit. [95% CI]"] if has_lit else [])
    rows = []
    for m in models:
        q = m["quality"]
        row = [m["name"], _with_ci(q["bleu"]), _p(q["bleu"]), _with_ci(q["chrf"])]
        row += [_with_ci(q["ter"]), _num(q["bleu_greedy"], 2)]
        rows.append(row + ([_with_ci(q["bleu_literature"])] if has_lit else []))
    sig = report["significance"]
    test, dec = report["test_set"], report["decoding"]
    text = [
        f"Test set: {test['sentences']} sentences ({_file_name(test)}), "
        f"{test['src_lang']}→{test['tgt_lang']}; beam {dec['beam_size']}, length penalty "
        f"{dec['length_penalty']}. p: {sig['method']} against the baseline "
        f"{sig['baseline']} (* p < 0.05). Lower TER is better.",
        "Signatures: " + "; ".join(f"{v}" for v in sig["signatures"].values()),
    ]
    if sig.get("literature_signatures"):
        text.append(
            "BLEU lit.: lowercased, Moses-normalised and -tokenized against the official "
            f"tokenized references; {sig['literature_signatures']['bleu']}"
        )
    return Section("Quality", text, (header, rows))


def _cost(report: dict[str, Any]) -> Section:
    header = ["model", "parameters", "file MB", "train min", "steps", "steps/min", "train tok/s"]
    header += ["greedy sent/s", f"beam {report['decoding']['beam_size']} sent/s", "architecture"]
    rows = []
    for m in report["models"]:
        c = m["cost"]
        rows.append(
            [
                m["name"],
                f"{c['parameters']:,}",
                _num(c["model_mb"]),
                _num(c["train_minutes"]),
                f"{c['steps']:,}",
                _num(c["train_steps_per_minute"]),
                _num(c["train_tokens_per_s"], 0),
                _num(c["greedy_sentences_per_s"]),
                _num(c["beam_sentences_per_s"]),
                m["architecture"],
            ]
        )
    text = [
        f"Decoding measured in one process, {report['decoding']['threads']} thread(s) for "
        "every model, over the whole test set. Training tokens/s: target tokens, median of "
        "the logged windows."
    ]
    return Section("Cost", text, (header, rows))


def _plots(report: dict[str, Any], names: list[str]) -> Section:
    captions = {
        "valid_bleu_by_time.png": "Validation BLEU against training time",
        "valid_bleu_by_step.png": "Validation BLEU against optimiser steps",
        "train_loss.png": "Training loss",
        "bleu_by_length.png": "Test BLEU by source length (words)",
    }
    return Section("Plots", images=[(n, captions[n]) for n in names if n in captions])


def _alignment(report: dict[str, Any], names: list[str]) -> Section:
    header = ["model", "attention entropy (bits)", "mass near the diagonal", "argmax moves back"]
    rows = []
    for m in report["models"]:
        a = m["alignment"]
        if a is None:
            rows.append([m["name"], "no attention", "–", "–"])
        else:
            rows.append(
                [
                    m["name"],
                    f"{a['entropy_bits']:.2f}",
                    f"{a['diagonal_share']:.1%}",
                    f"{a['backward_rate']:.1%}",
                ]
            )
    text = [
        "Over the greedy translations of the test set, subword pieces without EOS: the mean "
        "entropy of a target piece's attention, the share of attention within 10% of the "
        "sentence's diagonal, and how often the most-attended source piece moves left from "
        "one target piece to the next."
    ]
    images = [
        (name, f"Attention on test sentence {row['index']}")
        for i, row in enumerate(report["heatmap_sentences"])
        if (name := heatmap_file(i)) in names
    ]
    return Section("Alignment", text, (header, rows), images)


def _examples(report: dict[str, Any]) -> Section:
    text = ["The test sentences on which the models' sentence chrF differs most."]
    rows = []
    for e in report["examples"]:
        rows.append([f"#{e['index']} source", e["source"]])
        rows.append(["reference", e["reference"]])
        rows.extend([name, out] for name, out in e["outputs"].items())
    return Section("Examples", text, (["", "text"], rows))


def _environment(report: dict[str, Any]) -> Section:
    env = report["environment"]
    keys = ["cpu", "cuda_device", "threads", "platform", "python", "torch", "sacrebleu"]
    keys += ["sentencepiece", "datasets", "nmt", "git_commit"]
    rows = [[k, str(env[k])] for k in keys if env.get(k) is not None]
    commands = [env["command"]]
    study = report.get("study")
    if study:
        budget = study["budget"]
        size = f"{budget['minutes']} min" if budget["minutes"] else f"{budget['steps']} steps"
        side = f"{study['parallel']} side by side, {study['threads']} thread(s) each"
        rows[:0] = [["budget", size], ["trainings", f"{side}, precision {study['precision']}"]]
        commands = study["commands"] + commands
    return Section("Environment", table=(["", ""], rows), code="\n".join(dict.fromkeys(commands)))


def sections(report: dict[str, Any], plot_names: list[str]) -> list[Section]:
    return [
        _quality(report),
        _cost(report),
        _plots(report, plot_names),
        _alignment(report, plot_names),
        _examples(report),
        _environment(report),
    ]


# --------------------------------------------------------------------------- rendering


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(parts: list[Section], plot_dir: str) -> str:
    lines = ["# Model comparison", ""]
    for s in parts:
        lines += [f"## {s.title}", ""]
        for paragraph in s.text:
            lines += [paragraph, ""]
        if s.table:
            header, rows = s.table
            lines.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            lines.append("")
        for name, caption in s.images:
            lines += [f"![{caption}]({plot_dir}/{name})", ""]
        if s.code:
            lines += ["```", s.code, "```", ""]
    return "\n".join(lines)


STYLE = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}
table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #ccc;
padding:.3em .6em;text-align:left}th{background:#f3f3f3}img{max-width:100%}
figure{margin:1em 0}pre{background:#f6f6f6;padding:1em;overflow-x:auto}"""


def render_html(parts: list[Section], pngs: dict[str, bytes]) -> str:
    e = html.escape
    out = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Model comparison</title>",
        f"<style>{STYLE}</style></head><body><h1>Model comparison</h1>",
    ]
    for s in parts:
        out.append(f"<h2>{e(s.title)}</h2>")
        out += [f"<p>{e(p)}</p>" for p in s.text]
        if s.table:
            header, rows = s.table
            out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
            out.append("</table>")
        for name, caption in s.images:
            data = base64.b64encode(pngs[name]).decode("ascii")
            out.append(
                f"<figure><img alt='{e(caption)}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{e(caption)}</figcaption></figure>"
            )
        if s.code:
            out.append(f"<pre>{e(s.code)}</pre>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(comparison: Comparison, output: Path) -> dict[str, Path]:
    """report.json, report.md, report.html and plots/*.png in `output`; returns their paths."""
    report = comparison.report
    pngs = all_plots(report, comparison.heatmaps)
    report["plots"] = [f"plots/{name}" for name in pngs]
    plot_dir = output / "plots"
    for name, data in pngs.items():
        write_bytes_atomic(plot_dir / name, data)
    parts = sections(report, list(pngs))
    paths = {
        "json": output / "report.json",
        "md": output / "report.md",
        "html": output / "report.html",
    }
    write_json_atomic(paths["json"], report)
    write_bytes_atomic(paths["md"], render_markdown(parts, "plots").encode("utf-8"))
    write_bytes_atomic(paths["html"], render_html(parts, pngs).encode("utf-8"))
    return paths
