#!/usr/bin/env python
"""Decoding speed: sentences/s and target tokens/s on Multi30k test_2016_flickr (1,000 sentences).

Greedy and beam search (default beam 5), batches of ~64 sentences sorted by length, with the
model's incremental decoding (Transformer: KV cache; RNN: recurrent state) and, for
comparison, WITHOUT a cache: every step re-runs `model.forward` (encoder and decoder) over the
source and the whole target prefix. The two must produce the same translations; the script
checks that too. On CPU it also runs the cached decoder with the vocabulary projection in
bf16 (what `decode.precision: bf16` does there) and prints how many outputs stay the same.

  python scripts/bench_decode.py runs/multi30k_de_en_de-en/best.pt
  python scripts/bench_decode.py --limit 50        # a randomly initialised reference-sized model
  # engines side by side: the checkpoint (PyTorch) and CTranslate2 exports of it
  python scripts/bench_decode.py CKPT --threads 1 --engines pytorch ct2:float32 ct2:int8

With --engines each engine translates the same length-sorted batches through
`Translator.translate` (what `nmt translate` and `nmt serve` run); `ct2:QUANT` exports the
checkpoint with that quantization into a temporary directory first, a directory path uses
that export. It prints sentences/s, the ratio to the first engine, BLEU on the references
and how many outputs equal the first engine's.

Without a checkpoint the model is the reference config's architecture, RANDOMLY INITIALISED
(labelled as such): its outputs are noise and mostly run to the maximum length, so only the
per-token speed is meaningful. Its SentencePiece model is trained on the Multi30k training
data first (a few seconds).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt.allocator import keep_freed_memory
from nmt.config import load_config
from nmt.cpu import cpu_name, has_native_bf16
from nmt.files import read_lines
from nmt.model import build_model, count_parameters
from nmt.search import Hypothesis, beam_search, greedy_search
from nmt.specials import PAD_ID
from nmt.tokenizer import Tokenizer
from nmt.translator import Translator

REPO = Path(__file__).resolve().parents[1]
DecoderState = dict[str, Tensor]


class FullPrefixDecoder:
    """The decode_step interface WITHOUT any cache: each step calls model.forward on the
    source and the full target prefix and keeps only the last position. Benchmark baseline."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.max_target_len = getattr(model, "max_target_len", None)

    def encode(self, src: Tensor, src_mask: Tensor) -> DecoderState:
        prefix = src.new_zeros(src.size(0), 0)
        return {"src": src, "src_mask": src_mask, "prefix": prefix}

    def decode_step(
        self,
        state: DecoderState,
        prev_tokens: Tensor,
        with_attention: bool = True,
        logits_dtype: torch.dtype | None = None,  # the baseline always decodes in fp32
    ) -> tuple[Tensor, Tensor | None, DecoderState]:
        prefix = torch.cat([state["prefix"], prev_tokens.unsqueeze(1)], dim=1)
        src, src_mask = state["src"], state["src_mask"]
        logits, attention = self.model(src, src_mask, prefix, with_attention=with_attention)
        log_probs = F.log_softmax(logits[:, -1].float(), dim=-1)
        last = None if attention is None else attention[:, -1].float()
        return log_probs, last, {"src": src, "src_mask": src_mask, "prefix": prefix}

    def reorder(
        self, state: DecoderState, rows: Tensor, sentences: Tensor | None = None
    ) -> DecoderState:
        """Every tensor here is per row, so new row (n, w) copies row rows[n, w]; `sentences`
        matters only to state kept per sentence, which this decoder has none of."""
        flat = rows.reshape(-1)
        return {key: value.index_select(0, flat) for key, value in state.items()}


def load_model(
    args: argparse.Namespace, data_dir: Path
) -> tuple[nn.Module, Tokenizer, dict[str, Any], str]:
    """(model, tokenizer, decode settings, label) from a checkpoint or a random reference model."""
    if args.checkpoint:
        translator = Translator.load(args.checkpoint, device=args.device)
        if not isinstance(translator.model, nn.Module):
            raise SystemExit("bench_decode: an exported model directory needs --engines")
        decode = dataclasses.asdict(translator.decode)
        return translator.model, translator.tokenizer, decode, f"checkpoint {args.checkpoint}"
    config = load_config(args.config)
    lang_src, lang_tgt = config.data.src_lang, config.data.tgt_lang
    src_train = read_lines(data_dir / "multi30k" / f"train.{lang_src}.gz")
    tgt_train = read_lines(data_dir / "multi30k" / f"train.{lang_tgt}.gz")
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = Tokenizer.train(
            config.tokenizer, src_train, tgt_train, lang_src, lang_tgt, Path(tmp)
        )
    torch.manual_seed(1)
    model = build_model(
        config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, tokenizer.joint
    )
    model.to(args.device).eval()
    label = f"RANDOMLY INITIALISED {config.model.arch} from {args.config} (not a trained model)"
    return model, tokenizer, dataclasses.asdict(config.decode), label


