"""The training loop: data-parallel, mixed precision, validated by sacreBLEU, exactly resumable.

Run-folder layout (rank 0 writes, other ranks only compute):
  config.yaml, env.json        what was run, on what
  metrics.jsonl, tensorboard/  training and validation curves
  last.pt                      full training state, rewritten atomically at every validation
  ckpt-<step>.pt               weights snapshots: the last `keep_last` and the best `keep_best`
  best.pt                      the snapshot with the best validation BLEU
  checkpoints.json             index of the snapshots and their BLEU
  summary.json                 how the run ended
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from tqdm import tqdm

from nmt.allocator import keep_freed_memory
from nmt.batching import Batch, TokenBatchSampler, collate
from nmt.checkpoint import (
    average_checkpoints,
    copy_atomic,
    load_checkpoint,
    save_checkpoint,
)
from nmt.config import Config, ConfigError, save_config
from nmt.cpu import has_native_bf16
from nmt.data import PreparedData, prepare_data
from nmt.distributed import (
    any_across,
    barrier,
    close_distributed,
    init_distributed,
    sum_across,
)
from nmt.model import build_model, count_parameters
from nmt.optim import LearningRate, build_optimizer, label_smoothed_nll
from nmt.rng import gather_rng_states, seed_everything, set_rng_state
from nmt.runlog import MetricsLog, environment_info

log = logging.getLogger("nmt.train")


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. the loss keeps diverging); the message says why."""


def default_run_dir(config: Config) -> Path:
    """runs/<name>_<src>-<tgt> unless train.run_dir says otherwise."""
    data = config.data
    return Path(config.train.run_dir or Path("runs") / f"{config.name}_{data.src_lang}-{data.tgt_lang}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but CUDA is not available")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto: bf16 on CPUs with native bf16 instructions (about 3x faster matmuls than fp32),
    fp32 on other CPUs (where bf16 is emulated and many times slower); on GPUs bf16 where
    supported, else fp16 with loss scaling."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if has_native_bf16() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    if precision == "bf16" and device.type == "cpu" and not has_native_bf16():
        log.warning("train.precision bf16: this CPU has no native bf16 instructions, so bf16 "
                    "matmuls are emulated and much slower than fp32 (precision auto picks fp32)")
    return precision


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint so a resumed run continues exactly."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of this epoch already consumed (per rank)
    nonfinite_in_row: int = 0
    bad_validations: int = 0
    best_bleu: float = -1.0
    snapshots: list[dict[str, Any]] = field(default_factory=list)  # {"path", "step", "bleu"}


