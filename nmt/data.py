"""Parallel corpora: sources (local files, presets, HF hub), cleaning, the tokenized cache.

Sources, in order of precedence (`data.files` and `data.hub` are exclusive; either one
overrides `data.preset`, whose default is multi30k):
- `data.files`: {split: [src_file, tgt_file]} aligned plain text, one sentence per line
  (optionally .gz); or {split: [file]} for a two-column .tsv (no header) or a .jsonl whose
  objects hold `<src_lang>`/`<tgt_lang>` (or `src`/`tgt`) keys. Relative paths are relative to
  the current directory.
- `data.hub`: a Hugging Face hub dataset (needs network or the HF cache); `datasets` keeps it
  as memory-mapped Arrow files, read here in chunks.
- `data.preset`: `multi30k` (any two of en/de/fr/cs; valid = val, test = test_2016_flickr) or
  `small_parallel_enja` (en/ja; valid = dev; test = test, but the corpus is often kept as
  train+dev only, so without test files test = dev as well, with a warning). Preset files are
  looked up under data.dir, else $NMT_DATA_DIR, else ./data (scripts/download_data.py fills it).

`prepare_data` streams the corpus, never holding it whole: one pass draws the seeded sample
SentencePiece is trained on (unless a tokenizer trained on the same data is reused), a second
tokenizes and cleans the training split in worker processes (nmt.tokenize_corpus) into a
memory-mapped store of flat token arrays (nmt.corpus_store), which training maps instead of
loading. The evaluation splits (small; their raw text is the references) are kept with their
text as `datasets` tables. Everything lives under work_dir/cache/<key>/, where the key hashes
the data files' contents, the data and tokenizer settings and the tokenizer protos, so a cache
is never served for other data or another tokenizer, and a corpus touched or copied anew to
the same place still hits (elsewhere, only its tokenizer is reused).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from nmt.batching import SplitIds
from nmt.checkpoint import file_sha256
from nmt.config import Config, ConfigError, DataConfig
from nmt.corpus_reader import CorpusError, PairChunk, hub_pairs, read_pairs
from nmt.corpus_store import StoreWriter, token_dtype
from nmt.cpu import usable_cpus
from nmt.specials import UNK_ID
from nmt.tokenize_corpus import DROP_REASONS, Cleaning, encode_chunks
from nmt.tokenizer import Tokenizer
from nmt.tokenizer_reuse import checkpoint_tokenizer, protos_digest, tokenizer_settings

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # of the tokenized cache (2: the memory-mapped store)
TOKENIZER_VERSION = 1  # of trained tokenizers: unchanged, so runs made before resume on theirs
TOKENIZER_FINGERPRINT = "fingerprint.json"
MULTI30K_LANGS = ("en", "de", "fr", "cs")
MULTI30K_SPLITS = {"train": "train", "valid": "val", "test": "test_2016_flickr"}
ENJA_SPLITS = {"train": "train", "valid": "dev", "test": "test"}
HUB_CHUNK_ROWS = 20_000
SAMPLE_SEED = 1  # of the pairs the tokenizer is trained on, when the corpus has more
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


# --------------------------------------------------------------------------- sources


class CorpusSource:
    """The splits of the configured corpus, each readable (again) as a stream of chunks."""

    def __init__(self, data: DataConfig) -> None:
        self.data = data
        self.hub = data.hub if data.hub is not None and not data.files else None
        self._hub_splits: dict[str, datasets.Dataset] | None = None
        self.files = {} if self.hub else corpus_files(data)
        if "test" in self.files and self.files["test"] == self.files.get("valid"):
            log.warning(
                "no separate test files; the test split is the validation data (%s)",
                ", ".join(map(str, self.files["test"])),
            )

    @property
    def splits(self) -> list[str]:
        return list(self.hub.splits) if self.hub else list(self.files)

    def chunks(self, split: str) -> Iterator[PairChunk]:
        """The pairs of `split`, stripped, in corpus order; errors name the file and line."""
        try:
            if self.hub:
                yield from self._hub_chunks(split)
            else:
                yield from read_pairs(self.files[split], self.data.src_lang, self.data.tgt_lang)
        except CorpusError as e:
            raise DataError(f"{split}: {e}") from None

    def _hub_chunks(self, split: str) -> Iterator[PairChunk]:
        hub = self.hub
        assert hub is not None
        part = self._load_hub()[split]
        rows = part.iter(batch_size=HUB_CHUNK_ROWS)
        fields = (hub.translation_field, hub.src_field, hub.tgt_field)
        return hub_pairs(rows, *fields, self.data.src_lang, self.data.tgt_lang)

    def _load_hub(self) -> dict[str, datasets.Dataset]:
        """The hub dataset's splits under our names, checked for the configured columns."""
        if self._hub_splits is not None:
            return self._hub_splits
        hub = self.hub
        assert hub is not None
        if not hub.translation_field and not (hub.src_field and hub.tgt_field):
            raise DataError("data.hub: set translation_field, or src_field and tgt_field")
        loaded = datasets.load_dataset(hub.name, hub.config, revision=hub.revision)
        fields = (
            [hub.translation_field] if hub.translation_field else [hub.src_field, hub.tgt_field]
        )
        splits = {}
        for ours, theirs in hub.splits.items():
            if theirs not in loaded:
                raise DataError(
                    f"hub dataset {hub.name} has no split {theirs!r}; it has {', '.join(loaded)}"
                )
            missing = [f for f in fields if f not in loaded[theirs].column_names]
            if missing:
                raise DataError(
                    f"hub dataset {hub.name} has no column {missing[0]!r}; it has "
                    f"{', '.join(loaded[theirs].column_names)}"
                )
            splits[ours] = loaded[theirs]
        self._hub_splits = splits
        return splits


