"""sacreBLEU scoring (BLEU, chrF, TER), BLEU by source length, and JSON reports.

Two settings:
- default: sacreBLEU on detokenized, cased text (what papers should report, with the
  signature). Japanese targets use the `ja-mecab` tokenizer when its dependencies import,
  else `char`; Chinese uses `zh`; everything else sacreBLEU's default `13a`.
- literature (`literature=True`): the multimodal-MT papers' setting on Multi30k:
  lowercase -> Moses punctuation normalisation -> Moses tokenizer (no aggressive dash
  splitting, with Moses' HTML escaping of quotes, like the official `*.lc.norm.tok.*` files),
  scored with `tokenize="none"`. The references are used as given (the official tokenized
  files) unless `tokenize_refs=True`, which runs them through the same pipeline.

Pre-segmented corpora (small_parallel_enja's Japanese, words split by spaces) need
`remove_spaces=True`: our decoder removes those spaces for languages in
`tokenizer.detok_remove_spaces`, so both sides lose them (`remove_word_spaces`) before
sacreBLEU tokenizes (`ja-mecab`/`char`); the report records it as `normalisation`.
`ScoringPolicy.of` says what a model's tokenizer implies (that, and case-insensitive scoring
of lowercased models), for `nmt evaluate` and validation alike. `run_evaluation` is the
whole of `nmt evaluate`: translate (or read) the hypotheses, score them, write the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sacrebleu.metrics import BLEU, CHRF, TER

from nmt.files import read_lines, write_json_atomic, write_lines

if TYPE_CHECKING:
    from nmt.tokenizer import Tokenizer
    from nmt.translator import ModelInfo, Translator

# Source-length buckets (in whitespace-separated source words) for the BLEU breakdown.
LENGTH_BUCKETS: tuple[tuple[int, int | None], ...] = ((1, 10), (11, 20), (21, 30), (31, None))


class EvaluationError(ValueError):
    """Inputs that cannot be scored together (line counts differ, missing language, ...)."""


def guess_lang(path: str | Path) -> str | None:
    """Language code from a file name like `test.de`, `test.de.gz` or `x.lc.norm.tok.en`."""
    name = Path(path).name
    if name.endswith(".gz"):
        name = name[:-3]
    suffix = Path(name).suffix.lstrip(".")
    return suffix.lower() if len(suffix) == 2 and suffix.isalpha() else None


# --------------------------------------------------------------------------- tokenization


@lru_cache(maxsize=1)
def mecab_available() -> bool:
    """True when sacreBLEU's `ja-mecab` tokenizer can be built (mecab-python3 + ipadic)."""
    try:
        from sacrebleu.tokenizers.tokenizer_ja_mecab import TokenizerJaMecab

        TokenizerJaMecab()
    except Exception:  # missing module or dictionary: fall back to characters
        return False
    return True


def bleu_tokenizer(tgt_lang: str | None) -> str:
    """sacreBLEU tokenizer name for detokenized text in `tgt_lang`."""
    if tgt_lang == "ja":
        return "ja-mecab" if mecab_available() else "char"
    if tgt_lang == "zh":
        return "zh"
    if tgt_lang == "ko":
        return "char"
    return "13a"


def literature_tokenize(lines: Sequence[str], lang: str) -> list[str]:
    """Lowercase, Moses-normalise punctuation and Moses-tokenize, like the Multi30k tok refs."""
    from sacremoses import MosesPunctNormalizer, MosesTokenizer

    normalizer = MosesPunctNormalizer(lang)
    tokenizer = MosesTokenizer(lang)
    out = []
    for line in lines:
        text = normalizer.normalize(line.lower())
        # escape=True: the official refs carry Moses' HTML escapes (&quot; &apos;).
        tokens = tokenizer.tokenize(text, escape=True, aggressive_dash_splits=False)
        out.append(" ".join(tokens))
    return out


def remove_word_spaces(lines: Sequence[str]) -> list[str]:
    """Lines with all whitespace removed: the form `Tokenizer.decode_tgt` gives text in a
    `detok_remove_spaces` language, applied to references (and hypotheses) so they match."""
    return ["".join(line.split()) for line in lines]


