"""The `nmt` command: thin subcommands that parse arguments, call the library and print.

Errors the user can fix (bad config, missing file, bad checkpoint) print one line and exit 2;
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from nmt.allocator import keep_freed_memory
from nmt.checkpoint import CheckpointError
from nmt.config import ConfigError, load_config

EXAMPLES = """examples:
  nmt prepare --config configs/multi30k_de_en.yaml
  nmt train --config configs/multi30k_de_en.yaml --set train.max_minutes=10
  nmt translate --checkpoint runs/multi30k_de_en_de-en/best.pt --beam 5 < input.de
  nmt align --checkpoint runs/multi30k_de_en_de-en/best.pt --src test.de --tgt test.en
  nmt evaluate --checkpoint runs/multi30k_de_en_de-en/best.pt --src test.de --ref test.en
  nmt serve --checkpoint runs/multi30k_de_en_de-en/best.pt --port 8000
  nmt export --checkpoint runs/multi30k_de_en_de-en/best.pt --format ctranslate2 \\
      --quantization int8 --output models/de-en-ct2
  nmt compare --configs configs/multi30k/rnn.yaml configs/multi30k/transformer.yaml \\
      --budget-minutes 10 --parallel 2 --output study
"""


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message is enough for the user (no traceback).

    Imported here, not at the top, so that `nmt --help` does not pay for torch and datasets.
    """
    from nmt.compare.runs import StudyError
    from nmt.ct2_export import ExportError
    from nmt.data import DataError
    from nmt.ensemble import EnsembleError
    from nmt.evaluate import EvaluationError
    from nmt.rerank import RerankError
    from nmt.tokenizer import TokenizerError
    from nmt.train import TrainingError
    from nmt.translator import TranslationError

    return (
        ConfigError,
        CheckpointError,
        FileNotFoundError,
        DataError,
        EvaluationError,
        EnsembleError,
        ExportError,
        RerankError,
        StudyError,
        TokenizerError,
        TrainingError,
        TranslationError,
    )


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config file (see configs/)")
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override config values, e.g. --set train.lr=3e-4 model.encoder_layers=4",
    )


# --------------------------------------------------------------------------- prepare


def _cmd_prepare(args: argparse.Namespace) -> None:
    from nmt.data import format_summary, prepare_data
    from nmt.train import default_run_dir

    config = load_config(args.config, args.set)
    work_dir = Path(args.work_dir) if args.work_dir else default_run_dir(config)
    prepared = prepare_data(config, work_dir)
    print(format_summary(prepared.stats))


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="load and clean the corpus, train SentencePiece, tokenize and cache",
        description="Load and clean the corpus, train (or reuse) SentencePiece, tokenize and "
        "cache the data in the run folder, and print a summary.",
    )
    _add_config_args(p)
    p.add_argument("--work-dir", help="folder for tokenizer and cache (default: the run folder)")
    p.set_defaults(func=_cmd_prepare)


# --------------------------------------------------------------------------- train


def _cmd_train(args: argparse.Namespace) -> None:
    from nmt.train import train

    config = load_config(args.config, args.set)
    if args.device:
        config.train.device = args.device
    if args.run_dir:
        config.train.run_dir = args.run_dir
    train(config, resume=args.resume)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a translator (single process, or multi-GPU/CPU under torchrun)",
        description="Train a model: creates the run folder, prepares the data, trains, "
        "validates (loss and sacreBLEU) and saves checkpoints. Launch with "
        "`torchrun --nproc_per_node=N -m nmt.cli train ...` for data-parallel training.",
    )
    _add_config_args(p)
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (overrides train.device)")
    p.add_argument("--run-dir", help="run folder (overrides train.run_dir)")
    p.add_argument("--resume", action="store_true", help="continue from the run's last.pt")
    p.set_defaults(func=_cmd_train)


# --------------------------------------------------------------------------- average


