"""The tokenized training corpus on disk, memory-mapped: what training reads its batches from.

Per side (`src`, `tgt`) a folder holds three files:
  <side>.tokens       every row's ids back to back, raw, in the smallest integer type the
                      vocabulary allows (uint8 up to 256 pieces, uint16 up to 65,536, else int32)
  <side>.offsets.npy  int64 [N + 1]: row i is tokens[offsets[i]:offsets[i + 1]]
  <side>.lengths.npy  [N], the smallest unsigned type that holds the longest row
and store.json names the token type and the counts. Readers map the files (mmap), so a
training process holds no copy of the corpus: its pages are the operating system's page cache,
shared by every rank on the machine. Batches read their rows with pread (`StoredRows`), so a
training process maps no page of the corpus but its length arrays. A writer appends chunk by
chunk, so preparing a corpus never holds it whole either.
"""

from __future__ import annotations

import json
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow
import pyarrow.compute

from nmt.specials import PAD_ID

STORE_VERSION = 1
META_FILE = "store.json"
SIDES = ("src", "tgt")


class StoreError(ValueError):
    """A store folder that is missing, incomplete or of another version."""


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest integer type holding ids below `vocab_size`."""
    for dtype in (np.uint8, np.uint16):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    return np.dtype(np.int32)


def length_dtype(longest: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16):
        if longest <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint32)


@dataclass
class Encoded:
    """Ids of consecutive rows of one side: `ids` back to back, `lengths` per row."""

    ids: np.ndarray
    lengths: np.ndarray

    def select(self, keep: np.ndarray) -> Encoded:
        """The rows where the bool mask `keep` is True."""
        return Encoded(self.ids[np.repeat(keep, self.lengths)], self.lengths[keep])


class FlatIds:
    """Token ids of one side of a split: a flat array, row offsets and row lengths.

    In memory (from an Arrow column, for the small evaluation splits) or mapped from a store
    folder (`open`), whose batches read their rows from the file (`read`). A mapped FlatIds
    pickles as its folder, so DataLoader workers map the same files instead of receiving a
    copy.
    """

    def __init__(
        self,
        ids: np.ndarray,
        offsets: np.ndarray,
        lengths: np.ndarray,
        source: tuple[Path, str] | None = None,
    ) -> None:
        self.ids, self.offsets, self.lengths = ids, offsets, lengths
        self.source = source  # (folder, side) when mapped from a store
        self.stored = StoredRows(tokens_file(*source), ids.dtype, lengths) if source else None

    @classmethod
    def from_arrow(cls, column: pyarrow.ChunkedArray | pyarrow.Array) -> FlatIds:
        """From a list<int> column (as `datasets` stores src_ids/tgt_ids)."""
        if isinstance(column, pyarrow.ChunkedArray):
            column = column.combine_chunks()
        lengths = pyarrow.compute.list_value_length(column).to_numpy(zero_copy_only=False)
        lengths = np.asarray(lengths, dtype=np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = pyarrow.compute.list_flatten(column).to_numpy(zero_copy_only=False)
        return cls(np.asarray(flat, dtype=np.int32), offsets, lengths)

    @classmethod
    def open(cls, folder: Path, side: str) -> FlatIds:
        """Map one side of a store folder written by `StoreWriter` (read only)."""
        meta = read_meta(folder)
        ids = _map(tokens_file(folder, side), np.dtype(meta["dtype"]), 0, meta["tokens"][side])
        offsets = _map_npy(folder / f"{side}.offsets.npy")
        lengths = _map_npy(folder / f"{side}.lengths.npy")
        return cls(ids, offsets, lengths, source=(folder, side))

    def __reduce__(self) -> tuple[Any, ...]:
        if self.source is not None:
            return (FlatIds.open, self.source)
        return (FlatIds, (self.ids, self.offsets, self.lengths))

    def __len__(self) -> int:
        return len(self.lengths)

    def read(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ids holding `rows` and where each row starts in them: read from the store file,
        or the whole array in memory."""
        if self.stored is not None:
            return self.stored.read(rows)
        return self.ids, self.offsets[rows]

    def padded(
        self,
        rows: np.ndarray,
        prefix: int | None = None,
        suffix: int | None = None,
        read: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """[B, L] int64 ids of `rows` (with an optional first/last token added) and the bool
        mask (True = token), padded with PAD_ID. `read`: `self.read(rows)`, if already done."""
        ids, starts = read if read is not None else self.read(rows)
        lengths = self.lengths[rows].astype(np.int64)
        extra = (prefix is not None) + (suffix is not None)
        width = int(lengths.max()) + extra if len(rows) else 0
        columns = np.arange(width)[None, :]
        shift = 1 if prefix is not None else 0
        inside = (columns >= shift) & (columns < lengths[:, None] + shift)
        gather = starts[:, None] + np.clip(columns - shift, 0, None)
        gather = np.minimum(gather, max(len(ids) - 1, 0))
        out = np.where(inside, ids[gather] if len(ids) else PAD_ID, PAD_ID)
        out = out.astype(np.int64)
        if prefix is not None:
            out[:, 0] = prefix
        if suffix is not None:
            out[np.arange(len(rows)), lengths + shift] = suffix
        total = lengths + extra
        mask = columns < total[:, None]
        return out, mask


OFFSET_BLOCK = 64


class StoredRows:
    """Reads rows of one side of a store with pread, for batches.

    Reading rows through the mapping would map far more than the rows: for a file already in
    the page cache the kernel maps the cached pages around every faulting address
    (fault-around), so one batch of a few hundred random rows maps tens of MB and a training
    process's RSS grows towards the corpus size. pread copies just the rows. Row offsets come
    from the lengths and the offset of every 64th row, 1/64 of the offsets file's memory.
    """

    def __init__(self, path: Path, dtype: np.dtype, lengths: np.ndarray) -> None:
        self.file = open(path, "rb")  # pread keeps no file position: safe to share across fork
        self.dtype, self.lengths = np.dtype(dtype), lengths
        n = len(lengths)
        block_sums = np.add.reduceat(lengths, np.arange(0, n, OFFSET_BLOCK), dtype=np.int64)
        self.block_starts = np.zeros(len(block_sums), dtype=np.int64)
        np.cumsum(block_sums[:-1], out=self.block_starts[1:])

    def offsets(self, rows: np.ndarray) -> np.ndarray:
        """The token offset of each row: its block's start plus the lengths before it there."""
        first = rows - rows % OFFSET_BLOCK
        columns = np.arange(OFFSET_BLOCK)
        before = columns[None, :] < (rows - first)[:, None]
        inside = np.minimum(first[:, None] + columns, max(len(self.lengths) - 1, 0))
        partial = np.where(before, self.lengths[inside], 0).sum(axis=1, dtype=np.int64)
        return self.block_starts[rows // OFFSET_BLOCK] + partial

    def read(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ids of `rows` back to back and where each row starts in them."""
        lengths = self.lengths[rows].astype(np.int64)
        size, fd = self.dtype.itemsize, self.file.fileno()
        pieces = [
            os.pread(fd, count * size, offset * size)
            for offset, count in zip(self.offsets(rows).tolist(), lengths.tolist())
        ]
        starts = np.zeros(len(rows), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        return np.frombuffer(b"".join(pieces), dtype=self.dtype), starts


def tokens_file(folder: Path, side: str) -> Path:
    return folder / f"{side}.tokens"


def _map(path: Path, dtype: np.dtype, offset: int, count: int) -> np.ndarray:
    """A read-only array over `count` items of a file from byte `offset`, mapped for random
    access (MADV_RANDOM: a page fault reads its page from disk, not 128 KB of read-ahead
    around a random row). For whole-array readers; batches read rows with `StoredRows`."""
    if count == 0:
        return np.zeros(0, dtype)
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if hasattr(mapped, "madvise") and hasattr(mmap, "MADV_RANDOM"):
        mapped.madvise(mmap.MADV_RANDOM)
    return np.frombuffer(mapped, dtype=dtype, count=count, offset=offset)


def _map_npy(path: Path) -> np.ndarray:
    """A 1-d .npy file mapped like `_map` (header parsed by numpy's own format reader)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        offset = f.tell()
    return _map(path, dtype, offset, int(np.prod(shape)))


def read_meta(folder: Path) -> dict[str, Any]:
    path = folder / META_FILE
    if not path.is_file():
        raise StoreError(f"no tokenized corpus in {folder} (missing {META_FILE})")
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("version") != STORE_VERSION:
        raise StoreError(f"{path}: store version {meta.get('version')!r}, expected {STORE_VERSION}")
    return dict(meta)


class StoreWriter:
    """Appends rows chunk by chunk; `close` writes offsets, lengths and store.json (last, so a
    folder without it is incomplete)."""

    def __init__(self, folder: Path, dtype: np.dtype) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.dtype = folder, np.dtype(dtype)
        self._files: dict[str, IO[bytes]] = {
            side: open(tokens_file(folder, side), "wb") for side in SIDES
        }
        self._lengths: dict[str, list[np.ndarray]] = {side: [] for side in SIDES}

    def append(self, src: Encoded, tgt: Encoded) -> None:
        if len(src.lengths) != len(tgt.lengths):
            raise ValueError(f"{len(src.lengths)} source rows but {len(tgt.lengths)} target rows")
        for side, part in zip(SIDES, (src, tgt)):
            self._files[side].write(np.ascontiguousarray(part.ids, dtype=self.dtype).tobytes())
            self._lengths[side].append(np.asarray(part.lengths, dtype=np.int64))

    def close(self) -> int:
        """Finish the store; returns the number of rows."""
        tokens, rows = {}, 0
        for side in SIDES:
            self._files[side].close()
            lengths = np.concatenate(self._lengths[side] or [np.zeros(0, np.int64)])
            offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            longest = int(lengths.max()) if len(lengths) else 0
            np.save(self.folder / f"{side}.offsets.npy", offsets)
            np.save(self.folder / f"{side}.lengths.npy", lengths.astype(length_dtype(longest)))
            tokens[side], rows = int(offsets[-1]), len(lengths)
        meta = {"version": STORE_VERSION, "dtype": self.dtype.name, "rows": rows, "tokens": tokens}
        (self.folder / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        return rows