# --------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class ScoringPolicy:
    """How a model's output must be scored, given what its tokenizer does to text."""

    remove_spaces: bool = False  # its decoder removes the target's segmentation spaces
    lowercase: bool = False  # it writes lowercased text: score case-insensitively (case:lc)

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> ScoringPolicy:
        return cls(
            remove_spaces=tokenizer.tgt_lang in tokenizer.config.detok_remove_spaces,
            lowercase=tokenizer.config.lowercase,
        )


def corpus_bleu(
    hyps: Sequence[str], refs: Sequence[str], tgt_lang: str | None, policy: ScoringPolicy
) -> tuple[float, str]:
    """BLEU and its signature alone, under `policy` (validation: chrF and TER cost time)."""
    hyps, refs = list(hyps), list(refs)
    if policy.remove_spaces:
        hyps, refs = remove_word_spaces(hyps), remove_word_spaces(refs)
    metric = bleu_metric(tgt_lang, lowercase=policy.lowercase)
    return metric.corpus_score(hyps, [refs]).score, str(metric.get_signature())


def bleu_metric(tgt_lang: str | None, literature: bool = False, lowercase: bool = False) -> BLEU:
    """The BLEU metric object for `tgt_lang` (tokenize "none" in the literature setting).

    `lowercase` scores case-insensitively (signature case:lc), for models trained on
    lowercased text; the literature setting lowercases both sides already.
    """
    if literature:  # tokenized on purpose: no "forgot to detokenize" warnings
        return BLEU(tokenize="none", force=True, trg_lang=tgt_lang or "")
    return BLEU(tokenize=bleu_tokenizer(tgt_lang), trg_lang=tgt_lang or "", lowercase=lowercase)


def scoring_metrics(
    tgt_lang: str | None, literature: bool, lowercase: bool
) -> tuple[BLEU, CHRF, TER]:
    """The BLEU, chrF and TER metric objects `score_corpus` uses (also for significance tests)."""
    asian = tgt_lang in ("ja", "zh", "ko")
    lowercase = lowercase and not literature
    # sacreBLEU's TER is case-insensitive by default already.
    return (
        bleu_metric(tgt_lang, literature, lowercase),
        CHRF(lowercase=lowercase),
        TER(asian_support=asian),
    )


def score_corpus(
    hyps: Sequence[str],
    refs: Sequence[str],
    tgt_lang: str | None,
    literature: bool = False,
    tokenize_refs: bool = False,
    srcs: Sequence[str] | None = None,
    remove_spaces: bool = False,
    lowercase: bool = False,
) -> dict[str, Any]:
    """BLEU, chrF and TER with their signatures; BLEU by source length when `srcs` is given.

    `remove_spaces` runs both sides through `remove_word_spaces` first (pre-segmented
    references in a `detok_remove_spaces` language). `lowercase` scores case-insensitively.
    Returns {"bleu", "chrf", "ter", "signatures": {...}, "normalisation": "remove-spaces" |
    None, "bleu_verbose", "setting", "sentences", "by_length": [...] | None}.
    """
    hyps, refs = list(hyps), list(refs)
    if len(hyps) != len(refs):
        raise EvaluationError(f"{len(hyps)} hypotheses but {len(refs)} references")
    if srcs is not None and len(srcs) != len(refs):
        raise EvaluationError(f"{len(srcs)} source lines but {len(refs)} references")
    if remove_spaces:
        hyps, refs = remove_word_spaces(hyps), remove_word_spaces(refs)
    if literature:
        if not tgt_lang:
            raise EvaluationError("the literature setting needs the target language")
        hyps = literature_tokenize(hyps, tgt_lang)
        if tokenize_refs:
            refs = literature_tokenize(refs, tgt_lang)
    bleu, chrf, ter = scoring_metrics(tgt_lang, literature, lowercase)
    bleu_score = bleu.corpus_score(hyps, [refs])
    chrf_score = chrf.corpus_score(hyps, [refs])
    ter_score = ter.corpus_score(hyps, [refs])
    result: dict[str, Any] = {
        "setting": "literature" if literature else "sacrebleu",
        "sentences": len(hyps),
        "bleu": bleu_score.score,
        "chrf": chrf_score.score,
        "ter": ter_score.score,
        "bleu_verbose": str(bleu_score),
        "signatures": {
            "bleu": str(bleu.get_signature()),
            "chrf": str(chrf.get_signature()),
            "ter": str(ter.get_signature()),
        },
        "normalisation": "remove-spaces" if remove_spaces else None,
        "by_length": None,
    }
    if srcs is not None:
        result["by_length"] = bleu_by_length(srcs, hyps, refs, tgt_lang, literature, lowercase)
    return result


