#!/usr/bin/env python
"""Score finished Multi30k runs on test_2016_flickr and print the README's results table.

For each run folder: take averaged.pt when its validation BLEU beats best.pt's (else best.pt),
translate test_2016_flickr with beam 5, and score it twice: standard sacreBLEU (cased,
detokenized) and the literature's setting (lowercased, Moses-tokenized hypothesis against the
official tok/*.lc.norm.tok.* references). Writes test.hyp.<lang> and results.json into each
run folder and prints one Markdown row per run.

`--length-penalties A B ...` first decodes the validation split (val) with each GNMT alpha and
keeps the one with the best literature-setting BLEU there; test is decoded once, with it.

  python scripts/results_table.py runs/ref_transformer_en-de runs/ref_lstm_bahdanau_en-de
  python scripts/results_table.py runs/lc_en-de --length-penalties 0.3 0.6 1.0 1.5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

from nmt.checkpoint import load_checkpoint
from nmt.evaluate import ScoringPolicy, score_corpus
from nmt.files import read_lines, write_lines
from nmt.runlog import read_metrics
from nmt.translator import Translator


def pick_checkpoint(run_dir: Path) -> Path:
    """averaged.pt if it validated better than best.pt, else best.pt."""
    best = run_dir / "best.pt"
    averaged = run_dir / "averaged.pt"
    if not averaged.is_file():
        return best
    bleu = {p: load_checkpoint(p).metrics.get("valid_bleu", -1.0) for p in (best, averaged)}
    return averaged if bleu[averaged] >= bleu[best] else best


def training_minutes(run_dir: Path) -> float:
    """Wall-clock minutes of training from the run's metrics log (sessions summed)."""
    times = [r["time"] for r in read_metrics(run_dir, "train")]
    if len(times) < 2:
        return 0.0
    gaps = [b - a for a, b in zip(times, times[1:])]
    return sum(g for g in gaps if g < 600) / 60  # a gap of >10 min is a pause between sessions


def validation_split(translator: Translator, data_dir: Path) -> tuple[list[str], list[str]]:
    """Multi30k's val sources in the translator's source language, and the literature's
    tokenized references in its target language."""
    src, tgt = translator.info.src_lang, translator.info.tgt_lang
    sources = read_lines(data_dir / "multi30k" / f"val.{src}.gz")
    return sources, read_lines(data_dir / "multi30k" / "tok" / f"val.lc.norm.tok.{tgt}")


def tune_length_penalty(
    translator: Translator, data_dir: Path, beam: int, alphas: list[float]
) -> tuple[float, dict[str, float]]:
    """The alpha with the best validation BLEU (literature setting), and every alpha's BLEU."""
    sources, refs = validation_split(translator, data_dir)
    tgt = translator.info.tgt_lang
    scores = {}
    for alpha in alphas:
        translator.decode = dataclasses.replace(translator.decode, length_penalty=alpha)
        hyps = [t.text for t in translator.translate(sources, beam_size=beam)]
        scores[str(alpha)] = round(score_corpus(hyps, refs, tgt, literature=True)["bleu"], 2)
        print(
            f"{translator.info.checkpoint or ' + '.join(translator.info.members)}: "
            f"valid BLEU (lit.) {scores[str(alpha)]:.2f} "
            f"with length penalty {alpha}"
        )
    best = max(alphas, key=lambda a: scores[str(a)])
    return best, scores


def score_both_settings(
    translator: Translator, data_dir: Path, split: str, sources: list[str], hyps: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """`hyps` of Multi30k's `split` scored by sacreBLEU (cased, detokenized, raw references,
    with the model's scoring policy) and in the literature's setting."""
    tgt = translator.info.tgt_lang
    multi30k = data_dir / "multi30k"
    policy = ScoringPolicy.of(translator.tokenizer)
    standard = score_corpus(
        hyps,
        read_lines(multi30k / f"{split}.{tgt}.gz"),
        tgt,
        srcs=sources,
        remove_spaces=policy.remove_spaces,
        lowercase=policy.lowercase,
    )
    literature = score_corpus(
        hyps, read_lines(multi30k / "tok" / f"{split}.lc.norm.tok.{tgt}"), tgt, literature=True
    )
    return standard, literature


def score_run(
    run_dir: Path, data_dir: Path, beam: int, alphas: list[float] | None = None
) -> dict[str, Any]:
    checkpoint = pick_checkpoint(run_dir)
    translator = Translator.load(checkpoint)
    valid_by_alpha = None
    if alphas:
        alpha, valid_by_alpha = tune_length_penalty(translator, data_dir, beam, alphas)
        translator.decode = dataclasses.replace(translator.decode, length_penalty=alpha)
    src, tgt = translator.info.src_lang, translator.info.tgt_lang
    sources = read_lines(data_dir / "multi30k" / f"test_2016_flickr.{src}.gz")
    hyps = [t.text for t in translator.translate(sources, beam_size=beam)]
    write_lines(hyps, run_dir / f"test.hyp.{tgt}")
    standard, literature = score_both_settings(
        translator, data_dir, "test_2016_flickr", sources, hyps
    )
    result = {
        "run": str(run_dir),
        "checkpoint": checkpoint.name,
        "direction": f"{src}-{tgt}",
        "architecture": translator.info.architecture,
        "parameters": translator.info.parameters,
        "train_minutes": round(training_minutes(run_dir), 1),
        "beam": beam,
        "length_penalty": translator.decode.length_penalty,
        "valid_bleu_literature_by_length_penalty": valid_by_alpha,
        "bleu": round(standard["bleu"], 2),
        "chrf": round(standard["chrf"], 2),
        "bleu_literature": round(literature["bleu"], 2),
        "by_length": standard["by_length"],
        "signatures": {
            "sacrebleu": standard["signatures"]["bleu"],
            "literature": literature["signatures"]["bleu"],
        },
    }
    (run_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", help="run folders")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--data-dir", default=os.environ.get("NMT_DATA_DIR", "data"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--length-penalties",
        type=float,
        nargs="+",
        metavar="ALPHA",
        help="choose the length penalty among these on the validation split",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        "| model | direction | params | train min | checkpoint | BLEU (lit.) | BLEU (sacreBLEU) "
        "| chrF |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        r = score_run(Path(run), Path(args.data_dir), args.beam, args.length_penalties)
        print(
            f"| {r['architecture']} | {r['direction']} | {r['parameters'] / 1e6:.1f}M | "
            f"{r['train_minutes']:.0f} | {r['checkpoint']}, length penalty {r['length_penalty']} | "
            f"{r['bleu_literature']:.1f} | "
            f"{r['bleu']:.1f} | {r['chrf']:.1f} |"
        )


if __name__ == "__main__":
    main()