def load_corpus(data: DataConfig) -> datasets.DatasetDict:
    """The raw corpus in memory: a DatasetDict with text columns "src" and "tgt" per split
    (for inspection and small corpora; preparation streams instead)."""
    source = CorpusSource(data)
    splits = {}
    for split in source.splits:
        src: list[str] = []
        tgt: list[str] = []
        for chunk in source.chunks(split):
            src += chunk.src
            tgt += chunk.tgt
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


# --------------------------------------------------------------------------- preparation


@dataclass
class PreparedData:
    tokenizer: Tokenizer
    train: SplitIds  # memory-mapped ids of the cleaned training split (nmt.corpus_store)
    # The evaluation splits: columns src, tgt (raw text), src_ids (pieces + EOS), tgt_ids.
    splits: dict[str, datasets.Dataset]
    stats: dict[str, Any]


def prepare_data(config: Config, work_dir: Path, keep_tokenizer: bool = False) -> PreparedData:
    """Stream, tokenize and clean the corpus, reusing work_dir's tokenizer and cache when valid.

    keep_tokenizer: a resumed run's model was trained on its tokenizer's ids, so that tokenizer
    is kept even when the data files' contents changed since; the tokenized cache is rebuilt
    from the files as they are now.
    """
    start = time.perf_counter()
    work_dir = Path(work_dir)
    sources = source_fingerprint(config.data)
    if "train" not in sources:
        raise DataError("the corpus has no 'train' split")
    tok_dir = work_dir / "tokenizer"
    origin, borrowed = _tokenizer_origin(config, sources, tok_dir, keep_tokenizer)
    tok_print = {
        "version": TOKENIZER_VERSION,
        "train": origin,
        "langs": [config.data.src_lang, config.data.tgt_lang],
        "train_limit": config.data.train_limit,
        "tokenizer": tokenizer_settings(config.tokenizer),
    }
    tokenizer = _reusable_tokenizer(tok_dir, tok_print, keep_tokenizer)
    reused = tokenizer is not None
    source = CorpusSource(config.data)
    if tokenizer is None:
        tokenizer = _new_tokenizer(config, source, borrowed, tok_dir, tok_print)
    cache_dir = work_dir / "cache" / cache_key(config, sources, tokenizer)
    hit = (cache_dir / "stats.json").is_file()
    if not hit:
        _build_cache(source, tokenizer, config.data, cache_dir)
    else:
        log.info("reusing tokenized data in %s", cache_dir)
    evaluation = cache_dir / "eval"
    splits = dict(datasets.load_from_disk(str(evaluation))) if evaluation.is_dir() else {}
    stats = json.loads((cache_dir / "stats.json").read_text(encoding="utf-8"))
    stats["cache"] = {"dir": str(cache_dir), "hit": hit, "tokenizer_reused": reused}
    stats["seconds"] = round(time.perf_counter() - start, 2)
    train = SplitIds.open(cache_dir / "train")
    return PreparedData(tokenizer=tokenizer, train=train, splits=splits, stats=stats)