def length_bucket(num_words: int) -> str:
    for low, high in LENGTH_BUCKETS:
        if high is None or num_words <= high:
            return f"{low}-{high}" if high is not None else f"{low}+"
    raise AssertionError("unreachable")


def bleu_by_length(
    srcs: Sequence[str],
    hyps: Sequence[str],
    refs: Sequence[str],
    tgt_lang: str | None,
    literature: bool = False,
    lowercase: bool = False,
) -> list[dict[str, Any]]:
    """Corpus BLEU per source-length bucket (source words split on whitespace).

    `hyps`/`refs` must already be in the scoring form (tokenized in the literature setting).
    Empty sources count in the first bucket. Buckets without sentences have bleu None.
    """
    groups: dict[str, list[int]] = {length_bucket(high or low): [] for low, high in LENGTH_BUCKETS}
    for i, src in enumerate(srcs):
        groups[length_bucket(len(src.split()))].append(i)
    rows = []
    for bucket, indices in groups.items():
        score = None
        if indices:
            bleu = bleu_metric(tgt_lang, literature, lowercase)
            bucket_refs = [[refs[i] for i in indices]]
            score = bleu.corpus_score([hyps[i] for i in indices], bucket_refs).score
        rows.append({"bucket": bucket, "sentences": len(indices), "bleu": score})
    return rows


# --------------------------------------------------------------------------- decoding settings


def decoding_settings(
    translator: Translator, beam_size: int | None, max_len: int | None
) -> dict[str, Any]:
    """The decoding settings actually used, for the report."""
    decode = translator.decode
    return {
        "beam_size": decode.beam_size if beam_size is None else beam_size,
        "length_penalty": decode.length_penalty,
        "max_len": max_len,
        "max_len_a": None if max_len is not None else decode.max_len_a,
        "max_len_b": None if max_len is not None else decode.max_len_b,
        "min_len": decode.min_len,
        "batch_tokens": decode.batch_tokens,
        "precision": decode.precision,
        "device": str(translator.device),
        "rerank": None if translator.reranker is None else translator.reranker.to_dict(),
    }


# --------------------------------------------------------------------------- reports


def format_scores(result: dict[str, Any]) -> str:
    """Human-readable scores, each followed by its sacreBLEU signature."""
    sig = result["signatures"]
    lines = [
        result["bleu_verbose"],
        f"  {sig['bleu']}",
        f"chrF2 = {result['chrf']:.2f}",
        f"  {sig['chrf']}",
        f"TER = {result['ter']:.2f}",
        f"  {sig['ter']}",
    ]
    if result.get("normalisation") == "remove-spaces":
        lines.append("normalisation: spaces removed from hypotheses and references")
    if result.get("setting") == "literature":
        lines.append("setting: literature (lowercased, Moses-normalised and -tokenized)")
    for row in result.get("by_length") or []:
        bleu = "   -" if row["bleu"] is None else f"{row['bleu']:5.2f}"
        lines.append(f"BLEU src words {row['bucket']:>6}: {bleu}  ({row['sentences']} sentences)")
    return "\n".join(lines)


def build_report(
    result: dict[str, Any],
    files: dict[str, str | None],
    decoding: dict[str, Any] | None = None,
    info: ModelInfo | None = None,
) -> dict[str, Any]:
    """The JSON report: scores, signatures, inputs, decoding settings and checkpoint identity."""
    report: dict[str, Any] = {
        "scores": {k: result[k] for k in ("bleu", "chrf", "ter")},
        "signatures": result["signatures"],
        "normalisation": result.get("normalisation"),
        "bleu_verbose": result["bleu_verbose"],
        "setting": result["setting"],
        "sentences": result["sentences"],
        "by_length": result["by_length"],
        "files": files,
        "decoding": decoding,
        "checkpoint": None,
    }
    if info is not None:
        report["checkpoint"] = {
            "path": info.checkpoint,
            "members": list(info.members),
            "sha256": info.sha256,
            "name": info.name,
            "arch": info.arch,
            "valid_bleu": info.valid_bleu,
            "engine": info.engine,
            "quantization": info.quantization,
        }
    return report


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    """Write the report as JSON, atomically."""
    write_json_atomic(path, report)
    return Path(path)