def _cmd_average(args: argparse.Namespace) -> None:
    from nmt.checkpoint import average_checkpoints, save_checkpoint
    from nmt.runfolder import snapshots_of_run

    if args.checkpoints:
        paths = list(args.checkpoints)
    elif args.run_dir and (args.last or args.best):
        paths = snapshots_of_run(args.run_dir, last=args.last, best=args.best)
    else:
        raise ConfigError("give --checkpoints FILE..., or --run-dir with --last N or --best N")
    save_checkpoint(average_checkpoints(paths), args.output)
    print(
        f"averaged {len(paths)} checkpoints ({', '.join(Path(p).name for p in paths)}) "
        f"into {args.output}"
    )


def _add_average(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "average",
        help="average the weights of several checkpoints",
        description="Average the weights of checkpoints of one run: listed files, or the last "
        "or best N snapshots of a run folder (by validation BLEU, from its checkpoints.json).",
    )
    p.add_argument("--checkpoints", nargs="+", help="checkpoint files of one run")
    p.add_argument("--run-dir", help="a run folder, with --last N or --best N")
    p.add_argument("--last", type=int, help="the N newest snapshots of --run-dir")
    p.add_argument(
        "--best", type=int, help="the N snapshots of --run-dir with the best validation BLEU"
    )
    p.add_argument("--output", required=True, help="where to write the averaged checkpoint")
    p.set_defaults(func=_cmd_average)


# --------------------------------------------------------------------------- export


def _cmd_export(args: argparse.Namespace) -> None:
    changes = {"beam_size": args.beam, "length_penalty": args.length_penalty}
    changes = {k: v for k, v in changes.items() if v is not None}
    if args.format == "ctranslate2":
        _export_ctranslate2(args, changes)
        return
    from nmt.slim import export_slim

    if args.quantization is not None:
        raise ConfigError("--quantization is for --format ctranslate2 (torch: --weights-dtype)")
    weights_dtype = args.weights_dtype or "fp16"
    slim = export_slim(args.checkpoint, args.output, weights_dtype, changes)
    size = Path(args.output).stat().st_size / 2**20
    print(
        f"wrote {args.output} ({size:.1f} MB, weights in {weights_dtype}, "
        f"beam {slim.config.decode.beam_size}, length penalty {slim.config.decode.length_penalty})"
    )


def _export_ctranslate2(args: argparse.Namespace, changes: dict) -> None:
    from nmt.ct2_export import export_ctranslate2

    if args.weights_dtype is not None:
        raise ConfigError("--weights-dtype is for --format torch (ctranslate2: --quantization)")
    quantization = args.quantization or "float32"
    output = export_ctranslate2(args.checkpoint, args.output, quantization, changes)
    print(f"wrote {output} (CTranslate2 model directory, {quantization})")


def _add_export(sub: argparse._SubParsersAction) -> None:
    from nmt.ct2_export import QUANTIZATIONS

    p = sub.add_parser(
        "export",
        help="write a checkpoint in a form for shipping or another inference engine",
        description="--format torch: a slim checkpoint for shipping (no optimizer state, weights "
        "in fp16 or bf16, SentencePiece models and config inside) that loads wherever a "
        "checkpoint does. --format ctranslate2: a CTranslate2 model directory (with the "
        "SentencePiece models and metadata) for faster decoding, which `nmt translate`, "
        "`evaluate` and `serve` take as --checkpoint (needs `pip install 'nmt[ct2]'`; RNN, "
        "sliding-window and linear-attention models are refused). --beam and "
        "--length-penalty, chosen on the validation split, become its decoding defaults.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint to export")
    p.add_argument(
        "--format", choices=["torch", "ctranslate2"], default="torch", help="output format"
    )
    p.add_argument(
        "--output", required=True, help="file (torch) or model directory (ctranslate2) to write"
    )
    p.add_argument(
        "--weights-dtype",
        choices=["fp16", "bf16", "fp32"],
        help="--format torch: storage type of the weights (cast to fp32 when loaded; default fp16)",
    )
    p.add_argument(
        "--quantization",
        choices=QUANTIZATIONS,
        help="--format ctranslate2: weight type (default float32: the same translations as "
        "the checkpoint; int8: about twice as fast on CPUs)",
    )
    p.add_argument("--beam", type=int, help="default beam size of the exported model")
    p.add_argument(
        "--length-penalty", type=float, help="default GNMT length penalty of the exported model"
    )
    p.set_defaults(func=_cmd_export)


