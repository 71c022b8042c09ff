#!/usr/bin/env python
"""Score a shipped Multi30k model (or an ensemble of them) and write its model card.

The model is decoded exactly as `nmt translate --checkpoint MODEL` decodes it (no flags), on
the validation split and on test_2016_flickr, and scored in two settings: sacreBLEU (cased,
detokenized, raw references) and the multimodal-MT literature's (lowercased, Moses-tokenized
hypotheses against the official tok/*.lc.norm.tok.* references). Writes MODEL's card beside
it (<stem>.md) and the scores with their signatures (<stem>.json).

Several models are an ensemble, decoded as `nmt translate --checkpoint A B --length-penalty X`
(the length penalty chosen for the ensemble on val); its card is `--card` (.md and .json).
`--rerank-with REV.pt ... --rerank-weight W` reranks the model's (or ensemble's) hypotheses
with reverse models (nmt/rerank.py), the weight chosen on val with the length penalty; such a
system's card is `--card` too.

  python scripts/model_card.py models/transformer_de-en.pt \
      --trained-with "nmt train --config configs/multi30k_de_en.yaml ..." \
      --exported-with "nmt export --checkpoint ... --output models/transformer_de-en.pt ..."
  python scripts/model_card.py models/transformer_de-en.pt models/lstm_bahdanau_de-en.pt \
      --length-penalty 2.0 --card models/ensemble_de-en --chosen-with "python scripts/..."
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import textwrap
import time
from pathlib import Path
from typing import Any

import torch
from results_table import score_both_settings

from nmt.config import ConfigError
from nmt.cpu import cpu_name
from nmt.files import read_lines
from nmt.rerank import Reranker, check_rerank_options
from nmt.translator import Translator


def score_split(translator: Translator, data_dir: Path, split: str) -> dict[str, Any]:
    """Both settings' scores of `split` (val or test_2016_flickr), decoded with the defaults."""
    sources = read_lines(data_dir / "multi30k" / f"{split}.{translator.info.src_lang}.gz")
    hyps = [t.text for t in translator.translate(sources)]
    standard, literature = score_both_settings(translator, data_dir, split, sources, hyps)
    return {
        "split": split,
        "sentences": len(hyps),
        "bleu_literature": round(literature["bleu"], 2),
        "bleu": round(standard["bleu"], 2),
        "chrf": round(standard["chrf"], 2),
        "ter": round(standard["ter"], 2),
        "signatures": {
            "bleu_literature": literature["signatures"]["bleu"],
            "bleu": standard["signatures"]["bleu"],
            "chrf": standard["signatures"]["chrf"],
            "ter": standard["signatures"]["ter"],
        },
    }


def paragraph(text: str) -> str:
    """`text` wrapped at 92 columns like the rest of the repository's prose; `--data` may
    arrive with line breaks of its own from the shell."""
    return textwrap.fill(" ".join(text.split()), 92, break_on_hyphens=False)


