"""Optimiser, learning-rate schedules and the label-smoothed loss used for training."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from nmt.config import TrainConfig
from nmt.specials import PAD_ID


def build_optimizer(
    model: nn.Module, config: TrainConfig, fused: bool = False
) -> torch.optim.Optimizer:
    """Adam or AdamW; weight decay is not applied to biases and norm gains. `fused`: one
    kernel for the whole update (CUDA), instead of a few per parameter tensor."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=config.lr, betas=config.betas, eps=config.eps, fused=fused or None)


def lr_factor(
    step: int, config: TrainConfig, d_model: int, budget_used: float | None = None
) -> float:
    """Multiplier of `train.lr` at optimiser step `step` (1-based).

    inverse_sqrt: linear warmup to lr, then lr * sqrt(warmup / step) (fairseq's shape).
    noam: lr * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5) (Vaswani et al.; lr is the
      paper's scale factor, typically 1-2).
    cosine: linear warmup, then cosine decay to min_lr at max_steps.
    constant / plateau: warmup then lr (plateau halves it on stalled validation BLEU).
    budget: linear warmup over the first `budget_warmup` share of the run's budget, then cosine
      decay to min_lr when the budget ends. `budget_used` is the share spent (a time budget's
      elapsed share, from the trainer); without it, step / max_steps. A schedule measured in
      budget, not steps, is what lets models of different speeds train for the same minutes
      without one being cut off mid-warmup.
    """
    step = max(step, 1)
    if config.schedule == "budget":
        return _budget_factor(
            budget_used if budget_used is not None else step / config.max_steps, config
        )
    warmup = config.warmup_steps
    if config.schedule == "noam":
        return d_model**-0.5 * min(step**-0.5, step * max(warmup, 1) ** -1.5)
    warm = min(1.0, step / warmup) if warmup > 0 else 1.0
    if config.schedule == "inverse_sqrt":
        return warm if step <= warmup else math.sqrt(warmup / step) if warmup > 0 else 1.0
    if config.schedule == "cosine":
        if step <= warmup:
            return warm
        progress = min(1.0, (step - warmup) / max(1, config.max_steps - warmup))
        floor = config.min_lr / config.lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return warm


def _budget_factor(used: float, config: TrainConfig) -> float:
    used = min(max(used, 0.0), 1.0)
    warmup = config.budget_warmup
    if used < warmup:
        return max(used / warmup, 1e-3)  # never exactly 0: the first step must move
    progress = (used - warmup) / max(1.0 - warmup, 1e-9)
    floor = config.min_lr / config.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class LearningRate:
    """Sets the optimiser's learning rate every step; plateau decay is a persistent scale.

    Its whole state is three numbers, saved in checkpoints so a resumed run continues exactly.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainConfig, d_model: int):
        self.optimizer = optimizer
        self.config = config
        self.d_model = d_model
        self.plateau_scale = 1.0
        self.best_metric = -math.inf
        self.bad_validations = 0

    def step(self, step: int, budget_used: float | None = None) -> float:
        """Set and return the rate of step `step`; `budget_used`: see `lr_factor`."""
        factor = lr_factor(step, self.config, self.d_model, budget_used)
        lr = self.config.lr * factor * self.plateau_scale
        lr = max(lr, self.config.min_lr) if step > self.config.warmup_steps else lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def observe_validation(self, metric: float) -> None:
        """Plateau schedule: decay the rate after `plateau_patience` validations without gain."""
        if self.config.schedule != "plateau":
            return
        if metric > self.best_metric:
            self.best_metric, self.bad_validations = metric, 0
            return
        self.bad_validations += 1
        if self.bad_validations > self.config.plateau_patience:
            self.plateau_scale *= self.config.plateau_factor
            self.bad_validations = 0

    def state_dict(self) -> dict[str, float]:
        return {
            "plateau_scale": self.plateau_scale,
            "best_metric": self.best_metric,
            "bad_validations": self.bad_validations,
        }

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.plateau_scale = float(state["plateau_scale"])
        self.best_metric = float(state["best_metric"])
        self.bad_validations = int(state["bad_validations"])


def label_smoothed_nll(
    logits: torch.Tensor,
    target: torch.Tensor,
    smoothing: float,
    scale: float | torch.Tensor = 1.0,
    unit_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`scale` times the summed label-smoothed cross-entropy, and the summed NLL, over non-pad
    targets.

    logits [B, T, V] (any float dtype), target [B, T]. The smoothing mass is spread uniformly
    over the vocabulary. The loss's normalisation (e.g. 1 / target tokens) is passed as
    `scale` rather than multiplied afterwards, because the gradient is computed in the forward
    pass already scaled; see `_SmoothedCrossEntropy` for why this is not F.cross_entropy.
    `scale` may be a 0-dim device tensor (e.g. all-reduced token counts): no host sync then.
    `unit_grad`: the caller back-propagates the loss itself, unscaled (no GradScaler), so the
    backward pass returns the precomputed gradient without a pass over it.
    """
    flat = logits.reshape(-1, logits.size(-1))
    return _SmoothedCrossEntropy.apply(flat, target.reshape(-1), smoothing, scale, unit_grad)


