"""Parallel corpora: loading (local files, presets, HF hub), cleaning, tokenized cache.

Sources, in order of precedence (`data.files` and `data.hub` are exclusive; either one
overrides `data.preset`, whose default is multi30k):
- `data.files`: {split: [src_file, tgt_file]} aligned plain text, one sentence per line
  (optionally .gz); or {split: [file]} for a two-column .tsv (no header) or a .jsonl whose
  objects hold `<src_lang>`/`<tgt_lang>` (or `src`/`tgt`) keys. Relative paths are relative to
  the current directory.
- `data.hub`: a Hugging Face hub dataset (`load_hub_corpus`; needs network or the HF cache).
- `data.preset`: `multi30k` (any two of en/de/fr/cs; valid = val, test = test_2016_flickr) or
  `small_parallel_enja` (en/ja; valid = dev; test = test, but the corpus is often kept as
  train+dev only, so without test files test = dev as well, with a warning). Preset files are
  looked up under data.dir, else $NMT_DATA_DIR, else ./data (scripts/download_data.py fills it).

`prepare_data` trains or reuses the tokenizer, tokenizes and cleans the training split, and
caches the result with `datasets.save_to_disk` under work_dir/cache/<key>/, where the key
hashes the data files (path, size, mtime), the data and tokenizer settings and the tokenizer
protos, so a cache is never served for other data or another tokenizer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from nmt.config import Config, DataConfig
from nmt.files import read_lines
from nmt.specials import UNK_ID
from nmt.tokenizer import Tokenizer

log = logging.getLogger(__name__)

CACHE_VERSION = 1
TOKENIZER_FINGERPRINT = "fingerprint.json"
MULTI30K_LANGS = ("en", "de", "fr", "cs")
MULTI30K_SPLITS = {"train": "train", "valid": "val", "test": "test_2016_flickr"}
ENJA_SPLITS = {"train": "train", "valid": "dev", "test": "test"}
DROP_REASONS = ("empty", "too_long", "ratio")
TEXT_FEATURES = datasets.Features(
    {"src": datasets.Value("string"), "tgt": datasets.Value("string")}
)
ID_FEATURES = datasets.Features(
    {
        "src": datasets.Value("string"),
        "tgt": datasets.Value("string"),
        "src_ids": datasets.Sequence(datasets.Value("int32")),
        "tgt_ids": datasets.Sequence(datasets.Value("int32")),
    }
)


class DataError(ValueError):
    """A corpus problem, phrased for the user (names the file, split or key)."""


# --------------------------------------------------------------------------- corpus loading


def load_corpus(data: DataConfig) -> datasets.DatasetDict:
    """The raw corpus: a DatasetDict with text columns "src" and "tgt" per split."""
    if data.hub is not None and not data.files:
        return load_hub_corpus(data)
    files = corpus_files(data)
    if "test" in files and files["test"] == files.get("valid"):
        log.warning(
            "no separate test files; the test split is the validation data (%s)",
            ", ".join(map(str, files["test"])),
        )
    splits = {}
    for split, paths in files.items():
        src, tgt = _read_pairs(split, paths, data.src_lang, data.tgt_lang)
        splits[split] = datasets.Dataset.from_dict({"src": src, "tgt": tgt}, features=TEXT_FEATURES)
    return datasets.DatasetDict(splits)


def corpus_files(data: DataConfig) -> dict[str, list[Path]]:
    """The local files of each split (data.files, else the preset's); checks they exist."""
    if data.files and data.hub is not None:
        raise DataError("set either data.files or data.hub, not both")
    if data.files:
        files = {split: [Path(p) for p in paths] for split, paths in data.files.items()}
    elif data.preset == "multi30k":
        files = _multi30k_files(data)
    elif data.preset == "small_parallel_enja":
        files = _enja_files(data)
    else:
        raise DataError(
            f"unknown data.preset {data.preset!r}; valid: multi30k, small_parallel_enja"
        )
    for paths in files.values():
        for path in paths:
            if not path.is_file():
                raise DataError(f"data file not found: {path} (absolute: {path.absolute()})")
    return files


def preset_dir(data: DataConfig) -> Path:
    """Folder holding the presets' corpora: data.dir, else $NMT_DATA_DIR, else ./data."""
    return Path(data.dir or os.environ.get("NMT_DATA_DIR") or "data")


def _multi30k_files(data: DataConfig) -> dict[str, list[Path]]:
    for lang in (data.src_lang, data.tgt_lang):
        if lang not in MULTI30K_LANGS:
            raise DataError(
                f"multi30k has no language {lang!r}; choose from {', '.join(MULTI30K_LANGS)}"
            )
    root = preset_dir(data) / "multi30k"
    return {
        ours: [_gz_or_plain(root / f"{theirs}.{lang}") for lang in (data.src_lang, data.tgt_lang)]
        for ours, theirs in MULTI30K_SPLITS.items()
    }


def _gz_or_plain(stem: Path) -> Path:
    """Upstream ships .gz; a gunzipped copy beside it is accepted too."""
    gz = stem.with_name(stem.name + ".gz")
    return stem if stem.is_file() and not gz.is_file() else gz


def _enja_files(data: DataConfig) -> dict[str, list[Path]]:
    if {data.src_lang, data.tgt_lang} != {"en", "ja"}:
        raise DataError(f"small_parallel_enja is en/ja, not {data.src_lang}/{data.tgt_lang}")
    root = preset_dir(data) / "small_parallel_enja"
    files = {
        ours: [root / f"{theirs}.{lang}" for lang in (data.src_lang, data.tgt_lang)]
        for ours, theirs in ENJA_SPLITS.items()
    }
    if not any(p.is_file() for p in files["test"]):
        files["test"] = files["valid"]
    return files


def _read_pairs(
    split: str, paths: list[Path], src_lang: str, tgt_lang: str
) -> tuple[list[str], list[str]]:
    if len(paths) == 2:
        src, tgt = _read_lines(paths[0]), _read_lines(paths[1])
        if len(src) != len(tgt):
            raise DataError(
                f"{split}: {paths[0]} has {len(src)} lines but {paths[1]} has "
                f"{len(tgt)} lines; parallel files must be line-aligned"
            )
        return src, tgt
    if len(paths) == 1:
        name = paths[0].name.removesuffix(".gz")
        if name.endswith(".tsv"):
            return _read_tsv(paths[0])
        if name.endswith(".jsonl"):
            return _read_jsonl(paths[0], src_lang, tgt_lang)
        raise DataError(f"data.files.{split}: a single file must be .tsv or .jsonl, got {paths[0]}")
    raise DataError(
        f"data.files.{split}: expected [src_file, tgt_file] or [file.tsv|file.jsonl], "
        f"got {len(paths)} paths"
    )


def _read_lines(path: Path) -> list[str]:
    """Stripped lines of a corpus file (see nmt.files.read_lines)."""
    try:
        return [line.strip() for line in read_lines(path)]
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text: {e}") from None


def _read_tsv(path: Path) -> tuple[list[str], list[str]]:
    src, tgt = [], []
    for number, line in enumerate(_read_lines(path), start=1):
        fields = line.split("\t") if line else ["", ""]
        if len(fields) != 2:
            raise DataError(f"{path}:{number}: expected 2 tab-separated columns, got {len(fields)}")
        src.append(fields[0].strip())
        tgt.append(fields[1].strip())
    return src, tgt


def _read_jsonl(path: Path, src_lang: str, tgt_lang: str) -> tuple[list[str], list[str]]:
    src, tgt = [], []
    for number, line in enumerate(_read_lines(path), start=1):
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{number}: invalid JSON: {e}") from None
        for src_key, tgt_key in ((src_lang, tgt_lang), ("src", "tgt")):
            if isinstance(row, dict) and src_key in row and tgt_key in row:
                src.append(str(row[src_key]).strip())
                tgt.append(str(row[tgt_key]).strip())
                break
        else:
            raise DataError(
                f"{path}:{number}: expected keys {src_lang!r}/{tgt_lang!r} or 'src'/'tgt'"
            )
    return src, tgt


def load_hub_corpus(data: DataConfig) -> datasets.DatasetDict:
    """Load `data.hub` with datasets.load_dataset and map it to "src"/"tgt" columns."""
    hub = data.hub
    if hub is None:
        raise DataError("data.hub is not set")
    if not hub.translation_field and not (hub.src_field and hub.tgt_field):
        raise DataError("data.hub: set translation_field, or src_field and tgt_field")
    loaded = datasets.load_dataset(hub.name, hub.config, revision=hub.revision)
    splits = {}
    for ours, theirs in hub.splits.items():
        if theirs not in loaded:
            raise DataError(
                f"hub dataset {hub.name} has no split {theirs!r}; it has {', '.join(loaded)}"
            )
        fields = (
            [hub.translation_field] if hub.translation_field else [hub.src_field, hub.tgt_field]
        )
        missing = [f for f in fields if f not in loaded[theirs].column_names]
        if missing:
            raise DataError(
                f"hub dataset {hub.name} has no column {missing[0]!r}; it has "
                f"{', '.join(loaded[theirs].column_names)}"
            )
        part = loaded[theirs][:]  # all columns as Python lists
        if hub.translation_field:
            pairs = part[hub.translation_field]
            if pairs and not {data.src_lang, data.tgt_lang} <= set(pairs[0]):
                raise DataError(
                    f"hub dataset {hub.name}: {hub.translation_field} holds "
                    f"{', '.join(pairs[0])}, not {data.src_lang} and {data.tgt_lang}"
                )
            src = [p[data.src_lang] for p in pairs]
            tgt = [p[data.tgt_lang] for p in pairs]
        else:
            src, tgt = part[hub.src_field], part[hub.tgt_field]
        splits[ours] = datasets.Dataset.from_dict(
            {"src": [s.strip() for s in src], "tgt": [t.strip() for t in tgt]},
            features=TEXT_FEATURES,
        )
    return datasets.DatasetDict(splits)


# --------------------------------------------------------------------------- preparation


@dataclass
class PreparedData:
    tokenizer: Tokenizer
    splits: datasets.DatasetDict  # columns src, tgt, src_ids (pieces + EOS), tgt_ids (pieces)
    stats: dict[str, Any]


def prepare_data(config: Config, work_dir: Path) -> PreparedData:
    """Load, tokenize and clean the corpus, reusing work_dir's tokenizer and cache when valid."""
    start = time.perf_counter()
    work_dir = Path(work_dir)
    sources = source_fingerprint(config.data)
    if "train" not in sources:
        raise DataError("the corpus has no 'train' split")
    tok_dir = work_dir / "tokenizer"
    tok_print = {
        "version": CACHE_VERSION,
        "train": sources["train"],
        "langs": [config.data.src_lang, config.data.tgt_lang],
        "train_limit": config.data.train_limit,
        "tokenizer": dataclasses.asdict(config.tokenizer),
    }
    tokenizer = _reusable_tokenizer(tok_dir, tok_print)
    reused = tokenizer is not None
    corpus, cut = None, 0
    if tokenizer is None:
        corpus, cut = _load_limited(config.data)
        tokenizer = _train_tokenizer(config, corpus["train"], tok_dir, tok_print)
    cache_dir = work_dir / "cache" / cache_key(config, sources, tokenizer)
    hit = (cache_dir / "stats.json").is_file()
    if not hit:
        if corpus is None:
            corpus, cut = _load_limited(config.data)
        _build_cache(corpus, cut, tokenizer, config.data, cache_dir)
    else:
        log.info("reusing tokenized data in %s", cache_dir)
    splits = datasets.load_from_disk(str(cache_dir))
    stats = json.loads((cache_dir / "stats.json").read_text(encoding="utf-8"))
    stats["cache"] = {"dir": str(cache_dir), "hit": hit, "tokenizer_reused": reused}
    stats["seconds"] = round(time.perf_counter() - start, 2)
    return PreparedData(tokenizer=tokenizer, splits=splits, stats=stats)


def source_fingerprint(data: DataConfig) -> dict[str, Any]:
    """What identifies the raw data per split: (path, size, mtime) of each file, or the hub spec."""
    if data.hub is not None and not data.files:
        spec = dataclasses.asdict(data.hub)
        return {split: {"hub": spec, "split": theirs} for split, theirs in data.hub.splits.items()}
    result = {}
    for split, paths in corpus_files(data).items():
        stats = [p.stat() for p in paths]
        result[split] = [[str(p.resolve()), s.st_size, s.st_mtime_ns] for p, s in zip(paths, stats)]
    return result


def cache_key(config: Config, sources: dict[str, Any], tokenizer: Tokenizer) -> str:
    """Hash of everything the tokenized data depends on."""
    protos = hashlib.sha256()
    for name in sorted(tokenizer.models):
        protos.update(name.encode() + tokenizer.models[name])
    key = {
        "version": CACHE_VERSION,
        "sources": sources,
        "data": dataclasses.asdict(config.data),
        "tokenizer": dataclasses.asdict(config.tokenizer),
        "protos": protos.hexdigest(),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _load_limited(data: DataConfig) -> tuple[datasets.DatasetDict, int]:
    """The corpus with train cut to its first data.train_limit pairs, and how many were cut."""
    corpus = load_corpus(data)
    total = len(corpus["train"])
    if data.train_limit is None or total <= data.train_limit:
        return corpus, 0
    corpus["train"] = corpus["train"].select(range(data.train_limit))
    return corpus, total - data.train_limit


def _reusable_tokenizer(tok_dir: Path, fingerprint: dict[str, Any]) -> Tokenizer | None:
    path = tok_dir / TOKENIZER_FINGERPRINT
    if not path.is_file():
        return None
    if json.loads(path.read_text(encoding="utf-8")) != json.loads(json.dumps(fingerprint)):
        log.info("tokenizer in %s was trained with other settings or data; retraining", tok_dir)
        return None
    log.info("reusing tokenizer in %s", tok_dir)
    return Tokenizer.load(tok_dir)


def _train_tokenizer(
    config: Config, train: datasets.Dataset, tok_dir: Path, fingerprint: dict[str, Any]
) -> Tokenizer:
    """Train on the non-empty training pairs; the fingerprint is written last (marks completion)."""
    (tok_dir / TOKENIZER_FINGERPRINT).unlink(missing_ok=True)
    columns = train[:]
    pairs = [(s, t) for s, t in zip(columns["src"], columns["tgt"]) if s and t]
    tokenizer = Tokenizer.train(
        config.tokenizer,
        [s for s, _ in pairs],
        [t for _, t in pairs],
        config.data.src_lang,
        config.data.tgt_lang,
        tok_dir,
    )
    (tok_dir / TOKENIZER_FINGERPRINT).write_text(
        json.dumps(fingerprint, indent=2), encoding="utf-8"
    )
    return tokenizer


def _build_cache(
    corpus: datasets.DatasetDict, cut: int, tokenizer: Tokenizer, data: DataConfig, cache_dir: Path
) -> None:
    """Tokenize every split, clean train, save with stats; renamed into place when complete."""
    log.info("tokenizing %s", ", ".join(f"{k} ({len(v)} pairs)" for k, v in corpus.items()))
    splits, split_stats, lengths, unk_rate = {}, {}, {}, None
    for name, part in corpus.items():
        columns, split_stats[name] = _tokenize_split(
            part, tokenizer, data if name == "train" else None
        )
        lengths[name] = _length_stats(columns["src_ids"], columns["tgt_ids"])
        if name == data.valid_split:
            unk_rate = _unk_rate(columns["src_ids"], columns["tgt_ids"])
        splits[name] = datasets.Dataset.from_dict(columns, features=ID_FEATURES)
    train = split_stats["train"]
    train["pairs"] += cut
    train["dropped"] = {"train_limit": cut, **train["dropped"]}
    stats = {
        "splits": split_stats,
        "lengths": lengths,
        "unk_rate": unk_rate,
        "vocab": {
            "src": tokenizer.src_vocab_size,
            "tgt": tokenizer.tgt_vocab_size,
            "joint": tokenizer.joint,
        },
    }
    tmp = cache_dir.with_name(f".{cache_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    datasets.DatasetDict(splits).save_to_disk(str(tmp))
    (tmp / "stats.json").write_text(json.dumps(stats, indent=2), encoding="utf-8")
    try:
        os.rename(tmp, cache_dir)
    except OSError:  # another process finished the same cache first
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("saved tokenized data to %s", cache_dir)


def _tokenize_split(
    part: datasets.Dataset, tokenizer: Tokenizer, clean: DataConfig | None
) -> tuple[dict[str, list], dict[str, Any]]:
    """Columns src, tgt, src_ids, tgt_ids of the kept rows (all rows unless `clean` is given)."""
    columns = part[:]  # Python lists: far faster than row-wise Dataset access
    src, tgt = columns["src"], columns["tgt"]
    src_ids, tgt_ids = tokenizer.encode_src(src), tokenizer.encode_tgt(tgt)
    if clean is None:
        return (
            {"src": src, "tgt": tgt, "src_ids": src_ids, "tgt_ids": tgt_ids},
            {"pairs": len(src), "kept": len(src), "dropped": {}},
        )
    keep, dropped = _clean(src, tgt, src_ids, tgt_ids, clean)
    kept = {
        "src": [src[i] for i in keep],
        "tgt": [tgt[i] for i in keep],
        "src_ids": [src_ids[i] for i in keep],
        "tgt_ids": [tgt_ids[i] for i in keep],
    }
    return kept, {"pairs": len(src), "kept": len(keep), "dropped": dropped}


def _clean(
    src: list[str],
    tgt: list[str],
    src_ids: list[list[int]],
    tgt_ids: list[list[int]],
    data: DataConfig,
) -> tuple[list[int], dict[str, int]]:
    """Rows to keep and the count dropped per reason (first matching reason counts)."""
    keep: list[int] = []
    dropped = dict.fromkeys(DROP_REASONS, 0)
    for i in range(len(src)):
        n_src, n_tgt = len(src_ids[i]) - 1, len(tgt_ids[i])  # subword pieces, without EOS
        if not src[i] or not tgt[i] or n_src == 0 or n_tgt == 0:
            dropped["empty"] += 1
        elif n_src > data.max_len or n_tgt > data.max_len:
            dropped["too_long"] += 1
        elif max(n_src, n_tgt) / min(n_src, n_tgt) > data.max_ratio:
            dropped["ratio"] += 1
        else:
            keep.append(i)
    return keep, dropped


def _length_stats(src_ids: list[list[int]], tgt_ids: list[list[int]]) -> dict[str, float]:
    """Mean and 95th percentile of subword pieces per sentence (EOS not counted)."""
    src = np.array([len(x) - 1 for x in src_ids] or [0])
    tgt = np.array([len(x) for x in tgt_ids] or [0])
    return {
        "src_mean": round(float(src.mean()), 2),
        "src_p95": float(np.percentile(src, 95)),
        "tgt_mean": round(float(tgt.mean()), 2),
        "tgt_p95": float(np.percentile(tgt, 95)),
    }


def _unk_rate(src_ids: list[list[int]], tgt_ids: list[list[int]]) -> dict[str, float]:
    """Share of <unk> among the subword pieces of each side (EOS not counted)."""
    rates = {}
    for side, rows, extra in (("src", src_ids, 1), ("tgt", tgt_ids, 0)):
        total = sum(len(r) - extra for r in rows)
        rates[side] = sum(r.count(UNK_ID) for r in rows) / total if total else 0.0
    return rates


def format_summary(stats: dict[str, Any]) -> str:
    """A few human-readable lines about a prepare_data run (for the CLI)."""
    lines = [f"{'split':<8}{'pairs':>9}{'kept':>9}  dropped"]
    for name, s in stats["splits"].items():
        dropped = ", ".join(f"{k} {v}" for k, v in s["dropped"].items() if v) or "-"
        lines.append(f"{name:<8}{s['pairs']:>9}{s['kept']:>9}  {dropped}")
    v = stats["vocab"]
    if v["joint"]:
        lines.append(f"vocabulary: joint, {v['src']} pieces")
    else:
        lines.append(f"vocabulary: src {v['src']} pieces, tgt {v['tgt']} pieces")
    for name, s in stats["lengths"].items():
        lines.append(
            f"pieces/sentence {name}: src mean {s['src_mean']:.1f} p95 {s['src_p95']:.0f}, "
            f"tgt mean {s['tgt_mean']:.1f} p95 {s['tgt_p95']:.0f}"
        )
    if stats.get("unk_rate"):
        u = stats["unk_rate"]
        lines.append(f"unk rate (valid): src {u['src']:.3%}, tgt {u['tgt']:.3%}")
    if "cache" in stats:
        c = stats["cache"]
        lines.append(
            f"cache: {c['dir']} ({'reused' if c['hit'] else 'built'}; tokenizer "
            f"{'reused' if c['tokenizer_reused'] else 'trained'}) in {stats.get('seconds', 0):.1f}s"
        )
    return "\n".join(lines)
