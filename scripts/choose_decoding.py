#!/usr/bin/env python
"""Choose a Multi30k model's checkpoint and length penalty on the validation split alone.

Every candidate is decoded on val with beam `--beam` and each GNMT alpha, scored in the
literature's setting (BLEU (lit.)); the best pair is printed with the `nmt export` command
that makes it a slim model with those decoding defaults (for a single checkpoint). A
candidate `A.pt,B.pt` is the ensemble of those checkpoints, so averaging and ensembling are
compared on val too. With `--rerank-with REV.pt ...` (reverse, target->source models; see
nmt/rerank.py) every candidate's hypotheses are reranked, and the rerank weight is chosen
with the length penalty over `--rerank-weights` (one search of val per length penalty, its
hypotheses reranked with every weight). The test split is not read.

  python scripts/choose_decoding.py runs/x/best.pt runs/x/averaged.pt \
      runs/x/best.pt,runs/x/averaged.pt \
      --length-penalties 0.6 1.0 1.3 1.6 --output models/transformer_de-en.pt
  python scripts/choose_decoding.py models/transformer_en-de.pt,models/transformer_en-de_seed2.pt \
      --rerank-with models/transformer_de-en.pt --rerank-weights 0 0.2 0.5 \
      --length-penalties 1.0 1.3 1.6
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import torch
from results_table import tune_length_penalty, validation_split

from nmt.evaluate import score_corpus
from nmt.rerank import Reranker
from nmt.translator import Translator


def rerank_grid(
    translator: Translator,
    reranker: Reranker,
    data_dir: Path,
    beam: int,
    alphas: list[float],
    weights: list[float],
) -> dict[tuple[float, float], float]:
    """Validation BLEU (lit.) of every (length penalty, rerank weight): one search of val per
    length penalty, its hypotheses reranked with each weight (as `translate` would)."""
    sources, refs = validation_split(translator, data_dir)
    tgt = translator.info.tgt_lang
    scores = {}
    for alpha in alphas:
        translator.decode = dataclasses.replace(translator.decode, length_penalty=alpha)
        found = translator.hypotheses(sources, beam)
        hyps = [[hyp for hyp, _ in sentence] for sentence in found]
        texts = [[text for _, text in sentence] for sentence in found]
        for weight in weights:
            reranker.weight = weight
            ranked = reranker.rerank(sources, hyps, texts, alpha)
            best = [sentence[0][1] if sentence else "" for sentence in ranked]
            bleu = round(score_corpus(best, refs, tgt, literature=True)["bleu"], 2)
            scores[(alpha, weight)] = bleu
            print(f"valid BLEU (lit.) {bleu:.2f}: length penalty {alpha}, rerank weight {weight}")
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "checkpoints", nargs="+", help="candidate checkpoints; A.pt,B.pt is an ensemble"
    )
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--length-penalties", type=float, nargs="+", default=[0.6, 1.0])
    parser.add_argument("--data-dir", default=os.environ.get("NMT_DATA_DIR", "data"))
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument("--output", default="MODEL.pt", help="for the printed export command")
    parser.add_argument(
        "--rerank-with", nargs="+", metavar="CHECKPOINT", help="reverse models that rerank"
    )
    parser.add_argument(
        "--rerank-weights", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.5, 1.0]
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    reranker = Reranker.load(args.rerank_with, 0.0) if args.rerank_with else None
    results: list[tuple[float, str, float, float | None]] = []
    for checkpoint in args.checkpoints:
        translator = Translator.load_ensemble(checkpoint.split(","))
        if reranker is None:
            alpha, by_alpha = tune_length_penalty(
                translator, Path(args.data_dir), args.beam, args.length_penalties
            )
            results.append((by_alpha[str(alpha)], checkpoint, alpha, None))
            continue
        translator.rerank_with(reranker)  # checks the languages
        data_dir, alphas = Path(args.data_dir), args.length_penalties
        grid = rerank_grid(translator, reranker, data_dir, args.beam, alphas, args.rerank_weights)
        results += [(bleu, checkpoint, alpha, weight) for (alpha, weight), bleu in grid.items()]
    bleu, checkpoint, alpha, weight = max(results, key=lambda r: r[0])
    reranked = "" if weight is None else f", rerank weight {weight}"
    print(f"best on val: {checkpoint}, length penalty {alpha}{reranked}: BLEU (lit.) {bleu:.2f}")
    if weight is not None:
        assert args.rerank_with is not None
        print(
            f"decode it with --checkpoint {checkpoint.replace(',', ' ')} --length-penalty "
            f"{alpha} --rerank-with {' '.join(args.rerank_with)} --rerank-weight {weight}"
        )
        return
    if "," in checkpoint:
        print(f"an ensemble: decode it with --checkpoint {checkpoint.replace(',', ' ')}")
        return
    print(
        f"nmt export --checkpoint {checkpoint} --format torch --beam {args.beam} "
        f"--length-penalty {alpha} --output {args.output}"
    )


if __name__ == "__main__":
    main()