def source_fingerprint(data: DataConfig) -> dict[str, Any]:
    """What identifies the raw data per split: the size and content hash of each file, or the
    hub spec. Contents, not time stamps: copying or touching a corpus must not retrain its
    tokenizer (hashing reads about 800 MB a second, once per run)."""
    if data.hub is not None and not data.files:
        spec = dataclasses.asdict(data.hub)
        return {split: {"hub": spec, "split": theirs} for split, theirs in data.hub.splits.items()}
    return {
        split: [[p.stat().st_size, file_sha256(p)] for p in paths]
        for split, paths in corpus_files(data).items()
    }


def cache_key(config: Config, sources: dict[str, Any], tokenizer: Tokenizer) -> str:
    """Hash of everything the tokenized data depends on."""
    key = {
        "version": CACHE_VERSION,
        "sources": sources,
        "data": dataclasses.asdict(config.data),
        "tokenizer": dataclasses.asdict(config.tokenizer),
        "protos": protos_digest(tokenizer),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _tokenizer_origin(
    config: Config, sources: dict[str, Any], tok_dir: Path, keep: bool
) -> tuple[Any, Tokenizer | None]:
    """What the run's tokenizer comes from (its fingerprint's "train"), and the tokenizer
    borrowed from `tokenizer.from_checkpoint` when one is needed: a resumed run keeps its own
    copy, so it does not need that checkpoint any more."""
    path = config.tokenizer.from_checkpoint
    if not path:
        return sources["train"], None
    saved = tok_dir / TOKENIZER_FINGERPRINT
    if keep and saved.is_file():
        return json.loads(saved.read_text(encoding="utf-8"))["train"], None
    borrowed = checkpoint_tokenizer(path, config.tokenizer, config.data)
    return {"checkpoint": protos_digest(borrowed)}, borrowed


def _reusable_tokenizer(
    tok_dir: Path, fingerprint: dict[str, Any], keep: bool = False
) -> Tokenizer | None:
    path = tok_dir / TOKENIZER_FINGERPRINT
    if not path.is_file():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    wanted = json.loads(json.dumps(fingerprint))
    if saved != wanted and not keep:
        log.info("tokenizer in %s was trained with other settings or data; retraining", tok_dir)
        return None
    settings = [key for key in wanted if key != "train" and saved.get(key) != wanted[key]]
    if settings:
        changes = "; ".join(f"{key}: {saved.get(key)} -> {wanted[key]}" for key in settings)
        raise ConfigError(
            f"{tok_dir} was trained with other settings than the config now asks for "
            f"({changes}); a resumed run must keep the settings its model was trained with"
        )
    if saved != wanted:
        log.warning(
            "the training files differ from those %s was trained on; "
            "the resumed run keeps its tokenizer",
            tok_dir,
        )
    log.info("reusing tokenizer in %s", tok_dir)
    return Tokenizer.load(tok_dir)


@dataclass
class TrainLimit:
    """Cuts the training stream after its first `limit` pairs and counts the pairs cut."""

    limit: int | None
    cut: int = 0

    def apply(self, chunks: Iterator[PairChunk]) -> Iterator[PairChunk]:
        self.cut, kept = 0, 0
        for chunk in chunks:
            room = len(chunk) if self.limit is None else max(self.limit - kept, 0)
            if room >= len(chunk):
                kept += len(chunk)
                yield chunk
                continue
            if room:
                yield PairChunk(chunk.src[:room], chunk.tgt[:room], chunk.first_line)
            kept += room
            self.cut += len(chunk) - room


@dataclass
class PairSample:
    """A seeded uniform sample of at most `size` pairs with both sides non-empty (reservoir
    sampling), in corpus order; all of them when there are fewer (size None = all)."""

    size: int | None
    seen: int = 0
    _rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(SAMPLE_SEED))
    _rows: list[tuple[int, str, str]] = field(default_factory=list)

    def add(self, chunk: PairChunk) -> None:
        pairs = [(s, t) for s, t in zip(chunk.src, chunk.tgt) if s and t]
        room = len(pairs) if self.size is None else max(self.size - len(self._rows), 0)
        for s, t in pairs[:room]:
            self._rows.append((self.seen, s, t))
            self.seen += 1
        rest = pairs[room:]
        if not rest:
            return
        # Pair number n (0-based) replaces a random slot with probability size / (n + 1).
        numbers = np.arange(self.seen, self.seen + len(rest))
        slots = self._rng.integers(0, numbers + 1)
        for offset in np.flatnonzero(slots < len(self._rows)).tolist():
            s, t = rest[offset]
            self._rows[int(slots[offset])] = (int(numbers[offset]), s, t)
        self.seen += len(rest)

    def sides(self) -> tuple[list[str], list[str]]:
        rows = sorted(self._rows)
        return [s for _, s, _ in rows], [t for _, _, t in rows]


