"""Tokenize and clean a split chunk by chunk, in worker processes when it is large.

The reader (the calling process) streams chunks of text; each worker process encodes a chunk
with its own copy of the SentencePiece models, applies the cleaning filters to the piece
counts and sends back compact arrays. At most two chunks per worker are in flight, so memory
stays flat however large the corpus is, and chunks come back in corpus order, so the result
does not depend on the number of workers. (SentencePiece's own encoding threads do not help
here: the Python side of each sentence's ids is built under the GIL.)
"""

from __future__ import annotations

import itertools
import multiprocessing
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.pool import AsyncResult
from typing import Any

import numpy as np

from nmt.corpus_reader import PairChunk
from nmt.corpus_store import Encoded
from nmt.tokenizer import Tokenizer

DROP_REASONS = ("empty", "too_long", "ratio")
IN_FLIGHT_PER_WORKER = 2


@dataclass(frozen=True)
class Cleaning:
    """Filters of the training split: at most `max_len` pieces per side (EOS not counted) and
    at most `max_ratio` between the longer and the shorter side."""

    max_len: int
    max_ratio: float


@dataclass
class EncodedChunk:
    src: Encoded  # pieces + EOS per kept row
    tgt: Encoded  # pieces per kept row
    pairs: int  # rows read, kept or not
    dropped: dict[str, int]  # rows dropped per reason (empty when not cleaned)


def encode_chunk(
    chunk: PairChunk, tokenizer: Tokenizer, cleaning: Cleaning | None, dtype: np.dtype
) -> EncodedChunk:
    """Ids of a chunk in the store's integer type, cleaned if `cleaning` is given."""
    src = Encoded(*tokenizer.encode_src_flat(chunk.src))
    tgt = Encoded(*tokenizer.encode_tgt_flat(chunk.tgt))
    src.ids, tgt.ids = src.ids.astype(dtype), tgt.ids.astype(dtype)
    if cleaning is None:
        return EncodedChunk(src, tgt, len(chunk), {})
    keep, dropped = clean(src.lengths - 1, tgt.lengths, cleaning)
    return EncodedChunk(src.select(keep), tgt.select(keep), len(chunk), dropped)


def clean(
    src_pieces: np.ndarray, tgt_pieces: np.ndarray, cleaning: Cleaning
) -> tuple[np.ndarray, dict[str, int]]:
    """The rows to keep (bool mask) and the count dropped per reason; a row counts under the
    first reason that applies (empty, too_long, ratio)."""
    empty = (src_pieces == 0) | (tgt_pieces == 0)
    too_long = ~empty & ((src_pieces > cleaning.max_len) | (tgt_pieces > cleaning.max_len))
    longer = np.maximum(src_pieces, tgt_pieces)
    shorter = np.maximum(np.minimum(src_pieces, tgt_pieces), 1)
    lopsided = ~empty & ~too_long & (longer / shorter > cleaning.max_ratio)
    reasons = (empty, too_long, lopsided)
    dropped = {name: int(mask.sum()) for name, mask in zip(DROP_REASONS, reasons)}
    return ~(empty | too_long | lopsided), dropped


def encode_chunks(
    chunks: Iterable[PairChunk],
    tokenizer: Tokenizer,
    cleaning: Cleaning | None,
    dtype: np.dtype,
    workers: int,
) -> Iterator[EncodedChunk]:
    """`encode_chunk` of every chunk, in order: here for a single chunk or a single worker,
    else in `workers` processes.

    Workers are forked where the platform can (as DataLoader workers are): they start at once
    and re-import nothing, which matters for a caller's script without a `__main__` guard;
    they run only SentencePiece and numpy, never torch or CUDA.
    """
    stream = iter(chunks)
    head = list(itertools.islice(stream, 2))
    if workers <= 1 or len(head) < 2:
        for chunk in itertools.chain(head, stream):
            yield encode_chunk(chunk, tokenizer, cleaning, dtype)
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    setup = (tokenizer.to_state(), cleaning, np.dtype(dtype).name)
    with context.Pool(workers, initializer=_start_worker, initargs=setup) as pool:
        pending: deque[AsyncResult[EncodedChunk]] = deque()
        for chunk in itertools.chain(head, stream):
            pending.append(pool.apply_async(_encode_in_worker, (chunk,)))
            if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


# What a worker process encodes with: set once per process by `_start_worker` (a pool
# initializer has no other place to leave it), read by every task of that process.
_worker_setup: dict[str, Any] = {}


def _start_worker(tokenizer_state: dict[str, Any], cleaning: Cleaning | None, dtype: str) -> None:
    _worker_setup.update(
        tokenizer=Tokenizer.from_state(tokenizer_state), cleaning=cleaning, dtype=np.dtype(dtype)
    )


def _encode_in_worker(chunk: PairChunk) -> EncodedChunk:
    return encode_chunk(
        chunk, _worker_setup["tokenizer"], _worker_setup["cleaning"], _worker_setup["dtype"]
    )