def batches(ids: list[list[int]], size: int, device: str) -> list[tuple[Tensor, Tensor]]:
    """Length-sorted batches of `size` sentences: (src, src_mask) [B, S]."""
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    out = []
    for start in range(0, len(order), size):
        chunk = [ids[i] for i in order[start : start + size]]
        src = torch.full((len(chunk), max(map(len, chunk))), PAD_ID, dtype=torch.long)
        for row, seq in enumerate(chunk):
            src[row, : len(seq)] = torch.tensor(seq)
        src = src.to(device)
        out.append((src, src != PAD_ID))
    return out


def run(
    step_model: Any,
    data: list[tuple[Tensor, Tensor]],
    beam: int,
    decode: dict[str, Any],
    logits_dtype: torch.dtype | None,
) -> tuple[float, list[list[int]]]:
    """Seconds and best token lists for decoding all batches."""
    outputs: list[list[int]] = []
    start = time.perf_counter()
    with torch.inference_mode():
        for src, mask in data:
            if beam == 1:
                hyps: list[list[Hypothesis]] = greedy_search(
                    step_model,
                    src,
                    mask,
                    decode["max_len_a"],
                    decode["max_len_b"],
                    decode["min_len"],
                    logits_dtype=logits_dtype,
                )
            else:
                hyps = beam_search(
                    step_model,
                    src,
                    mask,
                    beam,
                    1,
                    decode["length_penalty"],
                    decode["max_len_a"],
                    decode["max_len_b"],
                    decode["min_len"],
                    logits_dtype=logits_dtype,
                )
            outputs.extend(h[0].tokens for h in hyps)
    return time.perf_counter() - start, outputs


def _agreement(outputs: list[list[int]], reference: list[list[int]]) -> str:
    """ "yes" when every output equals the reference decoder's, else the share that does."""
    equal = sum(a == b for a, b in zip(outputs, reference))
    return "yes" if equal == len(reference) else f"{equal}/{len(reference)}"


def engine_translator(name: str, checkpoint: str, device: str, tmp: Path) -> Translator:
    """pytorch: the checkpoint; ct2:QUANT: its export with that quantization (written to
    `tmp`); a directory: that export."""
    from nmt.ct2_export import export_ctranslate2

    if name == "pytorch":
        return Translator.load(checkpoint, device=device)
    if name.startswith("ct2:"):
        quantization = name.split(":", 1)[1]
        directory = export_ctranslate2(checkpoint, tmp / quantization, quantization)
        return Translator.load(directory, device=device)
    return Translator.load(name, device=device)


