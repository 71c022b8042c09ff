"""Optimiser, learning-rate schedules and the label-smoothed loss used for training."""

from __future__ import annotations

import math

import torch
from torch import nn

from nmt.config import TrainConfig
from nmt.specials import PAD_ID


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam or AdamW; weight decay is not applied to biases and norm gains."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=config.lr, betas=config.betas, eps=config.eps)


def lr_factor(step: int, config: TrainConfig, d_model: int) -> float:
    """Multiplier of `train.lr` at optimiser step `step` (1-based) for step-based schedules.

    inverse_sqrt: linear warmup to lr, then lr * sqrt(warmup / step) (fairseq's shape).
    noam: lr * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5) (Vaswani et al.; lr is the
      paper's scale factor, typically 1-2).
    cosine: linear warmup, then cosine decay to min_lr at max_steps.
    constant / plateau: warmup then lr (plateau halves it on stalled validation BLEU).
    """
    step = max(step, 1)
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

    def step(self, step: int) -> float:
        lr = self.config.lr * lr_factor(step, self.config, self.d_model) * self.plateau_scale
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


def label_smoothed_nll(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed label-smoothed cross-entropy and summed NLL over non-pad targets.

    logits [B, T, V] (any float dtype), target [B, T]. The smoothing mass is spread uniformly
    over the vocabulary. See `_SmoothedCrossEntropy` for why this is not F.cross_entropy.
    """
    flat = logits.reshape(-1, logits.size(-1))
    return _SmoothedCrossEntropy.apply(flat, target.reshape(-1), smoothing)


class _SmoothedCrossEntropy(torch.autograd.Function):
    """Label-smoothed cross-entropy with a hand-written gradient, in row chunks.

    The gradient is softmax(x) - q (q: the smoothed target distribution), so one pass per
    chunk of rows replaces autograd's log-softmax backward, scatter and mean-expand passes
    over the whole [N, V] matrix. Chunks of float32 rows stay in cache and the saved tensor is
    the (bf16) logits themselves: about 3x faster than F.cross_entropy on CPU, and the loss is
    still computed in float32 whatever the autocast dtype.
    """

    ROWS = 512

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, smoothing: float):  # type: ignore[override]
        n = logits.size(0)
        lse, gold, mean = (torch.empty(n, device=logits.device) for _ in range(3))
        for start in range(0, n, _SmoothedCrossEntropy.ROWS):
            rows = slice(start, start + _SmoothedCrossEntropy.ROWS)
            x = logits[rows].float()
            lse[rows] = torch.logsumexp(x, dim=-1)
            gold[rows] = x.gather(1, target[rows, None]).squeeze(1)
            mean[rows] = x.mean(dim=-1)
        keep = target != PAD_ID
        nll = ((lse - gold) * keep).sum()
        uniform = ((lse - mean) * keep).sum()
        ctx.save_for_backward(logits, target, lse, keep)
        ctx.smoothing = smoothing
        ctx.mark_non_differentiable(nll)
        return (1.0 - smoothing) * nll + smoothing * uniform, nll

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, _grad_nll: torch.Tensor):  # type: ignore[override]
        logits, target, lse, keep = ctx.saved_tensors
        eps = ctx.smoothing
        grad = torch.empty_like(logits)
        row_scale = keep * grad_loss
        for start in range(0, logits.size(0), _SmoothedCrossEntropy.ROWS):
            rows = slice(start, start + _SmoothedCrossEntropy.ROWS)
            g = logits[rows].float().sub_(lse[rows, None]).exp_()  # softmax
            g.sub_(eps / logits.size(1))
            gold = torch.full((g.size(0), 1), eps - 1.0, device=g.device)
            g.scatter_add_(1, target[rows, None], gold)
            grad[rows] = g.mul_(row_scale[rows, None])
        return grad, None, None
