#!/usr/bin/env python
"""Training throughput benchmark: target tokens/s and model FLOPs utilisation (MFU).

MFU = achieved FLOP/s of the training step (forward + backward) / the peak FLOP/s of a large
matmul measured here, on this machine, in the same dtype. Uses the real training step
(nmt.train.Trainer) on real Multi30k batches.

FLOPs are "model FLOPs" of one real step: torch.utils.flop_counter counts every matmul it
sees, plus two things it cannot see on CPU:
- the fused CPU flash-attention kernel of `F.scaled_dot_product_attention` (only the CUDA
  kernels have formulas in torch), given formulas here;
- recurrent layers run as one fused kernel (mkldnn LSTM on CPU, cuDNN on CUDA), counted
  analytically from the number of time positions each RNN processed.

  python scripts/bench_train.py configs/multi30k_de_en.yaml configs/multi30k/lstm_bahdanau.yaml
  # sharing the CPU: each config idle, then while a busy process occupies one core
  python scripts/bench_train.py configs/multi30k_de_en.yaml --cpu-hog
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from cpu_hog import cpu_hog
from torch import nn
from torch.nn.utils.rnn import PackedSequence
from torch.utils.flop_counter import FlopCounterMode
from torch.utils.hooks import RemovableHandle

from nmt.batching import Batch
from nmt.config import load_config
from nmt.cpu import cpu_name, has_native_bf16, usable_cpus
from nmt.model import count_parameters
from nmt.train import Trainer

Shape = tuple[int, ...]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# Gate blocks per cell (rows of W_ih / W_hh in units of hidden_size), keyed by RNNBase.mode.
GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def attention_matmul_flops(query: Shape, key: Shape, value: Shape) -> int:
    """Forward FLOPs of attention's two matmuls, scores = q k^T and output = P v:
    q [B,H,T,Dk], k [B,Hkv,S,Dk], v [B,Hkv,S,Dv] -> 2*B*H*T*S*Dk + 2*B*H*T*S*Dv.
    Causal attention is counted in full (as torch's own formulas do)."""
    batch, heads, tgt_len, key_dim = query
    src_len, value_dim = key[-2], value[-1]
    return 2 * batch * heads * tgt_len * src_len * (key_dim + value_dim)


def sdpa_cpu_flops(query: Shape, key: Shape, value: Shape, *args: Any, **kwargs: Any) -> int:
    """Formula for aten._scaled_dot_product_flash_attention_for_cpu (extra arguments unused)."""
    return attention_matmul_flops(query, key, value)


def sdpa_cpu_backward_flops(
    grad_out: Shape, query: Shape, key: Shape, value: Shape, *args: Any, **kwargs: Any
) -> int:
    """Formula for its _backward: twice the forward, the four matmuls for dP, dV, dQ and dK
    (the usual training convention, backward = 2 x forward). The flash kernel also recomputes
    q k^T, which is not counted: MFU counts model FLOPs, not recomputation."""
    return 2 * attention_matmul_flops(query, key, value)


def flop_formulas() -> dict[Any, Callable[..., int]]:
    """custom_mapping for FlopCounterMode: the CPU flash attention kernels."""
    aten = torch.ops.aten
    return {
        aten._scaled_dot_product_flash_attention_for_cpu: sdpa_cpu_flops,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: sdpa_cpu_backward_flops,
    }


def rnn_flops_per_position(rnn: nn.RNNBase) -> int:
    """Forward FLOPs of one time position through all layers and directions:
    sum of 2 * gates * (layer input size + H) * H (bias adds and gate nonlinearities ignored).
    Layer 0 reads input_size; later layers read H * directions."""
    if rnn.proj_size:
        raise ValueError("LSTM proj_size is not counted")
    directions = 2 if rnn.bidirectional else 1
    total = 0
    for layer in range(rnn.num_layers):
        inputs = rnn.input_size if layer == 0 else rnn.hidden_size * directions
        total += directions * 2 * GATES[rnn.mode] * (inputs + rnn.hidden_size) * rnn.hidden_size
    return total


def time_positions(inputs: Any) -> int:
    """Positions an RNN call processes: a PackedSequence's real tokens, else B*T."""
    if isinstance(inputs, PackedSequence):
        return inputs.data.size(0)
    return inputs.numel() // inputs.size(-1)  # [B,T,I], [T,B,I] or unbatched [T,I]


class RecurrentFlops:
    """Counts recurrent layers analytically, forward + backward = 3 x forward (backward =
    gradients of inputs and of weights, 2 x forward), per call of every nn.RNNBase module.

    Whether torch runs an RNN fused depends on the call (on CPU a packed LSTM input, and GRU
    and tanh RNNs, are run as addmm/mm steps that the counter does see; a padded LSTM input
    goes to one mkldnn kernel it does not see), so a call is added only if the counter's total
    did not move during its forward: nothing is counted twice.
    """

    def __init__(self, model: nn.Module, counter: FlopCounterMode) -> None:
        self.model = model
        self.counter = counter
        self.flops = 0
        self._counted_before = 0
        self._handles: list[RemovableHandle] = []

    def _before(self, module: nn.Module, args: tuple) -> None:
        self._counted_before = self.counter.get_total_flops()

    def _after(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self.counter.get_total_flops() == self._counted_before:
            assert isinstance(module, nn.RNNBase)
            self.flops += 3 * time_positions(args[0]) * rnn_flops_per_position(module)

    def __enter__(self) -> RecurrentFlops:
        for module in self.model.modules():
            if isinstance(module, nn.RNNBase):
                self._handles.append(module.register_forward_pre_hook(self._before))
                self._handles.append(module.register_forward_hook(self._after))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def step_flops(trainer: Trainer, batch: Batch) -> int:
    """FLOPs of one training step (forward + backward) on `batch`; it does update the model."""
    with (
        FlopCounterMode(display=False, custom_mapping=flop_formulas()) as counter,
        RecurrentFlops(trainer.model, counter) as recurrent,
    ):
        trainer._update([batch])
    return counter.get_total_flops() + recurrent.flops


def matmul_peak(
    dtype: torch.dtype, device: torch.device, size: int = 2048, repeats: int = 10
) -> float:
    """FLOP/s of a square matmul on `device`, best of `repeats`."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        torch.matmul(a, b)
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def bench(
    config_path: str, overrides: list[str], steps: int, warmup: int, prepare_dir: Path
) -> dict:
    config = load_config(config_path, overrides)
    config.train.run_dir = str(prepare_dir / config.name / "run")
    trainer = Trainer(config)
    batches = trainer._batches()
    for _ in range(warmup):
        if trainer.thread_budget is not None:
            trainer.thread_budget.apply()
        trainer._update([next(batches)])
    probe = next(batches)
    flops_per_token = step_flops(trainer, probe) / probe.num_tgt_tokens
    tokens, start = 0, time.perf_counter()
    for _ in range(steps):
        if trainer.thread_budget is not None:  # as the training loop does between steps
            trainer.thread_budget.apply()
        tokens += trainer._update([next(batches)]).tokens
    seconds = time.perf_counter() - start
    return {
        "name": config.name,
        "params": count_parameters(trainer.model),
        "precision": trainer.precision,
        "device": trainer.device,
        "threads": torch.get_num_threads(),  # at the end (it follows the load by default)
        "tokens_per_s": tokens / seconds,
        "flops_per_token": flops_per_token,
        "flops_per_s": flops_per_token * tokens / seconds,
    }


def print_row(r: dict, peak: float) -> None:
    print(
        f"{r['name']:28} {r['params']:>10,} {r['precision']:>5} {r['threads']:>7} "
        f"{r['tokens_per_s']:>10,.0f} {r['flops_per_token'] / 1e6:>10.2f} "
        f"{r['flops_per_s'] / 1e9:>8.1f} {peak / 1e9:>6.1f} {r['flops_per_s'] / peak:>6.1%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("configs", nargs="+", help="config files to benchmark")
    parser.add_argument("--set", nargs="*", default=[], help="overrides applied to every config")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: the trainer's, from the usable cores)",
    )
    parser.add_argument(
        "--cpu-hog",
        action="store_true",
        help="run each config twice: idle, then while a busy process occupies one core",
    )
    parser.add_argument("--work-dir", default=None, help="where prepared data is cached")
    args = parser.parse_args()
    overrides = list(args.set) + ([f"train.threads={args.threads}"] if args.threads else [])
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="nmt-bench-"))
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(
        f"{cpu_name()} ({torch.backends.cpu.get_cpu_capability()}, native bf16: "
        f"{'yes' if has_native_bf16() else 'no'}); {usable_cpus()} usable cores; "
        f"load average {load}"
    )
    print(
        f"{'config':28} {'params':>10} {'prec':>5} {'threads':>7} {'tgt tok/s':>10} "
        f"{'MFLOP/tok':>10} {'GFLOP/s':>8} {'peak':>6} {'MFU':>6}"
    )
    peaks: dict[tuple[str, str], float] = {}  # per device and precision (emulated bf16: minutes)
    for path in args.configs:
        r = bench(path, overrides, args.steps, args.warmup, work)
        key = (str(r["device"]), r["precision"])
        if key not in peaks:
            peaks[key] = matmul_peak(DTYPES[r["precision"]], r["device"])
        print_row(r, peaks[key])
        if args.cpu_hog:
            with cpu_hog() as core:
                busy = bench(path, overrides, args.steps, args.warmup, work)
            busy["name"] += f" (core {core} busy)"
            print_row(busy, peaks[key])
            ratio = busy["tokens_per_s"] / r["tokens_per_s"]
            print(f"{'':28} with a busy core: {ratio:.0%} of the idle tokens/s")
    print("peak: GFLOP/s of a 2048x2048 matmul on the run's device, in its precision")


if __name__ == "__main__":
    main()