def rdrop_divergence(
    logits: torch.Tensor, target: torch.Tensor, scale: float | torch.Tensor = 1.0
) -> torch.Tensor:
    """`scale` times the summed symmetric KL divergence KL(p||q) + KL(q||p) between the two
    halves of a doubled batch (R-Drop).

    logits [2B, T, V]: rows b and B + b are one sentence under two dropout masks; target
    [2B, T] masks padding. Both halves receive gradients. See `_SymmetricKL` for why this is
    not autograd over log_softmax.
    """
    flat = logits.reshape(-1, logits.size(-1))
    keep = target.chunk(2)[0].reshape(-1) != PAD_ID
    return _SymmetricKL.apply(flat, keep, scale)


class _SymmetricKL(torch.autograd.Function):
    """Symmetric KL between row i and row N + i of [2N, V] logits, gradient computed in the
    forward pass, in row chunks, in float32.

    Autograd over full [2N, V] float32 log-softmaxes keeps half a dozen vocabulary-sized
    tensors alive for backward: gigabytes, and on CPU as long as a plain training step. With
    d = log p - log q the divergence is sum((p - q) d) = E_p[d] - E_q[d], and its gradients are
    p (d - E_p[d] + 1) - q for p's logits and q (E_q[d] - d + 1) - p for q's: a few in-place
    passes over cache-sized buffers per chunk. The saved gradient is unscaled (entries within
    [-2, 2], safe in fp16) and backward multiplies it by the loss scale times `scale`.
    """

    CPU_ROWS = 64  # three [rows, V] float32 buffers stay in a CPU core's cache
    GPU_ROWS = 1024  # three buffers of 1024 x 32k floats: 400 MB

    @staticmethod
    def forward(
        ctx: Any, logits: torch.Tensor, keep: torch.Tensor, scale: float | torch.Tensor
    ) -> torch.Tensor:
        n, vocab = keep.numel(), logits.size(1)
        step = _SymmetricKL.CPU_ROWS if logits.device.type == "cpu" else _SymmetricKL.GPU_ROWS
        grad = torch.empty_like(logits) if ctx.needs_input_grad[0] else None
        per_row = torch.empty(n, device=logits.device)
        buffers = torch.empty(3, min(n, step), vocab, device=logits.device)
        for start in range(0, n, step):
            m = min(step, n - start)
            rows, twins = slice(start, start + m), slice(n + start, n + start + m)
            p, q, d = buffers[0, :m], buffers[1, :m], buffers[2, :m]
            p.copy_(logits[rows])
            q.copy_(logits[twins])
            p.sub_(torch.logsumexp(p, dim=-1, keepdim=True))  # log p
            q.sub_(torch.logsumexp(q, dim=-1, keepdim=True))  # log q
            torch.sub(p, q, out=d)
            p.exp_()
            q.exp_()
            mean_p = torch.bmm(p.unsqueeze(1), d.unsqueeze(2)).view(m, 1)
            mean_q = torch.bmm(q.unsqueeze(1), d.unsqueeze(2)).view(m, 1)
            per_row[rows] = (mean_p - mean_q).squeeze(1)
            if grad is not None:
                weight = keep[rows, None].to(p.dtype)
                grad[twins] = ((mean_q + 1.0) - d).mul_(q).sub_(p).mul_(weight)
                grad[rows] = d.sub_(mean_p - 1.0).mul_(p).sub_(q).mul_(weight)
        ctx.save_for_backward(grad)
        ctx.scale = scale
        return scale * (per_row * keep).sum()

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        (grad,) = ctx.saved_tensors
        factor = grad_out.float() * ctx.scale
        return grad * factor.to(grad.dtype), None, None


