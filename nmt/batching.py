"""Token-budget batching: length-bucketed, seeded, shardable batches and padded collation."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import datasets
import numpy as np
import torch

from nmt.corpus_store import FlatIds
from nmt.specials import BOS_ID, EOS_ID

Rows = Sequence[int] | np.ndarray  # row indices of a batch


@dataclass
class Batch:
    """Padded tensors of one batch; masks are True on real tokens."""

    src: torch.Tensor  # [B, S] long, pieces + EOS
    src_mask: torch.Tensor  # [B, S] bool
    tgt_in: torch.Tensor  # [B, T] long, BOS + pieces
    tgt_out: torch.Tensor  # [B, T] long, pieces + EOS
    tgt_mask: torch.Tensor  # [B, T] bool, real tokens of tgt_out
    indices: list[int]  # dataset rows, in batch order
    num_src_tokens: int
    num_tgt_tokens: int

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        moved = {
            name: getattr(self, name).to(device, non_blocking=non_blocking)
            for name in ("src", "src_mask", "tgt_in", "tgt_out", "tgt_mask")
        }
        return dataclasses.replace(self, **moved)

    def pin_memory(self) -> Batch:
        """Page-locked copies, so a later .to(cuda, non_blocking=True) overlaps with compute."""
        pinned = {
            name: getattr(self, name).pin_memory()
            for name in ("src", "src_mask", "tgt_in", "tgt_out", "tgt_mask")
        }
        return dataclasses.replace(self, **pinned)


@dataclass
class SplitIds:
    """Source and target ids of a tokenized split (columns src_ids, tgt_ids)."""

    src: FlatIds
    tgt: FlatIds

    @classmethod
    def of(cls, split: datasets.Dataset) -> SplitIds:
        """In memory, from a split with list columns src_ids and tgt_ids."""
        table = split.with_format("arrow")[:]
        return cls(FlatIds.from_arrow(table["src_ids"]), FlatIds.from_arrow(table["tgt_ids"]))

    @classmethod
    def open(cls, folder: Path) -> SplitIds:
        """Mapped from a store folder (nmt.corpus_store): no copy of the corpus in memory."""
        return cls(FlatIds.open(folder, "src"), FlatIds.open(folder, "tgt"))

    def __len__(self) -> int:
        return len(self.src)

    def batch_lengths(self) -> tuple[np.ndarray, np.ndarray]:
        """Padded lengths per row as `batch` makes them: S = len(src_ids), T = len(tgt_ids) + 1."""
        tgt = self.tgt.lengths
        narrow = len(tgt) == 0 or int(tgt.max()) < np.iinfo(np.uint16).max
        return self.src.lengths, tgt.astype(np.uint16 if narrow else np.int64) + 1

    def batch(self, indices: Rows) -> Batch:
        """The padded batch of these rows (in this order), built without a loop over rows."""
        rows = np.asarray(indices, dtype=np.int64)
        src, src_mask = self.src.padded(rows)
        tgt_read = self.tgt.read(rows)
        tgt_in, tgt_mask = self.tgt.padded(rows, prefix=BOS_ID, read=tgt_read)
        tgt_out, _ = self.tgt.padded(rows, suffix=EOS_ID, read=tgt_read)
        return Batch(
            src=torch.from_numpy(src),
            src_mask=torch.from_numpy(src_mask),
            tgt_in=torch.from_numpy(tgt_in),
            tgt_out=torch.from_numpy(tgt_out),
            tgt_mask=torch.from_numpy(tgt_mask),
            indices=list(map(int, rows)),
            num_src_tokens=int(self.src.lengths[rows].sum()),
            num_tgt_tokens=int(self.tgt.lengths[rows].sum()) + len(rows),
        )


def batch_stream(
    ids: SplitIds, order: Sequence[Rows], workers: int = 0, pin: bool = False
) -> Iterable[Batch]:
    """The batches of `order` (arrays or lists of rows), in order: built here, or by `workers`
    DataLoader processes ahead of use, into page-locked memory if `pin` (for CUDA)."""
    if workers == 0:
        return (ids.batch(indices) for indices in order)
    return torch.utils.data.DataLoader(
        _BatchList(ids, order),
        batch_size=None,
        num_workers=workers,
        pin_memory=pin,
        prefetch_factor=4,
        collate_fn=_as_is,
    )


class _BatchList(torch.utils.data.Dataset):
    """Batches built on demand, by index (what DataLoader workers call)."""

    def __init__(self, ids: SplitIds, order: Sequence[Rows]) -> None:
        self.ids, self.order = ids, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> Batch:
        return self.ids.batch(self.order[i])


def _as_is(batch: Any) -> Any:
    """DataLoader's collate step: the item is a whole batch already."""
    return batch