# --------------------------------------------------------------------------- translate


def _add_decoding_args(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that decodes with a checkpoint."""
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")
    parser.add_argument(
        "--alignment-from",
        type=int,
        metavar="N",
        help="with several --checkpoint files (an ensemble): alignments of member N (0-based); "
        "default: the mean over the members that have attention",
    )
    parser.add_argument(
        "--truncate",
        action="store_true",
        help="cut inputs longer than the model accepts instead of failing",
    )
    parser.add_argument(
        "--batch-tokens",
        type=int,
        help="source tokens per decoding batch (default: decode.batch_tokens)",
    )
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        help="decoding precision (default: decode.precision); bf16: the vocabulary "
        "projection in bf16 on CPU (autocast on GPUs), faster, outputs may "
        "differ slightly",
    )
    parser.add_argument(
        "--length-penalty",
        type=float,
        help="GNMT length-penalty alpha of beam search, 0 = raw log-probability "
        "(default: decode.length_penalty)",
    )
    _add_rerank_args(parser, "the beam's hypotheses")


def _add_rerank_args(parser: argparse.ArgumentParser, reranked: str) -> None:
    parser.add_argument(
        "--rerank-with",
        nargs="+",
        metavar="CHECKPOINT",
        help=f"reverse (target->source) checkpoints that rerank {reranked} by "
        "log p(y|x) + W * log p(x|y) (several: the mean of their log p(x|y)); needs "
        "--rerank-weight",
    )
    parser.add_argument(
        "--rerank-weight",
        type=float,
        metavar="W",
        help="weight W of the reverse models' log-probability; choose it with the length "
        "penalty on the validation split (scripts/choose_decoding.py --rerank-with)",
    )


def _load_translator(args: argparse.Namespace):
    """The checkpoint's Translator with --batch-tokens / --precision / --length-penalty applied
    over its decode settings."""
    from nmt.translator import Translator

    if args.length_penalty is not None and args.length_penalty < 0:
        raise ConfigError(f"--length-penalty must be >= 0, got {args.length_penalty}")
    translator = Translator.load_ensemble(
        args.checkpoint, device=args.device, alignment_member=args.alignment_from
    )
    keep_freed_memory(translator.device.type)
    changes = {
        "batch_tokens": args.batch_tokens,
        "precision": args.precision,
        "length_penalty": args.length_penalty,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    if changes:
        translator.decode = dataclasses.replace(translator.decode, **changes)
    from nmt.rerank import Reranker, check_rerank_options

    check_rerank_options(args.rerank_with, args.rerank_weight)
    if args.rerank_with:
        translator.rerank_with(
            Reranker.load(args.rerank_with, args.rerank_weight, device=translator.device)
        )
    return translator


def _cmd_translate(args: argparse.Namespace) -> None:
    """Translate a file (progress bar) or stdin (streamed in small chunks, flushed per chunk)."""
    import contextlib
    import json

    from nmt.alignment import plot_alignment
    from nmt.files import read_lines
    from nmt.translator import (
        TranslateOptions,
        Translation,
        file_chunks,
        read_chunks,
        translate_chunks,
    )

    translator = _load_translator(args)
    aligned = bool(args.alignments or args.plot_attention or args.with_alignment)
    options = TranslateOptions(
        beam_size=args.beam,
        n_best=args.n_best,
        max_len=args.max_len,
        with_alignment=aligned,
        truncate=args.truncate,
    )
    words = args.alignment_level == "word"

    def write(t: Translation, index: int, out, links) -> None:
        if args.format == "jsonl":
            out.write(json.dumps(t.to_dict(), ensure_ascii=False) + "\n")
        elif t.n_best is not None:
            out.writelines(f"{index} ||| {text} ||| {score:.4f}\n" for text, score in t.n_best)
        else:
            out.write(t.text + "\n")
        if links is not None:
            links.write((t.alignment.pharaoh(words) if t.alignment else "") + "\n")
        if args.plot_attention and t.alignment is not None and t.tokens:
            plot_alignment(t.alignment, Path(args.plot_attention) / f"{index:06d}.png", words)

    with contextlib.ExitStack() as stack:
        out = sys.stdout
        if args.output:
            out = stack.enter_context(open(args.output, "w", encoding="utf-8"))
        links = None
        if args.alignments:
            links = stack.enter_context(open(args.alignments, "w", encoding="utf-8"))
        if args.input:
            lines = read_lines(args.input)
            results = translate_chunks(translator, file_chunks(lines), options, len(lines))
        else:  # no progress bar: the lines arrive as they come
            results = translate_chunks(translator, read_chunks(sys.stdin), options)
        index, unaligned = 0, 0
        for chunk in results:
            for t in chunk:
                write(t, index, out, links)
                unaligned += int(aligned and t.alignment is None)
                index += 1
            out.flush()
            if links is not None:
                links.flush()
    if unaligned:
        print(
            f"nmt translate: the model has no attention; {unaligned} sentences without alignment",
            file=sys.stderr,
        )


def _add_translate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "translate",
        help="translate text with a checkpoint",
        description="Translate one sentence per line from --input (or stdin, streamed: each "
        "line is answered as soon as it is translated) to --output (or stdout). Empty lines "
        "give empty translations. With --n-best N the text format prints Moses-style "
        "`i ||| text ||| score` lines.",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        nargs="+",
        help="checkpoint file (.pt); several: decode with their ensemble",
    )
    p.add_argument("--input", help="source file, one sentence per line (.gz ok; default: stdin)")
    p.add_argument("--output", help="where to write translations (default: stdout)")
    p.add_argument("--beam", type=int, help="beam size (1 = greedy; default: decode.beam_size)")
    p.add_argument("--n-best", type=int, help="hypotheses per sentence (at most the beam size)")
    p.add_argument(
        "--max-len",
        type=int,
        help="maximum output length in tokens (default: "
        "decode.max_len_a * source length + decode.max_len_b)",
    )
    p.add_argument(
        "--format",
        choices=("text", "jsonl"),
        default="text",
        help="text: one translation per line; jsonl: one JSON object per line "
        "(text, score, tokens, n-best, alignment when asked)",
    )
    p.add_argument(
        "--with-alignment", action="store_true", help="include alignments in the JSONL output"
    )
    p.add_argument(
        "--alignments",
        metavar="FILE",
        help="write Pharaoh alignments (source-target index pairs), a line per sentence",
    )
    p.add_argument(
        "--alignment-level",
        choices=("word", "piece"),
        default="word",
        help="align words (subword pieces merged at ▁) or pieces (default: word)",
    )
    p.add_argument(
        "--plot-attention",
        metavar="DIR",
        help="write an attention heatmap PNG per sentence into DIR",
    )
    _add_decoding_args(p)
    p.set_defaults(func=_cmd_translate)


# --------------------------------------------------------------------------- align


def _cmd_align(args: argparse.Namespace) -> None:
    """Forced alignment of --src with --tgt: one Pharaoh line (or JSON object) per pair."""
    import contextlib
    import json

    from nmt.files import read_lines
    from nmt.translator import Translator

    sources, targets = read_lines(args.src), read_lines(args.tgt)
    if len(sources) != len(targets):
        raise ConfigError(f"--src has {len(sources)} lines but --tgt has {len(targets)}")
    translator = Translator.load_ensemble(
        args.checkpoint, device=args.device, alignment_member=args.alignment_from
    )
    words = args.alignment_level == "word"
    with contextlib.ExitStack() as stack:
        out = sys.stdout
        if args.output:
            out = stack.enter_context(open(args.output, "w", encoding="utf-8"))
        for start in range(0, len(sources), args.chunk):
            pairs = list(zip(sources, targets))[start : start + args.chunk]
            filled = [i for i, (src, tgt) in enumerate(pairs) if src.strip() and tgt.strip()]
            aligned = translator.align([pairs[i][0] for i in filled], [pairs[i][1] for i in filled])
            lines = [""] * len(pairs)  # an empty side: an empty line, as fast_align writes
            for i, item in zip(filled, aligned):
                if args.format == "jsonl":
                    lines[i] = json.dumps(item.to_dict(), ensure_ascii=False)
                else:
                    lines[i] = item.alignment.pharaoh(words)
            out.writelines(line + "\n" for line in lines)
            out.flush()


def _add_align(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "align",
        help="align given translations with a checkpoint's attention (forced alignment)",
        description="Teacher-force each line of --tgt (a human's or another system's "
        "translation of the same line of --src) through the model and write its alignment: "
        "Pharaoh 'i-j' (source-target) links, a line per pair, as fast_align does; or JSONL "
        "with the soft matrices, scores and character offsets. Pairs with an empty side give "
        "an empty line.",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        nargs="+",
        help="checkpoint file (.pt); several: align with their ensemble",
    )
    p.add_argument("--src", required=True, help="source file, one sentence per line (.gz ok)")
    p.add_argument("--tgt", required=True, help="target file, the translations to align")
    p.add_argument("--output", help="where to write the alignments (default: stdout)")
    p.add_argument("--format", choices=("pharaoh", "jsonl"), default="pharaoh")
    p.add_argument(
        "--alignment-level",
        choices=("word", "piece"),
        default="word",
        help="Pharaoh links between words (pieces merged at ▁) or pieces (default: word)",
    )
    p.add_argument("--chunk", type=int, default=1000, help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")
    p.add_argument(
        "--alignment-from",
        type=int,
        metavar="N",
        help="with several --checkpoint files: alignments of member N (default: their mean)",
    )
    p.set_defaults(func=_cmd_align)


# --------------------------------------------------------------------------- evaluate


def _cmd_evaluate(args: argparse.Namespace) -> None:
    """Translate --src with --checkpoint (or read --hyp), score against --ref, write a report."""
    from nmt.evaluate import EvaluationJob, format_scores, run_evaluation

    if bool(args.checkpoint) == bool(args.hyp):
        raise ConfigError("give either --checkpoint (with --src) or --hyp")
    if args.checkpoint and not args.src:
        raise ConfigError("--checkpoint needs --src (the source file to translate)")
    job = EvaluationJob(
        ref=args.ref,
        src=args.src,
        hyp=args.hyp,
        output=args.output,
        report=args.report,
        tgt_lang=args.tgt_lang,
        literature=args.literature,
        tokenize_refs=args.tokenize_refs,
        remove_spaces=args.remove_spaces,
        lowercase=args.lowercase,
        beam_size=args.beam,
        max_len=args.max_len,
        truncate=args.truncate,
    )
    translator = _load_translator(args) if args.checkpoint else None
    evaluation = run_evaluation(job, translator, progress=True)
    print(format_scores(evaluation.scores))
    print(f"report: {evaluation.report}")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score translations with sacreBLEU (BLEU, chrF, TER)",
        description="Score a checkpoint (translating --src) or a hypothesis file (--hyp) against "
        "--ref with sacreBLEU's BLEU, chrF and TER, print the scores with their signatures, and "
        "write a JSON report (scores, signatures, BLEU by source length, decoding settings, "
        "checkpoint sha256). Files may be gzipped.",
    )
    p.add_argument(
        "--checkpoint",
        nargs="+",
        help="checkpoint to translate --src with; several: their ensemble",
    )
    p.add_argument(
        "--src", help="source file (needed with --checkpoint; also gives BLEU by source length)"
    )
    p.add_argument("--hyp", help="translations to score instead of translating")
    p.add_argument("--ref", required=True, help="reference translations, one per line")
    p.add_argument("--output", help="where to write the translations of --src")
    p.add_argument(
        "--report",
        help="JSON report path (default: <output or hyp>.json, else "
        "<checkpoint stem>.<ref name>.json beside the checkpoint)",
    )
    p.add_argument(
        "--tgt-lang",
        help="target language (default: the checkpoint's, else the "
        "--ref file's suffix); picks the tokenizer (ja: ja-mecab, else char)",
    )
    p.add_argument(
        "--literature",
        action="store_true",
        help="score like the Multi30k literature instead: lowercased, Moses-normalised "
        "and -tokenized hypotheses against the official tokenized references "
        "(e.g. tok/test_2016_flickr.lc.norm.tok.de), sacreBLEU tokenize=none",
    )
    p.add_argument(
        "--tokenize-refs",
        action="store_true",
        help="with --literature: references are raw text; process them the same way",
    )
    p.add_argument(
        "--remove-spaces",
        action="store_true",
        help="remove all spaces from hypotheses and references before scoring, for "
        "pre-tokenized references in languages written without spaces, e.g. "
        "small_parallel_enja's Japanese (automatic with a --checkpoint whose "
        "tokenizer.detok_remove_spaces lists its target language)",
    )
    p.add_argument(
        "--lowercase",
        action="store_true",
        help="score case-insensitively (automatic with a --checkpoint trained with "
        "tokenizer.lowercase)",
    )
    p.add_argument("--beam", type=int, help="beam size (default: decode.beam_size)")
    p.add_argument("--max-len", type=int, help="maximum output length in tokens")
    _add_decoding_args(p)
    p.set_defaults(func=_cmd_evaluate)


# --------------------------------------------------------------------------- serve


def _cmd_serve(args: argparse.Namespace) -> None:
    import os

    from serve.app import ServeSettings
    from serve.schemas import Limits
    from serve.supervisor import serve

    if args.devices != "auto" and not args.devices.isdigit():
        raise ConfigError(f"--devices must be a number or auto, got {args.devices!r}")
    devices = args.devices if args.devices == "auto" else int(args.devices)
    first, *more = args.checkpoint  # one list per --checkpoint: a model (several: an ensemble)
    settings = ServeSettings(
        checkpoint=first[0],
        ensemble=tuple(first[1:]),
        more_models=tuple(tuple(model) for model in more),
        alignment_from=args.alignment_from,
        host=args.host,
        port=args.port,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout,
        batch_wait=args.batch_wait,
        workers_per_device=args.workers_per_device,
        accelerator=args.accelerator,
        devices=devices,
        api_key=args.api_key or os.environ.get("NMT_API_KEY") or None,
        limits=Limits(
            max_chars=args.max_chars,
            max_texts=args.max_texts,
            max_beam=args.max_beam,
            max_len=args.max_len,
            max_body_bytes=args.max_body_bytes,
        ),
        request_timeout=args.request_timeout,
        threads=args.threads,
        precision=args.precision,
        length_penalties=tuple(args.length_penalty or ()),
        rerank_with=tuple(args.rerank_with or ()),
        rerank_weight=args.rerank_weight,
        log_level="debug" if args.verbose else args.log_level,
        shutdown_grace=args.shutdown_grace,
    )
    code = serve(settings)
    if code:
        raise SystemExit(code)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve models over HTTP (LitServe): /translate, /align, a web page, LibreTranslate",
        description="Serve one or several models over HTTP with dynamic batching: POST "
        "/translate, /align, GET / (a web page), /health, /info, /languages, /metrics "
        "(Prometheus), /docs (OpenAPI), and LibreTranslate's API under /libretranslate. "
        "SIGINT or SIGTERM stops the server and all its worker processes.",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        nargs="+",
        action="append",
        help="checkpoint file (e.g. runs/NAME/best.pt); several after one flag: serve their "
        "ensemble as one model; repeat the flag to serve several models",
    )
    p.add_argument(
        "--alignment-from",
        type=int,
        metavar="N",
        help="an ensemble's alignments from member N (default: the members' mean)",
    )
    p.add_argument("--host", default="127.0.0.1", help="127.0.0.1 (default), 0.0.0.0 or ::")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch-size", type=int, default=32, help="requests per batch (default 32)")
    p.add_argument(
        "--batch-timeout",
        type=float,
        default=0.01,
        help="seconds a worker waits for a batch to fill (default 0.01)",
    )
    p.add_argument(
        "--batch-wait",
        type=float,
        default=0.1,
        help="under load (the last batch held several requests), wait up to this "
        "fraction of the last batch's decoding time instead, if longer (default 0.1; "
        "0 = always --batch-timeout)",
    )
    p.add_argument("--workers-per-device", type=int, default=1)
    p.add_argument("--accelerator", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--devices", default="auto", help="number of devices, or auto (default)")
    p.add_argument(
        "--api-key", help="require this key (X-API-Key or Bearer); default: $NMT_API_KEY"
    )
    p.add_argument("--max-chars", type=int, default=2000, help="characters per text (default 2000)")
    p.add_argument("--max-texts", type=int, default=64, help="texts per request (default 64)")
    p.add_argument(
        "--max-beam", type=int, default=10, help="largest beam_size allowed (default 10)"
    )
    p.add_argument("--max-len", type=int, default=512, help="largest max_len allowed (default 512)")
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=0,
        help="request body limit (default: derived from the limits above)",
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=30.0,
        help="seconds a request may wait for a worker before a 504 (default 30)",
    )
    p.add_argument(
        "--threads", type=int, help="torch threads per worker (default: usable cores / workers)"
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        help="decoding precision (default: the checkpoint's decode.precision); bf16: the "
        "vocabulary projection in bf16 on CPU (autocast on GPUs), faster, outputs "
        "may differ slightly",
    )
    p.add_argument(
        "--length-penalty",
        type=float,
        action="append",
        help="GNMT length-penalty alpha of beam search: once for every model, or once per "
        "--checkpoint in the same order (default: each checkpoint's decode.length_penalty; an "
        "ensemble's: its first member's)",
    )
    _add_rerank_args(p, "the hypotheses of every served model translating the other way")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--shutdown-grace",
        type=float,
        default=10.0,
        help="seconds for a graceful stop before worker processes are killed (default 10)",
    )
    p.set_defaults(func=_cmd_serve)


# --------------------------------------------------------------------------- compare


def _cmd_compare(args: argparse.Namespace) -> None:
    """Train the --configs as an equal-budget study (or take finished RUN_DIRs), then report."""
    import json
    import shlex

    from nmt.compare.assemble import CompareOptions, compare_runs
    from nmt.compare.report import write_report
    from nmt.compare.runs import read_run, unique_names
    from nmt.compare.study import Budget, StudyPlan, run_study
    from nmt.cpu import default_threads

    if bool(args.configs) == bool(args.runs):
        raise ConfigError("give --configs CFG... (train a study) or RUN_DIR... (compare runs)")
    output = Path(args.output)
    threads = args.threads or default_threads(args.parallel)
    command = shlex.join(_compare_command(args, threads))
    study = None
    if args.configs:
        plan = StudyPlan(
            configs=tuple(args.configs),
            output=output,
            budget=Budget(args.budget_minutes or 0.0, args.budget_steps or 0),
            parallel=args.parallel,
            threads=threads,
            precision=args.precision,
            device=args.device,
            overrides=tuple(args.set),
        )
        runs = [read_run(r.run_dir, r.name) for r in run_study(plan, command)]
        study = json.loads((output / "study.json").read_text())
    else:
        folders = [Path(r) for r in args.runs]
        runs = [read_run(path, name) for path, name in zip(folders, unique_names(folders))]
    options = CompareOptions(
        beam_size=args.beam,
        threads=threads,
        device=args.device,
        baseline=args.baseline,
        significance=args.significance,
        command=command,
        study=study,
    )
    paths = write_report(compare_runs(runs, options, output), output)
    print("\n".join(f"{kind}: {path}" for kind, path in paths.items()))


def _compare_command(args: argparse.Namespace, threads: int) -> list[str]:
    """The command with every setting spelled out (defaults included), for the report."""
    words = ["nmt", "compare", *args.runs]
    if args.configs:
        budget = ["--budget-minutes", f"{args.budget_minutes:g}"] if args.budget_minutes else []
        budget = budget or ["--budget-steps", str(args.budget_steps)]
        words += ["--configs", *args.configs, *budget, "--parallel", str(args.parallel)]
        words += ["--precision", args.precision] + (["--set", *args.set] if args.set else [])
    words += ["--threads", str(threads), "--device", args.device, "--beam", str(args.beam)]
    words += ["--significance", args.significance]
    words += ["--baseline", args.baseline] if args.baseline else []
    return words + ["--output", args.output]


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="train configs under one budget (or take finished runs) and compare them",
        description="With --configs: train every config with the same budget, threads and "
        "precision (the budget schedule: warmup and cosine decay measured in the budget) "
        "into OUTPUT/runs/, resuming an interrupted study, then compare. With RUN_DIRs: "
        "compare finished runs. Every model decodes the test split in this process with "
        "the same settings; the report (report.html, self-contained; report.json; "
        "report.md with plots/) gives BLEU/chrF/TER with 95%% intervals and paired "
        "significance, cost and speed, curves, BLEU by length, attention and examples.",
    )
    p.add_argument("runs", nargs="*", metavar="RUN_DIR", help="finished run folders to compare")
    p.add_argument("--configs", nargs="+", metavar="CFG", help="configs to train as a study")
    p.add_argument("--output", required=True, help="study folder: runs/, report.*, plots/")
    p.add_argument("--budget-minutes", type=float, help="training minutes per config")
    p.add_argument("--budget-steps", type=int, help="optimiser steps per config (any machine)")
    p.add_argument("--parallel", type=int, default=1, help="trainings side by side (default 1)")
    p.add_argument(
        "--threads",
        type=int,
        help="threads per training and for decoding (default: usable cores / --parallel)",
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="training precision of every run (default auto: the same for all on one device)",
    )
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")
    p.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="overrides for every config, e.g. --set data.src_lang=en data.tgt_lang=de",
    )
    p.add_argument("--beam", type=int, default=5, help="beam size of the scored translations")
    p.add_argument("--baseline", help="run name the others are tested against (default: first)")
    p.add_argument(
        "--significance",
        choices=["bs", "ar"],
        default="bs",
        help="paired bootstrap resampling (bs, default) or approximate randomisation (ar)",
    )
    p.set_defaults(func=_cmd_compare)


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nmt",
        description="Neural machine translation: train RNN, attention and Transformer "
        "translators, evaluate them with sacreBLEU, and serve them with alignments.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug-level logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_prepare,
        _add_train,
        _add_translate,
        _add_align,
        _add_evaluate,
        _add_average,
        _add_export,
        _add_serve,
        _add_compare,
    ):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    import datasets

    datasets.disable_progress_bars()  # our own logs and tqdm bars say what is happening
    try:
        args.func(args)
    except _user_errors() as e:
        if args.debug:
            raise
        print(f"nmt {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nmt {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
