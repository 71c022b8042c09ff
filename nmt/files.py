"""Files people and programs read while they are being written: atomic writes, text lines.

Every file nmt writes for later use (checkpoints, reports, run indexes, tokenizer models) goes
through `write_atomic`, so a crash or a kill at any moment leaves the old file or the complete
new one, never a truncated file under the final name. `read_lines` is the one reader of line
files (corpora, references, hypotheses).
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO


def write_atomic(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Call `write` on a temporary file in `path`'s folder, fsync it, rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # as open() would create it, not mkstemp's 0o600
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    write_atomic(path, lambda f: f.write(data))


def write_json_atomic(path: str | Path, value: Any) -> None:
    """Indented UTF-8 JSON with a final newline."""
    write_bytes_atomic(path, (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode())


def _umask() -> int:
    """The process's umask, read from /proc where it can be (setting it to read it back is
    not thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_lines(lines: Sequence[str], path: str | Path) -> None:
    """One line per string (plain, or gzip for a .gz name); for outputs streamed by a user."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")


def read_lines(path: str | Path) -> list[str]:
    """Lines of a UTF-8 text file (plain or .gz) without their line endings.

    Splits on "\\n" only, never on other Unicode line breaks (U+2028, U+0085, ...), which would
    shift a parallel corpus out of alignment; a byte-order mark is dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        raw = gzip.decompress(raw)
    text = raw.decode("utf-8-sig")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]
