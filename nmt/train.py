"""The training loop: data-parallel, mixed precision, validated by sacreBLEU, exactly resumable.

Run-folder layout (rank 0 writes, other ranks only compute; checkpoint files: nmt/runfolder.py):
  config.yaml, env.json        what was run, on what
  metrics.jsonl, tensorboard/  training and validation curves
  last.pt, ckpt-<step>.pt, best.pt, averaged.pt, checkpoints.json
  summary.json                 how the run ended

Host syncs: one per optimiser step (a single all-reduce of the step's flags, read once), plus
GradScaler's own in fp16; losses stay on the device until they are logged. On CUDA, batches
are built by DataLoader workers into pinned memory while the GPU computes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from nmt.allocator import keep_freed_memory
from nmt.batching import Batch, TokenBatchSampler, batch_stream
from nmt.checkpoint import (
    Checkpoint,
    CheckpointError,
    TrainingState,
    VocabSizes,
    load_checkpoint,
    save_checkpoint,
)
from nmt.config import Config, ConfigError, save_config
from nmt.cpu import ThreadBudget, default_threads
from nmt.data import PreparedData, prepare_data
from nmt.distributed import (
    close_distributed,
    init_distributed,
    local_cuda_index,
    sum_across,
    sum_tensor_across,
    wait_for_main,
)
from nmt.files import write_json_atomic
from nmt.model import build_model, count_parameters
from nmt.optim import LearningRate, build_optimizer, label_smoothed_nll, rdrop_divergence
from nmt.precision import (
    PrecisionError,
    autocast_dtype,
    device_caps,
    prepare_device,
    training_precision,
)
from nmt.rng import gather_rng_states, seed_everything, set_rng_state
from nmt.runfolder import RunFolder, Snapshot
from nmt.runlog import MetricsLog, environment_info

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. the loss keeps diverging); the message says why."""


def default_run_dir(config: Config) -> Path:
    """runs/<name>_<src>-<tgt> unless train.run_dir says otherwise."""
    data = config.data
    return Path(
        config.train.run_dir or Path("runs") / f"{config.name}_{data.src_lang}-{data.tgt_lang}"
    )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but CUDA is not available")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision a run on `device` trains in (see nmt.precision.training_precision)."""
    try:
        return training_precision(precision, device_caps(device))
    except PrecisionError as e:
        raise ConfigError(str(e)) from None


def loader_workers(device: torch.device) -> int:
    """DataLoader worker processes that build batches: on CUDA two, so batches are padded and
    pinned while the GPU computes; on CPU none (the workers would take the cores training
    uses, and building a batch costs well under a millisecond)."""
    return 2 if device.type == "cuda" else 0


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint so a resumed run continues exactly."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of this epoch already consumed, per rank (see _restore)
    nonfinite_in_row: int = 0
    bad_validations: int = 0
    best_bleu: float = -1.0
    train_seconds: float = 0.0  # seconds spent training (not validating) up to this checkpoint
    snapshots: list[dict[str, Any]] = field(default_factory=list)  # runfolder.Snapshot dicts


@dataclass
class StepResult:
    """One optimiser step as the loop needs it; `nll` stays on the device until it is logged."""

    nll: torch.Tensor  # summed NLL of this rank's micro-batches
    tokens: int  # this rank's target tokens
    applied: bool  # the update was applied (not skipped for a non-finite loss or gradient)
    stop: bool  # some rank asked to stop (signal or time budget)


