#!/usr/bin/env python
"""Data path benchmark: `nmt prepare` throughput and peak memory, training start-up and memory,
at several corpus sizes.

The corpus of N pairs is Multi30k's training set (de-en, 29,000 pairs) repeated and cut to N,
written as plain text under --work-dir (a temporary folder by default; never the repository).
Validation and test are Multi30k's. For each size:
- prepare: `nmt prepare` in a subprocess, from nothing (tokenizer trained on a sample of
  --sample pairs) and again with the tokenizer kept (only the cache rebuilt); wall time,
  pairs/s, CPU seconds of the process and its workers (less at the mercy of other load on a
  shared machine than wall time), and the peak memory of the process and its tokenizing
  workers together (the sum
  of their proportional set sizes, so pages they share count once; sampled every 50 ms);
- training: a fresh process builds `nmt.train.Trainer` (a small Transformer: the figures are
  about data) on the built cache and runs --steps optimiser steps; start-up = launch to the
  first batch in hand, and to the end of the first step; RSS = the process's peak (VmHWM) and,
  at the end, its private (anonymous) and file-backed (mapped corpus) memory.

  python scripts/bench_data.py --sizes 30000,1000000 --work-dir runs/bench_data
  python scripts/bench_data.py --sizes 5000000 --stage train   # cache already built
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nmt.cpu import cpu_name, usable_cpus  # noqa: E402
from nmt.files import read_lines  # noqa: E402

PROBE_FLAG = "--train-probe"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="30000,1000000,5000000", help="pairs, comma-separated")
    parser.add_argument("--work-dir", help="where corpora and caches go (default: a temp dir)")
    parser.add_argument("--data-dir", default=os.environ.get("NMT_DATA_DIR", "../shared/data"))
    parser.add_argument("--config", default=str(REPO / "configs" / "multi30k_de_en.yaml"))
    parser.add_argument("--sample", type=int, default=100_000, help="tokenizer sample, pairs")
    parser.add_argument("--steps", type=int, default=20, help="training steps after start-up")
    parser.add_argument(
        "--stage",
        choices=["all", "prepare", "rebuild", "train"],
        default="all",
        help="prepare: from nothing and with the tokenizer kept; rebuild: only the latter",
    )
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}, {usable_cpus()} usable cores; load average {os.getloadavg()}")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_data_"))
    for size in [int(s) for s in args.sizes.split(",")]:
        folder = work / f"pairs_{size}"
        config = write_config(folder, Path(args.data_dir), size, args)
        if args.stage in ("all", "prepare", "rebuild"):
            for fresh in (True, False) if args.stage != "rebuild" else (False,):
                report("prepare", size, prepare(config, folder, fresh), fresh=fresh)
        if args.stage in ("all", "train"):
            report("train", size, train_probe(config, args.steps))
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)


def write_config(folder: Path, data_dir: Path, size: int, args: argparse.Namespace) -> Path:
    """The corpus (made once per size) and a config that trains on it."""
    multi30k = data_dir / "multi30k"
    files = {}
    for lang in ("de", "en"):
        path = folder / f"train.{lang}"
        if not path.is_file():
            replicate(read_lines(multi30k / f"train.{lang}.gz"), size, path)
        files[lang] = str(path)
    config = folder / "bench.yaml"
    lines = [
        f"base: {args.config}",
        "data:",
        "  preset: null",
        "  files:",
        f"    train: [{files['de']}, {files['en']}]",
        f"    valid: [{multi30k / 'val.de.gz'}, {multi30k / 'val.en.gz'}]",
        f"    test: [{multi30k / 'test_2016_flickr.de.gz'}, {multi30k / 'test_2016_flickr.en.gz'}]",
        "tokenizer:",
        f"  input_sentence_size: {args.sample}",
        "model:  # small: the figures are about data, not the model's first step",
        "  embed_dim: 64",
        "  hidden_size: 64",
        "  ffn_size: 128",
        "  heads: 2",
        "  encoder_layers: 1",
        "  decoder_layers: 1",
        "train:",
        f"  run_dir: {folder / 'run'}",
        "  device: cpu",
        f"  max_steps: {args.steps + 1}",
        "  valid_every: 1000000",
    ]
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return config


def replicate(lines: list[str], size: int, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for start in range(0, size, len(lines)):
            f.write("\n".join(lines[: size - start]) + "\n")


def prepare(config: Path, folder: Path, fresh: bool) -> dict[str, Any]:
    """`nmt prepare` from scratch (fresh) or with the tokenizer kept; time and peak memory."""
    run = folder / "run"
    shutil.rmtree(run / "cache", ignore_errors=True)
    if fresh:
        shutil.rmtree(run / "tokenizer", ignore_errors=True)
    command = [sys.executable, "-m", "nmt.cli", "prepare", "--config", str(config)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak_tree, peak_main = 0, 0
    while process.poll() is None:
        sizes = tree_pss(process.pid)
        peak_tree, peak_main = max(peak_tree, sum(sizes.values())), max(peak_main, sizes[0])
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    out, err = process.communicate()
    if process.returncode:
        raise SystemExit(f"prepare failed:\n{err.decode()[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # includes the waited-for workers
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak_rss_tree": peak_tree,
        "peak_rss_main": peak_main,
        "load": os.getloadavg()[0],
    }


def tree_pss(pid: int) -> dict[int, int]:
    """PSS in bytes of `pid` (key 0) and of each of its descendants (by pid)."""
    sizes = {0: pss_of(pid)}
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            sizes[child] = pss_of(child)
            pending.append(child)
    return sizes


def pss_of(pid: int) -> int:
    """Proportional set size: pages shared by forked workers are counted once overall."""
    return status_field(Path(f"/proc/{pid}/smaps_rollup"), "Pss")


def status_field(path: Path, name: str) -> int:
    """A memory line of /proc/<pid>/status or smaps_rollup in bytes (0 if the process is gone)."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def train_probe(config: Path, steps: int) -> dict[str, Any]:
    """Start-up and memory of a fresh training process on the cache already built."""
    launched = time.time()
    out = subprocess.run(
        [sys.executable, __file__, PROBE_FLAG, str(config), str(steps)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise SystemExit(f"training failed:\n{out.stderr[-3000:]}")
    run = json.loads(out.stdout.strip().splitlines()[-1])
    run["first_batch_seconds"] = run.pop("first_batch") - launched
    run["first_step_seconds"] = run.pop("first_step_done") - launched
    return run


def probe(config_path: str, steps: int) -> None:
    """In the training process: build the Trainer, time the first step, run `steps` more."""
    from nmt.config import load_config
    from nmt.train import Trainer

    config = load_config(config_path)
    run_dir = Path(config.train.run_dir or "")
    for name in ("last.pt", "config.yaml"):
        (run_dir / name).unlink(missing_ok=True)
    trainer = Trainer(config)
    batches = trainer._batches()
    first = next(batches)
    first_batch = time.time()
    trainer._update([first])
    first_step_done = time.time()
    for _ in range(steps):
        trainer._update([next(batches)])
    status = Path("/proc/self/status")
    figures = {
        "first_batch": first_batch,
        "first_step_done": first_step_done,
        "cache_hit": trainer.data.stats["cache"]["hit"],
        "rows": len(trainer.train_ids),
        "peak_rss": status_field(status, "VmHWM"),
        "rss_anon": status_field(status, "RssAnon"),
        "rss_file": status_field(status, "RssFile"),
    }
    print(json.dumps(figures))


def report(stage: str, size: int, figures: dict[str, Any], fresh: bool = False) -> None:
    mb = 1 << 20
    if stage == "prepare":
        what = "tokenizer trained" if fresh else "tokenizer reused"
        print(
            f"{size:>9,} pairs  prepare ({what}): {figures['seconds']:7.1f} s, "
            f"{size / figures['seconds']:9,.0f} pairs/s, "
            f"peak memory (PSS) {figures['peak_rss_tree'] / mb:,.0f} MB "
            f"(main process {figures['peak_rss_main'] / mb:,.0f} MB); "
            f"{figures['cpu_seconds']:.1f} CPU-s ({size / figures['cpu_seconds']:,.0f} pairs per "
            f"CPU-s); load average {figures['load']:.1f}",
            flush=True,
        )
    else:
        print(
            f"{size:>9,} pairs  train: first batch after {figures['first_batch_seconds']:5.1f} s, "
            f"first step done after {figures['first_step_seconds']:5.1f} s "
            f"(cache hit: {figures['cache_hit']}), peak RSS {figures['peak_rss'] / mb:,.0f} MB, "
            f"at the end private {figures['rss_anon'] / mb:,.0f} MB + mapped files "
            f"{figures['rss_file'] / mb:,.0f} MB",
            flush=True,
        )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == PROBE_FLAG:
        probe(sys.argv[2], int(sys.argv[3]))
    else:
        main()