class _SmoothedCrossEntropy(torch.autograd.Function):
    """Label-smoothed cross-entropy whose gradient is computed in the forward pass, in row chunks.

    The gradient is scale * (softmax(x) - q) (q: the smoothed target distribution), and the
    forward pass already holds exp(x - max) for the log-sum-exp, so one pass per chunk of rows
    produces loss and gradient together, in one reused float32 buffer that stays in cache. It
    replaces autograd's log-softmax backward, scatter and mean-expand passes over the whole
    [N, V] matrix and a second read of the logits in backward: the vocabulary-sized loss costs
    about a quarter of F.cross_entropy's time on CPU. The loss is computed in float32 whatever
    the autocast dtype; the saved gradient has the logits' dtype. Without grad (validation)
    no gradient is computed.

    fp16 logits (CUDA mixed precision): scale * (softmax - q) is about p / tokens, below fp16's
    normal range, and the loss scale only arrives in backward. So in fp16 the gradient is saved
    as FP16_GRAD_SCALE * (softmax - q) (entries within [-1024, 1024], smoothing mass
    included) and backward multiplies by loss_scale * scale / FP16_GRAD_SCALE: the true values
    come out at the loss scale, where GradScaler expects them and detects overflow.
    """

    CPU_ROWS = 256  # rows per chunk: a chunk stays in a CPU core's cache
    GPU_ROWS = 8192  # on GPUs, fewer and larger chunks (the loop is kernel-launch bound)
    FP16_GRAD_SCALE = 1024.0

    @staticmethod
    def forward(
        ctx: Any,
        logits: torch.Tensor,
        target: torch.Tensor,
        smoothing: float,
        scale: float | torch.Tensor,
        unit_grad: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n, vocab = logits.shape
        on_cpu = logits.device.type == "cpu"
        rows_per_chunk = (
            _SmoothedCrossEntropy.CPU_ROWS if on_cpu else _SmoothedCrossEntropy.GPU_ROWS
        )
        lse, gold, mean = (torch.empty(n, device=logits.device) for _ in range(3))
        keep = target != PAD_ID
        grad = torch.empty_like(logits) if ctx.needs_input_grad[0] else None
        deferred = logits.dtype == torch.float16
        saved_scale = _SmoothedCrossEntropy.FP16_GRAD_SCALE if deferred else scale
        row_weight = (keep * saved_scale).unsqueeze(1)  # [N, 1]: zero for padding
        chunk = torch.empty(min(n, rows_per_chunk), vocab, device=logits.device)
        for start in range(0, n, rows_per_chunk):
            rows = slice(start, start + rows_per_chunk)
            x = chunk[: min(rows_per_chunk, n - start)]
            x.copy_(logits[rows])
            gold[rows] = x.gather(1, target[rows, None]).squeeze(1)
            mean[rows] = x.mean(dim=-1)
            peak = x.amax(dim=-1, keepdim=True)
            total = x.sub_(peak).exp_().sum(dim=-1, keepdim=True)
            lse[rows] = (peak + total.log()).squeeze(1)
            if grad is not None:
                weight = row_weight[rows]
                x.mul_(weight / total).sub_(weight * (smoothing / vocab))  # w * (softmax - eps/V)
                x.scatter_add_(1, target[rows, None], weight * (smoothing - 1.0))
                grad[rows] = x
        nll = ((lse - gold) * keep).sum()
        uniform = ((lse - mean) * keep).sum()
        ctx.save_for_backward(grad)
        ctx.deferred = deferred
        ctx.backward_factor = scale / saved_scale if deferred else 1.0
        ctx.unit_grad = unit_grad and not deferred
        ctx.mark_non_differentiable(nll)
        return scale * ((1.0 - smoothing) * nll + smoothing * uniform), nll

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, _grad_nll: torch.Tensor) -> tuple[Any, ...]:
        (grad,) = ctx.saved_tensors
        none = (None, None, None, None)
        if ctx.unit_grad:
            return (grad, *none)
        # Without the caller's word, a CPU check costs nothing; on CUDA it would cost a host
        # sync per micro-batch, while the multiply is cheap and asynchronous.
        if grad.device.type == "cpu" and not ctx.deferred and bool(grad_loss == 1.0):
            return (grad, *none)
        factor = grad_loss.float() * ctx.backward_factor
        return (grad * factor.to(grad.dtype), *none)