class Trainer:
    """Owns one run: model, optimiser, data order, checkpoints, logs."""

    def __init__(self, config: Config, resume: bool = False):
        self.config = config
        self.device = resolve_device(config.train.device)
        self.dist = init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", local_cuda_index(self.dist.local_rank))
        prepare_device(self.device)
        self.precision = resolve_precision(config.train.precision, self.device)
        if not self.dist.is_main:  # one voice in the logs: rank 0's
            logging.getLogger("nmt").setLevel(logging.WARNING)
        # CPU threads: train.threads, else the usable cores shared by this machine's ranks,
        # fewer while other processes keep cores busy (nmt.cpu.ThreadBudget).
        self.thread_budget: ThreadBudget | None = None
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        elif self.device.type == "cpu":
            local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
            torch.set_num_threads(default_threads(local_ranks))
            self.thread_budget = ThreadBudget(torch.get_num_threads())
        keep_freed_memory(self.device.type)
        self.run_dir = default_run_dir(config)
        self.run_folder = RunFolder(self.run_dir)
        self._check_run_dir(resume)
        seed_everything(config.train.seed + self.dist.rank)

        self.data = self._prepare(keep_tokenizer=resume)
        self.train_ids = self.data.train
        tok = self.data.tokenizer
        self.model = build_model(
            config.model, tok.src_vocab_size, tok.tgt_vocab_size, joint_vocab=tok.joint
        )
        self.model.to(self.device)
        self.wrapped = self._wrap(self.model)
        self.optimizer = build_optimizer(self.model, config.train, fused=self.device.type == "cuda")
        self.lr = LearningRate(self.optimizer, config.train, config.model.embed_dim)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.progress = Progress()
        self.sampler = self._sampler(self.dist.rank, self.dist.world_size)
        if resume:
            self._restore(self.run_folder.last)
        self.metrics = MetricsLog(self.run_dir) if self.dist.is_main else None
        self.stop_reason: str | None = None
        self.last_validated_step = -1
        self._signal = False
        self._started = time.monotonic()
        self._seconds_before = self.progress.train_seconds  # earlier sessions of this run
        self._valid_seconds = 0.0  # this session's time spent validating
        self._valid_slot = self._minutes_slot(self._seconds_before)  # see _validation_due

    # ------------------------------------------------------------------ set-up

    def _check_run_dir(self, resume: bool) -> None:
        last = self.run_folder.last
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
            write_json_atomic(self.run_dir / "env.json", env)

    def _prepare(self, keep_tokenizer: bool) -> PreparedData:
        """Rank 0 trains the tokenizer and fills the cache (for a large corpus this can take
        hours: the others wait in a gloo barrier with a long timeout), then the others read it."""
        if self.dist.is_main:
            data = prepare_data(self.config, self.run_dir, keep_tokenizer)
        wait_for_main(self.dist)
        if not self.dist.is_main:
            data = prepare_data(self.config, self.run_dir, keep_tokenizer)
        return data

    def _sampler(self, rank: int, world_size: int) -> TokenBatchSampler:
        src_lengths, tgt_lengths = self.train_ids.batch_lengths()
        return TokenBatchSampler(
            src_lengths,
            tgt_lengths,
            self.config.train.batch_tokens,
            shuffle=True,
            seed=self.config.train.seed,
            rank=rank,
            world_size=world_size,
        )

    def _wrap(self, model: nn.Module) -> nn.Module:
        if not self.dist.enabled:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # No persistent buffers need broadcasting; gradients live in DDP's buckets (one copy).
        return nn.parallel.DistributedDataParallel(
            model, device_ids=device_ids, broadcast_buffers=False, gradient_as_bucket_view=True
        )

    def _gradient_sync(self, last_micro_batch: bool) -> contextlib.AbstractContextManager:
        """DDP all-reduces gradients only after the last micro-batch of an update."""
        if last_micro_batch or not isinstance(self.wrapped, nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext()
        return self.wrapped.no_sync()

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = autocast_dtype(self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    # ------------------------------------------------------------------ data

    def _batches(self) -> Iterator[Batch]:
        """This rank's batches from the saved data position onwards, epoch after epoch.

        The data position advances when the loop takes a batch, not when a worker builds it,
        so a checkpoint records exactly what training has consumed.
        """
        pin = self.device.type == "cuda"
        while self.progress.epoch < self.config.train.max_epochs:
            self.sampler.set_epoch(self.progress.epoch)
            start = self.progress.batch_in_epoch
            order = list(self.sampler)[start:]
            built = batch_stream(self.train_ids, order, loader_workers(self.device), pin)
            for i, batch in enumerate(built, start=start):
                self.progress.batch_in_epoch = i + 1
                yield batch.to(self.device, non_blocking=pin)
            self.progress.epoch += 1
            self.progress.batch_in_epoch = 0

    # ------------------------------------------------------------------ one update

    def _update(self, batches: list[Batch], stop_requested: bool = False) -> StepResult:
        """Forward/backward over this rank's micro-batches and one optimiser step.

        The loss is normalised by the target tokens of the whole global batch (all ranks, all
        micro-batches), so the gradient is the same however the batch is split. Under DDP the
        token count is all-reduced into a device tensor that scales the loss on the device:
        no host sync precedes the forward pass.
        """
        local_tokens = sum(b.num_tgt_tokens for b in batches)
        scale: float | torch.Tensor = 1.0 / max(local_tokens, 1)
        if self.dist.enabled:
            global_tokens = sum_tensor_across(
                self.dist, torch.tensor(float(local_tokens), device=self.device)
            )
            scale = self.dist.world_size / global_tokens.clamp(min=1.0)
        nll_total = torch.zeros((), device=self.device)
        unit_grad = not self.scaler.is_enabled()
        self.model.train()
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            with self._gradient_sync(last):
                loss, nll = self._loss(batch, scale, unit_grad)
                self.scaler.scale(loss).backward()
            nll_total += nll.detach()
        applied, stop = self._optimizer_step(nll_total, stop_requested)
        return StepResult(nll_total, local_tokens, applied, stop)

    def _loss(
        self, batch: Batch, scale: float | torch.Tensor, unit_grad: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's scaled training loss and its summed NLL.

        With R-Drop the batch runs twice in one doubled forward pass (each copy under its own
        dropout masks): loss = scale / 2 * (CE1 + CE2 + alpha / 2 * (KL(p1||p2) + KL(p2||p1))),
        the paper's weighting, halved so that a step's gradient keeps the size the learning
        rate was tuned for; the NLL reported is the two copies' mean.
        """
        smoothing, alpha = self.config.train.label_smoothing, self.config.train.rdrop_alpha
        if alpha == 0.0:
            with self._autocast():
                logits, _ = self.wrapped(batch.src, batch.src_mask, batch.tgt_in)
            return label_smoothed_nll(logits, batch.tgt_out, smoothing, scale, unit_grad)
        src, src_mask, tgt_in, tgt_out = (
            torch.cat([t, t]) for t in (batch.src, batch.src_mask, batch.tgt_in, batch.tgt_out)
        )
        with self._autocast():
            logits, _ = self.wrapped(src, src_mask, tgt_in)
        loss, nll = label_smoothed_nll(logits, tgt_out, smoothing, scale / 2, unit_grad)
        return loss + rdrop_divergence(logits, tgt_out, scale * alpha / 4), nll / 2

    def _optimizer_step(self, nll_total: torch.Tensor, stop_requested: bool) -> tuple[bool, bool]:
        """Clip and step, unless the loss or a gradient is not finite on some rank.

        One all-reduce of [loss not finite, gradient not finite, stop asked] decides for all
        ranks at once. With fp16 loss scaling an overflowing gradient is GradScaler's normal
        search for its scale: it skips the step and lowers the scale, and only a scale that has
        fallen below 1 counts towards train.max_nonfinite.
        """
        self.scaler.unscale_(self.optimizer)
        grad_norm = self._clip_gradients()
        flags = torch.stack(
            [
                (~torch.isfinite(nll_total)).float(),
                (~torch.isfinite(grad_norm)).float(),
                torch.tensor(float(stop_requested), device=self.device),
            ]
        )
        nll_bad, grad_bad, stop = (v > 0 for v in sum_tensor_across(self.dist, flags).tolist())
        if self.scaler.is_enabled():
            if not nll_bad:
                self.scaler.step(self.optimizer)  # skips by itself when gradients overflowed
            self.scaler.update()
        elif not (nll_bad or grad_bad):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if not (nll_bad or grad_bad):
            self.progress.nonfinite_in_row = 0
            return True, stop
        if grad_bad and not nll_bad and self.scaler.is_enabled() and self.scaler.get_scale() >= 1.0:
            log.info(
                "step %d: fp16 gradients overflowed; loss scale lowered to %g",
                self.progress.step + 1,
                self.scaler.get_scale(),
            )
            return False, stop
        self.progress.nonfinite_in_row += 1
        log.warning(
            "non-finite loss or gradient at step %d: update skipped", self.progress.step + 1
        )
        if self.progress.nonfinite_in_row >= self.config.train.max_nonfinite:
            raise TrainingError(
                f"the loss was not finite for {self.progress.nonfinite_in_row} updates in a row; "
                "lower train.lr, add train.clip_norm, or check the data"
            )
        return False, stop

    def _clip_gradients(self) -> torch.Tensor:
        """The total gradient norm (a device tensor), clipped to train.clip_norm if set."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.config.train.clip_norm:
            return torch.nn.utils.clip_grad_norm_(params, self.config.train.clip_norm)
        total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6
        if total_norm is None:
            return torch.nn.utils.clip_grad_norm_(params, math.inf)
        return total_norm([p.grad for p in params])

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict[str, Any]:
        cfg = self.config.train
        self._started = time.monotonic()
        handlers = self._install_signal_handlers()
        bar = self._progress_bar()
        # Speed windows run on the training clock, which stops while validating.
        window_tokens, window_nll, window_start = (
            0,
            torch.zeros((), device=self.device),
            self._train_seconds(),
        )
        batches = self._batches()
        log.info(
            "model: %s, %s parameters; device %s, precision %s, %d process(es)",
            self.config.model.arch,
            f"{count_parameters(self.model):,}",
            self.device,
            self.precision,
            self.dist.world_size,
        )
        try:
            while True:
                if self.progress.step >= cfg.max_steps:
                    self.stop_reason = "max_steps"
                    break
                micro = [b for _, b in zip(range(cfg.accum_steps), batches)]
                if not micro:
                    self.stop_reason = "max_epochs"
                    break
                clock = self._shared_clock()
                lr = self.lr.step(self.progress.step + 1, self._budget_used(clock))
                if self.thread_budget is not None:
                    self.thread_budget.apply()
                result = self._update(micro, stop_requested=self._stop_request() is not None)
                if result.applied:
                    self.progress.step += 1
                    self._advance(bar)
                window_tokens += result.tokens
                window_nll += result.nll
                if result.applied and self.progress.step % cfg.log_every == 0:
                    elapsed = self._train_seconds() - window_start
                    self._log_train(bar, lr, float(window_nll), window_tokens, elapsed)
                    window_tokens, window_start = 0, self._train_seconds()
                    window_nll = torch.zeros((), device=self.device)
                if result.stop:
                    self.stop_reason = self._stop_request() or "another rank stopped"
                if result.applied and self._validation_due(clock):
                    self._validate_and_save()
                if self.stop_reason:
                    break
            if self.stop_reason == "signal":
                self._save_last(
                    {}, gather_rng_states(self.dist, self.device)
                )  # we were asked to go
            elif self.last_validated_step != self.progress.step:
                self._validate_and_save()
        finally:
            bar.close()
            self._restore_signal_handlers(handlers)
        return self._finish(time.monotonic() - self._started)

    def _progress_bar(self) -> tqdm:
        """Steps towards train.max_steps, or, for a run bounded by time (train.max_minutes),
        minutes of its budget, so the bar and its ETA show when the run will really end."""
        cfg = self.config.train
        show = self.dist.is_main
        if cfg.max_minutes:
            form = "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:g} min [{elapsed}{postfix}]"
            return tqdm(
                total=cfg.max_minutes,
                bar_format=form,
                disable=not show,
                dynamic_ncols=True,
                desc=self.config.name,
            )
        return tqdm(
            total=cfg.max_steps,
            initial=self.progress.step,
            unit="step",
            disable=not show,
            dynamic_ncols=True,
            desc=self.config.name,
        )

    def _advance(self, bar: tqdm) -> None:
        """One more step on the bar: a step, or the minutes spent so far."""
        if not self.config.train.max_minutes:
            bar.update(1)
            return
        minutes = min(self._budget_seconds() / 60, float(self.config.train.max_minutes))
        bar.update(minutes - bar.n)

    def _train_seconds(self) -> float:
        """Seconds this run has spent training, validation excluded, over all its sessions."""
        return self._seconds_before + time.monotonic() - self._started - self._valid_seconds

    def _budget_seconds(self) -> float:
        """Seconds counted against train.max_minutes: this session's wall clock, except under
        the budget schedule, whose clock is the run's training time over all its sessions (a
        resumed run finishes the same schedule; validating, which takes longest for the
        weakest models, does not eat their training time)."""
        if self.config.train.schedule == "budget":
            return self._train_seconds()
        return time.monotonic() - self._started

    def _shared_clock(self) -> float:
        """The run's training seconds as all ranks agree on them (their mean): decisions taken
        by the clock (learning rate, validation) must not differ between ranks. The all-reduce
        happens only when such a decision is configured."""
        seconds = self._train_seconds()
        cfg = self.config.train
        timed = cfg.valid_every_minutes > 0 or (cfg.schedule == "budget" and cfg.max_minutes > 0)
        if not (self.dist.enabled and timed):
            return seconds
        return sum_across(self.dist, seconds, self.device) / self.dist.world_size

    def _budget_used(self, clock: float) -> float | None:
        """The share of the run spent for the budget schedule, None for other schedules.

        The run ends at whichever of its limits (minutes, steps, epochs) comes first, and the
        share furthest along is the one that will end it, so the rate has finished decaying
        when the run stops, even when an epoch cap cuts a time budget short.
        """
        cfg = self.config.train
        if cfg.schedule != "budget":
            return None
        epochs = self.progress.epoch + self.progress.batch_in_epoch / max(len(self.sampler), 1)
        shares = [self.progress.step / cfg.max_steps, epochs / cfg.max_epochs]
        if cfg.max_minutes:
            shares.append(clock / (cfg.max_minutes * 60))
        return max(shares)

    def _minutes_slot(self, seconds: float) -> int:
        minutes = self.config.train.valid_every_minutes
        return int(seconds // (minutes * 60)) if minutes > 0 else 0

    def _validation_due(self, clock: float) -> bool:
        """Every train.valid_every steps, and when the clock enters a new
        train.valid_every_minutes slot."""
        if self.progress.step % self.config.train.valid_every == 0:
            return True
        slot = self._minutes_slot(clock)
        due, self._valid_slot = slot > self._valid_slot, slot
        return due

    def _stop_request(self) -> str | None:
        """Why this rank wants to stop (a signal, the time budget), if it does."""
        if self._signal:
            return "signal"
        max_minutes = self.config.train.max_minutes
        if max_minutes and self._budget_seconds() > max_minutes * 60:
            return "max_minutes"
        return None

    def _log_train(self, bar: tqdm, lr: float, nll: float, tokens: int, elapsed: float) -> None:
        tokens = int(sum_across(self.dist, float(tokens), self.device))
        nll = sum_across(self.dist, nll, self.device)
        loss = nll / max(tokens, 1)
        # tokens_per_s: target tokens (with EOS) per second, all ranks together
        values = {
            "loss": round(loss, 5),
            "ppl": round(math.exp(min(loss, 50)), 3),
            "lr": lr,
            "tokens_per_s": round(tokens / max(elapsed, 1e-9), 1),
            "epoch": self.progress.epoch,
            "train_seconds": round(self._train_seconds(), 1),
        }
        bar.set_postfix(
            step=self.progress.step,
            loss=f"{loss:.3f}",
            lr=f"{lr:.2e}",
            tok_s=f"{values['tokens_per_s']:.0f}",
        )
        if self.metrics:
            self.metrics.write("train", self.progress.step, values)

    # ------------------------------------------------------------------ validation

    def _validate_and_save(self) -> None:
        """Rank 0 validates and writes while the others wait; every rank then applies the same
        BLEU to the plateau schedule and the patience count, so learning rates and stopping
        never drift apart."""
        from nmt.validate import validate

        self.last_validated_step = self.progress.step
        started = time.monotonic()
        rng_states = gather_rng_states(self.dist, self.device)
        metrics: dict[str, Any] = {}
        if self.dist.is_main:
            metrics = validate(self.model, self.data, self.config, self.device, self.precision)
        wait_for_main(self.dist)
        self._valid_seconds += time.monotonic() - started
        bleu = sum_across(self.dist, metrics.get("bleu", 0.0), self.device)  # rank 0's BLEU
        improved = bleu > self.progress.best_bleu
        self.progress.bad_validations = 0 if improved else self.progress.bad_validations + 1
        self.progress.best_bleu = max(self.progress.best_bleu, bleu)
        self.lr.observe_validation(bleu)
        if self.dist.is_main:
            self._record_validation(metrics, improved, rng_states)
        wait_for_main(self.dist)
        if self._patience_exhausted() and not self.stop_reason:
            self.stop_reason = "patience"

    def _patience_exhausted(self) -> bool:
        patience = self.config.train.patience
        return patience > 0 and self.progress.bad_validations >= patience

    def _record_validation(
        self, metrics: dict[str, Any], improved: bool, rng_states: list[Any]
    ) -> None:
        cfg = self.config.train
        self.run_folder.add_snapshot(
            self._checkpoint(metrics), metrics["bleu"], improved, cfg.keep_last, cfg.keep_best
        )
        self._save_last(metrics, rng_states)
        if self.metrics:
            self.metrics.write(
                "valid",
                self.progress.step,
                {
                    **metrics,
                    "best_bleu": self.progress.best_bleu,
                    "train_seconds": round(self._train_seconds(), 1),
                },
            )
        log.info(
            "step %d: valid loss %.4f, ppl %.2f, BLEU %.2f (best %.2f)",
            self.progress.step,
            metrics["loss"],
            metrics["ppl"],
            metrics["bleu"],
            self.progress.best_bleu,
        )

    # ------------------------------------------------------------------ checkpoints

    def _save_last(self, metrics: dict[str, Any], rng_states: list[Any]) -> None:
        if self.dist.is_main:
            save_checkpoint(self._checkpoint(metrics, rng_states), self.run_folder.last)

    def _checkpoint(
        self, metrics: dict[str, Any], rng_states: list[Any] | None = None
    ) -> Checkpoint:
        """A checkpoint; with `rng_states` (one per rank) also the full training state."""
        tok = self.data.tokenizer
        training = None
        if rng_states is not None:
            progress = dict(
                self.progress.__dict__,
                train_seconds=round(self._train_seconds(), 3),
                snapshots=[dataclasses.asdict(s) for s in self.run_folder.snapshots],
            )
            training = TrainingState(
                optimizer=self.optimizer.state_dict(),
                lr=self.lr.state_dict(),
                scaler=self.scaler.state_dict(),
                rng=rng_states,
                progress=progress,
                world_size=self.dist.world_size,
                precision=self.precision,
            )
        return Checkpoint(
            model=self.model.state_dict(),
            config=self.config,
            tokenizer=tok.to_state(),
            vocab=VocabSizes(tok.src_vocab_size, tok.tgt_vocab_size, tok.joint),
            step=self.progress.step,
            epoch=self.progress.epoch,
            batch_in_epoch=self.progress.batch_in_epoch,
            metrics={
                f"valid_{k}": v for k, v in metrics.items() if isinstance(v, (int, float, str))
            },
            meta={
                "parameters": count_parameters(self.model),
                "run_dir": str(self.run_dir),
                "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "precision": self.precision,
            },
            training=training,
        )

    def _restore(self, path: Path) -> None:
        """Continue the run saved in `path` (always loaded to the CPU; load_state_dict moves
        weights and optimizer moments to the device, RNG states must stay on the CPU)."""
        checkpoint = load_checkpoint(path)
        training = checkpoint.training
        if training is None:
            raise CheckpointError(f"{path} holds no training state to resume from")
        self.model.load_state_dict(checkpoint.model)
        self.optimizer.load_state_dict(training.optimizer)
        self.lr.load_state_dict(training.lr)
        if self.scaler.is_enabled() and training.scaler:
            self.scaler.load_state_dict(training.scaler)
        if training.precision and training.precision != self.precision:
            log.warning(
                "the run trained in %s and resumes in %s", training.precision, self.precision
            )
        self.progress = Progress(**training.progress)
        self.run_folder.snapshots = [Snapshot(**s) for s in self.progress.snapshots]
        if training.world_size != self.dist.world_size:
            self._map_data_position(training.world_size)
        set_rng_state(training.rng[self.dist.rank % len(training.rng)], self.device)
        log.info(
            "resumed from %s at step %d (epoch %d, batch %d)",
            path,
            self.progress.step,
            self.progress.epoch,
            self.progress.batch_in_epoch,
        )

    def _map_data_position(self, saved_world_size: int) -> None:
        """Resume with another number of processes where the saved run stopped in its epoch.

        The saved position counts each rank's batches; the rows of an epoch come in the same
        order whatever the world size, so the rows consumed so far map to a position here (at
        most one global batch is repeated, none is skipped).
        """
        saved = self._sampler(0, saved_world_size)
        saved.set_epoch(self.progress.epoch)
        rows = saved.rows_before(self.progress.batch_in_epoch)
        self.sampler.set_epoch(self.progress.epoch)
        self.progress.batch_in_epoch = self.sampler.position_after(rows)
        log.warning(
            "resuming %d process(es) from a run of %d: continuing after row %d of epoch "
            "%d; random streams will differ",
            self.dist.world_size,
            saved_world_size,
            rows,
            self.progress.epoch,
        )

    def _finish(self, seconds: float) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "stop_reason": self.stop_reason,
            "steps": self.progress.step,
            "epochs": self.progress.epoch,
            "best_valid_bleu": self.progress.best_bleu,
            "train_seconds_this_session": round(seconds, 1),
            "parameters": count_parameters(self.model),
        }
        if self.dist.is_main:
            if self.config.train.average_last > 0 and self.stop_reason != "signal":
                summary["averaged"] = self._average_last()
            write_json_atomic(self.run_dir / "summary.json", summary)
            if self.metrics:
                self.metrics.close()
            log.info(
                "training stopped (%s) at step %d; best valid BLEU %.2f; run folder %s",
                self.stop_reason,
                self.progress.step,
                self.progress.best_bleu,
                self.run_dir,
            )
        close_distributed(self.dist)
        return summary

    def _average_last(self) -> dict[str, Any]:
        """Average the newest snapshots into averaged.pt and validate it."""
        from nmt.validate import validate

        count = self.config.train.average_last
        paths = self.run_folder.select(last=count)
        averaged = self.run_folder.average_last(count)
        self.model.load_state_dict(averaged.model)
        metrics = validate(self.model, self.data, self.config, self.device, self.precision)
        averaged.metrics = {
            f"valid_{k}": v for k, v in metrics.items() if isinstance(v, (int, float, str))
        }
        save_checkpoint(averaged, self.run_folder.averaged)
        log.info(
            "averaged %d checkpoints: valid BLEU %.2f -> %s",
            len(paths),
            metrics["bleu"],
            self.run_folder.averaged,
        )
        return {"checkpoints": [p.name for p in paths], "valid_bleu": metrics["bleu"]}

    # ------------------------------------------------------------------ signals

    def _install_signal_handlers(self) -> dict[int, Any]:
        def request_stop(signum: int, _frame: Any) -> None:
            log.warning(
                "received %s: saving and stopping after this step", signal.Signals(signum).name
            )
            self._signal = True

        old: dict[int, Any] = {}
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