class TokenBatchSampler:
    """Length-bucketed batches of row indices whose padded size fits a token budget.

    Rows are sorted by (source length, target length) with a random tie-break and cut into
    batches whose padded size `rows * max(longest source, longest target)` stays within
    `batch_tokens` (a single longer pair gets a batch of its own); the batch order is then
    shuffled. Both random draws use (seed, epoch), so every rank, given the same seed, builds
    the same list. Each epoch yields every row exactly once overall.

    Sharding: rank r takes batches r, r + w, r + 2w, ... To give every rank the same number of
    batches, the largest batches are halved (after shuffling, in place, so the sequence of
    rows of an epoch does not depend on world_size) until the count divides by world_size,
    which keeps shards disjoint and complete. Only if no batch has two rows left to split (tiny
    corpora) are the first batches of the epoch repeated at the end.

    A batch is an integer array, a view into the epoch's one array of rows: an epoch of
    millions of rows costs 4 bytes per row, not a Python list of Python ints, and sorting it
    takes a few more bytes per row only for a moment (`_stable_sort`).
    """

    def __init__(
        self,
        src_lengths: Sequence[int] | np.ndarray,
        tgt_lengths: Sequence[int] | np.ndarray,
        batch_tokens: int,
        shuffle: bool = True,
        seed: int = 1,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(src_lengths) != len(tgt_lengths):
            raise ValueError(
                f"{len(src_lengths)} source lengths but {len(tgt_lengths)} target lengths"
            )
        if batch_tokens <= 0:
            raise ValueError(f"batch_tokens must be positive, got {batch_tokens}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        # Kept in their own (small, possibly memory-mapped) integer types.
        self.src_lengths = np.asarray(src_lengths)
        self.tgt_lengths = np.asarray(tgt_lengths)
        self.batch_tokens, self.shuffle, self.seed = batch_tokens, shuffle, seed
        self.rank, self.world_size, self.epoch = rank, world_size, 0
        self._length_key = _length_key(self.src_lengths, self.tgt_lengths)
        # Rows with equal (src, tgt) lengths are interchangeable for cutting, so the batch sizes
        # along the sorted order are the same in every epoch: compute them once.
        widths = np.maximum(self.src_lengths, self.tgt_lengths)[self._sorted_rows(None)]
        self._sizes = _chunk_sizes(widths, batch_tokens)
        self._count = len(_divisible(list(self._sizes), world_size))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self._count // self.world_size)

    def __iter__(self) -> Iterator[np.ndarray]:
        yield from self.epoch_batches()[self.rank :: self.world_size]

    def epoch_batches(self) -> list[np.ndarray]:
        """All ranks' batches of the current epoch, in order (rank r takes r, r+w, ...)."""
        rng = np.random.default_rng([self.seed, self.epoch]) if self.shuffle else None
        rows = self._sorted_rows(rng)
        batches = np.split(rows, np.cumsum(self._sizes)[:-1]) if len(rows) else []
        if rng is not None:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        batches = _divisible(batches, self.world_size)
        missing = -len(batches) % self.world_size
        return batches + batches[:missing]

    def rows_before(self, position: int) -> int:
        """Rows of this epoch consumed when every rank has taken `position` batches."""
        return sum(len(b) for b in self.epoch_batches()[: position * self.world_size])

    def position_after(self, rows: int) -> int:
        """The per-rank position that has consumed at most `rows` rows of this epoch: how a run
        resumed with another world size continues where the saved run stopped (it may repeat
        part of a batch, never skip one)."""
        consumed, batches = 0, 0
        for batch in self.epoch_batches():
            if consumed + len(batch) > rows:
                break
            consumed += len(batch)
            batches += 1
        return batches // self.world_size

    def _sorted_rows(self, rng: np.random.Generator | None) -> np.ndarray:
        """Rows by (source length, target length), ties in the order of a random permutation
        (by row number without `rng`): a stable sort of one small integer key."""
        n = len(self._length_key)
        index = np.int32 if n < np.iinfo(np.int32).max else np.int64
        if rng is None:
            return _stable_sort(np.arange(n, dtype=index), self._length_key)
        tie = np.arange(n, dtype=index)
        rng.shuffle(tie)  # the permutation rng.permutation(n) draws, in half the memory
        by_tie = np.empty(n, dtype=index)  # the rows in increasing order of their tie value
        by_tie[tie] = np.arange(n, dtype=index)
        del tie
        return _stable_sort(by_tie, self._length_key)


SORT_CHUNK = 1 << 18


def _stable_sort(rows: np.ndarray, key: np.ndarray, chunk: int = SORT_CHUNK) -> np.ndarray:
    """`rows` stably sorted by `key[rows]`.

    A 16-bit key (lengths up to 254, any usual max_len) is counting-sorted chunk by chunk, so
    the temporaries are a chunk's: a whole argsort would take an int64 result and a radix
    buffer, 16+ bytes a row at once, hundreds of MB at every epoch of a corpus of millions.
    """
    if key.dtype.itemsize > 2:
        return rows[np.argsort(key[rows], kind="stable")]
    slots = 1 << (8 * key.dtype.itemsize)
    counts = np.zeros(slots, dtype=np.int64)
    for start in range(0, len(rows), chunk):
        counts += np.bincount(key[rows[start : start + chunk]], minlength=slots)
    next_free = np.cumsum(counts) - counts  # where each key's next row goes
    out = np.empty_like(rows)
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        keys = key[part]
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        rank = np.arange(len(keys)) - np.searchsorted(keys, keys, side="left")  # within its key
        out[next_free[keys] + rank] = part[order]
        next_free += np.bincount(keys, minlength=slots)
    return out


def _length_key(src_lengths: np.ndarray, tgt_lengths: np.ndarray) -> np.ndarray:
    """One integer per row ordered as (src, tgt) lengths, in the smallest type that holds it."""
    if not len(src_lengths):
        return np.zeros(0, dtype=np.uint8)
    base = int(tgt_lengths.max()) + 1
    largest = int(src_lengths.max()) * base + base - 1
    dtype = next(t for t in (np.uint16, np.uint32, np.uint64) if largest <= np.iinfo(t).max)
    return src_lengths.astype(dtype) * dtype(base) + tgt_lengths.astype(dtype)


def _chunk_sizes(widths: np.ndarray, budget: int) -> list[int]:
    """Greedy cut of a width sequence into runs with len(run) * max(run) <= budget (>= 1 each).

    The same cut as adding rows one by one, but over runs of equal widths (sorted rows have
    a few thousand distinct lengths, not millions of rows), so millions of rows take
    milliseconds instead of seconds at start-up.
    """
    if not len(widths):
        return []
    starts = np.concatenate([[0], np.flatnonzero(widths[1:] != widths[:-1]) + 1])
    counts = np.diff(starts, append=len(widths))
    sizes, count, widest = [], 0, 0
    for width, left in zip(widths[starts].tolist(), counts.tolist()):
        while left:
            wider = max(widest, width)
            room = budget // wider - count if count else max(budget // wider, 1)
            if room <= 0:
                sizes.append(count)
                count, widest = 0, 0
                continue
            taken = min(room, left)
            count, widest, left = count + taken, wider, left - taken
    if count:
        sizes.append(count)
    return sizes


Item = TypeVar("Item")


def _divisible(items: list[Item], world_size: int) -> list[Item]:
    """Halve the largest items (batches, or batch sizes) until the count divides by world_size,
    while any has two rows or more."""
    items = list(items)
    while len(items) % world_size:
        sizes = [_size(item) for item in items]
        largest = max(range(len(items)), key=lambda i: sizes[i])
        if sizes[largest] < 2:
            break
        items[largest : largest + 1] = _halves(items[largest])
    return items


def _size(item: Any) -> int:
    return item if isinstance(item, int) else len(item)


def _halves(item: Any) -> list[Any]:
    """A batch (list of rows) or a batch size (int) cut in two, the first half rounded down."""
    half = _size(item) // 2
    if isinstance(item, int):
        return [half, item - half]
    return [item[:half], item[half:]]