def compare_engines(args: argparse.Namespace, data_dir: Path) -> list[dict[str, Any]]:
    """Each engine translates the same length-sorted batches; sent/s, BLEU, agreement."""
    from nmt.evaluate import bleu_metric

    if not args.checkpoint:
        raise SystemExit("bench_decode: --engines needs a checkpoint")
    with tempfile.TemporaryDirectory() as tmp:
        translators = {
            name: engine_translator(name, args.checkpoint, args.device, Path(tmp))
            for name in args.engines
        }
    first = next(iter(translators.values()))
    src_lang, tgt_lang = first.info.src_lang, first.info.tgt_lang
    sources = read_lines(data_dir / "multi30k" / f"test_2016_flickr.{src_lang}.gz")[: args.limit]
    refs = read_lines(data_dir / "multi30k" / f"test_2016_flickr.{tgt_lang}.gz")[: args.limit]
    order = sorted(range(len(sources)), key=lambda i: -len(sources[i]))
    chunks = [order[i : i + args.batch_size] for i in range(0, len(order), args.batch_size)]
    bleu = bleu_metric(tgt_lang, lowercase=first.info.lowercase)
    print(
        f"checkpoint {args.checkpoint}: {first.info.architecture}; {len(sources)} sentences, "
        f"batches of {args.batch_size}, device {args.device} ({cpu_name()}), "
        f"{torch.get_num_threads()} threads; load average "
        + ", ".join(f"{v:.2f}" for v in os.getloadavg())
    )
    print(f"{'engine':<26}{'search':<10}{'seconds':>9}{'sent/s':>9}{'ratio':>8}{'BLEU':>7}  same")
    results = []
    for beam in args.beams:
        base: tuple[float, list[str]] | None = None
        for name, translator in translators.items():
            # one sub-batch per chunk, as the plain decoders above get
            translator.decode = dataclasses.replace(translator.decode, batch_tokens=1 << 30)
            texts: list[str] = [""] * len(sources)
            start = time.perf_counter()
            for chunk in chunks:
                done = translator.translate([sources[i] for i in chunk], beam_size=beam)
                for i, translation in zip(chunk, done):
                    texts[i] = translation.text
            seconds = time.perf_counter() - start
            rate = len(sources) / seconds
            base = base or (rate, texts)
            same = sum(a == b for a, b in zip(texts, base[1]))
            score = bleu.corpus_score(texts, [refs]).score
            search = "greedy" if beam == 1 else f"beam {beam}"
            label = (
                name
                if translator.info.engine == "pytorch"
                else f"ctranslate2 {translator.info.quantization}"
            )
            results.append(
                {
                    "engine": label,
                    "search": search,
                    "seconds": round(seconds, 3),
                    "sentences_per_s": round(rate, 2),
                    "ratio": round(rate / base[0], 3),
                    "bleu": round(score, 2),
                    "same_output": same,
                }
            )
            print(
                f"{label:<26}{search:<10}{seconds:>9.2f}{rate:>9.1f}{rate / base[0]:>7.2f}x"
                f"{score:>7.2f}  {same}/{len(sources)}"
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "checkpoint", nargs="?", help="checkpoint (default: a random reference-sized model)"
    )
    parser.add_argument(
        "--config",
        default=str(REPO / "configs" / "multi30k_de_en.yaml"),
        help="config of the random model when no checkpoint is given",
    )
    default_data = os.environ.get("NMT_DATA_DIR", str(REPO.parent / "shared" / "data"))
    parser.add_argument("--data-dir", default=default_data, help="the shared corpora")
    parser.add_argument(
        "--limit", type=int, default=1000, help="sentences to decode (default: all 1,000)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per batch")
    parser.add_argument(
        "--beams", type=int, nargs="+", default=[1, 5], help="beam sizes (1 = greedy)"
    )
    parser.add_argument("--skip-no-cache", action="store_true", help="only the cached decoder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument(
        "--engines",
        nargs="+",
        metavar="ENGINE",
        help="compare engines instead: pytorch, ct2:QUANT (export the checkpoint with "
        "QUANT, e.g. ct2:float32 ct2:int8) or an exported model directory",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory(torch.device(args.device).type)  # as nmt translate / serve do
    data_dir = Path(args.data_dir)
    if args.engines:
        rows = compare_engines(args, data_dir)
        if args.json:
            Path(args.json).write_text(json.dumps({"results": rows}, indent=2) + "\n")
        return
    model, tokenizer, decode, label = load_model(args, data_dir)
    test_file = data_dir / "multi30k" / f"test_2016_flickr.{tokenizer.src_lang}.gz"
    sources = read_lines(test_file)[: args.limit]
    data = batches(tokenizer.encode_src(sources), args.batch_size, args.device)
    print(
        f"model: {label}; {count_parameters(model):,} parameters; {len(sources)} sentences, "
        f"batches of {args.batch_size}, device {args.device} ({cpu_name()}), "
        f"{torch.get_num_threads()} threads"
    )
    variants: list[tuple[str, Any, torch.dtype | None]] = [("cached", model, None)]
    if args.device == "cpu" and not has_native_bf16():
        print("this CPU has no native bf16: skipping the bf16-projection decoder (emulated, slow)")
    elif args.device == "cpu":  # what decode.precision bf16 does on a CPU
        variants.append(("cached, bf16 projection", model, torch.bfloat16))
    if not args.skip_no_cache:
        variants.append(("no cache (full forward)", FullPrefixDecoder(model), None))
    results = []
    header = f"{'decoder':<26}{'search':<10}{'seconds':>9}{'sent/s':>10}{'tgt tok/s':>11}"
    print(header + "  same output")
    for beam in args.beams:
        reference: list | None = None
        for name, step_model, logits_dtype in variants:
            seconds, outputs = run(step_model, data, beam, decode, logits_dtype)
            tokens = sum(len(t) + 1 for t in outputs)  # + EOS
            same = "-" if reference is None else _agreement(outputs, reference)
            reference = reference if reference is not None else outputs
            search = "greedy" if beam == 1 else f"beam {beam}"
            row = {
                "decoder": name,
                "search": search,
                "seconds": round(seconds, 3),
                "sentences_per_s": round(len(sources) / seconds, 2),
                "target_tokens_per_s": round(tokens / seconds, 1),
                "same_output": same,
            }
            results.append(row)
            print(
                f"{name:<26}{search:<10}{seconds:>9.2f}{row['sentences_per_s']:>10.1f}"
                f"{row['target_tokens_per_s']:>11.0f}  {same}"
            )
    if args.json:
        report = {"model": label, "sentences": len(sources), "results": results}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
