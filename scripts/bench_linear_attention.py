#!/usr/bin/env python
"""Decoding time per token as the output grows: softmax self-attention with its KV cache
against linear self-attention with its fixed-size recurrent state.

Both models are the reference Transformer (configs/multi30k_de_en.yaml: d=128, 4+4 layers,
sinusoidal positions, an 8,000-entry vocabulary), randomly initialised with the same seed;
they differ only in `model.self_attention`. The input is synthetic: one sentence of
`--source-len` random tokens, expanded to `--beam` rows as beam search does, then
`decode_step` is fed random tokens for L = 16, 64, 256, 1,024 steps (search bookkeeping left
out, so only the model's step is timed). Printed per L: the mean time per token over all L
steps, and the time per token of the last 16 steps (the cost at prefix length ~L). The two
models run side by side in one process, alternating, `--repeats` times; the medians are shown.

  python scripts/bench_linear_attention.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Literal

import torch

from nmt.allocator import keep_freed_memory
from nmt.config import load_config
from nmt.cpu import cpu_name
from nmt.model import Seq2Seq, build_model

REPO = Path(__file__).resolve().parents[1]
VOCAB = 8000
TAIL = 16  # steps at the end of a run that give the per-token cost at that prefix length


def build(self_attention: Literal["softmax", "linear"], max_positions: int) -> Seq2Seq:
    config = load_config(REPO / "configs" / "multi30k_de_en.yaml").model
    config = replace(
        config, self_attention=self_attention, positions="sinusoidal", max_positions=max_positions
    )
    torch.manual_seed(0)
    return build_model(config, VOCAB, VOCAB, joint_vocab=True).eval()


@torch.no_grad()
def time_decoding(model: Seq2Seq, src: torch.Tensor, beam: int, steps: int) -> tuple[float, float]:
    """Seconds per token: mean over `steps` steps, and over the last TAIL steps."""
    gen = torch.Generator().manual_seed(steps)
    tokens = torch.randint(4, VOCAB, (steps, beam), generator=gen)
    state = model.encode(src, torch.ones_like(src, dtype=torch.bool))
    state = model.reorder(state, torch.zeros(1, beam, dtype=torch.long))  # one sentence, W rows
    times = []
    for t in range(steps):
        start = time.perf_counter()
        _, _, state = model.decode_step(state, tokens[t], with_attention=False)
        times.append(time.perf_counter() - start)
    return sum(times) / steps, sum(times[-TAIL:]) / min(TAIL, steps)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--source-len", type=int, default=256)
    parser.add_argument("--beam", type=int, default=5, help="rows decoded together")
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory("cpu")  # as nmt translate / serve do
    max_positions = max(args.source_len, max(args.lengths)) + 1
    models = {"softmax": build("softmax", max_positions), "linear": build("linear", max_positions)}
    src = torch.randint(4, VOCAB, (1, args.source_len), generator=torch.Generator().manual_seed(1))
    print(
        f"CPU: {cpu_name()}; torch {torch.__version__}, {args.threads} thread(s), fp32; "
        f"reference Transformer (random weights), source {args.source_len} tokens, "
        f"{args.beam} rows; median of {args.repeats}"
    )
    time_decoding(models["softmax"], src, args.beam, 8)  # warm-up
    time_decoding(models["linear"], src, args.beam, 8)
    print("output tokens | softmax+KV cache: mean / last 16 (ms/token) | linear: mean / last 16")
    for steps in args.lengths:
        runs: dict[str, list[tuple[float, float]]] = {kind: [] for kind in models}
        for _ in range(args.repeats):
            for kind, model in models.items():  # alternate, so both see the same machine
                runs[kind].append(time_decoding(model, src, args.beam, steps))
        cells = []
        for kind in models:
            mean = statistics.median(r[0] for r in runs[kind]) * 1e3
            tail = statistics.median(r[1] for r in runs[kind]) * 1e3
            cells.append(f"{mean:.2f} / {tail:.2f}")
        print(f"{steps:>13} | {cells[0]:>42} | {cells[1]}")


if __name__ == "__main__":
    main()