class Trainer:
    """Owns one run: model, optimiser, data order, checkpoints, logs."""

    def __init__(self, config: Config, resume: bool = False):
        self.config = config
        self.device = resolve_device(config.train.device)
        self.dist = init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.precision = resolve_precision(config.train.precision, self.device)
        if not self.dist.is_main:  # one voice in the logs: rank 0's
            logging.getLogger("nmt").setLevel(logging.WARNING)
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        keep_freed_memory(self.device.type)
        self.run_dir = default_run_dir(config)
        self._check_run_dir(resume)
        seed_everything(config.train.seed + self.dist.rank)

        self.data = self._prepare()
        self.train_src, self.train_tgt = _id_columns(self.data, "train")
        tok = self.data.tokenizer
        self.model = build_model(config.model, tok.src_vocab_size, tok.tgt_vocab_size, joint_vocab=tok.joint)
        self.model.to(self.device)
        self.wrapped = self._wrap(self.model)
        self.optimizer = build_optimizer(self.model, config.train)
        self.lr = LearningRate(self.optimizer, config.train, config.model.embed_dim)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.progress = Progress()
        self.sampler = TokenBatchSampler(
            [len(x) for x in self.train_src], [len(y) + 1 for y in self.train_tgt],
            config.train.batch_tokens, shuffle=True, seed=config.train.seed,
            rank=self.dist.rank, world_size=self.dist.world_size,
        )
        if resume:
            self._restore(self.run_dir / "last.pt")
        self.metrics = MetricsLog(self.run_dir) if self.dist.is_main else None
        self.stop_reason: str | None = None
        self.last_validated_step = -1
        self._signal = False

    # ------------------------------------------------------------------ set-up

    def _check_run_dir(self, resume: bool) -> None:
        last = self.run_dir / "last.pt"
        if resume and not last.is_file():
            raise ConfigError(f"--resume: no checkpoint to resume from at {last}")
        if not resume and last.is_file():
            raise ConfigError(
                f"{self.run_dir} already holds a run (last.pt); pass --resume to continue it "
                "or choose another train.run_dir"
            )
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.config, self.run_dir / "config.yaml")
            env = environment_info(self.device, self.precision, self.dist.world_size)
            (self.run_dir / "env.json").write_text(json.dumps(env, indent=2) + "\n")

    def _prepare(self) -> PreparedData:
        # Rank 0 trains the tokenizer and fills the cache; the others then read it.
        if self.dist.is_main:
            data = prepare_data(self.config, self.run_dir)
        barrier(self.dist)
        if not self.dist.is_main:
            data = prepare_data(self.config, self.run_dir)
        return data

    def _wrap(self, model: nn.Module) -> nn.Module:
        if not self.dist.enabled:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    # ------------------------------------------------------------------ data

    def _batches(self) -> Iterator[Batch]:
        """This rank's batches from the saved data position onwards, epoch after epoch."""
        pin = self.device.type == "cuda"
        while self.progress.epoch < self.config.train.max_epochs:
            self.sampler.set_epoch(self.progress.epoch)
            for i, indices in enumerate(self.sampler):
                if i < self.progress.batch_in_epoch:
                    continue
                rows = [{"src_ids": self.train_src[j], "tgt_ids": self.train_tgt[j]} for j in indices]
                batch = collate(rows, indices)
                if pin:
                    batch = batch.pin_memory()
                self.progress.batch_in_epoch = i + 1
                yield batch.to(self.device, non_blocking=pin)
            self.progress.epoch += 1
            self.progress.batch_in_epoch = 0

    # ------------------------------------------------------------------ one update

    def _update(self, batches: list[Batch]) -> tuple[float, int, bool]:
        """Forward/backward over this rank's micro-batches and one optimiser step.

        The loss is normalised by the target tokens of the whole global batch (all ranks, all
        micro-batches), so the gradient is the same however the batch is split.
        Returns (summed NLL of this rank, its target tokens, whether the step was applied).
        """
        local_tokens = sum(b.num_tgt_tokens for b in batches)
        global_tokens = sum_across(self.dist, float(local_tokens), self.device)
        scale = self.dist.world_size / max(global_tokens, 1.0)
        nll_total = 0.0
        self.model.train()
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            sync = contextlib.nullcontext() if last or not self.dist.enabled else self.wrapped.no_sync()
            with sync:
                with self._autocast():
                    logits, _ = self.wrapped(batch.src, batch.src_mask, batch.tgt_in)
                loss, nll = label_smoothed_nll(logits, batch.tgt_out, self.config.train.label_smoothing, scale)
                self.scaler.scale(loss).backward()
            nll_total += float(nll)
        applied = self._optimizer_step(nll_total)
        return nll_total, local_tokens, applied

    def _optimizer_step(self, nll_total: float) -> bool:
        self.scaler.unscale_(self.optimizer)
        max_norm = self.config.train.clip_norm or math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        finite = math.isfinite(float(grad_norm)) and math.isfinite(nll_total)
        finite = not any_across(self.dist, not finite, self.device)
        if finite or self.scaler.is_enabled():
            # GradScaler skips steps with inf gradients itself and lowers its scale.
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if finite:
            self.progress.nonfinite_in_row = 0
            return True
        self.progress.nonfinite_in_row += 1
        log.warning("non-finite loss or gradient at step %d: update skipped", self.progress.step + 1)
        if self.progress.nonfinite_in_row >= self.config.train.max_nonfinite:
            raise TrainingError(
                f"the loss was not finite for {self.progress.nonfinite_in_row} updates in a row; "
                "lower train.lr, add train.clip_norm, or check the data"
            )
        return False

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict[str, Any]:
        cfg = self.config.train
        started = time.monotonic()
        handlers = self._install_signal_handlers()
        bar = tqdm(total=cfg.max_steps, initial=self.progress.step, disable=not self.dist.is_main,
                   unit="step", dynamic_ncols=True, desc=self.config.name)
        window_tokens, window_nll, window_start = 0, 0.0, time.monotonic()
        batches = self._batches()
        log.info("model: %s, %s parameters; device %s, precision %s, %d process(es)",
                 self.config.model.arch, f"{count_parameters(self.model):,}", self.device,
                 self.precision, self.dist.world_size)
        try:
            while not self._should_stop(started):
                micro = [b for _, b in zip(range(cfg.accum_steps), batches)]
                if not micro:
                    self.stop_reason = "max_epochs"
                    break
                lr = self.lr.step(self.progress.step + 1)
                nll, tokens, applied = self._update(micro)
                if applied:
                    self.progress.step += 1
                    bar.update(1)
                window_tokens += tokens
                window_nll += nll
                if applied and self.progress.step % cfg.log_every == 0:
                    elapsed = time.monotonic() - window_start
                    self._log_train(bar, lr, window_nll, window_tokens, elapsed)
                    window_tokens, window_nll, window_start = 0, 0.0, time.monotonic()
                if applied and self.progress.step % cfg.valid_every == 0:
                    self._validate_and_save()
                    window_start = time.monotonic()  # validation time is not training speed
                    if self.stop_reason:
                        break
            if self.stop_reason == "signal":
                self._save_last({}, gather_rng_states(self.dist))  # quick: we were asked to go
            elif self.last_validated_step != self.progress.step:
                self._validate_and_save()
        finally:
            bar.close()
            self._restore_signal_handlers(handlers)
        return self._finish(time.monotonic() - started)

    def _should_stop(self, started: float) -> bool:
        cfg = self.config.train
        reason = None
        if self._signal:
            reason = "signal"
        elif self.progress.step >= cfg.max_steps:
            reason = "max_steps"
        elif cfg.max_minutes and time.monotonic() - started > cfg.max_minutes * 60:
            reason = "max_minutes"
        if any_across(self.dist, reason is not None, self.device):
            self.stop_reason = reason or "another rank stopped"
            return True
        return False

    def _log_train(self, bar: tqdm, lr: float, nll: float, tokens: int, elapsed: float) -> None:
        tokens = int(sum_across(self.dist, float(tokens), self.device))
        nll = sum_across(self.dist, nll, self.device)
        loss = nll / max(tokens, 1)
        values = {"loss": round(loss, 5), "ppl": round(math.exp(min(loss, 50)), 3), "lr": lr,
                  "tokens_per_s": round(tokens / max(elapsed, 1e-9), 1), "epoch": self.progress.epoch}
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{values['tokens_per_s']:.0f}")
        if self.metrics:
            self.metrics.write("train", self.progress.step, values)

    # ------------------------------------------------------------------ validation

    def _validate_and_save(self) -> None:
        """Rank 0 validates and writes; every rank applies the same BLEU to the plateau schedule
        and the patience count, so learning rates and stopping never drift apart."""
        from nmt.validate import validate

        self.last_validated_step = self.progress.step
        rng_states = gather_rng_states(self.dist)
        metrics: dict[str, Any] = {}
        if self.dist.is_main:
            metrics = validate(self.model, self.data, self.config, self.device)
        bleu = sum_across(self.dist, metrics.get("bleu", 0.0), self.device)  # rank 0's BLEU
        improved = bleu > self.progress.best_bleu
        self.progress.bad_validations = 0 if improved else self.progress.bad_validations + 1
        self.progress.best_bleu = max(self.progress.best_bleu, bleu)
        self.lr.observe_validation(bleu)
        if self.dist.is_main:
            self._record_validation(metrics, improved, rng_states)
        barrier(self.dist)
        if self._patience_exhausted() and not self.stop_reason:
            self.stop_reason = "patience"

    def _patience_exhausted(self) -> bool:
        patience = self.config.train.patience
        return patience > 0 and self.progress.bad_validations >= patience

    def _record_validation(self, metrics: dict[str, Any], improved: bool, rng_states: list[Any]) -> None:
        bleu = metrics["bleu"]
        snapshot = self.run_dir / f"ckpt-{self.progress.step}.pt"
        save_checkpoint(self._payload(metrics), snapshot)
        self.progress.snapshots.append({"path": snapshot.name, "step": self.progress.step, "bleu": bleu})
        if improved:
            copy_atomic(snapshot, self.run_dir / "best.pt")
        self._prune_snapshots()
        self._save_last(metrics, rng_states)
        (self.run_dir / "checkpoints.json").write_text(json.dumps(self.progress.snapshots, indent=2) + "\n")
        if self.metrics:
            self.metrics.write("valid", self.progress.step, {**metrics, "best_bleu": self.progress.best_bleu})
        log.info("step %d: valid loss %.4f, ppl %.2f, BLEU %.2f (best %.2f)", self.progress.step,
                 metrics["loss"], metrics["ppl"], bleu, self.progress.best_bleu)

    def _prune_snapshots(self) -> None:
        """Keep the last `keep_last` snapshots and the `keep_best` best by BLEU."""
        cfg = self.config.train
        snaps = self.progress.snapshots
        keep = {s["path"] for s in snaps[-cfg.keep_last:]}
        keep |= {s["path"] for s in sorted(snaps, key=lambda s: -s["bleu"])[: cfg.keep_best]}
        for s in snaps:
            if s["path"] not in keep:
                (self.run_dir / s["path"]).unlink(missing_ok=True)
        self.progress.snapshots = [s for s in snaps if s["path"] in keep]

    # ------------------------------------------------------------------ checkpoints

    def _save_last(self, metrics: dict[str, Any], rng_states: list[Any]) -> None:
        if self.dist.is_main:
            save_checkpoint(self._payload(metrics, rng_states), self.run_dir / "last.pt")

    def _payload(self, metrics: dict[str, Any], rng_states: list[Any] | None = None) -> dict[str, Any]:
        """A checkpoint; with `rng_states` (one per rank) also the full training state."""
        tok = self.data.tokenizer
        payload: dict[str, Any] = {
            "model": self.model.state_dict(),
            "config": self.config.to_dict(),
            "tokenizer": tok.to_state(),
            "vocab": {"src": tok.src_vocab_size, "tgt": tok.tgt_vocab_size, "joint": tok.joint},
            "step": self.progress.step,
            "epoch": self.progress.epoch,
            "batch_in_epoch": self.progress.batch_in_epoch,
            "metrics": {f"valid_{k}": v for k, v in metrics.items() if isinstance(v, (int, float, str))},
            "meta": {"parameters": count_parameters(self.model), "run_dir": str(self.run_dir),
                     "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "precision": self.precision},
        }
        if rng_states is not None:
            payload["training"] = {
                "optimizer": self.optimizer.state_dict(),
                "lr": self.lr.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng_states,
                "progress": self.progress.__dict__.copy(),
            }
        return payload

    def _restore(self, path: Path) -> None:
        payload = load_checkpoint(path, map_location=self.device)
        self.model.load_state_dict(payload["model"])
        training = payload["training"]
        self.optimizer.load_state_dict(training["optimizer"])
        self.lr.load_state_dict(training["lr"])
        self.scaler.load_state_dict(training["scaler"])
        self.progress = Progress(**training["progress"])
        states = training["rng"]
        if isinstance(states, dict):  # a single state, saved by one process
            states = [states]
        if len(states) != self.dist.world_size:
            log.warning("resuming %d process(es) from a run of %d: random streams will differ",
                        self.dist.world_size, len(states))
        set_rng_state(states[self.dist.rank % len(states)])
        log.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.progress.step,
                 self.progress.epoch, self.progress.batch_in_epoch)

    def _finish(self, seconds: float) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "stop_reason": self.stop_reason, "steps": self.progress.step, "epochs": self.progress.epoch,
            "best_valid_bleu": self.progress.best_bleu, "train_seconds_this_session": round(seconds, 1),
            "parameters": count_parameters(self.model),
        }
        if self.dist.is_main:
            if self.config.train.average_last > 0 and self.stop_reason != "signal":
                summary["averaged"] = self._average_last()
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            if self.metrics:
                self.metrics.close()
            log.info("training stopped (%s) at step %d; best valid BLEU %.2f; run folder %s",
                     self.stop_reason, self.progress.step, self.progress.best_bleu, self.run_dir)
        close_distributed(self.dist)
        return summary

    def _average_last(self) -> dict[str, Any]:
        """Average the newest snapshots into averaged.pt and validate it."""
        from nmt.validate import validate

        snaps = sorted(self.progress.snapshots, key=lambda s: s["step"])[-self.config.train.average_last:]
        paths = [self.run_dir / s["path"] for s in snaps]
        averaged = average_checkpoints(paths)
        self.model.load_state_dict(averaged["model"])
        metrics = validate(self.model, self.data, self.config, self.device)
        averaged["metrics"] = {f"valid_{k}": v for k, v in metrics.items() if isinstance(v, (int, float, str))}
        save_checkpoint(averaged, self.run_dir / "averaged.pt")
        log.info("averaged %d checkpoints: valid BLEU %.2f -> %s", len(paths), metrics["bleu"],
                 self.run_dir / "averaged.pt")
        return {"checkpoints": [p.name for p in paths], "valid_bleu": metrics["bleu"]}

    # ------------------------------------------------------------------ signals

    def _install_signal_handlers(self) -> dict[int, Any]:
        def request_stop(signum: int, _frame: Any) -> None:
            log.warning("received %s: saving and stopping after this step", signal.Signals(signum).name)
            self._signal = True

        old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old[sig] = signal.signal(sig, request_stop)
            except ValueError:  # not in the main thread
                pass
        return old

    @staticmethod
    def _restore_signal_handlers(old: dict[int, Any]) -> None:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def train(config: Config, resume: bool = False) -> dict[str, Any]:
    """Train as `config` says; returns the run summary (also written to summary.json)."""
    return Trainer(config, resume=resume).run()


def _id_columns(data: PreparedData, split: str) -> tuple[list[list[int]], list[list[int]]]:
    columns = data.splits[split][:]  # one bulk read; row-by-row access to Arrow is slow
    return columns["src_ids"], columns["tgt_ids"]
