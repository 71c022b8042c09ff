"""The vocabulary projection (hidden state -> logits), with a low-precision path for decoding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class VocabularyProjection(nn.Linear):
    """nn.Linear (same parameters, same state-dict keys) that can decode in bf16.

    At decoding sizes on a CPU this [rows x d] x [d x V] matmul is the largest cost of a step,
    and bf16 runs it several times faster than fp32, while the rest of a step is too small to
    gain from autocast (its casts cost more than they save). A decoding call passes `dtype`
    (the Translator's decoding precision, through `decode_step`): an eval-mode forward without
    gradients then uses a copy of the weight in that dtype, cached and made again whenever the
    weight changes; the logits come out in that dtype and callers normalise them in float32.
    Training never takes this path.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self._low_weight: Tensor | None = None  # cache of the weight in a decoding dtype
        self._low_key: tuple | None = None

    def forward(self, x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """x [...,in] -> logits [...,V]; in `dtype` when decoding (eval, no gradients)."""
        if dtype is None or self.training or torch.is_grad_enabled():
            return super().forward(x)
        bias = None if self.bias is None else self.bias.to(dtype)
        return F.linear(x.to(dtype), self._weight_in(dtype), bias)

    def _weight_in(self, dtype: torch.dtype) -> Tensor:
        key = (self.weight.data_ptr(), self.weight._version, dtype)
        if self._low_key != key:
            with torch.inference_mode(False):  # a normal tensor, usable outside inference mode
                self._low_weight = self.weight.detach().to(dtype)
            self._low_key = key
        assert self._low_weight is not None
        return self._low_weight