def default_report_path(
    hyp: str | Path | None, checkpoint: str | Path | None, ref: str | Path
) -> Path:
    """`<hyp>.json` beside the translations, else `<checkpoint stem>.<ref name>.json`."""
    if hyp:
        hyp = Path(hyp)
        return hyp.with_name(hyp.name + ".json")
    if not checkpoint:
        raise EvaluationError("no place for the report: give --report (or --output)")
    checkpoint, ref_name = Path(checkpoint), Path(ref).name
    ref_name = ref_name[:-3] if ref_name.endswith(".gz") else ref_name
    return checkpoint.with_name(f"{checkpoint.stem}.{ref_name}.json")


# --------------------------------------------------------------------------- nmt evaluate


@dataclass(frozen=True)
class EvaluationJob:
    """What to score: `hyp`, or the translations of `src` (with a translator), against `ref`."""

    ref: str
    src: str | None = None  # also gives BLEU by source length
    hyp: str | None = None
    output: str | None = None  # where the translations of `src` go
    report: str | None = None  # default: see default_report_path
    tgt_lang: str | None = None  # default: the model's, else the suffix of `ref`
    literature: bool = False
    tokenize_refs: bool = False
    remove_spaces: bool = False  # on top of what the model's ScoringPolicy asks for
    lowercase: bool = False
    beam_size: int | None = None
    max_len: int | None = None
    truncate: bool = False


@dataclass(frozen=True)
class Evaluation:
    scores: dict[str, Any]  # score_corpus's result
    report: Path


def run_evaluation(
    job: EvaluationJob, translator: Translator | None = None, progress: bool = False
) -> Evaluation:
    """Translate job.src with `translator` (or read job.hyp), score against job.ref as the
    model's ScoringPolicy asks, and write the JSON report."""
    refs = read_lines(job.ref)
    srcs = read_lines(job.src) if job.src else None
    decoding, info, policy = None, None, ScoringPolicy()
    if translator is None and job.hyp is not None:
        hyps = read_lines(job.hyp)
    elif translator is not None and job.hyp is None and srcs is not None:
        hyps = _translate(translator, srcs, job, progress)
        decoding = decoding_settings(translator, job.beam_size, job.max_len)
        info, policy = translator.info, ScoringPolicy.of(translator.tokenizer)
        if job.output:
            write_lines(hyps, job.output)
    else:
        raise EvaluationError("score a hypothesis file, or a translator's translations of src")
    tgt_lang = job.tgt_lang or (info.tgt_lang if info else None) or guess_lang(job.ref)
    scores = score_corpus(
        hyps,
        refs,
        tgt_lang,
        job.literature,
        job.tokenize_refs,
        srcs,
        remove_spaces=job.remove_spaces or policy.remove_spaces,
        lowercase=job.lowercase or policy.lowercase,
    )
    files = {"src": job.src, "ref": job.ref, "hyp": job.hyp or job.output, "tgt_lang": tgt_lang}
    checkpoint = info.checkpoint if info else None
    path = job.report or default_report_path(job.output or job.hyp, checkpoint, job.ref)
    write_report(build_report(scores, files, decoding, info), path)
    return Evaluation(scores, Path(path))


def _translate(
    translator: Translator, lines: Sequence[str], job: EvaluationJob, progress: bool
) -> list[str]:
    from nmt.translator import TranslateOptions, file_chunks, translate_chunks

    options = TranslateOptions(
        beam_size=job.beam_size, n_best=1, max_len=job.max_len, truncate=job.truncate
    )
    total = len(lines) if progress else None
    chunks = translate_chunks(translator, file_chunks(lines), options, total)
    return [t.text for chunk in chunks for t in chunk]