def _new_tokenizer(
    config: Config,
    source: CorpusSource,
    borrowed: Tokenizer | None,
    tok_dir: Path,
    fingerprint: dict[str, Any],
) -> Tokenizer:
    """The borrowed tokenizer, else one trained on the corpus, stored in tok_dir; the
    fingerprint is written last (marks completion)."""
    (tok_dir / TOKENIZER_FINGERPRINT).unlink(missing_ok=True)
    if borrowed is not None:
        log.info("tokenizer from %s", config.tokenizer.from_checkpoint)
        borrowed.save(tok_dir)
        tokenizer = borrowed
    else:
        tokenizer = _train_tokenizer(config, source, tok_dir)
    (tok_dir / TOKENIZER_FINGERPRINT).write_text(
        json.dumps(fingerprint, indent=2), encoding="utf-8"
    )
    return tokenizer


def _train_tokenizer(config: Config, source: CorpusSource, tok_dir: Path) -> Tokenizer:
    """Train on a sample of the non-empty training pairs (one streaming pass)."""
    sample = PairSample(config.tokenizer.input_sentence_size)
    for chunk in TrainLimit(config.data.train_limit).apply(source.chunks("train")):
        sample.add(chunk)
    src, tgt = sample.sides()
    log.info("tokenizer sample: %d of %d non-empty training pairs", len(src), sample.seen)
    return Tokenizer.train(
        config.tokenizer, src, tgt, config.data.src_lang, config.data.tgt_lang, tok_dir
    )