def card_text(
    models: list[Path],
    translator: Translator,
    scores: list[dict[str, Any]],
    args: argparse.Namespace,
) -> str:
    info, decode = translator.info, translator.decode
    rows = "\n".join(
        f"| {s['split']} | {s['sentences']} | {s['bleu_literature']:.1f} | {s['bleu']:.1f} | "
        f"{s['chrf']:.1f} | {s['ter']:.1f} |"
        for s in scores
    )
    signatures = scores[-1]["signatures"]
    commands = [args.trained_with, args.exported_with, args.chosen_with]
    made_with = "\n".join(c for c in commands if c)
    paths = " ".join(m.as_posix() for m in models)
    pair, millions = f"{info.src_lang}→{info.tgt_lang}", f"{info.parameters / 1e6:.1f}M"
    data = args.data
    if len(models) == 1:
        size = models[0].stat().st_size / 2**20
        what = paragraph(
            f"{info.architecture}, {pair}, {millions} parameters, trained on {data}. "
            f"Slim checkpoint ({size:.1f} MB): weights stored in half precision and computed "
            "in fp32, the SentencePiece models and the training config inside, no optimizer "
            "state."
        )
        flags, decoded, step = "", "the model's own default", f"Trained step: {info.step}. "
    else:
        members = "\n".join(f"- `{m.as_posix()}` (see its card)" for m in models)
        what = paragraph(
            f"An ensemble of {len(models)} shipped models, {pair}, {millions} parameters in "
            f"all, each trained on {data}. Their log-probabilities are averaged at every "
            "step of one beam search."
        )
        what += f"\n\n{members}"
        flags, decoded, step = f" --length-penalty {decode.length_penalty}", "these", ""
    reranked = ""
    if translator.reranker is not None:
        reverse = translator.reranker.to_dict()
        what += "\n\n" + paragraph(
            "Every hypothesis the beam finishes is reranked by (log p(y|x) + "
            f"{reverse['weight']} · log p(x|y)) / lp(|y|), with log p(x|y) the mean "
            "log-probability of the source under the reverse models below (nmt/rerank.py)."
        )
        what += "\n\n" + "\n".join(
            f"- reverse: `{path}` (see its card)" for path in reverse["reverse_checkpoints"]
        )
        flags = (
            f" --length-penalty {decode.length_penalty} --rerank-with "
            f"{' '.join(reverse['reverse_checkpoints'])} --rerank-weight {reverse['weight']}"
        )
        decoded, reranked = "these", f", rerank weight {reverse['weight']}"
    written = f"{step}Card written {time.strftime('%Y-%m-%d')} on {cpu_name()}"
    return f"""# {args.card.name}

{what}

## Use
```bash
nmt translate --checkpoint {paths}{flags} <<< "..."
nmt serve --checkpoint {paths}{flags}
```

## Scores
Decoded with {decoded} settings, chosen on the validation split: beam {decode.beam_size},
length penalty {decode.length_penalty}{reranked}. The test split was scored once, with these
settings.

| split | sentences | BLEU (lit.) | sacreBLEU | chrF | TER |
|---|---|---|---|---|---|
{rows}

- BLEU (lit.): `{signatures["bleu_literature"]}`, lowercased, Moses-normalised and
  -tokenized hypotheses against the official tokenized references.
- sacreBLEU: `{signatures["bleu"]}`; chrF: `{signatures["chrf"]}`; TER: `{signatures["ter"]}`.

## How it was made
```bash
{made_with}
python scripts/model_card.py {paths}{flags} ...
```
{written}
({platform.machine()}, torch {torch.__version__}).

## Limits
Multi30k describes images in short, simple sentences; expect much worse translations of
other domains, of long sentences and of rare words.
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "models",
        nargs="+",
        help="the slim checkpoint (nmt export --format torch); several: their ensemble",
    )
    parser.add_argument("--trained-with", help="the training command(s)")
    parser.add_argument("--exported-with", help="the export command")
    parser.add_argument("--chosen-with", help="the command that chose the ensemble on val")
    parser.add_argument(
        "--length-penalty", type=float, help="an ensemble's, chosen on val (default: the first's)"
    )
    parser.add_argument("--rerank-with", nargs="+", type=Path, help="reverse models")
    parser.add_argument("--rerank-weight", type=float, help="their weight, chosen on val")
    parser.add_argument(
        "--data",
        default="Multi30k's 29,000 training pairs only (text only; no images, no other data)",
        help="what the model (each member) was trained on, for the card",
    )
    parser.add_argument("--card", type=Path, help="card path without suffix (an ensemble's)")
    parser.add_argument("--data-dir", default=os.environ.get("NMT_DATA_DIR", "data"))
    args = parser.parse_args()
    models = [Path(m) for m in args.models]
    if len(models) > 1 and args.card is None:
        parser.error("an ensemble's card needs --card")
    try:
        check_rerank_options(args.rerank_with, args.rerank_weight)
    except ConfigError as e:
        parser.error(str(e))
    reranked = args.rerank_with is not None
    if reranked and args.card is None:
        parser.error("a reranked system's card needs --card")
    if len(models) == 1 and args.length_penalty is not None and not reranked:
        parser.error("a single model is scored with its own defaults: re-export it instead")
    args.card = args.card or models[0].with_suffix("")
    translator = Translator.load_ensemble(models)
    if reranked:
        translator.rerank_with(Reranker.load(args.rerank_with, args.rerank_weight))
    if args.length_penalty is not None:
        translator.decode = dataclasses.replace(
            translator.decode, length_penalty=args.length_penalty
        )
    data_dir = Path(args.data_dir)
    scores = [score_split(translator, data_dir, split) for split in ("val", "test_2016_flickr")]
    summary = {
        "model": " ".join(m.name for m in models),
        "sha256": translator.info.sha256,
        "decode": {
            "beam_size": translator.decode.beam_size,
            "length_penalty": translator.decode.length_penalty,
            "rerank": translator.reranker and translator.reranker.to_dict(),
        },
        "scores": scores,
    }
    card, data = args.card.with_suffix(".md"), args.card.with_suffix(".json")
    data.write_text(json.dumps(summary, indent=2) + "\n")
    card.write_text(card_text(models, translator, scores, args))
    for s in scores:
        print(f"{s['split']}: BLEU (lit.) {s['bleu_literature']:.2f}, sacreBLEU {s['bleu']:.2f}")
    print(f"wrote {card} and {data}")


if __name__ == "__main__":
    main()
