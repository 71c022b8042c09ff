"""Token-budget batching: length-bucketed, seeded, shardable batches and padded collation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import datasets
import numpy as np
import pyarrow.compute
import torch

from nmt.specials import BOS_ID, EOS_ID, PAD_ID


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
        moved = {name: getattr(self, name).to(device, non_blocking=non_blocking)
                 for name in ("src", "src_mask", "tgt_in", "tgt_out", "tgt_mask")}
        return dataclasses.replace(self, **moved)

    def pin_memory(self) -> Batch:
        """Page-locked copies, so a later .to(cuda, non_blocking=True) overlaps with compute."""
        pinned = {name: getattr(self, name).pin_memory()
                  for name in ("src", "src_mask", "tgt_in", "tgt_out", "tgt_mask")}
        return dataclasses.replace(self, **pinned)


def collate(rows: list[dict[str, Any]], indices: list[int]) -> Batch:
    """Pad rows holding "src_ids" (pieces + EOS) and "tgt_ids" (pieces) into a Batch."""
    src, src_mask = _pad([list(r["src_ids"]) for r in rows])
    tgt_in, tgt_mask = _pad([[BOS_ID] + list(r["tgt_ids"]) for r in rows])
    tgt_out, _ = _pad([list(r["tgt_ids"]) + [EOS_ID] for r in rows])
    return Batch(src=src, src_mask=src_mask, tgt_in=tgt_in, tgt_out=tgt_out, tgt_mask=tgt_mask,
                 indices=list(indices), num_src_tokens=int(src_mask.sum()),
                 num_tgt_tokens=int(tgt_mask.sum()))


def _pad(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L] long tensor padded with PAD_ID and its bool mask (True = token)."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = torch.full((len(seqs), int(lengths.max()) if seqs else 0), PAD_ID, dtype=torch.long)
    for row, seq in enumerate(seqs):
        out[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    mask = torch.arange(out.size(1))[None, :] < lengths[:, None]
    return out, mask


def batch_lengths(split: datasets.Dataset) -> tuple[list[int], list[int]]:
    """Padded lengths per row as collate makes them: S = len(src_ids), T = len(tgt_ids) + 1."""
    table = split.with_format("arrow")[:]
    src = pyarrow.compute.list_value_length(table["src_ids"]).to_pylist()
    tgt = pyarrow.compute.list_value_length(table["tgt_ids"]).to_pylist()
    return src, [t + 1 for t in tgt]


class TokenBatchSampler:
    """Length-bucketed batches of row indices whose padded size fits a token budget.

    Rows are sorted by (source length, target length) with a random tie-break and cut into
    batches whose padded size `rows * max(longest source, longest target)` stays within
    `batch_tokens` (a single longer pair gets a batch of its own); the batch order is then
    shuffled. Both random draws use (seed, epoch), so every rank, given the same seed, builds
    the same list. Each epoch yields every row exactly once overall.

    Sharding: rank r takes batches r, r + w, r + 2w, ... To give every rank the same number of
    batches, the largest batches are halved until the count divides by world_size, which keeps
    shards disjoint and complete. Only if no batch has two rows left to split (tiny corpora)
    are the first batches of the epoch repeated at the end.
    """

    def __init__(self, src_lengths: Sequence[int], tgt_lengths: Sequence[int], batch_tokens: int,
                 shuffle: bool = True, seed: int = 1, rank: int = 0, world_size: int = 1) -> None:
        if len(src_lengths) != len(tgt_lengths):
            raise ValueError(f"{len(src_lengths)} source lengths but {len(tgt_lengths)} target lengths")
        if batch_tokens <= 0:
            raise ValueError(f"batch_tokens must be positive, got {batch_tokens}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.src_lengths = np.asarray(src_lengths, dtype=np.int64)
        self.tgt_lengths = np.asarray(tgt_lengths, dtype=np.int64)
        self.batch_tokens, self.shuffle, self.seed = batch_tokens, shuffle, seed
        self.rank, self.world_size, self.epoch = rank, world_size, 0
        # Rows with equal (src, tgt) lengths are interchangeable for cutting, so the batch sizes
        # along the sorted order are the same in every epoch: compute them once.
        widths = np.maximum(self.src_lengths, self.tgt_lengths)[self._sorted_rows(None)]
        self._sizes = _divisible(_chunk_sizes(widths.tolist(), batch_tokens), world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self._sizes) // self.world_size)

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.epoch_batches()[self.rank :: self.world_size]

    def epoch_batches(self) -> list[list[int]]:
        """All ranks' batches of the current epoch, in order (rank r takes r, r+w, ...)."""
        rng = np.random.default_rng([self.seed, self.epoch]) if self.shuffle else None
        rows = self._sorted_rows(rng).tolist()
        batches, start = [], 0
        for size in self._sizes:
            batches.append(rows[start : start + size])
            start += size
        if rng is not None:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        missing = -len(batches) % self.world_size
        return batches + batches[:missing]

    def _sorted_rows(self, rng: np.random.Generator | None) -> np.ndarray:
        n = len(self.src_lengths)
        tie = rng.permutation(n) if rng is not None else np.arange(n)
        return np.lexsort((tie, self.tgt_lengths, self.src_lengths))


def _chunk_sizes(widths: list[int], budget: int) -> list[int]:
    """Greedy cut of a width sequence into runs with len(run) * max(run) <= budget (>= 1 each)."""
    sizes, count, widest = [], 0, 0
    for width in widths:
        if count and max(widest, width) * (count + 1) > budget:
            sizes.append(count)
            count, widest = 0, 0
        count += 1
        widest = max(widest, width)
    if count:
        sizes.append(count)
    return sizes


def _divisible(sizes: list[int], world_size: int) -> list[int]:
    """Halve the largest batches until the count divides by world_size (while any has >= 2 rows)."""
    sizes = list(sizes)
    while len(sizes) % world_size:
        largest = max(range(len(sizes)), key=lambda i: sizes[i])
        if sizes[largest] < 2:
            break
        half = sizes[largest] // 2
        sizes[largest : largest + 1] = [half, sizes[largest] - half]
    return sizes