def _build_cache(
    source: CorpusSource, tokenizer: Tokenizer, data: DataConfig, cache_dir: Path
) -> None:
    """Tokenize every split (train cleaned, into the store), save with stats; renamed into
    place when complete, so an interrupted run leaves no cache behind."""
    tmp = cache_dir.with_name(f".{cache_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    dtype = token_dtype(max(tokenizer.src_vocab_size, tokenizer.tgt_vocab_size))
    split_stats = {"train": _write_train(source, tokenizer, data, dtype, tmp / "train")}
    train = SplitIds.open(tmp / "train")
    lengths = {"train": _length_stats(train.src.lengths, train.tgt.lengths)}
    evaluation, unk_rate = {}, None
    for name in source.splits:
        if name == "train":
            continue
        part = _encode_evaluation_split(source, name, tokenizer)
        evaluation[name] = part
        split_stats[name] = {"pairs": len(part), "kept": len(part), "dropped": {}}
        ids = SplitIds.of(part)
        lengths[name] = _length_stats(ids.src.lengths, ids.tgt.lengths)
        if name == data.valid_split:
            unk_rate = _unk_rate(ids)
    if evaluation:
        datasets.DatasetDict(evaluation).save_to_disk(str(tmp / "eval"))
    stats = {
        "splits": split_stats,
        "lengths": lengths,
        "unk_rate": unk_rate,
        "vocab": {
            "src": tokenizer.src_vocab_size,
            "tgt": tokenizer.tgt_vocab_size,
            "joint": tokenizer.joint,
        },
        "store": {"dtype": dtype.name, "bytes": _folder_bytes(tmp / "train")},
    }
    (tmp / "stats.json").write_text(json.dumps(stats, indent=2), encoding="utf-8")
    try:
        os.rename(tmp, cache_dir)
    except OSError:  # another process finished the same cache first
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("saved tokenized data to %s", cache_dir)


def _write_train(
    source: CorpusSource, tokenizer: Tokenizer, data: DataConfig, dtype: np.dtype, folder: Path
) -> dict[str, Any]:
    """Stream the training split through tokenizing and cleaning into a store folder."""
    limit = TrainLimit(data.train_limit)
    writer = StoreWriter(folder, dtype)
    cleaning = Cleaning(data.max_len, data.max_ratio)
    pairs, dropped = 0, dict.fromkeys(DROP_REASONS, 0)
    workers = usable_cpus()
    log.info("tokenizing the training split (%d worker processes)", workers)
    for part in encode_chunks(
        limit.apply(source.chunks("train")), tokenizer, cleaning, dtype, workers
    ):
        writer.append(part.src, part.tgt)
        pairs += part.pairs
        for reason, count in part.dropped.items():
            dropped[reason] += count
    kept = writer.close()
    return {
        "pairs": pairs + limit.cut,
        "kept": kept,
        "dropped": {"train_limit": limit.cut, **dropped},
    }


def _encode_evaluation_split(
    source: CorpusSource, split: str, tokenizer: Tokenizer
) -> datasets.Dataset:
    """An evaluation split with its raw text (the references) and ids, uncleaned."""
    columns: dict[str, list[Any]] = {"src": [], "tgt": [], "src_ids": [], "tgt_ids": []}
    for chunk in source.chunks(split):
        columns["src"] += chunk.src
        columns["tgt"] += chunk.tgt
        columns["src_ids"] += tokenizer.encode_src(chunk.src)
        columns["tgt_ids"] += tokenizer.encode_tgt(chunk.tgt)
    return datasets.Dataset.from_dict(columns, features=ID_FEATURES)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())


def _length_stats(src_lengths: np.ndarray, tgt_lengths: np.ndarray) -> dict[str, float]:
    """Mean and 95th percentile of subword pieces per sentence (EOS not counted)."""
    src = np.asarray(src_lengths, dtype=np.int64) - 1 if len(src_lengths) else np.zeros(1)
    tgt = np.asarray(tgt_lengths, dtype=np.int64) if len(tgt_lengths) else np.zeros(1)
    return {
        "src_mean": round(float(src.mean()), 2),
        "src_p95": float(np.percentile(src, 95)),
        "tgt_mean": round(float(tgt.mean()), 2),
        "tgt_p95": float(np.percentile(tgt, 95)),
    }


def _unk_rate(ids: SplitIds) -> dict[str, float]:
    """Share of <unk> among the subword pieces of each side (EOS not counted)."""
    rates = {}
    for side, flat, eos in (("src", ids.src, len(ids.src)), ("tgt", ids.tgt, 0)):
        total = len(flat.ids) - eos
        rates[side] = int((flat.ids == UNK_ID).sum()) / total if total else 0.0
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
    if "store" in stats:
        store = stats["store"]
        lines.append(
            f"training ids: {store['dtype']}, {store['bytes'] / 2**20:.1f} MB on disk "
            "(memory-mapped by training)"
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
