"""Streaming readers of parallel corpora: pairs in chunks, never a whole file in memory.

Sources: two line-aligned text files (plain or .gz), one two-column .tsv, one .jsonl with
`<src_lang>`/`<tgt_lang>` (or `src`/`tgt`) keys, or a split of a Hugging Face dataset. Every
reader yields `PairChunk`s of at most `chunk_pairs` stripped pairs, in corpus order. A problem
in a file (invalid UTF-8, misaligned line counts, a bad TSV/JSONL line) names the file and the
line.

Lines are split on "\\n" only, never on other Unicode line breaks (U+2028, U+0085, ...), which
would shift a parallel corpus out of alignment; a leading byte-order mark is dropped.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHUNK_PAIRS = 20_000
READ_BYTES = 1 << 22  # bytes of lines read at once from a file


class CorpusError(ValueError):
    """A corpus file or dataset that cannot be read as parallel text (names file and line)."""


@dataclass
class PairChunk:
    """Consecutive pairs of a split; `first_line` is the 1-based line (row) of the first pair."""

    src: list[str]
    tgt: list[str]
    first_line: int = 1

    def __len__(self) -> int:
        return len(self.src)


class LineReader:
    """Stripped lines of one UTF-8 file (plain or .gz), taken in batches of any size."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines_read = 0  # lines handed out so far
        self._decoded = 0  # lines decoded so far (handed out + buffered)
        self._buffer: list[str] = []
        self._file: io.BufferedIOBase | None = None

    def __enter__(self) -> LineReader:
        opener = gzip.open if self.path.name.endswith(".gz") else open
        self._file = opener(self.path, "rb")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()

    def take(self, count: int) -> list[str]:
        """The next `count` lines (fewer at the end of the file)."""
        while len(self._buffer) < count and self._fill():
            pass
        taken, self._buffer = self._buffer[:count], self._buffer[count:]
        self.lines_read += len(taken)
        return taken

    def count_rest(self) -> int:
        """Read to the end and return how many lines are left (for messages and counts)."""
        rest = len(self._buffer)
        self._buffer = []
        assert self._file is not None
        while raw := self._file.readlines(READ_BYTES):
            rest += len(raw)
        self.lines_read += rest
        return rest

    def _fill(self) -> bool:
        assert self._file is not None, "use LineReader as a context manager"
        raw = self._file.readlines(READ_BYTES)
        if not raw:
            return False
        try:
            text = b"".join(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise self._utf8_error(raw) from None
        lines = text.split("\n")
        if text.endswith("\n"):
            lines.pop()
        if self._decoded == 0 and lines and lines[0].startswith("\ufeff"):
            lines[0] = lines[0][1:]
        self._decoded += len(lines)
        self._buffer.extend(line.strip() for line in lines)
        return True

    def _utf8_error(self, raw: list[bytes]) -> CorpusError:
        for offset, line in enumerate(raw):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                number = self._decoded + offset + 1
                return CorpusError(f"{self.path}:{number}: not UTF-8 text: {e.reason}")
        return CorpusError(f"{self.path}: not UTF-8 text")


def read_pairs(
    paths: list[Path], src_lang: str, tgt_lang: str, chunk_pairs: int = CHUNK_PAIRS
) -> Iterator[PairChunk]:
    """Chunks of pairs from [src_file, tgt_file], [file.tsv] or [file.jsonl] (optionally .gz)."""
    if len(paths) == 2:
        return _aligned_pairs(paths[0], paths[1], chunk_pairs)
    if len(paths) == 1:
        name = paths[0].name.removesuffix(".gz")
        if name.endswith(".tsv"):
            return _tsv_pairs(paths[0], chunk_pairs)
        if name.endswith(".jsonl"):
            return _jsonl_pairs(paths[0], src_lang, tgt_lang, chunk_pairs)
        raise CorpusError(f"a single corpus file must be .tsv or .jsonl, got {paths[0]}")
    raise CorpusError(
        f"expected [src_file, tgt_file] or [file.tsv|file.jsonl], got {len(paths)} paths"
    )


def _aligned_pairs(src_path: Path, tgt_path: Path, chunk_pairs: int) -> Iterator[PairChunk]:
    with LineReader(src_path) as src, LineReader(tgt_path) as tgt:
        while True:
            first = src.lines_read + 1
            src_lines, tgt_lines = src.take(chunk_pairs), tgt.take(chunk_pairs)
            if len(src_lines) != len(tgt_lines):
                src_total, tgt_total = src.lines_read, tgt.lines_read
                src_total += src.count_rest()
                tgt_total += tgt.count_rest()
                raise CorpusError(
                    f"{src_path} has {src_total} lines but {tgt_path} has {tgt_total} lines; "
                    f"parallel files must be line-aligned (line {min(src_total, tgt_total) + 1} "
                    "has no partner)"
                )
            if not src_lines:
                return
            yield PairChunk(src_lines, tgt_lines, first)


def _tsv_pairs(path: Path, chunk_pairs: int) -> Iterator[PairChunk]:
    with LineReader(path) as reader:
        while lines := reader.take(chunk_pairs):
            first = reader.lines_read - len(lines) + 1
            src, tgt = [], []
            for number, line in enumerate(lines, start=first):
                fields = line.split("\t") if line else ["", ""]
                if len(fields) != 2:
                    raise CorpusError(
                        f"{path}:{number}: expected 2 tab-separated columns, got {len(fields)}"
                    )
                src.append(fields[0].strip())
                tgt.append(fields[1].strip())
            yield PairChunk(src, tgt, first)


def _jsonl_pairs(path: Path, src_lang: str, tgt_lang: str, chunk_pairs: int) -> Iterator[PairChunk]:
    """Pairs of a .jsonl file; blank lines are skipped (first_line is then approximate)."""
    with LineReader(path) as reader:
        while lines := reader.take(chunk_pairs):
            first = reader.lines_read - len(lines) + 1
            src, tgt = [], []
            for number, line in enumerate(lines, start=first):
                if line:
                    s, t = _json_pair(path, number, line, src_lang, tgt_lang)
                    src.append(s)
                    tgt.append(t)
            if src:
                yield PairChunk(src, tgt, first)


def hub_pairs(
    rows: Iterator[dict[str, list[Any]]],
    translation_field: str | None,
    src_field: str | None,
    tgt_field: str | None,
    src_lang: str,
    tgt_lang: str,
) -> Iterator[PairChunk]:
    """Chunks of a hub dataset's column batches (`Dataset.iter(batch_size)`): either a
    translation column of {lang: text} rows, or separate source and target columns."""
    first = 1
    for batch in rows:
        if translation_field:
            pairs = batch[translation_field]
            if pairs and not {src_lang, tgt_lang} <= set(pairs[0]):
                held = ", ".join(pairs[0])
                raise CorpusError(
                    f"{translation_field} holds {held}, not {src_lang} and {tgt_lang}"
                )
            src = [p[src_lang].strip() for p in pairs]
            tgt = [p[tgt_lang].strip() for p in pairs]
        else:
            src = [s.strip() for s in batch[str(src_field)]]
            tgt = [t.strip() for t in batch[str(tgt_field)]]
        yield PairChunk(src, tgt, first)
        first += len(src)


def _json_pair(path: Path, number: int, line: str, src_lang: str, tgt_lang: str) -> tuple[str, str]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise CorpusError(f"{path}:{number}: invalid JSON: {e}") from None
    for src_key, tgt_key in ((src_lang, tgt_lang), ("src", "tgt")):
        if isinstance(row, dict) and src_key in row and tgt_key in row:
            return str(row[src_key]).strip(), str(row[tgt_key]).strip()
    raise CorpusError(f"{path}:{number}: expected keys {src_lang!r}/{tgt_lang!r} or 'src'/'tgt'")
