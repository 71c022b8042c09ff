#!/usr/bin/env python
"""Score a shipped Multi30k model with its own decoding defaults and write its model card.

The model is decoded exactly as `nmt translate --checkpoint MODEL` decodes it (no flags), on
the validation split and on test_2016_flickr, and scored in two settings: sacreBLEU (cased,
detokenized, raw references) and the multimodal-MT literature's (lowercased, Moses-tokenized
hypotheses against the official tok/*.lc.norm.tok.* references). Writes MODEL's card beside
it (<stem>.md) and the scores with their signatures (<stem>.json).

  python scripts/model_card.py models/transformer_de-en.pt \
      --trained-with "nmt train --config configs/multi30k_de_en.yaml ..." \
      --exported-with "nmt export --checkpoint ... --output models/transformer_de-en.pt ..."
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from results_table import score_both_settings

from nmt.cpu import cpu_name
from nmt.files import read_lines
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


def card_text(
    model: Path, translator: Translator, scores: list[dict[str, Any]], args: argparse.Namespace
) -> str:
    info, decode = translator.info, translator.decode
    rows = "\n".join(
        f"| {s['split']} | {s['sentences']} | {s['bleu_literature']:.1f} | {s['bleu']:.1f} | "
        f"{s['chrf']:.1f} | {s['ter']:.1f} |"
        for s in scores
    )
    signatures = scores[-1]["signatures"]
    size = model.stat().st_size / 2**20
    return f"""# {model.stem}

{info.architecture}, {info.src_lang}→{info.tgt_lang}, {info.parameters / 1e6:.1f}M parameters,
trained on Multi30k's 29,000 training pairs only (text only; no images, no other data).
Slim checkpoint ({size:.1f} MB): weights stored in half precision and computed in fp32, the
SentencePiece models and the training config inside, no optimizer state.

## Use
```bash
nmt translate --checkpoint {model.as_posix()} <<< "..."
nmt serve --checkpoint {model.as_posix()}
```

## Scores
Decoded with the model's own defaults, chosen on the validation split: beam {decode.beam_size},
length penalty {decode.length_penalty}. The test split was scored once, with these settings.

| split | sentences | BLEU (lit.) | sacreBLEU | chrF | TER |
|---|---|---|---|---|---|
{rows}

- BLEU (lit.): `{signatures["bleu_literature"]}`, lowercased, Moses-normalised and
  -tokenized hypotheses against the official tokenized references.
- sacreBLEU: `{signatures["bleu"]}`; chrF: `{signatures["chrf"]}`; TER: `{signatures["ter"]}`.

## How it was made
```bash
{args.trained_with}
{args.exported_with}
python scripts/model_card.py {model.as_posix()} --trained-with "..." --exported-with "..."
```
Trained step: {info.step}. Card written {time.strftime("%Y-%m-%d")} on {cpu_name()}
({platform.machine()}, torch {torch.__version__}).

## Limits
Multi30k describes images in short, simple sentences; expect much worse translations of
other domains, of long sentences and of rare words.
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="the slim checkpoint (nmt export --format torch)")
    parser.add_argument("--trained-with", required=True, help="the training command(s)")
    parser.add_argument("--exported-with", required=True, help="the export command")
    parser.add_argument("--data-dir", default=os.environ.get("NMT_DATA_DIR", "data"))
    args = parser.parse_args()
    model = Path(args.model)
    translator = Translator.load(model)
    data_dir = Path(args.data_dir)
    scores = [score_split(translator, data_dir, split) for split in ("val", "test_2016_flickr")]
    summary = {
        "model": model.name,
        "sha256": translator.info.sha256,
        "decode": {
            "beam_size": translator.decode.beam_size,
            "length_penalty": translator.decode.length_penalty,
        },
        "scores": scores,
    }
    model.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    model.with_suffix(".md").write_text(card_text(model, translator, scores, args))
    for s in scores:
        print(f"{s['split']}: BLEU (lit.) {s['bleu_literature']:.2f}, sacreBLEU {s['bleu']:.2f}")
    print(f"wrote {model.with_suffix('.md')} and {model.with_suffix('.json')}")


if __name__ == "__main__":
    main()
