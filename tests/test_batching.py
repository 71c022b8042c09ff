"""Batching: token budget, coverage, determinism, shards, collation."""

from __future__ import annotations

import mmap
import pickle
import random
from collections.abc import Iterable
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from nmt.batching import (
    Batch,
    SplitIds,
    TokenBatchSampler,
    _chunk_sizes,
    _stable_sort,
    batch_stream,
)
from nmt.config import config_from_dict
from nmt.data import prepare_data
from nmt.specials import BOS_ID, EOS_ID, PAD_ID


def _lengths(n: int, seed: int = 0) -> tuple[list[int], list[int]]:
    rng = random.Random(seed)
    src = [rng.randint(1, 40) for _ in range(n)]
    return src, [max(1, s + rng.randint(-5, 5)) for s in src]


def _padded_size(batch: list[int], src: list[int], tgt: list[int]) -> int:
    return len(batch) * max(max(src[i], tgt[i]) for i in batch)


def test_sampler_respects_budget_and_covers_each_row_once() -> None:
    src, tgt = _lengths(500)
    src[7] = tgt[7] = 300  # longer than the whole budget
    sampler = TokenBatchSampler(src, tgt, batch_tokens=200, seed=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = _lists(sampler)
        assert len(batches) == len(sampler)
        assert sorted(i for b in batches for i in b) == list(range(500))
        assert [7] in batches
        assert all(_padded_size(b, src, tgt) <= 200 for b in batches if b != [7])


def _lists(batches: Iterable[np.ndarray]) -> list[list[int]]:
    return [batch.tolist() for batch in batches]


def test_batch_cut_matches_adding_rows_one_by_one() -> None:
    """The cut over runs of equal widths is the plain greedy one, row by row."""
    rng = np.random.default_rng(0)
    for budget in (1, 7, 100, 1000):
        widths = np.sort(rng.integers(1, 60, 2000)) if budget > 1 else np.array([3, 3, 5])
        widths[::7] = rng.integers(1, 60, len(widths[::7]))  # not monotone, as in real order
        sizes, count, widest = [], 0, 0
        for width in widths.tolist():
            if count and max(widest, width) * (count + 1) > budget:
                sizes.append(count)
                count, widest = 0, 0
            count, widest = count + 1, max(widest, width)
        sizes.append(count)
        assert _chunk_sizes(widths, budget) == sizes


def test_epoch_order_is_the_lexicographic_one() -> None:
    """Rows by (source, target) length with random ties: the order runs saved before the
    one-key sort had, so their checkpoints resume onto the same batches."""
    src, tgt = (np.array(x) for x in _lengths(3000, seed=4))
    sampler = TokenBatchSampler(src, tgt, 200, seed=9)
    rows = np.lexsort((np.random.default_rng([9, 3]).permutation(len(src)), tgt, src))
    assert sampler._sorted_rows(np.random.default_rng([9, 3])).tolist() == rows.tolist()
    assert sampler._sorted_rows(None).tolist() == np.lexsort((tgt, src)).tolist()


@pytest.mark.parametrize("key_type", [np.uint8, np.uint16, np.uint32])
def test_chunked_counting_sort_is_a_stable_argsort(key_type: type) -> None:
    rng = np.random.default_rng(3)
    key = rng.integers(0, 40, 1000).astype(key_type)
    rows = rng.permutation(1000).astype(np.int32)
    expected = rows[np.argsort(key[rows], kind="stable")]
    for chunk in (7, 64, 5000):
        assert np.array_equal(_stable_sort(rows, key, chunk=chunk), expected)
    assert len(_stable_sort(rows[:0], key)) == 0


def test_sampler_is_deterministic_by_seed_and_epoch() -> None:
    src, tgt = _lengths(300)

    def batches(seed: int, epoch: int) -> list[list[int]]:
        sampler = TokenBatchSampler(src, tgt, 150, seed=seed)
        sampler.set_epoch(epoch)
        return _lists(sampler)

    assert batches(1, 0) == batches(1, 0)
    assert batches(1, 0) != batches(2, 0)
    assert batches(1, 0) != batches(1, 1)


def test_sampler_without_shuffle_goes_by_length() -> None:
    src, tgt = _lengths(100)
    batches = list(TokenBatchSampler(src, tgt, 120, shuffle=False))
    order = [i for b in batches for i in b]
    assert [(src[i], tgt[i]) for i in order] == sorted(zip(src, tgt))


@pytest.mark.parametrize("n,world_size", [(500, 3), (37, 4), (5, 2), (1, 2)])
def test_sampler_shards_are_disjoint_equal_and_complete(n: int, world_size: int) -> None:
    src, tgt = _lengths(n, seed=n)
    shards = []
    for rank in range(world_size):
        sampler = TokenBatchSampler(src, tgt, 100, seed=5, rank=rank, world_size=world_size)
        sampler.set_epoch(2)
        shards.append(list(sampler))
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == len(sampler)
    rows = [i for shard in shards for batch in shard for i in batch]
    assert set(rows) == set(range(n))
    if n >= world_size:  # enough rows to split: no row repeated
        assert len(rows) == n


def test_sampler_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="rank 2"):
        TokenBatchSampler([1], [1], 10, rank=2, world_size=2)
    with pytest.raises(ValueError, match="2 source lengths but 1"):
        TokenBatchSampler([1, 2], [1], 10)


