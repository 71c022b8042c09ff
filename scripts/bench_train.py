#!/usr/bin/env python
"""Training throughput benchmark: target tokens/s and model FLOPs utilisation (MFU).

MFU = achieved FLOP/s of the training step (forward + backward, FLOPs counted by
torch.utils.flop_counter on a real batch) / the peak FLOP/s of a large matmul measured here,
on this machine, in the same dtype. Uses the real training step (nmt.train.Trainer) on real
Multi30k batches.

  python scripts/bench_train.py configs/multi30k_de_en.yaml configs/multi30k/lstm_bahdanau.yaml
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from nmt.config import load_config
from nmt.model import count_parameters
from nmt.train import Trainer


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a square matmul, best of `repeats`."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def bench(config_path: str, overrides: list[str], steps: int, warmup: int, prepare_dir: Path) -> dict:
    config = load_config(config_path, overrides)
    config.train.run_dir = str(prepare_dir / config.name / "run")
    trainer = Trainer(config)
    batches = trainer._batches()
    for _ in range(warmup):
        trainer._update([next(batches)])
    probe = next(batches)
    with FlopCounterMode(display=False) as counter:
        trainer._update([probe])
    flops_per_token = counter.get_total_flops() / probe.num_tgt_tokens
    tokens, start = 0, time.perf_counter()
    for _ in range(steps):
        _, n, _ = trainer._update([next(batches)])
        tokens += n
    seconds = time.perf_counter() - start
    return {
        "name": config.name,
        "params": count_parameters(trainer.model),
        "precision": trainer.precision,
        "tokens_per_s": tokens / seconds,
        "flops_per_s": flops_per_token * tokens / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", help="config files to benchmark")
    parser.add_argument("--set", nargs="*", default=[], help="overrides applied to every config")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--work-dir", default=None, help="where prepared data is cached")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="nmt-bench-"))
    peaks = {"bf16": matmul_peak(torch.bfloat16), "fp32": matmul_peak(torch.float32)}
    print(f"threads {torch.get_num_threads()}; matmul peak: bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s, "
          f"fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s")
    print(f"{'config':28} {'params':>10} {'prec':>5} {'tgt tok/s':>10} {'GFLOP/s':>8} {'MFU':>6}")
    for path in args.configs:
        r = bench(path, list(args.set), args.steps, args.warmup, work)
        peak = peaks.get(r["precision"], peaks["fp32"])
        print(f"{r['name']:28} {r['params']:>10,} {r['precision']:>5} {r['tokens_per_s']:>10,.0f} "
              f"{r['flops_per_s'] / 1e9:>8.1f} {r['flops_per_s'] / peak:>6.1%}")


if __name__ == "__main__":
    main()