def _split(src: list[list[int]], tgt: list[list[int]]) -> SplitIds:
    return SplitIds.of(datasets.Dataset.from_dict({"src_ids": src, "tgt_ids": tgt}))


def test_batch_pads_and_shifts() -> None:
    ids = _split([[9, 9], [5, 6, EOS_ID], [5, EOS_ID]], [[9], [7, 8, 9], [7]])
    assert [x.tolist() for x in ids.batch_lengths()] == [[2, 3, 2], [2, 4, 2]]
    batch = ids.batch([1, 2])
    assert isinstance(batch, Batch) and batch.indices == [1, 2]
    assert batch.src.tolist() == [[5, 6, EOS_ID], [5, EOS_ID, PAD_ID]]
    assert batch.src_mask.tolist() == [[True, True, True], [True, True, False]]
    assert batch.tgt_in.tolist() == [[BOS_ID, 7, 8, 9], [BOS_ID, 7, PAD_ID, PAD_ID]]
    assert batch.tgt_out.tolist() == [[7, 8, 9, EOS_ID], [7, EOS_ID, PAD_ID, PAD_ID]]
    assert batch.tgt_mask.tolist() == [[True] * 4, [True, True, False, False]]
    assert (batch.num_src_tokens, batch.num_tgt_tokens) == (5, 6)
    assert batch.src.dtype == torch.long and batch.src_mask.dtype == torch.bool
    moved = batch.to("cpu")
    assert torch.equal(moved.tgt_out, batch.tgt_out) and moved.indices == batch.indices


def test_sampler_and_batches_on_prepared_data(
    tiny_corpus_files: dict[str, list[str]], tmp_path: Path
) -> None:
    config = config_from_dict(
        {"data": {"preset": None, "files": tiny_corpus_files}, "tokenizer": {"vocab_size": 300}}
    )
    prepared = prepare_data(config, tmp_path)
    ids = prepared.train
    train_de = Path(tiny_corpus_files["train"][0]).read_text(encoding="utf-8").splitlines()
    expected = prepared.tokenizer.encode_src(train_de)  # the tiny corpus needs no cleaning
    src_lengths, tgt_lengths = ids.batch_lengths()
    assert len(ids) == len(expected) and src_lengths[0] == len(expected[0])
    for indices in TokenBatchSampler(src_lengths, tgt_lengths, 400, seed=1):
        batch = ids.batch(indices)
        assert batch.src.numel() <= 400 and batch.tgt_out.numel() <= 400
        first = int(indices[0])
        assert batch.src[0, : src_lengths[first]].tolist() == expected[first]


def test_training_ids_are_mapped_not_copied(
    tiny_corpus_files: dict[str, list[str]], tmp_path: Path
) -> None:
    """The store is mapped from disk; a pickled (DataLoader worker) copy is just its folder;
    batches read their rows from the file, not through the mapping."""
    config = config_from_dict(
        {"data": {"preset": None, "files": tiny_corpus_files}, "tokenizer": {"vocab_size": 300}}
    )
    ids = prepare_data(config, tmp_path).train
    for array in (ids.src.ids, ids.tgt.offsets, ids.tgt.lengths):
        assert isinstance(array.base.obj, mmap.mmap) and not array.flags.writeable
    assert ids.src.ids.dtype == np.uint16 and ids.tgt.lengths.dtype == np.uint8
    assert len(pickle.dumps(ids)) < 1000 < ids.src.ids.nbytes
    order = [np.arange(0, 5), np.arange(100, 103), np.array([399, 7])]
    here = list(batch_stream(ids, order))
    workers = list(batch_stream(ids, order, workers=2))
    for a, b in zip(here, workers, strict=True):
        assert a.indices == b.indices and torch.equal(a.src, b.src)
        assert torch.equal(a.tgt_in, b.tgt_in)
    if Path("/proc/self/smaps").exists():  # batches read rows without mapping their pages
        assert _resident_kb("src.tokens") == _resident_kb("tgt.offsets.npy") == 0
    every_row = np.arange(len(ids))
    assert ids.tgt.stored is not None
    assert np.array_equal(ids.tgt.stored.offsets(every_row), ids.tgt.offsets[:-1])


def _resident_kb(file_name: str) -> int:
    """Resident kB of this process's mappings of files named `file_name` (Linux smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
            inside = fields[-1].endswith("/" + file_name)
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total


def _ids(n: int, seed: int = 0) -> tuple[list[list[int]], list[list[int]], SplitIds]:
    rng = np.random.default_rng(seed)
    src = [rng.integers(4, 50, rng.integers(1, 12)).tolist() + [2] for _ in range(n)]
    tgt = [rng.integers(4, 50, rng.integers(0, 12)).tolist() for _ in range(n)]
    return src, tgt, _split(src, tgt)


def _padded(seqs: list[list[int]]) -> list[list[int]]:
    """The reference: each row padded with PAD_ID to the longest."""
    width = max(map(len, seqs))
    return [seq + [PAD_ID] * (width - len(seq)) for seq in seqs]


def test_batches_of_any_rows_pad_as_the_reference() -> None:
    src, tgt, ids = _ids(40)
    for rows in ([0, 1, 2], [39, 5, 17, 3], [7]):
        batch = ids.batch(rows)
        assert batch.src.tolist() == _padded([src[i] for i in rows])
        assert batch.tgt_in.tolist() == _padded([[BOS_ID, *tgt[i]] for i in rows])
        assert batch.tgt_out.tolist() == _padded([[*tgt[i], EOS_ID] for i in rows])
        assert batch.src_mask.sum().item() == batch.num_src_tokens == sum(len(src[i]) for i in rows)
        assert batch.tgt_mask.sum().item() == batch.num_tgt_tokens


def test_dataloader_workers_build_the_same_batches() -> None:
    """The CUDA path builds batches in worker processes; they must be the batches built here."""
    _, _, ids = _ids(60)
    order = [[0, 1, 2], [10, 11], [20, 21, 22, 23], [59]]
    here = list(batch_stream(ids, order))
    workers = list(batch_stream(ids, order, workers=2))
    assert [b.indices for b in workers] == [b.indices for b in here] == order
    for a, b in zip(here, workers):
        assert torch.equal(a.src, b.src) and torch.equal(a.tgt_out, b.tgt_out)


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_epoch_rows_come_in_one_order_whatever_the_world_size(world_size: int) -> None:
    rng = np.random.default_rng(1)
    src, tgt = rng.integers(1, 30, 301).tolist(), rng.integers(1, 30, 301).tolist()
    alone = TokenBatchSampler(src, tgt, 90, seed=4)
    many = TokenBatchSampler(src, tgt, 90, seed=4, world_size=world_size)
    for epoch in (0, 1):
        alone.set_epoch(epoch)
        many.set_epoch(epoch)
        assert _rows(many.epoch_batches()) == _rows(alone.epoch_batches())


@pytest.mark.parametrize(("saved", "resumed"), [(1, 2), (2, 1), (2, 3), (4, 2)])
def test_data_position_maps_to_another_world_size(saved: int, resumed: int) -> None:
    """A resumed run with another number of processes continues at the same row of the epoch,
    repeating at most one global batch and skipping none."""
    rng = np.random.default_rng(2)
    src, tgt = rng.integers(1, 30, 400).tolist(), rng.integers(1, 30, 400).tolist()
    before = TokenBatchSampler(src, tgt, 100, seed=7, world_size=saved)
    after = TokenBatchSampler(src, tgt, 100, seed=7, world_size=resumed)
    for position in (0, 1, 5, 11):
        rows = before.rows_before(position)
        mapped = after.position_after(rows)
        resumed_rows = after.rows_before(mapped)
        assert resumed_rows <= rows
        widest = max(len(b) for b in after.epoch_batches())
        assert rows - resumed_rows < widest * resumed


def _rows(batches: list[list[int]]) -> list[int]:
    return [row for batch in batches for row in batch]
